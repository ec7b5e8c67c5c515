"""ASE calculator for gpal models, with uncertainties.

Attach a fitted :class:`gpal.SparseGP` to any ASE dynamics, optimiser or NEB::

    atoms.calc = GPCalculator(model)
    atoms.get_forces()
    atoms.calc.results["energies_std"]     # DTC std of each local energy, eV

One ``calculate`` call fills energy, free_energy, energies, forces and (for 3D-periodic
cells) stress together with the requested uncertainties, so an MD step costs exactly
one model evaluation; ASE's own caching (``check_state``) serves repeated property
requests at the same positions.

Uncertainty keys (``energies_std``, ``energy_std``, ``forces_std``, ``stress_std``) are
non-negative standard deviations with the shape of the property they describe (with a
stored conformal quantile, ``forces_interval90`` too, eV/Å). They are kept in
``results``, with ``novelty`` (n_atoms,) beside the local-energy stds (as
:meth:`gpal.SparseGP.predict` returns it); the calculator changes nothing else. With ``record_std=True``
(opt-in) they are also copied into the ``atoms.info`` of the atoms being calculated, so
that trajectory and extxyz writers keep them. They are left out of
:meth:`export_properties`, which ASE restricts to its standard property names.

Cost of the uncertainty: the local-energy std reuses the (n_atoms x n_sparse) kernel
block of the energy and adds two triangular products with factors precomputed once per
model (about 2 n_sparse² flops per atom, the second in single precision): measured ~7
µs/atom at 500 sparse points on one core, ~18 % of the MD step (benchmarks/bench_md.py,
108-atom Cu), so it is computed every step by default
(``std_every=1``). ``forces_std=True`` needs an explicit derivative pass, about the
cost of adding a training frame; use it for analysis, or every k-th step.
"""

from __future__ import annotations

import os

import numpy as np
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes
from ase.outputs import Properties, all_outputs

from ._validation import check_is_fitted, check_number
from .model import SparseGP

_ARRAY_CHANGES = tuple(k for k in all_changes if k not in ("cell", "pbc"))

__all__ = ["GPCalculator"]

# keywords of ase.calculators.calculator.Calculator's constructor that GPCalculator passes
# on; GPCalculator has no ``parameters`` of its own
_ASE_KEYWORDS = ("restart", "ignore_bad_restart_file", "label", "atoms", "directory")
_OWN_KEYWORDS = ("std_every", "forces_std", "calibrated", "record_std")

_STD_KEYS = ("energies_std", "energy_std", "forces_std", "stress_std", "forces_interval90")


class GPCalculator(Calculator):
    """ASE calculator wrapping a fitted :class:`gpal.SparseGP`.

    Parameters
    ----------
    model : gpal.SparseGP or path-like
        A fitted model, or the path of one saved by :meth:`gpal.SparseGP.save`
        (``.npz``), which is loaded.
    std_every : int, default 1
        Compute the local-energy std (``energies_std``, ``energy_std``) every
        ``std_every``-th evaluation; 0 never. Steps without it simply lack the keys.
    forces_std : bool or int, default False
        Also compute ``forces_std`` and ``stress_std``: True every evaluation, an int
        k every k-th evaluation.
    calibrated : bool or None, default None
        Report stds multiplied by the model's recalibration factors
        (:meth:`gpal.SparseGP.set_calibration`). None: calibrated when the model
        stores a calibration (a model from an active-learning run, or after ``gpal
        validate --calibrate``), raw otherwise, as ``gpal md`` reports them. The raw
        force stds of a learner's model are several times too small. ``stress_std``
        is raw either way unless the model stores a ``stress_std`` calibration of the
        user's (:meth:`gpal.SparseGP.predict`).
    record_std : bool, default False
        Also copy the uncertainty results into ``atoms.info`` (keys ``energies_std``,
        ``energy_std``, ``forces_std``, ``stress_std``, ``forces_interval90``; stale ones
        are removed at each evaluation; those :meth:`get_uncertainty` computes are
        added) so that trajectories and extxyz files keep them. Off by default: the
        user's ``atoms`` then only gain what any ASE calculator gives them.
    **kwargs
        ``restart``, ``ignore_bad_restart_file``, ``label``, ``atoms``, ``directory``:
        passed to :class:`ase.calculators.calculator.Calculator`. Any other keyword (a
        misspelt ``std_evry=5``) is a TypeError: ASE would keep it without a word.

    Attributes
    ----------
    n_evaluations : int
        Number of model evaluations so far (one per ``calculate``).
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress"]
    default_parameters: dict = {}
    nolabel = True

    def __init__(
        self,
        model: SparseGP | str | os.PathLike,
        *,
        std_every: int = 1,
        forces_std: bool | int = False,
        calibrated: bool | None = None,
        record_std: bool = False,
        **kwargs,
    ):
        if isinstance(model, (str, os.PathLike)):
            from .model import load

            model = load(model)
        if not hasattr(model, "predict"):
            raise TypeError(f"model must be a fitted gpal.SparseGP or the path of a saved model (.npz), "
                            f"got {type(model).__name__}")
        check_is_fitted(model)
        unknown = [k for k in kwargs if k not in _ASE_KEYWORDS]
        if unknown:  # (ASE's Calculator keeps any keyword in ``parameters`` without a word)
            import difflib

            close = difflib.get_close_matches(unknown[0], _OWN_KEYWORDS + _ASE_KEYWORDS, n=1, cutoff=0.6)
            raise TypeError(f"GPCalculator got an unexpected keyword argument {unknown[0]!r}"
                            + (f" (did you mean {close[0]!r}?)" if close else
                               f"; its keywords: {', '.join(_OWN_KEYWORDS + _ASE_KEYWORDS)}"))
        super().__init__(**kwargs)
        self.model = model
        self.std_every = check_number("std_every", std_every, low=0, integer=True)
        self.forces_std = (int(forces_std) if isinstance(forces_std, bool)
                           else check_number("forces_std (True, False or every how many evaluations)",
                                             forces_std, low=0, integer=True))
        if calibrated is not None and not isinstance(calibrated, (bool, np.bool_)):
            raise TypeError(f"calibrated must be True, False or None, got {calibrated!r}")
        self.calibrated = calibrated
        if not isinstance(record_std, (bool, np.bool_)):  # ('no' had turned recording on)
            raise TypeError(f"record_std must be True or False, got {record_std!r}")
        self.record_std = bool(record_std)
        self.n_evaluations = 0
        self._model_state = None

    def _model_key(self) -> tuple:
        """What the model's predictions depend on: its fitted objects (a fit, update,
        refit or load replaces them) and, for calibrated stds, the stored calibration."""
        m = self.model
        objects = (m.alpha_, m.sparse_X_, m.kernel_, m.descriptor_, getattr(m, "e0_", None))
        return objects, (str(m.calibration_) if self._calibrated() else None)

    def _calibrated(self) -> bool:
        """Whether stds are reported calibrated now (``calibrated=None``: if the model
        stores a calibration)."""
        if self.calibrated is None:
            return bool(getattr(self.model, "calibration_", None))
        return bool(self.calibrated)

    def _model_changed(self) -> bool:
        if self._model_state is None:
            return False
        (objects, cal), (old_objects, old_cal) = self._model_key(), self._model_state
        return cal != old_cal or any(a is not b for a, b in zip(objects, old_objects))

    def check_state(self, atoms, tol: float = 1e-15) -> list[str]:
        """Properties of ``atoms`` changed since the last calculation (ASE's check).

        ASE's dynamics ask up to three times per step, and ASE's tolerance comparison
        costs ~0.3 ms per ask at 108 atoms. Two exact tests answer the common cases as
        ASE would: the cell, pbc and every array ASE compares exactly those of the last
        calculation (nothing changed; the momenta do not count), or all of them but the
        positions, which moved by more than ``tol`` somewhere (``["positions"]``, an MD
        step). Anything else (a move within ``tol``, NaN, other changes, ignored
        changes) is answered by ASE's own :meth:`Calculator.check_state`. A model fitted,
        updated, refitted or recalibrated since the last calculation is a change too
        (every property), so results never outlive the model that made them.
        """
        old = self.atoms
        if old is not None and self._model_changed():  # updated in place since: recompute
            return list(all_changes)
        if old is not None and _identical(old, atoms, but="positions"):
            if old.positions.shape == atoms.positions.shape:
                moved = np.abs(atoms.positions - old.positions)
                if not moved.any():
                    return []
                # an MD step: every other property exactly the same and a finite move beyond
                # the tolerance somewhere is what ASE's comparison would find, and only that
                if "positions" not in self.ignored_changes and np.isfinite(moved).all() and moved.max() > tol:
                    return ["positions"]
        return super().check_state(atoms, tol)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        k = self.n_evaluations
        want_std = self.std_every > 0 and k % self.std_every == 0
        want_fstd = self.forces_std > 0 and k % self.forces_std == 0
        res = self.model.predict(
            self.atoms,
            return_std=want_std,
            forces_std=want_fstd,
            stress_std=want_fstd,
            calibrated=self._calibrated(),
        )
        self.n_evaluations += 1
        self.results = res
        self._model_state = self._model_key()
        if self.record_std and atoms is not None:
            for key in _STD_KEYS:
                atoms.info.pop(key, None)
                if key in res:
                    atoms.info[key] = res[key]

    def export_properties(self) -> Properties:
        """Standard ASE properties only (the ``*_std`` keys are not ASE outputs)."""
        return Properties({k: v for k, v in self.results.items() if k in all_outputs})

    def get_uncertainty(self, atoms=None, key: str = "energies_std") -> np.ndarray:
        """Return an uncertainty result, computing it if this step did not.

        Parameters
        ----------
        atoms : ase.Atoms, optional
        key : {"energies_std", "energy_std", "forces_std", "stress_std", "forces_interval90"}
            ``forces_interval90`` (the half-width of the 90 % conformal interval of each
            force label, eV/Å) needs ``calibrated=True`` and a stored conformal quantile.
        """
        if key not in _STD_KEYS:
            raise ValueError(f"Unknown uncertainty {key!r}; choose from {_STD_KEYS}")
        if atoms is None:
            atoms = self.atoms
        if atoms is None:  # (ASE's get_property would fail deep in predict)
            raise ValueError("this GPCalculator has no structure yet: pass atoms "
                             "(calc.get_uncertainty(atoms)), or calculate a structure first")
        self.get_property("energy", atoms)
        if key not in self.results:
            res = self.model.predict(
                atoms,
                return_std=True,
                forces_std=key in ("forces_std", "stress_std", "forces_interval90"),
                stress_std=key == "stress_std",
                calibrated=self._calibrated(),
            )
            for k in _STD_KEYS:
                if k in res:
                    self.results[k] = res[k]
                    if self.record_std:  # (as calculate records them: they had stayed out of info)
                        atoms.info[k] = res[k]
        if key == "stress_std" and key not in self.results:
            raise PropertyNotImplementedError("stress_std needs a cell periodic in all three directions "
                                              f"(pbc {atoms.pbc.tolist()}), as stress does")
        if key not in self.results:  # forces_interval90 without a calibrated conformal quantile
            raise ValueError(f"{key!r} needs GPCalculator(calibrated=True) and a stored force "
                             "calibration with a conformal quantile (ActiveLearner, gpal validate --calibrate)")
        return self.results[key]


def _identical(a, b, but: str | None = None) -> bool:
    """Whether two Atoms have exactly the same cell, pbc and per-atom arrays that ASE checks
    (all but the array ``but``).

    Only the arrays named in ASE's ``all_changes`` count (positions, numbers, initial
    charges and magnetic moments), as in ASE's ``compare_atoms``: the momenta, which
    MD integrators change between the force calls of a step, are not a system change.
    """
    if not (np.array_equal(a.cell.array, b.cell.array) and np.array_equal(a.pbc, b.pbc)):
        return False
    for key in _ARRAY_CHANGES:
        if key == but:
            continue
        x, y = a.arrays.get(key), b.arrays.get(key)
        if x is None or y is None:
            if x is not y:  # present in one only
                return False
        elif not (x.shape == y.shape and np.array_equal(x, y)):
            return False
    return True
