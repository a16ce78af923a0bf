"""Pair-swap products against a dense Z built in numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stepwise_ntk.data import pair_gram, swap_pairs


def dense_Z(n):
    Z = np.zeros((2 * n, 2 * n))
    Z[np.arange(n), n + np.arange(n)] = 1.0
    Z[n + np.arange(n), np.arange(n)] = 1.0
    return Z


@pytest.mark.parametrize("n,d", [(1, 1), (3, 2), (7, 5)])
def test_swap_and_gram_match_dense_Z(n, d):
    rng = np.random.default_rng(n * 10 + d)
    A = rng.normal(size=(2 * n, d))
    B = rng.normal(size=(2 * n, d + 1))
    Z = dense_Z(n)
    # Exact permutations / sums of products: only round-off differences allowed.
    np.testing.assert_array_equal(np.asarray(swap_pairs(jnp.asarray(A))), Z @ A)
    np.testing.assert_allclose(np.asarray(pair_gram(jnp.asarray(A), jnp.asarray(B))), A.T @ Z @ B,
                               rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(np.asarray(pair_gram(jnp.asarray(A))), A.T @ Z @ A, rtol=1e-13, atol=1e-13)


def test_swap_is_an_involution_and_works_under_jit():
    A = jax.random.normal(jax.random.key(0), (10, 3))
    np.testing.assert_array_equal(np.asarray(jax.jit(swap_pairs)(swap_pairs(A))), np.asarray(A))
