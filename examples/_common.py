"""Helpers shared by the examples: small EMT datasets and the fast-mode switch."""

from __future__ import annotations

import os

import numpy as np
from ase import units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import thermalize_momenta

#: GPAL_FAST=1 (set by the test suite) shrinks every example to a few seconds.
FAST = os.environ.get("GPAL_FAST", "") not in ("", "0")


def emt_frames(n_frames, temperature=900.0, size=(2, 2, 2), every=20, seed=0):
    """Labelled frames from an EMT Langevin trajectory of fcc Cu."""
    a = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(size)
    a.calc = EMT()
    rng = np.random.default_rng(seed)
    thermalize_momenta(a, temperature_K=temperature, rng=rng)
    dyn = Langevin(a, 2 * units.fs, temperature_K=temperature, friction=0.02 / units.fs,
                   fixcm=False, rng=rng)
    frames = []
    for _ in range(n_frames):
        dyn.run(every)
        b = a.copy()
        b.calc = SinglePointCalculator(b, energy=a.get_potential_energy(),
                                       forces=a.get_forces(), stress=a.get_stress())
        frames.append(b)
    return frames


def small_soap(species=("Cu",), periodic=True):
    """A small SOAP for quick runs; the default (r_cut 5, n_max 8, l_max 6) is better."""
    from gpal import SOAP

    r_cut = 4.0 if FAST else 5.0
    n_max, l_max = (4, 3) if FAST else (8, 6)
    return SOAP(species=list(species), r_cut=r_cut, n_max=n_max, l_max=l_max, sigma=0.5,
                periodic=periodic, weighting={"function": "poly", "r0": r_cut, "c": 1, "m": 1})
