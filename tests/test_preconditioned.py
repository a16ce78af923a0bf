"""Spectral preconditioning: closed forms (theory), the preconditioned flow (solver) and the
preconditioned loss (training), each against an independent reference."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stepwise_ntk.losses import LOSSES, barlow_twins_loss, cross_correlation
from stepwise_ntk.solver import SolverSettings, solve, solve_preconditioned
from stepwise_ntk.theory import (
    Preconditioner,
    aligned_eigenvalues,
    contrastive_eigensystem,
    mode_functions,
    precondition_factor,
    precondition_matrix,
    preconditioned_aligned_eigenvalues,
    preconditioned_gradient,
    preconditioned_stable_step,
    preconditioned_step_times,
    preconditioned_time,
    step_times,
)
from stepwise_ntk.training import preconditioned_loss

jax.config.update("jax_enable_x64", True)

PRECONDITIONERS = [Preconditioner("none"), Preconditioner("inverse", eps=1e-2),
                   Preconditioner("power", eps=1e-2, power=0.5), Preconditioner("power", eps=0.05, power=2.0),
                   Preconditioner("inverse", eps=0.1, floor=True)]
FLOORED = PRECONDITIONERS[-1]


def _problem(n=20, p=30, d=3, scale=1e-4, seed=0):
    kx, kf = jax.random.split(jax.random.key(seed))
    X = jax.random.normal(kx, (2 * n, p))
    X = X.at[n:].set(X[:n] + 0.3 * X[n:])  # views of the same images
    K = X @ X.T / p
    F0 = scale * jax.random.normal(kf, (2 * n, d))
    return K, F0


def _numeric_time(gamma, lam0, lam, pc):
    """t(λ0 → λ) = ∫ dλ / (8γ λ (1 − λ) p(λ)) by the trapezoid rule on a fine log-λ grid."""
    x = np.geomspace(lam0, lam, 400_001)
    f = 1.0 / (8 * gamma * x * (1 - x) * np.asarray(precondition_factor(jnp.asarray(x), pc)))
    return np.trapezoid(f, x)


@pytest.mark.parametrize("pc", PRECONDITIONERS, ids=lambda p: p.describe())
def test_time_matches_quadrature_of_the_growth_law(pc):
    # Reference: direct quadrature of dt = dλ / (8γλ(1−λ)p(λ)) in λ (not the logit
    # substitution the library uses); 4e5 log-spaced points give ~1e-9 relative error.
    g, lam0 = np.array([1.0, 0.3]), np.array([1e-8, 1e-4])
    t = np.asarray(preconditioned_time(jnp.asarray(g), jnp.asarray(lam0), 0.5, pc))
    ref = [_numeric_time(gj, l0, 0.5, pc) for gj, l0 in zip(g, lam0, strict=True)]
    np.testing.assert_allclose(t, ref, rtol=1e-6)


@pytest.mark.parametrize("pc", [FLOORED, Preconditioner("power", eps=0.3, power=0.5, floor=True),
                                Preconditioner("inverse", eps=1.5, floor=True)], ids=lambda p: p.describe())
def test_floored_time_across_the_kink(pc):
    # Past λ = 1 − ε the floor takes over (p = 1): adaptive quadrature of dλ/(8γλ(1−λ)p(λ))
    # with the kink as a break point, from both sides of it and across it; ε ≥ 1 is the plain flow.
    from scipy.integrate import quad

    g, lam0, lam = np.array([1.0, 0.5, 2.0]), np.array([1e-6, 0.2, 0.95]), np.array([0.5, 0.99, 0.97])
    t = np.asarray(preconditioned_time(jnp.asarray(g), jnp.asarray(lam0), jnp.asarray(lam), pc))
    kink = 1 - pc.eps
    ref = []
    for gj, a, b in zip(g, lam0, lam, strict=True):
        def f(x, gj=gj):
            return 1.0 / (8 * gj * x * (1 - x) * max((x + pc.eps) ** -pc.exponent, 1.0))
        ref.append(quad(f, a, b, points=[kink] if a < kink < b else None, epsabs=0, epsrel=1e-12, limit=200)[0])
    np.testing.assert_allclose(t, ref, rtol=1e-9)
    if pc.eps >= 1:
        plain = preconditioned_time(jnp.asarray(g), jnp.asarray(lam0), jnp.asarray(lam), Preconditioner("none"))
        np.testing.assert_allclose(t, np.asarray(plain), rtol=1e-12)


def test_inverse_step_time_closed_form():
    # t_½ = [ε ln(1/(2λ0)) + (1+ε) ln(2(1−λ0))]/(8γ), and the plain one is ln(1/λ0 − 1)/(8γ).
    eps, lam0, g = 1e-2, 1e-8, 0.7
    t = float(preconditioned_time(jnp.array([g]), jnp.array([lam0]), 0.5, Preconditioner("inverse", eps=eps))[0])
    assert t == pytest.approx((eps * np.log(1 / (2 * lam0)) + (1 + eps) * np.log(2 * (1 - lam0))) / (8 * g), rel=1e-12)
    t0 = float(preconditioned_time(jnp.array([g]), jnp.array([lam0]), 0.5, Preconditioner("none"))[0])
    assert t0 == pytest.approx(np.log(1 / lam0 - 1) / (8 * g), rel=1e-12)


@pytest.mark.parametrize("pc", PRECONDITIONERS, ids=lambda p: p.describe())
def test_aligned_curves_solve_the_growth_law(pc):
    g, lam0 = jnp.array([1.0, 0.4]), jnp.array([1e-6, 1e-3])
    times = jnp.linspace(0.0, 12.0, 61)
    lam = np.asarray(preconditioned_aligned_eigenvalues(g, lam0, times, pc))
    np.testing.assert_allclose(lam[0], lam0, rtol=1e-10)
    # Round trip: the time to reach λ(t) is t (away from λ ≈ 1, where t(λ) is flat).
    inner = (lam > 1e-7) & (lam < 1 - 1e-6)
    for j in range(2):
        sel = inner[:, j]
        k = int(sel.sum())
        tt = preconditioned_time(jnp.full(k, g[j]), jnp.full(k, lam0[j]), jnp.asarray(lam[sel, j]), pc)
        np.testing.assert_allclose(np.asarray(tt), np.asarray(times)[sel], rtol=1e-8, atol=1e-10)
    # Central differences against the right-hand side 8γλ(1−λ)p(λ).
    h = 1e-5
    tm = jnp.array([0.5, 2.0])
    lp = np.asarray(preconditioned_aligned_eigenvalues(g, lam0, tm + h, pc))
    lm = np.asarray(preconditioned_aligned_eigenvalues(g, lam0, tm - h, pc))
    l0 = np.asarray(preconditioned_aligned_eigenvalues(g, lam0, tm, pc))
    rhs = 8 * np.asarray(g) * l0 * (1 - l0) * np.asarray(precondition_factor(jnp.asarray(l0), pc))
    np.testing.assert_allclose((lp - lm) / (2 * h), rhs, rtol=1e-5)
    if pc.form == "none":
        np.testing.assert_allclose(lam, np.asarray(aligned_eigenvalues(g, lam0, times)), rtol=1e-9, atol=1e-15)


def test_precondition_matrix_against_numpy():
    rng = np.random.default_rng(0)
    A = rng.normal(size=(4, 4))
    C = (A + A.T) / 4
    w, V = np.linalg.eigh(C)
    pc = Preconditioner("power", eps=0.1, power=1.5)
    ref = V @ np.diag((np.maximum(w, 0) + 0.1) ** -1.5) @ V.T
    np.testing.assert_allclose(np.asarray(precondition_matrix(jnp.asarray(C), pc)), ref, rtol=1e-10)
    np.testing.assert_allclose(np.asarray(precondition_matrix(jnp.asarray(C), Preconditioner("none"))), np.eye(4))


def _swap(N):
    """The pair swap Z as a dense (N, N) numpy permutation."""
    n = N // 2
    return np.roll(np.eye(N), n, axis=1)


@pytest.mark.parametrize("floor", [False, True])
@pytest.mark.parametrize("part", ["all", "invariant"])
def test_preconditioned_gradient_against_numpy(part, floor):
    # all: G P; invariant: Π₊ G P + Π₋ G min(P, I) with Π± = (I ± Z)/2 built as dense
    # matrices. C has eigenvalues on both sides of 1 − ε, so min(P, I) differs from P and I
    # (with the floor, P = max(p, 1) and min(P, I) = I).
    rng = np.random.default_rng(3)
    G = rng.normal(size=(10, 3))
    w, V = np.array([-0.3, 0.2, 2.5]), np.linalg.qr(rng.normal(size=(3, 3)))[0]
    C = V @ np.diag(w) @ V.T
    pc = Preconditioner("power", eps=0.1, power=1.5, part=part, floor=floor)
    p = (np.maximum(w, 0) + 0.1) ** -1.5
    p = np.maximum(p, 1.0) if floor else p
    P, Q = V @ np.diag(p) @ V.T, V @ np.diag(np.minimum(p, 1)) @ V.T
    Z = _swap(10)
    plus, minus = (np.eye(10) + Z) / 2, (np.eye(10) - Z) / 2
    ref = G @ P if part == "all" else plus @ G @ P + minus @ G @ Q
    got = np.asarray(preconditioned_gradient(jnp.asarray(G), jnp.asarray(C), pc))
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-13)


def test_preconditioner_validation():
    with pytest.raises(ValueError, match="eps"):
        Preconditioner(eps=0.0)
    with pytest.raises(ValueError, match="form"):
        Preconditioner(form="sqrt")
    with pytest.raises(ValueError, match="part"):
        Preconditioner(part="mean")
    assert Preconditioner(eps=0.1, part="invariant").describe() == "(C+0.1I)^-1 on the pair mean"
    assert Preconditioner(eps=0.1, part="invariant", floor=True).describe() == "max((C+0.1I)^-1, I) on the pair mean"
    with pytest.raises(TypeError, match="floor"):
        Preconditioner(floor="yes")
    with pytest.raises(TypeError, match="Preconditioner"):
        precondition_factor(jnp.ones(2), "inverse")


def _aligned_start(K, n, d, lam0):
    """F0 = Σ_j sqrt(λ0_j/γ_j) g_j e_jᵀ: aligned with the top d modes, C(0) = diag(λ0)."""
    es = contrastive_eigensystem(K, n)
    g = mode_functions(es, d)
    return es, g * jnp.sqrt(jnp.asarray(lam0) / es.gammas[:d])


@pytest.mark.parametrize("pc", [PRECONDITIONERS[1], FLOORED, pytest.param(PRECONDITIONERS[2], marks=pytest.mark.slow)],
                         ids=lambda p: p.describe())
def test_aligned_flow_matches_the_closed_form(pc):
    # From an aligned F0 each eigenvalue follows dλ/dt = 8γλ(1−λ)p(λ) exactly; the solver is
    # integrated at rtol 1e-9, so ~1e-6 agreement tests the M-dynamics, not the integrator.
    n, d = 20, 3
    K, _ = _problem(n=n, d=d)
    lam0 = np.array([1e-6, 3e-6, 1e-5])
    es, F0 = _aligned_start(K, n, d, lam0)
    times = jnp.geomspace(1e-2, 40.0, 40)
    traj = solve_preconditioned(K, n, F0, times, precond=pc, settings=SolverSettings(rtol=1e-9))
    theory = np.sort(np.asarray(preconditioned_aligned_eigenvalues(es.gammas[:d], jnp.asarray(lam0), times, pc)),
                     axis=1)[:, ::-1]
    np.testing.assert_allclose(np.asarray(traj.eigenvalues), theory, atol=2e-6)


@pytest.mark.slow  # compiles two adaptive solves / trainings (~10-20 s on a loaded 2-core machine)
@pytest.mark.parametrize("pc", PRECONDITIONERS[1:2], ids=lambda p: p.describe())
def test_eigen_and_function_routes_agree(pc):
    n = 20
    K, F0 = _problem(n=n)
    times = jnp.geomspace(1e-2, 60.0, 30)
    s = SolverSettings(rtol=1e-9)
    a = solve_preconditioned(K, n, F0, times, precond=pc, method="eigen", settings=s)
    b = solve_preconditioned(K, n, F0, times, precond=pc, method="function", settings=s)
    # The eigen route factors K + τI (τ = 2n·eps·max K_ii): the routes differ by O(τ).
    np.testing.assert_allclose(np.asarray(a.eigenvalues), np.asarray(b.eigenvalues), atol=1e-5)
    np.testing.assert_allclose(np.asarray(a.embeddings), np.asarray(b.embeddings), atol=1e-5)
    assert a.method == "eigen" and b.method == "function"


@pytest.mark.slow  # compiles two adaptive solves / trainings (~10-20 s on a loaded 2-core machine)
def test_no_preconditioner_is_the_plain_solve():
    n = 20
    K, F0 = _problem(n=n)
    times = jnp.geomspace(1e-2, 60.0, 30)
    s = SolverSettings(rtol=1e-9, mode_tol=0.0)
    a = solve_preconditioned(K, n, F0, times, precond=Preconditioner("none"), settings=s)
    b = solve(K, n, F0, times, method="eigen", settings=s)
    np.testing.assert_allclose(np.asarray(a.eigenvalues), np.asarray(b.eigenvalues), atol=1e-7)


@pytest.mark.slow  # compiles two adaptive solves / trainings (~10-20 s on a loaded 2-core machine)
def test_random_start_step_times_and_final_subspace():
    # Random (not aligned) small init: step times within a few percent (median) of the closed form,
    # 10x+ sooner than the plain ones, and the same final embeddings as the plain flow.
    n = 20
    K, F0 = _problem(n=n)
    es = contrastive_eigensystem(K, n)
    pc = Preconditioner("inverse", eps=1e-2)
    t_pc = np.sort(np.asarray(preconditioned_step_times(es, F0, pc)))
    t_plain = np.sort(np.asarray(step_times(es, F0)))
    assert np.all(t_plain / t_pc > 10)
    times = jnp.geomspace(1e-3, 300.0, 400)
    a = solve_preconditioned(K, n, F0, times, precond=pc)
    b = solve_preconditioned(K, n, F0, times, precond=Preconditioner("none"))
    from stepwise_ntk.predictor import crossing_times, subspace_alignment
    sim = crossing_times(np.asarray(times), np.asarray(a.eigenvalues))
    # γ_3/γ_4 ≈ 1.1 here, so mode 3 mixes with mode 4 (as in the plain theory): median ≤ 5%.
    rel = np.abs(sim - t_pc) / t_pc
    assert np.median(rel) <= 0.05 and rel.max() <= 0.1
    assert float(subspace_alignment(a.embeddings, b.embeddings)) > 0.99


def test_invariant_part_on_a_swap_symmetric_kernel():
    # K commuting with the pair swap Z splits the flow into the pair-mean (Π₊) and the
    # pair-difference (Π₋) parts. A start in Π₋ stays there with C ≤ 0 (so P = I/ε): the
    # invariant part leaves it on the plain flow, the whole-gradient preconditioner runs that
    # flow 1/ε times faster. A start in Π₊ has no difference part: both preconditioners agree.
    n, d, eps = 10, 2, 0.1
    K, F = _problem(n=n, d=d, scale=0.3, seed=4)
    Z = jnp.asarray(_swap(2 * n))
    K = (K + Z @ K @ Z) / 2
    times = jnp.geomspace(1e-2, 3.0, 12)
    s = SolverSettings(rtol=1e-10)
    inv, whole = Preconditioner(eps=eps, part="invariant"), Preconditioner(eps=eps)

    def run(F0, pc, t=times):
        return solve_preconditioned(K, n, F0, t, precond=pc, method="function", settings=s)

    # Separate adaptive runs at rtol 1e-10 agree to ~2e-8 in embeddings of size ~0.5; the
    # wrong flow is off by > 1e-2 (checked below: the whole-gradient one at the same times).
    tol = 1e-7
    minus = F - Z @ F  # Π₋ start: the two views of a pair opposite
    plain = np.asarray(run(minus, Preconditioner("none")).embeddings)
    np.testing.assert_allclose(np.asarray(run(minus, inv).embeddings), plain, atol=tol)
    np.testing.assert_allclose(np.asarray(run(minus, whole, times * eps).embeddings), plain, atol=tol)
    assert np.max(np.abs(np.asarray(run(minus, whole).embeddings) - plain)) > 1e-2
    plus = 1e-2 * (F + Z @ F)
    np.testing.assert_allclose(np.asarray(run(plus, inv).eigenvalues), np.asarray(run(plus, whole).eigenvalues),
                               atol=tol)


def test_solver_input_errors():
    K, F0 = _problem()
    with pytest.raises(ValueError, match="Barlow Twins"):
        solve_preconditioned(K, 20, F0, jnp.array([1.0]), loss="simclr", method="eigen")
    with pytest.raises(ValueError, match="part='invariant' needs method='function'"):
        solve_preconditioned(K, 20, F0, jnp.array([1.0]), precond=Preconditioner(part="invariant"), method="eigen")
    with pytest.raises(TypeError, match="Preconditioner"):
        solve_preconditioned(K, 20, F0, jnp.array([1.0]), precond="inverse")


@pytest.mark.parametrize("pc", PRECONDITIONERS[:2] + [FLOORED], ids=lambda p: p.describe())
def test_preconditioned_stable_step_at_the_fixed_point(pc):
    # Gradient descent on the M-dynamics near C = I: contracts below c_max, grows above it.
    rng = np.random.default_rng(1)
    g = np.array([1.0, 0.6, 0.3, 0.1])
    d = 2
    M = np.zeros((d, 4))
    M[0, 0], M[1, 1] = 1 / np.sqrt(g[0]), 1 / np.sqrt(g[1])  # C = I
    M += 1e-6 * rng.normal(size=M.shape)
    c_max = preconditioned_stable_step(jnp.asarray(g), pc)

    def run(c, M):
        # 40 steps: long enough to see the linear rate (|1 − 4cγ_1 p(1)| per step), short
        # enough that a growing perturbation stays linear.
        for _ in range(40):
            C = (M * g) @ M.T
            P = np.asarray(precondition_matrix(jnp.asarray(C), pc))
            M = M - 4 * c * (P @ (C - np.eye(d))) @ (M * g)
        return np.linalg.norm((M * g) @ M.T - np.eye(d))

    start = np.linalg.norm((M * g) @ M.T - np.eye(d))
    assert run(0.9 * c_max, M) < 1e-2 * start
    assert run(1.1 * c_max, M) > 1e2 * start


def test_preconditioned_stable_step_decaying_modes():
    g = jnp.array([1.0, 0.5, -0.2])
    pc = Preconditioner("inverse", eps=1e-2)
    # min(1/(4γ1 p(1)), 1/(2|γ_min| p(0))) = min(1.01/4, 0.01/0.4).
    assert preconditioned_stable_step(g, pc) == pytest.approx(0.025)
    assert preconditioned_stable_step(g, Preconditioner("none")) == pytest.approx(0.25)
    # The invariant part leaves the decaying modes at the plain rate: min(1.01/4, 1/0.4).
    assert preconditioned_stable_step(g, Preconditioner("inverse", eps=1e-2, part="invariant")) == \
        pytest.approx(0.2525)
    # ε > 1: p(0) = 1/ε < 1 slows the difference part too, min(1/(4γ1 p(1)), ε/0.4) = min(0.75, 5).
    assert preconditioned_stable_step(g, Preconditioner("inverse", eps=2.0, part="invariant")) == \
        pytest.approx(0.75)
    # The floor: p(1) = 1, so the fixed point allows the plain 1/(4γ1); the whole gradient's
    # decaying modes still get p(0) = 1/ε, the invariant part's the plain rate.
    assert preconditioned_stable_step(g, Preconditioner("inverse", eps=1e-2, floor=True)) == pytest.approx(0.025)
    assert preconditioned_stable_step(g, Preconditioner("inverse", eps=1e-2, part="invariant", floor=True)) == \
        pytest.approx(0.25)


@pytest.mark.parametrize("part", ["all", "invariant"])
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_preconditioned_loss_gradient(name, part):
    # Value unchanged; gradient = ∇L · P(C) (invariant: Π₊ ∇L P + Π₋ ∇L min(P, I)) with P
    # from a float64 numpy eigendecomposition.
    F = 0.3 * jax.random.normal(jax.random.key(2), (12, 3))
    pc = Preconditioner("inverse", eps=0.05, part=part)
    L = preconditioned_loss(name, pc)
    assert float(L(F)) == pytest.approx(float(LOSSES[name](F)), rel=1e-12)
    C = np.asarray(cross_correlation(F))
    w, V = np.linalg.eigh(C)
    p = 1 / (np.maximum(w, 0) + 0.05)
    P, Q = V @ np.diag(p) @ V.T, V @ np.diag(np.minimum(p, 1)) @ V.T
    G = np.asarray(jax.grad(LOSSES[name])(F))
    mean = (G + _swap(12) @ G) / 2
    ref = G @ P if part == "all" else mean @ P + (G - mean) @ Q
    np.testing.assert_allclose(np.asarray(jax.grad(L)(F)), ref, rtol=1e-9, atol=1e-12)
    assert np.allclose(np.asarray(jax.grad(preconditioned_loss(name, Preconditioner("none")))(F)),
                       np.asarray(jax.grad(LOSSES[name])(F)))


@pytest.mark.slow  # compiles two adaptive solves / trainings (~10-20 s on a loaded 2-core machine)
@pytest.mark.parametrize("part", ["all", "invariant"])
def test_preconditioned_loss_trains_faster_full_batch_and_minibatch(part):
    from stepwise_ntk.kernels import MLP
    from stepwise_ntk.training import TrainSettings, train

    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 6)).astype(np.float32)
    views = np.concatenate([x, x + 0.2 * rng.normal(size=x.shape).astype(np.float32)])
    arch = MLP(depth=1, width=32, d=2)
    alpha = 0.05
    base = functools.partial(TrainSettings, learning_rate=0.05 / alpha**2, steps=150, alpha=alpha, n_records=150,
                             record_every=1)
    pc = preconditioned_loss(barlow_twins_loss, Preconditioner("inverse", eps=1e-2, part=part))
    plain = train(arch, base(loss="barlow_twins"), views, progress=False)
    fast = train(arch, base(loss=pc), views, progress=False)

    def last_step(res):
        passed = np.all(np.asarray(res.eigenvalues) > 0.5, axis=1)
        return int(res.steps[np.argmax(passed)]) if passed.any() else np.inf

    assert last_step(fast) * 3 <= last_step(plain)
    mini = train(arch, base(loss=pc, batch_size=8), views, progress=False)
    assert np.isfinite(mini.loss).all() and mini.finished
