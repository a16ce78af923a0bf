"""neural-tangents 0.6.5 on current JAX, without TensorFlow: the project's only door to it.

neural-tangents (NT) 0.6.5 is the last release. On current JAX it fails to import
(``jax.core.Jaxpr`` and friends moved to ``jax.extend.core``, ``jax.util`` and
``jax.interpreters.ad.zeros_like_p`` are gone) and its ``experimental`` package imports
TensorFlow. This module imports NT with a small, explicit set of source patches applied
by an import hook, instead of monkeypatching JAX: every patch is an exact text
replacement that must match the expected number of times, so a different NT release
fails loudly here rather than misbehaving later.

What is patched (all of it mechanical, none of it changes a formula):

* ``neural_tangents/__init__.py``: the TensorFlow-interop package ``experimental``
  (``empirical_ntk_fn_tf``) is not imported, so TensorFlow is never needed.
* ``jax.core.{Jaxpr, JaxprEqn, Literal, Primitive, Var}`` -> ``jax.extend.core``.
* ``jax.util.safe_map / safe_zip`` -> local equivalents (length-checked map/zip).
* ``jax.interpreters.ad.zeros_like_p`` no longer exists (no jaxpr can contain it), so
  its two structured-derivative rule registrations are dropped.
* ``scipy.linalg.eigvalsh(eigvals=...)`` (removed in SciPy 1.14) ->
  ``subset_by_index=...`` in ``predict.max_learning_rate``.
* ``predict.gradient_descent_mse``: ``jax.core.eval_context()`` is skipped when the
  train kernel is a tracer (e.g. under ``vmap``); stackless JAX raises there.
* The empirical-NTK implementations ``STRUCTURED_DERIVATIVES`` (3) and ``AUTO`` (0):
  ``ad.linearize`` changed signature, so the linear jaxpr comes from the public
  ``jax.linearize`` + ``jax.make_jaxpr``; the backward pass reads JAX's transpose rules
  from ``jax._src.interpreters.ad`` (the public module no longer re-exports them);
  references to removed JAX internals (map primitives, dynamic shapes, a debug-only
  check) are dropped, and AUTO reads ``cost_analysis()`` as the dict it now is.

All four implementations pass neural-tangents' own test suite (tools/nt_suite.py).

Example:
    >>> from stepwise_ntk.kernels._nt_compat import nt
    >>> _, _, kernel_fn = nt.stax.serial(nt.stax.Dense(1), nt.stax.Relu(), nt.stax.Dense(1))
    >>> import jax.numpy as jnp
    >>> kernel_fn(jnp.ones((2, 3)), None, "ntk").shape
    (2, 2)
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types

__all__ = ["nt", "NT_VERSION", "PATCHES", "SUPPORTED_NTK_IMPLEMENTATIONS", "check_implementation"]

NT_VERSION = "0.6.5"

# Length-checked map/zip with jax.util's semantics (it raised on a length mismatch).
_SAFE_MAP_ZIP = '''\
def map(f, *args):
  n = len(args[0])
  for arg in args[1:]:
    assert len(arg) == n, f"length mismatch: {[len(a) for a in args]}"
  return list(__import__("builtins").map(f, *args))


def zip(*args):
  n = len(args[0])
  for arg in args[1:]:
    assert len(arg) == n, f"length mismatch: {[len(a) for a in args]}"
  return list(__import__("builtins").zip(*args))
'''

_AD_LINEARIZE = """\
  fn_flat, out_tree = jax.api_util.flatten_fun_nokwargs(
      lu.wrap_init(fn), in_tree)

  # TODO(romann): handle call primitives more gracefully.
  with jax.disable_jit():
    outs = ad.linearize(fn_flat, *primals_in_flat, has_aux=False)

  primals_out, pvals, jaxpr, consts = outs
  primals_out = tree_unflatten(out_tree(), primals_out)

  def pullback_fn(*cts_in: PyTree):
    cts_in, _ = tree_flatten(cts_in)
    cts_in = tuple(ct for ct, pval in zip(cts_in, pvals) if not pval.is_known())
"""
# make_jaxpr instantiates zero output tangents, so every output keeps its cotangent.
_JAX_LINEARIZE = """\
  def fn_flat(*primals_flat):
    return fn(*tree_unflatten(in_tree, primals_flat))

  # TODO(romann): handle call primitives more gracefully.
  with jax.disable_jit():
    primals_out, fn_lin = jax.linearize(fn_flat, *primals_in_flat)
    closed_jaxpr = jax.make_jaxpr(fn_lin)(*primals_in_flat)
  jaxpr, consts = closed_jaxpr.jaxpr, closed_jaxpr.consts

  def pullback_fn(*cts_in: PyTree):
    cts_in, _ = tree_flatten(cts_in)
    cts_in = tuple(cts_in)
"""
_ENABLE_CHECKS_BLOCK = """\
  if ad.config.jax_enable_checks:
    ct_aval = core.get_aval(ct_env[v])
    joined_aval = core.lattice_join(
        v.aval, ct_aval).strip_weak_type().strip_named_shape()
    assert v.aval.strip_weak_type().strip_named_shape() == joined_aval, (
        prim, v.aval, ct_aval)
"""
_DSHAPED_BLOCK = """\
  if type(a) is core.DShapedArray:
    shape = [env[d] if type(d) is core.Var else d for d in a.shape]
    a = a.update(shape=tuple(shape))
"""

_EVAL_CONTEXT_UNLESS_TRACED = """

def _eval_context_unless_traced(x):
  \"\"\"eval_context() for a concrete x; none for a tracer, whose own trace must run it.\"\"\"
  return contextlib.nullcontext() if isinstance(x, jax.core.Tracer) else jax.core.eval_context()
"""

# module name -> ((old text, new text, expected number of occurrences), ...)
PATCHES: dict[str, tuple[tuple[str, str, int], ...]] = {
    "neural_tangents": (
        ("from . import experimental\n", "", 1),
    ),
    "neural_tangents._src.empirical": (
        ("from jax.core import Jaxpr\n", "from jax.extend.core import Jaxpr\n", 1),
        ("from jax.core import JaxprEqn\n", "from jax.extend.core import JaxprEqn\n", 1),
        ("from jax.core import Literal\n", "from jax.extend.core import Literal\n", 1),
        ("from jax.core import Var\n", "from jax.extend.core import Var\n", 1),
        (
            "from jax.util import safe_map as map\nfrom jax.util import safe_zip as zip\n",
            _SAFE_MAP_ZIP,
            1,
        ),
        # An annotation evaluated at definition time (structured-derivatives code only).
        ("    prim: core.Primitive,\n", "    prim: 'Primitive',\n", 1),
        # jnp.size of a ShapeDtypeStruct is deprecated (a future JAX error); .shape is exact.
        (
            "np.cumsum([jnp.size(l) for l in leaves[:-1]])",
            "np.cumsum([int(np.prod(l.shape)) for l in leaves[:-1]])",
            1,
        ),
        ("ndim = sum(map(jnp.size, leaves))", "ndim = sum(int(np.prod(l.shape)) for l in leaves)", 1),
        # Structured derivatives use JAX's transpose rules, source_info_util and
        # reducing_transposes, which the public jax.interpreters.ad no longer re-exports.
        ("from jax.interpreters import ad\n", "from jax._src.interpreters import ad\n", 1),
        # ad.linearize changed signature; the public jax.linearize + make_jaxpr give the
        # same linear jaxpr (tangents in, tangents out) with the residuals as consts.
        (_AD_LINEARIZE, _JAX_LINEARIZE, 1),
        # Map primitives (pmap) no longer exist as a Primitive flag.
        (
            "    if eqn.primitive.call_primitive or eqn.primitive.map_primitive:\n",
            "    if eqn.primitive.call_primitive:\n",
            1,
        ),
        # A debug-only check (off by default) built on core.lattice_join, which is gone.
        (_ENABLE_CHECKS_BLOCK, "", 1),
        # Dynamic shapes (core.DShapedArray) were removed from JAX.
        (_DSHAPED_BLOCK, "", 1),
        # jnp.dtype(array) is deprecated (a future JAX error); the array's own dtype is it.
        (
            "tree_map(jnp.dtype, params)",
            "tree_map(lambda x: jnp.dtype(getattr(x, 'dtype', x)), params)",
            1,
        ),
        # Compiled.cost_analysis() returns a dict now, not a one-element list (AUTO).
        (
            "analysis = e.compile().cost_analysis()[0]\n",
            "analysis = e.compile().cost_analysis()\n",
            1,
        ),
    ),
    "neural_tangents._src.utils.rules": (
        ("from jax.core import Jaxpr\n", "from jax.extend.core import Jaxpr\n", 1),
        ("from jax.core import JaxprEqn\n", "from jax.extend.core import JaxprEqn\n", 1),
        ("from jax.core import Literal\n", "from jax.extend.core import Literal\n", 1),
        ("from jax.core import Primitive\n", "from jax.extend.core import Primitive\n", 1),
        ("from jax.core import Var\n", "from jax.extend.core import Var\n", 1),
        ("STRUCTURE_RULES[jax.interpreters.ad.zeros_like_p] = _eye_s\n", "", 1),
        ("JACOBIAN_RULES[jax.interpreters.ad.zeros_like_p] = _zeros_like_j\n", "", 1),
    ),
    "neural_tangents._src.predict": (
        # eval_context() may no longer touch a tracer (stackless tracing raises
        # UnexpectedTracerError, e.g. for a kernel computed under vmap); the old trace stack
        # let the tracer's own trace handle it, which is what skipping the context does.
        ("import collections\n", "import collections\nimport contextlib\n", 1),
        ("import scipy as sp\n", "import scipy as sp\n" + _EVAL_CONTEXT_UNLESS_TRACED, 1),
        (
            "    with jax.core.eval_context():\n      solve = _get_cho_solve(",
            "    with _eval_context_unless_traced(k_train_train):\n      solve = _get_cho_solve(",
            1,
        ),
        (
            "    with jax.core.eval_context():\n      expm1_fn, inv_expm1_fn = ",
            "    with _eval_context_unless_traced(k_train_train):\n      expm1_fn, inv_expm1_fn = ",
            1,
        ),
        (
            "eigvals=(ntk_train_train.shape[0] - 1,",
            "subset_by_index=(ntk_train_train.shape[0] - 1,",
            1,
        ),
    ),
}


class _PatchingLoader(importlib.machinery.SourceFileLoader):
    """Loads an NT module from its source with the module's PATCHES applied."""

    def get_code(self, fullname):  # noqa: D401 - importlib API
        source = self.get_data(self.path).decode("utf-8")
        for old, new, count in PATCHES.get(fullname, ()):
            found = source.count(old)
            if found != count:
                raise ImportError(
                    f"stepwise_ntk.kernels._nt_compat expects neural-tangents {NT_VERSION}: in "
                    f"{fullname} the text {old.strip()!r} occurs {found} times, expected "
                    f"{count}. Install neural-tangents=={NT_VERSION} (uv sync does)."
                )
            source = source.replace(old, new)
        return compile(source, self.path, "exec", dont_inherit=True)


class _PatchingFinder(importlib.abc.MetaPathFinder):
    """Routes the modules named in PATCHES through _PatchingLoader; bytecode caches unused."""

    def find_spec(self, fullname, path, target=None):
        if fullname not in PATCHES:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or not isinstance(spec.loader, importlib.machinery.SourceFileLoader):
            return None
        spec.loader = _PatchingLoader(fullname, spec.origin)
        return spec


def _import_patched() -> types.ModuleType:
    loaded = sys.modules.get("neural_tangents")
    if loaded is not None:
        if getattr(loaded, "_stepwise_ntk_patched", False):
            return loaded
        raise ImportError(
            "neural_tangents was imported before stepwise_ntk and is unpatched (it does not "
            "work on this JAX). Import stepwise_ntk first, or use "
            "`from stepwise_ntk.kernels._nt_compat import nt` instead of `import neural_tangents`."
        )
    finder = _PatchingFinder()
    sys.meta_path.insert(0, finder)
    try:
        module = importlib.import_module("neural_tangents")
    finally:
        sys.meta_path.remove(finder)
    if module.__version__ != NT_VERSION:
        raise ImportError(
            f"stepwise_ntk needs neural-tangents=={NT_VERSION}, found {module.__version__}."
        )
    module._stepwise_ntk_patched = True
    return module


nt = _import_patched()

SUPPORTED_NTK_IMPLEMENTATIONS: tuple[int, ...] = tuple(int(i) for i in nt.NtkImplementation)


def check_implementation(implementation: int) -> None:
    """Raise ``ValueError`` unless ``implementation`` names an empirical-NTK method.

    Args:
      implementation: an ``nt.NtkImplementation`` value or its int (0 AUTO, 1 JACOBIAN_CONTRACTION,
        2 NTK_VECTOR_PRODUCTS, 3 STRUCTURED_DERIVATIVES); all four work on this JAX.
    """
    if int(implementation) in SUPPORTED_NTK_IMPLEMENTATIONS:
        return
    names = ", ".join(f"{i.name} ({int(i)})" for i in nt.NtkImplementation)
    raise ValueError(
        f"unknown empirical NTK implementation {implementation!r}; use one of "
        f"nt.NtkImplementation: {names}."
    )
