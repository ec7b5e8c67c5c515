"""The prediction path's precomputed pieces against the plain computation they replace.

``SparseGP.predict`` normalises the sparse rows once per model, forms kernel values,
energies and the weighted gradient in one pass (``CosineKernel.prediction_terms``) and
computes the local-energy variances by triangular matrix products with precomputed
per-species factors (``_LocalStdFactors``). Each is checked here against the direct
formulas (kernel calls, triangular solves), on one- and two-species models, with the
chunk size made small so that several chunks are exercised, and
after the factorisation changes (new frames, new sparse points).
"""

from __future__ import annotations

import numpy as np
import pytest

import gpal.descriptors.soap as soap_module
import gpal.model.potential as potential
from gpal import SOAP, SparseGP
from gpal.descriptors import pair_forces, pair_stress
from gpal.kernels import NormalizedDotProduct, SquaredExponential

from conftest import POLY, SMALL_SOAP, cu_frames, cuag_frames


def soap_for(frames):
    species = sorted({int(z) for a in frames for z in a.numbers})
    return SOAP(species=species, periodic=True, weighting=POLY, **SMALL_SOAP)


def reference(model, atoms) -> dict:
    """Prediction by the direct formulas: per-species kernel calls, triangular solves."""
    exp = model.descriptor_.expand(atoms)
    X, numbers = exp.descriptor, atoms.numbers
    Z, zsp, alpha = model.sparse_X_, model.sparse_species_, model.alpha_
    N, M = len(atoms), len(Z)
    energies = model._e0_of(numbers).astype(float)
    G, K = np.zeros(X.shape), np.zeros((N, M))
    for z in np.unique(numbers):
        r, c = np.flatnonzero(numbers == z), np.flatnonzero(zsp == z)
        if len(c):
            K[np.ix_(r, c)] = model.kernel_(X[r], Z[c])
            G[r] = model.kernel_.weighted_gradient_x(X[r], Z[c], alpha[c])
    energies += K @ alpha
    dE = exp.backward(G)
    sol = model.solver_
    W = sol._nystrom_factor(K)  # L⁻¹Kᵀ by a triangular solve
    V = sol._sor_factor_whitened(W.T)
    kdiag = model.kernel_.diag(X)
    resid = np.clip(kdiag - np.einsum("ms,ms->s", W, W), 0.0, None)
    var_E = sol.var_sor(K.sum(axis=0)[None])[0] + resid.sum()
    return {
        "energies": energies,
        "forces": pair_forces(dE, exp.center, exp.neighbor, N),
        "stress": pair_stress(dE, exp.vector, exp.volume),
        "energies_std": np.sqrt(resid + np.einsum("ms,ms->s", V, V)),
        "energy_std": np.sqrt(var_E),
        "novelty": resid / kdiag,
    }


# The projected part of a local variance, |U w|², is formed in single precision
# (potential._LocalStdFactors): stds are held to ~1e-6 of themselves (measured ≤ 2.1e-6
# on a Cu model), not to the rounding of double precision.
STD_RTOL = 1e-5


def assert_matches(pred, ref, rtol_std=STD_RTOL):
    scale = np.abs(ref["forces"]).max()
    np.testing.assert_allclose(pred["energies"], ref["energies"], rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(pred["forces"], ref["forces"], rtol=0, atol=1e-10 * scale)
    np.testing.assert_allclose(pred["stress"], ref["stress"], rtol=0,
                               atol=1e-10 * np.abs(ref["stress"]).max())
    # (each std is the root of a variance that cancels most of the prior: a rounding-level
    # difference there is absolute, 5.7e-12 on a std of 5e-4 seen on an AMD EPYC, so the
    # smallest stds are held to rtol_std of the largest)
    np.testing.assert_allclose(pred["energies_std"], ref["energies_std"], rtol=rtol_std,
                               atol=rtol_std * np.abs(ref["energies_std"]).max())
    np.testing.assert_allclose(pred["energy_std"], ref["energy_std"], rtol=rtol_std)
    np.testing.assert_allclose(pred["novelty"], ref["novelty"], rtol=0, atol=1e-10)


@pytest.fixture
def small_blocks(monkeypatch):
    """Chunks of 5 atoms: several per prediction."""
    monkeypatch.setattr(potential, "_STD_CHUNK", 5)


@pytest.mark.parametrize("kernel", [NormalizedDotProduct(zeta=3),
                                    SquaredExponential(length_scale=0.4)])
def test_two_species_prediction_equals_the_direct_formulas(small_blocks, kernel):
    train = cuag_frames(5, seed=3)
    model = SparseGP(soap_for(train), kernel, n_sparse=30, hyperparameters="fixed").fit(train)
    big = cuag_frames(1, seed=11)[0].repeat((2, 1, 1))  # 16 atoms: 3+ chunks per species
    assert_matches(model.predict(big, return_std=True), reference(model, big))
    fac = model._local_std_factors()
    assert fac.blocks is not None and set(fac.blocks) == {29, 47}
    fac.blocks = None  # the triangular-solve path (a factor not block-diagonal by species)
    assert_matches(model.predict(big, return_std=True), reference(model, big))


def test_one_species_frame_of_a_two_species_model(small_blocks):
    """A frame of one species takes the total-energy variance from the sum of its atoms'
    projected rows (``_LocalStdFactors.terms``): equal to the plain formula, also after
    an update leaves the species' columns non-contiguous."""
    train = cuag_frames(4, seed=5)
    model = SparseGP(soap_for(train), n_sparse=20, hyperparameters="fixed").fit(train)
    for symbol in ("Cu", "Ag"):
        pure = cu_frames(1, seed=8, size=(2, 2, 2))[0]
        pure.symbols[:] = symbol
        pure.set_cell(pure.cell * (1.13 if symbol == "Ag" else 1.0), scale_atoms=True)
        assert_matches(model.predict(pure, return_std=True), reference(model, pure))
    model.update(cuag_frames(2, seed=6), n_sparse=6)
    assert assert_matches(model.predict(pure, return_std=True), reference(model, pure)) is None
    # the shortcut and the general trsv on the whole R_w agree on the same sums
    exp, dE, terms = model._fused_terms(pure, np.zeros(len(pure)), keep_k=True)
    _, _, sor_total = terms.result()
    assert len(terms.sums) == 1
    (c, wsum_c, _), = terms.sums.values()
    wsum = np.zeros(len(model.sparse_species_))
    wsum[c] = wsum_c
    np.testing.assert_allclose(sor_total, model._var_sor_whitened(wsum), rtol=STD_RTOL)


def test_stds_summed_block_by_block_equal_the_direct_formulas(small_blocks, monkeypatch):
    """The fused path takes each block of atoms' kernel rows into buffers of bounded
    size (``_VarianceTerms``: no (n_atoms, M) kernel matrix), whose variance terms are
    summed buffer by buffer: with several blocks, buffers that fill within a block, two
    species and species interleaved in the frame, the local stds, the total's std and
    the novelty equal the direct formulas, and a prediction that needs the novelty
    alone (a calibration with a novelty term) gets the same novelty."""
    size = soap_module.jit.stored_pair_size(SMALL_SOAP["l_max"] + 1, SMALL_SOAP["n_max"])
    monkeypatch.setattr(soap_module, "_FUSED_STORE_BYTES", 60 * 8 * size)  # ~2 atoms a block
    monkeypatch.setattr(potential, "_VARIANCE_BUFFER_BYTES", 3 * 8 * 16)  # 3 rows of 14 or 16 columns
    train = cuag_frames(5, seed=3)
    model = SparseGP(soap_for(train), n_sparse=30, hyperparameters="fixed").fit(train)
    assert sorted(np.unique(model.sparse_species_, return_counts=True)[1]) == [14, 16]
    big = cuag_frames(1, seed=11)[0].repeat((2, 1, 1))
    assert len(set(big.numbers[:4])) == 2  # species interleaved across blocks
    added, passes = [], []
    add, run_terms = potential._VarianceTerms.add, potential._VarianceTerms._terms
    monkeypatch.setattr(potential._VarianceTerms, "add",
                        lambda self, r, c, Kz: (added.append(len(r)), add(self, r, c, Kz))[1])
    monkeypatch.setattr(potential._VarianceTerms, "_terms",
                        lambda self, z, c, r, Kz: (passes.append(len(r)), run_terms(self, z, c, r, Kz))[1])
    pred = model.predict(big, return_std=True)
    ref = reference(model, big)
    assert_matches(pred, ref)
    assert len(added) >= 6 and sum(added) == len(big)
    assert max(passes) == 3 and sum(passes) == len(big) and len(passes) >= 5
    # the two-pass path's merged blocks go through the same terms (pieces of a buffer each)
    passes.clear()
    model._fused_step = False
    assert_matches(model.predict(big, return_std=True), ref)
    assert max(passes) == 3 and sum(passes) == len(big)
    del model._fused_step
    _, _, terms = model._fused_terms(big, np.zeros(len(big)), keep_k=True, with_sor=False)
    q, sor, total = terms.result()
    assert not sor.any() and total == 0.0
    kdiag = model.kernel_.diag(model.descriptor_.create(big))
    np.testing.assert_allclose((kdiag - q) / kdiag, ref["novelty"], rtol=0, atol=1e-10)


def test_kernel_rows_written_into_the_buffer_equal_the_direct_formulas(small_blocks, row_chunks, monkeypatch):
    """A one-species frame in several blocks whose rows all go to one buffer: the kernel
    writes each block's rows into the buffer's free rows (no copy), and a block that does
    not fit the rows left is copied as before (on the row-parallel path; the serial one
    always copies); the stds equal the direct formulas."""
    size = soap_module.jit.stored_pair_size(SMALL_SOAP["l_max"] + 1, SMALL_SOAP["n_max"])
    monkeypatch.setattr(soap_module, "_FUSED_STORE_BYTES", 100 * 8 * size)  # a few atoms a block
    train = cu_frames(4, seed=9, size=(2, 2, 2))
    model = SparseGP(soap_for(train), n_sparse=40, hyperparameters="fixed").fit(train)
    cell = cu_frames(1, seed=10, size=(2, 2, 2))[0].repeat((2, 1, 1))  # 64 atoms
    kept = []
    take = potential._RowBuffer.take
    monkeypatch.setattr(potential._RowBuffer, "take",
                        lambda self, r, Kz: (kept.append(self.in_place(Kz)), take(self, r, Kz))[1])
    assert_matches(model.predict(cell, return_std=True), reference(model, cell))
    assert len(kept) >= 3 and all(kept)  # every block written in place
    # a buffer of 9 rows (blocks of 4-5 atoms): blocks that fit the rows left are written
    # in place, the others copied
    monkeypatch.setattr(potential, "_VARIANCE_BUFFER_BYTES", 9 * 8 * 40)
    kept.clear()
    assert_matches(model.predict(cell, return_std=True), reference(model, cell))
    assert any(kept) and not all(kept)


def test_stds_follow_new_frames_and_new_sparse_points(small_blocks):
    """The cached factors are rebuilt when the factorisation changes; sparse points
    added later leave a species' columns non-contiguous (the general path)."""
    train = cuag_frames(4, seed=5)
    model = SparseGP(soap_for(train), n_sparse=20, hyperparameters="fixed").fit(train)
    test = cuag_frames(1, seed=17)[0]
    assert_matches(model.predict(test, return_std=True), reference(model, test))
    first = model._local_std_factors()
    model.update(cuag_frames(2, seed=6), n_sparse=6)
    c = np.flatnonzero(model.sparse_species_ == 29)
    assert c[-1] - c[0] + 1 > len(c)  # Cu columns no longer contiguous
    assert_matches(model.predict(test, return_std=True), reference(model, test))
    assert model._local_std_factors() is not first


def test_one_species_md_cell_equals_the_direct_formulas(small_blocks):
    train = cu_frames(4, seed=7)
    model = SparseGP(soap_for(train), n_sparse=25, hyperparameters="fixed").fit(train)
    cell = cu_frames(1, seed=8, size=(2, 2, 2))[0]
    assert_matches(model.predict(cell, return_std=True), reference(model, cell))
    # an MD-like sequence of positions: the same model, the cached pieces reused
    for k in range(2):
        cell.positions += np.random.default_rng(k).normal(0, 0.01, cell.positions.shape)
        assert_matches(model.predict(cell, return_std=True), reference(model, cell))


def test_default_chunk_size_on_a_saved_and_loaded_model(tmp_path):
    train = cu_frames(4, seed=9, size=(2, 2, 2))  # 128 environments
    model = SparseGP(soap_for(train), n_sparse=110, hyperparameters="fixed").fit(train)
    back = SparseGP.load(model.save(tmp_path / "m.npz"))
    test = cu_frames(1, seed=10, size=(2, 2, 2))[0].repeat((6, 6, 1))  # 1,152 atoms
    assert len(test) > potential._std_chunk(len(back.sparse_X_))
    assert_matches(back.predict(test, return_std=True), reference(back, test))


@pytest.mark.parametrize("kernel", [NormalizedDotProduct(zeta=4, signal_variance=0.7),
                                    SquaredExponential(length_scale=0.3, signal_variance=2.0)])
def test_prediction_terms_equal_the_kernel_and_its_weighted_gradient(kernel):
    rng = np.random.default_rng(0)
    X, Z = rng.normal(size=(9, 6)), rng.normal(size=(5, 6))
    X[3] = 0.0  # a zero-norm row: k = signal_variance f(0), gradient 0
    alpha = rng.normal(size=5)
    K, e, G = kernel.prediction_terms(X, kernel.unit_rows(Z), alpha)
    np.testing.assert_allclose(K, kernel(X, Z), rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(e, kernel(X, Z) @ alpha, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(G, kernel.weighted_gradient_x(X, Z, alpha), rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match="Z_unit must have shape"):
        kernel.prediction_terms(X, kernel.unit_rows(Z), alpha[:4])


def test_quadratic_terms_equal_the_prediction_terms_at_zeta_2():
    """ζ = 2: the weighted kernel sum is x̂ᵀAx̂; energies and gradient from A equal the
    kernel-row path, a zero row included, with or without the kernel rows; other ζ have
    no quadratic form."""
    kernel = NormalizedDotProduct(zeta=2, signal_variance=0.7)
    rng = np.random.default_rng(1)
    X, Z = rng.normal(size=(9, 6)), rng.normal(size=(5, 6))
    X[3] = 0.0
    alpha = rng.normal(size=5)
    Zu = kernel.unit_rows(Z)
    e, G = kernel.quadratic_terms(X, kernel.quadratic_form(Zu, alpha))
    _, e0, G0 = kernel.prediction_terms(X, Zu, alpha)
    np.testing.assert_allclose(e, e0, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(G, G0, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(G, kernel.weighted_gradient_x(X, Z, alpha), rtol=1e-12, atol=1e-14)
    # with the kernel rows (what a prediction with stds needs)
    K, e2, G2 = kernel.quadratic_rows(X, Zu, kernel.quadratic_form(Zu, alpha))
    np.testing.assert_allclose(K, kernel(X, Z), rtol=1e-13, atol=1e-15)
    np.testing.assert_array_equal(e2, e)
    np.testing.assert_array_equal(G2, G)
    assert NormalizedDotProduct(zeta=3).quadratic_form(Zu, alpha) is None
    with pytest.raises(ValueError, match="A must have shape"):
        kernel.quadratic_terms(X, np.eye(4))


def _plain_terms(pred, ref):
    scale = np.abs(ref["forces"]).max()
    np.testing.assert_allclose(pred["energies"], ref["energies"], rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(pred["forces"], ref["forces"], rtol=0, atol=1e-10 * scale)
    np.testing.assert_allclose(pred["stress"], ref["stress"], rtol=0,
                               atol=1e-10 * np.abs(ref["stress"]).max())


def test_zeta_2_prediction_without_stds_goes_through_the_quadratic_form(monkeypatch):
    """A ζ = 2 model predicts without stds from its quadratic form (F = 40 features < 2 ×
    25 sparse rows): the same energies, forces and stress as the direct formulas and as
    the kernel-row path the stds take, forces = -dE/dr, and the form follows new data."""
    train = cu_frames(4, seed=7)
    model = SparseGP(soap_for(train), NormalizedDotProduct(zeta=2), n_sparse=25,
                     hyperparameters="fixed").fit(train)
    assert model._prediction_quadratic()[29] is not None
    cell = cu_frames(1, seed=8, size=(2, 2, 2))[0]
    calls = []
    quadratic_terms = NormalizedDotProduct.quadratic_terms
    monkeypatch.setattr(NormalizedDotProduct, "quadratic_terms",
                        lambda self, X, A: calls.append(len(X)) or quadratic_terms(self, X, A))
    plain = model.predict(cell)
    assert "energies_std" not in plain and sum(calls) == len(cell)
    model.predict(cell, return_std=True)
    assert sum(calls) == len(cell)  # the stds need the kernel rows
    _plain_terms(plain, reference(model, cell))
    _plain_terms(plain, model.predict(cell, return_std=True))
    # forces are the negative gradient of the energy the quadratic form gives
    h, i = 1e-5, 3
    for a in range(3):
        up, down = cell.copy(), cell.copy()
        up.positions[i, a] += h
        down.positions[i, a] -= h
        fd = -(model.predict(up)["energy"] - model.predict(down)["energy"]) / (2 * h)
        assert abs(fd - plain["forces"][i, a]) < 1e-6 * max(1.0, abs(fd))
    first = model._prediction_quadratic()[29]
    model.update(cu_frames(2, seed=6), n_sparse=5)
    assert model._prediction_quadratic()[29] is not first
    _plain_terms(model.predict(cell), reference(model, cell))


def test_two_species_quadratic_and_kernel_row_paths_mix():
    """One species through its quadratic form, the other through kernel rows."""
    train = cuag_frames(8, seed=3)
    species = sorted({int(z) for a in train for z in a.numbers})
    soap = SOAP(species=species, periodic=True, weighting=POLY, r_cut=4.0, n_max=2, l_max=1, sigma=0.5)
    model = SparseGP(soap, NormalizedDotProduct(zeta=2), n_sparse=40, hyperparameters="fixed").fit(train)
    quad = model._prediction_quadratic()
    assert quad[29] is not None and quad[47] is not None  # 20 features < 2 × ~20 rows each
    big = cuag_frames(1, seed=11)[0].repeat((2, 1, 1))
    ref = reference(model, big)
    _plain_terms(model.predict(big), ref)
    quad[47] = None  # Ag by its kernel rows
    _plain_terms(model.predict(big), ref)


def test_zeta_2_with_stds_uses_the_quadratic_form_where_features_are_fewer(small_blocks, monkeypatch):
    """F = 40 features < 50 sparse rows: a prediction with stds also takes energies and
    gradient from the quadratic form (the same numbers as without stds) and its stds
    from the kernel rows, all equal to the direct formulas."""
    train = cu_frames(8, seed=4)
    model = SparseGP(soap_for(train), NormalizedDotProduct(zeta=2), n_sparse=50,
                     hyperparameters="fixed").fit(train)
    cell = cu_frames(1, seed=12, size=(2, 2, 2))[0]
    calls = []
    quadratic_rows = NormalizedDotProduct.quadratic_rows
    monkeypatch.setattr(NormalizedDotProduct, "quadratic_rows",
                        lambda self, X, Z, A: calls.append(len(X)) or quadratic_rows(self, X, Z, A))
    pred = model.predict(cell, return_std=True)
    assert sum(calls) == len(cell)
    assert_matches(pred, reference(model, cell))
    plain = model.predict(cell)
    np.testing.assert_allclose(plain["energies"], pred["energies"], rtol=1e-14, atol=0)
    np.testing.assert_allclose(plain["forces"], pred["forces"], rtol=0,
                               atol=1e-14 * np.abs(pred["forces"]).max())


def test_a_prediction_without_stds_keeps_no_kernel_rows():
    """Without stds no kernel blocks are kept or summed, for a kernel with a quadratic
    form (ζ = 2) and one without (ζ = 4): the MD step pays for none."""
    train = cu_frames(4, seed=7)
    cell = cu_frames(1, seed=8, size=(2, 2, 2))[0]
    for zeta in (2, 4):
        model = SparseGP(soap_for(train), NormalizedDotProduct(zeta=zeta), n_sparse=25,
                         hyperparameters="fixed").fit(train)
        energies = model._e0_of(cell.numbers).astype(float)
        assert model._fused_terms(cell, energies, keep_k=False)[2] == []
        terms = model._fused_terms(cell, energies.copy(), keep_k=True)[2]
        assert len(terms.sums) == 1 and not terms.buffers  # (one block: its rows run as they are)


# ---------------------------------------------------------------- row-parallel passes
@pytest.fixture
def row_chunks(monkeypatch):
    """The row-parallel passes (gpal._row_blas) in 3 chunks of rows, whatever the threads
    here (numba runs the chunks one after another on one thread)."""
    import gpal._threads
    from gpal import _row_blas

    assert _row_blas.available()
    monkeypatch.setattr(gpal._threads, "row_chunks", lambda n: min(3, n))


@pytest.mark.parametrize("kernel", [NormalizedDotProduct(zeta=3),
                                    SquaredExponential(length_scale=0.4)])
def test_row_parallel_prediction_equals_the_direct_formulas(small_blocks, row_chunks, kernel):
    train = cuag_frames(5, seed=3)
    model = SparseGP(soap_for(train), kernel, n_sparse=30, hyperparameters="fixed").fit(train)
    big = cuag_frames(1, seed=11)[0].repeat((2, 1, 1))  # 16 atoms: chunks of 2-3 per species
    assert_matches(model.predict(big, return_std=True), reference(model, big))
    cell = cu_frames(1, seed=8, size=(2, 2, 2))[0]  # one species, 32 atoms: 3 uneven chunks
    train = cu_frames(4, seed=7)
    model = SparseGP(soap_for(train), n_sparse=25, hyperparameters="fixed").fit(train)
    assert_matches(model.predict(cell, return_std=True), reference(model, cell))


def test_row_parallel_passes_equal_numpy_for_any_split():
    """gpal._row_blas against numpy: odd sizes, more chunks than rows, blocks of rows,
    inputs of other dtypes and orders (converted, as the serial path converts them)."""
    from gpal import _jit, _row_blas

    assert _row_blas.available()  # (scipy always has cython_blas; a failed binding or self-test shows here)
    rng = np.random.default_rng(4)
    for n, m, F, chunks, block in [(7, 13, 5, 3, 2), (2, 9, 4, 5, 4), (33, 40, 17, 2, 7), (1, 1, 3, 1, 1)]:
        X = rng.normal(size=(n, F)) * rng.uniform(0.5, 3.0, size=(n, 1))
        if n > 2:
            X[1] = 0.0  # a zero row: zero gradient
        Xh, xn = _jit._normalize_rows(X)
        Zh, _ = _jit._normalize_rows(rng.normal(size=(m, F)))
        alpha = rng.normal(size=m)
        C = Xh @ Zh.T
        for kind, p in [(_jit.KIND_DOT, 4.0), (_jit.KIND_SE, 0.5)]:
            W = C.copy()
            K0, e0, d0 = _jit._prediction_pass(W, alpha, kind, p, 1.3)
            G0 = (W @ Zh - d0[:, None] * Xh) * np.where(xn > 0, 1.3 / np.where(xn > 0, xn, 1), 0)[:, None]
            for X_in, Z_in, norms in [(X, Zh, None), (np.asfortranarray(X), Zh[::-1][::-1].T.copy().T, None),
                                      (Xh, Zh, xn)]:
                K, e, G = _row_blas.prediction_terms(X_in, Z_in, alpha, kind, p, 1.3, chunks, norms=norms)
                np.testing.assert_allclose(K, K0, rtol=1e-13, atol=1e-15)
                np.testing.assert_allclose(e, e0, rtol=1e-12, atol=1e-14)
                np.testing.assert_allclose(G, G0, rtol=1e-12, atol=1e-13)
        A = rng.normal(size=(m, m))
        L, U = np.tril(A) + m * np.eye(m), np.triu(A) + m * np.eye(m)
        Kz = rng.normal(size=(n, m))
        Wt = L @ Kz.T
        for Kz_in in (Kz, Kz.astype(np.float32).astype(np.float64), np.asfortranarray(Kz)):
            q, sor, wsum, vsum = _row_blas.std_terms(Kz_in, L, U, True, chunks, block)
            Wt = L @ Kz_in.T
            np.testing.assert_allclose(q, (Wt**2).sum(0), rtol=1e-12)
            np.testing.assert_allclose(sor, ((U @ Wt) ** 2).sum(0), rtol=STD_RTOL)
            np.testing.assert_allclose(wsum, Wt.sum(1), rtol=1e-12, atol=1e-12)
            V = U @ Wt
            np.testing.assert_allclose(vsum, V.sum(1), rtol=0, atol=STD_RTOL * np.abs(V).sum(1).max())
            # on the rows themselves (overwrite): the same numbers, and the rows end as L⁻¹k
            for with_sor in (True, False):
                Kw = np.array(Kz_in, order="C")
                got = _row_blas.std_terms(Kw, L, U, with_sor, chunks, block, overwrite=True)
                ref = _row_blas.std_terms(Kz_in, L, U, with_sor, chunks, block)
                for a, b in zip(got, ref):
                    np.testing.assert_array_equal(a, b)
                np.testing.assert_allclose(Kw, Wt.T, rtol=1e-12, atol=1e-12 * np.abs(Wt).max())
        q, sor, _, vsum = _row_blas.std_terms(Kz, L, U, False, chunks, block)
        assert np.all(sor == 0.0) and np.all(vsum == 0.0)
        Kr = Kz[::-1][::-1]  # (a read-only input is copied, not written)
        Kr.flags.writeable = False
        _row_blas.std_terms(Kr, L, U, True, chunks, block, overwrite=True)
        np.testing.assert_array_equal(Kr, Kz)
    with pytest.raises(ValueError, match="Zh must have shape"):
        _row_blas.prediction_terms(np.ones((3, 4)), np.ones((2, 5)), np.ones(2), 0, 2.0, 1.0, 2)
    with pytest.raises(ValueError, match="Linv and U must have shape"):
        _row_blas.std_terms(np.ones((3, 4)), np.eye(3), np.eye(4), True, 2)
    # float32 input is read as float64 values, not as raw float32 memory
    X32 = rng.random((5, 4)).astype(np.float32)
    X64 = X32.astype(float)
    K, *_ = _row_blas.prediction_terms(X32, X64, np.ones(5), _jit.KIND_DOT, 1.0, 1.0, 2,
                                       norms=np.linalg.norm(X64, axis=1))
    np.testing.assert_allclose(K, X64 @ X64.T, rtol=1e-12)


def test_row_chunks_only_inside_a_one_thread_blas_call(monkeypatch):
    """Row-parallel passes call BLAS from every numba thread: only inside a gpal call
    whose BLAS runs one thread (one chunk with one numba thread), never outside gpal's
    calls (0: the serial numpy path)."""
    import numba

    from gpal import _threads

    assert _threads.row_chunks(10_000) == 0  # outside any gpal call
    with _threads.threads(1), _threads.limited():
        assert _threads.row_chunks(10_000) == 1
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("one numba thread here")
    monkeypatch.setattr(_threads, "_busy_cores", lambda: 0.0)
    with _threads.threads(2), _threads.limited():
        assert _threads.row_chunks(10_000) == 2
        assert _threads.row_chunks(40) == 1  # (fewer than 32 rows per thread)
        from threadpoolctl import threadpool_limits

        with threadpool_limits(2, user_api="blas"):  # BLAS's count raised under gpal's call
            assert _threads.row_chunks(10_000) == 0
    with _threads.threads(2), _threads.limited(size=10**8):  # BLAS on 2 threads: serial passes
        assert _threads.row_chunks(10_000) == 0


def test_row_parallel_zeta_2_quadratic_form_with_and_without_stds(small_blocks, row_chunks):
    """ζ = 2 through its quadratic form (F = 40 < 50 sparse rows) by chunks of rows:
    with stds (quadratic_rows) and without (quadratic_terms), equal to the direct formulas."""
    train = cu_frames(8, seed=4)
    model = SparseGP(soap_for(train), NormalizedDotProduct(zeta=2), n_sparse=50,
                     hyperparameters="fixed").fit(train)
    assert model._prediction_quadratic()[29] is not None
    cell = cu_frames(1, seed=12, size=(2, 2, 2))[0]
    ref = reference(model, cell)
    assert_matches(model.predict(cell, return_std=True), ref)
    _plain_terms(model.predict(cell), ref)


def test_row_parallel_quadratic_pass_equals_numpy():
    from gpal import _jit, _row_blas

    assert _row_blas.available()
    rng = np.random.default_rng(5)
    for n, m, F, chunks in [(7, 13, 5, 3), (2, 9, 4, 5), (33, 40, 17, 2)]:
        Xh, _ = _jit._normalize_rows(rng.normal(size=(n, F)))
        Zh, _ = _jit._normalize_rows(rng.normal(size=(m, F)))
        B = rng.normal(size=(F, F))
        A = B + B.T
        q, G, K = _row_blas.quadratic_terms(Xh, A, Zh, 0.7, chunks)
        np.testing.assert_allclose(G, Xh @ A, rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(q, np.einsum("ij,ij->i", Xh @ A, Xh), rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(K, 0.7 * (Xh @ Zh.T) ** 2, rtol=1e-12, atol=1e-15)
        q2, G2, K2 = _row_blas.quadratic_terms(Xh, A, None, 0.7, chunks)
        assert K2 is None and np.array_equal(G2, G) and np.array_equal(q2, q)
    with pytest.raises(ValueError, match="Zh must have shape"):
        _row_blas.quadratic_terms(np.ones((3, 4)), np.eye(4), np.ones((2, 5)), 1.0, 2)


def test_the_row_passes_bind_blas_in_a_fresh_process_before_their_first_call():
    """A fresh process whose numba cache is warm calls a pass first thing: the wrapper
    binds the BLAS symbols (a pass called before the binding would crash)."""
    from _subprocess import run_python

    code = """
        import numpy as np
        from gpal import _row_blas
        q, G, K = _row_blas.quadratic_terms(np.eye(3), np.eye(3), np.eye(3), 1.0, 2)
        print(float(G.sum()), float(K.sum()))
    """
    assert run_python(code).split() == ["3.0", "3.0"]
    assert run_python(code).split() == ["3.0", "3.0"]  # (the second from numba's cache)


def test_a_plugin_descriptors_rows_are_checked_and_float32_rows_read_as_float64():
    """The two-pass path (any descriptor that is not exactly gpal's SOAP) checks the
    plugin's rows: a NaN row (an atom alone, a mean over no neighbours) is an error, not
    an atom with no uncertainty; float32 rows give the float64 prediction."""
    from ase import Atoms

    class NaNWhenAlone(SOAP):
        def expand(self, atoms):
            exp = super().expand(atoms)
            exp.descriptor = exp.descriptor.copy()
            exp.descriptor[np.diff(exp.offsets) == 0] = np.nan
            return exp

        def __sklearn_clone__(self):
            return type(self)(**self.get_params())

    class Float32Rows(NaNWhenAlone):
        def expand(self, atoms):
            exp = SOAP.expand(self, atoms)
            exp.descriptor = exp.descriptor.astype(np.float32)
            return exp

    class RoundedRows(NaNWhenAlone):  # the same values, float64
        def expand(self, atoms):
            exp = SOAP.expand(self, atoms)
            exp.descriptor = exp.descriptor.astype(np.float32).astype(np.float64)
            return exp

    train = cuag_frames(4, seed=3)
    soap = soap_for(train)
    model = SparseGP(NaNWhenAlone(**soap.get_params()), n_sparse=20, hyperparameters="fixed").fit(train)
    assert not model._use_fused_step()
    alone = Atoms("Cu3Ag2", positions=[[0, 0, 0], [2.5, 0, 0], [0, 2.5, 0], [20, 20, 20], [1.2, 1.3, 2.4]])
    with pytest.raises(ValueError, match="NaN"):
        model.predict(alone, return_std=True)
    f32 = SparseGP(Float32Rows(**soap.get_params()), n_sparse=20, hyperparameters="fixed").fit(train)
    ref = SparseGP(RoundedRows(**soap.get_params()), n_sparse=20, hyperparameters="fixed").fit(train)
    test = cuag_frames(1, seed=17)[0]
    got, want = f32.predict(test, return_std=True), ref.predict(test, return_std=True)
    for key in ("energies", "forces", "energies_std"):  # (float32 norms: ~1e-8 relative)
        np.testing.assert_allclose(got[key], want[key], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("change", [dict(zeta=2.5), dict(signal_variance=-1.0)])
def test_kernel_hyperparameters_set_after_fit_are_checked_by_predict(change):
    train = cuag_frames(3, seed=3)
    model = SparseGP(soap_for(train), n_sparse=10, hyperparameters="fixed").fit(train)
    test = cuag_frames(1, seed=11)[0]
    model.predict(test, return_std=True)  # (the prediction caches are warm)
    model.kernel_.set_params(**change)
    for return_std in (False, True):
        with pytest.raises(ValueError, match="zeta|signal_variance"):
            model.predict(test, return_std=return_std)
