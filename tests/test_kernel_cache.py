"""On-disk kernel cache (stepwise_ntk.kernels._cache) and its use by analytic_kernels."""

import os

import numpy as np
import pytest

from stepwise_ntk.kernels import KernelCache, analytic_kernels, array_fingerprint, cache_key
from stepwise_ntk.kernels import _analytic as _kernels
from stepwise_ntk.kernels.architectures import MLP


def test_fingerprint_sees_every_bit_dtype_and_shape():
    x = np.arange(12, dtype=np.float64).reshape(3, 4)
    y = x.copy()
    y.view(np.uint64)[1, 2] ^= 1  # flip the last mantissa bit of one entry
    prints = {
        array_fingerprint(x),
        array_fingerprint(y),
        array_fingerprint(x.astype(np.float32)),
        array_fingerprint(x.reshape(4, 3)),
    }
    assert len(prints) == 4
    assert array_fingerprint(x) == array_fingerprint(np.asfortranarray(x))  # layout-free


def test_key_depends_on_meta_and_arrays():
    x = np.ones((2, 3))
    base = cache_key({"arch": {"arch": "mlp", "depth": 2}}, {"x1": x, "x2": None})
    assert base == cache_key({"arch": {"depth": 2, "arch": "mlp"}}, {"x1": x.copy(), "x2": None})
    assert base != cache_key({"arch": {"arch": "mlp", "depth": 3}}, {"x1": x, "x2": None})
    assert base != cache_key({"arch": {"arch": "mlp", "depth": 2}}, {"x1": x, "x2": x})


def test_save_load_round_trip_is_exact_and_leaves_no_temp_files(tmp_path):
    cache = KernelCache(tmp_path / "k")
    arrays = {"ntk": np.random.default_rng(0).normal(size=(5, 5)),
              "nngp": np.eye(5, dtype=np.float32)}
    assert cache.load("abc") is None
    path = cache.save("abc", arrays, {"note": "test"})
    assert path == cache.path("abc") and path.is_file()
    assert os.listdir(tmp_path / "k") == ["abc.npz"]
    loaded = cache.load("abc")
    assert set(loaded) == {"ntk", "nngp"}
    for name, a in arrays.items():
        assert loaded[name].dtype == a.dtype
        np.testing.assert_array_equal(loaded[name], a)


def test_unreadable_or_foreign_entries_are_misses(tmp_path):
    cache = KernelCache(tmp_path)
    cache.path("bad").write_bytes(b"not a zip file")
    with pytest.warns(UserWarning, match="unreadable"):
        assert cache.load("bad") is None
    cache.save("other", {"ntk": np.eye(2)}, {})
    os.replace(cache.path("other"), cache.path("renamed"))
    with pytest.warns(UserWarning, match="stored key differs"):
        assert cache.load("renamed") is None
    with pytest.raises(ValueError, match="reserved"):
        cache.save("x", {"__key__": np.eye(2)}, {})


def _count_computations(monkeypatch):
    calls = []
    real = _kernels.blocked_gram

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(_kernels, "blocked_gram", counting)
    return calls


def test_analytic_cache_hit_is_identical_and_any_change_misses(tmp_path, monkeypatch):
    calls = _count_computations(monkeypatch)
    arch = MLP(depth=2, width=64, d=4, b_std=0.1)
    x = np.random.default_rng(0).normal(size=(6, 4, 4, 3))
    kw = dict(get=("nngp", "ntk"), cache_dir=tmp_path, progress=False)

    first = analytic_kernels(arch, x, **kw)
    again = analytic_kernels(arch, x, **kw)
    assert len(calls) == 1  # second call served from disk
    for k in first:
        assert again[k].dtype == first[k].dtype
        np.testing.assert_array_equal(again[k], first[k])
    # Same kernel, other width and d (ntk parameterisation): the same entry.
    analytic_kernels(arch.replace(width=512, d=16), x, **kw)
    assert len(calls) == 1

    changed = x.copy()
    changed[3, 1, 2, 0] += 1e-9
    moved = analytic_kernels(arch, changed, **kw)
    assert len(calls) == 2
    fresh = analytic_kernels(arch, changed, get=("nngp", "ntk"), progress=False)  # no cache
    assert len(calls) == 3
    np.testing.assert_array_equal(moved["ntk"], fresh["ntk"])

    analytic_kernels(arch, x, **{**kw, "dtype": np.float32})
    analytic_kernels(arch.replace(b_std=0.2), x, **kw)
    analytic_kernels(arch, x, x[:2], **kw)
    analytic_kernels(arch, x, get="ntk", cache_dir=tmp_path, progress=False)
    assert len(calls) == 7  # each a miss
    assert len(list(tmp_path.glob("*.npz"))) == 6
