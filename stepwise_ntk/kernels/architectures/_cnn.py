"""Myrtle-style CNN (Shankar et al. 2020): 3x3 SAME convs, 2x2 average pooling, dense readout."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from stepwise_ntk.kernels.architectures._base import ArchSpec
from stepwise_ntk.kernels.architectures._layers import (
    NTConv,
    NTDense,
    activation_fn,
    avg_pool_2x2,
    global_avg_pool,
)
from stepwise_ntk.kernels._nt_compat import nt

__all__ = ["MYRTLE_STAGES", "MyrtleCNN"]

# depth -> number of conv+activation layers in each of the three stages (Myrtle-5/7/10);
# depth counts conv layers plus the readout.
MYRTLE_STAGES: dict[int, tuple[int, int, int]] = {5: (2, 1, 1), 7: (2, 2, 2), 10: (3, 3, 3)}


def _check_image_shape(arch: str, shape: tuple[int, ...], multiple: int) -> None:
    if len(shape) != 3:
        raise ValueError(
            f"{arch} takes NHWC images, i.e. inputs of shape (n, H, W, C); one input has shape "
            f"{shape}. Reshape flat vectors to images, e.g. x.reshape(n, 32, 32, 3)."
        )
    h, w, c = shape
    if min(shape) < 1 or h % multiple or w % multiple:
        raise ValueError(
            f"{arch} needs image height and width that are multiples of {multiple} (its "
            f"downsampling would otherwise drop border pixels); got H={h}, W={w}, C={c}. "
            "Crop or pad the images."
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class MyrtleCNN(ArchSpec):
    """Myrtle CNN: three stages of (Conv3x3(width) -> activation), 2x2 average pools between.

    Layers: [conv, phi] x s1, AvgPool 2x2, [conv, phi] x s2, AvgPool 2x2, [conv, phi] x s3,
    GlobalAvgPool, Dense(d), with (s1, s2, s3) = ``MYRTLE_STAGES[depth]``. On 32x32 images this
    is the Myrtle-5/7/10 of Shankar et al. (whose final three 2x2 pools on 8x8 equal a global
    average pool). Because of the pooling, the analytic kernel keeps the full spatial covariance:
    memory per pair of images grows like (H W)^2.

    Inputs: NHWC images (n, H, W, C) with H, W multiples of 4.

    Example:
      >>> spec = MyrtleCNN(depth=5, width=128, d=8)
      >>> net = spec.flax()          # (n, 32, 32, 3) -> (n, 8)
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
        _check_image_shape("MyrtleCNN", shape, 4)

    def _stax_layers(self) -> list:
        layers = []
        for stage, repeats in enumerate(MYRTLE_STAGES[self.depth]):
            if stage > 0:
                layers.append(nt.stax.AvgPool((2, 2), strides=(2, 2)))
            for _ in range(repeats):
                layers += [self._conv(self.width), self._act()]
        layers += [nt.stax.GlobalAvgPool(), self._dense(self.d, self.readout_w_std)]
        return layers

    def flax(self, param_dtype: Any = jnp.float32) -> nn.Module:
        return _MyrtleNet(spec=self, param_dtype=param_dtype)


class _MyrtleNet(nn.Module):
    """Flax twin of ``MyrtleCNN``; parameters ``conv_<i>`` and ``readout``."""

    spec: MyrtleCNN
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        s = self.spec
        phi = activation_fn(s.activation)
        i = 0
        for stage, repeats in enumerate(MYRTLE_STAGES[s.depth]):
            if stage > 0:
                x = avg_pool_2x2(x)
            for _ in range(repeats):
                x = NTConv(
                    s.width, (3, 3), s.w_std, s.b_std, parameterization=s.parameterization,
                    param_dtype=self.param_dtype, name=f"conv_{i}",
                )(x)
                x = phi(x)
                i += 1
        x = global_avg_pool(x)
        return NTDense(
            s.d, s.readout_w_std, s.b_std, s.parameterization, self.param_dtype, name="readout"
        )(x)
