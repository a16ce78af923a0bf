"""Time analytic NTK Grams through stepwise_ntk against neural-tangents' kernel_fn directly.

For each case (architecture, n inputs, image shape, dtype) the same numpy inputs go to

* direct:  ``jax.jit(kernel_fn, static_argnames="get")(x, None, get="ntk")``, converted to
  numpy (neural-tangents' own call, one block, no checks);
* project: ``stepwise_ntk._kernels.analytic_ntk(arch, x, dtype=...)`` with its defaults
  (input checks, memory planning, automatic batch size, symmetric assembly, numpy result);
* project_single: the same with batch_size=n, forcing one block like the direct call: this
  isolates the layer's own overhead (checks, memory planning, exact symmetrisation);
* project_blocked / nt_batch: both with the same explicit batch size, the project's
  blocked loop against ``nt.batch(kernel_fn, batch_size)`` (for information).

The project's default is often faster than the direct call: for a large symmetric Gram it
computes only the blocks on and above the diagonal.

Compilation is excluded (one warm-up call each); each timing is the median of
``--repeats`` runs, the two routes interleaved so that load drift hits both alike.
overhead = project / direct - 1 and overhead_single_block = project_single / direct - 1
(the target is < 10%). Writes JSON to ``--out``.

Usage:
  uv run python benchmarks/kernels_bench.py [--out benchmarks/results/kernels.json]
      [--repeats 7] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np

from stepwise_ntk._architectures import MLP, MyrtleCNN
from stepwise_ntk._kernels import analytic_ntk
from stepwise_ntk._nt_compat import nt


def _cases(quick: bool):
    # (label, arch, n, image shape, dtype, blocked batch size)
    cases = [
        ("mlp", MLP(depth=2), 512, (32, 32, 3), np.float32, 128),
        ("mlp", MLP(depth=2), 2048, (32, 32, 3), np.float32, 512),
        ("mlp", MLP(depth=2), 2048, (32, 32, 3), np.float64, 512),
        ("mlp", MLP(depth=5, activation="erf", b_std=0.1), 2048, (32, 32, 3), np.float32, 512),
        ("myrtle5", MyrtleCNN(depth=5), 32, (8, 8, 3), np.float32, 8),
        ("myrtle5", MyrtleCNN(depth=5), 64, (8, 8, 3), np.float32, 16),
        ("myrtle5", MyrtleCNN(depth=5), 16, (16, 16, 3), np.float32, 8),
    ]
    if not quick:
        cases += [
            ("mlp", MLP(depth=2), 4096, (32, 32, 3), np.float32, 1024),
            ("myrtle5", MyrtleCNN(depth=5), 24, (16, 16, 3), np.float32, 8),
        ]
    return cases


def _interleaved(fns: dict, repeats: int) -> dict:
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return times


def run_case(label, arch, n, shape, dtype, batch, repeats):
    x = np.random.default_rng(0).normal(size=(n, *shape)).astype(dtype)
    x64 = bool(np.dtype(dtype) == np.float64)
    kernel_fn = arch.kernel_fn()
    direct_jit = jax.jit(kernel_fn, static_argnames="get")
    nt_batched = nt.batch(kernel_fn, batch_size=batch, store_on_device=False)

    def direct():
        with jax.enable_x64(x64):
            return np.asarray(direct_jit(x, None, get="ntk"))

    def project():
        return analytic_ntk(arch, x, dtype=dtype, progress=False)

    def project_single():
        return analytic_ntk(arch, x, dtype=dtype, batch_size=n, progress=False)

    def project_blocked():
        return analytic_ntk(arch, x, dtype=dtype, batch_size=batch, progress=False)

    def nt_batch():
        with jax.enable_x64(x64):
            return np.asarray(nt_batched(x, None, "ntk"))

    fns = {"direct": direct, "project": project, "project_single": project_single,
           "project_blocked": project_blocked, "nt_batch": nt_batch}
    compile_s = {}
    results = {}
    for name, fn in fns.items():  # warm-up: compile (and the project's memory analysis)
        t = time.perf_counter()
        results[name] = fn()
        compile_s[name] = time.perf_counter() - t
    ref = results["direct"]
    scale = float(np.abs(ref).max())
    times = _interleaved(fns, repeats)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    return {
        "arch": label,
        "spec": arch.to_config(),
        "n": n,
        "input_shape": list(shape),
        "dtype": np.dtype(dtype).name,
        "batch_size_blocked": batch,
        "median_s": med,
        "all_s": times,
        "first_call_s": compile_s,
        "overhead": med["project"] / med["direct"] - 1,
        "overhead_single_block": med["project_single"] / med["direct"] - 1,
        "overhead_blocked_vs_nt_batch": med["project_blocked"] / med["nt_batch"] - 1,
        "max_rel_diff_vs_direct": {
            name: float(np.abs(r.astype(np.float64) - ref).max() / scale)
            for name, r in results.items()},
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="benchmarks/results/kernels.json")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="skip the largest cases")
    args = parser.parse_args(argv)

    env = {
        "jax": jax.__version__,
        "devices": [str(d) for d in jax.local_devices()],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "load_average_start": os.getloadavg(),
        "python": sys.version.split()[0],
    }
    rows = []
    for case in _cases(args.quick):
        row = run_case(*case, repeats=args.repeats)
        rows.append(row)
        print(f"{row['arch']:8s} n={row['n']:5d} {tuple(row['input_shape'])!s:13s} "
              f"{row['dtype']:7s} direct {row['median_s']['direct']:.4f}s  project "
              f"{row['median_s']['project']:.4f}s ({100 * row['overhead']:+.1f}%)  single "
              f"{row['median_s']['project_single']:.4f}s "
              f"({100 * row['overhead_single_block']:+.1f}%) | "
              f"blocked {row['median_s']['project_blocked']:.4f}s vs nt.batch "
              f"{row['median_s']['nt_batch']:.4f}s", flush=True)
    env["load_average_end"] = os.getloadavg()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    summary = {"max_overhead": max(r["overhead"] for r in rows),
               "max_overhead_single_block": max(r["overhead_single_block"] for r in rows)}
    tmp.write_text(json.dumps({"environment": env, "summary": summary, "cases": rows}, indent=1))
    os.replace(tmp, out)
    print(f"max overhead: default {100 * summary['max_overhead']:+.1f}%, single block "
          f"{100 * summary['max_overhead_single_block']:+.1f}%  -> {out}")


if __name__ == "__main__":
    main()
