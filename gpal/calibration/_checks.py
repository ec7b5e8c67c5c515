"""Argument checks shared by gpal.calibration's metrics, calibrators and stopping rule."""

from __future__ import annotations

import numpy as np

from .._validation import check_option as _check_option  # noqa: F401,E402
from .._validation import check_positive_int as _check_positive_int  # noqa: F401,E402
from .._validation import finite_array as _finite_array  # noqa: E402


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
