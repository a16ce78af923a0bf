"""Architecture registry: name -> spec class, so a CLI can say ``--arch mlp``.

Each architecture is declared once as a frozen dataclass (``MLP``, ``MyrtleCNN``,
``WideResNet``) whose ``arch.layers()`` yields both the neural-tangents network
(``arch.stax()``, infinite-width kernels) and its finite-width Flax twin (``arch.flax()``);
see ``stepwise_ntk.kernels.architectures._base``.

Example:
  >>> arch = make_architecture("mlp", depth=2, width=1024, d=8)
  >>> arch == from_config(arch.to_config())
  True
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from stepwise_ntk.kernels.architectures._base import ArchSpec
from stepwise_ntk.kernels.architectures._cnn import MyrtleCNN
from stepwise_ntk.kernels.architectures._mlp import MLP
from stepwise_ntk.kernels.architectures._resnet import WideResNet

__all__ = [
    "ARCHITECTURES",
    "MLP",
    "ArchSpec",
    "MyrtleCNN",
    "WideResNet",
    "from_config",
    "make_architecture",
]

ARCHITECTURES: Mapping[str, type[ArchSpec]] = {
    cls.name: cls for cls in (MLP, MyrtleCNN, WideResNet)
}


def make_architecture(name: str, **fields: Any) -> ArchSpec:
    """The spec registered as ``name`` ("mlp", "myrtle", "wrn") with the given fields.

    Example:
      >>> make_architecture("wrn", width=16).blocks_per_group
      1

    Raises:
      ValueError: unknown name, or a field the architecture does not have (lists the valid ones).
    """
    if name not in ARCHITECTURES:
        raise ValueError(
            f"unknown architecture {name!r}: registered are {sorted(ARCHITECTURES)}. "
            "Add a spec class to stepwise_ntk.kernels.architectures._registry.ARCHITECTURES for a new one."
        )
    cls = ARCHITECTURES[name]
    valid = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - valid)
    if unknown:
        raise ValueError(
            f"{cls.__name__} ({name!r}) has no field(s) {unknown}; its fields are {sorted(valid)}."
        )
    return cls(**fields)


def from_config(config: Mapping[str, Any]) -> ArchSpec:
    """Inverse of ``arch.to_config()``: {"arch": name, field: value, ...} -> spec.

    Example:
      >>> from_config({"arch": "mlp", "depth": 3}) == MLP(depth=3)
      True
    """
    config = dict(config)
    if "arch" not in config:
        raise ValueError(
            f"architecture config needs an 'arch' key naming one of {sorted(ARCHITECTURES)}; "
            f"got keys {sorted(config)}."
        )
    return make_architecture(config.pop("arch"), **config)
