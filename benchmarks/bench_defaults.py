"""Are the evidence-chosen defaults better than the fixed ones? Same frames, same sparse set.

What it measures
----------------
For three systems, the same ``--n-train`` (20) training frames and the same number of
sparse environments, two models are fitted in the same process (A/B, alternating,
fastest of ``--repeats`` fits each):

* ``fixed``    ``SparseGP(n_sparse=M, hyperparameters="fixed")``: gpal's earlier
  defaults (ζ = 4, signal variance 1, noises 0.002 eV/atom, 0.05 eV/Å, 0.005 eV/Å³);
* ``evidence`` ``SparseGP(n_sparse=M)``: the new default, ζ ∈ {2, 3, 4}, signal
  variance and noises chosen by the maximised log marginal likelihood of the training
  frames only.

Both use gpal's default SOAP (r_cut 5 Å, n_max 8, l_max 6). Systems:

* ``Ni``: EMT fcc Ni, 108 atoms (3x3x3 cubic), Langevin MD;
* ``CuAu``: EMT random fcc Cu3Au alloy (25 % Au, Vegard lattice constant), 108 atoms;
* ``ethanol``: GFN2-xTB (tblite) ethanol in vacuum, Langevin MD (0.5 fs steps).

Frames: training and held-out "test" trajectories at ``T`` (own seeds), and a "hot"
trajectory at ``T + --hotter`` (300 K). Reported per system and model:

  F RMSE     held-out force RMSE on the test frames at T (eV/Å)   [evidence <= 0.75 x fixed]
  fit s      fit time (s)                                         [evidence <= 3 x fixed]
  ZMS hot    mean z² on the hot frames of the force std calibrated on the test frames at
             T by one scale factor (gpal.calibration.StdCalibrator) [0.8 - 1.25]
  cov hot    coverage on the hot frames of the 90 % split-conformal interval fitted on
             the test frames at T (gpal.calibration.SplitConformal)  [0.87 - 0.93]

The stds are ``predict(..., forces_std=True)`` (the SoR force std; ``model.residuals``).
Frames are cached under ``benchmarks/.cache/``. Runtime about 5-8 min on 2 busy cores::

    OMP_NUM_THREADS=1 python benchmarks/bench_defaults.py
    python benchmarks/bench_defaults.py --systems Ni --repeats 1   (quick)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from ase import Atoms, units  # noqa: E402
from ase.build import bulk, molecule  # noqa: E402
from ase.calculators.emt import EMT  # noqa: E402
from ase.calculators.singlepoint import SinglePointCalculator  # noqa: E402
from ase.io import read, write  # noqa: E402
from ase.md import thermalize_momenta  # noqa: E402
from ase.md.langevin import Langevin  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import labelled, random_alloy  # noqa: E402

from gpal import SparseGP  # noqa: E402
from gpal.calibration import SplitConformal, StdCalibrator  # noqa: E402

CACHE_DIR = Path(__file__).resolve().parent / ".cache"


# ----------------------------------------------------------------------------- data
def _xtb():
    from tblite.ase import TBLite

    return TBLite(method="GFN2-xTB", verbosity=0)


SYSTEMS = {
    # name: (start structure, calculator factory, T (K), time step fs, steps between frames, n_sparse)
    "Ni": (lambda rng: bulk("Ni", "fcc", a=3.52, cubic=True).repeat(3), EMT, 600.0, 4.0, 20, 200),
    "CuAu": (lambda rng: random_alloy(3, 0.25, rng), EMT, 600.0, 4.0, 20, 200),
    "ethanol": (lambda rng: molecule("CH3CH2OH"), _xtb, 300.0, 0.5, 40, 100),
}


def trajectory(system, temperature, n_frames, seed, equilibration=200):
    """Labelled Langevin frames (friction 0.02/fs), cached as extxyz."""
    make, calc, _, dt, interval, _ = SYSTEMS[system]
    params = dict(v=1, system=system, T=temperature, n=n_frames, seed=seed, dt=dt,
                  interval=interval, eq=equilibration)
    key = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
    path = CACHE_DIR / f"defaults_{system}_{int(temperature)}K_s{seed}_{key}.extxyz"
    if path.exists():
        return read(path, index=":")
    rng = np.random.default_rng(seed)
    atoms = make(rng)
    atoms.calc = calc()
    thermalize_momenta(atoms, temperature_K=temperature, rng=rng)
    dyn = Langevin(atoms, dt * units.fs, temperature_K=temperature,
                   friction=0.02 / units.fs, fixcm=False, rng=rng)
    dyn.run(equilibration)
    frames = []
    for _ in range(n_frames):
        dyn.run(interval)
        frame = Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
        if frame.pbc.all():
            frames.append(labelled(frame, calc()))
        else:  # a molecule: energy and forces
            frame.calc = calc()
            e, f = frame.get_potential_energy(), frame.get_forces()
            frame.calc = SinglePointCalculator(frame, energy=e, free_energy=e, forces=f)
            frames.append(frame)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.extxyz")
    write(tmp, frames, format="extxyz")
    os.replace(tmp, path)
    return read(path, index=":")


# ----------------------------------------------------------------------------- models
def fit_timed(make, train, repeats):
    """(model, fastest fit time, warnings of the last fit)."""
    best, model, caught = np.inf, None, []
    for _ in range(repeats):
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            t0 = time.perf_counter()
            model = make().fit(train)
            best = min(best, time.perf_counter() - t0)
        caught = [str(x.message) for x in w if issubclass(x.category, UserWarning)]
    return model, best, caught


def evaluate(model, test, hot):
    r_t, r_h = model.residuals(test), model.residuals(hot)
    e_t, s_t, e_h, s_h = r_t["force_error"], r_t["force_std"], r_h["force_error"], r_h["force_std"]
    sc = StdCalibrator().fit(e_t, s_t)
    conf = SplitConformal(0.1).fit(e_t, s_t)
    return {
        "rmse": float(np.sqrt(np.mean(e_t ** 2))),
        "rmse_hot": float(np.sqrt(np.mean(e_h ** 2))),
        "raw_zms_hot": float(np.mean((e_h / s_h) ** 2)),
        "scale": sc.scale_,
        "zms_hot": float(np.mean((e_h / sc.transform(s_h)) ** 2)),
        "cov_hot": float(np.mean(np.abs(e_h) <= conf.bound(s_h))),
    }


def run_system(system, args):
    _, _, T, _, _, n_sparse = SYSTEMS[system]
    t0 = time.perf_counter()
    train = trajectory(system, T, args.n_train, 1)
    test = trajectory(system, T, args.n_test, 2)
    hot = trajectory(system, T + args.hotter, args.n_test, 3)
    print(f"\n== {system}: {len(train[0])} atoms; train {len(train)} @ {T:g} K, test {len(test)} "
          f"@ {T:g} K, hot {len(hot)} @ {T + args.hotter:g} K; n_sparse {n_sparse} "
          f"(data {time.perf_counter() - t0:.1f} s)", flush=True)
    makers = {
        "fixed": lambda: SparseGP(n_sparse=n_sparse, hyperparameters="fixed"),
        "evidence": lambda: SparseGP(n_sparse=n_sparse),
    }
    models, times, caught = {}, {k: np.inf for k in makers}, {}
    for _ in range(args.repeats):  # alternate A/B so that load changes hit both
        for name, make in makers.items():
            m, t, w = fit_timed(make, train, 1)
            models[name], caught[name] = m, w
            times[name] = min(times[name], t)
    res = {}
    for name, m in models.items():
        res[name] = {**evaluate(m, test, hot), "fit": times[name]}
        print(f"  {name:8s}: {m!r}")
        for w in caught[name]:
            print(f"            warning: {w}")
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=list(SYSTEMS))
    p.add_argument("--n-train", type=int, default=20)
    p.add_argument("--n-test", type=int, default=10)
    p.add_argument("--hotter", type=float, default=300.0, help="K above the training T")
    p.add_argument("--repeats", type=int, default=2, help="fits per model (fastest time counts)")
    args = p.parse_args(argv)
    t_start = time.perf_counter()
    results = {s: run_system(s, args) for s in args.systems}

    def ok(flag):
        return "ok" if flag else "MISS"

    print(f"\n{'system':8s} {'quantity':14s} {'evidence':>9s} {'fixed':>9s} {'ratio':>7s}  target")
    print("-" * 66)
    for s, r in results.items():
        e, f = r["evidence"], r["fixed"]
        ratio = e["rmse"] / f["rmse"]
        print(f"{s:8s} {'F RMSE eV/Å':14s} {e['rmse']:9.4f} {f['rmse']:9.4f} {ratio:7.2f}  "
              f"<= 0.75 x  {ok(ratio <= 0.75)}")
        ratio = e["fit"] / f["fit"]
        print(f"{'':8s} {'fit s':14s} {e['fit']:9.2f} {f['fit']:9.2f} {ratio:7.2f}  <= 3 x  "
              f"{ok(ratio <= 3)}")
        print(f"{'':8s} {'F RMSE hot':14s} {e['rmse_hot']:9.4f} {f['rmse_hot']:9.4f} "
              f"{e['rmse_hot'] / f['rmse_hot']:7.2f}")
        print(f"{'':8s} {'raw ZMS hot':14s} {e['raw_zms_hot']:9.3f} {f['raw_zms_hot']:9.3f}")
        print(f"{'':8s} {'scale (at T)':14s} {e['scale']:9.3f} {f['scale']:9.3f}")
        print(f"{'':8s} {'ZMS hot':14s} {e['zms_hot']:9.3f} {f['zms_hot']:9.3f} {'':7s}  "
              f"0.8-1.25   {ok(0.8 <= e['zms_hot'] <= 1.25)} (fixed {ok(0.8 <= f['zms_hot'] <= 1.25)})")
        print(f"{'':8s} {'cov90 hot':14s} {e['cov_hot']:9.3f} {f['cov_hot']:9.3f} {'':7s}  "
              f"0.87-0.93  {ok(0.87 <= e['cov_hot'] <= 0.93)} (fixed {ok(0.87 <= f['cov_hot'] <= 0.93)})")
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s")
    return results


if __name__ == "__main__":
    main()
