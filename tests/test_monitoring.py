"""Monitoring a run: spectral metrics and probe accuracies per record, against direct computations."""

import numpy as np
import pytest

from stepwise_ntk.experiments._monitoring import training_monitoring
from stepwise_ntk.predictor import linear_probe, rankme


def test_training_monitoring_on_a_synthetic_staircase(tmp_path):
    rng = np.random.default_rng(0)
    n, d, R = 40, 3, 6
    times = np.geomspace(1.0, 100.0, R)
    eig = np.clip(np.array([[1.0, 0.0, 0.0]] * 2 + [[1.0, 1.0, 0.0]] * 2 + [[1.0, 1.0, 1.0]] * 2), 0, 1)
    labels = rng.integers(0, 2, n)
    signal = np.concatenate([labels, labels])[None, :, None] * np.linspace(0, 3, R)[:, None, None]
    emb = rng.normal(size=(R, 2 * n, d)) + signal  # the labels grow into the embeddings
    test_labels = rng.integers(0, 2, 10)
    test_emb = rng.normal(size=(20, d)) + 3 * np.concatenate([test_labels, test_labels])[:, None]
    out = training_monitoring(tmp_path / "spectral.png", times, eig, emb, labels, theory_times=times,
                              theory_eigenvalues=eig, step_times=[2.0, 20.0], final_embeddings=emb[-1],
                              test_embeddings=test_emb, test_labels=test_labels)
    assert (tmp_path / "spectral.png").exists()
    s, p = out["spectral"], out["probe"]
    np.testing.assert_array_equal(s["learned_modes"], [1, 1, 2, 2, 3, 3])
    np.testing.assert_allclose(s["rankme"], rankme(eig), rtol=1e-12)
    np.testing.assert_allclose(s["rankme_theory"], s["rankme"], rtol=1e-12)
    s_emb = np.linalg.svd(emb, compute_uv=False)
    q = s_emb / s_emb.sum(-1, keepdims=True) + 1e-7
    np.testing.assert_allclose(s["rankme_embeddings"], np.exp(-np.sum(q * np.log(q), -1)), rtol=1e-10)
    assert p["cv_accuracy"][0] < 0.75 and p["cv_accuracy"][-1] > 0.9  # chance at first, the labels at the end
    direct = linear_probe(emb[-1], np.concatenate([labels, labels]), test_emb,
                          np.concatenate([test_labels, test_labels]), groups=np.r_[np.arange(n), np.arange(n)])
    assert p["test_accuracy_final"] == pytest.approx(direct.accuracy)
