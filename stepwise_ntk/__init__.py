"""stepwise_ntk: the NTK theory of stepwise self-supervised learning, as a JAX library.

The subpackages follow the pipeline::

    data -> kernels -> losses -> theory / solver -> training -> predictor
                                                 (experiments: the CLI application)

Each is imported on first use, so ``import stepwise_ntk.theory`` (or ``.solver``) loads
neither neural-tangents nor Flax nor optax. The most used names are re-exported here and
resolve lazily to their subpackage.

Example:
    >>> import stepwise_ntk as snt
    >>> snt.theory.contrastive_eigensystem is snt.contrastive_eigensystem
    True
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import stepwise_ntk._xla_flags as _xla_flags

# Before anything can start JAX's CPU backend: the XLA flags that avoid jaxlib's float64
# crashes on this CPU (stepwise_ntk._xla_flags).
_xla_flags.apply()

__version__ = "0.1.0"

SUBPACKAGES = ("data", "kernels", "losses", "theory", "solver", "training", "predictor", "experiments")

# name -> subpackage that defines it (resolved on first attribute access).
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(
        (
            "AugmentSettings",
            "CIFAR10_MEAN",
            "CIFAR10_STD",
            "CIFAR10Dataset",
            "CIFAR10Error",
            "balanced_subset",
            "channel_stats",
            "cifar10_pairs",
            "download_cifar10",
            "downsample",
            "load_cifar10",
            "normalize",
            "positive_pairs",
            "resolve_cifar10_dir",
        ),
        "data",
    ),
    **dict.fromkeys(
        (
            "ARCHITECTURES",
            "ArchSpec",
            "KernelMemoryError",
            "MLP",
            "MyrtleCNN",
            "WideResNet",
            "analytic_kernels",
            "analytic_ntk",
            "empirical_ntk",
            "make_architecture",
        ),
        "kernels",
    ),
    **dict.fromkeys(
        (
            "ContrastiveEigensystem",
            "aligned_eigenvalues",
            "contrastive_eigensystem",
            "final_embeddings",
            "procrustes_align",
            "step_times",
        ),
        "theory",
    ),
    **dict.fromkeys(("SolverSettings", "Trajectory", "solve"), "solver"),
    **dict.fromkeys(
        (
            "TrainSettings",
            "TrainResult",
            "TrainingDivergedWarning",
            "cross_correlation_eigenvalues",
            "record_steps",
            "train",
        ),
        "training",
    ),
    **dict.fromkeys(("compare_run", "predict_run", "subspace_alignment"), "predictor"),
}

__all__ = ["__version__", *SUBPACKAGES, *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    if name in SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value  # later look-ups skip __getattr__
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # static analysers see the eager imports
    from stepwise_ntk import data, experiments, kernels, losses, predictor, solver, theory, training  # noqa: F401
