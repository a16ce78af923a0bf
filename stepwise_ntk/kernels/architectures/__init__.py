"""Architectures: each declared once, giving the neural-tangents network and its Flax twin.

An architecture's topology is one tuple of layer records, ``arch.layers()`` (``Dense``,
``Conv``, ``Activation``, ``AvgPool2x2``, ``GlobalAvgPool``, ``Flatten``, ``Residual``).
``arch.stax()`` interprets it (``stax_network``) as the ``(init_fn, apply_fn, kernel_fn)``
triple of the infinite-width network and ``arch.flax()`` (``FlaxNetwork``) as the
finite-width Flax module with the same parameterisation, variances, activation and readout.
``ARCHITECTURES`` maps the CLI names (``"mlp"``, ``"myrtle"``, ``"wrn"``) to the spec classes.

Example:
    >>> from stepwise_ntk.kernels.architectures import make_architecture, from_config
    >>> arch = make_architecture("mlp", depth=2, width=64, d=4)
    >>> arch == from_config(arch.to_config())
    True
    >>> [type(layer).__name__ for layer in arch.layers()]
    ['Flatten', 'Dense', 'Activation', 'Dense', 'Activation', 'Dense']
"""

from stepwise_ntk.kernels.architectures._cnn import MYRTLE_STAGES
from stepwise_ntk.kernels.architectures._layers import ACTIVATIONS, PARAMETERIZATIONS
from stepwise_ntk.kernels.architectures._network import (
    Activation,
    AvgPool2x2,
    Conv,
    Dense,
    Flatten,
    FlaxNetwork,
    GlobalAvgPool,
    Residual,
    stax_network,
    weight_layers,
)
from stepwise_ntk.kernels.architectures._registry import (
    ARCHITECTURES,
    MLP,
    ArchSpec,
    MyrtleCNN,
    WideResNet,
    from_config,
    make_architecture,
)

__all__ = [
    "ACTIVATIONS",
    "ARCHITECTURES",
    "MLP",
    "MYRTLE_STAGES",
    "PARAMETERIZATIONS",
    "Activation",
    "ArchSpec",
    "AvgPool2x2",
    "Conv",
    "Dense",
    "Flatten",
    "FlaxNetwork",
    "GlobalAvgPool",
    "MyrtleCNN",
    "Residual",
    "WideResNet",
    "from_config",
    "make_architecture",
    "stax_network",
    "weight_layers",
]
