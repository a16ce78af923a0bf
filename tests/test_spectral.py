"""Spectral monitoring metrics against hand-computed values and independent NumPy computations."""

import numpy as np
import pytest

from stepwise_ntk.predictor import (
    alpha_req,
    embedding_spectrum,
    learned_modes,
    participation_ratio,
    predicted_spectral_metrics,
    rankme,
    spectral_metrics,
)


def test_rankme_hand_value():
    # σ = (3, 1): p = (3/4, 1/4), H = ln 4 − (3/4) ln 3, RankMe = 4 / 3^{3/4}.
    assert rankme([9.0, 1.0], eps=0.0) == pytest.approx(4 / 3**0.75, rel=1e-14)
    # k equal singular values and the rest exactly 0: effective rank k (ε shifts it by ~1e-6).
    assert rankme([2.0, 2.0, 2.0, 0.0, 0.0], eps=0.0) == pytest.approx(3.0, rel=1e-14)
    assert rankme([2.0, 2.0, 2.0, 0.0, 0.0]) == pytest.approx(3.0, abs=1e-5)


def test_rankme_of_embeddings_matches_numpy_svd():
    F = np.random.default_rng(0).normal(size=(50, 4)) * np.array([3.0, 1.0, 0.3, 0.01])
    s = np.linalg.svd(F, compute_uv=False)
    p = s / s.sum() + 1e-7  # Garrido et al. 2023, eq. 1
    expected = np.exp(-np.sum(p * np.log(p)))
    assert rankme(embedding_spectrum(F)) == pytest.approx(expected, rel=1e-12)


def test_embedding_spectrum_is_the_second_moment_and_the_covariance():
    F = np.random.default_rng(1).normal(size=(40, 3)) + 2.0
    np.testing.assert_allclose(embedding_spectrum(F), np.linalg.eigvalsh(F.T @ F / 40)[::-1], rtol=1e-12)
    cov = np.cov(F, rowvar=False, bias=True)
    np.testing.assert_allclose(embedding_spectrum(F, center=True), np.linalg.eigvalsh(cov)[::-1], rtol=1e-10)
    # More columns than rows: the missing eigenvalues are 0.
    np.testing.assert_allclose(embedding_spectrum(np.ones((1, 3))), [3.0, 0.0, 0.0], rtol=1e-14, atol=0)


def test_alpha_req_recovers_a_power_law_and_matches_polyfit():
    k = np.arange(1, 9)
    assert alpha_req(3.0 * k**-1.5) == pytest.approx(1.5, rel=1e-12)
    lam = np.sort(np.random.default_rng(2).uniform(0.01, 1.0, 8))[::-1]
    slope = np.polyfit(np.log(k), np.log(lam), 1)[0]
    assert alpha_req(lam) == pytest.approx(-slope, rel=1e-10)
    assert alpha_req(lam, k_min=2, k_max=6) == pytest.approx(-np.polyfit(np.log(k[1:6]), np.log(lam[1:6]), 1)[0])
    # Exact zeros are left out of the fit; fewer than two positive eigenvalues: undefined.
    assert alpha_req([1.0, 0.25, 0.0]) == pytest.approx(2.0)
    assert np.isnan(alpha_req([1.0, 0.0, 0.0]))


def test_participation_ratio_and_learned_modes_hand_values():
    assert participation_ratio([3.0, 1.0]) == pytest.approx(1.6)  # (3 + 1)² / (9 + 1)
    assert participation_ratio([0.5, 0.5, 0.5, 0.0]) == pytest.approx(3.0)
    assert learned_modes([0.9, 0.51, 0.5, 0.1]) == 2  # strictly above 1/2
    assert learned_modes([0.9, 0.51, 0.5, 0.1], threshold=0.05) == 4


def test_metrics_are_batched_over_leading_axes():
    lam = np.random.default_rng(3).uniform(0.0, 1.0, (5, 2, 4))
    m = spectral_metrics(lam)
    assert m.rankme.shape == m.alpha_req.shape == m.participation_ratio.shape == m.learned_modes.shape == (5, 2)
    assert m.rankme[3, 1] == pytest.approx(rankme(lam[3, 1]))
    assert m.alpha_req[4, 0] == pytest.approx(alpha_req(lam[4, 0]))


def test_negative_round_off_counts_as_zero_and_bad_input_is_refused():
    assert rankme([1.0, -1e-18], eps=0.0) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="NaN or Inf"):
        rankme([1.0, np.nan])
    with pytest.raises(ValueError, match="k_min"):
        alpha_req([1.0, 0.5], k_min=2)


def test_predicted_metrics_follow_the_closed_form_staircase():
    """The count is the number of step times passed; RankMe is that of λ_j(t) written out by hand."""
    gammas, lam0 = np.array([1.0, 0.1, 0.01]), np.array([1e-6, 2e-6, 1e-6])
    steps = np.log(1 / lam0 - 1) / (8 * gammas)  # t_j = ln(1/λ_j(0) − 1)/(8 γ_j)
    times = np.geomspace(steps.min() / 10, steps.max() * 10, 300)
    m = predicted_spectral_metrics(gammas, lam0, times)
    np.testing.assert_array_equal(m.learned_modes, np.sum(times[:, None] > steps[None, :], axis=1))
    lam = 1 / (1 + (1 / lam0 - 1) * np.exp(-8 * gammas * times[:, None]))
    sigma = np.sqrt(lam)
    p = sigma / sigma.sum(1, keepdims=True) + 1e-7
    np.testing.assert_allclose(m.rankme, np.exp(-np.sum(p * np.log(p), axis=1)), rtol=1e-10)
    # Between well-separated steps (γ ratios of 10) the embedding has k unit eigenvalues and the
    # others below 1e-3, so RankMe is k within 0.1 (σ = √λ: the rest add ~√λ log(1/√λ) each).
    mids = np.sqrt(np.sort(steps)[:-1] * np.sort(steps)[1:])
    np.testing.assert_allclose(predicted_spectral_metrics(gammas, lam0, mids).rankme, [1.0, 2.0], atol=0.1)
