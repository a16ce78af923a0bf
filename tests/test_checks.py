"""The shared input checks of stepwise_ntk._checks: TypeError for a wrong type, ValueError for a
wrong value, and messages that name the argument."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stepwise_ntk._checks import (
    check_bool,
    check_choice,
    check_embeddings,
    check_int,
    check_kernel,
    check_key,
    check_n_pairs,
    check_number,
    check_positive_int,
    check_test_embeddings,
    check_test_kernel,
    check_times,
    check_type,
)


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


@pytest.mark.parametrize("where", ["upper", "lower", "last block", "diagonal block"])
def test_kernel_symmetry_check_sees_every_entry(where):
    # 2n = 1100 spans three row blocks of the host check, the last one partial; the jitted
    # form (accelerators) and numpy's max|K − Kᵀ| are the references.
    from stepwise_ntk._checks import _finite_scale_asymmetry, _finite_scale_asymmetry_jit

    K = _psd(550, seed=1)
    i, j = {"upper": (3, 900), "lower": (1000, 20), "last block": (1099, 1030), "diagonal block": (600, 700)}[where]
    K[i, j] += 0.25
    ref = float(np.max(np.abs(K - K.T)))
    finite, scale, asym = _finite_scale_asymmetry(jnp.asarray(K))
    assert finite and asym == ref and abs(ref - 0.25) < 1e-12 and scale == float(np.max(np.abs(K)))
    jit = [float(v) for v in _finite_scale_asymmetry_jit(jnp.asarray(K))]
    assert jit == [1.0, scale, ref]
    for bad in (np.nan, np.inf, -np.inf):
        K2 = K.copy()
        K2[j, i] = bad
        assert not _finite_scale_asymmetry(jnp.asarray(K2))[0]
        assert not bool(_finite_scale_asymmetry_jit(jnp.asarray(K2))[0])


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


# ------------------------------------------------------------------------------ generic validators


def test_check_positive_int():
    assert check_positive_int("steps", np.int64(3)) == 3 and type(check_positive_int("steps", np.int64(3))) is int
    assert check_positive_int("pad", 0, allow_zero=True) == 0
    with pytest.raises(ValueError, match=r"^steps must be a positive integer, got 0\.$"):
        check_positive_int("steps", 0)
    with pytest.raises(ValueError, match="pad must be a non-negative integer"):
        check_positive_int("pad", -1, allow_zero=True)
    for bad in (1.0, "2", True, None):
        with pytest.raises(TypeError, match="steps must be a positive integer"):
            check_positive_int("steps", bad)


def test_check_int():
    assert check_int("n", 5, low=0, high=5) == 5
    assert check_int("n", -7) == -7  # no bounds
    with pytest.raises(ValueError, match=r"n must be an integer ≥ 0 and ≤ 5 \(why\), got 6\."):
        check_int("n", 6, low=0, high=5, hint=" (why)")
    with pytest.raises(ValueError, match="n must be an integer ≥ 1, got 0"):
        check_int("n", 0, low=1)
    for bad in (2.0, "3", False, np.float64(1.0)):
        with pytest.raises(TypeError, match="n must be an integer"):
            check_int("n", bad, low=0)


def test_check_number():
    assert check_number("rtol", 1e-6, low=0.0) == 1e-6
    assert check_number("rtol", 3, low=0.0) == 3.0 and type(check_number("rtol", 3)) is float
    assert check_number("x", np.float32(0.5), low=0, high=1) == 0.5
    with pytest.raises(ValueError, match=r"^learning_rate must be a finite number > 0.0, got 0.0\.$"):
        check_number("learning_rate", 0.0, low=0.0, open_low=True)
    with pytest.raises(ValueError, match="momentum must be a finite number ≥ 0 and < 1, got 1"):
        check_number("momentum", 1, low=0, high=1, open_high=True)
    for bad in (float("nan"), float("inf"), -1.0, 2.0):
        with pytest.raises(ValueError, match="^p must be a finite number"):
            check_number("p", bad, low=0, high=1)
    for bad in ("1e-6", None, True, [1.0], jnp.asarray(1.0)):
        with pytest.raises(TypeError, match="^rtol must be a real number"):
            check_number("rtol", bad, low=0.0)


def test_check_bool():
    assert check_bool("shard", True) is True
    assert check_bool("shard", np.bool_(False)) is False
    for bad in (1, 0, "yes", None):
        with pytest.raises(TypeError, match="^shard must be True or False"):
            check_bool("shard", bad)


def test_check_choice():
    assert check_choice("method", "eigen", ("auto", "eigen")) == "eigen"
    assert check_choice("crop", None, ("pad", None)) is None
    assert check_choice("loss", "simclr", {"simclr": 1, "vicreg": 2}) == "simclr"  # a mapping: its keys
    with pytest.raises(ValueError, match=r"^method must be one of 'auto', 'eigen'; got 'fast'\.$"):
        check_choice("method", "fast", ("auto", "eigen"))
    with pytest.raises(ValueError, match="method must be one of"):
        check_choice("method", ["eigen"], ("auto", "eigen"))  # unhashable: a wrong value, not a crash


def test_check_type():
    assert check_type("settings", 3, int) == 3
    assert check_type("x", 2.0, (int, float)) == 2.0
    with pytest.raises(TypeError, match="^settings must be SolverSettings, got dict\\.$"):
        check_type("settings", {}, type("SolverSettings", (), {}))
    with pytest.raises(TypeError, match="^x must be int or float, got str"):
        check_type("x", "2", (int, float))
    with pytest.raises(TypeError, match="^loss_kwargs must be a dict, got list"):
        check_type("loss_kwargs", [], dict, "a dict")


def test_check_key():
    key = jax.random.key(0)
    assert check_key(key) is key
    legacy = jax.random.PRNGKey(0)
    assert check_key(legacy) is legacy
    for bad in (0, np.zeros(2, np.uint32), jnp.zeros(3, jnp.uint32), None):
        with pytest.raises(TypeError, match="^key must be a JAX PRNG key"):
            check_key(bad)
    with pytest.raises(TypeError, match="^rng must be a JAX PRNG key"):
        check_key(1, "rng")


def test_check_test_kernel_and_embeddings():
    K_test = np.ones((3, 6))
    assert check_test_kernel(K_test, 3).shape == (3, 6)
    with pytest.raises(ValueError, match=r"K_test must be \(m, 2n\) = \(m, 8\)"):
        check_test_kernel(K_test, 4)
    with pytest.raises(ValueError, match=r"K_new must be \(m, 2n\)"):
        check_test_kernel(np.ones(6), 3, "K_new")
    with pytest.raises(ValueError, match="dtype float32 but K has float64"):
        check_test_kernel(K_test.astype(np.float32), 3, dtype=np.float64)
    with pytest.raises(ValueError, match="NaN or Inf"):
        check_test_kernel(np.full((3, 6), np.nan), 3)
    F = np.zeros((3, 2))
    assert check_test_embeddings(F, 3, 2).shape == (3, 2)
    with pytest.raises(ValueError, match=r"F0_test must be \(m, d\) = \(3, 4\) with dtype float64"):
        check_test_embeddings(F, 3, 4, dtype=np.float64)
    with pytest.raises(ValueError, match="NaN or Inf"):
        check_test_embeddings(np.full((3, 2), np.inf), 3, 2)


def test_value_checks_are_skipped_for_tracers():
    @jax.jit
    def f(K, F):
        return check_kernel(K, 2) @ check_embeddings(F, 2)

    # NaN inside jit is not an error (values are unknown at trace time); shapes still are.
    assert bool(jnp.isnan(f(jnp.full((4, 4), jnp.nan), jnp.ones((4, 1))))[0, 0])
    with pytest.raises(ValueError, match="rows but the kernel has"):
        f(jnp.ones((4, 4)), jnp.ones((3, 1)))
