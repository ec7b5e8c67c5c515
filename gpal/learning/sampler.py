"""The sampler: MD settings and the walkers that run MD on the current model."""

from __future__ import annotations

import warnings

from dataclasses import dataclass
from typing import Callable

import numpy as np
from ase import units
from ase.calculators.calculator import Calculator, all_changes
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import Stationary, thermalize_momenta

from .._validation import check_number, user_stacklevel
from ..exceptions import OverlappingAtomsError


__all__ = ["MDSettings"]


@dataclass
class MDSettings:
    """The sampler: Langevin MD by default, any ASE dynamics through ``factory``.

    Parameters
    ----------
    temperature : float or (float, float)
        Kelvin; a pair ramps linearly from the first to the second over the run.
    timestep : float
        Femtoseconds.
    friction : float
        Langevin friction, 1/fs.
    factory : callable, optional
        ``factory(atoms, timestep_ase_units, temperature_K, rng) -> ase dynamics``;
        replaces Langevin (e.g. VelocityVerlet, NPT). Must return an object with
        ``run(steps)``; ``set_temperature(temperature_K=...)`` is used when present.
    """

    temperature: float | tuple = 300.0
    timestep: float = 1.0
    friction: float = 0.02
    factory: Callable | None = None

    def __post_init__(self):
        t = self.temperature
        if isinstance(t, (tuple, list)):
            if len(t) != 2:
                raise ValueError(f"temperature must be a number or a (start, end) pair in K, got {t!r}")
            self.temperature = tuple(check_number("temperature", x, low=0, unit="K") for x in t)
        else:
            self.temperature = check_number("temperature", t, low=0, unit="K")
        self.timestep = check_number("timestep", self.timestep, low=0, strict=True, unit="fs")
        self.friction = check_number("friction", self.friction, low=0, unit="1/fs")
        # values in another unit (s, eV, 1/ps) fail here rather than as an MD that does not move
        # or blows up
        if not 1e-3 <= self.timestep <= 100:
            raise ValueError(f"timestep = {self.timestep:g} fs is outside 0.001-100 fs: the time step is in "
                             "femtoseconds (1 fs = 1e-15 s)")
        n_fs = self.timestep / units.fs  # (n * ase.units.fs, ASE's own way to write a step)
        if 1 <= round(n_fs) <= 20 and abs(n_fs - round(n_fs)) < 1e-9:
            raise ValueError(f"timestep = {self.timestep:g} is {round(n_fs)} * ase.units.fs, a step in ASE's "
                             f"time unit; MDSettings takes femtoseconds: timestep={round(n_fs)} (it had run a "
                             f"{self.timestep:g} fs step, 10x shorter, without a word)")
        if self.timestep < 0.05:
            warnings.warn(f"timestep = {self.timestep:g} fs: the time step is in femtoseconds; a step "
                          f"given in ps ({self.timestep:g} ps = {1000 * self.timestep:g} fs) should be "
                          f"{1000 * self.timestep:g}", UserWarning, stacklevel=user_stacklevel())
        if 0 < max(np.atleast_1d(self.temperature)) < 1:  # (0 K: a quench, as given)
            raise ValueError(f"temperature = {self.temperature} K, below 1 K; temperatures are in Kelvin "
                             "(kT = 0.025 eV is 290 K)")
        if self.friction > 1:
            raise ValueError(f"friction = {self.friction:g} 1/fs relaxes the velocities in under 1 fs; the "
                             "friction is in 1/fs (0.02 1/fs = 20 1/ps)")
        if self.factory is not None and not callable(self.factory):
            raise TypeError(f"factory must be callable, got {type(self.factory).__name__}")

    def temperature_at(self, frac: float) -> float:
        """Temperature (K) at the fraction ``frac`` of the ramp (clipped to [0, 1]): linear
        from ``temperature[0]`` to ``temperature[1]``, or the constant temperature."""
        if isinstance(self.temperature, (tuple, list)):
            t0, t1 = self.temperature
            return float(t0 + (t1 - t0) * min(max(frac, 0.0), 1.0))
        return float(self.temperature)


class _ZeroCalculator(Calculator):
    """Zero energy, forces and stress: what :func:`check_md_factory` gives a factory's atoms."""

    implemented_properties = ("energy", "free_energy", "forces", "stress")

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.results = {"energy": 0.0, "free_energy": 0.0, "forces": np.zeros((len(self.atoms), 3)),
                        "stress": np.zeros(6)}


def check_md_factory(md: "MDSettings", atoms) -> None:
    """A ValueError if ``md``'s ``factory`` fails on a copy of ``atoms`` (one line naming
    it, before any file or oracle call), or ramps the temperature with dynamics that
    cannot change it (ASE's VelocityVerlet, Bussi, NoseHooverChainNVT and MTK
    integrators have no ``set_temperature``: their MD would stay at the start
    temperature while the learner labelled as if it followed the ramp)."""
    t = md.temperature
    if md.factory is None or atoms is None:
        return
    ramp = isinstance(t, (tuple, list)) and t[0] != t[1]
    t = tuple(t) if isinstance(t, (tuple, list)) else (t, t)
    trial = atoms.copy()
    thermalize_momenta(trial, temperature_K=max(float(t[0]), 1.0), rng=np.random.default_rng(0))
    # (dynamics that need forces when they are made, e.g. ASE's LangevinBAOAB, get zeros:
    # only the class of what the factory makes is looked at)
    trial.calc = _ZeroCalculator()
    try:
        dyn = md.factory(trial, md.timestep * units.fs, float(t[0]), np.random.default_rng(0))
    except Exception as exc:
        raise ValueError(f"MDSettings.factory failed on a copy of the start structure ({type(exc).__name__}: "
                         f"{exc})") from exc
    if ramp and not hasattr(dyn, "set_temperature"):
        raise ValueError(f"MDSettings.factory makes a {type(dyn).__name__}, which has no set_temperature: it "
                         f"cannot follow the temperature ramp {tuple(t)} K; give a constant temperature, or "
                         "dynamics that can change it (Langevin, NPTBerendsen, ...)")


def temperature_limit(max_temperature: float | None, temperature: float) -> float:
    """Kinetic temperature (K) beyond which an MD frame counts as a blow-up.

    ``max_temperature`` when the user set one, else 3x the thermostat's temperature at
    this step + 500 K: a walker of a ramp that starts at 300 K is rolled back above
    1400 K, not only above the limit of the ramp's hottest end (a model that heats its
    MD early would otherwise have its off-distribution frames labelled for hundreds of
    steps). For 9 atoms at T the kinetic temperature exceeds 3T + 500 K with a
    probability below 1e-8 per frame.
    """
    return float(max_temperature) if max_temperature else 3.0 * float(temperature) + 500.0


def blown_up(atoms, max_force: float, max_temperature: float) -> str | None:
    """Why an MD frame is a blow-up (overlap, a force above ``max_force`` eV/Å, a kinetic
    temperature above ``max_temperature`` K), or None; the learner's serial loop and the
    walker tasks (:mod:`gpal.learning.walkers`) both ask this."""
    try:
        forces = atoms.get_forces()
    except OverlappingAtomsError as exc:
        return str(exc)
    fmax = float(np.sqrt((forces**2).sum(1)).max())
    if not np.isfinite(fmax) or fmax > max_force:
        return f"max force {fmax:.3g} eV/Å > {max_force}"
    T = atoms.get_temperature()
    if not np.isfinite(T) or T > max_temperature:
        return f"temperature {T:.0f} K > {max_temperature:.0f} K"
    return None


def walker_atoms(template, positions, momenta, cell, numbers=None, pbc=None):
    """A walker's saved state on a copy of its start structure.

    The copy keeps what the saved arrays do not hold (constraints, masses, initial
    magnetic moments, charges, tags).

    Parameters
    ----------
    template : ase.Atoms
        The walker's start structure.
    positions, momenta : array, shape (N, 3)
        Å and ASE momentum units.
    cell : array, shape (3, 3)
        Å.
    numbers : array of int, shape (N,), optional
        The saved species, checked against the template's (ValueError if they differ).
    pbc : array of bool, shape (3,), optional
        Default: the template's.

    Returns
    -------
    ase.Atoms
        Without a calculator (``Atoms.copy`` leaves it behind).
    """
    if numbers is not None:
        numbers = np.asarray(numbers)
        if len(template) != len(numbers) or not np.array_equal(template.numbers, numbers):
            raise ValueError(f"a saved walker ({len(numbers)} atoms) does not match its start structure "
                             f"({template.get_chemical_formula()})")
    a = template.copy()
    a.set_cell(np.asarray(cell, dtype=float), scale_atoms=False)
    if pbc is not None:
        a.pbc = np.asarray(pbc, dtype=bool)
    a.set_positions(np.asarray(positions, dtype=float), apply_constraint=False)
    a.set_momenta(np.asarray(momenta, dtype=float), apply_constraint=False)
    return a


class _Walker:
    """One MD trajectory on the GP."""

    def __init__(self, index, atoms, md: MDSettings, rng, calc, temperature):
        self.index = index
        self.atoms = atoms
        self.md = md
        self.rng = rng
        self.atoms.calc = calc
        self.dyn = self._make_dyn(temperature)
        self.good = self.snapshot()

    def _make_dyn(self, temperature):
        ts = self.md.timestep * units.fs
        if self.md.factory is not None:
            return self.md.factory(self.atoms, ts, temperature, self.rng)
        return Langevin(
            self.atoms, ts, temperature_K=temperature, friction=self.md.friction / units.fs,
            fixcm=False, rng=self.rng,
        )

    def set_temperature(self, temperature):
        if hasattr(self.dyn, "set_temperature"):
            self.dyn.set_temperature(temperature_K=temperature)

    def snapshot(self):
        return (self.atoms.positions.copy(), self.atoms.get_momenta().copy(), self.atoms.cell.array.copy())

    def keep_if_good(self, temperature: float) -> None:
        """Remember this frame for rollbacks unless it is already running hot.

        "Hot" is beyond 4 standard deviations of the canonical kinetic temperature,
        T (1 + 4 sqrt(2 / 3N)), so a frame on its way to a blow-up is not kept.
        """
        if not self.running_hot(temperature):
            self.good = self.snapshot()

    def running_hot(self, temperature: float) -> bool:
        """Whether the kinetic temperature is beyond 4 standard deviations of the
        canonical one at ``temperature`` (K), T (1 + 4 sqrt(2 / 3N))."""
        n = max(len(self.atoms), 1)
        return bool(self.atoms.get_temperature() > temperature * (1.0 + 4.0 * np.sqrt(2.0 / (3.0 * n))))

    def restart_from_good(self, temperature: float) -> None:
        """Go back to the last good frame with fresh Maxwell-Boltzmann momenta at
        ``temperature`` (K) and new dynamics (after a blow-up, or a label of a hot frame)."""
        self.restore(self.good)
        self.refresh_momenta(temperature)
        self.dyn = self._make_dyn(temperature)

    def refresh_momenta(self, temperature: float) -> None:
        """Fresh Maxwell-Boltzmann momenta at ``temperature`` (K), positions kept (after the
        model changed under this walker)."""
        thermalize_momenta(self.atoms, temperature_K=temperature, rng=self.rng)
        Stationary(self.atoms)

    def restore(self, snap):
        pos, mom, cell = snap
        self.atoms.set_cell(cell)
        self.atoms.positions = pos
        self.atoms.set_momenta(mom)
        self.atoms.calc.reset()

    def step(self):
        self.dyn.run(1)


