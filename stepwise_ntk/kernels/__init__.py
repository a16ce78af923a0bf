"""Wide-network kernels: one architecture definition for the infinite-width NTK and the
finite Flax network.

* Architectures (frozen dataclasses, registry ``ARCHITECTURES``): ``MLP``, ``MyrtleCNN``,
  ``WideResNet``; ``spec.stax()`` gives the neural-tangents network, ``spec.flax()`` its
  finite-width twin with the same parameterisation, variances, activation and readout.
* Analytic kernels: ``analytic_kernels`` / ``analytic_ntk`` (NNGP/NTK Grams and cross-kernels,
  blocked, memory-budgeted, multi-device, cached on disk).
* Empirical kernels: ``empirical_ntk`` of any network at given parameters.

Example:
  >>> from stepwise_ntk.kernels import MLP, analytic_ntk, empirical_ntk
  >>> spec = MLP(depth=2, width=1024, d=8)
  >>> K = analytic_ntk(spec, views)                     # (2n, 2n)
  >>> net = spec.flax(); params = net.init(key, views[:1])
  >>> K_emp = empirical_ntk(net, params, views)         # -> K as width grows
"""

from stepwise_ntk.kernels.architectures._base import ArchSpec
from stepwise_ntk.kernels.architectures._layers import ACTIVATIONS, PARAMETERIZATIONS
from stepwise_ntk.kernels.architectures._registry import (
    ARCHITECTURES,
    MLP,
    MyrtleCNN,
    WideResNet,
    from_config,
    make_architecture,
)
from stepwise_ntk.kernels._empirical import DEFAULT_IMPLEMENTATION, empirical_ntk
from stepwise_ntk.kernels._cache import KernelCache, array_fingerprint, cache_key
from stepwise_ntk.kernels._analytic import (
    KINDS,
    KernelMemoryError,
    analytic_kernels,
    analytic_ntk,
    default_memory_budget,
    device_memory_bytes,
    kernel_block_bytes,
)

__all__ = [
    # architectures
    "ACTIVATIONS",
    "ARCHITECTURES",
    "PARAMETERIZATIONS",
    "ArchSpec",
    "MLP",
    "MyrtleCNN",
    "WideResNet",
    "from_config",
    "make_architecture",
    # analytic kernels
    "KINDS",
    "KernelMemoryError",
    "analytic_kernels",
    "analytic_ntk",
    "default_memory_budget",
    "device_memory_bytes",
    "kernel_block_bytes",
    # empirical kernels
    "DEFAULT_IMPLEMENTATION",
    "empirical_ntk",
    # cache
    "KernelCache",
    "array_fingerprint",
    "cache_key",
]
