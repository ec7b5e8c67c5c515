"""Is the GP's uncertainty right? Metrics, recalibration, a stopping rule and plots.

Everything acts on arrays: ``error = prediction - reference`` and the predicted standard
deviation ``std`` (same shape, strictly positive), z = error / std.

Metrics
    :func:`uncertainty_metrics` (RMSE, MAE, Gaussian NLL, ZMS = mean z², miscalibration
    area, coverage of the central 1-α interval, Spearman ρ(|error|, std), ENCE and the
    binned RMSE-vs-RMV curve); :func:`force_metrics` and :func:`energy_metrics` apply it
    to forces (components, per-atom norms, per species) and energies (per atom).

Recalibration
    :class:`StdCalibrator` rescales std by s = sqrt(mean z²), the maximiser of the
    Gaussian likelihood over a scalar factor; :class:`SplitConformal` gives the
    finite-sample-valid quantile q̂ of |z| at level 1-α. Both serialise to JSON-able
    dicts.

Stopping
    :class:`StoppingRule` stops when the calibrated bound on what the sampler visits
    stays below the user's tolerance for ``patience`` consecutive checks and the
    validation error (if any) is below tolerance; each :class:`Decision` carries its
    numbers.

What makes a calibration transfer
    A scale fitted on one trajectory holds on another (say a hotter one) only if the
    std grows with the error as the model leaves its data. Measured on EMT Cu
    (``benchmarks/bench_calibration.py``: train at 900 K, calibrate at 600 K, use at
    1200 K): with gpal's default ζ = 4 and fixed noises the error grew ~1.4x faster
    than the force std and the transferred ZMS was 1.35; with the kernel exponent and
    the noises chosen by the evidence of the training data
    (:func:`gpal.select_kernel_by_evidence`, ``gpal fit --zeta auto``) it was
    0.85-1.16 over three seeds. The raw force std is the projected (SoR) part of the
    variance only; with evidence-fitted noises it is several times too small, so use
    ``calibrated=True`` once a calibration is stored.

Plots (PNG; a matplotlib ``Figure`` on an Agg canvas: no pyplot, no backend change)
    :func:`plot_parity`, :func:`plot_calibration_curve`,
    :func:`plot_error_vs_uncertainty`, :func:`plot_z_histogram`,
    :func:`plot_learning_curve`.
"""

from .metrics import (  # noqa: F401
    _CURVE_LEVELS,
    binned_rmse_rmv,
    calibration_curve,
    energy_metrics,
    force_metrics,
    uncertainty_metrics,
)
from .recalibration import (  # noqa: F401
    Calibration,
    SplitConformal,
    StdCalibrator,
    TwoTermCalibrator,
    fit_two_term_conformal,
)
from .stopping import STOPPING_BOUNDS, Decision, StoppingRule  # noqa: F401
from .plots import (  # noqa: F401
    _check_replace,
    _new_figure,
    _save,
    is_gpal_plot,
    plot_calibration_curve,
    plot_error_vs_uncertainty,
    plot_learning_curve,
    plot_parity,
    plot_z_histogram,
)

__all__ = [
    "uncertainty_metrics",
    "calibration_curve",
    "binned_rmse_rmv",
    "force_metrics",
    "energy_metrics",
    "Calibration",
    "StdCalibrator",
    "TwoTermCalibrator",
    "SplitConformal",
    "fit_two_term_conformal",
    "Decision",
    "StoppingRule",
    "plot_parity",
    "plot_calibration_curve",
    "plot_error_vs_uncertainty",
    "plot_z_histogram",
    "plot_learning_curve",
]
