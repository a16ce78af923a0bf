"""Label-free spectral metrics of embeddings, and the kernel theory's prediction of them.

SSL practitioners monitor training with the spectrum of the embeddings alone; each metric
here takes the eigenvalues ``λ_1 ≥ … ≥ λ_d ≥ 0`` of a ``d × d`` second-moment matrix of the
embeddings (any leading batch axes, e.g. ``(T, d)`` records along training):

* :func:`rankme`: the effective rank ``exp(H(p))`` of the singular values ``σ_k = √λ_k``
  (Garrido et al. 2023);
* :func:`alpha_req`: the power-law exponent ``α`` of ``λ_k ∝ k^{−α}`` (Agrawal et al. 2022);
* :func:`participation_ratio`: ``(Σ λ_k)² / Σ λ_k²``;
* :func:`learned_modes`: how many ``λ_k`` exceed a threshold (1/2 for the eigenvalues of the
  Barlow Twins cross-correlation ``C``: a mode counts once its step has happened).

:func:`embedding_spectrum` gives the eigenvalues of ``Fᵀ F / m`` (or of the covariance) from
embeddings ``F``; the eigenvalues of ``C = Fᵀ Z F/(2n)`` that training records and
:class:`~stepwise_ntk.solver.Trajectory` hold can be passed as they are (negative round-off
is clipped to 0). :func:`predicted_spectral_metrics` evaluates the metrics on the
closed-form staircase ``λ_j(t)`` (:func:`stepwise_ntk.theory.aligned_eigenvalues`), so a
network's RankMe can be read against the steps the theory predicts: in the kernel picture
RankMe rises by about one at each step, the participation ratio too, and α-ReQ falls.

Example:
    >>> import numpy as np
    >>> lam = np.array([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])   # after two steps, after three
    >>> np.round(rankme(lam), 4).tolist(), participation_ratio(lam).tolist(), learned_modes(lam).tolist()
    ([2.0, 3.0], [2.0, 3.0], [2, 3])
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from stepwise_ntk._checks import check_array, check_number
from stepwise_ntk.theory import aligned_eigenvalues

__all__ = [
    "SpectralMetrics",
    "alpha_req",
    "embedding_spectrum",
    "learned_modes",
    "participation_ratio",
    "predicted_spectral_metrics",
    "rankme",
    "spectral_metrics",
]

# Garrido et al.'s ε: it keeps log p finite for exactly zero singular values.
RANKME_EPS = 1e-7


def _spectrum(eigenvalues: Any) -> np.ndarray:
    lam = check_array("eigenvalues", eigenvalues, min_ndim=1, dtype_kind="fiu",
                      what="an array of eigenvalues (..., d)", hint="pass the eigenvalues of finite embeddings.")
    lam = np.asarray(lam, np.float64)
    if lam.shape[-1] < 1:
        raise ValueError(f"eigenvalues must have at least one eigenvalue on the last axis, got shape {lam.shape}.")
    # C = FᵀZF/(2n) can have tiny negative eigenvalues (round-off, or views that disagree):
    # they carry no variance, so they count as 0.
    return np.sort(np.clip(lam, 0.0, None), axis=-1)[..., ::-1]


def embedding_spectrum(F: Any, *, center: bool = False) -> np.ndarray:
    """Eigenvalues of ``Fᵀ F / m`` (or of the covariance), descending, ``(..., d)``.

    ``σ_k(F)² / m``: the squared singular values of the embedding matrix over the number of
    rows. Uncentred by default, like ``C`` itself (the losses do not centre); ``center=True``
    subtracts the mean embedding first (the covariance α-ReQ is defined on).

    Args:
      F: ``(..., m, d)`` embeddings of ``m`` inputs (rows), e.g. ``(R, 2n, d)`` records.
      center: subtract the column means.

    Example:
        >>> import numpy as np
        >>> F = np.array([[3.0, 0.0], [0.0, 1.0]])
        >>> embedding_spectrum(F).tolist()
        [4.5, 0.5]
    """
    F = check_array("F", F, min_ndim=2, dtype_kind="fiu", what="embeddings (..., m, d)",
                    hint="pass finite embeddings (a diverged run?).")
    F = np.asarray(F, np.float64)
    if F.shape[-2] < 1 or F.shape[-1] < 1:
        raise ValueError(f"F must have at least one row and one column, got shape {F.shape}.")
    if center:
        F = F - F.mean(axis=-2, keepdims=True)
    s = np.linalg.svd(F, compute_uv=False)  # descending
    d = F.shape[-1]
    lam = np.zeros(F.shape[:-2] + (d,))
    lam[..., : s.shape[-1]] = np.square(s) / F.shape[-2]
    return lam


def rankme(eigenvalues: Any, *, eps: float = RANKME_EPS) -> np.ndarray:
    """RankMe, the effective rank of the embeddings: ``exp(−Σ_k p_k log p_k)``, ``(...)``.

    ``p_k = σ_k / Σ_i σ_i + ε`` with ``σ_k = √λ_k`` the singular values of the embedding
    matrix (for ``λ`` the eigenvalues of ``Fᵀ F / m``, ``σ_k(F) = √(m λ_k)``: the ``√m``
    cancels in ``p``). Between 1 (one direction) and ``d`` (all singular values equal).

    Reference: Q. Garrido, R. Balestriero, L. Najman, Y. LeCun, "RankMe: Assessing the
    downstream performance of pretrained self-supervised representations by their rank",
    ICML 2023 (their eq. 1, ``ε = 1e-7``).

    Args:
      eigenvalues: ``(..., d)`` eigenvalues ``≥ 0`` (negative round-off is clipped).
      eps: Garrido et al.'s ``ε``.

    Returns:
      ``(...)``; all-zero spectra give ``NaN`` (no embedding to measure).

    Example:
        >>> float(np.round(rankme([9.0, 1.0]), 4))   # σ = (3, 1): p = (3/4, 1/4)
        1.7548
    """
    lam = _spectrum(eigenvalues)
    eps = check_number("eps", eps, low=0.0, hint=" (Garrido et al. use 1e-7)")
    sigma = np.sqrt(lam)
    total = sigma.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = sigma / total + eps
        h = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1)  # 0 log 0 = 0
    return np.where(total[..., 0] > 0, np.exp(h), np.nan)


def alpha_req(eigenvalues: Any, *, k_min: int = 1, k_max: int | None = None) -> np.ndarray:
    """α-ReQ: the exponent ``α`` of a power-law eigenspectrum ``λ_k ∝ k^{−α}``, ``(...)``.

    The least-squares slope of ``log λ_k`` against ``log k`` over ``k_min ≤ k ≤ k_max``
    (eigenvalues sorted descending), negated. Small ``α``: a flat spectrum (many equally
    used directions); large ``α``: a few dominant directions. Eigenvalues that are exactly 0
    have no logarithm and are left out of the fit (``NaN`` with fewer than two left).

    Reference: K. K. Agrawal, A. K. Mondal, A. Ghosh, B. A. Richards, "α-ReQ: Assessing
    representation quality in self-supervised learning by measuring eigenspectrum decay",
    NeurIPS 2022 (defined there on the covariance of the representations:
    :func:`embedding_spectrum` with ``center=True``).

    Args:
      eigenvalues: ``(..., d)`` eigenvalues ``≥ 0``.
      k_min, k_max: the range of ranks fitted (1-based; ``k_max`` None: ``d``).

    Example:
        >>> float(np.round(alpha_req([1.0, 1 / 4, 1 / 9, 1 / 16]), 6))   # λ_k = k^{-2}
        2.0
    """
    lam = _spectrum(eigenvalues)
    d = lam.shape[-1]
    k_max = d if k_max is None else k_max
    if not (isinstance(k_min, int) and isinstance(k_max, int)) or not 1 <= k_min < k_max <= d:
        raise ValueError(f"need integers 1 ≤ k_min < k_max ≤ d = {d}, got k_min={k_min!r}, k_max={k_max!r}.")
    x = np.log(np.arange(k_min, k_max + 1, dtype=np.float64))
    y = lam[..., k_min - 1: k_max]
    ok = y > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        logy = np.where(ok, np.log(np.where(ok, y, 1.0)), 0.0)
        w = ok.astype(np.float64)
        count = w.sum(axis=-1)
        mx = (w * x).sum(axis=-1) / count
        my = (w * logy).sum(axis=-1) / count
        dx = (x - mx[..., None]) * w
        slope = (dx * (logy - my[..., None])).sum(axis=-1) / (dx * dx).sum(axis=-1)
    return np.where(count >= 2, -slope, np.nan)


def participation_ratio(eigenvalues: Any) -> np.ndarray:
    """Participation ratio ``(Σ_k λ_k)² / Σ_k λ_k²``, ``(...)``: between 1 and ``d``.

    The number of directions that carry the variance, weighted by their share (``k`` equal
    eigenvalues and the rest 0 give exactly ``k``). Reference: P. Gao, E. Trautmann, B. Yu
    et al., "A theory of multineuronal dimensionality, dynamics and measurement", bioRxiv
    2017 (their eq. 3); the inverse participation ratio of physics.

    Example:
        >>> float(participation_ratio([3.0, 1.0]))      # 16 / 10
        1.6
    """
    lam = _spectrum(eigenvalues)
    s1, s2 = lam.sum(axis=-1), np.square(lam).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(s2 > 0, np.square(s1) / np.where(s2 > 0, s2, 1.0), np.nan)


def learned_modes(eigenvalues: Any, *, threshold: float = 0.5) -> np.ndarray:
    """How many eigenvalues exceed ``threshold``, ``(...)`` integers.

    On the eigenvalues of the Barlow Twins cross-correlation ``C`` (targets 1) the default
    1/2 counts the modes whose step has happened (the step time is when ``λ_j`` crosses
    1/2; Simon et al., "On the stepwise nature of self-supervised learning", ICML 2023):
    along a staircase it is the number of the current plateau. For other losses or the
    eigenvalues of ``Fᵀ F / m`` pick a threshold on their scale.

    Example:
        >>> learned_modes([[0.9, 0.6, 0.1], [1.0, 0.99, 0.49]]).tolist()
        [2, 2]
    """
    lam = _spectrum(eigenvalues)
    threshold = check_number("threshold", threshold, low=0.0, hint=" (1/2 for the eigenvalues of C)")
    return np.sum(lam > threshold, axis=-1)


class SpectralMetrics(NamedTuple):
    """The four metrics of one spectrum or of a batch of them (each ``(...)``).

    Attributes:
      rankme: :func:`rankme`.
      alpha_req: :func:`alpha_req` over all ``d`` eigenvalues (``NaN`` for ``d = 1``).
      participation_ratio: :func:`participation_ratio`.
      learned_modes: :func:`learned_modes`.
    """

    rankme: np.ndarray
    alpha_req: np.ndarray
    participation_ratio: np.ndarray
    learned_modes: np.ndarray

    def to_dict(self) -> dict[str, np.ndarray]:
        return self._asdict()


def spectral_metrics(eigenvalues: Any, *, threshold: float = 0.5) -> SpectralMetrics:
    """All four metrics of ``eigenvalues`` ``(..., d)`` (see each function).

    Example:
        >>> m = spectral_metrics([[1.0, 0.0], [1.0, 1.0]])
        >>> np.round(m.rankme, 3).tolist(), m.learned_modes.tolist()
        ([1.0, 2.0], [1, 2])
    """
    lam = _spectrum(eigenvalues)
    alpha = alpha_req(lam) if lam.shape[-1] >= 2 else np.full(lam.shape[:-1], np.nan)
    return SpectralMetrics(rankme(lam), alpha, participation_ratio(lam), learned_modes(lam, threshold=threshold))


def predicted_spectral_metrics(gammas: Any, lambda0: Any, times: Any, *, threshold: float = 0.5) -> SpectralMetrics:
    """The metrics of the closed-form staircase ``λ_j(t)`` at ``times``, each ``(T,)``.

    ``λ_j(t) = 1 / (1 + (1/λ_j(0) − 1) e^{−8 γ_j t})`` (the aligned solution,
    :func:`stepwise_ntk.theory.aligned_eigenvalues`): once the embedding is aligned with the
    modes, ``Fᵀ F/(2n)`` and ``C`` share these eigenvalues (the views of a pair agree), so the
    same curve predicts RankMe of the embeddings and of ``C``.

    Args:
      gammas: ``(d,)`` contrastive eigenvalues of the top ``d`` modes.
      lambda0: ``(d,)`` initial eigenvalues (:func:`stepwise_ntk.theory.initial_eigenvalues`).
      times: ``(T,)`` times.

    Example:
        >>> m = predicted_spectral_metrics(np.array([1.0, 0.5]), np.array([1e-6, 1e-6]), np.array([0.0, 3.0, 30.0]))
        >>> m.learned_modes.tolist()
        [0, 1, 2]
    """
    lam = np.asarray(aligned_eigenvalues(np.asarray(gammas, np.float64), np.asarray(lambda0, np.float64),
                                         np.asarray(times, np.float64)))
    return spectral_metrics(lam, threshold=threshold)
