"""Neighbour lists: a numba cell list, linear in the number of atoms.

:func:`neighbor_list` returns every pair (i, j, D) with ``D = r_j + S @ cell - r_i`` and
``|D| <= cutoff`` (inclusive, like dscribe's cell list), over all periodic images ``S``
along periodic directions, excluding only the zero-distance self pair (i == j, S == 0).
Pairs are sorted by ``i``. Periodic images of an atom itself are included, and so are
several images of the same neighbour when the cutoff sphere is larger than the cell.

Algorithm
---------
Positions are expressed in a basis whose rows are the cell vectors along periodic
directions and orthonormal vectors (orthogonal to those) along non-periodic ones.
Fractional coordinates along periodic directions are wrapped into [0, 1). Each direction
is cut into bins whose width, measured perpendicular to the bin planes, is at least the
cutoff (unless the cell itself is thinner, in which case one bin is searched over as
many periodic images as needed). Any pair within the cutoff then differs by at most
``reach`` bins along each direction, where ``reach = ceil(cutoff * n_bins / height)``;
an extended bin index ``e`` maps to bin ``e mod n_bins`` and periodic image ``e //
n_bins``. The search is done twice (count, then fill) in parallel over atoms, so the
output is sorted by ``i`` and race-free.
"""

from __future__ import annotations

import functools
import math

import numba
import numpy as np

from .._threads import policy as _thread_policy
from ..exceptions import InvalidPositionsError, MissingCellError

__all__ = ["neighbor_list"]

_MAX_BINS_PER_ATOM = 8
#: most candidate pairs (atoms x atoms of the bins within reach, images included) a
#: search may visit: ~10 minutes of one core and, for a dense system, tens of GB of
#: pairs; 10⁶ atoms of a metal at a 7 Å cutoff visit ~10⁹
MAX_CANDIDATE_PAIRS = 5e10
#: most candidate neighbours per atom: a 20 Å cutoff in a dense metal visits ~2e4, a
#: 12 Å cutoff in a one-atom cell ~1e3; an isolated system whose cutoff spans it visits
#: all its atoms (2e5 atoms: 4e10 pairs, terabytes)
MAX_CANDIDATES_PER_ATOM = 1e5


@_thread_policy()
def neighbor_list(
    positions,
    cell,
    pbc,
    cutoff: float,
    *,
    return_shifts: bool = False,
):
    """All atom pairs closer than ``cutoff``, periodic images included.

    Parameters
    ----------
    positions : array_like of shape (n_atoms, 3)
        Cartesian positions (Å). They need not be wrapped into the cell.
    cell : array_like of shape (3, 3) or None
        Cell vectors as rows. Only the vectors along periodic directions are used; they
        must be linearly independent.
    pbc : bool or array_like of shape (3,)
        Periodicity along each cell vector. Non-periodic directions get no images.
    cutoff : float
        Pair cutoff (Å); pairs with ``|D| <= cutoff`` are returned.
    return_shifts : bool, default False
        Also return the integer image shifts ``S``.

    Returns
    -------
    i : ndarray of shape (n_pairs,), int64
        Centre atom indices, sorted ascending.
    j : ndarray of shape (n_pairs,), int64
        Neighbour atom indices (in the original cell).
    D : ndarray of shape (n_pairs, 3), float64
        Pair vectors ``r_j + S @ cell - r_i``.
    S : ndarray of shape (n_pairs, 3), int64
        Only if ``return_shifts``: the periodic image of ``j``.

    Raises
    ------
    InvalidPositionsError
        Positions or cell contain NaN or infinite values.
    MissingCellError
        A direction is periodic but the cell vectors along periodic directions are
        degenerate.
    ValueError
        Bad shapes or a non-positive cutoff.
    """
    pos, cell_arr, pbc_arr = _check_inputs(positions, cell, pbc, cutoff)
    i, j, D, S, _ = _pairs(pos, cell_arr, pbc_arr, float(cutoff))
    if return_shifts:
        return i, j, D, S
    return i, j, D


def _check_inputs(positions, cell, pbc, cutoff):
    pos = np.ascontiguousarray(positions, dtype=np.float64)
    if pos.ndim != 2 or pos.shape[1] != 3:
        raise ValueError(f"positions must have shape (n_atoms, 3), got {pos.shape}.")
    if not np.all(np.isfinite(pos)):
        raise InvalidPositionsError("Positions contain NaN or infinite values.")
    if cell is None:
        cell_arr = np.zeros((3, 3))
    else:
        cell_arr = np.array(cell, dtype=np.float64)
        if cell_arr.shape == (3,):
            cell_arr = np.diag(cell_arr)
        if cell_arr.shape != (3, 3):
            raise ValueError(f"cell must have shape (3, 3), got {cell_arr.shape}.")
        if not np.all(np.isfinite(cell_arr)):
            raise InvalidPositionsError("The cell contains NaN or infinite values.")
    pbc_arr = np.zeros(3, dtype=np.bool_)
    pbc_arr[:] = pbc
    if not (np.isfinite(cutoff) and cutoff > 0):
        raise ValueError(f"cutoff must be a positive finite number, got {cutoff}.")
    return pos, cell_arr, pbc_arr


def _basis(cell: np.ndarray, pbc: np.ndarray) -> np.ndarray:
    """Rows: the cell vectors along periodic directions, orthonormal ones elsewhere."""
    periodic = [d for d in range(3) if pbc[d]]
    vecs = cell[periodic]
    if len(periodic) > 0:
        norms = np.linalg.norm(vecs, axis=1)
        scale = max(norms.max(), 1e-300)
        sv = np.linalg.svd(vecs / scale, compute_uv=False)
        if np.any(norms == 0) or sv.min() < 1e-10:
            raise MissingCellError(
                "The cell vectors along the periodic directions "
                f"{[('a', 'b', 'c')[d] for d in periodic]} are missing or linearly "
                f"dependent (cell={cell.tolist()}, pbc={pbc.tolist()})."
            )
    basis = np.zeros((3, 3))
    for d in periodic:
        basis[d] = cell[d]
    free = [d for d in range(3) if not pbc[d]]
    if free:
        # orthonormal complement of the periodic vectors
        if periodic:
            u, _, _ = np.linalg.svd(vecs.T, full_matrices=True)
            comp = u[:, len(periodic) :].T  # (3 - n_periodic, 3)
        else:
            comp = np.eye(3)
        for k, d in enumerate(free):
            basis[d] = comp[k]
    return basis


#: orthogonality defect (product of the periodic cell vectors' lengths over their volume
#: or area) beyond which the search runs in a reduced cell: a Minkowski-reduced cell has
#: at most ~1.41 (fcc's primitive cell), a skewed setting of the same lattice (a = a1,
#: b = b1 - 9 a1, ...) can have 100s, and its images along each vector run into the
#: thousands although the pairs are the same
_MAX_DEFECT = 1.5


def _pairs(pos, cell, pbc, cutoff):
    """Internal: (i, j, D, S, offsets) with CSR offsets of each centre's pairs.

    A strongly skewed cell is searched as its Minkowski-reduced equivalent (the same
    lattice: the same pairs); shifts are given back in the cell's own vectors, and the
    pair vectors are evaluated with them as :func:`_filter_pairs` evaluates them.
    """
    op = _reduction(cell.tobytes(), pbc.tobytes()) if pbc.any() and pos.shape[0] else None
    if op is None:
        return _search_pairs(pos, cell, pbc, cutoff)
    i, j, _, S, offsets = _search_pairs(pos, op.astype(np.float64) @ cell, pbc, cutoff)
    S = np.ascontiguousarray(S @ op)
    D = (pos[j] - pos[i]) + _shift_vectors(S, cell)
    return i, j, D, S, offsets


@functools.lru_cache(maxsize=8)
def _reduction(cell_bytes: bytes, pbc_bytes: bytes):
    """The integer matrix ``op`` (3, 3) with ``op @ cell`` the Minkowski-reduced cell, or
    None when the cell is reduced enough (orthogonality defect <= :data:`_MAX_DEFECT`)."""
    cell = np.frombuffer(cell_bytes, dtype=np.float64).reshape(3, 3)
    pbc = np.frombuffer(pbc_bytes, dtype=np.bool_)
    vecs = cell[pbc]
    gram = np.linalg.det(vecs @ vecs.T)
    if not gram > 0:
        return None  # (degenerate: _basis says so)
    if np.prod(np.linalg.norm(vecs, axis=1)) / math.sqrt(gram) <= _MAX_DEFECT:
        return None
    from ase.geometry import minkowski_reduce

    _, op = minkowski_reduce(cell, pbc)
    op = np.asarray(op, dtype=np.int64)
    return None if np.array_equal(op, np.eye(3, dtype=np.int64)) else op


def _search_pairs(pos, cell, pbc, cutoff):
    """:func:`_pairs` in the cell as given."""
    n_atoms = pos.shape[0]
    if n_atoms == 0:
        e = np.zeros(0, dtype=np.int64)
        return (
            e,
            e.copy(),
            np.zeros((0, 3)),
            np.zeros((0, 3), np.int64),
            np.zeros(1, np.int64),
        )
    basis = _basis(cell, pbc)
    binv = np.linalg.inv(basis)
    frac = pos @ binv
    wrap = np.zeros((n_atoms, 3), dtype=np.int64)
    height = 1.0 / np.linalg.norm(
        binv, axis=0
    )  # plane spacing for unit fractional step
    n_bins = np.ones(3, dtype=np.int64)
    lo = np.zeros(3)
    width = np.ones(3)
    reach = np.ones(3, dtype=np.int64)
    for d in range(3):
        if pbc[d]:
            w = np.floor(frac[:, d])
            frac[:, d] -= w
            # rounding can leave exactly 1.0
            over = frac[:, d] >= 1.0
            frac[over, d] = 0.0
            w[over] += 1
            wrap[:, d] = w.astype(np.int64)
            n_bins[d] = max(1, int(height[d] / cutoff))
        else:
            lo[d] = frac[:, d].min()
            span = frac[:, d].max() - lo[d]
            n_bins[d] = max(1, int(span * height[d] / cutoff))
    # keep the number of bins proportional to the number of atoms (sparse systems)
    max_bins = max(27, _MAX_BINS_PER_ATOM * n_atoms)
    while n_bins.prod() > max_bins:
        d = int(np.argmax(n_bins))
        n_bins[d] = max(1, n_bins[d] // 2)
    for d in range(3):
        if pbc[d]:
            width[d] = 1.0 / n_bins[d]
            reach[d] = max(1, math.ceil(cutoff * n_bins[d] / height[d] * (1.0 + 1e-10)))
        else:
            span = frac[:, d].max() - lo[d]
            width[d] = span / n_bins[d] if span > 0 else 1.0
            reach[d] = 1
    _check_work(n_atoms, n_bins, reach, pbc, cutoff)
    shift_cart = np.ascontiguousarray(cell)
    counts = np.zeros(n_atoms, dtype=np.int64)
    bin_of, order, bin_start = _bin_atoms(frac, lo, width, n_bins)
    chunk = max(1, n_atoms // (16 * numba.get_num_threads()))
    with numba.parallel_chunksize(
        chunk
    ):  # dynamic scheduling: robust when a core is busy
        _search(
            pos,
            shift_cart,
            pbc,
            wrap,
            bin_of,
            order,
            bin_start,
            n_bins,
            reach,
            cutoff,
            counts,
            np.zeros(1, np.int64),
            np.zeros(1, np.int64),
            np.zeros(1, np.int64),
            np.zeros((1, 3)),
            np.zeros((1, 3), np.int64),
            False,
        )
    offsets = np.zeros(n_atoms + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    n_pairs = int(offsets[-1])
    i_out = np.empty(n_pairs, dtype=np.int64)
    j_out = np.empty(n_pairs, dtype=np.int64)
    D_out = np.empty((n_pairs, 3), dtype=np.float64)
    S_out = np.empty((n_pairs, 3), dtype=np.int64)
    with numba.parallel_chunksize(chunk):
        _search(
            pos,
            shift_cart,
            pbc,
            wrap,
            bin_of,
            order,
            bin_start,
            n_bins,
            reach,
            cutoff,
            counts,
            offsets,
            i_out,
            j_out,
            D_out,
            S_out,
            True,
        )
    return i_out, j_out, D_out, S_out, offsets


def _check_work(n_atoms: int, n_bins, reach, pbc, cutoff: float) -> None:
    """Raise ValueError before a search that would visit more than
    :data:`MAX_CANDIDATE_PAIRS` candidate pairs, or :data:`MAX_CANDIDATES_PER_ATOM` per
    atom (a cutoff far larger than the cell
    scans ~(2 cutoff / height)³ periodic images: r_cut 10⁶ Å for a 10 Å cell would run
    for years instead of failing)."""
    stencil = 1.0
    for d in range(3):
        stencil *= min(2 * int(reach[d]) + 1, int(n_bins[d])) if not pbc[d] else 2 * int(reach[d]) + 1
    work = float(n_atoms) * stencil * (float(n_atoms) / float(np.prod(n_bins)))
    if work > MAX_CANDIDATE_PAIRS or work > MAX_CANDIDATES_PER_ATOM * n_atoms:
        raise ValueError(
            f"a neighbour cutoff of {cutoff:g} Å for {n_atoms} atoms would search ~{work:.1e} "
            f"atom pairs (at most {MAX_CANDIDATE_PAIRS:.0e}, and {MAX_CANDIDATES_PER_ATOM:.0e} per atom; periodic images of the cell "
            f"within the cutoff: {'x'.join(str(2 * int(r) + 1) for r, p in zip(reach, pbc) if p) or 'none'}); "
            "is the cutoff (r_cut) in Å?")


@numba.njit(cache=True)
def _bin_atoms(frac, lo, width, n_bins):
    """Counting sort of atoms into bins; returns (bin (n_atoms,3), order, bin_start)."""
    n_atoms = frac.shape[0]
    nx, ny, nz = n_bins[0], n_bins[1], n_bins[2]
    bin_of = np.empty((n_atoms, 3), dtype=np.int64)
    flat = np.empty(n_atoms, dtype=np.int64)
    n_tot = nx * ny * nz
    bin_start = np.zeros(n_tot + 1, dtype=np.int64)
    for a in range(n_atoms):
        for d in range(3):
            b = int(math.floor((frac[a, d] - lo[d]) / width[d]))
            if b < 0:
                b = 0
            elif b >= n_bins[d]:
                b = n_bins[d] - 1
            bin_of[a, d] = b
        f = (bin_of[a, 0] * ny + bin_of[a, 1]) * nz + bin_of[a, 2]
        flat[a] = f
        bin_start[f + 1] += 1
    for f in range(n_tot):
        bin_start[f + 1] += bin_start[f]
    fill = bin_start[:-1].copy()
    order = np.empty(n_atoms, dtype=np.int64)
    for a in range(n_atoms):
        order[fill[flat[a]]] = a
        fill[flat[a]] += 1
    return bin_of, order, bin_start


@numba.njit(cache=True, parallel=True)
def _search(
    pos,
    cell,
    pbc,
    wrap,
    bin_of,
    order,
    bin_start,
    n_bins,
    reach,
    cutoff,
    counts,
    offsets,
    i_out,
    j_out,
    D_out,
    S_out,
    fill,
):
    """Count (fill=False) or write (fill=True) the pairs of every atom."""
    n_atoms = pos.shape[0]
    nx, ny, nz = n_bins[0], n_bins[1], n_bins[2]
    cut2 = cutoff * cutoff
    for i in numba.prange(n_atoms):
        k = 0
        if fill:
            k = offsets[i]
        bx, by, bz = bin_of[i, 0], bin_of[i, 1], bin_of[i, 2]
        for ex in range(bx - reach[0], bx + reach[0] + 1):
            if pbc[0]:
                cx = ex % nx
                sx = ex // nx
            else:
                if ex < 0 or ex >= nx:
                    continue
                cx = ex
                sx = 0
            for ey in range(by - reach[1], by + reach[1] + 1):
                if pbc[1]:
                    cy = ey % ny
                    sy = ey // ny
                else:
                    if ey < 0 or ey >= ny:
                        continue
                    cy = ey
                    sy = 0
                for ez in range(bz - reach[2], bz + reach[2] + 1):
                    if pbc[2]:
                        cz = ez % nz
                        sz = ez // nz
                    else:
                        if ez < 0 or ez >= nz:
                            continue
                        cz = ez
                        sz = 0
                    f = (cx * ny + cy) * nz + cz
                    for q in range(bin_start[f], bin_start[f + 1]):
                        j = order[q]
                        s0 = sx - wrap[j, 0] + wrap[i, 0]
                        s1 = sy - wrap[j, 1] + wrap[i, 1]
                        s2 = sz - wrap[j, 2] + wrap[i, 2]
                        if j == i and s0 == 0 and s1 == 0 and s2 == 0:
                            continue
                        # (the pair vector as _filter_pairs forms it from _shift_vectors)
                        dx = (pos[j, 0] - pos[i, 0]) + (s0 * cell[0, 0] + s1 * cell[1, 0] + s2 * cell[2, 0])
                        dy = (pos[j, 1] - pos[i, 1]) + (s0 * cell[0, 1] + s1 * cell[1, 1] + s2 * cell[2, 1])
                        dz = (pos[j, 2] - pos[i, 2]) + (s0 * cell[0, 2] + s1 * cell[1, 2] + s2 * cell[2, 2])
                        if dx * dx + dy * dy + dz * dz <= cut2:
                            if fill:
                                i_out[k] = i
                                j_out[k] = j
                                D_out[k, 0] = dx
                                D_out[k, 1] = dy
                                D_out[k, 2] = dz
                                S_out[k, 0] = s0
                                S_out[k, 1] = s1
                                S_out[k, 2] = s2
                            k += 1
        if not fill:
            counts[i] = k


# ------------------------------------------------------------------ reuse across MD steps
#: extra distance (Å) of the candidate pairs kept for reuse (a Verlet skin): a list built
#: with ``cutoff + SKIN`` holds every pair within ``cutoff`` until some atom has moved
#: more than ``SKIN / 2`` from where it was at the build
SKIN = 1.0


class PairCache:
    """Neighbour lists of consecutive calls on one system, rebuilt only when needed.

    A call whose system (number of atoms, cell, periodicity) is the one of the previous
    call, with atoms moved but every atom within ``skin / 2`` of its previous position
    (consecutive MD or optimiser steps), builds a candidate list with ``cutoff + skin`` once; later calls
    only filter it while no atom has moved more than ``skin / 2`` from the positions of
    that build. Other calls (a new system, frames far apart: a fit over a data set, the
    same positions again) get a plain :func:`neighbor_list`-style search.

    The result is the same pairs, with bit-identical pair vectors (``r_j - r_i + S @
    cell`` evaluated as the search does), in the same order as a fresh search: sorted by
    centre, then by neighbour and image shift (:func:`_canonical_order`).

    Parameters
    ----------
    cutoff : float
        Pair cutoff (Å), inclusive.
    skin : float, default :data:`SKIN`
        Verlet skin (Å), > 0.
    """

    def __init__(self, cutoff: float, skin: float = SKIN):
        self.cutoff = float(cutoff)
        self.skin = float(skin)
        # (key, positions of the last call)
        self._last = None
        # (key, positions at the build, i, j, S, offsets, S @ cell) of the candidate list
        self._list = None
        self.n_builds = 0
        self.n_reuses = 0

    @staticmethod
    def _key(pos, cell, pbc):
        return (pos.shape[0], cell.tobytes(), pbc.tobytes())

    def pairs(self, pos, cell, pbc):
        """``(i, j, D, S, offsets)`` of all pairs within the cutoff (see :func:`_pairs`).

        ``pos`` (n, 3), ``cell`` (3, 3) float64 and ``pbc`` (3,) bool arrays, already
        validated.
        """
        key = self._key(pos, cell, pbc)
        half = 0.5 * self.skin
        entry = self._list
        if entry is not None and entry[0] == key and _max_displacement(pos, entry[1]) <= half:
            self.n_reuses += 1
            self._last = (key, pos.copy())
            return _filter_pairs(pos, entry[6], entry[2], entry[3], entry[4], entry[5],
                                 self.cutoff)  # candidates are in canonical order
        last = self._last
        self._last = (key, pos.copy())
        moved = _max_displacement(pos, last[1]) if last is not None and last[0] == key else -1.0
        if 0.0 < moved <= half:
            i, j, D, S, offsets = _canonical_order(*_pairs(pos, cell, pbc, self.cutoff + self.skin))
            shifts = _shift_vectors(S, cell)
            self._list = (key, pos.copy(), i, j, S, offsets, shifts)
            self.n_builds += 1
            return _filter_pairs(pos, shifts, i, j, S, offsets, self.cutoff)
        return _canonical_order(*_pairs(pos, cell, pbc, self.cutoff))


@numba.njit(cache=True)
def _canonical_order(i, j, D, S, offsets):
    """Pairs of each centre sorted by (neighbour, image shift), in place; returns them.

    Fresh and reused lists then list the same pairs in the same order, so results do not
    depend on which one a call got (not even in the last bit).
    """
    n_atoms = offsets.shape[0] - 1
    if i.shape[0] == 0:
        return i, j, D, S, offsets
    lo = min(S[:, 0].min(), S[:, 1].min(), S[:, 2].min())
    hi = max(S[:, 0].max(), S[:, 1].max(), S[:, 2].max())
    R = hi - lo + 1
    jt = np.empty(0, dtype=np.int64)
    Dt = np.empty((0, 3))
    St = np.empty((0, 3), dtype=np.int64)
    for a in range(n_atoms):
        p0 = offsets[a]
        p1 = offsets[a + 1]
        if p1 - p0 < 2:
            continue
        key = np.empty(p1 - p0, dtype=np.int64)
        for p in range(p0, p1):
            key[p - p0] = ((j[p] * R + (S[p, 0] - lo)) * R + (S[p, 1] - lo)) * R + (S[p, 2] - lo)
        order = np.argsort(key)
        jt = j[p0:p1].copy()
        Dt = D[p0:p1].copy()
        St = S[p0:p1].copy()
        for q in range(p1 - p0):
            o = order[q]
            j[p0 + q] = jt[o]
            D[p0 + q, 0] = Dt[o, 0]
            D[p0 + q, 1] = Dt[o, 1]
            D[p0 + q, 2] = Dt[o, 2]
            S[p0 + q, 0] = St[o, 0]
            S[p0 + q, 1] = St[o, 1]
            S[p0 + q, 2] = St[o, 2]
    return i, j, D, S, offsets


@numba.njit(cache=True)
def _max_displacement(a, b):
    """Largest |a[k] - b[k]| over rows (a, b of shape (n, 3))."""
    m = 0.0
    for k in range(a.shape[0]):
        dx = a[k, 0] - b[k, 0]
        dy = a[k, 1] - b[k, 1]
        dz = a[k, 2] - b[k, 2]
        d = dx * dx + dy * dy + dz * dz
        if d > m:
            m = d
    return math.sqrt(m)


@numba.njit(cache=True)
def min_length(D):
    """Shortest row length of ``D`` (n, 3) (inf for no rows): the closest pair of a
    frame's pair vectors in one pass, without the (n,) array of norms."""
    m = np.inf
    for k in range(D.shape[0]):
        d = D[k, 0] * D[k, 0] + D[k, 1] * D[k, 1] + D[k, 2] * D[k, 2]
        if d < m:
            m = d
    return math.sqrt(m)


@numba.njit(cache=True)
def _shift_vectors(S, cell):
    """``S @ cell`` (n, 3) for integer image shifts ``S`` (n, 3), each component summed
    as :func:`_search` sums it (so pair vectors from either are bit-identical)."""
    out = np.empty((S.shape[0], 3))
    for p in range(S.shape[0]):
        s0 = S[p, 0]
        s1 = S[p, 1]
        s2 = S[p, 2]
        for a in range(3):
            out[p, a] = s0 * cell[0, a] + s1 * cell[1, a] + s2 * cell[2, a]
    return out


@numba.njit(cache=True)
def _filter_pairs(pos, shifts, ci, cj, cS, coff, cutoff):
    """Candidate pairs (ci, cj, cS; CSR offsets coff; their :func:`_shift_vectors`
    ``shifts`` for the current cell) with ``|D| <= cutoff`` now.

    D is evaluated exactly as :func:`_search` evaluates it. One pass without branches
    on the distance test: every candidate is written at the next free row and the row
    is kept by advancing past it.
    """
    n_atoms = coff.shape[0] - 1
    cut2 = cutoff * cutoff
    P = ci.shape[0]
    offsets = np.zeros(n_atoms + 1, dtype=np.int64)
    i_out = np.empty(P, dtype=np.int64)
    j_out = np.empty(P, dtype=np.int64)
    D_out = np.empty((P, 3))
    S_out = np.empty((P, 3), dtype=np.int64)
    k = 0
    for a in range(n_atoms):
        for p in range(coff[a], coff[a + 1]):
            i = ci[p]
            j = cj[p]
            dx = (pos[j, 0] - pos[i, 0]) + shifts[p, 0]
            dy = (pos[j, 1] - pos[i, 1]) + shifts[p, 1]
            dz = (pos[j, 2] - pos[i, 2]) + shifts[p, 2]
            i_out[k] = i
            j_out[k] = j
            D_out[k, 0] = dx
            D_out[k, 1] = dy
            D_out[k, 2] = dz
            S_out[k, 0] = cS[p, 0]
            S_out[k, 1] = cS[p, 1]
            S_out[k, 2] = cS[p, 2]
            k += np.int64(dx * dx + dy * dy + dz * dz <= cut2)
        offsets[a + 1] = k
    return i_out[:k], j_out[:k], D_out[:k], S_out[:k], offsets
