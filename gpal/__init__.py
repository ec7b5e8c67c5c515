"""gpal: Gaussian-process active learning of machine-learning interatomic potentials.

Main entry points
-----------------
SOAP            SOAP descriptor with analytic derivatives (dscribe's definition, in numba)
SparseGP        sparse GP potential: fit(frames), predict(atoms, return_std=True), save
load            load a saved model
GPCalculator    ASE calculator with uncertainties
ActiveLearner   on-the-fly active learning (MD sampler, GP learner, oracle)
TargetSet       what a run should get right (e.g. NEB images and their barrier)
kernels, selection, calibration   building blocks
descriptors, model, learning, cli  the packages behind them (README: "where things live")
set_threads, threads   threads of gpal's computations (default: free cores of this process)
"""

__version__ = "0.1.0"

# first: keeps numba's cache of gpal's compiled functions out of the installed package
from . import _numba_cache  # noqa: F401

from .exceptions import (  # noqa: F401
    BaselineError,
    BaselineStoppedError,
    ConfigError,
    GpalError,
    InvalidPositionsError,
    MissingCellError,
    MissingLabelsError,
    ModelFileError,
    NotFittedError,
    OracleError,
    OracleStoppedError,
    OverlappingAtomsError,
    RunStoppedError,
    StructureFileError,
    UnknownSpeciesError,
)
from .descriptors import SOAP  # noqa: F401
from .kernels import NormalizedDotProduct, SquaredExponential  # noqa: F401
from .model import SparseGP, load  # noqa: F401
from ._threads import get_threads, set_threads, threads  # noqa: F401
from .calculator import GPCalculator  # noqa: F401
from .learning import ActiveLearner, MDSettings, Oracle, OracleSpec, TargetSet, Trigger  # noqa: F401
from .compare import compare_kernels, scorer, select_kernel_by_evidence  # noqa: F401
from . import calibration, kernels, selection  # noqa: F401

# ``from gpal import *``: the entry points above, not the submodules that importing them
# binds (``io`` would shadow Python's own)
__all__ = [
    "SOAP", "NormalizedDotProduct", "SquaredExponential", "SparseGP", "load", "GPCalculator",
    "ActiveLearner", "MDSettings", "Oracle", "OracleSpec", "TargetSet", "Trigger",
    "compare_kernels", "scorer", "select_kernel_by_evidence",
    "get_threads", "set_threads", "threads",
    "calibration", "kernels", "selection",
    "BaselineError", "BaselineStoppedError", "ConfigError", "GpalError", "InvalidPositionsError", "MissingCellError",
    "MissingLabelsError", "ModelFileError", "NotFittedError", "OracleError", "OracleStoppedError",
    "OverlappingAtomsError", "RunStoppedError", "StructureFileError", "UnknownSpeciesError",
]
