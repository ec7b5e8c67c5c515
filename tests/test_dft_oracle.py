"""The PySCF DFT oracle (gpal.dft.PySCF): physics against PySCF itself and finite
differences, SCF failure handling, and the oracle machinery (spec, executor)."""

from __future__ import annotations

import concurrent.futures as cf
import logging

import numpy as np
import pytest
from ase import Atoms

pytest.importorskip("pyscf")

from gpal import Oracle  # noqa: E402
from gpal.dft import PySCF, SCFConvergenceError  # noqa: E402
from gpal.dft import pyscf_oracle  # noqa: E402
from gpal.learning.oracle import OracleSpec  # noqa: E402

FAST = {"basis": "sto-3g", "grid_level": 3, "threads": 1}  # threads: the machine may be busy


def water():
    return Atoms("OH2", positions=[[0.0, 0.0, 0.12], [0.0, 0.76, -0.47], [0.0, -0.78, -0.45]])


@pytest.fixture(scope="module")
def reference():
    a = water()
    a.calc = PySCF(xc="PBE", **FAST)
    return a.get_potential_energy(), a.get_forces()


def test_energy_matches_pyscf_and_forces_are_minus_the_gradient(reference):
    from pyscf import dft, gto
    from pyscf.data.nist import HARTREE2EV
    from threadpoolctl import threadpool_limits

    a = water()
    e, f = reference
    mol = gto.M(atom=[(s, p) for s, p in zip(a.get_chemical_symbols(), a.positions)], basis="sto-3g",
                unit="Angstrom", verbose=0)
    mf = dft.RKS(mol, xc="PBE").density_fit()
    mf.grids.level = 3
    with threadpool_limits(1):
        assert e == pytest.approx(mf.kernel() * HARTREE2EV, abs=1e-6)
    assert np.abs(f.sum(axis=0)).max() < 1e-2  # translation invariance, up to the grid
    h = 1e-3
    for i, c in ((0, 2), (1, 1)):
        es = []
        for sgn in (1, -1):
            b = a.copy()
            b.positions[i, c] += sgn * h
            b.calc = PySCF(xc="PBE", reuse_guess=False, **FAST)
            es.append(b.get_potential_energy())
        # the grid moves with the atoms (no grid response in the gradient): ~1e-3 eV/Å
        assert f[i, c] == pytest.approx(-(es[0] - es[1]) / (2 * h), abs=5e-3)


def test_unconverged_scf_is_retried_with_safer_settings(caplog, reference):
    a = water()
    a.calc = PySCF(xc="PBE", max_cycle=2, **FAST)
    with caplog.at_level(logging.WARNING, logger="gpal.dft"):
        e = a.get_potential_energy()
    assert a.calc.n_scf_retries == 1 and "SCF not converged" in caplog.text
    assert e == pytest.approx(reference[0], abs=1e-5)


def test_scf_that_never_converges_is_one_logged_failure_not_retried(monkeypatch):
    import gpal.dft

    monkeypatch.setitem(gpal.dft.SAFER_SCF, "max_cycle", 3)
    oracle = Oracle(pyscf_oracle("PBE", "sto-3g", conv_tol=1e-30, max_cycle=2, grid_level=3), retries=1)
    labelled, failures = oracle.label([water()])
    assert labelled == [None] and len(failures) == 1
    assert "SCFConvergenceError" in failures[0].reason and failures[0].attempts == 1
    assert oracle.n_calls == 1 and oracle.n_failures == 1
    assert issubclass(SCFConvergenceError, gpal.OracleError)


def test_open_shell_charge_and_bad_settings():
    oh = Atoms("OH", positions=[[0, 0, 0], [0, 0, 0.98]])
    oh.calc = PySCF(spin=1, **FAST)  # UKS
    e_radical = oh.get_potential_energy()
    anion = oh.copy()
    anion.calc = PySCF(charge=-1, **FAST)
    assert np.isfinite(e_radical) and anion.get_potential_energy() != pytest.approx(e_radical, abs=1e-3)
    bad = water()
    bad.calc = PySCF(spin=1, **FAST)  # 10 electrons cannot have one unpaired
    with pytest.raises(ValueError, match="10 electrons, which spin = 1"):
        bad.get_potential_energy()
    with pytest.raises(TypeError, match="unknown setting"):
        PySCF(functional="PBE")
    with pytest.raises(TypeError, match="unknown setting"):
        pyscf_oracle(functional="PBE")
    periodic = water()
    periodic.pbc = True
    periodic.cell = [8, 8, 8]
    periodic.calc = PySCF(**FAST)
    with pytest.raises(ValueError, match="molecules only"):
        periodic.get_potential_energy()


def test_spec_runs_in_a_process_pool(reference):
    spec = pyscf_oracle("PBE", **FAST)
    assert spec == OracleSpec("gpal.dft:PySCF", spec.kwargs) and spec.factory == "gpal.dft:PySCF"
    with cf.ProcessPoolExecutor(max_workers=1) as ex:
        remote, failures = Oracle(spec, executor=ex).label([water()])
    assert not failures
    assert remote[0].get_potential_energy() == pytest.approx(reference[0], abs=1e-6)
    np.testing.assert_allclose(remote[0].get_forces(), reference[1], atol=1e-5)


def test_a_charge_and_spin_that_disagree_are_refused_before_any_call(tmp_path):
    """A charged water with spin 0 failed on every label, each tried twice, with PySCF's
    two-line message split across warnings."""
    import gpal

    calc = PySCF(charge=1, **FAST)
    with pytest.raises(ValueError, match="has 9 electrons, which spin = 0 .*spin = 1"):
        calc.check_structure(water())
    PySCF(charge=1, spin=1, **FAST).check_structure(water())  # the doublet cation is fine
    with pytest.raises(ValueError, match="has 9 electrons"):
        gpal.ActiveLearner(water(), pyscf_oracle(charge=1, **FAST), run_dir=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
    bad = water()
    bad.calc = calc
    with pytest.raises(ValueError, match="has 9 electrons") as err:  # one line, and not worth a retry
        bad.get_potential_energy()
    assert "\n" not in str(err.value) and err.value.retryable is False


def test_an_unknown_functional_or_basis_is_refused_before_any_call(tmp_path):
    """A misspelt xc or basis failed on every label, each tried twice, after the run
    folder was made."""
    import gpal

    for kwargs, match in ((dict(xc="PBEE"), "xc = 'PBEE' does not run in PySCF: KeyError"),
                          (dict(xc="wB97X-D"), "xc = 'wB97X-D' does not run in PySCF: NotImplementedError"),
                          (dict(basis="sto-3gg"), "basis = 'sto-3gg' has no functions for H \\(in H2O\\)"),
                          (dict(basis="sto-3g", auxbasis="nope"), "auxbasis = 'nope' has no functions")):
        with pytest.raises(ValueError, match=match):
            PySCF(**{**FAST, **kwargs}).check_structure(water())
    with pytest.raises(ValueError, match="does not run in PySCF"):
        gpal.ActiveLearner(water(), pyscf_oracle(xc="PBEE", basis="sto-3g"), run_dir=tmp_path / "run",
                           progress=False)
    assert not (tmp_path / "run").exists()
    PySCF(**{**FAST, "basis": "6-31G*", "xc": "B3LYP"}).check_structure(water())
    PySCF(**{**FAST, "basis": "unc-def2-svp"}).check_structure(water())  # (a name basis.load refuses)
    from gpal import dft

    before = dft._xc_failure.cache_info().misses
    for _ in range(3):  # (each start structure, the CLI's check and the learner's: one SCF)
        PySCF(**{**FAST, "xc": "PBE0"}).check_structure(water())
    assert dft._xc_failure.cache_info().misses == before + 1
    PySCF(**{**FAST, "basis": {"O": "sto-3g", "H": "sto-3g"}, "density_fit": False}).check_structure(water())
    # used directly (ASE) or by gpal.Oracle, the calculator asks too: libxc's bare
    # KeyError was raised on the first energy, and retried by gpal.Oracle as a failed SCF
    a = water()
    a.calc = PySCF(**{**FAST, "xc": "PBEE"})
    with pytest.raises(ValueError, match="xc = 'PBEE' does not run in PySCF"):
        a.get_potential_energy()
    oracle = gpal.Oracle(pyscf_oracle(xc="PBEE", basis="sto-3g"), retries=1)
    got, failures = oracle.label([water()])
    assert got == [None] and failures[0].attempts == 1 and "does not run in PySCF" in failures[0].reason
