"""Width sweep of a Flax twin on CIFAR-10 pairs against its NTK theory; writes JSON.

Run (from the repository root; the default is the fully-connected network, ~3 min on 2 cores):

    uv run python benchmarks/width_sweep.py
    uv run python benchmarks/width_sweep.py --arch myrtle        # the CNN twin, small widths

For each width the network f = α · net is trained full batch with gradient descent at
learning_rate = step_size / α², and held against the kernel model K = α² Θ built from the
analytic NTK of the same architecture (``stepwise_ntk.predictor``): the alignment of its
final embeddings of held-out views (test-split pairs) with the predicted top-d modes should
rise with width (and pass 0.9 at the widest), the per-mode step-time ratios approach 1.

Writes ``benchmarks/results/width_sweep_<arch>.json`` (atomically): settings, the analytic
contrastive eigenvalues, per width the run and every metric, and a summary with the claims.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

DEFAULTS = {
    # fully-connected: 8x8x3 = 192 inputs, one hidden layer; d from the largest γ gap in 3..4
    "mlp": dict(n_pairs=128, n_test=128, downsample=4, widths="64,256,1024,4096", d_candidates="3,4",
                depth=1, alpha=0.05, rate=0.1),
    # Myrtle-5 on 4x4 images: convolutions are costly on a CPU, so fewer pairs and the widths
    # that run in minutes. Measured (benchmarks/results/width_sweep_myrtle.json): at these
    # widths the twin is far from its kernel regime (runs diverge or stall); see the README.
    "myrtle": dict(n_pairs=64, n_test=64, downsample=8, widths="8,16,32", d_candidates="2,3",
                   depth=5, alpha=0.2, rate=0.05),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
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


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.arch == "myrtle" and "--xla_cpu_max_isa" not in os.environ.get("XLA_FLAGS", ""):
        # float64 CNN kernels crash jaxlib's AVX-512 convolution (stepwise_ntk.kernels._analytic); this
        # must be set before JAX starts its CPU backend.
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_max_isa=AVX2").strip()

    import jax
    import jax.numpy as jnp
    import numpy as np

    jax.config.update("jax_enable_x64", True)
    from stepwise_ntk.kernels.architectures._registry import make_architecture
    from stepwise_ntk.data._augment import cifar10_pairs
    from stepwise_ntk.theory._eigensystem import contrastive_eigensystem
    from stepwise_ntk.predictor._predict import network_kernel
    from stepwise_ntk.experiments._run_dir import atomic_write_json
    from stepwise_ntk.predictor._sweep import WidthSweepSettings, choose_d, width_sweep

    t0 = time.perf_counter()
    widths = tuple(int(w) for w in args.widths.split(","))
    views, _, _ = cifar10_pairs(jax.random.key(args.seed), args.n_pairs, split="train", data_dir=args.data_dir,
                                downsample=args.downsample, dtype=jnp.float64)
    test_views, _, _ = cifar10_pairs(jax.random.key(args.seed + 1), args.n_test, split="test",
                                     data_dir=args.data_dir, downsample=args.downsample, dtype=jnp.float64)
    views, test_views = np.asarray(views), np.asarray(test_views)
    if args.arch == "mlp":
        base = make_architecture("mlp", depth=args.depth, width=widths[0], d=1)
    else:
        base = make_architecture("myrtle", depth=args.depth, width=widths[0], d=1)

    # The analytic kernel does not depend on d (nor on the width): choose d and the step from it.
    theta = network_kernel(base, views, progress=not args.no_progress).ntk
    gammas = np.asarray(contrastive_eigensystem(theta, args.n_pairs).gammas)
    d = choose_d(gammas, tuple(int(x) for x in args.d_candidates.split(","))) if args.d == "auto" else int(args.d)
    step_size = args.rate / (8.0 * gammas[0]) if args.step_size == "auto" else float(args.step_size)
    arch = base.replace(d=d)
    config = WidthSweepSettings(widths=widths, alpha=args.alpha, step_size=float(step_size), horizon=args.horizon,
                         max_steps=args.max_steps, kernels=tuple(args.kernels.split(",")), seed=args.seed)
    print(f"{args.arch}: {views.shape[0]} views {views.shape[1:]}, {test_views.shape[0]} held-out views, d = {d} "
          f"(γ_d/γ_d+1 = {gammas[d - 1] / gammas[d]:.3g}), α = {args.alpha}, step c = {step_size:.4g} "
          f"(learning rate {config.learning_rate:.4g}), widths {widths}", flush=True)
    result = width_sweep(arch, views, test_views, config, progress=not args.no_progress)
    summary = result.summary()

    record = {
        "command": "uv run python benchmarks/width_sweep.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "jax": jax.__version__,
                    "backend": jax.default_backend()},
        "data": {"n_pairs": args.n_pairs, "n_test_images": args.n_test, "downsample": args.downsample,
                 "input_shape": list(views.shape[1:]), "seed": args.seed},
        "theta_gammas_top": [float(g) for g in gammas[: d + 6]],
        "sweep": result.to_dict(),
        "wall_seconds": time.perf_counter() - t0,
    }
    atomic_write_json(args.out, record)

    print(f"{'width':>6} {'steps':>6} {'train s':>8} {'kernel':>16} {'align':>7} {'align(flow)':>11} "
          f"{'procr':>6} {'eig rms':>7}  step-time ratios")
    for run in result.runs:
        if run.diverged_at is not None:
            print(f"{run.width:>6} diverged at step {run.diverged_at} (loss {run.diverged_loss:.3g}); "
                  f"{run.records_kept} records kept")
            continue
        for kind, c in run.comparisons.items():
            ratios = " ".join(f"{r:.3f}" for r in c.step_time_ratios)
            print(f"{run.width:>6} {run.steps:>6} {run.train_seconds:>8.1f} {kind:>16} {c.test_alignment:>7.4f} "
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


if __name__ == "__main__":
    raise SystemExit(main())
