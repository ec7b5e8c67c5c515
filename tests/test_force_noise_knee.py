"""A force noise that grows with the label force (SparseGP(force_noise_knee=...)).

The references are computed here from the definition, independently of the model's
noise code: a component of atom i with label force F_i has the noise
force_noise * sqrt(1 + |F_i|² / knee²).
"""

from __future__ import annotations

import numpy as np
import pytest

from gpal import SOAP, SparseGP
from gpal.calibration import Calibration
from gpal.sparse_gp import SparseGPSolver

from conftest import SMALL_SOAP, cu_frames, refit_without_frame


def soap(frames):
    return SOAP(species=["Cu"], periodic=True, **SMALL_SOAP)


@pytest.fixture(scope="module")
def frames():
    return cu_frames(6, seed=71, size=(2, 2, 2))


def fixed(frames, knee, **kw):
    return SparseGP(soap(frames), n_sparse=25, hyperparameters="fixed", force_noise_knee=knee, **kw)


def expected_noise(model, frames):
    """The noise std of every observation in the model's order, from the definition."""
    out = []
    for a in frames:
        n = len(a)
        out.append([model.noise_["energy"] * np.sqrt(n)])
        F = a.get_forces()
        fac = np.sqrt(1.0 + np.sum(F**2, axis=1) / model.force_noise_knee_**2)
        out.append(np.repeat(model.noise_["force"] * fac, 3))
        out.append(model.noise_["stress"] * np.array([1, 1, 1, 0.5 ** 0.5, 0.5 ** 0.5, 0.5 ** 0.5]))  # (shear: σ/√2)
    return np.concatenate(out)


def test_the_fit_is_the_heteroscedastic_sor_solution(frames):
    knee = 0.3  # eV/Å, below the larger forces of these rattled frames
    model = fixed(frames, knee).fit(frames)
    assert model.force_noise_knee_ == knee
    lam = expected_noise(model, model.frames_)
    np.testing.assert_allclose(model.solver_.noise_std_, lam, rtol=1e-12)
    assert lam.max() > 1.5 * model.noise_["force"]  # the knee matters on these frames
    # the weights are the solver's for that noise vector (the solver itself is tested
    # against dense GPs elsewhere)
    sol = model.solver_
    ref = SparseGPSolver().fit(sol.K_mm_, sol.K_nm_, sol.y_, lam, jitter=model.jitter)
    pred, want = sol.K_nm_ @ model.alpha_, sol.K_nm_ @ ref.alpha_  # alpha itself is ill-conditioned
    np.testing.assert_allclose(pred, want, atol=1e-8 * np.abs(want).max())
    # and it differs from the model with one force noise
    plain = fixed(frames, None).fit(frames)
    assert plain.force_noise_knee_ is None
    assert np.abs(plain.alpha_ - model.alpha_).max() > 1e-3 * np.abs(plain.alpha_).max()
    np.testing.assert_allclose(plain.solver_.noise_std_[plain.obs_group_ == 1], plain.noise_["force"])


def test_a_far_knee_is_one_force_noise(frames):
    a = fixed(frames, None).fit(frames)
    b = fixed(frames, 1e9).fit(frames)
    test = cu_frames(1, seed=72, size=(2, 2, 2))[0]
    pa, pb = a.predict(test, return_std=True, forces_std=True), b.predict(test, return_std=True, forces_std=True)
    for key in ("energy", "forces", "forces_std"):
        np.testing.assert_allclose(pa[key], pb[key], rtol=1e-9, atol=1e-12)


def test_auto_is_the_rms_atomic_force_of_the_labels(frames):
    model = fixed(frames, "auto").fit(frames)
    F = np.concatenate([a.get_forces() for a in frames])
    assert model.force_noise_knee_ == pytest.approx(np.sqrt(np.mean(np.sum(F**2, axis=1))), rel=1e-12)
    assert model.typical_force_noise() > model.noise_["force"]
    assert fixed(frames, None).fit(frames).typical_force_noise() == pytest.approx(0.05)


def test_leave_one_frame_out_and_update_follow_the_knee(frames):
    model = fixed(frames, 0.3).fit(frames[:5])
    loo = model.loo_residuals()
    sol = model.solver_
    for b in range(5):
        ref, rows = refit_without_frame(model, b)
        f = model.obs_group_[rows] == 1
        err = (sol.K_nm_[rows] @ ref.alpha_ - sol.y_[rows])[f]
        mine = loo["force_frame"] == b
        np.testing.assert_allclose(loo["force_error"][mine], err, atol=1e-8)
        np.testing.assert_allclose(loo["force_noise"][mine], sol.noise_std_[rows][f], rtol=1e-12)
    # an update keeps the knee and equals a refit with it
    grown = fixed(frames, 0.3).fit(frames[:5]).update(frames[5:], n_sparse=0)
    refit = fixed(frames, 0.3).fit(frames[:5])
    refit_all = SparseGPSolver().fit(refit.solver_.K_mm_, grown.solver_.K_nm_, grown.solver_.y_,
                                     expected_noise(grown, grown.frames_), jitter=grown.jitter)
    np.testing.assert_allclose(grown.solver_.noise_std_, expected_noise(grown, grown.frames_), rtol=1e-12)
    want = grown.solver_.K_nm_ @ refit_all.alpha_
    np.testing.assert_allclose(grown.solver_.K_nm_ @ grown.alpha_, want, atol=1e-8 * np.abs(want).max())


def test_the_std_of_a_new_label_uses_the_predicted_force(frames):
    model = fixed(frames, 0.3).fit(frames)
    test = cu_frames(1, seed=73, size=(2, 2, 2))[0]
    raw = model.predict(test, forces_std=True)
    model.set_calibration(forces_std=Calibration(scale=1.0, noise_scale=1.0))
    cal = model.predict(test, forces_std=True, calibrated=True)
    F = raw["forces"]
    noise = model.noise_["force"] * np.sqrt(1 + np.sum(F**2, axis=1) / 0.3**2)[:, None]
    np.testing.assert_allclose(cal["forces_std"] ** 2 - raw["forces_std"] ** 2, np.broadcast_to(noise**2, F.shape),
                               rtol=1e-10)
    res = model.residuals([frames[0]])
    Fl = frames[0].get_forces()
    np.testing.assert_allclose(res["force_noise"], np.repeat(
        model.noise_["force"] * np.sqrt(1 + np.sum(Fl**2, axis=1) / 0.3**2), 3), rtol=1e-12)


def test_save_load_keeps_the_knee(frames, tmp_path):
    model = fixed(frames, "auto").fit(frames)
    model.save(tmp_path / "m.npz")
    back = SparseGP.load(tmp_path / "m.npz")
    assert back.force_noise_knee_ == model.force_noise_knee_ and back.force_noise_knee == "auto"
    test = cu_frames(1, seed=74, size=(2, 2, 2))[0]
    np.testing.assert_allclose(back.predict(test)["forces"], model.predict(test)["forces"], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(back.loo_residuals()["force_noise"], model.loo_residuals()["force_noise"], rtol=1e-12)


@pytest.mark.parametrize("bad", [0.0, -1.0, "yes", True])
def test_bad_knee(frames, bad):
    with pytest.raises(ValueError, match="force_noise_knee"):
        fixed(frames, bad).fit(frames)
