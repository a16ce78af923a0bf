"""The solver's routes against each other, against gradient descent, and on bad input."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stepwise_ntk.losses import barlow_twins_loss
from stepwise_ntk.solver import SolverSettings, choose_method, linear_gd, solve
from stepwise_ntk.solver._eigen_route import spectral_norm_bound
from stepwise_ntk.theory import contrastive_eigensystem

sys.path.insert(0, str(Path(__file__).parent))
from test_theory import paired_features  # noqa: E402


@pytest.fixture(scope="module")
def problem():
    """A linear-kernel problem with 4 well separated steps (γ_1/γ_4 ≈ 6.5) from small init."""
    n, m, d = 40, 60, 4
    X = jnp.asarray(paired_features(n, m, noise=0.3, seed=11, decay=0.7))
    K = X @ X.T
    es = contrastive_eigensystem(K, n)
    W0 = jnp.asarray(np.random.default_rng(12).normal(size=(d, m)) * 1e-4)
    T = 30 / (8 * float(es.gammas[d - 1]))  # all d modes converged
    # Times on a 0.02 grid so that gradient descent with lr = 0.02/2^k hits them exactly.
    times = jnp.asarray(np.unique(np.round(np.geomspace(T * 1e-3, T, 50) / 0.02) * 0.02))
    return dict(n=n, m=m, d=d, X=X, K=K, W0=W0, F0=X @ W0.T, times=times, es=es)


@pytest.fixture(scope="module")
def runs(problem):
    """The same problem through every route, with 6 new inputs + 3 views as test inputs.

    The module's other tests reuse these configurations, so they compile nothing new.
    """
    p = problem
    rng = np.random.default_rng(13)
    X_new = jnp.asarray(rng.normal(size=(6, p["m"])) / np.sqrt(p["m"]))
    K_test = jnp.concatenate([X_new @ p["X"].T, p["K"][:3]])
    F0_test = jnp.concatenate([X_new @ p["W0"].T, p["F0"][:3]])
    kw = dict(K_test=K_test, F0_test=F0_test)
    out = dict(X_new=X_new, kw=kw)
    # Fine float64 function-space reference (explicit, all 2n views).
    out["reference"] = solve(p["K"], p["n"], p["F0"], p["times"], method="function",
                             settings=SolverSettings(rtol=1e-10), **kw)
    for integrator in ("dopri5", "rosw"):
        out[integrator] = solve(p["K"], p["n"], p["F0"], p["times"], method="auto", **kw,
                                settings=SolverSettings(rtol=1e-8, integrator=integrator, mode_tol=0.0))
    out["gd"] = {lr: linear_gd(p["X"], p["n"], p["W0"], lr, p["times"], X_test=X_new) for lr in (0.02, 0.01, 0.005)}
    return out


def test_eigen_function_and_gradient_descent_agree(problem, runs):
    p, ref = problem, runs["reference"]
    for integrator in ("dopri5", "rosw"):
        eig = runs[integrator]
        assert eig.method == "eigen" and eig.integrator == integrator and "cost model" in eig.reason
        # Two independent discretisations of the same flow; rtol 1e-8 -> ~1e-6 globally.
        assert float(jnp.max(jnp.abs(eig.eigenvalues - ref.eigenvalues))) < 1e-5
        np.testing.assert_allclose(np.asarray(eig.loss), np.asarray(ref.loss), atol=1e-5)
        np.testing.assert_allclose(np.asarray(eig.embeddings), np.asarray(ref.embeddings),
                                   atol=1e-5 * float(jnp.max(jnp.abs(ref.embeddings))))
        # W is prepared at the start and after rejected steps only (ROS34PW2); DOPRI5 has none.
        n_w = int(eig.stats.n_w)
        assert (1 <= n_w <= 1 + int(eig.stats.n_rejected)) if integrator == "rosw" else n_w == 0, n_w
    assert int(ref.stats.n_w) == 0
    # By the last time every mode has stepped (the last one is at 0.986).
    assert float(jnp.min(ref.eigenvalues[-1])) > 0.95
    # Gradient descent in parameter space (f = W x, K = X Xᵀ): Euler's method, error O(lr).
    errors = []
    for gd in runs["gd"].values():
        np.testing.assert_allclose(np.asarray(gd.times), np.asarray(p["times"]), rtol=1e-12)
        errors.append(float(jnp.max(jnp.abs(gd.eigenvalues - ref.eigenvalues))))
    ratios = np.array(errors[:-1]) / np.array(errors[1:])
    assert np.all((ratios > 1.7) & (ratios < 2.4)), (errors, ratios)  # linear in lr
    assert errors[-1] < 1e-3, errors


def test_test_embeddings_both_routes(problem, runs):
    p, ref = problem, runs["reference"]
    scale = float(jnp.max(jnp.abs(ref.test_embeddings)))
    assert ref.test_embeddings.shape == (len(p["times"]), 9, p["d"])
    for integrator in ("dopri5", "rosw"):
        np.testing.assert_allclose(np.asarray(runs[integrator].test_embeddings), np.asarray(ref.test_embeddings),
                                   atol=1e-5 * scale)
    # Views used as test inputs follow the views' own trajectory.
    np.testing.assert_allclose(np.asarray(ref.test_embeddings[-1, 6:]), np.asarray(ref.embeddings[:3]),
                               atol=1e-8 * scale)
    # The linear model predicts new inputs as X_new Wᵀ: gradient descent agrees to O(lr).
    np.testing.assert_allclose(np.asarray(runs["gd"][0.005].test_embeddings[-1]),
                               np.asarray(ref.test_embeddings[-1, :6]), atol=5e-3 * scale)


def test_mode_truncation_stays_within_its_bound(problem, runs):
    p, ref = problem, runs["reference"]
    tol = 1e-7
    tr = solve(p["K"], p["n"], p["F0"], p["times"], method="eigen", **runs["kw"],
               settings=SolverSettings(rtol=1e-9, mode_tol=tol, integrator="dopri5"))
    assert int(tr.stats.n_modes) < 2 * p["n"]  # something was truncated
    assert 0 < float(tr.stats.truncation_bound) <= tol
    assert float(tr.stats.truncation_embedding_bound) > 0
    # Actual effect: within the bound plus the integration error (~1e-7 at rtol 1e-9).
    err = float(jnp.max(jnp.abs(tr.eigenvalues - ref.eigenvalues)))
    assert err <= float(tr.stats.truncation_bound) + 1e-6, err


def test_float32_tracks_float64(problem, runs):
    p, ref = problem, runs["reference"]
    K32 = p["K"].astype(jnp.float32)
    F32 = p["F0"].astype(jnp.float32)
    t32 = p["times"].astype(jnp.float32)
    for method in ("eigen", "function"):
        tr = solve(K32, p["n"], F32, t32, method=method, settings=SolverSettings(rtol=1e-5))
        assert tr.eigenvalues.dtype == jnp.float32
        # float32 round-off (eps 1.2e-7) amplified through ~10 e-folds of growth: ~1e-3.
        assert float(jnp.max(jnp.abs(tr.eigenvalues.astype(jnp.float64) - ref.eigenvalues))) < 5e-3
    with pytest.raises(ValueError, match="below what float32 resolves"):
        solve(K32, p["n"], F32, t32, settings=SolverSettings(rtol=1e-8))


def test_second_call_does_not_recompile(problem, runs, compiled):
    p = problem
    # Same shapes and static settings as the runs above, new values (and a new rtol, which
    # is a traced value): every compiled computation must be reused.
    K2, F2, t2 = jax.block_until_ready((p["K"] * 1.01, p["F0"] * 0.9, p["times"] * 1.1))
    with compiled() as log:
        for method, integrator in (("eigen", "rosw"), ("function", "dopri5")):
            solve(K2, p["n"], F2, t2, method=method, **runs["kw"],
                  settings=SolverSettings(rtol=1e-7, integrator=integrator, mode_tol=0.0))
    assert not log, log


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_spectral_norm_bound_against_eigvalsh(dtype):
    """The truncation bound's integrand: an upper bound on ‖A‖₂ within d^(1/128) (p = 6).

    Reference: float64 numpy eigvalsh. Cases that break a careless version: a multiple of
    the identity (the loosest case, where the factor d^(1/128) is attained), rank one,
    indefinite, scales near under- and overflow of the dtype, and zero.
    """
    rng = np.random.default_rng(0)
    d = 32
    G = rng.normal(size=(d, d))
    u = rng.normal(size=(d, 1))
    tiny, huge = (1e-150, 1e150) if dtype == np.float64 else (1e-15, 1e15)
    cases = [np.eye(d), -0.3 * np.eye(d), u @ u.T, G + G.T, np.diag(np.linspace(-2.0, 1.0, d)),
             tiny * (G + G.T), huge * (G + G.T)]
    factor = d ** (1 / 128)
    # float32: a few ulps of rounding in six squarings.
    slack = 1e-12 if dtype == np.float64 else 1e-5
    for A in cases:
        true = np.max(np.abs(np.linalg.eigvalsh(A)))
        bound = float(spectral_norm_bound(jnp.asarray(A, dtype)))
        assert true * (1 - slack) <= bound <= factor * true * (1 + slack), (A[0, :3], true, bound)
    assert float(spectral_norm_bound(jnp.zeros((d, d), dtype))) == 0.0


def test_auto_method_cost_model():
    assert choose_method(100_000, 8, True)[0] == "function"  # an N³ eigendecomposition is too big
    method, reason = choose_method(1000, 32, True)
    assert method == "eigen" and "N=2000" in reason  # n_pairs = 1000: N = 2000 views
    method, reason = choose_method(1000, 32, False)
    assert method == "function" and "only the function route" in reason
    # The function route's explicit steps grow with γ_1 T (stability): a long horizon at
    # 2n = 6000, d = 4 is the eigen route's; a short one stays the function route's.
    assert choose_method(3000, 4, True, stiffness=2000.0)[0] == "eigen"
    assert choose_method(3000, 4, True, stiffness=10.0)[0] == "function"
    # The eigen route is priced below the full decomposition's 10 N³ exactly where the first
    # partial eigensystem (64 modes for d ≤ 32, 128 for d = 64) is expected to be cheaper.
    from stepwise_ntk.theory import partial_is_cheaper

    for n_views in (2000, 3000, 4000, 6000, 9320):
        for d, r in ((8, 64), (32, 64), (64, 128)):
            reason = choose_method(n_views // 2, d, True)[1]
            eigen = float(reason.split("eigen ≈ ")[1].split(" flops")[0])
            full = 10.0 * n_views**3
            assert eigen <= full * 1.01 and (eigen < 0.99 * full) == partial_is_cheaper(n_views, r), (n_views, d)
    assert choose_method(3000, 8, True)[0] == "eigen"  # 2n = 6000: the partial eigensystem's price
    with pytest.raises(ValueError, match="stiffness"):
        choose_method(3000, 8, True, stiffness=-1.0)
    with pytest.raises(TypeError, match="n_pairs must be a positive integer"):
        choose_method(1000.0, 32, True)


def _step_order(times, lam, final):
    """Times at which each eigenvalue first reaches half of its final value."""
    return np.array([times[np.argmax(lam[:, j] >= 0.5 * final[j])] for j in range(lam.shape[1])])


@pytest.mark.parametrize("loss,kwargs,T", [
    # Cosine NT-Xent is scale invariant, so its flow from a small initialisation is singular
    # (the rate grows like 1/|f|²); the dot-product form has the same small-init structure as
    # the paper's setting and is what grows one mode at a time.
    ("simclr", {"normalize": False, "temperature": 0.5}, 2e3),
    # The smoothed hinge avoids the sliding mode at std = 1 (see vicreg_loss).
    ("vicreg", {"smooth": 0.01}, 1e3),
])
def test_simclr_and_vicreg_learn_one_mode_at_a_time(loss, kwargs, T):
    n, m, d = 64, 40, 3
    X = jnp.asarray(paired_features(n, m, noise=0.2, seed=0, decay=1.0))
    K = X @ X.T
    F0 = X @ jnp.asarray(np.random.default_rng(1).normal(size=(m, d)) * 1e-3)
    times = jnp.geomspace(1e-3, T, 120)
    tr = solve(K, n, F0, times, loss=loss, loss_kwargs=kwargs, settings=SolverSettings(rtol=1e-6))
    assert tr.method == "function"  # "auto": only the function route handles these losses
    lam = np.asarray(tr.eigenvalues)
    final = lam[-1]
    assert np.all(final > 100 * lam[0])  # every mode grew
    t_half = _step_order(np.asarray(times), lam, final)
    assert np.all(np.diff(t_half) > 0)
    # One at a time: when mode j reaches half its final size, mode j+1 is still < 5% of its
    # own (simultaneous growth would have them at the same fraction), and the steps are
    # separated by more than a factor 2 in time.
    for j in range(d - 1):
        i = np.argmax(lam[:, j] >= 0.5 * final[j])
        assert lam[i, j + 1] < 0.05 * final[j + 1], (j, lam[i], final)
    assert np.all(t_half[1:] / t_half[:-1] > 2.0), t_half


def test_bad_input(problem, runs):
    p = problem
    K, n, F0, times = p["K"], p["n"], p["F0"], p["times"]
    with pytest.raises(ValueError, match="square"):
        solve(K[:, :-1], n, F0, times)
    with pytest.raises(ValueError, match="not symmetric"):
        solve(K + jnp.triu(jnp.ones_like(K), 1) * 1e-3, n, F0, times)
    with pytest.raises(ValueError, match="NaN or Inf"):
        solve(K.at[0, 0].set(jnp.nan), n, F0, times)
    with pytest.raises(ValueError, match="not positive semi-definite"):
        solve(K - 0.1 * jnp.eye(2 * n), n, F0, times, method="eigen")
    with pytest.raises(ValueError, match="rows but the kernel has"):
        solve(K, n, F0[:-2], times)
    with pytest.raises(ValueError, match="strictly increasing"):
        solve(K, n, F0, times[::-1])
    with pytest.raises(ValueError, match="Barlow Twins loss only"):
        solve(K, n, F0, times, loss="simclr", method="eigen")
    with pytest.raises(ValueError, match="method must be one of"):
        solve(K, n, F0, times, method="fast")
    with pytest.raises(ValueError, match="K_test must be"):
        solve(K, n, F0, times, K_test=K[:, :-1])
    with pytest.raises(ValueError, match="F0_test was given without K_test"):
        solve(K, n, F0, times, F0_test=F0)
    with pytest.raises(ValueError, match="loss must be one of"):
        solve(K, n, F0, times, loss="byol")
    # Fewer than d positive γ: a rank-2 kernel cannot give d = 4 whitened dimensions.
    X2 = jnp.asarray(paired_features(n, 2, seed=3))
    with pytest.raises(ValueError, match="cannot reach zero"):
        solve(X2 @ X2.T, n, F0, times, method="eigen")
    with pytest.raises(ValueError, match="integration stopped"):
        solve(K, n, F0, times, method="function", **runs["kw"], settings=SolverSettings(max_steps=3))
    with pytest.raises(ValueError, match="integrator must be one of"):
        SolverSettings(integrator="euler")
    with pytest.raises(ValueError, match="loss_kwargs only go with a loss name"):
        solve(K, n, F0, times, loss=barlow_twins_loss, loss_kwargs={"x": 1})
    # Wrong types are TypeErrors.
    with pytest.raises(TypeError, match="n_pairs must be a positive integer"):
        solve(K, float(n), F0, times)
    with pytest.raises(TypeError, match="settings must be SolverSettings"):
        solve(K, n, F0, times, settings={"rtol": 1e-6})
    with pytest.raises(TypeError, match="loss must be one of"):
        solve(K, n, F0, times, loss=3)
    with pytest.raises(TypeError, match="loss_kwargs"):
        solve(K, n, F0, times, loss="simclr", loss_kwargs=[("temperature", 0.2)])
    with pytest.raises(TypeError, match="SolverSettings.rtol must be a real number"):
        SolverSettings(rtol="1e-6")
    with pytest.raises(TypeError, match="SolverSettings.max_steps must be a positive integer"):
        SolverSettings(max_steps=1e6)
    with pytest.raises(TypeError, match="SolverSettings.shard must be True or False"):
        SolverSettings(shard="yes")
    with pytest.raises(ValueError, match="SolverSettings.mode_tol must be a finite number ≥ 0"):
        SolverSettings(mode_tol=-1.0)
    # The GD reference checks its inputs too.
    with pytest.raises(ValueError, match="round to the same step"):
        linear_gd(p["X"], n, p["W0"], 10.0, times)
    with pytest.raises(ValueError, match="W0 must be"):
        linear_gd(p["X"], n, p["W0"][:, :-1], 0.01, times)
    with pytest.raises(ValueError, match="learning_rate must be a finite number > 0"):
        linear_gd(p["X"], n, p["W0"], 0.0, times)
    with pytest.raises(TypeError, match="learning_rate must be a real number"):
        linear_gd(p["X"], n, p["W0"], "0.01", times)
    with pytest.raises(TypeError, match="n_pairs must be a positive integer"):
        linear_gd(p["X"], 2.5, p["W0"], 0.01, times)
    with pytest.raises(ValueError, match="strictly increasing"):
        linear_gd(p["X"], n, p["W0"], 0.01, times[::-1])
    with pytest.raises(ValueError, match="loss must be one of"):
        linear_gd(p["X"], n, p["W0"], 0.01, times, loss="byol")


SHARDING_SCRIPT = textwrap.dedent("""
    import os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_enable_x64", True)
    assert len(jax.devices()) == 8, jax.devices()
    sys.path.insert(0, sys.argv[1])
    from test_theory import paired_features
    from stepwise_ntk.solver import solve, SolverSettings
    n, m, d = 32, 40, 3
    X = jnp.asarray(paired_features(n, m, noise=0.3, seed=5))
    K = X @ X.T
    F0 = X @ jnp.asarray(np.random.default_rng(6).normal(size=(m, d)) * 1e-3)
    K_test = jnp.asarray(np.random.default_rng(7).normal(size=(8, m))) @ X.T / m
    times = jnp.geomspace(1e-2, 2e3, 40)
    out = {}
    for shard in (True, False):
        out[shard] = solve(K, n, F0, times, method="function", K_test=K_test,
                           settings=SolverSettings(rtol=1e-8, shard=shard))
    assert int(out[True].stats.n_devices) == 8 and int(out[False].stats.n_devices) == 1
    for field in ("eigenvalues", "loss", "embeddings", "test_embeddings"):
        a, b = getattr(out[True], field), getattr(out[False], field)
        diff = float(jnp.max(jnp.abs(a - b))) / max(float(jnp.max(jnp.abs(b))), 1e-300)
        # Same algorithm, reductions in a different order: 1e-16 round-off, amplified by the
        # exponential growth phase to ~1e-9. A lost or duplicated shard would be O(1).
        assert diff < 1e-7, (field, diff)
    assert float(out[True].eigenvalues[-1, -1]) > 0.9  # the run actually learned
    print("OK", int(out[True].stats.n_steps))
""")


def test_sharded_kernel_matches_one_device(tmp_path):
    script = tmp_path / "shard.py"
    script.write_text(SHARDING_SCRIPT)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, str(script), str(Path(__file__).parent)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK" in proc.stdout
