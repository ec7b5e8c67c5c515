"""The per-call shortcuts of the MD step keep every input check and ASE's caching answer."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.calculator import compare_atoms
from ase.md.verlet import VelocityVerlet

from gpal import SOAP, GPCalculator, SparseGP, _threads
from gpal._validation import check_atoms
from gpal.exceptions import (
    InvalidPositionsError,
    MissingCellError,
    OverlappingAtomsError,
    UnknownSpeciesError,
)

from conftest import POLY, SMALL_SOAP, cu_frames


@pytest.fixture(scope="module")
def model():
    desc = SOAP(species=["Cu"], periodic=True, weighting=POLY, **SMALL_SOAP)
    return SparseGP(desc, n_sparse=20, hyperparameters="fixed").fit(cu_frames(3, seed=5))


def cu(seed=0):
    a = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 2, 2))
    a.positions += np.random.default_rng(seed).normal(0, 0.05, a.positions.shape)
    return a


def test_check_state_gives_ases_answer(model):
    calc = GPCalculator(model)
    a = cu()
    a.set_momenta(np.ones((len(a), 3)))
    calc.get_potential_energy(a)
    variants = {"same": a.copy()}
    v = variants["tiny"] = a.copy()
    v.positions[0, 0] += 1e-16  # within ASE's 1e-15 tolerance: no change
    v = variants["moved"] = a.copy()
    v.positions[1, 2] += 1e-6
    v = variants["nan"] = a.copy()
    v.positions[1, 2] = np.nan
    v = variants["cell"] = a.copy()
    v.set_cell(a.cell * 1.001)
    v = variants["pbc"] = a.copy()
    v.pbc = [True, True, False]
    v = variants["numbers"] = a.copy()
    v.numbers[0] = 47
    v = variants["charges"] = a.copy()
    v.set_initial_charges(np.ones(len(a)))
    v = variants["momenta only"] = a.copy()
    v.set_momenta(np.zeros((len(a), 3)))
    for tol in (1e-15, 1e-7, 1e-3):
        for name, other in variants.items():
            assert sorted(calc.check_state(other, tol)) == sorted(
                compare_atoms(calc.atoms, other, tol=tol)
            ), (name, tol)
    assert calc.check_state(variants["same"]) == []
    assert calc.check_state(variants["tiny"]) == []
    assert calc.check_state(variants["momenta only"]) == []
    # nothing ASE checks changed: answered without ASE's tolerance comparison (an MD step
    # changes the momenta between its force calls)
    from ase.calculators.calculator import Calculator

    def not_asked(*args, **kwargs):
        raise AssertionError("ASE's comparison was asked")

    monkey = pytest.MonkeyPatch()
    monkey.setattr(Calculator, "check_state", not_asked)
    try:
        assert calc.check_state(variants["momenta only"]) == []
        assert calc.check_state(variants["same"]) == []
        assert calc.check_state(variants["moved"]) == ["positions"]  # beyond tol: moved
        for name in ("tiny", "nan", "cell", "charges"):  # within tol, or not an MD step: ASE
            with pytest.raises(AssertionError, match="was asked"):
                calc.check_state(variants[name])
        calc.ignored_changes = {"positions"}
        with pytest.raises(AssertionError, match="was asked"):
            calc.check_state(variants["moved"])
    finally:
        monkey.undo()
    calc.ignored_changes = {"initial_charges"}
    assert calc.check_state(variants["charges"]) == []


def test_bad_input_still_raises_through_the_calculator(model):
    calc = GPCalculator(model)
    a = cu()
    a.calc = calc
    a.get_forces()
    bad = a.copy()
    bad.positions[3, 1] = np.nan
    bad.calc = calc
    with pytest.raises(InvalidPositionsError, match=r"indices \[3\]"):
        bad.get_forces()
    bad = a.copy()
    bad.numbers[2] = 79
    bad.calc = calc
    with pytest.raises(UnknownSpeciesError, match="Au"):
        bad.get_forces()
    bad = a.copy()
    bad.positions[1] = bad.positions[0] + [0.06, 0.08, 0.0]
    bad.calc = calc
    with pytest.raises(OverlappingAtomsError, match=r"0\.100 Å apart"):
        bad.get_forces()
    bad = a.copy()
    bad.cell = None  # periodic boundaries without a cell
    bad.calc = calc
    with pytest.raises(MissingCellError):
        bad.get_forces()
    # and after the errors the calculator still answers correctly at good positions
    b = cu(seed=1)
    b.calc = calc
    assert np.allclose(b.get_forces(), model.predict(b)["forces"], rtol=0, atol=1e-12)


def test_check_atoms_edge_cases():
    a = cu()
    check_atoms(a, species=[29], periodic=True)
    huge = a.copy()
    huge.positions[:] = 1e308  # finite, but their sum overflows
    check_atoms(huge, species=[29])
    with pytest.raises(InvalidPositionsError, match="non-finite cell"):
        b = a.copy()
        b.cell.array[0, 0] = np.inf
        check_atoms(b)
    with pytest.raises(UnknownSpeciesError) as err:
        b = a.copy()
        b.numbers[[0, 5]] = [1, 118]
        check_atoms(b, species=np.array([29, 47]))
    assert err.value.unknown == [1, 118]
    with pytest.raises(UnknownSpeciesError):
        b = a.copy()
        b.numbers[0] = 0  # a ghost atom (X) is not Cu either
        check_atoms(b, species=[29])
    flat = a.copy()
    flat.cell[2] = flat.cell[0]  # a degenerate cell
    with pytest.raises(MissingCellError):
        check_atoms(flat, periodic=True)


def test_nested_policy_calls_and_md_results_unchanged(model):
    a = cu(seed=2)
    ref = model.predict(a.copy(), return_std=True)
    with _threads._policy_disabled():
        free = model.predict(a.copy(), return_std=True)
    for key in ("energies", "forces", "stress"):
        assert np.array_equal(ref[key], free[key]), key
    # the stds' sums in the row pass (one chunk under the policy) and in numpy (policy
    # off) differ in order; k(x,x) - |w|² cancels ~8 digits, so ~1e-10 relative here
    np.testing.assert_allclose(ref["energies_std"], free["energies_std"], rtol=1e-9)
    a.calc = GPCalculator(model)
    VelocityVerlet(a, 1.0).run(3)
    assert a.calc.n_evaluations == 4  # one model evaluation per step (and the first)
    assert np.allclose(a.get_forces(), model.predict(a)["forces"], rtol=0, atol=1e-12)
