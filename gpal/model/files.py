"""Saving and loading a SparseGP (``.npz`` + JSON metadata, no pickle; see :mod:`gpal.io`)."""

from __future__ import annotations

import numbers
import os
from typing import TYPE_CHECKING

import numpy as np
from ase import Atoms

from .._validation import (
    Labels,
    check_is_fitted,
    frame_labels,
    species_number,
)
from ..descriptors import descriptor_from_dict
from ..sparse_gp import SparseGPSolver

if TYPE_CHECKING:
    from .potential import SparseGP
from .. import baseline as _baseline
from .rows import TEMPERATURE_KEY, _labelled_copy


class _Files:
    """SparseGP.save / SparseGP.load."""

    # ------------------------------------------------------------------ save / load
    def save(self, path, *, overwrite: bool | None = None):
        """Save to one ``.npz`` file (no pickle); see :mod:`gpal.io`. Returns the path.

        Parameters
        ----------
        path : str, path-like or binary file object
            ``.npz`` is appended if missing.
        overwrite : bool or None, default None
            Whether an existing file may be replaced (the new one is written under a
            temporary name, then renamed over it). None: a gpal model is (a script run
            again saves its model again), the old one kept beside it as
            ``NAME.old-YYYYmmdd-HHMMSS.npz`` with a ``UserWarning`` (nothing is lost);
            any other file raises ``FileExistsError`` and is left as it is. True: any
            file is replaced, without a copy. False: none is.
        """
        from .. import __version__
        from ..io import save_model

        check_is_fitted(self)
        frames = self.frames_
        nat = np.array([len(a) for a in frames], dtype=np.int64)
        labels = [frame_labels(a) for a in frames]
        arrays = {
            "sparse_X": self.sparse_X_,
            "sparse_species": self.sparse_species_,
            "alpha": self.alpha_,
            "obs_group": self.obs_group_,
            "obs_frame": self.obs_frame_,
            "frame_natoms": nat,
            "frame_numbers": np.concatenate([a.numbers for a in frames]),
            "frame_positions": np.concatenate([a.positions for a in frames]),
            "frame_cells": np.array([a.cell.array for a in frames]),
            "frame_pbc": np.array([a.pbc for a in frames]),
            "frame_energy": np.array([np.nan if lab.energy is None else lab.energy for lab in labels]),
            "frame_forces": np.concatenate(
                [lab.forces if lab.forces is not None else np.full((len(a), 3), np.nan)
                 for a, lab in zip(frames, labels)]
            ),
            "frame_stress": np.array(
                [lab.stress if lab.stress is not None else np.full(6, np.nan) for lab in labels]
            ),
            # K, NaN where not labelled by an active learner (absent in earlier files)
            "frame_temperature": np.array([a.info.get(TEMPERATURE_KEY, np.nan) for a in frames], dtype=float),
        }
        for name, value in self.solver_._to_arrays().items():
            arrays["solver_" + name] = value
        # a seed (Python or numpy integer) is kept; a Generator or RandomState cannot be stored
        rs = (int(self.random_state) if isinstance(self.random_state, numbers.Integral)
              and not isinstance(self.random_state, bool) else None)
        meta = {
            "gpal_version": __version__,
            "descriptor": self.descriptor_.to_dict(),
            "kernel": self.kernel_.to_dict(),
            "noise": self.noise_,
            "force_noise_knee": getattr(self, "force_noise_knee_", None),
            "e0": {str(z): v for z, v in self.e0_.items()},
            "calibration": self.calibration_,
            "solver_jitter": self.solver_.jitter_,
            "hyperparameters": {
                "mode": self.hyperparameters,
                "zeta": self.zeta_,
                "log_marginal_likelihood": getattr(self, "log_marginal_likelihood_value_", None),
                "evidence": getattr(self, "evidence_", None),
            },
            "params": {
                "descriptor": None if self.descriptor is None else self.descriptor.to_dict(),
                "kernel": None if self.kernel is None else self.kernel.to_dict(),
                "hyperparameters": self.hyperparameters,
                "energy_noise": self.energy_noise, "force_noise": self.force_noise,
                "stress_noise": self.stress_noise,
                "n_sparse": ({str(species_number(k, "n_sparse")): int(v) for k, v in self.n_sparse.items()}
                             if isinstance(self.n_sparse, dict) else int(self.n_sparse)),
                "sparse_selection": self.sparse_selection,
                "e0": self.e0 if isinstance(self.e0, str) else
                {str(species_number(k, "e0")): float(v) for k, v in self.e0.items()},
                "min_distance": self.min_distance, "jitter": self.jitter, "random_state": rs,
                "memory_budget_gb": self.memory_budget_gb,
                "force_noise_knee": getattr(self, "force_noise_knee", None),
            },
        }
        # the baseline the fit used (set_params(baseline=...) since changes the next fit,
        # not this model: a reload had predicted 0.33 eV where the model gave 0.66)
        fitted = getattr(self, "_baseline_fitted", (self.baseline, self.baseline_kwargs))
        spec = (_baseline.baseline_spec(self.baseline_, None) if fitted == "live"
                else _baseline.baseline_spec(*fitted))
        if spec is not None:  # Δ-model: the baseline as an import path and JSON kwargs
            meta["baseline"] = spec
        return save_model(path, arrays, meta, overwrite=overwrite)

    @classmethod
    def load(cls, path) -> "SparseGP":
        """Load a model written by :meth:`save`.

        Parameters
        ----------
        path : str, path-like or binary file object
            The ``.npz`` file (no pickle is read).

        Returns
        -------
        SparseGP
            Fitted, predicting as the saved model did (to the last bit).

        Raises
        ------
        gpal.ModelFileError
            Missing, truncated, tampered or incompatible file.
        """
        return cls._load(path)

    @classmethod
    def _load(cls, path, build_baseline: bool = True) -> "SparseGP":
        """:meth:`load`; without ``build_baseline`` a Δ-model's baseline is left unbuilt
        (``baseline_`` None: ``gpal info`` shows what a file holds when its baseline's
        module is missing here)."""
        from ..exceptions import ModelFileError
        from ..io import read_model_file
        from ..kernels import kernel_from_dict

        arrays, meta = read_model_file(path)
        try:
            desc = descriptor_from_dict(meta["descriptor"])
            kernel = kernel_from_dict(meta["kernel"])
            params = dict(meta["params"])
            # files from before the evidence defaults: the kernel and noises were given
            params.setdefault("hyperparameters", "fixed")
            given_kernel = params.pop("kernel", kernel.to_dict())
            given_kernel = None if given_kernel is None else kernel_from_dict(given_kernel)
            # files from before it was kept: the fitted descriptor stands for the given one
            given_desc = params.pop("descriptor", meta["descriptor"])
            given_desc = None if given_desc is None else descriptor_from_dict(given_desc)
            if isinstance(params.get("n_sparse"), dict):
                params["n_sparse"] = {species_number(k, "n_sparse"): v for k, v in params["n_sparse"].items()}
            if isinstance(params.get("e0"), dict):
                params["e0"] = {species_number(k, "e0"): v for k, v in params["e0"].items()}
            spec = meta.get("baseline")
            if spec is not None:
                params["baseline"], params["baseline_kwargs"] = spec["factory"], dict(spec["kwargs"])
            self = cls(given_desc, given_kernel, **params)
            self.descriptor_ = desc
            self.kernel_ = kernel
            choice = meta.get("hyperparameters", {})
            self.evidence_ = choice.get("evidence")
            if choice.get("log_marginal_likelihood") is not None:
                self.log_marginal_likelihood_value_ = float(choice["log_marginal_likelihood"])
            self.noise_ = {k: float(v) for k, v in meta["noise"].items()}
            knee = meta.get("force_noise_knee")  # absent in earlier files: one force noise
            self.force_noise_knee_ = None if knee is None else float(knee)
            self.e0_ = {int(k): float(v) for k, v in meta["e0"].items()}
            from ..calibration import Calibration

            self.calibration_ = {k: Calibration.from_dict(v).to_dict()
                                 for k, v in meta.get("calibration", {}).items()}
            self.sparse_X_ = arrays["sparse_X"]
            self.sparse_species_ = arrays["sparse_species"].astype(np.int64)
            self.obs_group_ = arrays["obs_group"].astype(np.int64)
            self.obs_frame_ = arrays["obs_frame"].astype(np.int64)
            solver = SparseGPSolver._from_arrays(
                {k[len("solver_"):]: v for k, v in arrays.items() if k.startswith("solver_")},
                float(meta["solver_jitter"]))
            self.solver_ = solver
            self.alpha_ = solver.alpha_
            exact = "solver_R_w" in arrays  # earlier files: the weights from the old factor
            if not (np.array_equal(self.alpha_, arrays["alpha"]) if exact else
                    np.allclose(self.alpha_, arrays["alpha"], rtol=1e-6,
                                atol=1e-9 * float(np.max(np.abs(arrays["alpha"]), initial=0.0)))):
                raise ModelFileError(f"{path}: stored weights disagree with the stored factorisation")
            frames, start = [], 0
            for k, n in enumerate(arrays["frame_natoms"]):
                sl = slice(start, start + int(n))
                start += int(n)
                T = arrays["frame_temperature"][k] if "frame_temperature" in arrays else np.nan
                a = Atoms(
                    numbers=arrays["frame_numbers"][sl], positions=arrays["frame_positions"][sl],
                    cell=arrays["frame_cells"][k], pbc=arrays["frame_pbc"][k],
                    info={TEMPERATURE_KEY: float(T)} if np.isfinite(T) else None,
                )
                e = arrays["frame_energy"][k]
                f = arrays["frame_forces"][sl]
                s = arrays["frame_stress"][k]
                lab = Labels(
                    None if np.isnan(e) else float(e),
                    None if np.isnan(f).all() else f.copy(),
                    None if np.isnan(s).all() else s.copy(),
                )
                frames.append(_labelled_copy(a, lab))
            self.frames_ = frames
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            if isinstance(exc, ModelFileError):
                raise
            raise ModelFileError(f"{path}: inconsistent model file ({type(exc).__name__}: {exc})") from exc
        if not build_baseline:
            self.baseline_ = None
            return self
        try:
            self.baseline_ = _baseline.make_baseline(self.baseline, self.baseline_kwargs)
            self._baseline_fitted = (self.baseline, self.baseline_kwargs)
        except _baseline.BaselineError as exc:
            raise _baseline.BaselineError(f"{path}: {exc}") from None
        return self


def load(path: str | os.PathLike) -> SparseGP:
    """Load a model saved with :meth:`SparseGP.save` (``gpal.load``).

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    gpal.SparseGP

    Raises
    ------
    gpal.ModelFileError
        Missing, truncated, tampered or incompatible file.
    """
    from .potential import SparseGP

    return SparseGP.load(path)
