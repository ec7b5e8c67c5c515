"""ActiveLearner: the loop, persistence and resume after kill -9, faults, parallel oracles."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.io import read

import gpal
from gpal import SOAP, ActiveLearner, MDSettings, OracleSpec, SparseGP, Trigger
from gpal.calibration import StoppingRule

from _oracles import CountingEMT, FlakyEMT, NaNCalculator, NoStressEMT
from conftest import POLY, SMALL_SOAP, UnsavableConstraint, cu_frames

pytestmark = pytest.mark.slow


def start():
    return bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))


def small_model():
    return SparseGP(SOAP(species=["Cu"], periodic=True, weighting=POLY, **SMALL_SOAP), n_sparse=30)


def learner(run_dir, oracle=None, **kw):
    kw.setdefault("trigger", Trigger(threshold=0.005))
    kw.setdefault("md", MDSettings(temperature=(300, 1200)))
    return ActiveLearner(start(), oracle if oracle is not None else EMT(), small_model(),
                         run_dir=run_dir, progress=False, **kw)


def frames_in(path):
    return read(str(path), ":") if Path(path).exists() else []


def test_run_writes_everything(tmp_path):
    val = cu_frames(3, seed=9, size=(2, 2, 2))
    L = learner(tmp_path / "run", validation=val, sparse_per_label=5)
    summary = L.run(150)
    assert summary.steps == 150 and summary.bootstrap_frames == 4
    train = frames_in(tmp_path / "run" / "train.xyz")
    assert len(train) == summary.labelled_frames == len(L.model.frames_) == L.oracle.n_calls
    assert summary.labelled_frames > 4  # the trigger fired during MD
    for a in train:  # labels as ASE writes them
        assert a.get_forces().shape == (len(a), 3) and np.isfinite(a.get_potential_energy())
    records = [json.loads(line) for line in open(tmp_path / "run" / "log.jsonl")]
    assert any(r.get("event") == "label" for r in records)
    assert any("temperature" in r for r in records)
    # the adaptive trigger's first check after each update is marked as its reference
    assert any(r.get("reference") for r in records if r.get("event") == "check")
    assert all(r["volume"] == pytest.approx(start().get_volume()) for r in records if "target_T" in r)
    assert (tmp_path / "run" / "learning_curve.png").stat().st_size > 1000
    assert "force_rmse" in summary.validation
    model = gpal.load(tmp_path / "run" / "model.npz")
    assert len(model.frames_) == len(train)
    assert "forces_std" in model.calibration_  # calibrated on the validation frames
    assert "oracle calls" in str(summary)


def test_resume_after_kill_loses_no_label_and_asks_none_twice(tmp_path):
    run = tmp_path / "run"
    script = tmp_path / "learn.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_learner import learner
        from gpal import Trigger
        L = learner({str(run)!r}, "ase.calculators.emt:EMT", checkpoint_every=3,
                    trigger=Trigger(threshold=0.002))
        L.run(100000)
    """))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(gpal.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, str(script)], env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            if (run / "state.json").exists() and len(frames_in(run / "train.xyz")) >= 9:
                break
            if proc.poll() is not None:
                pytest.fail(f"learner exited early: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.5)
        else:
            pytest.fail("learner did not label enough frames in time")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    labelled = frames_in(run / "train.xyz")
    L = ActiveLearner.resume(run, progress=False)
    assert len(L.model.frames_) == len(labelled)  # the frames the checkpoint missed are in
    step0, calls0 = L.step, L.oracle.n_calls
    L.run(step0 + 40)
    after = frames_in(run / "train.xyz")
    assert after[: len(labelled)] == labelled or all(
        np.array_equal(a.positions, b.positions) for a, b in zip(after, labelled)
    )
    assert len(after) == len(L.model.frames_) == L.n_labelled
    pos = [a.positions.round(8).tobytes() for a in after]
    assert len(set(pos)) == len(pos)  # no frame was labelled twice
    assert L.oracle.n_calls >= calls0


def test_oracle_failures_are_logged_and_skipped(tmp_path):
    L = learner(tmp_path / "run", FlakyEMT(fail_every=4), oracle_retries=0)
    summary = L.run(120)
    assert summary.oracle_failures > 0
    records = [json.loads(line) for line in open(tmp_path / "run" / "log.jsonl")]
    fails = [r for r in records if r.get("event") == "oracle_failure"]
    assert fails and "SCF did not converge" in fails[0]["reason"]
    assert len(frames_in(tmp_path / "run" / "train.xyz")) == summary.labelled_frames


def test_a_result_of_the_wrong_shape_is_the_oracles_failure(tmp_path):
    """Forces missing an atom crashed the train.xyz writer, with the calls not counted."""
    from _oracles import ShortForcesEMT

    L = learner(tmp_path / "run", ShortForcesEMT(), oracle_retries=0)
    summary = L.run(60)
    fails = [r for r in L._log_records("oracle_failure")]
    assert fails and all("forces of shape (31, 3), expected (32, 3)" in r["reason"] for r in fails)
    assert summary.oracle_calls == summary.labelled_frames + summary.oracle_failures


def test_oracle_retry_recovers(tmp_path):
    L = learner(tmp_path / "run", FlakyEMT(fail_every=4), oracle_retries=2)
    summary = L.run(60)
    assert summary.oracle_failures == 0 and summary.oracle_calls > summary.labelled_frames
    # every failed attempt is in the log, with the frame's step and the reason, so the log
    # alone accounts for every call paid for (a retry that recovered was a stderr line only)
    failed = _events(tmp_path / "run", "oracle_attempt_failed")
    assert len(failed) == summary.oracle_calls - summary.labelled_frames
    assert all("SCF did not converge" in r["error"] and r["attempt"] >= 1 and "step" in r for r in failed)
    # without validation frames the learning curve shows the labels' held-out error
    labels, errors, what = L._curve_data()
    assert what.startswith("force RMSE, held-out labels") and errors and all(e > 0 for _, e in errors)
    assert [c for _, c in labels] == sorted(c for _, c in labels)


class NaNOnceEMT(EMT):
    """EMT whose first evaluation returns NaN forces (a transient failure); counts its runs."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.runs = 0

    def calculate(self, *args, **kwargs):
        super().calculate(*args, **kwargs)
        self.runs += 1
        if self.runs == 1:
            self.results["forces"] = self.results["forces"] * np.nan


def test_a_retry_computes_the_frame_again():
    # the retry must run the calculator, not read back ASE's cache of the failed attempt
    calc = NaNOnceEMT()
    oracle = gpal.Oracle(calc, retries=2)
    labelled, failures = oracle.label([start()])
    assert not failures and labelled[0] is not None
    assert calc.runs == 2 and oracle.n_calls == 2
    assert np.isfinite(labelled[0].get_forces()).all()


def test_a_frame_after_a_failed_one_gets_a_reset_calculator(caplog):
    # EMT fails on Si half set up (no neighbour list); the next frame's first attempt
    # must not inherit that state (it failed with "'EMT' object has no attribute 'nl'")
    si = start().copy()
    si.symbols[:] = "Si"
    oracle = gpal.Oracle(EMT(), retries=1)
    with caplog.at_level("WARNING", logger="gpal"):
        labelled, failures = oracle.label([si], first=3)  # (the retry resets, and fails again)
        assert labelled[0] is None and "frame 3 (attempt 2)" in caplog.text
        si.rattle(0.01, seed=1)
        labelled, failures = oracle.label([si])  # the same failure, named as such
        assert labelled[0] is None and "No EMT-potential for Si" in failures[0].reason
        labelled, failures = oracle.label([start()])
    assert labelled[0] is not None and not failures
    assert oracle.n_calls == 5  # Si twice and twice, Cu once
    assert "AttributeError" not in caplog.text


def test_the_summary_names_calls_that_left_no_label(tmp_path):
    L = learner(tmp_path / "run", NaNOnceEMT(), n_bootstrap=2)
    summary = L.run(10)  # the first bootstrap call returns NaN forces; its retry labels the frame
    assert summary.oracle_calls == summary.labelled_frames + 1 and summary.oracle_failures == 0
    assert summary.oracle_calls_unlabelled == 1
    assert "; 1 left no label: failed attempts, or cut off by an interrupt or kill)" in str(summary)


def test_nan_oracle_stops_cleanly_when_asked(tmp_path):
    with pytest.raises(gpal.OracleError, match="non-finite"):
        learner(tmp_path / "run", NaNCalculator(), on_oracle_failure="stop", oracle_retries=0).run(10)
    assert not frames_in(tmp_path / "run" / "train.xyz")  # nothing wrong was written


def test_an_oracle_that_cannot_label_the_system_is_not_asked_for_every_bootstrap_frame(tmp_path):
    """A species the oracle lacks failed on each of the bootstrap frames (8 calls, 8 warnings)."""
    L = learner(tmp_path / "run", NaNCalculator(), oracle_retries=1)  # on_oracle_failure="skip"
    with pytest.raises(gpal.OracleError, match="failed on the run.s first 2 frames .*non-finite.*ActiveLearner.resume"):
        L.run(10)
    assert L.oracle.n_calls == 4  # two frames, each with its retry
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert (state["oracle_calls"], state["oracle_failures"]) == (4, 2)


def test_an_oracle_that_fails_on_every_frame_after_its_first_labels_stops_the_run(tmp_path):
    """on_oracle_failure = "skip" passes a frame the oracle cannot label, not an oracle
    that labels none any more: 3 failed frames in a row stop the run as a broken oracle
    does (gpal learn: exit 1; the run ran to its end with exit 0, every label it asked
    for failing twice)."""
    class FailsAfter(EMT):
        n = 0

        def calculate(self, atoms=None, *args, **kwargs):
            FailsAfter.n += 1
            if FailsAfter.n > 6:
                raise RuntimeError("SCF did not converge (simulated)")
            super().calculate(atoms, *args, **kwargs)

    L = learner(tmp_path / "run", FailsAfter(), oracle_retries=1)
    with pytest.raises(gpal.OracleStoppedError, match="failed on the last 3 frames in a row, each after 2 attempt"):
        L.run(400)
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["oracle_failures"] == 3 and state["oracle_calls"] == 6 + 6
    assert len(frames_in(tmp_path / "run" / "train.xyz")) == 6
    resumed = ActiveLearner.resume(tmp_path / "run", EMT(), progress=False)
    assert resumed.run(resumed.step + 40).labelled_frames >= 6  # (a fixed oracle: the run goes on)


def test_bootstrap_candidates_keep_the_models_min_distance(tmp_path):
    """A large rattle (0.3 Å on Cu) put two atoms 0.35 Å apart in a bootstrap frame: its
    label was paid for, then the fit refused it, and every resume failed the same way.
    Such copies are drawn again; a rattle that keeps making them is refused by name."""
    L = learner(tmp_path / "run", rattle=0.3)
    cands = L._candidates(np.random.default_rng(0))
    assert len(cands) >= L.n_candidates
    assert all(not np.any(L.model._min_pair_distance(a) < L.model.min_distance) for a in cands)
    with pytest.raises(ValueError, match=r"rattle = 5 Å put two atoms closer than the model's min_distance = 0.5 Å"):
        ActiveLearner(bulk("Cu", "fcc", a=3.61, cubic=True).repeat(3), EMT(), small_model(), rattle=5.0,
                      run_dir=tmp_path / "big", progress=False)  # (refused before the folder holds a run)
    assert not (tmp_path / "big").exists()


def test_one_bootstrap_frame_the_oracle_cannot_label_is_skipped(tmp_path):
    """Stopping at the first failed frame left a run that could never start."""
    class FailsOnTheFirstFrame(EMT):
        first = None

        def calculate(self, atoms=None, *args, **kwargs):
            key = atoms.positions.round(6).tobytes()
            if self.first in (None, key):
                self.first = key
                raise RuntimeError("SCF did not converge (simulated)")
            super().calculate(atoms, *args, **kwargs)

    L = learner(tmp_path / "run", FailsOnTheFirstFrame(), oracle_retries=0)
    L.run(10)
    # the frame is replaced by the next of bootstrap.xyz's spares: the run starts from 4
    # labels (with 3, a water run at 500 K never labelled again: its calibration rested on
    # 2 frames and its raw force std was 100x too small)
    assert L.n_labelled == 4 and L.oracle.n_failures == 1 and L.oracle.n_calls == 5
    boot = read(str(tmp_path / "run" / "bootstrap.xyz"), ":")
    train = frames_in(tmp_path / "run" / "train.xyz")
    assert len(boot) == 8 and [next(i for i, b in enumerate(boot) if np.allclose(b.positions, a.positions))
                                for a in train[:4]] == [1, 2, 3, 4]
    failed = frames_in(tmp_path / "run" / "failed.xyz")  # the geometry, to try by hand
    assert len(failed) == 1 and np.allclose(failed[0].positions, boot[0].positions)
    assert "SCF did not converge" in failed[0].info["gpal_failure"]
    assert failed[0].info["gpal_reason"] == "bootstrap"


def test_hanging_oracle_times_out(tmp_path):
    with ProcessPoolExecutor(2) as pool:
        spec = OracleSpec("_oracles:SlowEMT", {"delay": 60.0})
        oracle = gpal.Oracle(spec, executor=pool, timeout=1.0, retries=0)
        t0 = time.time()
        labelled, failures = oracle.label([start()])
        assert labelled == [None] and "timed out" in failures[0].reason
        assert time.time() - t0 < 10
        for p in pool._processes.values():  # do not wait a minute for the sleeper
            p.kill()


def test_labels_from_an_executor_arrive_as_they_finish_and_survive_ctrl_c():
    """Labels were taken in the order sent: three fast ones behind a slow one were not on
    disk until it returned, and Ctrl-C meanwhile threw them away (paid, then paid again
    on resume). Now each is handed over as it finishes."""
    import signal
    import threading
    from concurrent.futures import ThreadPoolExecutor

    frames = [start() for _ in range(4)]
    for k, a in enumerate(frames):
        a.positions += np.random.default_rng(k).normal(0, 0.02, a.positions.shape)
    frames[0].positions[0, 0] = 0.123  # the slow one, sent first
    arrived = []
    with ThreadPoolExecutor(2) as pool:
        oracle = gpal.Oracle(OracleSpec("_oracles:SlowWhenMarked", {"delay": 6.0}), executor=pool, retries=0)
        main = threading.main_thread().ident
        timer = threading.Timer(3.0, lambda: signal.pthread_kill(main, signal.SIGINT))
        timer.start()
        t0 = time.monotonic()
        try:
            with pytest.raises(KeyboardInterrupt):
                oracle.label(frames, on_label=lambda i, a: arrived.append(i))
        finally:  # a failure must not leave the Ctrl-C to land in the next test
            timer.cancel()
        waited = time.monotonic() - t0  # (the pool's exit then waits for the slow thread)
    assert sorted(arrived) == [1, 2, 3] and waited < 5.0
    assert oracle.n_calls == 4


def test_gpals_pool_is_sent_a_call_only_when_a_worker_is_free_and_stops_at_once(tmp_path):
    """All frames were sent to the pool at once: the calls a worker had not started yet
    (in the pool's queue, where they cannot be cancelled) were counted as calls made on
    Ctrl-C, and started afterwards. WorkerPool.stop ends a running call and the program
    it started."""
    import threading

    from gpal.learning.oracle import worker_pool

    frames = [start() for _ in range(3)]
    for k, a in enumerate(frames):
        a.positions += np.random.default_rng(k).normal(0, 0.02, a.positions.shape)
    notes = tmp_path / "notes"
    notes.mkdir()
    arrived = []
    main = threading.main_thread().ident

    def interrupt_once_a_call_hangs():
        deadline = time.time() + 60
        while time.time() < deadline and not any(notes.iterdir()):
            time.sleep(0.05)
        signal.pthread_kill(main, signal.SIGINT)

    pool = worker_pool(1)
    try:
        oracle = gpal.Oracle(OracleSpec("_oracles:FastThenHangs", {"note_dir": str(notes), "delay": 300.0}),
                             executor=pool, retries=0)
        watcher = threading.Thread(target=interrupt_once_a_call_hangs)
        watcher.start()
        with pytest.raises(KeyboardInterrupt):
            oracle.label(frames, on_label=lambda i, a: arrived.append(i))
        watcher.join()
        t0 = time.time()
        pool.stop()
        took = time.time() - t0
        pids = [int(p) for f in notes.iterdir() for p in f.read_text().split()]
        deadline = time.time() + 10
        while time.time() < deadline and any(_running(p) for p in pids):
            time.sleep(0.1)
        left = [p for p in pids if _running(p)]
    finally:
        for pid in [int(p) for f in notes.iterdir() for p in f.read_text().split()]:
            with contextlib.suppress(ProcessLookupError):  # (nothing of this test left running)
                os.kill(pid, signal.SIGKILL)
    assert arrived == [0] and oracle.n_calls == 2  # the first label, the call that hung; not the third
    assert took < 10 and len(pids) == 2 and not left  # the worker and the program its call started


def _running(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie waiting for its reaper has ended)."""
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_timed_out_label_that_never_started_is_not_counted():
    """A task that reached its deadline while still queued (one worker, busy) was counted
    as an oracle call: the run's count and its max_oracle_calls budget were overstated."""
    from concurrent.futures import ThreadPoolExecutor

    from _oracles import StartsRecorded

    StartsRecorded.started.clear()
    frames = [start() for _ in range(3)]
    for k, a in enumerate(frames):
        a.positions += np.random.default_rng(k).normal(0, 0.02, a.positions.shape)
    with ThreadPoolExecutor(1) as pool:
        oracle = gpal.Oracle(OracleSpec("_oracles:StartsRecorded", {"delay": 2.5}), executor=pool,
                             timeout=1.0, retries=0)
        labelled, failures = oracle.label(frames)
        counted = oracle.n_calls
    assert labelled == [None] * 3 and len(failures) == 3
    assert counted == len(StartsRecorded.started) < 3


def test_blow_up_rolls_back_and_labels(tmp_path):
    L = learner(tmp_path / "run", max_force=0.3, trigger=Trigger(threshold=10.0))
    summary = L.run(40)
    assert summary.rollbacks > 0
    reasons = [a.info.get("gpal_reason") for a in frames_in(tmp_path / "run" / "train.xyz")]
    assert "rollback" in reasons
    # blow-ups do not break the rate cap: at most 3 labels in any 100 steps of the walker
    records = [json.loads(line) for line in open(tmp_path / "run" / "log.jsonl")]
    steps = [r["step"] for r in records if r.get("event") == "label" and r["reason"] != "bootstrap"]
    assert all(sum(1 for t in steps if s <= t < s + 100) <= 3 for s in steps)
    rolls = [r for r in records if r.get("event") == "rollback"]
    assert len(rolls) == summary.rollbacks
    if summary.rollbacks > 3:
        assert not all(r["labelled"] for r in rolls)


def test_parallel_walkers_process_pool(tmp_path):
    with ProcessPoolExecutor(2) as pool:
        L = learner(tmp_path / "run", "ase.calculators.emt:EMT", n_walkers=2, executor=pool)
        summary = L.run(60)
    assert len(L.walkers) == 2
    assert summary.labelled_frames == len(frames_in(tmp_path / "run" / "train.xyz"))


def test_dask_local_cluster(tmp_path):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None) as cluster:
        with distributed.Client(cluster) as client:
            L = learner(tmp_path / "run", "ase.calculators.emt:EMT", executor=client.get_executor())
            summary = L.run(40)
    assert summary.labelled_frames >= 4
    for a in frames_in(tmp_path / "run" / "train.xyz"):
        ref = a.copy()
        ref.calc = EMT()
        assert a.get_potential_energy() == pytest.approx(ref.get_potential_energy(), abs=1e-6)  # xyz keeps 8 decimals


def test_stopping_rule_ends_the_run(tmp_path):
    val = cu_frames(2, seed=19, size=(2, 2, 2))
    rule = StoppingRule(tolerance=50.0, patience=1, use="scale")
    L = learner(tmp_path / "run", validation=val, stopping=rule, check_every=20, md=MDSettings(temperature=600))
    summary = L.run(1000)
    assert summary.stopped_early and summary.steps < 1000
    assert rule.history and rule.history[-1].stop


def test_the_summary_says_when_the_stopping_rule_was_never_judged(tmp_path):
    """Under a temperature ramp every check before its top is deferred: a run that ends
    at the top says its rule was never judged, and why, instead of nothing."""
    rule = StoppingRule(tolerance=50.0, patience=1, use="scale")
    L = learner(tmp_path / "run", stopping=rule, check_every=10, md=MDSettings(temperature=(300, 1200)))
    summary = L.run(40)
    assert not summary.stopped_early and summary.stop_checks["judged"] == 0
    assert summary.stop_checks["deferred"] >= 3
    line = next(x for x in str(summary).splitlines() if "stopping rule" in x)
    assert "never judged" in line and "checks deferred; the last because" in line
    reasons = [r["deferred"] for r in L._log_records("stop_check")]
    assert reasons[0].startswith("the temperature protocol is at")  # (the last step: too few MD labels)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["stop_checks"]["judged"] == 0
    assert "cost none" not in str(summary)  # (no validation frames given, none counted)


def test_a_ramp_over_the_run_is_judged_at_its_last_step(tmp_path):
    """The README: the ramp spans the first run, so the rule is first judged at its last
    step; with checks every 100 steps only, a run(150) never reached the ramp's top."""
    val = cu_frames(2, seed=19, size=(2, 2, 2))
    rule = StoppingRule(tolerance=50.0, patience=2, use="scale")
    L = learner(tmp_path / "run", validation=val, stopping=rule, check_every=100,
                md=MDSettings(temperature=(300, 1200)))
    with pytest.warns(UserWarning, match=r"cannot end this run early: .* its last step \(150\); continue"):
        summary = L.run(150)
    assert (summary.stop_checks["judged"], summary.stop_checks["deferred"]) == (1, 1)
    assert [d.step for d in rule.history] == [149]
    # the next run's first scheduled check (step 200) is too close to the last one (149)
    # to count as another of the rule's consecutive checks: the next is at 300
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (past the ramp's top: the rule can stop it, no warning)
        summary = L.run(1000)
    assert [d.step for d in rule.history] == [149, 300] and summary.stopped_early


def test_stop_checks_repeated_after_a_kill_count_once(tmp_path):
    """A run killed after its last checkpoint logs the checks past it again when resumed;
    the summary counts the timeline the run continued, not both."""
    L = learner(tmp_path / "run", stopping=StoppingRule(tolerance=50.0, patience=3, use="scale"))
    (tmp_path / "run").mkdir()
    for step, stop in [(20, False), (40, False), (60, True)]:  # before the kill
        L._log({"event": "stop_check", "step": step, "stop": stop})
    L._log({"event": "stop_check", "step": 10, "deferred": "fewer than 4 labels"})  # resumed at step 0
    for step in (20, 40):  # made again; the kill's step 60 was not reached again
        L._log({"event": "stop_check", "step": step, "stop": False})
    assert L._stop_checks() == {"judged": 2, "deferred": 1, "last_deferred": "fewer than 4 labels",
                                "met_at": None, "last_reason": ""}
    # killed again after checks at 60 and 80, resumed at step 50, ended before its next check
    for step in (60, 80):
        L._log({"event": "stop_check", "step": step, "stop": True})
    L._log({"event": "resume", "step": 50})
    assert L._stop_checks()["judged"] == 2 and L._stop_checks()["met_at"] is None


def test_run_again_after_an_interrupt_in_a_model_update(tmp_path, monkeypatch):
    """A notebook's Kernel > Interrupt landing inside a model update leaves the model in
    memory cut short; run() again continues from the run folder (as resume does) and
    never saves the broken model over the good one."""
    @dataclasses.dataclass
    class LocalTrigger(Trigger):  # a notebook's own rule (not importable: kept from memory)
        pass

    L = learner(tmp_path / "run", trigger=LocalTrigger(threshold=0.005))
    L.run(20)
    saved = (tmp_path / "run" / "model.npz").read_bytes()
    original = SparseGP.update

    def cut_short(self, *a, **k):  # half an update: the weights already overwritten
        self.alpha_ = np.full_like(self.alpha_, np.nan)
        raise KeyboardInterrupt

    monkeypatch.setattr(SparseGP, "update", cut_short)
    with pytest.raises(KeyboardInterrupt):
        L.run(200)
    assert (tmp_path / "run" / "model.npz").read_bytes() == saved
    L.checkpoint()  # (a checkpoint by hand keeps the saved model too)
    assert (tmp_path / "run" / "model.npz").read_bytes() == saved
    monkeypatch.setattr(SparseGP, "update", original)
    L.log_every = 7  # a setting changed after the interrupt holds
    summary = L.run(200)
    assert summary.steps == 200 and np.all(np.isfinite(L.model.alpha_))
    assert L.log_every == 7 and type(L.trigger) is LocalTrigger
    labels = frames_in(tmp_path / "run" / "train.xyz")
    assert len(L.model.frames_) == len(labels) == summary.labelled_frames
    assert summary.oracle_calls == len(labels)
    # another error in an update (no memory): the label is in train.xyz, not in the model
    # (restored as it was); run() again took it from the run folder (it had gone on from
    # memory, and the run's model.npz ended a label short of its summary)

    def no_memory(self, *a, **k):
        raise MemoryError

    monkeypatch.setattr(SparseGP, "_observations", no_memory)
    with pytest.raises(MemoryError):
        L.run(600)
    monkeypatch.undo()
    assert len(frames_in(tmp_path / "run" / "train.xyz")) == len(L.model.frames_) + 1
    summary = L.run(700)
    labels = frames_in(tmp_path / "run" / "train.xyz")
    assert len(L.model.frames_) == len(labels) == summary.labelled_frames
    assert len(gpal.load(tmp_path / "run" / "model.npz").frames_) == len(labels)


def test_a_train_xyz_that_cannot_be_written_stops_before_any_call(tmp_path, monkeypatch):
    import os

    L = learner(tmp_path / "run", n_bootstrap=2)
    L.run(10)
    calls = L.oracle.n_calls
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **k: False if str(p).endswith("train.xyz") else real(p, mode))
    with pytest.raises(gpal.GpalError, match="train.xyz is not writable, so a label paid for could not be saved"):
        L.run(200)
    assert L.oracle.n_calls == calls


def test_a_new_learner_does_not_take_over_another_run(tmp_path):
    L = learner(tmp_path / "run")
    L.run(20)
    labels = (tmp_path / "run" / "train.xyz").read_text()
    with pytest.raises(gpal.GpalError, match="already holds a run; ActiveLearner.resume"):
        learner(tmp_path / "run").run(40)  # e.g. a script run a second time
    assert (tmp_path / "run" / "train.xyz").read_text() == labels  # nothing mixed in
    L.run(30)  # the learner that made the run continues it
    assert ActiveLearner.resume(tmp_path / "run").run(40).steps == 40  # and so does a resume


def test_resume_keeps_the_stopping_rule_and_its_count(tmp_path):
    # every check passes (tolerance 50 eV/Å); patience 3 at checks every 20 steps
    L = learner(tmp_path / "run", stopping=StoppingRule(tolerance=50.0, patience=3, use="scale"),
                check_every=20, md=MDSettings(temperature=600), n_bootstrap=2,
                trigger=Trigger(threshold=0.001, every=2, max_labels=10, adaptive=False))
    L.run(41)  # checks at steps 20 and 40 (the last)
    streak = L.stopping._streak
    assert 1 <= streak < 3 and not L.stopping.history[-1].stop
    R = ActiveLearner.resume(tmp_path / "run")  # the run's oracle is rebuilt (EMT)
    assert R.stopping is not None and R.stopping.tolerance == 50.0 and R.stopping.patience == 3
    summary = R.run(1000)
    # the resumed rule counts on from where it was: 3 - streak more checks, not 3
    assert summary.stopped_early and len(R.stopping.history) == 3 - streak
    with pytest.raises(ValueError, match="step must increase"):
        R.stopping.update(R.stopping.history[-1].step, 1.0)


def test_windowed_labels_are_made_exact_on_the_refit_schedule_and_resume_keeps_the_setting(tmp_path):
    L = learner(tmp_path / "run", exact_frames=0, optimize_every=0, sparse_refresh=False,
                sparse_per_label=5)
    refit, projected = L.model.refit, []

    def counting_refit():
        projected.append(L.model.solver_.n_projected_)
        return refit()

    L.model.refit = counting_refit
    L.run(150)
    labels = [json.loads(x) for x in open(tmp_path / "run" / "log.jsonl")]
    md_labels = sum(r["n"] for r in labels if r.get("event") == "label" and r.get("reason") != "bootstrap")
    assert md_labels >= 3
    # refits whenever the labels grew x1.5 since the last one, and at the end of the run:
    # each made exact what the labels since the one before had projected
    assert len(projected) >= 2 and all(0 < p <= 5 * md_labels for p in projected)
    assert L.model.solver_.n_projected_ == 0
    saved = gpal.load(tmp_path / "run" / "model.npz")
    assert saved.solver_.n_projected_ == 0
    R = ActiveLearner.resume(tmp_path / "run")
    assert R.exact_frames == 0
    with pytest.raises(ValueError, match="exact_frames"):
        learner(tmp_path / "bad", exact_frames=-1)


def test_calibrated_trigger_compares_the_scaled_force_std(tmp_path):
    val = cu_frames(2, seed=9, size=(2, 2, 2))
    trig = Trigger(quantity="forces_std", threshold=0.01, calibrated=True, adaptive=False, every=1,
                   temperature_steps=None)
    L = learner(tmp_path / "run", validation=val, trigger=trig, sparse_refresh=False)
    L.run(1)
    n0 = L.oracle.n_calls
    L.model.set_calibration(forces_std={"scale": 1e-6, "conformal_q90": 1e-6})
    L.run(25)
    assert L.oracle.n_calls == n0  # a tiny calibrated std never crosses the threshold
    L.model.set_calibration(forces_std={"scale": 1e6, "conformal_q90": 1e6})
    L.run(26)
    assert L.oracle.n_calls == n0 + 1  # a huge one crosses it at the next check
    records = [json.loads(line) for line in open(tmp_path / "run" / "log.jsonl")]
    labels = [r for r in records if r.get("event") == "label" and r.get("reason") == "uncertain"]
    assert len(labels) == 1 and labels[0]["step"] == 25


def test_a_calibration_on_bootstrap_frames_never_scales_the_learnable_std_down(tmp_path):
    """Rattled copies of the start structure are closer to each other than MD frames: on
    them alone (a Cu13 cluster, whose leave-one-out errors would scale the std by 0.9),
    the stored scale is 1."""
    from ase.cluster import Icosahedron

    from gpal import calibration

    L = ActiveLearner(Icosahedron("Cu", 2), EMT(), run_dir=tmp_path / "run", progress=False, random_state=0)
    L.run(0)
    loo = L.model.loo_residuals(list(range(len(L.model.frames_))))
    frames = sorted(set(loo["force_frame"].tolist()))
    half = np.isin(loo["force_frame"], frames[::2])  # the learner's calibration half
    free = calibration.TwoTermCalibrator().fit(*(loo[k][half] for k in (
        "force_error", "force_std", "force_noise", "force_novelty")))
    assert free.scale_ < 0.95  # what the fit alone would store
    assert L.model.calibration_["forces_std"]["scale"] == pytest.approx(1.0)


def test_the_energy_std_is_scaled_to_the_held_out_energy_errors():
    """The learner's energy calibration: one factor, the 90 % upper confidence bound of
    the s with mean (error / (s raw))² = 1 on the calibration half (raw: the frame's leave-one-out SoR std and its DTC residuals),
    stored for energy_std only; none with fewer than 3 frames; at least 1 on rattled
    bootstrap frames. The LOO residual is the frame's summed DTC residuals."""
    from types import SimpleNamespace

    frames = cu_frames(8, seed=3, rattle=0.12)
    model = SparseGP(SOAP(species=["Cu"], periodic=True, weighting=POLY, **SMALL_SOAP),
                     n_sparse=30, hyperparameters="fixed").fit(frames)
    loo = model.loo_residuals()
    for b in (0, 5):
        nu = model.novelty(frames[b])
        kdiag = model.kernel_.diag(model.descriptor_.create(frames[b]))
        np.testing.assert_allclose(loo["energy_residual"][b] * len(frames[b]), np.sqrt(np.sum(nu * kdiag)), rtol=1e-8)
    raw = np.sqrt(loo["energy_std"] ** 2 + loo["energy_residual"] ** 2)
    order = {f: k for k, f in enumerate(range(len(frames)))}
    fake = SimpleNamespace(model=model)
    out = ActiveLearner._calibrate_energy(fake, loo, order, rattled=False)
    cal = np.arange(len(frames)) % 2 == 0
    # the 90 % upper bound of the scale from 4 frames: sum z² / χ²_4(0.1), χ²_4(0.1) = 1.0636
    want = np.sqrt(np.sum((loo["energy_error"][cal] / raw[cal]) ** 2) / 1.0636232167792)
    assert out["energy_scale"] == pytest.approx(want, rel=1e-10) and out["n_energy_calibration"] == 4
    assert out["judge_energy_zms"] == pytest.approx(np.mean((loo["energy_error"][~cal] / (want * raw[~cal])) ** 2))
    assert set(model.calibration_) == {"energy_std"}  # energies_std stays raw
    test = cu_frames(1, seed=11, rattle=0.12)[0]
    plain, scaled = model.predict(test, return_std=True), model.predict(test, return_std=True, calibrated=True)
    assert scaled["energy_std"] == pytest.approx(want * plain["energy_std"], rel=1e-12)
    np.testing.assert_array_equal(scaled["energies_std"], plain["energies_std"])
    small = dict(loo, energy_error=0.1 * loo["energy_error"])  # a model 10x better than its raw std says
    assert ActiveLearner._calibrate_energy(fake, small, order, rattled=False)["energy_scale"] == pytest.approx(0.1 * want)
    assert ActiveLearner._calibrate_energy(fake, small, order, rattled=True)["energy_scale"] == 1.0  # (bootstrap)
    few = {k: v[:5] for k, v in loo.items()}  # frames 0, 2, 4 in the calibration half: 3
    assert ActiveLearner._calibrate_energy(fake, few, order, rattled=False)["n_energy_calibration"] == 3
    assert ActiveLearner._calibrate_energy(fake, {k: v[:4] for k, v in loo.items()}, order, rattled=False) == {}
    assert "energy_std" not in model.calibration_  # (a factor of other frames is not kept)


def test_calibration_leaves_the_bootstrap_frames_out_also_after_resume(tmp_path):
    # the temperature rule labels at steps 7, 14, 22 and 29 (see the next test): 4 bootstrap
    # frames and 4 others. The model keeps bare copies of its frames, so which are bootstrap
    # comes from the learner's record: 2 + 2 frames of the 4 others, not 4 + 4 of all 8
    trig = Trigger(threshold=100.0, adaptive=False, every=1, max_labels=5)
    L = learner(tmp_path / "run", trigger=trig, sparse_refresh=False)
    L.run(30)
    assert len(L.model.frames_) == 8
    out = L.calibrate()
    assert (out["n_calibration"], out["n_judge"]) == (2, 2)
    R = ActiveLearner.resume(tmp_path / "run", progress=False)
    again = R.calibrate()
    assert (again["n_calibration"], again["n_judge"]) == (2, 2)
    assert again["scale"] == pytest.approx(out["scale"], rel=1e-8)


@pytest.mark.parametrize("delta", [False, True])
def test_a_fitted_model_starts_the_run_with_its_frames_and_no_bootstrap_label(tmp_path, delta):
    # a model fitted before the run: its frames are the run's initial data (train.xyz, the
    # scheduled refits, resume), with the oracle's labels (a Δ-model stores residuals), and
    # no bootstrap call; only the temperature rule labels here (steps 7, 14, 22 and 29)
    initial = cu_frames(3, seed=1, size=(2, 2, 2))
    kw = dict(baseline="ase.calculators.lj:LennardJones",
              baseline_kwargs={"sigma": 2.3, "epsilon": 0.4, "rc": 4.0}) if delta else {}
    model = SparseGP(SOAP(species=["Cu"], periodic=True, weighting=POLY, **SMALL_SOAP), n_sparse=30,
                     **kw).fit(initial)
    trig = Trigger(threshold=100.0, adaptive=False, every=1, max_labels=5)
    L = ActiveLearner(start(), EMT(), model, run_dir=tmp_path / "run", progress=False, trigger=trig,
                      md=MDSettings(temperature=(300, 1200)), sparse_refresh=False)
    summary = L.run(30)
    assert summary.oracle_calls == L.oracle.n_calls == 4
    assert summary.oracle_calls_by_reason.get("bootstrap", 0) == 0 and summary.bootstrap_frames == 0
    train = frames_in(tmp_path / "run" / "train.xyz")
    assert len(train) == len(L.model.frames_) == summary.labelled_frames == 7
    assert [a.info["gpal_reason"] for a in train[:3]] == ["initial"] * 3
    for a, b in zip(train[:3], initial):  # the oracle's labels (as extxyz writes them), not residuals
        np.testing.assert_allclose(a.get_forces(), b.get_forces(), atol=1e-7)
        assert a.get_potential_energy() == pytest.approx(b.get_potential_energy(), abs=1e-6)
    R = ActiveLearner.resume(tmp_path / "run", progress=False)
    assert R.oracle.n_calls == 4 and len(R.model.frames_) == 7
    again = R.run(40)
    assert again.oracle_calls_by_reason.get("bootstrap", 0) == 0
    assert len(frames_in(tmp_path / "run" / "train.xyz")) == len(R.model.frames_) == again.labelled_frames


def test_a_continued_model_counts_its_labels_at_the_temperatures_they_were_made_at(tmp_path):
    # labels carry the sampler temperature (K) in train.xyz, in the model and in its file;
    # a run continuing the model on the same system over the same ramp owes no temperature
    # label (they were all re-made, its frames counting at T0), one over a hotter ramp only
    # those above, and one on another system all of them
    trig = Trigger(threshold=100.0, adaptive=False, every=1, max_labels=5)
    first = learner(tmp_path / "first", trigger=trig, sparse_refresh=False)
    first.run(30)  # 300 -> 1200 K: temperature labels at steps 7, 14, 22, 29
    train = frames_in(tmp_path / "first" / "train.xyz")
    ramp = {a.info["gpal_step"]: a.info["gpal_temperature"] for a in train if a.info["gpal_reason"] == "temperature"}
    assert ramp == {s: pytest.approx(300 + 900 * s / 29) for s in (7, 14, 22, 29)}
    assert all(a.info["gpal_temperature"] == 300 for a in train if a.info["gpal_reason"] == "bootstrap")
    path = tmp_path / "model.npz"
    first.model.save(path)
    loaded = SparseGP.load(path)
    assert ([a.info.get("gpal_temperature") for a in loaded.frames_]
            == [a.info["gpal_temperature"] for a in train] == [a.info.get("gpal_temperature")
                                                              for a in loaded.training_frames()])
    same = ActiveLearner(start(), EMT(), loaded, run_dir=tmp_path / "same", progress=False, trigger=trig,
                         md=MDSettings(temperature=(300, 1200)), sparse_refresh=False)
    assert same.run(30).oracle_calls == 0
    # 300 -> 1800 K in 4 steps of 375 K (within 30 K): 1200 K is labelled, so only the
    # steps past 1395 K (step 22, 1438 K) and 1770 K (step 29) are due
    hotter = ActiveLearner(start(), EMT(), SparseGP.load(path), run_dir=tmp_path / "hotter", progress=False,
                           trigger=trig, md=MDSettings(temperature=(300, 1800)), sparse_refresh=False)
    hotter.run(30)
    hot = [r["step"] for r in _events(tmp_path / "hotter", "label") if r.get("reason") == "temperature"]
    assert hot == [22, 29]
    # after a resume the hottest label is read back from train.xyz
    R = ActiveLearner.resume(tmp_path / "same", progress=False)
    assert R.run(40).oracle_calls == 0
    # a system the model has not seen hot (a vacancy in the cell) is labelled along the ramp
    vac = start()
    del vac[0]
    other = ActiveLearner(vac, EMT(), SparseGP.load(path), run_dir=tmp_path / "vacancy", progress=False,
                          trigger=trig, md=MDSettings(temperature=(300, 1200)), sparse_refresh=False)
    other.run(30)
    hot = [r["step"] for r in _events(tmp_path / "vacancy", "label") if r.get("reason") == "temperature"]
    assert hot == [7, 14, 22, 29]
    # a model without temperatures (fitted on frames of unknown origin) counts its frames at
    # T0: the whole ramp is relabelled, as test_a_fitted_model_starts_the_run... shows;
    # a temperature that is not one is refused, naming the frame
    bad = train[0].copy()
    bad.calc = train[0].calc
    bad.info["gpal_temperature"] = "hot"
    with pytest.raises(ValueError, match=r"frames\[1\]: info\['gpal_temperature'\] must be a temperature"):
        small_model().fit([train[1], bad])
    bad.info["gpal_temperature"] = -5.0
    with pytest.raises(ValueError, match="gpal_temperature"):
        loaded.update([bad])


def test_a_rising_temperature_labels_each_temperature_step(tmp_path):
    # a threshold no std reaches: only the temperature rule labels. Ramp 300 -> 1200 K over
    # 30 steps (T = 300 + 900 s / 29), 4 steps of 225 K: 525, 750, 975 and 1200 K, each
    # reached within 2 % of the span (18 K), so labels come at the first checks past 507 K
    # (step 7, 517 K), 732 K (step 14, 734 K), 957 K (step 22, 983 K) and 1182 K (step 29)
    trig = Trigger(threshold=100.0, adaptive=False, every=1, max_labels=5)
    L = learner(tmp_path / "run", trigger=trig, sparse_refresh=False)
    summary = L.run(30)
    records = [json.loads(line) for line in open(tmp_path / "run" / "log.jsonl")]
    hot = [r["step"] for r in records if r.get("event") == "label" and r.get("reason") == "temperature"]
    assert hot == [7, 14, 22, 29]
    assert summary.oracle_calls_by_reason.get("temperature") == 4
    assert [a.info["gpal_reason"] for a in frames_in(tmp_path / "run" / "train.xyz")].count("temperature") == 4
    off = learner(tmp_path / "off", trigger=Trigger(threshold=100.0, adaptive=False, every=1,
                                                     temperature_steps=None), sparse_refresh=False)
    assert off.run(30).oracle_calls_by_reason.get("temperature", 0) == 0
    # 0 -> 600 K in 3 steps (200, 400, 600 K, within 12 K): T = 600 s / 29 passes 188 K at
    # step 10 (207 K), 388 K at step 19 (393 K) and 588 K at step 29
    cold = learner(tmp_path / "cold", trigger=Trigger(threshold=100.0, adaptive=False, every=1, max_labels=5,
                                                      temperature_steps=3),
                   md=MDSettings(temperature=(0, 600)), sparse_refresh=False)
    cold.run(30)
    hot = [r["step"] for r in (json.loads(line) for line in open(tmp_path / "cold" / "log.jsonl"))
           if r.get("event") == "label" and r.get("reason") == "temperature"]
    assert hot == [10, 19, 29]
    # a constant temperature never relabels
    flat = learner(tmp_path / "flat", trigger=trig, md=MDSettings(temperature=600), sparse_refresh=False)
    assert flat.run(30).oracle_calls_by_reason.get("temperature", 0) == 0
    # several structures: each step's label goes to the walker with the fewest labels (all
    # went to the first structure, a bulk cell, while a slab and a cluster melted unlabelled)
    vac = start()
    del vac[0]
    two = ActiveLearner([start(), vac], EMT(), small_model(), run_dir=tmp_path / "two", progress=False,
                        trigger=trig, md=MDSettings(temperature=(300, 1200)), sparse_refresh=False)
    two.run(30)
    walkers = [r["walker"] for r in _events(tmp_path / "two", "label") if r.get("reason") == "temperature"]
    assert walkers == [[0], [1], [0], [1]]
    steps = [json.loads(line) for line in open(tmp_path / "two" / "log.jsonl") if '"target_T"' in line]
    assert steps and all(len(r["walker_temperatures"]) == 2 for r in steps)
    # more walkers (6) than labelled frames when the first step is due (4)
    six = ActiveLearner([start(), vac], EMT(), small_model(), run_dir=tmp_path / "six", progress=False,
                        trigger=trig, md=MDSettings(temperature=(300, 1200)), sparse_refresh=False, n_walkers=3)
    six.run(30)
    walkers = [r["walker"] for r in _events(tmp_path / "six", "label") if r.get("reason") == "temperature"]
    assert walkers == [[0], [1], [2], [3]]
    # a short ramp checked every 20 steps: its last check (step 580, 977.8 K of 300 -> 1000
    # K) falls 2.2 % of the span short of the top, and the hottest step went unlabelled;
    # within what the ramp climbs between two checks it counts, once
    short = learner(tmp_path / "short", trigger=Trigger(threshold=100.0, adaptive=False, every=20),
                    md=MDSettings(temperature=(300, 1000)), sparse_refresh=False)
    short.run(600)
    hot = [r["step"] for r in _events(tmp_path / "short", "label") if r.get("reason") == "temperature"]
    assert len(hot) == 4 and hot[-1] == 580
    short.run(700)  # (on at the top temperature: labelled there already)
    assert len([r for r in _events(tmp_path / "short", "label") if r.get("reason") == "temperature"]) == 4
    for bad in (0, 2.5, True, -1):
        with pytest.raises(ValueError, match="temperature_steps"):
            Trigger(temperature_steps=bad)
    assert Trigger(temperature_steps=False).temperature_steps is None
    # the earlier name: false still turns the rule off; a factor is replaced, with a warning
    assert Trigger(recheck_temperature=False).temperature_steps is None
    with pytest.warns(FutureWarning, match="temperature_steps"):
        assert Trigger(recheck_temperature=1.5).temperature_steps == 4


def test_bad_settings():
    with pytest.raises(ValueError, match="forces_std"):
        Trigger(quantity="energies_std", calibrated=True)
    with pytest.raises(ValueError, match="threshold"):
        Trigger(quantity="energies_std", calibrated=False)
    with pytest.raises(ValueError, match="novelty"):
        Trigger(novelty=0.0)
    with pytest.raises(ValueError, match="max_labels"):
        Trigger(max_labels=0)
    with pytest.raises(ValueError, match="choose from"):
        Trigger(quantity="stress_std")
    with pytest.raises(ValueError, match="skip"):
        ActiveLearner(start(), EMT(), on_oracle_failure="ignore")
    with pytest.raises(ValueError, match="rattle"):
        ActiveLearner(start(), EMT(), rattle=-0.1)
    with pytest.raises(ValueError, match="module:Name"):
        OracleSpec("EMT")
    with pytest.raises(ValueError, match="live calculator"):
        gpal.Oracle(EMT(), executor=ProcessPoolExecutor(1))


def test_bootstrap_rattle_default_depends_on_periodicity():
    from ase.build import molecule

    crystal = ActiveLearner(start(), EMT())
    mol = molecule("CH3OH")
    assert crystal.rattle == 0.05 and ActiveLearner(mol, EMT()).rattle == 0.02
    assert ActiveLearner(mol, EMT(), rattle=0.07).rattle == 0.07
    # the candidates' displacements follow it (std of the factor in [0.3, 1] times rattle at 300 K)
    rng = np.random.default_rng(0)
    shifts = [c.positions - mol.positions for c in ActiveLearner(mol, EMT())._candidates(rng)]
    assert 0.3 * 0.02 < np.std(np.concatenate(shifts)) < 1.0 * 0.02


def test_bootstrap_rattles_grow_with_the_protocols_temperature_range():
    """Candidates' rattle factors span [0.3, sqrt(T_max / T_start)] within [1, 2]: at one
    temperature none beyond the default rattle (FPS picks the largest, and a thermal start
    structure rattled 2x gave bootstrap frames 12 thermal stds above a water box), up to
    2x for a ramp to 4x the start temperature."""
    from gpal.learning import MDSettings

    def widest(md):
        L = ActiveLearner(start(), EMT(), md=md)
        shifts = [c.positions - start().positions for c in L._candidates(np.random.default_rng(0))]
        return max(np.std(d) for d in shifts) / L.rattle

    assert 0.85 < widest(MDSettings(temperature=300)) < 1.15  # (a std of 96 displacements)
    assert 1.35 < widest(MDSettings(temperature=(300, 700))) < 1.75  # sqrt(7/3) = 1.53
    assert 1.75 < widest(MDSettings(temperature=(300, 1500))) < 2.3


def test_bootstrap_strains_the_cell_only_when_the_sampler_may_change_it():
    from ase.md.verlet import VelocityVerlet

    from gpal.learning import MDSettings

    rng = np.random.default_rng(0)
    fixed = ActiveLearner(start(), EMT())._candidates(rng)  # Langevin at fixed cell
    assert all(np.allclose(c.cell.array, start().cell.array) for c in fixed)
    assert max(np.abs(c.positions - start().positions).max() for c in fixed) > 0.01

    def factory(atoms, timestep, temperature, rng):
        return VelocityVerlet(atoms, timestep=timestep)

    own = ActiveLearner(start(), EMT(), md=MDSettings(factory=factory))._candidates(rng)
    strains = [np.abs(np.linalg.solve(start().cell.array, c.cell.array) - np.eye(3)).max() for c in own]
    assert 0.0 < max(strains) <= 2 * 0.05 / np.cbrt(start().get_volume() / len(start())) + 1e-12


def test_default_loop_counts_every_call_and_never_bursts(tmp_path):
    oracle = CountingEMT()
    L = ActiveLearner(start(), oracle, small_model(), run_dir=tmp_path / "run", progress=False,
                      md=MDSettings(temperature=(300, 1500), timestep=2.0), n_sparse_initial=30)
    summary = L.run(400)
    assert summary.oracle_calls == oracle.n_evaluations  # reported = made
    assert sum(summary.oracle_calls_by_reason.values()) == summary.oracle_calls
    assert summary.oracle_calls_by_reason["bootstrap"] == 4
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["oracle_calls"] == oracle.n_evaluations
    records = [json.loads(line) for line in open(tmp_path / "run" / "log.jsonl")]
    steps = [r["step"] for r in records if r.get("event") == "label" and r["reason"] == "uncertain"]
    for s in steps:  # at most Trigger.max_labels (3) labels in any 100-step window
        assert sum(1 for t in steps if s <= t < s + 100) <= 3
    cal = L.model.calibration_["forces_std"]
    assert cal["noise_scale"] > 0 and cal["scale"] > 0 and summary.calibration["n_judge"] >= 1
    checks = [r for r in records if r.get("event") == "check"]
    assert checks and all(r["threshold"] > 0 for r in checks)


def test_trigger_uncertainty_includes_the_calibrations_novelty_term():
    """u = max over components of sqrt((scale σ)² + novelty_scale² ν_atom); the scaled
    projected std alone without the term or when the trigger is not calibrated."""
    model = SparseGP(small_model().descriptor, n_sparse=20).fit(cu_frames(3, seed=1, size=(2, 2, 2)))
    sigma = np.array([[0.01, 0.02, 0.0], [0.005, 0.0, 0.001]])
    pred = {"forces_std": sigma, "novelty": np.array([0.0, 1e-4])}
    trig = Trigger(threshold=0.05, adaptive=False)
    kw = dict(model=model, recent=[], label_steps=[], step=0, force_std_scale=2.0)
    assert trig.judge(pred, **kw)["uncertainty"] == pytest.approx(0.04)
    j = trig.judge(pred, novelty_scale=10.0, **kw)
    assert j["uncertainty"] == pytest.approx(np.sqrt(0.01**2 + 100.0 * 1e-4))  # atom 1 wins
    assert j["label"] and not trig.judge(pred, **kw)["label"]
    # ν above the calibration's range counts as its largest fitted value
    capped = trig.judge(pred, novelty_scale=30.0, novelty_max=1e-5, **kw)["uncertainty"]
    assert capped == pytest.approx(np.sqrt(0.01**2 + 900.0 * 1e-5))
    off = Trigger(threshold=0.05, adaptive=False, calibrated=False)
    assert off.judge(pred, novelty_scale=10.0, **kw)["uncertainty"] == pytest.approx(0.02)


def test_trigger_rate_cap_and_thresholds():
    trig = Trigger(max_labels=2, window=50)
    assert not trig.capped([10], 20)
    assert trig.capped([10, 15], 40)
    assert not trig.capped([10, 15], 60)
    model = SparseGP(small_model().descriptor, n_sparse=20).fit(cu_frames(3, seed=1, size=(2, 2, 2)))
    assert trig.base_threshold(model, scale=2.0) == pytest.approx(max(0.02, 0.5 * 2.0 * model.noise_["force"]))
    assert Trigger(threshold_min=0.0).base_threshold(model, scale=2.0) == pytest.approx(
        0.5 * 2.0 * model.noise_["force"])
    assert Trigger(threshold=0.1).base_threshold(model, scale=5.0) == pytest.approx(0.1)
    assert Trigger(threshold=2.0, relative_to_noise=True).base_threshold(model) == pytest.approx(
        2.0 * model.noise_["force"])
    # a multiple of the same calibrated noise as the automatic threshold's
    assert Trigger(threshold=0.5, relative_to_noise=True, threshold_min=0.0).base_threshold(
        model, scale=3.0) == pytest.approx(Trigger(threshold_min=0.0).base_threshold(model, scale=3.0))
    assert Trigger(threshold=2.0, relative_to_noise=True, calibrated=False).base_threshold(
        model, scale=3.0) == pytest.approx(2.0 * model.noise_["force"])
    assert trig.adaptive_level([]) == 0.0
    assert trig.adaptive_level([1.0, 3.0]) == pytest.approx(1.2 * 2.0)
    # the level holds for adapt_window unlabelled checks after an update, then the base
    # decides: a liquid's model, unsure of every frame alike, had stopped labelling
    ten, eleven = [1.0] * trig.adapt_window, [1.0] * (trig.adapt_window + 1)
    assert trig.adaptive_level(ten) == pytest.approx(1.2) and trig.adaptive_level(eleven) == 0.0
    assert Trigger(adapt_expire=False).adaptive_level(eleven) == pytest.approx(1.2)
    with pytest.raises(ValueError, match="adapt_expire must be True or False"):
        Trigger(adapt_expire="yes")
    # the ceiling: a quarter of the RMS label force caps the automatic base and the adaptive
    # level (a model that calls everything noise, or is unsure of everything, still labels)
    noisy = Trigger(noise_ratio=1e3)
    assert noisy.base_threshold(model) > 1.0
    thr, base = noisy.level(model, [5.0, 5.0], force_rms=1.5)
    assert thr == pytest.approx(0.375) and base == pytest.approx(0.375)
    assert Trigger(ceiling=None).level(model, [5.0], force_rms=1.5)[0] == pytest.approx(6.0)
    # the floor wins over the ceiling; a user's threshold is kept
    assert Trigger().level(model, [], force_rms=0.05)[0] == pytest.approx(0.02)
    assert Trigger(ceiling=0.1).level(model, [5.0], force_rms=1.5)[0] == pytest.approx(0.15)
    assert Trigger(threshold=0.5).level(model, [1.0], force_rms=1.0) == (pytest.approx(0.5), pytest.approx(0.5))
    assert Trigger().level(model, [1.0])[0] == pytest.approx(1.2)  # no labels yet: no ceiling
    with pytest.raises(ValueError, match="ceiling"):
        Trigger(ceiling=0.0)


def test_conformal_stopping_rule_uses_the_conformal_bound(tmp_path):
    rule = StoppingRule(tolerance=50.0, patience=1, use="conformal")
    L = learner(tmp_path / "run", stopping=rule, check_every=20, md=MDSettings(temperature=600))
    summary = L.run(1000)
    assert summary.stopped_early and rule.history[-1].use == "conformal"
    records = [json.loads(line) for line in open(tmp_path / "run" / "log.jsonl")]
    last = [r for r in records if r.get("event") == "stop_check" and "bound" in r][-1]
    w = L.walkers[0].atoms
    p = L.model.predict(w, return_std=True, forces_std=True)
    raw = p["forces_std"]
    c = L.model.calibration_["forces_std"]
    total = np.sqrt((c["scale"] * raw) ** 2 + (c["noise_scale"] * L.model.noise_["force"]) ** 2
                    + c.get("novelty_scale", 0.0) ** 2
                    * np.minimum(p["novelty"], c.get("novelty_max", 1.0))[:, None])
    assert last["bound"] == pytest.approx(c["conformal_q90"] * np.sqrt(np.mean(total**2)), rel=1e-6)
    # the error judged is the held-out half of the leave-one-frame-out errors
    assert last["validation_error"] == pytest.approx(L._calibration["judge_force_rmse"])


def test_a_run_ends_with_hyperparameters_chosen_on_all_its_labels(tmp_path):
    """Labels added since the schedule's last choice get one more at the end of the run
    (its saved model is the evidence's for every label), calibrated after it; a run the
    stopping rule ended keeps the model it judged (test above)."""
    L = learner(tmp_path / "run", trigger=Trigger(threshold=0.001), check_every=0, optimize_every=3)
    L.run(60)  # (the schedule: 4 bootstrap labels, then 12)
    records = [json.loads(line) for line in open(tmp_path / "run" / "log.jsonl")]
    chosen = [r for r in records if r.get("event") == "hyperparameters"]
    assert 4 < L.n_labelled < 12 and L._last_opt == L.n_labelled
    assert chosen[-1]["step"] == 60 and chosen[-1]["kernel"] == repr(L.model.kernel_)
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["last_optimization"] == L.n_labelled
    # the stored calibration is the final model's: a fresh one on it gives the same
    stored = dict(L.model.calibration_["forces_std"])
    L.calibrate()
    assert L.model.calibration_["forces_std"]["scale"] == pytest.approx(stored["scale"], rel=1e-9)


def test_a_run_the_stopping_rule_ended_keeps_its_judged_model_after_a_resume(tmp_path):
    """The rule judged the model at its last labels: neither the run's end nor a resume
    that runs no further step (run(step), gpal learn --resume --steps <its step>) makes
    a last hyperparameter choice over it (the resumed learner had lost the stop)."""
    rule = StoppingRule(tolerance=50.0, patience=1, use="conformal")
    L = learner(tmp_path / "run", stopping=rule, check_every=20, md=MDSettings(temperature=600),
                optimize_every=3)
    assert L.run(1000).stopped_early
    assert L.n_labelled > L._last_opt  # (a last choice would have been due)
    kernel, noise = repr(L.model.kernel_), dict(L.model.noise_)

    def choices():
        return [json.loads(line) for line in open(tmp_path / "run" / "log.jsonl")
                if '"hyperparameters"' in line]

    n = len(choices())
    R = ActiveLearner.resume(tmp_path / "run", EMT(), progress=False)
    R.run(R.step)
    assert len(choices()) == n and repr(R.model.kernel_) == kernel and R.model.noise_ == noise


def test_refits_of_projected_columns_do_not_postpone_the_hyperparameter_schedule(tmp_path, monkeypatch):
    """With optimize_every = 2 and projected columns, the refit that makes them exact (at
    1.5x) had moved the schedule's count, so no choice came before the run's end."""
    at = []
    real = ActiveLearner._optimize

    def recording(self):
        at.append(self.n_labelled)
        real(self)

    monkeypatch.setattr(ActiveLearner, "_optimize", recording)
    L = learner(tmp_path / "run", trigger=Trigger(threshold=0.001), check_every=0, optimize_every=2,
                exact_frames=1)
    L.run(300)
    assert L.n_labelled >= 9
    # 4 bootstrap labels: the first choice at 8 labels (before, 1.5x refits moved it on)
    assert any(8 <= k < L.n_labelled for k in at), (at, L.n_labelled)


class InterruptingEMT(EMT):
    """EMT that is interrupted (as by Ctrl-C) at its ``n``-th evaluation."""

    def __init__(self, n, **kw):
        super().__init__(**kw)
        self.n, self.calls = n, 0

    def calculate(self, atoms=None, properties=("energy",), system_changes=("positions",)):
        self.calls += 1
        if self.calls == self.n:
            raise KeyboardInterrupt
        super().calculate(atoms, properties, system_changes)


def langevin_factory(atoms, timestep, temperature_K, rng):
    """A module-level MD factory (importable, so a resumed run can rebuild it)."""
    from ase.md.langevin import Langevin

    return Langevin(atoms, timestep, temperature_K=temperature_K, friction=0.05, fixcm=False, rng=rng)


def test_resume_after_an_interrupt_during_the_bootstrap(tmp_path):
    run = tmp_path / "run"
    L = learner(run, InterruptingEMT(3), md=MDSettings(temperature=(300, 1200), factory=langevin_factory))
    with pytest.raises(KeyboardInterrupt):
        L.run(60)
    assert len(frames_in(run / "train.xyz")) == 2 and not (run / "model.npz").exists()
    R = ActiveLearner.resume(run, EMT(), progress=False)
    assert R.md.factory is langevin_factory  # the MD factory survives (import path)
    summary = R.run(60)
    train = frames_in(run / "train.xyz")
    boot = [a for a in train if a.info.get("gpal_reason") == "bootstrap"]
    assert len(boot) == 4  # two before the interrupt, two after: none asked twice
    assert len({a.positions.tobytes() for a in boot}) == 4
    assert summary.steps == 60 and len(R.model.frames_) == len(train)
    # the log counts every label train.xyz holds, the one of the interrupted batch too (it
    # was on disk but had no label record: 19 logged against 20 frames after a resume)
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert sum(r["n"] for r in records if r.get("event") == "label") == len(train)
    assert [r["n"] for r in records if r.get("event") == "label" and r.get("interrupted")] == [1]


def test_resume_keeps_the_temperature_protocol_and_takes_md_overrides(tmp_path):
    run = tmp_path / "run"
    L = learner(run, "ase.calculators.emt:EMT", md=MDSettings(temperature=(300, 1200)))
    L.run(100)
    R = ActiveLearner.resume(run, md=MDSettings(temperature=(300, 1200), timestep=0.5), progress=False)
    assert R.md.timestep == 0.5
    R.run(160)
    records = [json.loads(line) for line in open(run / "log.jsonl")]
    later = [r["target_T"] for r in records if "target_T" in r and r["step"] >= 100]
    assert later and all(t == pytest.approx(1200.0) for t in later)  # the ramp is not re-stretched


def test_resume_rebuilds_walkers_on_their_start_structures(tmp_path):
    """Constraints, masses and initial magnetic moments of the start structures survive a resume."""
    from ase.constraints import FixAtoms

    s = start()
    s.set_constraint(FixAtoms(indices=[0, 1]))
    s.set_masses(s.get_masses() * 4)
    s.set_initial_magnetic_moments([0.5] * len(s))
    fixed = s.positions[[0, 1]].copy()
    small = bulk("Cu", "fcc", a=3.61, cubic=True)  # 4 atoms, no constraint
    run = tmp_path / "run"
    L = ActiveLearner([s, small], EMT(), small_model(), run_dir=run, progress=False, n_bootstrap=2,
                      n_walkers=2, trigger=Trigger(threshold=10.0), md=MDSettings(temperature=600))
    L.run(30)
    for steps in (60, 90):  # resumed twice: the second from a state a resume wrote
        before = [(w.atoms.positions.copy(), w.atoms.get_momenta().copy()) for w in L.walkers]
        L = ActiveLearner.resume(run, EMT(), progress=False)
        assert [len(w.atoms) for w in L.walkers] == [32, 32, 4, 4]
        for w, (x, p) in zip(L.walkers, before):  # the saved state exactly, on its start structure
            np.testing.assert_array_equal(w.atoms.positions, x)
            np.testing.assert_array_equal(w.atoms.get_momenta(), p)
        for w in L.walkers[:2]:
            np.testing.assert_allclose(w.atoms.get_masses(), s.get_masses())
            np.testing.assert_array_equal(w.atoms.get_initial_magnetic_moments(), 0.5)
        assert [len(w.atoms.constraints) for w in L.walkers] == [1, 1, 0, 0]
        L.run(steps)
        for w in L.walkers[:2]:
            np.testing.assert_array_equal(w.atoms.positions[[0, 1]], fixed)


def test_resume_keeps_constraints_that_extended_xyz_cannot_hold(tmp_path):
    from ase.constraints import FixAtoms, Hookean

    s = start()
    s.set_constraint([FixAtoms(indices=[0]), Hookean(1, 2, rt=2.7, k=5.0)])
    L = ActiveLearner(s, EMT(), small_model(), run_dir=tmp_path / "run", progress=False, n_bootstrap=2,
                      trigger=Trigger(threshold=10.0), md=MDSettings(temperature=300))
    L.run(10)
    R = ActiveLearner.resume(tmp_path / "run", EMT(), progress=False)
    kept = R.walkers[0].atoms.constraints
    assert [type(c).__name__ for c in kept] == ["FixAtoms", "Hookean"]
    assert kept[1].todict() == s.constraints[1].todict()

    t = start()
    t.set_constraint([FixAtoms(indices=[0]), UnsavableConstraint()])
    with pytest.warns(UserWarning, match="a resumed run would lose it"):
        L = ActiveLearner(t, EMT(), small_model(), run_dir=tmp_path / "other", progress=False, n_bootstrap=2,
                          trigger=Trigger(threshold=10.0), md=MDSettings(temperature=300))
    L.run(5)
    R = ActiveLearner.resume(tmp_path / "other", EMT(), progress=False)  # resumes, without it
    assert [type(c).__name__ for c in R.walkers[0].atoms.constraints] in (["FixAtoms"], ["FixCartesian"])


def test_a_saved_walker_that_does_not_match_its_structure_is_refused(tmp_path):
    from gpal.exceptions import GpalError

    run = tmp_path / "run"
    L = learner(run, n_bootstrap=2, trigger=Trigger(threshold=10.0))
    L.run(10)
    (run / "structures.xyz").unlink()
    from gpal.io import write_frames

    write_frames(run / "structures.xyz", [start().repeat((1, 1, 2))])
    with pytest.raises(GpalError, match="walkers.npz, walker 0: a saved walker \\(32 atoms\\) does not match"):
        ActiveLearner.resume(run, EMT(), progress=False)


def test_oracle_timeout_is_per_label_not_per_batch():
    """Three 0.8 s labels on one worker with a 1.5 s timeout: queueing is not charged."""
    with ProcessPoolExecutor(1) as pool:
        spec = OracleSpec("_oracles:SlowEMT", {"delay": 0.8})
        oracle = gpal.Oracle(spec, executor=pool, timeout=1.5, retries=0)
        pool.submit(time.sleep, 0).result()  # a warm worker: its start-up is not a label
        frames = [start() for _ in range(3)]
        for k, a in enumerate(frames):
            a.positions[0, 0] += 0.01 * k
        arrived = []
        labelled, failures = oracle.label(frames, on_label=lambda i, a: arrived.append(i))
    assert not failures and all(a is not None for a in labelled)
    assert arrived == [0, 1, 2]  # each label reported as it arrived
    assert oracle.n_calls == 3


def test_resume_drops_a_partial_last_frame_of_train_xyz(tmp_path):
    """A kill while a label is appended leaves half a frame: resume keeps the complete ones."""
    run = tmp_path / "run"
    L = learner(run, "ase.calculators.emt:EMT", trigger=Trigger(threshold=0.002))
    L.run(30)
    complete = frames_in(run / "train.xyz")
    text = (run / "train.xyz").read_text()
    last = text.splitlines()[-(len(complete[-1]) + 2):]
    with open(run / "train.xyz", "a") as fh:  # what a kill in the middle of an append leaves
        fh.write("\n".join(last[: 2 + len(complete[-1]) // 2]) + "\n" + last[-1][:20])
    R = ActiveLearner.resume(run, progress=False)
    assert len(R.model.frames_) == R.n_labelled == len(complete)
    assert (run / "train.xyz.partial").exists()
    summary = R.run(60)
    after = frames_in(run / "train.xyz")  # readable: nothing partial left in it
    assert all(np.array_equal(a.positions, b.positions) for a, b in zip(after, complete))
    assert len(after) == len(R.model.frames_) == summary.labelled_frames >= len(complete)
    assert len({a.positions.tobytes() for a in after}) == len(after)
    records = [json.loads(line) for line in open(run / "log.jsonl")]
    assert [r for r in records if r.get("event") == "resume"][-1]["partial_frame_bytes"] > 0


def test_an_interrupt_during_a_model_update_does_not_save_the_half_updated_model(tmp_path, monkeypatch):
    """Ctrl-C (or the CLI's SIGTERM) in the middle of an update: the model file stays the last whole one."""
    from gpal import sparse_gp

    run = tmp_path / "run"
    L = learner(run, "ase.calculators.emt:EMT", trigger=Trigger(threshold=0.002))
    orig = sparse_gp.SparseGPSolver.add_sparse
    calls = []

    def add_sparse(self, K_mm, cols):  # cut short after changing the solver, as a signal can
        calls.append(1)
        if len(calls) == 2:
            self.K_mm_ = np.array(K_mm)
            raise KeyboardInterrupt
        return orig(self, K_mm, cols)

    monkeypatch.setattr(sparse_gp.SparseGPSolver, "add_sparse", add_sparse)
    with pytest.raises(KeyboardInterrupt):
        L.run(300)
    monkeypatch.setattr(sparse_gp.SparseGPSolver, "add_sparse", orig)
    labelled = frames_in(run / "train.xyz")
    R = ActiveLearner.resume(run, progress=False)
    assert len(R.model.frames_) == len(labelled)
    assert R.model.solver_.K_mm_.shape[0] == len(R.model.sparse_X_) == len(R.model.alpha_)
    summary = R.run(R.step + 30)
    after = frames_in(run / "train.xyz")
    assert all(np.array_equal(a.positions, b.positions) for a, b in zip(after, labelled))
    assert summary.steps == R.step and len(after) == len(R.model.frames_)


def test_resume_refits_when_the_bootstrap_was_interrupted_before_its_model_was_saved(tmp_path, monkeypatch):
    run = tmp_path / "run"
    L = learner(run, "ase.calculators.emt:EMT")

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(L, "calibrate", interrupted)  # right after the bootstrap fit
    with pytest.raises(KeyboardInterrupt):
        L.run(30)
    assert json.loads((run / "state.json").read_text())["bootstrap_done"]
    assert not (run / "model.npz").exists()
    R = ActiveLearner.resume(run, progress=False)
    summary = R.run(30)
    assert summary.steps == 30 and summary.bootstrap_frames == 4
    assert len(frames_in(run / "train.xyz")) == len(R.model.frames_) == summary.labelled_frames


TINY_TOML = """
[structure]
repeat = [2, 2, 2]
[md]
temperature = [300.0, 1500.0]
timestep = 2.0
[trigger]
threshold = 0.02
every = 5
[model]
n_sparse = 30
[learner]
sparse_per_label = 5
[validation]
steps = 0
"""


def _gpal_env():
    return dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(gpal.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_cli_learn_checkpoints_and_exits_with_one_line_on_sigterm_and_sigint(tmp_path, sig):
    run = tmp_path / "run"
    (tmp_path / "tiny.toml").write_text(TINY_TOML)
    cmd = [sys.executable, "-m", "gpal.cli", "learn", str(tmp_path / "tiny.toml"), "--run-dir", str(run), "-q"]
    # faulthandler: if the run ever ignores the signal, SIGABRT dumps every thread's stack
    # SIGINT's default action restored in the child: a test run started in the background
    # by a non-interactive shell inherits SIGINT ignored, and Python then installs no
    # KeyboardInterrupt handler (as POSIX wants for background jobs)
    proc = subprocess.Popen(cmd + ["--steps", "100000"], env=dict(_gpal_env(), PYTHONFAULTHANDLER="1"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 600  # a cold numba cache on a busy machine
        while not (run / "model.npz").exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert (run / "model.npz").exists(), "no bootstrap model after 600 s"
        time.sleep(1.0)  # into MD
        proc.send_signal(sig)
        try:
            _, err = proc.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            _, err = proc.communicate(timeout=60)
            pytest.fail(f"gpal learn ignored signal {sig} for 180 s; its stacks:\n{err[-6000:]}")
    finally:
        proc.kill()
    assert proc.returncode == 128 + sig, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("gpal learn: interrupted by")
    assert f"--resume {run}" in err
    records = [json.loads(line) for line in open(run / "log.jsonl")]
    assert records[-1]["event"] == "interrupted"  # the learner checkpointed on its way out
    state = json.loads((run / "state.json").read_text())
    assert state["step"] == records[-1]["step"] and state["bootstrap_done"]
    res = subprocess.run(cmd[:5] + ["--resume", str(run), "--steps", str(state["step"] + 10), "-q"],
                         env=_gpal_env(), capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr
    assert json.loads((run / "summary.json").read_text())["steps"] == state["step"] + 10


def test_sigterm_keeps_the_labels_computed_and_stops_the_oracle_calls_still_running(tmp_path):
    """gpal learn with workers = 2, SIGTERM while two calls (a DFT code each, here
    ``sleep``) run in the workers: it waited for them to finish and then threw their
    results away (and started the calls still queued). The labels computed before the
    signal are in train.xyz and log.jsonl; the running calls, their workers and the
    programs they started are stopped at once."""
    notes = tmp_path / "notes"
    notes.mkdir()
    (tmp_path / "c.toml").write_text(textwrap.dedent(f"""
        run_dir = "{tmp_path / 'run'}"
        steps = 20
        workers = 2
        [structure]
        bulk = "Cu"
        crystal = "fcc"
        a = 3.61
        cubic = true
        repeat = [1, 1, 1]
        [oracle]
        factory = "_oracles:FastThenHangs"
        kwargs = {{note_dir = "{notes}", delay = 300.0}}
        [model]
        n_sparse = 10
        [validation]
        steps = 0
    """))
    run = tmp_path / "run"
    env = dict(_gpal_env())
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env["PYTHONPATH"]])
    proc = subprocess.Popen([sys.executable, "-m", "gpal.cli", "learn", str(tmp_path / "c.toml"), "-q"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def noted():  # the pids of the workers in a hanging call, and of the programs they started
        return [int(p) for f in notes.iterdir() for p in f.read_text().split()]

    def written():  # frames appended to train.xyz so far (read as text: one may be half written)
        return (run / "train.xyz").read_text().count("Lattice=") if (run / "train.xyz").exists() else 0

    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and not (len(noted()) == 4 and written() == 2):
            time.sleep(0.1)
        assert len(noted()) == 4 and written() == 2, "two labels, then two hanging calls"
        t0 = time.time()
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail("gpal learn waited for the oracle calls still running after SIGTERM")
        took = time.time() - t0
        deadline = time.time() + 10
        while time.time() < deadline and any(_running(p) for p in noted()):
            time.sleep(0.1)
        left = [p for p in noted() if _running(p)]
    finally:
        proc.kill()
        proc.wait()
        for pid in noted():  # (nothing of this test left running, whatever happened)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 128 + signal.SIGTERM and took < 30, err
    assert err.strip().splitlines() == [f"gpal learn: interrupted by SIGTERM; progress is saved, continue with: "
                                        f"gpal learn --resume {run}"]
    assert len(frames_in(run / "train.xyz")) == 2
    records = [json.loads(line) for line in open(run / "log.jsonl")]
    labels = [r for r in records if r["event"] == "label"]
    assert [(r["n"], r.get("interrupted")) for r in labels] == [(2, True)]
    state = json.loads((run / "state.json").read_text())
    assert (state["n_labelled"], state["oracle_calls"]) == (2, 4)  # the two cut off are calls without a label
    assert not left  # the workers and the programs their calls started


class FailOnSecondConfigEMT(EMT):
    """EMT that fails on the second distinct configuration it is asked about."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.seen = []

    def calculate(self, atoms=None, properties=("energy",), system_changes=("positions",)):
        key = atoms.positions.round(6).tobytes()
        if key not in self.seen:
            self.seen.append(key)
        if self.seen.index(key) == 1:
            raise RuntimeError("SCF did not converge (simulated)")
        super().calculate(atoms, properties, system_changes)


class Killed(BaseException):
    """Stands for SIGKILL: no handler of the learner runs."""


def _killed(*args, **kwargs):
    raise Killed


def test_resume_of_the_bootstrap_after_a_failed_label_asks_no_frame_twice(tmp_path, monkeypatch):
    run = tmp_path / "run"
    L = learner(run, FailOnSecondConfigEMT(), oracle_retries=0)
    monkeypatch.setattr(L.model, "fit", _killed)  # killed during the bootstrap fit
    with pytest.raises(Killed):
        L.run(20)
    boot = read(str(run / "bootstrap.xyz"), ":")
    train = frames_in(run / "train.xyz")
    # the second bootstrap frame failed; the first spare replaced it
    assert len(train) == 4 and len(boot) == 8
    R = ActiveLearner.resume(run, EMT(), progress=False)
    R.run(20)
    train = frames_in(run / "train.xyz")
    firsts = train[:4]
    assert len({a.positions.tobytes() for a in train}) == len(train)  # none labelled twice
    assert {a.positions.round(6).tobytes() for a in firsts} == {a.positions.round(6).tobytes()
                                                               for a in (boot[0], *boot[2:5])}


def test_a_kill_while_bootstrap_xyz_is_written_leaves_no_partial_file(tmp_path, monkeypatch):
    import ase.io

    run = tmp_path / "run"
    real_write = ase.io.write

    def write_and_die(filename, images, *args, **kwargs):
        if "bootstrap.xyz" in Path(str(filename)).name:  # (its temporary file) the first frame reaches the disk, then SIGKILL
            real_write(filename, images[:1], *args, **kwargs)
            raise Killed
        return real_write(filename, images, *args, **kwargs)

    monkeypatch.setattr(ase.io, "write", write_and_die)
    with pytest.raises(Killed):
        learner(run, "ase.calculators.emt:EMT").run(20)
    monkeypatch.setattr(ase.io, "write", real_write)
    assert not (run / "bootstrap.xyz").exists()
    summary = ActiveLearner.resume(run, progress=False).run(20)
    assert summary.bootstrap_frames == 4 and summary.steps == 20


def test_resume_counts_the_oracle_calls_of_labels_made_after_the_checkpoint(tmp_path, monkeypatch):
    run = tmp_path / "run"
    L = learner(run, "ase.calculators.emt:EMT")
    monkeypatch.setattr(L.model, "fit", _killed)  # killed after 4 labels, before any checkpoint counted them
    with pytest.raises(Killed):
        L.run(20)
    assert json.loads((run / "state.json").read_text())["oracle_calls"] == 0
    R = ActiveLearner.resume(run, progress=False)
    train = frames_in(run / "train.xyz")  # their forces set the trigger's force scale too
    assert R._force_sq[1] == sum(a.get_forces().size for a in train) > 0
    assert R._force_sq[0] == pytest.approx(sum(float(np.sum(a.get_forces() ** 2)) for a in train))
    summary = R.run(20)
    assert summary.oracle_calls_by_reason["bootstrap"] == 4
    assert sum(summary.oracle_calls_by_reason.values()) == summary.oracle_calls >= summary.labelled_frames


def test_scheduled_refit_chooses_the_default_soap_once_the_labels_suffice(tmp_path, monkeypatch):
    """With gpal's default SOAP, the refit on the schedule is a whole evidence fit (SOAP width too)."""
    import json

    import gpal.model.defaults as defaults
    import gpal.model.potential as potential

    for mod in (defaults, potential):
        monkeypatch.setattr(mod, "_MIN_FRAMES_DESCRIPTOR_SEARCH", 3)
    cell = bulk("Cu", "fcc", a=3.61, cubic=True)  # 4 atoms: the default SOAP is the large one
    L = ActiveLearner(cell, EMT(), SparseGP(n_sparse=12), run_dir=tmp_path / "run", progress=False,
                      n_bootstrap=3, md=MDSettings(temperature=(300, 600)))
    L.run(0)
    assert L._descriptor_free()
    L._optimize()
    model = L.model
    assert {r["sigma"] for r in model.evidence_} == set(potential.SIGMA_CANDIDATES)
    events = [json.loads(line) for line in open(L.run_dir / "log.jsonl")]
    assert any(e.get("event") == "descriptor" for e in events)
    # the same as an independent default fit of the labels with the same sparse count
    ref = SparseGP(n_sparse=len(model.sparse_X_))
    with _no_warning_check():
        ref.fit(frames_in(L.train_path))
    probe = cell.copy()
    probe.rattle(0.05, seed=3)
    np.testing.assert_allclose(model.predict(probe)["forces"], ref.predict(probe)["forces"], rtol=1e-8, atol=1e-10)
    # a descriptor the user gave is kept: the refit only re-chooses ζ and the noises
    assert not learner(tmp_path / "given")._descriptor_free()


class _no_warning_check:
    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", UserWarning)

    def __exit__(self, *exc):
        return self._w.__exit__(*exc)


def test_max_sparse_bounds_the_sparse_set_of_every_label(tmp_path):
    L = learner(tmp_path / "run", trigger=Trigger(threshold=0.001, max_labels=10), max_sparse=40)
    L.run(60)
    assert L.n_labelled > 5 and len(L.model.sparse_X_) == 40


class FailsAfterBootstrapThenKilled(EMT):
    """EMT for the 4 bootstrap labels, then two failed calls (an SCF that stopped
    converging), then a kill on the next call."""

    def __init__(self):
        super().__init__()
        self.n = 0

    def calculate(self, atoms=None, properties=("energy",), system_changes=("positions",)):
        self.n += 1
        if self.n > 6:
            raise Killed
        if self.n > 4:
            raise RuntimeError("SCF did not converge (simulated)")
        super().calculate(atoms, properties, system_changes)


def test_failed_oracle_calls_are_on_disk_before_a_kill(tmp_path):
    """A failed label added nothing to the model, so nothing saved the calls it cost; a kill
    then lost them from the run's count (and from max_oracle_calls)."""
    run = tmp_path / "run"
    L = learner(run, FailsAfterBootstrapThenKilled(), oracle_retries=0,
                trigger=Trigger(threshold=1e-6, adaptive=False, every=2))
    with pytest.raises(Killed):
        L.run(200)
    R = ActiveLearner.resume(run, EMT(), progress=False)
    # the 7th call, cut off by the kill, is counted too: the log's last oracle record is the
    # request sent before it (a SIGKILL during a call went uncounted: 33 calls made, 32 reported)
    assert (R.oracle.n_calls, R.oracle.n_failures) == (7, 2)
    assert sum(R._calls.values()) == 7
    # a second resume before any run (the first only looked) counts it too: it is on disk
    assert ActiveLearner.resume(run, EMT(), progress=False).oracle.n_calls == 7
    summary = R.run(R.step + 1)
    assert summary.oracle_calls_unlabelled == 3  # 2 failed, 1 cut off
    again = ActiveLearner.resume(run, EMT(), progress=False)  # counted once, not at each resume
    assert again.oracle.n_calls == R.oracle.n_calls


def test_a_label_that_cannot_be_written_stops_the_run_and_is_not_asked_again(tmp_path, monkeypatch):
    """A write error (a full disk) was taken for the oracle's failure: the frame was labelled
    again and reached the model without reaching train.xyz."""
    import errno

    import gpal.learning.learner as learner_module

    run = tmp_path / "run"
    calls = []

    class Counted(EMT):
        def calculate(self, *args, **kwargs):
            calls.append(1)
            super().calculate(*args, **kwargs)

    real = learner_module.append_frame

    def full_disk(path, atoms):
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, atoms)

    monkeypatch.setattr(learner_module, "append_frame", full_disk)
    L = learner(run, Counted(), oracle_retries=2)
    with pytest.raises(OSError, match="No space left"):
        L.run(20)
    assert len(calls) == 3 and L.oracle.n_failures == 0  # not asked again
    assert len(frames_in(run / "train.xyz")) == L.n_labelled == 2
    monkeypatch.setattr(learner_module, "append_frame", real)
    R = ActiveLearner.resume(run, EMT(), progress=False)
    R.run(20)
    assert len(frames_in(run / "train.xyz")) == len(R.model.frames_) == R.n_labelled


def test_initial_magnetic_moments_and_charges_reach_the_oracle():
    from concurrent.futures import ThreadPoolExecutor

    a = bulk("Cu", "fcc", a=3.61, cubic=True)
    a.set_initial_magnetic_moments([1.0, 2.0, 0.0, 0.5])
    a.set_initial_charges([0.0, 0.0, 0.25, 0.0])
    plain = bulk("Cu", "fcc", a=3.61, cubic=True)
    for executor in (None, ThreadPoolExecutor(1)):
        oracle = gpal.Oracle("_oracles:MomentProbe", executor=executor)
        got, failures = oracle.label([a, plain])
        assert not failures
        assert [g.get_potential_energy() for g in got] == [3.5 + 25.0, 0.0]
        if executor is not None:
            executor.shutdown()


def test_a_worker_that_dies_stops_the_run_with_everything_saved(tmp_path):
    """A worker killed (a segfault, the out-of-memory killer) broke the pool; the retry's
    submit raised out of the oracle, with no failure recorded and the calls not saved."""
    import multiprocessing

    run = tmp_path / "run"
    frames = [bulk("Cu", "fcc", a=3.61, cubic=True) for _ in range(3)]
    frames[1].positions += 0.1  # the worker dies on this one
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as pool:
        oracle = gpal.Oracle("_oracles:DiesOnMovedFrames", executor=pool, retries=2)
        with pytest.raises(gpal.exceptions.OracleError, match="worker processes stopped") as err:
            oracle.label(frames)
    assert err.value.labelled[0] is not None and err.value.labelled[1] is None
    assert oracle.n_failures == len(err.value.failures) == 2
    assert oracle.n_calls <= 3  # nothing resubmitted to the broken pool
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as pool:
        L = learner(run, "_oracles:DiesOnMovedFrames", executor=pool)
        with pytest.raises(gpal.exceptions.OracleError, match="Everything so far is saved") as stopped:
            L.run(20)
    assert isinstance(stopped.value, gpal.RunStoppedError)  # (gpal learn: exit 1, not bad input's 2)
    state = json.loads((run / "state.json").read_text())
    assert state["oracle_calls"] == L.oracle.n_calls > 0 and state["oracle_failures"] > 0


def test_a_model_seeded_by_a_generator_runs_and_resumes(tmp_path):
    """Its checkpoint json-dumped the Generator and failed; it is stored as None, as in model files."""
    model = small_model()
    model.set_params(random_state=np.random.default_rng(0))
    run = tmp_path / "run"
    ActiveLearner(start(), EMT(), model, run_dir=run, progress=False).run(10)
    assert json.loads((run / "state.json").read_text())["model"]["random_state"] is None
    assert ActiveLearner.resume(run, EMT(), progress=False).run(20).steps == 20


def test_a_new_run_is_refused_in_a_folder_of_the_users(tmp_path, monkeypatch):
    """The README: run_dir = "." in a project folder is refused (the API wrote its run there)."""
    (tmp_path / "analysis.py").write_text("print(1)\n")
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(gpal.exceptions.GpalError, match="files gpal did not write"):
        learner(".").run(5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["analysis.py", "data"]


def test_a_run_dir_that_is_a_file_is_refused_when_the_learner_is_made(tmp_path):
    """A file as run_dir: a GpalError from the constructor (was a bare FileExistsError
    from mkdir at run(), after the learner was set up); the file is not touched."""
    path = tmp_path / "notes.txt"
    path.write_text("mine\n")
    with pytest.raises(gpal.exceptions.GpalError, match="notes.txt' is a file, not a folder"):
        learner(path)
    assert path.read_text() == "mine\n"


def test_a_calibration_from_the_bootstrap_frames_alone_is_said_so(tmp_path):
    """A run that labels no MD frame (its model certain throughout) calibrates on the
    bootstrap's rattled copies: its summary and a warning say that MD frames did not
    check it (the summary showed a judged coverage of 0.95 that MD frames missed)."""
    L = learner(tmp_path / "run", trigger=Trigger(threshold=10.0))
    with pytest.warns(UserWarning, match="rests on the bootstrap's rattled copies .* not checked on MD frames"):
        summary = L.run(10)
    assert summary.oracle_calls_by_reason == {"bootstrap": summary.oracle_calls, "uncertain": 0, "rollback": 0}
    assert summary.calibration["on_bootstrap_frames"] is True
    assert "calibration caveat    : rests on the bootstrap" in str(summary)


def test_a_small_cells_calibration_never_scales_the_std_down_and_says_so(tmp_path, capsys):
    """A 2-atom hcp cell with the defaults: its calibration half (2 frames, 12 force
    components) fitted the learnable std's scale to its lower bound 0.1 with no word, and
    new frames' mean z² came to 8.8. Below 48 components the std is not scaled down, and
    the summary and a warning say how little it rests on."""
    from ase.build import bulk
    from ase.io import write

    from gpal.cli import main

    write(tmp_path / "hcp.xyz", bulk("Ni", "hcp", a=2.49, c=4.07))
    (tmp_path / "c.toml").write_text(f'run_dir = "{tmp_path / "run"}"\nsteps = 300\n'
                                     f'[structure]\nfile = "{tmp_path / "hcp.xyz"}"\n')
    assert main(["learn", str(tmp_path / "c.toml"), "-q"]) == 0
    c = json.loads((tmp_path / "run" / "summary.json").read_text())["calibration"]
    assert c["scale"] >= 1.0 and not c["on_bootstrap_frames"]
    assert c["n_calibration_components"] < 48
    out = capsys.readouterr()
    assert "calibration caveat    : rests on" in out.out
    assert re.search(r"warning: this run's force-std calibration rests on \d+ force components \(fewer than 48: "
                     r"a small cell or molecule\)", out.err)


def test_a_calibration_on_few_md_frames_never_scales_the_std_down(tmp_path, monkeypatch):
    """A run's first MD calibration (4 MD labels: 2 frames in its half, 192 components of a
    32-atom cell) fitted the learnable std's scale to its bound 0.1, and the trigger never
    fired again; from 4 frames in the half (8 MD labels) it may shrink."""
    from gpal import calibration

    seen = []
    real = calibration.fit_two_term_conformal

    def spy(*args, **kwargs):
        seen.append((len(set(np.asarray(args[4]).tolist())), kwargs["min_scale"]))
        return real(*args, **kwargs)

    L = learner(tmp_path / "run", trigger=Trigger(threshold=1e-6, threshold_min=1e-6, adaptive=False, every=5,
                                                  max_labels=100, ceiling=None))
    monkeypatch.setattr(calibration, "fit_two_term_conformal", spy)
    L.run(60)
    md = [(n, m) for n, m in seen if n]
    assert any(n < 4 for n, _ in md)  # (learner._MIN_CALIBRATION_FRAMES)
    assert all(m == 1.0 for n, m in md if n < 4)
    assert any(m == 0.1 for n, m in md if n >= 4)


def test_a_start_structure_in_the_wrong_length_unit_is_refused_before_any_oracle_call(tmp_path):
    """A lattice constant in pm isolated every atom; the run labelled frames of zero force
    and failed in its calibration."""
    a = start()
    a.set_cell(a.cell * 100, scale_atoms=True)
    with pytest.raises(ValueError, match="no two atoms are within the cutoff r_cut = 4 Å"):
        ActiveLearner(a, EMT(), small_model(), run_dir=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_an_oracle_without_stress_labels_periodic_frames(tmp_path):
    """Energy and forces only (the calculator implements no stress): the frames are
    labelled without stress."""
    summary = learner(tmp_path / "run", NoStressEMT()).run(20)
    train = frames_in(tmp_path / "run" / "train.xyz")
    assert summary.oracle_failures == 0 and len(train) == summary.labelled_frames >= 4
    assert all("stress" not in a.calc.results and "forces" in a.calc.results for a in train)


def test_unlabelled_validation_frames_are_refused_before_any_oracle_call(tmp_path):
    from gpal.exceptions import MissingLabelsError

    frames = cu_frames(2, seed=1, size=(2, 2, 2))
    bare = frames[1].copy()  # positions only
    counting = CountingEMT()
    with pytest.raises(MissingLabelsError, match="validation frame 1 has no energy"):
        learner(tmp_path / "run", counting, validation=[frames[0], bare])
    assert counting.n_evaluations == 0


def test_a_trigger_subclass_that_cannot_be_imported_is_never_replaced_silently(tmp_path):
    """A Trigger subclass defined locally (or in a script's __main__): walker workers
    and a resume cannot rebuild it by import, so they ask for it instead of running
    the plain Trigger."""
    from concurrent.futures import ThreadPoolExecutor

    class NeverLabel(Trigger):
        def judge(self, *args, **kwargs):
            return {**super().judge(*args, **kwargs), "label": False}

    with ThreadPoolExecutor(1) as ex, pytest.raises(ValueError, match="NeverLabel must be defined at module level"):
        learner(tmp_path / "w", trigger=NeverLabel(), walker_executor=ex)
    L = learner(tmp_path / "run", trigger=NeverLabel(threshold=0.005))
    L.run(10)
    with pytest.raises(gpal.GpalError, match="Trigger subclass is not importable"):
        ActiveLearner.resume(tmp_path / "run", progress=False)
    R = ActiveLearner.resume(tmp_path / "run", trigger=NeverLabel(threshold=0.005), progress=False)
    assert type(R.trigger) is NeverLabel


def test_resume_takes_settings_groups_whole_and_flat_names_field_by_field(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from gpal.learning import OracleSettings, RunSettings, Validation

    val = cu_frames(2, seed=9, size=(2, 2, 2))
    learner(tmp_path / "run", validation=Validation(frames=val, stopping=StoppingRule(tolerance=1e-6))).run(10)
    with ThreadPoolExecutor(1) as ex:
        R = ActiveLearner.resume(tmp_path / "run", "ase.calculators.emt:EMT",
                                 run=RunSettings(log_every=1, max_force=50.0, progress=False),
                                 oracle_settings=OracleSettings(max_calls=3, executor=ex, retries=5),
                                 validation=Validation(check_every=7))
        assert (R.log_every, R.max_force, R.max_oracle_calls, R.oracle.retries) == (1, 50.0, 3, 5)
        assert R.oracle.executor is ex and R.check_every == 7
        assert len(R.validation) == 2 and R.stopping.tolerance == 1e-6  # the run's, kept
    R = ActiveLearner.resume(tmp_path / "run", log_every=3, progress=False)
    assert R.log_every == 3 and R.max_force == RunSettings().max_force


def test_a_new_run_never_writes_into_files_it_did_not_make(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "train.xyz").write_text("my labels\n")
    with pytest.raises(gpal.GpalError, match="already holds train.xyz but no run state"):
        learner(run).run(5)
    assert (run / "train.xyz").read_text() == "my labels\n" and len(list(run.iterdir())) == 1


def test_optimize_noise_false_keeps_the_noises_of_the_first_fit(tmp_path):
    L = learner(tmp_path / "run", optimize_noise=False, trigger=Trigger(threshold=0.002, every=2, max_labels=10))
    L.run(60)
    events = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    noises = [e["noise"]["force"] for e in events if e.get("event") == "hyperparameters"]
    assert len(noises) >= 2 and len(set(noises)) == 1
    assert L.model.noise_["force"] == noises[0]


def test_an_oracle_timeout_without_executor_warns_that_it_is_not_applied(tmp_path):
    with pytest.warns(UserWarning, match="oracle_timeout=5 s is not applied without an oracle executor"):
        learner(tmp_path / "run", oracle_timeout=5)


def test_max_oracle_calls_cuts_a_batch_and_refuses_a_larger_bootstrap(tmp_path):
    with pytest.raises(ValueError, match=r"max_oracle_calls \(3\) is below n_bootstrap \(4\)"):
        learner(tmp_path / "a", max_oracle_calls=3)
    L = learner(tmp_path / "b", max_oracle_calls=5, n_walkers=4,
                trigger=Trigger(threshold=0.0001, adaptive=False, every=1))
    summary = L.run(30)
    assert summary.oracle_calls == 5 and summary.stopped_early
    # a validation trajectory's calls (gpal learn counts them) come out of the same budget
    V = learner(tmp_path / "c", max_oracle_calls=7, n_walkers=4,
                trigger=Trigger(threshold=0.0001, adaptive=False, every=1))
    V.count_oracle_calls("validation", 2)
    summary = V.run(30)
    assert summary.oracle_calls == 7 and summary.oracle_calls_by_reason["validation"] == 2
    assert V.oracle.n_calls == 5 and summary.stopped_early


def test_a_stop_waits_for_labels_from_md_and_for_the_top_of_the_temperature_ramp(tmp_path):
    """A stop certifies what the run samples: not on bootstrap frames alone, and not before
    a rising temperature protocol has reached its top temperature."""
    rule = StoppingRule(tolerance=50.0, patience=1, use="scale")  # every real check passes
    L = learner(tmp_path / "run", stopping=rule, check_every=20, trigger=Trigger(threshold=10.0))
    summary = L.run(200)
    records = [json.loads(line) for line in open(tmp_path / "run" / "log.jsonl")]
    deferred = [r["deferred"] for r in records if r.get("event") == "stop_check" and "deferred" in r]
    # (judged only at the ramp's last step, 199, where the top is reached: its 4 temperature
    # labels, the last from the check at step 180, are labels from MD)
    assert not summary.stopped_early and summary.steps == 200
    assert [d.step for d in rule.history] in ([], [199])
    assert any("K of 1200 K" in d for d in deferred)
    L2 = learner(tmp_path / "run2", stopping=StoppingRule(tolerance=50.0, patience=1), check_every=20,
                 trigger=Trigger(threshold=10.0), md=MDSettings(temperature=600))
    L2.run(100)  # constant temperature, but only the bootstrap labelled: nothing to judge on
    records = [json.loads(line) for line in open(tmp_path / "run2" / "log.jsonl")]
    assert any("fewer than 4 labels from MD" in r.get("deferred", "") for r in records)


def _verlet_factory(atoms, timestep, temperature_K, rng):
    """Dynamics without set_temperature (a module-level MD factory)."""
    from ase.md.verlet import VelocityVerlet

    return VelocityVerlet(atoms, timestep)


def _forces_at_start_factory(atoms, timestep, temperature_K, rng):
    """Dynamics that read the forces when they are made (as ASE's LangevinBAOAB does)."""
    from ase.md.langevin import Langevin

    atoms.get_forces()
    return Langevin(atoms, timestep, temperature_K=temperature_K, friction=0.01, rng=rng)


def test_md_protocol_fixes_a_ramp_only_with_md_steps_and_refuses_dynamics_that_cannot_follow_it(tmp_path):
    with pytest.raises(ValueError, match="VelocityVerlet, which has no set_temperature"):
        learner(tmp_path / "a", md=MDSettings(temperature=(300, 1200), factory=_verlet_factory))
    # the check makes the dynamics on a copy of the start structure: one with a calculator
    learner(tmp_path / "a2", md=MDSettings(temperature=(300, 1200), factory=_forces_at_start_factory))

    def typo(atoms, timestep, temperature_K, rng):
        from ase.md.langevin import Langevin

        return Langevin(atoms, timestep, temp_K=temperature_K, friction=0.01)

    for md in (MDSettings(temperature=300, factory=typo), MDSettings(temperature=(300, 600), factory=typo)):
        with pytest.raises(ValueError, match="MDSettings.factory failed on a copy of the start structure"):
            learner(tmp_path / "a3", md=md)
    assert not (tmp_path / "a3").exists()
    learner(tmp_path / "b", md=MDSettings(temperature=600, factory=_verlet_factory))  # constant: fine
    L = learner(tmp_path / "c")
    L.run(0)  # the bootstrap only: no ramp is started
    assert L.ramp_steps is None
    R = ActiveLearner.resume(tmp_path / "c", progress=False)
    R.run(40)
    assert R.ramp_steps == 40



def _events(run_dir, name):
    return [r for r in map(json.loads, open(Path(run_dir) / "log.jsonl")) if r.get("event") == name]


def test_an_evidence_refit_keeps_each_species_sparse_count_and_the_users_n_sparse(tmp_path):
    """The refit that may re-choose the SOAP picks the sparse set again from the labelled
    frames with each species' count of the run: never above max_sparse (the per-species
    floor of an integer n_sparse took a 39-point set to 44 for a limit of 40), no species
    dropped, and the model's n_sparse stays the user's."""
    from ase.calculators.emt import EMT as _EMT

    a = bulk("Cu", "fcc", a=3.75, cubic=True).repeat((2, 2, 2))
    a.numbers[::8] = 47  # Cu28Ag4
    for n_sparse in (30, {"Cu": 20, "Ag": 10}, {"Cu": 20}):
        model = SparseGP(SOAP(species=["Cu", "Ag"], periodic=True, weighting=POLY, **SMALL_SOAP), n_sparse=n_sparse)
        L = ActiveLearner(a, _EMT(), model, run_dir=tmp_path / f"run{len(str(n_sparse))}", progress=False,
                          n_bootstrap=2, trigger=Trigger(threshold=0.005), md=MDSettings(temperature=(300, 1200)),
                          sparse_per_label=5, max_sparse=40)
        L.run(40)
        before = np.bincount(L.model.sparse_species_, minlength=48)[[29, 47]].tolist()
        L._refit_by_evidence()
        after = np.bincount(L.model.sparse_species_, minlength=48)[[29, 47]].tolist()
        assert after == before and sum(after) <= 40, n_sparse
        assert L.model.n_sparse == n_sparse
        assert _events(L.run_dir, "descriptor")[-1]["labels"] == L.n_labelled


def test_a_continued_run_reports_its_own_stop(tmp_path):
    L = learner(tmp_path / "run", stopping=StoppingRule(tolerance=50.0, patience=1, use="scale"), check_every=10,
                n_bootstrap=2, trigger=Trigger(threshold=0.001, every=2, max_labels=10, adaptive=False),
                md=MDSettings(temperature=600))
    assert L.run(200).stopped_early
    met = L.stopping.history[-1].step
    # 5 steps more: too close to the last judged check to be judged again (it would count
    # as another consecutive check); the rule stays met, and this run was not ended early
    again = L.run(L.step + 5)
    assert not again.stopped_early and len(L.stopping.history) == 1
    line = next(x for x in str(again).splitlines() if "stopping rule" in x)
    assert f"met at step {met}" in line
    assert L.run(L.step + 15).stopped_early  # judged again 10 steps after the last check
    # a run whose last step is the next check: judged there, met, but not ended early
    again = L.run(L.stopping.history[-1].step + 11)
    assert not again.stopped_early and len(L.stopping.history) == 3 and L.stopping.history[-1].stop
    line = next(x for x in str(again).splitlines() if "stopping rule" in x)
    assert f"met at step {L.step - 1}" in line


def test_start_structures_and_validation_frames_may_come_from_a_generator(tmp_path):
    L = ActiveLearner((a for a in [start()]), EMT(), small_model(), run_dir=tmp_path / "run", progress=False,
                      validation=(a for a in cu_frames(3, seed=9, size=(2, 2, 2))))
    assert len(L.structures) == 1 and len(L.validation) == 3


def test_resume_of_a_folder_that_is_not_a_run_says_which(tmp_path):
    from gpal.exceptions import GpalError

    with pytest.raises(GpalError, match="no_run: no such run folder"):
        ActiveLearner.resume(tmp_path / "no_run")
    (tmp_path / "empty").mkdir()
    with pytest.raises(GpalError, match="empty has no state.json: nothing to resume"):
        ActiveLearner.resume(tmp_path / "empty")


def test_wrong_arguments_fail_at_construction_before_any_file(tmp_path):
    """A wrong type, an oracle that cannot be built, a structure the model cannot take or
    a blow-up limit under the protocol: one clear error when the learner is made."""
    from gpal.exceptions import OracleError, OverlappingAtomsError, UnknownSpeciesError

    a = start()
    emt = "ase.calculators.emt:EMT"
    squeezed = a.copy()
    squeezed.positions[1] = squeezed.positions[0] + [0.1, 0.0, 0.0]
    cases = [
        (dict(structures="start.xyz"), TypeError, "structures must be an ase.Atoms or a list of them"),
        (dict(structures=[]), ValueError, "structures is empty"),
        (dict(structures=[a, "x"]), TypeError, r"structures must be ase.Atoms; item 1 is a str"),
        (dict(trigger=0.05), TypeError, "trigger must be a gpal.Trigger or None, got float"),
        (dict(model="model.npz"), TypeError, r"model must be a gpal.SparseGP .*gpal.load\(path\)"),
        (dict(md={"temperature": 300}), TypeError, "md must be a gpal.MDSettings or None, got dict"),
        (dict(validation=cu_frames(1)[0]), TypeError, "validation must be a list of labelled ase.Atoms"),
        (dict(oracle="ase.calculators.emt:EMTT"), OracleError,
         "oracle factory 'ase.calculators.emt:EMTT': module 'ase.calculators.emt' has no attribute 'EMTT'"),
        (dict(oracle=EMT), TypeError, r"pass an instance, EMT\(\), or the string 'ase.calculators.emt:EMT'"),
        (dict(oracle={"factory": "ase.calculators.emt:EMT", "kwargs": {"asap_cutoff": print}}), TypeError,
         "oracle's kwargs must be values a run folder can keep"),
        (dict(oracle={"factory": "_oracles:StrictEMT", "kwargs": {"methd": 1}}), OracleError,
         r"cannot build the oracle _oracles:StrictEMT\(methd=1\): TypeError"),
        (dict(oracle={"factory": "ase.calculators.emt:EMT", "kwargs": {"asap_cutof": True}}), OracleError,
         r"has no keyword 'asap_cutof' \(did you mean 'asap_cutoff'\?\)"),
        (dict(oracle="_oracles_broken:Calc"), OracleError, "importing oracle module '_oracles_broken' failed: "
                                                           "RuntimeError: licence server not reachable"),
        (dict(oracle="math:sqrt"), OracleError, "cannot build the oracle math:sqrt"),
        (dict(model=SparseGP(SOAP(species=["Au"], periodic=True, weighting=POLY, **SMALL_SOAP))),
         UnknownSpeciesError, "not defined for this model: Cu"),
        (dict(structures=squeezed), OverlappingAtomsError, r"structures\[0\] has two atoms 0.100 Å apart"),
        (dict(model=SparseGP(n_sparse={"Au": 10})), ValueError, "gives no sparse environment to the species"),
        (dict(structures=bulk("Cu", "fcc", a=3.61)), ValueError, r"structures\[0\] has one atom: MD cannot sample it"),
        (dict(md=MDSettings(temperature=1000), max_temperature=100), ValueError,
         r"max_temperature \(100 K\) must be above the MD protocol's highest temperature \(1000 K\)"),
    ]
    for k, (kw, exc, match) in enumerate(cases):
        kw = {"structures": a, "oracle": emt, "model": None, **kw}
        with pytest.raises(exc, match=match):
            ActiveLearner(kw.pop("structures"), kw.pop("oracle"), kw.pop("model"), run_dir=tmp_path / f"r{k}",
                          progress=False, **kw)
    assert not list(tmp_path.iterdir())  # no run folder, no file


def test_md_that_blows_up_at_every_step_stops_the_run_with_the_reason(tmp_path):
    L = learner(tmp_path / "run", md=MDSettings(temperature=600, timestep=100.0))
    with pytest.raises(gpal.GpalError, match=r"blew up on each of its last 50 MD steps.*time step 100 fs"):
        L.run(200)
    assert L.step < 60 and (tmp_path / "run" / "state.json").exists()


def test_resume_refuses_a_run_whose_train_xyz_was_removed(tmp_path):
    run = tmp_path / "run"
    learner(run).run(20)
    (run / "train.xyz").rename(tmp_path / "kept.xyz")
    with pytest.raises(gpal.GpalError, match=r"train.xyz holds 0 labelled frames but the run had [1-9]"):
        ActiveLearner.resume(run, EMT(), progress=False)
    (tmp_path / "kept.xyz").rename(run / "train.xyz")  # put back: the run continues
    assert ActiveLearner.resume(run, EMT(), progress=False).run(40).steps == 40


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_while_a_label_is_written_lets_it_finish_and_counts_it_once(tmp_path, monkeypatch, signum):
    """Ctrl-C (or a SIGTERM handled as one, as gpal learn does) arriving while the third
    label is written: that label, already paid for, is written whole and counted; the
    resumed run neither asks for it again nor counts its call twice."""
    import gpal.learning.learner as learner_module

    real, n = learner_module.append_frame, [0]

    def interrupted_append(path, atoms):
        n[0] += 1
        if n[0] == 3:
            signal.raise_signal(signum)  # mid-write: before any byte of the frame
        real(path, atoms)

    def as_interrupt(num, frame):
        raise KeyboardInterrupt

    monkeypatch.setattr(learner_module, "append_frame", interrupted_append)
    old = signal.signal(signal.SIGTERM, as_interrupt)
    run = tmp_path / "run"
    try:
        with pytest.raises(KeyboardInterrupt):
            learner(run).run(40)
    finally:
        signal.signal(signal.SIGTERM, old)
    monkeypatch.setattr(learner_module, "append_frame", real)
    state = json.loads((run / "state.json").read_text())
    assert len(frames_in(run / "train.xyz")) == 3 == state["n_labelled"] == state["oracle_calls"]
    summary = ActiveLearner.resume(run, EMT(), progress=False).run(40)
    train = frames_in(run / "train.xyz")
    assert summary.oracle_calls == summary.labelled_frames == len(train)
    assert len({a.positions.round(8).tobytes() for a in train}) == len(train)  # none labelled twice


def test_a_start_killed_before_its_state_was_written_can_be_started_again(tmp_path):
    """The first checkpoint writes structures.xyz, then state.json: a kill between them
    leaves the start structures and nothing else. The same learner starts again there;
    another structure is refused, and that folder's file is left as it was."""
    from gpal.io import write_frames

    run = tmp_path / "run"
    run.mkdir()
    write_frames(run / "structures.xyz", [start()])
    assert learner(run).run(20).steps == 20
    other = tmp_path / "other"
    other.mkdir()
    moved = start()
    moved.positions[0] += 0.05
    write_frames(other / "structures.xyz", [moved])
    before = (other / "structures.xyz").read_bytes()
    with pytest.raises(gpal.GpalError, match="already holds structures.xyz but no run state"):
        learner(other).run(20)
    from gpal import TargetSet  # with a target set, its structures are written before state.json too

    targets = TargetSet([start()], quantity="energies", n_sparse=5, explore=0)
    aimed = tmp_path / "aimed"
    aimed.mkdir()
    write_frames(aimed / "structures.xyz", [start()])
    write_frames(aimed / "targets.xyz", targets.structures)
    assert learner(aimed, targets=targets).run(20).steps == 20
    assert (other / "structures.xyz").read_bytes() == before and sorted(p.name for p in other.iterdir()) == [
        "structures.xyz"]


def test_resume_after_a_kill_that_cut_the_last_log_record(tmp_path):
    run = tmp_path / "run"
    learner(run).run(20)
    data = (run / "log.jsonl").read_bytes()
    (run / "log.jsonl").write_bytes(data[:data.rstrip(b"\n").rfind(b"\n") + 26])  # a record cut after 25 bytes
    assert ActiveLearner.resume(run, EMT(), progress=False).run(40).steps == 40
    records = [json.loads(line) for line in open(run / "log.jsonl")]  # every line a whole record
    assert any(r.get("event") == "resume" for r in records)
    assert len((run / "log.jsonl.partial").read_bytes().strip()) == 25


def test_one_learner_at_a_time_resumes_or_runs_a_run_folder(tmp_path):
    """A batch job requeued while the old one still runs: while one process runs (or
    resumes) a run folder, another's resume or run is refused before it reads or repairs
    anything; a learner resumed before someone else continued the run is refused too."""
    from gpal.learning.learner import run_dir_in_use

    run = tmp_path / "run"
    learner(run).run(20)
    assert not run_dir_in_use(run)
    hold = "import fcntl, sys, time; f = open(sys.argv[1], 'a'); fcntl.lockf(f, fcntl.LOCK_EX); print(1, flush=True); time.sleep(60)"
    other = subprocess.Popen([sys.executable, "-c", hold, str(run / "run.lock")], stdout=subprocess.PIPE, text=True)
    try:  # another process at work there
        assert other.stdout.readline().strip() == "1"
        assert run_dir_in_use(run)
        with pytest.raises(gpal.GpalError, match="another gpal process is running or resuming the run"):
            ActiveLearner.resume(run, EMT(), progress=False)
    finally:
        other.kill()
        other.wait()
    assert not run_dir_in_use(run)  # (the lock ends with its process)
    from gpal.learning.learner import _lock_run_dir, _unlock_run_dir

    held = _lock_run_dir(run)  # a learner of this process at work there (in a thread, say)
    try:
        assert run_dir_in_use(run)
        with pytest.raises(gpal.GpalError, match="another learner of this process is running or resuming"):
            ActiveLearner.resume(run, EMT(), progress=False)
        probe = "import fcntl, sys; f = open(sys.argv[1], 'a'); fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)"
        outside = subprocess.run([sys.executable, "-c", probe, str(run / "run.lock")], capture_output=True)
        assert outside.returncode != 0  # ... and the refusals left this process's lock in place
    finally:
        _unlock_run_dir(held)
    early = ActiveLearner.resume(run, EMT(), progress=False)
    late = ActiveLearner.resume(run, EMT(), progress=False)  # (resuming twice in a notebook is fine)
    assert late.run(40).steps == 40
    with pytest.raises(gpal.GpalError, match="was continued elsewhere since this learner last saved or resumed"):
        early.run(60)
    assert late.run(60).steps == 60  # the one that ran goes on


def test_a_reserved_run_folder_is_handed_to_one_learner_and_held_to_the_end(tmp_path):
    """reserve_run_dir (gpal learn's hold on a folder it prepares): the learner it builds
    adopts the lock for its run and resume, a second learner of the process is refused
    while the first holds it, and no other process gets the folder until the block ends."""
    from gpal.learning.learner import reserve_run_dir, run_dir_in_use

    run = tmp_path / "run"
    run.mkdir()
    probe = "import fcntl, sys; f = open(sys.argv[1], 'a'); fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)"

    def outside_can_lock():
        return subprocess.run([sys.executable, "-c", probe, str(run / "run.lock")], capture_output=True).returncode == 0

    with reserve_run_dir(run):
        assert run_dir_in_use(run) and not outside_can_lock()
        assert learner(run).run(20).steps == 20
        assert not outside_can_lock()  # (the learner's run gave the lock back to the reservation)
        resumed = ActiveLearner.resume(run, EMT(), progress=False)
        assert resumed.run(30).steps == 30
        from gpal.learning.learner import _lock_run_dir, _unlock_run_dir

        adopted = _lock_run_dir(run)  # a learner of this process running there now
        try:
            with pytest.raises(gpal.GpalError, match="another learner of this process"):
                ActiveLearner.resume(run, EMT(), progress=False)
        finally:
            _unlock_run_dir(adopted)
        assert not outside_can_lock()
        with pytest.raises(gpal.GpalError, match="another learner of this process"):
            with reserve_run_dir(run):  # a second reservation (nested, or another thread's)
                pass
        import threading

        other = []  # a learner of another thread may not take the folder this one prepares
        t = threading.Thread(target=lambda: other.append(pytest.raises(gpal.GpalError, learner(run).run, 40)))
        t.start()
        t.join()
        assert other and "another learner of this process" in str(other[0].value)
        # the reservation still stands for this thread's learner
        assert ActiveLearner.resume(run, EMT(), progress=False).run(40).steps == 40
    assert not run_dir_in_use(run) and outside_can_lock()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_oracle_workers_leave_ctrl_c_to_the_parent_and_end_with_it(tmp_path):
    """gpal learn's worker processes: Ctrl-C ignored (the learner stops the pool), they
    outlive the thread that started them, any start method, and a parent killed by
    SIGKILL takes them with it."""
    script = textwrap.dedent("""
        import multiprocessing, os, signal, sys, threading
        from concurrent.futures import ProcessPoolExecutor
        from gpal.learning.oracle import worker_initializer

        def probe(_):  # Ctrl-C ignored; a process group of its own, out of the terminal's way
            return os.getpid(), (signal.getsignal(signal.SIGINT) is signal.SIG_IGN
                                 and os.getpgid(0) == os.getpid()
                                 and os.readlink("/proc/self/fd/0") == os.devnull
                                 and signal.getsignal(signal.SIGTTOU) is signal.SIG_IGN)

        if __name__ == "__main__":
            me = (os.getpid(),)
            fs = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("forkserver"),
                                     initializer=worker_initializer, initargs=me)  # (Python 3.14's default)
            pool = ProcessPoolExecutor(2, initializer=worker_initializer, initargs=me)
            t = threading.Thread(target=lambda: pool.submit(probe, 0).result())  # workers started from a thread
            t.start()
            t.join()  # ... that ends: they stay
            found = set(pool.map(probe, range(8))) | {fs.submit(probe, 0).result()}
            print(" ".join(str(pid) for pid, _ in found), all(ign for _, ign in found), flush=True)
            os.kill(os.getpid(), signal.SIGKILL)  # no shutdown, no atexit: as kill -9
    """)
    (tmp_path / "pool.py").write_text(script)
    proc = subprocess.run([sys.executable, str(tmp_path / "pool.py")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    *pids, ignored = proc.stdout.split()
    assert pids and ignored == "True"

    def running(pid):  # (a zombie waiting for a reaper has ended)
        try:
            return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    deadline = time.time() + 20
    while time.time() < deadline and any(running(p) for p in pids):
        time.sleep(0.1)
    assert not any(running(p) for p in pids)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and process groups")
def test_a_program_an_oracle_worker_started_ends_when_the_learners_job_is_killed(tmp_path):
    """A worker leads its own process group, which the learner's job signals do not
    reach: a DFT program it started ran on after kill -9 of the job (or a closed
    terminal's SIGHUP) until the worker, finding the learner gone, ended its group."""
    script = textwrap.dedent("""
        import signal, subprocess, time
        from gpal.learning.oracle import worker_pool

        # a job in a terminal, which a SIGHUP ends (the test's runner may ignore SIGHUP, as
        # under nohup, and a child inherits that)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)

        def task():
            p = subprocess.Popen(["sleep", "120"])  # (a file-based calculator's program)
            print(p.pid, flush=True)
            p.wait()

        if __name__ == "__main__":
            pool = worker_pool(1)
            pool.submit(task)
            time.sleep(60)
    """)
    (tmp_path / "job.py").write_text(script)
    for sig in (signal.SIGKILL, signal.SIGHUP):
        job = subprocess.Popen([sys.executable, str(tmp_path / "job.py")], stdout=subprocess.PIPE, text=True,
                               start_new_session=True)  # (a shell job: a process group of its own)
        program = int(job.stdout.readline())
        os.killpg(job.pid, sig)
        job.wait(timeout=30)

        def running(pid):
            try:
                return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
            except OSError:
                return False

        deadline = time.time() + 20
        while time.time() < deadline and running(program):
            time.sleep(0.1)
        alive = running(program)
        if alive:
            os.kill(program, signal.SIGKILL)
        assert not alive, signal.Signals(sig).name


def _no_calculator_of_its_own(key):
    from gpal.learning.oracle import _cached_calculator

    return _cached_calculator(key) is None


def test_a_forked_worker_builds_its_own_oracle_calculator_and_a_fitted_models_run_resumes(tmp_path):
    """The calculator the learner builds to check its oracle stays in the learner's
    process (a forked worker builds its own: a calculator holding threads or pipes does
    not survive a fork); a run with a fitted model interrupted before its frames were
    written to train.xyz resumes."""
    import multiprocessing

    spec = OracleSpec("ase.calculators.emt:EMT")
    spec.check()
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as ex:
        assert ex.submit(_no_calculator_of_its_own, spec.key()).result()
    model = small_model().fit(cu_frames(4, size=(2, 2, 2)))
    L = ActiveLearner(start(), EMT(), model, run_dir=tmp_path / "run", progress=False,
                      trigger=Trigger(threshold=0.005), md=MDSettings(temperature=(300, 1200)))

    def interrupted():
        raise KeyboardInterrupt

    model.training_frames = interrupted  # Ctrl-C while the model's frames are written out
    with pytest.raises(KeyboardInterrupt):
        L.run(10)
    R = ActiveLearner.resume(tmp_path / "run", EMT(), progress=False)
    assert R.run(10).steps == 10 and R.n_labelled >= 4


def test_oracle_threads_of_a_thread_pool_each_build_their_calculator(tmp_path):
    """A calculator is rarely thread-safe: labels computed on a thread-pool executor (or
    a multi-threaded dask worker) must not share one (they mixed up frames' results)."""
    from concurrent.futures import ThreadPoolExecutor

    from gpal.learning.oracle import Oracle

    frames = cu_frames(6, seed=4, size=(2, 2, 2))
    with ThreadPoolExecutor(3) as ex:
        labelled, failures = Oracle(OracleSpec("_oracles:SlowEMT", {"delay": 0.1}), executor=ex).label(frames)
    assert not failures
    for a, b in zip(labelled, frames):
        ref = b.copy()
        ref.calc = EMT()
        assert a.get_potential_energy() == pytest.approx(ref.get_potential_energy(), abs=1e-10)


def test_a_bound_warning_of_the_bootstrap_fit_on_few_frames_is_logged_not_warned(tmp_path, monkeypatch, recwarn):
    """On 2 correct water-trimer frames the first fit warned "signal_variance at its lower
    bound ... check units": the run chooses again as labels arrive."""
    import warnings as _w

    L = learner(tmp_path / "run", n_bootstrap=2, trigger=Trigger(threshold=10.0))
    real = L.model.fit

    def fit(frames, *args, **kwargs):
        out = real(frames, *args, **kwargs)
        _w.warn("hyperparameters chosen by the evidence sit at a bound of their range: signal_variance = "
                "0.001 eV² (at its lower bound).", UserWarning)
        return out

    monkeypatch.setattr(L.model, "fit", fit)
    L.run(5)
    assert not [w for w in recwarn if "sit at a bound" in str(w.message)]
    logged = [json.loads(line) for line in open(tmp_path / "run" / "log.jsonl")]
    assert [r["frames"] for r in logged if r.get("event") == "evidence_bound"] == [2]


def test_a_batch_never_labels_two_copies_of_one_frame():
    """A copy moved by 1e-3 Å scored 0.36-0.86 of the first pick's gain, above the 0.25
    kept, when the stds were near the label noise: it was labelled twice."""
    from gpal.learning.learner import _distinct_frames

    a = start()
    a.positions += np.random.default_rng(0).normal(0, 0.05, a.positions.shape)
    copy_ = a.copy()
    copy_.positions += 1e-3
    wrapped = a.copy()
    wrapped.positions[0] += a.cell[0]  # the same frame, one atom in the next cell
    other = start()
    other.positions += np.random.default_rng(1).normal(0, 0.05, other.positions.shape)
    assert _distinct_frames([a, copy_, wrapped, other], [1, 0, 2, 3]) == [1, 3]
    slab = a.copy()  # periodic in x and y, no third cell vector
    slab.pbc, slab.cell[2] = (True, True, False), 0.0
    slab_wrapped = slab.copy()
    slab_wrapped.positions[0] += slab.cell[0]
    assert _distinct_frames([slab, slab_wrapped], [0, 1]) == [0]


class ExitingEMT(EMT):
    """EMT whose 2nd evaluation calls sys.exit, as some code wrappers do on a failure."""

    calls = 0

    def calculate(self, atoms=None, properties=("energy",), system_changes=("positions",)):
        ExitingEMT.calls += 1
        if ExitingEMT.calls == 2:
            sys.exit(3)
        super().calculate(atoms, properties, system_changes)


def test_an_oracle_that_calls_sys_exit_or_is_not_a_calculator_is_refused(tmp_path, monkeypatch):
    """A factory that called sys.exit ended `gpal learn` with exit code 0 and no word
    (SystemExit is no Exception); "ase:Atoms" passed the calculator check (an Atoms has
    get_potential_energy) and failed at every label. Both are now OracleErrors before
    any run folder exists; a sys.exit during a label is that label's failure."""
    import types

    mod = types.ModuleType("exiting_oracle")
    mod.Factory = lambda: sys.exit(2)
    monkeypatch.setitem(sys.modules, "exiting_oracle", mod)
    with pytest.raises(gpal.OracleError, match=r"cannot build the oracle exiting_oracle:Factory\(\): it called sys.exit\(2\)"):
        learner(tmp_path / "a", "exiting_oracle:Factory")
    with pytest.raises(gpal.OracleError, match="returned Atoms .*not an ASE calculator"):
        learner(tmp_path / "b", "ase:Atoms")
    with pytest.raises(TypeError, match="cannot use Atoms as an oracle"):
        learner(tmp_path / "c", bulk("Cu"))
    assert not any((tmp_path / d).exists() for d in "abc")
    ExitingEMT.calls = 0
    L = learner(tmp_path / "run", ExitingEMT())
    L.run(10)  # the bootstrap's 2nd call exits: a failed label, replaced by a spare
    assert ExitingEMT.calls > 4 and L.n_labelled >= 4


def test_a_stop_on_an_oracle_failure_logs_the_labels_it_wrote(tmp_path):
    """(review) With on_oracle_failure="stop", the labels of the batch that arrived before
    the failure were in train.xyz but had no label record in log.jsonl (2 frames, 1
    record): the record is now written before the stop and its checkpoint."""
    from _oracles import FlakyEMT

    run = tmp_path / "run"
    with pytest.raises(gpal.OracleError):
        learner(run, FlakyEMT(fail_every=3), on_oracle_failure="stop", oracle_retries=0).run(10)
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    logged = sum(r["n"] for r in records if r.get("event") == "label")
    assert logged == len(frames_in(run / "train.xyz")) >= 2


def test_a_calibration_inside_a_hyperparameter_refit_is_counted_once(tmp_path, monkeypatch):
    """The refit's calibration was counted as a model update too: the summary's times
    added up to more than the wall time."""
    from gpal import SparseGP

    real = SparseGP.loo_residuals
    spent = []

    def slow(self, *a, **k):  # (inside the time calibrate counts)
        time.sleep(0.5)
        spent.append(0.5)
        return real(self, *a, **k)

    monkeypatch.setattr(SparseGP, "loo_residuals", slow)
    s = learner(tmp_path / "run", optimize_every=1).run(30)
    assert len(spent) >= 3 and s.time_calibration >= sum(spent)
    assert s.time_md + s.time_oracle + s.time_update + s.time_calibration <= s.wall_time
    # a few tiny fits (0.31 s on a loaded 2-core machine); counted twice, the
    # calibrations' sleeps alone would be >= 1.5 s
    assert s.time_update < 0.5 * sum(spent)


def test_a_stopping_tolerance_above_the_blow_up_limit_warns(tmp_path):
    """A tolerance meant in meV/Å (30 for 0.03 eV/Å) stopped the run at its first check
    without a word (a trigger threshold that large warns)."""
    import warnings

    from gpal.calibration import StoppingRule

    with pytest.warns(UserWarning, match=r"stopping tolerance = 30 eV/Å is not below the blow-up force limit"):
        learner(tmp_path / "run", stopping=StoppingRule(tolerance=30.0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        learner(tmp_path / "run2", stopping=StoppingRule(tolerance=0.03))
    assert not [w for w in caught if "stopping tolerance" in str(w.message)]


def test_temporary_files_a_kill_left_are_removed_when_the_run_continues(tmp_path):
    """Each kill during a write left a new .NAME.XXXXXXXX.tmp (up to the model's size), and
    nothing removed them; the user's own files in the folder stay, config.toml.tmp too
    (it was deleted as the temporary name of earlier gpal versions)."""
    run = tmp_path / "run"
    learner(run).run(10)
    left = [".model.npz.0a1b2c3d.tmp", ".train.xyz.deadbeef.tmp"]
    mine = ["notes.tmp", ".model.npz.tmp", "model.npz.bak", "config.toml.tmp", "train.xyz.tmp"]
    for name in left + mine:
        (run / name).write_text("x")
    ActiveLearner.resume(run, progress=False).run(20)
    names = {p.name for p in run.iterdir()}
    assert not names & set(left) and set(mine) <= names


def test_the_default_rattle_follows_the_shortest_bond_of_a_periodic_cell(tmp_path):
    """A periodic water box got the crystals' 0.05 Å rattle: a bootstrap frame with O–H
    squeezed to 0.59 Å and forces of 97 eV/Å, a first model whose fitted force noise was
    2.25 eV/Å, and 12 blow-ups in 2,000 steps of MD."""
    from ase.build import bulk, molecule

    from gpal.learning.learner import default_rattle

    water = molecule("H2O")
    water.cell, water.pbc = [4.0, 4.0, 4.0], True  # (a box of one molecule: its O-H bonds are the shortest)
    cu = bulk("Cu", "fcc", a=3.61, cubic=True)
    assert default_rattle([cu]) == 0.05 and default_rattle([water]) == 0.02
    assert default_rattle([molecule("CH4")]) == 0.02  # (not periodic: as before)
    assert default_rattle([bulk("Si", "diamond", a=5.43)]) == pytest.approx(0.02 * 2.3513, rel=1e-3)
    assert learner(tmp_path / "run").rattle == 0.05


def test_a_walker_labelled_while_running_hot_restarts_from_its_last_good_frame(tmp_path):
    """A model that heats its MD: the hot frame is labelled (it shows where the model is
    wrong), then the walker starts again from its last good frame with thermal momenta, so
    its next labels are not frames of the same runaway (a water box: labels 17-28 thermal
    energy stds above the liquid before a blow-up at 1,506 K)."""
    L = learner(tmp_path / "run", trigger=Trigger(threshold=10.0), md=MDSettings(temperature=300))
    L.run(10)
    w = L.walkers[0]
    good_positions = w.good[0].copy()
    from ase.md.velocitydistribution import thermalize_momenta

    thermalize_momenta(w.atoms, temperature_K=3000, rng=np.random.default_rng(0))
    w.atoms.positions += 0.01  # not the good frame
    assert w.running_hot(300)
    n = L.n_labelled
    assert L._label_round(300, (([w], "uncertain"),))
    assert L.n_labelled == n + 1
    assert np.allclose(w.atoms.positions, good_positions)
    assert not w.running_hot(300) and w.atoms.get_temperature() > 0
    hot = _events(L.run_dir, "restart_hot")
    assert len(hot) == 1 and hot[0]["temperature"] > 1500 and hot[0]["target_T"] == 300
    # a walker labelled at its thermostat's temperature goes on from its own frame
    w.atoms.positions += 0.01
    thermalize_momenta(w.atoms, temperature_K=300, rng=np.random.default_rng(1))
    here = w.atoms.positions.copy()
    assert not w.running_hot(300)
    assert L._label_round(300, (([w], "uncertain"),))
    assert np.array_equal(w.atoms.positions, here) and len(_events(L.run_dir, "restart_hot")) == 1


def test_a_labelled_walker_goes_on_with_fresh_thermal_momenta(tmp_path):
    """The label changes the model under the walker: the potential energy its frame loses in
    the new model would heat it (a water box ran 90-100 K above its 330 K for 400 steps at
    a label every ~40 steps). Its momenta are drawn again at the thermostat's temperature;
    the other walkers and every position are left as they were."""
    L = learner(tmp_path / "run", trigger=Trigger(threshold=10.0), md=MDSettings(temperature=300), n_walkers=2)
    L.run(10)
    w, other = L.walkers
    from ase.md.velocitydistribution import thermalize_momenta

    for k, a in enumerate((w.atoms, other.atoms)):
        thermalize_momenta(a, temperature_K=420, rng=np.random.default_rng(k))  # warm, not hot
    assert not w.running_hot(300)
    here, p_w, p_other = w.atoms.positions.copy(), w.atoms.get_momenta().copy(), other.atoms.get_momenta().copy()
    assert L._label_round(300, (([w], "uncertain"),))
    assert np.array_equal(w.atoms.positions, here)
    assert not np.allclose(w.atoms.get_momenta(), p_w)
    assert np.allclose(w.atoms.get_momenta().sum(axis=0), 0.0, atol=1e-10)  # no drift
    assert np.array_equal(other.atoms.get_momenta(), p_other)
    # at 300 K: the mean kinetic temperature of many draws (32 atoms: one draw's std is 25 %)
    temps = []
    for _ in range(40):
        w.refresh_momenta(300)
        temps.append(w.atoms.get_temperature())
    assert np.mean(temps) == pytest.approx(300 * (1 - 1 / 32), rel=0.06)  # (3N - 3 degrees after Stationary)


def test_checkpoints_are_spaced_by_their_cost_and_a_resume_adds_the_labels_the_model_file_lacks(
        tmp_path, monkeypatch):
    """A label's checkpoint (the model file grows with the labels) waits until 9x its last
    duration has passed; every label is in train.xyz at once, and a run folder as a kill
    would leave it between checkpoints resumes with all of them in its model."""
    import shutil

    from ase.calculators.calculator import all_changes

    import gpal.learning.learner as learner_module

    monkeypatch.setattr(learner_module, "_CHECKPOINT_SPACING", 1e9)  # only the first, then deferred
    snapshots = []

    class Snapshot(EMT):
        def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            run = tmp_path / "run"
            if (run / "train.xyz").exists() and len(frames_in(run / "train.xyz")) == 7 and not snapshots:
                shutil.copytree(run, tmp_path / "killed")  # (the 8th label is being computed)
                snapshots.append(1)

    L = learner(tmp_path / "run", Snapshot(), trigger=Trigger(threshold=0.001, max_labels=10, adaptive=False),
                checkpoint_seconds=1e9)
    L.run(120)
    assert snapshots and L.n_labelled > 8
    killed = tmp_path / "killed"
    (killed / "run.lock").unlink(missing_ok=True)
    in_file = gpal.load(killed / "model.npz")
    labelled = frames_in(killed / "train.xyz")
    assert len(labelled) == 7 and len(in_file.frames_) < 7  # the model file lags the labels
    R = ActiveLearner.resume(killed, oracle=EMT(), progress=False)
    assert R.n_labelled == 7 == len(R.model.frames_)
    assert R.oracle.n_calls == 8  # (the 8th, cut by the "kill", was made: counted, with no label)
    monkeypatch.setattr(learner_module, "_CHECKPOINT_SPACING", 0.0)
    R.run(130)
    assert len(frames_in(killed / "train.xyz")) == R.n_labelled == len(R.model.frames_)


def test_a_labels_checkpoint_waits_nine_times_the_last_checkpoints_duration(tmp_path):
    """The spacing rule itself (default 9): a checkpoint that took long defers the next
    label's, which comes at a label once enough time has passed; a scheduled refit is
    saved at once."""
    L = learner(tmp_path / "run", trigger=Trigger(threshold=10.0), md=MDSettings(temperature=300),
                optimize_every=0)
    L.run(10)
    w = L.walkers[0]
    model = tmp_path / "run" / "model.npz"

    def label():
        w.atoms.positions += 0.01
        L._label_round(300, (([w], "uncertain"),))
        return len(gpal.load(model).frames_)

    n = L.n_labelled
    L._checkpoint_cost, L._last_checkpoint = 10.0, time.perf_counter()  # 90 s to wait
    assert label() == n and L._checkpoint_due  # deferred: the label is in train.xyz only
    assert len(frames_in(tmp_path / "run" / "train.xyz")) == n + 1
    L._last_checkpoint -= 91.0
    assert label() == n + 2 and not L._checkpoint_due


def test_a_force_noise_near_the_forces_themselves_is_warned_once(tmp_path):
    """A run whose model leaves much of the forces unexplained (8-atom diamond Si with
    periodic GFN1-xTB: noise 0.37-0.40 of the RMS force) ended without a word."""
    L = learner(tmp_path / "run", trigger=Trigger(threshold=10.0), md=MDSettings(temperature=300))
    L.run(10)
    L.n_labelled, L._force_sq = 16, [16.0 * 300, 300]  # RMS force component 4 eV/Å (a stand-in)
    L.model.noise_["force"] = 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        L._warn_unlearnable_forces()  # 12 %: fine
    L.model.noise_["force"] = 2.0
    L.model.set_params(force_noise=2.0)  # the user's own noise: no finding of the evidence
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        L._warn_unlearnable_forces()
    L.model.set_params(force_noise=None)
    with pytest.warns(UserWarning, match="force noise at 2 eV/Å, 50 % of the labels' RMS force component"):
        L._warn_unlearnable_forces()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        L._warn_unlearnable_forces()  # once
    assert _events(L.run_dir, "unlearnable_forces")


def test_a_resumed_runs_curve_and_summary_cover_every_session(tmp_path):
    val = cu_frames(2, seed=9, size=(2, 2, 2))
    run = tmp_path / "run"
    first = learner(run, validation=val, sparse_per_label=5).run(60)
    records = [json.loads(line) for line in open(run / "log.jsonl")]
    val_steps = [r["step"] for r in records if r.get("event") == "validation"]
    assert len(val_steps) == len(set(val_steps))  # the final validation is logged once
    assert json.loads((run / "summary.json").read_text())["finished"] is True
    again = ActiveLearner.resume(run, EMT())
    again.total_steps = 120  # (as run(120) sets it) a session that continues the run...
    again._supersede_summary()  # ...marks the earlier summary before its first step
    old = json.loads((run / "summary.json").read_text())
    assert old["finished"] is False and "from step 60" in old["superseded"]
    assert "NOT FINISHED" in str(gpal.learning.learner.Summary(**old))
    second = again.run(120)
    assert json.loads((run / "summary.json").read_text())["finished"] is True
    labels, errors, what = again._curve_data()  # the plot's data: both sessions, from the log
    assert what == "force RMSE, validation frames"
    steps = [s for s, _ in errors]
    assert steps[0] <= first.steps < steps[-1] and len(steps) == len(set(steps))
    assert labels[-1][1] == second.oracle_calls
    assert second.wall_time_total > second.wall_time and second.time_validation > 0


def test_the_first_adaptive_check_after_an_update_is_a_reference_and_says_so():
    """The first check after an update only sets the adaptive level, even above the ceiling
    (labelling there raised water's energy error), and its result says so: the log showed
    ethanol checks at 0.66 eV/Å against a threshold of 0.02, unlabelled, without a reason."""
    model = SparseGP(small_model().descriptor, n_sparse=20).fit(cu_frames(3, seed=1, size=(2, 2, 2)))
    trig = Trigger(adaptive=True)
    pred = {"forces_std": np.full((32, 3), 0.01)}
    pred["forces_std"][0, 0] = 0.3  # above the floor and the ceiling 0.25 x 1 eV/Å
    kw = dict(model=model, label_steps=[], step=5, force_rms=1.0)
    j = trig.judge(pred, recent=[], **kw)
    assert j["reference"] and not j["label"]
    j = trig.judge(pred, recent=[0.1], **kw)
    assert not j["reference"] and j["label"]


def test_a_summary_says_why_a_judged_rule_was_not_met_and_how_a_ramp_defers_it():
    from gpal.learning.learner import Summary

    reason = "calibrated bound 0.0149 (conformal) < tolerance 0.05: 1 consecutive check(s), patience 3"
    s = Summary(steps=2000, oracle_calls=22, oracle_failures=0, labelled_frames=22, bootstrap_frames=4,
                rollbacks=0, sparse_refreshes=0, wall_time=40.0, time_md=20.0, time_oracle=1.0, time_update=9.0,
                stop_checks={"judged": 1, "deferred": 19, "met_at": None, "last_reason": reason,
                             "last_deferred": "the temperature protocol is at 880 K of 900 K"})
    text = str(s)
    assert f"judged 1 time, not met (last: {reason})" in text and "gpal learn --resume" in text


def test_the_learning_curve_after_a_kill_follows_the_timeline_the_run_continued(tmp_path):
    run = tmp_path / "run"
    val = cu_frames(2, seed=9, size=(2, 2, 2))
    trig = Trigger(threshold=1e-4, adaptive=False, every=5, max_labels=20)
    L = learner(run, validation=val, trigger=trig, sparse_refresh=False)
    L.run(40)
    saved = {n: (run / n).read_bytes() for n in ("state.json", "model.npz", "walkers.npz")}
    L.run(100)  # labels and validations a kill at step 100 leaves beyond the step-40 checkpoint
    for n, b in saved.items():
        (run / n).write_bytes(b)
    (run / "summary.json").unlink()
    (run / "run.lock").unlink(missing_ok=True)
    R = ActiveLearner.resume(run, EMT(), progress=False)
    R.run(100)
    labels, errors, _ = R._curve_data()
    for points in (labels, errors):
        st = [s for s, _ in points]
        assert st == sorted(st) and st[-1] > 40
    assert [c for _, c in labels] == sorted(c for _, c in labels)
    assert labels[-1][1] == R.oracle.n_calls  # the left timeline's calls were paid: counted


def test_wall_time_total_adds_every_run_of_one_learner(tmp_path):
    L = learner(tmp_path / "run", trigger=Trigger(threshold=10.0))
    first = L.run(10)
    second = L.run(20)
    # (the first session's whole time, its plots after its summary too)
    assert second.wall_time_total >= first.wall_time_total + second.wall_time


def test_file_based_oracles_on_workers_run_in_folders_of_their_own(tmp_path):
    """A file-based calculator (a DFT code's fixed input and output names) built on each
    worker shared its folder: 3 workers labelled 4 of 6 frames with another frame's
    energy, with no error."""
    from concurrent.futures import ThreadPoolExecutor

    from gpal.learning.oracle import Oracle, OracleSpec

    frames = []
    for s in range(6):
        a = start()
        a.rattle(0.05, seed=s)
        frames.append(a)
    with ThreadPoolExecutor(3) as ex:
        out, failures = Oracle(OracleSpec("_oracles:FileEMT", {"directory": str(tmp_path / "dft")}),
                               executor=ex).label(frames)
    assert not failures and len(out) == 6
    for a, b in zip(frames, out):
        ref = a.copy()
        ref.calc = EMT()
        assert b.get_potential_energy() == pytest.approx(ref.get_potential_energy(), abs=1e-9)
    folders = sorted(p.name for p in (tmp_path / "dft").iterdir())
    assert len(folders) >= 2 and all(f.startswith(f"gpal-worker-{os.getpid()}-") for f in folders)


def test_work_without_a_bar_is_announced_on_stderr(tmp_path, capsys):
    """After the bootstrap bar and after the MD bar a large cell's first fit and last
    hyperparameter choice ran with no output (42 s and 97 s at 2,048 atoms)."""
    small = ActiveLearner(start(), EMT(), SparseGP(SOAP(species=["Cu"], periodic=True, weighting=POLY, **SMALL_SOAP),
                                                     n_sparse=30),
                          run_dir=tmp_path / "run", progress=True, trigger=Trigger(threshold=1e-4),
                          optimize_every=10.0)  # (the schedule's next choice after 40 labels: one at the end)
    small.run(100)
    err = capsys.readouterr().err
    assert "gpal: fitting the first model to the 4 bootstrap labels..." in err
    assert re.search(r"gpal: the last hyperparameter choice, on all \d+ labels, and the calibration\.\.\.", err)


def test_a_rare_species_calibration_is_named_in_the_summary(tmp_path):
    """2 Au atoms among 108: Au's factor rested on 36 force components, pulled halfway to
    1 by its prior, and new frames' Au mean z² came to 2.3, with no word."""
    from ase.build import bulk

    cell = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))
    cell.numbers[:1] = 79  # one Au among 32
    model = SparseGP(SOAP(species=["Cu", "Au"], periodic=True, weighting=POLY, **SMALL_SOAP), n_sparse=40)
    L = ActiveLearner(cell, EMT(), model, run_dir=tmp_path / "run", progress=False, trigger=Trigger(threshold=1e-4),
                      md=MDSettings(temperature=600))
    with pytest.warns(UserWarning, match=r"species factor of Au \(\d+\) rests on fewer than 60 force components"):
        summary = L.run(300)
    counts = summary.calibration["species_components"]
    assert counts["79"] < 60 <= counts["29"]
    assert "calibration caveat    : the species factor of Au (" in str(summary)


def test_a_rare_species_caveat_stays_on_a_bootstrap_calibration():
    """1 Ni in 31 Cu with no MD label: the rare-species caveat was dropped where the
    calibration rests on least (the bootstrap's frames; Ni's mean z² on MD frames 8.0)."""
    from gpal.learning.learner import _calibration_caveats

    c = {"on_bootstrap_frames": True, "species_components": {"28": 6, "29": 186}}
    said = [text for text, _ in _calibration_caveats(c)]
    assert len(said) == 2 and said[0].startswith("rests on the bootstrap's rattled copies")
    assert said[1].startswith("the species factor of Ni (")


def test_a_program_run_by_the_oracle_gets_its_own_folder_in_the_learners_process_too(tmp_path):
    """A Vasp-like calculator (a plain Calculator subclass with write_input) shared one
    folder between workers; and a single process wrote its files over the user's."""
    from gpal.learning.oracle import OracleSpec

    for factory in ("_oracles:FileEMT", "_oracles:WritesInputEMT"):
        calc = OracleSpec(factory, {"directory": str(tmp_path / "dft")}).check()
        assert calc.directory == str(tmp_path / "dft" / f"gpal-worker-{os.getpid()}")
    emt = OracleSpec("ase.calculators.emt:EMT", {}).check()  # (no program: left as it is, no folder made)
    assert emt.directory == "."
    castep = OracleSpec("_oracles:CastepLikeEMT", {"directory": str(tmp_path / "cx")}).check()  # (its folder:
    assert castep._directory == str(tmp_path / "cx" / f"gpal-worker-{os.getpid()}")  # _directory, which was shared)


def test_stale_output_is_a_failed_label_not_a_copy_of_the_last(tmp_path):
    """A program that exited without writing its output was read back as the previous
    frame's: 8 of 17 labels of a run were copies of an earlier frame's (3.3 eV off)."""
    from gpal.learning.oracle import Oracle, OracleSpec

    frames = []
    for s in range(5):
        a = start()
        a.rattle(0.05, seed=s)
        frames.append(a)
    out, failures = Oracle(OracleSpec("_oracles:StaleOutputEMT", {}), retries=1).label(frames)
    assert failures and all("stale output" in f.reason for f in failures)
    assert sum(b is not None for b in out) >= 2
    for b in (b for b in out if b is not None):
        ref = b.copy()
        ref.calc = EMT()
        assert b.get_potential_energy() == pytest.approx(ref.get_potential_energy(), abs=1e-9)


def test_the_learning_curve_is_drawn_before_the_summary_marks_the_run_finished(tmp_path, monkeypatch):
    """A kill after summary.json was written and before learning_curve.png left a run that
    a resume called finished ('nothing to continue'), without its plot for good."""
    run = tmp_path / "run"
    write = ActiveLearner._write_json_atomic

    def killed_at_the_summary(self, path, data):
        if Path(path).name == "summary.json":
            raise KeyboardInterrupt
        return write(self, path, data)

    monkeypatch.setattr(ActiveLearner, "_write_json_atomic", killed_at_the_summary)
    with pytest.raises(KeyboardInterrupt):
        learner(run).run(10)
    assert (run / "learning_curve.png").exists() and not (run / "summary.json").exists()
    monkeypatch.setattr(ActiveLearner, "_write_json_atomic", write)
    ActiveLearner.resume(run, progress=False).run(10)
    assert (run / "summary.json").exists()


def test_a_kill_between_two_calls_of_a_batch_counts_no_call_cut_off(tmp_path, monkeypatch):
    """A SIGKILL right after the 2nd bootstrap label was written (the 3rd call not begun)
    was counted as a call cut off: 8 calls reported for 7 made. Calls made in the
    learner's process are logged as they start."""
    import gpal.learning.learner as learner_module

    run = tmp_path / "run"
    counting = _CountingEMT()
    real, writes = learner_module.append_frame, []

    def append_then_killed(path, atoms, *args, **kwargs):
        real(path, atoms, *args, **kwargs)
        writes.append(path)
        if len(writes) == 2:
            raise Killed

    monkeypatch.setattr(learner_module, "append_frame", append_then_killed)
    with pytest.raises(Killed):
        learner(run, counting, n_bootstrap=4).run(10)
    monkeypatch.setattr(learner_module, "append_frame", real)
    R = ActiveLearner.resume(run, counting, progress=False)
    assert counting.calls == 2 and R.oracle.n_calls == 2
    summary = R.run(R.step + 1)
    assert summary.oracle_calls == counting.calls and summary.oracle_calls_unlabelled == 0


class _CountingEMT(EMT):
    """EMT that counts its calls (in this process)."""

    calls = 0

    def calculate(self, atoms=None, properties=("energy",), system_changes=("positions",)):
        type(self).calls += 1
        super().calculate(atoms, properties, system_changes)


def test_a_resume_killed_before_its_first_checkpoint_does_not_count_labels_twice(tmp_path, monkeypatch):
    """A kill during a call with the checkpoint behind train.xyz, then a kill of the resume
    before it wrote its state: the next resume counted the labels after the checkpoint twice
    (10 calls and 3 without a label reported for 8 made)."""
    class KilledOnCall(EMT):
        calls = 0
        kill_at = 0

        def calculate(self, atoms=None, properties=("energy",), system_changes=("positions",)):
            type(self).calls += 1
            if type(self).calls == type(self).kill_at:
                raise Killed
            super().calculate(atoms, properties, system_changes)

    run = tmp_path / "run"
    KilledOnCall.kill_at = 3  # two bootstrap labels on disk, a kill inside the 3rd call
    with pytest.raises(Killed):
        learner(run, KilledOnCall(), n_bootstrap=4).run(10)
    state = json.loads((run / "state.json").read_text())
    assert len(frames_in(run / "train.xyz")) == 2 and state["n_labelled"] == 0  # (the checkpoint lags)
    first = ActiveLearner.resume(run, EMT(), progress=False)  # (a resume killed before it checkpoints)
    assert first.oracle.n_calls == 3
    second = ActiveLearner.resume(run, EMT(), progress=False)
    assert second.oracle.n_calls == 3 and sum(second._calls.values()) == 3


def test_a_rollback_to_a_frame_already_labelled_is_not_labelled_again(tmp_path):
    """A walker that blows up again and again goes back to the same good frame: 7 of 22
    labels of a run at 200,000 K (9 of 22 on dask walkers) were copies, each paid for."""
    L = learner(tmp_path / "run")
    L.run(10)
    w = L.walkers[0]
    labelled = L.model.frames_[-1]
    w.atoms.positions = labelled.positions.copy()
    calls = L.oracle.n_calls
    assert not L._label_round(300.0, (([w], "rollback"),))
    assert L.oracle.n_calls == calls
    w.atoms.positions[0] += 0.01  # another frame: labelled
    assert L._label_round(300.0, (([w], "rollback"),)) and L.oracle.n_calls == calls + 1
