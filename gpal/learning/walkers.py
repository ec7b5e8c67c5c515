"""Walkers as tasks: MD segments on a process pool or a dask cluster, one batch per round.

With ``ActiveLearner(..., walker_executor=ex)`` the walkers' MD leaves the learner's
process. The loop runs in rounds::

    learner:  model snapshot (gpal's .npz format, in memory: arrays + JSON, no pickle)
              -> one task per walker on ``ex`` (ex.submit(run_segment, task))
    worker:   MD on the snapshot from the walker's state, checking the trigger as the
              serial loop does (Trigger, every ``trigger.every`` steps, blow-up checks
              every step); the segment ends at the first frame that needs the learner
              (its uncertainty crossed the threshold, a novel environment, a blow-up
              rolled back) or after ``check_every`` steps
    learner:  all segments back -> novel frames judged on the learner's model (sparse
              refresh, as the serial loop) -> ONE label-free batch across every
              walker's candidates (SparseGP.select_frames, greedy information gain)
              -> oracle (the learner's ``executor``) -> one model update -> next round

``ex`` is any :class:`concurrent.futures.Executor`: a ``ProcessPoolExecutor`` on one
machine (started with ``mp_context=multiprocessing.get_context("spawn")``: numba's
OpenMP threads do not survive ``fork``; :func:`local_walker_executor` makes one), ``dask.distributed.Client(...).get_executor()`` on a cluster (e.g. a
dask-jobqueue ``SLURMCluster``, see ``examples/dask_slurm.py``). A task carries plain
arrays, numbers and the model's bytes; a worker needs gpal installed, nothing else.
Each task is seeded from ``(random_state, walker, first step)``, so a run does not
depend on which worker ran which segment.

Walkers wait for the labels: each round's segments start on the model updated with
the previous round's batch. Running them on the old model meanwhile could save at
most the learner's share of a round (5-10 % in ``benchmarks/bench_walkers.py``),
and walkers on the old model keep finding the frames the batch is about to teach:
14 oracle calls instead of 9 there, for the same held-out error. A walker whose
segment ends without a candidate starts its next one at once on the same model; it
is kept when the round labels nothing and dropped otherwise, so quiet rounds have no
barrier. With one walker the results do not change. With several, the segment started
early judges its frames against the trigger's adaptive history as it stood before the
other walkers' checks of that round were merged, so a threshold can differ slightly
(measured: 10 of 120 checks, by 2 %, with the same labels).

The log (``log.jsonl``) has one ``segment`` record per task: walker, worker host and
process id, the time it waited to start (submission to start, wall clocks) and ran,
and the MD steps it made.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import hashlib
import io
import logging
import os
import socket
import threading
import time
import warnings
from dataclasses import asdict
from typing import TYPE_CHECKING

import numpy as np
from ase import Atoms

from ..exceptions import GpalError, OverlappingAtomsError, RunStoppedError
from ..io import stop_pending
from ..model import SparseGP
from .sampler import blown_up
from .trigger import trigger_state

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # pragma: no cover
    from .learner import ActiveLearner
    from .trigger import Trigger

__all__ = ["model_to_bytes", "model_from_bytes", "judge_frame", "blown_up", "run_segment",
           "local_walker_executor"]

#: segment length when the learner's ``check_every`` is 0 (no stopping-rule checks)
DEFAULT_SEGMENT = 100


# ---------------------------------------------------------------------- snapshots
def model_to_bytes(model: SparseGP) -> bytes:
    """A fitted model as bytes: the ``.npz`` archive :meth:`SparseGP.save` writes.

    Arrays and a JSON document (no pickle); :func:`model_from_bytes` verifies the
    digests and rebuilds the model, whose predictions equal the original's.
    """
    buf = io.BytesIO()
    model.save(buf)
    return buf.getvalue()


def model_from_bytes(data: bytes) -> SparseGP:
    """The model of :func:`model_to_bytes` (``allow_pickle=False``).

    Raises
    ------
    gpal.ModelFileError
        The bytes are not a whole, untampered gpal model archive.
    """
    return SparseGP.load(io.BytesIO(data))


_CACHE_LOCK = threading.Lock()
_MODEL_CACHE: dict = {}  # per worker process: the latest snapshot, by digest


def _cached_model(data: bytes, key: str) -> SparseGP:
    """The snapshot ``key``, loaded once per worker process (the walkers of a round share it)."""
    with _CACHE_LOCK:
        model = _MODEL_CACHE.get(key)
        if model is None:
            model = model_from_bytes(data)
            _MODEL_CACHE.clear()
            _MODEL_CACHE[key] = model
        return model


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


# ---------------------------------------------------------------------- per-frame checks
# blown_up (gpal.learning.sampler): the same test as the learner's serial loop


def judge_frame(model: SparseGP, atoms: Atoms, trigger: "Trigger", *, recent, label_steps, step: int,
                force_std_scale: float = 1.0, noise_scale: float = 1.0, force_rms: float | None = None,
                sparse_refresh: bool = True, max_sparse: int = 2000, novelty_scale: float = 0.0,
                novelty_max: float | None = None) -> dict:
    """Judge one frame by :meth:`gpal.Trigger.judge` without a learner (what a worker runs).

    ``ActiveLearner._check_walker`` with the learner's state passed in,
    except the sparse refresh, which changes the model: a frame with novel
    environments (and room in the sparse set) is returned as ``novel`` for the
    learner to refresh and judge on its own model.

    Parameters
    ----------
    model : SparseGP
    atoms : ase.Atoms
        The walker's frame.
    trigger : Trigger
    recent : list of float
        Uncertainties of the unlabelled checks since the last model update (the
        adaptive level's history); not changed here.
    label_steps : list of int
        Steps at which this walker was labelled (the rate cap).
    step : int
    force_std_scale, noise_scale : float
        The model's force-std recalibration factor and force-noise factor.
    force_rms : float or None
        RMS oracle force of the labels, eV/Å (the ceiling).
    sparse_refresh : bool
    max_sparse : int
    novelty_scale, novelty_max : float, float or None
        The novelty term of the model's force calibration (eV/Å) and its cap on ν.

    Returns
    -------
    dict
        ``novel`` (environments above the novelty threshold; when > 0 nothing else is
        judged), ``novelty`` (largest), and otherwise ``uncertainty``, ``threshold``,
        ``base_threshold`` (eV/Å, or eV for energies_std), ``label`` (bool, the cap
        applied) and ``capped``.
    """
    forces = trigger.quantity == "forces_std"
    res = model.predict(atoms, return_std=True, forces_std=forces)
    if sparse_refresh and len(model.sparse_X_) < max_sparse:
        novel = int(np.count_nonzero(res["novelty"] > trigger.novelty))
        if novel:
            return {"novel": novel, "novelty": float(res["novelty"].max())}
    j = trigger.judge(res, model=model, recent=recent, label_steps=label_steps, step=step,
                      force_std_scale=force_std_scale, noise_scale=noise_scale, force_rms=force_rms,
                      novelty_scale=novelty_scale, novelty_max=novelty_max)
    return {"novel": 0, **j}


# ---------------------------------------------------------------------- the task
def run_segment(task: dict) -> dict:
    """Run one walker's MD segment (:func:`_run_segment`, whose docstring says what
    ``task`` holds and what comes back).

    In the main thread of a process other than the learner's (``task["learner"]``:
    its host and pid), e.g. a worker of ``gpal learn``'s ``walker_workers`` pool, the
    warnings the segment raises are not printed there but returned, each once, in
    ``warnings`` (``[category, message]`` pairs; the category is the nearest of Python's
    or gpal's in its class's bases) for the learner to show once per run
    (:func:`relay_warnings`): a worker's own prints bypassed ``gpal learn``'s one-line
    warnings and repeated once per segment. Elsewhere (the learner's own process, or a
    worker's thread, where catching them would change the warnings state the other
    threads share) they are printed as they come.
    """
    here = [socket.gethostname(), os.getpid()]
    if list(task.get("learner", here)) == here or threading.current_thread() is not threading.main_thread():
        return _run_segment(task)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # (each text once per place, as Python shows them)
        out = _run_segment(task)
    seen: dict = {}
    for w in caught:
        seen.setdefault((_known_category(w.category), str(w.message)), None)
    out["warnings"] = [list(k) for k in seen]
    return out


def _known_category(cat: type) -> str:
    """``module.Name`` of the nearest class among ``cat``'s bases (itself first) that is
    Python's or gpal's, which the learner can import (``builtins.UserWarning`` if none)."""
    for c in cat.__mro__:
        module = getattr(c, "__module__", "")
        if module == "builtins" or module == "gpal" or module.startswith("gpal."):
            if isinstance(c, type) and issubclass(c, Warning):
                return f"{module}.{c.__qualname__}"
    return "builtins.UserWarning"


def relay_warnings(seen: set, pairs) -> None:
    """Warn here of a worker's ``[category, message]`` pairs (:func:`run_segment`), each
    that ``seen`` does not hold yet (it is added). A category that is not Python's or
    gpal's is shown as a ``UserWarning``."""
    from .._imports import import_object

    for name, message in pairs:
        if (name, message) in seen:
            continue
        seen.add((name, message))
        module, _, qual = name.rpartition(".")
        cat = None
        if module in ("builtins", "gpal") or module.startswith("gpal."):  # (nothing else is imported)
            try:
                cat = import_object(f"{module}:{qual}")
            except (ValueError, ImportError, AttributeError):  # (a worker of another gpal version)
                cat = None
        if not (isinstance(cat, type) and issubclass(cat, Warning)):
            cat = UserWarning
        warnings.warn(message, cat, stacklevel=2)


def _run_segment(task: dict) -> dict:
    """Run one walker's MD segment on a model snapshot (the task a worker runs).

    Parameters
    ----------
    task : dict
        Built by the learner: ``model`` (bytes of :func:`model_to_bytes`) and
        ``model_key``; the walker's ``walker`` index, ``atoms`` (its ase.Atoms
        without calculator: species, pbc, constraints, masses, magnetic moments),
        ``positions`` (Å, (N, 3)), ``momenta`` (ASE units, (N, 3)), ``cell`` (Å, (3, 3)) and
        ``good`` (its last good frame: positions, momenta, cell); ``start``/``end``
        (steps, end exclusive), ``ramp_steps``; ``md`` (MDSettings fields, the
        factory as an import path), ``trigger`` (Trigger fields); ``seed`` (list of
        int); the trigger state ``recent``, ``label_steps``, ``force_std_scale``,
        ``trigger_scales`` (the force calibration's keyword arguments of :meth:`Trigger.judge`), ``force_rms``, ``sparse_refresh``, ``max_sparse``; the blow-up
        limits ``max_force`` (eV/Å) and ``max_temperature`` (K); ``submitted``
        (``time.time()`` at submission).

    Returns
    -------
    dict
        The walker's new state (``positions``, ``momenta``, ``cell``, ``good``,
        ``step_end``); ``candidate`` (None, or ``kind`` = "uncertain" | "novel" |
        "rollback", ``step``, ``uncertainty`` or ``novelty``, and the ``frame``:
        numbers, positions, cell, pbc); ``checks``, ``rollbacks`` (records for the
        log); ``recent`` (uncertainties of the unlabelled checks, in order);
        ``summary`` (steps, temperature mean/max in K, potential energy first/last/min
        in eV); ``host``, ``pid``, ``wait`` and ``run`` (s), ``check_time`` (s).
    """
    from ..calculator import GPCalculator
    from .sampler import MDSettings, _Walker, temperature_limit, walker_atoms
    from .state import _import
    from .trigger import Trigger

    started = time.time()
    t0 = time.perf_counter()
    model = _cached_model(task["model"], task["model_key"])
    md_fields = dict(task["md"])
    factory = md_fields.pop("factory", None)
    md = MDSettings(**md_fields, factory=_import(factory) if factory else None)
    # a Trigger subclass (its own judge) is rebuilt by its import path
    trig = (_import(task["trigger_class"]) if task.get("trigger_class") else Trigger)(**task["trigger"])
    start, end = int(task["start"]), int(task["end"])
    ramp = max(int(task["ramp_steps"]) - 1, 1)
    atoms = walker_atoms(task["atoms"], task["positions"], task["momenta"], task["cell"])
    rng = np.random.default_rng([int(s) for s in task["seed"]])
    calc = GPCalculator(model, std_every=0, record_std=False)  # the trigger asks the model itself
    w = _Walker(int(task["walker"]), atoms, md, rng, calc, md.temperature_at(start / ramp))
    w.good = tuple(np.array(x, dtype=float) for x in task["good"])
    recent = list(task["recent"])
    label_steps = list(task["label_steps"])
    checks, rollbacks, new_recent, temps, energies = [], [], [], [], []
    candidate = None
    check_time = 0.0
    step = start
    while step < end and candidate is None:
        T = md.temperature_at(step / ramp)
        w.set_temperature(T)
        try:
            w.step()
            reason = blown_up(w.atoms, task["max_force"], temperature_limit(task["max_temperature"], T))
        except OverlappingAtomsError as exc:
            reason = str(exc)
        if reason is not None:
            capped = trig.capped(label_steps, step)
            rollbacks.append({"step": step, "reason": reason, "labelled": not capped})
            w.restart_from_good(T)
            if not capped:
                candidate = {"kind": "rollback", "step": step}
            step += 1
            continue
        temps.append(float(w.atoms.get_temperature()))
        energies.append(float(w.atoms.get_potential_energy()))
        if step % trig.every:
            w.keep_if_good(T)
            step += 1
            continue
        tc = time.perf_counter()
        j = judge_frame(model, w.atoms, trig, recent=recent, label_steps=label_steps, step=step,
                        force_rms=task["force_rms"], sparse_refresh=task["sparse_refresh"],
                        max_sparse=task["max_sparse"], **task["trigger_scales"])
        check_time += time.perf_counter() - tc
        if j["novel"]:
            candidate = {"kind": "novel", "step": step, "novelty": j["novelty"]}
        else:
            checks.append({"step": step, "uncertainty": j["uncertainty"], "threshold": j["threshold"],
                           "base_threshold": j["base_threshold"], "novel": 0, "label": j["label"],
                           "capped": j["capped"], **({"reference": True} if j.get("reference") else {})})
            if j["label"]:
                candidate = {"kind": "uncertain", "step": step, "uncertainty": j["uncertainty"]}
            else:
                if not j["capped"]:  # (the serial loop's history: unlabelled, uncapped checks)
                    recent.append(j["uncertainty"])
                    new_recent.append(j["uncertainty"])
                w.keep_if_good(T)
        step += 1
    if candidate is not None:
        a = w.atoms
        candidate["frame"] = {"numbers": a.numbers.copy(), "positions": a.positions.copy(),
                              "cell": a.cell.array.copy(), "pbc": a.pbc.copy()}
    gpos, gmom, gcell = w.good
    return {
        "walker": w.index,
        "step_start": start,
        "step_end": step,
        "positions": w.atoms.positions.copy(),
        "momenta": w.atoms.get_momenta().copy(),
        "cell": w.atoms.cell.array.copy(),
        "good": (gpos, gmom, gcell),
        "candidate": candidate,
        "checks": checks,
        "rollbacks": rollbacks,
        "recent": new_recent,
        "summary": {
            "steps": step - start,
            "temperature_mean": float(np.mean(temps)) if temps else None,
            "temperature_max": float(np.max(temps)) if temps else None,
            "energy_first": energies[0] if energies else None,
            "energy_last": energies[-1] if energies else None,
            "energy_min": float(np.min(energies)) if energies else None,
        },
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "wait": max(0.0, started - float(task["submitted"])),
        "run": time.perf_counter() - t0,
        "check_time": check_time,
    }


# ---------------------------------------------------------------------- the learner's side
def check_walker_settings(learner: "ActiveLearner") -> None:
    """Refuse settings the walkers cannot run with on other processes (one-line errors)."""
    ex = learner.walker_executor
    if isinstance(ex, type):  # ProcessPoolExecutor itself: its submit is a function, not a method
        raise TypeError(f"walker_executor must be an executor instance, e.g. {ex.__name__}(2, mp_context=..."
                        f"), not the class {ex.__name__}")
    if not callable(getattr(ex, "submit", None)):
        raise TypeError(f"walker_executor must be a concurrent.futures.Executor (with submit), "
                        f"got {type(ex).__name__}")
    ctx = getattr(ex, "_mp_context", None)  # a ProcessPoolExecutor's start method
    if ctx is not None and getattr(ctx, "get_start_method", lambda: None)() == "fork":
        raise ValueError("a ProcessPoolExecutor for walkers needs mp_context=multiprocessing."
                         "get_context('spawn') (or 'forkserver'): numba's OpenMP threads do not survive fork")
    if learner.targets is not None:
        raise ValueError("targets are not supported with walker_executor (the target "
                         "weight follows every checked frame); run the walkers in the learner's process")
    from .state import _import_path
    from .trigger import Trigger

    if learner.md.factory is not None and _import_path(learner.md.factory) is None:
        raise ValueError("MDSettings.factory must be a module-level function or class to run "
                         "on walker_executor (workers import it by its path)")
    if type(learner.trigger) is not Trigger and _import_path(type(learner.trigger)) is None:
        raise ValueError(f"the Trigger subclass {type(learner.trigger).__qualname__} must be defined at module "
                         "level in an importable module (not __main__) to run on walker_executor (workers "
                         "import it by its path)")


def segment_steps(learner: "ActiveLearner") -> int:
    """MD steps of one walker per round: ``check_every``, or 100 when it is 0."""
    return int(learner.check_every) if learner.check_every else DEFAULT_SEGMENT


def _task(L: "ActiveLearner", w, start: int, end: int, data: bytes, key: str, state: dict | None = None) -> dict:
    """The task of walker ``w``'s segment [start, end); from ``state`` (a segment's result) if given."""
    from .state import _import_path

    md = {k: v for k, v in asdict(L.md).items() if k != "factory"}
    md["factory"] = None if L.md.factory is None else _import_path(L.md.factory)
    base = L.random_state if isinstance(L.random_state, (int, np.integer)) else 0
    if state is None:
        state = {"positions": w.atoms.positions, "momenta": w.atoms.get_momenta(), "cell": w.atoms.cell.array,
                 "good": w.good, "recent": []}
    return {
        "model": data, "model_key": key,
        "walker": w.index, "atoms": w.atoms.copy(),  # (without its calculator)
        "positions": np.array(state["positions"]), "momenta": np.array(state["momenta"]),
        "cell": np.array(state["cell"]), "good": tuple(np.array(x) for x in state["good"]),
        "start": int(start), "end": int(end), "ramp_steps": int(L.ramp_steps),
        "md": md, "trigger": trigger_state(L.trigger), "trigger_class": _import_path(type(L.trigger)),
        "seed": [int(base), int(w.index), int(start)],
        "recent": (list(L._recent_unc) + list(state["recent"]))[-4 * L.trigger.adapt_window:],
        "label_steps": list(L._label_steps.get(w.index, [])),
        "trigger_scales": L._trigger_scales(),
        "force_rms": L._force_rms(), "sparse_refresh": L.sparse_refresh, "max_sparse": L.max_sparse,
        "max_force": L.max_force, "max_temperature": L.max_temperature,
        "submitted": time.time(),
        "learner": [socket.gethostname(), os.getpid()],
    }


def run_rounds(L: "ActiveLearner", prog) -> None:
    """The learner's loop with the walkers on ``L.walker_executor`` (see the module doc).

    Advances ``L.step`` to the smallest walker step; each walker's own step is in
    ``L._walker_steps`` (checkpointed). Stops like the serial loop: at
    ``L.total_steps``, at ``max_oracle_calls``, or by the stopping rule (checked when
    the walkers pass a multiple of ``check_every``).

    With ``L._walker_overlap = True`` (an experiment kept for ``benchmarks/bench_walkers.py``)
    the next round's segments start on the old model as soon as a round's segments are
    back, while the learner labels and updates.
    """
    ex = L.walker_executor
    seg = segment_steps(L)
    overlap = bool(getattr(L, "_walker_overlap", False))
    speculate = not overlap and bool(getattr(L, "_walker_speculate", True))
    steps = L._walker_steps
    for w in L.walkers:
        steps.setdefault(w.index, L.step)
    L.step = min(steps.values())
    checked = L.step // L.check_every if L.check_every else 0
    snap = {"data": None, "key": None, "changed": True}

    def runnable() -> bool:
        signum = stop_pending()
        if signum is not None:  # (a stop signal whose KeyboardInterrupt a finalizer discarded)
            raise KeyboardInterrupt(signum)
        if not any(steps[w.index] < L.total_steps for w in L.walkers):
            return False  # (every step made: a run that ends with its budget is not stopped early)
        if L.max_oracle_calls is not None and L._total_calls() >= L.max_oracle_calls:
            L._stopped = (True, f"max_oracle_calls={L.max_oracle_calls} reached")
            return False
        return True

    issued: list = []  # futures of this run's segments not yet seen done (cancelled on a stop)
    client = _dask_client(ex)  # (a dask executor: the model goes to the cluster once per change)

    def stopped(what: str) -> RunStoppedError:
        """The run saved, and the error that says so (with the command that resumes it)."""
        L.checkpoint()
        return RunStoppedError(f"{what}; the run is saved in {L.run_dir}: continue with gpal learn --resume "
                               f"{L.run_dir}")

    def issue(task):
        try:
            f = ex.submit(run_segment, task)
        except Exception as exc:  # a pool whose worker died (BrokenProcessPool), a closed client
            raise stopped(f"the walker executor refused a segment ({type(exc).__name__}: {exc}; did a worker "
                          "process die?)") from exc
        issued.append(f)
        return f

    def submit():
        if snap["changed"]:
            snap["data"] = model_to_bytes(L.model)
            snap["key"] = _digest(snap["data"])
            # with dask, scattered to the cluster, which each task names: the bytes in every task
            # (a copy per walker per round, 61 MB at 46 labels) were a "large graph". On every
            # worker (each loads the model anyway): with one copy, the death of the worker
            # holding it lost the data for good and stopped the run
            try:
                snap["ref"] = snap["data"] if client is None else client.scatter(snap["data"], hash=False,
                                                                                  broadcast=True)
            except Exception as exc:  # (a scheduler that stopped)
                raise stopped(f"the dask client could not send the model ({type(exc).__name__}: {exc})") from exc
            snap["changed"] = False
        active = [w for w in L.walkers if steps[w.index] < L.total_steps]
        L._round += 1
        futures = [issue(_task(L, w, steps[w.index], min(steps[w.index] + seg, L.total_steps),
                               snap["ref"], snap["key"])) for w in active]
        return L._round, active, futures, time.perf_counter()

    def collect(futures) -> list:
        try:
            _wait_noting(L, futures)
            return [f.result() for f in futures]
        except Exception as exc:
            for f in futures:
                f.cancel()
            if isinstance(exc, cf.CancelledError):
                raise stopped("a walker segment was cancelled by its executor (a dask scheduler that stopped, "
                              "data lost with a worker, or a pool shut down)") from exc
            raise stopped(f"a walker segment failed on its worker ({type(exc).__name__}: {exc})") from exc

    spec: dict = {}  # walker index -> its next segment, submitted on the same model

    def collect_speculating(active, futures) -> list:
        """Results in walker order; a walker back without a candidate starts its next
        segment at once on the same model (kept if the round changes no model, else
        dropped): no barrier between rounds that label nothing."""
        index = {f: w for w, f in zip(active, futures)}
        results, todo = {}, set(futures)
        while todo:
            done, todo = _wait_noting(L, todo, first=True)
            for f in done:
                w = index[f]
                results[w.index] = r = collect([f])[0]
                if r["candidate"] is None and r["step_end"] < L.total_steps:
                    end = min(r["step_end"] + seg, L.total_steps)
                    spec[w.index] = issue(_task(L, w, r["step_end"], end, snap["ref"], snap["key"], state=r))
        return [results[w.index] for w in active]

    def drop_spec() -> None:
        for f in spec.values():
            f.cancel()
        spec.clear()

    def take_state(w, r) -> None:
        w.restore((r["positions"], r["momenta"], r["cell"]))
        w.good = tuple(np.array(x, dtype=float) for x in r["good"])
        steps[w.index] = int(r["step_end"])

    pending = None
    try:
        while pending is not None or runnable():
            rnd, active, futures, t0 = pending if pending is not None else submit()
            results = collect_speculating(active, futures) if speculate else collect(futures)
            issued[:] = [f for f in issued if not f.done()]
            pending = None
            md_wall = time.perf_counter() - t0
            L._times["md"] += md_wall
            # the checks' share of the round's wall time (workers time their own checks)
            ran = sum(r["run"] for r in results)
            if ran > 0:
                L._times["check"] = L._times.get("check", 0.0) + md_wall * min(
                    1.0, sum(r["check_time"] for r in results) / ran)
            t1 = time.perf_counter()
            rollbacks, uncertain, novel = [], [], []
            for w, r in zip(active, results):
                relay_warnings(L._relayed_warnings, r.get("warnings", ()))
                start = steps[w.index]
                take_state(w, r)
                blown = {rb["step"]: rb["reason"] for rb in r["rollbacks"]}
                for s in range(start, steps[w.index]):  # the segment's steps, in order
                    L._count_blowups(w.index, blown.get(s), L._temperature_of_step(s))
                for rb in r["rollbacks"]:
                    L.rollbacks += 1
                    L._log({"event": "rollback", "step": rb["step"], "walker": w.index, "reason": rb["reason"],
                            "labelled": rb["labelled"]})
                for c in r["checks"]:
                    L._log({"event": "check", "walker": w.index, **c})
                    L.threshold_ = c["threshold"]
                L.n_checks += len(r["checks"])
                L._recent_unc.extend(r["recent"])
                cand = r["candidate"]
                L._log({"event": "segment", "round": rnd, "walker": w.index, "host": r["host"],
                        "pid": r["pid"], "wait": r["wait"], "run": r["run"], "steps": r["summary"]["steps"],
                        "step_start": r["step_start"], "step_end": r["step_end"], "check_time": r["check_time"],
                        "candidate": None if cand is None else cand["kind"], **{
                            k: v for k, v in r["summary"].items() if k != "steps"}})
                if cand is not None:
                    {"rollback": rollbacks, "uncertain": uncertain, "novel": novel}[cand["kind"]].append((w, cand))
            del L._recent_unc[: -4 * L.trigger.adapt_window]
            if overlap and runnable():  # the next segments run on the old model meanwhile
                pending = submit()
            for w, cand in novel:  # sparse refresh and judgement on the learner's model
                L.step = cand["step"]
                u = L._check_walker(w)
                snap["changed"] = True
                if u is not None:
                    uncertain.append((w, {"kind": "uncertain", "step": cand["step"], "uncertainty": u}))
                else:
                    w.keep_if_good(L._temperature_of_step(cand["step"]))
            L.step = min(steps.values())
            cand_step = {w.index: c["step"] for w, c in rollbacks + uncertain}
            chosen = L._choose([(w, c["uncertainty"]) for w, c in uncertain])
            # a walker's frame is the one of its segment's last MD step, at that step's temperature
            # (as in the serial loop, and as a resume reads it back from gpal_step)
            last = {w.index: max(steps[w.index] - 1, 0) for w in L.walkers}
            hotter = []  # Trigger.temperature_steps: one walker's frame, once per round
            if not (rollbacks or chosen) and L.walkers:
                w0 = L.walkers[0]
                hotter = L._hotter_than_labels(L._temperature_of_step(last[w0.index]), steps=last)
                for w in hotter:
                    cand_step[w.index] = last[w.index]
            if L._label_round(lambda w: L._temperature_of_step(last[w.index]),
                              (([w for w, _ in rollbacks], "rollback"), (chosen, "uncertain"),
                               (hotter, "temperature")), steps=cand_step):
                snap["changed"] = True
            chosen = chosen + hotter
            # the learner's share of the round (walkers idle unless overlapping): judging
            # novel frames, choosing, labelling, updating
            L._log({"event": "round", "round": rnd, "step": L.step, "walkers": len(active),
                    "md_wall": md_wall, "learner_wall": time.perf_counter() - t1,
                    "candidates": len(rollbacks) + len(uncertain), "labelled": len(rollbacks) + len(chosen)})
            if rollbacks or chosen or rnd % max(1, L.log_every // max(seg, 1)) == 0:
                # the serial loop's record (target_T of the learner's step, the slowest
                # walker's); each walker is at its own step, which walker_steps gives
                L._log_step(L._temperature_of_step(L.step), round=rnd,
                            walker_steps=[int(steps[w.index]) for w in L.walkers])
            prog.update(L.step - prog.n)
            prog.set_postfix_str(f"oracle calls {L.oracle.n_calls}", refresh=False)
            last = L.step >= L.total_steps and L.step % L.check_every if L.check_every else False
            if L.stopping is not None and L.check_every and (L.step // L.check_every > checked or last):
                checked = L.step // L.check_every
                snap["changed"] = True  # (calibration)
                if not L._judged_recently() and L._may_stop() and L._check_stop():
                    break
            if time.perf_counter() - L._last_checkpoint > L.checkpoint_seconds:
                L.checkpoint()
            if spec:
                if snap["changed"] or not runnable():
                    drop_spec()
                else:  # nothing labelled: the segments started meanwhile are the next round
                    L._round += 1
                    nxt = [w for w in L.walkers if steps[w.index] < L.total_steps]
                    futs = [spec.pop(w.index, None) or issue(
                        _task(L, w, steps[w.index], min(steps[w.index] + seg, L.total_steps),
                              snap["ref"], snap["key"])) for w in nxt]
                    drop_spec()
                    pending = (L._round, nxt, futs, time.perf_counter())
    except BaseException:  # (a blow-up limit, a failed segment, Ctrl-C: no segment of this run
        drop_spec()        #  left queued on the executor, whose other work may go on)
        for f in issued:
            f.cancel()
        raise
    drop_spec()
    if pending is not None:  # stopped while segments ran: their MD stands, their frames wait
        for w, r in zip(pending[1], collect(pending[2])):
            relay_warnings(L._relayed_warnings, r.get("warnings", ()))
            take_state(w, r)
        L.step = min(steps.values())


def _dask_client(ex):
    """The dask client behind a walker executor (``client.get_executor()``), else None."""
    client = getattr(ex, "_client", None)
    return client if client is not None and type(client).__module__.startswith("distributed") else None


#: seconds without a finished walker segment after which the learner says it is waiting
WAIT_NOTE = 300.0


def _wait_noting(L, futures, first: bool = False):
    """``cf.wait`` for the segments (all, or the first with ``first``), with a warning and
    a ``waiting`` log record each :data:`WAIT_NOTE` s that none finishes: a dask cluster
    whose only worker died waits for a new one without a word. Returns ``cf.wait``'s."""
    futures = set(futures)
    t0 = time.monotonic()
    note = t0 + WAIT_NOTE
    while True:
        # (a future cancelled outside its executor's worker, e.g. by a pool's shutdown, is
        # done() but does not wake cf.wait: it is looked at every 2 s)
        done = {f for f in futures if f.done()}
        if done if first else len(done) == len(futures):
            return done, futures - done
        cf.wait(futures - done, timeout=max(0.0, min(2.0, note - time.monotonic())),
                return_when=cf.FIRST_COMPLETED if first else cf.ALL_COMPLETED)
        if time.monotonic() >= note and not any(f.done() for f in futures - done):
            waited = time.monotonic() - t0
            pending = len(futures) - len(done)
            log.warning("waiting %.0f s for %d walker segment(s): is a worker running them (a dask "
                        "cluster with no live worker waits for one)?", waited, pending)
            L._log({"event": "waiting", "seconds": round(waited, 1), "segments": pending})
            note = time.monotonic() + WAIT_NOTE


def _probe_scheduler(address: str, timeout: float = 10.0) -> None:
    """Raise :class:`GpalError` unless a ``tcp://`` ``address`` answers as a dask scheduler.

    dask's ``Client`` waits forever (its ``timeout`` too) on a port that accepts the
    connection but never speaks dask's protocol, such as the dashboard's HTTP port
    (8787). A scheduler writes its handshake as soon as a connection opens, so one
    read says which it is. Other schemes (``tls://``, ``ucx://``, ...) go to dask as
    given.
    """
    scheme, _, rest = address.partition("://")
    if scheme != "tcp":
        return
    host, _, port = rest.rpartition(":")
    host = host.strip("[]") or "localhost"
    try:
        port_no = int(port.split("/")[0])
    except ValueError:
        raise GpalError(f"walker_scheduler {address!r}: no port (a dask scheduler listens on "
                        "tcp://host:8786 by default)") from None
    try:
        with socket.create_connection((host, port_no), timeout=timeout) as sock:
            sock.settimeout(timeout)
            try:
                first = sock.recv(1)
            except socket.timeout:
                raise GpalError(f"walker_scheduler {address}: the port accepted a connection but "
                                f"sent no dask handshake in {timeout:.0f} s; is it another service, "
                                "such as the dashboard's HTTP port (8787)? A scheduler listens on "
                                "8786 by default") from None
    except GpalError:
        raise
    except OSError as exc:
        raise GpalError(f"walker_scheduler {address}: cannot connect ({exc.strerror or exc}); "
                        "is the dask scheduler running there?") from None
    if not first:
        raise GpalError(f"walker_scheduler {address}: the port closed the connection without a "
                        "dask handshake; is a dask scheduler listening there?")


def _close_quietly(client) -> None:
    """Close a dask client without the tracebacks distributed logs when its scheduler has
    gone (a CommClosedError from the client's reconnect, 35 lines on ``gpal learn``'s
    stderr before its one-line error): its loggers are silenced for the close only."""
    import logging

    loggers = [logging.getLogger(n) for n in ("distributed", "distributed.client", "distributed.comm",
                                               "distributed.core", "distributed.batched")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL + 1)
    try:
        with contextlib.suppress(Exception):
            client.close()
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def local_walker_executor(workers: int | None = None, scheduler: str | None = None):
    """The walker executor of ``gpal learn``'s ``walker_workers`` / ``walker_scheduler`` keys.

    Parameters
    ----------
    workers : int, optional
        Local worker processes (a ``ProcessPoolExecutor``); ignored with ``scheduler``.
    scheduler : str, optional
        Address of a running dask scheduler (``"tcp://host:8786"``), e.g. one that a
        dask-jobqueue cluster or ``dask scheduler`` started; needs ``dask.distributed``.

    Returns
    -------
    (executor, close) : (concurrent.futures.Executor or None, callable)
        ``close()`` stops the pool (:meth:`gpal.learning.oracle.WorkerPool.stop`: a
        segment still running is ended, not waited for) or closes the dask client.
    """
    if scheduler:
        try:
            from distributed import Client
        except ImportError as exc:
            raise GpalError("walker_scheduler needs dask.distributed (pip install "
                            "\"dask[distributed]\")") from exc
        _probe_scheduler(scheduler)
        client = Client(scheduler)
        return client.get_executor(), lambda: _close_quietly(client)
    if workers and int(workers) > 1:
        import multiprocessing

        from .oracle import worker_pool

        pool = worker_pool(int(workers), multiprocessing.get_context("spawn"))
        # a segment still running when the run ends (a speculative one, or its walkers'
        # when another blew up) has no run left to take its result: not waited for
        return pool, pool.stop
    return None, lambda: None
