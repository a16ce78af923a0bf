"""``stepwise-ntk linear``: the paper's linear-model experiment on CIFAR-10 pairs.

The linear model ``f(x) = W x`` is the kernel model with ``K = X Xᵀ``; inputs are flattened
normalised views scaled by ``1/√m`` (``m`` pixels), so ``K_ii ≈ 1`` and times are O(1) (the
same as the unscaled model at time ``t/m``). ``W(0)`` has i.i.d. ``N(0, init_scale²)``
entries. Everything else is :func:`stepwise_ntk.experiments._kernel_model.run_kernel_model`.

On top of the staircase, what the modes are worth and what they encode:

* the linear-probe accuracy on CIFAR-10 labels of the top-``k`` contrastive modes,
  ``k = 1 … probe_modes`` (the closed-form final embeddings of a ``k``-dimensional model,
  :func:`stepwise_ntk.theory.final_embeddings`): a ridge probe fitted on the training views,
  its ridge chosen by cross-validation over images, scored on ``probe_test`` clean images of
  the other split (:func:`stepwise_ntk.predictor.probe_curve`); the raw pixels (the
  kernel's whole feature space) as the reference; ``probe.png``;
* for each of the top ``d`` modes, its correlation with interpretable statistics of the
  clean gallery images (:func:`stepwise_ntk.data.image_statistics`, hue as a circular
  quantity) and the class ``η²`` (:func:`stepwise_ntk.predictor.mode_statistics`); the mode
  gallery ``modes.png`` annotated with each mode's strongest statistic;
* the spectral monitoring metrics (RankMe, α-ReQ, participation ratio, learned modes) of
  the simulated eigenvalues of ``C`` against the closed-form staircase's; ``spectral.png``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from stepwise_ntk.data import balanced_subset, image_statistics, load_cifar10, normalize
from stepwise_ntk.data import downsample as _downsample
from stepwise_ntk.experiments._kernel_model import ExperimentSettings, Problem, load_problem_data, run_kernel_model
from stepwise_ntk.experiments._plots import plot_mode_gallery, plot_probe_curve, plot_spectral_metrics
from stepwise_ntk.experiments._run_dir import RunDir
from stepwise_ntk.experiments._settings import PreconditionedRunFlags
from stepwise_ntk.predictor import (
    linear_probe,
    mode_statistics,
    pair_groups,
    plateau_losses,
    predicted_spectral_metrics,
    probe_curve,
    spectral_metrics,
)
from stepwise_ntk.theory import contrastive_eigensystem, final_embeddings, mode_functions_new

__all__ = ["LinearSettings", "run_linear", "flatten_scaled", "held_out_images"]


@dataclasses.dataclass(frozen=True)
class LinearSettings(PreconditionedRunFlags, ExperimentSettings):
    """Settings of ``stepwise-ntk linear`` (each is a flag: ``--n-pairs 500``)."""

    probe_modes: int = dataclasses.field(
        default=64, metadata={"help": "probe the top k = 1..this many contrastive modes", "min": 1}
    )
    probe_test: int = dataclasses.field(
        default=2000, metadata={"help": "held-out clean images (other split) the probe is scored on", "min": 1}
    )


def flatten_scaled(x: jax.Array) -> jax.Array:
    """(N, H, W, C) -> (N, m) rows scaled by 1/√m."""
    x = x.reshape(x.shape[0], -1)
    return x / np.sqrt(x.shape[1])


def held_out_images(s: Any) -> tuple[np.ndarray, np.ndarray]:
    """``probe_test`` clean, class-balanced, normalised images of the split other than ``s.split``, and their labels."""
    other = load_cifar10("test" if s.split == "train" else "train", s.data_dir)
    idx = balanced_subset(other.labels, min(s.probe_test, len(other)), seed=s.seed)
    images = normalize(other.images[idx], dtype=np.float64)
    if s.downsample > 1:
        images = np.asarray(_downsample(images, s.downsample))
    return np.asarray(images), np.asarray(other.labels)[idx]


def _modes_worth_and_content(s: LinearSettings, problem: Problem, X: jax.Array, out: RunDir) -> dict[str, Any]:
    """The probe-accuracy curve and the mode-statistic table (see the module docstring)."""
    n = s.n_pairs
    es = contrastive_eigensystem(X @ X.T, n)
    n_pos = int(np.sum(np.asarray(es.gammas) > 0))
    K = min(s.probe_modes, n_pos)
    test_images, test_labels = held_out_images(s)
    X_test = flatten_scaled(jnp.asarray(test_images))
    F_views = np.asarray(final_embeddings(es, None, K))
    F_test = np.asarray(final_embeddings(es, X_test @ X.T, K))
    y_views = np.concatenate([problem.labels, problem.labels])
    groups = pair_groups(n)
    ks, acc = probe_curve(F_views, y_views, F_test, test_labels, groups=groups, seed=s.seed)
    pixels = linear_probe(np.asarray(X), y_views, np.asarray(X_test), test_labels, groups=groups, seed=s.seed)
    d_acc = float(acc[min(s.d, K) - 1])
    plot_probe_curve(out.path / "probe.png", ks, acc, chance=1 / 10, references={"raw pixels": pixels.accuracy},
                     marks={f"d = {s.d}": s.d}, title=f"linear model, CIFAR-10 n={n}: labels from the top-k modes")

    # What the top d modes encode, on the clean gallery images.
    ds = problem.dataset
    pool_images = ds.images[problem.pool_index]
    k_modes = min(s.d, n_pos)
    modes = np.asarray(mode_functions_new(es, flatten_scaled(jnp.asarray(problem.pool)) @ X.T, k_modes))
    table = mode_statistics(modes, image_statistics(pool_images), labels=ds.labels[problem.pool_index])
    rows = table.table()
    k_show = min(s.gallery_modes, k_modes)
    notes = [
        f"{r['strongest']} {'R' if r['correlation'] is None else 'r'}="
        f"{r['strength'] if r['correlation'] is None else r['correlation']:+.2f}\nclass η²={r['class_eta2']:.2f}"
        for r in rows[:k_show]
    ]
    return {
        "probe": {
            "ks": ks,
            "accuracy": acc,
            "accuracy_at_d": d_acc,
            "best_k": int(ks[int(np.argmax(acc))]),
            "best_accuracy": float(np.max(acc)),
            "pixels_accuracy": pixels.accuracy,
            "chance": 0.1,
            "n_test_images": int(test_labels.shape[0]),
            "method": "ridge classifier on standardised features, ridge by 5-fold CV over training images",
        },
        "mode_statistics": rows,
        "_gallery": (pool_images, modes[:, :k_show], notes),
    }


def _spectral(out: RunDir, s: LinearSettings) -> dict[str, Any]:
    """Spectral metrics of the run's simulated eigenvalues of ``C`` and of the closed form."""
    arrays = np.load(out.path / "arrays.npz")
    times, eig, steps = arrays["times"], arrays["eigenvalues"], arrays["predicted_step_times"]
    sim = spectral_metrics(eig).to_dict()
    # The closed form on the same axis, in mode order (unsorted λ_j(t), same metrics).
    theory = predicted_spectral_metrics(arrays["gammas"][: s.d], arrays["lambda0"], times).to_dict()
    plot_spectral_metrics(out.path / "spectral.png", times, sim, theory_times=times, theory_metrics=theory,
                          step_times=steps, title="spectral metrics of C along the staircase (simulation vs theory)",
                          time_label="time t")
    on_plateaus = {name: plateau_losses(times, np.asarray(v, np.float64), steps) for name, v in sim.items()}
    return {
        "spectral": {
            "times": times,
            **sim,
            **{f"{k}_theory": v for k, v in theory.items()},
            "rankme_on_plateaus": on_plateaus["rankme"],
            "participation_ratio_on_plateaus": on_plateaus["participation_ratio"],
            "plateau_learned_modes": np.arange(1, s.d),
        }
    }


def run_linear(settings: LinearSettings, out: RunDir, *, progress: bool = True) -> str:
    """Run the experiment, write ``results.json``, ``arrays.npz`` and figures into ``out``."""
    s = settings
    started = time.perf_counter()
    problem = load_problem_data(s)
    X = flatten_scaled(problem.views)
    W0 = s.init_scale * jax.random.normal(problem.key_init, (s.d, X.shape[1]), jnp.float64)
    extra = _modes_worth_and_content(s, problem, X, out)
    gallery = extra.pop("_gallery")
    summary = run_kernel_model(
        s,
        out,
        problem,
        X @ X.T,
        X @ W0.T,
        flatten_scaled(jnp.asarray(problem.pool)) @ X.T,
        title=f"linear Barlow Twins, CIFAR-10 n={s.n_pairs}, d={s.d}",
        extra_results=extra,
        started=started,
        progress=progress,
    )
    # After the shared experiment: its gallery annotated, and the spectral metrics of its trajectory.
    ds = problem.dataset
    plot_mode_gallery(out.path / "modes.png", gallery[0], gallery[1], annotations=gallery[2],
                      class_names=ds.class_names, labels=ds.labels[problem.pool_index])
    results = json.loads((out.path / "results.json").read_text())
    results.pop("status", None)
    results.update(_spectral(out, s))
    results["wall_time_s"] = time.perf_counter() - started
    out.write_results(results)
    probe = extra["probe"]
    first = extra["mode_statistics"][0] if extra["mode_statistics"] else None
    return (
        f"{summary}\nprobe accuracy (held-out): top-{s.d} modes {probe['accuracy_at_d']:.3f}, best "
        f"{probe['best_accuracy']:.3f} at k={probe['best_k']}, raw pixels {probe['pixels_accuracy']:.3f}"
        + (f"; mode 1 tracks {first['strongest']} ({first['strength']:.2f})" if first else "")
    )
