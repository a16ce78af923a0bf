"""Closed-form theory of the kernel model of Barlow Twins (THEORY.md), as pure functions.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from stepwise_ntk import theory
    >>> X = jax.random.normal(jax.random.key(0), (20, 5), dtype=jnp.float32)
    >>> es = theory.contrastive_eigensystem(X @ X.T, 10)
    >>> theory.step_times(es, 1e-3 * X[:, :2], 2).shape
    (2,)
"""

from stepwise_ntk.theory._eigensystem import (
    ContrastiveEigensystem,
    check_enough_modes,
    check_factorization,
    contrastive_eigensystem,
    contrastive_eigensystem_core,
    gamma_tolerance,
    default_jitter_rtol,
    mode_coordinates,
    mode_functions,
    mode_functions_new,
)
from stepwise_ntk.theory._closed_form import (
    aligned_eigenvalues,
    final_embeddings,
    initial_eigenvalues,
    loss_staircase,
    plateau_levels,
    procrustes_align,
    procrustes_error,
    step_times,
)

__all__ = [
    "ContrastiveEigensystem",
    "aligned_eigenvalues",
    "check_enough_modes",
    "check_factorization",
    "contrastive_eigensystem",
    "contrastive_eigensystem_core",
    "gamma_tolerance",
    "default_jitter_rtol",
    "final_embeddings",
    "initial_eigenvalues",
    "loss_staircase",
    "mode_coordinates",
    "mode_functions",
    "mode_functions_new",
    "plateau_levels",
    "procrustes_align",
    "procrustes_error",
    "step_times",
]
