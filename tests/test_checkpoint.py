"""Tests for stepwise_ntk.training._checkpoint and checkpoint/resume in training.

References: the saved state itself (bit patterns compared as unsigned integers), and an
uninterrupted training run, which a paused, crashed or resumed run must reproduce bit for bit.
"""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stepwise_ntk.training import (
    CHECKPOINT_FILE,
    TrainingDivergedWarning,
    TrainSettings,
    _checkpoint,
    load_checkpoint,
    save_checkpoint,
    train,
)
from stepwise_ntk.training import _loop as _train_loop


def bits(x):
    x = np.asarray(
        jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x
    )
    return (
        x.view(f"u{x.dtype.itemsize}") if x.dtype.kind in "fV" or x.dtype.name == "bfloat16" else x
    )


def assert_tree_bits_equal(a, b):
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb
    for x, y in zip(la, lb, strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(bits(x), bits(y))


def sample_state(seed):
    k = jax.random.key(seed)
    return {
        "w": jax.random.normal(k, (3, 4), jnp.float64),
        "half": jax.random.normal(k, (5,), jnp.float32).astype(jnp.bfloat16),
        "f32": jnp.array([np.nan, -0.0, np.inf, 1e-45], jnp.float32),  # NaN, signed zero, subnormal
        "count": jnp.array(7, jnp.int32),
        "key": jax.random.split(k)[1],
        "none": None,
        "nested": ({"a": jnp.arange(3, dtype=jnp.int64)},),
    }


def test_roundtrip_is_bit_exact_and_leaves_no_temp_files(tmp_path):
    state = sample_state(0)
    save_checkpoint(tmp_path, state, fingerprint="run-a")
    template = sample_state(1)  # same structure, other values
    loaded = load_checkpoint(tmp_path, template, fingerprint="run-a")
    assert_tree_bits_equal(loaded, state)
    assert sorted(os.listdir(tmp_path)) == [CHECKPOINT_FILE]


def test_load_rejects_other_runs_and_misfit_templates(tmp_path):
    state = sample_state(0)
    save_checkpoint(tmp_path, state, fingerprint="run-a")
    with pytest.raises(ValueError, match="different run"):
        load_checkpoint(tmp_path, state, fingerprint="run-b")
    wrong_shape = dict(state, w=jnp.zeros((4, 3), jnp.float64))
    with pytest.raises(ValueError, match=r"float64\[4, 3\]"):
        load_checkpoint(tmp_path, wrong_shape, fingerprint="run-a")
    wrong_dtype = dict(state, count=jnp.array(7, jnp.int64))
    with pytest.raises(ValueError, match="int64"):
        load_checkpoint(tmp_path, wrong_dtype, fingerprint="run-a")
    with pytest.raises(ValueError, match="arrays"):
        load_checkpoint(tmp_path, dict(state, extra=jnp.zeros(2)), fingerprint="run-a")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "nowhere", state, fingerprint="run-a")


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    old = sample_state(0)
    save_checkpoint(tmp_path, old, fingerprint="run-a")

    def broken_savez(f, **arrays):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(_checkpoint.np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, sample_state(1), fingerprint="run-a")
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == [CHECKPOINT_FILE]
    assert_tree_bits_equal(load_checkpoint(tmp_path, old, fingerprint="run-a"), old)


# --------------------------------------------------------------------------- resume in training


class TinyMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = jnp.tanh(nn.Dense(12, param_dtype=jnp.float64)(x))
        return nn.Dense(3, param_dtype=jnp.float64)(x)


def noisy_pairs(key, images):
    return jnp.concatenate(
        [images, images + 0.1 * jax.random.normal(key, images.shape, images.dtype)]
    )


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(8, 5))
    views = jnp.asarray(np.concatenate([X, X + 0.2 * rng.normal(size=X.shape)]))
    return views, jnp.asarray(X), jnp.asarray(rng.normal(size=(3, 5)))


MODES = {
    "full_batch_sgd": (
        TrainSettings(learning_rate=0.1, steps=90, alpha=0.3, n_records=30, chunk_size=10),
        {},
    ),
    "augmented_adam": (
        TrainSettings(
            optimizer="adam",
            learning_rate=0.01,
            steps=90,
            alpha=0.3,
            batch_size=5,
            n_records=30,
            chunk_size=10,
            record_embeddings=True,
        ),
        {"augment": noisy_pairs},
    ),
}


def run(cfg, extra, data, **kwargs):
    views, images, test_views = data
    if "augment" in extra:
        kwargs = dict(kwargs, images=images)
    return train(
        TinyMLP(),
        cfg,
        views,
        test_views=test_views,
        key=jax.random.key(4),
        progress=False,
        **extra,
        **kwargs,
    )


def assert_results_bit_identical(a, b):
    assert_tree_bits_equal(a.params, b.params)
    for name in (
        "steps",
        "effective_times",
        "loss",
        "eigenvalues",
        "embeddings",
        "train_embeddings",
        "test_embeddings",
    ):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            np.testing.assert_array_equal(bits(x), bits(y), err_msg=name)
    assert (a.steps_done, a.finished, a.diverged_at) == (b.steps_done, b.finished, b.diverged_at)


@pytest.mark.parametrize("stepwise", [False, True])  # scanned chunks, stepped chunks
@pytest.mark.parametrize("mode", sorted(MODES))
def test_pause_and_resume_is_bit_identical(tmp_path, data, mode, stepwise, monkeypatch):
    monkeypatch.setattr(_train_loop, "stepwise_wanted", lambda *args: stepwise)
    cfg, extra = MODES[mode]
    straight = run(cfg, extra, data)
    half = run(cfg, extra, data, checkpoint_dir=tmp_path, stop_after=45)
    # Paused at the end of the chunk holding step 45 (chunks of 10 steps; iteration 0 is step 0).
    assert not half.finished and half.steps_done == 50 and half.diverged_at is None
    assert half.steps.max() < 50 and np.array_equal(half.steps, straight.steps[straight.steps < 50])
    np.testing.assert_array_equal(
        bits(half.eigenvalues), bits(straight.eigenvalues[straight.steps < 50])
    )
    resumed = run(cfg, extra, data, checkpoint_dir=tmp_path, resume=True)
    assert resumed.finished
    assert_results_bit_identical(resumed, straight)
    # A finished checkpoint resumes to the same result without training again.
    assert_results_bit_identical(
        run(cfg, extra, data, checkpoint_dir=tmp_path, resume=True), straight
    )


def test_crash_then_resume_from_periodic_checkpoint(tmp_path, data, monkeypatch):
    cfg, extra = MODES["augmented_adam"]
    straight = run(cfg, extra, data)
    calls = []
    real_chunk = _train_loop.run_chunk

    def counting_chunk(*args):
        calls.append(1)
        if crash and len(calls) == 6:
            raise KeyboardInterrupt  # a killed job, mid-run
        return real_chunk(*args)

    monkeypatch.setattr(_train_loop, "run_chunk", counting_chunk)
    crash = True
    with pytest.raises(KeyboardInterrupt):
        run(cfg, extra, data, checkpoint_dir=tmp_path, checkpoint_every=2)
    crash, calls[:] = False, []
    resumed = run(cfg, extra, data, checkpoint_dir=tmp_path, resume=True)
    # Checkpoints were written after chunks 2 and 4, so the run restarts at step 40: the 51
    # iterations 40..90 take 6 chunks of 10 (a fresh run takes 10).
    assert len(calls) == 6
    assert_results_bit_identical(resumed, straight)


def test_resume_refuses_another_run_and_overwriting(tmp_path, data):
    cfg, extra = MODES["full_batch_sgd"]
    run(cfg, extra, data, checkpoint_dir=tmp_path, stop_after=20)
    with pytest.raises(ValueError, match="already exists"):
        run(cfg, extra, data, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="different run"):
        run(
            TrainSettings(learning_rate=0.2, steps=90, alpha=0.3, n_records=30, chunk_size=10),
            extra,
            data,
            checkpoint_dir=tmp_path,
            resume=True,
        )
    views, images, test_views = data
    with pytest.raises(ValueError, match="different run"):
        run(cfg, extra, (views * 2.0, images, test_views), checkpoint_dir=tmp_path, resume=True)


def test_resume_without_a_checkpoint_starts_fresh(tmp_path, data):
    cfg, extra = MODES["full_batch_sgd"]
    fresh = run(cfg, extra, data, checkpoint_dir=tmp_path / "new", resume=True)
    assert_results_bit_identical(fresh, run(cfg, extra, data))
    assert (tmp_path / "new" / CHECKPOINT_FILE).exists()


def test_diverged_run_is_checkpointed_and_resumes_to_the_same_report(tmp_path, data):
    cfg = TrainSettings(learning_rate=30.0, steps=60, alpha=1.0, chunk_size=7)
    with pytest.warns(TrainingDivergedWarning):
        first = run(cfg, {}, data, checkpoint_dir=tmp_path)
    assert first.diverged_at is not None
    with pytest.warns(TrainingDivergedWarning, match=f"step {first.diverged_at}"):
        again = run(cfg, {}, data, checkpoint_dir=tmp_path, resume=True)
    assert_results_bit_identical(again, first)
