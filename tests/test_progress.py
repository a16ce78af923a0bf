"""Progress bars of the integrations (``solver/_progress.py``): the bar reaches every output
time, results of ``solve`` and ``solve_preconditioned`` do not depend on it, and a second
solve with progress compiles nothing."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stepwise_ntk.solver import solve, solve_preconditioned
from stepwise_ntk.solver._integrate import integrate
from stepwise_ntk.solver._progress import progress_bar, report

SIMCLR = {"loss": "simclr", "loss_kwargs": {"normalize": False}}


@pytest.fixture(scope="module")
def problem():
    X = jax.random.normal(jax.random.key(0), (120, 90), dtype=jnp.float64)
    X = X.at[60:].set(X[:60] + 0.3 * X[60:])
    K = X @ X.T / 90
    F0 = 1e-3 * jax.random.normal(jax.random.key(1), (120, 3), dtype=jnp.float64)
    return K, 60, F0, jnp.geomspace(1e-2, 3e3, 30)


def test_bar_reaches_every_output_time():
    """Exact decay y' = −y: the bar counts all output times (the first at t = 0 included)
    and the results equal those of the same integration without a report."""
    times = jnp.asarray([0.0, 0.1, 0.2, 0.5, 1.0, 2.0])
    kw = dict(observe=lambda y, a: y)
    plain = integrate(lambda t, y, a: -y, jnp.ones(2), times, **kw)
    with progress_bar(times.shape[0], "decay", enabled=True) as bar:
        out = jax.block_until_ready(integrate(lambda t, y, a: -y, jnp.ones(2), times, report=report, **kw))
        assert bar.n == times.shape[0]
    np.testing.assert_array_equal(out.observed, plain.observed)
    np.testing.assert_allclose(out.observed[:, 0], np.exp(-np.asarray(times)), rtol=1e-5)
    with progress_bar(3, "off", enabled=False) as none:
        assert none is None


@pytest.mark.parametrize("kw", [{}, SIMCLR, {**SIMCLR, "method": "galerkin"}], ids=["eigen", "function", "galerkin"])
def test_solve_with_progress_changes_nothing(problem, kw, capsys):
    K, n, F0, times = problem
    plain = solve(K, n, F0, times, **kw)
    shown = solve(K, n, F0, times, progress=True, **kw)
    assert shown.method == plain.method == kw.get("method", "eigen" if not kw else "function")
    np.testing.assert_array_equal(shown.eigenvalues, plain.eigenvalues)
    np.testing.assert_array_equal(shown.embeddings, plain.embeddings)
    assert f"solve: {shown.method} route" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["eigen", "function"])
def test_preconditioned_solve_with_progress_changes_nothing(problem, method, capsys):
    K, n, F0, times = problem
    plain = solve_preconditioned(K, n, F0, times, method=method)
    shown = solve_preconditioned(K, n, F0, times, method=method, progress=True)
    np.testing.assert_array_equal(shown.eigenvalues, plain.eigenvalues)
    assert f"solve_preconditioned: {method} route" in capsys.readouterr().err


def test_second_solve_with_progress_does_not_recompile(problem, compiled):
    K, n, F0, times = problem
    solve(K, n, F0, times, progress=True)
    K2, F2 = jax.block_until_ready((K * 1.01, F0 * 0.9))  # new values, same shapes
    with compiled() as log:
        solve(K2, n, F2, times, progress=True)
    assert not log, log


def test_progress_must_be_a_bool(problem):
    K, n, F0, times = problem
    for call in (solve, solve_preconditioned):
        with pytest.raises(TypeError, match="progress must be True or False"):
            call(K, n, F0, times, progress=1)
