"""Closed-form theory of the kernel model of Barlow Twins (docs/theory.md), as pure functions.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from stepwise_ntk import theory
    >>> X = jax.random.normal(jax.random.key(0), (20, 5), dtype=jnp.float32)
    >>> es = theory.contrastive_eigensystem(X @ X.T, 10)
    >>> theory.step_times(es, 1e-3 * X[:, :2]).shape
    (2,)
"""

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
from stepwise_ntk.theory._eigensystem import (
    ContrastiveEigensystem,
    RestLanczos,
    check_enough_modes,
    check_factorization,
    contrastive_eigensystem,
    contrastive_eigensystem_core,
    contrastive_eigensystem_from_factor,
    default_jitter_rtol,
    gamma_tolerance,
    jittered_cholesky,
    low_rank_columns,
    mode_coordinates,
    mode_functions,
    mode_functions_new,
    partial_cost,
    partial_is_cheaper,
    rest_lanczos,
)
from stepwise_ntk.theory._pair_gram import PairGramOperator, pair_gram_operator
from stepwise_ntk.theory._preconditioned import (
    PRECONDITIONED_PARTS,
    PRECONDITIONERS,
    Preconditioner,
    precondition_factor,
    precondition_matrix,
    preconditioned_aligned_eigenvalues,
    preconditioned_gradient,
    preconditioned_stable_step,
    preconditioned_step_times,
    preconditioned_time,
)
from stepwise_ntk.theory._tridiagonal import (
    TridiagonalEigensystem,
    tridiagonal_available,
    tridiagonal_eigensystem,
)

__all__ = [
    "PRECONDITIONED_PARTS",
    "PRECONDITIONERS",
    "ContrastiveEigensystem",
    "PairGramOperator",
    "Preconditioner",
    "RestLanczos",
    "TridiagonalEigensystem",
    "aligned_eigenvalues",
    "check_enough_modes",
    "check_factorization",
    "contrastive_eigensystem",
    "contrastive_eigensystem_core",
    "contrastive_eigensystem_from_factor",
    "default_jitter_rtol",
    "final_embeddings",
    "gamma_tolerance",
    "initial_eigenvalues",
    "jittered_cholesky",
    "loss_staircase",
    "low_rank_columns",
    "mode_coordinates",
    "mode_functions",
    "mode_functions_new",
    "pair_gram_operator",
    "partial_cost",
    "partial_is_cheaper",
    "plateau_levels",
    "precondition_factor",
    "precondition_matrix",
    "preconditioned_aligned_eigenvalues",
    "preconditioned_gradient",
    "preconditioned_stable_step",
    "preconditioned_step_times",
    "preconditioned_time",
    "procrustes_align",
    "procrustes_error",
    "rest_lanczos",
    "step_times",
    "tridiagonal_available",
    "tridiagonal_eigensystem",
]
