"""A descriptor written outside gpal plugs into SparseGP: fit, forces, stress, save/load.

The toy is a two-body radial descriptor (Gaussian radial basis per neighbour species,
cosine cutoff), written here from the contract of :class:`gpal.descriptors.Descriptor`
only: ``create`` and pair ``derivatives``. Forces and stress come from gpal's generic
back-propagation through the pairs and are checked against finite differences of the
model's own energy; the saved model comes back through the registry.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase.neighborlist import neighbor_list

from gpal import NormalizedDotProduct, SparseGP
from gpal.descriptors import Descriptor, PairDerivatives, descriptor_from_dict
from gpal.exceptions import ModelFileError

from conftest import cu_frames


class RadialToy(Descriptor):
    def __init__(self, species=(29,), r_cut=4.0, n_radial=5, width=0.5, periodic=True):
        self.species = species
        self.r_cut = r_cut
        self.n_radial = n_radial
        self.width = width
        self.periodic = periodic

    @property
    def species_numbers_(self):
        return np.array(sorted(int(z) for z in self.species), dtype=np.int64)

    def _basis(self, r):
        mu = np.linspace(1.5, self.r_cut, self.n_radial)
        g = np.exp(-((r[:, None] - mu) ** 2) / (2 * self.width**2))
        fc = 0.5 * (np.cos(np.pi * r / self.r_cut) + 1.0)
        dg = -g * (r[:, None] - mu) / self.width**2
        dfc = -0.5 * np.pi / self.r_cut * np.sin(np.pi * r / self.r_cut)
        return g * fc[:, None], dg * fc[:, None] + g * dfc[:, None]

    def derivatives(self, atoms) -> PairDerivatives:
        i, j, D = neighbor_list("ijD", atoms, self.r_cut)
        order = np.argsort(i, kind="stable")
        i, j, D = i[order], j[order], D[order]
        r = np.linalg.norm(D, axis=1)
        f, df = self._basis(r)
        n, S = len(atoms), len(self.species_numbers_)
        slot = np.searchsorted(self.species_numbers_, atoms.numbers[j])
        X = np.zeros((n, S * self.n_radial))
        dX = np.zeros((len(i), 3, S * self.n_radial))
        for p in range(len(i)):
            cols = slice(slot[p] * self.n_radial, (slot[p] + 1) * self.n_radial)
            X[i[p], cols] += f[p]
            dX[p, :, cols] = np.outer(D[p] / r[p], df[p])
        offsets = np.searchsorted(i, np.arange(n + 1)).astype(np.int64)
        volume = abs(np.linalg.det(atoms.cell.array)) if atoms.pbc.all() else np.nan
        return PairDerivatives(X, i.astype(np.int64), j.astype(np.int64), D, dX, offsets, volume,
                               atoms.numbers.astype(np.int64))

    def create(self, atoms):
        return self.derivatives(atoms).descriptor


def _energy(model, atoms):
    return model.predict(atoms)["energy"]


@pytest.fixture(scope="module")
def toy_model():
    frames = cu_frames(4, seed=61)
    return SparseGP(RadialToy(), NormalizedDotProduct(zeta=2), hyperparameters="fixed", n_sparse=20).fit(frames)


def test_a_toy_descriptor_fits_and_its_forces_and_stress_are_gradients(toy_model):
    atoms = cu_frames(1, seed=62)[0]
    out = toy_model.predict(atoms, return_std=True)
    h = 1e-4  # central differences: truncation ~h², round-off of the energy ~1e-11 eV / h
    for a, c in [(0, 0), (3, 1), (7, 2)]:
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[a, c] += h
        minus.positions[a, c] -= h
        fd = -(_energy(toy_model, plus) - _energy(toy_model, minus)) / (2 * h)
        assert out["forces"][a, c] == pytest.approx(fd, abs=1e-6)
    eps = 1e-5  # stress: derivative of the energy under a homogeneous strain, per volume
    strained = []
    for sign in (1, -1):
        b = atoms.copy()
        b.set_cell(atoms.cell.array @ (np.eye(3) + sign * eps * np.diag([1, 0, 0])), scale_atoms=True)
        strained.append(_energy(toy_model, b))
    fd_xx = (strained[0] - strained[1]) / (2 * eps) / atoms.get_volume()
    assert out["stress"][0] == pytest.approx(fd_xx, abs=1e-6)
    assert np.all(out["energies_std"] > 0)


def test_a_toy_descriptor_is_saved_and_loaded_through_the_registry(toy_model, tmp_path):
    path = toy_model.save(tmp_path / "toy.npz")
    back = SparseGP.load(path)
    assert isinstance(back.descriptor_, RadialToy)
    assert back.descriptor_.to_dict() == json.loads(json.dumps(toy_model.descriptor_.to_dict()))
    atoms = cu_frames(1, seed=63)[0]
    a, b = toy_model.predict(atoms, return_std=True), back.predict(atoms, return_std=True)
    np.testing.assert_allclose(b["forces"], a["forces"], rtol=1e-10, atol=1e-12)
    assert b["energy"] == pytest.approx(a["energy"], rel=1e-12)
    with pytest.raises(ValueError, match="unknown descriptor type 'NoSuch'.*known: .*RadialToy.*SOAP"):
        descriptor_from_dict({"type": "NoSuch", "params": {}})


def test_gpal_names_cannot_be_shadowed():
    with pytest.raises(TypeError, match="already has a descriptor named 'SOAP'"):
        type("SOAP", (Descriptor,), {"__module__": "user_code"})
    assert ModelFileError  # the load path's own errors stay gpal's
