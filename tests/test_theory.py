"""Contrastive eigensystem and closed-form theory against float64 numpy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stepwise_ntk.solver import SolverSettings, solve
from stepwise_ntk.theory import (
    aligned_eigenvalues,
    check_enough_modes,
    contrastive_eigensystem,
    default_jitter_rtol,
    final_embeddings,
    initial_eigenvalues,
    loss_staircase,
    mode_coordinates,
    mode_functions,
    mode_functions_new,
    plateau_levels,
    procrustes_align,
    procrustes_error,
    step_times,
)


def paired_features(n, m, noise=0.3, seed=0, decay=1.0):
    """Views x_i, x'_i = x_i + noise: a linear kernel with a spread of contrastive eigenvalues."""
    rng = np.random.default_rng(seed)
    scales = np.arange(1, m + 1, dtype=np.float64) ** (-decay)
    x = rng.normal(size=(n, m)) * scales
    xp = x + noise * rng.normal(size=(n, m)) * scales
    return np.concatenate([x, xp]) / np.sqrt(m)


def dense_Z(n):
    Z = np.zeros((2 * n, 2 * n))
    Z[np.arange(n), n + np.arange(n)] = Z[n + np.arange(n), np.arange(n)] = 1.0
    return Z


def theory_reference(K, n, keep_rtol=1e-12):
    """THEORY.md verbatim: K = V Λ Vᵀ (λ > keep_rtol λ_max), S = V Λ^½, Γ̃ = SᵀZS/2n = Q diag(γ) Qᵀ."""
    lam, V = np.linalg.eigh(K)
    keep = lam > keep_rtol * lam.max()
    lam, V = lam[keep], V[:, keep]
    S = V * np.sqrt(lam)
    G = S.T @ dense_Z(n) @ S / (2 * n)
    g, Q = np.linalg.eigh(G)
    order = np.argsort(-g)
    return g[order], Q[:, order], V, lam, S


def test_gammas_match_theory_construction_and_KZ_eigenvalues():
    n = 40
    X = paired_features(n, 120)  # 2n = 80 < 120 features: K full rank
    K = X @ X.T
    es = contrastive_eigensystem(K, n)
    g_ref, *_ = theory_reference(K, n)
    # Two different square roots of K (Cholesky vs eigh): same spectrum to round-off
    # (absolute ~ eps * ||K|| / 2n; relative 1e-10 on the leading modes).
    np.testing.assert_allclose(np.asarray(es.gammas), g_ref, rtol=1e-9, atol=1e-12 * abs(g_ref[0]))
    # The γ are also the eigenvalues of K Z / 2n (a non-symmetric matrix).
    kz = np.sort(np.linalg.eigvals(K @ dense_Z(n) / (2 * n)).real)[::-1]
    np.testing.assert_allclose(np.asarray(es.gammas)[:20], kz[:20], rtol=1e-8)
    assert np.all(np.diff(np.asarray(es.gammas)) <= 0)


def test_mode_functions_on_views_and_new_inputs_match_theory():
    n, m = 30, 90
    X = paired_features(n, m, seed=1)
    K = X @ X.T
    es = contrastive_eigensystem(K, n)
    g_ref, Q, V, lam, S = theory_reference(K, n)
    top = 5
    assert np.all(g_ref[:top] / g_ref[1:top + 1] > 1.05)  # separated: vectors defined up to sign
    G = np.asarray(mode_functions(es, top))
    G_ref = S @ Q[:, :top]
    signs = np.sign(np.sum(G * G_ref, axis=0))
    np.testing.assert_allclose(G * signs, G_ref, rtol=1e-7, atol=1e-9 * np.abs(G_ref).max())
    # Normalisation g_jᵀ Z g_j = 2n γ_j.
    np.testing.assert_allclose(np.sum(G * (dense_Z(n) @ G), axis=0), 2 * n * g_ref[:top], rtol=1e-9)
    # Nyström on new inputs: g_j(x) = q_jᵀ Λ^{-1/2} Vᵀ K(X, x).
    Xn = np.random.default_rng(2).normal(size=(7, m)) / np.sqrt(m)
    Kn = Xn @ X.T
    Gn = np.asarray(mode_functions_new(es, jnp.asarray(Kn), top))
    Gn_ref = (Kn @ V / np.sqrt(lam)) @ Q[:, :top]
    np.testing.assert_allclose(Gn * signs, Gn_ref, rtol=1e-7, atol=1e-9 * np.abs(Gn_ref).max())
    # New inputs that are the views themselves reproduce the view mode functions.
    np.testing.assert_allclose(np.asarray(mode_functions_new(es, jnp.asarray(K), top)), G, rtol=1e-7,
                               atol=1e-9 * np.abs(G).max())


@pytest.mark.parametrize("kind", ["few_features", "centred"])
def test_rank_deficient_kernels(kind):
    n = 50
    if kind == "few_features":
        X = paired_features(n, 12, seed=3)  # rank 12 << 2n = 100
    else:
        X = paired_features(n, 300, seed=4)
        X = X - X.mean(axis=0)  # exactly rank 2n - 1
    K = X @ X.T
    es = contrastive_eigensystem(K, n)
    g_ref, *_ = theory_reference(K, n, keep_rtol=1e-10)
    r = len(g_ref)
    g = np.asarray(es.gammas)
    # The non-null part matches the truncated reference; the rest sits at the jitter level
    # |γ| <= τ/2n (module docstring).
    top = min(r, 10)
    np.testing.assert_allclose(g[:top], g_ref[:top], rtol=1e-7)
    null_level = float(es.jitter) / (2 * n)
    if kind == "few_features":
        assert np.all(np.abs(g[r:r + (2 * n - r) // 2]) <= 2 * null_level + 1e-14 * g[0])
    assert np.all(np.isfinite(g))


def test_float32_eigensystem_close_to_float64():
    n = 40
    X = paired_features(n, 120, seed=5)
    K = X @ X.T
    g64 = np.asarray(contrastive_eigensystem(K, n).gammas)
    g32 = np.asarray(contrastive_eigensystem(K.astype(np.float32), n).gammas)
    assert g32.dtype == np.float32
    # float32 eigensolver on a matrix with ||K|| ~ 1: absolute error ~ 2n eps32 ||H||.
    np.testing.assert_allclose(g32[:10], g64[:10], rtol=1e-4, atol=2e-5 * g64[0])


def test_bad_kernels_raise():
    n = 10
    X = paired_features(n, 30, seed=6)
    K = X @ X.T
    with pytest.raises(ValueError, match="not positive semi-definite"):
        contrastive_eigensystem(K - 0.5 * np.abs(np.linalg.eigvalsh(K)).max() * np.eye(2 * n), n)
    with pytest.raises(ValueError, match="not symmetric"):
        contrastive_eigensystem(K + np.triu(np.ones_like(K), 1) * 1e-2, n)
    bad = K.copy()
    bad[3, 3] = np.inf
    with pytest.raises(ValueError, match="NaN or Inf"):
        contrastive_eigensystem(bad, n)
    with pytest.raises(ValueError, match=r"needs \(22, 22\)"):
        contrastive_eigensystem(K, 11)
    # Rank 3 kernel: only <= 3 positive γ, so d = 5 cannot reach zero loss.
    X3 = paired_features(n, 3, seed=7)
    es = contrastive_eigensystem(X3 @ X3.T, n)
    with pytest.raises(ValueError, match="Only .* contrastive eigenvalues .* positive"):
        check_enough_modes(es, 5)
    check_enough_modes(es, 2)


# ------------------------------------------------------------------------------------ theory


def test_aligned_eigenvalues_solve_the_logistic_equation():
    g = jnp.array([0.9, 0.4, 0.05])
    lam0 = jnp.array([1e-6, 1e-3, 0.0])
    t = jnp.linspace(0.0, 5.0, 11)
    lam = aligned_eigenvalues(g, lam0, t)
    np.testing.assert_allclose(np.asarray(lam[0]), np.asarray(lam0), rtol=1e-15)
    # dλ/dt = 8γλ(1-λ) checked with jax.jacfwd in t.
    dlam = jax.jacfwd(lambda s: aligned_eigenvalues(g, lam0, s[None])[0])(jnp.asarray(1.3))
    l13 = aligned_eigenvalues(g, lam0, jnp.array([1.3]))[0]
    np.testing.assert_allclose(np.asarray(dlam), np.asarray(8 * g * l13 * (1 - l13)), rtol=1e-12)
    assert float(lam[-1, 2]) == 0.0  # a mode at 0 stays at 0
    with pytest.raises(ValueError, match="≥ 0"):
        aligned_eigenvalues(g, -lam0 - 1e-3, t)
    np.testing.assert_allclose(np.asarray(loss_staircase(g, lam0, t)), np.asarray(jnp.sum((1 - lam) ** 2, 1)))
    assert plateau_levels(3).tolist() == [3.0, 2.0, 1.0, 0.0]


def _aligned_problem(n=30, m=60, d=3, seed=8, scale=(1e-7, 1e-6, 1e-5)):
    X = paired_features(n, m, seed=seed)
    K = X @ X.T
    es = contrastive_eigensystem(K, n)
    N = 2 * n
    M0 = np.zeros((d, N))
    M0[np.arange(d), np.arange(d)] = np.sqrt(np.asarray(scale[:d]) / np.asarray(es.gammas)[:d])
    F0 = np.asarray(es.factor) @ np.asarray(es.vectors) @ M0.T  # F = L P Mᵀ: aligned with modes 1..d
    return K, es, jnp.asarray(F0), n, d


@pytest.mark.parametrize("method", ["eigen", "function"])
def test_closed_form_aligned_solution_matches_solver(method):
    K, es, F0, n, d = _aligned_problem()
    lam0 = initial_eigenvalues(es, F0)
    np.testing.assert_allclose(np.asarray(lam0), [1e-7, 1e-6, 1e-5], rtol=1e-9)
    ts = step_times(es, F0)
    times = jnp.geomspace(1e-3 * float(ts[0]), 3 * float(jnp.max(ts)), 80)
    traj = solve(K, n, F0, times, method=method,
                 settings=SolverSettings(rtol=1e-10, mode_tol=0.0, integrator="dopri5"))
    exact = np.sort(np.asarray(aligned_eigenvalues(es.gammas[:d], lam0, times)), axis=1)[:, ::-1]
    # Closed form vs solver to 1e-6 in float64.
    assert np.max(np.abs(np.asarray(traj.eigenvalues) - exact)) < 1e-6
    np.testing.assert_allclose(np.asarray(traj.loss),
                               np.asarray(loss_staircase(es.gammas[:d], lam0, times)), atol=3e-6)


def test_step_times_and_final_embeddings_for_aligned_start():
    K, es, F0, n, d = _aligned_problem()
    ts = np.asarray(step_times(es, F0))
    g = np.asarray(es.gammas)[:d]
    np.testing.assert_allclose(ts, np.log(1 / np.array([1e-7, 1e-6, 1e-5]) - 1) / (8 * g), rtol=1e-9)
    assert np.all(np.diff(ts) > 0)  # learned one at a time, in order of γ
    times = jnp.asarray(np.sort(np.concatenate([ts, [20 * ts.max()]])))
    traj = solve(K, n, F0, times, settings=SolverSettings(rtol=1e-10, mode_tol=0.0))
    lam = np.asarray(traj.eigenvalues)
    # At t_j exactly, mode j's eigenvalue is 1/2 (modes are sorted, so it is the j-th largest).
    np.testing.assert_allclose(np.diag(lam[:d]), 0.5, atol=1e-6)
    # The learned embedding is the closed form up to rotation (aligned start: no mixing).
    F_th = np.asarray(final_embeddings(es, None, d))
    assert float(procrustes_error(traj.embeddings, jnp.asarray(F_th))) < 1e-6
    # Closed form on the views: C = I exactly.
    C = F_th.T @ dense_Z(n) @ F_th / (2 * n)
    np.testing.assert_allclose(C, np.eye(d), atol=1e-10)
    # Through the Nyström extension with K(views, views) it is the same function.
    np.testing.assert_allclose(np.asarray(final_embeddings(es, K, d)), F_th, rtol=1e-6, atol=1e-9)


def test_procrustes_recovers_rotation():
    rng = np.random.default_rng(9)
    B = rng.normal(size=(20, 4))
    R, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    A = B @ R.T
    AR, Rhat = procrustes_align(jnp.asarray(A), jnp.asarray(B))
    np.testing.assert_allclose(np.asarray(AR), B, atol=1e-12)
    np.testing.assert_allclose(np.asarray(Rhat), R, atol=1e-12)
    assert float(procrustes_error(jnp.asarray(A + 0.1 * rng.normal(size=A.shape)), jnp.asarray(B))) > 1e-2
    with pytest.raises(ValueError, match="same"):
        procrustes_align(jnp.zeros((3, 2)), jnp.zeros((3, 3)))


def test_procrustes_error_with_and_without_scale():
    rng = np.random.default_rng(19)
    B = rng.normal(size=(30, 3))
    R, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    A = B @ R.T
    assert float(procrustes_error(A, B)) == pytest.approx(0.0, abs=1e-12)
    # 3·(rotation of B): the best rotation leaves 3B − B = 2B; the best scale removes it.
    assert float(procrustes_error(3.0 * A, B)) == pytest.approx(2.0, abs=1e-12)
    assert float(procrustes_error(3.0 * A, B, scale=True)) == pytest.approx(0.0, abs=1e-12)
    # A generic pair: the closed forms s = tr(Rᵀ Aᵀ B)/‖A‖², min ‖s A R − B‖/‖B‖ (numpy SVD).
    A = B + rng.normal(size=B.shape)
    U, _, Vt = np.linalg.svd(A.T @ B)
    AR = A @ U @ Vt
    s = np.sum(AR * B) / np.sum(A * A)
    assert float(procrustes_error(A, B)) == pytest.approx(np.linalg.norm(AR - B) / np.linalg.norm(B), rel=1e-12)
    assert float(procrustes_error(A, B, scale=True)) == pytest.approx(np.linalg.norm(s * AR - B) / np.linalg.norm(B),
                                                                       rel=1e-12)
    # Jit-able: the value checks are skipped for tracers.
    np.testing.assert_allclose(float(jax.jit(procrustes_error)(A, B)), float(procrustes_error(A, B)), rtol=1e-14)


def test_procrustes_error_bad_input():
    A = np.random.default_rng(20).normal(size=(10, 3))
    with pytest.raises(ValueError, match=r"same \(m, d\) shape"):
        procrustes_error(A, A[:, :2])
    with pytest.raises(ValueError, match="same number of rows"):
        procrustes_error(A, A[:-1])
    with pytest.raises(ValueError, match="all zeros"):
        procrustes_error(A, np.zeros_like(A))
    with pytest.raises(ValueError, match="NaN or Inf"):
        procrustes_error(np.full_like(A, np.nan), A)
    with pytest.raises(ValueError, match="dtype"):
        procrustes_error(A.astype(np.float32), A)
    with pytest.raises(ValueError, match="non-empty"):
        procrustes_error(A[:, 0], A[:, 0])
    with pytest.raises(TypeError, match="scale must be True or False"):
        procrustes_error(A, A, scale="yes")


def test_theory_bad_input():
    K, es, F0, n, d = _aligned_problem()
    with pytest.raises(ValueError, match="not small"):
        step_times(es, F0 * 1e4)
    with pytest.raises(ValueError, match="rows but the kernel has"):
        step_times(es, F0[:-2])
    with pytest.raises(ValueError, match="d must be a positive integer"):
        final_embeddings(es, None, 0)
    with pytest.raises(TypeError, match="d must be a positive integer"):
        final_embeddings(es, None, 2.0)
    with pytest.raises(TypeError, match="es must be a ContrastiveEigensystem"):
        step_times((es.gammas, es.vectors), F0)
    with pytest.raises(ValueError, match=r"K_test must be \(m, 2n\) = \(m, 60\)"):
        final_embeddings(es, K[:, :-1], d)
    with pytest.raises(ValueError, match="modes must be an integer ≥ 1"):
        mode_functions(es, 0)
    M = mode_coordinates(es, F0)
    assert M.shape == (d, 2 * n)


def test_contrastive_eigensystem_argument_types():
    X = paired_features(5, 8, seed=10)
    K = X @ X.T
    with pytest.raises(TypeError, match="n_pairs must be a positive integer"):
        contrastive_eigensystem(K, 5.0)
    with pytest.raises(TypeError, match="n_pairs must be a positive integer"):
        contrastive_eigensystem(K, "5")
    with pytest.raises(TypeError, match="jitter_rtol must be a real number"):
        contrastive_eigensystem(K, 5, jitter_rtol="1e-12")
    with pytest.raises(ValueError, match="jitter_rtol must be a finite number ≥ 0"):
        contrastive_eigensystem(K, 5, jitter_rtol=-1e-12)
    # The default jitter is 2n · eps, as a function of the number of pairs n.
    assert default_jitter_rtol(5, np.float64) == 10 * np.finfo(np.float64).eps
    es = contrastive_eigensystem(K, 5)
    assert float(es.jitter) == default_jitter_rtol(5, np.float64) * float(np.max(np.diag(K)))


def test_theory_functions_are_jittable():
    K, es, F0, n, d = _aligned_problem()

    @jax.jit
    def predict(K, F0):
        es = contrastive_eigensystem(K, n)  # value checks are skipped for tracers
        return step_times(es, F0), final_embeddings(es, K, d)

    ts, F = predict(jnp.asarray(K), F0)
    np.testing.assert_allclose(np.asarray(ts), np.asarray(step_times(es, F0)), rtol=1e-9)
    np.testing.assert_allclose(np.asarray(F), np.asarray(final_embeddings(es, K, d)), rtol=1e-7, atol=1e-9)
