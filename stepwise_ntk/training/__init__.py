"""Finite-network training on positive pairs: ``train``, its settings, records and checkpoints.

See :mod:`stepwise_ntk.training._train` for the model (``f = α · net``, effective time
``t = learning_rate · step``) and the two modes (full batch on fixed views; minibatch with
fresh augmentations).
"""

from stepwise_ntk.training._checkpoint import CHECKPOINT_FILE, load_checkpoint, save_checkpoint
from stepwise_ntk.training._records import cross_correlation_eigenvalues, record_steps
from stepwise_ntk.training._train import (
    LOSSES,
    TrainSettings,
    TrainingDivergedWarning,
    TrainResult,
    resolve_loss,
    train,
)

__all__ = [
    "CHECKPOINT_FILE",
    "LOSSES",
    "TrainSettings",
    "TrainResult",
    "TrainingDivergedWarning",
    "cross_correlation_eigenvalues",
    "load_checkpoint",
    "record_steps",
    "resolve_loss",
    "save_checkpoint",
    "train",
]
