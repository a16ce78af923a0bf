"""A network as data: frozen layer records, and the two interpreters that read them.

An architecture declares its topology once, as ``arch.layers()``: a tuple of the records
below. ``stax_network(layers)`` turns that tuple into the neural-tangents network (whose
``kernel_fn`` is the infinite-width NNGP / NTK) and ``FlaxNetwork(layers=layers)`` into its
finite-width Flax twin. Every record has exactly one meaning in each interpreter, written
side by side in this module, so the two networks cannot drift apart.

Records:

* ``Dense(features, w_std, b_std, parameterization, name)``: ``nt.stax.Dense`` / ``NTDense``
  on the last axis; ``name`` is the Flax parameter collection (``params[name]``).
* ``Conv(features, w_std, b_std, parameterization, name, kernel_size, strides, padding)``:
  ``nt.stax.Conv`` / ``NTConv``, NHWC.
* ``Activation(function)``: one of ``ACTIVATIONS``.
* ``AvgPool2x2()``, ``GlobalAvgPool()``, ``Flatten()``: parameter-free reshapes.
* ``Residual(branch, shortcut)``: branch(x) + shortcut(x), each a tuple of records; an empty
  shortcut is the identity.

The Flax twin's parameters are flat, ``params[name]`` for every weight layer wherever it
sits (a residual branch adds no nesting), so parameter names are exactly the records' names.

Example:
  >>> import jax, jax.numpy as jnp
  >>> layers = (Flatten(), Dense(features=4, w_std=1.0, b_std=None, parameterization="ntk",
  ...                            name="readout"))
  >>> net = FlaxNetwork(layers=layers)
  >>> params = net.init(jax.random.key(0), jnp.ones((1, 2, 3), jnp.float32))
  >>> net.apply(params, jnp.ones((5, 2, 3), jnp.float32)).shape
  (5, 4)
  >>> stax_network(layers)[2](jnp.ones((5, 6), jnp.float32), None, "ntk").shape
  (5, 5)
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from stepwise_ntk.kernels._nt_compat import nt
from stepwise_ntk.kernels.architectures._layers import (
    NTConv,
    NTDense,
    activation_fn,
    avg_pool_2x2,
    global_avg_pool,
    stax_activation,
)

__all__ = [
    "Activation",
    "AvgPool2x2",
    "Conv",
    "Dense",
    "Flatten",
    "FlaxNetwork",
    "GlobalAvgPool",
    "Layer",
    "Residual",
    "check_layers",
    "stax_network",
    "weight_layers",
]


# --- the records ----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, kw_only=True)
class Dense:
    """Fully-connected layer on the last axis: (..., N) -> (..., features).

    Flax parameters ``params[name]["kernel"]`` (N, features) and, unless ``b_std is None``,
    ``params[name]["bias"]`` (features,); the formulas are in ``_layers``.
    """

    features: int
    w_std: float
    b_std: float | None
    parameterization: str
    name: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class Conv:
    """2-D convolution, NHWC (n, H, W, C) -> (n, H', W', features); kernel HWIO.

    Flax parameters ``params[name]["kernel"]`` (kh, kw, C, features) and, unless
    ``b_std is None``, ``params[name]["bias"]`` (features,).
    """

    features: int
    w_std: float
    b_std: float | None
    parameterization: str
    name: str
    kernel_size: tuple[int, int] = (3, 3)
    strides: tuple[int, int] = (1, 1)
    padding: str = "SAME"


@dataclasses.dataclass(frozen=True)
class Activation:
    """Elementwise nonlinearity ``function`` (one of ``ACTIVATIONS``), any shape."""

    function: str


@dataclasses.dataclass(frozen=True)
class AvgPool2x2:
    """2x2 average pooling, stride 2, VALID: (n, H, W, C) -> (n, H // 2, W // 2, C)."""


@dataclasses.dataclass(frozen=True)
class GlobalAvgPool:
    """Mean over the spatial axes: (n, H, W, C) -> (n, C)."""


@dataclasses.dataclass(frozen=True)
class Flatten:
    """All axes but the batch axis into one: (n, ...) -> (n, prod(...))."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Residual:
    """x -> branch(x) + shortcut(x); ``shortcut=()`` is the identity. Shapes must agree.

    ``branch`` must end in a ``Dense`` or ``Conv``: neural-tangents adds the two branches'
    kernels, which is exact only when their outputs are uncorrelated, and a last layer with
    fresh zero-mean weights makes them so at infinite width.
    """

    branch: tuple[Layer, ...]
    shortcut: tuple[Layer, ...] = ()

    def __post_init__(self) -> None:
        # Tuples, so that the record (hence the Flax module holding it) stays hashable.
        object.__setattr__(self, "branch", tuple(self.branch))
        object.__setattr__(self, "shortcut", tuple(self.shortcut))
        if not self.branch or not isinstance(self.branch[-1], (Dense, Conv)):
            raise ValueError(
                "a Residual branch must end in a Dense or Conv layer (neural-tangents sums the "
                "branch kernels assuming uncorrelated branches, which fresh weights guarantee); "
                f"got branch {self.branch}."
            )


Layer = Dense | Conv | Activation | AvgPool2x2 | GlobalAvgPool | Flatten | Residual
_RECORDS = (Dense, Conv, Activation, AvgPool2x2, GlobalAvgPool, Flatten, Residual)


def _walk(layers: tuple[Layer, ...]) -> Iterator[Layer]:
    # Depth first, branch before shortcut: the order of neural-tangents' parameter tree.
    for layer in layers:
        yield layer
        if isinstance(layer, Residual):
            yield from _walk(layer.branch)
            yield from _walk(layer.shortcut)


def weight_layers(layers: tuple[Layer, ...]) -> tuple[Dense | Conv, ...]:
    """The ``Dense`` and ``Conv`` records of ``layers``, in neural-tangents' parameter order.

    Example:
      >>> d = Dense(features=2, w_std=1.0, b_std=None, parameterization="ntk", name="readout")
      >>> [layer.name for layer in weight_layers((Flatten(), d))]
      ['readout']
    """
    return tuple(layer for layer in _walk(layers) if isinstance(layer, (Dense, Conv)))


def check_layers(layers: tuple[Layer, ...]) -> None:
    """Raise ValueError unless ``layers`` is a valid description (both interpreters call it).

    Checks: a non-empty tuple of known records; unique weight-layer names (they are the Flax
    parameter names, and neural-tangents would silently accept duplicates).
    """
    if not isinstance(layers, tuple) or not layers:
        raise ValueError(f"a network description is a non-empty tuple of layers, got {layers!r}.")
    unknown = [layer for layer in _walk(layers) if not isinstance(layer, _RECORDS)]
    if unknown:
        raise ValueError(
            f"unknown layer record(s) {unknown}: use "
            f"{', '.join(cls.__name__ for cls in _RECORDS)} from stepwise_ntk.kernels.architectures."
        )
    names = [layer.name for layer in weight_layers(layers)]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"weight-layer names must be unique (Flax parameter names); "
                         f"repeated: {duplicates}.")


# --- interpreter 1: the neural-tangents network --------------------------------------------

def _stax_sequence(layers: tuple[Layer, ...]):
    # A lone layer stays bare (not serial(layer)): serial would nest its parameters one level
    # deeper and split the PRNG key differently, changing neural-tangents' initial weights.
    if not layers:
        return nt.stax.Identity()
    if len(layers) == 1:
        return _stax_layer(layers[0])
    return nt.stax.serial(*map(_stax_layer, layers))


def _stax_layer(layer: Layer):
    match layer:
        case Dense():
            return nt.stax.Dense(layer.features, W_std=layer.w_std, b_std=layer.b_std,
                                 parameterization=layer.parameterization)
        case Conv():
            return nt.stax.Conv(layer.features, layer.kernel_size, strides=layer.strides,
                                padding=layer.padding, W_std=layer.w_std, b_std=layer.b_std,
                                parameterization=layer.parameterization)
        case Activation():
            return stax_activation(layer.function)
        case AvgPool2x2():
            return nt.stax.AvgPool((2, 2), strides=(2, 2))
        case GlobalAvgPool():
            return nt.stax.GlobalAvgPool()
        case Flatten():
            return nt.stax.Flatten()
        case Residual():
            return nt.stax.serial(
                nt.stax.FanOut(2),
                nt.stax.parallel(_stax_sequence(layer.branch), _stax_sequence(layer.shortcut)),
                nt.stax.FanInSum(),
            )
    raise TypeError(f"not a layer record: {layer!r}")


# NT warns at every FanInSum that it assumes independent branches; Residual guarantees it
# (its branch ends in fresh zero-mean weights), so the warning carries no information.
_FAN_IN_WARNING = "`FanIn` layers assume independent"


def _in_nt_context(fn: Callable, ignored_warnings: tuple[str, ...]) -> Callable:
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        # NT's internals mix numpy ints with floats (e.g. AvgPool divides by np.prod(window)),
        # which JAX's strict dtype promotion rejects; the inputs' dtype is still respected.
        with jax.numpy_dtype_promotion("standard"), warnings.catch_warnings():
            for pattern in ignored_warnings:
                warnings.filterwarnings("ignore", message=pattern)
            return fn(*args, **kwargs)

    return wrapped


def stax_network(layers: tuple[Layer, ...]):
    """``(init_fn, apply_fn, kernel_fn)`` of ``nt.stax.serial`` over the described layers.

    ``apply_fn(params, x)`` maps (n, ...) to (n, d); ``kernel_fn(x1, x2=None, get=...)`` gives
    the infinite-width NNGP / NTK, (n1, n2). Both run with JAX's standard dtype promotion
    (NT's internals need it) whatever the global setting.

    Example:
      >>> import jax.numpy as jnp
      >>> d = Dense(features=1, w_std=1.0, b_std=None, parameterization="ntk", name="readout")
      >>> stax_network((d,))[2](jnp.eye(3), None, "nngp").shape
      (3, 3)
    """
    check_layers(layers)
    init_fn, apply_fn, kernel_fn = nt.stax.serial(*map(_stax_layer, layers))
    ignored = (_FAN_IN_WARNING,) if any(isinstance(l, Residual) for l in _walk(layers)) else ()
    return init_fn, _in_nt_context(apply_fn, ignored), _in_nt_context(kernel_fn, ignored)


# --- interpreter 2: the finite-width Flax twin ---------------------------------------------

def _flax_sequence(layers: tuple[Layer, ...], x: jax.Array, param_dtype: Any) -> jax.Array:
    for layer in layers:
        x = _flax_layer(layer, x, param_dtype)
    return x


def _flax_layer(layer: Layer, x: jax.Array, param_dtype: Any) -> jax.Array:
    # Runs inside FlaxNetwork.__call__: the NTDense / NTConv created here become its direct
    # children, so every weight layer's parameters sit at params[layer.name].
    match layer:
        case Dense():
            return NTDense(layer.features, layer.w_std, layer.b_std, layer.parameterization,
                           param_dtype, name=layer.name)(x)
        case Conv():
            return NTConv(layer.features, layer.kernel_size, layer.w_std, layer.b_std,
                          strides=layer.strides, padding=layer.padding,
                          parameterization=layer.parameterization, param_dtype=param_dtype,
                          name=layer.name)(x)
        case Activation():
            return activation_fn(layer.function)(x)
        case AvgPool2x2():
            return avg_pool_2x2(x)
        case GlobalAvgPool():
            return global_avg_pool(x)
        case Flatten():
            return x.reshape(x.shape[0], -1)
        case Residual():
            return (_flax_sequence(layer.branch, x, param_dtype)
                    + _flax_sequence(layer.shortcut, x, param_dtype))
    raise TypeError(f"not a layer record: {layer!r}")


class FlaxNetwork(nn.Module):
    """The finite-width Flax twin of ``stax_network(layers)``: (n, ...) -> (n, d).

    Same layers, parameterisation and initial distributions as neural-tangents' finite
    network; parameters ``params[name]`` for each ``Dense`` / ``Conv`` record.
    """

    layers: tuple[Layer, ...]
    param_dtype: Any = jnp.float32

    def __post_init__(self) -> None:
        check_layers(self.layers)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return _flax_sequence(self.layers, x, self.param_dtype)
