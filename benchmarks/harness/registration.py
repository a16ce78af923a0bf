"""The benchmark registry: a benchmark is ``fn(ctx: Context) -> list[Measurement]`` with a name.

Each case module (:mod:`benchmarks.cases`) registers its benchmarks with :func:`register`
when it is imported; :func:`benchmarks.load_registry` imports them all and returns
:func:`registry`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

from benchmarks.harness.records import Fit, Measurement

if TYPE_CHECKING:
    from benchmarks.harness.timing import Context

__all__ = ["Benchmark", "SkipBenchmark", "register", "registry"]


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """A registered benchmark: ``fn(ctx) -> list[Measurement]`` plus its description."""

    name: str
    fn: Callable[[Context], list[Measurement]]
    description: str
    fits: Callable[[list[Measurement]], list[Fit]] | None = None


_REGISTRY: dict[str, Benchmark] = {}


class SkipBenchmark(Exception):
    """Raised by a benchmark that cannot run here (e.g. the width sweep without CIFAR-10)."""


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
    """The registered benchmarks by name (import the case modules first)."""
    return dict(_REGISTRY)
