"""GPCalculator: the ASE contract, dynamics, optimisers, NEB, energy conservation."""

from __future__ import annotations

import numpy as np
import pytest
from ase import units
from ase.build import bulk, fcc100
from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress
from ase.io import Trajectory, read, write
from ase.md.langevin import Langevin
from ase.md.nptberendsen import NPTBerendsen
from ase.md.velocitydistribution import Stationary, thermalize_momenta
from ase.md.verlet import VelocityVerlet
from ase.mep import NEB
from ase.optimize import BFGS, FIRE

from gpal import SOAP, GPCalculator, SparseGP

from conftest import POLY, SMALL_SOAP, cu_frames, label


@pytest.fixture(scope="module")
def model():
    frames = cu_frames(8, seed=3, rattle=0.1, size=(2, 2, 2))
    desc = SOAP(species=["Cu"], periodic=True, weighting=POLY, **SMALL_SOAP)
    # fixed hyperparameters: the finite-difference tolerances below are set for its energy
    # scale (an evidence-chosen signal variance of ~100 eV² makes the energies large and
    # central differences at eps 1e-4 round-off limited; the analytic forces are the same)
    return SparseGP(desc, n_sparse=80, hyperparameters="fixed").fit(frames)


def cu(size=(2, 2, 2), seed=0, rattle=0.05):
    a = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(size)
    a.positions += np.random.default_rng(seed).normal(0, rattle, a.positions.shape)
    return a


def test_forces_and_stress_match_ase_finite_differences(model):
    a = cu(seed=1)
    a.calc = GPCalculator(model)
    np.testing.assert_allclose(a.get_forces(), calculate_numerical_forces(a, eps=1e-4), atol=2e-6)
    np.testing.assert_allclose(a.get_stress(), calculate_numerical_stress(a, eps=1e-5), atol=2e-7)
    assert a.get_potential_energy() == pytest.approx(a.get_potential_energies().sum())


def test_one_evaluation_per_md_step(model):
    a = cu(seed=2)
    calc = GPCalculator(model)
    a.calc = calc
    thermalize_momenta(a, temperature_K=300, rng=np.random.default_rng(0))
    dyn = VelocityVerlet(a, 1.0 * units.fs)
    dyn.run(1)
    n0 = calc.n_evaluations
    dyn.run(10)
    # properties asked repeatedly at one geometry are served from ASE's cache
    a.get_forces(); a.get_potential_energy(); a.get_stress(); a.get_potential_energies()
    assert calc.n_evaluations - n0 == 10
    assert "energies_std" in calc.results and calc.results["energies_std"].shape == (len(a),)


def test_system_changes_recompute(model):
    a = cu(seed=3)
    calc = GPCalculator(model)
    a.calc = calc
    e0 = a.get_potential_energy()
    a.get_potential_energy()
    assert calc.n_evaluations == 1
    a.positions[0, 0] += 0.05
    e1 = a.get_potential_energy()
    assert calc.n_evaluations == 2 and e1 != e0
    a.set_cell(a.cell.array * 1.01, scale_atoms=True)
    e2 = a.get_potential_energy()
    assert calc.n_evaluations == 3 and e2 != e1
    b = a.repeat((1, 1, 2))
    b.calc = calc
    assert b.get_potential_energy() == pytest.approx(2 * e2, rel=1e-10)
    c = a.copy()
    c.pbc = [True, True, False]
    c.calc = calc
    c.get_potential_energy()  # still a valid (slab-like) evaluation
    assert calc.n_evaluations == 5
    calc.calculate(a, properties=["energy"], system_changes=["positions"])
    assert calc.n_evaluations == 6


def test_model_changed_in_place_recomputes():
    """A model updated, refitted or recalibrated after a calculation: the calculator's
    next answer is the new model's (results do not outlive the model that made them)."""
    from gpal.calibration import Calibration

    frames = cu_frames(4, seed=5, rattle=0.1, size=(2, 2, 2))
    desc = SOAP(species=["Cu"], periodic=True, weighting=POLY, **SMALL_SOAP)
    m = SparseGP(desc, n_sparse=30, hyperparameters="fixed").fit(frames[:2])
    a = cu(seed=6)
    a.calc = GPCalculator(m, forces_std=True, calibrated=True)
    e0, f0 = a.get_potential_energy(), a.get_forces().copy()
    n = a.calc.n_evaluations
    assert a.get_potential_energy() == e0 and a.calc.n_evaluations == n  # unchanged: cached
    m.update(frames[2:], n_sparse=5)
    ref = m.predict(a)
    assert a.get_potential_energy() == pytest.approx(ref["energy"], abs=1e-12) != e0
    np.testing.assert_allclose(a.get_forces(), ref["forces"], atol=1e-12)
    assert not np.allclose(a.get_forces(), f0)
    s1 = a.calc.get_uncertainty(a, "forces_std").copy()
    m.set_calibration(forces_std=Calibration(scale=2.0))
    np.testing.assert_allclose(a.calc.get_uncertainty(a, "forces_std"), 2 * s1, rtol=1e-10)


@pytest.mark.parametrize("pbc", [(True, True, False), (False, False, True)])
def test_zero_cell_vector_along_a_free_direction(model, pbc):
    """ASE's builders leave the cell vector of a non-periodic direction zero (fcc111,
    graphene, nanotube without vacuum): the structure is the same as with any vector
    there, and one missing along a periodic direction is still an error."""
    from gpal.exceptions import MissingCellError

    a = cu(seed=7)
    a.pbc = pbc
    free = [d for d in range(3) if not pbc[d]]
    ref = a.copy()
    ref.cell[free] = 40.0 * np.eye(3)[free]
    a.cell[free] = 0.0
    p, q = model.predict(a, return_std=True, forces_std=True), model.predict(ref, return_std=True, forces_std=True)
    for key in ("energy", "forces", "energies_std", "forces_std"):
        np.testing.assert_allclose(p[key], q[key], rtol=1e-12, atol=1e-12)
    a.calc = GPCalculator(model)
    np.testing.assert_allclose(a.get_forces(), q["forces"], atol=1e-12)
    bad = ref.copy()
    bad.cell[[d for d in range(3) if pbc[d]][0]] = 0.0
    with pytest.raises(MissingCellError, match="missing or linearly dependent"):
        model.predict(bad)


def test_default_calculator_leaves_atoms_info_alone(model):
    a = cu(seed=6)
    a.info["tag"] = "mine"
    a.calc = GPCalculator(model, forces_std=True)
    a.get_forces()
    assert "energies_std" in a.calc.results and "forces_std" in a.calc.results
    assert a.info == {"tag": "mine"}
    VelocityVerlet(a, 1.0 * units.fs).run(2)
    assert a.info == {"tag": "mine"}


def test_record_std_keeps_only_fresh_stds(model):
    a = cu(seed=7)
    a.calc = GPCalculator(model, record_std=True, forces_std=2)
    a.get_forces()
    assert a.info["forces_std"].shape == (len(a), 3)
    a.positions[0, 0] += 0.01
    a.get_forces()  # second evaluation: no forces_std, and the stale one is gone
    assert "forces_std" not in a.info and a.info["energies_std"].shape == (len(a),)
    # what get_uncertainty computes is recorded too (it had stayed out of info)
    b = cu(seed=8)
    b.calc = GPCalculator(model, record_std=True, std_every=0)
    b.get_potential_energy()
    assert "energies_std" not in b.info
    fstd = b.calc.get_uncertainty(b, "forces_std")
    np.testing.assert_array_equal(b.info["forces_std"], fstd)
    with pytest.raises(TypeError, match="record_std must be True or False, got 'no'"):
        GPCalculator(model, record_std="no")  # (it had turned recording on)


def test_properties_export_and_files_keep_stds(model, tmp_path):
    a = cu(seed=4)
    a.calc = GPCalculator(model, forces_std=True, record_std=True)
    props = a.get_properties(["energy", "forces", "stress", "energies"])
    assert props["forces"].shape == (len(a), 3)
    exported = a.calc.export_properties()
    assert "energies_std" not in exported and "forces" in exported
    assert a.info["forces_std"].shape == (len(a), 3)
    write(tmp_path / "frame.xyz", a)
    back = read(tmp_path / "frame.xyz")
    np.testing.assert_allclose(back.get_forces(), a.get_forces(), atol=1e-6)
    # a trajectory written during MD keeps the stds (atoms.info, record_std=True)
    a.calc = GPCalculator(model, record_std=True)
    dyn = VelocityVerlet(a, 1.0 * units.fs)
    with Trajectory(tmp_path / "md.traj", "w", a) as traj:
        dyn.attach(traj.write, interval=1)
        dyn.run(3)
    frames = read(tmp_path / "md.traj", ":")
    assert len(frames) == 4
    for f in frames:
        assert np.shape(f.info["energies_std"]) == (len(a),)
        assert np.all(np.asarray(f.info["energies_std"]) >= 0)
        assert f.info["energy_std"] >= 0


def test_std_every_controls_cost(model):
    a = cu(seed=5)
    a.calc = GPCalculator(model, std_every=0)
    a.get_forces()
    assert "energies_std" not in a.calc.results
    assert a.calc.get_uncertainty(a, "energies_std").shape == (len(a),)
    with pytest.raises(ValueError, match="choose from"):
        a.calc.get_uncertainty(a, "charges_std")
    slab = cu(seed=5)
    slab.pbc = [True, True, False]  # no stress, so no stress std either: said as such
    slab.calc = GPCalculator(model)
    from ase.calculators.calculator import PropertyNotImplementedError

    with pytest.raises(PropertyNotImplementedError, match="periodic in all three directions"):
        slab.calc.get_uncertainty(slab, "stress_std")
    fresh = GPCalculator(model)  # (nothing calculated yet: a TypeError from deep in predict)
    with pytest.raises(ValueError, match="has no structure yet: pass atoms"):
        fresh.get_uncertainty(key="forces_std")
    assert fresh.get_uncertainty(cu(seed=5), "forces_std").shape == (len(a), 3)


@pytest.mark.parametrize("dynamics", ["verlet", "langevin", "npt"])
def test_dynamics_run(model, dynamics):
    a = cu(seed=6)
    a.calc = GPCalculator(model)
    thermalize_momenta(a, temperature_K=300, rng=np.random.default_rng(1))
    if dynamics == "verlet":
        dyn = VelocityVerlet(a, 1.0 * units.fs)
    elif dynamics == "langevin":
        dyn = Langevin(a, 1.0 * units.fs, temperature_K=300, friction=0.02 / units.fs, fixcm=False,
                       rng=np.random.default_rng(2))
    else:
        dyn = NPTBerendsen(a, 1.0 * units.fs, temperature_K=300, pressure_au=0.0,
                           taut=100 * units.fs, taup=500 * units.fs, compressibility_au=1e-6 / units.bar)
    v0 = a.get_volume()
    dyn.run(20)
    assert np.isfinite(a.get_potential_energy())
    if dynamics == "npt":
        assert a.get_volume() != v0  # the barostat used the stress


@pytest.mark.parametrize("opt", [BFGS, FIRE])
def test_optimisers_relax(model, opt):
    a = cu(seed=7, rattle=0.08)
    a.calc = GPCalculator(model)
    f0 = np.abs(a.get_forces()).max()
    opt(a, logfile=None).run(fmax=0.01, steps=200)
    assert np.abs(a.get_forces()).max() < 0.01 < f0


def test_neb_on_gp():
    """A vacancy hop on a (100) surface with a model fitted to EMT near that path."""
    slab = fcc100("Cu", size=(2, 2, 3), vacuum=4.0, a=3.6)
    slab.pbc = True
    initial = slab.copy()
    del initial[-1]  # make a surface vacancy
    final = initial.copy()
    top = [i for i, p in enumerate(initial.positions) if p[2] > initial.positions[:, 2].max() - 0.1]
    hop = top[0]
    vac_site = slab.positions[-1]
    final.positions[hop] = vac_site
    rng = np.random.default_rng(0)
    frames = []
    for t in np.linspace(0, 1, 7):
        img = initial.copy()
        img.positions[hop] = (1 - t) * initial.positions[hop] + t * vac_site
        for _ in range(2):
            b = img.copy()
            b.positions += rng.normal(0, 0.05, b.positions.shape)
            frames.append(label(b))
    desc = SOAP(species=["Cu"], periodic=True, weighting=POLY, **SMALL_SOAP)
    model = SparseGP(desc, n_sparse=80).fit(frames)
    images = [initial] + [initial.copy() for _ in range(3)] + [final]
    for img in images:
        img.calc = GPCalculator(model)
    neb = NEB(images, method="improvedtangent")
    neb.interpolate()
    FIRE(neb, logfile=None).run(fmax=0.1, steps=150)
    energies = [img.get_potential_energy() for img in images]
    barrier = max(energies) - energies[0]
    assert 0.0 < barrier < 3.0
    assert all("energies_std" in img.calc.results for img in images[1:-1])


def test_nve_energy_conservation(model):
    """Smooth cutoff + analytic forces: 400 NVE steps of 1 fs at 300 K, drift < 1 meV/atom."""
    a = cu(seed=8, rattle=0.02)
    a.calc = GPCalculator(model, std_every=0)
    thermalize_momenta(a, temperature_K=300, rng=np.random.default_rng(3))
    Stationary(a)
    dyn = VelocityVerlet(a, 1.0 * units.fs)
    etot = []
    dyn.attach(lambda: etot.append(a.get_potential_energy() + a.get_kinetic_energy()), interval=10)
    dyn.run(400)
    etot = np.array(etot) / len(a)
    assert np.ptp(etot) < 1e-3


@pytest.mark.parametrize("kw", [{"forces_std": -1}, {"forces_std": 2.5}, {"std_every": 0.5}, {"std_every": -1}])
def test_calculator_options_that_would_be_ignored_are_refused(model, kw):
    with pytest.raises(ValueError, match="must be an integer >= 0"):
        GPCalculator(model, **kw)


def test_a_misspelt_keyword_is_refused_not_kept(model):
    """ASE's Calculator keeps any keyword in ``parameters``: ``std_evry=5`` was accepted
    and ignored (stds still every step). Only ASE's own constructor keywords pass."""
    with pytest.raises(TypeError, match="'std_evry' .*did you mean 'std_every'"):
        GPCalculator(model, std_evry=5)
    with pytest.raises(TypeError, match="'calibrate' .*did you mean 'calibrated'"):
        GPCalculator(model, calibrate=False)
    calc = GPCalculator(model, label="gp", directory=".")
    assert calc.label == "gp" and calc.parameters == {}


def test_warnings_point_at_the_callers_line(model):
    a = cu(seed=2)
    with pytest.warns(UserWarning, match="stores no calibration") as rec:
        model.predict(a, calibrated=True)
    assert rec[0].filename == __file__


def test_stds_are_calibrated_by_default_when_the_model_stores_a_calibration(model):
    """calibrated=None (the default): a learner's model (with a stored calibration) gives
    its calibrated stds, as gpal md does, and a model without one its raw stds, silently."""
    import copy
    import warnings

    from gpal.calibration import Calibration

    a = cu(seed=8)
    raw = model.predict(a, return_std=True, forces_std=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (no "stores no calibration" warning)
        a.calc = GPCalculator(model, forces_std=True)
        np.testing.assert_allclose(a.calc.get_uncertainty(a, "forces_std"), raw["forces_std"], rtol=1e-12)
    m = copy.deepcopy(model).set_calibration(forces_std=Calibration(scale=3.0))
    b = cu(seed=8)
    b.calc = GPCalculator(m, forces_std=True)
    np.testing.assert_allclose(b.calc.get_uncertainty(b, "forces_std"), 3 * raw["forces_std"], rtol=1e-10)
    b.calc = GPCalculator(m, forces_std=True, calibrated=False)
    np.testing.assert_allclose(b.calc.get_uncertainty(b, "forces_std"), raw["forces_std"], rtol=1e-12)
    with pytest.raises(TypeError, match="calibrated must be True, False or None"):
        GPCalculator(m, calibrated="yes")
