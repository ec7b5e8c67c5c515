"""The MD fast path equals the reference path.

* pair-batched SOAP kernels (``soap_create_batched``, ``soap_backward_batched``) against the
  per-pair reference kernels (``soap_create``, ``soap_backward``), to 1e-10 relative;
* the reused (Verlet-skin) neighbour lists of :class:`gpal.descriptors.neighbors.PairCache` against a
  fresh search, pair for pair and bit for bit, along an MD-like sequence of positions;
* a model's prediction (energy, forces, stress, local and total energy stds) against the
  same quantities assembled from the reference kernels and the solver's own variance
  methods, to 1e-10 relative; and predictions along an MD run equal, bit for bit, those
  of a model that never reuses anything.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
from ase.build import bulk, molecule
from ase.md.verlet import VelocityVerlet
from ase import units

import gpal
from gpal.descriptors import SOAP, pair_forces, pair_stress
from gpal.descriptors.neighbors import PairCache, neighbor_list

from conftest import POLY, SMALL_SOAP, cu_frames

SOAP_MD = dict(r_cut=4.0, n_max=5, l_max=4, sigma=0.5)


def _systems():
    cu = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
    cu.rattle(0.05, seed=1)
    alloy = bulk("Cu", "fcc", a=3.58, cubic=True).repeat(2)
    rng = np.random.default_rng(2)
    alloy.numbers = np.where(rng.random(len(alloy)) < 0.4, 28, 29)
    alloy.rattle(0.06, seed=2)
    mol = molecule("CH3CH2OH")
    nh3 = molecule("NH3")
    nh3.translate([2.2, 1.5, 0.6])
    salt = bulk("NaCl", "rocksalt", a=5.2)
    salt.rattle(0.03, seed=4)
    return [
        ("cu-poly", cu, ["Cu"], True, POLY),
        ("alloy-poly", alloy, ["Ni", "Cu"], True, POLY),
        ("molecule", mol + nh3, ["H", "C", "N", "O"], False, None),
        ("salt-pow", salt, ["Na", "Cl"], True,
         {"function": "pow", "r0": 2.0, "c": 1.0, "d": 1.0, "m": 3}),
    ]


@pytest.mark.parametrize("n_max", [5, 8])  # 8: the specialised contraction
@pytest.mark.parametrize("name, atoms, species, periodic, weighting", _systems(),
                         ids=[s[0] for s in _systems()])
def test_batched_kernels_equal_reference(name, atoms, species, periodic, weighting, n_max):
    soap = SOAP(species, periodic=periodic, weighting=weighting, **{**SOAP_MD, "n_max": n_max})
    numbers, spec, i, j, D, offsets, volume = soap._prepare(atoms)
    C_ref, X_ref = soap._run_create(spec, j, D, offsets, reference=True)
    C, X = soap._run_create(spec, j, D, offsets)
    np.testing.assert_allclose(X, X_ref, rtol=0, atol=1e-10 * np.abs(X_ref).max())
    np.testing.assert_allclose(C, C_ref, rtol=0, atol=1e-10 * np.abs(C_ref).max())
    exp = soap.expand(atoms)
    G = np.random.default_rng(0).normal(size=exp.descriptor.shape)
    g_ref = soap._backward(exp, G, reference=True)
    g = exp.backward(G)
    np.testing.assert_allclose(g, g_ref, rtol=0, atol=1e-10 * np.abs(g_ref).max())


def _md_positions(atoms, n_steps, seed):
    """Positions of a random walk of small steps, a periodic wrap and one large jump."""
    rng = np.random.default_rng(seed)
    pos = atoms.positions.copy()
    out = []
    for step in range(n_steps):
        pos = pos + rng.normal(0, 0.04, pos.shape)
        if step == n_steps // 2:
            pos[0] += atoms.cell[0]  # the same structure, one atom unwrapped
        if step == 3 * n_steps // 4:
            pos = pos + rng.normal(0, 0.4, pos.shape)  # beyond the skin: a rebuild
        out.append(pos.copy())
    return out


@pytest.mark.parametrize("pbc", [True, False, (True, True, False)])
def test_pair_cache_equals_fresh_search(pbc):
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
    atoms.rattle(0.05, seed=3)
    atoms.pbc = pbc
    cutoff = 4.0
    cache = PairCache(cutoff, skin=0.6)
    cell = np.array(atoms.cell.array)
    pbc_arr = np.array(atoms.pbc, dtype=bool)
    for pos in _md_positions(atoms, 24, seed=5):
        i, j, D, S, offsets = cache.pairs(np.ascontiguousarray(pos), cell, pbc_arr)
        fi, fj, fD, fS = neighbor_list(pos, cell, pbc_arr, cutoff, return_shifts=True)
        # same pairs; canonical order: by centre, then neighbour and shift
        key = np.lexsort((fS[:, 2], fS[:, 1], fS[:, 0], fj, fi))
        np.testing.assert_array_equal(i, fi[key])
        np.testing.assert_array_equal(j, fj[key])
        np.testing.assert_array_equal(S, fS[key])
        np.testing.assert_array_equal(D, fD[key])  # bit for bit
        np.testing.assert_array_equal(offsets[1:], np.cumsum(np.bincount(fi, minlength=len(pos))))
    assert cache.n_reuses > 10 and cache.n_builds >= 2


@pytest.fixture(scope="module")
def md_model():
    frames = cu_frames(5, seed=11, size=(2, 2, 2))
    soap = SOAP(["Cu"], periodic=True, weighting=POLY, **SMALL_SOAP)
    return gpal.SparseGP(soap, gpal.NormalizedDotProduct(zeta=4), n_sparse=40,
                         hyperparameters="fixed").fit(frames)


def _reference_prediction(model, atoms):
    """Energy, forces, stress and stds from the reference kernels and solver methods."""
    soap = model.descriptor_
    numbers, spec, i, j, D, offsets, volume = soap._prepare(atoms)
    C, X = soap._run_create(spec, j, D, offsets, reference=True)
    exp = soap.expand(atoms)
    exp.coefficients = C
    Z, alpha = model.sparse_X_, model.alpha_
    K, G = model.kernel_.value_and_weighted_gradient(X, Z, alpha)
    dE = soap._backward(exp, G, reference=True)
    energies = model._e0_of(atoms.numbers) + K @ alpha
    resid = np.clip(model.kernel_.diag(X) - model.solver_.var_nystrom(K), 0, None)
    return {
        "energies": energies,
        "energy": energies.sum(),
        "forces": pair_forces(dE, i, j, len(atoms)),
        "stress": pair_stress(dE, D, volume),
        "energies_std": np.sqrt(resid + model.solver_.var_sor(K)),
        "energy_std": np.sqrt(model.solver_.var_sor(K.sum(axis=0)[None])[0] + resid.sum()),
    }


def test_prediction_equals_reference_path(md_model):
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    atoms.rattle(0.07, seed=9)
    p = md_model.predict(atoms, return_std=True)
    ref = _reference_prediction(md_model, atoms)
    for key in ("energies", "energy", "forces", "stress"):
        scale = np.abs(ref[key]).max()
        np.testing.assert_allclose(p[key], ref[key], rtol=0, atol=1e-10 * scale, err_msg=key)
    # the DTC variance is a difference of terms of the size of the prior variance k(x, x)
    # (k - k K_mm⁻¹ k ≈ 1e-7 k here): rounding of the descriptor (1e-15) reaches it
    # amplified by k / var, so variances are compared relative to the prior variance
    prior = md_model.kernel_.diag(np.ones((1, 1)))[0]
    for key, n in (("energies_std", 1), ("energy_std", len(atoms))):
        np.testing.assert_allclose(p[key] ** 2, ref[key] ** 2, rtol=0, atol=1e-10 * n * prior,
                                   err_msg=key)


def test_md_with_reused_lists_equals_fresh_model(md_model):
    """A calculator along an MD run gives, bit for bit, what a model without history gives."""
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    atoms.rattle(0.05, seed=2)
    rng = np.random.default_rng(3)
    atoms.set_momenta(rng.normal(0, 0.3, (len(atoms), 3)))
    model = copy.deepcopy(md_model)
    atoms.calc = gpal.GPCalculator(model, std_every=1)
    dyn = VelocityVerlet(atoms, 2.0 * units.fs)
    for _ in range(12):
        dyn.run(1)
        fresh = copy.deepcopy(md_model)
        fresh.descriptor_._pair_cache = PairCache(fresh.descriptor_.cutoff_)
        p = fresh.predict(atoms, return_std=True)
        res = atoms.calc.results
        for key in ("energy", "forces", "stress", "energies_std"):
            np.testing.assert_array_equal(res[key], p[key], err_msg=key)
    assert model.descriptor_._pair_cache.n_reuses >= 8
