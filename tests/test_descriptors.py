"""gpal.descriptors.SOAP against dscribe 2.1.2 (values, analytical derivatives), finite
differences, the adjoint (force trick), invariances and input validation."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, fcc111, molecule
from ase.stress import full_3x3_to_voigt_6_stress
from dscribe.descriptors import SOAP as DscribeSOAP

import gpal
from gpal.descriptors import SOAP, pair_forces, pair_stress
from gpal.exceptions import InvalidPositionsError, MissingCellError, UnknownSpeciesError

POLY = {"function": "poly", "r0": 4.0, "c": 1, "m": 1}
SMALL = dict(r_cut=4.0, n_max=4, l_max=4, sigma=0.5)
# the default n_max, whose per-centre products have paths of their own
N8 = dict(r_cut=4.0, n_max=8, l_max=4, sigma=0.5)


# --- helpers ---
def dscribe_twin(soap: SOAP) -> DscribeSOAP:
    p = soap.get_params()
    return DscribeSOAP(
        species=p["species"],
        r_cut=p["r_cut"],
        n_max=p["n_max"],
        l_max=p["l_max"],
        sigma=p["sigma"],
        rbf="gto",
        periodic=p["periodic"],
        weighting=None if p["weighting"] is None else dict(p["weighting"]),
        compression={"mode": "off"},
        average="off",
    )


def assert_matches_dscribe(soap: SOAP, atoms: Atoms, rtol: float = 1e-8):
    ours = soap.create(atoms)
    ref = dscribe_twin(soap).create(atoms)
    assert ours.shape == ref.shape == (len(atoms), soap.get_number_of_features())
    scale = np.abs(ref).max()
    assert scale > 0
    assert np.abs(ours - ref).max() <= rtol * scale


def cu_rattled(repeat=2, seed=1, rattle=0.05):
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(repeat)
    atoms.rattle(rattle, seed=seed)
    return atoms


def cuni_alloy(seed=2):
    atoms = bulk("Cu", "fcc", a=3.58, cubic=True).repeat(2)
    rng = np.random.default_rng(seed)
    atoms.numbers = np.where(rng.random(len(atoms)) < 0.4, 28, 29)
    atoms.rattle(0.06, seed=seed)
    return atoms


def multi_molecule():
    """Ethanol + ammonia: 4 species (H, C, N, O)."""
    atoms = molecule("CH3CH2OH")
    nh3 = molecule("NH3")
    nh3.translate([2.2, 1.5, 0.6])
    return atoms + nh3


def tiny_cell():
    """Rock-salt primitive cell (2 atoms, 2 species): the cutoff spans many images."""
    atoms = bulk("NaCl", "rocksalt", a=5.2)
    atoms.rattle(0.03, seed=4)
    return atoms


def cu_slab():
    """fcc(111) slab: periodic in x, y only (mixed pbc)."""
    atoms = fcc111("Cu", (2, 2, 3), vacuum=5.0)
    atoms.rattle(0.05, seed=6)
    return atoms


def fd_dense(soap: SOAP, atoms: Atoms, atoms_idx, h=1e-5):
    """Central finite differences of create(): (N, len(atoms_idx), 3, F)."""
    out = np.zeros((len(atoms), len(atoms_idx), 3, soap.get_number_of_features()))
    for k, j in enumerate(atoms_idx):
        for c in range(3):
            ap = atoms.copy()
            ap.positions[j, c] += h
            am = atoms.copy()
            am.positions[j, c] -= h
            out[:, k, c] = (soap.create(ap) - soap.create(am)) / (2 * h)
    return out


# --- values vs dscribe ---
@pytest.mark.parametrize("weighting", [None, POLY], ids=["plain", "poly"])
@pytest.mark.parametrize(
    "system, species",
    [
        (cu_rattled, ["Cu"]),
        (cuni_alloy, ["Ni", "Cu"]),
        (tiny_cell, ["Na", "Cl"]),
        (cu_slab, ["Cu"]),
    ],
    ids=["cu", "cuni", "tiny", "slab"],
)
def test_create_matches_dscribe_periodic(system, species, weighting):
    soap = SOAP(species, periodic=True, weighting=weighting, **SMALL)
    assert_matches_dscribe(soap, system())


@pytest.mark.parametrize("weighting", [None, POLY], ids=["plain", "poly"])
def test_create_matches_dscribe_molecule(weighting):
    soap = SOAP(["H", "C", "N", "O"], weighting=weighting, **SMALL)
    assert_matches_dscribe(soap, multi_molecule())


def test_get_location_matches_dscribe_and_bounds_pair_derivatives():
    """Species-pair locations equal dscribe's; a neighbour's dX is zero off its columns."""
    soap = SOAP(["Ni", "Cu", "O"], periodic=True, **SMALL)
    twin = dscribe_twin(soap)
    for pair in [("Cu", "Cu"), ("Cu", "Ni"), ("Ni", "Cu"), ("O", "Ni"), ("O", "O"), (8, 29)]:
        assert soap.get_location(pair) == twin.get_location(pair)
    atoms = cuni_alloy()
    atoms.numbers[:3] = 8
    d = soap.derivatives(atoms)
    nbr = atoms.numbers[d.neighbor]
    for z in (8, 28, 29):
        off = np.ones(soap.get_number_of_features(), bool)
        off[soap.neighbor_columns(z)] = False
        n, L1 = soap.n_max, soap.l_max + 1
        assert (~off).sum() == L1 * (n * (n + 1) // 2 + 2 * n * n)  # (z, z) and two cross pairs
        assert np.any(d.dX[nbr == z]) and not np.any(d.dX[nbr == z][:, :, off])
    with pytest.raises(ValueError):
        soap.get_location(("Cu", "Au"))


def test_create_matches_dscribe_md_settings():
    """The benchmark/MD settings: n_max 8, l_max 6, sigma 0.5, r_cut 5, poly r0 5."""
    soap = SOAP(
        ["Cu"],
        r_cut=5.0,
        n_max=8,
        l_max=6,
        sigma=0.5,
        periodic=True,
        weighting={"function": "poly", "r0": 5.0, "c": 1, "m": 1},
    )
    assert soap.get_number_of_features() == 252
    assert_matches_dscribe(soap, cu_rattled(repeat=2))


@pytest.mark.parametrize(
    "weighting",
    [
        {"w0": 0.0},
        {"w0": 0.3},
        {"function": "poly", "r0": 3.5, "c": 2.0, "m": 3, "w0": 0.5},
        {"function": "pow", "r0": 2.0, "c": 1.0, "d": 1.0, "m": 3},
        {"function": "exp", "r0": 1.5, "c": 1.0, "d": 0.5},
    ],
    ids=["w0=0", "w0", "poly+w0", "pow", "exp"],
)
def test_create_matches_dscribe_weightings(weighting):
    soap = SOAP(["Ni", "Cu"], periodic=True, weighting=weighting, **SMALL)
    assert_matches_dscribe(soap, cuni_alloy())
    soap = SOAP(["H", "C", "N", "O"], weighting=weighting, **SMALL)
    assert_matches_dscribe(soap, multi_molecule())


def test_create_matches_dscribe_default_n_max_several_species():
    """n_max 8 with species pairs (the power spectrum's cross-species blocks)."""
    assert_matches_dscribe(SOAP(["Ni", "Cu"], periodic=True, weighting=POLY, **N8), cuni_alloy())
    assert_matches_dscribe(SOAP(["H", "C", "N", "O"], **N8), multi_molecule())


@pytest.mark.parametrize("n_max, l_max", [(1, 0), (2, 1), (3, 9), (2, 12)])
def test_create_matches_dscribe_basis_sizes(n_max, l_max):
    soap = SOAP(["H", "C", "N", "O"], r_cut=3.5, n_max=n_max, l_max=l_max, sigma=0.4)
    assert_matches_dscribe(soap, multi_molecule())


def test_poly_r0_beyond_padded_cutoff():
    """r0 > r_cut + padding: dscribe still cuts at r_cut + padding (so does gpal)."""
    weighting = {"function": "poly", "r0": 6.0, "c": 1, "m": 2}
    soap = SOAP(["Cu"], periodic=True, weighting=weighting, **SMALL)
    assert soap.cutoff_ < 6.0
    assert_matches_dscribe(soap, cu_rattled())


def test_r_cut_inferred_from_poly_weighting():
    soap = SOAP(["Cu"], r_cut=None, n_max=3, l_max=2, periodic=True, weighting=POLY)
    assert soap.r_cut_ == POLY["r0"]
    assert_matches_dscribe(soap, cu_rattled())


def test_inferred_r_cut_follows_the_weighting_through_set_params_and_clone():
    """An r_cut the weighting implies stays None in get_params, so set_params of the
    weighting, clone, and a GridSearchCV grid over descriptor__weighting move it with the
    weighting, as an attribute assignment does; a given r_cut stays as given."""
    from sklearn.base import clone

    w5, w4 = {**POLY, "r0": 5.0}, {**POLY, "r0": 4.5}
    fresh = SOAP(["Cu"], r_cut=None, n_max=3, l_max=2, periodic=True, weighting=w4)
    soap = SOAP(["Cu"], r_cut=None, n_max=3, l_max=2, periodic=True, weighting=w5)
    assert soap.get_params()["r_cut"] is None
    soap.set_params(l_max=3)
    soap.set_params(weighting=w4, l_max=2)
    assert soap.r_cut_ == fresh.r_cut_ == 4.5
    assert clone(SOAP(["Cu"], r_cut=None, n_max=3, l_max=2, periodic=True,
                      weighting=w5)).set_params(weighting=w4).r_cut_ == 4.5
    model = gpal.SparseGP(SOAP(["Cu"], r_cut=None, n_max=3, l_max=2, periodic=True, weighting=w5))
    assert clone(model).set_params(descriptor__weighting=w4).descriptor.r_cut_ == 4.5
    a = cu_rattled()
    np.testing.assert_array_equal(soap.create(a), fresh.create(a))
    given = SOAP(["Cu"], r_cut=5.0, n_max=3, l_max=2, periodic=True, weighting=w5)
    assert given.set_params(weighting=w4).r_cut_ == 5.0
    assert repr(fresh).startswith("SOAP(species=[29], r_cut=None,")


# --- derivatives ---
def test_derivatives_match_dscribe_analytical_molecule():
    soap = SOAP(["H", "C", "N", "O"], **SMALL)
    atoms = multi_molecule()
    d_ours, x_ours = soap.derivatives(atoms, dense=True)
    d_ref, x_ref = dscribe_twin(soap).derivatives(
        atoms, method="analytical", attach=True
    )
    assert d_ours.shape == d_ref.shape == (len(atoms), len(atoms), 3, x_ref.shape[1])
    np.testing.assert_allclose(x_ours, x_ref, rtol=0, atol=1e-8 * np.abs(x_ref).max())
    scale = np.abs(d_ref).max()
    assert scale > 1e-3
    # dscribe skips products whose coefficients are below 1e-8: agreement ~1e-8 relative
    assert np.abs(d_ours - d_ref).max() <= 1e-6 * scale


@pytest.mark.parametrize(
    "system, species, weighting",
    [
        (cu_rattled, ["Cu"], POLY),
        (cuni_alloy, ["Ni", "Cu"], {"function": "poly", "r0": 3.8, "c": 1, "m": 2}),
        (tiny_cell, ["Na", "Cl"], None),
        (
            cuni_alloy,
            ["Ni", "Cu"],
            {"function": "pow", "r0": 2.0, "c": 1.0, "d": 1.0, "m": 3},
        ),
        (cuni_alloy, ["Ni", "Cu"], {"function": "exp", "r0": 1.5, "c": 1.0, "d": 0.5}),
    ],
    ids=["cu-poly", "cuni-poly-m2", "tiny", "cuni-pow", "cuni-exp"],
)
def test_derivatives_vs_finite_differences_periodic(system, species, weighting):
    atoms = system()
    soap = SOAP(
        species,
        r_cut=3.5,
        n_max=3,
        l_max=3,
        sigma=0.5,
        periodic=True,
        weighting=weighting,
    )
    dense, X = soap.derivatives(atoms, dense=True)
    np.testing.assert_allclose(
        X, soap.create(atoms), rtol=0, atol=1e-12 * np.abs(X).max()
    )
    idx = [0, 1] if len(atoms) < 4 else [0, 3, len(atoms) - 1]
    fd = fd_dense(soap, atoms, idx)
    scale = np.abs(dense).max()
    assert scale > 1e-3
    assert np.abs(dense[:, idx] - fd).max() <= 1e-6 * scale


def test_dense_layout_equals_pair_assembly():
    atoms = cuni_alloy()
    soap = SOAP(["Ni", "Cu"], periodic=True, weighting=POLY, **SMALL)
    res = soap.derivatives(atoms)
    N, F = len(atoms), soap.get_number_of_features()
    P = len(res.center)
    assert res.dX.shape == (P, 3, F) and res.vector.shape == (P, 3)
    assert res.offsets.shape == (N + 1,) and res.offsets[-1] == P
    assert np.all(np.diff(res.center) >= 0)
    assert np.all(res.center == np.repeat(np.arange(N), np.diff(res.offsets)))
    assert np.isclose(res.volume, atoms.get_volume())
    # no zero-distance self pair
    assert np.linalg.norm(res.vector, axis=1).min() > 0.5
    manual = np.zeros((N, N, 3, F))
    np.add.at(manual, (res.center, res.neighbor), res.dX)
    np.add.at(manual, (res.center, res.center), -res.dX)
    dense, X = soap.derivatives(atoms, dense=True)
    np.testing.assert_array_equal(X, res.descriptor)
    np.testing.assert_allclose(dense, manual, rtol=0, atol=1e-13 * np.abs(manual).max())
    np.testing.assert_allclose(res.to_dense(), dense, rtol=0, atol=1e-15)


@pytest.mark.parametrize(
    "system, species, periodic, weighting",
    [
        (cuni_alloy, ["Ni", "Cu"], True, POLY),
        (multi_molecule, ["H", "C", "N", "O"], False, None),
        (
            tiny_cell,
            ["Na", "Cl"],
            True,
            {"function": "pow", "r0": 2.0, "c": 1.0, "d": 1.0, "m": 3},
        ),
    ],
    ids=["cuni-poly", "molecule", "tiny-pow"],
)
@pytest.mark.parametrize("basis", [SMALL, N8], ids=["n4", "n8"])
def test_backward_equals_explicit_contraction(system, species, periodic, weighting, basis):
    atoms = system()
    soap = SOAP(species, periodic=periodic, weighting=weighting, **basis)
    res = soap.derivatives(atoms)
    exp = soap.expand(atoms)
    # expand sums in the primitive Gaussian basis, derivatives in the radial basis: at
    # n_max 8 the transform between them cancels ~3 digits
    tol = 1e-14 if basis["n_max"] < 8 else 1e-11
    np.testing.assert_allclose(
        exp.descriptor, res.descriptor, rtol=0, atol=tol * np.abs(res.descriptor).max()
    )
    np.testing.assert_array_equal(exp.center, res.center)
    np.testing.assert_array_equal(exp.neighbor, res.neighbor)
    G = np.random.default_rng(0).normal(size=res.descriptor.shape)
    g = exp.backward(G)
    ref = np.einsum("pf,paf->pa", G[res.center], res.dX)
    assert g.shape == (len(res.center), 3)
    np.testing.assert_allclose(g, ref, rtol=0, atol=1e-12 * np.abs(ref).max())
    with pytest.raises(ValueError):
        exp.backward(G[:, :-1])


def _energy(soap, G, atoms):
    return float(np.sum(G * soap.create(atoms)))


@pytest.mark.parametrize("tiny", [False, True], ids=["alloy", "tiny"])
def test_pair_forces_and_stress_vs_finite_differences(tiny):
    if tiny:
        atoms, species = tiny_cell(), ["Na", "Cl"]
    else:
        atoms, species = cuni_alloy(), ["Ni", "Cu"]
        atoms = atoms[:16]  # keeps the FD loop short; cell stays periodic
    soap = SOAP(
        species,
        r_cut=3.5,
        n_max=3,
        l_max=3,
        sigma=0.5,
        periodic=True,
        weighting={"function": "poly", "r0": 3.5, "c": 1, "m": 2},
    )
    G = np.random.default_rng(1).normal(
        size=(len(atoms), soap.get_number_of_features())
    )
    exp = soap.expand(atoms)
    g = exp.backward(G)
    forces = pair_forces(g, exp.center, exp.neighbor, len(atoms))
    stress = pair_stress(g, exp.vector, exp.volume)
    h = 1e-5
    fd_forces = np.zeros_like(forces)
    for j in range(len(atoms)):
        for c in range(3):
            ap = atoms.copy()
            ap.positions[j, c] += h
            am = atoms.copy()
            am.positions[j, c] -= h
            fd_forces[j, c] = -(_energy(soap, G, ap) - _energy(soap, G, am)) / (2 * h)
    np.testing.assert_allclose(
        forces, fd_forces, rtol=0, atol=1e-6 * np.abs(fd_forces).max()
    )
    fd_stress = np.zeros((3, 3))
    cell0 = atoms.cell.array
    for a in range(3):
        for b in range(3):
            e = []
            for sign in (1, -1):
                eps = np.zeros((3, 3))
                eps[a, b] = eps[b, a] = sign * h / (1 if a == b else 2)
                at = atoms.copy()
                at.set_cell(cell0 @ (np.eye(3) + eps), scale_atoms=True)
                e.append(_energy(soap, G, at))
            fd_stress[a, b] = (e[0] - e[1]) / (2 * h) / atoms.get_volume()
    # off-diagonal: symmetric strain eps_ab = eps_ba = h/2
    # gives dE = (s_ab + s_ba) h / 2
    fd_voigt = full_3x3_to_voigt_6_stress(fd_stress)
    np.testing.assert_allclose(
        stress, fd_voigt, rtol=0, atol=1e-6 * np.abs(fd_voigt).max()
    )


def test_pair_forces_and_stress_multi_output():
    atoms = cu_rattled()
    soap = SOAP(["Cu"], periodic=True, weighting=POLY, **SMALL)
    exp = soap.expand(atoms)
    rng = np.random.default_rng(2)
    gs = [exp.backward(rng.normal(size=exp.descriptor.shape)) for _ in range(3)]
    stacked = np.stack(gs, axis=-1)  # (P, 3, 3 outputs)
    f = pair_forces(stacked, exp.center, exp.neighbor, len(atoms))
    s = pair_stress(stacked, exp.vector, exp.volume)
    assert f.shape == (len(atoms), 3, 3) and s.shape == (6, 3)
    for m, g in enumerate(gs):
        np.testing.assert_allclose(
            f[..., m], pair_forces(g, exp.center, exp.neighbor, len(atoms))
        )
        np.testing.assert_allclose(s[:, m], pair_stress(g, exp.vector, exp.volume))
    # momentum conservation: the forces of a translation-invariant energy sum to zero
    np.testing.assert_allclose(f.sum(axis=0), 0, atol=1e-10 * np.abs(f).max())
    with pytest.raises(MissingCellError):
        pair_stress(gs[0], exp.vector, float("nan"))


# --- invariances ---
@pytest.mark.parametrize("periodic", [False, True])
def test_translation_rotation_permutation_invariance(periodic):
    if periodic:
        atoms, species = cuni_alloy(), ["Ni", "Cu"]
    else:
        atoms, species = multi_molecule(), ["H", "C", "N", "O"]
    soap = SOAP(species, periodic=periodic, weighting=POLY, **SMALL)
    X = soap.create(atoms)
    tol = 1e-10 * np.abs(X).max()
    for shift in ([1.0, 1.0, 1.0], [-5.0, 5.0, -5.0], [1.0, 1.0, -10.0]):
        moved = atoms.copy()
        moved.translate(shift)
        np.testing.assert_allclose(soap.create(moved), X, rtol=0, atol=tol)
    for axis in ("x", "y", "z"):
        rotated = atoms.copy()
        rotated.rotate(45, axis, rotate_cell=True)
        np.testing.assert_allclose(soap.create(rotated), X, rtol=0, atol=tol)
    perm = np.random.default_rng(3).permutation(len(atoms))
    np.testing.assert_allclose(soap.create(atoms[perm]), X[perm], rtol=0, atol=tol)


def test_unwrapped_positions():
    """Atoms several cells outside the box (unwrapped MD positions) change nothing.

    (dscribe 2.1.2 only extends the cell ceil(cutoff / height) times around the given
    positions, so it loses neighbours in this case; gpal's neighbour list does not.)
    """
    atoms = cuni_alloy()
    soap = SOAP(["Ni", "Cu"], periodic=True, weighting=POLY, **SMALL)
    moved = atoms.copy()
    moved.positions[::5] += 3 * atoms.cell.array[0] - 2 * atoms.cell.array[2]
    X = soap.create(atoms)
    np.testing.assert_allclose(
        soap.create(moved), X, rtol=0, atol=1e-10 * np.abs(X).max()
    )
    wrapped = moved.copy()
    wrapped.wrap()
    assert_matches_dscribe(soap, wrapped)


def test_supercell_equals_primitive():
    prim = bulk("NaCl", "rocksalt", a=5.2)
    prim.rattle(0.05, seed=5)
    soap = SOAP(["Na", "Cl"], periodic=True, weighting=POLY, **SMALL)
    X = soap.create(prim)
    sup = prim.repeat((2, 3, 1))
    Xs = soap.create(sup)
    np.testing.assert_allclose(
        Xs, np.tile(X, (6, 1)), rtol=0, atol=1e-10 * np.abs(X).max()
    )


# --- API and errors ---
def test_species_symbols_or_numbers_and_params():
    a = SOAP(["Cu", "Ni"], periodic=True, weighting=POLY, **SMALL)
    b = SOAP([29, 28, 29], periodic=True, weighting=dict(POLY), **SMALL)
    np.testing.assert_array_equal(a.species_numbers_, [28, 29])
    assert a.get_params() == b.get_params()
    params = json.loads(json.dumps(a.get_params()))
    c = SOAP(**params)
    atoms = cuni_alloy()
    np.testing.assert_array_equal(c.create(atoms), a.create(atoms))
    assert a.get_number_of_features() == dscribe_twin(a).get_number_of_features()
    assert "SOAP(" in repr(a)


def test_a_parameter_set_as_an_attribute_rebuilds_the_descriptor():
    """``soap.n_max = 8`` (scikit-learn's habit of plain attribute assignment) gives the
    features of a descriptor built with it, as ``set_params`` does; a refused value is a
    ValueError that leaves the descriptor as it was. (The compiled kernels read the
    basis tables: stale ones crashed the process or gave features of the old setting.)"""
    atoms = bulk("Cu", cubic=True).repeat(2)
    atoms.rattle(0.05, seed=1)
    soap = SOAP(["Cu"], r_cut=4.0, n_max=4, l_max=3, sigma=0.5, periodic=True)
    for name, value in (("n_max", 6), ("l_max", 2), ("r_cut", 3.5), ("sigma", 0.4), ("n_max", 3)):
        setattr(soap, name, value)
        fresh = SOAP(**{**soap.get_params(), name: value})
        assert soap.get_params()[name] == value
        assert soap.get_number_of_features() == fresh.get_number_of_features()
        np.testing.assert_array_equal(soap.create(atoms), fresh.create(atoms))
    assert soap.cutoff_ == SOAP(["Cu"], r_cut=3.5, n_max=3, l_max=2, sigma=0.4).cutoff_
    before = soap.create(atoms)
    with pytest.raises(ValueError, match="n_max"):
        soap.n_max = 0
    with pytest.raises(ValueError, match="sigma"):
        soap.set_params(l_max=4, sigma=-1.0)
    assert soap.n_max == 3 and soap.l_max == 2
    np.testing.assert_array_equal(soap.create(atoms), before)
    np.testing.assert_allclose(soap.create(atoms), dscribe_twin(soap).create(atoms), rtol=1e-8, atol=1e-12)


def test_scikit_learn_estimator_checks_of_init():
    """No attribute but the parameters set by ``__init__`` (scikit-learn's
    ``check_no_attributes_set_in_init``), for the descriptor and the model."""
    from sklearn.utils.estimator_checks import check_no_attributes_set_in_init

    from gpal import SparseGP

    check_no_attributes_set_in_init("SOAP", SOAP(["Cu"], r_cut=4.0, n_max=4, l_max=3))
    check_no_attributes_set_in_init("SparseGP", SparseGP())


def test_isolated_and_empty_systems():
    soap = SOAP(["Cu"], **SMALL)
    atoms = Atoms("Cu", positions=[[0, 0, 0]])
    assert_matches_dscribe(soap, Atoms("Cu2", positions=[[0, 0, 0], [10, 0, 0]]))
    res = soap.derivatives(atoms)
    assert res.dX.shape == (0, 3, soap.get_number_of_features())
    exp = soap.expand(atoms)
    assert exp.backward(np.ones_like(exp.descriptor)).shape == (0, 3)
    assert soap.create(Atoms()).shape == (0, soap.get_number_of_features())


def test_unknown_species():
    soap = SOAP(["H", "C", "O"], **SMALL)
    with pytest.raises(UnknownSpeciesError, match="N"):
        soap.create(multi_molecule())
    with pytest.raises(UnknownSpeciesError):
        soap.expand(multi_molecule())


def test_missing_cell_and_invalid_positions():
    soap = SOAP(["H", "C", "N", "O"], periodic=True, **SMALL)
    isolated = SOAP(["H", "C", "N", "O"], periodic=False, **SMALL).create(multi_molecule())
    np.testing.assert_array_equal(soap.create(multi_molecule()), isolated)  # no pbc: isolated
    pbc_no_cell = multi_molecule()
    pbc_no_cell.pbc = True
    with pytest.raises(MissingCellError):
        soap.create(pbc_no_cell)
    flat = cu_rattled()
    flat.cell[2] = [0.0, 0.0, 0.0]
    with pytest.raises(MissingCellError):
        SOAP(["Cu"], periodic=True, **SMALL).derivatives(flat)
    bad = multi_molecule()
    bad.positions[2, 1] = np.nan
    with pytest.raises(InvalidPositionsError):
        SOAP(["H", "C", "N", "O"], **SMALL).create(bad)
    bad = cu_rattled()
    bad.cell[0, 0] = np.inf
    with pytest.raises(InvalidPositionsError):
        SOAP(["Cu"], periodic=True, **SMALL).create(bad)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_max=0), "n_max"),
        (dict(l_max=-1), "l_max"),
        (dict(l_max=21), "l_max"),
        (dict(r_cut=1.0), "r_cut"),
        (dict(r_cut=0.5), "r_cut"),
        (dict(sigma=0.0), "sigma"),
        (dict(sigma=-1.0), "sigma"),
        (dict(weighting={"function": "gauss", "r0": 3.0}), "'poly', 'pow', 'exp'"),
        (dict(weighting={"function": "poly", "c": 1, "m": 1}), "r0"),
        (dict(weighting={"function": "poly", "r0": -1.0, "c": 1, "m": 1}), "r0"),
        (dict(weighting={"r0": 3.0}), "function"),
        (dict(weighting={"w0": -1.0}), "w0"),
        (dict(weighting={"function": "poly", "r_0": 3.0, "c": 1, "m": 1}), "r_0"),
        (dict(r_cut=None), "r_cut"),
        (dict(species=["Xx"]), "Xx"),
        (dict(species=[]), "species"),
        (dict(n_max=2.5), "n_max"),
        # c / (d + (r/r0)^m) at r = 0: the centre's weight would be infinite
        (dict(weighting={"function": "pow", "r0": 3.0, "c": 1, "d": 0, "m": 4}), "d > 0 or w0"),
    ],
)
def test_invalid_parameters(kwargs, match):
    params = dict(species=["Cu"], **SMALL)
    params.update(kwargs)
    with pytest.raises(ValueError, match=match):
        SOAP(**params)


# --- dscribe interop ---
@pytest.mark.parametrize("weighting", [None, {"function": "poly", "r0": 3.8, "c": 1, "m": 1}])
def test_from_dscribe_and_to_dscribe_give_the_same_features(weighting):
    rng = np.random.default_rng(11)
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 1, 1))
    atoms.numbers[[1, 5]] = 79
    atoms.positions += rng.normal(0, 0.05, atoms.positions.shape)
    theirs = DscribeSOAP(species=["Cu", "Au"], r_cut=3.8, n_max=4, l_max=3, sigma=0.7, rbf="gto",
                         periodic=True, weighting=weighting, compression={"mode": "off"}, average="off")
    ours = SOAP.from_dscribe(theirs)
    np.testing.assert_allclose(ours.create(atoms), theirs.create(atoms), rtol=1e-10, atol=1e-14)
    back = ours.to_dscribe()
    np.testing.assert_allclose(back.create(atoms), theirs.create(atoms), rtol=1e-12, atol=1e-15)
    assert SOAP.from_dscribe(back).get_params() == ours.get_params()
    mol = multi_molecule()  # no cell: dscribe's periodic=True refuses it, periodic=False is the same
    gp = SOAP(["H", "C", "N", "O"], periodic=True, weighting=weighting, **SMALL)
    np.testing.assert_allclose(gp.to_dscribe(periodic=False).create(mol), gp.create(mol), rtol=1e-8, atol=1e-12)
    with pytest.raises(ValueError, match="average="):
        SOAP.from_dscribe(DscribeSOAP(species=["Cu"], r_cut=3.8, n_max=4, l_max=3, average="inner",
                                      periodic=True))


def test_the_keyword_arguments_of_a_dscribe_soap_build_gpals():
    kw = dict(species=["Cu", "Au"], r_cut=3.8, n_max=4, l_max=3, sigma=0.7, rbf="gto", periodic=True,
              weighting={"function": "poly", "r0": 3.8, "c": 1, "m": 1}, average="off",
              compression={"mode": "off", "species_weighting": None}, sparse=False, dtype="float64")
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 1, 1))
    atoms.numbers[[1, 5]] = 79
    atoms.positions += np.random.default_rng(2).normal(0, 0.05, atoms.positions.shape)
    ours = SOAP(**kw)
    np.testing.assert_allclose(ours.create(atoms), DscribeSOAP(**kw).create(atoms), rtol=1e-10, atol=1e-14)
    assert SOAP(**ours.get_params()).get_params() == ours.get_params()  # (dscribe-only names left out)
    for bad in (dict(rbf="polynomial"), dict(average="inner"), dict(compression={"mode": "mu2"}),
                dict(compression={"mode": "off", "species_weighting": {"Cu": 2.0, "Au": 1.0}}),
                dict(sparse=True), dict(dtype="float32")):
        name = next(iter(bad))
        with pytest.raises(ValueError, match=f"gpal's SOAP computes dscribe's .*got {name}="):
            SOAP(**{**kw, **bad})


def test_a_cutoff_in_another_unit_is_one_clear_error():
    """r_cut = 50 (Bohr, or a typo) makes the GTO overlap singular to working precision:
    one ValueError naming the unit, not a LinAlgWarning per angular channel."""
    import warnings

    from ase.build import bulk

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=r"singular to working precision.*is r_cut in Å"):
            SOAP(["Cu"], r_cut=50.0, n_max=8, l_max=6).create(bulk("Cu", cubic=True))


def test_radial_basis_does_not_depend_on_blas_threads():
    """The Löwdin orthonormalisation of the badly conditioned GTO overlap ran on the
    caller's BLAS threads: 4.5e-12 apart between one and two threads, so a model fitted
    with two and loaded with one predicted differently."""
    from threadpoolctl import threadpool_info, threadpool_limits

    if max(d["num_threads"] for d in threadpool_info() if d["user_api"] == "blas") < 2:
        pytest.skip("BLAS runs one thread")
    bases = []
    for n in (1, 2):
        with threadpool_limits(n, user_api="blas"):
            soap = SOAP(["Cu"], r_cut=5.0, n_max=8, l_max=6, sigma=0.5, periodic=True)
            soap.create(cu_rattled())
            bases.append(soap.betas_)
    np.testing.assert_array_equal(bases[0], bases[1])


@pytest.mark.parametrize("module", ["gpal.descriptors.soap", "gpal.compare", "gpal.model.potential", "gpal._threads",
                                    "gpal.learning.targets", "gpal.dft", "gpal.kernels", "gpal.sparse_gp"])
def test_docstring_examples_run(module):
    """The ``>>>`` examples, in a namespace of their own (an example that uses a name it
    did not import passed on the module's globals and failed for a user who pasted it)."""
    import doctest
    import importlib

    mod = importlib.import_module(module)
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in finder.find(mod, module, globs={}):
        runner.run(test)
    assert runner.failures == 0


def test_vectorised_exp_is_within_one_ulp_of_numpy():
    """The radial basis' exponentials (gpal's own loop, 2^n from the bits of a rounded
    float): within 1 ulp of numpy's exp on [-700, 0], at the ends of the reduced range
    and of the exponent field, and clamped below -700."""
    from gpal.descriptors._soap_jit import _exp_nonpositive

    ln2 = np.log(2.0)
    x = np.concatenate([
        -np.random.default_rng(3).random(20000) * 700.0,
        [0.0, -0.0, -1e-300, -0.5 * ln2, -0.5 * ln2 - 1e-12, -ln2, -1.5 * ln2, -700.0, -699.999],
        -np.arange(1, 1010) * ln2,  # next to every power of two the range reaches
    ])
    out, bits = np.empty_like(x), np.empty(len(x), dtype=np.int64)
    _exp_nonpositive(x, out, bits)
    ref = np.exp(x)
    assert np.max(np.abs(out - ref) / ref) <= 1.0001 * np.finfo(float).eps
    low = np.array([-700.0001, -800.0, -1e6])
    out, bits = np.empty(3), np.empty(3, dtype=np.int64)
    _exp_nonpositive(low, out, bits)
    np.testing.assert_array_equal(out, np.exp(-700.0))


def test_soap_takes_a_dscribe_keyword_call_without_r_cut():
    """dscribe infers r_cut from the weighting when it is not given; gpal.SOAP made it a
    required argument, so the same keyword call was a TypeError."""
    w = {"function": "pow", "r0": 3.0, "c": 1.0, "d": 1.0, "m": 4, "threshold": 1e-2}
    a = SOAP(species=["Cu"], n_max=3, l_max=2, weighting=w, periodic=True)
    b = SOAP(species=["Cu"], r_cut=a.r_cut_, n_max=3, l_max=2, weighting=w, periodic=True)
    atoms = bulk("Cu", "fcc", a=3.6)
    assert np.array_equal(a.create(atoms), b.create(atoms))
    with pytest.raises(ValueError, match="n_max is required"):
        SOAP(species=["Cu"], r_cut=4.0, l_max=2)
