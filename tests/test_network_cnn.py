"""`stepwise-ntk network` on convolutional and residual networks at tiny sizes; per-architecture defaults."""

import json

import jax
import numpy as np
import pytest

from stepwise_ntk.experiments import NetworkSettings, SweepSettings, cli
from stepwise_ntk.experiments._kernel_model import load_problem_data
from stepwise_ntk.experiments._network import ARCH_DEFAULTS
from stepwise_ntk.predictor import init_key, init_network, network_kernel, stable_step_size

# 8 pairs at the architecture's image size (myrtle 8×8, wrn 4×4), width 8. d = 2 so that the
# tiny kernel's gap γ_d/γ_d+1 cannot make the automatic choice refuse.
TINY = ["--n-pairs", "8", "--n-test", "4", "--width", "8", "--d", "2", "--gallery-pool", "12",
        "--gallery-modes", "2", "--n-records", "40", "--n-times", "60"]


def _run(tmp_path, cifar_dir, *flags):
    out = tmp_path / "run"
    assert cli.main(["network", "--out", str(out), "--data-dir", str(cifar_dir), "--no-progress", *TINY, *flags]) == 0
    return json.loads((out / "results.json").read_text()), np.load(out / "arrays.npz")


def _pair_gamma_1(K: np.ndarray, n: int) -> float:
    """γ_1 as the largest eigenvalue of K Z / (2n) (numpy, Z built densely): a second route."""
    Z = np.zeros((2 * n, 2 * n))
    Z[np.arange(n), n + np.arange(n)] = Z[n + np.arange(n), np.arange(n)] = 1.0
    return float(np.max(np.linalg.eigvals(K @ Z).real) / (2 * n))


# The WRN run covers convolutions and residual blocks end to end by default; the Myrtle run
# (the same pipeline, convolutions without residuals, about 45 s of compilation) is slow. Its
# kernel, network and training are covered by default in test_architectures, test_empirical
# and test_training.
@pytest.mark.parametrize("arch", [pytest.param("myrtle", marks=pytest.mark.slow), "wrn"])
def test_tiny_conv_network_runs_end_to_end_on_its_own_step(tmp_path, cifar_dir, arch):
    r, a = _run(tmp_path, cifar_dir, "--arch", arch)
    assert r["status"] == "complete" and r["architecture"]["arch"] == arch and r["architecture"]["width"] == 8
    side = 32 // ARCH_DEFAULTS[arch].downsample
    assert r["input_shape"] == [side, side, 3] and r["d"] == 2
    # The width-8 network trained at the default rate without diverging, and learned both modes.
    assert all(t is not None for t in r["network_step_times"])
    assert r["network_step_times"][0] < r["network_step_times"][1]
    np.testing.assert_allclose(r["final_eigenvalues"], 1.0, atol=0.05)
    # Training may go on past the plan until every mode has stepped; the records stay one run,
    # increasing in time (a continuation's first record is the previous end, not repeated).
    assert r["steps"] >= r["planned_steps"] and np.all(np.diff(a["network_times"]) > 0)
    assert a["network_times"][-1] == pytest.approx(r["learning_rate"] * r["steps"], rel=1e-12)
    # The step is the network's own: rate / (8 γ_1) of its empirical NTK at initialisation,
    # recomputed here from the same views and key (γ_1 by a dense eigensolve of K Z / 2n).
    s = NetworkSettings(arch=arch, n_pairs=8, n_test=4, width=8, d=2, data_dir=str(cifar_dir))
    views = np.asarray(load_problem_data(s).views)
    net = s.base_architecture(8).replace(d=2)
    init = init_network(net, views.astype(np.float32), alpha=s.alpha, key=init_key(0))
    np.testing.assert_allclose(a["F0"], np.asarray(init.F0, np.float64), rtol=0, atol=1e-5 * np.abs(a["F0"]).max())
    theta = network_kernel(net, views, kernel="empirical_init", params=init.params).K
    expected = ARCH_DEFAULTS[arch].rate / (8 * _pair_gamma_1(theta, 8))
    assert r["step_size"] == pytest.approx(expected, rel=1e-8)  # float64 eigensolves of the same Θ
    assert r["learning_rate"] == pytest.approx(expected / ARCH_DEFAULTS[arch].alpha ** 2, rel=1e-8)
    # Every kernel is reported; the headline numbers are those of --kernel (analytic).
    assert set(r["kernels"]) == {"analytic", "empirical_init", "empirical_final"}
    assert r["kernels"]["analytic"]["test_alignment"] == r["test_alignment"]
    for report in r["kernels"].values():
        assert 0 <= report["test_alignment"] <= 1 + 1e-12 and len(report["step_time_ratio"]) == 2


@pytest.mark.slow  # minibatch with fresh augmentations: tests/test_training.py covers the loop itself
def test_fresh_views_minibatch_records_on_the_fixed_views(tmp_path, cifar_dir):
    r, a = _run(tmp_path, cifar_dir, "--arch", "myrtle", "--fresh-views", "true", "--batch-size", "4",
                "--loss", "simclr")
    assert r["fresh_views"] is True and r["batch_size"] == 4 and r["loss"] == "simclr"
    # Records are taken on the fixed probe views: 2n = 16 rows of embeddings at each record.
    assert a["train_embeddings"].shape == (16, 2) and a["network_eigenvalues"].shape[1] == 2
    # Fresh augmentations change the data every step, so the run is not the full-batch run on
    # the fixed views (same initialisation, same steps): its final embeddings differ.
    assert np.all(np.isfinite(a["network_eigenvalues"])) and r["steps"] > 0


def test_each_architecture_has_its_own_defaults():
    for arch, defaults in ARCH_DEFAULTS.items():
        s, w = NetworkSettings(arch=arch), SweepSettings(arch=arch)
        assert (s.width, s.n_pairs, s.downsample, s.alpha, s.rate) == (
            defaults.width, defaults.n_pairs, defaults.downsample, defaults.alpha, defaults.rate)
        assert w.widths == defaults.widths and w.n_pairs == defaults.sweep_n_pairs
        net = s.base_architecture(s.width)
        for key, value in defaults.options.items():
            assert getattr(net, key) == value
        net.check_input_shape((32 // s.downsample, 32 // s.downsample, 3))
    # A value given explicitly is kept whatever the architecture.
    assert NetworkSettings(arch="wrn", width=4, n_pairs=10).width == 4
    assert NetworkSettings(arch="wrn", width=4, n_pairs=10).n_pairs == 10


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--arch", "myrtle", "--arch-options", "depth=1"], "depth must be one of (5, 7, 10)"),
        (["--arch", "wrn", "--arch-options", "depth=5"], "no field(s) ['depth']"),
        (["--arch", "myrtle", "--arch-options", "blocks_per_group=2"], "no field(s) ['blocks_per_group']"),
        (["--arch", "myrtle", "--batch-size", "100", "--n-pairs", "10"], "--batch-size must be at most"),
        (["--arch", "myrtle", "--rate", "2.5"], "--rate"),
    ],
)
def test_options_of_another_architecture_are_refused_by_name(tmp_path, capsys, cifar_dir, argv, needle):
    out = tmp_path / "o"
    rc = cli.main(["network", *argv, "--out", str(out), "--data-dir", str(cifar_dir), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("stepwise-ntk network: error: ")
    assert needle in err and not out.exists()


def test_stable_step_size_against_a_dense_eigensolve():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(12, 7))
    theta = X @ X.T / 7
    assert stable_step_size(theta, 6, rate=0.3) == pytest.approx(0.3 / (8 * _pair_gamma_1(theta, 6)), rel=1e-10)
    with pytest.raises(ValueError, match="rate"):
        stable_step_size(theta, 6, rate=2.0)
    A = rng.normal(size=(6, 7))
    X = np.concatenate([A, -A])  # the second view of each image is minus the first: every γ ≤ 0
    with pytest.raises(ValueError, match="no positive contrastive eigenvalue"):
        stable_step_size(X @ X.T, 6)


def test_init_key_is_the_other_half_of_the_views_key():
    # load_problem_data draws the views from split(key)[0]; network and sweep initialise from split(key)[1].
    np.testing.assert_array_equal(np.asarray(init_key(3)), np.asarray(jax.random.split(jax.random.PRNGKey(3))[1]))


@pytest.mark.slow  # a few minutes on 2 cores: the loss's flow is integrated for the step and the plan
@pytest.mark.parametrize(("loss", "extra"), [("simclr", ()), ("vicreg", ("--max-steps", "40000"))])
def test_tiny_cnn_with_a_curved_loss_trains_on_its_loss_aware_step(tmp_path, cifar_dir, loss, extra):
    from stepwise_ntk.experiments._network import LOSS_SETTINGS
    from stepwise_ntk.losses import resolve_loss

    r, a = _run(tmp_path, cifar_dir, "--arch", "myrtle", "--loss", loss, *extra)
    # The width-8 CNN did not diverge at the chosen step: the run completed with finite records.
    assert r["status"] == "complete" and r["loss"] == loss
    assert np.all(np.isfinite(a["network_eigenvalues"])) and np.all(np.isfinite(a["network_loss"]))
    # The step is c = rate / μ_max with μ_max ≥ μ(F0); μ(F0) here from a dense jax.hessian of the
    # loss (kron(Θ, I_d) H, its largest real eigenvalue): a second route to the curvature.
    s = NetworkSettings(arch="myrtle", n_pairs=8, n_test=4, width=8, d=2, data_dir=str(cifar_dir))
    views = np.asarray(load_problem_data(s).views)
    net = s.base_architecture(8).replace(d=2)
    init = init_network(net, views.astype(np.float32), alpha=s.alpha, key=init_key(0))
    theta = np.asarray(network_kernel(net, views, kernel="empirical_init", params=init.params).K, np.float64)
    F0 = jax.numpy.asarray(np.asarray(init.F0, np.float64))
    fn = resolve_loss(loss, loss_kwargs=LOSS_SETTINGS[loss] or None)
    H = np.asarray(jax.hessian(fn)(F0), np.float64).reshape(F0.size, F0.size)
    mu0 = float(np.max(np.linalg.eigvals(np.kron(theta, np.eye(2)) @ H).real))
    assert mu0 > 0 and r["step_size"] <= ARCH_DEFAULTS["myrtle"].rate / mu0 * (1 + 1e-6)
