"""A loss whose gradient with respect to the embeddings is spectrally preconditioned.

``preconditioned_loss(loss, precond)`` returns ``L̃`` with ``L̃(F) = L(F)`` (the same value,
so records, divergence checks and plots are unchanged) and

    ∇_F L̃(F) = ∇_F L(F) · P(C),      C = Fᵀ Z F/(2n),

``P = precond`` (:class:`stepwise_ntk.theory.Preconditioner`) evaluated on the current
embeddings and treated as a constant (a stop-gradient on the ``d × d`` factor): a
``jax.custom_vjp`` identity on ``F`` multiplies the incoming cotangent by ``P(C)``
(for ``precond.part == "invariant"`` boosting only its pair mean,
:func:`stepwise_ntk.theory.preconditioned_gradient`; the rows must then be in the pairing
order, as the loss's). The
chain rule then gives the parameter gradient ``J_θᵀ ∇_F L · P(C)``, so gradient descent on
any network follows ``dF/dt ≈ −K ∇_F L · P(C)`` in the kernel regime (the flow of
:func:`stepwise_ntk.solver.solve_preconditioned`). It is a plain loss callable, so
:func:`stepwise_ntk.training.train` uses it unchanged for every architecture and loss, full
batch or minibatch (``C`` is then the minibatch's, like the loss).

Example::

    >>> import jax, jax.numpy as jnp
    >>> from stepwise_ntk.losses import barlow_twins_loss
    >>> from stepwise_ntk.theory import Preconditioner
    >>> F = 0.1 * jax.random.normal(jax.random.key(0), (8, 2))
    >>> L = preconditioned_loss("barlow_twins", Preconditioner("inverse", eps=0.1))
    >>> bool(L(F) == barlow_twins_loss(F))
    True
    >>> jax.grad(L)(F).shape
    (8, 2)
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax

from stepwise_ntk._checks import check_type
from stepwise_ntk.losses import cross_correlation, resolve_loss
from stepwise_ntk.theory import Preconditioner, preconditioned_gradient

__all__ = ["PreconditionedLoss", "preconditioned_loss"]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _precondition_cotangent(precond: Preconditioner, F: jax.Array) -> jax.Array:
    return F


def _fwd(precond, F):
    return F, F


def _bwd(precond, F, g):
    return (preconditioned_gradient(g, jax.lax.stop_gradient(cross_correlation(F)), precond),)


_precondition_cotangent.defvjp(_fwd, _bwd)


@dataclasses.dataclass(frozen=True)
class PreconditionedLoss:
    """``F ↦ L(F)`` with the gradient ``∇_F L · P(C)`` (see :func:`preconditioned_loss`).

    Attributes:
      loss: the loss function ``F: (2n, d) -> scalar``.
      precond: the :class:`stepwise_ntk.theory.Preconditioner`.
    """

    loss: Callable[[jax.Array], jax.Array]
    precond: Preconditioner

    def __call__(self, F: jax.Array) -> jax.Array:
        if self.precond.form == "none":
            return self.loss(F)
        return self.loss(_precondition_cotangent(self.precond, F))


def preconditioned_loss(loss: str | Callable[[jax.Array], jax.Array], precond: Preconditioner, *,
                        loss_kwargs: dict[str, Any] | None = None) -> PreconditionedLoss:
    """The loss ``loss`` with its embedding gradient right-multiplied by ``P(C)``.

    Args:
      loss: ``"barlow_twins"``, ``"simclr"``, ``"vicreg"`` or a callable ``F -> scalar``.
      precond: :class:`stepwise_ntk.theory.Preconditioner` (``"none"``: the loss itself).
      loss_kwargs: keyword arguments of a named loss (e.g. ``{"temperature": 0.5}``).

    Returns:
      :class:`PreconditionedLoss`, a callable to pass as ``TrainSettings(loss=...)``.
    """
    check_type("precond", precond, Preconditioner, "a Preconditioner (from stepwise_ntk.theory)")
    return PreconditionedLoss(resolve_loss(loss, loss_kwargs=loss_kwargs), precond)
