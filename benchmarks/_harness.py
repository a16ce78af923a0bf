"""Timing, memory and reporting machinery shared by every benchmark.

A benchmark is a function ``fn(ctx: Context) -> list[Measurement]`` registered with
:func:`register`. Each :class:`Measurement` is one timed computation; a *subject* (this
project's code) names the *baselines* (the tool a researcher would otherwise use) and
*floors* (a lower bound such as one ``eigh(K)``) it is compared with, and those must be
measured in the same run and the same *case* (problem size), so every ratio in the report
comes from one process on one machine under one load.

Timing (:meth:`Context.time`):

* ``jax.block_until_ready`` on the result, ``time.perf_counter`` around the call;
* compilation is excluded and reported on its own: either a warm-up call of the same
  function (``compile_s = first call − median``), a cheaper warm-up with the same shapes
  (``compile_s = its first call − its second call``), or ahead-of-time compilation of a
  jitted function (``compile_s`` = the time of ``.lower(...).compile()``);
* ``repeats`` timed calls (fewer once their total passes ``budget_s``, at least one; more,
  up to 10 ×, while cheap calls total under ``min_time_s``); the report gives the median,
  the interquartile range, min and max. On a shared machine the minimum is the call least
  disturbed by other processes, so scaling exponents are fitted to it as well as to the
  median.

Peak memory is taken during the first timed call (never the warm-up, whose compiler
memory would dominate):

* CPU: the process's peak resident set size above its value before the call, sampled
  every millisecond from ``/proc/self/statm`` (Linux); glibc's ``mmap`` threshold is
  fixed at 1 MiB (:func:`pin_malloc_mmap_threshold`) so freed large buffers go back to the
  OS and each call's own working set shows. Elsewhere ``ru_maxrss`` growth (a lower bound).
* GPU/TPU: ``device.memory_stats()['peak_bytes_in_use']`` minus the bytes in use before
  the call, when the call raised the device's peak (sizes run in increasing order, so the
  scaling benchmarks always do); otherwise not reported.

Outputs (:func:`write_results`): one JSON file (environment, settings, every measurement,
the fitted scaling exponents) and one Markdown file with the same tables, both written
atomically.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "ROLES",
    "SIZES",
    "Benchmark",
    "BenchmarkResult",
    "Context",
    "Fit",
    "Measurement",
    "SkipBenchmark",
    "Timing",
    "check_results",
    "environment",
    "fit_exponent",
    "format_bytes",
    "format_seconds",
    "pin_malloc_mmap_threshold",
    "register",
    "registry",
    "render_markdown",
    "write_results",
]

SIZES = ("tiny", "small", "full")
ROLES = ("subject", "baseline", "floor", "experiment")
SCHEMA_VERSION = 1


# ------------------------------------------------------------------------------ records


@dataclasses.dataclass
class Measurement:
    """One timed computation.

    Attributes:
      benchmark: registry name of the benchmark that produced it.
      case: the problem it was measured on (e.g. ``"bt 2n=2000 d=32"``); subjects are
        only compared with baselines of the same case.
      name: what ran (e.g. ``"solve[eigen]"``, ``"nt.predict.gradient_descent"``).
      role: ``"subject"`` (this project), ``"baseline"`` (the tool a researcher would
        otherwise use), ``"floor"`` (a lower bound, e.g. one ``eigh``) or
        ``"experiment"`` (an accuracy study with no timing comparison).
      baselines: names of the baselines/floors of the same case this subject is held
        against (empty for non-subjects).
      sizes: problem sizes (``{"n_views": 2000, "d": 32}``).
      dtype: the floating dtype of the computation.
      median_s, iqr_s, min_s, max_s: statistics of the timed calls (seconds).
      repeats: number of timed calls.
      compile_s: compilation time excluded from the above (None: not separable).
      compile_method: how ``compile_s`` was obtained.
      peak_bytes: peak memory of one call (see the module docstring), or None.
      memory: what ``peak_bytes`` measures.
      extra: anything else (accuracy, step counts, ...), JSON-able scalars/lists/strings.
    """

    benchmark: str
    case: str
    name: str
    role: str
    baselines: list[str]
    sizes: dict[str, Any]
    dtype: str
    median_s: float
    iqr_s: float
    min_s: float
    max_s: float
    repeats: int
    compile_s: float | None
    compile_method: str
    peak_bytes: int | None
    memory: str | None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"Measurement.role must be one of {ROLES}, got {self.role!r}.")
        if self.role != "subject" and self.baselines:
            raise ValueError(f"only subjects name baselines; {self.name!r} is a {self.role}.")

    def to_json(self) -> dict[str, Any]:
        return _jsonable(dataclasses.asdict(self))


@dataclasses.dataclass
class Fit:
    """A fitted power law ``time ∝ x^exponent`` (or memory) over one benchmark's sizes.

    Attributes:
      benchmark, name: which measurements were fitted (same ``name`` across cases).
      quantity: ``"median_s"``, ``"per_rhs_s"`` (an ``extra`` key) or ``"peak_bytes"``.
      variable: the size varied (``"n_views"`` or ``"d"``).
      exponent: least-squares slope of ``log quantity`` against ``log variable``.
      r2: coefficient of determination of that fit.
      points: the ``(x, y)`` pairs fitted.
      expected: the exponent the algorithm's complexity predicts, or None.
      tolerance: the allowed ``|exponent − expected|``.
    """

    benchmark: str
    name: str
    quantity: str
    variable: str
    exponent: float
    r2: float
    points: list[tuple[float, float]]
    expected: float | None = None
    tolerance: float | None = None

    @property
    def within_tolerance(self) -> bool | None:
        if self.expected is None or self.tolerance is None:
            return None
        return abs(self.exponent - self.expected) <= self.tolerance

    def to_json(self) -> dict[str, Any]:
        out = _jsonable(dataclasses.asdict(self))
        out["within_tolerance"] = self.within_tolerance
        return out


@dataclasses.dataclass
class BenchmarkResult:
    """What one benchmark produced in one run (or why it did not)."""

    name: str
    description: str
    status: str  # "ok", "error", "skipped"
    message: str
    wall_s: float
    loadavg_before: tuple[float, float, float] | None
    loadavg_after: tuple[float, float, float] | None
    measurements: list[Measurement]
    fits: list[Fit]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "status": self.status,
            "message": self.message,
            "wall_s": self.wall_s,
            "loadavg_before": self.loadavg_before,
            "loadavg_after": self.loadavg_after,
            "measurements": [m.to_json() for m in self.measurements],
            "fits": [f.to_json() for f in self.fits],
        }


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        v = float(x)
        return v if math.isfinite(v) else str(v)
    if isinstance(x, (np.bool_,)):
        return bool(x)
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if x is None or isinstance(x, (bool, int, str)):
        return x
    if hasattr(x, "item") and callable(x.item):  # 0-d jax arrays
        return _jsonable(x.item())
    return str(x)


# ------------------------------------------------------------------------------ registry


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """A registered benchmark: ``fn(ctx) -> list[Measurement]`` plus its description."""

    name: str
    fn: Callable[[Context], list[Measurement]]
    description: str
    fits: Callable[[list[Measurement]], list[Fit]] | None = None


_REGISTRY: dict[str, Benchmark] = {}


class SkipBenchmark(Exception):
    """Raised by a benchmark that cannot run here (e.g. an adapter whose script is absent)."""


def register(
    name: str, description: str, *, fits: Callable[[list[Measurement]], list[Fit]] | None = None
):
    """Decorator: register ``fn(ctx) -> list[Measurement]`` under ``name``.

    ``fits``, if given, turns the benchmark's measurements into :class:`Fit` s (scaling
    exponents) after it ran.
    """

    def deco(fn):
        if name in _REGISTRY and _REGISTRY[name].fn is not fn:
            raise ValueError(f"benchmark {name!r} is registered twice; pick another name.")
        _REGISTRY[name] = Benchmark(name=name, fn=fn, description=description, fits=fits)
        return fn

    return deco


def registry() -> dict[str, Benchmark]:
    """The registered benchmarks by name (import the ``bench_*`` modules first)."""
    return dict(_REGISTRY)


# ------------------------------------------------------------------------------ memory


def pin_malloc_mmap_threshold(threshold_bytes: int = 1 << 20) -> bool:
    """Fix glibc's mmap threshold so large freed buffers are returned to the OS at once.

    glibc raises the threshold dynamically (up to 32 MiB) after large frees, after which
    freed buffers stay in the heap and later calls reuse them without touching the
    resident set size, hiding their working set. A fixed threshold keeps every buffer of
    at least ``threshold_bytes`` in its own mapping. Returns False where it does not apply
    (not glibc).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        M_MMAP_THRESHOLD = -3
        return bool(libc.mallopt(M_MMAP_THRESHOLD, int(threshold_bytes)))
    except (OSError, AttributeError):
        return False


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class _RssSampler:
    """Peak RSS above the value at start, sampled every ``interval`` seconds in a thread."""

    def __init__(self, interval: float = 1e-3):
        self.interval = interval
        self.start_rss = _rss_bytes()
        self.peak = self.start_rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            r = _rss_bytes()
            if r is not None and (self.peak is None or r > self.peak):
                self.peak = r
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        r = _rss_bytes()
        if r is not None and (self.peak is None or r > self.peak):
            self.peak = r

    @property
    def extra_bytes(self) -> int | None:
        if self.start_rss is None or self.peak is None:
            return None
        return max(self.peak - self.start_rss, 0)


class _MemoryProbe:
    """Context manager measuring one call's peak memory (see the module docstring)."""

    def __init__(self):
        import jax

        self.device = jax.local_devices()[0]
        self.kind = None
        self.bytes = None

    def __enter__(self):
        if self.device.platform == "cpu":
            if _rss_bytes() is not None:
                self._sampler = _RssSampler().__enter__()
                self._mode = "rss"
            else:
                self._maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                self._mode = "maxrss"
        else:
            stats = self.device.memory_stats() or {}
            self._stats = stats
            self._mode = "device" if "peak_bytes_in_use" in stats else None
        return self

    def __exit__(self, *exc):
        if self._mode == "rss":
            self._sampler.__exit__(*exc)
            self.bytes = self._sampler.extra_bytes
            self.kind = "host RSS peak above start (sampled 1 ms)"
        elif self._mode == "maxrss":
            # ru_maxrss is KiB on Linux, bytes on macOS; growth of the lifetime peak only.
            scale = 1 if sys.platform == "darwin" else 1024
            grow = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - self._maxrss
            self.bytes = grow * scale if grow > 0 else None
            self.kind = "growth of the process's lifetime peak RSS (lower bound)"
        elif self._mode == "device":
            stats = self.device.memory_stats() or {}
            peak, before = stats.get("peak_bytes_in_use"), self._stats.get("bytes_in_use", 0)
            if peak is not None and peak > self._stats["peak_bytes_in_use"]:
                self.bytes = int(peak - before)
                self.kind = f"{self.device.platform} peak_bytes_in_use above bytes in use at start"
            else:
                self.kind = f"{self.device.platform}: below an earlier peak, not separable"
        return False


# ------------------------------------------------------------------------------ timing


@dataclasses.dataclass
class Timing:
    """Result of :meth:`Context.time`: the statistics and the last output."""

    times: list[float]
    compile_s: float | None
    compile_method: str
    peak_bytes: int | None
    memory: str | None
    output: Any

    @property
    def median_s(self) -> float:
        return float(np.median(self.times))

    @property
    def iqr_s(self) -> float:
        q1, q3 = np.percentile(self.times, [25, 75])
        return float(q3 - q1)


def _block(x: Any) -> Any:
    import jax

    return jax.block_until_ready(x)


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = _block(fn())
    return time.perf_counter() - t0, out


@dataclasses.dataclass
class Context:
    """What a benchmark is asked to do: sizes, repeats, dtype, overrides.

    Attributes:
      size: ``"tiny"`` (smoke test, seconds), ``"small"`` (a minute or two) or ``"full"``
        (the sizes the README reports).
      repeats: timed calls per measurement (at most; see ``budget_s``).
      dtype: ``"float32"``, ``"float64"`` or None (each benchmark's default: float64 on
        CPU where accuracy is compared, float32 on accelerators).
      overrides: ``--set KEY=VALUE`` settings (sizes etc.), read with :meth:`param`.
      budget_s: stop repeating once the timed calls of one measurement took this long.
      min_time_s: keep repeating cheap calls (up to 10 × ``repeats``) until they took this
        long, so their median is stable.
      measure_memory: take peak memory during the first timed call.
      progress: print what runs.
      data_dir: CIFAR-10 folder (None: ``STEPWISE_NTK_DATA``, the cache, then
        ``../shared/cifar10`` beside the checkout; synthetic data if none has it).
    """

    size: str = "small"
    repeats: int = 3
    dtype: str | None = None
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    budget_s: float = 30.0
    min_time_s: float = 1.0
    measure_memory: bool = True
    progress: bool = True
    data_dir: str | None = None
    _used: set = dataclasses.field(default_factory=set, repr=False)

    def __post_init__(self) -> None:
        if self.size not in SIZES:
            raise ValueError(f"size must be one of {SIZES}, got {self.size!r}.")
        if not isinstance(self.repeats, int) or self.repeats < 1:
            raise ValueError(f"repeats must be an int ≥ 1, got {self.repeats!r}.")
        if self.dtype not in (None, "float32", "float64"):
            raise ValueError(f"dtype must be 'float32', 'float64' or None, got {self.dtype!r}.")

    def param(self, key: str, presets: dict[str, Any]) -> Any:
        """``overrides[key]`` if set, else ``presets[self.size]``."""
        self._used.add(key)
        if key in self.overrides:
            return self.overrides[key]
        return presets[self.size]

    def float_dtype(
        self, default_cpu: str = "float64", default_accelerator: str = "float32"
    ) -> np.dtype:
        """The requested dtype, or the benchmark's default for this backend."""
        import jax

        if self.dtype is not None:
            return np.dtype(self.dtype)
        return np.dtype(default_cpu if jax.default_backend() == "cpu" else default_accelerator)

    def log(self, msg: str) -> None:
        if self.progress:
            print(f"  {msg}", flush=True)

    def time(
        self,
        fn: Callable[[], Any],
        *,
        warmup: Callable[[], Any] | None | bool = None,
        repeats: int | None = None,
        memory: bool | None = None,
    ) -> Timing:
        """Time ``fn()`` (see the module docstring).

        Args:
          fn: the call to time; its result is blocked on.
          warmup: a cheaper call that compiles the same programs (same shapes/settings);
            ``compile_s`` = its first minus its second call. None: ``fn`` itself warms up
            and ``compile_s = first call − median``. False: no warm-up (already compiled).
          repeats: timed calls (default ``self.repeats``), fewer past ``budget_s``, more for
            cheap calls (see ``min_time_s``).
          memory: take peak memory during the first timed call (default
            ``self.measure_memory``).
        """
        repeats = self.repeats if repeats is None else repeats
        memory = self.measure_memory if memory is None else memory
        first_fn = None
        if warmup is False:
            compile_s, method = None, "none (compiled beforehand)"
        elif warmup is not None:
            first, _ = _timed(warmup)
            second, _ = _timed(warmup)
            compile_s, method = (
                max(first - second, 0.0),
                "cheaper warm-up with the same shapes: first − second call",
            )
        else:
            first_fn, out = _timed(fn)
            compile_s, method = None, "first call − median"
        times, peak, kind, out = [], None, None, None
        while self._more(times, repeats):
            if not times and memory:
                with _MemoryProbe() as probe:
                    t, out = _timed(fn)
                peak, kind = probe.bytes, probe.kind
            else:
                t, out = _timed(fn)
            times.append(t)
        if first_fn is not None:
            compile_s = max(first_fn - float(np.median(times)), 0.0)
        return Timing(
            times=times,
            compile_s=compile_s,
            compile_method=method,
            peak_bytes=peak,
            memory=kind,
            output=out,
        )

    def _more(self, times: list[float], repeats: int) -> bool:
        """Another timed call? ``repeats`` calls, more (up to 10×) while they total under
        ``min_time_s`` (cheap calls get enough samples for a stable median), none once they
        total ``budget_s``; always at least one."""
        if not times:
            return True
        total = sum(times)
        if total >= self.budget_s:
            return False
        return len(times) < repeats or (total < self.min_time_s and len(times) < 10 * repeats)

    def time_interleaved(
        self,
        fns: dict[str, Callable[[], Any]],
        *,
        repeats: int | None = None,
        memory: bool | None = None,
    ) -> dict[str, Timing]:
        """Time several calls in rounds (one call of each per round), so that a drifting load
        hits them alike; each warms up with one call first (``compile_s = first − median``)."""
        repeats = self.repeats if repeats is None else repeats
        memory = self.measure_memory if memory is None else memory
        first = {k: _timed(f)[0] for k, f in fns.items()}
        times: dict[str, list[float]] = {k: [] for k in fns}
        outs, peaks, kinds = {}, {}, {}
        for i in range(repeats):
            for k, f in fns.items():
                if i == 0 and memory:
                    with _MemoryProbe() as probe:
                        t, outs[k] = _timed(f)
                    peaks[k], kinds[k] = probe.bytes, probe.kind
                else:
                    t, outs[k] = _timed(f)
                times[k].append(t)
            if sum(sum(v) for v in times.values()) >= self.budget_s * len(fns):
                break
        return {
            k: Timing(
                times=times[k],
                compile_s=max(first[k] - float(np.median(times[k])), 0.0),
                compile_method="first call − median (interleaved rounds)",
                peak_bytes=peaks.get(k),
                memory=kinds.get(k),
                output=outs[k],
            )
            for k in fns
        }

    def time_jitted(
        self, jitted: Any, *args: Any, repeats: int | None = None, memory: bool | None = None
    ) -> Timing:
        """Time a ``jax.jit`` function ahead-of-time compiled: no warm-up call is needed.

        ``compile_s`` is the time of ``jitted.lower(*args).compile()``.
        """
        t0 = time.perf_counter()
        compiled = jitted.lower(*args).compile()
        compile_s = time.perf_counter() - t0
        timing = self.time(lambda: compiled(*args), warmup=False, repeats=repeats, memory=memory)
        timing.compile_s, timing.compile_method = compile_s, "ahead of time: lower().compile()"
        return timing

    def measurement(
        self,
        timing: Timing,
        *,
        benchmark: str,
        case: str,
        name: str,
        role: str,
        sizes: dict[str, Any],
        dtype: Any,
        baselines: Sequence[str] = (),
        extra: dict[str, Any] | None = None,
    ) -> Measurement:
        """A :class:`Measurement` from a :class:`Timing`; logs a one-line summary."""
        m = Measurement(
            benchmark=benchmark,
            case=case,
            name=name,
            role=role,
            baselines=list(baselines),
            sizes=dict(sizes),
            dtype=np.dtype(dtype).name,
            median_s=timing.median_s,
            iqr_s=timing.iqr_s,
            min_s=min(timing.times),
            max_s=max(timing.times),
            repeats=len(timing.times),
            compile_s=timing.compile_s,
            compile_method=timing.compile_method,
            peak_bytes=timing.peak_bytes,
            memory=timing.memory,
            extra=_jsonable(extra or {}),
        )
        comp = "" if m.compile_s is None else f"  compile {format_seconds(m.compile_s)}"
        self.log(f"{case:24s} {name:34s} {format_seconds(m.median_s):>9s} (×{m.repeats}){comp}")
        return m


# ------------------------------------------------------------------------------ fits


def fit_exponent(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Least-squares slope of ``log y`` against ``log x`` and its ``R²``.

    Raises:
      ValueError: fewer than two distinct positive ``x`` or a non-positive ``y``.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-D of one length, got {x.shape} and {y.shape}.")
    if np.unique(x).size < 2 or np.any(x <= 0) or np.any(y <= 0) or not np.all(np.isfinite(y)):
        raise ValueError("fit_exponent needs ≥ 2 distinct positive x and positive finite y.")
    lx, ly = np.log(x), np.log(y)
    slope, intercept = np.polyfit(lx, ly, 1)
    resid = ly - (slope * lx + intercept)
    ss = float(np.sum((ly - ly.mean()) ** 2))
    r2 = 1.0 - float(np.sum(resid**2)) / ss if ss > 0 else 1.0
    return float(slope), r2


_FIELDS = ("median_s", "min_s", "max_s", "peak_bytes")


def fits_over(
    measurements: Sequence[Measurement],
    variable: str,
    quantity: str = "median_s",
    expected: dict[str, float] | None = None,
    tolerance: float = 0.3,
    min_x: float | None = None,
) -> list[Fit]:
    """One :class:`Fit` per measurement name over the cases that vary ``sizes[variable]``.

    ``quantity`` is ``"median_s"``, ``"min_s"``, ``"peak_bytes"`` or a key of ``extra``; points with a
    missing or non-positive value are left out, as are sizes below ``min_x`` (where fixed
    overheads dominate). A name with fewer than two points gets no fit.
    """
    expected = expected or {}
    out = []
    for name in dict.fromkeys(m.name for m in measurements):
        pts = []
        for m in measurements:
            if m.name != name or variable not in m.sizes:
                continue
            x = m.sizes[variable]
            y = getattr(m, quantity) if quantity in _FIELDS else m.extra.get(quantity)
            if (
                y is None
                or not isinstance(y, (int, float))
                or y <= 0
                or (min_x is not None and x < min_x)
            ):
                continue
            pts.append((float(x), float(y)))
        if len({p[0] for p in pts}) < 2:
            continue
        pts.sort()
        slope, r2 = fit_exponent([p[0] for p in pts], [p[1] for p in pts])
        exp = expected.get(name)
        out.append(
            Fit(
                benchmark=measurements[0].benchmark,
                name=name,
                quantity=quantity,
                variable=variable,
                exponent=slope,
                r2=r2,
                points=pts,
                expected=exp,
                tolerance=tolerance if exp is not None else None,
            )
        )
    return out


# ------------------------------------------------------------------------------ environment


def _git(*args: str) -> str | None:
    try:
        res = subprocess.run(
            ["git", *args],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() if res.returncode == 0 else None


def _version(dist: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment() -> dict[str, Any]:
    """Where and with what the benchmarks ran (devices, versions, load, commit)."""
    import jax

    devices = jax.local_devices()
    commit = _git("rev-parse", "HEAD")
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "timestamp_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, "-m", "benchmarks", *sys.argv[1:]]),
        "backend": jax.default_backend(),
        "devices": [str(d) for d in devices],
        "device_kind": devices[0].device_kind,
        "n_local_devices": len(devices),
        "n_global_devices": jax.device_count(),
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "jax": jax.__version__,
        "jaxlib": _version("jaxlib"),
        "neural_tangents": _version("neural-tangents"),
        "flax": _version("flax"),
        "optax": _version("optax"),
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "jax_enable_x64": bool(jax.config.jax_enable_x64),
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
        "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS"),
        "git_commit": commit,
        "git_dirty": bool(dirty) if dirty is not None else None,
    }


# ------------------------------------------------------------------------------ checks


def check_results(results: Sequence[BenchmarkResult]) -> list[str]:
    """Structural problems of a run: a subject without baselines, or naming one that is
    not in its benchmark's same case. Returns the problems (empty when all is well)."""
    problems = []
    for r in results:
        if r.status != "ok":
            continue
        by_case: dict[str, set[str]] = {}
        for m in r.measurements:
            if m.role in ("baseline", "floor"):
                by_case.setdefault(m.case, set()).add(m.name)
        for m in r.measurements:
            if m.role != "subject":
                continue
            if not m.baselines:
                problems.append(f"{r.name}: subject {m.name!r} ({m.case}) names no baseline")
            for b in m.baselines:
                if b not in by_case.get(m.case, set()):
                    problems.append(
                        f"{r.name}: subject {m.name!r} ({m.case}) names baseline {b!r}, "
                        f"which was not measured in that case"
                    )
        if not r.measurements:
            problems.append(f"{r.name}: no measurements")
    return problems


# ------------------------------------------------------------------------------ output


def format_seconds(s: float | None) -> str:
    if s is None:
        return "—"
    if s < 1e-3:
        return f"{s * 1e6:.0f} µs"
    if s < 1:
        return f"{s * 1e3:.1f} ms"
    return f"{s:.2f} s"


def format_bytes(b: int | None) -> str:
    if b is None:
        return "—"
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if b >= scale:
            return f"{b / scale:.1f} {unit}"
    return f"{b} B"


def _format_extra(extra: dict[str, Any]) -> str:
    parts = []
    for k, v in extra.items():
        if isinstance(v, float):
            parts.append(f"{k}={v:.3g}")
        elif isinstance(v, (int, bool, str)) and len(str(v)) <= 40:
            parts.append(f"{k}={v}")
    return ", ".join(parts)


def _sizes_str(sizes: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in sizes.items())


def render_markdown(
    env: dict[str, Any], settings: dict[str, Any], results: Sequence[BenchmarkResult]
) -> str:
    """The Markdown report: environment, then per benchmark a table and its fits."""
    lines = [
        "# stepwise_ntk benchmarks",
        "",
        f"`{env['command']}` — {env['timestamp_utc']}, commit {str(env.get('git_commit'))[:10]}"
        f"{' (dirty)' if env.get('git_dirty') else ''}",
        "",
        f"- backend **{env['backend']}** ({env['device_kind']}, {env['n_local_devices']} local device(s), "
        f"{env['process_count']} process(es)); {env['cpu_count']} CPU cores; {env['platform']}",
        f"- jax {env['jax']}, jaxlib {env['jaxlib']}, neural-tangents {env['neural_tangents']}, "
        f"flax {env['flax']}, optax {env['optax']}, numpy {env['numpy']}, python {env['python']}",
        f"- size `{settings['size']}`, repeats ≤ {settings['repeats']} (budget {settings['budget_s']} s per "
        f"measurement), dtype {settings['dtype'] or 'default (float64 on CPU, float32 on accelerators)'}; "
        f"load average at start {_fmt_load(env.get('loadavg'))}; XLA_FLAGS=`{env.get('XLA_FLAGS', '')}`; "
        f"OPENBLAS_NUM_THREADS={env.get('OPENBLAS_NUM_THREADS') or 'unset'}",
        "",
        "Times are medians of the timed calls with compilation excluded (`compile` column); "
        "`speed-up` is baseline time / subject time, `× floor` is subject time / floor time. "
        "Peak memory: see `benchmarks/_harness.py`.",
        "",
    ]
    lines += _summary(results)
    if settings.get("pending"):
        lines += [f"**Incomplete run**: not yet run: {', '.join(settings['pending'])}.", ""]
    for r in results:
        lines += [f"## {r.name}", "", r.description, ""]
        lines.append(
            f"status **{r.status}**{': ' + r.message if r.message else ''}; wall {r.wall_s:.0f} s; "
            f"load {_fmt_load(r.loadavg_before)} → {_fmt_load(r.loadavg_after)}"
        )
        lines.append("")
        if r.measurements:
            lines += [
                "| case | name | role | median | IQR | min | n | compile | peak mem "
                "| speed-up vs baselines | × floor | notes |",
                "|---|---|---|---:|---:|---:|---:|---:|---:|---|---|---|",
            ]
            for m in r.measurements:
                ref = {
                    b.name: b
                    for b in r.measurements
                    if b.case == m.case and b.role in ("baseline", "floor")
                }
                speed, floor = [], []
                for b in m.baselines:
                    if b in ref and m.median_s > 0:
                        if ref[b].role == "baseline":
                            speed.append(f"{ref[b].median_s / m.median_s:.2f}× {b}")
                        else:
                            floor.append(f"{m.median_s / ref[b].median_s:.2f}× {b}")
                lines.append(
                    f"| {m.case} | {m.name} | {m.role} | {format_seconds(m.median_s)} "
                    f"| {format_seconds(m.iqr_s)} | {format_seconds(m.min_s)} | {m.repeats} "
                    f"| {format_seconds(m.compile_s)} | {format_bytes(m.peak_bytes)} | "
                    f"{'; '.join(speed)} | {'; '.join(floor)} | {_format_extra(m.extra)} |"
                )
            lines.append("")
        if r.fits:
            lines += [
                "| fitted | quantity | vs | exponent | expected | R² | points |",
                "|---|---|---|---:|---:|---:|---|",
            ]
            for f in r.fits:
                exp = (
                    "—"
                    if f.expected is None
                    else f"{f.expected:g} ± {f.tolerance:g}"
                    + (" ✓" if f.within_tolerance else " ✗")
                )
                pts = ", ".join(f"{x:g}" for x, _ in f.points)
                lines.append(
                    f"| {f.name} | {f.quantity} | {f.variable} | {f.exponent:.2f} | {exp} | {f.r2:.3f} | "
                    f"{pts} |"
                )
            lines.append("")
    return "\n".join(lines) + "\n"


def _summary(results: Sequence[BenchmarkResult]) -> list[str]:
    """One row per subject: its time, speed-up over each baseline, ratio to each floor."""
    rows = []
    for r in results:
        for m in r.measurements:
            if m.role != "subject":
                continue
            ref = {b.name: b for b in r.measurements if b.case == m.case and b.role != "subject"}
            speed = [
                f"{ref[b].median_s / m.median_s:.1f}× {b}"
                for b in m.baselines
                if b in ref and ref[b].role == "baseline" and m.median_s > 0
            ]
            floor = [
                f"{m.median_s / ref[b].median_s:.2f}× {b}"
                for b in m.baselines
                if b in ref and ref[b].role == "floor" and ref[b].median_s > 0
            ]
            err = m.extra.get("max_abs_err")
            acc = "" if not isinstance(err, (int, float)) else f"{err:.1e}"
            rows.append(
                f"| {r.name} | {m.case} | {m.name} | {format_seconds(m.median_s)} | "
                f"{'; '.join(speed)} | {'; '.join(floor)} | {acc} |"
            )
    if not rows:
        return []
    return [
        "## Summary",
        "",
        "| benchmark | case | subject | median | speed-up vs baselines | × floor | max abs err |",
        "|---|---|---|---:|---|---|---|",
        *rows,
        "",
    ]


def _fmt_load(load: Sequence[float] | None) -> str:
    return "—" if not load else "/".join(f"{v:.1f}" for v in load)


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_results(
    out_dir: str | os.PathLike,
    tag: str,
    env: dict[str, Any],
    settings: dict[str, Any],
    results: Sequence[BenchmarkResult],
) -> tuple[Path, Path]:
    """Write ``<out_dir>/<tag>.json`` and ``<tag>.md`` atomically; returns both paths."""
    out = Path(out_dir)
    payload = {
        "schema": SCHEMA_VERSION,
        "environment": env,
        "settings": settings,
        "problems": check_results(results),
        "benchmarks": {r.name: r.to_json() for r in results},
    }
    json_path, md_path = out / f"{tag}.json", out / f"{tag}.md"
    _atomic_write(json_path, json.dumps(_jsonable(payload), indent=1) + "\n")
    _atomic_write(md_path, render_markdown(env, settings, results))
    return json_path, md_path
