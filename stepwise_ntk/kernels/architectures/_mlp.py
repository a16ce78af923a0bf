"""Fully-connected network: Flatten -> (Dense(width) -> activation) x depth -> Dense(d)."""

from __future__ import annotations

import dataclasses
import functools
from typing import ClassVar

from stepwise_ntk._checks import check_positive_int
from stepwise_ntk.kernels.architectures._base import ArchSpec
from stepwise_ntk.kernels.architectures._network import (
    Activation,
    Dense,
    Flatten,
    Layer,
)

__all__ = ["MLP"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class MLP(ArchSpec):
    """Fully-connected network on flattened inputs.

    f(x) = Dense_d(phi(Dense_width(... phi(Dense_width(flatten(x)))))), ``depth`` hidden layers,
    hidden layers with ``w_std``, readout with ``readout_w_std``, biases ``b_std``.
    For ReLU, depth=1, w_std=readout_w_std=sigma_w, b_std=0 and inputs x in R^m the NTK is
    Theta(x, y) = sigma_w^2 x.y/m + sigma_w^2 [T(Sigma) + Tdot(Sigma) sigma_w^2 x.y/m] with the
    arc-cosine T, Tdot (tests/reference_kernels.py).

    Inputs: (n, ...) of any trailing shape (flattened), e.g. NHWC images or (n, m) vectors.
    Flax parameters: ``hidden_<i>`` (i < depth) and ``readout``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> arch = MLP(depth=2, width=64, d=8)
      >>> init_fn, apply_fn, kernel_fn = arch.stax()
      >>> net = arch.flax()          # flax.linen module, (n, ...) -> (n, 8)
      >>> params = net.init(jax.random.key(0), jnp.ones((1, 5), jnp.float32))
      >>> sorted(params["params"]), net.apply(params, jnp.ones((3, 5), jnp.float32)).shape
      (['hidden_0', 'hidden_1', 'readout'], (3, 8))
    """

    name: ClassVar[str] = "mlp"

    depth: int = 2

    def _validate(self) -> None:
        check_positive_int("depth", self.depth)

    def layers(self) -> tuple[Layer, ...]:
        dense = functools.partial(Dense, b_std=self.b_std, parameterization=self.parameterization)
        layers: list[Layer] = [Flatten()]
        for i in range(self.depth):
            layers += [dense(features=self.width, w_std=self.w_std, name=f"hidden_{i}"),
                       Activation(self.activation)]
        layers.append(dense(features=self.d, w_std=self.readout_w_std, name="readout"))
        return tuple(layers)
