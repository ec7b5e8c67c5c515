"""A DFT oracle: an ASE calculator running PySCF (Kohn-Sham DFT on molecules and clusters).

PySCF's own ASE interface (``pyscf.pbc.tools.pyscf_ase.PySCF``) wraps a live PySCF
method object, which cannot be described by an import path and JSON keyword arguments
and so cannot travel to an executor's worker as an :class:`gpal.OracleSpec`. This module
is that missing recipe: :class:`PySCF` builds the molecule and the Kohn-Sham method from
plain settings, so ``OracleSpec("gpal.dft:PySCF", {"xc": "PBE", "basis": "def2-SVP"})``
(or :func:`pyscf_oracle`) labels frames in any process.

Energies are in eV and forces in eV/Å (analytic nuclear gradients). Molecules only:
frames must not be periodic.

SCF convergence is checked on every calculation. A calculation that does not converge
is logged (a warning on the ``gpal.dft`` logger) and repeated once with safer settings:
a level shift, damping, DIIS starting later and more cycles, from a fresh initial guess.
If that fails too, :class:`SCFConvergenceError` (an :class:`gpal.OracleError`) is raised:
:class:`gpal.Oracle` records the frame as a :class:`gpal.learning.oracle.LabelFailure` and, since
the safer settings were already tried, does not repeat it; the active learner then
skips the frame (``on_oracle_failure="skip"``).
"""

from __future__ import annotations

import functools
import logging
import warnings

import numpy as np
from ase.calculators.calculator import Calculator, all_changes

from .exceptions import OracleError

log = logging.getLogger(__name__)

__all__ = ["PySCF", "SCFConvergenceError", "pyscf_oracle"]

#: the settings of the second attempt after an unconverged SCF
SAFER_SCF = {"level_shift": 0.25, "damp": 0.5, "diis_start_cycle": 4, "max_cycle": 300}


class SCFConvergenceError(OracleError):
    """The SCF did not converge, with the standard nor with the safer settings."""

    #: gpal.Oracle does not retry: the safer settings were the retry
    retryable = False


def _quietly(make):
    """``make()`` without PySCF's warnings (its hint to install basis-set-exchange)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return make()


def _failure_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


@functools.lru_cache(maxsize=64)
def _xc_failure(xc: str) -> str | None:
    """Why ``xc`` does not run in PySCF, or None: one SCF cycle of an H atom on the
    coarsest grid (0.02-1.5 s, once per process and functional)."""
    from pyscf import dft, gto

    def one_cycle():
        mf = dft.UKS(gto.M(atom=[("H", (0.0, 0.0, 0.0))], basis="sto-3g", spin=1, verbose=0), xc=xc)
        mf.max_cycle, mf.grids.level, mf.verbose = 1, 0, 0
        mf.kernel()

    try:
        _quietly(one_cycle)
    except Exception as exc:  # (KeyError, NotImplementedError, RuntimeError: PySCF's own)
        return _failure_text(exc)
    return None


def _basis_failure(basis, symbol: str) -> str | None:
    """Why ``basis`` has no functions for element ``symbol`` in PySCF, or None: built as
    the calculation builds it (``gto.M`` knows more names than ``gto.basis.load``)."""
    if isinstance(basis, str):
        return _named_basis_failure(basis, symbol)
    from pyscf import gto

    try:
        _quietly(lambda: gto.M(atom=[(symbol, (0.0, 0.0, 0.0))], basis=basis, spin=None, verbose=0))
    except Exception as exc:  # (PySCF raises several kinds for a basis it cannot build)
        return _failure_text(exc)
    return None


@functools.lru_cache(maxsize=256)
def _named_basis_failure(basis: str, symbol: str) -> str | None:
    return _basis_failure({symbol: basis}, symbol)


def _check_settings(p: dict) -> None:
    """Check (and normalise in place) :class:`PySCF`'s settings: a charge of 2.5 ran as 2,
    spin 1.5 as 1 and ``density_fit = "false"`` as density fitting, labels of a state or a
    method nobody asked for."""
    from ._validation import check_number

    p["charge"] = check_number("PySCF charge", p["charge"], integer=True)
    p["spin"] = check_number("PySCF spin (2S, unpaired electrons)", p["spin"], low=0, integer=True)
    p["grid_level"] = check_number("PySCF grid_level", p["grid_level"], low=0, integer=True)
    if p["grid_level"] > 9:
        raise ValueError(f"PySCF grid_level must be 0-9, got {p['grid_level']}")
    p["conv_tol"] = check_number("PySCF conv_tol", p["conv_tol"], low=0, strict=True, unit="Ha")
    p["max_cycle"] = check_number("PySCF max_cycle", p["max_cycle"], low=1, integer=True)
    if p["threads"] == 0 and not isinstance(p["threads"], (bool, np.bool_)):
        p["threads"] = None  # (0 left the process's setting, as None does: TOML has no null)
    p["threads"] = check_number("PySCF threads", p["threads"], low=1, integer=True, none=True)
    p["verbose"] = check_number("PySCF verbose", p["verbose"], low=0, integer=True)
    for key in ("density_fit", "reuse_guess"):
        if not isinstance(p[key], (bool, np.bool_)):
            raise ValueError(f"PySCF {key} must be true or false, got {p[key]!r}")
        p[key] = bool(p[key])
    if not isinstance(p["xc"], str):
        raise ValueError(f"PySCF xc must be a functional's name, got {p['xc']!r}")
    for key, none in (("basis", False), ("auxbasis", True)):
        if not (isinstance(p[key], (str, dict)) or (none and p[key] is None)):
            raise ValueError(f"PySCF {key} must be a basis set's name or a dict by element"
                             f"{' or None' if none else ''}, got {p[key]!r}")


class PySCF(Calculator):
    """Kohn-Sham DFT with PySCF as an ASE calculator (energy, forces).

    Parameters
    ----------
    xc : str, default "PBE"
        Exchange-correlation functional, any name PySCF's libxc interface knows
        ("PBE", "B3LYP", "PBE0", "wB97X-V"...; dispersion-corrected names need the
        pyscf-dispersion package). Checked before the first label.
    basis : str, default "def2-SVP"
        Gaussian basis set name.
    charge : int, default 0
        Total charge (elementary charges).
    spin : int, default 0
        Number of unpaired electrons, 2S (PySCF's convention): 0 gives restricted
        Kohn-Sham (RKS), anything else unrestricted (UKS).
    density_fit : bool, default True
        Resolution of the identity for the Coulomb (and exact-exchange) integrals: much
        faster, errors far below a force-field's (about 1e-5 Ha in energy).
    auxbasis : str or None, default None
        Auxiliary basis for density fitting (None: PySCF's default for ``basis``, e.g.
        def2-universal-jkfit).
    grid_level : int, default 3
        PySCF's integration grid level (0-9); 3 is its default.
    conv_tol : float, default 1e-9
        SCF energy convergence, Hartree (tight, because forces are derivatives).
    max_cycle : int, default 100
        SCF iterations of the first attempt.
    threads : int or None, default None
        OpenMP and BLAS threads of each calculation, set with threadpoolctl around it
        and restored afterwards (None: leave the process's setting). In a process pool
        prefer ``threads_per_task`` of :class:`gpal.Oracle`, or ``OMP_NUM_THREADS`` in
        the shell that starts Python.
    reuse_guess : bool, default True
        Start each SCF from the previous density matrix (PySCF's scanner): saves SCF
        cycles along an MD trajectory; results agree to ``conv_tol``.
    verbose : int, default 0
        PySCF's verbosity (0: silent).

    Attributes
    ----------
    n_scf_retries : int
        Calculations repeated with the safer settings.
    """

    implemented_properties = ["energy", "free_energy", "forces"]

    default_parameters = {
        "xc": "PBE",
        "basis": "def2-SVP",
        "charge": 0,
        "spin": 0,
        "density_fit": True,
        "auxbasis": None,
        "grid_level": 3,
        "conv_tol": 1e-9,
        "max_cycle": 100,
        "threads": None,
        "reuse_guess": True,
        "verbose": 0,
    }

    def __init__(self, **kwargs):
        unknown = sorted(set(kwargs) - set(self.default_parameters))
        if unknown:
            raise TypeError(
                f"PySCF got unknown setting(s) {', '.join(unknown)}; valid: {', '.join(self.default_parameters)}")
        super().__init__(**kwargs)
        _check_settings(self.parameters)
        self.n_scf_retries = 0
        self._dm = None  # previous density matrix, the next initial guess

    def check_structure(self, atoms) -> None:
        """Raise ``ValueError`` (one line) if ``atoms`` cannot have this charge and spin:
        the electron count and the unpaired electrons (2S) must have the same parity. The
        active learner asks before its first call (a charged water with spin 0 failed on
        every label, each tried twice)."""
        p = self.parameters
        electrons = int(np.sum(atoms.numbers)) - int(p["charge"])
        if electrons < 0 or (electrons - int(p["spin"])) % 2:
            raise ValueError(
                f"PySCF: {atoms.get_chemical_formula()} with charge {int(p['charge'])} has {electrons} electrons, "
                f"which spin = {int(p['spin'])} (2S, unpaired electrons) cannot have: the two need the same "
                f"parity (spin = {electrons % 2} for the lowest multiplicity)")
        # the functional and the basis sets, by PySCF itself: a misspelt name, or one PySCF
        # lists but cannot run (wB97X-D; a -D3 without pyscf-dispersion), failed on every
        # label, each tried twice, after the run folder was made. Each verdict is kept for
        # the process (several start structures, the CLI's check and the learner's)
        failure = _xc_failure(p["xc"])
        if failure:
            raise ValueError(f"PySCF: xc = {p['xc']!r} does not run in PySCF: {failure}")
        formula = atoms.get_chemical_formula()
        for key in ("basis", "auxbasis"):
            if p[key] is None or (key == "auxbasis" and not p["density_fit"]):
                continue
            for symbol in sorted(set(atoms.get_chemical_symbols())):
                failure = _basis_failure(p[key], symbol)
                if failure:
                    raise ValueError(f"PySCF: {key} = {p[key]!r} has no functions for {symbol} (in "
                                     f"{formula}): {failure}")

    # ---------------------------------------------------------------- helpers
    def _mol(self, atoms):
        from pyscf import gto

        p = self.parameters
        try:
            return gto.M(
                atom=[(int(z), tuple(r)) for z, r in zip(atoms.numbers, atoms.positions)],
                unit="Angstrom", basis=p["basis"], charge=int(p["charge"]), spin=int(p["spin"]),
                verbose=int(p["verbose"]),
            )
        except RuntimeError as exc:  # e.g. electron count and spin disagree: the same on any retry
            err = ValueError(f"PySCF cannot build this molecule: {' '.join(str(exc).split())}")
            err.retryable = False
            raise err from None

    def _method(self, mol, safer: bool):
        from pyscf import dft

        p = self.parameters
        mf = (dft.RKS if int(p["spin"]) == 0 else dft.UKS)(mol, xc=p["xc"])
        if p["density_fit"]:
            mf = mf.density_fit(auxbasis=p["auxbasis"])
        mf.grids.level = int(p["grid_level"])
        mf.conv_tol = float(p["conv_tol"])
        mf.max_cycle = int(p["max_cycle"])
        mf.verbose = int(p["verbose"])
        if safer:
            mf.level_shift = SAFER_SCF["level_shift"]
            mf.damp = SAFER_SCF["damp"]
            mf.diis_start_cycle = SAFER_SCF["diis_start_cycle"]
            mf.max_cycle = max(mf.max_cycle, SAFER_SCF["max_cycle"])
        return mf

    def _scf(self, mol, safer: bool):
        mf = self._method(mol, safer)
        dm0 = None
        if not safer and self.parameters["reuse_guess"] and self._dm is not None:
            if np.shape(self._dm)[-1] == mol.nao_nr():
                dm0 = self._dm
        mf.kernel(dm0=dm0)
        return mf

    # ---------------------------------------------------------------- ASE
    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        if np.any(atoms.pbc):
            raise ValueError("gpal.dft.PySCF computes molecules only: set atoms.pbc = False")
        try:  # (the learner asks first; a calculator used directly, or by gpal.Oracle, asks here:
            # libxc's bare KeyError for a misspelt functional was retried as a failed SCF)
            self.check_structure(atoms)
        except ValueError as exc:
            exc.retryable = False
            raise
        from pyscf.data.nist import BOHR, HARTREE2EV

        threads = self.parameters["threads"]
        if threads:
            from threadpoolctl import threadpool_limits

            limit = threadpool_limits(limits=int(threads))
        else:
            limit = None
        try:
            mol = self._mol(atoms)
            mf = self._scf(mol, safer=False)
            if not mf.converged:
                self.n_scf_retries += 1
                log.warning("SCF not converged (%s/%s, %d cycles); retrying with level shift %.2f, "
                            "damping %.1f, %d cycles", self.parameters["xc"], self.parameters["basis"],
                            mf.max_cycle, SAFER_SCF["level_shift"], SAFER_SCF["damp"], SAFER_SCF["max_cycle"])
                mf = self._scf(mol, safer=True)
                if not mf.converged:
                    self._dm = None
                    raise SCFConvergenceError(
                        f"SCF not converged ({self.parameters['xc']}/{self.parameters['basis']}), "
                        "also with level shift, damping and more cycles")
            self._dm = mf.make_rdm1()
            energy = float(mf.e_tot) * HARTREE2EV
            grad = mf.nuc_grad_method().kernel()
        finally:
            if limit is not None:
                limit.restore_original_limits()
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "forces": -np.asarray(grad, dtype=float) * (HARTREE2EV / BOHR),
        }


def pyscf_oracle(
    xc: str = "PBE",
    basis: str = "def2-SVP",
    *,
    charge: int = 0,
    spin: int = 0,
    density_fit: bool = True,
    threads: int | None = None,
    **settings,
) -> "OracleSpec":
    """The spec of a Kohn-Sham DFT oracle run by PySCF (:class:`gpal.dft.PySCF`).

    Parameters
    ----------
    xc : str, default "PBE"
        Exchange-correlation functional.
    basis : str, default "def2-SVP"
        Basis set.
    charge : int, default 0
        Total charge.
    spin : int, default 0
        Unpaired electrons 2S (0: RKS, else UKS).
    density_fit : bool, default True
        Density fitting (RI) of the Coulomb integrals.
    threads : int or None, default None
        Threads of each calculation (None: the process's setting; in a process pool use
        ``Oracle(threads_per_task=...)``).
    **settings
        Further :class:`gpal.dft.PySCF` settings (``auxbasis``, ``grid_level``,
        ``conv_tol``, ``max_cycle``, ``reuse_guess``, ``verbose``).

    Returns
    -------
    OracleSpec
        ``OracleSpec("gpal.dft:PySCF", {...})``: picklable, runs in any executor. Needs
        ``pip install pyscf`` where it runs.

    Examples
    --------
    >>> from gpal.dft import pyscf_oracle
    >>> spec = pyscf_oracle("PBE", "def2-SVP")
    >>> spec.factory
    'gpal.dft:PySCF'
    """
    from .learning.oracle import OracleSpec

    kwargs = {"xc": xc, "basis": basis, "charge": charge, "spin": spin,
              "density_fit": density_fit, "threads": threads, **settings}
    unknown = sorted(set(kwargs) - set(PySCF.default_parameters))
    if unknown:
        raise TypeError(f"pyscf_oracle got unknown setting(s) {', '.join(unknown)}; "
                        f"valid: {', '.join(PySCF.default_parameters)}")
    # checked here as PySCF checks them (int(1.5) and bool("false") made a spec of a state
    # or a method nobody asked for), and kept in their checked form
    full = {**PySCF.default_parameters, **kwargs}
    _check_settings(full)
    return OracleSpec("gpal.dft:PySCF", {k: full[k] for k in kwargs})
