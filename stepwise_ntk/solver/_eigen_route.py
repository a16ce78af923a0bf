"""The eigen route of :func:`stepwise_ntk.solver.solve` (Barlow Twins): the flow in the contrastive
eigenbasis, its truncation and quadrature plans, the partial eigensystem's rest and the
accuracy loop (described in :mod:`stepwise_ntk.solver._solve`, *Truncation* to *Time
integration*; entry :func:`solve_eigen`)."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from stepwise_ntk.data import swap_pairs
from stepwise_ntk.losses import cross_correlation
from stepwise_ntk.solver._integrate import ODESettings, check_reached, highest_precision, integrate, tolerance_kwargs
from stepwise_ntk.solver._jitter import flow_factor
from stepwise_ntk.solver._progress import progress_bar, report
from stepwise_ntk.solver._quadrature import (
    block_gauss_quadrature,
    log_moments,
    moment_embedding_bound,
    moment_terms_bound,
    quadrature_embedding_bound,
    quadrature_terms,
)
from stepwise_ntk.solver._trajectory import SolveStats, Trajectory
from stepwise_ntk.theory import (
    ContrastiveEigensystem,
    RestLanczos,
    TridiagonalEigensystem,
    check_enough_modes,
    contrastive_eigensystem_from_factor,
    low_rank_columns,
    mode_coordinates,
    pair_gram_operator,
    partial_is_cheaper,
    rest_lanczos,
    tridiagonal_available,
    tridiagonal_eigensystem,
)

__all__ = ["first_modes", "solve_eigen", "spectral_norm_bound"]


_MODE_BLOCK = 64


def _rosw_is_cheaper(gamma1: float, t_end: float, d: int, rtol: float) -> bool:
    """Step-count model: explicit DOPRI5 needs ≥ 8γ_1 T/3.3 steps (stability), ROS34PW2 about
    0.35 d rtol^(-1/3) (accuracy; calibrated on CIFAR-10 kernels); per step they cost ~24 and
    ~34 d²k flops."""
    dopri = max(8.0 * gamma1 * t_end / 3.3, 0.2 * d * rtol ** (-0.2))
    rosw = 0.35 * d * rtol ** (-1.0 / 3.0)
    return 34.0 * rosw < 24.0 * dopri


class _EigenPrep(NamedTuple):
    es: ContrastiveEigensystem
    M0: jax.Array  # (d, r) mode coordinates of F0 (the r computed modes)
    C0: jax.Array  # (d, d) cross-correlation of F0
    L_norm: jax.Array  # upper bound on ‖L‖₂ = ‖K + τI‖₂^½ (max absolute row sum of K, plus τ)
    W_rest: jax.Array  # Σ_{modes not computed} ‖m_j(0)‖²
    Q_rest: jax.Array  # Σ_{modes not computed} γ_j² ‖m_j(0)‖²
    # The factored eigenvectors where the tridiagonal route computed the modes (es.vectors
    # is then None); host data, stripped before the prep enters a jitted function.
    tri: TridiagonalEigensystem | None = None
    B0: Any = None  # (N, d) L⁻¹ F0 of a partial eigensystem (its rest's quadrature starts there); stripped too

    def vectors(self, idx: np.ndarray) -> jax.Array:
        """``P[:, idx]``: the eigenvectors of the modes ``idx``."""
        if self.tri is not None:
            return self.tri.vectors(idx)
        return self.es.vectors[:, jnp.asarray(idx)]

    def combine(self, idx: np.ndarray, W: np.ndarray) -> jax.Array:
        """``P[:, idx] W``: combinations of the eigenvectors of the modes ``idx``."""
        if self.tri is not None:
            return self.tri.combine(idx, W)
        return self.es.vectors[:, jnp.asarray(idx)] @ jnp.asarray(W, self.es.vectors.dtype)

    def traced(self) -> _EigenPrep:
        """The arrays a jitted integration reads (no eigenvectors, no host data)."""
        return self._replace(es=self.es._replace(vectors=None), tri=None, B0=None)


def _tridiagonal_prepare(tri: TridiagonalEigensystem, row_max, F0) -> _EigenPrep:
    """:class:`_EigenPrep` of every mode from the tridiagonal route: ``M0ᵀ = Pᵀ L⁻¹ F0``
    through the factored eigenvectors, none of them formed."""
    B0 = _forward_substitution(tri.factor, F0)
    es = ContrastiveEigensystem(gammas=tri.gammas, vectors=None, factor=tri.factor, jitter=tri.jitter,
                                residuals=None, rest=jnp.zeros((), F0.dtype))
    prep = _eigen_prepare(es, row_max, F0, F0.shape[0], B0, tri.coordinates(B0).T)
    return prep._replace(tri=tri)


@jax.jit
def _forward_substitution(L, F0):
    """``L⁻¹ F0`` for lower-triangular ``L``."""
    with jax.default_matmul_precision("highest"):
        return jax.scipy.linalg.solve_triangular(L, F0, lower=True)


@functools.partial(jax.jit, static_argnames=("rows",))
def _eigen_prepare(es, row_max, F0, rows, B0=None, M0=None):
    """The truncation's data (:class:`_EigenPrep`); ``row_max = max_i Σ_k |K_ik|``.

    ``rows``: the leading rows of ``es.vectors`` that are not all zero (``2n``, or fewer for
    a low-rank eigensystem), so ``B0 = L⁻¹ F0`` is needed only there (``L`` is triangular);
    ``B0``: those rows if the caller has them already; ``M0``: the modes' coordinates
    ``(Pᵀ B0)ᵀ`` if the caller has them (``es.vectors`` is then unused). ``W_rest`` and ``Q_rest`` weigh the
    modes left out, so they are computed for a partial eigensystem only (``residuals`` not
    None); a full or low-rank one has ``rest = 0``, which zeroes their terms.
    """
    with jax.default_matmul_precision("highest"):
        L, P, g = es.factor, es.vectors, es.gammas
        N = L.shape[0]
        if B0 is None:
            B0 = jax.scipy.linalg.solve_triangular(L[:rows, :rows], F0[:rows], lower=True)
        L_norm = jnp.sqrt(row_max + es.jitter)
        zero = jnp.zeros((), F0.dtype)
        W_rest, Q_rest, B_kept = zero, zero, None
        if es.residuals is not None:
            B_kept = B0
            # H B0 = Lᵀ Z F0 / N = P Γ Pᵀ B0: what the computed modes leave of it is the rest's.
            HB0 = L.T @ swap_pairs(F0) / N
            if M0 is None:
                M0 = mode_coordinates(es, F0, B=B0, image=HB0)
            R = HB0 - P @ (g[:, None] * M0.T)
            W_rest = jnp.maximum(jnp.sum(jnp.square(B0)) - jnp.sum(jnp.square(M0)), 0.0)
            Q_rest = jnp.sum(jnp.square(R))
        elif M0 is None:
            M0 = (P[:rows].T @ B0).T
    return _EigenPrep(es=es, M0=M0, C0=cross_correlation(F0), L_norm=L_norm, W_rest=W_rest, Q_rest=Q_rest,
                      B0=B_kept)


def _rest_bounds(xp, g_rest, W_rest, Q_rest, E):
    """Bounds on ``Σ |γ| w ρ (2 + ρ)`` and ``Σ w ρ²`` over the modes not computed, all with
    ``|γ| ≤ g_rest``: both ``|γ| ρ(2 + ρ) / γ²`` and ``ρ² / γ²`` increase with ``|γ|``, so
    each sum is at most its value at ``g_rest`` times ``min(Σ w, Σ γ² w / g_rest²)``."""
    g = xp.maximum(g_rest, 0.0)
    rho = xp.expm1(4.0 * g * E)
    safe = xp.where(g > 0, g, 1.0)
    c = xp.where(g > 0, xp.minimum(g * rho * (2.0 + rho) * W_rest, rho * (2.0 + rho) / safe * Q_rest), 0.0)
    f2 = xp.where(g > 0, xp.minimum(rho**2 * W_rest, (rho / safe) ** 2 * Q_rest), 0.0)
    return c, f2


def spectral_norm_bound(A: jax.Array, squarings: int = 6) -> jax.Array:
    """An upper bound on ``‖A‖₂`` for symmetric ``A: (d, d)``, within a factor ``d^(2^-(p+1))``.

    ``‖A‖₂^(2^p) = ‖A^(2^p)‖₂ ≤ ‖A^(2^p)‖_F ≤ √d ‖A‖₂^(2^p)``, so
    ``‖A^(2^p)‖_F^(2^-p)`` lies in ``[‖A‖₂, d^(2^-(p+1)) ‖A‖₂]`` (``p = squarings``; at
    ``p = 6``, ``d = 32`` the factor is ≤ 1.028). ``p`` matrix squarings cost far less than
    a ``d × d`` eigendecomposition, which matters once per integration step. Each square is
    renormalised (``B ← B²/‖B²‖_F``) so nothing under- or overflows:
    ``bound = ‖A‖_F ∏_i ‖B_i²‖_F^(2^-(i+1))``.
    """
    c = jnp.sqrt(jnp.sum(jnp.square(A)))
    B = A / jnp.where(c > 0, c, 1.0)
    log_bound = jnp.log(jnp.where(c > 0, c, 1.0))
    for i in range(squarings):
        B = B @ B
        n = jnp.sqrt(jnp.sum(jnp.square(B)))
        log_bound = log_bound + jnp.log(jnp.where(n > 0, n, 1.0)) / 2.0 ** (i + 1)
        B = B / jnp.where(n > 0, n, 1.0)
    return jnp.where(c > 0, jnp.exp(log_bound), 0.0)


def _truncation_terms(gammas, weights, E):
    """Per-mode bound ``|γ| w ρ (2 + ρ)`` with ``ρ = expm1(4 |γ| E)`` (0 where w = 0)."""
    rho = jnp.expm1(4.0 * jnp.abs(gammas) * E)
    c = jnp.abs(gammas) * weights * rho * (2.0 + rho)
    return jnp.where(weights > 0, c, 0.0), rho


class _EigenConfig(NamedTuple):
    k: int
    integrator: str
    ode: ODESettings
    has_test: bool
    progress: bool  # report filled output times to the host (solver/_progress.py)


class _EigenOut(NamedTuple):
    loss: jax.Array
    eigenvalues: jax.Array
    embeddings: jax.Array
    test_embeddings: Any
    n_steps: jax.Array
    n_rejected: jax.Array
    n_rhs: jax.Array
    n_w: jax.Array
    success: jax.Array
    t_final: jax.Array
    bound_C: jax.Array
    bound_F: jax.Array
    E: jax.Array  # ∫_0^T ‖I − C‖₂ dt (its upper bound, on the accepted steps)


def _mode_rhs(M, g, Cf, eye):
    MG = M * g
    return -4.0 * (MG @ M.T + Cf - eye) @ MG


def _lyapunov_prepare(M, g):
    MG = M * g
    a, U = jnp.linalg.eigh(MG @ MG.T)
    return MG, a, U


def _lyapunov_solve(prep, tau, b):
    """``(I − τ W) x = b`` for ``W δM = −4 (δM Γ Mᵀ + M Γ δMᵀ) M Γ``: ``x = b + X M Γ`` with
    ``X + 4τ (X A + A X) = −4τ S(b)``, ``A = MΓ²Mᵀ = U diag(a) Uᵀ``, ``S(b) = bΓMᵀ + MΓbᵀ``."""
    MG, a, U = prep
    S = b @ MG.T
    S = S + S.T
    St = U.T @ S @ U
    Xt = (-4.0 * tau) * St / (1.0 + 4.0 * tau * (a[:, None] + a[None, :]))
    return b + (U @ Xt @ U.T) @ MG


@functools.partial(jax.jit, static_argnames=("cfg",))
@highest_precision
def _eigen_integrate(cfg: _EigenConfig, prep: _EigenPrep, idx, P, F0, times, B_test, F0_test, tols, head):
    """The mode-space flow of the modes ``idx`` (eigenvectors ``P: (N, k)``), the others frozen;
    ``B_test = L⁻¹ K_testᵀ: (N, m)`` (None without test inputs), shared by every run of a solve;
    ``head: (k,)`` 1 for the modes integrated one by one, 0 for pseudo-modes."""
    es = prep.es
    dtype = F0.dtype
    d = F0.shape[1]
    eye = jnp.eye(d, dtype=dtype)
    g = es.gammas[idx]
    M0 = prep.M0[:, idx]
    Cf = prep.C0 - (M0 * g) @ M0.T  # frozen modes' contribution (exact at t = 0)
    if cfg.has_test:
        G_test = B_test.T @ P

    def rhs(t, M, args):
        return _mode_rhs(M, g, Cf, eye)

    def observe(M, args):
        C = (M * g) @ M.T + Cf
        lam = jnp.linalg.eigvalsh(C)[::-1]
        out = (jnp.sum(jnp.square(C - eye)), lam)
        if cfg.has_test:
            out = out + (F0_test + G_test @ (M - M0).T,)
        return out

    def integrand(M, args):
        return spectral_norm_bound((M * g) @ M.T + Cf - eye)

    tolerances = tolerance_kwargs(cfg.ode, tols)
    if tolerances["atol"] is None:
        # The integrator's own default (1e-3 rtol max|y0|) from the modes integrated one by
        # one: pseudo-modes can carry coordinates far larger than theirs (a white F0's
        # weight in the smallest γ), which would loosen the control of every head mode.
        y_max = jnp.max(jnp.abs(M0) * head)
        tolerances["atol"] = 1e-3 * tolerances["rtol"] * y_max + jnp.finfo(dtype).tiny
    res = integrate(rhs, M0, times, None, observe=observe, settings=cfg.ode, method=cfg.integrator,
                    w_prepare=lambda M, a: _lyapunov_prepare(M, g), w_solve=_lyapunov_solve,
                    integrand=integrand, report=report if cfg.progress else None, **tolerances)
    M_T = res.y_final
    F_T = F0 + es.factor @ (P @ (M_T - M0).T)

    weights = jnp.sum(jnp.square(prep.M0), axis=0)
    frozen = jnp.ones(weights.shape, dtype=bool).at[idx].set(False)
    c, rho = _truncation_terms(es.gammas, jnp.where(frozen, weights, 0.0), res.integral)
    c_rest, f2_rest = _rest_bounds(jnp, es.rest, prep.W_rest, prep.Q_rest, res.integral)
    bound_C = jnp.sum(c) + c_rest
    # ‖L‖₂² = ‖K + τI‖₂ ≤ ‖K‖_∞ + τ, so ‖ΔF‖_F ≤ ‖L‖₂ ‖ΔM_frozen‖_F.
    bound_F = prep.L_norm * jnp.sqrt(jnp.sum(jnp.where(frozen, weights * rho**2, 0.0)) + f2_rest)
    loss, lam = res.observed[0], res.observed[1]
    test = res.observed[2] if cfg.has_test else None
    st = res.stats
    return _EigenOut(loss, lam, F_T, test, st.n_steps, st.n_rejected, st.n_rhs, st.n_w, st.success, st.t_final,
                     bound_C, bound_F, res.integral)


def _mode_ranking(prep: _EigenPrep, E: float, d: int, q: int = 0) -> tuple[np.ndarray, np.ndarray, float]:
    """Bound per computed mode left out of the integration for ``E = ∫‖I − C‖₂ dt`` (held,
    ``q = 0``: the truncation bound ``|γ| w ρ(2 + ρ)``; carried by ``q`` quadrature blocks:
    :func:`~stepwise_ntk.solver._quadrature.quadrature_terms`), the modes ranked by it, and
    the bound on all the modes not computed (held).

    The top-``d`` modes by ``γ`` come first whatever their bound (they carry the steps).
    """
    gammas = np.asarray(prep.es.gammas, dtype=np.float64)
    weights = np.sum(np.square(np.asarray(prep.M0, dtype=np.float64)), axis=0)
    c = quadrature_terms(gammas, weights, E, q)
    with np.errstate(over="ignore", invalid="ignore"):
        rest = _rest_bounds(np, float(prep.es.rest), float(prep.W_rest), float(prep.Q_rest), E)[0]
    c_ranked = np.where(np.arange(len(c)) < d, np.inf, c)
    return c, np.argsort(-c_ranked, kind="stable"), float(np.nan_to_num(rest, nan=np.inf))


def _more_modes(prep: _EigenPrep, E: float, budget: float, r: int, N: int,
                rest_bound: Callable[[float], float] | None = None) -> tuple[int, int]:
    """How many modes a partial eigensystem whose rest exceeds ``budget`` should compute
    next (at least ``2r``, more where the computed spectrum predicts it), and the prediction
    itself (uncapped; the solve turns to the full decomposition where that many would not
    be cheaper).

    ``g*`` is the largest ``|γ|`` of the first mode not computed at which the rest's bound
    (:func:`_rest_bounds`, with today's rest weights, which only shrink) fits the budget;
    a power law ``|γ_j| ∝ j^b`` fitted to the upper half of the computed ranks says at which
    rank ``|γ|`` falls to ``g*``, and a quarter more is asked for, at most ``4r`` (the
    extrapolation from few modes with the rest's whole weight overestimates: on the
    CIFAR-10 linear kernel, 2n = 2000, 64 modes predicted 576 where 256 sufficed). Each
    partial eigensystem costs about as much as the next larger one, so skipping a doubling
    saves one; the loop's a-posteriori check still decides whether it was enough.
    ``rest_bound(g)``: the rest's bound for ``|γ| ≤ g`` (default the held one above; with
    the quadrature's, :meth:`_RestQuadrature.bound`, far fewer modes fit).
    """
    g = np.sort(np.abs(np.asarray(prep.es.gammas, dtype=np.float64)))[::-1]
    W, Q = float(prep.W_rest), float(prep.Q_rest)
    if rest_bound is None:
        def rest_bound(x):
            return _rest_bounds(np, x, W, Q, E)[0]
    lo, hi = 0.0, float(prep.es.rest)
    with np.errstate(over="ignore", invalid="ignore"):
        for _ in range(60):  # bisection on the monotone bound
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if rest_bound(mid) <= budget else (lo, mid)
    ranks = np.arange(1, g.size + 1, dtype=np.float64)
    upper = slice(g.size // 2, g.size)
    ok = g[upper] > 0
    target = prediction = 2 * r
    if lo > 0 and ok.sum() >= 4:
        b, a = np.polyfit(np.log(ranks[upper][ok]), np.log(g[upper][ok]), 1)
        if b < 0:
            rank = math.exp((math.log(lo) - a) / b)
            if math.isfinite(rank):
                target = prediction = max(target, _MODE_BLOCK * math.ceil(1.25 * min(rank, N) / _MODE_BLOCK))
    return min(target, 4 * r, N), min(prediction, N)


def _mode_count(c: np.ndarray, order: np.ndarray, budget: float, d: int) -> int | None:
    """Fewest ranked modes whose neglected bounds sum to ≤ budget (a multiple of 64, at most
    all computed ones), or None when even all computed modes leave more than the budget."""
    r = len(c)
    if budget < 0:
        return None
    with np.errstate(over="ignore", invalid="ignore"):  # infinite bounds: modes that must stay
        tail = np.concatenate([np.cumsum(c[order][::-1])[::-1], [0.0]])  # tail[k] = Σ_{rank ≥ k}
    ok = tail <= budget
    if not ok.any():
        return None
    k = max(int(np.argmax(ok)), d)
    return min(r, _MODE_BLOCK * math.ceil(k / _MODE_BLOCK))


# Quadrature blocks a plan may use for the modes it does not integrate one by one (0: held
# at m(0)); each block is d pseudo-modes (stepwise_ntk/solver/_quadrature.py).
_QUADRATURE_BLOCKS = (0, 2, 3, 4, 6, 8, 12, 16, 20, 24, 32)


def _rest_cap(prep: _EigenPrep, d: int) -> int:
    """The most quadrature blocks for a partial eigensystem's modes not computed: at most
    ``2n/2`` columns, leaving the computed modes' room (the iteration's products and
    orthogonalisation, ``O(2n · q d · (2n + q d))``, stay below a full decomposition's)."""
    N, r = prep.es.factor.shape[0], prep.es.gammas.shape[0]
    return min(_QUADRATURE_BLOCKS[-1], (N // 2) // d, (N - r) // d)


def _rest_blocks_needed(prep: _EigenPrep, lanczos: RestLanczos, d: int, E: float, budget: float,
                        blocks: list[int]) -> int:
    """The fewest of ``blocks`` whose quadrature the moments known so far (``S_k``, ``k`` below
    the blocks run) predict to fit ``budget``: their bound for the modes not computed, twice
    (the pseudo-modes' own term is about as large); the largest where none does."""
    done = lanczos.basis.shape[1] // d
    theta, _, Z0 = _rest_pseudo_modes(lanczos, done, d)
    log_S, g = log_moments(theta, Z0, done), _rest_gamma(prep, theta)
    for q in blocks:
        if 2.0 * moment_terms_bound(g, log_S, E, q) <= budget:
            return q
    return blocks[-1]


class _Plan(NamedTuple):
    """The modes a run integrates: ``idx`` (sorted) one by one, the other modes (of a partial
    eigensystem: those it did not compute, ``idx`` every computed one) as ``q`` blocks of
    pseudo-modes (``q = 0``: held at ``m(0)``)."""

    idx: np.ndarray
    q: int

    def n_modes(self, d: int) -> int:
        return int(self.idx.size) + self.q * d


def _plan(prep: _EigenPrep, E: float, d: int, budget: float, quadrature: bool = True) -> _Plan:
    """The plan with the fewest integrated modes (head plus pseudo-modes) whose tail bound at
    ``E`` fits ``budget``, over ``q`` in ``_QUADRATURE_BLOCKS`` (only 0 without ``quadrature``).

    For each ``q`` the modes are ranked by their bound as tail modes
    (:func:`~stepwise_ntk.solver._quadrature.quadrature_terms`; the top ``d`` by ``γ``
    first) and the fewest whose tail sums to the budget are taken (to half of it with
    pseudo-modes, whose own bound is about the tail's: they match its moments). Every
    mode, held, where nothing fits.
    """
    r = prep.es.gammas.shape[0]
    best = _Plan(np.arange(r, dtype=np.int32), 0)
    for q in _QUADRATURE_BLOCKS if quadrature else (0,):
        c, order, _ = _mode_ranking(prep, E, d, q)
        k = _mode_count(c, order, budget if q == 0 else budget / 2, d)
        if k is None or (q > 0 and k + q * d > r):
            continue
        if k + q * d < best.n_modes(d):
            best = _Plan(np.sort(order[:k]).astype(np.int32), q)
    return best


def _next_plan(prep: _EigenPrep, plan: _Plan, E: float, d: int, budget: float) -> _Plan:
    """A larger plan after ``plan`` missed the bound at the measured ``E``: the plan for ``E``,
    or for a quarter of the budget, or twice the modes held (ending at every mode)."""
    for b in (budget, budget / 4):
        new = _plan(prep, E, d, b)
        if new.n_modes(d) > plan.n_modes(d):
            return new
    c, order, _ = _mode_ranking(prep, E, d)
    r = c.size
    return _Plan(np.sort(order[: min(r, 2 * max(plan.n_modes(d), _MODE_BLOCK))]).astype(np.int32), 0)


class _Tail(NamedTuple):
    gammas: np.ndarray  # (N_t,) the computed modes not integrated one by one
    Y0: np.ndarray  # (N_t, d) their coordinates
    theta: np.ndarray  # (q d,) the pseudo-modes' values
    Z0: np.ndarray  # (q d, d) their coordinates
    # The modes a partial eigensystem did not compute: all |γ| ≤ g_rest, known through the
    # moments log S_k (k < q) of the pseudo-modes that stand for them.
    g_rest: float = 0.0
    log_S: np.ndarray = np.zeros(0)


def _quadrature_modes(prep: _EigenPrep, plan: _Plan, d: int,
                      lanczos: RestLanczos | None = None) -> tuple[_EigenPrep, jax.Array, _Tail]:
    """The head modes and the tail's pseudo-modes as one set of modes, all integrated
    (a prep, their eigenvectors ``(N, k')`` and the tail for the bounds); zero modes pad
    ``k'`` to a multiple of 64, so that the runs of a solve share their compilations.

    A complete eigensystem's tail is the computed modes left out (block Lanczos on their
    ``diag(γ)``); a partial one's is the modes it did not compute (``plan.idx`` is every
    computed mode), from ``lanczos`` (:func:`~stepwise_ntk.theory.rest_lanczos`).
    """
    g = np.asarray(prep.es.gammas, dtype=np.float64)
    M0 = np.asarray(prep.M0, dtype=np.float64)
    dtype = prep.M0.dtype
    if lanczos is None:
        tail = np.setdiff1d(np.arange(g.size), plan.idx)
        Y0 = M0[:, tail].T
        theta, W = block_gauss_quadrature(g[tail], Y0, plan.q)
        Z0 = W.T @ Y0
        P_tail = prep.combine(tail, W)
        tail_info = _Tail(g[tail], Y0, theta, Z0)
    else:
        theta, S, Z0 = _rest_pseudo_modes(lanczos, plan.q, d)
        P_tail = lanczos.basis[:, : plan.q * d] @ jnp.asarray(S, dtype)
        tail_info = _Tail(np.zeros(0), np.zeros((0, d)), theta, Z0, _rest_gamma(prep, theta),
                          log_moments(theta, Z0, plan.q))
    k = plan.idx.size + theta.size
    pad = _MODE_BLOCK * math.ceil(k / _MODE_BLOCK) - k
    gammas = np.concatenate([g[plan.idx], theta, np.zeros(pad)])
    M = np.concatenate([M0[:, plan.idx], Z0.T, np.zeros((d, pad))], axis=1)
    P = jnp.concatenate([prep.vectors(plan.idx), P_tail, jnp.zeros((prep.es.factor.shape[0], pad), dtype)], axis=1)
    zero = jnp.zeros((), dtype)
    es = prep.es._replace(gammas=jnp.asarray(gammas, dtype), vectors=None, residuals=None, rest=zero)
    run_prep = prep._replace(es=es, M0=jnp.asarray(M, dtype), W_rest=zero, Q_rest=zero, tri=None)
    return run_prep, P, tail_info


def _rest_pseudo_modes(lanczos: RestLanczos, q: int, d: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(θ, S, Z0)`` of the ``q``-block quadrature of the modes not computed: ``T_q = S
    diag(θ) Sᵀ`` (the leading ``q d`` block of ``lanczos.T``), pseudo-mode coordinates
    ``Z0 = (S[:d])ᵀ R0: (q d, d)`` (their eigenvectors ``basis[:, :q d] S``)."""
    T = np.asarray(lanczos.T[: q * d, : q * d], dtype=np.float64)
    theta, S = np.linalg.eigh(0.5 * (T + T.T))
    return theta, S, S[:d].T @ np.asarray(lanczos.R0, dtype=np.float64)


def _rest_gamma(prep: _EigenPrep, theta: np.ndarray) -> float:
    """The largest ``|γ|`` of the modes not computed: the eigensystem's estimate ``rest``,
    or more where a pseudo-mode (a Ritz value of theirs, so a lower bound) shows it."""
    return max(float(prep.es.rest), float(np.max(np.abs(theta), initial=0.0)))


def _rest_quadrature_bound(prep: _EigenPrep, lanczos: RestLanczos, q: int, d: int, E: float) -> float:
    """The ``q``-block quadrature's bound in ``C`` for the modes not computed (theirs, by
    moments, plus the pseudo-modes')."""
    theta, _, Z0 = _rest_pseudo_modes(lanczos, q, d)
    own = np.sum(quadrature_terms(theta, np.sum(np.square(Z0), axis=1), E, q))
    return float(own) + moment_terms_bound(_rest_gamma(prep, theta), log_moments(theta, Z0, q), E, q)


class _RestQuadrature:
    """A partial eigensystem's modes not computed, carried by quadrature within one solve:
    the products with ``Lᵀ Z L`` (:class:`~stepwise_ntk.theory.PairGramOperator`, formed
    once), the Lanczos iteration on those modes (grown as needed, kept for the eigensystem it
    belongs to), and the plans and bounds it gives for ``budget`` (``mode_tol / 2``)."""

    def __init__(self, L: jax.Array, d: int, budget: float):
        self.L, self.d, self.budget = L, d, budget
        self._op = None
        self._lanczos: tuple[_EigenPrep, RestLanczos] | None = None

    def operator(self):
        if self._op is None:
            self._op = pair_gram_operator(self.L)
        return self._op

    def release(self, keep_operator: bool) -> None:
        """Drop the Lanczos iteration (a new eigensystem is coming) and, where the full
        decomposition is, the operator's copy of ``L`` (it needs the memory more)."""
        self._lanczos = None
        if not keep_operator:
            self._op = None

    def lanczos(self, prep: _EigenPrep, blocks: int) -> RestLanczos:
        """At least ``blocks`` Lanczos blocks on ``prep``'s modes not computed."""
        previous = self._lanczos[1] if self._lanczos is not None and self._lanczos[0] is prep else None
        self._lanczos = (prep, rest_lanczos(prep.es, prep.B0, blocks, previous, self.operator()))
        return self._lanczos[1]

    def plan(self, prep: _EigenPrep, E: float, q_min: int) -> int | None:
        """The fewest quadrature blocks above ``q_min`` whose bound fits the budget, or None:
        the Lanczos iteration runs 4 blocks, then grows to the length that its moments predict
        (:func:`_rest_blocks_needed`), then block by block in the plan's steps."""
        blocks = [q for q in _QUADRATURE_BLOCKS if q_min < q <= _rest_cap(prep, self.d)]
        if not blocks:
            return None
        lz = self.lanczos(prep, min(4, blocks[-1]))
        for q in blocks:
            if q * self.d > lz.basis.shape[1]:
                lz = self.lanczos(prep, max(q, _rest_blocks_needed(prep, lz, self.d, E, self.budget, blocks)))
            if _rest_quadrature_bound(prep, lz, q, self.d, E) <= self.budget:
                return q
        return None

    def bound(self, prep: _EigenPrep, E: float) -> Callable[[float], float] | None:
        """The rest's bound as a function of its largest ``|γ|`` for :func:`_more_modes`: the
        held one or the largest quadrature run so far, whichever is smaller (None before any)."""
        if self._lanczos is None or self._lanczos[0] is not prep:
            return None
        lz = self._lanczos[1]
        q = max(b for b in _QUADRATURE_BLOCKS if b * self.d <= lz.basis.shape[1])
        theta, _, Z0 = _rest_pseudo_modes(lz, q, self.d)
        log_S = log_moments(theta, Z0, q)
        W, Q = float(prep.W_rest), float(prep.Q_rest)
        return lambda g: min(_rest_bounds(np, g, W, Q, E)[0], moment_terms_bound(g, log_S, E, q))


def _with_quadrature_bounds(out: _EigenOut, tail: _Tail, q: int, L_norm: float) -> _EigenOut:
    """``out`` with the quadrature's bounds at the run's measured ``E`` in place of the (zero)
    bounds of the modes it held."""
    E = float(out.E)
    bound_C = (np.sum(quadrature_terms(tail.gammas, np.sum(np.square(tail.Y0), axis=1), E, q))
               + np.sum(quadrature_terms(tail.theta, np.sum(np.square(tail.Z0), axis=1), E, q))
               + moment_terms_bound(tail.g_rest, tail.log_S, E, q))
    bound_F = L_norm * (quadrature_embedding_bound(tail.gammas, tail.Y0, tail.theta, tail.Z0, E, q)
                        + moment_embedding_bound(tail.g_rest, tail.log_S, E, q))
    dtype = out.bound_C.dtype
    return out._replace(bound_C=jnp.asarray(bound_C, dtype), bound_F=jnp.asarray(bound_F, dtype))


def solve_eigen(K, F0, times, K_test, F0_test, settings, d, reason, row_max, progress):
    """The eigen route (:mod:`stepwise_ntk.solver._solve`); ``row_max = max_i Σ_k |K_ik| ≥ ‖K‖₂``."""
    N = K.shape[0]
    dtype = K.dtype
    t_end = float(times[-1])
    accuracy, mode_tol = settings.accuracy, settings.resolved_mode_tol()
    L, tau = flow_factor(K, settings.jitter_rtol, t_end, accuracy)
    rest_q = _RestQuadrature(L, d, mode_tol / 2)
    prep, r = _eigen_modes(row_max, F0, L, tau, settings, d, t_end, mode_tol, accuracy, operator=rest_q.operator)
    check_enough_modes(prep.es, d)
    if not prep.es.partial and r < N:
        reason = (f"{reason}; low-rank kernel: {r} of {N} Cholesky columns kept (kernel moved by "
                  f"≤ {float(prep.es.jitter):.2g})")
    if prep.tri is not None:
        reason = f"{reason}; every mode from LAPACK's tridiagonal form, eigenvectors formed only for those integrated"
    rtol = settings.resolved_rtol(dtype)
    integrator = settings.integrator
    if integrator == "auto":
        cheaper = _rosw_is_cheaper(float(prep.es.gammas[0]), t_end, d, rtol)
        integrator = "rosw" if cheaper else "dopri5"
    has_test = K_test is not None
    # The test inputs' coordinates L⁻¹ K_testᵀ (N² m flops) do not depend on the modes: once per solve.
    B_test = _forward_substitution(L, K_test.T) if has_test else None

    formed = []  # [(prep, key, run_prep, P, tail)]: the last plan's modes, formed once for its runs
    runs = [0]

    def run(prep, plan, rtol):
        key = (plan.idx.tobytes(), plan.q)
        if not formed or formed[0][0] is not prep or formed[0][1] != key:
            if plan.q == 0:
                formed[:] = [(prep, key, prep, prep.vectors(plan.idx), None)]
            elif prep.es.partial:
                formed[:] = [(prep, key, *_quadrature_modes(prep, plan, d, rest_q.lanczos(prep, plan.q)))]
            else:
                formed[:] = [(prep, key, *_quadrature_modes(prep, plan, d))]
        _, _, run_prep, P, tail = formed[0]
        idx = plan.idx if tail is None else np.arange(P.shape[1], dtype=np.int32)
        head = (np.arange(idx.size) < plan.idx.size).astype(np.dtype(dtype))
        cfg = _EigenConfig(k=idx.size, integrator=integrator, ode=settings.ode, has_test=has_test,
                           progress=progress)
        runs[0] += 1
        with progress_bar(times.shape[0], f"solve: eigen route, run {runs[0]}, {idx.size} modes", progress):
            out = jax.block_until_ready(_eigen_integrate(cfg, run_prep.traced(), jnp.asarray(idx), P, F0, times,
                                                         B_test, F0_test, settings.tolerances(dtype, rtol),
                                                         jnp.asarray(head)))
        check_reached(out.success, out.n_steps, out.t_final, times, settings.max_steps)
        return out if tail is None else _with_quadrature_bounds(out, tail, plan.q, float(prep.L_norm))

    # Truncation: the a-priori plan (E = T), checked with the measured E; more modes or
    # quadrature blocks (computing more modes if the partial eigensystem ran out) until the
    # bound is met. With a derived rtol these runs use 10 × rtol: the last one is the
    # accuracy check's companion.
    auto_rtol = settings.rtol is None
    rtol_trunc = 10.0 * rtol if auto_rtol else rtol
    if prep.es.partial:  # the first run integrates every computed mode: its E decides how many are needed
        plan = _Plan(np.arange(r, dtype=np.int32), 0)
    else:
        plan = _plan(prep, t_end, d, mode_tol / 2, quadrature=mode_tol > 0)
    while True:
        out = run(prep, plan, rtol_trunc)
        bound = float(out.bound_C)
        if mode_tol == 0 or bound <= mode_tol or (plan.q == 0 and plan.idx.size >= r and not prep.es.partial):
            break
        E = 1.1 * _measured_E(out, prep, t_end)
        if prep.es.partial:
            c, order, rest = _mode_ranking(prep, E, d)
            if rest > mode_tol / 4:  # the modes not computed weigh too much held: carry them by quadrature
                q = rest_q.plan(prep, E, plan.q)
                if q is not None:
                    plan = _Plan(np.arange(r, dtype=np.int32), q)
                    continue
                r_next, r_predicted = _more_modes(prep, E, mode_tol / 4, r, K.shape[0], rest_q.bound(prep, E))
                if settings.eigensystem == "auto" and not partial_is_cheaper(K.shape[0], r_predicted):
                    r_next = K.shape[0]  # the predicted count would not be cheaper: the full decomposition now
                rest_q.release(keep_operator=r_next < K.shape[0])
                prep, r = _eigen_modes(row_max, F0, L, tau, settings, d, t_end, mode_tol, accuracy, r=r_next,
                                       start=prep.es.vectors, operator=rest_q.operator)
                if not prep.es.partial:  # every mode now: the quadrature's plans apply
                    plan = _plan(prep, E, d, mode_tol / 2)
                    continue
                c, order, rest = _mode_ranking(prep, E, d)
                if rest > mode_tol / 4:
                    q = rest_q.plan(prep, E, 0)
                    plan = _Plan(np.arange(r, dtype=np.int32), 0 if q is None else q)
                    continue
            k = plan.idx.size
            k_new = _mode_count(c, order, mode_tol / 2 - rest, d)
            k = min(r, 2 * k) if k_new is None or k_new <= k else k_new
            plan = _Plan(np.sort(order[:k]).astype(np.int32), 0)
        else:
            plan = _next_plan(prep, plan, E, d, mode_tol / 2)
    # Accuracy: the same modes at rtol, against the run at 10 × rtol; tighter while the
    # estimate exceeds the budget (at most three times, never below 10 eps).
    estimate = np.nan
    # A partial eigensystem's γ errors (at most its residuals) move λ by about 8 δ T λ; the
    # kernel change (jitter) moves each γ too (_jitter_share).
    gamma_share = 8.0 * t_end * float(jnp.max(prep.es.residuals)) if prep.es.partial else 0.0
    _, _, _, P, _ = formed[0]  # the last plan's modes: its head columns come first
    P_head = P[:, : plan.idx.size]
    gamma_share += float(_jitter_share(prep.es.factor, prep.es.jitter, P_head, prep.es.gammas[jnp.asarray(plan.idx)],
                                       out.embeddings, jnp.asarray(t_end, dtype)))
    if auto_rtol:
        floor = 10.0 * float(np.finfo(np.dtype(dtype)).eps)
        budget = accuracy - float(out.bound_C) - gamma_share
        prev, prev_rtol = out, rtol_trunc
        for _ in range(4):
            cur = run(prep, plan, rtol)
            diff = float(jnp.max(jnp.abs(cur.eigenvalues - prev.eigenvalues)))
            # Tolerance proportionality (error ∝ rtol) gives err ≈ diff / (ratio − 1);
            # three times that allows for an integrator that is not quite proportional.
            estimate = 3.0 * diff / (prev_rtol / rtol - 1.0)
            prev, prev_rtol = cur, rtol
            # No rtol brings the estimate within a budget the truncation or γ used up.
            if estimate <= budget or rtol <= floor or budget <= 0:
                break
            # err ∝ rtol: the factor that brings the estimate to half the budget, 2× to 10×.
            rtol = max(rtol * min(0.5, max(0.1, 0.5 * budget / estimate)), floor)
        out = prev
        estimate = estimate + float(out.bound_C) + gamma_share
    es = prep.es
    stats = SolveStats(
        n_steps=out.n_steps, n_rejected=out.n_rejected, n_rhs=out.n_rhs, n_w=out.n_w, success=out.success,
        n_modes=jnp.asarray(plan.n_modes(d)), truncation_bound=out.bound_C, truncation_embedding_bound=out.bound_F,
        jitter=es.jitter, n_devices=jnp.asarray(1), error_estimate=jnp.asarray(estimate, dtype),
        n_eigen_modes=jnp.asarray(es.gammas.shape[0]),
        eigen_residual=jnp.asarray(0.0 if es.residuals is None else jnp.max(es.residuals), dtype),
        n_quadrature_modes=jnp.asarray(plan.q * d),
    )
    if plan.q:
        left = N - plan.idx.size if prep.es.partial else r - plan.idx.size
        reason = (f"{reason}; {plan.idx.size} modes integrated one by one, the other {left} as "
                  f"{plan.q * d} pseudo-modes ({plan.q}-block Gauss quadrature)")
    return Trajectory(times=times, loss=out.loss, eigenvalues=out.eigenvalues, embeddings=out.embeddings,
                      test_embeddings=out.test_embeddings, stats=stats, method="eigen",
                      integrator=integrator, reason=reason)


@jax.jit
@highest_precision
def _jitter_share(L, jitter, P, gammas, F_T, t_end):
    """How far the kernel change ``τ`` (``stats.jitter``) moves ``λ``: ``2 T max_j δγ_j min(1, 4 w_j)``
    over the integrated modes with ``γ_j > 0`` (``P: (N, k)`` their eigenvectors, ``F_T: (N, d)``
    the final embeddings).

    A kernel change ``ΔK`` moves ``μ = 2n γ`` (an eigenvalue of ``Z (K + τI)``, right
    eigenvector ``Z L p``, left ``L p``) by ``(Z L p)ᵀ ΔK (Z L p) / μ`` to first order, so
    ``|δγ_j| ≤ ‖ΔK‖₂ ‖L p_j‖² / ((2n)² γ_j)``, with equality for ``ΔK = τ I`` (within 1% of the
    measured shifts on the CIFAR-10 linear kernel, jitter 3e-5 to 3e-4 relative). A mode
    following ``λ' = 8 γ λ (1 − λ)`` has ``∂λ/∂γ = 8 t λ (1 − λ)``, at most ``2T`` and at most
    ``8 T w`` for its contribution ``w = γ ‖m(T)‖²`` (largest at ``T`` while it grows),
    ``m(T) = (Z L p)ᵀ F_T / (2n γ)``. Measured, 1.4-2.6× the error a jitter of 3e-5 to 2.4e-4
    relative caused (CIFAR-10 linear and MLP NTK, 2n = 1000-2000); ``8 T δγ`` was 10×.
    """
    N = L.shape[0]
    modes = L @ P  # mode functions L p_j
    positive = gammas > 0
    g = jnp.where(positive, gammas, 1.0)
    shift = jitter * jnp.sum(jnp.square(modes), axis=0) / (N * N * g)
    m_T = (swap_pairs(modes).T @ F_T) / (N * g[:, None])
    w = g * jnp.sum(jnp.square(m_T), axis=1)
    return 2.0 * t_end * jnp.max(jnp.where(positive, shift * jnp.minimum(1.0, 4.0 * w), 0.0), initial=0.0)


def _measured_E(out, prep, t_end) -> float:
    """``E`` of the run (the a-posteriori bound's), at most the a-priori ``1.25 T``."""
    return min(float(out.E), 1.25 * t_end)


def _eigen_modes(row_max, F0, L, tau, settings, d, t_end, mode_tol, accuracy, *, r=None, start=None,
                 operator=None):
    """The eigensystem the truncation starts from, its preparation, and how many modes it has.

    Low-rank (``settings.eigensystem="auto"``, first call): where dropping the Cholesky
    columns of smallest norm moves the kernel by at most ``res_rtol · max_i Σ_j |K_ij|``
    (the partial eigensystem's residual tolerance, below) and leaves at most two thirds of
    them (forming ``L_Sᵀ Z L_S`` and its ``p × p`` eigendecomposition cost ``≈ 2n p² + 9 p³``
    flops, at most a third of the full decomposition's ``≈ 9¼ (2n)³``, and unlike the
    partial eigensystem give every mode at once),
    and ``F0`` lies in the range of the rest (within ``accuracy / 100`` relative), the exact
    eigensystem of that kernel (:func:`~stepwise_ntk.theory.low_rank_columns`). A kernel
    change ``δ`` moves each ``γ`` by about ``δ / 2n``, as a residual ``δ / 2n`` would.

    Partial (``settings.eigensystem`` ``"partial"``, or ``"auto"`` where
    :func:`partial_is_cheaper` expects ``r`` modes to cost less than all of them): the ``r``
    modes of largest ``|γ|`` (default ``max(64, 2d)`` rounded up to 64; the solve raises it,
    :func:`_more_modes`, while the a-posteriori bound on the modes not computed asks for it,
    and ``"auto"`` turns to the full decomposition once the raised count would not be
    cheaper); full otherwise. ``operator()``: the :class:`~stepwise_ntk.theory.PairGramOperator`
    of ``L`` for the partial eigensystem (None: formed for the call).
    """
    N = L.shape[0]
    first = r is None
    r = first_modes(d) if r is None else r
    # Residual tolerance: a γ error δ moves λ by about 8 δ T λ, kept below accuracy / 10.
    gamma_max = float(row_max) / N
    res_target = min(1e-8, accuracy / (80.0 * max(t_end, 1e-300) * max(gamma_max, 1e-300)))
    # ... but not below the round-off of one product with H (float32: ~1e-4 at 2n = 2000).
    res_floor = 30.0 * math.sqrt(N) * float(np.finfo(np.dtype(L.dtype)).eps)
    res_rtol = max(res_target, res_floor)
    if mode_tol > 0 and first and settings.eigensystem == "auto":
        low = _low_rank_prep(row_max, F0, L, tau, res_rtol * gamma_max * N, accuracy)
        if low is not None:
            return low, low.es.gammas.shape[0]
    # Where that round-off exceeds the target (float32, long horizons) a partial eigensystem
    # cannot meet the accuracy, and "auto" takes the full decomposition (γ to eps · |γ_1|).
    want_partial = settings.eigensystem == "partial" or (settings.eigensystem == "auto" and res_floor <= res_target
                                                         and partial_is_cheaper(N, min(r, N)))
    if mode_tol == 0 or not want_partial:
        if tridiagonal_available(L):
            return _tridiagonal_prepare(tridiagonal_eigensystem(L, tau), row_max, F0), N
        es = contrastive_eigensystem_from_factor(L, tau)
        return _eigen_prepare(es, row_max, F0, N), N
    es = contrastive_eigensystem_from_factor(L, tau, top=min(r, N), which="magnitude", start=start,
                                             residual_rtol=res_rtol, operator=None if operator is None else operator())
    return _eigen_prepare(es, row_max, F0, N), es.gammas.shape[0]


def first_modes(d: int) -> int:
    """The first partial eigensystem's mode count: ``max(64, 2d)`` rounded up to 64."""
    return max(64, _MODE_BLOCK * math.ceil(2 * d / _MODE_BLOCK))


def _low_rank_prep(row_max, F0, L, tau, tol, accuracy):
    """The low-rank eigensystem's preparation (:func:`_eigen_modes`), or None where more than
    two thirds of the columns stay or ``F0`` has more than ``accuracy / 100`` of its norm outside."""
    N = L.shape[0]
    columns = low_rank_columns(L, tol)
    if 3 * columns.size > 2 * N:
        return None
    rows = int(columns[-1]) + 1
    outside, norm, B = _outside_columns(L, F0, jnp.asarray(columns, jnp.int32), rows)
    if float(outside) > accuracy / 100.0 * float(norm):
        return None
    return _eigen_prepare(contrastive_eigensystem_from_factor(L, tau, columns=columns), row_max, F0, rows, B)


@functools.partial(jax.jit, static_argnames=("rows",))
def _outside_columns(L, F0, columns, rows):
    """``(‖F0 − L_S B_S‖_F, ‖F0‖_F, B)`` with ``B = L⁻¹ F0`` on the leading ``rows``: the part
    of ``F0`` that the columns ``S`` of ``L`` (all below ``rows``) do not carry (``L_D B_D``)."""
    with jax.default_matmul_precision("highest"):
        B = jax.scipy.linalg.solve_triangular(L[:rows, :rows], F0[:rows], lower=True)
        rest = F0 - L[:, columns] @ B[columns]
    return jnp.sqrt(jnp.sum(jnp.square(rest))), jnp.sqrt(jnp.sum(jnp.square(F0))), B
