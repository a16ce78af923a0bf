"""When a training run records, and what it records: record steps and the eigenvalues of C.

The theory's observables change on time scales from ``1/(8 γ_1)`` to
``ln(1/λ(0)) / (8 γ_d)`` (see THEORY.md), so a run records at log-spaced steps: step 0,
then integer steps spread evenly in ``log(step)`` up to the last step. Optionally also
every ``record_every`` steps (for linear-time plots).

What is recorded at a step is the Barlow Twins cross-correlation of the embeddings,
``C = Fᵀ Z F / (2n)`` with ``F: (2n, d)`` in the pairing order ``[x_1..x_n, x'_1..x'_n]``
and ``Z`` the half swap, summarised by its eigenvalues in descending order.

Example::

    >>> record_steps(1000, 5).tolist()
    [0, 1, 6, 32, 178, 1000]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from stepwise_ntk._checks import check_positive_int
from stepwise_ntk.losses import cross_correlation

__all__ = ["cross_correlation_eigenvalues", "record_steps"]


def record_steps(steps: int, n_records: int, record_every: int | None = None) -> np.ndarray:
    """Sorted distinct steps in ``[0, steps]`` at which a run records its observables.

    Always contains 0 and ``steps``. ``n_records`` further points are spread evenly in
    ``log(step)`` over ``[1, steps]`` and rounded to integers (duplicates at small steps
    collapse, so fewer than ``n_records + 1`` steps may come back). ``record_every=k``
    adds every k-th step.

    Args:
      steps: number of optimisation steps of the run (>= 0).
      n_records: number of log-spaced points (>= 1).
      record_every: optional spacing of additional evenly spaced records (>= 1).

    Returns:
      ``(R,)`` int64 array, strictly increasing, first 0, last ``steps``.
    """
    steps = check_positive_int("steps", steps, allow_zero=True)
    check_positive_int("n_records", n_records)
    if record_every is not None:
        check_positive_int("record_every", record_every, hint=" or None")
    points = [np.array([0, steps], dtype=np.int64)]
    if steps >= 1:
        points.append(np.rint(np.geomspace(1.0, float(steps), int(n_records))).astype(np.int64))
    if record_every is not None:
        points.append(np.arange(0, steps + 1, int(record_every), dtype=np.int64))
    return np.unique(np.concatenate(points))


def cross_correlation_eigenvalues(F: jax.Array) -> jax.Array:
    """Eigenvalues of ``C = Fᵀ Z F / (2n)`` in descending order: ``(d,)`` for ``F: (2n, d)``."""
    return jnp.linalg.eigvalsh(cross_correlation(F))[::-1]
