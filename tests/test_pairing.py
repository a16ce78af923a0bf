"""Pair-swap products and input checks against a dense Z built in numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stepwise_ntk._checks import check_embeddings, check_kernel, check_n_pairs, check_times
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
    np.testing.assert_allclose(np.asarray(pair_gram(jnp.asarray(A), jnp.asarray(B))), A.T @ Z @ B, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(np.asarray(pair_gram(jnp.asarray(A))), A.T @ Z @ A, rtol=1e-13, atol=1e-13)


def test_swap_is_an_involution_and_works_under_jit():
    A = jax.random.normal(jax.random.key(0), (10, 3))
    np.testing.assert_array_equal(np.asarray(jax.jit(swap_pairs)(swap_pairs(A))), np.asarray(A))


def test_check_n_pairs():
    assert check_n_pairs(np.int64(4)) == 4
    for bad in (0, -1):
        with pytest.raises(ValueError, match="n_pairs must be a positive integer"):
            check_n_pairs(bad)
    for bad in (2.5, True, "3"):  # not an integer at all: a wrong type
        with pytest.raises(TypeError, match="n_pairs must be a positive integer"):
            check_n_pairs(bad)


def _psd(n, seed=0, dtype=np.float64):
    x = np.random.default_rng(seed).normal(size=(2 * n, 5))
    return (x @ x.T).astype(dtype)


def test_check_kernel_accepts_good_and_rejects_bad():
    K = _psd(3)
    assert check_kernel(K, 3).shape == (6, 6)
    with pytest.raises(ValueError, match="square"):
        check_kernel(K[:, :5], 3)
    with pytest.raises(ValueError, match=r"n_pairs=4 needs \(8, 8\)"):
        check_kernel(K, 4)
    bad = K.copy()
    bad[0, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        check_kernel(bad, 3)
    bad = K.copy()
    bad[0, 1] += 1e-3 * np.abs(K).max()
    with pytest.raises(ValueError, match="not symmetric"):
        check_kernel(bad, 3)
    with pytest.raises(ValueError, match="float32 or float64"):
        check_kernel(K.astype(np.int32), 3)
    # Round-off-level asymmetry (float32 kernels computed in blocks) is accepted.
    K32 = _psd(3, dtype=np.float32)
    K32[0, 1] *= 1 + 1e-6
    check_kernel(K32, 3)


def test_check_embeddings():
    F = np.zeros((6, 2))
    assert check_embeddings(F, 3).shape == (6, 2)
    with pytest.raises(ValueError, match="has 6 rows but the kernel has 2n = 8"):
        check_embeddings(F, 4)
    with pytest.raises(ValueError, match=r"\(2n, d\) matrix"):
        check_embeddings(np.zeros(6), 3)
    with pytest.raises(ValueError, match="dtype float32 but the kernel has dtype float64"):
        check_embeddings(F.astype(np.float32), 3, dtype=np.float64)
    F[2, 1] = np.inf
    with pytest.raises(ValueError, match="NaN or Inf"):
        check_embeddings(F, 3)


def test_check_times():
    t = check_times([0.0, 1.0, 10.0], jnp.float64)
    assert t.dtype == jnp.float64
    with pytest.raises(ValueError, match="strictly increasing"):
        check_times([1.0, 1.0, 2.0], jnp.float64)
    with pytest.raises(ValueError, match="strictly increasing"):
        check_times([1.0, 3.0, 2.0], jnp.float64)
    with pytest.raises(ValueError, match="≥ 0"):
        check_times([-1.0, 2.0], jnp.float64)
    with pytest.raises(ValueError, match="NaN or Inf"):
        check_times([1.0, np.nan], jnp.float64)
    with pytest.raises(ValueError, match="non-empty 1-D"):
        check_times(np.zeros((2, 2)), jnp.float64)
