"""Parameter-space reference: plain gradient descent on the linear model ``f(x) = W x``.

The paper's CIFAR-10 experiment trains ``W ∈ R^{d×m}`` on the flattened views with full-batch
gradient descent, ``W ← W − η ∇_W L(X Wᵀ)``, and plots against the effective time
``t = η × step``. As ``η → 0`` this is the gradient flow ``dW/dt = −∇_W L``, i.e. the kernel
model with ``K = X Xᵀ`` (``dF/dt = X dWᵀ/dt = −X Xᵀ ∇_F L``); at finite ``η`` the
trajectory differs by ``O(η)`` (Euler's method), which makes it an independent check of
the solvers: its error must shrink linearly with the learning rate.

Example::

    >>> import jax, jax.numpy as jnp
    >>> X = jax.random.normal(jax.random.key(0), (20, 6))          # 10 pairs, 6 features
    >>> W0 = 1e-3 * jax.random.normal(jax.random.key(1), (2, 6))
    >>> traj = linear_gd(X, 10, W0, 0.01, jnp.array([0.0, 1.0, 2.0]))
    >>> traj.eigenvalues.shape
    (3, 2)
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from stepwise_ntk._checks import check_array, check_n_pairs, check_number, check_times, float_dtype
from stepwise_ntk.data import pair_gram, swap_pairs
from stepwise_ntk.losses import barlow_twins_loss, resolve_loss
from stepwise_ntk.solver._trajectory import SolveStats, Trajectory

__all__ = ["linear_gd"]


def _barlow_twins_grad(F):
    """``∂L/∂F = (2/n) Z F (C − I)`` (docs/theory.md; checked against ``jax.grad`` in the tests)."""
    n = F.shape[0] // 2
    C = pair_gram(F) / F.shape[0]
    return (2.0 / n) * swap_pairs(F) @ (C - jnp.eye(C.shape[0], dtype=C.dtype))


class _GDConfig(NamedTuple):
    loss: Callable
    has_test: bool


@functools.partial(jax.jit, static_argnames=("cfg",))
def _run(cfg: _GDConfig, X, W0, lr, record_steps, X_test):
    if cfg.loss is barlow_twins_loss:
        grad = _barlow_twins_grad  # closed form: fewer, larger ops in the inner loop
    else:
        grad = jax.grad(cfg.loss)

    def observe(W):
        F = X @ W.T
        C = pair_gram(F) / F.shape[0]
        out = (cfg.loss(F), jnp.linalg.eigvalsh(C)[::-1])
        if cfg.has_test:
            out = out + (X_test @ W.T,)
        return out

    def gd_step(_, W):
        return W - lr * (grad(X @ W.T).T @ X)

    def segment(carry, target):
        step, W = carry
        W = jax.lax.fori_loop(step, target, gd_step, W)  # steps up to the next record
        return (target, W), observe(W)

    (_, W), recorded = jax.lax.scan(segment, (jnp.asarray(0, record_steps.dtype), W0), record_steps)
    return recorded, W


def _check_inputs(X: jax.Array, W0: jax.Array, n_pairs: int) -> tuple[jax.Array, jax.Array]:
    """``X: (2n, m)`` and ``W0: (d, m)``: finite, one float dtype (float32 or float64)."""
    x_shape = f"(2n, m) = ({2 * n_pairs}, m) flattened views"
    check_array("X", X, ndim=2, what=x_shape, hint="pass finite inputs.")
    if X.shape[0] != 2 * n_pairs:
        raise ValueError(f"X must be {x_shape}, got shape {X.shape}.")
    w_shape = f"(d, m) with m = {X.shape[1]} (X's features)"
    check_array("W0", W0, ndim=2, min_rows=1, what=w_shape, hint="pass finite initial weights.")
    if W0.shape[1] != X.shape[1]:
        raise ValueError(f"W0 must be {w_shape}, got shape {W0.shape}.")
    if float_dtype(X, "X") != W0.dtype:
        raise ValueError(f"X and W0 must share a float dtype, got {X.dtype} and {W0.dtype}.")
    return X, W0


def linear_gd(
    X: Any,
    n_pairs: int,
    W0: Any,
    learning_rate: float,
    times: Any,
    *,
    loss: str | Callable[[jax.Array], jax.Array] = "barlow_twins",
    X_test: Any = None,
) -> Trajectory:
    """Full-batch gradient descent on ``f(x) = W x``, observed at effective times ``η · step``.

    Args:
      X: ``(2n, m)`` flattened views ``[x_1..x_n, x'_1..x'_n]``.
      n_pairs: ``n``.
      W0: ``(d, m)`` initial weights (same dtype as X).
      learning_rate: ``η > 0``.
      times: ``(T,)`` increasing effective times ≥ 0; each is rounded to the nearest step
        ``round(t / η)``, and those steps must be distinct.
      loss: a name in :data:`stepwise_ntk.losses.LOSSES` or a callable ``F -> scalar``.
      X_test: optional ``(m_test, m)`` inputs whose embeddings ``X_test Wᵀ`` are recorded.

    Returns:
      :class:`Trajectory` with ``method="gradient_descent"``; ``times`` are the effective
      times actually observed (``η · step``); ``embeddings`` are ``X Wᵀ`` at the last step;
      ``stats.n_steps`` the number of steps.

    Raises:
      TypeError: a non-int ``n_pairs``, a non-number ``learning_rate``, a ``loss`` that is
        neither a name nor a callable.
      ValueError: bad shapes or dtypes, NaN/Inf, bad times, or times that round to the same
        step.
    """
    n_pairs = check_n_pairs(n_pairs)
    X, W0 = _check_inputs(jnp.asarray(X), jnp.asarray(W0), n_pairs)
    check_number("learning_rate", learning_rate, low=0.0, open_low=True)
    t = np.asarray(times, dtype=np.float64)
    check_times(t, X.dtype)
    steps = np.rint(t / learning_rate).astype(np.int64)
    if np.any(np.diff(steps) <= 0):
        raise ValueError(
            f"With learning_rate = {learning_rate:g} some requested times round to the same step; "
            f"use a smaller learning rate or coarser times."
        )
    loss = resolve_loss(loss)
    has_test = X_test is not None
    if has_test:
        X_test = jnp.asarray(X_test)
        what = f"(m_test, {X.shape[1]}) with dtype {X.dtype}"
        check_array("X_test", X_test, ndim=2, what=what)
        if X_test.shape[1] != X.shape[1] or X_test.dtype != X.dtype:
            raise ValueError(f"X_test must be {what}, got {X_test.shape} {X_test.dtype}.")
    cfg = _GDConfig(loss=loss, has_test=has_test)
    bufs, W = _run(cfg, X, W0, jnp.asarray(learning_rate, X.dtype), jnp.asarray(steps), X_test)
    n = jnp.asarray(int(steps[-1]))
    zero = jnp.asarray(0.0, X.dtype)
    stats = SolveStats(n_steps=n, n_rejected=jnp.asarray(0), n_rhs=n, success=jnp.asarray(True),
                       n_modes=jnp.asarray(X.shape[1]), truncation_bound=zero, truncation_embedding_bound=zero,
                       jitter=zero, n_devices=jnp.asarray(1))
    return Trajectory(times=jnp.asarray(steps * learning_rate, X.dtype), loss=bufs[0], eigenvalues=bufs[1],
                      embeddings=X @ W.T, test_embeddings=bufs[2] if has_test else None, stats=stats,
                      method="gradient_descent", integrator="gd", reason="requested")
