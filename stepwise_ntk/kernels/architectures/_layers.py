"""Flax layers that reproduce neural-tangents' finite-width layers exactly.

Each layer here is the Flax twin of one ``nt.stax`` layer: same initial distribution,
same forward formula, so a Flax network built from them *is* the network whose
infinite-width kernels ``nt.stax`` computes (checked in tests/test_architectures.py by
feeding both the same weights, and by the width-convergence test).

Parameterisations (neural-tangents 0.6.5, ``stax.Dense`` / ``stax.Conv`` with ``s=(1, 1)``),
for a layer with fan-in N (input features, or input channels x filter size):

* ``"ntk"``:      W ~ N(0, 1), b ~ N(0, 1);   z = (w_std / sqrt(N)) W x + b_std b.
* ``"standard"``: W ~ N(0, w_std^2 / N), b ~ N(0, b_std^2);   z = W x + b.

Both give the same function at initialisation; they differ in the gradients, hence the
NTK (in ``"standard"`` the NTK grows with the width, and neural-tangents' kernel uses the
actual layer widths). ``b_std=None`` means no bias parameter at all (as in NT).

Activations (``ACTIVATIONS``) match NT: ``relu`` = ``stax.Relu()``, ``erf`` = ``stax.Erf()``
(erf(x), a=b=1, c=0), ``gelu`` = ``stax.Gelu(approximate=False)`` (x/2 (1 + erf(x/sqrt 2)),
the exact GELU, whose closed-form kernel NT implements).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.dtypes import promote_dtype

from stepwise_ntk.kernels._nt_compat import nt

__all__ = [
    "ACTIVATIONS",
    "PARAMETERIZATIONS",
    "NTConv",
    "NTDense",
    "activation_fn",
    "avg_pool_2x2",
    "global_avg_pool",
    "stax_activation",
]

PARAMETERIZATIONS = ("ntk", "standard")

# name -> (finite-width function, NT stax layer factory)
_ACTIVATIONS: dict[str, tuple[Callable[[jax.Array], jax.Array], Callable[[], Any]]] = {
    "relu": (jax.nn.relu, lambda: nt.stax.Relu()),
    "erf": (jax.scipy.special.erf, lambda: nt.stax.Erf(a=1.0, b=1.0, c=0.0)),
    "gelu": (
        lambda x: jax.nn.gelu(x, approximate=False),
        lambda: nt.stax.Gelu(approximate=False),
    ),
}
ACTIVATIONS = tuple(_ACTIVATIONS)


def _check_activation(name: str) -> None:
    if name not in _ACTIVATIONS:
        raise ValueError(
            f"unsupported activation {name!r}: the twin needs a closed-form infinite-width "
            f"kernel in neural-tangents and a matching Flax function. Use one of {ACTIVATIONS}."
        )


def activation_fn(name: str) -> Callable[[jax.Array], jax.Array]:
    """The finite-width activation function named ``name`` (one of ``ACTIVATIONS``)."""
    _check_activation(name)
    return _ACTIVATIONS[name][0]


def stax_activation(name: str):
    """The ``nt.stax`` layer for activation ``name`` (one of ``ACTIVATIONS``)."""
    _check_activation(name)
    return _ACTIVATIONS[name][1]()


def _weight_init(parameterization: str, w_std: float, fan_in: int):
    std = 1.0 if parameterization == "ntk" else w_std / math.sqrt(fan_in)
    return nn.initializers.normal(stddev=std)


def _bias_init(parameterization: str, b_std: float):
    return nn.initializers.normal(stddev=1.0 if parameterization == "ntk" else b_std)


class NTDense(nn.Module):
    """Twin of ``nt.stax.Dense(features, w_std, b_std, parameterization=...)``.

    Acts on the last axis: x: (..., N) -> (..., features). Parameters ``kernel`` (N, features)
    and, unless ``b_std is None``, ``bias`` (features,).
    """

    features: int
    w_std: float
    b_std: float | None
    parameterization: str = "ntk"
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        fan_in = x.shape[-1]
        kernel = self.param(
            "kernel",
            _weight_init(self.parameterization, self.w_std, fan_in),
            (fan_in, self.features),
            self.param_dtype,
        )
        bias = None
        if self.b_std is not None:
            bias = self.param(
                "bias", _bias_init(self.parameterization, self.b_std), (self.features,),
                self.param_dtype,
            )
        x, kernel, bias = promote_dtype(x, kernel, bias)
        y = x @ kernel
        if self.parameterization == "ntk":
            y = y * (self.w_std / math.sqrt(fan_in))
            if bias is not None:
                y = y + self.b_std * bias
        elif bias is not None:
            y = y + bias
        return y


class NTConv(nn.Module):
    """Twin of ``nt.stax.Conv(features, kernel_size, strides, padding, w_std, b_std, ...)``.

    NHWC in, NHWC out; ``kernel`` is HWIO (kh, kw, C_in, features); fan-in N = kh kw C_in.
    """

    features: int
    kernel_size: tuple[int, int]
    w_std: float
    b_std: float | None
    strides: tuple[int, int] = (1, 1)
    padding: str = "SAME"
    parameterization: str = "ntk"
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        fan_in = x.shape[-1] * math.prod(self.kernel_size)
        kernel = self.param(
            "kernel",
            _weight_init(self.parameterization, self.w_std, fan_in),
            (*self.kernel_size, x.shape[-1], self.features),
            self.param_dtype,
        )
        bias = None
        if self.b_std is not None:
            bias = self.param(
                "bias", _bias_init(self.parameterization, self.b_std), (self.features,),
                self.param_dtype,
            )
        x, kernel, bias = promote_dtype(x, kernel, bias)
        y = jax.lax.conv_general_dilated(
            x, kernel, self.strides, self.padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        if self.parameterization == "ntk":
            y = y * (self.w_std / math.sqrt(fan_in))
            if bias is not None:
                y = y + self.b_std * bias
        elif bias is not None:
            y = y + bias
        return y


def avg_pool_2x2(x: jax.Array) -> jax.Array:
    """Twin of ``nt.stax.AvgPool((2, 2), strides=(2, 2))`` (VALID): mean of each 2x2 window.

    NHWC (n, H, W, C) -> (n, H // 2, W // 2, C); an odd last row/column is dropped, as VALID
    pooling does. (Not ``nn.avg_pool``: it divides by a numpy int, which JAX's strict dtype
    promotion rejects.)
    """
    n, h, w, c = x.shape
    x = x[:, : h - h % 2, : w - w % 2]
    return jnp.mean(x.reshape(n, h // 2, 2, w // 2, 2, c), axis=(2, 4))


def global_avg_pool(x: jax.Array) -> jax.Array:
    """Twin of ``nt.stax.GlobalAvgPool()``: NHWC -> NC, mean over H and W."""
    return jnp.mean(x, axis=(1, 2))
