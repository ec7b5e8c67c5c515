"""The gpal potential: SOAP descriptor + kernel + sparse GP, on ASE frames.

Model
-----
The total energy of a structure is a sum of local atomic energies plus per-species
baselines (size-extensive by construction)::

    E = sum_i [ e0(Z_i) + eps(x_i) ],   eps(x) = sum_m alpha_m k(x, z_m)

with ``x_i`` the SOAP vector of atom ``i``'s environment and ``z_m`` the sparse
(inducing) environments. Environments of different central species never interact:
``k(x, z) = 0`` when the central species differ, so ``K_mm`` is block-diagonal by species.

Observations are total energies, force components and stress components. Their rows of
``K_nm`` are the corresponding linear functionals of ``k(., z_m)``:

* energy row:  sum_i k(x_i, z_m)
* force row:   -d/dr_jk sum_i k(x_i, z_m)            (pair derivatives of SOAP)
* stress row:  (1/V) d/d(strain) sum_i k(x_i, z_m)   (ASE sign, Voigt order)

Noise: energies ``energy_noise * sqrt(n_atoms)`` (``energy_noise`` is per atom, eV/atom),
forces ``force_noise`` (eV/Å), stress ``stress_noise`` (eV/Å^3).

Uncertainty
-----------
``energies_std`` is the DTC posterior std of each local energy,
``k(x,x) - k^T K_mm^-1 k + k^T Sigma k``. ``energy_std`` is the std of the total energy
under the same model, with the residual prior term ``k - Q`` treated as independent
between atoms (the FITC assumption); the projected part keeps all correlations between
atoms. The residual is the signal variance times each environment's novelty: with the
large signal variance the evidence picks (10²-10³ eV²), it can be most of the energy
std and make it far larger than the errors (a Pt(111) slab with an adatom, EMT labels:
energy RMSE 1.5 meV against a mean ``energy_std`` of 31.5 meV, over 99 % of it the
residual). The active learner stores one factor for ``energy_std`` fitted on held-out
energy errors (:meth:`gpal.ActiveLearner.calibrate`), applied by ``calibrated=True``;
``energies_std`` stay raw: use them to compare frames, not as error bars. (:meth:`gpal.TargetSet.predict` keeps the residual
correlations too, and so gives a larger std for the same energy.) ``forces_std``/``stress_std`` (on request, they cost one
explicit derivative pass) are the projected-process part of the force/stress
variance, ``a^T Sigma a`` with ``a`` the force/stress row: they omit the residual term,
so calibrate them (gpal.calibration) before trusting their scale.
"""

from __future__ import annotations

import inspect
import logging
import hashlib
import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.linalg
from ase import Atoms
from scipy.linalg.blas import dtrmm as _dtrmm
from scipy.linalg.blas import strmm as _strmm
from scipy.linalg.blas import dtrsv as _dtrsv
from scipy.linalg.blas import dsyrk as _dsyrk
from scipy.linalg.lapack import dpotrf as _dpotrf
from scipy.linalg.lapack import dtrtri as _dtrtri
from ase.data import chemical_symbols
from sklearn.base import BaseEstimator, clone

from .. import _jit, _threads
from .._threads import policy as _thread_policy
from .._validation import (
    DEFAULT_MIN_DISTANCE,
    Labels,
    check_atoms,
    check_frames,
    check_is_fitted,
    check_min_distance,
    check_number,
    check_results_current,
    frame_labels,
    species_number,
    energy_entries,
    user_stacklevel,
    warn_energy_outliers,
    warn_implausible_labels,
)
from ..descriptors import SOAP, Descriptor, pair_forces, pair_stress
from ..exceptions import BaselineError, MissingLabelsError
from ..descriptors._soap_jit import pair_forces_stress_kernel as _forces_and_stress
from ..descriptors.neighbors import min_length
from ..kernels import CosineKernel, Kernel, NormalizedDotProduct
from ..selection import greedy_select
from ..sparse_gp import SparseGPSolver
from .. import baseline as _baseline
from ._atomic import restoring
from .rows import _labelled_copy, frame_temperature
from .defaults import (
    _E,
    _F,
    _GROUP_NAMES,
    _HYPERPARAMETER_MODES,
    _SPARSE_SELECTIONS,
    DEFAULT_MEMORY_BUDGET_GB,
    DEFAULT_NOISE,
    L_MAX_CANDIDATES,
    SIGMA_CANDIDATES,
    _MIN_FRAMES_DESCRIPTOR_SEARCH,
    NOISE_BOUNDS,
    unexplained_forces,
    ZETA_CANDIDATES,
    default_descriptor,
)

log = logging.getLogger(__name__)
from .evidence import _Evidence
from .files import _Files
from .rows import ObservationRows, _Rows  # noqa: F401
from .sparse_set import _SparseSet, _check_exact_frames


#: a stress label's noise std per Voigt component, in units of ``stress_noise``
#: (:meth:`SparseGP.stress_label_noise`)
_STRESS_NOISE_SCALE = np.array([1.0, 1.0, 1.0, 0.5 ** 0.5, 0.5 ** 0.5, 0.5 ** 0.5])


def _same_setting(value, default) -> bool:
    """True if a constructor setting is its default (None, numbers, strings; an object is not)."""
    if value is default:
        return True
    try:
        return bool(value == default) and type(value) is type(default)
    except (TypeError, ValueError):
        return False


def _fit_size(model, frames=None, *args, **kwargs) -> int | None:
    """Elements of a fit's stacked (observations x sparse points) matrix, at most.

    The thread policy gives BLAS every free core from :data:`gpal._threads.SMALL_BLOCK`
    elements on (its QR and Gram products); the row passes inside lower it to one.
    """
    if not isinstance(frames, (list, tuple)):  # a generator (ase.io.iread) is fit's to read once
        return None
    try:
        n_obs = sum(1 + 3 * len(a) + 6 for a in frames)
        m = model.n_sparse
        m = sum(m.values()) if isinstance(m, dict) else int(m)
        return int(n_obs) * min(m, n_obs)
    except (TypeError, ValueError, AttributeError):  # fit's own checks report bad input
        return None


def _block_size(model, atoms) -> int | None:
    """Elements of the (n_atoms x n_sparse) kernel block of a prediction (None if unknown)."""
    try:
        return len(atoms) * len(getattr(model, "sparse_X_", ()))
    except TypeError:  # not an Atoms: predict's own checks say so
        return None


__all__ = ["SparseGP", "ObservationRows", "default_descriptor", "ZETA_CANDIDATES", "L_MAX_CANDIDATES", "NOISE_BOUNDS"]


#: predict's SOAP path: True, blocks of centres with the pair terms kept between the
#: expansion and the back-pass (SparseGP._fused_terms); False, expand then backward
_FUSED_STEP = True

#: atoms per chunk of the local-energy stds' triangular products (each product packs the
#: triangular factor again: 4,000 atoms at M = 500, one thread, 20.9 ms with chunks of 256
#: atoms, 20.2 ms with 1,024), at most :data:`_STD_CHUNK_BYTES` of kernel rows (at least
#: 256 atoms)
_STD_CHUNK = 1024
_STD_CHUNK_BYTES = 4 << 20


def _std_chunk(m: int) -> int:
    """Atoms per chunk of the local-energy stds' triangular products for m sparse points."""
    return min(_STD_CHUNK, max(256, _STD_CHUNK_BYTES // (8 * max(m, 1))))

#: bytes of kernel rows per species that a prediction holds for the local stds
#: (:class:`_VarianceTerms`): their triangular products run per buffer of this size
_VARIANCE_BUFFER_BYTES = 32 << 20
_QUADRATIC_MAX_FEATURES = 1024  # largest F whose ζ = 2 quadratic form A (F, F) is kept


_NO_DIAG = np.zeros(0)  # _jit._dtc_tail's kdiag when it reads k(x,x) from the rows


def _triangular_inverse(T: np.ndarray, lower: bool) -> np.ndarray:
    """Inverse of a non-singular triangular matrix, Fortran order (LAPACK trtri, ~2-4x
    faster than a triangular solve with the identity); the other triangle is zero."""
    inv, info = _dtrtri(np.asfortranarray(np.tril(T) if lower else np.triu(T)), lower=int(lower),
                        overwrite_c=1)
    if info != 0:
        raise np.linalg.LinAlgError(f"singular triangular factor (trtri info {info})")
    return inv


def _loo_terms(V: np.ndarray, lam: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(r₋B, diag S₋B)`` of :meth:`SparseGP.loo_residuals` for one frame: its whitened
    SoR factor ``V`` (M, n), label noise variances ``lam`` (n,) and residuals ``r`` (n,).

    In the observations' space (n ≤ M): D = Λ − VᵀV, r₋B = Λ D⁻¹ r, S₋B = VᵀV D⁻¹ Λ.
    In the sparse space (n > M, by Woodbury): C = I − V Λ⁻¹ Vᵀ, r₋B = r + Vᵀ C⁻¹ V Λ⁻¹ r,
    S₋B = Vᵀ C⁻¹ V. ``np.linalg.LinAlgError`` where D (or C) is not positive definite
    (the frame pins its own posterior to round-off)."""
    M, n = V.shape
    if n <= M:
        S = V.T @ V
        cho = scipy.linalg.cho_factor(np.diag(lam) - S, check_finite=False)
        r_loo = lam * scipy.linalg.cho_solve(cho, r, check_finite=False)
        var = np.einsum("ij,ji->i", S, scipy.linalg.cho_solve(cho, np.diag(lam), check_finite=False))
        return r_loo, var
    Vl = V / lam
    C = -(Vl @ V.T)
    C[np.diag_indices(M)] += 1.0
    L = scipy.linalg.cholesky(C, lower=True, check_finite=False)
    r_loo = r + V.T @ scipy.linalg.cho_solve((L, True), Vl @ r, check_finite=False)
    U = scipy.linalg.solve_triangular(L, V, lower=True, check_finite=False)
    return r_loo, np.einsum("ij,ij->j", U, U)


def _frame_key(a: Atoms) -> bytes:
    """An 8-byte digest of a frame's atoms, positions and cell (exact repeats; the same in
    every process, unlike Python's ``hash``, so a pickled model's keys stay valid)."""
    h = hashlib.blake2b(digest_size=8)
    for arr in (a.numbers, a.positions, a.cell.array):
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.digest()


class _LocalStdFactors:
    """What the local-energy variances of a fitted model need, precomputed once.

    With ``K_mm + jitter = L Lᵀ`` and the whitened factor ``R_w`` of the solver
    (``Σ = L⁻ᵀ R_w⁻¹ R_w⁻ᵀ L⁻¹``), the DTC variance of a local energy with kernel row
    ``k`` is ``k(x,x) - |w|² + |v|²`` with ``w = L⁻¹k`` and ``v = R_w⁻ᵀ w``.

    ``L`` is block-diagonal by species (``K_mm`` is), so an atom of species ``z``, whose
    kernel row is zero outside its species' sparse columns ``c``, has ``w`` only in
    ``c``: ``w_c = L_cc⁻¹ k_c``, and ``|v|² = w_cᵀ S_cc w_c`` with ``S = R_w⁻¹ R_w⁻ᵀ``.
    Per species the factors hold the explicit inverse ``L_cc⁻¹`` (lower triangular) and
    an upper-triangular ``U_c`` with ``U_cᵀ U_c = S_cc`` (its Cholesky factor; the R of
    a QR of ``(R_w⁻¹[c, :])ᵀ`` if ``S_cc``, whose condition number is that of ``R_w``
    squared, is too ill-conditioned for Cholesky), so both are one triangular
    matrix product (BLAS trmm) over the atoms of the species (of a buffer of atoms on
    the fused path, :class:`_VarianceTerms`): ``|L_cc⁻¹ k_c|²`` and
    ``|U_c w_c|²``, m²/2 multiply-adds each for the species' m sparse points, at the
    speed of a matrix product. This holds for any order of the sparse columns
    (species interleaved after updates), and a species costs only its own m², not
    the columns of the species after it.

    The factors are formed once per factorisation, by the first prediction with stds
    (O(M³): 0.016 s at M = 500 and 0.2 s at M = 1,500, one thread, as before; 2 Σ m² floats of
    memory): ``key`` holds the arrays they
    were made from and :meth:`SparseGP._local_std_factors` rebuilds them when the
    solver's factors are replaced (update, sparse points added, refit, load).

    Accuracy (a 500-point Cu model, rattled 108-atom cell, cond(L) 2e5, residuals
    ``k(x,x) - |w|²`` ~4e-9 of the prior, so the subtraction cancels 8 digits): the
    residual's error against a long-double refined solve is 1.0e-6 of itself with the
    explicit inverse, 4e-7 with a triangular solve and 6e-7 with the blocked
    substitution of the previous release, i.e. ~4e-15 of the prior variance for all
    three, the rounding of the subtraction itself. On badly conditioned models the
    explicit inverses lose more: with a force noise of 1e-7 (cond(R_w) 1.4e8) the local
    variance is 3.8e-5 from the long-double value, against 8.3e-6 for the previous
    release's substitution and 1.9e-6 for plain triangular solves, always within 5e-14
    of the prior variance. Energies, forces and stress do not use these factors.

    The projected part ``|U_c w_c|²`` is formed in single precision (``U_c`` stored as
    float32, BLAS strmm on ``w_c`` rounded to float32; squares and sums in double): it
    is added to the residual, not subtracted, so its rounding (~1e-7 of itself) passes
    to the variance without cancellation. The Nyström part, whose subtraction cancels,
    stays in double. Measured against the double-precision product (the same Cu model
    and 21 frames: rattled and MD cells, 0.02-0.3 Å): local-energy stds within 2.1e-6
    of themselves (median 1.2e-6), the total energy's std within 4.9e-7; with a force
    noise of 1e-7 (cond(R_w) ~1e8) within 5.5e-7. The MD step's second triangular
    product takes about half the time (0.93 -> 0.76 ms of a 108-atom step at M = 500,
    one thread).

    Attributes
    ----------
    blocks : dict or None
        ``{species: (c, L_cc⁻¹, U_c)}``, the triangular factors in Fortran order
        (``U_c`` float32). None
        when ``L`` is not block-diagonal by species (not for a gpal fit): then plain
        solves are used.
    """

    def __init__(self, solver, sparse_species: np.ndarray):
        self.key = (solver.L_mm_, solver.R_w_, sparse_species)
        L, R_w = solver.L_mm_, solver.R_w_
        Rinv = _triangular_inverse(R_w, lower=False)
        blocks = {}
        for z in np.unique(sparse_species):
            c = np.flatnonzero(sparse_species == z)
            other = np.flatnonzero(sparse_species != z)
            if len(other) and np.any(L[np.ix_(c, other)]):
                blocks = None
                break
            Linv = _triangular_inverse(L[np.ix_(c, c)], lower=True)
            # S_cc = B Bᵀ with B = R_w⁻¹[c, c0:] (R_w⁻¹[c, :] is zero before column c0):
            # its Cholesky factor (BLAS syrk, LAPACK potrf); a QR of Bᵀ where S_cc is
            # too ill-conditioned for Cholesky
            c0 = int(c[0])
            B = Rinv[c0:c0 + len(c), c0:] if c[-1] - c0 + 1 == len(c) else Rinv[c, c0:]
            U, info = _dpotrf(_dsyrk(1.0, B), lower=0, clean=1, overwrite_a=1)
            if info != 0:
                U = np.asfortranarray(np.triu(scipy.linalg.qr(B.T, mode="r", check_finite=False)[0][:len(c)]))
            blocks[int(z)] = (c, Linv, np.asfortranarray(U, dtype=np.float32))
        self.blocks = blocks

    def matches(self, solver, sparse_species) -> bool:
        k = self.key
        return k[0] is solver.L_mm_ and k[1] is solver.R_w_ and k[2] is sparse_species

    def terms(self, Kz: np.ndarray, z: int, with_sor: bool = True, overwrite: bool = False):
        """``(|w|², |v|², Σ_i w_i, Σ_i v_i)`` of the kernel rows ``Kz`` (n, len(c)) of
        species ``z``; with ``overwrite`` the products may run on the rows ``Kz``
        themselves (not needed after), without a copy.

        Returns arrays of shapes (n,), (n,), (len(c),) and (len(c),) (``w`` and ``v`` in
        the species' columns); ``|v|²`` and ``Σ v`` stay zero without ``with_sor`` (the
        Nyström part only). ``|Σ_i v_i|²`` is the projected variance of the sum of the
        rows' local energies (``U_c`` is linear: ``Σ_i U_c w_i = U_c Σ_i w_i``).
        """
        c, Linv, U = self.blocks[z]
        n, m = Kz.shape
        q, sor, wsum, vsum = np.empty(n), np.zeros(n), np.zeros(m), np.zeros(m)
        chunks = _threads.row_chunks(n)
        if chunks:  # the same by chunks of rows on numba's threads (gpal._row_blas)
            from .. import _row_blas

            return _row_blas.std_terms(Kz, Linv, U, with_sor, chunks, _std_chunk(m), overwrite=overwrite)
        step = _std_chunk(m)
        for s in range(0, n, step):
            # (n_chunk, m) rows -> their transpose, Fortran order: trmm's right-hand side
            Wt = _dtrmm(1.0, Linv, Kz[s:s + step].T, side=0, lower=1, overwrite_b=overwrite)  # L_cc⁻¹ k_cᵀ
            q[s:s + step] = np.einsum("ij,ij->j", Wt, Wt)
            wsum += Wt.sum(axis=1)
            if with_sor:  # (single precision: see the class docstring)
                Vt = _strmm(1.0, U, Wt.astype(np.float32, order="F"), side=0, lower=0,
                            overwrite_b=1).astype(np.float64)
                sor[s:s + step] = np.einsum("ij,ij->j", Vt, Vt)
                vsum += Vt.sum(axis=1)
        return q, sor, wsum, vsum


class _VarianceTerms:
    """The terms of :meth:`SparseGP._local_variance_terms`, from kernel rows handed in
    block of atoms by block, in a buffer of bounded size.

    The fused prediction path hands each block's kernel rows (per species) to
    :meth:`add` as the block is done. They are copied into a per-species buffer of at
    most :data:`_VARIANCE_BUFFER_BYTES` (and the species' atoms), whose triangular
    products run when it is full and at :meth:`result`: a cell whose kernel rows fit
    the buffer (4,000 atoms at M = 500: 16 MB) gets one pass over all its rows, as the
    merged blocks had, and a larger one a pass per buffer, so a prediction's memory for
    the stds stays bounded (the merged blocks and their pieces were 8 kB per atom at M =
    500, 32 kB at M = 2,000: 3.2 GB for 100,000 atoms). Measured (Cu, 500 sparse points,
    against the merged blocks): peak traced memory of a predict with stds 51.0 → 47.6 MB
    at 4,000 atoms and 209 → 129 MB at 16,384; at 4,000 atoms, quiet, one / two threads
    109 → 95 and 68 → 58 µs/atom (medians of two rounds), the MD step beside a busy
    process 116 / 108 / 104 → 109 / 105 / 91 µs/atom (three pairs of runs); the 108-atom
    cell (one block, whose rows run as they are) unchanged. Passes per block of ~150 atoms instead (no buffer) made
    that busy MD step slower than the merged blocks in 4 of 5 alternating pairs (median
    6 %; each pass reads both triangular factors again). Equal to
    :meth:`SparseGP._local_variance_terms` of the merged blocks up to the order of sums
    (``Σ_i w_i``, ``Σ_i v_i`` by buffer). Only for factors that are block-diagonal by
    species (every gpal fit).
    """

    def __init__(self, model: "SparseGP", fac: _LocalStdFactors, n_atoms: int, with_sor: bool,
                 counts, overwrite: bool = False):
        # counts[z]: atoms of species z (a dict, or np.bincount of the numbers); overwrite:
        # the kernel rows handed to add are not needed after (the products may run on them)
        self.model, self.fac, self.with_sor, self.counts = model, fac, with_sor, counts
        self.overwrite = overwrite
        self.q, self.sor = np.zeros(n_atoms), np.zeros(n_atoms)
        self.sums: dict = {}  # species -> [c, Σ w, Σ v] over the atoms done
        self.buffers: dict = {}  # species -> _RowBuffer

    def add(self, r: np.ndarray, c: np.ndarray, Kz: np.ndarray) -> None:
        """Kernel rows ``Kz`` (len(r), len(c)) of atoms ``r``, all of the species whose
        sparse columns are ``c``. A buffer holds the species' atoms (``counts[z]``), at
        most :data:`_VARIANCE_BUFFER_BYTES` of rows; a piece that fills it by itself (a
        species whose rows come in one block, as in a 108-atom cell, or the merged
        blocks of :meth:`SparseGP._local_variance_terms`) runs without being copied."""
        z = int(self.model.sparse_species_[c[0]])
        cap = self._cap(z, c)
        b = self.buffers.get(z)
        s = 0
        while s < len(r):
            if (b is None or not b.held) and len(r) - s >= cap:  # a whole buffer's rows as they are
                self._terms(z, c, r[s:s + cap], Kz[s:s + cap])
                s += cap
                continue
            if b is None:
                b = self.buffers[z] = _RowBuffer(cap, c)
            s += b.take(r[s:], Kz[s:])
            if b.full:
                self._flush(z)

    def _cap(self, z: int, c: np.ndarray) -> int:
        """Rows of species ``z``'s buffer: its atoms, at most :data:`_VARIANCE_BUFFER_BYTES`."""
        return max(min(int(self.counts[z]), _VARIANCE_BUFFER_BYTES // (8 * len(c))), 1)

    def rows_for(self, z: int, c: np.ndarray, n: int) -> np.ndarray | None:
        """Where the kernel may write the next ``n`` rows of species ``z`` (sparse columns
        ``c``) so that :meth:`add` keeps them without a copy: rows of the species' buffer,
        if they go there and fit the rows left; None otherwise (a piece that runs as it
        is, or one larger than the rows left, which :meth:`add` copies in parts)."""
        cap = self._cap(z, c)
        b = self.buffers.get(z)
        if (b is None or not b.held) and n >= cap:
            return None
        if b is None:
            b = self.buffers[z] = _RowBuffer(cap, c)
        return b.free_rows(n)

    def _flush(self, z: int) -> None:
        b = self.buffers[z]
        if b.held:
            self._terms(z, b.cols, b.atoms[:b.held], b.rows[:b.held])
            b.held = 0

    def _terms(self, z: int, c: np.ndarray, r: np.ndarray, Kz: np.ndarray) -> None:
        self.q[r], self.sor[r], wsum, vsum = self.fac.terms(Kz, z, self.with_sor, self.overwrite)
        e = self.sums.get(z)
        if e is None:
            self.sums[z] = [c, wsum, vsum]
        else:
            e[1] = e[1] + wsum
            e[2] = e[2] + vsum

    def result(self) -> tuple:
        """``(q, sor, sor_total)`` as :meth:`SparseGP._local_variance_terms` returns them."""
        for z in self.buffers:
            self._flush(z)
        if not self.with_sor or not self.sums:
            return self.q, self.sor, 0.0
        if len(self.sums) == 1:
            # one species: the total's projected variance is |Σ_i v_i|² (see
            # _LocalStdFactors.terms), which the triangular products have summed (a trsv on
            # the whole (M, M) R_w, read from memory, took ~70 µs at M = 500 in an MD step)
            (_, _, vsum), = self.sums.values()
            return self.q, self.sor, float(np.dot(vsum, vsum))
        wsum = np.zeros(len(self.model.sparse_species_))
        for c, ws, _ in self.sums.values():
            wsum[c] = ws
        return self.q, self.sor, self.model._var_sor_whitened(wsum)


class _RowBuffer:
    """Kernel rows of one species held for :class:`_VarianceTerms`: ``rows`` (cap, m) in
    the species' sparse columns ``cols`` (m,), their atoms' indices ``atoms`` (cap,), the
    first ``held`` in use."""

    def __init__(self, cap: int, cols: np.ndarray):
        self.cols, self.held = cols, 0
        self.rows, self.atoms = np.empty((cap, len(cols))), np.empty(cap, dtype=np.int64)
        self._given = None  # the view free_rows last gave

    @property
    def full(self) -> bool:
        return self.held == len(self.atoms)

    def take(self, r: np.ndarray, Kz: np.ndarray) -> int:
        """Copy as many of the rows ``Kz`` (atoms ``r``) as fit; returns how many. Rows
        written in place into the view :meth:`free_rows` gave are not copied."""
        k = min(len(self.atoms) - self.held, len(r))
        if not self.in_place(Kz):
            self.rows[self.held:self.held + k] = Kz[:k]
        self._given = None
        self.atoms[self.held:self.held + k] = r[:k]
        self.held += k
        return k

    def in_place(self, Kz: np.ndarray) -> bool:
        """Whether ``Kz`` starts at the free rows :meth:`free_rows` gave (the kernel wrote
        them there)."""
        g = self._given
        return (g is not None and len(Kz) <= len(g)
                and Kz.__array_interface__["data"][0] == g.__array_interface__["data"][0])

    def free_rows(self, n: int) -> np.ndarray | None:
        """The next ``n`` free rows (a view), where the kernel can write rows that
        :meth:`take` then keeps without a copy; None if fewer are free."""
        if self.held + n > len(self.atoms):
            return None
        self._given = self.rows[self.held:self.held + n]
        return self._given


#: the std outputs of :meth:`SparseGP.predict` a calibration may be stored for
_STD_OUTPUTS = ("forces_std", "energies_std", "energy_std", "stress_std")


def _baseline_fitted(baseline, kwargs):
    """What a model file keeps of the baseline a fit used (:meth:`SparseGP.save`), kept
    apart from the parameters, which ``set_params`` may change before the next fit: the
    recipe (an import path or spec and its keyword arguments), or ``"live"`` for a
    calculator object (``baseline_`` itself; not held twice, for copies)."""
    if baseline is None or isinstance(baseline, (str, dict)) or hasattr(baseline, "factory"):
        return (baseline, None if kwargs is None else dict(kwargs))
    return "live"


class SparseGP(_Rows, _SparseSet, _Evidence, _Files, BaseEstimator):
    """Sparse Gaussian-process interatomic potential on SOAP environments.

    Parameters
    ----------
    descriptor : gpal.SOAP, optional
        Environment descriptor, used as given. Default: :func:`default_descriptor` of
        the training frames (r_cut 5 Å, n_max 8) with, when ``hyperparameters="evidence"``,
        l_max among :data:`L_MAX_CANDIDATES` (3, 6) and sigma among
        :data:`SIGMA_CANDIDATES` (0.3, 0.5 Å; from 10 training frames on) chosen by
        the evidence (see :meth:`fit`); l_max 6 and sigma 0.5 with
        ``hyperparameters="fixed"``.
    kernel : gpal.kernels kernel, optional
        Kernel between environments, used as given (its ζ and signal variance are not
        changed by :meth:`fit`). Default: ``NormalizedDotProduct(zeta)`` with ζ among
        :data:`ZETA_CANDIDATES` (2, 3, 4) and its signal variance chosen by the evidence
        (``hyperparameters="evidence"``), or ``NormalizedDotProduct(zeta=4)``
        (``hyperparameters="fixed"``).
    energy_noise : float or None, default None
        Energy noise per atom, eV/atom; a frame of N atoms gets ``energy_noise*sqrt(N)``.
        ``None``: chosen by the evidence within :data:`NOISE_BOUNDS` (from 0.002), or
        0.002 with ``hyperparameters="fixed"``. A number is kept as given.
    force_noise : float or None, default None
        Force-component noise, eV/Å (``None``: as above, from 0.05).
    stress_noise : float or None, default None
        Stress noise, eV/Å^3, of the diagonal components; the shear components get it
        over sqrt(2) (:meth:`stress_label_noise`: the fit does not depend on the cell's
        orientation). ``None``: as above, from 0.005.
    force_noise_knee : float, "auto" or None, default None
        A force noise that grows with the force: the components of an atom whose
        label force has magnitude ``|F_i|`` get the noise
        ``force_noise * sqrt(1 + (|F_i| / knee)²)`` (eV/Å), constant for small forces
        and proportional to the force beyond the knee. ``"auto"``: the RMS atomic
        force magnitude of the training labels, set by :meth:`fit` and kept by
        :meth:`update` (``force_noise_knee_``). None: one noise for every
        component. The std of a new label (calibration) uses the predicted force.
        Measured (held-out force RMSE, eV/Å, same frames and settings otherwise): the
        53 labels of an ethanol active-learning run (GFN2-xTB, 300-800 K), whose
        single fitted force noise was set by their largest forces (0.057 against 0.029
        for evenly spaced MD frames), 0.070 -> 0.064 with ``"auto"``; but evenly spaced
        MD frames of a Pt vacancy 0.0011 -> 0.0013 and of a CuNi alloy 0.0088 ->
        0.0093, and in the active-learning loop no consistent gain (Pt vacancy worse on
        all three seeds). The evidence prefers ``"auto"`` on all of these, so it is not
        chosen by the evidence and stays opt-in.
    hyperparameters : {"evidence", "fixed"}, default "evidence"
        ``"evidence"``: :meth:`fit` chooses what the user left unset (``kernel=None``:
        ζ and the signal variance; a noise ``None``: that noise) by maximising the log
        marginal likelihood of the training data (type-II maximum likelihood; see
        :meth:`select_hyperparameters`). ``"fixed"``: nothing is chosen; unset values
        take gpal's earlier defaults (ζ = 4, signal variance 1, noises 0.002, 0.05,
        0.005), i.e. the behaviour of gpal before the evidence became the default.
    n_sparse : int or dict, default 200
        Number of sparse environments: a total shared between species in proportion to
        their numbers of environments, except that every species present gets at least
        ``ceil(n_sparse / (2 n_species))`` (a rare species would otherwise get a handful
        and its forces stay poor), which can take the total above ``n_sparse`` (ethanol,
        ``n_sparse=200``: 34 O, 44 C, 133 H); each species at most its environments. Or
        ``{species: count}``, species by symbol or atomic number.
    sparse_selection : {"fps", "random", "cur"}, default "fps"
        How the sparse environments are chosen from the training environments
        (farthest-point sampling in cosine distance, per species).
    e0 : "fit" or dict, default "fit"
        Per-species baseline energies (eV): fitted by least squares to the training
        energies, or given as ``{symbol or Z: value}`` (missing species get 0).
    min_distance : float, default 0.5
        Atoms closer than this (Å) raise :class:`gpal.OverlappingAtomsError`.
    jitter : float, default 1e-8
        Relative jitter added to the diagonal of K_mm.
    random_state : int, Generator or None, default 0
        Seed for sparse selection.
    memory_budget_gb : float or None, default None
        Memory (GB) the fit may hold in observation rows: the stacked matrix is built
        and factorised in blocks of at most 1/8 of it, and the ``n_obs x n_sparse``
        kernel rows are kept (for cheap sparse-set updates, leave-one-out residuals
        and likelihood gradients) only while they take at most half of it; beyond that
        they are recomputed frame by frame when needed. ``None``:
        :data:`DEFAULT_MEMORY_BUDGET_GB`. The descriptors of the training frames, one
        frame's SOAP derivatives and O(n_sparse²) factors come on top. The evidence
        (``hyperparameters="evidence"``) keeps every candidate kernel's rows within the
        same half, else only per-group whitened sums (n_groups x n_sparse² floats per
        candidate) and then refits the chosen one in a second pass over the frames.
    baseline : str, dict, OracleSpec, ASE calculator or None, default None
        Δ-learning: a cheap model under the GP, as ``"module:Name"`` with
        ``baseline_kwargs`` (e.g. ``"tblite.ase:TBLite"`` with ``{"method": "GFN1-xTB"}``)
        or a live ASE calculator. The GP fits the labels minus the
        baseline and :meth:`predict` returns baseline + GP for energy, forces and stress;
        the stds are the GP's. See :mod:`gpal.baseline`.
    baseline_kwargs : dict or None, default None
        Keyword arguments of a baseline given as ``"module:Name"``.

    Attributes
    ----------
    descriptor_, kernel_ : the fitted descriptor and kernel.
    zeta_ : int or None, the exponent of the fitted dot-product kernel.
    noise_ : dict, the noise levels in use (energy eV/atom, force eV/Å, stress eV/Å^3).
    evidence_ : list of dict or None
        The candidates weighed by the evidence in the last :meth:`fit` or
        :meth:`select_hyperparameters` (None if nothing was chosen): ``zeta``,
        ``l_max``, ``sigma``, ``signal_variance``, ``noise`` and
        ``log_marginal_likelihood`` of each at its optimum on its ``n_frames`` (the
        ranking frames), and ``selected`` (True for the one in use). When the winner
        was refitted (on all frames, or on its own sparse environments), its entry
        holds the refitted values and ``ranking_log_marginal_likelihood``.
    log_marginal_likelihood_value_ : float, the log evidence of the fitted model (set
        when hyperparameters were chosen or optimised).
    sparse_X_ : ndarray of shape (n_sparse, n_features)
    sparse_species_ : ndarray of shape (n_sparse,)
    alpha_ : ndarray of shape (n_sparse,)
    e0_ : dict mapping atomic number to baseline energy (eV).
    frames_ : list of ase.Atoms, the training frames with their labels.
    solver_ : gpal.sparse_gp.SparseGPSolver
    calibration_ : dict, std scale factors and conformal quantiles set by
        :meth:`set_calibration` (see gpal.calibration).
    baseline_ : ASE calculator or None, the Δ-model's baseline in use. With a baseline,
        ``frames_`` hold the residual labels (oracle − baseline) that the GP fits.

    Examples
    --------
    >>> model = SparseGP(n_sparse=100).fit(frames)             # doctest: +SKIP
    >>> res = model.predict(atoms, return_std=True)            # doctest: +SKIP
    >>> res["energy"], res["forces"].shape, res["energies_std"].shape  # doctest: +SKIP
    """

    def __init__(
        self,
        descriptor: Descriptor | None = None,
        kernel: Kernel | None = None,
        *,
        energy_noise: float | None = None,
        force_noise: float | None = None,
        stress_noise: float | None = None,
        n_sparse: int | dict = 200,
        sparse_selection: str = "fps",
        e0: str | dict = "fit",
        min_distance: float = DEFAULT_MIN_DISTANCE,
        jitter: float = 1e-8,
        random_state: int | np.random.Generator | None = 0,
        hyperparameters: str = "evidence",
        memory_budget_gb: float | None = None,
        baseline: str | dict | None = None,
        baseline_kwargs: dict | None = None,
        force_noise_knee: float | str | None = None,
    ):
        self.descriptor = descriptor
        self.kernel = kernel
        self.energy_noise = energy_noise
        self.force_noise = force_noise
        self.stress_noise = stress_noise
        self.n_sparse = n_sparse
        self.sparse_selection = sparse_selection
        self.e0 = e0
        self.min_distance = min_distance
        self.jitter = jitter
        self.random_state = random_state
        self.hyperparameters = hyperparameters
        self.memory_budget_gb = memory_budget_gb
        self.baseline = baseline
        self.baseline_kwargs = baseline_kwargs
        self.force_noise_knee = force_noise_knee

    def __sklearn_is_fitted__(self) -> bool:
        """For ``sklearn.utils.validation.check_is_fitted``: ``alpha_`` exists once fitted (a
        model that failed in ``fit`` may hold it as None)."""
        return getattr(self, "alpha_", None) is not None

    # ------------------------------------------------------------------ params
    # get_params / set_params / clone: scikit-learn's BaseEstimator (constructor arguments;
    # nested ``descriptor__r_cut``, ``kernel__zeta`` with deep=True)

    def set_params(self, **params):
        """scikit-learn's ``set_params``; a nested ``descriptor__*`` or ``kernel__*`` key of
        a model whose descriptor or kernel is None (chosen from the data at fit) is a
        ValueError that names what to give instead (sklearn's own error was an
        AttributeError of NoneType)."""
        for key in params:
            outer, sep, inner = key.partition("__")
            if sep and outer in ("descriptor", "kernel") and outer not in params and getattr(self, outer) is None:
                example = ("descriptor=gpal.SOAP(species=[...], r_cut=5.0, n_max=8, l_max=6)" if outer == "descriptor"
                           else "kernel=gpal.NormalizedDotProduct(zeta=2)")
                raise ValueError(f"cannot set {key}: this model's {outer} is None (fit chooses it from the "
                                 f"data); give one ({example}) and vary it, or put whole {outer} objects in "
                                 "the grid")
        return super().set_params(**params)

    def __repr__(self) -> str:
        fitted = self.__sklearn_is_fitted__()

        def noise(name):
            if fitted:
                return f"{self.noise_[name]:.3g}"
            given = getattr(self, name + "_noise")
            if given is None:
                return "auto" if self.hyperparameters == "evidence" else f"{DEFAULT_NOISE[name]:.3g}"
            return f"{given:.3g}" if isinstance(given, (int, float, np.number)) else repr(given)  # (fit refuses it)

        kernel = self.kernel_ if fitted else (
            "auto" if self.kernel is None and self.hyperparameters == "evidence" else self.kernel)
        tail = ""
        if fitted:
            tail = f", fitted: {len(self.frames_)} frames, {len(self.alpha_)} sparse"
            table = getattr(self, "evidence_", None)
            if table:
                several_l = len({r.get("l_max") for r in table}) > 1
                several_s = len({r.get("sigma") for r in table}) > 1

                def lml(r):  # the value the candidates were ranked by
                    return r.get("ranking_log_marginal_likelihood", r["log_marginal_likelihood"])

                ranked = min(r.get("n_frames", len(self.frames_)) for r in table)
                tail += ", chosen by evidence (log evidence" + (
                    f" on {ranked} of {len(self.frames_)} frames" if ranked != len(self.frames_) else "") + " " + ", ".join(
                    f"ζ={r['zeta']}" + (f" l_max={r['l_max']}" if several_l else "")
                    + (f" sigma={r['sigma']:g}" if several_s else "")
                    + f": {lml(r):.1f}" + ("*" if r.get("selected") else "") for r in table) + ")"
        # the other settings given, where they are not the defaults (a Δ-model, another
        # descriptor or n_sparse printed as the plain model did)
        defaults = {k: p.default for k, p in inspect.signature(type(self).__init__).parameters.items()
                    if p.default is not inspect.Parameter.empty}
        given = "".join(
            f", {k}={getattr(self, k)!r}" for k in defaults
            if k not in ("kernel", "energy_noise", "force_noise", "stress_noise")
            and not _same_setting(getattr(self, k, defaults[k]), defaults[k]))
        return (
            f"SparseGP(kernel={kernel if isinstance(kernel, str) else repr(kernel)}, energy_noise={noise('energy')}, "
            f"force_noise={noise('force')}, stress_noise={noise('stress')}{given}{tail})"
        )

    def __getstate__(self) -> dict:
        """For pickle and ``copy.deepcopy``: a live baseline calculator that has computed
        is replaced by a new one of the same class and settings, without results
        (:func:`gpal.baseline.without_results`); a deep copy of a Δ-model failed after its
        first prediction."""
        state = dict(super().__getstate__())  # (object's is the model's own __dict__)
        state.pop("_warned_periodic", None)  # (a copy in another session warns again)
        new = {}  # (the parameter and the fitted baseline are often one object: kept one)
        for key in ("baseline", "baseline_"):
            calc = state.get(key)
            if calc is None or isinstance(calc, (str, dict)) or not hasattr(calc, "get_potential_energy"):
                continue
            if id(calc) not in new:
                new[id(calc)] = _baseline.without_results(calc)
            state[key] = new[id(calc)]
        return state

    def __sklearn_clone__(self):
        """scikit-learn's ``clone`` (GridSearchCV, cross_val_score): a live baseline that
        has computed is given to the clone as a new one of its class and settings
        (``clone`` deep-copies each parameter, which failed on tblite's library state),
        as :meth:`__getstate__` does for copies."""
        calc = self.baseline
        swap = calc if calc is None or isinstance(calc, (str, dict)) else _baseline.without_results(calc)
        if swap is calc:
            return super().__sklearn_clone__()
        twin = object.__new__(type(self))  # (cloned in its place: the model is not touched,
        twin.__dict__ = {**self.__dict__, "baseline": swap}  # so no other thread sees the swap)
        return BaseEstimator.__sklearn_clone__(twin)

    # ------------------------------------------------------------------ fit
    @property
    def species_(self) -> np.ndarray:
        return np.asarray(self.descriptor_.species_numbers_, dtype=np.int64)

    def _check(self, atoms, what="atoms"):
        periodic = self.descriptor_.periodic
        check_atoms(atoms, species=self.species_, periodic=periodic, what=what)
        if not periodic and atoms.pbc.any() and not self.__dict__.get("_warned_periodic"):
            self._warned_periodic = True  # (once per model: every MD step would repeat it)
            warnings.warn(
                "the model's descriptor has periodic=False: the periodic boundaries of these "
                "atoms are ignored and they are evaluated as an isolated cluster (a descriptor "
                "with periodic=True respects each structure's pbc)",
                UserWarning,
                stacklevel=user_stacklevel(),
            )

    def _warn_zero_descriptors(self, X) -> None:
        """Warn, once per model, of atoms whose descriptor is all zero: with a weighting of
        ``w0 = 0`` (the centre left out) an atom without neighbours within the cutoff has
        none, and the kernel gives it the energy e0 with a std of 0, as if it were known.
        Looked for only with such a weighting (a scan of X each prediction otherwise)."""
        w = getattr(self.descriptor_, "weighting", None)
        if not (isinstance(w, dict) and w.get("w0") == 0) or self.__dict__.get("_warned_zero_rows"):
            return
        n = int(np.count_nonzero(~np.asarray(X).any(axis=1)))
        if n:
            self._warned_zero_rows = True
            warnings.warn(
                f"{n} atom(s) have no neighbour within the cutoff and, with weighting w0 = 0, an "
                "all-zero descriptor: the model gives them the reference energy e0 with a std of "
                "0, although nothing like them was learned (give w0 > 0 to describe isolated "
                "atoms, or e0 as the isolated atoms' energies)", UserWarning, stacklevel=user_stacklevel())

    def _check_descriptor_unchanged(self) -> None:
        """A ValueError when the fitted descriptor's features no longer match the sparse
        points' (``model.descriptor_.l_max = 3`` after the fit: the kernel's shape error
        said nothing of why)."""
        features = getattr(self.descriptor_, "get_number_of_features", None)  # (a plugin may not say)
        n = features() if features is not None else self.sparse_X_.shape[1]
        if n != self.sparse_X_.shape[1]:
            raise ValueError(
                f"the model's descriptor gives {n} features and its sparse points have "
                f"{self.sparse_X_.shape[1]}: the fitted descriptor (model.descriptor_) was changed "
                "after the fit; set descriptor settings with set_params(descriptor__...) and fit again")

    def _warn_unlearned_species(self, atoms, scores: bool = False) -> None:
        """Warn, once per model and species, of atoms whose species the descriptor knows
        but the sparse set does not: nothing of theirs is learned (a SOAP listing Ag, no
        Ag in training: an Ag atom's force 0.018 eV/Å against the oracle's 4.6, its force
        std 0.02, only its novelty of 1 and the prior energy std said so)."""
        zsp = getattr(self, "sparse_species_", None)
        if zsp is None:
            return
        cache = getattr(self, "_sparse_set_species", None)
        if cache is None or cache[0] is not zsp:
            held = {int(z) for z in np.unique(zsp)}
            # (the common case, every species of the descriptor held: nothing to look at per call)
            cache = (zsp, held, {False: set(), True: set()}, held.issuperset(int(z) for z in self.species_))
            self._sparse_set_species = cache
        if cache[3]:
            return
        missing = {int(z) for z in np.unique(atoms.numbers)} - cache[1] - cache[2][scores]
        if missing:
            cache[2][scores].update(missing)
            names = ", ".join(chemical_symbols[z] for z in sorted(missing))
            what = ("select_frames scores its environments 0 (no projected variance); add them to the sparse "
                    "set first (update with these frames) if they should count" if scores else
                    "its local energies are its e0 and its forces are not learned, and the force stds do not "
                    "show it (its novelty is 1, its energies_std the prior)")
            warnings.warn(f"{names}: no sparse environment of this species in the model (no training data of "
                          f"it): {what}", UserWarning, stacklevel=user_stacklevel())

    def _check_params(self) -> None:
        """Raise ``ValueError`` (one line) for a constructor argument :meth:`fit` cannot use.

        Called by :meth:`fit`, and by an active learner before its first oracle call, so
        a bad setting never costs a label.
        """
        if self.descriptor is not None and not isinstance(self.descriptor, Descriptor):
            hint = (f" (the first positional argument is the descriptor: SparseGP(n_sparse={self.descriptor!r}))"
                    if isinstance(self.descriptor, (int, np.integer)) else "")
            raise TypeError(f"descriptor must be a gpal descriptor such as gpal.SOAP(...) or None, "
                            f"got {type(self.descriptor).__name__} {self.descriptor!r}{hint}")
        if self.kernel is not None and not isinstance(self.kernel, Kernel):
            raise TypeError(f"kernel must be a gpal kernel such as gpal.NormalizedDotProduct(zeta=4) or "
                            f"None, got {type(self.kernel).__name__} {self.kernel!r}")
        if self.sparse_selection not in _SPARSE_SELECTIONS:
            raise ValueError(
                f"Invalid sparse_selection {self.sparse_selection!r}; "
                f"choose from {_SPARSE_SELECTIONS}"
            )
        if not (self.random_state is None or isinstance(self.random_state, np.random.Generator)):
            check_number("random_state", self.random_state, low=0, integer=True, none=True)
        _baseline.check_baseline(self.baseline, self.baseline_kwargs)
        if self.hyperparameters not in _HYPERPARAMETER_MODES:
            raise ValueError(
                f"Invalid hyperparameters {self.hyperparameters!r}; choose from "
                f"{_HYPERPARAMETER_MODES}"
            )
        # above these no label says anything: a noise in meV (force_noise = 50) fails here
        for name, unit, most in (("energy_noise", "eV/atom", 1.0), ("force_noise", "eV/Å", 5.0),
                                 ("stress_noise", "eV/Å^3", 1.0)):
            value = check_number(name, getattr(self, name), low=0, strict=True, none=True)
            if value is not None and value > most:
                raise ValueError(f"{name} = {value:g} {unit} is above {most:g} {unit}, larger than the labels "
                                 f"themselves; it is in {unit} (e.g. 50 meV is 0.05)")
            # far below the evidence's own floor: the fit must reproduce the labels to that
            # (force_noise=1e-8 took the other hyperparameters to their bounds: energies 0.56
            # eV/atom off, unsaid)
            floor = NOISE_BOUNDS[name.split("_")[0]][0]
            if value is not None and value < 0.01 * floor and not self.__dict__.get(f"_warned_tiny_{name}"):
                self.__dict__[f"_warned_tiny_{name}"] = True
                warnings.warn(f"{name} = {value:g} {unit} is far below any oracle's precision (the evidence "
                              f"never goes below {floor:g}): the fit must reproduce the labels to that, which "
                              "can drive the other hyperparameters to their bounds and the stds to nothing; "
                              "give about the labels' precision", UserWarning, stacklevel=user_stacklevel())
        self._budget_bytes()  # a bad memory_budget_gb
        if isinstance(self.n_sparse, dict):
            for key, size in self.n_sparse.items():
                species_number(key, "n_sparse")
                check_number(f"n_sparse[{key!r}]", size, low=1, integer=True)
        else:
            check_number("n_sparse", self.n_sparse, low=1, integer=True)
        if isinstance(self.e0, dict):
            for key, val in self.e0.items():
                species_number(key, "e0")
                check_number(f"e0[{key!r}]", val, unit="eV")
        elif not (isinstance(self.e0, str) and self.e0 == "fit"):
            raise ValueError(f"e0 must be 'fit' or a dict {{species: eV}}, got {self.e0!r}")
        check_number("min_distance", self.min_distance, low=0, unit="Å")
        check_number("jitter", self.jitter, low=0)
        knee = self.force_noise_knee
        if not (knee is None or (isinstance(knee, str) and knee == "auto") or (
                isinstance(knee, (int, float, np.floating)) and not isinstance(knee, bool) and knee > 0)):
            raise ValueError(f"force_noise_knee must be > 0 (eV/Å), 'auto' or None, got {knee!r}")

    @_thread_policy(_fit_size)
    @restoring
    def fit(self, frames: Sequence[Atoms], y: None = None, *, progress: bool = False) -> "SparseGP":
        """Fit to labelled frames.

        Parameters
        ----------
        frames : list of ase.Atoms
            Each with at least one of energy, forces or stress, as ``ase.io.read``
            returns them from an extxyz file (or with a finished calculator attached).
            Molecules simply carry no stress.
        y : None
            Unused: the labels are in the frames (scikit-learn's ``fit(X, y)``, so that
            ``cross_val_score`` and ``GridSearchCV`` can call it).
        progress : bool, default False
            Progress bars (tqdm, on stderr) over the passes through the frames: the
            descriptors, each ranking of the evidence's candidates, the kernel rows.

        Returns
        -------
        self

        Warns
        -----
        UserWarning
            A chosen noise or signal variance sits at a bound of its range.

        Notes
        -----
        With ``hyperparameters="evidence"``, what the user left unset is chosen by the
        maximised log marginal likelihood of these frames (type-II maximum likelihood,
        no validation data): for each candidate, its signal variance and the unset
        noises are maximised, and the candidate with the largest evidence wins.
        Candidates: ζ among :data:`ZETA_CANDIDATES` (``kernel=None``) × SOAP l_max
        among :data:`L_MAX_CANDIDATES` at sigma 0.5 (``descriptor=None``), then, at the
        l_max chosen there, the other widths of :data:`SIGMA_CANDIDATES` × ζ. The
        sparse environments are picked (``sparse_selection``) with the 0.5 Å, l_max 6
        SOAP and described by each candidate's SOAP. With more than 2 labels per sparse
        point, candidates are ranked on evenly spaced frames holding 2 per sparse point;
        the winner then picks its own sparse environments (as
        ``SparseGP(descriptor=winner)`` would) and is fitted to all frames. The
        candidates and their evidence are in ``evidence_``. With fewer than 10 frames
        (an active learner's bootstrap) the width stays 0.5 Å and ζ × l_max are ranked
        on all frames with the fitted sparse environments: there the evidence of a
        descriptor change rests on too few labels (on a 4-frame Pt bootstrap it took
        sigma 0.3 with the force noise at its bound and the loop never labelled).
        Cost at 20 frames (benchmarks/bench_defaults.py): 0.9-3.0x a fit with fixed
        hyperparameters.
        """
        if y is not None:
            raise TypeError("SparseGP.fit takes the labels from the frames (energy, forces, stress); "
                            f"y must be None, got {type(y).__name__}")
        # (a fit that fails, bad frames or an interrupt, leaves the model as it was:
        # gpal.model._atomic; an old alpha_ with a new e0_ had predicted 304 eV for a 0.73
        # eV frame)
        self._fit_progress = bool(progress)
        try:
            return self._fit_frames(frames)
        finally:
            self._fit_progress = False

    def _fit_frames(self, frames) -> "SparseGP":
        """The work of :meth:`fit`."""
        self._check_params()
        if isinstance(frames, Atoms):
            warnings.warn("fit got one ase.Atoms, not a list: fitting 1 frame (ase.io.read(path) reads "
                          "the last frame of a file; ase.io.read(path, \":\") reads all)",
                          UserWarning, stacklevel=user_stacklevel())
        frames = check_frames(frames)
        # a copy, as for the kernel: a later change to the user's descriptor object (or a
        # set_params of its parameters) must not change this fitted model
        self.descriptor_ = clone(self.descriptor) if self.descriptor is not None else (
            default_descriptor(frames)
        )
        self.kernel_ = (self.kernel if self.kernel is not None else NormalizedDotProduct(zeta=4)).clone()
        if isinstance(self.descriptor_, SOAP) and self.descriptor_.weighting is None:
            d = self.descriptor_
            warnings.warn(
                f"the descriptor has no weighting: a neighbour counts until its Gaussian has decayed to "
                f"1e-3, at {d.cutoff_:.2f} Å (r_cut + {(d.cutoff_ - d.r_cut) / d.sigma:.1f} sigma), and is "
                "dropped there abruptly, so energies and forces jump when an atom crosses it (1.5 meV/atom "
                "in fcc Cu): weighting={'function': 'poly', 'r0': r_cut, 'c': 1, 'm': 1} (gpal's default "
                "descriptor) takes every neighbour smoothly to zero at r_cut", UserWarning,
                stacklevel=user_stacklevel())
        self.evidence_ = None
        self.__dict__.pop("log_marginal_likelihood_value_", None)  # a previous fit's choice
        self.__dict__.pop("_e0_seen", None)  # (update's record of the frames seen so far)
        labels = [frame_labels(a) for a in frames]
        for k, a in enumerate(frames):
            self._check(a, what=f"frames[{k}]")
            frame_temperature(a, what=f"frames[{k}]")
        self.baseline_ = _baseline.make_baseline(self.baseline, self.baseline_kwargs)
        self._baseline_fitted = _baseline_fitted(self.baseline, self.baseline_kwargs)
        warn_implausible_labels(frames, labels)
        labels = self._minus_baseline(frames, labels, check=True)
        self.frames_ = [_labelled_copy(a, lab) for a, lab in zip(frames, labels)]
        self.force_noise_knee_ = self._fit_knee(labels)
        self.noise_ = {
            g: float(DEFAULT_NOISE[g] if getattr(self, g + "_noise") is None
                     else getattr(self, g + "_noise"))
            for g in _GROUP_NAMES
        }
        self.e0_ = self._fit_e0(self.frames_)
        self.calibration_ = {}
        seen = {int(z) for a in self.frames_ for z in np.unique(a.numbers)}
        unseen = [chemical_symbols[int(z)] for z in self.species_ if int(z) not in seen]
        if unseen:
            warnings.warn(
                f"species {', '.join(unseen)} are in the descriptor but in no training frame: "
                "their local energies are the prior (zero, with baseline e0 = 0) until frames "
                "containing them are added",
                UserWarning,
                stacklevel=user_stacklevel(),
            )

        X_list = [self.descriptor_.create(a) for a in self._bar(self.frames_, "descriptors", len(self.frames_))]
        for a, X in zip(self.frames_, X_list):
            check_min_distance(self._min_pair_distance(a), self.min_distance, "training frame")
        Z, zsp, where = self._select_sparse(
            X_list, [a.numbers for a in self.frames_], self.n_sparse, self.sparse_selection,
            return_index=True,
        )
        del X_list  # the kernel rows recompute descriptors frame by frame
        self.sparse_X_ = Z
        self.sparse_species_ = zsp
        if self.hyperparameters == "evidence" and (
                self._free_hyperparameters() or self.descriptor is None):
            default = self.descriptor is None
            # the SOAP width, the ranking on a subset of frames and the winner's own
            # sparse environments only from _MIN_FRAMES_DESCRIPTOR_SEARCH frames on
            search = len(self.frames_) >= _MIN_FRAMES_DESCRIPTOR_SEARCH
            self._choose_hyperparameters(
                zetas=getattr(self, "_zetas", None),  # (select_kernel_by_evidence: one ζ per candidate)
                l_maxes=L_MAX_CANDIDATES if default else None,
                sigmas=SIGMA_CANDIDATES if default and search else None, sparse_index=where,
                search=search, warn_stacklevel=5)
            if self.force_noise is None:
                self._warn_unexplained_forces(labels)
            return self
        self._fit_solver(self._k_mm(Z, zsp))
        return self

    def _warn_unexplained_forces(self, labels) -> None:
        """Warn when the evidence puts the force noise above :data:`UNEXPLAINED_FORCE_SHARE`
        of the labels' RMS force component (from 8 frames with forces): the model leaves much of the forces
        unexplained. ``n_sparse=2`` on ten 32-atom Cu frames fitted 0.49 eV/Å against an
        RMS of 1.06 and predicted forces no better than zero, with no word; the learner's
        own check (its runs: at most 0.29 over 127 benchmark runs) waits for 16 labels."""
        F = [lab.forces for lab in labels if lab.forces is not None]
        if len(F) < 8:
            return
        rms = float(np.sqrt(np.mean(np.concatenate([f.ravel() for f in F]) ** 2)))
        start = unexplained_forces(float(self.noise_.get("force", 0.0)), rms)
        if start is None:
            return
        n_env = sum(len(a) for a in self.frames_)
        warnings.warn(
            f"{start} ({len(self.sparse_X_)} sparse points for {n_env} environments: too few? a descriptor too "
            "coarse for these labels; labels beyond a local model of this cutoff; energies and forces in "
            "other units)", UserWarning, stacklevel=user_stacklevel())

    # ------------------------------------------------------------------ memory
    def _budget_bytes(self) -> float:
        gb = DEFAULT_MEMORY_BUDGET_GB if self.memory_budget_gb is None else self.memory_budget_gb
        try:
            gb = float(gb)
        except (TypeError, ValueError):
            raise ValueError(f"memory_budget_gb must be a number > 0 or None, got {gb!r}") from None
        if not (np.isfinite(gb) and gb > 0):
            raise ValueError(f"memory_budget_gb must be a number > 0 or None, got {gb!r}")
        return gb * 1e9

    def _keep_rows_fits(self, n_obs: int, n_sparse: int) -> bool:
        """Whether ``n_obs x n_sparse`` kernel rows fit in half of the memory budget."""
        return 8.0 * n_obs * n_sparse <= 0.5 * self._budget_bytes()

    def _enforce_budget(self) -> None:
        sol = self.solver_
        if sol.keep_rows_ and not self._keep_rows_fits(sol.n_obs_, sol.n_sparse_):
            log.info("observation rows (%d x %d) exceed half the memory budget: not kept",
                     sol.n_obs_, sol.n_sparse_)
            sol.drop_rows()

    def _frame_slices(self) -> list[slice]:
        """Observation rows of each training frame (contiguous, in frame order)."""
        f = self.obs_frame_
        nf = len(self.frames_)
        lo = np.searchsorted(f, np.arange(nf), side="left")
        hi = np.searchsorted(f, np.arange(nf), side="right")
        return [slice(int(a), int(b)) for a, b in zip(lo, hi)]

    def _fit_solver(self, K_mm) -> None:
        """Factorise the training frames' observations, in blocks within the memory budget.

        The kernel rows of one frame at a time are appended to a block; a block of at
        most 1/8 of the budget (at least one frame) is folded into the QR factor
        (:meth:`SparseGPSolver.fit_blocks`). When everything fits in one block the
        stacked matrix is factorised at once, as :meth:`SparseGPSolver.fit` does.
        """
        Z, zsp = self.sparse_X_, self.sparse_species_
        M = len(Z)
        targets = [self._frame_targets(a) for a in self.frames_]
        ys, noises, groups, fidx = [], [], [], []
        for k, tg in enumerate(targets):
            for group, y, noise in tg:
                ys.append(y)
                noises.append(noise)
                groups.append(np.full(len(y), group, dtype=np.int64))
                fidx.append(np.full(len(y), k, dtype=np.int64))
        y, noise = np.concatenate(ys), np.concatenate(noises)
        self.obs_group_, self.obs_frame_ = np.concatenate(groups), np.concatenate(fidx)
        n = len(y)
        block_bytes = self._budget_bytes() / 8.0
        keep = self._keep_rows_fits(n, M)
        solver = SparseGPSolver()
        if 8.0 * n * (M + 1) <= block_bytes:
            solver.fit(K_mm, self._stacked_rows(self.frames_, Z, zsp), y, noise, jitter=self.jitter)
            if not keep:
                solver.drop_rows()
        else:
            slices = self._frame_slices()
            block_rows = max(int(block_bytes // (8.0 * (M + 1))), 1)

            def blocks():
                rows, start, count = [], 0, 0
                for b, a in enumerate(self.frames_):
                    rows.append(self._stacked_rows([a], Z, zsp))
                    count += len(rows[-1])
                    if count >= block_rows or b == len(self.frames_) - 1:
                        stop = slices[b].stop
                        yield np.concatenate(rows), y[start:stop], noise[start:stop]
                        rows, start, count = [], stop, 0

            solver.fit_blocks(K_mm, blocks(), jitter=self.jitter, keep_rows=keep)
        self.solver_ = solver
        self.alpha_ = solver.alpha_

    @property
    def zeta_(self):
        """Exponent ζ of the fitted dot-product kernel (None for other kernels)."""
        check_is_fitted(self)
        return int(self.kernel_.zeta) if isinstance(self.kernel_, NormalizedDotProduct) else None

    def _min_pair_distance(self, atoms) -> np.ndarray:
        from ..descriptors.neighbors import neighbor_list

        _, _, D = neighbor_list(
            atoms.positions, atoms.cell.array, atoms.pbc, max(self.min_distance, 1e-3)
        )
        return np.linalg.norm(D, axis=1)

    def _fit_e0(self, frames) -> dict:
        species = self.species_
        if isinstance(self.e0, dict):
            e0 = {int(z): 0.0 for z in species}
            for key, val in self.e0.items():
                z = species_number(key, "e0")
                if z not in e0:
                    raise ValueError(f"e0 given for species {key!r} not in the model")
                e0[z] = float(val)
            return e0
        if self.e0 != "fit":
            raise ValueError(f"e0 must be 'fit' or a dict, got {self.e0!r}")
        rows, energies = [], []
        for a in frames:
            lab = frame_labels(a)
            if lab.energy is None:
                continue
            rows.append([np.count_nonzero(a.numbers == z) for z in species])
            energies.append(lab.energy)
        if not rows:
            return {int(z): 0.0 for z in species}
        coef, *_ = np.linalg.lstsq(np.array(rows, float), np.array(energies), rcond=None)
        return {int(z): float(c) for z, c in zip(species, coef)}

    def _e0_unfitted(self, new_frames) -> bool:
        """Whether ``new_frames`` bring energy labels of a species whose fitted reference
        energy (``e0="fit"``) has none yet: no stored frame with an energy label holds it.

        The species of the stored energy-labelled frames are kept (``_e0_seen``: the
        frame count they cover and the set), so a call looks at the new frames only.
        """
        if not (isinstance(self.e0, str) and self.e0 == "fit"):
            return False
        cache = getattr(self, "_e0_seen", None)
        if cache is None or cache[0] != len(self.frames_):
            cache = (0, frozenset())
        seen = set(cache[1])
        for a in self.frames_[cache[0]:]:
            if frame_labels(a).energy is not None:
                seen.update(int(z) for z in np.unique(a.numbers))
        labelled = [{int(z) for z in np.unique(a.numbers)} for a in new_frames
                    if frame_labels(a).energy is not None]
        self._e0_seen = (len(self.frames_) + len(new_frames), frozenset(seen.union(*labelled)))
        return any(not z <= seen for z in labelled)

    def _composition_state(self) -> dict | None:
        """What :meth:`_check_composition` knows of the energy-labelled training frames'
        compositions: ``comps`` (a set of per-species count tuples), ``null`` (k,
        n_species) the count directions they leave undetermined (rows of the
        composition matrix's null space) or None, ``ok`` the verdict per composition
        asked, ``warned`` the compositions warned. None when every composition is
        determined by construction (``e0`` given, one species).

        Extended over the frames added since the last call (``update``), rebuilt when
        the frames were replaced (``fit``, ``load``): a call reads only new frames.
        """
        if not (isinstance(self.e0, str) and self.e0 == "fit") or len(self.species_) < 2:
            return None
        fr = self.frames_
        st = self.__dict__.get("_comp_state")
        if st is None or st["species"] is not self.species_ or not self._frames_extend(st["n"], st["last"]):
            st = {"species": self.species_, "n": 0, "last": None, "comps": set(), "null": None,
                  "ok": {}, "warned": set()}
            self._comp_state = st
        if st["n"] != len(fr):
            species = np.asarray(self.species_)
            new = {tuple(int(np.count_nonzero(a.numbers == z)) for z in species)
                   for a in fr[st["n"]:] if frame_labels(a).energy is not None}
            if not new <= st["comps"]:
                st["comps"] |= new
                A = np.array(sorted(st["comps"]), dtype=float)
                _, sv, Vt = np.linalg.svd(A)
                rank = int(np.sum(sv > 1e-10 * sv[0]))
                st["null"] = Vt[rank:] if rank < len(species) else None
                st["ok"] = {}
            st["n"], st["last"] = len(fr), fr[-1] if fr else None
        return st

    def _check_composition(self, numbers) -> None:
        """Warn (once per composition, until the next fit) when ``numbers``' composition
        is not one the training energies determine (:meth:`_composition_state`): with
        every frame of one composition (an alloy learnt at Cu:Ni 1:1) the species'
        reference energies are known only in that ratio, and a pure Cu cell's energy is
        off by as much as that split is wrong, which no std includes. About 1 µs for a
        composition seen before."""
        st = self._composition_state()
        if st is None or st["null"] is None:
            return
        counts = np.bincount(numbers)
        key = counts.tobytes()
        ok = st["ok"].get(key)
        if ok is None:
            species = np.asarray(st["species"])
            c = np.array([counts[z] if z < len(counts) else 0 for z in species], dtype=float)
            ok = bool(np.abs(st["null"] @ c).max() <= 1e-8 * max(c.sum(), 1.0))
            st["ok"][key] = ok
        if ok or key in st["warned"]:
            return
        st["warned"].add(key)
        from ase.data import chemical_symbols

        species = np.asarray(st["species"])

        def formula(comp):
            return "".join(f"{chemical_symbols[z]}{int(n)}" for z, n in zip(species, comp) if n)

        comps = sorted(st["comps"])
        shown = ", ".join(formula(comp) for comp in comps[:3]) + (", ..." if len(comps) > 3 else "")
        here = formula([counts[z] if z < len(counts) else 0 for z in species])
        warnings.warn(f"the training energies do not determine the species' reference energies (e0) for "
                      f"the composition {here}: the energy-labelled frames have the composition(s) {shown}, "
                      "so this energy rests on an arbitrary split of e0 between the species, an error no "
                      "std includes (forces and stress are not affected); add labelled frames of other "
                      "compositions, or give e0 per species", UserWarning, stacklevel=user_stacklevel())

    def _e0_of(self, numbers) -> np.ndarray:
        table = np.zeros(max(self.e0_) + 1)
        for z, v in self.e0_.items():
            table[z] = v
        return table[numbers]

    # ------------------------------------------------------------------ predict
    @_thread_policy(lambda self, atoms=None, *a, **k: _block_size(self, atoms))
    def predict(
        self,
        atoms: Atoms,
        return_std: bool = False,
        *,
        forces_std: bool = False,
        stress_std: bool = False,
        calibrated: bool = False,
    ) -> dict[str, Any]:
        """Predict energy, forces and stress (and their uncertainties) of ``atoms``.

        Parameters
        ----------
        atoms : ase.Atoms
        return_std : bool, default False
            Also return ``energies_std`` (DTC std of each local energy, eV, shape
            (n_atoms,)), ``energy_std`` (eV; the residuals of the atoms counted as
            independent, linear in atoms, so it grows as √N for N alike environments
            where a repeated cell's error grows as N: compare it between frames of one
            size; :class:`gpal.TargetSet` gives the all-pairs std) and ``novelty``
            (n_atoms,): the fraction
            of each environment's prior variance that the sparse set does not explain,
            ``(k(x,x) - k K_mm⁻¹ kᵀ) / k(x,x)`` in [0, 1] (0: the environment is a
            sparse point; 1: unlike every sparse point of its species).
        forces_std, stress_std : bool, default False
            Also return ``forces_std`` (n_atoms, 3) eV/Å and ``stress_std`` (6,) eV/Å^3:
            the projected (SoR) std of the latent forces and stress, i.e. the part that
            labels can reduce. They need an explicit derivative pass (about the cost of
            one training frame). ``stress_std`` stays raw under ``calibrated=True``
            unless a ``stress_std`` calibration was stored with :meth:`set_calibration`
            (an active-learning run and ``gpal validate --calibrate`` calibrate forces and
            energies only), and the raw one leaves out the stress noise: on held-out NPT
            frames of a CuNi alloy its mean z² was 7 where the calibrated force std's was
            1.2.
        calibrated : bool, default False
            Report calibrated stds as stored by :meth:`set_calibration`: the raw std
            times ``scale``; for a calibration with a ``noise_scale`` (what the active
            learner stores for forces, see :class:`gpal.calibration.TwoTermCalibrator`)
            the std of a new *label*, ``sqrt((scale std)² + (noise_scale force_noise)²)``,
            which is what a prediction error against the oracle is measured against;
            with a ``novelty_scale`` also ``+ novelty_scale² min(novelty, novelty_max)``
            of the atom under the root (the error the projected std cannot see, for
            environments away from the sparse points); with ``species_scale``, all that
            times the factor of the atom's species (a species whose held-out errors
            the shared factors under- or overstate).
            When the stored force calibration has a split-conformal quantile
            (``conformal_q90``, which the active learner and ``gpal validate --calibrate`` store),
            ``forces_std=True`` also returns ``forces_interval90`` (n_atoms, 3), eV/Å:
            the half-width of the 90 % interval of each force label, ``conformal_q90``
            times the calibrated std (held-out coverage, not a Gaussian assumption).
            Stds without a stored calibration stay raw (a model without any calibration
            warns).

        Returns
        -------
        dict
            ASE keys ``energy``, ``free_energy`` (float, eV), ``energies`` (n_atoms,),
            ``forces`` (n_atoms, 3), ``stress`` (6,) when the frame is periodic in all
            three directions (none for a slab or a wire), and the ``*_std`` keys
            requested, each a non-negative std of the same shape.
        """
        check_is_fitted(self)
        self._check_descriptor_unchanged()
        self._check(atoms)
        self._warn_unlearned_species(atoms)  # (predict's own: update and growth add such species)
        numbers = atoms.numbers
        self._check_composition(numbers)
        N = len(numbers)
        Z, zsp = self.sparse_X_, self.sparse_species_
        energies = self._e0_of(numbers).astype(float)
        # a force calibration with a novelty term needs each environment's novelty
        need_novelty = (calibrated and forces_std and "forces_std" in self.calibration_
                        and self.calibration_of("forces_std").novelty_scale > 0)
        local = return_std or need_novelty
        fused = self._use_fused_step()
        if isinstance(self.kernel_, CosineKernel):
            self.kernel_._validate()  # (hyperparameters set after fit: an error, not numbers)
        if fused:
            exp, dE, kblocks = self._fused_terms(atoms, energies, keep_k=local, with_sor=return_std)
            X = exp.descriptor
        else:
            exp = self.descriptor_.expand(atoms)
            if len(exp.vector):
                check_min_distance(np.array([min_length(exp.vector)]), self.min_distance)
            X = exp.descriptor
            kblocks = []  # (atoms r, sparse columns c, K[r, c]) per species
            G = self._kernel_terms(X, numbers, energies, kblocks, 0, need_k=local, own_rows=False)
            dE = exp.backward(G)
        volume = float(exp.volume)
        has_cell = math.isfinite(volume) and volume > 0 and bool(atoms.pbc.all())
        if fused:  # pair_forces and pair_stress in one pass over the pairs
            forces, stress = _forces_and_stress(dE, exp.center, exp.neighbor, exp.vector, N, volume, has_cell)
        else:  # (a plugin descriptor's arrays, checked)
            forces = pair_forces(dE, exp.center, exp.neighbor, N)
            stress = pair_stress(dE, exp.vector, volume) if has_cell else None
        energy = float(energies.sum())
        out = {
            "energy": energy,
            "free_energy": energy,
            "energies": energies,
            "forces": forces,
        }
        if has_cell:
            out["stress"] = stress
        novelty = None
        if local:
            # DTC: k(x,x) - k K_mm^-1 k + k Sigma k
            if isinstance(kblocks, _VarianceTerms):  # (the fused path's, summed buffer by buffer)
                q, sor, sor_total = kblocks.result()
            else:
                q, sor, sor_total = self._local_variance_terms(kblocks, N, with_sor=return_std)
            std, novelty, resid_total = self._dtc_stds(X, q, sor)
            self._warn_zero_descriptors(X)
        if return_std:
            out["energies_std"] = std
            out["energy_std"] = float(np.sqrt(max(sor_total + resid_total, 0.0)))
            out["novelty"] = novelty
        if forces_std or stress_std:
            _, rowF, rowS = self._derivative_rows(atoms, Z, zsp)
            if forces_std:
                out["forces_std"] = np.sqrt(
                    np.clip(self.solver_.var_sor(rowF.reshape(3 * N, -1)), 0, None)
                ).reshape(N, 3)
            if stress_std and has_cell:
                out["stress_std"] = np.sqrt(np.clip(self.solver_.var_sor(rowS), 0, None))
        if calibrated:
            if not self.calibration_:
                warnings.warn(
                    "calibrated=True, but the model stores no calibration: the stds are the raw "
                    "ones (an active-learning run or `gpal validate --calibrate` stores one)",
                    UserWarning, stacklevel=3)  # (past the thread-policy wrapper)
            self._apply_calibration(out, novelty, numbers)
        self._plus_baseline(atoms, out)
        return out

    def _use_fused_step(self) -> bool:
        """Whether :meth:`predict` takes the fused SOAP path (:meth:`_fused_terms`).

        It covers gpal's own :class:`gpal.descriptors.SOAP` (any species, kernel,
        periodicity, weighting); a descriptor of another class (a plugin) takes the
        two-pass path, ``expand`` then ``backward``. ``self._fused_step = False`` (a
        private switch, for tests and benchmarks) forces the two-pass path.
        """
        return getattr(self, "_fused_step", _FUSED_STEP) and type(self.descriptor_) is SOAP

    def _kernel_terms(self, X, numbers, energies, kblocks, i0: int, need_k: bool = True,
                      own_rows: bool = True, k_rows=None) -> np.ndarray:
        """Kernel rows, local energies and their gradient for the atoms ``i0 : i0 + len(X)``.

        Adds the local energies to ``energies[i0:]``, appends ``(r, c, K[r, c])`` (global
        atom indices ``r``) to ``kblocks`` per species, returns ``G`` (len(X), n_features)
        = ``∂ε/∂x`` of each row. A ζ = 2 kernel takes energies and gradient from its
        quadratic form where that is cheaper (F < 2m without kernel rows, F < m with
        them). Without ``need_k`` (no local stds) ``kblocks`` stays as it is, and a ζ = 2
        kernel forms no kernel rows at all. ``own_rows``: ``X`` are gpal's SOAP rows
        (float64, C order, finite), which a cosine kernel takes without checking them
        again; a plugin descriptor's rows are checked (finite, converted to float64).
        ``k_rows(z, c, n)``, if given, may return where the kernel rows of a one-species
        block are to be written (a buffer's rows: :meth:`_VarianceTerms.rows_for`).
        """
        n = len(X)
        nums = numbers[i0:i0 + n]
        lo, hi = (int(nums.min()), int(nums.max())) if n else (0, -1)
        one = lo == hi  # one species: no row gathers or scatters
        G = None if one else np.zeros(X.shape)
        quad = self._prediction_quadratic()
        for z, (c, Zc, ac) in self._prediction_sparse_rows().items():
            if z < lo or z > hi or (one and z != lo):
                continue
            r = np.arange(n) if one else np.flatnonzero(nums == z)
            if not len(r):
                continue
            Xr = X if one else X[r]
            Kz = None
            A = quad.get(z)
            if A is not None and not need_k:
                e, Gz = self.kernel_.quadratic_terms(Xr, A)
            elif A is not None and A.shape[0] < len(c):  # F < m: cheaper with kernel rows too
                Kz, e, Gz = self.kernel_.quadratic_rows(Xr, Zc, A)
            elif isinstance(self.kernel_, CosineKernel) and own_rows:
                # prediction_terms without its checks of the rows (predict has checked the
                # kernel's hyperparameters)
                out = k_rows(z, c, n) if one and k_rows is not None else None
                Kz, e, Gz = self.kernel_._terms(np.ascontiguousarray(Xr), None, Zc, ac, K=out)
            elif isinstance(self.kernel_, CosineKernel):
                Kz, e, Gz = self.kernel_.prediction_terms(Xr, Zc, ac)
            else:
                Kz, Gz = self.kernel_.value_and_weighted_gradient(Xr, Zc, ac)
                e = Kz @ ac
            energies[i0 + r] += e
            if one:
                G = Gz
            else:
                G[r] = Gz
            if need_k:
                kblocks.append((i0 + r, c, Kz))
        if G is None:  # no sparse point of the block's species
            G = np.zeros(X.shape)
        return G

    def _fused_terms(self, atoms, energies, keep_k: bool = True, with_sor: bool = True):
        """The SOAP expansion, kernel terms and back-pass of :meth:`predict` block by block
        (:meth:`gpal.descriptors.SOAP._fused_step`): the pair terms the expansion
        computes are reused by the back-pass instead of recomputed.

        Returns ``(step, dE, terms)``. With ``keep_k`` (what the local stds need)
        ``terms`` is a :class:`_VarianceTerms` that took each block's kernel rows as the
        block was done (``with_sor``: the projected part too) into buffers of bounded
        size; when the factors are not block-diagonal by species (not for a
        gpal fit) it is the kernel blocks merged per species, as the two-pass path forms
        them for :meth:`_local_variance_terms`. Without ``keep_k``, ``[]``.
        """
        numbers = atoms.numbers
        parts = []
        acc = None
        if keep_k:
            fac = self._local_std_factors()
            if fac.blocks is not None:
                # (each block's kernel rows are used by the stds only: overwrite)
                acc = _VarianceTerms(self, fac, len(numbers), with_sor, np.bincount(numbers), overwrite=True)

        def block_gradient(i0, i1, Xb):
            if acc is None:
                return self._kernel_terms(Xb, numbers, energies, parts, i0, need_k=keep_k)
            G = self._kernel_terms(Xb, numbers, energies, parts, i0, need_k=True, k_rows=acc.rows_for)
            for r, c, Kz in parts:  # the block's rows into the bounded buffers
                acc.add(r, c, Kz)
            parts.clear()
            return G

        def check(D):
            check_min_distance(np.array([min_length(D)]), self.min_distance)

        step = self.descriptor_._fused_step(atoms, block_gradient, check, checked=True)  # (predict's _check)
        if acc is not None:
            return step, step.dE, acc
        merged = {}
        for r, c, Kz in parts:
            merged.setdefault(int(c[0]), (c, [], []))
            merged[int(c[0])][1].append(r)
            merged[int(c[0])][2].append(Kz)
        kblocks = [(rs[0], c, Ks[0]) if len(rs) == 1 else (np.concatenate(rs), c, np.vstack(Ks))
                   for c, rs, Ks in merged.values()]
        return step, step.dE, kblocks

    def _local_std_factors(self) -> "_LocalStdFactors":
        """The cached :class:`_LocalStdFactors` of the current factorisation."""
        f = getattr(self, "_std_factors", None)
        if f is None or not f.matches(self.solver_, self.sparse_species_):
            f = _LocalStdFactors(self.solver_, self.sparse_species_)
            self._std_factors = f
        return f

    def _prediction_quadratic(self) -> dict:
        """``{species: A or None}``: the kernel's quadratic form of each species' weighted
        sparse rows (:meth:`gpal.kernels.NormalizedDotProduct.quadratic_form`, ζ = 2), cached
        per fitted model; None where it would not be cheaper than the kernel rows (an
        (F, F) product against two (F, m) ones: F < 2 m), where A would be large (F >
        ``_QUADRATIC_MAX_FEATURES``: 8 MB, built in m F² operations after each update), or
        the kernel has none.
        """
        rows = self._prediction_sparse_rows()
        key = (rows, getattr(self.kernel_, "zeta", None))
        cache = getattr(self, "_pred_quad", None)
        if cache is not None and cache[0][0] is rows and cache[0][1] == key[1]:
            return cache[1]
        form = getattr(self.kernel_, "quadratic_form", None)
        quad = {z: (form(Zc, ac) if form is not None and Zc.shape[1] < 2 * Zc.shape[0]
                    and Zc.shape[1] <= _QUADRATIC_MAX_FEATURES else None)
                for z, (c, Zc, ac) in rows.items()}
        self._pred_quad = (key, quad)
        return quad

    def _prediction_sparse_rows(self) -> dict:
        """``{species: (c, Z_c, alpha_c)}`` of the sparse set, cached per fitted model.

        ``Z_c`` are the species' sparse rows, unit-normalised once for a
        :class:`gpal.kernels.CosineKernel` (its :meth:`prediction_terms`), as stored
        otherwise.
        """
        key = (self.sparse_X_, self.sparse_species_, self.alpha_, type(self.kernel_))
        cache = getattr(self, "_pred_rows", None)
        if cache is not None and all(a is b for a, b in zip(cache[0], key)):
            return cache[1]
        Z, zsp, alpha = key[:3]
        rows = {}
        for z in np.unique(zsp):
            c = np.flatnonzero(zsp == z)
            Zc = np.ascontiguousarray(Z[c], dtype=np.float64)
            if isinstance(self.kernel_, CosineKernel):
                Zc = self.kernel_.unit_rows(Zc)
            rows[int(z)] = (c, Zc, np.ascontiguousarray(alpha[c], dtype=np.float64))
        self._pred_rows = (key, rows)
        return rows

    def _local_variance_terms(self, kblocks, N: int, with_sor: bool = True):
        """Terms of the DTC local-energy variances from per-species kernel blocks.

        Parameters
        ----------
        kblocks : list of (r, c, K_rc)
            Atoms ``r`` of one species, that species' sparse columns ``c`` and the kernel
            rows ``K[r, c]`` (all other entries of the (N, M) kernel rows are zero).
        N : int
            Number of atoms.
        with_sor : bool, default True
            False: ``sor`` stays zero (what the novelty alone needs).

        Returns
        -------
        q : ndarray of shape (N,)
            ``k K_mm⁻¹ kᵀ = |L⁻¹k|²`` of each atom (the Nyström part).
        sor : ndarray of shape (N,)
            ``k Σ kᵀ = |R_w⁻ᵀ L⁻¹ k|²`` (the projected posterior part).
        sor_total : float
            ``|R_w⁻ᵀ L⁻¹ Σ_i k_i|²``, the projected variance of the total energy (0
            without ``with_sor``).
        """
        sol = self.solver_
        fac = self._local_std_factors()
        M = len(self.sparse_species_)
        if fac.blocks is None:  # L not block-diagonal by species: triangular solves
            K = np.zeros((N, M))
            for r, c, Kz in kblocks:
                K[np.ix_(r, c)] = Kz
            W = sol._nystrom_factor(K)
            sor = np.zeros(N)
            if with_sor:
                V = sol._sor_factor_whitened(W.T)
                sor = np.einsum("ms,ms->s", V, V)
            return (np.einsum("ms,ms->s", W, W), sor,
                    self._var_sor_whitened(W.sum(axis=1)) if with_sor else 0.0)
        terms = _VarianceTerms(self, fac, N, with_sor,
                               {int(self.sparse_species_[c[0]]): len(r) for r, c, _ in kblocks})
        for r, c, Kz in kblocks:
            terms.add(r, c, Kz)
        return terms.result()

    def _dtc_stds(self, X, q: np.ndarray, sor: np.ndarray):
        """``(std, novelty, Σ residual)`` of the local energies from their variance terms
        (:func:`gpal._jit._dtc_tail`): ``k(x,x)`` from the two values of a cosine kernel's
        diagonal, else from the kernel's :meth:`diag`."""
        if isinstance(self.kernel_, CosineKernel) and type(self.kernel_).diag is CosineKernel.diag:
            d0, d1 = self.kernel_._diag_values()
            return _jit._dtc_tail(np.ascontiguousarray(X, dtype=np.float64), _NO_DIAG, d0, d1, q, sor)
        kdiag = np.ascontiguousarray(self.kernel_.diag(X), dtype=np.float64)
        return _jit._dtc_tail(np.zeros((0, 0)), kdiag, 0.0, 0.0, q, sor)

    def _var_sor_whitened(self, w: np.ndarray) -> float:
        """``|R_w⁻ᵀ w|²`` of one whitened row ``w`` (M,).

        One BLAS triangular solve (trsv) on ``R_wᵀ``, the Fortran-order view of the
        C-order ``R_w``: no copy of the M x M factor per call (25-60 µs at M = 500
        with R_w in cache, against 50-150 µs through scipy's general solve; in an MD
        step, where R_w's 2 MB come from memory, ~170 µs either way).
        """
        if not len(w):
            return 0.0
        v = _dtrsv(self.solver_.R_w_.T, np.ascontiguousarray(w, dtype=np.float64), trans=0, lower=1)
        return float(np.dot(v, v))

    @_thread_policy()
    def score(self, frames: Sequence[Atoms], y: None = None) -> float:
        """R² of the force components of labelled ``frames`` (scikit-learn's regressor score).

        ``1 - Σ (F - F_pred)² / Σ (F - mean F)²`` over every force component of the
        frames with forces (:func:`sklearn.metrics.r2_score`); of the energies per atom
        when no frame has forces. What ``cross_val_score(model, frames)`` and
        ``GridSearchCV`` maximise unless given another ``scoring``: scikit-learn's
        named scorers (``"r2"``, ``"neg_root_mean_squared_error"``) need a separate
        ``y`` and fail on frames; :func:`gpal.scorer` makes ones that read the frames'
        labels (``scoring=gpal.scorer("force_rmse")``, which separates models more
        clearly than an R² close to 1).

        Parameters
        ----------
        frames : list of ase.Atoms
            Labelled as for :meth:`fit`.
        y : None
            Unused (the labels are in the frames).

        Returns
        -------
        float
        """
        from sklearn.metrics import r2_score

        if y is not None:
            raise TypeError(f"SparseGP.score takes the labels from the frames; y must be None, got {type(y).__name__}")
        check_is_fitted(self)
        frames = check_frames(frames)
        f_true, f_pred, e_true, e_pred = [], [], [], []
        for a in frames:
            lab = frame_labels(a)
            if lab.forces is None and lab.energy is None:
                continue
            pred = self.predict(a)
            if lab.forces is not None:
                f_true.append(np.ravel(lab.forces))
                f_pred.append(np.ravel(pred["forces"]))
            if lab.energy is not None:
                e_true.append(lab.energy / len(a))
                e_pred.append(pred["energy"] / len(a))
        if f_true:
            return float(r2_score(np.concatenate(f_true), np.concatenate(f_pred)))
        if len(e_true) < 2:
            raise ValueError("score needs forces, or energies of at least 2 frames")
        return float(r2_score(e_true, e_pred))

    @_thread_policy()
    def residuals(self, frames: Sequence[Atoms], *, calibrated: bool = False) -> dict:
        """Prediction errors and stds on labelled frames (one evaluation per frame).

        Labels are read as :meth:`fit` reads them (:func:`gpal._validation.frame_labels`:
        a calculator's results, else ``atoms.info["energy"]`` and
        ``atoms.arrays["forces"]``); a frame without an energy adds no energy entry, a
        frame without forces no force components.

        Parameters
        ----------
        frames : sequence of ase.Atoms
            Labelled frames (energy, forces, stress as :meth:`fit` reads them).
        calibrated : bool, default False
            The stds as ``predict(..., calibrated=True)`` gives them (the stored
            calibration applied), else raw.

        Returns
        -------
        dict
            ``energy_error`` (n_e,) eV/atom, ``energy_std`` (n_e,) eV/atom and
            ``energy_frame`` (n_e,) the index of each entry's frame; ``force_error``
            and ``force_std`` (n_comp,) eV/Å (components; stds floored at 1e-12 so
            z-scores stay finite), ``force_noise`` (n_comp,) the noise std of each
            label component (eV/Å, :meth:`force_label_noise`; with a baseline, at the
            label minus the baseline), ``force_novelty`` (n_comp,) the novelty of each
            component's atom (``predict``'s ``novelty``), ``force_species`` (n_comp,)
            the atomic number of each component's atom, ``force_frame`` (n_comp,);
            ``stress_error`` (6 n_s,) eV/Å^3, the Voigt components of the frames with a
            stress label (3D-periodic); ``n_atoms`` (n_frames,).
        """
        frames = check_frames(frames)
        out = {k: [] for k in ("energy_error", "energy_std", "energy_frame", "force_error", "force_std",
                               "force_noise", "force_novelty", "force_species", "force_frame", "stress_error")}
        n = []
        for i, a in enumerate(frames):
            try:
                check_results_current(a)
            except MissingLabelsError as exc:
                raise MissingLabelsError(f"frames[{i}]: {exc}") from None
            lab = frame_labels(a)
            try:
                p = self.predict(a, return_std=True, forces_std=lab.forces is not None, calibrated=calibrated)
            except BaselineError as exc:  # (which frame: a Δ-model's baseline failing on one)
                raise BaselineError(f"frames[{i}] ({a.get_chemical_formula()}): {exc}") from exc
            n.append(len(a))
            if lab.energy is not None:
                out["energy_error"].append([(p["energy"] - lab.energy) / len(a)])
                out["energy_std"].append([p["energy_std"] / len(a)])
                out["energy_frame"].append([i])
            if lab.stress is not None and "stress" in p:
                out["stress_error"].append(p["stress"] - lab.stress)
            if lab.forces is None:
                continue
            F = lab.forces
            out["force_error"].append((p["forces"] - F).ravel())
            out["force_std"].append(np.maximum(p["forces_std"].ravel(), 1e-12))
            out["force_novelty"].append(np.repeat(p["novelty"], 3))
            out["force_species"].append(np.repeat(a.numbers, 3))
            out["force_frame"].append(np.full(F.size, i))
            if getattr(self, "force_noise_knee_", None) is not None and getattr(self, "baseline_", None) is not None:
                F = F - _baseline.baseline_labels(self.baseline_, a)["forces"]
            out["force_noise"].append(self.force_label_noise(F).ravel())
        res = {k: (np.concatenate(v) if v else np.zeros(0)) for k, v in out.items()}
        for k in ("energy_frame", "force_frame", "force_species"):
            res[k] = res[k].astype(int)
        res["n_atoms"] = np.array(n, dtype=int)
        return res

    @_thread_policy()
    def novelty(self, atoms: Atoms) -> np.ndarray:
        """Novelty of each atom's environment, shape (n_atoms,), in [0, 1].

        The fraction of the environment's prior variance the sparse set does not
        explain, ``(k(x,x) - k K_mm⁻¹ kᵀ) / k(x,x)``: ``predict(atoms, return_std=True)``'s
        ``novelty`` without the forces, the stds and the baseline.
        """
        check_is_fitted(self)
        self._check_descriptor_unchanged()
        self._check(atoms)
        return self._novelty_terms(atoms)[0]

    def _novelty_terms(self, atoms) -> tuple[np.ndarray, float]:
        """``(novelty (n_atoms,), Σ_i residual_i)``: each environment's novelty and the
        sum of their DTC residuals ``k(x,x) - k K_mm⁻¹ kᵀ`` (eV², the Nyström part of
        ``predict``'s energy variance)."""
        X = self.descriptor_.create(atoms)
        numbers = atoms.numbers
        kblocks = []
        for z, (c, _, _) in self._prediction_sparse_rows().items():  # the species' sparse columns
            r = np.flatnonzero(numbers == z)
            if len(r):
                kblocks.append((r, c, self.kernel_(X[r], self.sparse_X_[c])))
        q = self._local_variance_terms(kblocks, len(numbers), with_sor=False)[0]
        _, novelty, resid_total = self._dtc_stds(X, q, np.zeros(len(q)))
        return novelty, resid_total

    @_thread_policy()
    def predict_local_std(self, atoms: Atoms) -> np.ndarray:
        """DTC std (eV) of each atom's local energy; shape (n_atoms,)."""
        return self.predict(atoms, return_std=True)["energies_std"]

    # ------------------------------------------------------------------ calibration hooks
    def set_calibration(self, **calibrations) -> "SparseGP":
        """Store recalibrations, e.g. ``set_calibration(forces_std=Calibration(1.3, 0.8))``.

        Each key names a std output (``forces_std``, ``energies_std``, ``energy_std``,
        ``stress_std``); its value is a :class:`gpal.calibration.Calibration`, its dict
        form, or a number (a scale), applied when ``predict(..., calibrated=True)``.
        A ``conformal_q90`` multiplies the *calibrated* std (``forces_interval90``):
        fit :class:`gpal.calibration.SplitConformal` on the stds the stored calibration
        gives (``StdCalibrator.transform`` of the raw ones), not on the raw stds, whose
        quantile is ``scale`` times larger.

        Raises
        ------
        ValueError
            A key that names no std output, or a calibration with unknown keys or
            non-positive factors.
        """
        from ..calibration import Calibration

        check_is_fitted(self)
        checked = {}  # (all checked before any is stored: a refused one had left the others set)
        for key, val in calibrations.items():
            if key not in _STD_OUTPUTS:  # (force_std=3.0, a typo, was kept and never applied)
                import difflib

                close = difflib.get_close_matches(str(key), _STD_OUTPUTS, n=1)
                raise ValueError(f"calibration keys name std outputs ({', '.join(_STD_OUTPUTS)}), got {key!r}"
                                 + (f" (did you mean {close[0]!r}?)" if close else ""))
            cal = Calibration.from_dict(val)
            if cal.species_scale and key != "forces_std":
                raise ValueError(f"species factors calibrate forces_std only, not {key}")
            checked[key] = cal.to_dict()
        self.calibration_.update(checked)
        return self

    def calibration_of(self, output: str = "forces_std"):
        """The stored :class:`gpal.calibration.Calibration` of a std output (identity if none)."""
        from ..calibration import Calibration

        return Calibration.from_dict(self.calibration_.get(output, {}))

    def _fit_knee(self, labels) -> float | None:
        """``force_noise_knee_`` for these labels (``"auto"``: their RMS atomic force, eV/Å)."""
        knee = self.force_noise_knee
        if knee is None:
            return None
        if isinstance(knee, str):
            F = [lab.forces for lab in labels if lab.forces is not None]
            rms = float(np.sqrt(np.mean(np.sum(np.concatenate(F) ** 2, axis=1)))) if F else 0.0
            return rms if rms > 0 else None
        return float(knee)

    def force_label_noise(self, forces) -> np.ndarray:
        """Noise std (eV/Å) of each component of a force label ``forces`` (n_atoms, 3).

        ``force_noise`` everywhere, or with ``force_noise_knee``
        ``force_noise * sqrt(1 + (|F_i| / knee)²)`` per atom (same shape as ``forces``).
        """
        F = np.asarray(forces, dtype=float).reshape(-1, 3)
        knee = getattr(self, "force_noise_knee_", None)
        if knee is None:
            return np.full(F.shape, self.noise_["force"])
        fac = np.sqrt(1.0 + np.sum(F**2, axis=1) / knee**2)
        return self.noise_["force"] * np.repeat(fac[:, None], 3, axis=1)

    def stress_label_noise(self) -> np.ndarray:
        """Noise std (eV/Å^3) of each Voigt component (xx, yy, zz, yz, xz, xy) of a stress label, (6,).

        ``stress_noise`` on the diagonal and ``stress_noise / sqrt(2)`` on the three shear
        components: a shear component stands for two entries of the symmetric tensor, so
        the label's likelihood is that of iid noise ``stress_noise`` on the tensor's
        entries (its Frobenius norm), the same in every orientation of the cell. (Equal
        noise on the six components weights the shear half as much as a rotation of the
        same cell does; a fit with stress labels then depended on the orientation of its
        training cells, by up to ~16 % of its force error.)
        """
        return self.noise_["stress"] * _STRESS_NOISE_SCALE

    def typical_force_noise(self) -> float:
        """RMS noise std (eV/Å) of the training force components: ``force_noise`` without a knee."""
        if getattr(self, "force_noise_knee_", None) is None:
            return float(self.noise_["force"])
        f = self.obs_group_ == _F
        return float(np.sqrt(np.mean(self.solver_.noise_std_[f] ** 2))) if np.any(f) else float(self.noise_["force"])

    def _apply_calibration(self, out: dict, novelty=None, numbers=None) -> None:
        """Calibrate the std outputs in ``out`` in place; ``novelty`` (n_atoms,) is each
        atom's environment novelty, needed by a force calibration with a novelty term, and
        ``numbers`` (n_atoms,) the atoms' atomic numbers, needed by one with species
        factors."""
        noise = {"forces_std": "force", "stress_std": "stress"}
        for key in self.calibration_:
            if key in out:
                cal = self.calibration_of(key)
                if key == "forces_std" and "forces" in out and getattr(self, "force_noise_knee_", None) is not None:
                    # with a force_noise_knee: the std of a new label at the predicted force
                    level = self.force_label_noise(out["forces"]).reshape(np.shape(out[key]))
                elif key == "stress_std":
                    level = self.stress_label_noise()
                else:
                    level = self.noise_[noise[key]] if key in noise else 0.0
                nu = 0.0
                if key == "forces_std" and cal.novelty_scale:
                    if novelty is None:
                        raise ValueError("this force calibration has a novelty term: pass the atoms' novelty")
                    nu = np.asarray(novelty, dtype=float).reshape(-1, 1)
                species = None
                if key == "forces_std" and cal.species_scale:
                    if numbers is None:
                        raise ValueError("this force calibration has species factors: pass the atoms' numbers")
                    species = numbers  # (per atom: apply puts them against the xyz columns)
                out[key] = cal.apply(out[key], level, nu, species)
                if key == "forces_std" and cal.conformal_q90 is not None:
                    # half-width of the 90 % split-conformal interval of each force label
                    out["forces_interval90"] = cal.conformal_q90 * out[key]

    def calibrated_force_std(self, forces_std, novelty=None, numbers=None) -> np.ndarray:
        """Calibrated std of a force label from raw (SoR) ``forces_std`` (n_atoms, 3), eV/Å.

        ``novelty`` (n_atoms,): the atoms' environment novelty (``predict``'s
        ``novelty``), needed when the stored calibration has a novelty term; ``numbers``
        (n_atoms,): their atomic numbers, needed when it has species factors. Without a
        stored force calibration this is the raw std itself.
        """
        out = {"forces_std": np.asarray(forces_std, dtype=float)}
        if numbers is not None and out["forces_std"].shape != (len(numbers), 3):
            raise ValueError(f"forces_std must have shape ({len(numbers)}, 3) for {len(numbers)} atoms, "
                             f"got {out['forces_std'].shape}")
        self._apply_calibration(out, novelty, numbers)
        return out["forces_std"]

    # ------------------------------------------------------------------ cross-validation
    @_thread_policy()
    def loo_residuals(self, frames=None) -> dict:
        """Leave-one-frame-out errors and stds of the training frames, from the factor.

        For training frame B with kernel rows A (its energy, force and stress
        observations) the posterior without B follows from the fitted one without a
        refit: with S = A Σ Aᵀ, Λ the label noise and r = y − A α,

        * error without B:   r₋B = Λ (Λ − S)⁻¹ r,
        * latent covariance: S₋B = S (Λ − S)⁻¹ Λ

        (Woodbury on Σ₋B⁻¹ = Σ⁻¹ − Aᵀ Λ⁻¹ A). No kernel is evaluated: the rows are the
        solver's stored ``K_nm_``. With S = Vᵀ V (V the frame's whitened SoR factor,
        n_sparse × n_obs(B)), a frame with more observations than sparse points is solved
        in the sparse space instead: with C = I − V Λ⁻¹ Vᵀ, r₋B = r + Vᵀ C⁻¹ V Λ⁻¹ r and
        diag S₋B = diag Vᵀ C⁻¹ V, so the cost per frame is O(n_obs(B) n_sparse² +
        n_sparse³), linear in the frame's atoms (the (n_obs × n_obs) form was O(n_obs³)
        and n_obs² memory: 71 s and 6.1 GB for one 4,000-atom frame). These are honest
        held-out errors (cross-validation) of the labels the model already has, so
        calibration needs no extra oracle call.

        Parameters
        ----------
        frames : sequence of int, optional
            Indices into ``frames_``; default all.

        Returns
        -------
        dict
            ``force_error`` (n_comp,) eV/Å (prediction − label), ``force_std`` (n_comp,)
            latent SoR std without the frame (eV/Å), ``force_frame`` (n_comp,) frame
            index of each component, ``force_noise`` (n_comp,) the label noise std of
            each component (eV/Å, :meth:`force_label_noise`), ``force_novelty``
            (n_comp,) the :meth:`novelty` of each component's atom (its environment
            against the sparse set, which keeps the frame's own sparse points),
            ``force_species`` (n_comp,) the atomic number of each component's atom,
            ``energy_error`` (n_e,) and ``energy_std`` (n_e,) in eV/atom,
            ``energy_residual`` (n_e,) the square root of the frame's summed DTC
            residuals (the Nyström part of ``predict``'s ``energy_std``, against the
            sparse set, which keeps the frame's own sparse points) in eV/atom,
            ``energy_frame`` (n_e,).
        """
        check_is_fitted(self)
        n_frames = len(self.frames_)
        idx = range(n_frames) if frames is None else [check_number("frames[]", i, low=0, integer=True)
                                                       for i in frames]
        if any(i >= n_frames for i in idx):
            raise ValueError(f"frames holds index {max(idx)}; the model has {n_frames} training frames")
        sol = self.solver_
        out = {k: [] for k in ("force_error", "force_std", "force_frame", "force_noise", "force_novelty",
                               "force_species", "energy_error", "energy_std", "energy_residual", "energy_frame")}
        slices = self._frame_slices()
        for b in idx:
            rows = slices[b]
            if rows.stop <= rows.start:
                continue
            if sol.keep_rows_:  # whitened rows: R⁻ᵀAᵀ = R_w⁻ᵀΦᵀ, A alpha = Φ L_mmᵀ alpha
                P = sol.Phi_[rows]
                V = sol._sor_factor_whitened(P)  # [M, n_B]
                pred = P @ (sol.L_mm_.T @ sol.alpha_)
            else:
                A = self._stacked_rows([self.frames_[b]], self.sparse_X_, self.sparse_species_)
                V = sol._sor_factor(A)
                pred = A @ sol.alpha_
            lam = sol.noise_std_[rows] ** 2
            r = sol.y_[rows] - pred
            try:
                r_loo, var = _loo_terms(V, lam, r)
            except np.linalg.LinAlgError:
                continue  # the frame pins its own posterior to round-off: skip it
            std = np.sqrt(np.clip(var, 0.0, None))
            group = self.obs_group_[rows]
            f = group == _F
            # errors as prediction − label (r is label − prediction)
            out["force_error"].append(-r_loo[f])
            out["force_std"].append(std[f])
            out["force_noise"].append(np.sqrt(lam[f]))
            out["force_frame"].append(np.full(int(f.sum()), b))
            atom_nu, resid_total = self._novelty_terms(self.frames_[b])
            nu = np.repeat(atom_nu, 3)
            species = np.repeat(self.frames_[b].numbers, 3)
            if len(nu) != int(f.sum()):  # (force rows are every atom's xyz, in order: frame_labels
                nu = np.zeros(int(f.sum()))  # checks the shape; a guard, 0: no species factor)
                species = np.zeros(int(f.sum()), dtype=int)
            out["force_novelty"].append(nu)
            out["force_species"].append(species)
            e = group == _E
            if np.any(e):
                n = len(self.frames_[b])
                out["energy_error"].append(-r_loo[e] / n)
                out["energy_std"].append(std[e] / n)
                out["energy_residual"].append(np.full(int(e.sum()), math.sqrt(max(resid_total, 0.0)) / n))
                out["energy_frame"].append(np.full(int(e.sum()), b))
        return {k: (np.concatenate(v) if v else np.zeros(0)) for k, v in out.items()}

    # ------------------------------------------------------------------ update
    @_thread_policy()
    @restoring
    def update(
        self,
        frames: Sequence[Atoms],
        *,
        n_sparse: int = 0,
        sparse_selection: str = "variance",
        exact_frames: int | None = None,
    ) -> "SparseGP":
        """Add labelled frames, and optionally new sparse environments taken from them.

        Existing kernel blocks are not recomputed: the new frames' rows are appended to
        the factorisation (a QR update whose cost does not depend on the frames already
        held), and new sparse environments add columns. With ``exact_frames=None``
        their kernel columns for the stored frames are computed frame by frame (the
        SOAP adjoint for a few points, else one descriptor-derivative pass per frame:
        this part grows with the number of frames) and extend the factor in
        O(n_obs n_sparse k) (no new QR of all rows); the result equals a fit from
        scratch on the same frames and sparse set up to rounding (measured ~1e-10
        relative on predictions). A model whose rows exceed half of
        ``memory_budget_gb`` (rows not kept) refactorises frame by frame when sparse
        points are added.

        With ``exact_frames=k`` only the ``k`` most recently added stored frames get
        those columns; the older ones are *projected*: their labels are taken as
        observations of the part of the local-energy function that the old sparse
        points span (:meth:`SparseGPSolver.add_sparse` with ``first_row``, a streaming
        sparse GP), so the cost of an update does not depend on the number of frames
        held (``k = 0``: no stored frame is touched). The new points are then informed
        by the new and the ``k`` recent frames only, until :meth:`refit` (or a
        hyperparameter refit) makes the model exact again; the number of points added
        this way is ``solver_.n_projected_``.

        With ``e0="fit"``, frames bringing the first energy labels of a species (one in
        the descriptor but in no energy-labelled frame so far, whose reference energy was
        0) fit every species' reference energy again on all frames, which changes every
        stored energy target: that update refactorises from all frames once, as
        :meth:`refit` does.

        Parameters
        ----------
        frames : list of ase.Atoms
            New labelled frames.
        n_sparse : int, default 0
            Number of new sparse environments to take from the new frames.
        sparse_selection : {"variance", "fps", "random"}, default "variance"
            ``"variance"``: the environments with the largest DTC local-energy variance
            under the current model, chosen greedily so that no two are near-duplicates;
            ``"fps"``: farthest from the current sparse set and from each other. Either
            way each species first gets at least half of its share of ``n_sparse`` in a
            fit (:meth:`fit`'s rule on the new frames' environments), its own picks,
            then the order over all species takes the rest: no species is starved of
            sparse points by another's larger variances.
        exact_frames : int or None, default None
            How many of the frames already held (the most recent) get exact kernel
            columns for the new sparse points (above); None: all.

        Returns
        -------
        self
        """
        check_is_fitted(self)
        choices = ("variance", "fps", "random")
        if sparse_selection not in choices:
            raise ValueError(f"Invalid sparse_selection {sparse_selection!r}; choose from {choices}")
        exact_frames = _check_exact_frames(exact_frames)
        n_sparse = check_number("n_sparse", n_sparse, low=0, integer=True)
        self._check_params()  # (settings changed since the fit: min_distance="x" was a bare TypeError)
        frames = check_frames(frames)
        labels = [frame_labels(a) for a in frames]
        for k, a in enumerate(frames):
            self._check(a, what=f"frames[{k}]")
            frame_temperature(a, what=f"frames[{k}]")
            check_min_distance(self._min_pair_distance(a), self.min_distance, "training frame")
        self._warn_repeated(frames)
        labels = self._minus_baseline(frames, labels)
        new = [_labelled_copy(a, lab) for a, lab in zip(frames, labels)]
        # an energy far from the stored frames of its composition (another reference, a
        # wrong value): one such update took a model's energies 2.8 eV/atom off, unsaid
        stored = self._stored_energy_entries()[-2000:]  # (a bounded look-back, per label)
        warn_energy_outliers(stored + energy_entries(new, labels), only=range(len(stored), len(stored) + len(new)),
                             offset=len(stored))
        if n_sparse > 0:
            Znew, zspnew = self._choose_new_sparse(new, int(n_sparse), sparse_selection, by_species=True)
            if len(Znew):
                self._add_sparse(Znew, zspnew, exact_frames)
        if self._e0_unfitted(new):
            # a species' first energy labels: its reference energy is fitted now (with
            # every other species', jointly), which changes every stored energy target,
            # so the model is refactorised from all frames once (as refit does)
            self.frames_ = self.frames_ + new
            self.e0_ = self._fit_e0(self.frames_)
            self._fit_solver(self._k_mm(self.sparse_X_, self.sparse_species_))
            self._enforce_budget()
            return self
        K_nm, y, noise, group, fidx = self._observations(new, self.sparse_X_, self.sparse_species_)
        self.solver_.update(K_nm, y, noise)
        self.obs_group_ = np.concatenate([self.obs_group_, group])
        self.obs_frame_ = np.concatenate([self.obs_frame_, fidx])
        self.frames_ = self.frames_ + new
        self.alpha_ = self.solver_.alpha_
        self._enforce_budget()
        return self

    def _frames_extend(self, n: int, last) -> bool:
        """Whether ``frames_`` still begins with the ``n`` frames a cache covered, the
        last of them ``last`` (``update`` appends; ``fit`` and ``load`` replace them)."""
        fr = self.frames_
        return n <= len(fr) and (n == 0 or fr[n - 1] is last)

    def _stored_energy_entries(self) -> list:
        """The stored frames' :func:`gpal._validation.energy_entries`, kept and extended as
        ``_warn_repeated`` keeps its keys, so an update reads the labels of its own frames
        only."""
        fr = self.frames_
        n, last, entries = getattr(self, "_energy_entries", (0, None, []))
        if not self._frames_extend(n, last):
            n, entries = 0, []
        entries = entries + energy_entries(fr[n:], [frame_labels(a) for a in fr[n:]])
        self._energy_entries = (len(fr), fr[-1] if fr else None, entries)
        return entries

    def _warn_repeated(self, frames) -> None:
        """Warn if one of ``frames`` repeats a stored training frame (same atoms,
        positions and cell), as :meth:`fit` warns for repeats among its frames. The
        stored frames' keys are kept and extended, so a call hashes its own frames."""
        fr = self.frames_
        n, last, keys = getattr(self, "_frame_keys", (0, None, set()))
        if not self._frames_extend(n, last):
            n, keys = 0, set()
        keys.update(_frame_key(a) for a in fr[n:])
        self._frame_keys = (len(fr), fr[-1] if fr else None, keys)
        own: dict = {}
        for k, a in enumerate(frames):
            key = _frame_key(a)
            if key in keys or key in own:
                what = "a frame the model already holds" if key in keys else f"frames[{own[key]}]"
                warnings.warn(f"frames[{k}] repeats {what} (same atoms, positions and cell): its labels count "
                              "twice", UserWarning, stacklevel=user_stacklevel())
                return
            own[key] = k

    @_thread_policy()
    @restoring
    def refit(self) -> "SparseGP":
        """Recompute every training frame's kernel rows and refactorise.

        Keeps the sparse set, the hyperparameters, the reference energies and the
        calibration; after updates with ``exact_frames`` set the model is
        exact again (``solver_.n_projected_`` is 0). Costs one pass over all frames, as
        a fit with fixed hyperparameters does.

        Returns
        -------
        self
        """
        check_is_fitted(self)
        self._fit_solver(self._k_mm(self.sparse_X_, self.sparse_species_))
        self._enforce_budget()
        return self

    @_thread_policy()
    def select_frames(
        self,
        candidates: Sequence[Atoms],
        n_select: int,
        *,
        labels=("energy", "forces", "stress"),
        score=("forces",),
        return_gains: bool = False,
        keep: float | None = None,
    ):
        """Choose a batch of frames to label: greedy information gain of their labels.

        Each pick is the candidate whose labels carry the most information,
        ``Σ ½ log(1 + σ²/σ_n²)`` over the scored values (by default its 3N force
        components, with σ² the projected posterior force variance, as
        ``predict(..., forces_std=True)``, and σ_n the force noise), under the posterior
        that already holds the labels of the earlier picks.
        A posterior variance does not depend on label values, so the earlier picks enter
        as rows with zero labels in a copy of the factorisation: the whole batch is
        chosen before any oracle call, and the model is not changed. With one pick this
        is max-variance selection scaled by the label noise; with more, the picks avoid
        each other's redundancy. The sum over a frame's components ignores their
        correlation, so a score is an upper bound on the frame's joint information gain
        (1.1-1.8x it on small Cu cells) and the gains of a batch do not add up to its
        joint gain; the (1 - 1/e) guarantee of greedy log-det belongs to scalar
        candidates (:func:`gpal.selection.greedy_batch`), not to this frame-level greedy.

        An environment of a species that has no sparse point has no projected variance:
        it scores 0 (a warning says so, once per species). Add such environments to the
        sparse set first (:meth:`update` with the frames, or the active learner's novelty
        refresh) when they should count.

        Parameters
        ----------
        candidates : sequence of ase.Atoms
            Unlabelled (or labelled) configurations. Their kernel rows, (1 + 3N + 6) x
            n_sparse floats each, are held in memory for the duration of the call.
        n_select : int
            Batch size (at most ``len(candidates)``).
        labels : sequence of {"energy", "forces", "stress"}
            What an oracle call returns, i.e. which rows a pick adds to the posterior
            (stress only for fully periodic frames).
        score : sequence of {"energy", "forces", "stress"}, default ("forces",)
            Which values' information gains are summed into a candidate's score. The
            sum treats the values as uncorrelated (an upper bound on their joint gain,
            Hadamard's inequality). Forces alone are the default: they are 3N of a
            frame's 3N + 7 labels and what MD needs.
        return_gains : bool, default False
            Also return each pick's information gain (nats) at the time it was picked.
        keep : float >= 0 or None
            Stop before a pick whose gain, given the earlier picks, is under ``keep``
            times the first pick's (the active learner uses 0.25). A near-duplicate of a
            pick gains less than it would alone, but whether it falls under ``keep``
            depends on how far its stds are above the label noise: an exact copy can
            still be picked when the stds are small. None: always ``n_select`` picks.

        Returns
        -------
        indices : ndarray of shape (k,), int64
            Positions in ``candidates``, in pick order (``k = n_select`` unless ``keep``).
        gains : ndarray of shape (k,), only if ``return_gains``

        Notes
        -----
        The greedy loop is :func:`gpal.selection.greedy_select`, gpal's one engine of
        label-free batch design.
        """
        import copy

        check_is_fitted(self)
        frames = list(candidates)
        if not frames:
            raise ValueError("candidates is empty")
        n_select = check_number("n_select", n_select, low=1, integer=True)  # (2.7 had picked 2)
        if not 1 <= n_select <= len(frames):
            raise ValueError(f"n_select must be in [1, {len(frames)}], got {n_select}")
        labels = (labels,) if isinstance(labels, str) else labels  # one name as a string
        score = (score,) if isinstance(score, str) else score
        check_number("keep", keep, low=0, none=True)
        for name, given in (("labels", labels), ("score", score)):
            unknown = set(given) - {"energy", "forces", "stress"}
            if unknown or not given:
                raise ValueError(
                    f"unknown or no {name} {sorted(unknown)}; choose from energy, forces, stress"
                )
        Z, zsp = self.sparse_X_, self.sparse_species_
        score_rows, score_noise, add_rows, add_noise = [], [], [], []
        for k, a in enumerate(frames):
            self._check(a, what=f"candidates[{k}]")
            self._warn_unlearned_species(a, scores=True)
            e_row, f_rows, s_rows = self._derivative_rows(a, Z, zsp)
            n = len(a)
            F_rows = f_rows.reshape(3 * n, len(Z))  # noise at the predicted force
            block = {
                "energy": (e_row[None, :], np.array([self.noise_["energy"] * np.sqrt(n)])),
                "forces": (F_rows, self.force_label_noise((F_rows @ self.alpha_).reshape(n, 3)).ravel()),
            }
            if np.all(a.pbc):
                block["stress"] = (s_rows, self.stress_label_noise())
            for names, rows, noise in ((labels, add_rows, add_noise), (score, score_rows, score_noise)):
                use = [g for g in ("energy", "forces", "stress") if g in names and g in block]
                rows.append(np.concatenate([block[g][0] for g in use]) if use else np.zeros((0, len(Z))))
                noise.append(np.concatenate([block[g][1] for g in use]) if use else np.zeros(0))
        # a shallow copy without the rows: update() then rebinds the factor and the label
        # arrays to new ones and never writes into the model's own
        solver = copy.copy(self.solver_).drop_rows()

        def scores(idx):
            return [0.5 * np.sum(np.log1p(solver.var_sor(score_rows[k]) / score_noise[k] ** 2))
                    if len(score_rows[k]) else 0.0 for k in idx]

        def observe(k):
            if len(add_rows[k]):
                solver.update(add_rows[k], np.zeros(len(add_rows[k])), add_noise[k])

        picks, gains = greedy_select(len(frames), n_select, scores, observe, keep=keep)
        return (picks, gains) if return_gains else picks

    # ------------------------------------------------------------------ Δ-learning (baseline)
    def _minus_baseline(self, frames, labels: list, check: bool = False) -> list:
        """The labels the GP fits: ``labels`` minus the baseline's (unchanged without one).

        The one place where labels enter the model (:meth:`fit`, :meth:`update`); the
        stored ``frames_`` carry the result, so everything downstream (e0, evidence,
        cross-validation, the saved training set) sees residuals only. With ``check``
        (a fit) a warning says when the residual forces are larger than the labels'
        own (RMS over components, 1.5x): a baseline in other units (kcal/mol: 23x) or
        one that is wrong for the system makes the GP learn more than without it (a
        Lennard-Jones baseline under EMT CuNi: residual 2.80 eV/Å RMS against 0.85 for
        the labels, and a test force RMSE 7.6x the plain model's).
        """
        calc = getattr(self, "baseline_", None)
        if calc is None:
            return labels
        out = []
        sq = np.zeros(2)  # Σ label force², Σ residual force²
        for k, (a, lab) in enumerate(zip(frames, labels)):
            try:
                b = _baseline.baseline_labels(calc, a, stress=lab.stress is not None)
            except BaselineError as exc:  # (which frame: a large training set's frame k)
                raise BaselineError(f"frames[{k}] ({a.get_chemical_formula()}): {exc}") from exc
            out.append(Labels(
                None if lab.energy is None else lab.energy - b["energy"],
                None if lab.forces is None else lab.forces - b["forces"],
                None if lab.stress is None else lab.stress - b["stress"],
            ))
            if lab.forces is not None:
                sq += (np.sum(lab.forces**2), np.sum(out[-1].forces**2))
        if check and sq[1] > 1.5**2 * sq[0] > 0:
            warnings.warn(
                f"the baseline {type(calc).__name__} leaves residual forces larger than the labels' own "
                f"({np.sqrt(sq[1] / sq[0]):.3g}x their RMS): the model learns more than it would without it; "
                "check the baseline's units (eV, eV/Å) and settings", UserWarning, stacklevel=user_stacklevel())
        return out

    def training_frames(self) -> list:
        """Copies of the training frames with the oracle's labels (eV, eV/Å, eV/Å^3).

        A Δ-model stores the residuals (labels − baseline) in ``frames_``; here the
        baseline's energy, forces and stress are added back. Without a baseline the
        labels are ``frames_``'s. Each keeps the temperature an active learner labelled
        it at (``info["gpal_temperature"]``, K), if it has one.
        """
        check_is_fitted(self)
        calc = getattr(self, "baseline_", None)
        out = []
        for a in self.frames_:
            lab = frame_labels(a)
            e, f, st = lab.energy, lab.forces, lab.stress
            if calc is not None:
                b = _baseline.baseline_labels(calc, a, stress=st is not None)
                e = None if e is None else e + b["energy"]
                f = None if f is None else f + b["forces"]
                st = None if st is None else st + b["stress"]
            out.append(_labelled_copy(a, Labels(e, f, st)))
        return out

    def _plus_baseline(self, atoms, out: dict) -> None:
        """Add the baseline's energy, per-atom energies, forces and stress to a prediction
        of the GP (in place); the stds stay the GP's."""
        calc = getattr(self, "baseline_", None)
        if calc is None:
            return
        b = _baseline.baseline_labels(calc, atoms, stress="optional" if "stress" in out else False)
        out["energy"] = out["free_energy"] = out["energy"] + b["energy"]
        out["energies"] = out["energies"] + b["energies"]
        out["forces"] = out["forces"] + b["forces"]
        if "stress" in b:
            out["stress"] = out["stress"] + b["stress"]
        elif "stress" in out:  # a baseline without stress (fitted on frames without one):
            del out["stress"]  # no stress, rather than the GP's part of one
            out.pop("stress_std", None)
