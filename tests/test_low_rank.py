"""The low-rank contrastive eigensystem (Cholesky columns of a rank-deficient K) against the
full one, and the solver's eigen route on it against a full-decomposition reference.

Kernels: linear on ``p`` paired features, ``2n = 600`` views, so ``rank K = p``; each test
takes seconds.
"""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stepwise_ntk.solver import SolverSettings, solve
from stepwise_ntk.theory import (
    contrastive_eigensystem_from_factor,
    jittered_cholesky,
    low_rank_columns,
    mode_functions,
    step_times,
)

sys.path.insert(0, str(Path(__file__).parent))
from test_theory import paired_features  # noqa: E402

N_PAIRS = 300
RANK = 40


@pytest.fixture(scope="module")
def problem():
    X = paired_features(N_PAIRS, RANK, noise=0.4, seed=3, decay=0.5)
    K = jnp.asarray(X @ X.T)
    L, tau = jittered_cholesky(K, jnp.asarray(2 * N_PAIRS * 2.0**-52))
    return dict(X=X, K=K, L=L, tau=tau, full=contrastive_eigensystem_from_factor(L, tau))


def test_columns_drop_what_the_tolerance_allows(problem):
    L = np.asarray(problem["L"])
    norms = np.sum(L**2, axis=0)
    for tol in (1e-12, 1e-9, 1e-6):
        keep = low_rank_columns(problem["L"], tol)
        dropped = np.setdiff1d(np.arange(L.shape[1]), keep)
        assert np.all(np.diff(keep) > 0)
        assert norms[dropped].sum() <= tol
        # Fewest kept: the smallest kept column would not have fitted as well.
        assert dropped.size == L.shape[1] or norms[dropped].sum() + norms[keep].min() > tol
    # K has rank 40: at a tolerance far above the jitter's columns (~τ each), 40 stay.
    assert low_rank_columns(problem["L"], 1e-6).size == RANK
    assert low_rank_columns(problem["L"], 0.0).size == L.shape[1]


def test_low_rank_matches_full(problem):
    L, tau, full = problem["L"], problem["tau"], problem["full"]
    keep = low_rank_columns(L, 1e-6)
    low = contrastive_eigensystem_from_factor(L, tau, columns=keep)
    assert not low.partial and low.residuals is None
    assert low.gammas.shape == (RANK,) and low.vectors.shape == (2 * N_PAIRS, RANK)
    dropped = np.sum(np.delete(np.asarray(L), keep, axis=1) ** 2)
    np.testing.assert_allclose(float(low.jitter), float(tau) + dropped, rtol=1e-10)
    # The kernel moves by ≤ jitter, so each γ by about jitter / 2n: compare with the full
    # system's RANK values of largest |γ| (the rest are the null space's, |γ| ≲ τ / 2n).
    g = np.asarray(full.gammas)
    want = np.sort(g[np.argsort(-np.abs(g))[:RANK]])[::-1]
    assert np.max(np.abs(np.delete(g, np.argsort(-np.abs(g))[:RANK]))) < 1e-9 * np.abs(g).max()
    np.testing.assert_allclose(np.asarray(low.gammas), want, atol=1e-9 * np.abs(g).max())
    # Zero rows where columns were dropped; orthonormal; the same mode functions (up to sign).
    P = np.asarray(low.vectors)
    assert np.all(np.delete(P, keep, axis=0) == 0)
    np.testing.assert_allclose(P.T @ P, np.eye(RANK), atol=1e-12)
    g_low = np.asarray(mode_functions(low, 5))
    g_full = np.asarray(mode_functions(full, 5))
    cos = np.abs(np.sum(g_low * g_full, axis=0)) / (np.linalg.norm(g_low, axis=0) * np.linalg.norm(g_full, axis=0))
    np.testing.assert_allclose(cos, 1.0, atol=1e-8)


def test_bad_columns_are_refused(problem):
    L, tau = problem["L"], problem["tau"]
    for bad in ([3, 1], [0, 600], [], [0.5]):
        with pytest.raises(ValueError, match="columns must be increasing indices"):
            contrastive_eigensystem_from_factor(L, tau, columns=np.asarray(bad))


def _times(problem, F0):
    T = 1.5 * float(np.max(np.asarray(step_times(problem["full"], jnp.asarray(F0)))))
    return np.geomspace(1e-3 * T, T, 40)


@pytest.mark.parametrize("in_range", [True, False])
def test_solver_low_rank_route_meets_accuracy(problem, in_range):
    """Defaults on a rank-40 kernel: the low-rank eigensystem where F0 lies in K's range, the
    full one where it does not; both within the accuracy of a full-decomposition reference."""
    X, K = problem["X"], problem["K"]
    rng = np.random.default_rng(8)
    d = 4
    F0 = X @ (1e-3 * rng.normal(size=(RANK, d))) if in_range else 1e-3 * rng.normal(size=(2 * N_PAIRS, d))
    K_test = rng.normal(size=(30, RANK)) @ X.T
    times = _times(problem, F0)
    ref = solve(K, N_PAIRS, F0, times, K_test=K_test, method="eigen",
                settings=SolverSettings(rtol=1e-10, mode_tol=0.0, eigensystem="full"))
    assert float(ref.eigenvalues[-1, d - 1]) > 0.5  # every mode has stepped
    tr = solve(K, N_PAIRS, F0, times, K_test=K_test)
    assert ("low-rank kernel: 40 of 600" in tr.reason) == in_range, tr.reason
    assert int(tr.stats.n_eigen_modes) == (RANK if in_range else 2 * N_PAIRS)
    err = float(np.max(np.abs(np.asarray(tr.eigenvalues) - np.asarray(ref.eigenvalues))))
    assert err <= 1e-3 and float(tr.stats.error_estimate) <= 1e-3, err
    scale = float(np.max(np.abs(np.asarray(ref.embeddings))))
    np.testing.assert_allclose(np.asarray(tr.embeddings), np.asarray(ref.embeddings), atol=1e-3 * scale)
    scale = float(np.max(np.abs(np.asarray(ref.test_embeddings))))
    np.testing.assert_allclose(np.asarray(tr.test_embeddings), np.asarray(ref.test_embeddings),
                               atol=1e-3 * scale)
    # Asked for the full decomposition, the solver never takes the low-rank one.
    full = solve(K, N_PAIRS, F0, times, settings=SolverSettings(eigensystem="full"))
    assert "low-rank" not in full.reason and int(full.stats.n_eigen_modes) == 2 * N_PAIRS


def test_solver_keeps_full_rank_kernels_square(problem):
    """More than two thirds of the columns carry K (rank 480 of 600 views): the square
    factor."""
    X = paired_features(N_PAIRS, 480, noise=0.4, seed=4, decay=0.5)
    F0 = X @ (1e-3 * np.random.default_rng(9).normal(size=(480, 2)))
    tr = solve(X @ X.T, N_PAIRS, F0, np.geomspace(1e-2, 1e2, 10))
    assert "low-rank" not in tr.reason and int(tr.stats.n_eigen_modes) == 2 * N_PAIRS


def test_second_low_rank_call_does_not_recompile(problem, compiled):
    X, K = problem["X"], problem["K"]
    F0 = X @ (1e-3 * np.random.default_rng(10).normal(size=(RANK, 3)))
    times = _times(problem, F0)
    first = solve(K, N_PAIRS, F0, times)
    assert "low-rank kernel" in first.reason
    # New values, same rank and shapes: the eigensystem, the range check, the preparation and
    # the integration must all be reused (every integrated mode is one of the 40 kept).
    K2, F2 = jax.block_until_ready((K * 1.01, jnp.asarray(F0) * 0.9))
    with compiled() as log:
        second = solve(K2, N_PAIRS, F2, times)
    assert "low-rank kernel" in second.reason
    assert not log, log
