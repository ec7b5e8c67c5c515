"""Δ-learning: SparseGP(baseline=...) fits labels − baseline and predicts baseline + GP."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from ase.calculators.emt import EMT
from ase.calculators.lj import LennardJones

import gpal
from gpal import SOAP, SparseGP
from gpal.baseline import ZeroBaseline, baseline_spec, make_baseline
from gpal.exceptions import BaselineError
from gpal.io import read_model_file, save_model

from conftest import POLY, SMALL_SOAP, cu_frames

LJ = {"sigma": 2.3, "epsilon": 0.05, "rc": 4.0, "smooth": True}


def soap():
    return SOAP(species=[29], periodic=True, weighting=POLY, **SMALL_SOAP)


def fixed(**kw):
    # fixed hyperparameters: exact comparisons and fast fits
    return SparseGP(soap(), n_sparse=30, energy_noise=0.002, hyperparameters="fixed", **kw)


@pytest.fixture(scope="module")
def train():
    return cu_frames(5, seed=11)


@pytest.fixture(scope="module")
def test_frame():
    return cu_frames(1, seed=12)[0]


@pytest.fixture(scope="module")
def lj_model(train):
    return fixed(baseline="ase.calculators.lj:LennardJones", baseline_kwargs=LJ).fit(train)


def _all(pred):
    return {k: np.asarray(v, dtype=float) for k, v in pred.items()}


def test_zero_baseline_is_the_plain_model(train, test_frame):
    plain = fixed().fit(train)
    delta = fixed(baseline="gpal.baseline:ZeroBaseline").fit(train)
    delta.update(cu_frames(1, seed=13), n_sparse=4)
    plain.update(cu_frames(1, seed=13), n_sparse=4)
    a = _all(plain.predict(test_frame, return_std=True, forces_std=True, stress_std=True))
    b = _all(delta.predict(test_frame, return_std=True, forces_std=True, stress_std=True))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=0, atol=1e-10, err_msg=k)


def test_baseline_equal_to_the_oracle_leaves_nothing_to_learn(train, test_frame):
    """Labels from EMT, baseline EMT: the residuals are zero, the GP mean is zero, the
    prediction is EMT's, and the stds are the GP's (the same as the plain model's: DTC
    stds depend on the inputs, not on the labels)."""
    delta = fixed(baseline=EMT()).fit(train)
    plain = fixed().fit(train)
    assert np.abs(delta.alpha_).max() < 1e-10
    assert all(abs(v) < 1e-10 for v in delta.e0_.values())
    p = delta.predict(test_frame, return_std=True)
    assert p["energy"] == pytest.approx(test_frame.get_potential_energy(), abs=1e-10)
    np.testing.assert_allclose(p["forces"], test_frame.get_forces(), atol=1e-10)
    np.testing.assert_allclose(p["stress"], test_frame.get_stress(), atol=1e-12)
    np.testing.assert_allclose(p["energies_std"], plain.predict(test_frame, return_std=True)["energies_std"],
                               rtol=1e-10)
    loo = delta.loo_residuals()
    assert np.abs(loo["force_error"]).max() < 1e-10


def test_baseline_equal_to_the_oracle_leaves_the_evidence_at_the_prior_floor(train, test_frame):
    """With the evidence choosing the hyperparameters, zero residuals drive the signal
    variance to its lower bound: the GP adds (almost) nothing, its stds are the prior's
    smallest."""
    from gpal.model import SIGNAL_VARIANCE_BOUNDS

    with pytest.warns(UserWarning, match="bound"):
        delta = SparseGP(soap(), n_sparse=30, baseline=EMT()).fit(train)
    assert delta.kernel_.signal_variance == pytest.approx(SIGNAL_VARIANCE_BOUNDS[0], rel=1e-2)
    std = delta.predict(test_frame, return_std=True)["energies_std"]
    assert std.max() <= np.sqrt(SIGNAL_VARIANCE_BOUNDS[0]) * (1 + 1e-6)


def _energy(model, atoms):
    return model.predict(atoms)["energy"]


def test_forces_and_stress_are_derivatives_including_the_baseline(lj_model, test_frame):
    pred = lj_model.predict(test_frame)
    base = make_baseline("ase.calculators.lj:LennardJones", LJ)
    assert np.abs(base.get_forces(test_frame.copy())).max() > 1e-2  # the baseline matters here
    h = 1e-4
    fd = np.zeros_like(pred["forces"])
    for i in range(len(test_frame)):
        for c in range(3):
            e = []
            for sgn in (1, -1):
                a = test_frame.copy()
                a.positions[i, c] += sgn * h
                e.append(_energy(lj_model, a))
            fd[i, c] = -(e[0] - e[1]) / (2 * h)
    np.testing.assert_allclose(pred["forces"], fd, atol=2e-6)
    V = test_frame.get_volume()
    S = np.zeros((3, 3))
    for i in range(3):
        for j in range(3):
            e = []
            for sgn in (1, -1):
                eps = np.zeros((3, 3))
                eps[i, j] += sgn * h / 2
                eps[j, i] += sgn * h / 2
                a = test_frame.copy()
                a.set_cell(a.cell.array @ (np.eye(3) + eps), scale_atoms=True)
                e.append(_energy(lj_model, a))
            S[i, j] = (e[0] - e[1]) / (2 * h) / V
    np.testing.assert_allclose(pred["stress"], S.flat[[0, 4, 8, 5, 2, 1]], atol=2e-7)
    assert pred["energy"] == pytest.approx(pred["energies"].sum(), abs=1e-10)
    assert pred["free_energy"] == pred["energy"]


def test_prediction_is_baseline_plus_gp(lj_model, train, test_frame):
    gp_only = fixed().fit([_minus(a, LennardJones(**LJ)) for a in train])
    p, q = lj_model.predict(test_frame, return_std=True), gp_only.predict(test_frame, return_std=True)
    b = test_frame.copy()
    b.calc = LennardJones(**LJ)
    assert p["energy"] == pytest.approx(q["energy"] + b.get_potential_energy(), abs=1e-9)
    np.testing.assert_allclose(p["forces"], q["forces"] + b.get_forces(), atol=1e-9)
    np.testing.assert_allclose(p["energies_std"], q["energies_std"], rtol=1e-10)


def test_calculator_runs_the_delta_model(lj_model, test_frame):
    from gpal import GPCalculator

    a = test_frame.copy()
    a.calc = GPCalculator(lj_model)
    p = lj_model.predict(test_frame)
    assert a.get_potential_energy() == pytest.approx(p["energy"], abs=1e-10)
    np.testing.assert_allclose(a.get_forces(), p["forces"], atol=1e-10)
    np.testing.assert_allclose(a.get_stress(), p["stress"], atol=1e-12)


def _minus(atoms, calc):
    from ase.calculators.singlepoint import SinglePointCalculator

    b = atoms.copy()
    b.calc = calc
    e, f, s = b.get_potential_energy(), b.get_forces(), b.get_stress()
    c = atoms.copy()
    c.calc = SinglePointCalculator(c, energy=atoms.get_potential_energy() - e,
                                   forces=atoms.get_forces() - f, stress=atoms.get_stress() - s)
    return c


def test_save_load_round_trip_keeps_the_baseline_as_an_import_path(tmp_path, lj_model, test_frame):
    path = lj_model.save(tmp_path / "m.npz")
    _, meta = read_model_file(path)
    assert meta["baseline"] == {"factory": "ase.calculators.lj:LennardJones", "kwargs": LJ}
    back = gpal.load(path)
    assert isinstance(back.baseline_, LennardJones)
    a, b = _all(lj_model.predict(test_frame, return_std=True)), _all(back.predict(test_frame, return_std=True))
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=0, atol=1e-12, err_msg=k)
    # a live calculator of an importable class is saved as its class path + parameters
    live = fixed(baseline=LennardJones(**LJ)).fit(cu_frames(2, seed=3))
    _, meta = read_model_file(live.save(tmp_path / "live.npz"))
    assert meta["baseline"]["factory"] == "ase.calculators.lj:LennardJones"
    assert meta["baseline"]["kwargs"]["sigma"] == LJ["sigma"]
    assert "baseline" not in read_model_file(fixed().fit(cu_frames(2, seed=3)).save(tmp_path / "p.npz"))[1]


def test_unsaveable_baselines_raise_at_save(tmp_path, train):
    class Local(ZeroBaseline):
        pass

    model = fixed(baseline=Local()).fit(train[:2])
    with pytest.raises(BaselineError, match="not importable"):
        model.save(tmp_path / "m.npz")
    bad = ZeroBaseline()
    bad.parameters["thing"] = object()
    with pytest.raises(BaselineError, match="not JSON"):
        baseline_spec(bad)


def test_info_names_the_baseline(tmp_path, lj_model, capsys):
    from gpal.cli import main

    path = lj_model.save(tmp_path / "m.npz")
    assert main(["info", str(path)]) == 0
    factory = read_model_file(path)[1]["baseline"]["factory"]
    assert f"baseline    : {factory}" in capsys.readouterr().out


def test_missing_baseline_module_on_load_is_one_line(tmp_path, lj_model):
    path = lj_model.save(tmp_path / "m.npz")
    arrays, meta = read_model_file(path)
    meta = {k: v for k, v in meta.items() if k not in ("format", "format_version", "digests")}
    meta["baseline"] = {"factory": "gpal_no_such_module.calc:Calc", "kwargs": {}}
    save_model(tmp_path / "missing.npz", arrays, meta)
    with pytest.raises(BaselineError) as info:
        gpal.load(tmp_path / "missing.npz")
    msg = str(info.value)
    assert "\n" not in msg and "gpal_no_such_module" in msg and "missing.npz" in msg

    from gpal.cli import main

    from ase.io import write

    write(tmp_path / "start.xyz", cu_frames(1)[0])
    assert main(["md", str(tmp_path / "missing.npz"), str(tmp_path / "start.xyz"), "-o",
                 str(tmp_path / "md.xyz")]) == 2  # cannot predict
    assert main(["info", str(tmp_path / "missing.npz")]) == 0  # shows what the file needs


@pytest.mark.parametrize("bad, kwargs, match", [
    ("no_colon", None, "module:Name"),
    ("gpal.baseline:Nope", None, "no attribute"),
    (3.0, None, "ASE calculator"),
    (None, {"a": 1}, "without a baseline"),
    (EMT(), {"a": 1}, "live calculator"),
    # a typo ran the calculator's default silently (TBLite's GFN2 for methd="GFN1-xTB")
    ("ase.calculators.lj:LennardJones", {"sigmaa": 2.3}, "no keyword 'sigmaa' .*did you mean 'sigma'"),
])
def test_bad_baselines(train, bad, kwargs, match):
    with pytest.raises(BaselineError, match=match):
        fixed(baseline=bad, baseline_kwargs=kwargs).fit(train[:2])


def test_params_and_config_know_the_baseline():
    from gpal.cli.config import schema

    params = SparseGP(baseline="tblite.ase:TBLite", baseline_kwargs={"method": "GFN1-xTB"}).get_params()
    assert params["baseline"] == "tblite.ase:TBLite"
    keys = schema()["model"]
    assert str in keys["baseline"].kinds and dict in keys["baseline_kwargs"].kinds
    json.dumps({k: v for k, v in params.items() if k not in ("descriptor", "kernel")})


def test_learner_with_a_delta_model_and_resume(tmp_path):
    """The learner fits, updates, checkpoints and resumes a Δ-model (the labels in
    train.xyz are the oracle's; the model holds the residuals)."""
    from ase.build import bulk

    from gpal import ActiveLearner, MDSettings, Trigger

    start = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((1, 1, 2))
    model = SparseGP(soap(), n_sparse=20, energy_noise=0.002, hyperparameters="fixed",
                     baseline="ase.calculators.lj:LennardJones", baseline_kwargs=LJ)
    learner = ActiveLearner(start, "ase.calculators.emt:EMT", model, run_dir=tmp_path / "run",
                            md=MDSettings(temperature=600, timestep=2.0), trigger=Trigger(threshold=0.05),
                            n_bootstrap=2, n_candidates=8, optimize_every=0, progress=False,
                            sparse_per_label=4)
    summary = learner.run(20)
    assert summary.oracle_calls >= 2
    back = gpal.load(tmp_path / "run" / "model.npz")
    assert back.baseline == "ase.calculators.lj:LennardJones" and back.baseline_kwargs == LJ
    labelled = gpal.io.read_frames(tmp_path / "run" / "train.xyz")
    a = labelled[-1]
    p = back.predict(a)
    np.testing.assert_allclose(p["forces"], learner.model.predict(a)["forces"], atol=1e-10)
    resumed = ActiveLearner.resume(tmp_path / "run")
    assert resumed.model.baseline == "ase.calculators.lj:LennardJones"
    resumed.run(30)
    # a live baseline calculator: the run state keeps its class path and parameters
    live = SparseGP(soap(), n_sparse=20, energy_noise=0.002, hyperparameters="fixed",
                    baseline=LennardJones(**LJ))
    ActiveLearner(start, "ase.calculators.emt:EMT", live, run_dir=tmp_path / "live",
                  md=MDSettings(temperature=600, timestep=2.0), n_bootstrap=2, n_candidates=8,
                  optimize_every=0, progress=False).run(5)
    state = json.loads((tmp_path / "live" / "state.json").read_text())
    assert state["model"]["baseline"] == "ase.calculators.lj:LennardJones"


def test_cli_learn_with_a_baseline_in_the_config(tmp_path, capsys):
    from gpal.cli import main

    cfg = tmp_path / "run.toml"
    cfg.write_text(f"""
run_dir = "{tmp_path / 'run'}"
steps = 20
[structure]
bulk = "Cu"
repeat = [1, 1, 2]
[oracle]
factory = "ase.calculators.emt:EMT"
[descriptor]
r_cut = 4.0
n_max = 4
l_max = 3
sigma = 0.5
[model]
n_sparse = 20
hyperparameters = "fixed"
baseline = "ase.calculators.lj:LennardJones"
baseline_kwargs = {{sigma = 2.3, epsilon = 0.05, rc = 4.0, smooth = true}}
[learner]
n_bootstrap = 2
n_candidates = 8
optimize_every = 0
[validation]
steps = 0
""")
    assert main(["learn", str(cfg), "-q"]) == 0
    back = gpal.load(tmp_path / "run" / "model.npz")
    assert back.baseline == "ase.calculators.lj:LennardJones" and back.baseline_kwargs == LJ
    capsys.readouterr()  # (the run above may warn of a calibration on bootstrap frames alone)
    bad = tmp_path / "bad.toml"
    bad.write_text(cfg.read_text().replace("ase.calculators.lj:LennardJones", "gpal_nope:Calc")
                   .replace(str(tmp_path / "run"), str(tmp_path / "run2")))
    assert main(["learn", str(bad), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "gpal_nope" in err


def test_cli_fit_with_a_baseline(tmp_path, train, capsys):
    from ase.io import write

    from gpal.cli import main

    write(tmp_path / "train.xyz", train[:3])
    out = tmp_path / "m.npz"
    assert main(["fit", str(tmp_path / "train.xyz"), "-o", str(out), "--n-sparse", "20", "--r-cut", "4",
                 "--n-max", "3", "--l-max", "2", "--baseline", "ase.calculators.lj:LennardJones",
                 "--baseline-kwargs", json.dumps(LJ)]) == 0
    assert gpal.load(out).baseline_kwargs == LJ
    with pytest.raises(SystemExit) as info:
        main(["fit", str(tmp_path / "train.xyz"), "--baseline-kwargs", "[1]"])
    assert info.value.code == 2
    assert "JSON object" in capsys.readouterr().err


def test_training_frames_give_the_oracle_labels_back(lj_model, train):
    """A Δ-model stores residuals; training_frames adds the baseline back (copies)."""
    back = lj_model.training_frames()
    assert len(back) == len(train)
    for a, b, stored in zip(back, train, lj_model.frames_):
        np.testing.assert_allclose(a.get_forces(), b.get_forces(), atol=1e-10)
        assert a.get_potential_energy() == pytest.approx(b.get_potential_energy(), abs=1e-9)
        assert not np.allclose(stored.get_forces(), b.get_forces())  # frames_ holds residuals
        assert a is not stored


def test_a_delta_model_shared_by_threads_gives_each_its_own_answer(lj_model):
    """Walker tasks on a multi-threaded worker share one model: its baseline calculator
    (ASE keeps state in it) is evaluated one frame at a time."""
    from concurrent.futures import ThreadPoolExecutor

    frames = cu_frames(4, seed=21) + cu_frames(4, seed=22, size=(1, 2, 2))
    ref = [lj_model.predict(a) for a in frames]

    def err(k):
        p, r = lj_model.predict(frames[k % 8]), ref[k % 8]
        return max(abs(p["energy"] - r["energy"]), float(np.abs(p["forces"] - r["forces"]).max()))

    with ThreadPoolExecutor(4) as ex:
        assert max(ex.map(err, range(200))) < 1e-10


def test_a_model_file_builds_only_an_ase_calculator_class_as_its_baseline(tmp_path, lj_model):
    """A model file names its baseline: loading it never calls anything but an ASE
    calculator class (a file naming a function is refused before anything is called)."""
    path = lj_model.save(tmp_path / "m.npz")
    arrays, meta = read_model_file(path)
    meta["baseline"] = {"factory": "os:getcwd", "kwargs": {}}
    save_model(tmp_path / "bad.npz", arrays, {k: v for k, v in meta.items() if k not in ("format", "digests")})
    with pytest.raises(BaselineError, match="os:getcwd is not an ASE calculator class"):
        gpal.load(tmp_path / "bad.npz")
    with pytest.raises(BaselineError, match="not an ASE calculator class"):
        fixed(baseline="os:getcwd").fit(cu_frames(2, seed=3))


def test_a_baseline_without_stress_is_refused_before_the_first_oracle_call(tmp_path):
    """The oracle's labels of a periodic cell hold stress, so the baseline must give one; it
    was found out after the bootstrap's four oracle calls."""
    from ase.build import bulk
    from ase.calculators.calculator import Calculator

    class NoStress(Calculator):
        implemented_properties = ["energy", "forces"]

        def calculate(self, atoms=None, properties=("energy",), system_changes=()):
            super().calculate(atoms, properties, system_changes)
            self.results = {"energy": 0.0, "forces": np.zeros((len(self.atoms), 3))}

    model = SparseGP(SOAP(species=["Cu"], periodic=True, weighting=POLY, **SMALL_SOAP), n_sparse=20,
                     baseline=NoStress())
    cell = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))
    with pytest.raises(BaselineError, match="gives no stress, which this periodic frame needs"):
        gpal.ActiveLearner(cell, EMT(), model, run_dir=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_a_baseline_that_cannot_evaluate_the_start_is_refused_before_the_first_oracle_call(tmp_path):
    """A molecule with an element the baseline lacks failed after the bootstrap's paid calls
    (4 DFT labels of a run that could not go on)."""
    from ase.build import molecule

    model = SparseGP(SOAP(species=["H", "S"], periodic=False, weighting=POLY, **SMALL_SOAP), n_sparse=20,
                     baseline="ase.calculators.emt:EMT")
    from _oracles import CountingEMT

    oracle = CountingEMT()
    with pytest.raises(BaselineError, match="No EMT-potential for S"):
        gpal.ActiveLearner(molecule("SH2"), oracle, model, run_dir=tmp_path / "run", progress=False)
    assert oracle.n_evaluations == 0 and not (tmp_path / "run").exists()


def test_gpal_info_shows_a_delta_model_whose_baseline_module_is_missing(tmp_path, monkeypatch, capsys):
    """info is where a user looks up what a file needs; it failed with the import error."""
    import sys

    from gpal.cli import main

    (tmp_path / "tmpbase.py").write_text("from ase.calculators.lj import LennardJones as LJ\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    model = SparseGP(SOAP(species=["Cu"], periodic=True, weighting=POLY, **SMALL_SOAP), n_sparse=20,
                     baseline="tmpbase:LJ", hyperparameters="fixed").fit(cu_frames(2))
    path = model.save(tmp_path / "delta.npz")
    (tmp_path / "tmpbase.py").unlink()
    monkeypatch.delitem(sys.modules, "tmpbase")
    with pytest.raises(BaselineError, match="cannot import baseline module 'tmpbase'"):
        gpal.load(path)
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "baseline    : tmpbase:LJ" in out and "not buildable here" in out and "species     : Cu" in out


def test_a_keyword_the_baseline_or_oracle_does_not_list_warns(tmp_path):
    """TBLite(mult=2) or spin=1 ran the singlet without a word (its keyword is multiplicity)."""
    from ase.build import bulk

    with pytest.warns(UserWarning, match=r"baseline ase.calculators.lj:LennardJones does not list the keyword\(s\) "
                                         r"'radius' \(its parameters: epsilon, rc, ro, sigma, smooth\)"):
        gpal.baseline.make_baseline("ase.calculators.lj:LennardJones", {"radius": 2.0})
    with pytest.warns(UserWarning, match="the oracle ase.calculators.emt:EMT does not list the keyword.*'spin'"):
        gpal.ActiveLearner(bulk("Cu", cubic=True).repeat(2), {"factory": "ase.calculators.emt:EMT",
                                                              "kwargs": {"spin": 1}},
                           run_dir=tmp_path / "run", progress=False)


def test_keywords_built_on_a_calculators_own_are_warned_not_refused(recwarn):
    """TBLite reads alpb_solvation, gb_solvation, ... as its solvation keyword: gb_solvation
    was refused as a typo of solvation. They are warned as not listed (the class may read
    them itself), as a misspelt model (albp_solvation: the gas phase, silently) must be."""
    pytest.importorskip("tblite")
    from gpal._validation import misspelt_keywords, unknown_keywords
    from tblite.ase import TBLite

    kw = {"gb_solvation": "water", "albp_solvation": "water", "method": "GFN2-xTB"}
    assert misspelt_keywords(TBLite, kw) == []
    assert unknown_keywords(TBLite, kw)[0] == ["gb_solvation", "albp_solvation"]
    assert misspelt_keywords(TBLite, {"methd": 1}) == [("methd", "method")]
    assert unknown_keywords(TBLite, {"mult": 2})[0] == ["mult"]


def test_a_keyword_the_calculator_turns_into_its_own_is_not_warned(tmp_path):
    """The unknown-keyword warning named TBLite's alpb_solvation, which TBLite reads as
    its solvation parameter: a false alarm. With the built calculator, a keyword that
    is not left in ``calc.parameters`` and set a listed parameter is not named; one
    that was dropped (a wrapper ignoring ``charge``) or misspelt still is."""
    import warnings

    from ase.calculators.emt import EMT

    from gpal._validation import warn_unknown_keywords

    class AsymptoticEMT(EMT):  # reads its own keyword into a listed parameter
        def __init__(self, **kwargs):
            if kwargs.pop("no_cutoff", False):
                kwargs["asap_cutoff"] = True
            super().__init__(**kwargs)

    class Dropping(EMT):  # throws its keywords away
        def __init__(self, **kwargs):
            super().__init__()

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_unknown_keywords(AsymptoticEMT, {"no_cutoff": True}, "the oracle x:A", AsymptoticEMT(no_cutoff=True))
    with pytest.warns(UserWarning, match="'charge'"):
        warn_unknown_keywords(Dropping, {"charge": 1}, "the oracle x:Dropping", Dropping(charge=1))
    with pytest.warns(UserWarning, match="'no_cutof'"):
        warn_unknown_keywords(AsymptoticEMT, {"no_cutof": True}, "the oracle x:A", AsymptoticEMT(no_cutof=True))
    with pytest.warns(UserWarning, match="'no_cutoff'"):  # without the instance: named, as before
        warn_unknown_keywords(AsymptoticEMT, {"no_cutoff": True}, "the oracle x:A")
    pytest.importorskip("tblite.ase")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gpal.baseline.make_baseline("tblite.ase:TBLite", {"method": "GFN1-xTB", "alpb_solvation": "water",
                                                           "verbosity": 0})
    with pytest.warns(UserWarning, match="'albp_solvation'"):
        gpal.baseline.make_baseline("tblite.ase:TBLite", {"method": "GFN1-xTB", "albp_solvation": "water",
                                                           "verbosity": 0})


def test_a_delta_model_whose_live_baseline_has_computed_can_be_copied_and_pickled(train, test_frame):
    """tblite's calculator keeps its library's state after a calculation: copy.deepcopy and
    pickle of a Δ-model failed once it had predicted (so did everything that copies one)."""
    import copy
    import pickle

    from _oracles import HoldsALibraryHandle

    live = HoldsALibraryHandle()
    model = fixed(baseline=live).fit(train)
    before = model.predict(test_frame, return_std=True)
    with pytest.raises((TypeError, AttributeError, pickle.PicklingError)):
        pickle.dumps(live)  # (the calculator itself, as the user's: EMT's own lambda, and the lock)
    for twin in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert type(twin.baseline_) is HoldsALibraryHandle and twin.baseline is twin.baseline_
        after = twin.predict(test_frame, return_std=True)
        for key in before:
            np.testing.assert_array_equal(np.asarray(after[key]), np.asarray(before[key]))
    assert model.baseline_ is live  # the model itself is left as it was
    from sklearn.base import clone

    fresh = clone(model)  # (clone deep-copies each parameter: GridSearchCV, cross_val_score)
    assert type(fresh.baseline) is HoldsALibraryHandle and fresh.baseline is not live
    assert model.baseline is live and not hasattr(fresh, "baseline_")


def test_an_oracle_and_a_baseline_of_different_charges_warn(tmp_path):
    """NH4+ labelled with charge 1 over a neutral xTB baseline learnt the difference of two
    states without a word (force errors 30x those with the charges matched)."""
    import warnings

    from gpal.learning.oracle import OracleSpec

    start = cu_frames(1, seed=3)[0]
    oracle = OracleSpec("_oracles:ChargedEMT", {"charge": 1})
    for kwargs, warned in (({}, True), ({"charge": 1}, False), ({"charge": 0}, True)):
        model = SparseGP(baseline="_oracles:ChargedEMT", baseline_kwargs=kwargs)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            gpal.ActiveLearner(start, oracle, model, run_dir=tmp_path / f"r{len(kwargs)}{warned}", progress=False)
        said = [str(w.message) for w in caught if "the baseline's" in str(w.message)]
        assert bool(said) == warned, (kwargs, said)
    assert said[0].startswith("the oracle's charge (1) and the baseline's (0) differ")
    # a charge given as initial charges reaches the oracle, not the baseline: said (it was not)
    charged = start.copy()
    q = np.zeros(len(charged))
    q[0] = 1.0
    charged.set_initial_charges(q)
    for structure, warned in ((charged, True), (start, False)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            gpal.ActiveLearner(structure, EMT(), SparseGP(baseline="_oracles:ChargedEMT"),
                               run_dir=tmp_path / f"q{warned}", progress=False)
        said = [str(w.message) for w in caught if "initial charges" in str(w.message)]
        assert len(said) == int(warned)
        assert all("the oracle gets them with each frame, the Δ-model's baseline does not" in m for m in said)


def test_a_baseline_that_fails_on_a_training_frame_names_it(train):
    """fit said only 'baseline ... failed', not which of many frames."""
    from ase.calculators.calculator import Calculator
    from ase.calculators.singlepoint import SinglePointCalculator

    class TooClose(Calculator):
        implemented_properties = ["energy", "forces", "stress"]

        def calculate(self, atoms=None, properties=("energy",), system_changes=()):
            super().calculate(atoms, properties, system_changes)
            if len(self.atoms) != len(train[0]):
                raise RuntimeError("not this one")
            self.results = {"energy": 0.0, "forces": np.zeros((len(self.atoms), 3)), "stress": np.zeros(6)}

    odd = train[1].repeat((1, 1, 2))
    odd.calc = SinglePointCalculator(odd, energy=2 * train[1].get_potential_energy(),
                                     forces=np.tile(train[1].get_forces(), (2, 1)), stress=train[1].get_stress())
    with pytest.raises(BaselineError, match=r"frames\[2\] \(Cu\d+\): baseline TooClose failed: RuntimeError: "
                                            "not this one"):
        fixed(baseline=TooClose()).fit(train[:2] + [odd])


def test_a_live_baseline_its_parameters_do_not_rebuild_is_refused_at_save_and_copied_as_is(tmp_path, train,
                                                                                            test_frame):
    """ASE's TIP3P(rc=4.0) keeps rc outside ``parameters``: a Δ-model over it was saved as
    TIP3P() and loaded with rc 5.0 (a test energy 0.156 eV off), and so were its copies;
    a SumCalculator saved and could not be loaded."""
    import copy
    import pickle

    from ase.calculators.mixing import SumCalculator
    from sklearn.base import clone

    from _oracles import ScaledEMT

    live = ScaledEMT(scale=0.5)
    model = fixed(baseline=live).fit(train)
    before = model.predict(test_frame)
    with pytest.raises(BaselineError, match=r"ScaledEMT\(\*\*parameters\) gives .* where it gave"):
        model.save(tmp_path / "m.npz")
    assert not (tmp_path / "m.npz").exists()
    with pytest.raises((TypeError, AttributeError, pickle.PicklingError)):
        pickle.dumps(model)  # (EMT's state after a calculation: no pickle, rather than a wrong baseline)
    for twin in (copy.deepcopy(model), clone(model).fit(train)):
        assert twin.baseline_.scale == 0.5
        np.testing.assert_allclose(twin.predict(test_frame)["energy"], before["energy"], rtol=0, atol=1e-9)
    # the same class with its setting given as keyword arguments saves and loads exactly
    ok = fixed(baseline="_oracles:ScaledEMT", baseline_kwargs={"scale": 0.5}).fit(train)
    ok.save(tmp_path / "ok.npz")
    assert gpal.load(tmp_path / "ok.npz").predict(test_frame)["energy"] == pytest.approx(
        ok.predict(test_frame)["energy"], abs=1e-10)
    summed = fixed(baseline=SumCalculator([EMT(), LennardJones(**LJ)])).fit(train)
    with pytest.raises(BaselineError, match=r"SumCalculator\(\*\*parameters\) does not rebuild it"):
        summed.save(tmp_path / "s.npz")
    # an active learner saves its model at every checkpoint: refused before any oracle call
    from ase.build import bulk

    from _oracles import CountingEMT

    oracle = CountingEMT()
    with pytest.raises(BaselineError, match="does not rebuild it"):
        gpal.ActiveLearner(bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2)), oracle,
                           fixed(baseline=SumCalculator([EMT(), LennardJones(**LJ)])),
                           run_dir=tmp_path / "run", progress=False)
    assert getattr(oracle, "n", 0) == 0 and not (tmp_path / "run").exists()


def test_a_baseline_without_stress_predicts_energy_and_forces_of_a_periodic_cell(train, test_frame):
    """Fitted on frames without stress, a Δ-model over a baseline without stress could not
    predict anything of a periodic cell (predict and MD raised: no stress)."""
    from ase.calculators.calculator import PropertyNotImplementedError
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.md.verlet import VelocityVerlet

    from _oracles import NoStressEMT

    frames = []
    for a in train:
        b = a.copy()
        b.calc = SinglePointCalculator(b, energy=a.get_potential_energy(), forces=a.get_forces())
        frames.append(b)
    model = fixed(baseline=NoStressEMT()).fit(frames)
    out = model.predict(test_frame, return_std=True, forces_std=True, stress_std=True)
    assert "stress" not in out and "stress_std" not in out
    ref = test_frame.copy()
    ref.calc = EMT()
    # (the baseline is the oracle: nothing left to learn)
    assert out["energy"] == pytest.approx(ref.get_potential_energy(), abs=1e-6)
    np.testing.assert_allclose(out["forces"], ref.get_forces(), rtol=0, atol=1e-6)
    md = test_frame.copy()
    md.calc = gpal.GPCalculator(model)
    VelocityVerlet(md, 1.0 * 0.09822694788464063).run(3)  # (1 fs)
    with pytest.raises(PropertyNotImplementedError):
        md.get_stress()


def test_a_baseline_in_other_units_is_named_at_fit(train):
    """A baseline in kcal/mol (23x) was taken without a word; so was one worse than none."""
    with pytest.warns(UserWarning, match=r"leaves residual forces larger than the labels' own \(2[0-9.]+x"):
        fixed(baseline="_oracles:ScaledEMT", baseline_kwargs={"scale": 23.06}).fit(train)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        try:
            fixed(baseline="_oracles:ScaledEMT", baseline_kwargs={"scale": 0.9}).fit(train)
        except UserWarning as w:
            assert "residual forces" not in str(w)


def test_a_baseline_failing_mid_run_stops_the_run_saved_for_a_resume(tmp_path):
    """A baseline that stopped working mid-run ended gpal learn as bad input (exit 2), with
    no log event, no resume line, and state.json behind the log."""
    from ase.build import bulk

    from gpal.exceptions import BaselineStoppedError, RunStoppedError

    model = SparseGP(soap(), n_sparse=30, hyperparameters="fixed",
                     baseline="_oracles:FailsAfterEMT", baseline_kwargs={"fail_after": 40})
    run = tmp_path / "run"
    L = gpal.ActiveLearner(bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2)), EMT(), model, run_dir=run,
                           md=gpal.MDSettings(temperature=600), n_bootstrap=2, check_every=10, progress=False)
    with pytest.raises(BaselineStoppedError, match=r"licence server unreachable .*\(at MD step \d+\).*"
                                                   r"gpal learn --resume") as info:
        L.run(400)
    assert isinstance(info.value, RunStoppedError)
    events = [json.loads(line) for line in open(run / "log.jsonl")]
    assert events[-1]["event"] == "baseline_failed" and events[-1]["step"] == L.step
    assert json.loads((run / "state.json").read_text())["step"] == L.step
    summary = json.loads((run / "summary.json").read_text())  # (as for the other stops)
    assert summary["finished"] is False and "licence server unreachable" in summary["superseded"]
    R = gpal.ActiveLearner.resume(run, progress=False)  # (a new baseline: its count starts again)
    assert R.step == L.step and len(R.model.frames_) >= 2


def test_gpal_commands_find_a_baseline_module_in_the_working_folder(tmp_path, monkeypatch, train, test_frame):
    """gpal learn finds a "module:Name" baseline beside it; validate, md and fit did not."""
    import sys

    from ase.io import write

    from gpal.cli import main

    (tmp_path / "mybase_here.py").write_text("from ase.calculators.emt import EMT\n\n\nclass Half(EMT):\n"
                                             "    pass\n")
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "train.xyz", train)
    write(tmp_path / "test.xyz", [test_frame])
    assert "mybase_here" not in sys.modules and str(tmp_path) not in sys.path
    assert main(["fit", "train.xyz", "-o", "m.npz", "-q", "--baseline", "mybase_here:Half"]) == 0
    assert main(["validate", "m.npz", "test.xyz", "--no-plots"]) == 0
    assert str(tmp_path) not in sys.path  # (for the command's duration only)
    sys.modules.pop("mybase_here", None)


def test_gpal_md_leaves_no_file_when_its_start_fails(tmp_path, lj_model, train, capsys):
    """gpal md made its output file before the first evaluation: a start the baseline failed
    on left an empty file, which the next run (with a good start) refused to replace."""
    from ase.io import write

    from gpal.cli import main

    model = fixed(baseline="_oracles:RefusesLargeCellsEMT").fit(train)
    model.save(tmp_path / "m.npz")
    big = train[0].copy()
    big.set_cell(big.cell * 1.2, scale_atoms=True)
    write(tmp_path / "big.xyz", big)
    write(tmp_path / "good.xyz", train[0])
    out = tmp_path / "md.xyz"
    assert main(["md", str(tmp_path / "m.npz"), str(tmp_path / "big.xyz"), "-o", str(out), "--steps", "2",
                 "-q"]) == 2
    assert "SCF did not converge" in capsys.readouterr().err and not out.exists()
    assert main(["md", str(tmp_path / "m.npz"), str(tmp_path / "good.xyz"), "-o", str(out), "--steps", "2",
                 "-q"]) == 0
    assert out.stat().st_size > 0


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_baseline_failing_mid_md_or_in_ipi_is_a_stopped_run_not_bad_input(tmp_path, train, capsys):
    """gpal md and gpal ipi exited 2 (bad input) when the baseline failed on a frame of
    the run, after the start had passed: now 1, with the frames kept named."""
    import uuid

    from ase.io import read, write
    from test_engines import _fake_ipi_server

    from gpal.cli import main

    model = fixed(baseline="_oracles:FailsAfterEMT", baseline_kwargs={"fail_after": 6}).fit(train)
    model.save(tmp_path / "m.npz")
    write(tmp_path / "start.xyz", train[0])
    out = tmp_path / "md.xyz"
    assert main(["md", str(tmp_path / "m.npz"), str(tmp_path / "start.xyz"), "-o", str(out), "--steps", "20",
                 "-q"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "licence server unreachable" in err[0] and "(at MD step " in err[0]
    assert len(read(out, ":")) >= 1
    failing = fixed(baseline="_oracles:FailsAfterEMT", baseline_kwargs={"fail_after": 10**6}).fit(train)
    # the file's recipe of the baseline (what gpal ipi rebuilds) fails at once (a file
    # keeps the baseline the fit used, whatever set_params says since)
    failing._baseline_fitted = ("_oracles:FailsAfterEMT", {"fail_after": 0})
    path = failing.save(tmp_path / "f.npz")
    name = f"gpal-fake-{uuid.uuid4().hex[:8]}"
    t = _fake_ipi_server(name, False, True)  # (reset by gpal ipi's exit: the warning filtered above)
    assert main(["ipi", str(path), "--unix", name, "--connect-timeout", "5"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert "licence server unreachable" in err[-1] and "after 0 evaluations" in err[-1]
    t.join(10)
    Path(f"/tmp/ipi_{name}").unlink(missing_ok=True)  # (the reset server thread did not get to it)
