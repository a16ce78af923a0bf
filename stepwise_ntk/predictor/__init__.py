"""The predictor: hold finite networks trained with Flax against the NTK theory.

A network ``f = α · net`` trained by :func:`stepwise_ntk.training.train` has the kernel model
``K = α² Θ`` in effective time ``t = learning_rate × step`` (``Θ`` the per-output NTK of
``net``: analytic, or empirical at initialisation or after training).
:func:`predict_run` integrates that model from the network's own initial embeddings and
adds the closed-form theory; :func:`compare_run` measures the agreement (step-time ratios,
eigenvalue-trajectory error, subspace alignment and Procrustes error on held-out views);
:func:`width_sweep` does it for one architecture at several widths. The metrics are plain
functions of arrays (:func:`subspace_alignment`, :func:`compare_embeddings`, ...).

See :mod:`stepwise_ntk.predictor._predict`, :mod:`stepwise_ntk.predictor._metrics`,
:mod:`stepwise_ntk.predictor._sweep`.

Example:
    >>> import numpy as np
    >>> from stepwise_ntk.predictor import KERNELS, step_time_ratios, subspace_alignment
    >>> KERNELS  # the kernel=... of predict_run and network_kernel
    ('analytic', 'empirical_init', 'empirical_final')
    >>> A, B = np.eye(4)[:, :2], np.eye(4)[:, 1:3]
    >>> float(subspace_alignment(A, B))  # one shared direction out of two
    0.5
    >>> t = np.geomspace(1.0, 100.0, 50)
    >>> network, theory = 1 / (1 + 20 / t), 1 / (1 + 10 / t)  # one mode stepping at t = 20 and 10
    >>> np.round(step_time_ratios(t, network[:, None], t, theory[:, None]), 2)
    array([2.])
"""

from stepwise_ntk.predictor._metrics import (
    EmbeddingComparison,
    TrajectoryError,
    compare_embeddings,
    crossing_times,
    eigenvalue_trajectory_error,
    plateau_losses,
    principal_cosines,
    step_time_ratios,
    subspace_alignment,
)
from stepwise_ntk.predictor._modes import (
    ModeStatistics,
    circular_linear_correlation,
    correlation_ratio,
    mode_statistics,
)
from stepwise_ntk.predictor._predict import (
    KERNELS,
    NetworkInit,
    NetworkKernel,
    Prediction,
    RunComparison,
    compare_run,
    init_network,
    network_kernel,
    predict_run,
)
from stepwise_ntk.predictor._probe import (
    DEFAULT_RIDGES,
    AccuracyDifference,
    ProbeResult,
    accuracy_difference,
    cross_validated_accuracy,
    linear_probe,
    pair_groups,
    probe_curve,
)
from stepwise_ntk.predictor._spectral import (
    SpectralMetrics,
    alpha_req,
    embedding_spectrum,
    learned_modes,
    participation_ratio,
    predicted_spectral_metrics,
    rankme,
    spectral_metrics,
)
from stepwise_ntk.predictor._step_size import loss_curvature, stable_step_size
from stepwise_ntk.predictor._sweep import (
    SweepResult,
    WidthResult,
    WidthSweepSettings,
    choose_d,
    init_key,
    plan_steps,
    width_sweep,
)

__all__ = [
    # what the modes are worth and what they encode; spectral monitoring metrics
    "DEFAULT_RIDGES",
    "AccuracyDifference",
    "ModeStatistics",
    "ProbeResult",
    "accuracy_difference",
    "SpectralMetrics",
    "alpha_req",
    "circular_linear_correlation",
    "correlation_ratio",
    "cross_validated_accuracy",
    "embedding_spectrum",
    "learned_modes",
    "linear_probe",
    "mode_statistics",
    "pair_groups",
    "participation_ratio",
    "predicted_spectral_metrics",
    "probe_curve",
    "rankme",
    "spectral_metrics",
    "stable_step_size",
    "loss_curvature",
    "KERNELS",
    "EmbeddingComparison",
    "NetworkInit",
    "NetworkKernel",
    "Prediction",
    "RunComparison",
    "WidthSweepSettings",
    "SweepResult",
    "TrajectoryError",
    "WidthResult",
    "choose_d",
    "compare_embeddings",
    "compare_run",
    "crossing_times",
    "eigenvalue_trajectory_error",
    "init_network",
    "network_kernel",
    "init_key",
    "plan_steps",
    "plateau_losses",
    "predict_run",
    "principal_cosines",
    "step_time_ratios",
    "subspace_alignment",
    "width_sweep",
]
