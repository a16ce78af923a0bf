"""How close a trained network is to its kernel theory: pure comparison metrics.

* :func:`subspace_alignment` / :func:`principal_cosines`: how well two sets of embeddings
  of the same inputs span the same subspace (the theory fixes the final embeddings only
  up to an orthogonal ``d × d`` rotation, so subspaces, not coordinates, are compared);
* :func:`stepwise_ntk.theory.procrustes_error`: the coordinates themselves, after the best
  rotation (and, with ``scale=True``, the best positive scale);
* :func:`compare_embeddings`: both at once, e.g. for embeddings learned with two losses;
* :func:`step_time_ratios`: per-mode step times (eigenvalue of ``C`` crossing 1/2) of a
  network over those of the theory;
* :func:`eigenvalue_trajectory_error`: the eigenvalue curves ``λ_j(t)`` against each other
  on a common log-spaced effective-time grid.

Embedding metrics take ``(m, d)`` arrays (rows: inputs) and are jit-able (value checks run on
concrete inputs only); the trajectory metrics work on host records (numpy).

Example::

    >>> import numpy as np
    >>> A = np.random.default_rng(0).normal(size=(50, 3))
    >>> R, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(3, 3)))
    >>> round(float(subspace_alignment(A, 2.0 * A @ R)), 6)
    1.0
"""

from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from stepwise_ntk._checks import check_array, check_int, check_number, is_concrete
from stepwise_ntk.theory import procrustes_error

__all__ = [
    "crossing_times",
    "plateau_losses",
    "EmbeddingComparison",
    "TrajectoryError",
    "compare_embeddings",
    "eigenvalue_trajectory_error",
    "principal_cosines",
    "step_time_ratios",
    "subspace_alignment",
]


def crossing_times(times: np.ndarray, eigenvalues: np.ndarray, level: float = 0.5) -> np.ndarray:
    """First time each eigenvalue column crosses ``level`` (log-time interpolation), NaN if never.

    Args:
      times: (T,) increasing, positive.
      eigenvalues: (T, d).
    """
    times = np.asarray(times, np.float64)
    out = np.full(eigenvalues.shape[1], np.nan)
    for j in range(eigenvalues.shape[1]):
        lam = np.asarray(eigenvalues[:, j], np.float64)
        above = np.flatnonzero(lam >= level)
        if above.size == 0:
            continue
        k = above[0]
        if k == 0:
            out[j] = times[0]
            continue
        lo, hi = lam[k - 1], lam[k]
        w = (level - lo) / (hi - lo)
        out[j] = np.exp(np.log(times[k - 1]) + w * (np.log(times[k]) - np.log(times[k - 1])))
    return out


def plateau_losses(times: np.ndarray, loss: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """Loss at the log-midpoints between consecutive sorted step times, ``(d − 1,)``."""
    steps = np.sort(np.asarray(steps, np.float64))
    mids = np.sqrt(steps[:-1] * steps[1:])
    return np.interp(np.log(mids), np.log(np.asarray(times, np.float64)), np.asarray(loss, np.float64))


_EMBEDDINGS = "a non-empty (m, d) array of embeddings (rows: inputs)"


def _as_embeddings(name: str, A: Any) -> jax.Array:
    A = jnp.asarray(check_array(name, A, ndim=2, min_rows=1, what=_EMBEDDINGS,
                                hint="compare finite embeddings only (a diverged run?)."))
    if A.shape[1] < 1:
        raise ValueError(f"{name} must be {_EMBEDDINGS}, got shape {A.shape}.")
    return A


def _same_rows(A: jax.Array, B: jax.Array) -> None:
    if A.shape[0] != B.shape[0]:
        raise ValueError(
            f"A and B must embed the same inputs (same number of rows), got {A.shape[0]} and {B.shape[0]} rows."
        )
    if A.dtype != B.dtype:
        raise ValueError(f"A has dtype {A.dtype} but B has {B.dtype}; cast both to one dtype (e.g. float64).")


def _check_columns(name: str, A: jax.Array) -> None:
    m, d = A.shape
    if d > m:
        raise ValueError(
            f"{name} has {d} columns but only {m} rows: d columns cannot be independent in R^{m}. "
            f"Use at least d inputs (rows)."
        )


def _check_rank(name: str, s: np.ndarray, shape: tuple[int, int], dtype: Any) -> None:
    """ValueError unless the singular values ``s`` (descending) of an (m, d) matrix give rank d."""
    m, d = shape
    tol = max(m, d) * float(jnp.finfo(dtype).eps) * float(s[0]) if s[0] > 0 else 0.0
    rank = int(np.sum(s > tol))
    if rank < d:
        raise ValueError(
            f"{name} has rank {rank} < its {d} columns (singular values {np.array2string(s, precision=3)}), "
            f"so its column space is not {d}-dimensional and the principal angles are undefined. Drop the "
            f"dependent columns (e.g. keep the top-{rank} principal components) or check for collapsed embeddings."
        )


@jax.jit
def _cosines(A: jax.Array, B: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Cosines (singular values of ``Q_Aᵀ Q_B``) and the singular values of ``R_A``, ``R_B``
    (= those of ``A``, ``B``: the rank check)."""
    QA, RA = jnp.linalg.qr(A)
    QB, RB = jnp.linalg.qr(B)
    svals = partial(jnp.linalg.svd, compute_uv=False)
    return svals(QA.T @ QB), svals(RA), svals(RB)


def principal_cosines(A: Any, B: Any) -> jax.Array:
    """Cosines of the principal angles between the column spaces of ``A`` and ``B``.

    With ``Q_A``, ``Q_B`` orthonormal bases of the column spaces (QR), the cosines are the
    singular values of ``Q_Aᵀ Q_B`` (Björck & Golub 1973): ``cos θ_1 ≥ … ≥ cos θ_k``,
    ``k = min(d, d')``.

    Args:
      A: ``(m, d)`` embeddings of ``m`` inputs (full column rank).
      B: ``(m, d')`` embeddings of the same inputs, same dtype.

    Returns:
      ``(min(d, d'),)`` cosines in ``[0, 1]``, descending.

    Raises:
      ValueError: shapes/dtypes differ, NaN/Inf, or a matrix of deficient column rank.
    """
    A, B = _as_embeddings("A", A), _as_embeddings("B", B)
    _same_rows(A, B)
    _check_columns("A", A)
    _check_columns("B", B)
    cos, sa, sb = _cosines(A, B)
    if is_concrete(sa):
        _check_rank("A", np.asarray(sa), A.shape, A.dtype)
        _check_rank("B", np.asarray(sb), B.shape, B.dtype)
    return jnp.clip(cos, 0.0, 1.0)  # round-off can put a cosine a few eps above 1


def subspace_alignment(A: Any, B: Any) -> jax.Array:
    """Mean squared cosine of the principal angles between the column spaces of ``A`` and ``B``.

    ``a(A, B) = (1/k) Σ_i cos² θ_i = ‖Q_Aᵀ Q_B‖²_F / k``, ``k = min(d, d')`` (see
    :func:`principal_cosines`). It is invariant to any invertible ``d × d`` change of
    coordinates of either side (rotation, scaling), is 1 exactly when one column space
    contains the other, and 0 when they are orthogonal. For ``B`` spanning a uniformly random
    ``d'``-dimensional subspace of ``R^m`` its mean is ``max(d, d')/m`` (``d/m`` for
    ``d = d'``): ``E‖Q_Aᵀ Q_B‖²_F = d d'/m``.

    Args:
      A: ``(m, d)`` embeddings of ``m`` inputs, e.g. a network's on held-out views.
      B: ``(m, d')`` embeddings of the same inputs, e.g. the predicted top-``d`` modes.

    Returns:
      scalar in ``[0, 1]``.

    Example::

        >>> import numpy as np
        >>> A = np.eye(4)[:, :2]; B = np.eye(4)[:, 1:3]
        >>> float(subspace_alignment(A, B))        # one shared direction out of two
        0.5
    """
    c = principal_cosines(A, B)
    return jnp.mean(jnp.square(c))


class EmbeddingComparison(NamedTuple):
    """Agreement of two embeddings of the same inputs (:func:`compare_embeddings`).

    Attributes:
      alignment: :func:`subspace_alignment`.
      cosines: :func:`principal_cosines`, descending.
      procrustes_error: :func:`stepwise_ntk.theory.procrustes_error` (rotation only).
      scaled_procrustes_error: the same with the best positive scale.
    """

    alignment: jax.Array
    cosines: jax.Array
    procrustes_error: jax.Array
    scaled_procrustes_error: jax.Array


def compare_embeddings(A: Any, B: Any) -> EmbeddingComparison:
    """Subspace alignment and Procrustes errors of ``A`` against ``B`` (same inputs, same shape).

    The cross-method comparison: ``A`` and ``B`` learned from the same views with two
    different losses (e.g. Barlow Twins and VICReg, by networks or by the kernel solver),
    evaluated on the same held-out views. The alignment says whether they found the same
    subspace; the scaled Procrustes error whether, up to rotation and overall size, they
    are the same map.

    Args:
      A, B: ``(m, d)`` embeddings of the same ``m`` inputs, same dtype.
    """
    cos = principal_cosines(A, B)
    return EmbeddingComparison(
        alignment=jnp.mean(jnp.square(cos)),
        cosines=cos,
        procrustes_error=procrustes_error(A, B),
        scaled_procrustes_error=procrustes_error(A, B, scale=True),
    )


# ------------------------------------------------------------------------------ trajectories


def _as_records(name: str, times: Any, eigs: Any) -> tuple[np.ndarray, np.ndarray]:
    """Host float64 records at positive times (step 0 has no place on a log-time axis)."""
    t = np.asarray(times, np.float64)
    lam = np.asarray(eigs, np.float64)
    if t.ndim != 1 or lam.ndim != 2 or lam.shape[0] != t.shape[0]:
        raise ValueError(
            f"{name}: times must be (T,) and eigenvalues (T, d) with the same T, got {t.shape} and {lam.shape}."
        )
    hint = "pass only the finite records (a diverged run keeps its records before the divergence)."
    check_array(f"{name} times", t, hint=hint)
    check_array(f"{name} eigenvalues", lam, hint=hint)
    if t.size > 1 and not np.all(np.diff(t) > 0):
        raise ValueError(f"{name}: times must be strictly increasing.")
    keep = t > 0
    if np.count_nonzero(keep) < 2:
        raise ValueError(f"{name}: need at least two records at times > 0, got {np.count_nonzero(keep)}.")
    return t[keep], lam[keep]


def step_time_ratios(
    net_times: Any, net_eigs: Any, theory_times: Any, theory_eigs: Any, *, level: float = 0.5
) -> np.ndarray:
    """Per-mode step times of a network over those of the theory, ``(d,)``.

    The ``j``-th step time is when the ``j``-th largest eigenvalue of ``C`` first crosses
    ``level`` (1/2: the midpoint of a sigmoidal step ``λ: 0 → 1``), interpolated linearly
    between records in ``log t`` (``crossing_times``). The ratio is
    ``t_j^net / t_j^theory``; 1 means the network steps exactly when the kernel model does.
    NaN where either curve never crosses (that mode has not been learned within the
    records; extend the run). Records at ``t ≤ 0`` (step 0) are not used: the axis is
    ``log t``; a curve already above ``level`` at its first positive record gets that time.

    Args:
      net_times: ``(T1,)`` effective times (learning rate × step) of the network's records.
      net_eigs: ``(T1, d)`` eigenvalues of ``C``, descending in each row.
      theory_times: ``(T2,)`` times of the theory curves (same time units).
      theory_eigs: ``(T2, d)`` theory eigenvalues, descending (e.g. the solver's).
      level: crossing level in ``(0, 1)``.
    """
    t1, l1 = _as_records("network", net_times, net_eigs)
    t2, l2 = _as_records("theory", theory_times, theory_eigs)
    if l1.shape[1] != l2.shape[1]:
        raise ValueError(f"network has d = {l1.shape[1]} eigenvalues but the theory {l2.shape[1]}; use the same d.")
    check_number("level", level, low=0, high=1, open_low=True, open_high=True,
                 hint=" (the eigenvalues step from 0 to 1)")
    return crossing_times(t1, l1, level) / crossing_times(t2, l2, level)


class TrajectoryError(NamedTuple):
    """Difference of two eigenvalue trajectories on a common grid (:func:`eigenvalue_trajectory_error`).

    Attributes:
      max_abs: ``max_{t, j} |Δλ_j(t)|``.
      rms: ``sqrt(mean_{t, j} Δλ_j(t)²)``.
      per_mode_max: ``(d,)`` ``max_t |Δλ_j(t)|``.
      times: ``(G,)`` the common log-spaced grid.
      difference: ``(G, d)`` ``λ^net − λ^theory`` on it.
    """

    max_abs: float
    rms: float
    per_mode_max: np.ndarray
    times: np.ndarray
    difference: np.ndarray


def eigenvalue_trajectory_error(
    net_times: Any, net_eigs: Any, theory_times: Any, theory_eigs: Any, *, n_grid: int = 200
) -> TrajectoryError:
    """``λ^net_j(t) − λ^theory_j(t)`` on a common log-spaced effective-time grid.

    Both curves are interpolated linearly in ``log t`` onto ``n_grid`` points spaced evenly
    in ``log t`` over the overlap of their (positive) time ranges; then
    ``max = max |Δλ|`` and ``rms = sqrt(mean Δλ²)`` over grid points and modes. The
    eigenvalues are compared rank by rank (largest with largest), as in
    :func:`step_time_ratios`. Log spacing weighs every decade of time equally, which is where
    the steps are (each step is a sigmoid in ``log t`` at small initialisation).

    Args:
      net_times: ``(T1,)`` effective times (learning rate × step) of the network's records.
      net_eigs: ``(T1, d)`` eigenvalues of ``C``.
      theory_times: ``(T2,)``; theory_eigs: ``(T2, d)`` (e.g. the solver's trajectory).
      n_grid: number of grid points (≥ 2).

    Raises:
      ValueError: no overlap of the two time ranges, mismatched ``d``, NaN/Inf records.
    """
    t1, l1 = _as_records("network", net_times, net_eigs)
    t2, l2 = _as_records("theory", theory_times, theory_eigs)
    if l1.shape[1] != l2.shape[1]:
        raise ValueError(f"network has d = {l1.shape[1]} eigenvalues but the theory {l2.shape[1]}; use the same d.")
    check_int("n_grid", n_grid, low=2)
    lo, hi = max(t1[0], t2[0]), min(t1[-1], t2[-1])
    if not lo < hi:
        raise ValueError(
            f"the time ranges do not overlap: network [{t1[0]:.3g}, {t1[-1]:.3g}], theory [{t2[0]:.3g}, "
            f"{t2[-1]:.3g}]; evaluate the theory at the network's effective times (learning rate × step)."
        )
    grid = np.geomspace(lo, hi, int(n_grid))
    lg = np.log(grid)
    a = np.stack([np.interp(lg, np.log(t1), l1[:, j]) for j in range(l1.shape[1])], axis=1)
    b = np.stack([np.interp(lg, np.log(t2), l2[:, j]) for j in range(l2.shape[1])], axis=1)
    diff = a - b
    return TrajectoryError(
        max_abs=float(np.max(np.abs(diff))),
        rms=float(np.sqrt(np.mean(np.square(diff)))),
        per_mode_max=np.max(np.abs(diff), axis=0),
        times=grid,
        difference=diff,
    )
