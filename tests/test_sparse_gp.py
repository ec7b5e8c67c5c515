"""Tests of gpal.sparse_gp: equivalence with the dense GP and scikit-learn, updates,
log marginal likelihood and its gradient, variances and failure modes."""

import doctest
import warnings

import numpy as np
import pytest
import scipy.stats
from numpy.testing import assert_allclose
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import RBF, ConstantKernel, DotProduct

from gpal import sparse_gp
from gpal.exceptions import GpalError, NotFittedError
from gpal.kernels import NormalizedDotProduct, SquaredExponential
from gpal.sparse_gp import (
    NotPositiveDefiniteError,
    SparseGPSolver,
    optimize_hyperparameters,
)


def unit(X):
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def jittered(K_mm, jitter=1e-10):
    return K_mm + jitter * np.mean(np.diag(K_mm)) * np.eye(len(K_mm))


def dense_sparse_posterior(K_mm, K_nm, y, s, jitter=1e-10):
    """Σ and alpha of the SoR/DTC posterior by explicit dense inversion."""
    Kj = jittered(K_mm, jitter)
    Sigma = np.linalg.inv(Kj + K_nm.T @ (K_nm / s[:, None] ** 2))
    alpha = Sigma @ K_nm.T @ (y / s**2)
    return Sigma, alpha, Kj


@pytest.fixture(scope="module")
def problem():
    """Observations with M < n: energy-like sums and point values."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 6)) + 0.2
    Z = X[rng.choice(40, size=10, replace=False)] + 0.05 * rng.normal(size=(10, 6))
    kernel = SquaredExponential(length_scale=0.8, signal_variance=1.7)
    K_mm = kernel(Z)
    # 30 single-environment observations + 10 "frames" summing 4 environments each
    K_pt = kernel(X[:30], Z)
    K_sum = kernel(X, Z)[np.arange(40).reshape(10, 4)].sum(axis=1)
    K_nm = np.vstack([K_pt, K_sum])
    f_true = np.sin(X @ np.linspace(0.5, 1.5, 6))
    y = np.concatenate([f_true[:30], f_true.reshape(10, 4).sum(axis=1)])
    s = np.concatenate([np.full(30, 0.05), np.full(10, 0.2)])
    y = y + s * rng.normal(size=40)
    groups = np.concatenate([np.zeros(30, int), np.ones(10, int)])
    Xs = rng.normal(size=(7, 6)) + 0.2
    return dict(kernel=kernel, X=X, Z=Z, K_mm=K_mm, K_nm=K_nm, y=y, s=s, groups=groups, Xs=Xs)


# ----------------------------------------------------------------------------- full GP limit
@pytest.mark.parametrize(
    "kernel,sk_kernel",
    [
        (
            SquaredExponential(length_scale=0.9, signal_variance=1.4),
            ConstantKernel(1.4, "fixed") * RBF(0.9, "fixed"),
        ),
        (
            NormalizedDotProduct(zeta=4, signal_variance=2.0),
            ConstantKernel(2.0, "fixed") * DotProduct(0.0, "fixed") ** 4,
        ),
    ],
    ids=["SE", "dot"],
)
def test_full_sparse_set_equals_dense_gp_and_sklearn(kernel, sk_kernel):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(25, 8)) + 0.3
    Xs = rng.normal(size=(9, 8)) + 0.3
    y = np.cos(X[:, 0]) + 0.3 * X[:, 1]
    noise = rng.uniform(0.05, 0.2, size=25)
    K = kernel(X)
    Ks = kernel(Xs, X)
    gp = SparseGPSolver().fit(K, K, y, noise)  # sparse set = training points
    mean = gp.predict_mean(Ks)
    std = np.sqrt(gp.predict_var(Ks, kernel.diag(Xs)))

    # dense numpy GP
    C = K + np.diag(noise**2)
    mean_dense = Ks @ np.linalg.solve(C, y)
    var_dense = kernel.diag(Xs) - np.einsum("ij,ji->i", Ks, np.linalg.solve(C, Ks.T))
    assert_allclose(mean, mean_dense, rtol=1e-8, atol=1e-8)
    assert_allclose(std, np.sqrt(var_dense), rtol=1e-8, atol=1e-8)

    # scikit-learn
    sk = GaussianProcessRegressor(kernel=sk_kernel, alpha=noise**2, optimizer=None)
    sk.fit(unit(X), y)
    mean_sk, std_sk = sk.predict(unit(Xs), return_std=True)
    assert_allclose(mean, mean_sk, rtol=1e-8, atol=1e-8)
    assert_allclose(std, std_sk, rtol=1e-8, atol=1e-8)
    assert_allclose(gp.log_marginal_likelihood(), sk.log_marginal_likelihood_value_, rtol=1e-8)


# ----------------------------------------------------------------------------- variances
def test_mean_and_variances_vs_dense_formulas(problem):
    p = problem
    gp = SparseGPSolver().fit(p["K_mm"], p["K_nm"], p["y"], p["s"])
    Sigma, alpha, Kj = dense_sparse_posterior(p["K_mm"], p["K_nm"], p["y"], p["s"])
    A = p["kernel"](p["Xs"], p["Z"])
    kss = p["kernel"].diag(p["Xs"])
    assert_allclose(gp.alpha_, alpha, rtol=1e-8, atol=1e-10)
    assert_allclose(gp.predict_mean(A), A @ alpha, rtol=1e-8, atol=1e-10)
    assert_allclose(gp.R_.T @ gp.R_, np.linalg.inv(Sigma), rtol=1e-8, atol=1e-8)
    assert np.all(np.diag(gp.R_) > 0) and np.allclose(gp.R_, np.triu(gp.R_))
    assert_allclose(gp.L_mm_ @ gp.L_mm_.T, Kj, rtol=1e-12, atol=1e-14)
    sor = np.einsum("ij,jk,ik->i", A, Sigma, A)
    nys = np.einsum("ij,jk,ik->i", A, np.linalg.inv(Kj), A)
    assert_allclose(gp.var_sor(A), sor, rtol=1e-8)
    assert_allclose(gp.var_nystrom(A), nys, rtol=1e-8)
    assert_allclose(gp.predict_var(A, kss), kss - nys + sor, rtol=1e-8, atol=1e-12)
    # covariances between linear functionals (e.g. a sum of local energies)
    B = np.vstack([A.sum(axis=0), A[:2]])
    assert_allclose(gp.cov_sor(A, B), A @ Sigma @ B.T, rtol=1e-8, atol=1e-12)
    assert_allclose(gp.cov_sor(A), A @ Sigma @ A.T, rtol=1e-8, atol=1e-12)
    assert_allclose(np.diag(gp.cov_sor(A)), gp.var_sor(A), rtol=1e-12)
    assert_allclose(gp.cov_nystrom(A, B), A @ np.linalg.inv(Kj) @ B.T, rtol=1e-8, atol=1e-12)
    Kss = p["kernel"](p["Xs"])
    cov = gp.predict_cov(A, Kss)
    assert_allclose(np.diag(cov), gp.predict_var(A, kss), rtol=1e-8, atol=1e-12)
    # a single row given as a 1-D array is accepted
    assert_allclose(gp.var_sor(A[0]), gp.var_sor(A[:1]))


def test_stds_nonnegative_and_clipping_warning(problem):
    p = problem
    gp = SparseGPSolver().fit(p["K_mm"], p["K_nm"], p["y"], p["s"])
    rng = np.random.default_rng(5)
    Xs = np.vstack([p["Z"], p["X"], 10 * rng.normal(size=(20, 6))])
    A = p["kernel"](Xs, p["Z"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # sparse points themselves: no spurious warning
        var = gp.predict_var(A, p["kernel"].diag(Xs))
    assert np.all(var >= 0)
    # far from the data the DTC variance returns to the prior (SoR would not)
    far = p["kernel"](-p["Z"].sum(axis=0)[None], p["Z"])  # opposite the sparse set
    assert gp.predict_var(far, [1.7])[0] > 0.75 * 1.7
    assert gp.var_sor(far)[0] < 0.1 * 1.7
    with pytest.warns(RuntimeWarning, match="smaller than 0"):
        clipped = gp.predict_var(A[:3], np.zeros(3))
    assert np.all(clipped == 0.0)


# ----------------------------------------------------------------------------- updates
def test_update_equals_refit(problem):
    p = problem
    full = SparseGPSolver().fit(p["K_mm"], p["K_nm"], p["y"], p["s"])
    gp = SparseGPSolver().fit(p["K_mm"], p["K_nm"][:15], p["y"][:15], p["s"][:15])
    gp.update(p["K_nm"][15:33], p["y"][15:33], p["s"][15:33])
    gp.update(p["K_nm"][33:], p["y"][33:], p["s"][33:])
    assert gp.n_obs_ == 40
    assert_allclose(gp.R_, full.R_, rtol=1e-10, atol=1e-10 * np.abs(full.R_).max())
    assert_allclose(gp.R_.T @ gp.R_, full.R_.T @ full.R_, rtol=1e-10, atol=1e-10)
    assert_allclose(gp.Qtb_, full.Qtb_, rtol=1e-10, atol=1e-10)
    assert_allclose(gp.alpha_, full.alpha_, rtol=1e-10, atol=1e-10)
    assert_allclose(gp.log_marginal_likelihood(), full.log_marginal_likelihood(), rtol=1e-10)
    assert_allclose(gp.K_nm_, p["K_nm"])
    # updating with nothing is a no-op
    before = gp.alpha_.copy()
    gp.update(np.zeros((0, 10)), [], [])
    assert_allclose(gp.alpha_, before)


def test_fit_without_observations_then_update(problem):
    p = problem
    gp = SparseGPSolver().fit(p["K_mm"], np.zeros((0, 10)), [], [])
    assert_allclose(gp.alpha_, 0.0)
    gp.update(p["K_nm"], p["y"], p["s"])
    full = SparseGPSolver().fit(p["K_mm"], p["K_nm"], p["y"], p["s"])
    assert_allclose(gp.alpha_, full.alpha_, rtol=1e-10, atol=1e-10)


def test_add_sparse_equals_refit(problem):
    p = problem
    kernel, X, Z = p["kernel"], p["X"], p["Z"]
    cols = lambda Zc: np.vstack(  # noqa: E731
        [kernel(X[:30], Zc), kernel(X, Zc)[np.arange(40).reshape(10, 4)].sum(axis=1)]
    )
    full = SparseGPSolver().fit(kernel(Z), p["K_nm"], p["y"], p["s"])
    gp = SparseGPSolver().fit(kernel(Z[:6]), cols(Z[:6]), p["y"], p["s"])
    gp.add_sparse(kernel(Z), cols(Z[6:]))
    assert gp.n_sparse_ == 10
    assert_allclose(gp.alpha_, full.alpha_, rtol=1e-10, atol=1e-10)
    assert_allclose(gp.R_, full.R_, rtol=1e-10, atol=1e-10 * np.abs(full.R_).max())
    # sparse points then observations, interleaved
    gp2 = SparseGPSolver().fit(kernel(Z[:6]), cols(Z[:6])[:20], p["y"][:20], p["s"][:20])
    gp2.add_sparse(kernel(Z[:8]), cols(Z[6:8])[:20])
    gp2.update(cols(Z[:8])[20:], p["y"][20:], p["s"][20:])
    gp2.add_sparse(kernel(Z), cols(Z[8:]))
    assert_allclose(gp2.alpha_, full.alpha_, rtol=1e-10, atol=1e-10)
    assert_allclose(gp2.log_marginal_likelihood(), full.log_marginal_likelihood(), rtol=1e-10)


def test_add_sparse_validation_and_failure_keeps_state(problem):
    p = problem
    gp = SparseGPSolver().fit(p["K_mm"], p["K_nm"], p["y"], p["s"])
    alpha = gp.alpha_.copy()
    with pytest.raises(ValueError, match="leading block"):
        gp.add_sparse(np.eye(11), np.zeros((40, 1)))
    with pytest.raises(ValueError, match="one row per stored observation"):
        gp.add_sparse(np.block([[p["K_mm"], np.zeros((10, 1))], [np.zeros((1, 10)), 1.0]]),
                      np.zeros((39, 1)))
    # a duplicate of sparse point 0 with a slightly larger self-kernel than allowed
    K = np.block([[p["K_mm"], p["K_mm"][:, :1]], [p["K_mm"][:1], p["K_mm"][:1, :1] * (1 - 1e-3)]])
    with pytest.raises(NotPositiveDefiniteError):
        gp.add_sparse(K, p["K_nm"][:, :1])
    assert gp.n_sparse_ == 10
    assert_allclose(gp.alpha_, alpha)


def test_projected_add_sparse_equals_a_fit_on_nystrom_columns(problem):
    # K_nm_new_columns=None: the stored observations see the new points through the old
    # ones (K_nm K_mm^-1 K_m,new); a solver fitted at once on those columns is the reference
    p = problem
    kernel, X, Z = p["kernel"], p["X"], p["Z"]
    cols = lambda Zc: np.vstack(  # noqa: E731
        [kernel(X[:30], Zc), kernel(X, Zc)[np.arange(40).reshape(10, 4)].sum(axis=1)]
    )
    K_old = cols(Z[:6])
    gp = SparseGPSolver().fit(kernel(Z[:6]), K_old, p["y"], p["s"])
    Xs = np.random.default_rng(3).normal(size=(7, 6))
    mean0 = gp.predict_mean(kernel(Xs, Z[:6]))
    var0 = gp.predict_var(kernel(Xs, Z[:6]), kernel.diag(Xs))
    gp.add_sparse(kernel(Z))
    assert gp.n_sparse_ == 10 and gp.n_projected_ == 4
    nystrom = K_old @ np.linalg.solve(jittered(kernel(Z[:6])), kernel(Z[:6], Z[6:]))
    ref = SparseGPSolver().fit(kernel(Z), np.hstack([K_old, nystrom]), p["y"], p["s"])
    assert ref.n_projected_ == 0
    assert_allclose(gp.alpha_, ref.alpha_, rtol=1e-8, atol=1e-8 * np.abs(ref.alpha_).max())
    assert_allclose(gp.log_marginal_likelihood(), ref.log_marginal_likelihood(), rtol=1e-10)
    assert_allclose(gp.Phi_[:, 6:], 0.0)
    # adding points informed by nothing moves neither the mean nor the DTC variance
    A = kernel(Xs, Z)
    assert_allclose(gp.predict_mean(A), mean0, rtol=1e-9, atol=1e-12)
    assert_allclose(gp.predict_var(A, kernel.diag(Xs)), var0, rtol=1e-9, atol=1e-12)
    # observations added afterwards see every point; the exact solver differs
    Xn = np.random.default_rng(4).normal(size=(6, 6))
    yn = np.sin(Xn[:, 0])
    gp.update(kernel(Xn, Z), yn, np.full(6, 0.1))
    ref.update(kernel(Xn, Z), yn, np.full(6, 0.1))
    assert_allclose(gp.predict_mean(A), ref.predict_mean(A), rtol=1e-8, atol=1e-10)
    exact = SparseGPSolver().fit(kernel(Z), np.vstack([cols(Z), kernel(Xn, Z)]),
                                 np.r_[p["y"], yn], np.r_[p["s"], np.full(6, 0.1)])
    assert np.max(np.abs(exact.predict_mean(A) - gp.predict_mean(A))) > 1e-4
    # rows not kept: the projected columns need none
    lean = SparseGPSolver().fit(kernel(Z[:6]), K_old, p["y"], p["s"]).drop_rows()
    lean.add_sparse(kernel(Z))
    assert_allclose(lean.alpha_, SparseGPSolver().fit(kernel(Z[:6]), K_old, p["y"], p["s"])
                    .add_sparse(kernel(Z)).alpha_, rtol=1e-12, atol=1e-14)
    # the file layout keeps the count
    back = SparseGPSolver._from_arrays(gp._to_arrays(), gp.jitter_)
    assert back.n_projected_ == 4
    assert_allclose(back.alpha_, gp.alpha_)


def test_projected_add_sparse_validation_keeps_state(problem):
    p = problem
    gp = SparseGPSolver().fit(p["K_mm"], p["K_nm"], p["y"], p["s"])
    alpha = gp.alpha_.copy()
    with pytest.raises(ValueError, match="leading block"):
        gp.add_sparse(np.eye(11))
    K = np.block([[p["K_mm"], p["K_mm"][:, :1]], [p["K_mm"][:1], p["K_mm"][:1, :1] * (1 - 1e-3)]])
    with pytest.raises(NotPositiveDefiniteError):
        gp.add_sparse(K)
    assert gp.n_sparse_ == 10 and gp.n_projected_ == 0
    assert_allclose(gp.alpha_, alpha)


# ----------------------------------------------------------------------------- evidence
def test_lml_vs_dense(problem):
    p = problem
    gp = SparseGPSolver().fit(p["K_mm"], p["K_nm"], p["y"], p["s"])
    Kj = jittered(p["K_mm"])
    Q = p["K_nm"] @ np.linalg.solve(Kj, p["K_nm"].T)
    dense = scipy.stats.multivariate_normal(np.zeros(40), Q + np.diag(p["s"] ** 2)).logpdf(p["y"])
    assert_allclose(gp.log_marginal_likelihood(), dense, rtol=1e-10)


def _frames_blocks(kernel, Z, frames):
    """Energy-sum rows and force-like contracted rows (with θ-derivatives) of frames."""
    rows, drows = [], []
    for X, center, dX in frames:
        K, dK = kernel(X, Z, eval_gradient=True)
        rows.append(K.sum(axis=0)[None])
        drows.append(dK.sum(axis=0)[None])
        F, dF = kernel.contract_gradient(X, Z, center, dX, eval_gradient=True)
        rows.append(F.reshape(-1, len(Z)))
        drows.append(dF.reshape(-1, len(Z), dF.shape[-1]))
    return np.vstack(rows), np.concatenate(drows)


@pytest.fixture(scope="module")
def force_problem():
    rng = np.random.default_rng(7)
    frames = []
    for _ in range(4):
        X = rng.normal(size=(5, 6)) + 0.4
        center = np.repeat(np.arange(5), 2)
        frames.append((X, center, 0.3 * rng.normal(size=(10, 3, 6))))
    Z = np.vstack([f[0][:2] for f in frames])
    n_obs = 4 * (1 + 30)
    groups = np.tile(np.r_[0, np.ones(30, int)], 4)
    groups[-3:] = 2  # a third group ("stress")
    y = rng.normal(size=n_obs)
    base_noise = np.where(groups == 0, 0.3, np.where(groups == 1, 0.1, 0.2))
    return frames, Z, y, groups, base_noise


@pytest.mark.parametrize(
    "kernel",
    [SquaredExponential(length_scale=0.6, signal_variance=0.8), NormalizedDotProduct(zeta=3)],
    ids=["SE", "dot"],
)
def test_lml_gradient_vs_finite_differences(kernel, force_problem):
    frames, Z, y, groups, base_noise = force_problem

    def lml_at(x):
        """x = [log noise factors (3), log extra signal variance, kernel theta]."""
        k = kernel.clone_with_theta(x[4:])
        K_nm, _ = _frames_blocks(k, Z, frames)
        a = np.exp(x[3])
        noise = base_noise * np.exp(x[:3])[groups]
        gp = SparseGPSolver().fit(a * k(Z), a * K_nm, y, noise)
        return gp.log_marginal_likelihood()

    x0 = np.concatenate([np.log([1.2, 0.9, 1.1]), [0.1], kernel.theta])
    k = kernel.clone_with_theta(x0[4:])
    K_mm, dK_mm = k(Z, eval_gradient=True)
    K_nm, dK_nm = _frames_blocks(k, Z, frames)
    a = np.exp(x0[3])
    gp = SparseGPSolver().fit(a * K_mm, a * K_nm, y, base_noise * np.exp(x0[:3])[groups])
    lml, grad = gp.log_marginal_likelihood(
        eval_gradient=True,
        noise_groups=groups,
        signal_variance_gradient=True,
        K_mm_gradient=a * dK_mm,
        K_nm_gradient=a * dK_nm,
    )
    assert lml == pytest.approx(lml_at(x0), rel=1e-12)
    assert grad.shape == (3 + 1 + kernel.n_dims,)
    h = 1e-5
    fd = np.array([(lml_at(x0 + h * e) - lml_at(x0 - h * e)) / (2 * h) for e in np.eye(len(x0))])
    assert_allclose(grad, fd, rtol=1e-6, atol=1e-6)
    # the kernel's own signal-variance derivative equals the separate one
    if kernel.n_dims:
        assert grad[4] == pytest.approx(grad[3], rel=1e-10)
    # without groups: one noise entry equal to the sum over groups
    _, g1 = gp.log_marginal_likelihood(eval_gradient=True)
    assert g1.shape == (1,) and g1[0] == pytest.approx(grad[:3].sum(), rel=1e-10)


def test_lml_gradient_input_validation(problem):
    p = problem
    gp = SparseGPSolver().fit(p["K_mm"], p["K_nm"], p["y"], p["s"])
    with pytest.raises(ValueError, match="both"):
        gp.log_marginal_likelihood(eval_gradient=True, K_mm_gradient=np.zeros((10, 10, 1)))
    with pytest.raises(ValueError, match="shape"):
        gp.log_marginal_likelihood(
            eval_gradient=True, K_mm_gradient=np.zeros((10, 10, 1)), K_nm_gradient=np.zeros((3, 10, 1))
        )
    with pytest.raises(ValueError, match="noise_groups"):
        gp.log_marginal_likelihood(eval_gradient=True, noise_groups=np.zeros(3, int))


# ----------------------------------------------------------------------------- optimiser
def test_optimize_hyperparameters(force_problem):
    frames, Z, _, groups, base_noise = force_problem
    true = SquaredExponential(length_scale=0.5, signal_variance=1.0)
    K_nm_true, _ = _frames_blocks(true, Z, frames)
    rng = np.random.default_rng(11)
    w = rng.normal(size=len(Z))
    y = K_nm_true @ np.linalg.solve(true(Z) + 1e-8 * np.eye(len(Z)), true(Z) @ w)
    y = y + base_noise * rng.normal(size=len(y))

    start = SquaredExponential(length_scale=1.5, signal_variance=0.3)

    def build(theta):
        k = start.clone_with_theta(theta)
        K_mm, dK_mm = k(Z, eval_gradient=True)
        K_nm, dK_nm = _frames_blocks(k, Z, frames)
        return K_mm, K_nm, dK_mm, dK_nm

    scale = base_noise / np.array([0.3, 0.1, 0.2])[groups]
    K_mm, K_nm, _, _ = build(start.theta)
    lml0 = (
        SparseGPSolver()
        .fit(K_mm, K_nm, y, np.array([1.0, 1.0, 1.0])[groups] * scale)
        .log_marginal_likelihood()
    )
    res = optimize_hyperparameters(
        build,
        y,
        groups,
        [1.0, 1.0, 1.0],
        start.theta,
        kernel_bounds=start.bounds,
        noise_scale=scale,
        noise_bounds=[(1e-3, 10.0), (1e-3, 10.0), "fixed"],
        n_restarts=1,
        random_state=0,
    )
    assert res.log_marginal_likelihood > lml0 + 1.0
    assert res.n_runs == 2
    assert res.noise_levels[2] == 1.0  # fixed
    assert res.kernel_theta.shape == (2,)
    K_mm, K_nm, _, _ = build(res.kernel_theta)
    check = SparseGPSolver().fit(K_mm, K_nm, y, res.noise_levels[groups] * scale)
    assert check.log_marginal_likelihood() == pytest.approx(res.log_marginal_likelihood, rel=1e-10)
    # at an interior optimum the gradient vanishes (relative to its scale at the start)
    assert np.all(np.abs(res.optimize_result.jac) < 1e-2 * max(1.0, abs(lml0)))


# ----------------------------------------------------------------------------- failures
def test_not_positive_definite_error():
    rng = np.random.default_rng(2)
    V, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    K_mm = V @ np.diag([1.0, 0.5, 0.1, 1e-3, 1e-5, -1e-6]) @ V.T
    K_mm = 0.5 * (K_mm + K_mm.T)
    with pytest.raises(NotPositiveDefiniteError, match="jitter") as info:
        SparseGPSolver().fit(K_mm, rng.normal(size=(4, 6)), np.zeros(4), np.ones(4))
    assert isinstance(info.value, np.linalg.LinAlgError)
    assert isinstance(info.value, GpalError)
    assert "near-duplicate" in str(info.value)
    # a larger jitter, as the message suggests, makes it work
    SparseGPSolver().fit(K_mm, rng.normal(size=(4, 6)), np.zeros(4), np.ones(4), jitter=1e-4)


def test_duplicate_sparse_points_with_default_jitter():
    rng = np.random.default_rng(3)
    Z = rng.normal(size=(5, 4))
    Z = np.vstack([Z, Z[:2]])  # exact duplicates
    k = SquaredExponential(length_scale=0.8)
    X = rng.normal(size=(12, 4))
    gp = SparseGPSolver().fit(k(Z), k(X, Z), np.sin(X[:, 0]), np.full(12, 0.1), jitter=1e-8)
    var = gp.predict_var(k(X, Z), k.diag(X))
    assert np.all(np.isfinite(gp.predict_mean(k(X, Z)))) and np.all(var >= 0)


def test_input_validation_and_not_fitted(problem):
    p = problem
    gp = SparseGPSolver()
    assert repr(gp) == "SparseGPSolver()"
    with pytest.raises(NotFittedError):
        gp.predict_mean(p["K_nm"])
    with pytest.raises(ValueError, match="noise_std"):
        gp.fit(p["K_mm"], p["K_nm"], p["y"], np.zeros(40))
    with pytest.raises(ValueError, match="length 40"):
        gp.fit(p["K_mm"], p["K_nm"], p["y"][:5], p["s"])
    with pytest.raises(ValueError, match="columns"):
        gp.fit(p["K_mm"], p["K_nm"][:, :5], p["y"], p["s"])
    with pytest.raises(ValueError, match="symmetric"):
        gp.fit(p["K_mm"] + np.triu(np.ones((10, 10)), 1), p["K_nm"], p["y"], p["s"])
    with pytest.raises(ValueError, match="NaN"):
        gp.fit(p["K_mm"], p["K_nm"], np.full(40, np.nan), p["s"])
    gp.fit(p["K_mm"], p["K_nm"], p["y"], p["s"])
    assert repr(gp) == "SparseGPSolver(n_obs=40, n_sparse=10)"
    with pytest.raises(ValueError, match="columns"):
        gp.update(np.zeros((2, 3)), [0, 0], [1, 1])


def test_doctests():
    result = doctest.testmod(sparse_gp)
    assert result.failed == 0 and result.attempted > 0
