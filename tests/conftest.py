"""Shared fixtures: small EMT-labelled systems (seeded) and small SOAP settings."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

SMALL_SOAP = dict(r_cut=4.0, n_max=4, l_max=3, sigma=0.5)
POLY = {"function": "poly", "r0": 4.0, "c": 1, "m": 1}


@pytest.fixture(autouse=True)
def _ctrl_c_raises():
    """Ctrl-C raises KeyboardInterrupt in every test, as in a terminal. A test run started
    in the background by a non-interactive shell inherits SIGINT ignored, and Python then
    installs no handler: the tests that send themselves Ctrl-C failed and the next one
    waited forever for it."""
    import signal

    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def label(atoms: Atoms, stress: bool = True) -> Atoms:
    """Return a copy of ``atoms`` labelled by EMT (energy, forces, optionally stress)."""
    a = atoms.copy()
    a.calc = EMT()
    res = {"energy": a.get_potential_energy(), "forces": a.get_forces()}
    if stress and a.pbc.all():
        res["stress"] = a.get_stress()
    a.calc = SinglePointCalculator(a, **res)
    return a


def cu_frames(n: int, seed: int = 0, rattle: float = 0.08, size=(1, 1, 2), strain=0.02):
    """``n`` rattled, slightly strained periodic fcc Cu cells labelled by EMT."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        a = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(size)
        a.set_cell(a.cell.array @ (np.eye(3) + strain * rng.uniform(-1, 1, (3, 3))), scale_atoms=True)
        a.positions += rng.normal(0, rattle, a.positions.shape)
        frames.append(label(a))
    return frames


def cuag_frames(n: int, seed: int = 0, rattle: float = 0.08):
    """``n`` rattled periodic Cu/Ag random alloys (8 atoms) labelled by EMT."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        a = bulk("Cu", "fcc", a=3.75, cubic=True).repeat((1, 1, 2))
        numbers = np.where(rng.random(len(a)) < 0.5, 29, 47)
        numbers[0], numbers[1] = 29, 47
        a.numbers = numbers
        a.positions += rng.normal(0, rattle, a.positions.shape)
        frames.append(label(a))
    return frames


@pytest.fixture(scope="session")
def cu_train():
    return cu_frames(6, seed=1)


@pytest.fixture(scope="session")
def cuag_train():
    return cuag_frames(6, seed=2)


def refit_without_frame(model, b):
    """The model's solver refitted without training frame ``b``, and ``b``'s observation rows.

    The reference for leave-one-frame-out residuals: a fresh factorisation of the stored
    kernel rows, labels and noises of every other frame.
    """
    from gpal.sparse_gp import SparseGPSolver

    sol = model.solver_
    keep = model.obs_frame_ != b
    ref = SparseGPSolver().fit(sol.K_mm_, sol.K_nm_[keep], sol.y_[keep], sol.noise_std_[keep],
                               jitter=model.jitter)
    return ref, np.flatnonzero(~keep)


class UnsavableConstraint:
    """A constraint of a user's own, whose ``todict`` ASE's ``dict2constraint`` cannot rebuild."""

    def todict(self):
        return {"name": "UnsavableConstraint", "kwargs": {}}

    def adjust_positions(self, atoms, new):
        pass

    def adjust_forces(self, atoms, forces):
        pass

    def get_removed_dof(self, atoms):
        return 0

    def index_shuffle(self, atoms, ind):
        pass
