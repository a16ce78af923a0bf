"""The benchmark harness: timing, memory, machine, reports, registry, command line, problems.

A benchmark is a function ``fn(ctx: Context) -> list[Measurement]`` registered with
:func:`register` (the cases live in :mod:`benchmarks.cases`). Each :class:`Measurement` is
one timed computation; a *subject* (this project's code) names the *baselines* (the tool a
researcher would otherwise use) and *floors* (a lower bound such as one ``eigh(K)``) it is
compared with, measured in the same run and the same *case* (problem size).

========================  =================================================================
``records``               :class:`Measurement`, :class:`Fit`, :class:`BenchmarkResult`,
                          :func:`check_results` (a subject's baselines measured alongside)
``timing``                :class:`Context`: what a benchmark is asked to do, and
                          :meth:`Context.time` (compilation excluded, repeats within a
                          budget, interleaved rounds, ahead-of-time compiled calls)
``memory``                peak memory of one call (host RSS sampled every millisecond, or
                          the device's ``peak_bytes_in_use``)
``fits``                  scaling exponents (least squares in log–log)
``machine``               devices, versions, load average, commit
``report``                the JSON and Markdown reports, written atomically
``registration``          :func:`register`, :func:`registry`, :class:`SkipBenchmark`
``cli``                   ``python -m benchmarks``
``problems``              the kernel problems the cases share (CIFAR-10 linear kernel,
                          synthetic ridge kernel) and :func:`find_cifar_dir`
========================  =================================================================

The names below resolve lazily, so ``benchmarks.harness.cli`` starts without numpy or JAX
(``--blas-threads`` and the XLA flags must be set before they load).
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> module of this package that defines it (imported on first access).
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(
        ("ROLES", "SIZES", "SCHEMA_VERSION", "BenchmarkResult", "Fit", "Measurement", "check_results", "jsonable"),
        "records",
    ),
    **dict.fromkeys(("Context", "Timing", "block", "timed"), "timing"),
    **dict.fromkeys(("MemoryProbe", "RssSampler", "pin_malloc_mmap_threshold", "rss_bytes"), "memory"),
    **dict.fromkeys(("fit_exponent", "fits_over"), "fits"),
    **dict.fromkeys(("environment", "loadavg"), "machine"),
    **dict.fromkeys(("format_bytes", "format_seconds", "render_markdown", "write_results"), "report"),
    **dict.fromkeys(("Benchmark", "SkipBenchmark", "register", "registry"), "registration"),
    **dict.fromkeys(
        ("KernelProblem", "describe", "find_cifar_dir", "linear_kernel_problem", "ridge_kernel_problem"),
        "problems",
    ),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
