"""Width sweep of a Flax twin on CIFAR-10 pairs against its NTK theory, on the CLI sweep's problem.

Run (from the repository root; the default is the fully-connected network, ~3 min on 2 cores)::

    uv run python -m benchmarks.cases.width_sweep
    uv run python -m benchmarks.cases.width_sweep --arch myrtle   # the CNN twin, small widths

or, at the harness's sizes and recorded as one ``experiment`` measurement,
``uv run python -m benchmarks width_sweep``.

For each width the network f = α · net is trained full batch with gradient descent at
learning_rate = step_size / α², and held against the kernel model K = α² Θ built from the
analytic NTK of the same architecture (``stepwise_ntk.predictor``): the alignment of its
final embeddings of held-out views (test-split pairs) with the predicted top-d modes should
rise with width (and pass 0.9 at the widest), the per-mode step-time ratios approach 1.

The problem is the one ``stepwise-ntk sweep`` builds (:func:`sweep_problem`): the flags
become a ``SweepSettings`` of the CLI, and the views, the held-out views, ``d`` and the
step ``c`` come from the same code with the same keys, so the same settings and seed give
the same numbers here and through ``stepwise-ntk sweep``. The one addition is
``--d-candidates`` (``d`` from the largest ``γ_d/γ_{d+1}`` among other candidates than the
CLI's 3 and 4).

Writes ``benchmarks/results/width_sweep_<arch>.json`` (atomically): settings, the analytic
contrastive eigenvalues, per width the run and every metric, and a summary with the claims.
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

__all__ = ["DEFAULTS", "main", "parse_args", "run", "sweep_problem", "sweep_settings"]

ROOT = Path(__file__).resolve().parents[2]
# d from the largest γ_d/γ_(d+1) among these when --d is auto (stepwise-ntk sweep: 3 and 4).
CLI_D_CANDIDATES = (3, 4)

DEFAULTS = {
    # fully-connected: 8x8x3 = 192 inputs, one hidden layer; the CLI sweep's defaults
    "mlp": dict(n_pairs=128, n_test=128, downsample=4, widths="64,256,1024,4096", d_candidates="3,4",
                depth=1, alpha=0.05, rate=0.1),
    # Myrtle-5 on 4x4 images: convolutions are costly on a CPU, so fewer pairs and the widths
    # that run in minutes. Measured (benchmarks/results/width_sweep_myrtle.json): at these
    # widths the twin is far from its kernel regime (runs diverge or stall); see the README.
    "myrtle": dict(n_pairs=64, n_test=64, downsample=8, widths="8,16,32", d_candidates="2,3",
                   depth=5, alpha=0.2, rate=0.05),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.cases.width_sweep", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--arch", choices=sorted(DEFAULTS), default="mlp", help="architecture (registry name)")
    p.add_argument("--n-pairs", type=int, help="training images n (2n views); default per arch")
    p.add_argument("--n-test", type=int, help="held-out test-split images (2 views each); default per arch")
    p.add_argument("--downsample", type=int, help="average-pool 32x32 images by this factor; default per arch")
    p.add_argument("--widths", help="comma-separated widths, increasing; default per arch")
    p.add_argument("--depth", type=int, help="hidden layers (mlp) or Myrtle depth 5/7/10; default per arch")
    p.add_argument("--d", default="auto", help="embedding dimension, or 'auto': the largest γ_d/γ_(d+1)")
    p.add_argument("--d-candidates", help="candidates for --d auto; default per arch")
    p.add_argument("--alpha", type=float, help="output scale α (small initialisation); default per arch")
    p.add_argument("--step-size", default="auto",
                   help="gradient step c on Θ (learning_rate = c/α²), or 'auto': 8 γ_1(Θ) c = --rate")
    p.add_argument("--rate", type=float, help="8 γ_1(Θ) c for --step-size auto; default per arch")
    p.add_argument("--horizon", type=float, default=2.0, help="train for this × the predicted last step time")
    p.add_argument("--max-steps", type=int, default=20000, help="refuse longer runs")
    p.add_argument("--kernels", default="analytic",
                   help="comma-separated predictions: analytic, empirical_init, empirical_final")
    p.add_argument("--seed", type=int, default=0, help="seed of views and initialisations")
    p.add_argument("--data-dir", default=os.environ.get("STEPWISE_NTK_DATA", str(ROOT.parent / "shared" / "cifar10")),
                   help="folder containing cifar-10-batches-py")
    p.add_argument("--out", help="JSON path; default benchmarks/results/width_sweep_<arch>.json")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    for k, v in DEFAULTS[args.arch].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.out is None:
        args.out = str(ROOT / "benchmarks" / "results" / f"width_sweep_{args.arch}.json")
    return args


def sweep_settings(args: argparse.Namespace):
    """The ``stepwise-ntk sweep`` settings (``SweepSettings``) of these flags.

    The flags the CLI has under another form: ``--depth`` is ``arch_options="depth=…"``,
    ``--d auto`` and ``--step-size auto`` are None. Every other field keeps the CLI's
    default (augmentations, splits, records, the network's float32).
    """
    from stepwise_ntk.experiments import SweepSettings

    return SweepSettings(
        n_pairs=args.n_pairs,
        n_test=args.n_test,
        d=None if args.d == "auto" else int(args.d),
        arch=args.arch,
        arch_options=f"depth={args.depth}",
        alpha=args.alpha,
        step_size=None if args.step_size == "auto" else float(args.step_size),
        rate=args.rate,
        horizon=args.horizon,
        max_steps=args.max_steps,
        seed=args.seed,
        data_dir=args.data_dir,
        downsample=args.downsample,
        widths=tuple(int(w) for w in args.widths.split(",")),
        kernels=tuple(args.kernels.split(",")),
    )


def sweep_problem(settings, *, d_candidates: tuple[int, ...] = CLI_D_CANDIDATES, progress: bool = False):
    """The problem of ``stepwise-ntk sweep`` for ``settings`` (a ``SweepSettings``).

    The views as ``run_sweep`` draws them (``split(PRNGKey(seed))[0]``, the settings'
    augmentations, ``subset_seed = seed``), then ``network_problem`` (the held-out views of
    the other split, the analytic ``Θ``, ``d`` and the step ``c``) and ``sweep_config``.
    With ``settings.d`` None and other ``d_candidates`` than the CLI's, ``d`` is chosen
    among those on the same ``Θ``.

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
    return problem, arch, sweep_config(s, problem.step_size)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.arch == "myrtle" and "--xla_cpu_max_isa" not in os.environ.get("XLA_FLAGS", ""):
        # float64 CNN kernels crash jaxlib's AVX-512 convolution (stepwise_ntk.kernels); this
        # must be set before JAX starts its CPU backend.
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_max_isa=AVX2").strip()

    import jax
    import numpy as np

    jax.config.update("jax_enable_x64", True)
    from stepwise_ntk._io import write_json
    from stepwise_ntk.predictor import width_sweep

    t0 = time.perf_counter()
    settings = sweep_settings(args)
    problem, arch, config = sweep_problem(
        settings, d_candidates=tuple(int(x) for x in args.d_candidates.split(",")), progress=not args.no_progress
    )
    views, test_views, gammas, d = problem.views, problem.test_views, problem.theta_gammas, problem.d
    print(f"{args.arch}: {views.shape[0]} views {views.shape[1:]}, {test_views.shape[0]} held-out views, d = {d} "
          f"(γ_d/γ_d+1 = {gammas[d - 1] / gammas[d]:.3g}), α = {args.alpha}, step c = {problem.step_size:.4g} "
          f"(learning rate {config.learning_rate:.4g}), widths {config.widths}", flush=True)
    result = width_sweep(arch, views, test_views, config, progress=not args.no_progress)
    summary = result.summary()

    record = {
        "command": "uv run python -m benchmarks.cases.width_sweep "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "jax": jax.__version__,
                    "backend": jax.default_backend()},
        "data": {"n_pairs": args.n_pairs, "n_test_images": args.n_test, "downsample": args.downsample,
                 "input_shape": list(views.shape[1:]), "seed": args.seed},
        # The same study through the CLI: stepwise-ntk sweep with these settings.
        "cli_settings": dataclasses.asdict(settings),
        "theta_gammas_top": [float(g) for g in np.asarray(gammas)[: d + 6]],
        "sweep": result.to_dict(),
        "wall_seconds": time.perf_counter() - t0,
    }
    write_json(args.out, record)

    print(f"{'width':>6} {'steps':>6} {'train s':>8} {'kernel':>16} {'align':>7} {'align(flow)':>11} "
          f"{'procr':>6} {'eig rms':>7}  step-time ratios")
    for run_ in result.runs:
        if run_.diverged_at is not None:
            print(f"{run_.width:>6} diverged at step {run_.diverged_at} (loss {run_.diverged_loss:.3g}); "
                  f"{run_.records_kept} records kept")
            continue
        for kernel, c in run_.comparisons.items():
            ratios = " ".join(f"{r:.3f}" for r in c.step_time_ratios)
            print(f"{run_.width:>6} {run_.steps:>6} {run_.train_seconds:>8.1f} {kernel:>16} {c.test_alignment:>7.4f} "
                  f"{c.test_alignment_flow:>11.4f} {c.test_procrustes_error:>6.3f} {c.eigenvalue_error_rms:>7.4f}  "
                  f"{ratios}")
    a = summary["analytic"] if "analytic" in summary else summary[config.kernels[0]]

    def fmt(x):
        return "n/a" if x is None else f"{x:.4f}"

    print(f"alignment rises with width: {a['alignment_rises']}; at the widest finished run: "
          f"{fmt(a['widest_alignment'])} (flow: rises {a['alignment_flow_rises']}, widest "
          f"{fmt(a['widest_alignment_flow'])}); diverged widths: {summary['diverged_widths']}; "
          f"wrote {args.out} in {record['wall_seconds']:.0f} s")
    return 0


# ------------------------------------------------------------------------------ the registered benchmark

_SIZED_ARGS = {
    "tiny": ["--n-pairs", "16", "--n-test", "16", "--widths", "16,64", "--d", "2", "--max-steps", "2000"],
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
