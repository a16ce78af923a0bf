"""XLA CPU flags that keep jaxlib's float64 kernels from crashing, set before JAX starts.

Two float64 crashes of jaxlib 0.10 on x86 CPUs, each avoided by one XLA flag:

* ``--xla_cpu_max_isa=AVX2`` (AVX-512 CPUs): XLA's AVX-512 convolution kernel segfaults on
  the single-channel float64 convolutions inside neural-tangents' kernels of convolutional
  networks (the analytic NTK of ``MyrtleCNN`` and ``WideResNet``). Capping code generation at
  AVX2 costs nothing measurable on the dense float64 work of this package (a 2000 × 2000
  product and ``eigh`` take the same time within noise).
* ``--xla_cpu_experimental_ynn_fusion_type=individual_dot`` (jaxlib 0.10.x): XLA's YNNPACK
  elementwise and reduction fusions segfault on large float64 operands, e.g. in the solver's
  function route at ``2n ≥ 5000`` (each of ``eltwise`` and ``reduce`` alone crashes it;
  the default set includes them). The value keeps YNNPACK for single dot products only,
  which do not crash (function route at ``2n`` = 5000 and 8000) and run a float64
  ``(2000 × 2000)·(2000 × 16)`` product in 1.1 ms against 3.5 ms in XLA's own dot kernels,
  which turning YNNPACK off altogether (the empty value) leaves.

XLA reads ``XLA_FLAGS`` once, when its CPU backend starts, so :func:`apply` runs when
``stepwise_ntk`` is imported and appends the flags that are missing (a value the user set
for the same flag is left alone). Whether a flag is in effect is known afterwards
(:func:`in_effect`): it is when it was in ``XLA_FLAGS`` before JAX's backends started. If a
program ran JAX computations before importing stepwise_ntk, the flags come too late; the
computations that would crash then refuse with a message that says so.

Whether JAX's backends have started is read from ``jax._src.xla_bridge`` (JAX has no public
query that does not start them); where that internal is missing the answer is "started",
which only makes the refusal more cautious.
"""

from __future__ import annotations

import functools
import os
import platform
import sys

__all__ = ["FLAGS", "MAX_ISA", "YNN_FUSION", "apply", "in_effect", "needed", "started_too_late"]

MAX_ISA = "--xla_cpu_max_isa"
YNN_FUSION = "--xla_cpu_experimental_ynn_fusion_type"

# flag -> value appended when the flag is needed here and not set.
FLAGS: dict[str, str] = {MAX_ISA: "AVX2", YNN_FUSION: "individual_dot"}

_STATE: dict[str, bool] = {}  # flag -> in effect (filled by apply)


@functools.cache
def _cpu_has_avx512() -> bool:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        with open("/proc/cpuinfo") as f:
            return " avx512f" in f.read()
    except OSError:
        return False


@functools.cache
def _jaxlib_version() -> str:
    try:
        import importlib.metadata

        return importlib.metadata.version("jaxlib")
    except Exception:  # noqa: BLE001 - no metadata: treat as unknown
        return ""


def needed(flag: str) -> bool:
    """Whether ``flag`` guards against a crash of this machine's jaxlib (see module docstring)."""
    if flag == MAX_ISA:
        return _cpu_has_avx512()
    if flag == YNN_FUSION:
        # The flag exists (and the crash was seen) in jaxlib 0.10; XLA aborts on unknown flags.
        return platform.machine().lower() in ("x86_64", "amd64") and _jaxlib_version().startswith("0.10.")
    raise ValueError(f"unknown flag {flag!r}; known: {', '.join(FLAGS)}.")


def _backends_started() -> bool:
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except Exception:  # noqa: BLE001 - internal moved: assume the worst
        return True


def _is_set(flag: str, flags: str) -> bool:
    return any(item == flag or item.startswith(flag + "=") for item in flags.split())


def apply() -> dict[str, bool]:
    """Append the needed, missing flags to ``XLA_FLAGS``; returns ``{flag: in effect}``.

    Idempotent: a second call reports the state of the first.
    """
    if _STATE:
        return dict(_STATE)
    started = _backends_started()
    flags = os.environ.get("XLA_FLAGS", "")
    for flag, value in FLAGS.items():
        if not needed(flag):
            _STATE[flag] = True  # nothing to guard against
            continue
        if _is_set(flag, flags):
            _STATE[flag] = True  # the user's own value; set before start or by them knowingly
            continue
        flags = f"{flags} {flag}={value}".strip()
        _STATE[flag] = not started
    os.environ["XLA_FLAGS"] = flags
    return dict(_STATE)


def in_effect(flag: str) -> bool:
    """Whether the crash ``flag`` guards against cannot happen in this process."""
    if flag not in FLAGS:
        raise ValueError(f"unknown flag {flag!r}; known: {', '.join(FLAGS)}.")
    return apply()[flag]


def started_too_late(what: str, flag: str) -> str:
    """The message for ``what`` refused because ``flag`` came after JAX's backend started."""
    return (
        f"{what} would crash jaxlib on this CPU (a float64 kernel bug that XLA flag {flag} avoids), and "
        "JAX's CPU backend started before stepwise_ntk was imported, so the flag could not be applied. "
        "Import stepwise_ntk before running any JAX computation (e.g. in the first cell of a notebook) "
        "and restart the process, or use float32."
    )
