"""Row-parallel BLAS passes of a prediction: numba threads, each calling one-thread BLAS.

Why
---
A prediction's two largest dense steps, the kernel products of the atoms against the
sparse points (``C = X̂ Ẑᵀ`` and the gradient ``W Ẑ``; for a ζ = 2 model ``X̂ A``) and
the local-energy stds' two triangular products, are independent from one atom (row) to
the next. gpal runs BLAS on one thread inside a prediction (:mod:`gpal._threads`:
OpenBLAS's own threads spin against numba's and lose on small blocks), so on a quiet
machine these steps used one core while numba's SOAP passes used all of them. Here each
numba thread of a ``prange`` over chunks of rows calls BLAS on its own rows: the threads
are numba's own (no second thread pool, no oversubscription), and BLAS stays
single-threaded inside each chunk (:func:`gpal._threads.row_chunks` allows the passes
only inside a gpal call that holds every BLAS library it sees to one thread).

How
---
``scipy.linalg.cython_blas`` (the BLAS scipy itself uses) exports ``dgemm``, ``dtrmm``
and ``strmm`` as C function pointers; :func:`available` binds them once, at first use, to
LLVM symbols that the compiled passes in :mod:`gpal._jit` call as external functions.
The compiled code refers to the symbols by name, so numba's on-disk cache stays valid
from one process to the next (a pointer baked into the code would not). A self-test
against numpy guards the binding; if anything fails, callers keep their serial path.
The functions here check and convert their arguments (float64, C or Fortran order,
shapes), bind the symbols if needed, and call the passes.

Results equal the serial path's up to the order of sums (the products of another BLAS
build, and per-chunk partial sums): a prediction's numbers depend, at the rounding
level, on the thread count gpal chooses, which follows the machine's load.

Measured (108-atom Cu cell, 500 sparse points, n_max 8, l_max 6; 2 cores, quiet): the
(108 x 252) x (252 x 500) product took 226 µs on two numba threads against 373 µs on
one (numpy: 366 µs). The MD step: ``benchmarks/bench_md.py``.
"""

from __future__ import annotations

import numpy as np

from . import _jit

__all__ = ["available", "prediction_terms", "quadratic_terms", "std_terms"]

_STATE: list = []  # [bool] once :func:`available` has looked


def available() -> bool:
    """Whether the row-parallel passes can run here (bound and self-tested once)."""
    if not _STATE:
        ok = False
        try:
            import llvmlite.binding as llvm
            from numba.extending import get_cython_function_address

            for name in ("dgemm", "dtrmm", "strmm"):
                llvm.add_symbol(f"gpal_cython_blas_{name}",
                                get_cython_function_address("scipy.linalg.cython_blas", name))
            _STATE.append(True)  # (the self-test calls the passes)
            ok = _self_test()
        except Exception:  # (no cython BLAS, no symbol binding: the serial path)
            ok = False
        _STATE[:] = [ok]
    return _STATE[0]


def _self_test() -> bool:
    rng = np.random.default_rng(0)
    X, Z = rng.random((7, 5)), rng.random((6, 5))
    alpha = rng.random(6)
    Xh = X / np.linalg.norm(X, axis=1)[:, None]
    K, e, G = prediction_terms(Xh, Z, alpha, _jit.KIND_DOT, 2.0, 1.0, 2, norms=np.ones(len(X)))
    C = Xh @ Z.T
    close = dict(rtol=1e-13, atol=0)
    W = 2.0 * C * alpha
    ok = (np.allclose(K, C**2, **close) and np.allclose(e, (C**2) @ alpha, **close)
          and np.allclose(G, W @ Z - (W * C).sum(1)[:, None] * Xh, rtol=1e-13, atol=1e-14))
    A = rng.random((5, 5))
    A = A + A.T
    q, Gq, Kq = quadratic_terms(Xh, A, Z, 0.5, 2)
    ok = ok and np.allclose(Gq, Xh @ A, **close) and np.allclose(Kq, 0.5 * C**2, **close)
    L = np.tril(rng.random((6, 6))) + 6 * np.eye(6)
    U = np.triu(rng.random((6, 6))) + 6 * np.eye(6)
    q, sor, ws, vs = std_terms(C, L, U, True, 2, 3)
    Wt = L @ C.T
    Vt = U @ Wt
    single = dict(rtol=1e-5, atol=0)  # (v in single precision)
    return bool(ok and np.allclose(q, (Wt**2).sum(0), **close) and np.allclose(sor, (Vt**2).sum(0), **single)
                and np.allclose(ws, Wt.sum(1), **close) and np.allclose(vs, Vt.sum(1), **single))


def _rows(x, name: str, order: str = "C") -> np.ndarray:
    a = np.require(x, dtype=np.float64, requirements=[order])
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {a.shape}")
    return a


def _ready(n_chunks: int) -> int:
    if not available():
        raise RuntimeError("the row-parallel BLAS passes cannot run here (scipy's cython_blas could not be bound)")
    n_chunks = int(n_chunks)
    if n_chunks < 1:
        raise ValueError(f"n_chunks must be >= 1, got {n_chunks}")
    return n_chunks


def prediction_terms(X, Zh, alpha, kind: int, p: float, s2: float, n_chunks: int, norms=None, K=None):
    """``(K, energy, G)`` of :meth:`gpal.kernels.CosineKernel.prediction_terms`.

    Parameters
    ----------
    X : array_like (n, F)
        Raw descriptor rows; or, with ``norms``, the unit rows.
    Zh : array_like (m, F)
        Unit sparse rows.
    alpha : array_like (m,)
    kind, p, s2
        The kernel's kind code (:data:`gpal._jit.KIND_DOT`, ...), shape parameter and
        signal variance.
    n_chunks : int
        Chunks of rows (numba's threads share them out).
    norms : array_like (n,), optional
        The norms of the raw rows when ``X`` holds the unit rows.
    K : ndarray (n, m), optional
        Where to write the kernel rows (C-contiguous float64, e.g. rows of a buffer that
        keeps them); a new array if not given.

    Returns
    -------
    K : ndarray (n, m)
        ``s2 f(X̂ Ẑᵀ)`` (the given ``K``, if any).
    energy : ndarray (n,)
        ``K alpha``.
    G : ndarray (n, F)
        ``Σ_m alpha_m ∂k(x_n, z_m)/∂x_n = s2/|x| (W Ẑ - rowsum(W ∘ X̂Ẑᵀ) x̂)`` with ``W =
        alpha ∘ f'(X̂ Ẑᵀ)`` (zero for a zero row).
    """
    n_chunks = _ready(n_chunks)
    X, Zh = _rows(X, "X"), _rows(Zh, "Zh")
    alpha = np.ascontiguousarray(alpha, dtype=np.float64)
    (n, F), m = X.shape, len(Zh)
    if Zh.shape[1] != F or alpha.shape != (m,):
        raise ValueError(f"Zh must have shape (m, {F}) and alpha (m,); got {Zh.shape} and {alpha.shape}")
    if norms is None:
        norms = np.zeros(0)
    else:
        norms = np.ascontiguousarray(norms, dtype=np.float64)
        if norms.shape != (n,):
            raise ValueError(f"norms must have shape ({n},), got {norms.shape}")
    if K is None:
        K = np.empty((n, m))
    elif not (isinstance(K, np.ndarray) and K.shape == (n, m) and K.dtype == np.float64
              and K.flags.c_contiguous and K.flags.writeable):
        raise ValueError(f"K must be a writeable C-contiguous float64 array of shape {(n, m)}")
    energy, G = np.empty(n), np.empty((n, F))
    _jit._prediction_terms_rows(X, norms, Zh, alpha, int(kind), float(p), float(s2), K, energy, G, n_chunks)
    return K, energy, G


def quadratic_terms(Xh, A, Zh, s2: float, n_chunks: int):
    """``(q, G, K)``: ``G = X̂ A``, ``q = rowsum(G ∘ X̂)`` and, given ``Zh`` (else None),
    ``K = s2 (X̂ Ẑᵀ)²`` (:meth:`gpal.kernels.NormalizedDotProduct.quadratic_rows`).

    Parameters
    ----------
    Xh : array_like (n, F)
    A : array_like (F, F)
        Symmetric.
    Zh : array_like (m, F) or None
    s2 : float
    n_chunks : int

    Returns
    -------
    q : ndarray (n,); G : ndarray (n, F); K : ndarray (n, m) or None
    """
    n_chunks = _ready(n_chunks)
    Xh, A = _rows(Xh, "Xh"), _rows(A, "A")
    n, F = Xh.shape
    if A.shape != (F, F):
        raise ValueError(f"A must have shape ({F}, {F}), got {A.shape}")
    with_k = Zh is not None
    if with_k:
        Zh = _rows(Zh, "Zh")
        if Zh.shape[1] != F:
            raise ValueError(f"Zh must have shape (m, {F}), got {Zh.shape}")
    q, G = np.empty(n), np.empty((n, F))
    K = np.empty((n, len(Zh))) if with_k else G
    _jit._quadratic_terms_rows(Xh, A, Zh if with_k else Xh, with_k, float(s2), q, G, K, n_chunks)
    return q, G, (K if with_k else None)


def std_terms(Kz, Linv, U, with_sor: bool, n_chunks: int, block: int = 256, overwrite: bool = False):
    """``(q, sor, wsum, vsum)`` of :meth:`gpal.model.potential._LocalStdFactors.terms`:
    ``q = |L⁻¹k|²`` and ``sor = |U L⁻¹k|²`` of each row ``k`` of ``Kz``, ``wsum = Σ_k
    L⁻¹k`` and ``vsum = Σ_k U L⁻¹k`` (``sor`` and ``vsum`` zero without ``with_sor``).

    Parameters
    ----------
    Kz : array_like (n, m)
    Linv, U : array_like (m, m)
        Lower- and upper-triangular factors (only their triangles are read). ``U`` is
        taken in single precision: ``v = U L⁻¹k`` is formed by BLAS strmm (from ``L⁻¹k``
        rounded to float32), its squares and sums in double.
    with_sor : bool
    n_chunks : int
    block : int, default 256
        Rows per triangular product within a chunk (they stay in cache).
    overwrite : bool, default False
        True: the products may run on the rows of ``Kz`` themselves (C-contiguous
        float64, not needed after), which then hold ``L⁻¹k``; no copy of them.

    Returns
    -------
    q : ndarray (n,); sor : ndarray (n,); wsum : ndarray (m,); vsum : ndarray (m,)
    """
    n_chunks = _ready(n_chunks)
    Kz = _rows(Kz, "Kz")
    Linv = _rows(Linv, "Linv", "F")
    U = np.require(U, dtype=np.float32, requirements=["F"])
    n, m = Kz.shape
    if Linv.shape != (m, m) or U.shape != (m, m):
        raise ValueError(f"Linv and U must have shape ({m}, {m}); got {Linv.shape} and {U.shape}")
    block = int(block)
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    q, sor, parts = np.empty(n), np.zeros(n), np.zeros((2, n_chunks, m))
    _jit._std_terms_rows(Kz, Linv, U, bool(with_sor), q, sor, parts[0], parts[1], n_chunks, block,
                         bool(overwrite) and Kz.flags.writeable)
    wsum, vsum = parts.sum(axis=1)
    return q, sor, wsum, vsum
