"""compare_kernels: a table and a learning-curve plot from a few fits."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import gpal
from gpal import SOAP, NormalizedDotProduct, SparseGP, SquaredExponential, compare_kernels
from gpal.compare import Candidate, ComparisonTable

from conftest import POLY, SMALL_SOAP, cu_frames


def test_compare_kernels_table_and_plot(tmp_path):
    train = cu_frames(6, seed=1)
    test = cu_frames(2, seed=2)
    cands = [
        Candidate("dot ζ=2", NormalizedDotProduct(zeta=2), dict(SMALL_SOAP)),
        Candidate("SE", SquaredExponential(length_scale=0.5), dict(SMALL_SOAP)),
    ]
    png = tmp_path / "curves.png"
    seen = []
    table = compare_kernels(train, test, cands, n_sparse=30, sizes=(0.5, 1.0), plot=str(png), progress=False,
                            on_row=lambda row: seen.append((row["name"], len(seen))))
    assert seen == [("dot ζ=2", 0), ("SE", 1)]  # one call per candidate, as each finishes
    text = str(table)
    widths = ComparisonTable.column_widths(table.rows)
    assert text.splitlines()[2:] == [ComparisonTable.format_row(r, widths) for r in table.rows]
    assert "dot ζ=2" in text and "F RMSE" in text
    assert "<table>" in table._repr_html_()
    assert len(table.rows) == 2 and all(r["force_rmse"] > 0 for r in table.rows)
    n, err = table.curves["SE"]
    assert list(n) == [3, 6]
    assert png.stat().st_size > 1000
    assert table.best()["name"] in ("dot ζ=2", "SE")


def test_select_kernel_by_evidence_picks_the_largest_evidence():
    train = cu_frames(6, seed=11)
    desc = SOAP(species=[29], periodic=True, weighting=POLY, **SMALL_SOAP)
    template = SparseGP(desc, n_sparse=20, random_state=0)
    kernels = [NormalizedDotProduct(zeta=z) for z in (1, 2, 4)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zeta=1 may sit at its signal-variance bound
        sel = gpal.select_kernel_by_evidence(template, train, kernels)
    lml = [r["log_marginal_likelihood"] for r in sel.rows]
    assert len(lml) == 3 and sel.best_index == int(np.argmax(lml))
    assert sel.model.kernel_.zeta == kernels[sel.best_index].zeta
    # each evidence is what an independent fit + optimisation of that kernel gives
    for z, value in zip((1, 2, 4), lml):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = SparseGP(desc, NormalizedDotProduct(zeta=z), n_sparse=20, random_state=0).fit(train)
            m.optimize_hyperparameters()
        assert m.log_marginal_likelihood() == pytest.approx(value, rel=1e-9, abs=1e-6)
    # no other choice beats the winner
    assert sel.model.log_marginal_likelihood() == pytest.approx(max(lml))
    assert not hasattr(template, "kernel_")  # the template is not fitted
    # the winner is its parameters: a clone refitted has its optimised kernel (it had the
    # candidate's starting signal variance, and 4671 against 4977 log evidence on a bulk set)
    from sklearn.base import clone

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = clone(sel.model).fit(train)
    assert again.kernel_.signal_variance == pytest.approx(sel.model.kernel_.signal_variance, rel=1e-12)
    assert again.log_marginal_likelihood() == pytest.approx(sel.model.log_marginal_likelihood(), rel=1e-6)
    # fit's table of candidates described the model before its optimisation: gpal info and
    # the saved file showed a signal variance 1 and another evidence as the model's
    assert sel.model.evidence_ is None
    assert "log evidence" in str(sel)
    # a template that gives noises: the optimised ones become the winner's parameters too
    # (a clone had been refitted with the template's 0.05 eV/Å where the winner held 0.09)
    given = SparseGP(desc, n_sparse=20, random_state=0, energy_noise=0.01, force_noise=0.5, stress_noise=0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sel = gpal.select_kernel_by_evidence(given, train, [NormalizedDotProduct(zeta=2)])
        again = clone(sel.model).fit(train)
    assert sel.model.noise_["force"] < 0.25  # (moved far from the given 0.5)
    for group, value in sel.model.noise_.items():
        assert getattr(sel.model, f"{group}_noise") == value
        assert again.noise_[group] == pytest.approx(value, rel=1e-12)
    assert again.log_marginal_likelihood() == pytest.approx(sel.model.log_marginal_likelihood(), rel=1e-7)
    assert given.force_noise == 0.5  # (the template is not changed)


def test_select_kernel_by_evidence_warns_at_a_bound_and_rejects_bad_input():
    train = cu_frames(3, seed=12)
    desc = SOAP(species=[29], periodic=True, weighting=POLY, **SMALL_SOAP)
    tight = NormalizedDotProduct(zeta=2, signal_variance=1.0, signal_variance_bounds=(1.0, 1.0 + 1e-6))
    with pytest.warns(UserWarning, match="at a bound"):
        sel = gpal.select_kernel_by_evidence(SparseGP(desc, n_sparse=10), train, [tight],
                                             optimize_noise=False)
    assert sel.rows[0]["at_bound"] == ["signal_variance"]
    with pytest.raises(ValueError, match="empty"):
        gpal.select_kernel_by_evidence(SparseGP(desc), train, [])
    with pytest.raises(TypeError):
        gpal.select_kernel_by_evidence(object(), train)


def test_compare_kernels_checks_its_arguments_before_fitting():
    train = cu_frames(3, seed=12)
    unlabelled = [a.copy() for a in train]
    for a in unlabelled:
        a.calc = None
    with pytest.raises(ValueError, match="candidates is empty"):
        gpal.compare_kernels(train, train, candidates=[], progress=False, plot=None)
    with pytest.raises(gpal.MissingLabelsError, match="test"):
        gpal.compare_kernels(train, unlabelled, progress=False, plot=None)
    from ase.calculators.singlepoint import SinglePointCalculator

    energy_only = [a.copy() for a in train]
    for a, b in zip(energy_only, train):
        a.calc = SinglePointCalculator(a, energy=b.get_potential_energy())
    with pytest.raises(ValueError, match="no test frame has force labels"):
        gpal.compare_kernels(train, energy_only, progress=False, plot=None)
    with pytest.raises(ValueError, match=r"sizes must be fractions"):
        gpal.compare_kernels(train, train, sizes=(0.0, 1.0), progress=False, plot=None)
    with pytest.raises(TypeError, match=r"kernels\[0\] is not a gpal kernel"):
        gpal.select_kernel_by_evidence(SparseGP(n_sparse=10), train, ["foo"])


def test_select_kernel_by_evidence_chooses_each_candidates_soap_as_fit_does():
    """Without a descriptor each ζ gets the SOAP a default fit would choose for it, with
    its signal variance free while choosing: the best row is the default fit's choice,
    and a candidate's starting signal variance changes nothing (at a fixed 1e-4 or 1e4
    the SOAP search picked l_max 6 or sigma 0.5 and a lower evidence)."""
    frames = cu_frames(12, seed=31)
    sel = gpal.select_kernel_by_evidence(SparseGP(n_sparse=30), frames,
                                         [gpal.NormalizedDotProduct(zeta=z) for z in (2, 3, 4)])
    ref = SparseGP(n_sparse=30).fit(frames)
    ref.optimize_hyperparameters()
    best = sel.rows[sel.best_index]
    assert (sel.model.zeta_, best["l_max"], best["sigma"]) == (ref.zeta_, ref.descriptor_.l_max, ref.descriptor_.sigma)
    assert best["log_marginal_likelihood"] == pytest.approx(float(ref.log_marginal_likelihood()), rel=1e-8)
    start = gpal.select_kernel_by_evidence(SparseGP(n_sparse=30), frames, [
        gpal.NormalizedDotProduct(zeta=2, signal_variance=s) for s in (1e-4, 1.0, 1e4)])
    assert len({(r["l_max"], r["sigma"], round(r["log_marginal_likelihood"], 6)) for r in start.rows}) == 1


def test_test_frames_with_a_species_no_training_frame_has_are_refused():
    """It scored Au at the prior (force z² 2e5) and named a winner; gpal validate refuses the same."""
    from conftest import cu_frames, cuag_frames

    from gpal.exceptions import UnknownSpeciesError

    with pytest.raises(UnknownSpeciesError, match=r"the test frames hold Ag \(Z=47\), which no training frame has \(the training frames hold Cu\)"):
        compare_kernels(cu_frames(3), cuag_frames(2), progress=False)


def test_a_fit_warning_names_its_candidate(monkeypatch):
    """'signal_variance = 1e+03 (at its upper bound)' did not say of which candidate."""
    import gpal.compare

    real = gpal.compare.SparseGP.fit

    def fit(self, frames, *args, **kwargs):
        warnings.warn("a bound was reached", UserWarning)
        return real(self, frames, *args, **kwargs)

    monkeypatch.setattr(gpal.compare.SparseGP, "fit", fit)
    cand = Candidate("dot ζ=2", NormalizedDotProduct(zeta=2), dict(SMALL_SOAP))
    with pytest.warns(UserWarning, match=r"^dot ζ=2 \(3 frames\): a bound was reached$"):
        compare_kernels(cu_frames(3), cu_frames(2, seed=5), [cand], n_sparse=20, sizes=(1.0,), progress=False)


def test_the_evidence_winner_remembers_its_zeta():
    """A winner whose SOAP was chosen as fit chooses it (no descriptor given) keeps its ζ
    as its kernel parameter: get_params, clone + fit and select_hyperparameters keep it."""
    from sklearn.base import clone

    train = cu_frames(4, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sel = gpal.select_kernel_by_evidence(SparseGP(n_sparse=10, random_state=0), train,
                                             [NormalizedDotProduct(zeta=1), NormalizedDotProduct(zeta=6)])
        w = sel.model
        z = w.zeta_
        assert z in (1, 6) and w.get_params()["kernel"].zeta == z
        assert w.select_hyperparameters().zeta_ == z
        assert clone(w).fit(train).zeta_ == z


def test_fractions_that_round_to_the_same_size_are_one_fit(tmp_path):
    """With one training frame the three default fractions were three fits of it, drawn
    as three points on top of each other."""
    from conftest import cu_frames

    frames = cu_frames(3, seed=2)
    cand = [gpal.compare.Candidate("dot ζ=2", gpal.NormalizedDotProduct(zeta=2),
                                   dict(r_cut=4.0, n_max=3, l_max=2, sigma=0.5))]
    table = gpal.compare_kernels(frames[:1], frames[1:], cand, n_sparse=10, optimize=False, progress=False,
                                 plot=str(tmp_path / "curve.png"))
    n, err = table.curves["dot ζ=2"]
    assert n.tolist() == [1] and len(err) == 1
    assert gpal.calibration.is_gpal_plot(tmp_path / "curve.png")


def test_compare_kernels_refuses_candidates_it_cannot_tell_apart_or_build():
    """Two candidates of one name (the second's learning curve had replaced the first's
    without a word), and SOAP settings that fail: one-line ValueErrors naming the
    candidate, before any fit (a bare KeyError 'r_cut', or SOAP's 'multiple values for
    keyword argument species')."""
    train, test = cu_frames(3, seed=1), cu_frames(1, seed=2)
    dot = NormalizedDotProduct(zeta=2)
    bad = [
        ([Candidate("x", dot, dict(SMALL_SOAP)), Candidate("x", NormalizedDotProduct(zeta=1), dict(SMALL_SOAP))],
         "names must differ: 'x'"),
        ([Candidate("a", dot, {"n_max": 3, "l_max": 2})], "candidate 'a': soap needs r_cut"),
        ([Candidate("a", dot, {**SMALL_SOAP, "species": ["Cu"]})], "candidate 'a': soap sets species"),
        ([Candidate("a", dot, {**SMALL_SOAP, "periodic": False})], "candidate 'a': soap sets periodic"),
        ([Candidate("a", dot, {**SMALL_SOAP, "l_max": -1})], "candidate 'a': l_max cannot be negative"),
        ([Candidate("a", dot, {**SMALL_SOAP, "nmax": 3})], "candidate 'a':.*nmax"),
        ([Candidate("a", dot, [("r_cut", 4.0)])], "candidate 'a': soap must be a dict"),
    ]
    for cands, match in bad:
        with pytest.raises(ValueError, match=match):
            compare_kernels(train, test, cands, n_sparse=10, progress=False)
    # a weighting that implies the cutoff is enough
    table = compare_kernels(train, test, [Candidate("w", dot, {"n_max": 3, "l_max": 2, "weighting": POLY})],
                            n_sparse=10, sizes=(1.0,), optimize=False, progress=False)
    assert len(table.rows) == 1
