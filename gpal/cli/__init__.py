"""The ``gpal`` command line.

``gpal learn``                  active learning; no argument: the embedded EMT Cu demo
``gpal learn config.toml``      a real run (TOML, checked; ``--print-config`` shows every key)
``gpal learn --resume RUN_DIR`` continue a stopped or crashed run
``gpal fit TRAIN.xyz -o MODEL``  fit a model to labelled frames (GAP-style label keys too)
``gpal md MODEL START.xyz``      MD on a model, writing extxyz with per-atom uncertainties
``gpal validate MODEL TEST.xyz`` metrics table and plots (``--calibrate VAL.xyz -o OUT``)
``gpal info MODEL``              what a model file contains
``gpal compare-kernels TRAIN TEST`` kernel/descriptor comparison table + learning curve
``gpal ipi MODEL --unix NAME``    serve a model to an i-PI server (or ``--host H --port P``)

Every command has ``--help``. A bad input (a missing or unreadable file, an unknown
configuration key, a wrong option value) ends the command with exit code 2 and one line
on stderr, ``gpal <command>: error: <what is wrong>``; Ctrl-C ends it with exit code 130.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import errno
import hashlib
import json
import logging
import os
import re
import signal
import sys
import threading
import tomllib
import traceback
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .. import __version__
from .config import DEFAULT_LEARN  # noqa: F401  (kept importable from here)
from .config import add_import_folders
from ..exceptions import (BaselineError, BaselineStoppedError, ConfigError, GpalError, InvalidPositionsError,
                          OracleError, OverlappingAtomsError, RunStoppedError, StructureFileError, interrupt_in)

log = logging.getLogger("gpal")

#: errors that mean "bad input": one line on stderr, exit code 2
EXPECTED_ERRORS = (GpalError, ValueError, OSError, KeyError, tomllib.TOMLDecodeError, json.JSONDecodeError)
_STD_UNITS = {"energies_std": "eV", "forces_std": "eV/Å"}


# --------------------------------------------------------------------------- helpers
def _same_start_structure(spec: dict, run_dir: Path, config_path) -> None:
    """On resume: the config's ``[structure] file`` must hold the run's start structure
    (``structures.xyz`` in the run folder); one that cannot be read here is only noted."""
    from ..io import read_frames

    try:
        given = _structure(spec)
    except (GpalError, OSError) as exc:
        warnings.warn(f"{config_path}: [structure] file {spec['file']!r} cannot be read here ({_message(exc)}); "
                      f"the run continues from its own start structure in {run_dir / 'structures.xyz'}",
                      UserWarning, stacklevel=1)
        return
    from ..learning.state import _same_frame

    stored = read_frames(run_dir / "structures.xyz")[0]
    if not (_same_frame(given, stored) and np.allclose(given.cell.array, stored.cell.array, atol=1e-6)):
        raise ConfigError(f"{config_path}: [structure] file {spec['file']!r} holds another structure than the "
                          f"run's start ({run_dir / 'structures.xyz'}); a resumed run cannot change it (or "
                          "start a new run with --run-dir)")


def _check_file_exists(key: str, path: str) -> None:
    """A config's file that is not there: one line naming the key (and, for a relative
    path, the working directory it was read from)."""
    if not Path(path).exists():
        where = "" if Path(path).is_absolute() else f" (a relative path is read from the working directory, {Path.cwd()})"
        raise ConfigError(f"{key} {path!r}: no such file{where}")


def _structure(spec: dict):
    from ase.build import bulk

    from ..io import read_frames

    if "file" in spec:
        _check_file_exists("[structure] file", spec["file"])
        index = spec.get("index", 0)
        if isinstance(index, str):  # ASE's index syntax: "-1", "0:10", "::2"
            from ase.io.formats import string2index

            index = string2index(index)
            if isinstance(index, str):
                raise ConfigError(f"[structure] index must be an integer or an ASE slice such as \"-1\" or "
                                  f"\"0:10\", got {spec['index']!r}")
        try:
            frames = read_frames(spec["file"], index=index)
            if len(frames) > 1:  # (it took the first and said nothing)
                raise ConfigError(f"[structure] index {spec['index']!r} selects {len(frames)} frames of "
                                  f"{spec['file']}; gpal learn starts from one structure (give one index; "
                                  "ActiveLearner takes several start structures in Python)")
            return frames[0]
        except StructureFileError:
            n = len(read_frames(spec["file"]))  # readable as a whole: the index is the problem
            raise ConfigError(f"[structure] index {index} is out of range: {spec['file']} holds "
                              f"{n} frame(s)") from None
    from ase.data import atomic_numbers

    from ase.symbols import string2symbols

    try:  # a symbol, or a compound ase.build.bulk builds ("NaCl" with crystal = "rocksalt")
        symbols = string2symbols(spec["bulk"])
    except (ValueError, KeyError):
        symbols = []
    if not symbols or any(x not in atomic_numbers for x in symbols):  # (ASE would say only "missing entry")
        raise ConfigError(f"[structure] bulk: unknown chemical symbol {spec['bulk']!r} (one element such as "
                          "\"Cu\", or a compound such as \"NaCl\" with crystal = \"rocksalt\")")
    if spec.get("a") is not None and not spec["a"] > 0:
        raise ConfigError(f"[structure] a must be > 0 Å, got {spec['a']}")
    if "repeat" in spec and (len(spec["repeat"]) != 3 or any(
            not isinstance(r, int) or isinstance(r, bool) or r < 1 for r in spec["repeat"])):
        raise ConfigError(f"[structure] repeat must be three integers >= 1, got {spec['repeat']}")
    try:
        atoms = bulk(spec["bulk"], spec.get("crystal", "fcc"), a=spec.get("a"), cubic=spec.get("cubic", True))
    except (ValueError, KeyError, RuntimeError) as exc:  # (ASE: "Unknown structure: fccc.", a missing a)
        raise ConfigError(f"[structure] bulk {spec['bulk']!r}, crystal {spec.get('crystal', 'fcc')!r}: "
                          f"{_message(exc)}") from None
    return atoms.repeat(tuple(spec.get("repeat", [1, 1, 1])))


VALIDATION_TRAJECTORY = "validation_trajectory.xyz"


def _validation_done(path: Path) -> list:
    """The labelled frames of an earlier start's validation trajectory in ``path`` (none
    if absent); a frame a kill cut off mid-write is dropped, and the file rewritten
    without it."""
    from ase.io import iread

    from ..io import write_frames

    if not path.exists():
        return []
    frames = []
    try:
        for a in iread(str(path), index=":", format="extxyz"):
            frames.append(a)
    except Exception:  # (a frame cut off mid-write: the frames before it are whole)
        write_frames(path, frames, overwrite=True)
    return [a for a in frames if "gpal_oracle_calls" in a.info]


def _note_calls(path: Path, record: dict) -> None:
    """Write the JSON ``record`` to ``path`` whole (a temporary file renamed over it,
    without fsync: ~0.3 ms, beside EMT's ~4 ms per call on 32 atoms and a DFT code's
    seconds; what a killed process wrote stays, a power cut may lose the last records)."""
    from ..io import temporary_name

    tmp = path.with_name(temporary_name(path.name))
    try:
        with open(tmp, "w") as fh:
            fh.write(json.dumps(record))
        os.replace(tmp, path)
    except OSError:  # (a record; the labels are what must not be lost)
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _validation_frames(structure, oracle_spec, cfg: dict, progress: bool = True, path: Path | None = None):
    """An independent oracle MD trajectory (other seed), every ``every``-th frame labelled
    (a progress bar over its MD steps with ``progress``).

    With ``path``, each labelled frame is appended to it as it arrives (with its momenta
    and the oracle calls so far), and ``PATH.calls.json`` holds, written before each oracle
    call, the count of calls and the last MD step made (its positions and momenta); it
    goes once the trajectory is done. A trajectory an
    interrupt or kill cut off goes on from that step (its Langevin noise drawn afresh:
    another continuation of the same trajectory): only the forces of that step are
    computed again, and no call is left uncounted. A Ctrl-C or SIGTERM that comes while
    the count is written (before the call) takes it back: only a kill (no handler runs)
    there counts a call not made.

    Returns the frames and the number of oracle evaluations the trajectory made.
    """
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import thermalize_momenta

    from ..io import append_frame, interrupts_deferred, labelled
    from ..learning.oracle import OracleSpec, label_energy

    calc = OracleSpec(**oracle_spec).make()
    n_blocks, every = int(cfg["steps"]) // int(cfg["every"]), int(cfg["every"])
    # what the trajectory follows from: a file of another start (structure, oracle, MD) is not continued
    key = hashlib.sha256(json.dumps({
        "numbers": structure.numbers.tolist(), "positions": np.round(structure.positions, 6).tolist(),
        "cell": np.round(structure.cell.array, 6).tolist(), "pbc": structure.pbc.tolist(),
        "oracle": oracle_spec, **{k: cfg.get(k) for k in ("temperature", "timestep", "every", "seed")},
    }, sort_keys=True, default=str).encode()).hexdigest()[:16]
    frames = _validation_done(path) if path is not None else []
    if any(a.info.get("gpal_validation_key") != key for a in frames):
        raise ConfigError(f"{path} holds the validation labels of another start (its structure, oracle or "
                          "[validation] settings differ): --overwrite moves the folder aside (nothing is "
                          "deleted), or give a new run_dir")
    frames = frames[:n_blocks]
    cut = path.with_suffix(".calls.json") if path is not None else None
    record: dict = {}  # what PATH.calls.json holds: calls so far, and the last step made
    if cut is not None and cut.exists():
        with contextlib.suppress(ValueError, OSError, TypeError):
            record = json.loads(cut.read_text())
            record = record if isinstance(record, dict) else {}
    n_calls = int(frames[-1].info["gpal_oracle_calls"]) if frames else 0
    with contextlib.suppress(ValueError, TypeError, KeyError):
        n_calls = max(n_calls, int(record["oracle_calls"]))
    step = len(frames) * every  # MD steps made
    start = None  # the last step made after the last frame, if the record has it
    with contextlib.suppress(ValueError, TypeError, KeyError):
        if record["key"] == key and step < int(record["step"]) <= n_blocks * every:
            start = (int(record["step"]), np.array(record["positions"], dtype=float),
                     np.array(record["momenta"], dtype=float))
            if start[1].shape != (len(structure), 3) or start[2].shape != (len(structure), 3):
                start = None
    seed = int(cfg.get("seed", 123))
    # a continued trajectory draws its noise afresh, from a seed of its own
    rng = np.random.default_rng([seed, start[0] if start else step] if n_calls else seed)
    if frames or start:  # an earlier start's labels or steps: go on from the last
        a = frames[-1].copy() if frames else structure.copy()
        if start:
            step, a.positions = start[0], start[1]
        a.set_momenta(start[2] if start else frames[-1].get_momenta())
        print(f"gpal: continuing the validation trajectory from step {step} ({len(frames)} labelled frames, "
              f"{n_calls} oracle calls so far) in {path}")
    else:
        a = structure.copy()
        thermalize_momenta(a, temperature_K=cfg["temperature"], rng=rng)
    a.calc = calc
    first = step
    evaluate = calc.calculate

    def note() -> None:
        _note_calls(cut, {"oracle_calls": n_calls, "key": key, "step": record.get("step", first),
                          "positions": record.get("positions"), "momenta": record.get("momenta")})

    def counted(*args, **kwargs):  # every evaluation of the oracle is a call to count
        nonlocal n_calls
        n_calls += 1
        if cut is not None:  # the count, on disk before the call: a kill (no handler runs) loses none
            try:  # (a Ctrl-C or SIGTERM while it is written acts after the write)
                with interrupts_deferred():
                    note()
            except KeyboardInterrupt:  # came before the call: the count on disk is taken back
                n_calls -= 1
                with interrupts_deferred():
                    note()
                raise
        return evaluate(*args, **kwargs)

    calc.calculate = counted
    dyn = Langevin(a, cfg.get("timestep", 1.0) * units.fs, temperature_K=cfg["temperature"],
                   friction=0.02 / units.fs, fixcm=False, rng=rng)
    if cut is not None:
        def made() -> None:  # after each step: where the trajectory goes on from (written with
            # the count before the next step's call: one write per call, a kill redoes no step)
            record.update(step=first + dyn.nsteps, positions=a.positions.tolist(), momenta=a.get_momenta().tolist())

        dyn.attach(made, interval=1)
    bar = _progress(n_blocks * every, progress, "gpal validation trajectory")
    bar.update(step)
    while len(frames) < n_blocks:
        try:  # (the MD steps and the labels call the oracle)
            target = (len(frames) + 1) * every
            dyn.run(target - (first + dyn.nsteps))
            bar.update(target - step)
            step = target
            energy, forces = label_energy(a), a.get_forces()
            stress = a.get_stress() if np.all(a.pbc) else None
        except BaseException as exc:
            if not isinstance(exc, (Exception, SystemExit)):  # an interrupt: gpal learn says what is kept
                raise
            # the oracle is foreign code (sys.exit in it: not gpal's exit)
            from ..exceptions import OracleError
            from ..learning.oracle import failure_text

            bar.close()
            raise OracleError(f"[validation] the oracle MD trajectory failed after {n_calls} oracle calls: "
                              f"{failure_text(exc)}") from None
        frame = labelled(a, energy=energy, forces=forces, stress=stress, bare=False)
        if path is not None:  # on disk the moment it arrives, with what continues the trajectory
            kept = frame.copy()  # (with the momenta)
            kept.calc = frame.calc
            kept.info["gpal_oracle_calls"] = n_calls
            kept.info["gpal_validation_key"] = key
            append_frame(path, kept)
        frames.append(frame)
    bar.close()
    if cut is not None:  # (every call is counted in the last frame's info now)
        with contextlib.suppress(OSError):
            cut.unlink()
    for f in frames:
        f.info.pop("gpal_oracle_calls", None)
        f.info.pop("gpal_validation_key", None)
    return frames, n_calls


def _move_aside(run_dir: Path) -> Path:
    """Rename ``run_dir`` to ``RUN_DIR.old-YYYYmmdd-HHMMSS`` (never deletes anything)."""
    if run_dir.is_symlink():  # (moving its target would leave the link dangling, and no new run)
        raise GpalError(f"--overwrite cannot move {run_dir} aside: it is a symbolic link (to "
                        f"{os.readlink(run_dir)}); give the run folder itself, or a new run_dir")
    run_dir = run_dir.resolve()
    if run_dir == Path.cwd().resolve() or Path.cwd().resolve().is_relative_to(run_dir):
        raise GpalError(f"--overwrite cannot move {run_dir} aside: it is the current folder (or holds it); "
                        "give run_dir a folder of its own")
    from ..io import aside_names

    target = next(t for t in aside_names(run_dir, keep_suffix=False) if not t.exists())
    run_dir.rename(target)
    return target


def _progress(total: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, file=sys.stderr, leave=False,
                dynamic_ncols=True, mininterval=0.5)


# --------------------------------------------------------------------------- learn
def _load_state(run_dir: Path) -> dict:
    state_path = run_dir / "state.json"
    if not run_dir.is_dir():
        raise GpalError(f"{run_dir}: no such run folder")
    if not state_path.exists():
        raise GpalError(f"{run_dir} has no state.json: nothing to resume (start a run with gpal learn)")
    try:
        state = json.loads(state_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GpalError(f"{state_path} is damaged (not valid JSON: {exc}); the labels in "
                        f"{run_dir / 'train.xyz'} are intact, start a new run from them") from exc
    if not isinstance(state, dict) or "step" not in state:
        raise GpalError(f"{state_path} is not a gpal run state (no 'step' entry)")
    return state


def _resume(args: argparse.Namespace) -> int:
    from . import config
    from ..learning.learner import ActiveLearner, reserve_run_dir

    run_dir = Path(args.resume)
    args.run_dir_used = run_dir
    state = _load_state(run_dir)
    steps, executor = args.steps, None
    overrides = {}
    if args.config:
        cfg, user = config.load_config(args.config)
        stored = run_dir / "config.toml"
        if not stored.exists():
            raise ConfigError(f"{run_dir} has no config.toml to compare {args.config} with; "
                              "resume without a config (--steps N sets the length)")
        text = stored.read_text()
        if config.stored_copy_edited(text):  # (the run keeps what it started with: state.json)
            raise ConfigError(f"{stored} was edited after gpal wrote it (its sha256 line no longer matches): "
                              "undo the edit; it is the run's record that --resume compares a config with, and "
                              "the run keeps the settings it started with; a resume takes "
                              f"{', '.join(config.RESUMABLE)}, [targets] tolerance and [learner] "
                              "max_oracle_calls from a config file of your own")
        try:
            old = config.without_built_defaults(config.check_config(tomllib.loads(text), stored))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{stored} is not valid TOML: {exc}") from exc
        new = config.keep_stored(cfg, user, old)
        if "file" in old.get("structure", {}) and "file" in new.get("structure", {}):
            # a structure file is compared by what it holds, not by its path (a run folder
            # moved to another node, a path given absolute): the run continues from its
            # own copy, structures.xyz
            _same_start_structure(new["structure"], run_dir, args.config)
            old = {**old, "structure": {k: v for k, v in old["structure"].items() if k not in ("file", "index")}}
            new = {**new, "structure": {k: v for k, v in new["structure"].items() if k not in ("file", "index")}}
        # [targets] tolerance may change, as [stopping] may: a stop criterion, not the
        # targets themselves (a run stopped by its tolerance continues under a tighter one)
        tolerances = [c.get("targets", {}).get("tolerance") for c in (old, new)]
        old, new = ({**c, "targets": {k: v for k, v in c["targets"].items() if k != "tolerance"}}
                    if "targets" in c else c for c in (old, new))
        # [learner] max_oracle_calls may change too: a run its budget stopped goes on under a larger one
        budgets = [c.get("learner", {}).get("max_oracle_calls") for c in (old, new)]
        old, new = ({**c, "learner": {k: v for k, v in c["learner"].items() if k != "max_oracle_calls"}}
                    if "learner" in c else c for c in (old, new))
        diff = config.config_difference(old, new)
        if diff is not None:
            raise ConfigError(f"{args.config}: a resumed run cannot change {diff}; only "
                              f"{', '.join(config.RESUMABLE)}, [targets] tolerance and [learner] max_oracle_calls "
                              "can (or start "
                              "a new run with --run-dir)")
        had_budget = state.get("groups", {}).get("oracle_settings", {}).get("max_calls", budgets[0])
        if budgets[1] != had_budget:
            overrides["max_oracle_calls"] = budgets[1]
            print(f"gpal: [learner] max_oracle_calls now {budgets[1]} (the run had {had_budget})")
        if steps is None and "steps" in user:
            steps = int(user["steps"])
        # the config's [stopping] is the run's rule from here (none without one; unset keys
        # their defaults): a new or changed rule starts its count afresh
        from ..calibration import StoppingRule

        keys = ("tolerance", "patience", "use", "validation_tolerance")
        want = StoppingRule(**user["stopping"]).state() if user.get("stopping") else None
        had = state.get("stopping")
        if (want and {k: want[k] for k in keys}) != (had and {k: had.get(k) for k in keys}):
            overrides["stopping"] = StoppingRule(**user["stopping"]) if want else None
            print(f"gpal: [stopping] {'now ' + ', '.join(f'{k} {want[k]}' for k in keys) if want else 'removed'} "
                  f"(the run had {', '.join(f'{k} {had.get(k)}' for k in keys) if had else 'none'})")
        had_tol = (state.get("targets") or {}).get("tolerance", tolerances[0])  # (as last resumed)
        if state.get("targets") and tolerances[1] != had_tol:
            overrides["target_tolerance"] = tolerances[1]
            print(f"gpal: [targets] tolerance now {tolerances[1]} (the run had {had_tol})")
    if steps is not None and steps < int(state["step"]):
        given = f"--steps {steps}" if args.steps is not None else f"steps = {steps} in {args.config}"
        raise GpalError(f"{given} is below the {state['step']} steps this run has made: steps "
                        "are a total, not an increment (give more to continue)")
    if not args.config:  # the run's own workers and walker scheduler, as it was started
        cfg = {}
        if (run_dir / "config.toml").exists():
            try:
                stored_cfg = tomllib.loads((run_dir / "config.toml").read_text())
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"{run_dir / 'config.toml'} is not valid TOML: {exc}") from exc
            cfg = {k: stored_cfg[k] for k in ("workers", "walker_workers", "walker_scheduler") if k in stored_cfg}
    with reserve_run_dir(run_dir):  # (a second --resume of the folder stops here, before its set-up)
        executor = _oracle_pool(cfg, ((state.get("groups") or {}).get("oracle_settings") or {}).get("timeout"))
        walkers = _walker_executor(cfg)

        tolerance = overrides.pop("target_tolerance", _UNCHANGED)

        def resumed():
            try:
                learner = ActiveLearner.resume(run_dir, executor=executor, progress=not args.quiet,
                                               walker_executor=walkers[0], **overrides)
            except KeyError as exc:
                raise GpalError(f"{run_dir / 'state.json'} lacks the entry {exc.args[0]!r}: not a run "
                                "state this gpal version can resume") from exc
            if tolerance is not _UNCHANGED and learner.targets is not None:
                learner.targets.tolerance = None if tolerance is None else float(tolerance)
            changed = "stopping" in overrides or "max_oracle_calls" in overrides or tolerance is not _UNCHANGED
            if steps is None and learner.stopped_early_ and not changed:
                budget = "max_oracle_calls" in str(learner.stopped_early_)
                print(f"gpal: this run ended at step {learner.step} of {learner.total_steps} ("
                      f"{learner.stopped_early_}); nothing to continue. "
                      + ("A config with a larger [learner] max_oracle_calls continues it (gpal learn CONFIG "
                         "--resume RUN_DIR)" if budget else
                         "--steps N runs on to step N, and stops again at a check where that still holds; a "
                         "config with another [stopping] or [targets] tolerance changes it (gpal learn CONFIG "
                         "--resume RUN_DIR)"))
                return learner, None
            done = _stored_summary(run_dir)  # (a run cut in its final refit, calibration or
            # summary has made its steps too, but is not finished: run() finishes it)
            if ((steps is None or steps == learner.step) and learner.step >= learner.total_steps and not changed
                    and done is not None and (done.steps, done.labelled_frames) == (learner.step, learner.n_labelled)
                    and not learner._resume_added):
                print(f"gpal: this run has made all its {learner.step} steps; nothing to continue (--steps N "
                      "runs on to step N)")
                return learner, None
            recorded = {"steps": steps} if steps is not None else {}
            if "max_oracle_calls" in overrides:
                recorded["max_oracle_calls"] = overrides["max_oracle_calls"]
            if "stopping" in overrides:  # (the config's section, whole: keys left out are defaults)
                recorded["stopping"] = dict(user.get("stopping") or {})
            if tolerance is not _UNCHANGED and learner.targets is not None:
                recorded["target_tolerance"] = tolerance
            if recorded:  # the run's record says what it now runs with
                _record_resumed(run_dir / "config.toml", **recorded)
            return learner, (steps if steps is not None else learner.total_steps)

        return _learn_and_report(resumed, executor, run_dir, walkers[1])


def _record_resumed(stored: Path, **changes) -> None:
    """Write the settings a resume changed (``steps``, ``max_oracle_calls``: ``[learner]``,
    ``stopping``: the whole ``[stopping]`` section, ``target_tolerance``: ``[targets]
    tolerance``) into a run folder's own ``config.toml``, line by line, so the user's
    comments stay, and its sha256 line with them (a resume with more steps, a larger
    budget or another stopping rule left them stale: resuming with that file then refused
    its own count, or restored the old budget or rule). A
    copy that was edited, has no sha256 line (an earlier release's) or does not parse is
    left alone."""
    from . import config
    from ..io import atomic_write

    try:
        text = stored.read_text()
        cfg = tomllib.loads(text)
    except (OSError, tomllib.TOMLDecodeError):
        return
    lines = text.split("\n")
    if (len(lines) < 3 or lines[0] != config.TOML_HEADER or not lines[1].startswith(config._DIGEST)
            or config.stored_copy_edited(text)):
        return
    want = {("", "steps"): changes["steps"]} if "steps" in changes else {}
    if "max_oracle_calls" in changes:
        want[("learner", "max_oracle_calls")] = changes["max_oracle_calls"]
    if "stopping" in changes:
        had = cfg.get("stopping", {})
        for key in [*had, *(k for k in changes["stopping"] if k not in had)]:
            want[("stopping", key)] = changes["stopping"].get(key)
    if "target_tolerance" in changes:
        want[("targets", "tolerance")] = changes["target_tolerance"]
    for (section, key), value in want.items():
        where = cfg if not section else cfg.setdefault(section, {})
        if value is None:
            where.pop(key, None)
        else:
            where[key] = value
        # the section's lines: from its header (the top: line 2) to the next header
        start = 2 if not section else next((i + 1 for i, ln in enumerate(lines) if ln.strip() == f"[{section}]"), None)
        if start is None:
            lines += ["", f"[{section}]"]
            start = len(lines)
        end = next((i for i in range(start, len(lines)) if lines[i].lstrip().startswith("[")), len(lines))
        at = next((i for i in range(start, end) if lines[i].split("=", 1)[0].strip() == key), None)
        if at is not None:
            if value is None:
                del lines[at]
            else:
                lines[at] = f"{key} = {config._fmt(value)}"
        elif value is not None:
            lines.insert(start, f"{key} = {config._fmt(value)}")
    body = "\n".join(lines[2:])
    try:
        ok = tomllib.loads(body) == cfg
    except tomllib.TOMLDecodeError:
        ok = False
    if not ok:  # (a layout the line edit did not follow: the copy is written anew)
        new_text = config.to_toml(cfg)
    else:
        new_text = "\n".join([lines[0], config._DIGEST + config._settings_digest(cfg), body])
    with contextlib.suppress(OSError), atomic_write(stored) as fh:
        fh.write(new_text)


_UNCHANGED = object()


def _stored_summary(run_dir: Path):
    """The :class:`gpal.learning.learner.Summary` of ``run_dir/summary.json``, or None
    (missing, unreadable or of other fields): a resume with nothing to run prints it and
    leaves the run's files as they are."""
    from ..learning.learner import Summary

    try:
        d = json.loads((Path(run_dir) / "summary.json").read_text())
        return Summary(**{f.name: d[f.name] for f in dataclasses.fields(Summary) if f.name in d})
    except (OSError, ValueError, TypeError):
        return None


def _oracle_pool(cfg: dict, timeout):
    """The oracle's worker pool of ``gpal learn``: ``workers`` processes when > 1, and one
    when ``[learner] oracle_timeout`` is set (a call in this process cannot be stopped;
    one in a worker is, with the program it runs); None otherwise."""
    n = int(cfg.get("workers", 1))
    if n <= 1 and timeout is None:
        return None
    from ..learning.oracle import worker_pool

    return worker_pool(max(n, 1))


def _walker_executor(cfg: dict):
    """``(executor, close)`` for the walkers from ``walker_workers`` / ``walker_scheduler``."""
    from ..learning.walkers import local_walker_executor

    return local_walker_executor(cfg.get("walker_workers"), cfg.get("walker_scheduler"))


def _learn_and_report(make, executor, run_dir, close_walkers=None) -> int:
    """Build a learner with ``make() -> (learner, steps)``, run it, print its summary.

    The oracle's worker pool, if any, is stopped whatever happens, without waiting for
    an oracle call still running there: when the run ends (an interrupt, SIGTERM, an
    error), the labels already computed are on disk, and a call still running (one
    cut off, or timed out) has no run left to take its result (the walkers' executor is
    closed too).
    """
    try:
        learner, steps = make()
        if steps is None:  # nothing to run: the run's summary, its files left as they are
            summary = _stored_summary(run_dir)
            if summary is None:  # (none written: a kill after the stop) from its state
                learner._stopped = (True, str(learner.stopped_early_))
                summary = learner._summary(0.0, record=False)
        else:
            summary = learner.run(steps)
    finally:
        if executor is not None:
            executor.stop()
        if close_walkers is not None:
            close_walkers()
    print(summary)
    print(f"gpal: model, training set, log and plots are in {run_dir}/")
    return 0


def cmd_learn(args: argparse.Namespace) -> int:
    """Active learning from a configuration (or the demo); --resume continues a run. A
    ``"module:Name"`` setting may name a module next to the config or in the working
    folder, for the command's duration (:func:`config.add_import_folders`)."""
    from . import config

    # (a resumed run's own modules: beside its config, or, without one, beside its run folder,
    # where a config that made it usually sits)
    added = config.add_import_folders(args.config or (Path(args.resume) if args.resume else None))
    try:
        return _learn(args)
    finally:
        for folder in added:
            if folder in sys.path:
                sys.path.remove(folder)


def _learn(args: argparse.Namespace) -> int:
    from . import config
    from .._validation import check_atoms, check_number
    from ..learning.learner import (Trigger, check_budgets, check_max_temperature,
                                    check_trigger_threshold,
                                    check_start, foreign_files, reserve_run_dir, run_dir_in_use)
    from ..learning.oracle import OracleSpec
    from ..model import SparseGP

    if args.print_config:
        if args.config:
            raise ConfigError(f"--print-config prints the default configuration and reads no config file "
                              f"({args.config} was given); gpal learn --print-config > new.toml writes one to edit")
        if args.resume:  # (it had printed the defaults as if they were the run's)
            raise ConfigError(f"--print-config prints the default configuration, not a run's (gpal learn keeps "
                              f"a run's in {Path(args.resume) / 'config.toml'})")
        sys.stdout.write(config.default_toml())
        return 0
    if args.resume:
        if args.run_dir or args.overwrite:
            raise GpalError("--resume continues RUN_DIR in place; --run-dir and --overwrite are for a new run")
        return _resume(args)
    user: dict = {}
    if args.config:
        cfg, user = config.load_config(args.config)
    else:
        cfg = config.fill_validation(copy.deepcopy(config.DEFAULT_LEARN))
    if args.steps is not None:
        cfg["steps"] = args.steps
    if args.run_dir:
        cfg["run_dir"] = args.run_dir
    # everything the run needs is built and checked before its folder is touched
    for key, low in (("steps", 0), ("workers", 1), ("walker_workers", 1)):
        if key in cfg and int(cfg[key]) < low:
            raise ConfigError(f"{key} must be >= {low}, got {cfg[key]}")
    for key, low, strict in (("steps", 0, False), ("every", 1, False), ("temperature", 0, False),
                             ("timestep", 0, True), ("seed", 0, False)):
        if key in cfg.get("validation", {}):
            check_number(f"[validation] {key}", cfg["validation"][key], low=low, strict=strict)
    val_cfg = cfg.get("validation", {})
    if val_cfg.get("steps", 0) > 0 and val_cfg.get("every", 1) > val_cfg["steps"]:
        raise ConfigError(f"[validation] every ({val_cfg['every']}) must be <= steps ({val_cfg['steps']}): "
                          "no frame would be labelled")
    budget = cfg.get("learner", {}).get("max_oracle_calls")
    if budget is not None and val_cfg.get("steps", 0) > 0:  # (the validation trajectory's calls count)
        # its calls, the bootstrap's (none for a fitted [model] file) and one label of MD
        boot = 0 if cfg.get("model", {}).get("file") else int(cfg.get("learner", {}).get("n_bootstrap", 4))
        need = int(val_cfg["steps"]) + 1 + boot + 1
        if int(budget) < need:
            raise ConfigError(f"[learner] max_oracle_calls = {budget} counts the validation trajectory's "
                              f"~{int(val_cfg['steps']) + 1} oracle calls ([validation] steps = {val_cfg['steps']}) "
                              f"and leaves no label of MD: raise it to at least {need}, or shorten [validation]")
    structure = _structure(cfg["structure"])
    oracle = OracleSpec(cfg["oracle"]["factory"], dict(cfg["oracle"].get("kwargs", {})))
    try:  # an unimportable factory or wrong kwargs fail here, not on every label
        calc = oracle.check()
    except OracleError as exc:  # (--verbose shows the factory's own traceback)
        raise ConfigError(f"[oracle] {_message(exc)}") from exc
    if callable(getattr(calc, "check_structure", None)):  # e.g. gpal.dft.PySCF: charge, spin, xc, basis
        try:
            calc.check_structure(structure)
        except ValueError as exc:
            raise ConfigError(f"[oracle] {_message(exc)}") from None
    try:
        md = config.md_settings(**cfg["md"])
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"[md] {exc}") from None
    trigger = Trigger(**cfg["trigger"])
    learner_cfg = dict(cfg["learner"])
    groups = config.learner_groups(learner_cfg)  # (a file's [learner] was checked by load_config)
    if cfg.get("stopping"):  # [stopping] tolerance: the calibrated stop (checked by load_config)
        from ..calibration import StoppingRule

        learner_cfg["stopping"] = StoppingRule(**cfg["stopping"])
    descriptor = None
    if cfg.get("descriptor"):
        from ..descriptors import SOAP
        from ..descriptors.soap import poly_weighting

        d = dict(cfg["descriptor"])
        for key, value in (("r_cut", 5.0), ("n_max", 8), ("l_max", 6), ("sigma", 0.5)):
            d.setdefault(key, value)  # gpal's defaults (gpal learn --print-config)
        d.setdefault("weighting", poly_weighting(d["r_cut"]))
        try:
            descriptor = SOAP(
                species=d.pop("species", sorted(set(structure.get_chemical_symbols()))),
                periodic=d.pop("periodic", True),  # each structure's pbc decides
                **d,
            )
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"[descriptor] {_message(exc)}") from None
    model_cfg = dict(cfg["model"])
    # the command line makes the model: [learner] n_sparse_initial is its size unless
    # [model] n_sparse says otherwise
    initial = learner_cfg.pop("n_sparse_initial", None)
    if initial is not None and "n_sparse" in user.get("model", {}) and initial != user["model"]["n_sparse"]:
        raise ConfigError(f"[learner] n_sparse_initial ({initial}) and [model] n_sparse "
                          f"({user['model']['n_sparse']}) disagree: the model's size is [model] n_sparse")
    if initial is not None and "file" not in model_cfg:
        model_cfg["n_sparse"] = initial
    if "file" in model_cfg:  # a fitted model to continue (its settings come with it);
        # read before the run folder is made: a wrong path leaves nothing behind
        from .. import load

        model = load(model_cfg["file"])
    else:
        model = SparseGP(descriptor, **model_cfg)
        model._check_params()
    try:  # the learner's own check, before the run folder exists
        check_budgets(model, groups)
    except ValueError as exc:
        raise ConfigError(f"[learner] {exc}") from None
    # the species every structure must have: the descriptor's, the fitted model's, or
    # else those of the start structure (the default descriptor is made from them)
    if descriptor is not None:
        species = descriptor.species_numbers_
    elif getattr(model, "alpha_", None) is not None:
        species = model.species_
    else:
        species = sorted(set(structure.numbers.tolist()))
    from ..exceptions import UnknownSpeciesError

    def check_species(atoms, what):
        try:
            check_atoms(atoms, species=species, what=what)
        except UnknownSpeciesError as exc:
            raise ConfigError(f"{what}: {exc}") from None

    check_species(structure, "[structure]")
    try:  # (min_distance, n_sparse's species, the baseline...) before the run folder exists
        check_start([structure], model, oracle=oracle)
    except BaselineError as exc:
        if "file" in model_cfg:  # (a fitted model's baseline: not a key of this config)
            raise
        raise ConfigError(f"[model] {exc}") from None
    try:
        check_max_temperature(md, learner_cfg.get("max_temperature"))
    except ValueError as exc:
        raise ConfigError(f"[learner] {exc}") from None
    check_trigger_threshold(trigger, learner_cfg.get("max_force", 20.0))
    targets = None
    if cfg.get("targets", {}).get("file"):  # [targets]: learning aimed at a target
        from ..learning.targets import TargetSet

        _check_file_exists("[targets] file", cfg["targets"]["file"])
        try:
            targets = TargetSet.from_file(**cfg["targets"])
        except (TypeError, ValueError) as exc:  # (not a file's error: those name the file)
            if isinstance(exc, StructureFileError):
                raise
            raise ConfigError(f"[targets] {exc}") from None
        for k, a in enumerate(targets.structures):
            check_species(a, f"[targets] structure {k}")
        if cfg.get("walker_workers") or cfg.get("walker_scheduler"):
            raise ConfigError("[targets] cannot run with walker_workers or walker_scheduler (the target "
                              "weight follows every checked frame); run the walkers in the learner's process")
    if cfg.get("walker_scheduler"):  # (before the run folder is touched: an address that answers)
        from ..learning.walkers import _probe_scheduler

        try:
            _probe_scheduler(cfg["walker_scheduler"])
        except GpalError as exc:
            raise ConfigError(f"{args.config + ': ' if args.config else ''}{exc}") from None
    run_dir = Path(cfg["run_dir"])
    args.run_dir_used = run_dir
    if run_dir.exists() and not run_dir.is_dir():
        raise GpalError(f"run folder {run_dir} is a file")
    if run_dir.is_dir() and any(run_dir.iterdir()):
        if run_dir_in_use(run_dir):  # (moving a live run's folder aside would split it in two)
            raise GpalError(f"a gpal process is running the run in {run_dir}; stop it first, or give "
                            "another run_dir")
        stored = run_dir / "config.toml"  # (gpal's copy of a run's configuration, or the user's file)
        gpal_config = stored.is_file() and stored.read_text(errors="replace").startswith(config.TOML_HEADER)
        is_run = (run_dir / "state.json").exists() or gpal_config
        theirs = foreign_files(run_dir) + (["config.toml"] if stored.exists() and not gpal_config else [])
        if args.overwrite and not is_run:  # the user's folder (files named as gpal's too), not a run
            names = sorted(p.name for p in run_dir.iterdir())
            raise GpalError(f"run folder {run_dir} holds {', '.join(names[:5])}{', ...' if len(names) > 5 else ''} "
                            "and no gpal run (state.json, or gpal's config.toml): --overwrite moves only a run "
                            "folder aside; set run_dir (or --run-dir) to a new or empty folder")
        if args.overwrite:
            old = _move_aside(run_dir)
            print(f"gpal: moved the previous run folder {run_dir} to {old} (nothing deleted)")
        elif (run_dir / "state.json").exists():
            raise GpalError(f"{run_dir} already holds a run; use --resume {run_dir}, or --overwrite "
                            "to move it aside and start afresh")
        else:  # only an unfinished start of gpal's own may be continued in place
            if theirs or not is_run:
                theirs = theirs or sorted(p.name for p in run_dir.iterdir())
                raise GpalError(f"run folder {run_dir} holds files gpal did not write ({', '.join(theirs[:5])}"
                                f"{', ...' if len(theirs) > 5 else ''}); a run needs a new or empty folder: "
                                "set run_dir (or --run-dir)")
            try:
                old_cfg = tomllib.loads(stored.read_text())
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"{stored} is not valid TOML: {exc}") from exc
            diff = config.config_difference(old_cfg, config.keep_stored(cfg, user, old_cfg),
                                            ignore=("run_dir", "steps"))
            # a start that failed before it wrote anything but its configuration (a bad
            # value found late) holds nothing to keep: the corrected configuration starts there
            bare = {p.name for p in run_dir.iterdir()} <= {"config.toml", "run.lock"}
            if diff is not None and not bare:
                raise ConfigError(f"{run_dir} holds an unfinished start with another configuration "
                                  f"({diff}); use --overwrite to move it aside")
    run_dir.mkdir(parents=True, exist_ok=True)
    with reserve_run_dir(run_dir):  # (from here to the end of the run: one gpal learn per folder)
        if (run_dir / "state.json").exists():  # a run started there since the checks above
            raise GpalError(f"{run_dir} already holds a run; use --resume {run_dir}")
        return _start_run(args, cfg, structure, oracle, model, md, trigger, targets, learner_cfg, run_dir)


def _start_run(args, cfg, structure, oracle, model, md, trigger, targets, learner_cfg, run_dir) -> int:
    """The new-run part of ``gpal learn`` that writes into the (locked) run folder."""
    from . import config
    from ..learning.learner import ActiveLearner

    from ..io import atomic_write

    with atomic_write(run_dir / "config.toml") as fh:  # (a kill mid-write: no cut config.toml
        fh.write(config.to_toml(cfg))  # that neither a start nor a resume can take)
    executor = _oracle_pool(cfg, learner_cfg.get("oracle_timeout"))
    walkers = _walker_executor(cfg)

    def started():
        # the learner first: its own checks (a rattle its bootstrap cannot use, ...) come
        # before a validation label is paid for
        learner = ActiveLearner(
            structure,
            oracle,
            model,
            run_dir=run_dir,
            md=md,
            trigger=trigger,
            executor=executor,
            progress=not args.quiet,
            targets=targets,
            walker_executor=walkers[0],
            **learner_cfg,
        )
        if cfg.get("validation") and cfg["validation"].get("steps", 0) > 0:
            print(f"gpal: labelling an independent validation trajectory ({cfg['validation']['steps']} steps)")
            validation, n_calls = _validation_frames(structure, cfg["oracle"], cfg["validation"],
                                                     progress=not args.quiet, path=run_dir / VALIDATION_TRAJECTORY)
            learner._take_validation(validation)
            learner.count_oracle_calls("validation", n_calls)  # (the oracle MD behind them: every call counts)
        return learner, int(cfg["steps"])

    return _learn_and_report(started, executor, run_dir, walkers[1])


# --------------------------------------------------------------------------- fit
def _read_labelled(path, args, what: str) -> list:
    """Frames of ``path`` with their labels, from the standard or the given keys."""
    from ..io import read_frames, relabel_frames

    frames = read_frames(path)
    keys = dict(energy_key=getattr(args, "energy_key", None), forces_key=getattr(args, "forces_key", None),
                stress_key=getattr(args, "stress_key", None), virial_key=getattr(args, "virial_key", None))
    if any(keys.values()):
        frames = relabel_frames(frames, source=str(path), **keys)
    from .._validation import check_frames

    frames = check_frames(frames, what=f"{what} {path}")
    predicted = sum("gpal_std" in a.info for a in frames)  # (what gpal md writes)
    if predicted and not any(keys.values()):
        warnings.warn(f"{predicted} of the {len(frames)} {what} in {path} were written by gpal md: their "
                      "energies and forces are a model's predictions, not oracle labels", UserWarning,
                      stacklevel=1)
    return frames


def _warn_training_frames(model, frames, path, what: str) -> None:
    """Warn when some of ``frames`` are the model's own training frames (same species,
    cell and positions): errors there are fit residuals, several times smaller than on
    new frames (a run's train.xyz given to validate: 3x)."""
    from ..learning.state import _same_frame

    held = {}
    for a in getattr(model, "frames_", None) or []:
        held.setdefault((len(a), a.get_chemical_formula()), []).append(a)
    same = sum(any(_same_frame(a, b) and np.allclose(a.cell.array, b.cell.array)
                   for b in held.get((len(a), a.get_chemical_formula()), [])) for a in frames)
    if same:
        warnings.warn(f"{same} of the {len(frames)} {what} in {path} are the model's own training frames: their "
                      "errors are fit residuals, not the errors of new frames", UserWarning, stacklevel=1)


def _descriptor_from_args(args, frames):
    """A SOAP from the --r-cut/--n-max/--l-max/--sigma/--species options, or None (default)."""
    opts = (args.r_cut, args.n_max, args.l_max, args.sigma, args.species)
    if all(v is None for v in opts):
        return None
    from ase.data import atomic_numbers

    from ..descriptors import SOAP
    from ..descriptors.soap import poly_weighting

    if args.species:
        species = [s for item in args.species for s in item.replace(",", " ").split()]
        unknown = [s for s in species if s not in atomic_numbers]
        if unknown:
            raise GpalError(f"--species: unknown chemical symbol(s) {', '.join(unknown)}")
    else:
        species = sorted({s for a in frames for s in a.get_chemical_symbols()})
    r_cut = 5.0 if args.r_cut is None else args.r_cut
    return SOAP(
        species=species, r_cut=r_cut,
        n_max=8 if args.n_max is None else args.n_max,
        l_max=6 if args.l_max is None else args.l_max,
        sigma=0.5 if args.sigma is None else args.sigma,
        periodic=True,  # each frame's pbc decides
        weighting=poly_weighting(r_cut),
    )


def _json_object(text: str) -> dict:
    """argparse type: a JSON object (``--baseline-kwargs``)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object, e.g. '{\"method\": \"GFN1-xTB\"}'")
    return value


def _learner_sparse_count(frames) -> int:
    """SparseGP's default (200), or for frames an active-learning run labelled
    (``gpal_reason`` in their info) the sparse count its default growth gives: 300 + 20 per
    label after the bootstrap, at most 2000 (:class:`gpal.learning.settings.Bootstrap` and
    ``ModelGrowth``)."""
    from ..learning.settings import Bootstrap, ModelGrowth
    from ..model import SparseGP

    reasons = [a.info.get("gpal_reason") for a in frames]
    if not any(reasons):
        return SparseGP().n_sparse
    g = ModelGrowth()
    after = sum(1 for r in reasons if r and r not in ("bootstrap", "initial"))
    return min(Bootstrap().n_sparse + g.sparse_per_label * after, g.max_sparse)


def cmd_fit(args: argparse.Namespace) -> int:
    """Fit a SparseGP to labelled frames and save it.

    Unset values are chosen as ``SparseGP()`` chooses them (by the evidence: ζ, l_max
    and sigma when no descriptor option is given, signal variance, noises); a value
    given on the command line is kept.
    """
    from ..kernels import NormalizedDotProduct, SquaredExponential
    from .._validation import check_atoms
    from ..model import SparseGP

    if args.kernel == "se" and args.zeta is not None:
        raise GpalError("--zeta is the exponent of the dot-product kernel; --kernel se takes --length-scale")
    if args.kernel == "dot" and args.length_scale is not None:
        raise GpalError("--length-scale is the SE kernel's; the dot-product kernel (--kernel dot) takes --zeta")
    frames = _read_labelled(args.train, args, "training frames")
    given = any(getattr(args, k) is not None for k in ("r_cut", "n_max", "l_max", "sigma", "species"))
    descriptor = _descriptor_from_args(args, frames) if given else None
    auto = args.kernel == "dot" and args.zeta == "auto"
    if args.kernel == "dot" and isinstance(args.zeta, int):
        kernel = NormalizedDotProduct(zeta=int(args.zeta))
    elif args.kernel == "se":
        kernel = SquaredExponential(0.5 if args.length_scale is None else args.length_scale)
    else:
        kernel = None
    n_sparse = args.n_sparse
    if n_sparse is None:
        n_sparse = _learner_sparse_count(frames)
        if n_sparse != SparseGP().n_sparse:
            print(f"gpal: --n-sparse {n_sparse}: these frames come from an active-learning run, and the "
                  "learner's default growth (300 sparse environments, 20 more per label after the bootstrap) "
                  "gives that many (the plain default 200 fitted such sets 2.5-5x worse); give --n-sparse to "
                  "choose, e.g. the run model's count (gpal info)")
    model = SparseGP(
        descriptor, kernel, n_sparse=n_sparse, energy_noise=args.energy_noise,
        force_noise=args.force_noise, stress_noise=args.stress_noise,
        baseline=args.baseline, baseline_kwargs=args.baseline_kwargs,
    )
    # what would fail after the fit fails before it: the output file, the baseline
    _check_output(args.output, args.overwrite, ".npz")
    if args.baseline:
        from .. import baseline as _baseline

        _baseline.make_baseline(args.baseline, args.baseline_kwargs)
    model._check_params()
    if descriptor is not None:  # (a --species list that leaves out a species of the frames)
        for k, a in enumerate(frames):
            with _species_named(f"{args.train} frame {k}", "given with --species" if args.species else ""):
                check_atoms(a, species=descriptor.species_numbers_, what=f"training frame {k}")
    print(f"gpal: fitting {len(frames)} frames ({sum(len(a) for a in frames)} atoms)...", file=sys.stderr)
    if auto:
        from ..compare import select_kernel_by_evidence

        if descriptor is None:
            model.descriptor = _descriptor_from_args(args, frames)
        sel = select_kernel_by_evidence(model, frames, progress=not args.quiet)
        print(sel)  # (the winner's own SOAP search, on a subset of the frames, is not repeated here)
        model = sel.model
    else:
        model.fit(frames, progress=not args.quiet)
        for line in _evidence_lines(getattr(model, "evidence_", None)):
            print(line)
        if args.optimize or isinstance(args.zeta, int):
            # a kernel given as --zeta N keeps ζ; its signal variance and the noises not
            # given are still the evidence's, now maximised together (SparseGP keeps a given
            # kernel whole); a noise given is kept, with --optimize too
            from ..model.defaults import _GROUP_NAMES, NOISE_BOUNDS

            present = model._noise_layout()[0]
            bounds = ["fixed" if getattr(args, f"{_GROUP_NAMES[g]}_noise") is not None
                      else NOISE_BOUNDS[_GROUP_NAMES[g]] for g in present]
            model.optimize_hyperparameters(noise_bounds=bounds)  # (it drops the table above: another model's)
            noise = ", ".join(f"{g} {v:.3g}" for g, v in model.noise_.items())
            print(f"gpal: maximised by the marginal likelihood: {model.kernel_!r}, noises {noise}; "
                  f"log ML {model.log_marginal_likelihood_value_:.6g}")
    path = model.save(args.output, overwrite=args.overwrite or None)  # (checked above)
    print(f"gpal: wrote {path} ({model!r})")
    return 0


def _blowup_text(exc: Exception) -> str:
    """What a structure check found on a frame of a run's MD (two atoms too close, positions
    not finite), without the check's own setting, which the MD commands do not take."""
    return re.sub(r"^atoms (has|have) ", "", str(exc)).split(" (set min_distance")[0]


@contextmanager
def _species_named(where: str, known_how: str = ""):
    """An UnknownSpeciesError raised inside, prefixed with ``where`` (a file and frame)."""
    from ..exceptions import UnknownSpeciesError

    try:
        yield
    except UnknownSpeciesError as exc:
        exc.args = (f"{where}: {exc}" + (f" ({known_how})" if known_how else ""),)
        raise


def _check_output(path, overwrite: bool, suffix: str | None = None, option: str = "-o") -> None:
    """A GpalError now (not after the work) if ``path`` (with ``suffix`` added when it has
    another) exists and ``overwrite`` is not given, or its folder is missing or not writable."""
    target = Path(path)
    if str(path).endswith(("/", os.sep)) or not target.name or target.is_dir():
        raise GpalError(f"{option} {path}: a folder; give a file name")
    if suffix and target.suffix != suffix:
        target = target.with_name(target.name + suffix)
    if target.is_dir():
        raise GpalError(f"{option} {path}: a folder; give a file name")
    if target.exists() and not overwrite:
        raise GpalError(f"{option} {path}: {target} exists; give another name, or --overwrite to replace it")
    folder = target.resolve().parent  # (no ~ expansion: the writer makes none, a shell's is done)
    if not folder.is_dir():
        raise GpalError(f"{option} {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise GpalError(f"{option} {path}: the folder {folder} is not writable")


VALIDATION_PLOTS = ("parity_forces.png", "parity_energy.png", "calibration_curve.png",
                    "error_vs_uncertainty.png", "z_histogram.png")


def _check_plots(folder: Path, names, overwrite: bool) -> None:
    """A GpalError now (not after the work) if ``folder`` holds a file of one of the plot
    ``names`` that gpal did not write (whatever ``overwrite`` says: it replaces earlier
    plots only), or one of gpal's plots and ``overwrite`` is not given, or it (or the
    folder it would be made in) is a file or not writable."""
    from ..calibration import is_gpal_plot

    there = [n for n in names if (folder / n).exists()]
    theirs = [n for n in there if not is_gpal_plot(folder / n)]
    if theirs:  # (--overwrite had replaced, or removed, a user's parity_energy.png)
        raise GpalError(f"--plots {folder}: holds {theirs[0]}, which gpal did not write; give another --plots "
                        "folder or --no-plots (--overwrite replaces earlier gpal plots only)")
    if there and not overwrite:
        raise GpalError(f"--plots {folder}: holds {there[0]} (plots of an earlier run); give another "
                        "--plots folder, --no-plots, or --overwrite to replace them")
    existing = folder.resolve()
    while not existing.exists():  # the folder, or the one it will be made in
        existing = existing.parent
    if not existing.is_dir():
        raise GpalError(f"--plots {folder}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK):
        raise GpalError(f"--plots {folder}: {existing} is not writable")


def _evidence_lines(table) -> list[str]:
    """The candidates the evidence weighed (``SparseGP.evidence_``), one line each, the chosen one starred."""
    if not table:
        return []
    lines = ["gpal: hyperparameters chosen by the evidence (log marginal likelihood, larger is better):"]
    n_rank = next((r.get("n_frames") for r in table if "ranking_log_marginal_likelihood" not in r), None)
    for r in table:
        noise = r.get("noise") or {}
        lm = f" l_max {r['l_max']}" if r.get("l_max") is not None else ""
        lm += f" sigma {r['sigma']:g}" if r.get("sigma") is not None else ""
        value = f"log ML {r['log_marginal_likelihood']:.6g}"
        if "ranking_log_marginal_likelihood" in r:  # ranked on some frames, refitted on all
            on = f" on {n_rank} frames" if n_rank is not None else ""
            value = (f"log ML {r['ranking_log_marginal_likelihood']:.6g}{on} (refitted on all {r.get('n_frames')} "
                     f"frames: {r['log_marginal_likelihood']:.6g})")
        elif r.get("n_frames") is not None:
            value += f" on {r['n_frames']} frames"
        lines.append(
            f"  {'*' if r.get('selected') else ' '} zeta {r.get('zeta')}{lm}: {value}, "
            f"signal variance {r.get('signal_variance', float('nan')):.4g}, noise energy "
            f"{noise.get('energy', float('nan')):.3g} eV/atom, force {noise.get('force', float('nan')):.3g} eV/Å")
    return lines


# --------------------------------------------------------------------------- md
def _md_frame(model, atoms, calibrated: bool, info: dict):
    """A copy of ``atoms`` labelled by the model, with per-atom stds as arrays (extxyz columns)."""
    from ..io import labelled

    p = model.predict(atoms, return_std=True, forces_std=True, calibrated=calibrated)
    b = labelled(atoms, energy=p["energy"], forces=p["forces"], energies=p["energies"],
                 stress=p.get("stress"))
    b.set_momenta(atoms.get_momenta())
    b.set_constraint([c.copy() for c in atoms.constraints])  # (extxyz writes FixAtoms as move_mask)
    b.arrays["energies_std"] = np.asarray(p["energies_std"], dtype=float)
    b.arrays["forces_std"] = np.asarray(p["forces_std"], dtype=float)
    if "energy_std" in p:  # the total energy's (eV)
        b.info["energy_std"] = float(p["energy_std"])
    if "forces_interval90" in p:  # a calibrated model with a conformal quantile
        b.arrays["forces_interval90"] = np.asarray(p["forces_interval90"], dtype=float)
    b.info.update(info)
    return b


def cmd_md(args: argparse.Namespace) -> int:
    """Run MD on a model; write extxyz frames with per-atom stds (or an ASE .traj)."""
    from ase import units
    from ase.io import Trajectory
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import thermalize_momenta
    from ase.md.verlet import VelocityVerlet

    from ..calculator import GPCalculator
    from ..io import append_frame, read_frames
    from ..model import load

    from ..learning.sampler import MDSettings

    try:  # the unit checks gpal learn makes (a temperature below 1 K, a time step in ps...)
        MDSettings(temperature=args.temperature, timestep=args.timestep)
    except ValueError as exc:
        raise GpalError(str(exc).replace("temperature =", "--temperature")
                        .replace("timestep =", "--timestep")) from None
    out = Path(args.output)
    kind = {".xyz": "extxyz", ".extxyz": "extxyz", ".traj": "traj"}.get(out.suffix.lower())
    if kind is None:
        raise GpalError(f"-o {out}: write extended XYZ (.xyz, .extxyz: with per-atom energies_std "
                        "and forces_std) or an ASE trajectory (.traj)")
    _check_output(out, args.overwrite)
    model = load(args.model)
    atoms = read_frames(args.start, index=-1)[0]
    with _species_named(f"{args.start} (the start frame)"):
        model._check(atoms, what=f"{args.start} (the start frame)")  # species, cell: before any MD
    calibrated = bool(model.calibration_) and not args.raw  # (as GPCalculator's default)
    atoms.calc = GPCalculator(model, calibrated=calibrated, record_std=True)
    # one generator: the momenta and then the thermostat's noise (two of the same seed had made
    # the first Langevin kick the momenta's own draw, rescaled)
    rng = np.random.default_rng(args.seed)
    thermalize_momenta(atoms, temperature_K=args.temperature, rng=rng)
    if args.ensemble == "nve":
        dyn = VelocityVerlet(atoms, args.timestep * units.fs)
    else:
        dyn = Langevin(atoms, args.timestep * units.fs, temperature_K=args.temperature,
                       friction=0.02 / units.fs, fixcm=False, rng=rng)
    # the learner calibrates force stds and the total energy's; local-energy stds stay raw
    done = [k for k in ("forces_std", "energy_std") if calibrated and k in model.calibration_]
    raw = [k for k in ("forces_std", "energy_std") if k not in done] + ["energies_std"]
    std_kind = (" and ".join(done) + " calibrated, " + " and ".join(raw) + " raw") if done else "raw"
    try:  # (the start frame's results and stds, as every later frame has them; before the
        #      output file is made: a start that fails leaves none)
        atoms.get_potential_energy()
    except (OverlappingAtomsError, InvalidPositionsError) as exc:  # (named: the file, not "atoms")
        raise type(exc)(f"{args.start} (the start frame): {_blowup_text(exc)}") from None
    try:  # made here, exclusively without --overwrite: a second gpal md given the same -o
        #      since the check above (it emptied this one's file, and both wrote into it) stops
        with open(out, "w" if args.overwrite else "x"):
            pass
    except FileExistsError:
        raise GpalError(f"-o {out} was made meanwhile by another process (a second gpal md?); "
                        "give another name, or --overwrite") from None
    traj = Trajectory(str(out), "w") if kind == "traj" else None

    shown = {}  # the last written frame's largest force std, for the progress bar

    def record(step: int):
        meta = {"step": step, "time_fs": step * args.timestep,
                "temperature_K": float(atoms.get_temperature()), "gpal_std": std_kind}
        if traj is not None:  # (the .traj frames carry them too, as the .xyz ones do)
            atoms.info.update(meta)
            traj.write(atoms)
            return
        frame = _md_frame(model, atoms, calibrated, meta)
        shown["forces_std"] = float(np.max(frame.arrays["forces_std"]))
        append_frame(out, frame, sync=False)  # (whole frames only: Ctrl-C or a full disk mid-frame is undone)

    record(0)
    written = 1
    with _progress(args.steps, not args.quiet, "gpal md") as bar:
        for k in range(1, args.steps + 1):
            try:
                dyn.run(1)
            except BaselineError as exc:  # (a Δ-model's baseline failing on a frame of the run)
                if traj is not None:
                    traj.close()
                # (the start structure passed: a failure mid-run is no bad input, exit 1)
                raise BaselineStoppedError(f"{exc} (at MD step {k}; the {written} frames before it are in "
                                           f"{out})") from exc
            except (OverlappingAtomsError, InvalidPositionsError) as exc:  # the dynamics blew up
                if traj is not None:
                    traj.close()
                raise RunStoppedError(f"the MD blew up at step {k} of {args.steps}: {_blowup_text(exc)} (a time "
                                      "step or temperature beyond what the model holds: --timestep, --temperature); "
                                      f"the {written} frames before it are in {out}") from None
            if k % args.interval == 0 or k == args.steps:  # (and the last state: 25 steps at
                record(k)  # interval 10 had lost steps 21-25, with no way to continue from them)
                written += 1
            bar.update(1)
            fstd = shown.get("forces_std")
            bar.set_postfix_str(f"T={atoms.get_temperature():.0f} K" + (
                "" if fstd is None else f", max forces_std {fstd:.3g} eV/Å"
                + (" (calibrated)" if "forces_std" in done else " (raw)")), refresh=False)
    if traj is not None:
        traj.close()
    interval = "forces_std" in done and model.calibration_of("forces_std").conformal_q90 is not None
    what = ("extended XYZ; per-atom columns energies_std (eV) and forces_std (eV/Å), the total "
            f"energy_std (eV) in each frame's info, {std_kind}" + (", and forces_interval90 (eV/Å, the 90 % conformal half-width)" if interval else "")
            if kind == "extxyz" else "ASE trajectory; energies_std and energy_std (eV), step, time_fs and "
            f"temperature_K in each frame's info, {std_kind}; forces_std only in .xyz")
    print(f"gpal: wrote {written} frames to {out} ({what})")
    return 0


# --------------------------------------------------------------------------- validate
def cmd_validate(args: argparse.Namespace) -> int:
    """Errors and calibration metrics on a test set (optionally recalibrate first)."""
    from .. import calibration
    from ..calibration.recalibration import species_factors_text
    from ..model import load

    if args.calibrate and not (args.output or args.in_place):
        raise GpalError("--calibrate writes a calibrated model: give -o OUT.npz, or --in-place to "
                        f"overwrite {args.model}")
    if (args.output or args.in_place) and not args.calibrate:
        raise GpalError("-o/--in-place write a calibrated model: they need --calibrate VAL.xyz")
    if args.output and args.in_place:
        raise GpalError("give -o OUT.npz or --in-place, not both")
    model = load(args.model)  # (the inputs first: a missing model is the error to report)
    test = _read_labelled(args.test, args, "test frames")
    from .._validation import check_atoms

    for k, a in enumerate(test):  # (a species the model lacks: named with its file and frame)
        with _species_named(f"{args.test} frame {k}"):
            check_atoms(a, species=model.species_)
    if args.output:
        _check_output(args.output, args.overwrite, ".npz")
    if not args.no_plots:  # plots of an earlier run are not replaced without asking
        _check_plots(Path(args.plots), VALIDATION_PLOTS, args.overwrite)
    _warn_training_frames(model, test, args.test, "test frames")  # (after the errors of bad input)
    if args.calibrate:
        cal_frames = _read_labelled(args.calibrate, args, "calibration frames")
        _warn_training_frames(model, cal_frames, args.calibrate, "calibration frames")
        from ..learning.state import _same_frame

        if len(cal_frames) == len(test) and all(map(_same_frame, cal_frames, test)):
            warnings.warn(f"the calibration frames {args.calibrate} are the test frames {args.test}: the "
                          "calibrated metrics below are in-sample (a mean z² of 1 by construction); calibrate "
                          "on other frames than those that judge it", UserWarning, stacklevel=1)
        val = model.residuals(cal_frames)
        if not val["force_error"].size:
            raise GpalError(f"{args.calibrate}: no frame has force labels; the calibration is of force stds")
        # the same calibration as the active learner stores: the std of a new force label
        # sqrt((scale σ)² + (noise_scale σ_n)² + novelty_scale² ν), and a conformal quantile
        # in its units, from scores each measured in a calibrator fitted on other frames
        terms = (val["force_error"], val["force_std"], val["force_noise"], val["force_novelty"],
                 val["force_frame"])  # (noise per component: a model with a force_noise_knee)
        species = val["force_species"]
        cal, conf = calibration.fit_two_term_conformal(*terms, alpha=args.alpha, species=species)
        # stored: the 90 % quantile, the one the learner's stopping rule reads
        q90 = conf if args.alpha == 0.1 else calibration.fit_two_term_conformal(*terms, alpha=0.1,
                                                                                 species=species)[1]
        if cal.scale_ <= 0.1 * (1 + 1e-6) and cal.noise_scale_ <= 0.1 * (1 + 1e-6):
            warnings.warn(f"{args.calibrate}: the errors there are far below the model's stds (both scales at "
                          "their lower bound 0.1; forces near zero, e.g. perfect crystals?): the calibrated stds "
                          "will be too small for other frames; calibrate on frames like those the model will "
                          "see (MD frames)", UserWarning, stacklevel=1)
        model.set_calibration(forces_std=dataclasses.replace(
            cal.calibration(), conformal_q90=q90.quantile_ if q90.quantile_ > 0 else None))
        path = model.save(args.model if args.in_place else args.output, overwrite=True)  # (checked above)
        print(f"gpal: calibrated on {args.calibrate}: force-std scale {cal.scale_:.3f}, noise scale "
              f"{cal.noise_scale_:.3f}, novelty scale {cal.novelty_scale_:.3g} eV/Å, "
              + (species_factors_text(cal.species_scale_, ".3f") + ", " if cal.species_scale_ else "")
              + f"{100 * (1 - args.alpha):.0f} % conformal quantile {conf.quantile_:.3f} "
              f"(of |error| / calibrated std); wrote {path}"
              + ("" if "energy_std" not in model.calibration_ else
                 f" (its energy_std factor {model.calibration_of('energy_std').scale:.3g}, from the "
                 "learner's labels, is kept)"))
    calibrated = "forces_std" in model.calibration_ and not args.raw
    if calibrated:
        c = model.calibration_of("forces_std")
        std_kind = f"calibrated (raw x {c.scale:.3g}, noise x {c.noise_scale:.3g}" + (
            f", novelty term {c.novelty_scale:.3g} eV/Å" if c.novelty_scale else "") + (
            ", " + species_factors_text(c.species_scale) if c.species_scale else "") + ")"
    else:
        std_kind = "raw" + ("" if args.raw else " (the model stores no calibration; see --calibrate)")
    from .._validation import frame_labels

    res = model.residuals(test, calibrated=calibrated)
    err, std = res["force_error"], res["force_std"]
    if not err.size:
        raise GpalError(f"{args.test}: no frame has force labels; gpal validate measures force errors")
    metrics = calibration.uncertainty_metrics(err, std, alpha=args.alpha)
    n = res["n_atoms"]
    n_e = n[res["energy_frame"]]  # atoms of each frame with an energy label
    e_true_per_atom = np.array([frame_labels(test[i]).energy / n[i] for i in res["energy_frame"]])
    e_pred_per_atom = e_true_per_atom + res["energy_error"]
    print(f"test set {args.test}: {len(test)} frames, {int(n.sum())} atoms; force stds {std_kind}"
          + ("" if len(n_e) == len(n) else f"; {len(n_e)} frames with an energy label"))
    level = f"{100 * (1 - args.alpha):.0f} %"
    e_rmse = 1000 * np.sqrt(np.mean(res["energy_error"] ** 2)) if len(n_e) else float("nan")
    rows = [
        ("energy RMSE", e_rmse, "meV/atom"),
        ("force RMSE", metrics["rmse"], "eV/Å"),
        ("force MAE", metrics["mae"], "eV/Å"),
        ("force RMV (root mean std²)", metrics["rmv"], "eV/Å"),
        ("force NLL", metrics["nll"], "nats/component"),
        ("force ZMS (mean z², ideal 1)", metrics["zms"], ""),
        (f"force coverage of {level} interval", metrics["coverage"], "fraction"),
        ("force miscalibration area", metrics["miscalibration_area"], ""),
        ("force Spearman(|error|, std)", metrics["spearman"], ""),
        ("force ENCE", metrics["ence"], ""),
    ]
    if res["stress_error"].size:  # frames with a stress label
        s_rmse = float(np.sqrt(np.mean(res["stress_error"] ** 2)))
        rows.insert(2, ("stress RMSE", 160.21766 * s_rmse, "GPa"))
    q90 = model.calibration_of("forces_std").conformal_q90 if calibrated else None
    if q90 is not None:  # the interval predict(..., calibrated=True) gives: forces_interval90
        rows.append(("force coverage, 90 % conformal", float(np.mean(np.abs(err) <= q90 * std)),
                     "fraction"))
    print(f"{'quantity':<36}{'value':>12}  unit")
    for name, value, unit in rows:
        print(f"{name:<36}{value:>12.4g}  {unit}")
    if args.no_plots:
        return 0
    out = Path(args.plots)
    out.mkdir(parents=True, exist_ok=True)
    f_true = np.concatenate([frame_labels(test[i]).forces.ravel() for i in np.unique(res["force_frame"])])
    tag = "calibrated" if calibrated else "raw"
    # (the files were checked before the work: _check_plots, --overwrite)
    calibration.plot_parity(f_true, f_true + err, out / "parity_forces.png", label="force component", units="eV/Å",
                            overwrite=True)
    if len(n_e):
        calibration.plot_parity(e_true_per_atom, e_pred_per_atom, out / "parity_energy.png", label="energy",
                                units="eV/atom", overwrite=True)
    elif calibration.is_gpal_plot(out / "parity_energy.png"):  # an earlier run's, beside this run's plots (--overwrite)
        (out / "parity_energy.png").unlink()
        print(f"gpal: removed {out / 'parity_energy.png'}, an earlier run's: these test frames have no energy "
              "labels", file=sys.stderr)
    calibration.plot_calibration_curve(err, std, out / "calibration_curve.png",
                                       title=f"force-std calibration ({tag} stds)", overwrite=True)
    calibration.plot_error_vs_uncertainty(err, std, out / "error_vs_uncertainty.png", units="eV/Å",
                                          title=f"force error vs {tag} std", overwrite=True)
    calibration.plot_z_histogram(err, std, out / "z_histogram.png", title=f"z = force error / {tag} std",
                                 overwrite=True)
    print(f"gpal: plots in {out}/")
    return 0


# --------------------------------------------------------------------------- info
def cmd_info(args: argparse.Namespace) -> int:
    """Describe a model file: species, descriptor, kernel, noises, calibration, data."""
    from ase.data import chemical_symbols

    from ..calibration.recalibration import species_factors_text
    from ..io import read_model_file
    from ..model import load

    _, meta = read_model_file(args.model)
    unbuilt = None
    try:
        model = load(args.model)
    except BaselineError as exc:  # (what the file holds is still worth showing)
        from ..model import SparseGP

        model, unbuilt = SparseGP._load(args.model, build_baseline=False), _message(exc)
    sym = [chemical_symbols[int(z)] for z in model.species_]
    d = model.descriptor_.get_params()
    w = d.get("weighting") or {}
    weighting = f", weighting {w.get('function')} (r0 {w.get('r0')} Å)" if w else ""
    print(f"gpal model {args.model} (format {meta['format']} v{meta['format_version']}, "
          f"written by gpal {meta.get('gpal_version')})")
    print(f"  species     : {', '.join(sym)}")
    print(f"  descriptor  : SOAP r_cut {model.descriptor_.r_cut_:g} Å, n_max {d['n_max']}, l_max {d['l_max']}, "
          f"sigma {d['sigma']:g} Å, {'periodic (each structure pbc)' if d['periodic'] else 'non-periodic (pbc ignored)'}{weighting}")
    print(f"  kernel      : {model.kernel_!r}")
    spec = meta.get("baseline")
    if spec:  # a Δ-model: predictions are this calculator plus the GP
        print(f"  baseline    : {spec['factory']} {json.dumps(spec.get('kwargs') or {})} (predictions "
              "add it to the GP's; e0, kernel and noises describe the residual)")
        if unbuilt:
            print(f"                not buildable here, so the model cannot predict here: {unbuilt}")
    nz = model.noise_
    print(f"  noises      : energy {nz['energy']:.4g} eV/atom, force {nz['force']:.4g} eV/Å, "
          f"stress {nz['stress']:.4g} eV/Å^3")
    print("  e0          : " + ", ".join(f"{chemical_symbols[z]} {v:.6g} eV" for z, v in sorted(model.e0_.items())))
    per = {chemical_symbols[int(z)]: int(np.sum(model.sparse_species_ == z)) for z in model.species_}
    print(f"  sparse      : {len(model.sparse_X_)} environments ({', '.join(f'{s} {c}' for s, c in per.items())}) "
          f"x {model.sparse_X_.shape[1]} features")
    nat = sum(len(a) for a in model.frames_)
    from ..model.rows import TEMPERATURE_KEY

    temps = [a.info[TEMPERATURE_KEY] for a in model.frames_ if TEMPERATURE_KEY in a.info]
    hot = (f"; {len(temps)} labelled by an active learner at {min(temps):.0f}-{max(temps):.0f} K"
           if temps else "")
    print(f"  training    : {len(model.frames_)} frames, {nat} atoms{hot}")
    if "forces_std" in model.calibration_:
        c = model.calibration_of("forces_std")
        q = "not measured" if c.conformal_q90 is None else f"{c.conformal_q90:.4g}"
        print(f"  calibration : forces_std scale {c.scale:.4g}, noise_scale {c.noise_scale:.4g}, "
              f"novelty_scale {c.novelty_scale:.4g} eV/Å (calibrated std = sqrt((scale x raw)^2 + "
              f"(noise_scale x force noise)^2 + novelty_scale^2 x min(novelty, {c.novelty_max or 1.0:.3g}))"
              + (" x the species' factor: " + species_factors_text(c.species_scale, ".4g", " ")
                 if c.species_scale else "") + f"); 90 % conformal quantile {q}")
    if "energy_std" in model.calibration_:
        c = model.calibration_of("energy_std")
        print(f"  calibration : energy_std scale {c.scale:.4g} (energies_std raw)")
    if not model.calibration_:
        print("  calibration : none (stds are raw; gpal validate --calibrate stores one)")
    hp = meta.get("hyperparameters") or {}
    lines = _evidence_lines(hp.get("evidence"))
    if lines:
        print("  evidence    : " + lines[0].split(": ", 1)[1])
        for line in lines[1:]:
            print("  " + line)
    elif hp:
        lml = hp.get("log_marginal_likelihood")
        given = ("every hyperparameter given, or maximised after the fit (optimize_hyperparameters)"
                 if hp.get("mode") == "evidence" else f"mode {hp.get('mode')!r}")
        print(f"  evidence    : none ({given}"
              + ("" if lml is None else f"; log marginal likelihood {lml:.6g}") + ")")
    return 0


# --------------------------------------------------------------------------- compare
def cmd_compare(args: argparse.Namespace) -> int:
    """Compare kernel and descriptor choices; print each table row as it is measured."""
    from ..compare import ComparisonTable, compare_kernels, default_candidates

    train = _read_labelled(args.train, args, "training frames")  # (the inputs first)
    test = _read_labelled(args.test, args, "test frames")
    if args.plot:
        plot = args.plot
        if Path(plot).is_dir():  # (adir.png had been written beside the folder adir)
            raise GpalError(f"--plot {plot}: a folder; give a file name (e.g. {Path(plot) / 'kernels.png'})")
        if not Path(plot).suffix and not plot.endswith(("/", os.sep)):
            plot = f"{plot}.png"  # (matplotlib adds it): the file checked is the file written
        _check_output(plot, args.overwrite, option="--plot")
        fmt = Path(plot).suffix[1:].lower()
        if fmt:
            from matplotlib.backend_bases import FigureCanvasBase

            known = FigureCanvasBase.get_supported_filetypes()
            if fmt not in known:  # (matplotlib would say so only after the whole comparison)
                raise GpalError(f"--plot {plot}: matplotlib cannot write .{fmt} files (it writes "
                                f"{', '.join(sorted(known))})")
        args.plot = plot
    widths = ComparisonTable.column_widths(names=[c.name for c in default_candidates()])
    started = []

    def show(row: dict) -> None:
        if not started:  # the header with the first row: not above an input error
            print(ComparisonTable.header(widths), flush=True)
            started.append(True)
        print(ComparisonTable.format_row(row, widths), flush=True)

    table = compare_kernels(train, test, plot=args.plot, progress=not args.quiet, on_row=show,
                            overwrite=True)  # (--plot checked above: --overwrite or a new file)
    best = table.best()
    print(f"gpal: lowest force RMSE: {best['name']} ({best['force_rmse']:.4g} eV/Å)")
    if args.plot:
        print(f"gpal: learning curves in {args.plot}")
    return 0


# --------------------------------------------------------------------------- ipi
def cmd_ipi(args: argparse.Namespace) -> int:
    """Serve a model to an i-PI server (energy, forces, virial; per-atom stds as JSON extras)."""
    from ..engines.ipi import IPIClient
    from ..io import read_frames
    from ..model import load

    if args.unix is not None and args.host is not None:
        raise GpalError("--host goes with --port (an INET socket), not with --unix")
    if args.unix is not None and not args.unix.strip():
        raise GpalError("--unix needs i-PI's socket name (its <address>, as in /tmp/ipi_NAME)")
    model = load(args.model)
    template = read_frames(args.template, index=-1)[0] if args.template else None
    client = IPIClient(model, template, unixsocket=args.unix, host=args.host or "localhost", port=args.port,
                       calibrated=False if args.raw else None, forces_std=args.forces_std,
                       connect_timeout=args.connect_timeout)
    print(f"gpal ipi: serving {args.model} to i-PI at {client.address}", file=sys.stderr)
    try:
        n = client.run()
    except BaselineError as exc:  # (on a structure of i-PI's run: no bad input of this command, exit 1)
        raise BaselineStoppedError(f"{exc} (after {client.n_evaluations} evaluations; i-PI waits for "
                                   "another client)") from exc
    except (OverlappingAtomsError, InvalidPositionsError) as exc:  # i-PI's dynamics blew up
        raise RunStoppedError(f"i-PI's MD blew up at its structure {client.n_evaluations + 1}: "
                              f"{_blowup_text(exc)} (a time step or temperature beyond what the model holds: "
                              "i-PI's input); i-PI waits for another client") from None
    finally:
        client.close()  # (what i-PI sent is read first: a reset connection hung i-PI 3.3)
    if client.ended_by != "EXIT":  # i-PI says EXIT when its run ends or it is stopped
        print(f"gpal ipi: error: i-PI at {client.address} closed the connection without its EXIT message "
              f"after {n} evaluations (it crashed or was killed?)", file=sys.stderr)
        return 1
    print(f"gpal ipi: i-PI ended the run after {n} evaluations")
    return 0


# --------------------------------------------------------------------------- parser
class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``gpal <cmd>: error: <message> (see --help)``."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _zeta(text: str):
    if text == "auto":
        return text
    try:
        z = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1 or 'auto', got {text!r}") from None
    if z < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1 or 'auto', got {text!r}")
    return z


def _port(text: str) -> int:
    """argparse type: a TCP port number."""
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number 1-65535, got {text!r}")
    return port


def _positive(kind):
    """argparse type: a finite number (``kind``) > 0."""
    return _bounded(kind, strict=True)


def _non_negative(kind):
    """argparse type: a finite number (``kind``) >= 0."""
    return _bounded(kind, strict=False)


def _bounded(kind, strict: bool):
    what = "an integer" if kind is int else "a number"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            if strict:
                raise argparse.ArgumentTypeError(
                    f"must be a positive {'integer' if kind is int else 'number'}, got {text!r}") from None
            raise argparse.ArgumentTypeError(f"must be {what} >= 0, got {text!r}") from None
        if strict and not (value > 0 and value != float("inf")):
            raise argparse.ArgumentTypeError(f"must be {'an integer' if kind is int else 'a finite number'} "
                                             f"> 0, got {text!r}")
        if not strict and (not value >= 0 or value == float("inf")):
            finite = "an integer" if kind is int else "a finite number"
            raise argparse.ArgumentTypeError(f"must be {finite} >= 0, got {text!r}")
        return value

    parse.__name__ = f"{'positive' if strict else 'non-negative'} {kind.__name__}"
    return parse


def _label_key_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("label keys", "read labels from other extxyz keys (GAP style, e.g. "
                             "dft_energy, dft_forces, dft_virial); frames lacking a key just lack that label")
    g.add_argument("--energy-key", metavar="KEY", help="info key of the total energy (eV)")
    g.add_argument("--forces-key", metavar="KEY", help="per-atom array of the forces (eV/Å)")
    g.add_argument("--stress-key", metavar="KEY", help="info key of the stress (eV/Å^3, ASE sign, Voigt or 3x3)")
    g.add_argument("--virial-key", metavar="KEY",
                   help="info key of the virial (eV, 3x3, 9 or Voigt 6 numbers); stress = -virial/volume "
                        "(GAP's own key, virial, is read without this option)")
    return p


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="gpal", description="Gaussian-process active learning of interatomic potentials.")
    p.add_argument("--version", action="version", version=f"gpal {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log more; tracebacks of unexpected errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p.commands = sub.choices  # (each command's parser: main() reports its stray arguments)
    labels = _label_key_options()

    s = sub.add_parser("learn", help="active learning (no argument: the embedded EMT Cu demo)",
                       description="Active learning. Without a config: the embedded EMT Cu demo. "
                                   "gpal learn --print-config shows every configuration key.")
    s.add_argument("config", nargs="?", help="TOML configuration (default: the embedded EMT Cu demo)")
    s.add_argument("--print-config", action="store_true",
                   help="print the full default configuration (TOML, with units) and exit")
    s.add_argument("--resume", metavar="RUN_DIR", type=os.path.expanduser,  # (--resume=~/x: no shell expansion)
                   help="continue the run in RUN_DIR, with the workers it was started with (with a config: only "
                        "steps, workers, walker_workers, walker_scheduler (a new address), [stopping], [targets] "
                        "tolerance and [learner] max_oracle_calls may change)")
    s.add_argument("--steps", type=_non_negative(int), help="MD steps per walker, a total (overrides the config)")
    s.add_argument("--run-dir", type=os.path.expanduser, help="run folder (overrides the config)")
    s.add_argument("--overwrite", action="store_true",
                   help="start afresh: an existing run folder is moved aside to RUN_DIR.old-<date>-<time>")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    s.set_defaults(func=cmd_learn)

    s = sub.add_parser("fit", help="fit a model to labelled frames (extxyz)", parents=[labels])
    s.add_argument("train", help="labelled frames (extxyz or any ASE format)")
    s.add_argument("-o", "--output", default="model.npz", help="model file (default model.npz)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    s.add_argument("--kernel", choices=("dot", "se"), default="dot")
    s.add_argument("--zeta", type=_zeta, default=None,
                   help="exponent of the dot-product kernel (default: 2, 3 or 4, whichever the "
                        "evidence prefers, with l_max, signal variance and the unset noises; a "
                        "number given keeps ζ, the signal variance and unset noises are still the "
                        "evidence's), or "
                        "'auto': the one of 1, 2, 3, 4, 6 with the largest log marginal likelihood "
                        "(hyperparameters and noises optimised for each)")
    s.add_argument("--length-scale", type=_positive(float), default=None, help="of the SE kernel (default 0.5)")
    s.add_argument("--n-sparse", type=_positive(int), default=None,
                   help="sparse environments (default 200; for a training set an active-learning run wrote, "
                        "the learner's count: 300 + 20 per label after the bootstrap, at most 2000)")
    s.add_argument("--energy-noise", type=_positive(float), default=None,
                   help="eV/atom (default: chosen by the evidence)")
    s.add_argument("--force-noise", type=_positive(float), default=None,
                   help="eV/Å (default: chosen by the evidence)")
    s.add_argument("--stress-noise", type=_positive(float), default=None,
                   help="eV/Å^3 (default: chosen by the evidence)")
    s.add_argument("--optimize", action="store_true",
                   help="optimise the kernel's hyperparameters and the noises not given (marginal "
                        "likelihood; with a noise given, only the kernel's)")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    s.add_argument("--baseline", metavar="MODULE:NAME",
                   help="Δ-learning: an ASE calculator under the GP, e.g. tblite.ase:TBLite")
    s.add_argument("--baseline-kwargs", type=_json_object, metavar="JSON",
                   help='its keyword arguments, e.g. \'{"method": "GFN1-xTB"}\'')
    g = s.add_argument_group("descriptor", "SOAP settings (default: r_cut 5, n_max 8, "
                             "species of the frames, smooth poly cutoff, l_max 3 or 6 and sigma 0.3 "
                             "or 0.5 by the evidence; with any of these options l_max defaults to 6 "
                             "and sigma to 0.5)")
    g.add_argument("--r-cut", type=_positive(float), help="radial cutoff, Å")
    g.add_argument("--n-max", type=_positive(int), help="radial basis functions")
    g.add_argument("--l-max", type=int, help="maximum spherical-harmonic degree")
    g.add_argument("--sigma", type=_positive(float), help="Gaussian width, Å")
    g.add_argument("--species", nargs="+", metavar="SYMBOL",
                   help="chemical symbols the model knows (e.g. Cu Au, or Cu,Au)")
    s.set_defaults(func=cmd_fit)

    s = sub.add_parser("md", help="molecular dynamics on a model (extxyz with per-atom stds)")
    s.add_argument("model")
    s.add_argument("start", help="start structure (any ASE format; its last frame)")
    s.add_argument("-o", "--output", default="md.xyz",
                   help="extxyz (.xyz: energies_std, forces_std columns) or ASE .traj (default md.xyz)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    s.add_argument("--steps", type=_positive(int), default=1000, help="MD steps (default 1000)")
    s.add_argument("--temperature", type=_non_negative(float), default=300.0,
                   help="K: Langevin thermostat (nvt), initial momenta (nve) (default 300)")
    s.add_argument("--timestep", type=_positive(float), default=1.0, help="fs (default 1)")
    s.add_argument("--ensemble", choices=("nvt", "nve"), default="nvt", help="default nvt")
    s.add_argument("--interval", type=_positive(int), default=10,
                   help="write every this many steps, and the last (default 10)")
    s.add_argument("--seed", type=_non_negative(int), default=0, help="random seed (default 0)")
    s.add_argument("--raw", action="store_true", help="raw stds even if the model stores a calibration")
    s.add_argument("-q", "--quiet", action="store_true")
    s.set_defaults(func=cmd_md)

    s = sub.add_parser("validate", help="errors, calibration metrics and plots on a test set", parents=[labels])
    s.add_argument("model")
    s.add_argument("test", help="labelled test frames (extxyz)")
    s.add_argument("--calibrate", metavar="VAL.xyz",
                   help="recalibrate the force stds on these frames first (needs -o or --in-place)")
    s.add_argument("-o", "--output", metavar="OUT.npz", help="write the calibrated model here")
    s.add_argument("--in-place", action="store_true", help="overwrite MODEL with the calibrated model")
    s.add_argument("--overwrite", action="store_true", help="replace an existing -o file and earlier plots")
    s.add_argument("--raw", action="store_true", help="score raw stds even if the model stores a calibration")
    s.add_argument("--alpha", type=float, default=0.1, help="miscoverage level of the intervals")
    s.add_argument("--plots", default="validation_plots", metavar="DIR",
                   help="folder for the parity, calibration and z-score plots (PNG; default "
                        "validation_plots)")
    s.add_argument("--no-plots", action="store_true", help="print the table only")
    s.set_defaults(func=cmd_validate)

    s = sub.add_parser("info", help="describe a model file")
    s.add_argument("model")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("compare-kernels", help="compare kernel and descriptor choices", parents=[labels])
    s.add_argument("train")
    s.add_argument("test")
    s.add_argument("--plot", default="kernel_comparison.png",
                   help="learning curves (PNG; default kernel_comparison.png; '' for none)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing --plot file")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    s.set_defaults(func=cmd_compare)

    s = sub.add_parser("ipi", help="serve a model to i-PI (MD, PIMD, REMD, ...) over a socket",
                       description="Connect to an i-PI server as its client (driver) and answer its "
                                   "requests with the model: energy, forces, virial, and the per-atom "
                                   "uncertainty as JSON extras (energies_std, energy_std, novelty).")
    s.add_argument("model")
    where = s.add_mutually_exclusive_group(required=True)
    where.add_argument("--unix", metavar="NAME", help="i-PI's UNIX socket <address> (file /tmp/ipi_NAME; its path is taken too)")
    where.add_argument("--port", type=_port, help="i-PI's INET port (1-65535)")
    s.add_argument("--host", help="i-PI's host for --port (default localhost)")
    s.add_argument("--template", metavar="STRUCTURE",
                   help="structure with i-PI's atoms in i-PI's order (needed for models of several species)")
    s.add_argument("--forces-std", action="store_true", help="also send forces_std (eV/Å) in the extras")
    s.add_argument("--raw", action="store_true", help="raw stds even if the model stores a calibration")
    s.add_argument("--connect-timeout", type=_positive(float), default=30.0, metavar="SECONDS",
                   help="keep trying to reach i-PI this long (default 30)")
    s.set_defaults(func=cmd_ipi)
    for command in sub.choices.values():  # (gpal learn c.toml -v as well as gpal -v learn c.toml)
        command.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                             help="log more; tracebacks of unexpected errors")
    return p


def _terminate_as_interrupt(signum, frame):
    """SIGTERM during ``gpal learn``: unwind like Ctrl-C, so the learner checkpoints. The
    signal is noted too (:func:`gpal.io.note_stop`): raised while a finalizer runs, the
    exception is discarded by Python, and the learner stops at its next MD step instead."""
    from ..io import note_stop

    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends at once
    note_stop(signal.SIGTERM)
    raise KeyboardInterrupt(signal.SIGTERM)


def _interrupt_noted(signum, frame):
    """Ctrl-C during ``gpal learn``: Python's KeyboardInterrupt, with the signal noted as
    well (:func:`gpal.io.note_stop`), as :func:`_terminate_as_interrupt` does for SIGTERM:
    raised while a finalizer runs, the exception is discarded by Python, and the learner
    stops at its next MD step instead."""
    from ..io import note_stop

    note_stop(signal.SIGINT)
    raise KeyboardInterrupt


# --------------------------------------------------------------------------- main
def _message(exc: BaseException) -> str:
    """One line describing ``exc``."""
    if isinstance(exc, OSError) and getattr(exc, "filename", None) and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}"
    elif isinstance(exc, KeyError) and not isinstance(exc, GpalError):
        text = f"missing entry {exc.args[0]!r}" if exc.args else "missing entry"
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


@contextmanager
def _one_line_warnings(prog: str):
    """Show Python warnings as ``gpal <cmd>: warning: ...`` lines, each text once per
    command (Python's own filter shows a warning once per place in the code, and a
    learner's fits and predictions reach the same warning from several places). A line
    goes through ``tqdm.write``, which lifts any progress bar on the terminal above it
    instead of printing into the middle of the bar; so do the log's warning lines."""
    from tqdm import tqdm

    seen = set()

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, (DeprecationWarning, PendingDeprecationWarning)) and \
                "gpal" not in Path(str(filename)).parts:
            return  # between other packages (matplotlib under a newer pyparsing): not the user's to act on
        text = f"{prog}: warning: {' '.join(str(message).split())}"
        if text not in seen:
            seen.add(text)
            tqdm.write(text, file=sys.stderr)

    from tqdm.contrib.logging import logging_redirect_tqdm

    with warnings.catch_warnings(), logging_redirect_tqdm():  # (log lines too: "oracle failed on ...")
        warnings.showwarning = show
        yield


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (argparse errors exit with 2)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # (argparse's own error named "gpal", not the command that got them)
        parser.commands[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format=f"gpal {args.command}: %(levelname)s: %(message)s"
                        + (" [%(name)s]" if args.verbose else ""))
    prog = f"gpal {args.command}"
    # gpal learn saves its run on SIGTERM as on Ctrl-C; gpal ipi closes its socket as on
    # Ctrl-C (a kill mid-message reset it, and i-PI 3.3's polling thread died: i-PI hung)
    terminate = args.command in ("learn", "ipi") and threading.current_thread() is threading.main_thread()
    old_term = signal.signal(signal.SIGTERM, _terminate_as_interrupt) if terminate else None
    # (Ctrl-C noted too, where Python's own handler is in place: not one a host program set)
    note_int = (args.command == "learn" and terminate
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler)
    if note_int:
        signal.signal(signal.SIGINT, _interrupt_noted)
    # a model's "module:Name" baseline (or a plugin) may live in the working folder, as
    # `gpal learn` finds it there (which also adds the config's folder, for its duration)
    added = [] if args.command == "learn" else add_import_folders()
    try:
        with _one_line_warnings(prog):
            return int(args.func(args) or 0)
    except (KeyboardInterrupt, SystemError) as exc:
        # an interrupt inside a numba-compiled call arrives as a SystemError caused by it
        if isinstance(exc, SystemError):
            cause = interrupt_in(exc)
            if cause is None:
                if args.verbose:
                    traceback.print_exc()
                print(f"{prog}: error: unexpected SystemError: {_message(exc)} (a bug in gpal? "
                      "gpal --verbose shows the traceback)", file=sys.stderr)
                return 1
            exc = cause
        sig = signal.SIGTERM if exc.args == (signal.SIGTERM,) else signal.SIGINT
        if sys.stderr.isatty():
            sys.stderr.write("\n")  # end a progress line
        if args.command != "learn":
            print(f"{prog}: interrupted", file=sys.stderr)
            return 128 + sig
        run_dir = getattr(args, "run_dir_used", None) or getattr(args, "resume", None) or getattr(args, "run_dir", None)
        if run_dir and (Path(run_dir) / VALIDATION_TRAJECTORY).exists() and not (Path(run_dir) / "state.json").exists():
            print(f"{prog}: interrupted by {sig.name} while labelling the validation trajectory; its labels are "
                  f"saved in {Path(run_dir) / VALIDATION_TRAJECTORY}: the same command continues it",
                  file=sys.stderr)
        elif not run_dir or not (Path(run_dir) / "state.json").exists():
            print(f"{prog}: interrupted by {sig.name} before the run started; nothing to resume",
                  file=sys.stderr)
        else:
            print(f"{prog}: interrupted by {sig.name}; progress is saved, continue with: "
                  f"gpal learn --resume {run_dir or 'RUN_DIR'}", file=sys.stderr)
        return 128 + sig
    except BrokenPipeError:  # the reader went away (gpal info model.npz | head): not an error
        try:  # no second error when Python flushes stdout at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):  # a stdout without a file descriptor (a test's capture)
            pass
        return 128 + signal.SIGPIPE
    except EXPECTED_ERRORS as exc:
        if args.verbose:
            traceback.print_exc()
        hint = ""
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            run_dir = getattr(args, "run_dir_used", None) or getattr(args, "resume", None)
            where = f" (the run folder {run_dir})" if run_dir else ""
            hint = f"; the disk (or the quota) is full{where}" + (
                f": free space, then continue with gpal learn --resume {run_dir}"
                if run_dir and (Path(run_dir) / "state.json").exists() else "")
        elif isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            run_dir = getattr(args, "run_dir_used", None) or getattr(args, "resume", None)
            if run_dir and (Path(run_dir) / "state.json").exists():  # (a run that had started: not bad input)
                hint = (f"; the run folder {run_dir} is not writable (any more): everything written so far "
                        f"is kept; make it writable, then continue with gpal learn --resume {run_dir}")
        message = _message(exc)
        config = getattr(args, "config", None)
        if config and isinstance(exc, ConfigError) and message.startswith("["):
            message = f"{config}: {message}"  # ("[section] key ..." of the config given)
        print(f"{prog}: error: {message}{hint}", file=sys.stderr)
        # (a crashed worker or a full disk is no bad input: saved, resume it)
        return 1 if isinstance(exc, RunStoppedError) or hint else 2
    except MemoryError as exc:  # settings that ask for more than the machine has (n_max 100000...)
        if args.verbose:
            traceback.print_exc()
        print(f"{prog}: error: out of memory{': ' + _message(exc) if str(exc) else ''}; the settings ask "
              "for more memory than this machine has (descriptor size, sparse points, memory_budget_gb)",
              file=sys.stderr)
        return 2
    except Exception as exc:  # a bug, not bad input: still one line unless --verbose
        if args.verbose:
            traceback.print_exc()
        print(f"{prog}: error: unexpected {type(exc).__name__}: {_message(exc)} (a bug in gpal? "
              "gpal --verbose shows the traceback)", file=sys.stderr)
        return 1
    finally:
        if terminate:
            signal.signal(signal.SIGTERM, old_term)
        if note_int:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        if terminate:  # (a signal noted and not taken, e.g. during the validation trajectory,
            from ..io import stop_pending  # is this command's: it stops no later run)

            stop_pending()
        for folder in added:
            if folder in sys.path:
                sys.path.remove(folder)

