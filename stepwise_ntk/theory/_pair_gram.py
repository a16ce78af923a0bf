"""``Lᵀ Z L`` from the blocks of a lower-triangular ``L``: the matrix whose eigensystem is
the contrastive one (docs/theory.md, *How it is computed*)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["pair_gram_of_factor"]


def pair_gram_of_factor(L: jax.Array) -> jax.Array:
    """``Lᵀ Z L`` for lower-triangular ``L`` from its blocks (``2n³`` instead of ``8n³`` flops).

    With ``L = [[L11, 0], [L21, L22]]``: ``Lᵀ Z L = [[A + Aᵀ, B], [Bᵀ, 0]]``,
    ``A = L11ᵀ L21``, ``B = L11ᵀ L22``.
    """
    n = L.shape[0] // 2
    L11, L21, L22 = L[:n, :n], L[n:, :n], L[n:, n:]
    A = L11.T @ L21
    B = L11.T @ L22
    top = jnp.concatenate([A + A.T, B], axis=1)
    bottom = jnp.concatenate([B.T, jnp.zeros_like(L22)], axis=1)
    return jnp.concatenate([top, bottom], axis=0)
