"""Numba leaf routines behind :mod:`gpal.kernels` (and the row-parallel passes of
:mod:`gpal._row_blas`, which call BLAS from numba's threads; call them only through
that module, which binds the BLAS symbols first).

Everything here is a small function of plain arrays and scalars, compiled with
``@numba.njit(cache=True)`` and *without* fastmath: these values feed Cholesky
factorisations and variance subtractions, where reassociation and flush-to-zero are not
safe. The one exception is :func:`_row_square_and_add` (and
:func:`_row_square_add_single`), a plain sum of squares whose order is arbitrary anyway
(reassociation into vector lanes only: no flush-to-zero, no other flag). No argument
checking happens here; the public wrappers in :mod:`gpal.kernels` hand in C-contiguous
float64 arrays of consistent shapes.

The kernels are functions of the cosine ``c = x̂·ẑ`` of two descriptor rows,
``k = signal_variance * f(c)``. A kernel *kind* is an integer code so that one compiled
routine serves every kind without passing functions around (which would defeat
caching):

=========  ======================  ===========================  =======================
kind       f(c)                    f'(c) = df/dc                shape parameter ``p``
=========  ======================  ===========================  =======================
KIND_DOT   c**zeta                 zeta * c**(zeta - 1)         zeta (integer, >= 1)
KIND_SE    exp((c - 1) / l**2)     f(c) / l**2                  length scale l
=========  ======================  ===========================  =======================

For ``KIND_SE`` the derivatives with respect to ``log l`` are also provided::

    df/dlog(l)  = -2 (c - 1) / l**2 * f(c)
    df'/dlog(l) = -2 f'(c) (1 + (c - 1) / l**2)

``KIND_DOT`` has no continuous shape hyperparameter; its ``*_dparam`` values are zero.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import types

KIND_DOT = 0
KIND_SE = 1


# ----------------------------------------------------------------------------- scalars
@numba.njit(cache=True)
def _ipow(c, n):
    """c**n for an integer n >= 0 by repeated squaring (exact sign for c < 0)."""
    result = 1.0
    base = c
    while n > 0:
        if n & 1:
            result *= base
        base *= base
        n >>= 1
    return result


@numba.njit(cache=True)
def _f_scalar(c, kind, p):
    """f(c) of one cosine."""
    if kind == KIND_DOT:
        return _ipow(c, int(p))
    return np.exp((c - 1.0) / (p * p))


@numba.njit(cache=True)
def _fprime_scalar(c, kind, p):
    """f'(c) = df/dc of one cosine."""
    if kind == KIND_DOT:
        n = int(p)
        return n * _ipow(c, n - 1)
    inv_l2 = 1.0 / (p * p)
    return inv_l2 * np.exp((c - 1.0) * inv_l2)


@numba.njit(cache=True)
def _f_dparam_scalar(c, kind, p):
    """df/dlog(p) of one cosine (zero for KIND_DOT)."""
    if kind == KIND_DOT:
        return 0.0
    u = (c - 1.0) / (p * p)
    return -2.0 * u * np.exp(u)


@numba.njit(cache=True)
def _fprime_dparam_scalar(c, kind, p):
    """df'/dlog(p) of one cosine (zero for KIND_DOT)."""
    if kind == KIND_DOT:
        return 0.0
    inv_l2 = 1.0 / (p * p)
    u = (c - 1.0) * inv_l2
    return -2.0 * inv_l2 * np.exp(u) * (1.0 + u)


@numba.njit(cache=True)
def _ipow_row(c, n, result, base):
    """result[j] = c[j]**n, the operations of :func:`_ipow` per element, as passes
    over the row (vectorised; the bits of n are the outer loop). base is scratch."""
    for j in range(c.shape[0]):
        result[j] = 1.0
        base[j] = c[j]
    while n > 0:
        if n & 1:
            for j in range(c.shape[0]):
                result[j] *= base[j]
        n >>= 1
        if n > 0:
            for j in range(c.shape[0]):
                base[j] *= base[j]


@numba.njit(cache=True, inline="always")
def _power_and_lower(c, j, zeta, fz, fp):
    """``(c[j]**zeta, c[j]**(zeta - 1))``: for ``zeta`` 1-4 from the same products as
    :func:`_ipow` (bit for bit), for larger ``zeta`` read from the rows ``fz``, ``fp``
    that :func:`_ipow_row` filled."""
    if zeta > 4:
        return fz[j], fp[j]
    x = c[j]
    if zeta == 4:
        q = x * x
        return q * q, x * q
    if zeta == 2:
        return x * x, x
    if zeta == 3:
        q = x * x
        return x * q, q
    return x, 1.0


@numba.njit(cache=True)
def _prediction_pass_dot(C, alpha, zeta, s2, K, energy, rowdot):
    """:func:`_prediction_pass` for ``KIND_DOT``: the same values per element (powers as
    :func:`_ipow` forms them), the row sums in four interleaved partial sums (a serial
    sum waits on each addition; the order changes the sums at the rounding level only).

    One pass per row, four elements at a time. For ζ <= 4 (the default is 4) both
    powers come from shared products inside the pass (:func:`_power_and_lower`): 79 ->
    52 µs for 108 x 500 cosines, one thread, where the powers were passes of their own;
    a larger ζ takes them from passes by powers over the row first (:func:`_ipow_row`;
    ``_ipow`` per element inside the pass was 1.7x slower).
    """
    n, m = C.shape
    m4 = m - m % 4
    z = float(zeta)
    big = zeta > 4
    fz = np.empty(m if big else 0)
    fp = np.empty(m if big else 0)
    base = np.empty(m if big else 0)
    for i in range(n):
        c = C[i]
        Ki = K[i]
        if big:
            _ipow_row(c, zeta, fz, base)
            _ipow_row(c, zeta - 1, fp, base)
        e0 = 0.0
        e1 = 0.0
        e2 = 0.0
        e3 = 0.0
        d0 = 0.0
        d1 = 0.0
        d2 = 0.0
        d3 = 0.0
        for j in range(0, m4, 4):
            c0 = c[j]
            c1 = c[j + 1]
            c2 = c[j + 2]
            c3 = c[j + 3]
            f0, g0 = _power_and_lower(c, j, zeta, fz, fp)
            f1, g1 = _power_and_lower(c, j + 1, zeta, fz, fp)
            f2, g2 = _power_and_lower(c, j + 2, zeta, fz, fp)
            f3, g3 = _power_and_lower(c, j + 3, zeta, fz, fp)
            k0 = s2 * f0
            k1 = s2 * f1
            k2 = s2 * f2
            k3 = s2 * f3
            Ki[j] = k0
            Ki[j + 1] = k1
            Ki[j + 2] = k2
            Ki[j + 3] = k3
            w0 = (z * g0) * alpha[j]
            w1 = (z * g1) * alpha[j + 1]
            w2 = (z * g2) * alpha[j + 2]
            w3 = (z * g3) * alpha[j + 3]
            c[j] = w0
            c[j + 1] = w1
            c[j + 2] = w2
            c[j + 3] = w3
            e0 += k0 * alpha[j]
            e1 += k1 * alpha[j + 1]
            e2 += k2 * alpha[j + 2]
            e3 += k3 * alpha[j + 3]
            d0 += w0 * c0
            d1 += w1 * c1
            d2 += w2 * c2
            d3 += w3 * c3
        for j in range(m4, m):
            c0 = c[j]
            f0, g0 = _power_and_lower(c, j, zeta, fz, fp)
            k0 = s2 * f0
            Ki[j] = k0
            w0 = (z * g0) * alpha[j]
            c[j] = w0
            e0 += k0 * alpha[j]
            d0 += w0 * c0
        energy[i] = (e0 + e1) + (e2 + e3)
        rowdot[i] = (d0 + d1) + (d2 + d3)


@numba.njit(cache=True)
def _prediction_pass(C, alpha, kind, p, s2):
    """One pass over the cosines ``C`` (n, m) of ``gpal.kernels.CosineKernel.prediction_terms``.

    Returns ``K = s2 f(C)``, ``K @ alpha`` and ``Σ_m alpha_m f'(c_nm) c_nm`` per row, and
    overwrites ``C`` with the weights ``alpha_m f'(c_nm)``.
    """
    n, m = C.shape
    K = np.empty((n, m))
    energy = np.empty(n)
    rowdot = np.empty(n)
    _prediction_pass_into(C, alpha, kind, p, s2, K, energy, rowdot)
    return K, energy, rowdot


@numba.njit(cache=True)
def _prediction_pass_into(C, alpha, kind, p, s2, K, energy, rowdot):
    """:func:`_prediction_pass` into given outputs ``K`` (n, m), ``energy`` and ``rowdot`` (n,)."""
    n, m = C.shape
    if kind == KIND_DOT:
        _prediction_pass_dot(C, alpha, int(p), s2, K, energy, rowdot)
        return
    for i in range(n):
        se = 0.0
        sd = 0.0
        for j in range(m):
            c = C[i, j]
            k = s2 * _f_scalar(c, kind, p)
            w = _fprime_scalar(c, kind, p) * alpha[j]
            K[i, j] = k
            C[i, j] = w
            se += k * alpha[j]
            sd += w * c
        energy[i] = se
        rowdot[i] = sd


# ----------------------------------------------------------------------------- arrays
@numba.njit(cache=True)
def _normalize_rows(X):
    """Unit rows and norms of X.

    Parameters
    ----------
    X : ndarray of shape (n, n_features), C-contiguous float64

    Returns
    -------
    Xhat : ndarray of shape (n, n_features)
        ``X[i] / |X[i]|``; a row of zero norm maps to the zero vector.
    norms : ndarray of shape (n,)
        ``|X[i]|`` (0 for zero rows).
    """
    n, F = X.shape
    Xhat = np.empty((n, F))
    norms = np.empty(n)
    for i in range(n):
        s = 0.0
        for f in range(F):
            s += X[i, f] * X[i, f]
        nrm = np.sqrt(s)
        norms[i] = nrm
        if nrm > 0.0:
            inv = 1.0 / nrm
            for f in range(F):
                Xhat[i, f] = X[i, f] * inv
        else:
            for f in range(F):
                Xhat[i, f] = 0.0
    return Xhat, norms


@numba.njit(cache=True)
def _apply_f(C, kind, p):
    """Elementwise f(C); C of shape (n, m)."""
    n, m = C.shape
    out = np.empty((n, m))
    for i in range(n):
        for j in range(m):
            out[i, j] = _f_scalar(C[i, j], kind, p)
    return out


@numba.njit(cache=True)
def frame_problem(pos, cell, numbers, allowed, check_species):
    """What :func:`gpal._validation.check_atoms` would reject, in one pass: 1 for a
    non-finite position, 2 for a non-finite cell, 3 (with ``check_species``) for an
    atomic number outside the boolean table ``allowed``, else 0."""
    for i in range(pos.shape[0]):
        for a in range(3):
            if not np.isfinite(pos[i, a]):
                return 1
    for i in range(3):
        for a in range(3):
            if not np.isfinite(cell[i, a]):
                return 2
    if check_species:
        n = allowed.shape[0]
        for z in numbers:
            if z < 0 or z >= n or not allowed[z]:
                return 3
    return 0


@numba.njit(cache=True)
def _dtc_tail(X, kdiag, d0, d1, q, sor):
    """The local-energy stds of a prediction from the terms of its variance.

    ``k(x,x)`` is ``kdiag[i]`` when ``kdiag`` has one entry per row of ``q``; otherwise
    (a cosine kernel, whose diagonal is ``d1`` for a row of ``X`` with a non-zero norm and
    ``d0`` for a zero row, :meth:`gpal.kernels.CosineKernel.diag`) it is read from ``X``.
    The DTC residual ``r = max(k(x,x) - q, 0)`` (rounding below zero clipped) gives

    Returns
    -------
    std : ndarray (n,)
        ``sqrt(r + sor)``.
    novelty : ndarray (n,)
        ``r / k(x,x)`` clipped to [0, 1] (0 where ``k(x,x) <= 0``).
    resid_sum : float
        ``Σ r``, the Nyström part of the total energy's variance.
    """
    n = q.shape[0]
    from_rows = kdiag.shape[0] != n
    F = X.shape[1]
    std = np.empty(n)
    novelty = np.empty(n)
    total = 0.0
    for i in range(n):
        if from_rows:
            kd = d0
            for f in range(F):  # the norm test of the kernel's diag: Σ x_f² > 0
                if X[i, f] * X[i, f] > 0.0:
                    kd = d1
                    break
        else:
            kd = kdiag[i]
        r = kd - q[i]
        if r < 0.0:
            r = 0.0
        if kd > 0.0:
            nv = r / kd
            novelty[i] = 1.0 if nv > 1.0 else (0.0 if nv < 0.0 else nv)
        else:
            novelty[i] = 0.0
        std[i] = np.sqrt(r + sor[i])
        total += r
    return std, novelty, total


@numba.njit(cache=True)
def _apply_fprime(C, kind, p):
    """Elementwise f'(C); C of shape (n, m)."""
    n, m = C.shape
    out = np.empty((n, m))
    for i in range(n):
        for j in range(m):
            out[i, j] = _fprime_scalar(C[i, j], kind, p)
    return out


@numba.njit(cache=True)
def _apply_f_dparam(C, kind, p):
    """Elementwise df/dlog(p) at C; C of shape (n, m)."""
    n, m = C.shape
    out = np.empty((n, m))
    for i in range(n):
        for j in range(m):
            out[i, j] = _f_dparam_scalar(C[i, j], kind, p)
    return out


@numba.njit(cache=True)
def _apply_fprime_dparam(C, kind, p):
    """Elementwise df'/dlog(p) at C; C of shape (n, m)."""
    n, m = C.shape
    out = np.empty((n, m))
    for i in range(n):
        for j in range(m):
            out[i, j] = _fprime_dparam_scalar(C[i, j], kind, p)
    return out


@numba.njit(cache=True)
def _kernel_matrix(Xhat, Zhat, kind, p, symmetric, self_cos):
    """Fused cosine matrix and f: ``C = Xhat Zhatᵀ`` (one BLAS call), then ``f(C)``.

    Parameters
    ----------
    Xhat : ndarray of shape (n, n_features)
    Zhat : ndarray of shape (m, n_features)
        Unit (or zero) rows.
    kind, p : int, float
        Kernel kind code and shape parameter.
    symmetric : bool
        ``Zhat is Xhat``: C is symmetrised exactly and its diagonal set to ``self_cos``.
    self_cos : ndarray of shape (n,)
        Self-cosines (1 for non-zero rows, 0 for zero rows); used when ``symmetric``.

    Returns
    -------
    C : ndarray of shape (n, m)
        Cosines.
    Fc : ndarray of shape (n, m)
        f(C).
    """
    C = np.dot(Xhat, Zhat.T)
    n, m = C.shape
    if symmetric:
        for i in range(n):
            C[i, i] = self_cos[i]
            for j in range(i + 1, m):
                v = 0.5 * (C[i, j] + C[j, i])
                C[i, j] = v
                C[j, i] = v
    Fc = np.empty((n, m))
    for i in range(n):
        for j in range(m):
            Fc[i, j] = _f_scalar(C[i, j], kind, p)
    return C, Fc


@numba.njit(cache=True)
def _pair_projection(dX, Xhat, center):
    """``b[p, a] = dX[p, a, :] · Xhat[center[p], :]``.

    Parameters
    ----------
    dX : ndarray of shape (n_pairs, 3, n_features)
    Xhat : ndarray of shape (n, n_features)
    center : ndarray of shape (n_pairs,), int64

    Returns
    -------
    b : ndarray of shape (n_pairs, 3)
    """
    P, three, F = dX.shape
    b = np.empty((P, three))
    for q in range(P):
        c = center[q]
        for a in range(three):
            s = 0.0
            for f in range(F):
                s += dX[q, a, f] * Xhat[c, f]
            b[q, a] = s
    return b


@numba.njit(cache=True)
def _pair_tangent(A, b, C, center):
    """In place: ``A[p, a, j] -= C[center[p], j] * b[p, a]``.

    With ``A[p, a, j] = dX[p, a, :]·ẑ_j`` and ``b`` from :func:`_pair_projection` this
    leaves ``dX[p, a, :]·(ẑ_j - c x̂)``, the tangential part of the cosine gradient.
    A has shape (n_pairs, 3, m); C has shape (n, m).
    """
    P, three, m = A.shape
    for q in range(P):
        c = center[q]
        for a in range(three):
            ba = b[q, a]
            for j in range(m):
                A[q, a, j] -= C[c, j] * ba


@numba.njit(cache=True)
def _pair_scale(D, W, scale, center):
    """``out[p, a, j] = scale[center[p]] * W[center[p], j] * D[p, a, j]``.

    D has shape (n_pairs, 3, m); W has shape (n, m); scale has shape (n,).
    """
    P, three, m = D.shape
    out = np.empty((P, three, m))
    for q in range(P):
        c = center[q]
        s = scale[c]
        for a in range(three):
            for j in range(m):
                out[q, a, j] = s * W[c, j] * D[q, a, j]
    return out


@numba.njit(cache=True)
def _pair_rows(D, b, C, W, scale, center, neighbor, vector, rows_f, virial, c0):
    """Accumulate the force rows and virial of a block of pairs, in place.

    With ``g[q, a, j] = scale[r] W[r, j] (D[q, a, j] - C[r, j] b[q, a])`` (``r =
    center[q] - c0``, the centre's row of ``C``, ``W`` and ``scale``, which start at
    atom ``c0``; ``D = dX·Ẑᵀ`` and ``b = dX·x̂_c`` of the block, so ``g`` is
    :func:`_pair_scale` of :func:`_pair_tangent`'s result), this adds ``-g`` to
    ``rows_f[neighbor[q]]``, ``+g`` to ``rows_f[center[q]]`` (:func:`pair_forces`'s
    convention) and ``g[q, a, j] vector[q, b]`` to ``virial[a, b, j]``: the training
    rows without the (n_pairs, 3, m) arrays in memory.

    D (P, 3, m); b (P, 3); C, W (n, m); scale (n,); center, neighbor (P,) int64;
    vector (P, 3); rows_f (n_atoms, 3, m); virial (3, 3, m).
    """
    P, three, m = D.shape
    g = np.empty(m)
    for q in range(P):
        c = center[q]
        r = c - c0
        nb = neighbor[q]
        s = scale[r]
        v0 = vector[q, 0]
        v1 = vector[q, 1]
        v2 = vector[q, 2]
        for a in range(three):
            ba = b[q, a]
            # one short loop per target (each vectorises; the row of ``nb`` may be
            # the row of ``c``)
            for j in range(m):
                g[j] = s * W[r, j] * (D[q, a, j] - C[r, j] * ba)
            for j in range(m):
                rows_f[c, a, j] += g[j]
            for j in range(m):
                rows_f[nb, a, j] -= g[j]
            for j in range(m):
                virial[a, 0, j] += g[j] * v0
            for j in range(m):
                virial[a, 1, j] += g[j] * v1
            for j in range(m):
                virial[a, 2, j] += g[j] * v2

# ----------------------------------------------------------------------------- row-parallel BLAS
# The passes of gpal._row_blas (see there): numba threads over chunks of rows, each calling
# BLAS through scipy's cython_blas, bound to these symbol names by gpal._row_blas.available()
# before any of them runs (here, in this file, so that numba's cache, which looks at the
# time stamp of the file a function is defined in, sees every change of what they inline).
_VP = types.voidptr
_dgemm = types.ExternalFunction("gpal_cython_blas_dgemm", types.void(*([_VP] * 13)))
_dtrmm = types.ExternalFunction("gpal_cython_blas_dtrmm", types.void(*([_VP] * 11)))
_strmm = types.ExternalFunction("gpal_cython_blas_strmm", types.void(*([_VP] * 11)))


@numba.njit(cache=True)
def _chunk_rows(ch, n, n_chunks):
    """Rows ``r0:r1`` of chunk ``ch`` of ``n`` rows cut into ``n_chunks`` near-equal chunks."""
    return ch * n // n_chunks, (ch + 1) * n // n_chunks


@numba.njit(cache=True)
def _row_dot(a, b, r, n):
    """``Σ_j a[r, j] b[r, j]`` over ``j < n``, in two accumulators (the row passes' reductions)."""
    a0 = 0.0
    a1 = 0.0
    for j in range(0, n - 1, 2):
        a0 += a[r, j] * b[r, j]
        a1 += a[r, j + 1] * b[r, j + 1]
    if n % 2:
        a0 += a[r, n - 1] * b[r, n - 1]
    return a0 + a1


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
def _trmm_codes(uplo, m, n):
    """The character and integer arguments of a left triangular product (side 'L', no
    transpose, non-unit diagonal; ``m``, ``n``, ``lda = ldb = m``)."""
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
    return ch, ints


@numba.njit(cache=True)
def _trmm_left(uplo, m, n, T, B):
    """Column-major ``B (m, n) := T B`` for a triangular ``T`` (m, m) (Fortran dtrmm)."""
    ch, ints = _trmm_codes(uplo, m, n)
    one = np.ones(1)
    _dtrmm(ch[0:].ctypes, ch[1:].ctypes, ch[2:].ctypes, ch[3:].ctypes, ints[0:].ctypes,
           ints[1:].ctypes, one.ctypes, T.ctypes, ints[2:].ctypes, B.ctypes, ints[3:].ctypes)


@numba.njit(cache=True)
def _strmm_left(uplo, m, n, T, B):
    """:func:`_trmm_left` in single precision (Fortran strmm; ``T``, ``B`` float32)."""
    ch, ints = _trmm_codes(uplo, m, n)
    one = np.ones(1, np.float32)
    _strmm(ch[0:].ctypes, ch[1:].ctypes, ch[2:].ctypes, ch[3:].ctypes, ints[0:].ctypes,
           ints[1:].ctypes, one.ctypes, T.ctypes, ints[2:].ctypes, B.ctypes, ints[3:].ctypes)


@numba.njit(cache=True, parallel=True)
def _prediction_terms_rows(X, norms, Zh, alpha, kind, p, s2, K, energy, G, n_chunks):
    """``CosineKernel._terms`` by chunks of rows, from the raw rows or the unit ones.

    For the rows ``r`` of each chunk: the unit rows ``X̂_r`` (``X_r / |X_r|`` when
    ``norms`` is empty, as :func:`_normalize_rows` forms them; ``X_r`` itself, with
    norms ``norms[r]``, otherwise), ``C = X̂_r Ẑᵀ`` (dgemm), the pass of
    :func:`_prediction_pass_into` (``K_r``, ``energy_r``, ``rowdot_r``; ``C`` becomes
    the weights ``W``), ``G_r = W Ẑ`` (dgemm) and its row scalings ``G_r = s2 / |x_r|
    (G_r - rowdot_r X̂_r)`` while the chunk is in cache.

    Parameters
    ----------
    X : ndarray (n, F), C-contiguous
    norms : ndarray (n,) or (0,)
    Zh : ndarray (m, F), C-contiguous unit sparse rows
    alpha : ndarray (m,)
    kind, p, s2 : the kernel's kind code, shape parameter and signal variance
    K : ndarray (n, m); energy : ndarray (n,); G : ndarray (n, F)
        Outputs, C-contiguous.
    n_chunks : int
    """
    n, F = X.shape
    m = Zh.shape[0]
    unit = norms.shape[0] == n and n > 0
    for ch in numba.prange(n_chunks):
        r0, r1 = _chunk_rows(ch, n, n_chunks)
        rb = r1 - r0
        if rb <= 0:
            continue
        Xh = np.empty((rb, F))
        inv = np.zeros(rb)
        for r in range(rb):
            if unit:
                nrm = norms[r0 + r]
                for f in range(F):
                    Xh[r, f] = X[r0 + r, f]
            else:
                t = 0.0
                for f in range(F):
                    t += X[r0 + r, f] * X[r0 + r, f]
                nrm = np.sqrt(t)
                if nrm > 0.0:
                    a = 1.0 / nrm
                    for f in range(F):
                        Xh[r, f] = X[r0 + r, f] * a
                else:
                    for f in range(F):
                        Xh[r, f] = 0.0
            if nrm > 0.0:
                inv[r] = 1.0 / nrm
        C = np.empty((rb, m))
        rowdot = np.empty(rb)
        # row-major C (rb, m) = X̂_r Ẑᵀ is column-major Cᵀ (m, rb) = Ẑ X̂_rᵀ
        _gemm(84, 78, m, rb, F, Zh, F, Xh, F, C, m)
        _prediction_pass_into(C, alpha, kind, p, s2, K[r0:r1], energy[r0:r1], rowdot)
        # row-major G_r (rb, F) = W Ẑ is column-major G_rᵀ (F, rb) = Ẑᵀ Wᵀ
        Gr = G[r0:r1]
        _gemm(78, 78, F, rb, m, Zh, F, C, m, Gr, F)
        for r in range(rb):
            d = rowdot[r]
            sc = s2 * inv[r]
            for f in range(F):
                Gr[r, f] = (Gr[r, f] - d * Xh[r, f]) * sc


@numba.njit(cache=True, parallel=True)
def _std_terms_rows(Kz, Linv, U, with_sor, q, sor, wsum_parts, vsum_parts, n_chunks, block,
                    overwrite=False):
    """``_LocalStdFactors.terms`` by chunks of rows: ``q = |w|²`` and ``sor = |v|²`` of
    ``w = L⁻¹k`` and ``v = U w`` for each row ``k`` of ``Kz``, each chunk's ``Σ w`` in
    ``wsum_parts[chunk]`` and ``Σ v`` in ``vsum_parts[chunk]``. ``v`` in single
    precision (see ``_LocalStdFactors``), its squares and sums in double.

    Parameters
    ----------
    Kz : ndarray (n, m), C-contiguous kernel rows
    Linv, U : ndarray (m, m), Fortran order: lower- and upper-triangular factors (``U``
        float32)
    with_sor : bool
        False: ``sor`` and ``vsum_parts`` are left as they are.
    q, sor : ndarray (n,); wsum_parts, vsum_parts : ndarray (n_chunks, m), zeros
    n_chunks : int
    block : int
        Rows per triangular product within a chunk (they stay in cache).
    overwrite : bool, default False
        True: the products run on the rows of ``Kz`` themselves, which end as ``w``
        (the caller's rows are not needed after; no copy of them).
    """
    n, m = Kz.shape
    for ch in numba.prange(n_chunks):
        r0, r1 = _chunk_rows(ch, n, n_chunks)
        if r1 <= r0:
            continue
        buf = np.empty((0 if overwrite else min(block, r1 - r0), m))
        buf_u = np.empty((min(block, r1 - r0) if with_sor else 0, m), np.float32)
        for s in range(r0, r1, block):
            rb = min(s + block, r1) - s
            if overwrite:
                w = Kz[s:s + rb]
            else:
                w = buf[:rb]
                for r in range(rb):
                    for j in range(m):
                        w[r, j] = Kz[s + r, j]
            # row-major w (rb, m) is column-major (m, rb): its columns are the rows k
            _trmm_left(76, m, rb, Linv, w)  # 'L': lower
            if with_sor:
                for r in range(rb):  # (w rounded to single precision as it is summed)
                    q[s + r] = _row_square_add_single(w, r, m, wsum_parts[ch], buf_u)
                _strmm_left(85, m, rb, U, buf_u)  # 'U': upper
                for r in range(rb):
                    sor[s + r] = _row_square_and_add(buf_u, r, m, vsum_parts[ch])
            else:
                for r in range(rb):
                    q[s + r] = _row_square_and_add(w, r, m, wsum_parts[ch])


@numba.njit(cache=True, fastmath={"reassoc", "contract"})
def _row_square_and_add(a, r, m, acc):
    """``Σ_j a[r, j]²`` over ``j < m`` (double precision, the sum reassociated into
    vector lanes), adding the row into ``acc``."""
    t = 0.0
    for j in range(m):
        v = np.float64(a[r, j])
        t += v * v
        acc[j] += v
    return t


@numba.njit(cache=True, fastmath={"reassoc", "contract"})
def _row_square_add_single(a, r, m, acc, out):
    """:func:`_row_square_and_add` of a double row that also writes it, rounded to
    single precision, into ``out[r]``."""
    t = 0.0
    for j in range(m):
        v = a[r, j]
        t += v * v
        acc[j] += v
        out[r, j] = np.float32(v)
    return t


@numba.njit(cache=True, parallel=True)
def _quadratic_terms_rows(Xh, A, Zh, with_k, s2, q, G, K, n_chunks):
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
        r0, r1 = _chunk_rows(ch, n, n_chunks)
        rb = r1 - r0
        if rb <= 0:
            continue
        # row-major G_r (rb, F) = X̂_r A is column-major G_rᵀ (F, rb) = Aᵀ X̂_rᵀ = A X̂_rᵀ
        _gemm(78, 78, F, rb, F, A, F, Xh[r0:r1], F, G[r0:r1], F)
        for r in range(r0, r1):
            q[r] = _row_dot(G, Xh, r, F)
        if with_k:
            Kr = K[r0:r1]
            _gemm(84, 78, m, rb, F, Zh, F, Xh[r0:r1], F, Kr, m)
            for r in range(rb):
                for j in range(m):
                    Kr[r, j] = s2 * (Kr[r, j] * Kr[r, j])
