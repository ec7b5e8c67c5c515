"""gpal.descriptors.neighbors.neighbor_list against ase.neighborlist.neighbor_list."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, fcc111, molecule
from ase.neighborlist import neighbor_list as ase_neighbor_list

from gpal.exceptions import InvalidPositionsError, MissingCellError
from gpal.descriptors.neighbors import neighbor_list


def _pair_dict(i, j, S, D):
    return {
        (int(a), int(b), tuple(int(x) for x in s)): d for a, b, s, d in zip(i, j, S, D)
    }


def _check_against_ase(atoms: Atoms, cutoff: float):
    i, j, D, S = neighbor_list(
        atoms.positions, atoms.cell.array, atoms.pbc, cutoff, return_shifts=True
    )
    assert i.dtype == np.int64 and j.dtype == np.int64 and D.dtype == np.float64
    assert D.shape == (len(i), 3)
    assert np.all(np.diff(i) >= 0), "pairs must be sorted by centre"
    # no zero-distance self pair, D = r_j + S cell - r_i, |D| <= cutoff
    assert not np.any((i == j) & np.all(S == 0, axis=1))
    np.testing.assert_allclose(
        D, atoms.positions[j] + S @ atoms.cell.array - atoms.positions[i], atol=1e-12
    )
    assert np.all(np.linalg.norm(D, axis=1) <= cutoff)

    ia, ja, Da, Sa = ase_neighbor_list("ijDS", atoms, cutoff)
    ours = _pair_dict(i, j, S, D)
    ref = _pair_dict(ia, ja, Sa, Da)
    # ASE excludes |D| == cutoff, gpal includes it (as dscribe does):
    # only such pairs may differ
    for key in set(ours) ^ set(ref):
        d = ours.get(key, ref.get(key))
        assert abs(np.linalg.norm(d) - cutoff) < 1e-9, f"pair {key} differs from ASE"
    common = sorted(set(ours) & set(ref))
    assert len(common) > 0
    np.testing.assert_allclose(
        np.array([ours[k] for k in common]),
        np.array([ref[k] for k in common]),
        atol=1e-10,
    )
    return len(set(ours) ^ set(ref))


def test_fcc_cu_rattled():
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(3)
    atoms.rattle(0.05, seed=1)
    _check_against_ase(atoms, 5.0)


def test_unwrapped_positions():
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
    atoms.rattle(0.05, seed=3)
    atoms.positions[::3] += atoms.cell.array.sum(axis=0) * 1.7  # far outside the cell
    _check_against_ase(atoms, 4.0)


def test_triclinic_cell():
    atoms = Atoms(
        "CuAuCuNi",
        scaled_positions=[
            [0.1, 0.2, 0.3],
            [0.6, 0.5, 0.4],
            [0.9, 0.1, 0.7],
            [0.4, 0.8, 0.95],
        ],
        cell=[[4.0, 0.0, 0.0], [1.5, 3.8, 0.0], [0.7, -1.2, 4.5]],
        pbc=True,
    )
    _check_against_ase(atoms, 6.3)


def test_tiny_cell_many_images():
    # 2-atom cell, cutoff 3x the longest cell length: many images, self images included
    length = 2.4
    atoms = Atoms(
        "Cu2", positions=[[0, 0, 0], [1.0, 0.9, 1.1]], cell=[2.2, 2.0, length], pbc=True
    )
    cutoff = 3 * length
    n_boundary = _check_against_ase(atoms, cutoff)
    assert n_boundary > 0  # pairs at exactly |D| = cutoff: included here, not by ASE
    i, j, D = neighbor_list(atoms.positions, atoms.cell.array, True, cutoff)
    assert np.sum((i == 0) & (j == 0)) > 100  # many periodic self images


def test_slab_mixed_pbc():
    atoms = fcc111("Cu", (3, 3, 3), vacuum=6.0)
    atoms.rattle(0.05, seed=2)
    assert list(atoms.pbc) == [True, True, False]
    _check_against_ase(atoms, 5.0)
    # non-periodic direction with a zero cell vector
    atoms2 = atoms.copy()
    cell = atoms2.cell.array.copy()
    cell[2] = 0.0
    atoms2.set_cell(cell)
    _check_against_ase(atoms2, 5.0)


def test_molecule_without_cell():
    atoms = molecule("CH3CH2OH")
    assert atoms.cell.volume == 0
    _check_against_ase(atoms, 3.0)
    i, j, D = neighbor_list(atoms.positions, None, False, 3.0)
    assert len(i) > 0


def test_sparse_gas_and_single_atom():
    rng = np.random.default_rng(0)
    atoms = Atoms("Ar300", positions=rng.uniform(0, 60, (300, 3)))
    _check_against_ase(atoms, 6.0)
    i, j, D = neighbor_list(np.zeros((1, 3)), None, False, 5.0)
    assert len(i) == 0 and D.shape == (0, 3)
    i, j, D = neighbor_list(np.zeros((0, 3)), None, False, 5.0)
    assert len(i) == 0


def test_errors():
    pos = np.zeros((2, 3))
    pos[1] = [np.nan, 0, 0]
    with pytest.raises(InvalidPositionsError):
        neighbor_list(pos, np.eye(3), True, 2.0)
    with pytest.raises(InvalidPositionsError):
        neighbor_list(np.zeros((2, 3)), np.diag([np.inf, 1, 1]), True, 2.0)
    with pytest.raises(MissingCellError):
        neighbor_list(np.zeros((2, 3)), np.zeros((3, 3)), True, 2.0)
    with pytest.raises(MissingCellError):
        neighbor_list(np.zeros((2, 3)), [[1, 0, 0], [2, 0, 0], [0, 0, 1]], True, 2.0)
    with pytest.raises(ValueError):
        neighbor_list(np.zeros((2, 3)), None, False, 0.0)
    with pytest.raises(ValueError):
        neighbor_list(np.zeros((2, 2)), None, False, 1.0)


def test_a_cutoff_far_beyond_the_cell_is_refused_at_once():
    # r_cut 1e6 Å on a 4-atom fcc cell would scan ~(2e6 / 3.6)³ periodic images
    import time

    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    t = time.perf_counter()
    with pytest.raises(ValueError, match="is the cutoff"):
        neighbor_list(atoms.positions, atoms.cell.array, True, 1e6)
    assert time.perf_counter() - t < 5
    # the largest cutoff of ordinary use still runs (the images of a tiny cell)
    i, j, D = neighbor_list(atoms.positions, atoms.cell.array, True, 12.0)
    assert len(i) > 4 * 500


def test_the_work_guard_leaves_a_million_atoms_of_a_metal_alone():
    # a 10⁶-atom fcc cell (side 227 Å) at a 7 Å cutoff: 32 bins per direction, reach 1
    from gpal.descriptors.neighbors import MAX_CANDIDATE_PAIRS, _check_work

    n_bins, reach, pbc = np.array([32, 32, 32]), np.array([1, 1, 1]), np.ones(3, bool)
    _check_work(10**6, n_bins, reach, pbc, 7.0)  # ~8e8 candidate pairs: no error
    assert 27 * 10**6 * (10**6 / 32**3) < MAX_CANDIDATE_PAIRS / 10
    # an isolated molecule searches its own atoms only
    _check_work(10**4, np.ones(3, int), np.ones(3, int), np.zeros(3, bool), 1e6)


@pytest.mark.parametrize("pbc", [(True, True, True), (True, True, False)])
def test_a_skewed_setting_of_a_cell_gives_the_pairs_of_its_reduced_cell(pbc):
    """The same lattice written with b' = b - 9a, c' = c + 4a + 11b was refused ('would
    search ~5.8e+05 atom pairs ... is the cutoff in Å?'): its images were counted along
    the skewed vectors. The pairs, with shifts in the cell's own vectors, are ASE's."""
    from ase.geometry import cellpar_to_cell

    from gpal.descriptors import SOAP

    rng = np.random.default_rng(1)
    a = Atoms("Cu3Au", cell=cellpar_to_cell([4.6, 5.1, 5.4, 55, 60, 50]), pbc=pbc,
              scaled_positions=rng.random((4, 3)))
    b = a.copy()
    op = np.array([[1, 0, 0], [-9, 1, 0], [4, 11, 1]]) if all(pbc) else np.array([[1, 0, 0], [-40, 1, 0], [0, 0, 1]])
    b.set_cell(op @ a.cell.array, scale_atoms=False)
    i, j, D, S = neighbor_list(b.positions, b.cell.array, b.pbc, 5.0, return_shifts=True)
    ai, aj, aS = ase_neighbor_list("ijS", b, 5.0)
    assert sorted(zip(i, j, map(tuple, S))) == sorted(zip(ai, aj, map(tuple, aS)))
    assert np.allclose(D, b.positions[j] - b.positions[i] + S @ b.cell.array, atol=1e-12)
    soap = SOAP(species=["Cu", "Au"], r_cut=5.0, n_max=4, l_max=3, sigma=0.5, periodic=True)
    assert np.allclose(soap.create(a), soap.create(b), rtol=0, atol=1e-12)
