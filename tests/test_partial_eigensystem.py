"""The partial contrastive eigensystem (block Krylov on H = Lᵀ Z L / 2n) against the full one,
the solver's partial eigen route against a float64 full-decomposition reference, and the
precision the routes request (lowered computations).

Sizes are the smallest at which the partial route runs (2n = 1024); each test takes seconds.
"""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stepwise_ntk.solver import SolverSettings, solve
from stepwise_ntk.theory import (
    contrastive_eigensystem,
    contrastive_eigensystem_core,
    contrastive_eigensystem_from_factor,
    jittered_cholesky,
    mode_coordinates,
    pair_gram_operator,
    rest_lanczos,
    step_times,
)
from stepwise_ntk.theory._pair_gram import pair_gram_apply

sys.path.insert(0, str(Path(__file__).parent))
from test_theory import paired_features  # noqa: E402

N_PAIRS = 512


@pytest.fixture(scope="module")
def kernel():
    """Views where some strong features flip sign between the views: large negative γ."""
    X = paired_features(N_PAIRS, 80, noise=0.6, seed=21, decay=0.6)
    X[N_PAIRS:, 1:12:3] = -X[:N_PAIRS, 1:12:3]  # anti-correlated across the pair
    K = X @ X.T
    full = contrastive_eigensystem(K, N_PAIRS)
    return dict(X=X, K=K, full=full)


@pytest.mark.parametrize("which", ["largest", "magnitude"])
def test_partial_matches_full(kernel, which):
    K, full = kernel["K"], kernel["full"]
    r = 12
    part = contrastive_eigensystem(K, N_PAIRS, top=r, which=which)
    assert part.partial and part.gammas.shape == (r,) and part.vectors.shape == (2 * N_PAIRS, r)
    g = np.asarray(full.gammas)
    key = np.abs(g) if which == "magnitude" else g
    want = np.sort(g[np.argsort(-key)[:r]])[::-1]
    if which == "magnitude":
        assert np.any(want < 0)  # the kernel was built so that negative modes are among them
    # Residual bound: |γ_Ritz − γ| ≤ ‖H p − γ p‖; both sides at round-off here.
    res = np.asarray(part.residuals)
    assert np.all(res <= 1e-9 * np.abs(g).max())
    np.testing.assert_allclose(np.asarray(part.gammas), want, atol=1e-12 * np.abs(g).max() + res.max())
    # Residuals recomputed independently in float64 numpy from H = Lᵀ Z L / 2n.
    L = np.asarray(part.factor)
    P = np.asarray(part.vectors)
    n = N_PAIRS
    ZLP = np.concatenate([(L @ P)[n:], (L @ P)[:n]])
    R = L.T @ ZLP / (2 * n) - P * np.asarray(part.gammas)
    np.testing.assert_allclose(np.linalg.norm(R, axis=0), res, atol=1e-12 * np.abs(g).max())
    np.testing.assert_allclose(P.T @ P, np.eye(r), atol=1e-10)
    # The next value by the ranking, estimated within its residual.
    assert abs(float(part.rest) - np.sort(key)[::-1][r]) <= 1e-8 * np.abs(g).max()
    # The same eigenvectors as the full decomposition (up to sign): |p_fullᵀ p_part| = 1.
    idx = np.argsort(-key)[:r]
    overlap = np.abs(np.sum(np.asarray(full.vectors)[:, np.sort(idx)] * P, axis=0))
    np.testing.assert_allclose(overlap, 1.0, atol=1e-6)


def test_partial_mode_coordinates_of_embeddings_outside_the_range(kernel):
    """``F0`` outside the range of a rank-80 ``K``: ``L⁻¹F0`` is ~1e5 times ``F0`` on the
    null modes, and a Krylov vector's error there (residuals ~1e-10) would move ``pᵀ L⁻¹F0``
    by ~8% of the coordinates; ``mode_coordinates`` matches the full eigensystem's."""
    full = kernel["full"]
    part = contrastive_eigensystem_from_factor(full.factor, full.jitter, top=12, which="magnitude",
                                               residual_rtol=1e-8)
    assert part.partial
    F0 = jnp.asarray(1e-3 * np.random.default_rng(3).normal(size=(2 * N_PAIRS, 3)))
    S = np.asarray(full.vectors).T @ np.asarray(part.vectors)  # overlaps: the same modes, up to sign
    match = np.argmax(np.abs(S), axis=0)
    want = np.asarray(mode_coordinates(full, F0))[:, match] * np.sign(S[match, np.arange(12)])
    got = np.asarray(mode_coordinates(part, F0))
    # Tolerance: the vectors' errors weighed by γ_k/γ_j ≤ 1 over the modes not computed.
    np.testing.assert_allclose(got, want, atol=1e-6 * np.abs(want).max())
    B = np.linalg.solve(np.asarray(full.factor), np.asarray(F0))
    assert np.linalg.norm(B) > 1e4 * np.linalg.norm(np.asarray(F0))  # the case the form is for


def test_partial_falls_back_to_full(kernel):
    K = kernel["K"]
    # Few views: the full decomposition is returned (and truncated by the public function).
    small = K[:200, :200]
    es = contrastive_eigensystem(small, 100, top=5)
    ref = contrastive_eigensystem(small, 100)
    np.testing.assert_allclose(np.asarray(es.gammas), np.asarray(ref.gammas[:5]), rtol=1e-12)
    # A Krylov basis that would not be small against 2n: the full decomposition.
    L, tau = jittered_cholesky(jnp.asarray(K), jnp.asarray(1e-12))
    assert not contrastive_eigensystem_from_factor(L, tau, top=400).partial
    # No convergence within the restarts: the full decomposition.
    assert not contrastive_eigensystem_from_factor(L, tau, top=12, max_restarts=0, residual_rtol=1e-30).partial


def test_partial_is_cheaper_is_a_monotone_cost_model():
    """More views make the partial eigensystem pay, more modes make it pay less; never
    below 1024 views or where the Krylov basis would not be small against 2n."""
    from stepwise_ntk.theory import partial_is_cheaper

    sizes, tops = [512, 1024, 2000, 4000, 9320, 40000], [8, 32, 64, 128, 256, 512, 2048]
    table = np.array([[partial_is_cheaper(N, r) for r in tops] for N in sizes], dtype=int)
    assert not table[0].any() and table[-1, :3].all()
    assert np.all(np.diff(table, axis=0) >= 0) and np.all(np.diff(table, axis=1) <= 0)
    assert not partial_is_cheaper(4000, 1000)  # a basis of 1500 + 128 columns: not small
    # Measured (given the factor, against the tridiagonal route, five kernels): 64 modes
    # 1.1-1.4× at 2n = 2000 and 0.30-0.45× at 4000; 256 modes 1.4-3.2× at 4000.
    assert not partial_is_cheaper(2000, 64) and partial_is_cheaper(4000, 64) and not partial_is_cheaper(4000, 256)
    with pytest.raises(ValueError):
        partial_is_cheaper(2000, 0)


def test_non_psd_messages():
    n = 10
    K = -np.eye(2 * n)
    with pytest.raises(ValueError, match="not a kernel Gram matrix") as err:
        contrastive_eigensystem(K, n)
    assert "jitter_rtol (e.g." not in str(err.value)
    # Round-off-sized negative eigenvalue: a larger jitter is the advice, and it works.
    X = paired_features(n, 5, seed=1)
    K = X @ X.T
    lam, V = np.linalg.eigh(K)
    K_bad = K - 1e-12 * np.abs(lam).max() * V[:, :1] @ V[:, :1].T
    with pytest.raises(ValueError, match=r"round-off.*jitter_rtol \(e\.g\. ([0-9.e+-]+)\)") as err:
        contrastive_eigensystem(K_bad, n, jitter_rtol=0.0)
    suggested = float(str(err.value).rsplit("e.g. ", 1)[1].split(")")[0])
    assert suggested < 1e-6
    contrastive_eigensystem(K_bad, n, jitter_rtol=suggested)
    # The solver refuses the same way before any work, on both routes' entry.
    F0 = 1e-3 * np.ones((2 * n, 2))
    with pytest.raises(ValueError, match="not a kernel Gram matrix"):
        solve(-np.eye(2 * n), n, F0, np.array([1.0]), method="eigen")


def test_solver_partial_route_meets_accuracy(kernel):
    """Default accuracy on the partial route: within the accuracy of a float64 full reference."""
    X, K, full = kernel["X"], kernel["K"], kernel["full"]
    d = 3
    W0 = np.random.default_rng(5).normal(size=(d, X.shape[1])) * 1e-3
    F0 = X @ W0.T
    T = 1.5 * float(np.max(np.asarray(step_times(full, jnp.asarray(F0)))))
    times = np.geomspace(1e-3 * T, T, 30)
    # Reference: full decomposition, no truncation, rtol 1e-9 (integration error ~1e-7).
    ref = solve(K, N_PAIRS, F0, times, method="eigen",
                settings=SolverSettings(rtol=1e-9, mode_tol=0.0, eigensystem="full"))
    tr = solve(K, N_PAIRS, F0, times, method="eigen", settings=SolverSettings(eigensystem="partial"))
    st = tr.stats
    assert int(st.n_eigen_modes) < 2 * N_PAIRS  # the partial eigensystem ran
    assert float(st.eigen_residual) > 0
    assert int(ref.stats.n_eigen_modes) == 2 * N_PAIRS
    assert float(ref.eigenvalues[-1, d - 1]) > 0.5  # every mode has stepped
    err = float(np.max(np.abs(np.asarray(tr.eigenvalues) - np.asarray(ref.eigenvalues))))
    est = float(st.error_estimate)
    assert err <= 1e-3, err
    assert np.isfinite(est) and est <= 1e-3
    assert float(st.truncation_bound) <= 1e-4
    # The defaults at this size: 64 modes by Krylov would cost more than all 1024, but K has
    # rank 80 and F0 lies in its range, so the low-rank eigensystem (exact for a kernel
    # within round-off of K), with the same accuracy; asked for the full decomposition, that.
    for settings, modes in ((SolverSettings(), X.shape[1]), (SolverSettings(eigensystem="full"), 2 * N_PAIRS)):
        auto = solve(K, N_PAIRS, F0, times, method="eigen", settings=settings)
        assert int(auto.stats.n_eigen_modes) == modes and float(auto.stats.eigen_residual) == 0
        err = float(np.max(np.abs(np.asarray(auto.eigenvalues) - np.asarray(ref.eigenvalues))))
        assert err <= 1e-3 and float(auto.stats.error_estimate) <= 1e-3, err


def test_routes_request_highest_precision():
    """Products that decide accuracy carry precision=HIGHEST (accelerators default lower)."""
    K = jnp.eye(8)
    text = jax.jit(contrastive_eigensystem_core).lower(K, jnp.asarray(1e-12)).as_text()
    dots = [ln for ln in text.splitlines() if "dot_general" in ln]
    assert dots and all("HIGHEST" in ln for ln in dots)
    from stepwise_ntk.theory._eigensystem import _krylov_modes  # the jitted Krylov core

    L = jnp.eye(8)
    text = _krylov_modes.lower(pair_gram_operator(L), jnp.ones((8, 3)), jnp.ones((3, 2)), jnp.asarray(1e-10),
                               jnp.asarray(1, jnp.int32), r=2, depth=1, which="largest").as_text()
    dots = [ln for ln in text.splitlines() if "dot_general" in ln]
    assert dots and all("HIGHEST" in ln for ln in dots)
    from stepwise_ntk.theory._eigensystem import _rest_lanczos_start  # the jitted Lanczos core

    text = _rest_lanczos_start.lower(pair_gram_operator(L), jnp.eye(8)[:, :2], jnp.ones((8, 2)), blocks=2).as_text()
    dots = [ln for ln in text.splitlines() if "dot_general" in ln]
    assert dots and all("HIGHEST" in ln for ln in dots)


def test_more_modes_follows_the_spectrum_between_double_and_quadruple():
    """The next partial eigensystem's size: at least 2r, at most 4r, and where the power-law
    spectrum says the rest's bound fits the budget (checked with that law's next value)."""
    from types import SimpleNamespace

    from stepwise_ntk.solver._eigen_route import _more_modes, _rest_bounds

    r, N, E = 64, 100_000, 50.0
    for power, budget in [(1.0, 1e-4), (1.0, 1e-2), (2.0, 1e-6), (0.5, 1e-5)]:
        gammas = np.arange(1, r + 1, dtype=float) ** -power
        es = SimpleNamespace(gammas=gammas, rest=(r + 1.0) ** -power)
        prep = SimpleNamespace(es=es, W_rest=1e-3, Q_rest=1.0)
        nxt, predicted = _more_modes(prep, E, budget, r, N)
        assert 2 * r <= nxt <= 4 * r and nxt % 64 == 0
        assert predicted == N or (predicted % 64 == 0  # else the law's first mode beyond it fits
                                  and _rest_bounds(np, (predicted + 1.0) ** -power, 1e-3, 1.0, E)[0] <= budget)
        if nxt < 4 * r:
            assert predicted == nxt
        else:  # capped at 4r: the law asked for more than 4r − 64 after its quarter more
            assert predicted >= nxt
            assert _rest_bounds(np, ((4 * r - 64) / 1.25) ** -power, 1e-3, 1.0, E)[0] > budget


@pytest.fixture(scope="module")
def full_rank():
    """A full-rank kernel of 200 views (paired features plus a ridge): every mode has weight."""
    X = paired_features(100, 300, noise=0.5, seed=4, decay=0.5)
    K = X @ X.T + 1e-3 * np.eye(200)
    return K, contrastive_eigensystem(K, 100)


def test_pair_gram_operator_applies_lt_z_l(full_rank):
    K, full = full_rank
    L = np.asarray(full.factor)
    V = np.random.default_rng(0).standard_normal((200, 5))
    ZLV = np.concatenate([(L @ V)[100:], (L @ V)[:100]])
    ref = L.T @ ZLV / 200  # float64 numpy, from the definition
    got = np.asarray(pair_gram_apply(pair_gram_operator(full.factor), jnp.asarray(V)))
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-13 * np.abs(ref).max())


def test_rest_lanczos_carries_the_moments_of_the_modes_not_computed(full_rank):
    """``R0ᵀ (T_q^k)_{11} R0`` against the moments ``Σ_rest γ^k m mᵀ`` from the full eigensystem,
    exact for ``k ≤ 2q − 1`` (block Gauss quadrature) and not beyond; a continued iteration
    equals one run at once."""
    K, full = full_rank
    g, P = np.asarray(full.gammas), np.asarray(full.vectors)
    top = np.sort(np.argsort(-np.abs(g))[:10])
    part = full._replace(gammas=full.gammas[top], vectors=full.vectors[:, top])
    B = np.random.default_rng(1).standard_normal((200, 3))
    rest = np.setdiff1d(np.arange(200), top)
    M = P[:, rest].T @ B  # (rest, d) coordinates of the modes not computed
    q = 4
    lz = rest_lanczos(part, jnp.asarray(B), q)
    V, T, R0 = np.asarray(lz.basis), np.asarray(lz.T), np.asarray(lz.R0)
    assert V.shape == (200, 3 * q) and T.shape == (3 * q, 3 * q)
    np.testing.assert_allclose(V.T @ V, np.eye(3 * q), atol=1e-12)
    np.testing.assert_allclose(P[:, top].T @ V, 0.0, atol=1e-12)
    for k in range(2 * q + 1):
        exact = M.T @ (g[rest, None] ** k * M)
        got = R0.T @ np.linalg.matrix_power(T, k)[:3, :3] @ R0
        if k < 2 * q:
            np.testing.assert_allclose(got, exact, rtol=0, atol=1e-10 * np.abs(exact).max())
        else:  # degree 2q: no longer exact
            assert np.abs(got - exact).max() > 1e-6 * np.abs(exact).max()
    grown = rest_lanczos(part, jnp.asarray(B), q, previous=rest_lanczos(part, jnp.asarray(B), 2))
    np.testing.assert_allclose(np.asarray(grown.T), T, rtol=0, atol=1e-12 * np.abs(T).max())
    np.testing.assert_allclose(np.abs(np.asarray(grown.basis)), np.abs(V), atol=1e-9)
    with pytest.raises(ValueError, match="exceed 2n"):
        rest_lanczos(part, jnp.asarray(B), 64)
