"""The command line of ``python -m benchmarks``: run named benchmarks, write JSON and Markdown.

See :mod:`benchmarks` for the commands. This module imports only the standard library at
the top: ``--blas-threads`` and the XLA flags must be in place before numpy and JAX load.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from typing import Any

__all__ = ["main", "parse_args"]


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Run stepwise_ntk benchmarks (each against its baseline) and write JSON + Markdown.",
    )
    p.add_argument("names", nargs="*", help="benchmarks to run (default: all; see --list)")
    p.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    p.add_argument(
        "--size",
        choices=("tiny", "small", "full"),
        default="small",
        help="problem sizes: tiny (smoke test), small, full (README)",
    )
    p.add_argument("--repeats", type=int, default=3, help="timed calls per measurement (at most)")
    p.add_argument(
        "--budget",
        type=float,
        default=30.0,
        help="stop repeating a measurement once its timed calls took this many seconds",
    )
    p.add_argument(
        "--min-time",
        type=float,
        default=1.0,
        help="repeat cheap calls (up to 10 × --repeats) until they took this many seconds",
    )
    p.add_argument(
        "--dtype",
        choices=("float32", "float64"),
        default=None,
        help="float dtype (default: float64 on CPU, float32 on GPU/TPU)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a preset, e.g. n_views=4000 or n_views=[500,1000] (repeatable)",
    )
    p.add_argument("--out", default="benchmarks/results", help="output folder")
    p.add_argument("--tag", default=None, help="output file stem (default: <backend>_<size>)")
    p.add_argument(
        "--data-dir",
        default=None,
        help="CIFAR-10 folder (default: STEPWISE_NTK_DATA, cache, "
        "../shared/cifar10; synthetic data if none)",
    )
    p.add_argument(
        "--blas-threads",
        type=int,
        default=None,
        help="threads of the BLAS/LAPACK under numpy/scipy and jaxlib's CPU linear algebra "
        "(sets OPENBLAS/OMP/MKL_NUM_THREADS before they load); 1 avoids the multi-second stalls "
        "of spinning BLAS threads on an oversubscribed machine",
    )
    p.add_argument("--no-memory", action="store_true", help="do not measure peak memory")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument(
        "--distributed",
        action="store_true",
        help="call jax.distributed.initialize() first (multi-host)",
    )
    p.add_argument("--coordinator", default=None, help="with --distributed: coordinator HOST:PORT")
    p.add_argument(
        "--num-processes", type=int, default=None, help="with --distributed: number of processes"
    )
    p.add_argument(
        "--process-id", type=int, default=None, help="with --distributed: this process's index"
    )
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be ≥ 1")
    if args.blas_threads is not None and args.blas_threads < 1:
        p.error("--blas-threads must be ≥ 1")
    overrides = {}
    for item in args.set:
        if "=" not in item:
            p.error(f"--set expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        overrides[k.strip()] = _parse_value(v.strip())
    args.overrides = overrides
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    # Before JAX starts: the package's XLA CPU flags against jaxlib's float64 crashes (the
    # import loads neither numpy nor JAX, so --blas-threads below still takes effect).
    import stepwise_ntk._xla_flags

    stepwise_ntk._xla_flags.apply()
    if args.blas_threads is not None:
        if "numpy" in sys.modules:  # too late: the BLAS has read its settings
            print("WARNING: --blas-threads has no effect once numpy is imported", file=sys.stderr)
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(args.blas_threads)

    import jax

    if args.distributed:
        kw = {
            k: v
            for k, v in (
                ("coordinator_address", args.coordinator),
                ("num_processes", args.num_processes),
                ("process_id", args.process_id),
            )
            if v is not None
        }
        jax.distributed.initialize(**kw)
    jax.config.update("jax_enable_x64", True)  # float64 references; float32 arrays stay float32

    from benchmarks import load_registry
    from benchmarks.harness.machine import environment, loadavg
    from benchmarks.harness.memory import pin_malloc_mmap_threshold
    from benchmarks.harness.records import BenchmarkResult, check_results
    from benchmarks.harness.registration import SkipBenchmark
    from benchmarks.harness.timing import Context

    reg = load_registry()
    if args.list:
        for name, b in reg.items():
            print(f"{name:12s} {b.description}")
        return 0
    names = args.names or list(reg)
    unknown = [n for n in names if n not in reg]
    if unknown:
        print(
            f"unknown benchmark(s) {unknown}; available: {sorted(reg)} (see --list)",
            file=sys.stderr,
        )
        return 2

    pinned = pin_malloc_mmap_threshold()
    ctx = Context(
        size=args.size,
        repeats=args.repeats,
        dtype=args.dtype,
        overrides=args.overrides,
        budget_s=args.budget,
        min_time_s=args.min_time,
        measure_memory=not args.no_memory,
        progress=not args.quiet,
        data_dir=args.data_dir,
    )
    env = environment()
    env["malloc_mmap_threshold_pinned"] = pinned
    results, paths = [], None
    for name in names:
        b = reg[name]
        if ctx.progress:
            print(f"[{name}] {b.description}", flush=True)
        load0 = loadavg()
        t0 = time.perf_counter()
        status, message, ms, fits = "ok", "", [], []
        try:
            ms = b.fn(ctx)
            if b.fits is not None:
                fits = b.fits(ms)
        except SkipBenchmark as e:  # e.g. the width sweep without CIFAR-10
            status, message = "skipped", str(e)
        except Exception as e:  # noqa: BLE001 - one failing benchmark must not lose the others
            status, message = "error", f"{type(e).__name__}: {e}"
            traceback.print_exc()
        load1 = loadavg()
        results.append(
            BenchmarkResult(
                name=name,
                description=b.description,
                status=status,
                message=message,
                wall_s=time.perf_counter() - t0,
                loadavg_before=load0,
                loadavg_after=load1,
                measurements=ms,
                fits=fits,
            )
        )
        if ctx.progress:
            print(f"[{name}] {status} in {results[-1].wall_s:.1f} s {message}", flush=True)
        # Results so far, so a long run that is stopped keeps what it measured.
        pending = names[len(results) :]
        paths = _write(args, ctx, env, names, results, pending)

    problems = check_results(results)
    if paths is not None:
        print(f"wrote {paths[0]} and {paths[1]}")
    for p in problems:
        print(f"PROBLEM: {p}", file=sys.stderr)
    unused = ctx.unused_overrides()
    if unused:
        print(f"WARNING: --set keys not used by the benchmarks run: {unused}", file=sys.stderr)
    failed = [r.name for r in results if r.status == "error"]
    if failed:
        print(f"FAILED: {failed}", file=sys.stderr)
    return 1 if failed or problems else 0


def _write(args, ctx, env, names, results, pending):
    """Write the JSON and Markdown of ``results`` (process 0 only); returns their paths."""
    import jax

    from benchmarks.harness.machine import loadavg
    from benchmarks.harness.report import write_results

    if jax.process_index() != 0:
        return None
    settings = {
        "names": names,
        "pending": pending,
        "size": args.size,
        "repeats": args.repeats,
        "budget_s": args.budget,
        "min_time_s": args.min_time,
        "dtype": args.dtype,
        "overrides": args.overrides,
        "unused_overrides": ctx.unused_overrides(),
        "measure_memory": not args.no_memory,
    }
    load = loadavg()
    env = dict(env, loadavg_end=list(load) if load is not None else None)
    tag = args.tag or f"{env['backend']}_{args.size}"
    return write_results(args.out, tag, env, settings, results)
