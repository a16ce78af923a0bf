"""``stepwise-ntk kernel``: the kernel-model staircase with the NTK of a registered architecture.

Same experiment as ``linear`` with ``K`` the infinite-width NTK of ``--arch`` (neural-tangents,
float64, cached when ``--cache-dir`` is given). The initial embeddings are those of the kernel
model ``f = W φ(x)`` with small random ``W``: each column of ``F0`` is a Gaussian sample with
covariance ``init_scale² K`` (for the linear kernel this is exactly ``X W(0)ᵀ``).
"""

from __future__ import annotations

import ast
import dataclasses
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from stepwise_ntk._checks import check_type
from stepwise_ntk.experiments._kernel_model import ExperimentSettings, load_problem_data, run_kernel_model
from stepwise_ntk.experiments._run_dir import RunDir
from stepwise_ntk.experiments._settings import PreconditionedRunFlags
from stepwise_ntk.kernels import ARCHITECTURES, analytic_ntk, make_architecture

__all__ = ["KernelSettings", "architecture_from_options", "run_kernel", "parse_options", "gaussian_embeddings"]


@dataclasses.dataclass(frozen=True)
class KernelSettings(PreconditionedRunFlags, ExperimentSettings):
    """Settings of ``stepwise-ntk kernel``."""

    arch: str = dataclasses.field(
        default="mlp", metadata={"help": "registered architecture", "choices": tuple(sorted(ARCHITECTURES))}
    )
    arch_options: str = dataclasses.field(
        default="", metadata={"help": "architecture fields as key=value,... (e.g. depth=3,activation=erf)"}
    )
    kernel_batch_size: int | None = dataclasses.field(
        default=None, metadata={"help": "NTK block size (default: largest that fits the memory budget)", "min": 1}
    )
    cache_dir: str | None = dataclasses.field(default=None, metadata={"help": "on-disk NTK cache folder"})

    def __post_init__(self):
        super().__post_init__()
        self.architecture()  # bad --arch-options fail here, before any data is loaded

    def architecture(self):
        """The architecture of ``--arch`` with ``--arch-options`` and ``d = --d``."""
        return architecture_from_options(self.arch, self.arch_options, d=self.d)


def parse_options(text: str) -> dict:
    """``"depth=3,activation=erf"`` -> ``{"depth": 3, "activation": "erf"}`` (Python literals or strings).

    Example:
        >>> parse_options("depth=3, activation=erf,w_std=1.5")
        {'depth': 3, 'activation': 'erf', 'w_std': 1.5}

    Raises:
      TypeError: ``text`` is not a string.
      ValueError: an item is not ``key=value``, has an empty key, or repeats a key.
    """
    check_type("--arch-options", text, str)
    options: dict = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in item:
            raise ValueError(f"--arch-options item {item!r} is not key=value; write e.g. depth=3,activation=erf.")
        key, value = (p.strip() for p in item.split("=", 1))
        if not key:
            raise ValueError(f"--arch-options item {item!r} has no key; write e.g. depth=3,activation=erf.")
        if key in options:
            raise ValueError(f"--arch-options sets {key!r} twice; give each field once.")
        try:
            options[key] = ast.literal_eval(value)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            options[key] = value
    return options


def architecture_from_options(arch: str, text: str, defaults: Mapping[str, Any] | None = None, **fixed: Any):
    """The registered architecture ``arch`` with ``defaults``, then ``--arch-options`` ``text``, then ``fixed``.

    A subcommand's own defaults (e.g. ``depth=1`` for the network's MLP) sit under the
    options: ``activation=erf`` changes the activation and keeps the depth. ``fixed``
    fields (``d``, ``width``) have flags of their own and may not be set in ``text``.

    Example:
        >>> architecture_from_options("mlp", "activation=erf", {"depth": 1}, d=3).depth
        1

    Raises:
      ValueError / TypeError: a malformed option, a field the architecture does not have, a
        value it refuses, or a ``fixed`` field in ``text``; the message names --arch-options.
    """
    options = parse_options(text)
    for key in fixed:
        if key in options:
            raise ValueError(f"--arch-options may not set {key!r}; use --{key}.")
    try:
        return make_architecture(arch, **{**(defaults or {}), **options, **fixed})
    except (TypeError, ValueError) as err:
        shown = f" {text!r}" if text else ""
        raise type(err)(f"--arch {arch} --arch-options{shown}: {err}") from None


def gaussian_embeddings(key: jax.Array, K: jax.Array, d: int, scale: float) -> jax.Array:
    """``(2n, d)`` columns i.i.d. ``N(0, scale² K)``: ``scale · V diag(√λ₊) z`` from ``eigh(K)``."""
    lam, V = jnp.linalg.eigh(K)
    z = jax.random.normal(key, (K.shape[0], d), K.dtype)
    return scale * (V * jnp.sqrt(jnp.clip(lam, 0.0))) @ z


def run_kernel(settings: KernelSettings, out: RunDir, *, progress: bool = True) -> str:
    """Run the experiment, write ``results.json``, ``arrays.npz`` and figures into ``out``."""
    s = settings
    started = time.perf_counter()
    arch = s.architecture()
    with out.phase(f"CIFAR-10 views ({2 * s.n_pairs})"):
        problem = load_problem_data(s)
    views = np.asarray(problem.views)
    kw = dict(dtype=np.float64, batch_size=s.kernel_batch_size, cache_dir=s.cache_dir, progress=progress)
    with out.phase(f"{arch.name} NTK of the {views.shape[0]} views"):
        K = jnp.asarray(analytic_ntk(arch, views, None, **kw))
    with out.phase(f"{arch.name} NTK between {problem.pool.shape[0]} gallery images and the views"):
        K_pool = jnp.asarray(analytic_ntk(arch, problem.pool, views, **kw))
    with out.phase("initial embeddings (eigh of K)"):
        F0 = gaussian_embeddings(problem.key_init, K, s.d, s.init_scale)
    return run_kernel_model(
        s,
        out,
        problem,
        K,
        F0,
        K_pool,
        title=f"{arch.name} NTK Barlow Twins, CIFAR-10 n={s.n_pairs}, d={s.d}",
        extra_results={"architecture": arch.to_config()},
        started=started,
        progress=progress,
    )
