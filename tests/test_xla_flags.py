"""stepwise_ntk._xla_flags: the XLA flags that avoid jaxlib's float64 crashes, set on import.

The end-to-end checks run in fresh processes whose environment has no XLA_FLAGS: there the
float64 CNN kernel segfaults (exit -11) on an AVX-512 CPU unless importing stepwise_ntk set
the flag first, or, when JAX started before that, unless the kernel is computed in a child
process.
"""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stepwise_ntk import _xla_flags


def _run(code: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                          timeout=300)


CNN_KERNEL = """
    import numpy as np
    from stepwise_ntk.kernels import MyrtleCNN, analytic_ntk
    x = np.random.default_rng(0).normal(size=(6, 8, 8, 3))
    K = analytic_ntk(MyrtleCNN(depth=5, width=8, d=1), x, dtype=np.float64, progress=False)
    K32 = analytic_ntk(MyrtleCNN(depth=5, width=8, d=1), x, dtype=np.float32, progress=False)
    assert K.dtype == np.float64 and np.all(np.isfinite(K))
    # float32 computes the same kernel to float32 accuracy: the float64 one is not garbage.
    assert np.allclose(K, K32, rtol=1e-4, atol=1e-4 * np.abs(K).max()), np.abs(K - K32).max()
    print("ok")
"""


def test_import_sets_the_flags_and_the_float64_cnn_kernel_runs():
    done = _run("import stepwise_ntk, os; print(os.environ.get('XLA_FLAGS', ''))\n" + textwrap.dedent(CNN_KERNEL))
    assert done.returncode == 0, done.stderr[-2000:]
    flags = done.stdout.splitlines()[0]
    for flag in _xla_flags.FLAGS:
        assert (flag in flags) == _xla_flags.needed(flag), flags
    assert done.stdout.splitlines()[-1] == "ok"


def test_too_late_the_kernel_is_computed_in_a_fresh_process_not_a_crash():
    # JAX computes before stepwise_ntk is imported: the flag cannot take effect in this process.
    done = _run(textwrap.dedent("""
        import jax.numpy as jnp
        jnp.ones(3).block_until_ready()
        from stepwise_ntk import _xla_flags
        assert _xla_flags.in_effect(_xla_flags.MAX_ISA) == (not _xla_flags.needed(_xla_flags.MAX_ISA))
    """) + textwrap.dedent(CNN_KERNEL))
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[-1] == "ok"


def test_float64_products_keep_full_precision():
    """The dot kernel the flags leave in place (YNNPACK's) against numpy's float64 product: a
    float32 or reduced-precision accumulation would miss by ~1e-7 relative, float64 by ~1e-15."""
    rng = np.random.default_rng(0)
    A, B = rng.standard_normal((700, 900)), rng.standard_normal((900, 16))
    got = np.asarray(jax.jit(jnp.matmul)(jnp.asarray(A), jnp.asarray(B)))
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, A @ B, rtol=0, atol=1e-12 * np.abs(A).sum(axis=1).max())


def test_flag_parsing():
    assert _xla_flags._is_set("--xla_cpu_max_isa", "--a=1 --xla_cpu_max_isa=AVX512")
    assert not _xla_flags._is_set("--xla_cpu_max_isa", "--xla_cpu_max_isa_other=1")
    assert _xla_flags._is_set("--xla_cpu_experimental_ynn_fusion_type", "--xla_cpu_experimental_ynn_fusion_type=")
    with pytest.raises(ValueError, match="unknown flag"):
        _xla_flags.needed("--nope")
    # In this process stepwise_ntk was imported before JAX started (conftest): every flag holds.
    assert all(_xla_flags.in_effect(flag) for flag in _xla_flags.FLAGS)
