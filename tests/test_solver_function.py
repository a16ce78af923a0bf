"""The function-space routes for any loss: the Galerkin route against the full function route,
the losses' closed-form gradients and quadratic parts, input checks, float32, precision."""

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stepwise_ntk.losses import loss_gradient, loss_quadratic_part, resolve_loss, simclr_loss
from stepwise_ntk.solver import SolverSettings, choose_method, solve
from stepwise_ntk.solver._function_route import _function_integrate, _FunctionConfig
from stepwise_ntk.solver._galerkin import GalerkinConfig, galerkin_integrate, kernel_spectrum

sys.path.insert(0, str(Path(__file__).parent))
from test_theory import paired_features  # noqa: E402

N_PAIRS, D = 24, 3
# The losses as the CLI integrates them (SimCLR's dot-product form, VICReg's smoothed hinge).
LOSSES = {
    "simclr": {"normalize": False, "temperature": 0.5},
    "vicreg": {"smooth": 0.01},
    "barlow_twins": {},
}


def _spectral_loss(F):
    """A callable with no declared structure: ‖C − I‖² plus a quartic penalty on F."""
    C = (F[:N_PAIRS].T @ F[N_PAIRS:] + F[N_PAIRS:].T @ F[:N_PAIRS]) / F.shape[0]
    return jnp.sum(jnp.square(C - jnp.eye(C.shape[0]))) + 1e-2 * jnp.mean(jnp.square(F) ** 2)


def _kernels():
    """Three kinds of kernel on the same 2n = 48 views: linear (rank 40 < 2n, so the
    Galerkin basis must stop at the rank), RBF (full rank, decaying spectrum), and random
    ReLU features (rank 200)."""
    X = paired_features(N_PAIRS, 40, noise=0.3, seed=3, decay=0.6)
    sq = np.sum(X**2, 1)
    rbf = np.exp(-(sq[:, None] + sq[None, :] - 2 * X @ X.T) / (2 * np.median(sq)))
    W = np.random.default_rng(4).normal(size=(40, 200))
    phi = np.maximum(X @ W, 0) / np.sqrt(200)
    return {"linear": X @ X.T, "rbf": 4.0 * rbf, "relu_features": phi @ phi.T}


KERNELS = _kernels()


def _init(K, scale, seed):
    """F0 = K^½ G: initial embeddings in the range of K, like a network's at initialisation."""
    lam, U = np.linalg.eigh(K)
    G = np.random.default_rng(seed).normal(size=(K.shape[0], D))
    return jnp.asarray(scale * (U * np.sqrt(np.maximum(lam, 0))) @ (U.T @ G))


_slow = pytest.mark.slow
CASES = [pytest.param("rbf", "simclr", marks=_slow), ("rbf", "vicreg"),
         pytest.param("linear", "simclr", marks=_slow), pytest.param("relu_features", "simclr", marks=_slow),
         pytest.param("relu_features", "barlow_twins", marks=_slow), pytest.param("linear", "callable", marks=_slow)]


@pytest.mark.parametrize(("kernel", "loss"), CASES)
def test_galerkin_matches_function_route(kernel, loss):
    """Defaults (accuracy 1e-3) against the full function route at rtol 1e-9: within the
    accuracy the defaults promise, and the truncation bound is itself within mode_tol."""
    K = jnp.asarray(KERNELS[kernel])
    F0 = _init(KERNELS[kernel], 0.3, seed=5)
    times = jnp.geomspace(1e-2, 10.0, 12)
    kw = dict(loss=_spectral_loss) if loss == "callable" else dict(loss=loss, loss_kwargs=LOSSES[loss])
    ref = solve(K, N_PAIRS, F0, times, method="function", settings=SolverSettings(rtol=1e-9), **kw)
    fast = solve(K, N_PAIRS, F0, times, method="galerkin", **kw)
    assert fast.method == "galerkin" and "eigenvectors of K kept" in fast.reason
    err = float(jnp.max(jnp.abs(fast.eigenvalues - ref.eigenvalues)))
    assert err <= 1e-3, err
    assert float(fast.stats.truncation_bound) <= SolverSettings().resolved_mode_tol()
    # The embeddings, not just their spectrum, follow the same flow.
    np.testing.assert_allclose(fast.embeddings, ref.embeddings, atol=1e-3 * float(jnp.max(jnp.abs(ref.embeddings))))


@pytest.mark.slow
def test_galerkin_rosw_matches_function_route():
    """ROS34PW2 with W from the loss's quadratic part (opt-in): the same trajectory."""
    K = jnp.asarray(KERNELS["rbf"])
    F0 = _init(KERNELS["rbf"], 0.3, seed=5)
    times = jnp.geomspace(1e-2, 10.0, 12)
    kw = dict(loss="vicreg", loss_kwargs=LOSSES["vicreg"])
    ref = solve(K, N_PAIRS, F0, times, method="function", settings=SolverSettings(rtol=1e-9), **kw)
    fast = solve(K, N_PAIRS, F0, times, method="galerkin", settings=SolverSettings(integrator="rosw"), **kw)
    assert fast.integrator == "rosw"
    assert float(jnp.max(jnp.abs(fast.eigenvalues - ref.eigenvalues))) <= 1e-3


@pytest.mark.slow
def test_galerkin_truncation_bound_covers_the_dropped_modes():
    """A fast-decaying spectrum over a short horizon: the route keeps fewer modes than 2n,
    and the eigenvalues move from the full route by no more than the reported bound plus
    the integration error of both runs (1e-5 at rtol 1e-8; the bound leaves out the dropped
    part's feedback, which is second order here)."""
    X = paired_features(128, 300, noise=0.3, seed=8, decay=1.5)
    K = jnp.asarray(X @ X.T)
    F0 = _init(np.asarray(K), 0.5, seed=9)
    times = jnp.geomspace(1e-2, 2.0, 10)
    kw = dict(loss="simclr", loss_kwargs=LOSSES["simclr"])
    ref = solve(K, 128, F0, times, method="function", settings=SolverSettings(rtol=1e-10), **kw)
    fast = solve(K, 128, F0, times, method="galerkin", settings=SolverSettings(rtol=1e-8, mode_tol=1e-3), **kw)
    assert int(fast.stats.n_modes) < 256
    bound = float(fast.stats.truncation_bound)
    assert 0 < bound <= 1e-3
    err = float(jnp.max(jnp.abs(fast.eigenvalues - ref.eigenvalues)))
    assert err <= bound + 1e-5, (err, bound)


def test_auto_route_for_other_losses():
    """Other losses take the full function route by default (the Galerkin one is opt-in)."""
    K = jnp.asarray(KERNELS["rbf"])
    F0 = _init(KERNELS["rbf"], 0.3, seed=5)
    traj = solve(K, N_PAIRS, F0, jnp.geomspace(1e-2, 1.0, 5), loss="simclr", loss_kwargs=LOSSES["simclr"])
    assert traj.method == "function"
    assert choose_method(N_PAIRS, D, False)[0] == "function"


# ------------------------------------------------------------------------ loss structure

@pytest.mark.parametrize("scale", [0.05, 1.0, 30.0])
def test_simclr_closed_form_gradient(scale):
    """Against autodiff, also at a scale where the global shift would underflow (30: the
    gradient falls back to the row-shifted form)."""
    F = scale * jax.random.normal(jax.random.key(1), (2 * N_PAIRS, D))
    for tau in (0.5, 0.1):
        f = resolve_loss("simclr", loss_kwargs={"normalize": False, "temperature": tau})
        got, want = loss_gradient(f)(F), jax.grad(f)(F)
        assert bool(jnp.all(jnp.isfinite(got)))
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12 * float(jnp.max(jnp.abs(want))))
    assert loss_gradient(simclr_loss) is not None  # the cosine form: autodiff
    np.testing.assert_allclose(loss_gradient(simclr_loss)(F), jax.grad(simclr_loss)(F))


@pytest.mark.parametrize("loss", list(LOSSES))
def test_quadratic_part_is_the_gradient_near_zero(loss):
    """∇L(εF)/ε → (αI + βZ + ω11ᵀ) F as ε → 0 (VICReg: its invariance term alone, which is
    exactly quadratic)."""
    kw = dict(LOSSES[loss])
    if loss == "vicreg":
        kw.update(std_coeff=0.0, cov_coeff=0.0)
    f = resolve_loss(loss, loss_kwargs=kw)
    alpha, beta, omega = loss_quadratic_part(f, N_PAIRS, D)
    F = jax.random.normal(jax.random.key(2), (2 * N_PAIRS, D))
    ZF = jnp.concatenate([F[N_PAIRS:], F[:N_PAIRS]])
    want = alpha * F + beta * ZF + omega * jnp.sum(F, axis=0, keepdims=True)
    eps = 1e-4
    np.testing.assert_allclose(jax.grad(f)(eps * F) / eps, want, rtol=1e-6, atol=1e-6 * float(jnp.max(jnp.abs(want))))
    assert loss_quadratic_part(simclr_loss, N_PAIRS, D) is None
    assert loss_quadratic_part(_spectral_loss, N_PAIRS, D) is None


# ---------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("method", ["galerkin", "function"])
def test_non_psd_kernel_refused_before_integrating(method):
    """A kernel with a negative eigenvalue far beyond round-off: ValueError, not a million steps."""
    K = np.asarray(KERNELS["rbf"]).copy()
    lam, U = np.linalg.eigh(K)
    K = K - 1.5 * lam[-1] * np.outer(U[:, -1], U[:, -1])  # the top direction made negative
    F0 = _init(KERNELS["rbf"], 0.3, seed=5)
    with pytest.raises(ValueError, match="not positive semi-definite"):
        solve(jnp.asarray(K), N_PAIRS, F0, jnp.geomspace(1e-2, 1.0, 5), loss="simclr",
              loss_kwargs=LOSSES["simclr"], method=method, settings=SolverSettings(max_steps=50))
    with pytest.raises(ValueError, match="not positive semi-definite"):
        solve(-jnp.eye(2 * N_PAIRS), N_PAIRS, F0, jnp.geomspace(1e-2, 1.0, 5), loss="vicreg", method=method)


def test_rank_deficient_kernel_is_psd_and_its_flow_runs():
    """Identical views (no augmentation) give K of rank n: Lanczos exhausts its Krylov space.

    Its Ritz values must stay inside the spectrum of numpy's eigvalsh (continuing past the
    breakdown on normalised round-off once gave θ_min = −451 for λ ∈ [0, 10.7]), and the
    function route accepts the kernel.
    """
    from stepwise_ntk.solver._galerkin import smallest_eigenvalue_bound

    X = np.random.default_rng(3).normal(size=(N_PAIRS, 30))
    X = np.concatenate([X, X])  # both views of every image identical
    K = jnp.asarray(X @ X.T / 30)
    lam = np.linalg.eigvalsh(np.asarray(K))
    lo, hi = (float(v) for v in smallest_eigenvalue_bound(K))
    tol = 1e-12 * lam[-1]
    assert lam[0] - tol <= lo <= hi <= lam[-1] + tol
    assert hi == pytest.approx(lam[-1], rel=1e-10)  # the largest Ritz value converged
    F0 = 1e-3 * (K @ jnp.asarray(np.random.default_rng(4).normal(size=(2 * N_PAIRS, 2))))
    traj = solve(K, N_PAIRS, F0, jnp.geomspace(1e-2, 1.0, 3), loss="simclr", loss_kwargs=LOSSES["simclr"],
                 method="function")
    assert np.all(np.isfinite(np.asarray(traj.eigenvalues)))


@pytest.mark.parametrize("method", ["galerkin", "function"])
def test_nan_inputs_refused(method):
    K = jnp.asarray(KERNELS["rbf"])
    F0 = _init(KERNELS["rbf"], 0.3, seed=5)
    times = jnp.geomspace(1e-2, 1.0, 5)
    with pytest.raises(ValueError, match="NaN or Inf"):
        solve(K.at[0, 0].set(jnp.nan), N_PAIRS, F0, times, loss="simclr", method=method)
    with pytest.raises(ValueError, match="NaN or Inf"):
        solve(K, N_PAIRS, F0.at[3, 1].set(jnp.inf), times, loss="simclr", method=method)
    with pytest.raises(ValueError):
        solve(K, N_PAIRS, F0, times.at[2].set(jnp.nan), loss="simclr", method=method)


# ------------------------------------------------------------------------ float32, precision

@pytest.mark.parametrize("method", ["function", pytest.param("galerkin", marks=_slow)])
def test_float32_defaults_match_float64(method):
    """float32 K, F0 and times with the default settings: the same trajectory as float64
    within 2e-3 in every eigenvalue (the default accuracy 1e-3 plus float32's own
    integration floor: rtol is at least 100 eps = 1.2e-5 there)."""
    K64 = KERNELS["rbf"]
    F64 = _init(K64, 0.3, seed=5)
    times = np.geomspace(1e-2, 30.0, 25)
    kw = dict(loss="simclr", loss_kwargs=LOSSES["simclr"], method=method)
    t64 = solve(jnp.asarray(K64), N_PAIRS, F64, jnp.asarray(times), **kw)
    t32 = solve(jnp.asarray(K64, jnp.float32), N_PAIRS, F64.astype(jnp.float32),
                jnp.asarray(times, jnp.float32), **kw)
    assert t32.eigenvalues.dtype == jnp.float32 and t32.embeddings.dtype == jnp.float32
    err = float(jnp.max(jnp.abs(t32.eigenvalues.astype(jnp.float64) - t64.eigenvalues)))
    assert err <= 2e-3, err


def test_accuracy_deciding_products_request_highest_precision():
    """Accelerators default to reduced-precision matrix products (TF32, bfloat16 passes):
    every dot in the Galerkin route's program asks for HIGHEST, whatever the loss."""
    K = jnp.asarray(KERNELS["rbf"], jnp.float32)
    F0 = _init(KERNELS["rbf"], 0.3, seed=5).astype(jnp.float32)
    lam, U = kernel_spectrum(K)
    tols = SolverSettings().tolerances(jnp.float32)
    times = jnp.geomspace(0.1, 1.0, 3).astype(jnp.float32)
    for loss in (resolve_loss("simclr", loss_kwargs=LOSSES["simclr"]), resolve_loss("vicreg")):
        cfg = GalerkinConfig(loss=loss, r=16, integrator="rosw", ode=SolverSettings().ode, has_test=False)
        programs = [galerkin_integrate.lower(cfg, lam, U, F0, times, None, None, tols)]
        fcfg = _FunctionConfig(loss=loss, ode=SolverSettings().ode, has_test=False, progress=False)
        programs.append(_function_integrate.lower(fcfg, K, F0, times, None, None, tols))
        for lowered in programs:
            dots = re.findall(r"stablehlo\.dot_general[^\n]*", lowered.as_text())
            assert dots, "no matrix products found in the lowered program"
            low = [d for d in dots if "HIGHEST" not in d]
            assert not low, low[:3]


def test_float64_inputs_without_x64_are_refused_by_name():
    """Without jax_enable_x64 a float64 numpy K would be rounded to float32 silently, and the
    mismatch then blamed on F0: a fresh interpreter gets one message naming K and the fix."""
    script = textwrap.dedent("""
        import numpy as np
        from stepwise_ntk.solver import solve
        X = np.random.default_rng(0).normal(size=(8, 5))
        try:
            solve(X @ X.T, 4, 1e-3 * X[:, :2], np.geomspace(0.1, 1.0, 3), loss="simclr")
        except ValueError as err:
            print(err)
    """)
    env = {k: v for k, v in os.environ.items() if k != "JAX_ENABLE_X64"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("K is float64 but jax_enable_x64 is off"), out.stdout


@pytest.mark.slow
@pytest.mark.parametrize(("loss", "method"), [("simclr", "function"), ("vicreg", "function"),
                                              ("barlow_twins", "eigen"), ("barlow_twins", "function")])
def test_float32_on_the_readme_tour_problem(cifar_dir, loss, method):
    """The README's library tour (200 CIFAR-10 pairs at 8x8, MLP NTK, d = 4, F0 = 1e-3 N(0, 1))
    on both routes with default settings: float32 within 2e-3 of float64 in every
    eigenvalue at every time (the default accuracy 1e-3, doubled for float32's rounding of K)."""
    import stepwise_ntk as snt

    views, _, _ = snt.cifar10_pairs(jax.random.key(0), n_pairs=200, downsample=4, dtype=jnp.float64,
                                    data_dir=cifar_dir)
    arch = snt.MLP(depth=2, width=1024, d=4)
    K = jnp.asarray(snt.analytic_ntk(arch, views))
    F0 = 1e-3 * jax.random.normal(jax.random.key(1), (400, 4), jnp.float64)
    times = jnp.geomspace(1e-2, 1e3, 200)
    kw = dict(loss=loss, loss_kwargs=LOSSES.get(loss) or None, method=method)
    t64 = solve(K, 200, F0, times, **kw)
    t32 = solve(K.astype(jnp.float32), 200, F0.astype(jnp.float32), times.astype(jnp.float32), **kw)
    err = float(jnp.max(jnp.abs(t32.eigenvalues.astype(jnp.float64) - t64.eigenvalues)))
    assert err <= 2e-3, err
