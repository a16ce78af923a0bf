"""Figures: the selection logic against numpy, and each plot writes a real PNG atomically."""

import numpy as np
import pytest

from stepwise_ntk.experiments import _plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path):
    return path.read_bytes()[:8] == PNG_MAGIC


def test_gallery_indices_are_the_extremes_of_each_mode():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(50, 3))
    top, bottom = _plots.gallery_indices(values, 4)
    for j in range(3):
        assert set(top[j]) == set(np.argsort(values[:, j])[-4:])
        assert set(bottom[j]) == set(np.argsort(values[:, j])[:4])
        assert np.all(np.diff(values[top[j], j]) <= 0)
        assert np.all(np.diff(values[bottom[j], j]) >= 0)


def test_gallery_rejects_more_images_than_exist():
    with pytest.raises(ValueError, match="n_show"):
        _plots.gallery_indices(np.zeros((3, 2)), 4)


def test_principal_directions_recover_a_planted_plane():
    rng = np.random.default_rng(1)
    basis = np.linalg.qr(rng.normal(size=(6, 2)))[0]
    emb = rng.normal(size=(200, 2)) * [3.0, 1.0] @ basis.T
    dirs = _plots.principal_directions(emb, 2)
    # Projector onto the found plane equals the planted one (float64 round-off).
    np.testing.assert_allclose(dirs @ dirs.T, basis @ basis.T, atol=1e-10)


def test_plots_write_pngs(tmp_path):
    t = np.geomspace(1e-2, 10, 30)
    eig = 1 / (1 + np.exp(-np.subtract.outer(np.log(t), [0.0, 1.0])))
    loss = ((1 - eig) ** 2).sum(1)
    p1 = _plots.plot_staircase(
        tmp_path / "a" / "stair.png", t, loss, eig, step_times=[1.0, 2.7], theory_times=t, theory_eigenvalues=eig
    )
    rng = np.random.default_rng(2)
    p2 = _plots.plot_projections(tmp_path / "proj.png", rng.normal(size=(3, 40, 4)), [0.1, 1, 10])
    imgs = rng.integers(0, 256, size=(20, 8, 8, 3), dtype=np.uint8)
    p3 = _plots.plot_mode_gallery(tmp_path / "gal.png", imgs, rng.normal(size=(20, 2)), n_show=3)
    p4 = _plots.plot_width_sweep(tmp_path / "sweep.png", [64, 128], [0.5, 0.8], [[1.2, 1.1], [1.05, 1.0]])
    for p in (p1, p2, p3, p4):
        assert _is_png(p)
    # atomic writes leave only the finished files
    assert (sorted(x.name for x in tmp_path.rglob("*") if x.is_file())
            == ["gal.png", "proj.png", "stair.png", "sweep.png"])
