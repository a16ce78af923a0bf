"""Gradient flow of the kernel model, ``dF/dt = −K ∇_F L(F)``, on the 2n views (docs/theory.md).

:func:`solve` returns a :class:`Trajectory`: the loss and the eigenvalues of
``C = Fᵀ Z F / (2n)`` at the requested times, the final view embeddings, and (given
``K(test, views)``) test embeddings at every requested time, via
``df(x)/dt = −K(x, X) ∇_F L``. Two routes, one result type:

``method="eigen"`` (Barlow Twins only). Factor ``K + τ I = L Lᵀ`` and diagonalise
``Lᵀ Z L / (2n) = P diag(γ) Pᵀ`` (:func:`contrastive_eigensystem`), write ``F = L P Mᵀ``:
the flow becomes ``dM/dt = −4 (C − I) M diag(γ)``, ``C = M diag(γ) Mᵀ``, costing
``O(d² k)`` per right-hand side for ``k`` integrated modes instead of ``O((2n)² d)``.

*Truncation.* A mode ``j`` that is not integrated is held at ``m_j(0)``. Exactly,
``m_j(t) = Φ_j(t) m_j(0)`` with ``dΦ_j/dt = 4 γ_j (I − C) Φ_j``, so
``‖Φ_j − I‖₂ ≤ ρ_j = exp(4 |γ_j| E) − 1``, ``E = ∫_0^T ‖I − C(t)‖₂ dt``, and its
contribution ``γ_j m_j m_jᵀ`` to ``C`` moves by at most ``|γ_j| ‖m_j(0)‖² ρ_j (2 + ρ_j)``.
The modes are ranked by this bound with the a-priori ``E = 1.25 T`` (``‖I − C‖ ≤ 1`` while
``0 ⪯ C ⪯ I``); the fewest modes whose neglected bounds sum to ``≤ mode_tol / 2`` are
integrated (rounded up to a multiple of 64). After the run the bound is re-evaluated
with the measured ``E`` (trapezoid rule on the accepted steps of the computed trajectory,
of :func:`spectral_norm_bound`, an upper bound on ``‖I − C‖₂`` within 3% at ``d ≤ 32``);
if it exceeds ``mode_tol``, the number of modes is doubled and the solve repeated. The
final bound is ``stats.truncation_bound``: a bound on the truncated modes' own
contribution to ``C`` (hence, by Weyl's inequality, to each eigenvalue); their feedback on
the integrated modes through ``C`` is of the same order but not part of the bound.
``mode_tol = 0`` integrates all ``2n`` modes.

*Time integration.* The flow is stiff (fastest scale ``1/8γ_1``, horizon
``ln(1/λ(0))/8γ_d``). ``integrator="rosw"`` uses the Rosenbrock-W method ROS34PW2 with
``W`` = the stiff part of the Jacobian, ``δM ↦ −4 (δM Γ Mᵀ + M Γ δMᵀ) M Γ``; the solve with
``I − τW`` reduces to the Lyapunov equation ``X + 4τ(X A + A X) = −4τ S`` with
``A = M Γ² Mᵀ`` (one ``d × d`` eigendecomposition per step). ``"dopri5"`` is explicit and
needs about ``8γ_1 T / 3.3`` steps; ``"auto"`` picks the cheaper by a step-count model.

``method="function"`` (any differentiable loss of ``F``: Barlow Twins, SimCLR, VICReg, or
a callable). Integrates ``F`` itself with Dormand–Prince: one ``(2n × 2n)·(2n × d)``
product per right-hand side. ``K`` (and ``K(test, views)``) can be sharded by rows over
all local devices (``jax.sharding.NamedSharding`` on a 1-D mesh).

``method="auto"`` picks by a cost model (see :func:`choose_method`) and says why in
``Trajectory.reason``.

Everything after input validation is jitted; a second call with the same shapes (and
settings) does not recompile. The eigen route runs as two jitted stages with a host
decision (how many modes) in between.

Example::

    >>> import jax, jax.numpy as jnp
    >>> X = jax.random.normal(jax.random.key(0), (40, 30))       # 20 pairs, 30 features
    >>> X = X.at[20:].set(X[:20] + 0.3 * X[20:])                  # views of the same images
    >>> K = X @ X.T / 30
    >>> F0 = 1e-3 * jax.random.normal(jax.random.key(1), (40, 3))
    >>> traj = solve(K, 20, F0, jnp.geomspace(1e-2, 1e3, 50))
    >>> traj.eigenvalues.shape, traj.method
    ((50, 3), 'eigen')
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from stepwise_ntk._checks import (
    check_bool,
    check_choice,
    check_embeddings,
    check_kernel,
    check_n_pairs,
    check_number,
    check_positive_int,
    check_test_embeddings,
    check_test_kernel,
    check_times,
    check_type,
)
from stepwise_ntk.data import pair_gram
from stepwise_ntk.losses import barlow_twins_loss, cross_correlation, resolve_loss
from stepwise_ntk.solver._integrate import ODESettings, check_tolerances, integrate
from stepwise_ntk.solver._trajectory import SolveStats, Trajectory
from stepwise_ntk.theory import (
    ContrastiveEigensystem,
    check_enough_modes,
    check_factorization,
    contrastive_eigensystem_core,
    default_jitter_rtol,
)

__all__ = ["METHODS", "INTEGRATORS", "SolverSettings", "choose_method", "solve"]

METHODS = ("auto", "eigen", "function")
INTEGRATORS = ("auto", "dopri5", "rosw")
_MODE_BLOCK = 64


@dataclasses.dataclass(frozen=True)
class SolverSettings:
    """Settings of :func:`solve` (hashable; part of the compiled computation).

    Attributes:
      rtol, atol: local error tolerances of the time integration (see
        :mod:`stepwise_ntk.solver._integrate`; ``atol=None`` follows the scale of the initial
        state). The global error of the eigenvalues is typically 10–100 × rtol.
      max_steps: limit on attempted time steps.
      integrator: ``"auto"``, ``"dopri5"`` or ``"rosw"`` (``"rosw"``: eigen route only).
      mode_tol: eigen route: the truncated modes may move ``C`` by at most this much in the
        2-norm (see the module docstring); 0 keeps every mode.
      jitter_rtol: relative jitter of the factorisation (None: ``2n · eps``; see
        :mod:`stepwise_ntk.theory._eigensystem`).
      shard: function route: shard ``K``'s rows over ``jax.local_devices()`` (None: when
        there is more than one device and ``2n`` is divisible by their number).
    """

    rtol: float = 1e-6
    atol: float | None = None
    max_steps: int = 1_000_000
    integrator: str = "auto"
    mode_tol: float = 1e-6
    jitter_rtol: float | None = None
    shard: bool | None = None

    def __post_init__(self):
        check_tolerances("SolverSettings", self.rtol, self.atol, self.max_steps)
        check_choice("SolverSettings.integrator", self.integrator, INTEGRATORS)
        check_number("SolverSettings.mode_tol", self.mode_tol, low=0.0)
        if self.jitter_rtol is not None:
            check_number("SolverSettings.jitter_rtol", self.jitter_rtol, low=0.0, hint=" or None")
        if self.shard is not None:
            check_bool("SolverSettings.shard", self.shard)

    @property
    def ode(self) -> ODESettings:
        """The static part of the integrator settings (tolerances travel as traced values)."""
        return ODESettings(atol=None if self.atol is None else 1.0)

    def tolerances(self, dtype) -> tuple[jax.Array, jax.Array, jax.Array]:
        """``(rtol, atol, max_steps)`` as arrays (``atol`` is NaN, unused, when it follows the
        state's scale)."""
        atol = np.nan if self.atol is None else self.atol
        return (jnp.asarray(self.rtol, dtype), jnp.asarray(atol, dtype),
                jnp.asarray(min(self.max_steps, 2**31 - 1), jnp.int32))


# ------------------------------------------------------------------------------ cost model

def choose_method(n_pairs: int, d: int, barlow_twins: bool, *, platform: str = "cpu",
                  n_devices: int = 1) -> tuple[str, str]:
    """The route :func:`solve` takes for ``method="auto"``, and why.

    Cost model (flops): eigen ``≈ 10 N³`` (Cholesky ``N³/3``, ``Lᵀ Z L`` ``N³/2``, symmetric
    eigendecomposition ``≈ 9 N³``) times a platform factor (3 on GPU/TPU, where dense
    eigensolvers reach a far smaller fraction of peak than matrix products), against
    function ``≈ 6 · S · 2 N² d / n_devices`` with ``S = 400`` time steps (a typical
    optimistic count; stiff problems need more, which only favours the eigen route).

    Args:
      n_pairs: ``n`` (``N = 2n`` views).
      d: embedding dimension.
      barlow_twins: the eigen route exists only for the Barlow Twins loss.
      platform: ``jax.default_backend()``.
      n_devices: devices the function route would shard ``K`` over.

    Example:
        >>> choose_method(1000, 32, True)[0], choose_method(1000, 32, False)[0]
        ('eigen', 'function')
    """
    n_pairs = check_n_pairs(n_pairs)
    d = check_positive_int("d", d, hint=" (the embedding dimension)")
    n_devices = check_positive_int("n_devices", n_devices)
    check_type("platform", platform, str)
    if not check_bool("barlow_twins", barlow_twins):
        return "function", "only the function route handles this loss"
    N = 2.0 * n_pairs
    factor = 1.0 if platform == "cpu" else 3.0
    eigen = 10.0 * N**3 * factor
    function = 6.0 * 400.0 * 2.0 * N**2 * d / n_devices
    method = "eigen" if eigen <= function else "function"
    return method, (f"cost model: eigen ≈ {eigen:.2g} flops, function ≥ {function:.2g} flops "
                    f"(N={2 * n_pairs}, d={d}, {platform}, {n_devices} device(s))")


def _rosw_is_cheaper(gamma1: float, t_end: float, d: int, rtol: float) -> bool:
    """Step-count model: explicit DOPRI5 needs ≥ 8γ_1 T/3.3 steps (stability), ROS34PW2 about
    0.35 d rtol^(-1/3) (accuracy; calibrated on CIFAR-10 kernels); per step they cost ~24 and
    ~34 d²k flops."""
    dopri = max(8.0 * gamma1 * t_end / 3.3, 0.2 * d * rtol ** (-0.2))
    rosw = 0.35 * d * rtol ** (-1.0 / 3.0)
    return 34.0 * rosw < 24.0 * dopri


# ------------------------------------------------------------------------------ eigen route

class _EigenPrep(NamedTuple):
    es: ContrastiveEigensystem
    M0: jax.Array  # (d, N) mode coordinates of F0
    C0: jax.Array  # (d, d) cross-correlation of F0
    L_norm: jax.Array  # upper bound on ‖L‖₂ = ‖K + τI‖₂^½ (max absolute row sum of K, plus τ)


@jax.jit
def _eigen_prepare(K, F0, jitter_rtol):
    es = contrastive_eigensystem_core(K, jitter_rtol)
    B0 = jax.scipy.linalg.solve_triangular(es.factor, F0, lower=True)
    M0 = (es.vectors.T @ B0).T
    L_norm = jnp.sqrt(jnp.max(jnp.sum(jnp.abs(K), axis=1)) + es.jitter)
    return _EigenPrep(es=es, M0=M0, C0=cross_correlation(F0), L_norm=L_norm)


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


class _EigenOut(NamedTuple):
    loss: jax.Array
    eigenvalues: jax.Array
    embeddings: jax.Array
    test_embeddings: Any
    n_steps: jax.Array
    n_rejected: jax.Array
    n_rhs: jax.Array
    success: jax.Array
    t_final: jax.Array
    bound_C: jax.Array
    bound_F: jax.Array


def _tolerance_kwargs(ode: ODESettings, tols):
    rtol, atol, max_steps = tols
    return dict(rtol=rtol, atol=None if ode.atol is None else atol, max_steps=max_steps)


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
def _eigen_integrate(cfg: _EigenConfig, prep: _EigenPrep, idx, F0, times, K_test, F0_test, tols):
    es = prep.es
    dtype = F0.dtype
    d = F0.shape[1]
    eye = jnp.eye(d, dtype=dtype)
    g = es.gammas[idx]
    P = es.vectors[:, idx]
    M0 = prep.M0[:, idx]
    Cf = prep.C0 - (M0 * g) @ M0.T  # frozen modes' contribution (exact at t = 0)
    if cfg.has_test:
        G_test = jax.scipy.linalg.solve_triangular(es.factor, K_test.T, lower=True).T @ P

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

    res = integrate(rhs, M0, times, None, observe=observe, settings=cfg.ode, method=cfg.integrator,
                    w_prepare=lambda M, a: _lyapunov_prepare(M, g), w_solve=_lyapunov_solve,
                    integrand=integrand, **_tolerance_kwargs(cfg.ode, tols))
    M_T = res.y_final
    F_T = F0 + es.factor @ (P @ (M_T - M0).T)

    weights = jnp.sum(jnp.square(prep.M0), axis=0)
    frozen = jnp.ones(weights.shape, dtype=bool).at[idx].set(False)
    c, rho = _truncation_terms(es.gammas, jnp.where(frozen, weights, 0.0), res.integral)
    bound_C = jnp.sum(c)
    # ‖L‖₂² = ‖K + τI‖₂ ≤ ‖K‖_∞ + τ, so ‖ΔF‖_F ≤ ‖L‖₂ ‖ΔM_frozen‖_F.
    bound_F = prep.L_norm * jnp.sqrt(jnp.sum(jnp.where(frozen, weights * rho**2, 0.0)))
    loss, lam = res.observed[0], res.observed[1]
    test = res.observed[2] if cfg.has_test else None
    st = res.stats
    return _EigenOut(loss, lam, F_T, test, st.n_steps, st.n_rejected, st.n_rhs, st.success, st.t_final,
                     bound_C, bound_F)


def _mode_ranking(prep: _EigenPrep, t_end: float, d: int) -> tuple[np.ndarray, np.ndarray]:
    """A-priori truncation bound per mode (``E = 1.25 T``) and the modes ranked by it.

    The top-``d`` modes by ``γ`` come first whatever their bound (they carry the steps).
    """
    gammas = np.asarray(prep.es.gammas, dtype=np.float64)
    weights = np.sum(np.square(np.asarray(prep.M0, dtype=np.float64)), axis=0)
    with np.errstate(over="ignore", invalid="ignore"):
        rho = np.expm1(4.0 * np.abs(gammas) * 1.25 * t_end)
        c = np.where(weights > 0, np.abs(gammas) * weights * rho * (2.0 + rho), 0.0)
    c = np.nan_to_num(c, nan=np.inf)
    c_ranked = np.where(np.arange(len(c)) < d, np.inf, c)
    return c, np.argsort(-c_ranked, kind="stable")


def _mode_count(c: np.ndarray, order: np.ndarray, mode_tol: float, d: int) -> int:
    """Fewest ranked modes whose neglected a-priori bounds sum to ≤ mode_tol / 2 (a multiple of 64)."""
    N = len(c)
    if mode_tol <= 0:
        return N
    with np.errstate(over="ignore", invalid="ignore"):  # infinite bounds: modes that must stay
        tail = np.concatenate([np.cumsum(c[order][::-1])[::-1], [0.0]])  # tail[k] = Σ_{rank ≥ k}
    k = max(int(np.argmax(tail <= mode_tol / 2)), d)
    return min(N, _MODE_BLOCK * math.ceil(k / _MODE_BLOCK))


# ------------------------------------------------------------------------------ function route

class _FunctionConfig(NamedTuple):
    loss: Callable
    ode: ODESettings
    has_test: bool


@functools.partial(jax.jit, static_argnames=("cfg",))
def _function_integrate(cfg: _FunctionConfig, K, F0, times, K_test, F0_test, tols):
    grad = jax.grad(cfg.loss)
    rep = _replicated_like(F0)

    def rhs(t, y, args):
        F = y[0]
        G = grad(F)
        out = (_constrain(-(K @ G), rep),)
        if cfg.has_test:
            out = out + (_constrain(-(K_test @ G), rep),)
        return out

    def observe(y, args):
        F = y[0]
        C = pair_gram(F) / F.shape[0]
        out = (cfg.loss(F), jnp.linalg.eigvalsh(C)[::-1])
        if cfg.has_test:
            out = out + (y[1],)
        return out

    y0 = (F0,) + ((F0_test,) if cfg.has_test else ())
    res = integrate(rhs, y0, times, None, observe=observe, settings=cfg.ode, method="dopri5",
                    **_tolerance_kwargs(cfg.ode, tols))
    test = res.observed[2] if cfg.has_test else None
    st = res.stats
    return res.observed[0], res.observed[1], res.y_final[0], test, st


def _replicated_like(x):
    sh = getattr(x, "sharding", None)
    if isinstance(sh, NamedSharding):
        return NamedSharding(sh.mesh, PartitionSpec())
    return None


def _constrain(x, sharding):
    return x if sharding is None else jax.lax.with_sharding_constraint(x, sharding)


def _shard_rows(arrays, devices):
    """Put K-like arrays row-sharded and everything else replicated on a 1-D device mesh."""
    mesh = Mesh(np.asarray(devices), ("rows",))
    rows = NamedSharding(mesh, PartitionSpec("rows", None))
    rep = NamedSharding(mesh, PartitionSpec())
    out = []
    for a, by_rows in arrays:
        if a is None:
            out.append(None)
        elif by_rows and a.shape[0] % len(devices) == 0:
            out.append(jax.device_put(a, rows))
        else:
            out.append(jax.device_put(a, rep))
    return out


# ------------------------------------------------------------------------------ public entry

def solve(
    K: Any,
    n_pairs: int,
    F0: Any,
    times: Any,
    *,
    loss: str | Callable[[jax.Array], jax.Array] = "barlow_twins",
    loss_kwargs: dict | None = None,
    method: str = "auto",
    K_test: Any = None,
    F0_test: Any = None,
    settings: SolverSettings = SolverSettings(),
) -> Trajectory:
    """Gradient flow ``dF/dt = −K ∇_F L(F)`` of the kernel model from ``F(0) = F0``.

    Args:
      K: ``(2n, 2n)`` PSD kernel Gram matrix of the views ``[x_1..x_n, x'_1..x'_n]``
        (float32 or float64; may be sharded by rows for the function route).
      n_pairs: ``n``.
      F0: ``(2n, d)`` initial embeddings of the views (same dtype as K).
      times: ``(T,)`` strictly increasing output times ≥ 0 (effective time: learning rate
        × step), e.g. ``jnp.geomspace(1e-2, 1e4, 200)``.
      loss: ``"barlow_twins"``, ``"simclr"``, ``"vicreg"`` or a callable ``F -> scalar``.
      loss_kwargs: keyword arguments of a named loss (e.g. ``{"temperature": 0.2}``).
      method: ``"auto"``, ``"eigen"`` (Barlow Twins only) or ``"function"``.
      K_test: optional ``(m, 2n)`` kernel between test inputs and the views.
      F0_test: optional ``(m, d)`` initial test embeddings (default 0, as in
        neural-tangents' ``predict``).
      settings: :class:`SolverSettings`.

    Returns:
      :class:`Trajectory` (``method``, ``integrator`` and ``reason`` say what ran).

    Raises:
      TypeError: an argument of the wrong type (e.g. a float ``n_pairs``, ``settings`` that
        is not a :class:`SolverSettings`, ``loss`` neither a name nor a callable).
      ValueError: on bad input (shapes, dtypes, NaN/Inf, asymmetric or non-PSD ``K``,
        non-increasing times, fewer than ``d`` positive contrastive eigenvalues for
        Barlow Twins on the eigen route, a tolerance below the dtype's resolution), or
        when the integration does not reach the last time within ``max_steps``.
    """
    n_pairs = check_n_pairs(n_pairs)
    K = check_kernel(K, n_pairs)
    F0 = check_embeddings(F0, n_pairs, "F0", dtype=K.dtype)
    times = check_times(times, K.dtype)
    loss_fn = resolve_loss(loss, loss_kwargs=loss_kwargs)
    check_choice("method", method, METHODS)
    check_type("settings", settings, SolverSettings)
    _check_rtol_resolvable(settings.rtol, K.dtype)
    K_test, F0_test = _test_inputs(K_test, F0_test, n_pairs, F0)

    devices = jax.local_devices()
    shard = _use_sharding(settings.shard, 2 * n_pairs, devices)
    n_dev = len(devices) if shard else 1
    is_bt = loss_fn is barlow_twins_loss
    method, reason = _route(method, is_bt, loss, settings.integrator, n_pairs, F0.shape[1], n_dev)
    if method == "eigen":
        return _solve_eigen(K, F0, times, K_test, F0_test, settings, F0.shape[1], reason)
    return _solve_function(K, F0, times, K_test, F0_test, settings, loss_fn, reason, shard, devices, n_dev)


def _check_rtol_resolvable(rtol: float, dtype: Any) -> None:
    eps = float(np.finfo(dtype).eps)
    if rtol < 10 * eps:
        raise ValueError(
            f"rtol = {rtol:g} is below what {np.dtype(dtype).name} resolves (10 eps = "
            f"{10 * eps:.1g}); use rtol ≥ {10 * eps:.1g} or float64 inputs."
        )


def _test_inputs(K_test: Any, F0_test: Any, n_pairs: int, F0: jax.Array) -> tuple[Any, Any]:
    """``K_test: (m, 2n)`` and ``F0_test: (m, d)`` (default 0) checked, or (None, None)."""
    if K_test is None:
        if F0_test is not None:
            raise ValueError("F0_test was given without K_test; pass K_test (m, 2n) as well.")
        return None, None
    K_test = check_test_kernel(K_test, n_pairs, dtype=F0.dtype)
    m, d = K_test.shape[0], F0.shape[1]
    if F0_test is None:
        F0_test = jnp.zeros((m, d), F0.dtype)
    return K_test, check_test_embeddings(F0_test, m, d, dtype=F0.dtype)


def _use_sharding(shard: bool | None, N: int, devices: list) -> bool:
    """Whether the function route shards ``K``'s rows (``SolverSettings.shard``; None: auto)."""
    if shard is None:
        return len(devices) > 1 and N % len(devices) == 0
    if shard and N % len(devices) != 0:
        raise ValueError(
            f"shard=True needs 2n = {N} divisible by the {len(devices)} local devices; "
            f"use a multiple of {len(devices)} views or shard=None."
        )
    return bool(shard)


def _route(method: str, is_bt: bool, loss: Any, integrator: str, n_pairs: int, d: int,
           n_dev: int) -> tuple[str, str]:
    """The route that runs (``"eigen"`` or ``"function"``) and why."""
    if method == "auto":
        method, reason = choose_method(n_pairs, d, is_bt, platform=jax.default_backend(), n_devices=n_dev)
    else:
        reason = "requested"
    if method == "eigen" and not is_bt:
        name = loss if isinstance(loss, str) else getattr(loss, "__name__", "callable")
        raise ValueError(
            f"method='eigen' solves the Barlow Twins loss only (its flow is linear in the "
            f"contrastive eigenbasis); for loss={name!r} use method='function'."
        )
    if integrator == "rosw" and method == "function":
        raise ValueError("integrator='rosw' is for the eigen route; the function route uses 'dopri5'.")
    return method, reason


def _raise_if_failed(success, n_steps, t_final, times, settings):
    if not bool(success):
        raise ValueError(
            f"The integration stopped at t = {float(t_final):.6g} < {float(times[-1]):.6g} after "
            f"{int(n_steps)} steps (max_steps = {settings.max_steps}). Raise max_steps, loosen rtol, "
            f"or shorten the time span; a NaN in the state (divergence) also stops it."
        )


def _solve_eigen(K, F0, times, K_test, F0_test, settings, d, reason):
    N = K.shape[0]
    dtype = K.dtype
    jr = default_jitter_rtol(N // 2, dtype) if settings.jitter_rtol is None else settings.jitter_rtol
    prep = _eigen_prepare(K, F0, jnp.asarray(jr, dtype))
    check_factorization(prep.es, K)
    check_enough_modes(prep.es, d)
    t_end = float(times[-1])
    integrator = settings.integrator
    if integrator == "auto":
        cheaper = _rosw_is_cheaper(float(prep.es.gammas[0]), t_end, d, settings.rtol)
        integrator = "rosw" if cheaper else "dopri5"
    c, order = _mode_ranking(prep, t_end, d)
    k = _mode_count(c, order, settings.mode_tol, d)
    while True:
        idx = jnp.asarray(np.sort(order[:k]).astype(np.int32))
        cfg = _EigenConfig(k=k, integrator=integrator, ode=settings.ode, has_test=K_test is not None)
        out = _eigen_integrate(cfg, prep, idx, F0, times, K_test, F0_test, settings.tolerances(dtype))
        _raise_if_failed(out.success, out.n_steps, out.t_final, times, settings)
        if k >= N or float(out.bound_C) <= settings.mode_tol:
            break
        # The a-priori ranking was too optimistic (e.g. C left [0, I]): integrate more modes.
        k = min(N, 2 * k)
    stats = SolveStats(
        n_steps=out.n_steps, n_rejected=out.n_rejected, n_rhs=out.n_rhs, success=out.success,
        n_modes=jnp.asarray(k), truncation_bound=out.bound_C, truncation_embedding_bound=out.bound_F,
        jitter=prep.es.jitter, n_devices=jnp.asarray(1),
    )
    return Trajectory(times=times, loss=out.loss, eigenvalues=out.eigenvalues, embeddings=out.embeddings,
                      test_embeddings=out.test_embeddings, stats=stats, method="eigen",
                      integrator=integrator, reason=reason)


def _solve_function(K, F0, times, K_test, F0_test, settings, loss_fn, reason, shard, devices, n_dev):
    if shard:
        K, F0, K_test, F0_test = _shard_rows([(K, True), (F0, False), (K_test, True), (F0_test, False)], devices)
    cfg = _FunctionConfig(loss=loss_fn, ode=settings.ode, has_test=K_test is not None)
    loss, lam, F_T, test, st = _function_integrate(cfg, K, F0, times, K_test, F0_test,
                                                   settings.tolerances(K.dtype))
    _raise_if_failed(st.success, st.n_steps, st.t_final, times, settings)
    stats = SolveStats(
        n_steps=st.n_steps, n_rejected=st.n_rejected, n_rhs=st.n_rhs, success=st.success,
        n_modes=jnp.asarray(K.shape[0]), truncation_bound=jnp.asarray(0.0, K.dtype),
        truncation_embedding_bound=jnp.asarray(0.0, K.dtype), jitter=jnp.asarray(0.0, K.dtype),
        n_devices=jnp.asarray(n_dev),
    )
    return Trajectory(times=times, loss=loss, eigenvalues=lam, embeddings=F_T, test_embeddings=test,
                      stats=stats, method="function", integrator="dopri5", reason=reason)
