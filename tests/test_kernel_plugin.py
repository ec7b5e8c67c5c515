"""A kernel written outside gpal plugs into SparseGP: fit, forces by finite differences,
save and load through the kernel registry. It implements ``__call__`` and ``gradient_x``
only; the rest comes from :class:`gpal.kernels.Kernel`."""

from __future__ import annotations

import numpy as np
import pytest

from gpal import SOAP, SparseGP
from gpal.kernels import Kernel, kernel_from_dict

from conftest import POLY, SMALL_SOAP, cu_frames


class SquaredDot(Kernel):
    """k(x, z) = σ² (x·z / s)² on raw (unnormalised) descriptors."""

    _hyperparameter_names = ("signal_variance",)

    def __init__(self, scale=1.0, signal_variance=1.0, signal_variance_bounds=(1e-3, 1e5)):
        self.scale = scale
        self.signal_variance = signal_variance
        self.signal_variance_bounds = signal_variance_bounds

    def __call__(self, X, Z=None, eval_gradient=False):
        X = np.asarray(X, dtype=float)
        Z = X if Z is None else np.asarray(Z, dtype=float)
        K = self.signal_variance * (X @ Z.T / self.scale) ** 2
        return (K, K[..., None]) if eval_gradient else K

    def gradient_x(self, X, Z):
        X, Z = np.asarray(X, dtype=float), np.asarray(Z, dtype=float)
        d = X @ Z.T / self.scale
        return self.signal_variance * 2.0 * d[:, :, None] * Z[None, :, :] / self.scale


@pytest.fixture(scope="module")
def model():
    desc = SOAP(species=["Cu"], periodic=True, weighting=POLY, **SMALL_SOAP)
    return SparseGP(desc, SquaredDot(scale=50.0), n_sparse=20).fit(cu_frames(4, seed=71))


def test_a_kernel_with_two_methods_fits_and_its_forces_are_gradients(model):
    atoms = cu_frames(1, seed=72)[0]
    out = model.predict(atoms, return_std=True)
    h = 1e-4  # central differences: truncation ~h², round-off of the energy ~1e-11 eV / h
    for a, c in [(0, 0), (5, 2)]:
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[a, c] += h
        minus.positions[a, c] -= h
        fd = -(model.predict(plus)["energy"] - model.predict(minus)["energy"]) / (2 * h)
        assert out["forces"][a, c] == pytest.approx(fd, abs=1e-6)
    assert np.all(out["energies_std"] >= 0)
    k = model.kernel_
    X = model.sparse_X_[:3]
    np.testing.assert_allclose(k.diag(X), np.diag(k(X)), rtol=1e-12)


def test_a_kernel_is_saved_and_loaded_through_the_registry(model, tmp_path):
    back = SparseGP.load(model.save(tmp_path / "k.npz"))
    assert isinstance(back.kernel_, SquaredDot) and back.kernel_.scale == 50.0
    atoms = cu_frames(1, seed=73)[0]
    np.testing.assert_allclose(back.predict(atoms)["forces"], model.predict(atoms)["forces"], atol=1e-12)
    assert kernel_from_dict(model.kernel_.to_dict()).get_params() == model.kernel_.get_params()


class TracedSquaredDot(SquaredDot):
    """A subclass that only changes a method (no constructor of its own)."""

    def __call__(self, X, Z=None, eval_gradient=False):
        return super().__call__(X, Z, eval_gradient)


def test_a_subclass_without_its_own_constructor_round_trips(tmp_path):
    desc = SOAP(species=["Cu"], periodic=True, weighting=POLY, **SMALL_SOAP)
    model = SparseGP(desc, TracedSquaredDot(scale=50.0), n_sparse=10, hyperparameters="fixed").fit(
        cu_frames(2, seed=74))
    back = SparseGP.load(model.save(tmp_path / "t.npz"))
    assert type(back.kernel_) is TracedSquaredDot


class FlaggedDot(SquaredDot):
    """A plugin whose parameters include a switch and an optional value."""

    def __init__(self, scale=1.0, squared=True, cap=None, signal_variance=1.0,
                 signal_variance_bounds=(1e-3, 1e5)):
        super().__init__(scale, signal_variance, signal_variance_bounds)
        self.squared, self.cap = squared, cap


def test_kernel_parameters_none_and_bool_are_saved_as_given():
    d = FlaggedDot(scale=2.0).to_dict()
    assert d["params"]["squared"] is True and d["params"]["cap"] is None
    assert kernel_from_dict(d).get_params() == FlaggedDot(scale=2.0).get_params()
    with pytest.raises(TypeError, match="FlaggedDot parameter cap=.* cannot be saved"):
        FlaggedDot(cap=object()).to_dict()
