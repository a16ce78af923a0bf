"""The gradient-flow solver of the kernel model (Barlow Twins, SimCLR, VICReg) and its references.

``solve(K, n_pairs, F0, times, loss=..., method="auto"|"eigen"|"function")`` integrates
``dF/dt = −K ∇_F L(F)`` with adaptive, error-controlled steps and returns a
:class:`Trajectory`; ``linear_gd`` is plain gradient descent on the linear model
``f(x) = W x`` (the parameter-space reference, effective time = learning rate × step).
``integrate`` is the adaptive DOPRI5 / ROS34PW2 integrator underneath (a plain JAX
function, usable inside ``jax.jit``), with its :class:`ODESettings`. The losses and their
registry live in :mod:`stepwise_ntk.losses`.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from stepwise_ntk import solver
    >>> X = jax.random.normal(jax.random.key(0), (40, 30))       # 20 pairs, 30 features
    >>> X = X.at[20:].set(X[:20] + 0.3 * X[20:])                  # views of the same images
    >>> F0 = 1e-3 * jax.random.normal(jax.random.key(1), (40, 3))
    >>> traj = solver.solve(X @ X.T / 30, 20, F0, jnp.geomspace(1e-2, 1e3, 50))
    >>> traj.eigenvalues.shape, traj.method
    ((50, 3), 'eigen')
"""

from stepwise_ntk.solver._integrate import ODEResult, ODESettings, ODEStats, integrate
from stepwise_ntk.solver._linear_gd import linear_gd
from stepwise_ntk.solver._preconditioned import PRECONDITIONED_METHODS, solve_preconditioned
from stepwise_ntk.solver._solve import INTEGRATORS, METHODS, SolverSettings, choose_method, solve
from stepwise_ntk.solver._trajectory import SolveStats, Trajectory

__all__ = [
    "INTEGRATORS",
    "METHODS",
    "ODEResult",
    "ODESettings",
    "ODEStats",
    "PRECONDITIONED_METHODS",
    "SolveStats",
    "SolverSettings",
    "Trajectory",
    "choose_method",
    "integrate",
    "linear_gd",
    "solve",
    "solve_preconditioned",
]
