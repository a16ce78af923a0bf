"""Scaling exponents: least-squares power laws ``quantity ∝ size^exponent`` in log–log."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from benchmarks.harness.records import Fit, Measurement

__all__ = ["fit_exponent", "fits_over"]

_FIELDS = ("median_s", "min_s", "max_s", "peak_bytes")


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
