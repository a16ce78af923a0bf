"""neural-tangents through stepwise_ntk.kernels._nt_compat, checked against independent references.

Every reference here is float64 numpy/scipy written from the formulas, not from
neural-tangents; tolerances are float64 round-off scaled by the problem size unless said.
NT's functions are called under ``jax.jit`` (as stepwise_ntk calls them): the same
computation, compiled once instead of dispatched op by op (10x slower on a CPU).
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from stepwise_ntk.kernels._nt_compat import PATCHES, check_implementation, nt
from tests.reference_kernels import relu_expectations, relu_mlp_kernels

stax = nt.stax
RTOL = 1e-10  # float64 end to end; the recursions are a handful of flops per entry


@pytest.fixture(autouse=True)
def _standard_promotion():
    # neural-tangents' own internals mix int64 and float64 (e.g. pooling divides by an int
    # array), which the suite's strict promotion rejects; our inputs stay float64 throughout.
    with jax.numpy_dtype_promotion("standard"):
        yield


def test_import_never_loads_tensorflow():
    # This module imported stepwise_ntk and the patched NT above; no fresh process needed:
    # anything else in this process that loaded TensorFlow would only make this fail.
    bad = [m for m in sys.modules if m.split(".")[0] in ("tensorflow", "tf2jax")
           or m.startswith("neural_tangents.experimental")]
    assert not bad, bad


def test_every_patch_targets_a_loaded_module():
    # A patch whose module never loads would be dead text that hides a version change.
    for module in PATCHES:
        assert module in sys.modules, module


def _inputs(key, n, m):
    return jax.random.normal(key, (n, m), jnp.float64)


def _jit_kernel_fn(kernel_fn):
    return jax.jit(kernel_fn, static_argnames="get")


@pytest.mark.parametrize("w_std,b_std", [(1.0, 0.0), (1.5, 0.3)])
def test_one_hidden_layer_relu_ntk_matches_arc_cosine_closed_form(w_std, b_std):
    x1 = _inputs(jax.random.PRNGKey(0), 6, 5)
    x2 = _inputs(jax.random.PRNGKey(1), 4, 5)
    _, _, kernel_fn = stax.serial(
        stax.Dense(512, W_std=w_std, b_std=b_std), stax.Relu(), stax.Dense(3, W_std=w_std, b_std=b_std)
    )
    k = _jit_kernel_fn(kernel_fn)(x1, x2, get=("nngp", "ntk"))
    nngp_ref, ntk_ref = relu_mlp_kernels(np.asarray(x1), np.asarray(x2), 1, w_std, b_std)
    np.testing.assert_allclose(k.nngp, nngp_ref, rtol=RTOL)
    np.testing.assert_allclose(k.ntk, ntk_ref, rtol=RTOL)


def _patches(x, k):
    """(n, H, W, C) -> (n, P, k*k*C) VALID patches, row-major positions, (kh, kw, C) order."""
    n, h, w, c = x.shape
    rows = []
    for i in range(h - k + 1):
        for j in range(w - k + 1):
            rows.append(x[:, i : i + k, j : j + k, :].reshape(n, -1))
    return np.stack(rows, axis=1)


def _cnn_reference(x1, x2, k, w_std, b_std, readout):
    """Conv(VALID) -> ReLU -> {Flatten | GlobalAvgPool} -> Dense, NTK parameterisation.

    Position-resolved recursion (Arora et al. 2019): Sigma1[a, b] over positions a of x and b
    of y; a Flatten readout keeps the diagonal a = b (independent weights per position), a
    global average pool averages over all (a, b) pairs.
    """
    p1, p2 = _patches(x1, k), _patches(x2, k)
    fan_in = p1.shape[-1]
    s12 = w_std**2 * np.einsum("xaf,ybf->xyab", p1, p2) / fan_in + b_std**2
    s11 = w_std**2 * np.einsum("xaf,xaf->xa", p1, p1) / fan_in + b_std**2
    s22 = w_std**2 * np.einsum("ybf,ybf->yb", p2, p2) / fan_in + b_std**2
    norm = np.sqrt(s11[:, None, :, None] * s22[None, :, None, :])
    cos = np.clip(s12 / norm, -1, 1)
    theta = np.arccos(cos)
    t = norm / (2 * np.pi) * (np.sin(theta) + (np.pi - theta) * cos)
    tdot = (np.pi - theta) / (2 * np.pi)
    if readout == "flatten":
        reduce = lambda a: np.einsum("xyaa->xy", a) / a.shape[-1]
    else:
        reduce = lambda a: a.mean(axis=(-1, -2))
    nngp = w_std**2 * reduce(t) + b_std**2
    ntk = nngp + w_std**2 * reduce(tdot * s12)
    return nngp, ntk


@pytest.mark.parametrize("readout", ["flatten", "avg_pool"])
def test_small_cnn_ntk_matches_position_resolved_recursion(readout):
    key1, key2 = jax.random.split(jax.random.PRNGKey(2))
    x1 = jax.random.normal(key1, (3, 5, 4, 2), jnp.float64)
    x2 = jax.random.normal(key2, (2, 5, 4, 2), jnp.float64)
    w_std, b_std = 1.3, 0.2
    pool = stax.Flatten() if readout == "flatten" else stax.GlobalAvgPool()
    _, _, kernel_fn = stax.serial(
        stax.Conv(64, (2, 2), padding="VALID", W_std=w_std, b_std=b_std),
        stax.Relu(),
        pool,
        stax.Dense(1, W_std=w_std, b_std=b_std),
    )
    k = _jit_kernel_fn(kernel_fn)(x1, x2, get=("nngp", "ntk"))
    nngp_ref, ntk_ref = _cnn_reference(np.asarray(x1), np.asarray(x2), 2, w_std, b_std, readout)
    np.testing.assert_allclose(k.nngp, nngp_ref, rtol=RTOL)
    np.testing.assert_allclose(k.ntk, ntk_ref, rtol=RTOL)


def test_average_pool_layer_equals_averaging_positions_of_the_unpooled_kernel():
    # AvgPool(2x2, stride 2) then Flatten == mean over each window's (a, b) position pairs.
    x = jax.random.normal(jax.random.PRNGKey(3), (3, 4, 4, 2), jnp.float64)
    conv = stax.Conv(16, (3, 3), padding="SAME", W_std=1.2, b_std=0.1)
    _, _, pooled = stax.serial(conv, stax.Relu(), stax.AvgPool((2, 2), (2, 2)), stax.Flatten())
    _, _, unpooled = stax.serial(conv, stax.Relu())
    k = np.asarray(_jit_kernel_fn(unpooled)(x, None, get="nngp"))  # (n, n, H, H, W, W)
    windows = [(slice(2 * i, 2 * i + 2), slice(2 * j, 2 * j + 2)) for i in range(2) for j in range(2)]
    ref = np.mean(
        [k[:, :, hi, hi, wi, wi].mean(axis=(2, 3, 4, 5)) for hi, wi in windows], axis=0
    )
    np.testing.assert_allclose(_jit_kernel_fn(pooled)(x, None, get="nngp"), ref, rtol=RTOL)


def _flax_mlp():
    import flax.linen as nn

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.Dense(7, param_dtype=jnp.float64)(x)
            x = nn.gelu(x)
            return nn.Dense(3, param_dtype=jnp.float64)(x)

    return MLP()


@pytest.mark.parametrize("implementation", list(nt.NtkImplementation), ids=lambda i: i.name)
def test_empirical_ntk_of_flax_model_matches_explicit_jacobian_contraction(implementation):
    model = _flax_mlp()
    x1 = _inputs(jax.random.PRNGKey(4), 5, 4)
    x2 = _inputs(jax.random.PRNGKey(5), 3, 4)
    params = model.init(jax.random.PRNGKey(6), x1)

    ntk_fn = nt.empirical_ntk_fn(model.apply, trace_axes=(), vmap_axes=0, implementation=implementation)
    # AUTO compiles each implementation to read its cost, also under an outer jit.
    ntk = np.asarray(jax.jit(ntk_fn)(x1, x2, params))  # (n1, n2, 3, 3)

    def jac(x):
        j = jax.jit(jax.jacobian(model.apply))(params, x)  # pytree of (n, 3, *param_shape)
        leaves = jax.tree_util.tree_leaves(j)
        return np.concatenate([np.asarray(l).reshape(x.shape[0], 3, -1) for l in leaves], -1)

    ref = np.einsum("iap,jbp->ijab", jac(x1), jac(x2))
    np.testing.assert_allclose(ntk, ref, rtol=1e-10, atol=1e-12)


def test_unknown_empirical_implementation_is_refused_up_front():
    with pytest.raises(ValueError, match="JACOBIAN_CONTRACTION"):
        check_implementation(7)


def test_gradient_descent_mse_matches_float64_matrix_exponential():
    # MSE loss 0.5 |f - y|^2 / y.size: f(t) = y + expm(-t K / N) (f0 - y), and test outputs
    # move by K_tx K^{-1} (f(t) - f0) since df/dt lies in the kernel's column space.
    rng = np.random.default_rng(7)
    n, n_test, k_out = 8, 3, 2
    a = rng.normal(size=(n + n_test, 12))
    gram = a @ a.T / 12 + 0.1 * np.eye(n + n_test)
    k_train, k_test_train = gram[:n, :n], gram[n:, :n]
    y = rng.normal(size=(n, k_out))
    f0, f0_test = rng.normal(size=(n, k_out)), rng.normal(size=(n_test, k_out))
    lr, t = 0.7, 3.0

    predict = nt.predict.gradient_descent_mse(jnp.asarray(k_train), jnp.asarray(y), learning_rate=lr)
    f_t, f_test_t = predict(t, jnp.asarray(f0), jnp.asarray(f0_test), jnp.asarray(k_test_train))

    decay = scipy.linalg.expm(-lr * t * k_train / y.size)
    f_ref = y + decay @ (f0 - y)
    f_test_ref = f0_test + k_test_train @ np.linalg.solve(k_train, f_ref - f0)
    np.testing.assert_allclose(f_t, f_ref, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(f_test_t, f_test_ref, rtol=1e-9, atol=1e-12)


def test_max_learning_rate_uses_top_eigenvalue():
    # Exercises the patched scipy eigvalsh(subset_by_index=...) call on CPU inputs.
    rng = np.random.default_rng(8)
    a = rng.normal(size=(6, 6))
    k = a @ a.T
    lr = nt.predict.max_learning_rate(jnp.asarray(k), y_train_size=6, eps=0.0)
    np.testing.assert_allclose(lr, 2 * 6 / np.linalg.eigvalsh(k)[-1], rtol=1e-12)


def test_relu_expectations_reference_is_itself_right():
    # Guard the reference: Monte Carlo of E[relu(u) relu(v)] for one correlated pair.
    rng = np.random.default_rng(9)
    cov = np.array([[1.3, 0.5], [0.5, 0.8]])
    uv = rng.multivariate_normal([0, 0], cov, size=400_000)
    mc = np.mean(np.maximum(uv[:, 0], 0) * np.maximum(uv[:, 1], 0))
    mc_dot = np.mean((uv[:, 0] > 0) & (uv[:, 1] > 0))
    t, tdot = relu_expectations(np.array([[0.5]]), np.array([1.3]), np.array([0.8]))
    # 400k samples: standard error ~ 1.5e-3 for these moments; 5 sigma.
    assert abs(t[0, 0] - mc) < 8e-3
    assert abs(tdot[0, 0] - mc_dot) < 4e-3
