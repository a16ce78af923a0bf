"""The shared part of an architecture spec: one declaration, two networks.

An architecture spec is a frozen dataclass. From it come

* ``spec.stax()`` -> ``(init_fn, apply_fn, kernel_fn)``: the neural-tangents network, whose
  ``kernel_fn`` gives the infinite-width NNGP / NTK;
* ``spec.flax(param_dtype)`` -> a ``flax.linen`` module: the finite-width twin with the
  same layers, parameterisation, variances, activation and readout.

Both map a batch of inputs (n, ...) to embeddings (n, d). ``width`` is a field, so
``spec.replace(width=w).flax()`` is the twin at width w. In the ``"ntk"`` parameterisation
the analytic kernels do not depend on ``width`` (nor on ``d``): the NTK returned for an
architecture is the per-output kernel Theta(x, y), the d x d output block being
Theta(x, y) I_d. In the ``"standard"`` parameterisation neural-tangents uses the actual
widths (the NTK grows with width), so the kernel depends on ``width``.

Output scale alpha (small initialisation): not part of the spec. Training multiplies the
network output by alpha, f -> alpha f; its NTK is alpha^2 times the kernel computed here
and its NNGP alpha^2 times too. Keeping alpha out of the spec keeps one cached kernel for
every alpha.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import warnings
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from stepwise_ntk.kernels.architectures._layers import ACTIVATIONS, PARAMETERIZATIONS, stax_activation
from stepwise_ntk.kernels._nt_compat import nt

__all__ = ["ArchSpec"]


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}.")


def _check_std(name: str, value: Any, allow_none: bool) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(
            f"{name} must be a finite float{' or None (no bias)' if allow_none else ''}, "
            f"got {value!r}."
        )
    if value < 0 or (value == 0 and not allow_none):
        raise ValueError(f"{name} must be {'>= 0' if allow_none else '> 0'}, got {value!r}.")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ArchSpec:
    """Fields every architecture has.

    Attributes:
      width: hidden width (MLP units, CNN channels). Ignored by the analytic kernel in the
        ``"ntk"`` parameterisation.
      d: embedding dimension = output width.
      activation: one of ``ACTIVATIONS`` ("relu", "erf", "gelu").
      w_std: weight standard deviation sigma_w of the hidden layers.
      b_std: bias standard deviation sigma_b; ``None`` means no bias parameters.
      readout_w_std: sigma_w of the final (readout) dense layer.
      parameterization: "ntk" or "standard" (see ``stepwise_ntk.kernels.architectures._layers``).
    """

    name: ClassVar[str] = "base"
    uses_conv: ClassVar[bool] = False

    width: int = 512
    d: int = 8
    activation: str = "relu"
    w_std: float = math.sqrt(2.0)
    b_std: float | None = None
    readout_w_std: float = 1.0
    parameterization: str = "ntk"

    def __post_init__(self) -> None:
        _check_positive_int("width", self.width)
        _check_positive_int("d", self.d)
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"unsupported activation {self.activation!r} for {type(self).__name__}: "
                f"use one of {ACTIVATIONS} (they have closed-form kernels in neural-tangents)."
            )
        if self.parameterization not in PARAMETERIZATIONS:
            raise ValueError(
                f"parameterization must be one of {PARAMETERIZATIONS}, "
                f"got {self.parameterization!r}."
            )
        _check_std("w_std", self.w_std, allow_none=False)
        _check_std("readout_w_std", self.readout_w_std, allow_none=False)
        _check_std("b_std", self.b_std, allow_none=True)
        self._validate()

    # --- to be provided by each architecture -------------------------------------------
    def _validate(self) -> None:
        """Extra field checks (raise ValueError)."""

    def _stax_layers(self) -> list:
        raise NotImplementedError

    def flax(self, param_dtype: Any = jnp.float32) -> nn.Module:
        """The finite-width Flax twin (``flax.linen`` module, (n, ...) -> (n, d))."""
        raise NotImplementedError

    def check_input_shape(self, shape: tuple[int, ...]) -> None:
        """Raise ValueError unless one input (no batch axis) of this shape is supported."""
        if len(shape) < 1 or min(shape) < 1:
            raise ValueError(f"{type(self).__name__} needs non-empty inputs, got shape {shape}.")

    # NT warnings that are known not to apply to this architecture (regexes).
    _ignored_nt_warnings: ClassVar[tuple[str, ...]] = ()

    # --- shared ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def _nt_context(self) -> Iterator[None]:
        # NT's internals mix numpy ints with floats (e.g. AvgPool divides by np.prod(window)),
        # which JAX's strict dtype promotion rejects; the inputs' dtype is still respected.
        with jax.numpy_dtype_promotion("standard"), warnings.catch_warnings():
            for pattern in self._ignored_nt_warnings:
                warnings.filterwarnings("ignore", message=pattern)
            yield

    def _in_nt_context(self, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapped(*args, **kwargs):
            with self._nt_context():
                return fn(*args, **kwargs)

        return wrapped

    def stax(self):
        """``(init_fn, apply_fn, kernel_fn)`` of the neural-tangents network.

        ``apply_fn`` and ``kernel_fn`` run with JAX's standard dtype promotion (NT's internals
        need it) whatever the global setting.
        """
        init_fn, apply_fn, kernel_fn = nt.stax.serial(*self._stax_layers())
        return init_fn, self._in_nt_context(apply_fn), self._in_nt_context(kernel_fn)

    def kernel_fn(self):
        """The neural-tangents ``kernel_fn(x1, x2=None, get=...)`` (infinite width)."""
        return self.stax()[2]

    def _dense(self, features: int, w_std: float):
        return nt.stax.Dense(
            features, W_std=w_std, b_std=self.b_std, parameterization=self.parameterization
        )

    def _conv(self, channels: int, strides: tuple[int, int] = (1, 1)):
        return nt.stax.Conv(
            channels, (3, 3), strides=strides, padding="SAME", W_std=self.w_std,
            b_std=self.b_std, parameterization=self.parameterization,
        )

    def _act(self):
        return stax_activation(self.activation)

    def replace(self, **changes: Any) -> ArchSpec:
        """A copy with some fields changed, e.g. ``spec.replace(width=1024)``."""
        return dataclasses.replace(self, **changes)

    def to_config(self) -> dict[str, Any]:
        """JSON-able dict {"arch": name, field: value, ...}; ``from_config`` inverts it."""
        return {"arch": self.name, **dataclasses.asdict(self)}

    def kernel_config(self) -> dict[str, Any]:
        """The fields the analytic kernels depend on (cache key): drops d, and width in "ntk"."""
        config = self.to_config()
        del config["d"]
        if self.parameterization == "ntk":
            del config["width"]
        return config
