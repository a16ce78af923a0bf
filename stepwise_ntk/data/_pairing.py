"""The pairing convention and the input checks shared by the theory and the solver.

All 2n views are stacked as ``X = [x_1 … x_n, x'_1 … x'_n]``: row ``i`` and row ``n + i``
are the two views of image ``i``. The pair-swap matrix ``Z`` (``Z[i, n+i] = Z[n+i, i] = 1``)
is never built: ``Z @ A`` is :func:`swap_pairs` (exchange the two halves of ``A``'s rows),
``O(n·d)`` instead of ``O(n²·d)``.

The checks raise ``ValueError`` messages that say what is wrong and how to fix it. Shape
checks always run; value checks (finite, symmetric, increasing) run on concrete arrays
and are skipped for tracers (inside an outer ``jax.jit``), where values are unknown.

Example::

    >>> import jax.numpy as jnp
    >>> A = jnp.arange(8.0).reshape(4, 2)           # n = 2 pairs, d = 2
    >>> swap_pairs(A).tolist()
    [[4.0, 5.0], [6.0, 7.0], [0.0, 1.0], [2.0, 3.0]]
"""

from __future__ import annotations

import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "check_embeddings",
    "check_kernel",
    "check_n_pairs",
    "check_times",
    "is_concrete",
    "pair_gram",
    "swap_pairs",
]


def swap_pairs(A: jax.Array) -> jax.Array:
    """``Z @ A`` without building ``Z``: the two halves of ``A``'s rows exchanged.

    Args:
      A: ``(2n, ...)`` array in the pairing order.

    Returns:
      ``(2n, ...)`` array ``[A[n:], A[:n]]``.
    """
    n = A.shape[0] // 2
    return jnp.concatenate([A[n:], A[:n]], axis=0)


def pair_gram(F: jax.Array, G: jax.Array | None = None) -> jax.Array:
    """``Fᵀ Z G`` (``d × e``) from the two halves, without building ``Z``.

    ``Fᵀ Z G = F_aᵀ G_b + F_bᵀ G_a`` with ``F_a = F[:n]`` and ``F_b = F[n:]``; for
    ``G = F`` it is symmetric and equals ``2n · C`` (see :func:`cross_correlation`).

    Args:
      F: ``(2n, d)``.
      G: ``(2n, e)`` or None (then ``G = F``).
    """
    G = F if G is None else G
    n = F.shape[0] // 2
    return F[:n].T @ G[n:] + F[n:].T @ G[:n]


def is_concrete(x: Any) -> bool:
    """True when ``x`` holds values (not a tracer inside ``jax.jit``)."""
    return not isinstance(x, jax.core.Tracer)


def check_n_pairs(n_pairs: Any) -> int:
    """``n_pairs`` as a positive Python int, or a ValueError."""
    if isinstance(n_pairs, bool) or not isinstance(n_pairs, numbers.Integral) or n_pairs < 1:
        raise ValueError(
            f"n_pairs must be a positive integer (the number of images; the views are "
            f"[x_1..x_n, x'_1..x'_n], 2n rows), got {n_pairs!r}."
        )
    return int(n_pairs)


def _float_dtype(x: Any, name: str) -> np.dtype:
    dtype = np.dtype(x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype)
    if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(
            f"{name} must be float32 or float64, got dtype {dtype}. Convert it, e.g. "
            f"{name}.astype(jnp.float64) (float64 needs jax_enable_x64)."
        )
    return dtype


def _all_finite(x: jax.Array) -> bool:
    return bool(jnp.all(jnp.isfinite(x)))


def check_kernel(K: Any, n_pairs: int, name: str = "K", *, sym_rtol: float | None = None) -> jax.Array:
    """Validate a Gram matrix on the 2n views: square ``(2n, 2n)``, float, finite, symmetric.

    Symmetry is checked as ``max|K − Kᵀ| ≤ sym_rtol · max|K|`` with default
    ``sym_rtol = 1000 · eps(dtype)`` (round-off of kernels computed in blocks or in float32
    passes; a real asymmetry does not). Positive semi-definiteness is checked later by the
    factorisation (:func:`stepwise_ntk.theory.contrastive_eigensystem`).

    Returns:
      ``K`` as a JAX array (not symmetrised; callers use ``(K + Kᵀ)/2``).
    """
    dtype = _float_dtype(K, name)
    K = jnp.asarray(K)
    N = 2 * n_pairs
    if K.ndim != 2 or K.shape[0] != K.shape[1]:
        raise ValueError(f"{name} must be a square (2n, 2n) matrix, got shape {K.shape}.")
    if K.shape[0] != N:
        raise ValueError(
            f"{name} has shape {K.shape} but n_pairs={n_pairs} needs ({N}, {N}): the views "
            f"are stacked as [x_1..x_n, x'_1..x'_n]. Pass the Gram matrix of all 2n views or "
            f"fix n_pairs (= {K.shape[0] // 2} for this K)."
        )
    if is_concrete(K):
        if not _all_finite(K):
            bad = int(jnp.sum(~jnp.isfinite(K)))
            raise ValueError(
                f"{name} contains {bad} NaN or Inf entries. Recompute the kernel (in float64, "
                f"or with a smaller batch / learning rate if it came from training)."
            )
        tol = (1000.0 * float(np.finfo(dtype).eps) if sym_rtol is None else float(sym_rtol))
        scale = float(jnp.max(jnp.abs(K)))
        asym = float(jnp.max(jnp.abs(K - K.T)))
        if asym > tol * scale:
            raise ValueError(
                f"{name} is not symmetric: max|K − Kᵀ| = {asym:.3g} > {tol:.1g} × max|K| "
                f"= {tol * scale:.3g}. A kernel Gram matrix K[i, j] = k(x_i, x_j) is symmetric; "
                f"check the row/column order, or symmetrise it yourself with (K + K.T) / 2 if "
                f"the asymmetry is round-off."
            )
    return K


def check_embeddings(F: Any, n_pairs: int, name: str = "F0", *, dtype: Any = None) -> jax.Array:
    """Validate embeddings of the 2n views: ``(2n, d)``, float, finite, same dtype as K."""
    got = _float_dtype(F, name)
    F = jnp.asarray(F)
    N = 2 * n_pairs
    if F.ndim != 2:
        raise ValueError(f"{name} must be a (2n, d) matrix (one row per view), got shape {F.shape}.")
    if F.shape[0] != N:
        raise ValueError(
            f"{name} has {F.shape[0]} rows but the kernel has 2n = {N} views; {name} must hold "
            f"the initial embeddings of the same views in the same order [x_1..x_n, x'_1..x'_n]."
        )
    if F.shape[1] < 1:
        raise ValueError(f"{name} must have at least one embedding dimension, got shape {F.shape}.")
    if dtype is not None and got != np.dtype(dtype):
        raise ValueError(
            f"{name} has dtype {got} but the kernel has dtype {np.dtype(dtype)}; use one dtype "
            f"for both (e.g. {name}.astype(K.dtype))."
        )
    if is_concrete(F) and not _all_finite(F):
        raise ValueError(f"{name} contains NaN or Inf entries; pass finite initial embeddings.")
    return F


def check_times(times: Any, dtype: Any) -> jax.Array:
    """Validate output times: 1-D, non-empty, finite, ≥ 0 and strictly increasing."""
    t = jnp.asarray(times)
    if t.ndim != 1 or t.shape[0] < 1:
        raise ValueError(
            f"times must be a non-empty 1-D array of output times, got shape {t.shape}; "
            f"e.g. jnp.geomspace(1e-2, 1e4, 200)."
        )
    if not jnp.issubdtype(t.dtype, jnp.floating) and not jnp.issubdtype(t.dtype, jnp.integer):
        raise ValueError(f"times must be real numbers, got dtype {t.dtype}.")
    t = t.astype(dtype)
    if is_concrete(t):
        tn = np.asarray(t)
        if not np.all(np.isfinite(tn)):
            raise ValueError("times contains NaN or Inf; pass finite output times.")
        if tn[0] < 0:
            raise ValueError(f"times must be ≥ 0 (time starts at 0), got times[0] = {tn[0]}.")
        if tn.shape[0] > 1 and not np.all(np.diff(tn) > 0):
            i = int(np.argmin(np.diff(tn) > 0))
            raise ValueError(
                f"times must be strictly increasing, but times[{i}] = {tn[i]} ≥ "
                f"times[{i + 1}] = {tn[i + 1]}; sort them and drop duplicates "
                f"(np.unique does both)."
            )
    return t
