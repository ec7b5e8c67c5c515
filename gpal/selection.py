"""Choosing what to label: farthest-point sampling, variance and information-gain rules.

Every public function here is pure: it takes arrays (descriptors, variances,
covariances) and returns indices or scores. Nothing here knows about ASE, kernels or the
sparse GP, so the same functions pick bootstrap frames, sparse environments and
on-the-fly batches.

Geometry-based selection (no model needed)
    :func:`farthest_point_sampling` (rows of a descriptor matrix),
    :func:`farthest_point_sampling_from` (continuing from an existing selection),
    :func:`frame_farthest_point_sampling` (whole frames, kernel mean-embedding
    distance), :func:`cur_selection` (CUR leverage-score sampling),
    :func:`random_selection`.

Model-based selection (Bayesian optimal design for a GP with Gaussian noise)
    The information gain of one noisy label y = f(x) + ε, ε ~ N(0, σ_n²), about f is
    ``IG(x) = ½ log(1 + σ²(x) / σ_n²(x))``, a monotone function of σ²/σ_n², so a single
    pick is the candidate of largest variance-to-noise ratio
    (:func:`select_by_variance`, :func:`select_frames_by_variance`). For a batch, the
    information gain of the set S is ``½ log det(I + Σ_n^{-1/2} K_SS Σ_n^{-1/2})``; it
    is submodular and monotone, so greedy maximisation is within (1 - 1/e) of the best
    subset (Nemhauser et al. 1978; Krause & Guestrin 2005). The greedy step is "take the
    largest posterior variance-to-noise ratio, then condition on that label":
    :func:`greedy_batch` (dense covariance or a column callable) and
    :func:`greedy_batch_lowrank` (cov = A Aᵀ + diag(d), O(n r) per pick). Because a GP's
    variance does not depend on the labels, a whole batch is chosen before any oracle
    call.

Targeted acquisition
    :func:`targeted_acquisition` mixes global information gain with the variance
    reduction the label would bring on a target set (NEB images, a collective-variable
    grid, a subset of atoms); :func:`greedy_targeted_batch` is its batch form and
    :class:`AcquisitionSchedule` moves the mixing weight from exploration toward the
    target as the global uncertainty falls.

Tie-breaking is the same everywhere: among equal scores the lowest index wins (the
behaviour of :func:`numpy.argmax` and of a stable sort).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Callable, Sequence, Union

import numba
import numpy as np

__all__ = [
    "farthest_point_sampling",
    "farthest_point_sampling_from",
    "frame_farthest_point_sampling",
    "information_gain",
    "select_by_variance",
    "select_frames_by_variance",
    "LowRankCovariance",
    "greedy_batch",
    "greedy_batch_lowrank",
    "targeted_acquisition",
    "greedy_targeted_batch",
    "AcquisitionSchedule",
    "cur_selection",
    "random_selection",
]

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

RandomState = Union[None, int, np.random.Generator]


# --------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------
def _check_option(name: str, value, valid: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in valid:
        raise ValueError(
            f"{name} must be one of {{{', '.join(repr(v) for v in valid)}}}; "
            f"got {value!r}"
        )
    return value


def _check_finite(name: str, a: np.ndarray) -> None:
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or infinite values")


def _as_2d(name: str, X, *, min_rows: int = 1) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array, got shape {X.shape}")
    if X.shape[0] < min_rows or X.shape[1] < 1:
        raise ValueError(
            f"{name} must have at least {min_rows} row(s) and 1 column, got {X.shape}"
        )
    _check_finite(name, X)
    return np.ascontiguousarray(X)


def _check_n_select(n_select, n: int, *, name: str = "n_select") -> int:
    if isinstance(n_select, (bool, np.bool_)) or not isinstance(
        n_select, numbers.Integral
    ):
        raise ValueError(f"{name} must be an integer, got {n_select!r}")
    n_select = int(n_select)
    if not 0 <= n_select <= n:
        raise ValueError(
            f"{name} must be between 0 and the number of candidates ({n}), "
            f"got {n_select}"
        )
    return n_select


def _check_noise(noise_variance, n: int) -> np.ndarray:
    noise = np.asarray(noise_variance, dtype=np.float64)
    if noise.ndim == 0:
        noise = np.full(n, float(noise))
    elif noise.shape != (n,):
        raise ValueError(
            f"noise_variance must be a float or have shape ({n},), "
            f"got shape {noise.shape}"
        )
    _check_finite("noise_variance", noise)
    if np.any(noise <= 0):
        raise ValueError(
            "noise_variance must be strictly positive "
            "(information gain is infinite at zero noise)"
        )
    return noise


def _check_variance(name: str, variance, *, ndim: int = 1) -> np.ndarray:
    v = np.asarray(variance, dtype=np.float64)
    if v.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-D array, got shape {v.shape}")
    _check_finite(name, v)
    if np.any(v < 0):
        raise ValueError(
            f"{name} must be non-negative (a variance, not a signed quantity)"
        )
    return v


def _check_weight(weight) -> float:
    w = float(weight)
    if not (0.0 <= w <= 1.0):
        raise ValueError(f"weight must be in [0, 1], got {weight!r}")
    return w


def _rng(random_state: RandomState) -> np.random.Generator:
    return np.random.default_rng(random_state)


# --------------------------------------------------------------------------------------
# farthest-point sampling
# --------------------------------------------------------------------------------------
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
# --------------------------------------------------------------------------------------
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


def _rank(score: np.ndarray, n_select, threshold) -> np.ndarray:
    order = np.argsort(-score, kind="stable")  # descending, ties -> lowest index
    if threshold is not None:
        threshold = float(threshold)
        if not np.isfinite(threshold):
            raise ValueError(f"threshold must be finite, got {threshold!r}")
        order = order[score[order] > threshold]
    if n_select is not None:
        n_select = _check_n_select(n_select, score.shape[0])
        order = order[:n_select]
    return order.astype(np.int64)


def select_by_variance(
    variance,
    noise_variance,
    n_select: int | None = None,
    threshold: float | None = None,
    *,
    return_scores: bool = False,
):
    """Rank candidates by the information gain of a label, most informative first.

    The score is ``IG = ½ log(1 + σ²/σ_n²)`` (nats), which orders candidates exactly as
    the variance-to-noise ratio σ²/σ_n² does; with a constant noise it is the
    maximum-variance rule.

    Parameters
    ----------
    variance : array_like of shape (n,)
        Posterior variance of each candidate (non-negative).
    noise_variance : float or array_like of shape (n,)
        Label-noise variance (strictly positive).
    n_select : int or None
        Keep at most this many.
    threshold : float or None
        Keep only candidates with ``IG > threshold`` (nats). A threshold on the standard
        deviation, σ > s_t, with constant noise σ_n, is
        ``threshold = ½ log(1 + s_t²/σ_n²)``.
    return_scores : bool, default False
        Also return the information gain of every candidate (shape (n,)).

    Returns
    -------
    indices : ndarray of shape (k,), int64
        Sorted by decreasing information gain; ties go to the lowest index. With neither
        ``n_select`` nor ``threshold`` this is the full ranking.
    scores : ndarray of shape (n,), only if ``return_scores``
    """
    score = information_gain(variance, noise_variance)
    idx = _rank(score, n_select, threshold)
    return (idx, score) if return_scores else idx


def select_frames_by_variance(
    frames_variance,
    noise_variance,
    n_select: int | None = None,
    threshold: float | None = None,
    *,
    reduce: str = "max",
    return_scores: bool = False,
):
    """Rank frames by the information gain of their atoms' labels.

    Each frame's score is a reduction of the per-value information gains
    ``½ log(1 + σ²/σ_n²)`` of its atoms (or force components):

    - ``"max"``: the most informative single value; "is any atom uncertain?"
    - ``"sum"``: the sum over values, an upper bound on the frame's joint information
      gain (Hadamard's inequality, ``log det(I + K/σ²) <= Σ log(1 + K_ii/σ²)``), reached
      when the values are uncorrelated; it favours large frames.

    Parameters
    ----------
    frames_variance : sequence of array_like
        One array per frame of per-atom variances, shape (n_atoms_f,) or (n_atoms_f, 3).
    noise_variance : float or sequence of array_like
        A constant, or one array per frame with the shape of that frame's variances.
    n_select, threshold, return_scores
        As in :func:`select_by_variance` (threshold on the frame score, nats).
    reduce : {"max", "sum"}, default "max"

    Returns
    -------
    indices : ndarray of shape (k,), int64
    scores : ndarray of shape (n_frames,), only if ``return_scores``
    """
    _check_option("reduce", reduce, FRAME_REDUCTIONS)
    frames = list(frames_variance)
    if not frames:
        raise ValueError("frames_variance is empty")
    scalar_noise = isinstance(noise_variance, numbers.Real) or (
        isinstance(noise_variance, np.ndarray) and noise_variance.ndim == 0
    )
    if not scalar_noise:
        noises = list(noise_variance)
        if len(noises) != len(frames):
            raise ValueError(
                f"noise_variance has {len(noises)} frames, "
                f"frames_variance has {len(frames)}"
            )
    score = np.empty(len(frames))
    for k, v in enumerate(frames):
        v = np.asarray(v, dtype=np.float64)
        if v.ndim not in (1, 2) or v.size == 0:
            raise ValueError(
                f"frame {k}: variances must be a non-empty array of shape "
                "(n_atoms,) or (n_atoms, 3)"
            )
        nv = noise_variance if scalar_noise else np.asarray(noises[k], dtype=np.float64)
        if not scalar_noise and nv.shape != v.shape:
            raise ValueError(
                f"frame {k}: noise_variance shape {nv.shape} "
                f"!= variance shape {v.shape}"
            )
        ig = information_gain(v.ravel(), nv if scalar_noise else nv.ravel())
        score[k] = ig.max() if reduce == "max" else ig.sum()
    idx = _rank(score, n_select, threshold)
    return (idx, score) if return_scores else idx


# --------------------------------------------------------------------------------------
# greedy batch selection (greedy log-det / information-gain maximisation)
# --------------------------------------------------------------------------------------
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
        l = col / math.sqrt(col[i] + noise_i)  # noqa: E741
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


def _greedy(post, noise: np.ndarray, n_select: int, return_gains: bool):
    n = noise.shape[0]
    post.reserve(n_select)
    picks = np.empty(n_select, dtype=np.int64)
    gains = np.empty(n_select)
    available = np.ones(n, dtype=bool)
    for k in range(n_select):
        ratio = np.where(available, post.variance / noise, -np.inf)
        i = int(np.argmax(ratio))
        picks[k] = i
        gains[k] = 0.5 * math.log1p(max(post.variance[i], 0.0) / noise[i])
        available[i] = False
        if k + 1 < n_select:
            post.condition(i, noise[i], post.column(i))
    return (picks, gains) if return_gains else picks


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
    return _greedy(post, noise, n_select, return_gains)


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
    return _greedy(
        _LowRankPosterior(cov.factor, cov.diagonal), noise, n_select, return_gains
    )


# --------------------------------------------------------------------------------------
# targeted acquisition
# --------------------------------------------------------------------------------------
def _candidate_variance(cov_cand) -> np.ndarray:
    if isinstance(cov_cand, LowRankCovariance):
        return cov_cand.diag()
    C = np.asarray(cov_cand, dtype=np.float64)
    if C.ndim == 1:
        return _check_variance("cov_cand", C)
    if C.ndim == 2 and C.shape[0] == C.shape[1]:
        _check_finite("cov_cand", C)
        d = np.diag(C).copy()
        if np.any(d < 0):
            raise ValueError("cov_cand has negative diagonal entries")
        return d
    raise ValueError(
        "cov_cand must be an (n, n) covariance, an (n,) variance or a "
        f"LowRankCovariance; got shape {C.shape}"
    )


def _check_target(
    cov_cand_target, target_variance, n: int
) -> tuple[np.ndarray, np.ndarray]:
    C_ct = np.asarray(cov_cand_target, dtype=np.float64)
    if C_ct.ndim != 2 or C_ct.shape[0] != n:
        raise ValueError(
            f"cov_cand_target must have shape ({n}, n_target), got {C_ct.shape}"
        )
    _check_finite("cov_cand_target", C_ct)
    tv = _check_variance("target_variance", target_variance)
    if tv.shape != (C_ct.shape[1],):
        raise ValueError(
            f"target_variance must have shape ({C_ct.shape[1]},), got {tv.shape}"
        )
    return C_ct, tv


def _acquisition(var, noise, C_ct, target_var, weight):
    ig = 0.5 * np.log1p(np.maximum(var, 0.0) / noise)
    total = float(np.sum(target_var))
    if total > 0:
        vr = np.einsum("ij,ij->i", C_ct, C_ct) / (np.maximum(var, 0.0) + noise) / total
    else:
        vr = np.zeros_like(var)
    return weight * ig + (1.0 - weight) * vr


def targeted_acquisition(
    cov_cand,
    cov_cand_target,
    noise_variance,
    weight: float,
    *,
    target_variance,
) -> np.ndarray:
    """Acquisition values mixing global information gain and target variance reduction.

    ::

        a(x) = w · ½ log(1 + σ²(x)/σ_n²(x))
             + (1 - w) · [Σ_t cov(x, t)² / (σ²(x) + σ_n²(x))] / Σ_t var(t)

    The first term is the information gain of labelling x (nats); the second is the
    total posterior variance removed from the target set T by that label (the exact
    rank-1 GP update), as a fraction of T's current total variance (in [0, 1]). Note the
    two terms have different natural scales (nats vs a fraction); ``weight`` (see
    :class:`AcquisitionSchedule`) sets the trade-off.

    Parameters
    ----------
    cov_cand : ndarray of shape (n, n) or (n,), or LowRankCovariance
        Candidate posterior covariance (only its diagonal σ²(x) is used here).
    cov_cand_target : ndarray of shape (n, n_target)
        Posterior cross-covariance between candidates and target points.
    noise_variance : float or array_like of shape (n,)
    weight : float in [0, 1]
        w = 1 is pure exploration, w = 0 pure targeting.
    target_variance : array_like of shape (n_target,)
        Posterior variance of the target points (keyword-only; if it sums to zero the
        target term is zero).

    Returns
    -------
    ndarray of shape (n,)
        Acquisition value of each candidate (larger is better).
    """
    var = _candidate_variance(cov_cand)
    n = var.shape[0]
    noise = _check_noise(noise_variance, n)
    C_ct, tv = _check_target(cov_cand_target, target_variance, n)
    return _acquisition(var, noise, C_ct, tv, _check_weight(weight))


def greedy_targeted_batch(
    cov_cand,
    cov_cand_target,
    noise_variance,
    n_select: int,
    weight: float,
    *,
    target_variance,
    diag=None,
    return_scores: bool = False,
):
    """Greedy batch for :func:`targeted_acquisition`, conditioning between picks.

    After each pick i every posterior quantity of the joint (candidates + targets)
    Gaussian is updated by the rank-1 rule
    ``C <- C - C[:, i] C[i, :] / (C[i, i] + σ_n,i²)``: the candidate covariance (as in
    :func:`greedy_batch`), the candidate-target cross-covariance and the target
    variances, so the next pick maximises ``a(x)`` evaluated on the posterior given the
    labels already chosen (the target term is then normalised by the target's remaining
    total variance). With ``weight=1`` this is :func:`greedy_batch`.

    Parameters
    ----------
    cov_cand : ndarray of shape (n, n), LowRankCovariance or callable
        As in :func:`greedy_batch` (a callable needs ``diag``).
    cov_cand_target : ndarray of shape (n, n_target)
    noise_variance : float or array_like of shape (n,)
    n_select : int
    weight : float in [0, 1]
    target_variance : array_like of shape (n_target,)
    diag : array_like of shape (n,), optional
    return_scores : bool, default False
        Also return the acquisition value of each pick at the time it was picked.

    Returns
    -------
    indices : ndarray of shape (n_select,), int64 (ties: lowest index)
    scores : ndarray of shape (n_select,), only if ``return_scores``
    """
    weight = _check_weight(weight)
    post = _make_posterior(cov_cand, diag, "cov_cand")
    n = post.variance.shape[0]
    n_select = _check_n_select(n_select, n)
    post.reserve(n_select)
    noise = _check_noise(noise_variance, n)
    C_ct, tv = _check_target(cov_cand_target, target_variance, n)
    C_ct = C_ct.copy()
    tv = tv.copy()
    picks = np.empty(n_select, dtype=np.int64)
    scores = np.empty(n_select)
    available = np.ones(n, dtype=bool)
    for k in range(n_select):
        a = _acquisition(post.variance, noise, C_ct, tv, weight)
        a[~available] = -np.inf
        i = int(np.argmax(a))
        picks[k] = i
        scores[k] = a[i]
        available[i] = False
        if k + 1 < n_select:
            col = post.column(i)
            s = col[i] + noise[i]
            row_t = C_ct[i].copy()
            tv -= row_t * row_t / s
            np.maximum(tv, 0.0, out=tv)
            C_ct -= np.outer(col, row_t / s)
            post.condition(i, noise[i], col)
    return (picks, scores) if return_scores else picks


class AcquisitionSchedule:
    """Exploration weight for :func:`targeted_acquisition`, falling with uncertainty.

    With u the current global uncertainty (e.g. the mean calibrated force std on the
    sampled frames) and u₀ the reference (the first value passed to :meth:`update`,
    unless given)::

        r = u / u₀,    w(u) = w_floor + (w_start - w_floor) · min(r, 1) ** exponent

    so w = w_start while the uncertainty is at (or above) its initial level, falls
    toward w_floor as it shrinks, and is non-increasing in u's decrease. It follows the
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
        """w for a given global uncertainty (needs a reference; does not record)."""
        u = self._check_u(uncertainty)
        if self.reference is None:
            raise ValueError(
                "no reference uncertainty yet: call update() first or pass reference="
            )
        r = min(u / self.reference, 1.0)
        return self.w_floor + (self.w_start - self.w_floor) * r**self.exponent

    def update(self, uncertainty: float) -> float:
        """Record a new global uncertainty and return the weight to use now."""
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
# CUR and random
# --------------------------------------------------------------------------------------
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

    Returns
    -------
    ndarray of shape (n_select,), int64
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
