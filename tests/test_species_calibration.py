"""Per-species factors of the force calibration: fitted, stored, applied, and left out
where they cannot be fitted (one species) or could shrink a bootstrap calibration."""

from __future__ import annotations

import json

import numpy as np
import pytest

import gpal
from gpal import SOAP, SparseGP
from gpal.calibration import Calibration, SplitConformal, TwoTermCalibrator, fit_two_term_conformal
from gpal.calibration.recalibration import SPECIES_PRIOR_COUNT

from conftest import POLY, SMALL_SOAP, cuag_frames


def _errors(rng, n, factor):
    """Force-component errors whose std is ``factor`` times a known two-term std."""
    s, sn = rng.uniform(0.02, 0.3, n), np.full(n, 0.05)
    return rng.normal(size=n) * factor * np.hypot(1.5 * s, sn), s, sn


def test_species_factors_make_each_species_honest_and_are_shrunk_by_their_count():
    rng = np.random.default_rng(0)
    eH, sH, nH = _errors(rng, 6000, 0.8)  # H errors 0.8x, O errors 1.4x the shared std
    eO, sO, nO = _errors(rng, 3000, 1.4)
    e, s, sn = np.concatenate([eH, eO]), np.concatenate([sH, sO]), np.concatenate([nH, nO])
    sp = np.r_[np.full(6000, 1), np.full(3000, 8)]
    cal = TwoTermCalibrator().fit(e, s, sn, species=sp)
    z = e / cal.transform(s, sn, species=sp)
    for k in (sp == 1, sp == 8):
        assert np.mean(z[k] ** 2) == pytest.approx(1.0, abs=0.05)
    assert cal.species_scale_[8] / cal.species_scale_[1] == pytest.approx(1.4 / 0.8, rel=0.06)
    shared = TwoTermCalibrator().fit(e, s, sn)  # the shared factors are those without species
    assert (cal.scale_, cal.noise_scale_) == (shared.scale_, shared.noise_scale_)
    z0 = e / shared.transform(s, sn)
    assert np.mean(z0[sp == 8] ** 2) > 1.5 and np.mean(z0[sp == 1] ** 2) < 0.8  # (what the factors fix)
    # the factor is the shrunk mean z² of the shared fit, exactly
    for zz in (1, 8):
        k = sp == zz
        want = np.sqrt((np.sum(z0[k] ** 2) + SPECIES_PRIOR_COUNT) / (k.sum() + SPECIES_PRIOR_COUNT))
        assert cal.species_scale_[zz] == pytest.approx(want, rel=1e-12)
    # a species with 3 errors keeps a factor near 1, whatever they are
    few = np.r_[sp[:-3], [6, 6, 6]]
    e_few = np.r_[e[:-3], 50 * e[-3:]]
    f = TwoTermCalibrator().fit(e_few, s, sn, species=few).species_scale_[6]
    assert 1 < f < 1 + 3 * 2500 / SPECIES_PRIOR_COUNT  # bounded by the prior weight
    # one species, or unknown (0) beside one: no factors; a bootstrap calibration (min_scale 1)
    # never scales a species down
    assert TwoTermCalibrator().fit(e, s, sn, species=np.full(len(e), 29)).species_scale_ is None
    assert TwoTermCalibrator().fit(e, s, sn, species=np.where(sp == 1, 0, 8)).species_scale_ is None
    held = TwoTermCalibrator(min_scale=1.0).fit(0.5 * e, s, sn, species=sp)  # errors half the std
    assert held.scale_ == pytest.approx(1.0) and min(held.species_scale_.values()) * held.scale_ >= 1.0
    with pytest.raises(ValueError, match="species must be integers"):
        TwoTermCalibrator().fit(e, s, sn, species=sp[:10])


def test_cross_fitted_conformal_scores_carry_the_folds_species_factors():
    rng = np.random.default_rng(1)
    n = 240
    e, s, sn = _errors(rng, n, 1.0)
    sp = np.where(np.arange(n) % 3 == 0, 8, 1)
    e[sp == 8] *= 1.6
    frame = np.repeat(np.arange(8), n // 8)
    cal, conf = fit_two_term_conformal(e, s, sn, np.zeros(n), frame, species=sp)
    assert cal.species_scale_ == TwoTermCalibrator().fit(e, s, sn, np.zeros(n), sp).species_scale_
    fold = np.isin(frame, np.unique(frame)[1::2])
    total = np.empty(n)
    for k in (False, True):
        other = TwoTermCalibrator().fit(e[fold != k], s[fold != k], sn[fold != k], np.zeros((fold != k).sum()),
                                        sp[fold != k])
        total[fold == k] = other.transform(s[fold == k], sn[fold == k], 0.0, sp[fold == k])
    assert conf.quantile_ == SplitConformal(0.1).fit(e, total).quantile_


def test_a_calibration_with_species_factors_round_trips_and_is_checked():
    c = Calibration(scale=1.3, noise_scale=0.5, species_scale={"8": 1.2, 1: 0.9})
    assert c.species_scale == ((1, 0.9), (8, 1.2))
    d = json.loads(json.dumps(c.to_dict()))
    assert d["species_scale"] == {"1": 0.9, "8": 1.2}
    assert Calibration.from_dict(d) == c
    assert "species_scale" not in Calibration(scale=2.0).to_dict()
    std, noise = np.full((3, 3), 0.1), 0.05
    got = c.apply(std, noise, 0.0, np.array([[1], [8], [6]]))
    base = Calibration(scale=1.3, noise_scale=0.5).apply(std, noise)
    np.testing.assert_allclose(got, base * np.array([[0.9], [1.2], [1.0]]), rtol=1e-15)
    np.testing.assert_array_equal(c.apply(std, noise), base)  # no species given: factor 1
    for bad in ({8: 0.0}, {0: 1.0}, {8: float("nan")}, {"O": 1.1}):
        with pytest.raises(ValueError, match="species_scale"):
            Calibration(species_scale=bad)


def test_predict_applies_the_species_factors_and_the_file_keeps_them(tmp_path):
    frames = cuag_frames(4, seed=5)
    model = SparseGP(SOAP(species=["Cu", "Ag"], periodic=True, weighting=POLY, **SMALL_SOAP),
                     n_sparse=20, hyperparameters="fixed").fit(frames)
    test = cuag_frames(1, seed=9)[0]
    model.set_calibration(forces_std=Calibration(scale=2.0, noise_scale=0.5))
    shared = model.predict(test, forces_std=True, calibrated=True)["forces_std"]
    model.set_calibration(forces_std=Calibration(scale=2.0, noise_scale=0.5, conformal_q90=1.7,
                                                 species_scale={47: 1.5, 29: 0.8}))
    out = model.predict(test, forces_std=True, calibrated=True)
    want = shared * np.where(test.numbers == 47, 1.5, 0.8)[:, None]
    np.testing.assert_allclose(out["forces_std"], want, rtol=1e-12)
    np.testing.assert_allclose(out["forces_interval90"], 1.7 * want, rtol=1e-12)
    raw = model.predict(test, forces_std=True)["forces_std"]
    np.testing.assert_allclose(model.calibrated_force_std(raw, numbers=test.numbers), want, rtol=1e-12)
    with pytest.raises(ValueError, match="species factors: pass the atoms' numbers"):
        model.calibrated_force_std(raw)
    path = model.save(tmp_path / "m.npz")
    again = gpal.load(path)
    np.testing.assert_allclose(again.predict(test, forces_std=True, calibrated=True)["forces_std"], want,
                               rtol=1e-10)


def test_leave_one_out_and_residuals_name_each_components_species():
    frames = cuag_frames(3, seed=4)
    model = SparseGP(SOAP(species=["Cu", "Ag"], periodic=True, weighting=POLY, **SMALL_SOAP),
                     n_sparse=20, hyperparameters="fixed").fit(frames)
    want = np.concatenate([np.repeat(a.numbers, 3) for a in frames])
    np.testing.assert_array_equal(model.loo_residuals()["force_species"], want)
    np.testing.assert_array_equal(model.residuals(frames)["force_species"], want)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:trigger threshold")
def test_the_learner_stores_and_logs_species_factors(tmp_path):
    from ase.calculators.emt import EMT

    from gpal import ActiveLearner, MDSettings, Trigger

    start = cuag_frames(1, seed=3, rattle=0.0)[0]
    start.calc = None
    trig = Trigger(threshold=100.0, adaptive=False, every=1, max_labels=5)
    L = ActiveLearner(start, EMT(), SparseGP(SOAP(species=["Cu", "Ag"], periodic=True, weighting=POLY,
                                                  **SMALL_SOAP), n_sparse=20),
                      run_dir=tmp_path / "run", progress=False, trigger=trig, sparse_refresh=False,
                      md=MDSettings(temperature=(300, 1200)))
    L.run(30)
    out = L.calibrate()
    assert set(out["species_scale"]) == {"29", "47"}
    stored = L.model.calibration_of("forces_std")
    assert dict(stored.species_scale) == {int(z): f for z, f in out["species_scale"].items()}
    logged = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r for r in logged if r.get("event") == "calibration"][-1]["species_scale"] == out["species_scale"]


def test_gpal_validate_calibrates_and_reports_a_two_species_model(tmp_path, capsys):
    from ase.io import write

    from gpal.cli import main

    model = SparseGP(SOAP(species=["Cu", "Ag"], periodic=True, weighting=POLY, **SMALL_SOAP),
                     n_sparse=20, hyperparameters="fixed").fit(cuag_frames(4, seed=5))
    path = model.save(tmp_path / "m.npz")
    write(tmp_path / "cal.xyz", cuag_frames(6, seed=6))
    write(tmp_path / "test.xyz", cuag_frames(2, seed=7))
    assert main(["validate", str(path), str(tmp_path / "test.xyz"), "--calibrate", str(tmp_path / "cal.xyz"),
                 "-o", str(tmp_path / "cal.npz"), "--no-plots"]) == 0
    out = capsys.readouterr().out
    factors = dict(gpal.load(tmp_path / "cal.npz").calibration_of("forces_std").species_scale)
    assert set(factors) == {29, 47}
    assert f"Cu x {factors[29]:.3f}" in out and f"Ag x {factors[47]:.3g}" in out
    assert main(["validate", str(tmp_path / "cal.npz"), str(tmp_path / "test.xyz"), "--no-plots"]) == 0
    assert f"Ag x {factors[47]:.3g}" in capsys.readouterr().out


def test_species_factors_are_checked_against_the_stds_and_the_output():
    c = Calibration(scale=2.0, species_scale={8: 1.5})
    std = np.full((3, 3), 0.1)  # three atoms: per atom, not per xyz column
    np.testing.assert_allclose(c.apply(std, species=np.array([8, 1, 1])),
                               [[0.3] * 3, [0.2] * 3, [0.2] * 3], rtol=1e-15)
    with pytest.raises(ValueError, match="do not match stds"):
        c.apply(std, species=np.array([8, 1]))
    model = SparseGP(SOAP(species=["Cu", "Ag"], periodic=True, weighting=POLY, **SMALL_SOAP),
                     n_sparse=10, hyperparameters="fixed").fit(cuag_frames(2, seed=1))
    with pytest.raises(ValueError, match="species factors calibrate forces_std only"):
        model.set_calibration(energy_std=Calibration(species_scale={29: 2.0}))
    model.set_calibration(forces_std=c)
    with pytest.raises(ValueError, match="forces_std must have shape"):
        model.calibrated_force_std(np.ones(24), numbers=np.full(8, 29))
