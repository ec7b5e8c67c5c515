"""Input checks shared by gpal's public entry points.

Everything a user hands to gpal passes through here once, at the boundary, so the
numerical code behind it can assume clean input.
"""

from __future__ import annotations

import functools
import os
import re
import sys
import warnings
from dataclasses import dataclass

import ase
import numpy as np
from ase import Atoms
from ase.stress import full_3x3_to_voigt_6_stress

from . import _jit
from .exceptions import (
    GpalError,
    InvalidPositionsError,
    MissingCellError,
    MissingLabelsError,
    NotFittedError,
    OverlappingAtomsError,
    UnknownSpeciesError,
)

#: Atoms closer than this (Å) are reported as overlapping: no chemistry happens there
#: and every descriptor-based model extrapolates wildly.
DEFAULT_MIN_DISTANCE = 0.5


@dataclass
class Labels:
    """Reference labels of one frame; any of them may be missing (None).

    Attributes
    ----------
    energy : float or None
        Total potential energy, eV.
    forces : ndarray of shape (n_atoms, 3) or None
        Forces, eV/Å.
    stress : ndarray of shape (6,) or None
        Voigt stress (xx, yy, zz, yz, xz, xy), eV/Å^3, ASE sign.
    """

    energy: float | None = None
    forces: np.ndarray | None = None
    stress: np.ndarray | None = None

    @property
    def empty(self) -> bool:
        return self.energy is None and self.forces is None and self.stress is None


def check_atoms(atoms, *, species=None, periodic=None, what="atoms") -> None:
    """Validate an :class:`ase.Atoms` for descriptor evaluation.

    Raises
    ------
    TypeError
        Not an ``ase.Atoms``.
    InvalidPositionsError
        NaN or infinite positions or cell.
    UnknownSpeciesError
        Species outside ``species`` (atomic numbers).
    MissingCellError
        ``periodic`` is True and the atoms have a periodic direction but a missing or
        degenerate cell.
    """
    if not isinstance(atoms, Atoms):
        raise TypeError(f"{what} must be an ase.Atoms, got {type(atoms).__name__}"
                        + (" (one structure per call: [model.predict(a) for a in frames])"
                           if isinstance(atoms, (list, tuple)) else
                           f" (the path {str(atoms)!r}? read the structure first: ase.io.read(path))"
                           if isinstance(atoms, (str, os.PathLike)) else ""))
    if len(atoms) == 0:
        raise ValueError(f"{what} contains no atoms")
    cell = atoms.cell.array
    check_frame_arrays(atoms.positions, cell, atoms.numbers, species, what)
    if periodic and atoms.pbc.any() and abs(_det3(cell)) < 1e-6 and not periodic_vectors_ok(cell, atoms.pbc):
        raise MissingCellError(
            f"{what} has periodic boundaries (pbc {atoms.pbc.tolist()}) but its cell vectors "
            f"along them are missing or linearly dependent (cell {np.round(cell, 6).tolist()}). "
            "Set atoms.cell, or atoms.pbc = False for an isolated structure."
        )


_NO_SPECIES = np.zeros(0, dtype=bool)


def check_frame_arrays(pos, cell, numbers, species=None, what="atoms") -> None:
    """Finite positions (n, 3) and cell (3, 3), and atomic ``numbers`` among ``species``
    (None: any): :class:`InvalidPositionsError` or :class:`UnknownSpeciesError`.

    The usual arrays (float64, int64, C order) in one compiled pass (an MD step's check
    took ~65 µs in numpy calls, with the caches cold after the step's BLAS passes);
    numpy for the others and to name what is wrong.
    """
    allowed = _NO_SPECIES if species is None else _species_table(tuple(int(z) for z in species))
    usual = (pos.dtype == np.float64 and cell.dtype == np.float64 and numbers.dtype == np.int64
             and pos.ndim == 2 and pos.shape[1] == 3 and cell.shape == (3, 3)
             and pos.flags.c_contiguous and cell.flags.c_contiguous and numbers.flags.c_contiguous)
    if usual and not _jit.frame_problem(pos, cell, numbers, allowed, species is not None):
        return
    if not np.isfinite(pos).all():
        bad = np.flatnonzero(~np.all(np.isfinite(pos), axis=1))
        raise InvalidPositionsError(
            f"{what} has non-finite positions at atom indices {bad[:10].tolist()}"
        )
    if not np.isfinite(cell).all():
        raise InvalidPositionsError(f"{what} has a non-finite cell")
    if species is not None and len(numbers):
        lo, hi = int(numbers.min()), int(numbers.max())
        if lo < 0 or hi >= len(allowed) or not allowed[numbers].all():
            unknown = set(np.unique(numbers).tolist()) - set(int(z) for z in species)
            if unknown:
                raise UnknownSpeciesError(unknown, species)


def periodic_vectors_ok(cell, pbc) -> bool:
    """Whether the cell vectors along the periodic directions are non-zero and linearly
    independent (the vectors along non-periodic directions may be anything, zero
    included: ASE's surface and wire builders leave them zero without vacuum)."""
    vecs = np.asarray(cell, dtype=float)[np.asarray(pbc, dtype=bool)]
    if not len(vecs):
        return True
    norms = np.linalg.norm(vecs, axis=1)
    if not np.all(norms > 1e-8):
        return False
    sv = np.linalg.svd(vecs / norms[:, None], compute_uv=False)
    return bool(sv.min() > 1e-8)


@functools.lru_cache(maxsize=64)
def _species_table(species: tuple) -> np.ndarray:
    """Boolean lookup by atomic number: True for the numbers in ``species``."""
    table = np.zeros(max((z for z in species if z >= 0), default=-1) + 1, dtype=bool)
    for z in species:
        if z >= 0:
            table[z] = True
    table.setflags(write=False)
    return table


def _det3(cell: np.ndarray) -> float:
    """Determinant of a 3x3 cell matrix (the signed volume, Å^3), without LAPACK."""
    (a, b, c), (d, e, f), (g, h, i) = cell.tolist()
    return a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g)


#: the folders of gpal's and ASE's code: a warning points past them, at the user's line
_NOT_USER_CODE = tuple(os.path.dirname(os.path.abspath(m.__file__)) + os.sep for m in (sys.modules[__package__], ase))


def user_stacklevel() -> int:
    """``stacklevel`` for a ``warnings.warn`` in the function that calls this one: the
    first caller outside the gpal and ASE packages (a user's line, whatever gpal
    functions, thread-policy wrappers and ASE calls lie between: a warning of a
    ``GPCalculator`` evaluation pointed into ASE's calculator.py)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(_NOT_USER_CODE):
        frame, level = frame.f_back, level + 1
    return level


def check_min_distance(distances, min_distance: float, what="atoms") -> None:
    """Raise :class:`OverlappingAtomsError` if any pair distance is below ``min_distance``."""
    if min_distance and distances.size:
        dmin = float(distances.min())
        if dmin < min_distance:
            raise OverlappingAtomsError(
                f"{what} has two atoms {dmin:.3f} Å apart, closer than the physical "
                f"minimum {min_distance} Å (set min_distance to change this check)"
            )


def energy_label(results, default=None):
    """The energy a frame is labelled with from ``results`` (a calculator's results or an
    ``info`` dict): ``free_energy`` where there is one, else ``energy``, else ``default``.
    With electronic smearing (DFT of metals) the forces are the free energy's gradient,
    and ``energy`` is its extrapolation to zero smearing."""
    energy = results.get("free_energy")
    return results.get("energy", default) if energy is None else energy


def frame_labels(atoms: Atoms) -> Labels:
    """Read energy, forces and stress of a labelled frame.

    Labels are taken from ``atoms.calc.results`` (what ``ase.io.read`` of an extxyz file
    and a finished calculation provide) and else from ``atoms.info['energy']``
    (``free_energy`` before ``energy`` wherever a frame has both: with electronic
    smearing the forces are the free energy's gradient),
    ``atoms.arrays['forces']`` and ``atoms.info['stress']``, or, without a stress, a
    virial as GAP's files give it, ``atoms.info['virial']`` (eV; 3x3, 9 or Voigt 6
    numbers; stress = -virial / volume). Nothing is computed: a live calculator is never
    called. Whether the results still belong to the frame's geometry is
    :func:`check_results_current`'s question (:func:`check_frames` asks it).
    """
    results = {}
    if atoms.calc is not None and getattr(atoms.calc, "results", None):
        results = atoms.calc.results
    energy = energy_label(results, energy_label(atoms.info))
    forces = results.get("forces", atoms.arrays.get("forces"))
    stress = results.get("stress", atoms.info.get("stress"))
    if stress is None and atoms.info.get("virial") is not None:  # (GAP's key: ASE leaves it in info)
        from .io import _virial_to_stress

        try:
            stress = _virial_to_stress(atoms.info["virial"], atoms)
        except (ValueError, GpalError) as exc:
            raise MissingLabelsError(f"info 'virial': {exc}") from None
    n = len(atoms)
    if energy is not None:
        energy = _label_number(energy, "energy")
        if not np.isfinite(energy):
            raise MissingLabelsError("frame energy is not finite")
    if forces is not None:
        forces = _label_array(forces, "forces")
        if forces.shape != (n, 3):
            raise MissingLabelsError(f"forces have shape {forces.shape}, expected ({n}, 3)")
        if not np.all(np.isfinite(forces)):
            raise MissingLabelsError("frame forces contain non-finite values")
    if stress is not None:
        stress = _label_array(stress, "stress")
        if stress.shape == (3, 3):
            stress = full_3x3_to_voigt_6_stress(stress)
        if stress.shape != (6,):
            raise MissingLabelsError(f"stress has shape {stress.shape}, expected (6,)")
        if not np.all(np.isfinite(stress)):
            raise MissingLabelsError("frame stress contains non-finite values")
        if not np.all(atoms.pbc) or abs(atoms.cell.volume) < 1e-6:
            stress = None  # stress of a non-periodic frame carries no information
    return Labels(energy, forces, stress)


def _label_number(value, what: str) -> float:
    """A label that must be one real number (eV): a MissingLabelsError otherwise (a
    string, a bool, an array of several values), which the callers name the frame in."""
    if isinstance(value, (bool, np.bool_, str, bytes)):
        raise MissingLabelsError(f"frame {what} is {value!r}, not a number (eV)")
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise MissingLabelsError(f"frame {what} is {value!r}, not a number (eV)") from None
    if arr.size != 1:
        raise MissingLabelsError(f"frame {what} holds {arr.size} values, expected one number (eV)")
    return float(arr.reshape(()))


def _label_array(value, what: str) -> np.ndarray:
    """A label array of real numbers: a MissingLabelsError for text or booleans in it, or
    rows of unequal length."""
    try:
        arr = np.asarray(value)
    except ValueError:  # (ragged rows)
        raise MissingLabelsError(f"frame {what} is not an array of numbers: {str(value)[:40]!r}") from None
    if arr.dtype.kind not in "iuf":  # (strings, objects, booleans: not labels)
        try:
            arr = np.asarray(value, dtype=float) if arr.dtype.kind == "O" else None
        except (TypeError, ValueError):
            arr = None
        if arr is None:
            raise MissingLabelsError(f"frame {what} is not an array of numbers: {str(value)[:40]!r}")
    return np.asarray(arr, dtype=float)


def check_results_current(atoms: Atoms) -> None:
    """Raise :class:`MissingLabelsError` if ``atoms.calc.results`` were computed for
    another geometry than ``atoms`` now has: other atoms, atoms moved relative to each
    other, or another cell along directions periodic in both. ASE itself would compute
    them again; read as labels they are stale (a frame rattled after its calculation,
    one calculator shared by several frames).

    The labels stay valid, and pass, for positions that differ by lattice vectors
    (``atoms.wrap()``) or by one rigid translation (``center``, ``translate``), and for a
    changed ``pbc`` or a cell along non-periodic directions (a molecule labelled in a
    box and learnt as a cluster: the user's choice). Rounding (1e-5 Å: a cell or
    positions stored in single precision) is the same frame. A few µs when nothing changed.
    """
    calc = atoms.calc
    ref = getattr(calc, "atoms", None)
    if ref is None or not getattr(calc, "results", None) or not isinstance(ref, Atoms):
        return
    pos, rpos = atoms.positions, ref.positions
    if len(ref) != len(atoms) or not np.array_equal(atoms.numbers, ref.numbers):
        changed, what = "atoms", ""
    else:
        both = np.asarray(atoms.pbc, bool) & np.asarray(ref.pbc, bool)
        cell, rcell = atoms.cell.array, ref.cell.array
        if np.array_equal(pos, rpos) and (not both.any() or np.array_equal(cell[both], rcell[both])):
            return
        if both.any() and not np.allclose(cell[both], rcell[both], rtol=0, atol=1e-5):
            changed, what = "cell", ""
        else:
            from ase.geometry import find_mic

            def mic(d):
                return find_mic(d, cell, both)[0] if both.any() else d

            d = mic(pos - rpos)
            d = mic(d - d.mean(axis=0))  # (a rigid translation changes no label)
            moved = float(np.abs(d).max())
            if moved <= 1e-5:
                return
            changed, what = "positions", f" (atoms moved by up to {moved:.3g} Å relative to each other)"
    raise MissingLabelsError(
        f"its calculator's results were computed before its {changed} changed{what}: stale labels "
        "(ASE would compute them again). Label the frame after changing it (atoms.get_forces())")


def check_frames(frames, what="frames") -> list:
    """Return ``frames`` as a list of labelled :class:`ase.Atoms`, or raise."""
    if isinstance(frames, Atoms):
        frames = [frames]
    if isinstance(frames, (str, bytes, os.PathLike)):
        raise TypeError(f"{what}: got the path {os.fsdecode(frames)!r}, not frames; read them first: "
                        "ase.io.read(path, \":\") (all frames of the file)")
    try:
        frames = list(frames)
    except TypeError:
        raise TypeError(f"{what}: expected a list of labelled ase.Atoms, got {type(frames).__name__}") from None
    if not frames:
        raise ValueError(f"{what}: no frames given")
    unread: dict[str, list] = {}  # label kind -> [key, frames without that label that hold it]
    for k, atoms in enumerate(frames):
        check_atoms(atoms, what=f"{what}[{k}]")
        try:
            check_results_current(atoms)
            labels = frame_labels(atoms)
        except MissingLabelsError as exc:  # (which frame: a file's frame k)
            raise MissingLabelsError(f"{what}[{k}]: {exc}") from None
        for kind, key, beside in _unread_label_keys(atoms, labels):
            if _warned_before(atoms, kind, key):  # (the same frames checked again: the CLI's read, then fit)
                continue
            unread.setdefault((kind, beside), [key, 0])[1] += 1
        if labels.empty:
            info = sorted(str(key) for key in atoms.info)
            arrays = sorted(set(atoms.arrays) - {"numbers", "positions"})
            hint = ""
            if info or arrays:  # labels under other names (GAP's dft_energy, dft_forces, ...)
                hint = (f" Its info keys: {', '.join(info) or 'none'}; per-atom arrays: {', '.join(arrays) or 'none'}: "
                        "labels under other names are read with --energy-key/--forces-key/--stress-key/"
                        "--virial-key (gpal fit, validate) or gpal.io.relabel_frames.")
            raise MissingLabelsError(
                f"{what}[{k}] ({atoms.get_chemical_formula()}) has no energy, forces or "
                "stress. Label it with the oracle first (atoms.calc = ...; "
                "atoms.get_potential_energy()), or read it from an extxyz file that has "
                f"labels.{hint}"
            )
    for (kind, beside), (key, count) in unread.items():
        opt = {"energy": "--energy-key", "forces": "--forces-key", "stress": "--stress-key"}[kind]
        if "virial" in key.lower():
            opt = "--virial-key"
        if beside:  # a reference under a prefix beside labels gpal reads
            warnings.warn(f"{what}: {count} of {len(frames)} frames hold {key!r} beside the {kind} gpal reads, "
                          f"and it differs from them: in a GAP/QUIP evaluation file the standard {kind} are a "
                          f"model's predictions and {key!r} the reference. gpal reads the standard {kind}; pass "
                          f"{opt} {key} (gpal fit, validate; gpal.io.relabel_frames) to read {key!r}",
                          UserWarning, stacklevel=user_stacklevel())
            continue
        warnings.warn(f"{what}: {count} of {len(frames)} frames have no {kind} label that gpal reads, but "
                      f"hold {key!r}, which looks like one; it is not used. gpal reads the calculator's "
                      f"results, info 'energy'/'stress'/'virial' and arrays 'forces': pass {opt} {key} "
                      "(gpal fit, validate) or use gpal.io.relabel_frames", UserWarning,
                      stacklevel=user_stacklevel())
    return frames


#: frames whose unread label keys were warned of: {id: (weak reference, {(kind, key)})}
_WARNED_UNREAD: dict = {}


def _warned_before(atoms: Atoms, kind: str, key: str) -> bool:
    """Whether :func:`check_frames` warned of ``key`` on this very frame object already
    (and note it now): the same frames are checked when read and again when fitted."""
    import weakref

    entry = _WARNED_UNREAD.get(id(atoms))
    if entry is None or entry[0]() is not atoms:
        ident = id(atoms)
        entry = (weakref.ref(atoms, lambda _, i=ident: _WARNED_UNREAD.pop(i, None)), set())
        _WARNED_UNREAD[ident] = entry
    seen = (kind, key) in entry[1]
    entry[1].add((kind, key))
    return seen


#: a reference label's key under a prefix (lower case): REF_energy, dft_forces,
#: DFT_total_energy, qm_force, reference_energy, target_forces...
_REFERENCE_KEY = {kind: re.compile(r"(ref|reference|dft|qm|target|true)[_-]?(total[_-]?)?" + tail)
                  for kind, tail in (("energy", "energy"), ("forces", "forces?"))}


def _unread_label_keys(atoms: Atoms, labels) -> list[tuple[str, str, bool]]:
    """``(kind, key, beside)`` of a label gpal did not read but the frame seems to hold
    under another name: per-atom (n, 3) arrays named like forces (``force``,
    ``dft_forces``) when no forces were read, scalar info entries named like an energy,
    3x3/6/9-number info entries named like a stress or virial; and (``beside`` True) a
    reference under a prefix (``REF_forces``) that differs from the labels gpal read.
    Stds and gpal's own keys are skipped."""
    out = []

    def skip(key: str) -> bool:
        low = key.lower()
        return low.endswith("_std") or low.startswith("gpal") or "pred" in low

    # a reference under a prefix (GAP/QUIP's REF_energy/REF_forces, dft_...) beside
    # standard labels that differ from it: in an evaluation file those are a model's
    if labels.forces is not None:
        for key, arr in atoms.arrays.items():
            if (_REFERENCE_KEY["forces"].fullmatch(key.lower()) and getattr(arr, "shape", None) == labels.forces.shape
                    and not np.allclose(arr, labels.forces, rtol=1e-10, atol=1e-12)):
                out.append(("forces", key, True))
                break
    if labels.energy is not None:
        for key, val in atoms.info.items():
            if _REFERENCE_KEY["energy"].fullmatch(str(key).lower()) and np.ndim(val) == 0:
                try:
                    differs = not np.isclose(float(val), labels.energy, rtol=1e-12, atol=1e-12)
                except (TypeError, ValueError):
                    continue
                if differs:
                    out.append(("energy", str(key), True))
                    break

    if labels.forces is None:
        n = len(atoms)
        for key, arr in atoms.arrays.items():
            if "force" in key.lower() and not skip(key) and getattr(arr, "shape", None) == (n, 3):
                out.append(("forces", key, False))
                break
    if labels.energy is None:
        for key, val in atoms.info.items():
            if "energ" in str(key).lower() and not skip(str(key)) and np.ndim(val) == 0:
                try:
                    float(val)
                except (TypeError, ValueError):
                    continue
                out.append(("energy", str(key), False))
                break
    if labels.stress is None and atoms.pbc.all():
        for key, val in atoms.info.items():
            low = str(key).lower()
            if (("stress" in low or "virial" in low) and not skip(str(key)) and low != "virial"
                    and np.size(val) in (6, 9)):
                out.append(("stress", str(key), False))
                break
    return out


#: a stress label beyond this (eV/Å^3; 160 GPa) is most likely a virial (eV) or another unit
_STRESS_IMPLAUSIBLE = 1.0
#: consistent labels give ΔE / work of 0.81-1.26 on valid MD (EMT metals, xTB molecules,
#: every 1-100 steps, 300-1500 K); forces per bohr give 1.88, kJ/mol with kcal/mol/Å 4.2
_ENERGY_WORK_RANGE = (0.6, 1.6)
#: the share of the pairs (by work squared) that must agree with a ratio outside
#: _ENERGY_WORK_RANGE before it is said (energy_work_ratio)
_ENERGY_WORK_AGREEMENT = 0.75


#: energy units a frame's label may have been given in by mistake, as factors of eV
_ENERGY_UNITS = {"meV": 1000.0, "kcal/mol": 23.0605, "kJ/mol": 96.4853, "hartree": 1 / 27.2114,
                 "Ry": 1 / 13.6057}


def mixed_energy_units(frames, labels, entries=None) -> tuple | None:
    """``(unit, indices)`` if the frames of one composition fall into two groups whose
    energies per atom differ by a unit's factor (eV against ``unit``, the ``indices``
    the frames of the minority group), else None.

    Frames of the same composition have energies per atom within a fraction of an eV
    of each other; a block of them in kcal/mol or meV sits a factor 23 or 1000 away.
    Both groups must be tight (spread under 5 % of the gap), the gap over 1 eV/atom
    and the ratio of their medians within 3 % of the unit's factor, so energies near
    zero (EMT's) and hot frames are not taken for it. ``entries``: the frames'
    :func:`energy_entries`, if already at hand.
    """
    entries = energy_entries(frames, labels) if entries is None else entries
    for idx in _composition_groups(entries).values():
        if len(idx) < 4:
            continue
        e = np.array([entries[k][1] for k in idx])
        order = np.argsort(e)
        gaps = np.diff(e[order])
        cut = int(np.argmax(gaps)) + 1
        lo, hi = order[:cut], order[cut:]
        gap = float(gaps[cut - 1])
        if gap < 1.0:  # eV/atom: (a unit's factor on DFT or xTB energies opens far more)
            continue
        spread = max(float(np.ptp(e[lo])), float(np.ptp(e[hi])))
        if spread > 0.05 * gap:
            continue
        m_lo, m_hi = float(np.median(e[lo])), float(np.median(e[hi]))
        if m_lo == 0 or m_hi == 0 or np.sign(m_lo) != np.sign(m_hi):
            continue
        ratio = max(abs(m_lo), abs(m_hi)) / min(abs(m_lo), abs(m_hi))
        big = hi if abs(m_hi) > abs(m_lo) else lo
        small = lo if big is hi else hi
        for unit, factor in _ENERGY_UNITS.items():
            f = factor if factor > 1 else 1 / factor
            if abs(ratio / f - 1) < 0.03:
                # the minority group is the one in the other unit
                odd = big if len(big) <= len(small) else small
                return unit, sorted(int(idx[j]) for j in odd)
    return None


#: consistent stress labels gave a median ΔE / work of 0.63-0.89 over strained and
#: rattled CuNi cells (strains up to 5 %, the trapezoid rule is rough there); the
#: pressure's sign -1.0 to -1.8; a stress in other units is caught as implausible first
_STRESS_WORK_RANGE = (0.25, 4.0)


#: a frame's energy per atom this far (eV/atom) from the median of its composition's
#: frames, and 20 robust spreads, is named: frames of one composition lie within a
#: fraction of an eV per atom (a bond broken in ethanol: 0.45), and one energy with
#: another reference (+1000 eV on a 32-atom Cu frame) moved the fitted e0 and every
#: energy of the model by 2.6 eV/atom without a word
_ENERGY_OUTLIER = 1.0


def energy_entries(frames, labels) -> list[tuple[bytes, float | None]]:
    """Each frame's ``(composition key, energy per atom or None)``, eV/atom."""
    return [(np.bincount(a.numbers).tobytes(), lab.energy / len(a) if lab.energy is not None and len(a) else None)
            for a, lab in zip(frames, labels)]


def _composition_groups(entries) -> dict:
    """Composition key -> indices of the entries with an energy (:func:`energy_entries`)."""
    groups: dict = {}
    for k, (key, e) in enumerate(entries):
        if e is not None:
            groups.setdefault(key, []).append(k)
    return groups


def energy_outliers(entries, only=None) -> list[tuple[int, float, float, int]]:
    """``(index, energy per atom, the composition's median, its frames)`` of the entries
    (:func:`energy_entries`) whose energy per atom lies :data:`_ENERGY_OUTLIER` eV/atom
    and 20 robust spreads (1.4826 MAD) from the median of the entries of the same
    composition (at least 4), among ``only`` (indices; default all). The groups use the
    last 200 entries of each composition."""
    wanted = None if only is None else set(int(k) for k in only)
    out = []
    for idx in _composition_groups(entries).values():
        idx = idx[-200:]
        if len(idx) < 4 or (wanted is not None and not wanted & set(idx)):
            continue
        e = np.array([entries[k][1] for k in idx])
        med = float(np.median(e))
        spread = 1.4826 * float(np.median(np.abs(e - med)))
        for k, v in zip(idx, e):
            if (wanted is None or k in wanted) and abs(v - med) > max(_ENERGY_OUTLIER, 20.0 * spread):
                out.append((int(k), float(v), med, len(idx)))
    return out


def warn_energy_outliers(entries, only=None, offset: int = 0) -> None:
    """One warning naming the frames of :func:`energy_outliers` (up to 5), as
    ``frames[k - offset]`` (an update names its own frames after the stored ones)."""
    odd = energy_outliers(entries, only)
    if not odd:
        return
    shown = "; ".join(f"frames[{k - offset}] {v:.4g} eV/atom against a median of {m:.4g} over {n} frames of its "
                      "composition" for k, v, m, n in odd[:5]) + (f"; and {len(odd) - 5} more" if len(odd) > 5 else "")
    warnings.warn(f"energy labels far from the other frames of their composition: {shown}. An energy with "
                  "another reference or a wrong value moves the fitted e0 and every energy the model predicts; "
                  "check those frames' energies (a frame that is truly that far, a squeezed molecule, is "
                  "right to be there)", UserWarning, stacklevel=user_stacklevel())


def _fills_its_cell(atoms) -> bool:
    """Whether ``atoms`` has no periodic direction but a full cell that its atoms fill to
    the faces, as a bulk cell's do: across each face, the gap to the periodic image is
    below 1.5 times the atoms' median nearest-neighbour distance (a molecule or cluster
    in a box leaves its vacuum twice there; a bulk cell, one neighbour spacing)."""
    if atoms.pbc.any() or len(atoms) < 2 or atoms.cell.rank < 3:
        return False
    from scipy.spatial import cKDTree

    cell = atoms.cell.array
    heights = abs(np.linalg.det(cell)) / np.linalg.norm(np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]]), axis=1)
    frac = np.linalg.solve(cell.T, atoms.positions.T).T
    slack = 0.5 / heights  # (0.5 Å outside the cell: a rattled bulk cell's atoms)
    if np.any(frac < -slack) or np.any(frac > 1 + slack):
        return False
    frac = np.clip(frac, 0.0, 1.0)
    gaps = (frac.min(axis=0) + 1.0 - frac.max(axis=0)) * heights
    d, _ = cKDTree(atoms.positions).query(atoms.positions, k=2)
    return bool(np.all(gaps < 1.5 * np.median(d[:, 1])))


def warn_implausible_labels(frames, labels) -> None:
    """Warn, once per cause, for training labels (``frame_labels`` of ``frames``) that
    cannot be right as given: fixed atoms (FixAtoms) with the all-zero forces ASE's
    ``get_forces()`` gives them; energies that change opposite to, or far more or less
    than, the forces' work between consecutive similar frames (:func:`energy_work_ratio`:
    forces of the wrong sign, energies and forces in different units); the same frame
    twice; no energy label at all (energies then undetermined up to e0); a stress that
    reads as a virial (tensile or shear above 160 GPa, compressive above 1 TPa), or that
    changes opposite to (or far from) the energy over strained pairs of frames
    (:func:`stress_work_ratio`: the pressure's sign)."""
    from ase.constraints import FixAtoms

    for k, (a, lab) in enumerate(zip(frames, labels)):
        fixed = [i for c in a.constraints if isinstance(c, FixAtoms) for i in np.atleast_1d(c.get_indices())]
        if fixed and lab.forces is not None and not np.any(lab.forces[fixed]):
            warnings.warn(f"frames[{k}]: the forces of its {len(fixed)} fixed atoms (FixAtoms) are all zero, as "
                          "ASE's get_forces() returns them; as labels they are wrong (the oracle's forces are "
                          "get_forces(apply_constraint=False))", UserWarning, stacklevel=user_stacklevel())
            break
    lost = [k for k, a in enumerate(frames) if _fills_its_cell(a)]
    if lost:  # (3 of 8 bulk frames read without pbc: force RMSE 0.019 eV/Å against 0.0011, unsaid)
        shown = ", ".join(f"frames[{k}]" for k in lost[:5]) + (f" and {len(lost) - 5} more" if len(lost) > 5 else "")
        warnings.warn(f"{shown}: no periodic boundaries, but the atoms fill the cell to its faces, about one "
                      "neighbour spacing apart across each face, as in a bulk cell: a bulk frame that lost its pbc "
                      "(set atoms.pbc = True) is fitted as a cluster with bare surfaces, and its labels do not "
                      "belong to that", UserWarning, stacklevel=user_stacklevel())
    entries = energy_entries(frames, labels)
    mixed = mixed_energy_units(frames, labels, entries)
    if mixed is not None:
        unit, odd = mixed
        shown = ", ".join(f"frames[{k}]" for k in odd[:5]) + (f" and {len(odd) - 5} more" if len(odd) > 5 else "")
        warnings.warn(f"the energies per atom of one composition fall into two groups a factor of eV to {unit} "
                      f"apart: {shown} look like energies in another unit than the rest ({len(odd)} of the "
                      "composition's frames); gpal takes eV", UserWarning, stacklevel=user_stacklevel())
    else:
        warn_energy_outliers(entries)
    ratio, agree = energy_work_ratio(frames, labels, agreement=True)
    if ratio is not None and agree < _ENERGY_WORK_AGREEMENT:
        ratio = None  # (pairs that disagree: the trapezoid rule's noise, no unit or sign error)
    if ratio is not None and -_ENERGY_WORK_RANGE[1] < ratio < 0:
        warnings.warn(f"the energy labels change opposite to the forces' work between similar frames (ratio "
                      f"{ratio:.3g} over consecutive frame pairs; 1 if consistent): forces with the "
                      "wrong sign (an energy gradient)?", UserWarning, stacklevel=user_stacklevel())
    elif ratio is not None and not _ENERGY_WORK_RANGE[0] <= abs(ratio) < _ENERGY_WORK_RANGE[1]:
        # (a large ratio of either sign: energies of two frames in different units swamp the work)
        warnings.warn(f"the energy labels change {ratio:.3g}x as much as the forces' work between similar "
                      "frames (over consecutive frame pairs; 1 if consistent): energies and forces "
                      "in different units, or frames whose energies are in different units (eV beside meV or "
                      "kcal/mol)? (gpal takes eV and eV/Å; forces per bohr give 1.9)", UserWarning,
                      stacklevel=user_stacklevel())
    ratio = stress_work_ratio(frames, labels)
    if ratio is not None and not _STRESS_WORK_RANGE[0] < ratio < _STRESS_WORK_RANGE[1]:
        warnings.warn(f"the energy labels change {ratio:.3g}x as much as the stress labels' work between "
                      "strained frames (a median over consecutive pairs; about 1 if consistent): stress in "
                      "ASE's sign and units? (eV/Å^3, tension positive, σ = (1/V) ∂E/∂ε; the pressure's "
                      "sign, positive under compression, gives -1)", UserWarning, stacklevel=user_stacklevel())
    seen: dict = {}
    copies: dict = {}  # first index -> later indices of the same frame
    for k, a in enumerate(frames):
        key = (a.numbers.tobytes(), a.positions.tobytes(), a.cell.array.tobytes())
        if key in seen:
            copies.setdefault(seen[key], []).append(k)
        else:
            seen[key] = k
    if copies:  # (one warning: the first frame repeated, how often, and how many others are)
        first, later = next(iter(copies.items()))
        more = sum(len(v) for v in copies.values()) - len(later)
        who = (f"frames[{later[0]}] repeats" if len(later) == 1 else
               f"{', '.join(f'frames[{k}]' for k in later[:5])}{', ...' if len(later) > 5 else ''} "
               f"({len(later)} frames) repeat")
        warnings.warn(f"{who} frames[{first}] (same atoms, positions and cell): its labels count "
                      + ("twice" if len(later) == 1 else f"{len(later) + 1} times")
                      + (f"; {more} more repeat(s) of other frames" if more else ""),
                      UserWarning, stacklevel=user_stacklevel())
    if all(lab.energy is None for lab in labels):
        warnings.warn("no training frame has an energy label: forces and stress are learned, but "
                      "energies only up to a constant per species (e0 = 0 eV)", UserWarning,
                      stacklevel=user_stacklevel())
    if all(lab.stress is None for lab in labels) and any(np.all(a.pbc) for a in frames):
        # (a measured fixed-cell Cu fit: stress errors 5-8x the stresses themselves, unsaid)
        warnings.warn("no training frame has a stress label: the model's stress (how the energy changes "
                      "with the cell) is not learned, and its stress predictions (NPT MD, cell "
                      "relaxation) can be wrong by many times their size; label stress (ASE: "
                      "atoms.get_stress()) to learn it", UserWarning, stacklevel=user_stacklevel())
    # a virial read as a stress is -stress x volume: large and tensile-looking on the
    # compressed cells where real stresses are large (and compressive: 300 GPa exists)
    for lab in labels:
        if lab.stress is None:
            continue
        tensile = max(lab.stress[:3].max(), np.abs(lab.stress[3:]).max())
        compressive = -lab.stress[:3].min()
        worst = (tensile if tensile > _STRESS_IMPLAUSIBLE
                 else compressive if compressive > 6 * _STRESS_IMPLAUSIBLE else 0.0)
        if worst:
            warnings.warn(f"a stress label of {worst:.3g} eV/Å^3 ({160.2 * worst:.0f} GPa, tensile or shear above "
                          "160 GPa, or compressive above 1 TPa): stress is in eV/Å^3 (ASE's sign: tension "
                          "positive); a virial (eV) is -stress x volume (--virial-key)", UserWarning,
                          stacklevel=user_stacklevel())
            break


def displacement(a: Atoms, b: Atoms) -> np.ndarray | None:
    """``a.positions - b.positions``, (n_atoms, 3) Å, by the minimum image along periodic
    directions (ASE's ``find_mic``: slabs without a third cell vector too); None unless
    the two frames have the same atoms, pbc and cell."""
    if (len(a) != len(b) or not np.array_equal(a.numbers, b.numbers) or not np.array_equal(a.pbc, b.pbc)
            or not np.allclose(a.cell.array, b.cell.array, atol=1e-6)):
        return None
    d = a.positions - b.positions
    if a.pbc.any():
        from ase.geometry import find_mic

        d = find_mic(d, a.cell, a.pbc)[0]
    return d


def energy_work_ratio(frames, labels, max_step: float = 0.3, *, agreement: bool = False):
    """``ΔE / W`` over consecutive frame pairs (same atoms and cell, every atom within
    ``max_step`` Å, minimum image), ``W = -½ Σ (F_a + F_b)·(r_b - r_a)`` the forces' work
    by the trapezoid rule (exact for a quadratic energy): the least-squares slope
    ``Σ ΔE W / Σ W²``; None with fewer than 3 pairs whose work is above 1 meV. Energies
    and forces in the same units give about 1; energies in meV with forces in eV/Å
    about 1000.

    The slope, not the pairs' median ratio: between independently rattled copies of a
    structure the work is a small difference of two similar energies, which the
    trapezoid rule's anharmonic error can swamp (single pairs of consistent EMT labels,
    0.05 Å rattles: ratios from -1 to 3; their median 0.13 on a Cu(111) slab, -0.65 at
    0.02 Å); the slope weights a pair by its work squared, and is 0.47-1.53 on the same
    21 sets.

    With ``agreement``, returns ``(slope, fraction)``: ``fraction`` is the share (by
    ``W²``) of the pairs whose own ratio lies on the slope's side of
    :data:`_ENERGY_WORK_RANGE` (beyond ±hi when ``|slope| >= hi``, negative for a
    negative slope, below lo otherwise), the consistency a unit or sign error has in
    every pair and anharmonic noise has not (at most 0.55 on those 21 sets; 0.91-1.00
    for energies in meV and for forces of the wrong sign)."""
    dE, W = [], []
    for b, lb, a, lab in _consecutive_labelled(frames, labels):
        d = displacement(a, b)
        if d is not None:
            work = -0.5 * float(np.sum((lab.forces + lb.forces) * d))
            if np.abs(d).max() < max_step and abs(work) > 1e-3:
                dE.append(lab.energy - lb.energy)
                W.append(work)
    if len(W) < 3:
        return (None, 0.0) if agreement else None
    dE, W = np.array(dE), np.array(W)
    slope = float(np.sum(dE * W) / np.sum(W * W))
    if not agreement:
        return slope
    lo, hi = _ENERGY_WORK_RANGE
    r = dE / W
    side = np.abs(r) >= hi if abs(slope) >= hi else (r < 0 if slope < 0 else r < lo)
    return slope, float(np.sum(W[side] ** 2) / np.sum(W * W))


def _consecutive_labelled(frames, labels, stress: bool = False):
    """``(b, labels_b, a, labels_a)`` of each consecutive pair of frames (b before a) that
    both carry energy and forces (with ``stress``, a stress too, 3D-periodic)."""
    prev = None
    for a, lab in zip(frames, labels):
        if lab.energy is None or lab.forces is None or (stress and (lab.stress is None or not a.pbc.all())):
            prev = None
            continue
        if prev is not None:
            yield (*prev, a, lab)
        prev = (a, lab)


def stress_work_ratio(frames, labels, max_step: float = 0.3, max_strain: float = 0.05) -> float | None:
    """Median over consecutive frame pairs of one structure whose cells differ (a strain
    under ``max_strain``, atoms within ``max_step`` Å of the strained first frame, minimum
    image) and whose stress labels do most of the work, of ``ΔE / (W_σ + W_F)``:
    ``W_σ = ½ (V_a σ_a + V_b σ_b) : ε`` the stresses' work over the strain ``ε`` that takes
    cell a to cell b (ASE's convention, σ = (1/V) ∂E/∂ε), ``W_F`` the forces' work over the
    displacements beyond it (trapezoid rule); None with fewer than 3 such pairs. Labels in
    ASE's convention give about 1; a stress with the pressure's sign (positive under
    compression) gives about -1 on a volume scan."""
    from ase.geometry import find_mic

    ratios = []
    for b, lb, a, lab in _consecutive_labelled(frames, labels, stress=True):
        if len(a) != len(b) or not np.array_equal(a.numbers, b.numbers):
            continue
        deform = np.linalg.solve(b.cell.array, a.cell.array)  # a.cell = b.cell @ deform
        # Green-Lagrange (rows: r_a = r_b @ deform): zero for a rotation, which does no
        # work (the symmetric part of deform - 1 is not: -θ²/2 on a stressed cell)
        strain = 0.5 * (deform @ deform.T - np.eye(3))
        if not 1e-5 < np.abs(strain).max() < max_strain:
            continue
        d = find_mic(a.positions - b.positions @ deform, a.cell, a.pbc)[0]
        if np.abs(d).max() >= max_step:
            continue
        sig = [_voigt_matrix(x.stress) * abs(x_atoms.cell.volume) for x, x_atoms in ((lb, b), (lab, a))]
        w_s = 0.5 * float(np.sum((sig[0] + sig[1]) * strain))
        w_f = -0.5 * float(np.sum((lab.forces + lb.forces) * d))
        if abs(w_s) > 1e-3 and abs(w_s) > abs(w_f):
            ratios.append((lab.energy - lb.energy) / (w_s + w_f))
    return float(np.median(ratios)) if len(ratios) >= 3 else None


def _voigt_matrix(s) -> np.ndarray:
    """(3, 3) of a stress in Voigt order (xx, yy, zz, yz, xz, xy), or a (3, 3) as it is."""
    s = np.asarray(s, dtype=float)
    if s.shape == (3, 3):
        return s
    xx, yy, zz, yz, xz, xy = s.ravel()
    return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])


def check_is_fitted(estimator, attribute="alpha_") -> None:
    """Raise :class:`NotFittedError` if ``estimator`` has not been fitted."""
    if getattr(estimator, attribute, None) is None:
        raise NotFittedError(
            f"This {type(estimator).__name__} is not fitted yet. Call 'fit' with "
            "labelled frames first (or load a saved model with gpal.load)."
        )


def as_rng(random_state) -> np.random.Generator:
    """Normalise ``random_state`` (None, int or Generator) to a Generator."""
    return np.random.default_rng(random_state)


# ---------------------------------------------------------------------- argument checks
def check_option(name: str, value, valid) -> str:
    """``value`` if it is one of the strings ``valid``; else a ValueError listing them."""
    if not isinstance(value, str) or value not in valid:
        raise ValueError(
            f"{name} must be one of {{{', '.join(repr(v) for v in valid)}}}; "
            f"got {value!r}"
        )
    return value


def finite_array(name: str, a) -> np.ndarray:
    """``a`` as a float64 array; a ValueError if it holds NaN or infinities."""
    a = np.asarray(a, dtype=np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return a


def species_number(key, what: str = "species") -> int:
    """The atomic number a per-species key names: a symbol ("Cu"), an integer (29, also
    numpy's) or its digits ("29", what a JSON round trip makes of an integer key).

    Raises a ValueError naming ``what`` and the key for anything else.
    """
    import numbers

    from ase.data import atomic_numbers

    if isinstance(key, numbers.Integral) and not isinstance(key, (bool, np.bool_)):
        z = int(key)
    elif isinstance(key, str) and key.strip().isdigit():
        z = int(key)
    elif isinstance(key, str) and key.strip() in atomic_numbers:
        z = atomic_numbers[key.strip()]
    else:
        raise ValueError(f"{what}: {key!r} is not a chemical symbol or an atomic number")
    if not 1 <= z <= 118:
        raise ValueError(f"{what}: {key!r} is not a chemical symbol or an atomic number")
    return z


def check_positive_int(name: str, value) -> int:
    """``value`` as an int if it is an integer >= 1 (not a bool); else a ValueError."""
    return check_number(name, value, low=1, integer=True)


def check_number(name: str, value, *, low: float = -np.inf, strict: bool = False, integer: bool = False,
                 none: bool = False, unit: str = ""):
    """``value`` checked against a lower bound (``> low`` if ``strict`` else ``>= low``).

    ``integer`` asks for an integer (not a bool) and returns an int, otherwise a finite
    float; ``none`` lets None through. A ValueError (one line, naming ``name``) otherwise.
    """
    import numbers

    if value is None and none:
        return None
    kind = numbers.Integral if integer else numbers.Real
    ok = isinstance(value, kind) and not isinstance(value, (bool, np.bool_))
    if ok:
        value = int(value) if integer else float(value)
        ok = (integer or bool(np.isfinite(value))) and (value > low if strict else value >= low)
    if not ok:
        what = "an integer" if integer else "a finite number"
        bound = "" if low == -np.inf else f" {'>' if strict else '>='} {low:g}{unit and ' ' + unit}"
        raise ValueError(f"{name} must be {what}{bound}{' or None' if none else ''}, got {value!r}")
    return value


def _known_keywords(factory) -> set | None:
    """The keywords an ASE calculator class lists (``default_parameters`` and ``__init__``
    arguments over its bases), or None where they cannot be known (no
    ``default_parameters``, e.g. VASP, which takes any INCAR key; ASE's file-writing
    calculators, whose ``default_parameters`` list only some of their input keys)."""
    import inspect

    params = getattr(factory, "default_parameters", None)
    if not isinstance(factory, type) or not isinstance(params, dict) or not params:
        return None
    from ase.calculators import calculator as ase_calc

    file_io = tuple(c for c in (getattr(ase_calc, "FileIOCalculator", None),
                                getattr(ase_calc, "GenericFileIOCalculator", None)) if c is not None)
    if file_io and issubclass(factory, file_io):
        return None
    known = set(params)
    for cls in factory.__mro__:
        init = cls.__dict__.get("__init__")
        if init is None:
            continue
        try:
            sig = inspect.signature(init)
        except (TypeError, ValueError):
            continue
        known.update(p.name for p in sig.parameters.values()
                     if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
    known.discard("self")
    return known


def misspelt_keywords(factory, kwargs: dict) -> list[tuple[str, str]]:
    """``(keyword, known keyword)`` for each of ``kwargs`` that an ASE calculator class does
    not know but that is one typo from one it knows.

    ASE's ``Calculator`` stores any keyword in ``parameters``; EMT, TBLite and most others
    then ignore an unknown one (``TBLite(methd="GFN1-xTB")`` runs GFN2-xTB). Classes whose
    keywords cannot be known are left alone (:func:`_known_keywords`). Used for oracles
    and Δ-learning baselines, which refuse these; :func:`unknown_keywords` names the rest.
    """
    import difflib

    known = _known_keywords(factory)
    out = []
    for key in kwargs if known is not None else ():
        if key not in known and not _compound(key, known):
            close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.8)
            if close:
                out.append((key, close[0]))
    return out


def keyword_typo(factory, kwargs: dict, what: str, consequence: str) -> str | None:
    """The one-line refusal of the first of ``kwargs`` that is a typo of a keyword the
    calculator class ``factory`` lists (:func:`misspelt_keywords`), or None: ``what`` is
    "the oracle module:Name", ``consequence`` what the default would do instead."""
    misspelt = misspelt_keywords(factory, kwargs)
    if not misspelt:
        return None
    key, close = misspelt[0]
    return (f"{what} has no keyword {key!r} (did you mean {close!r}?): an ASE calculator keeps unknown "
            f"keywords without a word, so {consequence}")


def unknown_keywords(factory, kwargs: dict) -> tuple[list[str], list[str]]:
    """``(keywords of kwargs the class does not list, its parameters)``; empty
    lists where they cannot be known. ``TBLite(mult=2)`` or ``spin=1`` are kept and
    ignored (its keyword is ``multiplicity``): oracles and baselines warn with these."""
    known = _known_keywords(factory)
    if known is None:
        return [], []
    return [k for k in kwargs if k not in known], sorted(factory.default_parameters)


def _compound(key: str, known: set) -> bool:
    """A keyword built on a known one (TBLite reads ``alpb_solvation`` as ``solvation``):
    not refused as a typo of it, but warned as not listed (``albp_solvation`` would
    otherwise pass without a word and label in the gas phase)."""
    return any(key.endswith("_" + k) or key.startswith(k + "_") for k in known)


def warn_unknown_keywords(factory, kwargs: dict, what: str, calc=None) -> None:
    """A ``UserWarning`` naming the keywords of ``kwargs`` that the calculator class
    ``factory`` does not list (``what``: "the oracle ase.calculators.emt:EMT").

    With ``calc``, the calculator built from them, a keyword is not named when the
    class took it out of its ``**kwargs`` (it is not in ``calc.parameters``, where ASE's
    ``Calculator`` keeps the keywords nobody read) *and* turned it into a listed
    parameter (one the user did not give now differs from its default): TBLite's
    ``alpb_solvation="water"`` sets ``solvation``. A class that drops a keyword, or
    keeps it somewhere gpal cannot see, is still named: a false alarm is cheaper than
    a charge or solvent ignored without a word.
    """
    unknown, known = unknown_keywords(factory, kwargs)
    params = getattr(calc, "parameters", None)
    defaults = getattr(factory, "default_parameters", None)
    if unknown and isinstance(params, dict) and isinstance(defaults, dict):
        def differs(key) -> bool:
            try:
                return bool(np.any(params[key] != defaults[key]))
            except Exception:  # (values that do not compare: take them as changed)
                return True

        set_by_class = any(k in params and k not in kwargs and differs(k) for k in defaults)
        unknown = [k for k in unknown if k in params or not set_by_class]
    if unknown:
        listed = ", ".join(known[:20]) + (", ..." if len(known) > 20 else "")
        warnings.warn(f"{what} does not list the keyword(s) {', '.join(map(repr, unknown))} (its parameters: "
                      f"{listed}); an ASE calculator keeps unknown keywords without using them (unless the "
                      "class reads them itself)",
                      UserWarning, stacklevel=user_stacklevel())
