"""No process-wide side effects, and gpal's threading policy (gpal/_threads.py)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
import time
from pathlib import Path

import numba
import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import gpal
from gpal import SOAP, SparseGP, _threads

from conftest import POLY, SMALL_SOAP, cu_frames

from _subprocess import blas_threads as _blas_threads  # noqa: E402
from _subprocess import run_python as _run  # noqa: E402


# ------------------------------------------------------------------------ side effects
def test_importing_every_module_and_computing_leaves_environment_unchanged():
    # scikit-learn's import sets KMP_DUPLICATE_LIB_OK and KMP_INIT_AT_FORK (README): a
    # clean child imports it first, so what is measured is gpal's own doing
    out = _run("""
        import importlib, os, pkgutil
        for k in [k for k in os.environ if k.startswith("KMP_")]:
            del os.environ[k]
        import sklearn
        before = dict(os.environ)
        import gpal
        names = [m.name for m in pkgutil.iter_modules(gpal.__path__)]
        for name in names:
            importlib.import_module("gpal." + name)
        from ase.build import bulk
        soap = gpal.SOAP(["Cu"], r_cut=4.0, n_max=3, l_max=2, periodic=True)
        soap.derivatives(bulk("Cu", "fcc", a=3.6, cubic=True))  # numba's thread pool starts
        after = dict(os.environ)
        changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        print(len(names), changed)
    """)
    n_modules, changed = out.split(" ", 1)
    assert int(n_modules) >= 15  # cli, learner, descriptors, oracle, ... were all imported
    assert changed.strip() == "[]"


# ------------------------------------------------------------------------ policy
def test_thread_count_validation_and_context():
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises((ValueError, TypeError)):
            gpal.set_threads(bad)
        with pytest.raises((ValueError, TypeError)):
            with gpal.threads(bad):
                pass
    assert gpal.get_threads() is None
    with gpal.threads(1):
        assert gpal.get_threads() == 1 and _threads.default_threads() == 1
        with gpal.threads(None):
            assert gpal.get_threads() is None
        assert gpal.get_threads() == 1
    assert gpal.get_threads() is None
    gpal.set_threads(1)
    try:
        assert gpal.get_threads() == 1
    finally:
        gpal.set_threads(None)


def _probe():
    """What a gpal call sees: (numba threads, BLAS threads)."""
    return numba.get_num_threads(), _blas_threads()


@pytest.fixture
def fit_probe(monkeypatch):
    """Record the thread counts in force while SparseGP.fit factorises."""
    from gpal.model import potential

    seen = []
    orig = potential.SparseGPSolver.fit

    def fit(self, *args, **kwargs):
        seen.append(_probe())
        return orig(self, *args, **kwargs)

    monkeypatch.setattr(potential.SparseGPSolver, "fit", fit)
    return seen


@pytest.fixture(scope="module")
def frames():
    return cu_frames(3, seed=1)


def _model():
    return SparseGP(SOAP(species=["Cu"], periodic=True, weighting=POLY, **SMALL_SOAP), n_sparse=10)


def test_calls_run_with_the_chosen_threads_and_restore_them(fit_probe, frames):
    outside = _probe()
    with gpal.threads(1):
        _model().fit(frames)
    assert fit_probe[-1] == (1, 1)
    assert _probe() == outside


def _quiet_machine(monkeypatch) -> int:
    """Every core free (as gpal sees the load); skips when the process is already limited."""
    cores = _threads.available_cores()
    if numba.get_num_threads() < cores or _blas_threads() < cores:
        pytest.skip("numba or BLAS already limited below the core count")
    monkeypatch.setattr(_threads, "_busy_cores", lambda: 0.0)
    return cores


@pytest.mark.skipif(_threads.available_cores() < 2, reason="needs 2 cores")
def test_quiet_machine_uses_every_core_and_busy_cores_are_left(fit_probe, frames, monkeypatch):
    cores = _quiet_machine(monkeypatch)
    _model().fit(frames)
    # numba's loops take every core; BLAS runs one thread unless a call declares a
    # block of at least SMALL_BLOCK elements (a second OpenBLAS thread spins between
    # numba's parallel loops and slowed a 20-frame fit 2x on an idle 2-core machine)
    assert fit_probe[-1] == (cores, 1)
    with _threads.limited(_threads.SMALL_BLOCK):
        assert _probe() == (cores, cores)
    with _threads.limited(_threads.SMALL_BLOCK - 1):
        assert _probe() == (cores, 1)
    monkeypatch.setattr(_threads, "_busy_cores", lambda: float(cores - 1))
    _model().fit(frames)
    assert fit_probe[-1] == (1, 1)
    monkeypatch.setattr(_threads, "_busy_cores", lambda: float(10 * cores))
    assert _threads.default_threads() == 1


@pytest.mark.skipif(_threads.available_cores() < 2, reason="needs 2 cores")
def test_a_large_fit_gives_its_factorisation_every_core_and_its_rows_one(fit_probe, frames, monkeypatch):
    from gpal.model import evidence, rows

    cores = _quiet_machine(monkeypatch)
    seen_rows = []  # inside the row passes of the evidence fit (blocks of pairs; a periodic
    #                 frame's derivative blocks, _BlockRows, since the search streams them)

    def probed(owner, name):
        orig = getattr(owner, name)

        def wrapped(*a, **k):
            seen_rows.append(_probe())
            return orig(*a, **k)

        monkeypatch.setattr(owner, name, wrapped)

    probed(evidence._Evidence, "_cosine_rows")
    probed(rows._BlockRows, "add")
    monkeypatch.setattr(_threads, "SMALL_BLOCK", 100)  # these 3 frames count as a large fit
    _model().fit(frames)
    assert fit_probe[-1] == (cores, cores)
    assert seen_rows and set(seen_rows) == {(cores, 1)}


def test_user_limits_are_kept(fit_probe, frames):
    old = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        with threadpool_limits(limits=1, user_api="blas"), gpal.threads(2):
            _model().fit(frames)
    finally:
        numba.set_num_threads(old)
    assert fit_probe[-1] == (1, 1)


@pytest.mark.skipif(_threads.available_cores() < 2, reason="needs 2 cores")
def test_small_predictions_use_one_blas_thread(frames, monkeypatch):
    model = _model().fit(frames)
    seen = []
    # the local-std triangular products (once per species and prediction)
    from gpal.model.potential import _LocalStdFactors

    orig = _LocalStdFactors.terms

    def terms(self, *args, **kwargs):
        seen.append(_probe())
        return orig(self, *args, **kwargs)

    monkeypatch.setattr(_LocalStdFactors, "terms", terms)
    monkeypatch.setattr(_threads, "_busy_cores", lambda: 0.0)
    if _blas_threads() < 2:
        pytest.skip("BLAS already runs one thread")
    model.predict(frames[0], return_std=True)
    assert seen and seen[-1][1] == 1
    model.predict(atoms=frames[0], return_std=True)  # atoms by keyword
    assert len(seen) == 2 and seen[-1][1] == 1


def test_nested_calls_keep_the_outer_limits():
    @_threads.policy()
    def inner():
        return _probe()

    @_threads.policy()
    def outer():
        with gpal.threads(2):  # an inner gpal call does not widen the outer call's limits
            return inner()

    with gpal.threads(1):
        assert outer() == (1, 1)


@pytest.mark.skipif(not Path("/proc/loadavg").exists(), reason="Linux /proc only")
def test_a_busy_process_is_seen():
    assert _threads._runnable_tasks() is not None
    busy = subprocess.Popen([sys.executable, "-c", "while 1: pass"])
    try:
        time.sleep(0.5)
        seen = []
        for _ in range(20):
            _threads._LOAD_CACHE["time"] = -1e300
            seen.append(_threads._busy_cores())
            time.sleep(0.01)
        assert max(seen) >= 1.0
    finally:
        busy.kill()
        busy.wait()
        _threads._LOAD_CACHE.update(time=-1e300, busy=0.0, rise=-1.0)


def test_a_moment_of_load_is_not_believed_but_lasting_load_is(monkeypatch):
    """A task runnable for a moment held a second of MD to one thread; a rise now needs a
    second look LOAD_CONFIRM s later, and a fall is taken at once."""
    clock = [1000.0]
    tasks = [(1, 1)]  # (runnable on the machine, runnable of ours)
    monkeypatch.setattr(_threads.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(_threads, "_runnable_tasks", lambda: tasks[0])
    monkeypatch.setattr(_threads, "_LOAD_CACHE", {"time": -1e300, "busy": 0.0, "rise": -1.0})

    def look(after, runnable):
        clock[0] += after
        tasks[0] = (runnable + 1, 1)
        return _threads._busy_cores()

    assert look(0, 0) == 0.0
    assert look(1.5, 1) == 0.0  # a rise, held
    assert look(0.05, 0) == 0.0  # not yet time for the second look
    assert look(0.06, 0) == 0.0  # the second look: gone, a moment of load
    assert look(1.5, 2) == 0.0
    assert look(0.2, 2) == 2.0  # still there: believed
    assert look(0.5, 0) == 2.0  # within LOAD_REFRESH: kept
    assert look(0.6, 0) == 0.0  # a fall: at once
    assert look(1.5, 3) == 0.0
    assert look(0.2, 1) == 1.0  # confirmed, by the smaller count


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="Linux /proc only")
def test_own_busy_threads_are_counted_as_own():
    """A thread of this process working outside the GIL is ours, not another job's."""
    stop = threading.Event()

    def work():
        data = b"x" * (8 << 20)
        while not stop.is_set():
            hashlib.sha256(data).digest()  # releases the GIL: the thread stays runnable

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    try:
        time.sleep(0.2)
        own = [_threads._runnable_tasks()[1] for _ in range(50)]
    finally:
        stop.set()
        worker.join()
    assert min(own) >= 1  # the reading thread itself
    assert max(own) >= 2  # and the worker, at least once


def test_openmp_threads_are_the_users_after_a_call_and_inside_a_baseline():
    """numba's ``omp`` layer sets the calling thread's OpenMP count when it launches a
    loop; a library on the same runtime (tblite's xTB: a GFN1 baseline went from 1.9 to
    126 ms per call beside two busy processes) then ran numba's count of threads against
    OMP_NUM_THREADS=1. After gpal's calls, and inside the baseline a prediction calls,
    every OpenMP runtime has the user's count again."""
    out = _run("""
        import numba
        from threadpoolctl import threadpool_info
        from ase.calculators.emt import EMT
        import gpal
        from conftest import POLY, SMALL_SOAP, cu_frames

        def omp():
            return sorted({d["num_threads"] for d in threadpool_info() if d["user_api"] == "openmp"})

        class Probe(EMT):  # a baseline that notes the OpenMP counts it runs with
            seen = []

            def calculate(self, *args, **kwargs):
                Probe.seen.append(tuple(omp()))
                super().calculate(*args, **kwargs)

        soap = gpal.SOAP(["Cu"], periodic=True, weighting=POLY, **SMALL_SOAP)
        frames = cu_frames(3, seed=1)
        with gpal.threads(2):
            m = gpal.SparseGP(soap, gpal.NormalizedDotProduct(zeta=2), n_sparse=10, baseline=Probe()).fit(frames)
            after_fit = omp()
            m.predict(frames[0], return_std=True)
        import json
        print(json.dumps([numba.threading_layer(), numba.config.NUMBA_NUM_THREADS, after_fit, omp(),
                          sorted(set(Probe.seen))]))
    """, OMP_NUM_THREADS="1")
    import json

    layer, pool, after_fit, after, seen = json.loads(out.strip().splitlines()[-1])
    if layer != "omp" or pool < 2:
        pytest.skip(f"numba's threading layer {layer} with {pool} threads sets no OpenMP count above 1")
    assert after_fit == [1] and after == [1]
    assert seen == [[1]]


def test_an_interrupt_while_a_call_sets_up_its_threads_leaves_nothing_behind(monkeypatch):
    """A Ctrl-C inside ``limited.__enter__`` left the thread marked as inside a gpal call
    (or its limits on the stack, a BLAS request in force): OpenMP counts were no longer
    given back and BLAS stayed capped."""
    real = _threads._blas_request

    def interrupted(n):
        real(n)  # taken, then Ctrl-C before the call records it
        raise KeyboardInterrupt

    monkeypatch.setattr(_threads, "_blas_request", interrupted)
    with pytest.raises(KeyboardInterrupt):
        with _threads.limited():
            pass
    monkeypatch.setattr(_threads, "_blas_request", real)
    assert not getattr(_threads._LOCAL, "outer", False) and not getattr(_threads._LOCAL, "limits", [])
    assert _threads._BLAS_REQUESTS == []
    with _threads.limited():
        assert _threads._LOCAL.outer  # the next call is the outermost again
    assert not _threads._LOCAL.outer


def test_gpal_calls_in_several_python_threads_limit_blas_and_give_it_back():
    """Calls in other Python threads limit BLAS too, and the user's count comes back
    after calls that overlap in two threads (through threadpoolctl, gpal's first call
    took threadpoolctl's one "controlling thread" of OpenBLAS: the other threads'
    limits were ignored and the last call's restore was lost)."""
    out = _run("""
        import threading
        from threadpoolctl import threadpool_info, threadpool_limits
        import gpal
        from gpal import _threads

        def counts():
            return [d["num_threads"] for d in threadpool_info() if d["user_api"] == "blas"]

        print("before", max(counts()))
        main_in, worker_in, main_out = threading.Event(), threading.Event(), threading.Event()

        def worker():  # enters after main and leaves last: its exit restores the count
            main_in.wait()
            with _threads.limited():
                worker_in.set()
                main_out.wait()

        t = threading.Thread(target=worker)
        t.start()
        with _threads.limited():
            main_in.set()
            worker_in.wait()
        main_out.set()
        t.join()
        print("after", max(counts()))

        def lone():
            with _threads.limited():
                print("worker", max(counts()))
            with threadpool_limits(1, user_api="blas"):
                print("user", max(counts()))

        t = threading.Thread(target=lone)
        t.start()
        t.join()
        print("end", max(counts()))
    """, OPENBLAS_NUM_THREADS="2")
    got = dict(line.split() for line in out.splitlines() if line.strip())
    assert got == {"before": "2", "after": "2", "worker": "1", "user": "1", "end": "2"}, out


@pytest.mark.skipif(_threads.available_cores() < 2, reason="needs 2 cores")
def test_learning_steps_outside_fit_and_predict_run_one_blas_thread(frames, monkeypatch):
    """Leave-one-frame-out residuals, the std calibrators, frame selection and target
    covariances run under the policy too: with the libraries' two BLAS threads, a
    calibration on a machine with another busy process took 18 s instead of 1.3 s."""
    import scipy.linalg
    import scipy.optimize

    from gpal.calibration import StdCalibrator, TwoTermCalibrator
    from gpal.learning.targets import TargetSet
    from gpal.selection import cur_selection, design, greedy_batch
    from gpal.sparse_gp import SparseGPSolver

    if _blas_threads() < 2:
        pytest.skip("BLAS already runs one thread")
    model = _model().fit(frames)
    seen = {}

    def probe(owner, name, key):
        orig = getattr(owner, name)

        def wrapped(*a, **k):
            seen.setdefault(key, []).append(_blas_threads())
            return orig(*a, **k)

        monkeypatch.setattr(owner, name, wrapped)

    probe(scipy.linalg, "cho_factor", "loo_residuals")
    probe(scipy.linalg, "cholesky", "loo_residuals")  # (a frame of more observations than sparse points)
    probe(scipy.optimize, "minimize", "calibrator")
    probe(design, "_make_posterior", "greedy_batch")
    probe(np.linalg, "svd", "cur_selection")
    probe(SparseGPSolver, "cov_sor", "targets")
    probe(SparseGP, "_local_variance_terms", "novelty")

    rng = np.random.default_rng(0)
    model.loo_residuals()
    e, s = rng.normal(size=60), rng.uniform(0.5, 1.5, 60)
    TwoTermCalibrator().fit(e, s, np.full(60, 0.1), rng.uniform(0, 1e-3, 60))
    StdCalibrator().fit(e, s)
    greedy_batch(np.eye(6) + 0.1, 0.01, 2)
    cur_selection(rng.normal(size=(20, 8)), 3, random_state=0)
    TargetSet([frames[0]], quantity="energies").covariance(model)
    model.novelty(frames[0])
    assert _blas_threads() >= 2  # the libraries' count again after each call
    assert set(seen) >= {"loo_residuals", "calibrator", "greedy_batch", "cur_selection", "targets", "novelty"}
    assert {k: set(v) for k, v in seen.items()} == {k: {1} for k in seen}
