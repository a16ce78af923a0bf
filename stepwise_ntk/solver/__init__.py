"""The gradient-flow solver of the kernel model (Barlow Twins, SimCLR, VICReg) and its references.

``solve(K, n_pairs, F0, times, loss=..., method="auto"|"eigen"|"function")`` integrates
``dF/dt = −K ∇_F L(F)`` with adaptive, error-controlled steps and returns a
:class:`Trajectory`; ``linear_gd`` is plain gradient descent on the linear model
``f(x) = W x`` (the parameter-space reference, effective time = learning rate × step).
"""

from stepwise_ntk.solver._linear_gd import linear_gd
from stepwise_ntk.losses import LOSS_FUNCTIONS, barlow_twins_loss, cross_correlation, simclr_loss, vicreg_loss
from stepwise_ntk.solver._solve import INTEGRATORS, METHODS, SolverSettings, choose_method, solve
from stepwise_ntk.solver._trajectory import SolveStats, Trajectory

__all__ = [
    "INTEGRATORS",
    "LOSS_FUNCTIONS",
    "METHODS",
    "SolveStats",
    "SolverSettings",
    "Trajectory",
    "barlow_twins_loss",
    "choose_method",
    "cross_correlation",
    "linear_gd",
    "simclr_loss",
    "solve",
    "vicreg_loss",
]
