"""The pairing convention of the 2n views, and ``Z`` applied without building it.

All 2n views are stacked as ``X = [x_1 … x_n, x'_1 … x'_n]``: row ``i`` and row ``n + i``
are the two views of image ``i``. The pair-swap matrix ``Z`` (``Z[i, n+i] = Z[n+i, i] = 1``)
is never built: ``Z @ A`` is :func:`swap_pairs` (exchange the two halves of ``A``'s rows),
``O(n·d)`` instead of ``O(n²·d)``.

Example::

    >>> import jax.numpy as jnp
    >>> A = jnp.arange(8.0).reshape(4, 2)           # n = 2 pairs, d = 2
    >>> swap_pairs(A).tolist()
    [[4.0, 5.0], [6.0, 7.0], [0.0, 1.0], [2.0, 3.0]]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["pair_gram", "swap_pairs"]


def swap_pairs(A: jax.Array) -> jax.Array:
    """``Z @ A`` without building ``Z``: the two halves of ``A``'s rows exchanged.

    Args:
      A: ``(2n, ...)`` array in the pairing order.

    Returns:
      ``(2n, ...)`` array ``[A[n:], A[:n]]``.
    """
    n = A.shape[0] // 2
    return jnp.concatenate([A[n:], A[:n]], axis=0)


def pair_gram(F: jax.Array, G: jax.Array | None = None) -> jax.Array:
    """``Fᵀ Z G`` (``d × e``) from the two halves, without building ``Z``.

    ``Fᵀ Z G = F_aᵀ G_b + F_bᵀ G_a`` with ``F_a = F[:n]`` and ``F_b = F[n:]``; for
    ``G = F`` it is symmetric and equals ``2n · C`` (see :func:`cross_correlation`).

    Args:
      F: ``(2n, d)``.
      G: ``(2n, e)`` or None (then ``G = F``).
    """
    G = F if G is None else G
    n = F.shape[0] // 2
    return F[:n].T @ G[n:] + F[n:].T @ G[:n]
