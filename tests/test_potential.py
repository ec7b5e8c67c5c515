"""SparseGP potential: GP maths against a dense reference, physics, I/O, bad input."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.emt import EMT
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator
from ase.stress import voigt_6_to_full_3x3_stress
from scipy.spatial.transform import Rotation

import gpal
from gpal import SOAP, SparseGP
from gpal.kernels import NormalizedDotProduct, SquaredExponential
from gpal.sparse_gp import SparseGPSolver

from conftest import POLY, SMALL_SOAP, cu_frames, cuag_frames, label, refit_without_frame


def soap_for(frames, periodic=True, **kw):
    species = sorted({int(z) for a in frames for z in a.numbers})
    params = dict(SMALL_SOAP, weighting=POLY)
    params.update(kw)
    return SOAP(species=species, periodic=periodic, **params)


def energy_only(frames):
    out = []
    for a in frames:
        b = a.copy()
        b.calc = SinglePointCalculator(b, energy=a.get_potential_energy())
        out.append(b)
    return out


@pytest.fixture(scope="module")
def cu_model(cu_train):
    # fixed hyperparameters: the finite-difference tolerances below are set for them
    return SparseGP(soap_for(cu_train), n_sparse=40, energy_noise=0.002,
                    hyperparameters="fixed").fit(cu_train)


@pytest.fixture(scope="module")
def cuag_model(cuag_train):
    return SparseGP(soap_for(cuag_train), n_sparse=60).fit(cuag_train)


# --------------------------------------------------------------------------- GP maths
def test_full_sparse_set_equals_dense_gp_on_energies():
    """Sparse set = all training environments: gpal equals an exact dense GP.

    The reference uses dscribe's SOAP, a numpy kernel and a dense solve, sharing no
    code with gpal.
    """
    from dscribe.descriptors import SOAP as DSOAP

    frames = energy_only(cu_frames(5, seed=11, size=(1, 1, 1)))
    test = cu_frames(1, seed=12, size=(1, 1, 1))[0]
    e0 = -0.01
    desc = soap_for(frames)
    n_env = sum(len(a) for a in frames)
    model = SparseGP(
        desc, NormalizedDotProduct(zeta=2, signal_variance=0.3), energy_noise=0.003,
        n_sparse=n_env, e0={"Cu": e0}, jitter=1e-13,
    ).fit(frames)
    assert len(model.sparse_X_) == n_env

    ds = DSOAP(species=["Cu"], periodic=True, rbf="gto", weighting=POLY, **SMALL_SOAP)
    Xs = [ds.create(a) for a in frames]
    Xall = np.concatenate(Xs)
    Xt = ds.create(test)

    def k(A, B):
        A = A / np.linalg.norm(A, axis=1, keepdims=True)
        B = B / np.linalg.norm(B, axis=1, keepdims=True)
        return 0.3 * (A @ B.T) ** 2

    owner = np.concatenate([np.full(len(x), f) for f, x in enumerate(Xs)])
    S = np.zeros((len(frames), len(Xall)))  # frame-sum operator
    S[owner, np.arange(len(Xall))] = 1.0
    K_EE = S @ k(Xall, Xall) @ S.T
    noise = 0.003 * np.sqrt([len(a) for a in frames])
    y = np.array([a.get_potential_energy() - e0 * len(a) for a in frames])
    C = K_EE + np.diag(noise**2)
    k_tE = k(Xt, Xall) @ S.T  # [n_test_atoms, n_frames]
    mean = k_tE @ np.linalg.solve(C, y) + e0
    var = 0.3 - np.einsum("ij,ji->i", k_tE, np.linalg.solve(C, k_tE.T))

    pred = model.predict(test, return_std=True)
    np.testing.assert_allclose(pred["energies"], mean, rtol=0, atol=1e-8)
    np.testing.assert_allclose(pred["energies_std"], np.sqrt(var), rtol=0, atol=1e-7)
    # total-energy variance: exact GP, and gpal's documented approximation, which keeps
    # the projected part exactly and treats the residual prior K - Q as independent
    # between atoms (FITC): Var = 1'(Q_tt + diag(K_tt - Q_tt) - k_tE C^-1 k_Et)1
    one = np.ones(len(test))
    K_tt = k(Xt, Xt)
    varE_exact = one @ K_tt @ one - one @ k_tE @ np.linalg.solve(C, k_tE.T @ one)
    K_ta = k(Xt, Xall)
    Q_tt = K_ta @ np.linalg.solve(k(Xall, Xall), K_ta.T)
    R_tt = K_tt - Q_tt
    varE_fitc = varE_exact - one @ R_tt @ one + np.trace(R_tt)
    assert pred["energy_std"] == pytest.approx(np.sqrt(varE_fitc), rel=1e-5)
    assert pred["energy_std"] == pytest.approx(np.sqrt(varE_exact), rel=1e-2)


def test_update_equals_refit_with_same_sparse_set(cu_train):
    model = SparseGP(soap_for(cu_train), n_sparse=30).fit(cu_train[:3])
    model.update(cu_train[3:5], n_sparse=5, sparse_selection="variance")
    model.update(cu_train[5:], n_sparse=0)
    assert len(model.frames_) == len(cu_train)
    assert len(model.sparse_X_) == 3 * 8 + 5  # all 24 environments, then 5 more
    K_mm = model._k_mm(model.sparse_X_, model.sparse_species_)
    K_nm, y, noise, group, _ = model._observations(model.frames_, model.sparse_X_, model.sparse_species_)
    ref = SparseGPSolver()
    ref.fit(K_mm, K_nm, y, noise, jitter=model.jitter)
    # alpha is ill-conditioned (near-collinear sparse points); compare what it predicts
    test = cu_frames(1, seed=77)[0]
    K = model.local_kernel(test)
    np.testing.assert_allclose(K @ model.alpha_, K @ ref.alpha_, rtol=0, atol=1e-8)
    np.testing.assert_allclose(model.solver_.var_sor(K), ref.var_sor(K), rtol=1e-6, atol=1e-14)
    np.testing.assert_array_equal(model.obs_group_, group)


# --------------------------------------------------------------------------- physics
def _fd_forces(model, atoms, h=1e-4):
    F = np.zeros((len(atoms), 3))
    for i in range(len(atoms)):
        for c in range(3):
            a = atoms.copy()
            a.positions[i, c] += h
            ep = model.predict(a)["energy"]
            a.positions[i, c] -= 2 * h
            em = model.predict(a)["energy"]
            F[i, c] = -(ep - em) / (2 * h)
    return F


def _fd_stress(model, atoms, h=1e-5):
    V = atoms.get_volume()
    S = np.zeros((3, 3))
    for a_ in range(3):
        for b_ in range(3):
            e = []
            for sgn in (1, -1):
                eps = np.zeros((3, 3))
                eps[a_, b_] += sgn * h / 2
                eps[b_, a_] += sgn * h / 2
                a = atoms.copy()
                a.set_cell(a.cell.array @ (np.eye(3) + eps), scale_atoms=True)
                e.append(model.predict(a)["energy"])
            S[a_, b_] = (e[0] - e[1]) / (2 * h) / V
    return S.flat[[0, 4, 8, 5, 2, 1]]


@pytest.mark.parametrize("which", ["cu", "cuag"])
def test_forces_and_stress_are_energy_derivatives(which, cu_model, cuag_model):
    model, frame = (
        (cu_model, cu_frames(1, seed=99)[0]) if which == "cu" else (cuag_model, cuag_frames(1, seed=98)[0])
    )
    pred = model.predict(frame)
    assert np.abs(pred["forces"]).max() > 1e-3  # not trivially zero
    np.testing.assert_allclose(pred["forces"], _fd_forces(model, frame), atol=2e-6)
    np.testing.assert_allclose(pred["stress"], _fd_stress(model, frame), atol=2e-7)
    assert pred["energy"] == pytest.approx(pred["energies"].sum(), abs=1e-10)
    assert pred["free_energy"] == pred["energy"]


@pytest.mark.parametrize("block_bytes", [64e6, 3e4], ids=["one-block", "centre-blocks"])
def test_training_rows_equal_the_per_pair_contraction(cuag_model, cuag_train, monkeypatch, block_bytes):
    """The rows built block by block (blocks of centres, per neighbour species on its
    columns) equal the per-pair kernel gradient summed onto atoms, for a two-species
    periodic frame."""
    import gpal.descriptors.soap as soap_module
    import gpal.model.rows as rows_module
    from gpal.descriptors import pair_forces, pair_stress

    m = cuag_model
    a = cuag_train[0].repeat((2, 1, 1))
    a.rattle(0.05, seed=4)
    Z, zsp = m.sparse_X_, m.sparse_species_
    monkeypatch.setattr(soap_module, "_DERIVATIVE_BLOCK_BYTES", block_bytes)
    monkeypatch.setattr(rows_module, "_SPLIT_MIN_PRODUCT", 0)  # split this small cell too
    blocks = [i1 - i0 for i0, i1, _ in m.descriptor_.derivative_blocks(a)]
    assert len(blocks) == (1 if block_bytes > 1e6 else len(a))  # 3e4 B: one centre each
    e_row, rows_f, rows_s = m._derivative_rows(a, Z, zsp)
    d = m.descriptor_.derivatives(a)
    ref_f, ref_s = np.zeros_like(rows_f), np.zeros_like(rows_s)
    for z in np.unique(a.numbers):
        c = np.flatnonzero(zsp == z)
        p = a.numbers[d.center] == z
        g = m.kernel_.contract_gradient(d.descriptor, Z[c], d.center[p], d.dX[p])
        ref_f[:, :, c] = pair_forces(g, d.center[p], d.neighbor[p], len(a))
        ref_s[:, c] = pair_stress(g, d.vector[p], d.volume)
    assert np.abs(ref_f).max() > 0 and np.abs(ref_s).max() > 0
    ref_e = np.zeros_like(e_row)
    for z in np.unique(a.numbers):  # an environment meets sparse points of its own species
        c = np.flatnonzero(zsp == z)
        ref_e[c] = m.kernel_(d.descriptor[a.numbers == z], Z[c]).sum(axis=0)
    np.testing.assert_allclose(e_row, ref_e, rtol=1e-12)
    np.testing.assert_allclose(rows_f, ref_f, rtol=1e-11, atol=1e-12 * np.abs(ref_f).max())
    np.testing.assert_allclose(rows_s, ref_s, rtol=1e-11, atol=1e-12 * np.abs(ref_s).max())


def test_model_learns_emt(cu_train):
    """Not a benchmark: the fitted model must beat predicting zero forces by far."""
    model = SparseGP(soap_for(cu_train), n_sparse=60).fit(cu_train)
    test = cu_frames(3, seed=5)
    err = np.concatenate([(model.predict(a)["forces"] - a.get_forces()).ravel() for a in test])
    ref = np.concatenate([a.get_forces().ravel() for a in test])
    assert np.sqrt(np.mean(err**2)) < 0.3 * np.sqrt(np.mean(ref**2))


def test_size_extensivity_periodic(cu_model):
    a = cu_frames(1, seed=7)[0]
    aa = a.repeat((2, 1, 1))
    p1 = cu_model.predict(a, return_std=True)
    p2 = cu_model.predict(aa, return_std=True)
    assert p2["energy"] == pytest.approx(2 * p1["energy"], rel=1e-12, abs=1e-10)
    np.testing.assert_allclose(p2["energies"], np.tile(p1["energies"], 2), atol=1e-10)
    np.testing.assert_allclose(p2["forces"], np.tile(p1["forces"], (2, 1)), atol=1e-9)
    np.testing.assert_allclose(p2["energies_std"], np.tile(p1["energies_std"], 2), atol=1e-10)
    np.testing.assert_allclose(p2["stress"], p1["stress"], atol=1e-10)
    # identical copies are perfectly correlated in the projected part, independent in
    # the residual: 2 var <= var(E_AA) <= 4 var
    assert 2 * p1["energy_std"] ** 2 - 1e-12 <= p2["energy_std"] ** 2 <= 4 * p1["energy_std"] ** 2 + 1e-12


def test_size_extensivity_two_separated_molecules():
    rng = np.random.default_rng(3)
    frames = []
    for _ in range(6):
        m = Atoms("Cu4", positions=[[0, 0, 0], [2.5, 0, 0], [0, 2.5, 0], [0, 0, 2.5]])
        m.positions += rng.normal(0, 0.1, (4, 3))
        frames.append(label(m, stress=False))
    model = SparseGP(soap_for(frames, periodic=False), n_sparse=20).fit(frames)
    a = frames[0].copy()
    b = frames[1].copy()
    b.positions += [20.0, 0, 0]  # further apart than the cutoff
    ab = a + b
    pa, pb, pab = (model.predict(x, return_std=True) for x in (a, b, ab))
    assert "stress" not in pab
    assert pab["energy"] == pytest.approx(pa["energy"] + pb["energy"], abs=1e-10)
    np.testing.assert_allclose(pab["energies"], np.concatenate([pa["energies"], pb["energies"]]), atol=1e-10)
    np.testing.assert_allclose(pab["forces"], np.vstack([pa["forces"], pb["forces"]]), atol=1e-10)
    np.testing.assert_allclose(
        pab["energies_std"], np.concatenate([pa["energies_std"], pb["energies_std"]]), atol=1e-10
    )
    # Var(E_a + E_b) = Var(E_a) + Var(E_b) + 2 Cov(E_a, E_b), Cov from the projected part
    Ka, Kb = model.local_kernel(a), model.local_kernel(b)
    cov = model.solver_.cov_sor(Ka.sum(0)[None], Kb.sum(0)[None])[0, 0]
    # (rel 1e-5: the projected variance is summed in single precision, ~1e-7 of itself)
    assert pab["energy_std"] ** 2 == pytest.approx(pa["energy_std"] ** 2 + pb["energy_std"] ** 2 + 2 * cov, rel=1e-5)


def test_invariance_rotation_translation_permutation(cuag_model):
    a = cuag_frames(1, seed=21)[0]
    p = cuag_model.predict(a, return_std=True, forces_std=True)
    R = Rotation.from_euler("xyz", [0.3, -0.7, 1.1]).as_matrix()
    b = a.copy()
    b.set_cell(a.cell.array @ R.T)
    b.positions = a.positions @ R.T + [0.3, -1.2, 2.0]
    q = cuag_model.predict(b, return_std=True, forces_std=True)
    assert q["energy"] == pytest.approx(p["energy"], abs=1e-9)
    np.testing.assert_allclose(q["forces"], p["forces"] @ R.T, atol=1e-8)
    np.testing.assert_allclose(q["energies_std"], p["energies_std"], atol=1e-9)
    # the force covariance rotates with the frame: its trace per atom is invariant
    np.testing.assert_allclose((q["forces_std"] ** 2).sum(1), (p["forces_std"] ** 2).sum(1), rtol=1e-5, atol=1e-12)
    Sp = voigt_6_to_full_3x3_stress(p["stress"])
    Sq = voigt_6_to_full_3x3_stress(q["stress"])
    np.testing.assert_allclose(Sq, R @ Sp @ R.T, atol=1e-9)

    perm = np.random.default_rng(0).permutation(len(a))
    c = a[perm]
    r = cuag_model.predict(c, return_std=True)
    assert r["energy"] == pytest.approx(p["energy"], abs=1e-9)
    np.testing.assert_allclose(r["forces"], p["forces"][perm], atol=1e-9)
    np.testing.assert_allclose(r["energies_std"], p["energies_std"][perm], atol=1e-10)


def test_a_fit_with_stress_labels_does_not_depend_on_the_orientation_of_its_cells():
    """Rotating every training frame (cell, positions, force and stress labels) gave
    another model (forces 7e-4 eV/Å apart at a test force RMSE of 4e-3): the six Voigt
    stress components had one noise each, so shear weighed half of what a rotated cell
    gives it. Noise sigma/sqrt(2) on the shear makes the likelihood the tensor's
    Frobenius norm."""
    from ase.stress import full_3x3_to_voigt_6_stress

    train, test = cu_frames(5, seed=1), cu_frames(2, seed=50)
    # shear labels well above their noise (0.002 eV/Å^3): the weighting matters
    assert min(np.abs(a.get_stress()[3:]).max() for a in train) > 3 * 0.002
    R = Rotation.from_euler("xyz", [0.3, 1.1, -0.6]).as_matrix()
    turned = []
    for a in train:
        b = a.copy()
        b.set_cell(a.cell.array @ R.T)
        b.positions = a.positions @ R.T
        S = R @ voigt_6_to_full_3x3_stress(a.get_stress()) @ R.T
        b.calc = SinglePointCalculator(b, energy=a.get_potential_energy(), forces=a.get_forces() @ R.T,
                                       stress=full_3x3_to_voigt_6_stress(S))
        turned.append(b)
    kw = dict(descriptor=SOAP(species=[29], periodic=True, weighting=POLY, **SMALL_SOAP), n_sparse=30,
              hyperparameters="fixed", stress_noise=0.002)
    A, B = SparseGP(**kw).fit(train), SparseGP(**kw).fit(turned)
    for a in test:
        p, q = A.predict(a, return_std=True), B.predict(a, return_std=True)
        assert abs(p["energy"] - q["energy"]) < 1e-8
        np.testing.assert_allclose(q["forces"], p["forces"], atol=1e-8)
        np.testing.assert_allclose(q["energies_std"], p["energies_std"], atol=1e-9)
    np.testing.assert_allclose(B.stress_label_noise(), [0.002] * 3 + [0.002 / np.sqrt(2)] * 3, rtol=1e-15)


def test_stds_nonnegative_and_grow_away_from_data(cu_model):
    near = cu_frames(1, seed=31)[0]
    far = bulk("Cu", "fcc", a=3.1, cubic=True).repeat((1, 1, 2))  # 14 % compressed
    far.positions += np.random.default_rng(0).normal(0, 0.05, far.positions.shape)
    pn = cu_model.predict(near, return_std=True, forces_std=True, stress_std=True)
    pf = cu_model.predict(far, return_std=True)
    for key in ("energies_std", "forces_std", "stress_std"):
        assert np.all(pn[key] >= 0) and pn[key].shape == np.shape(pn[key.replace("_std", "") if key != "energies_std" else "energies"])
    assert pf["energies_std"].mean() > 3 * pn["energies_std"].mean()


# --------------------------------------------------------------------------- labels / input
def test_frames_with_partial_labels(cu_train):
    frames = energy_only(cu_train[:3]) + cu_train[3:]
    model = SparseGP(soap_for(cu_train), n_sparse=30).fit(frames)
    groups = np.bincount(model.obs_group_, minlength=3)
    assert groups[0] == 6 and groups[1] == 3 * sum(len(a) for a in cu_train[3:]) and groups[2] == 18


def _clusters(n):
    from ase.calculators.emt import EMT
    from ase.cluster import Icosahedron

    out = []
    for k in range(n):
        a = Icosahedron("Cu", 2)
        a.rattle(0.1, seed=k)
        out.append(label(a, EMT()))
    return out


def test_each_structure_pbc_decides_periodicity(cu_model, cu_train):
    # a model fitted on clusters (no cell, no pbc) still evaluates a crystal as periodic
    clusters = _clusters(3)
    model = SparseGP(n_sparse=30, hyperparameters="fixed").fit(clusters)
    assert model.descriptor_.periodic
    bulk_cell = cu_train[0].copy()
    isolated = bulk_cell.copy()
    isolated.pbc = False
    e_bulk, e_isolated = model.predict(bulk_cell)["energy"], model.predict(isolated)["energy"]
    assert abs(e_bulk - e_isolated) > 1.0
    # the same descriptor with periodic=False treats both as clusters, and says so
    flat = SparseGP(descriptor=SOAP(**{**model.descriptor_.get_params(), "periodic": False}),
                    n_sparse=30, hyperparameters="fixed").fit(clusters)
    with pytest.warns(UserWarning, match="periodic=False"):
        e_flat = flat.predict(bulk_cell)["energy"]
    assert e_flat == pytest.approx(flat.predict(isolated)["energy"], abs=1e-10)
    assert model.predict(clusters[0])["energy"] == pytest.approx(flat.predict(clusters[0])["energy"], abs=1e-9)
    # a periodic model takes a cluster without a cell, and one in a box without pbc
    boxed = clusters[0].copy()
    boxed.center(vacuum=6.0)
    assert cu_model.predict(boxed)["energy"] == pytest.approx(cu_model.predict(clusters[0])["energy"],
                                                              abs=1e-9)


def test_atoms_without_neighbours(cu_model, cu_train):
    # an isolated atom (no pair within the cutoff) and two far apart: no pair terms at all
    one = cu_train[0][:1]
    one.pbc, one.cell = False, None
    two = cu_train[0][:2]
    two.pbc, two.cell = False, None
    two.positions[1] = two.positions[0] + [8.0, 0.0, 0.0]
    p1 = cu_model.predict(one, return_std=True, forces_std=True)
    p2 = cu_model.predict(two, return_std=True, forces_std=True)
    assert p2["energy"] == pytest.approx(2 * p1["energy"], rel=1e-10)
    assert not p1["forces"].any() and not p2["forces"].any() and not p2["forces_std"].any()
    np.testing.assert_allclose(p2["energies_std"], p1["energies_std"][0], rtol=1e-12)


def test_bad_input_errors(cu_model, cu_train):
    a = cu_train[0].copy()
    a.numbers[0] = 79
    with pytest.raises(gpal.UnknownSpeciesError, match="Au"):
        cu_model.predict(a)
    b = cu_train[0].copy()
    b.positions[2, 1] = np.nan
    with pytest.raises(gpal.InvalidPositionsError):
        cu_model.predict(b)
    c = cu_train[0].copy()
    c.cell = None  # periodic boundaries without a cell
    with pytest.raises(gpal.MissingCellError, match="periodic boundaries"):
        cu_model.predict(c)
    d = cu_train[0].copy()
    d.positions[1] = d.positions[0] + [0.1, 0, 0]
    with pytest.raises(gpal.OverlappingAtomsError):
        cu_model.predict(d)
    unlabelled = cu_train[0].copy()
    unlabelled.calc = None
    with pytest.raises(gpal.MissingLabelsError):
        SparseGP(soap_for(cu_train)).fit([unlabelled])
    with pytest.raises(gpal.NotFittedError):
        SparseGP().predict(cu_train[0])
    with pytest.raises(ValueError, match="sparse_selection"):
        SparseGP(soap_for(cu_train), sparse_selection="best").fit(cu_train)


# --------------------------------------------------------------------------- I/O
def test_save_load_round_trip(tmp_path, cuag_model):
    path = cuag_model.save(tmp_path / "model")
    loaded = gpal.load(path)
    a = cuag_frames(1, seed=41)[0]
    p, q = (m.predict(a, return_std=True, forces_std=True) for m in (cuag_model, loaded))
    for key in p:
        np.testing.assert_array_equal(np.asarray(p[key]), np.asarray(q[key]))
    # a loaded model can keep learning
    loaded.update(cuag_frames(1, seed=42), n_sparse=2)


def test_a_loaded_model_has_the_constructor_parameters_it_was_saved_with(tmp_path):
    from sklearn.base import clone

    frames = cu_frames(3, seed=43)
    model = SparseGP(n_sparse=20, hyperparameters="fixed").fit(frames)  # descriptor and kernel unset
    loaded = gpal.load(model.save(tmp_path / "model.npz"))
    params, back = model.get_params(deep=False), loaded.get_params(deep=False)
    assert back["descriptor"] is None and back["kernel"] is None
    assert {k: v for k, v in back.items()} == {k: v for k, v in params.items()}
    # so a clone of the loaded model chooses its descriptor afresh, e.g. for new species
    new = clone(loaded).fit(cuag_frames(2, seed=44))
    assert set(new.species_.tolist()) == {29, 47}
    # a numpy integer seed is kept (as an int); a previous evidence fit's log evidence is
    # not carried into a refit with fixed hyperparameters
    model = SparseGP(n_sparse=10, random_state=np.int64(3)).fit(frames)
    assert model.log_marginal_likelihood_value_ is not None
    model.set_params(hyperparameters="fixed").fit(frames[:2])
    assert getattr(model, "log_marginal_likelihood_value_", None) is None
    loaded = gpal.load(model.save(tmp_path / "seeded.npz"))
    assert loaded.random_state == 3 and type(loaded.random_state) is int


def test_corrupted_model_files(tmp_path, cu_model):
    path = cu_model.save(tmp_path / "model.npz")
    raw = path.read_bytes()
    trunc = tmp_path / "trunc.npz"
    trunc.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(gpal.ModelFileError):
        gpal.load(trunc)
    # tamper with one array but keep the metadata
    with np.load(path, allow_pickle=False) as npz:
        data = {k: npz[k] for k in npz.files}
    data["alpha"] = data["alpha"] * 1.01
    tampered = tmp_path / "tampered.npz"
    np.savez(tampered, **data)
    with pytest.raises(gpal.ModelFileError, match="alpha"):
        gpal.load(tampered)
    with pytest.raises(gpal.ModelFileError):
        gpal.load(tmp_path / "missing.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip file at all")
    with pytest.raises(gpal.ModelFileError):
        gpal.load(junk)
    # edit the metadata (a kernel's ζ), keep the arrays: its checksum finds it
    import json

    meta = json.loads(data["__metadata__"].tobytes())
    data["alpha"] = data["alpha"] / 1.01
    for edit, match in ((lambda m: m["kernel"]["params"].update(zeta=3), "metadata does not match"),
                        (lambda m: m.update(format_version=True), "is not a format version"),
                        (lambda m: m.update(format_version=99), "newer than this gpal reads")):
        m = json.loads(json.dumps(meta))
        edit(m)
        data["__metadata__"] = np.frombuffer(json.dumps(m).encode(), dtype=np.uint8)
        np.savez(tampered, **data)
        with pytest.raises(gpal.ModelFileError, match=match):
            gpal.load(tampered)
    # a null where a table belongs, in a file written by a script with its checksum made
    # anew: an AttributeError escaped gpal.load
    from gpal.io import _metadata_digest

    for key in ("noise", "calibration", "hyperparameters"):
        m = json.loads(json.dumps(meta))
        m[key] = None
        m.pop("metadata_digest", None)
        m["metadata_digest"] = _metadata_digest(m)
        data["__metadata__"] = np.frombuffer(json.dumps(m).encode(), dtype=np.uint8)
        np.savez(tampered, **data)
        with pytest.raises(gpal.ModelFileError, match="inconsistent model file"):
            gpal.load(tampered)
    # one bit flipped in the zip directory: a zip version or compression method zipfile
    # does not know (NotImplementedError), or the "encrypted" flag (RuntimeError), escaped
    # gpal.load as a traceback
    entry = raw.rfind(b"PK\x01\x02", 0, raw.rfind(b"__metadata__"))
    for offset, bit in ((6, 0x80), (8, 0x01), (10, 0x01)):
        flipped = bytearray(raw)
        flipped[entry + offset] ^= bit
        bad = tmp_path / "flipped.npz"
        bad.write_bytes(bytes(flipped))
        with pytest.raises(gpal.ModelFileError, match="not a readable gpal model"):
            gpal.load(bad)
    # save("name") writes name.npz: load("name") reads it though a file "name" is there
    cu_model.save(tmp_path / "named")
    (tmp_path / "named").write_text("my notes")
    assert gpal.load(tmp_path / "named").predict(cu_frames(1, seed=3)[0])["energy"] == pytest.approx(
        cu_model.predict(cu_frames(1, seed=3)[0])["energy"])
    (tmp_path / "folder.npz").mkdir()  # (overwrite=True was offered, then failed naming a temporary file)
    for overwrite in (None, True):
        with pytest.raises(IsADirectoryError, match="folder.npz is a folder, not a file name"):
            cu_model.save(tmp_path / "folder.npz", overwrite=overwrite)


def test_squared_exponential_kernel_fits(cu_train):
    model = SparseGP(soap_for(cu_train), SquaredExponential(length_scale=0.5), n_sparse=30).fit(cu_train)
    a = cu_frames(1, seed=61)[0]
    pred = model.predict(a)
    np.testing.assert_allclose(pred["forces"], _fd_forces(model, a), atol=2e-6)


def test_species_without_training_data_warns(cu_train):
    desc = SOAP(species=["Cu", "Au"], periodic=True, weighting=POLY, **SMALL_SOAP)
    with pytest.warns(UserWarning, match="Au"):
        SparseGP(desc, n_sparse=20).fit(cu_train)


def test_rare_species_gets_a_fair_share_of_sparse_points(cu_train):
    frames = cu_train[:5] + cuag_frames(1, seed=3)  # Ag is a few per cent of environments
    model = SparseGP(soap_for(frames), n_sparse=40).fit(frames)
    n_ag = int(np.count_nonzero(model.sparse_species_ == 47))
    n_ag_envs = sum(int(np.count_nonzero(a.numbers == 47)) for a in frames)
    assert n_ag == min(n_ag_envs, 10)  # at least half an equal share, capped by availability


@pytest.mark.parametrize("kernel", [NormalizedDotProduct(zeta=4, signal_variance=2.0), SquaredExponential(length_scale=0.5)])
def test_lml_gradient_matches_finite_differences(cu_train, kernel):
    """Noise groups (energy, force, stress) and kernel hyperparameters, through real rows."""
    model = SparseGP(soap_for(cu_train), kernel, n_sparse=20).fit(cu_train[:3])
    theta = np.concatenate([np.log([0.003, 0.06, 0.004]), model.kernel_.theta])
    lml, grad = model.log_marginal_likelihood(theta, eval_gradient=True)
    h = 1e-5
    fd = np.array([
        (model.log_marginal_likelihood(theta + h * e) - model.log_marginal_likelihood(theta - h * e)) / (2 * h)
        for e in np.eye(len(theta))
    ])
    np.testing.assert_allclose(grad, fd, rtol=1e-4, atol=1e-4 * np.abs(fd).max())
    before = model.log_marginal_likelihood()
    model.optimize_hyperparameters()
    assert model.log_marginal_likelihood() >= before - 1e-8


def test_residuals_match_direct_predictions(cu_model):
    frames = cu_frames(2, seed=71)
    res = cu_model.residuals(frames)
    p = cu_model.predict(frames[1], return_std=True, forces_std=True)
    n = len(frames[1])
    assert res["energy_error"][1] == pytest.approx((p["energy"] - frames[1].get_potential_energy()) / n)
    np.testing.assert_allclose(res["force_error"][-3 * n:], (p["forces"] - frames[1].get_forces()).ravel())
    np.testing.assert_allclose(res["force_std"][-3 * n:], np.maximum(p["forces_std"].ravel(), 1e-12))
    assert list(res["n_atoms"]) == [len(a) for a in frames]


# --------------------------------------------------------------------------- loop support
def test_novelty_is_zero_on_sparse_points_and_grows_for_new_environments(cu_train):
    model = SparseGP(soap_for(cu_train), n_sparse=40).fit(cu_train)
    frame = cu_train[0]
    p = model.predict(frame, return_std=True)
    assert p["novelty"].shape == (len(frame),)
    assert np.all((p["novelty"] >= 0) & (p["novelty"] <= 1))
    # an environment that is itself a sparse point is fully explained by the sparse set
    X = model.descriptor_.create(frame)
    Zn = model.sparse_X_ / np.linalg.norm(model.sparse_X_, axis=1, keepdims=True)
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    is_sparse = np.max(Xn @ Zn.T, axis=1) > 1 - 1e-12
    assert is_sparse.any() and np.all(p["novelty"][is_sparse] < 1e-6)
    far = bulk("Cu", "fcc", a=3.1, cubic=True).repeat((1, 1, 2))  # 14 % compressed
    far.positions += np.random.default_rng(0).normal(0, 0.05, far.positions.shape)
    assert model.predict(far, return_std=True)["novelty"].min() > 10 * p["novelty"].max()


@pytest.mark.parametrize("n_sparse", [30, 40])
def test_leave_one_frame_out_equals_a_refit_without_the_frame(cu_train, n_sparse):
    # fixed noises: the tolerances are set for their conditioning. A frame's 31 observations
    # against 30 sparse points take the sparse-space (Woodbury) form, against 40 the
    # observations' own
    model = SparseGP(soap_for(cu_train), n_sparse=n_sparse, hyperparameters="fixed").fit(cu_train[:5])
    loo = model.loo_residuals()
    sol = model.solver_
    for b in range(5):
        ref, rows = refit_without_frame(model, b)
        A = sol.K_nm_[rows]
        forces = model.obs_group_[rows] == 1
        err = (A @ ref.alpha_ - sol.y_[rows])[forces]
        std = np.sqrt(ref.var_sor(A))[forces]
        mine = loo["force_frame"] == b
        assert np.abs(err).max() > 1e-4  # a real held-out error, not the training fit
        np.testing.assert_allclose(loo["force_error"][mine], err, atol=1e-8)
        np.testing.assert_allclose(loo["force_std"][mine], std, atol=1e-9)
        energy = model.obs_group_[rows] == 0
        e_ref = (A @ ref.alpha_ - sol.y_[rows])[energy] / len(model.frames_[b])
        np.testing.assert_allclose(loo["energy_error"][loo["energy_frame"] == b], e_ref, atol=1e-9)


def test_calibration_with_noise_is_the_std_of_a_new_label(cu_model):
    model = copy.deepcopy(cu_model)
    frame = cu_frames(1, seed=41)[0]
    raw = model.predict(frame, forces_std=True)["forces_std"]
    model.set_calibration(forces_std={"scale": 1.7, "noise_scale": 0.6})
    cal = model.predict(frame, forces_std=True, calibrated=True)["forces_std"]
    np.testing.assert_allclose(cal, np.sqrt((1.7 * raw) ** 2 + (0.6 * model.noise_["force"]) ** 2))
    np.testing.assert_allclose(model.calibrated_force_std(raw), cal)
    model.set_calibration(forces_std={"scale": 2.0})
    np.testing.assert_allclose(model.predict(frame, forces_std=True, calibrated=True)["forces_std"], 2 * raw)


def test_calibration_novelty_term_uses_each_atoms_novelty(cu_model, tmp_path):
    """forces_std calibrated with a novelty term: sqrt((s σ)² + (n σ_n)² + c² ν_atom) for
    each component, with ν what predict(return_std=True) and novelty() give; the same
    whether or not the local stds are asked for, and through a save/load."""
    model = copy.deepcopy(cu_model)
    frame = cu_frames(1, seed=44, rattle=0.2)[0]
    raw = model.predict(frame, return_std=True, forces_std=True)
    nu = raw["novelty"]
    assert nu.max() > 1e-7  # a strongly rattled frame: environments away from the sparse set
    # (the same terms; predict's row pass and novelty()'s numpy kernel call sum in other
    # orders, and k(x,x) - |w|² cancels ~8 digits)
    np.testing.assert_allclose(model.novelty(frame), nu, rtol=1e-6, atol=1e-15)
    model.set_calibration(forces_std={"scale": 1.7, "noise_scale": 0.6, "novelty_scale": 30.0,
                                      "conformal_q90": 1.5})
    want = np.sqrt((1.7 * raw["forces_std"]) ** 2 + (0.6 * model.noise_["force"]) ** 2 + 900.0 * nu[:, None])
    got = model.predict(frame, forces_std=True, calibrated=True)
    np.testing.assert_allclose(got["forces_std"], want, rtol=1e-12)
    np.testing.assert_allclose(got["forces_interval90"], 1.5 * want, rtol=1e-12)
    assert "novelty" not in got and "energies_std" not in got
    np.testing.assert_allclose(model.predict(frame, return_std=True, forces_std=True, calibrated=True)["forces_std"],
                               want, rtol=1e-12)
    np.testing.assert_allclose(model.calibrated_force_std(raw["forces_std"], nu), want, rtol=1e-12)
    with pytest.raises(ValueError, match="novelty"):
        model.calibrated_force_std(raw["forces_std"])
    # without the term (novelty_scale 0) the atoms' novelty changes nothing
    plain = np.sqrt((1.7 * raw["forces_std"]) ** 2 + (0.6 * model.noise_["force"]) ** 2)
    assert np.max(np.abs(want - plain)) > 1e-3 * np.max(plain)
    # ν beyond the range the term was fitted on counts as its largest value
    model.set_calibration(forces_std={"scale": 1.7, "noise_scale": 0.6, "novelty_scale": 30.0,
                                      "novelty_max": float(np.median(nu)), "conformal_q90": 1.5})
    cap = np.sqrt((1.7 * raw["forces_std"]) ** 2 + (0.6 * model.noise_["force"]) ** 2
                  + 900.0 * np.minimum(nu, np.median(nu))[:, None])
    np.testing.assert_allclose(model.predict(frame, forces_std=True, calibrated=True)["forces_std"], cap, rtol=1e-12)
    assert np.all(cap <= want) and np.any(cap < want)
    model.set_calibration(forces_std={"scale": 1.7, "noise_scale": 0.6, "novelty_scale": 30.0,
                                      "conformal_q90": 1.5})
    back = SparseGP.load(model.save(tmp_path / "m.npz"))
    assert back.calibration_of("forces_std").novelty_scale == 30.0
    np.testing.assert_allclose(back.predict(frame, forces_std=True, calibrated=True)["forces_std"], want, rtol=1e-10)


def test_loo_novelty_is_each_training_atoms_novelty(cu_model):
    loo = cu_model.loo_residuals([0, 2])
    for b in (0, 2):
        mine = loo["force_frame"] == b
        np.testing.assert_array_equal(loo["force_novelty"][mine], np.repeat(cu_model.novelty(cu_model.frames_[b]), 3))
    assert loo["force_novelty"].shape == loo["force_error"].shape


def test_stored_calibration_is_checked_and_survives_save_load(cu_model, tmp_path):
    """One calibration form for model, file, learner and CLI: a misspelt key is refused
    (the CLI once stored ``conformal``, which the learner never read)."""
    from gpal.calibration import Calibration

    model = copy.deepcopy(cu_model)
    frame = cu_frames(1, seed=43)[0]
    with pytest.warns(UserWarning, match="no calibration"):  # nothing stored: raw stds, said
        raw = model.predict(frame, forces_std=True, calibrated=True)["forces_std"]
    np.testing.assert_array_equal(raw, model.predict(frame, forces_std=True)["forces_std"])
    with pytest.raises(ValueError, match="unknown calibration keys"):
        model.set_calibration(forces_std={"scale": 1.2, "conformal_q": 2.0})
    with pytest.raises(ValueError, match="scale must be"):
        model.set_calibration(forces_std={"scale": -1.0})
    model.set_calibration(forces_std=Calibration(scale=1.3, noise_scale=0.4, conformal_q90=1.8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        before = model.predict(frame, forces_std=True, calibrated=True)["forces_std"]
    back = SparseGP.load(model.save(tmp_path / "m.npz"))
    assert back.calibration_of("forces_std") == Calibration(1.3, 0.4, 1.8)
    np.testing.assert_allclose(back.predict(frame, forces_std=True, calibrated=True)["forces_std"], before,
                               rtol=1e-12)
    # gpal 0.1's CLI form: a quantile of |error| / raw std, read in calibrated units
    assert Calibration.from_dict({"scale": 2.0, "conformal": 3.0}).conformal_q90 == 1.5


def test_calibrated_prediction_gives_the_conformal_90_interval(cu_model):
    """``forces_interval90`` = conformal_q90 x the calibrated std of a force label, only when
    the stored calibration has the quantile; the calculator passes it on."""
    import ase.calculators.calculator as ase_calc

    from gpal import GPCalculator

    model = copy.deepcopy(cu_model)
    frame = cu_frames(1, seed=44)[0]
    model.set_calibration(forces_std={"scale": 1.5, "noise_scale": 0.5})
    p = model.predict(frame, forces_std=True, calibrated=True)
    assert "forces_interval90" not in p  # no quantile stored
    model.set_calibration(forces_std={"scale": 1.5, "noise_scale": 0.5, "conformal_q90": 1.7})
    p = model.predict(frame, forces_std=True, calibrated=True)
    raw = model.predict(frame, forces_std=True)
    assert "forces_interval90" not in raw  # uncalibrated: stds only
    expected = 1.7 * np.sqrt((1.5 * raw["forces_std"]) ** 2 + (0.5 * model.noise_["force"]) ** 2)
    np.testing.assert_allclose(p["forces_interval90"], expected, rtol=1e-12)
    calc = GPCalculator(model, forces_std=1, calibrated=True)
    a = frame.copy()
    a.calc = calc
    a.get_forces()
    np.testing.assert_allclose(calc.get_uncertainty(a, "forces_interval90"), expected, rtol=1e-12)
    assert "forces_interval90" not in ase_calc.all_outputs
    b = frame.copy()
    b.calc = GPCalculator(model, calibrated=False)  # raw stds: no interval, and a clear error
    with pytest.raises(ValueError, match="calibrated=True"):
        b.calc.get_uncertainty(b, "forces_interval90")


def test_refreshing_the_sparse_set_lets_the_force_std_see_a_new_environment(cu_train):
    """Novel environments join the sparse set without a label: their novelty drops, and
    the projected force std there does not (it now includes their prior uncertainty)."""
    model = SparseGP(soap_for(cu_train), n_sparse=40).fit(cu_train)
    far = bulk("Cu", "fcc", a=3.1, cubic=True).repeat((1, 1, 2))  # 14 % compressed
    far.positions += np.random.default_rng(0).normal(0, 0.05, far.positions.shape)
    near = cu_frames(1, seed=31)[0]
    before = model.predict(far, return_std=True, forces_std=True)
    ref = model.predict(near, return_std=True, forces_std=True)
    assert before["novelty"].max() > 5 * ref["novelty"].max()
    added = model.add_sparse_environments(far, 8)
    after = model.predict(far, return_std=True, forces_std=True)
    assert added > 0 and after["novelty"].max() < 0.1 * before["novelty"].max()
    assert after["forces_std"].max() >= before["forces_std"].max()
    assert after["forces_std"].max() > 3 * ref["forces_std"].max()


def test_model_kernel_and_descriptor_follow_the_scikit_learn_estimator_api():
    """BaseEstimator: clone gives an unfitted copy with equal (not shared) parameters;
    nested ``descriptor__``/``kernel__`` parameters are read and set as scikit-learn does."""
    from sklearn.base import BaseEstimator, clone

    from gpal import NormalizedDotProduct

    desc = SOAP(species=["Cu"], r_cut=3.5, n_max=3, l_max=2, periodic=True)
    model = SparseGP(desc, NormalizedDotProduct(zeta=2), force_noise=0.07, n_sparse=30)
    assert isinstance(model, BaseEstimator) and isinstance(model.kernel, BaseEstimator)
    twin = clone(model)
    assert twin is not model and twin.descriptor is not desc and twin.kernel is not model.kernel
    assert twin.get_params(deep=False).keys() == model.get_params(deep=False).keys()
    deep = twin.get_params(deep=True)
    assert deep["descriptor__l_max"] == 2 and deep["kernel__zeta"] == 2 and deep["force_noise"] == 0.07
    twin.set_params(descriptor__l_max=3, kernel__zeta=4, n_sparse=20)
    assert (twin.descriptor.l_max, twin.kernel.zeta, twin.n_sparse) == (3, 4, 20)
    assert (desc.l_max, model.kernel.zeta) == (2, 2)  # the original is untouched
    with pytest.raises(ValueError, match="Invalid parameter"):
        twin.set_params(descriptor__rcut=4.0)
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    with pytest.raises(NotFittedError):
        check_is_fitted(model)
    with pytest.raises(NotFittedError):  # gpal's own error is scikit-learn's too
        model.predict(cu_frames(1, seed=5)[0])
    fitted = clone(model).fit(cu_frames(2, seed=5))
    check_is_fitted(fitted)
    assert getattr(clone(fitted), "alpha_", None) is None  # a clone is never fitted


def test_observation_rows_are_the_linear_map_from_weights_to_predictions(cu_model):
    """Public rows: energy, forces and stress of a frame are its rows times alpha_ (plus e0)."""
    frame = cu_frames(1, seed=47)[0]
    rows, pred = cu_model.observation_rows(frame), cu_model.predict(frame)
    e0 = sum(cu_model.e0_[int(z)] for z in frame.numbers)
    assert rows.energy @ cu_model.alpha_ + e0 == pytest.approx(pred["energy"], rel=1e-10)
    np.testing.assert_allclose(rows.forces @ cu_model.alpha_, pred["forces"], atol=1e-10)
    np.testing.assert_allclose(rows.stress @ cu_model.alpha_, pred["stress"], atol=1e-12)
    np.testing.assert_allclose(cu_model.local_kernel(frame).sum(axis=0), rows.energy, rtol=1e-12)


def test_fit_with_progress_shows_its_passes_and_fits_the_same(capsys):
    """fit(progress=True): bars on stderr over the frame passes (descriptors, the
    evidence's rankings, kernel rows), cleared when done; the same model as without."""
    frames = cu_frames(4, seed=21, size=(2, 2, 2))
    quiet = SparseGP(n_sparse=20).fit(frames)
    assert capsys.readouterr().err == ""
    shown = SparseGP(n_sparse=20).fit(frames, progress=True)
    err = capsys.readouterr().err
    assert "descriptors" in err and "evidence of" in err
    assert not getattr(shown, "_fit_progress")  # (off again after the fit)
    np.testing.assert_array_equal(shown.alpha_, quiet.alpha_)
    fixed = SparseGP(n_sparse=20, hyperparameters="fixed").fit(frames, progress=True)
    assert "kernel rows" in capsys.readouterr().err and fixed.alpha_ is not None


def test_warnings_point_at_the_users_line():
    """A warning from inside fit or predict (past gpal's own calls and thread-policy
    wrappers) names the caller's file and line, not gpal's."""
    frames = cu_frames(2, seed=5)
    soap = SOAP(species=["Cu", "Ag"], periodic=False, **SMALL_SOAP)  # Ag in no frame; pbc ignored
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = SparseGP(soap, n_sparse=10, hyperparameters="fixed").fit(frames)
        model.predict(frames[0])
    texts = [str(w.message) for w in caught]
    assert any("periodic=False" in t for t in texts) and any("in no training frame" in t for t in texts)
    assert {w.filename for w in caught} == {__file__}


def test_score_and_scikit_learn_model_selection():
    """score is the R² of the force components; cross_val_score and GridSearchCV use it
    (fit(X, y=None) as scikit-learn calls it)."""
    from sklearn.model_selection import GridSearchCV, cross_val_score

    frames = cu_frames(6, seed=21)
    soap = SOAP(species=["Cu"], periodic=True, weighting=POLY, **SMALL_SOAP)
    model = SparseGP(soap, n_sparse=15, hyperparameters="fixed").fit(frames[:4])
    F = np.concatenate([a.get_forces().ravel() for a in frames[4:]])
    P = np.concatenate([model.predict(a)["forces"].ravel() for a in frames[4:]])
    r2 = 1 - np.sum((F - P) ** 2) / np.sum((F - F.mean()) ** 2)
    assert model.score(frames[4:]) == pytest.approx(r2, rel=1e-12) and 0.5 < r2 < 1
    scores = cross_val_score(SparseGP(soap, n_sparse=15, hyperparameters="fixed"), frames, cv=3)
    assert scores.shape == (3,) and np.all(scores > 0.5)
    grid = GridSearchCV(SparseGP(soap, n_sparse=15, hyperparameters="fixed"),
                        {"kernel": [NormalizedDotProduct(zeta=2), NormalizedDotProduct(zeta=4)]}, cv=3).fit(frames)
    assert grid.best_params_["kernel"].zeta in (2, 4) and grid.best_estimator_.score(frames) > 0.5
    with pytest.raises(TypeError, match="y must be None"):
        SparseGP(soap).fit(frames, np.zeros(6))
    # named scikit-learn scorers need a y and fail on frames; gpal.scorer reads the labels
    rmse = np.sqrt(np.mean((F - P) ** 2))
    assert gpal.scorer("force_rmse")(model, frames[4:]) == pytest.approx(-rmse, rel=1e-12)
    assert gpal.scorer("force_r2")(model, frames[4:]) == pytest.approx(r2, rel=1e-12)
    E = np.array([(model.predict(a)["energy"] - a.get_potential_energy()) / len(a) for a in frames[4:]])
    assert gpal.scorer("energy_rmse")(model, frames[4:]) == pytest.approx(-np.sqrt(np.mean(E**2)), rel=1e-12)
    S = np.concatenate([model.predict(a)["stress"] - a.get_stress() for a in frames[4:]])
    assert gpal.scorer("stress_rmse")(model, frames[4:]) == pytest.approx(-np.sqrt(np.mean(S**2)), rel=1e-12)
    scores = cross_val_score(SparseGP(soap, n_sparse=15, hyperparameters="fixed"), frames, cv=3,
                             scoring=gpal.scorer("force_rmse"))
    assert scores.shape == (3,) and np.all(scores < 0) and np.all(np.isfinite(scores))
    with pytest.raises(ValueError, match="unknown metric 'rmse'; choose one of force_rmse"):
        gpal.scorer("rmse")


def test_labels_that_cannot_be_right_as_given_warn():
    from ase.calculators.singlepoint import SinglePointCalculator

    frames = cu_frames(3, seed=31)
    forces_only = []
    virial_as_stress = []
    for a in frames:
        b = a.copy()
        b.calc = SinglePointCalculator(b, forces=a.get_forces())
        forces_only.append(b)
        c = a.copy()
        c.calc = SinglePointCalculator(c, energy=a.get_potential_energy(), forces=a.get_forces(),
                                       stress=-a.get_stress() * a.get_volume())  # a virial, eV
        virial_as_stress.append(c)
    soap = SOAP(species=["Cu"], periodic=True, weighting=POLY, **SMALL_SOAP)
    with pytest.warns(UserWarning, match="no training frame has an energy label"):
        SparseGP(soap, n_sparse=10, hyperparameters="fixed").fit(forces_only)
    with pytest.warns(UserWarning, match=r"a stress label of .* GPa, tensile or shear above 160 GPa.*\): stress is in eV/Å\^3"):
        SparseGP(soap, n_sparse=10, hyperparameters="fixed").fit(virial_as_stress)
    from ase.constraints import FixAtoms

    fixed = []
    for a in frames:
        b = a.copy()
        b.set_constraint(FixAtoms(indices=[0, 1]))
        b.calc = EMT()
        b.calc = SinglePointCalculator(b, energy=b.get_potential_energy(), forces=b.get_forces())  # zeroed
        fixed.append(b)
    with pytest.warns(UserWarning, match=r"frames\[0\]: the forces of its 2 fixed atoms \(FixAtoms\) are all zero"):
        SparseGP(soap, n_sparse=10, hyperparameters="fixed").fit(fixed)
    # a real stress of a compressed cell (-300 GPa) is no virial
    squeezed = bulk("Cu", "fcc", a=2.9, cubic=True)
    squeezed.calc = EMT()
    squeezed.get_stress()
    assert squeezed.get_stress()[:3].max() < -1.5  # eV/Å^3: beyond 240 GPa of compression
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gpal._validation.warn_implausible_labels([squeezed], [gpal._validation.frame_labels(squeezed)])
    # energies in meV with forces in eV/Å: consecutive frames' energy changes are 1000x the
    # forces' work (consistent labels: about 1)
    same_cell = []
    for k in range(5):
        a = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 2, 2))
        a.rattle(0.05, seed=k)
        a.calc = EMT()
        a.get_forces()  # (labels: the calculator's results)
        same_cell.append(a)
    from gpal._validation import energy_work_ratio as _energy_work_ratio

    plain = [gpal._validation.frame_labels(a) for a in same_cell]
    assert 0.8 < _energy_work_ratio(same_cell, plain) < 1.25
    in_mev = []
    for a in same_cell:
        b = a.copy()
        b.calc = SinglePointCalculator(b, energy=1000 * a.get_potential_energy(), forces=a.get_forces())
        in_mev.append(b)
    with pytest.warns(UserWarning, match=r"the energy labels change .*x as much as the forces' work"):
        SparseGP(soap, n_sparse=10, hyperparameters="fixed").fit(in_mev)

    def relabelled(force_factor):
        out = []
        for a in same_cell:
            b = a.copy()
            b.calc = SinglePointCalculator(b, energy=a.get_potential_energy(), forces=force_factor * a.get_forces())
            out.append(b)
        return [gpal._validation.frame_labels(b) for b in out], out

    labels_bohr, per_bohr = relabelled(0.529177)  # forces in eV/bohr
    assert 1.6 < _energy_work_ratio(per_bohr, labels_bohr) < 2.2
    with pytest.warns(UserWarning, match="forces per bohr give 1.9"):
        SparseGP(soap, n_sparse=10, hyperparameters="fixed").fit(per_bohr)
    with pytest.warns(UserWarning, match=r"forces with the wrong sign \(an energy gradient\)"):
        SparseGP(soap, n_sparse=10, hyperparameters="fixed").fit(relabelled(-1.0)[1])
    # every other frame's energy in meV: the ratios' median is large, of either sign (a
    # negative one was said as forces of the wrong sign)
    mixed = [a if k % 2 else b for k, (a, b) in enumerate(zip(same_cell, in_mev))]
    assert abs(_energy_work_ratio(mixed, [gpal._validation.frame_labels(b) for b in mixed])) > 10
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        SparseGP(soap, n_sparse=10, hyperparameters="fixed").fit(mixed)
    said = " ".join(str(w.message) for w in caught)
    assert "frames whose energies are in different units" in said and "wrong sign" not in said
    with pytest.warns(UserWarning, match=r"frames\[3\] repeats frames\[1\]"):
        SparseGP(soap, n_sparse=10, hyperparameters="fixed").fit(frames + [frames[1]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SparseGP(soap, n_sparse=10, hyperparameters="fixed").fit(frames)  # plausible: no warning


def test_stress_labels_with_the_pressures_sign_warn():
    """A volume scan and shears labelled with the stress's sign flipped (the pressure's
    convention some codes print): the energies change opposite to the stresses' work. The
    evidence otherwise took the stress noise to 12 GPa without a word."""
    from gpal._validation import frame_labels, stress_work_ratio, warn_implausible_labels

    rng = np.random.default_rng(3)
    frames = []
    for k in range(8):
        a = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))
        strain = np.eye(3) + np.diag([0.01 * (k - 4)] * 3) + 0.004 * rng.uniform(-1, 1, (3, 3))
        a.set_cell(a.cell.array @ strain, scale_atoms=True)
        a.positions += rng.normal(0, 0.01, a.positions.shape)
        a.calc = EMT()
        a.get_stress()
        frames.append(a)
    labels = [frame_labels(a) for a in frames]
    assert 0.8 < stress_work_ratio(frames, labels) < 1.25
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_implausible_labels(frames, labels)
    flipped = []
    for a in frames:
        b = a.copy()
        b.calc = SinglePointCalculator(b, energy=a.get_potential_energy(), forces=a.get_forces(),
                                       stress=-a.get_stress())
        flipped.append(b)
    assert -1.25 < stress_work_ratio(flipped, [frame_labels(b) for b in flipped]) < -0.8
    with pytest.warns(UserWarning, match=r"stress labels' work .* the pressure's sign"):
        warn_implausible_labels(flipped, [frame_labels(b) for b in flipped])
    # rotated copies of a compressed cell: a rotation does no work (no strain, no warning)
    rotated = []
    for k in range(6):
        a = bulk("Cu", "fcc", a=3.55, cubic=True).repeat((2, 2, 2))
        a.rotate(4.0 * k, "z", rotate_cell=True)
        a.calc = EMT()
        a.get_stress()
        rotated.append(a)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_implausible_labels(rotated, [frame_labels(a) for a in rotated])


def test_molecules_in_a_vacuum_box_are_fitted_as_clusters():
    """ase.build.molecule + center(vacuum=...): a cell, pbc all False. The evidence fit
    stacks non-periodic frames and refused these ("frames with a cell are done one at a
    time"); they are clusters, fitted as the same molecules without a cell are."""
    from ase.build import molecule

    boxed, bare = [], []
    for k in range(3):
        m = molecule("CH3OH")
        m.center(vacuum=4.0)
        m.rattle(0.05, seed=k)
        m.calc = EMT()
        m.get_forces()
        boxed.append(m)
        b = m.copy()
        b.cell = None
        b.calc = SinglePointCalculator(b, energy=m.get_potential_energy(), forces=m.get_forces())
        bare.append(b)
    assert not boxed[0].pbc.any() and boxed[0].cell.volume > 0
    models = [SparseGP(n_sparse=12, random_state=0).fit(f) for f in (boxed, bare)]
    assert models[0].zeta_ == models[1].zeta_
    p, q = (m.predict(boxed[0], return_std=True) for m in models)
    for key in ("energy", "forces", "energies_std"):
        np.testing.assert_allclose(p[key], q[key], rtol=1e-8, atol=1e-10)


def test_a_block_of_frames_in_other_energy_units_is_named():
    """Six frames in eV and six in kcal/mol (two files joined) gave only the warning of an
    energy noise at its upper bound; each block alone is self-consistent, so the work
    ratio of consecutive frames does not see it."""
    from gpal._validation import frame_labels, mixed_energy_units

    rng = np.random.default_rng(0)
    frames = []
    for k in range(12):
        a = bulk("Cu", "fcc", a=3.61, cubic=True)
        a.positions += rng.normal(0, 0.05, a.positions.shape)
        e = -3.5 * len(a) + rng.normal(0, 0.02)  # DFT-like energies per atom
        scale = 23.0605 if k >= 8 else 1.0  # the last 4 in kcal/mol
        a.calc = SinglePointCalculator(a, energy=scale * e, forces=rng.normal(0, 0.1, (len(a), 3)))
        frames.append(a)
    labels = [frame_labels(a) for a in frames]
    assert mixed_energy_units(frames, labels) == ("kcal/mol", [8, 9, 10, 11])
    with pytest.warns(UserWarning, match=r"kcal/mol apart: frames\[8\], frames\[9\], frames\[10\], frames\[11\] "
                                         "look like energies in another unit"):
        from gpal._validation import warn_implausible_labels

        warn_implausible_labels(frames, labels)
    # EMT-like energies near zero, a hot group and a cold one, a second composition: nothing
    for f in frames[8:]:
        f.calc.results["energy"] /= 23.0605
    assert mixed_energy_units(frames, [frame_labels(a) for a in frames]) is None
    near_zero = [a.copy() for a in frames]
    for k, a in enumerate(near_zero):
        a.calc = SinglePointCalculator(a, energy=(0.01 if k < 6 else 0.2306) * len(a), forces=np.zeros((len(a), 3)))
    assert mixed_energy_units(near_zero, [frame_labels(a) for a in near_zero]) is None


def test_consistent_labels_of_rattled_slabs_raise_no_unit_warning():
    """Independently rattled copies of small EMT slabs (consistent labels): the median of
    the pairs' ΔE / work was 0.13-0.43 on a Cu(111) slab and warned of energies and forces
    in different units (and -0.65, of forces of the wrong sign, at 0.02 Å on other seeds). The slope over
    the pairs, said only when the pairs agree, does not; energies in meV and forces of the
    wrong sign on the same frames still warn."""
    from ase.build import fcc111

    from gpal._validation import energy_work_ratio, frame_labels, warn_implausible_labels

    for amp, seeds in ((0.05, range(5)), (0.02, range(100, 106))):
        frames = []
        for k in seeds:
            a = fcc111("Cu", (2, 2, 3), vacuum=5, a=3.61)
            a.rattle(amp, seed=k)
            a.calc = EMT()
            a.get_forces()
            frames.append(a)
        labels = [frame_labels(a) for a in frames]
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            warn_implausible_labels(frames, labels)
        if amp < 0.05:
            continue  # (its work is above 1 meV on too few pairs for a verdict either way)
        ratio, agree = energy_work_ratio(frames, labels, agreement=True)
        assert 0.4 < ratio < 0.6 and agree < 0.75  # (outside the range, but the pairs disagree)
        for e_factor, f_factor, said in ((1000.0, 1.0, "x as much as the forces' work"),
                                         (1.0, -1.0, "opposite to the forces' work")):
            bad = []
            for a in frames:
                b = a.copy()
                b.calc = SinglePointCalculator(b, energy=e_factor * a.get_potential_energy(),
                                               forces=f_factor * a.get_forces())
                bad.append(b)
            with pytest.warns(UserWarning, match=said):
                warn_implausible_labels(bad, [frame_labels(b) for b in bad])


def test_an_energy_noise_far_above_the_forces_is_said():
    """Bulk cells beside Cu(111) slabs, a coarse SOAP: the evidence took the energy noise to
    0.14 eV/atom (39 Å times the force noise), the model let the energy labels go (slab
    energies 47 meV/atom off, the surface energy 26 % low) and nothing was said. With the
    energy noise given nothing is said; the bulk cells alone say nothing either."""
    from ase.build import fcc111

    from conftest import label

    bulk_cells = cu_frames(4, seed=1, size=(2, 2, 2))
    slabs = []
    for k in range(4):
        s = fcc111("Cu", (2, 2, 3), vacuum=5, a=3.61)
        s.rattle(0.05, seed=k)
        slabs.append(label(s))
    soap = SOAP(species=["Cu"], periodic=True, weighting=POLY, **SMALL_SOAP)
    with pytest.warns(UserWarning, match=r"energy noise of .* Å times the force noise"):
        SparseGP(soap, n_sparse=100).fit(bulk_cells + slabs)
    for frames, kw in ((bulk_cells + slabs, {"energy_noise": 0.001}), (bulk_cells, {})):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            SparseGP(soap, n_sparse=100, **kw).fit(frames)
        assert not [w for w in caught if "times the force noise" in str(w.message)]


def test_stress_labels_of_the_pressures_sign_on_independent_frames_are_said():
    """Independently rattled and strained cells (no consecutive pairs for the work check)
    with the stress's sign flipped: fitted without a word, energies 400x worse and stresses
    7 GPa off. The evidence's stress noise, far above the forces', now says so."""
    frames = []
    for a in cu_frames(8, seed=31, size=(2, 2, 2)):
        b = a.copy()
        b.calc = SinglePointCalculator(b, energy=a.get_potential_energy(), forces=a.get_forces(),
                                       stress=-a.get_stress())
        frames.append(b)
    soap = SOAP(species=["Cu"], periodic=True, weighting=POLY, **SMALL_SOAP)
    with pytest.warns(UserWarning, match=r"stress noise of .* times the force noise .* pressure's sign"):
        SparseGP(soap, n_sparse=60).fit(frames)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        SparseGP(soap, n_sparse=60).fit(cu_frames(8, seed=31, size=(2, 2, 2)))
    assert not [w for w in caught if "times the force noise" in str(w.message)]


def test_a_fitted_descriptor_changed_after_the_fit_is_named(tmp_path):
    """model.descriptor_.l_max = 3 after the fit gave 'Zh must have shape (m, 84) and
    alpha (m,); got (50, 105)', with nothing of why."""
    from ase.build import bulk
    from ase.calculators.emt import EMT

    from gpal import SOAP, SparseGP

    rng = np.random.default_rng(0)
    frames = []
    for _ in range(3):
        a = bulk("Cu", "fcc", a=3.6, cubic=True)
        a.positions += rng.normal(0, 0.05, a.positions.shape)
        a.calc = EMT()
        a.get_forces()
        frames.append(a)
    m = SparseGP(SOAP(["Cu"], r_cut=4.0, n_max=3, l_max=3, sigma=0.5, periodic=True), n_sparse=8,
                 hyperparameters="fixed").fit(frames)
    m.descriptor_.l_max = 2
    for call in (m.predict, m.novelty):
        with pytest.raises(ValueError, match=r"descriptor \(model.descriptor_\) was changed after the fit"):
            call(frames[0])


def test_an_atom_with_an_all_zero_descriptor_is_warned_of_once():
    """weighting w0 = 0 and an atom without neighbours: std 0 and novelty 0, as if known,
    with nothing said."""
    from ase import Atoms
    from ase.calculators.emt import EMT

    from gpal import SOAP, SparseGP

    w = {"function": "pow", "r0": 3.0, "c": 1.0, "d": 1.0, "m": 4, "threshold": 1e-2, "w0": 0.0}
    rng = np.random.default_rng(0)
    frames = []
    for _ in range(3):
        a = Atoms("Cu4", positions=[[0, 0, 0], [2.5, 0, 0], [0, 2.5, 0], [0, 0, 2.5]])
        a.positions += rng.normal(0, 0.05, (4, 3))
        a.calc = EMT()
        a.get_forces()
        frames.append(a)
    m = SparseGP(SOAP(["Cu"], n_max=3, l_max=2, weighting=w), n_sparse=6, hyperparameters="fixed").fit(frames)
    far = Atoms("Cu2", positions=[[0, 0, 0], [20, 0, 0]])
    with pytest.warns(UserWarning, match="2 atom.*all-zero descriptor"):
        m.predict(far, return_std=True)
    import warnings as _w
    with _w.catch_warnings():
        _w.simplefilter("error")
        m.predict(far, return_std=True)  # (once per model)
