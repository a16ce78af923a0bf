"""Linear probes: the ridge solution against a direct solve, no leak between the views of an image."""

import numpy as np
import pytest

from stepwise_ntk.predictor import (
    accuracy_difference,
    cross_validated_accuracy,
    linear_probe,
    pair_groups,
    probe_curve,
)
from stepwise_ntk.predictor._probe import _fit_predict


def _direct_ridge_predictions(X, y, X_test, rho):
    """The ridge classifier written out: standardise, solve (XᵀX + ρI) W = Xᵀ(Y − Ȳ), argmax."""
    mu, sd = X.mean(0), X.std(0)
    Xs, Xt = (X - mu) / sd, (X_test - mu) / sd
    classes = np.unique(y)
    Y = (y[:, None] == classes).astype(float)
    W = np.linalg.solve(Xs.T @ Xs + rho * np.eye(X.shape[1]), Xs.T @ (Y - Y.mean(0)))
    return classes[np.argmax(Xt @ W + Y.mean(0), axis=1)]


def test_probe_matches_the_directly_solved_ridge_classifier():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 120)
    X = rng.normal(size=(120, 5)) + 0.8 * np.eye(5)[y % 5] * 2
    X_test, y_test = X[80:] + 0.1 * rng.normal(size=(40, 5)), y[80:]
    r = 0.3
    res = linear_probe(X[:80], y[:80], X_test, y_test, ridges=[r])
    expected = np.mean(_direct_ridge_predictions(X[:80], y[:80], X_test, r * 80) == y_test)
    assert res.ridge == r and res.accuracy == pytest.approx(expected)


def test_dual_form_with_more_features_than_rows_matches_the_direct_solve():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 3, 60)
    X = rng.normal(size=(60, 150)) + np.repeat(np.eye(3)[y], 50, axis=1) * 0.5  # 150 features, 40 training rows
    for r in (1e-4, 0.1, 10.0):
        res = linear_probe(X[:40], y[:40], X[40:], y[40:], ridges=[r])
        direct = _direct_ridge_predictions(X[:40], y[:40], X[40:], r * 40)
        assert res.accuracy == pytest.approx(np.mean(direct == y[40:]))
        onehot = (y[:40, None] == np.arange(3)).astype(float)
        np.testing.assert_array_equal(_fit_predict(X[:40], onehot, X[40:], np.array([r]))[0], direct)


def test_probe_separates_separable_classes_and_is_at_chance_on_noise():
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(4), 100)
    informative = np.eye(4)[y] * 3 + 0.3 * rng.normal(size=(400, 4))
    idx = rng.permutation(400)
    tr, te = idx[:300], idx[300:]
    assert linear_probe(informative[tr], y[tr], informative[te], y[te]).accuracy == 1.0
    noise = rng.normal(size=(400, 4))
    acc = linear_probe(noise[tr], y[tr], noise[te], y[te]).accuracy
    assert abs(acc - 0.25) < 0.15  # 100 test rows: the binomial std at chance is 0.043


def test_cross_validation_keeps_both_views_of_an_image_in_one_fold():
    """Features that identify the image (one-hot) and random labels: only a leak can predict them."""
    n = 60
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, n)
    X = np.concatenate([np.eye(n), np.eye(n)])  # view i and view n + i are the same image
    y = np.concatenate([labels, labels])
    leaky = linear_probe(X, y, X[:2], y[:2], ridges=[1e-6], n_folds=5, groups=None)
    grouped = linear_probe(X, y, X[:2], y[:2], ridges=[1e-6], n_folds=5, groups=pair_groups(n))
    # Ungrouped, a view's twin is in the training folds unless both fell into the same fold
    # (probability 1/5), so about 0.8 + 0.2 × chance ≈ 0.9 of the views are classified right.
    assert leaky.cv_accuracy[0] > 0.85
    # Grouped: a held-out image's feature is 0 on every training row, so the probe can only
    # guess the majority class of the training folds.
    assert grouped.cv_accuracy[0] < 0.75


def test_probe_curve_finds_the_informative_column():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    X = rng.normal(size=(300, 4))
    X[:, 2] += 4 * y  # only the third column carries the labels
    ks, acc = probe_curve(X[:200], y[:200], X[200:], y[200:])
    assert ks.tolist() == [1, 2, 3, 4]
    assert max(acc[:2]) < 0.7 and min(acc[2:]) > 0.95


def test_probe_refuses_mismatched_rows():
    with pytest.raises(ValueError, match="rows"):
        linear_probe(np.ones((4, 2)), np.array([0, 1, 0]), np.ones((2, 2)), np.array([0, 1]))
    with pytest.raises(ValueError, match="columns"):
        linear_probe(np.ones((4, 2)), np.array([0, 1, 0, 1]), np.ones((2, 3)), np.array([0, 1]))


def test_cross_validated_accuracy_is_the_best_cv_accuracy_of_the_probe():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 3, 90)
    X = np.eye(3)[y] + 0.8 * rng.normal(size=(90, 3))
    groups = np.arange(90) // 2
    res = linear_probe(X, y, X[:3], y[:3], groups=groups, seed=1)
    assert cross_validated_accuracy(X, y, groups=groups, seed=1) == pytest.approx(res.cv_accuracy.max())


def test_probe_reports_which_rows_it_got_right():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 3, 120)
    X = np.eye(3)[y] + 0.9 * rng.normal(size=(120, 3))
    res = linear_probe(X[:80], y[:80], X[80:], y[80:])
    pred = _direct_ridge_predictions(X[:80], y[:80], X[80:], res.ridge * 80)
    np.testing.assert_array_equal(res.correct, pred == y[80:])
    assert res.accuracy == pytest.approx(res.correct.mean())


def test_accuracy_difference_against_the_sample_variance_and_under_duplication():
    rng = np.random.default_rng(6)
    a, b = rng.random(400) < 0.3, rng.random(400) < 0.35
    r = accuracy_difference(a, b)
    x = b.astype(float) - a.astype(float)
    # One row per group: the sample mean and its textbook standard error.
    assert r.difference == pytest.approx(x.mean())
    assert r.standard_error == pytest.approx(x.std(ddof=1) / np.sqrt(400), rel=1e-12)
    assert r.n_groups == 400
    # Every row twice (two identical views of each image): grouped by image the standard
    # error is the same as without the copies; treated as independent it would shrink by √2.
    groups = pair_groups(400)
    a2, b2 = np.concatenate([a, a]), np.concatenate([b, b])
    r2 = accuracy_difference(a2, b2, groups=groups)
    assert r2.difference == pytest.approx(r.difference)
    assert r2.standard_error == pytest.approx(r.standard_error, rel=1e-12)
    naive = accuracy_difference(a2, b2)
    assert naive.standard_error < r2.standard_error / 1.3
    # Agreement on every row: no difference and no error.
    same = accuracy_difference(a, a)
    assert same.difference == 0.0 and same.standard_error == 0.0


def test_accuracy_difference_refuses_bad_input():
    with pytest.raises(ValueError, match="same rows"):
        accuracy_difference(np.ones(4, bool), np.ones(5, bool))
    with pytest.raises(ValueError, match="one group per row"):
        accuracy_difference(np.ones(4, bool), np.ones(4, bool), groups=np.arange(3))
    with pytest.raises(ValueError, match="booleans"):
        accuracy_difference(np.array([0, 2, 1]), np.ones(3, bool))
    with pytest.raises(ValueError, match="at least 2 groups"):
        accuracy_difference(np.ones(4, bool), np.ones(4, bool), groups=np.zeros(4, int))
