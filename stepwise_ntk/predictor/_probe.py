"""Linear probes: how much of the labels a set of embeddings carries, read by a ridge classifier.

The probe is ridge regression onto one-hot labels (the "ridge classifier"): features are
standardised with the training rows' mean and standard deviation, and

    W = argmin ‖X W − Y‖²_F + ρ ‖W‖²_F = (Xᵀ X + ρ I)⁻¹ Xᵀ Y = Xᵀ (X Xᵀ + ρ I)⁻¹ Y,

prediction ``argmax_c (x W)_c``. The ridge ``ρ = r · N`` is chosen from a log grid of ``r``
by k-fold cross-validation on the training rows, with the folds drawn by *image*: both views
of an image land in the same fold (``groups``), so a view is never scored by a probe fitted
on its twin. The chosen probe is refitted on all training rows and scored on the held-out
rows (e.g. clean test images). One eigendecomposition per fit serves every ``ρ``: of the
``k × k`` Gram matrix ``Xᵀ X``, or with more features than rows of the ``N × N`` one ``X Xᵀ``
(the dual form).

:func:`probe_curve` does this for the leading ``k`` columns, ``k = 1 … K``: the accuracy of
the top-``k`` modes against ``k``.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 2, 200); X = np.c_[y + 0.3 * rng.normal(size=200), rng.normal(size=200)]
    >>> r = linear_probe(X[:100], y[:100], X[100:], y[100:])
    >>> r.accuracy > 0.9
    True
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from stepwise_ntk._checks import check_array, check_int

__all__ = [
    "DEFAULT_RIDGES",
    "AccuracyDifference",
    "ProbeResult",
    "accuracy_difference",
    "cross_validated_accuracy",
    "linear_probe",
    "pair_groups",
    "probe_curve",
]

# r = ρ / N: from almost no regularisation to a probe that keeps only the strongest directions.
DEFAULT_RIDGES = tuple(float(r) for r in np.logspace(-6, 2, 17))


class ProbeResult(NamedTuple):
    """A fitted linear probe (:func:`linear_probe`).

    Attributes:
      accuracy: fraction of the held-out rows classified correctly.
      ridge: the chosen ``r = ρ / N``.
      cv_accuracy: ``(R,)`` mean cross-validated accuracy of each ridge in ``ridges``.
      ridges: ``(R,)`` the grid of ``r``.
      train_accuracy: accuracy on the training rows of the refitted probe.
      correct: ``(M,)`` whether each held-out row was classified correctly (its mean is
        ``accuracy``; two probes on the same rows compare by :func:`accuracy_difference`).
    """

    accuracy: float
    ridge: float
    cv_accuracy: np.ndarray
    ridges: np.ndarray
    train_accuracy: float
    correct: np.ndarray | None = None


class AccuracyDifference(NamedTuple):
    """Paired difference of two classifiers' accuracies on the same rows (:func:`accuracy_difference`).

    Attributes:
      difference: ``accuracy(b) − accuracy(a)`` (a fraction; × 100 for percentage points).
      standard_error: its cluster-robust standard error (0 when the two agree on every row).
      n_groups: independent groups (e.g. images) the error is computed over.
    """

    difference: float
    standard_error: float
    n_groups: int


def pair_groups(n_pairs: int) -> np.ndarray:
    """``(2n,)`` image index of each view in the pairing order ``[x_1 … x_n, x'_1 … x'_n]``.

    Example:
        >>> pair_groups(2).tolist()
        [0, 1, 0, 1]
    """
    n = check_int("n_pairs", n_pairs, low=1)
    return np.concatenate([np.arange(n), np.arange(n)])


def _features(name: str, X: Any, rows: int | None = None) -> np.ndarray:
    X = check_array(name, X, ndim=2, min_rows=1, dtype_kind="fiu", what="a (rows, features) matrix",
                    hint="probe finite embeddings only (a diverged run?).")
    if rows is not None and X.shape[0] != rows:
        raise ValueError(f"{name} has {X.shape[0]} rows but its labels have {rows}; pass one label per row.")
    return np.asarray(X, np.float64)


def _labels(name: str, y: Any) -> np.ndarray:
    y = check_array(name, y, ndim=1, min_rows=1, dtype_kind="iu", what="a (rows,) vector of integer class labels")
    return np.asarray(y, np.int64)


def _standardise(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    mu = train.mean(axis=0)
    sd = train.std(axis=0)
    # A constant feature carries nothing: leave it at 0 instead of dividing by 0.
    sd = np.where(sd > 1e-12 * max(float(np.max(sd, initial=0.0)), 1e-300), sd, np.inf)
    return [(a - mu) / sd for a in (train, *others)]


def _fit_predict(X: np.ndarray, y_onehot: np.ndarray, X_eval: np.ndarray, ridges: np.ndarray) -> np.ndarray:
    """Predicted classes ``(R, M)`` of the ridge probes at every ``r`` in ``ridges``."""
    Xs, Xe = _standardise(X, X_eval)
    Ym = y_onehot.mean(axis=0)
    rho = ridges[:, None] * X.shape[0]
    Yc = y_onehot - Ym
    # W = (XsᵀXs + ρI)⁻¹ Xsᵀ Yc = Xsᵀ (XsXsᵀ + ρI)⁻¹ Yc, from the eigendecomposition of the
    # smaller Gram matrix (features × features, or rows × rows: the dual form); no division by
    # a singular value, so tiny ones are harmless.
    if Xs.shape[1] <= Xs.shape[0]:
        w, V = np.linalg.eigh(Xs.T @ Xs)
        A, B = Xe @ V, V.T @ (Xs.T @ Yc)  # (M, k), (k, C)
    else:
        w, U = np.linalg.eigh(Xs @ Xs.T)
        A, B = (Xe @ Xs.T) @ U, U.T @ Yc  # (M, N), (N, C)
    shrink = 1.0 / (np.clip(w, 0.0, None)[None, :] + rho)  # (R, ·)
    scores = np.einsum("mk,rk,kc->rmc", A, shrink, B, optimize=True) + Ym
    return np.argmax(scores, axis=-1)


def _cv_accuracy(X: np.ndarray, y: np.ndarray, groups: Any, ridges: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """Mean accuracy ``(R,)`` over grouped folds of the probe at each ridge."""
    g = np.arange(y.shape[0]) if groups is None else np.asarray(groups)
    if g.shape != y.shape:
        raise ValueError(f"groups must have one entry per training row ({y.shape[0]}), got shape {g.shape}.")
    uniq, g_idx = np.unique(g, return_inverse=True)
    n_folds = check_int("n_folds", n_folds, low=2, high=max(2, uniq.size),
                        hint=f" (at most the {uniq.size} groups of training rows)")
    classes = np.unique(y)
    onehot = (y[:, None] == classes[None, :]).astype(np.float64)
    fold = (np.random.default_rng(seed).permutation(uniq.size) % n_folds)[g_idx]
    correct = np.zeros(ridges.shape[0])
    for f in range(n_folds):
        tr, va = fold != f, fold == f
        pred = classes[_fit_predict(X[tr], onehot[tr], X[va], ridges)]
        correct += np.sum(pred == y[va][None, :], axis=1)
    return correct / y.shape[0]


def _ridges(ridges: Any) -> np.ndarray:
    ridges = np.asarray(check_array("ridges", ridges, ndim=1, min_rows=1, dtype_kind="fiu"), np.float64)
    if np.any(ridges <= 0):
        raise ValueError(f"ridges must be positive (r = ρ/N), got min {float(ridges.min()):.3g}.")
    return ridges


def cross_validated_accuracy(
    features: Any, labels: Any, *, groups: Any = None, ridges: Any = DEFAULT_RIDGES, n_folds: int = 5, seed: int = 0
) -> float:
    """The best grouped-cross-validation accuracy of the ridge probe over ``ridges`` (no test set).

    For embeddings with no held-out rows of their own, e.g. the views' embeddings recorded
    along training: each fold's images are classified by a probe fitted on the other folds.

    Args:
      features: ``(N, k)``; labels: ``(N,)``; groups, ridges, n_folds, seed: as :func:`linear_probe`.

    Example:
        >>> y = np.repeat([0, 1], 20); X = y[:, None] + 0.1 * np.random.default_rng(0).normal(size=(40, 1))
        >>> cross_validated_accuracy(X, y)
        1.0
    """
    y = _labels("labels", labels)
    X = _features("features", features, y.shape[0])
    return float(np.max(_cv_accuracy(X, y, groups, _ridges(ridges), n_folds, seed)))


def linear_probe(
    train_features: Any,
    train_labels: Any,
    test_features: Any,
    test_labels: Any,
    *,
    groups: Any = None,
    ridges: Any = DEFAULT_RIDGES,
    n_folds: int = 5,
    seed: int = 0,
) -> ProbeResult:
    """Ridge-classifier probe with its ridge chosen by grouped k-fold cross-validation.

    Args:
      train_features: ``(N, k)`` features of the training rows (e.g. the views' embeddings).
      train_labels: ``(N,)`` integer class labels.
      test_features: ``(M, k)`` features of the held-out rows.
      test_labels: ``(M,)`` their labels.
      groups: ``(N,)`` group of each training row, kept within one fold (the views of one
        image: :func:`pair_groups`); None: every row its own group.
      ridges: the grid of ``r = ρ / N`` (positive).
      n_folds: cross-validation folds (≥ 2, at most the number of groups).
      seed: how the groups are dealt into folds.

    Returns:
      :class:`ProbeResult`; the largest ``r`` among those with the best CV accuracy is chosen
      (the simplest probe that does as well).
    """
    y = _labels("train_labels", train_labels)
    y_test = _labels("test_labels", test_labels)
    X = _features("train_features", train_features, y.shape[0])
    X_test = _features("test_features", test_features, y_test.shape[0])
    if X_test.shape[1] != X.shape[1]:
        raise ValueError(f"test_features has {X_test.shape[1]} columns but train_features {X.shape[1]}.")
    ridges = _ridges(ridges)
    cv = _cv_accuracy(X, y, groups, ridges, n_folds, seed)
    classes = np.unique(y)
    onehot = (y[:, None] == classes[None, :]).astype(np.float64)
    best = int(np.flatnonzero(cv >= cv.max() - 1e-12)[-1])
    chosen = ridges[best: best + 1]
    pred = classes[_fit_predict(X, onehot, np.concatenate([X_test, X]), chosen)[0]]  # one fit, both scores
    pred_test, pred_train = pred[: X_test.shape[0]], pred[X_test.shape[0]:]
    return ProbeResult(float(np.mean(pred_test == y_test)), float(chosen[0]), cv, ridges,
                       float(np.mean(pred_train == y)), pred_test == y_test)


def accuracy_difference(correct_a: Any, correct_b: Any, groups: Any = None) -> AccuracyDifference:
    """How much more accurate ``b`` is than ``a`` on the same held-out rows, with its standard error.

    With ``x_i = b_i − a_i ∈ {−1, 0, 1}`` (``a_i, b_i``: row ``i`` classified correctly), the
    difference is ``x̄ = Σ x_i / N`` and its cluster-robust variance is

        Var(x̄) = G / (G − 1) · Σ_g (Σ_{i ∈ g} (x_i − x̄))² / N²

    over the ``G`` groups (rows that are not independent, e.g. the two views of one image,
    share a group: :func:`pair_groups`). Pairing removes the rows both get right or both
    get wrong; grouping keeps two views of one image from counting as two observations.
    With one row per group this is the sample variance over ``N``.

    Args:
      correct_a, correct_b: ``(N,)`` booleans (or 0/1), e.g. :attr:`ProbeResult.correct`.
      groups: ``(N,)`` group of each row (None: every row its own group).

    Returns:
      :class:`AccuracyDifference`.

    Example:
        >>> import numpy as np
        >>> a = np.array([1, 0, 1, 1, 0, 0], bool); b = np.array([1, 1, 1, 1, 0, 1], bool)
        >>> r = accuracy_difference(a, b, groups=pair_groups(3))
        >>> round(r.difference, 4), round(r.standard_error, 4), r.n_groups
        (0.3333, 0.1667, 3)
    """
    a = _correct("correct_a", correct_a)
    b = _correct("correct_b", correct_b)
    if a.shape != b.shape:
        raise ValueError(f"correct_a has {a.shape[0]} rows but correct_b {b.shape[0]}; score both on the same rows.")
    n = a.shape[0]
    if groups is None:
        g = np.arange(n)
    else:
        g = check_array("groups", groups, ndim=1, dtype_kind="iu", what="a (rows,) vector of group indices")
        if g.shape[0] != n:
            raise ValueError(f"groups has {g.shape[0]} rows but correct_a {n}; pass one group per row.")
    x = b.astype(np.float64) - a.astype(np.float64)
    diff = float(x.mean())
    _, inverse = np.unique(g, return_inverse=True)
    sums = np.bincount(inverse, weights=x - diff)
    k = sums.shape[0]
    if k < 2:
        raise ValueError("accuracy_difference needs at least 2 groups for a standard error, got 1.")
    se = float(np.sqrt(k / (k - 1) * np.sum(sums**2)) / n)
    return AccuracyDifference(diff, se, int(k))


def _correct(name: str, v: Any) -> np.ndarray:
    v = check_array(name, v, ndim=1, min_rows=1, dtype_kind="biu", what="a (rows,) vector of booleans")
    if not np.all((v == 0) | (v == 1)):
        raise ValueError(f"{name} must hold booleans (or 0/1), one per row: whether that row was classified correctly.")
    return v.astype(bool)


def probe_curve(
    train_features: Any,
    train_labels: Any,
    test_features: Any,
    test_labels: Any,
    ks: Any = None,
    **kwargs: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """Probe accuracy of the leading ``k`` feature columns for each ``k`` in ``ks``.

    Args:
      train_features, train_labels, test_features, test_labels: as :func:`linear_probe`,
        columns ordered (e.g. the top modes, mode 1 first).
      ks: increasing numbers of leading columns (None: ``1 … k``).
      kwargs: passed to :func:`linear_probe` (``groups``, ``ridges``, ``n_folds``, ``seed``).

    Returns:
      ``(ks, accuracies)``, each ``(len(ks),)``.
    """
    X = _features("train_features", train_features)
    X_test = _features("test_features", test_features)
    ks = np.arange(1, X.shape[1] + 1) if ks is None else np.asarray(ks, np.int64)
    if ks.ndim != 1 or ks.size == 0 or ks.min() < 1 or ks.max() > X.shape[1]:
        raise ValueError(f"ks must be numbers of leading columns in 1 … {X.shape[1]}, got {ks.tolist()}.")
    acc = np.array([
        linear_probe(X[:, :k], train_labels, X_test[:, :k], test_labels, **kwargs).accuracy for k in ks
    ])
    return ks, acc
