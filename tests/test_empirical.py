"""Empirical NTK of the Flax twin (stepwise_ntk.kernels._empirical).

References: an explicit float64 Jacobian contraction with jax.jacobian, and, for the
width-convergence tests, the analytic NTK of the same architecture (stepwise_ntk.kernels._analytic).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stepwise_ntk.kernels import analytic_ntk, empirical_ntk
from stepwise_ntk.kernels._nt_compat import nt
from stepwise_ntk.kernels.architectures import MLP, MyrtleCNN

IMPLEMENTATIONS = [nt.NtkImplementation.STRUCTURED_DERIVATIVES,
                   nt.NtkImplementation.JACOBIAN_CONTRACTION,
                   nt.NtkImplementation.NTK_VECTOR_PRODUCTS]


def jacobian_ntk(apply, params, x1, x2):
    """(1/d) sum_a <df_a(x1_i)/dtheta, df_a(x2_j)/dtheta>, by materialised Jacobians."""
    @jax.jit
    def flat_jac(x):
        jac = jax.jacobian(apply)(params, x)  # leaves (n, d, *param_shape)
        n, d = jax.eval_shape(apply, params, x).shape
        return jnp.concatenate([j.reshape(n, d, -1) for j in jax.tree.leaves(jac)], axis=-1)

    j1, j2 = flat_jac(x1), flat_jac(x2)
    return np.asarray(jnp.einsum("iap,jap->ij", j1, j2)) / j1.shape[1]


def _perturbed(params, key):
    # Parameters away from initialisation ("after training"): every leaf moved.
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(tree, [p + 0.3 * jax.random.normal(k, p.shape, p.dtype)
                                     for p, k in zip(leaves, keys, strict=True)])


@pytest.mark.parametrize(
    "arch, implementations",
    [(MLP(depth=2, width=6, d=3, b_std=0.2, activation="gelu"), IMPLEMENTATIONS),
     (MLP(depth=1, width=5, d=2, parameterization="standard", b_std=0.1), IMPLEMENTATIONS[:1]),
     (MyrtleCNN(width=3, d=2, b_std=0.1), IMPLEMENTATIONS[:1])],
    ids=["mlp-gelu", "mlp-standard", "myrtle"],
)
def test_matches_explicit_jacobian_contraction(arch, implementations):
    x = jax.random.normal(jax.random.PRNGKey(0), (8, 4, 4, 3), jnp.float64)
    x1, x2 = x[:5], x[5:]
    net = arch.flax(jnp.float64)
    params = _perturbed(jax.jit(net.init)(jax.random.PRNGKey(2), x1[:1]), jax.random.PRNGKey(3))
    want = jacobian_ntk(net.apply, params, x, x)
    want_11, want_12 = want[:5, :5], want[:5, 5:]
    for implementation in implementations:
        got_11 = empirical_ntk(net, params, x1, implementation=implementation, progress=False)
        got_12 = empirical_ntk(net, params, x1, x2, implementation=implementation,
                               progress=False)
        # float64, different contraction order: 1e-12 relative.
        np.testing.assert_allclose(got_11, want_11, rtol=1e-12, atol=1e-12 * abs(want).max())
        np.testing.assert_allclose(got_12, want_12, rtol=1e-12, atol=1e-12 * abs(want).max())
        assert got_11.dtype == np.float64
        np.testing.assert_array_equal(got_11, got_11.T)


def test_plain_function_of_params_and_batched_equals_unbatched():
    # Any f(params, x) works, e.g. neural-tangents' own stax network.
    init_fn, apply_fn, _ = MLP(depth=2, width=8, d=3).stax()
    x = jax.random.normal(jax.random.PRNGKey(0), (7, 6), jnp.float64)
    _, params = init_fn(jax.random.PRNGKey(1), x.shape)
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
    full = empirical_ntk(apply_fn, params, x, progress=False)
    np.testing.assert_allclose(full, jacobian_ntk(apply_fn, params, x, x), rtol=1e-12)
    # batch 3: blocks 3, 3, 1 (+2 padded rows); the cross blocks reuse the same shapes.
    np.testing.assert_allclose(
        empirical_ntk(apply_fn, params, x, batch_size=3, progress=False), full, rtol=1e-12)
    np.testing.assert_allclose(
        empirical_ntk(apply_fn, params, x, x[:5], batch_size=3, progress=False), full[:, :5],
        rtol=1e-12)


def test_float32_params_give_float32_kernel():
    net = MLP(depth=1, width=8, d=2).flax(jnp.float32)
    x = np.random.default_rng(0).normal(size=(4, 5))
    params = net.init(jax.random.PRNGKey(0), x[:1].astype(np.float32))
    k = empirical_ntk(net, params, x, progress=False)
    assert k.dtype == np.float32
    ref = jacobian_ntk(net.apply, jax.tree.map(lambda a: a.astype(jnp.float64), params),
                       jnp.asarray(x), jnp.asarray(x))
    np.testing.assert_allclose(k, ref, rtol=1e-5, atol=1e-6 * abs(ref).max())  # float32 rounding


def test_bad_input_gives_a_clear_error():
    net = MLP(depth=1, width=4, d=2).flax(jnp.float64)
    x = np.ones((3, 5))
    params = net.init(jax.random.PRNGKey(0), x[:1])
    with pytest.raises(ValueError, match="unknown empirical NTK implementation"):
        empirical_ntk(net, params, x, implementation=7)
    with pytest.raises(ValueError, match="one dtype"):
        mixed = {"params": {**params["params"], "readout": jax.tree.map(
            lambda a: a.astype(jnp.float32), params["params"]["readout"])}}
        empirical_ntk(net, mixed, x)
    with pytest.raises(ValueError, match="one \\(n, d\\) output"):
        empirical_ntk(lambda p, x: net.apply(p, x)[:, 0], params, x)
    with pytest.raises(ValueError, match="same input shape"):
        empirical_ntk(net, params, x, np.ones((2, 6)))


# --- width convergence: the twin is the same model as the analytic kernel ----------------

# Widths span 16x, so a 1/sqrt(width) law moves the error by 4x. The fitted slope's spread
# over seeds (bootstrap from 32-48 seeds per width): about 0.03 for the MLP with 12 seeds and
# 0.054 for the CNN with 24, around means of -0.50 and -0.525; so [-0.7, -0.3] is a window
# of at least 3 sigma. The CNN's widths 8-128 cost a fifth of 16-256 (its NTK's cost grows
# like width^2) and fit the law as well (16-256: mean -0.445, spread 0.059). The mismatched
# control's slope: -0.075 +- 0.029 for the CNN. The seeds are fixed: the test is deterministic.
CONVERGENCE_CASES = {
    "mlp": dict(arch=MLP(depth=2, width=1, d=1), shape=(8, 8, 8, 3), widths=(64, 256, 1024),
                seeds=12),
    "myrtle": dict(arch=MyrtleCNN(depth=5, width=1, d=1), shape=(8, 8, 8, 3),
                   widths=(8, 32, 128), seeds=24),
}


@pytest.fixture(scope="module", params=sorted(CONVERGENCE_CASES))
def convergence(request):
    case = CONVERGENCE_CASES[request.param]
    x = np.random.default_rng(0).normal(size=case["shape"]).astype(np.float32)
    arch = case["arch"]
    analytic = analytic_ntk(arch, x, dtype=np.float32, progress=False)
    mismatched = analytic_ntk(arch.replace(w_std=1.1 * arch.w_std), x, dtype=np.float32,
                              progress=False)
    empirical = {}
    for width in case["widths"]:
        net = arch.replace(width=width).flax(jnp.float32)
        # One compile per width; "rbg" keys compile ~3x faster than threefry ones.
        init = jax.jit(net.init)
        empirical[width] = [
            empirical_ntk(net, init(jax.random.key(1000 * width + seed, impl="rbg"), x[:1]), x,
                          progress=False)
            for seed in range(case["seeds"])]
    return request.param, empirical, analytic, mismatched


def _errors(empirical, reference):
    return {w: np.array([np.linalg.norm(k - reference) for k in ks]) / np.linalg.norm(reference)
            for w, ks in empirical.items()}


def _slope(errors):
    # Per-seed errors are heavy-tailed (a few seeds far off); the mean of log-errors is a
    # robust location, and its slope in log width estimates the exponent.
    widths = sorted(errors)
    return np.polyfit(np.log(widths), [np.mean(np.log(errors[w])) for w in widths], 1)[0]


def test_twin_empirical_ntk_converges_to_the_analytic_ntk_like_one_over_sqrt_width(convergence):
    name, empirical, analytic, _ = convergence
    errors = _errors(empirical, analytic)
    slope = _slope(errors)
    assert -0.7 < slope < -0.3, (name, slope, {w: e.mean() for w, e in errors.items()})
    widest = max(errors)
    assert np.exp(np.mean(np.log(errors[widest]))) < 0.2, (name, errors[widest])


def test_a_variance_mismatch_makes_the_error_plateau(convergence):
    # Negative control: the same twins against the analytic NTK of a network with 10% larger
    # sigma_w. The error stops falling (slope near 0), so the convergence test would fail.
    name, empirical, _, mismatched = convergence
    slope = _slope(_errors(empirical, mismatched))
    assert slope > -0.2, (name, slope)


@pytest.mark.slow
@pytest.mark.parametrize(
    "arch, widths, seeds",
    [(MLP(depth=3, width=1, d=4, b_std=0.1, activation="erf"), (64, 256, 1024, 4096), 16),
     (MyrtleCNN(depth=5, width=1, d=1, activation="gelu"), (16, 32, 64, 128, 256, 512), 32)],
    ids=["mlp-erf", "myrtle-gelu"],
)
def test_width_convergence_over_a_wider_range(arch, widths, seeds):
    x = np.random.default_rng(1).normal(size=(8, 8, 8, 3)).astype(np.float32)
    analytic = analytic_ntk(arch, x, dtype=np.float32, progress=False)
    empirical = {}
    for width in widths:
        net = arch.replace(width=width).flax(jnp.float32)
        init = jax.jit(net.init)
        empirical[width] = [
            empirical_ntk(net, init(jax.random.key(seed, impl="rbg"), x[:1]), x, progress=False)
            for seed in range(seeds)]
    slope = _slope(_errors(empirical, analytic))
    assert -0.65 < slope < -0.35, slope
