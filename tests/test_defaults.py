"""The default SparseGP chooses ζ, signal variance and unset noises by the evidence."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from gpal import SOAP, SparseGP
from gpal.kernels import NormalizedDotProduct
from gpal.model import DEFAULT_NOISE, NOISE_BOUNDS, ZETA_CANDIDATES

from conftest import POLY, SMALL_SOAP, cuag_frames


def soap_for(frames):
    species = sorted({int(z) for a in frames for z in a.numbers})
    return SOAP(species=species, periodic=True, weighting=POLY, **SMALL_SOAP)


def quiet_fit(model, frames):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return model.fit(frames)


@pytest.fixture(scope="module", autouse=True)
def _descriptor_search_from_one_frame():
    """This module's systems are small: the default fit's descriptor search from 1 frame on
    (gpal's own threshold, ``_MIN_FRAMES_DESCRIPTOR_SEARCH``, is tested on its own below)."""
    import gpal.model.potential as potential

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(potential, "_MIN_FRAMES_DESCRIPTOR_SEARCH", 1)
        yield


@pytest.fixture(scope="module")
def frames():
    return cuag_frames(6, seed=2)


def test_few_frames_keep_the_default_soap_width_and_rank_on_all_frames(frames, monkeypatch):
    """Under the threshold (e.g. a learner's bootstrap) only ζ and l_max are chosen, on all frames."""
    import gpal.model.potential as potential
    from gpal.model import default_descriptor

    monkeypatch.setattr(potential, "_MIN_FRAMES_DESCRIPTOR_SEARCH", len(frames) + 1)
    model = quiet_fit(SparseGP(n_sparse=30), frames)
    sigma0 = default_descriptor(frames).sigma
    assert {r["sigma"] for r in model.evidence_} == {sigma0}
    assert model.descriptor_.sigma == sigma0
    assert {r["n_frames"] for r in model.evidence_} == {len(frames)}
    monkeypatch.setattr(potential, "_MIN_FRAMES_DESCRIPTOR_SEARCH", len(frames))
    searched = quiet_fit(SparseGP(n_sparse=30), frames)
    assert len({r["sigma"] for r in searched.evidence_}) > 1


@pytest.fixture(scope="module")
def default_model(frames):
    return quiet_fit(SparseGP(soap_for(frames), n_sparse=30), frames)


def _rank_frames(frames, table):
    """The evenly spaced frames the candidates were ranked on."""
    n_rank = min(r["n_frames"] for r in table)
    idx = np.unique(np.round(np.linspace(0, len(frames) - 1, n_rank)).astype(int))
    assert len(idx) == n_rank
    return [frames[k] for k in idx]


def _ranked(row):
    return row.get("ranking_log_marginal_likelihood", row["log_marginal_likelihood"])


def test_default_picks_the_zeta_with_the_largest_evidence(frames, default_model):
    model = default_model
    assert [r["zeta"] for r in model.evidence_] == list(ZETA_CANDIDATES)
    rank_frames = _rank_frames(frames, model.evidence_)
    assert len(rank_frames) < len(frames)  # ranked on some frames, the winner fitted to all

    def optimum(z, train):
        ref = SparseGP(soap_for(frames), NormalizedDotProduct(zeta=z), n_sparse=30,
                       hyperparameters="fixed").fit(frames)
        if len(train) < len(frames):  # the same sparse environments, fewer labels
            sub = SparseGP(soap_for(frames), NormalizedDotProduct(zeta=z), n_sparse=30,
                           hyperparameters="fixed").fit(train)
            sub.sparse_X_, sub.sparse_species_ = ref.sparse_X_, ref.sparse_species_
            sub._fit_solver(sub._k_mm(ref.sparse_X_, ref.sparse_species_))
            ref = sub
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            ref.optimize_hyperparameters(optimize_noise=True)
        return ref.log_marginal_likelihood_value_

    explicit = {z: optimum(z, rank_frames) for z in ZETA_CANDIDATES}
    best = max(explicit, key=explicit.get)
    assert model.zeta_ == best
    assert model.kernel_.zeta == best
    for row in model.evidence_:
        # the same maximum as the general optimiser (QR, all groups free)
        assert _ranked(row) == pytest.approx(explicit[row["zeta"]], abs=0.05)
        assert row["selected"] == (row["zeta"] == best)
    # the stored value is the evidence of the fitted model itself, on all frames
    assert model.log_marginal_likelihood() == pytest.approx(model.log_marginal_likelihood_value_)
    assert model.log_marginal_likelihood_value_ == pytest.approx(optimum(best, frames), abs=0.05)
    # noises and signal variance were chosen, within their ranges
    assert model.kernel_.signal_variance != 1.0
    for g, (lo, hi) in NOISE_BOUNDS.items():
        assert lo * (1 - 1e-9) <= model.noise_[g] <= hi * (1 + 1e-9)
    assert model.noise_["force"] != DEFAULT_NOISE["force"]


def test_multi_zeta_rows_equal_single_kernel_rows(frames, default_model):
    model = default_model
    a = frames[1]
    kernels = [NormalizedDotProduct(zeta=z, signal_variance=1.7) for z in (1, 2, 5)]
    rows = model._rows_for_kernels(a, model.sparse_X_, model.sparse_species_,
                                   model.descriptor_.derivatives(a), kernels)
    for k, out in zip(kernels, rows):
        ref = model._derivative_rows(a, model.sparse_X_, model.sparse_species_, kernel=k)
        for x, y in zip(out, ref):
            np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-13)


def test_a_value_the_user_sets_is_kept(frames):
    desc = soap_for(frames)
    model = quiet_fit(SparseGP(desc, NormalizedDotProduct(zeta=4), n_sparse=30), frames)
    assert model.zeta_ == 4
    assert model.kernel_.signal_variance == 1.0  # the given kernel is used as given
    assert [r["zeta"] for r in model.evidence_] == [4]
    assert model.noise_["force"] != DEFAULT_NOISE["force"]  # noises left unset: chosen
    model = quiet_fit(SparseGP(desc, n_sparse=30, force_noise=0.07), frames)
    assert model.noise_["force"] == 0.07
    # exactly as given, not through exp(log(x)), which is off in the last bit for many x
    # (and for others on other numpy versions)
    off = [x for x in (0.07, 0.011, 0.013, 0.029, 0.031, 0.057) if np.exp(np.log(x)) != x]
    assert off  # the case the test is about exists on this numpy
    for x in off[:2]:
        assert quiet_fit(SparseGP(desc, n_sparse=30, force_noise=x), frames).noise_["force"] == x
    assert model.noise_["energy"] != DEFAULT_NOISE["energy"]
    # everything given: nothing is chosen, exactly the fixed model
    given = dict(kernel=NormalizedDotProduct(zeta=3), energy_noise=0.003, force_noise=0.04,
                 stress_noise=0.004, n_sparse=30)
    a = SparseGP(desc, **given).fit(frames)
    b = SparseGP(desc, hyperparameters="fixed", **given).fit(frames)
    assert a.evidence_ is None
    np.testing.assert_array_equal(a.alpha_, b.alpha_)


def test_fixed_mode_is_the_earlier_default(frames):
    model = SparseGP(soap_for(frames), n_sparse=30, hyperparameters="fixed").fit(frames)
    assert model.zeta_ == 4 and model.kernel_.signal_variance == 1.0
    assert model.noise_ == DEFAULT_NOISE
    assert model.evidence_ is None
    with pytest.raises(ValueError, match="hyperparameters"):
        SparseGP(soap_for(frames), hyperparameters="auto").fit(frames)


def test_a_noise_at_its_upper_bound_warns_with_its_name_and_its_floor_does_not(frames):
    # EMT is deterministic: the evidence drives the energy noise to its floor, which is
    # what gpal's lower noise bounds are for (no warning: every EMT or DFT fit would give one)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        model = SparseGP(soap_for(frames), n_sparse=30).fit(frames)
    assert model.noise_["energy"] == pytest.approx(NOISE_BOUNDS["energy"][0])
    model = SparseGP(soap_for(frames), NormalizedDotProduct(zeta=2), n_sparse=30,
                     hyperparameters="fixed").fit(frames)
    with pytest.warns(UserWarning, match=r"force_noise = 1e-05 eV/Å \(at its upper bound"):
        model.optimize_hyperparameters(optimize_noise=True, noise_bounds=(1e-6, 1e-5))
    # nothing at a bound: no warning
    model = SparseGP(soap_for(frames), NormalizedDotProduct(zeta=2), n_sparse=30,
                     energy_noise=0.002, hyperparameters="evidence").fit(frames)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        model.optimize_hyperparameters(optimize_noise=False)


def test_save_load_keeps_the_choice(tmp_path, frames, default_model):
    path = default_model.save(tmp_path / "m.npz")
    loaded = SparseGP.load(path)
    assert loaded.zeta_ == default_model.zeta_
    assert loaded.evidence_ == default_model.evidence_
    assert loaded.noise_ == default_model.noise_
    assert loaded.kernel is None and loaded.energy_noise is None  # still free to re-choose
    assert loaded.hyperparameters == "evidence"
    assert loaded.log_marginal_likelihood_value_ == default_model.log_marginal_likelihood_value_
    assert "chosen by evidence" in repr(loaded)
    np.testing.assert_array_equal(loaded.predict(frames[0])["forces"],
                                  default_model.predict(frames[0])["forces"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        loaded.select_hyperparameters()
    assert loaded.zeta_ == default_model.zeta_
    # the same maximum, to the optimiser's tolerance (1e-6 relative change of the evidence)
    assert loaded.log_marginal_likelihood_value_ == pytest.approx(
        default_model.log_marginal_likelihood_value_, rel=1e-6)


def test_select_hyperparameters_after_update(frames):
    model = quiet_fit(SparseGP(soap_for(frames), n_sparse=30), frames[:3])
    model.update(frames[3:])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model.select_hyperparameters(zetas=(1, 2))
    assert [r["zeta"] for r in model.evidence_] == [1, 2]
    best = max(model.evidence_, key=_ranked)
    assert best["selected"] and model.zeta_ == best["zeta"]
    assert model.log_marginal_likelihood() == pytest.approx(best["log_marginal_likelihood"])
    assert len(model.obs_frame_) == len(model.solver_.y_)
    assert model.obs_frame_.max() == len(frames) - 1
    # nothing free: unchanged
    fixed = SparseGP(soap_for(frames), NormalizedDotProduct(zeta=2), energy_noise=0.002,
                     force_noise=0.05, stress_noise=0.005, n_sparse=30).fit(frames)
    alpha = fixed.alpha_.copy()
    fixed.select_hyperparameters()
    np.testing.assert_array_equal(fixed.alpha_, alpha)


def test_params_clone_and_repr():
    from sklearn.base import clone

    model = SparseGP(force_noise=0.1, n_sparse=50)
    params = clone(model).get_params()
    assert params["hyperparameters"] == "evidence"
    assert params["force_noise"] == 0.1 and params["energy_noise"] is None
    assert "kernel=auto" in repr(model) and "energy_noise=auto" in repr(model)
    model.set_params(hyperparameters="fixed")
    assert "kernel=None" in repr(model) and "energy_noise=0.002" in repr(model)


def test_smaller_l_max_is_a_feature_subset_and_chosen_by_evidence(frames):
    from gpal.model import L_MAX_CANDIDATES, default_descriptor
    from gpal.model.evidence import _l_max_subset

    full = default_descriptor(frames)
    small = SOAP(**{**full.get_params(), "l_max": 3})
    cols = _l_max_subset(full, 3)
    np.testing.assert_array_equal(full.create(frames[0])[:, cols], small.create(frames[0]))
    np.testing.assert_array_equal(full.derivatives(frames[0]).dX[:, :, cols],
                                  small.derivatives(frames[0]).dX)
    model = quiet_fit(SparseGP(n_sparse=30), frames)
    table = model.evidence_
    assert sorted({r["l_max"] for r in table}) == sorted(L_MAX_CANDIDATES)
    best = max(table, key=_ranked)
    assert best["selected"]
    assert model.descriptor_.l_max == best["l_max"] and model.zeta_ == best["zeta"]
    # the chosen model is the one an explicit fit with that SOAP on those sparse points gives
    assert model.sparse_X_.shape[1] == model.descriptor_.get_number_of_features()
    assert model.log_marginal_likelihood() == pytest.approx(best["log_marginal_likelihood"])
    # a given descriptor is kept
    given = quiet_fit(SparseGP(full, n_sparse=30), frames)
    assert given.descriptor_.l_max == full.l_max
    assert {r["l_max"] for r in given.evidence_} == {full.l_max}


# ----------------------------------------------------------------------------- SOAP width
@pytest.fixture(scope="module")
def auto_model(frames):
    return quiet_fit(SparseGP(n_sparse=30), frames)


def test_default_chooses_sigma_by_evidence_as_an_independent_fit_would(frames, auto_model):
    """Each candidate's maximised evidence, recomputed with the general optimiser (QR).

    The candidates are ranked on evenly spaced frames (here fewer than all) on the
    sparse environments chosen with the default SOAP, each described by the
    candidate's SOAP; the chosen one has the largest of these evidences.
    """
    from gpal.model import SIGMA_CANDIDATES, SIGNAL_VARIANCE_BOUNDS, default_descriptor

    model, table = auto_model, auto_model.evidence_
    assert {r["sigma"] for r in table} == set(SIGMA_CANDIDATES)
    n_rank = min(r["n_frames"] for r in table)
    assert n_rank < len(frames)  # this system is ranked on a subset
    idx = np.unique(np.round(np.linspace(0, len(frames) - 1, n_rank)).astype(int))
    assert len(idx) == n_rank
    rank_frames = [frames[k] for k in idx]
    # the sparse environments: farthest points in the default SOAP over all frames
    base = SparseGP(n_sparse=30, hyperparameters="fixed").fit(frames)
    X_all = np.concatenate([base.descriptor_.create(a) for a in frames])
    hit = [np.flatnonzero(np.all(np.isclose(X_all, z, rtol=0, atol=1e-12), axis=1))[0]
           for z in base.sparse_X_]
    values = []
    for row in table:
        soap = SOAP(**{**default_descriptor(frames).get_params(), "sigma": row["sigma"],
                       "l_max": row["l_max"]})
        Z = np.concatenate([soap.create(a) for a in frames])[hit]
        kernel = NormalizedDotProduct(zeta=row["zeta"], signal_variance_bounds=SIGNAL_VARIANCE_BOUNDS)
        ref = SparseGP(soap, kernel, n_sparse=30, hyperparameters="fixed").fit(rank_frames)
        ref.sparse_X_, ref.sparse_species_ = Z, base.sparse_species_
        ref._fit_solver(ref._k_mm(Z, base.sparse_species_))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            ref.optimize_hyperparameters(n_restarts=1)
        ranked = row.get("ranking_log_marginal_likelihood", row["log_marginal_likelihood"])
        # with 4 energy labels the evidence is flat and two-humped in the energy noise
        # (1e-4 or ~0.05 eV/atom within 0.1 of each other): agree to 0.15
        assert ranked == pytest.approx(ref.log_marginal_likelihood_value_, abs=0.15)
        values.append(ref.log_marginal_likelihood_value_)
    best = int(np.argmax(values))
    assert [r["selected"] for r in table] == [k == best for k in range(len(table))]
    chosen = table[best]
    assert model.descriptor_.sigma == chosen["sigma"] and model.descriptor_.l_max == chosen["l_max"]
    assert model.zeta_ == chosen["zeta"]


def test_the_chosen_model_is_the_one_its_soap_gives_on_all_frames(frames, auto_model):
    """Sparse set picked in the chosen SOAP; noises and variance maximised on all frames."""
    from gpal.model import SIGNAL_VARIANCE_BOUNDS

    model = auto_model
    chosen = SOAP(**model.descriptor_.get_params())
    ref = SparseGP(chosen, n_sparse=30, hyperparameters="fixed").fit(frames)
    np.testing.assert_allclose(model.sparse_X_, ref.sparse_X_, rtol=1e-9, atol=1e-10)
    kernel = NormalizedDotProduct(zeta=model.zeta_, signal_variance_bounds=SIGNAL_VARIANCE_BOUNDS)
    ref = SparseGP(chosen, kernel, n_sparse=30, hyperparameters="fixed").fit(frames)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        ref.optimize_hyperparameters(n_restarts=1)
    assert model.log_marginal_likelihood_value_ == pytest.approx(ref.log_marginal_likelihood_value_,
                                                                 abs=0.05)
    assert model.log_marginal_likelihood() == pytest.approx(model.log_marginal_likelihood_value_)
    row = next(r for r in model.evidence_ if r["selected"])
    assert row["n_frames"] == len(frames)
    assert row["log_marginal_likelihood"] == pytest.approx(model.log_marginal_likelihood_value_)
    assert "sigma=" in repr(model)


def test_a_given_descriptor_keeps_its_sigma(frames):
    desc = soap_for(frames)
    model = quiet_fit(SparseGP(desc, n_sparse=30), frames)
    assert model.descriptor_ is not desc and model.descriptor_.get_params() == desc.get_params()
    assert {r["sigma"] for r in model.evidence_} == {desc.sigma}
    e = model.predict(frames[0])["energy"]
    desc.set_params(r_cut=3.0)  # the user's object changes after the fit: the model does not
    model.set_params(descriptor__sigma=0.7)
    assert model.predict(frames[0])["energy"] == e
    model = quiet_fit(SparseGP(n_sparse=30, hyperparameters="fixed"), frames)
    assert model.descriptor_.sigma == 0.5 and model.descriptor_.l_max == 6


def test_batched_rows_of_molecules_equal_per_frame_rows():
    from ase.build import molecule

    from gpal.model.evidence import _l_max_subset

    rng = np.random.default_rng(4)
    mols = []
    for name in ("CH3CH2OH", "CH3OH", "H2O"):  # species blocks contiguous or not
        a = molecule(name)
        a.positions += rng.normal(0, 0.05, a.positions.shape)
        mols.append(a)
    mols[0].set_chemical_symbols(mols[0].get_chemical_symbols()[::-1])  # interleave species
    soap = SOAP(species=["H", "C", "O"], r_cut=4.0, n_max=3, l_max=4, sigma=0.4,
                weighting={"function": "poly", "r0": 4.0, "c": 1, "m": 1})
    X = np.concatenate([soap.create(a) for a in mols])
    numbers = np.concatenate([a.numbers for a in mols])
    zsp = numbers[::2]
    model = SparseGP(soap)
    for cols in (None, _l_max_subset(soap, 2)):
        Z = X[::2] if cols is None else X[::2][:, cols]
        small = soap if cols is None else SOAP(**{**soap.get_params(), "l_max": 2})
        kernels = [NormalizedDotProduct(zeta=z, signal_variance=1.3) for z in (2, 5)]
        rows = model._rows_for_batch(mols, Z, zsp, [soap.derivatives(a) for a in mols], kernels, cols)
        for a, per_kernel in zip(mols, rows):
            for k, out in zip(kernels, per_kernel):
                ref = model._derivative_rows(a, Z, zsp, derivs=small.derivatives(a), kernel=k)
                for x, y in zip(out, ref):
                    np.testing.assert_allclose(x, y, rtol=1e-10, atol=1e-12)


def test_the_evidence_search_never_forms_a_periodic_frames_whole_derivatives(monkeypatch):
    """The default fit's candidates took each periodic frame's whole pair derivatives
    (2.9 GB for a 500-atom cell of 5 species, 6.1 GB peak for a 2-frame fit); they now
    go through the descriptor's derivative blocks, to the same model."""
    from conftest import cuag_frames

    import gpal
    from gpal.descriptors import SOAP

    frames = cuag_frames(4)
    assert all(a.pbc.all() for a in frames)
    ref = gpal.SparseGP(n_sparse=60).fit(frames).predict(frames[0])

    def whole(self, atoms, *a, **k):
        raise AssertionError("whole-frame derivatives formed")

    monkeypatch.setattr(SOAP, "derivatives", whole)
    got = gpal.SparseGP(n_sparse=60).fit(frames).predict(frames[0])
    assert got["energy"] == pytest.approx(ref["energy"], rel=1e-9)
    np.testing.assert_allclose(got["forces"], ref["forces"], rtol=1e-7, atol=1e-9)
