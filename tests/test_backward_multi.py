"""The SOAP adjoint of several gradients in one pass (``SOAPExpansion.backward`` with K).

References: K single-gradient backward passes, the dense descriptor derivatives
(``derivatives(dense=True)``, dscribe's layout) and central finite differences of
``E_k = sum_i G[i, :, k] . X_i``; and the kernel columns of stored frames from the
adjoint against those from descriptor derivatives.
"""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk, molecule

from gpal import SparseGP
from gpal.descriptors import SOAP, pair_forces, pair_stress
from gpal.kernels import NormalizedDotProduct

from conftest import POLY, SMALL_SOAP, cuag_frames


def _cu(seed=1):
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 1, 1))
    atoms.rattle(0.08, seed=seed)
    return atoms


def _cuni(seed=2):
    atoms = bulk("Cu", "fcc", a=3.58, cubic=True).repeat((2, 1, 1))
    atoms.numbers = np.where(np.random.default_rng(seed).random(len(atoms)) < 0.4, 28, 29)
    atoms.rattle(0.06, seed=seed)
    return atoms


def _ethanol():
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=3)
    return atoms


SYSTEMS = {
    "cu-periodic": (_cu, ["Cu"], True),
    "cuni-periodic": (_cuni, ["Cu", "Ni"], True),
    "ethanol-molecule": (_ethanol, ["C", "H", "O"], False),
}


def _soap(species, periodic, n_max):
    return SOAP(species, r_cut=3.5, n_max=n_max, l_max=3, sigma=0.5, periodic=periodic,
                weighting={"function": "poly", "r0": 3.5, "c": 1, "m": 2})


def _gradients(exp, K, seed=0):
    G = np.random.default_rng(seed).normal(size=exp.descriptor.shape + (K,))
    G[0, :, 1] = 0.0  # a gradient that vanishes on a centre is skipped there
    return G


@pytest.mark.parametrize("n_max", [8, 3], ids=["nmax8", "nmax3"])  # paired / generic loops
@pytest.mark.parametrize("name", sorted(SYSTEMS))
def test_multi_backward_equals_single_passes_and_dense_derivatives(name, n_max):
    make, species, periodic = SYSTEMS[name]
    atoms = make()
    soap = _soap(species, periodic, n_max)
    exp = soap.expand(atoms)
    K = 5  # odd: two pairs of gradients and one alone
    G = _gradients(exp, K)
    out = exp.backward(G)
    assert out.shape == (len(exp.center), 3, K)
    single = np.stack([exp.backward(G[:, :, k]) for k in range(K)], axis=-1)
    np.testing.assert_allclose(out, single, rtol=0, atol=1e-12 * np.abs(single).max())
    np.testing.assert_allclose(exp.backward_stacked(np.moveaxis(G, 2, 1)), out, rtol=0, atol=0)
    # dense dX_i/dr_j: F_j = -sum_i G_i . dX_i/dr_j
    dense, X = soap.derivatives(atoms, dense=True)
    F_ref = -np.einsum("ijaf,ifk->jak", dense, G)
    F = pair_forces(out, exp.center, exp.neighbor, len(atoms))
    np.testing.assert_allclose(F, F_ref, rtol=0, atol=1e-10 * np.abs(F_ref).max())


@pytest.mark.parametrize("name", ["cuni-periodic", "ethanol-molecule"])
def test_multi_backward_forces_and_stress_vs_finite_differences(name):
    make, species, periodic = SYSTEMS[name]
    atoms = make()
    soap = _soap(species, periodic, 8)
    exp = soap.expand(atoms)
    K = 3
    G = _gradients(exp, K, seed=4)
    out = exp.backward(G)
    F = pair_forces(out, exp.center, exp.neighbor, len(atoms))

    def energies(a):
        return np.einsum("if,ifk->k", soap.create(a), G)

    h = 1e-5
    fd = np.zeros_like(F)
    for j in range(len(atoms)):
        for c in range(3):
            e = []
            for sign in (1, -1):
                a = atoms.copy()
                a.positions[j, c] += sign * h
                e.append(energies(a))
            fd[j, c] = -(e[0] - e[1]) / (2 * h)
    np.testing.assert_allclose(F, fd, rtol=0, atol=1e-7 * np.abs(fd).max())
    if not periodic:
        return
    S = pair_stress(out, exp.vector, exp.volume)
    assert S.shape == (6, K)
    for k in range(K):  # the K columns equal the single-column stress
        np.testing.assert_allclose(S[:, k], pair_stress(out[:, :, k], exp.vector, exp.volume),
                                   rtol=0, atol=1e-14 * np.abs(S).max())
    # a uniform strain: dE/d(eps) / V against the Voigt stress
    cell0 = atoms.cell.array
    for a_, b_, v in ((0, 0, 0), (1, 2, 3), (0, 1, 5)):
        e = []
        for sign in (1, -1):
            eps = np.zeros((3, 3))
            eps[a_, b_] = eps[b_, a_] = sign * h / (1 if a_ == b_ else 2)
            at = atoms.copy()
            at.set_cell(cell0 @ (np.eye(3) + eps), scale_atoms=True)
            e.append(energies(at))
        fd_s = (e[0] - e[1]) / (2 * h) / atoms.get_volume()
        np.testing.assert_allclose(S[v], fd_s, rtol=0, atol=1e-7 * np.abs(S).max())


def test_multi_backward_input_checks():
    atoms = _cu()
    exp = _soap(["Cu"], True, 3).expand(atoms)
    G = np.zeros(exp.descriptor.shape + (2,))
    with pytest.raises(ValueError):
        exp.backward(G[:, :-1])
    with pytest.raises(ValueError):
        exp.backward_stacked(G)  # (n_atoms, n_features, K) is not the stacked layout
    assert exp.backward(G[:, :, :0]).shape == (len(exp.center), 3, 0)
    np.testing.assert_array_equal(exp.backward(G), 0.0)


@pytest.mark.parametrize("n_new, block", [(1, None), (6, None), (6, 1)])  # block 1: a pass per point
def test_adjoint_columns_equal_derivative_columns(n_new, block, monkeypatch):
    import gpal.model.rows

    if block is not None:
        monkeypatch.setattr(gpal.model.rows, "_ADJOINT_BLOCK", block)
    frames = cuag_frames(5, seed=7)
    model = SparseGP(SOAP(species=[29, 47], periodic=True, weighting=POLY, **SMALL_SOAP),
                     NormalizedDotProduct(zeta=4), n_sparse=16, hyperparameters="fixed")
    model.fit(frames[:3])
    Z, zsp = model.sparse_X_[-n_new:], model.sparse_species_[-n_new:]
    for a in frames[3:]:
        adj = model._adjoint_rows(a, Z, zsp)
        ref = model._derivative_rows(a, Z, zsp)
        for x, y in zip(adj, ref):
            np.testing.assert_allclose(x, y, rtol=0, atol=1e-12 * np.max(np.abs(y)))


def _cuni_one_species_centres():
    """Cu-Ni with a Ni corner: some centres see one species only, others both."""
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((3, 2, 2))
    atoms.numbers[[0, 1]] = 28
    atoms.rattle(0.05, seed=5)
    return atoms


@pytest.mark.parametrize("n_max", [8, 3], ids=["nmax8", "nmax3"])
@pytest.mark.parametrize("name", sorted(SYSTEMS) + ["cuni-one-species-centres"])
def test_single_backward_equals_per_pair_reference(name, n_max):
    """The two-pass back-pass (one gradient; species contracted in place when they hold
    all of a centre's pairs, else from a copy) against the per-pair reference kernel."""
    if name == "cuni-one-species-centres":
        atoms, species, periodic = _cuni_one_species_centres(), ["Cu", "Ni"], False
    else:
        make, species, periodic = SYSTEMS[name]
        atoms = make()
    soap = SOAP(species, r_cut=3.0, n_max=n_max, l_max=3, sigma=0.5, periodic=periodic,
                weighting={"function": "poly", "r0": 3.0, "c": 1, "m": 2})
    exp = soap.expand(atoms)
    if name == "cuni-one-species-centres":  # both branches are taken
        spec = exp._species_index[exp.neighbor]
        mixed = [np.ptp(spec[exp.offsets[i]:exp.offsets[i + 1]]) > 0 for i in range(len(atoms))]
        assert any(mixed) and not all(mixed)
    G = np.random.default_rng(6).normal(size=exp.descriptor.shape)
    out = exp.backward(G)
    ref = soap._backward(exp, G, reference=True)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-12 * np.abs(ref).max())
