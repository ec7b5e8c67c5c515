"""Δ-learning at equal label budget: GFN2-xTB labels, GFN1-xTB baseline, ethanol.

Both models are ``SparseGP`` with gpal's defaults (default descriptor, hyperparameters
by the evidence); the Δ-model is ``SparseGP(baseline="tblite.ase:TBLite",
baseline_kwargs={"method": "GFN1-xTB"})``, i.e. it learns GFN2 − GFN1 and predicts
GFN1 + GP. Training frames: evenly spaced frames of one GFN2-xTB Langevin trajectory
(500 K, 0.5 fs, friction 0.02 /fs); test: every 50th frame of an independent trajectory
(another seed). Printed: the learning curves (held-out force RMSE, eV/Å, and energy RMSE,
meV/atom, after removing the mean offset) of both models at 5, 10, 20 and 40 labels, their
ratio (target ≤ 0.6), and the baseline alone (GFN1 against GFN2) for scale.

Needs ``pip install tblite``. Run:  OMP_NUM_THREADS=1 python benchmarks/bench_delta.py
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from ase.build import molecule  # noqa: E402
from bench_xtb import xtb_trajectory  # noqa: E402  (the same GFN2-xTB Langevin frames)

BASELINE = {"baseline": "tblite.ase:TBLite", "baseline_kwargs": {"method": "GFN1-xTB", "verbosity": 0}}


def errors(predict, frames):
    """Force RMSE (eV/Å) and energy RMSE (meV/atom, mean offset removed)."""
    fe, ee = [], []
    for a in frames:
        e, f = predict(a)
        fe.append((f - a.get_forces()).ravel())
        ee.append((e - a.get_potential_energy()) / len(a))
    ee = np.array(ee) - np.mean(ee)
    return float(np.sqrt(np.mean(np.concatenate(fe) ** 2))), 1000 * float(np.sqrt(np.mean(ee**2)))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budgets", type=int, nargs="+", default=[5, 10, 20, 40])
    p.add_argument("--steps", type=int, default=4000, help="steps of the training trajectory")
    p.add_argument("--temperature", type=float, default=500.0)
    p.add_argument("--molecule", default="CH3CH2OH")
    args = p.parse_args(argv)
    try:
        from tblite.ase import TBLite
    except ImportError:
        print("tblite is not installed (pip install tblite): benchmark skipped")
        return
    from gpal import SparseGP

    mol = molecule(args.molecule)
    t0 = time.perf_counter()
    pool = xtb_trajectory(mol, args.steps, 10, args.temperature, seed=1, timestep=0.5)
    test = xtb_trajectory(mol, 2000, 50, args.temperature, seed=2, timestep=0.5)
    print(f"{args.molecule}, GFN2-xTB labels, {args.temperature:g} K: training pool {len(pool)} frames "
          f"(every 10th of {args.steps} steps), test {len(test)} frames of an independent run "
          f"({time.perf_counter() - t0:.0f} s of xTB MD)")
    gfn1 = TBLite(method="GFN1-xTB", verbosity=0)

    def base(a):
        b = a.copy()
        b.calc = gfn1
        return b.get_potential_energy(), b.get_forces()

    f0, e0 = errors(base, test)
    rms = float(np.sqrt(np.mean(np.concatenate([a.get_forces().ravel() for a in test]) ** 2)))
    print(f"RMS GFN2 force {rms:.3f} eV/Å; GFN1 alone vs GFN2: force RMSE {f0:.4f} eV/Å, "
          f"energy RMSE {e0:.2f} meV/atom")
    print(f"\n{'labels':>6} | {'plain F':>8} {'Δ F':>8} {'Δ/plain':>7} | {'plain E':>8} {'Δ E':>8} | "
          f"{'fit plain':>9} {'fit Δ':>6}  (F eV/Å, E meV/atom, fit s)")
    ratios = []
    for n in args.budgets:
        idx = np.unique(np.linspace(0, len(pool) - 1, n).round().astype(int))
        frames = [pool[i] for i in idx]
        row = []
        for kw in ({}, BASELINE):
            t = time.perf_counter()
            m = SparseGP(**kw).fit(frames)
            fit = time.perf_counter() - t

            def pred(a, m=m):
                r = m.predict(a)
                return r["energy"], r["forces"]

            row.append((*errors(pred, test), fit))
        (fp, ep, tp), (fd, ed, td) = row
        ratios.append(fd / fp)
        print(f"{len(frames):>6} | {fp:>8.4f} {fd:>8.4f} {fd / fp:>7.2f} | {ep:>8.2f} {ed:>8.2f} | "
              f"{tp:>9.1f} {td:>6.1f}", flush=True)
    print(f"\nΔ/plain force RMSE at equal labels: {', '.join(f'{r:.2f}' for r in ratios)} "
          f"(target ≤ 0.6; max {max(ratios):.2f})")


if __name__ == "__main__":
    sys.exit(main())
