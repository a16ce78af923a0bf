"""The kernel-model experiment shared by ``stepwise-ntk linear`` and ``stepwise-ntk kernel``.

Given CIFAR-10 views, their kernel ``K`` and small initial embeddings ``F0``, the solver
integrates the Barlow Twins gradient flow and the theory predicts the step times
``t_j = ln(1/λ_j(0) − 1)/(8γ_j)``, the aligned eigenvalue curves and the final embeddings
(kernel PCA of the contrastive kernel). Reported (``results.json``): the contrastive
eigenvalues, predicted and simulated step times (the ``j``-th crossing of 1/2 by the sorted
eigenvalues against the ``j``-th smallest prediction) with their relative errors, median and
worst; the loss on each plateau against ``d − k``; and the Procrustes error of the final
embeddings against the closed form. Figures: the staircase with theory, the views'
embeddings at a point/line/plane/solid, and a gallery of the top modes.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from stepwise_ntk.data import CIFAR10Dataset, cifar10_pairs, load_cifar10, normalize
from stepwise_ntk.data import downsample as _downsample
from stepwise_ntk.experiments._plots import plot_mode_gallery, plot_projections, plot_staircase
from stepwise_ntk.experiments._run_dir import RunDir
from stepwise_ntk.experiments._settings import check_settings
from stepwise_ntk.experiments._views import ViewSettings
from stepwise_ntk.predictor import crossing_times, plateau_losses
from stepwise_ntk.solver import solve
from stepwise_ntk.theory import (
    aligned_eigenvalues,
    contrastive_eigensystem,
    final_embeddings,
    initial_eigenvalues,
    mode_functions_new,
    procrustes_error,
    step_times,
)

__all__ = ["ExperimentSettings", "Problem", "load_problem_data", "run_kernel_model"]


@dataclasses.dataclass(frozen=True)
class ExperimentSettings(ViewSettings):
    """Settings shared by the kernel-model experiments (each is a flag: ``--n-pairs 500``)."""

    n_pairs: int = dataclasses.field(default=500, metadata={"help": "images n (2n augmented views)", "min": 1})
    d: int = dataclasses.field(default=8, metadata={"help": "embedding dimension", "min": 1})
    init_scale: float = dataclasses.field(default=1e-3, metadata={"help": "std of the entries of W(0)", "above": 0})
    n_times: int = dataclasses.field(
        default=200, metadata={"help": "log-spaced output times", "min": 10, "hint": " (to resolve the steps)"}
    )
    seed: int = dataclasses.field(default=0, metadata={"help": "PRNG seed (views and W(0))"})
    data_dir: str | None = dataclasses.field(
        default=None, metadata={"help": "CIFAR-10 folder (else $STEPWISE_NTK_DATA)"}
    )
    split: str = dataclasses.field(default="train", metadata={"help": "CIFAR-10 split", "choices": ("train", "test")})
    method: str = dataclasses.field(
        default="auto", metadata={"help": "solver route", "choices": ("auto", "eigen", "function")}
    )
    gallery_modes: int = dataclasses.field(default=6, metadata={"help": "modes shown in modes.png", "min": 1})
    gallery_pool: int = dataclasses.field(
        default=2000, metadata={"help": "clean images the gallery picks from", "min": 1}
    )

    def __post_init__(self):
        check_settings(self)


@dataclasses.dataclass(frozen=True)
class Problem:
    """The data of one experiment: views in the pairing order and a pool of clean images."""

    views: jax.Array  # (2n, H, W, C) float64, normalised
    labels: np.ndarray  # (n,)
    indices: np.ndarray  # (n,) dataset indices of the pairs
    pool: np.ndarray  # (P, H, W, C) float64 clean normalised images for the mode gallery
    pool_index: np.ndarray  # (P,) their dataset indices
    dataset: CIFAR10Dataset
    key_init: jax.Array  # PRNG key for the initial embeddings


def load_problem_data(s: ExperimentSettings) -> Problem:
    """Augmented views (keyed by ``s.seed``) and a clean image pool from CIFAR-10."""
    key_views, key_init = jax.random.split(jax.random.PRNGKey(s.seed))
    views, labels, indices = cifar10_pairs(
        key_views,
        s.n_pairs,
        split=s.split,
        data_dir=s.data_dir,
        settings=s.augment(),
        downsample=s.downsample,
        dtype=jnp.float64,
        download=True,
        subset_seed=s.seed,
    )
    dataset = load_cifar10(s.split, s.data_dir)
    pool_index = np.arange(min(s.gallery_pool, len(dataset)))
    pool = normalize(dataset.images[pool_index], dtype=np.float64)
    if s.downsample > 1:
        pool = np.asarray(_downsample(pool, s.downsample))
    return Problem(views, labels, indices, np.asarray(pool), pool_index, dataset, key_init)


def run_kernel_model(
    s: ExperimentSettings,
    out: RunDir,
    problem: Problem,
    K: jax.Array,
    F0: jax.Array,
    K_pool: jax.Array,
    *,
    title: str,
    extra_results: dict[str, Any] | None = None,
    started: float | None = None,
    progress: bool = False,
) -> str:
    """Solve, compare with theory, write results/arrays/figures; return a one-line summary.

    Args:
      K: (2n, 2n) kernel of the views.
      F0: (2n, d) initial embeddings of the views.
      K_pool: (P, 2n) kernel between the clean pool images and the views (mode gallery).
      progress: progress bars of the gradient flow's integrations.
    """
    t_start = time.perf_counter() if started is None else started
    with out.phase(f"contrastive eigensystem (2n = {K.shape[0]})"):
        es = contrastive_eigensystem(K, s.n_pairs)
    n_positive = int(np.sum(np.asarray(es.gammas) > 0))
    if n_positive < s.d:
        raise ValueError(
            f"only {n_positive} positive contrastive eigenvalues for d={s.d}: the loss cannot reach zero; "
            f"lower --d or raise --n-pairs."
        )
    gammas = np.asarray(es.gammas[: s.d + 4])
    lam0 = initial_eigenvalues(es, F0)
    predicted = np.asarray(step_times(es, F0))
    g = gammas[: s.d]
    t_end = float(np.max(predicted + np.log(99.0) / (8 * g))) * 1.5
    t_begin = float(np.min(predicted)) / 100
    times = jnp.asarray(np.geomspace(t_begin, t_end, s.n_times))

    with out.phase(f"gradient flow ({s.method} route, {s.n_times} times)"):
        traj = solve(K, s.n_pairs, F0, times, method=s.method, K_test=K, progress=progress)
    eig = np.asarray(traj.eigenvalues)
    theory_eig = np.sort(np.asarray(aligned_eigenvalues(es.gammas[: s.d], lam0, times)), axis=1)[:, ::-1]

    simulated = crossing_times(np.asarray(times), eig)
    pred_sorted = np.sort(predicted)
    rel_err = np.abs(simulated - pred_sorted) / pred_sorted
    plateaus = plateau_losses(np.asarray(times), np.asarray(traj.loss), pred_sorted)
    expected_plateaus = s.d - np.arange(1, s.d)
    closed_form = final_embeddings(es, None, s.d)
    final_err = float(procrustes_error(traj.embeddings, closed_form))
    gap = float(gammas[s.d - 1] / gammas[s.d]) if gammas[s.d] > 0 else float("inf")

    plot_staircase(
        out.path / "staircase.png",
        np.asarray(times),
        np.asarray(traj.loss),
        eig,
        step_times=pred_sorted,
        theory_times=np.asarray(times),
        theory_eigenvalues=theory_eig,
        title=title,
    )
    # Before the first step, then between steps 1|2, 2|3 and 3|4: a point, a line, a plane,
    # a solid (Figure 1 of the paper). The last snapshot fixes the projection directions.
    edges = list(pred_sorted[:4]) + ([float(times[-1])] if s.d < 4 else [])
    snap_t = [pred_sorted[0] / 3] + [float(np.sqrt(a * b)) for a, b in zip(edges[:-1], edges[1:], strict=True)][:3]
    snap_idx = [int(np.argmin(np.abs(np.log(np.asarray(times)) - np.log(t)))) for t in snap_t]
    snapshots = np.asarray(traj.test_embeddings)[snap_idx]
    if s.d >= 3:
        plot_projections(
            out.path / "projections.png",
            snapshots,
            [float(times[i]) for i in snap_idx],
            labels=np.concatenate([problem.labels, problem.labels]),
            title="views' embeddings on the top-3 principal directions after three steps",
        )
    precondition, precondition_arrays = None, {}
    if getattr(s, "precondition", False):  # ``linear`` / ``kernel`` --precondition: same F0, preconditioned
        from stepwise_ntk.experiments._precondition import precondition_overlay

        precondition, precondition_arrays = precondition_overlay(s, out, es, K, F0, traj, times, theory_eig,
                                                                 title=title)
    modes = np.asarray(mode_functions_new(es, K_pool, min(s.gallery_modes, s.d)))
    ds = problem.dataset
    plot_mode_gallery(
        out.path / "modes.png",
        ds.images[problem.pool_index],
        modes,
        class_names=ds.class_names,
        labels=ds.labels[problem.pool_index],
    )

    out.save_arrays(
        times=np.asarray(times),
        loss=np.asarray(traj.loss),
        eigenvalues=eig,
        theory_eigenvalues=theory_eig,
        predicted_step_times=pred_sorted,
        simulated_step_times=simulated,
        gammas=np.asarray(es.gammas),
        lambda0=np.asarray(lam0),
        final_embeddings=np.asarray(traj.embeddings),
        closed_form_embeddings=np.asarray(closed_form),
        snapshot_times=np.asarray(times)[snap_idx],
        snapshots=snapshots,
        labels=problem.labels,
        indices=problem.indices,
        gallery_mode_values=modes,
        **precondition_arrays,
    )
    results: dict[str, Any] = {
        **(extra_results or {}),
        "n_pairs": s.n_pairs,
        "d": s.d,
        "gammas": gammas,
        "gap_ratio_d": gap,
        "lambda0": lam0,
        "predicted_step_times": pred_sorted,
        "simulated_step_times": simulated,
        "step_time_relative_error": rel_err,
        "step_time_median_relative_error": float(np.nanmedian(rel_err)),
        "step_time_worst_relative_error": float(np.nanmax(rel_err)),
        "plateau_loss": plateaus,
        "plateau_expected": expected_plateaus,
        "final_loss": float(traj.loss[-1]),
        "final_eigenvalues": eig[-1],
        "final_embedding_procrustes_error": final_err,
        "solver": {
            "method": traj.method,
            "integrator": traj.integrator,
            "reason": traj.reason,
            "n_steps": int(traj.stats.n_steps),
            "n_rejected": int(traj.stats.n_rejected),
        },
        "wall_time_s": time.perf_counter() - t_start,
    }
    if precondition is not None:
        results["precondition"] = precondition
    out.write_results(results)
    return (
        f"step times: median relative error {100 * results['step_time_median_relative_error']:.1f}%, "
        f"worst {100 * results['step_time_worst_relative_error']:.1f}%; "
        f"final-embedding Procrustes error {final_err:.2e} (gap γ_d/γ_d+1 = {gap:.2f}); "
        f"solver {traj.method}/{traj.integrator}"
        + ("" if precondition is None else
           f"\npreconditioned {precondition['preconditioner']}: all {s.d} modes past 1/2 "
           f"{_speedup(precondition['time_speedup'])} sooner in effective time (closed form "
           f"{_speedup(precondition['closed_form_time_speedup'])}); final alignment with the plain run "
           f"{precondition['final_alignment_with_plain']:.4f}")
    )


def _speedup(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}x"
