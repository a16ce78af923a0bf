"""`stepwise-ntk methods`: the cross-method alignment table against the library, its figures, bad input."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from stepwise_ntk.experiments import _plots, cli
from stepwise_ntk.experiments._methods import MethodsSettings, alignment_table
from stepwise_ntk.predictor import subspace_alignment

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _numpy_alignment(A, B):
    """Mean cos² of the principal angles, from orthonormal bases by float64 numpy QR and SVD."""
    qa, _ = np.linalg.qr(A)
    qb, _ = np.linalg.qr(B)
    s = np.linalg.svd(qa.T @ qb, compute_uv=False)
    return float(np.mean(s**2))


def test_alignment_table_is_the_pairwise_numpy_alignment():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(30, 3))
    # Two mixtures of one subspace (alignment 1), a half-shared one and an unrelated one.
    E = [base, base @ rng.normal(size=(3, 3)), np.hstack([base[:, :1], rng.normal(size=(30, 2))]),
         rng.normal(size=(30, 3))]
    M = alignment_table(E)
    assert M.shape == (4, 4)
    np.testing.assert_allclose(M, M.T, rtol=0, atol=0)
    np.testing.assert_allclose(np.diag(M), 1.0, rtol=0, atol=1e-12)
    for a in range(4):
        for b in range(4):
            if a != b:  # float64 routes: agree to rounding
                assert M[a, b] == pytest.approx(_numpy_alignment(E[a], E[b]), abs=1e-10)
    assert M[0, 1] == pytest.approx(1.0, abs=1e-10)
    # One shared direction out of three, the other two random in R^30: at least 1/3.
    assert 1 / 3 - 1e-10 <= M[0, 2] < 0.9


def test_alignment_table_handles_different_widths():
    # Rows must match; columns (d) may differ, as subspace_alignment allows.
    rng = np.random.default_rng(1)
    A, B = rng.normal(size=(20, 3)), rng.normal(size=(20, 3))
    M = alignment_table([A, B])
    assert M[0, 1] == pytest.approx(float(subspace_alignment(jnp.asarray(A), jnp.asarray(B))), rel=1e-12)


def test_method_figures_are_pngs(tmp_path):
    rng = np.random.default_rng(0)
    t = np.concatenate([[0.0], np.geomspace(1, 100, 30)])
    eig = 1 / (1 + np.exp(-(np.log(t[:, None] + 1e-9) - [[1.0, 3.0]])))
    names = ["Barlow Twins", "SimCLR", "VICReg"]
    p = _plots.plot_method_staircases(tmp_path / "s.png", names, [t] * 3, [2 - eig.sum(1)] * 3, [eig] * 3,
                                      [t] * 3, [2 - eig.sum(1)] * 3, [eig] * 3, step_times=[[3.0, 20.0]] * 3,
                                      log_eigenvalues=[False, True, True], title="x")
    assert p.read_bytes()[:8] == PNG_MAGIC
    M = alignment_table([rng.normal(size=(10, 2)) for _ in range(4)])
    q = _plots.plot_alignment_matrix(tmp_path / "a.png", M, ["a", "b", "c", "d"])
    assert q.read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(ValueError, match="len\\(labels\\)"):
        _plots.plot_alignment_matrix(tmp_path / "b.png", M, ["a", "b"])


def test_projections_2d_is_a_png_and_rejects_other_widths(tmp_path):
    rng = np.random.default_rng(0)
    snaps = np.stack([s * rng.normal(size=(20, 2)) for s in (1e-3, 0.5, 1.0)])
    p = _plots.plot_projections_2d(tmp_path / "p.png", snaps, [1.0, 10.0, 100.0], labels=np.arange(20) % 10)
    assert p.read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(ValueError, match="plot_projections"):
        _plots.plot_projections_2d(tmp_path / "q.png", np.zeros((2, 5, 3)), [1.0, 2.0])


def test_snapshot_indices_sit_before_and_between_the_steps():
    from stepwise_ntk.experiments._methods import snapshot_indices

    t = np.concatenate([[0.0], np.geomspace(1.0, 1e4, 81)])  # 20 records per decade
    idx = snapshot_indices(t, [30.0, 300.0, 3000.0])
    # A third of the first step, then the geometric means 30|300, 300|3000, 3000|end.
    expected = [10.0, np.sqrt(30 * 300), np.sqrt(300 * 3000), np.sqrt(3000 * 1e4)]
    np.testing.assert_allclose(t[idx], expected, rtol=10 ** (1 / 40) - 1 + 1e-9)  # half a record spacing
    assert snapshot_indices(t, [np.nan, np.nan]) == [t.size - 1]  # no step: the last record


def test_settings_need_two_distinct_losses():
    with pytest.raises(ValueError, match="at least two distinct"):
        MethodsSettings(losses=("barlow_twins",))
    with pytest.raises(ValueError, match="at least two distinct"):
        MethodsSettings(losses=("simclr", "simclr"))


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--losses", "barlow_twins"], "at least two distinct"),
        (["--arch-options", "depth"], "key=value"),
        (["--arch-options", "width=3"], "may not set 'width'"),
    ],
)
def test_bad_input_is_a_one_line_error_before_the_output_folder(tmp_path, capsys, argv, needle):
    out = tmp_path / "o"
    rc = cli.main(["methods", *argv, "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("stepwise-ntk methods: error: ")
    assert needle in err and not out.exists()


# Tiny run: 12 pairs of 4x4 images, an MLP of width 32, d = 2, two losses (SimCLR's kernel
# flow at small α takes thousands of steps; the slow test below runs all three).
TINY = ["--n-pairs", "12", "--n-test", "6", "--downsample", "8", "--d", "2", "--width", "32",
        "--n-records", "30", "--n-times", "30"]


def _check_run(out, losses, cifar_dir):
    from stepwise_ntk.data import cifar10_pairs
    from stepwise_ntk.experiments._network import LOSS_SETTINGS
    from stepwise_ntk.losses import LOSSES
    from stepwise_ntk.predictor import network_kernel
    from stepwise_ntk.theory import contrastive_eigensystem, final_embeddings

    names = {p.name for p in out.iterdir()}
    assert {"config.json", "results.json", "arrays.npz", "alignment.png", "staircases.png"} <= names
    r = json.loads((out / "results.json").read_text())
    a = np.load(out / "arrays.npz")
    assert r["status"] == "complete" and r["losses"] == list(losses)
    k = len(losses)
    M = np.asarray(r["alignment_matrix"])
    assert M.shape == (k + 1, k + 1)
    # The table is the alignment of the saved held-out embeddings (numpy route).
    E = [a[f"{loss}_test_embeddings"] for loss in losses] + [a["closed_form_test_embeddings"]]
    for i in range(k + 1):
        for j in range(i + 1, k + 1):
            assert M[i, j] == pytest.approx(_numpy_alignment(E[i], E[j]), abs=1e-9)
    # The kernel flows' table: of the saved flow embeddings, same rows and columns.
    Mf = np.asarray(r["alignment_matrix_theory"])
    Ef = [a[f"{loss}_flow_test_embeddings"] for loss in losses] + [a["closed_form_test_embeddings"]]
    for i in range(k + 1):
        for j in range(i + 1, k + 1):
            assert Mf[i, j] == pytest.approx(_numpy_alignment(Ef[i], Ef[j]), abs=1e-9)
    assert "alignment_theory.png" in names
    # One initialisation: every method's record at step 0 is its loss of the shared F0
    # (float32 network, float64 recomputation of the loss).
    F0 = jnp.asarray(a["F0"])
    for loss in losses:
        expected = float(LOSSES[loss](F0, **LOSS_SETTINGS[loss]))
        assert a[f"{loss}_network_loss"][0] == pytest.approx(expected, rel=1e-4)
    # The theory column: the top-d modes of α² Θ (analytic NTK) on the held-out views,
    # rebuilt from the CIFAR-10 views with the library (the Nyström extension).
    s = MethodsSettings(n_pairs=12, n_test=6, downsample=8, d=2, width=32, losses=tuple(losses),
                        data_dir=str(cifar_dir))
    import jax

    key_views, _ = jax.random.split(jax.random.PRNGKey(0))
    views, _, _ = cifar10_pairs(key_views, 12, split="train", data_dir=str(cifar_dir), settings=s.augment(),
                                downsample=8, dtype=jnp.float64, subset_seed=0)
    test_views, _, _ = cifar10_pairs(jax.random.fold_in(jax.random.PRNGKey(0), 1), 6, split="test",
                                     data_dir=str(cifar_dir), settings=s.augment(), downsample=8,
                                     dtype=jnp.float64, subset_seed=0)
    kern = network_kernel(s.base_architecture(32), np.asarray(views), np.asarray(test_views))
    es = contrastive_eigensystem(jnp.asarray(s.alpha**2 * kern.K), 12)
    ref = final_embeddings(es, jnp.asarray(s.alpha**2 * kern.K_test), 2)
    np.testing.assert_allclose(a["closed_form_test_embeddings"], np.asarray(ref), rtol=1e-8, atol=1e-12)
    # Every method learned its d modes: each eigenvalue of C crossed its step level.
    for loss in losses:
        assert all(np.isfinite(x) for x in r["methods"][loss]["network_step_times"])
    return r


@pytest.mark.slow  # about 20 s on an idle 2-core CPU (compiling two training loops and flows)
def test_two_methods_end_to_end(tmp_path, cifar_dir):
    out = tmp_path / "m"
    argv = ["methods", "--out", str(out), "--data-dir", str(cifar_dir), "--no-progress", *TINY,
            "--losses", "barlow_twins", "vicreg"]
    assert cli.main(argv) == 0
    _check_run(out, ("barlow_twins", "vicreg"), cifar_dir)


@pytest.mark.slow
def test_three_methods_end_to_end(tmp_path, cifar_dir):
    out = tmp_path / "m3"
    assert cli.main(["methods", "--out", str(out), "--data-dir", str(cifar_dir), "--no-progress", *TINY]) == 0
    r = _check_run(out, ("barlow_twins", "simclr", "vicreg"), cifar_dir)
    assert set(r["methods"]) == {"barlow_twins", "simclr", "vicreg"}
