"""Label-free spectral monitoring and linear probes of a training run, next to its kernel theory.

What an SSL practitioner would log during training, computed from a run's records:

* the spectral metrics (:func:`stepwise_ntk.predictor.spectral_metrics`: RankMe, α-ReQ,
  participation ratio, learned modes) of the eigenvalues of ``C`` at every record, and
  RankMe of the recorded view embeddings themselves (:func:`~stepwise_ntk.predictor.embedding_spectrum`);
  the same metrics of the kernel theory's eigenvalues of ``C`` on its own time axis;
* the linear-probe accuracy of the recorded view embeddings at every record, by
  cross-validation over the training images (the records hold no held-out embeddings), and
  of the final embeddings on the held-out views (:func:`~stepwise_ntk.predictor.linear_probe`):
  does each step add accuracy, and how much.

:func:`training_monitoring` returns them as ``results.json`` entries and draws ``spectral.png``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from stepwise_ntk.experiments._plots import plot_spectral_metrics
from stepwise_ntk.predictor import (
    cross_validated_accuracy,
    embedding_spectrum,
    linear_probe,
    pair_groups,
    rankme,
    spectral_metrics,
)

__all__ = ["training_monitoring"]


def training_monitoring(
    path: str | Path,
    times: Any,
    eigenvalues: Any,
    embeddings: Any,
    labels: Any,
    *,
    theory_times: Any,
    theory_eigenvalues: Any,
    step_times: Any = None,
    final_embeddings: Any = None,
    test_embeddings: Any = None,
    test_labels: Any = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Spectral metrics and probe accuracies along a run; writes the figure to ``path``.

    Args:
      path: where ``spectral.png`` goes.
      times, eigenvalues: ``(R,)``, ``(R, d)`` the run's records (eigenvalues of ``C``).
      embeddings: ``(R, 2n, d)`` recorded view embeddings, or None (no embedding RankMe, no probe curve).
      labels: ``(n,)`` class of each image (the views are in pairing order).
      theory_times, theory_eigenvalues: ``(T,)``, ``(T, d)`` the kernel theory's.
      step_times: ``(d,)`` step times drawn as dotted lines.
      final_embeddings, test_embeddings: ``(2n, d)``, ``(2m, d)`` the final embeddings of the
        views and of held-out views (pairing order), for the held-out probe accuracy.
      test_labels: ``(m,)`` classes of the held-out images.

    Returns:
      ``{"spectral": {...}, "probe": {...}}`` (curves as arrays, one value per record).
    """
    times = np.asarray(times, np.float64)
    labels = np.asarray(labels)
    y = np.concatenate([labels, labels])
    groups = pair_groups(labels.shape[0])
    net = spectral_metrics(eigenvalues).to_dict()
    theory = spectral_metrics(theory_eigenvalues).to_dict()
    spectral: dict[str, Any] = {"times": times, **net, "theory_times": np.asarray(theory_times, np.float64),
                                **{f"{k}_theory": v for k, v in theory.items()}}
    curves = dict(net)
    probe: dict[str, Any] = {}
    if embeddings is not None:
        E = np.asarray(embeddings, np.float64)
        spectral["rankme_embeddings"] = rankme(embedding_spectrum(E))
        acc = np.array([cross_validated_accuracy(e, y, groups=groups, seed=seed) if np.all(np.isfinite(e))
                        else np.nan for e in E])
        probe = {"times": times, "cv_accuracy": acc, "chance": 1.0 / max(np.unique(labels).size, 1),
                 "method": "ridge classifier on the views' embeddings, 5-fold CV over training images"}
        curves["probe accuracy (CV)"] = acc
    if final_embeddings is not None and test_embeddings is not None and test_labels is not None:
        t = np.asarray(test_labels)
        res = linear_probe(np.asarray(final_embeddings, np.float64), y, np.asarray(test_embeddings, np.float64),
                           np.concatenate([t, t]), groups=groups, seed=seed)
        probe["test_accuracy_final"] = res.accuracy
    plot_spectral_metrics(path, times, curves, theory_times=theory_times, theory_metrics=theory,
                          step_times=step_times, label="network", theory_label="kernel theory",
                          title="monitoring along training: network (solid), kernel theory (dashed)")
    return {"spectral": spectral, "probe": probe}
