"""Losses against independent numpy references written with explicit loops / dense Z."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stepwise_ntk.losses import LOSSES, barlow_twins_loss, cross_correlation, resolve_loss, simclr_loss, vicreg_loss


def _F(n, d, seed=0, scale=1.0):
    return scale * np.random.default_rng(seed).normal(size=(2 * n, d))


def np_cross_correlation(F):
    n = F.shape[0] // 2
    C = np.zeros((F.shape[1],) * 2)
    for i in range(n):
        C += np.outer(F[i], F[n + i]) + np.outer(F[n + i], F[i])
    return C / (2 * n)


def np_simclr(F, tau, normalize=True):
    N = F.shape[0]
    n = N // 2
    z = F / np.linalg.norm(F, axis=1, keepdims=True) if normalize else F
    total = 0.0
    for i in range(N):
        p = (i + n) % N
        sims = [z[i] @ z[j] / tau for j in range(N) if j != i]
        total += -z[i] @ z[p] / tau + np.log(np.sum(np.exp(sims)))
    return total / N


def np_vicreg(F, lam=25.0, mu=25.0, nu=1.0):
    n, d = F.shape[0] // 2, F.shape[1]
    a, b = F[:n], F[n:]
    inv = np.mean((a - b) ** 2)

    def var(x):
        std = np.sqrt(x.var(axis=0, ddof=1) + 1e-4)
        return np.mean(np.maximum(0.0, 1.0 - std))

    def cov(x):
        c = np.cov(x, rowvar=False)  # unbiased, centred
        return (np.sum(c**2) - np.sum(np.diag(c) ** 2)) / d

    return lam * inv + mu * (var(a) + var(b)) / 2 + nu * (cov(a) + cov(b))


def test_cross_correlation_matches_pair_sum():
    F = _F(6, 4)
    np.testing.assert_allclose(np.asarray(cross_correlation(jnp.asarray(F))), np_cross_correlation(F),
                               rtol=1e-13, atol=1e-14)


def test_barlow_twins_value_and_gradient_closed_form():
    n, d = 5, 3
    F = _F(n, d, seed=1)
    C = np_cross_correlation(F)
    L = np.sum((C - np.eye(d)) ** 2)
    np.testing.assert_allclose(float(barlow_twins_loss(jnp.asarray(F))), L, rtol=1e-13)
    # THEORY.md: dL/dF = (2/n) Z F (C - I).
    Z = np.zeros((2 * n, 2 * n))
    Z[np.arange(n), n + np.arange(n)] = Z[n + np.arange(n), np.arange(n)] = 1.0
    g = np.asarray(jax.grad(barlow_twins_loss)(jnp.asarray(F)))
    np.testing.assert_allclose(g, (2 / n) * Z @ F @ (C - np.eye(d)), rtol=1e-12, atol=1e-13)
    # At F = 0 the loss is ||I||^2 = d.
    assert float(barlow_twins_loss(jnp.zeros((2 * n, d)))) == d


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_simclr_matches_loop_reference(normalize, tau):
    F = _F(5, 3, seed=2, scale=0.7)
    np.testing.assert_allclose(float(simclr_loss(jnp.asarray(F), tau, normalize=normalize)),
                               np_simclr(F, tau, normalize), rtol=1e-12)


def test_simclr_properties():
    simclr = jax.jit(simclr_loss)
    n, d = 4, 3
    F = jnp.asarray(_F(n, d, seed=3))
    # Equal similarities (all rows identical) -> log(2n - 1) exactly.
    same = jnp.ones((2 * n, d))
    np.testing.assert_allclose(float(simclr(same)), np.log(2 * n - 1), rtol=1e-13)
    # Cosine similarity: invariant under per-row positive scaling and a global rotation.
    s = jnp.asarray(np.random.default_rng(4).uniform(0.1, 3.0, size=(2 * n, 1)))
    R, _ = np.linalg.qr(np.random.default_rng(5).normal(size=(d, d)))
    base = float(simclr(F))
    np.testing.assert_allclose(float(simclr(F * s)), base, rtol=1e-12)
    np.testing.assert_allclose(float(simclr(F @ jnp.asarray(R))), base, rtol=1e-12)
    # Perfectly aligned, well separated pairs have a lower loss than shuffled partners.
    aligned = jnp.concatenate([F[:n], F[:n]])
    shuffled = jnp.concatenate([F[:n], F[:n][::-1]])
    assert float(simclr(aligned)) < float(simclr(shuffled))


def test_vicreg_matches_numpy_reference():
    for seed, scale in [(6, 1.0), (7, 0.05), (8, 3.0)]:  # hinge active, active, inactive
        F = _F(7, 4, seed=seed, scale=scale)
        np.testing.assert_allclose(float(vicreg_loss(jnp.asarray(F))), np_vicreg(F), rtol=1e-12)
    F = _F(7, 4, seed=9)
    np.testing.assert_allclose(float(vicreg_loss(jnp.asarray(F), 1.0, 2.0, 3.0)), np_vicreg(F, 1.0, 2.0, 3.0),
                               rtol=1e-12)


def test_vicreg_at_small_init_is_linear_and_grows_every_centred_direction():
    # With Var ≪ ε = 1e-4 the hinge's gradient is linear: on branch A
    #   ∇_A L = (2λ/(nd)) (A − B) − (μ/(2d(n−1)√ε)) (A − Ā),
    # the variance term ~25× the invariance term (docs/theory.md, section 9). Checked
    # against the autodiff Jacobian at F ~ 1e-6 (the covariance term is O(F³)).
    n, d = 6, 3
    F = 1e-6 * jax.random.normal(jax.random.key(0), (2 * n, d), jnp.float64)
    J = np.asarray(jax.jacfwd(jax.grad(vicreg_loss))(F)).reshape(2 * n * d, 2 * n * d)
    a, b = 2 * 25.0 / (n * d), 25.0 / (2 * d * (n - 1) * np.sqrt(1e-4))
    eye, centre = np.eye(n), np.eye(n) - np.ones((n, n)) / n
    M = a * np.block([[eye, -eye], [-eye, eye]]) - b * np.kron(np.eye(2), centre)
    np.testing.assert_allclose(J, np.kron(M, np.eye(d)), atol=1e-6 * b)
    # A view-dependent direction (A = −B, centred) grows while b > 2a, i.e. √Var < ~1/8.
    u = np.concatenate([centre[:, 0], -centre[:, 0]])
    assert u @ M @ u / (u @ u) == pytest.approx(2 * a - b) and 2 * a - b < 0


@pytest.mark.parametrize("loss", [barlow_twins_loss, simclr_loss, vicreg_loss])
def test_float32_close_to_float64(loss):
    loss = jax.jit(loss)
    F = _F(8, 4, seed=10, scale=0.8)
    v64 = float(loss(jnp.asarray(F)))
    v32 = float(loss(jnp.asarray(F, dtype=jnp.float32)))
    assert loss(jnp.asarray(F, dtype=jnp.float32)).dtype == jnp.float32
    # float32 round-off on O(1) sums of ~100 terms: relative 1e-5 is ample.
    np.testing.assert_allclose(v32, v64, rtol=1e-5)


@pytest.mark.parametrize("loss", [barlow_twins_loss, simclr_loss, vicreg_loss])
def test_gradients_match_finite_differences(loss):
    F = _F(4, 3, seed=11, scale=0.9)
    g = np.asarray(jax.jit(jax.grad(loss))(jnp.asarray(F)))
    loss = jax.jit(loss)
    h = 1e-6
    for idx in [(0, 0), (3, 2), (5, 1), (7, 0)]:
        E = np.zeros_like(F)
        E[idx] = h
        fd = (float(loss(jnp.asarray(F + E))) - float(loss(jnp.asarray(F - E)))) / (2 * h)
        # Central differences in float64: truncation O(h^2) ~ 1e-12, round-off ~ 1e-10 / h.
        np.testing.assert_allclose(g[idx], fd, rtol=1e-6, atol=1e-8)


def test_registry_and_resolve_loss():
    assert dict(LOSSES) == {"barlow_twins": barlow_twins_loss, "simclr": simclr_loss, "vicreg": vicreg_loss}
    with pytest.raises(TypeError):
        LOSSES["mine"] = barlow_twins_loss  # read-only: one registry for the solver and training
    for name, fn in LOSSES.items():
        assert resolve_loss(name) is fn
    mine = lambda F: jnp.sum(F**2)  # noqa: E731
    assert resolve_loss(mine) is mine
    F = jnp.asarray(_F(5, 3, seed=12))
    bound = resolve_loss("simclr", loss_kwargs={"temperature": 0.2})
    assert float(bound(F)) == float(simclr_loss(F, temperature=0.2))
    # Equal arguments give equal, hashable callables (a jitted caller reuses its compilation).
    assert bound == resolve_loss("simclr", loss_kwargs={"temperature": 0.2}) and hash(bound) == hash(
        resolve_loss("simclr", loss_kwargs={"temperature": 0.2}))
    assert resolve_loss("vicreg", loss_kwargs={}) is vicreg_loss
    with pytest.raises(ValueError, match="loss must be one of 'barlow_twins', 'simclr', 'vicreg'"):
        resolve_loss("byol")
    with pytest.raises(TypeError, match="loss must be one of .* or a callable"):
        resolve_loss(3)
    with pytest.raises(ValueError, match="only go with a loss name"):
        resolve_loss(mine, loss_kwargs={"temperature": 0.2})
    with pytest.raises(TypeError, match="loss_kwargs must be a mapping"):
        resolve_loss("simclr", loss_kwargs=[("temperature", 0.2)])


def test_losses_check_shapes_and_hyperparameters():
    F = jnp.asarray(_F(4, 3, seed=13))
    for loss in (barlow_twins_loss, simclr_loss, vicreg_loss, cross_correlation):
        with pytest.raises(ValueError, match=r"F must be a \(2n, d\) matrix"):
            loss(F[:-1])  # an odd number of views
        with pytest.raises(ValueError, match=r"F must be a \(2n, d\) matrix"):
            loss(F[:, 0])
    with pytest.raises(ValueError, match=r"F must be a \(2n, d\) matrix"):
        vicreg_loss(F[:2])  # one pair: no unbiased variance
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        simclr_loss(F, temperature=0.0)
    with pytest.raises(TypeError, match="temperature must be a real number"):
        simclr_loss(F, temperature="0.5")
    with pytest.raises(TypeError, match="normalize must be True or False"):
        simclr_loss(F, normalize="yes")
    with pytest.raises(ValueError, match="smooth must be a finite number ≥ 0"):
        vicreg_loss(F, smooth=-0.1)
    # Traced hyper-parameters pass through unchecked (their values are unknown).
    t = jax.jit(lambda F, tau: simclr_loss(F, tau))(F, jnp.asarray(0.5))
    assert float(t) == pytest.approx(float(simclr_loss(F, 0.5)), rel=1e-14)
