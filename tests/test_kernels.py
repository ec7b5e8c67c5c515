"""Tests of gpal.kernels and gpal._jit: values, derivatives, hyperparameter handling."""

import doctest
import json

import numpy as np
import pytest
from numpy.testing import assert_allclose
from sklearn.gaussian_process.kernels import RBF, ConstantKernel, DotProduct

from gpal import _jit, kernels
from gpal.kernels import (
    Hyperparameter,
    NormalizedDotProduct,
    SquaredExponential,
    kernel_from_dict,
)

KERNELS = [
    NormalizedDotProduct(),
    NormalizedDotProduct(zeta=1, signal_variance=0.7),
    NormalizedDotProduct(zeta=2, signal_variance=2.5, signal_variance_bounds="fixed"),
    NormalizedDotProduct(zeta=3, signal_variance=1.3),
    SquaredExponential(length_scale=0.7, signal_variance=1.3),
    SquaredExponential(length_scale=1.9, length_scale_bounds="fixed", signal_variance=0.4),
    SquaredExponential(length_scale=0.4, signal_variance_bounds="fixed"),
    SquaredExponential(
        length_scale=0.5, length_scale_bounds="fixed", signal_variance_bounds="fixed"
    ),
]
IDS = [repr(k) + ("-fixed" * sum(h.fixed for h in k.hyperparameters)) for k in KERNELS]


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(42)
    X = rng.normal(size=(6, 5)) + 0.3
    Z = rng.normal(size=(4, 5)) + 0.3
    P = 9
    center = rng.integers(0, len(X), size=P)
    center[:3] = [0, 5, 2]
    dX = rng.normal(size=(P, 3, 5))
    return X, Z, center, dX


# ----------------------------------------------------------------------------- references
def unit(X):
    n = np.linalg.norm(X, axis=1, keepdims=True)
    return np.divide(X, n, out=np.zeros_like(X), where=n > 0)


def reference_f(kernel, C):
    if isinstance(kernel, NormalizedDotProduct):
        return C**kernel.zeta
    return np.exp((C - 1.0) / kernel.length_scale**2)


def reference_K(kernel, X, Z):
    return kernel.signal_variance * reference_f(kernel, unit(X) @ unit(Z).T)


def fd_theta(kernel, fun, h=1e-6):
    """Central differences of fun(kernel) with respect to kernel.theta (log space)."""
    theta = kernel.theta
    cols = []
    for i in range(len(theta)):
        e = np.zeros_like(theta)
        e[i] = h
        cols.append(
            (fun(kernel.clone_with_theta(theta + e)) - fun(kernel.clone_with_theta(theta - e)))
            / (2 * h)
        )
    return np.stack(cols, axis=-1) if cols else None


# ----------------------------------------------------------------------------- values
@pytest.mark.parametrize("kernel", KERNELS, ids=IDS)
def test_values_vs_numpy_reference(kernel, data):
    X, Z, _, _ = data
    assert_allclose(kernel(X, Z), reference_K(kernel, X, Z), rtol=1e-12, atol=1e-14)
    assert_allclose(kernel(X), reference_K(kernel, X, X), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kernel", [k for k in KERNELS if isinstance(k, SquaredExponential)])
def test_squared_exponential_vs_sklearn(kernel, data):
    X, Z, _, _ = data
    sk = ConstantKernel(kernel.signal_variance) * RBF(kernel.length_scale)
    assert_allclose(kernel(X, Z), sk(unit(X), unit(Z)), rtol=1e-12, atol=1e-14)
    # sklearn's theta order and log space are the same as ours: [log c, log l]
    sk_free = ConstantKernel(kernel.signal_variance) * RBF(kernel.length_scale)
    K_sk, G_sk = sk_free(unit(X), eval_gradient=True)
    k_free = kernel.clone().set_params(signal_variance_bounds=(1e-3, 1e3),
                                       length_scale_bounds=(1e-2, 1e2))
    K, G = k_free(X, eval_gradient=True)
    assert_allclose(K, K_sk, rtol=1e-12, atol=1e-14)
    assert_allclose(G, G_sk, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kernel", [k for k in KERNELS if isinstance(k, NormalizedDotProduct)])
def test_dot_product_vs_sklearn(kernel, data):
    X, Z, _, _ = data
    sk = ConstantKernel(kernel.signal_variance) * DotProduct(
        sigma_0=0.0, sigma_0_bounds="fixed"
    ) ** kernel.zeta
    assert_allclose(kernel(X, Z), sk(unit(X), unit(Z)), rtol=1e-12, atol=1e-14)
    K_sk, G_sk = sk(unit(X), eval_gradient=True)
    k_free = kernel.clone().set_params(signal_variance_bounds=(1e-3, 1e3))
    K, G = k_free(X, eval_gradient=True)
    assert_allclose(K, K_sk, rtol=1e-12, atol=1e-14)
    assert_allclose(G, G_sk, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kernel", KERNELS, ids=IDS)
def test_diag_and_auto_vs_cross(kernel, data):
    X, _, _, _ = data
    K = kernel(X)
    assert_allclose(kernel.diag(X), np.diag(K), rtol=1e-14)
    assert_allclose(K, kernel(X, X), rtol=1e-12, atol=1e-14)
    assert np.array_equal(K, K.T)
    assert_allclose(kernel.diag(X), kernel.signal_variance)
    assert np.linalg.eigvalsh(K).min() > -1e-12


@pytest.mark.parametrize("kernel", KERNELS, ids=IDS)
def test_scale_invariance(kernel, data):
    X, Z, _, _ = data
    assert_allclose(kernel(3.7 * X, 0.2 * Z), kernel(X, Z), rtol=1e-12)


# ----------------------------------------------------------------------------- theta gradient
@pytest.mark.parametrize("kernel", KERNELS, ids=IDS)
def test_theta_gradient_vs_finite_differences(kernel, data):
    X, Z, _, _ = data
    for args in ((X,), (X, Z)):
        K, G = kernel(*args, eval_gradient=True)
        assert G.shape == K.shape + (kernel.n_dims,)
        if kernel.n_dims:
            approx = fd_theta(kernel, lambda k: k(*args))
            assert_allclose(G, approx, rtol=1e-6, atol=1e-8)


# ----------------------------------------------------------------------------- x gradients
def fd_x(kernel, X, Z, h=1e-6):
    n, F = X.shape
    G = np.empty((n, len(Z), F))
    for i in range(n):
        for f in range(F):
            Xp, Xm = X.copy(), X.copy()
            Xp[i, f] += h
            Xm[i, f] -= h
            G[i, :, f] = (kernel(Xp[i : i + 1], Z) - kernel(Xm[i : i + 1], Z))[0] / (2 * h)
    return G


@pytest.mark.parametrize("kernel", KERNELS, ids=IDS)
def test_gradient_x_vs_finite_differences(kernel, data):
    X, Z, _, _ = data
    G = kernel.gradient_x(X, Z)
    assert G.shape == (len(X), len(Z), X.shape[1])
    assert_allclose(G, fd_x(kernel, X, Z), rtol=1e-6, atol=1e-8)
    # k(x, z) is invariant to the norm of x: the gradient is orthogonal to x
    assert_allclose(np.einsum("nmf,nf->nm", G, X), 0.0, atol=1e-12)


@pytest.mark.parametrize("kernel", KERNELS, ids=IDS)
def test_weighted_gradient_x(kernel, data):
    X, Z, _, _ = data
    alpha = np.random.default_rng(1).normal(size=len(Z))
    expected = np.einsum("nmf,m->nf", kernel.gradient_x(X, Z), alpha)
    assert_allclose(kernel.weighted_gradient_x(X, Z, alpha), expected, rtol=1e-12, atol=1e-13)
    # finite differences of the local energy eps(x) = sum_m alpha_m k(x, z_m)
    h = 1e-6
    fd = np.empty_like(X)
    for f in range(X.shape[1]):
        e = np.zeros(X.shape[1])
        e[f] = h
        fd[:, f] = (kernel(X + e, Z) @ alpha - kernel(X - e, Z) @ alpha) / (2 * h)
    assert_allclose(kernel.weighted_gradient_x(X, Z, alpha), fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("kernel", KERNELS, ids=IDS)
def test_contract_gradient(kernel, data):
    X, Z, center, dX = data
    out = kernel.contract_gradient(X, Z, center, dX)
    assert out.shape == (len(center), 3, len(Z))
    dense = np.einsum("pmf,paf->pam", kernel.gradient_x(X, Z)[center], dX)
    assert_allclose(out, dense, rtol=1e-12, atol=1e-13)
    # directional finite differences of k(x_c, z) along dX[p, a]
    h = 1e-6
    fd = np.empty_like(out)
    for p, c in enumerate(center):
        for a in range(3):
            fd[p, a] = (
                kernel(X[c] + h * dX[p, a][None], Z) - kernel(X[c] - h * dX[p, a][None], Z)
            )[0] / (2 * h)
    assert_allclose(out, fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("kernel", KERNELS, ids=IDS)
def test_contract_gradient_theta_derivative(kernel, data):
    X, Z, center, dX = data
    out, G = kernel.contract_gradient(X, Z, center, dX, eval_gradient=True)
    assert G.shape == out.shape + (kernel.n_dims,)
    assert_allclose(out, kernel.contract_gradient(X, Z, center, dX))
    if kernel.n_dims:
        approx = fd_theta(kernel, lambda k: k.contract_gradient(X, Z, center, dX))
        assert_allclose(G, approx, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("kernel", KERNELS, ids=IDS)
@pytest.mark.parametrize("block", [2, 128])
def test_contract_rows_equal_pair_sums(kernel, data, block):
    """Force rows and virial equal the dense per-pair gradient summed onto both atoms."""
    from gpal.descriptors import pair_forces

    X, Z, center, dX = data
    rng = np.random.default_rng(3)
    neighbor = rng.integers(0, len(X), size=len(center))
    neighbor[0] = center[0]  # a pair of an atom with its own image adds nothing
    vector = rng.normal(size=(len(center), 3))
    dense = np.einsum("pmf,paf->pam", kernel.gradient_x(X, Z)[center], dX)
    rows_f, virial = kernel.contract_rows(X, Z, center, neighbor, dX, vector, len(X), block=block)
    assert_allclose(rows_f, pair_forces(dense, center, neighbor, len(X)), rtol=1e-12, atol=1e-13)
    assert_allclose(virial, np.einsum("pam,pb->abm", dense, vector), rtol=1e-12, atol=1e-13)
    # a subset of the pairs, gathered block by block
    sub = np.array([1, 4, 5, 8])
    rows_f, virial = kernel.contract_rows(X, Z, center, neighbor, dX, vector, len(X), pairs=sub,
                                          block=block)
    assert_allclose(rows_f, pair_forces(dense[sub], center[sub], neighbor[sub], len(X)),
                    rtol=1e-12, atol=1e-13)
    assert_allclose(virial, np.einsum("pam,pb->abm", dense[sub], vector[sub]), rtol=1e-12, atol=1e-13)
    with pytest.raises(ValueError):
        kernel.contract_rows(X, Z, center, neighbor, dX, vector, len(X), pairs=[len(center)])


def test_contract_gradient_no_pairs(data):
    X, Z, _, _ = data
    k = SquaredExponential()
    out, G = k.contract_gradient(X, Z, np.zeros(0, np.int64), np.zeros((0, 3, 5)), eval_gradient=True)
    assert out.shape == (0, 3, len(Z)) and G.shape == (0, 3, len(Z), 2)


# ----------------------------------------------------------------------------- zero rows
@pytest.mark.parametrize("kernel", KERNELS, ids=IDS)
def test_zero_norm_rows(kernel, data):
    X, Z, center, dX = data
    X0 = X.copy()
    X0[2] = 0.0
    Z0 = np.vstack([Z, np.zeros(5)])
    K = kernel(X0, Z0)
    f0 = reference_f(kernel, np.zeros(1))[0] * kernel.signal_variance
    assert np.all(np.isfinite(K))
    assert_allclose(K[2], f0)
    assert_allclose(K[:, -1], f0)
    Kx = kernel(X0)
    assert_allclose(kernel.diag(X0), np.diag(Kx))
    assert_allclose(Kx[2, 2], f0)
    assert np.linalg.eigvalsh(Kx).min() > -1e-12  # still positive semi-definite
    G = kernel.gradient_x(X0, Z0)
    assert np.all(np.isfinite(G))
    assert_allclose(G[2], 0.0)
    assert_allclose(G[:, -1], 0.0, atol=1e-14)
    assert_allclose(kernel.weighted_gradient_x(X0, Z0, np.ones(len(Z0)))[2], 0.0)
    out = kernel.contract_gradient(X0, Z0, center, dX)
    assert np.all(np.isfinite(out))
    assert_allclose(out[center == 2], 0.0)


# ----------------------------------------------------------------------------- jit leaves
def test_jit_normalize_rows():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(5, 4))
    X[1] = 0.0
    Xh, n = _jit._normalize_rows(X)
    assert_allclose(n, np.linalg.norm(X, axis=1))
    assert_allclose(Xh, unit(X))
    tiny = np.full((1, 3), 1e-170)  # squares underflow, must not give nan/inf
    Xh, n = _jit._normalize_rows(tiny)
    assert np.all(np.isfinite(Xh))


def test_jit_elementwise_vs_reference():
    C = np.linspace(-1.0, 1.0, 21).reshape(3, 7)
    for zeta in (1, 2, 3, 4, 5):
        assert_allclose(_jit._apply_f(C, _jit.KIND_DOT, float(zeta)), C**zeta, atol=1e-15)
        assert_allclose(
            _jit._apply_fprime(C, _jit.KIND_DOT, float(zeta)), zeta * C ** (zeta - 1), atol=1e-15
        )
        assert_allclose(_jit._apply_f_dparam(C, _jit.KIND_DOT, float(zeta)), 0.0)
    ell = 0.6
    f = np.exp((C - 1) / ell**2)
    assert_allclose(_jit._apply_f(C, _jit.KIND_SE, ell), f, rtol=1e-14)
    assert_allclose(_jit._apply_fprime(C, _jit.KIND_SE, ell), f / ell**2, rtol=1e-14)
    h = 1e-6
    for fun in (_jit._apply_f, _jit._apply_fprime):
        dparam = _jit._apply_f_dparam if fun is _jit._apply_f else _jit._apply_fprime_dparam
        fd = (fun(C, _jit.KIND_SE, ell * np.exp(h)) - fun(C, _jit.KIND_SE, ell * np.exp(-h))) / (2 * h)
        assert_allclose(dparam(C, _jit.KIND_SE, ell), fd, rtol=1e-7, atol=1e-9)


def test_jit_prediction_pass_vs_reference():
    # the one-pass ζ <= 4 loop and the passes by powers (ζ > 4), against numpy; ζ <= 4 bit
    # for bit equal to the element-wise powers of _ipow (a row length not a multiple of 4)
    rng = np.random.default_rng(5)
    C0 = rng.uniform(-1.0, 1.0, size=(3, 11))
    alpha = rng.normal(size=11)
    for zeta in (1, 2, 3, 4, 5, 6):
        C = C0.copy()
        K, e, d = _jit._prediction_pass(C, alpha, _jit.KIND_DOT, float(zeta), 1.7)
        W = zeta * C0 ** (zeta - 1) * alpha
        assert_allclose(K, 1.7 * C0**zeta, rtol=1e-14, atol=1e-16)
        assert_allclose(C, W, rtol=1e-14, atol=1e-16)
        assert_allclose(e, (1.7 * C0**zeta) @ alpha, rtol=1e-13, atol=1e-15)
        assert_allclose(d, (W * C0).sum(1), rtol=1e-13, atol=1e-15)
        if zeta <= 4:
            f = np.vectorize(lambda c: _jit._ipow(c, zeta))(C0)
            fp = np.vectorize(lambda c: _jit._ipow(c, zeta - 1))(C0)
            assert np.array_equal(K, 1.7 * f) and np.array_equal(C, (zeta * fp) * alpha)


def test_jit_kernel_matrix_and_pairs():
    rng = np.random.default_rng(4)
    Xh = unit(rng.normal(size=(4, 3)))
    Zh = unit(rng.normal(size=(2, 3)))
    C, Fc = _jit._kernel_matrix(Xh, Zh, _jit.KIND_DOT, 2.0, False, np.ones(4))
    assert_allclose(C, Xh @ Zh.T)
    assert_allclose(Fc, (Xh @ Zh.T) ** 2)
    C, _ = _jit._kernel_matrix(Xh, Xh, _jit.KIND_SE, 1.0, True, np.ones(4))
    assert np.array_equal(C, C.T) and np.all(np.diag(C) == 1.0)
    center = np.array([0, 3, 3], dtype=np.int64)
    dX = rng.normal(size=(3, 3, 3))
    assert_allclose(_jit._pair_projection(dX, Xh, center), np.einsum("paf,pf->pa", dX, Xh[center]))


# ----------------------------------------------------------------------------- parameters
@pytest.mark.parametrize("kernel", KERNELS, ids=IDS)
def test_clone_get_set_params(kernel):
    c = kernel.clone()
    assert c is not kernel and c == kernel
    assert c.get_params() == kernel.get_params()
    assert repr(c) == repr(kernel)
    c.set_params(signal_variance=5.0)
    assert c.signal_variance == 5.0 and kernel.signal_variance != 5.0
    assert c != kernel
    with pytest.raises(ValueError, match="Valid parameters"):
        c.set_params(sigma=1.0)


def test_theta_bounds_and_fixed():
    k = SquaredExponential(length_scale=0.5, signal_variance=2.0)
    assert [h.name for h in k.hyperparameters] == ["signal_variance", "length_scale"]
    assert_allclose(k.theta, np.log([2.0, 0.5]))
    assert_allclose(k.bounds, np.log([[1e-3, 1e3], [1e-2, 1e2]]))
    assert k.n_dims == 2
    k2 = k.clone_with_theta(np.log([3.0, 0.25]))
    assert k2.signal_variance == pytest.approx(3.0) and k2.length_scale == pytest.approx(0.25)
    assert k.signal_variance == 2.0  # original untouched

    kf = SquaredExponential(length_scale=0.5, length_scale_bounds="fixed")
    assert kf.n_dims == 1
    assert_allclose(kf.theta, [0.0])
    assert kf.bounds.shape == (1, 2)
    assert [h.fixed for h in kf.hyperparameters] == [False, True]
    kf.theta = [np.log(4.0)]
    assert kf.signal_variance == pytest.approx(4.0) and kf.length_scale == 0.5

    kn = NormalizedDotProduct(signal_variance_bounds="fixed")
    assert kn.n_dims == 0 and kn.theta.shape == (0,) and kn.bounds.shape == (0, 2)
    K, G = kn(np.eye(3), eval_gradient=True)
    assert G.shape == (3, 3, 0)
    with pytest.raises(ValueError, match="theta"):
        kn.theta = [1.0]


def test_hyperparameter_namedtuple():
    h = Hyperparameter("length_scale", "numeric", (1e-2, 1e2))
    assert h.fixed is False and h.n_elements == 1 and h.bounds == (0.01, 100.0)
    assert Hyperparameter("x", "numeric", "fixed").fixed is True
    assert h._fields == ("name", "value_type", "bounds", "n_elements", "fixed")


def test_repr():
    assert repr(NormalizedDotProduct()) == "NormalizedDotProduct(zeta=4, signal_variance=1)"
    assert (
        repr(SquaredExponential(length_scale=0.123456, signal_variance=2.0))
        == "SquaredExponential(length_scale=0.123, signal_variance=2)"
    )


@pytest.mark.parametrize("kernel", KERNELS, ids=IDS)
def test_to_dict_round_trip(kernel, data):
    X, Z, _, _ = data
    d = json.loads(json.dumps(kernel.to_dict()))
    k2 = kernel_from_dict(d)
    assert type(k2) is type(kernel) and k2 == kernel
    assert repr(k2) == repr(kernel)
    assert_allclose(k2(X, Z), kernel(X, Z))
    assert_allclose(k2.bounds, kernel.bounds)


def test_kernel_from_dict_errors():
    with pytest.raises(ValueError, match="choose from"):
        kernel_from_dict({"type": "Matern", "params": {}})
    with pytest.raises(ValueError, match="Unknown parameters"):
        kernel_from_dict({"type": "SquaredExponential", "params": {"nu": 1.5}})
    with pytest.raises(ValueError, match="keys"):
        kernel_from_dict({"params": {}})


# ----------------------------------------------------------------------------- validation
def test_constructor_only_stores_and_call_validates():
    k = NormalizedDotProduct(zeta=2.5)  # no error here (sklearn convention)
    with pytest.raises(ValueError, match="zeta"):
        k(np.eye(2))
    with pytest.raises(ValueError, match="zeta"):
        NormalizedDotProduct(zeta=True)(np.eye(2))
    with pytest.raises(ValueError, match="length_scale"):
        SquaredExponential(length_scale=-1.0)(np.eye(2))
    with pytest.raises(ValueError, match="signal_variance"):
        SquaredExponential(signal_variance=0.0).diag(np.eye(2))
    with pytest.raises(ValueError, match="bounds"):
        SquaredExponential(length_scale_bounds="fix")(np.eye(2))
    with pytest.raises(ValueError, match="bounds"):
        SquaredExponential(length_scale_bounds=(2.0, 1.0)).theta


def test_input_validation(data):
    X, Z, center, dX = data
    k = SquaredExponential()
    with pytest.raises(ValueError, match="features"):
        k(X, Z[:, :3])
    with pytest.raises(ValueError, match="2-D"):
        k(X[0])
    bad = X.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        k(bad)
    with pytest.raises(TypeError):
        k(X.astype(complex))
    with pytest.raises(ValueError, match="alpha"):
        k.weighted_gradient_x(X, Z, np.ones(len(Z) + 1))
    with pytest.raises(ValueError, match="center"):
        k.contract_gradient(X, Z, center + len(X), dX)
    with pytest.raises(TypeError, match="center"):
        k.contract_gradient(X, Z, center.astype(float), dX)
    with pytest.raises(ValueError, match="dX"):
        k.contract_gradient(X, Z, center, dX[:, :2])
    # non-contiguous and integer inputs are accepted
    assert_allclose(k(np.asfortranarray(X), Z[:, ::1]), k(X, Z))
    assert_allclose(k(np.arange(6).reshape(2, 3) + 1), k(np.arange(6.0).reshape(2, 3) + 1))


def test_doctests():
    result = doctest.testmod(kernels)
    assert result.failed == 0 and result.attempted > 0


@pytest.mark.parametrize("kernel", [NormalizedDotProduct(zeta=3, signal_variance=0.7), SquaredExponential(length_scale=0.4)])
def test_value_and_weighted_gradient_matches_separate_calls(kernel):
    rng = np.random.default_rng(5)
    X, Z, alpha = rng.normal(size=(7, 5)), rng.normal(size=(4, 5)), rng.normal(size=4)
    K, G = kernel.value_and_weighted_gradient(X, Z, alpha)
    np.testing.assert_allclose(K, kernel(X, Z), rtol=1e-13)
    np.testing.assert_allclose(G, kernel.weighted_gradient_x(X, Z, alpha), rtol=1e-12, atol=1e-14)


def test_contract_rows_on_the_columns_a_pair_can_change(data):
    """Restricting the products to the columns where dX is non-zero changes nothing."""
    X, Z, center, dX = data
    k = NormalizedDotProduct(zeta=3, signal_variance=1.3)
    rng = np.random.default_rng(5)
    neighbor = rng.integers(0, len(X), size=len(center))
    vector = rng.normal(size=(len(center), 3))
    cols = np.array([0, 2, 3])
    dX0 = dX.copy()
    dX0[:, :, [1, 4]] = 0.0
    full = k.contract_rows(X, Z, center, neighbor, dX0, vector, len(X))
    part = k.contract_rows(X, Z, center, neighbor, dX0, vector, len(X), cols=cols, block=4)
    for a, b in zip(part, full):
        assert_allclose(a, b, rtol=1e-12, atol=1e-13)
    with pytest.raises(ValueError):
        k.contract_rows(X, Z, center, neighbor, dX0, vector, len(X), cols=[5])
