"""Neighbour-list benchmark: gpal's cell list and Verlet reuse against ``vesin``.

What it measures (CPU µs per atom per call, median of repeats, one thread), on fcc Cu
cells of 108 and 4000 atoms (a = 3.61 Å, rattled 0.05 Å), cutoff 5 Å (the SOAP cutoff
of ``bench_md.py``):

* a fresh search (every pair within the cutoff, sorted by centre): gpal's
  :func:`gpal.descriptors.neighbors.neighbor_list` and ``vesin.NeighborList`` (full
  list, pair vectors and shifts; unsorted and ``sorted=True``);
* an MD step: positions moved a little from call to call (as in MD), gpal's
  :class:`~gpal.descriptors.neighbors.PairCache` (what the SOAP descriptor uses: a
  candidate list with a 1 Å skin, filtered at each call) and vesin with the same skin.

Both return the same pairs (checked). ``vesin`` is not a gpal requirement: without it
only gpal's figures are printed.

Measured (2 shared cores, load average 3.4, ``OMP_NUM_THREADS=1``)::

    atoms  search                gpal   vesin   vesin sorted
      108  fresh                 10.5    4.1     7.3
      108  MD step (skin 1 Å)     0.8    2.5     4.2
     4000  fresh                  8.1    3.7     5.8
     4000  MD step (skin 1 Å)     3.0    2.1     4.5

gpal's descriptors need the pairs sorted by centre (CSR offsets), i.e. vesin's
``sorted=True``: in MD (the case of the prediction path) gpal's Verlet reuse is then
1.5-5x faster than vesin and 1-3 % of the MD step. vesin is faster for fresh searches
(fitting, frames far apart), where the search is a few % of a frame's SOAP
derivatives. gpal therefore keeps its own list and does not use vesin.

Run::

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_neighbors.py
"""

from __future__ import annotations

import time

import numpy as np
from ase.build import bulk

from gpal.descriptors.neighbors import PairCache, neighbor_list

CUTOFF = 5.0
SKIN = 1.0


def cpu_per_call(f, n: int, repeats: int = 5) -> float:
    """Median CPU seconds of one call of ``f`` (after two warm-up calls)."""
    f()
    f()
    out = []
    for _ in range(repeats):
        c = time.process_time()
        for _ in range(n):
            f()
        out.append((time.process_time() - c) / n)
    return float(np.median(out))


def md_positions(pos, n: int, seed: int = 0):
    """``n`` positions drifting by ~0.003 Å per call (thermal motion of a crystal)."""
    rng = np.random.default_rng(seed)
    out, p = [], pos.copy()
    for _ in range(n):
        p = p + rng.normal(0, 0.003, p.shape)
        out.append(p)
    return out


def main() -> None:
    try:
        import vesin
    except ImportError:
        vesin = None
        print("vesin not installed (pip install vesin): gpal's figures only")
    rows = []
    for repeat in (3, 10):
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(repeat)
        atoms.rattle(0.05, seed=1)
        N = len(atoms)
        pos, cell, pbc = atoms.positions.copy(), atoms.cell.array.copy(), np.array(atoms.pbc)
        n = 40 if N < 500 else 4
        us = 1e6 / N
        fresh = {"gpal": us * cpu_per_call(lambda: neighbor_list(pos, cell, pbc, CUTOFF), n)}
        steps = md_positions(pos, 8 * n + 20)
        cache, k = PairCache(CUTOFF, SKIN), iter(range(10**9))
        md = {"gpal": us * cpu_per_call(
            lambda: cache.pairs(steps[next(k) % len(steps)], cell, pbc), n)}
        i, j, D = neighbor_list(pos, cell, pbc, CUTOFF)[:3]
        if vesin is not None:
            for name, srt in (("vesin", False), ("vesin sorted", True)):
                nl = vesin.NeighborList(cutoff=CUTOFF, full_list=True, sorted=srt)
                fresh[name] = us * cpu_per_call(
                    lambda: nl.compute(points=pos, box=cell, periodic=True, quantities="ijSD"), n)
                nls = vesin.NeighborList(cutoff=CUTOFF, full_list=True, sorted=srt, skin=SKIN)
                k2 = iter(range(10**9))
                md[name] = us * cpu_per_call(
                    lambda: nls.compute(points=steps[next(k2) % len(steps)], box=cell,
                                        periodic=True, quantities="ijSD"), n)
            vi, vj, _, vD = vesin.NeighborList(cutoff=CUTOFF, full_list=True, sorted=True).compute(
                points=pos, box=cell, periodic=True, quantities="ijSD")
            same = len(vi) == len(i) and np.allclose(np.sort(np.linalg.norm(vD, axis=1)),
                                                     np.sort(np.linalg.norm(D, axis=1)))
            print(f"  {N} atoms: {len(i)} pairs; vesin finds the same pairs: {same}")
        rows.append((N, "fresh", fresh))
        rows.append((N, f"MD step (skin {SKIN:g} Å)", md))
    names = list(rows[0][2])
    print(f"\n{'atoms':>6}  {'search':22s}" + "".join(f"{n:>14s}" for n in names)
          + "   (CPU µs/atom/call)")
    for N, what, r in rows:
        print(f"{N:6d}  {what:22s}" + "".join(f"{r[n]:14.2f}" for n in names))


if __name__ == "__main__":
    main()
