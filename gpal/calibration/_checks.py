"""Argument checks shared by gpal.calibration's metrics, calibrators and stopping rule."""

from __future__ import annotations

import numbers

import numpy as np

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
