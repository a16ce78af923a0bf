"""Closed-form predictions of the kernel model of Barlow Twins (docs/theory.md).

Small initialisation, modes learned one at a time in the order of the contrastive
eigenvalues ``γ_1 ≥ γ_2 ≥ …`` (see :mod:`stepwise_ntk.theory._eigensystem`):

* :func:`aligned_eigenvalues`: the exact solution for aligned initialisation,
  ``λ_j(t) = 1 / (1 + (1/λ_j(0) − 1) e^{−8 γ_j t})`` (``dλ_j/dt = 8 γ_j λ_j (1 − λ_j)``).
* :func:`initial_eigenvalues` / :func:`step_times`: ``λ_j(0) = γ_j ‖m_j(0)‖²`` (``m_j`` the
  projection of the initial embedding onto mode ``j``) and ``t_j = ln(1/λ_j(0) − 1)/(8 γ_j)``,
  the time ``λ_j`` crosses 1/2.
* :func:`loss_staircase`: the aligned loss ``Σ_j (1 − λ_j(t))²``, a staircase with plateaus
  near ``d − k`` between steps ``k`` and ``k + 1`` (:func:`plateau_levels`).
* :func:`final_embeddings`: ``f(x) = U diag(γ_1^{-1/2} … γ_d^{-1/2}) [g_1(x) … g_d(x)]ᵀ``
  (kernel PCA of the contrastive kernel), defined up to the orthogonal ``U``; compare with
  :func:`procrustes_align` / :func:`procrustes_error`.

All functions are pure and jit-able (value checks run only on concrete inputs).

Example::

    >>> import jax, jax.numpy as jnp
    >>> g = jnp.array([1.0, 0.5]); lam0 = jnp.array([1e-6, 1e-6])
    >>> t = jnp.array([0.0, 10.0])
    >>> aligned_eigenvalues(g, lam0, t).shape
    (2, 2)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from stepwise_ntk._checks import check_array, check_bool, check_embeddings, check_positive_int, check_type, is_concrete
from stepwise_ntk.theory._eigensystem import (
    ContrastiveEigensystem,
    check_enough_modes,
    mode_coordinates,
    mode_functions,
    mode_functions_new,
)

__all__ = [
    "aligned_eigenvalues",
    "final_embeddings",
    "initial_eigenvalues",
    "loss_staircase",
    "plateau_levels",
    "procrustes_align",
    "procrustes_error",
    "step_times",
]


def _check_d(d: int, es: ContrastiveEigensystem) -> int:
    d = check_positive_int("d", d, hint=" (the embedding dimension)")
    check_enough_modes(es, d)
    return d


def _check_es(es: ContrastiveEigensystem) -> ContrastiveEigensystem:
    return check_type("es", es, ContrastiveEigensystem, "a ContrastiveEigensystem (from contrastive_eigensystem)")


def initial_eigenvalues(es: ContrastiveEigensystem, F0: jax.Array) -> jax.Array:
    """``λ_j(0) = γ_j ‖m_j(0)‖²`` for the top ``d`` modes, ``(d,)`` (``d = F0.shape[1]``).

    ``m_j(0)`` is the projection of the initial embeddings ``F0`` onto mode ``j``
    (:func:`stepwise_ntk.theory.mode_coordinates`). For small random initialisation
    this is the embedding eigenvalue mode ``j`` starts from (docs/theory.md, within a few
    percent of simulation when the ``γ_j`` are well separated).

    Args:
      es: :class:`ContrastiveEigensystem` of the views.
      F0: ``(2n, d)`` initial embeddings of the views; ``d`` is the number of modes.
    """
    es = _check_es(es)
    F0 = check_embeddings(F0, es.n_pairs, "F0", dtype=es.gammas.dtype)
    d = _check_d(F0.shape[1], es)
    M0 = mode_coordinates(es, F0)
    return es.gammas[:d] * jnp.sum(jnp.square(M0[:, :d]), axis=0)


def step_times(es: ContrastiveEigensystem, F0: jax.Array) -> jax.Array:
    """Predicted step times ``t_j = ln(1/λ_j(0) − 1) / (8 γ_j)``, ``j = 1..d``, ``(d,)``.

    ``t_j`` is when ``λ_j`` crosses 1/2 in the aligned solution started from
    ``λ_j(0)`` = :func:`initial_eigenvalues`. A mode that starts above 1/2 gets ``t_j ≤ 0``.

    Args:
      es: :class:`ContrastiveEigensystem` of the views.
      F0: ``(2n, d)`` initial embeddings (small initialisation); ``d = F0.shape[1]``.

    Raises:
      ValueError: fewer than ``d`` positive ``γ``; an initial ``λ_j(0) ≥ 1`` (not a small
        initialisation: the mode has no step).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from stepwise_ntk.theory import contrastive_eigensystem
        >>> X = jax.random.normal(jax.random.key(0), (20, 5))
        >>> es = contrastive_eigensystem(X @ X.T, 10)
        >>> step_times(es, 1e-3 * X[:, :2]).shape
        (2,)
    """
    lam0 = initial_eigenvalues(es, F0)
    d = lam0.shape[0]
    if is_concrete(lam0):
        big = np.flatnonzero(np.asarray(lam0) >= 1.0)
        if big.size:
            raise ValueError(
                f"Modes {(big + 1).tolist()} start with λ_j(0) ≥ 1 (largest {float(np.max(np.asarray(lam0))):.3g}): "
                f"the initialisation is not small, so they have no step. Scale F0 down (e.g. by 1e-3)."
            )
    return jnp.log(1.0 / lam0 - 1.0) / (8.0 * es.gammas[:d])


def _check_nonneg(x, name):
    if is_concrete(x) and not bool(jnp.all(x >= 0)):
        raise ValueError(
            f"{name} must be ≥ 0 (embedding eigenvalues start non-negative), got min {float(jnp.min(x)):.3g}."
        )


def aligned_eigenvalues(gammas: jax.Array, lambda0: jax.Array, times: jax.Array) -> jax.Array:
    """Exact embedding eigenvalues for aligned initialisation, ``(T, d)``.

    ``λ_j(t) = 1 / (1 + (1/λ_j(0) − 1) e^{−8 γ_j t})``, the solution of
    ``dλ_j/dt = 8 γ_j λ_j (1 − λ_j)`` (docs/theory.md). Column ``j`` is mode ``j`` (not sorted).

    Args:
      gammas: ``(d,)`` contrastive eigenvalues of the modes the embedding is aligned with.
      lambda0: ``(d,)`` initial eigenvalues ``λ_j(0) ≥ 0`` (a mode at 0 stays at 0).
      times: ``(T,)`` times.
    """
    gammas, lambda0, times = jnp.asarray(gammas), jnp.asarray(lambda0), jnp.asarray(times)
    if gammas.shape != lambda0.shape or gammas.ndim != 1:
        raise ValueError(f"gammas and lambda0 must both be (d,), got {gammas.shape} and {lambda0.shape}.")
    if times.ndim != 1:
        raise ValueError(f"times must be 1-D, got shape {times.shape}.")
    _check_nonneg(lambda0, "lambda0")
    # Written as λ0 / (λ0 + (1 − λ0) e^{−8γt}) so that λ0 = 0 gives 0 without 0·∞.
    decay = jnp.exp(-8.0 * gammas[None, :] * times[:, None])
    return lambda0 / (lambda0 + (1.0 - lambda0) * decay)


def loss_staircase(gammas: jax.Array, lambda0: jax.Array, times: jax.Array) -> jax.Array:
    """Aligned-solution loss ``L(t) = Σ_j (1 − λ_j(t))²``, ``(T,)``.

    For well-separated steps it sits near ``d − k`` between steps ``k`` and ``k + 1``
    (:func:`plateau_levels`).
    """
    lam = aligned_eigenvalues(gammas, lambda0, times)
    return jnp.sum(jnp.square(1.0 - lam), axis=1)


def plateau_levels(d: int) -> np.ndarray:
    """Loss plateaus ``d − k``, ``k = 0..d`` (before the first step: ``d``; at the end: 0)."""
    d = check_positive_int("d", d, allow_zero=True, hint=" (the embedding dimension)")
    return np.arange(d, -1, -1, dtype=np.float64)


def final_embeddings(es: ContrastiveEigensystem, K_test: jax.Array | None, d: int) -> jax.Array:
    """Closed-form final embeddings ``f(x) = diag(γ_1^{-1/2} … γ_d^{-1/2}) [g_1(x) … g_d(x)]ᵀ``.

    Defined up to an orthogonal ``d × d`` rotation ``U`` (``f → f U`` for row vectors): compare
    with :func:`procrustes_align`. On the views their cross-correlation is exactly ``I``.

    Args:
      es: :class:`ContrastiveEigensystem` of the views.
      K_test: ``(m, 2n)`` kernel between new (test) inputs and the views, or None for the
        views themselves.
      d: embedding dimension.

    Returns:
      ``(m, d)`` (or ``(2n, d)``) embeddings, row per input.
    """
    es = _check_es(es)
    d = _check_d(d, es)
    g = mode_functions(es, d) if K_test is None else mode_functions_new(es, K_test, d)
    return g / jnp.sqrt(es.gammas[:d])


_EMBEDDINGS = "a non-empty (m, d) array of embeddings (rows: inputs)"


def _embedding_pair(A: jax.Array, B: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``A``, ``B`` as JAX arrays after checking them: finite ``(m, d)``, same shape and dtype."""
    hint = "compare finite embeddings only (a diverged run?)."
    A = jnp.asarray(check_array("A", A, ndim=2, min_rows=1, what=_EMBEDDINGS, hint=hint))
    B = jnp.asarray(check_array("B", B, ndim=2, min_rows=1, what=_EMBEDDINGS, hint=hint))
    for name, X in (("A", A), ("B", B)):
        if X.shape[1] < 1:
            raise ValueError(f"{name} must be {_EMBEDDINGS}, got shape {X.shape}.")
    if A.shape[0] != B.shape[0]:
        raise ValueError(
            f"A and B must embed the same inputs (same number of rows), got {A.shape[0]} and {B.shape[0]} rows."
        )
    if A.dtype != B.dtype:
        raise ValueError(f"A has dtype {A.dtype} but B has {B.dtype}; cast both to one dtype (e.g. float64).")
    if A.shape != B.shape:
        raise ValueError(
            f"Procrustes needs A and B of the same (m, d) shape, got {A.shape} and {B.shape}; "
            f"compare subspaces of different dimension with predictor.subspace_alignment."
        )
    return A, B


def _align(A: jax.Array, B: jax.Array) -> tuple[jax.Array, jax.Array]:
    U, _, Vt = jnp.linalg.svd(A.T @ B)
    R = U @ Vt
    return A @ R, R


def procrustes_align(A: jax.Array, B: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Orthogonal Procrustes: ``R = argmin_{RᵀR = I} ‖A R − B‖_F``; returns ``(A R, R)``.

    ``R = U Vᵀ`` from the SVD ``Aᵀ B = U Σ Vᵀ`` (Schönemann 1966).

    Args:
      A, B: ``(m, d)`` embeddings of the same inputs (rows), same dtype.
    """
    return _align(*_embedding_pair(A, B))


def procrustes_error(A: jax.Array, B: jax.Array, *, scale: bool = False) -> jax.Array:
    """``min ‖s A R − B‖_F / ‖B‖_F`` over orthogonal ``R`` (and ``s = 1``, or the best ``s > 0``).

    With ``Aᵀ B = U Σ Vᵀ``: ``R = U Vᵀ`` (:func:`procrustes_align`) and, if ``scale``,
    ``s = tr Σ / ‖A‖²_F`` (the similarity Procrustes fit), which compares embeddings whose
    overall size differs (e.g. from different losses).

    Args:
      A: ``(m, d)`` embeddings (e.g. the network's or the solver's).
      B: ``(m, d)`` reference embeddings of the same inputs (e.g. the closed form), not all 0.
      scale: also fit a positive scalar.

    Returns:
      scalar ``≥ 0``; 0 when ``A`` is a rotation (``scale``: a scaled rotation) of ``B``.

    Example:
        >>> import jax.numpy as jnp
        >>> B = jnp.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
        >>> A = 3.0 * B[:, ::-1]                      # a reflection of B, three times as large
        >>> round(float(procrustes_error(A, B)), 6), round(float(procrustes_error(A, B, scale=True)), 6)
        (2.0, 0.0)
    """
    A, B = _embedding_pair(A, B)
    scale = check_bool("scale", scale)
    if is_concrete(B) and not bool(jnp.any(B != 0)):
        raise ValueError("B is all zeros: the relative error ‖·‖/‖B‖ is undefined. Pass the reference as B.")
    AR, _ = _align(A, B)
    if not scale:
        return jnp.linalg.norm(AR - B) / jnp.linalg.norm(B)
    s = jnp.sum(AR * B) / jnp.maximum(jnp.sum(jnp.square(A)), jnp.finfo(A.dtype).tiny)
    return jnp.linalg.norm(s * AR - B) / jnp.linalg.norm(B)
