"""Row-parallel BLAS passes of a prediction: numba threads, each calling one-thread BLAS.

Why
---
A prediction's two largest dense steps, the kernel products of the atoms against the
sparse points (``C = X̂ Ẑᵀ`` and the gradient ``W Ẑ``) and the local-energy stds' two
triangular products, are independent from one atom (row) to the next. gpal runs BLAS
on one thread inside a prediction (:mod:`gpal._threads`: OpenBLAS's own threads spin
against numba's and lose on small blocks), so on a quiet machine these steps used one
core while numba's SOAP passes used all of them. Here each numba thread of a ``prange``
over chunks of rows calls BLAS on its own rows: the threads are numba's own (no other
thread pool, no oversubscription), and BLAS stays single-threaded inside each chunk.

How
---
``scipy.linalg.cython_blas`` (the BLAS scipy itself uses) exports ``dgemm`` and
``dtrmm`` as C function pointers; :func:`available` binds them once, at first use, to
LLVM symbols that the compiled functions below call as external functions. The
compiled code refers to the symbols by name, so numba's on-disk cache stays valid
from one process to the next (a pointer baked into the code would not). A small
self-test against numpy guards the binding; if anything fails, callers keep their
serial numpy/scipy path.

Measured (108-atom Cu cell, 500 sparse points, n_max 8, l_max 6; 2 cores, quiet): the
(108 x 252) x (252 x 500) product took 226 µs on two numba threads against 373 µs on
one (numpy: 366 µs). See ``benchmarks/bench_md.py`` for the MD step.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import types

from ._jit import _prediction_pass_into

__all__ = ["available", "prediction_terms_rows", "std_terms_rows"]

_VP = types.voidptr
_dgemm = types.ExternalFunction("gpal_cython_blas_dgemm", types.void(*([_VP] * 13)))
_dtrmm = types.ExternalFunction("gpal_cython_blas_dtrmm", types.void(*([_VP] * 11)))
_STATE: list = []  # [bool] once :func:`available` has looked

def available() -> bool:
    """Whether the row-parallel passes can run here (bound and self-tested once)."""
    if not _STATE:
        ok = False
        try:
            import llvmlite.binding as llvm
            from numba.extending import get_cython_function_address

            for name in ("dgemm", "dtrmm"):
                llvm.add_symbol(f"gpal_cython_blas_{name}",
                                get_cython_function_address("scipy.linalg.cython_blas", name))
            ok = _self_test()
        except Exception:  # (no cython BLAS, no symbol binding: the serial path)
            ok = False
        _STATE.append(ok)
    return _STATE[0]


def _self_test() -> bool:
    rng = np.random.default_rng(0)
    X, Z = rng.random((7, 5)), rng.random((6, 5))
    alpha = rng.random(6)
    K, e, d, G = np.empty((7, 6)), np.empty(7), np.empty(7), np.empty((7, 5))
    prediction_terms_rows(X, Z, alpha, 0, 2.0, 1.0, K, e, d, G, 2)
    C = X @ Z.T
    W = 2.0 * C * alpha
    ok = (np.allclose(K, C**2, rtol=1e-13, atol=0) and np.allclose(G, W @ Z, rtol=1e-13, atol=0)
          and np.allclose(e, (C**2) @ alpha, rtol=1e-13, atol=0))
    L = np.asfortranarray(np.tril(rng.random((6, 6))) + 6 * np.eye(6))
    U = np.asfortranarray(np.triu(rng.random((6, 6))) + 6 * np.eye(6))
    q, sor, ws = np.empty(7), np.empty(7), np.zeros((2, 6))
    std_terms_rows(np.ascontiguousarray(C), L, U, True, q, sor, ws, 2, 3)
    Wt = L @ C.T
    Vt = U @ Wt
    return bool(ok and np.allclose(q, (Wt**2).sum(0), rtol=1e-13, atol=0)
                and np.allclose(sor, (Vt**2).sum(0), rtol=1e-13, atol=0)
                and np.allclose(ws.sum(0), Wt.sum(1), rtol=1e-13, atol=0))


@numba.njit(cache=True)
def _gemm(ta, tb, m, n, k, A, lda, B, ldb, C, ldc):
    """Column-major ``C (m, n) = op(A) op(B)`` (Fortran BLAS dgemm, beta 0)."""
    ch = np.empty(2, np.uint8)
    ch[0] = ta
    ch[1] = tb
    ints = np.empty(6, np.int32)
    ints[0] = m
    ints[1] = n
    ints[2] = k
    ints[3] = lda
    ints[4] = ldb
    ints[5] = ldc
    sc = np.empty(2)
    sc[0] = 1.0
    sc[1] = 0.0
    _dgemm(ch[0:].ctypes, ch[1:].ctypes, ints[0:].ctypes, ints[1:].ctypes, ints[2:].ctypes,
           sc[0:].ctypes, A.ctypes, ints[3:].ctypes, B.ctypes, ints[4:].ctypes, sc[1:].ctypes,
           C.ctypes, ints[5:].ctypes)


@numba.njit(cache=True)
def _trmm_left(uplo, m, n, T, B):
    """Column-major ``B (m, n) := T B`` for a triangular ``T`` (m, m) (Fortran dtrmm)."""
    ch = np.empty(4, np.uint8)
    ch[0] = 76  # side 'L'
    ch[1] = uplo
    ch[2] = 78  # 'N'
    ch[3] = 78  # non-unit diagonal
    ints = np.empty(4, np.int32)
    ints[0] = m
    ints[1] = n
    ints[2] = m
    ints[3] = m
    one = np.ones(1)
    _dtrmm(ch[0:].ctypes, ch[1:].ctypes, ch[2:].ctypes, ch[3:].ctypes, ints[0:].ctypes,
           ints[1:].ctypes, one.ctypes, T.ctypes, ints[2:].ctypes, B.ctypes, ints[3:].ctypes)


@numba.njit(cache=True, parallel=True)
def prediction_terms_rows(Xh, Zh, alpha, kind, p, s2, K, energy, rowdot, G, n_chunks):
    """``CosineKernel._terms`` before its last two row scalings, by chunks of rows.

    For the rows ``r`` of each chunk: ``C = X̂_r Ẑᵀ`` (dgemm), the pass of
    :func:`gpal._jit._prediction_pass_into` (``K_r``, ``energy_r``, ``rowdot_r``; ``C``
    becomes the weights ``W``), then ``G_r = W Ẑ`` (dgemm).

    Parameters
    ----------
    Xh : ndarray (n, F), C-contiguous; Zh : ndarray (m, F), C-contiguous
    alpha : ndarray (m,)
    kind, p, s2 : the kernel's kind code, shape parameter and signal variance
    K : ndarray (n, m); energy, rowdot : ndarray (n,); G : ndarray (n, F)
        Outputs, C-contiguous.
    n_chunks : int
    """
    n, F = Xh.shape
    m = Zh.shape[0]
    for ch in numba.prange(n_chunks):
        r0 = ch * n // n_chunks
        r1 = (ch + 1) * n // n_chunks
        rb = r1 - r0
        if rb <= 0:
            continue
        C = np.empty((rb, m))
        # row-major C (rb, m) = X̂_r Ẑᵀ is column-major Cᵀ (m, rb) = Ẑ X̂_rᵀ
        _gemm(84, 78, m, rb, F, Zh, F, Xh[r0:r1], F, C, m)
        _prediction_pass_into(C, alpha, kind, p, s2, K[r0:r1], energy[r0:r1], rowdot[r0:r1])
        # row-major G_r (rb, F) = W Ẑ is column-major G_rᵀ (F, rb) = Ẑᵀ Wᵀ
        _gemm(78, 78, F, rb, m, Zh, F, C, m, G[r0:r1], F)


@numba.njit(cache=True, parallel=True)
def std_terms_rows(Kz, Linv, U, with_sor, q, sor, wsum_parts, n_chunks, block):
    """``_LocalStdFactors.terms`` by chunks of rows: ``q = |L⁻¹k|²``, ``sor = |U L⁻¹k|²``
    of each row ``k`` of ``Kz`` and each chunk's ``Σ L⁻¹k`` in ``wsum_parts[chunk]``.

    Parameters
    ----------
    Kz : ndarray (n, m), C-contiguous kernel rows
    Linv, U : ndarray (m, m), Fortran order: lower- and upper-triangular factors
    with_sor : bool
        False: ``sor`` is left as it is.
    q, sor : ndarray (n,); wsum_parts : ndarray (n_chunks, m), zeros
    n_chunks : int
    block : int
        Rows per triangular product within a chunk (they stay in cache).
    """
    n, m = Kz.shape
    for ch in numba.prange(n_chunks):
        r0 = ch * n // n_chunks
        r1 = (ch + 1) * n // n_chunks
        if r1 <= r0:
            continue
        buf = np.empty((min(block, r1 - r0), m))
        ws = wsum_parts[ch]
        for s in range(r0, r1, block):
            rb = min(s + block, r1) - s
            for r in range(rb):
                for j in range(m):
                    buf[r, j] = Kz[s + r, j]
            # row-major buf (rb, m) is column-major (m, rb): its columns are the rows k
            _trmm_left(76, m, rb, Linv, buf)  # 'L': lower
            for r in range(rb):
                a0 = 0.0
                a1 = 0.0
                for j in range(0, m - 1, 2):
                    v0 = buf[r, j]
                    v1 = buf[r, j + 1]
                    a0 += v0 * v0
                    a1 += v1 * v1
                    ws[j] += v0
                    ws[j + 1] += v1
                if m % 2:
                    v0 = buf[r, m - 1]
                    a0 += v0 * v0
                    ws[m - 1] += v0
                q[s + r] = a0 + a1
            if with_sor:
                _trmm_left(85, m, rb, U, buf)  # 'U': upper
                for r in range(rb):
                    a0 = 0.0
                    a1 = 0.0
                    for j in range(0, m - 1, 2):
                        a0 += buf[r, j] * buf[r, j]
                        a1 += buf[r, j + 1] * buf[r, j + 1]
                    if m % 2:
                        a0 += buf[r, m - 1] * buf[r, m - 1]
                    sor[s + r] = a0 + a1


@numba.njit(cache=True, parallel=True)
def quadratic_terms_rows(Xh, A, Zh, with_k, s2, q, G, K, n_chunks):
    """``NormalizedDotProduct._quadratic`` (and the kernel rows of ``quadratic_rows``)
    before their row scalings, by chunks of rows: ``G_r = X̂_r A`` (dgemm, ``A``
    symmetric), ``q_r = rowsum(G_r ∘ X̂_r)``, and with ``with_k`` ``K_r = s2 (X̂_r Ẑᵀ)²``.

    Parameters
    ----------
    Xh : ndarray (n, F), C-contiguous; A : ndarray (F, F), symmetric, C-contiguous
    Zh : ndarray (m, F), C-contiguous (any shape when not ``with_k``)
    with_k : bool
    s2 : float
    q : ndarray (n,); G : ndarray (n, F); K : ndarray (n, m) (unused without ``with_k``)
    n_chunks : int
    """
    n, F = Xh.shape
    m = Zh.shape[0]
    for ch in numba.prange(n_chunks):
        r0 = ch * n // n_chunks
        r1 = (ch + 1) * n // n_chunks
        rb = r1 - r0
        if rb <= 0:
            continue
        # row-major G_r (rb, F) = X̂_r A is column-major G_rᵀ (F, rb) = Aᵀ X̂_rᵀ = A X̂_rᵀ
        _gemm(78, 78, F, rb, F, A, F, Xh[r0:r1], F, G[r0:r1], F)
        for r in range(r0, r1):
            a0 = 0.0
            a1 = 0.0
            for f in range(0, F - 1, 2):
                a0 += G[r, f] * Xh[r, f]
                a1 += G[r, f + 1] * Xh[r, f + 1]
            if F % 2:
                a0 += G[r, F - 1] * Xh[r, F - 1]
            q[r] = a0 + a1
        if with_k:
            Kr = K[r0:r1]
            _gemm(84, 78, m, rb, F, Zh, F, Xh[r0:r1], F, Kr, m)
            for r in range(rb):
                for j in range(m):
                    Kr[r, j] = s2 * (Kr[r, j] * Kr[r, j])
