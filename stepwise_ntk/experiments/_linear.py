"""``stepwise-ntk linear``: the paper's linear-model experiment on CIFAR-10 pairs.

The linear model ``f(x) = W x`` is the kernel model with ``K = X Xᵀ``; inputs are flattened
normalised views scaled by ``1/√m`` (``m`` pixels), so ``K_ii ≈ 1`` and times are O(1) (the
same as the unscaled model at time ``t/m``). ``W(0)`` has i.i.d. ``N(0, init_scale²)``
entries. Everything else is :func:`stepwise_ntk.experiments._kernel_model.run_kernel_model`.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from stepwise_ntk.experiments._kernel_model import ExperimentSettings, load_problem_data, run_kernel_model
from stepwise_ntk.experiments._run_dir import RunDir

__all__ = ["LinearSettings", "run_linear", "flatten_scaled"]


@dataclasses.dataclass(frozen=True)
class LinearSettings(ExperimentSettings):
    """Settings of ``stepwise-ntk linear`` (each is a flag: ``--n-pairs 500``)."""


def flatten_scaled(x: jax.Array) -> jax.Array:
    """(N, H, W, C) -> (N, m) rows scaled by 1/√m."""
    x = x.reshape(x.shape[0], -1)
    return x / np.sqrt(x.shape[1])


def run_linear(settings: LinearSettings, out: RunDir, *, progress: bool = True) -> str:
    """Run the experiment, write ``results.json``, ``arrays.npz`` and figures into ``out``."""
    s = settings
    started = time.perf_counter()
    problem = load_problem_data(s)
    X = flatten_scaled(problem.views)
    W0 = s.init_scale * jax.random.normal(problem.key_init, (s.d, X.shape[1]), jnp.float64)
    return run_kernel_model(
        s,
        out,
        problem,
        X @ X.T,
        X @ W0.T,
        flatten_scaled(jnp.asarray(problem.pool)) @ X.T,
        title=f"linear Barlow Twins, CIFAR-10 n={s.n_pairs}, d={s.d}",
        started=started,
    )
