"""Empirical NTK of a finite network at given parameters (e.g. the Flax twin).

For a network f(x; theta) in R^d the empirical NTK is the (n1 d) x (n2 d) matrix
J(x1) J(x2)^T with J = df/dtheta. This module returns its per-output version

  Theta_emp(x, y) = (1/d) sum_a <df_a(x)/dtheta, df_a(y)/dtheta>       (n1, n2)

i.e. the trace over the d outputs divided by d (neural-tangents' ``trace_axes=(-1,)``,
which normalises the trace by the axis size). At infinite width the d x d output block is
Theta(x, y) I_d, so this is the quantity that converges to the analytic NTK of the
architecture (``stepwise_ntk.kernels._analytic.analytic_ntk``), at the rate 1/sqrt(width).

Implementation (neural-tangents ``NtkImplementation``; all compute the same kernel, tested
against an explicit Jacobian contraction):
* ``STRUCTURED_DERIVATIVES`` (3, default): contracts the Jacobians layer by layer using
  their structure (a dense or conv layer's dy/dW is a Kronecker-like product) instead of
  materialising them. Measured on 8 inputs of 8x8x3, float32, one CPU (min of 3, after
  compilation): MLP depth 2, width 1024, d=4: 0.019 s against 2.4 s for
  JACOBIAN_CONTRACTION and 0.50 s for NTK_VECTOR_PRODUCTS; Myrtle-5, width 128, d=4:
  0.13 s against 1.1 s and 0.85 s. It also compiles fastest.
* ``JACOBIAN_CONTRACTION`` (1): materialises the Jacobians of a block (b x d x P numbers
  for P parameters) and contracts them. Simple and robust, memory-hungry.
* ``NTK_VECTOR_PRODUCTS`` (2): never stores a Jacobian (memory ~ parameters + activations)
  but does d vector-Jacobian products per column.
* ``AUTO`` (0): traces all three and keeps the one with the fewest FLOPs (slow to compile,
  and neural-tangents prints the FLOP counts).

Blocks, devices, memory refusal and the progress bar work as for the analytic kernels.

Example:
  >>> import jax, jax.numpy as jnp, numpy as np
  >>> from stepwise_ntk.kernels import MLP, empirical_ntk
  >>> arch = MLP(depth=2, width=256, d=8)
  >>> net = arch.flax(jnp.float64)
  >>> x = np.random.default_rng(0).normal(size=(6, 4, 4, 3))
  >>> params = net.init(jax.random.PRNGKey(0), x[:1])
  >>> K_emp = empirical_ntk(net, params, x, progress=False)   # per-output NTK
  >>> K_emp.shape, K_emp.dtype
  ((6, 6), dtype('float64'))
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from stepwise_ntk.kernels._analytic import BlockFns, blocked_gram, check_dtype, check_inputs
from stepwise_ntk.kernels._nt_compat import check_implementation, nt

__all__ = ["DEFAULT_IMPLEMENTATION", "empirical_ntk"]

DEFAULT_IMPLEMENTATION = nt.NtkImplementation.STRUCTURED_DERIVATIVES


@functools.lru_cache(maxsize=32)
def _empirical_block_fns(net: Any, implementation: int, vmap_axes: int | None) -> BlockFns:
    apply = net.apply if isinstance(net, nn.Module) else net
    ntk_fn = nt.empirical_ntk_fn(
        apply, trace_axes=(-1,), vmap_axes=vmap_axes,
        implementation=nt.NtkImplementation(implementation),
    )

    @jax.jit
    def off(params, xa, xb):
        return (ntk_fn(xa, xb, params),)

    @jax.jit
    def diag(params, xa):
        return (ntk_fn(xa, None, params),)

    return BlockFns(off=off, diag=diag, n_out=1)


def _params_dtype(params: Any) -> np.dtype:
    dtypes = {np.dtype(leaf.dtype) for leaf in jax.tree.leaves(params)
              if np.issubdtype(np.dtype(leaf.dtype), np.floating)}
    if len(dtypes) != 1:
        raise ValueError(
            "params must hold floating arrays of one dtype (float32 or float64), found "
            f"{sorted(str(d) for d in dtypes) or 'none'}; initialise the network with a single "
            "param_dtype, e.g. arch.flax(jnp.float64)."
        )
    return dtypes.pop()


def empirical_ntk(
    net: nn.Module | Callable[[Any, Any], Any],
    params: Any,
    x1: Any,
    x2: Any = None,
    *,
    implementation: int = DEFAULT_IMPLEMENTATION,
    batch_size: int | None = None,
    memory_budget_bytes: int | None = None,
    devices: Sequence[jax.Device] | None = None,
    vmap_axes: int | None = 0,
    progress: bool = True,
) -> np.ndarray:
    """Per-output empirical NTK (1/d) tr_d J(x1) J(x2)^T of a network at ``params``.

    Args:
      net: a ``flax.linen`` module (``net.apply(params, x)`` is used), e.g. ``arch.flax()``,
        or any function ``f(params, x) -> (n, d)``.
      params: the parameters (for Flax, the variables dict from ``init`` or training); all
        floating leaves of one dtype, which is also the compute dtype (inputs are cast to it).
      x1: (n1, ...) inputs; x2: (n2, ...) or None for the symmetric Gram of x1.
      implementation: an ``nt.NtkImplementation`` (default ``STRUCTURED_DERIVATIVES``); see
        the module docstring for the measured trade-offs.
      batch_size, memory_budget_bytes, devices, progress: as ``analytic_kernels``.
      vmap_axes: 0 certifies that outputs are computed input by input (no batch statistics),
        which lets NT vectorise; use None for a network that mixes the batch.

    Returns:
      (n1, n2) numpy array in the parameters' dtype.

    Raises:
      ValueError: unknown implementation, mixed parameter dtypes, outputs that are not
        (n, d), inputs of different shapes.
      KernelMemoryError: a block (at ``batch_size``) or the result does not fit.
    """
    check_implementation(implementation)
    dt = check_dtype(_params_dtype(params))
    x1 = check_inputs(None, x1, "x1", dt)
    x2 = None if x2 is None else check_inputs(None, x2, "x2", dt, like=x1)
    apply = net.apply if isinstance(net, nn.Module) else net
    with jax.enable_x64(bool(dt == np.float64)):
        out = jax.eval_shape(apply, params, jax.ShapeDtypeStruct((1, *x1.shape[1:]), dt))
    if not hasattr(out, "shape") or len(out.shape) != 2 or out.shape[0] != 1:
        raise ValueError(
            "empirical_ntk needs a network with one (n, d) output; for one input it returned "
            f"{jax.tree.map(lambda a: a.shape, out)}."
        )
    fns = _empirical_block_fns(net, int(implementation), vmap_axes)
    (ntk,) = blocked_gram(
        fns, (params,), x1, x2, batch_size=batch_size, memory_budget_bytes=memory_budget_bytes,
        devices=devices, progress=progress, what="empirical NTK",
    )
    return ntk
