"""When the active learner asks the oracle: the trigger on a frame's calibrated uncertainty."""

from __future__ import annotations

import dataclasses
import functools
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .._validation import check_number
from ..calibration import Calibration
from ..model import SparseGP

__all__ = ["Trigger"]

_TRIGGER_QUANTITIES = ("forces_std", "energies_std")


@dataclass
class Trigger:
    """When a walker's frame goes to the oracle.

    The loop asks one method, :meth:`judge` (in the learner and on walker workers); a new
    trigger rule is a subclass that overrides it (it is saved by import path and its
    dataclass fields, and rebuilt from them on resume and on workers: declare the
    subclass's own settings as fields of a ``@dataclass``). The default rule: every ``every`` MD steps each walker's
    current frame is judged:

    1. **Novelty** (no oracle call). Environments whose ``novelty`` (the fraction of
       their prior variance that the sparse set does not explain, see
       :meth:`gpal.SparseGP.predict`) exceeds ``novelty`` join the sparse set. The
       projected force std of stage 2 cannot see an environment unlike every sparse
       point (it falls to zero there); once the environment is a sparse point with no
       labels near it, its forces are as uncertain as the prior says.
    2. **Force uncertainty.** ``u`` = the calibrated std of the learnable part of the
       most uncertain force component, ``scale x max(forces_std)`` (eV/Å; ``scale`` is
       the recalibration factor the learner fits on leave-one-frame-out errors of its
       own labels, :meth:`ActiveLearner.calibrate`), or, when that calibration has a
       novelty term, ``max sqrt((scale σ)² + novelty_scale² min(ν, novelty_max))`` over
       the atoms' components (ν the atom's novelty: the residual of environments below the
       novelty threshold, which stage 1 leaves out of the sparse set, is part of the
       error too). The calibration's factors per species (``species_scale``, fitted on
       the whole std of a label) are not part of ``u``: they scale the stds a model
       reports and the stopping bound, while ``u`` and its threshold stay on the
       shared factors. The frame is labelled when ``u``
       exceeds the threshold, the larger of

       * the base: with ``threshold=None`` (the default) ``noise_ratio x`` the
         calibrated force noise ``noise_scale x force_noise``, the error the model cannot
         learn away at its size (in calibrated units a label's learnable std is then
         ``noise_ratio`` times its noise; under the raw model that is
         ``½ log(1 + noise_ratio²)`` nats on that component only when ``scale`` equals
         ``noise_scale`` and there is no novelty term); a number is eV/Å (with
         ``relative_to_noise``, a multiple of the same calibrated force noise);
       * with ``adaptive``, ``(1 + adapt_margin) x`` the mean ``u`` of the last
         ``adapt_window`` unlabelled checks since the model last changed
         (VASP-style): only frames clearly more uncertain than what the current model
         has seen on the trajectory are labelled, since consecutive MD frames are
         nearly the same question. The first check after a model update only sets
         this reference and labels nothing, even above the ceiling below (its frame
         comes right after a label). With ``adapt_expire`` the level holds for ``adapt_window``
         unlabelled checks after an update; after them the base alone decides (a
         model that stays above its base threshold on every frame of a stationary
         trajectory, as in a liquid, is uncertain everywhere: the level, which follows
         it, had left a water box at 12 labels and 2x the force error of evenly spaced
         frames).
       Both parts are capped at the **ceiling** ``ceiling x`` the RMS force of the
       oracle's labels (forces_std only): whatever the fitted noise (which a model of
       a few frames may set near the forces themselves, treating everything as noise)
       or the recent level (which follows a model uniformly unsure of everything), a
       frame whose most uncertain force component has a calibrated std above a quarter
       of the RMS force the model must predict (a typical error of about a tenth) is
       labelled (but not at the adaptive reference check). The floor ``threshold_min``
       wins over the ceiling.
    3. **Rate cap.** At most ``max_labels`` labels per walker in any ``window`` MD
       steps, rollbacks after a blow-up included (a capped rollback restores the walker
       without a label).

    A check costs about one training frame's kernel rows (10-30 MD steps of a
    108-atom cell), hence ``every``.

    Parameters
    ----------
    quantity : {"forces_std", "energies_std"}, default "forces_std"
        ``"energies_std"`` uses the largest DTC local-energy std (eV) with an absolute
        ``threshold`` instead: cheap, but it has a floor that labels cannot lower
        (only sums of local energies are observed), so it fires on defects and
        molecules unless adaptive.
    threshold : float or None, default None
        Base threshold, eV/Å of calibrated learnable force std (eV for
        ``"energies_std"``); None: ``noise_ratio`` x the calibrated force noise.
    noise_ratio : float, default 0.5
        The automatic base threshold as a multiple of the calibrated force noise.
    relative_to_noise : bool, default False
        Read ``threshold`` as a multiple of the calibrated force noise, not eV/Å.
    calibrated : bool, optional
        Multiply the force std by the learner's recalibration factor (1 until the
        first calibration); default True for ``"forces_std"``.
    novelty : float, default 0.05
        Stage-1 threshold in (0, 1]; 1 never refreshes.
    adaptive : bool, default True
        Also require the frame to be above ``(1 + adapt_margin)`` x the mean uncertainty
        of the recent unlabelled checks (stage 2).
    adapt_window : int, default 10
        Unlabelled checks the adaptive level averages over.
    adapt_margin : float, default 0.2
        Fraction above the recent mean a frame's uncertainty must be.
    adapt_expire : bool, default True
        The adaptive level holds for ``adapt_window`` unlabelled checks after an update,
        then the base threshold alone decides.
    threshold_min : float, optional
        Floor of the threshold: by default 0.02 eV/Å under the automatic force threshold
        (``threshold=None``) and none under a given one (the lower
        end of the force deviations DP-GEN's users label at, 0.05-0.15 eV/Å for the
        largest component; without a floor, a model whose fitted noise sits at its
        bound keeps labelling at the rate the adaptive level allows), 0 for
        ``"energies_std"``.
    ceiling : float or None, default 0.25
        Fraction of the RMS oracle force of the labels (eV/Å) above which the automatic
        threshold and the adaptive level never go; None (``false`` in TOML): no ceiling. A user's fixed
        ``threshold`` is kept as given.
    every : int, default 20
        Steps between checks (blow-up checks run every step).
    max_labels, window : int, default 3 and 100
        At most ``max_labels`` labels per walker in any ``window`` MD steps.
    temperature_steps : int or None, default 4
        Under a rising temperature protocol ``T0 -> T1``, the span is cut in this many
        equal steps; when the sampler's temperature reaches the top of a step,
        ``T0 + k (T1 - T0) / temperature_steps`` (within 2 % of the span), and no frame
        has been labelled at that temperature or hotter, the first walker's frame is
        labelled, whatever the uncertainty says (reason ``"temperature"``; counted and
        rate-capped like any label; the bootstrap counts as ``T0``, and the frames of a
        continued model of the run's own system at the temperatures an active learner
        labelled them at, which the model keeps with them, other frames at ``T0``: a
        run repeating a ramp the model has learned owes none). The calibration that
        turns stds into expected errors was measured on the labels; hotter MD is outside
        what it has seen, and a model that looks certain there may just be extrapolating
        its calibration (Pt vacancy, EMT, 300-1400 K: without these labels the loop's
        labels stopped at the bootstrap, z² 1.3-1.9 on independent frames). Steps equal
        in temperature put the labels where a ramp's errors are largest: with labels at
        1.5x the hottest labelled temperature instead (450, 675 and 1012 K on that ramp)
        the force RMSE was 1.49x / 1.08x / 1.16x that of evenly spaced oracle frames on
        three seeds. None (or False, in a TOML configuration): never. With a walker
        executor the rule is judged once per round, on the first walker's frame at the
        end of its segment.
    recheck_temperature : None
        Replaced by ``temperature_steps``; ``False`` turns the rule off (as
        ``temperature_steps=None``), a number is ignored with a ``FutureWarning`` (shown by default).
    """

    quantity: str = "forces_std"
    threshold: float | None = None
    noise_ratio: float = 0.5
    relative_to_noise: bool = False
    calibrated: bool | None = None
    novelty: float = 0.05
    adaptive: bool = True
    adapt_window: int = 10
    adapt_margin: float = 0.2
    adapt_expire: bool = True
    threshold_min: float | None = None
    ceiling: float | bool | None = 0.25  # False: none (TOML has no None)
    every: int = 20
    max_labels: int = 3
    window: int = 100
    temperature_steps: int | bool | None = 4  # False: never (TOML has no None)
    recheck_temperature: float | bool | None = None  # earlier name, see the docstring

    def __post_init__(self):
        if self.quantity not in _TRIGGER_QUANTITIES:
            raise ValueError(f"Invalid trigger quantity {self.quantity!r}; choose from {_TRIGGER_QUANTITIES}")
        for name in ("calibrated", "adaptive", "relative_to_noise"):
            value = getattr(self, name)
            if not (isinstance(value, (bool, np.bool_)) or (name == "calibrated" and value is None)):
                raise TypeError(f"Trigger({name}=...) must be True or False, got {value!r}")
        if self.quantity == "energies_std":
            if self.calibrated:
                raise ValueError("Trigger(calibrated=True) needs quantity='forces_std' (the "
                                 "learner's recalibration factor is fitted for force stds)")
            if self.threshold is None:
                raise ValueError("quantity='energies_std' needs a threshold (eV)")
        self.calibrated = self.quantity == "forces_std" if self.calibrated is None else bool(self.calibrated)
        self.threshold = check_number("trigger threshold", self.threshold, low=0, strict=True, none=True)
        self.noise_ratio = check_number("noise_ratio", self.noise_ratio, low=0, strict=True)
        self.novelty = check_number("novelty", self.novelty, low=0, strict=True)
        if self.novelty > 1:
            raise ValueError(f"novelty must be in (0, 1], got {self.novelty}")
        if self.ceiling is False:  # what a TOML configuration can say
            self.ceiling = None
        self.ceiling = check_number("ceiling", self.ceiling, low=0, strict=True, none=True)
        self.adapt_margin = check_number("adapt_margin", self.adapt_margin, low=0)
        self.threshold_min = check_number("threshold_min", self.threshold_min, low=0, none=True)
        if (None not in (self.threshold, self.threshold_min) and not self.relative_to_noise
                and self.threshold_min > self.threshold):  # (a relative threshold is not in eV/Å)
            raise ValueError(f"threshold_min ({self.threshold_min}) must not exceed the threshold "
                             f"({self.threshold})")
        for name in ("relative_to_noise", "adaptive", "adapt_expire"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"trigger {name} must be True or False, got {getattr(self, name)!r}")
        if self.recheck_temperature is not None:  # a configuration or run state of an earlier gpal
            if self.recheck_temperature is False:
                self.temperature_steps = None
            else:
                warnings.warn("Trigger(recheck_temperature=...) is replaced by temperature_steps "
                              f"(labels at equal steps of a rising temperature protocol); using "
                              f"temperature_steps={self.temperature_steps}", FutureWarning, stacklevel=3)
            self.recheck_temperature = None
        if self.temperature_steps is False:  # what a TOML configuration can say
            self.temperature_steps = None
        if self.temperature_steps is not None:
            if isinstance(self.temperature_steps, bool) or int(self.temperature_steps) != self.temperature_steps \
                    or self.temperature_steps < 1:
                raise ValueError("temperature_steps must be an integer >= 1, or None (false in TOML), "
                                 f"got {self.temperature_steps!r}")
            self.temperature_steps = int(self.temperature_steps)
        for name in ("every", "max_labels", "window", "adapt_window"):
            setattr(self, name, check_number(f"trigger {name}", getattr(self, name), low=1, integer=True))

    def base_threshold(self, model: SparseGP, scale: float = 1.0) -> float:
        """The base threshold: eV/Å of calibrated force std (eV for energies_std).

        ``scale`` is the calibration factor of the force noise.
        """
        # with a force_noise_knee, the RMS noise of the labels' force components
        noise = model.noise_["energy"] if self.quantity == "energies_std" else model.typical_force_noise()
        if self.calibrated:  # the noise as the calibrated std compared with it sees it
            noise *= scale
        if self.threshold is None:
            thr = self.noise_ratio * noise
        elif self.relative_to_noise:
            thr = self.threshold * noise
        else:
            thr = self.threshold
        return max(float(thr), self.floor())

    def floor(self) -> float:
        """``threshold_min``, or by default 0.02 eV/Å under the automatic force threshold, else 0."""
        if self.threshold_min is not None:
            return float(self.threshold_min)
        return 0.02 if self.quantity == "forces_std" and self.threshold is None else 0.0

    def level(self, model: SparseGP, recent: Sequence[float], scale: float = 1.0,
              force_rms: float | None = None) -> tuple[float, float]:
        """The threshold a check compares with, and its base (both eV/Å, or eV).

        ``max(base, adaptive level)``, where the automatic base and the adaptive level
        are capped at ``ceiling x force_rms`` (the RMS oracle force of the labels,
        eV/Å; no cap when None or for energies_std), the floor winning over the cap.
        """
        base = self.base_threshold(model, scale)
        adaptive = self.adaptive_level(recent)
        if self.ceiling is not None and force_rms and self.quantity == "forces_std":
            cap = self.ceiling * float(force_rms)
            adaptive = min(adaptive, cap)
            if self.threshold is None:
                base = max(min(base, cap), self.floor())
        return max(base, adaptive), base

    def adaptive_level(self, recent: Sequence[float]) -> float:
        """The adaptive part of the threshold: 0 before any history or if not adaptive."""
        if not self.adaptive or not recent or (self.adapt_expire and len(recent) > self.adapt_window):
            return 0.0
        return (1.0 + self.adapt_margin) * float(np.mean(recent[-self.adapt_window:]))

    def judge(self, prediction: dict, *, model: SparseGP, recent: Sequence[float], label_steps: Sequence[int],
              step: int, force_std_scale: float = 1.0, noise_scale: float = 1.0,
              force_rms: float | None = None, novelty_scale: float = 0.0,
              novelty_max: float | None = None) -> dict:
        """The trigger's decision on one frame: is it labelled?

        The one method the loop asks (in the learner's process and on walker workers
        alike); a new trigger rule is a subclass that overrides it.

        Parameters
        ----------
        prediction : dict
            ``model.predict(frame, return_std=True, forces_std=...)`` of the frame.
        model : SparseGP
        recent : sequence of float
            Uncertainties of the unlabelled checks since the last update (the adaptive
            level's history).
        label_steps : sequence of int
            Steps at which this walker was labelled (the rate cap).
        step : int
        force_std_scale, noise_scale : float
            The model's force-std recalibration factor and force-noise factor.
        force_rms : float or None
            RMS oracle force of the labels, eV/Å (the ceiling).
        novelty_scale : float
            The novelty term of the model's force calibration, eV/Å: with it the
            uncertainty of an atom is ``sqrt((scale σ)² + novelty_scale² min(ν, novelty_max))``,
            ν the ``novelty`` of its environment in ``prediction``.
        novelty_max : float or None
            The calibration's cap on ν (the largest ν it was fitted on).

        Returns
        -------
        dict
            ``uncertainty``, ``threshold``, ``base_threshold`` (eV/Å of calibrated force
            std, or eV for energies_std), ``label`` (after the rate cap), ``capped``
            (it would be labelled but the walker is at its cap) and ``reference`` (the
            first adaptive check after an update: it labels nothing).
        """
        if self.quantity == "forces_std":
            scale = force_std_scale if self.calibrated else 1.0
            if self.calibrated and novelty_scale > 0 and "novelty" in prediction:
                # the learnable part of the calibrated std of a new label (no noise term)
                learnable = Calibration(scale=scale, novelty_scale=novelty_scale, novelty_max=novelty_max)
                u = float(np.max(learnable.apply(prediction["forces_std"], 0.0,
                                                 np.asarray(prediction["novelty"])[:, None])))
            else:
                u = float(np.max(prediction["forces_std"])) * scale
            thr, base = self.level(model, recent, noise_scale, force_rms)
        else:
            u = float(np.max(prediction["energies_std"]))
            thr, base = self.level(model, recent)
        # the first check after an update only sets the adaptive level, whatever its frame's
        # uncertainty: labelling one above the ceiling there (the first frame after each
        # label) raised water's energy error (6 seeds, median ratio to evenly spaced frames
        # 1.19 -> 1.40, forces 0.88 -> 0.90)
        reference = self.adaptive and not recent
        label = u > thr and not reference
        capped = label and self.capped(label_steps, step)
        return {"uncertainty": u, "threshold": thr, "base_threshold": base,
                "label": bool(label and not capped), "capped": bool(capped), "reference": bool(reference)}

    def capped(self, label_steps: Sequence[int], step: int) -> bool:
        """True when a walker that labelled at ``label_steps`` may not label at ``step``."""
        recent = [s for s in label_steps if step - s < self.window]
        return len(recent) >= self.max_labels


def trigger_state(trigger: Trigger) -> dict:
    """What a run stores of a trigger (with its class path): its ``__init__`` fields,
    from which resume and walker workers rebuild it (``type(trigger)(**state)``)."""
    return {f.name: getattr(trigger, f.name) for f in dataclasses.fields(trigger) if f.init}


def _same(a, b) -> bool:
    try:
        return bool(np.all(a == b))
    except Exception:  # (values that do not compare: treat as different)
        return False


def check_storable(trigger: Trigger) -> None:
    """Raise ``TypeError`` for a trigger whose settings would not survive a resume or a
    walker worker: a run rebuilds a trigger from its class and :func:`trigger_state`,
    so an attribute the rebuilt trigger lacks or holds differently (a subclass's own
    ``__init__`` argument that is not a dataclass field) would come back as its
    default, silently. Caches a rebuild recomputes (set in ``__post_init__``, or a
    ``functools.cached_property``) pass."""
    cls = type(trigger)
    try:
        rebuilt = cls(**trigger_state(trigger))
    except TypeError as exc:
        raise TypeError(f"the trigger {cls.__name__} cannot be rebuilt from its dataclass fields ({exc}); a run "
                        "stores a trigger by its fields (for resume and walker workers)") from None
    mine, theirs = vars(trigger), vars(rebuilt)
    extra = sorted(k for k, v in mine.items()
                   if not isinstance(getattr(cls, k, None), functools.cached_property)
                   and (k not in theirs or not _same(v, theirs[k])))
    if extra:
        raise TypeError(f"the trigger {cls.__name__} has settings that are not dataclass fields ({', '.join(extra)}): a "
                        f"run stores a trigger by its fields (for resume and walker workers), so they would be lost; "
                        f"declare them as fields of a @dataclass class {cls.__name__}(Trigger)")
