"""The stepwise-ntk CLI: outputs checked against the library, one-line errors, no partial results."""

import json
import os
import shutil

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
    out = tmp_path_factory.mktemp("linear") / "run"
    with pytest.MonkeyPatch.context() as mp:  # the data folder from the environment, as users set it
        mp.setenv("STEPWISE_NTK_DATA", str(cifar_dir))
        rc = cli.main(["linear", "--out", str(out), "--no-progress", *TINY])
    assert rc == 0
    return out


def test_linear_writes_every_output(linear_run, cifar_dir):
    names = {p.name for p in linear_run.iterdir()}
    assert {"config.json", "results.json", "arrays.npz", "staircase.png", "projections.png", "modes.png"} <= names
    assert "INCOMPLETE" not in names and "resume" not in names
    assert not (linear_run.parent / "run.partial").exists()
    results = json.loads((linear_run / "results.json").read_text())
    assert results["status"] == "complete"
    config = json.loads((linear_run / "config.json").read_text())
    assert config["settings"]["n_pairs"] == 60 and config["settings"]["d"] == 3
    # The folder actually read is recorded, also when it came from $STEPWISE_NTK_DATA.
    assert config["settings"]["data_dir"] is None
    assert config["data_folder"] == str((cifar_dir / "cifar-10-batches-py").absolute())
    assert config["data_folder_from"] == "$STEPWISE_NTK_DATA"
    assert {"stepwise_ntk", "git_commit", "jax", "backend", "devices"} <= set(config["versions"])
    # The user's umask, not mkstemp's 0600.
    mask = os.umask(0)
    os.umask(mask)
    assert (linear_run / "results.json").stat().st_mode & 0o777 == 0o666 & ~mask
    assert linear_run.stat().st_mode & 0o777 == 0o777 & ~mask


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
        (["--n-pairs", "999999"], "images of the train split"),
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
    # The failed run is marked beside --out, which is not created.
    marker = json.loads((tmp_path / "o.partial" / "INCOMPLETE").read_text())
    assert marker["status"] == "failed" and marker["signal"] is None and marker["reason"]
    assert not (tmp_path / "o").exists()


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
    assert rc == 2 and "--overwrite" in err and err.count("\n") == 1
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


def _listing(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# Each case: argv after the subcommand (OUT and TMP are replaced), the flag or key the one
# line must name. Every one ends before any work, with nothing created.
BAD_INPUT = [
    ("linear", ["--out", "TMP/afile"], "--out"),
    ("linear", ["--out", "TMP/afile/sub"], "--out"),
    ("linear", ["--out", ""], "--out"),
    ("linear", ["--out", "TMP/foreign"], "--out"),
    ("linear", ["--data-dir", "TMP/afile"], "--data-dir"),
    ("linear", ["--data-dir", ""], "--data-dir"),
    ("kernel", ["--arch-options", "d=7"], "--arch-options"),
    ("kernel", ["--arch-options", "depth=1,depth=2"], "--arch-options"),
    ("kernel", ["--arch-options", "depth=[1]", "--arch", "myrtle"], "--arch-options"),
    ("kernel", ["--arch", "myrtle", "--downsample", "16"], "--arch"),
    ("linear", ["--config", "TMP/list.json"], "config file"),
    ("linear", ["--seed", "99999999999999999999"], "--seed"),
    ("linear", ["--seed", "-1"], "--seed"),
    ("network", ["--gallery-modes", "0"], "--gallery-modes"),
    ("linear", ["--crop-padding", "-1"], "--crop-padding"),
    ("network", ["--n-records", "1"], "--n-records"),
    ("sweep", ["--n-records", "1"], "--n-records"),
    ("linear", ["--downsample", "3"], "--downsample"),
    ("linear", ["--gallery-pool", "3"], "--gallery-pool"),
    ("linear", ["--n-pairs", "4", "--d", "5"], "--d must be at most --n-pairs"),
    ("network", ["--gallery-pool", "5"], "--gallery-pool"),
    ("linear", ["--n-pairs", "999999"], "--n-pairs"),
    ("network", ["--n-test", "999999"], "--n-test"),
    ("precondition", ["--kernel-part", "false", "--net-losses", "simclr", "--net-test", "999999"], "--net-test"),
    ("precondition", ["--net-losses", "vicreg", "--net-pairs", "999999"], "--net-pairs"),
    ("precondition", ["--kernel-part", "false", "--net-losses", "simclr", "--net-probe-images", "999999"],
     "--net-probe-images"),
    ("linear", ["--d", "x"], "--d"),
    ("linear", ["--bogus"], "--bogus"),
    ("network", ["--arch", "myrtle", "--arch-options", "depth=6"], "--arch-options"),
]


@pytest.mark.parametrize("command,flags,needle", BAD_INPUT, ids=[" ".join([c, *f]) for c, f, _ in BAD_INPUT])
def test_each_bad_input_is_one_line_before_any_work(tmp_path, capsys, monkeypatch, cifar_dir, command, flags, needle):
    monkeypatch.setenv("STEPWISE_NTK_DATA", str(cifar_dir))
    (tmp_path / "afile").write_text("x")
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    before = _listing(tmp_path)
    flags = [f.replace("TMP", str(tmp_path)) for f in flags]
    out = [] if "--out" in flags else ["--out", str(tmp_path / "o")]
    monkeypatch.chdir(tmp_path)  # `--out ""` must not write here either
    rc, err = _run_error(capsys, [command, *out, *flags])
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith(f"stepwise-ntk {command}: error: "), err
    assert needle in err and "Traceback" not in err
    assert _listing(tmp_path) == before  # nothing created: no OUT, no OUT.partial


def test_data_dir_from_the_environment_naming_a_file(tmp_path, capsys, monkeypatch):
    (tmp_path / "afile").write_text("x")
    monkeypatch.setenv("STEPWISE_NTK_DATA", str(tmp_path / "afile"))
    rc, err = _run_error(capsys, ["linear", "--out", str(tmp_path / "o")])
    assert rc == 2 and "$STEPWISE_NTK_DATA" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_no_command_and_an_unknown_command_are_one_line(capsys):
    for argv, prog in (([], "stepwise-ntk"), (["bogus"], "stepwise-ntk")):
        rc, err = _run_error(capsys, argv)
        assert rc == 2 and err.count("\n") == 1 and err.startswith(f"{prog}: error: ")


def test_help_names_the_subcommand_and_its_default_out(capsys):
    assert cli.main(["linear", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "usage: stepwise-ntk linear" in text and "(default: runs/linear)" in text
    assert "runs/stepwise-ntk" not in text
    # --help beside an unknown flag still prints the subcommand's help, not the top level.
    assert cli.main(["network", "--bogus", "--help"]) == 0
    assert "usage: stepwise-ntk network" in capsys.readouterr().out


def test_arch_options_keep_the_other_defaults():
    from stepwise_ntk.experiments import NetworkSettings, SweepSettings

    # The network's MLP has one hidden layer; --arch-options activation=erf keeps it.
    assert NetworkSettings().base_architecture(64).depth == 1
    arch = NetworkSettings(arch_options="activation=erf").base_architecture(64)
    assert arch.depth == 1 and arch.activation == "erf"
    assert SweepSettings(arch_options="activation=erf").base_architecture(64).depth == 1
    assert NetworkSettings(arch_options="depth=3").base_architecture(64).depth == 3
    # The MLP default does not leak into other architectures.
    assert NetworkSettings(arch="myrtle").base_architecture(8).depth == 5
    assert KernelSettings(arch_options="activation=erf").architecture().depth == KernelSettings().architecture().depth


def test_overwrite_never_mixes_runs(linear_run, tmp_path, capsys, monkeypatch, cifar_dir):
    out = tmp_path / "run"
    shutil.copytree(linear_run, out)
    old = {p.name: p.read_bytes() for p in out.iterdir()}
    assert "projections.png" in old
    # A run that fails after writing a figure: the finished run stays as it was, byte for byte.
    from stepwise_ntk.experiments import _linear

    def failing(settings, run, *, progress):
        (run.path / "staircase.png").write_bytes(b"half")
        raise ValueError("the kernel does not fit in memory")

    monkeypatch.setattr(_linear, "run_linear", failing)
    flags = ["linear", "--out", str(out), "--data-dir", str(cifar_dir), "--no-progress", "--overwrite"]
    rc, err = _run_error(capsys, [*flags, *TINY])
    assert rc == 2 and "does not fit" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == old
    marker = json.loads((tmp_path / "run.partial" / "INCOMPLETE").read_text())
    assert marker["status"] == "failed" and "does not fit" in marker["reason"]
    # A d = 2 run over the d = 3 one writes no projections.png (a stand-in for the experiment:
    # what is left in the folder is the run folder's doing): none of the old run's is left.
    def d2_run(settings, run, *, progress):
        (run.path / "staircase.png").write_bytes(b"d=2")
        run.write_results({"d": settings.d})
        return ""

    monkeypatch.setattr(_linear, "run_linear", d2_run)
    tiny_d2 = [x if x != "3" else "2" for x in TINY]
    rc, err = _run_error(capsys, [*flags, *tiny_d2])
    assert rc == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "results.json", "staircase.png"]
    assert json.loads((out / "config.json").read_text())["settings"]["d"] == 2
    assert json.loads((out / "results.json").read_text())["d"] == 2
    assert not (tmp_path / "run.partial").exists()


def test_the_projections_figure_has_axis_labels(tmp_path, monkeypatch):
    from stepwise_ntk.experiments import _plots

    figures = []
    monkeypatch.setattr(_plots, "_save", lambda fig, path: figures.append(fig) or path)
    snaps = np.random.default_rng(0).normal(size=(2, 20, 3))
    _plots.plot_projections(tmp_path / "p.png", snaps, [0.1, 1.0], labels=np.arange(20) % 10)
    axes = figures[0].axes
    assert len(axes) == 2
    for ax in axes:
        assert [ax.get_xlabel(), ax.get_ylabel(), ax.get_zlabel()] == ["f·u₁", "f·u₂", "f·u₃"]
    import matplotlib.pyplot as plt

    plt.close(figures[0])


def test_linear_without_precondition_writes_no_precondition_outputs(linear_run):
    results = json.loads((linear_run / "results.json").read_text())
    assert "precondition" not in results and not (linear_run / "precondition.png").exists()
    assert json.loads((linear_run / "config.json").read_text())["settings"]["precondition"] is False
    assert not any(k.startswith("precondition") for k in np.load(linear_run / "arrays.npz").files)
