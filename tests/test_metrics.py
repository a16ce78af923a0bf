"""Comparison metrics against scipy references, closed forms and exact invariances."""

import numpy as np
import pytest
import scipy.linalg
import scipy.stats

from stepwise_ntk.predictor import (
    compare_embeddings,
    eigenvalue_trajectory_error,
    principal_cosines,
    step_time_ratios,
    subspace_alignment,
)
from stepwise_ntk.theory import procrustes_error


def random_orthogonal(d, rng):
    return scipy.stats.ortho_group.rvs(d, random_state=rng)


def scipy_alignment(A, B):
    """Independent reference: scipy's principal angles (Knyazev & Argentati's algorithm)."""
    theta = scipy.linalg.subspace_angles(np.asarray(A, np.float64), np.asarray(B, np.float64))
    return float(np.mean(np.cos(theta) ** 2))


# ------------------------------------------------------------------------------ alignment


def test_alignment_is_one_for_the_same_subspace_in_other_coordinates():
    rng = np.random.default_rng(0)
    A = rng.normal(size=(60, 4))
    M = rng.normal(size=(4, 4)) + 3 * np.eye(4)  # any invertible change of coordinates
    # 1e-12: QR + SVD of well-conditioned 60x4 matrices in float64.
    assert float(subspace_alignment(A, A @ M)) == pytest.approx(1.0, abs=1e-12)
    assert float(subspace_alignment(A, -5.0 * A @ random_orthogonal(4, rng))) == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(np.asarray(principal_cosines(A, A @ M)), np.ones(4), atol=1e-12)


def test_alignment_matches_scipy_principal_angles_and_closed_forms():
    rng = np.random.default_rng(1)
    for d, e in [(3, 3), (2, 5), (5, 2)]:
        A, B = rng.normal(size=(40, d)), rng.normal(size=(40, e))
        A[:, 0] += 2 * B[:, 0]  # partly aligned, so the value is not near a trivial one
        assert float(subspace_alignment(A, B)) == pytest.approx(scipy_alignment(A, B), abs=1e-10)
    E = np.eye(6)
    assert float(subspace_alignment(E[:, :2], E[:, 2:4])) == pytest.approx(0.0, abs=1e-15)  # orthogonal
    assert float(subspace_alignment(E[:, :2], E[:, 1:3])) == pytest.approx(0.5, abs=1e-15)  # one shared axis
    # Contained subspace: every principal angle of the smaller one is 0.
    assert float(subspace_alignment(E[:, :2], E[:, :4])) == pytest.approx(1.0, abs=1e-15)
    # A 45° tilt of one of two axes: cos² = 1/2 for it, 1 for the other -> 3/4.
    B = np.stack([E[:, 0], (E[:, 1] + E[:, 2]) / np.sqrt(2)], axis=1)
    assert float(subspace_alignment(E[:, :2], B)) == pytest.approx(0.75, abs=1e-15)


@pytest.mark.parametrize("d,e", [(3, 3), (2, 6)])
def test_alignment_of_random_subspaces_averages_to_max_d_over_D(d, e):
    # E‖Q_Aᵀ Q_B‖²_F = d e / D for a uniformly random subspace, so the mean over k = min(d, e)
    # angles averages max(d, e) / D. Check the sample mean within 5 standard errors.
    rng = np.random.default_rng(2)
    D, trials = 40, 400
    A = rng.normal(size=(D, d))
    vals = np.array([float(subspace_alignment(A, rng.normal(size=(D, e)))) for _ in range(trials)])
    se = vals.std(ddof=1) / np.sqrt(trials)
    assert abs(vals.mean() - max(d, e) / D) < 5 * se
    assert vals.mean() < 0.3  # and far from aligned


def test_alignment_float32_agrees_with_float64_reference():
    rng = np.random.default_rng(3)
    A, B = rng.normal(size=(100, 3)), rng.normal(size=(100, 3))
    B[:, :2] += A[:, :2]
    ref = scipy_alignment(A, B)
    # float32 QR/SVD of a 100x3 problem: a few hundred eps32 at most.
    assert float(subspace_alignment(A.astype(np.float32), B.astype(np.float32))) == pytest.approx(ref, abs=1e-5)


def test_alignment_is_symmetric():
    rng = np.random.default_rng(4)
    A, B = rng.normal(size=(30, 3)), rng.normal(size=(30, 3))
    B += 0.5 * A
    assert float(subspace_alignment(A, B)) == pytest.approx(float(subspace_alignment(B, A)), abs=1e-13)


def test_alignment_bad_input():
    rng = np.random.default_rng(5)
    A = rng.normal(size=(20, 3))
    with pytest.raises(ValueError, match="same number of rows"):
        subspace_alignment(A, A[:10])
    with pytest.raises(ValueError, match="rank 2 < its 3 columns"):
        subspace_alignment(A, np.stack([A[:, 0], A[:, 1], A[:, 0] + A[:, 1]], axis=1))
    with pytest.raises(ValueError, match="NaN or Inf"):
        subspace_alignment(np.where(np.arange(20)[:, None] == 3, np.nan, A), A)
    with pytest.raises(ValueError, match="dtype"):
        subspace_alignment(A, A.astype(np.float32))
    with pytest.raises(ValueError, match="only 2 rows"):
        subspace_alignment(A[:2], A[:2])
    with pytest.raises(ValueError, match=r"\(m, d\)"):
        subspace_alignment(A[:, 0], A)


# ------------------------------------------------------------------------------ Procrustes


def test_procrustes_error_against_scipy_and_closed_forms():
    rng = np.random.default_rng(6)
    B = rng.normal(size=(50, 3))
    R = random_orthogonal(3, rng)
    A = B @ R.T  # a rotation of B
    assert float(procrustes_error(A, B)) == pytest.approx(0.0, abs=1e-12)
    # 3·(rotation of B): best rotation leaves 3B - B = 2B, so the unscaled error is exactly 2.
    assert float(procrustes_error(3.0 * A, B)) == pytest.approx(2.0, abs=1e-12)
    assert float(procrustes_error(3.0 * A, B, scale=True)) == pytest.approx(0.0, abs=1e-12)
    # Generic pair against scipy.linalg.orthogonal_procrustes (+ the least-squares scale).
    A = rng.normal(size=(50, 3)) + B
    R_ref, _ = scipy.linalg.orthogonal_procrustes(A, B)
    ref = np.linalg.norm(A @ R_ref - B) / np.linalg.norm(B)
    assert float(procrustes_error(A, B)) == pytest.approx(ref, rel=1e-12)
    s = np.sum((A @ R_ref) * B) / np.sum(A * A)
    ref_s = np.linalg.norm(s * A @ R_ref - B) / np.linalg.norm(B)
    assert float(procrustes_error(A, B, scale=True)) == pytest.approx(ref_s, rel=1e-12)
    assert ref_s <= ref  # the scale can only help


def test_procrustes_bad_input():
    rng = np.random.default_rng(7)
    A = rng.normal(size=(10, 3))
    with pytest.raises(ValueError, match="same \\(m, d\\) shape"):
        procrustes_error(A, A[:, :2])
    with pytest.raises(ValueError, match="all zeros"):
        procrustes_error(A, np.zeros_like(A))


def test_compare_embeddings_bundles_the_metrics():
    rng = np.random.default_rng(8)
    A = rng.normal(size=(40, 3))
    B = 0.2 * A @ random_orthogonal(3, rng) + 0.01 * rng.normal(size=(40, 3))
    c = compare_embeddings(A, B)
    assert float(c.alignment) == pytest.approx(scipy_alignment(A, B), abs=1e-12)
    assert float(c.procrustes_error) == pytest.approx(float(procrustes_error(A, B)), abs=0)
    # Different overall size (as between two losses): only the scaled error is small.
    assert float(c.scaled_procrustes_error) < 0.1 < float(c.procrustes_error)
    assert np.all(np.diff(np.asarray(c.cosines)) <= 0)


# ------------------------------------------------------------------------------ trajectories


def logistic_steps(times, step_times, width=0.3):
    """Sigmoids in log t, one per mode, crossing 1/2 at step_times, sorted descending per row."""
    lam = 1.0 / (1.0 + np.exp(-(np.log(times)[:, None] - np.log(step_times)[None, :]) / width))
    return -np.sort(-lam, axis=1)


def test_step_time_ratios_recover_an_exact_time_scaling():
    # A network whose curves are the theory's run r times slower, recorded at r × the theory's
    # times: log-time interpolation commutes with the scaling, so the ratio is r exactly.
    t = np.geomspace(1e-2, 1e3, 157)
    lam = logistic_steps(t, np.array([0.3, 4.0, 50.0]))
    r = np.array([1.0, 1.7, 0.6])
    for ri in r:
        np.testing.assert_allclose(step_time_ratios(ri * t, lam, t, lam), ri, rtol=1e-12)


def test_step_time_ratios_on_different_grids_and_never_crossing():
    t_th = np.geomspace(1e-2, 1e3, 400)
    t_net = np.concatenate([[0.0], np.geomspace(2e-2, 2e3, 90)])  # step 0 at t = 0 is ignored
    steps = np.array([0.3, 4.0, 50.0])
    net = logistic_steps(t_net[1:], 1.25 * steps)
    net = np.concatenate([np.zeros((1, 3)), net])
    ratios = step_time_ratios(t_net, net, t_th, logistic_steps(t_th, steps))
    # Linear interpolation of a log-time sigmoid between records ~0.09 decades apart: < 0.1%.
    np.testing.assert_allclose(ratios, 1.25, rtol=1e-3)
    flat = logistic_steps(t_th, steps)
    flat[:, 2] = 0.1  # the third mode never steps
    r = step_time_ratios(t_th, flat, t_th, logistic_steps(t_th, steps))
    assert np.isnan(r[2]) and np.all(np.isfinite(r[:2]))


def test_step_time_ratios_bad_input():
    t = np.geomspace(1, 10, 5)
    lam = np.full((5, 2), 0.1)
    with pytest.raises(ValueError, match="same d"):
        step_time_ratios(t, lam, t, lam[:, :1])
    with pytest.raises(ValueError, match="NaN or Inf"):
        step_time_ratios(t, np.where(lam > 0, np.nan, lam), t, lam)
    with pytest.raises(ValueError, match="strictly increasing"):
        step_time_ratios(t[::-1], lam, t, lam)
    with pytest.raises(ValueError, match="level"):
        step_time_ratios(t, lam, t, lam, level=1.0)


def test_eigenvalue_trajectory_error_closed_forms():
    t1 = np.geomspace(1e-2, 1e3, 300)
    t2 = np.geomspace(3e-3, 3e2, 211)
    steps = np.array([0.3, 4.0])
    a, b = logistic_steps(t1, steps), logistic_steps(t2, steps)
    err = eigenvalue_trajectory_error(t1, a, t2, b)
    # Same curves, different grids: only interpolation error (≪ 1e-3 at these densities).
    assert err.max_abs < 1e-3 and err.rms <= err.max_abs
    assert err.times[0] == pytest.approx(1e-2) and err.times[-1] == pytest.approx(3e2)
    # A constant offset δ: max = rms = δ exactly (interpolation of a shifted curve shifts).
    err = eigenvalue_trajectory_error(t1, a + 0.05, t1, a, n_grid=50)
    assert err.max_abs == pytest.approx(0.05, abs=1e-12)
    assert err.rms == pytest.approx(0.05, abs=1e-12)
    # Offset on one of two modes: rms = δ/√2.
    err = eigenvalue_trajectory_error(t1, a + np.array([0.0, 0.1]), t1, a)
    assert err.rms == pytest.approx(0.1 / np.sqrt(2), abs=1e-12)
    np.testing.assert_allclose(err.per_mode_max, [0.0, 0.1], atol=1e-12)


def test_eigenvalue_trajectory_error_bad_input():
    t = np.geomspace(1, 10, 5)
    lam = np.full((5, 2), 0.1)
    with pytest.raises(ValueError, match="do not overlap"):
        eigenvalue_trajectory_error(t, lam, 100 * t, lam)
    with pytest.raises(ValueError, match="n_grid"):
        eigenvalue_trajectory_error(t, lam, t, lam, n_grid=1)
    with pytest.raises(ValueError, match="at least two records"):
        eigenvalue_trajectory_error(np.array([0.0, 1.0]), lam[:2], t, lam)
