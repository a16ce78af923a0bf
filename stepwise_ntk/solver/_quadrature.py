"""The modes the eigen route does not integrate one by one, as a block Gauss quadrature.

Every mode of the eigen route evolves as ``m_j(t) = Φ(γ_j, t) m_j(0)`` with
``dΦ/dt = 4γ (I − C(t)) Φ``, ``Φ(γ, 0) = I``: one ``d × d`` function of ``γ`` for all modes,
entire in ``γ``, ``Φ = Σ_p γ^p A_p(t)`` with ``dA_p/dt = 4 (I − C) A_{p−1}``, so
``‖A_p(t)‖₂ ≤ (4E)^p / p!`` for ``E = ∫_0^t ‖I − C‖₂``. A set of tail modes ``(γ_j, m_j)``
contributes ``Σ_j γ_j Φ(γ_j) m_j m_jᵀ Φ(γ_j)ᵀ = Σ_{p,p'} A_p Y0ᵀ G^{1+p+p'} Y0 A_{p'}ᵀ`` to
``C`` (``G = diag(γ_tail)``, ``Y0`` the rows ``m_j(0)ᵀ``): it sees the tail only through the
moments ``Y0ᵀ G^s Y0``.

``q`` steps of block Lanczos on ``G`` from ``Y0`` give an orthonormal basis ``V`` of
``span{Y0, G Y0, …, G^{q−1} Y0}`` and ``T = Vᵀ G V = S diag(θ) Sᵀ``; the ``q d`` pseudo-modes
``(θ_i, m̃_i)``, ``m̃_i`` the rows of ``(V S)ᵀ Y0``, match those moments for ``s ≤ 2q − 1``
(block Gauss quadrature; Golub & Meurant, *Matrices, Moments and Quadrature*, 2010) and
evolve by the same flow, so integrated as modes they carry the tail's motion. Their
eigenvectors are ``P_tail V S``: the tail's embeddings are the Galerkin solution on that
block Krylov space, exact in the first ``q`` terms of ``Φ``.

*Bounds* (``w = ‖m‖²``, ``R_m(y) = Σ_{s≥m} y^s / s!``, ``E`` of the computed flow): the
tail's contribution to ``C`` is off by at most
``Σ_tail |γ| w R_{2q−1}(8E|γ|) + Σ_pseudo |θ| w̃ R_{2q−1}(8E|θ|)`` (the terms of degree
``1 + p + p' ≥ 2q``; ``Σ_{p+p'=u} 1/(p! p'!) = 2^u/u!``), and its embeddings ``L P Y`` by
``‖L‖₂ Σ_{p≥q} (4E)^p/p! (‖G^p Y0‖_F + ‖T^p (VS)ᵀY0‖_F)``. Without pseudo-modes (the tail
held at ``m_j(0)``) the first bound is ``Σ |γ| w R_1(8E|γ|) = Σ |γ| w ρ(2 + ρ)``,
``ρ = e^{4E|γ|} − 1``: the truncation bound. As for the truncation, the feedback of the
tail's error on the integrated modes through ``C`` is of the same order and not part of
the bound.

*Modes not computed* (a partial eigensystem): all have ``|γ| ≤ g`` and are known only
through the moments ``S_k = Σ |γ|^{2k} w`` (``k ≤ q − 1`` exactly, from the ``q``-block
quadrature itself). Since ``s + 1 ≥ 2k`` in every term of ``|γ| R_{2q−1}(8E|γ|)``,
``|γ|^{s+1} ≤ g^{s+1−2k} |γ|^{2k}`` bounds their share of the first bound by
``min_k g^{1−2k} R_{2q−1}(8Eg) S_k`` and of the second by ``min_k g^{−k} √S_k R_q(4Eg)``.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import gammainc, gammaln, logsumexp

__all__ = [
    "block_gauss_quadrature",
    "log_moments",
    "moment_embedding_bound",
    "moment_terms_bound",
    "quadrature_embedding_bound",
    "quadrature_terms",
    "series_remainder",
]


def series_remainder(m: int, y: np.ndarray) -> np.ndarray:
    """``R_m(y) = Σ_{s≥m} y^s / s! = e^y P(m, y)`` for ``y ≥ 0`` (``P`` the regularised lower
    incomplete gamma function; ``R_0 = e^y``); ``inf`` where it overflows.

    Example:
        >>> round(float(series_remainder(1, np.asarray(1.0))), 12) == round(math.e - 1.0, 12)
        True
    """
    y = np.asarray(y, dtype=np.float64)
    if m <= 0:
        with np.errstate(over="ignore"):
            return np.exp(y)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        out = np.exp(y + np.log(gammainc(m, np.maximum(y, 0.0))))
    return np.where(y > 0, out, 0.0)


def _order(q: int) -> int:
    """The first moment degree a ``q``-block quadrature (``q = 0``: held modes) gets wrong."""
    return max(2 * q - 1, 1)


def quadrature_terms(gammas: np.ndarray, weights: np.ndarray, E: float, q: int) -> np.ndarray:
    """Per-mode bound ``|γ| w R_{2q−1}(8E|γ|)`` on a tail mode's error in ``C`` (``q = 0``:
    the mode held at ``m(0)``, ``R_1``; 0 where ``w = 0``, ``inf`` where it overflows).

    Example:
        >>> g, w = np.array([0.5, 0.01]), np.array([1e-6, 1e-6])
        >>> held, quad = quadrature_terms(g, w, 10.0, 0), quadrature_terms(g, w, 10.0, 4)
        >>> bool(np.all(quad < held))
        True
    """
    g = np.abs(np.asarray(gammas, dtype=np.float64))
    w = np.asarray(weights, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        c = g * w * series_remainder(_order(q), 8.0 * E * g)
    return np.where(w > 0, np.nan_to_num(c, nan=np.inf), 0.0)


def block_gauss_quadrature(gammas: np.ndarray, Y0: np.ndarray, q: int) -> tuple[np.ndarray, np.ndarray]:
    """Pseudo-modes of the tail ``(γ, Y0)``: ``q`` block Lanczos steps on ``G = diag(γ)``.

    Args:
      gammas: ``(N_t,)`` the tail modes' ``γ``.
      Y0: ``(N_t, d)`` their coordinates ``m_j(0)ᵀ`` (rows).
      q: blocks (``q d ≤ N_t``).

    Returns:
      ``(θ, W)``: ``θ: (q d,)`` pseudo-mode values, ``W: (N_t, q d)`` orthonormal columns
      ``V S`` (pseudo-mode ``i``'s coordinates are ``W[:, i]ᵀ Y0``, its eigenvector
      ``P_tail W[:, i]``). Full reorthogonalisation, twice; where the Krylov space is
      exhausted the extra columns are orthonormal round-off directions, which a Galerkin
      solution may carry without harm.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> g, Y0 = rng.uniform(-1, 1, 50), rng.standard_normal((50, 2))
        >>> th, W = block_gauss_quadrature(g, Y0, 3)
        >>> Z0 = W.T @ Y0
        >>> all(np.allclose(Y0.T @ (g[:, None] ** s * Y0), Z0.T @ (th[:, None] ** s * Z0)) for s in range(6))
        True
    """
    g = np.asarray(gammas, dtype=np.float64)
    Y0 = np.asarray(Y0, dtype=np.float64)
    N_t, d = Y0.shape
    if q < 1 or q * d > N_t:
        raise ValueError(f"q = {q} blocks of d = {d} need 1 ≤ q·d ≤ N_t = {N_t} tail modes.")
    blocks = [_orthonormal(Y0, np.zeros((N_t, 0)))]
    for _ in range(q - 1):
        blocks.append(_orthonormal(g[:, None] * blocks[-1], np.concatenate(blocks, axis=1)))
    V = np.concatenate(blocks, axis=1)
    T = V.T @ (g[:, None] * V)
    theta, S = np.linalg.eigh(0.5 * (T + T.T))
    return theta, V @ S


def _orthonormal(W: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Orthonormal columns spanning ``(I − B Bᵀ) W`` (two Gram–Schmidt passes around a QR, so
    round-off directions of a rank-deficient ``W`` stay orthogonal to ``B``)."""
    for _ in range(2):
        W = W - B @ (B.T @ W)
    Q = np.linalg.qr(W)[0]
    for _ in range(2):
        Q = Q - B @ (B.T @ Q)
        Q = np.linalg.qr(Q)[0]
    return Q


def quadrature_embedding_bound(gammas: np.ndarray, Y0: np.ndarray, theta: np.ndarray, Z0: np.ndarray,
                               E: float, q: int) -> float:
    """``Σ_{p≥q} (4E)^p/p! (‖G^p Y0‖_F + ‖Θ^p Z0‖_F)``: the tail's coordinate error (multiply
    by ``‖L‖₂`` for the embeddings), ``q ≥ 1``; ``Z0 = Wᵀ Y0`` the pseudo-modes' coordinates."""
    x_max = 4.0 * E * max(float(np.max(np.abs(gammas), initial=0.0)), float(np.max(np.abs(theta), initial=0.0)))
    if not x_max <= 700.0:  # terms near e^{x_max} overflow: no useful bound (and a huge sum)
        return math.inf
    p = np.arange(q, q + int(3.0 * x_max) + 80, dtype=np.float64)
    with np.errstate(divide="ignore"):
        log_4E = math.log(4.0 * E) if E > 0 else -np.inf
    total = 0.0
    for g, w in ((gammas, np.sum(np.square(Y0), axis=1)), (theta, np.sum(np.square(Z0), axis=1))):
        with np.errstate(divide="ignore"):
            lg, lw = np.log(np.abs(np.asarray(g, np.float64))), np.log(w)
        # log ‖G^p Y0‖_F = ½ logsumexp_j (2p log|γ_j| + log w_j)
        norms = 0.5 * logsumexp(2.0 * p[:, None] * lg[None, :] + lw[None, :], axis=1)
        with np.errstate(invalid="ignore"):
            total += float(np.sum(np.exp(np.nan_to_num(p * log_4E - gammaln(p + 1.0) + norms, nan=-np.inf))))
    return total


def log_moments(theta: np.ndarray, Z0: np.ndarray, q: int) -> np.ndarray:
    """``log S_k``, ``S_k = Σ_i θ_i^{2k} ‖z_i‖²`` for ``k = 0..q−1``: the moments of the modes
    that ``q``-block pseudo-modes ``(θ, Z0)`` stand for (exact for ``2k ≤ 2q − 1``)."""
    w = np.sum(np.square(np.asarray(Z0, dtype=np.float64)), axis=1)
    with np.errstate(divide="ignore"):
        lg, lw = np.log(np.abs(np.asarray(theta, dtype=np.float64))), np.log(w)
    k = np.arange(max(q, 1), dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return logsumexp(np.nan_to_num(2.0 * k[:, None] * lg[None, :], nan=0.0) + lw[None, :], axis=1)


def moment_terms_bound(g_max: float, log_S: np.ndarray, E: float, q: int) -> float:
    """``min_k g^{1−2k} R_{2q−1}(8Eg) S_k``: a bound on ``Σ |γ| w R_{2q−1}(8E|γ|)`` over modes
    with ``|γ| ≤ g`` (``g = g_max``) and moments ``S_k = e^{log_S[k]}`` (``q = 0``: ``R_1``,
    ``k ≤ 1``; see the module docstring).

    Example:
        >>> g, w = np.array([0.3, -0.1, 0.05]), np.array([1.0, 2.0, 3.0])
        >>> S = np.log([np.sum(np.abs(g) ** (2 * k) * w) for k in range(3)])
        >>> bool(quadrature_terms(g, w, 2.0, 3).sum() <= moment_terms_bound(0.3, S, 2.0, 3))
        True
    """
    if g_max <= 0.0:
        return 0.0
    ks = np.arange(min(len(log_S), max(q, 2)))
    with np.errstate(over="ignore", divide="ignore"):
        log_R = np.log(series_remainder(_order(q), np.asarray(8.0 * E * g_max)))
    vals = (1.0 - 2.0 * ks) * math.log(g_max) + log_R + np.asarray(log_S)[ks]
    with np.errstate(over="ignore"):
        return float(np.exp(np.min(vals)))


def moment_embedding_bound(g_max: float, log_S: np.ndarray, E: float, q: int) -> float:
    """``min_k g^{−k} √S_k R_q(4Eg)``: a bound on ``Σ_{p≥q} (4E)^p/p! ‖G^p Y0‖_F`` over modes
    with ``|γ| ≤ g`` and moments ``S_k`` (``k ≤ q``), as :func:`moment_terms_bound`."""
    if g_max <= 0.0:
        return 0.0
    ks = np.arange(min(len(log_S), max(q, 1)))
    with np.errstate(over="ignore", divide="ignore"):
        log_R = np.log(series_remainder(q, np.asarray(4.0 * E * g_max)))
    vals = -ks * math.log(g_max) + 0.5 * np.asarray(log_S)[ks] + log_R
    with np.errstate(over="ignore"):
        return float(np.exp(np.min(vals)))
