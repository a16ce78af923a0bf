"""``stepwise-ntk augmentations``: outputs against the library, closed forms, one-line errors."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stepwise_ntk.data import cifar10_pairs, image_statistics, load_cifar10, normalize
from stepwise_ntk.experiments import cli
from stepwise_ntk.experiments._augmentations import PRESETS, AugmentationsSettings, parse_augmentation
from stepwise_ntk.experiments._linear import flatten_scaled, held_out_images
from stepwise_ntk.predictor import linear_probe, mode_statistics, pair_groups
from stepwise_ntk.theory import contrastive_eigensystem, final_embeddings, mode_functions_new

TINY = ["--n-pairs", "20", "--d", "2", "--pool", "24", "--gallery-modes", "1", "--split", "test", "--probe-test", "30",
        "--augmentations", "none", "flip"]


@pytest.fixture(scope="module")
def aug_run(tmp_path_factory, cifar_dir):
    out = tmp_path_factory.mktemp("aug") / "run"
    assert cli.main(["augmentations", "--out", str(out), "--data-dir", str(cifar_dir), "--no-progress", *TINY]) == 0
    return out


def test_writes_every_output_and_a_symmetric_alignment(aug_run):
    names = {p.name for p in aug_run.iterdir()}
    assert {"results.json", "arrays.npz", "gammas.png", "alignment.png", "statistics.png", "modes_none.png",
            "modes_flip.png"} <= names
    r = json.loads((aug_run / "results.json").read_text())
    A = np.asarray(r["alignment"])
    np.testing.assert_allclose(np.diag(A), 1.0, atol=1e-10)  # a subspace is aligned with itself
    np.testing.assert_allclose(A, A.T, atol=1e-12)
    assert np.all((A >= -1e-12) & (A <= 1 + 1e-12))


def test_numbers_match_the_library_and_the_identical_views_closed_form(aug_run, cifar_dir):
    r = json.loads((aug_run / "results.json").read_text())
    key = jax.random.PRNGKey(0)
    views, labels, _ = cifar10_pairs(key, 20, split="test", data_dir=str(cifar_dir), settings=PRESETS["flip"],
                                dtype=jnp.float64, subset_seed=0)
    X = flatten_scaled(views)
    es = contrastive_eigensystem(X @ X.T, 20)
    g = r["settings"]["flip"]["gammas"]
    np.testing.assert_allclose(g, np.asarray(es.gammas)[: len(g)], rtol=1e-9, atol=1e-12)
    ds = load_cifar10("test", str(cifar_dir))
    pool = normalize(ds.images[:24], dtype=np.float64)
    G = np.asarray(mode_functions_new(es, flatten_scaled(jnp.asarray(pool)) @ X.T, 2))
    table = mode_statistics(G, image_statistics(ds.images[:24]), labels=ds.labels[:24]).table()
    assert [row["strongest"] for row in r["settings"]["flip"]["mode_statistics"]] == [t["strongest"] for t in table]
    test_images, test_labels = held_out_images(AugmentationsSettings(split="test", probe_test=30,
                                                                     data_dir=str(cifar_dir)))
    probe = linear_probe(np.asarray(final_embeddings(es, None, 2)), np.concatenate([labels, labels]),
                         np.asarray(final_embeddings(es, flatten_scaled(jnp.asarray(test_images)) @ X.T, 2)),
                         test_labels, groups=pair_groups(20))
    assert r["settings"]["flip"]["probe_accuracy"] == pytest.approx(probe.accuracy)
    assert r["n_probe_test_images"] == 30 and set(test_labels.tolist()) == set(range(10))  # balanced classes
    # No augmentation: both views are the image, K Z = K, so γ = eigenvalues of K / (2n).
    views0, _, _ = cifar10_pairs(key, 20, split="test", data_dir=str(cifar_dir), settings=PRESETS["none"],
                                 dtype=jnp.float64, subset_seed=0)
    X0 = np.asarray(flatten_scaled(views0))
    expected = np.linalg.eigvalsh(X0 @ X0.T)[::-1] / 40
    g0 = r["settings"]["none"]["gammas"]
    np.testing.assert_allclose(g0, expected[: len(g0)], rtol=1e-8, atol=1e-12)


def test_loss_flows_match_a_direct_solve_and_fill_the_table(aug_run, cifar_dir):
    """The SimCLR entries against the solver called here, and the (setting, loss) table's layout."""
    from stepwise_ntk.experiments._network import LOSS_SETTINGS
    from stepwise_ntk.predictor import subspace_alignment
    from stepwise_ntk.solver import solve
    from stepwise_ntk.theory import step_times

    r = json.loads((aug_run / "results.json").read_text())
    a = np.load(aug_run / "arrays.npz")
    assert r["losses"] == ["barlow_twins", "simclr", "vicreg"]
    assert r["labels"] == ["none BT", "flip BT", "none SimCLR", "flip SimCLR", "none VICReg", "flip VICReg"]
    A = np.asarray(r["alignment"])
    assert A.shape == (6, 6) and (aug_run / "statistics_simclr.png").exists()
    np.testing.assert_allclose(A, a["alignment"], rtol=0, atol=0)
    # The flip setting's SimCLR flow, rebuilt: F0 = K R at rms 1e-3, to 3 × the last BT step.
    key = jax.random.PRNGKey(0)
    views, _, _ = cifar10_pairs(key, 20, split="test", data_dir=str(cifar_dir), settings=PRESETS["flip"],
                                dtype=jnp.float64, subset_seed=0)
    X = flatten_scaled(views)
    K = X @ X.T
    R = jax.random.normal(jax.random.fold_in(key, 1), (40, 2), jnp.float64)
    F0 = K @ R
    c = 1e-3 / jnp.sqrt(jnp.mean(F0**2))
    T = 3.0 * float(jnp.max(step_times(contrastive_eigensystem(K, 20), c * F0)))
    flow = r["settings"]["flip"]["flows"]["simclr"]
    assert flow["time"] == pytest.approx(T, rel=1e-10)
    ds = load_cifar10("test", str(cifar_dir))
    X_pool = flatten_scaled(jnp.asarray(normalize(ds.images[:24], dtype=np.float64)))
    traj = solve(K, 20, c * F0, jnp.array([T / 2, T]), loss="simclr", loss_kwargs=LOSS_SETTINGS["simclr"],
                 method="function", K_test=X_pool @ X.T, F0_test=c * (X_pool @ X.T @ R))
    np.testing.assert_allclose(flow["final_eigenvalues"], np.asarray(traj.eigenvalues[-1]), rtol=1e-6)
    E = np.asarray(traj.test_embeddings[-1])
    G_bt = mode_functions_new(contrastive_eigensystem(K, 20), X_pool @ X.T, 2)
    assert flow["alignment_with_barlow_twins"] == pytest.approx(float(subspace_alignment(E, G_bt)), abs=1e-6)
    assert A[1, 3] == pytest.approx(flow["alignment_with_barlow_twins"], abs=1e-12)
    assert 0 <= flow["settled_alignment"] <= 1 + 1e-12 and 0 <= flow["probe_accuracy"] <= 1


def test_without_losses_the_barlow_twins_outputs_are_unchanged(aug_run, tmp_path, cifar_dir):
    out = tmp_path / "bt"
    assert cli.main(["augmentations", "--out", str(out), "--data-dir", str(cifar_dir), "--no-progress", *TINY,
                     "--losses"]) == 0
    r0 = json.loads((out / "results.json").read_text())
    r = json.loads((aug_run / "results.json").read_text())
    assert r0["labels"] == r0["names"] == ["none", "flip"] and r0["losses"] == ["barlow_twins"]
    np.testing.assert_allclose(r0["alignment"], np.asarray(r["alignment"])[:2, :2], rtol=0, atol=0)
    for name in ("none", "flip"):
        a, b = r0["settings"][name], r["settings"][name]
        assert a["flows"] == {} and a["probe_accuracy"] == b["probe_accuracy"]
        assert a["mode_statistics"] == b["mode_statistics"] and a["gammas"] == b["gammas"]


def test_parse_augmentation_presets_and_fields():
    assert parse_augmentation("all")[1] == PRESETS["all"]
    hue = parse_augmentation("hue")[1]
    assert (hue.hue, hue.jitter_prob, hue.brightness) == (0.1, 0.8, None) and hue.jitters
    name, a = parse_augmentation("mine: crop=resized, crop_scale=(0.5, 1.0), gray_prob=0.3")
    assert (name, a.crop, a.crop_scale, a.gray_prob, a.flip_prob) == ("mine", "resized", (0.5, 1.0), 0.3, None)
    with pytest.raises(ValueError, match="unknown preset"):
        parse_augmentation("rotate")
    with pytest.raises(ValueError, match="unknown field 'rotation'"):
        parse_augmentation("x: rotation=0.1")
    with pytest.raises(ValueError, match="distinct"):
        AugmentationsSettings(augmentations=("crop", "crop"))


def test_bad_setting_is_one_line_before_any_output(tmp_path, capsys, cifar_dir):
    out = tmp_path / "never"
    rc = cli.main(["augmentations", "--out", str(out), "--data-dir", str(cifar_dir),
                   "--augmentations", "crop", "x: crop_scale=(0.9, 0.1)"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("stepwise-ntk augmentations: error:")
    assert "crop_scale" in err[0] and not out.exists()


def test_config_file_lists_the_settings(tmp_path):
    from stepwise_ntk.experiments._settings import load_config_file, resolve_settings

    path = tmp_path / "aug.toml"
    path.write_text('augmentations = ["none", "big: crop=resized, crop_scale=(0.2, 1.0)"]\nd = 3\n')
    s = resolve_settings(AugmentationsSettings, None, load_config_file(path))
    assert s.augmentations == ("none", "big: crop=resized, crop_scale=(0.2, 1.0)") and s.d == 3


@pytest.mark.slow  # four tiny MLP trainings and two `methods`-style theories (about a minute here)
def test_train_network_reproduces_the_methods_run_under_its_setting(tmp_path, cifar_dir, monkeypatch):
    """Under the `methods` command's own view setting the network part is that command's run.

    The MLP's network defaults are made tiny (12 pairs of 4×4 images, width 32, d = 2); the
    same network trained by ``stepwise-ntk methods`` with those values as flags must give the
    same steps and the same held-out alignment between its Barlow Twins and VICReg runs.
    """
    import dataclasses

    from stepwise_ntk.experiments import _network
    from stepwise_ntk.experiments._views import ViewSettings

    monkeypatch.setitem(_network.ARCH_DEFAULTS, "mlp", dataclasses.replace(
        _network.ARCH_DEFAULTS["mlp"], n_pairs=12, n_test=6, downsample=8, width=32))
    monkeypatch.setattr(_network, "choose_d", lambda gammas: 2)
    spec = ("default: crop=pad, crop_padding=4, flip_prob=0.5, jitter_prob=0.8, brightness=0.4, contrast=None, "
            "saturation=None, gray_prob=None")
    assert parse_augmentation(spec)[1] == ViewSettings().augment()
    out = tmp_path / "aug"
    assert cli.main(["augmentations", "--out", str(out), "--data-dir", str(cifar_dir), "--no-progress",
                     "--arch", "mlp", "--n-pairs", "20", "--d", "2", "--pool", "24", "--probe-test", "30",
                     "--gallery-modes", "1", "--augmentations", spec, "none", "--losses", "vicreg",
                     "--train-network", "true"]) == 0
    net = json.loads((out / "results.json").read_text())["network"]
    assert net["labels"] == ["default BT", "none BT", "default VICReg", "none VICReg"] and net["d"] == 2
    M = np.asarray(net["alignment"])
    np.testing.assert_allclose(M, M.T, atol=1e-12)
    np.testing.assert_allclose(np.diag(M), 1.0, atol=1e-9)
    assert (out / "alignment_network.png").exists()

    ref = tmp_path / "methods"
    assert cli.main(["methods", "--out", str(ref), "--data-dir", str(cifar_dir), "--no-progress", "--n-pairs", "12",
                     "--n-test", "6", "--downsample", "8", "--d", "2", "--width", "32",
                     "--losses", "barlow_twins", "vicreg"]) == 0
    r = json.loads((ref / "results.json").read_text())
    for loss in ("barlow_twins", "vicreg"):
        assert net["settings"]["default"][loss]["steps"] == r["methods"][loss]["steps"]
    assert M[0, 2] == pytest.approx(np.asarray(r["alignment_matrix"])[0, 1], abs=1e-6)
