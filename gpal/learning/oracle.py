"""Oracles: reference calculators that label frames, run safely and in parallel.

An oracle is any ASE calculator. To run it in other processes (a process pool, a dask
cluster) gpal never ships a live calculator (many cannot be pickled, and those that can
carry state): it ships an :class:`OracleSpec`, an import path plus keyword arguments,
and each worker builds (and keeps) its own calculator. A frame travels as its numbers,
positions, cell, periodicity and, where it has them, initial magnetic moments and
charges (what a spin-polarised or charged reference calculation starts from); results
come back as plain arrays.

Failures are part of life with quantum chemistry codes. :class:`Oracle` turns an
exception, a timeout or a non-finite result into a logged :class:`LabelFailure` and
retries as configured; the caller decides whether to skip the frame or stop. An
exception whose class sets ``retryable = False`` (e.g. :class:`gpal.dft.SCFConvergenceError`,
raised after the calculator already retried with safer settings) is not retried.

DFT: :func:`pyscf_oracle` is the spec of gpal's PySCF calculator (:mod:`gpal.dft`).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import importlib
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import PropertyNotImplementedError

from .._imports import MissingNameError, import_object
from .._validation import keyword_typo
from ..exceptions import OracleError
from ..io import interrupts_deferred, labelled

log = logging.getLogger(__name__)

__all__ = ["OracleSpec", "Oracle", "LabelFailure", "as_oracle_spec"]


@dataclass(frozen=True)
class OracleSpec:
    """A picklable recipe for an ASE calculator.

    Parameters
    ----------
    factory : str
        ``"module:Name"``, e.g. ``"ase.calculators.emt:EMT"`` or ``"tblite.ase:TBLite"``.
    kwargs : dict
        Keyword arguments for the factory, e.g. ``{"method": "GFN2-xTB"}``.
    """

    factory: str
    kwargs: dict = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.kwargs, dict):
            raise TypeError(f"oracle kwargs must be a dict of the calculator's keyword arguments, got "
                            f"{type(self.kwargs).__name__} {self.kwargs!r}")
        if ":" not in self.factory:
            raise ValueError(
                f"oracle factory must look like 'module:Name' (e.g. "
                f"'ase.calculators.emt:EMT'), got {self.factory!r}"
            )

    def make(self):
        """Import the factory and build a calculator."""
        return self.resolve()(**self.kwargs)

    def resolve(self):
        """The factory itself (imported, not called), or :class:`gpal.OracleError`."""
        module, _, name = self.factory.partition(":")
        try:
            obj = import_object(self.factory)
        except ImportError as exc:
            own = isinstance(exc, ModuleNotFoundError) and exc.name == module.split(".")[0]
            hint = ("; a module of your own is found in the current folder or beside the config (gpal "
                    "learn: beside the run folder on --resume): run from the folder that holds it, or add "
                    "that folder to PYTHONPATH" if own else "")
            raise OracleError(f"cannot import oracle module {module!r}: {exc}{hint}") from exc
        except MissingNameError as exc:
            hint = ""
            try:  # ASE calculators of other packages live in their ".ase" module (tblite.ase)
                if hasattr(importlib.import_module(f"{module}.ase"), name):
                    hint = f" (did you mean '{module}.ase:{name}'?)"
            except Exception:
                pass
            raise OracleError(f"oracle factory {self.factory!r}: module {module!r} has no attribute "
                              f"{name!r}{hint}") from exc
        except (Exception, SystemExit) as exc:  # the module itself failed (a licence check, a bad install...)
            raise OracleError(f"importing oracle module {module!r} failed: "
                              f"{type(exc).__name__}: {exc}") from exc
        if not callable(obj):
            raise OracleError(f"oracle factory {self.factory!r} is not callable")
        return obj

    def check(self):
        """Build the calculator once, here and now, and return it (kept for this process
        and thread, which reuse it for their labels).

        A typo in ``kwargs``, a factory that is not a calculator or a calculator that
        cannot start raises :class:`gpal.OracleError` before any run folder is written,
        instead of failing every label of the run. A calculator with a ``directory`` (a
        file-based DFT code's) gets a folder of its own in it (:func:`_own_directory`).
        """
        key = self.key()
        calc = _cached_calculator(key)
        if calc is not None:
            return calc
        factory = self.resolve()
        typo = keyword_typo(factory, self.kwargs, f"the oracle {self.factory}",
                            "the run would label with its default instead")
        if typo:
            raise OracleError(typo)
        try:
            calc = factory(**self.kwargs)
        except (Exception, SystemExit) as exc:  # (sys.exit in a factory: not gpal's exit)
            args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
            raise OracleError(f"cannot build the oracle {self.factory}({args}): {failure_text(exc)}") from exc
        if not is_calculator(calc):
            raise OracleError(f"the oracle factory {self.factory!r} returned {type(calc).__name__} "
                              "(an object that is not an ASE calculator)")
        _own_directory(calc)
        _WORKER_CALCS[_slot(key)] = (os.getpid(), calc)
        return calc

    def key(self) -> str:
        """The spec as one string (factory and sorted keywords): equal for equal oracles,
        what the worker processes cache their calculator under."""
        return f"{self.factory}|{sorted(self.kwargs.items())!r}"

    def to_dict(self) -> dict:
        """``{"factory": "module:Name", "kwargs": {...}}``, JSON-able: what a run's
        ``state.json`` keeps to make the oracle again on resume."""
        return {"factory": self.factory, "kwargs": dict(self.kwargs)}


def as_oracle_spec(obj) -> OracleSpec | Any:
    """Normalise a user's oracle: a spec, ``"module:Name"``, a dict, or a live calculator."""
    if isinstance(obj, OracleSpec):
        return obj
    if isinstance(obj, str):
        return OracleSpec(obj)
    if isinstance(obj, dict):
        return OracleSpec(obj["factory"], dict(obj.get("kwargs", {})))
    if isinstance(obj, type):
        raise TypeError(f"the oracle is the class {obj.__name__}, not a calculator: pass an instance, "
                        f"{obj.__name__}(), or the string '{obj.__module__}:{obj.__qualname__}'")
    if is_calculator(obj):
        return obj  # a live calculator, used in this process only
    raise TypeError(f"cannot use {type(obj).__name__} as an oracle: give an ASE calculator instance (e.g. "
                    "EMT()), its import path 'module:Name', or gpal.OracleSpec('module:Name', {...})")


def failure_text(exc: BaseException) -> str:
    """One line saying how a call of the oracle failed (a ``sys.exit`` in it named as such)."""
    text = f"it called sys.exit({exc.code!r})" if isinstance(exc, SystemExit) else f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())


def is_calculator(obj) -> bool:
    """Whether ``obj`` can label frames as an ASE calculator: it computes
    (``calculate``, ``get_potential_energy``) and is not itself a structure (an
    ``ase.Atoms`` has ``get_potential_energy`` too)."""
    return (not isinstance(obj, Atoms) and not isinstance(obj, type)
            and (hasattr(obj, "calculate") or hasattr(obj, "get_potential_energy")))


def worker_initializer(learner: int | None = None) -> None:
    """Start-up of gpal's own worker processes (``gpal learn`` with ``workers`` or
    ``walker_workers``): Ctrl-C is the learner's to handle (it stops the pool), and a
    worker ends when the learner dies, even by SIGKILL, instead of living on.

    Each worker leads a process group of its own, which the programs its oracle starts
    (a DFT code run by a file-based ASE calculator) join: :meth:`WorkerPool.stop` ends
    the worker and those programs together, and so does the worker itself when it finds
    the learner gone (a signal to the learner's job, such as a closed terminal's SIGHUP,
    no longer reaches this group; Ctrl-Z does not pause it either). Outside the
    terminal's foreground group, a program reading or setting the terminal would be
    stopped (SIGTTIN, SIGTTOU): the worker's standard input is ``/dev/null`` (an MPI
    launcher reads its own to pass it on), and SIGTTOU is ignored.

    A daemon thread watches for the worker being handed to another parent, and for the
    learner process (pid ``learner``, given as ``initargs=(os.getpid(),)``) being gone:
    under forkserver the worker's parent is the fork server, which outlives the learner.
    """
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # (not the handler gpal learn gave the parent)
    with contextlib.suppress(AttributeError, OSError):  # (no process groups: not POSIX)
        os.setpgid(0, 0)
        signal.signal(signal.SIGTTOU, signal.SIG_IGN)  # (kept by the programs it starts)
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
    parent = os.getppid()

    def orphaned() -> bool:
        if os.getppid() != parent:
            return True
        if learner is None:
            return False
        try:
            os.kill(learner, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # (its pid now belongs to another user's process)
            return True
        try:  # a learner killed but not yet reaped by its own parent is a zombie: gone too
            with open(f"/proc/{learner}/stat") as fh:
                return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
        except (OSError, IndexError):  # (no /proc: not Linux)
            return False

    def leave():
        # the learner is gone (killed, or its terminal closed): nothing will collect this
        # worker's results, and the signals of its job no longer reach this group, so the
        # programs the oracle started end with the worker (SIGTERM to the whole group,
        # this process included)
        with contextlib.suppress(AttributeError, OSError):
            if os.getpgid(0) == os.getpid():
                os.killpg(os.getpid(), signal.SIGTERM)
        os._exit(1)

    if orphaned():  # (the learner died while this worker started)
        leave()

    def watch():
        while not orphaned():
            time.sleep(_PARENT_POLL)
        leave()

    threading.Thread(target=watch, name="gpal-parent-watch", daemon=True).start()


_PARENT_POLL = 1.0  # s between a worker's checks that its parent lives

# per-process cache, so a process builds its calculator once: key -> (pid, calculator);
# an entry a forked worker inherits from its parent is not its own and is not used
_WORKER_CALCS: dict[tuple[str, int], tuple[int, Any]] = {}


def _slot(key: str) -> tuple[str, int]:
    """The cache slot of ``key`` for this thread: a calculator is rarely thread-safe, so
    the threads of a thread-pool executor (or of a multi-threaded dask worker) each
    build their own."""
    return key, threading.get_ident()


def _cached_calculator(key: str):
    pid, calc = _WORKER_CALCS.get(_slot(key), (None, None))
    return calc if pid == os.getpid() else None


class WorkerPool(cf.Executor):
    """A process pool of gpal workers (:func:`worker_initializer`) that it can stop at
    once (:meth:`stop`) and replace by a fresh one (:meth:`restart`).

    A ``concurrent.futures.ProcessPoolExecutor`` cannot stop a task it has started: an
    oracle call that hangs (a DFT code that never converges, a licence server that does
    not answer) keeps its worker until it returns, and the calls queued behind it wait
    too. :class:`Oracle` therefore restarts a WorkerPool after a timed-out call, once
    the calls still running on the other workers have ended: the hung worker is killed
    with the programs it started (its process group) and the next call runs on a new
    worker. Leaving a ``with`` block by an exception (Ctrl-C) stops the pool; a normal
    exit waits for its tasks, as a ``ProcessPoolExecutor`` does.

    Parameters
    ----------
    max_workers : int
        Worker processes.
    mp_context : multiprocessing context, optional
        Their start method (default: Python's).
    """

    def __init__(self, max_workers: int, mp_context=None):
        self._max_workers = int(max_workers)
        self._pool = self._new_pool(mp_context)
        self._mp_context = self._pool._mp_context  # (what check_walker_settings reads)
        self.restarts = 0

    def _new_pool(self, mp_context) -> cf.ProcessPoolExecutor:
        return cf.ProcessPoolExecutor(self._max_workers, mp_context=mp_context,
                                      initializer=worker_initializer, initargs=(os.getpid(),))

    @property
    def _processes(self) -> dict:
        """The current pool's worker processes, by pid (empty before the first task)."""
        return dict(getattr(self._pool, "_processes", None) or {})

    def submit(self, fn, /, *args, **kwargs) -> cf.Future:
        return self._pool.submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=cancel_futures)

    def stop(self) -> None:
        """End the pool now: tasks not started are cancelled, and the workers, with the
        programs their oracle calls started, get SIGTERM (a call still running is cut
        off, its result never comes). Nothing is waited for but the workers' ends."""
        import signal

        for pid in self._processes:  # (before shutdown clears them)
            try:
                if hasattr(os, "killpg") and os.getpgid(pid) == pid:  # its own group: programs it started too
                    os.killpg(pid, signal.SIGTERM)
                else:
                    os.kill(pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):  # (ended meanwhile)
                pass
        self._pool.shutdown(wait=True, cancel_futures=True)

    def restart(self) -> None:
        """:meth:`stop` this pool's workers and go on with new ones (same size and start
        method): what a hung call held is freed. Futures of the old workers' calls never
        complete normally (they get ``BrokenProcessPool``)."""
        self.stop()
        self._pool = self._new_pool(self._mp_context)
        self.restarts += 1

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.stop()
            return False
        return super().__exit__(exc_type, exc, tb)


def worker_pool(n: int, mp_context=None) -> WorkerPool:
    """A process pool of ``n`` gpal workers (:func:`worker_initializer`: they leave
    Ctrl-C to this process and end with it). :meth:`WorkerPool.stop` ends it without
    waiting for the oracle calls running in it, and an :class:`Oracle` with a timeout
    restarts it after a call that timed out (the call is stopped, with the program it
    ran), which no other executor allows."""
    return WorkerPool(int(n), mp_context=mp_context)


def executor_workers(executor) -> int | None:
    """How many calls ``executor`` runs at once: a concurrent.futures pool's
    ``_max_workers``, a dask ``ClientExecutor``'s threads over its workers; None if it
    does not say."""
    n = getattr(executor, "_max_workers", None)
    if n:
        return int(n)
    client = getattr(executor, "_client", None)
    if client is not None:
        with contextlib.suppress(Exception):
            return max(1, int(sum(client.nthreads().values())))
    return None


def _executor_stopped(exc: BaseException) -> bool:
    """``exc``, raised by an executor's ``submit``, says the executor has stopped (a dask
    client closed, a pool shut down) rather than a fault of the call."""
    name = type(exc).__name__
    return name in ("ClosedClientError", "CancelledError") or (
        isinstance(exc, RuntimeError) and "after shutdown" in str(exc))


def pool_threads(executor) -> int:
    """BLAS and OpenMP threads of each oracle call in ``executor``: for gpal's own
    :class:`WorkerPool`, the cores this process may use shared among its workers (at
    least 1: one worker on 2 cores computes with 2); 1 in any other executor, whose
    workers gpal does not know the node of."""
    if not isinstance(executor, WorkerPool):
        return 1
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cpus // executor._max_workers)


#: per-atom arrays of a frame that reach the oracle with it: the initial magnetic moments
#: and charges a spin-polarised or charged reference calculation starts from
_ORACLE_ARRAYS = ("initial_magmoms", "initial_charges")


def label_energy(atoms) -> float:
    """The energy label (eV) of ``atoms`` from its calculator, computed if need be:
    :func:`gpal._validation.energy_label` of its results (the free energy where it has one)."""
    from .._validation import energy_label

    energy = atoms.get_potential_energy()
    return float(energy_label(getattr(atoms.calc, "results", None) or {}, energy))


def _compute(calc, numbers, positions, cell, pbc, want_stress, fresh: bool = False,
             arrays: dict | None = None) -> dict:
    """Energy, forces (and stress) of one frame; ``fresh`` (a retry) first clears what the
    calculator kept from its last evaluation, so the same frame is computed again rather
    than read back from ASE's cache of the failed attempt. ``arrays``: the frame's
    :data:`_ORACLE_ARRAYS` it has."""
    if fresh and hasattr(calc, "reset"):
        calc.reset()
    atoms = Atoms(numbers=numbers, positions=positions, cell=cell, pbc=pbc)
    for name, values in (arrays or {}).items():
        atoms.set_array(name, values)
    atoms.calc = calc
    out = {
        "energy": label_energy(atoms),
        "forces": np.array(atoms.get_forces(), dtype=float),
    }
    _check_not_stale(calc, positions, out)
    # stress where the calculator has one: a calculator of energy and forces only labels
    # the frame without it (the model then learns no stress from that frame)
    if want_stress and "stress" in getattr(calc, "implemented_properties", ("stress",)):
        try:
            out["stress"] = np.array(atoms.get_stress(), dtype=float)
        except PropertyNotImplementedError:
            pass
    return out


def _thread_limit(threads: int | None) -> contextlib.AbstractContextManager:
    """Limit the BLAS and OpenMP libraries loaded in this process to ``threads`` threads.

    threadpoolctl changes the running libraries' thread counts and restores them on exit;
    it reaches only libraries already loaded (the calculator is built first). Setting
    ``OMP_NUM_THREADS`` here would do nothing: OpenMP and BLAS read it once, when they
    are loaded, which happened when this worker imported numpy.
    """
    if not threads:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=int(threads))


def _own_directory(calc) -> None:
    """Give a file-based calculator built from an oracle spec the folder
    ``<its directory>/gpal-worker-<pid>`` (``-<thread id>`` off the process's main thread).

    File-based DFT codes (ASE's ``FileIOCalculator`` and ``GenericFileIOCalculator``,
    but also ``Vasp`` and ``CP2K``, plain ``Calculator`` subclasses) write fixed file
    names in it: workers sharing one folder read each
    other's outputs (3 workers, a file-based EMT: 4 of 6 labels were another frame's
    energy, with no error), and a single process wrote ``calc.out`` over a user's file
    of that name in the working folder. A calculator that writes no file is not
    affected: only a calculator that runs a program (``FileIOCalculator``,
    ``GenericFileIOCalculator``, or one with a ``command``, ``profile`` or
    ``write_input``) is moved, since ASE makes the folder at the first calculation;
    one whose ``directory`` cannot be set is left as it is. ASE's ``Castep`` keeps its
    folder in ``_directory``: that is the one moved."""
    main = threading.current_thread() is threading.main_thread()
    tag = f"gpal-worker-{os.getpid()}" + ("" if main else f"-{threading.get_ident()}")
    castep = getattr(calc, "_castep_command", None) is not None  # (ASE's Castep: its folder is _directory)
    if castep and isinstance(getattr(calc, "_directory", None), str):
        if not Path(calc._directory).name.startswith("gpal-worker-"):
            calc._directory = str(Path(calc._directory) / tag)
        return
    base = getattr(calc, "directory", None)
    if not isinstance(base, (str, os.PathLike)) or not _runs_a_program(calc):
        return
    if Path(base).name.startswith("gpal-worker-"):
        return  # (already its own)
    try:
        calc.directory = type(base)(Path(base) / tag) if isinstance(base, (str, Path)) else str(Path(base) / tag)
    except (AttributeError, TypeError):  # (a read-only property)
        pass


def _runs_a_program(calc) -> bool:
    """Whether ``calc`` writes input files and runs a program in its ``directory``."""
    from ase.calculators.calculator import FileIOCalculator

    try:
        from ase.calculators.genericfileio import GenericFileIOCalculator
    except ImportError:  # (an ASE without it)
        GenericFileIOCalculator = FileIOCalculator
    return isinstance(calc, (FileIOCalculator, GenericFileIOCalculator)) or any(
        hasattr(calc, name) for name in ("command", "profile", "write_input", "_castep_command"))


def _process_children() -> dict[int, list[int]]:
    """``{pid: [its children's pids]}`` of the processes this one can see (Linux's
    ``/proc``; empty elsewhere)."""
    kids: dict[int, list[int]] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return kids
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as fh:
                stat = fh.read()
        except OSError:  # (ended meanwhile)
            continue
        fields = stat.rsplit(")", 1)[-1].split()  # (after the command name, which may hold spaces)
        if len(fields) > 1:
            kids.setdefault(int(fields[1]), []).append(int(name))
    return kids


def _child_processes() -> set[int]:
    """The pids of this process's children (empty where ``/proc`` is not)."""
    return set(_process_children().get(os.getpid(), ()))


def _end_process_trees(pids) -> None:
    """SIGTERM to the processes ``pids`` and all their descendants (the shell ASE starts a
    program through, and the program)."""
    import signal

    kids = _process_children()
    todo, seen = list(pids), set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        todo.extend(kids.get(pid, ()))
    for pid in seen:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)


#: the last result of each calculator (by id): positions digest, energy, forces
_LAST_RESULT: dict = {}


def _check_not_stale(calc, positions, out: dict) -> None:
    """An :class:`OracleError` (retried, then the frame skipped) when a calculator returns,
    for other positions, bit for bit the energy and forces of its previous call: a
    file-based code that exited without writing its output (an ``mpirun`` that hid a
    crashed rank, a killed run leaving the old output file) is read back as the last
    frame's results. With a stand-in code that did so on every third call, 8 of 17
    labels of a run were copies of an earlier frame's (energy off by up to 3.3 eV)."""
    key = id(calc)
    pos = np.ascontiguousarray(positions, dtype=float).tobytes()
    last = _LAST_RESULT.get(key)
    if last is not None and last[0] != pos and last[1] == out["energy"] and np.any(out["forces"]) \
            and np.array_equal(last[2], out["forces"]):  # (kept as the last: a retry is judged alike)
        raise OracleError("the oracle returned, for new positions, exactly the energy and forces of its previous "
                          "call: stale output (a program that exited without writing its results?)")
    _LAST_RESULT[key] = (pos, out["energy"], out["forces"])


def _label_task(spec: OracleSpec, numbers, positions, cell, pbc, want_stress, arrays, threads, fresh=False):
    """Worker entry point: build (or reuse) the calculator and compute plain arrays."""
    calc = spec.check()
    with _thread_limit(threads):
        t0 = time.perf_counter()
        out = _compute(calc, numbers, positions, cell, pbc, want_stress, fresh, arrays)
        out["wall_time"] = time.perf_counter() - t0
    return out


@dataclass
class LabelFailure:
    """Why a frame could not be labelled."""

    index: int
    reason: str
    attempts: int


class BrokenOracleError(OracleError):
    """The executor's workers died: nothing more can be labelled with it.

    ``labelled`` and ``failures`` are what :meth:`Oracle.label` would have returned.
    """

    def __init__(self, message: str, labelled: list, failures: list):
        super().__init__(message)
        self.labelled = labelled
        self.failures = failures


def _check_result(res: dict, n_atoms: int) -> None:
    """An :class:`OracleError` (a failure of the oracle, retried as any) for a result of the
    wrong shape (a parser that dropped a line) or with non-finite values."""
    shapes = {"energy": [()], "forces": [(n_atoms, 3)], "stress": [(6,), (3, 3)]}
    for k, allowed in shapes.items():
        if k not in res:
            continue
        if np.shape(res[k]) not in allowed:
            raise OracleError(f"oracle returned {k} of shape {np.shape(res[k])}, expected "
                              f"{' or '.join(str(a) for a in allowed)} for {n_atoms} atoms")
        if not np.all(np.isfinite(res[k])):
            raise OracleError(f"oracle returned non-finite {k}")


class Oracle:
    """Label frames with a reference calculator, with retries, timeouts and NaN checks.

    Parameters
    ----------
    calculator : OracleSpec, str, dict or ASE calculator
        A spec (or ``"module:Name"`` string) can run in any executor; a live calculator
        runs in this process only.
    executor : concurrent.futures.Executor, optional
        Where specs run: a ``ProcessPoolExecutor``, a dask ``Client.get_executor()``...
        Default: in this process.
    timeout : float, optional
        Seconds one label may take (enforced only in an executor). A call past it is a
        failed attempt; in a :class:`WorkerPool` it is also stopped, with the program it
        runs (the pool is restarted once its other running calls have ended, and no call
        is sent meanwhile); another executor's worker keeps running it.
    retries : int, default 1
        Extra attempts after a failure.
    threads_per_task : int, default 1
        Threads of the BLAS and OpenMP libraries during each label computed in an
        executor's worker, set with ``threadpoolctl.threadpool_limits`` around the
        calculation (0 or None: no limit). Labels computed in this process (no executor)
        are not limited. This reaches libraries loaded in the worker's Python process by
        the time the calculator is built; it cannot reach a calculator that runs an
        external program (ASE's file-based calculators such as VASP or Quantum
        ESPRESSO), nor one whose library fixes its thread count when loaded. For those,
        set the count where the program or library starts: in the calculator's command
        or environment, in the shell that starts Python (``OMP_NUM_THREADS=1 python
        run.py``), or in each worker process before it imports the calculator (an
        ``initializer`` of the ``ProcessPoolExecutor`` that sets
        ``os.environ["OMP_NUM_THREADS"]``).
    stress : bool, default True
        Ask for stress on 3D-periodic frames.
    """

    def __init__(
        self,
        calculator,
        *,
        executor: cf.Executor | None = None,
        timeout: float | None = None,
        retries: int = 1,
        threads_per_task: int = 1,
        stress: bool = True,
    ):
        self.calculator = as_oracle_spec(calculator)
        self.executor = executor
        self.timeout = timeout
        self.retries = int(retries)
        self.threads_per_task = threads_per_task
        self.stress = stress
        self.n_calls = 0
        self.n_failures = 0
        self.n_restarts = 0  # of a WorkerPool executor, after calls that timed out
        self.wall_time = 0.0
        self._failed_last = False  # the last local call failed: reset the calculator first
        if executor is not None and isinstance(self.calculator, OracleSpec):
            _WORKER_CALCS.pop(_slot(self.calculator.key()), None)  # (its check's calculator: the workers build their own)
        if executor is not None and not isinstance(self.calculator, OracleSpec):
            raise ValueError(
                "a live calculator cannot be sent to an executor; give the oracle as "
                "OracleSpec('module:Name', kwargs) or 'module:Name'"
            )

    @property
    def is_spec(self) -> bool:
        return isinstance(self.calculator, OracleSpec)

    def _args(self, atoms: Atoms):
        want_stress = self.stress and bool(np.all(atoms.pbc)) and atoms.cell.volume > 1e-6
        return (
            atoms.numbers.copy(),
            atoms.positions.copy(),
            atoms.cell.array.copy(),
            atoms.pbc.copy(),
            want_stress,
            {k: atoms.arrays[k].copy() for k in _ORACLE_ARRAYS if k in atoms.arrays},
        )

    def _run_local(self, atoms: Atoms, fresh: bool = False, held: contextlib.ExitStack | None = None) -> dict:
        """One call in this process. ``held``: from the moment the call returns, Ctrl-C
        and SIGTERM are held (:func:`gpal.io.interrupts_deferred`, entered on ``held``)
        until the stack closes, so that a label computed is handed on whole."""
        calc = self.calculator
        if self.is_spec:
            calc = calc.check()
        t0 = time.perf_counter()
        numbers, positions, cell, pbc, want_stress, arrays = self._args(atoms)
        before = _child_processes() if _runs_a_program(calc) else None
        try:
            out = _compute(calc, numbers, positions, cell, pbc, want_stress, fresh, arrays)
            if held is not None:  # (the first statement after the return: the label is paid for)
                held.enter_context(interrupts_deferred())
        except KeyboardInterrupt:  # Ctrl-C, or gpal learn's SIGTERM: the program this call
            if before is not None:  # started (a DFT code) ends too, not left running alone
                _end_process_trees(_child_processes() - before)
            raise
        out["wall_time"] = time.perf_counter() - t0
        return out

    def _labelled(self, atoms: Atoms, res: dict) -> Atoms:
        self.wall_time += res.pop("wall_time", 0.0)
        kept = {name: atoms.arrays[name].copy() for name in _ORACLE_ARRAYS if name in atoms.arrays}
        if not kept:
            return labelled(atoms, energy=res["energy"], forces=res["forces"], stress=res.get("stress"))
        # what the label was computed from goes with it (into train.xyz), set before the
        # labels: a calculator's results are stale once the initial moments change
        bare = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
        for name, values in kept.items():
            bare.set_array(name, values)
        return labelled(bare, energy=res["energy"], forces=res["forces"], stress=res.get("stress"), bare=False)

    def _deadlines(self, n: int) -> list[float | None]:
        """Per-task deadlines: a task queued behind others is not charged their time."""
        if self.timeout is None:
            return [None] * n
        workers = executor_workers(self.executor) or 1
        t0 = time.monotonic()
        return [t0 + self.timeout * (1 + k // workers) for k in range(n)]

    def label(self, frames: list[Atoms], on_label=None, *, first: int = 0,
              on_failure=None, on_start=None) -> tuple[list[Atoms | None], list[LabelFailure]]:
        """Label ``frames`` (concurrently when an executor is set).

        Parameters
        ----------
        frames : list of ase.Atoms
        on_label : callable, optional
            ``on_label(index, labelled_atoms)`` is called as each label arrives, before
            the others are waited for (the learner writes it to disk there).
        first : int, default 0
            Number of the first frame in warnings (frames sent one call at a time are
            told apart).
        on_failure : callable, optional
            ``on_failure(index, attempt, reason)`` for each failed attempt, retried or
            not, in place of this method's own warning (the learner logs and warns with
            the frame's MD step and walker).
        on_start : callable, optional
            ``on_start(index, attempt)`` just before each call made in this process (no
            executor): the learner logs it, so a resume after a kill knows whether a call
            was running.

        Returns
        -------
        labelled : list of ase.Atoms or None
            A copy of each frame with a SinglePointCalculator holding energy, forces and
            (3D-periodic frames) stress; None where labelling failed.
        failures : list of LabelFailure
        """
        frames = list(frames)
        labelled: list[Atoms | None] = [None] * len(frames)
        attempts = [0] * len(frames)
        reasons: dict[int, str] = {}
        broken = None  # the executor's workers died (cf.BrokenExecutor)

        def failed(i: int, exc: BaseException, retry: bool = True) -> None:
            reasons[i] = failure_text(exc)  # one line in logs and warnings
            if on_failure is not None:
                on_failure(i, attempts[i], reasons[i])
            else:
                log.warning("oracle failed on frame %d (attempt %d): %s", first + i, attempts[i], reasons[i])
            if retry and getattr(exc, "retryable", True):
                again.append(i)

        def arrived(i: int, res: dict) -> None:
            # on_label (the learner's write to disk) runs outside the oracle's try: its
            # errors (a full disk) stop the labelling, they are not the oracle's failures
            labelled[i] = self._labelled(frames[i], res)
            if on_label is not None:
                on_label(i, labelled[i])

        todo = list(range(len(frames)))
        hung = 0  # calls of gpal's own pool that timed out while running (restart() stops them)
        while todo:
            again = []
            if self.executor is None:
                for i in todo:
                    attempts[i] += 1
                    if on_start is not None:
                        on_start(i, attempts[i])
                    self.n_calls += 1
                    # a Ctrl-C or SIGTERM from the call's return until its label is handed on
                    # (on_label: written to disk) acts after that, not on a label paid for
                    with contextlib.ExitStack() as held:
                        try:
                            # after any failure the calculator is reset first: a failed call can
                            # leave it half set up (EMT without its neighbour list)
                            res = self._run_local(frames[i], fresh=attempts[i] > 1 or self._failed_last,
                                                  held=held)
                            _check_result(res, len(frames[i]))
                        except (Exception, SystemExit) as exc:  # the oracle is foreign code: any failure
                            self._failed_last = True  # is logged (sys.exit in it too: not gpal's exit)
                            failed(i, exc)
                            continue
                        self._failed_last = False
                        arrived(i, res)
            else:
                futures = {}

                # a concurrent.futures pool cancels only a task not started yet: no call was
                # made for it. Other executors' futures (dask's) may cancel a task that runs
                # on, and was paid for: it stays counted
                exact = isinstance(self.executor, (cf.ProcessPoolExecutor, cf.ThreadPoolExecutor, WorkerPool))

                def cancel_queued(fut) -> bool:
                    if not fut.cancelled() and fut.cancel():
                        if exact:
                            self.n_calls -= 1
                        return exact
                    return False

                def take(i: int, fut) -> None:
                    nonlocal broken
                    try:
                        res = fut.result()
                        _check_result(res, len(frames[i]))
                    except cf.BrokenExecutor as exc:  # a worker died (a crash, an out-of-memory kill)
                        broken = exc
                        failed(i, exc, retry=False)
                        return
                    except cf.CancelledError as exc:  # cancelled by its executor, not by gpal (a
                        # dask client closed): the executor has stopped, not the oracle
                        broken = cf.BrokenExecutor(f"a call was cancelled by its executor ({exc or 'stopped'})")
                        failed(i, broken, retry=False)
                        return
                    except (Exception, SystemExit) as exc:  # worker exceptions arrive re-raised here
                        failed(i, exc)
                        return
                    arrived(i, res)

                # gpal's own pool is sent a call only when a worker is free for it: a call
                # sent is a call running (its timeout counts from then), and a stop
                # (Ctrl-C, SIGTERM) leaves none queued that would start afterwards
                limit = int(self.executor._max_workers) if isinstance(self.executor, WorkerPool) else None
                waiting = list(todo)  # frames not sent yet
                pending: dict = {}  # future -> frame
                deadline: dict = {}  # frame -> monotonic time, or None

                def send(n: int) -> None:
                    nonlocal broken
                    sent = []
                    while waiting and len(sent) < n and broken is None:
                        i = waiting.pop(0)
                        try:
                            fut = self.executor.submit(
                                _label_task, self.calculator, *self._args(frames[i]), self.threads_per_task,
                                attempts[i] > 0,
                            )
                        except cf.BrokenExecutor as exc:
                            broken = exc
                            reasons[i] = f"{type(exc).__name__}: {exc}"
                            break
                        except Exception as exc:  # an executor that stopped otherwise (a dask
                            # client closed: ClosedClientError): no more labels from it
                            if not _executor_stopped(exc):
                                raise
                            broken = cf.BrokenExecutor(f"{type(exc).__name__}: {exc}")
                            reasons[i] = f"{type(exc).__name__}: {exc}"
                            break
                        attempts[i] += 1
                        self.n_calls += 1
                        futures[i] = fut
                        pending[fut] = i
                        sent.append(i)
                    if limit is None:  # all sent at once: each charged from when it could start
                        deadline.update(zip(sent, self._deadlines(len(sent))))
                    else:
                        now = time.monotonic()
                        deadline.update((i, None if self.timeout is None else now + self.timeout) for i in sent)

                try:
                    while True:
                        if hung and not pending and broken is None:  # the other calls have ended: the hung
                            self.executor.restart()  # ones are stopped, with the programs they ran
                            hung = 0
                            self.n_restarts += 1
                        if broken is None and not hung:  # (none sent meanwhile: it would wait for them)
                            send(len(waiting) if limit is None else limit - len(pending))
                        if not pending:
                            break
                        # labels are taken as they finish, not in the order sent: a fast label
                        # behind a slow one is on disk at once (a kill then lost it, paid for)
                        soonest = min((deadline[i] for i in pending.values() if deadline[i] is not None),
                                      default=None)
                        wait = None if soonest is None else max(0.0, soonest - time.monotonic())
                        done, _ = cf.wait(list(pending), timeout=wait, return_when=cf.FIRST_COMPLETED)
                        for fut in sorted(done, key=pending.get):
                            with interrupts_deferred():  # (a label that came is handed on whole)
                                take(pending.pop(fut), fut)
                        now = time.monotonic()
                        for fut, i in list(pending.items()):
                            if deadline[i] is not None and now >= deadline[i] and not fut.done():
                                del pending[fut]
                                if not cancel_queued(fut) and limit is not None:  # running in a worker
                                    hung += 1  # of gpal's own pool, which can stop it
                                failed(i, TimeoutError(f"timed out after {self.timeout:g} s"))
                except BaseException as exc:  # Ctrl-C, or on_label failed: what is queued is not wanted
                    for fut in futures.values():
                        cancel_queued(fut)
                    if isinstance(exc, KeyboardInterrupt):  # labels already computed are paid for: kept
                        for i, fut in futures.items():
                            if labelled[i] is None and fut.done() and not fut.cancelled() and fut.exception() is None:
                                take(i, fut)
                    raise
            todo = [] if broken is not None else [i for i in again if attempts[i] <= self.retries]
        failures = []
        for i in range(len(frames)):
            if labelled[i] is None and attempts[i]:  # (a frame a broken pool never took is no failure)
                self.n_failures += 1
                failures.append(LabelFailure(i, reasons.get(i, "unknown"), attempts[i]))
        if broken is not None:
            missing = sum(a is None for a in labelled)
            raise BrokenOracleError(
                f"the oracle's worker processes stopped ({type(broken).__name__}: {str(broken).rstrip('.')}): a worker "
                f"crashed or was killed (out of memory?); {missing} of {len(frames)} frame(s) "
                "not labelled", labelled, failures)
        return labelled, failures
