"""A mutating method of a fitted model that fails part-way (an error, an interrupt, no
memory) leaves the model as it was: the same predictions, a file that saves and loads,
and later updates that give what they give on a model that never saw the failure."""

from __future__ import annotations

import copy
import re
import warnings

import numpy as np
import pytest

import gpal
from gpal.descriptors import SOAP
from gpal.kernels import NormalizedDotProduct
from gpal import sparse_gp
from gpal.sparse_gp import SparseGPSolver

from conftest import cu_frames, cuag_frames


def _soap():
    return SOAP(species=["Cu", "Ag"], r_cut=4.0, n_max=3, l_max=2, sigma=0.5, periodic=True,
                weighting={"function": "poly", "r0": 4.0, "c": 1, "m": 1})


def _model(hyperparameters="fixed", **kw):
    kw.setdefault("n_sparse", 16)
    kernel = NormalizedDotProduct(zeta=2) if hyperparameters == "fixed" else None
    return gpal.SparseGP(_soap(), kernel, hyperparameters=hyperparameters, random_state=0, **kw)


class Boom(Exception):
    pass


def _fail(monkeypatch, owner, name, exc=KeyboardInterrupt, after=0):
    """Make ``owner.name`` raise ``exc`` from its call number ``after + 1`` on; with
    ``after="after"``, once it has done its work; with ``"then-fit"``, make the next
    ``SparseGPSolver.fit`` raise once it has done its work."""
    orig = getattr(owner, name)
    calls = [0]

    def failing(*a, **k):
        if after == "after":
            orig(*a, **k)
            raise exc()
        if after == "then-fit":
            out = orig(*a, **k)
            _fail(monkeypatch, SparseGPSolver, "fit", exc, 0)
            return out
        calls[0] += 1
        if calls[0] > after:
            raise exc()
        return orig(*a, **k)

    monkeypatch.setattr(owner, name, failing)


def _state(model, frames):
    out = []
    for a in frames:
        p = model.predict(a, return_std=True, forces_std=True)
        out.append((p["energy"], p["forces"].copy(), p["energies_std"].copy(), p["forces_std"].copy()))
    return out, len(model.frames_), len(model.sparse_X_), model.solver_.n_obs_


def _same(a, b):
    (pa, *ca), (pb, *cb) = a, b
    assert ca == cb
    for x, y in zip(pa, pb):
        assert x[0] == y[0]
        for u, v in zip(x[1:], y[1:]):
            np.testing.assert_array_equal(u, v)


def _close(m1, m2, frames, rtol=1e-8):
    for a in frames:
        p, q = m1.predict(a, return_std=True), m2.predict(a, return_std=True)
        assert p["energy"] == pytest.approx(q["energy"], rel=rtol)
        np.testing.assert_allclose(p["forces"], q["forces"], rtol=rtol, atol=rtol * np.abs(q["forces"]).max())
        np.testing.assert_allclose(p["energies_std"], q["energies_std"], rtol=1e-6)


def _check_whole(model, before, probe, tmp_path):
    _same(_state(model, probe), before)
    again = gpal.load(model.save(tmp_path / "after.npz", overwrite=True))
    _same(_state(again, probe), before)


@pytest.mark.parametrize("case", ["update-first-energies", "update-sparse", "update-sparse-budget",
                                  "update-rows-memory", "add-sparse", "optimize", "select", "refit"])
def test_a_method_cut_short_leaves_the_model_as_it_was(case, tmp_path, monkeypatch):
    warnings.simplefilter("ignore")
    probe = cuag_frames(2, seed=9)
    new = cuag_frames(2, seed=8)
    if case == "update-first-energies":  # Ag's first energy labels refactorise from all frames
        start, call = cu_frames(5, seed=3), lambda m: m.update(new)
        fail = (gpal.SparseGP, "_stacked_rows", KeyboardInterrupt, 0)
        probe = probe + cu_frames(1, seed=11)
    elif case == "update-sparse":
        start, call = cuag_frames(5, seed=3), lambda m: m.update(new, n_sparse=4)
        fail = (gpal.SparseGP, "_observations", KeyboardInterrupt, 0)
    elif case == "update-sparse-budget":  # rows not kept: the columns come frame by frame
        start, call = cuag_frames(5, seed=3), lambda m: m.update(new, n_sparse=4)
        fail = (gpal.SparseGP, "_stacked_rows", KeyboardInterrupt, 2)
    elif case == "update-rows-memory":  # the row buffer's growth: an update's largest allocation
        start, call = cuag_frames(5, seed=3), lambda m: m.update(new)
        fail = (SparseGPSolver, "_append_rows", MemoryError, 0)
    elif case == "add-sparse":  # cut once the sparse set has grown, before the weights
        start, call = cuag_frames(5, seed=3), lambda m: m.add_sparse_environments(new[0], 3)
        fail = (gpal.SparseGP, "_add_sparse", Boom, "after")
    elif case == "optimize":  # cut in its final fit, after the kernel and noises were chosen
        start, call = cuag_frames(5, seed=3), lambda m: m.optimize_hyperparameters()
        fail = (sparse_gp, "optimize_hyperparameters", KeyboardInterrupt, "then-fit")
    elif case == "select":
        start, call = cuag_frames(5, seed=3), lambda m: m.select_hyperparameters()
        fail = (SparseGPSolver, "fit", Boom, 0)
    else:
        start, call = cuag_frames(5, seed=3), lambda m: m.refit()
        fail = (SparseGPSolver, "fit", MemoryError, 0)
    kw = {"memory_budget_gb": 1e-5} if case == "update-sparse-budget" else {}
    hyper = "evidence" if case == "select" else "fixed"
    model = _model(hyper, **kw).fit(start)
    model.update(cuag_frames(1, seed=7) if case != "update-first-energies" else cu_frames(1, seed=7))
    twin = copy.deepcopy(model)  # the same model, never cut short
    before = _state(model, probe)
    owner, name, exc, after = fail
    with monkeypatch.context() as mp:
        _fail(mp, owner, name, exc, after)
        with pytest.raises(exc):
            call(model)
    _check_whole(model, before, probe, tmp_path)
    # the call again, then another update: as on the model that never failed
    call(model)
    call(twin)
    more = cuag_frames(1, seed=6)
    model.update(more)
    twin.update(more)
    _close(model, twin, probe)
    assert len(model.frames_) == len(twin.frames_) and model.solver_.n_obs_ == twin.solver_.n_obs_


def test_set_calibration_stores_all_or_nothing():
    """A refused calibration among several had left the ones before it stored."""
    model = _model().fit(cuag_frames(4, seed=3))
    with pytest.raises(ValueError):
        model.set_calibration(forces_std=1.7, energy_std=-2.0)
    assert model.calibration_ == {}
    model.set_calibration(forces_std=1.7, energy_std=2.0)
    assert set(model.calibration_) == {"forces_std", "energy_std"}
    # a key no std output has (a typo was kept, and calibrated=True never used it)
    for key, hint in (("force_std", " (did you mean 'forces_std'?)"), ("bogus_std", "")):
        with pytest.raises(ValueError, match="calibration keys name std outputs .*" + re.escape(f"got {key!r}{hint}")):
            model.set_calibration(**{key: 3.0})
    assert set(model.calibration_) == {"forces_std", "energy_std"}


def test_a_setting_changed_since_the_fit_is_named_by_update_and_nothing_is_added(tmp_path):
    """set_params(memory_budget_gb="lots") then update: the frames went in, then the
    ValueError (a retry added them twice); min_distance="x" was a bare TypeError."""
    model = _model().fit(cuag_frames(4, seed=3))
    new = cuag_frames(2, seed=8)
    for name, value in (("memory_budget_gb", "lots"), ("min_distance", "x")):
        good = getattr(model, name)
        model.set_params(**{name: value})
        with pytest.raises(ValueError, match=name):
            model.update(new)
        assert len(model.frames_) == 4
        model.set_params(**{name: good})
    model.update(new)
    assert len(model.frames_) == 6


def test_add_sparse_environments_checks_its_arguments():
    """2.5 had added 2, "3" 3, -1 nothing, and "bogus" had taken the variance order."""
    model = _model().fit(cuag_frames(4, seed=3))
    atoms = cuag_frames(1, seed=8)[0]
    for n in (2.5, "3", -1):
        with pytest.raises(ValueError, match="n_sparse must be an integer"):
            model.add_sparse_environments(atoms, n)
    with pytest.raises(ValueError, match="Invalid sparse_selection 'bogus'"):
        model.add_sparse_environments(atoms, 2, sparse_selection="bogus")
    assert len(model.sparse_X_) == 16
    assert model.add_sparse_environments(atoms, np.int64(2)) == 2


def test_a_saved_delta_model_keeps_the_baseline_it_was_fitted_with(tmp_path, monkeypatch):
    """set_params(baseline=None) on a fitted Δ-model, then save: the file held no baseline,
    and the reloaded model predicted 0.33 eV where the model gave 0.66 (its baseline is
    used until the next fit)."""
    import os
    import sys

    monkeypatch.syspath_prepend(os.path.dirname(__file__))
    sys.modules.pop("_oracles", None)
    frames = cuag_frames(4, seed=3)
    probe = cuag_frames(1, seed=9)[0]
    model = _model(baseline="_oracles:ScaledEMT", baseline_kwargs={"scale": 0.5}).fit(frames)
    e = model.predict(probe)["energy"]
    model.set_params(baseline=None, baseline_kwargs=None)
    assert model.predict(probe)["energy"] == e
    again = gpal.load(model.save(tmp_path / "m.npz"))
    assert again.predict(probe)["energy"] == pytest.approx(e, rel=1e-12)
    assert again.baseline == "_oracles:ScaledEMT" and again.baseline_kwargs == {"scale": 0.5}
    # a live calculator: the file describes it, as before
    from ase.calculators.emt import EMT

    live = _model(baseline=EMT()).fit(frames)
    e = live.predict(probe)["energy"]
    live.set_params(baseline=None)
    assert gpal.load(live.save(tmp_path / "live.npz")).predict(probe)["energy"] == pytest.approx(e, rel=1e-12)
    # the next fit uses the new setting
    assert model.fit(frames).baseline_ is None
    assert gpal.load(model.save(tmp_path / "m2.npz", overwrite=True)).baseline is None
