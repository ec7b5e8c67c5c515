"""The ``gpal`` command line.

``gpal learn``                  active learning; no argument: the embedded EMT Cu demo
``gpal learn config.toml``      a real run (TOML; the oracle as an import path + kwargs)
``gpal learn --resume RUN_DIR`` continue a stopped or crashed run
``gpal fit TRAIN.xyz -o MODEL``  fit a model to labelled frames
``gpal md MODEL START.xyz``      MD on a model, writing a trajectory with uncertainties
``gpal validate MODEL TEST.xyz`` metrics table and plots (``--calibrate VAL.xyz``)
``gpal info MODEL``              what a model file contains
``gpal compare-kernels TRAIN TEST`` kernel/descriptor comparison table + learning curve

Every command has ``--help`` and exits non-zero with a one-line reason on bad input.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import tomllib
from pathlib import Path

import numpy as np

from . import __version__
from .exceptions import GpalError

log = logging.getLogger("gpal")

DEFAULT_LEARN = {
    "run_dir": "gpal_run",
    "steps": 3000,
    "structure": {"bulk": "Cu", "crystal": "fcc", "a": 3.61, "cubic": True, "repeat": [3, 3, 3]},
    "oracle": {"factory": "ase.calculators.emt:EMT", "kwargs": {}},
    "md": {"temperature": [300.0, 1000.0], "timestep": 1.0, "friction": 0.02},
    "trigger": {"quantity": "forces_std", "threshold": 0.05, "every": 10},
    "model": {"n_sparse": 100, "energy_noise": 0.002, "force_noise": 0.05, "stress_noise": 0.005},
    "learner": {"n_bootstrap": 4, "sparse_per_label": 10, "n_walkers": 1, "random_state": 0},
    "validation": {"steps": 400, "temperature": 1000.0, "every": 40, "seed": 123},
}


def _deep_update(base: dict, new: dict) -> dict:
    out = dict(base)
    for k, v in new.items():
        out[k] = _deep_update(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _structure(spec: dict):
    from ase.build import bulk
    from ase.io import read

    if "file" in spec:
        return read(spec["file"], index=spec.get("index", 0))
    atoms = bulk(spec["bulk"], spec.get("crystal", "fcc"), a=spec.get("a"), cubic=spec.get("cubic", True))
    return atoms.repeat(tuple(spec.get("repeat", [1, 1, 1])))


def _validation_frames(structure, oracle_spec, cfg: dict):
    """An independent oracle MD trajectory (other seed), every ``every``-th frame labelled."""
    from ase import units
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import thermalize_momenta

    from .oracle import OracleSpec

    calc = OracleSpec(**oracle_spec).make()
    rng = np.random.default_rng(cfg.get("seed", 123))
    a = structure.copy()
    a.calc = calc
    thermalize_momenta(a, temperature_K=cfg["temperature"], rng=rng)
    dyn = Langevin(a, cfg.get("timestep", 1.0) * units.fs, temperature_K=cfg["temperature"],
                   friction=0.02 / units.fs, fixcm=False, rng=rng)
    frames = []
    for _ in range(int(cfg["steps"]) // int(cfg["every"])):
        dyn.run(int(cfg["every"]))
        b = a.copy()
        res = {"energy": a.get_potential_energy(), "forces": a.get_forces()}
        if np.all(a.pbc):
            res["stress"] = a.get_stress()
        b.calc = SinglePointCalculator(b, **res)
        frames.append(b)
    return frames


def cmd_learn(args) -> int:
    from .learner import ActiveLearner, MDSettings, Trigger
    from .oracle import OracleSpec
    from .potential import SparseGP

    if args.resume:
        learner = ActiveLearner.resume(args.resume, progress=not args.quiet)
        summary = learner.run(args.steps or learner.total_steps)
        print(summary)
        return 0
    cfg = DEFAULT_LEARN
    if args.config:
        path = Path(args.config)
        if not path.exists():
            raise GpalError(f"config file {path} does not exist")
        try:
            cfg = _deep_update(DEFAULT_LEARN, tomllib.loads(path.read_text()))
        except tomllib.TOMLDecodeError as exc:
            raise GpalError(f"{path} is not valid TOML: {exc}") from exc
    if args.steps:
        cfg["steps"] = args.steps
    if args.run_dir:
        cfg["run_dir"] = args.run_dir
    run_dir = Path(cfg["run_dir"])
    if (run_dir / "state.json").exists() and not args.overwrite:
        raise GpalError(f"{run_dir} already holds a run; use --resume {run_dir} or --overwrite")
    if args.overwrite and run_dir.exists():
        for name in ("train.xyz", "log.jsonl", "state.json", "model.npz", "walkers.npz", "bootstrap.xyz", "summary.json"):
            (run_dir / name).unlink(missing_ok=True)
    structure = _structure(cfg["structure"])
    oracle = OracleSpec(cfg["oracle"]["factory"], dict(cfg["oracle"].get("kwargs", {})))
    md = cfg["md"]
    temperature = tuple(md["temperature"]) if isinstance(md["temperature"], list) else md["temperature"]
    validation = None
    if cfg.get("validation") and cfg["validation"].get("steps", 0) > 0:
        print(f"gpal: labelling an independent validation trajectory ({cfg['validation']['steps']} steps)")
        validation = _validation_frames(structure, cfg["oracle"], cfg["validation"])
    executor = None
    n_workers = int(cfg.get("workers", 1))
    if n_workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        executor = ProcessPoolExecutor(n_workers)
    descriptor = None
    if cfg.get("descriptor"):
        from .descriptors import SOAP

        d = dict(cfg["descriptor"])
        d.setdefault("weighting", {"function": "poly", "r0": d.get("r_cut", 5.0), "c": 1, "m": 1})
        descriptor = SOAP(
            species=d.pop("species", sorted(set(structure.get_chemical_symbols()))),
            periodic=d.pop("periodic", bool(structure.pbc.any())),
            **d,
        )
    learner = ActiveLearner(
        structure,
        oracle,
        SparseGP(descriptor, **cfg["model"]),
        run_dir=run_dir,
        md=MDSettings(temperature=temperature, timestep=md.get("timestep", 1.0), friction=md.get("friction", 0.02)),
        trigger=Trigger(**cfg["trigger"]),
        validation=validation,
        executor=executor,
        progress=not args.quiet,
        **cfg["learner"],
    )
    summary = learner.run(int(cfg["steps"]))
    print(summary)
    print(f"gpal: model, training set, log and plots are in {run_dir}/")
    if executor is not None:
        executor.shutdown()
    return 0


def cmd_fit(args) -> int:
    from .io import read_frames
    from .kernels import NormalizedDotProduct, SquaredExponential
    from .potential import SparseGP

    frames = read_frames(args.train)
    auto = args.kernel == "dot" and args.zeta == "auto"
    if args.kernel == "dot" and not auto:
        try:
            zeta = int(args.zeta)
        except ValueError:
            raise SystemExit(f"gpal fit: --zeta must be an integer or 'auto', got {args.zeta!r}")
        kernel = NormalizedDotProduct(zeta=zeta)
    elif args.kernel == "se":
        kernel = SquaredExponential(args.length_scale)
    else:
        kernel = None
    model = SparseGP(
        kernel=kernel, n_sparse=args.n_sparse, energy_noise=args.energy_noise,
        force_noise=args.force_noise, stress_noise=args.stress_noise,
    )
    print(f"gpal: fitting {len(frames)} frames ({sum(len(a) for a in frames)} atoms)...", file=sys.stderr)
    if auto:
        from .compare import select_kernel_by_evidence

        sel = select_kernel_by_evidence(model, frames, progress=True)
        print(sel)
        model = sel.model
    else:
        model.fit(frames)
        if args.optimize:
            model.optimize_hyperparameters()
    path = model.save(args.output)
    print(f"gpal: wrote {path} ({model!r})")
    return 0


def cmd_md(args) -> int:
    from ase import units
    from ase.io import Trajectory, read
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import thermalize_momenta
    from ase.md.verlet import VelocityVerlet

    from .calculator import GPCalculator
    from .io import load
    from .learner import _Progress

    model = load(args.model)
    atoms = read(args.start)
    atoms.calc = GPCalculator(model, record_std=True)  # the trajectory keeps the stds
    thermalize_momenta(atoms, temperature_K=args.temperature, rng=np.random.default_rng(args.seed))
    if args.ensemble == "nve":
        dyn = VelocityVerlet(atoms, args.timestep * units.fs)
    else:
        dyn = Langevin(atoms, args.timestep * units.fs, temperature_K=args.temperature,
                       friction=0.02 / units.fs, fixcm=False, rng=np.random.default_rng(args.seed))
    traj = Trajectory(args.output, "w", atoms)
    dyn.attach(traj.write, interval=args.interval)
    prog = _Progress(args.steps, not args.quiet)
    for k in range(args.steps):
        dyn.run(1)
        prog.update(k + 1, f"T={atoms.get_temperature():.0f} K max std={atoms.info['energies_std'].max():.3g} eV")
    prog.close()
    traj.close()
    print(f"gpal: wrote {args.output}")
    return 0


def cmd_validate(args) -> int:
    from . import calibration
    from .io import load, read_frames

    model = load(args.model)
    test = read_frames(args.test)
    if args.calibrate:
        val = model.residuals(read_frames(args.calibrate))
        cal = calibration.StdCalibrator().fit(val["force_error"], val["force_std"])
        conf = calibration.SplitConformal(alpha=args.alpha).fit(val["force_error"], val["force_std"])
        model.set_calibration(forces_std={"scale": float(cal.scale_), "conformal": float(conf.quantile_)})
        model.save(args.model if not args.output else args.output)
        print(f"gpal: calibrated on {args.calibrate}: scale {cal.scale_:.3f}, conformal q {conf.quantile_:.3f}")
    res = model.residuals(test, calibrated=bool(args.calibrate))
    err, std = res["force_error"], res["force_std"]
    metrics = calibration.uncertainty_metrics(err, std, alpha=args.alpha)
    e_true = np.array([a.get_potential_energy() for a in test])
    n = res["n_atoms"]
    e_pred = e_true + res["energy_error"] * n
    print(f"{'quantity':<28}{'value':>12}")
    print(f"{'energy RMSE (eV/atom)':<28}{np.sqrt(np.mean(res['energy_error'] ** 2)):>12.4g}")
    for key in ("rmse", "mae", "nll", "zms", "coverage", "miscalibration_area", "spearman", "ence"):
        if key in metrics:
            print(f"{'force ' + key:<28}{metrics[key]:>12.4g}")
    out = Path(args.plots)
    out.mkdir(parents=True, exist_ok=True)
    f_true = np.concatenate([a.get_forces().ravel() for a in test])
    calibration.plot_parity(f_true, f_true + err, out / "parity_forces.png", label="force (eV/Å)")
    calibration.plot_parity(e_true / n, e_pred / n, out / "parity_energy.png", label="energy (eV/atom)")
    calibration.plot_calibration_curve(err, std, out / "calibration_curve.png")
    calibration.plot_error_vs_uncertainty(err, std, out / "error_vs_uncertainty.png")
    calibration.plot_z_histogram(err, std, out / "z_histogram.png")
    print(f"gpal: plots in {out}/")
    return 0


def cmd_info(args) -> int:
    from .io import read_model_file

    arrays, meta = read_model_file(args.model)
    print(f"gpal model {args.model} (format {meta['format']} v{meta['format_version']}, "
          f"written by gpal {meta.get('gpal_version')})")
    for key in ("descriptor", "kernel", "noise", "e0", "calibration"):
        if key in meta:
            print(f"  {key:<12}: {json.dumps(meta[key])}")
    print(f"  sparse      : {arrays['sparse_X'].shape[0]} environments x {arrays['sparse_X'].shape[1]} features")
    if "frame_natoms" in arrays:
        print(f"  training    : {len(arrays['frame_natoms'])} frames, {int(arrays['frame_natoms'].sum())} atoms")
    return 0


def cmd_compare(args) -> int:
    from .compare import compare_kernels
    from .io import read_frames

    table = compare_kernels(read_frames(args.train), read_frames(args.test), plot=args.plot)
    print(table)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gpal", description="Gaussian-process active learning of interatomic potentials.")
    p.add_argument("--version", action="version", version=f"gpal {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("learn", help="active learning (no argument: the embedded EMT Cu demo)")
    s.add_argument("config", nargs="?", help="TOML configuration (default: the embedded EMT Cu demo)")
    s.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR")
    s.add_argument("--steps", type=int, help="MD steps per walker (overrides the config)")
    s.add_argument("--run-dir", help="run folder (overrides the config)")
    s.add_argument("--overwrite", action="store_true", help="start afresh in an existing run folder")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    s.set_defaults(func=cmd_learn)

    s = sub.add_parser("fit", help="fit a model to labelled frames (extxyz)")
    s.add_argument("train", help="labelled frames (extxyz)")
    s.add_argument("-o", "--output", default="model.npz")
    s.add_argument("--kernel", choices=("dot", "se"), default="dot")
    s.add_argument("--zeta", default="4",
                   help="exponent of the dot-product kernel, or 'auto': the one of 1, 2, 3, 4, 6 "
                        "with the largest log marginal likelihood (hyperparameters and noises "
                        "optimised for each)")
    s.add_argument("--length-scale", type=float, default=0.5)
    s.add_argument("--n-sparse", type=int, default=200)
    s.add_argument("--energy-noise", type=float, default=0.002)
    s.add_argument("--force-noise", type=float, default=0.05)
    s.add_argument("--stress-noise", type=float, default=0.005)
    s.add_argument("--optimize", action="store_true", help="optimise hyperparameters (marginal likelihood)")
    s.set_defaults(func=cmd_fit)

    s = sub.add_parser("md", help="molecular dynamics on a model")
    s.add_argument("model")
    s.add_argument("start", help="start structure (any ASE format)")
    s.add_argument("-o", "--output", default="md.traj")
    s.add_argument("--steps", type=int, default=1000)
    s.add_argument("--temperature", type=float, default=300.0)
    s.add_argument("--timestep", type=float, default=1.0, help="fs")
    s.add_argument("--ensemble", choices=("nvt", "nve"), default="nvt")
    s.add_argument("--interval", type=int, default=10)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("-q", "--quiet", action="store_true")
    s.set_defaults(func=cmd_md)

    s = sub.add_parser("validate", help="errors, calibration metrics and plots on a test set")
    s.add_argument("model")
    s.add_argument("test", help="labelled test frames (extxyz)")
    s.add_argument("--calibrate", metavar="VAL.xyz", help="recalibrate the stds on these frames first")
    s.add_argument("--alpha", type=float, default=0.1, help="miscoverage level of the intervals")
    s.add_argument("--plots", default="validation_plots")
    s.add_argument("-o", "--output", help="write the calibrated model here (default: in place)")
    s.set_defaults(func=cmd_validate)

    s = sub.add_parser("info", help="describe a model file")
    s.add_argument("model")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("compare-kernels", help="compare kernel and descriptor choices")
    s.add_argument("train")
    s.add_argument("test")
    s.add_argument("--plot", default="kernel_comparison.png")
    s.set_defaults(func=cmd_compare)
    return p


def _terminate_as_interrupt(signum, frame):
    """SIGTERM during ``gpal learn``: unwind like Ctrl-C, so the learner checkpoints."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends at once
    raise KeyboardInterrupt(signal.SIGTERM)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    learn = args.command == "learn" and threading.current_thread() is threading.main_thread()
    old_term = signal.signal(signal.SIGTERM, _terminate_as_interrupt) if learn else None
    try:
        return int(args.func(args) or 0)
    except (GpalError, OSError, ValueError, KeyError) as exc:
        print(f"gpal {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, SystemError) as exc:
        # an interrupt inside a numba-compiled call arrives as a SystemError caused by it
        if isinstance(exc, SystemError):
            exc = exc.__cause__ or exc.__context__
        if not learn or not isinstance(exc, KeyboardInterrupt):
            raise
        sig = signal.SIGTERM if exc.args == (signal.SIGTERM,) else signal.SIGINT
        run_dir = args.resume or args.run_dir
        if run_dir and not (Path(run_dir) / "state.json").exists():
            print(f"gpal learn: interrupted by {sig.name} before the run started; nothing to resume",
                  file=sys.stderr)
        else:
            print(f"gpal learn: interrupted by {sig.name}; progress is saved, continue with: "
                  f"gpal learn --resume {run_dir or 'RUN_DIR'}", file=sys.stderr)
        return 128 + sig
    finally:
        if learn:
            signal.signal(signal.SIGTERM, old_term)


if __name__ == "__main__":
    sys.exit(main())
