"""Walkers as tasks (gpal.learning.walkers): snapshots, per-frame judgement, process pool and dask runs."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk
from ase.io import read

import gpal
from gpal import SOAP, ActiveLearner, MDSettings, SparseGP, Trigger
from gpal.exceptions import GpalError, ModelFileError
from gpal.learning.walkers import judge_frame, model_from_bytes, model_to_bytes

from conftest import POLY, SMALL_SOAP, cu_frames

pytestmark = pytest.mark.slow
SPAWN = multiprocessing.get_context("spawn")  # numba's OpenMP threads do not survive fork


def start():
    return bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 1, 1))  # 8 atoms


def small_model(n_sparse=20):
    return SparseGP(SOAP(species=["Cu"], periodic=True, weighting=POLY, **SMALL_SOAP), n_sparse=n_sparse)


def learner(run_dir, **kw):
    kw.setdefault("trigger", Trigger(threshold=0.003, every=5))
    kw.setdefault("md", MDSettings(temperature=(300, 1200), timestep=2.0))
    kw.setdefault("n_walkers", 4)
    kw.setdefault("check_every", 20)  # = the segment length
    return ActiveLearner(start(), "ase.calculators.emt:EMT", small_model(), run_dir=run_dir,
                         progress=False, n_candidates=16, n_sparse_initial=20, sparse_per_label=4,
                         optimize_every=0, **kw)


def records(run_dir):
    return [json.loads(line) for line in open(Path(run_dir) / "log.jsonl")]


def check_consistent(L, run_dir, steps):
    train = read(str(Path(run_dir) / "train.xyz"), ":")
    assert len(train) == len(L.model.frames_) == L.n_labelled == L.oracle.n_calls
    pos = [a.positions.round(8).tobytes() for a in train]
    assert len(set(pos)) == len(pos)  # no frame labelled twice
    assert all(s == steps for s in L._walker_steps.values()) and L.step == steps
    segs = [r for r in records(run_dir) if r.get("event") == "segment"]
    for r in segs:
        assert r["host"] and r["pid"] > 0 and r["wait"] >= 0 and r["run"] > 0 and r["steps"] >= 1
    return segs


def test_snapshot_round_trip_predicts_the_same_to_1e12():
    model = small_model(30).fit(cu_frames(4, seed=3))
    model.set_calibration(forces_std={"scale": 1.3, "noise_scale": 0.9, "conformal_q90": 1.7})
    data = model_to_bytes(model)
    assert isinstance(data, bytes) and data[:2] == b"PK"  # the .npz archive of SparseGP.save
    copy = model_from_bytes(data)
    for a in cu_frames(2, seed=8, size=(2, 1, 1)):
        p = model.predict(a, return_std=True, forces_std=True, calibrated=True)
        q = copy.predict(a, return_std=True, forces_std=True, calibrated=True)
        for k in ("energy", "forces", "energies_std", "forces_std", "novelty"):
            np.testing.assert_allclose(q[k], p[k], rtol=0, atol=1e-12)
    bad = bytearray(data)
    bad[len(bad) // 2] ^= 0xFF
    with pytest.raises(ModelFileError, match="model snapshot"):
        model_from_bytes(bytes(bad))


def test_a_worker_judges_a_frame_as_the_learner_does(tmp_path):
    """judge_frame (run on workers) against ActiveLearner._check_walker on the same state."""
    for trig in (Trigger(threshold=0.02, every=5), Trigger(every=5),
                 Trigger(quantity="energies_std", threshold=1e-3, every=5, adaptive=False)):
        L = learner(tmp_path / f"run_{trig.quantity}_{trig.threshold}", n_walkers=1, sparse_refresh=False,
                    trigger=trig)
        L.run_dir.mkdir(parents=True)
        L._bootstrap()
        L.calibrate()
        L._init_walkers()
        w = L.walkers[0]
        for k in range(3):
            w.atoms.positions += np.random.default_rng(k).normal(0, 0.06, w.atoms.positions.shape)
            recent = list(L._recent_unc)
            j = judge_frame(L.model, w.atoms, trig, recent=recent, label_steps=[], step=L.step,
                            force_rms=L._force_rms(), sparse_refresh=False, **L._trigger_scales())
            u = L._check_walker(w)
            assert j["novel"] == 0 and j["threshold"] == pytest.approx(L.threshold_, rel=1e-12)
            assert (u is not None) == j["label"]
            last = [r for r in records(L.run_dir) if r.get("event") == "check"][-1]
            assert j["uncertainty"] == pytest.approx(last["uncertainty"], rel=1e-12)


CONFIG = """
run_dir = "{run}"
steps = 60
walker_workers = 2
[structure]
bulk = "Cu"
crystal = "fcc"
a = 3.61
cubic = true
repeat = [2, 1, 1]
[md]
temperature = [300.0, 1200.0]
timestep = 2.0
[trigger]
threshold = 0.003
every = 5
[model]
n_sparse = 20
[descriptor]
r_cut = 4.0
n_max = 4
l_max = 3
[learner]
n_walkers = 4
check_every = 20
n_candidates = 16
n_sparse_initial = 20
sparse_per_label = 4
optimize_every = 0
"""


def test_gpal_learn_runs_walkers_on_a_local_process_pool(tmp_path, capsys):
    """walker_workers = 2 in the TOML: a spawn process pool, four walkers, one batch per round."""
    from gpal.cli import main

    run = tmp_path / "run"
    cfg = tmp_path / "learn.toml"
    cfg.write_text(CONFIG.format(run=run))
    assert main(["learn", str(cfg), "--quiet"]) == 0
    L = ActiveLearner.resume(run, progress=False)  # (no walker executor: resumes serially)
    L._walker_steps = {int(k): v for k, v in json.loads((run / "state.json").read_text())["walker_steps"].items()}
    segs = check_consistent(L, run, 60)
    assert {r["walker"] for r in segs} == {0, 1, 2, 3} and len({r["pid"] for r in segs}) == 2
    assert sum(r["steps"] for r in segs) == 4 * 60  # every walker made every step once
    labels = [r for r in records(run) if r.get("event") == "label" and r["reason"] == "uncertain"]
    assert labels and all(r["walker"] for r in labels)
    rounds = [r for r in records(run) if r.get("event") == "round"]
    assert rounds and all(r["md_wall"] > 0 and r["learner_wall"] >= 0 for r in rounds)


def test_walker_keys_of_the_configuration_are_checked(tmp_path):
    from gpal.cli.config import check_config, config_difference, default_toml
    from gpal.exceptions import ConfigError

    assert check_config({"walker_workers": 2})["walker_workers"] == 2
    assert check_config({"walker_scheduler": "tcp://10.0.0.5:8786"})
    for bad, msg in (({"walker_workers": 0}, ">= 1"), ({"walker_workers": "2"}, "an integer"),
                     ({"walker_workers": 2, "walker_scheduler": "tcp://h:1"}, "not both"),
                     ({"walker_scheduler": "h:8786"}, "scheduler address")):
        with pytest.raises(ConfigError, match=msg):
            check_config(bad)
    assert config_difference({"walker_workers": 2}, {"walker_scheduler": "tcp://h:1"}) is None  # resumable
    assert "walker_workers" in default_toml() and "walker_scheduler" in default_toml()
    # 20,000 walkers ran no segment in 40 s and hung gpal learn's shutdown after a SIGTERM
    with pytest.raises(ConfigError, match=r"\[learner\] n_walkers must be <= 1024, got 20000"):
        check_config({"learner": {"n_walkers": 20000}})
    with pytest.raises(ValueError, match="n_walkers must be <= 1024"):
        learner(tmp_path / "big", n_walkers=1025)


def test_a_scheduler_that_does_not_answer_is_refused_before_the_run_folder(tmp_path, capsys):
    """The address was probed after config.toml and run.lock were written, and its error
    line did not name the config file as every other configuration error does."""
    import socket

    from gpal.cli import main

    with socket.socket() as free:  # a port nothing listens on
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'run_dir = "{tmp_path / "run"}"\nsteps = 20\nwalker_scheduler = "tcp://127.0.0.1:{port}"\n'
                   '[structure]\nbulk = "Cu"\n')
    assert main(["learn", str(cfg), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"gpal learn: error: {cfg}: walker_scheduler tcp://127.0.0.1:{port}: "
                                               "cannot connect")
    assert not (tmp_path / "run").exists()


def test_bad_walker_settings_are_refused(tmp_path):
    with pytest.raises(TypeError, match="walker_executor must be"):
        learner(tmp_path / "a", walker_executor=4)
    # the class passed the check, paid the bootstrap, then failed in submit
    with pytest.raises(TypeError, match="an executor instance.*not the class ProcessPoolExecutor"):
        learner(tmp_path / "a", walker_executor=ProcessPoolExecutor)
    with pytest.raises(TypeError, match="executor must be a concurrent.futures.Executor instance"):
        gpal.learning.OracleSettings(executor=object())
    assert not (tmp_path / "a").exists()
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as pool:
        with pytest.raises(ValueError, match="spawn"):
            learner(tmp_path / "c", walker_executor=pool)
    with ProcessPoolExecutor(1, mp_context=SPAWN) as pool:
        with pytest.raises(ValueError, match="module-level"):
            learner(tmp_path / "b", walker_executor=pool,
                    md=MDSettings(factory=lambda atoms, dt, T, rng: None))


def test_a_failing_segment_saves_the_run(tmp_path):
    from concurrent.futures import Future

    class Broken:
        def submit(self, fn, *args):
            f = Future()
            f.set_exception(RuntimeError("worker lost"))
            return f

    L = learner(tmp_path / "run", walker_executor=Broken())
    with pytest.raises(GpalError, match="worker lost.*continue with gpal learn --resume"):
        L.run(20)
    assert (tmp_path / "run" / "state.json").exists()


def test_a_pool_that_breaks_between_rounds_stops_the_run_saved(tmp_path):
    """A walker worker process that died broke the pool: the next round's submit raised
    BrokenProcessPool, which gpal learn reported as "a bug in gpal?" (exit 1, no resume
    line), though the run was saved and resumed with every label once."""
    from concurrent.futures import ThreadPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    from gpal.exceptions import RunStoppedError

    class BreaksAfterOneRound(ThreadPoolExecutor):
        n = 0

        def submit(self, fn, *args, **kwargs):
            BreaksAfterOneRound.n += 1
            if BreaksAfterOneRound.n > 4:  # (4 walkers: the second round)
                raise BrokenProcessPool("A child process terminated abruptly")
            return super().submit(fn, *args, **kwargs)

    with BreaksAfterOneRound(1) as ex:
        L = learner(tmp_path / "run", walker_executor=ex)
        with pytest.raises(RunStoppedError, match=r"refused a segment \(BrokenProcessPool: .*did a worker "
                                                  r"process die\?\); the run is saved .*gpal learn --resume"):
            L.run(200)
    assert json.loads((tmp_path / "run" / "state.json").read_text())["step"] == L.step > 0
    R = ActiveLearner.resume(tmp_path / "run", progress=False)
    R.run(60)
    check_consistent(R, tmp_path / "run", 60)
    # the step records are the serial loop's: target_T of the recorded step, each walker's temperature
    steps = [r for r in records(tmp_path / "run") if "target_T" in r and "round" in r]
    assert steps and all(len(r["walker_temperatures"]) == 4 and len(r["walker_steps"]) == 4 and "volume" in r
                         and min(r["walker_steps"]) == r["step"]
                         and r["target_T"] == pytest.approx(R._temperature_of_step(r["step"])) for r in steps)


def test_dask_cluster_runs_walkers_on_both_workers_and_resumes(tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    run = tmp_path / "run"
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        from gpal.learning.walkers import _probe_scheduler

        _probe_scheduler(cluster.scheduler_address, timeout=5.0)  # a real scheduler passes the probe
        ex = client.get_executor()
        tasks, submit = [], ex.submit
        ex.submit = lambda fn, task: (tasks.append(task), submit(fn, task))[1]
        L = learner(run, walker_executor=ex)
        L.run(40)
        segs = check_consistent(L, run, 40)
        # the model is scattered to the cluster once per change and each task names it (its
        # bytes in every task were a copy per walker per round: dask's "large graph" warnings)
        assert tasks and all(type(t["model"]).__name__ == "Future" for t in tasks)
        assert len({t["model"].key for t in tasks}) == len({t["model_key"] for t in tasks})
        pids = {r["pid"] for r in segs}
        workers = set(client.run(os.getpid).values())  # the two worker processes
        assert len(pids) == 2 and pids == workers  # segments ran on both workers
        n0 = L.n_labelled
        R = ActiveLearner.resume(run, progress=False, walker_executor=client.get_executor())
        assert R._walker_steps == {k: 40 for k in range(4)} and len(R.model.frames_) == n0
        R.run(80)
    check_consistent(R, run, 80)
    assert any(r.get("event") == "resume" for r in records(run))


def test_walkers_on_an_executor_label_each_temperature_step(tmp_path):
    from concurrent.futures import Future

    class Inline:  # runs each segment at once, in this process
        def submit(self, fn, *args, **kwargs):
            f = Future()
            f.set_result(fn(*args, **kwargs))
            return f

    # nothing uncertain or novel: only the temperature rule labels. Rounds end every 20
    # steps of a 300 -> 1200 K ramp over 100 steps (T = 300 + 900 s / 99); the 4 temperature
    # steps are reached at 507, 732, 957 and 1182 K: not at step 20 (482 K), then at 40
    # (664 K), 60 (845 K), 80 (1027 K) and 100 (1200 K)
    trig = Trigger(threshold=100.0, adaptive=False, novelty=1.0, every=5, max_labels=5)
    L = learner(tmp_path / "run", walker_executor=Inline(), n_walkers=1, trigger=trig)
    summary = L.run(100)
    hot = [r for r in records(tmp_path / "run") if r.get("event") == "label" and r.get("reason") == "temperature"]
    assert [r["step"] for r in hot] == [40, 60, 80, 100]
    assert [r["frame_steps"] for r in hot] == [[39], [59], [79], [99]]  # the frame of each segment's last step
    assert summary.oracle_calls_by_reason.get("temperature") == 4
    # the workers' checks are timed as a part of the MD time (the summary printed 0.0)
    assert 0 < summary.time_check <= summary.time_md


class _Inline:
    """An executor that runs each segment at once, in this process."""

    def submit(self, fn, *args, **kwargs):
        from concurrent.futures import Future

        f = Future()
        f.set_result(fn(*args, **kwargs))
        return f


def test_walker_segments_keep_constraints_and_masses_and_record_each_frames_step(tmp_path, monkeypatch):
    import gpal.learning.sampler as sampler
    from ase.constraints import FixAtoms

    s = start()
    s.set_constraint(FixAtoms(indices=[0, 1]))
    s.set_masses(s.get_masses() * 4)
    fixed = s.positions[[0, 1]].copy()
    built = []  # the masses of every walker the learner and the workers build
    init = sampler._Walker.__init__

    def spy(self, index, atoms, *args, **kwargs):
        built.append(atoms.get_masses().copy())
        return init(self, index, atoms, *args, **kwargs)

    monkeypatch.setattr(sampler._Walker, "__init__", spy)
    L = ActiveLearner([s, start().repeat((1, 2, 1))], "ase.calculators.emt:EMT", small_model(),
                      run_dir=tmp_path / "run", progress=False, n_candidates=16, n_sparse_initial=20,
                      sparse_per_label=4, optimize_every=0, walker_executor=_Inline(), check_every=20,
                      trigger=Trigger(threshold=0.003, every=5), md=MDSettings(temperature=(300, 900)),
                      random_state=3)
    L.run(120)
    assert len(built) > 4  # the workers' walkers too
    heavy = [m for m in built if len(m) == len(s)]
    assert heavy and all(np.allclose(m, s.get_masses()) for m in heavy)
    np.testing.assert_array_equal(L.walkers[0].atoms.positions[[0, 1]], fixed)
    # each labelled frame records its own walker's step: the step before its segment's end
    ends = {(r["walker"], r["step_end"] - 1) for r in records(tmp_path / "run")
            if r.get("event") == "segment" and r["candidate"] in ("uncertain", "rollback", "novel")}
    labelled = [(a.info["gpal_walker"], a.info["gpal_step"]) for a in read(str(tmp_path / "run" / "train.xyz"), ":")
                if a.info["gpal_reason"] in ("uncertain", "rollback")]
    assert labelled and set(labelled) <= ends
    label_events = [r for r in records(tmp_path / "run") if r.get("event") == "label" and "frame_steps" in r]
    assert any(r["frame_steps"] != [r["step"]] * len(r["frame_steps"]) for r in label_events)


def test_a_resumed_walker_run_labels_each_temperature_step_once(tmp_path):
    """The temperature a walker's label records is its frame's: a resume reading the labels
    back (gpal_step) does not label a reached temperature step again (a short ramp, where
    one MD step is more than the rule's tolerance)."""
    def make(run):
        trig = Trigger(threshold=100.0, adaptive=False, novelty=1.0, every=5, max_labels=5, temperature_steps=2)
        return learner(run, walker_executor=_Inline(), n_walkers=1, trigger=trig, check_every=3)

    def hot(run):
        return [r["frame_steps"] for r in records(run) if r.get("event") == "label" and r.get("reason") == "temperature"]

    make(tmp_path / "ref").run(18)
    L = make(tmp_path / "cut")
    L.ramp_steps = 18  # the same ramp as the uninterrupted run, stopped half way
    L.run(9)
    ActiveLearner.resume(tmp_path / "cut", progress=False, walker_executor=_Inline()).run(18)
    assert hot(tmp_path / "ref") == hot(tmp_path / "cut") and len(hot(tmp_path / "ref")) == 2


def test_walkers_and_the_serial_loop_agree_on_a_stop_by_the_oracle_budget(tmp_path):
    """A budget spent during the run stops it early in both modes; a run whose steps are
    all made is not "stopped early" because its budget is also spent."""
    trig = Trigger(threshold=1e-4, adaptive=False, every=1)
    for mode, kw in (("serial", {}), ("walkers", {"walker_executor": _Inline()})):
        L = learner(tmp_path / mode, n_walkers=1, max_oracle_calls=6, trigger=trig, **kw)
        first = L.run(40)
        assert first.oracle_calls == 6 and first.stopped_early, mode
        assert "max_oracle_calls=6" in first.stop_reason, mode
        again = L.run(L.step)  # no step left to make: nothing stops it
        assert not again.stopped_early and again.stop_reason == "", mode


def test_walkers_and_the_serial_loop_judge_the_stopping_rule_at_the_last_step(tmp_path):
    """A ramp over run(N) reaches its top at the last step, where checks every check_every
    steps never looked."""
    from gpal.calibration import StoppingRule

    val = cu_frames(2, seed=19, size=(2, 1, 1))
    for mode, kw in (("serial", {}), ("walkers", {"walker_executor": _Inline()})):
        rule = StoppingRule(tolerance=50.0, patience=3, use="scale")
        L = learner(tmp_path / mode, n_walkers=1, stopping=rule, validation=val, **kw)  # checks every 20
        summary = L.run(50)
        assert summary.stop_checks["judged"] == 1 and len(rule.history) == 1, mode
        assert summary.steps == 50 and not summary.stopped_early, mode


def test_a_walker_run_stopped_by_blow_ups_leaves_no_segment_queued(tmp_path):
    """The blow-up limit ends a walker run with its reason; the segments it had already
    submitted (the next round's, run while the learner judged) are cancelled, not left
    to run on an executor that may serve other work."""
    from concurrent.futures import ThreadPoolExecutor

    submitted = []

    class Tracking(ThreadPoolExecutor):
        def submit(self, fn, *args, **kwargs):
            f = super().submit(fn, *args, **kwargs)
            submitted.append(f)
            return f

    with Tracking(1) as ex:  # (one worker: the other walkers' segments wait in its queue)
        L = learner(tmp_path / "run", walker_executor=ex, md=MDSettings(temperature=600, timestep=100.0))
        with pytest.raises(GpalError, match="blew up on each of its last 50 MD steps"):
            L.run(400)
        queued = [f for f in submitted if not f.running() and not f.done()]
        assert not queued and len(submitted) > 4


def test_a_walker_run_stopped_by_a_failed_segment_or_ctrl_c_leaves_no_segment_queued(tmp_path, monkeypatch):
    """The round's other segments, queued behind a failed one (or waited for when Ctrl-C
    comes), are cancelled: gpal learn's pool shutdown then does not wait for them."""
    import signal
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    import gpal.learning.walkers as walkers

    real = walkers.run_segment

    class Tracking(ThreadPoolExecutor):
        submitted: list = []

        def submit(self, fn, *args, **kwargs):
            f = super().submit(fn, *args, **kwargs)
            self.submitted.append(f)
            return f

    for k, first in enumerate(["fail", "interrupt"]):
        calls = []

        def segment(task, first=first, calls=calls):
            calls.append(1)
            if len(calls) == 1:
                if first == "fail":
                    raise RuntimeError("segment failed on its worker")
                threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGINT)).start()
            time.sleep(0.3)
            return real(task)

        monkeypatch.setattr(walkers, "run_segment", segment)
        Tracking.submitted = []
        with Tracking(1) as ex:
            L = learner(tmp_path / f"run{k}", walker_executor=ex)
            with pytest.raises((GpalError, KeyboardInterrupt)):
                L.run(200)
            assert len(Tracking.submitted) == 4
            assert not [f for f in Tracking.submitted if not f.running() and not f.done()], first


def test_a_round_that_waits_long_for_its_segments_says_so(tmp_path, monkeypatch, caplog):
    """A dask cluster whose only worker died waited for ever without a word; a cancelled
    segment was reported as one that "failed on its worker (CancelledError: )"."""
    import logging
    import threading
    from concurrent.futures import Future

    import gpal.learning.walkers as walkers_module

    monkeypatch.setattr(walkers_module, "WAIT_NOTE", 0.2)

    class Late:  # runs each segment after 0.5 s, in a thread
        def submit(self, fn, *args, **kwargs):
            f = Future()

            def run():  # (as an executor does: a cancelled task is not run)
                if f.set_running_or_notify_cancel():
                    f.set_result(fn(*args, **kwargs))

            threading.Timer(0.5, run).start()
            return f

    L = learner(tmp_path / "run", walker_executor=Late(), n_walkers=1,
                trigger=Trigger(threshold=100.0, adaptive=False, novelty=1.0, every=5, max_labels=5))
    with caplog.at_level(logging.WARNING, logger="gpal.learning.walkers"):
        L.run(40)
    assert any("waiting" in r.getMessage() and "walker segment" in r.getMessage() for r in caplog.records)
    assert any(r.get("event") == "waiting" for r in records(tmp_path / "run"))

    class Cancelling:
        def submit(self, fn, *args, **kwargs):
            f = Future()
            f.cancel()
            return f

    L = learner(tmp_path / "run2", walker_executor=Cancelling(), n_walkers=1)
    with pytest.raises(GpalError, match="cancelled by its executor"):
        L.run(40)


def test_scheduler_probe_names_a_port_that_is_not_a_dask_scheduler():
    """dask's Client (its timeout too) waited for ever on a port that accepts connections
    but never speaks dask's protocol (the dashboard's HTTP port); a closed port took its
    whole connect timeout. Both are now one clear error, and a port that writes first
    (as a scheduler's handshake does) passes."""
    import socket
    import threading

    from gpal.learning.walkers import _probe_scheduler

    def serve(greeting):
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)

        def accept():
            conn, _ = srv.accept()
            if greeting:
                conn.sendall(greeting)
            time.sleep(1.5)
            conn.close()
            srv.close()

        threading.Thread(target=accept, daemon=True).start()
        return srv.getsockname()[1]

    silent = serve(b"")
    t = time.monotonic()
    with pytest.raises(GpalError, match="no dask handshake.*8787"):
        _probe_scheduler(f"tcp://127.0.0.1:{silent}", timeout=0.5)
    assert time.monotonic() - t < 1.4
    _probe_scheduler(f"tcp://127.0.0.1:{serve(b'x' * 8)}", timeout=0.5)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # bound, then released: nothing listens there
    with pytest.raises(GpalError, match="cannot connect"):
        _probe_scheduler(f"tcp://127.0.0.1:{port}", timeout=0.5)
    with pytest.raises(GpalError, match="no port"):
        _probe_scheduler("tcp://somehost", timeout=0.5)
    _probe_scheduler("tls://127.0.0.1:1", timeout=0.5)  # other schemes go to dask as given


def test_gpal_learns_walker_pool_does_not_wait_for_a_segment_left_running():
    """``walker_workers``' pool, closed when a run ends, ends a task still running (a
    speculative segment, or the other walkers' when one blew up) instead of waiting
    for it: their results have no run left to take them."""
    from gpal.learning.walkers import local_walker_executor

    pool, close = local_walker_executor(2)
    busy = pool.submit(time.sleep, 60)
    pool.submit(abs, 1).result(timeout=120)  # the pool's workers are up
    deadline = time.monotonic() + 60
    while not busy.running() and time.monotonic() < deadline:
        time.sleep(0.05)
    t0 = time.monotonic()
    close()
    assert time.monotonic() - t0 < 20  # (shutdown waited the task's 60 s)


def test_a_workers_warnings_are_shown_by_the_learner_once(tmp_path):
    """A segment on another process returns its warnings instead of printing them there
    (its prints bypassed gpal learn's one-line warnings, 6 raw lines in the audit's run)
    and the learner shows each once; a model warns of periodic=False once, not at every
    prediction (8 times in a serial run)."""
    import warnings

    from gpal.learning.walkers import _digest, _task, relay_warnings, run_segment

    model = SparseGP(SOAP(species=["Cu"], periodic=False, weighting=POLY, **SMALL_SOAP), n_sparse=20)
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        L = learner(tmp_path / "run", n_walkers=1, sparse_refresh=False)
        L.model = model
        L.run_dir.mkdir(parents=True)
        L._bootstrap()
        L.calibrate()
        L._init_walkers()
        for _ in range(3):
            L._check_walker(L.walkers[0])
    periodic = [w for w in shown if "periodic=False" in str(w.message)]
    assert len(periodic) == 1
    data = model_to_bytes(L.model)
    L.ramp_steps = 100  # (as run(100) sets it)
    task = _task(L, L.walkers[0], 0, 10, data, _digest(data))
    task["learner"] = ["another-host", os.getpid()]  # as on a worker process
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        results = [run_segment(task) for _ in range(2)]
    assert shown == []  # recorded there, not printed
    assert [m for _, m in results[0]["warnings"] if "periodic=False" in m] == [str(periodic[0].message)]
    seen = set()
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        for r in results + results:
            relay_warnings(seen, r["warnings"])
    assert [(w.category, str(w.message)) for w in shown] == [(UserWarning, str(periodic[0].message))]


def test_a_relayed_warning_keeps_the_nearest_category_the_learner_knows():
    """A library's own warning class arrives as the nearest of Python's or gpal's bases
    (so ``-W ignore::RuntimeWarning`` still matches it), never as a bare UserWarning."""
    import warnings

    from gpal.learning.walkers import _known_category, relay_warnings

    class LibraryWarning(RuntimeWarning):
        pass

    assert _known_category(LibraryWarning) == "builtins.RuntimeWarning"
    assert _known_category(UserWarning) == "builtins.UserWarning"
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        relay_warnings(set(), [[_known_category(LibraryWarning), "overflow"], ["nowhere.Odd", "odd"]])
    assert [(w.category, str(w.message)) for w in shown] == [(RuntimeWarning, "overflow"), (UserWarning, "odd")]


def test_a_dask_client_whose_scheduler_has_gone_closes_without_its_tracebacks(capsys):
    """gpal learn printed ~35 lines of distributed's reconnect traceback before its one-line
    error when the scheduler died; the loggers are silenced for the close only."""
    import logging

    from gpal.learning.walkers import _close_quietly

    log = logging.getLogger("distributed.client")
    before = log.level
    seen = []

    class Gone:
        def close(self):
            log.error("Traceback (most recent call last): CommClosedError")
            seen.append("closed")
            raise OSError("scheduler gone")

    handler = logging.StreamHandler()
    logging.getLogger().addHandler(handler)
    try:
        _close_quietly(Gone())
    finally:
        logging.getLogger().removeHandler(handler)
    assert seen == ["closed"] and "CommClosedError" not in capsys.readouterr().err
    assert log.level == before
