"""The active learner's settings, grouped by what they govern.

:class:`gpal.ActiveLearner` takes one object per group (the sampler is
:class:`gpal.MDSettings`, the trigger :class:`gpal.Trigger`); each group is a dataclass
whose fields are the run's settings of that kind. The learner's checkpoint
(``state.json``) is generated from these objects (:func:`settings_state`), so a setting
added to a group is saved and restored with no list to keep by hand.

The flat names of earlier gpal versions (``n_bootstrap=``, ``oracle_timeout=``, ...)
and the TOML ``[learner]`` keys are the fields themselves, routed to their group by
:data:`FLAT_NAMES`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .._validation import check_number, check_option
from .sampler import MDSettings

__all__ = ["Bootstrap", "ModelGrowth", "OracleSettings", "RunSettings", "Validation", "FLAT_NAMES",
           "group_flat", "settings_state", "settings_from_state"]


@dataclass
class Bootstrap:
    """The first labels, before any MD.

    Parameters
    ----------
    n_frames : int, default 4
        Frames labelled before MD starts, chosen by FPS among ``n_candidates`` rattled
        copies of the start structures. Periodic cells are also strained when the
        sampler may change the cell (a user ``MDSettings.factory``, e.g. NPT); the
        default Langevin sampler keeps its cell, and strained frames would be labels
        it never visits (random CuNi alloy, EMT, 300-1200 K, three seeds: force RMSE
        against as many evenly spaced oracle-MD frames 1.04-1.14x with strained
        bootstrap frames, 0.87-1.03x without; energy 1.34-2.26x and 1.04-1.75x).
    n_candidates : int, default 64
        Rattled and strained copies of the start structures from which farthest-point
        sampling picks the bootstrap frames.
    rattle : float, optional
        Å, std of the candidates' random displacements, times a factor in [0.3, f],
        f = sqrt(T_max / T_start) of the MD protocol within [1, 2] (thermal amplitudes
        grow as sqrt(T); FPS picks the largest rattles, and at one temperature larger
        ones lie off the sampled distribution: a water box at 330 K rattled up to 2x
        gave bootstrap frames 2.5 eV, 12 thermal stds, above the liquid and a final
        force RMSE 1.4x the evenly spaced baseline, up to 1x 0.83x); strains, when
        applied, up to ``2*rattle/a``, ``a`` the volume per atom to the 1/3. Default for 3D-periodic start structures 2 % of their shortest
        interatomic distance, within [0.02, 0.05] Å (0.05 in fcc metals), 0.02 Å
        otherwise: a metal's phonons have similar stiffness, so a random Cartesian
        rattle looks thermal; a molecule's range from stiff bond stretches to soft
        torsions, and a rattle of thermal size for the torsions over-stretches the bonds
        (ethanol, GFN2-xTB, 300-800 K: force RMSE 1.8-1.9x the evenly spaced baseline
        with 0.05 Å, 1.0-1.06x with 0.02 Å). A molecular liquid is periodic with stiff
        bonds: a water box (GFN1-xTB) with 0.05 Å got a bootstrap frame with O–H
        squeezed to 0.59 Å and forces of 97 eV/Å, the first model a force noise of 2.25
        eV/Å and 12 blow-ups in 2,000 MD steps; 0.02 Å (its O–H bonds 0.97 Å) none.
    n_sparse : int, default 300
        Sparse environments of the bootstrap model (FPS) when the learner makes the
        model (``ActiveLearner(..., model=None)``; in a TOML configuration, the model's
        ``n_sparse`` unless ``[model] n_sparse`` is given); a model given to the learner
        keeps its own ``n_sparse``. The model's accuracy is limited
        by its sparse set long before it is by its labels (random fcc alloy, 16 frames:
        force RMSE 0.12 eV/Å with 100 sparse points, 0.043 with 400).
    """

    n_frames: int = 4
    n_candidates: int = 64
    rattle: float | None = None
    n_sparse: int = 300

    def __post_init__(self):
        self.n_frames = check_number("n_bootstrap", self.n_frames, low=0, integer=True)
        self.n_candidates = check_number("n_candidates", self.n_candidates, low=1, integer=True)
        self.rattle = check_number("rattle", self.rattle, low=0, none=True, unit="Å")
        self.n_sparse = check_number("n_sparse_initial", self.n_sparse, low=1, integer=True)
        if self.n_candidates < self.n_frames:
            raise ValueError(f"n_candidates ({self.n_candidates}) must be >= n_bootstrap ({self.n_frames}): "
                             "the bootstrap frames are chosen among the candidates")


@dataclass
class ModelGrowth:
    """How the model grows as labels arrive.

    Parameters
    ----------
    sparse_per_label : int, default 20
        New sparse environments taken from each labelled frame, its most uncertain;
        each species gets at least half of the share a fit would give it (in proportion
        to its atoms, at least half of an equal share).
    optimize_every : float, default 1.5
        Re-choose hyperparameters by the evidence whenever the number of labels has grown
        by this factor since the last time (a geometric schedule: the total cost stays
        about that of the last refit); 0 never.
    optimize_noise : bool, default True
        Also fit the noise levels by the evidence: the force noise then measures what the
        model cannot learn at its size, which sets the default trigger threshold and the
        calibrated error floor. False: the noises stay as given to the model, or as its
        first fit chose them (the model's default, ``hyperparameters="evidence"``, chooses
        unset noises once).
    sparse_refresh : bool, default True
        Before labelling an uncertain frame, add its novel environments to the sparse set
        and look again (no oracle call).
    max_sparse : int, default 2000
        Upper bound of the sparse set (prediction cost grows with it): labels, sparse
        refreshes and target structures add no sparse environment beyond it.
    exact_frames : int, "all" or None, default 10
        How many of the frames already labelled, the most recent, get exact kernel
        columns for new sparse environments (a label's or a refresh's; None or "all":
        all; :meth:`gpal.SparseGP.update`). Older frames inform the new environments
        from the next scheduled refit on, which makes the model exact again (and so
        does the end of a run): a label's cost stops growing with the frames held
        beyond this many. None keeps the model equal to a fit from scratch after every
        label, at a cost that grows with the frames held.
    """

    sparse_per_label: int = 20
    optimize_every: float = 1.5
    optimize_noise: bool = True
    sparse_refresh: bool = True
    max_sparse: int = 2000
    exact_frames: int | str | None = 10

    def __post_init__(self):
        self.sparse_per_label = check_number("sparse_per_label", self.sparse_per_label, low=0, integer=True)
        self.optimize_every = check_number("optimize_every", self.optimize_every, low=0)
        if 0 < self.optimize_every < 1:
            raise ValueError(f"optimize_every must be 0 (never) or a growth factor >= 1, got {self.optimize_every!r}")
        self.max_sparse = check_number("max_sparse", self.max_sparse, low=1, integer=True)
        if self.exact_frames == "all":  # what a TOML file, which has no None, writes
            self.exact_frames = None
        if self.exact_frames is not None:
            try:
                self.exact_frames = check_number("exact_frames", self.exact_frames, low=0, integer=True)
            except ValueError:
                raise ValueError(f"exact_frames must be an integer >= 0, \"all\" or None, "
                                 f"got {self.exact_frames!r}") from None
        for name in ("optimize_noise", "sparse_refresh"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")


@dataclass
class OracleSettings:
    """Where and how the oracle runs, and what a failure does.

    Parameters
    ----------
    executor : concurrent.futures.Executor, optional
        Runs oracle calls concurrently (a process pool, dask's ``Client.get_executor()``).
        Not saved: give it again on resume.
    timeout : float, optional
        Seconds per label in an ``executor``, counted from when the label could start
        (queueing behind the executor's other labels is not charged); a timed-out call is
        a failed attempt (retried, logged). In gpal's own pool
        (:func:`gpal.learning.worker_pool`, what ``gpal learn`` uses, with one worker
        when ``workers`` is 1) the call is stopped with the program it runs: no label is
        sent while it hangs, and once the other running calls have ended the pool's
        workers are replaced (:meth:`~gpal.learning.oracle.WorkerPool.restart`). Any
        other executor cannot stop a task: the call keeps its worker until it returns.
        Without an executor the oracle runs in the learner's process, where nothing can
        stop it: the timeout is then not applied (the learner warns).
    retries : int, default 1
        Further attempts at a frame whose oracle call failed (each is an oracle call).
    on_failure : {"skip", "stop"}, default "skip"
        A frame no attempt labelled: "skip" goes on without it (it is in failed.xyz),
        "stop" saves the run and stops it. With "skip" the run still stops, as "stop"
        does, when the oracle fails on 3 frames in a row with no label between them.
    max_calls : int, optional
        Stop the run when this many oracle calls have been made (bootstrap included, and
        a validation trajectory's calls that ``gpal learn`` counts); a batch of labels is
        cut to what is left (retries of a failed label can still pass it).
    """

    executor: Any = field(default=None, metadata={"state": False})
    timeout: float | None = None
    retries: int = 1
    on_failure: str = "skip"
    max_calls: int | None = None

    def __post_init__(self):
        ex = self.executor
        if ex is not None and (isinstance(ex, type) or not callable(getattr(ex, "submit", None))):
            what = f"the class {ex.__name__}" if isinstance(ex, type) else type(ex).__name__
            raise TypeError(f"executor must be a concurrent.futures.Executor instance (with submit), got {what}")
        self.timeout = check_number("oracle_timeout", self.timeout, low=0, strict=True, none=True, unit="s")
        self.retries = check_number("oracle_retries", self.retries, low=0, integer=True)
        check_option("on_oracle_failure", self.on_failure, ("skip", "stop"))
        self.max_calls = check_number("max_oracle_calls", self.max_calls, low=1, integer=True, none=True)


@dataclass
class Validation:
    """Held-out frames and the stopping rule.

    Parameters
    ----------
    frames : list of ase.Atoms, optional
        Labelled frames (no oracle call) used to report errors and to judge the stopping
        rule. Without them the learner calibrates and judges on leave-one-frame-out
        errors of its own labels. Saved as ``validation.xyz`` in the run folder.
    stopping : gpal.calibration.StoppingRule, optional
    check_every : int, default 100
        MD steps between stopping-rule checks; 0 never checks.
    """

    frames: Any = field(default=None, metadata={"state": False})
    stopping: Any = field(default=None, metadata={"state": False})
    check_every: int = 100

    def __post_init__(self):
        self.check_every = check_number("check_every", self.check_every, low=0, integer=True)
        if self.stopping is not None and not hasattr(self.stopping, "update"):
            raise TypeError(f"stopping must be a gpal.calibration.StoppingRule, got {type(self.stopping).__name__}")


@dataclass
class RunSettings:
    """Book-keeping of a run: checkpoints, log, progress bar, seed, MD safety limits.

    Parameters
    ----------
    checkpoint_every : int, default 1
        Write model and state every this many labels, but not before 9x the last
        checkpoint's own duration has passed since it (the model file holds the
        observation rows and grows with the labels: with a cheap oracle checkpoints stay
        under ~10 % of the wall time, with a slow one every label is written). Labels
        are in ``train.xyz`` the moment they arrive either way; a resume adds those the
        model file lacks.
    checkpoint_seconds : float, default 60
        Also when this much wall time has passed since the last checkpoint.
    log_every : int, default 10
        MD steps between the step records of log.jsonl (every label is logged too).
    progress : bool, default True
        A tqdm progress bar on stderr.
    random_state : int, default 0
        Seed of the bootstrap candidates and of the walkers' momenta and thermostats
        (the model's sparse selection has its own, ``[model] random_state``).
    max_force : float, default 20
        eV/Å; a larger predicted force counts as an MD blow-up (rolled back).
    max_temperature : float, optional
        K; a higher kinetic temperature counts as an MD blow-up. Default: 3x the MD
        temperature at that step + 500 K (1400 K at 300 K, 2900 K at 800 K).
    """

    checkpoint_every: int = 1
    checkpoint_seconds: float = 60.0
    log_every: int = 10
    progress: bool = field(default=True, metadata={"state": False})
    random_state: int = 0
    max_force: float = 20.0
    max_temperature: float | None = None

    def __post_init__(self):
        self.checkpoint_every = check_number("checkpoint_every", self.checkpoint_every, low=1, integer=True)
        self.checkpoint_seconds = check_number("checkpoint_seconds", self.checkpoint_seconds, low=0, unit="s")
        self.log_every = check_number("log_every", self.log_every, low=1, integer=True)
        self.random_state = check_number("random_state", self.random_state, low=0, integer=True, none=True)
        self.max_force = check_number("max_force", self.max_force, low=0, strict=True, unit="eV/Å")
        self.max_temperature = check_number("max_temperature", self.max_temperature, low=0, strict=True,
                                            none=True, unit="K")


GROUPS = {"bootstrap": Bootstrap, "growth": ModelGrowth, "oracle_settings": OracleSettings,
          "validation": Validation, "run": RunSettings}

#: flat keyword (earlier versions, TOML ``[learner]``) -> (group, field)
FLAT_NAMES: dict[str, tuple[str, str]] = {
    "n_bootstrap": ("bootstrap", "n_frames"),
    "n_candidates": ("bootstrap", "n_candidates"),
    "rattle": ("bootstrap", "rattle"),
    "n_sparse_initial": ("bootstrap", "n_sparse"),
    **{f.name: ("growth", f.name) for f in dataclasses.fields(ModelGrowth)},
    "executor": ("oracle_settings", "executor"),
    "oracle_timeout": ("oracle_settings", "timeout"),
    "oracle_retries": ("oracle_settings", "retries"),
    "on_oracle_failure": ("oracle_settings", "on_failure"),
    "max_oracle_calls": ("oracle_settings", "max_calls"),
    "stopping": ("validation", "stopping"),
    "check_every": ("validation", "check_every"),
    **{f.name: ("run", f.name) for f in dataclasses.fields(RunSettings)},
}


def group_flat(groups: dict, flat: dict) -> dict:
    """Settings objects of every group, from given objects (or None) and flat keywords.

    Parameters
    ----------
    groups : dict
        Group name -> an instance of its dataclass, or None for the defaults.
    flat : dict
        Flat keywords (:data:`FLAT_NAMES`); each sets one field of a copy of its group.

    Raises
    ------
    TypeError
        An unknown keyword (the known ones are listed).
    """
    unknown = sorted(set(flat) - set(FLAT_NAMES))
    md_fields = [k for k in unknown if k in {f.name for f in dataclasses.fields(MDSettings)}]
    if md_fields:  # (the MD of the run is its own argument, not a group of flat names)
        given = ", ".join(f"{k}={flat[k]!r}" for k in md_fields)
        raise TypeError(f"ActiveLearner got {', '.join(md_fields)}: the MD settings go in md=gpal.MDSettings({given})")
    if unknown:
        raise TypeError(f"ActiveLearner got unknown settings {unknown}; settings are grouped in "
                        f"{', '.join(GROUPS)} (flat names: {', '.join(sorted(FLAT_NAMES))})")
    out = {}
    for name, cls in GROUPS.items():
        given = groups.get(name)
        if given is not None and not isinstance(given, cls):
            raise TypeError(f"{name} must be a gpal.learning.{cls.__name__}, got {type(given).__name__}")
        updates = {fld: flat[k] for k, (g, fld) in FLAT_NAMES.items() if g == name and k in flat}
        if given is not None:
            _refuse_clashes(name, given, updates)
        out[name] = dataclasses.replace(given or cls(), **updates)
    return out


def _refuse_clashes(name: str, given, updates: dict) -> None:
    """A flat keyword that contradicts a field the user set in a group object given too
    (``n_bootstrap=8, bootstrap=Bootstrap(n_frames=4)``) is a TypeError; one that only
    sets a field the group leaves at its default, or to the same value, is not."""
    defaults = {f.name: f.default for f in dataclasses.fields(given)
                if f.default is not dataclasses.MISSING}
    flat_of = {fld: k for k, (g, fld) in FLAT_NAMES.items() if g == name}
    for fld, value in updates.items():
        have = getattr(given, fld)
        if _same(have, value) or (fld in defaults and _same(have, defaults[fld])):
            continue
        raise TypeError(f"ActiveLearner got {flat_of[fld]}={value!r} and {name}="
                        f"{type(given).__name__}({fld}={have!r}): give one of them")


def _same(a, b) -> bool:
    try:
        return bool(a is b or a == b)
    except Exception:  # (arrays, frames: compared by identity)
        return a is b


def _state_fields(obj) -> dict:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.metadata.get("state", True)}


def settings_state(groups: dict) -> dict:
    """The JSON form of the settings groups kept in ``state.json`` (runtime objects left out)."""
    return {name: _state_fields(obj) for name, obj in groups.items()}


def settings_from_state(state: dict) -> dict:
    """Flat keywords from a checkpoint: grouped (this version) or flat (earlier ones)."""
    if "groups" in state:
        flat = {}
        inverse = {v: k for k, v in FLAT_NAMES.items()}
        for name, fields in state["groups"].items():
            for fld, value in fields.items():
                key = inverse.get((name, fld))
                if key is not None:
                    flat[key] = value
        return flat
    return {k: v for k, v in state.get("settings", {}).items() if k in FLAT_NAMES}
