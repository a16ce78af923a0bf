"""What the solvers return: :class:`Trajectory` (a pytree) and :class:`SolveStats`.

Example::

    >>> traj = solve(K, n_pairs, F0, times)            # doctest: +SKIP
    >>> traj.eigenvalues.shape, traj.method            # doctest: +SKIP
    ((200, 8), 'eigen')
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax

__all__ = ["SolveStats", "Trajectory"]


class SolveStats(NamedTuple):
    """Cost and accuracy bookkeeping of one solve (scalars; -1 / 0 where not applicable).

    Attributes:
      n_steps, n_rejected, n_rhs: accepted / rejected time steps and right-hand sides
        (for gradient descent: steps taken, 0, steps taken).
      n_w: preparations of ROS34PW2's ``W`` (its structured Jacobian, at the start and after
        rejected steps; :class:`~stepwise_ntk.solver.ODEStats`) in the integration the step
        counts are from; 0 for DOPRI5 and gradient descent.
      success: the integration reached the last requested time.
      n_modes: modes integrated (eigen route; ``2n`` otherwise).
      truncation_bound: eigen route: a posteriori bound on ``‖ΔC‖₂`` (so, by Weyl, on every
        embedding eigenvalue) from the modes that were not integrated one by one (held at
        their initial value, or carried by quadrature pseudo-modes); 0 when none were.
      truncation_embedding_bound: the matching bound on ``‖ΔF‖_F`` of the final embeddings.
      jitter: ``τ`` used in the factorisation of ``K + τ I`` (eigen route; with a low-rank
        eigensystem ``τ`` plus the dropped Cholesky columns' squared norms, a bound on how far
        the solved kernel is from ``K``), else 0.
      n_devices: devices ``K`` was sharded over (function route), else 1.
      error_estimate: estimate of ``max_{t, j} |λ_j(t) − λ_j^exact(t)|`` over the requested
        times (the time-integration estimate plus ``truncation_bound``, plus on the eigen
        route the effect of the ``γ`` errors: a partial eigensystem's residuals and the
        ``jitter``); NaN where the route does not estimate it.
      n_eigen_modes: eigen route: modes of the contrastive eigensystem computed (``2n``
        for the full decomposition, fewer for the partial one), else -1.
      eigen_residual: eigen route: the largest residual ``‖H p − γ p‖₂`` of the partial
        eigensystem's modes (0 for the full decomposition), else NaN.
      n_quadrature_modes: eigen route: how many of the ``n_modes`` are pseudo-modes that carry
        the other modes (block Gauss quadrature; ``truncation_bound`` is then its bound), else 0.
    """

    n_steps: Any
    n_rejected: Any
    n_rhs: Any
    success: Any
    n_modes: Any
    truncation_bound: Any
    truncation_embedding_bound: Any
    jitter: Any
    n_devices: Any
    error_estimate: Any = float("nan")
    n_eigen_modes: Any = -1
    eigen_residual: Any = float("nan")
    n_quadrature_modes: Any = 0
    n_w: Any = 0


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Trajectory:
    """Observables of a gradient-flow trajectory at the requested times.

    Attributes:
      times: ``(T,)`` the requested (effective) times.
      loss: ``(T,)`` the loss at those times.
      eigenvalues: ``(T, d)`` eigenvalues of ``C = Fᵀ Z F / (2n)``, descending.
      embeddings: ``(2n, d)`` embeddings of the views at ``times[-1]``.
      test_embeddings: ``(T, m, d)`` embeddings of the test inputs at every time, or None.
      stats: :class:`SolveStats`.
      method: ``"eigen"``, ``"function"`` or ``"gradient_descent"`` (static metadata).
      integrator: ``"dopri5"``, ``"rosw"`` or ``"gd"`` (static metadata).
      reason: why ``method`` was chosen (static metadata; the cost model's estimate when
        ``method="auto"``).
    """

    times: jax.Array
    loss: jax.Array
    eigenvalues: jax.Array
    embeddings: jax.Array
    test_embeddings: jax.Array | None
    stats: SolveStats
    method: str = dataclasses.field(default="", metadata=dict(static=True))
    integrator: str = dataclasses.field(default="", metadata=dict(static=True))
    reason: str = dataclasses.field(default="", metadata=dict(static=True))
