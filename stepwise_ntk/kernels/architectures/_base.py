"""The shared part of an architecture spec: one declaration, two networks.

An architecture spec is a frozen dataclass whose one method ``arch.layers()`` declares the
topology as a tuple of layer records (``stepwise_ntk.kernels.architectures._network``). From
that single description come

* ``arch.stax()`` -> ``(init_fn, apply_fn, kernel_fn)``: the neural-tangents network, whose
  ``kernel_fn`` gives the infinite-width NNGP / NTK;
* ``arch.flax(param_dtype)`` -> a ``flax.linen`` module: the finite-width twin with the
  same layers, parameterisation, variances, activation and readout.

Both map a batch of inputs (n, ...) to embeddings (n, d). ``width`` is a field, so
``arch.replace(width=w).flax()`` is the twin at width w. In the ``"ntk"`` parameterisation
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

import dataclasses
import math
from typing import Any, ClassVar

import flax.linen as nn
import jax.numpy as jnp

from stepwise_ntk._checks import check_positive_int
from stepwise_ntk.kernels.architectures._layers import ACTIVATIONS, PARAMETERIZATIONS
from stepwise_ntk.kernels.architectures._network import FlaxNetwork, Layer, stax_network

__all__ = ["ArchSpec", "check_image_shape"]


def check_image_shape(arch_name: str, shape: tuple[int, ...], multiple: int) -> None:
    """Raise ValueError unless one input ``shape`` is an (H, W, C) image, H and W % multiple == 0.

    Example:
      >>> check_image_shape("MyrtleCNN", (8, 8, 3), 4)
    """
    if len(shape) != 3:
        raise ValueError(
            f"{arch_name} takes NHWC images, i.e. inputs of shape (n, H, W, C); one input has "
            f"shape {shape}. Reshape flat vectors to images, e.g. x.reshape(n, 32, 32, 3)."
        )
    h, w, c = shape
    if min(shape) < 1 or h % multiple or w % multiple:
        raise ValueError(
            f"{arch_name} needs image height and width that are multiples of {multiple} (its "
            f"downsampling would otherwise drop border pixels); got H={h}, W={w}, C={c}. "
            "Crop or pad the images."
        )


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
    """Fields every architecture has; a subclass adds its own and declares ``layers()``.

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
        check_positive_int("width", self.width)
        check_positive_int("d", self.d)
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

    def layers(self) -> tuple[Layer, ...]:
        """The topology, declared once: a tuple of layer records (see ``_network``).

        ``stax()`` and ``flax()`` both interpret this tuple, so they cannot drift apart.
        """
        raise NotImplementedError

    def check_input_shape(self, shape: tuple[int, ...]) -> None:
        """Raise ValueError unless one input (no batch axis) of this shape is supported."""
        if len(shape) < 1 or min(shape) < 1:
            raise ValueError(f"{type(self).__name__} needs non-empty inputs, got shape {shape}.")

    # --- shared ---------------------------------------------------------------------------
    def stax(self):
        """``(init_fn, apply_fn, kernel_fn)`` of the neural-tangents network of ``layers()``.

        ``apply_fn`` maps (n, ...) to (n, d); ``kernel_fn(x1, x2=None, get=...)`` gives the
        infinite-width kernels (n1, n2). ``apply_fn`` and ``kernel_fn`` run with JAX's
        standard dtype promotion (NT's internals need it) whatever the global setting.
        """
        return stax_network(self.layers())

    def flax(self, param_dtype: Any = jnp.float32) -> nn.Module:
        """The finite-width Flax twin of ``layers()`` (``flax.linen`` module, (n, ...) -> (n, d)).

        Parameters ``params[name]`` for each weight layer of ``layers()``, in ``param_dtype``.
        """
        return FlaxNetwork(layers=self.layers(), param_dtype=param_dtype)

    def kernel_fn(self):
        """The neural-tangents ``kernel_fn(x1, x2=None, get=...)`` (infinite width)."""
        return self.stax()[2]

    def replace(self, **changes: Any) -> ArchSpec:
        """A copy with some fields changed, e.g. ``arch.replace(width=1024)``."""
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
