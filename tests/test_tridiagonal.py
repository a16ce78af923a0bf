"""The tridiagonal route to the contrastive eigensystem (theory/_tridiagonal.py) against
float64 numpy and the dense eigendecomposition, and the solver with it against the solver
without it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import stepwise_ntk.solver._eigen_route as solve_module
from stepwise_ntk.solver import SolverSettings, solve
from stepwise_ntk.theory import (
    contrastive_eigensystem,
    contrastive_eigensystem_from_factor,
    jittered_cholesky,
    step_times,
    tridiagonal_available,
    tridiagonal_eigensystem,
)


def _kernel(n_pairs, m=None, seed=0, dtype=jnp.float64):
    rng = np.random.default_rng(seed)
    m = m or 3 * n_pairs
    x = rng.standard_normal((n_pairs, m)) / np.sqrt(m)
    X = np.concatenate([x + 0.4 * rng.standard_normal(x.shape) / np.sqrt(m),
                        x + 0.4 * rng.standard_normal(x.shape) / np.sqrt(m)])
    return jnp.asarray(X @ X.T, dtype)


def _pair_gram_numpy(L):
    L = np.asarray(L, np.float64)
    n = L.shape[0] // 2
    ZL = np.concatenate([L[n:], L[:n]])
    return L.T @ ZL / L.shape[0]


@pytest.mark.parametrize("dtype, tol", [(jnp.float64, 1e-12), (jnp.float32, 2e-5)])
def test_modes_are_eigenpairs_of_the_pair_gram(dtype, tol):
    # Independent reference: H = Lᵀ Z L / 2n in float64 numpy; every requested vector is a
    # unit eigenvector of it (residual relative to ‖H‖, round-off of the dtype times √N).
    K = _kernel(60, dtype=dtype)
    L, tau = jittered_cholesky(K, jnp.asarray(1e-6, dtype))
    assert tridiagonal_available(L)
    tri = tridiagonal_eigensystem(L, tau)
    H = _pair_gram_numpy(L)
    w = np.linalg.eigvalsh(H)[::-1]
    scale = np.max(np.abs(w))
    assert tri.gammas.dtype == dtype and tri.gammas.shape == (120,)
    np.testing.assert_allclose(np.asarray(tri.gammas, np.float64), w, atol=tol * scale)
    idx = np.array([0, 1, 5, 60, 119])
    P = np.asarray(tri.vectors(idx), np.float64)
    assert P.shape == (120, 5)
    np.testing.assert_allclose(P.T @ P, np.eye(5), atol=tol * 10)
    g = np.asarray(tri.gammas, np.float64)[idx]
    assert np.max(np.abs(H @ P - P * g)) <= tol * 10 * scale


def test_coordinates_are_the_formed_vectors_transposed_times_b():
    K = _kernel(40, seed=1)
    L, tau = jittered_cholesky(K, jnp.asarray(1e-10))
    tri = tridiagonal_eigensystem(L, tau)
    B = np.random.default_rng(2).standard_normal((80, 3))
    P = np.asarray(tri.vectors(np.arange(80)))
    np.testing.assert_allclose(np.asarray(tri.coordinates(jnp.asarray(B))), P.T @ B, atol=1e-12)
    # The same modes as the dense eigendecomposition, up to each vector's sign.
    full = contrastive_eigensystem_from_factor(L, tau)
    np.testing.assert_allclose(np.asarray(tri.gammas), np.asarray(full.gammas), rtol=0, atol=1e-13)
    cos = np.abs(np.sum(P * np.asarray(full.vectors), axis=0))
    gaps = np.diff(np.asarray(full.gammas))
    separated = np.ones(80, bool)
    separated[:-1] &= np.abs(gaps) > 1e-6
    separated[1:] &= np.abs(gaps) > 1e-6
    np.testing.assert_allclose(cos[separated], 1.0, atol=1e-9)


def test_solve_gives_the_same_flow_with_and_without_it(monkeypatch):
    # A second route through the solver: the dense eigendecomposition's vectors. Both runs
    # integrate the same modes with the same γ, so they agree to round-off, far inside
    # the accuracy target.
    n = 200  # eigensystem="full": the tridiagonal route at any size
    K = _kernel(n, m=150, seed=3)
    F0 = 1e-3 * jax.random.normal(jax.random.key(4), (2 * n, 4), jnp.float64)
    es = contrastive_eigensystem(K, n)
    times = jnp.geomspace(1e-2 / float(es.gammas[0]), 1.5 * float(jnp.max(step_times(es, F0))), 30)
    K_test = K[:7]
    F0_test = F0[:7]
    settings = SolverSettings(eigensystem="full")
    with_tri = solve(K, n, F0, times, K_test=K_test, F0_test=F0_test, settings=settings)
    monkeypatch.setattr(solve_module, "tridiagonal_available", lambda L: False)
    dense = solve(K, n, F0, times, K_test=K_test, F0_test=F0_test, settings=settings)
    assert int(with_tri.stats.n_modes) == int(dense.stats.n_modes) < 2 * n
    assert "tridiagonal" in with_tri.reason and "tridiagonal" not in dense.reason, (with_tri.reason, dense.reason)
    np.testing.assert_allclose(np.asarray(with_tri.eigenvalues), np.asarray(dense.eigenvalues), atol=1e-9)
    np.testing.assert_allclose(np.asarray(with_tri.embeddings), np.asarray(dense.embeddings), atol=1e-9)
    np.testing.assert_allclose(np.asarray(with_tri.test_embeddings), np.asarray(dense.test_embeddings),
                               atol=1e-9)
    assert float(jnp.max(with_tri.eigenvalues)) > 0.5  # the run saw steps, not only the plateau


@pytest.mark.parametrize("which", ["largest", "magnitude"])
def test_top_modes_of_the_theory_match_the_truncated_dense_decomposition(which, monkeypatch):
    # Where the Krylov basis would not be small (here 2n = 240), contrastive_eigensystem(top=r)
    # selects r modes of the tridiagonal form; the second route is eigh truncated.
    import stepwise_ntk.theory._eigensystem as eigensystem_module

    K = _kernel(120, seed=5)
    tri_top = contrastive_eigensystem(K, 120, top=9, which=which)
    monkeypatch.setattr(eigensystem_module, "tridiagonal_available", lambda L: False)
    dense_top = contrastive_eigensystem(K, 120, top=9, which=which)
    assert tri_top.gammas.shape == dense_top.gammas.shape == (9,) and tri_top.partial and dense_top.partial
    np.testing.assert_allclose(np.asarray(tri_top.gammas), np.asarray(dense_top.gammas), atol=1e-14)
    np.testing.assert_allclose(float(tri_top.rest), float(dense_top.rest), atol=1e-14)
    cos = np.abs(np.sum(np.asarray(tri_top.vectors) * np.asarray(dense_top.vectors), axis=0))
    np.testing.assert_allclose(cos, 1.0, atol=1e-9)


@pytest.mark.parametrize("L, match", [
    (np.eye(4), "float32/float64 JAX array on the CPU"),  # numpy, not a JAX array
    (jnp.eye(4, dtype=jnp.int32), "float32/float64 JAX array on the CPU"),
    (jnp.eye(5), "got shape"),  # odd: not 2n views
    (jnp.ones((4, 6)), "got shape"),
])
def test_bad_factor_is_refused_with_the_reason(L, match):
    with pytest.raises(ValueError, match=match):
        tridiagonal_eigensystem(L, jnp.asarray(0.0))
