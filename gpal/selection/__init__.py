"""Choosing what to label and which environments to keep.

:mod:`gpal.selection.geometry`
    By geometry, no model needed: :func:`farthest_point_sampling` (rows of a descriptor
    matrix), :func:`farthest_point_sampling_from` (continuing an existing selection),
    :func:`frame_farthest_point_sampling` (whole frames, kernel mean-embedding
    distance), :func:`cur_selection` (CUR leverage-score sampling),
    :func:`random_selection`. They pick bootstrap frames and sparse environments.

:mod:`gpal.selection.design`
    By Bayesian optimal design: :func:`information_gain`, the one greedy engine
    :func:`greedy_select` (used by :meth:`gpal.SparseGP.select_frames`, the active
    learner's label-free batches, and :meth:`gpal.TargetSet.choose`), its array forms
    :func:`greedy_batch` and :func:`greedy_batch_lowrank`, and the exploration weight
    :class:`AcquisitionSchedule` of targeted learning.

Every function takes arrays or a posterior and returns indices or scores; ties go to
the lowest index.
"""

from .design import (  # noqa: F401
    AcquisitionSchedule,
    LowRankCovariance,
    greedy_batch,
    greedy_batch_lowrank,
    greedy_select,
    information_gain,
)
from .geometry import (  # noqa: F401
    _PRUNE_MARGIN,
    _fps_kernel,
    cur_selection,
    farthest_point_sampling,
    farthest_point_sampling_from,
    frame_farthest_point_sampling,
    random_selection,
)

__all__ = [
    "farthest_point_sampling",
    "farthest_point_sampling_from",
    "frame_farthest_point_sampling",
    "cur_selection",
    "random_selection",
    "information_gain",
    "greedy_select",
    "LowRankCovariance",
    "greedy_batch",
    "greedy_batch_lowrank",
    "AcquisitionSchedule",
]
