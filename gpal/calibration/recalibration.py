"""Recalibration of predicted stds on held-out errors: one scale, scale plus noise, conformal."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from .._threads import policy as _thread_policy
from ..exceptions import NotFittedError
from ._checks import _check_alpha, _check_error_std, _finite_array

__all__ = ["Calibration", "StdCalibrator", "TwoTermCalibrator", "SplitConformal", "fit_two_term_conformal"]

#: Prior weight, in errors, of a species factor of 1 (:class:`TwoTermCalibrator`):
#: 60 force components, those of 20 atoms
SPECIES_PRIOR_COUNT = 60


class StdCalibrator:
    """Rescale predicted std by one factor s fitted on held-out errors.

    ``fit`` sets ``scale_ = sqrt(mean(z²))``, z = error/std. This is the
    maximum-likelihood factor: the Gaussian NLL of ``error ~ N(0, (s·std)²)`` is, up to
    a constant, ``log s + mean(z²)/(2 s²)``, whose derivative ``1/s - mean(z²)/s³``
    vanishes only at ``s² = mean(z²)``.

    Attributes
    ----------
    scale_ : float
    n_samples_ : int
    """

    @_thread_policy()
    def fit(self, error, std) -> "StdCalibrator":
        """Fit on arrays of the same shape (error = prediction - reference, std > 0).

        Parameters
        ----------
        error : array_like, any shape (flattened)
            Held-out errors ``prediction - reference``, e.g. force components in eV/Å or
            energies in eV.
        std : array_like, same shape as ``error``
            Predicted stds of the same quantities, same unit as ``error``, > 0.

        Returns
        -------
        self
            With ``scale_`` (dimensionless) and ``n_samples_`` (``error.size``) set.

        Raises
        ------
        ValueError
            Shapes differ, ``error`` is empty, a value is NaN or infinite, or a std is
            not strictly positive.
        """
        e, s = _check_error_std(error, std)
        self.scale_ = float(np.sqrt(np.mean((e / s) ** 2)))
        self.n_samples_ = int(e.size)
        return self

    def _check_fitted(self):
        if not hasattr(self, "scale_"):
            raise NotFittedError(
                "This StdCalibrator is not fitted yet; call fit(error, std) first."
            )

    def transform(self, std) -> np.ndarray:
        """Calibrated std, ``scale_ * std`` (same shape).

        Parameters
        ----------
        std : array_like, any shape
            Raw predicted stds (>= 0, finite), e.g. eV/Å for forces.

        Returns
        -------
        ndarray of the shape of ``std``
            In the unit of ``std``.

        Raises
        ------
        NotFittedError
            :meth:`fit` (or :meth:`from_dict` with a scale) has not set ``scale_``.
        ValueError
            ``std`` holds NaN, infinite or negative values.
        """
        self._check_fitted()
        s = _finite_array("std", std)
        if np.any(s < 0):
            raise ValueError("std must be non-negative")
        return self.scale_ * s

    def bound(self, std) -> np.ndarray:
        """Calibrated bound ``scale_ * std`` (:class:`StoppingRule`, use="scale").

        Parameters
        ----------
        std : array_like, any shape
            Raw predicted stds (>= 0, finite).

        Returns
        -------
        ndarray of the shape of ``std``
            The same as :meth:`transform`, in the unit of ``std``.

        Raises
        ------
        NotFittedError, ValueError
            As :meth:`transform`.
        """
        return self.transform(std)

    def to_dict(self) -> dict:
        """JSON-able state.

        ``{"class": "StdCalibrator", "scale": float | None, "n_samples": int | None}``
        """
        return {
            "class": "StdCalibrator",
            "scale": getattr(self, "scale_", None),
            "n_samples": getattr(self, "n_samples_", None),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "StdCalibrator":
        """Inverse of :meth:`to_dict`.

        Parameters
        ----------
        d : dict
            ``{"class": "StdCalibrator", "scale": float or None, "n_samples": int or
            None}``; with ``"scale"`` None the result is not fitted.

        Returns
        -------
        StdCalibrator

        Raises
        ------
        ValueError
            ``d`` is not a dict with ``"class": "StdCalibrator"``, its scale is not a
            finite number > 0, or a scale comes without an integer ``n_samples`` >= 1.
        """
        if not isinstance(d, dict) or d.get("class") != "StdCalibrator":
            raise ValueError(f"not a StdCalibrator dict: {d!r}")
        obj = cls()
        if d.get("scale") is not None:
            scale = float(d["scale"])
            if not (np.isfinite(scale) and scale > 0):
                raise ValueError(f"invalid scale {d['scale']!r}")
            n = d.get("n_samples")
            if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
                raise ValueError(f"a fitted StdCalibrator dict needs n_samples, an integer >= 1, got {n!r}")
            obj.scale_ = scale
            obj.n_samples_ = int(n)
        return obj

    def __repr__(self) -> str:
        return f"StdCalibrator(scale_={getattr(self, 'scale_', None)})"


class TwoTermCalibrator:
    """Calibrate a predictive std made of a learnable part and a noise floor.

    A sparse GP's std of a new label is ``sqrt(σ² + σ_n²)``: ``σ`` the posterior
    (learnable) std of the latent value, ``σ_n`` the label noise, which stands for
    everything the model cannot learn at its size. The two need not be off by the same
    factor: the floor is fitted on the training data, the learnable part grows where
    the model extrapolates. ``fit`` chooses ``a, b`` maximising the Gaussian likelihood
    of the errors under ``N(0, a σ² + b σ_n²)`` (L-BFGS-B in log space, ``a`` within
    [min_scale², 1e4], ``b`` within [1e-2, 1e4]); ``scale_ = sqrt(a)``,
    ``noise_scale_ = sqrt(b)``. With ``σ = 0`` it reduces to :class:`StdCalibrator` on
    the noise.

    With ``novelty`` (each error's environment novelty ν in [0, 1], the fraction of
    its prior variance the sparse set does not explain, ``SparseGP.predict``'s
    ``novelty``), a third term ``c ν`` is fitted beside them: the part of the error
    the projected std ``σ`` cannot see, since ``σ`` lives in the span of the sparse
    points while the DTC posterior keeps the residual ``k - Q`` outside it.
    ``novelty_scale_ = sqrt(c)`` (eV/Å for forces), 0 when the likelihood puts it at its
    lower bound (1e-10 of the mean squared error per unit ν) or when no error has ν > 0.
    The term is linear in ν only over the range it was fitted on: ``novelty_max_``, the
    largest ν of the fit, caps the ν it is applied to (an environment far outside that
    range joins the sparse set in the loop anyway). Without the cap a term fitted on
    labelled environments, whose ν sit at the jitter floor (~1e-8), would be applied to
    new ones a thousand times more novel.

    With ``species`` (each error's atomic number) holding two or more species, a factor
    per species multiplies that std: ``f_s² = (Σ_s z² + n0) / (n_s + n0)``, the mean
    squared z-score of the species' n_s errors in the shared fit, shrunk towards 1 by
    :data:`SPECIES_PRIOR_COUNT` errors' worth of a prior (a rare species with few errors
    keeps a factor near 1). One set of shared factors fits the errors of all species
    together, and their z² is 1 on average, not per species: on a water run (GFN1-xTB,
    12 molecules) the held-out z² of the calibrated force stds was 0.90 for H and 1.25
    for O (coverage of ±1.645 stds 0.918 and 0.859).

    Parameters
    ----------
    min_scale : float, default 0.1
        The smallest ``scale_``. 1 when the errors come from frames closer to the
        training data than the frames the std will judge (the active learner's rattled
        bootstrap copies of its start structure): such errors may show the learnable
        std too small, never too large.

    Attributes
    ----------
    scale_, noise_scale_ : float
    novelty_scale_ : float
        0 unless fitted with ``novelty``.
    novelty_max_ : float or None
        The largest ν of the fit (None without the term).
    species_scale_ : dict or None
        ``{atomic number: factor}`` (fitted with ``species`` of two or more species;
        else None). Not below ``min_scale / scale_``: the learnable std's effective
        scale ``scale_ x factor`` stays at least ``min_scale``.
    n_samples_ : int
    """

    def __init__(self, min_scale: float = 0.1):
        self.min_scale = min_scale

    @_thread_policy()
    def fit(self, error, std, noise, novelty=None, species=None) -> "TwoTermCalibrator":
        """Fit on ``error`` (n,), learnable ``std`` (n,) >= 0 and ``noise`` (n,) > 0 (or scalar).

        ``novelty`` (n,) in [0, 1], optional: also fit the novelty term (see the class).

        Parameters
        ----------
        error : array_like of shape (n,)
            Held-out errors ``prediction - label`` (flattened), e.g. force components in
            eV/Å.
        std : array_like of shape (n,)
            Learnable (projected) std σ of each prediction, >= 0, unit of ``error``.
        noise : float or array_like broadcastable to shape (n,)
            Label noise std σ_n, > 0, unit of ``error``.
        novelty : array_like of shape (n,), optional
            Environment novelty ν in [0, 1]. Ignored (no novelty term) when None or when
            no ν is > 0.
        species : array_like of int, shape (n,), optional
            Atomic number of each error's atom (0: unknown, no factor). With two or more
            species, a factor per species is fitted (see the class).

        Returns
        -------
        self
            With ``scale_``, ``noise_scale_``, ``novelty_scale_``, ``novelty_max_``,
            ``species_scale_`` and ``n_samples_`` set.

        Raises
        ------
        ValueError
            Shapes differ, ``error`` is empty, a value is NaN or infinite, a std is
            negative, a noise is not > 0, a novelty lies outside [0, 1], or
            ``min_scale`` is not in (0, 1].
        """
        import scipy.optimize

        e = _finite_array("error", error).ravel()
        s = _finite_array("std", std).ravel()
        n = np.broadcast_to(_finite_array("noise", noise), e.shape).ravel()
        if s.shape != e.shape:
            raise ValueError(f"error and std must have the same shape, got {e.shape} and {s.shape}")
        if e.size == 0:
            raise ValueError("need at least one error to calibrate")
        if np.any(s < 0) or np.any(n <= 0):
            raise ValueError("std must be >= 0 and noise > 0")
        nu = None
        if novelty is not None:
            nu = _finite_array("novelty", novelty).ravel()
            if nu.shape != e.shape:
                raise ValueError(f"error and novelty must have the same shape, got {e.shape} and {nu.shape}")
            if np.any(nu < 0) or np.any(nu > 1):
                raise ValueError("novelty must lie in [0, 1]")
            if not np.any(nu > 0):
                nu = None
        s2, n2, e2 = s**2, n**2, e**2

        def nll(x):
            a, b = np.exp(x[:2])
            v = a * s2 + b * n2
            if nu is not None:
                c = np.exp(x[2])
                v = v + c * nu
            f = np.mean(np.log(v) + e2 / v)
            dv = 1.0 / v - e2 / v**2
            grad = [np.mean(dv * s2) * a, np.mean(dv * n2) * b]
            if nu is not None:
                grad.append(np.mean(dv * nu) * c)
            return f, np.array(grad)

        min_scale = float(self.min_scale)
        if not (np.isfinite(min_scale) and 0 < min_scale <= 1):
            raise ValueError(f"min_scale must lie in (0, 1], got {self.min_scale!r}")
        b0 = max(float(np.mean(e2) / np.mean(s2 + n2)), 1e-2)
        a_low = 2 * np.log(min_scale)
        x0 = [max(np.log(b0), a_low), np.log(b0)]
        bounds = [(a_low, np.log(1e4)), (np.log(1e-2), np.log(1e4))]
        if nu is not None:
            # c in units of the mean squared error per unit novelty, from 1e-10 to 1e10 of it
            c_unit = float(np.mean(e2)) / float(np.mean(nu)) if np.mean(e2) > 0 else 1.0
            c_low = np.log(1e-10 * c_unit)
            bounds = bounds + [(c_low, np.log(1e10 * c_unit))]
        best = None
        for c0 in ((None,) if nu is None else (1e-6, 1e-3, 1e-1)):
            start = x0 if c0 is None else x0 + [np.log(c0 * c_unit)]
            res = scipy.optimize.minimize(nll, start, jac=True, method="L-BFGS-B", bounds=bounds)
            if best is None or res.fun < best.fun:
                best = res
        a, b = np.exp(best.x[:2])
        self.scale_, self.noise_scale_ = float(np.sqrt(a)), float(np.sqrt(b))
        self.novelty_scale_, self.novelty_max_ = 0.0, None
        if nu is not None and best.x[2] > c_low + 1e-6:
            self.novelty_scale_ = float(np.sqrt(np.exp(best.x[2])))
            self.novelty_max_ = float(nu.max())
        self.species_scale_ = None
        if species is not None:
            sp = np.asarray(species).ravel()
            if sp.shape != e.shape or not np.issubdtype(sp.dtype, np.integer):
                raise ValueError(f"species must be integers of the shape of error {e.shape}, got "
                                 f"{sp.dtype} {sp.shape}")
            known = np.unique(sp[sp > 0])
            if len(known) > 1:
                z2 = e2 / self.calibration().apply(s, n, 0.0 if nu is None else nu) ** 2
                low = min_scale / self.scale_  # (the scale of the learnable part stays >= min_scale)
                self.species_scale_ = {}
                for z in known.tolist():
                    k = sp == z
                    f2 = (float(np.sum(z2[k])) + SPECIES_PRIOR_COUNT) / (int(k.sum()) + SPECIES_PRIOR_COUNT)
                    self.species_scale_[int(z)] = max(float(np.sqrt(f2)), low)
        self.n_samples_ = int(e.size)
        return self

    def transform(self, std, noise, novelty=0.0, species=None) -> np.ndarray:
        """Calibrated std ``sqrt((scale_ σ)² + (noise_scale_ σ_n)² + novelty_scale_² min(ν, novelty_max_))``,
        times the species' factor.

        Parameters
        ----------
        std : array_like
            Learnable std σ (>= 0, finite), e.g. force components in eV/Å.
        noise : float or array_like
            Label noise std σ_n, same unit, broadcast against ``std`` (not checked).
        novelty : float or array_like, default 0.0
            Environment novelty ν in [0, 1], broadcast against ``std`` (not checked);
            used only when ``novelty_scale_`` > 0.
        species : array_like of int, optional
            Atomic numbers, broadcast against ``std``; used only with ``species_scale_``
            (a species without a factor, or None: factor 1).

        Returns
        -------
        ndarray
            Of the shape of ``std`` (broadcast with ``noise``, ``novelty`` and
            ``species``), in the unit of ``std``; ``scale_ * std`` when the other
            factors are 0 (and 1).

        Raises
        ------
        NotFittedError
            Not fitted yet.
        ValueError
            ``std`` holds NaN, infinite or negative values.
        """
        if not hasattr(self, "scale_"):
            raise NotFittedError("This TwoTermCalibrator is not fitted yet; call fit first.")
        std = _finite_array("std", std)
        if np.any(std < 0):
            raise ValueError("std must be non-negative")
        return self.calibration().apply(std, noise, novelty, species)

    def calibration(self) -> "Calibration":
        """The fitted factors as the :class:`Calibration` a model stores."""
        if not hasattr(self, "scale_"):
            raise NotFittedError("This TwoTermCalibrator is not fitted yet; call fit first.")
        return Calibration(scale=self.scale_, noise_scale=self.noise_scale_,
                           novelty_scale=self.novelty_scale_, novelty_max=self.novelty_max_,
                           species_scale=getattr(self, "species_scale_", None))

    def __repr__(self) -> str:
        return (f"TwoTermCalibrator(min_scale={self.min_scale}, scale_={getattr(self, 'scale_', None)}, "
                f"noise_scale_={getattr(self, 'noise_scale_', None)}, "
                f"novelty_scale_={getattr(self, 'novelty_scale_', None)}, "
                f"species_scale_={getattr(self, 'species_scale_', None)})")


class SplitConformal:
    """Split-conformal bound on |error| from normalised scores |error|/std.

    With n calibration scores, ``quantile_`` q̂ is the k-th smallest score,
    k = ⌈(n + 1)(1 - α)⌉, i.e. the k/n empirical quantile. For a new exchangeable
    sample ``P(|error| <= q̂·std) >= 1 - α`` (and ``<= 1 - α + 1/(n+1)`` without ties).
    If k > n (fewer than ``1/α - 1`` samples) no finite bound is valid: q̂ = inf, with
    a warning.

    Parameters
    ----------
    alpha : float in (0, 1), default 0.1

    Attributes
    ----------
    quantile_ : float
    n_samples_ : int
    """

    def __init__(self, alpha: float = 0.1):
        self.alpha = _check_alpha(alpha)

    def fit(self, error, std) -> "SplitConformal":
        """Fit on arrays of the same shape (error = prediction - reference, std > 0).

        Parameters
        ----------
        error : array_like, any shape (flattened)
            Calibration errors ``prediction - reference`` (e.g. eV/Å for forces).
        std : array_like, same shape as ``error``
            Predicted stds, same unit, > 0.

        Returns
        -------
        self
            With ``quantile_`` (in units of ``std``; ``inf`` when the n samples are too
            few, with a ``UserWarning``) and ``n_samples_`` set.

        Raises
        ------
        ValueError
            Shapes differ, ``error`` is empty, a value is NaN or infinite, or a std is
            not strictly positive.
        """
        e, s = _check_error_std(error, std)
        scores = np.sort(np.abs(e / s))
        n = scores.size
        # exact rational arithmetic on alpha's shortest decimal form, so that e.g.
        # n = 19, alpha = 0.1 gives k = 18, not 19 through 20 * 0.9 = 18.000...04
        k = math.ceil((n + 1) * (1 - Fraction(repr(self.alpha))))
        if k > n:
            warnings.warn(
                f"SplitConformal: {n} calibration samples are too few for "
                f"alpha={self.alpha} (need at least "
                f"{math.ceil(1.0 / self.alpha - 1.0)}); the bound is infinite.",
                UserWarning,
                stacklevel=2,
            )
            self.quantile_ = float("inf")
        else:
            self.quantile_ = float(scores[k - 1])
        self.n_samples_ = int(n)
        return self

    def _check_fitted(self):
        if not hasattr(self, "quantile_"):
            raise NotFittedError(
                "This SplitConformal is not fitted yet; call fit(error, std) first."
            )

    def bound(self, std) -> np.ndarray:
        """Half-width of the interval, ``quantile_ * std`` (same shape).

        Parameters
        ----------
        std : array_like, any shape
            Predicted stds (>= 0, finite), in the units the scores were fitted in.

        Returns
        -------
        ndarray of the shape of ``std``
            In the unit of ``std``; ``inf`` everywhere when ``quantile_`` is infinite
            (too few scores for the level: nothing is bounded, a zero std included).

        Raises
        ------
        NotFittedError
            Not fitted yet.
        ValueError
            ``std`` holds NaN, infinite or negative values.
        """
        self._check_fitted()
        s = _finite_array("std", std)
        if np.any(s < 0):
            raise ValueError("std must be non-negative")
        if np.isinf(self.quantile_):  # (inf * 0 would be NaN)
            return np.full(s.shape, np.inf)
        return self.quantile_ * s

    def interval(self, pred, std) -> tuple[np.ndarray, np.ndarray]:
        """``(pred - q̂·std, pred + q̂·std)``, each of the shape of ``pred``.

        Parameters
        ----------
        pred : array_like
            Predictions (finite), e.g. force components in eV/Å.
        std : array_like, same shape as ``pred``
            Their predicted stds (>= 0), same unit.

        Returns
        -------
        lower, upper : ndarray of the shape of ``pred``

        Raises
        ------
        NotFittedError
            Not fitted yet.
        ValueError
            NaN or infinite values, a negative std, or shapes that differ.
        """
        p = _finite_array("pred", pred)
        b = self.bound(std)
        if b.shape != p.shape:
            raise ValueError(
                f"pred and std must have the same shape, got {p.shape} and {b.shape}"
            )
        return p - b, p + b

    def to_dict(self) -> dict:
        """JSON-able state; an infinite quantile is stored as the string ``"inf"``."""
        q = getattr(self, "quantile_", None)
        if q is not None and not np.isfinite(q):
            q = "inf"
        return {
            "class": "SplitConformal",
            "alpha": self.alpha,
            "quantile": q,
            "n_samples": getattr(self, "n_samples_", None),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "SplitConformal":
        """Inverse of :meth:`to_dict`.

        Parameters
        ----------
        d : dict
            ``{"class": "SplitConformal", "alpha": float, "quantile": float, "inf" or
            None, "n_samples": int or None}``; with ``"quantile"`` None the result is
            not fitted.

        Returns
        -------
        SplitConformal

        Raises
        ------
        ValueError
            ``d`` is not a dict with ``"class": "SplitConformal"``, ``alpha`` is not in
            (0, 1), or the quantile is NaN or negative.
        """
        if not isinstance(d, dict) or d.get("class") != "SplitConformal":
            raise ValueError(f"not a SplitConformal dict: {d!r}")
        obj = cls(alpha=d["alpha"])
        q = d.get("quantile")
        if q is not None:
            try:  # (an n_samples of None was a TypeError)
                q = float("inf") if q == "inf" else float(q)
                n = int(d["n_samples"])
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"invalid SplitConformal dict (quantile {d.get('quantile')!r}, n_samples "
                                 f"{d.get('n_samples')!r}): a fitted one has a number of each") from None
            if np.isnan(q) or q < 0:
                raise ValueError(f"invalid quantile {d['quantile']!r}")
            obj.quantile_ = q
            obj.n_samples_ = n
        return obj

    def __repr__(self) -> str:
        q = getattr(self, "quantile_", None)
        return f"SplitConformal(alpha={self.alpha}, quantile_={q})"


# --------------------------------------------------------------------------------------
# the stored calibration of a model
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Calibration:
    """How a model's raw std of one output becomes the std of a new label.

    ``calibrated = sqrt((scale * std)² + (noise_scale * σ_n)² + novelty_scale² min(ν, novelty_max))``,
    σ_n the model's label noise of that output and ν the novelty of the atom's environment
    (forces only; :class:`TwoTermCalibrator`; ``noise_scale = novelty_scale = 0`` is the
    one-factor :class:`StdCalibrator`). ``conformal_q90`` is the split-conformal 90 % quantile of
    ``|error| / calibrated`` (:class:`SplitConformal` on calibrated stds), the factor a
    stopping rule with ``use="conformal"`` puts on the calibrated std; None if not measured.
    ``species_scale`` multiplies the calibrated std of an atom by its species' factor.

    The one form in which gpal stores a calibration: ``SparseGP.set_calibration``, the
    model file, the active learner and ``gpal validate --calibrate`` all read and write it
    through :meth:`from_dict` / :meth:`to_dict`, so a key one of them writes is a key the
    others read.

    Parameters
    ----------
    scale : float, default 1
        Factor on the raw std (> 0).
    noise_scale : float, default 0
        Factor on the label noise σ_n (≥ 0).
    novelty_scale : float, default 0
        Factor (units of the output, eV/Å for forces) on ``sqrt(ν)``, ≥ 0.
    novelty_max : float or None
        ν above this counts as this (the range the term was fitted on), in (0, 1];
        None: no cap.
    conformal_q90 : float or None
        In units of the calibrated std (> 0).
    species_scale : dict or None
        ``{atomic number: factor > 0}`` (keys may be str, as in JSON); a species
        without one has factor 1. Stored as a sorted tuple of pairs.
    """

    scale: float = 1.0
    noise_scale: float = 0.0
    conformal_q90: float | None = None
    novelty_scale: float = 0.0
    novelty_max: float | None = None
    species_scale: tuple | None = None

    def __post_init__(self):
        for name, value, low in (("scale", self.scale, "> 0"), ("noise_scale", self.noise_scale, ">= 0"),
                                 ("novelty_scale", self.novelty_scale, ">= 0")):
            ok = isinstance(value, (int, float, np.floating)) and math.isfinite(value) and (
                value > 0 if low == "> 0" else value >= 0)
            if not ok:
                raise ValueError(f"Calibration {name} must be a finite number {low}, got {value!r}")
            object.__setattr__(self, name, float(value))
        q = self.conformal_q90
        if q is not None:
            if not (isinstance(q, (int, float, np.floating)) and q > 0):  # inf: too few frames
                raise ValueError(f"Calibration conformal_q90 must be > 0 or None, got {q!r}")
            object.__setattr__(self, "conformal_q90", float(q))
        m = self.novelty_max
        if m is not None:
            if not (isinstance(m, (int, float, np.floating)) and 0 < m <= 1):
                raise ValueError(f"Calibration novelty_max must be in (0, 1] or None, got {m!r}")
            object.__setattr__(self, "novelty_max", float(m))
        f = self.species_scale
        if f is not None:
            pairs = f.items() if isinstance(f, dict) else f
            try:
                table = sorted((int(z), float(v)) for z, v in pairs)
            except (TypeError, ValueError):
                raise ValueError(f"Calibration species_scale must map atomic numbers to factors, got {f!r}") from None
            if not all(0 < z <= 118 and math.isfinite(v) and v > 0 for z, v in table):
                raise ValueError(f"Calibration species_scale needs atomic numbers 1-118 and finite factors > 0, "
                                 f"got {f!r}")
            object.__setattr__(self, "species_scale", tuple(table) or None)

    def apply(self, std, noise=0.0, novelty=0.0, species=None) -> np.ndarray:
        """Calibrated std (shape of ``std``) from the raw ``std``, the label noise ``noise``
        and the environments' ``novelty`` (both broadcast against ``std``).

        No input is checked (the calibrators' ``transform`` check ``std``).

        Parameters
        ----------
        std : array_like
            Raw std of the output, e.g. forces (n_atoms, 3) in eV/Å.
        noise : float or array_like, default 0.0
            Label noise std σ_n of the output, same unit; used when ``noise_scale`` or
            ``novelty_scale`` is not 0.
        novelty : float or array_like, default 0.0
            Novelty ν in [0, 1] of each atom's environment (e.g. shape (n_atoms, 1)
            against forces); used only when ``novelty_scale`` is not 0.
        species : array_like of int, optional
            Atomic number of each atom, shape (n_atoms,) or (n_atoms, 1) against forces
            (n_atoms, 3), or one per component (the shape of the stds); used only with
            ``species_scale`` (None: factor 1).

        Raises
        ------
        ValueError
            ``species`` that match the stds neither per atom nor per component.

        Returns
        -------
        ndarray
            Calibrated std in the unit of ``std``: ``scale * std`` (shape of ``std``)
            when ``noise_scale`` and ``novelty_scale`` are 0, else the shape ``std``,
            ``noise`` (and ``novelty``) broadcast to.
        """
        s = np.asarray(std, dtype=float)
        if self.noise_scale == 0.0 and self.novelty_scale == 0.0:
            out = self.scale * s
        else:
            var = (self.scale * s) ** 2 + (self.noise_scale * np.asarray(noise, dtype=float)) ** 2
            if self.novelty_scale:
                nu = np.asarray(novelty, dtype=float)
                if self.novelty_max is not None:
                    nu = np.minimum(nu, self.novelty_max)
                var = var + self.novelty_scale**2 * nu
            out = np.sqrt(var)
        if self.species_scale and species is not None:
            sp = np.asarray(species)
            if sp.ndim < out.ndim and sp.shape == out.shape[:sp.ndim]:  # per atom against (n_atoms, 3)
                sp = sp.reshape(sp.shape + (1,) * (out.ndim - sp.ndim))
            try:
                fits = np.broadcast_shapes(sp.shape, out.shape) == out.shape
            except ValueError:
                fits = False
            if not fits:
                raise ValueError(f"species of shape {np.shape(species)} do not match stds of shape {out.shape} "
                                 "(give one atomic number per atom, or per component)")
            factor = np.ones(sp.shape)
            for z, f in self.species_scale:
                factor[sp == z] = f
            out = out * factor
        return out

    def to_dict(self) -> dict:
        """JSON-able dict (keys ``scale``, ``noise_scale``; ``conformal_q90`` if measured,
        ``novelty_scale`` if not 0, ``novelty_max`` if set, ``species_scale`` as
        ``{"29": factor, ...}`` if set)."""
        out = {"scale": self.scale, "noise_scale": self.noise_scale}
        if self.conformal_q90 is not None:
            out["conformal_q90"] = self.conformal_q90
        if self.novelty_scale:
            out["novelty_scale"] = self.novelty_scale
        if self.novelty_max is not None:
            out["novelty_max"] = self.novelty_max
        if self.species_scale:
            out["species_scale"] = {str(z): f for z, f in self.species_scale}
        return out

    @classmethod
    def from_dict(cls, d) -> "Calibration":
        """Read :meth:`to_dict`'s form; a number is a scale; unknown keys are an error.

        Files written by gpal 0.1's ``gpal validate --calibrate`` hold ``conformal``, the
        quantile of ``|error| / raw std``; it is converted to calibrated units
        (``conformal / scale``) when the dict has neither ``conformal_q90`` nor
        ``noise_scale``.

        Parameters
        ----------
        d : Calibration, dict or number
            A :class:`Calibration` (returned as it is), a dict with keys among
            ``scale``, ``noise_scale``, ``conformal_q90``, ``novelty_scale``,
            ``novelty_max``, ``species_scale`` (and the old ``conformal``), or a number, the ``scale``
            (not a bool).

        Returns
        -------
        Calibration

        Raises
        ------
        TypeError
            ``d`` is none of these (a bool included).
        ValueError
            Unknown keys, or values out of range (:class:`Calibration`'s parameters).
        """
        if isinstance(d, Calibration):
            return d
        if isinstance(d, (int, float, np.floating)) and not isinstance(d, bool):
            return cls(scale=float(d))
        if not isinstance(d, dict):
            raise TypeError(f"a calibration is a Calibration, a dict or a number, not {type(d).__name__}")
        d = dict(d)
        if "conformal" in d and "conformal_q90" not in d and "noise_scale" not in d:
            d["conformal_q90"] = d.pop("conformal") / d.get("scale", 1.0)
        unknown = set(d) - {"scale", "noise_scale", "conformal_q90", "novelty_scale", "novelty_max", "species_scale"}
        if unknown:
            raise ValueError(f"unknown calibration keys {sorted(unknown)}; "
                             "known: scale, noise_scale, conformal_q90, novelty_scale, novelty_max, species_scale")
        return cls(**d)


def species_factors_text(factors, fmt: str = ".3g", sep: str = " x ") -> str:
    """``"Cu x 1.03, Ag x 0.97"``: the species factors ``factors`` (a dict or pairs of
    atomic number, as int or str, and factor) by chemical symbol; "" for none."""
    from ase.data import chemical_symbols

    pairs = factors.items() if isinstance(factors, dict) else (factors or ())
    return ", ".join(f"{chemical_symbols[int(z)]}{sep}{f:{fmt}}" for z, f in pairs)


def fit_two_term_conformal(error, std, noise, novelty, frame, alpha: float = 0.1,
                           min_scale: float = 0.1, species=None) -> tuple[TwoTermCalibrator, SplitConformal]:
    """A :class:`TwoTermCalibrator` of force-component errors and a conformal quantile in
    its calibrated stds, the quantile from scores the calibrator was not fitted on.

    The calibrator is fitted on all components. A split-conformal quantile is valid for
    scores exchangeable with a new one; scores measured in a map fitted on the same
    errors are smaller than a new label's. So each frame's scores are measured in a
    calibrator fitted on the frames of the other fold (the frames in order, alternating;
    cross-fitting, as in CV+), and the quantile is taken over all of them. A single frame
    has no other fold: its scores are in-sample, and so are all when a fold's calibrator sits
    at both lower bounds (a fold of perfect cells, whose errors are zero, would scale the
    other fold's scores tenfold). Measured (Monte Carlo of errors drawn
    from the calibrator's own model, 400 trials, exact coverage of new errors), 90 %
    bounds: 40 errors of 10 frames, in-sample 0.891, cross-fitted 0.921; 100 errors of 20
    frames, 0.898 and 0.910; 20 errors of 4 frames, 0.894 and 0.937 (conservative, as
    cross-fitting is when the folds are small).

    Parameters
    ----------
    error, std, noise : array_like of shape (n,)
        Force-component errors (prediction - label), raw stds and label noise stds, eV/Å.
    novelty : array_like of shape (n,)
        Each component's atom's novelty, in [0, 1].
    frame : array_like of int, shape (n,)
        The frame of each component (components of a frame are not exchangeable with
        each other, so folds are whole frames).
    alpha : float, default 0.1
    min_scale : float, default 0.1
        :class:`TwoTermCalibrator`'s lower bound of the std scale.
    species : array_like of int, shape (n,), optional
        Atomic number of each component's atom: with two or more species, the
        calibrators (the one returned and the folds') fit a factor per species.

    Returns
    -------
    calibrator : TwoTermCalibrator
    conformal : SplitConformal
        Its ``quantile_`` is in units of the calibrated std.
    """
    e, s, n, nu = (np.asarray(a, dtype=float).ravel() for a in (error, std, noise, novelty))
    fr = np.asarray(frame).ravel()
    if not (e.shape == s.shape == n.shape == nu.shape == fr.shape):
        raise ValueError(f"error, std, noise, novelty and frame must have the same shape, got "
                         f"{e.shape}, {s.shape}, {n.shape}, {nu.shape} and {fr.shape}")
    sp = None if species is None else np.asarray(species).ravel()
    if sp is not None and sp.shape != e.shape:
        raise ValueError(f"species must have the shape of error {e.shape}, got {sp.shape}")
    calibrator = TwoTermCalibrator(min_scale=min_scale).fit(e, s, n, nu, sp)
    frames = np.unique(fr)
    total = calibrator.transform(s, n, nu, sp)
    if len(frames) > 1:
        fold = np.isin(fr, frames[1::2])
        crossed = total.copy()
        for k in (False, True):
            fit_on, score = fold != k, fold == k
            other = TwoTermCalibrator(min_scale=min_scale).fit(e[fit_on], s[fit_on], n[fit_on], nu[fit_on],
                                                               None if sp is None else sp[fit_on])
            if other.scale_ <= min_scale * (1 + 1e-6) and other.noise_scale_ <= 0.1 * (1 + 1e-6):
                break  # a fold of errors far below the stds (perfect cells): the other fold's scores blow up
            crossed[score] = other.transform(s[score], n[score], nu[score], None if sp is None else sp[score])
        else:
            total = crossed
    return calibrator, SplitConformal(alpha=alpha).fit(e, total)
