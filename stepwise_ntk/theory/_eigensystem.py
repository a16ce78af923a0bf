"""The contrastive eigensystem of a kernel on paired views (docs/theory.md).

For ``K = S Sᵀ`` (``S`` any square root) the contrastive eigenvalues ``γ_j`` are the
eigenvalues of ``Γ̃ = Sᵀ Z S / (2n)`` (equivalently of ``K Z / (2n)``); with
``Γ̃ = Q diag(γ) Qᵀ`` the mode functions are ``g_j(X) = S q_j`` on the views and
``g_j(x) = q_jᵀ S⁻¹ K(X, x)`` (Nyström) on new inputs. docs/theory.md takes ``S = V Λ^{1/2}``
from ``eigh(K)``; any other square root gives the same ``γ`` and the same mode functions
(``S' = S O`` with ``O`` orthogonal maps ``q_j → Oᵀ q_j``).

Here ``S = L``, the Cholesky factor of ``K + τ I``. This needs one Cholesky
(``(2n)³/3`` flops) and one symmetric eigendecomposition, instead of two
eigendecompositions, and ``Lᵀ Z L`` is formed from the blocks of ``L`` in ``2n³`` flops.

**Near-singular K and the tolerance.** NTKs and linear kernels are often rank-deficient
(centred data, more views than features). The factorisation uses ``K + τ I`` with

    τ = jitter_rtol · max_i K_ii,   default jitter_rtol = 2n · eps(dtype)

(``max_i K_ii ≤ λ_max(K)``), the size of the round-off already in a computed ``K``. So
the eigensystem is exact for a kernel within ``τ`` of ``K`` in the 2-norm: every ``γ_j``
moves by at most ``τ/(2n)`` divided by the mode's pair correlation ``u_jᵀ Z u_j / ‖u_j‖²``
(first order; ≈ 1 for modes that views agree on), and the null space of ``K`` becomes
modes with ``|γ| ≲ τ/(2n)``, which do not grow over any practical horizon. ``K`` must be
positive semi-definite up to that tolerance: if ``K + τ I`` has no Cholesky factor,
``λ_min(K) < −τ`` (about) and a ValueError is raised. Pass ``jitter_rtol`` larger for
kernels with more noise (e.g. float32 kernels from long computations).

Example::

    >>> import jax, jax.numpy as jnp
    >>> X = jax.random.normal(jax.random.key(0), (20, 5), dtype=jnp.float32)
    >>> es = contrastive_eigensystem(X @ X.T, 10)
    >>> es.gammas.shape, bool(jnp.all(jnp.diff(es.gammas) <= 0))
    ((20,), True)
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from stepwise_ntk._checks import (
    check_int,
    check_kernel,
    check_n_pairs,
    check_number,
    check_positive_int,
    check_test_kernel,
    is_concrete,
)

__all__ = [
    "ContrastiveEigensystem",
    "check_enough_modes",
    "check_factorization",
    "contrastive_eigensystem",
    "contrastive_eigensystem_core",
    "default_jitter_rtol",
    "gamma_tolerance",
    "mode_coordinates",
    "mode_functions",
    "mode_functions_new",
]


class ContrastiveEigensystem(NamedTuple):
    """The contrastive eigensystem (a pytree of arrays; ``N = 2n`` views).

    Attributes:
      gammas: ``(N,)`` contrastive eigenvalues ``γ_1 ≥ γ_2 ≥ …`` (all N of them; the null
        space of ``K`` gives ``|γ| ≲ τ/(2n)``, and ``γ`` can be negative).
      vectors: ``(N, N)`` orthonormal eigenvectors ``p_j`` of ``Lᵀ Z L / (2n)`` (columns, in
        the order of ``gammas``).
      factor: ``(N, N)`` lower-triangular ``L`` with ``L Lᵀ = K + τ I``.
      jitter: ``τ`` (scalar), see the module docstring.
    """

    gammas: jax.Array
    vectors: jax.Array
    factor: jax.Array
    jitter: jax.Array

    @property
    def n_pairs(self) -> int:
        return self.gammas.shape[0] // 2


def default_jitter_rtol(n_pairs: int, dtype: Any) -> float:
    """``2n · eps(dtype)``: the default relative jitter (see the module docstring).

    Example:
        >>> default_jitter_rtol(10, "float64") == 20 * 2.0**-52
        True
    """
    n_pairs = check_n_pairs(n_pairs)
    return 2.0 * float(n_pairs) * float(np.finfo(np.dtype(dtype)).eps)


def _pair_gram_of_factor(L: jax.Array) -> jax.Array:
    """``Lᵀ Z L`` for lower-triangular ``L`` from its blocks (``2n³`` instead of ``8n³`` flops).

    With ``L = [[L11, 0], [L21, L22]]``: ``Lᵀ Z L = [[A + Aᵀ, B], [Bᵀ, 0]]``,
    ``A = L11ᵀ L21``, ``B = L11ᵀ L22``.
    """
    n = L.shape[0] // 2
    L11, L21, L22 = L[:n, :n], L[n:, :n], L[n:, n:]
    A = L11.T @ L21
    B = L11.T @ L22
    top = jnp.concatenate([A + A.T, B], axis=1)
    bottom = jnp.concatenate([B.T, jnp.zeros_like(L22)], axis=1)
    return jnp.concatenate([top, bottom], axis=0)


@jax.jit
def contrastive_eigensystem_core(K: jax.Array, jitter_rtol: jax.Array) -> ContrastiveEigensystem:
    """:func:`contrastive_eigensystem` without its input checks: jit-able with a traced jitter.

    For callers that checked ``K: (2n, 2n)`` themselves and run inside ``jax.jit``; a failed
    factorisation shows as non-finite ``gammas`` (see :func:`check_factorization`).
    """
    N = K.shape[0]
    tau = jitter_rtol * jnp.max(jnp.diagonal(K))
    L = jnp.linalg.cholesky(K + tau * jnp.eye(N, dtype=K.dtype))  # symmetrises its input
    H = _pair_gram_of_factor(L) / N  # exactly symmetric by construction
    w, P = jnp.linalg.eigh(H, symmetrize_input=False)
    return ContrastiveEigensystem(gammas=w[::-1], vectors=P[:, ::-1], factor=L, jitter=tau)


def contrastive_eigensystem(K: Any, n_pairs: int, *, jitter_rtol: float | None = None) -> ContrastiveEigensystem:
    """Contrastive eigenvalues ``γ_j`` (descending) and what evaluates the mode functions.

    ``γ_j`` are the eigenvalues of ``K Z / (2n)`` (docs/theory.md), computed as those of
    ``Lᵀ Z L / (2n)`` with ``L Lᵀ = K + τ I`` (Cholesky, ``τ`` = jitter; see the module
    docstring for the tolerance and why it is safe for rank-deficient ``K``).

    Args:
      K: ``(2n, 2n)`` symmetric PSD Gram matrix of the views ``[x_1..x_n, x'_1..x'_n]``,
        float32 or float64.
      n_pairs: ``n``.
      jitter_rtol: ``τ / max_i K_ii``; None for ``2n · eps(dtype)``.

    Returns:
      :class:`ContrastiveEigensystem`. Evaluate modes with :func:`mode_functions` (views)
      and :func:`mode_functions_new` (new inputs, from ``K_test = K(test, views)``).

    Raises:
      TypeError: ``n_pairs`` not an int, ``jitter_rtol`` not a number.
      ValueError: bad shape/dtype, NaN/Inf, asymmetric, or not PSD within the tolerance.
    """
    n_pairs = check_n_pairs(n_pairs)
    K = check_kernel(K, n_pairs)
    dtype = K.dtype
    if jitter_rtol is None:
        jitter_rtol = default_jitter_rtol(n_pairs, dtype)
    else:
        jitter_rtol = check_number("jitter_rtol", jitter_rtol, low=0.0, hint=" (or None for 2n · eps)")
    es = contrastive_eigensystem_core(K, jnp.asarray(jitter_rtol, dtype))
    if is_concrete(es.factor):
        check_factorization(es, K)
    return es


def check_factorization(es: ContrastiveEigensystem, K: jax.Array) -> None:
    """Raise the PSD ValueError when the Cholesky factor of ``K + τ I`` failed."""
    if bool(jnp.all(jnp.isfinite(es.gammas))):
        return
    lam_min = float(np.linalg.eigvalsh(np.asarray(K, dtype=np.float64))[0])
    tau = float(es.jitter)
    raise ValueError(
        f"K is not positive semi-definite within the tolerance: its smallest eigenvalue is "
        f"{lam_min:.3g} < −τ = {-tau:.3g} (τ = jitter_rtol × max K_ii), so K + τI has no "
        f"Cholesky factor. A kernel Gram matrix is PSD; recompute K in float64, or, if the "
        f"negative part is numerical noise, pass a larger jitter_rtol (e.g. "
        f"{2 * abs(lam_min) / max(float(jnp.max(jnp.diagonal(K))), 1e-300):.1g})."
    )


def mode_functions(es: ContrastiveEigensystem, modes: int | None = None) -> jax.Array:
    """Mode functions on the views, ``g_j(X) = L p_j`` (columns), ``(2n, modes)``.

    Normalised like docs/theory.md's ``S q_j``: ``g_jᵀ Z g_j = 2n γ_j``. Signs (and rotations
    within degenerate ``γ``) are arbitrary.
    """
    return es.factor @ _leading_vectors(es, modes)


def _leading_vectors(es: ContrastiveEigensystem, modes: int | None) -> jax.Array:
    if modes is None:
        return es.vectors
    N = es.vectors.shape[1]
    return es.vectors[:, : check_int("modes", modes, low=1, high=N, hint=" (how many leading modes; None: all)")]


def mode_coordinates(es: ContrastiveEigensystem, F: jax.Array) -> jax.Array:
    """Coordinates ``M`` of view embeddings in the mode basis: ``F = L P Mᵀ``, ``M: (d, N)``.

    Column ``j`` of ``M`` is ``m_j = W u_j`` in docs/theory.md's notation (the projection of the
    embedding onto mode ``j``), so ``C = Fᵀ Z F / (2n) = M diag(γ) Mᵀ`` (up to the jitter)
    and, for aligned initialisation, ``λ_j = γ_j ‖m_j‖²``.

    Args:
      es: the eigensystem.
      F: ``(2n, d)`` embeddings of the views.
    """
    B = jax.scipy.linalg.solve_triangular(es.factor, F, lower=True)
    return (es.vectors.T @ B).T


def mode_functions_new(es: ContrastiveEigensystem, K_test: jax.Array, modes: int | None = None) -> jax.Array:
    """Nyström extension ``g_j(x) = p_jᵀ L⁻¹ K(X, x)`` to new inputs, ``(m, modes)``.

    Args:
      es: the eigensystem.
      K_test: ``(m, 2n)`` kernel between the new (test) inputs and the views.
      modes: how many leading modes (None: all).
    """
    K_test = check_test_kernel(K_test, es.n_pairs)
    P = _leading_vectors(es, modes)
    W = jax.scipy.linalg.solve_triangular(es.factor, K_test.T, lower=True)
    return W.T @ P


def gamma_tolerance(es: ContrastiveEigensystem) -> jax.Array:
    """Below this, a ``γ`` is indistinguishable from 0: ``max(10 τ/(2n), 100 eps |γ_1|)``.

    The null space of ``K`` becomes modes with ``|γ| ≤ τ/(2n)`` through the jitter, and
    the eigendecomposition itself has absolute error ``~ eps · |γ_1|``.
    """
    eps = jnp.finfo(es.gammas.dtype).eps
    N = es.gammas.shape[0]
    return jnp.maximum(10.0 * es.jitter / N, 100.0 * eps * jnp.abs(es.gammas[0]))


def check_enough_modes(es: ContrastiveEigensystem, d: int) -> None:
    """ValueError unless ``γ_d`` is positive beyond :func:`gamma_tolerance` (concrete ``es`` only).

    With fewer than ``d`` positive ``γ`` the Barlow Twins loss cannot reach zero: ``C`` can
    have at most as many positive eigenvalues as ``K Z`` has.
    """
    d = check_positive_int("d", d, hint=" (the embedding dimension)")
    N = es.gammas.shape[0]
    if d > N:
        raise ValueError(f"d = {d} embedding dimensions but only 2n = {N} views; use d ≤ n.")
    if not is_concrete(es.gammas):
        return
    tol = float(gamma_tolerance(es))
    g = np.asarray(es.gammas)
    n_pos = int(np.sum(g > tol))
    if n_pos < d:
        raise ValueError(
            f"Only {n_pos} contrastive eigenvalues γ_j are positive (> {tol:.2g}, the jitter and "
            f"round-off level) but d = {d}: with fewer than d positive γ the Barlow Twins loss "
            f"cannot reach zero (C has at most {n_pos} positive eigenvalues). Use d ≤ {n_pos}, or "
            f"a kernel/augmentation with more view-invariant directions (K is probably "
            f"rank-deficient: rank ≤ {N} views' features)."
        )
