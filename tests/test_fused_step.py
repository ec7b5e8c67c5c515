"""The fused prediction path (``SparseGP._fused_terms``) against the two-pass path.

``SparseGP.predict`` with gpal's SOAP expands the centres block by block, keeping each
pair's radial functions, harmonics and their gradients for the back-pass
(``SOAP._fused_step``). The two-pass path (``expand``, kernel terms, ``backward``,
the reference here) is selected by the private switch ``model._fused_step = False``.
Both must give the same energies, forces, stress and local stds (to 1e-10 relative),
on one- and two-species periodic cells and a several-species molecule, with both
cosine kernels, with several blocks per frame; forces are checked against finite
differences of the fused energies too.
"""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk, molecule

import gpal.descriptors.soap as soap_module
from gpal import SOAP, SparseGP
from gpal.kernels import NormalizedDotProduct, SquaredExponential

from conftest import POLY, SMALL_SOAP, cu_frames, label

KEYS = ("energy", "energies", "forces", "stress", "energies_std", "energy_std", "novelty")


@pytest.fixture
def small_blocks(monkeypatch):
    """About 60 kept pairs per block: several blocks per frame, blocks of one centre too."""
    size = soap_module.jit.stored_pair_size(SMALL_SOAP["l_max"] + 1, SMALL_SOAP["n_max"])
    monkeypatch.setattr(soap_module, "_FUSED_STORE_BYTES", 60 * 8 * size)


def predict_both(model, atoms, monkeypatch):
    """(fused, two-pass) predictions with stds; asserts the fused path was taken."""
    calls = []
    fused = soap_module.SOAP._fused_step

    def spy(self, *a, **k):
        calls.append(1)
        return fused(self, *a, **k)

    with monkeypatch.context() as m:
        m.setattr(soap_module.SOAP, "_fused_step", spy)
        new = model.predict(atoms, return_std=True)
    assert calls, "the fused path was not taken"
    model._fused_step = False
    try:
        old = model.predict(atoms, return_std=True)
    finally:
        del model._fused_step
    return new, old


def assert_same(new, old, rtol=1e-10):
    assert set(new) == set(old)
    for key in KEYS:
        if key not in old:
            continue
        a, b = np.asarray(new[key]), np.asarray(old[key])
        # novelty is a fraction in [0, 1] (its scale is 1): a difference of rounding in
        # k K_mm⁻¹ k is ~1e-16 there, and relative to a novelty near 0 it is not small
        scale = 1.0 if key == "novelty" else max(np.abs(b).max(), 1e-300)
        # a std is the root of a variance that cancels most of the prior (k(x,x) - |w|² + |v|²),
        # and its projected part |v|² is formed in single precision (rounded from w, whose
        # last bits differ with the order of sums): stds get 1e-6 of their largest value
        tol = max(rtol, 1e-6) if key in ("energies_std", "energy_std") else rtol
        np.testing.assert_allclose(a, b, rtol=0, atol=tol * scale, err_msg=key)


def molecule_frames(n, seed):
    """Rattled ethanol (C, H, O; no cell) labelled by EMT."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        a = molecule("CH3CH2OH")
        a.positions += rng.normal(0, 0.05, a.positions.shape)
        frames.append(label(a, stress=False))
    return frames


def cuni_frames(n, seed):
    """Rattled periodic Cu/Ni random alloys (16 atoms) labelled by EMT."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        a = bulk("Cu", "fcc", a=3.58, cubic=True).repeat((2, 1, 2))
        a.numbers = np.where(rng.random(len(a)) < 0.5, 29, 28)
        a.numbers[:2] = [28, 29]
        a.positions += rng.normal(0, 0.07, a.positions.shape)
        frames.append(label(a))
    return frames


def fitted(frames, kernel=None, periodic=True, n_sparse=25, soap_args=SMALL_SOAP, weighting=POLY):
    species = sorted({int(z) for a in frames for z in a.numbers})
    soap = SOAP(species=species, periodic=periodic, weighting=weighting, **soap_args)
    kernel = kernel if kernel is not None else NormalizedDotProduct(zeta=4)
    return SparseGP(soap, kernel, n_sparse=n_sparse, hyperparameters="fixed").fit(frames)


@pytest.mark.parametrize("kernel", [NormalizedDotProduct(zeta=3),
                                    SquaredExponential(length_scale=0.4)])
def test_one_species_periodic(small_blocks, monkeypatch, kernel):
    model = fitted(cu_frames(4, seed=21), kernel)
    cell = cu_frames(1, seed=22, size=(2, 2, 2))[0]  # 32 atoms, ~20 blocks
    new, old = predict_both(model, cell, monkeypatch)
    assert "stress" in new
    assert_same(new, old)
    # consecutive MD-like steps (the Verlet list reused)
    for k in range(2):
        cell.positions += np.random.default_rng(k).normal(0, 0.01, cell.positions.shape)
        assert_same(*predict_both(model, cell, monkeypatch))


def test_two_species_periodic_default_n_max(monkeypatch):
    """CuNi with n_max 8 (the contraction in registers) and the default block size."""
    train = cuni_frames(4, seed=31)
    model = fitted(train, soap_args=dict(r_cut=4.0, n_max=8, l_max=4, sigma=0.5), n_sparse=30)
    test = cuni_frames(1, seed=32)[0].repeat((2, 1, 1))
    assert_same(*predict_both(model, test, monkeypatch))


def test_two_species_several_blocks_and_a_one_species_block(small_blocks, monkeypatch):
    model = fitted(cuni_frames(4, seed=33), SquaredExponential(length_scale=0.5))
    test = cuni_frames(1, seed=34)[0]
    test.numbers[:8] = 29  # the first blocks hold Cu only
    assert_same(*predict_both(model, test, monkeypatch))


@pytest.mark.parametrize("kernel", [NormalizedDotProduct(zeta=4),
                                    SquaredExponential(length_scale=0.5)])
def test_molecule_several_species(small_blocks, monkeypatch, kernel):
    train = molecule_frames(5, seed=41)
    model = fitted(train, kernel, periodic=False, n_sparse=20,
                   weighting={"function": "poly", "r0": 4.0, "c": 1, "m": 1})
    test = molecule_frames(1, seed=42)[0]
    new, old = predict_both(model, test, monkeypatch)
    assert "stress" not in new
    assert_same(new, old)


def test_fused_forces_and_stress_are_derivatives_of_the_energy(small_blocks):
    model = fitted(cuni_frames(3, seed=51))
    atoms = cuni_frames(1, seed=52)[0]
    pred = model.predict(atoms)
    h = 1e-5
    for i, a in [(0, 0), (3, 1), (9, 2)]:
        e = []
        for sign in (1, -1):
            b = atoms.copy()
            b.positions[i, a] += sign * h
            e.append(model.predict(b)["energy"])
        np.testing.assert_allclose(-(e[0] - e[1]) / (2 * h), pred["forces"][i, a],
                                   rtol=0, atol=1e-6 * np.abs(pred["forces"]).max() + 1e-8)
    # stress: derivative of the energy under a homogeneous strain, per volume
    eps = 1e-6
    e = []
    for sign in (1, -1):
        b = atoms.copy()
        b.set_cell(atoms.cell.array @ (np.eye(3) + sign * eps * np.diag([1, 0, 0])), scale_atoms=True)
        e.append(model.predict(b)["energy"])
    sxx = (e[0] - e[1]) / (2 * eps) / atoms.get_volume()
    np.testing.assert_allclose(pred["stress"][0], sxx, rtol=1e-5, atol=1e-9)


def test_minimum_distance_is_checked_before_the_fused_pass(monkeypatch):
    model = fitted(cu_frames(3, seed=61))
    atoms = cu_frames(1, seed=62)[0]
    atoms.positions[1] = atoms.positions[0] + [0.05, 0, 0]
    with pytest.raises(Exception) as fused_err:
        model.predict(atoms)
    model._fused_step = False
    with pytest.raises(type(fused_err.value)):
        model.predict(atoms)


def test_isolated_atoms_and_no_stds(small_blocks, monkeypatch):
    """Centres without neighbours (blocks of no pairs) and a prediction without stds."""
    train = molecule_frames(4, seed=71)
    model = fitted(train, periodic=False, n_sparse=15)
    far = molecule_frames(1, seed=72)[0]
    far.positions[0] += [20.0, 0.0, 0.0]  # a lone C atom
    far.positions[5] += [0.0, 20.0, 0.0]  # a lone H atom
    assert_same(*predict_both(model, far, monkeypatch))
    new = model.predict(far)
    model._fused_step = False
    old = model.predict(far)
    assert "energies_std" not in new
    for key in ("energy", "energies", "forces"):
        np.testing.assert_allclose(new[key], old[key], rtol=0,
                                   atol=1e-10 * np.abs(old[key]).max(), err_msg=key)


@pytest.mark.parametrize("l_max, n_max", [(0, 2), (9, 3), (6, 8)])
def test_soap_fused_step_equals_expand_then_backward(monkeypatch, l_max, n_max):
    """The descriptor pass alone, any G: X and dE as expand + backward (the harmonics'
    gradient map up to l_max 9; the n_max 8 and the general contraction)."""
    atoms = cuni_frames(1, seed=81)[0]
    soap = SOAP(species=[28, 29], r_cut=4.0, n_max=n_max, l_max=l_max, sigma=0.5,
                periodic=True, weighting=POLY)
    size = soap_module.jit.stored_pair_size(l_max + 1, n_max)
    monkeypatch.setattr(soap_module, "_FUSED_STORE_BYTES", 100 * 8 * size)  # ~4 blocks
    G = np.random.default_rng(0).normal(size=(len(atoms), soap.get_number_of_features()))
    exp = soap.expand(atoms)
    ref = exp.backward(G)
    seen = []

    scale = np.abs(exp.descriptor).max()

    def block_gradient(i0, i1, Xb):
        seen.append((i0, i1))
        np.testing.assert_allclose(Xb, exp.descriptor[i0:i1], rtol=0, atol=1e-13 * scale)
        return G[i0:i1]

    step = soap._fused_step(atoms, block_gradient)
    assert len(seen) > 1 and seen[0][0] == 0 and seen[-1][1] == len(atoms)
    # (the fused pass sums in the primitive radial basis: equal up to the order of sums)
    np.testing.assert_allclose(step.descriptor, exp.descriptor, rtol=0, atol=1e-13 * scale)
    np.testing.assert_allclose(step.dE, ref, rtol=0, atol=1e-12 * np.abs(ref).max())


def test_fused_blocks_partition_the_centres_within_the_budget():
    """Blocks are consecutive, cover every centre once, hold at most max(budget, largest
    centre) pairs each, and each is as long as the budget allows (a greedy partition)."""
    rng = np.random.default_rng(3)
    for n, budget in [(1, 5), (7, 1), (40, 30), (40, 10**6), (25, 0)]:
        counts = rng.integers(0, 12, size=n)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        blocks, max_pairs, nb_max, pairs_max = soap_module.jit.fused_blocks(offsets, budget)
        cap = max(budget, int(counts.max()))
        assert max_pairs == counts.max()
        assert blocks[0, 0] == 0 and blocks[-1, 1] == n and np.all(blocks[1:, 0] == blocks[:-1, 1])
        sizes = offsets[blocks[:, 1]] - offsets[blocks[:, 0]]
        assert np.all(blocks[:, 1] > blocks[:, 0]) and np.all(sizes <= cap)
        # greedy: the next centre would not have fitted
        nxt = blocks[:-1, 1]
        assert np.all(offsets[nxt + 1] - offsets[blocks[:-1, 0]] > cap)
        assert nb_max == np.max(blocks[:, 1] - blocks[:, 0]) and pairs_max == sizes.max()


def test_forces_and_stress_in_one_pass_equal_pair_forces_and_pair_stress():
    """The fused path's one pass over the pairs equals the public pair_forces and
    pair_stress, for centre-sorted pairs and for pairs in any order."""
    from gpal.descriptors import pair_forces, pair_stress

    rng = np.random.default_rng(5)
    n, P = 9, 60
    center = np.sort(rng.integers(0, n, P))
    for order in (np.arange(P), rng.permutation(P)):
        c, nb = center[order].copy(), rng.integers(0, n, P)
        g, v = rng.normal(size=(P, 3)), rng.normal(size=(P, 3))
        F, S = soap_module.jit.pair_forces_stress_kernel(g, c, nb, v, n, 7.5, True)
        np.testing.assert_allclose(F, pair_forces(g, c, nb, n), rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(S, pair_stress(g, v, 7.5), rtol=1e-12, atol=1e-14)
        F0, S0 = soap_module.jit.pair_forces_stress_kernel(g, c, nb, v, n, 7.5, False)
        assert np.array_equal(F0, F) and np.all(S0 == 0)
    F, S = soap_module.jit.pair_forces_stress_kernel(np.zeros((0, 3)), center[:0], center[:0],
                                                     np.zeros((0, 3)), n, 7.5, True)
    assert F.shape == (n, 3) and not F.any() and not S.any()
