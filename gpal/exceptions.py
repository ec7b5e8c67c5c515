"""Exceptions raised by gpal.

Every failure a user can cause with bad input has its own class, so scripts can catch
exactly what they expect. All derive from :class:`GpalError`; most also derive from the
built-in exception a Python user would guess (``ValueError``, ``KeyError``, ...).
"""

from __future__ import annotations

from sklearn.exceptions import NotFittedError as _SklearnNotFittedError

__all__ = [
    "GpalError",
    "UnknownSpeciesError",
    "MissingCellError",
    "InvalidPositionsError",
    "OverlappingAtomsError",
    "MissingLabelsError",
    "ModelFileError",
    "NotFittedError",
    "OracleError",
    "ConfigError",
    "StructureFileError",
    "BaselineError",
    "RunStoppedError",
    "BaselineStoppedError",
    "OracleStoppedError",
]


class GpalError(Exception):
    """Base class of all gpal errors."""


class UnknownSpeciesError(GpalError, ValueError):
    """Atoms contain chemical species the descriptor or model was not built for."""

    def __init__(self, unknown, known, message: str | None = None):
        from ase.data import chemical_symbols

        self.unknown = sorted(int(z) for z in unknown)
        self.known = sorted(int(z) for z in known)
        names = ", ".join(f"{chemical_symbols[z]} (Z={z})" for z in self.unknown)
        known_names = ", ".join(chemical_symbols[z] for z in self.known)
        super().__init__(
            message.format(unknown=names, known=known_names) if message else
            f"The following species are not defined for this model: {names}. "
            f"It knows: {known_names}."
        )


class MissingCellError(GpalError, ValueError):
    """A periodic model was given atoms without a (non-degenerate) cell."""


class InvalidPositionsError(GpalError, ValueError):
    """Positions or cell contain NaN or infinite values."""


class OverlappingAtomsError(GpalError, ValueError):
    """Two atoms are closer than a physically meaningful distance."""


class MissingLabelsError(GpalError, ValueError):
    """A training frame carries no energy, forces or stress to learn from."""


class ModelFileError(GpalError, OSError):
    """A saved model file is missing, truncated, tampered with or of an unknown format."""


class NotFittedError(GpalError, _SklearnNotFittedError):
    """A model was used before ``fit`` was called (a scikit-learn ``NotFittedError`` too,
    so ``except sklearn.exceptions.NotFittedError`` catches it)."""


class OracleError(GpalError, RuntimeError):
    """The oracle (a reference calculator) crashed, timed out or returned non-finite values."""


class RunStoppedError(GpalError, RuntimeError):
    """A run stopped by something outside its input (a worker process that crashed, an
    oracle that keeps failing, an executor that stopped); everything so far is saved
    and the run resumes. ``gpal learn`` exits with 1 on it, not 2 (bad input)."""


class OracleStoppedError(OracleError, RunStoppedError):
    """A run stopped by its oracle (its worker processes crashed, or it failed under
    ``on_oracle_failure="stop"``): an :class:`OracleError` and a :class:`RunStoppedError`."""


class ConfigError(GpalError, ValueError):
    """A ``gpal learn`` configuration has an unknown key or section, or a wrong value."""


class StructureFileError(GpalError, ValueError):
    """A structure (frames) file cannot be read, or lacks the labels asked for."""


class BaselineError(GpalError, ValueError):
    """A Δ-model's baseline calculator cannot be imported, built, saved or evaluated."""


class BaselineStoppedError(BaselineError, RunStoppedError):
    """A run stopped because its baseline failed on a frame of the run (not on the start
    structures, which are checked first): a :class:`BaselineError` and a
    :class:`RunStoppedError`. An active-learning run is saved (``gpal learn`` exits with 1
    and the resume command); ``gpal md`` keeps the frames before it, ``gpal ipi`` the
    evaluations made (both exit with 1)."""


def interrupt_in(exc: BaseException) -> KeyboardInterrupt | None:
    """The KeyboardInterrupt behind ``exc``, if any (itself, or up its cause/context chain).

    A signal whose Python handler raises while a numba-compiled function runs surfaces as
    a ``SystemError`` ("returned a result with an exception set"), sometimes wrapped once
    more by the compiled caller; the interrupt is somewhere in its chain.
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None
