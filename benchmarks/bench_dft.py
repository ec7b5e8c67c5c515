"""On-the-fly learning with a DFT oracle (PySCF) against AIMD subsampled into a training set.

System: methanol (6 atoms), PBE/def2-SVP with density fitting (gpal.dft.PySCF), Langevin
MD at 500 K, 0.5 fs steps, friction 0.02 /fs. Needs ``pip install pyscf``.

The two ways a user gets a potential for this molecule:

* **gpal**: ``ActiveLearner`` with its defaults and the MD protocol above, ``--steps``
  MD steps on the model; every DFT call it makes is counted (bootstrap, uncertain
  frames, rollbacks, failures).
* **AIMD alternative**: run the same MD protocol with DFT forces (one DFT call per step)
  and fit the same model to evenly spaced frames of it. A trajectory of L steps costs L
  DFT calls whatever number of frames is then kept.

Both are judged on held-out frames of an independent AIMD trajectory (another seed):
force RMSE (eV/Å) and energy RMSE (meV/atom). Printed: DFT calls, DFT wall time, gpal's
own time, and errors; "equal calls" fits the AIMD model to as many frames as gpal made
calls (they come from a trajectory of ``--aimd-steps`` calls); "equal error" gives the
shortest AIMD prefix whose subsampled model is as accurate as gpal's, in DFT calls.
``--delta`` adds an active-learning run of a Δ-model over GFN2-xTB (tblite).

AIMD trajectories are cached in ``benchmarks/.cache/`` (one extxyz per seed and length,
written frame by frame; a cut run is reused as far as it got and said so).

Run:  OMP_NUM_THREADS=1 python benchmarks/bench_dft.py [--steps 400] [--aimd-steps 600] [--delta]
      OMP_NUM_THREADS=1 python benchmarks/bench_dft.py --only-aimd --seed 1 --aimd-steps 600
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from ase import units  # noqa: E402
from ase.build import molecule  # noqa: E402
from ase.calculators.singlepoint import SinglePointCalculator  # noqa: E402
from ase.io import read, write  # noqa: E402
from ase.md.langevin import Langevin  # noqa: E402
from ase.md.velocitydistribution import Stationary, ZeroRotation, thermalize_momenta  # noqa: E402

CACHE = Path(__file__).resolve().parent / ".cache"
TEMPERATURE, TIMESTEP, FRICTION = 500.0, 0.5, 0.02
DFT = {"xc": "PBE", "basis": "def2-SVP", "density_fit": True}
MOLECULE = "CH3OH"


def aimd(steps: int, seed: int, *, verbose: bool = True) -> tuple[list, float]:
    """Langevin AIMD with PySCF, every step's frame labelled; cached. Returns (frames, s/call)."""
    from gpal.dft import PySCF

    CACHE.mkdir(exist_ok=True)
    path = CACHE / f"aimd_{MOLECULE}_{DFT['xc']}_{DFT['basis']}_T{TEMPERATURE:g}_dt{TIMESTEP:g}_s{seed}_n{steps}.xyz"
    done = path.with_suffix(".done")
    if done.exists():
        frames = read(path, ":")
        return frames, float(done.read_text())
    if path.exists():
        path.unlink()
    a = molecule(MOLECULE)
    a.calc = PySCF(**DFT)
    rng = np.random.default_rng(seed)
    thermalize_momenta(a, temperature_K=TEMPERATURE, rng=rng)
    Stationary(a)
    ZeroRotation(a)
    dyn = Langevin(a, TIMESTEP * units.fs, temperature_K=TEMPERATURE, friction=FRICTION / units.fs,
                   fixcm=False, rng=rng)
    frames, t_dft = [], 0.0

    def record():
        nonlocal t_dft
        t0 = time.perf_counter()
        e, f = a.get_potential_energy(), a.get_forces()
        t_dft += time.perf_counter() - t0
        b = a.copy()
        b.calc = SinglePointCalculator(b, energy=e, forces=f)
        write(path, b, append=True)
        frames.append(b)

    t0 = time.perf_counter()
    for k in range(steps):
        dyn.run(1)  # the force call of this step is the DFT call; record() reuses it
        record()
        if verbose and (k + 1) % 50 == 0:
            print(f"  AIMD seed {seed}: {k + 1}/{steps} steps, {(time.perf_counter() - t0) / (k + 1):.2f} s/step",
                  flush=True)
    per_call = (time.perf_counter() - t0) / steps
    done.write_text(f"{per_call}")
    return frames, per_call


def cached_aimd(steps: int, seed: int) -> tuple[list, float, bool]:
    """The cached AIMD frames, complete or as far as a cut run got: (frames, s/call, complete)."""
    path = CACHE / f"aimd_{MOLECULE}_{DFT['xc']}_{DFT['basis']}_T{TEMPERATURE:g}_dt{TIMESTEP:g}_s{seed}_n{steps}.xyz"
    done = path.with_suffix(".done")
    if done.exists():
        return read(path, ":"), float(done.read_text()), True
    if path.exists():
        return read(path, ":"), float("nan"), False
    frames, per_call = aimd(steps, seed)
    return frames, per_call, True


def errors(model, frames) -> tuple[float, float]:
    """Force RMSE (eV/Å) and energy RMSE (meV/atom) of ``model`` on labelled ``frames``."""
    fe, ee = [], []
    for a in frames:
        p = model.predict(a)
        fe.append((p["forces"] - a.get_forces()).ravel())
        ee.append((p["energy"] - a.get_potential_energy()) / len(a))
    ee = np.array(ee)
    ee -= ee.mean()  # a constant energy offset is not an error of a potential
    return float(np.sqrt(np.mean(np.concatenate(fe) ** 2))), 1000 * float(np.sqrt(np.mean(ee**2)))


def fit_subsample(frames, n: int, n_sparse: int, baseline=None):
    from gpal import SparseGP

    idx = np.unique(np.linspace(0, len(frames) - 1, n).round().astype(int))
    model = SparseGP(n_sparse=n_sparse, baseline=baseline)  # gpal's defaults, as the learner's
    return model.fit([frames[i] for i in idx])


def learn(steps: int, run_dir: Path, baseline=None, reuse: bool = False, threshold: float | None = None):
    """The active learner with its defaults (a Δ-model over ``baseline`` if given).

    Returns (model, summary dict, wall time in s); with ``reuse`` a finished run in
    ``run_dir`` is read back instead of repeated.
    """
    import json

    from gpal import ActiveLearner, MDSettings, SparseGP, Trigger, load
    from gpal.oracle import pyscf_oracle

    if reuse and (run_dir / "summary.json").exists():
        s = json.loads((run_dir / "summary.json").read_text())
        return load(run_dir / "model.npz"), s, s["wall_time"]
    if run_dir.exists():
        shutil.rmtree(run_dir)
    learner = ActiveLearner(
        molecule(MOLECULE), pyscf_oracle(**DFT),
        None if baseline is None else SparseGP(n_sparse=300, baseline=baseline),  # 300: the default
        run_dir=run_dir, md=MDSettings(temperature=TEMPERATURE, timestep=TIMESTEP, friction=FRICTION),
        trigger=Trigger() if threshold is None else Trigger(threshold=threshold, adaptive=False),
        log_every=100, progress=False,
    )
    t0 = time.perf_counter()
    summary = learner.run(steps)
    from dataclasses import asdict

    return learner.model, asdict(summary), time.perf_counter() - t0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=400, help="MD steps of the active learner")
    p.add_argument("--aimd-steps", type=int, default=600, help="steps of the AIMD training trajectory")
    p.add_argument("--test-steps", type=int, default=300, help="steps of the independent AIMD test trajectory")
    p.add_argument("--test-every", type=int, default=10)
    p.add_argument("--delta", action="store_true", help="also learn a Δ-model over GFN2-xTB (tblite)")
    p.add_argument("--only-aimd", action="store_true", help="only build (cache) one AIMD trajectory")
    p.add_argument("--only-learn", action="store_true", help="only run the active learner(s)")
    p.add_argument("--reuse", action="store_true", help="reuse finished learner runs in --run-dir")
    p.add_argument("--no-plain", action="store_true", help="skip the plain (non-Δ) learner run")
    p.add_argument("--threshold", type=float, default=None,
                   help="fixed force-std trigger threshold, eV/Å (default: the learner's adaptive default)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--run-dir", default=str(CACHE / "dft_run"))
    args = p.parse_args(argv)
    try:
        import pyscf  # noqa: F401
    except ImportError:
        print("pyscf is not installed (pip install pyscf): benchmark skipped")
        return
    if args.only_aimd:
        frames, per_call = aimd(args.aimd_steps, args.seed)
        print(f"AIMD seed {args.seed}: {len(frames)} frames, {per_call:.2f} s per step")
        return
    runs = [] if args.no_plain else [("gpal", None)]
    if args.delta:
        runs.append(("gpal Δ over GFN2-xTB", {"factory": "tblite.ase:TBLite",
                                              "kwargs": {"method": "GFN2-xTB", "verbosity": 0}}))
    if args.only_learn:
        for name, baseline in runs:
            model, s, wall = learn(args.steps, Path(args.run_dir + ("_delta" if baseline else "") + (
                f"_thr{args.threshold:g}" if args.threshold else "_defaults")), baseline, threshold=args.threshold)
            print(f"{name}: {s['oracle_calls']} DFT calls, wall {wall:.0f} s, DFT {s['time_oracle']:.0f} s")
        return
    train, t_call, complete = cached_aimd(args.aimd_steps, seed=1)
    test_traj, _, test_complete = cached_aimd(args.test_steps, seed=2)
    test = test_traj[args.test_every - 1::args.test_every]
    if not complete:
        print(f"NOTE: the AIMD training trajectory was cut at {len(train)} of {args.aimd_steps} steps")
    if not test_complete:
        print(f"NOTE: the AIMD test trajectory was cut at {len(test_traj)} of {args.test_steps} steps")
    ref_rms = float(np.sqrt(np.mean(np.concatenate([a.get_forces().ravel() for a in test]) ** 2)))
    print(f"{MOLECULE}, {DFT['xc']}/{DFT['basis']} (RI), {TEMPERATURE:g} K, {TIMESTEP} fs; "
          f"test: {len(test)} frames of an independent AIMD run (RMS force {ref_rms:.3f} eV/Å)")

    results = []
    for name, baseline in runs:
        model, s, wall = learn(args.steps, Path(args.run_dir + ("_delta" if baseline else "") + (
                f"_thr{args.threshold:g}" if args.threshold else "_defaults")), baseline,
                               reuse=args.reuse, threshold=args.threshold)
        f_err, e_err = errors(model, test)
        results.append((name, baseline, s, wall, f_err, e_err, len(model.sparse_X_)))
        print(f"\n{name}: {s['oracle_calls']} DFT calls ({s['oracle_calls_by_reason']}), failures "
              f"{s['oracle_failures']}; wall {wall:.0f} s = DFT {s['time_oracle']:.0f} s + gpal "
              f"{wall - s['time_oracle']:.0f} s; force RMSE {f_err:.4f} eV/Å, energy RMSE {e_err:.2f} meV/atom")

    name, _, s, wall, f_al, e_al, n_sparse = results[0]
    n_calls = s["oracle_calls"]
    print(f"\nAIMD alternative (same protocol, {len(train)} steps = {len(train)} DFT calls, "
          f"{t_call:.2f} s per call, {len(train) * t_call:.0f} s of DFT):")
    print(f"  {'AIMD steps (calls)':>18} {'frames fitted':>13} {'force RMSE':>11} {'energy':>8}  vs gpal")
    curve = []
    lengths = sorted({L for L in (n_calls, 2 * n_calls, 50, 100, 200, 300, 400, 600, len(train)) if L <= len(train)})
    for L in lengths:
        n_fit = min(L, max(n_calls, 40))
        m = fit_subsample(train[:L], n_fit, n_sparse)
        f, e = errors(m, test)
        curve.append((L, f))
        print(f"  {L:>18} {n_fit:>13} {f:>11.4f} {e:>8.2f}  force ×{f / f_al:.2f}")
    m = fit_subsample(train, n_calls, n_sparse)
    f_eq, e_eq = errors(m, test)
    print(f"\nequal DFT calls ({n_calls}): gpal {f_al:.4f} eV/Å, {e_al:.2f} meV/atom; AIMD subsample "
          f"({n_calls} evenly spaced frames of {len(train)} steps) {f_eq:.4f} eV/Å, {e_eq:.2f} meV/atom "
          f"(ratio AIMD/gpal {f_eq / f_al:.2f}; that AIMD cost {len(train)} calls)")
    reach = [L for L, f in curve if f <= f_al]
    if reach:
        print(f"equal force error: AIMD needs {reach[0]} DFT calls, gpal {n_calls}: "
              f"{reach[0] / n_calls:.1f}× fewer DFT calls with gpal")
    else:
        print(f"equal force error: no AIMD prefix up to {len(train)} calls reaches gpal's error: "
              f"> {len(train) / n_calls:.1f}× fewer DFT calls with gpal")
    print(f"equal DFT wall time: gpal's DFT time {s['time_oracle']:.0f} s buys "
          f"{s['time_oracle'] / t_call:.0f} AIMD steps")


if __name__ == "__main__":
    sys.exit(main())
