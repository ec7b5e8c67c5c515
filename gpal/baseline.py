"""Δ-learning: a cheap physical model under the GP.

A Δ-model predicts ``baseline + GP``: the sparse GP is fitted to the residual labels
``oracle − baseline`` (energy, forces, stress) and the baseline's energy, forces and
stress are added back at prediction. The uncertainty is the GP's: the baseline is a
deterministic function of the positions. A good baseline (GFN1-xTB under GFN2-xTB, xTB
under DFT, a universal potential under DFT) leaves a small, smooth residual that takes
far fewer labels to learn than the full potential energy surface.

The baseline is any ASE calculator, given as

* an import path ``"module:Name"`` plus keyword arguments (``baseline_kwargs``), e.g.
  ``SparseGP(baseline="tblite.ase:TBLite", baseline_kwargs={"method": "GFN1-xTB"})``;
  this is what a saved model stores (never a pickle), and what ``[model] baseline =
  "module:Name"`` with ``[model.baseline_kwargs]`` means in a ``gpal learn`` config;
* a live calculator, e.g. ``SparseGP(baseline=TBLite(method="GFN1-xTB"))``: usable at
  once; saving the model needs its class to be importable as ``module:Name`` and its
  ``parameters`` (the ASE convention for a calculator's settings) to be JSON, so that
  ``Class(**parameters)`` rebuilds it on load (checked: :func:`baseline_spec`).

A model file whose baseline cannot be imported on load raises
:class:`gpal.exceptions.BaselineError` with a one-line message naming the module.
"""

from __future__ import annotations

import json
import threading
import weakref
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes

from . import _threads
from ._imports import MissingNameError, import_object
from ._validation import energy_label, keyword_typo, warn_unknown_keywords
from .exceptions import BaselineError

__all__ = ["ZeroBaseline", "make_baseline", "baseline_spec", "baseline_labels"]


class ZeroBaseline(Calculator):
    """A baseline that is zero everywhere (energy, forces, stress): a Δ-model over it is
    the plain model. Useful in tests and as a placeholder in configurations."""

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress"]

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        n = len(self.atoms)
        self.results = {"energy": 0.0, "free_energy": 0.0, "energies": np.zeros(n),
                        "forces": np.zeros((n, 3)), "stress": np.zeros(6)}


def _import(path: str):
    if not isinstance(path, str) or ":" not in path:
        raise BaselineError(f"baseline must look like 'module:Name' (e.g. 'tblite.ase:TBLite'), got {path!r}")
    try:
        return import_object(path)
    except ImportError as exc:
        raise BaselineError(
            f"cannot import baseline module {path.partition(':')[0]!r} ({type(exc).__name__}: {exc}); "
            f"install it to use this model"
        ) from None
    except MissingNameError as exc:
        raise BaselineError(f"baseline {exc}") from None


def _calculator_class(path: str) -> type:
    """The ASE calculator class ``path`` names. Only such a class is built: a model file
    names its baseline, and loading a file must not call whatever its metadata names."""
    from ase.calculators.calculator import BaseCalculator

    factory = _import(path)
    if not (isinstance(factory, type) and issubclass(factory, BaseCalculator)):
        raise BaselineError(f"baseline {path} is not an ASE calculator class (a subclass of "
                            f"ase.calculators.calculator.BaseCalculator); got {type(factory).__name__}")
    return factory


def _split(baseline, kwargs) -> tuple[str | None, dict]:
    """(import path or None, kwargs) of a baseline given as a path, a dict or an OracleSpec."""
    if isinstance(baseline, str):
        return baseline, dict(kwargs or {})
    if isinstance(baseline, dict) or hasattr(baseline, "factory"):
        d = baseline if isinstance(baseline, dict) else baseline.to_dict()
        if "factory" not in d:
            raise BaselineError(f"a baseline dict needs a 'factory' key ('module:Name'), got keys {sorted(d)}")
        if kwargs:
            raise BaselineError("give baseline kwargs either in the baseline dict or as baseline_kwargs, not both")
        return d["factory"], dict(d.get("kwargs") or {})
    return None, {}


def make_baseline(baseline, kwargs: dict | None = None):
    """Build (or pass through) the baseline calculator.

    Parameters
    ----------
    baseline : str, dict, OracleSpec, ASE calculator or None
        ``"module:Name"`` (with ``kwargs``), ``{"factory": "module:Name", "kwargs": {...}}``,
        a :class:`gpal.OracleSpec`, or a live ASE calculator (returned as is).
    kwargs : dict, optional
        Keyword arguments for an import path.

    Returns
    -------
    ASE calculator or None

    Raises
    ------
    BaselineError
        Not importable, not a calculator, or kwargs given with a live calculator.
    """
    if baseline is None:
        if kwargs:
            raise BaselineError("baseline_kwargs given without a baseline")
        return None
    path, kw = _split(baseline, kwargs)
    if path is None:
        from .learning.oracle import is_calculator

        if not is_calculator(baseline):
            raise BaselineError(
                f"baseline must be an ASE calculator or 'module:Name', got {type(baseline).__name__}")
        if kwargs:
            raise BaselineError("baseline_kwargs apply to an import path, not to a live calculator")
        return baseline
    factory = _calculator_class(path)
    typo = keyword_typo(factory, kw, f"the baseline {path}", "the model would learn against its default instead")
    if typo:
        raise BaselineError(typo)
    try:
        calc = factory(**kw)
    except TypeError as exc:
        raise BaselineError(f"cannot build baseline {path} with kwargs {kw}: {exc}") from None
    warn_unknown_keywords(factory, kw, f"the baseline {path}", calc)
    return calc


def without_results(calc):
    """``calc``, or where it has computed a new one of its class and settings
    (:func:`baseline_spec`, the description a saved model keeps), without results: what a
    copy or clone of a model takes. A calculator keeps its last calculation, and some
    keep state no copy can take with it (tblite's library state; EMT's lambda), so a
    deep copy, pickle or scikit-learn clone of a Δ-model failed after its first
    prediction. One that has not computed, or cannot be described, is returned as is.
    """
    if getattr(calc, "atoms", None) is None and not getattr(calc, "results", None):
        return calc
    try:
        spec = baseline_spec(calc)
        fresh = make_baseline(spec["factory"], spec["kwargs"])
    except BaselineError:
        return calc
    entry = _REBUILT.get(id(calc))
    if entry is not None and entry[0]() is calc:  # (its description was checked on it)
        _remember_rebuilt(fresh)
    return fresh


def check_baseline(baseline, kwargs: dict | None = None) -> None:
    """Raise :class:`BaselineError` for a baseline :func:`make_baseline` would refuse,
    without building it (an import path is imported, its class not instantiated)."""
    if baseline is None:
        if kwargs:
            raise BaselineError("baseline_kwargs given without a baseline")
        return
    path, _ = _split(baseline, kwargs)
    if path is None:
        make_baseline(baseline, kwargs)  # a live calculator: checked, returned as is
    else:
        _calculator_class(path)


def baseline_spec(baseline, kwargs: dict | None = None) -> dict | None:
    """The JSON recipe a saved model keeps: ``{"factory": "module:Name", "kwargs": {...}}``.

    A live calculator is described by its class's import path and its ``parameters``
    (ASE's record of the settings it was built with).

    Raises
    ------
    BaselineError
        A live calculator whose class has no import path (defined in ``__main__`` or in
        a function) or whose parameters are not JSON.
    """
    if baseline is None:
        return None
    path, kw = _split(baseline, kwargs)
    if path is None:
        cls = type(baseline)
        mod, name = getattr(cls, "__module__", None), getattr(cls, "__qualname__", "")
        if not mod or mod == "__main__" or "<" in name:
            raise BaselineError(
                f"cannot save the baseline {cls.__name__}: its class is not importable "
                f"(defined in {mod or 'nowhere'}); give the baseline as 'module:Name' with baseline_kwargs"
            )
        path, kw = f"{mod}:{name}", dict(getattr(baseline, "parameters", None) or {})
    try:
        kw = json.loads(json.dumps(kw))
    except (TypeError, ValueError) as exc:
        raise BaselineError(
            f"cannot save the baseline {path}: its keyword arguments are not JSON ({exc}); "
            "give the baseline as 'module:Name' with JSON baseline_kwargs"
        ) from None
    if not isinstance(baseline, (str, dict)) and not hasattr(baseline, "factory"):
        _check_rebuilds(baseline, path, kw)
    return {"factory": path, "kwargs": kw}


#: live baselines whose description ``Class(**parameters)`` was checked to rebuild them:
#: ``id -> (weak reference, )`` (a calculator without weak references is not remembered)
_REBUILT: dict = {}


def _remember_rebuilt(calc) -> None:
    try:
        _REBUILT[id(calc)] = (weakref.ref(calc, lambda _, k=id(calc): _REBUILT.pop(k, None)),)
    except TypeError:
        pass


def _check_rebuilds(calc, path: str, kw: dict) -> None:
    """``BaselineError`` unless ``Class(**parameters)`` rebuilds the live calculator
    ``calc``, which is what a saved model (and a copy, pickle or clone of one) holds.

    ASE's convention keeps a calculator's settings in ``parameters``, but not every
    calculator follows it: ``TIP3P(rc=4.0)`` has empty ``parameters`` and came back
    from a save with rc 5.0 (a test energy 0.156 eV off, no word), and
    ``SumCalculator(calcs)`` saved but could not be loaded. The class is built from the
    description; once the calculator has computed, the rebuilt one computes its last
    structure again and must give the same energy (relative 1e-8). A calculator passes
    once (remembered by identity), so the cost is one extra evaluation per live
    baseline."""
    entry = _REBUILT.get(id(calc))
    if entry is not None and entry[0]() is calc:
        return
    name = type(calc).__name__
    advice = ("its settings are not all in its `parameters`; give the baseline as 'module:Name' with JSON "
              "baseline_kwargs (for a combination of calculators, a class of your own in a module that "
              "builds it)")
    try:
        fresh = make_baseline(path, kw)
    except BaselineError as exc:
        raise BaselineError(f"cannot save or copy the baseline {name}: {name}(**parameters) does not "
                            f"rebuild it ({exc}); {advice}") from None
    atoms, res = getattr(calc, "atoms", None), getattr(calc, "results", None) or {}
    if atoms is None or "energy" not in res:
        return  # (not computed yet: checked at its first save or copy after it has)
    a = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    try:
        with _threads.user_code():
            e = float(fresh.get_potential_energy(a))
    except Exception as exc:  # the baseline is foreign code
        raise BaselineError(f"cannot save or copy the baseline {name}: {name}(**parameters) fails on the "
                            f"structure it last computed ({type(exc).__name__}: {exc}); {advice}") from None
    e0 = float(res["energy"])
    if not abs(e - e0) <= 1e-8 * max(abs(e0), 1.0):
        raise BaselineError(f"cannot save or copy the baseline {name}: {name}(**parameters) gives {e:.6f} eV "
                            f"on the structure it last computed, where it gave {e0:.6f} eV; {advice}")
    _remember_rebuilt(calc)


def baseline_labels(calc, atoms: Atoms, *, stress: bool | str = False) -> dict[str, Any]:
    """Energy (eV), per-atom energies (n_atoms,), forces (n_atoms, 3) and, when asked,
    stress (6,) eV/Å^3 of the baseline on a bare copy of ``atoms`` (``stress="optional"``:
    no ``"stress"`` key where the baseline has none, instead of the error).

    ``energies`` come from the calculator when it offers them, otherwise the energy is
    shared equally between the atoms (only their sum, the energy, is physical), and
    ``energies_split`` (bool) says which.
    ASE calculators cache their results, so asking twice for the same positions costs
    one calculation.

    Raises
    ------
    BaselineError
        The baseline fails, returns non-finite values, or has no stress when one is needed.
    """
    a = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    name = type(calc).__name__
    with _lock_of(calc), _threads.user_code():  # one evaluation at a time; the user's OpenMP threads
        return _evaluate(calc, a, name, stress)


_LOCKS: dict = {}
_LOCKS_GUARD = threading.Lock()


def _lock_of(calc) -> threading.Lock:
    """The lock of one baseline calculator: threads that share a model (walker tasks
    on a multi-threaded worker) evaluate its baseline one at a time."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(id(calc))
        if lock is None or lock[1]() is not calc:
            try:
                ref = weakref.ref(calc)
            except TypeError:  # a calculator without weak references: kept alive
                ref = (lambda c: lambda: c)(calc)
            lock = _LOCKS[id(calc)] = (threading.Lock(), ref)
        return lock[0]


def _evaluate(calc, a: Atoms, name: str, stress: bool) -> dict[str, Any]:
    try:
        energy = calc.get_potential_energy(a)
        forces = np.array(calc.get_forces(a), dtype=float)
        # (the free energy where it has one, as for labels: _validation.energy_label)
        energy = float(energy_label(getattr(calc, "results", None) or {}, energy))
        out = {"energy": energy, "forces": forces}
        if stress:
            try:
                out["stress"] = np.array(calc.get_stress(a), dtype=float).reshape(-1)
            except (PropertyNotImplementedError, NotImplementedError):
                if stress != "optional":
                    raise BaselineError(f"baseline {name} gives no stress, which this periodic frame "
                                        "needs") from None
        energies = None
        if "energies" in getattr(calc, "implemented_properties", ()):
            try:
                energies = np.array(calc.get_potential_energies(a), dtype=float)
            except (PropertyNotImplementedError, NotImplementedError):
                energies = None
    except BaselineError:
        raise
    except Exception as exc:  # the baseline is foreign code
        raise BaselineError(f"baseline {name} failed: {type(exc).__name__}: {exc}") from exc
    split = energies is None or energies.shape != (len(a),)
    if split:  # (the total's equal share: no local energies of the baseline's own)
        energies = np.full(len(a), energy / max(len(a), 1))
    out["energies"] = energies
    out["energies_split"] = split
    for k, v in out.items():
        if not np.all(np.isfinite(v)):
            raise BaselineError(f"baseline {name} returned non-finite {k}")
    if out["forces"].shape != (len(a), 3):
        raise BaselineError(f"baseline {name} returned forces of shape {out['forces'].shape}")
    return out
