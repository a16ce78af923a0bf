"""The predictor: kernel-model theory of a trained network, and the comparison of the two.

The central check: a linear "network" f(x) = α W x / √m has the NTK x·y/m exactly (at every
θ), so its gradient-descent run must follow the kernel-model flow the predictor integrates,
up to the O(η) gap between gradient descent and gradient flow.
"""

import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stepwise_ntk.kernels.architectures import MLP, MyrtleCNN
from stepwise_ntk.predictor import compare_run, init_network, network_kernel, predict_run
from stepwise_ntk.training import TrainingDivergedWarning, TrainSettings, train
from tests.reference_kernels import relu_mlp_kernels


class LinearNet(nn.Module):
    """f(x) = x W / √m with W ~ N(0, 1): NTK parameterisation of a linear map, Θ(x, y) = x·y / m."""

    d: int

    @nn.compact
    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        W = self.param("W", nn.initializers.normal(1.0, dtype=x.dtype), (x.shape[1], self.d), x.dtype)
        return x @ W / jnp.sqrt(jnp.asarray(x.shape[1], x.dtype))


def paired_features(n, scales, noise=0.3, seed=0):
    """Views x_i and x'_i = x_i + noise of features with the given scales (well-separated γ)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(scales))) * scales
    xp = x + noise * rng.normal(size=(n, len(scales))) * scales
    return np.concatenate([x, xp])


def dense_Z(n):
    Z = np.zeros((2 * n, 2 * n))
    Z[np.arange(n), n + np.arange(n)] = Z[n + np.arange(n), np.arange(n)] = 1.0
    return Z


SCALES = 2.0 * 1.6 ** -np.arange(8.0)  # γ_j ∝ scale_j²: ratios ≈ 2, γ_1(Θ) ≈ 0.3


@pytest.fixture(scope="module")
def linear_run():
    n, d, alpha, c = 48, 3, 1e-2, 0.04  # 8 γ_1(Θ) c ≈ 0.1; the third step near step 500
    X = paired_features(n, SCALES)
    Xt = paired_features(40, SCALES, seed=1)[:40]
    net = LinearNet(d)
    init = init_network(net, X, Xt, alpha=alpha, key=jax.random.key(0))
    cfg = TrainSettings(learning_rate=c / alpha**2, steps=1000, alpha=alpha, n_records=120)
    res = train(net, cfg, X, test_views=Xt, init_params=init.params, progress=False)
    pred = predict_run(net, X, Xt, init.F0, res.effective_times, alpha=alpha, kernel="empirical_init",
                       params=init.params, F0_test=init.F0_test)
    return dict(X=X, Xt=Xt, net=net, init=init, res=res, pred=pred, n=n, d=d, alpha=alpha, c=c)


def test_linear_network_kernel_and_contrastive_eigenvalues_are_exact(linear_run):
    r = linear_run
    X, Xt, a2, n = r["X"], r["Xt"], r["alpha"] ** 2, r["n"]
    m = X.shape[1]
    pred = r["pred"]
    # The empirical NTK of a linear map is x·y/m at any θ; float64 round-off only.
    np.testing.assert_allclose(np.asarray(pred.K), a2 * X @ X.T / m, rtol=1e-12, atol=1e-18)
    np.testing.assert_allclose(np.asarray(pred.K_test), a2 * Xt @ X.T / m, rtol=1e-12, atol=1e-18)
    # γ: the top eigenvalues of K Z / (2n), numpy dense reference.
    ref = np.sort(np.linalg.eigvals(a2 * X @ X.T / m @ dense_Z(n) / (2 * n)).real)[::-1]
    np.testing.assert_allclose(np.asarray(pred.gammas[:6]), ref[:6], rtol=1e-9)
    assert pred.gap > 2.0  # the setup really has a well-defined top-3 subspace
    # The trained kernel is the same kernel (the NTK of a linear map does not move).
    after = network_kernel(r["net"], X, Xt, kernel="empirical_final", params=r["res"].params)
    np.testing.assert_allclose(after.K, X @ X.T / m, rtol=1e-12, atol=1e-14)


def test_linear_network_follows_the_predicted_kernel_flow(linear_run):
    r = linear_run
    res, pred = r["res"], r["pred"]
    assert res.finished and np.all(res.eigenvalues[-1] > 0.99)  # all d steps taken
    cmp = compare_run(pred, res, arch=r["net"])
    # Gradient descent with step c on the kernel lags the flow by a factor ~ln(1+x)/x per step
    # with x ≤ 8 γ_1(Θ) c (THEORY: dλ/dt = 8γλ(1−λ)); that bounds the step-time error.
    x = 8.0 * float(pred.gammas[0]) / r["alpha"] ** 2 * r["c"]
    tol = x / np.log1p(x) - 1.0
    assert 0.0 < tol < 0.1
    np.testing.assert_allclose(cmp.step_time_ratios, 1.0, atol=tol)
    assert cmp.eigenvalue_error_max < 0.1 and cmp.eigenvalue_error_rms < 0.02
    # Same flow from the same F0_test: the final test embeddings agree to O(η).
    assert cmp.test_alignment_flow > 1 - 1e-6
    assert cmp.test_procrustes_error_flow < 1e-2
    # The closed-form top-3 modes: exact in the small-init limit, up to O(α) mixing here.
    assert cmp.test_alignment > 0.99 and cmp.train_alignment > 0.99
    # The closed-form step times of the small-init theory (λ_j(0) = γ_j ‖m_j(0)‖², an estimate
    # for random init) match the flow's crossings of 1/2 to a few percent (THEORY.md; 5.4% for
    # the third mode here, whose λ_j(0) is smallest and most affected by the modes before it).
    np.testing.assert_allclose(np.sort(np.asarray(pred.step_times)), cmp.theory_step_times, rtol=0.08)
    d = cmp.to_dict()
    assert d["kernel"] == "empirical_init" and len(d["step_time_ratios"]) == r["d"]


def test_nystrom_on_the_views_reproduces_the_views(linear_run):
    # Evaluating the held-out route on the training views themselves must give the views' own
    # closed form (mode_functions_new vs mode_functions) and the flow's own embeddings.
    r = linear_run
    pred = predict_run(r["net"], r["X"], r["X"], r["init"].F0, r["res"].effective_times[-5:],
                       alpha=r["alpha"], kernel="empirical_init", params=r["init"].params, F0_test=r["init"].F0)
    np.testing.assert_allclose(np.asarray(pred.test_embeddings), np.asarray(pred.closed_form_embeddings),
                               rtol=1e-8, atol=1e-10)
    # Two integrations of the same ODE (views directly vs through K(X, X)) agree to the solver tolerance.
    np.testing.assert_allclose(np.asarray(pred.flow_test_embeddings), np.asarray(pred.embeddings), atol=1e-5)


def test_analytic_kernel_is_alpha_squared_times_the_reference_ntk():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 6))
    arch = MLP(depth=1, width=32, d=2, w_std=1.0, readout_w_std=1.0)
    F0 = 1e-4 * rng.normal(size=(20, 2))
    times = np.geomspace(1.0, 1e4, 20)
    _, ntk_ref = relu_mlp_kernels(x, x, depth=1, w_std=1.0)
    for alpha in (0.1, 0.03):
        pred = predict_run(arch, x, x[:5], F0, times, alpha=alpha, F0_test=F0[:5])
        # neural-tangents' closed form vs the arc-cosine recursion in float64; 1e-7 on the
        # diagonal, where arccos near cos = 1 loses half the digits (as in test_kernels).
        np.testing.assert_allclose(np.asarray(pred.K), alpha**2 * ntk_ref, rtol=1e-7)
        np.testing.assert_allclose(np.asarray(pred.K_test), alpha**2 * ntk_ref[:5], rtol=1e-7)
    # "ntk" parameterisation: the analytic kernel is the same at every width.
    wide = network_kernel(arch.replace(width=4096), x)
    np.testing.assert_allclose(wide.K, ntk_ref, rtol=1e-7)


# ------------------------------------------------------------------------------ bad input


@pytest.fixture(scope="module")
def small_images():
    rng = np.random.default_rng(1)
    return rng.normal(size=(8, 4, 4, 3)), rng.normal(size=(4, 4, 4, 3))


def test_kernel_of_another_architecture_is_refused(small_images):
    views, test_views = small_images
    mlp, cnn = MLP(depth=1, width=8, d=2), MyrtleCNN(depth=5, width=2, d=2)
    k_mlp = network_kernel(mlp, views, test_views)
    F0 = np.full((8, 2), 1e-3)
    with pytest.raises(ValueError, match="computed for .*'arch': 'mlp'.* but is used with .*'myrtle'"):
        predict_run(cnn, views, test_views, F0, [1.0, 2.0], alpha=0.1, kernel=k_mlp)
    with pytest.raises(ValueError, match="activation: 'relu' \\(kernel\\) vs 'erf'"):
        predict_run(mlp.replace(activation="erf"), views, test_views, F0, [1.0, 2.0], alpha=0.1, kernel=k_mlp)
    with pytest.raises(ValueError, match="other views"):
        predict_run(mlp, views + 1.0, test_views, F0, [1.0, 2.0], alpha=0.1, kernel=k_mlp)
    # Same architecture at another width: the analytic kernel (ntk parameterisation) still applies.
    pred = predict_run(mlp.replace(width=64), views, test_views, F0, [1.0, 2.0], alpha=0.1, kernel=k_mlp)
    assert pred.kernel == "analytic"


def test_prediction_for_one_architecture_refuses_a_run_of_another(small_images):
    views, test_views = small_images
    mlp, cnn = MLP(depth=1, width=8, d=2), MyrtleCNN(depth=5, width=2, d=2)
    init = init_network(mlp, views, test_views, alpha=0.1, key=jax.random.key(0))
    pred = predict_run(mlp, views, test_views, init.F0, [1.0, 2.0], alpha=0.1, F0_test=init.F0_test)
    cnn_run = train(cnn, TrainSettings(steps=2, alpha=0.1), views, test_views=test_views, progress=False)
    with pytest.raises(ValueError, match="computed for .*'mlp'.* but is used with .*'myrtle'"):
        compare_run(pred, cnn_run, arch=cnn)
    with pytest.raises(ValueError, match="the run's params do not belong to .*'mlp'"):
        compare_run(pred, cnn_run, arch=mlp)  # a CNN run claimed to be the MLP
    deeper = train(mlp.replace(depth=2), TrainSettings(steps=2, alpha=0.1), views, test_views=test_views,
                   progress=False)
    with pytest.raises(ValueError, match="depth: 1 \\(kernel\\) vs 2"):
        compare_run(pred, deeper, arch=mlp.replace(depth=2))


def test_d_larger_than_the_positive_gammas_is_refused():
    # Two features: K = X Xᵀ/2 has rank 2, so only two γ can be positive.
    X = paired_features(10, np.array([1.0, 0.5]))
    net = LinearNet(3)
    init = init_network(net, X, alpha=0.1, key=jax.random.key(0))
    with pytest.raises(ValueError, match="Only 2 contrastive eigenvalues .* d = 3"):
        predict_run(net, X, None, init.F0, [1.0, 2.0], alpha=0.1, kernel="empirical_init", params=init.params)


def test_nan_and_inconsistent_inputs_are_refused(small_images):
    views, test_views = small_images
    mlp = MLP(depth=1, width=8, d=2)
    F0 = np.full((8, 2), 1e-3)
    bad = views.copy()
    bad[3, 1, 2, 0] = np.nan
    with pytest.raises(ValueError, match="views contains 1 NaN or Inf"):
        predict_run(mlp, bad, test_views, F0, [1.0], alpha=0.1)
    with pytest.raises(ValueError, match="test_views contains 1 NaN or Inf"):
        predict_run(mlp, views, bad[:4], F0, [1.0], alpha=0.1)
    with pytest.raises(ValueError, match="views contains 1 NaN or Inf"):
        init_network(mlp, bad, alpha=0.1, key=jax.random.key(0))
    with pytest.raises(ValueError, match="F0 contains NaN"):
        predict_run(mlp, views, test_views, np.where(F0 > 0, np.nan, F0), [1.0], alpha=0.1)
    with pytest.raises(ValueError, match="architecture has d = 2"):
        predict_run(mlp, views, test_views, np.full((8, 3), 1e-3), [1.0], alpha=0.1)
    with pytest.raises(ValueError, match=r"F0 has 6 rows but .* 2n = 8"):
        predict_run(mlp, views, test_views, F0[:6], [1.0], alpha=0.1)
    with pytest.raises(ValueError, match="alpha must be"):
        predict_run(mlp, views, test_views, F0, [1.0], alpha=0.0)
    with pytest.raises(ValueError, match="pass params="):
        predict_run(mlp, views, test_views, F0, [1.0], alpha=0.1, kernel="empirical_init")
    with pytest.raises(ValueError, match="not used by the analytic kernel"):
        network_kernel(mlp, views, params={"params": {}})
    with pytest.raises(ValueError, match="kernel must be one of"):
        network_kernel(mlp, views, kernel="nngp")
    with pytest.raises(ValueError, match="bare Flax module"):
        network_kernel(LinearNet(2), views)
    with pytest.raises(ValueError, match="not small"):  # λ_j(0) ≥ 1: no step to predict
        predict_run(mlp, views, test_views, 100.0 * np.eye(8, 2), [1.0], alpha=1.0)


def test_a_diverged_run_is_reported_not_compared(small_images):
    views, test_views = small_images
    mlp = MLP(depth=1, width=8, d=2)
    init = init_network(mlp, views, test_views, alpha=0.1, key=jax.random.key(0))
    pred = predict_run(mlp, views, test_views, init.F0, [1.0, 2.0], alpha=0.1, F0_test=init.F0_test)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TrainingDivergedWarning)
        res = train(mlp, TrainSettings(learning_rate=1e6, steps=50, alpha=0.1, chunk_size=10), views,
                    test_views=test_views, init_params=init.params, progress=False)
    assert res.diverged_at is not None
    with pytest.raises(ValueError, match=f"diverged at step {res.diverged_at}"):
        compare_run(pred, res, arch=mlp)


# ---- the loss-aware stable step (predictor._step_size) --------------------------------------

def _tiny_kernel(n=3, m=5, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, m))
    views = np.concatenate([X + 0.3 * rng.normal(size=(n, m)), X + 0.3 * rng.normal(size=(n, m))])
    return views @ views.T / m, views


def _dense_hessian(fn, F, eps=1e-5):
    """Central finite differences of the float64 gradient: an independent dense Hessian."""
    g = jax.grad(fn)
    N = F.size
    H = np.zeros((N, N))
    for i in range(N):
        e = np.zeros(N)
        e[i] = eps
        H[:, i] = (np.asarray(g(jnp.asarray(F + e.reshape(F.shape)))) -
                   np.asarray(g(jnp.asarray(F - e.reshape(F.shape))))).ravel() / (2 * eps)
    return 0.5 * (H + H.T)


@pytest.mark.parametrize("loss,kw", [("barlow_twins", None), ("simclr", {"normalize": False, "temperature": 0.5}),
                                     ("vicreg", {"smooth": 0.01})])
def test_loss_curvature_matches_a_dense_numpy_hessian(loss, kw):
    from stepwise_ntk.losses import resolve_loss
    from stepwise_ntk.predictor import loss_curvature

    theta, _ = _tiny_kernel()
    F = np.random.default_rng(1).normal(size=(6, 2)) * 0.5
    H = _dense_hessian(resolve_loss(loss, loss_kwargs=kw), F)
    # Θ ⊗ I_d acting on vec(F) (row-major: F[i, a] at i·d + a), eigenvalues of (Θ⊗I) H.
    big = np.kron(theta, np.eye(2))
    want = float(np.max(np.linalg.eigvals(big @ H).real))
    got = float(loss_curvature(theta, 3, loss, F, loss_kwargs=kw))
    assert got == pytest.approx(want, rel=1e-5)


def test_barlow_twins_curvature_at_the_fixed_point_is_8_gamma_1():
    from stepwise_ntk.predictor import loss_curvature, stable_step_size
    from stepwise_ntk.theory import contrastive_eigensystem, final_embeddings

    theta, _ = _tiny_kernel()
    es = contrastive_eigensystem(jnp.asarray(theta), 3)
    g = np.asarray(es.gammas)
    F_star = np.asarray(final_embeddings(es, None, 2))  # aligned fixed point C = I
    C = F_star[:3].T @ F_star[3:] / 3
    np.testing.assert_allclose(0.5 * (C + C.T), np.eye(2), atol=1e-8)
    assert float(loss_curvature(theta, 3, "barlow_twins", F_star)) == pytest.approx(8 * g[0], rel=1e-8)
    # From a small F0 the flow ends at the fixed point: the same step as the closed form (within 5%).
    F0 = 1e-3 * np.random.default_rng(2).normal(size=(6, 2))
    c_closed = stable_step_size(theta, 3, 0.2)
    c_flow = stable_step_size(theta, 3, 0.2, loss="barlow_twins", F=F0)
    assert c_flow == pytest.approx(c_closed, rel=0.05)
    assert c_closed == pytest.approx(0.2 / (8 * g[0]))


@pytest.mark.slow
@pytest.mark.parametrize("loss,kw", [("barlow_twins", None), ("vicreg", {"smooth": 0.01})])
def test_gradient_descent_is_bounded_below_the_predicted_limit_and_diverges_above(loss, kw):
    """Kernel-model GD F <- F − c Θ ∇L(F) near a fixed point (SimCLR's dot-product form has none: it grows)."""
    from stepwise_ntk.losses import resolve_loss
    from stepwise_ntk.predictor import loss_curvature

    theta, _ = _tiny_kernel()
    fn = resolve_loss(loss, loss_kwargs=kw)
    grad = jax.jit(jax.grad(fn))
    # Relax to a stationary state by small steps first (the curvature there is the limit).
    F = 0.5 * np.random.default_rng(3).normal(size=(6, 2))
    c_small = 0.05 / float(loss_curvature(theta, 3, loss, F, loss_kwargs=kw) + 1.0)
    for _ in range(4000):
        F = F - c_small * theta @ np.asarray(grad(jnp.asarray(F)))
    mu = float(loss_curvature(theta, 3, loss, F, loss_kwargs=kw))
    assert mu > 0
    limit = 2.0 / mu

    def run(c):
        G = F + 1e-4 * np.random.default_rng(4).normal(size=F.shape)
        for _ in range(3000):
            G = G - c * theta @ np.asarray(grad(jnp.asarray(G)))
            if not np.all(np.isfinite(G)) or np.abs(G - F).max() > 1.0:
                return False
        return np.abs(G - F).max() < 1e-2

    assert run(0.9 * limit)
    assert not run(1.2 * limit)


def test_stable_step_size_argument_errors():
    from stepwise_ntk.predictor import stable_step_size

    theta, _ = _tiny_kernel()
    with pytest.raises(ValueError, match="pass F"):
        stable_step_size(theta, 3, 0.1, loss="simclr")
    with pytest.raises(ValueError, match="go with a loss"):
        stable_step_size(theta, 3, 0.1, F=np.zeros((6, 2)))
    with pytest.raises(ValueError, match="rate"):
        stable_step_size(theta, 3, 2.5)
