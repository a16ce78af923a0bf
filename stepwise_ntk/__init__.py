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
    # training
    "TrainConfig",
    "TrainResult",
    "TrainingDivergedWarning",
    "cross_correlation_eigenvalues",
    "record_steps",
    "train",
]
