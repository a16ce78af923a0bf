"""Adaptive, error-controlled time integration inside ``lax.while_loop``.

``integrate(rhs, y0, save_times, args, observe=..., settings=...)`` solves
``dy/dt = rhs(t, y, args)`` from ``t = 0`` and returns ``observe(y(t_k), args)`` at every
requested time ``t_k`` (any spacing, e.g. log-spaced over many decades) plus the final
state at ``t_K``. It is a plain JAX function: call it inside ``jax.jit`` (the solver does),
on any backend, in float32 or float64 (the dtype of ``y0``).

Two methods share one driver (error norm, step-size control, dense output, statistics):

* ``"dopri5"``: the explicit Dormand–Prince 5(4) pair with first-same-as-last (6 new
  right-hand sides per step) and its 4th-order continuous extension (Hairer, Nørsett &
  Wanner, *Solving ODEs I*, §II.4–II.6, code DOPRI5).
* ``"rosw"``: the linearly implicit Rosenbrock-W method ROS34PW2 (Rang & Angermann, BIT 45,
  2005): 4 stages, order 3 **for any matrix W** (a W-method: ``W`` need not be the exact
  Jacobian), L-stable for ``W = J``, embedded order 2 with the error estimate filtered by
  ``(I − τ W)⁻¹`` (damping its stiff components as the method damps the error itself),
  cubic Hermite dense output. Each stage, and the filter, costs one solve with
  ``(I − τ W)``, ``τ = γ h``, and each stage one right-hand side; the caller
  supplies that solve (``w_solve``), so a structured approximation of the stiff part of the
  Jacobian can be inverted cheaply (the Barlow Twins eigen route does it with a d×d
  Lyapunov equation). ``W`` is prepared (``w_prepare``) at the start and again only after
  a rejected step taken with a ``W`` of an earlier state: the order does not depend on
  ``W``, only the stability does, and a ``W`` too far from the Jacobian for the step size
  shows as a rejected step (Hairer & Wanner, *Solving ODEs II*, §IV.7, on W-methods with
  Jacobians kept over several steps).

Shared control: error norm ``‖e‖ = RMS(e_i / (atol + rtol · max(|y_i|, |y_new,i|)))``, a step
is accepted when ``‖e‖ ≤ 1``; PI step-size control (DOPRI5's ``β = 0.04``, exponent
``1/q − 0.75 β`` for an error estimate of order ``q``, safety 0.9, step ratio in
``[0.2, 10]``, no growth right after a rejection); output times are filled from the
continuous extension, except the last one, which the integration hits exactly; Hairer's
starting-step heuristic.

Why two methods: the kernel model is stiff (fastest time scale ``1/8γ_1`` far below the
horizon ``ln(1/λ(0))/8γ_d``); an explicit method then needs ``≈ horizon · 8γ_1 / 3.3``
steps whatever the tolerance, while the W-method's step is set by accuracy alone.
:class:`ODEStats` reports steps, rejections, right-hand sides and ``W`` preparations, so the
cost is visible.

Example::

    >>> import jax.numpy as jnp
    >>> out = integrate(lambda t, y, a: -a * y, jnp.ones(2), jnp.array([0.5, 1.0]),
    ...                 jnp.asarray(2.0), observe=lambda y, a: y, settings=ODESettings(rtol=1e-8))
    >>> bool(jnp.allclose(out.observed[:, 0], jnp.exp(-2.0 * jnp.array([0.5, 1.0])), rtol=1e-7))
    True
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from stepwise_ntk._checks import check_choice, check_number, check_positive_int

__all__ = ["METHODS", "ODEResult", "ODESettings", "ODEStats", "check_reached", "check_tolerances", "highest_precision",
           "integrate", "tolerance_kwargs"]

METHODS = ("dopri5", "rosw")


@dataclasses.dataclass(frozen=True)
class ODESettings:
    """Tolerances and limits of the adaptive integrator.

    Attributes:
      rtol, atol: relative and absolute local error tolerances (per component, see the
        module docstring). ``rtol`` sets the accuracy; ``atol`` only matters for components
        far below the state's scale. ``atol=None`` means ``1e-3 · rtol · max|y0|``, which
        follows the scale of the initial state (small initialisations start at ~1e-8).
      max_steps: the integration stops (``stats.success = False``) after this many
        attempted steps.
      first_step: initial step size, or None for Hairer's automatic choice.
    """

    rtol: float = 1e-6
    atol: float | None = None
    max_steps: int = 1_000_000
    first_step: float | None = None

    def __post_init__(self):
        check_tolerances("ODESettings", self.rtol, self.atol, self.max_steps)
        if self.first_step is not None:
            check_number("ODESettings.first_step", self.first_step, low=0.0, open_low=True, hint=" or None")


def check_tolerances(owner: str, rtol: Any, atol: Any, max_steps: Any) -> None:
    """The checks of ``rtol``, ``atol`` (or None) and ``max_steps`` shared by the settings classes.

    TypeError for a non-number (a non-int ``max_steps``), ValueError for a negative or
    non-finite tolerance, both tolerances 0, or ``max_steps < 1``; messages name
    ``owner.field``.
    """
    check_number(f"{owner}.rtol", rtol, low=0.0)
    if atol is not None:
        check_number(f"{owner}.atol", atol, low=0.0, hint=" or None")
    if rtol == 0 and not atol:
        raise ValueError(f"{owner} needs rtol > 0 or atol > 0, got rtol={rtol!r}, atol={atol!r}.")
    check_positive_int(f"{owner}.max_steps", max_steps)


class ODEStats(NamedTuple):
    """What the integration cost and whether it reached the last time."""

    n_steps: jax.Array  # accepted steps
    n_rejected: jax.Array  # rejected steps
    n_rhs: jax.Array  # right-hand-side evaluations
    n_w: jax.Array  # W preparations ("rosw": w_prepare calls; 0 for "dopri5")
    t_final: jax.Array  # time reached
    success: jax.Array  # reached the last requested time


class ODEResult(NamedTuple):
    observed: Any  # pytree, each leaf (T, ...): observe(y(t_k), args)
    y_final: Any  # state at the last requested time
    stats: ODEStats
    integral: Any  # ∫_0^T integrand(y(t)) dt (trapezoid over accepted steps), or None


# ----------------------------------------------------------------------------- tableaus

# Dormand–Prince 5(4) (DOPRI5).
_DP_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_DP_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
# b − b̂: 5th-order weights minus the embedded 4th-order weights.
_DP_E = (71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40)
# Continuous extension: y(t + θh) = y + h Σ_i K_i Σ_j P[i][j] θ^(j+1) (order 4, as in SciPy's RK45).
_DP_P = (
    (1.0, -8048581381 / 2820520608, 8663915743 / 2820520608, -12715105075 / 11282082432),
    (0.0, 0.0, 0.0, 0.0),
    (0.0, 131558114200 / 32700410799, -68118460800 / 10900136933, 87487479700 / 32700410799),
    (0.0, -1754552775 / 470086768, 14199869525 / 1410260304, -10690763975 / 1880347072),
    (0.0, 127303824393 / 49829197408, -318862633887 / 49829197408, 701980252875 / 199316789632),
    (0.0, -282668133 / 205662961, 2019193451 / 616988883, -1453857185 / 822651844),
    (0.0, 40617522 / 29380423, -110615467 / 29380423, 69997945 / 29380423),
)

# ROS34PW2 (Rang & Angermann 2005), in the form
#   (I − h γ_ii W) k_i = h f(y + Σ_j a_ij k_j) + h W Σ_{j<i} γ_ij k_j,   y_new = y + Σ b_i k_i.
_RW_GAMMA = 4.3586652150845900e-01
_RW_A = np.array([
    [0.0, 0.0, 0.0, 0.0],
    [8.7173304301691801e-01, 0.0, 0.0, 0.0],
    [8.4457060015369423e-01, -1.1299064236484185e-01, 0.0, 0.0],
    [0.0, 0.0, 1.0, 0.0],
])
_RW_G = np.array([
    [_RW_GAMMA, 0.0, 0.0, 0.0],
    [-8.7173304301691801e-01, _RW_GAMMA, 0.0, 0.0],
    [-9.0338057013044082e-01, 5.4180672388095326e-02, _RW_GAMMA, 0.0],
    [2.4212380706095346e-01, -1.2232505839045147e+00, 5.4526025533510214e-01, _RW_GAMMA],
])
_RW_B = np.array([2.4212380706095346e-01, -1.2232505839045147e+00, 1.5452602553351020e+00, 4.3586652150845900e-01])
_RW_BHAT = np.array([3.7810903145819369e-01, -9.6042292212423178e-02, 5.0000000000000000e-01, 2.1793326075422950e-01])
# Transformed variables u_i = Σ_j γ_ij k_j (no products with W needed):
#   (1/(hγ) − W) u_i = f(y + Σ_j Ã_ij u_j) − Σ_{j<i} (G⁻¹_ij / h) u_j,
#   y_new = y + Σ m_j u_j.
_RW_GINV = np.linalg.inv(_RW_G)
_RW_AT = tuple(tuple(float(v) for v in row) for row in _RW_A @ _RW_GINV)
_RW_CT = tuple(tuple(float(-_RW_GINV[i, j]) if j < i else 0.0 for j in range(4)) for i in range(4))
_RW_M = tuple(float(v) for v in _RW_B @ _RW_GINV)
_RW_ME = tuple(float(v) for v in (_RW_B - _RW_BHAT) @ _RW_GINV)

_SAFETY, _MIN_FACTOR, _MAX_FACTOR, _BETA = 0.9, 0.2, 10.0, 0.04


# ------------------------------------------------------------------------- pytree helpers

def _lincomb(base, pairs):
    """``base + Σ c_i v_i`` over pytrees (``base`` may be None), skipping zero coefficients."""
    pairs = [(c, v) for c, v in pairs if not (isinstance(c, float) and c == 0.0)]
    if not pairs:
        return base

    def leaf(*xs):
        if base is None:
            out, vs = None, xs
        else:
            out, vs = xs[0], xs[1:]
        for (c, _), v in zip(pairs, vs, strict=False):
            out = c * v if out is None else out + c * v
        return out

    trees = ([] if base is None else [base]) + [v for _, v in pairs]
    return jax.tree.map(leaf, *trees)


def _err_norm(err, y0, y1, rtol, atol):
    sq, count = 0.0, 0
    for e, a, b in zip(jax.tree.leaves(err), jax.tree.leaves(y0), jax.tree.leaves(y1), strict=False):
        scale = atol + rtol * jnp.maximum(jnp.abs(a), jnp.abs(b))
        sq = sq + jnp.sum(jnp.square(e / scale))
        count += e.size
    return jnp.sqrt(sq / count)


def _first_step(rhs, t0, y0, f0, args, rtol, atol, dtype, order):
    """Hairer's starting step size (Solving ODEs I, §II.4)."""
    d0 = _err_norm(y0, y0, y0, rtol, atol)
    d1 = _err_norm(f0, y0, y0, rtol, atol)
    h0 = jnp.where((d0 < 1e-5) | (d1 < 1e-5), jnp.asarray(1e-6, dtype), 0.01 * d0 / d1)
    y1 = jax.tree.map(lambda a, b: a + h0 * b, y0, f0)
    f1 = rhs(t0 + h0, y1, args)
    d2 = _err_norm(jax.tree.map(jnp.subtract, f1, f0), y0, y0, rtol, atol) / h0
    big = jnp.maximum(d1, d2)
    h1 = jnp.where(big <= 1e-15, jnp.maximum(jnp.asarray(1e-6, dtype), h0 * 1e-3),
                   (0.01 / big) ** (1.0 / order))
    return jnp.minimum(100.0 * h0, h1)


# -------------------------------------------------------------------------------- steppers

class _Step(NamedTuple):
    y_new: Any
    err: Any  # local error estimate (pytree like y)
    f_new: Any  # rhs at (t + h, y_new) if the method computes it (FSAL), else the old one
    dense: Any  # data for the continuous extension


def _dopri5_step(rhs, args, t, y, f, h, prep):
    del prep
    ks = [f]
    for s in range(1, 7):
        ys = _lincomb(y, [(h * c, k) for c, k in zip(_DP_A[s], ks, strict=False)])
        ks.append(rhs(t + _DP_C[s] * h, ys, args))
    err = _lincomb(None, [(h * e, k) for e, k in zip(_DP_E, ks, strict=False)])
    return _Step(y_new=ys, err=err, f_new=ks[6], dense=ks)


def _dopri5_dense(y, h, ks, theta):
    powers = [theta, theta**2, theta**3, theta**4]
    coeffs = [h * sum(p * pw for p, pw in zip(row, powers, strict=False)) for row in _DP_P]
    return _lincomb(y, list(zip(coeffs, ks, strict=False)))


def _rosw_step(rhs, w_solve, args, t, y, f, h, prep):
    """One ROS34PW2 step in transformed variables; ``w_solve(prep, tau, b)`` solves (I − τW)x = b.

    ``f = rhs(y)``; the step also returns ``rhs(y_new)`` (for the next step and the cubic
    Hermite continuous extension).
    """
    tau = _RW_GAMMA * h
    us = []
    for i in range(4):
        yi = _lincomb(y, [(c, u) for c, u in zip(_RW_AT[i], us, strict=False)])
        fi = f if i == 0 else rhs(t, yi, args)  # autonomous; stage 1 is at y itself
        r = _lincomb(fi, [(c / h, u) for c, u in zip(_RW_CT[i], us, strict=False)])
        us.append(w_solve(prep, tau, jax.tree.map(lambda v: tau * v, r)))
    y_new = _lincomb(y, list(zip(_RW_M, us, strict=False)))
    # Filtered (Shampine; Hairer & Wanner IV.8): the method damps the stiff components of its
    # own error, so the raw difference of the two solutions overstates them and the step-size
    # control then chases the stiff modes. One more solve with the step's W.
    err = w_solve(prep, tau, _lincomb(None, list(zip(_RW_ME, us, strict=False))))
    f_new = rhs(t + h, y_new, args)
    return _Step(y_new=y_new, err=err, f_new=f_new, dense=(f, y_new, f_new))


def _rosw_dense(y, h, dense, theta):
    """Cubic Hermite interpolation from ``y, f`` and ``y_new, f_new``: local error O(h⁴),
    below the step's O(h³) controlled error estimate. (The method's own order-2 continuous
    extension would be O(h³).)"""
    f0, y1, f1 = dense
    t2, t3 = theta**2, theta**3
    h00, h10, h01, h11 = 2 * t3 - 3 * t2 + 1, t3 - 2 * t2 + theta, 3 * t2 - 2 * t3, t3 - t2
    return _lincomb(None, [(h00, y), (h * h10, f0), (h01, y1), (h * h11, f1)])


# ---------------------------------------------------------------------------------- driver

def integrate(
    rhs: Callable[[jax.Array, Any, Any], Any],
    y0: Any,
    save_times: jax.Array,
    args: Any = None,
    *,
    observe: Callable[[Any, Any], Any],
    settings: ODESettings = ODESettings(),
    method: str = "dopri5",
    w_prepare: Callable[[Any, Any], Any] | None = None,
    w_solve: Callable[[Any, jax.Array, Any], Any] | None = None,
    integrand: Callable[[Any, Any], Any] | None = None,
    rtol: jax.Array | None = None,
    atol: jax.Array | None = None,
    max_steps: jax.Array | None = None,
    report: Callable[[jax.Array, jax.Array], None] | None = None,
) -> ODEResult:
    """Integrate ``dy/dt = rhs(t, y, args)`` from ``t = 0``, observing at ``save_times``.

    Args:
      rhs: ``(t, y, args) -> dy/dt`` (a pytree like ``y``), traceable. For ``"rosw"`` it
        must not depend on ``t`` (all uses here are autonomous).
      y0: initial state (pytree of float arrays, all of one dtype).
      save_times: ``(T,)`` increasing times ``≥ 0`` (validated by the caller).
      args: pytree passed to ``rhs``, ``observe``, ``w_prepare`` and ``integrand``.
      observe: ``(y, args) -> pytree`` evaluated at every save time.
      settings: :class:`ODESettings`.
      method: ``"dopri5"`` or ``"rosw"`` (see the module docstring).
      w_prepare: ``"rosw"`` only: ``(y, args) -> prep`` (e.g. factorise ``W(y)``), called at
        ``y0`` and at the start of a step after a rejected one whose ``prep`` came from an
        earlier state; the accepted steps in between reuse it.
      w_solve: ``"rosw"`` only: ``(prep, tau, b) -> x`` with ``(I − tau W) x = b``.
      integrand: optional ``(y, args) -> pytree``; its time integral over ``[0, T]``
        (trapezoid rule on the accepted steps) comes back as ``ODEResult.integral``.
      rtol, atol, max_steps: optional (traced) values overriding those in ``settings``, so
        that a jitted caller can change them without recompiling.
      report: optional host function ``(filled, t) -> None``, called through
        ``jax.debug.callback`` after each accepted step that reaches output times, with the
        number of output times filled and the time reached
        (:func:`stepwise_ntk.solver._progress.report` drives a progress bar).

    Returns:
      :class:`ODEResult` with ``observed`` (leaves ``(T, ...)``), ``y_final`` (at
      ``save_times[-1]``, or where the integration stopped), :class:`ODEStats` and
      ``integral``.
    """
    check_choice("method", method, METHODS)
    if method == "rosw" and (w_prepare is None or w_solve is None):
        raise ValueError("method='rosw' needs w_prepare and w_solve (the linear solve with I − τW).")
    leaves = jax.tree.leaves(y0)
    dtype = leaves[0].dtype
    save_times = jnp.asarray(save_times, dtype)
    n_save = save_times.shape[0]
    t_end = save_times[-1]
    rtol = jnp.asarray(settings.rtol if rtol is None else rtol, dtype)
    if atol is None and settings.atol is None:
        y_max = jnp.max(jnp.asarray([jnp.max(jnp.abs(v)) for v in leaves]))
        atol = 1e-3 * rtol * y_max + jnp.finfo(dtype).tiny
    else:
        atol = jnp.asarray(settings.atol if atol is None else atol, dtype)
    zero = jnp.asarray(0.0, dtype)
    max_steps = jnp.asarray(settings.max_steps if max_steps is None else max_steps, jnp.int32)

    if method == "dopri5":
        order, rhs_per_step = 5, 6
        step_fn = lambda t, y, f, h, prep: _dopri5_step(rhs, args, t, y, f, h, prep)  # noqa: E731
        dense_fn = _dopri5_dense
        prepare = None
    else:
        order, rhs_per_step = 3, 4
        step_fn = lambda t, y, f, h, prep: _rosw_step(rhs, w_solve, args, t, y, f, h, prep)  # noqa: E731
        dense_fn = _rosw_dense
        prepare = lambda y: w_prepare(y, args)  # noqa: E731
    expo = 1.0 / order - 0.75 * _BETA

    obs_shape = jax.eval_shape(observe, y0, args)
    buffers = jax.tree.map(lambda s: jnp.zeros((n_save,) + s.shape, s.dtype), obs_shape)

    def write(bufs, i, y):
        return jax.tree.map(lambda b, v: b.at[i].set(v), bufs, observe(y, args))

    # Output times at t = 0 are the initial state.
    def save_initial(carry):
        i, bufs = carry
        return i + 1, write(bufs, i, y0)

    idx, buffers = jax.lax.while_loop(
        lambda c: (c[0] < n_save) & (save_times[jnp.minimum(c[0], n_save - 1)] <= zero),
        save_initial, (jnp.asarray(0, jnp.int32), buffers))

    f0 = rhs(zero, y0, args)
    if settings.first_step is None:
        h0 = _first_step(rhs, zero, y0, f0, args, rtol, atol, dtype, order)
        n_rhs0 = 2
    else:
        h0 = jnp.asarray(settings.first_step, dtype)
        n_rhs0 = 1
    h0 = jnp.minimum(h0, jnp.maximum(t_end, jnp.asarray(1e-30, dtype)))

    if integrand is None:
        integ = lambda y: jnp.zeros((), dtype)  # noqa: E731
    else:
        integ = lambda y: integrand(y, args)  # noqa: E731

    class Carry(NamedTuple):
        t: jax.Array
        y: Any
        f: Any
        h: jax.Array
        err_old: jax.Array
        rejected_last: jax.Array
        idx: jax.Array
        bufs: Any
        n_steps: jax.Array
        n_rej: jax.Array
        n_rhs: jax.Array
        failed: jax.Array
        g_old: Any
        acc: Any
        prep: Any  # W's preparation (rosw)
        prep_at_y: jax.Array  # prep was made at y
        n_w: jax.Array

    def cond(c: Carry):
        return (c.t < t_end) & (c.n_steps + c.n_rej < max_steps) & ~c.failed

    def body(c: Carry):
        last = c.t + c.h >= t_end
        h = jnp.where(last, t_end - c.t, c.h)
        if prepare is None:
            prep, refresh = None, jnp.asarray(False)
        else:
            refresh = c.rejected_last & ~c.prep_at_y
            prep = jax.lax.cond(refresh, lambda: prepare(c.y), lambda: c.prep)
        st = step_fn(c.t, c.y, c.f, h, prep)
        err = _err_norm(st.err, c.y, st.y_new, rtol, atol)
        finite = jnp.isfinite(err) & jnp.all(jnp.asarray(
            [jnp.all(jnp.isfinite(v)) for v in jax.tree.leaves(st.y_new)]))
        accept = finite & (err <= 1.0)
        err_safe = jnp.where(finite, err, jnp.asarray(1e10, dtype))

        fac_err = jnp.maximum(err_safe, 1e-10) ** expo
        fac = jnp.clip(fac_err / c.err_old ** _BETA / _SAFETY, 1.0 / _MAX_FACTOR, 1.0 / _MIN_FACTOR)
        h_acc = h / fac
        h_acc = jnp.where(c.rejected_last, jnp.minimum(h_acc, h), h_acc)
        h_rej = h / jnp.minimum(1.0 / _MIN_FACTOR, fac_err / _SAFETY)
        t_new = jnp.where(last, t_end, c.t + h)

        # Fill every output time in (t, t_new] from the continuous extension.
        def save_one(sc):
            i, bufs = sc
            theta = (save_times[i] - c.t) / h
            y_at = jax.lax.cond(i == n_save - 1, lambda: st.y_new,
                                lambda: dense_fn(c.y, h, st.dense, theta))
            return i + 1, write(bufs, i, y_at)

        def save_all(state):
            return jax.lax.while_loop(
                lambda sc: (sc[0] < n_save) & (save_times[jnp.minimum(sc[0], n_save - 1)] <= t_new),
                save_one, state)

        idx, bufs = jax.lax.cond(accept, save_all, lambda s: s, (c.idx, c.bufs))
        if report is not None:
            jax.lax.cond(idx > c.idx, lambda: jax.debug.callback(report, idx, t_new), lambda: None)
        sel = lambda a, b: jax.tree.map(lambda u, v: jnp.where(accept, u, v), a, b)  # noqa: E731
        f_new = sel(st.f_new, c.f)
        g_new = jax.lax.cond(accept, lambda: integ(st.y_new), lambda: c.g_old)
        acc = jax.tree.map(lambda a, g0, g1: jnp.where(accept, a + 0.5 * h * (g0 + g1), a),
                           c.acc, c.g_old, g_new)
        h_next = jnp.where(accept, h_acc, h_rej)
        # A step that no longer changes t cannot make progress: stop and report failure.
        tiny = h_next <= 16 * jnp.finfo(dtype).eps * jnp.maximum(jnp.abs(c.t), 1.0)
        return Carry(
            t=jnp.where(accept, t_new, c.t),
            y=sel(st.y_new, c.y),
            f=f_new,
            h=jnp.where(accept & last, c.h, h_next),
            err_old=jnp.where(accept, jnp.maximum(err_safe, 1e-4), c.err_old),
            rejected_last=~accept,
            idx=idx,
            bufs=bufs,
            n_steps=c.n_steps + accept.astype(jnp.int32),
            n_rej=c.n_rej + (~accept).astype(jnp.int32),
            n_rhs=c.n_rhs + rhs_per_step,
            failed=tiny & ~(accept & last),
            g_old=g_new,
            acc=acc,
            prep=prep,
            prep_at_y=~accept & (refresh | c.prep_at_y),
            n_w=c.n_w + refresh.astype(jnp.int32),
        )

    g0 = integ(y0)
    carry = Carry(t=zero, y=y0, f=f0, h=h0, err_old=jnp.asarray(1e-4, dtype),
                  rejected_last=jnp.asarray(False), idx=idx, bufs=buffers,
                  n_steps=jnp.asarray(0, jnp.int32), n_rej=jnp.asarray(0, jnp.int32),
                  n_rhs=jnp.asarray(n_rhs0, jnp.int32), failed=jnp.asarray(False),
                  g_old=g0, acc=jax.tree.map(jnp.zeros_like, g0),
                  prep=None if prepare is None else prepare(y0), prep_at_y=jnp.asarray(True),
                  n_w=jnp.asarray(0 if prepare is None else 1, jnp.int32))
    out = jax.lax.while_loop(cond, body, carry)
    stats = ODEStats(
        n_steps=out.n_steps,
        n_rejected=out.n_rej,
        n_rhs=out.n_rhs,
        n_w=out.n_w,
        t_final=out.t,
        success=(out.t >= t_end) & (out.idx >= n_save),
    )
    return ODEResult(observed=out.bufs, y_final=out.y, stats=stats,
                     integral=None if integrand is None else out.acc)


def tolerance_kwargs(ode: ODESettings, tols: tuple[Any, Any, Any]) -> dict[str, Any]:
    """:func:`integrate`'s ``rtol``, ``atol``, ``max_steps`` keywords from traced ``tols``
    (``atol`` None where ``ode`` lets it follow the state's scale)."""
    rtol, atol, max_steps = tols
    return dict(rtol=rtol, atol=None if ode.atol is None else atol, max_steps=max_steps)


def highest_precision(f):
    """Trace ``f`` with full-precision matrix products (accelerators default to reduced
    precision, e.g. TF32, which the accuracy target cannot afford)."""
    @functools.wraps(f)
    def wrapped(*args, **kwargs):
        with jax.default_matmul_precision("highest"):
            return f(*args, **kwargs)
    return wrapped


def check_reached(success: Any, n_steps: Any, t_final: Any, times: Any, max_steps: int) -> None:
    """ValueError, with what to change, where an integration stopped before ``times[-1]``."""
    if not bool(success):
        raise ValueError(
            f"The integration stopped at t = {float(t_final):.6g} < {float(times[-1]):.6g} after "
            f"{int(n_steps)} steps (max_steps = {max_steps}). Raise max_steps, loosen rtol, "
            f"or shorten the time span; a NaN in the state (divergence) also stops it."
        )
