"""``stepwise-ntk sweep``: one architecture at several widths, each held against its NTK theory.

The experiment of ``stepwise-ntk network`` (Barlow Twins, full batch, small initialisation)
repeated over ``--widths`` by :func:`stepwise_ntk.predictor._sweep.width_sweep`: every width is
initialised with its own key, trained for ``horizon ×`` the last step time its kernel model
predicts, and compared with the prediction of each kernel in ``--kernels``. As the width
grows the network should approach the kernel model: the alignment of its held-out
embeddings with the predicted top-``d`` modes rises towards 1 and the per-mode step-time
ratios network/theory approach 1.

Outputs: ``results.json`` (the sweep's JSON record, :meth:`SweepResult.to_dict`, with per-width
runs and a summary), ``arrays.npz`` (per-width metrics, embeddings and curves),
``width_sweep.png`` (:func:`stepwise_ntk.experiments._plots.plot_width_sweep`) and ``curves.png`` (each
width's eigenvalue curves over its theory's).
"""

from __future__ import annotations

import dataclasses
import pickle
import time
from typing import Any

import numpy as np

from stepwise_ntk._io import write_bytes
from stepwise_ntk.experiments._network import (
    ARCH_DEFAULTS,
    SharedNetworkSettings,
    network_problem,
    network_views,
    per_arch_help,
)
from stepwise_ntk.experiments._plots import plot_width_curves, plot_width_sweep
from stepwise_ntk.experiments._run_dir import RunDir, RunFailedError
from stepwise_ntk.predictor import KERNELS, WidthSweepSettings, width_sweep

__all__ = ["SweepSettings", "run_sweep", "sweep_config"]


@dataclasses.dataclass(frozen=True)
class SweepSettings(SharedNetworkSettings):
    """Settings of ``stepwise-ntk sweep`` (each is a flag: ``--widths 64 256 1024``)."""

    n_pairs: int | None = dataclasses.field(
        default=None, metadata={"help": f"training images n (2n augmented views; {per_arch_help('sweep_n_pairs')})",
                                "min": 1}
    )
    widths: tuple[int, ...] | None = dataclasses.field(
        default=None, metadata={"help": f"widths, increasing ({per_arch_help('widths')})"}
    )
    kernels: tuple[str, ...] = dataclasses.field(
        default=KERNELS, metadata={"help": f"theories to compare with, from {', '.join(KERNELS)} (the figures: "
                                           "the first)"}
    )

    def arch_defaults(self) -> dict:
        a = ARCH_DEFAULTS[self.arch]
        return {**super().arch_defaults(), "n_pairs": a.sweep_n_pairs, "widths": a.widths}

    def __post_init__(self):
        super().__post_init__()
        sweep_config(self, self.step_size)  # WidthSweepSettings checks widths and kernels
        self.base_architecture(self.widths[0])  # bad --arch-options fail before any data is loaded


def sweep_config(s: SweepSettings, step_size: float | None) -> WidthSweepSettings:
    """The :class:`WidthSweepSettings` of these settings with gradient step ``c = step_size``.

    ``step_size=None``: each width takes its own ``s.rate / (8 γ_1(Θ_0))`` from its empirical
    NTK at initialisation (:func:`stepwise_ntk.predictor.stable_step_size`).
    """
    return WidthSweepSettings(widths=tuple(s.widths), alpha=s.alpha, step_size=step_size, rate=s.rate,
                              horizon=s.horizon, max_steps=s.max_steps, kernels=tuple(s.kernels),
                              n_records=s.n_records, seed=s.seed, train_dtype=s.train_dtype)


def run_sweep(settings: SweepSettings, out: RunDir, *, progress: bool = True) -> str:
    """Run the sweep, write ``results.json``, ``arrays.npz`` and figures into ``out``."""
    s = settings
    started = time.perf_counter()
    views, labels = network_views(s)  # the same views as the other experiments with this seed
    problem = network_problem(s, views, labels, s.widths[0], progress=progress)
    arch = s.base_architecture(s.widths[0]).replace(d=problem.d)
    config = sweep_config(s, s.step_size)  # None: every width's step from its own kernel
    result = _resumable_sweep(out, arch, problem.views, problem.test_views, config, progress=progress)
    summary = result.summary()
    kind = config.kernels[0]
    ok = [r for r in result.runs if r.diverged_at is None]
    widths = [r.width for r in ok]
    if not ok:
        raise RunFailedError(
            f"every width diverged ({[r.width for r in result.runs]}); lower --rate (or --step-size) or --alpha."
        )
    ratios = np.array([[np.nan if x is None else x for x in r] for r in summary[kind]["step_time_ratios"]], np.float64)
    alignment = np.array(summary[kind]["test_alignment"], np.float64)

    plot_width_sweep(out.path / "width_sweep.png", widths, alignment, ratios,
                     title=f"{arch.name} on CIFAR-10 pairs (n={s.n_pairs}, d={problem.d}, α={s.alpha}) "
                           f"vs {kind} NTK theory")
    preds = [r.predictions[kind] for r in ok]
    plot_width_curves(out.path / "curves.png", widths, [r.effective_times for r in ok], [r.eigenvalues for r in ok],
                      [np.asarray(p.times) for p in preds], [np.asarray(p.eigenvalues) for p in preds],
                      title=f"eigenvalues of C: network (solid) vs {kind} kernel theory (dashed)")
    arrays: dict[str, Any] = dict(
        widths=np.asarray(widths),
        test_alignment=alignment,
        test_alignment_flow=np.array(summary[kind]["test_alignment_flow"], np.float64),
        step_time_ratios=ratios,
        test_embeddings=np.stack([r.test_embeddings for r in ok]),
        closed_form_test_embeddings=np.stack([np.asarray(p.test_embeddings) for p in preds]),
        theory_times=np.stack([np.asarray(p.times) for p in preds]),
        theory_eigenvalues=np.stack([np.asarray(p.eigenvalues) for p in preds]),
        gammas=result.gammas,
        theta_gammas=problem.theta_gammas,
    )
    for r in ok:  # record counts differ between widths (different run lengths)
        arrays[f"network_times_w{r.width}"] = r.effective_times
        arrays[f"network_eigenvalues_w{r.width}"] = r.eigenvalues
    out.save_arrays(**arrays)
    out.write_results({
        "kernel": kind,
        "step_size": s.step_size,
        "step_sizes": [r.learning_rate * s.alpha**2 for r in result.runs],  # each width's c
        "input_shape": list(problem.views.shape[1:]),
        **result.to_dict(),
        "wall_time_s": time.perf_counter() - started,
    })
    per_width = "; ".join(
        f"w={w}: alignment {a:.4f}, median step ratio {np.nanmedian(r):.3f}"
        for w, a, r in zip(widths, alignment, ratios, strict=True)
    )
    diverged = summary["diverged_widths"]
    return f"d={problem.d}, {kind} theory. {per_width}" + (f"; diverged widths {diverged}" if diverged else "")


def _resumable_sweep(out: RunDir, arch, views, test_views, config: WidthSweepSettings, *, progress: bool):
    """:func:`width_sweep` one width at a time, each finished width kept for a rerun to resume from.

    Each width has its own key (``fold_in(key(seed), width)``) and plan, so sweeping the
    widths one by one gives the numbers of one sweep over all of them; a finished width is
    pickled into ``resume/widths/`` of the partial run folder and read back by a rerun.
    """
    folder = out.resume_dir("widths")
    parts = []
    for width in config.widths:
        path = folder / f"width_{width}.pkl"
        if path.is_file():
            part = pickle.loads(path.read_bytes())
        else:
            part = width_sweep(arch, views, test_views, dataclasses.replace(config, widths=(width,)),
                               progress=progress)
            write_bytes(path, pickle.dumps(part, protocol=pickle.HIGHEST_PROTOCOL))
        parts.append(part)
    return dataclasses.replace(parts[0], settings=config, runs=tuple(r for p in parts for r in p.runs),
                               seconds=sum(p.seconds for p in parts))
