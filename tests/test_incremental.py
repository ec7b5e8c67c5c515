"""Incremental learning and streaming fits: equal to a fit from scratch, memory bounded.

References are independent: a :class:`SparseGPSolver` fitted at once on kernel rows
recomputed from scratch (descriptor derivatives of every frame against the whole sparse
set), and the descriptor-derivative kernel rows for the SOAP-adjoint ones.
"""

from __future__ import annotations

import copy
import tracemalloc
import warnings

import numpy as np
import pytest
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

from gpal import SparseGP
from gpal.descriptors import SOAP
from gpal.kernels import NormalizedDotProduct
from gpal.sparse_gp import SparseGPSolver

from conftest import POLY, SMALL_SOAP, cu_frames, cuag_frames


def _soap(frames, **kw):
    species = sorted({int(z) for a in frames for z in a.numbers})
    params = dict(SMALL_SOAP, weighting=POLY)
    params.update(kw)
    return SOAP(species=species, periodic=True, **params)


def _model(frames, n_sparse=20, **kw):
    return SparseGP(_soap(frames), NormalizedDotProduct(zeta=4), n_sparse=n_sparse,
                    hyperparameters="fixed", **kw)


def _refit(model) -> SparseGPSolver:
    """A solver fitted at once on rows recomputed for the model's frames and sparse set."""
    Z, zsp = model.sparse_X_, model.sparse_species_
    rows = model._stacked_rows(model.frames_, Z, zsp)
    return SparseGPSolver().fit(model._k_mm(Z, zsp), rows, model.solver_.y_,
                                model.solver_.noise_std_, jitter=model.jitter)


def _rel(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def _assert_same_posterior(model, ref, tests, tol):
    """Mean, local-energy/force stds of ``tests`` and the evidence of ``model`` vs ``ref``."""
    Z, zsp = model.sparse_X_, model.sparse_species_
    for a in tests:
        X = model.descriptor_.create(a)
        K = model._k_xm(X, a.numbers, Z, zsp)
        assert _rel(K @ model.alpha_, K @ ref.alpha_) < tol
        assert _rel(model.solver_.var_sor(K), ref.var_sor(K)) < tol
        assert _rel(model.solver_.predict_var(K, model.kernel_.diag(X)),
                    ref.predict_var(K, model.kernel_.diag(X))) < tol
        _, F, _ = model._derivative_rows(a, Z, zsp)
        F = F.reshape(3 * len(a), -1)
        assert _rel(F @ model.alpha_, F @ ref.alpha_) < tol
        assert _rel(model.solver_.var_sor(F), ref.var_sor(F)) < tol
    lml, lml_ref = model.solver_.log_marginal_likelihood(), ref.log_marginal_likelihood()
    assert abs(lml - lml_ref) < tol * abs(lml_ref)


@pytest.fixture(scope="module")
def alloy():
    return cuag_frames(12, seed=5)


def test_adjoint_rows_equal_derivative_rows(alloy):
    model = _model(alloy[:3]).fit(alloy[:3])
    Z, zsp = model.sparse_X_[::3], model.sparse_species_[::3]
    for a in alloy[3:5]:
        adj = model._adjoint_rows(a, Z, zsp)
        ref = model._derivative_rows(a, Z, zsp)
        for x, y in zip(adj, ref):
            np.testing.assert_allclose(x, y, rtol=0, atol=1e-12 * np.max(np.abs(y)))


@pytest.mark.parametrize("n_new, max_adjoint", [(3, 24), (7, 0)])  # adjoint / derivative columns
def test_updates_equal_refit_from_scratch(alloy, n_new, max_adjoint, monkeypatch):
    import gpal.model.rows

    monkeypatch.setattr(gpal.model.rows, "_ADJOINT_MAX_COLUMNS", max_adjoint)
    model = _model(alloy[:4]).fit(alloy[:4])
    model.update(alloy[4:5], n_sparse=n_new)
    model.update(alloy[5:7], n_sparse=0)
    added = model.add_sparse_environments(alloy[7], 2)
    assert added > 0
    model.update(alloy[7:9], n_sparse=n_new, sparse_selection="fps")
    assert len(model.frames_) == 9
    assert model.solver_.n_sparse_ == len(model.sparse_X_) > 20
    _assert_same_posterior(model, _refit(model), alloy[10:12], tol=1e-8)


def test_update_equals_refit_ill_conditioned():
    # evidence-chosen noises at their lower bounds: cond(R) ~ 1e10 in this case; the
    # whitened factor keeps the column update as accurate as a new QR
    frames = cu_frames(6, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = SparseGP(_soap(frames), n_sparse=30).fit(frames[:3])
    model.update(frames[3:5], n_sparse=5)
    model.update(frames[5:], n_sparse=0)
    ref = _refit(model)
    assert np.linalg.cond(ref.R_) > 1e8
    test = cu_frames(1, seed=77)
    X = model.descriptor_.create(test[0])
    K = model._k_xm(X, test[0].numbers, model.sparse_X_, model.sparse_species_)
    assert _rel(K @ model.alpha_, K @ ref.alpha_) < 1e-7
    assert _rel(model.solver_.var_sor(K), ref.var_sor(K)) < 1e-6


def test_loo_residuals_after_updates_equal_refit(alloy):
    model = _model(alloy[:4]).fit(alloy[:4])
    model.update(alloy[4:6], n_sparse=3)
    fresh = _model(alloy[:4]).fit(alloy[:4])
    fresh.frames_ = model.frames_
    fresh.obs_group_, fresh.obs_frame_ = model.obs_group_, model.obs_frame_
    fresh.sparse_X_, fresh.sparse_species_ = model.sparse_X_, model.sparse_species_
    fresh.solver_ = _refit(model)
    fresh.alpha_ = fresh.solver_.alpha_
    a, b = model.loo_residuals(), fresh.loo_residuals()
    for key in ("force_error", "force_std", "energy_error", "energy_std"):
        np.testing.assert_allclose(a[key], b[key], rtol=1e-8, atol=1e-9 * np.abs(b[key]).max())


def test_streaming_fit_equals_one_shot(alloy):
    one = _model(alloy[:8]).fit(alloy[:8])
    # ~2 kB blocks: one frame per block; rows (about 70 kB) not kept
    small = _model(alloy[:8], memory_budget_gb=2e-5).fit(alloy[:8])
    assert one.solver_.keep_rows_ and not small.solver_.keep_rows_
    assert small.solver_.K_nm_ is None
    np.testing.assert_array_equal(small.sparse_X_, one.sparse_X_)
    _assert_same_posterior(small, one.solver_, alloy[10:12], tol=1e-10)
    for a in alloy[10:12]:
        p, q = small.predict(a, return_std=True), one.predict(a, return_std=True)
        assert _rel(p["forces"], q["forces"]) < 1e-10
        assert _rel(p["energies_std"], q["energies_std"]) < 1e-10
    # leave-one-frame-out residuals recompute the rows frame by frame
    a, b = small.loo_residuals(), one.loo_residuals()
    for key in ("force_error", "force_std", "energy_error"):
        np.testing.assert_allclose(a[key], b[key], rtol=1e-8, atol=1e-9 * np.abs(b[key]).max())
    # adding frames and sparse points without stored rows refits frame by frame
    one.update(alloy[8:10], n_sparse=4)
    small.update(alloy[8:10], n_sparse=4)
    np.testing.assert_array_equal(small.sparse_X_, one.sparse_X_)
    _assert_same_posterior(small, one.solver_, alloy[10:12], tol=1e-9)


def test_model_without_rows_saves_and_loads(alloy, tmp_path):
    model = _model(alloy[:6], memory_budget_gb=2e-5).fit(alloy[:6])
    path = model.save(tmp_path / "m.npz")
    back = SparseGP.load(path)
    assert not back.solver_.keep_rows_
    a = alloy[11]
    p, q = model.predict(a, return_std=True), back.predict(a, return_std=True)
    np.testing.assert_array_equal(p["forces"], q["forces"])
    np.testing.assert_array_equal(p["energies_std"], q["energies_std"])
    assert back.solver_.log_marginal_likelihood() == model.solver_.log_marginal_likelihood()
    assert back.memory_budget_gb == 2e-5


def test_earlier_model_file_layout_loads(alloy, tmp_path):
    """Files with raw rows and the unwhitened factor (before the whitened layout) load."""
    model = _model(alloy[:4]).fit(alloy[:4])
    from gpal.io import read_model_file, save_model

    arrays, meta = read_model_file(model.save(tmp_path / "m.npz"))
    sol = model.solver_
    for key in ("solver_Phi", "solver_R_w", "solver_res2"):
        arrays.pop(key)
    arrays["solver_K_nm"] = sol.K_nm_
    arrays["solver_R"] = sol.R_
    for key in ("format", "format_version", "digests"):
        meta.pop(key)
    save_model(tmp_path / "old.npz", arrays, meta)
    back = SparseGP.load(tmp_path / "old.npz")
    np.testing.assert_allclose(back.alpha_, model.alpha_, rtol=1e-8,
                               atol=1e-10 * np.abs(model.alpha_).max())
    assert back.solver_.keep_rows_


def test_memory_budget_bounds_the_fit():
    """The traced peak of a budgeted fit does not grow with the number of observations."""
    frames = cu_frames(40, seed=3, size=(2, 2, 2))  # 32 atoms: 103 rows per frame
    _model(frames[:2]).fit(frames[:2])  # warm-up (numba, caches)

    def peak(n_frames, budget):
        tracemalloc.start()
        try:
            model = _model(frames[:n_frames], n_sparse=150,
                           memory_budget_gb=budget).fit(frames[:n_frames])
            return tracemalloc.get_traced_memory()[1], 8 * model.solver_.n_obs_ * 150
        finally:
            tracemalloc.stop()

    full, rows_bytes = peak(40, None)
    half, _ = peak(20, 4e-4)
    bounded, _ = peak(40, 4e-4)  # blocks of 50 kB, rows (4.9 MB) not kept
    assert full > 2 * rows_bytes  # a one-shot fit holds the rows more than twice
    assert bounded < 0.4 * full
    # doubling the data adds the descriptors of the frames (~0.4 MB), not rows
    assert bounded - half < 0.15 * rows_bytes


def test_sparse_selection_holds_one_species_rows_at_a_time(alloy):
    """FPS per species on rows gathered frame by frame: the picks of FPS on the stacked
    rows of that species, and no stacked copy of every descriptor row is formed."""
    from gpal.selection import farthest_point_sampling

    model = _model(alloy, random_state=3).fit(alloy)
    X_list = [model.descriptor_.create(a) for a in alloy]
    numbers = [a.numbers for a in alloy]
    tracemalloc.start()
    try:
        Z, zsp = model._select_sparse(X_list, numbers, 20, "fps")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    X_all, num_all = np.concatenate(X_list), np.concatenate(numbers)
    assert peak < 0.8 * X_all.nbytes  # a stacked copy alone would be X_all.nbytes
    rng = np.random.default_rng(3)
    for z, count in model._sparse_counts(20, X_list, numbers).items():
        Xs = X_all[num_all == z]
        idx = farthest_point_sampling(Xs, count, metric="cosine", random_state=rng)
        np.testing.assert_array_equal(Z[zsp == z], Xs[np.sort(idx)])


def test_bad_memory_budget_is_rejected(alloy):
    with pytest.raises(ValueError, match="memory_budget_gb"):
        _model(alloy[:2], memory_budget_gb=-1).fit(alloy[:2])


def test_streaming_evidence_equals_in_memory(alloy):
    """hyperparameters="evidence" beyond the budget: whitened sums, then a second pass."""
    kw = dict(n_sparse=20)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        one = SparseGP(_soap(alloy[:6]), **kw).fit(alloy[:6])
        small = SparseGP(_soap(alloy[:6]), memory_budget_gb=2e-5, **kw).fit(alloy[:6])
    assert not small.solver_.keep_rows_ and one.solver_.keep_rows_
    assert small.zeta_ == one.zeta_
    for a, b in zip(small.evidence_, one.evidence_):
        # the two paths round differently, so L-BFGS stops at slightly different points
        assert a["log_marginal_likelihood"] == pytest.approx(b["log_marginal_likelihood"], rel=1e-9)
        for g in ("energy", "force", "stress"):
            # at a flat optimum: parameters agree to about the root of the value's precision
            assert a["noise"][g] == pytest.approx(b["noise"][g], rel=1e-4)
    for a in alloy[10:12]:
        p, q = small.predict(a, return_std=True), one.predict(a, return_std=True)
        assert _rel(p["forces"], q["forces"]) < 1e-8
        assert _rel(p["energies_std"], q["energies_std"]) < 1e-8


# ----------------------------------------------------------------------------- projected columns
@pytest.mark.parametrize("exact_frames", [0, 2])
def test_windowed_update_is_the_posterior_with_nystrom_rows_for_older_frames(alloy, exact_frames,
                                                                             monkeypatch):
    # reference built independently: the stored frames' rows against the old sparse set,
    # extended to the new points through the old ones (K K_mm^-1 K_m,new) for all but the
    # last `exact_frames` frames, whose columns are exact; the new frame's rows against
    # every point; one solver fitted at once
    model = _model(alloy[:5]).fit(alloy[:5])
    Z_old, zsp_old = model.sparse_X_.copy(), model.sparse_species_.copy()
    K_old = model._stacked_rows(model.frames_, Z_old, zsp_old)
    L_old = model.solver_.L_mm_.copy()  # K_mm + jitter of the old points
    first = model._frame_slices()[5 - exact_frames].start if exact_frames else None
    touched = []
    new_columns = model._new_columns
    monkeypatch.setattr(model, "_new_columns", lambda a, *r: touched.append(a) or new_columns(a, *r))
    model.update(alloy[5:6], n_sparse=4, exact_frames=exact_frames)
    assert len(touched) == exact_frames  # only the window's frames were computed
    assert model.solver_.n_projected_ == len(model.sparse_X_) - len(Z_old) == 4
    Z, zsp = model.sparse_X_, model.sparse_species_
    Znew, zspnew = Z[len(Z_old):], zsp[len(Z_old):]
    cols = K_old @ np.linalg.solve(L_old @ L_old.T, model._k_xm(Z_old, zsp_old, Znew, zspnew))
    if exact_frames:
        cols[first:] = model._stacked_rows(model.frames_[5 - exact_frames: 5], Znew, zspnew)
    rows = np.vstack([np.hstack([K_old, cols]), model._stacked_rows(model.frames_[5:], Z, zsp)])
    ref = SparseGPSolver().fit(model._k_mm(Z, zsp), rows, model.solver_.y_,
                               model.solver_.noise_std_, jitter=model.jitter)
    _assert_same_posterior(model, ref, alloy[10:12], tol=1e-7)


def test_windowed_updates_then_refit_equal_exact_updates(alloy, tmp_path):
    import gpal

    exact = _model(alloy[:4]).fit(alloy[:4])
    proj = _model(alloy[:4]).fit(alloy[:4])
    for a in alloy[4:8]:
        exact.update([a], n_sparse=3)
        proj.update([a], n_sparse=3, exact_frames=1)
    proj.add_sparse_environments(alloy[8], 2, exact_frames=1)
    exact.add_sparse_environments(alloy[8], 2)
    np.testing.assert_array_equal(proj.sparse_X_, exact.sparse_X_)
    test = alloy[10]
    f_exact = exact.predict(test)["forces"]
    # before the refit the older frames do not inform the new points: a different model
    assert np.max(np.abs(proj.predict(test)["forces"] - f_exact)) > 1e-6
    path = tmp_path / "proj.npz"
    proj.save(path)
    assert gpal.load(path).solver_.n_projected_ == proj.solver_.n_projected_ == 14
    proj.refit()
    assert proj.solver_.n_projected_ == 0
    np.testing.assert_allclose(proj.predict(test)["forces"], f_exact, rtol=0,
                               atol=1e-8 * np.abs(f_exact).max())
    # a window holding every frame is the exact update
    assert exact.solver_.n_projected_ == 0
    exact2 = _model(alloy[:4]).fit(alloy[:4]).update(alloy[4:5], n_sparse=3, exact_frames=4)
    assert exact2.solver_.n_projected_ == 0
    for bad in (-1, 1.5, "all", True):
        with pytest.raises(ValueError, match="exact_frames"):
            proj.update(alloy[8:9], n_sparse=2, exact_frames=bad)
    with pytest.raises(ValueError, match="exact_frames"):
        proj.add_sparse_environments(alloy[8], 2, exact_frames=-2)


def test_update_fits_the_reference_energy_of_a_species_first_labelled():
    """A species in the descriptor but in no energy-labelled frame has e0 = 0 until its
    first labels arrive; update then fits every e0 again (DFT-like per-atom offsets
    would otherwise be left to the GP) and the model equals a refactorisation."""
    def offset(frames):
        out = []
        for a in frames:
            b = a.copy()
            e = a.get_potential_energy() - 1000.0 * np.sum(a.numbers == 29) - 1500.0 * np.sum(a.numbers == 47)
            b.calc = SinglePointCalculator(b, energy=e, forces=a.get_forces(), stress=a.get_stress())
            out.append(b)
        return out

    cu = offset(cu_frames(3, seed=1))
    soap = SOAP(species=["Cu", "Ag"], periodic=True, weighting=POLY, **SMALL_SOAP)
    with pytest.warns(UserWarning, match="species Ag are in the descriptor but in no training frame"):
        model = SparseGP(soap, n_sparse=15, hyperparameters="fixed").fit(cu)
    assert model.e0_[47] == 0.0
    alloy = offset(cuag_frames(3, seed=2))
    model.update(alloy, n_sparse=8)
    both = cu + alloy
    fresh = SparseGP(soap, n_sparse=15, hyperparameters="fixed").fit(both)
    np.testing.assert_allclose([model.e0_[29], model.e0_[47]], [fresh.e0_[29], fresh.e0_[47]], rtol=1e-12)
    assert model.e0_[47] < -1400  # the offset, not the prior's zero
    test = offset(cuag_frames(1, seed=9))[0]
    exact = copy.deepcopy(model).refit()
    np.testing.assert_allclose(model.predict(test)["energy"], exact.predict(test)["energy"], rtol=1e-10)
    def err(m):
        return abs(m.predict(test)["energy"] - test.get_potential_energy()) / len(test)
    assert err(model) < 1.5 * err(fresh)  # as good as a fit from scratch
    # later updates with the species already seen keep the incremental path
    e0 = dict(model.e0_)
    model.update(offset(cuag_frames(1, seed=4)))
    assert model.e0_ == e0


@pytest.mark.parametrize("method", ["variance", "fps", "random"])
def test_new_sparse_points_skip_duplicates_among_themselves(method):
    """A perfect (strained) crystal has one environment: any method adds it once."""
    from ase.build import bulk

    train = cu_frames(3, seed=12)
    soap = SOAP(species=["Cu"], periodic=True, weighting=POLY, **SMALL_SOAP)
    model = SparseGP(soap, n_sparse=10, hyperparameters="fixed", random_state=0).fit(train)
    crystal = bulk("Cu", "fcc", a=3.7, cubic=True).repeat((2, 2, 2))
    crystal.calc = EMT()
    labelled = crystal.copy()
    labelled.calc = SinglePointCalculator(labelled, energy=crystal.get_potential_energy(),
                                          forces=crystal.get_forces(), stress=crystal.get_stress())
    m = len(model.sparse_X_)
    model.update([labelled], n_sparse=4, sparse_selection=method)
    assert len(model.sparse_X_) == m + 1
    assert model.add_sparse_environments(crystal, 4, sparse_selection=method) == 0


def test_species_quota_shares_like_a_fit():
    from gpal.model.sparse_set import _species_quota

    equal = np.repeat([28, 29, 46], 36)
    assert _species_quota(20, equal) == {28: 6, 29: 7, 46: 7}  # a tie gives way in species order
    # proportional, a rare species at least half an equal share, none beyond what it has
    assert _species_quota(20, np.repeat([29, 47], [100, 4])) == {29: 16, 47: 4}
    assert _species_quota(20, np.repeat([1, 8], [24, 12])) == {1: 13, 8: 7}
    assert _species_quota(20, np.repeat([1, 6, 8], [6, 2, 1])) == {1: 6, 6: 2, 8: 1}
    assert sum(_species_quota(1, equal).values()) == 1  # fewer points than species
    assert _species_quota(0, equal) == {}


def _cunipd(n, seed):
    """``n`` rattled 32-atom Cu16Ni8Pd8 cells labelled by EMT."""
    from ase.build import bulk

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a = bulk("Cu", "fcc", a=3.67, cubic=True).repeat(2)
        a.numbers = rng.permutation(np.repeat([29, 28, 46], [16, 8, 8]))
        a.positions += rng.normal(0, 0.1, a.positions.shape)
        a.calc = EMT()
        b = a.copy()
        b.calc = SinglePointCalculator(b, energy=a.get_potential_energy(), forces=a.get_forces(),
                                       stress=a.get_stress())
        out.append(b)
    return out


@pytest.mark.parametrize("method", ["variance", "fps"])
def test_update_shares_new_sparse_points_among_species(method):
    """Each species gets at least half of its share in a fit of a label's new sparse points
    (Cu 10, Ni 5, Pd 5 of 20 for Cu16Ni8Pd8: at least 5, 3, 3), whatever the variances of
    the other species say, and within a species the method's order decides."""
    frames = _cunipd(3, seed=3)
    model = SparseGP(_soap(frames), NormalizedDotProduct(zeta=2), n_sparse=12,
                     hyperparameters="fixed", random_state=0).fit(frames[:2])
    m = len(model.sparse_X_)
    model.update(frames[2:], n_sparse=20, sparse_selection=method)
    new = model.sparse_species_[m:]
    assert len(new) == 20
    assert {z: int(np.count_nonzero(new == z)) >= k for z, k in ((29, 5), (28, 3), (46, 3))} == \
        {29: True, 28: True, 46: True}


@pytest.mark.parametrize("method", ["variance", "random"])
def test_species_minimum_changes_nothing_where_no_species_is_starved(method):
    """Where one order already takes every environment (a small molecule's label, n_new >=
    atoms) or there is one species, the species minimum adds the same points in the same
    order: the model is the one the single order gave. ("fps" by species runs each
    species' own farthest-first order, not the one over all species.)"""
    frames = _cunipd(3, seed=4)
    model = SparseGP(_soap(frames), NormalizedDotProduct(zeta=2), n_sparse=12,
                     hyperparameters="fixed", random_state=0).fit(frames[:2])
    for n_new in (32, 40):  # every environment of the 32-atom frame
        Z1, z1 = model._choose_new_sparse(frames[2:], n_new, method, by_species=True)
        Z0, z0 = model._choose_new_sparse(frames[2:], n_new, method, by_species=False)
        np.testing.assert_array_equal(z1, z0)
        np.testing.assert_array_equal(Z1, Z0)
    cu = cu_frames(3, seed=12)
    one = SparseGP(_soap(cu), NormalizedDotProduct(zeta=2), n_sparse=6, hyperparameters="fixed",
                   random_state=0).fit(cu[:2])
    Z1, _ = one._choose_new_sparse(cu[2:], 5, method, by_species=True)
    Z0, _ = one._choose_new_sparse(cu[2:], 5, method, by_species=False)
    np.testing.assert_array_equal(Z1, Z0)
