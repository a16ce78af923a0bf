"""Fully-connected network: Flatten -> (Dense(width) -> activation) x depth -> Dense(d)."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from stepwise_ntk.kernels.architectures._base import ArchSpec, _check_positive_int
from stepwise_ntk.kernels.architectures._layers import NTDense, activation_fn
from stepwise_ntk.kernels._nt_compat import nt

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

    Example:
      >>> spec = MLP(depth=2, width=512, d=8)
      >>> init_fn, apply_fn, kernel_fn = spec.stax()
      >>> net = spec.flax()          # flax.linen module, (n, ...) -> (n, 8)
    """

    name: ClassVar[str] = "mlp"

    depth: int = 2

    def _validate(self) -> None:
        _check_positive_int("depth", self.depth)

    def _stax_layers(self) -> list:
        layers = [nt.stax.Flatten()]
        for _ in range(self.depth):
            layers += [self._dense(self.width, self.w_std), self._act()]
        layers.append(self._dense(self.d, self.readout_w_std))
        return layers

    def flax(self, param_dtype: Any = jnp.float32) -> nn.Module:
        return _MLPNet(spec=self, param_dtype=param_dtype)


class _MLPNet(nn.Module):
    """Flax twin of ``MLP``; parameters ``hidden_<i>`` and ``readout``."""

    spec: MLP
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        s = self.spec
        phi = activation_fn(s.activation)
        x = x.reshape(x.shape[0], -1)
        for i in range(s.depth):
            x = NTDense(
                s.width, s.w_std, s.b_std, s.parameterization, self.param_dtype, name=f"hidden_{i}"
            )(x)
            x = phi(x)
        return NTDense(
            s.d, s.readout_w_std, s.b_std, s.parameterization, self.param_dtype, name="readout"
        )(x)
