"""Sparse Gaussian-process regression on precomputed kernel blocks (no ASE here).

Model (DTC / SoR, as in GAP and FLARE): the latent function has weights on ``M`` sparse
(inducing) points; observation ``i`` is a linear functional of it with kernel row
``K_nm[i]`` and Gaussian noise ``noise_std[i]``::

    y ~ N(0, Q + Λ),   Q = K_nm K_mm⁻¹ K_mn,   Λ = diag(noise_std²)

Posterior over the sparse weights (``Σ`` is M×M)::

    Σ⁻¹ = K_mm + K_mn Λ⁻¹ K_nm,   alpha = Σ K_mn Λ⁻¹ y,   mean(s) = K_sm alpha

Solved like GAP and FLARE, by a QR factorisation of the stacked matrix
(never forming and inverting ``K_mn Λ⁻¹ K_nm``)::

    A = [Λ^{-1/2} K_nm ; L_mmᵀ]  (n_obs + M, M),    b = [Λ^{-1/2} y ; 0]
    A = Q R  ->  RᵀR = Σ⁻¹,   alpha = R⁻¹ Qᵀb

where ``L_mm`` is the lower Cholesky factor of ``K_mm + jitter * mean(diag K_mm) * I``.
``Qᵀb`` is obtained by factorising ``[A | b]`` (Q itself is never formed), and ``R`` is
normalised to a positive diagonal, which makes it unique. The solver factorises the same
problem whitened by ``L_mm`` (``A = B L_mmᵀ``, ``B = [Λ^{-1/2} K_nm L_mm⁻ᵀ ; I]``,
``R = R_w L_mmᵀ``): ``B`` has singular values >= 1, so its factor stays well conditioned
when ``R``'s condition number reaches 1e9-1e10, and appending sparse points appends
columns to ``B`` without changing the old ones (see :meth:`SparseGPSolver.add_sparse`).

Predictive variances of any linear functional with kernel row ``a`` (shape (M,)):

* SoR:      ``aᵀ Σ a``                          (:meth:`SparseGPSolver.var_sor`)
* Nyström:  ``aᵀ K_mm⁻¹ a``                      (:meth:`SparseGPSolver.var_nystrom`)
* DTC:      ``k_ss - aᵀ K_mm⁻¹ a + aᵀ Σ a``     (:meth:`SparseGPSolver.predict_var`)

SoR alone goes to zero far from the data; DTC returns to the prior there, which is
what active learning needs.

References
----------
Quiñonero-Candela & Rasmussen, JMLR 6, 1939 (2005) (SoR/DTC); Bartók & Csányi, Int. J.
Quantum Chem. 115, 1051 (2015) (GAP); Vandermause et al., npj Comput. Mater. 6, 20
(2020) (FLARE).
"""

from __future__ import annotations

import numbers
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import scipy.linalg
import scipy.optimize

from .exceptions import GpalError, NotFittedError

__all__ = [
    "SparseGPSolver",
    "NotPositiveDefiniteError",
    "HyperparameterResult",
    "optimize_hyperparameters",
]

_LOG_2PI = float(np.log(2.0 * np.pi))


class NotPositiveDefiniteError(GpalError, np.linalg.LinAlgError):
    """The sparse kernel matrix K_mm is not positive definite (even with jitter).

    Derives from ``numpy.linalg.LinAlgError`` (== ``scipy.linalg.LinAlgError``), so code
    that catches linear-algebra failures catches it too.
    """


# ----------------------------------------------------------------------------- helpers
def _vector(v, name: str, n: int | None = None) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    if v.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {v.shape}")
    if n is not None and v.shape[0] != n:
        raise ValueError(f"{name} must have length {n}, got {v.shape[0]}")
    if not np.all(np.isfinite(v)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return v


def _matrix(A, name: str, n_cols: int | None = None) -> np.ndarray:
    A = np.asarray(A, dtype=np.float64)
    if A.ndim == 1 and n_cols is not None and A.shape[0] == n_cols:
        A = A[None, :]
    if A.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {A.shape}")
    if n_cols is not None and A.shape[1] != n_cols:
        raise ValueError(
            f"{name} must have {n_cols} columns (n_sparse), got shape {A.shape}"
        )
    if not np.all(np.isfinite(A)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return A


def _noise(noise_std, n: int) -> np.ndarray:
    s = _vector(noise_std, "noise_std", n)
    if np.any(s <= 0.0):
        raise ValueError("noise_std must be strictly positive for every observation")
    return s


def _jittered_cholesky(K_mm: np.ndarray, jitter: float) -> tuple[np.ndarray, float]:
    """Lower Cholesky factor of ``K_mm + jitter * mean(diag) * I``, and the added value.

    Raises :class:`NotPositiveDefiniteError` with advice when it fails.
    """
    M = K_mm.shape[0]
    if M == 0:
        return np.zeros((0, 0)), 0.0
    added = float(jitter) * float(np.mean(np.diag(K_mm)))
    try:
        L = scipy.linalg.cholesky(
            K_mm + added * np.eye(M), lower=True, check_finite=False
        )
    except np.linalg.LinAlgError as exc:
        raise NotPositiveDefiniteError(
            f"The sparse kernel matrix K_mm ({M} x {M}) is not positive definite, "
            f"even with relative jitter {jitter:g} added to its diagonal ({exc}). "
            "This usually means duplicate or nearly identical sparse environments, "
            "or a kernel that is too smooth for them. Try: removing near-duplicate "
            "sparse points (e.g. farthest-point or CUR selection), gradually "
            "increasing 'jitter' (e.g. 1e-8, 1e-6), or a sharper kernel (larger "
            "zeta, shorter length_scale)."
        ) from None
    return L, added


def _positive_diagonal(R: np.ndarray, n_cols: int) -> None:
    """Flip row signs in place so that ``diag(R[:n_cols, :n_cols]) > 0``."""
    d = np.sign(np.diag(R)[:n_cols])
    d[d == 0] = 1.0
    R[:n_cols] *= d[:, None]


def _triangular_qr(stacked: np.ndarray, M: int) -> tuple[np.ndarray, np.ndarray, float]:
    """R, Qᵀb and residual² of the least-squares problem ``stacked = [A | b]``.

    ``stacked`` (rows, M+1) is overwritten. Q is never formed (LAPACK geqrf only).
    """
    rows = stacked.shape[0]
    if rows == 0:
        return np.zeros((M, M)), np.zeros(M), 0.0
    (_, _), Raug = scipy.linalg.qr(
        stacked, mode="raw", overwrite_a=True, check_finite=False
    )
    Raug = np.array(Raug[: M + 1], copy=True)
    if Raug.shape[0] < M:  # fewer rows than unknowns (only possible with M = 0)
        raise np.linalg.LinAlgError("rank-deficient least-squares problem")
    _positive_diagonal(Raug, M)
    R = np.ascontiguousarray(Raug[:M, :M])
    Qtb = np.array(Raug[:M, M])
    res2 = float(Raug[M, M] ** 2) if Raug.shape[0] > M else 0.0
    return R, Qtb, res2


def _triangular_update(Raug: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Upper-triangular factor of ``[Raug ; rows]`` (Raug upper triangular, (p, p)).

    LAPACK ``tpqrt`` (QR of a triangle stacked on a block) costs ~2 n_rows p² flops,
    without the ~4/3 p³ a general QR of the stacked matrix spends on the triangle.
    """
    p = Raug.shape[0]
    a = np.array(Raug, order="F", copy=True)
    b = np.array(rows, order="F", copy=True)
    a, _, _, info = scipy.linalg.lapack.dtpqrt(0, max(1, min(p, 32)), a, b)
    if info != 0:  # pragma: no cover - LAPACK argument errors only
        raise np.linalg.LinAlgError(f"tpqrt failed (info={info})")
    return np.triu(a)


# ----------------------------------------------------------------------------- solver
class SparseGPSolver:
    """Sparse GP (DTC/SoR) solver on kernel blocks, factorised by QR.

    The constructor takes no arguments; :meth:`fit` does the work. Observations may be
    appended with :meth:`update` and sparse points with :meth:`add_sparse` without the
    caller recomputing existing kernel blocks: the solver keeps the whitened rows
    ``Φ = K_nm L_mm⁻ᵀ``, ``y`` and the noise (``n_obs x M`` memory), unless told not to
    (:meth:`drop_rows`, :meth:`fit_blocks`).

    Factorisation (whitened by the Cholesky factor of ``K_mm``, as in the module
    docstring but better conditioned): with ``u = L_mmᵀ alpha`` the least-squares problem
    is ``min |Λ^{-1/2}(y - Φ u)|² + |u|²``, i.e. the QR factorisation of

        B = [Λ^{-1/2} Φ ; I]  (n_obs + M, M)  ->  B = Q_B R_w,   u = R_w⁻¹ Q_Bᵀ b

    and ``R = R_w L_mmᵀ`` is the (unique, positive-diagonal) factor of the unwhitened
    stacked matrix ``[Λ^{-1/2} K_nm ; L_mmᵀ]``. The singular values of ``B`` are >= 1, so
    ``cond(R_w)`` stays moderate where ``cond(R)`` reaches 1e9-1e10 (the jitter
    direction of ``K_mm``); the column update of :meth:`add_sparse` relies on it, and the
    old whitened columns do not change when sparse points are appended.

    Attributes
    ----------
    alpha_ : ndarray of shape (n_sparse,)
        Weights of the posterior mean, ``mean(s) = K_sm @ alpha_``.
    R_ : ndarray of shape (n_sparse, n_sparse)
        Upper-triangular factor with positive diagonal, ``R_ᵀ R_ = Σ⁻¹`` (formed from
        ``R_w_`` on access, O(n_sparse³), then cached).
    R_w_ : ndarray of shape (n_sparse, n_sparse)
        Upper-triangular factor of the whitened stacked matrix, ``R_ = R_w_ L_mm_ᵀ``.
    Qtb_ : ndarray of shape (n_sparse,)
        ``Qᵀ b`` of the stacked least-squares problem (``alpha_ = R_⁻¹ Qtb_``; the same
        vector for the whitened problem, ``L_mm_ᵀ alpha_ = R_w_⁻¹ Qtb_``).
    res2_ : float
        Squared residual of the stacked least-squares problem,
        ``|Λ^{-1/2}(y - K_nm alpha)|² + |L_mmᵀ alpha|²``.
    L_mm_ : ndarray of shape (n_sparse, n_sparse)
        Lower Cholesky factor of ``K_mm_ + jitter_value_ * I``.
    K_mm_ : ndarray of shape (n_sparse, n_sparse)
        Sparse kernel matrix as given (without jitter).
    Phi_ : ndarray of shape (n_obs, n_sparse) or None
        Whitened observation rows ``K_nm L_mm⁻ᵀ`` (None when not kept).
    K_nm_ : ndarray of shape (n_obs, n_sparse) or None
        Observation kernel rows, ``Phi_ L_mm_ᵀ`` (formed on access, O(n_obs n_sparse²)).
    y_ : ndarray of shape (n_obs,)
    noise_std_ : ndarray of shape (n_obs,)
    jitter_ : float
        Relative jitter; ``jitter_value_ = jitter_ * mean(diag(K_mm_))`` was added.
    keep_rows_ : bool
    n_projected_ : int
        Sparse points added with projected columns (:meth:`add_sparse` with None)
        since the last fit; 0 when every column is exact.
    n_obs_, n_sparse_ : int

    Examples
    --------
    >>> import numpy as np
    >>> from gpal.kernels import SquaredExponential
    >>> from gpal.sparse_gp import SparseGPSolver
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(20, 3)); Z = X[:5]
    >>> k = SquaredExponential(length_scale=0.7)
    >>> y = np.sin(X[:, 0])
    >>> gp = SparseGPSolver().fit(k(Z), k(X, Z), y, np.full(20, 0.1))
    >>> mean = gp.predict_mean(k(X[:2], Z))
    >>> std = np.sqrt(gp.predict_var(k(X[:2], Z), k.diag(X[:2])))
    >>> mean.shape, bool(np.all(std >= 0))
    ((2,), True)
    """

    def __init__(self) -> None:
        self._P = None  # whitened-row buffer (capacity_rows, capacity_cols); None: not kept
        self._y = np.zeros(0)
        self._s = np.zeros(0)
        self.keep_rows_ = True

    def __repr__(self) -> str:
        if hasattr(self, "alpha_"):
            return f"SparseGPSolver(n_obs={self.n_obs_}, n_sparse={self.n_sparse_})"
        return "SparseGPSolver()"

    # -- stored observations ------------------------------------------------------------
    # The rows live in a buffer with spare capacity in both directions, so that appending
    # a frame's rows or a few sparse columns costs O(new entries), not a copy of all rows.
    @property
    def Phi_(self) -> np.ndarray | None:
        if self._P is None:
            return None
        return self._P[: len(self._y), : self.K_mm_.shape[0]]

    @property
    def K_nm_(self) -> np.ndarray | None:
        """Observation rows ``(n_obs, n_sparse)`` (None if not kept); formed on access."""
        if self._P is None:
            return None
        return self.Phi_ @ self.L_mm_.T

    @property
    def y_(self) -> np.ndarray:
        return self._y

    @property
    def noise_std_(self) -> np.ndarray:
        return self._s

    @property
    def R_(self) -> np.ndarray:
        cache = getattr(self, "_R_cache", None)
        if cache is None or cache[0] is not self.R_w_ or cache[1] is not self.L_mm_:
            R = self.R_w_ @ self.L_mm_.T if self.R_w_.size else np.zeros_like(self.R_w_)
            cache = (self.R_w_, self.L_mm_, np.triu(R))
            self._R_cache = cache
        return cache[2]

    def _whiten(self, K: np.ndarray) -> np.ndarray:
        """``K L_mm⁻ᵀ`` for rows ``K`` (n, M)."""
        if K.shape[0] == 0 or K.shape[1] == 0:
            return np.array(K, dtype=np.float64)
        return scipy.linalg.solve_triangular(
            self.L_mm_, K.T, lower=True, check_finite=False
        ).T

    def _set_rows(self, Phi, y, s, keep: bool) -> None:
        self._y = np.array(y, dtype=np.float64, copy=True)
        self._s = np.array(s, dtype=np.float64, copy=True)
        self.keep_rows_ = bool(keep)
        self._P = np.array(Phi, dtype=np.float64, order="C", copy=True) if keep else None

    def _append_rows(self, P_new: np.ndarray, y_new: np.ndarray, s_new: np.ndarray) -> None:
        n, k = len(self._y), len(y_new)
        if self._P is not None:
            M = self.K_mm_.shape[0]
            cap_n, cap_m = self._P.shape
            if n + k > cap_n:
                grown = np.empty((max(n + k, cap_n + cap_n // 4, 64), cap_m))
                grown[:n] = self._P[:n]
                self._P = grown
            self._P[n: n + k, :M] = P_new
        self._y = np.concatenate([self._y, y_new])
        self._s = np.concatenate([self._s, s_new])

    def _append_columns(self, P_cols: np.ndarray) -> None:
        if self._P is None:
            return
        n, M = len(self._y), self.K_mm_.shape[0]
        k = P_cols.shape[1]
        cap_n, cap_m = self._P.shape
        if M + k > cap_m:
            grown = np.empty((cap_n, max(M + k, M + max(M // 4, 16))))
            grown[:n, :M] = self._P[:n, :M]
            self._P = grown
        self._P[:n, M: M + k] = P_cols

    def drop_rows(self) -> "SparseGPSolver":
        """Stop keeping the observation rows (frees ``n_obs x n_sparse`` floats).

        Weights, variances and the log marginal likelihood (value) do not need them;
        :meth:`add_sparse` and the likelihood gradient do (the caller refits instead).
        """
        self._P = None
        self.keep_rows_ = False
        return self

    # -- fitting ---------------------------------------------------------------------
    def fit(
        self, K_mm, K_nm, y, noise_std, *, jitter: float = 1e-10
    ) -> "SparseGPSolver":
        """Factorise the sparse GP for the given kernel blocks.

        Parameters
        ----------
        K_mm : array_like of shape (n_sparse, n_sparse)
            Kernel between sparse points (symmetric positive semi-definite).
        K_nm : array_like of shape (n_obs, n_sparse)
            Kernel rows of the observations (energy, force, stress functionals).
        y : array_like of shape (n_obs,)
            Observed values.
        noise_std : array_like of shape (n_obs,)
            Noise standard deviation of each observation (> 0).
        jitter : float, default 1e-10
            Relative jitter: ``jitter * mean(diag(K_mm))`` is added to the diagonal of
            ``K_mm`` before its Cholesky factorisation.

        Returns
        -------
        self

        Raises
        ------
        NotPositiveDefiniteError
            ``K_mm`` is not positive definite even with the jitter (the message says
            what to try).
        """
        K_mm = self._check_k_mm(K_mm)
        M = K_mm.shape[0]
        K_nm = _matrix(K_nm, "K_nm", M)
        n = K_nm.shape[0]
        y = _vector(y, "y", n)
        s = _noise(noise_std, n)
        jitter = self._check_jitter(jitter)
        L, added = _jittered_cholesky(K_mm, jitter)
        self.jitter_ = jitter
        self.K_mm_ = np.array(K_mm, copy=True)
        self.L_mm_, self.jitter_value_ = L, added
        self._set_rows(self._whiten(K_nm), y, s, keep=True)
        self._factorize()
        self.n_projected_ = 0
        return self

    @staticmethod
    def _check_k_mm(K_mm) -> np.ndarray:
        K_mm = _matrix(K_mm, "K_mm")
        M = K_mm.shape[0]
        if K_mm.shape != (M, M):
            raise ValueError(f"K_mm must be square, got shape {K_mm.shape}")
        scale = max(float(np.max(np.abs(K_mm), initial=0.0)), np.finfo(float).tiny)
        if not np.allclose(K_mm, K_mm.T, rtol=0.0, atol=1e-10 * scale):
            raise ValueError("K_mm must be symmetric")
        return K_mm

    @staticmethod
    def _check_jitter(jitter) -> float:
        jitter = float(jitter)
        if not (jitter >= 0.0 and np.isfinite(jitter)):
            raise ValueError(f"jitter must be a finite number >= 0, got {jitter!r}")
        return jitter

    def fit_blocks(
        self, K_mm, blocks, *, jitter: float = 1e-10, keep_rows: bool = True
    ) -> "SparseGPSolver":
        """Factorise block by block: the stacked matrix is never formed whole.

        Starts from the factor of the prior block (the identity, in whitened
        coordinates) and folds in each block of observations by a Householder QR update
        of ``[[R_w, Qᵀb], [0, ρ], [Λ_B^{-1/2} Φ_B, Λ_B^{-1/2} y_B]]`` (LAPACK ``tpqrt``:
        ~2 n_B n_sparse² flops per block, as a one-shot QR spends per row). Peak
        memory is that of the largest block plus O(n_sparse²), and the rows are kept only
        with ``keep_rows``. The result equals :meth:`fit` on the concatenated blocks up
        to rounding.

        Parameters
        ----------
        K_mm : array_like of shape (n_sparse, n_sparse)
        blocks : iterable of (K_nm_block, y_block, noise_block)
            Shapes (n_b, n_sparse), (n_b,), (n_b,), in observation order.
        jitter : float, default 1e-10
        keep_rows : bool, default True
            Keep the (whitened) rows, as :meth:`add_sparse` and the likelihood gradient
            need.

        Returns
        -------
        self
        """
        K_mm = self._check_k_mm(K_mm)
        M = K_mm.shape[0]
        jitter = self._check_jitter(jitter)
        L, added = _jittered_cholesky(K_mm, jitter)
        self.jitter_ = jitter
        self.K_mm_ = np.array(K_mm, copy=True)
        self.L_mm_, self.jitter_value_ = L, added
        self._set_rows(np.empty((64, M)), np.zeros(0), np.zeros(0), keep=keep_rows)
        self.R_w_ = np.eye(M)
        self.Qtb_ = np.zeros(M)
        self.res2_ = 0.0
        for K_b, y_b, s_b in blocks:
            self._fold_rows(K_b, y_b, s_b)
        self._set_alpha()
        self.n_projected_ = 0
        return self

    def _fold_rows(self, K_new, y_new, noise_new) -> None:
        """QR update of the factor with new rows; appends them to the stored data."""
        M = self.K_mm_.shape[0]
        K_new = _matrix(K_new, "K_nm_new", M)
        k = K_new.shape[0]
        y_new = _vector(y_new, "y_new", k)
        s_new = _noise(noise_new, k)
        if k == 0:
            return
        P_new = self._whiten(K_new)
        Raug = np.zeros((M + 1, M + 1))
        Raug[:M, :M] = self.R_w_
        Raug[:M, M] = self.Qtb_
        Raug[M, M] = np.sqrt(max(self.res2_, 0.0))
        block = np.empty((k, M + 1))
        block[:, :M] = P_new / s_new[:, None]
        block[:, M] = y_new / s_new
        Raug = _triangular_update(Raug, block)
        _positive_diagonal(Raug, M)
        self.R_w_ = np.ascontiguousarray(Raug[:M, :M])
        self.Qtb_ = np.array(Raug[:M, M])
        self.res2_ = float(Raug[M, M] ** 2)
        self._append_rows(P_new, y_new, s_new)

    def _factorize(self) -> None:
        """QR of the whitened stacked matrix ``[Λ^{-1/2}Φ | Λ^{-1/2}y ; I | 0]``."""
        M = self.K_mm_.shape[0]
        P = self.Phi_
        n = P.shape[0]
        stacked = np.zeros((n + M, M + 1))
        stacked[:n, :M] = P / self.noise_std_[:, None]  # Λ^{-1/2} Φ  [n, M]
        stacked[:n, M] = self.y_ / self.noise_std_  # Λ^{-1/2} y  [n]
        stacked[n:, :M] = np.eye(M)  # prior rows in whitened coordinates
        self.R_w_, self.Qtb_, self.res2_ = _triangular_qr(stacked, M)
        self._set_alpha()

    def _set_alpha(self) -> None:
        M = self.R_w_.shape[0]
        if M:
            u = scipy.linalg.solve_triangular(self.R_w_, self.Qtb_, check_finite=False)
            self.alpha_ = scipy.linalg.solve_triangular(
                self.L_mm_, u, trans="T", lower=True, check_finite=False
            )
        else:
            self.alpha_ = np.zeros(0)
        self.n_obs_, self.n_sparse_ = len(self._y), M

    def _residual2(self) -> float:
        """``|Λ^{-1/2}(y - K_nm alpha)|² + |L_mmᵀ alpha|²`` from the stored rows."""
        u = self.L_mm_.T @ self.alpha_
        resid = (self.y_ - self.Phi_ @ u) / self.noise_std_
        return float(resid @ resid + u @ u)

    def _check_fitted(self) -> None:
        if not hasattr(self, "alpha_"):
            raise NotFittedError(
                "This SparseGPSolver instance is not fitted yet. Call 'fit' with "
                "kernel blocks before using it."
            )

    def update(self, K_nm_new, y_new, noise_new) -> "SparseGPSolver":
        """Append observations by a QR update of the existing factor.

        Factorises ``[[R_w, Qᵀb], [0, ρ], [Λ_new^{-1/2} Φ_new, Λ_new^{-1/2} y_new]]``
        (size (n_sparse + 1 + n_new) x (n_sparse + 1), ρ the residual norm, Φ_new the
        whitened new rows); existing kernel blocks are neither needed nor recomputed, and
        the cost, O((n_sparse + n_new) n_sparse²), does not depend on the number of
        stored observations. The result equals a refit on all observations (up to
        rounding).

        Parameters
        ----------
        K_nm_new : array_like of shape (n_new, n_sparse)
        y_new : array_like of shape (n_new,)
        noise_new : array_like of shape (n_new,)

        Returns
        -------
        self
        """
        self._check_fitted()
        self._fold_rows(K_nm_new, y_new, noise_new)
        self._set_alpha()
        return self

    def add_sparse(self, K_mm, K_nm_new_columns=None, *, first_row: int = 0) -> "SparseGPSolver":
        """Append sparse points; the existing kernel blocks are reused, not recomputed.

        The caller supplies only what is new: the enlarged ``K_mm`` (whose leading
        ``n_sparse x n_sparse`` block must equal ``K_mm_``; pass e.g.
        ``np.block([[solver.K_mm_, K_old_new], [K_old_new.T, K_new_new]])``) and the
        kernel columns of the *existing* observations against the new sparse points.
        New sparse points go last.

        The factor grows by its last ``k`` columns only: O(n_obs n_sparse k) flops
        instead of a new QR's O(n_obs n_sparse²). The Cholesky factor of ``K_mm`` grows
        by ``L₂₁ = K₂₁ L₁₁⁻ᵀ``, ``L₂₂ = chol(K₂₂ + jitter - L₂₁L₂₁ᵀ)``; the old whitened
        columns stay as they are and the new ones are ``Φ_C = (C - Φ L₂₁ᵀ) L₂₂⁻ᵀ``. The
        new columns of the whitened stacked matrix ``B`` (``[Λ^{-1/2}Φ_C ; 0 ; I]``) are
        orthogonalised twice against ``Q_B = B R_w⁻¹`` (classical Gram-Schmidt with
        re-orthogonalisation, accurate because ``B`` is well conditioned), giving
        ``R₁₂``; the QR of what remains next to the old residual vector gives ``R₂₂``,
        the new entries of ``Qᵀb`` and the new residual. When the relative jitter's
        value moves (the mean of ``diag(K_mm)`` changed beyond round-off) the whole
        factorisation is recomputed.

        With ``K_nm_new_columns=None`` the stored observations are *projected*: their
        columns are taken as the Nyström values ``K_nm K_mm⁻¹ K_m,new`` (what the old
        sparse points say of the new ones), whose whitened columns are exactly zero.
        Then nothing of size ``n_obs`` is computed: ``R_w`` grows by an identity block,
        ``Qᵀb`` by zeros, the weights and the residual do not change, and the stored
        rows (if kept) get zero columns. This is the posterior of a model in which the
        stored observations see only the part of the function spanned by the old
        sparse points (a streaming sparse GP): the mean and the variances do not move
        when the points are added, and along the new points' directions only
        observations added afterwards inform the posterior. A fit (or a refit of all
        rows) makes it exact again; ``n_projected_`` counts the sparse points added this
        way since then (also when only some rows were projected).

        With ``first_row > 0`` the columns given are those of observations
        ``first_row, ..., n_obs - 1`` and the earlier ones are projected: the factor
        grows by the given rows only (``R₁₂ = R_w⁻ᵀ Bᵀ E``, ``R₂₂`` the Cholesky factor
        of ``EᵀE - R₁₂ᵀR₁₂``, which the new prior rows keep >= I), in
        O(n_given n_sparse k + n_sparse² k) whatever ``n_obs`` is.

        Parameters
        ----------
        K_mm : array_like of shape (n_sparse + k, n_sparse + k)
            Kernel matrix of all sparse points, old ones first.
        K_nm_new_columns : array_like of shape (n_obs - first_row, k) or None
            Kernel between the stored observations and the k new sparse points; None:
            projected (above), cost independent of ``n_obs`` and rows not needed.
        first_row : int, default 0
            First observation the columns belong to; the ones before are projected.

        Returns
        -------
        self

        Raises
        ------
        NotPositiveDefiniteError
            The enlarged ``K_mm`` is not positive definite (the solver is unchanged).
        ValueError
            The rows are not kept (:meth:`drop_rows`) and columns were given: refit
            instead.
        """
        self._check_fitted()
        first_row = int(first_row)
        if not 0 <= first_row <= self.n_obs_:
            raise ValueError(f"first_row must be in [0, {self.n_obs_}], got {first_row}")
        if K_nm_new_columns is None:
            return self._add_sparse_projected(K_mm, None, self.n_obs_)
        if first_row > 0:
            if self._P is None:
                raise ValueError(
                    "this solver does not keep its observation rows (drop_rows): exact "
                    "columns of some observations need their stored rows"
                )
            return self._add_sparse_projected(K_mm, K_nm_new_columns, first_row)
        if self._P is None:
            raise ValueError(
                "this solver does not keep its observation rows (drop_rows): adding "
                "sparse points needs a refit with all rows"
            )
        K_mm = self._check_grown_k_mm(K_mm)
        M_old = self.n_sparse_
        M = K_mm.shape[0]
        k = M - M_old
        cols = np.asarray(K_nm_new_columns, dtype=np.float64)
        if cols.ndim == 1 and k == 1 and cols.shape[0] == self.n_obs_:
            cols = cols[:, None]
        cols = _matrix(cols, "K_nm_new_columns", k)
        if cols.shape[0] != self.n_obs_:
            raise ValueError(
                f"K_nm_new_columns must have one row per stored observation "
                f"({self.n_obs_}), got shape {cols.shape}"
            )
        if k == 0:
            return self
        if self._extend_columns(K_mm, cols):
            return self
        # full refactorisation from the raw rows
        L, added = _jittered_cholesky(K_mm, self.jitter_)  # raises, solver unchanged
        K_all = np.concatenate([self.K_nm_, cols], axis=1)
        self.K_mm_, self.L_mm_, self.jitter_value_ = K_mm, L, added
        self._set_rows(self._whiten(K_all), self._y, self._s, keep=True)
        self._factorize()
        return self

    def _add_sparse_projected(self, K_mm, cols, first_row: int) -> "SparseGPSolver":
        """:meth:`add_sparse` with the observations before ``first_row`` projected."""
        K_mm = self._check_grown_k_mm(K_mm)
        M_old, M = self.n_sparse_, K_mm.shape[0]
        k = M - M_old
        n = self.n_obs_
        tail = slice(first_row, n)
        n_tail = n - first_row
        if cols is None:
            cols = np.zeros((0, k))
        cols = np.asarray(cols, dtype=np.float64)
        if cols.ndim == 1 and k == 1 and cols.shape[0] == n_tail:
            cols = cols[:, None]
        cols = _matrix(cols, "K_nm_new_columns", k)
        if cols.shape[0] != n_tail:
            raise ValueError(
                f"K_nm_new_columns must have one row per stored observation from row "
                f"{first_row} on ({n_tail}), got shape {cols.shape}"
            )
        if k == 0:
            return self
        jitter_value = self.jitter_ * float(np.mean(np.diag(K_mm)))
        if abs(jitter_value - self.jitter_value_) > 1e-12 * max(abs(jitter_value), 1e-300):
            # the jitter of the old block moves with mean(diag K_mm): refactorise the rows
            # (unwhitened, a projected row's new columns are Φ L21ᵀ) with the new one
            if self._P is None:
                raise ValueError(
                    "adding these sparse points changes the jitter's value (the mean of "
                    "diag(K_mm) moved) and the rows are not kept: refit instead"
                )
            L, _ = _jittered_cholesky(K_mm, self.jitter_)  # raises, solver unchanged
            L21 = scipy.linalg.solve_triangular(
                L[:M_old, :M_old], K_mm[M_old:, :M_old].T, lower=True, check_finite=False
            ).T
            new_cols = self.Phi_ @ L21.T
            new_cols[tail] = cols
            n_projected = self.n_projected_ + k
            K_all = np.concatenate([self.K_nm_, new_cols], axis=1)
            self.K_mm_, self.L_mm_, self.jitter_value_ = K_mm, L, jitter_value
            self._set_rows(self._whiten(K_all), self._y, self._s, keep=True)
            self._factorize()
            self.n_projected_ = n_projected
            return self
        L21, L22 = self._grown_cholesky(K_mm, M_old)
        if L22 is None:
            raise NotPositiveDefiniteError(
                "the new sparse points' kernel block is not positive definite given the "
                "old ones (near-duplicates of existing sparse points?)"
            )
        R12 = np.zeros((M_old, k))
        R22 = np.eye(k)
        q2 = np.zeros(k)
        res2 = self.res2_
        if n_tail:
            # new whitened columns of the given rows, Φ_C = (C - Φ L21ᵀ) L22⁻ᵀ; the new
            # columns of B are E = [Λ^{-1/2}Φ_C (given rows, 0 above) ; 0 ; I]
            s_t = self._s[tail]
            P_t = self._P[tail, :M_old]
            P_cols = scipy.linalg.solve_triangular(
                L22, (cols - P_t @ L21.T).T, lower=True, check_finite=False
            ).T
            E_t = P_cols / s_t[:, None]
            R12 = scipy.linalg.solve_triangular(  # R_w⁻ᵀ Bᵀ E
                self.R_w_, P_t.T @ (E_t / s_t[:, None]), trans="T", lower=False,
                check_finite=False,
            )
            G = E_t.T @ E_t + np.eye(k) - R12.T @ R12  # Eᵀ(I - Q_B Q_Bᵀ)E >= I
            try:
                R22 = scipy.linalg.cholesky(G, lower=False, check_finite=False)
            except np.linalg.LinAlgError:  # round-off beyond repair: the exact path
                full = self.Phi_ @ L21.T  # the projected rows' (Nyström) columns
                full[tail] = cols
                return self.add_sparse(K_mm, full)
            Etb = E_t.T @ (self._y[tail] / s_t)
            q2 = scipy.linalg.solve_triangular(R22, Etb - R12.T @ self.Qtb_, trans="T",
                                               lower=False, check_finite=False)
            res2 = max(self.res2_ - float(q2 @ q2), 0.0)
        block = None
        if self._P is not None:
            block = np.zeros((n, k))
            if n_tail:
                block[tail] = P_cols
        self._commit_columns(K_mm, L21, L22, R12, R22, block, q2, res2)
        if first_row > 0:
            self.n_projected_ += k
        return self

    def _grown_cholesky(self, K_mm, M_old: int):
        """New rows of the Cholesky factor of the grown ``K_mm`` (jitter as stored).

        ``L21 = K21 L11⁻ᵀ`` and ``L22 = chol(K22 + jitter - L21 L21ᵀ)``, what a blocked
        Cholesky of the whole matrix computes. ``L22`` is None when that block is not
        positive definite and the whole matrix with its jitter is (else the descriptive
        :class:`NotPositiveDefiniteError` of :func:`_jittered_cholesky` is raised).
        """
        new = slice(M_old, K_mm.shape[0])
        k = K_mm.shape[0] - M_old
        L21 = self._whiten(K_mm[new, :M_old])  # [k, M_old]
        try:
            L22 = scipy.linalg.cholesky(
                K_mm[new, new] + self.jitter_value_ * np.eye(k) - L21 @ L21.T,
                lower=True, check_finite=False,
            )
        except np.linalg.LinAlgError:
            _jittered_cholesky(K_mm, self.jitter_)  # raises the descriptive error
            return L21, None
        return L21, L22

    def _check_grown_k_mm(self, K_mm) -> np.ndarray:
        """The enlarged ``K_mm`` checked against the stored block (returned as a copy)."""
        K_mm = _matrix(K_mm, "K_mm")
        M_old, M = self.n_sparse_, K_mm.shape[0]
        if K_mm.shape != (M, M) or M < M_old:
            raise ValueError(
                f"K_mm must be square with at least {M_old} rows (the existing sparse "
                f"points), got shape {K_mm.shape}"
            )
        scale = max(float(np.max(np.abs(K_mm), initial=0.0)), np.finfo(float).tiny)
        atol = 1e-10 * scale
        if not np.allclose(K_mm[:M_old, :M_old], self.K_mm_, rtol=0.0, atol=atol):
            raise ValueError("the leading block of K_mm differs from the stored K_mm_")
        if not np.allclose(K_mm, K_mm.T, rtol=0.0, atol=atol):
            raise ValueError("K_mm must be symmetric")
        K_mm = np.array(K_mm, copy=True)
        K_mm[:M_old, :M_old] = self.K_mm_  # exactly the stored block
        return K_mm

    def _extend_columns(self, K_mm, cols) -> bool:
        """Grow the factors by the new columns; False when a full refactor is needed."""
        M_old, M = self.n_sparse_, K_mm.shape[0]
        k = M - M_old
        jitter_value = self.jitter_ * float(np.mean(np.diag(K_mm)))
        if abs(jitter_value - self.jitter_value_) > 1e-12 * max(abs(jitter_value), 1e-300):
            return False  # the jitter on the old block changed: refactor from scratch
        L21, L22 = self._grown_cholesky(K_mm, M_old)
        if L22 is None:
            return False
        n = self.n_obs_
        s = self.noise_std_
        P_old = self.Phi_  # [n, M_old]
        # new whitened columns Φ_C = (C - Φ L21ᵀ) L22⁻ᵀ
        P_cols = scipy.linalg.solve_triangular(
            L22, (cols - P_old @ L21.T).T, lower=True, check_finite=False
        ).T  # [n, k]
        # new columns of B: [Λ^{-1/2}Φ_C ; 0 (old prior rows) ; I (new prior rows)]
        E_top = P_cols / s[:, None]
        E_mid = np.zeros((M_old, k))
        R12 = np.zeros((M_old, k))
        for _ in range(2):  # CGS2 against Q_B = B R_w⁻¹: d = R_w⁻ᵀ Bᵀ E
            BtE = P_old.T @ (E_top / s[:, None]) + E_mid
            d = scipy.linalg.solve_triangular(
                self.R_w_, BtE, trans="T", lower=False, check_finite=False
            )
            X = scipy.linalg.solve_triangular(self.R_w_, d, lower=False, check_finite=False)
            R12 += d
            E_top -= (P_old @ X) / s[:, None]
            E_mid -= X
        # old residual r = b - B u = [Λ^{-1/2}(y - Φ u) ; -u ; 0]
        u = scipy.linalg.solve_triangular(self.R_w_, self.Qtb_, check_finite=False)
        stacked = np.zeros((n + M_old + k, k + 1))
        stacked[:n, :k] = E_top
        stacked[n: n + M_old, :k] = E_mid
        stacked[n + M_old:, :k] = np.eye(k)
        stacked[:n, k] = (self.y_ - P_old @ u) / s
        stacked[n: n + M_old, k] = -u
        R22, q2, res2 = _triangular_qr(stacked, k)
        if not (np.all(np.diag(R22) > 0.0) and np.all(np.isfinite(R22))):
            return False
        self._commit_columns(K_mm, L21, L22, R12, R22, P_cols, q2, res2)
        return True

    def _commit_columns(self, K_mm, L21, L22, R12, R22, P_cols, q2, res2) -> None:
        """Install grown factors: ``L_mm`` and ``R_w`` by their new blocks, the stored
        rows' new whitened columns (``P_cols``; None when the rows are not kept), the
        new entries of ``Qᵀb``, the residual and the weights."""
        M_old, M = self.n_sparse_, K_mm.shape[0]
        new = slice(M_old, M)
        L = np.zeros((M, M))
        L[:M_old, :M_old] = self.L_mm_
        L[new, :M_old] = L21
        L[new, new] = L22
        R = np.zeros((M, M))
        R[:M_old, :M_old] = self.R_w_
        R[:M_old, new] = R12
        R[new, new] = R22
        if P_cols is not None:
            self._append_columns(P_cols)
        self.K_mm_ = K_mm
        self.L_mm_ = L
        self.R_w_ = R
        self.Qtb_ = np.concatenate([self.Qtb_, q2])
        self.res2_ = float(res2)
        self._set_alpha()

    # -- persistence -------------------------------------------------------------------
    def _to_arrays(self) -> dict:
        """The fitted state as plain arrays (for a model file; no pickle)."""
        self._check_fitted()
        M = self.n_sparse_
        return {
            "K_mm": self.K_mm_, "L_mm": self.L_mm_, "R_w": self.R_w_, "Qtb": self.Qtb_,
            "y": self.y_, "noise_std": self.noise_std_, "res2": np.array(self.res2_),
            "Phi": self.Phi_ if self._P is not None else np.zeros((0, M)),
            "n_projected": np.array(self.n_projected_, dtype=np.int64),
        }

    @classmethod
    def _from_arrays(cls, arrays: dict, jitter: float) -> "SparseGPSolver":
        """Inverse of :meth:`_to_arrays`; also reads the earlier layout (``K_nm``, ``R``)."""
        self = cls()
        self.jitter_ = float(jitter)
        self.K_mm_ = np.asarray(arrays["K_mm"], dtype=np.float64)
        self.L_mm_ = np.asarray(arrays["L_mm"], dtype=np.float64)
        M = self.K_mm_.shape[0]
        self.jitter_value_ = self.jitter_ * float(np.mean(np.diag(self.K_mm_))) if M else 0.0
        y, s = arrays["y"], arrays["noise_std"]
        if "R_w" in arrays:
            Phi = np.asarray(arrays["Phi"], dtype=np.float64)
            self.R_w_ = np.asarray(arrays["R_w"], dtype=np.float64)
        else:  # earlier files: raw rows and the unwhitened factor R = R_w L_mmᵀ
            Phi = self._whiten(np.asarray(arrays["K_nm"], dtype=np.float64))
            R = np.asarray(arrays["R"], dtype=np.float64)
            self.R_w_ = np.triu(self._whiten(R)) if M else R
        keep = Phi.shape[0] == len(y)
        self._set_rows(Phi if keep else np.zeros((0, M)), y, s, keep=keep)
        self.Qtb_ = np.asarray(arrays["Qtb"], dtype=np.float64)
        self._set_alpha()
        self.n_projected_ = int(arrays["n_projected"]) if "n_projected" in arrays else 0
        if "res2" in arrays:
            self.res2_ = float(arrays["res2"])
        elif keep:
            self.res2_ = self._residual2()
        else:
            self.res2_ = float("nan")
        return self

    # -- prediction --------------------------------------------------------------------
    def predict_mean(self, K_sm) -> np.ndarray:
        """Posterior mean ``K_sm @ alpha_``.

        Parameters
        ----------
        K_sm : array_like of shape (n_test, n_sparse)

        Returns
        -------
        ndarray of shape (n_test,)
        """
        self._check_fitted()
        return _matrix(K_sm, "K_sm", self.n_sparse_) @ self.alpha_

    def _sor_factor(self, A) -> np.ndarray:
        """``R⁻ᵀ Aᵀ = R_w⁻ᵀ L_mm⁻¹ Aᵀ``  [M, s]."""
        return scipy.linalg.solve_triangular(
            self.R_w_, self._nystrom_factor(A), trans="T", lower=False, check_finite=False
        )

    def _sor_factor_whitened(self, P) -> np.ndarray:
        """``R_w⁻ᵀ Pᵀ`` for whitened rows ``P``  [M, s]."""
        return scipy.linalg.solve_triangular(
            self.R_w_, P.T, trans="T", lower=False, check_finite=False
        )

    def _nystrom_factor(self, A) -> np.ndarray:
        """``L_mm⁻¹ Aᵀ``  [M, s]."""
        return scipy.linalg.solve_triangular(
            self.L_mm_, A.T, lower=True, check_finite=False
        )

    def var_sor(self, A) -> np.ndarray:
        """``diag(A Σ Aᵀ)`` with ``Σ = R⁻¹R⁻ᵀ`` (triangular solves, no inverse).

        Parameters
        ----------
        A : array_like of shape (n_test, n_sparse)
            Kernel rows of linear functionals (local energies, forces, ...).

        Returns
        -------
        ndarray of shape (n_test,)
        """
        self._check_fitted()
        A = _matrix(A, "A", self.n_sparse_)
        V = self._sor_factor(A)  # [M, s]
        return np.einsum("ms,ms->s", V, V)

    def var_nystrom(self, A) -> np.ndarray:
        """``diag(A K_mm⁻¹ Aᵀ)`` (with the jittered ``K_mm``).

        Parameters
        ----------
        A : array_like of shape (n_test, n_sparse)

        Returns
        -------
        ndarray of shape (n_test,)
        """
        self._check_fitted()
        A = _matrix(A, "A", self.n_sparse_)
        W = self._nystrom_factor(A)  # [M, s]
        return np.einsum("ms,ms->s", W, W)

    def cov_sor(self, A, B=None) -> np.ndarray:
        """SoR covariance ``A Σ Bᵀ`` between linear functionals.

        Parameters
        ----------
        A : array_like of shape (n_a, n_sparse)
        B : array_like of shape (n_b, n_sparse), optional
            Defaults to ``A``.

        Returns
        -------
        ndarray of shape (n_a, n_b)
        """
        self._check_fitted()
        A = _matrix(A, "A", self.n_sparse_)
        VA = self._sor_factor(A)
        VB = VA if B is None else self._sor_factor(_matrix(B, "B", self.n_sparse_))
        return VA.T @ VB

    def cov_nystrom(self, A, B=None) -> np.ndarray:
        """Nyström covariance ``A K_mm⁻¹ Bᵀ`` (with the jittered ``K_mm``).

        Parameters
        ----------
        A : array_like of shape (n_a, n_sparse)
        B : array_like of shape (n_b, n_sparse), optional
            Defaults to ``A``.

        Returns
        -------
        ndarray of shape (n_a, n_b)
        """
        self._check_fitted()
        A = _matrix(A, "A", self.n_sparse_)
        WA = self._nystrom_factor(A)
        WB = WA if B is None else self._nystrom_factor(_matrix(B, "B", self.n_sparse_))
        return WA.T @ WB

    def predict_var(self, K_sm, k_ss) -> np.ndarray:
        """DTC predictive variance ``k_ss - var_nystrom(K_sm) + var_sor(K_sm)``.

        Negative values (cancellation when the prior is almost fully explained by the
        sparse points) are clipped to 0. A warning is issued only when a value is
        negative beyond round-off (below ``-1e-10 * max(k_ss)``).

        Parameters
        ----------
        K_sm : array_like of shape (n_test, n_sparse)
        k_ss : array_like of shape (n_test,)
            Prior variances ``k(s, s)`` of the same functionals.

        Returns
        -------
        ndarray of shape (n_test,)
            Non-negative latent variances (no observation noise added).
        """
        self._check_fitted()
        K_sm = _matrix(K_sm, "K_sm", self.n_sparse_)
        k_ss = _vector(k_ss, "k_ss", K_sm.shape[0])
        var = k_ss - self.var_nystrom(K_sm) + self.var_sor(K_sm)
        neg = var < 0.0
        if np.any(neg):
            k_max = float(np.max(np.abs(k_ss), initial=0.0))
            tol = 1e-10 * max(k_max, np.finfo(float).tiny)
            if np.any(var < -tol):
                warnings.warn(
                    "Predicted variances smaller than 0. Setting those variances to 0. "
                    f"(most negative: {var.min():.3g}; increase 'jitter' if this "
                    "recurs)",
                    RuntimeWarning,
                    stacklevel=2,
                )
            var[neg] = 0.0
        return var

    def predict_cov(self, K_sm, K_ss) -> np.ndarray:
        """DTC predictive covariance ``K_ss - K_sm K_mm⁻¹ K_ms + K_sm Σ K_ms``.

        Parameters
        ----------
        K_sm : array_like of shape (n_test, n_sparse)
        K_ss : array_like of shape (n_test, n_test)
            Prior covariance of the test functionals.

        Returns
        -------
        ndarray of shape (n_test, n_test)
            Not clipped (use :meth:`predict_var` for the diagonal).
        """
        self._check_fitted()
        K_sm = _matrix(K_sm, "K_sm", self.n_sparse_)
        K_ss = _matrix(K_ss, "K_ss", K_sm.shape[0])
        return K_ss - self.cov_nystrom(K_sm) + self.cov_sor(K_sm)

    # -- evidence ----------------------------------------------------------------------
    def log_marginal_likelihood(
        self,
        *,
        eval_gradient: bool = False,
        noise_groups=None,
        signal_variance_gradient: bool = False,
        K_mm_gradient=None,
        K_nm_gradient=None,
    ):
        """Log evidence of the DTC/SoR model, ``log N(y | 0, Q + Λ)``, and its gradient.

        Computed from the fitted factors::

            yᵀ(Q+Λ)⁻¹y  = |Λ^{-1/2}(y - K_nm alpha)|² + |L_mmᵀ alpha|²
            log|Q+Λ|    = log|Λ| + 2 Σ log|diag R| - 2 Σ log diag L_mm

        The gradient with respect to a parameter with ``dQ`` and ``dΛ`` is
        ``½ βᵀ(dQ + dΛ)β - ½ tr((Q+Λ)⁻¹(dQ + dΛ))`` with ``β = Λ⁻¹(y - K_nm alpha)``.
        Using ``K_mn (Q+Λ)⁻¹ = K_mm Σ K_mn Λ⁻¹`` it reduces to Frobenius products with
        (n_obs, M) and (M, M) weight matrices::

            d lml = <β αᵀ - Λ⁻¹ K_nm Σ, dK_nm> + ½ <K_mm⁻¹ - Σ - α αᵀ, dK_mm>
            d lml / d log σ_g = Σ_{i in g} (σ_i² β_i² - 1 + [K_nm Σ K_mn]_ii / σ_i²)

        Parameters
        ----------
        eval_gradient : bool, default False
            Also return the gradient.
        noise_groups : array_like of int, shape (n_obs,), optional
            Group label ``0 .. n_groups-1`` of each observation (e.g. 0 energy,
            1 force, 2 stress). The gradient has one entry per group: the derivative
            with respect to the log of a factor multiplying the noise std of every
            observation of that group. ``None``: one group.
        signal_variance_gradient : bool, default False
            Include the derivative with respect to log signal variance, i.e. a common
            factor on ``K_mm`` and ``K_nm``. Leave False if ``K_mm_gradient`` already
            contains it (a kernel's ``eval_gradient`` output does when its
            ``signal_variance`` is not fixed).
        K_mm_gradient : array_like of shape (n_sparse, n_sparse, n_dims), optional
            ``dK_mm/dθ`` (without jitter; the relative jitter's derivative is added).
        K_nm_gradient : array_like of shape (n_obs, n_sparse, n_dims), optional
            ``dK_nm/dθ``; required together with ``K_mm_gradient``.

        Returns
        -------
        lml : float
        gradient : ndarray of shape (n_groups + [1] + n_dims,)
            Only when ``eval_gradient``: noise groups first, then the log signal
            variance (if requested), then the kernel hyperparameters.
        """
        self._check_fitted()
        n, M = self.n_obs_, self.n_sparse_
        s = self.noise_std_
        if self._P is not None:
            u = self.L_mm_.T @ self.alpha_  # [M]
            resid = (self.y_ - self.Phi_ @ u) / s  # Λ^{-1/2}(y - K_nm α)  [n]
            quad = float(resid @ resid + u @ u)
        else:  # the least-squares residual of the factorisation (same quantity)
            if eval_gradient:
                raise ValueError(
                    "the likelihood gradient needs the observation rows, which this "
                    "solver does not keep (drop_rows)"
                )
            quad = float(self.res2_)
        # log|R| - log|L_mm| = log|R_w|
        logdet = 2.0 * np.sum(np.log(s)) + 2.0 * np.sum(np.log(np.abs(np.diag(self.R_w_))))
        lml = -0.5 * quad - 0.5 * float(logdet) - 0.5 * n * _LOG_2PI
        if not eval_gradient:
            return lml

        # groups
        if noise_groups is None:
            groups = np.zeros(n, dtype=np.int64)
            n_groups = 1
        else:
            groups = np.asarray(noise_groups)
            if groups.shape != (n,) or (n and groups.dtype.kind not in "iu"):
                raise ValueError(
                    f"noise_groups must be an integer array of shape ({n},)"
                )
            groups = groups.astype(np.int64)
            if n and groups.min() < 0:
                raise ValueError("noise_groups labels must be >= 0")
            n_groups = int(groups.max()) + 1 if n else 0
        has_kernel = K_mm_gradient is not None or K_nm_gradient is not None
        if has_kernel:
            if K_mm_gradient is None or K_nm_gradient is None:
                raise ValueError(
                    "give both K_mm_gradient and K_nm_gradient, or neither"
                )
            dK_mm = np.asarray(K_mm_gradient, dtype=np.float64)
            dK_nm = np.asarray(K_nm_gradient, dtype=np.float64)
            if dK_mm.ndim == 2:
                dK_mm = dK_mm[:, :, None]
            if dK_nm.ndim == 2:
                dK_nm = dK_nm[:, :, None]
            d = dK_mm.shape[2]
            if dK_mm.shape != (M, M, d) or dK_nm.shape != (n, M, d):
                raise ValueError(
                    f"K_mm_gradient must have shape ({M}, {M}, n_dims) and "
                    f"K_nm_gradient ({n}, {M}, n_dims); got {dK_mm.shape} and "
                    f"{dK_nm.shape}"
                )

        beta = resid / s  # Λ⁻¹(y - K_nm α)  [n]
        K_nm = self.K_nm_
        Y = self._sor_factor_whitened(self.Phi_)  # R⁻ᵀ K_mn = R_w⁻ᵀ Φᵀ  [M, n]
        v = np.einsum("mn,mn->n", Y, Y)  # diag(K_nm Σ K_mn)  [n]
        g_noise = np.bincount(
            groups, weights=s**2 * beta**2 - 1.0 + v / s**2, minlength=n_groups
        )
        parts = [g_noise]
        if signal_variance_gradient or has_kernel:
            KS = scipy.linalg.solve_triangular(self.R_, Y, check_finite=False).T
            W_nm = np.outer(beta, self.alpha_) - KS / (s**2)[:, None]  # [n, M]
            I = np.eye(M)
            Rinv = scipy.linalg.solve_triangular(self.R_, I, check_finite=False)
            Sigma = Rinv @ Rinv.T  # [M, M]
            Kinv = scipy.linalg.cho_solve((self.L_mm_, True), I, check_finite=False)
            W_mm = 0.5 * (Kinv - Sigma - np.outer(self.alpha_, self.alpha_))  # [M, M]
            tr_W_mm = float(np.trace(W_mm))
            mean_diag_scale = self.jitter_ / M if M else 0.0
            if signal_variance_gradient:  # dK = K for both blocks; jitter scales too
                K_mm_j = self.K_mm_ + self.jitter_value_ * I
                g_sv = np.sum(W_nm * K_nm) + np.sum(W_mm * K_mm_j)
                parts.append(np.array([g_sv]))
            if has_kernel:
                g = np.tensordot(W_nm, dK_nm, axes=([0, 1], [0, 1]))
                g += np.tensordot(W_mm, dK_mm, axes=([0, 1], [0, 1]))
                # relative jitter: d(jitter mean(diag K_mm)) = jitter mean(diag dK_mm)
                g += mean_diag_scale * np.einsum("iik->k", dK_mm) * tr_W_mm
                parts.append(g)
        return lml, np.concatenate(parts)


# ---------------------------------------------------------------------------- optimiser
@dataclass
class HyperparameterResult:
    """Outcome of :func:`optimize_hyperparameters`.

    Attributes
    ----------
    noise_levels : ndarray of shape (n_groups,)
        Optimised noise factor of each observation group.
    kernel_theta : ndarray of shape (n_dims,)
        Optimised kernel hyperparameters (log space, as ``kernel.theta``).
    log_marginal_likelihood : float
        Value at the optimum.
    optimize_result : scipy.optimize.OptimizeResult
        The best L-BFGS-B run (``x`` is in log space over the free parameters).
    n_runs : int
        Number of L-BFGS-B runs (1 + restarts).
    """

    noise_levels: np.ndarray
    kernel_theta: np.ndarray
    log_marginal_likelihood: float
    optimize_result: scipy.optimize.OptimizeResult
    n_runs: int


def _group_noise_bounds(noise_bounds, n_groups: int) -> list:
    """One entry per noise group from ``noise_bounds``: a ``(low, high)`` pair of floats
    with 0 < low < high (high may be inf) or ``"fixed"``. Takes one pair for every group,
    ``"fixed"`` for every group, or a list with one pair or ``"fixed"`` per group; a
    ValueError otherwise (reversed bounds put every noise at one of them, silently)."""
    if isinstance(noise_bounds, str):
        if noise_bounds != "fixed":
            raise ValueError(f"noise_bounds must be a pair, a list of pairs or 'fixed', got {noise_bounds!r}")
        return ["fixed"] * n_groups
    nb = list(noise_bounds)
    if len(nb) == 2 and all(isinstance(b, numbers.Real) for b in nb):
        nb = [tuple(nb)] * n_groups
    elif len(nb) != n_groups:
        raise ValueError(f"noise_bounds needs one (low, high) pair or 'fixed' per group ({n_groups})")
    out = []
    for b in nb:
        if isinstance(b, str):
            if b != "fixed":
                raise ValueError(f"invalid noise bound {b!r}")
            out.append(b)
            continue
        low, high = (float(x) for x in b)
        if not 0 < low < high:
            raise ValueError(f"noise_bounds must be (low, high) with 0 < low < high (eV/atom, eV/Å, eV/Å^3 "
                             f"by group), got {tuple(b)!r}")
        out.append((low, high))
    return out


def optimize_hyperparameters(
    build_blocks: Callable,
    y,
    noise_groups,
    noise_levels0,
    kernel_theta0,
    *,
    kernel_bounds=None,
    noise_scale=None,
    noise_bounds=(1e-6, 1e2),
    jitter: float = 1e-10,
    n_restarts: int = 0,
    random_state=None,
    options: dict | None = None,
) -> HyperparameterResult:
    """Maximise the sparse-GP log marginal likelihood with L-BFGS-B in log space.

    The noise std of observation ``i`` is ``noise_levels[noise_groups[i]] *
    noise_scale[i]`` (``noise_scale`` holds fixed per-observation factors, e.g.
    ``sqrt(n_atoms)`` for total energies). The kernel blocks are rebuilt by the
    caller for each kernel θ.

    Parameters
    ----------
    build_blocks : callable
        ``build_blocks(kernel_theta) -> (K_mm, K_nm, dK_mm, dK_nm)`` with shapes
        (M, M), (n_obs, M), (M, M, n_dims), (n_obs, M, n_dims); derivatives in log
        space (e.g. from ``kernel.clone_with_theta(theta)(Z, eval_gradient=True)``).
        ``dK_mm``/``dK_nm`` may be None when ``n_dims == 0``.
    y : array_like of shape (n_obs,)
    noise_groups : array_like of int, shape (n_obs,)
        Group ``0 .. n_groups-1`` of each observation.
    noise_levels0 : array_like of shape (n_groups,)
        Initial noise factor of each group.
    kernel_theta0 : array_like of shape (n_dims,)
        Initial kernel θ (log space).
    kernel_bounds : array_like of shape (n_dims, 2), optional
        Log bounds of the kernel θ (``kernel.bounds``); default unbounded.
    noise_scale : array_like of shape (n_obs,), optional
        Fixed per-observation noise factors; default 1.
    noise_bounds : (float, float), list of them (one per group) or "fixed"
        Default (1e-6, 1e2).
        Linear-space bounds of the noise levels; ``"fixed"`` (globally or per group)
        keeps that level out of the optimisation.
    jitter : float, default 1e-10
        Relative jitter passed to :meth:`SparseGPSolver.fit`.
    n_restarts : int, default 0
        Extra runs from log-uniform random starts within the bounds (every free
        parameter must then have finite bounds).
    random_state : int, numpy.random.Generator or None
        Seeds the restarts.
    options : dict, optional
        Passed to ``scipy.optimize.minimize``.

    Returns
    -------
    HyperparameterResult
    """
    y = _vector(y, "y")
    n = y.shape[0]
    groups = np.asarray(noise_groups)
    if groups.shape != (n,) or (n and groups.dtype.kind not in "iu"):
        raise ValueError(f"noise_groups must be an integer array of shape ({n},)")
    groups = groups.astype(np.int64)
    levels0 = _vector(noise_levels0, "noise_levels0")
    G = levels0.shape[0]
    if n and (groups.min() < 0 or groups.max() >= G):
        raise ValueError(f"noise_groups labels must lie in [0, {G})")
    if np.any(levels0 <= 0):
        raise ValueError("noise_levels0 must be positive")
    scale = np.ones(n) if noise_scale is None else _noise(noise_scale, n)
    theta_k0 = _vector(kernel_theta0, "kernel_theta0")
    d = theta_k0.shape[0]

    # bounds of the full log vector [log noise levels (G), kernel θ (d)]
    nb = _group_noise_bounds(noise_bounds, G)
    free = np.ones(G + d, dtype=bool)
    lo = np.full(G + d, -np.inf)
    hi = np.full(G + d, np.inf)
    for g, b in enumerate(nb):
        if isinstance(b, str):
            free[g] = False
        else:
            lo[g], hi[g] = np.log(b[0]), np.log(b[1])
    if kernel_bounds is not None:
        kb = np.asarray(kernel_bounds, dtype=np.float64).reshape(-1, 2)
        if kb.shape != (d, 2):
            raise ValueError(f"kernel_bounds must have shape ({d}, 2), got {kb.shape}")
        lo[G:], hi[G:] = kb[:, 0], kb[:, 1]
    full0 = np.concatenate([np.log(levels0), theta_k0])
    full0[free] = np.clip(full0[free], lo[free], hi[free])

    def unpack(x):
        full = full0.copy()
        full[free] = x
        return full

    def objective(x):
        full = unpack(x)
        levels = np.exp(full[:G])
        K_mm, K_nm, dK_mm, dK_nm = build_blocks(full[G:])
        if d == 0:
            dK_mm = dK_nm = None
        try:
            noise = levels[groups] * scale
            solver = SparseGPSolver().fit(K_mm, K_nm, y, noise, jitter=jitter)
            lml, grad = solver.log_marginal_likelihood(
                eval_gradient=True,
                noise_groups=groups,
                K_mm_gradient=dK_mm,
                K_nm_gradient=dK_nm,
            )
        except np.linalg.LinAlgError:
            return np.inf, np.zeros(x.shape)
        n_lml_groups = int(groups.max()) + 1 if n else 0  # groups seen by the lml
        g_full = np.zeros(G + d)
        g_full[:n_lml_groups] = grad[:n_lml_groups]
        g_full[G:] = grad[n_lml_groups:]
        return -lml, -g_full[free]

    bounds = [
        (a if np.isfinite(a) else None, b if np.isfinite(b) else None)
        for a, b in zip(lo[free], hi[free])
    ]
    starts = [full0[free]]
    if n_restarts > 0:
        if not (np.all(np.isfinite(lo[free])) and np.all(np.isfinite(hi[free]))):
            raise ValueError(
                "n_restarts > 0 requires finite bounds on every free parameter"
            )
        rng = np.random.default_rng(random_state)
        for _ in range(int(n_restarts)):
            starts.append(rng.uniform(lo[free], hi[free]))
    best = None
    for x0 in starts:
        res = scipy.optimize.minimize(
            objective, x0, jac=True, method="L-BFGS-B", bounds=bounds, options=options
        )
        if best is None or res.fun < best.fun:
            best = res
    full = unpack(best.x)
    return HyperparameterResult(
        noise_levels=np.where(free[:G], np.exp(full[:G]), levels0),  # a fixed level as given
        kernel_theta=full[G:],
        log_marginal_likelihood=float(-best.fun),
        optimize_result=best,
        n_runs=len(starts),
    )
