"""Analytic NNGP/NTK Grams (stepwise_ntk.kernels._analytic) against closed forms and properties.

CNN kernels are computed in float32 here: on AVX-512 CPUs jaxlib 0.10.2 segfaults on
float64 CNN kernels unless XLA_FLAGS=--xla_cpu_max_isa=AVX2 was set before JAX started
(see test_float64_cnn_kernel_is_refused_where_it_would_crash).
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

from stepwise_ntk.kernels import KernelMemoryError, analytic_kernels, analytic_ntk, kernel_block_bytes
from stepwise_ntk.kernels import _analytic as _kernels
from stepwise_ntk.kernels.architectures import MLP, MyrtleCNN, WideResNet
from tests.reference_kernels import relu_mlp_kernels

RNG = np.random.default_rng(0)
X_FLAT = RNG.normal(size=(12, 20))
IMAGES = RNG.normal(size=(10, 8, 8, 3))


@pytest.mark.parametrize("depth, w_std, b_std", [(1, 1.0, 0.0), (1, 1.5, 0.3), (3, 1.4, 0.1)])
def test_relu_mlp_matches_the_closed_form(depth, w_std, b_std):
    arch = MLP(depth=depth, width=7, d=3, w_std=w_std, readout_w_std=w_std, b_std=b_std)
    x2 = RNG.normal(size=(5, 20))
    for a, b in ((X_FLAT, None), (X_FLAT, x2)):
        got = analytic_kernels(arch, a, b, get=("nngp", "ntk"), progress=False)
        nngp, ntk = relu_mlp_kernels(a, a if b is None else b, depth=depth, w_std=w_std,
                                     b_std=b_std)
        # NNGP: float64 rounding only. NTK: near-parallel pairs (the diagonal) go through
        # arccos'(1) = inf, NT evaluates the angle as atan2(sqrt(1 - c^2), c), where a 1e-16
        # rounding of 1 - c^2 becomes ~1e-8 in the angle; hence 1e-7 there.
        np.testing.assert_allclose(got["nngp"], nngp, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(got["ntk"], ntk, rtol=1e-7, atol=1e-12)
        assert got["ntk"].dtype == np.float64


def test_one_hidden_layer_relu_ntk_explicit_formula():
    # f(x) = v . relu(W x / sqrt(m)) / sqrt(N), unit variances, no bias. With s = x.y / m and
    # cos t = s / sqrt(s_xx s_yy):
    #   readout weights v:  E[relu(u) relu(u')] = sqrt(s_xx s_yy) (sin t + (pi - t) cos t) / 2pi
    #   hidden weights W:   E[relu'(u) relu'(u')] s = (pi - t) / 2pi * s
    x = RNG.normal(size=(6, 5))
    s = x @ x.T / x.shape[1]
    norm = np.sqrt(np.outer(np.diag(s), np.diag(s)))
    cos = np.clip(s / norm, -1, 1)
    t = np.arccos(cos)
    ntk = norm * (np.sin(t) + (np.pi - t) * cos) / (2 * np.pi) + s * (np.pi - t) / (2 * np.pi)
    got = analytic_ntk(MLP(depth=1, w_std=1.0, readout_w_std=1.0), x, progress=False)
    np.testing.assert_allclose(got, ntk, rtol=1e-7)  # 1e-7: the arccos near t = 0, see above


@pytest.mark.parametrize(
    "arch, x, dtype, tol",
    [
        (MLP(depth=2, activation="erf", b_std=0.2), X_FLAT, np.float64, 1e-12),
        (MLP(depth=2, activation="gelu"), X_FLAT, np.float64, 1e-12),
        (MyrtleCNN(depth=5), IMAGES, np.float32, 1e-5),
        pytest.param(WideResNet(blocks_per_group=1), IMAGES[:6], np.float32, 1e-5,
                     marks=pytest.mark.slow),
    ],
    ids=["mlp-erf", "mlp-gelu", "myrtle", "wrn"],
)
def test_grams_are_symmetric_psd_and_match_the_cross_kernel(arch, x, dtype, tol):
    out = analytic_kernels(arch, x, get=("nngp", "ntk"), dtype=dtype, progress=False)
    cross = analytic_kernels(arch, x[:3], x, get=("nngp", "ntk"), dtype=dtype, progress=False)
    for kind, k in out.items():
        assert k.dtype == dtype and k.shape == (len(x), len(x))
        np.testing.assert_array_equal(k, k.T)  # mirrored blocks: exactly symmetric
        eig = np.linalg.eigvalsh(k.astype(np.float64))
        # PSD up to rounding of the largest eigenvalue at this precision.
        assert eig.min() > -tol * eig.max(), (kind, eig.min(), eig.max())
        # The cross kernel K(x[:3], x) is the corresponding block of the Gram.
        np.testing.assert_allclose(cross[kind], k[:3], rtol=10 * tol, atol=10 * tol * abs(k).max())


def assert_same_ntk(got, want):
    """Equal up to float64 summation order: 1e-12, except on the diagonal, where the arccos
    near t = 0 turns 1e-16 rounding differences into ~1e-9 (see the closed-form test)."""
    off = ~np.eye(*want.shape, dtype=bool)
    np.testing.assert_allclose(got[off], want[off], rtol=1e-12)
    np.testing.assert_allclose(np.diagonal(got), np.diagonal(want), rtol=1e-7)


@pytest.mark.parametrize("batch_size", [1, 3, 4, 7])
def test_batched_equals_unbatched(batch_size):
    arch = MLP(depth=2, b_std=0.1)
    full = analytic_ntk(arch, X_FLAT, progress=False)
    x2 = np.concatenate([RNG.normal(size=(5, 20)), X_FLAT[:2]])  # two pairs on the "diagonal"
    full_cross = analytic_ntk(arch, x2, X_FLAT, progress=False)
    # Blocks see different shapes (and padded rows), so XLA may sum in another order.
    assert_same_ntk(analytic_ntk(arch, X_FLAT, batch_size=batch_size, progress=False), full)
    got_cross = analytic_ntk(arch, x2, X_FLAT, batch_size=batch_size, progress=False)
    assert_same_ntk(got_cross[5:, :2], full_cross[5:, :2])
    np.testing.assert_allclose(got_cross[:5], full_cross[:5], rtol=1e-12)


def test_batched_cnn_equals_unbatched_in_float32():
    arch = MyrtleCNN()
    kw = dict(get=("nngp", "ntk"), dtype=np.float32, progress=False)  # compiles shared above
    full = analytic_kernels(arch, IMAGES, **kw)
    blocked = analytic_kernels(arch, IMAGES, batch_size=4, **kw)
    for kind in full:
        np.testing.assert_allclose(blocked[kind], full[kind], rtol=1e-5)  # float32 rounding


def test_float32_is_float32_and_close_to_float64():
    arch = MLP(depth=3, b_std=0.1)
    k64 = analytic_ntk(arch, X_FLAT, progress=False)
    k32 = analytic_ntk(arch, X_FLAT, dtype="float32", progress=False)
    assert k32.dtype == np.float32
    # float32 rounding (1e-7) amplified by the arccos near the diagonal (sqrt: ~3e-4).
    np.testing.assert_allclose(k32, k64, rtol=1e-3, atol=1e-3 * abs(k64).max())


def test_progress_bar_is_shown_for_multi_block_grams(capsys):
    analytic_ntk(MLP(), X_FLAT, batch_size=4, progress=True)
    assert "block" in capsys.readouterr().err
    analytic_ntk(MLP(), X_FLAT, batch_size=4, progress=False)
    assert capsys.readouterr().err == ""


def test_cnn_memory_estimate_grows_like_pixels_squared_and_batch_squared():
    arch = MyrtleCNN()
    small = kernel_block_bytes(arch, (8, 8, 3), 4, dtype=np.float32)
    large = kernel_block_bytes(arch, (16, 16, 3), 4, dtype=np.float32)
    # 4x the pixels: the full spatial covariance is 16x larger per pair of images.
    assert 12 < large / small < 17
    double = kernel_block_bytes(arch, (8, 8, 3), 8, dtype=np.float32)
    assert 3.5 < double / small < 4.1
    mlp = kernel_block_bytes(MLP(), (8, 8, 3), 4, dtype=np.float32)
    assert mlp < small / 10


def test_over_budget_gram_is_refused_up_front_with_a_batch_size_that_fits():
    arch = MyrtleCNN()
    per_block = kernel_block_bytes(arch, (8, 8, 3), 10, dtype=np.float32)
    budget = per_block // 5
    with pytest.raises(KernelMemoryError, match=r"batch_size=\d+ fits") as info:
        analytic_ntk(arch, IMAGES, dtype=np.float32, batch_size=10, memory_budget_bytes=budget,
                     progress=False)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.estimated_bytes >= per_block > budget == err.limit_bytes
    assert "GiB" in str(err) and "memory_budget_bytes" in str(err)
    fit = err.fitting_batch_size
    assert 1 <= fit < 10
    assert kernel_block_bytes(arch, (8, 8, 3), fit, dtype=np.float32) <= budget
    # The advice works, and gives the same Gram.
    k = analytic_ntk(arch, IMAGES, dtype=np.float32, batch_size=fit, memory_budget_bytes=budget,
                     progress=False)
    np.testing.assert_allclose(k, analytic_ntk(arch, IMAGES, dtype=np.float32, progress=False),
                               rtol=1e-5)
    # Leaving batch_size to the library picks a fitting one instead of refusing.
    k_auto = analytic_ntk(arch, IMAGES, dtype=np.float32, memory_budget_bytes=budget,
                          progress=False)
    np.testing.assert_allclose(k_auto, k, rtol=1e-5)


def test_refusal_when_not_even_one_pair_fits():
    with pytest.raises(KernelMemoryError, match="Even batch_size=1") as info:
        analytic_ntk(MyrtleCNN(), IMAGES, dtype=np.float32, memory_budget_bytes=1000,
                     progress=False)
    assert info.value.fitting_batch_size is None


def test_result_larger_than_host_memory_is_refused(monkeypatch):
    monkeypatch.setattr(_kernels, "_host_free_bytes", lambda: 1000)
    with pytest.raises(KernelMemoryError, match="result itself needs"):
        analytic_ntk(MLP(), X_FLAT, progress=False)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: analytic_ntk(MyrtleCNN(), IMAGES, RNG.normal(size=(2, 12, 12, 3)),
                              dtype=np.float32), "same input shape"),
        (lambda: analytic_ntk(MLP(), X_FLAT, RNG.normal(size=(2, 21))), "same input shape"),
        (lambda: analytic_ntk(MyrtleCNN(), X_FLAT, dtype=np.float32), "NHWC images"),
        (lambda: analytic_ntk(MyrtleCNN(), IMAGES[:, :6], dtype=np.float32), "multiples of 4"),
        (lambda: analytic_ntk(MLP(), np.full((2, 3), np.nan)), "NaN"),
        (lambda: analytic_ntk(MLP(), np.ones(3)), "non-empty batch"),
        (lambda: analytic_ntk(MLP(), np.ones((0, 3))), "non-empty batch"),
        (lambda: analytic_ntk(MLP(), X_FLAT.astype(complex)), "real numeric"),
        (lambda: analytic_kernels(MLP(), X_FLAT, get="cov"), "kernel kinds"),
        (lambda: analytic_kernels(MLP(), X_FLAT, get=("ntk", "ntk")), "distinct"),
        (lambda: analytic_ntk(MLP(), X_FLAT, dtype=np.int32), "float32 or float64"),
        (lambda: analytic_ntk(MLP(), X_FLAT, batch_size=0), "positive int"),
        (lambda: analytic_ntk(MLP(), X_FLAT, memory_budget_bytes=-1), "positive"),
        (lambda: analytic_ntk(MLP(), X_FLAT, devices=[]), "devices is empty"),
    ],
)
def test_bad_input_gives_a_clear_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: analytic_ntk("mlp", X_FLAT), "architecture spec"),
        (lambda: analytic_ntk(MLP(), X_FLAT, dtype="no such dtype"), "float32 or float64"),
        (lambda: analytic_ntk(MLP(), X_FLAT, batch_size=2.5), "positive integer"),
    ],
)
def test_a_wrong_type_is_a_type_error(call, match):
    with pytest.raises(TypeError, match=match):
        call()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_finiteness_check_is_exact(dtype):
    # The check sums first (a finite sum proves every entry finite) and falls back to the
    # elementwise test; np.isfinite(x).all() is the reference. Finite entries whose sum
    # overflows must pass, and +inf and -inf must not cancel into a pass.
    big = np.finfo(dtype).max
    cases = {
        "normal": RNG.normal(size=(7, 5)),
        "overflowing sum": np.full((4, 3), big),
        "nan": np.where(np.eye(4, 3) > 0, np.nan, 1.0),
        "inf": np.where(np.eye(4, 3) > 0, np.inf, 1.0),
        "inf and -inf": np.array([[np.inf, -np.inf, 1.0]]),
        "inf among overflow": np.array([[big, big, np.inf]]),
        "nan in an image": np.where(np.arange(2 * 3 * 3 * 2).reshape(2, 3, 3, 2) == 29, np.nan, 0.5),
        "finite images": RNG.normal(size=(3, 4, 4, 3)),
    }
    for name, x in cases.items():
        x = x.astype(dtype)
        assert _kernels._all_finite(x) == bool(np.isfinite(x).all()), name


def test_float64_cnn_kernel_runs_in_a_fresh_process_where_it_would_crash(monkeypatch):
    # Where the ISA cap came too late the kernel is computed in a child process (see
    # tests/test_xla_flags.py for a real such process); it is the in-process kernel.
    arch, x = MyrtleCNN(depth=5, width=8), IMAGES[:4]
    here = analytic_kernels(arch, x, get=("nngp", "ntk"), dtype=np.float64, progress=False)
    monkeypatch.setattr(_kernels._xla_flags, "in_effect", lambda flag: False)
    calls = []
    real = _kernels.analytic_kernels_isolated
    monkeypatch.setattr(_kernels, "analytic_kernels_isolated", lambda *a, **k: calls.append(1) or real(*a, **k))
    there = analytic_kernels(arch, x, get=("nngp", "ntk"), dtype=np.float64, progress=False)
    assert calls == [1]
    for kind in ("nngp", "ntk"):
        np.testing.assert_allclose(there[kind], here[kind], rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="x2 has inputs of shape"):  # validated before the child starts
        analytic_kernels(arch, x, x[:, :4], dtype=np.float64, progress=False)
    analytic_ntk(MLP(), X_FLAT, dtype=np.float64, progress=False)  # MLPs stay in this process
    assert calls == [1]


def test_blocks_are_spread_over_several_devices():
    # A fresh process with two (virtual) CPU devices; both must get blocks and the Gram must
    # equal the single-device one.
    code = textwrap.dedent("""
        import numpy as np, jax
        from stepwise_ntk.kernels import _analytic as _kernels
        from stepwise_ntk.kernels.architectures._registry import MLP
        assert len(jax.local_devices()) == 2
        used = set()
        real = _kernels._executable
        class Spy:  # records the device of every block that runs, and checks its outputs
            def __init__(self, exe, device):
                self.exe, self.device = exe, device
            def __getattr__(self, name):
                return getattr(self.exe, name)
            def __call__(self, *args):
                out = self.exe(*args)
                assert all(o.devices() == {self.device} for o in out), self.device
                used.add(self.device)
                return out
        _kernels._executable = lambda fn, args, device: Spy(real(fn, args, device), device)
        x = np.random.default_rng(0).normal(size=(9, 5))
        k2 = _kernels.analytic_ntk(MLP(), x, batch_size=2, progress=False)
        k1 = _kernels.analytic_ntk(MLP(), x, batch_size=2, progress=False,
                                   devices=jax.local_devices()[:1])
        assert len(used) == 2, used
        np.testing.assert_array_equal(k2, k1)
        print("ok")
    """)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], check=False, env=env, cwd=root,
                         capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "ok"


def test_repeat_calls_neither_retrace_nor_recompile(monkeypatch):
    # Each block shape is traced once and compiled once: the memory analysis and the calls
    # share one executable (a jitted call next to lower().compile() would compile it twice),
    # and a later call with the same shapes but new values reuses it. Traces are counted
    # with a side effect of NT's kernel_fn (it only runs while JAX traces), compiles with
    # JAX's backend-compile event or, where the persistent compilation cache (tests/conftest.py)
    # serves the executable instead, its cache-hit event: either is a compilation request.
    traces, compiles = [], []
    real_kernel_fn = MLP.kernel_fn

    def counting_kernel_fn(self):
        fn = real_kernel_fn(self)

        def traced(*args, **kwargs):
            traces.append(args[0].shape)
            return fn(*args, **kwargs)
        return traced

    def on_event(name, secs, **kwargs):
        if name in ("/jax/core/compile/backend_compile_duration", "/jax/compilation_cache/compile_time_saved_sec"):
            compiles.append(name)

    monkeypatch.setattr(MLP, "kernel_fn", counting_kernel_fn)
    arch = MLP(depth=2, width=977, b_std=0.05)  # an architecture no other test uses: nothing cached
    x = RNG.normal(size=(9, 20))
    calls = [  # (call, block shapes it compiles: one per diagonal / off-diagonal shape)
        (lambda v: analytic_ntk(arch, v, progress=False), 1),                # one diagonal block
        (lambda v: analytic_ntk(arch, v[:4], v, progress=False), 1),         # one cross block
        (lambda v: analytic_ntk(arch, v, batch_size=4, progress=False), 2),  # diagonal + off
    ]
    jax.monitoring.register_event_duration_secs_listener(on_event)
    try:
        for call, shapes in calls:
            traces.clear(), compiles.clear()
            first = call(x)
            assert (len(traces), len(compiles)) == (shapes, shapes)
            traces.clear(), compiles.clear()
            second = call(x + 1.0)  # same shapes, new values
            assert (traces, compiles) == ([], [])
            assert not np.array_equal(first, second)  # it did compute the new values
    finally:
        jax.monitoring.unregister_event_duration_listener(on_event)


@pytest.mark.parametrize("n", [1, 5, 63, 64, 65, 257, 700])
def test_exact_symmetrisation_keeps_the_upper_triangle(n):
    # Diagonal blocks are made exactly symmetric on the host, in row strips of 64 (sizes
    # around a strip edge included); off-diagonal blocks are mirrored by a strip-wise transpose.
    k = np.random.default_rng(n).random((n, n))
    want = np.triu(k) + np.triu(k, 1).T
    np.testing.assert_array_equal(_kernels._symmetric_copy(k), want)
    np.testing.assert_array_equal(_kernels._mirror_upper(k.copy()), want)
    rect = k[:, : max(1, n // 3)]
    out = np.empty(rect.T.shape)
    _kernels._copy_transposed(out, rect)
    np.testing.assert_array_equal(out, rect.T)
