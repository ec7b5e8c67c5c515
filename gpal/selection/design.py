"""Choosing by Bayesian optimal design: information gain of labels under a GP posterior.

The information gain of one noisy label y = f(x) + ε, ε ~ N(0, σ_n²), about f is
``IG(x) = ½ log(1 + σ²(x) / σ_n²(x))``. For a batch S it is
``½ log det(I + Σ_n^{-1/2} K_SS Σ_n^{-1/2})``, submodular and monotone, so the greedy
batch (take the best candidate, condition the posterior on its not-yet-known label,
repeat) is within (1 - 1/e) of the best subset of its size (Nemhauser et al. 1978;
Krause & Guestrin 2005). A GP's variance does not depend on label values, so the whole
batch is chosen before any oracle call.

:func:`greedy_select` is gpal's one greedy engine: a score of every remaining candidate
under the current posterior, a pick, an observation, until the batch is full or a pick
scores under ``keep`` times the first. It drives
- :func:`greedy_batch` / :func:`greedy_batch_lowrank`: scalar candidates (array API:
  a dense covariance, a column callable, or ``A Aᵀ + diag(d)``);
- :meth:`gpal.SparseGP.select_frames`: whole frames, each a block of force (energy,
  stress) rows, under the model's own factorisation (the active learner's batches);
- :meth:`gpal.TargetSet.choose`: frames scored by a mix of global information gain and
  the variance they remove from a target set, with the weight of
  :class:`AcquisitionSchedule`.

Ties: the lowest index wins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ._checks import _as_2d, _check_finite, _check_n_select, _check_noise, _check_variance
from .._threads import policy as _thread_policy
from .._validation import check_number

__all__ = ["greedy_select", "information_gain", "LowRankCovariance", "greedy_batch",
           "greedy_batch_lowrank", "AcquisitionSchedule"]


@_thread_policy()
def greedy_select(
    n_candidates: int,
    n_select: int,
    scores: Callable[[np.ndarray], np.ndarray],
    observe: Callable[[int], None],
    *,
    keep: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy batch: pick the best-scoring candidate, observe it, rescore, repeat.

    Parameters
    ----------
    n_candidates : int
    n_select : int
        Largest batch (at most ``n_candidates``).
    scores : callable
        ``scores(indices) -> ndarray`` of the candidates ``indices`` (int array, those
        not picked yet) under the posterior as observed so far; larger is better.
    observe : callable
        ``observe(i)`` conditions the posterior on candidate i's label (its value is not
        needed). Not called after the last pick.
    keep : float >= 0 or None
        Stop early when a pick scores under ``keep`` times the first pick's score
        (e.g. 0.25: stop when what is left adds under a quarter of the first pick's
        score; whether a near-duplicate falls under it depends on the score). A first
        pick scoring 0 (or less) is kept alone: nothing after it can add more.

    Returns
    -------
    picks : ndarray of shape (k,), int64
        In pick order, ``k <= n_select``.
    values : ndarray of shape (k,)
        Each pick's score when it was picked.
    """
    n_candidates = check_number("n_candidates", n_candidates, low=0, integer=True)
    n_select = check_number("n_select", n_select, low=0, integer=True)
    if n_select > n_candidates:
        raise ValueError(f"n_select must be between 0 and the {n_candidates} candidates, got {n_select}")
    keep = check_number("keep", keep, low=0, none=True)
    available = np.ones(n_candidates, dtype=bool)
    picks, values = [], []
    for k in range(n_select):
        idx = np.flatnonzero(available)
        s = np.asarray(scores(idx), dtype=np.float64)
        if s.shape != idx.shape or not np.isfinite(s).all():
            raise ValueError(f"scores must return {len(idx)} finite values for {len(idx)} candidates, "
                             f"got shape {s.shape}" + ("" if np.isfinite(s).all() else " with NaN or inf"))
        j = int(np.argmax(s))  # ties: lowest index (idx is sorted)
        i, v = int(idx[j]), float(s[j])
        if keep is not None and picks and (v < keep * values[0] or values[0] <= 0.0):
            break
        picks.append(i)
        values.append(v)
        available[i] = False
        if k + 1 < n_select:
            observe(i)
    return np.asarray(picks, dtype=np.int64), np.asarray(values, dtype=np.float64)


def information_gain(variance, noise_variance) -> np.ndarray:
    """Information gain (nats) of one noisy label per candidate, ``½ log(1 + σ²/σ_n²)``.

    Parameters
    ----------
    variance : array_like of shape (n,)
        Posterior (latent) variance σ² of each candidate, non-negative.
    noise_variance : float or array_like of shape (n,)
        Label-noise variance σ_n², strictly positive.

    Returns
    -------
    ndarray of shape (n,)
    """
    v = _check_variance("variance", variance)
    noise = _check_noise(noise_variance, v.shape[0])
    return 0.5 * np.log1p(v / noise)



@dataclass(frozen=True)
class LowRankCovariance:
    """A covariance ``C = factor @ factor.T + diag(diagonal)`` kept in factored form.

    Parameters
    ----------
    factor : ndarray of shape (n, r)
        E.g. ``K_nm L_mm^{-T}`` for a Nyström/DTC posterior, or posterior samples'
        deviations.
    diagonal : ndarray of shape (n,) or None
        Independent extra variance per candidate (e.g. the FITC/local correction); None
        is 0.
    """

    factor: np.ndarray
    diagonal: np.ndarray | None = None

    def __post_init__(self):
        A = _as_2d("factor", self.factor)
        object.__setattr__(self, "factor", A)
        if self.diagonal is None:
            d = np.zeros(A.shape[0])
        else:
            d = _check_variance("diagonal", self.diagonal)
            if d.shape != (A.shape[0],):
                raise ValueError(
                    f"diagonal must have shape ({A.shape[0]},), got {d.shape}"
                )
        object.__setattr__(self, "diagonal", d)

    @property
    def shape(self) -> tuple[int, int]:
        n = self.factor.shape[0]
        return (n, n)

    def diag(self) -> np.ndarray:
        """Variances, ndarray of shape (n,)."""
        return np.einsum("ij,ij->i", self.factor, self.factor) + self.diagonal

    def to_dense(self) -> np.ndarray:
        """The full matrix, ndarray of shape (n, n) (for tests and small problems)."""
        return self.factor @ self.factor.T + np.diag(self.diagonal)


class _DensePosterior:
    """Posterior covariance after noisy observations, by incremental Cholesky.

    After observing candidate i with noise σ_i²,
    ``C <- C - C[:, i] C[i, :] / (C[i, i] + σ_i²)``. This is kept as ``C = C0 - L Lᵀ``
    with one new column ``l = C[:, i] / sqrt(C[i, i] + σ_i²)`` per observation, so each
    step costs one column of ``C0`` plus O(n k).
    """

    def __init__(self, column: Callable[[int], np.ndarray], diag: np.ndarray):
        self._column0 = column
        self.variance = diag.astype(np.float64, copy=True)
        self._L = np.empty((diag.shape[0], 0))
        self._k = 0

    def reserve(self, n_max: int) -> None:
        self._L = np.empty((self.variance.shape[0], n_max))
        self._k = 0

    def column(self, i: int) -> np.ndarray:
        col = np.asarray(self._column0(i), dtype=np.float64)
        if col.shape != self.variance.shape:
            raise ValueError(
                f"covariance column {i} has shape {col.shape}, "
                f"expected {self.variance.shape}"
            )
        k = self._k
        if k:
            col = col - self._L[:, :k] @ self._L[i, :k]
        return col

    def condition(self, i: int, noise_i: float, col: np.ndarray) -> None:
        # the conditional variance cannot be negative; round-off makes it so once the
        # covariance's rank is used up, and a noise below ~1e-15 of it no longer covers that
        l = col / math.sqrt(max(col[i], 0.0) + noise_i)  # noqa: E741
        self._L[:, self._k] = l
        self._k += 1
        self.variance -= l * l
        np.maximum(self.variance, 0.0, out=self.variance)


class _LowRankPosterior:
    """Posterior of ``f = A w + e`` (w ~ N(0, I_r), e ~ N(0, diag(d))) in weight space.

    Observing candidate i adds a rank-1 update to the r x r weight covariance S:
    ``g = S a_i``, ``s = a_iᵀ g + d_i + σ_i²``, ``S <- S - g gᵀ/s``, and every variance
    drops by ``(A g)²/s``; O(n r + r²) per observation. For candidates not yet observed
    this is exactly the dense update (e_x is independent of everything observed).
    """

    def __init__(self, A: np.ndarray, d: np.ndarray):
        self._A = A
        self._d = d
        self._S = np.eye(A.shape[1])
        self.variance = np.einsum("ij,ij->i", A, A) + d
        self._g = None

    def reserve(self, n_max: int) -> None:
        pass

    def column(self, i: int) -> np.ndarray:
        g = self._S @ self._A[i]
        col = self._A @ g
        col[i] += self._d[i]
        self._g = g
        return col

    def condition(self, i: int, noise_i: float, col: np.ndarray) -> None:
        s = col[i] + noise_i
        g = self._g
        self.variance -= col * col / s
        np.maximum(self.variance, 0.0, out=self.variance)
        self._S -= np.outer(g, g) / s


def _make_posterior(cov, diag, name: str):
    """Wrap a dense matrix, a LowRankCovariance or a column callable as a posterior."""
    if diag is not None and not callable(cov):
        raise ValueError(f"diag= is only used with a callable {name}; got both")
    if isinstance(cov, LowRankCovariance):
        return _LowRankPosterior(cov.factor, cov.diagonal)
    if callable(cov):
        if diag is None:
            raise ValueError(
                f"a callable {name} needs diag= (the prior variances, shape (n,))"
            )
        return _DensePosterior(cov, _check_variance("diag", diag))
    C = np.asarray(cov, dtype=np.float64)
    if C.ndim != 2 or C.shape[0] != C.shape[1] or C.shape[0] < 1:
        raise ValueError(
            f"{name} must be a square (n, n) array, a LowRankCovariance or a "
            f"callable; got shape {C.shape}"
        )
    _check_finite(name, C)
    d = np.diag(C).copy()
    if np.any(d < 0):
        raise ValueError(f"{name} has negative diagonal entries")
    probe = np.unique(
        np.linspace(0, C.shape[0] - 1, min(C.shape[0], 64)).astype(np.int64)
    )
    block = C[np.ix_(probe, probe)]
    if not np.allclose(
        block, block.T, rtol=1e-8, atol=1e-12 * max(1.0, float(d.max()))
    ):
        raise ValueError(f"{name} must be symmetric")
    return _DensePosterior(lambda i: C[:, i], d)


def _greedy_scalar(post, noise: np.ndarray, n_select: int, return_gains: bool):
    """:func:`greedy_select` on scalar candidates with a _DensePosterior/_LowRankPosterior."""
    post.reserve(n_select)
    picks, gains = greedy_select(
        noise.shape[0], n_select,
        lambda idx: 0.5 * np.log1p(np.maximum(post.variance[idx], 0.0) / noise[idx]),
        lambda i: post.condition(i, noise[i], post.column(i)),
    )
    return (picks, gains) if return_gains else picks


@_thread_policy()
def greedy_batch(
    cov,
    noise_variance,
    n_select: int,
    *,
    diag=None,
    return_gains: bool = False,
):
    """Greedy batch selection maximising the information gain (log-det) of the batch.

    Each step picks the candidate with the largest posterior variance-to-noise ratio and
    conditions the posterior on its (not yet known) label,
    ``C <- C - C[:, i] C[i, :] / (C[i, i] + σ_n,i²)``, implemented as an incremental
    Cholesky factor (one covariance column and O(n k) work per pick). This is the greedy
    maximiser of ``½ log det(I + Σ_n^{-1} K_SS)``, which for a constant noise σ_n²
    equals ``½ log det(K_SS + σ_n² I) - |S| log σ_n``; by submodularity the result is
    within (1 - 1/e) of the best subset of the same size. Candidates are picked at most
    once.

    Parameters
    ----------
    cov : ndarray of shape (n, n), LowRankCovariance, or callable
        Posterior covariance of the candidates' latent values (e.g. of per-atom energies
        or force components). A callable ``cov(i) -> ndarray (n,)`` returns column i and
        then ``diag`` is required; this avoids forming the n x n matrix.
    noise_variance : float or array_like of shape (n,)
        Label-noise variance of each candidate, strictly positive.
    n_select : int
    diag : array_like of shape (n,), optional
        Prior variances, required when ``cov`` is callable.
    return_gains : bool, default False
        Also return the marginal information gain (nats) of each pick; they sum to the
        batch's information gain and are non-increasing.

    Returns
    -------
    indices : ndarray of shape (n_select,), int64, in pick order (ties: lowest index)
    gains : ndarray of shape (n_select,), only if ``return_gains``
    """
    post = _make_posterior(cov, diag, "cov")
    n = post.variance.shape[0]
    n_select = _check_n_select(n_select, n)
    noise = _check_noise(noise_variance, n)
    return _greedy_scalar(post, noise, n_select, return_gains)


@_thread_policy()
def greedy_batch_lowrank(
    A,
    noise_variance,
    n_select: int,
    *,
    diag=None,
    return_gains: bool = False,
):
    """:func:`greedy_batch` for ``cov = A Aᵀ + diag(d)``, in O(n r + r²) per pick.

    The posterior is carried in the r-dimensional weight space of the factor (see
    :class:`LowRankCovariance`), so no n x n matrix and no O(n k) Cholesky columns are
    formed; the picks equal the dense version's.

    Parameters
    ----------
    A : array_like of shape (n, r)
    noise_variance : float or array_like of shape (n,)
    n_select : int
    diag : array_like of shape (n,), optional
        The independent part d (default 0).
    return_gains : bool, default False

    Returns
    -------
    indices : ndarray of shape (n_select,), int64
    gains : ndarray of shape (n_select,), only if ``return_gains``
    """
    cov = LowRankCovariance(A, diag)
    n = cov.factor.shape[0]
    n_select = _check_n_select(n_select, n)
    noise = _check_noise(noise_variance, n)
    return _greedy_scalar(_LowRankPosterior(cov.factor, cov.diagonal), noise, n_select, return_gains)


class AcquisitionSchedule:
    """Exploration weight of targeted acquisition (:class:`gpal.TargetSet`), falling with uncertainty.

    With u the current global uncertainty (e.g. the mean calibrated force std on the
    sampled frames) and u₀ the reference (the first value passed to :meth:`update`,
    unless given)::

        r = u / u₀,    w(u) = w_floor + (w_start - w_floor) · min(r, 1) ** exponent

    so w = w_start while the uncertainty is at (or above) its initial level, falls
    toward w_floor as it shrinks (w never decreases as u grows). It follows the
    current uncertainty (w rises again if the sampler finds an uncertain region);
    ``exponent > 1`` keeps exploring longer, ``exponent < 1`` targets sooner.

    Parameters
    ----------
    w_start : float in [0, 1], default 1.0
    w_floor : float in [0, w_start], default 0.2
    exponent : float > 0, default 1.0
    reference : float > 0 or None, default None
        u₀; None takes the first value given to :meth:`update`.

    Attributes
    ----------
    history : list of dict
        One entry per :meth:`update`: ``{"uncertainty", "ratio", "weight"}``.
    """

    def __init__(
        self,
        w_start: float = 1.0,
        w_floor: float = 0.2,
        *,
        exponent: float = 1.0,
        reference: float | None = None,
    ):
        w_start = float(w_start)
        w_floor = float(w_floor)
        if not 0.0 <= w_floor <= w_start <= 1.0:
            raise ValueError(
                "need 0 <= w_floor <= w_start <= 1, "
                f"got w_start={w_start}, w_floor={w_floor}"
            )
        exponent = float(exponent)
        if not (np.isfinite(exponent) and exponent > 0):
            raise ValueError(f"exponent must be a positive number, got {exponent}")
        if reference is not None:
            reference = self._check_u(reference, "reference")
            if reference == 0:
                raise ValueError("reference must be strictly positive")
        self.w_start = w_start
        self.w_floor = w_floor
        self.exponent = exponent
        self.reference = reference
        self.history: list[dict] = []

    @staticmethod
    def _check_u(u, name="uncertainty") -> float:
        u = float(u)
        if not (np.isfinite(u) and u >= 0):
            raise ValueError(f"{name} must be finite and non-negative, got {u}")
        return u

    def weight(self, uncertainty: float) -> float:
        """w for a given global uncertainty (needs a reference; does not record).

        Parameters
        ----------
        uncertainty : float
            Global uncertainty u >= 0, in the unit of ``reference`` (e.g. eV/Å for a
            force std).

        Returns
        -------
        float
            ``w_floor + (w_start - w_floor) · min(u / reference, 1) ** exponent``, in
            [w_floor, w_start].

        Raises
        ------
        ValueError
            ``uncertainty`` is negative or not finite, or no reference is set yet.
        """
        u = self._check_u(uncertainty)
        if self.reference is None:
            raise ValueError(
                "no reference uncertainty yet: call update() first or pass reference="
            )
        r = min(u / self.reference, 1.0)
        return self.w_floor + (self.w_start - self.w_floor) * r**self.exponent

    def update(self, uncertainty: float) -> float:
        """Record a new global uncertainty and return the weight to use now.

        The first call sets ``reference`` to its uncertainty when none was given; every
        call appends ``{"uncertainty", "ratio", "weight"}`` to :attr:`history`.

        Parameters
        ----------
        uncertainty : float
            Global uncertainty u >= 0 (e.g. eV/Å for a force std).

        Returns
        -------
        float
            :meth:`weight` of ``uncertainty``, in [w_floor, w_start].

        Raises
        ------
        ValueError
            ``uncertainty`` is negative or not finite, or 0 when it would become the
            reference.
        """
        u = self._check_u(uncertainty)
        if self.reference is None:
            if u == 0:
                raise ValueError(
                    "the first (reference) uncertainty must be strictly positive"
                )
            self.reference = u
        w = self.weight(u)
        self.history.append(
            {"uncertainty": u, "ratio": u / self.reference, "weight": w}
        )
        return w

    def __repr__(self) -> str:
        return (
            f"AcquisitionSchedule(w_start={self.w_start}, w_floor={self.w_floor}, "
            f"exponent={self.exponent}, reference={self.reference})"
        )


# --------------------------------------------------------------------------------------
