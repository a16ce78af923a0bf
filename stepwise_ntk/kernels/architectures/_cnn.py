"""Myrtle-style CNN (Shankar et al. 2020): 3x3 SAME convs, 2x2 average pooling, dense readout."""

from __future__ import annotations

import dataclasses
import functools
from typing import ClassVar

from stepwise_ntk.kernels.architectures._base import ArchSpec, check_image_shape
from stepwise_ntk.kernels.architectures._network import (
    Activation,
    AvgPool2x2,
    Conv,
    Dense,
    GlobalAvgPool,
    Layer,
)

__all__ = ["MYRTLE_STAGES", "MyrtleCNN"]

# depth -> number of conv+activation layers in each of the three stages (Myrtle-5/7/10);
# depth counts conv layers plus the readout.
MYRTLE_STAGES: dict[int, tuple[int, int, int]] = {5: (2, 1, 1), 7: (2, 2, 2), 10: (3, 3, 3)}


@dataclasses.dataclass(frozen=True, kw_only=True)
class MyrtleCNN(ArchSpec):
    """Myrtle CNN: three stages of (Conv3x3(width) -> activation), 2x2 average pools between.

    Layers: [conv, phi] x s1, AvgPool 2x2, [conv, phi] x s2, AvgPool 2x2, [conv, phi] x s3,
    GlobalAvgPool, Dense(d), with (s1, s2, s3) = ``MYRTLE_STAGES[depth]``. On 32x32 images this
    is the Myrtle-5/7/10 of Shankar et al. (whose final three 2x2 pools on 8x8 equal a global
    average pool). Because of the pooling, the analytic kernel keeps the full spatial covariance:
    memory per pair of images grows like (H W)^2.

    Inputs: NHWC images (n, H, W, C) with H, W multiples of 4.
    Flax parameters: ``conv_<i>`` (i < depth - 1, in layer order) and ``readout``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> arch = MyrtleCNN(depth=5, width=4, d=8)
      >>> net = arch.flax()          # (n, H, W, C) -> (n, 8)
      >>> x = jnp.ones((2, 8, 8, 3), jnp.float32)
      >>> params = jax.eval_shape(net.init, jax.random.key(0), x)   # shapes only: no compile
      >>> jax.eval_shape(net.apply, params, x).shape
      (2, 8)
    """

    name: ClassVar[str] = "myrtle"
    uses_conv: ClassVar[bool] = True

    width: int = 128
    depth: int = 5

    def _validate(self) -> None:
        if self.depth not in MYRTLE_STAGES:
            raise ValueError(
                f"MyrtleCNN depth must be one of {tuple(MYRTLE_STAGES)} (Myrtle-5/7/10), "
                f"got {self.depth!r}."
            )

    def check_input_shape(self, shape: tuple[int, ...]) -> None:
        check_image_shape("MyrtleCNN", shape, 4)

    def layers(self) -> tuple[Layer, ...]:
        conv = functools.partial(Conv, features=self.width, w_std=self.w_std, b_std=self.b_std,
                                 parameterization=self.parameterization)
        layers: list[Layer] = []
        i = 0
        for stage, repeats in enumerate(MYRTLE_STAGES[self.depth]):
            if stage > 0:
                layers.append(AvgPool2x2())
            for _ in range(repeats):
                layers += [conv(name=f"conv_{i}"), Activation(self.activation)]
                i += 1
        layers += [
            GlobalAvgPool(),
            Dense(features=self.d, w_std=self.readout_w_std, b_std=self.b_std,
                  parameterization=self.parameterization, name="readout"),
        ]
        return tuple(layers)
