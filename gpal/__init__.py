"""gpal: Gaussian-process active learning of machine-learning interatomic potentials."""

__version__ = "0.1.0"

from .exceptions import (  # noqa: F401
    GpalError,
    InvalidPositionsError,
    MissingCellError,
    MissingLabelsError,
    ModelFileError,
    NotFittedError,
    OracleError,
    OverlappingAtomsError,
    UnknownSpeciesError,
)
