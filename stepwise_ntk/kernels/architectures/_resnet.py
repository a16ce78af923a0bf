"""Small wide ResNet (Zagoruyko & Komodakis 2016), as in neural-tangents' WideResnet example."""

from __future__ import annotations

import dataclasses
import functools
from typing import ClassVar

from stepwise_ntk._checks import check_positive_int
from stepwise_ntk.kernels.architectures._base import ArchSpec, check_image_shape
from stepwise_ntk.kernels.architectures._network import (
    Activation,
    Conv,
    Dense,
    GlobalAvgPool,
    Layer,
    Residual,
)

__all__ = ["WideResNet"]

_GROUP_STRIDES = ((1, 1), (2, 2), (2, 2))


@dataclasses.dataclass(frozen=True, kw_only=True)
class WideResNet(ArchSpec):
    """Pre-activation wide ResNet with three groups.

    Stem Conv3x3(width); group g = 0, 1, 2 has ``blocks_per_group`` blocks of width
    width * 2^g, the first block of groups 1 and 2 with stride 2. A block is
    x -> Conv(phi(Conv_s(phi(x)))) + shortcut(x), where shortcut is Conv3x3 with the block's
    stride for the first block of a group (as in NT's example) and the identity otherwise.
    Readout: GlobalAvgPool, Dense(d). All convs use ``w_std`` and ``b_std``.

    Inputs: NHWC images (n, H, W, C) with H, W multiples of 4.
    Flax parameters: ``stem``, ``g<g>b<b>_conv1``, ``g<g>b<b>_conv2``, ``g<g>b0_shortcut``,
    ``readout``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> arch = WideResNet(blocks_per_group=1, width=2, d=8)
      >>> net = arch.flax()          # (n, H, W, C) -> (n, 8)
      >>> x = jnp.ones((2, 8, 8, 3), jnp.float32)
      >>> params = jax.eval_shape(net.init, jax.random.key(0), x)   # shapes only: no compile
      >>> jax.eval_shape(net.apply, params, x).shape
      (2, 8)
    """

    name: ClassVar[str] = "wrn"
    uses_conv: ClassVar[bool] = True

    width: int = 64
    blocks_per_group: int = 1

    def _validate(self) -> None:
        check_positive_int("blocks_per_group", self.blocks_per_group)

    def check_input_shape(self, shape: tuple[int, ...]) -> None:
        check_image_shape("WideResNet", shape, 4)

    def layers(self) -> tuple[Layer, ...]:
        conv = functools.partial(Conv, w_std=self.w_std, b_std=self.b_std,
                                 parameterization=self.parameterization)
        phi = Activation(self.activation)
        layers: list[Layer] = [conv(features=self.width, name="stem")]
        for g, group_strides in enumerate(_GROUP_STRIDES):
            channels = self.width * 2**g
            for b in range(self.blocks_per_group):
                # As in NT's WideResnet example: a conv shortcut on each group's first block
                # (where, from group 1 on, resolution and width change), identity elsewhere.
                strides = group_strides if b == 0 else (1, 1)
                branch = (phi, conv(features=channels, strides=strides, name=f"g{g}b{b}_conv1"),
                          phi, conv(features=channels, name=f"g{g}b{b}_conv2"))
                shortcut = ((conv(features=channels, strides=strides, name=f"g{g}b{b}_shortcut"),)
                            if b == 0 else ())
                layers.append(Residual(branch=branch, shortcut=shortcut))
        layers += [
            GlobalAvgPool(),
            Dense(features=self.d, w_std=self.readout_w_std, b_std=self.b_std,
                  parameterization=self.parameterization, name="readout"),
        ]
        return tuple(layers)
