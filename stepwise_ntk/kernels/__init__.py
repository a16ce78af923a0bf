"""Wide-network kernels: one architecture definition for the infinite-width NTK and the
finite Flax network.

* Architectures (frozen dataclasses, registry ``ARCHITECTURES``): ``MLP``, ``MyrtleCNN``,
  ``WideResNet``; ``arch.stax()`` gives the neural-tangents network, ``arch.flax()`` its
  finite-width twin with the same parameterisation, variances, activation and readout.
* Analytic kernels: ``analytic_kernels`` / ``analytic_ntk`` (NNGP/NTK Grams and cross-kernels,
  blocked, memory-budgeted, multi-device, cached on disk).
* Empirical kernels: ``empirical_ntk`` of any network at given parameters.

Example:
  >>> import jax, jax.numpy as jnp, numpy as np
  >>> from stepwise_ntk.kernels import MLP, analytic_ntk, empirical_ntk
  >>> arch = MLP(depth=2, width=1024, d=8)
  >>> views = np.random.default_rng(0).normal(size=(8, 4, 4, 3))   # 2n = 8 views
  >>> K = analytic_ntk(arch, views, progress=False)                  # (2n, 2n)
  >>> net = arch.flax(jnp.float64)
  >>> params = net.init(jax.random.PRNGKey(0), views[:1])
  >>> K_emp = empirical_ntk(net, params, views, progress=False)      # -> K as width grows
  >>> K.shape == K_emp.shape == (8, 8)
  True
"""

from stepwise_ntk.kernels._analytic import (
    KINDS,
    KernelMemoryError,
    analytic_kernels,
    analytic_ntk,
    default_memory_budget,
    device_memory_bytes,
    kernel_block_bytes,
)
from stepwise_ntk.kernels._cache import KernelCache, array_fingerprint, cache_key
from stepwise_ntk.kernels._empirical import DEFAULT_IMPLEMENTATION, empirical_ntk
from stepwise_ntk.kernels.architectures import (
    ACTIVATIONS,
    ARCHITECTURES,
    MLP,
    PARAMETERIZATIONS,
    ArchSpec,
    MyrtleCNN,
    WideResNet,
    from_config,
    make_architecture,
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
