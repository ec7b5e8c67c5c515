"""A hung oracle call is stopped, with the program it runs: timeouts in gpal's worker
pool, Ctrl-C or SIGTERM in the learner's own process, and what the run log says."""

from __future__ import annotations

import json
import signal
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT

import gpal
from gpal import ActiveLearner, MDSettings, OracleSpec, SparseGP, SOAP, Trigger
from gpal.learning import worker_pool
from gpal.learning.oracle import pool_threads

from _oracles import SleepingProgram, process_ended

pytestmark = pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc (Linux)")


def frames(n: int, marked: int | None = None):
    out = []
    for k in range(n):
        a = bulk("Cu", "fcc", a=3.61, cubic=True)
        a.positions += np.random.default_rng(k).normal(0, 0.03, a.positions.shape)
        if k == marked:
            a.positions[0, 0] = 0.123  # (SlowWhenMarked sleeps on this one)
        out.append(a)
    return out


def wait_for(test, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if test():
            return True
        time.sleep(0.05)
    return test()


def test_a_timed_out_call_is_stopped_and_the_next_labels_run_on_a_new_worker():
    """One worker, a 60 s hang on the first frame, a 3 s timeout. The hung worker kept
    running it, so the next two frames waited behind it and timed out as well (3 of 3
    failed, 3 calls counted for 1 made); now the pool is restarted once the hung call
    is the only one left, and both are labelled."""
    pool = worker_pool(1)
    try:
        pool.submit(time.sleep, 0).result()  # a worker up: its start is not a label
        hung_pid = next(iter(pool._processes))
        oracle = gpal.Oracle(OracleSpec("_oracles:SlowWhenMarked", {"delay": 60.0}), executor=pool,
                             timeout=3.0, retries=0)
        t0 = time.monotonic()
        labelled, failures = oracle.label(frames(3, marked=0))
        took = time.monotonic() - t0
    finally:
        pool.stop()
    assert [f.index for f in failures] == [0] and "timed out after 3 s" in failures[0].reason
    assert labelled[0] is None and labelled[1] is not None and labelled[2] is not None
    assert oracle.n_calls == 3 and oracle.n_restarts == 1 and pool.restarts == 1
    assert took < 20
    assert wait_for(lambda: process_ended(hung_pid))


def test_a_timed_out_program_ends_with_its_worker(tmp_path):
    """A hung DFT program (a file-based calculator's) ends when its call times out; it
    was left running after the run, holding its cores."""
    pool = worker_pool(1)
    try:
        oracle = gpal.Oracle(OracleSpec("_oracles:SleepingProgram", {"directory": str(tmp_path)}),
                             executor=pool, timeout=3.0, retries=0)
        labelled, failures = oracle.label(frames(1))
        pid_files = list(tmp_path.glob("gpal-worker-*/program.pid"))
        assert len(pid_files) == 1
        pid = int(pid_files[0].read_text())
        assert wait_for(lambda: process_ended(pid))  # (before the pool is stopped)
    finally:
        pool.stop()
    assert labelled == [None] and "timed out" in failures[0].reason


def test_a_retry_after_a_timeout_runs_on_the_new_worker(tmp_path):
    """The retry of a timed-out frame is labelled (the new worker's oracle does not hang):
    one failed attempt, then the label."""
    pool = worker_pool(1)
    try:
        oracle = gpal.Oracle(OracleSpec("_oracles:HangsOnce", {"marker": str(tmp_path / "hung")}), executor=pool,
                             timeout=4.0, retries=1)
        reasons = []
        labelled, failures = oracle.label(frames(2), on_failure=lambda i, k, r: reasons.append((i, k, r)))
    finally:
        pool.stop()
    assert not failures and all(a is not None for a in labelled)
    assert [(i, k) for i, k, _ in reasons] == [(0, 1)] and "timed out" in reasons[0][2]
    assert oracle.n_calls == 3 and pool.restarts == 1


def test_ctrl_c_during_a_call_in_this_process_ends_the_program(tmp_path):
    """Ctrl-C (gpal learn turns SIGTERM into it) while the learner's own process waits
    for a DFT program: the program was left running, alone, after gpal had stopped."""
    calc = SleepingProgram(directory=str(tmp_path))
    oracle = gpal.Oracle(calc, retries=0)
    main = threading.main_thread().ident
    pid_file = tmp_path / "program.pid"

    def interrupt():
        wait_for(lambda: pid_file.exists() and pid_file.read_text().strip() != "", 20)
        signal.pthread_kill(main, signal.SIGINT)

    timer = threading.Thread(target=interrupt, daemon=True)
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        oracle.label(frames(1))
    timer.join()
    pid = int(pid_file.read_text())
    assert wait_for(lambda: process_ended(pid))


def test_a_timeout_in_a_run_is_logged_with_its_step_and_the_run_goes_on(tmp_path):
    """The run log had no record of a timed-out call (only a warning, numbered from 0 in
    each batch); now it is an oracle_attempt_failed record with the step, and the frame's
    retry on the new worker is labelled."""
    pool = worker_pool(1)
    try:
        learner = ActiveLearner(
            bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2)),
            OracleSpec("_oracles:HangsOnce", {"marker": str(tmp_path / "hung")}),
            SparseGP(SOAP(species=["Cu"], periodic=True, r_cut=4.0, n_max=3, l_max=2,
                          weighting={"function": "poly", "r0": 4.0, "c": 1, "m": 1}), n_sparse=30),
            run_dir=tmp_path / "run", executor=pool, oracle_timeout=4.0, n_bootstrap=4,
            trigger=Trigger(threshold=0.005), md=MDSettings(temperature=(300, 1200)), progress=False)
        summary = learner.run(20)
    finally:
        pool.stop()
    records = [json.loads(line) for line in open(tmp_path / "run" / "log.jsonl")]
    timed_out = [r for r in records if r.get("event") == "oracle_attempt_failed"]
    assert len(timed_out) == 1 and "timed out after 4 s" in timed_out[0]["error"]
    assert timed_out[0]["reason"] == "bootstrap" and timed_out[0]["attempt"] == 1
    assert pool.restarts == 1 and summary.labelled_frames >= 4


def test_gpal_learn_runs_the_oracle_in_a_worker_when_a_timeout_is_set():
    from gpal.cli import _oracle_pool

    assert _oracle_pool({}, None) is None
    for cfg, timeout, n in (({}, 60.0, 1), ({"workers": 3}, None, 3), ({"workers": 2}, 5.0, 2)):
        pool = _oracle_pool(cfg, timeout)
        try:
            assert isinstance(pool, gpal.learning.WorkerPool) and pool._max_workers == n
        finally:
            pool.stop()


def test_one_worker_computes_with_the_cores_it_has_and_others_with_one():
    import os
    from concurrent.futures import ThreadPoolExecutor

    cpus = len(os.sched_getaffinity(0))
    pool = worker_pool(1)
    try:
        assert pool_threads(pool) == cpus
    finally:
        pool.stop()
    with ThreadPoolExecutor(1) as ex:
        assert pool_threads(ex) == 1
    assert pool_threads(None) == 1


@pytest.mark.parametrize("workers", [0, 1])
def test_the_oracle_gets_the_frames_magnetic_moments_and_train_xyz_keeps_them(tmp_path, workers):
    """Frames reach the oracle with their initial magnetic moments (in this process and
    in a worker) and train.xyz holds them beside the label computed from them (it held
    none: a relabelling from train.xyz started from no moments)."""
    from ase.io import read

    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))
    moments = np.where(np.arange(len(atoms)) % 2 == 0, 1.5, -0.5)
    atoms.set_initial_magnetic_moments(moments)
    pool = worker_pool(1) if workers else None
    try:
        learner = ActiveLearner(
            atoms, OracleSpec("_oracles:MagmomEMT"),
            SparseGP(SOAP(species=["Cu"], periodic=True, r_cut=4.0, n_max=3, l_max=2,
                          weighting={"function": "poly", "r0": 4.0, "c": 1, "m": 1}), n_sparse=30),
            run_dir=tmp_path / "run", executor=pool, n_bootstrap=4, trigger=Trigger(threshold=0.005),
            md=MDSettings(temperature=600), progress=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # (the small model's calibration caveats)
            learner.run(20)
    finally:
        if pool is not None:
            pool.stop()
    train = read(tmp_path / "run" / "train.xyz", ":")
    assert len(train) >= 4
    from ase.calculators.emt import EMT

    got, _ = gpal.Oracle(OracleSpec("_oracles:MagmomEMT")).label([atoms])  # (in memory: labels readable)
    assert np.array_equal(got[0].get_initial_magnetic_moments(), moments)
    assert got[0].get_potential_energy() == pytest.approx(train[0].get_potential_energy(), abs=10.0)
    for frame in train:
        assert np.array_equal(frame.get_initial_magnetic_moments(), moments)
        bare = frame.copy()
        bare.calc = EMT()
        assert frame.get_potential_energy() == pytest.approx(bare.get_potential_energy() + 0.1 * moments.sum())


class _LooseFutures:
    """An executor whose futures, like dask's ClientExecutor's, never say they are running:
    ``cancel()`` succeeds on a call that runs on (and is paid for)."""

    def __init__(self):
        self._threads = []

    def submit(self, fn, *args, **kwargs):
        import concurrent.futures as cf

        fut = cf.Future()

        def run():
            try:
                res = fn(*args, **kwargs)
            except BaseException as exc:  # noqa: BLE001 (handed to the future)
                if not fut.cancelled():
                    fut.set_exception(exc)
                return
            if not fut.cancelled():
                fut.set_result(res)

        t = threading.Thread(target=run, daemon=True)
        t.start()
        self._threads.append(t)
        return fut


def test_a_timed_out_call_on_an_executor_whose_futures_cancel_while_running_stays_counted(tmp_path):
    """On dask the timed-out call was 'cancelled' (its future's cancel() succeeded while the
    task ran on) and subtracted from the count: 1 call counted for 2 made."""
    from gpal.learning.oracle import Oracle, OracleSpec

    ex = _LooseFutures()
    o = Oracle(OracleSpec("_oracles:HangsOnce", {"marker": str(tmp_path / "hung"), "delay": 3.0}),
               executor=ex, timeout=0.5, retries=1)
    a = bulk("Cu", cubic=True)
    a.rattle(0.05, seed=1)
    labelled, failures = o.label([a])
    assert labelled[0] is not None and not failures
    assert o.n_calls == 2  # the timed-out call ran (and finishes on its worker), then the retry
    for t in ex._threads:
        t.join(10)


def test_an_executor_that_stops_between_calls_stops_the_labelling_not_the_process(tmp_path):
    """A dask client closed mid-run: its submit raised ClosedClientError straight out of
    run(); the learner's 'worker processes stopped ... resume' path takes it now."""
    from gpal.learning.oracle import BrokenOracleError, Oracle

    class ClosedClientError(Exception):
        pass

    class Closed:
        def submit(self, *args, **kwargs):
            raise ClosedClientError("Client is closed")

    o = Oracle(OracleSpec("ase.calculators.emt:EMT"), executor=Closed())
    with pytest.raises(BrokenOracleError, match="ClosedClientError: Client is closed"):
        o.label([bulk("Cu", cubic=True)])


@pytest.mark.parametrize("parallel", [False, True], ids=["this-process", "executor"])
def test_a_ctrl_c_just_after_a_call_returns_acts_after_its_label_is_handed_on(monkeypatch, parallel):
    """Ctrl-C (or gpal learn's SIGTERM) in the ms between the oracle's return and the
    label's write lost a label paid for; now it is held until on_label (the learner's
    write to train.xyz) has run, then ends the labelling, and the next frame is not sent."""
    import concurrent.futures as cf

    from gpal.learning import oracle as oracle_mod

    check = oracle_mod._check_result

    def interrupted_check(res, n):  # the first statement after the call: Ctrl-C arrives
        signal.raise_signal(signal.SIGINT)
        return check(res, n)

    monkeypatch.setattr(oracle_mod, "_check_result", interrupted_check)
    got = []
    pool = cf.ThreadPoolExecutor(1) if parallel else None
    try:
        oracle = gpal.Oracle(OracleSpec("ase.calculators.emt:EMT") if parallel else EMT(),
                             executor=pool, retries=0)
        with pytest.raises(KeyboardInterrupt):
            oracle.label(frames(1 if parallel else 2), on_label=lambda i, a: got.append((i, a.get_potential_energy())))
    finally:
        if pool is not None:
            pool.shutdown()
    assert [i for i, _ in got] == [0] and np.isfinite(got[0][1])
    assert oracle.n_calls == 1
