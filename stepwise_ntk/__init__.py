"""stepwise_ntk: the NTK theory of stepwise self-supervised learning, as a JAX library.

Pipeline: data (CIFAR-10 positive pairs) -> kernels (neural-tangents NTK) -> theory /
solver (kernel Barlow Twins gradient flow) -> training (Flax twins) -> predictor.
"""

__version__ = "0.1.0"

# data
from stepwise_ntk._augment import AugmentConfig, cifar10_pairs, downsample, positive_pairs
from stepwise_ntk._cifar10 import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR10Dataset,
    CIFAR10Error,
    balanced_subset,
    channel_stats,
    download_cifar10,
    load_cifar10,
    normalize,
    resolve_cifar10_dir,
)
# architectures and kernels
from stepwise_ntk._architectures import ARCHITECTURES, MLP, ArchSpec, MyrtleCNN, WideResNet, make_architecture
from stepwise_ntk._empirical import empirical_ntk
from stepwise_ntk._kernels import KernelMemoryError, analytic_kernels, analytic_ntk

# theory and solver (also as the namespaces stepwise_ntk.theory / stepwise_ntk.solver)
from stepwise_ntk import predictor, solver, theory, training
from stepwise_ntk._eigensystem import ContrastiveEigensystem, contrastive_eigensystem
from stepwise_ntk._solver import SolverSettings, solve
from stepwise_ntk._theory import aligned_eigenvalues, final_embeddings, procrustes_align, step_times
from stepwise_ntk._trajectory import Trajectory

# predictor
from stepwise_ntk._metrics import subspace_alignment
from stepwise_ntk._predict import compare_run, predict_run

# training
from stepwise_ntk._records import cross_correlation_eigenvalues, record_steps
from stepwise_ntk._training import TrainConfig, TrainingDivergedWarning, TrainResult, train

__all__ = [
    "__version__",
    # data
    "AugmentConfig",
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
    # architectures and kernels
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
    # theory and solver
    "ContrastiveEigensystem",
    "SolverSettings",
    "Trajectory",
    "aligned_eigenvalues",
    "contrastive_eigensystem",
    "final_embeddings",
    "procrustes_align",
    "solve",
    "step_times",
    # predictor
    "compare_run",
    "predict_run",
    "subspace_alignment",
    # namespaces
    "predictor",
    "solver",
    "theory",
    "training",
    # training
    "TrainConfig",
    "TrainResult",
    "TrainingDivergedWarning",
    "cross_correlation_eigenvalues",
    "record_steps",
    "train",
]
