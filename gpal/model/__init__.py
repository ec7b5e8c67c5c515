"""gpal's potential: a sparse GP on local environments, energy as a sum of local energies.

:mod:`gpal.model.potential`
    :class:`SparseGP` (fit, predict with stds, update, calibration, Δ-learning) and
    :func:`load`.
:mod:`gpal.model.rows`
    Observation rows: kernel rows from sparse weights to a frame's energy, forces and
    stress (:meth:`SparseGP.observation_rows`).
:mod:`gpal.model.sparse_set`
    Which environments the weights sit on and how the set grows.
:mod:`gpal.model.evidence`
    Hyperparameters (kernel exponent, SOAP l_max and sigma, noises) by the evidence.
:mod:`gpal.model.files`
    ``save`` / ``load`` (``.npz`` + JSON, no pickle).
:mod:`gpal.baseline`
    Δ-learning on top of a baseline calculator (outside this package: model files name
    baselines by import path, ``gpal.baseline:ZeroBaseline``).
:mod:`gpal.model.defaults`
    Defaults and bounds (noises, candidates, memory budget), :func:`default_descriptor`.
"""

from .defaults import (  # noqa: F401
    DEFAULT_MEMORY_BUDGET_GB,
    DEFAULT_NOISE,
    L_MAX_CANDIDATES,
    NOISE_BOUNDS,
    SIGMA_CANDIDATES,
    SIGNAL_VARIANCE_BOUNDS,
    ZETA_CANDIDATES,
    default_descriptor,
)
from .files import load  # noqa: F401
from .potential import ObservationRows, SparseGP  # noqa: F401

__all__ = ["SparseGP", "ObservationRows", "load", "default_descriptor", "ZETA_CANDIDATES", "L_MAX_CANDIDATES",
           "SIGMA_CANDIDATES",           "DEFAULT_NOISE", "NOISE_BOUNDS", "SIGNAL_VARIANCE_BOUNDS", "DEFAULT_MEMORY_BUDGET_GB"]
