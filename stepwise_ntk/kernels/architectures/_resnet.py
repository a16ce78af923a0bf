"""Small wide ResNet (Zagoruyko & Komodakis 2016), as in neural-tangents' WideResnet example."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from stepwise_ntk.kernels.architectures._base import ArchSpec, _check_positive_int
from stepwise_ntk.kernels.architectures._cnn import _check_image_shape
from stepwise_ntk.kernels.architectures._layers import NTConv, NTDense, activation_fn, global_avg_pool
from stepwise_ntk.kernels._nt_compat import nt

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

    Example:
      >>> spec = WideResNet(blocks_per_group=1, width=64, d=8)
      >>> net = spec.flax()
    """

    name: ClassVar[str] = "wrn"
    uses_conv: ClassVar[bool] = True

    width: int = 64
    blocks_per_group: int = 1

    def _validate(self) -> None:
        _check_positive_int("blocks_per_group", self.blocks_per_group)

    def check_input_shape(self, shape: tuple[int, ...]) -> None:
        _check_image_shape("WideResNet", shape, 4)

    def _block(self, channels: int, strides: tuple[int, int], conv_shortcut: bool):
        main = nt.stax.serial(
            self._act(), self._conv(channels, strides), self._act(), self._conv(channels)
        )
        shortcut = self._conv(channels, strides) if conv_shortcut else nt.stax.Identity()
        return nt.stax.serial(
            nt.stax.FanOut(2), nt.stax.parallel(main, shortcut), nt.stax.FanInSum()
        )

    # NT warns at every FanInSum that it assumes independent branches. That holds here: the
    # main branch ends in a conv with fresh zero-mean weights, so at infinite width its output
    # is uncorrelated with the shortcut's.
    _ignored_nt_warnings: ClassVar[tuple[str, ...]] = ("`FanIn` layers assume independent",)

    def _stax_layers(self) -> list:
        layers = [self._conv(self.width)]
        for g, strides in enumerate(_GROUP_STRIDES):
            for b in range(self.blocks_per_group):
                layers.append(
                    self._block(self.width * 2**g, strides if b == 0 else (1, 1), b == 0)
                )
        layers += [nt.stax.GlobalAvgPool(), self._dense(self.d, self.readout_w_std)]
        return layers

    def flax(self, param_dtype: Any = jnp.float32) -> nn.Module:
        return _WideResNetNet(spec=self, param_dtype=param_dtype)


class _WideResNetNet(nn.Module):
    """Flax twin of ``WideResNet``; parameters ``stem``, ``g<g>b<b>_{conv1,conv2,shortcut}``,
    ``readout``."""

    spec: WideResNet
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        s = self.spec
        phi = activation_fn(s.activation)

        def conv(channels, strides, name):
            return NTConv(
                channels, (3, 3), s.w_std, s.b_std, strides=strides,
                parameterization=s.parameterization, param_dtype=self.param_dtype, name=name,
            )

        x = conv(s.width, (1, 1), "stem")(x)
        for g, group_strides in enumerate(_GROUP_STRIDES):
            channels = s.width * 2**g
            for b in range(s.blocks_per_group):
                strides = group_strides if b == 0 else (1, 1)
                h = conv(channels, strides, f"g{g}b{b}_conv1")(phi(x))
                h = conv(channels, (1, 1), f"g{g}b{b}_conv2")(phi(h))
                shortcut = conv(channels, strides, f"g{g}b{b}_shortcut")(x) if b == 0 else x
                x = h + shortcut
        x = global_avg_pool(x)
        return NTDense(
            s.d, s.readout_w_std, s.b_std, s.parameterization, self.param_dtype, name="readout"
        )(x)
