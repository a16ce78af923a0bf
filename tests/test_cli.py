"""The stepwise-ntk CLI: outputs checked against the library, one-line errors, no partial results."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stepwise_ntk.data import cifar10_pairs
from stepwise_ntk.experiments import KernelSettings, LinearSettings, cli
from stepwise_ntk.experiments._linear import flatten_scaled
from stepwise_ntk.predictor import crossing_times, plateau_losses
from stepwise_ntk.theory import contrastive_eigensystem, step_times

TINY = ["--n-pairs", "60", "--d", "3", "--n-times", "60", "--gallery-pool", "40", "--gallery-modes", "2"]


@pytest.fixture(scope="module")
def linear_run(tmp_path_factory, cifar_dir):
    out = tmp_path_factory.mktemp("linear")
    rc = cli.main(["linear", "--out", str(out), "--data-dir", str(cifar_dir), "--no-progress", *TINY])
    assert rc == 0
    return out


def test_linear_writes_every_output(linear_run):
    names = {p.name for p in linear_run.iterdir()}
    assert {"config.json", "results.json", "arrays.npz", "staircase.png", "projections.png", "modes.png"} <= names
    assert "INCOMPLETE" not in names
    results = json.loads((linear_run / "results.json").read_text())
    assert results["status"] == "complete"
    config = json.loads((linear_run / "config.json").read_text())
    assert config["settings"]["n_pairs"] == 60 and config["settings"]["d"] == 3


def test_linear_numbers_match_the_library(linear_run, cifar_dir):
    results = json.loads((linear_run / "results.json").read_text())
    arrays = np.load(linear_run / "arrays.npz")
    # Second route: rebuild the same problem from the library and predict the step times.
    s = LinearSettings(n_pairs=60, d=3, data_dir=str(cifar_dir))
    key_views, key_w = jax.random.split(jax.random.PRNGKey(s.seed))
    views, _, _ = cifar10_pairs(
        key_views, 60, data_dir=s.data_dir, settings=s.augment(), dtype=jnp.float64, subset_seed=s.seed
    )
    X = flatten_scaled(views)
    F0 = X @ (s.init_scale * jax.random.normal(key_w, (3, X.shape[1]), jnp.float64)).T
    predicted = np.sort(np.asarray(step_times(contrastive_eigensystem(X @ X.T, 60), F0)))
    np.testing.assert_allclose(results["predicted_step_times"], predicted, rtol=1e-10)
    # Simulated steps and plateaus are what the saved trajectory says.
    np.testing.assert_allclose(
        results["simulated_step_times"], crossing_times(arrays["times"], arrays["eigenvalues"]), rtol=1e-12
    )
    np.testing.assert_allclose(
        results["plateau_loss"], plateau_losses(arrays["times"], arrays["loss"], predicted), rtol=1e-10
    )
    rel = np.abs(np.asarray(results["simulated_step_times"]) - predicted) / predicted
    np.testing.assert_allclose(results["step_time_relative_error"], rel, rtol=1e-10)
    assert results["step_time_median_relative_error"] == pytest.approx(np.median(rel))
    assert results["step_time_worst_relative_error"] == pytest.approx(np.max(rel))
    # The gradient flow ends with C = I on the views.
    np.testing.assert_allclose(results["final_eigenvalues"], 1.0, atol=1e-3)


def test_crossing_times_interpolates_in_log_time():
    t = np.geomspace(0.1, 100, 400)
    lam = 1 / (1 + np.exp(-8 * 0.5 * (t[:, None] - [[3.0, 20.0]])))  # crosses 1/2 at 3 and 20
    np.testing.assert_allclose(crossing_times(t, lam), [3.0, 20.0], rtol=2e-3)
    assert np.isnan(crossing_times(t, np.zeros((400, 1))))[0]


def _run_error(capsys, argv):
    rc = cli.main(argv)
    err = capsys.readouterr().err
    return rc, err


@pytest.mark.parametrize(
    "flags,needle",
    [
        (["--d", "0"], "--d must be an integer ≥ 1"),
        (["--init-scale", "-1"], "--init-scale"),
        (["--n-pairs", "999999"], "images), got 999999"),
    ],
)
def test_bad_input_is_a_one_line_error(tmp_path, capsys, cifar_dir, flags, needle):
    rc, err = _run_error(capsys, ["linear", "--out", str(tmp_path / "o"), "--data-dir", str(cifar_dir), *flags])
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("stepwise-ntk linear: error: ")
    assert needle in err
    assert "Traceback" not in err
    assert not (tmp_path / "o" / "results.json").exists()


def test_missing_data_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("stepwise_ntk.data._cifar10.CIFAR10_URL", "file:///nonexistent/cifar-10-python.tar.gz",
                        raising=False)
    rc, err = _run_error(capsys, ["linear", "--out", str(tmp_path / "o"), "--data-dir", str(tmp_path / "none"), *TINY])
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err
    # The failed run is marked, not silently truncated.
    marker = json.loads((tmp_path / "o" / "INCOMPLETE").read_text())
    assert marker["status"] == "stopped"
    assert not (tmp_path / "o" / "results.json").exists()


def test_config_file_and_flag_precedence(tmp_path, capsys, cifar_dir):
    cfg = tmp_path / "c.toml"
    cfg.write_text('d = 0\nn_pairs = 60\n')
    rc, err = _run_error(capsys, ["linear", "--config", str(cfg), "--out", str(tmp_path / "o"),
                                  "--data-dir", str(cifar_dir)])
    assert rc == 2 and "--d must be an integer ≥ 1" in err  # the file's value was used
    cfg.write_text('d = "3"\nn_pairs = 60\n')  # a TypeError of the settings class: one line too
    rc, err = _run_error(capsys, ["linear", "--config", str(cfg), "--out", str(tmp_path / "o"),
                                  "--data-dir", str(cifar_dir)])
    assert rc == 2 and err.count("\n") == 1 and "--d must be an integer, got str '3'" in err
    cfg.write_text('bogus = 1\n')
    rc, err = _run_error(capsys, ["linear", "--config", str(cfg), "--out", str(tmp_path / "o")])
    assert rc == 2 and "unknown setting 'bogus'" in err


def test_finished_run_is_not_overwritten_by_accident(linear_run, capsys):
    rc, err = _run_error(capsys, ["linear", "--out", str(linear_run), *TINY])
    assert rc == 2 and "--overwrite" in err
    assert json.loads((linear_run / "results.json").read_text())["status"] == "complete"


def test_kernel_subcommand_uses_the_architecture_ntk(tmp_path, cifar_dir):
    from stepwise_ntk.experiments._kernel import gaussian_embeddings
    from stepwise_ntk.experiments._kernel_model import load_problem_data
    from stepwise_ntk.kernels import analytic_ntk

    out = tmp_path / "k"
    flags = ["--n-pairs", "30", "--d", "3", "--downsample", "4", "--gallery-pool", "20", "--arch-options", "depth=1"]
    assert cli.main(["kernel", "--out", str(out), "--data-dir", str(cifar_dir), "--no-progress", *flags]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["architecture"]["arch"] == "mlp" and results["architecture"]["depth"] == 1
    # Second route: the same NTK and initial embeddings give the same predicted step times.
    s = KernelSettings(n_pairs=30, d=3, downsample=4, gallery_pool=20, arch_options="depth=1", data_dir=str(cifar_dir))
    problem = load_problem_data(s)
    K = jnp.asarray(analytic_ntk(s.architecture(), np.asarray(problem.views), None, dtype=np.float64, progress=False))
    F0 = gaussian_embeddings(problem.key_init, K, 3, s.init_scale)
    predicted = np.sort(np.asarray(step_times(contrastive_eigensystem(K, 30), F0)))
    np.testing.assert_allclose(results["predicted_step_times"], predicted, rtol=1e-8)


def test_gaussian_embeddings_have_covariance_scale2_K():
    from stepwise_ntk.experiments._kernel import gaussian_embeddings

    A = np.random.default_rng(0).normal(size=(4, 4))
    K = jnp.asarray(A @ A.T)
    F = np.asarray(gaussian_embeddings(jax.random.PRNGKey(0), K, 40_000, 0.5))
    # 40k columns: sample covariance within ~3% of 0.25 K entrywise (relative to the diagonal).
    np.testing.assert_allclose(F @ F.T / F.shape[1], 0.25 * np.asarray(K), atol=0.03 * 0.25 * np.max(np.diag(K)))


def test_arch_options_parse_and_reject():
    from stepwise_ntk.experiments._kernel import parse_options

    assert parse_options("depth=3, activation=erf,w_std=1.5") == {"depth": 3, "activation": "erf", "w_std": 1.5}
    with pytest.raises(ValueError, match="key=value"):
        parse_options("depth")


def test_unknown_architecture_option_is_a_one_line_error(tmp_path, capsys, cifar_dir):
    rc, err = _run_error(
        capsys, ["kernel", "--out", str(tmp_path / "o"), "--data-dir", str(cifar_dir), "--arch-options", "bogus=1"]
    )
    assert rc == 2 and err.count("\n") == 1 and "bogus" in err
