"""Width sweep: structure and self-consistency at tiny sizes; divergence; bad input; the claim (slow)."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stepwise_ntk.data import cifar10_pairs
from stepwise_ntk.kernels.architectures import MLP
from stepwise_ntk.predictor import (
    WidthSweepSettings,
    choose_d,
    eigenvalue_trajectory_error,
    step_time_ratios,
    subspace_alignment,
    width_sweep,
)
from stepwise_ntk.theory import procrustes_error
from stepwise_ntk.training import TrainingDivergedWarning


def cifar_views(cifar_dir, n, n_test, downsample):
    views, _, _ = cifar10_pairs(jax.random.key(0), n, data_dir=cifar_dir, downsample=downsample, dtype=jnp.float64)
    test, _, _ = cifar10_pairs(jax.random.key(1), n_test, split="test", data_dir=cifar_dir, downsample=downsample,
                               dtype=jnp.float64)
    return np.asarray(views), np.asarray(test)


@pytest.fixture(scope="module")
def tiny(cifar_dir):
    return cifar_views(cifar_dir, 12, 6, 8)  # 24 views of 4x4x3, 12 held-out views


def test_tiny_sweep_structure_and_self_consistency(tiny):
    views, test = tiny
    cfg = WidthSweepSettings(widths=(16, 64), alpha=0.05, step_size=0.03, n_records=40)
    res = width_sweep(MLP(depth=1, width=8, d=2), views, test, cfg, progress=False)
    assert [r.width for r in res.runs] == [16, 64] and res.n_pairs == 12 and res.n_test == 12
    for run in res.runs:
        assert run.diverged_at is None and run.steps > 0 and run.records_kept == run.effective_times.size
        # The run is as long as planned: horizon × the predicted last step, in steps.
        assert run.steps == math.ceil(cfg.horizon * run.predicted_last_step / cfg.learning_rate)
        pred, cmp = run.predictions["analytic"], run.comparisons["analytic"]
        # Every reported number is the metric function applied to the stored arrays.
        assert cmp.test_alignment == float(subspace_alignment(run.test_embeddings, np.asarray(pred.test_embeddings)))
        assert cmp.test_alignment_flow == float(
            subspace_alignment(run.test_embeddings, np.asarray(pred.flow_test_embeddings)))
        assert cmp.test_procrustes_error == float(
            procrustes_error(run.test_embeddings, np.asarray(pred.test_embeddings)))
        np.testing.assert_array_equal(
            cmp.step_time_ratios,
            step_time_ratios(run.effective_times, run.eigenvalues, pred.times, pred.eigenvalues))
        err = eigenvalue_trajectory_error(run.effective_times, run.eigenvalues, pred.times, pred.eigenvalues)
        assert cmp.eigenvalue_error_rms == err.rms and cmp.eigenvalue_error_max == err.max_abs
        # The prediction is the theory of *this* run: its flow starts from the network's F0
        # and its kernel is α² × the analytic NTK, whatever the width.
        theta = res.runs[0].predictions["analytic"].network_kernel.K
        np.testing.assert_allclose(np.asarray(pred.K), cfg.alpha**2 * theta)
        assert np.all(np.isfinite(cmp.step_time_ratios)) and 0 <= cmp.test_alignment <= 1
    s = res.summary()
    assert s["widths"] == [16, 64] and s["diverged_widths"] == []
    assert s["analytic"]["test_alignment"] == [r.comparisons["analytic"].test_alignment for r in res.runs]
    al = s["analytic"]["test_alignment"]
    assert s["analytic"]["alignment_rises"] == (al[1] >= al[0])
    record = json.loads(json.dumps(res.to_dict(), allow_nan=False))  # strict JSON
    assert record["d"] == 2 and len(record["runs"]) == 2 and len(record["gammas"]) == 6


def test_a_diverging_learning_rate_is_reported_and_the_sweep_goes_on(tiny):
    views, test = tiny
    # 8 γ_1(Θ) c ≈ 2.8 > 2 (γ_1(Θ) ≈ 0.35 here): gradient descent on the kernel is unstable.
    cfg = WidthSweepSettings(widths=(8, 16), alpha=0.05, step_size=1.0, n_records=20)
    with pytest.warns(TrainingDivergedWarning, match="diverged at step"):
        res = width_sweep(MLP(depth=1, width=8, d=2), views, test, cfg, progress=False)
    assert len(res.runs) == 2
    for run in res.runs:
        assert isinstance(run.diverged_at, int) and run.diverged_at >= 1
        assert run.comparisons == {} and run.test_embeddings is None
        # Records before the divergence are kept (step 0 at least) and finite.
        assert run.records_kept >= 1 and np.all(np.isfinite(run.eigenvalues))
        assert np.all(run.effective_times < run.diverged_at * cfg.learning_rate)
    s = res.summary()
    assert s["diverged_widths"] == [8, 16] and s["analytic"]["widest_alignment"] is None
    record = json.loads(json.dumps(res.to_dict(), allow_nan=False))
    assert [r["diverged_at"] for r in record["runs"]] == [r.diverged_at for r in res.runs]


def test_bad_input(tiny):
    views, test = tiny
    arch = MLP(depth=1, width=8, d=2)
    bad = views.copy()
    bad[5, 0, 0, 1] = np.nan
    with pytest.raises(ValueError, match="views contains 1 NaN or Inf"):
        width_sweep(arch, bad, test, WidthSweepSettings(widths=(8,)), progress=False)
    with pytest.raises(ValueError, match="test_views contains 1 NaN or Inf"):
        width_sweep(arch, views, bad[:12], WidthSweepSettings(widths=(8,)), progress=False)
    # K Z has the inertia of Z for a positive-definite K: n = 12 positive γ.
    with pytest.raises(ValueError, match="Only 12 contrastive eigenvalues .* d = 13"):
        width_sweep(MLP(depth=1, width=8, d=13), views, test, WidthSweepSettings(widths=(8,)), progress=False)
    with pytest.raises(ValueError, match="increasing"):
        WidthSweepSettings(widths=(64, 16))
    with pytest.raises(ValueError, match="kernels"):
        WidthSweepSettings(kernels=("ntk",))
    with pytest.raises(ValueError, match="horizon"):
        WidthSweepSettings(horizon=0.5)
    with pytest.raises(ValueError, match="max_steps"):  # the plan does not fit in 10 steps
        width_sweep(arch, views, test, WidthSweepSettings(widths=(8,), max_steps=10), progress=False)


def test_choose_d_takes_the_largest_gap():
    g = np.array([1.0, 0.5, 0.2, 0.18, 0.05, 0.01])
    assert choose_d(g, (2, 3, 4)) == 4  # gaps 2.5, 1.11, 3.6
    assert choose_d(g, (2, 3)) == 2
    with pytest.raises(ValueError, match="no candidate d has"):
        choose_d(g, (3,))
    with pytest.raises(ValueError, match="needs at least"):
        choose_d(g, (6,))


@pytest.mark.slow
def test_alignment_rises_with_width_and_passes_0_9(cifar_dir):
    # The benchmark's claim at its data size (benchmarks/cases/width_sweep.py; ~2 min on 2 cores).
    views, test = cifar_views(cifar_dir, 128, 128, 4)
    res = width_sweep(MLP(depth=1, width=64, d=3), views, test,
                      WidthSweepSettings(widths=(64, 1024, 4096), alpha=0.05, step_size=0.023), progress=False)
    s = res.summary()["analytic"]
    assert s["alignment_rises"] and s["widest_alignment"] >= 0.9
    # Step times approach the kernel model's: the worst mode is closer at the widest width.
    assert s["ratio_spread"][-1] < s["ratio_spread"][0]
