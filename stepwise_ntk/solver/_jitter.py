"""The jittered Cholesky factor a flow in the contrastive eigenbasis starts from.

Both eigen routes (:func:`stepwise_ntk.solver.solve`'s and
:func:`stepwise_ntk.solver.solve_preconditioned`'s) solve the flow of ``K + τ I``, ``L Lᵀ =
K + τ I`` (:func:`stepwise_ntk.theory.jittered_cholesky`): ``τ`` moves each ``γ`` by
``≈ c τ/(2n)``, ``c`` of order 1 for a mode alike in both views and larger for the others,
and ``λ`` by up to ``8 T δγ``. The default ``τ = 2n · eps · max K_ii`` is far below any
accuracy in float64 but not in float32 over long horizons (CIFAR-10 linear kernel,
2n = 2000, d = 32: ``γ`` moved by up to ``100 eps γ_1`` and ``λ`` by 9.6e-3; a float64 solve
with float32's ``τ`` gives the same error).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from stepwise_ntk.theory import ContrastiveEigensystem, check_factorization, default_jitter_rtol, jittered_cholesky

__all__ = ["flow_factor"]


def flow_factor(K: jax.Array, jitter_rtol: float | None, t_end: float, accuracy: float) -> tuple[jax.Array, jax.Array]:
    """``(L, τ)`` with ``L Lᵀ = K + τ I`` for a flow until ``t_end`` within ``accuracy``, checked.

    ``jitter_rtol`` given: ``τ = jitter_rtol · max K_ii``. None: where the default
    ``2n · eps`` could move ``λ`` by more than ``accuracy / 10`` at ``c = 1``
    (``8 t_end τ / 2n``; float32 over long horizons, never at ordinary ones in float64),
    ``10 eps`` is tried first and the default kept for a kernel whose factorisation then
    fails. A factorisation that fails at the jitter used raises the PSD ValueError
    (:func:`~stepwise_ntk.theory.check_factorization`).

    Args:
      K: ``(2n, 2n)`` kernel; jitter_rtol: relative jitter or None; t_end: the last output
      time; accuracy: the solve's accuracy target.

    Example:
        >>> import jax.numpy as jnp
        >>> K = jnp.eye(16, dtype=jnp.float32)
        >>> L, tau = flow_factor(K, None, 1e4, 1e-3)  # 2n eps would move λ by ~1e-3 here
        >>> round(float(tau / jnp.finfo(jnp.float32).eps), 3)
        10.0
    """
    N = K.shape[0]
    dtype = K.dtype
    if jitter_rtol is None:
        jitter_rtol = default_jitter_rtol(N // 2, dtype)
        eps = float(np.finfo(np.dtype(dtype)).eps)
        tau_default = jitter_rtol * float(jnp.max(jnp.diagonal(K)))
        if 8.0 * t_end * tau_default / N > accuracy / 10.0 and 10.0 * eps < jitter_rtol:
            L, tau = jittered_cholesky(K, jnp.asarray(10.0 * eps, dtype))
            if bool(jnp.all(jnp.isfinite(jnp.diagonal(L)))):
                return L, tau
    L, tau = jittered_cholesky(K, jnp.asarray(jitter_rtol, dtype))
    check_factorization(ContrastiveEigensystem(jnp.diagonal(L), L, L, tau), K)
    return L, tau
