"""Thin adapters that put other people's benchmark scripts under the one harness.

* ``kernels`` — ``benchmarks/kernels_bench.py`` (NTK Grams of the fully-connected network
  and the Myrtle CNN with pooling: ``stepwise_ntk``'s ``analytic_ntk`` against the direct
  neural-tangents ``kernel_fn`` call and ``nt.batch``). Its ``run_case`` does the timing
  (warm-up excluded, interleaved repeats); the adapter turns each case into measurements.
* ``width_sweep`` — ``benchmarks/width_sweep.py``: an accuracy study (alignment of trained
  networks with the kernel theory as width grows), recorded as one ``experiment`` entry
  with its summary; no timing comparison.

A script that is absent, or lacks the function the adapter calls, makes its benchmark
``skipped`` (with the reason) instead of failing the run.
"""

from __future__ import annotations

import importlib
import os
import tempfile
from typing import Any

import numpy as np

from benchmarks._harness import Context, Measurement, SkipBenchmark, register

__all__ = ["kernels", "width_sweep"]


def _import(module: str, attr: str):
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name == module:
            raise SkipBenchmark(f"{module.replace('.', '/')}.py is not present") from None
        raise
    if not hasattr(mod, attr):
        raise SkipBenchmark(f"{module.replace('.', '/')}.py has no {attr}()")
    return mod


def _stats(times: list[float]) -> dict[str, float]:
    q1, q3 = np.percentile(times, [25, 75])
    return {
        "median_s": float(np.median(times)),
        "iqr_s": float(q3 - q1),
        "min_s": float(min(times)),
        "max_s": float(max(times)),
    }


# ------------------------------------------------------------------------------ kernels

_KERNEL_NAMES = {
    "direct": ("nt kernel_fn (jit)", "baseline", ()),
    "nt_batch": ("nt.batch", "baseline", ()),
    "project": ("analytic_ntk", "subject", ("nt kernel_fn (jit)",)),
    "project_single": ("analytic_ntk[one block]", "subject", ("nt kernel_fn (jit)",)),
    "project_blocked": ("analytic_ntk[blocked]", "subject", ("nt.batch",)),
}


def _kernel_cases(kb: Any, size: str):
    if size == "tiny":
        from stepwise_ntk.kernels.architectures._registry import MLP, MyrtleCNN

        return [
            ("mlp", MLP(depth=2), 32, (8, 8, 3), np.float32, 16),
            ("myrtle5", MyrtleCNN(depth=5), 8, (8, 8, 3), np.float32, 4),
        ]
    return kb._cases(quick=size != "full")


@register(
    "kernels",
    "NTK Gram matrices (fully-connected; Myrtle CNN with pooling) through stepwise_ntk's "
    "analytic_ntk against direct neural-tangents kernel_fn / nt.batch calls "
    "(adapter of benchmarks/kernels_bench.py).",
)
def kernels(ctx: Context) -> list[Measurement]:
    kb = _import("benchmarks.kernels_bench", "run_case")
    out = []
    for label, arch, n, shape, dtype, batch in _kernel_cases(kb, ctx.size):
        row = kb.run_case(label, arch, n, shape, dtype, batch, repeats=ctx.repeats)
        case = f"{label} n={n} {'x'.join(map(str, shape))} {np.dtype(dtype).name}"
        sizes = {"n": n, "input": "x".join(map(str, shape)), "batch_size_blocked": batch}
        for key, (name, role, baselines) in _KERNEL_NAMES.items():
            times = row["all_s"][key]
            st = _stats(times)
            extra = {"max_rel_diff_vs_direct": row["max_rel_diff_vs_direct"][key]}
            if key == "project":
                extra["overhead"] = row["overhead"]
            if key == "project_single":
                extra["overhead"] = row["overhead_single_block"]
            m = Measurement(
                benchmark="kernels",
                case=case,
                name=name,
                role=role,
                baselines=list(baselines),
                sizes=sizes,
                dtype=np.dtype(dtype).name,
                repeats=len(times),
                compile_s=max(row["first_call_s"][key] - st["median_s"], 0.0),
                compile_method="first call − median (kernels_bench.run_case)",
                peak_bytes=None,
                memory=None,
                extra=extra,
                **st,
            )
            ctx.log(f"{case:24s} {name:34s} {st['median_s']:.4f} s")
            out.append(m)
    return out


# ------------------------------------------------------------------------------ width sweep

_WIDTH_ARGS = {
    "tiny": [
        "--n-pairs",
        "16",
        "--n-test",
        "16",
        "--widths",
        "16,64",
        "--d",
        "2",
        "--max-steps",
        "2000",
    ],
    "small": ["--n-pairs", "64", "--n-test", "64", "--widths", "64,256,1024"],
    "full": [],
}


@register(
    "width_sweep",
    "Width sweep of the MLP twin against its NTK theory (adapter of "
    "benchmarks/width_sweep.py; an accuracy study recorded as one experiment entry).",
)
def width_sweep(ctx: Context) -> list[Measurement]:
    import json
    import time

    from benchmarks._problems import find_cifar_dir

    ws = _import("benchmarks.width_sweep", "main")
    cifar = find_cifar_dir(ctx.data_dir)
    if cifar is None:  # an accuracy study on real images: no synthetic stand-in
        raise SkipBenchmark("CIFAR-10 is not present (--data-dir, STEPWISE_NTK_DATA, the cache, "
                            "../shared/cifar10); the width sweep needs it")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "width_sweep.json")
        args = [*_WIDTH_ARGS[ctx.size], "--out", path, "--no-progress", "--data-dir", str(cifar)]
        t0 = time.perf_counter()
        rc = ws.main(args)
        wall = time.perf_counter() - t0
        if rc:
            raise RuntimeError(f"width_sweep.main returned {rc}")
        with open(path) as f:
            record = json.load(f)
    summary = record.get("sweep", {}).get("summary", {})
    extra = {"args": " ".join(_WIDTH_ARGS[ctx.size]) or "(defaults)", "data_dir": str(cifar)}
    for kind, s in summary.items() if isinstance(summary, dict) else []:
        if isinstance(s, dict):
            for k, v in s.items():
                if isinstance(v, (int, float, bool, str)):
                    extra[f"{kind}.{k}"] = v
    return [
        Measurement(
            benchmark="width_sweep",
            case=f"mlp {ctx.size}",
            name="width_sweep",
            role="experiment",
            baselines=[],
            sizes={"size": ctx.size},
            dtype="float64",
            median_s=wall,
            iqr_s=0.0,
            min_s=wall,
            max_s=wall,
            repeats=1,
            compile_s=None,
            compile_method="not separated",
            peak_bytes=None,
            memory=None,
            extra=extra,
        )
    ]
