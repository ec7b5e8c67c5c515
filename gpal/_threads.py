"""gpal's threading policy: numba and BLAS threads chosen per call, never by environment.

Why
---
OpenBLAS's threads and the GNU OpenMP threads under numba's parallel loops spin while
they wait. With more runnable threads than cores, a spinning thread holds a core that
the thread it waits for needs: on a loaded 2-core machine a 2260 x 200 QR took 2 s
with two BLAS threads and 0.02 s with one, and with the libraries' defaults a 20-frame
fit and a 108-atom prediction were 1.6-2.0x and 3.3x slower than with one thread
(table below, ``lib`` column). Small blocks are latency-bound even on a quiet machine:
a (108 x 300) @ (300 x 252) product took 4.5 ms with two OpenBLAS threads and 0.25 ms
with one, a triangular solve 3.3 against 0.5 ms.

Policy
------
Every gpal computation (``SparseGP.fit``, ``update``, ``predict``, ``loo_residuals``,
``optimize_hyperparameters``, ``select_frames``, the SOAP descriptor, neighbour lists,
the std calibrators' fits, frame selection, a ``TargetSet``'s covariances, the
learner's calibration) runs under :func:`limited`, which while the call runs

* gives numba's loops ``n`` threads (``numba.set_num_threads``, per Python thread) and
  BLAS one thread (threadpoolctl's library controllers), or ``n`` BLAS threads for a
  call that declares a block of at least :data:`SMALL_BLOCK` elements: a prediction's
  (n_atoms x n_sparse) kernel block, a fit's stacked (observations x sparse points)
  matrix (whose QR and Gram products gain from the cores: a 30,000 x 1,000 QR took
  1.7 s on two threads against 2.9 s on one); the row passes and evidence steps
  inside such a fit lower BLAS to one thread again;
* inside a call whose BLAS runs one thread, lets a prediction's kernel products and
  local-std triangular products run by chunks of atoms on numba's threads, each thread
  calling one-thread BLAS (:func:`row_chunks`, :mod:`gpal._row_blas`): the cores are
  used without a second thread pool;
* only ever lowers the counts in force: limits the user set before the call are kept,
  and a nested call can drop cores that became busy meanwhile but never add any;
* restores the previous counts on return, the OpenMP runtime's too: numba's ``omp``
  layer sets the calling thread's OpenMP thread count (``omp_set_num_threads``) when it
  launches a loop, and other libraries on the same runtime (tblite's xTB links the same
  ``libgomp``) would then run that many threads after gpal's call, against the user's
  ``OMP_NUM_THREADS``: a GFN1-xTB baseline inside a prediction took 126 ms instead of
  1.9 ms beside two busy processes. A baseline calculator that a prediction or fit
  calls (:func:`user_code`) runs with the user's OpenMP count too.

``n`` is the user's :func:`set_threads` / :func:`threads` value, or by default the cores
in this process's affinity mask less the cores other processes keep busy right now:
the number of runnable tasks on the machine (``/proc/loadavg``, 4th field) less this
process's own runnable threads (``/proc/self/task/*/stat``), median of three samples,
looked at no more than once per :data:`LOAD_REFRESH` second. A rise is believed only
when a second look, :data:`LOAD_CONFIRM` s later, still sees it: a task runnable for a
moment (a shell, a short system job) once held a whole second of MD to one thread. A
fall is believed at once. Not ``os.getloadavg()``: a
one-minute average lags a minute behind a job starting or ending, and it counts gpal's
own threads of the last minute (a two-thread fit on an idle two-core machine raises it
to 2, which would read as busy). Off Linux the load is not seen and ``n`` = the cores.

Nothing is set at import: environment variables such as ``OMP_NUM_THREADS`` or
``OMP_WAIT_POLICY`` are read once, when a library is loaded, so setting them in a library
either does nothing (numpy already loaded) or changes every other library of the user's
process. Overhead: ~10 µs per call, ~4 µs for a call nested in another that changes
nothing (one thread, OMP_NUM_THREADS=1), against milliseconds for a 108-atom prediction.

Why one BLAS thread by default: OpenBLAS's threads spin for a while after each
parallel product, and numba's parallel loops run between gpal's products all the time
(descriptors, neighbour lists, row passes). On an idle 2-core machine the earlier
default (``n`` BLAS threads for every call without a declared block) made a 20-frame
fit 2.0-2.2x slower than one thread everywhere (1.58 against 0.72 s; a default evidence
fit of 12 frames 4.4 against 2.4 s): the neighbour search ran 19x and the kernel
matrix 12x slower while a BLAS thread spun on the other core, and even a 4,000 x 200
Gram product took 3.7x as long with two BLAS threads as with one. With one BLAS thread
and numba on both cores the same fits take 0.56-0.67 and 1.30 s (one thread
everywhere: 0.65-0.75 and 1.40 s).

Limits: BLAS thread counts are process-wide, so gpal calls running at the same time in
several Python threads share the smallest request; their numba loops do not see each
other, so concurrent calls each take the free cores (``gpal.threads(1)`` around each
call shares them out). numba's ``workqueue`` threading layer (used when neither OpenMP
nor TBB is available, e.g. some macOS installs) allows one parallel launch at a time:
call gpal from one Python thread there. On a machine shared by batch jobs, the load is
the machine's, not only that of the cores this process may use. Load that starts during a call is
seen at the next nested call (the descriptor of the next frame during a fit).

Measured
--------
``benchmarks/bench_threads.py`` (2 cores; fit: 20 frames of 108-atom EMT Cu, 200 sparse
points, SOAP n_max 6, l_max 4; predict: 108 atoms with ``return_std=True``; medians of 7
interleaved repeats, ratio to one thread). Other jobs kept the load average at 6-12
during the whole run, so "quiet" means no load added by the benchmark, and "loaded" one
more busy-loop process pinned to a core::

                      lib defaults    gpal default    gpal, 2 threads   one thread
    quiet   fit        15.9 s 2.37x    6.27 s 0.94x    17.7 s 2.65x      6.70 s
    quiet   predict     267 ms 4.83x   61.5 ms 1.11x   99.3 ms 1.80x     55.2 ms
    loaded  fit        20.0 s 1.61x    13.2 s 1.07x    23.8 s 1.92x      12.4 s
    loaded  predict     291 ms 3.22x   91.7 ms 1.01x    124 ms 1.37x     90.4 ms

A second run (load average 9-10; default modes) gave, in the same order of rows,
default 0.94x, 0.89x, 1.05x, 0.95x and 2 threads 2.16x, 1.57x, 1.61x, 1.35x. The default
saw the busy cores and chose one thread at every repeat of both runs.

On an idle machine (load average ~1, ``--repeats 4``; the first default gave BLAS every
core for calls without a declared block, the current one gives it one thread)::

                      first default   current default   one thread
    quiet   fit        2.84 s 2.16x    1.40 s 0.86x      1.32 / 1.63 s
    quiet   predict    6.91 ms 0.60x   7.57 ms 0.70x     11.5 / 10.8 ms
    loaded  fit        1.44 s 0.91x    1.76 s 0.98x      1.57 / 1.80 s
    loaded  predict    8.96 ms 1.04x   10.5 ms 0.94x     8.64 / 11.1 ms

(two runs, one thread's figures of each beside them; ratios within each run).
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

__all__ = ["available_cores", "default_threads", "get_threads", "set_threads", "threads"]

F = TypeVar("F", bound=Callable[..., Any])

#: from this many elements in a call's declared block (a prediction's kernel block, a
#: fit's stacked matrix), BLAS gets n threads
SMALL_BLOCK = 4_000_000
#: seconds between two looks at the machine's load
LOAD_REFRESH = 1.0
#: seconds after a look that saw more busy cores until the look that confirms them
LOAD_CONFIRM = 0.1

_BLAS_LIBS: list | None = None
_BLAS_LOCK = threading.Lock()
_BLAS_REQUESTS: list[int] = []  # limits of the gpal calls running now (all Python threads)
_BLAS_ORIGINAL: list[int] = []  # BLAS thread counts before the first of them
_USER_THREADS: int | None = None  # set_threads()
_LOCAL = threading.local()  # .override: the threads() context of this Python thread
_LOAD_CACHE: dict[str, float] = {"time": -1e300, "busy": 0.0, "rise": -1.0}
_LOAD_LOCK = threading.Lock()
_DISABLED = False  # _policy_disabled(): benchmarks only
_OMP_LIBS: list | None = None  # OpenMP runtimes' controllers, once numba's pool has run
_OMP_BEFORE: dict | None = None  # {path: threads} of the runtimes loaded before gpal's first call


def available_cores() -> int:
    """Number of CPU cores this process may run on (its affinity mask, not the machine's).

    Returns
    -------
    int
        ``len(os.sched_getaffinity(0))`` where available, else ``os.cpu_count()``.
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _check_n(n: int | None) -> int | None:
    if n is None:
        return None
    if isinstance(n, bool) or int(n) != n or int(n) < 1:
        raise ValueError(f"threads must be a positive integer or None, got {n!r}")
    return int(n)


def set_threads(n: int | None) -> None:
    """Set the number of threads gpal's computations use (numba loops and BLAS).

    This is gpal's own setting: it changes no environment variable and no other
    library's global state outside gpal's calls. Each gpal call (fit, predict, update,
    descriptors...) limits numba and BLAS to this number while it runs and restores the
    previous limits on return. Limits already set lower by the user
    (``numba.set_num_threads``, ``threadpoolctl.threadpool_limits``) are kept.

    Parameters
    ----------
    n : int or None
        Thread count, or None (default) for automatic: the cores available to this
        process (:func:`available_cores`) less those kept busy by other processes at
        the time of the call; small model evaluations use one BLAS thread.
    """
    global _USER_THREADS
    _USER_THREADS = _check_n(n)


def get_threads() -> int | None:
    """The thread count in force for this Python thread (:func:`threads`, then
    :func:`set_threads`), or None when automatic."""
    override = getattr(_LOCAL, "override", None)
    if override is not None:
        return override[0]
    return _USER_THREADS


@contextlib.contextmanager
def threads(n: int | None) -> Iterator[None]:
    """Context manager: gpal's calls in this block (and this Python thread) use ``n`` threads.

    Parameters
    ----------
    n : int or None
        As in :func:`set_threads`; None for automatic.

    Examples
    --------
    >>> import gpal
    >>> with gpal.threads(1):   # e.g. one MD walker per core
    ...     pass
    """
    n = _check_n(n)
    old = getattr(_LOCAL, "override", None)
    _LOCAL.override = (n,)
    try:
        yield
    finally:
        _LOCAL.override = old


def _runnable_tasks() -> tuple[int, int] | None:
    """(runnable tasks on the machine, runnable threads of this process) right now."""
    try:
        with open("/proc/loadavg") as fh:
            running = int(fh.read().split()[3].split("/")[0])
        own = 0
        for tid in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{tid}/stat") as fh:
                    stat = fh.read()
            except OSError:  # the thread ended meanwhile
                continue
            if stat[stat.rfind(")") + 2] == "R":
                own += 1
    except (OSError, ValueError, IndexError):
        return None
    return running, own


def _busy_cores() -> float:
    """Cores kept busy by other processes (Linux; 0 elsewhere), cached for LOAD_REFRESH s.

    Three samples of the number of runnable tasks (``/proc/loadavg``) less this process's
    own runnable threads (``/proc/self/task/*/stat``); the median. An instantaneous count,
    not the load average, which lags by a minute and counts gpal's own past threads.
    A look that sees more busy cores than the value in force is held as a candidate
    (``rise``) and the value kept; the look :data:`LOAD_CONFIRM` s later adopts the
    smaller of the two counts if it still sees a rise. A look that sees fewer adopts
    them at once.
    """
    now = time.monotonic()
    with _LOAD_LOCK:
        cache = _LOAD_CACHE
        rising = cache["rise"] >= 0
        if now - cache["time"] < (LOAD_CONFIRM if rising else LOAD_REFRESH):
            return cache["busy"]
        samples = []
        for _ in range(3):
            got = _runnable_tasks()
            if got is None:
                break
            samples.append(max(0, got[0] - got[1]))
        seen = float(sorted(samples)[len(samples) // 2]) if samples else 0.0
        cache["time"] = now
        if seen <= cache["busy"]:
            cache["busy"], cache["rise"] = seen, -1.0
        elif rising:  # confirmed
            cache["busy"], cache["rise"] = min(seen, cache["rise"]), -1.0
        else:
            cache["rise"] = seen
        return cache["busy"]


def default_threads() -> int:
    """Threads gpal would give a large computation now (numba loops, BLAS on big blocks).

    Returns
    -------
    int
        The user's setting (:func:`threads`, :func:`set_threads`) if any; otherwise the
        available cores less those busy with other processes, at least 1.
    """
    n = get_threads()
    if n is not None:
        return n
    cores = available_cores()
    if cores == 1:
        return 1
    return max(1, min(cores, int(round(cores - _busy_cores()))))


def _blas_libraries() -> list:
    """threadpoolctl controllers of the BLAS libraries loaded now (cached on first use)."""
    global _BLAS_LIBS
    if _BLAS_LIBS is None:
        try:
            from threadpoolctl import ThreadpoolController

            _BLAS_LIBS = list(ThreadpoolController().select(user_api="blas").lib_controllers)
        except (ImportError, OSError, RuntimeError, AttributeError):  # no introspectable BLAS
            _BLAS_LIBS = []
    return _BLAS_LIBS


_BLAS_ACCESS: list | None = None  # [(get, set)] per BLAS library, once bound


def _blas_access() -> list:
    """``(get, set)`` of each BLAS library's thread count (:func:`_blas_libraries`' order).

    For OpenBLAS on its own threads, the library's ``openblas_get_num_threads`` and
    ``openblas_set_num_threads``, bound once where threadpoolctl finds them:

    - a ctypes call, ~0.1 µs, where threadpoolctl's property costs ~0.4 µs warm and
      several times that in an MD step, which reads the counts four to six times;
    - threadpoolctl (3.8) lets only one Python thread set OpenBLAS's count, the first
      that sets it, for as long as it lives: through threadpoolctl, gpal's first call
      took that control for good, and the limits of gpal's calls (and the user's own
      ``threadpool_limits``) in every other thread were ignored, BLAS ran its threads
      inside numba's, and the user's count was not restored after calls that overlapped
      in two threads. gpal's own lock and requests (:func:`_blas_request`) order the
      calls of several threads.

    threadpoolctl's controller for other libraries, and for OpenBLAS on OpenMP (whose
    counts are per thread).
    """
    global _BLAS_ACCESS
    if _BLAS_ACCESS is None:
        access = []
        for lib in _blas_libraries():
            get = put = None
            try:
                if lib.internal_api == "openblas" and lib.threading_layer != "openmp":
                    get = lib._get_symbol("openblas_get_num_threads")
                    put = lib._get_symbol("openblas_set_num_threads")
                    if get is None or put is None or get() != lib.num_threads:
                        get = put = None
            except Exception:  # (another threadpoolctl: its controller)
                get = put = None
            if get is None:
                get, put = (lambda lib=lib: lib.num_threads), lib.set_num_threads
            access.append((get, put))
        _BLAS_ACCESS = access
    return _BLAS_ACCESS


def _blas_counts() -> list[int]:
    """Each BLAS library's thread count now (:func:`_blas_libraries`' order)."""
    return [get() for get, _ in _blas_access()]


def _set_blas(limit: int | None) -> None:
    """BLAS threads: min(the user's count before gpal's calls, limit); None restores it."""
    for (get, put), original in zip(_blas_access(), _BLAS_ORIGINAL):
        want = original if limit is None else min(original, limit)
        if get() != want:
            put(want)


def _blas_request(n: int) -> None:
    """Add a request for at most ``n`` BLAS threads; the smallest request in force holds.

    BLAS thread counts are process-wide: while several gpal calls run (nested, or in
    several Python threads) the smallest request holds, and the count the user had set
    before the first of them is restored when the last one ends (:func:`_blas_release`).
    """
    with _BLAS_LOCK:
        if not _BLAS_REQUESTS:
            _BLAS_ORIGINAL[:] = _blas_counts()
        _BLAS_REQUESTS.append(n)
        _set_blas(min(_BLAS_REQUESTS))


def _blas_release(n: int) -> None:
    """Withdraw a request made by :func:`_blas_request`."""
    with _BLAS_LOCK:
        if n in _BLAS_REQUESTS:  # (not there if the request was interrupted before it was made)
            _BLAS_REQUESTS.remove(n)
        _set_blas(min(_BLAS_REQUESTS) if _BLAS_REQUESTS else None)


@contextlib.contextmanager
def _blas_limit(n: int) -> Iterator[None]:
    """Limit BLAS to at most ``n`` threads while the block runs (see :func:`_blas_request`)."""
    _blas_request(n)
    try:
        yield
    finally:
        _blas_release(n)


class limited:
    """Apply gpal's policy for one call: numba and BLAS threads, restored on exit.

    A context manager: ``with limited(size): ...``.

    Parameters
    ----------
    size : int, optional
        Elements of the call's largest kernel block; BLAS runs ``n`` threads from
        :data:`SMALL_BLOCK` elements on, one thread below it or without a size (see
        the module docstring).

    Limits only ever lower the thread counts in force, so a nested call (``fit``
    calling ``create``) can leave cores that became busy meanwhile, never take more.
    A nested call whose limits are no lower than those of the call around it (in the
    same Python thread) changes nothing and costs ~1 µs instead of ~15 µs: it is what
    each model evaluation of an MD step does (``predict`` calling the descriptor).
    """

    __slots__ = ("size", "_numba_old", "_blas", "_active", "_outer")

    def __init__(self, size: int | None = None):
        self.size = size
        self._numba_old = None  # numba's count to restore, if this call lowered it
        self._blas = None  # this call's BLAS request, if it made one
        self._active = False  # this call is on the thread's stack of limits
        self._outer = False  # the thread's outermost gpal call: restores OpenMP's count

    def __enter__(self) -> None:
        if _DISABLED:
            return None
        stack = getattr(_LOCAL, "limits", None)
        if stack is None:
            stack = _LOCAL.limits = []
        if not stack and not getattr(_LOCAL, "outer", False):
            # before numba is touched: starting its pool may set OpenMP's count already
            _LOCAL.outer = self._outer = True
            try:
                _omp_enter()
                return self._enter(stack)
            except BaseException:  # (Ctrl-C here): undo what was taken, as __exit__ does
                del stack[:]  # (the outermost call's entry, even if pushed before the interrupt)
                self._active = False
                self.__exit__()
                raise
        return self._enter(stack)

    def _enter(self, stack) -> None:
        n = default_threads()
        blas = n if self.size is not None and self.size >= SMALL_BLOCK else 1
        numba = _numba()
        if stack and n >= stack[-1][0] and blas >= stack[-1][1]:
            # the enclosing call's limits are in force and no higher: nothing to lower
            # (numba's count is looked at again: code between the calls may have raised it)
            if numba is None or numba.get_num_threads() <= n:
                return None
        if numba is not None:
            old = numba.get_num_threads()
            if old > n:
                numba.set_num_threads(n)
                self._numba_old = old
        self._blas = blas  # (set first: an interrupt inside the request still releases it)
        try:
            _blas_request(blas)
        except BaseException:
            self._restore()
            raise
        if stack:
            n, blas = min(n, stack[-1][0]), min(blas, stack[-1][1])
        stack.append((n, blas))
        self._active = True
        return None

    def _restore(self) -> None:
        if self._blas is not None:
            _blas_release(self._blas)
            self._blas = None
        if self._numba_old is not None:
            _numba().set_num_threads(self._numba_old)
            self._numba_old = None

    def __exit__(self, *exc) -> bool:
        if self._active:
            _LOCAL.limits.pop()
            self._active = False
        self._restore()
        if self._outer:
            self._outer = _LOCAL.outer = False
            _omp_exit()
        return False


# ------------------------------------------------------------------ OpenMP runtimes
def _omp_initial() -> int:
    """An OpenMP runtime's first thread count: ``OMP_NUM_THREADS`` (its first entry) or
    the cores of the affinity mask."""
    first = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return int(first) if first.isdigit() and int(first) > 0 else available_cores()


def _omp_scan() -> list:
    try:
        from threadpoolctl import ThreadpoolController

        return list(ThreadpoolController().select(user_api="openmp").lib_controllers)
    except (ImportError, OSError, RuntimeError, AttributeError):
        return []


def _omp_libraries() -> list | None:
    """The OpenMP runtimes loaded once numba has launched a loop on its ``omp`` layer
    ([] on another layer), found once; None before numba's first parallel launch."""
    global _OMP_LIBS
    if _OMP_LIBS is None:
        numba = _numba()
        try:
            layer = numba.threading_layer() if numba is not None else None
        except ValueError:  # no parallel launch yet
            return None
        _OMP_LIBS = _omp_scan() if layer == "omp" else []
    return _OMP_LIBS


def _omp_user_values(libs: list) -> list[int]:
    """The user's thread count of each runtime: as seen before gpal's first call, or the
    runtime's first count for one loaded since (by numba)."""
    before = _OMP_BEFORE or {}
    return [before.get(lib.filepath, _omp_initial()) for lib in libs]


def _omp_enter() -> None:
    """At a thread's outermost gpal call: note the user's OpenMP counts."""
    global _OMP_BEFORE
    libs = _omp_libraries()
    if libs is None:
        if _OMP_BEFORE is None:  # once per process, before numba runs anything
            _OMP_BEFORE = {lib.filepath: lib.num_threads for lib in _omp_scan()}
        _LOCAL.omp_user = None
    else:
        _LOCAL.omp_user = [lib.num_threads for lib in libs]


def _omp_set(libs: list, values: list[int]) -> list[int]:
    """Set each runtime's count for this thread; returns the counts it had."""
    now = [lib.num_threads for lib in libs]
    for lib, want, had in zip(libs, values, now):
        if want != had:
            lib.set_num_threads(want)
    return now


def _omp_exit() -> None:
    """At the end of a thread's outermost gpal call: give OpenMP its user counts back."""
    libs = _omp_libraries()
    if libs:
        _omp_set(libs, getattr(_LOCAL, "omp_user", None) or _omp_user_values(libs))
    _LOCAL.omp_user = None


@contextlib.contextmanager
def user_code() -> Iterator[None]:
    """Run the user's code (a baseline calculator) from inside a gpal call with the
    user's OpenMP thread counts, not those numba's loops left."""
    libs = None if _DISABLED or not getattr(_LOCAL, "outer", False) else _omp_libraries()
    if not libs:
        yield
        return
    had = _omp_set(libs, getattr(_LOCAL, "omp_user", None) or _omp_user_values(libs))
    try:
        yield
    finally:
        _omp_set(libs, had)


#: fewest rows per numba thread for which a row-parallel BLAS pass pays (a parallel
#: launch costs ~10-20 µs; a 30-row chunk of a 500-point kernel product ~100 µs)
MIN_ROWS_PER_THREAD = 32


def row_chunks(n_rows: int) -> int:
    """Chunks for a row-parallel BLAS pass (:mod:`gpal._row_blas`) of ``n_rows`` rows.

    Inside a gpal call whose BLAS runs one thread (the pass calls BLAS from each numba
    thread: with BLAS's own threads as well they would oversubscribe): the numba
    threads in force, with at least :data:`MIN_ROWS_PER_THREAD` rows each, at least 1
    (one chunk: the pass on the calling thread, its row scalings in cache, without the
    serial path's temporaries). 0 (the serial numpy path) otherwise: outside gpal's
    calls, with the policy off, with BLAS on more threads, or where the passes cannot
    run.
    """
    stack = getattr(_LOCAL, "limits", None)
    if not stack or stack[-1][1] != 1 or _DISABLED:
        return 0
    # every BLAS library gpal sees at one thread (a library it does not control, or one
    # whose count changed under it, would run threads of its own in each numba thread)
    counts = _blas_counts()
    if not counts or any(c != 1 for c in counts):
        return 0
    top = stack[-1]
    memo = getattr(_LOCAL, "row_threads", None)
    if memo is not None and memo[0] is top:  # (the call's second pass: looked at already)
        n = memo[1]
    else:
        from . import _row_blas

        numba = _numba()
        n = (numba.get_num_threads() if numba is not None else 1) if _row_blas.available() else 0
        _LOCAL.row_threads = (top, n)
    return max(1, min(n, n_rows // MIN_ROWS_PER_THREAD)) if n else 0


_NUMBA: list = []  # [numba module or None] once looked up


def _numba():
    """The numba module (imported on first use; None if it cannot be imported)."""
    if not _NUMBA:
        try:
            import numba
        except ImportError:  # pragma: no cover - numba is a requirement
            numba = None
        _NUMBA.append(numba)
    return _NUMBA[0]


def policy(size_of: Callable[..., int] | None = None) -> Callable[[F], F]:
    """Decorator: run the function under :func:`limited`.

    Parameters
    ----------
    size_of : callable, optional
        ``size_of(*args, **kwargs)`` gives the ``size`` passed to :func:`limited`.
    """

    def deco(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            with limited(None if size_of is None else size_of(*args, **kwargs)):
                return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return deco


@contextlib.contextmanager
def _policy_disabled() -> Iterator[None]:
    """Benchmarks only: the libraries' own threading, gpal's policy off (not thread-safe)."""
    global _DISABLED
    old = _DISABLED
    _DISABLED = True
    try:
        yield
    finally:
        _DISABLED = old
