"""Width sweep of a Flax twin on CIFAR-10 pairs against its NTK theory, on the CLI sweep's problem.

Run (from the repository root)::

    uv run python -m benchmarks.cases.width_sweep                  # MLP, widths 64..4096 (~3 min on 2 cores)
    uv run python -m benchmarks.cases.width_sweep --arch myrtle    # Myrtle-5 CNN, widths 8..32 on 4x4 images
    uv run python -m benchmarks.cases.width_sweep --arch myrtle --preset gpu   # an accelerator's sizes

or, at the harness's sizes and recorded as one ``experiment`` measurement,
``uv run python -m benchmarks width_sweep``.

For each width the network f = α · net is trained full batch with gradient descent at
learning_rate = c / α², each width's step ``c = rate / (8 γ_1(Θ_0))`` from its own empirical
NTK ``Θ_0`` at initialisation (unless ``--step-size``), and held against the kernel model
K = α² Θ of each kernel in ``--kernels``: the analytic (infinite-width) NTK, the network's
empirical NTK at initialisation, and after training (the paper's comparison). The
infinite-width theory says that the alignment of the final embeddings of held-out views
(test-split pairs) with the predicted top-d modes rises towards 1 with width and the
per-mode step-time ratios approach 1; the after-training kernel describes a finite network
at any width it stays close to.

The problem is the one ``stepwise-ntk sweep`` builds (:func:`sweep_problem`): the flags
become a ``SweepSettings`` of the CLI (a flag left out keeps the CLI's default for that
architecture), and the views, the held-out views, ``d`` and the steps come from the same
code with the same keys, so the same settings and seed give the same numbers here and
through ``stepwise-ntk sweep``. The one addition is ``--d-candidates`` (``d`` from the
largest ``γ_d/γ_{d+1}`` among other candidates than the CLI's 3 and 4).

``--preset gpu`` (:data:`GPU_PRESETS`): accelerator sizes, hundreds of channels on 16×16
images (``--downsample 1`` for 32×32); every flag given still overrides it. Not run on
this CPU: a 2-core CPU affords widths up to ~32 channels on 4×4 images.

Writes ``benchmarks/results/width_sweep_<arch>.json`` (``..._<arch>_gpu.json`` with the gpu
preset; atomically): settings, the analytic contrastive eigenvalues, per width the run and
every metric per kernel, and a summary with the claims.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.harness.records import Measurement
from benchmarks.harness.registration import SkipBenchmark, register
from benchmarks.harness.timing import Context, Timing

__all__ = ["GPU_PRESETS", "main", "parse_args", "run", "sweep_problem", "sweep_settings"]

ROOT = Path(__file__).resolve().parents[2]
# d from the largest γ_d/γ_(d+1) among these when --d is auto (stepwise-ntk sweep: 3 and 4).
CLI_D_CANDIDATES = (3, 4)
ARCHS = ("mlp", "myrtle", "wrn")

# Accelerator sizes (float32 networks; the kernel model stays float64 where x64 is on). The
# empirical NTK after training is a (2n)² Gram of parameter Jacobians, blocked within the
# device memory (stepwise_ntk.kernels.empirical_ntk).
GPU_PRESETS: dict[str, dict[str, Any]] = {
    "mlp": dict(n_pairs=512, n_test=256, downsample=2, widths="256,1024,4096,16384"),
    "myrtle": dict(n_pairs=256, n_test=128, downsample=2, widths="64,128,256,512", max_steps=100000),
    "wrn": dict(n_pairs=256, n_test=128, downsample=2, widths="32,64,128,256", max_steps=100000),
}

# The flags that are SweepSettings fields of the same name (None: the CLI's default).
_FIELDS = ("n_pairs", "n_test", "downsample", "alpha", "rate", "horizon", "max_steps", "seed", "arch_options")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.cases.width_sweep", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--arch", choices=ARCHS, default="mlp", help="architecture (registry name)")
    p.add_argument("--preset", choices=("cpu", "gpu"), default="cpu",
                   help="cpu: the CLI's defaults for --arch; gpu: GPU_PRESETS (hundreds of channels, 16x16 images)")
    p.add_argument("--n-pairs", type=int, help="training images n (2n views); default: the CLI's for --arch")
    p.add_argument("--n-test", type=int, help="held-out test-split images (2 views each)")
    p.add_argument("--downsample", type=int, help="average-pool 32x32 images by this factor")
    p.add_argument("--widths", help="comma-separated widths, increasing")
    p.add_argument("--arch-options", help="architecture fields as key=value,... (e.g. depth=7)")
    p.add_argument("--d", default="auto", help="embedding dimension, or 'auto': the largest γ_d/γ_(d+1)")
    p.add_argument("--d-candidates", default="3,4", help="candidates for --d auto")
    p.add_argument("--alpha", type=float, help="output scale α (small initialisation)")
    p.add_argument("--step-size", default="auto",
                   help="gradient step c on Θ (learning_rate = c/α²), or 'auto': each width's rate / (8 γ_1(Θ_0))")
    p.add_argument("--rate", type=float, help="8 γ_1(Θ_0) c for --step-size auto")
    p.add_argument("--horizon", type=float, help="train for this × the predicted last step time")
    p.add_argument("--max-steps", type=int, help="refuse longer runs")
    p.add_argument("--kernels", help="comma-separated predictions from analytic, empirical_init, empirical_final")
    p.add_argument("--seed", type=int, help="seed of views and initialisations")
    p.add_argument("--data-dir", default=os.environ.get("STEPWISE_NTK_DATA", str(ROOT.parent / "shared" / "cifar10")),
                   help="folder containing cifar-10-batches-py")
    p.add_argument("--out", help="JSON path; default benchmarks/results/width_sweep_<arch>[_gpu].json")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    if args.preset == "gpu":
        for k, v in GPU_PRESETS[args.arch].items():
            if getattr(args, k) is None:
                setattr(args, k, v)
    if args.out is None:
        suffix = "_gpu" if args.preset == "gpu" else ""
        args.out = str(ROOT / "benchmarks" / "results" / f"width_sweep_{args.arch}{suffix}.json")
    return args


def sweep_settings(args: argparse.Namespace):
    """The ``stepwise-ntk sweep`` settings (``SweepSettings``) of these flags.

    A flag left out keeps the CLI's default for ``--arch``; ``--d auto`` and
    ``--step-size auto`` are None; ``--widths`` and ``--kernels`` are comma-separated here.
    """
    from stepwise_ntk.experiments import SweepSettings

    values: dict[str, Any] = {k: getattr(args, k) for k in _FIELDS if getattr(args, k) is not None}
    if args.widths is not None:
        values["widths"] = tuple(int(w) for w in str(args.widths).split(","))
    if args.kernels is not None:
        values["kernels"] = tuple(args.kernels.split(","))
    if args.d != "auto":
        values["d"] = int(args.d)
    if args.step_size != "auto":
        values["step_size"] = float(args.step_size)
    return SweepSettings(arch=args.arch, data_dir=args.data_dir, **values)


def sweep_problem(settings, *, d_candidates: tuple[int, ...] = CLI_D_CANDIDATES, progress: bool = False):
    """The problem of ``stepwise-ntk sweep`` for ``settings`` (a ``SweepSettings``).

    The views as ``run_sweep`` draws them (``split(PRNGKey(seed))[0]``, the settings'
    augmentations, ``subset_seed = seed``), then ``network_problem`` (the held-out views of
    the other split, the analytic ``Θ``, ``d``) and ``sweep_config`` with the settings'
    step (None: each width's own). With ``settings.d`` None and other ``d_candidates``
    than the CLI's, ``d`` is chosen among those on the same ``Θ``.

    Returns:
      ``(problem, arch, width_sweep_settings)``: the ``NetworkProblem``, the architecture at
      the first width with the chosen ``d``, and the ``WidthSweepSettings`` of the sweep.
    """
    import jax
    import jax.numpy as jnp

    from stepwise_ntk.data import cifar10_pairs
    from stepwise_ntk.experiments import network_problem, sweep_config
    from stepwise_ntk.predictor import choose_d

    s = settings
    key_views, _ = jax.random.split(jax.random.PRNGKey(s.seed))
    views, labels, _ = cifar10_pairs(key_views, s.n_pairs, split=s.split, data_dir=s.data_dir, settings=s.augment(),
                                     downsample=s.downsample, dtype=jnp.float64, subset_seed=s.seed)
    problem = network_problem(s, views, labels, s.widths[0], progress=progress)
    if s.d is None and tuple(d_candidates) != CLI_D_CANDIDATES:
        problem = dataclasses.replace(problem, d=choose_d(problem.theta_gammas, tuple(d_candidates)))
    arch = s.base_architecture(s.widths[0]).replace(d=problem.d)
    return problem, arch, sweep_config(s, s.step_size)


def main(argv=None) -> int:
    args = parse_args(argv)
    import jax
    import numpy as np

    import stepwise_ntk  # noqa: F401  (first: it sets the XLA CPU flags before JAX's backend starts)

    jax.config.update("jax_enable_x64", True)
    from stepwise_ntk._io import write_json
    from stepwise_ntk.predictor import width_sweep

    t0 = time.perf_counter()
    settings = sweep_settings(args)
    problem, arch, config = sweep_problem(
        settings, d_candidates=tuple(int(x) for x in args.d_candidates.split(",")), progress=not args.no_progress
    )
    views, test_views, gammas, d = problem.views, problem.test_views, problem.theta_gammas, problem.d
    step = "each width's own" if config.step_size is None else f"{config.step_size:.4g}"
    print(f"{args.arch}: {views.shape[0]} views {views.shape[1:]}, {test_views.shape[0]} held-out views, d = {d} "
          f"(γ_d/γ_d+1 = {gammas[d - 1] / gammas[d]:.3g}), α = {settings.alpha}, step c = {step} "
          f"(rate {settings.rate}), widths {config.widths}, kernels {config.kernels}", flush=True)
    result = width_sweep(arch, views, test_views, config, progress=not args.no_progress)
    summary = result.summary()

    record = {
        "command": "uv run python -m benchmarks.cases.width_sweep "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "jax": jax.__version__,
                    "backend": jax.default_backend()},
        "data": {"n_pairs": settings.n_pairs, "n_test_images": settings.n_test, "downsample": settings.downsample,
                 "input_shape": list(views.shape[1:]), "seed": settings.seed},
        # The same study through the CLI: stepwise-ntk sweep with these settings.
        "cli_settings": dataclasses.asdict(settings),
        "theta_gammas_top": [float(g) for g in np.asarray(gammas)[: d + 6]],
        "step_sizes": [r.learning_rate * settings.alpha**2 for r in result.runs],
        "sweep": result.to_dict(),
        "wall_seconds": time.perf_counter() - t0,
    }
    write_json(args.out, record)

    print(f"{'width':>6} {'steps':>6} {'step c':>9} {'train s':>8} {'kernel':>16} {'align':>7} {'align(flow)':>11} "
          f"{'procr':>6} {'eig rms':>7}  step-time ratios")
    for run_ in result.runs:
        c_w = run_.learning_rate * settings.alpha**2
        if run_.diverged_at is not None:
            print(f"{run_.width:>6} diverged at step {run_.diverged_at} (loss {run_.diverged_loss:.3g}, step c "
                  f"{c_w:.3g}); {run_.records_kept} records kept")
            continue
        for kernel, c in run_.comparisons.items():
            ratios = " ".join(f"{r:.3f}" for r in c.step_time_ratios)
            print(f"{run_.width:>6} {run_.steps:>6} {c_w:>9.3g} {run_.train_seconds:>8.1f} {kernel:>16} "
                  f"{c.test_alignment:>7.4f} {c.test_alignment_flow:>11.4f} {c.test_procrustes_error:>6.3f} "
                  f"{c.eigenvalue_error_rms:>7.4f}  {ratios}")

    def fmt(x):
        return "n/a" if x is None else f"{x:.4f}"

    for kernel in config.kernels:
        a = summary[kernel]
        print(f"{kernel}: alignment rises with width: {a['alignment_rises']}; at the widest finished run: "
              f"{fmt(a['widest_alignment'])} (flow: rises {a['alignment_flow_rises']}, widest "
              f"{fmt(a['widest_alignment_flow'])})")
    print(f"diverged widths: {summary['diverged_widths']}; wrote {args.out} in {record['wall_seconds']:.0f} s")
    return 0


# ------------------------------------------------------------------------------ the registered benchmark

# tiny: the smoke run of every stage, where compilation is nearly all the time: 8 pairs of 4x4
# images and as many held-out ones (the augmentation compiles once for both), one width, the
# analytic kernel only (each width and each kernel adds compilations).
_SIZED_ARGS = {
    "tiny": ["--n-pairs", "8", "--n-test", "8", "--downsample", "8", "--widths", "32", "--d", "2",
             "--kernels", "analytic", "--max-steps", "2000"],
    "small": ["--n-pairs", "64", "--n-test", "64", "--widths", "64,256,1024"],
    "full": [],
}


@register(
    "width_sweep",
    "Width sweep of the MLP twin against its NTK theory, on the problem stepwise-ntk sweep builds "
    "(benchmarks/cases/width_sweep.py; an accuracy study recorded as one experiment entry).",
)
def run(ctx: Context) -> list[Measurement]:
    """The stand-alone script at the sizes of ``ctx.size``; its summary as one measurement."""
    from benchmarks.harness.problems import find_cifar_dir

    cifar = find_cifar_dir(ctx.data_dir)
    if cifar is None:  # an accuracy study on real images: no synthetic stand-in
        raise SkipBenchmark("CIFAR-10 is not present (--data-dir, STEPWISE_NTK_DATA, the cache, "
                            "../shared/cifar10); the width sweep needs it")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "width_sweep.json")
        args = [*_SIZED_ARGS[ctx.size], "--out", path, "--no-progress", "--data-dir", str(cifar)]
        t0 = time.perf_counter()
        rc = main(args)
        wall = time.perf_counter() - t0
        if rc:
            raise RuntimeError(f"width_sweep.main returned {rc}")
        with open(path) as f:
            record = json.load(f)
    summary = record.get("sweep", {}).get("summary", {})
    extra: dict[str, Any] = {"args": " ".join(_SIZED_ARGS[ctx.size]) or "(defaults)", "data_dir": str(cifar)}
    for kernel, s in summary.items() if isinstance(summary, dict) else []:
        if isinstance(s, dict):
            for k, v in s.items():
                if isinstance(v, (int, float, bool, str)):
                    extra[f"{kernel}.{k}"] = v
    timing = Timing(times=[wall], compile_s=None, compile_method="not separated", peak_bytes=None, memory=None,
                    output=None)
    return [
        ctx.measurement(
            timing,
            benchmark="width_sweep",
            case=f"mlp {ctx.size}",
            name="width_sweep",
            role="experiment",
            sizes={"size": ctx.size},
            dtype="float64",
            extra=extra,
        )
    ]


if __name__ == "__main__":
    raise SystemExit(main())
