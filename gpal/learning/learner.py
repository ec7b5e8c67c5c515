"""On-the-fly active learning: MD on the GP, the oracle only where the GP is guessing.

The loop (one round per MD step of every walker)::

    bootstrap:  candidates (rattled/strained copies of the start structures)
                -> farthest-point sampling in descriptor space -> oracle -> fit
    each step:  MD step of every walker on the current GP (ASE dynamics)
                uncertainty of the new frame above the trigger?  -> collect it
                blow-up (atoms overlap, huge forces, runaway temperature)?
                    -> roll back to the walker's last good frame and collect that
                collected frames -> oracle (concurrently) -> appended to train.xyz at
                once -> model.update(frames, most uncertain environments) -> continue
    schedule:   hyperparameters re-optimised every ``optimize_every`` labels;
                checkpoint (model + learner state) every ``checkpoint_every`` labels;
                stopping rule checked every ``check_every`` steps.

Everything a run produces lives in its run folder::

    train.xyz     every labelled frame, appended the moment the oracle returns; its info
                  holds gpal_reason (bootstrap, uncertain, rollback, temperature, target,
                  initial), gpal_step (the MD step of the frame) and gpal_walker
    log.jsonl     one JSON record per logged step / event (labels, rollbacks, failures)
    model.npz     the latest model checkpoint (gpal.load)
    state.json    learner state for ``resume`` (with the start structures' constraints);
                  structures.xyz the start structures; walkers.npz positions and momenta
    summary.json  final summary; learning_curve.png and validation plots
    run.lock      held by the one process that runs (or is resuming) the run
    failed.xyz    the frames the oracle could not label, with the reason (if any)

After a crash (even ``kill -9``) :meth:`ActiveLearner.resume` reloads the checkpoint and
adds every label in train.xyz that the checkpointed model had not seen yet: no label is
lost and none is asked for twice.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import os
import sys
import threading
import time
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols
from ase.md.velocitydistribution import Stationary, thermalize_momenta

from .. import selection
from ..calibration.recalibration import species_factors_text
from .._threads import policy as _thread_policy
from .._validation import (as_rng, check_atoms, check_min_distance, check_number, displacement, frame_labels,
                           species_number, user_stacklevel, warn_unknown_keywords)
from ..calculator import GPCalculator
from ..exceptions import (BaselineError, BaselineStoppedError, GpalError, MissingLabelsError, OracleError,
                          OracleStoppedError, OverlappingAtomsError, RunStoppedError, UnknownSpeciesError,
                          interrupt_in)
from ..io import (append_frame, atomic_write, frames_bytes, interrupts_deferred, read_frames, restore_constraints,
                  stop_pending,
                  savable_constraints, temporary_of, write_frames)
from ..model import SparseGP
from ..model.defaults import unexplained_forces
from ..model.rows import TEMPERATURE_KEY, frame_temperature
from .oracle import BrokenOracleError, Oracle, OracleSpec, as_oracle_spec, executor_workers, pool_threads
from .sampler import MDSettings, _Walker, blown_up, check_md_factory, temperature_limit, walker_atoms
from .settings import (
    FLAT_NAMES,
    GROUPS,
    Bootstrap,
    ModelGrowth,
    OracleSettings,
    RunSettings,
    Validation,
    group_flat,
    settings_from_state,
    settings_state,
)
from .state import (
    _calculator_spec,
    _drop_partial_frame,
    _drop_partial_line,
    _import,
    _import_path,
    _json_default,
    _model_from_spec,
    _model_spec,
    _same_frame,
)
from .trigger import Trigger, check_storable, trigger_state

log = logging.getLogger(__name__)

#: the files a run writes into its folder (``gpal learn`` adds ``config.toml``)
RUN_FILES = frozenset({"config.toml", "state.json", "train.xyz", "bootstrap.xyz", "structures.xyz", "run.lock",
                       "validation.xyz", "targets.xyz", "log.jsonl", "summary.json", "model.npz",
                       "walkers.npz", "learning_curve.png", "failed.xyz", "validation_trajectory.xyz",
                       "validation_trajectory.calls.json"})


# run folders this process holds (real path -> open run.lock or None): a POSIX record
# lock belongs to the process, so a second learner of the same process must be refused
# here, and its run.lock never opened and closed again (closing would release the lock)
_HELD: dict[str, Any] = {}
# folders held by a caller preparing a run there (reserve_run_dir): the next learner of
# this process adopts the lock instead of taking it; the keys of those adopted now
_RESERVED: dict[str, int] = {}  # key -> the Python thread that reserved it
_ADOPTED: set[str] = set()
_ADOPTED_LOCK = object()  # the file handle _lock_run_dir returns for an adopted lock


@contextlib.contextmanager
def reserve_run_dir(run_dir: Path):
    """Hold ``run_dir/run.lock`` while a run is prepared there and then run.

    ``gpal learn`` writes ``config.toml`` and labels validation frames before it builds
    the learner: without the lock a second ``gpal learn`` of the same folder could do
    the same meanwhile. Within the block, one learner at a time, in the thread that
    reserved the folder, adopts the lock (its run() and resume() take it and give it
    back without releasing it); a second reservation of the folder, in any thread of
    this process or another process, is refused.
    """
    lock = _lock_run_dir(run_dir, adopt=False)
    _RESERVED[lock[0]] = threading.get_ident()
    try:
        yield
    finally:
        _RESERVED.pop(lock[0], None)
        _unlock_run_dir(lock)


def _lock_run_dir(run_dir: Path, adopt: bool = True):
    """Hold ``run_dir/run.lock``: one learner at a time runs or resumes a run.

    A POSIX record lock (``lockf``): it belongs to this process (worker processes it
    forks do not inherit it) and ends with it, however it ends; within the process a
    registry refuses a second learner. Returns what :func:`_unlock_run_dir` takes; a
    platform or file system without such locks gives a warning and the registry only.
    :class:`GpalError` if another process or another learner here holds the folder.
    """
    key = os.path.realpath(run_dir)
    if adopt and _RESERVED.get(key) == threading.get_ident() and key not in _ADOPTED:
        _ADOPTED.add(key)  # (held for this learner by reserve_run_dir, in this thread)
        return key, _ADOPTED_LOCK
    if key in _HELD:
        raise GpalError(f"another learner of this process is running or resuming the run in {run_dir}; "
                        "let it end first")
    fh = None
    try:
        import fcntl
    except ImportError:  # (not POSIX: the registry only)
        fcntl = None
    if fcntl is not None:
        fh = open(run_dir / "run.lock", "a")
        try:
            fcntl.lockf(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            fh.close()
            fh = None
            if exc.errno in (errno.EACCES, errno.EAGAIN):
                raise GpalError(f"another gpal process is running or resuming the run in {run_dir} (it holds "
                                f"{run_dir / 'run.lock'}); wait for it to end, or stop it first") from None
            warnings.warn(f"{run_dir} has no file locks ({exc.strerror}): gpal cannot tell whether another "
                          "process runs there; make sure none does", UserWarning, stacklevel=3)
    _HELD[key] = fh
    return key, fh


def run_dir_in_use(run_dir: Path) -> bool:
    """Whether a learner holds ``run_dir`` (a run going on there), in this process or another."""
    if os.path.realpath(run_dir) in _HELD:
        return True
    if not (Path(run_dir) / "run.lock").exists():
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _unlock_run_dir(_lock_run_dir(Path(run_dir)))
    except GpalError:
        return True
    return False


def _stamp(path: Path):
    """What tells one version of a file from another here: (modification time in ns, size)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def _unlock_run_dir(lock) -> None:
    """Release what :func:`_lock_run_dir` returned (None: nothing)."""
    if lock is not None:
        key, fh = lock
        if fh is _ADOPTED_LOCK:  # (the reservation keeps holding it)
            _ADOPTED.discard(key)
            return
        _HELD.pop(key, None)
        if fh is not None:
            fh.close()  # (closing releases the lock)


def foreign_files(run_dir: Path) -> list[str]:
    """Names in ``run_dir`` that no gpal run writes (the temporary files of an atomic write
    of a run file, left by a kill, count as the run's: ``.train.xyz.0a1b2c3d.tmp``, and
    ``train.xyz.tmp`` as earlier gpal versions named them)."""
    return sorted(p.name for p in Path(run_dir).iterdir()
                  if p.name not in RUN_FILES and not _run_temporary(p.name))


def _run_temporary(name: str) -> bool:
    """``name`` is the temporary file of an atomic write of a run file (``.train.xyz.0a1b2c3d.tmp``,
    or ``train.xyz.tmp`` as earlier gpal versions named them)."""
    return temporary_of(name) in RUN_FILES or (name.endswith(".tmp") and name[:-4] in RUN_FILES)


def _remove_stale_temporaries(run_dir: Path) -> None:
    """Delete the temporary files of run files that kills mid-write left
    (``.train.xyz.0a1b2c3d.tmp``): each kill left one more, of up to the model's size.
    Called with the run lock held, so no gpal writer of this folder is using them; no
    other file is touched, not even ``train.xyz.tmp`` (earlier gpal versions' name, and
    a name a user may give a file of their own)."""
    for p in Path(run_dir).iterdir():
        if temporary_of(p.name) in RUN_FILES:
            with contextlib.suppress(OSError):
                p.unlink()


__all__ = ["ActiveLearner", "Trigger", "MDSettings", "Summary"]


def check_sparse_budget(model, max_sparse: int) -> None:
    """A ValueError if an unfitted ``model`` would start with more sparse points than the
    learner's ``max_sparse`` lets the sparse set hold."""
    size = getattr(model, "n_sparse", None)
    wanted = sum(size.values()) if isinstance(size, dict) else size
    if isinstance(wanted, int) and getattr(model, "alpha_", None) is None and max_sparse < wanted:
        raise ValueError(f"max_sparse ({max_sparse}) is below the model's n_sparse ({wanted}): raise "
                         "max_sparse or lower n_sparse")


@dataclass
class Summary:
    """What a run did, with every oracle call it made.

    ``oracle_calls`` counts every call of the oracle in this run folder, failures and
    retries included; ``oracle_calls_by_reason`` splits them (``bootstrap``,
    ``uncertain``, ``temperature`` for the first frame at a new temperature step of the
    sampler's ramp (:class:`gpal.Trigger`'s ``temperature_steps``), ``rollback``,
    ``target`` for labels asked by a :class:`gpal.TargetSet`, ``validation`` for calls
    recorded with :meth:`ActiveLearner.count_oracle_calls`); a user's validation frames
    cost none. ``oracle_failures`` counts frames that could not be labelled after every
    attempt (a failed attempt that a retry recovered is a call, not a failure).
    ``oracle_calls_unlabelled`` counts the calls (validation excepted) that left no label
    in ``train.xyz``: failed attempts, and calls cut off by an interrupt or a kill (paid
    for, their result never written).
    ``calibration`` holds the leave-one-frame-out calibration (:meth:`ActiveLearner.calibrate`);
    ``validation`` the errors on the user's validation frames, if any. Times are
    seconds, cumulative over the run and its resumes, except ``wall_time`` (this
    session); ``wall_time_total`` adds the earlier sessions' up to their last
    checkpoint. ``finished`` is False, with ``superseded`` saying why, in a
    ``summary.json`` whose run a later session continued (until that session writes
    its own), and in that of a session something outside its input stopped (a
    :class:`gpal.exceptions.RunStoppedError`: an oracle that keeps failing, a crashed
    worker).
    """

    steps: int
    oracle_calls: int
    oracle_failures: int
    labelled_frames: int
    bootstrap_frames: int
    rollbacks: int
    sparse_refreshes: int
    wall_time: float
    time_md: float
    time_oracle: float
    time_update: float
    stopped_early: bool = False
    stop_reason: str = ""
    validation: dict = field(default_factory=dict)
    oracle_calls_by_reason: dict = field(default_factory=dict)
    calibration: dict = field(default_factory=dict)
    time_check: float = 0.0
    time_calibration: float = 0.0
    stop_checks: dict = field(default_factory=dict)
    target: dict = field(default_factory=dict)
    oracle_calls_unlabelled: int = 0
    time_validation: float = 0.0
    wall_time_total: float = 0.0
    finished: bool = True
    superseded: str = ""

    def __str__(self) -> str:
        why = ", ".join(f"{v} {k}" for k, v in self.oracle_calls_by_reason.items() if v)
        unlabelled = (f"; {self.oracle_calls_unlabelled} left no label: failed attempts, or cut off by an "
                      "interrupt or kill" if self.oracle_calls_unlabelled else "")
        free = ("; the validation frames given cost none"
                if self.validation and not self.oracle_calls_by_reason.get("validation") else "")
        lines = [
            "gpal active learning summary",
            f"  MD steps (per walker) : {self.steps}",
            f"  oracle calls          : {self.oracle_calls} ({why or 'none'}; "
            f"{self.oracle_failures} failed{unlabelled}){free}",
            f"  labelled frames       : {self.labelled_frames}",
            f"  rollbacks             : {self.rollbacks}",
            f"  sparse refreshes      : {self.sparse_refreshes} (novel environments added without the oracle)",
            f"  wall time             : {self.wall_time:.1f} s this session"
            + (f", {self.wall_time_total:.1f} s in all" if self.wall_time_total > self.wall_time + 0.05 else "")
            + f"; cumulative: MD {self.time_md:.1f} (uncertainty checks {self.time_check:.1f}), oracle "
            f"{self.time_oracle:.1f}, model updates {self.time_update:.1f}, calibration "
            f"{self.time_calibration:.1f}" + (f", validation {self.time_validation:.1f}"
                                             if self.time_validation else ""),
        ]
        if not self.finished:
            lines.insert(1, f"  NOT FINISHED          : {self.superseded}")
        if self.stopped_early:
            lines.append(f"  stopped early         : {self.stop_reason}")
        sc = self.stop_checks
        if sc and not self.stopped_early:
            judged = f"judged {sc.get('judged')} time{'' if sc.get('judged') == 1 else 's'}"
            if sc.get("met_at") is not None:  # met at the run's last step, or by an earlier session
                lines.append(f"  stopping rule         : {judged}, met at step {sc['met_at']}")
            elif sc.get("judged"):
                last = f" (last: {sc['last_reason']})" if sc.get("last_reason") else ""
                ramp = ("; under a temperature ramp it is judged from the top temperature on: continue the run "
                        "(gpal learn --resume RUN_DIR --steps N, or run(N)) to let it stop"
                        if sc.get("judged") == 1 and "temperature protocol" in sc.get("last_deferred", "") else "")
                lines.append(f"  stopping rule         : {judged}, not met{last}{ramp}")
            elif sc.get("deferred"):
                lines.append(f"  stopping rule         : never judged ({sc['deferred']} checks deferred; "
                             f"the last because {sc.get('last_deferred')})")
            else:
                lines.append("  stopping rule         : never judged (no check was due)")
        t = self.target
        if t:  # a TargetSet's quantities under the final model, calibrated stds
            shown = [f"{name} = {v:.4g} ± {e:.2g} {t['unit']}"
                     for name, v, e in zip(t["labels"], t["value"], t["std"])]
            more = f" (and {len(shown) - 3} more in summary.json)" if len(shown) > 3 else ""
            lines.append(f"  target                : {'; '.join(shown[:3])}{more}")
        c = self.calibration
        if c:
            lines.append(
                f"  force calibration     : scale {c['scale']:.3g} on {c['n_calibration']} frames "
                f"(leave-one-frame-out); on {c['n_judge']} other frames: force RMSE "
                f"{c['judge_force_rmse']:.4g} eV/Å, mean z² {c['judge_zms']:.3g}, 90 % coverage "
                f"{c['judge_coverage90']:.3f}"
                + ("; species factors " + species_factors_text(c["species_scale"], sep=" ")
                   if c.get("species_scale") else "")
            )
            lines += [f"  calibration caveat    : {text}" for text, _ in _calibration_caveats(c)]
            if "energy_scale" in c:
                zms = f", on other frames mean z² {c['judge_energy_zms']:.3g}" if "judge_energy_zms" in c else ""
                lines.append(f"  energy calibration    : energy_std x {c['energy_scale']:.3g} on "
                             f"{c['n_energy_calibration']} frames{zms} (energies_std raw)")
            else:
                lines.append("  energy calibration    : none (fewer than 3 frames to fit it on): energy_std raw, "
                             "usually many times the error")
        shown = {"force_rmse": ("validation force RMSE", "eV/Å", 1.0),
                 "force_mae": ("validation force MAE", "eV/Å", 1.0),
                 "energy_rmse_per_atom": ("validation energy RMSE", "meV/atom", 1e3),
                 "force_zms": ("validation force z²", "(mean, calibrated stds)", 1.0),
                 "force_coverage90": ("validation coverage", "(|z| ≤ 1.645, calibrated stds)", 1.0)}
        for key, val in self.validation.items():
            name, unit, factor = shown.get(key, (f"validation {key}", "", 1.0))
            lines.append(f"  {name:<22}: {val * factor:.4g} {unit}".rstrip())
        return "\n".join(lines)


# draws of a bootstrap candidate with atoms too close before the rattle is refused
_REDRAWS = 20


# frames in a row the oracle may fail on (each after its retries) before a run with
# on_oracle_failure = "skip" stops as for a broken oracle (exit 1 from gpal learn)
_FAILED_IN_ROW = 3

# what a summary says of a calibration the bootstrap's frames alone gave (ActiveLearner.calibrate)
_BOOTSTRAP_CALIBRATION = (
    "rests on the bootstrap's rattled copies of the start structure(s) only (fewer than 4 MD frames were "
    "labelled), so it is not checked on MD frames, whose errors may be larger than its stds say: check "
    "it on a few oracle-labelled MD frames (validation frames, or gpal validate)")

#: force components the calibration half must hold before the learnable std may be scaled
#: down (16 atoms' forces): a 2-atom hcp cell's 2 frames (12 components) fitted the scale
#: to its lower bound 0.1, and new frames' mean z² came to 8.8
_MIN_CALIBRATION_COMPONENTS = 48
#: and the frames it must hold (a frame's components are correlated, not independent
#: checks): a sheared 32-atom Al cell's first MD calibration, 2 frames and 192 components,
#: fitted the scale to 0.1 (it had been 2.3-2.7 on the bootstrap), the trigger's
#: uncertainty fell 20-fold, no label came in the remaining 400 steps, and new frames' mean
#: z² was 1.7; no benchmark run's scale ever went below 1
_MIN_CALIBRATION_FRAMES = 4


def _rare_species_text(counts: dict) -> str:
    """The summary's caveat for species whose calibration factor rests on fewer force
    components than its prior's weight (:data:`gpal.calibration.recalibration.SPECIES_PRIOR_COUNT`),
    "" for none: such a factor is pulled toward 1, and a rare species' stds may be too
    small (2 Au atoms among 108: Au's 36 components gave a factor of 1.91, and new
    frames' Au mean z² came to 2.3, coverage 0.74; its neighbours' stds were too small too)."""
    from ase.data import chemical_symbols

    from ..calibration.recalibration import SPECIES_PRIOR_COUNT

    few = [(chemical_symbols[int(z)], n) for z, n in counts.items() if n < SPECIES_PRIOR_COUNT]
    if not few:
        return ""
    names = ", ".join(f"{s} ({n})" for s, n in few)
    return (f"the species factor of {names} rests on fewer than {SPECIES_PRIOR_COUNT} force components, so it is "
            "pulled toward 1 and its stds (and its neighbours') may be too small: check them on frames "
            "with more of it (gpal validate)")


def _calibration_caveats(c: dict) -> list[tuple[str, str]]:
    """What a force calibration (:meth:`ActiveLearner.calibrate`'s record) rests on too
    little of: ``(the summary's caveat, the end of run's warning)`` for each of the
    bootstrap's rattled frames only, a small cell's few components, a rare species."""
    out = []
    if c.get("on_bootstrap_frames"):
        out.append((_BOOTSTRAP_CALIBRATION, f"this run's force-std calibration {_BOOTSTRAP_CALIBRATION}"))
    elif c.get("n_calibration_components", _MIN_CALIBRATION_COMPONENTS) < _MIN_CALIBRATION_COMPONENTS:
        text = _few_components_text(c["n_calibration_components"])
        out.append((text, f"this run's force-std calibration {text}"))
    rare = _rare_species_text(c.get("species_components") or {})
    if rare:  # (on the bootstrap's frames too, where it rests on least: 1 Ni in 31 Cu had z² 8 on MD frames)
        out.append((rare, f"this run's force-std calibration: {rare}"))
    return out


def _few_components_text(n: int) -> str:
    return (f"rests on {n} force components (fewer than {_MIN_CALIBRATION_COMPONENTS}: a small cell or "
            "molecule), so the "
            "stds are never scaled below the raw ones and may still be too small: check them on a few "
            "oracle-labelled MD frames (validation frames, or gpal validate)")


def check_budgets(model, groups: dict) -> None:
    """Refuse sparse and oracle budgets a run with ``model`` cannot keep (ValueError).

    ``groups`` are the settings groups of :func:`gpal.learning.settings.group_flat`: a
    model not fitted yet needs a bootstrap of at least one frame, within
    ``max_oracle_calls``; the model's sparse set must fit in ``max_sparse``.
    """
    boot, orc = groups["bootstrap"], groups["oracle_settings"]
    check_sparse_budget(model, groups["growth"].max_sparse)
    if getattr(model, "alpha_", None) is not None:
        return
    if boot.n_frames < 1:
        raise ValueError("n_bootstrap must be >= 1 for a model that is not fitted yet (the first "
                         "labels make it; 0 only with a fitted model, e.g. [model] file), got 0")
    if orc.max_calls is not None and orc.max_calls < boot.n_frames:
        raise ValueError(f"max_oracle_calls ({orc.max_calls}) is below n_bootstrap ({boot.n_frames}): "
                         "the bootstrap alone would pass it")


def _saved_walker(template: Atoms, saved, k: int) -> Atoms:
    """Walker ``k`` of walkers.npz on a copy of its start structure ``template``."""
    try:
        return walker_atoms(template, saved[f"positions_{k}"], saved[f"momenta_{k}"], saved[f"cell_{k}"],
                            numbers=saved[f"numbers_{k}"], pbc=saved[f"pbc_{k}"])
    except ValueError as exc:
        raise GpalError(f"walkers.npz, walker {k}: {exc}") from None


def _progress(total: int, initial: int, enabled: bool):
    """tqdm over MD steps: a live bar on a terminal, a line every 30 s in a log file."""
    from tqdm.auto import tqdm

    tty = sys.stderr.isatty()
    return tqdm(total=total, initial=initial, disable=not enabled, unit="step", desc="gpal",
                mininterval=0.2 if tty else 30.0, dynamic_ncols=tty, file=sys.stderr)



#: fraction of the protocol's temperature span within which a step of
#: Trigger.temperature_steps counts as reached (checks come every few MD steps, and the
#: last one of a ramp may fall just short of its end temperature)
_TEMPERATURE_STEP_TOL = 0.02
# frames of a new run sent to an oracle in this process, one at a time, before the run stops
# because none could be labelled (an oracle that cannot label the system at all)
_FIRST_FRAMES = 2
# a walker that blows up on this many MD steps in a row, each time restarted from its last
# good frame, cannot be integrated with the run's MD settings: the run stops and says so
_MAX_BLOWUPS = 50
#: a label's checkpoint waits until this many times the last checkpoint's own duration
#: has passed since it (checkpoints at most ~10 % of the wall time; with a slow oracle,
#: every label)
_CHECKPOINT_SPACING = 9.0


#: RMS displacement (Å) under which two frames of one batch ask the oracle the same question
_SAME_FRAME_RMS = 0.02


def _distinct_frames(frames: list, order: list[int]) -> list[int]:
    """``order`` without the frames within :data:`_SAME_FRAME_RMS` Å RMS (minimum image) of
    an earlier kept one with the same atoms and cell."""
    kept: list[int] = []
    for i in order:
        moved = (displacement(frames[i], frames[j]) for j in kept)
        if not any(d is not None and np.sqrt(np.mean(np.sum(d * d, axis=1))) < _SAME_FRAME_RMS for d in moved):
            kept.append(i)
    return kept


def check_start(structures: list, model, validation: Sequence[Atoms] = (), oracle=None,
                targets: Sequence[Atoms] = ()) -> None:
    """Raise before any oracle call or file for start structures ``model`` cannot take.

    Species outside a fitted model's or a given descriptor's
    (:class:`gpal.exceptions.UnknownSpeciesError`; for the ``targets`` structures, also
    outside the start structures' when the model's descriptor is not given yet: the
    default descriptor is made from them), atoms of a start structure closer than
    the model's ``min_distance`` (:class:`gpal.exceptions.OverlappingAtomsError`), no two
    atoms within the cutoff and an ``n_sparse`` dict that names none of the structures'
    species (``ValueError``), and, given the ``oracle``, a Δ-model's baseline that cannot
    evaluate the start structures or lacks the stress their labels will need
    (:class:`gpal.exceptions.BaselineError`).
    """
    descriptor = getattr(model, "descriptor_", None) or model.descriptor
    known = getattr(descriptor, "species_numbers_", None)  # a fitted model's, or a given descriptor's
    for k, a in enumerate(list(structures) + list(validation)):
        what = f"structures[{k}]" if k < len(structures) else f"validation frame {k - len(structures)}"
        check_atoms(a, species=known, what=what)
        if k < len(structures) and len(a) < 2:
            raise ValueError(f"{what} has one atom: MD cannot sample it (its motion is the whole "
                             "cell's); give a supercell, e.g. atoms.repeat((3, 3, 3)), or a molecule")
        if k < len(structures) and getattr(model, "min_distance", None):
            check_min_distance(model._min_pair_distance(a), model.min_distance, what)
        if k < len(structures):
            _check_neighbours(a, getattr(descriptor, "r_cut", None) or 5.0, what)
    for k, a in enumerate(targets):
        try:
            check_atoms(a, species=known if known is not None else
                        sorted({int(z) for s in structures for z in s.numbers}), what=f"target structures[{k}]")
        except UnknownSpeciesError as exc:
            exc.args = (f"target structures[{k}]: {exc} (the model learns the species of the start "
                        "structures, or of its descriptor)",)
            raise
    if oracle is not None:
        _check_baseline(model, oracle, structures)
    if isinstance(model.n_sparse, dict) and getattr(model, "alpha_", None) is None:
        given = {species_number(k, "n_sparse") for k, v in model.n_sparse.items() if v}
        present = {int(z) for a in structures for z in a.numbers}
        if not given & present:
            raise ValueError(f"n_sparse={model.n_sparse!r} gives no sparse environment to the species "
                             f"of the structures ({', '.join(chemical_symbols[z] for z in sorted(present))})")


def _check_baseline(model, oracle, structures) -> None:
    """A Δ-model's baseline that cannot evaluate the start structures (a species it lacks,
    a charge it refuses) or gives no stress where the oracle's labels of a periodic start
    structure will hold one: :class:`gpal.exceptions.BaselineError` now, not after the
    bootstrap's oracle calls (one baseline evaluation per start structure)."""
    from .. import baseline as _baseline

    if getattr(model, "baseline", None) is None:
        return
    calc = oracle.resolve() if isinstance(oracle, OracleSpec) else oracle
    with_stress = "stress" in getattr(calc, "implemented_properties", ())
    base = getattr(model, "baseline_", None) or _baseline.make_baseline(model.baseline, model.baseline_kwargs)
    for a in structures:
        periodic = bool(np.all(a.pbc) and a.cell.volume > 1e-6)
        _baseline.baseline_labels(base, a, stress=with_stress and periodic)
    # a live calculator must be describable: the run saves the model at every checkpoint
    # (and a description that does not rebuild it, TIP3P(rc=4.0) or a SumCalculator, is refused now)
    if isinstance(model.baseline, (str, dict)) or hasattr(model.baseline, "factory"):
        _baseline.baseline_spec(model.baseline, model.baseline_kwargs)
    else:  # a live calculator: checked on the start structure it has just computed
        _baseline.baseline_spec(base)


def _check_neighbours(atoms: Atoms, r_cut: float, what: str) -> None:
    """``ValueError`` if no two atoms of ``atoms`` are within ``r_cut`` Å: every environment
    would be empty (lengths in pm or bohr, a lattice constant in the wrong unit)."""
    from ..descriptors.neighbors import neighbor_list

    if not len(neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, float(r_cut))[0]):
        raise ValueError(f"{what}: no two atoms are within the cutoff r_cut = {r_cut:g} Å of each other, so "
                         "every SOAP environment is empty and there is nothing to learn; are the positions "
                         "and cell in Å?")


def _system_key(a: Atoms) -> tuple:
    """What makes two frames frames of one system: atoms, species counts, periodicity."""
    z, n = np.unique(a.numbers, return_counts=True)
    return len(a), tuple(z.tolist()), tuple(n.tolist()), tuple(bool(p) for p in a.pbc)


#: the most MD walkers per start structure: each is a task every round, judged by the one
#: learner (20,000 held 0.73 GB and ran no segment in 40 s, and a SIGTERM then left
#: gpal learn hung in the process pool's shutdown; 2,000 stopped at once)
MAX_WALKERS = 1024


def check_n_walkers(n) -> int:
    """``n_walkers`` as an int in [1, :data:`MAX_WALKERS`]; a one-line ValueError otherwise."""
    n = check_number("n_walkers", n, low=1, integer=True)
    if n > MAX_WALKERS:
        raise ValueError(f"n_walkers must be <= {MAX_WALKERS}, got {n}: each walker's MD is a task of every "
                         "round that the one learner judges; for more sampling run several learners")
    return n


def check_max_temperature(md: MDSettings, max_temperature: float | None) -> None:
    """``ValueError`` if the blow-up limit ``max_temperature`` (K) is not above the protocol's top."""
    hottest = max(md.temperature_at(0.0), md.temperature_at(1.0))
    if max_temperature and max_temperature <= hottest:
        raise ValueError(f"max_temperature ({max_temperature:g} K) must be above the MD protocol's "
                         f"highest temperature ({hottest:g} K): every MD step there would count as a blow-up")


def check_trigger_threshold(trigger, max_force: float) -> None:
    """Warn if a force-std threshold in eV/Å is not below the blow-up force limit
    ``max_force``: no frame can then be labelled for its uncertainty before it counts as
    a blow-up (a threshold meant in meV/Å, 50 for 0.05 eV/Å; on purpose, a run that
    labels only its bootstrap and temperature steps)."""
    if getattr(trigger, "quantity", None) != "forces_std" or getattr(trigger, "relative_to_noise", False):
        return
    for name in ("threshold", "threshold_min"):
        value = getattr(trigger, name, None)
        if value is not None and value >= max_force:
            warnings.warn(f"trigger {name} = {value:g} eV/Å is not below the blow-up force limit "
                          f"max_force = {max_force:g} eV/Å: no frame will be labelled for its "
                          "uncertainty; thresholds are in eV/Å (50 meV/Å is 0.05)", UserWarning,
                          stacklevel=user_stacklevel())
            return


def default_rattle(structures) -> float:
    """The bootstrap's default rattle (Å): 2 % of the shortest interatomic distance of
    3D-periodic start structures, within [0.02, 0.05] (0.05 in fcc metals, 0.02 in water,
    whose O–H bonds a 0.05 Å rattle squeezed to 0.59 Å: a frame 28 eV above the liquid's,
    forces of 97 eV/Å, a fitted force noise of 2.25 eV/Å); 0.02 Å otherwise (a molecule's
    stiff bonds and soft torsions)."""
    from ase.neighborlist import neighbor_list

    if not structures or not all(np.all(a.pbc) for a in structures):
        return 0.02
    shortest = min((float(np.min(d)) if len(d := neighbor_list("d", a, 2.5)) else 2.5) for a in structures)
    return float(np.clip(0.02 * shortest, 0.02, 0.05))


def check_baseline_charge(oracle_calc, model, structures=()) -> None:
    """Warn if a Δ-model's baseline and the oracle are set to different total charges
    (their ``charge`` settings, None or absent read as 0): the model would learn the
    difference between two states (NH4+ with PySCF over neutral GFN2-xTB: force errors
    0.24 eV/Å against 0.008 with the charges matched). Spin is not compared: codes count
    it differently (PySCF's 2S, xTB's multiplicity). Also warn if a start structure
    carries initial charges or magnetic moments, which the oracle gets with each frame
    and the baseline does not (it is given numbers, positions and cell): NH4+ charged that
    way gave the GFN1-xTB baseline -138.8 eV for -129.9 with the charge, with no word."""
    from ..baseline import baseline_spec

    baseline = getattr(model, "baseline", None)
    if baseline is None or oracle_calc is None:
        return
    for a in structures:
        q = a.arrays.get("initial_charges")
        m = a.arrays.get("initial_magmoms")
        given = [what for what, v in (("initial charges", q), ("initial magnetic moments", m))
                 if v is not None and np.any(v)]
        if given:
            warnings.warn(f"the start structure {a.get_chemical_formula()} has {' and '.join(given)}: the oracle gets "
                          "them with each frame, the Δ-model's baseline does not (gpal gives it numbers, positions "
                          "and cell); give the baseline its charge and spin as settings (baseline_kwargs, e.g. "
                          "{'charge': 1} for xTB), or it learns the difference between two states",
                          UserWarning, stacklevel=user_stacklevel())
            break
    try:
        spec = baseline_spec(baseline, getattr(model, "baseline_kwargs", None))
    except Exception:  # (a baseline that cannot be described: nothing to compare)
        return
    params = getattr(oracle_calc, "parameters", None) or {}
    if "charge" not in params and "charge" not in spec["kwargs"]:
        return
    ours, theirs = params.get("charge") or 0, spec["kwargs"].get("charge") or 0
    if ours != theirs:
        warnings.warn(f"the oracle's charge ({ours}) and the baseline's ({theirs}) differ: the Δ-model would "
                      "learn the difference between two states; give the baseline the same charge (and "
                      "spin or multiplicity)", UserWarning, stacklevel=user_stacklevel())


def check_stopping_tolerance(stopping, max_force: float) -> None:
    """Warn if a stopping rule's tolerance (eV/Å) is not below the blow-up force limit
    ``max_force``: every calibrated bound is then under it, and the rule is met at every
    judged check (a tolerance meant in meV/Å, 30 for 0.03)."""
    tol = getattr(stopping, "tolerance", None)
    if tol is not None and tol >= max_force:
        warnings.warn(f"stopping tolerance = {tol:g} eV/Å is not below the blow-up force limit max_force = "
                      f"{max_force:g} eV/Å: every judged check meets it, and the run stops after the first "
                      f"{getattr(stopping, 'patience', 1)}; tolerances are in eV/Å (30 meV/Å is 0.03)",
                      UserWarning, stacklevel=user_stacklevel())


class ActiveLearner:
    """On-the-fly active learning of a gpal SparseGP.

    Parameters
    ----------
    structures : ase.Atoms or list of ase.Atoms
        Start structure(s). Each gets ``n_walkers`` MD walkers with different seeds.
    oracle : ASE calculator, OracleSpec or "module:Name"
        The reference method. A live calculator runs in this process; a spec can run in
        ``executor`` (process pool, dask).
    model : SparseGP, optional
        Settings of the model to learn (it is fitted on the bootstrap data). Default
        ``SparseGP(n_sparse=...)`` with gpal's default descriptor. A model already
        fitted is continued: its training frames become the run's initial data
        (written to ``train.xyz`` with reason ``"initial"``, the oracle's labels, and
        the temperature each was labelled at if an active learner made it) and no
        bootstrap label is made.
    run_dir : str or Path, default "gpal_run"
    md : MDSettings, optional
    trigger : Trigger, optional
    n_walkers : int, default 1
        MD walkers per start structure, each with its own seed.
    bootstrap : Bootstrap, optional
        The first labels: ``n_frames`` (4) chosen by FPS among ``n_candidates`` (64)
        rattled copies (``rattle``: 2 % of the shortest interatomic distance in 3D-periodic
        cells, within 0.02-0.05 Å (0.05 in fcc metals, 0.02 in water), 0.02 Å otherwise; cells
        strained too only under a user MD factory, which may change the cell) and
        the bootstrap model's ``n_sparse`` (300) environments
        (:class:`gpal.learning.settings.Bootstrap`).
    growth : ModelGrowth, optional
        How the model grows: ``sparse_per_label`` (20), ``optimize_every`` (1.5, a
        geometric schedule of evidence refits), ``optimize_noise``, ``sparse_refresh``,
        ``max_sparse`` (2000), ``exact_frames`` (10)
        (:class:`gpal.learning.settings.ModelGrowth`).
    oracle_settings : OracleSettings, optional
        ``executor`` for concurrent oracle calls (process pool, dask), ``timeout`` per
        label, ``retries``, ``on_failure`` ("skip" or "stop"), ``max_calls``
        (:class:`gpal.learning.settings.OracleSettings`).
    validation : Validation or list of ase.Atoms, optional
        Held-out labelled ``frames`` (no oracle call) that report errors and judge the
        ``stopping`` rule (a :class:`gpal.calibration.StoppingRule`) every
        ``check_every`` (100) steps; without frames the learner calibrates and judges on
        leave-one-frame-out errors of its own labels (:meth:`calibrate`). A plain list is
        the frames (:class:`gpal.learning.settings.Validation`).
    run : RunSettings, optional
        Checkpoints (every label and every 60 s), log interval, progress bar, seed, the
        MD blow-up limits ``max_force`` (20 eV/Å) and ``max_temperature``
        (:class:`gpal.learning.settings.RunSettings`).
    targets : gpal.TargetSet, optional
        What the run should get right (e.g. NEB images and their barrier): frames are
        then also chosen, and may be labelled, for the variance they remove from the
        target's prediction, with a weight moving from exploration to the target as
        the global uncertainty falls; with a tolerance, a target-driven stop. Its
        ``explore`` walkers (1 by default) start from the target structures, after
        the learner's own (indices ``n_walkers × len(structures)`` on), and again every
        ``restart_every`` steps.
    walker_executor : concurrent.futures.Executor, optional
        Runs the walkers' MD as tasks (:mod:`gpal.learning.walkers`): a ``ProcessPoolExecutor``,
        or ``dask.distributed.Client(...).get_executor()`` on a cluster. Each round, every
        walker runs a segment of up to ``check_every`` steps (100 if 0) on a snapshot of
        the model, ending at its first frame that crosses the trigger; one batch is then
        chosen across all walkers' frames, labelled and added, and the next round starts
        on the updated model. Default: the walkers step in this process. Not with
        ``targets``. The executor stays the caller's: when a run ends (its steps made,
        a stop, a walker that blew up, Ctrl-C) segments still queued are cancelled, but a
        segment already running finishes there and its result is dropped (``gpal learn``'s
        ``walker_workers`` pool ends it instead).
    **settings
        Any field of the groups by its flat name, e.g. ``n_bootstrap=8``,
        ``oracle_timeout=600``, ``max_oracle_calls=50``, ``random_state=1``
        (:data:`gpal.learning.settings.FLAT_NAMES`; the TOML ``[learner]`` keys): each
        sets that field of its group. An unknown name is a ``TypeError``.
    """

    def __init__(
        self,
        structures,
        oracle,
        model: SparseGP | None = None,
        *,
        run_dir="gpal_run",
        md: MDSettings | None = None,
        trigger: Trigger | None = None,
        n_walkers: int = 1,
        bootstrap: Bootstrap | None = None,
        growth: ModelGrowth | None = None,
        oracle_settings: OracleSettings | None = None,
        validation: Validation | Sequence[Atoms] | None = None,
        run: RunSettings | None = None,
        targets=None,
        walker_executor=None,
        **settings,
    ):
        if isinstance(structures, Atoms):
            structures = [structures]
        if not isinstance(structures, (str, os.PathLike)):
            structures = list(structures)  # (a generator, ase.io.iread, a tuple...)
        if isinstance(structures, (str, os.PathLike)):
            raise TypeError("structures must be an ase.Atoms or a list of them (ase.io.read(path, ':') "
                            f"reads a file), got {type(structures).__name__}")
        bad = [k for k, a in enumerate(structures) if not isinstance(a, Atoms)]
        if bad:
            raise TypeError(f"structures must be ase.Atoms; item {bad[0]} is a {type(structures[bad[0]]).__name__} "
                            "(ase.io.read(path, ':') reads a file)")
        if not len(structures):
            raise ValueError("structures is empty: give at least one start structure")
        self.structures = [a.copy() for a in structures]
        for k, a in enumerate(self.structures):
            check_atoms(a, what=f"structures[{k}]")
            a.calc = None
        self._constraints = savable_constraints(self.structures)  # (state.json: for a resume)
        if validation is not None and not isinstance(validation, Validation):
            if not isinstance(validation, (Atoms, str, os.PathLike)):
                validation = list(validation)  # (a generator is read once)
            if isinstance(validation, (Atoms, str, os.PathLike)) or not all(isinstance(a, Atoms) for a in validation):
                raise TypeError("validation must be a list of labelled ase.Atoms (ase.io.read(path, ':')) "
                                f"or a gpal.learning.Validation, got {type(validation).__name__}")
            validation = Validation(frames=validation)  # a list of labelled frames
        groups = group_flat({"bootstrap": bootstrap, "growth": growth, "oracle_settings": oracle_settings,
                             "validation": validation, "run": run}, settings)
        self._groups = groups
        boot, grow, orc, val, rs = (groups[k] for k in ("bootstrap", "growth", "oracle_settings",
                                                          "validation", "run"))
        self.oracle_spec = as_oracle_spec(oracle)
        calc = self.oracle_spec  # (a live calculator, or the one a spec builds)
        if isinstance(self.oracle_spec, OracleSpec):
            calc = self.oracle_spec.check()  # a wrong factory or kwargs fails here, before any file is written
            warn_unknown_keywords(self.oracle_spec.resolve(), self.oracle_spec.kwargs,
                                  f"the oracle {self.oracle_spec.factory}", calc)
            try:  # the run folder keeps them (state.json) for resume and for worker processes
                json.dumps(self.oracle_spec.kwargs, default=_json_default)
            except (TypeError, ValueError) as exc:
                raise TypeError(f"the oracle's kwargs must be values a run folder can keep (numbers, strings, "
                                f"lists, dicts): {exc}; pass a live calculator instead") from None
        for name, value, kind in (("model", model, SparseGP), ("md", md, MDSettings), ("trigger", trigger, Trigger)):
            if value is not None and not isinstance(value, kind):
                hint = " (gpal.load(path) loads a saved model)" if name == "model" else ""
                raise TypeError(f"{name} must be a gpal.{kind.__name__} or None, got {type(value).__name__}{hint}")
        self.model = model if model is not None else SparseGP(n_sparse=boot.n_sparse)
        if hasattr(self.model, "_check_params"):  # a bad model setting fails before any oracle call
            self.model._check_params()
        check_start(self.structures, self.model, list(val.frames or []), oracle=self.oracle_spec,
                    targets=getattr(targets, "structures", ()))
        if callable(getattr(calc, "check_structure", None)):  # e.g. gpal.dft.PySCF: charge and spin
            for a in self.structures:
                calc.check_structure(a)
        check_baseline_charge(calc, self.model, self.structures)
        self.run_dir = Path(run_dir)
        if self.run_dir.exists() and not self.run_dir.is_dir():  # (mkdir at run() raised a bare FileExistsError)
            raise GpalError(f"run_dir {str(run_dir)!r} is a file, not a folder; give the path of a new folder "
                            "or of an earlier run's")
        self.md = md or MDSettings()
        check_md_factory(self.md, self.structures[0] if self.structures else None)
        self.trigger = trigger or Trigger()
        check_storable(self.trigger)  # (its settings must survive resume and walker workers)
        self.n_walkers = check_n_walkers(n_walkers)
        check_budgets(self.model, groups)
        check_max_temperature(self.md, self.max_temperature)
        check_trigger_threshold(self.trigger, self.max_force)
        check_stopping_tolerance(self.stopping, self.max_force)
        # the groups hold the settings (the flat names below read and write them, and
        # state.json is generated from them); the resolved defaults are written back
        if boot.rattle is None:
            boot.rattle = default_rattle(self.structures)
        boot.n_frames, boot.n_candidates, boot.rattle = int(boot.n_frames), int(boot.n_candidates), float(boot.rattle)
        grow.sparse_per_label, grow.max_sparse = int(grow.sparse_per_label), int(grow.max_sparse)
        grow.optimize_every = float(grow.optimize_every)
        rs.checkpoint_every = max(1, int(rs.checkpoint_every))
        val.check_every = int(val.check_every)
        self.n_refresh = 0
        self._last_opt = 0  # labels at the last hyperparameter choice
        self._last_refit = 0  # labels at the last refit of projected columns (no choice)
        self._certified_labels = -1  # labels when the stopping rule or target tolerance ended the run
        self._target_points: list[int] = []  # species of the sparse points a TargetSet added
        self.validation = None
        self._take_validation(val.frames)
        if getattr(self.model, "alpha_", None) is None:  # a rattle the bootstrap cannot use: refused now,
            self._candidates(as_rng(self.random_state))  # before the run folder holds a run
        self.oracle = Oracle(self.oracle_spec, executor=orc.executor, timeout=orc.timeout, retries=orc.retries,
                             threads_per_task=pool_threads(orc.executor))
        if orc.timeout is not None and orc.executor is None:
            warnings.warn(f"oracle_timeout={orc.timeout:g} s is not applied without an oracle executor "
                          "(the oracle runs in this process, where nothing can stop it): give "
                          "executor=gpal.learning.worker_pool(1), a worker process that a timed-out call is "
                          "stopped with (gpal learn does this itself)", UserWarning, stacklevel=2)
        # run state
        self.step = 0
        self.bootstrap_done = False
        self.n_labelled = 0
        self.rollbacks = 0
        self._blowups: dict[int, int] = {}  # walker index -> MD steps in a row that blew up
        self.threshold_ = None
        self._recent_unc: list[float] = []
        self._force_sq = [0.0, 0]  # sum of squared oracle forces of the labels, components
        self._reasons: list[str] = []  # why each line of train.xyz was labelled, in its order
        self._last_failures: list = []  # of the last labelling (named when nothing could be labelled)
        self._failed_in_row = 0  # frames the oracle failed on since its last label (this session)
        self._owns_run_dir = False  # True once this learner has run there, or resumed it
        self._lock = None  # run.lock, held while this learner runs (_lock_run_dir)
        self._state_stamp = None  # state.json as this learner last wrote or read it (_stamp)
        self._label_steps: dict[int, list[int]] = {}
        self._hottest_label: float | None = None  # K, see _hotter_than_labels
        self._calls = {"bootstrap": 0, "uncertain": 0, "rollback": 0}
        self._validation_unlogged = 0  # validation calls counted, not yet logged (count_oracle_calls)
        self._boot_bar = None  # tqdm over the bootstrap's labels, while they are made
        self._wall_before, self._session_start = 0.0, None  # s: earlier sessions' wall time; this one's start
        self._times = {"md": 0.0, "check": 0.0, "oracle": 0.0, "update": 0.0, "calibration": 0.0,
                       "validation": 0.0}
        self._last_checkpoint = time.perf_counter()
        self._checkpoint_due, self._checkpoint_cost = False, 0.0  # (s, of the last checkpoint)
        self._resume_added = 0  # labels a resume added that the model file lacked
        self._warned_forces = False  # (_warn_unlearnable_forces, once)
        self._calibration: dict = {}
        self.n_checks = 0
        self.walkers: list[_Walker] = []
        self.total_steps = 0
        self.ramp_steps: int | None = None
        self._stopped = (False, "")
        self._interrupted = False  # run() was interrupted: it reloads from the run folder first
        self.stopped_early_ = None  # (a resumed run: why it had ended before its total, if it had)
        self.targets = targets  # gpal.TargetSet or None
        self.walker_executor = walker_executor  # gpal.learning.walkers: MD segments as tasks
        self._walker_steps: dict[int, int] = {}  # each walker's own step (walker_executor)
        self._relayed_warnings: set = set()  # workers' warnings shown (walkers.relay_warnings)
        # exploring walkers (TargetSet(explore=...)): walker index -> slot, target
        # structure it started from, step of that start
        self._explore: dict[int, dict] = {}
        self._explore_failed: dict[int, int] = {}  # exploring walker -> its frames' failures in a row
        self._saved_tolerance = None  # (a resumed run: the target tolerance its state holds)
        self._round = 0
        if walker_executor is not None:
            from .walkers import check_walker_settings

            check_walker_settings(self)

    # ------------------------------------------------------------------ files
    @property
    def train_path(self) -> Path:
        return self.run_dir / "train.xyz"

    def _log(self, record: dict) -> None:
        record = {"time": time.time(), **record}
        with open(self.run_dir / "log.jsonl", "a") as fh:
            fh.write(json.dumps(record, default=_json_default) + "\n")

    def _write_json_atomic(self, path: Path, obj) -> None:
        with atomic_write(path) as fh:
            json.dump(obj, fh, indent=1, default=_json_default)

    def checkpoint(self, *, model: bool = True) -> None:
        """Write the model, the walkers and the learner state (each atomically).

        Before the bootstrap model exists only the state is written, so a run killed
        while its first labels arrive resumes too. ``model=False`` leaves the model file
        as it is (after an interrupt, which may have cut a model update short).
        """
        t0 = time.perf_counter()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if model and getattr(self.model, "alpha_", None) is not None and not self._interrupted:
            # (after an interrupt the model in memory may be an update cut short: the
            # saved one stands until run() has reloaded the learner from the run folder)
            self.model.save(self.run_dir / "model.npz", overwrite=True)
        self._last_checkpoint = time.perf_counter()
        arrays = {}
        for w in self.walkers:
            pos, mom, cell = w.good
            arrays[f"positions_{w.index}"] = pos
            arrays[f"momenta_{w.index}"] = mom
            arrays[f"cell_{w.index}"] = cell
            arrays[f"numbers_{w.index}"] = w.atoms.numbers
            arrays[f"pbc_{w.index}"] = w.atoms.pbc
        if arrays:
            with atomic_write(self.run_dir / "walkers.npz", "wb") as fh:
                np.savez(fh, **arrays)
        if not (self.run_dir / "structures.xyz").exists():
            write_frames(self.run_dir / "structures.xyz", self.structures, overwrite=True)
        if self.validation and not (self.run_dir / "validation.xyz").exists():
            write_frames(self.run_dir / "validation.xyz", self.validation, overwrite=True)
        state = {
            "step": self.step,
            "total_steps": self.total_steps,
            "bootstrap_done": self.bootstrap_done,
            "structure_constraints": self._constraints,
            "n_labelled": self.n_labelled,
            "model_frames": len(getattr(self.model, "frames_", [])),
            "oracle_calls": self.oracle.n_calls,
            "oracle_failures": self.oracle.n_failures,
            "rollbacks": self.rollbacks,
            "n_refresh": self.n_refresh,
            "last_optimization": self._last_opt,
            "last_refit": self._last_refit,
            "certified_labels": self._certified_labels,
            "target_sparse_species": self._target_points,
            "threshold": self.threshold_,
            # one more than the window: a level that expired (adapt_expire) stays expired
            "recent_uncertainty": self._recent_unc[-(self.trigger.adapt_window + 1):],
            "label_force_squares": self._force_sq,
            "label_steps": {str(k): v[-self.trigger.max_labels:] for k, v in self._label_steps.items()},
            "oracle_calls_by_reason": self._calls,
            "calibration": getattr(self, "_calibration", {}),
            # (a retired exploring walker is in explore_walkers, not in self.walkers)
            "n_walkers_total": len(self.walkers) + sum(bool(e.get("retired")) for e in self._explore.values()),
            "times": self._times,
            "wall_time_total": self._wall_before + (time.perf_counter() - self._session_start
                                                    if self._session_start is not None else 0.0),
            "trigger": trigger_state(self.trigger),
            "trigger_class": _import_path(type(self.trigger)),  # a Trigger subclass: its own judge
            "trigger_has_class": type(self.trigger) is not Trigger,
            "md": {k: v for k, v in asdict(self.md).items() if k != "factory"},
            "md_factory": None if self.md.factory is None else _import_path(self.md.factory),
            "md_has_factory": self.md.factory is not None,
            "ramp_steps": self.ramp_steps,
            "model": _model_spec(self.model),
            "n_walkers_per_structure": self.n_walkers,
            "oracle": self.oracle_spec.to_dict() if isinstance(self.oracle_spec, OracleSpec) else None,
            "oracle_rebuilt": None if isinstance(self.oracle_spec, OracleSpec) else _calculator_spec(self.oracle_spec),
            # every settings group, generated from its dataclass (runtime objects left out)
            "groups": settings_state(self._groups),
        }
        if self.targets is not None:
            state["targets"] = self.targets.save(self.run_dir)
        if self.stopping is not None:  # its settings and its count of passing checks
            state["stopping"] = self.stopping.state()
        if self._explore:  # walkers started from the target structures (TargetSet(explore=...))
            state["explore_walkers"] = {str(k): v for k, v in self._explore.items()}
        if self._walker_steps:  # walkers run as tasks (gpal.learning.walkers): each one's own step
            state["walker_steps"] = {str(k): v for k, v in self._walker_steps.items()}
        if self._stopped[0] and self.step < self.total_steps:  # ended early (a stopping rule, the call budget)
            state["stopped_early"] = self._stopped[1]
        self._write_json_atomic(self.run_dir / "state.json", state)
        self._state_stamp = _stamp(self.run_dir / "state.json")
        if model:
            self._checkpoint_due = False
            self._checkpoint_cost = time.perf_counter() - t0

    # ------------------------------------------------------------------ labelling
    def _label(self, frames: list[Atoms], reason: str, walkers: Sequence[int] | None = None,
               steps: Sequence[int] | None = None, first: int = 0) -> list[Atoms]:
        """Label ``frames`` (each saved to train.xyz as it arrives); ``steps`` the MD step
        of each frame (default: the learner's step)."""
        t0 = time.perf_counter()
        calls0 = self.oracle.n_calls
        written: list[int] = []  # the frames written to train.xyz, in order

        def arrived(k: int, a: Atoms) -> None:
            a.info["gpal_step"] = int(self.step if steps is None else steps[k])
            # kept by the model with the frame, so a run that continues the model counts
            # the label at its temperature (_hotter_than_labels)
            a.info[TEMPERATURE_KEY] = self._temperature_of_step(a.info["gpal_step"])
            a.info["gpal_reason"] = reason
            if walkers is not None:
                a.info["gpal_walker"] = int(walkers[k])
            with interrupts_deferred():  # a label paid for is written whole and counted, then Ctrl-C
                append_frame(self.train_path, a)  # on disk the moment it arrives (a write error stops the run)
                self._add_force_squares([a])
                self._reasons.append(reason)
                self.n_labelled += 1
                written.append(k)
            if self._boot_bar is not None:
                self._boot_bar.update(1)

        def log_label(ks: Sequence[int], **extra) -> None:
            self._log({"event": "label", "step": self.step, "reason": reason, "n": len(ks),
                       "walker": [int(walkers[k]) for k in ks] if walkers is not None else None,
                       **({"frame_steps": [int(steps[k]) for k in ks]} if steps is not None else {}),
                       "oracle_calls": self.oracle.n_calls, **extra})

        def attempt_failed(k: int, attempt: int, error: str) -> None:
            at = int(self.step if steps is None else steps[k])
            who = f", walker {int(walkers[k])}" if walkers is not None else ""
            log.warning("the oracle failed on the %s frame of step %d%s (attempt %d): %s",
                        reason, at, who, attempt, error)
            self._log({"event": "oracle_attempt_failed", "step": at, "reason": reason, "attempt": attempt,
                       "walker": int(walkers[k]) if walkers is not None else None, "error": error})

        broken = None
        # written ahead: a kill (SIGKILL, a node lost) during the calls leaves this as the
        # log's last oracle record, from which a resume counts the calls it cut off
        ex = self.oracle.executor
        self._log({"event": "oracle_send", "step": self.step, "reason": reason, "frames": len(frames),
                   "oracle_calls": self.oracle.n_calls, "labelled": self.n_labelled,
                   "parallel": ex is not None, "workers": executor_workers(ex) if ex is not None else None,
                   **({} if ex is not None else {"call_records": True})})

        def call_started(k: int, attempt: int) -> None:  # (in this process: each call is logged ahead)
            self._log({"event": "oracle_call", "attempt": attempt})

        try:
            try:
                labelled, failures = self.oracle.label(frames, on_label=arrived, first=first,
                                                       on_failure=attempt_failed, on_start=call_started)
            except (Exception, KeyboardInterrupt) as exc:  # not a kill: the counts in memory stand
                self._log({"event": "oracle_return", "oracle_calls": self.oracle.n_calls})
                if written and not isinstance(exc, BrokenOracleError):  # (those are logged below)
                    # the labels on disk before Ctrl-C, SIGTERM or a write error: log.jsonl
                    # counts them as train.xyz holds them
                    log_label(written, interrupted=True)
                raise
            else:
                self._log({"event": "oracle_return", "oracle_calls": self.oracle.n_calls})
            finally:  # (the calls made are counted whatever happened; on Ctrl-C run() saves them)
                self._times["oracle"] += time.perf_counter() - t0
                self._calls[reason] = self._calls.get(reason, 0) + self.oracle.n_calls - calls0
        except BrokenOracleError as exc:  # no more labels from this oracle: save, then say so
            broken, labelled, failures = exc, exc.labelled, exc.failures
        except Exception:  # a label could not be written (a full disk): the calls made are saved if they can be
            with contextlib.suppress(Exception):
                self.checkpoint(model=False)
            raise
        good = [a for a in labelled if a is not None]
        self._last_failures = failures
        for f in failures:
            self._log({"event": "oracle_failure", "step": self.step, "reason": f.reason, "attempts": f.attempts,
                       **({"walker": int(walkers[f.index])} if walkers is not None else {}),
                       **({"frame_step": int(steps[f.index])} if steps is not None else {})})
        for f in failures:  # the geometries the oracle could not label, to try by hand (never read back)
            with contextlib.suppress(Exception):
                a = frames[f.index].copy()
                a.calc = None
                a.info.update({"gpal_step": int(self.step if steps is None else steps[f.index]),
                               "gpal_reason": reason, "gpal_failure": " ".join(str(f.reason).split())[:500]})
                append_frame(self.run_dir / "failed.xyz", a)
        # (before the checkpoints below and a stop: the labels on disk are in the log whatever follows)
        log_label([k for k, a in enumerate(labelled) if a is not None])
        # (after the bootstrap: its failed frames are replaced by spares, and a bootstrap that
        # labels nothing has an error of its own)
        self._failed_in_row = 0 if good or not self.bootstrap_done else self._failed_in_row + len(failures)
        in_row = failures and self._failed_in_row >= _FAILED_IN_ROW
        if walkers is not None and self._explore:
            self._retire_unlabelable_explorers(walkers, labelled, failures)
        if broken is not None or (failures and self.on_oracle_failure == "stop") or in_row:
            self.checkpoint()  # (labels that arrived and are not in the model reach it on resume)
            what = broken if broken is not None else \
                f"oracle failed on {len(failures)} frame(s) at step {self.step}: {failures[0].reason}"
            if in_row and broken is None and self.on_oracle_failure != "stop":
                what = (f"oracle failed on the last {self._failed_in_row} frames in a row, each after "
                        f"{failures[0].attempts} attempt(s) (the last at step {self.step}: {failures[0].reason}); "
                        "on_oracle_failure = \"skip\" goes on past a frame it cannot label, not past an oracle "
                        "that labels none")
            raise OracleStoppedError(f"{what}. {self._fix_and_resume()}")
        if failures:  # the calls they cost are counted on disk before anything else can fail
            self.checkpoint(model=False)
        return good

    def _count_cut_calls(self) -> None:
        """On resume: the oracle calls a kill cut off. If the log's last ``oracle_send``
        has no ``oracle_return`` after it (logged when the calls end any other way), the
        process died during those calls: they cost at least the calls before them, the
        labels that arrived since, and the calls that were running (one, or on an
        executor as many as its workers). If it has one, the state may still lag the calls
        (a label's checkpoint waits for its spacing): the return's own count, retries
        included, is the least. The count only ever rises, and is written to
        ``state.json`` at once."""
        last = send = None
        started = 0  # calls logged as started since the last send (calls made in this process)
        for rec in self._log_records(("oracle_send", "oracle_return", "oracle_call")):
            if rec["event"] == "oracle_call":
                started += 1
                continue
            last = rec
            if rec["event"] == "oracle_send":
                send, started = rec, 0
        if last is None:
            return
        if last["event"] == "oracle_return":
            # the calls ended and were logged, the state not written after them (a
            # checkpoint waiting for its spacing): the return's count, retries included
            least = int(last.get("oracle_calls", 0))
        elif last.get("call_records"):
            # calls made one at a time, each logged as it started: exactly those (a kill
            # between two calls of a batch cut none off)
            least = int(last["oracle_calls"]) + started
        else:
            arrived = max(0, self.n_labelled - int(last["labelled"]))
            waiting = max(int(last["frames"]) - arrived, 0)
            if last.get("parallel"):  # at most a worker's worth were running (the rest queued)
                running = min(waiting, int(last.get("workers") or waiting))
            else:
                running = min(waiting, 1)
            least = int(last["oracle_calls"]) + arrived + running
        if least > self.oracle.n_calls:
            reason = str((send or {}).get("reason", "uncertain"))
            self._calls[reason] = self._calls.get(reason, 0) + least - self.oracle.n_calls
            log.info("resume: %d oracle call(s) cut off by the end of the last session",
                     least - self.oracle.n_calls)
            self.oracle.n_calls = least
            # kept at once, so that a second resume sees it: without the calls of the labels
            # the state does not count yet (n_labelled), which every resume adds again
            n_unseen, unseen_by_reason = self._unseen_calls
            self._patch_state(oracle_calls=least - n_unseen, oracle_calls_by_reason={
                r: c - unseen_by_reason.get(r, 0) for r, c in self._calls.items()})

    def _fix_and_resume(self, short: bool = False) -> str:
        """What a run stopped by its oracle's failures says to do next (``short``: only how
        to resume once the oracle works)."""
        if short:
            return (f"resume once it works (gpal learn --resume {self.run_dir}, or "
                    f"ActiveLearner.resume({str(self.run_dir)!r}, oracle=...))")
        return (f"Everything so far is saved in {self.run_dir}: once the oracle works (its program, "
                f"licence or resources), resume (gpal learn --resume {self.run_dir}); with other oracle "
                f"settings, resume in Python (ActiveLearner.resume({str(self.run_dir)!r}, oracle=...)) or start "
                "a new run (gpal learn --overwrite)")

    def _add_to_model(self, frames: list[Atoms]) -> None:
        if not frames:
            return
        t0, cal0 = time.perf_counter(), self._times["calibration"]
        if getattr(self.model, "alpha_", None) is None:
            self.model.fit(frames)
        else:
            with warnings.catch_warnings():  # (a rollback may label a frame the run labelled before)
                warnings.filterwarnings("ignore", message=r"frames\[\d+\] repeats")
                self.model.update(frames, n_sparse=self._new_sparse(len(frames)), sparse_selection="variance",
                                  exact_frames=self.exact_frames)
        optimized = self.optimize_every and self.n_labelled >= self.optimize_every * max(self._last_opt, 1)
        refitted = bool(optimized)
        if optimized:
            self._optimize()  # (calibrates)
        elif (self._n_projected()
              and self.n_labelled >= 1.5 * max(self._last_opt, self._last_refit, 1)):
            # projected columns made exact on a geometric schedule of their own (counting
            # from the last choice, which refits too); it does not postpone the next choice
            self._last_refit = self.n_labelled
            self.model.refit()
            refitted = True
        self._add_update_time(t0, cal0)
        if not optimized and self.bootstrap_done:
            # the trigger compares calibrated stds: a calibration of the previous model, whose
            # frames have just been joined by these, may hold its threshold far off
            self.calibrate()
        for w in self.walkers:
            w.atoms.calc.reset()
        # the adaptive level restarts from the updated model's uncertainty: the next
        # check only sets the reference (Trigger, stage 2)
        self._recent_unc = []
        if self.validation:  # one point of the learning curve per model update
            self.validate()
        if self.n_labelled % self.checkpoint_every < len(frames):
            self._checkpoint_due = True
        # The model file holds the observation rows and grows with the labels (a checkpoint
        # after every label of a 32-atom EMT run took 0.25 -> 0.55 s over 180 labels):
        # spaced, checkpoints stay under ~10 % of the wall time. Labels are in train.xyz at
        # once either way, and a resume adds those the model file lacks. A scheduled refit
        # is saved at once (rare, and the state's refit schedule refers to it).
        if refitted or (self._checkpoint_due and (time.perf_counter() - self._last_checkpoint
                                                  >= _CHECKPOINT_SPACING * self._checkpoint_cost)):
            self.checkpoint()

    def _add_update_time(self, t0: float, cal0: float) -> None:
        """Count the time since ``t0`` as model updates, less the calibration the
        hyperparameter refit ran meanwhile (counted as calibration: the summary's times
        added up to more than the wall time)."""
        self._times["update"] += time.perf_counter() - t0 - (self._times["calibration"] - cal0)

    def _new_sparse(self, n_frames: int) -> int:
        """Sparse points a label of ``n_frames`` frames adds: ``sparse_per_label`` each,
        within ``max_sparse``."""
        held = len(self.model.sparse_X_) if getattr(self.model, "alpha_", None) is not None else 0
        return max(0, min(self.sparse_per_label * n_frames, self.max_sparse - held))

    def _n_projected(self) -> int:
        """Sparse points whose columns the older frames see only projected (exact_frames)."""
        return int(getattr(getattr(self.model, "solver_", None), "n_projected_", 0))

    def _optimize(self) -> None:
        """Hyperparameters by the evidence, then a fresh calibration (the noise moved)."""
        self._last_opt = self.n_labelled
        evidence = getattr(self.model, "hyperparameters", "fixed") == "evidence"
        if evidence and not self.optimize_noise and getattr(self.model, "noise_", None):
            # the evidence re-chooses what is unset: the noises it chose first are kept
            names = {"energy": "energy_noise", "force": "force_noise", "stress": "stress_noise"}
            self.model.set_params(**{p: float(self.model.noise_[g]) for g, p in names.items()
                                     if getattr(self.model, p) is None and g in self.model.noise_})
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", UserWarning)
                if self._descriptor_free():
                    self._refit_by_evidence()
                elif evidence:
                    self.model.select_hyperparameters()  # re-chooses what the user left unset
                else:
                    self.model.optimize_hyperparameters(optimize_noise=self.optimize_noise)
            if self._n_projected():  # nothing was left to re-choose
                self.model.refit()
            self._log({"event": "hyperparameters", "step": self.step,
                       "kernel": repr(self.model.kernel_), "noise": self.model.noise_,
                       "zeta": getattr(self.model, "zeta_", None),
                       "warnings": [str(w.message) for w in caught]})
        except (GpalError, np.linalg.LinAlgError, ValueError) as exc:
            self._log({"event": "hyperparameters_failed", "step": self.step, "reason": str(exc)})
        self._warn_unlearnable_forces()
        if self.bootstrap_done:
            self.calibrate()

    def _warn_unlearnable_forces(self) -> None:
        """Warn, once per session of a learner, when the evidence puts the force noise above
        :data:`UNEXPLAINED_FORCE_SHARE` of the labels' RMS force component (from 16 labels):
        the model leaves much of the forces unexplained and the run would end without a
        word (diamond Si in an 8-atom cell with periodic GFN1-xTB: 0.37-0.40, held-out force
        RMSE 0.51 eV/Å of an RMS force of 0.75; NaCl with it 0.01-0.02; the worst of 127
        benchmark runs on EMT metals and xTB molecules and water 0.29)."""
        noise = getattr(self.model, "noise_", None) or {}
        total, n = self._force_sq
        fitted = getattr(self.model, "force_noise", None) is None and (
            getattr(self.model, "hyperparameters", "fixed") == "evidence" or self.optimize_noise)
        if self._warned_forces or not fitted or "force" not in noise or n == 0 or self.n_labelled < 16:
            return  # (a force noise the user set, or never fitted, is no finding of the evidence)
        start = unexplained_forces(float(noise["force"]), float(np.sqrt(total / n)))
        if start is not None:
            self._warned_forces = True
            message = (f"{start} (an oracle surface beyond a local model "
                       "of this cutoff, e.g. a cell too small for the oracle's electronic structure; noisy "
                       "labels; energies and forces in other units)")
            self._log({"event": "unlearnable_forces", "step": self.step, "message": message})
            warnings.warn(message, UserWarning, stacklevel=user_stacklevel())

    def _descriptor_free(self) -> bool:
        """The model's SOAP is gpal's default (the user gave none) and the labels are enough to choose it."""
        from ..model.defaults import _MIN_FRAMES_DESCRIPTOR_SEARCH

        return (getattr(self.model, "hyperparameters", "fixed") == "evidence"
                and getattr(self.model, "descriptor", None) is None
                and self.n_labelled >= _MIN_FRAMES_DESCRIPTOR_SEARCH and self.train_path.exists())

    def _refit_by_evidence(self) -> None:
        """A whole evidence fit of every label: ζ, noises, SOAP l_max and width, sparse set.

        The first fit chose on the bootstrap frames, too few to choose a descriptor
        (:data:`gpal.model.defaults._MIN_FRAMES_DESCRIPTOR_SEARCH`); this is the scheduled
        refit that may. The sparse set is picked again from the labelled frames in the
        chosen SOAP's features with as many points of each species as the run's labelled
        frames had given it (the target structures' points left out: a TargetSet's
        environments then join it again), so it never outgrows ``max_sparse``. The
        model's ``n_sparse`` parameter stays as the user gave it.
        """
        frames = read_frames(self.train_path)  # oracle labels (a baseline is subtracted by fit)
        asked = self.model.n_sparse
        species, counts = np.unique(self.model.sparse_species_, return_counts=True)
        size = {int(z): int(n) - self._target_points.count(int(z)) for z, n in zip(species, counts)}
        self.model.set_params(n_sparse={z: n for z, n in size.items() if n > 0})
        try:
            with warnings.catch_warnings():  # (a rollback may label a frame the run labelled before)
                warnings.filterwarnings("ignore", message=r"frames\[\d+\] repeats")
                self.model.fit(frames)
        finally:
            self.model.set_params(n_sparse=asked)
        self._target_points = []
        if self.targets is not None:  # the fit picks from labelled frames: the targets' points again
            self._target_sparse()
        d = self.model.descriptor_
        self._log({"event": "descriptor", "step": self.step, "labels": len(frames), "sigma": getattr(d, "sigma", None),
                   "l_max": getattr(d, "l_max", None), "n_sparse": int(len(self.model.sparse_X_)),
                   "kernel": repr(self.model.kernel_), "noise": getattr(self.model, "noise_", None)})

    # ------------------------------------------------------------------ bootstrap
    def _candidates(self, rng) -> list[Atoms]:
        """Rattled (and, under a sampler that changes the cell, strained) copies of the
        start structures: displacements of std ``rattle`` times a factor in [0.3, top],
        ``top`` the thermal amplitude's growth over the protocol, sqrt(T_max / T_start)
        within [1, 2]: FPS picks the largest rattles, so a protocol that stays at one
        temperature gets none larger than ``rattle`` (a water box at 330 K, GFN1-xTB,
        with factors up to 2: bootstrap frames 2.5 eV, 12 thermal stds, above the liquid,
        a force noise fitted twice as large, force RMSE 1.6x the evenly spaced baseline;
        up to 1: 0.83x), and a ramp to 4x its start temperature gets rattles up to 2x."""
        T0 = self.md.temperature_at(0.0)
        T1 = max(T0, self.md.temperature_at(1.0))
        top = float(np.clip(np.sqrt(T1 / T0), 1.0, 2.0)) if T0 > 0 else 2.0
        cands = []
        per = max(1, -(-self.n_candidates // len(self.structures)))  # at least n_candidates in all
        # a copy with atoms closer than the model's min_distance is drawn again: its label
        # would be paid for and then refused by the fit, at every resume too
        closest = float(getattr(self.model, "min_distance", 0.0) or 0.0)
        for s in self.structures:
            for _ in range(per):
                for _draw in range(_REDRAWS):
                    a = s.copy()
                    # strain only if the sampler may change the cell (the default Langevin
                    # keeps it: strained labels would be off the sampled distribution)
                    if np.all(a.pbc) and self.md.factory is not None:
                        size = np.cbrt(abs(a.cell.volume) / max(len(a), 1))
                        strain = 2 * self.rattle / max(size, 1.0) * rng.uniform(-1, 1, (3, 3))
                        strain = 0.5 * (strain + strain.T)
                        a.set_cell(a.cell.array @ (np.eye(3) + strain), scale_atoms=True)
                    a.positions += rng.normal(0, self.rattle, a.positions.shape) * rng.uniform(0.3, top)
                    if not closest or not np.any(self.model._min_pair_distance(a) < closest):
                        break
                else:
                    raise ValueError(
                        f"the bootstrap's rattle = {self.rattle:g} Å put two atoms closer than the model's "
                        f"min_distance = {closest:g} Å in {_REDRAWS} copies of a start structure in a row: lower "
                        "rattle ([learner] rattle in a config; its default is 2 % of the shortest interatomic "
                        "distance)")
                cands.append(a)
        return cands

    def _adopt_model_frames(self) -> None:
        """A model fitted before the run: its training frames become the run's initial data.

        They are written to ``train.xyz`` (reason ``"initial"``, the oracle's labels: a
        Δ-model's stored residuals plus its baseline) and no bootstrap label is made, so
        the scheduled refits, the calibration and a resume see the same data as the
        model. No oracle call.
        """
        frames = self.model.training_frames()
        for a in frames:
            a.info["gpal_step"] = 0
            a.info["gpal_reason"] = "initial"
        write_frames(self.train_path, frames, overwrite=True)  # whole or absent
        self._reasons = ["initial"] * len(frames)
        self.n_labelled = len(frames)
        self._add_force_squares(frames)
        self._last_opt = max(self.n_labelled, 1)
        self._log({"event": "initial_frames", "n": len(frames), "oracle_calls": 0})

    def _bootstrap(self) -> None:
        if getattr(self.model, "alpha_", None) is not None:  # a model fitted before the run: no bootstrap labels
            if not self.train_path.exists():
                self._adopt_model_frames()
                self.bootstrap_done = True
                return
            if self._reasons and all(r == "initial" for r in self._reasons):  # adopted, then cut
                self.bootstrap_done = True
                return
        rng = as_rng(self.random_state)
        pending_path = self.run_dir / "bootstrap.xyz"
        if pending_path.exists():
            pool = read_frames(pending_path)
        else:
            cands = self._candidates(rng)
            desc = self.model.descriptor if self.model.descriptor is not None else None
            if desc is None:
                from ..model import default_descriptor

                desc = default_descriptor(self.structures)
            Xs = [desc.create(a) for a in cands]
            # in FPS order, the bootstrap frames and as many spares: a spare replaces a
            # frame the oracle could not label (an SCF that did not converge), so the
            # calibration still starts from n_bootstrap frames (with one fewer a water
            # run at 500 K never labelled again, its raw force std 100x too small)
            idx = selection.frame_farthest_point_sampling(
                Xs, min(2 * self.n_bootstrap, len(cands)), random_state=rng
            )
            pool = [cands[i] for i in idx]
            write_frames(pending_path, pool, overwrite=True)  # whole or absent: a kill cannot cut it
        have = read_frames(self.train_path) if self.train_path.exists() else []
        # by positions, not by count: a frame whose label failed is not in train.xyz
        queue = [c for c in pool if not any(_same_frame(c, a) for a in have)]
        done = len(pool) - len(queue)
        need = max(0, min(self.n_bootstrap, len(pool)) - done)
        self._log({"event": "bootstrap", "n": min(self.n_bootstrap, len(pool)), "already_labelled": done})
        labelled = []
        if not have and self.oracle.executor is None and need:
            # the run's first oracle calls one frame at a time (as in this process they run
            # anyway) until one is labelled: an oracle that cannot label this system (a
            # species it lacks, a wrong setting) is asked _FIRST_FRAMES times, not for every
            # frame; a frame it cannot label among good ones is skipped as any other
            tried = 0
            while queue and not labelled:
                labelled = self._label(queue[:1], "bootstrap", first=tried)
                queue, tried = queue[1:], tried + 1
                if not labelled and tried == _FIRST_FRAMES and queue:
                    raise OracleStoppedError(
                        f"the oracle failed on the run's first {_FIRST_FRAMES} frames (the last: "
                        f"{self._last_failures[0].reason}), so the other bootstrap frames were not "
                        "sent to it, and nothing is labelled yet. If the oracle cannot label this "
                        "system (its species, charge or settings), start a new run with another "
                        "(gpal learn --overwrite, or a new run_dir); if it failed for a passing "
                        f"cause (its program, licence or resources), {self._fix_and_resume(short=True)}")
            need -= len(labelled)
        while need > 0 and queue:  # a frame that fails is replaced by the next spare
            batch, queue = queue[:need], queue[need:]
            got = self._label(batch, "bootstrap")
            labelled += got
            need -= len(got)
            if not got and not labelled and not have:  # the oracle labels none: no spare either
                break
        frames = read_frames(self.train_path) if self.train_path.exists() else labelled
        if not frames:
            failures = self._last_failures
            first = f" (the first failure: {failures[0].reason})" if failures else ""
            raise OracleError(f"no bootstrap frame could be labelled{first}; see log.jsonl")
        t0, cal0 = time.perf_counter(), self._times["calibration"]
        if getattr(self.model, "alpha_", None) is None:
            self._note(f"fitting the first model to the {len(frames)} bootstrap labels")
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                self.model.fit(frames)  # with hyperparameters="evidence" the fit chooses them
            for w in caught:
                # a few bootstrap frames often leave a hyperparameter at a bound (the run
                # chooses again as labels arrive): logged, not warned, on fewer than 5 frames
                if len(frames) < 5 and "sit at a bound of their range" in str(w.message):
                    self._log({"event": "evidence_bound", "frames": len(frames), "message": str(w.message)})
                else:
                    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
            if self.optimize_every and getattr(self.model, "hyperparameters", "fixed") != "evidence":
                self._optimize()
            self._last_opt = max(self.n_labelled, 1)
        self._add_update_time(t0, cal0)
        self.bootstrap_done = True

    # ------------------------------------------------------------------ MD
    def _init_walkers(self, positions=None) -> None:
        rng = as_rng(self.random_state)
        calc_kw = dict(std_every=0, record_std=False)  # the trigger asks the model itself
        self.walkers = []
        k = 0
        for s in self.structures:
            for _ in range(self.n_walkers):
                a = s.copy()
                seed = int(rng.integers(2**31))
                wrng = np.random.default_rng(seed + self.step)
                T0 = self.md.temperature_at(0.0)
                if positions is not None and f"positions_{k}" in positions:
                    a = _saved_walker(s, positions, k)
                else:
                    thermalize_momenta(a, temperature_K=T0, rng=wrng)
                    Stationary(a)
                calc = GPCalculator(self.model, **calc_kw)
                self.walkers.append(_Walker(k, a, self.md, wrng, calc, T0))
                k += 1
        saved, self._explore = self._explore, {}
        for slot in range(self.targets.n_explore if self.targets is not None else 0):
            wrng = np.random.default_rng(int(rng.integers(2**31)) + self.step)
            T0 = self._temperature_of_step(self.step)
            prev = saved.get(k)
            a = None
            if positions is not None and f"positions_{k}" in positions and prev and prev["slot"] == slot:
                img = int(prev["image"])
                if 0 <= img < len(self.targets.structures):
                    try:  # (a resume with another TargetSet: its images may differ)
                        a = _saved_walker(self.targets.structures[img], positions, k)
                    except GpalError:
                        a = None
            if prev and prev.get("retired") and prev["slot"] == slot:
                self._explore[k] = dict(prev)  # (the oracle could not label its region: it stays stopped)
            elif a is not None:
                self.walkers.append(_Walker(k, a, self.md, wrng, GPCalculator(self.model, **calc_kw), T0))
                self._explore[k] = dict(prev)
            else:  # new, or its target image is not in the TargetSet given on resume
                self.walkers.append(self._explore_walker(k, slot, wrng, T0))
            k += 1

    def _retire_unlabelable_explorers(self, walkers, labelled, failures) -> None:
        """An exploring walker whose frames the oracle failed on :data:`_FAILED_IN_ROW` times
        in a row (each after its retries) stops, with a warning: its region is one the
        oracle cannot label (a target structure of another size or charge than it takes),
        and its frames, among other walkers' labels, kept the run going with most of its
        calls failing (18 of 29 in a run whose second target the oracle could not label)."""
        counts = self._explore_failed
        for k, a in enumerate(labelled):
            if a is not None:
                counts.pop(int(walkers[k]), None)
        for f in failures:
            w = int(walkers[f.index])
            if w in self._explore:
                counts[w] = counts.get(w, 0) + 1
        for w, n in list(counts.items()):
            if n < _FAILED_IN_ROW or w not in self._explore or self._explore[w].get("retired"):
                continue
            self._explore[w]["retired"] = True
            self.walkers = [x for x in self.walkers if x.index != w]
            img = self._explore[w].get("image")
            self._log({"event": "explore_retired", "step": self.step, "walker": w, "structure": img,
                       "failures_in_row": n})
            warnings.warn(f"the oracle failed on {n} frames in a row of the walker exploring from target "
                          f"structure {img} (the last: {failures[-1].reason}); that walker stops, as the oracle "
                          "cannot label its region: check that the oracle takes that target structure",
                          UserWarning, stacklevel=user_stacklevel())

    def _explore_walker(self, k: int, slot: int, rng, T: float) -> _Walker:
        """Walker ``k`` started from a target structure (TargetSet(explore=...)), thermal momenta at ``T`` K."""
        img = self.targets.explore_start(self.model, slot)
        a = self.targets.structures[img].copy()
        thermalize_momenta(a, temperature_K=T, rng=rng)
        Stationary(a)
        self._explore[k] = {"slot": slot, "image": img, "start": self.step}
        self._log({"event": "explore_start", "step": self.step, "walker": k, "structure": img})
        return _Walker(k, a, self.md, rng, GPCalculator(self.model, std_every=0, record_std=False), T)

    def _explore_young(self, w: _Walker) -> bool:
        """An exploring walker fewer than ``trigger.every`` steps from its start (its frames are not judged)."""
        e = self._explore.get(w.index)
        return e is not None and self.step - e["start"] < self.trigger.every

    def _restart_explorers(self, T: float) -> None:
        """Exploring walkers due (``restart_every`` steps, or a rollback) start again from a target structure."""
        for pos, w in enumerate(self.walkers):
            e = self._explore.get(w.index)
            if e is None:
                continue
            every = self.targets.restart_every
            if e.get("restart") or (every and self.step - e["start"] >= every):
                self.walkers[pos] = self._explore_walker(w.index, e["slot"], w.rng, T)

    def _refresh_sparse(self, w: _Walker, novelty: float, n_novel: int) -> bool:
        """Add the frame's novel environments to the sparse set (no oracle call).

        An environment unlike every sparse point of its species has a local energy the
        model cannot represent: its prediction is the prior whatever the labels say,
        and the projected force std cannot see it. As a sparse point, the labels
        already in the model decide its posterior, and the force std of
        :class:`Trigger`'s second stage then says whether a label is still needed.
        Returns True if environments were added.
        """
        if len(self.model.sparse_X_) >= self.max_sparse:
            return False
        t0 = time.perf_counter()
        n = min(self.sparse_per_label, n_novel, self.max_sparse - len(self.model.sparse_X_))
        added = self.model.add_sparse_environments(w.atoms, n, sparse_selection="variance",
                                                   exact_frames=self.exact_frames)
        self._times["update"] += time.perf_counter() - t0
        if not added:
            return False
        for other in self.walkers:
            other.atoms.calc.reset()
        self.n_refresh += 1
        self._log({"event": "sparse_refresh", "step": self.step, "walker": w.index, "added": added,
                   "novelty": novelty, "n_sparse": len(self.model.sparse_X_)})
        return True

    def _blown_up(self, w: _Walker, T: float) -> str | None:
        """Why walker ``w``'s frame is an MD blow-up (None if it is not); ``T`` the
        thermostat's temperature (K) at this step (:func:`temperature_limit`)."""
        return blown_up(w.atoms, self.max_force, temperature_limit(self.max_temperature, T))

    def run(self, steps: int) -> Summary:
        """Run (or continue) the loop until walker step ``steps`` (a total, not an increment).

        Parameters
        ----------
        steps : int
            MD steps per walker, counted from the run's start: ``run(5000)`` then
            ``run(15000)`` makes 10,000 more. A temperature ramp spans the first call's
            steps; later calls hold its top temperature. The run ends earlier when its
            stopping rule, a target's tolerance or ``max_oracle_calls`` says so.

        Returns
        -------
        Summary
            Every oracle call by reason, labels, rollbacks, calibration, stop reason and
            times (also written to ``summary.json``; ``print`` shows it as a table).
        """
        t_start = time.perf_counter()
        steps = check_number("steps", steps, low=0, integer=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        had_lock_file = (self.run_dir / "run.lock").exists()
        self._lock = _lock_run_dir(self.run_dir)  # before anything there is read or written
        try:
            self._check_run_dir()
        except BaseException:
            _unlock_run_dir(self._lock)
            self._lock = None
            if not had_lock_file:  # (a folder refused is left as it was)
                (self.run_dir / "run.lock").unlink(missing_ok=True)
            raise
        try:
            _remove_stale_temporaries(self.run_dir)
            for name in ("train.xyz", "log.jsonl"):  # (appended to) before any call is paid for
                path = self.run_dir / name
                if path.exists() and not os.access(path, os.W_OK):
                    raise GpalError(f"{path} is not writable, so a label paid for could not be saved; "
                                    "give it write permission and run again")
            if self._interrupted:
                self._reload()
            if steps < self.step:
                warnings.warn(f"run({steps}): the run has already made {self.step} steps; steps is a "
                              "total, not an increment, so no MD step is run", UserWarning, stacklevel=2)
            self.total_steps = steps
            self._stopped = (False, "")  # (a continued run reports its own stop)
            if self.ramp_steps is None and steps > self.step:  # the protocol spans the first run with MD steps
                self.ramp_steps = self.total_steps
            self._warn_unstoppable(steps)
            return self._run(t_start)
        except BaselineError as exc:
            if isinstance(exc, RunStoppedError):
                raise
            # a Δ-model's baseline failed on a frame of the run (the start structures were
            # checked before any call): saved as after an interrupt; a resume continues
            # once the baseline works on such frames
            self._save_interrupted("baseline_failed", error=str(exc))
            stopped = BaselineStoppedError(
                f"{exc} (at MD step {self.step}); the run is saved in {self.run_dir}: make the baseline work "
                f"on such frames, then continue with gpal learn --resume {self.run_dir}")
            self._write_stopped_summary(t_start, stopped)  # (as for the other stops)
            raise stopped from exc
        except (KeyboardInterrupt, SystemError) as exc:
            if interrupt_in(exc) is None:
                self._interrupted = True  # (as below)
                raise  # (an interrupt inside a numba-compiled call arrives as a SystemError
                #        with the KeyboardInterrupt in its cause/context chain)
            stop_pending()  # (taken: a later run() of this learner is not stopped by it)
            self._save_interrupted("interrupted")
            raise
        except RunStoppedError as exc:  # (an oracle, a worker, an executor that stopped the run)
            self._write_stopped_summary(t_start, exc)
            self._interrupted = True  # (as below)
            raise
        except Exception:
            # any other error out of the loop (a MemoryError in a model update) may leave
            # the model in memory without a label train.xyz holds: the next run() continues
            # from the run folder, as after an interrupt (it had gone on from memory, and
            # the run's model.npz ended a label short of its summary)
            self._interrupted = True
            raise
        finally:
            if self._session_start is not None:  # a later run() of this learner adds to it
                self._wall_before += time.perf_counter() - self._session_start
                self._session_start = None
            _unlock_run_dir(self._lock)
            self._lock = None

    def _log_validation_calls(self) -> None:
        """The ``validation_calls`` event of the calls :meth:`count_oracle_calls` recorded
        and the log does not hold yet (the log's other records count the learner's own)."""
        if self._validation_unlogged:
            self._log({"event": "validation_calls", "n": self._validation_unlogged,
                       "validation_calls": self._calls.get("validation", 0)})
            self._validation_unlogged = 0

    def _write_stopped_summary(self, t_start: float, exc: BaseException) -> None:
        """``summary.json`` and the learning curve of a session that something outside its
        input stopped (the README promises both of the last session; a first session
        stopped by its oracle had left neither), ``finished`` False with the reason; a
        resume continues the run. Best effort: the stop's own error is what is raised."""
        try:
            summary = self._summary(time.perf_counter() - t_start, record=False)
            summary.finished = False
            summary.superseded = f"stopped at step {self.step} of {self.total_steps}: {exc}"
            self._plots()
            self._write_json_atomic(self.run_dir / "summary.json", asdict(summary))
        except Exception as err:  # (no model yet, a plot that fails: the summary is not worth a second error)
            log.info("no summary of the stopped session: %s", err)

    def _save_interrupted(self, event: str, **fields) -> None:
        """A run cut short (an interrupt, a baseline that failed): not the model, which the
        cut may have left mid-update. The last model saved stands; resume adds the labels
        of train.xyz it has not seen, and so does this learner's next run() (:meth:`_reload`)."""
        self._interrupted = True
        self.checkpoint(model=False)
        self._log({"event": event, "step": self.step, **fields})

    def _reload(self) -> None:
        """After an interrupted :meth:`run`: become what :meth:`resume` of the run folder
        gives (the saved model, the labels of train.xyz it has not seen, the saved
        walkers and state), with this learner's oracle and executors. The interrupt may
        have cut a model update short (a notebook's second ``run`` then continued with a
        broken model and saved it over the good one)."""
        # this learner's own settings, as they are now (a Trigger subclass or an MD factory
        # of the notebook's, values changed since the interrupt); the rest from the folder
        live = {name: dataclasses.replace(group) for name, group in self._groups.items()}
        live.update(md=self.md, trigger=self.trigger)
        if self.targets is not None:
            live["targets"] = self.targets
        fresh = type(self)._resume(self.run_dir, self.run_dir / "state.json", self.oracle_spec,
                                   self.oracle.executor, self.walker_executor, live)
        lock, progress = self._lock, self.progress  # (progress is not part of the saved state)
        self.__dict__.update(fresh.__dict__)
        self._lock, self.progress = lock, progress
        self._state_stamp = _stamp(self.run_dir / "state.json")
        log.info("gpal: continuing after an interrupt from the run folder's saved state")

    def _check_run_dir(self) -> None:
        """Refuse a run folder this learner may not write: another learner's run, the
        user's files, or a run continued elsewhere since this learner last saved it."""
        if self._owns_run_dir:
            if self._state_stamp != _stamp(self.run_dir / "state.json"):
                raise GpalError(f"the run in {self.run_dir} was continued elsewhere since this learner last "
                                "saved or resumed it; ActiveLearner.resume it again to continue from there")
            return
        if (self.run_dir / "state.json").exists():
            # another learner's run: continuing it silently would mix its labels into this one
            raise GpalError(f"{self.run_dir} already holds a run; ActiveLearner.resume({str(self.run_dir)!r}) "
                            "continues it, or give another run_dir for a new run")
        if self.run_dir.is_dir():
            # a new run writes train.xyz, model.npz, log.jsonl...: never beside the user's files
            theirs = foreign_files(self.run_dir)
            if theirs:
                raise GpalError(f"{self.run_dir} holds files gpal did not write ({', '.join(theirs[:5])}"
                                f"{', ...' if len(theirs) > 5 else ''}); a new run needs a new or empty run_dir")
            ours = sorted((RUN_FILES - {"config.toml", "run.lock", "validation_trajectory.xyz",
                                        "validation_trajectory.calls.json"})  # (gpal learn's, before the run)
                          & {p.name for p in self.run_dir.iterdir()})
            if ours and self._own_unfinished_start(ours):
                ours = []  # this learner's own start, killed before its state was written: start again
            if ours:
                raise GpalError(f"{self.run_dir} already holds {', '.join(ours)} but no run state (state.json): "
                                "give a new or empty run_dir (nothing there is replaced)")
        self._owns_run_dir = True

    def _own_unfinished_start(self, names: list[str]) -> bool:
        """Whether the run files ``names`` in the run folder are only what the first
        checkpoint writes before ``state.json`` (the start structures, validation frames
        and target structures), byte for byte as this learner writes them: a start killed before its
        first label, which this run continues (nothing there is rewritten)."""
        if not set(names) <= {"structures.xyz", "validation.xyz", "targets.xyz"} or "structures.xyz" not in names:
            return False
        targets = self.targets.structures if self.targets is not None else []
        for name, mine in (("structures.xyz", self.structures), ("validation.xyz", self.validation or []),
                           ("targets.xyz", targets)):
            if name in names and (self.run_dir / name).read_bytes() != frames_bytes(mine):
                return False
        return True

    def _run(self, t_start: float) -> Summary:
        """Bootstrap (once), then MD steps with labels where the trigger fires, then finish."""
        self._session_start = t_start
        self._start()
        self._log_validation_calls()  # (a run past its bootstrap already: logged here)
        if self._target_met_under_a_new_tolerance():
            return self._finish(t_start)
        if self.total_steps > self.step:  # (after the start's checkpoint: the run has moved on)
            self._supersede_summary()
        prog = _progress(self.total_steps, self.step, self.progress)
        if self.walker_executor is not None:  # the walkers' MD as tasks: gpal.learning.walkers
            from .walkers import run_rounds

            run_rounds(self, prog)
        while self.walker_executor is None and self.step < self.total_steps:
            signum = stop_pending()
            if signum is not None:  # (its KeyboardInterrupt was lost in a finalizer)
                raise KeyboardInterrupt(signum)
            if self.max_oracle_calls is not None and self._total_calls() >= self.max_oracle_calls:
                self._stopped = (True, f"max_oracle_calls={self.max_oracle_calls} reached")
                break
            T = self._temperature_of_step(self.step)
            check = self.step % self.trigger.every == 0
            uncertain, rollbacks, targeted = self._md_step(T, check)
            chosen = self._choose(uncertain)
            hotter = [] if (chosen or rollbacks or targeted or not check) else self._hotter_than_labels(T)
            self._label_round(T, ((rollbacks, "rollback"), (chosen, "uncertain"), (targeted, "target"),
                                  (hotter, "temperature")))
            chosen = chosen or hotter
            if self.targets is not None and check and not (chosen or targeted or rollbacks):
                targeted = self._target_structure()  # TargetSet(label_structures=True) only
            if self.step % self.log_every == 0 or chosen or rollbacks or targeted:
                self._log_step(T)
            if self._should_stop():
                self.step += 1
                break
            self.step += 1
            if time.perf_counter() - self._last_checkpoint > self.checkpoint_seconds:
                self.checkpoint()
            prog.update(1)
            if self.step % 10 == 0:
                prog.set_postfix_str(f"oracle calls {self.oracle.n_calls}", refresh=False)
        prog.close()
        return self._finish(t_start)

    def _target_met_under_a_new_tolerance(self) -> bool:
        """A run its target's tolerance ended, resumed under another tolerance, is judged
        at once (a looser one it already meets ran MD to the next check and paid for
        labels there); under the same tolerance it runs on to the next check, as
        ``--steps N`` asks."""
        stopped = str(self.stopped_early_ or "")
        if not (stopped.startswith("target std") and self.targets is not None and self.bootstrap_done
                and self.targets.tolerance is not None
                and self.targets.tolerance != self._saved_tolerance):
            return False
        return self._check_target_stop()

    def _supersede_summary(self) -> None:
        """Mark an earlier session's ``summary.json`` as not the run's last word: this
        session continues the run, and a kill before its own summary would leave the old
        one looking current."""
        path = self.run_dir / "summary.json"
        try:
            d = json.loads(path.read_text())
        except (OSError, ValueError):
            return
        if isinstance(d, dict) and d.get("finished", True):
            d["finished"] = False
            d["superseded"] = (f"a later session continued this run from step {self.step}; this summary is of the "
                               "session that ended there (state.json and log.jsonl have the run's progress)")
            self._write_json_atomic(path, d)

    def _note(self, what: str) -> None:
        """A line on stderr, with progress on, before work that shows no bar (a large cell's
        first fit or last hyperparameter choice: 42 s and 97 s of silence at 2,048 atoms,
        after the bars had ended)."""
        if self.progress:
            from tqdm.auto import tqdm

            tqdm.write(f"gpal: {what}...", file=sys.stderr)

    def _start(self) -> None:
        """The bootstrap labels and model (first run only), then the walkers."""
        if not self.bootstrap_done:
            self.checkpoint()
            self._log_validation_calls()  # (once the run's state is on disk, before the bootstrap's calls)
            from tqdm.auto import tqdm

            # a bar over the bootstrap labels (a DFT oracle: minutes each, before the MD bar)
            self._boot_bar = tqdm(total=self.n_bootstrap, desc="gpal bootstrap", unit="label",
                                  initial=min(self._reasons.count("bootstrap"), self.n_bootstrap),
                                  disable=not self.progress or getattr(self.model, "alpha_", None) is not None,
                                  file=sys.stderr, mininterval=0.2 if sys.stderr.isatty() else 30.0)
            try:
                self._bootstrap()
            finally:
                self._boot_bar.close()
                self._boot_bar = None
            if self.targets is not None:
                self._target_sparse()
            self.calibrate()
            if self.validation:
                self.validate()
        if not self.walkers:
            self._init_walkers()
        self.checkpoint()

    def _md_step(self, T: float, check: bool) -> tuple[list, list, list]:
        """One MD step of every walker at temperature ``T`` (K); with ``check``, the trigger.

        Returns the walkers whose frames are uncertain (with their uncertainty), those
        rolled back after a blow-up (their restored frame is to be labelled), and those
        a target wants labelled.
        """
        uncertain, rollbacks, targeted = [], [], []
        t0, upd0 = time.perf_counter(), self._times["update"]
        if self._explore:
            self._restart_explorers(T)
        for w in self.walkers:
            w.set_temperature(T)
            reason = None
            try:
                w.step()
                reason = self._blown_up(w, T)
            except OverlappingAtomsError as exc:
                reason = str(exc)
            self._count_blowups(w.index, reason, T)
            if reason is not None:
                if self._roll_back(w, T, reason):
                    rollbacks.append(w)
                continue
            if not check or (self._explore and self._explore_young(w)):
                w.keep_if_good(T)
                continue
            u = self._check_walker(w)
            if self.targets is not None and self._target_wants(w, u):
                targeted.append(w)
            elif u is not None:
                uncertain.append((w, u))
            else:
                w.keep_if_good(T)
        # (less a sparse refresh of the checks, counted as a model update)
        self._times["md"] += time.perf_counter() - t0 - (self._times["update"] - upd0)
        return uncertain, rollbacks, targeted

    def _temperature_of_step(self, step: int) -> float:
        """The MD protocol's temperature (K) at walker step ``step`` of this run's ramp."""
        return self.md.temperature_at(step / max((self.ramp_steps or 1) - 1, 1))

    def _label_temperature(self, a: Atoms, systems: set) -> float:
        """The temperature (K) at which label ``a`` (a frame of ``train.xyz``) counts for
        :meth:`_hotter_than_labels`: the one stored with it (``gpal_temperature``), or
        its step's on this run's ramp (frames of an earlier release).

        A continued model's frame (reason ``initial``) counts at its stored temperature
        only if it is a frame of a system this run samples (the atoms, species counts and
        periodicity of a start structure: ``systems``, their :func:`_system_key`): a run
        repeating a ramp the model has learned owes no temperature label, while a new
        system (a vacancy after the bulk, a slab, a cluster), which the model has not
        seen hot, is labelled along the ramp. Other continued frames, and those without
        a temperature, count at ``T0``.
        """
        step = int(a.info.get("gpal_step", 0))
        if TEMPERATURE_KEY not in a.info:
            return self._temperature_of_step(step)
        if a.info.get("gpal_reason") == "initial" and _system_key(a) not in systems:
            return self._temperature_of_step(step)
        return frame_temperature(a)

    def _hotter_than_labels(self, T: float, steps: dict | None = None) -> list:
        """``[walker]`` to label because ``T`` (K) has reached a step of
        ``Trigger.temperature_steps`` above the hottest labelled temperature; ``[]``
        otherwise. The walker is the one with the fewest labels among those under their
        label cap (with several structures, not always the first). ``steps``: each
        walker's step (default the learner's), for its cap."""
        n = self.trigger.temperature_steps
        if n is None or not self.walkers:
            return []
        T0, T1 = self.md.temperature_at(0.0), self.md.temperature_at(1.0)
        if not T1 > T0:  # constant or falling protocol
            return []
        span, tol = T1 - T0, _TEMPERATURE_STEP_TOL * (T1 - T0)
        k = min(int(np.floor((T - T0 + tol) / span * n)), n)  # the highest step reached
        # the top is reached at the ramp's last step, which a check may fall short of by what
        # the ramp climbs between two checks (a 600-step ramp checked every 20 steps had its
        # last check 2.2 % below the top: the hottest step never got its label)
        per_check = self.trigger.every / self.ramp_steps if self.ramp_steps else 0.0
        top_tol = max(tol, per_check * span)
        if k < n and T >= T1 - top_tol:
            k = n
        if k < 1:
            return []
        labels = None  # train.xyz, read only when needed (once per process, then per step due)
        if self._hottest_label is None:  # first call of this process (also after a resume)
            labels = read_frames(self.train_path) if self.train_path.exists() else []
            systems = {_system_key(s) for s in self.structures}
            self._hottest_label = max([self._label_temperature(a, systems) for a in labels] or [T0])
        if self._hottest_label >= T0 + k * span / n - (top_tol if k == n else tol):  # labelled there already
            return []
        free = [w for w in self.walkers if not self.trigger.capped(
            self._label_steps.get(w.index, []), self.step if steps is None else int(steps[w.index]))]
        if not free:
            return []
        if labels is None:
            labels = read_frames(self.train_path) if self.train_path.exists() else []
        counts = Counter(int(a.info["gpal_walker"]) for a in labels if a.info.get("gpal_walker") is not None)
        return [min(free, key=lambda w: counts[w.index])]  # each walker's labels over the run (ties: the first)

    def _count_blowups(self, index: int, reason: str | None, T: float) -> None:
        """Count walker ``index``'s MD steps in a row that blew up (``reason``, else None);
        at :data:`_MAX_BLOWUPS` save the run and raise :class:`GpalError`: every restart
        from the last good frame blows up again, so the MD settings are at fault."""
        n = self._blowups.get(index, 0) + 1 if reason is not None else 0
        self._blowups[index] = n
        if n >= _MAX_BLOWUPS:
            self.checkpoint(model=False)
            limit = (f"max_temperature {self.max_temperature:g} K" if self.max_temperature
                     else "the default limits")
            raise GpalError(
                f"walker {index} blew up on each of its last {n} MD steps, each time restarted from its "
                f"last good frame (last: {reason}): the MD cannot run with time step {self.md.timestep:g} fs "
                f"at {T:.0f} K and {limit}; change the MD settings and start a new run in another run_dir")

    def _roll_back(self, w: _Walker, T: float, reason: str) -> bool:
        """Restore walker ``w``'s last good frame with fresh momenta; True if it is to be labelled.

        The restored frame is labelled unless the walker is at its label cap (Trigger:
        max_labels per window): a burst of blow-ups is no reason to ask the oracle again
        about nearly the same frame.
        """
        self.rollbacks += 1
        capped = self.trigger.capped(self._label_steps.get(w.index, []), self.step)
        if w.index in self._explore:  # an exploring walker starts again from its target structure
            # next step; its last good frame is labelled unless that is (next to) the start
            capped = capped or self._explore_young(w)
            self._explore[w.index]["restart"] = True
        self._log({"event": "rollback", "step": self.step, "walker": w.index, "reason": reason,
                   "labelled": not capped})
        w.restart_from_good(T)  # (fresh momenta: the old ones led into the blow-up)
        return not capped

    def _labelled_already(self, atoms) -> bool:
        """``atoms`` is one of the model's last 64 labelled frames (same atoms, positions and
        cell): its label would be a copy, paid for again."""
        frames = getattr(self.model, "frames_", None) or []
        return any(_same_frame(atoms, a) and np.allclose(atoms.cell.array, a.cell.array, rtol=0.0, atol=1e-6)
                   for a in frames[-64:])

    def _label_round(self, T, groups, steps: dict | None = None) -> bool:
        """Label each ``(walkers, reason)`` group's current frames and add them to the model.

        ``T`` is the temperature (K) at which the walkers keep their frames as good, a
        number or a function of the walker; ``steps`` the MD step of each walker's frame
        (default: the learner's step). Returns whether anything was labelled.

        A labelled walker goes on from its frame with fresh Maxwell-Boltzmann momenta:
        the label changed the model under it, and the potential energy its frame loses
        in the new model would otherwise heat it. At a label every ~40 steps against the
        thermostat's 100-step time, a water box ran at 414-434 K for its first 400
        steps (330 K asked) and its labels came from that hotter liquid. A momentum
        draw leaves the canonical distribution of the positions as it is. A walker
        labelled while running hot goes back to its last good frame instead. Dynamics
        from an MD factory are left as they are (they may keep their own velocities and
        a barostat's state, as ASE's NPT does, which a draw would not reach and a
        rebuild would reset).
        """
        done = False
        for frames, why in groups:
            if why == "rollback":  # a walker that blows up again and again goes back to the same
                # good frame: labelled once (9 of 22 labels of a run at 200,000 K were copies)
                frames = [w for w in frames if not self._labelled_already(w.atoms)]
            if self.max_oracle_calls is not None:  # a batch never goes past the budget
                frames = frames[:max(0, self.max_oracle_calls - self._total_calls())]
            if not frames:
                continue
            batch, at = [], []
            for w in frames:
                a = w.atoms.copy()
                a.calc = None
                batch.append(a)
                at.append(self.step if steps is None else steps[w.index])
                self._label_steps.setdefault(w.index, []).append(at[-1])
            good = self._label(batch, why, walkers=[w.index for w in frames], steps=at)
            if self._hottest_label is not None:
                temps = [T(w) for w in frames] if callable(T) else [T]
                self._hottest_label = max([self._hottest_label] + [float(t) for t in temps])
            self._add_to_model(good)
            done = True
            for w in self.walkers:
                w.keep_if_good(T(w) if callable(T) else T)
            for w in frames:
                Tw = T(w) if callable(T) else T
                if w.running_hot(Tw):
                    self._restart_hot(w, Tw)
                elif self.md.factory is None:  # the model changed under it: fresh thermal momenta
                    w.refresh_momenta(Tw)
        return done

    def _restart_hot(self, w: _Walker, T: float) -> None:
        """Restart walker ``w``, just labelled while running hot, from its last good frame
        with fresh momenta: its label taught the model where it went wrong; the frames
        that follow on its hot trajectory lie off the sampled distribution."""
        self._log({"event": "restart_hot", "step": self.step, "walker": w.index,
                   "temperature": float(w.atoms.get_temperature()), "target_T": float(T)})
        w.restart_from_good(T)

    def _log_step(self, T: float, **extra) -> None:
        """The step record of ``log.jsonl``: walker 0's temperature and energy, the protocol's
        ``target_T`` (K) at :attr:`step`, counts; ``extra`` fields added (the walker
        executor's round and each walker's own step)."""
        w0 = self.walkers[0].atoms
        self._log({
            "step": self.step, **extra, "temperature": w0.get_temperature(), "target_T": T,
            "energy": float(w0.get_potential_energy()), "threshold": self.threshold_,
            "oracle_calls": self.oracle.n_calls, "labelled": self.n_labelled,
            "n_sparse": len(self.model.sparse_X_),
            **({"volume": float(w0.get_volume())} if w0.pbc.all() else {}),  # Å^3 (NPT: the cell moves)
            # (several walkers: each one's kinetic temperature, K, so a slab that melts shows)
            **({"walker_temperatures": [round(float(w.atoms.get_temperature()), 1) for w in self.walkers]}
               if len(self.walkers) > 1 else {}),
        })

    def _should_stop(self) -> bool:
        """The stopping rule and the target's tolerance, every ``check_every`` steps and at
        the run's last step (where a temperature ramp over the run reaches its top). The
        target's tolerance is judged at the target structures themselves, so it does not
        wait for the ramp's top or for labels from MD (:meth:`_may_stop`) as the global
        rule does: while the calibration rests on the bootstrap frames its scale is never
        below 1 (:meth:`calibrate`), so the target's std is not shrunk by it."""
        last = self.step == self.total_steps - 1
        due = self.check_every and self.step and (self.step % self.check_every == 0 or last)
        if not due:
            return False
        if self.stopping is not None and not self._judged_recently() and self._may_stop() and self._check_stop():
            return True
        return bool(self.targets is not None and self.targets.tolerance is not None and self._check_target_stop())

    def _record_certified(self) -> None:
        """The stopping rule or the targets' tolerance ended the run at these labels: its
        end makes no last hyperparameter choice (:meth:`_finish`), also after a kill and
        resume, so the saved model is the one judged (kept in ``state.json`` at once)."""
        self._certified_labels = self.n_labelled
        if (self.run_dir / "state.json").exists():
            self._patch_state(certified_labels=self._certified_labels)

    def _patch_state(self, **fields) -> None:
        """Set ``fields`` in the run's ``state.json`` now (atomically), before the next
        checkpoint writes the whole state."""
        path = self.run_dir / "state.json"
        state = json.loads(path.read_text())
        state.update(fields)
        self._write_json_atomic(path, state)

    def _finish(self, t_start: float) -> Summary:
        """A last hyperparameter choice, final calibration and validation, checkpoint,
        summary.json and plots.

        Labels added since the schedule's last choice (``optimize_every``; up to a third
        of them at its default 1.5) get one more, so that the saved model's
        hyperparameters are the evidence's for all its labels (not when the stopping
        rule or the targets' tolerance ended the run at these labels: their bound is the
        judged model's, and that model is the one saved). For gpal's default model (no
        descriptor given) the choice is a whole evidence fit of every label, the sparse
        set picked again with each species' count kept (:meth:`_refit_by_evidence`), as
        each scheduled choice is. Measured on the
        benchmark's runs (bench_loop, defaults, six systems, three seeds each): held-out
        force RMSE lower in 12 of 18, higher in 5 (worst force ratio against the evenly
        spaced baseline 1.23 -> 1.08), energy RMSE lower in 12, for 2-81 s more per run
        on one core.
        """
        chosen = bool(self.optimize_every and self.bootstrap_done and self.n_labelled > self._last_opt
                      and self.n_labelled != self._certified_labels)
        if chosen:
            self._note(f"the last hyperparameter choice, on all {self.n_labelled} labels, and the calibration")
            t0, cal0 = time.perf_counter(), self._times["calibration"]
            self._optimize()  # (calibrates)
            self._add_update_time(t0, cal0)
        projected = self._n_projected()
        if projected:  # the saved model is exact
            t0 = time.perf_counter()
            self.model.refit()
            self._times["update"] += time.perf_counter() - t0
        if projected or not chosen:
            self.calibrate()
        val = self.validate() if self.validation else {}
        for _, warning in ([] if self.validation else _calibration_caveats(self._calibration)):
            warnings.warn(warning, UserWarning, stacklevel=user_stacklevel())
        self.checkpoint()
        summary = self._summary(time.perf_counter() - t_start, validation=val)
        self._plots()  # (before summary.json, which marks the run finished: a kill between them
        # left a run that a resume called finished, without its learning curve)
        self._write_json_atomic(self.run_dir / "summary.json", asdict(summary))
        return summary

    # ------------------------------------------------------------------ trigger
    def _check_walker(self, w: _Walker) -> float | None:
        """Judge a walker's frame (:class:`Trigger`); its uncertainty if it needs a label."""
        trig = self.trigger
        forces = trig.quantity == "forces_std"
        t0, upd0 = time.perf_counter(), self._times["update"]
        res = self.model.predict(w.atoms, return_std=True, forces_std=forces)
        refreshed = 0
        if self.sparse_refresh:
            novel = int(np.count_nonzero(res["novelty"] > trig.novelty))
            if novel and self._refresh_sparse(w, float(res["novelty"].max()), novel):
                refreshed = novel
                res = self.model.predict(w.atoms, return_std=True, forces_std=forces)
        self.n_checks += 1
        j = trig.judge(res, model=self.model, recent=self._recent_unc, label_steps=self._label_steps.get(w.index, []),
                       step=self.step, force_rms=self._force_rms(), **self._trigger_scales())
        u = j["uncertainty"]
        self.threshold_ = j["threshold"]
        self._times["check"] += time.perf_counter() - t0 - (self._times["update"] - upd0)  # (less a refresh)
        self._log({"event": "check", "step": self.step, "walker": w.index, "uncertainty": u,
                   "threshold": j["threshold"], "base_threshold": j["base_threshold"], "novel": refreshed,
                   "label": j["label"], "capped": j["capped"], **({"reference": True} if j.get("reference") else {})})
        if not (j["label"] or j["capped"]):
            self._recent_unc.append(u)
            del self._recent_unc[: -4 * trig.adapt_window]
            return None
        return u if j["label"] else None

    def _choose(self, uncertain: list) -> list:
        """Which of the walkers whose frames crossed the threshold are labelled.

        One frame: it. Several: a label-free greedy batch by force information gain
        (:meth:`gpal.SparseGP.select_frames`; the variance needs no labels), keeping
        the picks whose information gain, given the earlier picks, is at least a
        quarter of the first pick's. That gain falls little for a copy of a pick when
        the stds are near the label noise (a noisy label is worth repeating; the
        oracle's is not), so a frame within :data:`_SAME_FRAME_RMS` Å RMS of a pick is
        not labelled either.
        """
        if len(uncertain) <= 1:
            return [w for w, _ in uncertain]
        frames = [w.atoms.copy() for w, _ in uncertain]
        if self.targets is not None:  # gpal.TargetSet: global gain mixed with the target's
            keep, acq = self.targets.choose(self.model, frames, scale=self._force_std_scale())
            keep = _distinct_frames(frames, keep)
            self._log({"event": "batch", "step": self.step, "candidates": [w.index for w, _ in uncertain],
                       "chosen": [uncertain[i][0].index for i in keep], "acquisition": acq,
                       "weight": self.targets.weight_})
            return [uncertain[i][0] for i in keep]
        picks, gains = self.model.select_frames(frames, len(frames), return_gains=True)
        keep = _distinct_frames(frames, [int(i) for i, g in zip(picks, gains) if g >= 0.25 * gains[0]])
        self._log({"event": "batch", "step": self.step, "candidates": [w.index for w, _ in uncertain],
                   "chosen": [uncertain[i][0].index for i in keep], "gains": gains})
        return [uncertain[i][0] for i in keep]

    # ------------------------------------------------------------------ targets (gpal.TargetSet)
    def _target_sparse(self) -> None:
        """The target structures' environments join the sparse set (no oracle call)."""
        added = self.targets.add_to_sparse(self.model, self.max_sparse)
        if added:  # (appended: their species, for the refits that pick the set again)
            self._target_points += [int(z) for z in self.model.sparse_species_[-added:]]
        self._log({"event": "target_sparse", "step": self.step, "added": added,
                   "n_sparse": len(self.model.sparse_X_)})

    def _target_wants(self, w: _Walker, u: float | None) -> bool:
        """Update the target weight on this checked frame; True to label it for the target."""
        capped = self.trigger.capped(self._label_steps.get(w.index, []), self.step)
        t0 = time.perf_counter()
        ref = (self.trigger.level(self.model, (), self._force_noise_scale(), self._force_rms())[1]
               if self.trigger.quantity == "forces_std" else None)  # w = 1 at the trigger's base level
        res = self.targets.consider(self.model, w.atoms, uncertain=u is not None or capped,
                                    scale=self._force_std_scale(), reference=ref)
        self._times["check"] += time.perf_counter() - t0
        if self.targets.weight_changed():
            self._log({"event": "target_weight", "step": self.step, "weight": res["weight"],
                       "force_std": res["force_std"], "reference": self.targets.schedule_.reference})
        if res["label"]:
            self._log({"event": "target_label", "step": self.step, "walker": w.index, **res})
        return res["label"]

    def _target_structure(self) -> list:
        """Label a target structure itself when that removes the most target variance."""
        k = self.targets.pick_structure(self.model, self._force_std_scale())
        if k is None:
            return []
        good = self._label([self.targets.structures[k].copy()], "target")
        if not good:  # (each target structure is asked once: it was marked as done silently)
            reason = self._last_failures[0].reason if self._last_failures else "no label"
            self._log({"event": "target_structure_failed", "step": self.step, "structure": k})
            warnings.warn(f"the oracle could not label target structure {k} ({reason}); it is not asked "
                          "again, and the target's std there rests on the MD frames' labels alone",
                          UserWarning, stacklevel=user_stacklevel())
        self._add_to_model(good)
        return good

    def _check_target_stop(self) -> bool:
        """Stop when the calibrated std of the target quantity is under its tolerance.

        An energy quantity (a barrier, a difference, energies) waits for the energy
        calibration (:meth:`_calibrate_energy`, three calibration frames with energies);
        its learnable std is scaled by the larger of the force and the energy factor
        (:meth:`_target_std_scale`), and its std holds the label noise of the oracle's
        energies as the model fits them (:meth:`TargetSet._noise_variance`). Without these,
        a Cu vacancy hop's barrier (EMT, 31 atoms, tolerance 0.05 eV) stopped on 5-7
        labels with errors 3.5 and 3.2 times its std in two runs of five (one 52 meV,
        above the tolerance)."""
        if self.stopping is None:  # else _check_stop has just calibrated
            self.calibrate()
        res = self.targets.predict(self.model, self._target_std_scale())
        waiting = self.targets.quantity != "forces" and "energy_std" not in self.model.calibration_
        stop = res["max_std"] <= self.targets.tolerance and not waiting
        self._log({"event": "target_stop_check", "step": self.step, "value": res["value"][:8],
                   "std": res["std"][:8], "max_std": res["max_std"], "tolerance": self.targets.tolerance,
                   "stop": bool(stop), **({"waiting_for_energy_calibration": True} if waiting else {})})
        if stop:
            self._stopped = (True, f"target std {res['max_std']:.3g} <= tolerance {self.targets.tolerance}")
            self._record_certified()
            log.info("gpal: %s", self._stopped[1])
        elif not getattr(self, "_target_floor_noted", False) and np.max(floor := np.hypot(
                res["std_residual"], res["std_noise"])) > self.targets.tolerance:
            # the DTC residual and the label noise are the parts labels cannot reduce (the
            # noise, refitted, only slowly): this stop cannot fire
            self._target_floor_noted = True
            k = int(np.argmax(floor))
            log.warning("gpal: the target's residual and label-noise std %.3g (%s; residual %.3g, noise "
                        "%.3g), which labels cannot reduce, is above its tolerance %g: the target stop "
                        "cannot fire (raise the tolerance; for the residual, add the target structures' "
                        "environments with more sparse points; for the noise, the model's fit of the "
                        "oracle's energies, a richer descriptor)", floor[k], res["labels"][k],
                        res["std_residual"][k], res["std_noise"][k], self.targets.tolerance)
        return stop

    def _take_validation(self, frames) -> None:
        """Hold ``frames`` (labelled, or None) as the run's validation frames; each needs an
        energy and forces (before any oracle call: they judge the run). ``gpal learn``
        hands its validation trajectory's frames here once the learner is built."""
        frames = list(frames) if frames is not None else None
        for k, a in enumerate(frames or []):
            lab = frame_labels(a)
            if lab.energy is None or lab.forces is None:
                raise MissingLabelsError(f"validation frame {k} has no {'energy' if lab.energy is None else 'forces'} "
                                         "label; validation frames need energy and forces (labelled by the oracle)")
        self.validation = frames

    def _total_calls(self) -> int:
        """Every oracle call of the run: the learner's, and those recorded with
        :meth:`count_oracle_calls` (a validation trajectory's); what ``max_oracle_calls``
        and the summary count."""
        return self.oracle.n_calls + int(self._calls.get("validation", 0))

    def count_oracle_calls(self, reason: str, n: int) -> None:
        """Record oracle calls made for this run outside the learner (e.g. ``"validation"``:
        an oracle MD trajectory labelled to build validation frames), so the summary
        counts every call, and ``max_oracle_calls`` too. Only ``"validation"`` is accepted."""
        if reason != "validation":
            raise ValueError(f"reason must be 'validation', got {reason!r}")
        if int(n) < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        self._calls["validation"] = self._calls.get("validation", 0) + int(n)
        # logged as the run starts (a log before the run's state would make the folder no
        # run's): the log's other records count the learner's own calls
        self._validation_unlogged += int(n)

    def _add_force_squares(self, frames) -> None:
        """Add the oracle forces of labelled ``frames`` to the running RMS (frames without forces add nothing)."""
        for a in frames:
            try:
                f = np.asarray(a.get_forces(), dtype=float)
            except RuntimeError:  # no forces (PropertyNotImplementedError), or no calculator
                continue
            self._force_sq[0] += float(np.sum(f**2))
            self._force_sq[1] += int(f.size)

    def _force_rms(self) -> float | None:
        """RMS oracle force of the labels so far (eV/Å); None before any."""
        if not self._force_sq[1]:
            return None
        return float(np.sqrt(self._force_sq[0] / self._force_sq[1]))

    def _trigger_scales(self) -> dict:
        """The stored force calibration as :meth:`Trigger.judge` takes it: ``force_std_scale``
        and ``noise_scale`` (1 before any calibration), ``novelty_scale`` (eV/Å, 0 before
        any) and ``novelty_max`` (None: no cap)."""
        c = self.model.calibration_.get("forces_std", {})
        return {"force_std_scale": float(c.get("scale", 1.0)), "noise_scale": float(c.get("noise_scale", 1.0)),
                "novelty_scale": float(c.get("novelty_scale", 0.0)), "novelty_max": c.get("novelty_max")}

    def _force_std_scale(self) -> float:
        """The force-std recalibration factor stored in the model (1 before any)."""
        return self._trigger_scales()["force_std_scale"]

    def _target_std_scale(self) -> float:
        """The factor of the target's learnable std: the force-std factor, and for an energy
        quantity the energy-std factor (:meth:`_calibrate_energy`) where it is larger."""
        scale = self._force_std_scale()
        if self.targets is not None and self.targets.quantity != "forces" and "energy_std" in self.model.calibration_:
            scale = max(scale, float(self.model.calibration_of("energy_std").scale))
        return scale

    def _force_noise_scale(self) -> float:
        """The calibration factor of the force noise (1 before any calibration)."""
        return self._trigger_scales()["noise_scale"]

    # ------------------------------------------------------------------ calibration / stop
    @_thread_policy()
    def calibrate(self) -> dict:
        """Calibrate the force std on leave-one-frame-out errors of the labels (no oracle call).

        The learner's labels, each predicted by the model without it
        (:meth:`gpal.SparseGP.loo_residuals`), are split in two disjoint halves by
        frame (alternating in time; bootstrap frames left out once there are four
        others; with fewer, the learnable std is never scaled down, since the bootstrap's
        rattled copies of the start structure lie closer to each other than MD frames;
        nor while the calibration half holds fewer than 48 force components, a small
        cell's few frames). The
        *calibration* half fits the std of a new force label,
        ``sqrt((scale σ)² + (noise_scale σ_n)² + novelty_scale² min(ν, novelty_max))``
        (:class:`gpal.calibration.TwoTermCalibrator`; σ the SoR force std, σ_n the force
        noise, ν the novelty of the atom's environment, capped at the largest ν of the
        fit), times a factor per species where the frames hold several (each species'
        mean z² shrunk towards 1), and the 90 % split-conformal
        quantile of the errors in units of that std (each frame's scores measured in a
        calibration fitted on the half's other frames:
        :func:`gpal.calibration.fit_two_term_conformal`); the *judging* half, used for
        neither, gives the held-out force RMSE and the calibrated mean z² and 90 %
        coverage that the stopping rule and the log report. The result is stored in
        the model (``calibration_["forces_std"]``, used by ``predict(calibrated=True)``),
        with a calibration of the total energy's std from the same frames' energy errors
        (:meth:`_calibrate_energy`; ``calibration_["energy_std"]``).
        The learner calls it after the bootstrap and after every model update (the
        trigger's calibrated stds follow the model), at stop checks and at the end of a
        run. At most the 40 most recent frames are used: the cost is
        O(frames x rows x n_sparse²), about one refactorisation.

        Returns
        -------
        dict
            ``scale``, ``noise_scale``, ``novelty_scale`` (eV/Å), ``novelty_max``,
            ``species_scale`` ({atomic number as str: factor}, empty for one species), ``conformal_q90``
            (in calibrated stds),
            ``n_calibration``/``n_judge`` (frames), ``n_calibration_components``,
            ``judge_force_rmse`` (eV/Å),
            ``judge_zms``, ``judge_coverage90``, ``on_bootstrap_frames`` (whether the
            calibration frames are the bootstrap's: no other labels yet),
            ``species_components`` ({atomic number as str: force components of the
            species in the calibration}), and with 3 or more calibration frames
            with energies ``energy_scale``, ``n_energy_calibration``,
            ``judge_energy_zms``; empty with fewer than 2 frames.
        """
        from .. import calibration

        t0 = time.perf_counter()
        n = len(self.model.frames_)
        # the model's frames are train.xyz's, in its order (fit on it, then updated by appending);
        # the model keeps bare copies, so why each was labelled comes from the learner's record
        reasons = self._reasons if len(self._reasons) == n else [""] * n
        idx = [i for i in range(n) if reasons[i] != "bootstrap"]
        rattled = len(idx) < 4  # mostly the bootstrap's rattled copies of the start structure
        if rattled:
            idx = list(range(n))
        idx = idx[-40:]
        if len(idx) < 2:
            return {}
        loo = self.model.loo_residuals(idx)
        err, std, fr = loo["force_error"], loo["force_std"], loo["force_frame"]
        noise = loo["force_noise"]  # per component (a force_noise_knee varies it)
        nu = loo["force_novelty"]
        sp = loo["force_species"]
        order = {f: k for k, f in enumerate(sorted(set(fr.tolist())))}
        half = np.array([order[f] % 2 for f in fr.tolist()])
        cal, judge = half == 0, half == 1
        # rattled copies lie closer to each other than MD frames do: their errors may show
        # the learnable std too small, never too large (a CF4 run with DFT labels otherwise
        # shrank it tenfold after the bootstrap and never labelled again, at 3x its threshold)
        # the quantile from scores each measured in a calibrator fitted on other frames
        n_comp = int(np.count_nonzero(cal))  # (too few components to shrink the std on: small cells)
        n_frames = len(set(fr[cal].tolist()))
        few = n_comp < _MIN_CALIBRATION_COMPONENTS or n_frames < _MIN_CALIBRATION_FRAMES  # (a run's first MD labels)
        tt, conf = calibration.fit_two_term_conformal(
            err[cal], std[cal], noise[cal], nu[cal], fr[cal], alpha=0.1,
            min_scale=1.0 if rattled or few else 0.1, species=sp[cal])
        zj = err[judge] / tt.transform(std[judge], noise[judge], nu[judge], sp[judge])
        out = {
            "scale": tt.scale_,
            "noise_scale": tt.noise_scale_,
            "novelty_scale": tt.novelty_scale_,
            "novelty_max": tt.novelty_max_,
            "species_scale": {str(z): f for z, f in (tt.species_scale_ or {}).items()},
            "conformal_q90": float(conf.quantile_),
            "n_calibration": n_frames,
            "n_judge": int(len(set(fr[judge].tolist()))),
            "judge_force_rmse": float(np.sqrt(np.mean(err[judge] ** 2))),
            "judge_zms": float(np.mean(zj**2)),
            "judge_coverage90": float(np.mean(np.abs(zj) <= 1.6448536269514722)),
            # fewer than 4 MD labels: fitted and judged on the bootstrap's rattled copies
            "on_bootstrap_frames": bool(rattled),
            "n_calibration_components": n_comp,
            # per species (several): the components its factor rests on, a rare species' few
            "species_components": ({str(z): int(c) for z, c in zip(*np.unique(sp[cal], return_counts=True))}
                                   if tt.species_scale_ else {}),
        }
        q90 = out["conformal_q90"] if out["conformal_q90"] > 0 else None  # (0: errors all zero, no bound)
        self.model.set_calibration(forces_std=dataclasses.replace(tt.calibration(), conformal_q90=q90))
        out.update(self._calibrate_energy(loo, order, rattled))
        self._times["calibration"] += time.perf_counter() - t0
        self._log({"event": "calibration", "step": self.step, **out})
        self._calibration = out
        return out

    def _calibrate_energy(self, loo: dict, order: dict, rattled: bool) -> dict:
        """Scale of the total energy's std from the leave-one-frame-out energy errors
        (part of :meth:`calibrate`; the same halves of the frames).

        ``predict``'s ``energy_std`` is ``sqrt(SoR + Σ residuals)``; under the large
        signal variance the evidence picks, the residuals can make it tens of times the
        errors (a Pt(111) slab with an adatom, EMT: 31.5 meV against an RMSE of 1.5
        meV). One factor ``s`` with ``mean((error / (s std))²) = 1`` over the calibration
        half's frames (each frame's LOO SoR std and its residuals against the sparse set)
        is stored for ``energy_std``, raised to its 90 % upper confidence bound for the
        number of frames k (``sqrt(k s² / χ²_k(0.1))``, normal errors: 2.27x on 3 frames,
        1.47x on 9, 1.17x on 40; one estimate on 3 frames of a model continued from six
        600 K frames was 0.0068, and new frames' mean z² came to 4.5 at 300 K and 19.8 at
        600 K). The sparse set keeps a labelled frame's own sparse
        points, so its residuals are smaller than a new frame's and the factor errs on
        the cautious side: measured on four slab runs (before the bound), new frames'
        calibrated energy stds 1.5-8x their errors, against 22-27x raw. A fit of the forces' three-term
        form (SoR, noise, capped novelty) on the same 4-9 frames was closer on average
        but too small on two runs of five (mean z² 3.5 and 8.1). ``energies_std`` stays
        raw: local energies have no labels to check a calibration on. Never below 1 while
        the frames are mostly the bootstrap's rattled copies; with fewer than 3
        calibration frames none is kept (an earlier one is removed). Returns
        ``energy_scale``, ``n_energy_calibration`` and ``judge_energy_zms`` (mean z² on
        the judging half).
        """
        err, std, res, fr = (loo["energy_error"], loo["energy_std"], loo["energy_residual"],
                             loo["energy_frame"])
        raw = np.sqrt(std**2 + res**2)
        half = np.array([order.get(f, k) % 2 for k, f in enumerate(fr.tolist())])
        cal, judge = (half == 0) & (raw > 0), (half == 1) & (raw > 0)
        if cal.sum() < 3:  # (a factor of other frames would go stale beside the forces' new one)
            self.model.calibration_.pop("energy_std", None)
            return {}
        k = int(cal.sum())
        # the 90 % upper confidence bound of the scale from k frames (k mean z² / χ²_k(0.1)
        # for normal errors): 2.27x the plain estimate on 3 frames, 1.47x on 9, 1.17x on 40
        from scipy.special import gammaincinv  # (χ²_k quantile; scipy.stats is slow to import)

        scale = float(np.sqrt(np.sum((err[cal] / raw[cal]) ** 2) / (2.0 * gammaincinv(k / 2.0, 0.1))))
        scale = min(max(scale, 1.0 if rattled else 1e-3), 1e3)
        self.model.set_calibration(energy_std=scale)
        out = {"energy_scale": scale, "n_energy_calibration": int(cal.sum())}
        if judge.any():
            out["judge_energy_zms"] = float(np.mean((err[judge] / (scale * raw[judge])) ** 2))
        return out

    def validate(self, record: bool = True) -> dict:
        """Errors and calibration check on the user's validation frames (no oracle call);
        ``record``: logged (``log.jsonl``) and kept for the learning curve."""
        if not self.validation:
            return {}
        t0 = time.perf_counter()
        res = self.model.residuals(self.validation, calibrated=True)
        err, std, e_err = res["force_error"], res["force_std"], res["energy_error"]
        z = err / std
        out = {
            "force_rmse": float(np.sqrt(np.mean(err**2))),
            "force_mae": float(np.mean(np.abs(err))),
            "energy_rmse_per_atom": float(np.sqrt(np.mean(np.square(e_err)))),
            "force_zms": float(np.mean(z**2)),
            "force_coverage90": float(np.mean(np.abs(z) <= 1.6448536269514722)),
        }
        self._times["validation"] += time.perf_counter() - t0
        if record:
            self._log({"event": "validation", "step": self.step, "oracle_calls": self.oracle.n_calls, **out})
        return out

    def _judged_recently(self) -> bool:
        """Whether the stopping rule judged a step fewer than ``check_every`` steps ago: the
        last step of one ``run`` and the first scheduled step of the next are nearly the
        same frame and must not count as two of the rule's consecutive checks."""
        prev = self.stopping._previous_step() if self.stopping is not None else None
        return prev is not None and self.step - prev < self.check_every

    def _ramp_rises(self) -> bool:
        """Whether the MD temperature protocol is a rising ramp ``(T_start, T_end)``."""
        t = self.md.temperature
        return isinstance(t, (tuple, list)) and t[1] > t[0]

    def _warn_unstoppable(self, steps: int) -> None:
        """Warn when a stopping rule cannot end this ``run(steps)`` early: under a rising
        temperature protocol it is judged from the top temperature on (:meth:`_may_stop`),
        which a ramp over the run reaches at its last step."""
        t = self.md.temperature
        if self.stopping is None or not self._ramp_rises() or steps <= self.step or steps > self.ramp_steps:
            return
        target = self.targets is not None and self.targets.tolerance is not None
        warnings.warn(f"the stopping rule cannot end this run early: under the temperature ramp {t[0]:g} -> "
                      f"{t[1]:g} K it is judged from the top temperature on, which the run reaches at its last "
                      f"step ({self.ramp_steps}); continue the run to let it stop (run(N) with N > "
                      f"{self.ramp_steps}, or gpal learn --resume RUN_DIR --steps N)"
                      + ("; the target's tolerance, judged at the target structures, may end it at any "
                         "temperature" if target else ""), UserWarning, stacklevel=3)

    def _may_stop(self) -> bool:
        """Whether a stop could be certified now: the held-out frames must cover what the
        run samples. Without validation frames, the calibration needs 4 labels from MD
        (until then it holds the bootstrap frames, rattled copies of the start structure);
        under a rising temperature protocol, the sampler must have reached its top
        temperature (a model certain at 350 K of a ramp to 1200 K has not been tested
        where the user asked it to go). Otherwise the check is logged as deferred."""
        why = None
        t = self.md.temperature
        if self._ramp_rises() and self.step < max(self.ramp_steps - 1, 1):
            T = self._temperature_of_step(self.step)
            why = f"the temperature protocol is at {T:.0f} K of {t[1]:g} K"
        elif not self.validation and sum(r not in ("bootstrap", "initial") for r in self._reasons) < 4:
            why = "fewer than 4 labels from MD to judge on (and no validation frames)"
        if why is not None:
            self._log({"event": "stop_check", "step": self.step, "deferred": why})
        return why is None

    def _check_stop(self) -> bool:
        """Ask the stopping rule, with a bound and an error from disjoint frames.

        The bound is the largest, over the walkers' current frames, RMS over force
        components of the calibrated std of a new force label (``use="scale"``) or of
        the 90 % conformal half-width, that std times the conformal quantile
        (``use="conformal"``), in eV/Å. The error is the
        force RMSE on the user's validation frames, or else on the judging half of the
        leave-one-frame-out errors (:meth:`calibrate`), which did not fit the bound.
        """
        cal = self.calibrate()
        val = self.validate() if self.validation else {}
        error = val.get("force_rmse", cal.get("judge_force_rmse"))
        c = self.model.calibration_.get("forces_std", {})
        factor = (c.get("conformal_q90") or np.inf) if self.stopping.use == "conformal" else 1.0
        bound = 0.0
        for w in self.walkers:
            fstd = self.model.predict(w.atoms, forces_std=True, calibrated=True)["forces_std"]
            bound = max(bound, float(np.sqrt(np.mean(fstd**2)) * factor))
        name = "validation force RMSE" if "force_rmse" in val else "held-out force RMSE (leave-one-frame-out)"
        decision = self.stopping.update(self.step, bound, error, error_name=name)
        self._log({"event": "stop_check", **decision.to_dict()})
        if decision.stop:
            self._stopped = (True, decision.reason)
            self._record_certified()
            log.info("gpal: %s", decision.reason)
        return decision.stop

    def _summary(self, wall, record: bool = True, validation: dict | None = None) -> Summary:
        """The run's :class:`Summary`; ``record=False`` writes nothing (a report of a
        finished run, :func:`gpal.cli` on a resume with nothing to run); ``validation``:
        :meth:`validate`'s result on the final model, if already measured."""
        val = {}
        if self.validation:
            v = validation or self.validate(record=record)
            val = {k: v[k] for k in ("force_rmse", "energy_rmse_per_atom", "force_zms", "force_coverage90")}
        n_boot = self._reasons.count("bootstrap") if len(self._reasons) == self.n_labelled else \
            min(self.n_bootstrap, self.n_labelled)
        return Summary(
            steps=self.step,
            oracle_calls=self._total_calls(),
            oracle_failures=self.oracle.n_failures,
            labelled_frames=self.n_labelled,
            bootstrap_frames=n_boot,
            rollbacks=self.rollbacks,
            sparse_refreshes=self.n_refresh,
            wall_time=wall,
            time_md=self._times["md"],
            time_oracle=self._times["oracle"],
            time_update=self._times["update"],
            stopped_early=self._stopped[0] and self.step < self.total_steps,  # (a rule met at the last step: not early)
            stop_reason=self._stopped[1],
            validation=val,
            oracle_calls_by_reason=dict(self._calls),
            calibration=dict(getattr(self, "_calibration", {})),
            time_check=self._times.get("check", 0.0),
            time_calibration=self._times.get("calibration", 0.0),
            stop_checks=self._stop_checks() if self.stopping is not None else {},
            target=self._target_summary(),
            oracle_calls_unlabelled=max(self.oracle.n_calls - (self.n_labelled - self._reasons.count("initial")), 0),
            time_validation=self._times["validation"],
            wall_time_total=self._wall_before + wall,
        )

    def _target_summary(self) -> dict:
        """The TargetSet's quantities, their calibrated stds and unit (empty without targets)."""
        if self.targets is None:
            return {}
        res = self.targets.predict(self.model, self._target_std_scale())
        unit = "eV/Å" if self.targets.quantity == "forces" else "eV"
        return {"labels": list(res["labels"]), "value": np.asarray(res["value"]).tolist(),
                "std": np.asarray(res["std"]).tolist(), "unit": unit}

    def _stop_checks(self) -> dict:
        """The stopping rule's checks of the whole run (log.jsonl): ``judged``,
        ``deferred``, the reason of the last deferral, ``met_at``, the step of the last
        check that found the rule met (None if none did), and ``last_reason``, the last
        judged check's decision."""
        out = {"judged": 0, "deferred": 0, "last_deferred": "", "met_at": None, "last_reason": ""}
        kept: list = []
        for rec in self._log_records(("stop_check", "resume")):
            # a resume from a checkpoint at step S (after a kill or an interrupt): the checks
            # logged at S and after belong to a timeline the run did not continue (those it
            # makes again are logged again); so does a check at or before one already kept
            while kept and kept[-1].get("step", -1) >= rec.get("step", -1):
                kept.pop()
            if rec.get("event") == "stop_check":
                kept.append(rec)
        for rec in kept:
            if rec.get("deferred"):
                out["deferred"] += 1
                out["last_deferred"] = rec["deferred"]
            else:
                out["judged"] += 1
                out["last_reason"] = rec.get("reason", "")
                if rec.get("stop"):
                    out["met_at"] = rec.get("step")
        return out

    def _log_records(self, event: str | tuple):
        """The records of ``log.jsonl`` whose ``event`` is ``event`` (or one of a tuple of
        them), in order (a line a kill cut short is not a record; no log yet: none)."""
        events = (event,) if isinstance(event, str) else tuple(event)
        tags = [f'"event": "{e}"' for e in events]
        try:
            fh = open(self.run_dir / "log.jsonl")
        except OSError:
            return
        with fh:
            for line in fh:
                if not any(tag in line for tag in tags):
                    continue
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if rec.get("event") in events:
                    yield rec

    def _curve_data(self) -> tuple[list, list, str]:
        """The learning curve of the whole run from ``log.jsonl``: ``(step, oracle calls)``
        of every label, ``(step, force RMSE)`` of every check (the last record of a step
        logged twice), and what that RMSE is. After a resume, the records a kill left
        beyond the checkpoint's step are dropped (the run went on from the checkpoint)."""
        error_event = "validation" if self.validation else "calibration"
        key = "force_rmse" if self.validation else "judge_force_rmse"
        labels, errors = [], {}
        for r in self._log_records(("label", error_event, "resume")):
            step = int(r.get("step", 0))
            if r["event"] == "resume":  # from a checkpoint at this step: what the log holds after
                labels = [x for x in labels if x[0] <= step]  # it is a timeline the run left (a kill)
                errors = {k: v for k, v in errors.items() if k <= step}
            elif r["event"] == "label":
                labels.append((step, int(r["oracle_calls"])))  # (calls: all paid, left timelines too)
            elif isinstance(r.get(key), (int, float)) and np.isfinite(r[key]) and r[key] > 0:
                errors[step] = float(r[key])
        what = ("force RMSE, validation frames" if self.validation
                else "force RMSE, held-out labels (leave-one-frame-out)")
        return labels, sorted(errors.items()), what

    def _plots(self) -> None:
        """learning_curve.png from ``log.jsonl`` (every session of the run): the loop's
        oracle calls and a force error against MD step. The error is the RMSE on the
        user's validation frames, or without them the held-out force RMSE of the
        calibration (leave-one-frame-out, on the judged half of the labels)."""
        from .. import calibration

        labels, errors, what = self._curve_data()
        if not labels and not errors:
            return
        t, n_val = self.md.temperature, self._calls.get("validation", 0)
        ramp = f", {t[0]:g} → {t[1]:g} K" if isinstance(t, (tuple, list)) and t[0] != t[1] else ""
        (st, err), (call_st, calls) = ([list(v) for v in zip(*x)] if x else ([], []) for x in (errors, labels))
        calibration.plot_learning_curve(
            st, err, calls, self.run_dir / "learning_curve.png", call_steps=call_st, error_label=what,
            error_name="force RMSE", overwrite=True,
            units="eV/Å", tolerance=getattr(self.stopping, "tolerance", None), last_step=self.step,
            title=f"active learning{ramp}" + (f" ({n_val} more oracle calls made the validation frames)"
                                              if n_val else ""))

    # ------------------------------------------------------------------ resume
    @classmethod
    def resume(cls, run_dir, oracle=None, *, executor=None, walker_executor=None,
               **overrides) -> "ActiveLearner":
        """Continue a run from its folder after a stop or a crash.

        Labels in ``train.xyz`` that the checkpointed model had not yet seen are added to
        it; the walkers continue from their last checkpointed good frames.

        Parameters
        ----------
        run_dir : str or Path
        oracle : optional
            A live calculator for the oracle. Without it, a run with an OracleSpec
            reuses it, and a run whose calculator gpal recorded (an importable class
            whose keyword arguments are plain values, e.g. EMT) rebuilds it;
            otherwise :class:`gpal.GpalError`.
        executor, walker_executor : concurrent.futures.Executor, optional
            As in the constructor (not recorded in the run folder): a run whose walkers
            ran as tasks may continue with or without them.
        **overrides
            Constructor settings that change on resuming: a flat name (``log_every=1``)
            changes that field of the stored settings; a settings group
            (``run=RunSettings(...)``) replaces the stored group whole, except that a
            :class:`Validation` without frames or stopping rule keeps the run's.
        """
        run_dir = Path(run_dir)
        state_path = run_dir / "state.json"
        if not run_dir.is_dir():
            raise GpalError(f"{run_dir}: no such run folder")
        if not state_path.exists():
            raise GpalError(f"{run_dir} has no state.json: nothing to resume")
        lock = _lock_run_dir(run_dir)  # while the state is read and train.xyz repaired
        try:
            learner = cls._resume(run_dir, state_path, oracle, executor, walker_executor, overrides)
        finally:
            _unlock_run_dir(lock)
        learner._state_stamp = _stamp(state_path)  # (run() checks that nobody ran it since)
        return learner

    @classmethod
    def _resume(cls, run_dir: Path, state_path: Path, oracle, executor, walker_executor,
                overrides: dict) -> "ActiveLearner":
        from ..model import load

        try:
            state = json.loads(state_path.read_text())
        except json.JSONDecodeError as exc:
            raise GpalError(f"{state_path} is not valid JSON ({exc}); the run folder is damaged") from exc
        if oracle is None:
            spec = state.get("oracle") or state.get("oracle_rebuilt")
            if spec is None:
                raise GpalError(f"this run's oracle was a live calculator that gpal cannot rebuild; resume "
                                f"it in Python with ActiveLearner.resume({str(run_dir)!r}, oracle=...) (a run "
                                "whose oracle is an import path, OracleSpec or TOML [oracle], resumes anywhere)")
            oracle = OracleSpec(**spec)
        if (run_dir / "model.npz").exists():
            model = load(run_dir / "model.npz")
        else:  # killed before the bootstrap model existed
            model = _model_from_spec(state["model"])
        walkers = {}
        if (run_dir / "walkers.npz").exists():
            walkers = dict(np.load(run_dir / "walkers.npz", allow_pickle=False))
        explore = {int(k): v for k, v in state.get("explore_walkers", {}).items()}
        n_total = state.get("n_walkers_total", 0) - len(explore)  # the learner's own walkers
        # the start structures; each walker is rebuilt on a copy of its own (constraints,
        # masses, magnetic moments) at its saved state by _init_walkers below
        structures = read_frames(run_dir / "structures.xyz")
        restore_constraints(structures, state.get("structure_constraints"))
        n_walkers = int(state.get("n_walkers_per_structure", state.get("settings", {}).get("n_walkers", 1)))
        if n_total and len(structures) * n_walkers != n_total and n_total % len(structures) == 0:
            n_walkers = n_total // len(structures)  # a state written by a resume of an earlier version
        settings = settings_from_state(state)  # grouped (this version) or flat (earlier ones)
        md = overrides.pop("md", None)
        if md is None:
            md = MDSettings(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in state["md"].items()})
            if state.get("md_factory"):
                md.factory = _import(state["md_factory"], "this run's MD factory")
            elif state.get("md_has_factory"):
                raise GpalError("this run's MD factory is not importable (a lambda or a local "
                                "function); pass md=MDSettings(..., factory=...) to resume")
        trigger = overrides.pop("trigger", None)
        if trigger is None:
            if not state.get("trigger_class") and state.get("trigger_has_class"):
                raise GpalError("this run's Trigger subclass is not importable (defined in __main__ or "
                                "locally); pass trigger=YourTrigger(...) to resume")
            rule = (_import(state["trigger_class"], "this run's Trigger class") if state.get("trigger_class")
                    else Trigger)
            trigger = rule(**state["trigger"])
        if state.get("targets") and "targets" not in overrides:
            from .targets import TargetSet

            overrides["targets"] = TargetSet.load(state["targets"], run_dir)
        # a settings group given whole replaces the stored one (its validation frames and
        # stopping rule, when it has none, are the run's); flat names change one field
        given = {name for name, group in GROUPS.items() if isinstance(overrides.get(name), group)}
        settings = {k: v for k, v in settings.items() if FLAT_NAMES[k][0] not in given}
        stored_frames = read_frames(run_dir / "validation.xyz") if (run_dir / "validation.xyz").exists() else None
        stopping = None
        if state.get("stopping"):
            from ..calibration import StoppingRule

            stopping = StoppingRule.from_state(state["stopping"])
        val = overrides.get("validation")
        if isinstance(val, Validation):
            overrides["validation"] = dataclasses.replace(
                val, frames=stored_frames if val.frames is None else val.frames,
                stopping=stopping if val.stopping is None and "stopping" not in overrides else val.stopping)
        else:
            if stopping is not None and "stopping" not in overrides:
                overrides["stopping"] = stopping
            if val is None and stored_frames is not None:
                overrides["validation"] = stored_frames
        if executor is not None or "oracle_settings" not in given:
            overrides["executor"] = executor
        settings.update(overrides)
        self = cls(structures, oracle, model, run_dir=run_dir, md=md, trigger=trigger,
                   n_walkers=n_walkers, walker_executor=walker_executor, **settings)
        self.ramp_steps = state.get("ramp_steps") or state["total_steps"] or None  # (0: no MD step yet)
        self.step = state["step"]
        self.total_steps = state["total_steps"]
        self.bootstrap_done = state["bootstrap_done"] and getattr(model, "alpha_", None) is not None
        self.rollbacks = state["rollbacks"]
        self.n_refresh = state.get("n_refresh", 0)
        self._last_opt = state.get("last_optimization", 0)
        self._last_refit = state.get("last_refit", self._last_opt)
        self._certified_labels = state.get("certified_labels", -1)
        self._target_points = [int(z) for z in state.get("target_sparse_species", [])]
        self.threshold_ = state["threshold"]
        self._recent_unc = list(state.get("recent_uncertainty", []))
        if "label_force_squares" in state:
            self._force_sq = [float(state["label_force_squares"][0]), int(state["label_force_squares"][1])]
        elif self.train_path.exists():  # a run state written before the force scale was kept
            self._add_force_squares(read_frames(self.train_path))
        self._label_steps = {int(k): list(v) for k, v in state.get("label_steps", {}).items()}
        self._calls.update(state.get("oracle_calls_by_reason", {}))
        self._calibration = state.get("calibration", {})
        self._times.update(state["times"])
        self._wall_before = float(state.get("wall_time_total", 0.0))
        self.oracle.n_calls = state["oracle_calls"]
        self.oracle.n_failures = state["oracle_failures"]
        cut = _drop_partial_frame(run_dir / "train.xyz")
        _drop_partial_line(run_dir / "log.jsonl")
        labelled = read_frames(run_dir / "train.xyz") if (run_dir / "train.xyz").exists() else []
        held = int(state.get("n_labelled", 0))
        if len(labelled) < held:  # (labels are written before the state that counts them)
            raise GpalError(f"{run_dir / 'train.xyz'} holds {len(labelled)} labelled frames but the run had "
                            f"{held}: it was removed or cut after the run wrote it; put the run's train.xyz "
                            "back to resume")
        self.n_labelled = len(labelled)
        if "label_force_squares" in state:  # labels since the checkpoint join the force scale
            self._add_force_squares(labelled[min(state.get("n_labelled", len(labelled)), len(labelled)):])
        self._reasons = [str(a.info.get("gpal_reason", "uncertain")) for a in labelled]
        missing = labelled[len(model.frames_):] if getattr(model, "alpha_", None) is not None else []
        self._resume_added = len(missing)
        if missing:
            model.update(missing, n_sparse=self._new_sparse(len(missing)), sparse_selection="variance",
                         exact_frames=self.exact_frames)
            log.info("resume: added %d labelled frames the checkpoint had not seen", len(missing))
        unseen = labelled[min(state.get("n_labelled", len(labelled)), len(labelled)):]
        unseen = [a for a in unseen if a.info.get("gpal_reason") != "initial"]  # no oracle call
        unseen_by_reason: dict[str, int] = {}
        for a in unseen:  # labelled after the checkpoint: their calls are not in its counts
            reason = a.info.get("gpal_reason", "uncertain")
            self._calls[reason] = self._calls.get(reason, 0) + 1
            unseen_by_reason[reason] = unseen_by_reason.get(reason, 0) + 1
        self.oracle.n_calls += len(unseen)
        self._unseen_calls = (len(unseen), unseen_by_reason)
        # every labelled frame but a fitted model's initial ones cost an oracle call
        self.oracle.n_calls = max(self.oracle.n_calls, self.n_labelled - self._reasons.count("initial"))
        self._count_cut_calls()
        self._log({"event": "resume", "step": self.step, "added_frames": len(missing), "partial_frame_bytes": cut})
        self._explore = explore
        self.stopped_early_ = state.get("stopped_early")  # why the run ended before its total, if it did
        self._saved_tolerance = (state.get("targets") or {}).get("tolerance")  # (the one it stopped under)
        self._owns_run_dir = True
        if self.bootstrap_done:
            self._init_walkers(positions=walkers if walkers else None)
        if walker_executor is not None:  # each walker continues from its own step
            saved = {int(k): int(v) for k, v in state.get("walker_steps", {}).items()}
            self._walker_steps = {w.index: saved.get(w.index, self.step) for w in self.walkers}
        return self


def _group_field(group: str, name: str) -> property:
    def get(self):
        return getattr(self._groups[group], name)

    def set(self, value):
        setattr(self._groups[group], name, value)

    return property(get, set, doc=f"The ``{name}`` field of the learner's ``{group}`` settings.")


# the learner's settings by their flat names (n_bootstrap, max_oracle_calls, ...): views of
# the settings groups, so there is one copy of each setting
for _flat, (_group, _name) in FLAT_NAMES.items():
    setattr(ActiveLearner, _flat, _group_field(_group, _name))
