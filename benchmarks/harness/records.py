"""What a benchmark run records: measurements, fitted exponents, per-benchmark results.

A *subject* (this project's code) names the *baselines* (the tool a researcher would
otherwise use) and *floors* (a lower bound such as one ``eigh(K)``) it is compared with;
those must be measured in the same run and the same *case* (problem size), so every ratio
in the report comes from one process on one machine under one load
(:func:`check_results` reports a subject that breaks this).

Every record turns into JSON with :func:`jsonable`: numpy scalars and arrays become Python
numbers and lists, and a non-finite float becomes its string (``"nan"``, ``"inf"``), the
report format since its first version (``SCHEMA_VERSION``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "ROLES",
    "SCHEMA_VERSION",
    "SIZES",
    "BenchmarkResult",
    "Fit",
    "Measurement",
    "check_results",
    "jsonable",
]

SIZES = ("tiny", "small", "full")
ROLES = ("subject", "baseline", "floor", "experiment")
SCHEMA_VERSION = 1


def jsonable(x: Any) -> Any:
    """``x`` as JSON values: numpy/jax scalars and arrays as numbers and lists, NaN/Inf as strings."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        v = float(x)
        return v if math.isfinite(v) else str(v)
    if isinstance(x, (np.bool_,)):
        return bool(x)
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if x is None or isinstance(x, (bool, int, str)):
        return x
    if hasattr(x, "item") and callable(x.item):  # 0-d jax arrays
        return jsonable(x.item())
    return str(x)


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
      sizes: problem sizes (``{"n_views": 2000, "d": 32}``; ``n_views`` is ``2n``).
      dtype: the floating dtype of the computation.
      median_s, iqr_s, min_s, max_s: statistics of the timed calls (seconds).
      repeats: number of timed calls.
      compile_s: compilation time excluded from the above (None: not separable).
      compile_method: how ``compile_s`` was obtained.
      peak_bytes: peak memory of one call (see :mod:`benchmarks.harness.memory`), or None.
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
        return jsonable(dataclasses.asdict(self))


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
        out = jsonable(dataclasses.asdict(self))
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
