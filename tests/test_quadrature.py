"""The block Gauss quadrature of the modes the eigen route does not integrate one by one
(``stepwise_ntk/solver/_quadrature.py``) and ``solve``'s use of it.

References: the series itself, moments computed directly, and a flow with ``C`` held fixed,
where every mode has the closed form ``m(t) = expm(4γ (I − C) t) m(0)``.
"""

import math
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.linalg import expm

import stepwise_ntk.solver._eigen_route as solve_module
from stepwise_ntk.data import cifar10_pairs
from stepwise_ntk.solver import SolverSettings, solve
from stepwise_ntk.solver._quadrature import (
    block_gauss_quadrature,
    log_moments,
    moment_embedding_bound,
    moment_terms_bound,
    quadrature_embedding_bound,
    quadrature_terms,
    series_remainder,
)
from stepwise_ntk.theory import contrastive_eigensystem, step_times

sys.path.insert(0, str(Path(__file__).parent))
from reference_kernels import relu_mlp_kernels  # noqa: E402


@pytest.mark.parametrize("m", [0, 1, 3, 10])
def test_series_remainder_is_the_tail_of_the_exponential_series(m):
    for y in (0.0, 0.1, 1.0, 5.0, 20.0):
        terms, term = [], y**m / math.factorial(m)  # y^s / s!, s = m, m + 1, …
        for s in range(m, m + 200):
            terms.append(term)
            term *= y / (s + 1)
        direct = math.fsum(terms)
        assert float(series_remainder(m, np.asarray(y))) == pytest.approx(direct, rel=1e-12, abs=1e-300)


@pytest.mark.parametrize("q", [1, 2, 4])
def test_block_gauss_quadrature_matches_the_moments_up_to_degree_2q_minus_1(q):
    rng = np.random.default_rng(q)
    g, Y0 = rng.uniform(-0.3, 1.0, 200), rng.standard_normal((200, 3))
    theta, W = block_gauss_quadrature(g, Y0, q)
    assert theta.shape == (3 * q,) and W.shape == (200, 3 * q)
    np.testing.assert_allclose(W.T @ W, np.eye(3 * q), atol=1e-12)
    assert g.min() - 1e-12 <= theta.min() and theta.max() <= g.max() + 1e-12
    Z0 = W.T @ Y0

    def moments(values, Y, s):
        return Y.T @ (values[:, None] ** s * Y)

    for s in range(2 * q):
        ref = moments(g, Y0, s)
        np.testing.assert_allclose(moments(theta, Z0, s), ref, rtol=0, atol=1e-10 * np.abs(ref).max())
    # ... and no further: the next moment differs (so the degree is exactly 2q − 1).
    ref = moments(g, Y0, 2 * q)
    assert np.abs(moments(theta, Z0, 2 * q) - ref).max() > 1e-6 * np.abs(ref).max()


def test_block_gauss_quadrature_with_an_exhausted_krylov_space():
    # Three distinct γ: the block Krylov space of two columns has dimension 6 < q d = 8.
    rng = np.random.default_rng(0)
    g = np.repeat([0.5, 0.1, -0.2], 10)
    Y0 = rng.standard_normal((30, 2))
    theta, W = block_gauss_quadrature(g, Y0, 4)
    np.testing.assert_allclose(W.T @ W, np.eye(8), atol=1e-12)
    Z0 = W.T @ Y0
    for s in range(10):  # the quadrature is exact for every degree now
        ref = Y0.T @ (g[:, None] ** s * Y0)
        np.testing.assert_allclose(Z0.T @ (theta[:, None] ** s * Z0), ref, atol=1e-10 * np.abs(ref).max())
    with pytest.raises(ValueError, match="q·d"):
        block_gauss_quadrature(g, Y0, 16)


def test_quadrature_bounds_hold_on_a_flow_with_fixed_C():
    """With ``C(t) = C̄`` every mode is ``m(t) = expm(4γ (I − C̄) t) m(0)`` and
    ``E = ‖I − C̄‖₂ t``: the tail's exact contribution to ``C`` and its coordinates against
    the held modes (``q = 0``) and the pseudo-modes (``q ≥ 1``), within the bounds."""
    rng = np.random.default_rng(1)
    d, t = 3, 2.0
    g = rng.uniform(-0.05, 0.2, 300)
    Y0 = 1e-2 * rng.standard_normal((300, d))
    A = rng.standard_normal((d, d))
    C_bar = A @ A.T / (3 * d)
    E = float(np.linalg.norm(np.eye(d) - C_bar, 2)) * t

    def evolve(values, Y):
        return np.stack([expm(4.0 * v * (np.eye(d) - C_bar) * t) @ y for v, y in zip(values, Y, strict=True)])

    def contribution(values, Y):
        return (Y * values[:, None]).T @ Y

    Y_t = evolve(g, Y0)
    exact = contribution(g, Y_t)
    errors = []
    for q in (0, 1, 2, 3):
        if q == 0:
            approx, bound = contribution(g, Y0), quadrature_terms(g, np.sum(Y0**2, 1), E, 0).sum()
        else:
            theta, W = block_gauss_quadrature(g, Y0, q)
            Z0 = W.T @ Y0
            Z_t = evolve(theta, Z0)
            approx = contribution(theta, Z_t)
            bound = (quadrature_terms(g, np.sum(Y0**2, 1), E, q).sum()
                     + quadrature_terms(theta, np.sum(Z0**2, 1), E, q).sum())
            coord_err = np.linalg.norm(Y_t - W @ Z_t)
            assert 0 < coord_err <= quadrature_embedding_bound(g, Y0, theta, Z0, E, q)
        err = np.linalg.norm(exact - approx, 2)
        assert 0 < err <= bound, (q, err, bound)
        errors.append(err)
    # The pseudo-modes carry the tail's motion, better with every block.
    assert errors[3] < errors[2] < errors[1] and errors[3] < 1e-2 * errors[0]


def test_moment_bounds_cover_modes_known_only_by_their_moments():
    """``moment_terms_bound`` and ``moment_embedding_bound`` against the sums they bound,
    over random spectra with ``|γ| ≤ g``; equal to them for one mode at ``g``; the moments
    from ``q``-block pseudo-modes (``log_moments``) equal the tail's for ``k < q``."""
    rng = np.random.default_rng(7)
    for trial in range(20):
        g_max = 10.0 ** rng.uniform(-3, 0)
        g = g_max * rng.uniform(-1, 1, 400) * rng.uniform(0, 1, 400) ** 2
        g[0] = g_max
        Y0 = rng.standard_normal((400, 3)) * 10.0 ** rng.uniform(-4, 0)
        w = np.sum(Y0**2, axis=1)
        E = 10.0 ** rng.uniform(-1, 1) / g_max
        log_S = np.log([np.sum(np.abs(g) ** (2 * k) * w) for k in range(12)])
        for q in (0, 1, 2, 4, 8):
            exact = float(np.sum(quadrature_terms(g, w, E, q)))
            assert exact <= moment_terms_bound(g_max, log_S, E, q) * (1 + 1e-10), (trial, q)
            if q:
                coords = quadrature_embedding_bound(g, Y0, np.zeros(0), np.zeros((0, 3)), E, q)
                assert coords <= moment_embedding_bound(g_max, log_S, E, q) * (1 + 1e-10), (trial, q)
    one = np.array([0.3]), np.array([[2.0, 1.0]])
    log_S = np.log([0.3 ** (2 * k) * 5.0 for k in range(4)])
    for q in (0, 2, 4):
        assert moment_terms_bound(0.3, log_S, 7.0, q) == pytest.approx(
            float(quadrature_terms(one[0], np.array([5.0]), 7.0, q)[0]), rel=1e-10)
    assert moment_embedding_bound(0.3, log_S, 7.0, 2) == pytest.approx(
        quadrature_embedding_bound(*one, np.zeros(0), np.zeros((0, 2)), 7.0, 2), rel=1e-10)
    g = rng.uniform(-0.2, 0.5, 300)
    Y0 = rng.standard_normal((300, 2))
    theta, W = block_gauss_quadrature(g, Y0, 3)
    direct = np.log([np.sum(g ** (2 * k) * np.sum(Y0**2, axis=1)) for k in range(3)])
    np.testing.assert_allclose(log_moments(theta, W.T @ Y0, 3), direct, rtol=1e-10)


def _mlp_ntk_problem(cifar_dir, n, d, n_times):
    """The ReLU MLP NTK (closed form, two hidden layers) of ``2n`` CIFAR-10 views (8 × 8
    pixels), small white ``F0``, ``n_times`` times to 1.5 × the last step time, and a float64
    reference with every mode integrated at rtol 1e-10."""
    views, _, _ = cifar10_pairs(jax.random.key(3), n, data_dir=cifar_dir, dtype=jnp.float64)
    X = np.asarray(views)[:, ::4, ::4].reshape(2 * n, -1)
    K = relu_mlp_kernels(X, X, depth=2)[1]
    K = (K + K.T) / 2
    F0 = 1e-3 * np.random.default_rng(d).standard_normal((2 * n, d))
    es = contrastive_eigensystem(K, n)
    T = 1.5 * float(np.max(np.asarray(step_times(es, jnp.asarray(F0)))))
    times = np.geomspace(1e-3 * T, T, n_times)
    ref = solve(K, n, F0, times, settings=SolverSettings(rtol=1e-10, mode_tol=0.0, integrator="dopri5",
                                                         eigensystem="full"))
    return K, n, F0, times, ref


@pytest.fixture(scope="module")
def mlp_ntk_problem(cifar_dir):
    """400 views, d = 16: the modes outside the top few move, so the held-only plan needs
    many of them."""
    return _mlp_ntk_problem(cifar_dir, 200, 16, 30)


def test_solve_carries_the_other_modes_by_quadrature(mlp_ntk_problem, monkeypatch):
    K, n, F0, times, ref = mlp_ntk_problem
    accuracy = SolverSettings().accuracy
    tr = solve(K, n, F0, times)
    st = tr.stats
    err = float(np.max(np.abs(np.asarray(tr.eigenvalues) - np.asarray(ref.eigenvalues))))
    assert int(st.n_quadrature_modes) > 0 and "Gauss quadrature" in tr.reason
    assert err <= accuracy and err <= float(st.error_estimate)
    assert 0 < float(st.truncation_bound) <= accuracy / 10
    # The embedding bound covers the tail's share; the integration's own error (about rtol
    # relative: 4e-5 of ‖F‖ ≈ 99 here) comes on top of it.
    F_err = float(jnp.linalg.norm(tr.embeddings - ref.embeddings))
    assert F_err <= float(st.truncation_embedding_bound) + 1e-4 * float(jnp.linalg.norm(ref.embeddings))
    # The second route: the same solve with the other modes held at m(0) only.
    monkeypatch.setattr(solve_module, "_QUADRATURE_BLOCKS", (0,))
    held = solve(K, n, F0, times)
    held_err = float(np.max(np.abs(np.asarray(held.eigenvalues) - np.asarray(ref.eigenvalues))))
    assert int(held.stats.n_quadrature_modes) == 0 and held_err <= accuracy
    assert int(st.n_modes) < int(held.stats.n_modes)


def test_partial_eigensystem_carries_the_modes_not_computed_by_quadrature(cifar_dir):
    """The partial route (64 modes by Krylov) with the other 960 carried by pseudo-modes from
    block Lanczos on ``H`` restricted to them: within the accuracy of a float64 reference
    with every mode of the full decomposition integrated, the bound on the modes not computed
    from their moments within ``mode_tol``. ReLU MLP NTK of 1,024 CIFAR-10 views (8 × 8
    pixels), d = 8, small white ``F0``: held, those modes would ask for the full
    decomposition."""
    K, n, F0, times, ref = _mlp_ntk_problem(cifar_dir, 512, 8, 20)
    settings = SolverSettings(eigensystem="partial")
    tr = solve(K, n, F0, times, settings=settings)
    st = tr.stats
    assert int(st.n_eigen_modes) < 2 * n and float(st.eigen_residual) > 0
    assert int(st.n_quadrature_modes) > 0 and f"the other {2 * n - int(st.n_eigen_modes)} as" in tr.reason
    err = float(np.max(np.abs(np.asarray(tr.eigenvalues) - np.asarray(ref.eigenvalues))))
    assert err <= settings.accuracy and err <= float(st.error_estimate)
    assert 0 < float(st.truncation_bound) <= settings.accuracy / 10
    F_err = float(jnp.linalg.norm(tr.embeddings - ref.embeddings))
    assert F_err <= float(st.truncation_embedding_bound) + 1e-4 * float(jnp.linalg.norm(ref.embeddings))


def test_plan_takes_the_fewest_modes_whose_tail_fits_and_next_plan_grows():
    """``_plan`` against a direct search: for each ``q``, the fewest head modes (a multiple of
    64, the top ``d`` by ``γ`` among them) whose tail terms sum to the budget (half of it with
    pseudo-modes); the smallest ``k + q d`` wins. ``_next_plan`` always returns more modes."""
    from types import SimpleNamespace

    rng = np.random.default_rng(5)
    r, d, E = 1000, 8, 300.0
    g = np.sort(rng.uniform(-0.002, 0.02, r) * rng.uniform(0, 1, r) ** 3)[::-1]
    M0 = 1e-3 * rng.standard_normal((d, r)) / np.sqrt(np.abs(g) + 1e-4)
    prep = SimpleNamespace(es=SimpleNamespace(gammas=g, rest=0.0), M0=M0, W_rest=0.0, Q_rest=0.0)
    w = np.sum(M0**2, axis=0)
    budget = 1e-4
    best = (r, 0)
    for q in solve_module._QUADRATURE_BLOCKS:
        terms = quadrature_terms(g, w, E, q)
        free = np.sort(terms[d:])  # the top d by γ are always integrated
        limit = budget if q == 0 else budget / 2
        for k in range(64, r + 1, 64):
            tail = free[: r - k]  # the smallest terms are the ones left out
            if np.sum(tail) <= limit and (q == 0 or k + q * d <= r):
                if k + q * d < sum(best[:1]) + best[1] * d:
                    best = (k, q)
                break
    plan = solve_module._plan(prep, E, d, budget)
    assert (plan.idx.size, plan.q) == best and best[1] > 0
    assert set(range(d)) <= set(plan.idx.tolist())
    left = np.setdiff1d(np.arange(r), plan.idx)
    assert np.sum(quadrature_terms(g[left], w[left], E, plan.q)) <= budget / 2
    bigger = solve_module._next_plan(prep, plan, E, d, budget)
    assert bigger.n_modes(d) > plan.n_modes(d)
