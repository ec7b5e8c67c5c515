"""On-the-fly active learning on EMT Cu, against the same oracle budget spent naively.

What it measures (issue targets in brackets):

* an ActiveLearner run: fcc Cu, 108 atoms, Langevin at 1200 K, 20,000 steps of 1 fs,
  EMT as the oracle: oracle calls in all [<= 30], the fraction of steps after the first
  2,000 that called the oracle [< 0.5 %], wall time [<= 10 min on 2 cores], and the final
  model's force RMSE on an independent EMT trajectory at 1200 K [<= 0.04 eV/Å];
* the same number of oracle labels spent on every n-th frame of an EMT MD trajectory
  (the naive way), fitted with the same model settings: both held-out errors side by side.

Run:  python benchmarks/bench_active.py            (full, ~10 min)
      python benchmarks/bench_active.py --steps 4000   (shorter)
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from ase import units  # noqa: E402
from ase.build import bulk  # noqa: E402
from ase.calculators.emt import EMT  # noqa: E402
from ase.calculators.singlepoint import SinglePointCalculator  # noqa: E402
from ase.md.langevin import Langevin  # noqa: E402
from ase.md.velocitydistribution import thermalize_momenta  # noqa: E402

from gpal import SOAP, ActiveLearner, MDSettings, SparseGP, Trigger  # noqa: E402


def emt_trajectory(atoms, steps, every, temperature, seed):
    """Label every ``every``-th frame of an EMT Langevin trajectory."""
    a = atoms.copy()
    a.calc = EMT()
    rng = np.random.default_rng(seed)
    thermalize_momenta(a, temperature_K=temperature, rng=rng)
    dyn = Langevin(a, 1.0 * units.fs, temperature_K=temperature, friction=0.02 / units.fs,
                   fixcm=False, rng=rng)
    frames = []
    for _ in range(steps // every):
        dyn.run(every)
        b = a.copy()
        b.calc = SinglePointCalculator(b, energy=a.get_potential_energy(), forces=a.get_forces(),
                                       stress=a.get_stress())
        frames.append(b)
    return frames


def descriptor():
    return SOAP(species=["Cu"], r_cut=5.0, n_max=8, l_max=6, sigma=0.5, periodic=True,
                weighting={"function": "poly", "r0": 5.0, "c": 1, "m": 1})


def force_rmse(model, frames):
    err = np.concatenate([(model.predict(a)["forces"] - a.get_forces()).ravel() for a in frames])
    return float(np.sqrt(np.mean(err**2)))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20000)
    p.add_argument("--temperature", type=float, default=1200.0)
    p.add_argument("--quantity", default="forces_std", choices=("forces_std", "energies_std"))
    p.add_argument("--threshold", type=float, default=0.05, help="trigger threshold (eV/Å or eV)")
    p.add_argument("--every", type=int, default=10, help="check the trigger every this many steps")
    p.add_argument("--adaptive", action="store_true", help="VASP-style adaptive threshold")
    p.add_argument("--n-sparse", type=int, default=100)
    p.add_argument("--sparse-per-label", type=int, default=20)
    p.add_argument("--run-dir", default="benchmarks/.cache/active_run")
    p.add_argument("--test-steps", type=int, default=4000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    cell = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(3)
    print(f"independent EMT test trajectory: {args.test_steps} steps at {args.temperature} K ...")
    test = emt_trajectory(cell, args.test_steps, 200, args.temperature, seed=1000 + args.seed)

    run_dir = Path(args.run_dir)
    for f in ("train.xyz", "log.jsonl", "state.json", "model.npz", "walkers.npz", "bootstrap.xyz", "summary.json"):
        (run_dir / f).unlink(missing_ok=True)
    learner = ActiveLearner(
        cell, EMT(), SparseGP(descriptor(), n_sparse=args.n_sparse),
        run_dir=run_dir,
        md=MDSettings(temperature=args.temperature, timestep=1.0, friction=0.02),
        trigger=Trigger(quantity=args.quantity, threshold=args.threshold, adaptive=args.adaptive,
                        threshold_min=0.5 * args.threshold, every=args.every),
        sparse_per_label=args.sparse_per_label,
        random_state=args.seed,
        log_every=100,
    )
    t0 = time.perf_counter()
    summary = learner.run(args.steps)
    wall = time.perf_counter() - t0
    print(summary)

    calls_after = 0
    with open(run_dir / "log.jsonl") as fh:
        for line in fh:
            rec = json.loads(line)
            if rec.get("event") == "label" and rec.get("reason") != "bootstrap" and rec["step"] >= 2000:
                calls_after += rec["n"]
    n_after = max(args.steps - 2000, 1)
    al_rmse = force_rmse(learner.model, test)

    budget = summary.oracle_calls
    print(f"\nnaive baseline: {budget} labels from every n-th frame of a {args.steps}-step EMT trajectory ...")
    every = max(args.steps // budget, 1)
    naive_frames = emt_trajectory(cell, every * budget, every, args.temperature, seed=2000 + args.seed)
    naive = SparseGP(descriptor(), n_sparse=args.n_sparse + args.sparse_per_label * max(budget - 4, 0))
    naive.fit(naive_frames)
    naive.optimize_hyperparameters(optimize_noise=False)
    naive_rmse = force_rmse(naive, test)

    print("\nresults (targets in brackets)")
    print(f"  oracle calls in all            : {summary.oracle_calls}   [<= 30]")
    print(f"  steps calling the oracle after 2000: {calls_after}/{n_after} = "
          f"{100 * calls_after / n_after:.3f} %   [< 0.5 %]")
    print(f"  wall time                      : {wall:.0f} s   [<= 600 s]")
    print(f"  MD cost on the GP              : {1e6 * summary.time_md / max(summary.steps, 1) / len(cell):.0f} µs/atom/step")
    print(f"  force RMSE on independent traj : {al_rmse:.4f} eV/Å   [<= 0.04]")
    print(f"  same budget, every {every}-th EMT frame: {naive_rmse:.4f} eV/Å  "
          f"(active / naive = {al_rmse / naive_rmse:.2f})")


if __name__ == "__main__":
    main()
