"""Tests for stepwise_ntk.training: the finite-network train loop.

References, independent of the scan/cond/record machinery under test:

* a float64 numpy gradient-descent loop on the linear model ``f(x) = W x``
  (``W ← W − 4η (W Γ Wᵀ − I) W Γ``, THEORY.md) and the gradient-flow ODE solved by scipy;
* a plain Python loop of optax updates (no jit, no scan) that draws batches and
  augmentations with the documented key schedule;
* closed-form properties: α scaling of C, permutation invariance of the Barlow Twins loss,
  the exact first divergent step of the numpy reference.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.integrate import solve_ivp

from stepwise_ntk.losses import LOSSES
from stepwise_ntk.solver import SolverSettings, linear_gd, solve
from stepwise_ntk.training import (
    TrainingDivergedWarning,
    TrainSettings,
    cross_correlation_eigenvalues,
    record_steps,
    train,
)
from stepwise_ntk.training import _loop as _train_loop


def bt_loss(F):
    """Barlow Twins ``||C − I||_F²`` written from THEORY.md (reference for the tests)."""
    n = F.shape[0] // 2
    C = (F[:n].T @ F[n:] + F[n:].T @ F[:n]) / (2 * n)
    return jnp.sum((C - jnp.eye(F.shape[1], dtype=F.dtype)) ** 2)


class Linear(nn.Module):
    """f(x) = W x; flax stores kernel = Wᵀ."""

    d: int
    dtype: type = jnp.float64

    @nn.compact
    def __call__(self, x):
        return nn.Dense(self.d, use_bias=False, param_dtype=self.dtype)(x.reshape(x.shape[0], -1))


class TinyMLP(nn.Module):
    d: int = 3
    width: int = 16
    dtype: type = jnp.float64

    @nn.compact
    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        x = jnp.tanh(nn.Dense(self.width, param_dtype=self.dtype)(x))
        return nn.Dense(self.d, param_dtype=self.dtype)(x)


class TinyCNN(nn.Module):
    """One 3×3 convolution, mean pooling, a dense readout: a CNN that compiles in a second."""

    d: int = 2
    dtype: type = jnp.float64

    @nn.compact
    def __call__(self, x):
        x = jnp.tanh(nn.Conv(3, (3, 3), param_dtype=self.dtype)(x))
        return nn.Dense(self.d, param_dtype=self.dtype)(x.mean(axis=(1, 2)))


def force_path(monkeypatch, stepwise):
    """Make train() run its chunks scanned (False) or stepped (True) whatever the network."""
    monkeypatch.setattr(_train_loop, "stepwise_wanted", lambda *args: stepwise)


def linear_problem(seed=0, n=12, m=5, d=2, noise=0.3, w0_scale=0.05):
    """Pairs X, X' (rows are views), Γ, and a small initial W: (d, m)."""
    rng = np.random.default_rng(seed)
    scales = np.linspace(1.3, 0.5, m)
    X = rng.normal(size=(n, m)) * scales
    Xp = X + noise * rng.normal(size=(n, m)) * scales
    views = np.concatenate([X, Xp])
    gamma = (X.T @ Xp + Xp.T @ X) / (2 * n)
    W0 = w0_scale * rng.normal(size=(d, m))
    return views, gamma, W0


def numpy_gd(gamma, W0, lr, steps):
    """Float64 GD on L = ||W Γ Wᵀ − I||²: list of W_k, k = 0..steps (stops at overflow)."""
    Ws = [W0]
    W = W0
    eye = np.eye(W0.shape[0])
    with np.errstate(over="ignore", invalid="ignore"):
        for _ in range(steps):
            C = W @ gamma @ W.T
            W = W - lr * 4 * (C - eye) @ W @ gamma
            Ws.append(W)
    return Ws


def bt_numpy(W, gamma):
    with np.errstate(over="ignore", invalid="ignore"):
        C = W @ gamma @ W.T
        return float(np.sum((C - np.eye(W.shape[0])) ** 2))


def linear_params(W):
    return {"params": {"Dense_0": {"kernel": jnp.asarray(W.T)}}}


# --------------------------------------------------------------------------- records


def test_record_steps_are_log_spaced_and_complete():
    s = record_steps(10_000, 40)
    assert s[0] == 0 and s[-1] == 10_000 and np.all(np.diff(s) > 0)
    # Away from integer rounding, consecutive ratios are the constant 10000^(1/39).
    ratio = s[1:][s[:-1] > 100] / s[:-1][s[:-1] > 100]
    np.testing.assert_allclose(ratio, 10_000 ** (1 / 39), rtol=0.02)
    both = record_steps(100, 5, record_every=25)
    assert set([0, 25, 50, 75, 100]) <= set(both.tolist())
    assert record_steps(0, 10).tolist() == [0]


@pytest.mark.parametrize(
    "bad",
    [
        dict(steps=-1, n_records=3),
        dict(steps=10, n_records=0),
        dict(steps=10, n_records=3, record_every=0),
    ],
)
def test_record_steps_bad_input(bad):
    with pytest.raises(ValueError):
        record_steps(**bad)


def test_recorded_eigenvalues_are_those_of_dense_swap_cross_correlation():
    rng = np.random.default_rng(1)
    n, d = 7, 3
    F = rng.normal(size=(2 * n, d))
    Z = np.zeros((2 * n, 2 * n))
    Z[np.arange(n), n + np.arange(n)] = Z[n + np.arange(n), np.arange(n)] = 1
    C = F.T @ Z @ F / (2 * n)
    np.testing.assert_allclose(
        cross_correlation_eigenvalues(jnp.asarray(F)),
        np.linalg.eigvalsh(C)[::-1],
        rtol=1e-12,
        atol=1e-14,
    )


# --------------------------------------------------------------------------- linear network


def test_linear_network_gd_reproduces_parameter_space_trajectory():
    views, gamma, W0 = linear_problem()
    lr, steps = 0.05, 300
    cfg = TrainSettings(
        loss="barlow_twins",
        learning_rate=lr,
        steps=steps,
        n_records=25,
        chunk_size=37,
        record_embeddings=True,
    )
    r = train(Linear(2), cfg, jnp.asarray(views), init_params=linear_params(W0), progress=False)
    Ws = numpy_gd(gamma, W0, lr, steps)
    assert r.finished and r.steps_done == steps and r.diverged_at is None
    np.testing.assert_array_equal(r.steps, record_steps(steps, 25))
    np.testing.assert_allclose(r.effective_times, lr * r.steps, rtol=1e-15)
    ref_eigs = np.array([np.linalg.eigvalsh(Ws[k] @ gamma @ Ws[k].T)[::-1] for k in r.steps])
    ref_loss = np.array([bt_numpy(Ws[k], gamma) for k in r.steps])
    ref_F = np.array([views @ Ws[k].T for k in r.steps])
    # Same algorithm in float64, different summation order: agreement to ~1e-13; 1e-10 leaves room
    # for growth of rounding differences along the saddle escapes.
    np.testing.assert_allclose(r.eigenvalues, ref_eigs, rtol=0, atol=1e-10)
    np.testing.assert_allclose(r.loss, ref_loss, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(r.embeddings, ref_F, rtol=0, atol=1e-10)
    np.testing.assert_allclose(
        r.params["params"]["Dense_0"]["kernel"].T, Ws[-1], rtol=0, atol=1e-10
    )
    # The run reaches the minimum: every eigenvalue of C at 1 (a property of the end state).
    np.testing.assert_allclose(r.eigenvalues[-1], 1.0, atol=1e-6)
    np.testing.assert_allclose(r.train_embeddings, views @ Ws[-1].T, atol=1e-10)

    # The solver's parameter-space reference (linear_gd: W ← W − η ∇_F Lᵀ X in a while loop)
    # observed at the same effective times; X_test = the views gives X W_kᵀ at every record.
    ref = linear_gd(
        jnp.asarray(views), 12, jnp.asarray(W0), lr, lr * r.steps, X_test=jnp.asarray(views)
    )
    np.testing.assert_allclose(r.effective_times, ref.times, rtol=1e-15)
    np.testing.assert_allclose(r.eigenvalues, ref.eigenvalues, rtol=0, atol=1e-10)
    np.testing.assert_allclose(r.loss, ref.loss, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(r.embeddings, ref.test_embeddings, rtol=0, atol=1e-10)
    np.testing.assert_allclose(r.train_embeddings, ref.embeddings, rtol=0, atol=1e-10)


def test_linear_gd_approaches_gradient_flow_linearly_in_learning_rate():
    views, gamma, W0 = linear_problem(seed=3)
    T = 1.5  # mid-staircase: the eigenvalues are moving fast here

    def flow(t, w):
        W = w.reshape(W0.shape)
        return (-4 * (W @ gamma @ W.T - np.eye(W.shape[0])) @ W @ gamma).ravel()

    W_T = (
        solve_ivp(flow, (0, T), W0.ravel(), method="DOP853", rtol=1e-12, atol=1e-14)
        .y[:, -1]
        .reshape(W0.shape)
    )
    # The solver's gradient flow of the kernel model with K = X Xᵀ (the linear model in
    # function space), F(0) = X W0ᵀ.
    X = jnp.asarray(views)
    flow_traj = solve(
        X @ X.T,
        12,
        X @ jnp.asarray(W0).T,
        jnp.array([0.5, T]),
        settings=SolverSettings(rtol=1e-10),
    )
    np.testing.assert_allclose(flow_traj.embeddings, views @ W_T.T, atol=1e-7)  # two ODE routes
    errors_w, errors_f = [], []
    for lr in (0.02, 0.01, 0.005):
        cfg = TrainSettings(learning_rate=lr, steps=round(T / lr), n_records=3, chunk_size=128)
        r = train(Linear(2), cfg, X, init_params=linear_params(W0), progress=False)
        assert r.effective_times[-1] == pytest.approx(T)
        errors_w.append(np.abs(np.asarray(r.params["params"]["Dense_0"]["kernel"]).T - W_T).max())
        errors_f.append(np.abs(np.asarray(r.train_embeddings - flow_traj.embeddings)).max())
    # Gradient descent is the Euler scheme of the flow: global error O(η), so halving η halves it
    # (the ratio is 2 + O(η); the ODE references are ~1e-8 accurate, far below the gaps ~1e-3).
    for errors in (errors_w, errors_f):
        ratios = np.array(errors[:-1]) / np.array(errors[1:])
        np.testing.assert_allclose(ratios, 2.0, rtol=0.08)
    assert errors_w[-1] < 0.05 * np.abs(W_T).max()


# --------------------------------------------------------------------------- optimisers, modes


def optax_reference(net, tx, variables, views, loss, steps, key, alpha, batch=None):
    """Python loop of single jitted steps (no scan, no cond); key schedule as documented in
    _train_loop: the key is split once per step, the first half carried on."""

    @jax.jit
    def step(variables, opt_state, x):
        grads = jax.grad(lambda v: loss(alpha * net.apply(v, x)))(variables)
        with jax.numpy_dtype_promotion("standard"):  # optax's Adam mixes int32 and floats
            updates, opt_state = tx.update(grads, opt_state, variables)
        return optax.apply_updates(variables, updates), opt_state

    batch = None if batch is None else jax.jit(batch)
    _, key = jax.random.split(key)
    opt_state = tx.init(variables)
    for _ in range(steps):
        key, sub = jax.random.split(key)
        variables, opt_state = step(variables, opt_state, views if batch is None else batch(sub))
    return variables


def tree_close(a, b, atol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=atol)


@pytest.fixture(scope="module")
def mlp_data():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(10, 6))
    views = jnp.asarray(np.concatenate([X, X + 0.2 * rng.normal(size=X.shape)]))
    return views, jnp.asarray(rng.normal(size=(4, 6)))


def test_momentum_minibatch_matches_python_optax_loop(mlp_data):
    views, _ = mlp_data
    net, n, b = TinyMLP(), 10, 4
    cfg = TrainSettings(
        optimizer="momentum",
        learning_rate=0.02,
        momentum=0.8,
        steps=60,
        alpha=0.5,
        batch_size=b,
        chunk_size=16,
    )
    key = jax.random.key(7)
    r = train(net, cfg, views, key=key, progress=False)
    init = net.init(jax.random.split(key)[0], views[:1])

    def batch(sub):
        idx = jax.random.choice(sub, n, (b,), replace=False)
        return jnp.concatenate([views[idx], views[idx + n]])

    ref = optax_reference(
        net, optax.sgd(0.02, momentum=0.8), init, views, bt_loss, 60, key, 0.5, batch
    )
    tree_close(r.params, ref, atol=1e-12)  # float64, same operations: rounding-level agreement
    # Records are on the fixed views, not the minibatch: check the last one independently.
    np.testing.assert_allclose(r.loss[-1], bt_loss(0.5 * net.apply(ref, views)), rtol=1e-10)


def test_adam_with_fresh_augmentations_matches_python_loop(mlp_data):
    views, _ = mlp_data
    images = views[:10]
    net, b = TinyMLP(), 6

    def augment(key, imgs):
        return jnp.concatenate([imgs, imgs + 0.1 * jax.random.normal(key, imgs.shape, imgs.dtype)])

    cfg = TrainSettings(
        optimizer="adam", learning_rate=0.01, steps=40, alpha=0.5, batch_size=b, chunk_size=16
    )
    key = jax.random.key(3)
    r = train(net, cfg, views, key=key, augment=augment, images=images, progress=False)
    init = net.init(jax.random.split(key)[0], views[:1])

    def batch(sub):
        pick, aug = jax.random.split(sub)
        return augment(aug, images[jax.random.choice(pick, 10, (b,), replace=False)])

    ref = optax_reference(net, optax.adam(0.01), init, views, bt_loss, 40, key, 0.5, batch)
    tree_close(r.params, ref, atol=1e-12)
    # Fresh noise each step matters: training on one fixed augmentation gives other parameters.
    fixed = optax_reference(
        net,
        optax.adam(0.01),
        init,
        views,
        bt_loss,
        40,
        key,
        0.5,
        lambda s: augment(jax.random.key(0), images[:b]),
    )
    assert (
        max(
            float(jnp.abs(x - y).max())
            for x, y in zip(jax.tree.leaves(r.params), jax.tree.leaves(fixed), strict=True)
        )
        > 1e-4
    )


@pytest.mark.parametrize("name", ["barlow_twins", "simclr", "vicreg"])
def test_named_losses_train_like_a_python_loop(mlp_data, name):
    views, _ = mlp_data
    net, fn = TinyMLP(), LOSSES[name]
    cfg = TrainSettings(loss=name, learning_rate=0.01, steps=25, alpha=1.0, chunk_size=8, n_records=5)
    key = jax.random.key(2)
    r = train(net, cfg, views, key=key, progress=False)
    init = net.init(jax.random.split(key)[0], views[:1])
    ref = optax_reference(net, optax.sgd(0.01), init, views, fn, 25, key, 1.0)
    tree_close(r.params, ref, atol=1e-12)  # float64, same operations in another loop
    np.testing.assert_allclose(r.loss[0], fn(net.apply(init, views)), rtol=1e-12)
    np.testing.assert_allclose(r.loss[-1], fn(net.apply(ref, views)), rtol=1e-10)
    assert r.loss[-1] < r.loss[0]


def test_minibatch_of_all_pairs_equals_full_batch(mlp_data):
    # The Barlow Twins loss is a sum over pairs, so a random permutation of all n pairs is
    # the same objective: minibatch mode with batch_size = n must follow the full-batch run.
    views, _ = mlp_data
    base = dict(learning_rate=0.05, steps=80, alpha=0.3, n_records=10, chunk_size=32)
    full = train(TinyMLP(), TrainSettings(**base), views, progress=False)
    mini = train(TinyMLP(), TrainSettings(**base, batch_size=10), views, progress=False)
    tree_close(full.params, mini.params, atol=1e-11)
    np.testing.assert_allclose(mini.eigenvalues, full.eigenvalues, atol=1e-11)
    np.testing.assert_allclose(mini.loss, full.loss, rtol=1e-11)


def test_alpha_scales_embeddings_and_C(mlp_data):
    views, test_views = mlp_data
    net = TinyMLP()
    cfg = TrainSettings(loss=bt_loss, learning_rate=0.01, steps=0, alpha=0.1)
    r1 = train(net, cfg, views, test_views=test_views, progress=False)
    r2 = train(
        net,
        TrainSettings(loss=bt_loss, learning_rate=0.01, steps=0, alpha=0.2),
        views,
        progress=False,
    )
    # Same key -> same θ_0; f = α net so C scales by α² exactly (up to rounding).
    np.testing.assert_allclose(r2.eigenvalues[0], 4 * r1.eigenvalues[0], rtol=1e-12)
    F = 0.1 * np.asarray(net.apply(r1.params, views))
    np.testing.assert_allclose(r1.train_embeddings, F, rtol=1e-14)
    np.testing.assert_allclose(
        r1.test_embeddings, 0.1 * np.asarray(net.apply(r1.params, test_views)), rtol=1e-14
    )
    np.testing.assert_allclose(r1.loss[0], np.asarray(bt_loss(jnp.asarray(F))), rtol=1e-13)


def test_same_key_same_result_other_key_other_init(mlp_data):
    views, _ = mlp_data
    cfg = TrainSettings(loss=bt_loss, learning_rate=0.05, steps=30, alpha=0.3, chunk_size=8)
    a = train(TinyMLP(), cfg, views, progress=False)
    b = train(TinyMLP(), cfg, views, key=jax.random.key(cfg.seed), progress=False)
    c = train(TinyMLP(), cfg, views, key=jax.random.key(1), progress=False)
    tree_close(a.params, b.params, atol=0)
    np.testing.assert_array_equal(a.eigenvalues, b.eigenvalues)
    assert not np.allclose(a.eigenvalues[0], c.eigenvalues[0])


def test_one_compilation_for_all_chunks_and_repeat_calls(mlp_data):
    views, _ = mlp_data
    traces = []

    def counting_loss(F):
        traces.append(1)  # Python side effect: runs only while JAX traces
        return bt_loss(F)

    cfg = TrainSettings(loss=counting_loss, learning_rate=0.05, steps=95, alpha=0.3, chunk_size=10)
    before = _train_loop.run_chunk._cache_size()
    train(TinyMLP(), cfg, views, progress=False)  # 10 chunks
    first = len(traces)
    assert _train_loop.run_chunk._cache_size() == before + 1
    # One trace for init_state's shape check (eval_shape), one for the chunk; a retrace per
    # chunk would add nine more.
    assert first == 2
    train(TinyMLP(), cfg, views, key=jax.random.key(9), progress=False)
    assert len(traces) == first  # both traces are cached across calls with the same shapes
    assert _train_loop.run_chunk._cache_size() == before + 1


# --------------------------------------------------------------------------- stepped chunks


@pytest.fixture(scope="module")
def cnn_views():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(6, 4, 4, 3))
    return jnp.asarray(np.concatenate([X, X + 0.2 * rng.normal(size=X.shape)]))


def test_stepped_chunks_are_chosen_for_convolutions_on_cpu(mlp_data, cnn_views):
    def wanted(net, views):
        program = _train_loop.Program(net, bt_loss, "sgd", 0.1, 0.9, None, 10, None, False)
        data = _train_loop.LoopData(views, None, jnp.zeros(1, jnp.int32), jnp.asarray(1),
                                    jnp.asarray(1.0), jnp.asarray(1e6))
        state = _train_loop.init_state(program, data, jax.random.key(0), None)
        return _train_loop.stepwise_wanted(program, state, data)

    assert jax.default_backend() == "cpu"
    assert wanted(TinyCNN(), cnn_views)
    assert not wanted(TinyMLP(), mlp_data[0])


STEPPED_MODES = {
    "full_batch_sgd": dict(learning_rate=0.3, alpha=0.5),
    "minibatch_momentum_embeddings": dict(
        optimizer="momentum", learning_rate=0.02, alpha=0.5, batch_size=3, record_embeddings=True
    ),
}


@pytest.mark.parametrize("mode", sorted(STEPPED_MODES))
@pytest.mark.parametrize("net", ["mlp", "cnn"])
def test_stepped_chunks_give_the_scanned_result(monkeypatch, mlp_data, cnn_views, net, mode):
    # The same operations in another XLA program (top level vs inside while/cond): float64
    # results agree to rounding, 1e-12 after 23 steps on these well-conditioned problems.
    model, views = (TinyMLP(), mlp_data[0]) if net == "mlp" else (TinyCNN(), cnn_views)
    cfg = TrainSettings(steps=23, n_records=8, chunk_size=5, **STEPPED_MODES[mode])
    runs = {}
    for stepwise in (False, True):
        force_path(monkeypatch, stepwise)
        runs[stepwise] = train(model, cfg, views, key=jax.random.key(2), progress=False)
    scanned, stepped = runs[False], runs[True]
    assert stepped.finished and scanned.finished and stepped.steps_done == 23
    np.testing.assert_array_equal(stepped.steps, scanned.steps)
    assert np.all(np.isfinite(scanned.loss)) and scanned.loss[-1] < scanned.loss[0]
    for name in ("loss", "eigenvalues", "embeddings", "train_embeddings"):
        x, y = getattr(stepped, name), getattr(scanned, name)
        assert (x is None) == (y is None) == (name == "embeddings" and mode == "full_batch_sgd")
        if x is not None:
            np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-12, err_msg=name)
    tree_close(stepped.params, scanned.params, atol=1e-12)


def test_stepped_chunks_compile_once_for_all_chunks(cnn_views):
    traces = []

    def counting_loss(F):
        traces.append(1)  # Python side effect: runs only while JAX traces
        return bt_loss(F)

    cfg = TrainSettings(loss=counting_loss, learning_rate=0.05, steps=47, n_records=6,
                        chunk_size=5)
    before = _train_loop.run_step._cache_size()
    chunks_before = _train_loop.run_chunk._cache_size()
    r = train(TinyCNN(), cfg, cnn_views, progress=False)  # 10 chunks, picked stepped (CNN on CPU)
    assert r.finished and r.steps.size == 7
    # Two variants of the step (with and without the record), not one per chunk or per step.
    assert _train_loop.run_step._cache_size() == before + 2
    assert _train_loop.run_chunk._cache_size() == chunks_before  # the scan was not used
    first = len(traces)
    assert first == 3  # init_state's shape check and the two variants
    train(TinyCNN(), cfg, cnn_views, key=jax.random.key(9), progress=False)
    assert len(traces) == first and _train_loop.run_step._cache_size() == before + 2


def test_stepped_chunks_leave_init_params_usable(cnn_views):
    # The stepped loop donates the state's buffers; the caller's initial variables survive.
    init = TinyCNN().init(jax.random.key(1), cnn_views[:1])
    copy = jax.tree.map(np.array, init)
    cfg = TrainSettings(learning_rate=0.1, steps=5, chunk_size=2)
    r = train(TinyCNN(), cfg, cnn_views, init_params=init, progress=False)
    tree_close(init, copy, atol=0)
    assert not np.allclose(r.params["params"]["Dense_0"]["kernel"], copy["params"]["Dense_0"]["kernel"])


# --------------------------------------------------------------------------- divergence


@pytest.mark.parametrize("stepwise", [False, True])
@pytest.mark.parametrize("chunk_size", [1, 3, 5, 50])  # 5: the bad step opens a chunk
def test_divergence_is_reported_at_the_exact_step(monkeypatch, chunk_size, stepwise):
    force_path(monkeypatch, stepwise)
    views, gamma, W0 = linear_problem(seed=2)
    lr, thr = 0.4, 1e4  # above the stability limit 2 / (8 γ_1 λ) of GD at the minimum
    Ws = numpy_gd(gamma, W0, lr, 60)
    losses = np.array([bt_numpy(W, gamma) for W in Ws])
    bad = np.flatnonzero(~np.isfinite(losses) | (losses > thr))
    assert bad.size and bad[0] > 2  # the reference run does diverge, after a few fine steps
    s_star = int(bad[0])
    cfg = TrainSettings(
        learning_rate=lr, steps=60, n_records=60, chunk_size=chunk_size, divergence_threshold=thr
    )
    with pytest.warns(TrainingDivergedWarning, match=f"step {s_star}"):
        r = train(Linear(2), cfg, jnp.asarray(views), init_params=linear_params(W0), progress=False)
    assert r.diverged_at == s_star and not r.finished and r.steps_done == s_star - 1
    assert r.diverged_loss == pytest.approx(losses[s_star], rel=1e-8)
    np.testing.assert_array_equal(r.steps, np.arange(s_star))  # records kept, up to the bad step
    np.testing.assert_allclose(r.loss, losses[:s_star], rtol=1e-9)
    # The returned parameters are the last good ones, W_{s*-1}.
    np.testing.assert_allclose(r.params["params"]["Dense_0"]["kernel"].T, Ws[s_star - 1], rtol=1e-9)
    assert np.all(np.isfinite(r.train_embeddings))


def test_nonfinite_loss_without_threshold_and_bad_first_step(mlp_data):
    views, _ = mlp_data
    with pytest.warns(TrainingDivergedWarning):
        r = train(
            Linear(2),
            TrainSettings(loss=bt_loss, learning_rate=50.0, steps=200, divergence_threshold=None),
            views,
            progress=False,
        )
    assert r.diverged_at is not None and not np.isfinite(r.diverged_loss)
    assert np.all(np.isfinite(r.loss)) and r.steps.size == np.sum(
        record_steps(200, 100) < r.diverged_at
    )
    # A loss already above the threshold at step 0: nothing recorded, the initial parameters back.
    with pytest.warns(TrainingDivergedWarning, match="step 0"):
        r0 = train(
            TinyMLP(),
            TrainSettings(loss=bt_loss, steps=10, alpha=1e3, divergence_threshold=10.0),
            views,
            progress=False,
        )
    assert r0.diverged_at == 0 and r0.steps.size == 0 and r0.steps_done == 0
    init = TinyMLP().init(jax.random.split(jax.random.key(0))[0], views[:1])
    tree_close(r0.params, init, atol=0)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("views", lambda v: dict(views=v.at[3, 1].set(jnp.nan))),
        ("test_views", lambda v: dict(views=v, test_views=v[:2].at[0, 0].set(jnp.inf))),
        (
            "images",
            lambda v: dict(
                views=v,
                images=v[:10].at[1, 1].set(jnp.nan),
                augment=lambda k, x: jnp.concatenate([x, x]),
            ),
        ),
    ],
)
def test_nan_in_data_is_rejected_naming_the_array(mlp_data, name, kwargs):
    views, _ = mlp_data
    with pytest.raises(ValueError, match=rf"^{name} contains 1 NaN or Inf"):
        train(
            TinyMLP(),
            TrainSettings(loss=bt_loss, steps=1),
            key=jax.random.key(0),
            progress=False,
            **kwargs(views),
        )


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(views=np.zeros((5, 3))), ValueError, "2n"),
        (dict(views=np.zeros((4, 3), np.int32)), ValueError, "floating"),
        (dict(test_views=np.zeros((2, 4))), ValueError, "test_views"),
        (dict(images=np.zeros((3, 6))), ValueError, "augment and images"),
        (dict(augment=lambda k, x: x), ValueError, "augment and images"),
        (dict(settings=TrainSettings(loss=bt_loss, batch_size=11)), ValueError, "batch_size=11"),
        (dict(resume=True), ValueError, "checkpoint_dir"),
        (dict(settings="sgd"), TypeError, "TrainSettings"),
    ],
)
def test_bad_train_arguments(mlp_data, kwargs, error, match):
    views, _ = mlp_data
    args = dict(settings=TrainSettings(loss=bt_loss, steps=2), views=views, progress=False)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        train(TinyMLP(), **args)


@pytest.mark.parametrize(
    "kwargs, error",
    [
        (dict(loss="mse"), ValueError),
        (dict(loss=3), TypeError),
        (dict(optimizer="lbfgs"), ValueError),
        (dict(optimizer=3), TypeError),
        (dict(learning_rate=0.0), ValueError),
        (dict(learning_rate=float("nan")), ValueError),
        (dict(learning_rate="0.1"), TypeError),
        (dict(alpha=-1.0), ValueError),
        (dict(momentum=1.0), ValueError),
        (dict(steps=-1), ValueError),
        (dict(steps=2.5), TypeError),
        (dict(batch_size=0), ValueError),
        (dict(n_records=0), ValueError),
        (dict(chunk_size=0), ValueError),
        (dict(divergence_threshold=0.0), ValueError),
        (dict(record_embeddings=1), TypeError),
    ],
)
def test_bad_config(kwargs, error):
    with pytest.raises(error):
        TrainSettings(**kwargs)


def test_non_embedding_module_and_stateful_module_are_rejected(mlp_data):
    views, _ = mlp_data

    class Scalar(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(1, param_dtype=jnp.float64)(x)[:, 0]

    class WithBatchStats(nn.Module):  # like BatchNorm's running averages
        @nn.compact
        def __call__(self, x):
            mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((2,), jnp.float64))
            return nn.Dense(2, param_dtype=jnp.float64)(x) - mean.value

    with pytest.raises(ValueError, match=r"\(batch, d\)"):
        train(Scalar(), TrainSettings(loss=bt_loss, steps=1), views, progress=False)
    with pytest.raises(ValueError, match="batch_stats"):
        train(WithBatchStats(), TrainSettings(loss=bt_loss, steps=1), views, progress=False)


# --------------------------------------------------------------------------- float32 vs float64


def test_float32_run_tracks_float64_reference():
    from stepwise_ntk.kernels.architectures import MLP

    rng = np.random.default_rng(11)
    X = rng.normal(size=(16, 2, 2, 3))
    views64 = np.concatenate([X, X + 0.3 * rng.normal(size=X.shape)])
    arch = MLP(depth=1, width=64, d=2)
    # f = α net has NTK α² Θ: learning rate 8 at α = 0.1 is effective rate 0.08 on Θ.
    cfg = TrainSettings(
        loss=bt_loss, learning_rate=8.0, steps=150, alpha=0.1, n_records=12, chunk_size=50
    )
    r64 = train(arch.flax(jnp.float64), cfg, jnp.asarray(views64), progress=False)
    init32 = jax.tree.map(
        lambda p: p.astype(jnp.float32),
        arch.flax(jnp.float64).init(
            jax.random.split(jax.random.key(0))[0], jnp.asarray(views64[:1])
        ),
    )
    r32 = train(
        arch.flax(jnp.float32),
        cfg,
        jnp.asarray(views64, jnp.float32),
        init_params=init32,
        progress=False,
    )
    assert r32.eigenvalues.dtype == np.float32 and r32.loss.dtype == np.float32
    # float32 rounding (~1e-7) amplified by the saddle escape stays well below 1e-3.
    np.testing.assert_allclose(r32.eigenvalues, r64.eigenvalues, atol=1e-3)
    assert r64.eigenvalues[-1, -1] > 0.5  # the run got past both steps of the staircase


# ----------------------------------------------------------------- CIFAR-10, architectures


def test_cifar10_minibatch_with_fresh_augmentations(cifar_dir):
    from stepwise_ntk.data import AugmentSettings, downsample, load_cifar10, normalize, positive_pairs, uint8_to_float
    from stepwise_ntk.kernels.architectures import MLP

    data = load_cifar10("train", cifar_dir)
    images = jnp.asarray(uint8_to_float(data.images[:16], jnp.float32))  # [0, 1] pixels

    def pipeline(aug_config):
        def augment(key, imgs):
            return downsample(normalize(positive_pairs(key, imgs, aug_config)), 4)

        return augment

    fixed = pipeline(AugmentSettings.identity())(jax.random.key(0), images)  # (32, 8, 8, 3)
    arch = MLP(depth=1, width=64, d=2)
    cfg = TrainSettings(learning_rate=5.0, steps=60, alpha=0.1, n_records=10, chunk_size=20)
    # Identity "augmentation" of all images every step = full-batch training on fixed views.
    direct = train(arch, cfg, fixed, progress=False)
    via_augment = train(
        arch, cfg, fixed, augment=pipeline(AugmentSettings.identity()), images=images, progress=False
    )
    np.testing.assert_allclose(
        via_augment.eigenvalues, direct.eigenvalues, rtol=1e-5, atol=1e-7
    )  # float32
    # Real augmentations, minibatches of 8 images: the eigenvalues of C on the fixed views rise.
    aug = train(
        arch,
        dataclasses.replace(cfg, batch_size=8),
        fixed,
        augment=pipeline(AugmentSettings()),
        images=images,
        test_views=fixed[:4],
        progress=False,
    )
    assert (
        aug.finished and aug.eigenvalues.dtype == np.float32 and aug.test_embeddings.shape == (4, 2)
    )
    # (the top one first: the start of the staircase)
    assert aug.eigenvalues[-1, 0] > 10 * aug.eigenvalues[0, 0] and aug.loss[-1] < aug.loss[0]


@pytest.mark.slow  # ~8 s on 2 CPU cores, mostly compiling the CNN's gradient
def test_myrtle_cnn_arch_trains():
    from stepwise_ntk.kernels.architectures import MyrtleCNN

    rng = np.random.default_rng(2)
    X = rng.normal(size=(6, 8, 8, 3))
    views = jnp.asarray(np.concatenate([X, X + 0.2 * rng.normal(size=X.shape)]))
    arch = MyrtleCNN(depth=5, width=8, d=2)
    r = train(
        arch,
        TrainSettings(learning_rate=0.5, steps=20, n_records=5, chunk_size=10),
        views,
        progress=False,
    )
    net = arch.flax(jnp.float64)
    np.testing.assert_allclose(r.train_embeddings, net.apply(r.params, views), rtol=1e-12)
    np.testing.assert_allclose(
        r.loss[-1], LOSSES["barlow_twins"](net.apply(r.params, views)), rtol=1e-12
    )
    assert r.loss[-1] < r.loss[0]
    with pytest.raises(ValueError, match="multiples of"):
        train(arch, TrainSettings(steps=1), views[:, :6, :6], progress=False)
