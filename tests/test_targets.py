"""Targets: the joint posterior of target quantities, the variance a label removes, the loop hooks."""

from __future__ import annotations

import copy
import json
import logging
import tomllib
import warnings

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT

from gpal import SOAP, ActiveLearner, MDSettings, SparseGP, Trigger
from gpal import TargetSet

from conftest import POLY, SMALL_SOAP, UnsavableConstraint, label


def vacancy_path(n_images=5):
    """A Cu vacancy hop (31 atoms): linear images of the hopping atom (unrelaxed)."""
    a0 = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))
    site = a0.positions[0].copy()
    ini = a0.copy()
    del ini[0]
    hop = int(np.argmin(np.linalg.norm(ini.positions - site, axis=1)))
    images = []
    for k in range(n_images):
        im = ini.copy()
        f = k / (n_images - 1)
        im.positions[hop] = (1 - f) * ini.positions[hop] + f * site
        images.append(im)
    return images, hop


def rattled(atoms, seed, sigma=0.06):
    a = atoms.copy()
    a.positions += np.random.default_rng(seed).normal(0, sigma, a.positions.shape)
    return a


@pytest.fixture(scope="module")
def fitted():
    images, hop = vacancy_path()
    frames = [label(rattled(images[0], s, 0.08)) for s in range(3)]
    model = SparseGP(SOAP(species=["Cu"], periodic=True, weighting=POLY, **SMALL_SOAP),
                     n_sparse=40, hyperparameters="fixed").fit(frames)
    return model, images, hop


def test_barrier_variance_is_the_joint_posterior_of_the_two_energies(fitted):
    model, images, _ = fitted
    model = copy.deepcopy(model)
    ts = TargetSet(images, quantity="barrier", n_sparse=10)
    assert ts.add_to_sparse(model) > 0
    # independent reference: the DTC covariance of the total energies from the solver
    data = ts._structure_data(model)
    R = np.array([d["row"] for d in data])
    n = len(images)
    prior = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            prior[i, j] = model.kernel_(data[i]["X"], data[j]["X"]).sum()
    C = model.solver_.predict_cov(R, prior)
    e = np.array([model.predict(a)["energy"] for a in images])
    a = int(np.argmax(e))
    p = ts.predict(model)
    assert p["labels"] == [f"E[{a}]-E[0]"]
    np.testing.assert_allclose(p["value"][0], e[a] - e[0], rtol=1e-10, atol=1e-9)
    # the label noise of each frame's energy as the model fits it: energy_noise² per atom
    s2, N = model.noise_["energy"] ** 2, len(images[0])
    assert s2 > 0
    np.testing.assert_allclose(p["std_noise"][0] ** 2, 2 * N * s2, rtol=1e-12)
    np.testing.assert_allclose(p["std"][0] ** 2, C[a, a] + C[0, 0] - 2 * C[a, 0] + 2 * N * s2, rtol=1e-6)
    np.testing.assert_allclose(ts.covariance(model), C, rtol=1e-6, atol=1e-12)
    # the calibration factor scales the learnable part only
    p2 = ts.predict(model, scale=2.0)
    np.testing.assert_allclose(p2["std"] ** 2, 4 * p["std_learnable"] ** 2 + p["std_residual"] ** 2
                               + p["std_noise"] ** 2)
    # an explicit difference and the energies agree with the same covariance
    d = TargetSet(images, quantity="difference", pair=(2, 1)).predict(model)
    np.testing.assert_allclose(d["std"][0] ** 2, C[2, 2] + C[1, 1] - 2 * C[2, 1] + 2 * N * s2, rtol=1e-6)
    en = TargetSet(images, quantity="energies").predict(model)
    np.testing.assert_allclose(en["std"] ** 2, np.diag(C) + N * s2, rtol=1e-6)
    # of some atoms: their share of the noise
    hop = TargetSet(images, quantity="barrier", atoms=[0, 1]).predict(model)
    np.testing.assert_allclose(hop["std_noise"][0] ** 2, 2 * 2 * s2, rtol=1e-12)


def test_reduction_equals_the_variance_removed_by_a_real_update(fitted):
    model, images, hop = fitted
    for quantity in ("barrier", "forces"):
        ts = TargetSet(images, quantity=quantity, atoms=[hop] if quantity == "forces" else None)
        cands = [rattled(images[2], 10 + s, 0.04) for s in range(2)]
        sc = ts.score_frames(model, cands)
        _, T, resid, _ = ts._functionals(model)
        v0 = model.solver_.var_sor(T).sum() + resid.sum()
        for c, rho in zip(cands, sc["reduction"]):
            m2 = copy.deepcopy(model).update([label(c)])  # the oracle's labels, then the refit's variance
            v1 = m2.solver_.var_sor(T).sum() + resid.sum()
            np.testing.assert_allclose(rho, (v0 - v1) / v0, rtol=1e-6)
            assert 0 < rho < 1
        # the information gain is that of the force labels, as select_frames scores them
        _, gains = model.select_frames(cands, 1, return_gains=True)
        assert sc["information_gain"].max() == pytest.approx(gains[0], rel=1e-8)
        # of the calibrated variance (learnable part scale² times the model's; ρ was a share
        # of the raw variance): the real update, then the calibration's scale
        s = 2.0
        scaled = ts.score_frames(model, cands, scale=s)["reduction"]
        v0 = s**2 * model.solver_.var_sor(T).sum() + resid.sum()
        for c, rho in zip(cands, scaled):
            m2 = copy.deepcopy(model).update([label(c)])
            v1 = s**2 * m2.solver_.var_sor(T).sum() + resid.sum()
            np.testing.assert_allclose(rho, (v0 - v1) / v0, rtol=1e-6)


def test_one_label_reduces_to_targeted_acquisition(fitted):
    model, images, _ = fitted
    ts = TargetSet(images, quantity="barrier")
    _, T, resid, _ = ts._functionals(model)
    A, noise, _ = ts._frame_rows(model, rattled(images[1], 3))
    rows = A[[0, 5, 17]]
    total = float(model.solver_.var_sor(T).sum() + resid.sum())
    var = model.solver_.var_sor(rows)
    C_ct = model.solver_.cov_sor(rows, T)
    # the exact rank-1 GP update of the target's variance, as a fraction of its total
    ref = np.sum(C_ct**2, axis=1) / (var + noise[[0, 5, 17]] ** 2) / total
    for k in range(3):
        _, rho, _, _ = ts._scores(model.solver_, rows[[k]], noise[[0, 5, 17]][[k]], slice(0, 0), T, total,
                               model.noise_["force"])
        assert rho == pytest.approx(ref[k], rel=1e-8)


def test_weight_follows_the_schedule_and_is_reported_on_change():
    images, _ = vacancy_path(3)
    ts = TargetSet(images, quantity="barrier", w_floor=0.3, window=1)
    assert ts.update_weight(0.2) == 1.0 and ts.weight_changed() and not ts.weight_changed()
    assert ts.update_weight(0.1) == pytest.approx(0.3 + 0.7 * 0.5)
    assert ts.weight_changed()
    assert ts.update_weight(0.0) == pytest.approx(0.3)
    assert ts.update_weight(0.5) == 1.0  # back to exploring in a new uncertain region
    back = TargetSet.from_dict(json.loads(json.dumps(ts.to_dict())), images)
    assert back.schedule_.reference == 0.2 and back.weight_ == 1.0 and back.quantity == "barrier"


def test_a_barrier_with_image_0_highest_keeps_the_std_of_the_next_highest_image(fitted):
    """The barrier's image of highest predicted energy is sought after image 0: with image 0
    highest it was E[0] - E[0] = 0 ± 0, and a target stop fired on any model."""
    model, images, _ = fitted
    path = images[2:]  # from the saddle on: downhill
    e = [model.predict(a)["energy"] for a in path]
    assert e[0] > max(e[1:])
    ts = TargetSet(path, quantity="barrier", tolerance=1e-9)
    res = ts.predict(model)
    j = 1 + int(np.argmax(e[1:]))
    assert res["labels"] == [f"E[{j}]-E[0]"]
    assert res["value"][0] == pytest.approx(e[j] - e[0], abs=1e-9)
    assert res["std"][0] > 1e-4 and not ts.reached(model)
    # images of one path: the same atoms in the same order (a 31- and a 30-atom image refused)
    with pytest.raises(ValueError, match="images of one path"):
        TargetSet([images[0], images[1][:-1]], quantity="barrier")
    swapped = images[1].copy()
    swapped.numbers[3] = 28
    with pytest.raises(ValueError, match="structure 1 .*differs"):
        TargetSet([images[0], swapped], quantity="barrier")
    with pytest.raises(ValueError, match="not the same species"):
        TargetSet([images[0], swapped], quantity="energies", atoms=[3])
    TargetSet([images[0], swapped], quantity="difference", pair=(0, 1))  # (compositions may differ)
    cluster = images[1].copy()  # (an image with pbc=False gave a barrier of 8.55 eV, unsaid)
    cluster.pbc = False
    with pytest.raises(ValueError, match=r"same periodicity; target structure 1 has pbc=\[False"):
        TargetSet([images[0], cluster], quantity="barrier")


def test_the_ramp_warning_says_a_target_tolerance_may_still_end_the_run(tmp_path):
    """Under a ramp gpal warned that no rule could end the run early, and the target's
    tolerance then did, at 345 K of 1200 K: it is judged at the target structures."""
    from gpal.calibration import StoppingRule

    images, _ = vacancy_path(3)
    soap = SOAP(species=["Cu"], periodic=True, weighting=POLY, **SMALL_SOAP)
    L = ActiveLearner(images[0], "ase.calculators.emt:EMT", SparseGP(soap, n_sparse=30), run_dir=tmp_path / "run",
                      md=MDSettings(temperature=(300, 1200)), stopping=StoppingRule(tolerance=0.05),
                      progress=False, targets=TargetSet(images, quantity="barrier", tolerance=0.02))
    L.ramp_steps = 2000
    with pytest.warns(UserWarning, match=r"cannot end this run early: .*; the target's tolerance, judged at the "
                                         r"target structures, may end it at any temperature"):
        L._warn_unstoppable(2000)


def test_choose_skips_a_duplicate_and_bad_settings_raise(fitted):
    model, images, _ = fitted
    ts = TargetSet(images, quantity="barrier")
    ts.weight_ = 0.5
    a = rattled(images[2], 1, 0.04)
    picks, acq = ts.choose(model, [a, a.copy(), rattled(images[0], 2)])
    assert len(set(picks)) == len(picks) and not {0, 1} <= set(picks)
    assert acq == sorted(acq, reverse=True)
    with pytest.raises(ValueError, match="quantity"):
        TargetSet(images, quantity="barriers")
    with pytest.raises(ValueError, match="pair"):
        TargetSet(images, quantity="difference")
    with pytest.raises(ValueError, match="atoms"):
        TargetSet(images, atoms=[99])
    # were taken silently: atom 0 counted twice, 1.7 and True read as atom 1
    with pytest.raises(ValueError, match="list an atom twice"):
        TargetSet(images, atoms=[0, 0])
    for bad in ([1.7], [True]):
        with pytest.raises(ValueError, match="integer atom indices"):
            TargetSet(images, atoms=bad)
    assert TargetSet(images, atoms=np.array([2, 1])).atoms == [2, 1]
    with pytest.raises(ValueError, match="tolerance"):
        TargetSet(images, tolerance=-1)


@pytest.mark.slow
def test_learner_with_targets_labels_logs_stops_and_resumes(tmp_path, caplog):
    images, hop = vacancy_path(3)
    soap = SOAP(species=["Cu"], periodic=True, weighting=POLY, **SMALL_SOAP)
    ts = TargetSet(images, quantity="barrier", w_floor=0.0, min_reduction=0.0, tolerance=1e-6)
    run = tmp_path / "run"
    L = ActiveLearner(images[0], "ase.calculators.emt:EMT", SparseGP(soap, n_sparse=30), run_dir=run,
                      md=MDSettings(temperature=800), trigger=Trigger(threshold=10.0, every=5),
                      n_bootstrap=2, check_every=20, progress=False, targets=ts)
    with caplog.at_level(logging.WARNING):
        s = L.run(30)
    assert s.oracle_calls_by_reason.get("target", 0) >= 1  # the trigger alone never fires at 10 eV/Å
    # a tolerance under the residual (which labels cannot reduce) is named once
    floor = [r for r in caplog.records if "which labels cannot reduce, is above its tolerance 1e-06" in r.getMessage()]
    assert len(floor) == 1
    # the summary gives the target under the final model (it was only in log.jsonl)
    res = ts.predict(L.model, L._force_std_scale())
    assert s.target["value"] == pytest.approx(list(res["value"])) and s.target["unit"] == "eV"
    line = next(x for x in str(s).splitlines() if x.startswith("  target "))
    assert f"{res['labels'][0]} = {res['value'][0]:.4g} ± {res['std'][0]:.2g} eV" in line
    assert json.loads((run / "summary.json").read_text())["target"]["labels"] == list(res["labels"])
    records = [json.loads(line) for line in open(run / "log.jsonl")]
    events = [r.get("event") for r in records]
    assert "target_weight" in events and "target_sparse" in events and "target_stop_check" in events
    state = json.loads((run / "state.json").read_text())
    assert state["targets"]["quantity"] == "barrier" and (run / "targets.xyz").exists()
    R = ActiveLearner.resume(run, progress=False)
    assert isinstance(R.targets, TargetSet) and R.targets.schedule_.reference == ts.schedule_.reference
    # two uncertain walkers: the targeted acquisition chooses; a tolerance above the
    # target std stops the run at the first stop check (judged at the target structures,
    # it does not wait for labels from MD as the global rule does)
    run2 = tmp_path / "run2"
    L2 = ActiveLearner(images[0], "ase.calculators.emt:EMT", SparseGP(soap, n_sparse=30), run_dir=run2,
                       md=MDSettings(temperature=300), trigger=Trigger(threshold=1e-4, every=5, adaptive=False),
                       n_bootstrap=2, check_every=10, progress=False, n_walkers=2,
                       targets=TargetSet(images, quantity="barrier", tolerance=100.0))
    s2 = L2.run(50)
    assert s2.stopped_early and "target std" in s2.stop_reason and s2.steps == 11
    batches = [json.loads(line) for line in open(run2 / "log.jsonl") if '"batch"' in line]
    assert batches and all("acquisition" in b and b["chosen"] for b in batches)
    # resumed under a looser tolerance it already meets: judged at once, no MD, no label
    # (it ran MD to its next check and paid for a label there); under the same one it runs
    # on to its next check
    calls = s2.oracle_calls
    R2 = ActiveLearner.resume(run2, progress=False)
    R2.targets.tolerance = 200.0
    s3 = R2.run(50)
    assert s3.steps == 11 and s3.oracle_calls == calls and "target std" in s3.stop_reason
    s4 = ActiveLearner.resume(run2, progress=False).run(50)
    assert s4.steps == 21 and "target std" in s4.stop_reason


def test_toml_targets_section_builds_a_target_set(tmp_path, capsys, monkeypatch):
    import inspect

    import gpal.cli
    import gpal.learning.learner
    from gpal.cli import config
    from gpal.cli import main
    from gpal.exceptions import ConfigError
    from gpal.io import write_frames

    sch = config.schema()["targets"]
    assert set(sch) == set(inspect.signature(TargetSet.from_file).parameters) - {"cls"}
    # every setting of a TargetSet but its structures has a key (exponent and window had none)
    assert set(inspect.signature(TargetSet).parameters) - {"structures"} <= set(sch)
    images, _ = vacancy_path(3)
    write_frames(tmp_path / "neb.xyz", images)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'run_dir = "{tmp_path / "run"}"\nsteps = 5\n[targets]\nfile = "{tmp_path / "neb.xyz"}"\n'
                   'quantity = "barrier"\ntolerance = 0.02\n')
    seen = []

    class Fake:
        def __init__(self, structure, oracle, model, **kwargs):
            seen.append(kwargs)
            self.run_dir = kwargs["run_dir"]

        def run(self, steps):
            return "fake summary"

    monkeypatch.setattr(gpal.learning.learner, "ActiveLearner", Fake)
    assert main(["learn", str(cfg), "-q"]) == 0
    t = seen[-1]["targets"]
    assert isinstance(t, TargetSet) and t.quantity == "barrier" and t.tolerance == 0.02 and len(t.structures) == 3
    # no [targets] file: no targets; a changed key without a file is refused in one line
    assert config.check_config({"targets": {"quantity": "energies"}}) == {"targets": {"quantity": "energies"}}
    with pytest.raises(ConfigError, match=r"\[targets\] tolerance is set but file is not"):
        config.check_config({"targets": {"tolerance": 0.01}})
    with pytest.raises(ConfigError, match="quantity must be"):
        config.check_config({"targets": {"file": "x", "quantity": "barier"}})
    bad = tmp_path / "bad.toml"
    bad.write_text(f'run_dir = "{tmp_path / "run2"}"\n[targets]\nfile = "{tmp_path / "none.xyz"}"\n')
    assert main(["learn", str(bad), "-q"]) == 2
    err = capsys.readouterr().err
    assert "bad.toml: [targets] file" in err and "none.xyz': no such file" in err


def test_pick_structure_takes_the_image_that_removes_most_and_never_twice(fitted):
    model, images, _ = fitted
    ts = TargetSet(images, quantity="barrier", label_structures=True, min_reduction=0.05)
    assert ts.pick_structure(model) is None  # no weight yet: the learner has not checked a frame
    ts.weight_ = 0.0
    rho = ts.score_frames(model, images)["reduction"]
    first = ts.pick_structure(model)
    assert first == int(np.argmax(rho))
    second = ts.pick_structure(model)
    assert second != first and second == int(np.argsort(-rho)[1])
    assert TargetSet.from_dict(ts.to_dict(), images).labelled_ == [first, second]
    ts.tolerance = 1e3  # known to its tolerance: nothing more to label
    assert ts.pick_structure(model) is None
    assert TargetSet(images, quantity="barrier").pick_structure(model) is None  # off by default


@pytest.mark.slow
def test_learner_labels_a_target_structure_when_no_walker_frame_is_labelled(tmp_path, monkeypatch):
    images, _ = vacancy_path(3)
    soap = SOAP(species=["Cu"], periodic=True, weighting=POLY, **SMALL_SOAP)
    real = TargetSet.consider

    def no_frame(self, *args, **kwargs):  # walker frames never qualify
        return {**real(self, *args, **kwargs), "label": False}

    monkeypatch.setattr(TargetSet, "consider", no_frame)
    ts = TargetSet(images, quantity="barrier", w_floor=0.0, min_reduction=0.0, label_structures=True)
    L = ActiveLearner(images[0], "ase.calculators.emt:EMT", SparseGP(soap, n_sparse=30), run_dir=tmp_path / "r",
                      md=MDSettings(temperature=300), trigger=Trigger(threshold=10.0, every=5),
                      n_bootstrap=2, progress=False, targets=ts)
    s = L.run(12)
    assert s.oracle_calls_by_reason["target"] == 3 == len(ts.labelled_)  # each image once
    from ase.io import read

    train = read(str(tmp_path / "r" / "train.xyz"), ":")
    hits = [k for a in train for k, im in enumerate(images) if np.allclose(a.positions, im.positions)]
    assert sorted(hits) == [0, 1, 2] and train[-1].info["gpal_reason"] == "target"


def test_explore_option_is_checked_and_starts_near_the_highest_image(fitted):
    model, images, _ = fitted
    for bad, match in ((-1, "walker count >= 0"), ("2", "walker count >= 0"), (1.5, "walker count >= 0"),
                       ([0, 9], r"structure indices in \[0, 5\)"), ([True], "integers")):
        with pytest.raises(ValueError, match=match):
            TargetSet(images, quantity="barrier", explore=bad)
    with pytest.raises(ValueError, match="restart_every must be an integer >= 0"):
        TargetSet(images, quantity="barrier", explore=1, restart_every=-5)
    ts = TargetSet(images, quantity="barrier", explore=3)
    assert ts.n_explore == 3 and TargetSet(images).n_explore == 1 and TargetSet(images, explore=0).n_explore == 0
    e = np.array([model.predict(a)["energy"] for a in images])
    top = int(np.argmax(e))
    starts = [ts.explore_start(model, j) for j in range(3)]
    assert starts[0] == top and len(set(starts)) == 3  # the highest image, then its nearest ones
    assert set(starts[1:]) <= {top - 2, top - 1, top + 1, top + 2}
    if 0 < top < len(images) - 1:  # the higher neighbour first
        assert starts[1:] == sorted([top - 1, top + 1], key=lambda k: -e[k])
    with pytest.raises(ValueError, match="slot"):
        ts.explore_start(model, 3)
    listed = TargetSet(images, quantity="barrier", explore=[4, 2], restart_every=7)
    assert [listed.explore_start(model, j) for j in range(2)] == [4, 2]
    back = TargetSet.from_dict(listed.to_dict(), images)
    assert back.explore == [4, 2] and back.restart_every == 7
    pair = TargetSet(images, quantity="difference", pair=(3, 1), explore=3)
    assert [pair.explore_start(model, j) for j in range(3)] == [3, 1, 0]


@pytest.mark.slow
def test_exploring_walkers_start_at_the_targets_restart_and_resume(tmp_path):
    images, _ = vacancy_path(3)
    soap = SOAP(species=["Cu"], periodic=True, weighting=POLY, **SMALL_SOAP)
    run = tmp_path / "run"
    ts = TargetSet(images, quantity="barrier", explore=2, restart_every=10, min_reduction=1.0)
    L = ActiveLearner(images[0], "ase.calculators.emt:EMT", SparseGP(soap, n_sparse=30), run_dir=run,
                      md=MDSettings(temperature=600), trigger=Trigger(threshold=10.0, every=4),
                      n_bootstrap=2, check_every=0, progress=False, targets=ts, random_state=3)
    L.run(1)
    assert len(L.walkers) == 3 and sorted(L._explore) == [1, 2]
    for w in L.walkers[1:]:  # each exploring walker starts at its target structure (one MD step ago)
        img = images[L._explore[w.index]["image"]]
        assert 0 < np.abs(w.atoms.positions - img.positions).max() < 0.05
    assert np.abs(L.walkers[0].atoms.positions - images[0].positions).max() < 0.05
    s = L.run(25)  # restarts at steps 10 and 20
    records = [json.loads(line) for line in open(run / "log.jsonl")]
    starts = [r for r in records if r.get("event") == "explore_start"]
    assert [r["step"] for r in starts] == [0, 0, 10, 10, 20, 20]
    begun = {}
    for r in records:  # no exploring walker's frame is judged within trigger.every steps of its start
        if r.get("event") == "explore_start":
            begun[r["walker"]] = r["step"]
        elif r.get("event") == "check" and r["walker"] in begun:
            assert r["step"] - begun[r["walker"]] >= 4
    assert any(r.get("event") == "check" and r["walker"] in (1, 2) for r in records)
    assert s.oracle_calls == 2  # the trigger never fires at 10 eV/Å; no target label (min_reduction 1)
    state = json.loads((run / "state.json").read_text())
    assert state["n_walkers_total"] == 3 and set(state["explore_walkers"]) == {"1", "2"}
    saved = dict(np.load(run / "walkers.npz"))
    R = ActiveLearner.resume(run, progress=False)
    assert len(R.walkers) == 3 and R._explore == L._explore and R.targets.n_explore == 2
    for w in R.walkers:  # every walker, exploring or not, continues from its saved frame
        assert np.allclose(w.atoms.positions, saved[f"positions_{w.index}"])
    assert len(R.structures) == 1
    R.run(32)
    starts = [json.loads(line) for line in open(run / "log.jsonl") if '"explore_start"' in line]
    assert [r["step"] for r in starts][-2:] == [30, 30] and len(starts) == 8
    # a blow-up next to the start: the restored frame is (almost) the target structure, not
    # labelled; the walker starts again from its structure at the next step
    assert R.step - R._explore[1]["start"] < 4 and R._roll_back(R.walkers[1], 600.0, "test") is False
    assert R._explore[1]["restart"] and R.oracle.n_calls == 2
    R.run(33)
    starts = [json.loads(line) for line in open(run / "log.jsonl") if '"explore_start"' in line]
    assert (starts[-1]["step"], starts[-1]["walker"], len(starts)) == (32, 1, 9)


def test_a_resume_with_another_target_set_keeps_it_for_the_next_resume(tmp_path):
    soap = SOAP(species=["Cu"], periodic=True, weighting=POLY, **SMALL_SOAP)
    base = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 1, 1))
    first = [base.copy() for _ in range(2)]
    first[1].positions[0] += [0.3, 0, 0]
    new = [base.copy() for _ in range(3)]
    for k, b in enumerate(new):
        b.positions[1] += [0, 0.1 * (k + 1), 0]
    run = tmp_path / "run"
    ActiveLearner(base, "ase.calculators.emt:EMT", SparseGP(soap, n_sparse=10), run_dir=run,
                  md=MDSettings(temperature=300), trigger=Trigger(threshold=10.0, every=5), n_bootstrap=2,
                  progress=False, targets=TargetSet(first, quantity="energies", explore=0)).run(10)
    R = ActiveLearner.resume(run, progress=False, targets=TargetSet(new, quantity="difference", pair=(1, 2), explore=0))
    R.run(20)
    again = ActiveLearner.resume(run, progress=False).targets
    assert again.quantity == "difference" and len(again.structures) == 3
    assert all(np.allclose(a.positions, b.positions) for a, b in zip(again.structures, new))


def test_target_structures_keep_every_constraint_through_save_and_load(tmp_path):
    """Exploring walkers start from the saved targets: a Hookean (which extended XYZ cannot
    hold) comes back with them."""
    from ase.constraints import FixAtoms, Hookean

    a = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 1, 1))
    b = a.copy()
    b.positions[0] += [0.2, 0.0, 0.0]
    b.set_constraint([FixAtoms(indices=[3]), Hookean(0, 1, rt=2.7, k=4.0)])
    d = TargetSet([a, b], quantity="energies").save(tmp_path)
    json.dumps(d)  # the run state is JSON
    back = TargetSet.load(json.loads(json.dumps(d)), tmp_path)
    assert back.structures[0].constraints == []
    assert [c.todict() for c in back.structures[1].constraints] == [c.todict() for c in b.constraints]


def test_a_target_constraint_that_cannot_be_saved_warns_at_construction():
    """As a start structure's: exploring walkers start on the target images, and a
    resume would lose a constraint ASE cannot rebuild."""
    from ase.constraints import FixAtoms

    a = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 1, 1))
    b = a.copy()
    b.set_constraint([FixAtoms(indices=[0]), UnsavableConstraint()])
    with pytest.warns(UserWarning, match=r"target structures\[1\] has a constraint .* a resumed run would lose it"):
        TargetSet([a, b], quantity="energies")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        b.set_constraint(FixAtoms(indices=[0]))
        TargetSet([a, b], quantity="energies")  # savable: no warning


def test_a_resume_with_fewer_target_images_restarts_an_explorer_whose_image_is_gone(tmp_path):
    soap = SOAP(species=["Cu"], periodic=True, weighting=POLY, **SMALL_SOAP)
    base = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 1, 1))
    images = [base.copy() for _ in range(3)]
    for k, b in enumerate(images):
        b.positions[0, 0] += 0.1 * k
    run = tmp_path / "run"
    L = ActiveLearner(base, "ase.calculators.emt:EMT", SparseGP(soap, n_sparse=10), run_dir=run,
                      md=MDSettings(temperature=300), trigger=Trigger(threshold=10.0), n_bootstrap=2,
                      progress=False, targets=TargetSet(images, quantity="barrier", explore=[2]))
    L.run(10)
    assert L._explore[1]["image"] == 2
    R = ActiveLearner.resume(run, progress=False, targets=TargetSet(images[:2], quantity="barrier", explore=[1]))
    assert R._explore[1]["image"] == 1 and R._explore[1]["start"] == 10  # started afresh on image 1
    assert np.abs(R.walkers[1].atoms.positions - images[1].positions).max() < 1e-12
    R.run(20)



def test_an_evidence_refit_puts_the_target_environments_back_without_growing(tmp_path):
    """A refit picks the sparse set from labelled frames; the targets' environments (added
    without a label) join it again, and are not counted twice: the set does not grow from
    refit to refit."""
    images, _ = vacancy_path(3)
    soap = SOAP(species=["Cu"], periodic=True, weighting=POLY, **SMALL_SOAP)
    ts = TargetSet(images, quantity="barrier", w_floor=0.0, min_reduction=0.0)
    run = tmp_path / "run"
    L = ActiveLearner(images[0], "ase.calculators.emt:EMT", SparseGP(soap, n_sparse=30), run_dir=run,
                      md=MDSettings(temperature=800), trigger=Trigger(threshold=10.0, every=5),
                      n_bootstrap=2, check_every=20, progress=False, targets=ts)
    L.run(30)
    sizes = [len(L.model.sparse_X_)]
    for _ in range(3):
        L._refit_by_evidence()
        sizes.append(len(L.model.sparse_X_))
    assert max(sizes[1:]) <= sizes[0]
    events = [json.loads(x).get("event") for x in open(run / "log.jsonl")]
    assert events[-1] == "descriptor" and events[-2] == "target_sparse"
    X = np.vstack([L.model.descriptor_.create(a) for a in images])
    gap = np.min(np.linalg.norm(L.model.sparse_X_[:, None, :] - X[None, :, :], axis=2), axis=1)
    assert np.sum(gap < 1e-10) >= 3  # target environments are sparse points again


def test_a_target_species_the_model_cannot_know_is_refused_before_any_call(tmp_path):
    """Through the Python API a Ni target for a Cu run was found out after the bootstrap's
    4 oracle calls (the CLI refused it at once)."""
    import gpal
    from ase.calculators.emt import EMT

    images, _ = vacancy_path(3)
    ni = [a.copy() for a in images]
    for a in ni:
        a.symbols[:] = "Ni"
    with pytest.raises(gpal.UnknownSpeciesError, match=r"target structures\[0\]"):
        ActiveLearner(images[0], EMT(), run_dir=tmp_path / "run", progress=False,
                      targets=TargetSet(ni, quantity="barrier"))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("kernel", ["dot", "se"])
def test_a_force_targets_prior_variance_equals_finite_differences_of_the_kernel(kernel):
    """Var F_a = ∂²/∂h∂h' Σ_jk k(x_j(r + h e), x_k(r + h' e)) (same species), the prior
    the force target's DTC residual subtracts from, against central differences of the
    kernel sums of displaced copies; two species, a periodic cell."""
    from gpal.kernels import NormalizedDotProduct, SquaredExponential
    from gpal.learning.targets import _prior_force_variance

    a = bulk("Cu", "fcc", a=3.61, cubic=True)
    a.symbols[[1, 3]] = "Ag"
    a = rattled(a, 4, 0.1)
    k = NormalizedDotProduct(zeta=3, signal_variance=0.7) if kernel == "dot" else SquaredExponential(0.4)
    model = SparseGP(SOAP(species=["Cu", "Ag"], periodic=True, weighting=POLY, **SMALL_SOAP), k,
                     n_sparse=6, hyperparameters="fixed").fit([label(a)])
    got = _prior_force_variance(model, a, [0, 3])
    h = 1e-3  # (central second differences: rounding ~eps/h² and truncation ~h² balance here; 1e-4 left 2.0e-5 on an AMD EPYC)

    def S(a1, a2):
        X1, X2 = model.descriptor_.create(a1), model.descriptor_.create(a2)
        return sum(float(np.sum(model.kernel_(X1[a1.numbers == z], X2[a2.numbers == z]))) for z in (29, 47))

    want = []
    for atom in (0, 3):
        for c in range(3):
            moved = {}
            for s in (1, -1):
                b = a.copy()
                b.positions[atom, c] += s * h
                moved[s] = b
            want.append((S(moved[1], moved[1]) - S(moved[1], moved[-1]) - S(moved[-1], moved[1])
                         + S(moved[-1], moved[-1])) / (4 * h * h))
    np.testing.assert_allclose(got, want, rtol=2e-5)
    assert np.all(got > 0)


def test_a_force_targets_std_has_its_dtc_residual():
    """The force target's residual is its prior variance less what the sparse set
    explains: about zero when every environment of the structure is a sparse point,
    positive otherwise, and the std is sqrt(scale² SoR + residual)."""
    images, hop = vacancy_path(3)
    frames = [label(rattled(images[1], s, 0.05)) for s in range(2)]
    target = rattled(images[1], 7, 0.08)
    desc = SOAP(species=["Cu"], periodic=True, weighting=POLY, **SMALL_SOAP)
    few = SparseGP(desc, n_sparse=8, hyperparameters="fixed").fit(frames)
    ts = TargetSet([target], quantity="forces", atoms=[hop, 5])
    p = ts.predict(few, scale=1.5)
    assert np.all(p["std_residual"] > 0.05 * p["std_learnable"])
    np.testing.assert_allclose(p["std"] ** 2, p["std_learnable"] ** 2 + p["std_residual"] ** 2, rtol=1e-12)
    # more sparse points explain more of it (a projection on a larger space); the
    # environments of the target and of copies with the two atoms moved by ±0.05 Å span
    # the force's derivative to second order: little is left (what the jitter leaves)
    more = SparseGP(desc, n_sparse=40, hyperparameters="fixed").fit(frames)
    assert np.all(ts.predict(more)["std_residual"] <= p["std_residual"] * (1 + 1e-9))
    moved = [target]
    for atom in (hop, 5):
        for c in range(3):
            for s in (-0.05, 0.05):
                b = target.copy()
                b.positions[atom, c] += s
                moved.append(b)
    dense = SparseGP(desc, n_sparse=10**4, jitter=1e-11, hyperparameters="fixed").fit(
        frames + [label(b) for b in moved])
    q = ts.predict(dense)
    assert np.all(q["std_residual"] < 0.01 * p["std_residual"])


def test_gpal_learn_resumes_a_run_its_target_stopped_under_a_new_tolerance(tmp_path, capsys):
    """A run stopped by its [targets] tolerance could not be continued: --steps ran to the
    next check and stopped again, and a config with a tighter tolerance was refused. A
    resume with nothing to run rewrote summary.json and state.json as not stopped."""
    from ase.io import write

    from gpal.cli import main

    images, _ = vacancy_path(3)
    write(tmp_path / "start.xyz", images[0])
    write(tmp_path / "neb.xyz", images)
    run = tmp_path / "run"

    def config(tolerance):
        path = tmp_path / f"c{tolerance}.toml"
        path.write_text(f'run_dir = "{run}"\nsteps = 40\n[structure]\nfile = "{tmp_path / "start.xyz"}"\n'
                        "[md]\ntemperature = 600.0\n[model]\nn_sparse = 30\n"
                        "[descriptor]\nn_max = 3\nl_max = 2\n"
                        "[learner]\nn_bootstrap = 6\ncheck_every = 10\n"
                        f'[targets]\nfile = "{tmp_path / "neb.xyz"}"\nquantity = "barrier"\n'
                        f"tolerance = {tolerance}\n")
        return str(path)

    assert main(["learn", config(100.0), "-q"]) == 0
    first = json.loads((run / "summary.json").read_text())
    assert first["stopped_early"] and first["steps"] < 40
    files = {p: (run / p).read_bytes() for p in ("summary.json", "state.json")}
    capsys.readouterr()
    assert main(["learn", "--resume", str(run), "-q"]) == 0  # nothing to run: the run's files stay
    assert "nothing to continue" in capsys.readouterr().out
    assert {p: (run / p).read_bytes() for p in files} == files
    (run / "summary.json").unlink()  # (a kill after the stop, before the summary): from the state
    assert main(["learn", "--resume", str(run), "-q"]) == 0
    assert "stopped early         : target std" in capsys.readouterr().out
    assert (run / "state.json").read_bytes() == files["state.json"]
    assert main(["learn", config(1e-6), "--resume", str(run), "-q"]) == 0
    assert "[targets] tolerance now 1e-06 (the run had 100.0)" in capsys.readouterr().out
    again = json.loads((run / "summary.json").read_text())
    assert not again["stopped_early"] and again["steps"] == 40
    assert json.loads((run / "state.json").read_text())["targets"]["tolerance"] == 1e-6
    # the run's own config.toml says so: resuming with it keeps the new tolerance
    assert tomllib.loads((run / "config.toml").read_text())["targets"]["tolerance"] == 1e-6


def test_target_atoms_with_a_baseline_without_local_energies_are_refused():
    """A Δ-model whose baseline gives only a total energy (xTB, DFT codes) made a target
    over some atoms of the baseline's equal share per atom: no physical quantity."""
    from ase.calculators.calculator import Calculator, all_changes
    from ase.calculators.emt import EMT

    class TotalOnly(Calculator):
        implemented_properties = ["energy", "forces", "stress"]

        def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            ref = atoms.copy()
            ref.calc = EMT()
            self.results = {"energy": 0.5 * ref.get_potential_energy(), "forces": 0.5 * ref.get_forces(),
                            "stress": 0.5 * ref.get_stress()}

    images, hop = vacancy_path()
    frames = [label(rattled(images[0], s, 0.08)) for s in range(3)]
    model = SparseGP(SOAP(species=["Cu"], periodic=True, weighting=POLY, **SMALL_SOAP), n_sparse=20,
                     hyperparameters="fixed", baseline=TotalOnly()).fit(frames)
    with pytest.raises(ValueError, match=r"target atoms \[\d+\] need local energies.*TotalOnly"):
        TargetSet(images, quantity="barrier", atoms=[hop]).predict(model)
    assert np.isfinite(TargetSet(images, quantity="barrier").predict(model)["value"][0])


class RefusesFullCells(EMT):
    """EMT that cannot label 32-atom cells (a target structure the oracle does not take)."""

    def calculate(self, atoms=None, properties=("energy",), system_changes=("positions",)):
        if atoms is not None and len(atoms) == 32:
            raise RuntimeError("cannot label 32-atom cells")
        super().calculate(atoms, properties, system_changes)


def test_an_exploring_walker_whose_frames_the_oracle_cannot_label_stops(tmp_path):
    """A target structure the oracle could not label (another cell size than it takes):
    the walker exploring from it kept feeding frames among other walkers' labels, 18 of 29
    calls failing, and the run said nothing. After 3 failures in a row it stops, with a
    warning, and stays stopped on resume."""
    images, full = vacancy_path(3)[0], bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))
    ts = TargetSet([full, images[0]], quantity="difference", pair=(1, 0), explore=[0])
    run = tmp_path / "run"
    L = ActiveLearner(images[0], RefusesFullCells(), SparseGP(SOAP(["Cu"], periodic=True, weighting=POLY,
                                                                   **SMALL_SOAP), n_sparse=30),
                      run_dir=run, md=MDSettings(temperature=600), targets=ts, progress=False,
                      trigger=Trigger(threshold=1e-4, every=5, adaptive=False), oracle_retries=0)
    with pytest.warns(UserWarning, match="walker exploring from target structure 0.*that walker stops"):
        s = L.run(120)
    records = [json.loads(line) for line in open(run / "log.jsonl")]
    retired = [r for r in records if r.get("event") == "explore_retired"]
    assert len(retired) == 1 and retired[0]["failures_in_row"] == 3
    failed_after = [r for r in records if r.get("event") == "oracle_failure" and r["step"] > retired[0]["step"]]
    assert not failed_after and s.oracle_failures == 3
    R = ActiveLearner.resume(run, RefusesFullCells(), progress=False)
    assert len(R.walkers) == len(L.walkers) and R._explore[retired[0]["walker"]]["retired"]


def test_a_target_structure_the_oracle_cannot_label_is_said(tmp_path):
    """TargetSet(label_structures=True, explore=0): a target structure whose label failed
    was marked as done without a word beyond the oracle's own failure warning."""
    images, full = vacancy_path(3)[0], bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))
    ts = TargetSet([full, images[0]], quantity="difference", pair=(1, 0), label_structures=True, explore=0)
    run = tmp_path / "run"
    L = ActiveLearner(images[0], RefusesFullCells(), SparseGP(SOAP(["Cu"], periodic=True, weighting=POLY,
                                                                   **SMALL_SOAP), n_sparse=30),
                      run_dir=run, md=MDSettings(temperature=600), targets=ts, progress=False,
                      trigger=Trigger(threshold=10.0, every=5, adaptive=False), oracle_retries=0)
    with pytest.warns(UserWarning, match="could not label target structure 0 .*cannot label 32-atom cells"):
        L.run(60)
    events = [json.loads(line).get("event") for line in open(run / "log.jsonl")]
    assert events.count("target_structure_failed") == 1
