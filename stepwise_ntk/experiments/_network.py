"""``stepwise-ntk network``: a finite Flax network trained on CIFAR-10 pairs against its NTK theory.

The embedding ``f = α · net`` of a registered architecture (``--arch``, default a one-hidden-
layer MLP of width 1024 on 8×8 images) is trained full batch with plain gradient descent
from a small initialisation (output scale α) at ``learning_rate = c / α²``, i.e. gradient
steps of size ``c`` on the per-output NTK ``Θ`` (:mod:`stepwise_ntk.training._train`). Its kernel
model ``K = α² Θ`` (:mod:`stepwise_ntk.predictor._predict`) is integrated from the network's own
initial embeddings ``F0`` on the same effective-time axis ``t = learning_rate × step``.

Reported (``results.json``): the contrastive eigenvalues, the closed-form step times
``t_j = ln(1/λ_j(0) − 1)/(8γ_j)``, the kernel flow's and the network's step times (the
``j``-th crossing of 1/2 by the sorted eigenvalues of ``C``) with their ratios and relative
errors, the loss plateaus, the final losses, and the alignment of the network's held-out
embeddings (test-split pairs) with the predicted top-``d`` modes. For ``--loss simclr`` /
``vicreg`` there is no closed form: the theory is the kernel flow of that loss, and a
"step" is when an eigenvalue reaches half its value at the end of the run (same rule on
both sides). Figures: network vs theory curves (``staircase.png``), the network's view
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

from stepwise_ntk.data import cifar10_pairs
from stepwise_ntk.experiments._kernel import parse_options
from stepwise_ntk.experiments._kernel_model import load_problem_data
from stepwise_ntk.experiments._plots import plot_mode_gallery, plot_network_vs_theory, plot_projections
from stepwise_ntk.experiments._run_dir import RunDir, RunFailedError
from stepwise_ntk.experiments._settings import check_settings
from stepwise_ntk.experiments._views import ViewSettings
from stepwise_ntk.kernels import ARCHITECTURES, make_architecture
from stepwise_ntk.losses import LOSSES
from stepwise_ntk.predictor import (
    KERNELS,
    WidthSweepSettings,
    choose_d,
    compare_run,
    crossing_times,
    init_network,
    network_kernel,
    plan_steps,
    plateau_losses,
    predict_run,
)
from stepwise_ntk.solver import SolverSettings, solve
from stepwise_ntk.theory import check_enough_modes, contrastive_eigensystem, final_embeddings, procrustes_align

__all__ = [
    "LOSS_SETTINGS",
    "NetworkProblem",
    "NetworkSettings",
    "SharedNetworkSettings",
    "network_problem",
    "plan_run",
    "rise_times",
    "run_network",
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
class SharedNetworkSettings(ViewSettings):
    """Settings shared by ``stepwise-ntk network`` and ``stepwise-ntk sweep``."""

    n_pairs: int = dataclasses.field(
        default=256, metadata={"help": "training images n (2n augmented views)", "min": 1}
    )
    n_test: int = dataclasses.field(
        default=128, metadata={"help": "held-out images (2 views each, other split)", "min": 1}
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
        default="depth=1", metadata={"help": "architecture fields as key=value,... (e.g. depth=2,activation=erf)"}
    )
    alpha: float = dataclasses.field(
        default=0.05, metadata={"help": "output scale α of f = α·net (small init)", "above": 0}
    )
    step_size: float | None = dataclasses.field(
        default=None, metadata={"help": "gradient step c on Θ, learning rate c/α² (none: from --rate)", "above": 0}
    )
    rate: float = dataclasses.field(
        default=0.1, metadata={"help": "with --step-size none: c = rate / (8 γ_1(Θ))", "above": 0}
    )
    horizon: float = dataclasses.field(
        default=2.0,
        metadata={"help": "train for this × the predicted last step time", "min": 1,
                  "hint": " (train at least until the predicted last step)"},
    )
    max_steps: int = dataclasses.field(default=20_000, metadata={"help": "refuse runs longer than this", "min": 1})
    n_records: int = dataclasses.field(default=200, metadata={"help": "log-spaced training records", "min": 1})
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
    downsample: int = dataclasses.field(default=4, metadata={"help": "average-pool images by this factor", "min": 1})

    def __post_init__(self):
        check_settings(self)
        parse_options(self.arch_options)  # a malformed option fails before any data is loaded

    def base_architecture(self, width: int):
        """The architecture at ``width`` with ``d = 1`` (the analytic NTK does not depend on d)."""
        options = parse_options(self.arch_options)
        for key in ("width", "d"):
            if key in options:
                raise ValueError(f"--arch-options may not set {key!r}; use --{key}.")
        return make_architecture(self.arch, width=width, d=1, **options)


@dataclasses.dataclass(frozen=True)
class NetworkSettings(SharedNetworkSettings):
    """Settings of ``stepwise-ntk network`` (each is a flag: ``--width 2048``)."""

    width: int = dataclasses.field(default=1024, metadata={"help": "hidden width of the network", "min": 1})
    loss: str = dataclasses.field(
        default="barlow_twins", metadata={"help": "SSL loss (network and theory)", "choices": tuple(LOSS_SETTINGS)}
    )
    kernel: str = dataclasses.field(
        default="analytic",
        metadata={"help": "NTK of the theory: infinite width, or the network's at init / after training",
                  "choices": KERNELS},
    )
    n_times: int = dataclasses.field(
        default=400,
        metadata={"help": "log-spaced times of the theory curves", "min": 10, "hint": " (to resolve the steps)"},
    )
    gallery_modes: int = dataclasses.field(default=4, metadata={"help": "modes shown in modes.png (<= d)", "min": 1})
    gallery_pool: int = dataclasses.field(
        default=1000, metadata={"help": "clean images the gallery picks from", "min": 1}
    )

    def __post_init__(self):
        super().__post_init__()
        self.base_architecture(self.width)  # bad --arch-options fail here, before any data is loaded


@dataclasses.dataclass(frozen=True)
class NetworkProblem:
    """Views, held-out views, the analytic NTK and the choices made from it."""

    views: np.ndarray  # (2n, H, W, C) float64, pairing order
    test_views: np.ndarray  # (2m, H, W, C) float64, held-out pairs from the other split
    labels: np.ndarray  # (n,)
    test_labels: np.ndarray  # (m,)
    kernel: Any  # NetworkKernel: the analytic Θ on the views and held-out views
    theta_gammas: np.ndarray  # (2n,) contrastive eigenvalues of Θ (before α²), descending
    d: int
    step_size: float


def _held_out_views(s: SharedNetworkSettings, key: jax.Array) -> tuple[np.ndarray, np.ndarray]:
    other = "test" if s.split == "train" else "train"
    views, labels, _ = cifar10_pairs(key, s.n_test, split=other, data_dir=s.data_dir, settings=s.augment(),
                                     downsample=s.downsample, dtype=jnp.float64, download=True, subset_seed=s.seed)
    return np.asarray(views), labels


def network_problem(s: SharedNetworkSettings, views, labels, width: int, *, progress: bool = False) -> NetworkProblem:
    """Add held-out views, choose ``d`` and the step ``c`` from the analytic NTK ``Θ`` of the views.

    ``d``: ``s.d``, or 3 or 4, whichever has the larger gap ``γ_d/γ_{d+1}``
    (:func:`stepwise_ntk.predictor._sweep.choose_d`). ``c``: ``s.step_size``, or ``s.rate / (8 γ_1(Θ))``
    so that gradient descent on the kernel model is well inside its stability limit.
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
    step = s.step_size if s.step_size is not None else s.rate / (8.0 * g[0])
    return NetworkProblem(views, test_views, np.asarray(labels), np.asarray(test_labels), kernel, g, d, float(step))


def rise_times(times, eigenvalues, *, relative: bool) -> np.ndarray:
    """Step times: first crossing of 1/2 by each eigenvalue column, or of half its last value.

    Args:
      times: (T,) effective times (t ≤ 0 ignored: the axis is log t).
      eigenvalues: (T, d) eigenvalues of ``C``, descending.
      relative: cross half of each column's last value (losses without a fixed point at
        ``C = I``) instead of 1/2 (Barlow Twins).
    """
    t, lam = np.asarray(times, np.float64), np.asarray(eigenvalues, np.float64)
    keep = t > 0
    t, lam = t[keep], lam[keep]
    if relative:
        lam = lam / np.where(lam[-1] > 0, lam[-1], np.nan)
    return crossing_times(t, lam)


def plan_run(arch, problem: NetworkProblem, init, kernel, s: SharedNetworkSettings, loss: str) -> tuple[int, float]:
    """Gradient steps to run: ``horizon ×`` the kernel model's last step time, from this ``F0``.

    Barlow Twins: :func:`stepwise_ntk.predictor._sweep.plan_steps` (the flow until every eigenvalue
    has crossed 1/2). Other losses: their kernel flow up to ``max_steps`` and the last
    :func:`rise_times` (``relative=True``) on it.
    """
    cfg = WidthSweepSettings(widths=(arch.width,), alpha=s.alpha, step_size=problem.step_size, horizon=s.horizon,
                      max_steps=s.max_steps, n_records=max(s.n_records, 2), seed=s.seed, train_dtype=s.train_dtype)
    if loss == "barlow_twins":
        return plan_steps(arch, problem.views, problem.test_views, init, kernel, cfg)
    lr = cfg.learning_rate
    grid = np.geomspace(lr, lr * s.max_steps, cfg.plan_points)
    traj = solve(s.alpha**2 * jnp.asarray(kernel.K), s.n_pairs, jnp.asarray(init.F0, jnp.float64), grid, loss=loss,
                 loss_kwargs=LOSS_SETTINGS[loss] or None, method="function", settings=_SOLVER)
    t_last = float(np.max(rise_times(grid, traj.eigenvalues, relative=True)))
    steps = math.ceil(s.horizon * t_last / lr)
    if not np.isfinite(t_last) or steps > s.max_steps:
        raise ValueError(
            f"the {loss} kernel model needs {steps if np.isfinite(t_last) else 'more than --max-steps'} gradient "
            f"steps of size c = {problem.step_size:.4g} (horizon {s.horizon}); raise --max-steps, --rate or --alpha."
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


def run_network(settings: NetworkSettings, out: RunDir, *, progress: bool = True) -> str:
    """Train the network, build its theory, write ``results.json``, ``arrays.npz`` and figures."""
    from stepwise_ntk.training import TrainSettings, train

    s = settings
    started = time.perf_counter()
    data = load_problem_data(s)  # the views and clean pool of the kernel-model experiments
    problem = network_problem(s, data.views, data.labels, s.width, progress=progress)
    d, n = problem.d, s.n_pairs
    arch = s.base_architecture(s.width).replace(d=d)
    train_dt = np.dtype(s.train_dtype)
    views_t, test_t = problem.views.astype(train_dt), problem.test_views.astype(train_dt)
    init = init_network(arch, views_t, test_t, alpha=s.alpha, key=data.key_init)
    analytic = problem.kernel
    steps, t_plan = plan_run(arch, problem, init, analytic, s, s.loss)
    lr = problem.step_size / s.alpha**2
    cfg = TrainSettings(loss=_train_loss(s.loss), learning_rate=lr, steps=steps, alpha=s.alpha,
                      n_records=s.n_records, record_embeddings=True, seed=s.seed)
    t0 = time.perf_counter()
    res = train(arch, cfg, views_t, test_views=test_t, init_params=init.params, progress=progress)
    train_seconds = time.perf_counter() - t0
    if res.diverged_at is not None:
        raise RunFailedError(
            f"training diverged at step {res.diverged_at} (loss {res.diverged_loss:.3g}); lower --rate (or "
            f"--step-size) or --alpha."
        )

    # The theory of this run: K = α² Θ from the network's own F0, on the run's time axis.
    times = np.geomspace(lr, lr * steps, s.n_times)
    kernel = analytic if s.kernel == "analytic" else s.kernel
    params = {"analytic": None, "empirical_init": init.params, "empirical_final": res.params}[s.kernel]
    pred = predict_run(arch, problem.views, problem.test_views, init.F0, times, alpha=s.alpha, kernel=kernel,
                       params=params, F0_test=init.F0_test, solver_settings=_SOLVER, progress=progress)
    is_bt = s.loss == "barlow_twins"
    if not is_bt:  # the flow of this loss replaces the Barlow Twins flow (closed forms stay BT's)
        traj = solve(pred.K, n, jnp.asarray(init.F0, jnp.float64), times, loss=s.loss,
                     loss_kwargs=LOSS_SETTINGS[s.loss] or None, method="function", K_test=pred.K_test,
                     F0_test=jnp.asarray(init.F0_test, jnp.float64), settings=_SOLVER)
        pred = dataclasses.replace(pred, times=traj.times, loss=traj.loss, eigenvalues=traj.eigenvalues,
                                   embeddings=traj.embeddings, flow_test_embeddings=traj.test_embeddings[-1],
                                   trajectory=traj)
    cmp = compare_run(pred, res, arch=arch)

    net_t, net_loss, net_eig = (
        res.effective_times, np.asarray(res.loss, np.float64), np.asarray(res.eigenvalues, np.float64)
    )
    th_t, th_loss, th_eig = np.asarray(pred.times), np.asarray(pred.loss), np.asarray(pred.eigenvalues)
    net_steps = rise_times(net_t, net_eig, relative=not is_bt)
    flow_steps = rise_times(th_t, th_eig, relative=not is_bt)
    ratio = net_steps / flow_steps
    closed = np.sort(np.asarray(pred.step_times, np.float64))
    rel_closed = np.abs(net_steps - closed) / closed
    rel_flow = np.abs(net_steps - flow_steps) / flow_steps
    g = np.asarray(pred.gammas, np.float64)

    title = (f"{arch.name} width {s.width}, {s.loss}, CIFAR-10 n={n}, d={d}, α={s.alpha}: "
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

    out.save_arrays(
        network_times=net_t, network_loss=net_loss, network_eigenvalues=net_eig,
        theory_times=th_t, theory_loss=th_loss, theory_eigenvalues=th_eig,
        predicted_step_times=closed, network_step_times=net_steps, theory_step_times=flow_steps,
        gammas=g, theta_gammas=problem.theta_gammas, lambda0=np.asarray(pred.lambda0),
        F0=np.asarray(init.F0, np.float64), F0_test=np.asarray(init.F0_test, np.float64),
        train_embeddings=np.asarray(res.train_embeddings, np.float64),
        test_embeddings=np.asarray(res.test_embeddings, np.float64),
        closed_form_test_embeddings=np.asarray(pred.test_embeddings),
        flow_test_embeddings=np.asarray(pred.flow_test_embeddings),
        snapshot_times=net_t[snap_idx], snapshots=snapshots, labels=problem.labels, test_labels=problem.test_labels,
        gallery_network_modes=np.asarray(net_modes), gallery_theory_modes=theory_pool,
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
        "learning_rate": lr,
        "steps": steps,
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
        "train_seconds": train_seconds,
        "wall_time_s": time.perf_counter() - started,
    }
    out.write_results(results)
    med = np.nanmedian(ratio)
    return (
        f"{steps} steps in {train_seconds:.1f} s; step time network/theory median {med:.3f} "
        f"(per mode {np.round(ratio, 3).tolist()}); held-out alignment with the predicted modes "
        f"{cmp.test_alignment:.4f} (with the kernel flow {cmp.test_alignment_flow:.4f}); final loss {net_loss[-1]:.3g}"
    )
