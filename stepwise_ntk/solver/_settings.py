"""The settings of :func:`stepwise_ntk.solver.solve` (:class:`SolverSettings`) and the names of its
routes, integrators and eigensystems."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from stepwise_ntk._checks import check_bool, check_choice, check_number
from stepwise_ntk.solver._integrate import ODESettings, check_tolerances

__all__ = ["EIGENSYSTEMS", "INTEGRATORS", "METHODS", "SolverSettings"]


METHODS = ("auto", "eigen", "function", "galerkin")


INTEGRATORS = ("auto", "dopri5", "rosw")


EIGENSYSTEMS = ("auto", "full", "partial")


@dataclasses.dataclass(frozen=True)
class SolverSettings:
    """Settings of :func:`~stepwise_ntk.solver.solve` (hashable; part of the compiled computation).

    The default states an accuracy, not tolerances: every eigenvalue of ``C`` at every
    requested time within ``accuracy`` of the exact flow. The eigen route derives the
    integration tolerance and the mode truncation from it and from the problem, checks the
    result (see :mod:`stepwise_ntk.solver._solve`, *Accuracy*) and reports its estimate in
    ``Trajectory.stats.error_estimate``.

    Attributes:
      accuracy: target of ``max_{t, j} |λ_j(t) − λ_j^exact(t)|`` (default 1e-3).
      rtol, atol: local error tolerances of the time integration (see
        :mod:`stepwise_ntk.solver._integrate`). ``rtol=None`` derives it from ``accuracy``
        and the dtype (:meth:`resolved_rtol`); a given ``rtol`` is used as is (no accuracy
        check by re-integration). ``atol=None`` follows the scale of the initial state.
      max_steps: limit on attempted time steps.
      integrator: ``"auto"``, ``"dopri5"`` or ``"rosw"`` (``"rosw"``: eigen and Galerkin
        routes).
      mode_tol: eigen route: the truncated modes may move ``C`` by at most this much in the
        2-norm (see :mod:`stepwise_ntk.solver._solve`, *Truncation*); 0 keeps every mode; None: ``accuracy / 10``.
      jitter_rtol: relative jitter of the factorisation (None: ``2n · eps``, or on the eigen
        routes ``10 eps`` first where ``2n · eps`` could move ``λ`` by more than a tenth of
        the accuracy, as in float32; see :mod:`stepwise_ntk.theory._eigensystem`).
      shard: function route: shard ``K``'s rows over ``jax.local_devices()`` (None: when
        there is more than one device and ``2n`` is divisible by their number).
      eigensystem: eigen route: ``"partial"`` (only the modes the truncation needs, by a
        block Krylov iteration), ``"full"`` (every mode: one dense eigendecomposition; on
        CPU its tridiagonal form, eigenvectors formed only for the integrated modes), or ``"auto"``
        (the low-rank eigensystem where ``K``'s rank is at most ``4n/3`` and ``F0`` lies in
        its range; else partial where :func:`~stepwise_ntk.theory.partial_is_cheaper` expects it
        to cost less: large ``2n``, few modes needed).
    """

    accuracy: float = 1e-3
    rtol: float | None = None
    atol: float | None = None
    max_steps: int = 1_000_000
    integrator: str = "auto"
    mode_tol: float | None = None
    jitter_rtol: float | None = None
    shard: bool | None = None
    eigensystem: str = "auto"

    def __post_init__(self):
        check_number("SolverSettings.accuracy", self.accuracy, low=0.0, open_low=True)
        if self.rtol is not None:
            check_tolerances("SolverSettings", self.rtol, self.atol, self.max_steps)
        else:
            check_tolerances("SolverSettings", 1.0, self.atol, self.max_steps)
        check_choice("SolverSettings.integrator", self.integrator, INTEGRATORS)
        if self.mode_tol is not None:
            check_number("SolverSettings.mode_tol", self.mode_tol, low=0.0, hint=" or None")
        if self.jitter_rtol is not None:
            check_number("SolverSettings.jitter_rtol", self.jitter_rtol, low=0.0, hint=" or None")
        if self.shard is not None:
            check_bool("SolverSettings.shard", self.shard)
        check_choice("SolverSettings.eigensystem", self.eigensystem, EIGENSYSTEMS)

    @property
    def ode(self) -> ODESettings:
        """The static part of the integrator settings (tolerances travel as traced values)."""
        return ODESettings(atol=None if self.atol is None else 1.0)

    def resolved_rtol(self, dtype) -> float:
        """``rtol``, or from ``accuracy``: ``max(accuracy / 300, 100 eps(dtype))`` (float64 at
        the default accuracy: ``3.3e-6``; float32: ``1.2e-5``). The first guess of the eigen
        route's accuracy loop, which tightens it where the estimate asks for it."""
        if self.rtol is not None:
            return float(self.rtol)
        return max(self.accuracy / 300.0, 100.0 * float(np.finfo(np.dtype(dtype)).eps))

    def resolved_mode_tol(self) -> float:
        """``mode_tol``, or ``accuracy / 10``."""
        return self.accuracy / 10.0 if self.mode_tol is None else float(self.mode_tol)

    def tolerances(self, dtype, rtol: float | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
        """``(rtol, atol, max_steps)`` as arrays (``atol`` is NaN, unused, when it follows the
        state's scale; ``rtol`` given here overrides :meth:`resolved_rtol`)."""
        atol = np.nan if self.atol is None else self.atol
        rtol = self.resolved_rtol(dtype) if rtol is None else rtol
        return (jnp.asarray(rtol, dtype), jnp.asarray(atol, dtype),
                jnp.asarray(min(self.max_steps, 2**31 - 1), jnp.int32))
