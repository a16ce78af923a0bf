"""The Galerkin route: the function-space flow of any loss, reduced to the top eigenvectors of K.

``dF/dt = −K ∇L(F)`` moves ``F`` only inside the range of ``K``, and along an eigenvector
``u_j`` (``K u_j = λ_j u_j``) at a speed proportional to ``λ_j``. With the top ``r``
eigenvectors ``U`` (``λ_1 ≥ … ≥ λ_r``) write ``F = F0 + V X``, ``V = U Λ^½ S`` (``N × r``,
``S`` orthogonal, below) and project the flow onto ``span U`` (Galerkin):

    dX/dt = −Vᵀ ∇L(F0 + V X)                      (r × d, exact when r = N)

costing ``O(N r d)`` per right-hand side plus the loss gradient itself, instead of the
``O(N² d)`` product with ``K``.

*Time integration.* Dormand–Prince by default. ``integrator="rosw"``: where the loss
declares a quadratic part around ``F = 0`` acting on each column, ``∇L(F) ≈ B F`` with
``B = α I + β Z + ω 11ᵀ`` (:func:`stepwise_ntk.losses.loss_quadratic_part`: SimCLR's
dot-product form, VICReg's invariance term, Barlow Twins at ``C ≈ 0``), ``S`` diagonalises
``Λ^½ Uᵀ B U Λ^½ = S diag(q) Sᵀ``, so the stiff part of the Jacobian is the diagonal
``W = −diag(max(q, 0))`` and the Rosenbrock-W method ROS34PW2 (order 3 for any ``W``)
solves with divisions; for other losses ``S = I``, ``W = 0``. (On the CIFAR-10 linear
kernel at the default accuracy the flow is not stiff enough for it to pay: it took 4-6×
Dormand–Prince's steps.)

*A-posteriori bound.* The part of the flow that the reduction drops is
``ΔF_⊥(t) = −Σ_{j>r} λ_j u_j u_jᵀ ∫_0^t ∇L ds``, so
``‖ΔF_⊥(t)‖_F ≤ λ_{r+1} e(t)``, ``e(t) = ∫_0^t ‖(I − UUᵀ) ∇L‖_F ds``, integrated with the
state (from the gradient each right-hand side computes anyway). Its contribution to
``C = Fᵀ Z F / N`` is at most ``(2 ‖F‖₂ δ + δ²) / N`` with ``δ = λ_{r+1} e(t)``
(``‖Z‖₂ = 1``), evaluated at every output time: ``stats.truncation_bound`` is its maximum,
``stats.truncation_embedding_bound`` is ``δ(T)``. As on the eigen route, the feedback of
the dropped part on the kept one is of the same order and not part of the bound. When the
bound exceeds ``mode_tol`` the number of modes is doubled and the solve repeated.

*When it pays.* The route trades one eigendecomposition of ``K`` for ``r < N`` columns
per product. From a small initialisation over the horizon of all ``d`` steps, nearly
every eigenvector moves (``λ_j T ≫ 1``): on the CIFAR-10 linear kernel at ``2n = 300``,
``r = 192`` still left an error of 3e-2 (bound 0.2), so the route keeps ``r = N`` and
costs more than the function route, which is why ``method="auto"`` does not take it. It
pays over short horizons and on fast-decaying spectra (low-rank kernels).

The eigendecomposition also checks that ``K`` is positive semi-definite (``λ_min ≥ −τ``,
``τ = 2n · eps · max K_ii``, the eigen route's jitter); the function route checks the
same with a Lanczos bound (:func:`smallest_eigenvalue_bound`).

Example::

    >>> import jax, jax.numpy as jnp
    >>> from stepwise_ntk.solver import solve
    >>> X = jax.random.normal(jax.random.key(0), (40, 30))
    >>> X = X.at[20:].set(X[:20] + 0.3 * X[20:])
    >>> F0 = 0.3 * jax.random.normal(jax.random.key(1), (40, 3))
    >>> traj = solve(X @ X.T / 30, 20, F0, jnp.geomspace(1e-2, 1.0, 5), loss="simclr",
    ...              loss_kwargs={"normalize": False}, method="galerkin")
    >>> traj.method, traj.eigenvalues.shape
    ('galerkin', (5, 3))
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from stepwise_ntk.data import pair_gram
from stepwise_ntk.losses import loss_gradient, loss_quadratic_part
from stepwise_ntk.solver._integrate import ODESettings, check_reached, integrate
from stepwise_ntk.solver._progress import progress_bar, report
from stepwise_ntk.solver._trajectory import SolveStats, Trajectory

__all__ = ["GalerkinConfig", "GalerkinOut", "check_psd", "galerkin_integrate", "initial_modes", "kernel_spectrum",
           "next_modes", "smallest_eigenvalue_bound", "solve_galerkin"]

_MODE_BLOCK = 64
_HIGHEST = jax.lax.Precision.HIGHEST


def _mm(a, b):
    return jnp.matmul(a, b, precision=_HIGHEST)


@jax.jit
def kernel_spectrum(K: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Eigenvalues (descending) and eigenvectors of the symmetrised ``K: (N, N)``."""
    lam, U = jnp.linalg.eigh((K + K.T) / 2, symmetrize_input=False)
    return lam[::-1], U[:, ::-1]


def check_psd(lam_min: Any, lam_max: Any, K: jax.Array, *, estimate: bool = False) -> None:
    """ValueError when ``K``'s smallest eigenvalue is below ``−τ``, ``τ = 2n · eps · max K_ii``.

    ``estimate``: ``lam_min`` is a Lanczos Ritz value (:func:`smallest_eigenvalue_bound`),
    never below the true smallest eigenvalue, so a failure is certain.
    """
    lam_min, lam_max = float(lam_min), float(lam_max)
    eps = float(np.finfo(np.dtype(K.dtype)).eps)
    tau = K.shape[0] * eps * max(float(jnp.max(jnp.diagonal(K))), 0.0)
    if not np.isfinite(lam_min) or lam_min < -tau:
        what = "a Lanczos estimate of its smallest eigenvalue (an upper bound) is" if estimate else \
            "its smallest eigenvalue is"
        raise ValueError(
            f"K is not positive semi-definite within the tolerance: {what} {lam_min:.3g} < −τ = "
            f"{-tau:.3g} (τ = 2n · eps · max K_ii; largest eigenvalue {lam_max:.3g}). The flow "
            f"dF/dt = −K ∇L grows without bound along a negative direction of K. A kernel Gram "
            f"matrix K[i, j] = k(x_i, x_j) is PSD: check how K was built, or recompute it in "
            f"float64 if the negative part is round-off."
        )


@functools.partial(jax.jit, static_argnames=("iters",))
def smallest_eigenvalue_bound(K: jax.Array, iters: int = 48) -> tuple[jax.Array, jax.Array]:
    """Lanczos Ritz values ``(θ_min, θ_max)`` of the symmetrised ``K: (N, N)`` after ``iters``
    products with ``K`` (full reorthogonalisation, a fixed start vector).

    Ritz values lie inside the spectrum, so ``θ_min ≥ λ_min(K)``: ``θ_min < 0`` proves a
    negative eigenvalue, and the extreme eigenvalues are the ones Lanczos finds first
    (``O(N² · iters)`` flops, against ``O(N³)`` for a decomposition).

    The iteration stops when the Krylov space is exhausted (``β_j ≤ 100 N eps ‖K‖_∞``, e.g.
    a rank-deficient ``K`` such as identical views): normalising the round-off left after
    that would add a vector that is not orthogonal to the others, and Ritz values outside
    the spectrum. The unused rows of the tridiagonal matrix are filled with ``α_1``, a
    Rayleigh quotient, so they add no value outside the spectrum.
    """
    N = K.shape[0]
    m = min(iters, N)
    dtype = K.dtype
    v0 = jnp.cos(jnp.arange(N, dtype=dtype) * 0.7 + 0.3)
    v0 = v0 / jnp.linalg.norm(v0)
    Q = jnp.zeros((m, N), dtype).at[0].set(v0)
    alpha = jnp.zeros((m,), dtype)
    beta = jnp.zeros((m,), dtype)
    tol = 100 * N * jnp.finfo(dtype).eps * jnp.max(jnp.sum(jnp.abs(K), axis=1))

    def body(j, c):
        Q, alpha, beta, active = c
        w = _mm(K, Q[j])
        a = jnp.dot(w, Q[j], precision=_HIGHEST)
        mask = (jnp.arange(m) <= j).astype(dtype)[:, None]
        w = w - _mm((Q * mask).T, _mm(Q * mask, w))
        w = w - _mm((Q * mask).T, _mm(Q * mask, w))  # twice: classical Gram–Schmidt
        b = jnp.linalg.norm(w)
        go_on = active & (b > tol)
        nxt = jnp.where(go_on, w / jnp.where(go_on, b, 1.0), 0.0)
        Q = jax.lax.cond(j + 1 < m, lambda: Q.at[jnp.minimum(j + 1, m - 1)].set(nxt), lambda: Q)
        return (Q, alpha.at[j].set(jnp.where(active, a, alpha[0])), beta.at[j].set(jnp.where(go_on, b, 0.0)),
                go_on)

    Q, alpha, beta, _ = jax.lax.fori_loop(0, m, body, (Q, alpha, beta, jnp.array(True)))
    T = jnp.diag(alpha) + jnp.diag(beta[:-1], 1) + jnp.diag(beta[:-1], -1)
    theta = jnp.linalg.eigvalsh(T)
    return theta[0], theta[-1]


def initial_modes(lam: np.ndarray, t_end: float, d: int) -> int:
    """First guess of ``r``: ``max(64, 2d)`` rounded up to a multiple of 64 (at most N); the
    solve doubles it while the a-posteriori bound asks for more."""
    del t_end
    return next_modes(max(2 * d, _MODE_BLOCK) - 1, len(lam))


def next_modes(r: int, N: int) -> int:
    """``r`` rounded up to the next multiple of 64 (the compiled shapes repeat), capped at N."""
    return min(N, _MODE_BLOCK * math.ceil((r + 1) / _MODE_BLOCK))


class GalerkinConfig(NamedTuple):
    loss: Callable
    r: int
    integrator: str  # "rosw" or "dopri5"
    ode: ODESettings
    has_test: bool
    progress: bool = False  # report filled output times to the host (solver/_progress.py)


class GalerkinOut(NamedTuple):
    loss: jax.Array
    eigenvalues: jax.Array
    embeddings: jax.Array
    test_embeddings: Any
    stats: Any
    bound_C: jax.Array
    bound_F: jax.Array


def stiff_rates(loss: Callable, U: jax.Array, lam: jax.Array, d: int):
    """``(S, q)``: ``Λ^½ Uᵀ B U Λ^½ = S diag(q) Sᵀ`` for the loss's quadratic part ``B``, or
    ``(None, None)`` when the loss declares none."""
    N = U.shape[0]
    part = loss_quadratic_part(loss, N // 2, d)
    if part is None:
        return None, None
    alpha, beta, omega = part
    n = N // 2
    r = U.shape[1]
    sw = _mm(U[:n].T, U[n:])
    u1 = jnp.sum(U, axis=0)
    Q = alpha * jnp.eye(r, dtype=U.dtype) + beta * (sw + sw.T) + omega * jnp.outer(u1, u1)
    s = jnp.sqrt(lam)
    q, S = jnp.linalg.eigh(s[:, None] * Q * s[None, :])
    return S, q


@functools.partial(jax.jit, static_argnames=("cfg",))
def galerkin_integrate(cfg: GalerkinConfig, lam, U, F0, times, K_test, F0_test, tols) -> GalerkinOut:
    """Integrate the reduced flow on the top ``cfg.r`` eigenvectors (see the module docstring).

    Traced with full-precision matrix products (accelerators default to reduced precision,
    e.g. TF32, which the accuracy target cannot afford), the loss's own included.
    """
    with jax.default_matmul_precision("highest"):
        return _galerkin_integrate(cfg, lam, U, F0, times, K_test, F0_test, tols)


def _galerkin_integrate(cfg, lam, U, F0, times, K_test, F0_test, tols):
    rtol, atol_unused, max_steps = tols
    del atol_unused
    N, d = F0.shape
    dtype = F0.dtype
    r = cfg.r
    Ur, lr = U[:, :r], jnp.maximum(lam[:r], 0.0)
    lam_next = jnp.abs(lam[r]) if r < N else jnp.zeros((), dtype)
    lam_next = jnp.maximum(lam_next, jnp.maximum(-lam[-1], 0.0))  # the negative round-off part
    s = jnp.sqrt(lr)
    S, q = stiff_rates(cfg.loss, Ur, lr, d) if cfg.integrator == "rosw" else (None, None)
    if S is None:  # no declared stiff part: W = 0
        S, q = jnp.eye(r, dtype=dtype), jnp.zeros((r,), dtype)
    rates = jnp.maximum(q, 0.0)
    V = _mm(Ur * s, S)  # F = F0 + V X
    s_safe = jnp.where(s > 0, s, 1.0)
    grad = loss_gradient(cfg.loss)

    def coords(P):
        """``Uᵀ G`` from ``P = Vᵀ G`` (``V = U Λ^½ S``)."""
        return jnp.where(s[:, None] > 0, _mm(S, P) / s_safe[:, None], 0.0)

    def rhs(t, y, args):
        X = y[0]
        G = grad(F0 + _mm(V, X))
        P = _mm(V.T, G)
        UG = coords(P)
        # ‖(I − UUᵀ)G‖², integrated as it is (smooth) rather than its root (at r ≈ N a
        # square root of round-off that the step-size control would chase).
        orth2 = jnp.maximum(jnp.sum(jnp.square(G)) - jnp.sum(jnp.square(UG)), 0.0) if r < N else \
            jnp.zeros((), dtype)
        out = (-P, orth2)
        if cfg.has_test:
            out = out + (-_mm(K_test, G),)
        return out

    def observe(y, args):
        F = F0 + _mm(V, y[0])
        C = pair_gram(F) / N
        norm_F = jnp.sqrt(jnp.maximum(jnp.linalg.eigvalsh(_mm(F.T, F))[-1], 0.0))
        delta = lam_next * jnp.sqrt(times[-1] * y[1])  # Cauchy–Schwarz: ∫_0^t ‖g‖ ≤ (T ∫_0^t ‖g‖²)^½
        out = (cfg.loss(F), jnp.linalg.eigvalsh(C)[::-1], (2.0 * norm_F * delta + delta**2) / N)
        if cfg.has_test:
            out = out + (y[2],)
        return out

    def w_solve(prep, tau, b):
        return (b[0] / (1.0 + tau * rates)[:, None],) + tuple(b[1:])

    y0 = (jnp.zeros((r, d), dtype), jnp.zeros((), dtype))
    if cfg.has_test:
        y0 = y0 + (F0_test,)
    # X starts at 0, so the absolute tolerance follows F0's scale in X's units
    # (a unit of X moves F by up to sqrt(λ_1)).
    scale = jnp.maximum(jnp.max(jnp.abs(F0)), jnp.finfo(dtype).tiny)
    atol = 1e-3 * rtol * scale / jnp.maximum(jnp.sqrt(lr[0]), jnp.finfo(dtype).tiny)
    res = integrate(rhs, y0, times, None, observe=observe, settings=ODESettings(atol=1.0),
                    method=cfg.integrator, w_prepare=lambda y, a: None, w_solve=w_solve,
                    rtol=rtol, atol=atol, max_steps=max_steps, report=report if cfg.progress else None)
    X_T, e_T = res.y_final[0], res.y_final[1]
    F_T = F0 + _mm(V, X_T)
    test = res.observed[3] if cfg.has_test else None
    return GalerkinOut(res.observed[0], res.observed[1], F_T, test, res.stats,
                       jnp.max(res.observed[2]), lam_next * jnp.sqrt(times[-1] * e_T))


def solve_galerkin(K, F0, times, K_test, F0_test, settings, loss_fn, reason, progress):
    """The function-space flow on the top eigenvectors of ``K`` (:mod:`._galerkin`): modes
    doubled until the a-posteriori bound on the dropped part is within ``mode_tol``."""
    N, d = F0.shape
    dtype = K.dtype
    lam, U = kernel_spectrum(K)
    check_psd(lam[-1], lam[0], K)
    mode_tol = settings.resolved_mode_tol()
    t_end = float(times[-1])
    integrator = settings.integrator
    if integrator == "auto":
        integrator = "dopri5"  # ROS34PW2 with W from the quadratic part is opt-in (integrator="rosw")
    r = N if mode_tol == 0 else initial_modes(np.asarray(lam), t_end, d)
    tols = settings.tolerances(dtype)
    while True:
        cfg = GalerkinConfig(loss=loss_fn, r=r, integrator=integrator, ode=settings.ode,
                             has_test=K_test is not None, progress=progress)
        with progress_bar(times.shape[0], f"solve: galerkin route, {r} modes", progress):
            out = jax.block_until_ready(galerkin_integrate(cfg, lam, U, F0, times, K_test, F0_test, tols))
        st = out.stats
        check_reached(st.success, st.n_steps, st.t_final, times, settings.max_steps)
        if r >= N or float(out.bound_C) <= mode_tol:
            break
        r = next_modes(2 * r - 1, N)
    stats = SolveStats(
        n_steps=st.n_steps, n_rejected=st.n_rejected, n_rhs=st.n_rhs, n_w=st.n_w, success=st.success,
        n_modes=jnp.asarray(r), truncation_bound=out.bound_C, truncation_embedding_bound=out.bound_F,
        jitter=jnp.asarray(0.0, dtype), n_devices=jnp.asarray(1),
    )
    kept = f"{r} of {N} eigenvectors of K kept (truncation bound {float(out.bound_C):.2g}, mode_tol {mode_tol:g})"
    return Trajectory(times=times, loss=out.loss, eigenvalues=out.eigenvalues, embeddings=out.embeddings,
                      test_embeddings=out.test_embeddings, stats=stats, method="galerkin",
                      integrator=integrator, reason=f"{reason}; {kept}")
