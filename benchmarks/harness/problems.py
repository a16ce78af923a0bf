"""Problems shared by the cases: kernels on positive pairs, a small initialisation, a time grid.

* :func:`linear_kernel_problem` — the paper's linear-model setting: flattened CIFAR-10
  views (two augmentations of each of n images, 3072 features), ``K = X Xᵀ`` with
  ``X`` scaled by ``1/√m``, ``F0 = X W0ᵀ`` from a small random ``W0`` (so parameter-space
  gradient descent on ``W`` is the same flow), and log-spaced times from well before the
  first step to 1.5 × the theory's last step time. Without the dataset it falls back to
  synthetic "images" with a power-law feature spectrum (``source`` says which).
* :func:`mlp_ntk_problem` — the infinite-width NTK of the default ``MLP``
  (``kernels.analytic_ntk``) on CIFAR-10 views (two augmentations of each of n images, the
  linear problem's views for the same ``n``), ``F0`` small and white (not in any kernel's
  range: thousands of modes move a little, the quadrature's case); no time grid.
* :func:`ridge_kernel_problem` — a cheap full-rank kernel for the scaling study:
  ``K = X Xᵀ + ρ I`` from 256 power-law features; the horizon covers the first steps,
  so the number of time steps hardly changes with ``2n`` and the cost per step shows.

Everything is generated in float64 numpy from seeds (deterministic on every backend) and
cast to the requested dtype by the benchmark.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "KernelProblem",
    "describe",
    "find_cifar_dir",
    "linear_kernel_problem",
    "mlp_ntk_problem",
    "ridge_kernel_problem",
]

# ../shared/cifar10 beside the checkout (this file is benchmarks/harness/problems.py).
_SHARED_CIFAR = Path(__file__).resolve().parents[2].parent / "shared" / "cifar10"


@dataclasses.dataclass(frozen=True)
class KernelProblem:
    """A kernel-model problem on ``2n`` views (float64 numpy arrays).

    Attributes:
      source: ``"cifar10"`` or ``"synthetic"``.
      n_pairs: ``n``.
      X: ``(2n, m)`` view features with ``K = X Xᵀ (+ ridge I)``.
      K: ``(2n, 2n)``.
      W0: ``(d, m)`` initial weights of the linear model; ``F0 = X W0ᵀ``.
      F0: ``(2n, d)``.
      times: ``(T,)`` increasing output times.
      gamma_1: largest contrastive eigenvalue (exact or power-iteration estimate).
      step_times: ``(d,)`` theory's step times (None where not computed).
      ridge: ``ρ`` (0: ``K = X Xᵀ`` exactly, the linear model).
    """

    source: str
    n_pairs: int
    X: np.ndarray
    K: np.ndarray
    W0: np.ndarray
    F0: np.ndarray
    times: np.ndarray
    gamma_1: float
    step_times: np.ndarray | None
    ridge: float

    @property
    def n_views(self) -> int:
        return 2 * self.n_pairs

    @property
    def d(self) -> int:
        return self.F0.shape[1]


def find_cifar_dir(data_dir: str | None = None) -> Path | None:
    """The folder holding ``cifar-10-batches-py`` (given, env/cache, or ``../shared/cifar10``)."""
    from stepwise_ntk.data import resolve_cifar10_dir

    candidates = [resolve_cifar10_dir(data_dir)]
    if data_dir is None:
        candidates.append(resolve_cifar10_dir(_SHARED_CIFAR))
    for c in candidates:
        if (c / "data_batch_1").is_file():
            return c.parent
    return None


def _synthetic_views(n_pairs: int, m: int, rng: np.random.Generator) -> np.ndarray:
    """Two noisy views of n random "images" with a power-law spectrum (``s_k = k^{-1/2}``)."""
    scale = np.arange(1, m + 1, dtype=np.float64) ** -0.5
    base = rng.standard_normal((n_pairs, m)) * scale
    v1 = base + 0.5 * rng.standard_normal((n_pairs, m)) * scale
    v2 = base + 0.5 * rng.standard_normal((n_pairs, m)) * scale
    return np.concatenate([v1, v2])


def _cifar_views(n_pairs: int, data_dir: Path, seed: int) -> np.ndarray:
    import jax
    import jax.numpy as jnp

    from stepwise_ntk.data import cifar10_pairs

    if not jax.config.jax_enable_x64:
        raise ValueError("linear_kernel_problem needs jax_enable_x64 (the CLI turns it on).")
    views, _, _ = cifar10_pairs(jax.random.key(seed), n_pairs, data_dir=data_dir, dtype=jnp.float64)
    return np.asarray(views, np.float64).reshape(2 * n_pairs, -1)


def _log_times(t_first: float, t_last: float, n_times: int) -> np.ndarray:
    return np.geomspace(t_first, t_last, n_times)


def linear_kernel_problem(
    n_pairs: int,
    d: int,
    *,
    source: str = "auto",
    data_dir: str | None = None,
    seed: int = 0,
    init_scale: float = 1e-3,
    n_times: int = 100,
    horizon: float = 1.5,
) -> KernelProblem:
    """The linear model on CIFAR-10 pairs (or synthetic ones), see the module docstring.

    Args:
      n_pairs: ``n`` (the train subset here has 4660 images).
      d: embedding dimension.
      source: ``"cifar10"``, ``"synthetic"`` or ``"auto"`` (CIFAR-10 if found).
      data_dir: CIFAR-10 folder (see :func:`find_cifar_dir`).
      seed: seeds the augmentations / synthetic data and ``W0``.
      init_scale: entries of ``W0`` are ``init_scale · N(0, 1)``.
      n_times: output times, log-spaced.
      horizon: the last time is ``horizon ×`` the theory's last step time ``t_d``.
    """
    import jax.numpy as jnp

    from stepwise_ntk.theory import contrastive_eigensystem, step_times

    if source not in ("auto", "cifar10", "synthetic"):
        raise ValueError(f"source must be 'auto', 'cifar10' or 'synthetic', got {source!r}.")
    rng = np.random.default_rng(seed)
    cifar = find_cifar_dir(data_dir) if source != "synthetic" else None
    if source == "cifar10" and cifar is None:
        raise ValueError(
            "source='cifar10' but no CIFAR-10 folder was found; pass data_dir or set STEPWISE_NTK_DATA."
        )
    if cifar is not None:
        X, used = _cifar_views(n_pairs, cifar, seed), "cifar10"
    else:
        X, used = _synthetic_views(n_pairs, 3072, rng), "synthetic"
    X = X / np.sqrt(X.shape[1])
    K = X @ X.T
    K = 0.5 * (K + K.T)
    W0 = init_scale * rng.standard_normal((d, X.shape[1]))
    F0 = X @ W0.T
    es = contrastive_eigensystem(jnp.asarray(K), n_pairs)
    ts = np.asarray(step_times(es, jnp.asarray(F0)), np.float64)
    g1 = float(es.gammas[0])
    times = _log_times(1e-2 / (8.0 * g1), horizon * float(ts.max()), n_times)
    return KernelProblem(
        source=used,
        n_pairs=n_pairs,
        X=X,
        K=K,
        W0=W0,
        F0=F0,
        times=times,
        gamma_1=g1,
        step_times=ts,
        ridge=0.0,
    )


def mlp_ntk_problem(
    n_pairs: int, d: int, *, source: str = "auto", data_dir: str | None = None, seed: int = 17,
    init_scale: float = 1e-3,
) -> tuple[np.ndarray, np.ndarray, str]:
    """``(K, F0, source)``: the ReLU MLP NTK (``analytic_ntk(MLP())``, float64) of CIFAR-10
    views (``cifar10_pairs`` with key 0) or, without the dataset, of synthetic 8 × 8 × 3
    pairs; ``F0 = init_scale · √mean(diag K) · N(0, 1)`` from ``seed``."""
    import jax
    import jax.numpy as jnp

    from stepwise_ntk.kernels import MLP, analytic_ntk

    rng = np.random.default_rng(seed)
    cifar = find_cifar_dir(data_dir) if source != "synthetic" else None
    if cifar is not None:
        from stepwise_ntk.data import cifar10_pairs

        views, _, _ = cifar10_pairs(jax.random.key(0), n_pairs, data_dir=cifar, dtype=jnp.float64)
        views, used = np.asarray(views), "cifar10"
    else:
        base = rng.standard_normal((n_pairs, 8, 8, 3))
        views = np.concatenate([base, base + 0.3 * rng.standard_normal(base.shape)])
        used = "synthetic"
    K = np.asarray(analytic_ntk(MLP(), views, progress=False), np.float64)
    K = 0.5 * (K + K.T)
    F0 = init_scale * np.sqrt(np.mean(np.diag(K))) * rng.standard_normal((2 * n_pairs, d))
    return K, F0, used


def _gamma_1_estimate(
    K: np.ndarray, n_pairs: int, rng: np.random.Generator, iters: int = 60
) -> float:
    """Largest eigenvalue of ``K Z / (2n)`` by power iteration on a block of 4 vectors."""
    V = rng.standard_normal((K.shape[0], 4))
    lam = 0.0
    for _ in range(iters):
        W = K @ np.concatenate([V[n_pairs:], V[:n_pairs]]) / (2 * n_pairs)
        Q, R = np.linalg.qr(W)
        lam = float(np.max(np.abs(np.diag(R))))
        V = Q
    return lam


def ridge_kernel_problem(
    n_views: int,
    d: int,
    *,
    m: int = 256,
    ridge: float = 1e-2,
    seed: int = 0,
    init_scale: float = 1e-3,
    n_times: int = 20,
    horizon_steps: float = 3.0,
) -> KernelProblem:
    """A full-rank synthetic kernel ``K = X Xᵀ + ρ I`` (cheap to build at large ``2n``).

    The horizon is ``horizon_steps × ln(1/λ(0)) / (8 γ_1)`` with ``λ(0) ≈ init_scale² ·
    d``-independent estimate ``1e-6``: a few time scales of the leading mode, enough for
    the first steps, and about the same number of integration steps at every size.
    """
    if n_views % 2 or n_views < 4:
        raise ValueError(f"n_views must be an even number ≥ 4, got {n_views}.")
    n_pairs = n_views // 2
    rng = np.random.default_rng(seed)
    X = _synthetic_views(n_pairs, m, rng) / np.sqrt(m)
    K = X @ X.T + ridge * np.mean(np.sum(X * X, axis=1)) * np.eye(n_views)
    K = 0.5 * (K + K.T)
    W0 = init_scale * rng.standard_normal((d, m))
    F0 = X @ W0.T
    g1 = _gamma_1_estimate(K, n_pairs, rng)
    t_last = horizon_steps * np.log(1e6) / (8.0 * g1)
    times = _log_times(1e-2 / (8.0 * g1), t_last, n_times)
    return KernelProblem(
        source="synthetic",
        n_pairs=n_pairs,
        X=X,
        K=K,
        W0=W0,
        F0=F0,
        times=times,
        gamma_1=g1,
        step_times=None,
        ridge=ridge,
    )


def describe(p: KernelProblem) -> dict[str, Any]:
    """JSON-able summary of a problem (sizes, source, horizon)."""
    return {
        "source": p.source,
        "n_views": p.n_views,
        "d": p.d,
        "m": int(p.X.shape[1]),
        "gamma_1": p.gamma_1,
        "t_last": float(p.times[-1]),
        "n_times": int(p.times.size),
        "ridge": p.ridge,
    }
