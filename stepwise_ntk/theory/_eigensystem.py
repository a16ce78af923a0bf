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

**Low-rank K.** For a kernel of rank ``p`` well below ``2n`` (a linear kernel on ``p``
features, random features) the Cholesky factor of ``K + τ I`` has ``2n − p`` columns of norm
``~√τ``: the views already spanned by earlier ones. Dropping the columns of smallest norm
while their squared norms sum to at most ``tol`` (:func:`low_rank_columns`) leaves
``L_S: (2n, p)`` with ``‖L_S L_Sᵀ − K‖₂ ≤ τ + tol``; the eigensystem of that kernel comes
from the ``p × p`` matrix ``L_Sᵀ Z L_S / (2n)`` (``2n p²`` flops to form, one ``p × p``
eigendecomposition) and is exact for it (:func:`contrastive_eigensystem_from_factor` with
``columns``). Embeddings outside the range of ``L_S`` are not represented (the solver checks
that ``F0`` lies in it).

Example::

    >>> import jax, jax.numpy as jnp
    >>> X = jax.random.normal(jax.random.key(0), (20, 5), dtype=jnp.float32)
    >>> es = contrastive_eigensystem(X @ X.T, 10)
    >>> es.gammas.shape, bool(jnp.all(jnp.diff(es.gammas) <= 0))
    ((20,), True)
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from stepwise_ntk._checks import (
    check_choice,
    check_int,
    check_kernel,
    check_n_pairs,
    check_number,
    check_positive_int,
    check_test_kernel,
    is_concrete,
)
from stepwise_ntk.data import swap_pairs
from stepwise_ntk.theory._pair_gram import (
    PairGramOperator,
    pair_gram_apply,
    pair_gram_of_factor,
    pair_gram_operator,
)
from stepwise_ntk.theory._tridiagonal import tridiagonal_available, tridiagonal_eigensystem

__all__ = [
    "WHICH",
    "ContrastiveEigensystem",
    "RestLanczos",
    "check_enough_modes",
    "check_factorization",
    "contrastive_eigensystem",
    "contrastive_eigensystem_core",
    "contrastive_eigensystem_from_factor",
    "default_jitter_rtol",
    "jittered_cholesky",
    "gamma_tolerance",
    "low_rank_columns",
    "mode_coordinates",
    "mode_functions",
    "mode_functions_new",
    "rest_lanczos",
]


class ContrastiveEigensystem(NamedTuple):
    """The contrastive eigensystem (a pytree of arrays; ``N = 2n`` views, ``r`` modes).

    Attributes:
      gammas: ``(r,)`` contrastive eigenvalues ``γ_1 ≥ γ_2 ≥ …``: all ``r = N`` of them,
        or those a partial eigensystem returned (see :func:`contrastive_eigensystem`'s
        ``top``). The null space of ``K`` gives ``|γ| ≲ τ/(2n)``, and ``γ`` can be negative.
      vectors: ``(N, r)`` orthonormal eigenvectors ``p_j`` of ``Lᵀ Z L / (2n)`` (columns, in
        the order of ``gammas``); for a low-rank eigensystem, of ``L_Sᵀ Z L_S / (2n)`` with
        zeros in the rows of the dropped columns.
      factor: ``(N, N)`` lower-triangular ``L`` with ``L Lᵀ = K + τ I``.
      jitter: ``τ`` (scalar), see the module docstring; for a low-rank eigensystem ``τ`` plus
        the dropped columns' squared norms (a bound on how far its kernel is from ``K``).
      residuals: ``(r,)`` ``‖H p_j − γ_j p_j‖₂`` (``H = Lᵀ Z L / (2n)``) of a partial
        eigensystem, each an upper bound on the error of its ``γ_j``; None for the full one.
      rest: a partial eigensystem's estimate of the largest ``|γ|`` (``which="magnitude"``)
        or ``γ`` (``which="largest"``) among the modes it did not return (the next Ritz
        value plus its residual); 0 for the full one.
    """

    gammas: jax.Array
    vectors: jax.Array
    factor: jax.Array
    jitter: jax.Array
    residuals: Any = None
    rest: Any = 0.0

    @property
    def n_pairs(self) -> int:
        return self.factor.shape[0] // 2

    @property
    def partial(self) -> bool:
        """Whether only some modes were computed (``r < 2n``). A low-rank eigensystem
        (:func:`contrastive_eigensystem_from_factor` with ``columns``; ``residuals`` None)
        is complete for the kernel it solves and is not partial."""
        return self.residuals is not None and self.gammas.shape[0] < self.factor.shape[0]


def default_jitter_rtol(n_pairs: int, dtype: Any) -> float:
    """``2n · eps(dtype)``: the default relative jitter (see the module docstring).

    Example:
        >>> default_jitter_rtol(10, "float64") == 20 * 2.0**-52
        True
    """
    n_pairs = check_n_pairs(n_pairs)
    return 2.0 * float(n_pairs) * float(np.finfo(np.dtype(dtype)).eps)


@jax.jit
def contrastive_eigensystem_core(K: jax.Array, jitter_rtol: jax.Array) -> ContrastiveEigensystem:
    """:func:`contrastive_eigensystem` without its input checks: jit-able with a traced jitter.

    For callers that checked ``K: (2n, 2n)`` themselves and run inside ``jax.jit``; a failed
    factorisation shows as non-finite ``gammas`` (see :func:`check_factorization`).
    """
    with jax.default_matmul_precision("highest"):
        L, tau = _factor(K, jitter_rtol)
        H = pair_gram_of_factor(L) / K.shape[0]  # exactly symmetric by construction
        w, P = jnp.linalg.eigh(H, symmetrize_input=False)
    return ContrastiveEigensystem(gammas=w[::-1], vectors=P[:, ::-1], factor=L, jitter=tau,
                                  residuals=None, rest=jnp.zeros((), K.dtype))


def _factor(K, jitter_rtol):
    """``L`` with ``L Lᵀ = K + τ I`` and ``τ = jitter_rtol · max_i K_ii`` (NaN ``L`` if not PSD)."""
    tau = jitter_rtol * jnp.max(jnp.diagonal(K))
    L = jnp.linalg.cholesky(K + tau * jnp.eye(K.shape[0], dtype=K.dtype))  # symmetrises its input
    return L, tau


def _orthonormalize(W: jax.Array, Q: jax.Array) -> jax.Array:
    """Orthonormal columns spanning ``(I − Q Qᵀ) W``, by products only.

    Classical Gram–Schmidt against ``Q`` twice, then a shifted Cholesky QR (Fukaya et al.,
    SIAM J. Sci. Comput. 2020: the shift makes it safe for a numerically rank-deficient
    ``W``, whose null directions become round-off vectors), one more projection (those
    vectors may lean on ``Q``) and two plain Cholesky QR passes. Far cheaper than
    Householder QR of an ``N × b`` block on CPU; accurate to ``O(eps)`` in orthogonality.
    """
    for _ in range(2):
        W = W - Q @ (Q.T @ W)
    N, b = W.shape
    eps = jnp.finfo(W.dtype).eps
    G = W.T @ W
    shift = 11.0 * (N * b + b * (b + 1)) * eps * jnp.maximum(jnp.trace(G), jnp.finfo(W.dtype).tiny)
    W = _chol_qr(W, G + shift * jnp.eye(b, dtype=W.dtype))
    W = W - Q @ (Q.T @ W)
    for _ in range(2):
        W = _chol_qr(W, W.T @ W)
    return W


def _chol_qr(W, G):
    R = jnp.linalg.cholesky(G).T  # G = Rᵀ R
    R_inv = jax.scipy.linalg.solve_triangular(R, jnp.eye(G.shape[0], dtype=G.dtype), lower=False)
    return W @ R_inv


class _KrylovOut(NamedTuple):
    gammas: jax.Array  # (r,) descending
    vectors: jax.Array  # (N, r)
    residuals: jax.Array  # (r,)
    rest: jax.Array  # next Ritz value (by the ranking) + its residual
    kept: jax.Array  # (N, k) the kept Ritz vectors (a warm start for a larger r)
    restarts: jax.Array
    converged: jax.Array


@functools.partial(jax.jit, static_argnames=("r", "depth", "which"))
def _krylov_modes(op, V0, sketch, tol, max_restarts, *, r, depth, which):
    """The ``r`` extreme eigenpairs of ``H = Lᵀ Z L / (2n)`` by thick-restarted block Krylov.

    Basis ``[X, Q_1, …, Q_q]``: the ``k`` kept Ritz vectors ``X`` and ``q = depth`` Krylov
    blocks of ``block`` columns grown from a sketch ``R G`` of their residuals ``R``
    (``G: (k, block)`` fixed Gaussian; in exact arithmetic the residuals of Ritz vectors of
    a block Krylov space span one block, so the sketch loses nothing). Rayleigh–Ritz on the
    basis, keep the ``k`` Ritz pairs first by the ranking (``|θ|`` for ``"magnitude"``,
    ``θ`` for ``"largest"``), stop when the first ``r`` have ``‖H x − θ x‖ ≤ tol · max|θ|``. Costs
    ``q · block`` products with ``H`` per restart (:class:`PairGramOperator` ``op``).
    """
    with jax.default_matmul_precision("highest"):
        return _krylov_body(op, V0, sketch, tol, max_restarts, r, depth, which)


def _krylov_body(op, V0, sketch, tol, max_restarts, r, depth, which):
    key_of = jnp.abs if which == "magnitude" else (lambda x: x)
    k = V0.shape[1]

    def ritz(Q, AQ):
        T = Q.T @ AQ
        theta, Y = jnp.linalg.eigh((T + T.T) / 2, symmetrize_input=False)
        order = jnp.argsort(-key_of(theta))[:k]
        theta, Y = theta[order], Y[:, order]
        X, AX = Q @ Y, AQ @ Y
        res = jnp.linalg.norm(AX - X * theta, axis=0)
        return X, AX, theta, res

    def body(state):
        X, AX, theta, res, it, _ = state
        Q, AQ = [X], [AX]
        W = (AX - X * theta) @ sketch
        for _ in range(depth):
            Qi = _orthonormalize(W, jnp.concatenate(Q, axis=1))
            AQi = pair_gram_apply(op, Qi)
            Q.append(Qi)
            AQ.append(AQi)
            W = AQi
        X, AX, theta, res = ritz(jnp.concatenate(Q, axis=1), jnp.concatenate(AQ, axis=1))
        done = jnp.max(res[:r]) <= tol * jnp.max(jnp.abs(theta))
        return X, AX, theta, res, it + 1, done

    def cond(state):
        return (~state[5]) & (state[4] < max_restarts)

    X0 = _orthonormalize(V0, jnp.zeros((V0.shape[0], 1), V0.dtype))
    X, AX, theta, res = ritz(X0, pair_gram_apply(op, X0))
    state = (X, AX, theta, res, jnp.asarray(0, jnp.int32), jnp.max(res[:r]) <= tol * jnp.max(jnp.abs(theta)))
    X, AX, theta, res, it, done = jax.lax.while_loop(cond, body, state)
    rest = key_of(theta[r]) + res[r]
    order = jnp.argsort(-theta[:r])
    return _KrylovOut(gammas=theta[:r][order], vectors=X[:, :r][:, order], residuals=res[:r][order],
                      rest=rest, kept=X, restarts=it, converged=done)


WHICH = ("largest", "magnitude")
_SMALL = 1024  # below this many views the full decomposition costs too little to avoid


@jax.jit
def jittered_cholesky(K: jax.Array, jitter_rtol: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(L, τ)`` with ``L Lᵀ = K + τ I``, ``τ = jitter_rtol · max_i K_ii`` (jit-able, unchecked).

    ``L`` is NaN where ``K + τ I`` is not positive definite (:func:`check_factorization`).

    Example:
        >>> import jax.numpy as jnp
        >>> L, tau = jittered_cholesky(jnp.eye(4), jnp.asarray(0.0))
        >>> bool(jnp.allclose(L, jnp.eye(4))), float(tau)
        (True, 0.0)
    """
    return _factor(K, jitter_rtol)


@jax.jit
def _full_from_factor(L, tau):
    with jax.default_matmul_precision("highest"):
        w, P = jnp.linalg.eigh(pair_gram_of_factor(L) / L.shape[0], symmetrize_input=False)
    return ContrastiveEigensystem(gammas=w[::-1], vectors=P[:, ::-1], factor=L, jitter=tau,
                                  residuals=None, rest=jnp.zeros((), L.dtype))


def _default_residual_rtol(N: int, dtype: Any) -> float:
    """Residual tolerance of a partial eigensystem relative to ``max |γ|``:
    ``max(1e-10, 30 √N eps)`` (the round-off of one product with ``H`` is ``~√N eps``)."""
    return max(1e-10, 30.0 * math.sqrt(N) * float(np.finfo(np.dtype(dtype)).eps))


def _krylov_sizes(N: int, top: int) -> tuple[int, int, int] | None:
    """``(kept, block, depth)`` of the block Krylov iteration for ``top`` modes of ``N``
    views, or None when its basis would not be small against ``N`` (the full decomposition
    is then as cheap)."""
    kept = top + max(16, top // 2)
    # Blocks as wide as the modes wanted, up to 64: for 64 modes of the CIFAR-10 linear
    # kernel 64 columns need 9 restarts where 32 needed 19-21, 1.5× less time at 2n = 2000
    # and 9,320 (the synthetic ridge kernel at 2000 likewise).
    block = min(max(16, top), 64)
    depth = 2
    if N < _SMALL or kept + depth * block > N // 4:
        return None
    return kept, block, depth


# Cost model of the partial eigensystem against the full one, in units of the full
# decomposition's flops (``≈ 10 N³``, most of it in a BLAS-3 tridiagonal reduction). The
# Krylov iteration's products are thin (``N × b`` blocks) and its loop runs many small
# operations: on CPU it reaches about a tenth of the dense eigensolver's flop rate with
# blocks of 64 columns and proportionally less with thinner ones, and it needs 10-20
# restarts at the solver's residual tolerances (CIFAR-10 linear kernel, 2n = 2000: 15
# restarts for 64 modes, 18 for 192). Measured here (2 cores, float64, YNNPACK dots, blocks
# of 32 for 64 modes): the iteration given the Cholesky factor, synthetic ridge kernel, 64
# modes: 2n = 2000 1.1 s against 0.55 s for one eigh, 2n = 4000 3.4 s against 4.1 s; CIFAR-10 linear kernel,
# 2n = 9,320: 64, 128 and 256 modes 10.9, 15.3 and 32.6 s (Cholesky 3.0 s) against 50 s for
# one eigh. The model gets these comparisons right (at 2n = 4000 the two are level).
#
# The products now go through PairGramOperator (untransposed copies of L's blocks: twice the
# flops of the triangular products at about four times their rate, so half the time; the
# 64 modes of largest |γ| of the MLP NTK of 9,320 views, second call: 7.9 s against 11.6 s for
# the whole iteration, which also orthonormalises and restarts). The model still counts the
# triangular flops; its rate was refitted with these products (below).
#
# The model compares against one eigh. On CPU the full route is the tridiagonal one
# (theory/_tridiagonal.py, 0.6-0.8× of eigh at 2n = 2000-9,320). Inverse iteration for the
# top-r vectors of the tridiagonal form alone (no divide and conquer) was measured too: it
# gives no mode's coordinates before its vector exists, so the mode count came from a rest
# bound that asked for 1.5-3× the modes, and whole solves gained nothing at 2n = 2000;
# divide and conquer on T gives every mode's coordinates for 0.03-0.14 s.
#
# Refitted with the faster products, against the tridiagonal route, on five kernels (CIFAR-10
# linear with crops and with noise views, the MLP NTK, random Fourier features, the synthetic
# ridge kernel), residual_rtol 1e-8, given the Cholesky factor: the iteration over the
# tridiagonal eigensystem for 64 modes 1.1-1.4 at 2n = 2000, 0.46-0.77 at 3000, 0.30-0.45 at
# 4000; 128 modes 1.9-4.0, 0.76-1.7, 0.40-1.0; 256 modes 2.9-6.1 at 3000, 1.4-3.2 at 4000.
# The restarts grow with the modes (smaller gaps deeper in the spectrum): 20 √(top/64). With
# a sixth of the eigensolver's rate the model gives 64 modes 2.1, 1.19, 0.81 at 2000-4000,
# 128 modes 1.42 at 4000, 256 modes 5.0 and 3.1: above the measurements everywhere, and
# crossing for 64 modes near 2n = 3500, since a solve on the partial route may need a
# quadrature of the modes not computed and a longer integration (whole default solves,
# d = 32, 2n = 3000: 1.76× the full route's time on the linear kernel, level on the ridge
# kernel; at 4000 the partial route was faster on all three kernels tried, at d = 8 from
# 3000 on all four).
_KRYLOV_RESTARTS = 20  # at 64 modes
_KRYLOV_INEFFICIENCY = 6.0  # at blocks of 64 columns
_KRYLOV_FULL_BLOCK = 64


def partial_cost(n_views: int, top: int) -> float:
    """Expected cost of ``top`` modes by block Krylov, as a fraction of the full decomposition's.

    Flop model: a restart costs ``q b · 6 (N/2)²`` (products with ``H``) ``+ q · 8 N m b``
    (two Gram–Schmidt passes against the basis of ``m = k + q b`` columns) ``+ 4 N m k``
    (Ritz vectors and their images), for ``k`` kept vectors, ``q`` blocks of ``b``
    (:func:`contrastive_eigensystem_from_factor`); ``20 √max(1, top/64)`` restarts at a
    sixth of the dense eigensolver's rate for blocks of 64 columns (``b/64`` of that for
    thinner blocks), against ``10 N³`` for the full decomposition. ``inf`` wherever the
    Krylov basis would not be small against ``N`` (``N < 1024`` included).

    Example:
        >>> round(partial_cost(9320, 64), 2), partial_cost(512, 64)
        (0.29, inf)
    """
    N = check_positive_int("n_views", n_views)
    top = check_positive_int("top", top)
    sizes = _krylov_sizes(N, top)
    if sizes is None:
        return math.inf
    k, b, q = sizes
    m = k + q * b
    per_restart = q * b * 6.0 * (N / 2.0) ** 2 + q * 8.0 * N * m * b + 4.0 * N * m * k
    slowdown = _KRYLOV_INEFFICIENCY * _KRYLOV_FULL_BLOCK / b
    restarts = _KRYLOV_RESTARTS * math.sqrt(max(1.0, top / _KRYLOV_FULL_BLOCK))
    return restarts * slowdown * per_restart / (10.0 * float(N) ** 3)


def partial_is_cheaper(n_views: int, top: int) -> bool:
    """Whether ``top`` modes by block Krylov are expected to cost less than all ``n_views``
    (:func:`partial_cost` below 1).

    Example:
        >>> partial_is_cheaper(3000, 64), partial_is_cheaper(4000, 64), partial_is_cheaper(4000, 128)
        (False, True, False)
    """
    return partial_cost(n_views, top) < 1.0


def contrastive_eigensystem_from_factor(
    L: jax.Array, tau: jax.Array, *, top: int | None = None, which: str = "largest",
    start: jax.Array | None = None, residual_rtol: float | None = None, max_restarts: int = 60,
    columns: Any = None, operator: PairGramOperator | None = None,
) -> ContrastiveEigensystem:
    """The contrastive eigensystem from ``L Lᵀ = K + τ I``: all modes, or the ``top`` first
    by ``which`` without a full eigendecomposition (see :func:`contrastive_eigensystem`),
    or, given ``columns``, all modes of the low-rank kernel ``L_S L_Sᵀ`` (``S`` = columns).

    Falls back to the full decomposition, and returns all ``2n`` modes, when that is as
    cheap (``2n < 1024`` or a Krylov basis not far below ``2n``) or when the iteration does
    not converge within ``max_restarts`` (``es.partial`` says which). A NaN factor (``K``
    not PSD) returns NaN ``gammas`` at once.

    Args:
      L: ``(2n, 2n)`` from :func:`jittered_cholesky`; tau: its jitter.
      top: how many modes (None: all).
      which: ``"largest"`` (the ``top`` largest ``γ``) or ``"magnitude"`` (the ``top``
        largest ``|γ|``, both signs: what the solver's truncation needs).
      start: optional ``(2n, s)`` vectors to start from (e.g. a smaller partial
        eigensystem's ``vectors``).
      residual_rtol: stop when every returned mode has ``‖H p − γ p‖ ≤ residual_rtol ·
        max|γ|`` (None: :func:`_default_residual_rtol`).
      max_restarts: restarts of the block Krylov iteration before the fall-back.
      columns: ``(p,)`` increasing column indices from :func:`low_rank_columns` (``top``,
        ``which`` and the Krylov settings are then unused): the ``p`` modes of
        ``H_S = L_Sᵀ Z L_S / (2n)``, exact for the kernel ``L_S L_Sᵀ``, ``vectors`` padded
        with zeros to ``(2n, p)`` so that ``L p_j`` are its mode functions; ``jitter`` is
        ``τ`` plus the dropped squared norms, and ``residuals`` None.
      operator: ``pair_gram_operator(L)`` where the caller has it (the Krylov iteration's
        products; None: formed here).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> X = jax.random.normal(jax.random.key(0), (40, 6))
        >>> L, tau = jittered_cholesky(X @ X.T, jnp.asarray(1e-6))
        >>> low = contrastive_eigensystem_from_factor(L, tau, columns=low_rank_columns(L, 1e-2))
        >>> full = contrastive_eigensystem_from_factor(L, tau)
        >>> g = full.gammas[jnp.argsort(-jnp.abs(full.gammas))[:6]]
        >>> bool(jnp.allclose(jnp.sort(low.gammas), jnp.sort(g), atol=1e-3)), low.partial
        (True, False)
    """
    check_choice("which", which, WHICH)
    N = L.shape[0]
    if columns is not None:
        columns = np.asarray(columns)
        if columns.ndim != 1 or columns.size == 0 or not np.issubdtype(columns.dtype, np.integer) \
                or np.any(np.diff(columns) <= 0) or columns[0] < 0 or columns[-1] >= N:
            raise ValueError(f"columns must be increasing indices in [0, {N}) (from low_rank_columns), "
                             f"got shape {columns.shape} and dtype {columns.dtype}.")
        return _low_rank_from_factor(L, tau, jnp.asarray(columns, jnp.int32))
    if top is None or top >= N:
        return _full_from_factor(L, tau)
    top = check_positive_int("top", top, hint=" (how many modes; None: all)")
    sizes = _krylov_sizes(N, top)
    if sizes is None or not bool(jnp.all(jnp.isfinite(jnp.diagonal(L)))):
        return _full_from_factor(L, tau)
    kept, block, depth = sizes
    rng = np.random.default_rng(0)
    V0 = rng.standard_normal((N, kept))
    if start is not None:
        s = min(start.shape[1], kept)
        V0[:, :s] = np.asarray(start[:, :s], np.float64)
    sketch = rng.standard_normal((kept, block))
    rtol = _default_residual_rtol(N, L.dtype) if residual_rtol is None else float(residual_rtol)
    op = pair_gram_operator(L) if operator is None else operator
    out = _krylov_modes(op, jnp.asarray(V0, L.dtype), jnp.asarray(sketch, L.dtype), jnp.asarray(rtol, L.dtype),
                        jnp.asarray(max_restarts, jnp.int32), r=top, depth=depth, which=which)
    if not bool(out.converged):
        return _full_from_factor(L, tau)
    return ContrastiveEigensystem(gammas=out.gammas, vectors=out.vectors, factor=L, jitter=tau,
                                  residuals=out.residuals, rest=out.rest)


class RestLanczos(NamedTuple):
    """Block Lanczos on the modes a partial eigensystem did not compute (a pytree of arrays).

    Attributes:
      basis: ``(2n, q d)`` orthonormal columns ``V``, orthogonal to the eigensystem's
        ``vectors``, spanning ``{B_rest, H_rest B_rest, …, H_rest^{q−1} B_rest}``.
      T: ``(q d, q d)`` ``Vᵀ H V`` (symmetric): its leading ``s d × s d`` block is the
        ``s``-step Lanczos matrix, for every ``s ≤ q``.
      R0: ``(d, d)`` with ``B_rest = V[:, :d] R0``.
      image: ``(2n, d)`` ``H`` times the newest block (where a longer iteration continues).
    """

    basis: jax.Array
    T: jax.Array
    R0: jax.Array
    image: jax.Array


def rest_lanczos(es: ContrastiveEigensystem, B: jax.Array, blocks: int,
                 previous: RestLanczos | None = None, operator: PairGramOperator | None = None) -> RestLanczos:
    """``blocks`` steps of block Lanczos on ``H_rest = (I − P Pᵀ) H (I − P Pᵀ)`` from
    ``B_rest = (I − P Pᵀ) B`` (``H = Lᵀ Z L / (2n)``, ``P = es.vectors``).

    The modes a partial eigensystem did not compute are the eigenpairs of ``H_rest`` (up to
    the returned modes' residuals), and a function of them enters the flow only through the
    moments ``B_restᵀ H_rest^s B_rest`` (docs/theory.md, *The other modes by quadrature*).
    With ``T_s`` the leading ``s d × s d`` block of ``T = S diag(θ) Sᵀ`` those moments are
    ``R0ᵀ (T_s^k)_{11} R0`` exactly for ``k ≤ 2s − 1`` (block Gauss quadrature). Full
    reorthogonalisation against ``P`` and every earlier block (Gram–Schmidt twice, Cholesky
    QR: :func:`_orthonormalize`); ``blocks · d`` products with ``H``.

    Args:
      es: a partial eigensystem (``vectors: (2n, r)`` orthonormal).
      B: ``(2n, d)`` coordinates ``L⁻¹ F`` of embeddings.
      blocks: ``q ≥ 1`` (``r + q d ≤ 2n``).
      previous: the same iteration's result for fewer blocks (same ``es`` and ``B``), to
        continue from: only the new blocks' products are computed.
      operator: ``pair_gram_operator(es.factor)`` where the caller has it (None: formed here).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> X = jax.random.normal(jax.random.key(0), (40, 40))
        >>> full = contrastive_eigensystem(X @ X.T, 20)
        >>> part = full._replace(vectors=full.vectors[:, :5], gammas=full.gammas[:5])
        >>> B = jax.random.normal(jax.random.key(1), (40, 2))
        >>> lz = rest_lanczos(part, B, 3)
        >>> P, g = full.vectors[:, 5:], full.gammas[5:]
        >>> exact = (P.T @ B).T @ (g[:, None] ** 3 * (P.T @ B))
        >>> T3 = jnp.linalg.matrix_power(lz.T, 3)[:2, :2]
        >>> bool(jnp.allclose(lz.R0.T @ T3 @ lz.R0, exact, rtol=1e-3, atol=1e-6 * float(jnp.max(jnp.abs(exact)))))
        True
    """
    N, d = B.shape
    r = es.vectors.shape[1]
    blocks = check_positive_int("blocks", blocks)
    if r + blocks * d > N:
        raise ValueError(f"{blocks} blocks of d = {d} and r = {r} computed modes exceed 2n = {N}; "
                         f"use blocks ≤ {(N - r) // d}.")
    done = 0 if previous is None else previous.basis.shape[1] // d
    if blocks <= done:
        return previous
    op = pair_gram_operator(es.factor) if operator is None else operator
    if previous is None:
        return _rest_lanczos_start(op, es.vectors, B, blocks)
    return _rest_lanczos_extend(op, es.vectors, previous, blocks - done)


@functools.partial(jax.jit, static_argnames=("blocks",))
def _rest_lanczos_start(op, P, B, blocks):
    with jax.default_matmul_precision("highest"):
        B_rest = B - P @ (P.T @ B)
        Q0 = _orthonormalize(B_rest, P)
        A0 = pair_gram_apply(op, Q0)
        V, AV = _lanczos_blocks(op, P, Q0, A0, blocks - 1)
        T = V.T @ AV
        R0 = Q0.T @ B_rest
    return RestLanczos(basis=V, T=(T + T.T) / 2, R0=R0, image=AV[:, -B.shape[1]:])


@functools.partial(jax.jit, static_argnames=("blocks",))
def _rest_lanczos_extend(op, P, previous, blocks):
    with jax.default_matmul_precision("highest"):
        n_old = previous.basis.shape[1]
        V, AV = _lanczos_blocks(op, P, previous.basis, previous.image, blocks)
        AV = AV[:, previous.image.shape[1]:]  # the new blocks' images
        cross = V.T @ AV  # (all, new)
        new = cross[n_old:]
        T = jnp.block([[previous.T, cross[:n_old]], [cross[:n_old].T, (new + new.T) / 2]])
    return previous._replace(basis=V, T=T, image=AV[:, -previous.image.shape[1]:])


def _lanczos_blocks(op, P, V, image, blocks):
    """``blocks`` more Lanczos blocks after the orthonormal basis ``V`` (orthogonal to ``P``)
    whose newest block has image ``image = H Q``: the grown basis and the images of
    ``image``'s block and the new ones."""
    Q, AQ = [V], [image]
    for _ in range(blocks):
        Qi = _orthonormalize(AQ[-1], jnp.concatenate([P] + Q, axis=1))
        Q.append(Qi)
        AQ.append(pair_gram_apply(op, Qi))
    return jnp.concatenate(Q, axis=1), jnp.concatenate(AQ, axis=1)


def low_rank_columns(L: jax.Array, tol: float) -> np.ndarray:
    """The columns of ``L`` to keep when those of smallest norm, while their squared norms
    sum to ``≤ tol``, are dropped (increasing indices, ``(p,)``).

    The dropped columns ``L_D`` move the kernel ``L Lᵀ`` by ``‖L_D L_Dᵀ‖₂ ≤ ‖L_D‖_F² ≤ tol``.
    For ``L Lᵀ = K + τ I`` with ``K`` of rank ``p`` those are the ``2n − p`` columns of norm
    ``~√τ`` (see the module docstring).

    Args:
      L: ``(2n, 2n)`` from :func:`jittered_cholesky`.
      tol: the largest sum of dropped squared column norms (≥ 0).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> X = jax.random.normal(jax.random.key(0), (40, 6))
        >>> L, tau = jittered_cholesky(X @ X.T, jnp.asarray(1e-6))
        >>> low_rank_columns(L, 1e-2).size
        6
    """
    tol = check_number("tol", tol, low=0.0)
    norms = np.asarray(jnp.sum(jnp.square(L), axis=0), dtype=np.float64)
    order = np.argsort(norms, kind="stable")
    n_drop = int(np.searchsorted(np.cumsum(norms[order]), tol, side="right"))
    return np.sort(order[n_drop:])


@jax.jit
def _low_rank_from_factor(L, tau, columns):
    with jax.default_matmul_precision("highest"):
        N = L.shape[0]
        n = N // 2
        Ls = L[:, columns]
        # Summed over the dropped columns themselves: a difference of totals would lose them
        # in the round-off of tr K.
        kept = jnp.zeros((N,), bool).at[columns].set(True)
        dropped = jnp.sum(jnp.where(kept, 0.0, jnp.sum(jnp.square(L), axis=0)))
        A = Ls[:n].T @ Ls[n:]  # L_Sᵀ Z L_S = A + Aᵀ: half the flops of the product
        w, P = jnp.linalg.eigh((A + A.T) / N, symmetrize_input=False)
        vectors = jnp.zeros((N, columns.shape[0]), L.dtype).at[columns].set(P[:, ::-1])
    return ContrastiveEigensystem(gammas=w[::-1], vectors=vectors, factor=L, jitter=tau + dropped,
                                  residuals=None, rest=jnp.zeros((), L.dtype))


def _truncate(es: ContrastiveEigensystem, top: int, which: str, vectors_of: Any = None) -> ContrastiveEigensystem:
    """The ``top`` modes of a full eigensystem by ``which`` (exact: residuals of the dense
    eigensolver, ``rest`` the next value by the ranking); ``vectors_of(sel)`` forms the
    selected eigenvectors where ``es.vectors`` is None (the tridiagonal route)."""
    g = es.gammas
    key = jnp.abs(g) if which == "magnitude" else g
    order = jnp.argsort(-key)
    sel = jnp.sort(order[:top])  # descending γ, as the full eigensystem
    H_res = jnp.zeros((top,), g.dtype)
    rest = key[order[top]] if top < g.shape[0] else jnp.zeros((), g.dtype)
    vectors = es.vectors[:, sel] if vectors_of is None else vectors_of(sel)
    return ContrastiveEigensystem(gammas=g[sel], vectors=vectors, factor=es.factor,
                                  jitter=es.jitter, residuals=H_res, rest=rest)


def contrastive_eigensystem(K: Any, n_pairs: int, *, jitter_rtol: float | None = None, top: int | None = None,
                            which: str = "largest") -> ContrastiveEigensystem:
    """Contrastive eigenvalues ``γ_j`` (descending) and what evaluates the mode functions.

    ``γ_j`` are the eigenvalues of ``K Z / (2n)`` (docs/theory.md), computed as those of
    ``H = Lᵀ Z L / (2n)`` with ``L Lᵀ = K + τ I`` (Cholesky, ``τ`` = jitter; see the module
    docstring for the tolerance and why it is safe for rank-deficient ``K``).

    With ``top = r`` only ``r`` modes are computed, without an eigendecomposition of ``H``:
    a thick-restarted block Krylov iteration on products with ``H`` (``6 n² b`` flops for
    ``b`` vectors, never forming ``H``), from a seeded random start, until every returned
    mode has residual ``‖H p_j − γ_j p_j‖₂ ≤ 30 √N eps · max|γ|`` (at least ``1e-10``;
    ``es.residuals``, each a bound on its ``γ_j``'s error). Cost ``(2n)³/3`` (Cholesky) plus
    ``O((2n)² r)`` per restart, against ``≈ 11 (2n)³`` for the full route; for small
    problems (``2n < 1024``), a Krylov basis not far below ``2n``, or no convergence, the
    full decomposition is computed and truncated (on CPU, where a Krylov basis would not
    be small, through its tridiagonal form with only the ``r`` eigenvectors formed:
    :func:`~stepwise_ntk.theory.tridiagonal_eigensystem`). As for every Krylov method a mode
    orthogonal to the random start could in principle be missed (probability zero).

    Args:
      K: ``(2n, 2n)`` symmetric PSD Gram matrix of the views ``[x_1..x_n, x'_1..x'_n]``,
        float32 or float64.
      n_pairs: ``n``.
      jitter_rtol: ``τ / max_i K_ii``; None for ``2n · eps(dtype)``.
      top: how many modes (None: all ``2n``).
      which: with ``top``: ``"largest"`` (the ``top`` largest ``γ``) or ``"magnitude"``
        (the ``top`` largest ``|γ|``, including the most negative ``γ``: view-dependent
        directions).

    Returns:
      :class:`ContrastiveEigensystem` (``gammas: (r,)``, ``vectors: (2n, r)``). Evaluate
      modes with :func:`mode_functions` (views) and :func:`mode_functions_new` (new inputs,
      from ``K_test = K(test, views)``).

    Raises:
      TypeError: ``n_pairs`` or ``top`` not an int, ``jitter_rtol`` not a number.
      ValueError: bad shape/dtype, NaN/Inf, asymmetric, or not PSD within the tolerance.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> X = jax.random.normal(jax.random.key(0), (40, 6))
        >>> full = contrastive_eigensystem(X @ X.T, 20)
        >>> part = contrastive_eigensystem(X @ X.T, 20, top=3)
        >>> bool(jnp.allclose(part.gammas, full.gammas[:3]))
        True
    """
    n_pairs = check_n_pairs(n_pairs)
    K = check_kernel(K, n_pairs)
    dtype = K.dtype
    if jitter_rtol is None:
        jitter_rtol = default_jitter_rtol(n_pairs, dtype)
    else:
        jitter_rtol = check_number("jitter_rtol", jitter_rtol, low=0.0, hint=" (or None for 2n · eps)")
    check_choice("which", which, WHICH)
    if top is not None:
        top = check_int("top", top, low=1, high=2 * n_pairs, hint=" (how many modes; None: all)")
    if not is_concrete(K):
        es = contrastive_eigensystem_core(K, jnp.asarray(jitter_rtol, dtype))
        return es if top is None else _truncate(es, top, which)
    L, tau = jittered_cholesky(K, jnp.asarray(jitter_rtol, dtype))
    check_factorization(ContrastiveEigensystem(jnp.diagonal(L), L, L, tau), K)
    if top is not None and _krylov_sizes(K.shape[0], top) is None and tridiagonal_available(L):
        # The Krylov iteration would return the full decomposition: on CPU its tridiagonal
        # form gives every γ and forms only the selected eigenvectors.
        tri = tridiagonal_eigensystem(L, tau)
        es = ContrastiveEigensystem(gammas=tri.gammas, vectors=None, factor=L, jitter=tau, residuals=None,
                                    rest=jnp.zeros((), dtype))
        return _truncate(es, top, which, vectors_of=lambda sel: tri.vectors(np.asarray(sel)))
    es = contrastive_eigensystem_from_factor(L, tau, top=top, which=which)
    return es if top is None or es.partial else _truncate(es, top, which)


def check_factorization(es: ContrastiveEigensystem, K: jax.Array) -> None:
    """Raise the PSD ValueError when the Cholesky factor of ``K + τ I`` failed.

    The message tells round-off (``λ_min(K)`` small against ``‖K‖₂``: a larger jitter
    helps) from a matrix that is not a kernel Gram matrix (a jitter would not help).
    """
    if bool(jnp.all(jnp.isfinite(es.gammas))) and bool(jnp.all(jnp.isfinite(jnp.diagonal(es.factor)))):
        return
    lam = np.linalg.eigvalsh(np.asarray(K, dtype=np.float64))
    lam_min, scale = float(lam[0]), float(max(np.max(np.abs(lam)), 1e-300))
    tau = float(es.jitter)
    eps = float(np.finfo(np.dtype(K.dtype)).eps)
    head = (f"K is not positive semi-definite within the tolerance: its smallest eigenvalue is "
            f"{lam_min:.3g} (−τ = {-tau:.3g}, τ = jitter_rtol × max K_ii; ‖K‖₂ = {scale:.3g}), so "
            f"K + τI has no Cholesky factor.")
    if lam_min < -1e3 * K.shape[0] * eps * scale:
        raise ValueError(
            f"{head} The negative part ({-lam_min / scale:.1%} of ‖K‖₂) is far above round-off: "
            f"this is not a kernel Gram matrix (a kernel K[i, j] = k(x_i, x_j) is PSD). Check how "
            f"K was built (a sign, a difference of kernels, a non-PSD similarity)."
        )
    diag = float(np.max(np.diagonal(np.asarray(K, dtype=np.float64))))
    ref = diag if diag > 0 else scale
    suggestion = max(2.0 * abs(min(lam_min, 0.0)), 10.0 * tau, eps * scale) / ref
    raise ValueError(
        f"{head} The negative part is round-off: recompute K in float64, or pass a larger "
        f"jitter_rtol (e.g. {suggestion:.1g})."
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


def mode_coordinates(es: ContrastiveEigensystem, F: jax.Array, *, B: jax.Array | None = None,
                     image: jax.Array | None = None) -> jax.Array:
    """Coordinates ``M`` of view embeddings in the mode basis: ``F = L P Mᵀ``, ``M: (d, N)``.

    Column ``j`` of ``M`` is ``m_j = W u_j`` in docs/theory.md's notation (the projection of the
    embedding onto mode ``j``), so ``C = Fᵀ Z F / (2n) = M diag(γ) Mᵀ`` (up to the jitter)
    and, for aligned initialisation, ``λ_j = γ_j ‖m_j‖²``.

    ``m_j = p_jᵀ L⁻¹ F``. For the computed vectors of a partial eigensystem (``es.residuals``
    not None) it is taken as ``m_j = p_jᵀ H L⁻¹F / γ_j = (L p_j)ᵀ Z F / (2n γ_j)``, equal
    for an exact eigenvector: a vector's error along modes with ``γ ≈ 0`` meets ``L⁻¹ F``
    there, which is as large as ``‖F‖/√τ`` where ``F`` leaves the range of ``K``, and the
    second form weighs it by those ``γ`` (modes with ``|γ|`` below
    :func:`gamma_tolerance` keep the first).

    Args:
      es: the eigensystem.
      F: ``(2n, d)`` embeddings of the views.
      B: ``L⁻¹ F``, ``(2n, d)``, where the caller has it (None: solved here).
      image: ``Lᵀ Z F / (2n)``, ``(2n, d)``, where the caller has it (partial eigensystems;
        None: formed here).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> X = jax.random.normal(jax.random.key(0), (40, 6), dtype=jnp.float32)
        >>> es = contrastive_eigensystem(X @ X.T, 20)
        >>> F = 1e-2 * X[:, :3]
        >>> M = mode_coordinates(es, F)
        >>> bool(jnp.allclose(es.factor @ es.vectors @ M.T, F, atol=1e-5))
        True
    """
    if B is None:
        B = jax.scipy.linalg.solve_triangular(es.factor, F, lower=True)
    M = es.vectors.T @ B
    if es.residuals is not None:
        if image is None:
            image = es.factor.T @ swap_pairs(F) / F.shape[0]
        g = es.gammas[:, None]
        big = jnp.abs(g) > gamma_tolerance(es)
        M = jnp.where(big, (es.vectors.T @ image) / jnp.where(big, g, 1.0), M)
    return M.T


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
    N = es.factor.shape[0]
    return jnp.maximum(10.0 * es.jitter / N, 100.0 * eps * jnp.abs(es.gammas[0]))


def check_enough_modes(es: ContrastiveEigensystem, d: int) -> None:
    """ValueError unless ``γ_d`` is positive beyond :func:`gamma_tolerance` (concrete ``es`` only).

    With fewer than ``d`` positive ``γ`` the Barlow Twins loss cannot reach zero: ``C`` can
    have at most as many positive eigenvalues as ``K Z`` has.
    """
    d = check_positive_int("d", d, hint=" (the embedding dimension)")
    N = es.factor.shape[0]
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
