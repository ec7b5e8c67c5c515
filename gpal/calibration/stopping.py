"""The stopping rule: stop when the calibrated bound stays under the user's tolerance."""

from __future__ import annotations

import numbers
from dataclasses import asdict, dataclass, field

import numpy as np

from ._checks import _check_option, _check_positive_int
from .recalibration import SplitConformal, StdCalibrator

__all__ = ["Decision", "StoppingRule", "STOPPING_BOUNDS"]

STOPPING_BOUNDS = ("conformal", "scale")


@dataclass
class Decision:
    """One check of a :class:`StoppingRule`, with every number it used."""

    step: int
    stop: bool
    reason: str
    bound: float
    tolerance: float
    consecutive: int
    patience: int
    use: str
    validation_error: float | None = None
    validation_step: int | None = None
    validation_tolerance: float | None = None

    def to_dict(self) -> dict:
        """JSON-able copy (an infinite bound becomes the string ``"inf"``)."""
        d = asdict(self)
        if not np.isfinite(d["bound"]):
            d["bound"] = "inf"
        return d


@dataclass
class StoppingRule:
    """Stop active learning when the calibrated error bound stays under tolerance.

    The active learner asks it only when a stop could be certified: with 4 labels from
    MD to judge on (or validation frames) and, under a rising temperature protocol, once
    the protocol is at its top temperature (``ActiveLearner._may_stop``).

    At each check the learner passes a calibrated bound on the frames its walkers are at
    then (one frame per walker per check, not every frame since the last one): the
    largest over those frames of the RMS over force components of the calibrated std of
    a new force label times the conformal quantile (``q̂·σ``, ``use="conformal"``: the
    90 % half-width) or of that std (``s·σ``, ``use="scale"``), in eV/Å; an RMS, so some
    components of a frame are above it (:meth:`compute_bound` makes such a bound from a
    fitted calibrator). The rule stops when

    - that bound was ``< tolerance`` at ``patience`` consecutive checks (a check at or
      above tolerance, or with an infinite bound, resets the count), and
    - the latest validation error given so far, if any, is ``< validation_tolerance``
      (default: ``tolerance``).

    Parameters
    ----------
    tolerance : float > 0
        In the units of the bound (e.g. eV/Å for forces).
    patience : int >= 1, default 3
    use : {"conformal", "scale"}, default "conformal"
        Which calibrated bound the learner feeds in (recorded in every decision).
    validation_tolerance : float > 0 or None

    Attributes
    ----------
    history : list of Decision
    """

    tolerance: float
    patience: int = 3
    use: str = "conformal"
    validation_tolerance: float | None = None
    history: list = field(default_factory=list, init=False, repr=False)

    def __post_init__(self):
        self.tolerance = self._positive("tolerance", self.tolerance)
        self.patience = _check_positive_int("patience", self.patience)
        _check_option("use", self.use, STOPPING_BOUNDS)
        if self.validation_tolerance is not None:
            self.validation_tolerance = self._positive(
                "validation_tolerance", self.validation_tolerance
            )
        self._streak = 0
        self._last_val: tuple[int, float, str] | None = None  # step, error, what it is
        self._last_step: int | None = None  # of the last check (kept by from_state)

    def state(self) -> dict:
        """The rule as plain values (its settings and its count so far), for a run's
        ``state.json``; :meth:`from_state` rebuilds it. The decision history is in the
        run's ``log.jsonl``, not here."""
        return {"tolerance": self.tolerance, "patience": self.patience, "use": self.use,
                "validation_tolerance": self.validation_tolerance, "streak": self._streak,
                "last_validation": None if self._last_val is None else list(self._last_val),
                "last_step": self._previous_step()}

    @classmethod
    def from_state(cls, state: dict) -> "StoppingRule":
        """The rule :meth:`state` described, with its count of consecutive passing checks.

        Parameters
        ----------
        state : dict
            :meth:`state`'s form: ``tolerance``, ``patience`` and ``use`` (required);
            ``validation_tolerance``, ``streak`` (default 0), ``last_validation``
            (``[step, error]`` or ``[step, error, name]``, default None) and
            ``last_step`` (default None) optional.

        Returns
        -------
        StoppingRule
            With an empty :attr:`history`; the next :meth:`update` must come at a step
            after ``last_step``.

        Raises
        ------
        KeyError
            A required key is missing.
        ValueError
            Invalid settings (as the constructor).
        """
        rule = cls(tolerance=state["tolerance"], patience=state["patience"], use=state["use"],
                   validation_tolerance=state.get("validation_tolerance"))
        rule._streak = int(state.get("streak", 0))
        last = state.get("last_validation")
        rule._last_val = None if last is None else (int(last[0]), float(last[1]),
                                                    str(last[2]) if len(last) > 2 else "validation error")
        rule._last_step = state.get("last_step")
        return rule

    def _previous_step(self) -> int | None:
        return self.history[-1].step if self.history else self._last_step

    @staticmethod
    def _positive(name, x) -> float:
        x = float(x)
        if not (np.isfinite(x) and x > 0):
            raise ValueError(f"{name} must be a positive finite number, got {x!r}")
        return x

    def compute_bound(self, std_max: float, calibrator) -> float:
        """Calibrated bound from the largest raw std and a fitted calibrator.

        ``calibrator`` must be a :class:`SplitConformal` when ``use="conformal"`` and a
        :class:`StdCalibrator` when ``use="scale"``.

        Parameters
        ----------
        std_max : float
            The largest raw std over the sampled frames (>= 0), e.g. eV/Å for forces.
        calibrator : SplitConformal or StdCalibrator
            Fitted on stds of the kind ``std_max`` is.

        Returns
        -------
        float
            ``calibrator.bound(std_max)``: ``quantile_ * std_max`` or
            ``scale_ * std_max``, in the unit of ``std_max`` (``inf`` for an infinite
            conformal quantile); what :meth:`update` takes as ``calibrated_bound_max``.

        Raises
        ------
        ValueError
            ``calibrator`` is not of the class ``use`` needs, or ``std_max`` is NaN,
            infinite or negative.
        NotFittedError
            ``calibrator`` is not fitted.
        """
        expected = SplitConformal if self.use == "conformal" else StdCalibrator
        if not isinstance(calibrator, expected):
            raise ValueError(
                f"use={self.use!r} needs a {expected.__name__}, "
                f"got {type(calibrator).__name__}"
            )
        return float(calibrator.bound(np.asarray(float(std_max))))

    def update(
        self,
        step: int,
        calibrated_bound_max: float,
        validation_error: float | None = None,
        error_name: str = "validation error",
    ) -> Decision:
        """Record one check and decide.

        Parameters
        ----------
        step : int
            Learner iteration; must increase from check to check.
        calibrated_bound_max : float
            Largest calibrated bound over the sampled frames (``inf`` allowed, e.g. an
            under-sampled conformal quantile; never NaN or negative).
        validation_error : float or None
            Error on the held-out validation set at this step, if measured.
        error_name : str, default "validation error"
            What ``validation_error`` is, in the decision's reason (the active learner
            without validation frames passes its leave-one-frame-out error).

        Returns
        -------
        Decision
        """
        if isinstance(step, (bool, np.bool_)) or not isinstance(step, numbers.Integral):
            raise ValueError(f"step must be an integer, got {step!r}")
        step = int(step)
        previous = self._previous_step()
        if previous is not None and step <= previous:
            raise ValueError(f"step must increase: got {step} after {previous}")
        bound = float(calibrated_bound_max)
        if np.isnan(bound) or bound < 0:
            raise ValueError(
                "calibrated_bound_max must be non-negative (inf allowed), "
                f"got {bound!r}"
            )
        if validation_error is not None:
            v = float(validation_error)
            if not (np.isfinite(v) and v >= 0):
                raise ValueError(
                    "validation_error must be finite and non-negative, "
                    f"got {validation_error!r}"
                )
            self._last_val = (step, v, str(error_name))

        below = bound < self.tolerance
        self._streak = self._streak + 1 if below else 0
        val_tol = (
            self.validation_tolerance
            if self.validation_tolerance is not None
            else self.tolerance
        )
        bound_txt = f"calibrated bound {bound:.6g} ({self.use})"
        if not below:
            stop = False
            reason = (
                f"{bound_txt} >= tolerance {self.tolerance:.6g}: count reset to 0, "
                f"patience {self.patience}"
            )
        elif self._streak < self.patience:
            stop = False
            reason = (
                f"{bound_txt} < tolerance {self.tolerance:.6g}: "
                f"{self._streak} consecutive "
                f"check(s), patience {self.patience}"
            )
        else:
            head = (
                f"{bound_txt} < tolerance {self.tolerance:.6g} "
                f"for {self._streak} consecutive "
                f"check(s), patience {self.patience}"
            )
            if self._last_val is None:
                stop = True
                reason = f"stop: {head}; no validation error given"
            else:
                vstep, v, name = self._last_val
                stop = v < val_tol
                rel = "<" if stop else ">="
                tail = f"{name} {v:.6g} (step {vstep}) {rel} {val_tol:.6g}"
                reason = f"stop: {head} and {tail}" if stop else f"{head}, but {tail}"
        decision = Decision(
            step=step,
            stop=stop,
            reason=reason,
            bound=bound,
            tolerance=self.tolerance,
            consecutive=self._streak,
            patience=self.patience,
            use=self.use,
            validation_error=None if self._last_val is None else self._last_val[1],
            validation_step=None if self._last_val is None else self._last_val[0],
            validation_tolerance=val_tol if self._last_val is not None else None,
        )
        self.history.append(decision)
        return decision
