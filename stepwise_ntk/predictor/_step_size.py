"""The gradient step of a network from its own kernel: ``c = rate / (8 γ_1(Θ))``.

Full-batch gradient descent on ``f = α · net`` at learning rate ``η`` moves the embeddings by
``−η K ∇_F L`` per step with ``K = α² Θ`` (:mod:`stepwise_ntk.training`), so the step on the
per-output NTK ``Θ`` is ``c = η α²``. In the kernel model every mode's eigenvalue obeys
``dλ_j/dt = 8 γ_j λ_j (1 − λ_j)`` (THEORY.md): linearised at the fixed point ``λ_j = 1`` it
decays at rate ``8 γ_j(K)``, so gradient descent with ``c · 8 γ_1(Θ) < 2`` is stable on every
mode, and ``rate = c · 8 γ_1(Θ) ≪ 1`` keeps it close to the flow. Which ``Θ`` matters: a
finite network's gradient descent is set by *its* kernel, the empirical NTK at its
initial parameters, not by the infinite-width one (a narrow CNN's empirical ``γ_1`` is
several times the analytic one). The ``rate`` also leaves room for the kernel to grow
during training (a narrow network leaves the kernel regime).

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(8, 5))                     # 2n = 8 views
    >>> theta = X @ X.T / 5                             # a kernel Θ on them
    >>> c = stable_step_size(theta, 4, rate=0.1)
    >>> from stepwise_ntk.theory import contrastive_eigensystem
    >>> round(c * 8 * float(contrastive_eigensystem(theta, 4).gammas[0]), 12)
    0.1
"""

from __future__ import annotations

from typing import Any

import numpy as np

from stepwise_ntk._checks import check_kernel, check_n_pairs, check_number
from stepwise_ntk.theory import contrastive_eigensystem

__all__ = ["stable_step_size"]


def stable_step_size(theta: Any, n_pairs: int, rate: float = 0.1) -> float:
    """``c = rate / (8 γ_1(Θ))``: the gradient step on ``Θ`` (learning rate ``c / α²``).

    Args:
      theta: ``(2n, 2n)`` per-output NTK ``Θ`` of the network on the views (before the
        factor α²), e.g. ``network_kernel(arch, views, kernel="empirical_init", params=θ_0).K``.
      n_pairs: ``n``.
      rate: ``c · 8 γ_1(Θ)``, the fastest mode's change per step near the fixed point;
        gradient descent is unstable above 2 and tracks the flow for ``rate ≪ 1``.

    Returns:
      ``c`` (float).

    Raises:
      ValueError: ``rate`` not in ``(0, 2)``; ``Θ`` with no positive contrastive eigenvalue
        (nothing to learn: the views of a pair are uncorrelated under this kernel).
    """
    n = check_n_pairs(n_pairs)
    rate = check_number("rate", rate, low=0, high=2, open_low=True, open_high=True,
                        hint=" (gradient descent is unstable at rate ≥ 2)")
    K = check_kernel(np.asarray(theta, np.float64), n, "theta")
    gammas = np.asarray(contrastive_eigensystem(K, n).gammas, np.float64)
    g1 = float(gammas[0])
    # Relative to the largest |γ|: round-off leaves γ ~ 1e-16 · max|γ| on a kernel without any.
    if not g1 > 1e-10 * float(np.max(np.abs(gammas))):
        raise ValueError(
            f"the kernel has no positive contrastive eigenvalue (γ_1 = {g1:.3g}): no mode can be learned and "
            "no step size follows from it. Check the views (pairing order) or pass a step size."
        )
    return rate / (8.0 * g1)
