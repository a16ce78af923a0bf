"""Peak memory of one call, on the host or on the device.

Taken during the first timed call of a measurement (never the warm-up, whose compiler
memory would dominate):

* CPU: the process's peak resident set size above its value before the call, sampled
  every millisecond from ``/proc/self/statm`` (Linux); glibc's ``mmap`` threshold is
  fixed at 1 MiB (:func:`pin_malloc_mmap_threshold`) so freed large buffers go back to the
  OS and each call's own working set shows. Elsewhere ``ru_maxrss`` growth (a lower bound).
* GPU/TPU: ``device.memory_stats()['peak_bytes_in_use']`` minus the bytes in use before
  the call, when the call raised the device's peak (sizes run in increasing order, so the
  scaling benchmarks always do); otherwise not reported.
"""

from __future__ import annotations

import os
import resource
import sys
import threading

__all__ = ["MemoryProbe", "RssSampler", "pin_malloc_mmap_threshold", "rss_bytes"]


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


def rss_bytes() -> int | None:
    """The process's resident set size now (Linux ``/proc/self/statm``), or None elsewhere."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class RssSampler:
    """Peak RSS above the value at start, sampled every ``interval`` seconds in a thread."""

    def __init__(self, interval: float = 1e-3):
        self.interval = interval
        self.start_rss = rss_bytes()
        self.peak = self.start_rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            r = rss_bytes()
            if r is not None and (self.peak is None or r > self.peak):
                self.peak = r
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        r = rss_bytes()
        if r is not None and (self.peak is None or r > self.peak):
            self.peak = r

    @property
    def extra_bytes(self) -> int | None:
        if self.start_rss is None or self.peak is None:
            return None
        return max(self.peak - self.start_rss, 0)


class MemoryProbe:
    """Context manager measuring one call's peak memory (see the module docstring).

    After the block, ``bytes`` holds the peak (or None where it is not separable) and
    ``kind`` what it measures.
    """

    def __init__(self):
        import jax

        self.device = jax.local_devices()[0]
        self.kind = None
        self.bytes = None

    def __enter__(self):
        if self.device.platform == "cpu":
            if rss_bytes() is not None:
                self._sampler = RssSampler().__enter__()
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
