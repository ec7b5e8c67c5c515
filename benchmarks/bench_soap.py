"""Benchmark gpal's SOAP against dscribe 2.1.2 (a script: prints, does not assert).

Setting (DESIGN.md §2): fcc Cu, n_max 8, l_max 6, sigma 0.5, r_cut 5 Å, periodic,
weighting {"function": "poly", "r0": 5.0, "c": 1, "m": 1}, 108 and 4000 atoms rattled
by 0.01 Å (seeded). Times are wall-clock µs/atom, median of several repeats after a
warm-up, on all numba threads. Peak memory of create+derivatives at 4000 atoms is
measured in a fresh subprocess (tracemalloc peak and the increase of the peak resident
set size, VmHWM).

Usage: python benchmarks/bench_soap.py [--repeats 5] [--sizes 108 4000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

try:  # run from a checkout without installing
    import gpal  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SETTINGS = dict(r_cut=5.0, n_max=8, l_max=6, sigma=0.5, periodic=True)
WEIGHTING = {"function": "poly", "r0": 5.0, "c": 1, "m": 1}
GIB = 1024**3
DS_DERIV = "dscribe derivatives (numerical, 1 run)"


def make_cu(n_atoms: int, seed: int = 0):
    from ase.build import bulk

    rep = round((n_atoms / 4) ** (1 / 3))
    if 4 * rep**3 != n_atoms:
        raise ValueError(f"{n_atoms} is not 4 k^3 (fcc cubic supercell)")
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(rep)
    atoms.rattle(0.01, seed=seed)
    return atoms


def timeit(func, repeats: int) -> tuple[float, float]:
    """Median wall and CPU time (summed over threads) of ``func()``, in seconds."""
    func()  # warm-up
    wall, cpu = [], []
    for _ in range(repeats):
        c = time.process_time()
        t = time.perf_counter()
        func()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return float(np.median(wall)), float(np.median(cpu))


def peak_rss() -> int:
    """Peak resident set size of this process in bytes.

    Linux: VmHWM from /proc (ru_maxrss is inherited across exec, so a fresh child
    would report its parent's peak); elsewhere ru_maxrss.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def memory_child(n_atoms: int) -> None:
    """Run in a fresh process: peak memory of one create+derivatives call."""
    from gpal.descriptors import SOAP

    soap = SOAP(["Cu"], weighting=dict(WEIGHTING), **SETTINGS)
    atoms = make_cu(n_atoms)
    soap.derivatives(
        make_cu(108)
    )  # compile / load the numba cache outside the measurement
    hwm0 = peak_rss()
    tracemalloc.start()
    res = soap.derivatives(atoms)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    hwm1 = peak_rss()
    out = {
        "tracemalloc_peak": peak,
        "peak_rss_delta": hwm1 - hwm0,
        "dX_bytes": res.dX.nbytes,
        "n_pairs": len(res.center),
    }
    print(json.dumps(out))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sizes", type=int, nargs="+", default=[108, 4000])
    parser.add_argument("--memory-child", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        memory_child(args.memory_child)
        return 0

    import numba
    from dscribe.descriptors import SOAP as DscribeSOAP

    from gpal.descriptors import SOAP

    soap = SOAP(["Cu"], weighting=dict(WEIGHTING), **SETTINGS)
    ref = DscribeSOAP(
        species=["Cu"],
        rbf="gto",
        weighting=dict(WEIGHTING),
        compression={"mode": "off"},
        average="off",
        **SETTINGS,
    )
    print(f"gpal SOAP benchmark: fcc Cu, {SETTINGS}, weighting={WEIGHTING}")
    print(
        f"features: {soap.get_number_of_features()}, "
        f"numba threads: {numba.get_num_threads()}, "
        f"neighbour cutoff {soap.cutoff_:.3f} Å, median of {args.repeats} repeats; "
        f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs"
    )
    print(
        "wall = elapsed µs/atom (the figure of merit); cpu = CPU µs/atom summed over "
        "threads (less sensitive to other jobs)"
    )
    results = {}
    for n in args.sizes:
        atoms = make_cu(n)
        exp = soap.expand(atoms)
        G = np.random.default_rng(0).normal(size=exp.descriptor.shape)
        X_ref = ref.create(atoms)
        err = np.abs(soap.create(atoms) - X_ref).max() / np.abs(X_ref).max()
        reps_heavy = max(3, args.repeats // 2) if n > 1000 else args.repeats
        r = {
            "gpal create": timeit(lambda: soap.create(atoms), args.repeats),
            "gpal create+derivatives": timeit(
                lambda: soap.derivatives(atoms), reps_heavy
            ),
            "gpal expand+backward": timeit(
                lambda: soap.expand(atoms).backward(G), args.repeats
            ),
            "dscribe create": timeit(lambda: ref.create(atoms), args.repeats),
        }
        if n <= 200:
            # method="auto" falls back to numerical for periodic + weighting
            c = time.process_time()
            t = time.perf_counter()
            ref.derivatives(atoms, method="auto", attach=True)
            r[DS_DERIV] = (time.perf_counter() - t, time.process_time() - c)
        results[n] = {k: (w / n * 1e6, c / n * 1e6) for k, (w, c) in r.items()}
        print(
            f"\n{n} atoms ({len(exp.center) / n:.1f} pairs/atom), "
            f"max rel. diff to dscribe create: {err:.1e}"
        )
        print(f"  {'':42s} {'wall':>10s} {'cpu':>10s}")
        for k, (w, c) in results[n].items():
            print(f"  {k:42s} {w:10.1f} {c:10.1f} µs/atom")
        d = results[n]["dscribe create"]
        ratios = [
            ("gpal create / dscribe create", "gpal create", d, "(target <= 1)"),
            (
                "gpal create+derivs / dscribe create",
                "gpal create+derivatives",
                d,
                "(target <= 3)",
            ),
            ("gpal expand+backward / dscribe create", "gpal expand+backward", d, ""),
        ]
        if DS_DERIV in results[n]:
            ratios.append(
                (
                    "gpal create+derivs / dscribe derivs",
                    "gpal create+derivatives",
                    results[n][DS_DERIV],
                    "",
                )
            )
        for label, key, ref_t, target in ratios:
            w = results[n][key][0] / ref_t[0]
            c = results[n][key][1] / ref_t[1]
            print(f"  ratio {label:36s} {w:10.4f} {c:10.4f}   {target}")

    if len(args.sizes) >= 2:
        small, large = min(args.sizes), max(args.sizes)
        print(f"\nper-atom time at {large} / at {small} atoms (target <= 1.3):")
        for k in (
            "gpal create",
            "gpal create+derivatives",
            "gpal expand+backward",
            "dscribe create",
        ):
            w = results[large][k][0] / results[small][k][0]
            c = results[large][k][1] / results[small][k][1]
            print(f"  {k:42s} {w:10.2f} {c:10.2f}")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")

    n_mem = max(args.sizes)
    proc = subprocess.run(
        [sys.executable, __file__, "--memory-child", str(n_mem)],
        capture_output=True,
        text=True,
        check=True,
    )
    mem = json.loads(proc.stdout.strip().splitlines()[-1])
    print(
        f"\npeak memory of create+derivatives at {n_mem} atoms "
        f"({mem['n_pairs']} pairs), "
        "fresh process (target < 1 GB):"
    )
    for k in ("dX_bytes", "tracemalloc_peak", "peak_rss_delta"):
        print(
            f"  {k:20s} {mem[k]:14,d} B = {mem[k] / GIB:6.3f} GiB "
            f"= {mem[k] / 1e9:6.3f} GB"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
