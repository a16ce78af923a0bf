"""Timing without compilation: :class:`Context`, what a benchmark is asked to do and how it times.

:meth:`Context.time`:

* ``jax.block_until_ready`` on the result, ``time.perf_counter`` around the call;
* compilation is excluded and reported on its own: either a warm-up call of the same
  function (``compile_s = first call − median``), a cheaper warm-up with the same shapes
  (``compile_s = its first call − its second call``), or ahead-of-time compilation of a
  jitted function (``compile_s`` = the time of ``.lower(...).compile()``,
  :meth:`Context.time_jitted`);
* ``repeats`` timed calls (fewer once their total passes ``budget_s``, at least one; more,
  up to 10 ×, while cheap calls total under ``min_time_s``); the report gives the median,
  the interquartile range, min and max. On a shared machine the minimum is the call least
  disturbed by other processes, so scaling exponents are fitted to it as well as to the
  median.

:meth:`Context.time_interleaved` times several calls in rounds, one call of each per round,
so that a drifting machine load hits them alike. Peak memory
(:class:`benchmarks.harness.memory.MemoryProbe`) is taken during the first timed call.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from benchmarks.harness.memory import MemoryProbe
from benchmarks.harness.records import SIZES, Measurement, jsonable
from benchmarks.harness.report import format_seconds

__all__ = ["Context", "Timing", "block", "timed"]


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


def block(x: Any) -> Any:
    """``x`` once every array in it is computed (``jax.block_until_ready``)."""
    import jax

    return jax.block_until_ready(x)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """``(seconds, output)`` of one call of ``fn``, its output blocked on."""
    t0 = time.perf_counter()
    out = block(fn())
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

    def unused_overrides(self) -> list[str]:
        """The ``overrides`` keys no benchmark has read with :meth:`param` so far, sorted."""
        return sorted(set(self.overrides) - self._used)

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
            first, _ = timed(warmup)
            second, _ = timed(warmup)
            compile_s, method = (
                max(first - second, 0.0),
                "cheaper warm-up with the same shapes: first − second call",
            )
        else:
            first_fn, out = timed(fn)
            compile_s, method = None, "first call − median"
        times, peak, kind, out = [], None, None, None
        while self._more(times, repeats):
            if not times and memory:
                with MemoryProbe() as probe:
                    t, out = timed(fn)
                peak, kind = probe.bytes, probe.kind
            else:
                t, out = timed(fn)
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
        first = {k: timed(f)[0] for k, f in fns.items()}
        times: dict[str, list[float]] = {k: [] for k in fns}
        outs, peaks, kinds = {}, {}, {}
        for i in range(repeats):
            for k, f in fns.items():
                if i == 0 and memory:
                    with MemoryProbe() as probe:
                        t, outs[k] = timed(f)
                    peaks[k], kinds[k] = probe.bytes, probe.kind
                else:
                    t, outs[k] = timed(f)
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
            extra=jsonable(extra or {}),
        )
        comp = "" if m.compile_s is None else f"  compile {format_seconds(m.compile_s)}"
        self.log(f"{case:24s} {name:34s} {format_seconds(m.median_s):>9s} (×{m.repeats}){comp}")
        return m
