"""Analytic NTK Grams through stepwise_ntk against neural-tangents' kernel_fn called directly.

For each case (architecture, n inputs, image shape, dtype, block size b) the same numpy
inputs ``x`` (already in the case's dtype) go to six routes, every result materialised as a
host numpy array (``np.asarray`` of a CPU jax array is a zero-copy view):

========================  ==============================================================
direct                    ``jax.jit(kernel_fn, static_argnames="get")(x, None, get="ntk")``
                          (what a researcher calls; one block, no checks)
project_single            ``analytic_ntk(arch, x, dtype=..., batch_size=n)``: one block like
                          ``direct``, plus the layer's input checks, memory planning and
                          exact symmetrisation (a writable, exactly symmetric copy)
project                   ``analytic_ntk(arch, x, dtype=...)`` with its defaults (automatic
                          batch size; a large symmetric Gram is split so that only the
                          blocks on and above the diagonal are computed: less work)
nt_batch                  ``nt.batch(kernel_fn, batch_size=b)(x, None, "ntk")`` (all blocks)
project_blocked_full      ``analytic_ntk(arch, x, x, batch_size=b)``: the cross-kernel route,
                          all blocks like ``nt.batch``
project_blocked           ``analytic_ntk(arch, x, batch_size=b)``: the symmetric route, only
                          the blocks on and above the diagonal (k (k + 1) / 2 of k^2)
========================  ==============================================================

Like-for-like comparisons (same kernel evaluations), which measure the layer's overhead:

* ``overhead_single_block = project_single / direct - 1``
* ``overhead_blocked_same_work = project_blocked_full / nt_batch - 1``

``max_layer_overhead`` in the summary is the largest of these (target < 10%). The other
ratios compare different amounts of work and are reported for information:
``overhead = project / direct - 1`` (the default's symmetric split usually makes it
negative) and ``overhead_blocked_vs_nt_batch = project_blocked / nt_batch - 1``.

Timing: one warm-up call per route (compilation and the layer's memory analysis excluded),
then rounds that run every route once, in alternating order (forward, then backward) so
that machine load drifting during the run hits all routes alike; at least ``--repeats``
rounds, more for cheap cases until every route has run ``--min-time`` seconds. Ratios use
medians; ``*_min`` variants use the fastest call (less sensitive to load from other work).

Two ways to run it:

* ``uv run python -m benchmarks kernels`` — the registered benchmark ``kernels``: each
  route of each case becomes a measurement of the harness's report (the sizes of
  ``--size``: ``tiny`` one small MLP case, ``small`` the quick list, ``full`` every case);
* ``uv run python -m benchmarks.cases.kernels [--out benchmarks/results/kernels.json]
  [--repeats 7] [--min-time 2] [--quick]`` — stand-alone, every case, its own JSON (written
  atomically) with a summary of the layer's overheads.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.harness.records import Measurement
from benchmarks.harness.registration import register
from benchmarks.harness.timing import Context, Timing

__all__ = ["ROUTES", "main", "run", "run_case"]

ROUTES = ("direct", "project_single", "project", "nt_batch", "project_blocked_full",
          "project_blocked")
# (subject, baseline) pairs doing the same kernel evaluations: the layer's overhead.
SAME_WORK = {"overhead_single_block": ("project_single", "direct"),
             "overhead_blocked_same_work": ("project_blocked_full", "nt_batch")}
# Pairs doing different work (reported, not part of the overhead target).
OTHER = {"overhead": ("project", "direct"),
         "overhead_blocked_vs_nt_batch": ("project_blocked", "nt_batch")}
_MAX_ROUNDS = 500


def _cases(quick: bool):
    from stepwise_ntk.kernels import MLP, MyrtleCNN

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


def _interleaved(fns: dict, repeats: int, min_time: float) -> dict:
    """Per-route call times: rounds of every route, alternating the order each round."""
    times = {name: [] for name in fns}
    order = list(fns)
    rounds = 0
    while rounds < repeats or (rounds < _MAX_ROUNDS
                               and min(sum(ts) for ts in times.values()) < min_time):
        for name in order if rounds % 2 == 0 else order[::-1]:
            t = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t)
        rounds += 1
    return times


def run_case(label, arch, n, shape, dtype, batch, repeats, min_time=0.0):
    """Time every route on one case; returns a JSON-able row (see the module docstring)."""
    import jax

    from stepwise_ntk.kernels import analytic_ntk
    from stepwise_ntk.kernels._nt_compat import nt

    x = np.random.default_rng(0).normal(size=(n, *shape)).astype(dtype)
    x64 = bool(np.dtype(dtype) == np.float64)
    kernel_fn = arch.kernel_fn()
    direct_jit = jax.jit(kernel_fn, static_argnames="get")
    nt_batched = nt.batch(kernel_fn, batch_size=batch)

    def direct():
        with jax.enable_x64(x64):
            return np.asarray(direct_jit(x, None, get="ntk"))

    def nt_batch():
        with jax.enable_x64(x64):
            return np.asarray(nt_batched(x, None, "ntk"))

    fns = {
        "direct": direct,
        "project_single": lambda: analytic_ntk(arch, x, dtype=dtype, batch_size=n,
                                               progress=False),
        "project": lambda: analytic_ntk(arch, x, dtype=dtype, progress=False),
        "nt_batch": nt_batch,
        "project_blocked_full": lambda: analytic_ntk(arch, x, x, dtype=dtype, batch_size=batch,
                                                     progress=False),
        "project_blocked": lambda: analytic_ntk(arch, x, dtype=dtype, batch_size=batch,
                                                progress=False),
    }
    assert tuple(fns) == ROUTES
    first_call_s, results = {}, {}
    for name, fn in fns.items():  # warm-up: compilation and the layer's memory analysis
        t = time.perf_counter()
        results[name] = fn()
        first_call_s[name] = time.perf_counter() - t
    ref = results["direct"].astype(np.float64)
    scale = float(np.abs(ref).max())
    load_start = os.getloadavg()[0]
    times = _interleaved(fns, repeats, min_time)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    low = {name: min(ts) for name, ts in times.items()}
    k = -(-n // batch)
    row = {
        "arch": label,
        "spec": arch.to_config(),
        "n": n,
        "input_shape": list(shape),
        "dtype": np.dtype(dtype).name,
        "batch_size_blocked": batch,
        "blocks_nt_batch": k * k,
        "blocks_project_blocked": k * (k + 1) // 2,
        "rounds": len(times["direct"]),
        "load_average_1min": [load_start, os.getloadavg()[0]],
        "median_s": med,
        "min_s": low,
        "all_s": times,
        "first_call_s": first_call_s,
        "max_rel_diff_vs_direct": {
            name: float(np.abs(r.astype(np.float64) - ref).max() / scale)
            for name, r in results.items()},
    }
    for key, (subject, baseline) in {**SAME_WORK, **OTHER}.items():
        row[key] = med[subject] / med[baseline] - 1
        row[key + "_min"] = low[subject] / low[baseline] - 1
    row["layer_overhead"] = max(row[key] for key in SAME_WORK)
    return row


def _line(row: dict) -> str:
    m = row["median_s"]
    return (f"{row['arch']:8s} n={row['n']:5d} {tuple(row['input_shape'])!s:12s} "
            f"{row['dtype']:7s} | one block: direct {m['direct']:.4f}s project "
            f"{m['project_single']:.4f}s ({100 * row['overhead_single_block']:+.1f}%) | "
            f"b={row['batch_size_blocked']}: nt.batch {m['nt_batch']:.4f}s project "
            f"{m['project_blocked_full']:.4f}s "
            f"({100 * row['overhead_blocked_same_work']:+.1f}%) | default "
            f"{m['project']:.4f}s ({100 * row['overhead']:+.1f}% vs direct), symmetric "
            f"blocked {m['project_blocked']:.4f}s "
            f"({100 * row['overhead_blocked_vs_nt_batch']:+.1f}% vs nt.batch)")


def main(argv=None):
    """The stand-alone script: every case, one JSON file (see the module docstring)."""
    import jax

    from stepwise_ntk._io import write_json

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="benchmarks/results/kernels.json")
    parser.add_argument("--repeats", type=int, default=7, help="least number of rounds")
    parser.add_argument("--min-time", type=float, default=2.0,
                        help="more rounds until every route has run this many seconds")
    parser.add_argument("--quick", action="store_true", help="skip the largest cases")
    args = parser.parse_args(argv)

    env = {
        "jax": jax.__version__,
        "devices": [str(d) for d in jax.local_devices()],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "load_average_start": os.getloadavg(),
        "python": sys.version.split()[0],
        "protocol": f"warm-up excluded; >= {args.repeats} interleaved rounds (alternating "
                    f"order), more until each route ran {args.min_time} s; medians",
    }
    rows = []
    for case in _cases(args.quick):
        row = run_case(*case, repeats=args.repeats, min_time=args.min_time)
        rows.append(row)
        print(_line(row), flush=True)
    env["load_average_end"] = os.getloadavg()
    summary = {
        "max_layer_overhead": max(r["layer_overhead"] for r in rows),
        "layer_overhead_by_case": {
            f"{r['arch']} n={r['n']} {'x'.join(map(str, r['input_shape']))} {r['dtype']}":
                {key: r[key] for key in SAME_WORK} for r in rows},
        "max_overhead_single_block": max(r["overhead_single_block"] for r in rows),
        "max_overhead_blocked_same_work": max(r["overhead_blocked_same_work"] for r in rows),
        "max_overhead_default_vs_direct": max(r["overhead"] for r in rows),
        "max_overhead": max(r["overhead"] for r in rows),  # kept for older readers
        "note": "layer overhead = same kernel evaluations through analytic_ntk vs directly "
                "(one block vs jit(kernel_fn); all blocks vs nt.batch); the default and the "
                "symmetric blocked route compute fewer blocks, so their ratios are not "
                "overheads.",
    }
    out = write_json(Path(args.out), {"environment": env, "summary": summary, "cases": rows}, indent=1)
    print(f"max layer overhead {100 * summary['max_layer_overhead']:+.1f}% (one block "
          f"{100 * summary['max_overhead_single_block']:+.1f}%, blocked "
          f"{100 * summary['max_overhead_blocked_same_work']:+.1f}%)  -> {out}")


# ------------------------------------------------------------------------------ the registered benchmark

# route -> (measurement name, role, baselines)
_MEASURED = {
    "direct": ("nt kernel_fn (jit)", "baseline", ()),
    "nt_batch": ("nt.batch", "baseline", ()),
    "project": ("analytic_ntk", "subject", ("nt kernel_fn (jit)",)),
    "project_single": ("analytic_ntk[one block]", "subject", ("nt kernel_fn (jit)",)),
    "project_blocked": ("analytic_ntk[blocked]", "subject", ("nt.batch",)),
}


def _sized_cases(size: str):
    if size == "tiny":
        from stepwise_ntk.kernels import MLP

        # One MLP case, two blocks: every route and measurement of the benchmark runs. A
        # Myrtle CNN case would only add compilation (each route compiles its own CNN
        # programs, about two thirds of this benchmark's tiny time); the CNN kernel paths are
        # tested in tests/test_kernels.py and measured from --size small.
        return [("mlp", MLP(depth=2), 32, (8, 8, 3), np.float32, 16)]
    return _cases(quick=size != "full")


@register(
    "kernels",
    "NTK Gram matrices (fully-connected; Myrtle CNN with pooling) through stepwise_ntk's "
    "analytic_ntk against direct neural-tangents kernel_fn / nt.batch calls "
    "(benchmarks/cases/kernels.py).",
)
def run(ctx: Context) -> list[Measurement]:
    """Every case of ``ctx.size`` through :func:`run_case`, each route one measurement."""
    out = []
    for label, arch, n, shape, dtype, batch in _sized_cases(ctx.size):
        row = run_case(label, arch, n, shape, dtype, batch, repeats=ctx.repeats)
        case = f"{label} n={n} {'x'.join(map(str, shape))} {np.dtype(dtype).name}"
        sizes = {"n": n, "input": "x".join(map(str, shape)), "batch_size_blocked": batch}
        for key, (name, role, baselines) in _MEASURED.items():
            times = row["all_s"][key]
            timing = Timing(
                times=times,
                compile_s=max(row["first_call_s"][key] - float(np.median(times)), 0.0),
                compile_method="first call − median (run_case)",
                peak_bytes=None,
                memory=None,
                output=None,
            )
            extra = {"max_rel_diff_vs_direct": row["max_rel_diff_vs_direct"][key]}
            if key == "project":
                extra["overhead"] = row["overhead"]
            if key == "project_single":
                extra["overhead"] = row["overhead_single_block"]
            out.append(
                ctx.measurement(
                    timing,
                    benchmark="kernels",
                    case=case,
                    name=name,
                    role=role,
                    sizes=sizes,
                    dtype=dtype,
                    baselines=baselines,
                    extra=extra,
                )
            )
    return out


if __name__ == "__main__":
    main()
