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

What is refused: the empirical-NTK implementations ``STRUCTURED_DERIVATIVES`` (3) and
``AUTO`` (0) are built on ``jax.interpreters.ad.linearize`` and JAX's internal backward
pass, whose signatures changed; they raise a ``ValueError`` naming the working
alternatives ``JACOBIAN_CONTRACTION`` (1) and ``NTK_VECTOR_PRODUCTS`` (2) when the
kernel function is built, instead of failing deep inside JAX when it is called.

Example:
    >>> from stepwise_ntk._nt_compat import nt
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
from collections.abc import Sequence

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
                    f"stepwise_ntk._nt_compat expects neural-tangents {NT_VERSION}: in "
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
            "`from stepwise_ntk._nt_compat import nt` instead of `import neural_tangents`."
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

SUPPORTED_NTK_IMPLEMENTATIONS: tuple[int, ...] = (
    int(nt.NtkImplementation.JACOBIAN_CONTRACTION),
    int(nt.NtkImplementation.NTK_VECTOR_PRODUCTS),
)


def check_implementation(implementation: int) -> None:
    """Raise ``ValueError`` unless ``implementation`` is an empirical-NTK method that works.

    Args:
      implementation: an ``nt.NtkImplementation`` value or its int (0 AUTO, 1 JACOBIAN_CONTRACTION,
        2 NTK_VECTOR_PRODUCTS, 3 STRUCTURED_DERIVATIVES).
    """
    if int(implementation) in SUPPORTED_NTK_IMPLEMENTATIONS:
        return
    try:
        name = nt.NtkImplementation(int(implementation)).name
    except ValueError:
        name = repr(implementation)
    raise ValueError(
        f"empirical NTK implementation {name} ({int(implementation)}) is not available on this "
        "JAX: neural-tangents 0.6.5 builds it on jax.interpreters.ad.linearize, whose signature "
        "changed. Use implementation=nt.NtkImplementation.JACOBIAN_CONTRACTION (1) or "
        "nt.NtkImplementation.NTK_VECTOR_PRODUCTS (2); both compute the same kernel."
    )


def _refuse(implementation: int):
    def build(**kwargs):
        check_implementation(implementation)

    return build


def _install_refusals(table: dict, refused: Sequence[int]) -> None:
    for implementation in refused:
        table[nt.NtkImplementation(implementation)] = _refuse(implementation)


_install_refusals(
    sys.modules["neural_tangents._src.empirical"]._implementation_to_ntk_fn,
    (int(nt.NtkImplementation.AUTO), int(nt.NtkImplementation.STRUCTURED_DERIVATIVES)),
)
