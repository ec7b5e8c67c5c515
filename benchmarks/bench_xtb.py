"""Active learning of a molecule with a real quantum oracle: ethanol, GFN2-xTB, 500 K.

Needs ``pip install tblite`` (an ASE calculator); exits with a message otherwise.

Prints: oracle calls, wall time (and its split), and the final model's force RMSE
against xTB on an independent xTB MD trajectory at the same temperature, beside a
model fitted to the same number of evenly spaced frames of an xTB trajectory.

Run:  OMP_NUM_THREADS=1 python benchmarks/bench_xtb.py [--steps 2000]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from ase import units  # noqa: E402
from ase.build import molecule  # noqa: E402
from ase.calculators.singlepoint import SinglePointCalculator  # noqa: E402
from ase.md.langevin import Langevin  # noqa: E402
from ase.md.velocitydistribution import Stationary, ZeroRotation, thermalize_momenta  # noqa: E402

from gpal import SOAP, ActiveLearner, MDSettings, OracleSpec, SparseGP, Trigger  # noqa: E402


def xtb():
    from tblite.ase import TBLite

    return TBLite(method="GFN2-xTB", verbosity=0)


def xtb_trajectory(atoms, steps, every, temperature, seed, timestep):
    a = atoms.copy()
    a.calc = xtb()
    rng = np.random.default_rng(seed)
    thermalize_momenta(a, temperature_K=temperature, rng=rng)
    Stationary(a)
    ZeroRotation(a)
    dyn = Langevin(a, timestep * units.fs, temperature_K=temperature, friction=0.02 / units.fs,
                   fixcm=False, rng=rng)
    frames = []
    for _ in range(steps // every):
        dyn.run(every)
        b = a.copy()
        b.calc = SinglePointCalculator(b, energy=a.get_potential_energy(), forces=a.get_forces())
        frames.append(b)
    return frames


def descriptor():
    return SOAP(species=["H", "C", "O"], r_cut=4.5, n_max=6, l_max=4, sigma=0.5, periodic=False,
                weighting={"function": "poly", "r0": 4.5, "c": 1, "m": 1})


def force_rmse(model, frames):
    err = np.concatenate([(model.predict(a)["forces"] - a.get_forces()).ravel() for a in frames])
    return float(np.sqrt(np.mean(err**2)))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--temperature", type=float, default=500.0)
    p.add_argument("--timestep", type=float, default=0.5, help="fs")
    p.add_argument("--quantity", default="forces_std", choices=("energies_std", "forces_std"))
    p.add_argument("--threshold", type=float, default=0.05, help="trigger threshold (eV or eV/Å)")
    p.add_argument("--every", type=int, default=5)
    p.add_argument("--run-dir", default="benchmarks/.cache/xtb_run")
    args = p.parse_args(argv)
    try:
        import tblite.ase  # noqa: F401
    except ImportError:
        print("tblite is not installed (pip install tblite): benchmark skipped")
        return
    mol = molecule("CH3CH2OH")
    print(f"independent xTB test trajectory (2000 steps at {args.temperature} K) ...")
    t0 = time.perf_counter()
    test = xtb_trajectory(mol, 2000, 50, args.temperature, seed=101, timestep=args.timestep)
    t_ref = time.perf_counter() - t0
    for f in ("train.xyz", "log.jsonl", "state.json", "model.npz", "walkers.npz", "bootstrap.xyz", "summary.json"):
        path = os.path.join(args.run_dir, f)
        if os.path.exists(path):
            os.remove(path)
    learner = ActiveLearner(
        mol, OracleSpec("tblite.ase:TBLite", {"method": "GFN2-xTB", "verbosity": 0}),
        SparseGP(descriptor(), n_sparse=100, energy_noise=0.005, force_noise=0.05),
        run_dir=args.run_dir,
        md=MDSettings(temperature=args.temperature, timestep=args.timestep),
        trigger=Trigger(quantity=args.quantity, threshold=args.threshold, every=args.every),
        n_bootstrap=6, rattle=0.05, sparse_per_label=9, log_every=100,
    )
    t0 = time.perf_counter()
    summary = learner.run(args.steps)
    wall = time.perf_counter() - t0
    print(summary)
    al = force_rmse(learner.model, test)
    n = summary.oracle_calls
    every = max(args.steps // n, 1)
    naive_frames = xtb_trajectory(mol, every * n, every, args.temperature, seed=202, timestep=args.timestep)
    naive = SparseGP(descriptor(), n_sparse=len(learner.model.sparse_X_), energy_noise=0.005, force_noise=0.05)
    naive.fit(naive_frames)
    naive.optimize_hyperparameters(optimize_noise=False)
    ref_rms = float(np.sqrt(np.mean(np.concatenate([a.get_forces().ravel() for a in test]) ** 2)))
    print("\nresults")
    print(f"  oracle (xTB) calls            : {n}")
    print(f"  wall time                     : {wall:.0f} s (oracle {summary.time_oracle:.1f} s, "
          f"model updates {summary.time_update:.1f} s, MD {summary.time_md:.1f} s)")
    print(f"  xTB MD for reference, per step: {1000 * t_ref / 2000:.2f} ms")
    print(f"  force RMSE vs xTB, independent trajectory: {al:.4f} eV/Å (RMS force {ref_rms:.3f} eV/Å)")
    print(f"  same budget, every {every}-th xTB MD frame : {force_rmse(naive, test):.4f} eV/Å")


if __name__ == "__main__":
    sys.exit(main())
