"""What a mode encodes: its correlation with interpretable image statistics and with the classes.

For mode values ``g_j(x)`` on clean images (:func:`stepwise_ntk.theory.mode_functions_new`)
and per-image statistics (:func:`stepwise_ntk.data.image_statistics`):

* a linear statistic ``s``: the Pearson correlation ``r = corr(g_j, s)``; its strength is
  ``|r|`` (a mode's sign is arbitrary);
* a circular statistic ``θ`` (the mean hue): the circular–linear correlation of Mardia
  (1976), ``R² = (r_c² + r_s² − 2 r_c r_s r_cs) / (1 − r_cs²)`` with ``r_c = corr(g, cos θ)``,
  ``r_s = corr(g, sin θ)``, ``r_cs = corr(cos θ, sin θ)``: the multiple correlation of ``g``
  with ``(cos θ, sin θ)``, in ``[0, 1]`` and unchanged by a rotation of the angle (a Pearson
  ``r`` with the raw angle would depend on where the circle is cut);
* the class labels: the correlation ratio ``η² = Σ_c n_c (ḡ_c − ḡ)² / Σ_i (g_i − ḡ)²``, the
  fraction of the mode's variance explained by the class.

The strengths are comparable: each is a (multiple) correlation coefficient. For ``P``
unrelated images the chance level is about ``1/√P`` (``√(2/P)`` for the circular one).

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> theta = rng.uniform(-np.pi, np.pi, 500)
    >>> g = np.cos(theta - 1.0)                          # a mode that follows the hue
    >>> round(float(circular_linear_correlation(g, theta)), 6)
    1.0
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from stepwise_ntk._checks import check_array

__all__ = [
    "ModeStatistics",
    "circular_linear_correlation",
    "correlation_ratio",
    "mode_statistics",
]


def _vector(name: str, x: Any, rows: int | None = None) -> np.ndarray:
    x = np.asarray(check_array(name, x, ndim=1, min_rows=2, dtype_kind="fiu", what="a (P,) vector"), np.float64)
    if rows is not None and x.shape[0] != rows:
        raise ValueError(f"{name} has {x.shape[0]} entries but the mode values have {rows} rows; pass one per image.")
    return x


def _corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of the columns of ``a (P, k)`` with the vector ``b (P,)``; 0 if either is constant."""
    a = a - a.mean(axis=0)
    b = b - b.mean()
    den = np.sqrt(np.sum(a * a, axis=0) * np.sum(b * b))
    return np.where(den > 0, (a.T @ b) / np.where(den > 0, den, 1.0), 0.0)


def circular_linear_correlation(x: Any, theta: Any) -> np.ndarray:
    """Mardia's circular–linear correlation ``R ∈ [0, 1]`` of ``x`` with the angle ``theta``.

    Args:
      x: ``(P,)`` or ``(P, k)`` linear values (e.g. mode values on ``P`` images).
      theta: ``(P,)`` angles in radians.

    Returns:
      scalar, or ``(k,)`` for ``x`` of shape ``(P, k)``.
    """
    X = np.asarray(check_array("x", x, min_ndim=1, dtype_kind="fiu"), np.float64)
    squeeze = X.ndim == 1
    X = X[:, None] if squeeze else X
    theta = _vector("theta", theta, X.shape[0])
    rc, rs = _corr(X, np.cos(theta)), _corr(X, np.sin(theta))
    rcs = float(_corr(np.cos(theta)[:, None], np.sin(theta))[0])
    r2 = (rc**2 + rs**2 - 2 * rc * rs * rcs) / max(1.0 - rcs**2, 1e-12)
    R = np.sqrt(np.clip(r2, 0.0, 1.0))
    return R[0] if squeeze else R


def correlation_ratio(x: Any, labels: Any) -> np.ndarray:
    """The correlation ratio ``η²`` of ``x`` with the classes ``labels`` (between-class / total variance).

    Args:
      x: ``(P,)`` or ``(P, k)`` values.
      labels: ``(P,)`` integer classes.

    Example:
        >>> float(correlation_ratio(np.array([0.0, 0.0, 1.0, 1.0]), np.array([0, 0, 1, 1])))
        1.0
    """
    X = np.asarray(check_array("x", x, min_ndim=1, dtype_kind="fiu"), np.float64)
    squeeze = X.ndim == 1
    X = X[:, None] if squeeze else X
    y = np.asarray(check_array("labels", labels, ndim=1, dtype_kind="iu"))
    if y.shape[0] != X.shape[0]:
        raise ValueError(f"labels has {y.shape[0]} entries but x has {X.shape[0]} rows.")
    mean = X.mean(axis=0)
    total = np.sum(np.square(X - mean), axis=0)
    between = np.zeros(X.shape[1])
    for c in np.unique(y):
        sel = y == c
        between += sel.sum() * np.square(X[sel].mean(axis=0) - mean)
    eta2 = np.where(total > 0, between / np.where(total > 0, total, 1.0), 0.0)
    return eta2[0] if squeeze else eta2


class ModeStatistics(NamedTuple):
    """Per-mode correlations with image statistics (:func:`mode_statistics`); ``k`` modes, ``S`` statistics.

    Attributes:
      names: the ``S`` statistic names (columns).
      strength: ``(k, S)`` ``|r|`` (linear) or Mardia's ``R`` (circular).
      correlation: ``(k, S)`` signed Pearson ``r`` (NaN for circular statistics).
      strongest: ``k`` names, the statistic with the largest strength for each mode.
      eta2: ``(k,)`` class correlation ratio ``η²`` (NaN without labels).
    """

    names: tuple[str, ...]
    strength: np.ndarray
    correlation: np.ndarray
    strongest: tuple[str, ...]
    eta2: np.ndarray

    def table(self) -> list[dict[str, Any]]:
        """One JSON-ready row per mode: the strongest statistic, its strength, ``η²``, all strengths."""
        rows = []
        for j in range(self.strength.shape[0]):
            s = int(np.argmax(self.strength[j]))
            rows.append({
                "mode": j + 1,
                "strongest": self.names[s],
                "strength": float(self.strength[j, s]),
                "correlation": None if np.isnan(self.correlation[j, s]) else float(self.correlation[j, s]),
                "class_eta2": None if np.isnan(self.eta2[j]) else float(self.eta2[j]),
                "strengths": {n: float(v) for n, v in zip(self.names, self.strength[j], strict=True)},
            })
        return rows


def mode_statistics(
    mode_values: Any,
    statistics: Mapping[str, Any],
    *,
    circular: Any = ("hue",),
    labels: Any = None,
) -> ModeStatistics:
    """Correlate each mode with each image statistic (and the classes); see the module docstring.

    Args:
      mode_values: ``(P, k)`` values of ``k`` modes on ``P`` clean images.
      statistics: name -> ``(P,)`` values on the same images
        (:func:`stepwise_ntk.data.image_statistics`).
      circular: names of the statistics that are angles (radians).
      labels: ``(P,)`` integer classes, or None.

    Returns:
      :class:`ModeStatistics`.
    """
    G = np.asarray(check_array("mode_values", mode_values, ndim=2, min_rows=2, dtype_kind="fiu",
                               what="a (P, k) matrix of mode values"), np.float64)
    if not statistics:
        raise ValueError("statistics is empty; pass e.g. stepwise_ntk.data.image_statistics(images).")
    names = tuple(statistics)
    circular = set(circular)
    strength = np.zeros((G.shape[1], len(names)))
    corr = np.full((G.shape[1], len(names)), np.nan)
    for i, name in enumerate(names):
        v = _vector(f"statistics[{name!r}]", statistics[name], G.shape[0])
        if name in circular:
            strength[:, i] = circular_linear_correlation(G, v)
        else:
            corr[:, i] = _corr(G, v)
            strength[:, i] = np.abs(corr[:, i])
    eta2 = np.full(G.shape[1], np.nan) if labels is None else np.asarray(correlation_ratio(G, labels))
    strongest = tuple(names[int(i)] for i in np.argmax(strength, axis=1))
    return ModeStatistics(names, strength, corr, strongest, eta2)
