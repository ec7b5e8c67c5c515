"""Argument checks shared by gpal.selection's geometry and design functions."""

from __future__ import annotations

import numbers
from typing import Union

import numpy as np

RandomState = Union[None, int, np.random.Generator]


from .._validation import check_option as _check_option  # noqa: F401,E402


def _check_finite(name: str, a: np.ndarray) -> None:
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or infinite values")


def _as_2d(name: str, X, *, min_rows: int = 1) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array, got shape {X.shape}")
    if X.shape[0] < min_rows or X.shape[1] < 1:
        raise ValueError(
            f"{name} must have at least {min_rows} row(s) and 1 column, got {X.shape}"
        )
    _check_finite(name, X)
    return np.ascontiguousarray(X)


def _check_n_select(n_select, n: int, *, name: str = "n_select") -> int:
    if isinstance(n_select, (bool, np.bool_)) or not isinstance(
        n_select, numbers.Integral
    ):
        raise ValueError(f"{name} must be an integer, got {n_select!r}")
    n_select = int(n_select)
    if not 0 <= n_select <= n:
        raise ValueError(
            f"{name} must be between 0 and the number of candidates ({n}), "
            f"got {n_select}"
        )
    return n_select


def _check_noise(noise_variance, n: int) -> np.ndarray:
    noise = np.asarray(noise_variance, dtype=np.float64)
    if noise.ndim == 0:
        noise = np.full(n, float(noise))
    elif noise.shape != (n,):
        raise ValueError(
            f"noise_variance must be a float or have shape ({n},), "
            f"got shape {noise.shape}"
        )
    _check_finite("noise_variance", noise)
    if np.any(noise <= 0):
        raise ValueError(
            "noise_variance must be strictly positive "
            "(information gain is infinite at zero noise)"
        )
    return noise


def _check_variance(name: str, variance, *, ndim: int = 1) -> np.ndarray:
    v = np.asarray(variance, dtype=np.float64)
    if v.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-D array, got shape {v.shape}")
    _check_finite(name, v)
    if np.any(v < 0):
        raise ValueError(
            f"{name} must be non-negative (a variance, not a signed quantity)"
        )
    return v


def _rng(random_state: RandomState) -> np.random.Generator:
    return np.random.default_rng(random_state)
