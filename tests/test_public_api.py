"""The public API of every namespace, against explicit lists: a renamed, removed or leaked name fails.

Changing a public name is a decision: update the list here, the glossary (docs/glossary.md)
and the callers together.
"""

import importlib
import inspect

import pytest

import stepwise_ntk

PUBLIC = {
    "stepwise_ntk": [
        "ARCHITECTURES", "ArchSpec", "AugmentSettings", "CIFAR10Dataset", "CIFAR10Error", "CIFAR10_MEAN",
        "CIFAR10_STD", "ContrastiveEigensystem", "KernelMemoryError", "MLP", "MyrtleCNN", "SolverSettings",
        "TrainResult", "TrainSettings", "TrainingDivergedWarning", "Trajectory", "WideResNet", "__version__",
        "aligned_eigenvalues", "analytic_kernels", "analytic_ntk", "balanced_subset", "channel_stats",
        "cifar10_pairs", "compare_run", "contrastive_eigensystem", "cross_correlation_eigenvalues", "data",
        "download_cifar10", "downsample", "empirical_ntk", "experiments", "final_embeddings", "kernels",
        "load_cifar10", "losses", "make_architecture", "normalize", "positive_pairs", "predict_run",
        "predictor", "procrustes_align", "record_steps", "resolve_cifar10_dir", "solve", "solver",
        "step_times", "subspace_alignment", "theory", "train", "training",
    ],
    "stepwise_ntk.data": [
        "AugmentSettings", "CIFAR10Dataset", "CIFAR10Error", "CIFAR10_FOLDER", "CIFAR10_MD5", "CIFAR10_MEAN",
        "CIFAR10_STD", "CIFAR10_URL", "DATA_ENV_VAR", "adjust_brightness", "adjust_contrast",
        "adjust_hue", "adjust_saturation", "augment_image", "balanced_subset", "channel_stats", "cifar10_pairs",
        "crop_with_padding", "default_cache_dir", "download_cifar10", "downsample", "grayscale", "hflip",
        "load_cifar10", "normalize", "pair_gram", "positive_pairs", "resized_crop", "resolve_cifar10_dir",
        "sample_resized_crop_box", "swap_pairs", "uint8_to_float",
        "CIRCULAR_STATISTICS", "IMAGE_STATISTICS", "image_statistics",
    ],
    "stepwise_ntk.kernels": [
        "ACTIVATIONS", "ARCHITECTURES", "ArchSpec", "DEFAULT_IMPLEMENTATION", "KINDS", "KernelCache",
        "KernelMemoryError", "MLP", "MyrtleCNN", "PARAMETERIZATIONS", "WideResNet", "analytic_kernels",
        "analytic_ntk", "array_fingerprint", "cache_key", "default_memory_budget", "device_memory_bytes",
        "empirical_ntk", "from_config", "kernel_block_bytes", "make_architecture",
    ],
    "stepwise_ntk.kernels.architectures": [
        "ACTIVATIONS", "ARCHITECTURES", "Activation", "ArchSpec", "AvgPool2x2", "Conv", "Dense", "Flatten",
        "FlaxNetwork", "GlobalAvgPool", "MLP", "MYRTLE_STAGES", "MyrtleCNN", "PARAMETERIZATIONS", "Residual",
        "WideResNet", "from_config", "make_architecture", "stax_network", "weight_layers",
    ],
    "stepwise_ntk.losses": [
        "LOSSES", "barlow_twins_loss", "cross_correlation", "resolve_loss", "simclr_loss", "vicreg_loss",
        "loss_gradient", "loss_quadratic_part",
    ],
    "stepwise_ntk.theory": [
        "ContrastiveEigensystem", "aligned_eigenvalues", "check_enough_modes", "check_factorization",
        "contrastive_eigensystem", "contrastive_eigensystem_core", "default_jitter_rtol", "final_embeddings",
        "gamma_tolerance", "initial_eigenvalues", "loss_staircase", "mode_coordinates", "mode_functions",
        "mode_functions_new", "partial_cost", "partial_is_cheaper", "plateau_levels", "procrustes_align",
        "procrustes_error", "step_times",
        "PRECONDITIONERS", "Preconditioner", "precondition_factor", "precondition_matrix",
        "preconditioned_aligned_eigenvalues", "preconditioned_step_times", "preconditioned_time",
        "preconditioned_stable_step", "contrastive_eigensystem_from_factor", "jittered_cholesky",
        "low_rank_columns", "PRECONDITIONED_PARTS", "preconditioned_gradient",
        "TridiagonalEigensystem", "tridiagonal_available", "tridiagonal_eigensystem",
        "PairGramOperator", "pair_gram_operator", "RestLanczos", "rest_lanczos",
    ],
    "stepwise_ntk.solver": [
        "INTEGRATORS", "METHODS", "ODEResult", "ODESettings", "ODEStats", "SolveStats", "SolverSettings",
        "Trajectory", "choose_method", "integrate", "linear_gd", "solve",
        "PRECONDITIONED_METHODS", "solve_preconditioned",
    ],
    "stepwise_ntk.training": [
        "CHECKPOINT_FILE", "TrainResult", "TrainSettings", "TrainingDivergedWarning",
        "cross_correlation_eigenvalues", "load_checkpoint", "record_steps", "save_checkpoint", "train",
        "PreconditionedLoss", "preconditioned_loss",
    ],
    "stepwise_ntk.predictor": [
        "EmbeddingComparison", "KERNELS", "NetworkInit", "NetworkKernel", "Prediction", "RunComparison",
        "SweepResult", "TrajectoryError", "WidthResult", "WidthSweepSettings", "choose_d",
        "compare_embeddings", "compare_run", "crossing_times", "eigenvalue_trajectory_error", "init_network",
        "init_key", "network_kernel", "plan_steps", "plateau_losses", "predict_run", "principal_cosines",
        "step_time_ratios", "subspace_alignment", "width_sweep",
        "AccuracyDifference", "accuracy_difference",
        "DEFAULT_RIDGES", "ModeStatistics", "ProbeResult", "SpectralMetrics", "alpha_req",
        "circular_linear_correlation", "correlation_ratio", "cross_validated_accuracy", "embedding_spectrum",
        "learned_modes", "linear_probe", "mode_statistics", "pair_groups", "participation_ratio",
        "predicted_spectral_metrics",
        "probe_curve", "rankme", "spectral_metrics", "stable_step_size", "loss_curvature",
    ],
    "stepwise_ntk.experiments": [
        "KernelSettings", "LinearSettings", "NetworkProblem", "NetworkSettings", "RunFailedError",
        "SUBCOMMANDS", "SharedNetworkSettings", "SweepSettings", "main", "network_problem", "sweep_config",
    ],
}


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_namespace_exports_exactly_its_list(name):
    module = importlib.import_module(name)
    assert sorted(module.__all__) == sorted(PUBLIC[name])
    missing = [n for n in module.__all__ if not hasattr(module, n)]
    assert not missing, missing


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_no_undeclared_public_names(name):
    """Every non-underscore name a face defines (or imports from the package) is in its list."""
    module = importlib.import_module(name)
    if name == "stepwise_ntk":
        return  # lazy: its attributes are exactly __all__ by construction (see __getattr__)
    extra = [n for n, v in vars(module).items()
             if not n.startswith("_") and n not in module.__all__ and not inspect.ismodule(v)
             and (getattr(v, "__module__", None) or "").startswith(name)]
    assert not extra, f"{name} leaks {extra}: add them to __all__ (and PUBLIC) or make them private"


def test_top_level_and_namespaces_are_the_same_objects():
    from stepwise_ntk import predictor, solver, theory, training

    assert stepwise_ntk.solve is solver.solve
    assert stepwise_ntk.step_times is theory.step_times
    assert stepwise_ntk.train is training.train
    assert stepwise_ntk.predict_run is predictor.predict_run
    assert stepwise_ntk.MLP is stepwise_ntk.kernels.MLP is stepwise_ntk.kernels.architectures.MLP


def test_unknown_top_level_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'LOSS_FUNCTIONS'"):
        stepwise_ntk.LOSS_FUNCTIONS  # noqa: B018
