"""Figures for the CLI, notebooks and README: staircases, eigenvalue curves, projections, modes.

Every function takes plain arrays, writes one PNG atomically and returns its path; the
selection logic a picture depends on (which images a mode gallery shows, which directions
a projection uses) is a separate pure function so tests can check it without pixels.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: the CLI and CI have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from stepwise_ntk._io import atomic_open  # noqa: E402

__all__ = [
    "gallery_indices",
    "principal_directions",
    "plot_staircase",
    "plot_projections",
    "plot_mode_gallery",
    "plot_width_sweep",
    "plot_network_vs_theory",
    "plot_width_curves",
    "plot_probe_curve",
    "plot_spectral_metrics",
    "plot_gamma_spectra",
    "plot_statistic_strengths",
    "plot_alignment_matrix",
    "plot_method_staircases",
    "plot_projections_2d",
]


def _save(fig, path: str | os.PathLike) -> Path:
    """Write ``fig`` as a PNG to ``path`` atomically and close it."""
    try:
        with atomic_open(path) as f:
            fig.savefig(f, format="png", dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)
    return Path(path)


def plot_staircase(
    path,
    times,
    loss,
    eigenvalues,
    *,
    step_times=None,
    theory_times=None,
    theory_eigenvalues=None,
    title: str = "",
    time_label: str = "effective time  t = lr x step",
) -> Path:
    """Loss staircase (left) and embedding eigenvalues (right) against log time.

    Args:
      times: (T,) positive, increasing.
      loss: (T,).
      eigenvalues: (T, d), eigenvalues of C, descending.
      step_times: (d,) predicted step times, drawn as dashed vertical lines.
      theory_times, theory_eigenvalues: (T',), (T', d) closed-form curves, dashed.
    """
    times = np.asarray(times)
    eigenvalues = np.asarray(eigenvalues)
    d = eigenvalues.shape[1]
    colors = plt.cm.viridis(np.linspace(0, 0.9, d))
    fig, (ax_loss, ax_eig) = plt.subplots(1, 2, figsize=(11, 4))
    ax_loss.plot(times, loss, color="k", lw=2, label="simulation")
    ax_loss.set_xscale("log")
    ax_loss.set_xlabel(time_label)
    ax_loss.set_ylabel(r"loss $\|C - I\|_F^2$")
    for j in range(d):
        ax_eig.plot(times, eigenvalues[:, j], color=colors[j], lw=2)
    if theory_eigenvalues is not None:
        for j in range(d):
            ax_eig.plot(theory_times, np.asarray(theory_eigenvalues)[:, j], color=colors[j], ls="--", lw=1)
    if step_times is not None:
        for j, t in enumerate(np.asarray(step_times)):
            for ax in (ax_loss, ax_eig):
                ax.axvline(t, color=colors[j], ls="--", lw=0.8, alpha=0.7)
        ax_loss.plot([], [], color="gray", ls="--", label="predicted step times")
    ax_loss.legend(loc="lower left")
    ax_eig.set_xscale("log")
    ax_eig.set_xlabel(time_label)
    ax_eig.set_ylabel(r"eigenvalues of $C$")
    if theory_eigenvalues is not None:
        ax_eig.plot([], [], color="gray", ls="--", label="theory")
        ax_eig.plot([], [], color="gray", label="simulation")
        ax_eig.legend(loc="upper left")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def principal_directions(embeddings: np.ndarray, k: int = 3) -> np.ndarray:
    """Top-k principal directions (d, k) of embeddings (N, d), sign fixed by the largest entry.

    Uncentred, like C itself (the loss has no centring), so a collapsed embedding at the
    origin projects to a point and one learned direction to a line.
    """
    embeddings = np.asarray(embeddings, np.float64)
    if k > embeddings.shape[1]:
        raise ValueError(f"k={k} principal directions requested from d={embeddings.shape[1]} dims; use k <= d.")
    _, _, vt = np.linalg.svd(embeddings, full_matrices=False)
    dirs = vt[:k].T
    signs = np.sign(dirs[np.argmax(np.abs(dirs), axis=0), np.arange(k)])
    return dirs * signs


def plot_projections(path, snapshots, times, *, labels=None, title: str = "") -> Path:
    """The views' embeddings on the last snapshot's top-3 principal directions at a few times.

    Each panel's axes are the coordinates ``f(x) · u_k`` on the principal directions
    ``u_1, u_2, u_3`` of the last snapshot (the same directions and scale in every panel).

    Args:
      snapshots: (S, N, d) embeddings at S times (d >= 3).
      times: (S,).
      labels: optional (N,) class labels for colour.
    """
    snapshots = np.asarray(snapshots)
    dirs = principal_directions(snapshots[-1], 3)
    lim = np.abs(snapshots[-1] @ dirs).max() * 1.1
    fig = plt.figure(figsize=(4 * len(times), 4))
    for s, t in enumerate(times):
        ax = fig.add_subplot(1, len(times), s + 1, projection="3d")
        p = snapshots[s] @ dirs
        colour = {"c": labels, "cmap": "tab10"} if labels is not None else {"color": "C0"}
        ax.scatter(p[:, 0], p[:, 1], p[:, 2], s=4, alpha=0.7, **colour)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_zlim(-lim, lim)
        ax.set_xlabel("f·u₁")
        ax.set_ylabel("f·u₂")
        ax.set_zlabel("f·u₃")
        ax.set_title(f"t = {t:.3g}")
    fig.supxlabel("embeddings on the top-3 principal directions u₁, u₂, u₃ of the last snapshot", fontsize=9)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def gallery_indices(mode_values: np.ndarray, n_show: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the n_show highest and lowest values of each mode.

    Args:
      mode_values: (N, k) mode function values on N images.
    Returns:
      (top, bottom), each (k, n_show); top[j] in descending, bottom[j] in ascending order.
    """
    mode_values = np.asarray(mode_values)
    if n_show > mode_values.shape[0]:
        raise ValueError(f"n_show={n_show} exceeds the {mode_values.shape[0]} images; lower n_show.")
    order = np.argsort(mode_values, axis=0, kind="stable")
    return order[::-1][:n_show].T, order[:n_show].T


def plot_width_sweep(path, widths: Sequence[int], alignment, step_time_ratio=None, *, title: str = "") -> Path:
    """Alignment with the NTK prediction (and step-time ratio network/theory) against width."""
    ncols = 1 if step_time_ratio is None else 2
    fig, axes = plt.subplots(1, ncols, figsize=(5 * ncols, 4), squeeze=False)
    ax = axes[0, 0]
    ax.plot(widths, alignment, "o-")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("width")
    ax.set_ylabel("subspace alignment with theory")
    ax.set_ylim(0, 1.02)
    if step_time_ratio is not None:
        ratio = np.asarray(step_time_ratio)
        ax = axes[0, 1]
        ax.plot(widths, ratio if ratio.ndim == 1 else np.median(ratio, axis=1), "o-")
        ax.axhline(1.0, color="gray", ls="--")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("width")
        ax.set_ylabel("step time ratio network / theory (median)")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_network_vs_theory(
    path,
    times,
    loss,
    eigenvalues,
    theory_times,
    theory_loss,
    theory_eigenvalues,
    *,
    step_times=None,
    step_label: str = "predicted step times",
    log_eigenvalues: bool = False,
    title: str = "",
    time_label: str = "effective time  t = lr x step",
) -> Path:
    """A trained network's loss and eigenvalues of ``C`` (solid) over its theory's (dashed).

    Records at ``t <= 0`` (step 0) are left out: the time axis is logarithmic.
    ``log_eigenvalues``: log eigenvalue axis (losses whose eigenvalues do not level off at 1,
    where the steps show as jumps by orders of magnitude).

    Args:
      times, loss, eigenvalues: (T,), (T,), (T, d) the network's records, eigenvalues descending.
      theory_times, theory_loss, theory_eigenvalues: (T',), (T',), (T', d) the kernel model.
      step_times: (d,) step times drawn as dotted vertical lines (e.g. the closed form).
    """
    t, th_t = np.asarray(times, np.float64), np.asarray(theory_times, np.float64)
    keep, th_keep = t > 0, th_t > 0
    eig, th_eig = np.asarray(eigenvalues)[keep], np.asarray(theory_eigenvalues)[th_keep]
    d = eig.shape[1]
    colors = plt.cm.viridis(np.linspace(0, 0.9, d))
    fig, (ax_loss, ax_eig) = plt.subplots(1, 2, figsize=(12, 4.5))
    ax_loss.plot(t[keep], np.asarray(loss)[keep], color="k", lw=2, label="network")
    ax_loss.plot(th_t[th_keep], np.asarray(theory_loss)[th_keep], color="C3", ls="--", lw=1.5, label="kernel theory")
    for j in range(d):
        ax_eig.plot(t[keep], eig[:, j], color=colors[j], lw=2)
        ax_eig.plot(th_t[th_keep], th_eig[:, j], color=colors[j], ls="--", lw=1.2)
    if step_times is not None:
        for j, st in enumerate(np.asarray(step_times)):
            if np.isfinite(st):
                for ax in (ax_loss, ax_eig):
                    ax.axvline(st, color=colors[min(j, d - 1)], ls=":", lw=1, alpha=0.8)
        ax_loss.plot([], [], color="gray", ls=":", label=step_label)
    ax_eig.plot([], [], color="gray", lw=2, label="network")
    ax_eig.plot([], [], color="gray", ls="--", label="kernel theory")
    for ax in (ax_loss, ax_eig):
        ax.set_xscale("log")
        ax.set_xlabel(time_label)
    if log_eigenvalues:
        ax_eig.set_yscale("log")
    ax_loss.set_ylabel(r"loss")
    ax_eig.set_ylabel(r"eigenvalues of $C$")
    ax_loss.legend(loc="lower left")
    ax_eig.legend(loc="upper left")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_width_curves(path, widths, times, eigenvalues, theory_times, theory_eigenvalues, *, title: str = "") -> Path:
    """One panel per width: the network's eigenvalues of ``C`` (solid) over its theory's (dashed).

    Args:
      widths: (W,).
      times, eigenvalues: W arrays (T_w,), (T_w, d): each network's records (t <= 0 dropped).
      theory_times, theory_eigenvalues: W arrays (T'_w,), (T'_w, d): each width's kernel model.
    """
    W = len(widths)
    fig, axes = plt.subplots(1, W, figsize=(4 * W, 3.6), squeeze=False, sharey=True)
    for ax, w, t, lam, tt, tl in zip(axes[0], widths, times, eigenvalues, theory_times, theory_eigenvalues,
                                     strict=True):
        t, lam, tt, tl = (np.asarray(a, np.float64) for a in (t, lam, tt, tl))
        colors = plt.cm.viridis(np.linspace(0, 0.9, lam.shape[1]))
        for j in range(lam.shape[1]):
            ax.plot(t[t > 0], lam[t > 0, j], color=colors[j], lw=2)
            ax.plot(tt[tt > 0], tl[tt > 0, j], color=colors[j], ls="--", lw=1.2)
        ax.set_xscale("log")
        ax.set_title(f"width {w}")
        ax.set_xlabel("effective time")
    axes[0, 0].set_ylabel(r"eigenvalues of $C$")
    if title:
        fig.suptitle(title, y=1.04)  # above the panels' own titles
    return _save(fig, path)


def plot_alignment_matrix(path, matrix, labels: Sequence[str], *, title: str = "") -> Path:
    """A symmetric table of subspace alignments in ``[0, 1]`` as an annotated heatmap.

    Args:
      matrix: (k, k) alignments, e.g. between the held-out embeddings of k methods.
      labels: k row/column names.
    """
    M = np.asarray(matrix, np.float64)
    k = M.shape[0]
    if M.shape != (k, k) or len(labels) != k:
        raise ValueError(f"matrix must be (k, k) with k = len(labels) = {len(labels)}, got shape {M.shape}.")
    fig, ax = plt.subplots(figsize=(1.3 * k + 2.5, 1.1 * k + 1.5))
    im = ax.imshow(M, vmin=0.0, vmax=1.0, cmap="viridis")
    for a in range(k):
        for b in range(k):
            ax.text(b, a, f"{M[a, b]:.3f}", ha="center", va="center", fontsize=10,
                    color="black" if M[a, b] > 0.6 else "white")
    ax.set_xticks(range(k), labels, rotation=30, ha="right")
    ax.set_yticks(range(k), labels)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="subspace alignment (mean cos²)")
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, path)


def plot_method_staircases(
    path,
    names: Sequence[str],
    times,
    losses,
    eigenvalues,
    theory_times,
    theory_losses,
    theory_eigenvalues,
    *,
    step_times=None,
    log_eigenvalues=None,
    title: str = "",
    time_label: str = "gradient step",
) -> Path:
    """One column per method: loss (top) and eigenvalues of ``C`` (bottom), network solid, theory dashed.

    The paper's Figure 3 layout. Records at ``t <= 0`` are left out (logarithmic time axis).

    Args:
      names: k method names (column titles).
      times, losses, eigenvalues: k arrays (T_a,), (T_a,), (T_a, d): each network's records.
      theory_times, theory_losses, theory_eigenvalues: k arrays (T'_a,), (T'_a,), (T'_a, d).
      step_times: optional k arrays (d,) drawn as dotted vertical lines.
      log_eigenvalues: optional k booleans: a log eigenvalue axis for that method.
    """
    k = len(names)
    fig, axes = plt.subplots(2, k, figsize=(4.3 * k, 6.5), squeeze=False)
    for a in range(k):
        t, th_t = np.asarray(times[a], np.float64), np.asarray(theory_times[a], np.float64)
        keep, th_keep = t > 0, th_t > 0
        eig, th_eig = np.asarray(eigenvalues[a])[keep], np.asarray(theory_eigenvalues[a])[th_keep]
        d = eig.shape[1]
        colors = plt.cm.viridis(np.linspace(0, 0.9, d))
        ax_loss, ax_eig = axes[0, a], axes[1, a]
        ax_loss.plot(t[keep], np.asarray(losses[a])[keep], color="k", lw=2, label="network")
        ax_loss.plot(th_t[th_keep], np.asarray(theory_losses[a])[th_keep], color="C3", ls="--", lw=1.5,
                     label="kernel theory")
        for j in range(d):
            ax_eig.plot(t[keep], eig[:, j], color=colors[j], lw=2)
            ax_eig.plot(th_t[th_keep], th_eig[:, j], color=colors[j], ls="--", lw=1.2)
        if step_times is not None:
            for j, st in enumerate(np.asarray(step_times[a], np.float64)):
                if np.isfinite(st):
                    for ax in (ax_loss, ax_eig):
                        ax.axvline(st, color=colors[min(j, d - 1)], ls=":", lw=1, alpha=0.8)
        if log_eigenvalues is not None and log_eigenvalues[a]:
            ax_eig.set_yscale("log")
        ax_loss.set_title(names[a])
        for ax in (ax_loss, ax_eig):
            ax.set_xscale("log")
        ax_eig.set_xlabel(time_label)
    axes[0, 0].set_ylabel("loss")
    axes[1, 0].set_ylabel(r"eigenvalues of $C$")
    axes[0, 0].legend(loc="lower left", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_probe_curve(path, ks, accuracy, *, chance=None, references=None, marks=None, title: str = "") -> Path:
    """Linear-probe accuracy of the top-``k`` modes against ``k``.

    Args:
      ks, accuracy: (K,), (K,) numbers of leading modes and held-out accuracies.
      chance: accuracy of guessing (a dotted line), e.g. 0.1 for 10 balanced classes.
      references: name -> accuracy drawn as dashed horizontal lines (e.g. raw pixels).
      marks: name -> k drawn as vertical lines (e.g. the embedding dimension d).
    """
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(np.asarray(ks), np.asarray(accuracy), "o-", ms=3, color="C0", label="top-k contrastive modes")
    for i, (name, acc) in enumerate((references or {}).items()):
        ax.axhline(acc, color=f"C{i + 1}", ls="--", lw=1, label=f"{name} ({acc:.3f})")
    if chance is not None:
        ax.axhline(chance, color="gray", ls=":", lw=1, label=f"chance ({chance:.2f})")
    for name, k in (marks or {}).items():
        ax.axvline(k, color="k", ls=":", lw=0.8)
        ax.text(k, ax.get_ylim()[1], f" {name}", va="top", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("k (leading contrastive modes probed)")
    ax.set_ylabel("linear-probe accuracy (held-out images)")
    ax.legend(fontsize=8, loc="lower right")
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, path)


def plot_mode_gallery(path, images, mode_values, *, annotations=None, n_show: int = 6, class_names=None,
                      labels=None, title: str = "") -> Path:
    """For each mode, the images with the highest (left) and lowest (right) mode values.

    Args:
      images: (N, H, W, 3) uint8 or floats (rescaled to [0, 1]).
      mode_values: (N, k).
      annotations: k strings written under each mode's name (e.g. its strongest statistic), or None.
      class_names, labels: class names and (N,) labels: each image titled with its class.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8:
        lo, hi = images.min(), images.max()
        images = (images - lo) / max(hi - lo, 1e-12)
    top, bottom = gallery_indices(mode_values, n_show)
    k = top.shape[0]
    if annotations is not None and len(annotations) != k:
        raise ValueError(f"annotations must have one string per mode ({k}), got {len(annotations)}.")
    width = 2 * n_show + 1
    fig, axes = plt.subplots(k, width, figsize=(1.1 * width + 0.8, 1.25 * k), squeeze=False,
                             gridspec_kw={"width_ratios": [1] * n_show + [1.9] + [1] * n_show})
    for j in range(k):
        for c, idx in enumerate(list(top[j]) + [None] + list(bottom[j])):
            ax = axes[j, c]
            ax.axis("off")
            if idx is None:
                text = f"mode {j + 1}" + (f"\n{annotations[j]}" if annotations is not None else "")
                ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=7)
                continue
            ax.imshow(images[idx])
            if labels is not None and class_names is not None:
                ax.set_title(class_names[int(labels[idx])], fontsize=6)
    fig.suptitle(title or "top modes: highest values (left), lowest values (right)")
    return _save(fig, path)


def plot_spectral_metrics(path, times, metrics, *, theory_times=None, theory_metrics=None, step_times=None,
                          label: str = "simulation", theory_label: str = "closed-form theory", title: str = "",
                          time_label: str = "effective time  t = lr x step") -> Path:
    """Spectral monitoring metrics (RankMe, α-ReQ, participation ratio, learned modes) against log time.

    Args:
      times: (T,) positive.
      metrics: name -> (T,) curves (solid).
      theory_times, theory_metrics: (T',) and name -> (T',) the theory's curves (dashed).
      step_times: (d,) predicted step times (dotted vertical lines).
    """
    names = list(metrics)
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.6), squeeze=False)
    t = np.asarray(times, np.float64)
    for ax, name in zip(axes[0], names, strict=True):
        keep = t > 0
        ax.plot(t[keep], np.asarray(metrics[name], np.float64)[keep], color="k", lw=2, label=label)
        if theory_metrics is not None and name in theory_metrics:
            tt = np.asarray(theory_times, np.float64)
            ax.plot(tt[tt > 0], np.asarray(theory_metrics[name], np.float64)[tt > 0], color="C3", ls="--",
                    lw=1.5, label=theory_label)
        for st in np.asarray(step_times if step_times is not None else [], np.float64):
            if np.isfinite(st):
                ax.axvline(st, color="gray", ls=":", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel(time_label)
        ax.set_title(name.replace("_", " "), fontsize=10)
    axes[0, 0].legend(fontsize=8, loc="upper left")
    if title:
        fig.suptitle(title, fontsize=10, y=1.03)
    return _save(fig, path)


def plot_gamma_spectra(path, names: Sequence[str], gammas, *, n_show: int = 32, title: str = "") -> Path:
    """Contrastive eigenvalues ``γ_j`` against ``j`` for several settings on one log-log axis.

    Args:
      names: k setting names.
      gammas: k arrays (2n,) each, descending (non-positive values are not drawn).
    """
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for i, (name, g) in enumerate(zip(names, gammas, strict=True)):
        g = np.asarray(g, np.float64)[:n_show]
        j = np.arange(1, g.size + 1)
        ax.plot(j[g > 0], g[g > 0], "o-", ms=3, lw=1.2, color=plt.cm.tab10(i % 10), label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("mode j")
    ax.set_ylabel(r"contrastive eigenvalue $\gamma_j$")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, path)


def plot_statistic_strengths(path, names: Sequence[str], strengths, statistics: Sequence[str], *, eta2=None,
                             title: str = "") -> Path:
    """One heatmap per setting: how strongly each top mode (rows) tracks each image statistic (columns).

    Args:
      names: k setting names (panel titles).
      strengths: k arrays (modes, S) of correlation strengths in [0, 1].
      statistics: S statistic names.
      eta2: optional k arrays (modes,) of class η², shown as a last column.
    """
    k = len(names)
    cols = list(statistics) + (["class η²"] if eta2 is not None else [])
    fig, axes = plt.subplots(1, k, figsize=(0.42 * len(cols) * k + 1.5, 0.35 * max(np.shape(s)[0] for s in strengths)
                                            + 2.2), squeeze=False, sharey=True)
    im = None
    for a, (ax, name) in enumerate(zip(axes[0], names, strict=True)):
        M = np.asarray(strengths[a], np.float64)
        if eta2 is not None:
            M = np.concatenate([M, np.asarray(eta2[a], np.float64)[:, None]], axis=1)
        im = ax.imshow(M, vmin=0.0, vmax=1.0, cmap="magma", aspect="auto")
        ax.set_xticks(range(len(cols)), cols, rotation=90, fontsize=7)
        ax.set_yticks(range(M.shape[0]), [f"mode {j + 1}" for j in range(M.shape[0])], fontsize=7)
        ax.set_title(name, fontsize=9)
    fig.colorbar(im, ax=axes[0].tolist(), fraction=0.02, pad=0.02, label="|r| (hue: circular R)")
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_projections_2d(path, snapshots, times, *, labels=None, title: str = "") -> Path:
    """Two-dimensional embeddings at a few times on the last snapshot's principal directions.

    The ``d = 2`` form of :func:`plot_projections` (a point, a line, a plane).

    Args:
      snapshots: (S, N, 2) embeddings at S times.
      times: (S,).
      labels: optional (N,) class labels for colour.
    """
    snapshots = np.asarray(snapshots, np.float64)
    if snapshots.ndim != 3 or snapshots.shape[2] != 2:
        raise ValueError(f"snapshots must be (S, N, 2), got shape {snapshots.shape}; for d >= 3 use plot_projections.")
    dirs = principal_directions(snapshots[-1], 2)
    lim = np.abs(snapshots[-1] @ dirs).max() * 1.1
    fig, axes = plt.subplots(1, len(times), figsize=(3.6 * len(times), 3.6), squeeze=False)
    for s, (ax, t) in enumerate(zip(axes[0], times, strict=True)):
        p = snapshots[s] @ dirs
        colour = {"c": labels, "cmap": "tab10"} if labels is not None else {"color": "C0"}
        ax.scatter(p[:, 0], p[:, 1], s=6, alpha=0.7, **colour)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_xlabel(r"$f \cdot u_1$")
        ax.set_ylabel(r"$f \cdot u_2$")
        ax.set_title(f"t = {t:.3g}")
    if title:
        fig.suptitle(title)
    return _save(fig, path)
