"""Choosing by geometry (no model): farthest-point sampling, CUR, random.

Every function takes arrays (descriptor rows, or one descriptor matrix per frame) and
returns indices; nothing here knows about ASE, kernels or the GP, so the same functions
pick bootstrap frames and sparse environments. Ties: the lowest index wins.
"""

from __future__ import annotations

import math
import numbers

import numba
import numpy as np

from .._threads import policy as _thread_policy
from ._checks import (
    RandomState,
    _as_2d,
    _check_finite,
    _check_n_select,
    _check_option,
    _rng,
)

__all__ = ["farthest_point_sampling", "farthest_point_sampling_from", "frame_farthest_point_sampling",
           "cur_selection", "random_selection", "FPS_METRICS", "FRAME_REDUCTIONS", "CUR_METHODS"]

FPS_METRICS = ("euclidean", "cosine")
FRAME_REDUCTIONS = ("max", "sum")
CUR_METHODS = ("sample",)

# Relative safety margin of the triangle-inequality pruning in the FPS kernel. A point
# is skipped only if the bound proves the new centre is farther by at least this
# relative amount, far above floating-point rounding of a squared distance (~F * 1e-16),
# so the pruned loop makes exactly the decisions of the unpruned one.
_PRUNE_MARGIN = 1e-9
# The FPS kernel switches to a BLAS screen for a pick when more than _DENSE_OPEN of the
# points pass the triangle-inequality screen and fewer than _DENSE_IMPROVED of those got
# closer at the previous pick (high-dimensional, unstructured data); see _fps_kernel.
_DENSE_OPEN = 0.5
_DENSE_IMPROVED = 0.2


_LANES = (
    8  # independent partial sums in the distance loop (vectorisable without fastmath)
)


@numba.njit(cache=True)
def _sqdist_to(X, i, scale_i, c, acc):
    """Squared euclidean distance ``|scale_i * X[i] - c|²``.

    ``c`` is the (already scaled) centre row and ``acc`` a work buffer of ``_LANES``
    partial sums: the inner loop over lanes is element-wise, so LLVM vectorises it
    without fastmath (a single running sum is a serial dependency chain that it may not
    reorder).
    """
    F = X.shape[1]
    W = acc.shape[0]
    for w in range(W):
        acc[w] = 0.0
    nb = F // W
    for blk in range(nb):
        base = blk * W
        for w in range(W):
            d = X[i, base + w] * scale_i - c[base + w]
            acc[w] += d * d
    s = 0.0
    for f in range(nb * W, F):
        d = X[i, f] * scale_i - c[f]
        s += d * d
    for w in range(W):
        s += acc[w]
    return s


@numba.njit(cache=True)
def _fps_kernel(
    X, row_scale, init_d2, start, n_select, margin, dense_open, dense_improved
):
    """Farthest-point sampling on the rows of ``X * row_scale[:, None]``.

    ``row_scale`` is all ones for the euclidean metric and ``1/|x|`` for the cosine one.
    ``init_d2`` (n,) holds squared distances to an already selected set outside X
    (``inf`` for none); ``start`` is the first pick, or -1 for the argmax of
    ``init_d2``. Returns ``(picks (n_select,), pick_d2 (n_select,), n_evaluated
    (n_select,))``: ``pick_d2[k]`` is the squared distance of pick k to the nearest
    earlier pick or external point (``inf`` if there is none) and ``n_evaluated[k]``
    the number of exact point distances computed for it.

    State per point x: ``mind[x]`` = squared distance to the nearest pick so far (-1
    once x is itself picked) and ``owner[x]`` = 1 + which pick that is (0: the external
    set or none, which no screen can use). Every stored distance is an exact
    direct-difference evaluation; two O(1)-per-point screens decide which points need
    one when centre c is added, and neither changes a decision of the plain algorithm:

    1. triangle inequality: x can only get closer if d(c, owner) < 2 d(x, owner), so x
       is skipped when ``d²(c, owner) > 4 mind[x] (1 + margin)`` (the centre-to-centre
       distances cost O(k F) per pick). This removes most of the work on descriptor data
       of low intrinsic dimension.
    2. when screen 1 leaves more than ``dense_open`` of the points and fewer than
       ``dense_improved`` of the previous pick's open points got closer (the pattern of
       high-dimensional, unstructured data), one BLAS matrix-vector product gives
       ``|x|² + |c|² - 2 x·c`` for all points, and x is skipped when that value minus a
       bound on its rounding error, ``4 (F + 4) u (|x| + |c|)²`` (4x the standard
       ``γ_{F+4}`` bound for any summation order), exceeds ``mind[x] (1 + margin)``.

    Selection is the largest ``mind``; a strict ``>`` over increasing x gives ties to
    the lowest index.
    """
    n, F = X.shape
    picks = np.empty(n_select, dtype=np.int64)
    pick_d2 = np.empty(n_select, dtype=np.float64)
    n_eval = np.zeros(n_select, dtype=np.int64)
    if n_select == 0:
        return picks, pick_d2, n_eval
    mind = init_d2.copy()
    owner = np.zeros(n, dtype=np.int64)
    norm = np.empty(n, dtype=np.float64)
    cc = np.empty(n_select + 1, dtype=np.float64)
    cc[0] = 0.0  # owner 0 (external / none): never screened out
    centre = np.zeros(F, dtype=np.float64)
    acc = np.empty(_LANES, dtype=np.float64)
    scale = 4.0 * (1.0 + margin)
    round_tol = 4.0 * (F + 4) * 2.220446049250313e-16

    for x in range(n):  # |x̂| (distance to the zero vector)
        norm[x] = np.sqrt(_sqdist_to(X, x, row_scale[x], centre, acc))
    best = start
    if start < 0:
        best_val = -1.0
        for x in range(n):
            if mind[x] > best_val:
                best_val = mind[x]
                best = x

    open_prev = n
    improved_prev = n
    dots = np.empty(0, dtype=np.float64)
    for k in range(n_select):
        c = best
        picks[k] = c
        pick_d2[k] = mind[c]
        mind[c] = -1.0
        for f in range(F):
            centre[f] = X[c, f] * row_scale[c]
        for j in range(k):
            cc[j + 1] = _sqdist_to(X, picks[j], row_scale[picks[j]], centre, acc)
        n_open = 0
        for x in range(n):
            if cc[owner[x]] <= scale * mind[x]:
                n_open += 1
        use_dense = (
            n_open > dense_open * n and improved_prev < dense_improved * open_prev
        )
        if use_dense:
            dots = np.dot(X, centre)
        nc = norm[c]
        best = -1
        best_val = -1.0
        count = 0
        improved = 0
        for x in range(n):
            m = mind[x]
            if cc[owner[x]] <= scale * m:
                evaluate = True
                if use_dense:
                    s = norm[x] + nc
                    approx = norm[x] * norm[x] + nc * nc - 2.0 * row_scale[x] * dots[x]
                    evaluate = approx - round_tol * s * s <= m * (1.0 + margin)
                if evaluate:
                    count += 1
                    d = _sqdist_to(X, x, row_scale[x], centre, acc)
                    if d < m:
                        mind[x] = d
                        owner[x] = k + 1
                        m = d
                        improved += 1
            if m > best_val:
                best_val = m
                best = x
        n_eval[k] = count
        open_prev = max(n_open, 1)
        improved_prev = improved
    return picks, pick_d2, n_eval


def _resolve_start(start, n: int, random_state: RandomState) -> int:
    if start is None:
        return int(_rng(random_state).integers(n))
    if isinstance(start, (bool, np.bool_)) or not isinstance(start, numbers.Integral):
        raise ValueError(
            f"start must be an integer index or None (random), got {start!r}"
        )
    start = int(start)
    if not 0 <= start < n:
        raise ValueError(f"start must be in [0, {n}), got {start}")
    return start


@_thread_policy()
def farthest_point_sampling(
    X,
    n_select: int,
    *,
    start: int | None = None,
    random_state: RandomState = None,
    metric: str = "euclidean",
    return_distances: bool = False,
):
    """Greedy farthest-point sampling (FPS) of the rows of ``X``.

    Pick 0 is ``start``; pick k is the not-yet-selected row with the largest distance to
    its nearest earlier pick. Ties go to the lowest row index, and a row is never picked
    twice (if ``n_select`` exceeds the number of distinct rows, duplicates come next,
    lowest index first).

    Parameters
    ----------
    X : array_like of shape (n_samples, n_features)
        Rows to choose from (e.g. SOAP vectors). Copied to C-contiguous float64 if
        needed.
    n_select : int
        Number of rows to pick, ``0 <= n_select <= n_samples``.
    start : int or None, default None
        Index of the first pick; None draws it uniformly with ``random_state``.
    random_state : int, numpy.random.Generator or None
        Only used when ``start`` is None.
    metric : {"euclidean", "cosine"}, default "euclidean"
        ``"cosine"`` is the euclidean distance between L2-normalised rows,
        ``|x̂ - ẑ| = sqrt(2 - 2 cos(x, z))`` (the metric induced by the normalised
        dot-product kernel with zeta=1). Rows of zero norm are rejected.
    return_distances : bool, default False
        Also return the distance of every pick to its nearest earlier pick.

    Returns
    -------
    indices : ndarray of shape (n_select,), int64
        Picked rows in the order picked.
    distances : ndarray of shape (n_select,)
        Only if ``return_distances``:
        ``distances[k] = min_{j<k} d(X[idx[k]], X[idx[j]])``, non-increasing, with
        ``distances[0] = inf``. ``distances[-1]`` is the covering radius of the first
        ``n_select - 1`` picks.

    Notes
    -----
    Time O(n_samples · n_select · n_features) in the worst case and O(n_samples) extra
    memory (besides a float64 copy of ``X`` if it was not one). The numba kernel skips
    the distance evaluation for points that the triangle inequality proves cannot get
    closer to the new pick; on descriptor data of low intrinsic dimension this removes
    most of the work (100,000 x 252 Cu SOAP vectors, 1000 picks: ~2 s). Where that
    screen fails (high-dimensional unstructured data) it screens with one BLAS
    matrix-vector product per pick instead. Both screens keep a relative safety margin
    of 1e-9 over rounding, and every stored distance is computed directly as
    ``Σ (x - c)²``, so the picks are exactly those of the plain algorithm.
    """
    X = _as_2d("X", X)
    n = X.shape[0]
    n_select = _check_n_select(n_select, n)
    row_scale = _row_scale(X, metric)
    start = _resolve_start(start, n, random_state)
    picks, pick_d2, _ = _fps_kernel(
        X,
        row_scale,
        np.full(n, np.inf),
        start,
        n_select,
        _PRUNE_MARGIN,
        _DENSE_OPEN,
        _DENSE_IMPROVED,
    )
    if return_distances:
        return picks, np.sqrt(pick_d2)
    return picks


@_thread_policy()
def farthest_point_sampling_from(
    X,
    n_select: int,
    initial_distances,
    *,
    metric: str = "euclidean",
    return_distances: bool = False,
):
    """Continue farthest-point sampling from points already selected elsewhere.

    Like :func:`farthest_point_sampling`, but the rows of ``X`` start with the given
    distances to an existing selection that is not part of ``X`` (e.g. the current
    sparse set when new environments arrive). Pick 0 is the row with the largest
    initial distance; later picks use the distance to the nearest of the existing
    selection and the earlier picks. Ties go to the lowest index.

    Parameters
    ----------
    X : array_like of shape (n_samples, n_features)
    n_select : int
    initial_distances : array_like of shape (n_samples,)
        Distance (in ``metric``) of each row to the existing selection; ``inf`` where
        there is none (all ``inf``: plain FPS starting at the first row).
    metric : {"euclidean", "cosine"}, default "euclidean"
    return_distances : bool, default False
        Also return each pick's distance to the nearest earlier pick or existing point.

    Returns
    -------
    indices : ndarray of shape (n_select,), int64
    distances : ndarray of shape (n_select,), only if ``return_distances``
    """
    X = _as_2d("X", X)
    n = X.shape[0]
    n_select = _check_n_select(n_select, n)
    row_scale = _row_scale(X, metric)
    d0 = np.asarray(initial_distances, dtype=np.float64)
    if d0.shape != (n,):
        raise ValueError(f"initial_distances must have shape ({n},), got {d0.shape}")
    if np.any(np.isnan(d0)) or np.any(d0 < 0):
        raise ValueError(
            "initial_distances must be non-negative (inf allowed), not NaN"
        )
    picks, pick_d2, _ = _fps_kernel(
        X,
        row_scale,
        np.ascontiguousarray(d0 * d0),
        -1,
        n_select,
        _PRUNE_MARGIN,
        _DENSE_OPEN,
        _DENSE_IMPROVED,
    )
    if return_distances:
        return picks, np.sqrt(pick_d2)
    return picks


def _row_scale(X: np.ndarray, metric: str) -> np.ndarray:
    _check_option("metric", metric, FPS_METRICS)
    if metric == "euclidean":
        return np.ones(X.shape[0])
    norms = np.sqrt(np.einsum("ij,ij->i", X, X))
    if np.any(norms == 0):
        raise ValueError("metric='cosine' needs rows of non-zero norm; X has zero rows")
    return 1.0 / norms


def _frame_list(frames_X) -> list[np.ndarray]:
    if isinstance(frames_X, np.ndarray) and frames_X.ndim == 2:
        raise ValueError(
            "frames_X must be a list of (n_atoms_f, n_features) arrays, one per "
            "frame, not one 2-D array"
        )
    frames = [np.asarray(f, dtype=np.float64) for f in frames_X]
    if not frames:
        raise ValueError("frames_X is empty")
    n_features = None
    for k, f in enumerate(frames):
        if f.ndim != 2 or f.shape[0] < 1:
            raise ValueError(
                f"frame {k} must be a 2-D array with at least one row, "
                f"got shape {f.shape}"
            )
        if n_features is None:
            n_features = f.shape[1]
        elif f.shape[1] != n_features:
            raise ValueError(
                f"frame {k} has {f.shape[1]} features, frame 0 has {n_features}"
            )
        _check_finite(f"frame {k}", f)
    return frames


def _normalize_rows(X: np.ndarray, what: str) -> np.ndarray:
    norms = np.sqrt(np.einsum("ij,ij->i", X, X))
    if np.any(norms == 0):
        raise ValueError(
            f"{what} contains rows of zero norm; "
            "the normalised dot product is undefined"
        )
    return X / norms[:, None]


@_thread_policy()
def frame_farthest_point_sampling(
    frames_X,
    n_select: int,
    *,
    zeta: int = 1,
    start: int | None = None,
    random_state: RandomState = None,
    return_distances: bool = False,
):
    """Farthest-point sampling of whole frames (structures) with a kernel distance.

    The distance between frames A and B (atom descriptors ``a_i``, ``b_j``) is the
    maximum-mean-discrepancy distance of the normalised dot-product kernel
    ``k(x, z) = (x̂·ẑ)^zeta``::

        d(A, B)² = k̄(A, A) + k̄(B, B) - 2 k̄(A, B)
        k̄(A, B)  = mean_{i∈A, j∈B} k(a_i, b_j)

    i.e. the distance between the frames' average kernel feature maps. It is a
    pseudo-metric (triangle inequality holds; frames with the same distribution of
    environments are at distance 0, and for ``zeta=1`` so are frames whose mean
    normalised descriptors coincide), size-intensive (a supercell copy of a frame is at
    distance 0), and it uses the similarity the GP uses. That is why it was chosen over
    the distance between summed descriptors (extensive: it separates sizes, not
    chemistry) or a best-match (Hausdorff) distance (costlier, and driven by one atom).

    For ``zeta=1`` the feature map is the normalised descriptor itself, so
    ``d(A, B) = |mean_i â_i - mean_j b̂_j|``: each frame is reduced to its mean
    normalised descriptor in O(n_atoms · F) and the picks are those of
    :func:`farthest_point_sampling` on these means (exact, not an approximation). For
    an integer ``zeta > 1`` the mean kernels are computed explicitly, costing
    O(n_atoms_total · n_atoms_pick · F) per pick plus O(Σ_f n_atoms_f² F) once.

    Parameters
    ----------
    frames_X : sequence of array_like, each of shape (n_atoms_f, n_features)
        Descriptors of each frame's atoms.
    n_select : int
        Number of frames to pick.
    zeta : int, default 1
        Exponent of the normalised dot-product kernel (positive integer).
    start, random_state, return_distances
        As in :func:`farthest_point_sampling` (ties: lowest frame index).

    Returns
    -------
    indices : ndarray of shape (n_select,), int64
    distances : ndarray of shape (n_select,), only if ``return_distances``
    """
    frames = _frame_list(frames_X)
    n_frames = len(frames)
    n_select = _check_n_select(n_select, n_frames)
    if (
        isinstance(zeta, (bool, np.bool_))
        or not isinstance(zeta, numbers.Integral)
        or zeta < 1
    ):
        raise ValueError(f"zeta must be a positive integer, got {zeta!r}")
    zeta = int(zeta)
    start = _resolve_start(start, n_frames, random_state)
    if zeta == 1:
        means = np.empty((n_frames, frames[0].shape[1]))
        for k, f in enumerate(frames):
            means[k] = _normalize_rows(f, f"frame {k}").mean(axis=0)
        return farthest_point_sampling(
            means, n_select, start=start, return_distances=return_distances
        )

    # general zeta: explicit mean kernels on all atoms stacked, reduced per frame
    normed = [_normalize_rows(f, f"frame {k}") for k, f in enumerate(frames)]
    all_atoms = np.concatenate(normed, axis=0)  # [N_tot, F]
    offsets = np.concatenate([[0], np.cumsum([f.shape[0] for f in normed])])
    counts = np.diff(offsets).astype(np.float64)
    self_k = np.array([np.mean((f @ f.T) ** zeta) for f in normed])  # k̄(A, A)

    def mean_kernel_to(c: int) -> np.ndarray:
        K = (all_atoms @ normed[c].T) ** zeta  # [N_tot, n_c]
        return np.add.reduceat(K.sum(axis=1), offsets[:-1]) / (
            counts * normed[c].shape[0]
        )

    picks = np.empty(n_select, dtype=np.int64)
    dists = np.empty(n_select)
    if n_select:
        mind = np.full(n_frames, np.inf)
        selected = np.zeros(n_frames, dtype=bool)
        c = start
        dists[0] = np.inf
        for k in range(n_select):
            if k > 0:
                masked = np.where(selected, -np.inf, mind)
                c = int(np.argmax(masked))
                dists[k] = math.sqrt(mind[c])
            picks[k] = c
            selected[c] = True
            d2 = np.maximum(self_k + self_k[c] - 2.0 * mean_kernel_to(c), 0.0)
            np.minimum(mind, d2, out=mind)
    if return_distances:
        return picks, dists
    return picks


# --------------------------------------------------------------------------------------
# variance / information-gain ranking


@_thread_policy()
def cur_selection(
    X,
    n_select: int,
    *,
    n_components: int | None = None,
    random_state: RandomState = None,
    method: str = "sample",
    return_leverage: bool = False,
):
    """Row selection by CUR leverage scores (Mahoney & Drineas 2009).

    The leverage of row i is ``π_i = (1/k) Σ_{j<k} U_ij²`` with U the top-k left
    singular vectors of X (Σ π = 1). ``method="sample"`` draws ``n_select`` distinct
    rows with probability proportional to π (numpy's weighted sampling without
    replacement), which is deterministic for a given seed. If fewer than ``n_select``
    rows have non-zero leverage, all of them are taken (largest first) and the rest are
    drawn uniformly.

    Parameters
    ----------
    X : array_like of shape (n_samples, n_features)
    n_select : int
    n_components : int or None
        k; default ``min(n_select, rank(X))``, capped at the numerical rank.
    random_state : int, numpy.random.Generator or None
    method : {"sample"}, default "sample"
    return_leverage : bool, default False
        Also return π, shape (n_samples,).

    Returns
    -------
    indices : ndarray of shape (n_select,), int64 (in draw order)
    leverage : ndarray of shape (n_samples,), only if ``return_leverage``
    """
    X = _as_2d("X", X)
    n = X.shape[0]
    n_select = _check_n_select(n_select, n)
    _check_option("method", method, CUR_METHODS)
    rng = _rng(random_state)
    U, s, _ = np.linalg.svd(X, full_matrices=False)
    tol = s[0] * max(X.shape) * np.finfo(float).eps if s.size else 0.0
    rank = int(np.sum(s > tol))
    if n_components is None:
        k = max(1, min(n_select, rank))
    else:
        if (
            isinstance(n_components, (bool, np.bool_))
            or not isinstance(n_components, numbers.Integral)
            or n_components < 1
        ):
            raise ValueError(
                f"n_components must be a positive integer, got {n_components!r}"
            )
        k = max(1, min(int(n_components), rank))
    if rank == 0:
        lev = np.full(n, 1.0 / n)
    else:
        lev = np.einsum("ij,ij->i", U[:, :k], U[:, :k]) / k
        lev /= lev.sum()
    nonzero = np.flatnonzero(lev > 0)
    if n_select <= nonzero.size:
        idx = rng.choice(n, size=n_select, replace=False, p=lev)
    else:
        first = nonzero[np.argsort(-lev[nonzero], kind="stable")]
        rest = np.setdiff1d(np.arange(n), first)
        idx = np.concatenate(
            [first, rng.choice(rest, size=n_select - first.size, replace=False)]
        )
    idx = np.asarray(idx, dtype=np.int64)
    return (idx, lev) if return_leverage else idx


def random_selection(
    n_samples: int, n_select: int, *, random_state: RandomState = None
) -> np.ndarray:
    """``n_select`` distinct indices in ``range(n_samples)``, uniformly at random.

    Parameters
    ----------
    n_samples : int
        Number of candidates, >= 0.
    n_select : int
        ``0 <= n_select <= n_samples``.
    random_state : int, numpy.random.Generator or None
        Seed or generator (:func:`numpy.random.default_rng`); None: fresh entropy.

    Returns
    -------
    ndarray of shape (n_select,), int64
        In the order drawn (not sorted).

    Raises
    ------
    ValueError
        ``n_samples`` is not a non-negative integer, or ``n_select`` is not an integer
        in [0, n_samples].
    """
    if (
        isinstance(n_samples, (bool, np.bool_))
        or not isinstance(n_samples, numbers.Integral)
        or n_samples < 0
    ):
        raise ValueError(f"n_samples must be a non-negative integer, got {n_samples!r}")
    n_select = _check_n_select(n_select, int(n_samples))
    return (
        _rng(random_state)
        .choice(int(n_samples), size=n_select, replace=False)
        .astype(np.int64)
    )
