"""Uncertainty metrics: is the predicted std the size of the error?

Everything acts on arrays: ``error = prediction - reference`` and the predicted standard
deviation ``std`` (same shape, strictly positive), z = error / std.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from scipy import stats

from ._checks import _check_alpha, _check_error_std, _check_positive_int, _finite_array

__all__ = ["uncertainty_metrics", "calibration_curve", "binned_rmse_rmv", "force_metrics",
           "energy_metrics"]

# Expected proportions of the calibration curve: uncertainty-toolbox's default grid
# (100 central-interval levels from 1 % to 99 %).
_CURVE_LEVELS = np.linspace(0.01, 0.99, 100)


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


class BinnedErrors(NamedTuple):
    """:func:`binned_rmse_rmv`'s result: the RMV (the plot's x) first, then the RMSE."""

    rmv: np.ndarray
    rmse: np.ndarray
    count: np.ndarray


def binned_rmse_rmv(error, std, n_bins: int = 10) -> BinnedErrors:
    """Equal-count bins of std: root mean variance vs root mean squared error per bin.

    Samples are sorted by std (stable) and split into ``min(n_bins, n)`` bins whose
    sizes differ by at most one (:func:`numpy.array_split`).

    Parameters
    ----------
    error : array_like
        ``prediction - reference``, any shape (flattened).
    std : array_like, same shape as ``error``
        Predicted standard deviations, same unit as ``error``.
    n_bins : int, default 10

    Returns
    -------
    BinnedErrors
        A named tuple, in this order (RMV first, as the x of an RMV-RMSE plot; use the
        names: ``b = binned_rmse_rmv(e, s); b.rmse``):

        rmv : ndarray of shape (min(n_bins, n),)
            ``sqrt(mean std²)`` per bin.
        rmse : ndarray of shape (min(n_bins, n),)
            ``sqrt(mean error²)`` per bin.
        count : ndarray of shape (min(n_bins, n),), int
    """
    e, s = _check_error_std(error, std)
    n_bins = min(_check_positive_int("n_bins", n_bins), e.size)
    order = np.argsort(s, kind="stable")
    groups = np.array_split(order, n_bins)
    rmv = np.array([math.sqrt(np.mean(s[g] ** 2)) for g in groups])
    rmse = np.array([math.sqrt(np.mean(e[g] ** 2)) for g in groups])
    count = np.array([g.size for g in groups], dtype=np.int64)
    return BinnedErrors(rmv, rmse, count)


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
        ``bin_rmv``, ``bin_rmse``, ``bin_count``: ndarrays of shape
        (min(n_bins, n),) of :func:`binned_rmse_rmv` (no bin is empty).
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
