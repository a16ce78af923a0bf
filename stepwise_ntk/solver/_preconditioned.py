"""The spectrally preconditioned flow ``dF/dt = −K ∇_F L(F) · P(C)`` of the kernel model.

``P(C)`` is a :class:`stepwise_ntk.theory.Preconditioner` (``(C₊ + εI)^(−k)``), a function of
the cross-correlation ``C = Fᵀ Z F/(2n)``, applied on the right: it rescales each
eigendirection of ``C`` in embedding space and leaves the kernel (the sample space)
alone. Two routes, one :class:`Trajectory`, as for :func:`stepwise_ntk.solver.solve`:

``method="eigen"`` (Barlow Twins). With ``F = L P Mᵀ`` (the contrastive eigenbasis,
:func:`stepwise_ntk.theory.contrastive_eigensystem`) the flow is
``dM/dt = −4 p(C)(C − I) M Γ``, ``C = M Γ Mᵀ`` (``p(C)`` commutes with ``C``), ``O(d² N)``
per right-hand side. Every mode is integrated (no truncation: the preconditioner speeds
up the small modes too, so the plain flow's a-priori bound does not apply).

``method="function"`` (any loss). Integrates ``F`` with ``dF/dt = −K (∇_F L) P(C)``, one
``(N × N)·(N × d)`` product and one ``d × d`` eigendecomposition per right-hand side. The
only route for ``precond.part == "invariant"`` (``P`` on the pair mean of the gradient,
:func:`stepwise_ntk.theory.preconditioned_gradient`), which the eigenbasis does not reduce
unless ``K`` commutes with the pair swap.

Both use DOPRI5 (:func:`stepwise_ntk.solver.integrate`). The preconditioned flow is stiffer
than the plain one while directions of ``C`` are still near 0 (rates up to ``4|γ| p(0)``),
which an explicit method resolves in ``O(γ_1 T p(0))`` steps, a few hundred for
``ε = 10⁻²``.

Example::

    >>> import jax, jax.numpy as jnp
    >>> from stepwise_ntk.theory import Preconditioner
    >>> X = jax.random.normal(jax.random.key(0), (40, 30))
    >>> X = X.at[20:].set(X[:20] + 0.3 * X[20:])
    >>> F0 = 1e-3 * jax.random.normal(jax.random.key(1), (40, 3))
    >>> traj = solve_preconditioned(X @ X.T / 30, 20, F0, jnp.geomspace(1e-2, 1e2, 20),
    ...                             precond=Preconditioner("inverse", eps=1e-2))
    >>> traj.eigenvalues.shape, traj.method
    ((20, 3), 'eigen')
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from stepwise_ntk._checks import (
    check_bool,
    check_choice,
    check_embeddings,
    check_kernel,
    check_n_pairs,
    check_test_embeddings,
    check_test_kernel,
    check_times,
    check_type,
)
from stepwise_ntk.losses import barlow_twins_loss, cross_correlation, resolve_loss
from stepwise_ntk.solver._integrate import ODESettings, integrate, tolerance_kwargs
from stepwise_ntk.solver._jitter import flow_factor
from stepwise_ntk.solver._progress import progress_bar, report
from stepwise_ntk.solver._settings import SolverSettings
from stepwise_ntk.solver._trajectory import SolveStats, Trajectory
from stepwise_ntk.theory import (
    Preconditioner,
    check_enough_modes,
    contrastive_eigensystem_from_factor,
    precondition_matrix,
    preconditioned_gradient,
)

__all__ = ["PRECONDITIONED_METHODS", "solve_preconditioned"]

PRECONDITIONED_METHODS = ("auto", "eigen", "function")
_INVERSE = Preconditioner("inverse", eps=1e-2)
_SETTINGS = SolverSettings()


class _Config(NamedTuple):
    precond: Preconditioner
    ode: ODESettings
    has_test: bool
    loss: Callable | None = None
    progress: bool = False  # report filled output times to the host (solver/_progress.py)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _eigen(cfg: _Config, gammas, factor, vectors, F0, times, K_test, F0_test, tols):
    d = F0.shape[1]
    eye = jnp.eye(d, dtype=F0.dtype)
    B0 = jax.scipy.linalg.solve_triangular(factor, F0, lower=True)
    M0 = (vectors.T @ B0).T

    def rhs(t, M, args):
        MG = M * gammas
        C = MG @ M.T
        return -4.0 * (precondition_matrix(C, cfg.precond) @ (C - eye)) @ MG

    if cfg.has_test:
        G_test = jax.scipy.linalg.solve_triangular(factor, K_test.T, lower=True).T @ vectors

    def observe(M, args):
        C = (M * gammas) @ M.T
        out = (jnp.sum(jnp.square(C - eye)), jnp.linalg.eigvalsh(C)[::-1])
        if cfg.has_test:
            out = out + (F0_test + G_test @ (M - M0).T,)
        return out

    res = integrate(rhs, M0, times, None, observe=observe, settings=cfg.ode, method="dopri5",
                    report=report if cfg.progress else None, **tols)
    F_T = F0 + factor @ (vectors @ (res.y_final - M0).T)
    return res.observed, F_T, res.stats


@functools.partial(jax.jit, static_argnames=("cfg",))
def _function(cfg: _Config, K, F0, times, K_test, F0_test, tols):
    grad = jax.grad(cfg.loss)

    def rhs(t, y, args):
        F = y[0]
        G = preconditioned_gradient(grad(F), cross_correlation(F), cfg.precond)
        out = (-(K @ G),)
        if cfg.has_test:
            out = out + (-(K_test @ G),)
        return out

    def observe(y, args):
        F = y[0]
        out = (cfg.loss(F), jnp.linalg.eigvalsh(cross_correlation(F))[::-1])
        if cfg.has_test:
            out = out + (y[1],)
        return out

    y0 = (F0,) + ((F0_test,) if cfg.has_test else ())
    res = integrate(rhs, y0, times, None, observe=observe, settings=cfg.ode, method="dopri5",
                    report=report if cfg.progress else None, **tols)
    return res.observed, res.y_final[0], res.stats


def solve_preconditioned(
    K: Any,
    n_pairs: int,
    F0: Any,
    times: Any,
    *,
    precond: Preconditioner = _INVERSE,
    loss: str | Callable[[jax.Array], jax.Array] = "barlow_twins",
    loss_kwargs: dict | None = None,
    method: str = "auto",
    K_test: Any = None,
    F0_test: Any = None,
    settings: SolverSettings = _SETTINGS,
    progress: bool = False,
) -> Trajectory:
    """The preconditioned gradient flow ``dF/dt = −K ∇_F L(F) · P(C)`` from ``F(0) = F0``.

    ``P = precond`` (:class:`stepwise_ntk.theory.Preconditioner`); ``Preconditioner("none")``
    is the plain flow of :func:`stepwise_ntk.solver.solve` (the same trajectory, a
    cross-check). The closed forms are
    :func:`stepwise_ntk.theory.preconditioned_step_times` and
    :func:`stepwise_ntk.theory.preconditioned_aligned_eigenvalues`.

    Args:
      K: ``(2n, 2n)`` PSD kernel of the views ``[x_1..x_n, x'_1..x'_n]``.
      n_pairs: ``n``.
      F0: ``(2n, d)`` initial embeddings (same dtype as ``K``).
      times: ``(T,)`` strictly increasing output times ≥ 0 (effective time).
      precond: the preconditioner.
      loss: ``"barlow_twins"``, ``"simclr"``, ``"vicreg"`` or a callable ``F -> scalar``.
      loss_kwargs: keyword arguments of a named loss.
      method: ``"auto"`` (eigen for Barlow Twins with ``precond.part == "all"``, else
        function), ``"eigen"`` or ``"function"``.
      K_test: optional ``(m, 2n)`` kernel between test inputs and the views.
      F0_test: optional ``(m, d)`` initial test embeddings (default 0).
      settings: :class:`SolverSettings` (``rtol``, ``atol``, ``max_steps``,
        ``jitter_rtol`` are used, and ``accuracy`` for the jitter, :mod:`._jitter`; the
        integrator is DOPRI5 and no mode is truncated).
      progress: show a tqdm bar over the output times (as :func:`stepwise_ntk.solver.solve`).

    Returns:
      :class:`Trajectory` (``reason`` names the preconditioner).

    Raises:
      TypeError, ValueError: as :func:`stepwise_ntk.solver.solve` (``method="eigen"`` with
        another loss than Barlow Twins; the integration not reaching the last time).
    """
    n_pairs = check_n_pairs(n_pairs)
    K = check_kernel(K, n_pairs)
    F0 = check_embeddings(F0, n_pairs, "F0", dtype=K.dtype)
    times = check_times(times, K.dtype)
    check_type("precond", precond, Preconditioner, "a Preconditioner (from stepwise_ntk.theory)")
    loss_fn = resolve_loss(loss, loss_kwargs=loss_kwargs)
    check_choice("method", method, PRECONDITIONED_METHODS)
    check_type("settings", settings, SolverSettings)
    progress = check_bool("progress", progress)
    is_bt = loss_fn is barlow_twins_loss
    if method == "auto":
        method = "eigen" if is_bt and precond.part == "all" else "function"
    if method == "eigen" and not is_bt:
        raise ValueError("method='eigen' solves the Barlow Twins loss only; use method='function' for this loss.")
    if method == "eigen" and precond.part != "all":
        raise ValueError(f"method='eigen' integrates a preconditioner of the whole gradient only; "
                         f"part={precond.part!r} needs method='function' (or 'auto').")
    has_test = K_test is not None
    if has_test:
        K_test = check_test_kernel(K_test, n_pairs, dtype=K.dtype)
        F0_test = jnp.zeros((K_test.shape[0], F0.shape[1]), K.dtype) if F0_test is None else F0_test
        F0_test = check_test_embeddings(F0_test, K_test.shape[0], F0.shape[1], dtype=K.dtype)
    elif F0_test is not None:
        raise ValueError("F0_test was given without K_test; pass K_test (m, 2n) as well.")
    tols = tolerance_kwargs(settings.ode, settings.tolerances(K.dtype))
    reason = f"preconditioned by {precond.describe()}"
    if method == "eigen":
        L, tau = flow_factor(K, settings.jitter_rtol, float(times[-1]), settings.accuracy)
        es = contrastive_eigensystem_from_factor(L, tau)
        check_enough_modes(es, F0.shape[1])
        cfg = _Config(precond, settings.ode, has_test, progress=progress)
        with progress_bar(times.shape[0], "solve_preconditioned: eigen route", progress):
            observed, F_T, st = jax.block_until_ready(
                _eigen(cfg, es.gammas, es.factor, es.vectors, F0, times, K_test, F0_test, tols))
        jitter, n_modes = es.jitter, K.shape[0]
    else:
        cfg = _Config(precond, settings.ode, has_test, loss_fn, progress)
        with progress_bar(times.shape[0], "solve_preconditioned: function route", progress):
            observed, F_T, st = jax.block_until_ready(_function(cfg, K, F0, times, K_test, F0_test, tols))
        jitter, n_modes = jnp.asarray(0.0, K.dtype), K.shape[0]
    if not bool(st.success):
        raise ValueError(
            f"The integration stopped at t = {float(st.t_final):.6g} < {float(times[-1]):.6g} after "
            f"{int(st.n_steps)} steps; raise settings.max_steps, loosen rtol, shorten the time span, "
            f"or raise the preconditioner's eps (a stiffer flow needs more steps)."
        )
    zero = jnp.asarray(0.0, K.dtype)
    stats = SolveStats(n_steps=st.n_steps, n_rejected=st.n_rejected, n_rhs=st.n_rhs, n_w=st.n_w, success=st.success,
                       n_modes=jnp.asarray(n_modes), truncation_bound=zero, truncation_embedding_bound=zero,
                       jitter=jitter, n_devices=jnp.asarray(1))
    return Trajectory(times=times, loss=observed[0], eigenvalues=observed[1], embeddings=F_T,
                      test_embeddings=observed[2] if has_test else None, stats=stats, method=method,
                      integrator="dopri5", reason=reason)
