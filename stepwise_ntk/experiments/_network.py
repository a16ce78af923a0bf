"""``stepwise-ntk network``: a finite Flax network trained on CIFAR-10 pairs against its NTK theory.

The embedding ``f = α · net`` of a registered architecture (``--arch``: a one-hidden-layer
MLP, Myrtle-5 or a wide ResNet, each with its own defaults, :data:`ARCH_DEFAULTS`) is
trained with plain gradient descent from a small initialisation (output scale α) at
``learning_rate = c / α²``, i.e. gradient steps of size ``c`` on the per-output NTK ``Θ``
(:mod:`stepwise_ntk.training._train`), with ``c = rate / (8 γ_1(Θ_0))`` from the network's own
empirical NTK ``Θ_0`` at initialisation (SimCLR, VICReg: ``c = rate / μ_max``, the largest
curvature of ``Θ_0 ∇²L`` on that loss's kernel flow, :func:`stepwise_ntk.predictor.stable_step_size`).
Full batch on the fixed views by default; with
``--batch-size`` / ``--fresh-views`` minibatches of the views or fresh augmentations of the
images at every step, the records (eigenvalues of ``C``) always on the fixed views. Its kernel
model ``K = α² Θ`` (:mod:`stepwise_ntk.predictor._predict`) is integrated from the network's own
initial embeddings ``F0`` on the same effective-time axis ``t = learning_rate × step``.

Reported (``results.json``): the contrastive eigenvalues, the closed-form step times
``t_j = ln(1/λ_j(0) − 1)/(8γ_j)``, the kernel flow's and the network's step times (the
``j``-th crossing of 1/2 by the sorted eigenvalues of ``C``) with their ratios and relative
errors, the loss plateaus, the final losses, and the alignment of the network's held-out
embeddings (test-split pairs) with the predicted top-``d`` modes; the same comparison for
each of the three kernels (analytic, empirical at initialisation, empirical after training)
under ``kernels``, ``--kernel`` choosing the one of the figures and headline numbers. For ``--loss simclr`` /
``vicreg`` there is no closed form: the theory is the kernel flow of that loss. For every
loss a "step" is an eigenvalue of ``C`` passing 1/2 (:func:`rise_times`, same rule on both
sides). Figures: network vs theory curves (``staircase.png``), the network's view
embeddings at a few times (``projections.png``) and its learned modes on clean images,
rotated onto the predicted modes (``modes.png``).

:func:`run_network` is what the CLI calls; :func:`network_problem` and
:func:`plan_run` are shared with ``stepwise-ntk sweep``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from stepwise_ntk.data import cifar10_pairs, downsample, normalize, positive_pairs, uint8_to_float
from stepwise_ntk.experiments._kernel import architecture_from_options, parse_options
from stepwise_ntk.experiments._kernel_model import load_problem_data
from stepwise_ntk.experiments._monitoring import training_monitoring
from stepwise_ntk.experiments._plots import plot_mode_gallery, plot_network_vs_theory, plot_projections
from stepwise_ntk.experiments._run_dir import RunDir, RunFailedError
from stepwise_ntk.experiments._settings import PreconditionedRunFlags, check_settings
from stepwise_ntk.experiments._views import ViewSettings
from stepwise_ntk.kernels import ARCHITECTURES
from stepwise_ntk.losses import LOSSES
from stepwise_ntk.predictor import (
    KERNELS,
    WidthSweepSettings,
    choose_d,
    compare_run,
    crossing_times,
    init_key,
    init_network,
    network_kernel,
    plan_steps,
    plateau_losses,
    predict_run,
    stable_step_size,
)
from stepwise_ntk.solver import SolverSettings, solve
from stepwise_ntk.theory import check_enough_modes, contrastive_eigensystem, final_embeddings, procrustes_align

__all__ = [
    "ARCH_DEFAULTS",
    "LOSS_SETTINGS",
    "ArchDefaults",
    "NetworkProblem",
    "NetworkSettings",
    "SharedNetworkSettings",
    "network_problem",
    "network_step_size",
    "network_views",
    "per_arch_help",
    "plan_run",
    "rise_times",
    "run_network",
    "train_until_stepped",
    "with_loss_flow",
]

# The losses as trained and integrated. SimCLR in its dot-product form (the cosine form is
# scale invariant, so its flow from a small initialisation is singular); VICReg with a
# slightly smoothed variance hinge so that the adaptive integrator does not crawl.
LOSS_SETTINGS: dict[str, dict[str, Any]] = {
    "barlow_twins": {},
    "simclr": {"normalize": False, "temperature": 0.5},
    "vicreg": {"smooth": 0.01},
}

# One integrator for every solve (as in the width sweep): planning and prediction share it.
_SOLVER = SolverSettings(integrator="dopri5")


@dataclasses.dataclass(frozen=True)
class ArchDefaults:
    """What ``network`` / ``sweep`` use for one architecture where a setting is left at none.

    Chosen so that each run shows the staircase (``d`` distinct steps, in order) and finishes
    in a few minutes on a 2-core CPU; every one is a flag (``--width``, ``--n-pairs``, ...).

    Attributes:
      options: architecture fields under ``--arch-options`` (e.g. the MLP's ``depth=1``).
      width: network width; widths: the sweep's widths.
      n_pairs, sweep_n_pairs: training images of ``network`` and of ``sweep``.
      n_test: held-out images.
      downsample: average-pooling factor of the 32×32 images.
      alpha: output scale α.
      rate: ``c · 8 γ_1(Θ)`` with ``Θ`` the network's empirical NTK at initialisation.
      gallery_pool: clean images the mode gallery picks from.
    """

    options: dict[str, Any]
    width: int
    widths: tuple[int, ...]
    n_pairs: int
    sweep_n_pairs: int
    n_test: int
    downsample: int
    alpha: float
    rate: float
    gallery_pool: int


ARCH_DEFAULTS: dict[str, ArchDefaults] = {
    # A one-hidden-layer MLP on 8×8 images.
    "mlp": ArchDefaults(options={"depth": 1}, width=1024, widths=(64, 256, 1024, 4096), n_pairs=256,
                        sweep_n_pairs=128, n_test=128, downsample=4, alpha=0.05, rate=0.1, gallery_pool=1000),
    # Myrtle-5 on 8×8 images (on 4×4 its last stage would be 1×1: a 3×3 conv sees 1/9 of
    # its window) and a one-block-per-group wide ResNet on 4×4: a CPU's worth of convolutions.
    # Myrtle with erf: with ReLU one mode dominates its contrastive spectrum (γ_1/γ_4 ≈ 55 on
    # CIFAR-10 pairs, against ≈ 13 with erf), so the last step would come 4× later. Narrow
    # networks leave the kernel regime as they learn (their NTK grows several times over the
    # first step), so the rate keeps a margin for that growth. Width 32: at 16 channels the
    # trained network's held-out modes align only 0.79-0.83 with its kernels' (0.95-0.96 at
    # 32). 64 pairs: on 32, dot-product SimCLR drives its loss to zero with three modes and
    # the fourth never rises.
    "myrtle": ArchDefaults(options={"depth": 5, "activation": "erf"}, width=32, widths=(8, 16, 32), n_pairs=64,
                           sweep_n_pairs=32, n_test=64, downsample=4, alpha=0.2, rate=0.2, gallery_pool=256),
    "wrn": ArchDefaults(options={"blocks_per_group": 1}, width=16, widths=(4, 8, 16), n_pairs=64,
                        sweep_n_pairs=32, n_test=64, downsample=8, alpha=0.05, rate=0.2, gallery_pool=256),
}


def per_arch_help(name: str) -> str:
    """Help text: the default of a field for each architecture."""
    def show(v):
        return " ".join(map(str, v)) if isinstance(v, tuple) else str(v)

    return "none: per --arch, " + ", ".join(f"{a} {show(getattr(d, name))}" for a, d in ARCH_DEFAULTS.items())


@dataclasses.dataclass(frozen=True)
class SharedNetworkSettings(ViewSettings):
    """Settings shared by ``stepwise-ntk network`` and ``stepwise-ntk sweep``.

    Settings left at None take the architecture's default (:data:`ARCH_DEFAULTS`), filled in
    when the settings are made (so ``config.json`` and every consumer see the values used);
    to change ``arch`` of a settings object, build a new one rather than
    ``dataclasses.replace`` it (that keeps the other architecture's filled-in values).
    """

    n_pairs: int | None = dataclasses.field(
        default=None, metadata={"help": f"training images n (2n augmented views; {per_arch_help('n_pairs')})",
                                "min": 1}
    )
    n_test: int | None = dataclasses.field(
        default=None, metadata={"help": f"held-out images (2 views each, other split; {per_arch_help('n_test')})",
                                "min": 1}
    )
    d: int | None = dataclasses.field(
        default=None,
        metadata={"help": "embedding dimension (none: 3 or 4, whichever has the larger γ_d/γ_d+1)", "min": 1,
                  "hint": " (or none for automatic)"},
    )
    arch: str = dataclasses.field(
        default="mlp", metadata={"help": "registered architecture", "choices": tuple(sorted(ARCHITECTURES))}
    )
    arch_options: str = dataclasses.field(
        default="", metadata={"help": "architecture fields as key=value,... on top of the defaults (mlp: depth=1, "
                                      "myrtle: depth=5,activation=erf, wrn: blocks_per_group=1), e.g. "
                                      "depth=2,activation=erf"}
    )
    alpha: float | None = dataclasses.field(
        default=None, metadata={"help": f"output scale α of f = α·net (small init; {per_arch_help('alpha')})",
                                "above": 0}
    )
    step_size: float | None = dataclasses.field(
        default=None, metadata={"help": "gradient step c on Θ, learning rate c/α² (none: from --rate)", "above": 0}
    )
    rate: float | None = dataclasses.field(
        default=None, metadata={"help": "with --step-size none: c = rate / (8 γ_1(Θ)), Θ the network's empirical "
                                        f"NTK at initialisation ({per_arch_help('rate')})",
                                "above": 0, "max": 1.9}
    )
    horizon: float = dataclasses.field(
        default=2.0,
        metadata={"help": "train for this × the predicted last step time", "min": 1,
                  "hint": " (train at least until the predicted last step)"},
    )
    max_steps: int = dataclasses.field(default=100_000, metadata={"help": "refuse runs longer than this", "min": 1})
    n_records: int = dataclasses.field(
        default=200, metadata={"help": "log-spaced training records", "min": 10, "hint": " (to resolve the steps)"}
    )
    train_dtype: str = dataclasses.field(
        default="float32", metadata={"help": "precision of the network", "choices": ("float32", "float64")}
    )
    seed: int = dataclasses.field(default=0, metadata={"help": "PRNG seed (views and initialisation)"})
    data_dir: str | None = dataclasses.field(
        default=None, metadata={"help": "CIFAR-10 folder (else $STEPWISE_NTK_DATA)"}
    )
    split: str = dataclasses.field(
        default="train", metadata={"help": "CIFAR-10 split of the training pairs (held-out: the other)",
                                   "choices": ("train", "test")}
    )
    # Smaller images than the kernel-model experiments: finite networks train on the CPU.
    downsample: int | None = dataclasses.field(
        default=None, metadata={"help": f"average-pool images by this factor ({per_arch_help('downsample')})", "min": 1}
    )

    def arch_defaults(self) -> dict[str, Any]:
        """The values that settings left at None take for this ``arch`` (field -> value)."""
        a = ARCH_DEFAULTS[self.arch]
        values = {"n_pairs": a.n_pairs, "n_test": a.n_test, "downsample": a.downsample, "alpha": a.alpha,
                  "rate": a.rate, "width": a.width, "gallery_pool": a.gallery_pool}
        names = {f.name for f in dataclasses.fields(self)}
        return {k: v for k, v in values.items() if k in names}

    def __post_init__(self):
        check_settings(self)  # the arch first: the defaults are looked up by it
        # The one place where the architecture's defaults are filled in.
        for name, value in self.arch_defaults().items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        parse_options(self.arch_options)  # a malformed option fails before any data is loaded

    def base_architecture(self, width: int):
        """The architecture at ``width`` with ``d = 1`` (the analytic NTK does not depend on d)."""
        return architecture_from_options(self.arch, self.arch_options, ARCH_DEFAULTS[self.arch].options,
                                         width=width, d=1)


@dataclasses.dataclass(frozen=True)
class NetworkSettings(PreconditionedRunFlags, SharedNetworkSettings):
    """Settings of ``stepwise-ntk network`` (each is a flag: ``--width 2048``).

    With ``--precondition`` the network is also trained with the spectral preconditioner
    from the same initialisation (:func:`stepwise_ntk.experiments._precondition.network_precondition_overlay`).
    """

    width: int | None = dataclasses.field(
        default=None, metadata={"help": f"hidden width of the network ({per_arch_help('width')})", "min": 1}
    )
    loss: str = dataclasses.field(
        default="barlow_twins", metadata={"help": "SSL loss (network and theory)", "choices": tuple(LOSS_SETTINGS)}
    )
    kernel: str = dataclasses.field(
        default="analytic",
        metadata={"help": "the NTK of the figures and headline numbers (all three are in results.json: "
                          "infinite width, the network's at init, after training)",
                  "choices": KERNELS},
    )
    batch_size: int | None = dataclasses.field(
        default=None, metadata={"help": "pairs per gradient step (none: all, full batch)", "min": 1}
    )
    fresh_views: bool = dataclasses.field(
        default=False,
        metadata={"help": "train on fresh augmentations of the images every step (the fixed views stay the "
                          "probe set of the records and the theory)"},
    )
    n_times: int = dataclasses.field(
        default=400,
        metadata={"help": "log-spaced times of the theory curves", "min": 10, "hint": " (to resolve the steps)"},
    )
    gallery_modes: int = dataclasses.field(default=4, metadata={"help": "modes shown in modes.png (<= d)", "min": 1})
    gallery_pool: int | None = dataclasses.field(
        default=None, metadata={"help": f"clean images the gallery picks from ({per_arch_help('gallery_pool')})",
                                "min": 1}
    )

    def __post_init__(self):
        super().__post_init__()
        self.base_architecture(self.width)  # bad --arch-options fail here, before any data is loaded
        if self.batch_size is not None and self.batch_size > self.n_pairs:
            raise ValueError(f"--batch-size must be at most --n-pairs = {self.n_pairs} (pairs per step), "
                             f"got {self.batch_size}.")


@dataclasses.dataclass(frozen=True)
class NetworkProblem:
    """Views, held-out views, the network at initialisation and its kernels, and the choices made from them."""

    views: np.ndarray  # (2n, H, W, C) float64, pairing order
    test_views: np.ndarray  # (2m, H, W, C) float64, held-out pairs from the other split
    labels: np.ndarray  # (n,)
    test_labels: np.ndarray  # (m,)
    kernel: Any  # NetworkKernel: the analytic Θ on the views and held-out views
    theta_gammas: np.ndarray  # (2n,) contrastive eigenvalues of Θ (before α²), descending
    d: int
    step_size: float
    arch: Any = None  # ArchSpec at the width, with d outputs
    init: Any = None  # NetworkInit: θ_0 and F0, F0_test in the training dtype
    init_kernel: Any = None  # NetworkKernel: the empirical Θ at θ_0 on the views and held-out views
    init_gammas: np.ndarray | None = None  # (2n,) its contrastive eigenvalues


def _held_out_views(s: SharedNetworkSettings, key: jax.Array) -> tuple[np.ndarray, np.ndarray]:
    other = "test" if s.split == "train" else "train"
    views, labels, _ = cifar10_pairs(key, s.n_test, split=other, data_dir=s.data_dir, settings=s.augment(),
                                     downsample=s.downsample, dtype=jnp.float64, download=True, subset_seed=s.seed)
    return np.asarray(views), labels


def network_views(s: SharedNetworkSettings, augment=None) -> tuple[np.ndarray, np.ndarray]:
    """The training views and labels of a network experiment with ``s.seed``: (2n, H, W, C) float64, (n,).

    The views come from the first half of ``split(PRNGKey(seed))`` (the kernel-model
    experiments' key); the network is initialised from the second (:func:`init_key`).
    ``augment``: an :class:`~stepwise_ntk.data.AugmentSettings` instead of the view flags of ``s``.
    """
    key_views, _ = jax.random.split(jax.random.PRNGKey(s.seed))
    augment = s.augment() if augment is None else augment
    views, labels, _ = cifar10_pairs(key_views, s.n_pairs, split=s.split, data_dir=s.data_dir, settings=augment,
                                     downsample=s.downsample, dtype=jnp.float64, download=True, subset_seed=s.seed)
    return np.asarray(views), np.asarray(labels)


def network_problem(s: SharedNetworkSettings, views, labels, width: int, *, progress: bool = False,
                    loss: str = "barlow_twins") -> NetworkProblem:
    """Add held-out views, choose ``d``, initialise the network and choose the step ``c`` from its kernel.

    ``d``: ``s.d``, or 3 or 4, whichever has the larger gap ``γ_d/γ_{d+1}`` of the analytic
    NTK (:func:`stepwise_ntk.predictor.choose_d`). The network ``arch`` at ``width`` with ``d``
    outputs is initialised with :func:`stepwise_ntk.predictor.init_key` ``(s.seed)`` (as in
    ``sweep``: the same width starts from the same parameters); ``c``: ``s.step_size``, or
    ``s.rate / (8 γ_1(Θ_0))`` with ``Θ_0`` its empirical NTK at initialisation
    (:func:`stepwise_ntk.predictor.stable_step_size`): the stable step of *this* network.
    For another ``loss`` (SimCLR, VICReg: more curved than Barlow Twins) ``8 γ_1`` is replaced
    by the largest curvature ``μ`` of ``Θ_0 ∇²L`` on the kernel flow of that loss from the
    network's ``F0`` (``LOSS_SETTINGS``), so ``rate`` keeps its meaning (``c · μ_max``).
    Barlow Twins keeps the closed form (its flow's ``μ_max`` is ``8 γ_1`` within a few percent).
    """
    views = np.asarray(views, np.float64)
    test_views, test_labels = _held_out_views(s, jax.random.fold_in(jax.random.PRNGKey(s.seed), 1))
    # d = 1 here: the analytic NTK does not depend on d, so this kernel serves every d.
    kernel = network_kernel(s.base_architecture(width), views, test_views, progress=progress)
    es = contrastive_eigensystem(jnp.asarray(kernel.K), s.n_pairs)
    if s.d is None:
        d = choose_d(es.gammas)
    else:
        d = s.d
        check_enough_modes(es, d)
    g = np.asarray(es.gammas, np.float64)
    arch = s.base_architecture(width).replace(d=d)
    train_dt = np.dtype(s.train_dtype)
    init = init_network(arch, views.astype(train_dt), test_views.astype(train_dt), alpha=s.alpha,
                        key=init_key(s.seed))
    init_kernel = network_kernel(arch, views, test_views, kernel="empirical_init", params=init.params,
                                 progress=progress)
    g0 = np.asarray(contrastive_eigensystem(jnp.asarray(init_kernel.K), s.n_pairs).gammas, np.float64)
    step = network_step_size(s, init_kernel, init, loss)
    return NetworkProblem(views, test_views, np.asarray(labels), np.asarray(test_labels), kernel, g, d, float(step),
                          arch=arch, init=init, init_kernel=init_kernel, init_gammas=g0)


def network_step_size(s: SharedNetworkSettings, init_kernel, init, loss: str) -> float:
    """The gradient step ``c`` on ``Θ``: ``s.step_size``, or ``s.rate`` over the curvature of ``loss``.

    Barlow Twins: ``rate / (8 γ_1(Θ_0))``; another loss: ``rate / μ_max``, the largest
    curvature of ``Θ_0 ∇²L`` on that loss's kernel flow from the network's ``F0``
    (:func:`stepwise_ntk.predictor.stable_step_size`), ``Θ_0 = init_kernel.K``.
    """
    if s.step_size is not None:
        return float(s.step_size)
    if loss == "barlow_twins":
        return float(stable_step_size(init_kernel.K, s.n_pairs, s.rate))
    return float(stable_step_size(init_kernel.K, s.n_pairs, s.rate, loss=loss, loss_kwargs=LOSS_SETTINGS[loss] or None,
                                  F=np.asarray(init.F0, np.float64)))


def rise_times(times, eigenvalues) -> np.ndarray:
    """Step times: the first crossing of 1/2 by each eigenvalue column of ``C``, for every loss.

    One level for every loss, fixed in advance so that a step time does not depend on how
    long the run is: Barlow Twins' and VICReg's eigenvalues rise to about 1 (``C = I``,
    VICReg's unit-variance hinge), SimCLR's pass 1/2 at the end of their exponential rise
    and then keep growing slowly (its dot-product form has no fixed point).

    Args:
      times: (T,) effective times (t ≤ 0 ignored: the axis is log t).
      eigenvalues: (T, d) eigenvalues of ``C``, descending.

    Returns:
      (d,) step times, NaN for a mode that never passes 1/2.
    """
    t, lam = np.asarray(times, np.float64), np.asarray(eigenvalues, np.float64)
    keep = t > 0
    return crossing_times(t[keep], lam[keep])


def plan_run(arch, problem: NetworkProblem, init, kernel, s: SharedNetworkSettings, loss: str, *,
             progress: bool = False) -> tuple[int, float]:
    """Gradient steps to run: ``horizon ×`` the kernel model's last step time, from this ``F0``.

    The last step time is the later of the kernel model on ``kernel`` and on the network's
    own kernel at initialisation (``problem.init_kernel``, when ``init`` is ``problem.init``):
    a narrow network follows its own kernel more closely than the infinite-width one, so the
    run is long enough for either. Barlow Twins: :func:`stepwise_ntk.predictor.plan_steps`
    (the flow until every eigenvalue has crossed 1/2). Other losses: their kernel flow on a
    log grid up to ``max_steps`` and its last :func:`rise_times` (the same crossing of 1/2,
    so the plan does not depend on ``max_steps``).
    """
    kernels = [kernel]
    if problem.init_kernel is not None and init is problem.init and problem.init_kernel is not kernel:
        kernels.append(problem.init_kernel)
    cfg = WidthSweepSettings(widths=(arch.width,), alpha=s.alpha, step_size=problem.step_size, horizon=s.horizon,
                             max_steps=s.max_steps, n_records=max(s.n_records, 2), seed=s.seed,
                             train_dtype=s.train_dtype)
    lr = cfg.learning_rate
    t_last = 0.0
    for k in kernels:
        if loss == "barlow_twins":
            t_last = max(t_last, plan_steps(arch, problem.views, problem.test_views, init, k, cfg)[1])
            continue
        grid = np.geomspace(lr, lr * s.max_steps, cfg.plan_points)
        traj = solve(s.alpha**2 * jnp.asarray(k.K), s.n_pairs, jnp.asarray(init.F0, jnp.float64), grid, loss=loss,
                     loss_kwargs=LOSS_SETTINGS[loss] or None, method="function", settings=_SOLVER, progress=progress)
        rises = rise_times(grid, traj.eigenvalues)
        t_last = max(t_last, float(np.max(rises)) if np.all(np.isfinite(rises)) else math.inf)
    steps = math.ceil(s.horizon * t_last / lr) if np.isfinite(t_last) else None
    if steps is None or steps > s.max_steps:
        raise ValueError(
            f"the {loss} kernel model needs {steps if steps is not None else 'more than --max-steps'} gradient "
            f"steps of size c = {problem.step_size:.4g} (horizon {s.horizon}) > --max-steps {s.max_steps}; raise "
            f"--max-steps, --rate or --alpha."
        )
    return steps, t_last


def _train_loss(loss: str):
    kw = LOSS_SETTINGS[loss]
    return functools.partial(LOSSES[loss], **kw) if kw else loss


def _snapshot_indices(times: np.ndarray, steps: np.ndarray) -> list[int]:
    """Records before the first step and between steps 1|2, 2|3, 3|4 (a point, line, plane, solid)."""
    steps = np.sort(steps[np.isfinite(steps)])
    pos = times > 0
    edges = list(steps[:4]) + ([float(times[-1])] if steps.size < 4 else [])
    snap_t = [steps[0] / 3] + [float(np.sqrt(a * b)) for a, b in zip(edges[:-1], edges[1:], strict=True)][:3]
    logt = np.log(np.where(pos, times, np.nan))
    return [int(np.nanargmin(np.abs(logt - np.log(t)))) for t in snap_t]


def _fresh_views(key: jax.Array, images: jax.Array, *, settings, factor: int) -> jax.Array:
    """Fresh views of ``images`` (pixels in [0, 1]) as the fixed views are made: augment, normalise, pool."""
    return downsample(normalize(positive_pairs(key, images, settings)), factor)


def _theory(arch, problem: NetworkProblem, init, nk, times, s: SharedNetworkSettings, loss: str, progress: bool):
    """The kernel model of the run on the kernel ``nk``: Barlow Twins' closed form, and the flow of ``loss``.

    For SimCLR and VICReg the flow is the solver's function route on the same ``K = α² Θ``
    (the closed-form quantities stay Barlow Twins').
    """
    pred = predict_run(arch, problem.views, problem.test_views, init.F0, times, alpha=s.alpha, kernel=nk,
                       F0_test=init.F0_test, solver_settings=_SOLVER, progress=progress)
    return with_loss_flow(pred, init, times, loss, progress=progress)


def with_loss_flow(pred, init, times, loss: str, *, progress: bool = False):
    """``pred`` with its curves and embeddings from the kernel flow of ``loss`` (Barlow Twins: unchanged).

    The flow is the solver's function route on the prediction's ``K = α² Θ`` from the
    network's own ``F0``; the closed-form quantities (step times, top-d modes) stay Barlow Twins'.
    """
    if loss == "barlow_twins":
        return pred
    traj = solve(pred.K, pred.n_pairs, jnp.asarray(init.F0, jnp.float64), times, loss=loss,
                 loss_kwargs=LOSS_SETTINGS[loss] or None, method="function", K_test=pred.K_test,
                 F0_test=jnp.asarray(init.F0_test, jnp.float64), settings=_SOLVER, progress=progress)
    return dataclasses.replace(pred, times=traj.times, loss=traj.loss, eigenvalues=traj.eigenvalues,
                               embeddings=traj.embeddings, flow_test_embeddings=traj.test_embeddings[-1],
                               trajectory=traj)


def _kernel_report(pred, cmp, net_steps: np.ndarray, is_bt: bool) -> dict[str, Any]:
    """One kernel's theory against the network: step times, eigenvalue curves, held-out alignment."""
    th_steps = rise_times(np.asarray(pred.times), np.asarray(pred.eigenvalues))
    closed = np.sort(np.asarray(pred.step_times, np.float64))
    rel_closed = np.abs(net_steps - closed) / closed
    g = np.asarray(pred.gammas, np.float64)
    return {
        "gammas": g[: pred.d + 4],
        "gap_ratio_d": pred.gap,
        "predicted_step_times": closed,
        "theory_step_times": th_steps,
        "step_time_ratio": net_steps / th_steps,
        "step_time_median_ratio": float(np.nanmedian(net_steps / th_steps)),
        "step_time_relative_error": rel_closed if is_bt else None,
        "eigenvalue_error_rms": cmp.eigenvalue_error_rms,
        "eigenvalue_error_max": cmp.eigenvalue_error_max,
        "test_alignment": cmp.test_alignment,
        "test_alignment_flow": cmp.test_alignment_flow,
        "train_alignment": cmp.train_alignment,
        "test_procrustes_error": cmp.test_procrustes_error,
        "test_procrustes_error_flow": cmp.test_procrustes_error_flow,
        "final_loss_theory": float(np.asarray(pred.loss)[-1]),
    }


def _continued(first, second, offset: int):
    """One record of a run continued from ``first.params`` by ``second`` (its step 0 is ``first``'s end)."""
    keep = second.steps > 0
    lr = float(first.settings.learning_rate)
    steps = np.concatenate([first.steps, second.steps[keep] + offset])
    return dataclasses.replace(
        second,
        steps=steps,
        effective_times=lr * steps.astype(np.float64),
        loss=np.concatenate([first.loss, second.loss[keep]]),
        eigenvalues=np.concatenate([first.eigenvalues, second.eigenvalues[keep]]),
        embeddings=None if first.embeddings is None else np.concatenate([first.embeddings, second.embeddings[keep]]),
        settings=dataclasses.replace(first.settings, steps=offset + second.settings.steps),
        steps_done=offset + second.steps_done,
        diverged_at=None if second.diverged_at is None else offset + second.diverged_at,
    )


def train_until_stepped(arch, cfg, views, res, s: SharedNetworkSettings, *, test_views=None, progress: bool = False,
                        **fresh) -> tuple[Any, int]:
    """Train on from the run ``res`` (of ``cfg.steps`` steps) until it has taken all ``d`` steps.

    A finite network can step later than its kernel models (a narrow one leaves the kernel
    regime, and SimCLR can drive its loss to zero before its last mode rises): training goes
    on from ``res.params``, doubling the run's length up to ``s.max_steps``, until every
    eigenvalue of ``C`` has passed 1/2 (:func:`rise_times`) or the run diverged. The
    continuations draw their minibatches from ``fold_in(key(s.seed), steps so far)``.

    Returns:
      the records of the whole run as one :class:`~stepwise_ntk.training.TrainResult`, and
      its number of steps.
    """
    from stepwise_ntk.training import train

    steps = cfg.steps
    while (res.diverged_at is None and steps < s.max_steps
           and not np.all(np.isfinite(rise_times(res.effective_times, res.eigenvalues)))):
        more = min(max(steps, 1), s.max_steps - steps)
        cont = train(arch, dataclasses.replace(cfg, steps=more, n_records=max(s.n_records // 2, 2)), views,
                     key=jax.random.fold_in(jax.random.key(s.seed), steps), test_views=test_views,
                     init_params=res.params, progress=progress, **fresh)
        res = _continued(res, cont, steps)
        steps += more
    return res, steps


def run_network(settings: NetworkSettings, out: RunDir, *, progress: bool = True) -> str:
    """Train the network, build its theory on all three kernels, write ``results.json``, ``arrays.npz`` and figures."""
    from stepwise_ntk.training import TrainSettings, train

    s = settings
    started = time.perf_counter()
    data = load_problem_data(s)  # the views and clean pool of the kernel-model experiments
    problem = network_problem(s, data.views, data.labels, s.width, progress=progress, loss=s.loss)
    d, n = problem.d, s.n_pairs
    arch, init = problem.arch, problem.init
    train_dt = np.dtype(s.train_dtype)
    views_t, test_t = problem.views.astype(train_dt), problem.test_views.astype(train_dt)
    steps, t_plan = plan_run(arch, problem, init, problem.kernel, s, s.loss, progress=progress)
    lr = problem.step_size / s.alpha**2
    cfg = TrainSettings(loss=_train_loss(s.loss), learning_rate=lr, steps=steps, alpha=s.alpha,
                        batch_size=s.batch_size, n_records=s.n_records, record_embeddings=True, seed=s.seed)
    fresh = {}
    if s.fresh_views:  # the clean images of the training pairs, augmented anew at every step
        images = uint8_to_float(data.dataset.images[data.indices], train_dt)
        fresh = dict(augment=functools.partial(_fresh_views, settings=s.augment(), factor=s.downsample),
                     images=images)
    t0 = time.perf_counter()
    # Checkpointed in the partial run folder: a rerun after an interruption continues from the
    # last checkpoint with a bit-identical result.
    res = train(arch, cfg, views_t, test_views=test_t, init_params=init.params, progress=progress,
                checkpoint_dir=out.resume_dir("train"), resume=True, **fresh)
    planned = steps
    res, steps = train_until_stepped(arch, cfg, views_t, res, s, test_views=test_t, progress=progress, **fresh)
    train_seconds = time.perf_counter() - t0
    if res.diverged_at is not None:
        raise RunFailedError(
            f"training diverged at step {res.diverged_at} (loss {res.diverged_loss:.3g}); lower --rate (or "
            f"--step-size) or --alpha."
        )

    # The theory of this run on each kernel: K = α² Θ from the network's own F0, on the run's
    # time axis; the network's step times are measured once.
    is_bt = s.loss == "barlow_twins"
    net_t, net_loss, net_eig = (
        res.effective_times, np.asarray(res.loss, np.float64), np.asarray(res.eigenvalues, np.float64)
    )
    net_steps = rise_times(net_t, net_eig)
    times = np.geomspace(lr, lr * steps, s.n_times)
    final_kernel = network_kernel(arch, problem.views, problem.test_views, kernel="empirical_final",
                                  params=res.params, progress=progress)
    kernels = {"analytic": problem.kernel, "empirical_init": problem.init_kernel, "empirical_final": final_kernel}
    preds, cmps, reports = {}, {}, {}
    for name, nk in kernels.items():
        preds[name] = _theory(arch, problem, init, nk, times, s, s.loss, progress)
        cmps[name] = compare_run(preds[name], res, arch=arch)
        reports[name] = _kernel_report(preds[name], cmps[name], net_steps, is_bt)
    pred, cmp = preds[s.kernel], cmps[s.kernel]
    params = {"analytic": None, "empirical_init": init.params, "empirical_final": res.params}[s.kernel]

    th_t, th_loss, th_eig = np.asarray(pred.times), np.asarray(pred.loss), np.asarray(pred.eigenvalues)
    flow_steps = rise_times(th_t, th_eig)
    ratio = net_steps / flow_steps
    closed = np.sort(np.asarray(pred.step_times, np.float64))
    rel_closed = np.abs(net_steps - closed) / closed
    rel_flow = np.abs(net_steps - flow_steps) / flow_steps
    g = np.asarray(pred.gammas, np.float64)
    # Label-free spectral metrics and linear probes along training, next to the theory's (spectral.png).
    monitoring = training_monitoring(
        out.path / "spectral.png", net_t, net_eig, res.embeddings, problem.labels, theory_times=th_t,
        theory_eigenvalues=th_eig, step_times=closed if is_bt else flow_steps,
        final_embeddings=res.train_embeddings, test_embeddings=res.test_embeddings,
        test_labels=problem.test_labels, seed=s.seed)

    mode = ("fresh views" if s.fresh_views else "fixed views") + (f", batch {s.batch_size}" if s.batch_size else "")
    title = (f"{arch.name} width {s.width}, {s.loss}, CIFAR-10 n={n}, d={d}, α={s.alpha} ({mode}): "
             f"network vs {s.kernel} NTK theory")
    plot_network_vs_theory(out.path / "staircase.png", net_t, net_loss, net_eig, th_t, th_loss, th_eig,
                           step_times=closed if is_bt else flow_steps,
                           step_label="predicted step times" if is_bt else "kernel-flow step times",
                           log_eigenvalues=not is_bt, title=title)
    snap_idx = _snapshot_indices(net_t, np.where(np.isfinite(net_steps), net_steps, flow_steps))
    snapshots = np.asarray(res.embeddings, np.float64)[snap_idx]
    if d >= 3:
        plot_projections(out.path / "projections.png", snapshots, [float(net_t[i]) for i in snap_idx],
                         labels=np.concatenate([problem.labels, problem.labels]),
                         title="the network's view embeddings on the top-3 principal directions")
    # The network's learned modes on clean images, rotated (orthogonal Procrustes) onto the
    # predicted top-d modes, so that column j is comparable with the theory's mode j.
    pool_kernel = network_kernel(arch, problem.views, data.pool, kernel=s.kernel, params=params, progress=progress)
    es = contrastive_eigensystem(pred.K, n)
    theory_pool = np.asarray(final_embeddings(es, jnp.asarray(s.alpha**2 * pool_kernel.K_test), d))
    net = arch.flax(param_dtype=train_dt)
    net_pool = s.alpha * np.asarray(jax.jit(net.apply)(res.params, jnp.asarray(data.pool.astype(train_dt))), np.float64)
    net_modes, _ = procrustes_align(jnp.asarray(net_pool), jnp.asarray(theory_pool))
    k = min(s.gallery_modes, d)
    plot_mode_gallery(out.path / "modes.png", data.dataset.images[data.pool_index], np.asarray(net_modes)[:, :k],
                      class_names=data.dataset.class_names, labels=data.dataset.labels[data.pool_index])

    precondition, precondition_arrays = None, {}
    if s.precondition:  # the same network, views and steps, trained with the preconditioned loss
        from stepwise_ntk.experiments._precondition import network_precondition_overlay

        precondition, precondition_arrays = network_precondition_overlay(
            s, out, arch, problem, cfg, res, pred, steps=steps, solver_settings=_SOLVER, progress=progress, **fresh)

    out.save_arrays(
        network_times=net_t, network_loss=net_loss, network_eigenvalues=net_eig,
        theory_times=th_t, theory_loss=th_loss, theory_eigenvalues=th_eig,
        predicted_step_times=closed, network_step_times=net_steps, theory_step_times=flow_steps,
        gammas=g, theta_gammas=problem.theta_gammas, init_theta_gammas=problem.init_gammas,
        lambda0=np.asarray(pred.lambda0),
        F0=np.asarray(init.F0, np.float64), F0_test=np.asarray(init.F0_test, np.float64),
        train_embeddings=np.asarray(res.train_embeddings, np.float64),
        test_embeddings=np.asarray(res.test_embeddings, np.float64),
        closed_form_test_embeddings=np.asarray(pred.test_embeddings),
        flow_test_embeddings=np.asarray(pred.flow_test_embeddings),
        snapshot_times=net_t[snap_idx], snapshots=snapshots, labels=problem.labels, test_labels=problem.test_labels,
        gallery_network_modes=np.asarray(net_modes), gallery_theory_modes=theory_pool,
        **{f"theory_eigenvalues_{name}": np.asarray(p.eigenvalues) for name, p in preds.items()},
        **{f"closed_form_test_embeddings_{name}": np.asarray(p.test_embeddings) for name, p in preds.items()},
        **precondition_arrays,
    )
    results: dict[str, Any] = {
        "architecture": arch.to_config(),
        "loss": s.loss,
        "kernel": s.kernel,
        "n_pairs": n,
        "n_test_views": int(problem.test_views.shape[0]),
        "input_shape": list(problem.views.shape[1:]),
        "d": d,
        "alpha": s.alpha,
        "step_size": problem.step_size,
        "step_size_from": "--step-size" if s.step_size is not None else
                          f"rate {s.rate} / (8 γ_1 of the empirical NTK at initialisation)",
        "init_theta_gamma_1": float(problem.init_gammas[0]),
        "analytic_theta_gamma_1": float(problem.theta_gammas[0]),
        "learning_rate": lr,
        "batch_size": s.batch_size,
        "fresh_views": s.fresh_views,
        "steps": steps,
        "planned_steps": planned,
        "planned_last_step_time": t_plan,
        "gammas": g[: d + 4],
        "gap_ratio_d": pred.gap,
        "lambda0": np.asarray(pred.lambda0),
        # Barlow Twins closed form (small-initialisation theory), sorted.
        "predicted_step_times": closed,
        "theory_step_times": flow_steps,
        "network_step_times": net_steps,
        "step_time_ratio": ratio,
        "step_time_relative_error": rel_closed if is_bt else None,
        "step_time_median_relative_error": float(np.nanmedian(rel_closed)) if is_bt else None,
        "step_time_worst_relative_error": float(np.nanmax(rel_closed)) if is_bt else None,
        "step_time_relative_error_flow": rel_flow,
        "step_time_median_relative_error_flow": float(np.nanmedian(rel_flow)),
        "plateau_loss": plateau_losses(net_t[net_t > 0], net_loss[net_t > 0], closed) if is_bt and d > 1 else None,
        "plateau_expected": d - np.arange(1, d) if is_bt and d > 1 else None,
        # The loss midway (in log time) between the network's own steps: the staircase as trained.
        "plateau_loss_network": plateau_losses(net_t[net_t > 0], net_loss[net_t > 0], net_steps)
        if is_bt and d > 1 and np.all(np.isfinite(net_steps)) else None,
        "final_loss": float(net_loss[-1]),
        "final_loss_theory": float(th_loss[-1]),
        "final_eigenvalues": net_eig[-1],
        "final_eigenvalues_theory": th_eig[-1],
        "test_alignment": cmp.test_alignment,
        "test_alignment_flow": cmp.test_alignment_flow,
        "train_alignment": cmp.train_alignment,
        "test_principal_cosines": cmp.test_cosines,
        "test_procrustes_error": cmp.test_procrustes_error,
        "test_procrustes_error_flow": cmp.test_procrustes_error_flow,
        "eigenvalue_error_rms": cmp.eigenvalue_error_rms,
        "eigenvalue_error_max": cmp.eigenvalue_error_max,
        # The same comparison on each of the three kernels (the headline above is --kernel's).
        "kernels": reports,
        **monitoring,  # "spectral" and "probe": per training record
        "train_seconds": train_seconds,
        "wall_time_s": time.perf_counter() - started,
    }
    if precondition is not None:
        results["precondition"] = precondition
    out.write_results(results)
    med = np.nanmedian(ratio)
    per_kernel = ", ".join(f"{name} {r['test_alignment']:.3f}" for name, r in reports.items())
    return (
        f"{steps} steps in {train_seconds:.1f} s; step time network/theory median {med:.3f} "
        f"(per mode {np.round(ratio, 3).tolist()}); held-out alignment with the predicted modes "
        f"{cmp.test_alignment:.4f} (with the kernel flow {cmp.test_alignment_flow:.4f}); by kernel: {per_kernel}; "
        f"final loss {net_loss[-1]:.3g}"
        + ("" if precondition is None else _precondition_summary(precondition, d))
    )


def _precondition_summary(pc: dict[str, Any], d: int) -> str:
    def show(x, spec):
        return "never" if x is None else format(x, spec)

    return (f"\npreconditioned {pc['preconditioner']} at c = {pc['step_size']:.4g}: all {d} modes passed at step "
            f"{show(pc['all_passed_step_preconditioned'], '.0f')} (plain {show(pc['all_passed_step_plain'], '.0f')}; "
            f"speed-up {show(pc['step_speedup'], '.2f')}, kernel flows {show(pc['theory_step_speedup'], '.2f')}); "
            f"probe accuracy {pc['probe_accuracy_preconditioned']:.3f} (plain {pc['probe_accuracy_plain']:.3f}); "
            f"held-out alignment with the plain run {pc['test_alignment_plain_vs_preconditioned']:.3f}")
