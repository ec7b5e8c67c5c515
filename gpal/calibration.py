"""Is the GP's uncertainty right? Metrics, recalibration, a stopping rule and plots.

Everything acts on arrays: ``error = prediction - reference`` and the predicted standard
deviation ``std`` (same shape, strictly positive), z = error / std.

Metrics
    :func:`uncertainty_metrics` (RMSE, MAE, Gaussian NLL, ZMS = mean z², miscalibration
    area, coverage of the central 1-α interval, Spearman ρ(|error|, std), ENCE and the
    binned RMSE-vs-RMV curve); :func:`force_metrics` and :func:`energy_metrics` apply it
    to forces (components, per-atom norms, per species) and energies (per atom).

Recalibration
    :class:`StdCalibrator` rescales std by s = sqrt(mean z²), the maximiser of the
    Gaussian likelihood over a scalar factor; :class:`SplitConformal` gives the
    finite-sample-valid quantile q̂ of |z| at level 1-α. Both serialise to JSON-able
    dicts.

Stopping
    :class:`StoppingRule` stops when the calibrated bound on what the sampler visits
    stays below the user's tolerance for ``patience`` consecutive checks and the
    validation error (if any) is below tolerance; each :class:`Decision` carries its
    numbers.

What makes a calibration transfer
    A scale fitted on one trajectory holds on another (say a hotter one) only if the
    std grows with the error as the model leaves its data. Measured on EMT Cu
    (``benchmarks/bench_calibration.py``: train at 900 K, calibrate at 600 K, use at
    1200 K): with gpal's default ζ = 4 and fixed noises the error grew ~1.4x faster
    than the force std and the transferred ZMS was 1.35; with the kernel exponent and
    the noises chosen by the evidence of the training data
    (:func:`gpal.select_kernel_by_evidence`, ``gpal fit --zeta auto``) it was
    0.85-1.16 over three seeds. The raw force std is the projected (SoR) part of the
    variance only; with evidence-fitted noises it is several times too small, so use
    ``calibrated=True`` once a calibration is stored.

Plots (PNG; a matplotlib ``Figure`` on an Agg canvas: no pyplot, no backend change)
    :func:`plot_parity`, :func:`plot_calibration_curve`,
    :func:`plot_error_vs_uncertainty`, :func:`plot_z_histogram`,
    :func:`plot_learning_curve`.
"""

from __future__ import annotations

import math
import numbers
import os
import warnings
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
from scipy import stats

from .exceptions import NotFittedError

__all__ = [
    "uncertainty_metrics",
    "calibration_curve",
    "binned_rmse_rmv",
    "force_metrics",
    "energy_metrics",
    "StdCalibrator",
    "TwoTermCalibrator",
    "SplitConformal",
    "Decision",
    "StoppingRule",
    "plot_parity",
    "plot_calibration_curve",
    "plot_error_vs_uncertainty",
    "plot_z_histogram",
    "plot_learning_curve",
]

STOPPING_BOUNDS = ("conformal", "scale")

# Expected proportions of the calibration curve: uncertainty-toolbox's default grid
# (100 central-interval levels from 1 % to 99 %).
_CURVE_LEVELS = np.linspace(0.01, 0.99, 100)


# --------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------
def _check_option(name: str, value, valid) -> str:
    if not isinstance(value, str) or value not in valid:
        raise ValueError(
            f"{name} must be one of {{{', '.join(repr(v) for v in valid)}}}; "
            f"got {value!r}"
        )
    return value


def _finite_array(name: str, a) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return a


def _check_error_std(error, std, *, error_name="error", std_name="std"):
    """Validate and flatten a pair (error, std): same shape, finite, std > 0."""
    e = _finite_array(error_name, error)
    s = _finite_array(std_name, std)
    if e.shape != s.shape:
        raise ValueError(
            f"{error_name} and {std_name} must have the same shape, "
            f"got {e.shape} and {s.shape}"
        )
    if e.size == 0:
        raise ValueError(f"{error_name} is empty")
    if np.any(s < 0):
        raise ValueError(
            f"{std_name} must be non-negative (a standard deviation); "
            "found negative values"
        )
    if np.any(s == 0):
        raise ValueError(
            f"{std_name} must be strictly positive: z = error/std and the "
            "Gaussian NLL are undefined at 0"
        )
    return e.ravel(), s.ravel()


def _check_alpha(alpha) -> float:
    a = float(alpha)
    if not 0.0 < a < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    return a


def _check_positive_int(name: str, value) -> int:
    if (
        isinstance(value, (bool, np.bool_))
        or not isinstance(value, numbers.Integral)
        or value < 1
    ):
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


# --------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------
def calibration_curve(error, std, *, levels=None) -> tuple[np.ndarray, np.ndarray]:
    """Expected vs observed coverage of central Gaussian intervals.

    For each level p the central interval is ``|z| <= Φ⁻¹(½ + p/2)``; the observed
    proportion is the fraction of samples inside it.

    Parameters
    ----------
    error, std : array_like of the same shape
    levels : array_like of shape (n_levels,), optional
        Expected proportions in (0, 1); default 100 levels from 0.01 to 0.99.

    Returns
    -------
    expected : ndarray of shape (n_levels,)
    observed : ndarray of shape (n_levels,)
    """
    e, s = _check_error_std(error, std)
    p = _CURVE_LEVELS if levels is None else _finite_array("levels", levels).ravel()
    if np.any((p <= 0) | (p >= 1)):
        raise ValueError("levels must lie strictly between 0 and 1")
    absz = np.sort(np.abs(e / s))
    half_width = stats.norm.ppf(0.5 + p / 2.0)
    observed = np.searchsorted(absz, half_width, side="right") / absz.size
    return p.copy(), observed


def _area_between(x: np.ndarray, g: np.ndarray) -> float:
    """∫|g| for g piecewise linear through (x_i, g_i), sign changes handled exactly."""
    h = np.diff(x)
    a, b = g[:-1], g[1:]
    same = a * b >= 0
    total = np.where(same, 0.5 * (np.abs(a) + np.abs(b)) * h, 0.0)
    denom = np.abs(a) + np.abs(b)
    cross = ~same
    total[cross] = 0.5 * (a[cross] ** 2 + b[cross] ** 2) / denom[cross] * h[cross]
    return float(np.sum(total))


def binned_rmse_rmv(error, std, n_bins: int = 10):
    """Equal-count bins of std: root mean variance vs root mean squared error per bin.

    Samples are sorted by std (stable) and split into ``min(n_bins, n)`` bins whose
    sizes differ by at most one (:func:`numpy.array_split`).

    Returns
    -------
    rmv : ndarray of shape (n_bins,)
        ``sqrt(mean std²)`` per bin.
    rmse : ndarray of shape (n_bins,)
        ``sqrt(mean error²)`` per bin.
    count : ndarray of shape (n_bins,), int
    """
    e, s = _check_error_std(error, std)
    n_bins = min(_check_positive_int("n_bins", n_bins), e.size)
    order = np.argsort(s, kind="stable")
    groups = np.array_split(order, n_bins)
    rmv = np.array([math.sqrt(np.mean(s[g] ** 2)) for g in groups])
    rmse = np.array([math.sqrt(np.mean(e[g] ** 2)) for g in groups])
    count = np.array([g.size for g in groups], dtype=np.int64)
    return rmv, rmse, count


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    if a.size < 2 or np.all(a == a[0]) or np.all(b == b[0]):
        return float("nan")
    return float(stats.spearmanr(a, b).statistic)


def uncertainty_metrics(error, std, *, alpha: float = 0.1, n_bins: int = 10) -> dict:
    """Accuracy and calibration metrics for one predicted quantity.

    Parameters
    ----------
    error : array_like
        ``prediction - reference``, any shape (flattened).
    std : array_like, same shape as ``error``
        Predicted standard deviations, strictly positive.
    alpha : float in (0, 1), default 0.1
        Coverage is measured for the central 1-α Gaussian interval.
    n_bins : int, default 10
        Equal-count std bins for ENCE and the RMSE-vs-RMV curve.

    Returns
    -------
    dict
        ``n``; ``rmse`` = sqrt(mean e²); ``mae`` = mean |e|; ``max_error`` = max |e|;
        ``rmv`` = sqrt(mean σ²) (root mean variance);
        ``nll`` = mean[½ log(2π σ²) + ½ z²] (Gaussian negative log-likelihood, nats);
        ``zms`` = mean z² (1 when calibrated; s² of :class:`StdCalibrator`);
        ``miscalibration_area`` = ∫|observed(p) - p| dp over the central-interval levels
        p ∈ [0.01, 0.99] (piecewise-linear between 100 levels, as uncertainty-toolbox);
        ``coverage`` = fraction with |z| <= Φ⁻¹(1 - α/2), and ``alpha``;
        ``spearman`` = Spearman ρ(|e|, σ) (NaN if either is constant or n < 2);
        ``ence`` = mean over bins of |RMV_b - RMSE_b| / RMV_b (Levi et al. 2022);
        ``bin_rmv``, ``bin_rmse``, ``bin_count``: ndarrays of shape (n_bins,) of
        :func:`binned_rmse_rmv`.
    """
    e, s = _check_error_std(error, std)
    alpha = _check_alpha(alpha)
    z = e / s
    expected, observed = calibration_curve(e, s)
    rmv, rmse_b, count = binned_rmse_rmv(e, s, n_bins)
    z_half = stats.norm.ppf(1.0 - alpha / 2.0)
    return {
        "n": int(e.size),
        "rmse": float(np.sqrt(np.mean(e**2))),
        "mae": float(np.mean(np.abs(e))),
        "max_error": float(np.max(np.abs(e))),
        "rmv": float(np.sqrt(np.mean(s**2))),
        "nll": float(np.mean(0.5 * np.log(2.0 * np.pi * s**2) + 0.5 * z**2)),
        "zms": float(np.mean(z**2)),
        "miscalibration_area": _area_between(expected, observed - expected),
        "coverage": float(np.mean(np.abs(z) <= z_half)),
        "alpha": alpha,
        "spearman": _spearman(np.abs(e), s),
        "ence": float(np.mean(np.abs(rmv - rmse_b) / rmv)),
        "bin_rmv": rmv,
        "bin_rmse": rmse_b,
        "bin_count": count,
    }


def _species_array(species, n: int) -> np.ndarray:
    sp = np.asarray(species)
    if sp.shape != (n,):
        raise ValueError(f"species must have shape ({n},), got {sp.shape}")
    return sp


def _force_block(dF: np.ndarray, sF: np.ndarray, alpha: float, n_bins: int) -> dict:
    err_norm = np.sqrt(np.sum(dF**2, axis=1))
    std_norm = np.sqrt(np.sum(sF**2, axis=1))
    return {
        "components": uncertainty_metrics(dF, sF, alpha=alpha, n_bins=n_bins),
        "norms": {
            "n": int(err_norm.size),
            "rmse": float(np.sqrt(np.mean(err_norm**2))),
            "mae": float(np.mean(err_norm)),
            "max_error": float(np.max(err_norm)),
            "rmv": float(np.sqrt(np.mean(std_norm**2))),
            "spearman": _spearman(err_norm, std_norm),
        },
    }


def force_metrics(
    F_true, F_pred, F_std, species=None, *, alpha: float = 0.1, n_bins: int = 10
) -> dict:
    """Force accuracy and calibration, over components, per-atom norms and species.

    Parameters
    ----------
    F_true, F_pred, F_std : array_like of shape (n_atoms, 3)
        Reference forces, predicted forces and their predicted std (eV/Å), atoms of any
        number of frames stacked.
    species : array_like of shape (n_atoms,), optional
        Atomic numbers (or symbols) for a per-species breakdown.
    alpha, n_bins
        As in :func:`uncertainty_metrics`.

    Returns
    -------
    dict
        ``"components"``: :func:`uncertainty_metrics` over the 3·n_atoms components (the
        Gaussian calibration metrics are defined there);
        ``"norms"``: per-atom |ΔF_i| statistics (``rmse`` = sqrt(mean |ΔF|²),
        ``mae`` = mean |ΔF|, ``max_error``, ``rmv`` = sqrt(mean |σ_i|²) with
        |σ_i| = sqrt(Σ_c σ_ic²), and ``spearman`` ρ(|ΔF_i|, |σ_i|));
        ``"by_species"`` (only with ``species``):
        ``{species: {"components": ..., "norms": ...}}``.
    """
    Ft = _finite_array("F_true", F_true)
    Fp = _finite_array("F_pred", F_pred)
    if Ft.ndim != 2 or Ft.shape[1] != 3:
        raise ValueError(f"F_true must have shape (n_atoms, 3), got {Ft.shape}")
    if Fp.shape != Ft.shape:
        raise ValueError(
            f"F_pred must have the shape of F_true {Ft.shape}, got {Fp.shape}"
        )
    dF, sF = _check_error_std(
        Fp - Ft, F_std, error_name="F_pred - F_true", std_name="F_std"
    )
    dF = dF.reshape(Ft.shape)
    sF = sF.reshape(Ft.shape)
    alpha = _check_alpha(alpha)
    out = _force_block(dF, sF, alpha, n_bins)
    if species is not None:
        sp = _species_array(species, Ft.shape[0])
        out["by_species"] = {}
        for z in np.unique(sp):
            m = sp == z
            key = z.item() if hasattr(z, "item") else z
            out["by_species"][key] = _force_block(dF[m], sF[m], alpha, n_bins)
    return out


def energy_metrics(
    E_true, E_pred, E_std, n_atoms, *, alpha: float = 0.1, n_bins: int = 10
) -> dict:
    """Energy accuracy and calibration per atom.

    Parameters
    ----------
    E_true, E_pred, E_std : array_like of shape (n_frames,)
        Reference and predicted total energies and the predicted std (eV).
    n_atoms : int or array_like of shape (n_frames,)
        Atoms per frame.
    alpha, n_bins
        As in :func:`uncertainty_metrics`.

    Returns
    -------
    dict
        :func:`uncertainty_metrics` of the per-atom error ``(E_pred - E_true)/n_atoms``
        against ``E_std/n_atoms`` (eV/atom). z, and hence every calibration metric, is
        the same as for total energies; RMSE, MAE, RMV and NLL are per atom.
    """
    Et = _finite_array("E_true", E_true)
    Ep = _finite_array("E_pred", E_pred)
    if Et.ndim != 1:
        raise ValueError(f"E_true must have shape (n_frames,), got {Et.shape}")
    if Ep.shape != Et.shape:
        raise ValueError(
            f"E_pred must have the shape of E_true {Et.shape}, got {Ep.shape}"
        )
    na = np.asarray(n_atoms)
    if na.ndim == 0:
        na = np.full(Et.shape, na)
    if na.shape != Et.shape:
        raise ValueError(
            f"n_atoms must be an integer or have shape {Et.shape}, got {na.shape}"
        )
    if not np.issubdtype(na.dtype, np.integer) or np.any(na < 1):
        raise ValueError("n_atoms must be positive integers")
    dE, sE = _check_error_std(
        Ep - Et, E_std, error_name="E_pred - E_true", std_name="E_std"
    )
    return uncertainty_metrics(dE / na, sE / na, alpha=alpha, n_bins=n_bins)


# --------------------------------------------------------------------------------------
# recalibration
# --------------------------------------------------------------------------------------
class StdCalibrator:
    """Rescale predicted std by one factor s fitted on held-out errors.

    ``fit`` sets ``scale_ = sqrt(mean(z²))``, z = error/std. This is the
    maximum-likelihood factor: the Gaussian NLL of ``error ~ N(0, (s·std)²)`` is, up to
    a constant, ``log s + mean(z²)/(2 s²)``, whose derivative ``1/s - mean(z²)/s³``
    vanishes only at ``s² = mean(z²)``.

    Attributes
    ----------
    scale_ : float
    n_samples_ : int
    """

    def fit(self, error, std) -> "StdCalibrator":
        """Fit on arrays of the same shape (error = prediction - reference, std > 0)."""
        e, s = _check_error_std(error, std)
        self.scale_ = float(np.sqrt(np.mean((e / s) ** 2)))
        self.n_samples_ = int(e.size)
        return self

    def _check_fitted(self):
        if not hasattr(self, "scale_"):
            raise NotFittedError(
                "This StdCalibrator is not fitted yet; call fit(error, std) first."
            )

    def transform(self, std) -> np.ndarray:
        """Calibrated std, ``scale_ * std`` (same shape)."""
        self._check_fitted()
        s = _finite_array("std", std)
        if np.any(s < 0):
            raise ValueError("std must be non-negative")
        return self.scale_ * s

    def bound(self, std) -> np.ndarray:
        """Calibrated bound ``scale_ * std`` (:class:`StoppingRule`, use="scale")."""
        return self.transform(std)

    def to_dict(self) -> dict:
        """JSON-able state.

        ``{"class": "StdCalibrator", "scale": float | None, "n_samples": int | None}``
        """
        return {
            "class": "StdCalibrator",
            "scale": getattr(self, "scale_", None),
            "n_samples": getattr(self, "n_samples_", None),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "StdCalibrator":
        """Inverse of :meth:`to_dict`."""
        if not isinstance(d, dict) or d.get("class") != "StdCalibrator":
            raise ValueError(f"not a StdCalibrator dict: {d!r}")
        obj = cls()
        if d.get("scale") is not None:
            scale = float(d["scale"])
            if not (np.isfinite(scale) and scale > 0):
                raise ValueError(f"invalid scale {d['scale']!r}")
            obj.scale_ = scale
            obj.n_samples_ = int(d["n_samples"])
        return obj

    def __repr__(self) -> str:
        return f"StdCalibrator(scale_={getattr(self, 'scale_', None)})"


class TwoTermCalibrator:
    """Calibrate a predictive std made of a learnable part and a noise floor.

    A sparse GP's std of a new label is ``sqrt(σ² + σ_n²)``: ``σ`` the posterior
    (learnable) std of the latent value, ``σ_n`` the label noise, which stands for
    everything the model cannot learn at its size. The two need not be off by the same
    factor: the floor is fitted on the training data, the learnable part grows where
    the model extrapolates. ``fit`` chooses ``a, b`` maximising the Gaussian likelihood
    of the errors under ``N(0, a σ² + b σ_n²)`` (L-BFGS-B in log space, each factor
    within [1e-2, 1e4]); ``scale_ = sqrt(a)``, ``noise_scale_ = sqrt(b)``. With
    ``σ = 0`` it reduces to :class:`StdCalibrator` on the noise.

    Attributes
    ----------
    scale_, noise_scale_ : float
    n_samples_ : int
    """

    def fit(self, error, std, noise) -> "TwoTermCalibrator":
        """Fit on ``error`` (n,), learnable ``std`` (n,) >= 0 and ``noise`` (n,) > 0 (or scalar)."""
        import scipy.optimize

        e = _finite_array("error", error).ravel()
        s = _finite_array("std", std).ravel()
        n = np.broadcast_to(_finite_array("noise", noise), e.shape).ravel()
        if s.shape != e.shape:
            raise ValueError(f"error and std must have the same shape, got {e.shape} and {s.shape}")
        if e.size == 0:
            raise ValueError("need at least one error to calibrate")
        if np.any(s < 0) or np.any(n <= 0):
            raise ValueError("std must be >= 0 and noise > 0")
        s2, n2, e2 = s**2, n**2, e**2

        def nll(x):
            a, b = np.exp(x)
            v = a * s2 + b * n2
            f = np.mean(np.log(v) + e2 / v)
            dv = 1.0 / v - e2 / v**2
            return f, np.array([np.mean(dv * s2) * a, np.mean(dv * n2) * b])

        b0 = max(float(np.mean(e2) / np.mean(s2 + n2)), 1e-2)
        res = scipy.optimize.minimize(
            nll, np.log([b0, b0]), jac=True, method="L-BFGS-B",
            bounds=[(np.log(1e-2), np.log(1e4))] * 2,
        )
        a, b = np.exp(res.x)
        self.scale_, self.noise_scale_ = float(np.sqrt(a)), float(np.sqrt(b))
        self.n_samples_ = int(e.size)
        return self

    def transform(self, std, noise) -> np.ndarray:
        """Calibrated std ``sqrt((scale_ σ)² + (noise_scale_ σ_n)²)`` (shape of ``std``)."""
        if not hasattr(self, "scale_"):
            raise NotFittedError("This TwoTermCalibrator is not fitted yet; call fit first.")
        s = _finite_array("std", std)
        return np.sqrt((self.scale_ * s) ** 2 + (self.noise_scale_ * np.asarray(noise, float)) ** 2)

    def __repr__(self) -> str:
        return (f"TwoTermCalibrator(scale_={getattr(self, 'scale_', None)}, "
                f"noise_scale_={getattr(self, 'noise_scale_', None)})")


class SplitConformal:
    """Split-conformal bound on |error| from normalised scores |error|/std.

    With n calibration scores, ``quantile_`` q̂ is the k-th smallest score,
    k = ⌈(n + 1)(1 - α)⌉, i.e. the k/n empirical quantile. For a new exchangeable
    sample ``P(|error| <= q̂·std) >= 1 - α`` (and ``<= 1 - α + 1/(n+1)`` without ties).
    If k > n (fewer than ``1/α - 1`` samples) no finite bound is valid: q̂ = inf, with
    a warning.

    Parameters
    ----------
    alpha : float in (0, 1), default 0.1

    Attributes
    ----------
    quantile_ : float
    n_samples_ : int
    """

    def __init__(self, alpha: float = 0.1):
        self.alpha = _check_alpha(alpha)

    def fit(self, error, std) -> "SplitConformal":
        """Fit on arrays of the same shape (error = prediction - reference, std > 0)."""
        e, s = _check_error_std(error, std)
        scores = np.sort(np.abs(e / s))
        n = scores.size
        # exact rational arithmetic on alpha's shortest decimal form, so that e.g.
        # n = 19, alpha = 0.1 gives k = 18, not 19 through 20 * 0.9 = 18.000...04
        k = math.ceil((n + 1) * (1 - Fraction(repr(self.alpha))))
        if k > n:
            warnings.warn(
                f"SplitConformal: {n} calibration samples are too few for "
                f"alpha={self.alpha} (need at least "
                f"{math.ceil(1.0 / self.alpha - 1.0)}); the bound is infinite.",
                UserWarning,
                stacklevel=2,
            )
            self.quantile_ = float("inf")
        else:
            self.quantile_ = float(scores[k - 1])
        self.n_samples_ = int(n)
        return self

    def _check_fitted(self):
        if not hasattr(self, "quantile_"):
            raise NotFittedError(
                "This SplitConformal is not fitted yet; call fit(error, std) first."
            )

    def bound(self, std) -> np.ndarray:
        """Half-width of the interval, ``quantile_ * std`` (same shape)."""
        self._check_fitted()
        s = _finite_array("std", std)
        if np.any(s < 0):
            raise ValueError("std must be non-negative")
        return self.quantile_ * s

    def interval(self, pred, std) -> tuple[np.ndarray, np.ndarray]:
        """``(pred - q̂·std, pred + q̂·std)``, each of the shape of ``pred``."""
        p = _finite_array("pred", pred)
        b = self.bound(std)
        if b.shape != p.shape:
            raise ValueError(
                f"pred and std must have the same shape, got {p.shape} and {b.shape}"
            )
        return p - b, p + b

    def to_dict(self) -> dict:
        """JSON-able state; an infinite quantile is stored as the string ``"inf"``."""
        q = getattr(self, "quantile_", None)
        if q is not None and not np.isfinite(q):
            q = "inf"
        return {
            "class": "SplitConformal",
            "alpha": self.alpha,
            "quantile": q,
            "n_samples": getattr(self, "n_samples_", None),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "SplitConformal":
        """Inverse of :meth:`to_dict`."""
        if not isinstance(d, dict) or d.get("class") != "SplitConformal":
            raise ValueError(f"not a SplitConformal dict: {d!r}")
        obj = cls(alpha=d["alpha"])
        q = d.get("quantile")
        if q is not None:
            q = float("inf") if q == "inf" else float(q)
            if np.isnan(q) or q < 0:
                raise ValueError(f"invalid quantile {d['quantile']!r}")
            obj.quantile_ = q
            obj.n_samples_ = int(d["n_samples"])
        return obj

    def __repr__(self) -> str:
        q = getattr(self, "quantile_", None)
        return f"SplitConformal(alpha={self.alpha}, quantile_={q})"


# --------------------------------------------------------------------------------------
# stopping
# --------------------------------------------------------------------------------------
@dataclass
class Decision:
    """One check of a :class:`StoppingRule`, with every number it used."""

    step: int
    stop: bool
    reason: str
    bound: float
    tolerance: float
    consecutive: int
    patience: int
    use: str
    validation_error: float | None = None
    validation_step: int | None = None
    validation_tolerance: float | None = None

    def to_dict(self) -> dict:
        """JSON-able copy (an infinite bound becomes the string ``"inf"``)."""
        d = asdict(self)
        if not np.isfinite(d["bound"]):
            d["bound"] = "inf"
        return d


@dataclass
class StoppingRule:
    """Stop active learning when the calibrated error bound stays under tolerance.

    At each check the learner passes the largest calibrated bound over the frames the
    sampler visited since the last check (``q̂·σ`` for ``use="conformal"``, ``s·σ`` for
    ``use="scale"``; :meth:`compute_bound` makes it from a fitted calibrator). The rule
    stops when

    - that bound was ``< tolerance`` at ``patience`` consecutive checks (a check at or
      above tolerance, or with an infinite bound, resets the count), and
    - the latest validation error given so far, if any, is ``< validation_tolerance``
      (default: ``tolerance``).

    Parameters
    ----------
    tolerance : float > 0
        In the units of the bound (e.g. eV/Å for forces).
    patience : int >= 1, default 3
    use : {"conformal", "scale"}, default "conformal"
        Which calibrated bound the learner feeds in (recorded in every decision).
    validation_tolerance : float > 0 or None

    Attributes
    ----------
    history : list of Decision
    """

    tolerance: float
    patience: int = 3
    use: str = "conformal"
    validation_tolerance: float | None = None
    history: list = field(default_factory=list, init=False, repr=False)

    def __post_init__(self):
        self.tolerance = self._positive("tolerance", self.tolerance)
        self.patience = _check_positive_int("patience", self.patience)
        _check_option("use", self.use, STOPPING_BOUNDS)
        if self.validation_tolerance is not None:
            self.validation_tolerance = self._positive(
                "validation_tolerance", self.validation_tolerance
            )
        self._streak = 0
        self._last_val: tuple[int, float] | None = None

    @staticmethod
    def _positive(name, x) -> float:
        x = float(x)
        if not (np.isfinite(x) and x > 0):
            raise ValueError(f"{name} must be a positive finite number, got {x!r}")
        return x

    def compute_bound(self, std_max: float, calibrator) -> float:
        """Calibrated bound from the largest raw std and a fitted calibrator.

        ``calibrator`` must be a :class:`SplitConformal` when ``use="conformal"`` and a
        :class:`StdCalibrator` when ``use="scale"``.
        """
        expected = SplitConformal if self.use == "conformal" else StdCalibrator
        if not isinstance(calibrator, expected):
            raise ValueError(
                f"use={self.use!r} needs a {expected.__name__}, "
                f"got {type(calibrator).__name__}"
            )
        return float(calibrator.bound(np.asarray(float(std_max))))

    def update(
        self,
        step: int,
        calibrated_bound_max: float,
        validation_error: float | None = None,
    ) -> Decision:
        """Record one check and decide.

        Parameters
        ----------
        step : int
            Learner iteration; must increase from check to check.
        calibrated_bound_max : float
            Largest calibrated bound over the sampled frames (``inf`` allowed, e.g. an
            under-sampled conformal quantile; never NaN or negative).
        validation_error : float or None
            Error on the held-out validation set at this step, if measured.

        Returns
        -------
        Decision
        """
        if isinstance(step, (bool, np.bool_)) or not isinstance(step, numbers.Integral):
            raise ValueError(f"step must be an integer, got {step!r}")
        step = int(step)
        if self.history and step <= self.history[-1].step:
            raise ValueError(
                f"step must increase: got {step} after {self.history[-1].step}"
            )
        bound = float(calibrated_bound_max)
        if np.isnan(bound) or bound < 0:
            raise ValueError(
                "calibrated_bound_max must be non-negative (inf allowed), "
                f"got {bound!r}"
            )
        if validation_error is not None:
            v = float(validation_error)
            if not (np.isfinite(v) and v >= 0):
                raise ValueError(
                    "validation_error must be finite and non-negative, "
                    f"got {validation_error!r}"
                )
            self._last_val = (step, v)

        below = bound < self.tolerance
        self._streak = self._streak + 1 if below else 0
        val_tol = (
            self.validation_tolerance
            if self.validation_tolerance is not None
            else self.tolerance
        )
        bound_txt = f"calibrated bound {bound:.6g} ({self.use})"
        if not below:
            stop = False
            reason = (
                f"{bound_txt} >= tolerance {self.tolerance:.6g}: count reset to 0, "
                f"patience {self.patience}"
            )
        elif self._streak < self.patience:
            stop = False
            reason = (
                f"{bound_txt} < tolerance {self.tolerance:.6g}: "
                f"{self._streak} consecutive "
                f"check(s), patience {self.patience}"
            )
        else:
            head = (
                f"{bound_txt} < tolerance {self.tolerance:.6g} "
                f"for {self._streak} consecutive "
                f"check(s), patience {self.patience}"
            )
            if self._last_val is None:
                stop = True
                reason = f"stop: {head}; no validation error given"
            else:
                vstep, v = self._last_val
                stop = v < val_tol
                rel = "<" if stop else ">="
                tail = f"validation error {v:.6g} (step {vstep}) {rel} {val_tol:.6g}"
                reason = f"stop: {head} and {tail}" if stop else f"{head}, but {tail}"
        decision = Decision(
            step=step,
            stop=stop,
            reason=reason,
            bound=bound,
            tolerance=self.tolerance,
            consecutive=self._streak,
            patience=self.patience,
            use=self.use,
            validation_error=None if self._last_val is None else self._last_val[1],
            validation_step=None if self._last_val is None else self._last_val[0],
            validation_tolerance=val_tol if self._last_val is not None else None,
        )
        self.history.append(decision)
        return decision


# --------------------------------------------------------------------------------------
# plots
# --------------------------------------------------------------------------------------
def _new_figure(figsize=(4.5, 4.0)):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path) -> Path:
    path = Path(os.fspath(path))
    fig.savefig(path, dpi=120, format="png")
    return path


def plot_parity(
    true,
    pred,
    path,
    *,
    std=None,
    label: str = "",
    units: str = "",
    title: str | None = None,
) -> Path:
    """Parity plot (predicted vs reference) with the y = x line, RMSE and MAE.

    Parameters
    ----------
    true, pred : array_like of the same shape (flattened)
    path : str or path-like
        PNG file to write.
    std : array_like, optional
        Predicted std; drawn as error bars.
    label, units : str
        Axis label and units, e.g. ``"force component"``, ``"eV/Å"``.
    title : str, optional

    Returns
    -------
    pathlib.Path
    """
    t = _finite_array("true", true).ravel()
    p = _finite_array("pred", pred).ravel()
    if t.shape != p.shape:
        raise ValueError(
            f"true and pred must have the same size, got {t.size} and {p.size}"
        )
    if std is not None:
        _check_error_std(p - t, np.asarray(std).ravel())
    fig = _new_figure()
    ax = fig.add_subplot()
    if std is not None:
        ax.errorbar(
            t,
            p,
            yerr=np.asarray(std, dtype=float).ravel(),
            fmt="none",
            ecolor="0.7",
            lw=0.5,
            zorder=1,
        )
    ax.scatter(t, p, s=6, alpha=0.6, zorder=2)
    lo, hi = float(min(t.min(), p.min())), float(max(t.max(), p.max()))
    pad = 0.05 * (hi - lo) if hi > lo else 1.0
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k--", lw=1, label="y = x")
    err = p - t
    u = f" {units}" if units else ""
    ax.text(
        0.03,
        0.97,
        f"RMSE {np.sqrt(np.mean(err**2)):.3g}{u}\nMAE {np.mean(np.abs(err)):.3g}{u}",
        transform=ax.transAxes,
        va="top",
        fontsize=8,
    )
    unit_txt = f" ({units})" if units else ""
    ax.set_xlabel(f"reference {label}{unit_txt}".replace("  ", " "))
    ax.set_ylabel(f"predicted {label}{unit_txt}".replace("  ", " "))
    ax.set_aspect("equal", adjustable="datalim")
    ax.legend(loc="lower right", fontsize=8)
    if title:
        ax.set_title(title)
    return _save(fig, path)


def plot_calibration_curve(error, std, path, *, title: str | None = None) -> Path:
    """Observed vs expected coverage of central Gaussian intervals (ideal: diagonal).

    Returns
    -------
    pathlib.Path
    """
    expected, observed = calibration_curve(error, std)
    area = _area_between(expected, observed - expected)
    fig = _new_figure()
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="ideal")
    ax.plot(expected, observed, lw=1.5, label=f"model (miscal. area {area:.3f})")
    ax.fill_between(expected, expected, observed, alpha=0.2)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("expected fraction in central interval")
    ax.set_ylabel("observed fraction")
    ax.legend(loc="upper left", fontsize=8)
    if title:
        ax.set_title(title)
    return _save(fig, path)


def plot_error_vs_uncertainty(
    error, std, path, *, n_bins: int = 10, units: str = "", title: str | None = None
) -> Path:
    """Binned RMSE vs RMV (equal-count std bins) with the ideal y = x line, log-log.

    Returns
    -------
    pathlib.Path
    """
    rmv, rmse, count = binned_rmse_rmv(error, std, n_bins)
    ence = float(np.mean(np.abs(rmv - rmse) / rmv))
    fig = _new_figure()
    ax = fig.add_subplot()
    pos = rmse > 0
    lo = float(min(rmv.min(), rmse[pos].min() if pos.any() else rmv.min()))
    hi = float(max(rmv.max(), rmse.max()))
    ax.plot(
        [lo / 1.5, hi * 1.5],
        [lo / 1.5, hi * 1.5],
        "k--",
        lw=1,
        label="ideal (RMSE = RMV)",
    )
    ax.plot(
        rmv, np.where(pos, rmse, np.nan), "o-", ms=4, label=f"binned (ENCE {ence:.3f})"
    )
    ax.set_xscale("log")
    ax.set_yscale("log")
    from matplotlib.ticker import NullFormatter

    for axis in (ax.xaxis, ax.yaxis):  # minor labels overlap when the data span < 1 decade
        axis.set_minor_formatter(NullFormatter())
    u = f" ({units})" if units else ""
    ax.set_xlabel(f"RMV = sqrt(mean σ²){u}")
    ax.set_ylabel(f"RMSE{u}")
    ax.legend(loc="upper left", fontsize=8)
    if title:
        ax.set_title(title)
    return _save(fig, path)


def plot_z_histogram(
    error, std, path, *, bins: int = 50, title: str | None = None
) -> Path:
    """Histogram of z = error/std with the standard normal density overlaid.

    Returns
    -------
    pathlib.Path
    """
    e, s = _check_error_std(error, std)
    bins = _check_positive_int("bins", bins)
    z = e / s
    fig = _new_figure()
    ax = fig.add_subplot()
    lim = max(4.0, float(np.quantile(np.abs(z), 0.995)))
    ax.hist(
        np.clip(z, -lim, lim),
        bins=bins,
        range=(-lim, lim),
        density=True,
        alpha=0.6,
        label=f"z (ZMS {np.mean(z**2):.3g})",
    )
    grid = np.linspace(-lim, lim, 400)
    ax.plot(grid, stats.norm.pdf(grid), "k-", lw=1.2, label="N(0, 1)")
    ax.set_xlabel("z = error / std")
    ax.set_ylabel("density")
    ax.legend(loc="upper right", fontsize=8)
    if title:
        ax.set_title(title)
    return _save(fig, path)


def plot_learning_curve(
    steps,
    val_error,
    oracle_calls,
    path,
    *,
    tolerance: float | None = None,
    units: str = "",
    title: str | None = None,
) -> Path:
    """Validation error (log scale) and cumulative oracle calls against learner step.

    Parameters
    ----------
    steps, val_error, oracle_calls : array_like of shape (n_checks,)
    path : str or path-like
    tolerance : float, optional
        Drawn as a horizontal line.

    Returns
    -------
    pathlib.Path
    """
    st = _finite_array("steps", steps).ravel()
    ve = _finite_array("val_error", val_error).ravel()
    oc = _finite_array("oracle_calls", oracle_calls).ravel()
    if not (st.size == ve.size == oc.size) or st.size == 0:
        raise ValueError(
            f"steps, val_error and oracle_calls must have the same non-zero length, "
            f"got {st.size}, {ve.size}, {oc.size}"
        )
    if np.any(ve < 0):
        raise ValueError("val_error must be non-negative")
    fig = _new_figure(figsize=(5.5, 4.0))
    ax = fig.add_subplot()
    ax.plot(st, ve, "o-", color="C0", ms=4, label="validation error")
    if tolerance is not None:
        ax.axhline(float(tolerance), color="C0", ls=":", lw=1, label="tolerance")
    if np.all(ve > 0):
        ax.set_yscale("log")
    u = f" ({units})" if units else ""
    ax.set_xlabel("step")
    ax.set_ylabel(f"validation error{u}", color="C0")
    ax2 = ax.twinx()
    ax2.step(st, oc, where="post", color="C1", label="oracle calls")
    ax2.set_ylabel("oracle calls (cumulative)", color="C1")
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(
        lines[0] + lines2[0], lines[1] + lines2[1], loc="upper center", fontsize=8
    )
    if title:
        ax.set_title(title)
    return _save(fig, path)
