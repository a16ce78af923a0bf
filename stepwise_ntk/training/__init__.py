"""Finite-network training on positive pairs: ``train``, its settings, records and checkpoints.

See :mod:`stepwise_ntk.training._train` for the model (``f = α · net``, effective time
``t = learning_rate · step``) and the two modes (full batch on fixed views; minibatch with
fresh augmentations). A run is ``train(arch, settings, views, test_views=...)``.

Example:
    >>> from stepwise_ntk.training import TrainSettings, record_steps
    >>> settings = TrainSettings(learning_rate=0.5, steps=1000, n_records=5)
    >>> record_steps(settings.steps, settings.n_records).tolist()  # the steps a run records
    [0, 1, 6, 32, 178, 1000]
    >>> settings.learning_rate * 178  # effective time t = learning_rate · step
    89.0
    >>> TrainSettings(learning_rate=0.0)
    Traceback (most recent call last):
    ...
    ValueError: learning_rate must be a finite number > 0, got 0.0.
"""

from stepwise_ntk.training._checkpoint import CHECKPOINT_FILE, load_checkpoint, save_checkpoint
from stepwise_ntk.training._precondition import PreconditionedLoss, preconditioned_loss
from stepwise_ntk.training._records import cross_correlation_eigenvalues, record_steps
from stepwise_ntk.training._train import (
    TrainingDivergedWarning,
    TrainResult,
    TrainSettings,
    train,
)

__all__ = [
    "CHECKPOINT_FILE",
    "PreconditionedLoss",
    "TrainSettings",
    "TrainResult",
    "TrainingDivergedWarning",
    "cross_correlation_eigenvalues",
    "load_checkpoint",
    "preconditioned_loss",
    "record_steps",
    "save_checkpoint",
    "train",
]
