"""Tests for gpal.calibration on seeded synthetic Gaussian data.

Every metric is checked against a reference formula written out plainly in this file.
"""

import json
import math

import numpy as np
import pytest
from scipy import optimize, stats

from gpal.calibration import (
    Calibration,
    TwoTermCalibrator,
    Decision,
    SplitConformal,
    StdCalibrator,
    StoppingRule,
    binned_rmse_rmv,
    calibration_curve,
    energy_metrics,
    force_metrics,
    plot_calibration_curve,
    plot_error_vs_uncertainty,
    plot_learning_curve,
    plot_parity,
    plot_z_histogram,
    uncertainty_metrics,
)
from gpal.exceptions import NotFittedError


def gaussian_data(n, seed=0, factor=1.0):
    """Reported std in [0.1, 1]; the true error std is ``factor`` times it."""
    rng = np.random.default_rng(seed)
    std = rng.uniform(0.1, 1.0, n)
    error = rng.normal(size=n) * std * factor
    return error, std


# --------------------------------------------------------------------------------------
# reference formulas
# --------------------------------------------------------------------------------------
def ref_nll(e, s):
    return np.mean(
        [
            0.5 * math.log(2 * math.pi * si**2) + ei**2 / (2 * si**2)
            for ei, si in zip(e, s)
        ]
    )


def ref_spearman(a, b):
    """Pearson correlation of the ranks (average ranks for ties)."""
    ra, rb = stats.rankdata(a), stats.rankdata(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / math.sqrt((ra**2).sum() * (rb**2).sum()))


def ref_bins(e, s, n_bins):
    """Sort by std; consecutive bins of n//n_bins (+1 for the first n % n_bins)."""
    order = np.argsort(s, kind="stable")
    n = len(e)
    sizes = [n // n_bins + (1 if b < n % n_bins else 0) for b in range(n_bins)]
    rmv, rmse, start = [], [], 0
    for size in sizes:
        idx = order[start : start + size]
        start += size
        rmv.append(math.sqrt(np.mean(s[idx] ** 2)))
        rmse.append(math.sqrt(np.mean(e[idx] ** 2)))
    return np.array(rmv), np.array(rmse), np.array(sizes)


def ref_ence(e, s, n_bins):
    rmv, rmse, _ = ref_bins(e, s, n_bins)
    return np.mean(np.abs(rmv - rmse) / rmv)


def ref_miscalibration_area(e, s):
    """∫_{0.01}^{0.99} |observed(p) - p| dp on a fine grid (observed interpolated)."""
    levels = np.linspace(0.01, 0.99, 100)
    absz = np.abs(e / s)
    observed = np.array([np.mean(absz <= stats.norm.ppf(0.5 + p / 2)) for p in levels])
    fine = np.linspace(0.01, 0.99, 200_001)
    gap = np.abs(np.interp(fine, levels, observed) - fine)
    return np.sum((gap[1:] + gap[:-1]) / 2 * np.diff(fine))


# --------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("factor", [1.0, 1.7, 0.6])
def test_metrics_equal_reference_formulas(factor):
    e, s = gaussian_data(3001, seed=1, factor=factor)
    m = uncertainty_metrics(e, s, alpha=0.1, n_bins=7)
    z = e / s
    assert m["n"] == 3001
    assert m["rmse"] == pytest.approx(
        math.sqrt(sum(ei * ei for ei in e) / len(e)), rel=1e-12
    )
    assert m["mae"] == pytest.approx(sum(abs(ei) for ei in e) / len(e), rel=1e-12)
    assert m["max_error"] == np.max(np.abs(e))
    assert m["rmv"] == pytest.approx(math.sqrt(np.mean(s**2)), rel=1e-12)
    assert m["nll"] == pytest.approx(ref_nll(e, s), rel=1e-12)
    assert m["zms"] == pytest.approx(np.mean(z**2), rel=1e-12)
    assert m["coverage"] == np.mean(np.abs(e) <= 1.6448536269514722 * s)  # Φ⁻¹(0.95)
    assert m["spearman"] == pytest.approx(ref_spearman(np.abs(e), s), abs=1e-12)
    assert m["ence"] == pytest.approx(ref_ence(e, s, 7), rel=1e-12)
    rmv, rmse, count = ref_bins(e, s, 7)
    np.testing.assert_allclose(m["bin_rmv"], rmv, rtol=1e-12)
    np.testing.assert_allclose(m["bin_rmse"], rmse, rtol=1e-12)
    np.testing.assert_array_equal(m["bin_count"], count)
    assert m["miscalibration_area"] == pytest.approx(
        ref_miscalibration_area(e, s), abs=1e-7
    )


def test_calibrated_data_scores_well_and_miscalibrated_data_does_not():
    e, s = gaussian_data(100_000, seed=2)
    good = uncertainty_metrics(e, s)
    assert good["ence"] < 0.03
    assert good["miscalibration_area"] < 0.01
    assert abs(good["zms"] - 1) < 0.02
    assert abs(good["coverage"] - 0.9) < 3 * math.sqrt(0.09 / 1e5)
    assert good["spearman"] > 0.3  # |e| grows with std
    bad = uncertainty_metrics(*gaussian_data(100_000, seed=2, factor=2.0))
    assert bad["ence"] > 0.9 and bad["miscalibration_area"] > 0.2 and bad["zms"] > 3.5
    exp, obs = calibration_curve(e, s, levels=[0.5, 0.9])
    np.testing.assert_allclose(obs, [0.5, 0.9], atol=0.01)


def test_binned_rmse_rmv_caps_bins_and_handles_constant_std():
    e, s = gaussian_data(5, seed=3)
    rmv, rmse, count = binned_rmse_rmv(e, s, n_bins=10)
    assert rmv.shape == (5,) and count.sum() == 5
    named = binned_rmse_rmv(np.full(10, 2.0), np.ones(10), n_bins=2)  # the names say which is which
    assert np.allclose(named.rmse, 2.0) and np.allclose(named.rmv, 1.0)
    m = uncertainty_metrics(e, np.full(5, 0.5))
    assert np.isnan(
        m["spearman"]
    )  # undefined for constant std, without a warning escaping


def test_force_metrics_components_norms_species():
    rng = np.random.default_rng(4)
    n = 60
    F = rng.normal(size=(n, 3))
    F_std = rng.uniform(0.05, 0.2, (n, 3))
    F_pred = F + rng.normal(size=(n, 3)) * F_std
    species = np.repeat([29, 47, 79], 20)
    out = force_metrics(F, F_pred, F_std, species=species)
    comp = uncertainty_metrics((F_pred - F).ravel(), F_std.ravel())
    assert out["components"]["rmse"] == pytest.approx(comp["rmse"])
    assert out["components"]["nll"] == pytest.approx(comp["nll"])
    err_norm = np.linalg.norm(F_pred - F, axis=1)
    std_norm = np.linalg.norm(F_std, axis=1)
    assert out["norms"]["mae"] == pytest.approx(err_norm.mean())
    assert out["norms"]["rmse"] == pytest.approx(math.sqrt(np.mean(err_norm**2)))
    assert out["norms"]["rmv"] == pytest.approx(math.sqrt(np.mean(std_norm**2)))
    assert out["norms"]["spearman"] == pytest.approx(ref_spearman(err_norm, std_norm))
    assert sorted(out["by_species"]) == [29, 47, 79]
    m = species == 47
    sub = uncertainty_metrics((F_pred - F)[m], F_std[m])
    assert out["by_species"][47]["components"]["zms"] == pytest.approx(sub["zms"])
    assert out["by_species"][47]["norms"]["n"] == 20
    assert "by_species" not in force_metrics(F, F_pred, F_std)


def test_energy_metrics_per_atom():
    rng = np.random.default_rng(5)
    n_atoms = rng.integers(4, 40, 30)
    E = rng.normal(size=30) * 10
    E_std = rng.uniform(0.01, 0.1, 30) * n_atoms
    E_pred = E + rng.normal(size=30) * E_std
    out = energy_metrics(E, E_pred, E_std, n_atoms)
    per_atom = (E_pred - E) / n_atoms
    assert out["rmse"] == pytest.approx(math.sqrt(np.mean(per_atom**2)))
    assert out["zms"] == pytest.approx(np.mean(((E_pred - E) / E_std) ** 2))
    const = energy_metrics(E, E_pred, E_std, 8)
    assert const["mae"] == pytest.approx(np.mean(np.abs(E_pred - E)) / 8)


# --------------------------------------------------------------------------------------
# recalibration
# --------------------------------------------------------------------------------------
def test_scale_recovers_known_miscalibration():
    e, s = gaussian_data(20_000, seed=6, factor=2.0)
    cal = StdCalibrator().fit(e, s)
    assert cal.scale_ == pytest.approx(2.0, rel=0.03)
    assert cal.n_samples_ == 20_000
    np.testing.assert_allclose(cal.transform(s), cal.scale_ * s)
    after = uncertainty_metrics(e, cal.transform(s))
    assert after["zms"] == pytest.approx(1.0, rel=1e-12)


def test_scale_is_the_gaussian_nll_optimum():
    e, s = gaussian_data(500, seed=7, factor=1.3)
    cal = StdCalibrator().fit(e, s)

    def nll(log_scale):
        t = math.exp(log_scale) * s
        return np.mean(0.5 * np.log(2 * np.pi * t**2) + e**2 / (2 * t**2))

    res = optimize.minimize_scalar(nll, bracket=(-1.0, 1.0), tol=1e-12)
    assert math.exp(res.x) == pytest.approx(cal.scale_, rel=1e-6)


def test_conformal_coverage_on_fresh_data():
    alpha = 0.1
    e_cal, s_cal = gaussian_data(2000, seed=8)
    conf = SplitConformal(alpha).fit(e_cal, s_cal)
    e_new, s_new = gaussian_data(20_000, seed=9)
    lower, upper = conf.interval(np.zeros_like(e_new), s_new)
    covered = np.mean((e_new >= lower) & (e_new <= upper))
    # spread of the coverage: binomial on the fresh set plus the calibration quantile's
    sigma = math.sqrt(alpha * (1 - alpha) * (1 / 2000 + 1 / 20_000))
    assert abs(covered - (1 - alpha)) < 3 * sigma
    np.testing.assert_allclose(conf.bound(s_new), conf.quantile_ * s_new)


def test_conformal_quantile_is_finite_sample_exact():
    # n = 19, alpha = 0.1: k = ceil(20 * 0.9) = 18, so the 18th smallest score, and the
    # expected coverage is exactly k/(n+1) = 0.9 (the plain 90 % quantile under-covers).
    rng = np.random.default_rng(10)
    n, trials = 19, 4000
    qs, naive = [], []
    for _ in range(trials):
        s = rng.uniform(0.5, 2.0, n)
        e = rng.normal(size=n) * s
        conf = SplitConformal(0.1).fit(e, s)
        scores = np.sort(np.abs(e / s))
        assert conf.quantile_ == scores[17]
        qs.append(conf.quantile_)
        naive.append(np.quantile(scores, 0.9))
    coverage = (
        2 * stats.norm.cdf(qs) - 1
    )  # exact coverage for calibrated Gaussian errors
    beta_sd = math.sqrt(18 * 2 / (20**2 * 21))  # sd of the Beta(18, 2) coverage
    assert abs(coverage.mean() - 0.9) < 3 * beta_sd / math.sqrt(trials)
    assert (2 * stats.norm.cdf(naive) - 1).mean() < 0.89


def test_two_term_conformal_scores_each_frame_in_a_calibrator_of_the_other_frames():
    from gpal.calibration import TwoTermCalibrator, fit_two_term_conformal

    rng = np.random.default_rng(3)
    frame = np.repeat([7, 2, 9, 4, 5], 6)  # frame labels in any order
    s, sn, nu = rng.uniform(0.02, 0.3, 30), np.full(30, 0.05), rng.uniform(0, 0.2, 30)
    e = rng.normal(size=30) * np.hypot(1.5 * s, sn)
    cal, conf = fit_two_term_conformal(e, s, sn, nu, frame, alpha=0.2)
    ref = TwoTermCalibrator().fit(e, s, sn, nu)
    assert (cal.scale_, cal.noise_scale_) == (ref.scale_, ref.noise_scale_)
    fold = np.isin(frame, [4, 7])  # the sorted frames 2, 4, 5, 7, 9 alternate
    total = np.empty(30)
    for k in (False, True):
        other = TwoTermCalibrator().fit(e[fold != k], s[fold != k], sn[fold != k], nu[fold != k])
        total[fold == k] = other.transform(s[fold == k], sn[fold == k], nu[fold == k])
    assert conf.quantile_ == SplitConformal(0.2).fit(e, total).quantile_
    one = fit_two_term_conformal(e[:6], s[:6], sn[:6], nu[:6], frame[:6], alpha=0.2)[1]  # in-sample
    assert one.quantile_ == SplitConformal(0.2).fit(e[:6], ref.fit(e[:6], s[:6], sn[:6], nu[:6])
                                                     .transform(s[:6], sn[:6], nu[:6])).quantile_


def test_two_term_conformal_with_a_fold_of_perfect_cells_takes_in_sample_scores():
    """Frames 0 and 2 with zero errors put their fold's calibrator at its floor, which made the
    cross-fitted quantile 18.6 against 1.9."""
    from gpal.calibration import TwoTermCalibrator, fit_two_term_conformal

    rng = np.random.default_rng(0)
    frame = np.repeat(np.arange(4), 48)
    s, sn, nu = rng.uniform(0.02, 0.3, 192), np.full(192, 0.05), np.zeros(192)
    e = rng.normal(size=192) * np.hypot(1.5 * s, sn) * (frame % 2)  # frames 0 and 2: perfect cells
    cal, conf = fit_two_term_conformal(e, s, sn, nu, frame)
    ref = TwoTermCalibrator().fit(e, s, sn, nu)
    assert conf.quantile_ == SplitConformal(0.1).fit(e, ref.transform(s, sn, nu)).quantile_ < 3


def test_two_term_conformal_bound_covers_new_errors():
    """The quantile of scores measured in the calibrator fitted on them under-covers (0.891
    for 90 % bounds from 40 errors of 10 frames, in this Monte Carlo); cross-fitted, 0.92."""
    from gpal.calibration import fit_two_term_conformal

    rng = np.random.default_rng(0)

    def draw(n):
        s, sn = rng.uniform(0.01, 0.3, n), np.full(n, 0.05)
        sd = np.hypot(1.7 * s, 1.2 * sn)  # the calibrator's own model of the errors
        return rng.normal(size=n) * sd, s, sn, sd

    coverage = []
    for _ in range(200):
        e, s, sn, _ = draw(40)
        cal, conf = fit_two_term_conformal(e, s, sn, np.zeros(40), np.repeat(np.arange(10), 4))
        _, s_new, sn_new, sd_new = draw(200)  # the exact coverage of each new error's bound
        coverage.append(np.mean(2 * stats.norm.cdf(conf.quantile_ * cal.transform(s_new, sn_new) / sd_new) - 1))
    assert np.mean(coverage) >= 0.897  # (sd of the mean 0.0034)


def test_conformal_too_few_samples_gives_inf_with_warning():
    e, s = gaussian_data(5, seed=11)
    with pytest.warns(UserWarning, match="too few"):
        conf = SplitConformal(0.1).fit(e, s)
    assert conf.quantile_ == math.inf
    d = conf.to_dict()
    json.dumps(d, allow_nan=False)
    assert SplitConformal.from_dict(d).quantile_ == math.inf
    # nothing is bounded, a zero std included (inf * 0 is NaN, which a stopping check refuses)
    np.testing.assert_array_equal(conf.bound([0.0, 0.5]), [math.inf, math.inf])
    lower, upper = conf.interval([1.0, 2.0], [0.0, 0.5])
    assert np.all(lower == -math.inf) and np.all(upper == math.inf)
    rule = StoppingRule(tolerance=0.1, use="conformal")
    assert rule.compute_bound(0.0, conf) == math.inf
    assert not rule.update(1, rule.compute_bound(0.0, conf)).stop


def test_to_dict_round_trips():
    e, s = gaussian_data(300, seed=12, factor=1.4)
    for obj in (StdCalibrator().fit(e, s), SplitConformal(0.2).fit(e, s)):
        d = json.loads(json.dumps(obj.to_dict(), allow_nan=False))
        back = type(obj).from_dict(d)
        assert back.to_dict() == obj.to_dict()
        np.testing.assert_array_equal(back.bound(s), obj.bound(s))
    unfitted = StdCalibrator.from_dict(StdCalibrator().to_dict())
    with pytest.raises(NotFittedError):
        unfitted.transform(s)
    assert SplitConformal.from_dict(SplitConformal(0.05).to_dict()).alpha == 0.05
    with pytest.raises(ValueError):
        SplitConformal.from_dict(StdCalibrator().to_dict())
    conf = SplitConformal(0.1).fit(e, s).to_dict()
    for bad in ({"n_samples": None}, {"quantile": "x"}):  # (a TypeError before)
        with pytest.raises(ValueError, match="invalid SplitConformal dict"):
            SplitConformal.from_dict({**conf, **bad})
    fitted = StdCalibrator().fit(e, s).to_dict()
    for n in (None, 0, 2.5, True):  # (a KeyError or TypeError before)
        with pytest.raises(ValueError, match="needs n_samples, an integer >= 1"):
            StdCalibrator.from_dict({**fitted, "n_samples": n})


# --------------------------------------------------------------------------------------
# stopping rule
# --------------------------------------------------------------------------------------
def test_stopping_rule_patience():
    rule = StoppingRule(tolerance=0.1, patience=3)
    bounds = [0.3, 0.05, 0.08, 0.2, 0.05, 0.09, math.inf, 0.01, 0.02, 0.03, 0.04]
    decisions = [rule.update(step, b) for step, b in enumerate(bounds)]
    assert [d.consecutive for d in decisions] == [0, 1, 2, 0, 1, 2, 0, 1, 2, 3, 4]
    assert [d.stop for d in decisions] == [False] * 9 + [True, True]
    assert rule.history == decisions
    d = decisions[9]
    assert (d.step, d.bound, d.tolerance, d.patience, d.use) == (
        9,
        0.03,
        0.1,
        3,
        "conformal",
    )
    assert "stop" in d.reason and "0.03" in d.reason
    assert "0.2" in decisions[3].reason and "reset" in decisions[3].reason
    json.dumps(decisions[6].to_dict(), allow_nan=False)  # inf bound is serialisable
    assert isinstance(d, Decision)


def test_stopping_rule_validation_gate():
    rule = StoppingRule(
        tolerance=0.1, patience=2, use="scale", validation_tolerance=0.05
    )
    d0 = rule.update(0, 0.01, validation_error=0.2)
    d1 = rule.update(
        1, 0.01
    )  # bound OK twice, but the last validation error is too high
    assert not d1.stop and d1.validation_error == 0.2 and d1.validation_step == 0
    assert d1.validation_tolerance == 0.05 and "validation error 0.2" in d1.reason
    d2 = rule.update(2, 0.01, validation_error=0.04)
    assert d2.stop and d2.validation_error == 0.04 and d2.validation_step == 2
    assert not d0.stop
    # validation_tolerance defaults to tolerance
    rule2 = StoppingRule(tolerance=0.1, patience=1)
    assert rule2.update(5, 0.05, validation_error=0.09).stop
    assert not rule2.update(6, 0.05, validation_error=0.11).stop


def test_stopping_rule_compute_bound_and_errors():
    e, s = gaussian_data(200, seed=13)
    conf = SplitConformal(0.1).fit(e, s)
    cal = StdCalibrator().fit(e, s)
    assert StoppingRule(0.1).compute_bound(0.5, conf) == pytest.approx(
        0.5 * conf.quantile_
    )
    assert StoppingRule(0.1, use="scale").compute_bound(0.5, cal) == pytest.approx(
        0.5 * cal.scale_
    )
    with pytest.raises(ValueError, match="SplitConformal"):
        StoppingRule(0.1).compute_bound(0.5, cal)
    with pytest.raises(
        ValueError, match=r"use must be one of \{'conformal', 'scale'\}; got 'max'"
    ):
        StoppingRule(0.1, use="max")
    rule = StoppingRule(0.1)
    rule.update(3, 0.2)
    for bad in [
        lambda: rule.update(3, 0.2),
        lambda: rule.update(4, float("nan")),
        lambda: rule.update(4, -1.0),
        lambda: rule.update(4, 0.1, validation_error=np.nan),
        lambda: StoppingRule(0.0),
        lambda: StoppingRule(0.1, patience=0),
    ]:
        with pytest.raises(ValueError):
            bad()


# --------------------------------------------------------------------------------------
# bad inputs
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "call",
    [
        lambda e, s: uncertainty_metrics(np.where(e > 1, np.nan, e), s),
        lambda e, s: uncertainty_metrics(e, np.where(s > 0.5, np.inf, s)),
        lambda e, s: uncertainty_metrics(e[:-1], s),
        lambda e, s: uncertainty_metrics(e, -s),
        lambda e, s: uncertainty_metrics(e, np.zeros_like(s)),
        lambda e, s: uncertainty_metrics(e, s, alpha=1.5),
        lambda e, s: uncertainty_metrics(e, s, n_bins=0),
        lambda e, s: uncertainty_metrics([], []),
        lambda e, s: StdCalibrator().fit(e, -s),
        lambda e, s: StdCalibrator().fit(e, s[:3]),
        lambda e, s: SplitConformal(0.0),
        lambda e, s: SplitConformal(0.1).fit(np.full_like(e, np.nan), s),
        lambda e, s: SplitConformal(0.1).fit(e, s).interval(e[:3], s),
        lambda e, s: force_metrics(
            e[:30].reshape(10, 3), e[:30].reshape(10, 3), s[:27].reshape(9, 3)
        ),
        lambda e, s: force_metrics(
            e[:30].reshape(10, 3),
            e[:30].reshape(10, 3),
            s[:30].reshape(10, 3),
            species=np.ones(9),
        ),
        lambda e, s: force_metrics(
            e[:20].reshape(10, 2), e[:20].reshape(10, 2), s[:20].reshape(10, 2)
        ),
        lambda e, s: energy_metrics(e, e, s, 0),
        lambda e, s: energy_metrics(e, e, s, np.ones(3, dtype=int)),
    ],
)
def test_bad_inputs_raise_value_error(call):
    e, s = gaussian_data(40, seed=14)
    with pytest.raises(ValueError):
        call(e, s)


def test_unfitted_calibrators_raise():
    with pytest.raises(NotFittedError):
        StdCalibrator().transform([1.0])
    with pytest.raises(NotFittedError):
        SplitConformal().bound([1.0])


# --------------------------------------------------------------------------------------
# plots
# --------------------------------------------------------------------------------------
def _is_png(path):
    data = path.read_bytes()
    return len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"


def test_plots_write_png(tmp_path):
    e, s = gaussian_data(500, seed=15, factor=1.2)
    truth = np.random.default_rng(15).normal(size=500)
    paths = [
        plot_parity(
            truth,
            truth + e,
            tmp_path / "parity.png",
            std=s,
            label="force",
            units="eV/Å",
        ),
        plot_calibration_curve(e, s, tmp_path / "calib.png"),
        plot_error_vs_uncertainty(e, s, tmp_path / "rmse_rmv.png", units="eV/Å"),
        plot_z_histogram(e, s, str(tmp_path / "z.png")),
        plot_learning_curve(
            [0, 1, 2, 3],
            [0.5, 0.3, 0.12, 0.08],
            [4, 6, 7, 7],
            tmp_path / "lc.png",
            tolerance=0.1,
        ),
    ]
    for p in paths:
        assert p.exists() and _is_png(p)
    with pytest.raises(ValueError):
        plot_learning_curve([0, 1], [0.5], [1, 2], tmp_path / "x.png")
    # the learner's form: calls at their own steps (one per label), errors possibly none yet
    for st, err in (([10, 40], [0.2, 0.1]), ([], [])):
        p = plot_learning_curve(st, err, [4, 5, 7], tmp_path / f"lc{len(st)}.png", call_steps=[0, 20, 35],
                                error_label="held-out", last_step=50)
        assert _is_png(p)
    with pytest.raises(ValueError):
        plot_learning_curve([], [], [], tmp_path / "x.png", call_steps=[])
    with pytest.raises(ValueError):
        plot_learning_curve([1], [0.1], [4, 5], tmp_path / "x.png", call_steps=[0])


def test_log_axis_labels_are_plain_numbers(monkeypatch, tmp_path):
    """A log axis spanning a decade or two is labelled with plain numbers, and its minor
    ticks not at all (matplotlib's scientific minor labels ran together: 2×10⁻³3×10⁻³...)."""
    from gpal.calibration import plots

    figs = []
    save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path, overwrite=None: (figs.append(fig), save(fig, path, overwrite))[1])
    rng = np.random.default_rng(3)
    std = np.exp(rng.uniform(np.log(1.5e-3), np.log(1e-2), 400))
    plot_error_vs_uncertainty(rng.normal(0.0, 2 * std), std, tmp_path / "evu.png", units="eV/Å")
    plot_learning_curve([10, 20, 30], [0.03, 0.012, 0.009], [4, 6, 7], tmp_path / "lc.png")
    for fig, axes in ((figs[0], ("xaxis", "yaxis")), (figs[1], ("yaxis",))):
        fig.canvas.draw()
        ax = fig.axes[0]
        for name in axes:
            axis = getattr(ax, name)
            lo, hi = sorted(axis.get_view_interval())
            shown = [(t.get_loc(), t.label1.get_text()) for t in axis.get_major_ticks() + axis.get_minor_ticks()
                     if lo <= t.get_loc() <= hi and t.label1.get_visible() and t.label1.get_text()]
            assert len(shown) >= 2, (name, shown)
            for loc, text in shown:
                assert float(text) == pytest.approx(loc, rel=1e-9), (name, text)


def test_two_term_calibrator_recovers_both_factors():
    rng = np.random.default_rng(0)
    n = 20000
    std = rng.uniform(0.0, 0.3, n)
    noise = 0.1
    a, b = 2.0**2, 0.5**2
    err = rng.normal(0.0, np.sqrt(a * std**2 + b * noise**2))
    cal = TwoTermCalibrator().fit(err, std, noise)
    assert cal.scale_ == pytest.approx(2.0, rel=0.05)
    assert cal.noise_scale_ == pytest.approx(0.5, rel=0.05)
    z = err / cal.transform(std, noise)
    assert np.mean(z**2) == pytest.approx(1.0, abs=0.03)
    # a one-factor calibration of the same errors misses badly where std is small
    s1 = np.sqrt(np.mean(err**2 / (std**2 + noise**2)))
    small = std < 0.03
    assert np.mean((err[small] / (s1 * np.sqrt(std[small] ** 2 + noise**2))) ** 2) < 0.7
    with pytest.raises(ValueError):
        TwoTermCalibrator().fit(err, -std, noise)


def test_two_term_min_scale_keeps_the_learnable_std_from_shrinking():
    rng = np.random.default_rng(1)
    n = 4000
    std = rng.uniform(0.05, 0.3, n)
    noise = 0.1
    small = rng.normal(0.0, np.sqrt((0.3 * std) ** 2 + noise**2))  # learnable part 0.3x too large
    assert TwoTermCalibrator().fit(small, std, noise).scale_ == pytest.approx(0.3, rel=0.1)
    held = TwoTermCalibrator(min_scale=1.0).fit(small, std, noise)
    assert held.scale_ == pytest.approx(1.0) and held.noise_scale_ > 0
    large = rng.normal(0.0, np.sqrt((2.0 * std) ** 2 + noise**2))  # too small: scaled up alike
    assert TwoTermCalibrator(min_scale=1.0).fit(large, std, noise).scale_ == pytest.approx(
        TwoTermCalibrator().fit(large, std, noise).scale_, rel=1e-4)
    for bad in (0.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="min_scale must lie in"):
            TwoTermCalibrator(min_scale=bad).fit(small, std, noise)


def test_novelty_term_is_recovered_and_not_invented():
    """var = a σ² + b σ_n² + c ν: the third factor is found when the errors carry it,
    and is (near) zero when they do not; all-zero novelty is the two-term fit."""
    rng = np.random.default_rng(1)
    n = 40000
    std = rng.uniform(0.0, 0.3, n)
    nu = rng.uniform(0.0, 1e-3, n) * (rng.random(n) < 0.5)  # half the environments known
    noise = 0.1
    a, b, c = 2.0**2, 0.5**2, 3.0**2
    err = rng.normal(0.0, np.sqrt(a * std**2 + b * noise**2 + c * nu))
    cal = TwoTermCalibrator().fit(err, std, noise, nu)
    assert cal.scale_ == pytest.approx(2.0, rel=0.05)
    assert cal.noise_scale_ == pytest.approx(0.5, rel=0.08)
    assert cal.novelty_scale_ == pytest.approx(3.0, rel=0.08)
    assert cal.novelty_max_ == nu.max()  # the range the term was fitted on caps it
    np.testing.assert_allclose(cal.transform(std[:3], noise, np.full(3, 0.5)),
                               cal.transform(std[:3], noise, np.full(3, nu.max())))
    # where the novelty is large the two-term fit is too confident, the three-term is not
    two = TwoTermCalibrator().fit(err, std, noise)
    hot = nu > 8e-4
    assert np.mean((err[hot] / two.transform(std[hot], noise)) ** 2) > 1.15
    assert np.mean((err[hot] / cal.transform(std[hot], noise, nu[hot])) ** 2) == pytest.approx(1.0, abs=0.08)
    # errors without a novelty part: the term stays negligible
    err0 = rng.normal(0.0, np.sqrt(a * std**2 + b * noise**2))
    cal0 = TwoTermCalibrator().fit(err0, std, noise, nu)
    assert cal0.novelty_scale_**2 * 1e-3 < 0.02 * b * noise**2
    # no novelty anywhere: exactly the two-term fit
    same = TwoTermCalibrator().fit(err0, std, noise, np.zeros(n))
    ref = TwoTermCalibrator().fit(err0, std, noise)
    assert same.novelty_scale_ == 0.0
    assert (same.scale_, same.noise_scale_) == (ref.scale_, ref.noise_scale_)
    with pytest.raises(ValueError, match="novelty"):
        TwoTermCalibrator().fit(err, std, noise, nu + 2.0)
    with pytest.raises(ValueError, match="same shape"):
        TwoTermCalibrator().fit(err, std, noise, nu[:-1])


def test_calibration_novelty_term_round_trips_and_is_checked():
    c = Calibration(scale=1.5, noise_scale=0.3, conformal_q90=1.7, novelty_scale=2.0)
    assert Calibration.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    capped = Calibration(scale=1.5, novelty_scale=2.0, novelty_max=0.005)
    assert Calibration.from_dict(json.loads(json.dumps(capped.to_dict()))) == capped
    np.testing.assert_allclose(capped.apply([0.1, 0.1], 0.0, [0.001, 0.5]),
                               np.sqrt(0.15**2 + 4.0 * np.array([0.001, 0.005])))
    with pytest.raises(ValueError, match="novelty_max"):
        Calibration(novelty_scale=1.0, novelty_max=2.0)
    assert "novelty_scale" not in Calibration(scale=1.5).to_dict()
    s, n, nu = np.array([0.1, 0.2]), 0.05, np.array([0.0, 0.01])
    np.testing.assert_allclose(c.apply(s, n, nu), np.sqrt((1.5 * s) ** 2 + (0.3 * n) ** 2 + 4.0 * nu))
    with pytest.raises(ValueError, match="novelty_scale"):
        Calibration(novelty_scale=-1.0)
