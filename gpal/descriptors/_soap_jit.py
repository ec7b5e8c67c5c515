"""Numba kernels of gpal's SOAP power spectrum (dscribe ``rbf="gto"`` definition).

Notation (all arrays float64 unless said otherwise)
----------------------------------------------------
L = l_max, L1 = L + 1, L2 = L1**2, n = n_max, S = number of species,
``lm = l*l + l + m``.

For a neighbour at pair vector ``x = (x, y, z)``, ``r2 = |x|^2``, weight ``w(r)``:

    E[l, k]      = exp(A[l, k] * r2)            (A < 0: "aOa" in dscribe)
    R[l, n]      = w * sum_k B[l, n, k] E[l, k] (radial part)
    Qd[l, n]     = (w'/r) sum_k B E + 2 w sum_k B[l, n, k] A[l, k] E[l, k]
                   (so that d R[l, n] / d x_a = x_a * Qd[l, n])
    Y[lm]        = r^l Y_lm(x / r)              (real solid harmonic, orthonormal Y)
    c[s, lm, n] += R[l, n] * Y[lm]              (s: the neighbour's species)

A is passed flattened as A[l * n + k], B transposed as BT[l, k, n] (inner loops run
over n). B already contains pi^{3/2} and the Gaussian-projection prefactors, so the
power spectrum is

    X[(s, t), l, n, n'] = prel[l] sum_m c[s, lm, n] c[t, lm, n'],
    prel[l] = pi sqrt(8 / (2l + 1)),

over species pairs s <= t, then l, then n, n' (n <= n' when s == t): dscribe's order.

The centre atom itself (distance zero) only adds ``w_self * sum_k B[0, n, k] * Y_00``
to ``c[s_i, 0, n]``; it carries no derivative (it moves with the centre).

Every kernel loops over centres in parallel (``prange`` over chunks of centres, with
per-chunk scratch buffers), and each centre only writes its own rows / pairs: no races.
"""

from __future__ import annotations

import math

# Threads: gpal/_threads.py chooses the numba thread count per call (numba's OpenMP
# layer spins at barriers, so busy cores are left out); nothing is set at import.
import numba
import numpy as np

# weighting function codes
W_NONE = 0
W_POLY = 1
W_POW = 2
W_EXP = 3

# fastmath of the compiled sums: reassociation and FMA contraction only (see the note on
# the pair-batched kernels below)
_FM = {"reassoc", "contract"}


@numba.njit(cache=True)
def _weight(r, r2, wtype, wpar, w_zero):
    """Return (w, (dw/dr)/r) for one neighbour. wpar = [r0, c, m, d]."""
    if r2 == 0.0:
        return w_zero, 0.0
    if wtype == W_NONE:
        return 1.0, 0.0
    r0 = wpar[0]
    c = wpar[1]
    m = wpar[2]
    d = wpar[3]
    if wtype == W_POLY:
        if r > r0:
            return 0.0, 0.0
        t = r / r0
        base = 1.0 + 2.0 * t * t * t - 3.0 * t * t
        if m == 0.0:
            return c, 0.0
        if base <= 0.0:
            return 0.0, 0.0
        if m == 1.0:  # the default weighting: no pow calls (~40 ns a pair), the same numbers
            return c * base, c * 6.0 * (t - 1.0) / (r0 * r0)
        w = c * base**m
        # d base / dr = 6 (t^2 - t) / r0  ->  divided by r: 6 (t - 1) / r0^2
        dwr = c * m * base ** (m - 1.0) * 6.0 * (t - 1.0) / (r0 * r0)
        return w, dwr
    if wtype == W_POW:
        t = r / r0
        tm = t**m
        den = d + tm
        w = c / den
        # dw/dr = -c m t^(m-1) / r0 / den^2
        dwr = -c * m * tm / (t * r0 * r) / (den * den) if m != 0.0 else 0.0
        return w, dwr
    # W_EXP
    e = math.exp(-r / r0)
    den = d + e
    w = c / den
    dwr = c * e / (r0 * r) / (den * den)
    return w, dwr


@numba.njit(cache=True)
def _solid_harmonics(
    x, y, z, L, shK, shQmm, shC1, shC2, Y, dY, Q, Qz, Qr, Am, Bm, grad
):
    """Real solid harmonics Y[lm] = r^l Y_lm and (if grad) dY[a, lm] = d Y[lm] / d x_a.

    r^l P_l^m(cos t) = Q_l^m(z, r^2) (r sin t)^m with Q_m^m = (2m-1)!!,
    Q_{m+1}^m = (2m+1) z Q_m^m, Q_l^m = C1 z Q_{l-1}^m - C2 r^2 Q_{l-2}^m, and
    (r sin t)^m (cos m phi, sin m phi) = (Re, Im) (x + i y)^m = (A_m, B_m).
    Qz = dQ/dz at fixed r^2, Qr = dQ/d(r^2) at fixed z.
    """
    r2 = x * x + y * y + z * z
    Am[0] = 1.0
    Bm[0] = 0.0
    for m in range(1, L + 1):
        Am[m] = x * Am[m - 1] - y * Bm[m - 1]
        Bm[m] = x * Bm[m - 1] + y * Am[m - 1]
    for m in range(L + 1):
        Q[m, m] = shQmm[m]
        Qz[m, m] = 0.0
        Qr[m, m] = 0.0
        if m + 1 <= L:
            Q[m + 1, m] = (2 * m + 1) * z * shQmm[m]
            Qz[m + 1, m] = (2 * m + 1) * shQmm[m]
            Qr[m + 1, m] = 0.0
        for ell in range(m + 2, L + 1):
            c1 = shC1[ell, m]
            c2 = shC2[ell, m]
            Q[ell, m] = c1 * z * Q[ell - 1, m] - c2 * r2 * Q[ell - 2, m]
            if grad:
                Qz[ell, m] = (
                    c1 * (Q[ell - 1, m] + z * Qz[ell - 1, m]) - c2 * r2 * Qz[ell - 2, m]
                )
                Qr[ell, m] = c1 * z * Qr[ell - 1, m] - c2 * (
                    Q[ell - 2, m] + r2 * Qr[ell - 2, m]
                )
    for ell in range(L + 1):
        base = ell * ell + ell
        k0 = shK[ell, 0]
        Y[base] = k0 * Q[ell, 0]
        if grad:
            qr2 = 2.0 * Qr[ell, 0]
            dY[0, base] = k0 * qr2 * x
            dY[1, base] = k0 * qr2 * y
            dY[2, base] = k0 * (Qz[ell, 0] + qr2 * z)
        for m in range(1, ell + 1):
            k = shK[ell, m]
            q = Q[ell, m]
            Y[base + m] = k * q * Am[m]
            Y[base - m] = k * q * Bm[m]
            if grad:
                qr2 = 2.0 * Qr[ell, m]
                qx = qr2 * x
                qy = qr2 * y
                qz = Qz[ell, m] + qr2 * z
                a1 = m * Am[m - 1]
                b1 = m * Bm[m - 1]
                dY[0, base + m] = k * (qx * Am[m] + q * a1)
                dY[1, base + m] = k * (qy * Am[m] - q * b1)
                dY[2, base + m] = k * qz * Am[m]
                dY[0, base - m] = k * (qx * Bm[m] + q * b1)
                dY[1, base - m] = k * (qy * Bm[m] + q * a1)
                dY[2, base - m] = k * qz * Bm[m]


_LOG2E = 1.4426950408889634
_LN2_HI = (
    6.93147180369123816490e-01  # ln 2 split in two parts (fdlibm): exact n * LN2_HI
)
_LN2_LO = 1.90821492927058770002e-10
# 1.5 * 2^52: (t + _ROUND) - _ROUND rounds t to the nearest integer
_ROUND = 6755399441055744.0
_ROUND_BITS = 0x4338000000000000  # the bits of _ROUND (1.5 x 2^52)


@numba.njit(cache=True, fastmath={"contract"})
def _exp_nonpositive(x, out, ibits):
    """out[k] = exp(x[k]) for x[k] <= 0, in loops LLVM vectorises (no libm call).

    exp(x) = 2^n e^r with n = round(x / ln 2), r = x - n ln 2 (|r| <= 0.347,
    Cody-Waite), e^r by its Taylor series to degree 13 (truncation < 1e-17), 2^n built
    from its exponent bits. Accurate to 1 ulp for x >= -700; arguments below -700 are
    clamped (exp < 1e-304). ``ibits`` is int64 scratch of the same length; ``x`` and
    ``out`` must be different arrays (in place, the loop does not vectorise).

    n is read from the bits of ``t = x / ln 2 + 1.5 x 2^52`` (its low mantissa bits
    hold n) instead of converting a float to int64, which AVX2 has no vector
    instruction for: with it the first loop ran scalar (1.8-2.8 ns per exp; 1.3 now,
    the multiply-adds contracted to FMAs).
    """
    fbits = ibits.view(np.float64)
    m = x.shape[0]
    for k in range(m):
        v = max(x[k], -700.0)
        t = v * _LOG2E + _ROUND
        nf = t - _ROUND
        fbits[k] = t
        r = (v - nf * _LN2_HI) - nf * _LN2_LO
        p = 1.0 / 6227020800.0
        p = p * r + 1.0 / 479001600.0
        p = p * r + 1.0 / 39916800.0
        p = p * r + 1.0 / 3628800.0
        p = p * r + 1.0 / 362880.0
        p = p * r + 1.0 / 40320.0
        p = p * r + 1.0 / 5040.0
        p = p * r + 1.0 / 720.0
        p = p * r + 1.0 / 120.0
        p = p * r + 1.0 / 24.0
        p = p * r + 1.0 / 6.0
        p = p * r + 0.5
        p = p * r + 1.0
        p = p * r + 1.0
        out[k] = p
    for k in range(m):
        ibits[k] = (ibits[k] - _ROUND_BITS + 1023) << 52
    for k in range(m):
        out[k] *= fbits[k]


@numba.njit(cache=True)
def _radial(r2, w, dwr, A, BT, E, ibits, R, Qd, grad):
    """R[l, n] and (if grad) Qd[l, n] for one neighbour (see module docstring).

    A is flattened (L1 * n,); E (2, L1 * n) and ibits (L1 * n,) are scratch
    (arguments in E[0], exponentials in E[1]: separate buffers, so the exp loop
    vectorises); BT[l, k, n] = B[l, n, k] (inner loops over n vectorise).
    """
    L1 = BT.shape[0]
    nmax = BT.shape[1]
    args = E[0]
    ex = E[1]
    for q in range(L1 * nmax):
        args[q] = A[q] * r2
    _exp_nonpositive(args, ex, ibits)
    for ell in range(L1):
        for n in range(nmax):
            R[ell, n] = 0.0
            Qd[ell, n] = 0.0
        for k in range(nmax):
            q = ell * nmax + k
            e = w * ex[q]
            if grad:
                e2 = (dwr + 2.0 * w * A[q]) * ex[q]
                for n in range(nmax):
                    b = BT[ell, k, n]
                    R[ell, n] += b * e
                    Qd[ell, n] += b * e2
            else:
                for n in range(nmax):
                    R[ell, n] += BT[ell, k, n] * e


@numba.njit(cache=True)
def _chunks(n_items, n_chunks):
    bounds = np.empty(n_chunks + 1, dtype=np.int64)
    for c in range(n_chunks + 1):
        bounds[c] = (n_items * c) // n_chunks
    return bounds


@numba.njit(cache=True)
def _power_spectrum_row(c, prel, pair_off, tri, M, out):
    """out[f] = features of one centre from its coefficients c (S, L2, n).

    M (n, n) is scratch.
    """
    if c.shape[2] == 8:  # the default n_max
        _power_spectrum_row8(c, prel, pair_off, tri, M, out)
        return
    S = c.shape[0]
    nmax = c.shape[2]
    L1 = prel.shape[0]
    nsym = nmax * (nmax + 1) // 2
    for s in range(S):
        for t in range(s, S):
            off = pair_off[s, t]
            for ell in range(L1):
                pre = prel[ell]
                for a in range(nmax):
                    for b in range(nmax):
                        M[a, b] = 0.0
                for lm in range(ell * ell, (ell + 1) * (ell + 1)):
                    for a in range(nmax):
                        ca = pre * c[s, lm, a]
                        for b in range(nmax):
                            M[a, b] += ca * c[t, lm, b]
                if s == t:
                    base = off + ell * nsym
                    for a in range(nmax):
                        k0 = base + tri[a, a] - a
                        for b in range(a, nmax):
                            out[k0 + b] = M[a, b]
                else:
                    base = off + ell * nmax * nmax
                    for a in range(nmax):
                        for b in range(nmax):
                            out[base + a * nmax + b] = M[a, b]


# ---------------------------------------------------------------------------------------
# The per-centre (n_max, n_max) products for the default n_max = 8: the power spectrum
# of the coefficients, the adjoint of the power spectrum (the back-pass) and the radial
# transform to the primitive basis, with each 8-row of an operand in registers and the
# 8 updates written out. The loops over a runtime n_max of 8 ran 1.6-1.9x slower (each
# (lm, a) entered a vector loop with its overlap checks and remainder). Same sums in
# another order (rounding at the 1e-16 relative level). They repeat the general
# functions' loops with a literal 8 throughout: sharing the feature-block loops with them
# through helpers of a runtime size made the adjoint and the power spectrum 1.4-1.5x
# slower again.
# ---------------------------------------------------------------------------------------
@numba.njit(cache=True, fastmath=_FM, inline="always")
def _vecmat8(M, X, s, lm, H, hs, add):
    """H[hs, lm, j] (+)= sum_k X[s, lm, k] M[k, j] (M (8, 8)): added with ``add``,
    assigned otherwise (a literal at each call)."""
    v0 = X[s, lm, 0]
    v1 = X[s, lm, 1]
    v2 = X[s, lm, 2]
    v3 = X[s, lm, 3]
    v4 = X[s, lm, 4]
    v5 = X[s, lm, 5]
    v6 = X[s, lm, 6]
    v7 = X[s, lm, 7]
    for j in range(8):
        v = (
            v0 * M[0, j] + v1 * M[1, j] + v2 * M[2, j] + v3 * M[3, j]
            + v4 * M[4, j] + v5 * M[5, j] + v6 * M[6, j] + v7 * M[7, j]
        )  # fmt: skip
        if add:
            H[hs, lm, j] += v
        else:
            H[hs, lm, j] = v


@numba.njit(cache=True, fastmath=_FM)
def _power_spectrum_row8(c, prel, pair_off, tri, M, out):
    """:func:`_power_spectrum_row` for n_max = 8."""
    S = c.shape[0]
    L1 = prel.shape[0]
    for s in range(S):
        for t in range(s, S):
            off = pair_off[s, t]
            for ell in range(L1):
                pre = prel[ell]
                for a in range(8):
                    for b in range(8):
                        M[a, b] = 0.0
                for lm in range(ell * ell, (ell + 1) * (ell + 1)):
                    t0 = c[t, lm, 0]
                    t1 = c[t, lm, 1]
                    t2 = c[t, lm, 2]
                    t3 = c[t, lm, 3]
                    t4 = c[t, lm, 4]
                    t5 = c[t, lm, 5]
                    t6 = c[t, lm, 6]
                    t7 = c[t, lm, 7]
                    for a in range(8):
                        ca = c[s, lm, a]
                        M[a, 0] += ca * t0
                        M[a, 1] += ca * t1
                        M[a, 2] += ca * t2
                        M[a, 3] += ca * t3
                        M[a, 4] += ca * t4
                        M[a, 5] += ca * t5
                        M[a, 6] += ca * t6
                        M[a, 7] += ca * t7
                if s == t:
                    for a in range(8):
                        k0 = off + ell * 36 + tri[a, a] - a
                        for b in range(a, 8):
                            out[k0 + b] = pre * M[a, b]
                else:
                    for a in range(8):
                        k0 = off + ell * 64 + a * 8
                        for b in range(8):
                            out[k0 + b] = pre * M[a, b]


@numba.njit(cache=True, fastmath=_FM)
def _fold_gradient8(g, c, prel, pair_off, tri, Gm, h):
    """:func:`_fold_gradient` for n_max = 8 (Gm (8, 8) scratch)."""
    S = c.shape[0]
    L1 = prel.shape[0]
    h[:] = 0.0
    for s in range(S):
        for t in range(s, S):
            off = pair_off[s, t]
            for ell in range(L1):
                pre = prel[ell]
                if s == t:
                    # Gsym (see _fold_gradient) is symmetric: h_s += c_s Gsym
                    base = off + ell * 36
                    for a in range(8):
                        k0 = base + tri[a, a] - a
                        Gm[a, a] = 2.0 * pre * g[k0 + a]
                        for b in range(a + 1, 8):
                            v = pre * g[k0 + b]
                            Gm[a, b] = v
                            Gm[b, a] = v
                    for lm in range(ell * ell, (ell + 1) * (ell + 1)):
                        _vecmat8(Gm, c, s, lm, h, s, True)
                else:
                    # h_t += c_s G, then h_s += c_t Gᵀ (G transposed in place)
                    base = off + ell * 64
                    for a in range(8):
                        for b in range(8):
                            Gm[a, b] = pre * g[base + a * 8 + b]
                    for lm in range(ell * ell, (ell + 1) * (ell + 1)):
                        _vecmat8(Gm, c, s, lm, h, t, True)
                    for a in range(8):
                        for b in range(a + 1, 8):
                            v = Gm[a, b]
                            Gm[a, b] = Gm[b, a]
                            Gm[b, a] = v
                    for lm in range(ell * ell, (ell + 1) * (ell + 1)):
                        _vecmat8(Gm, c, t, lm, h, s, True)


@numba.njit(cache=True, fastmath=_FM)
def _radial_to_primitive8(h, B, A, ht, ha):
    """:func:`_radial_to_primitive` for n_max = 8."""
    S = h.shape[0]
    L1 = B.shape[0]
    for s in range(S):
        for ell in range(L1):
            Bl = B[ell]
            for lm in range(ell * ell, (ell + 1) * (ell + 1)):
                _vecmat8(Bl, h, s, lm, ht, s, False)
                for k in range(8):
                    ha[s, lm, k] = A[ell * 8 + k] * ht[s, lm, k]


@numba.njit(cache=True)
def _accumulate_centre(
    i,
    vec,
    nbr_spec,
    offsets,
    center_spec,
    A,
    BT,
    wtype,
    wpar,
    w_zero,
    w_self,
    self0,
    shK,
    shQmm,
    shC1,
    shC2,
    c,
    E,
    ibits,
    R,
    Qd,
    Y,
    dY,
    Q,
    Qz,
    Qr,
    Am,
    Bm,
    store,
    Rst,
    Qst,
    Yst,
    dYst,
):
    """Coefficients c (S, L2, n) of centre i; optionally store per-pair R, Qd, Y, dY."""
    L1 = BT.shape[0]
    L = L1 - 1
    nmax = BT.shape[1]
    c[:] = 0.0
    si = center_spec[i]
    for n in range(nmax):
        c[si, 0, n] += w_self * self0[n]
    p0 = offsets[i]
    for p in range(p0, offsets[i + 1]):
        x = vec[p, 0]
        y = vec[p, 1]
        z = vec[p, 2]
        r2 = x * x + y * y + z * z
        r = math.sqrt(r2)
        w, dwr = _weight(r, r2, wtype, wpar, w_zero)
        s = nbr_spec[p]
        _radial(r2, w, dwr, A, BT, E, ibits, R, Qd, store)
        _solid_harmonics(
            x, y, z, L, shK, shQmm, shC1, shC2, Y, dY, Q, Qz, Qr, Am, Bm, store
        )
        for ell in range(L1):
            for lm in range(ell * ell, (ell + 1) * (ell + 1)):
                ylm = Y[lm]
                for n in range(nmax):
                    c[s, lm, n] += R[ell, n] * ylm
        if store:
            q = p - p0
            Rst[q] = R
            Qst[q] = Qd
            Yst[q] = Y
            dYst[q] = dY


@numba.njit(cache=True, parallel=True)
def soap_create(
    vec,
    nbr_spec,
    offsets,
    center_spec,
    n_species,
    A,
    BT,
    wtype,
    wpar,
    w_zero,
    w_self,
    self0,
    shK,
    shQmm,
    shC1,
    shC2,
    prel,
    pair_off,
    tri,
    C_out,
    X_out,
    n_chunks,
):
    """Descriptor X (N, F) and coefficients C (N, S, L2, n) of every centre."""
    N = offsets.shape[0] - 1
    L1 = BT.shape[0]
    nmax = BT.shape[1]
    L2 = L1 * L1
    bounds = _chunks(N, n_chunks)
    for ch in numba.prange(n_chunks):
        E = np.empty((2, L1 * nmax))
        ibits = np.empty(L1 * nmax, dtype=np.int64)
        R = np.empty((L1, nmax))
        Qd = np.empty((L1, nmax))
        Y = np.empty(L2)
        dY = np.empty((3, L2))
        Q = np.empty((L1, L1))
        Qz = np.empty((L1, L1))
        Qr = np.empty((L1, L1))
        Am = np.empty(L1)
        Bm = np.empty(L1)
        M = np.empty((nmax, nmax))
        dummy2 = np.empty((1, 1, 1))
        dummy3 = np.empty((1, 1))
        dummy4 = np.empty((1, 3, 1))
        for i in range(bounds[ch], bounds[ch + 1]):
            _accumulate_centre(
                i,
                vec,
                nbr_spec,
                offsets,
                center_spec,
                A,
                BT,
                wtype,
                wpar,
                w_zero,
                w_self,
                self0,
                shK,
                shQmm,
                shC1,
                shC2,
                C_out[i],
                E,
                ibits,
                R,
                Qd,
                Y,
                dY,
                Q,
                Qz,
                Qr,
                Am,
                Bm,
                False,
                dummy2,
                dummy2,
                dummy3,
                dummy4,
            )
            _power_spectrum_row(C_out[i], prel, pair_off, tri, M, X_out[i])


@numba.njit(cache=True, parallel=True)
def soap_derivatives(
    vec,
    nbr_spec,
    offsets,
    center_spec,
    n_species,
    A,
    BT,
    wtype,
    wpar,
    w_zero,
    w_self,
    self0,
    shK,
    shQmm,
    shC1,
    shC2,
    prel,
    pair_off,
    tri,
    max_pairs,
    X_out,
    dX_out,
    n_chunks,
):
    """Descriptor X (N, F) and pair derivatives dX (P, 3, F) (dX zero on entry).

    dX[p, a, f] = d X[center_p, f] / d vec[p, a]; only features whose species pair
    involves the neighbour's species s are written (the others stay zero). With
    dc[a, lm, n] = x_a Qd[l, n] Y[lm] + R[l, n] dY[a, lm], the contraction with the
    coefficients of species t factorises:

        sum_m dc[a, lm, n] c[t, lm, n'] = x_a Qd[l, n] U[l, n'] + R[l, n] V[a, l, n']
        U[l, n'] = sum_m Y[lm] c[t, lm, n']
        V[a, l, n'] = sum_m dY[a, lm] c[t, lm, n']

    so each (a, l) block of dX is a rank-2 outer product.
    """
    N = offsets.shape[0] - 1
    L1 = BT.shape[0]
    nmax = BT.shape[1]
    L2 = L1 * L1
    S = n_species
    nsym = nmax * (nmax + 1) // 2
    bounds = _chunks(N, n_chunks)
    for ch in numba.prange(n_chunks):
        E = np.empty((2, L1 * nmax))
        ibits = np.empty(L1 * nmax, dtype=np.int64)
        R = np.empty((L1, nmax))
        Qd = np.empty((L1, nmax))
        Y = np.empty(L2)
        dY = np.empty((3, L2))
        Q = np.empty((L1, L1))
        Qz = np.empty((L1, L1))
        Qr = np.empty((L1, L1))
        Am = np.empty(L1)
        Bm = np.empty(L1)
        M = np.empty((nmax, nmax))
        c = np.empty((S, L2, nmax))
        Rst = np.empty((max_pairs, L1, nmax))
        Qst = np.empty((max_pairs, L1, nmax))
        Yst = np.empty((max_pairs, L2))
        dYst = np.empty((max_pairs, 3, L2))
        U = np.empty((L1, nmax))
        V = np.empty((3, L1, nmax))
        xq = np.empty(nmax)
        rq = np.empty(nmax)
        present = np.empty(S, dtype=np.bool_)
        for i in range(bounds[ch], bounds[ch + 1]):
            _accumulate_centre(
                i,
                vec,
                nbr_spec,
                offsets,
                center_spec,
                A,
                BT,
                wtype,
                wpar,
                w_zero,
                w_self,
                self0,
                shK,
                shQmm,
                shC1,
                shC2,
                c,
                E,
                ibits,
                R,
                Qd,
                Y,
                dY,
                Q,
                Qz,
                Qr,
                Am,
                Bm,
                True,
                Rst,
                Qst,
                Yst,
                dYst,
            )
            _power_spectrum_row(c, prel, pair_off, tri, M, X_out[i])
            p0 = offsets[i]
            # species absent from this environment: c[t] = 0, their dX blocks stay zero
            present[:] = False
            present[center_spec[i]] = True
            for p in range(p0, offsets[i + 1]):
                present[nbr_spec[p]] = True
            for p in range(p0, offsets[i + 1]):
                q = p - p0
                s = nbr_spec[p]
                for t in range(S):
                    if not present[t]:
                        continue
                    # U, V for the coefficients of species t
                    for ell in range(L1):
                        for nb in range(nmax):
                            U[ell, nb] = 0.0
                            V[0, ell, nb] = 0.0
                            V[1, ell, nb] = 0.0
                            V[2, ell, nb] = 0.0
                        for lm in range(ell * ell, (ell + 1) * (ell + 1)):
                            y = Yst[q, lm]
                            y0 = dYst[q, 0, lm]
                            y1 = dYst[q, 1, lm]
                            y2 = dYst[q, 2, lm]
                            for nb in range(nmax):
                                cc = c[t, lm, nb]
                                U[ell, nb] += y * cc
                                V[0, ell, nb] += y0 * cc
                                V[1, ell, nb] += y1 * cc
                                V[2, ell, nb] += y2 * cc
                    if t >= s:
                        off = pair_off[s, t]
                    else:
                        off = pair_off[t, s]
                    for a in range(3):
                        xa = vec[p, a]
                        row = dX_out[p, a]
                        for ell in range(L1):
                            pre = prel[ell]
                            Ul = U[ell]
                            Vl = V[a, ell]
                            for n in range(nmax):
                                xq[n] = pre * xa * Qst[q, ell, n]
                                rq[n] = pre * Rst[q, ell, n]
                            if t == s:
                                base = off + ell * nsym
                                for n in range(nmax):
                                    qn = xq[n]
                                    rn = rq[n]
                                    un = Ul[n]
                                    vn = Vl[n]
                                    k0 = base + tri[n, n] - n
                                    for nb in range(n, nmax):
                                        row[k0 + nb] = (
                                            qn * Ul[nb]
                                            + xq[nb] * un
                                            + rn * Vl[nb]
                                            + rq[nb] * vn
                                        )
                            elif s < t:
                                base = off + ell * nmax * nmax
                                for n in range(nmax):
                                    qn = xq[n]
                                    rn = rq[n]
                                    k0 = base + n * nmax
                                    for nb in range(nmax):
                                        row[k0 + nb] = qn * Ul[nb] + rn * Vl[nb]
                            else:
                                base = off + ell * nmax * nmax
                                for n in range(nmax):
                                    un = Ul[n]
                                    vn = Vl[n]
                                    k0 = base + n * nmax
                                    for nb in range(nmax):
                                        row[k0 + nb] = xq[nb] * un + rq[nb] * vn


@numba.njit(cache=True)
def _fold_gradient(g, c, prel, pair_off, tri, Gm, h):
    """h[s, lm, n] = d (g . X) / d c[s, lm, n] for one centre (g: (F,), c: (S, L2, n)).

    Per species pair and l, the features are a bilinear form c_s^T Gm c_t;
    Gm (n, n) is scratch.
    """
    if c.shape[2] == 8:  # the default n_max
        _fold_gradient8(g, c, prel, pair_off, tri, Gm, h)
        return
    S = c.shape[0]
    nmax = c.shape[2]
    L1 = prel.shape[0]
    nsym = nmax * (nmax + 1) // 2
    h[:] = 0.0
    for s in range(S):
        for t in range(s, S):
            off = pair_off[s, t]
            for ell in range(L1):
                pre = prel[ell]
                if s == t:
                    # X_ab = pre sum_m c_a c_b (a <= b): dX/dc_a = sum_b Gsym_ab c_b
                    # with Gsym_aa = 2 pre g_aa, Gsym_ab = Gsym_ba = pre g_ab
                    base = off + ell * nsym
                    for a in range(nmax):
                        k0 = base + tri[a, a] - a
                        Gm[a, a] = 2.0 * pre * g[k0 + a]
                        for b in range(a + 1, nmax):
                            v = pre * g[k0 + b]
                            Gm[a, b] = v
                            Gm[b, a] = v
                    for lm in range(ell * ell, (ell + 1) * (ell + 1)):
                        for a in range(nmax):
                            acc = 0.0
                            for b in range(nmax):
                                acc += Gm[a, b] * c[s, lm, b]
                            h[s, lm, a] += acc
                else:
                    base = off + ell * nmax * nmax
                    for a in range(nmax):
                        for b in range(nmax):
                            Gm[a, b] = pre * g[base + a * nmax + b]
                    for lm in range(ell * ell, (ell + 1) * (ell + 1)):
                        for a in range(nmax):
                            acc = 0.0
                            for b in range(nmax):
                                acc += Gm[a, b] * c[t, lm, b]
                            h[s, lm, a] += acc
                        for b in range(nmax):
                            cb = 0.0
                            for a in range(nmax):
                                cb += Gm[a, b] * c[s, lm, a]
                            h[t, lm, b] += cb


@numba.njit(cache=True, parallel=True)
def soap_backward(
    vec,
    nbr_spec,
    offsets,
    A,
    BT,
    wtype,
    wpar,
    w_zero,
    shK,
    shQmm,
    shC1,
    shC2,
    prel,
    pair_off,
    tri,
    C,
    G,
    out,
    n_chunks,
):
    """out[p, a] = sum_f G[center_p, f] dX[p, a, f], without forming dX.

    G is folded into coefficient space, h = dE/dc (per centre); then for each pair

        dE/dx_a = sum_{lm, n} h[s, lm, n] (x_a Qd[l, n] Y[lm] + R[l, n] dY[a, lm]),

    with the radial and angular factors recomputed on the fly.
    """
    N = offsets.shape[0] - 1
    S = C.shape[1]
    L1 = BT.shape[0]
    L = L1 - 1
    nmax = BT.shape[1]
    L2 = L1 * L1
    bounds = _chunks(N, n_chunks)
    for ch in numba.prange(n_chunks):
        E = np.empty((2, L1 * nmax))
        ibits = np.empty(L1 * nmax, dtype=np.int64)
        R = np.empty((L1, nmax))
        Qd = np.empty((L1, nmax))
        Y = np.empty(L2)
        dY = np.empty((3, L2))
        Q = np.empty((L1, L1))
        Qz = np.empty((L1, L1))
        Qr = np.empty((L1, L1))
        Am = np.empty(L1)
        Bm = np.empty(L1)
        Gm = np.empty((nmax, nmax))
        h = np.empty((S, L2, nmax))
        hy = np.empty(nmax)
        for i in range(bounds[ch], bounds[ch + 1]):
            if offsets[i + 1] == offsets[i]:
                continue
            _fold_gradient(G[i], C[i], prel, pair_off, tri, Gm, h)
            for p in range(offsets[i], offsets[i + 1]):
                x = vec[p, 0]
                y = vec[p, 1]
                z = vec[p, 2]
                r2 = x * x + y * y + z * z
                r = math.sqrt(r2)
                w, dwr = _weight(r, r2, wtype, wpar, w_zero)
                s = nbr_spec[p]
                _radial(r2, w, dwr, A, BT, E, ibits, R, Qd, True)
                _solid_harmonics(
                    x, y, z, L, shK, shQmm, shC1, shC2, Y, dY, Q, Qz, Qr, Am, Bm, True
                )
                u = 0.0
                g0 = 0.0
                g1 = 0.0
                g2 = 0.0
                for ell in range(L1):
                    for n in range(nmax):
                        hy[n] = 0.0
                    for lm in range(ell * ell, (ell + 1) * (ell + 1)):
                        yl = Y[lm]
                        v = 0.0
                        for n in range(nmax):
                            hv = h[s, lm, n]
                            hy[n] += hv * yl
                            v += hv * R[ell, n]
                        g0 += v * dY[0, lm]
                        g1 += v * dY[1, lm]
                        g2 += v * dY[2, lm]
                    for n in range(nmax):
                        u += Qd[ell, n] * hy[n]
                out[p, 0] = x * u + g0
                out[p, 1] = y * u + g1
                out[p, 2] = z * u + g2


@numba.njit(cache=True)
def pairs_to_dense(dX, center, neighbor, n_atoms):
    """dscribe's (N, N, 3, F) layout: d[i, j] = dX_i/dr_j (attach=True semantics)."""
    P = dX.shape[0]
    F = dX.shape[2]
    out = np.zeros((n_atoms, n_atoms, 3, F))
    for p in range(P):
        i = center[p]
        j = neighbor[p]
        for a in range(3):
            for f in range(F):
                v = dX[p, a, f]
                out[i, j, a, f] += v
                out[i, i, a, f] -= v
    return out


@numba.njit(cache=True)
def pair_forces_kernel(g, center, neighbor, n_atoms):
    """F_j = -(sum_{p: n=j} g_p - sum_{p: c=j} g_p) for g (P, K) -> (N, K)."""
    P = g.shape[0]
    K = g.shape[1]
    out = np.zeros((n_atoms, K))
    for p in range(P):
        i = center[p]
        j = neighbor[p]
        for k in range(K):
            out[j, k] -= g[p, k]
            out[i, k] += g[p, k]
    return out


@numba.njit(cache=True)
def pair_forces_stress_kernel(g, center, neighbor, vector, n_atoms, volume, with_stress):
    """Forces of :func:`pair_forces_kernel` (g (P, 3)) and, with ``with_stress``, the Voigt
    stress (xx, yy, zz, yz, xz, xy) ``(1/V) sym(Σ_p g_p ⊗ vector_p)`` of ``pair_stress``.

    A centre's own force is summed in registers over its run of consecutive pairs (the
    pairs of gpal's lists are sorted by centre; any order gives the same sums), the
    virial in nine scalar sums.
    """
    P = g.shape[0]
    forces = np.zeros((n_atoms, 3))
    stress = np.zeros(6)
    if P == 0:
        return forces, stress
    c = center[0]
    f0 = f1 = f2 = 0.0
    for p in range(P):
        i = center[p]
        if i != c:
            forces[c, 0] += f0
            forces[c, 1] += f1
            forces[c, 2] += f2
            c = i
            f0 = f1 = f2 = 0.0
        j = neighbor[p]
        g0 = g[p, 0]
        g1 = g[p, 1]
        g2 = g[p, 2]
        f0 += g0
        f1 += g1
        f2 += g2
        forces[j, 0] -= g0
        forces[j, 1] -= g1
        forces[j, 2] -= g2
    forces[c, 0] += f0
    forces[c, 1] += f1
    forces[c, 2] += f2
    if with_stress:
        w00 = w01 = w02 = w10 = w11 = w12 = w20 = w21 = w22 = 0.0
        for p in range(P):
            g0 = g[p, 0]
            g1 = g[p, 1]
            g2 = g[p, 2]
            v0 = vector[p, 0]
            v1 = vector[p, 1]
            v2 = vector[p, 2]
            w00 += g0 * v0
            w01 += g0 * v1
            w02 += g0 * v2
            w10 += g1 * v0
            w11 += g1 * v1
            w12 += g1 * v2
            w20 += g2 * v0
            w21 += g2 * v1
            w22 += g2 * v2
        stress[0] = 0.5 * (w00 + w00) / volume
        stress[1] = 0.5 * (w11 + w11) / volume
        stress[2] = 0.5 * (w22 + w22) / volume
        stress[3] = 0.5 * (w12 + w21) / volume
        stress[4] = 0.5 * (w02 + w20) / volume
        stress[5] = 0.5 * (w01 + w10) / volume
    return forces, stress


# ---------------------------------------------------------------------------------------
# Pair-batched kernels (the fast path of ``SOAP.create``/``expand`` and ``backward``).
#
# Same mathematics as ``soap_create`` / ``soap_backward`` above, which stay as the
# reference (tests compare both to 1e-10). Each centre's pairs are gathered, grouped by
# neighbour species (``perm``), into structure-of-arrays scratch whose innermost index is
# the pair: the exponentials, radial contractions and solid-harmonic recurrences then run
# as long vector loops over pairs instead of tiny loops of length n_max per pair.
# ``fastmath`` is limited to reassociation and FMA contraction ({"reassoc", "contract"}):
# sums are reordered (rounding changes at the 1e-15 relative level), nothing else
# (``_FM``, defined at the top of the module).
# ---------------------------------------------------------------------------------------


@numba.njit(cache=True)
def _gather_centre(vec, nbr_spec, p0, p1, S, perm, sstart, geo, wtype, wpar, w_zero):
    """Gather the pairs p0:p1 of one centre grouped by species.

    perm[q] = p (q-th gathered pair), pairs of species s at q in sstart[s]:sstart[s+1];
    geo[0:3, q] = vector, geo[3, q] = r², geo[4, q] = w, geo[5, q] = (dw/dr)/r.
    """
    n = p1 - p0
    for s in range(S + 1):
        sstart[s] = 0
    for p in range(p0, p1):
        sstart[nbr_spec[p] + 1] += 1
    for s in range(S):
        sstart[s + 1] += sstart[s]
    for p in range(p0, p1):
        s = nbr_spec[p]
        q = sstart[s]
        sstart[s] = q + 1
        perm[q] = p
    for s in range(S, 0, -1):
        sstart[s] = sstart[s - 1]
    sstart[0] = 0
    for q in range(n):
        p = perm[q]
        x = vec[p, 0]
        y = vec[p, 1]
        z = vec[p, 2]
        r2 = x * x + y * y + z * z
        w, dwr = _weight(math.sqrt(r2), r2, wtype, wpar, w_zero)
        geo[0, q] = x
        geo[1, q] = y
        geo[2, q] = z
        geo[3, q] = r2
        geo[4, q] = w
        geo[5, q] = dwr


@numba.njit(cache=True, fastmath=_FM)
def _radial8(n, L1, exv, BT, BAT, w, dwr, R, Qd, grad):
    """The contraction of :func:`_batch_radial` for n_max = 8 (same sums, same order).

    R[l, nn, q] = w sum_k BT[l, k, nn] E[l, k, q] and, if grad, Qd = (w'/r) sum_k BT E
    + 2 w sum_k BAT E, with the 8 terms of each sum formed in registers (no load and
    store of R, Qd per k).
    """
    for ell in range(L1):
        e0 = exv[ell * 8]
        e1 = exv[ell * 8 + 1]
        e2 = exv[ell * 8 + 2]
        e3 = exv[ell * 8 + 3]
        e4 = exv[ell * 8 + 4]
        e5 = exv[ell * 8 + 5]
        e6 = exv[ell * 8 + 6]
        e7 = exv[ell * 8 + 7]
        for nn in range(8):
            b0 = BT[ell, 0, nn]
            b1 = BT[ell, 1, nn]
            b2 = BT[ell, 2, nn]
            b3 = BT[ell, 3, nn]
            b4 = BT[ell, 4, nn]
            b5 = BT[ell, 5, nn]
            b6 = BT[ell, 6, nn]
            b7 = BT[ell, 7, nn]
            Rr = R[ell, nn]
            if not grad:
                for q in range(n):
                    Rr[q] = w[q] * (
                        b0 * e0[q] + b1 * e1[q] + b2 * e2[q] + b3 * e3[q]
                        + b4 * e4[q] + b5 * e5[q] + b6 * e6[q] + b7 * e7[q]
                    )  # fmt: skip
                continue
            a0 = BAT[ell, 0, nn]
            a1 = BAT[ell, 1, nn]
            a2 = BAT[ell, 2, nn]
            a3 = BAT[ell, 3, nn]
            a4 = BAT[ell, 4, nn]
            a5 = BAT[ell, 5, nn]
            a6 = BAT[ell, 6, nn]
            a7 = BAT[ell, 7, nn]
            Qr = Qd[ell, nn]
            for q in range(n):
                r = (
                    b0 * e0[q] + b1 * e1[q] + b2 * e2[q] + b3 * e3[q]
                    + b4 * e4[q] + b5 * e5[q] + b6 * e6[q] + b7 * e7[q]
                )  # fmt: skip
                a = (
                    a0 * e0[q] + a1 * e1[q] + a2 * e2[q] + a3 * e3[q]
                    + a4 * e4[q] + a5 * e5[q] + a6 * e6[q] + a7 * e7[q]
                )  # fmt: skip
                Qr[q] = dwr[q] * r + 2.0 * w[q] * a
                Rr[q] = w[q] * r


@numba.njit(cache=True, fastmath=_FM)
def _batch_exponentials(n, geo, A, args, E, ibits):
    """E[l, k, q] = exp(A[l, k] r2[q]) of n gathered pairs (``geo[3]`` = r²), into the
    flat ``E`` (length L1 nk n, laid out [l, k, q] with stride n); ``args``, ``ibits``
    (>= L1 nk n) are scratch."""
    m = E.shape[0]
    argv = args[:m].reshape((m // n, n))
    r2 = geo[3]
    for lk in range(m // n):
        a = A[lk]
        row = argv[lk]
        for q in range(n):
            row[q] = a * r2[q]
    _exp_nonpositive(args[:m], E, ibits[:m])


@numba.njit(cache=True, fastmath=_FM)
def _batch_radial(n, geo, A, BT, BAT, args, ex, ibits, R, Qd, grad):
    """R[l, k, q] (and Qd if grad) of n gathered pairs; see the module docstring.

    args, ex (L1 n_max n,), ibits (same, int64) are scratch laid out [l, k, q] with
    stride n; R, Qd have shape (L1, n_max, >= n).
    """
    L1 = BT.shape[0]
    nk = BT.shape[1]
    m = L1 * nk * n
    exv = ex[:m].reshape((L1 * nk, n))
    w = geo[4]
    dwr = geo[5]
    _batch_exponentials(n, geo, A, args, ex[:m], ibits)
    if nk == 8:  # the default n_max: the k sums in registers, one pass per (l, n)
        _radial8(n, L1, exv, BT, BAT, w, dwr, R, Qd, grad)
        return
    if not grad:
        for ell in range(L1):
            for nn in range(nk):
                Rr = R[ell, nn]
                for q in range(n):
                    Rr[q] = 0.0
                for k in range(nk):
                    b = BT[ell, k, nn]
                    e = exv[ell * nk + k]
                    for q in range(n):
                        Rr[q] += b * e[q]
                for q in range(n):
                    Rr[q] *= w[q]
        return
    for ell in range(L1):
        for nn in range(nk):
            Rr = R[ell, nn]
            Qr = Qd[ell, nn]
            for q in range(n):
                Rr[q] = 0.0
                Qr[q] = 0.0
            for k in range(nk):
                b = BT[ell, k, nn]
                ba = BAT[ell, k, nn]
                e = exv[ell * nk + k]
                for q in range(n):
                    Rr[q] += b * e[q]
                    Qr[q] += ba * e[q]
            # Qd = (w'/r) sum B E + 2 w sum B A E ;  R = w sum B E
            for q in range(n):
                Qr[q] = dwr[q] * Rr[q] + 2.0 * w[q] * Qr[q]
                Rr[q] *= w[q]


@numba.njit(cache=True, fastmath=_FM)
def _batch_harmonics(n, geo, L, shK, shQmm, shC1, shC2, Y, dY, Q, Qz, Qr, Am, Bm, grad):
    """Solid harmonics Y[lm, q] (and dY[a, lm, q] if grad) of n gathered pairs.

    Same recurrences as :func:`_solid_harmonics`, vectorised over pairs. Q, Qz, Qr
    (L1, L1, >= n), Am, Bm (L1, >= n) are scratch.
    """
    x = geo[0]
    y = geo[1]
    z = geo[2]
    r2 = geo[3]
    for q in range(n):
        Am[0, q] = 1.0
        Bm[0, q] = 0.0
    for m in range(1, L + 1):
        for q in range(n):
            Am[m, q] = x[q] * Am[m - 1, q] - y[q] * Bm[m - 1, q]
            Bm[m, q] = x[q] * Bm[m - 1, q] + y[q] * Am[m - 1, q]
    for m in range(L + 1):
        qmm = shQmm[m]
        for q in range(n):
            Q[m, m, q] = qmm
        if grad:
            for q in range(n):
                Qz[m, m, q] = 0.0
                Qr[m, m, q] = 0.0
        if m + 1 <= L:
            f = (2 * m + 1) * qmm
            for q in range(n):
                Q[m + 1, m, q] = f * z[q]
            if grad:
                for q in range(n):
                    Qz[m + 1, m, q] = f
                    Qr[m + 1, m, q] = 0.0
        for ell in range(m + 2, L + 1):
            c1 = shC1[ell, m]
            c2 = shC2[ell, m]
            for q in range(n):
                Q[ell, m, q] = c1 * z[q] * Q[ell - 1, m, q] - c2 * r2[q] * Q[ell - 2, m, q]
            if grad:
                for q in range(n):
                    Qz[ell, m, q] = (
                        c1 * (Q[ell - 1, m, q] + z[q] * Qz[ell - 1, m, q])
                        - c2 * r2[q] * Qz[ell - 2, m, q]
                    )
                    Qr[ell, m, q] = c1 * z[q] * Qr[ell - 1, m, q] - c2 * (
                        Q[ell - 2, m, q] + r2[q] * Qr[ell - 2, m, q]
                    )
    for ell in range(L + 1):
        base = ell * ell + ell
        k0 = shK[ell, 0]
        for q in range(n):
            Y[base, q] = k0 * Q[ell, 0, q]
        if grad:
            for q in range(n):
                qr2 = 2.0 * Qr[ell, 0, q]
                dY[0, base, q] = k0 * qr2 * x[q]
                dY[1, base, q] = k0 * qr2 * y[q]
                dY[2, base, q] = k0 * (Qz[ell, 0, q] + qr2 * z[q])
        for m in range(1, ell + 1):
            k = shK[ell, m]
            for q in range(n):
                kq = k * Q[ell, m, q]
                Y[base + m, q] = kq * Am[m, q]
                Y[base - m, q] = kq * Bm[m, q]
            if grad:
                for q in range(n):
                    qv = Q[ell, m, q]
                    qr2 = 2.0 * Qr[ell, m, q]
                    qx = qr2 * x[q]
                    qy = qr2 * y[q]
                    qz = Qz[ell, m, q] + qr2 * z[q]
                    a1 = m * Am[m - 1, q]
                    b1 = m * Bm[m - 1, q]
                    dY[0, base + m, q] = k * (qx * Am[m, q] + qv * a1)
                    dY[1, base + m, q] = k * (qy * Am[m, q] - qv * b1)
                    dY[2, base + m, q] = k * qz * Am[m, q]
                    dY[0, base - m, q] = k * (qx * Bm[m, q] + qv * b1)
                    dY[1, base - m, q] = k * (qy * Bm[m, q] + qv * a1)
                    dY[2, base - m, q] = k * qz * Bm[m, q]


@numba.njit(cache=True, fastmath=_FM)
def _batch_coefficients(c, sstart, R, Y, w, L1):
    """c[s, lm, k] += sum over the pairs q of species s of R[l, k, q] w[q] Y[lm, q].

    The sums run over 1-D C-contiguous slices indexed from 0 (a 2-D slice of R has
    unknown strides, and a loop from q0 over whole rows keeps numba's negative-index
    wraparound: neither vectorises).
    """
    S = c.shape[0]
    nk = c.shape[2]
    n8 = nk - nk % 8
    for s in range(S):
        q0 = sstart[s]
        q1 = sstart[s + 1]
        if q1 == q0:
            continue
        m = q1 - q0
        for ell in range(L1):
            for lm in range(ell * ell, (ell + 1) * (ell + 1)):
                Yr = Y[lm, q0:q1]
                wr = w[q0:q1]
                for kb in range(0, n8, 8):
                    R0 = R[ell, kb, q0:q1]
                    R1 = R[ell, kb + 1, q0:q1]
                    R2 = R[ell, kb + 2, q0:q1]
                    R3 = R[ell, kb + 3, q0:q1]
                    R4 = R[ell, kb + 4, q0:q1]
                    R5 = R[ell, kb + 5, q0:q1]
                    R6 = R[ell, kb + 6, q0:q1]
                    R7 = R[ell, kb + 7, q0:q1]
                    a0 = 0.0
                    a1 = 0.0
                    a2 = 0.0
                    a3 = 0.0
                    a4 = 0.0
                    a5 = 0.0
                    a6 = 0.0
                    a7 = 0.0
                    for q in range(m):
                        yv = Yr[q] * wr[q]
                        a0 += R0[q] * yv
                        a1 += R1[q] * yv
                        a2 += R2[q] * yv
                        a3 += R3[q] * yv
                        a4 += R4[q] * yv
                        a5 += R5[q] * yv
                        a6 += R6[q] * yv
                        a7 += R7[q] * yv
                    c[s, lm, kb] += a0
                    c[s, lm, kb + 1] += a1
                    c[s, lm, kb + 2] += a2
                    c[s, lm, kb + 3] += a3
                    c[s, lm, kb + 4] += a4
                    c[s, lm, kb + 5] += a5
                    c[s, lm, kb + 6] += a6
                    c[s, lm, kb + 7] += a7
                for k in range(n8, nk):
                    Rk = R[ell, k, q0:q1]
                    a0 = 0.0
                    for q in range(m):
                        a0 += Rk[q] * (Yr[q] * wr[q])
                    c[s, lm, k] += a0


@numba.njit(cache=True)
def _batch_scratch(max_pairs, L1, nk, S):
    """Per-thread scratch of the pair-batched kernels."""
    Pm = max(max_pairs, 1)
    L2 = L1 * L1
    return (
        np.empty(Pm, dtype=np.int64),  # perm
        np.empty(S + 1, dtype=np.int64),  # sstart
        np.empty((6, Pm)),  # geo
        np.empty(L1 * nk * Pm),  # args
        np.empty(L1 * nk * Pm),  # ex
        np.empty(L1 * nk * Pm, dtype=np.int64),  # ibits
        np.empty((L1, nk, Pm)),  # R
        np.empty((L1, nk, Pm)),  # Qd
        np.empty((L2, Pm)),  # Y
        np.empty((3, L2, Pm)),  # dY
        np.empty((L1, L1, Pm)),  # Q
        np.empty((L1, L1, Pm)),  # Qz
        np.empty((L1, L1, Pm)),  # Qr
        np.empty((L1, Pm)),  # Am
        np.empty((L1, Pm)),  # Bm
    )


@numba.njit(cache=True, fastmath=_FM)
def _primitive_to_radial(ct, BT, c):
    """c[s, lm, n] = sum_k B[l, n, k] ct[s, lm, k] (BT[l, k, n] = B[l, n, k])."""
    S = ct.shape[0]
    nk = ct.shape[2]
    L1 = BT.shape[0]
    for s in range(S):
        for ell in range(L1):
            for lm in range(ell * ell, (ell + 1) * (ell + 1)):
                if nk == 8:  # the default n_max: the sums in registers
                    _vecmat8(BT[ell], ct, s, lm, c, s, False)
                    continue
                for nn in range(nk):
                    acc = 0.0
                    for k in range(nk):
                        acc += BT[ell, k, nn] * ct[s, lm, k]
                    c[s, lm, nn] = acc


@numba.njit(cache=True)
def _create_scratch(max_pairs, L1, nk, S):
    """Per-thread scratch of the two expansion passes (:func:`soap_create_batched`,
    :func:`soap_create_stored`): ``(args, ibits, Q, Qz, Qr, dY, Am, Bm, ct, M)`` for
    :func:`_primitive_sums` and :func:`_centre_row` (no harmonic gradients)."""
    Pm = max(max_pairs, 1)
    one = np.empty((1, 1, 1))
    return (
        np.empty(L1 * nk * Pm),  # args
        np.empty(L1 * nk * Pm, dtype=np.int64),  # ibits
        np.empty((L1, L1, Pm)),  # Q
        one,  # Qz
        one,  # Qr
        one,  # dY
        np.empty((L1, Pm)),  # Am
        np.empty((L1, Pm)),  # Bm
        np.empty((S, L1 * L1, nk)),  # ct
        np.empty((nk, nk)),  # M
    )


@numba.njit(cache=True, fastmath=_FM)
def _primitive_sums(n, geo, A, E, Y, sstart, shK, shQmm, shC1, shC2, scratch):
    """ct[s, lm, k] += sum over the n gathered pairs (``geo``) of species s of w E[l, k]
    Y[lm] (``ct`` of ``scratch``, :func:`_create_scratch`): the exponentials into ``E``
    (flat, [l, k, q], length L1 nk n), the harmonics into ``Y`` (L2, >= n)."""
    args, ibits, Q, Qz, Qr, dY, Am, Bm, ct, _ = scratch
    L1 = shK.shape[0]
    nk = ct.shape[2]
    _batch_exponentials(n, geo, A, args, E, ibits)
    _batch_harmonics(n, geo, L1 - 1, shK, shQmm, shC1, shC2, Y, dY, Q, Qz, Qr, Am, Bm, False)
    _batch_coefficients(ct, sstart, E.reshape((L1, nk, n)), Y, geo[4], L1)


@numba.njit(cache=True)
def _centre_row(BT, c, si, w_self, self0, prel, pair_off, tri, x, scratch):
    """One centre's coefficients ``c`` from its primitive sums (``ct`` of ``scratch``) plus
    the centre's own term (species ``si``), and its descriptor row ``x``."""
    ct, M = scratch[8], scratch[9]
    _primitive_to_radial(ct, BT, c)
    for k in range(c.shape[2]):
        c[si, 0, k] += w_self * self0[k]
    _power_spectrum_row(c, prel, pair_off, tri, M, x)


@numba.njit(cache=True, parallel=True)
def soap_create_batched(
    vec,
    nbr_spec,
    offsets,
    center_spec,
    n_species,
    A,
    BT,
    wtype,
    wpar,
    w_zero,
    w_self,
    self0,
    shK,
    shQmm,
    shC1,
    shC2,
    prel,
    pair_off,
    tri,
    max_pairs,
    C_out,
    X_out,
    n_chunks,
):
    """Descriptor X (N, F) and coefficients C (N, S, L2, n) (as :func:`soap_create`).

    Sums in the primitive Gaussian basis of the radial functions and transforms once
    per centre, as :func:`soap_create_stored` (see there): per pair only the
    exponentials and the harmonics.
    """
    N = offsets.shape[0] - 1
    L1 = BT.shape[0]
    nk = BT.shape[1]
    S = n_species
    bounds = _chunks(N, n_chunks)
    for ch in numba.prange(n_chunks):
        Pm = max(max_pairs, 1)
        perm = np.empty(Pm, dtype=np.int64)
        sstart = np.empty(S + 1, dtype=np.int64)
        geo = np.empty((6, Pm))
        ex = np.empty(L1 * nk * Pm)
        Y = np.empty((L1 * L1, Pm))
        scratch = _create_scratch(max_pairs, L1, nk, S)
        for i in range(bounds[ch], bounds[ch + 1]):
            c = C_out[i]
            scratch[8][:] = 0.0  # ct
            p0 = offsets[i]
            n = offsets[i + 1] - p0
            if n > 0:
                _gather_centre(
                    vec, nbr_spec, p0, p0 + n, S, perm, sstart, geo, wtype, wpar, w_zero
                )
                _primitive_sums(n, geo, A, ex[:L1 * nk * n], Y, sstart, shK, shQmm, shC1, shC2, scratch)
            _centre_row(BT, c, center_spec[i], w_self, self0, prel, pair_off, tri, X_out[i], scratch)


@numba.njit(cache=True, fastmath=_FM, inline="always")
def _radial_sums8(h0, h1, h2, h3, h4, h5, h6, h7, R, Qd, ell, t):
    """``(HR, HQ)`` of pair t at degree ell for n_max = 8: ``sum_k h_k R[ell, k, t]`` and
    ``sum_k h_k Qd[ell, k, t]``, the h_k held in registers by the caller (inlined)."""
    hr = (
        h0 * R[ell, 0, t] + h1 * R[ell, 1, t] + h2 * R[ell, 2, t]
        + h3 * R[ell, 3, t] + h4 * R[ell, 4, t] + h5 * R[ell, 5, t]
        + h6 * R[ell, 6, t] + h7 * R[ell, 7, t]
    )  # fmt: skip
    hq = (
        h0 * Qd[ell, 0, t] + h1 * Qd[ell, 1, t] + h2 * Qd[ell, 2, t]
        + h3 * Qd[ell, 3, t] + h4 * Qd[ell, 4, t] + h5 * Qd[ell, 5, t]
        + h6 * Qd[ell, 6, t] + h7 * Qd[ell, 7, t]
    )  # fmt: skip
    return hr, hq


@numba.njit(cache=True, fastmath=_FM)
def _contract8_species(h, s, R, Qd, Y, dY, m, L1, u, g0, g1, g2):
    """The back-pass sums of m pairs of species s for n_max = 8, all in arrays indexed
    from 0: u[t] = sum_lm HQ Y[lm] and g_a[t] = sum_lm HR dY[a, lm], with HR = sum_k
    h[s, lm, k] R[l, k] and HQ = sum_k h[s, lm, k] Qd[l, k] formed per pair in registers.

    The pair loops run from 0 over whole arrays (as :func:`_contract_map`): a loop from
    an unknown offset keeps numba's negative-index wraparound and does not vectorise.
    """
    for t in range(m):
        u[t] = 0.0
        g0[t] = 0.0
        g1[t] = 0.0
        g2[t] = 0.0
    for ell in range(L1):
        for lm in range(ell * ell, (ell + 1) * (ell + 1)):
            h0 = h[s, lm, 0]
            h1 = h[s, lm, 1]
            h2 = h[s, lm, 2]
            h3 = h[s, lm, 3]
            h4 = h[s, lm, 4]
            h5 = h[s, lm, 5]
            h6 = h[s, lm, 6]
            h7 = h[s, lm, 7]
            for t in range(m):
                hr, hq = _radial_sums8(h0, h1, h2, h3, h4, h5, h6, h7, R, Qd, ell, t)
                u[t] += hq * Y[lm, t]
                g0[t] += hr * dY[0, lm, t]
                g1[t] += hr * dY[1, lm, t]
                g2[t] += hr * dY[2, lm, t]


@numba.njit(cache=True, fastmath=_FM)
def _backward_centre(h, S, sstart, R, Qd, Y, dY, geo, perm, n, L1, nk, acc, scratch, out):
    """The contraction of one centre's n gathered pairs with h = dE/dc (its pair terms
    R, Qd, Y, dY, geo in scratch, grouped by species at sstart): writes out[perm[q]].

    HR[q] = sum_k h[s, lm, k] R[l, k, q], HQ[q] = sum_k h[s, lm, k] Qd[l, k, q] and
    out[p, a] = x_a sum_lm HQ Y[lm] + sum_lm HR dY[a, lm]; acc (6, >= n) is scratch.
    For n_max = 8 a species holding all n pairs is contracted in place and the pairs
    of a species among others are first copied to ``scratch`` = (Rs (L1, 8, >= n), Qs,
    Ys (L2, >= n), dYs (3, L2, >= n)), so that :func:`_contract8_species` indexes every
    array from 0.
    """
    HR = acc[0]
    HQ = acc[1]
    u = acc[2]
    g0 = acc[3]
    g1 = acc[4]
    g2 = acc[5]
    if nk == 8:  # the default n_max: one pass per term, sums in registers
        Rs, Qs, Ys, dYs = scratch
        L2 = L1 * L1
        for s in range(S):
            q0 = sstart[s]
            q1 = sstart[s + 1]
            m = q1 - q0
            if m == 0:
                continue
            if m == n:
                _contract8_species(h, s, R, Qd, Y, dY, m, L1, u, g0, g1, g2)
            else:
                for ell in range(L1):
                    for k in range(nk):
                        for t in range(m):
                            Rs[ell, k, t] = R[ell, k, q0 + t]
                            Qs[ell, k, t] = Qd[ell, k, q0 + t]
                for lm in range(L2):
                    for t in range(m):
                        Ys[lm, t] = Y[lm, q0 + t]
                for a in range(3):
                    for lm in range(L2):
                        for t in range(m):
                            dYs[a, lm, t] = dY[a, lm, q0 + t]
                _contract8_species(h, s, Rs, Qs, Ys, dYs, m, L1, u, g0, g1, g2)
            for t in range(m):
                q = q0 + t
                p = perm[q]
                out[p, 0] = geo[0, q] * u[t] + g0[t]
                out[p, 1] = geo[1, q] * u[t] + g1[t]
                out[p, 2] = geo[2, q] * u[t] + g2[t]
        return
    for q in range(n):
        u[q] = 0.0
        g0[q] = 0.0
        g1[q] = 0.0
        g2[q] = 0.0
    for s in range(S):
        q0 = sstart[s]
        q1 = sstart[s + 1]
        if q1 == q0:
            continue
        m = q1 - q0
        HRs = HR[q0:q1]
        HQs = HQ[q0:q1]
        us = u[q0:q1]
        g0s = g0[q0:q1]
        g1s = g1[q0:q1]
        g2s = g2[q0:q1]
        for ell in range(L1):
            for lm in range(ell * ell, (ell + 1) * (ell + 1)):
                for q in range(m):
                    HRs[q] = 0.0
                    HQs[q] = 0.0
                for k in range(nk):
                    hv = h[s, lm, k]
                    Rr = R[ell, k, q0:q1]
                    Qr_ = Qd[ell, k, q0:q1]
                    for q in range(m):
                        HRs[q] += hv * Rr[q]
                        HQs[q] += hv * Qr_[q]
                Yr = Y[lm, q0:q1]
                d0 = dY[0, lm, q0:q1]
                d1 = dY[1, lm, q0:q1]
                d2 = dY[2, lm, q0:q1]
                for q in range(m):
                    us[q] += HQs[q] * Yr[q]
                    g0s[q] += HRs[q] * d0[q]
                    g1s[q] += HRs[q] * d1[q]
                    g2s[q] += HRs[q] * d2[q]
    for q in range(n):
        p = perm[q]
        out[p, 0] = geo[0, q] * u[q] + g0[q]
        out[p, 1] = geo[1, q] * u[q] + g1[q]
        out[p, 2] = geo[2, q] * u[q] + g2[q]


@numba.njit(cache=True, parallel=True, fastmath=_FM)
def soap_backward_batched(
    vec,
    nbr_spec,
    offsets,
    A,
    BT,
    BAT,
    wtype,
    wpar,
    w_zero,
    shK,
    shQmm,
    shC1,
    shC2,
    prel,
    pair_off,
    tri,
    max_pairs,
    C,
    G,
    out,
    n_chunks,
):
    """out[p, a] = sum_f G[center_p, f] dX[p, a, f], as :func:`soap_backward`.

    Per centre: h = dE/dc (:func:`_fold_gradient`), then for the pairs of species s,
    HR[q] = sum_k h[s, lm, k] R[l, k, q], HQ[q] = sum_k h[s, lm, k] Qd[l, k, q] and

        out[p, a] = x_a sum_lm HQ Y[lm] + sum_lm HR dY[a, lm],

    all as vector loops over the centre's pairs.
    """
    N = offsets.shape[0] - 1
    S = C.shape[1]
    L1 = BT.shape[0]
    L = L1 - 1
    nk = BT.shape[1]
    L2 = L1 * L1
    bounds = _chunks(N, n_chunks)
    for ch in numba.prange(n_chunks):
        (perm, sstart, geo, args, ex, ibits, R, Qd, Y, dY, Q, Qz, Qr, Am, Bm) = (
            _batch_scratch(max_pairs, L1, nk, S)
        )
        Gm = np.empty((nk, nk))
        h = np.empty((S, L2, nk))
        Pm = max(max_pairs, 1)
        acc = np.empty((6, Pm))  # HR, HQ, u, g0, g1, g2
        L8 = L1 if nk == 8 else 0  # a species' pairs for _contract8_species
        P8 = Pm if nk == 8 else 0
        scratch = (
            np.empty((L8, 8, P8)), np.empty((L8, 8, P8)), np.empty((L8 * L8, P8)),
            np.empty((3, L8 * L8, P8)),
        )
        for i in range(bounds[ch], bounds[ch + 1]):
            p0 = offsets[i]
            n = offsets[i + 1] - p0
            if n == 0:
                continue
            _fold_gradient(G[i], C[i], prel, pair_off, tri, Gm, h)
            _gather_centre(
                vec, nbr_spec, p0, p0 + n, S, perm, sstart, geo, wtype, wpar, w_zero
            )
            _batch_radial(n, geo, A, BT, BAT, args, ex, ibits, R, Qd, True)
            _batch_harmonics(
                n, geo, L, shK, shQmm, shC1, shC2, Y, dY, Q, Qz, Qr, Am, Bm, True
            )
            _backward_centre(
                h, S, sstart, R, Qd, Y, dY, geo, perm, n, L1, nk, acc, scratch, out
            )


# ---------------------------------------------------------------------------------------
# The MD step's fused pair of passes over one block of centres (``SOAP._fused_step``):
# :func:`soap_create_stored` forms the coefficients and X of the block and keeps each
# pair's exponentials and harmonics; after the kernel gradient G of the block is known,
# :func:`soap_backward_stored` contracts it with the kept terms instead of recomputing
# them (what :func:`soap_backward_batched` does).
#
# Both passes work in the primitive (Gaussian) basis of the radial functions. R[l, n] =
# w sum_k B[l, n, k] E[l, k] is linear in the exponentials, so the expansion sums
#
#     ct[s, lm, k] = sum over the pairs of species s of w E[l, k] Y[lm]
#
# and turns them into c[s, lm, n] = sum_k B[l, n, k] ct[s, lm, k] once per centre,
# instead of forming R for every pair (L1 nk^2 multiply-adds a pair, and as many again
# for Qd, against L2 nk for the sums). The back-pass turns the adjoint h[s, lm, n] of c
# into ht[s, lm, k] = sum_n B[l, n, k] h[s, lm, n] and ha[s, lm, k] = A[l, k] ht once
# per centre; per pair and lm, with H0 = sum_k ht E[l, k] and H1 = sum_k ha E[l, k], the
# batched pass's sums are sum_n h R = w H0 and sum_n h Qd = (w'/r) H0 + 2 w H1 (w, w'/r
# applied once per pair, after the sums over lm). The same numbers as the batched
# passes up to the order of sums (tests compare them to 1e-13 of the largest value).
# Measured on the MD step's 108-atom Cu cell (n_max 8, l_max 6, 42 pairs a centre, one
# thread): the expansion 1.23 -> 1.03 ms a step, the back-pass unchanged (0.78 ms), and
# half as many kept doubles a pair (104 against 160).
#
# The harmonics' gradients are not kept: the gradient of a solid harmonic of degree l is
# a solid harmonic of degree l - 1, d Y[lm] / d x_a = sum_{l'm'} T_a[lm, l'm'] Y[l'm']
# (l' = l - 1, at most two terms per (lm, a): m' = m for z, m' = m +- 1 mixed for x, y),
# so the back-pass forms dY from the kept Y: T as gc (L2, 3, 2) int64 (the l'm' of the
# two terms) and gv (L2, 3, 2) (their coefficients; 0 for a missing term, 0 for l = 0),
# made by ``SOAP._gradient_map``.
#
# Store layout: centre i of the block owns the flat slice
# ``store[(offsets[i] - offsets[i0]) * PS : (offsets[i + 1] - offsets[i0]) * PS]``,
# PS = :func:`stored_pair_size`, holding geo (6, n), E (L1, nk, n) and Y (L2, n) of its
# n pairs (pair index innermost, as the scratch of the batched kernels);
# perm_store[offsets[i] - offsets[i0] + q] is the pair index of its q-th gathered pair
# and sstart_store[i - i0] its species starts.
# ---------------------------------------------------------------------------------------
@numba.njit(cache=True)
def fused_blocks(offsets, store_pairs):
    """Blocks of consecutive centres for :meth:`gpal.descriptors.SOAP._fused_step`.

    Each block ``(i0, i1)`` holds at most ``budget = max(store_pairs, largest centre's
    pairs)`` pairs (at least one centre).

    Returns
    -------
    blocks : ndarray (n_blocks, 2) of ``(i0, i1)``
    max_pairs : int
        Pairs of the centre with the most.
    nb_max : int
        Centres of the largest block.
    pairs_max : int
        Pairs of the block with the most.
    """
    N = offsets.shape[0] - 1
    max_pairs = 0
    for a in range(N):
        max_pairs = max(max_pairs, offsets[a + 1] - offsets[a])
    budget = max(max_pairs, store_pairs)
    blocks = np.empty((N, 2), dtype=np.int64)
    nb = 0
    nb_max = 0
    pairs_max = 0
    i0 = 0
    while i0 < N:
        i1 = i0 + 1  # the last centre with offsets[i1] <= offsets[i0] + budget
        while i1 < N and offsets[i1 + 1] <= offsets[i0] + budget:
            i1 += 1
        blocks[nb, 0] = i0
        blocks[nb, 1] = i1
        nb += 1
        nb_max = max(nb_max, i1 - i0)
        pairs_max = max(pairs_max, offsets[i1] - offsets[i0])
        i0 = i1
    return blocks[:nb], max_pairs, nb_max, pairs_max


@numba.njit(cache=True)
def stored_pair_size(L1, nk):
    """Doubles kept per pair by :func:`soap_create_stored`: geo, E and Y."""
    return 6 + L1 * nk + L1 * L1


@numba.njit(cache=True)
def _stored_views(store, base, n, L1, nk):
    """(geo (6, n), E (L1 nk n,) flat, Y (L2, n)) of n pairs starting at ``store[base]``
    (C-contiguous views; E is laid out [l, k, q])."""
    L2 = L1 * L1
    o = base
    geo = store[o:o + 6 * n].reshape((6, n))
    o += 6 * n
    E = store[o:o + L1 * nk * n]
    o += L1 * nk * n
    Y = store[o:o + L2 * n].reshape((L2, n))
    return geo, E, Y


@numba.njit(cache=True, fastmath=_FM)
def _radial_to_primitive(h, B, A, ht, ha):
    """ht[s, lm, k] = sum_n B[l, n, k] h[s, lm, n] and ha = A[l, k] ht (A flat [l nk + k];
    B[l, n, k] C-contiguous: the loops over k vectorise)."""
    if h.shape[2] == 8:  # the default n_max
        _radial_to_primitive8(h, B, A, ht, ha)
        return
    S = h.shape[0]
    nk = h.shape[2]
    L1 = B.shape[0]
    for s in range(S):
        for ell in range(L1):
            a = A[ell * nk:(ell + 1) * nk]
            for lm in range(ell * ell, (ell + 1) * (ell + 1)):
                for k in range(nk):
                    ht[s, lm, k] = 0.0
                for nn in range(nk):
                    v = h[s, lm, nn]
                    for k in range(nk):
                        ht[s, lm, k] += B[ell, nn, k] * v
                for k in range(nk):
                    ha[s, lm, k] = a[k] * ht[s, lm, k]


@numba.njit(cache=True, parallel=True)
def soap_create_stored(
    vec,
    nbr_spec,
    offsets,
    center_spec,
    n_species,
    A,
    BT,
    wtype,
    wpar,
    w_zero,
    w_self,
    self0,
    shK,
    shQmm,
    shC1,
    shC2,
    prel,
    pair_off,
    tri,
    max_pairs,
    i0,
    i1,
    store,
    perm_store,
    sstart_store,
    C_out,
    X_out,
    n_chunks,
):
    """X[i0:i1] (into ``X_out[i0:i1]``) and coefficients (``C_out[i - i0]``) of a block
    of centres, as :func:`soap_create_batched`, keeping each pair's exponentials and
    harmonics (see above)."""
    L1 = BT.shape[0]
    nk = BT.shape[1]
    S = n_species
    PS = stored_pair_size(L1, nk)
    P0 = offsets[i0]
    bounds = _chunks(i1 - i0, n_chunks)
    for ch in numba.prange(n_chunks):
        scratch = _create_scratch(max_pairs, L1, nk, S)
        for b in range(bounds[ch], bounds[ch + 1]):
            i = i0 + b
            c = C_out[b]
            scratch[8][:] = 0.0  # ct
            p0 = offsets[i]
            n = offsets[i + 1] - p0
            sstart = sstart_store[b]
            if n > 0:
                o = p0 - P0
                geo, E, Y = _stored_views(store, o * PS, n, L1, nk)
                _gather_centre(
                    vec, nbr_spec, p0, p0 + n, S, perm_store[o:o + n], sstart, geo,
                    wtype, wpar, w_zero,
                )  # fmt: skip
                _primitive_sums(n, geo, A, E, Y, sstart, shK, shQmm, shC1, shC2, scratch)
            _centre_row(BT, c, center_spec[i], w_self, self0, prel, pair_off, tri, X_out[i], scratch)


@numba.njit(cache=True, fastmath=_FM)
def _contract_primitive(ht, ha, s, E, Y, m, L1, nk, gc, gv, H0, H1, u0, u1, g0, g1, g2):
    """The back-pass sums of m pairs of species s, all in arrays indexed from 0, in the
    primitive basis (see above): u0[t] = sum_lm H0 Y[lm], u1[t] = sum_lm H1 Y[lm] and
    g_a[t] = sum_lm H0 dY_a[lm], with H0 = sum_k ht[s, lm, k] E[l, k], H1 = sum_k
    ha[s, lm, k] E[l, k] and dY_a[lm] from the kept harmonics through the map T (gc,
    gv). H0, H1 (>= m,) are scratch.

    The pair loops run from index 0 over whole arrays (no per-term slices): few
    pointers for the vectoriser's overlap checks and no negative-index wraparound in
    the loops (a loop from an unknown q0 keeps it, and then does not vectorise).
    """
    for t in range(m):
        u0[t] = 0.0
        u1[t] = 0.0
        g0[t] = 0.0
        g1[t] = 0.0
        g2[t] = 0.0
    for ell in range(L1):
        for lm in range(ell * ell, (ell + 1) * (ell + 1)):
            v00 = gv[lm, 0, 0]
            v01 = gv[lm, 0, 1]
            v10 = gv[lm, 1, 0]
            v11 = gv[lm, 1, 1]
            v20 = gv[lm, 2, 0]
            v21 = gv[lm, 2, 1]
            c00 = gc[lm, 0, 0]
            c01 = gc[lm, 0, 1]
            c10 = gc[lm, 1, 0]
            c11 = gc[lm, 1, 1]
            c20 = gc[lm, 2, 0]
            c21 = gc[lm, 2, 1]
            if nk == 8:  # the default n_max: the k sums in registers
                h0 = ht[s, lm, 0]
                h1 = ht[s, lm, 1]
                h2 = ht[s, lm, 2]
                h3 = ht[s, lm, 3]
                h4 = ht[s, lm, 4]
                h5 = ht[s, lm, 5]
                h6 = ht[s, lm, 6]
                h7 = ht[s, lm, 7]
                a0 = ha[s, lm, 0]
                a1 = ha[s, lm, 1]
                a2 = ha[s, lm, 2]
                a3 = ha[s, lm, 3]
                a4 = ha[s, lm, 4]
                a5 = ha[s, lm, 5]
                a6 = ha[s, lm, 6]
                a7 = ha[s, lm, 7]
                for t in range(m):
                    e0 = E[ell, 0, t]
                    e1 = E[ell, 1, t]
                    e2 = E[ell, 2, t]
                    e3 = E[ell, 3, t]
                    e4 = E[ell, 4, t]
                    e5 = E[ell, 5, t]
                    e6 = E[ell, 6, t]
                    e7 = E[ell, 7, t]
                    s0 = (h0 * e0 + h1 * e1 + h2 * e2 + h3 * e3
                          + h4 * e4 + h5 * e5 + h6 * e6 + h7 * e7)  # fmt: skip
                    s1 = (a0 * e0 + a1 * e1 + a2 * e2 + a3 * e3
                          + a4 * e4 + a5 * e5 + a6 * e6 + a7 * e7)  # fmt: skip
                    y = Y[lm, t]
                    u0[t] += s0 * y
                    u1[t] += s1 * y
                    g0[t] += s0 * (v00 * Y[c00, t] + v01 * Y[c01, t])
                    g1[t] += s0 * (v10 * Y[c10, t] + v11 * Y[c11, t])
                    g2[t] += s0 * (v20 * Y[c20, t] + v21 * Y[c21, t])
                continue
            for t in range(m):
                H0[t] = 0.0
                H1[t] = 0.0
            for k in range(nk):
                hv = ht[s, lm, k]
                av = ha[s, lm, k]
                for t in range(m):
                    H0[t] += hv * E[ell, k, t]
                    H1[t] += av * E[ell, k, t]
            for t in range(m):
                s0 = H0[t]
                y = Y[lm, t]
                u0[t] += s0 * y
                u1[t] += H1[t] * y
                g0[t] += s0 * (v00 * Y[c00, t] + v01 * Y[c01, t])
                g1[t] += s0 * (v10 * Y[c10, t] + v11 * Y[c11, t])
                g2[t] += s0 * (v20 * Y[c20, t] + v21 * Y[c21, t])


@numba.njit(cache=True, fastmath=_FM)
def _backward_centre_primitive(
    ht, ha, S, sstart, E, Y, geo, perm, n, L1, nk, gc, gv, scratch, H0, H1, u0, u1, g0, g1, g2, out
):
    """out[p, a] = x_a sum_lm HQ Y[lm] + sum_lm HR dY_a[lm] for the n pairs of one centre
    (as :func:`_backward_centre`), from :func:`_contract_primitive`'s sums: HR = w H0,
    HQ = (w'/r) H0 + 2 w H1.

    A species holding all n pairs is contracted in place; the pairs of a species among
    others are first copied to ``scratch`` = (Es (L1, nk, >= n), Ys (L2, >= n)), so that
    :func:`_contract_primitive` indexes every array from 0.
    """
    Es, Ys = scratch
    L2 = L1 * L1
    w = geo[4]
    dwr = geo[5]
    for s in range(S):
        q0 = sstart[s]
        q1 = sstart[s + 1]
        m = q1 - q0
        if m == 0:
            continue
        if m == n:
            _contract_primitive(ht, ha, s, E, Y, m, L1, nk, gc, gv, H0, H1, u0, u1, g0, g1, g2)
        else:
            for ell in range(L1):
                for k in range(nk):
                    for t in range(m):
                        Es[ell, k, t] = E[ell, k, q0 + t]
            for lm in range(L2):
                for t in range(m):
                    Ys[lm, t] = Y[lm, q0 + t]
            _contract_primitive(ht, ha, s, Es, Ys, m, L1, nk, gc, gv, H0, H1, u0, u1, g0, g1, g2)
        for t in range(m):
            q = q0 + t
            p = perm[q]
            wq = w[q]
            u = dwr[q] * u0[t] + 2.0 * wq * u1[t]
            out[p, 0] = geo[0, q] * u + wq * g0[t]
            out[p, 1] = geo[1, q] * u + wq * g1[t]
            out[p, 2] = geo[2, q] * u + wq * g2[t]


@numba.njit(cache=True, parallel=True, fastmath=_FM)
def soap_backward_stored(
    offsets, i0, i1, prel, pair_off, tri, max_pairs, A, BT, store, perm_store, sstart_store,
    gc, gv, C, G, out, n_chunks,
):
    """out[p, a] = sum_f G[center_p - i0, f] dX[p, a, f] for the pairs of centres i0:i1,
    from the terms :func:`soap_create_stored` kept (C, G: the block's rows)."""
    S = C.shape[1]
    L2 = C.shape[2]
    nk = C.shape[3]
    L1 = prel.shape[0]
    PS = stored_pair_size(L1, nk)
    P0 = offsets[i0]
    bounds = _chunks(i1 - i0, n_chunks)
    B = np.ascontiguousarray(BT.transpose((0, 2, 1)))  # B[l, n, k]
    for ch in numba.prange(n_chunks):
        Gm = np.empty((nk, nk))
        h = np.empty((S, L2, nk))
        ht = np.empty((S, L2, nk))
        ha = np.empty((S, L2, nk))
        Pm = max(max_pairs, 1)
        H0 = np.empty(Pm)
        H1 = np.empty(Pm)
        u0 = np.empty(Pm)
        u1 = np.empty(Pm)
        g0 = np.empty(Pm)
        g1 = np.empty(Pm)
        g2 = np.empty(Pm)
        scratch = (np.empty((L1, nk, Pm)), np.empty((L2, Pm)))
        for b in range(bounds[ch], bounds[ch + 1]):
            i = i0 + b
            p0 = offsets[i]
            n = offsets[i + 1] - p0
            if n == 0:
                continue
            o = p0 - P0
            _fold_gradient(G[b], C[b], prel, pair_off, tri, Gm, h)
            _radial_to_primitive(h, B, A, ht, ha)
            geo, E, Y = _stored_views(store, o * PS, n, L1, nk)
            _backward_centre_primitive(
                ht, ha, S, sstart_store[b], E.reshape((L1, nk, n)), Y, geo, perm_store[o:o + n],
                n, L1, nk, gc, gv, scratch, H0, H1, u0, u1, g0, g1, g2, out,
            )  # fmt: skip


# ---------------------------------------------------------------------------------------
# Several gradients at once: the adjoint of K energies E_k = sum_i G[i, k] . X[i] (the
# kernel columns of a frame against K sparse points). Each pair's radial basis and
# harmonics (and their derivatives) are computed once and contracted K times.
# ---------------------------------------------------------------------------------------
@numba.njit(cache=True, fastmath=_FM)
def _fold_gradients(G, c, prel, pair_off, tri, active, n_active, Ga, Gb, h):
    """h[s, lm, a * n + k] = d (G[active[a]] . X) / d c[s, lm, k] for one centre.

    G (K, F), c (S, L2, n). Per species pair and l the features are bilinear forms
    ``pre c_s^T g c_t`` (as in :func:`_fold_gradient`); the forms of all active
    gradients are laid side by side in Ga, Gb (n, K n) so that each coefficient row
    updates every gradient's h in one contiguous loop.
    """
    S = c.shape[0]
    nmax = c.shape[2]
    L1 = prel.shape[0]
    nsym = nmax * (nmax + 1) // 2
    w = n_active * nmax
    for s in range(S):
        for lm in range(c.shape[1]):
            for j in range(w):
                h[s, lm, j] = 0.0
    for s in range(S):
        for t in range(s, S):
            off = pair_off[s, t]
            for ell in range(L1):
                pre = prel[ell]
                if s == t:
                    # X_ab = pre sum_m c_a c_b (a <= b): h_a = sum_b Gsym_ab c_b,
                    # Gsym_aa = 2 pre g_aa, Gsym_ab = Gsym_ba = pre g_ab
                    base = off + ell * nsym
                    for ia in range(n_active):
                        g = G[active[ia]]
                        o = ia * nmax
                        for a in range(nmax):
                            k0 = base + tri[a, a] - a
                            Ga[a, o + a] = 2.0 * pre * g[k0 + a]
                            for b in range(a + 1, nmax):
                                v = pre * g[k0 + b]
                                Ga[a, o + b] = v
                                Ga[b, o + a] = v
                    for lm in range(ell * ell, (ell + 1) * (ell + 1)):
                        hrow = h[s, lm]
                        for b in range(nmax):
                            cb = c[s, lm, b]
                            gb = Ga[b]
                            for j in range(w):
                                hrow[j] += cb * gb[j]
                else:
                    # X_ab = pre sum_m c_s,a c_t,b: h_s,a = sum_b pre g_ab c_t,b and
                    # h_t,b = sum_a pre g_ab c_s,a
                    base = off + ell * nmax * nmax
                    for ia in range(n_active):
                        g = G[active[ia]]
                        o = ia * nmax
                        for a in range(nmax):
                            for b in range(nmax):
                                v = pre * g[base + a * nmax + b]
                                Ga[b, o + a] = v
                                Gb[a, o + b] = v
                    for lm in range(ell * ell, (ell + 1) * (ell + 1)):
                        hs_ = h[s, lm]
                        ht = h[t, lm]
                        for b in range(nmax):
                            cb = c[t, lm, b]
                            gb = Ga[b]
                            for j in range(w):
                                hs_[j] += cb * gb[j]
                        for a in range(nmax):
                            ca = c[s, lm, a]
                            ga = Gb[a]
                            for j in range(w):
                                ht[j] += ca * ga[j]


@numba.njit(cache=True, fastmath=_FM)
def _pair_jacobian(R, Qd, Y, dY, geo, q0, q1, D):
    """D[lm * n_max + k, a * m + q] = d c[lm, k] / d x_a of the pairs q0:q1 (m of them).

    ``x_a Qd[l, k] Y[lm] + R[l, k] dY[a, lm]`` (see the module docstring): the pairs'
    Jacobian from coefficient space to their vectors, rows in the layout of h.
    """
    L1 = R.shape[0]
    nk = R.shape[1]
    m = q1 - q0
    for ell in range(L1):
        for lm in range(ell * ell, (ell + 1) * (ell + 1)):
            y = Y[lm, q0:q1]
            for k in range(nk):
                Rr = R[ell, k, q0:q1]
                Qr = Qd[ell, k, q0:q1]
                row = D[lm * nk + k]
                for a in range(3):
                    xa = geo[a, q0:q1]
                    da = dY[a, lm, q0:q1]
                    o = a * m
                    for q in range(m):
                        row[o + q] = xa[q] * Qr[q] * y[q] + Rr[q] * da[q]


@numba.njit(cache=True, parallel=True, fastmath=_FM)
def soap_backward_multi(
    vec,
    nbr_spec,
    offsets,
    A,
    BT,
    BAT,
    wtype,
    wpar,
    w_zero,
    shK,
    shQmm,
    shC1,
    shC2,
    prel,
    pair_off,
    tri,
    max_pairs,
    C,
    G,
    out,
    n_chunks,
):
    """out[p, a, k] = sum_f G[center_p, k, f] dX[p, a, f] for K gradients at once.

    G has shape (N, K, F), out (P, 3, K). Per centre: the gradients that are not zero
    on it are folded into coefficient space (h_k = dE_k/dc, :func:`_fold_gradients`);
    the centre's pairs are gathered by species and their radial functions, harmonics
    and derivatives computed once, giving each species' pair Jacobian D (L2 n_max,
    3 m) (:func:`_pair_jacobian`); then one matrix product

        out[q, a, k] = sum_{lm, n} h_k[s, lm, n] D[lm n, a m + q]

    for all the gradients. Gradients that vanish on a centre (another species' sparse
    points) cost nothing there. The product calls BLAS: run it with one BLAS thread
    (numba's threads already share the centres).
    """
    N = offsets.shape[0] - 1
    S = C.shape[1]
    L1 = BT.shape[0]
    L = L1 - 1
    nk = BT.shape[1]
    L2 = L1 * L1
    K = G.shape[1]
    F = G.shape[2]
    bounds = _chunks(N, n_chunks)
    for ch in numba.prange(n_chunks):
        (perm, sstart, geo, args, ex, ibits, R, Qd, Y, dY, Q, Qz, Qr, Am, Bm) = (
            _batch_scratch(max_pairs, L1, nk, S)
        )
        Pm = max(max_pairs, 1)
        Kp = max(K, 1)
        Ga = np.empty((nk, Kp * nk))
        Gb = np.empty((nk, Kp * nk))
        hk = np.empty((S, L2, Kp * nk))  # folded gradients, side by side
        hs = np.empty(Kp * L2 * nk)  # one species' rows of the active gradients
        active = np.empty(Kp, dtype=np.int64)
        Dbuf = np.empty(L2 * nk * 3 * Pm)
        Obuf = np.empty(Kp * 3 * Pm)
        for i in range(bounds[ch], bounds[ch + 1]):
            p0 = offsets[i]
            n = offsets[i + 1] - p0
            if n == 0:
                continue
            na = 0
            for k in range(K):
                nz = False
                for f in range(F):
                    if G[i, k, f] != 0.0:
                        nz = True
                        break
                if nz:
                    active[na] = k
                    na += 1
                else:
                    for p in range(p0, p0 + n):
                        out[p, 0, k] = 0.0
                        out[p, 1, k] = 0.0
                        out[p, 2, k] = 0.0
            if na == 0:
                continue
            _fold_gradients(G[i], C[i], prel, pair_off, tri, active, na, Ga, Gb, hk)
            _gather_centre(
                vec, nbr_spec, p0, p0 + n, S, perm, sstart, geo, wtype, wpar, w_zero
            )
            _batch_radial(n, geo, A, BT, BAT, args, ex, ibits, R, Qd, True)
            _batch_harmonics(
                n, geo, L, shK, shQmm, shC1, shC2, Y, dY, Q, Qz, Qr, Am, Bm, True
            )
            for s in range(S):
                q0 = sstart[s]
                q1 = sstart[s + 1]
                m = q1 - q0
                if m == 0:
                    continue
                H = hs[: na * L2 * nk].reshape((na, L2 * nk))
                for lm in range(L2):
                    src = hk[s, lm]
                    for ia in range(na):
                        for k in range(nk):
                            H[ia, lm * nk + k] = src[ia * nk + k]
                D = Dbuf[: L2 * nk * 3 * m].reshape((L2 * nk, 3 * m))
                _pair_jacobian(R, Qd, Y, dY, geo, q0, q1, D)
                O = Obuf[: na * 3 * m].reshape((na, 3 * m))
                np.dot(H, D, O)
                for ia in range(na):
                    k = active[ia]
                    row = O[ia]
                    for a in range(3):
                        for q in range(m):
                            out[perm[q0 + q], a, k] = row[a * m + q]
