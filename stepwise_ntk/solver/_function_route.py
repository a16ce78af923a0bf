"""The function route of :func:`stepwise_ntk.solver.solve` (any loss): ``F`` itself integrated with
Dormand–Prince, one product with ``K`` per right-hand side, ``K`` optionally sharded by rows
over the local devices (entry :func:`solve_function`)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from stepwise_ntk.data import pair_gram
from stepwise_ntk.losses import loss_gradient
from stepwise_ntk.solver._galerkin import check_psd, smallest_eigenvalue_bound
from stepwise_ntk.solver._integrate import ODESettings, check_reached, highest_precision, integrate, tolerance_kwargs
from stepwise_ntk.solver._progress import progress_bar, report
from stepwise_ntk.solver._trajectory import SolveStats, Trajectory

__all__ = ["solve_function", "use_sharding"]


class _FunctionConfig(NamedTuple):
    loss: Callable
    ode: ODESettings
    has_test: bool
    progress: bool


@functools.partial(jax.jit, static_argnames=("cfg",))
@highest_precision
def _function_integrate(cfg: _FunctionConfig, K, F0, times, K_test, F0_test, tols):
    grad = loss_gradient(cfg.loss)
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
                    report=report if cfg.progress else None, **tolerance_kwargs(cfg.ode, tols))
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


def use_sharding(shard: bool | None, N: int, devices: list) -> bool:
    """Whether the function route shards ``K``'s rows (``SolverSettings.shard``; None: auto)."""
    if shard is None:
        return len(devices) > 1 and N % len(devices) == 0
    if shard and N % len(devices) != 0:
        raise ValueError(
            f"shard=True needs 2n = {N} divisible by the {len(devices)} local devices; "
            f"use a multiple of {len(devices)} views or shard=None."
        )
    return bool(shard)


def solve_function(K, F0, times, K_test, F0_test, settings, loss_fn, reason, shard, devices, n_dev, progress):
    """The function route (:mod:`stepwise_ntk.solver._solve`): ``K`` checked PSD by a Lanczos
    bound, sharded by rows where ``shard``, ``F`` integrated with Dormand–Prince."""
    theta_min, theta_max = smallest_eigenvalue_bound(K)
    check_psd(theta_min, theta_max, K, estimate=True)
    if shard:
        K, F0, K_test, F0_test = _shard_rows([(K, True), (F0, False), (K_test, True), (F0_test, False)], devices)
    cfg = _FunctionConfig(loss=loss_fn, ode=settings.ode, has_test=K_test is not None, progress=progress)
    with progress_bar(times.shape[0], "solve: function route", progress):
        loss, lam, F_T, test, st = jax.block_until_ready(
            _function_integrate(cfg, K, F0, times, K_test, F0_test, settings.tolerances(K.dtype)))
    check_reached(st.success, st.n_steps, st.t_final, times, settings.max_steps)
    stats = SolveStats(
        n_steps=st.n_steps, n_rejected=st.n_rejected, n_rhs=st.n_rhs, n_w=st.n_w, success=st.success,
        n_modes=jnp.asarray(K.shape[0]), truncation_bound=jnp.asarray(0.0, K.dtype),
        truncation_embedding_bound=jnp.asarray(0.0, K.dtype), jitter=jnp.asarray(0.0, K.dtype),
        n_devices=jnp.asarray(n_dev),
    )
    return Trajectory(times=times, loss=loss, eigenvalues=lam, embeddings=F_T, test_embeddings=test,
                      stats=stats, method="function", integrator="dopri5", reason=reason)
