"""Kernels on SOAP-like descriptor rows, and their derivatives.

Both kernels here are functions of the cosine between two *raw* (unnormalised)
descriptor rows, ``c = x̂·ẑ`` with ``x̂ = x / |x|``::

    k(x, z) = signal_variance * f(c)

    NormalizedDotProduct:  f(c) = c**zeta                  (zeta: integer setting)
    SquaredExponential:    f(c) = exp(-|x̂ - ẑ|² / (2 l²)) = exp((c - 1) / l²)

The gradient with respect to the first argument has the closed form::

    ∂k/∂x = signal_variance * f'(c) * (ẑ - c x̂) / |x|

which is what makes force rows cheap: contracted with descriptor derivatives ``dX`` it
needs only the two matrix products ``dX·Ẑᵀ`` and ``dX·x̂`` plus elementwise factors,
never an (n, m, n_features) array (:meth:`CosineKernel.contract_gradient`,
:meth:`CosineKernel.weighted_gradient_x`).

Hyperparameters follow scikit-learn: each is declared by a :class:`Hyperparameter`;
``theta`` is the log of the non-fixed ones, ``bounds`` their log bounds, and bounds
``"fixed"`` leaves a parameter out of ``theta``. The order of ``theta`` is
``signal_variance`` first, then ``length_scale`` (for :class:`SquaredExponential`).

**Zero-norm rows.** A descriptor row of zero norm has no direction. It is mapped to
``x̂ = 0``, so its cosine with every row (itself included) is 0 and
``k = signal_variance * f(0)``; its gradient with respect to ``x`` is defined as 0.
``diag`` follows the same convention, so ``diag(X) == np.diag(k(X))`` always and kernel
matrices stay positive semi-definite. (SOAP rows include the central atom's own density
and are never zero in practice.)

The numerical loops are in :mod:`gpal._jit`; the methods here validate input.
"""

from __future__ import annotations

import numbers
from collections import namedtuple
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator

from . import _jit, _threads
from ._registry import register

# pairs per BLAS product in CosineKernel.contract_rows: 128 pairs x 3 x 500 sparse
# columns is 1.5 MB of products, which stays in cache for the pass that scatters them
_ROWS_BLOCK = 128


def _pair_rows_blocked(dX, pairs, cols, Xc, ZT, C, center, neighbor, vector, targets,
                       first=0, block=_ROWS_BLOCK) -> None:
    """Add pair derivatives' kernel gradients to force rows and virials, a block at a time.

    For each block of ``block`` pairs: ``D = dX[pairs][:, :, cols]·Ẑᵀ`` (one BLAS
    product; ``ZT`` = the sparse unit rows' transpose on ``cols``), ``b = dX·x̂_c``
    (``Xc``: the centres' unit rows on ``cols``, from atom ``first``), then
    :func:`gpal._jit._pair_rows` for each ``(W, scale, rows_f, virial)`` of
    ``targets`` (kernels sharing the cosines ``C`` share the products). ``center``,
    ``neighbor`` and ``vector`` are those of the selected pairs.
    """
    m = ZT.shape[1]
    for p0 in range(0, len(center), block):
        p1 = min(p0 + block, len(center))
        dXb = dX[p0:p1] if pairs is None else dX[pairs[p0:p1]]
        if cols is not None:
            dXb = np.ascontiguousarray(dXb[:, :, cols])
        D = (dXb.reshape(-1, ZT.shape[0]) @ ZT).reshape(p1 - p0, 3, m)
        b = _jit._pair_projection(dXb, Xc, center[p0:p1] - first)
        for W, scale, rows_f, virial in targets:
            _jit._pair_rows(D, b, C, W, scale, center[p0:p1], neighbor[p0:p1], vector[p0:p1],
                            rows_f, virial, first)

__all__ = [
    "Hyperparameter",
    "Kernel",
    "CosineKernel",
    "NormalizedDotProduct",
    "SquaredExponential",
    "kernel_from_dict",
]


# ----------------------------------------------------------------------------- helpers
def _as_matrix(X, name: str, n_features: int | None = None) -> np.ndarray:
    """C-contiguous finite float64 2-D array (copy only if needed)."""
    X = np.asarray(X)
    if X.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be a real numeric array, got dtype {X.dtype}")
    X = np.ascontiguousarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(
            f"{name} must be 2-D of shape (n_samples, n_features), got shape {X.shape}"
        )
    if n_features is not None and X.shape[1] != n_features:
        raise ValueError(
            f"{name} has {X.shape[1]} features but the other argument has {n_features}"
        )
    if not np.all(np.isfinite(X)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return X


def _check_bounds(bounds, name: str):
    if isinstance(bounds, str):
        if bounds != "fixed":
            raise ValueError(
                f"{name}_bounds must be a (low, high) pair or 'fixed', got {bounds!r}"
            )
        return bounds
    try:
        lo, hi = (float(b) for b in bounds)
    except (TypeError, ValueError):
        raise ValueError(
            f"{name}_bounds must be a (low, high) pair or 'fixed', got {bounds!r}"
        ) from None
    if not (0.0 < lo <= hi < np.inf):
        raise ValueError(
            f"{name}_bounds must satisfy 0 < low <= high < inf, got {bounds!r}"
        )
    return (lo, hi)


# ----------------------------------------------------------------------------- base
class Hyperparameter(
    namedtuple(
        "Hyperparameter", ("name", "value_type", "bounds", "n_elements", "fixed")
    )
):
    """Specification of a kernel hyperparameter (scikit-learn's convention).

    Attributes
    ----------
    name : str
        Attribute name of the parameter on the kernel (e.g. ``"length_scale"``).
    value_type : str
        ``"numeric"``.
    bounds : tuple of float (low, high) or "fixed"
        Bounds in *linear* space. ``"fixed"`` excludes the parameter from ``theta``.
    n_elements : int
        Number of scalar elements (1 for every gpal hyperparameter).
    fixed : bool
        Whether the parameter is excluded from ``theta``. Defaults to
        ``bounds == "fixed"``.
    """

    __slots__ = ()

    def __new__(cls, name, value_type, bounds, n_elements=1, fixed=None):
        if not (isinstance(bounds, str) and bounds == "fixed"):
            bounds = tuple(float(b) for b in bounds)
        if fixed is None:
            fixed = isinstance(bounds, str) and bounds == "fixed"
        return super().__new__(
            cls, name, value_type, bounds, int(n_elements), bool(fixed)
        )


_KERNEL_TYPES: dict[str, type] = {}


class Kernel(BaseEstimator):
    """Base class: parameter handling, ``theta``/``bounds``, cloning, repr, JSON form.

    The constructor of a subclass only stores its arguments (as attributes of the same
    names); validation happens when the kernel is evaluated. Subclasses list their
    hyperparameter names in ``_hyperparameter_names``; the bounds of hyperparameter
    ``name`` are read from the attribute ``name + "_bounds"``.
    """

    _hyperparameter_names: tuple[str, ...] = ()

    def __init_subclass__(cls, **kwargs):
        # the registry model files name kernels by (kernel_from_dict): every subclass but
        # the abstract bases (``_abstract = True`` in their class body, e.g. CosineKernel)
        super().__init_subclass__(**kwargs)
        if not cls.__dict__.get("_abstract", False):
            register(_KERNEL_TYPES, cls, "kernel")

    # -- parameters: get_params / set_params are scikit-learn's BaseEstimator's -------
    @classmethod
    def _param_names(cls) -> list[str]:
        return list(cls._get_param_names())

    def clone(self) -> "Kernel":
        """A new kernel of the same type with the same parameters (``sklearn.base.clone``)."""
        from sklearn.base import clone

        return clone(self)

    def clone_with_theta(self, theta) -> "Kernel":
        """A clone whose non-fixed hyperparameters are ``exp(theta)``.

        Parameters
        ----------
        theta : array_like of shape (n_dims,)
            Log of the non-fixed hyperparameters, in :attr:`theta` order
            (``signal_variance``, eV², first unless it is fixed).

        Returns
        -------
        Kernel
            A new kernel of the same type; ``self`` is unchanged.

        Raises
        ------
        ValueError
            ``theta`` does not have :attr:`n_dims` entries.
        """
        new = self.clone()
        new.theta = theta
        return new

    # -- hyperparameters -----------------------------------------------------------
    @property
    def hyperparameters(self) -> list[Hyperparameter]:
        """All hyperparameter specifications in ``theta`` order (fixed ones too)."""
        return [
            Hyperparameter(
                name, "numeric", _check_bounds(getattr(self, name + "_bounds"), name)
            )
            for name in self._hyperparameter_names
        ]

    @property
    def theta(self) -> np.ndarray:
        """ndarray of shape (n_dims,): log of the non-fixed hyperparameters."""
        values = [
            float(getattr(self, h.name)) for h in self.hyperparameters if not h.fixed
        ]
        if any(not (v > 0.0 and np.isfinite(v)) for v in values):
            raise ValueError(f"hyperparameters of {self!r} must be positive and finite")
        return np.log(np.array(values, dtype=np.float64))

    @theta.setter
    def theta(self, theta) -> None:
        theta = np.asarray(theta, dtype=np.float64).ravel()
        free = [h for h in self.hyperparameters if not h.fixed]
        if theta.shape != (len(free),):
            raise ValueError(
                f"theta has {theta.size} entries but {type(self).__name__} has "
                f"{len(free)} non-fixed hyperparameters ({[h.name for h in free]})"
            )
        for h, t in zip(free, theta):
            setattr(self, h.name, float(np.exp(t)))

    @property
    def bounds(self) -> np.ndarray:
        """ndarray of shape (n_dims, 2): log bounds of the non-fixed hyperparameters."""
        b = [h.bounds for h in self.hyperparameters if not h.fixed]
        if not b:
            return np.empty((0, 2))
        return np.log(np.array(b, dtype=np.float64))

    @property
    def n_dims(self) -> int:
        """Number of non-fixed hyperparameters (length of ``theta``)."""
        return sum(1 for h in self.hyperparameters if not h.fixed)

    # -- comparison, repr, serialisation -------------------------------------------
    def __eq__(self, other) -> bool:
        if type(self) is not type(other):
            return NotImplemented
        a, b = self.get_params(), other.get_params()
        return all(np.all(np.asarray(a[k] == b[k])) for k in a)

    __hash__ = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form: ``{"type": class name, "params": {...}}``.

        Restore with :func:`kernel_from_dict`.
        """
        params = {}
        for key, value in self.get_params().items():
            if value is None or isinstance(value, (str, bool)):
                params[key] = value
            elif isinstance(value, (tuple, list, np.ndarray)):
                params[key] = [float(v) for v in value]
            elif isinstance(value, numbers.Integral):
                params[key] = int(value)
            elif isinstance(value, numbers.Real):
                params[key] = float(value)
            else:
                raise TypeError(f"{type(self).__name__} parameter {key}={value!r} cannot be saved: a kernel's "
                                "parameters are numbers, strings, booleans, None or lists of numbers")
        return {"type": type(self).__name__, "params": params}

    # -- to implement ----------------------------------------------------------------
    # A kernel implements __call__ and gradient_x; the rest have generic forms here
    # (CosineKernel replaces them with ones that never form an (n, m, n_features) array).
    # The evidence rescales ``signal_variance`` analytically, so a kernel has one, as a
    # hyperparameter (an overall factor of k).
    def __call__(self, X, Z=None, eval_gradient: bool = False):  # pragma: no cover
        """Kernel matrix ``K[n, m] = k(x_n, z_m)`` (and ``dK/dθ`` of shape (n, m, n_dims))."""
        raise NotImplementedError

    def gradient_x(self, X, Z) -> np.ndarray:  # pragma: no cover
        """``G[n, m, :] = ∂k(x_n, z_m)/∂x_n``, shape (n, m, n_features).

        Parameters
        ----------
        X : array_like of shape (n, n_features)
            Descriptor rows.
        Z : array_like of shape (m, n_features)

        Returns
        -------
        ndarray of shape (n, m, n_features)
            In kernel units (eV², those of ``signal_variance``) per descriptor unit.

        Raises
        ------
        NotImplementedError
            Always, here: a kernel implements it.
        """
        raise NotImplementedError

    def diag(self, X) -> np.ndarray:
        """``k(x_n, x_n)``, shape (n,) (generic: one row at a time).

        Parameters
        ----------
        X : array_like of shape (n, n_features)
            Descriptor rows.

        Returns
        -------
        ndarray of shape (n,)
            Prior variances, eV² (the units of ``signal_variance``).
        """
        X = np.asarray(X, dtype=np.float64)
        return np.array([self(X[i:i + 1], X[i:i + 1])[0, 0] for i in range(len(X))])

    def value_and_weighted_gradient(self, X, Z, alpha) -> tuple[np.ndarray, np.ndarray]:
        """``(K, Σ_m alpha_m ∂k(x_n, z_m)/∂x_n)``: the kernel rows and what forces need.

        Generic form, through the dense :meth:`gradient_x` (an (n, m, n_features)
        array); ``alpha``'s shape is not checked here.

        Parameters
        ----------
        X : array_like of shape (n, n_features)
            Descriptor rows.
        Z : array_like of shape (m, n_features)
            Sparse rows.
        alpha : array_like of shape (m,)
            Weights of the sparse rows (``K @ alpha``: local energies, eV, for a
            model's weights).

        Returns
        -------
        K : ndarray of shape (n, m)
            Kernel rows, eV².
        G : ndarray of shape (n, n_features)
            ``∂(K @ alpha)_n / ∂x_n``, the local energies' gradient with respect to the
            descriptor rows.
        """
        return self(X, Z), np.einsum("nmf,m->nf", self.gradient_x(X, Z), np.asarray(alpha, dtype=np.float64))

    def contract_gradient(self, X, Z, center, dX, eval_gradient: bool = False):
        """``out[p, a, m] = Σ_f ∂k(x_{center[p]}, z_m)/∂x_f · dX[p, a, f]``, shape (n_pairs, 3, m).

        The building block of training force and stress rows. The generic form supports
        ``eval_gradient`` only for the signal variance (an overall factor); other
        hyperparameters need the kernel's own form (as CosineKernel has).

        Parameters
        ----------
        X : array_like of shape (n, n_features)
            Descriptor rows of the atoms of a frame.
        Z : array_like of shape (m, n_features)
            Sparse (inducing) rows.
        center : array_like of int, shape (n_pairs,)
            Row of ``X`` each pair derivative belongs to.
        dX : array_like of shape (n_pairs, 3, n_features)
            ``dX[p]`` = derivative of ``X[center[p]]`` with respect to pair vector
            ``p``, 1/Å.
        eval_gradient : bool, default False
            Also return the derivative with respect to ``theta`` (log space).

        Returns
        -------
        out : ndarray of shape (n_pairs, 3, m)
            eV²/Å (kernel units per Å).
        out_gradient : ndarray of shape (n_pairs, 3, m, n_dims)
            ``d out / d theta``; only when ``eval_gradient`` is True.

        Raises
        ------
        NotImplementedError
            ``eval_gradient`` with a non-fixed hyperparameter other than
            ``signal_variance`` (and whatever :meth:`gradient_x` raises).
        """
        G = self.gradient_x(X, Z)
        out = np.einsum("pmf,paf->pam", G[np.asarray(center)], np.asarray(dX, dtype=np.float64))
        if not eval_gradient:
            return out
        names = [h.name for h in self.hyperparameters if not h.fixed]
        if set(names) - {"signal_variance"}:
            raise NotImplementedError(f"{type(self).__name__} needs its own contract_gradient to optimise "
                                      f"{sorted(set(names) - {'signal_variance'})}")
        return out, np.repeat(out[..., None], len(names), axis=-1)


# ----------------------------------------------------------------------- cosine kernels
class CosineKernel(Kernel):
    """Abstract kernel ``k(x, z) = signal_variance * f(x̂·ẑ)``, evaluated by numba.

    Subclasses set ``_kind`` (a :mod:`gpal._jit` kind code), ``_hyperparameter_names``
    (``"signal_variance"`` plus at most one shape hyperparameter) and implement
    ``_shape_param()`` and ``_validate()``.
    """

    _abstract = True

    _kind: int = -1

    def _shape_param(self) -> float:  # pragma: no cover
        raise NotImplementedError

    def _validate(self) -> None:
        sv = self.signal_variance
        if isinstance(sv, bool) or not isinstance(sv, numbers.Real) or not (
            0.0 < float(sv) < np.inf
        ):
            raise ValueError(
                f"signal_variance must be a positive finite number, got {sv!r}"
            )
        for h in self._hyperparameter_names:
            _check_bounds(getattr(self, h + "_bounds"), h)

    # -- shared pieces --------------------------------------------------------------
    def _prepare(self, X, Z):
        self._validate()
        X = _as_matrix(X, "X")
        Xh, xn = _jit._normalize_rows(X)
        if Z is None:
            return X, Xh, xn, None, Xh, xn
        Z = _as_matrix(Z, "Z", X.shape[1])
        Zh, zn = _jit._normalize_rows(Z)
        return X, Xh, xn, Z, Zh, zn

    def _cosines(self, Xh, xn, Zh, symmetric):
        self_cos = (xn > 0.0).astype(np.float64)
        return _jit._kernel_matrix(
            Xh, Zh, self._kind, float(self._shape_param()), symmetric, self_cos
        )

    def _free_names(self) -> list[str]:
        return [h.name for h in self.hyperparameters if not h.fixed]

    @staticmethod
    def _inverse_norms(xn):
        inv = np.zeros_like(xn)
        np.divide(1.0, xn, out=inv, where=xn > 0.0)
        return inv

    # -- evaluation -----------------------------------------------------------------
    def __call__(self, X, Z=None, eval_gradient: bool = False):
        """Kernel matrix ``K[n, m] = k(x_n, z_m)``, optionally with its θ-gradient.

        Parameters
        ----------
        X : array_like of shape (n, n_features)
            Raw descriptor rows.
        Z : array_like of shape (m, n_features), optional
            Second argument; ``None`` means ``Z = X`` (the result is then exactly
            symmetric with ``diag(X)`` on its diagonal).
        eval_gradient : bool, default False
            Also return the derivative with respect to ``theta`` (log space).

        Returns
        -------
        K : ndarray of shape (n, m)
        K_gradient : ndarray of shape (n, m, n_dims)
            ``dK/dtheta``; only when ``eval_gradient`` is True.
        """
        X, Xh, xn, Z, Zh, zn = self._prepare(X, Z)
        C, Fc = self._cosines(Xh, xn, Zh, Z is None)
        s2 = float(self.signal_variance)
        K = s2 * Fc
        if not eval_gradient:
            return K
        names = self._free_names()
        grad = np.empty(K.shape + (len(names),))
        p = float(self._shape_param())
        for k, name in enumerate(names):
            if name == "signal_variance":  # d(s2 f)/dlog s2 = s2 f
                grad[..., k] = K
            else:
                grad[..., k] = s2 * _jit._apply_f_dparam(C, self._kind, p)
        return K, grad

    def diag(self, X) -> np.ndarray:
        """Diagonal ``k(x_n, x_n)``, equal to ``np.diag(self(X))`` but O(n).

        Parameters
        ----------
        X : array_like of shape (n, n_features)

        Returns
        -------
        ndarray of shape (n,)
            ``signal_variance`` (``signal_variance * f(0)`` for zero-norm rows).
        """
        self._validate()
        X = _as_matrix(X, "X")
        d0, d1 = self._diag_values()
        return np.where(np.einsum("ij,ij->i", X, X) > 0.0, d1, d0)

    def _f_derivatives(self, C: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(f'(C), f''(C))`` elementwise for a 2-D ``C``: the first two derivatives of the
        kernel's function of the cosine (without the signal variance); ``f'`` is the
        compiled one the kernel's gradients use."""
        p = float(self._shape_param())
        C = np.ascontiguousarray(C, dtype=np.float64)
        f1 = _jit._apply_fprime(C, self._kind, p)
        if self._kind == _jit.KIND_DOT:
            z = int(p)
            return f1, (z * (z - 1) * C ** (z - 2) if z >= 2 else np.zeros_like(C))
        return f1, f1 / (p * p)  # KIND_SE: f = exp((c - 1) / l²), f'' = f' / l²

    def _diag_values(self) -> tuple[float, float]:
        """``(k(0, 0), k(x, x))`` for a zero row and any other: ``signal_variance f(0)`` and
        ``signal_variance f(1)``, the two values :meth:`diag` takes."""
        key = (self._shape_param(), self.signal_variance)
        last = self.__dict__.get("_diag_cache")
        if last is not None and last[0] == key:  # (per MD step: the same hyperparameters)
            return last[1]
        f = _jit._apply_f(np.array([[0.0, 1.0]]), self._kind, float(key[0]))[0]
        s2 = float(key[1])
        values = (s2 * float(f[0]), s2 * float(f[1]))
        self.__dict__["_diag_cache"] = (key, values)
        return values

    def gradient_x(self, X, Z) -> np.ndarray:
        """Dense gradient ``G[n, m, :] = ∂k(x_n, z_m)/∂x_n`` (tests, small inputs).

        Parameters
        ----------
        X : array_like of shape (n, n_features)
        Z : array_like of shape (m, n_features)

        Returns
        -------
        ndarray of shape (n, m, n_features)
        """
        X, Xh, xn, Z, Zh, zn = self._prepare(X, Z)
        C, _ = self._cosines(Xh, xn, Zh, False)
        Fp = _jit._apply_fprime(C, self._kind, float(self._shape_param()))
        w = float(self.signal_variance) * Fp * self._inverse_norms(xn)[:, None]  # [n,m]
        return w[:, :, None] * (Zh[None, :, :] - C[:, :, None] * Xh[:, None, :])

    def weighted_gradient_x(self, X, Z, alpha) -> np.ndarray:
        """``G[n] = Σ_m alpha_m ∂k(x_n, z_m)/∂x_n`` without an (n, m, n_features) array.

        This is ``∂ε/∂x_n`` of the local energy ``ε(x) = Σ_m alpha_m k(x, z_m)`` (the
        force trick): with ``W = alpha ∘ f'(C)``,
        ``G = signal_variance / |x| * (W Ẑ - rowsum(W ∘ C) x̂)``.

        Parameters
        ----------
        X : array_like of shape (n, n_features)
        Z : array_like of shape (m, n_features)
        alpha : array_like of shape (m,)

        Returns
        -------
        ndarray of shape (n, n_features)
        """
        X, Xh, xn, Z, Zh, zn = self._prepare(X, Z)
        alpha = np.asarray(alpha, dtype=np.float64)
        if alpha.shape != (Zh.shape[0],):
            raise ValueError(
                f"alpha must have shape ({Zh.shape[0]},), got {alpha.shape}"
            )
        return self._terms(Xh, xn, Zh, alpha)[2]

    def value_and_weighted_gradient(self, X, Z, alpha) -> tuple[np.ndarray, np.ndarray]:
        """``(self(X, Z), self.weighted_gradient_x(X, Z, alpha))`` from one cosine matrix.

        The prediction path needs both; this normalises the rows and forms the cosines
        once.

        Parameters
        ----------
        X : array_like of shape (n, n_features)
            Raw descriptor rows.
        Z : array_like of shape (m, n_features)
            Sparse rows (raw; normalised here).
        alpha : array_like of shape (m,)
            Weights of the sparse rows (``K @ alpha``: local energies, eV, for a
            model's weights).

        Returns
        -------
        K : ndarray of shape (n, m)
            Kernel rows, eV².
        G : ndarray of shape (n, n_features)
            ``Σ_m alpha_m ∂k(x_n, z_m)/∂x_n``.

        Raises
        ------
        ValueError
            ``alpha`` is not of shape (m,), ``X`` or ``Z`` is not 2-D, finite, or of the
            same number of features, or a hyperparameter is invalid.
        TypeError
            ``X`` or ``Z`` is not a real numeric array.
        """
        X, Xh, xn, Z, Zh, zn = self._prepare(X, Z)
        alpha = np.asarray(alpha, dtype=np.float64)
        if alpha.shape != (Zh.shape[0],):
            raise ValueError(f"alpha must have shape ({Zh.shape[0]},), got {alpha.shape}")
        K, _, G = self._terms(Xh, xn, Zh, alpha)
        return K, G

    @staticmethod
    def unit_rows(Z) -> np.ndarray:
        """Rows of ``Z`` scaled to unit norm (zero rows stay zero): the second argument
        of :meth:`prediction_terms`, formed once for a fixed sparse set.

        Parameters
        ----------
        Z : array_like of shape (m, n_features)

        Returns
        -------
        ndarray of shape (m, n_features)
        """
        return _jit._normalize_rows(_as_matrix(Z, "Z"))[0]

    def prediction_terms(self, X, Z_unit, alpha) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Kernel rows, their weighted sum and its gradient, in one pass over the cosines.

        Equal to ``K = self(X, Z)``, ``K @ alpha`` and ``self.weighted_gradient_x(X, Z,
        alpha)`` (up to summation order), for the unit rows ``Z_unit =
        self.unit_rows(Z)`` of a sparse set that does not change between calls (the
        prediction path: no renormalisation or validation of ``Z`` per call). After the
        BLAS product ``C = X̂ Ẑᵀ`` one compiled pass forms ``K``, ``K alpha`` and the
        weights ``alpha_m f'(c_nm)`` in place of ``C``; a second BLAS product with
        ``Ẑ`` gives the gradient.

        Parameters
        ----------
        X : array_like of shape (n, n_features)
            Raw descriptor rows.
        Z_unit : ndarray of shape (m, n_features)
            Unit (or zero) sparse rows, C-contiguous float64.
        alpha : ndarray of shape (m,)

        Returns
        -------
        K : ndarray of shape (n, m)
        energy : ndarray of shape (n,)
            ``K @ alpha``.
        G : ndarray of shape (n, n_features)
            ``Σ_m alpha_m ∂k(x_n, z_m)/∂x_n``.
        """
        self._validate()
        X = _as_matrix(X, "X")
        alpha = np.ascontiguousarray(alpha, dtype=np.float64)
        if Z_unit.ndim != 2 or Z_unit.shape[1] != X.shape[1] or alpha.shape != (Z_unit.shape[0],):
            raise ValueError(
                f"Z_unit must have shape (m, {X.shape[1]}) and alpha (m,); got "
                f"{Z_unit.shape} and {alpha.shape}"
            )
        return self._terms(X, None, Z_unit, alpha)

    def _terms(self, X, xn, Zh, alpha, K=None):
        """``(K, K @ alpha, G)`` from the raw rows ``X`` (``xn`` None) or the unit rows
        ``X`` with norms ``xn``, and unit ``Zh``. On the row-parallel path the kernel rows
        are written into ``K`` if given (the serial path returns rows of its own).

        After the BLAS product ``C = X̂ Ẑᵀ`` one compiled pass forms ``K``, ``K alpha``
        and the weights ``W = alpha ∘ f'(C)`` in place of ``C``; then
        ``G = signal_variance / |x| * (W Ẑ - rowsum(W ∘ C) x̂)``. On several threads
        (:mod:`gpal._row_blas`) each thread runs all of this on its chunk of rows, the
        row normalisation and the scalings too, while the chunk is in cache.
        """
        s2 = float(self.signal_variance)
        alpha = np.ascontiguousarray(alpha, dtype=np.float64)
        chunks = _threads.row_chunks(len(X))
        if chunks:  # the same by chunks of rows on numba's threads (gpal._row_blas)
            from . import _row_blas

            return _row_blas.prediction_terms(X, Zh, alpha, self._kind, float(self._shape_param()), s2,
                                              chunks, norms=xn, K=K)
        Xh = X
        if xn is None:
            Xh, xn = _jit._normalize_rows(X)
        C = Xh @ Zh.T
        K, energy, rowdot = _jit._prediction_pass(C, alpha, self._kind, float(self._shape_param()), s2)
        G = C @ Zh  # C now holds the weights alpha_m f'(c_nm)
        G -= rowdot[:, None] * Xh
        G *= (s2 * self._inverse_norms(xn))[:, None]
        return K, energy, G

    def contract_gradient(self, X, Z, center, dX, eval_gradient: bool = False):
        """Kernel gradient contracted with pair derivatives of the descriptor.

        ``out[p, a, m] = Σ_f ∂k(x_{c_p}, z_m)/∂x_f · dX[p, a, f]``, ``c_p = center[p]``:
        the building block of training force and stress rows. Computed from the BLAS
        product ``dX·Ẑᵀ`` and the per-pair projections ``dX·x̂_{c_p}``; no
        (n, m, n_features) array is formed.

        Parameters
        ----------
        X : array_like of shape (n, n_features)
            Descriptor rows of the atoms of a frame.
        Z : array_like of shape (m, n_features)
            Sparse (inducing) rows.
        center : array_like of int, shape (n_pairs,)
            Row of ``X`` each pair derivative belongs to.
        dX : array_like of shape (n_pairs, 3, n_features)
            ``dX[p]`` = derivative of ``X[center[p]]`` with respect to a pair vector.
        eval_gradient : bool, default False
            Also return the derivative with respect to ``theta`` (log space).

        Returns
        -------
        out : ndarray of shape (n_pairs, 3, m)
        out_gradient : ndarray of shape (n_pairs, 3, m, n_dims)
            ``d out / d theta``; only when ``eval_gradient`` is True.
        """
        X, Xh, xn, Z, Zh, zn = self._prepare(X, Z)
        n, F = X.shape
        m = Zh.shape[0]
        center = np.asarray(center)
        if center.ndim != 1 or (center.size and center.dtype.kind not in "iu"):
            raise TypeError("center must be a 1-D integer array of shape (n_pairs,)")
        center = np.ascontiguousarray(center, dtype=np.int64)
        P = center.shape[0]
        if P and (center.min() < 0 or center.max() >= n):
            raise ValueError(
                f"center indices must lie in [0, {n}), "
                f"got [{center.min()}, {center.max()}]"
            )
        dX = np.asarray(dX)
        if dX.dtype.kind not in "biuf":
            raise TypeError(f"dX must be a real numeric array, got dtype {dX.dtype}")
        dX = np.ascontiguousarray(dX, dtype=np.float64)
        if dX.shape != (P, 3, F):
            raise ValueError(
                f"dX must have shape (n_pairs, 3, n_features) = {(P, 3, F)}, "
                f"got {dX.shape}"
            )
        C, _ = self._cosines(Xh, xn, Zh, False)
        p = float(self._shape_param())
        D = (dX.reshape(P * 3, F) @ Zh.T).reshape(P, 3, m)  # dX·ẑ_j  [P, 3, m]
        b = _jit._pair_projection(dX, Xh, center)  # dX·x̂_c  [P, 3]
        _jit._pair_tangent(D, b, C, center)  # dX·(ẑ_j - c x̂)
        scale = float(self.signal_variance) * self._inverse_norms(xn)  # [n]
        Fp = _jit._apply_fprime(C, self._kind, p)
        out = _jit._pair_scale(D, Fp, scale, center)
        if not eval_gradient:
            return out
        names = self._free_names()
        grad = np.empty(out.shape + (len(names),))
        for k, name in enumerate(names):
            if name == "signal_variance":
                grad[..., k] = out
            else:
                grad[..., k] = _jit._pair_scale(
                    D, _jit._apply_fprime_dparam(C, self._kind, p), scale, center
                )
        return out, grad

    def contract_rows(self, X, Z, center, neighbor, dX, vector, n_atoms: int, pairs=None,
                      cols=None, first: int = 0, out=None,
                      block: int = _ROWS_BLOCK) -> tuple[np.ndarray, np.ndarray]:
        """Force rows and virial of a frame from its pair derivatives, block by block.

        Equal (up to summation order) to :func:`gpal.descriptors.pair_forces` of
        :meth:`contract_gradient` and the unsymmetrised virial ``Σ_p out[p, a, :]
        vector[p, b]``, but the (n_pairs, 3, m) products live only ``block`` pairs at a
        time (one BLAS product ``dX·Ẑᵀ`` per block, then one compiled pass that forms
        the tangential gradient and adds it to both atoms of the pair and to the
        virial), so a frame of many pairs stays in cache instead of streaming arrays
        of n_pairs x 3 x m floats through memory several times.

        Parameters
        ----------
        X : array_like of shape (n, n_features)
            Descriptor rows of the frame's atoms ``first:first + n`` (all of them, or
            the centres of one :meth:`gpal.SOAP.derivative_blocks` block).
        Z : array_like of shape (m, n_features)
            Sparse rows.
        center, neighbor : array_like of int, shape (n_pairs,)
            Atoms (``< n_atoms``) of each pair; every centre has its row in ``X``.
        dX : ndarray of shape (n_pairs, 3, n_features)
            ``dX[p]`` = derivative of ``X[center[p]]`` with respect to pair vector ``p``.
        vector : array_like of shape (n_pairs, 3)
            Pair vectors, Å.
        n_atoms : int
        pairs : array_like of int, optional
            Use only these pairs (indices into the pair arrays), gathered a block at a
            time instead of copied up front (one species' centres of a frame).
        cols : array_like of int, optional
            The only features where these pairs' ``dX`` can be non-zero (the pairs of
            one neighbour species, :meth:`gpal.SOAP.neighbor_columns`): the products
            skip the others. The kernel's norms and cosines still use every feature.
        first : int, default 0
            The atom of ``X``'s first row.
        out : (rows_f, virial), optional
            Arrays of the shapes returned, added to in place (and returned).
        block : int, optional
            Pairs per BLAS product.

        Returns
        -------
        rows_f : ndarray of shape (n_atoms, 3, m)
            ``-∂k(frame, z_m)/∂r`` summed over the frame's atoms: the force rows.
        virial : ndarray of shape (3, 3, m)
            ``Σ_p ∂k/∂vector[p, a] vector[p, b]``; the stress rows are its symmetric
            part over the volume (:func:`gpal.descriptors.pair_stress`).
        """
        X, Xh, xn, Z, Zh, zn = self._prepare(X, Z)
        F = X.shape[1]
        center = np.ascontiguousarray(center, dtype=np.int64)
        neighbor = np.ascontiguousarray(neighbor, dtype=np.int64)
        vector = np.ascontiguousarray(vector, dtype=np.float64)
        dX = np.ascontiguousarray(dX, dtype=np.float64)
        P = len(center)
        if dX.shape != (P, 3, F) or neighbor.shape != (P,) or vector.shape != (P, 3):
            raise ValueError(f"dX, neighbor and vector must have shapes {(P, 3, F)}, ({P},) and "
                             f"({P}, 3); got {dX.shape}, {neighbor.shape} and {vector.shape}")
        sel = np.arange(P) if pairs is None else np.asarray(pairs, dtype=np.int64)
        if sel.ndim != 1 or (sel.size and (sel.min() < 0 or sel.max() >= P)):
            raise ValueError(f"pairs must be indices into the {P} pairs")
        if sel.size and (min(center[sel].min() - first, neighbor[sel].min()) < 0
                         or center[sel].max() - first >= len(X)
                         or max(center[sel].max(), neighbor[sel].max()) >= n_atoms):
            raise ValueError("center or neighbor index out of range")
        if cols is not None:
            cols = np.asarray(cols, dtype=np.int64)
            if cols.ndim != 1 or (cols.size and (cols.min() < 0 or cols.max() >= F)):
                raise ValueError(f"cols must be indices into the {F} features")
        m = Zh.shape[0]
        if out is not None and (out[0].shape != (int(n_atoms), 3, m) or out[1].shape != (3, 3, m)):
            raise ValueError(f"out must have shapes ({int(n_atoms)}, 3, {m}) and (3, 3, {m})")
        return self._contract_groups(Xh, xn, Zh, center, neighbor, dX, vector, int(n_atoms),
                                     [(pairs, cols)], first, out, block)

    def _contract_groups(self, Xh, xn, Zh, center, neighbor, dX, vector, n_atoms, groups,
                         first=0, out=None, block=_ROWS_BLOCK):
        """:meth:`contract_rows` of several (pairs, cols) groups with one set of cosines.

        Unit rows ``Xh`` (norms ``xn``) and ``Zh`` as :meth:`_prepare` gives them;
        arrays already checked. The cosines and kernel weights of the centres are
        formed once for all the groups (the neighbour species of a frame).
        """
        C, _ = self._cosines(Xh, xn, Zh, False)
        targets = [(_jit._apply_fprime(C, self._kind, float(self._shape_param())),
                    float(self.signal_variance) * self._inverse_norms(xn))]
        m = Zh.shape[0]
        rows_f, virial = out if out is not None else (np.zeros((n_atoms, 3, m)), np.zeros((3, 3, m)))
        for pairs, cols in groups:
            sel = slice(None) if pairs is None else np.asarray(pairs, dtype=np.int64)
            ZT = np.ascontiguousarray((Zh if cols is None else Zh[:, cols]).T)
            Xc = Xh if cols is None else np.ascontiguousarray(Xh[:, cols])
            _pair_rows_blocked(dX, None if pairs is None else sel, cols, Xc, ZT, C,
                               center[sel], neighbor[sel], vector[sel],
                               [(W, sc, rows_f, virial) for W, sc in targets], first, block)
        return rows_f, virial


class NormalizedDotProduct(CosineKernel):
    """Normalised dot-product (SOAP) kernel ``k = signal_variance * (x̂·ẑ)**zeta``.

    Parameters
    ----------
    zeta : int, default 4
        Integer exponent >= 1 (a setting, not a hyperparameter).
    signal_variance : float, default 1.0
        Prior variance of the local energy, eV².
    signal_variance_bounds : (float, float) or "fixed", default (1e-3, 1e3)
        Bounds for hyperparameter optimisation.

    Examples
    --------
    >>> import numpy as np
    >>> from gpal.kernels import NormalizedDotProduct
    >>> k = NormalizedDotProduct(zeta=2, signal_variance=2.0)
    >>> k(np.array([[1.0, 0.0], [1.0, 1.0]]))
    array([[2., 1.],
           [1., 2.]])
    """

    _kind = _jit.KIND_DOT
    _hyperparameter_names = ("signal_variance",)

    def __init__(self, zeta=4, signal_variance=1.0, signal_variance_bounds=(1e-3, 1e3)):
        self.zeta = zeta
        self.signal_variance = signal_variance
        self.signal_variance_bounds = signal_variance_bounds

    def _shape_param(self) -> float:
        return float(self.zeta)

    def _validate(self) -> None:
        z = self.zeta
        if isinstance(z, bool) or not isinstance(z, numbers.Integral) or z < 1:
            raise ValueError(f"zeta must be an integer >= 1, got {z!r}")
        super()._validate()

    def quadratic_form(self, Z_unit, alpha) -> np.ndarray | None:
        """``A = Σ_m alpha_m ẑ_m ẑ_mᵀ`` for ζ = 2, else None.

        With ζ = 2 the weighted kernel sum is a quadratic form in the unit descriptor,
        ``Σ_m alpha_m k(x, z_m) = signal_variance x̂ᵀ A x̂``: a prediction that needs no
        kernel rows (no local stds) costs one (n, F) × (F, F) product instead of two
        (n, F) × (F, m) ones (:meth:`quadratic_terms`).

        Parameters
        ----------
        Z_unit : ndarray of shape (m, n_features)
            Unit (or zero) sparse rows (:meth:`CosineKernel.unit_rows`).
        alpha : ndarray of shape (m,)

        Returns
        -------
        ndarray of shape (n_features, n_features) or None
        """
        self._validate()
        if self.zeta != 2:
            return None
        Z_unit = np.asarray(Z_unit, dtype=np.float64)
        A = Z_unit.T @ (np.asarray(alpha, dtype=np.float64)[:, None] * Z_unit)
        return np.ascontiguousarray(0.5 * (A + A.T))

    def quadratic_terms(self, X, A) -> tuple[np.ndarray, np.ndarray]:
        """Weighted kernel sums and their gradient from :meth:`quadratic_form` (ζ = 2).

        Equal to ``prediction_terms(X, Z_unit, alpha)[1:]`` (up to summation order):
        ``energy = s x̂ᵀAx̂`` and ``G = 2 s / |x| (A x̂ - (x̂ᵀAx̂) x̂)``, s the signal variance.

        Parameters
        ----------
        X : array_like of shape (n, n_features)
            Raw descriptor rows.
        A : ndarray of shape (n_features, n_features)

        Returns
        -------
        energy : ndarray of shape (n,)
        G : ndarray of shape (n, n_features)
        """
        X = _as_matrix(X, "X")
        return self._quadratic(*_jit._normalize_rows(X), A)[:2]

    def _quadratic(self, Xh, xn, A, Z_unit=None):
        """``(energy, G, K)`` of :meth:`quadratic_terms` from unit rows ``Xh`` and their
        norms ``xn``; with unit sparse rows ``Z_unit`` also the kernel rows ``K = s
        (X̂Ẑᵀ)²`` (:meth:`quadratic_rows`), else ``K`` None."""
        F = Xh.shape[1]
        if np.shape(A) != (F, F):
            raise ValueError(f"A must have shape ({F}, {F}), got {np.shape(A)}")
        if Z_unit is not None:
            Z_unit = np.asarray(Z_unit, dtype=np.float64)
            if Z_unit.ndim != 2 or Z_unit.shape[1] != F:
                raise ValueError(f"Z_unit must have shape (m, {F}), got {Z_unit.shape}")
        s2 = float(self.signal_variance)
        chunks = _threads.row_chunks(len(Xh))
        if chunks:  # the same by chunks of rows on numba's threads (gpal._row_blas)
            from . import _row_blas

            q, G, K = _row_blas.quadratic_terms(Xh, A, Z_unit, s2, chunks)
        else:
            G = Xh @ A
            q = np.einsum("ij,ij->i", G, Xh)
            K = None
            if Z_unit is not None:
                K = Xh @ Z_unit.T
                K *= K
                K *= s2
        G -= q[:, None] * Xh
        G *= (2.0 * s2 * self._inverse_norms(xn))[:, None]
        return s2 * q, G, K

    def quadratic_rows(self, X, Z_unit, A) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(K, energy, G)`` as :meth:`prediction_terms` gives them, for ζ = 2 with the
        energies and gradient from the quadratic form ``A`` (:meth:`quadratic_terms`,
        the same numbers a prediction without kernel rows gets) and ``K = s (X̂Ẑᵀ)²``.

        Parameters
        ----------
        X : array_like of shape (n, n_features)
        Z_unit : ndarray of shape (m, n_features)
        A : ndarray of shape (n_features, n_features)

        Returns
        -------
        K : ndarray of shape (n, m)
        energy : ndarray of shape (n,)
        G : ndarray of shape (n, n_features)
        """
        X = _as_matrix(X, "X")
        energy, G, K = self._quadratic(*_jit._normalize_rows(X), A, Z_unit)
        return K, energy, G

    def __repr__(self) -> str:
        return (
            f"NormalizedDotProduct(zeta={self.zeta}, "
            f"signal_variance={self.signal_variance:.3g})"
        )


class SquaredExponential(CosineKernel):
    """Squared-exponential kernel on normalised descriptor rows.

    ``k(x, z) = signal_variance * exp(-|x̂ - ẑ|² / (2 length_scale²))
    = signal_variance * exp((x̂·ẑ - 1) / length_scale²)``.

    Parameters
    ----------
    length_scale : float, default 1.0
        Length scale in the space of unit descriptor vectors (where distances are <= 2).
    length_scale_bounds : (float, float) or "fixed", default (1e-2, 1e2)
    signal_variance : float, default 1.0
        Prior variance of the local energy, eV².
    signal_variance_bounds : (float, float) or "fixed", default (1e-3, 1e3)
    """

    _kind = _jit.KIND_SE
    _hyperparameter_names = ("signal_variance", "length_scale")

    def __init__(
        self,
        length_scale=1.0,
        length_scale_bounds=(1e-2, 1e2),
        signal_variance=1.0,
        signal_variance_bounds=(1e-3, 1e3),
    ):
        self.length_scale = length_scale
        self.length_scale_bounds = length_scale_bounds
        self.signal_variance = signal_variance
        self.signal_variance_bounds = signal_variance_bounds

    def _shape_param(self) -> float:
        return float(self.length_scale)

    def _validate(self) -> None:
        ls = self.length_scale
        if isinstance(ls, bool) or not isinstance(ls, numbers.Real) or not (
            0.0 < float(ls) < np.inf
        ):
            raise ValueError(
                f"length_scale must be a positive finite number, got {ls!r}"
            )
        super()._validate()

    def __repr__(self) -> str:
        return (
            f"SquaredExponential(length_scale={self.length_scale:.3g}, "
            f"signal_variance={self.signal_variance:.3g})"
        )




def kernel_from_dict(d: dict) -> Kernel:
    """Rebuild a kernel from :meth:`Kernel.to_dict` output.

    Parameters
    ----------
    d : dict
        ``{"type": class name, "params": {...}}``.

    Returns
    -------
    Kernel

    Raises
    ------
    ValueError
        Malformed dict or unknown kernel type (the known types are listed).
    """
    if not isinstance(d, dict) or "type" not in d or "params" not in d:
        raise ValueError("a kernel dict needs the keys 'type' and 'params'")
    cls = _KERNEL_TYPES.get(d["type"])
    if cls is None:
        raise ValueError(
            f"Unknown kernel type {d['type']!r}; choose from {sorted(_KERNEL_TYPES)}"
        )
    params = dict(d["params"])
    for key, value in params.items():
        if key.endswith("_bounds") and isinstance(value, (list, tuple)):
            params[key] = tuple(float(v) for v in value)
    unknown = set(params) - set(cls._param_names())
    if unknown:
        raise ValueError(f"Unknown parameters for {cls.__name__}: {sorted(unknown)}")
    return cls(**params)
