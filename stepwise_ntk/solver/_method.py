"""Which route :func:`stepwise_ntk.solver.solve` takes: the cost model of ``method="auto"``
(:func:`choose_method`) and the checks of a requested route (:func:`pick_route`)."""

from __future__ import annotations

from typing import Any

import jax

from stepwise_ntk._checks import check_bool, check_n_pairs, check_number, check_positive_int, check_type
from stepwise_ntk.solver._eigen_route import first_modes
from stepwise_ntk.theory import partial_cost

__all__ = ["choose_method", "pick_route"]


def choose_method(n_pairs: int, d: int, barlow_twins: bool, *, platform: str = "cpu",
                  n_devices: int = 1, stiffness: float | None = None) -> tuple[str, str]:
    """The route :func:`~stepwise_ntk.solver.solve` takes for ``method="auto"``, and why.

    Cost model (flops): eigen ``≈ 10 N³`` (Cholesky ``N³/3``, ``Lᵀ Z L`` ``N³/2``, symmetric
    eigendecomposition ``≈ 9 N³``), or, where :func:`~stepwise_ntk.theory.partial_cost`
    expects the first partial eigensystem (``max(64, 2d)`` modes, rounded up to 64) to cost
    a fraction ``c < 1`` of that, ``N³/3 + c · 29 N³/3``; times a platform factor (3 on
    GPU/TPU, where dense eigensolvers reach a far smaller fraction of peak than matrix
    products), against function ``≈ 6 · S · 2 N² d / n_devices`` with ``S = max(400, 8 s /
    3.3)`` time steps: 400 is a typical optimistic count, and DOPRI5 needs at least
    ``8 γ_1 T / 3.3`` steps to stay stable on the fastest mode, ``s ≥ γ_1 T`` the
    ``stiffness``. Other losses
    take the function route; ``method="galerkin"`` (one eigendecomposition of ``K``, then
    ``O(N r d)`` per right-hand side) pays where few eigenvectors of ``K`` move within the
    horizon (short horizons, fast-decaying spectra), which a cost model cannot know before
    the solve.

    Args:
      n_pairs: ``n`` (``N = 2n`` views).
      d: embedding dimension.
      barlow_twins: the eigen route exists only for the Barlow Twins loss.
      platform: ``jax.default_backend()``.
      n_devices: devices the function route would shard ``K`` over.
      stiffness: an upper bound on ``γ_1 T`` (``solve`` passes ``max_i Σ_j |K_ij| / 2n ≥ γ_1``
        times the last output time); None: ``S = 400``.

    Example:
        >>> choose_method(1000, 32, True)[0], choose_method(1000, 32, False)[0]
        ('eigen', 'function')
        >>> choose_method(1500, 4, True)[0], choose_method(1500, 4, True, stiffness=2000.0)[0]
        ('function', 'eigen')
        >>> choose_method(3000, 8, True)[0]  # 2n = 6000: priced with the partial eigensystem
        'eigen'
    """
    n_pairs = check_n_pairs(n_pairs)
    d = check_positive_int("d", d, hint=" (the embedding dimension)")
    n_devices = check_positive_int("n_devices", n_devices)
    check_type("platform", platform, str)
    bt = check_bool("barlow_twins", barlow_twins)
    steps = 400.0
    if stiffness is not None:
        steps = max(steps, 8.0 * check_number("stiffness", stiffness, low=0.0) / 3.3)
    N = 2.0 * n_pairs
    factor = 1.0 if platform == "cpu" else 3.0
    share = min(1.0, partial_cost(int(N), first_modes(d)))
    eigen = (1.0 + 29.0 * share) / 3.0 * N**3 * factor
    function = 6.0 * steps * 2.0 * N**2 * d / n_devices
    if not bt:
        return "function", "only the function route integrates this loss in full (the Galerkin route is opt-in)"
    fast = "eigen"
    method = fast if eigen <= function else "function"
    return method, (f"cost model: {fast} ≈ {eigen:.2g} flops, function ≥ {function:.2g} flops "
                    f"(N={2 * n_pairs}, d={d}, {steps:.0f} steps, {platform}, {n_devices} device(s))")


def pick_route(method: str, is_bt: bool, loss: Any, integrator: str, n_pairs: int, d: int,
           n_dev: int, stiffness: float | None = None) -> tuple[str, str]:
    """The route that runs (``"eigen"``, ``"galerkin"`` or ``"function"``) and why."""
    if method == "auto":
        method, reason = choose_method(n_pairs, d, is_bt, platform=jax.default_backend(), n_devices=n_dev,
                                       stiffness=stiffness)
    else:
        reason = "requested"
    if method == "eigen" and not is_bt:
        name = loss if isinstance(loss, str) else getattr(loss, "__name__", "callable")
        raise ValueError(
            f"method='eigen' solves the Barlow Twins loss only (its flow is linear in the "
            f"contrastive eigenbasis); for loss={name!r} use method='function'."
        )
    if integrator == "rosw" and method == "function":
        raise ValueError("integrator='rosw' is for the eigen and Galerkin routes; the function route "
                         "uses 'dopri5'.")
    return method, reason
