"""``Lᵀ Z L`` from the blocks of a lower-triangular ``L``: the matrix whose eigensystem is
the contrastive one (docs/theory.md, *How it is computed*)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["PairGramOperator", "pair_gram_apply", "pair_gram_of_factor", "pair_gram_operator"]


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


class PairGramOperator(NamedTuple):
    """``V ↦ Lᵀ Z L V / (2n)`` without forming it: four blocks of lower-triangular ``L``,
    copied once so that every product is an untransposed matrix product (a pytree).

    With ``L = [[L11, 0], [L21, L22]]`` and ``V = [V1; V2]``: ``Z L V = [a; c]``,
    ``a = [L21, L22] V``, ``c = L11 V1``, and ``Lᵀ [a; c] = [[L11ᵀ, L21ᵀ] [a; c]; L22ᵀ c]``.
    On CPU, products with transposed or sliced operands of ``L`` ran at a quarter to a half
    of the matrix-product rate (2 cores, 2n = 9,320, 32-64 columns: 20-28 against
    about 100 GFlop/s), so the blocks are stored as the products read them
    (``1.5 (2n)²`` numbers, formed in well under a second at 9,320); the products do
    ``12 n² b`` flops for ``b`` columns, twice the triangular count, and still take half
    the time.

    Attributes:
      bottom: ``(n, 2n)`` ``[L21, L22]``.
      L11: ``(n, n)``.
      left_T: ``(n, 2n)`` ``[L11ᵀ, L21ᵀ]``.
      L22_T: ``(n, n)``.
    """

    bottom: jax.Array
    L11: jax.Array
    left_T: jax.Array
    L22_T: jax.Array


@jax.jit
def pair_gram_operator(L: jax.Array) -> PairGramOperator:
    """:class:`PairGramOperator` of lower-triangular ``L: (2n, 2n)``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> L = jnp.tril(jax.random.normal(jax.random.key(0), (6, 6)))
        >>> V = jax.random.normal(jax.random.key(1), (6, 2))
        >>> H = pair_gram_of_factor(L) / 6
        >>> bool(jnp.allclose(pair_gram_apply(pair_gram_operator(L), V), H @ V, atol=1e-5))
        True
    """
    n = L.shape[0] // 2
    return PairGramOperator(bottom=L[n:, :], L11=L[:n, :n], left_T=L[:, :n].T, L22_T=L[n:, n:].T)


def pair_gram_apply(op: PairGramOperator, V: jax.Array) -> jax.Array:
    """``H V = Lᵀ Z L V / (2n)`` for ``V: (2n, b)`` (``12 n² b`` flops; jit-able)."""
    n = op.L11.shape[0]
    a = op.bottom @ V
    c = op.L11 @ V[:n]
    return jnp.concatenate([op.left_T @ jnp.concatenate([a, c]), op.L22_T @ c]) / (2 * n)
