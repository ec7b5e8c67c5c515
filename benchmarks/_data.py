"""Seeded EMT datasets for the gpal benchmarks (fcc Cu and a random fcc Cu/Au alloy).

Every frame comes from Langevin molecular dynamics with ASE's EMT calculator and carries
its EMT energy (eV), forces (eV/Å) and stress (Voigt, eV/Å^3, ASE sign) in a
``SinglePointCalculator``, exactly as ``ase.io.read`` returns labelled extxyz frames.

Recipe (one trajectory per cell size and temperature, its own seed):

* cells: 3x3x3 cubic fcc (108 atoms) and 2x2x2 cubic fcc (32 atoms);
* temperatures 300, 600, 900, 1200 and 1500 K;
* each trajectory starts from the perfect lattice under a small random homogeneous
  strain (default up to +-1 % per component, so that the stress labels vary between
  frames and carry information), momenta drawn at the target temperature;
* Langevin MD, 4 fs steps, friction 0.02 /fs, ``equilibration`` steps discarded, then one
  frame every ``interval`` steps (default 20 steps = 80 fs, several velocity
  autocorrelation times under this friction, so frames are decorrelated).

``cu_dataset()`` returns ``(train, test)``: ~50 training frames (24 of 108 atoms and 26 of
32 atoms, 3424 atoms in total) and 20 test frames (10 + 10) from independent trajectories
with other seeds. ``alloy_dataset()`` is the same for a random Cu(1-x)Au(x) fcc alloy
(x = 0.25 by default, Vegard lattice constant, a new random decoration per trajectory).

The frames are cached as extxyz under ``benchmarks/.cache/`` (gitignored), keyed by every
parameter that changes them, so repeated runs only read files. Run this module to (re)build
and summarise the datasets::

    python benchmarks/_data.py
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
from ase import Atoms, units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read, write
from ase.md import thermalize_momenta
from ase.md.langevin import Langevin

__all__ = [
    "CACHE_DIR",
    "TEMPERATURES",
    "cu_dataset",
    "alloy_dataset",
    "fcc_cell",
    "labelled",
    "summary",
]

CACHE_DIR = Path(__file__).resolve().parent / ".cache"
TEMPERATURES = (300.0, 600.0, 900.0, 1200.0, 1500.0)
A_CU = 3.61
A_AU = 4.08
_VERSION = 2  # bump when the recipe changes so stale caches are not reused


def fcc_cell(a: float, repeat: int, symbol: str = "Cu") -> Atoms:
    """Cubic fcc supercell of ``4 * repeat**3`` atoms with lattice constant ``a`` (Å)."""
    return bulk(symbol, "fcc", a=a, cubic=True).repeat((repeat, repeat, repeat))


def labelled(atoms: Atoms, calc) -> Atoms:
    """Copy of ``atoms`` with energy, forces and stress from ``calc`` in a SinglePointCalculator."""
    work = atoms.copy()
    work.calc = calc
    energy = work.get_potential_energy()
    forces = work.get_forces()
    stress = work.get_stress(voigt=True)
    out = Atoms(
        numbers=atoms.numbers.copy(),
        positions=atoms.positions.copy(),
        cell=atoms.cell.array.copy(),
        pbc=atoms.pbc.copy(),
    )
    out.calc = SinglePointCalculator(
        out, energy=energy, free_energy=energy, forces=forces, stress=stress
    )
    return out


def _strained(atoms: Atoms, rng: np.random.Generator, strain: float) -> Atoms:
    """Apply a random symmetric strain with components uniform in [-strain, strain]."""
    if strain <= 0:
        return atoms
    e = rng.uniform(-strain, strain, size=(3, 3))
    e = 0.5 * (e + e.T)
    atoms = atoms.copy()
    atoms.set_cell(atoms.cell.array @ (np.eye(3) + e), scale_atoms=True)
    return atoms


def _trajectory(
    atoms: Atoms,
    temperature: float,
    n_frames: int,
    seed: int,
    *,
    interval: int,
    equilibration: int,
    timestep_fs: float,
    friction_per_fs: float,
) -> list[Atoms]:
    """Langevin MD with EMT; return ``n_frames`` labelled frames, one every ``interval`` steps."""
    rng = np.random.default_rng(seed)
    atoms = atoms.copy()
    atoms.calc = EMT()
    thermalize_momenta(atoms, temperature_K=temperature, rng=rng)
    dyn = Langevin(
        atoms,
        timestep_fs * units.fs,
        temperature_K=temperature,
        friction=friction_per_fs / units.fs,
        fixcm=False,  # fixcm=True is deprecated (ASE 3.28) and biases small cells
        rng=rng,
    )
    dyn.run(equilibration)
    frames = []
    for _ in range(n_frames):
        dyn.run(interval)
        frames.append(labelled(atoms, EMT()))
    return frames


def _split(total: int, parts: int) -> list[int]:
    """Split ``total`` into ``parts`` near-equal non-negative integers (larger first)."""
    base, extra = divmod(total, parts)
    return [base + (1 if k < extra else 0) for k in range(parts)]


def _generate(
    make_cell,
    n_large: int,
    n_small: int,
    seed: int,
    temperatures,
    strain: float,
    md: dict,
) -> list[Atoms]:
    """Frames from one trajectory per (cell size, temperature); seeds derived from ``seed``."""
    frames: list[Atoms] = []
    for size_index, (repeat, n_total) in enumerate(((3, n_large), (2, n_small))):
        counts = _split(n_total, len(temperatures))
        for t_index, (temperature, count) in enumerate(zip(temperatures, counts)):
            if count == 0:
                continue
            traj_seed = seed * 1000 + size_index * 100 + t_index
            rng = np.random.default_rng(traj_seed)
            cell = _strained(make_cell(repeat, rng), rng, strain)
            frames += _trajectory(cell, temperature, count, traj_seed + 7, **md)
    return frames


def _cache_path(name: str, params: dict) -> Path:
    key = json.dumps({"version": _VERSION, **params}, sort_keys=True, default=str)
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    return CACHE_DIR / f"{name}_{digest}.extxyz"


def _cached(name: str, params: dict, build, use_cache: bool, verbose: bool) -> list[Atoms]:
    path = _cache_path(name, params)
    if use_cache and path.exists():
        return read(path, index=":")
    t0 = time.perf_counter()
    frames = build()
    if use_cache:
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.extxyz")
        write(tmp, frames, format="extxyz")
        os.replace(tmp, path)
        frames = read(path, index=":")  # exactly what later runs will see
    if verbose:
        print(f"  generated {name}: {len(frames)} frames in {time.perf_counter() - t0:.1f} s"
              + (f" -> {path.relative_to(CACHE_DIR.parent)}" if use_cache else ""))
    return frames


def _dataset(
    name: str,
    make_cell,
    cell_params: dict,
    *,
    n_train_large: int,
    n_train_small: int,
    n_test_large: int,
    n_test_small: int,
    seed: int,
    temperatures,
    strain: float,
    interval: int,
    equilibration: int,
    timestep_fs: float,
    friction_per_fs: float,
    use_cache: bool,
    verbose: bool,
):
    md = dict(
        interval=int(interval),
        equilibration=int(equilibration),
        timestep_fs=float(timestep_fs),
        friction_per_fs=float(friction_per_fs),
    )
    temperatures = tuple(float(t) for t in temperatures)
    common = dict(cell=cell_params, temperatures=temperatures, strain=strain, md=md)
    train_params = dict(common, n_large=n_train_large, n_small=n_train_small, seed=seed)
    # test trajectories: other seeds, independent of every training trajectory
    test_seed = seed + 500
    test_params = dict(common, n_large=n_test_large, n_small=n_test_small, seed=test_seed)
    train = _cached(
        f"{name}_train",
        train_params,
        lambda: _generate(make_cell, n_train_large, n_train_small, seed, temperatures, strain, md),
        use_cache,
        verbose,
    )
    test = _cached(
        f"{name}_test",
        test_params,
        lambda: _generate(
            make_cell, n_test_large, n_test_small, test_seed, temperatures, strain, md
        ),
        use_cache,
        verbose,
    )
    return train, test


def cu_dataset(
    *,
    n_train_large: int = 24,
    n_train_small: int = 26,
    n_test_large: int = 10,
    n_test_small: int = 10,
    seed: int = 0,
    a: float = A_CU,
    temperatures=TEMPERATURES,
    strain: float = 0.01,
    interval: int = 20,
    equilibration: int = 100,
    timestep_fs: float = 4.0,
    friction_per_fs: float = 0.02,
    use_cache: bool = True,
    verbose: bool = False,
) -> tuple[list[Atoms], list[Atoms]]:
    """fcc Cu frames labelled by EMT: ``(train, test)``.

    Parameters
    ----------
    n_train_large, n_train_small : int, default 24 and 26
        Training frames of 108 atoms (3x3x3 cubic cell) and of 32 atoms (2x2x2), spread
        over ``temperatures`` (one trajectory per size and temperature).
    n_test_large, n_test_small : int, default 10 and 10
        Test frames, from independent trajectories (other seeds).
    seed : int, default 0
        Master seed; every trajectory's seed is derived from it.
    a : float, default 3.61
        Lattice constant (Å).
    temperatures : sequence of float, default (300, 600, 900, 1200, 1500)
        Langevin temperatures (K).
    strain : float, default 0.01
        Maximum random strain component applied to each trajectory's cell.
    interval, equilibration : int, default 20 and 100
        MD steps between frames, and steps discarded at the start of each trajectory.
    timestep_fs, friction_per_fs : float, default 4.0 and 0.02
        Langevin time step (fs) and friction (1/fs).
    use_cache : bool, default True
        Read/write ``benchmarks/.cache/cu_{train,test}_<hash>.extxyz``.
    verbose : bool, default False
        Print what is generated.

    Returns
    -------
    train, test : list of ase.Atoms
        Frames with energy, forces and stress in SinglePointCalculators.
    """
    def make_cell(repeat, rng):
        return fcc_cell(a, repeat, "Cu")

    return _dataset(
        "cu",
        make_cell,
        {"a": a, "symbol": "Cu"},
        n_train_large=n_train_large,
        n_train_small=n_train_small,
        n_test_large=n_test_large,
        n_test_small=n_test_small,
        seed=seed,
        temperatures=temperatures,
        strain=strain,
        interval=interval,
        equilibration=equilibration,
        timestep_fs=timestep_fs,
        friction_per_fs=friction_per_fs,
        use_cache=use_cache,
        verbose=verbose,
    )


def random_alloy(
    repeat: int, x_au: float, rng: np.random.Generator, a: float | None = None
) -> Atoms:
    """Random Cu(1-x)Au(x) fcc supercell: exactly round(x*N) Au atoms on random sites.

    ``a`` defaults to Vegard's law between Cu (3.61 Å) and Au (4.08 Å).
    """
    if a is None:
        a = (1 - x_au) * A_CU + x_au * A_AU
    atoms = fcc_cell(a, repeat, "Cu")
    n_au = int(round(x_au * len(atoms)))
    numbers = atoms.numbers.copy()
    numbers[rng.choice(len(atoms), size=n_au, replace=False)] = 79
    atoms.numbers = numbers
    return atoms


def alloy_dataset(
    *,
    x_au: float = 0.25,
    n_train_large: int = 24,
    n_train_small: int = 26,
    n_test_large: int = 10,
    n_test_small: int = 10,
    seed: int = 0,
    temperatures=TEMPERATURES,
    strain: float = 0.01,
    interval: int = 20,
    equilibration: int = 100,
    timestep_fs: float = 4.0,
    friction_per_fs: float = 0.02,
    use_cache: bool = True,
    verbose: bool = False,
) -> tuple[list[Atoms], list[Atoms]]:
    """Random fcc Cu/Au alloy frames labelled by EMT: ``(train, test)``.

    Same recipe and parameters as :func:`cu_dataset`; each trajectory has its own random
    decoration with ``round(x_au * N)`` Au atoms and the Vegard lattice constant.
    """
    def make_cell(repeat, rng):
        return random_alloy(repeat, x_au, rng)

    return _dataset(
        "cuau",
        make_cell,
        {"x_au": x_au, "a": "vegard"},
        n_train_large=n_train_large,
        n_train_small=n_train_small,
        n_test_large=n_test_large,
        n_test_small=n_test_small,
        seed=seed,
        temperatures=temperatures,
        strain=strain,
        interval=interval,
        equilibration=equilibration,
        timestep_fs=timestep_fs,
        friction_per_fs=friction_per_fs,
        use_cache=use_cache,
        verbose=verbose,
    )


def summary(frames: list[Atoms]) -> str:
    """One line: frames, atoms, composition, energy/force/stress spread."""
    n_atoms = sum(len(a) for a in frames)
    symbols = {}
    for a in frames:
        for s in a.get_chemical_symbols():
            symbols[s] = symbols.get(s, 0) + 1
    e = np.array([a.get_potential_energy() / len(a) for a in frames])
    f = np.concatenate([a.get_forces().ravel() for a in frames])
    s = np.concatenate([a.get_stress() for a in frames]) / units.GPa
    comp = " ".join(f"{k}:{v}" for k, v in sorted(symbols.items()))
    return (
        f"{len(frames)} frames, {n_atoms} atoms ({comp}); E/N std {1e3 * e.std():.1f} meV/atom, "
        f"force rms {np.sqrt(np.mean(f**2)):.3f} eV/Å, stress rms {np.sqrt(np.mean(s**2)):.2f} GPa"
    )


def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-cache", action="store_true", help="regenerate, do not read/write")
    args = parser.parse_args()
    for name, fn in (("Cu", cu_dataset), ("CuAu", alloy_dataset)):
        train, test = fn(seed=args.seed, use_cache=not args.no_cache, verbose=True)
        print(f"{name} train: {summary(train)}")
        print(f"{name} test:  {summary(test)}")


if __name__ == "__main__":
    _main()
