"""SparseGP inputs as users give them: per-species dicts keyed by symbol, number or digits,
numpy scalars, and frames that carry only some labels."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase.calculators.singlepoint import SinglePointCalculator

import gpal
from gpal.descriptors import SOAP
from gpal.kernels import NormalizedDotProduct

from conftest import cuag_frames


def _model(**kw):
    soap = SOAP(species=["Cu", "Ag"], r_cut=4.0, n_max=4, l_max=3, sigma=0.5, periodic=True)
    kw.setdefault("n_sparse", 12)
    return gpal.SparseGP(soap, NormalizedDotProduct(zeta=2), hyperparameters="fixed", **kw)


@pytest.mark.parametrize("n_sparse", [{"Cu": 8, "Ag": 4}, {29: 8, 47: 4}, {"29": 8, "47": 4},
                                      {np.int64(29): 8, np.int64(47): 4}, np.int64(12)])
def test_per_species_keys_fit_save_and_load(tmp_path, n_sparse):
    """Symbols (a TOML table), numbers, digit strings (a JSON round trip) and numpy
    integers name the same species, and the saved model loads with the same predictions."""
    frames = cuag_frames(3, seed=1)
    model = _model(n_sparse=n_sparse, e0={"Cu": -0.1, 47: 0.2}).fit(frames)
    if isinstance(n_sparse, dict):
        per = {int(z): int(np.sum(model.sparse_species_ == z)) for z in (29, 47)}
        assert per == {29: 8, 47: 4}
    assert model.e0_ == {29: -0.1, 47: 0.2}
    loaded = gpal.load(model.save(tmp_path / "m.npz"))
    assert loaded.predict(frames[0])["energy"] == pytest.approx(model.predict(frames[0])["energy"], abs=1e-10)
    assert all(isinstance(k, int) for k in (loaded.n_sparse if isinstance(loaded.n_sparse, dict) else {}))


def test_numpy_scalar_settings_save(tmp_path):
    frames = cuag_frames(2, seed=2)
    model = _model(force_noise=np.float32(0.05), energy_noise=np.float64(0.002)).fit(frames)
    loaded = gpal.load(model.save(tmp_path / "m.npz"))
    assert loaded.force_noise == pytest.approx(0.05)


@pytest.mark.parametrize("bad", [{"Xx": 4}, {"0": 4}, {2.5: 4}])
def test_unknown_species_key_is_named(bad):
    with pytest.raises(ValueError, match="n_sparse.*not a chemical symbol"):
        _model(n_sparse=bad).fit(cuag_frames(2))


def test_bad_e0_is_named():
    with pytest.raises(ValueError, match="e0 must be 'fit' or a dict"):
        _model(e0="mean").fit(cuag_frames(2))
    with pytest.raises(ValueError, match=r"e0\['Cu'\] must be a finite number"):
        _model(e0={"Cu": "x"}).fit(cuag_frames(2))


def _only(a, *, energy=False, forces=False, as_info=False):
    b = a.copy()
    if as_info:  # labels in atoms.info / atoms.arrays, no calculator (frame_labels' fallback)
        b.calc = None
        b.info["energy"] = a.get_potential_energy()
        b.arrays["forces"] = a.get_forces().copy()
        return b
    res = {}
    if energy:
        res["energy"] = a.get_potential_energy()
    if forces:
        res["forces"] = a.get_forces()
    b.calc = SinglePointCalculator(b, **res)
    return b


def test_residuals_read_labels_as_fit_does():
    """Energy-only, forces-only and info-labelled frames: residuals gives an entry per
    label present, equal to the errors of the full frames."""
    full = cuag_frames(3, seed=3)
    model = _model().fit(cuag_frames(3, seed=4))
    ref = model.residuals(full)
    mixed = [_only(full[0], energy=True), _only(full[1], forces=True), _only(full[2], as_info=True)]
    res = model.residuals(mixed)
    assert list(res["energy_frame"]) == [0, 2]
    np.testing.assert_allclose(res["energy_error"], ref["energy_error"][[0, 2]], atol=1e-12)
    n = len(full[0])
    assert list(np.unique(res["force_frame"])) == [1, 2]
    np.testing.assert_allclose(res["force_error"], ref["force_error"][3 * n:], atol=1e-12)
    np.testing.assert_allclose(res["force_std"], ref["force_std"][3 * n:], atol=1e-12)
    assert list(res["n_atoms"]) == [len(a) for a in full]
    json.dumps({k: v.tolist() for k, v in res.items()})  # plain numeric arrays


def test_fit_reads_frames_from_a_generator(tmp_path):
    """ase.io.iread and generator expressions: read once, by fit (not by its thread policy)."""
    from ase.io import iread, write

    frames = cuag_frames(3, seed=5)
    write(tmp_path / "t.xyz", frames)
    a = _model().fit(iread(str(tmp_path / "t.xyz")))
    b = _model().fit(f for f in frames)
    assert len(a.frames_) == len(b.frames_) == 3
    assert a.predict(frames[0])["energy"] == pytest.approx(_model().fit(frames).predict(frames[0])["energy"], abs=1e-8)


def test_evidence_fit_of_slabs_periodic_in_two_directions():
    """Frames periodic in some directions (a slab with vacuum) are handled one at a time
    by the evidence search, as fully periodic ones (two frames failed before)."""
    from ase.build import fcc111

    from conftest import label

    frames = []
    for k in range(3):
        a = fcc111("Cu", (2, 2, 3), vacuum=5.0)
        a.positions += np.random.default_rng(k).normal(0, 0.05, a.positions.shape)
        frames.append(label(a))
    model = gpal.SparseGP(n_sparse=20).fit(frames)
    assert np.isfinite(model.predict(frames[0])["energy"])


def test_wrong_constructor_arguments_are_named_when_fitting(tmp_path):
    from conftest import cu_frames

    frames = cu_frames(2)
    for model, exc, match in [
        (gpal.SparseGP(200), TypeError, r"descriptor must be a gpal descriptor .*SparseGP\(n_sparse=200\)"),
        (gpal.SparseGP("soap"), TypeError, "descriptor must be a gpal descriptor such as gpal.SOAP"),
        (gpal.SparseGP(kernel="rbf"), TypeError, "kernel must be a gpal kernel"),
        (gpal.SparseGP(force_noise="0.05"), ValueError, "force_noise must be a finite number > 0 or None, got '0.05'"),
        (gpal.SparseGP(force_noise=50), ValueError, "force_noise = 50 eV/Å is above 5 eV/Å.*it is in eV/Å"),
        (gpal.SparseGP(energy_noise=2.0), ValueError, "energy_noise = 2 eV/atom is above 1 eV/atom"),
    ]:
        assert "SparseGP(" in repr(model)  # (a repr never fails, whatever was given)
        with pytest.raises(exc, match=match):
            model.fit(frames)
    with pytest.raises(TypeError, match="Trigger.calibrated=.... must be True or False, got 'yes'"):
        gpal.Trigger(calibrated="yes")


def test_a_calculator_from_a_saved_model_path_and_a_save_into_a_missing_folder(tmp_path):
    frames = cuag_frames(3)
    model = _model().fit(frames)
    path = model.save(tmp_path / "m.npz")
    a = frames[0].copy()
    a.calc = gpal.GPCalculator(str(path))
    assert a.get_potential_energy() == pytest.approx(model.predict(frames[0])["energy"], abs=1e-10)
    with pytest.raises(TypeError, match="model must be a fitted gpal.SparseGP or the path of a saved model"):
        gpal.GPCalculator(3)
    with pytest.raises(FileNotFoundError, match=r"the folder .*nodir does not exist"):
        model.save(tmp_path / "nodir" / "m.npz")
    assert not (tmp_path / "nodir").exists()
