"""Width sweep: one architecture at several widths, each trained and held against the NTK theory.

For each width ``w`` the Flax twin ``arch.replace(width=w)`` is initialised (its own key),
trained full batch with plain gradient descent on the fixed views at output scale α and
``learning_rate = step_size / α²`` (so the step on the kernel ``Θ`` is ``step_size`` at every
α, see :mod:`stepwise_ntk.training`; by default each width's own stable step
``rate / (8 γ_1(Θ_0))`` from its empirical NTK ``Θ_0`` at initialisation,
:func:`stepwise_ntk.predictor.stable_step_size`), for ``horizon ×`` the last step time the analytic
kernel model predicts from that network's own ``F0``. Then the run is compared
(:func:`stepwise_ntk.predictor.compare_run`) with the prediction of every kernel in
``kernels``. The infinite-width theory says that, as ``w`` grows, the network's step times
approach the kernel model's (ratios → 1) and its final embeddings on held-out views span
the predicted top-``d`` modes (alignment → 1).

A run that diverges is reported (step, loss, records kept) and the sweep goes on.

Example::

    >>> import numpy as np
    >>> from stepwise_ntk.kernels import MLP
    >>> from stepwise_ntk.predictor import WidthSweepSettings, width_sweep
    >>> rng = np.random.default_rng(0)
    >>> views, test_views = rng.normal(size=(8, 4)), rng.normal(size=(3, 4))   # float64; 2n = 8
    >>> arch = MLP(depth=1, width=16, d=2)
    >>> settings = WidthSweepSettings(widths=(16, 64), alpha=0.125, step_size=0.0625, n_records=20,
    ...                               plan_points=50)
    >>> result = width_sweep(arch, views, test_views, settings, progress=False)
    >>> summary = result.summary()
    >>> summary["widths"], [run.steps for run in result.runs], summary["diverged_widths"]
    ([16, 64], [146, 262], [])
    >>> np.round(summary["analytic"]["test_alignment_flow"], 2)   # one number per width (3 test views)
    array([0.98, 0.73])
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from typing import Any

import jax
import numpy as np

from stepwise_ntk._checks import (
    check_choice,
    check_int,
    check_number,
    check_positive_int,
    check_type,
    check_views,
)
from stepwise_ntk.kernels import ArchSpec
from stepwise_ntk.predictor._metrics import crossing_times
from stepwise_ntk.predictor._predict import (
    KERNELS,
    NetworkKernel,
    Prediction,
    RunComparison,
    compare_run,
    init_network,
    network_kernel,
    predict_run,
)
from stepwise_ntk.predictor._step_size import stable_step_size
from stepwise_ntk.solver import SolverSettings
from stepwise_ntk.theory import check_enough_modes, contrastive_eigensystem, step_times
from stepwise_ntk.training import TrainSettings, train

__all__ = ["SweepResult", "WidthResult", "WidthSweepSettings", "choose_d", "init_key", "plan_steps", "width_sweep"]


def init_key(seed: int) -> jax.Array:
    """The initialisation key of a network for ``seed``: the second half of ``split(PRNGKey(seed))``.

    Every experiment that initialises a network from a seed uses it (``stepwise-ntk network``,
    whose views come from the first half, and :func:`width_sweep` at every width), so the same
    width starts from the same parameters wherever it is trained.

    Example:
        >>> init_key(3).tolist() == jax.random.split(jax.random.PRNGKey(3))[1].tolist()
        True
    """
    return jax.random.split(jax.random.PRNGKey(seed))[1]


@dataclasses.dataclass(frozen=True)
class WidthSweepSettings:
    """Settings of :func:`width_sweep`.

    Attributes:
      widths: the widths, increasing.
      alpha: output scale α (small initialisation).
      step_size: ``c`` in ``learning_rate = c / α²``: the gradient-descent step on ``Θ``;
        keep ``8 γ_1(Θ) c`` well below 1 so that gradient descent tracks the flow. None: each
        width's own ``rate / (8 γ_1(Θ_0))``, ``Θ_0`` its empirical NTK at initialisation.
      rate: ``8 γ_1(Θ_0) c`` when ``step_size`` is None.
      horizon: train for this many times the predicted last step time (≥ 1).
      max_steps: refuse (ValueError) a width whose planned run is longer.
      kernels: predictions to compare with, from :data:`stepwise_ntk.predictor.KERNELS`.
      n_records: log-spaced records of each run.
      seed: every width is initialised from :func:`init_key` ``(seed)``.
      train_dtype: "float32" or "float64", the precision of the networks (the kernel model
        is always float64).
      plan_points: points of the log-time grids of the theory (planning, and the prediction
        from the first step to the end of the run).
    """

    widths: tuple[int, ...] = (64, 256, 1024, 4096)
    alpha: float = 0.05
    step_size: float | None = None
    rate: float = 0.1
    horizon: float = 2.0
    max_steps: int = 20_000
    kernels: tuple[str, ...] = ("analytic",)
    n_records: int = 200
    seed: int = 0
    train_dtype: str = "float32"
    plan_points: int = 400

    def __post_init__(self):
        check_type("widths", self.widths, (tuple, list), "a tuple of widths")
        for w in self.widths:
            check_positive_int("widths", w, hint=" for every entry of widths")
        if not self.widths or list(self.widths) != sorted(set(self.widths)):
            raise ValueError(f"widths must be distinct positive integers in increasing order, got {self.widths!r}.")
        check_number("alpha", self.alpha, low=0, open_low=True)
        if self.step_size is not None:
            check_number("step_size", self.step_size, low=0, open_low=True, hint=" or None (from each width's kernel)")
        check_number("rate", self.rate, low=0, high=2, open_low=True, open_high=True,
                     hint=" (gradient descent is unstable at rate ≥ 2)")
        check_number("horizon", self.horizon, low=1, hint=" (train at least until the predicted last step)")
        for name in ("max_steps", "n_records", "plan_points"):
            check_int(name, getattr(self, name), low=2)
        check_type("kernels", self.kernels, (tuple, list), f"a tuple of names from {KERNELS}")
        for k in self.kernels:
            check_choice("kernels", k, KERNELS)
        if not self.kernels or len(set(self.kernels)) != len(self.kernels):
            raise ValueError(f"kernels must be distinct names from {KERNELS}, got {self.kernels!r}.")
        check_choice("train_dtype", self.train_dtype, ("float32", "float64"))
        check_positive_int("seed", self.seed, allow_zero=True)

    @property
    def learning_rate(self) -> float:
        """``step_size / α²`` (only with a fixed ``step_size``; else each width has its own)."""
        if self.step_size is None:
            raise ValueError("step_size is None: each width's learning rate follows from its own kernel "
                             "(WidthResult.learning_rate); set step_size for one learning rate.")
        return self.step_size / self.alpha**2


def choose_d(gammas: Any, candidates: tuple[int, ...] = (3, 4), min_gap: float = 1.2) -> int:
    """The candidate ``d`` with the largest gap ``γ_d / γ_{d+1}``; ValueError if it is below ``min_gap``.

    The predicted top-``d`` subspace is only well defined when ``γ_d`` stands clear of
    ``γ_{d+1}`` (close modes mix at finite initialisation, THEORY.md).

    Args:
      gammas: contrastive eigenvalues, descending (e.g. ``contrastive_eigensystem(K, n).gammas``).
      candidates: the embedding dimensions to choose from.
      min_gap: the smallest acceptable ``γ_d / γ_{d+1}``.
    """
    g = np.asarray(gammas, np.float64)
    for d in candidates:
        check_positive_int("candidates", d, hint=" for every candidate d")
    if not candidates:
        raise ValueError(f"candidates must name at least one d, got {candidates!r}.")
    if max(candidates) >= g.size:
        raise ValueError(f"d = {max(candidates)} needs at least {max(candidates) + 1} γ, got {g.size}.")
    gaps = {d: (g[d - 1] / g[d] if g[d] > 0 else math.inf) if g[d - 1] > 0 else 0.0 for d in candidates}
    best = max(candidates, key=lambda d: (gaps[d], -d))
    if gaps[best] < min_gap:
        shown = ", ".join(f"d={d}: {gaps[d]:.3g}" for d in candidates)
        raise ValueError(
            f"no candidate d has γ_d/γ_(d+1) ≥ {min_gap} ({shown}): the predicted top-d subspace would be "
            f"ill-defined. Try other candidates, more pairs, or another augmentation."
        )
    return best


@dataclasses.dataclass(frozen=True)
class WidthResult:
    """One width of a sweep.

    Attributes:
      width, steps, learning_rate: the run (``steps_planned`` before a divergence).
      train_seconds: wall time of ``train``.
      predicted_last_step: the analytic kernel model's last step time (effective time).
      diverged_at, diverged_loss, records_kept: divergence report (None, None, all records
        when the run finished).
      final_eigenvalues: the last recorded eigenvalues of ``C``.
      comparisons: kernel name -> :class:`RunComparison` (empty after a divergence).
      predictions: kernel name -> :class:`Prediction` (empty after a divergence).
      test_embeddings: ``(m, d)`` the network's final test embeddings (float64), or None.
      effective_times, eigenvalues: ``(R,)``, ``(R, d)`` the run's records (those kept).
    """

    width: int
    steps: int
    learning_rate: float
    train_seconds: float
    predicted_last_step: float
    diverged_at: int | None
    diverged_loss: float | None
    records_kept: int
    final_eigenvalues: np.ndarray
    comparisons: dict[str, RunComparison]
    predictions: dict[str, Prediction]
    test_embeddings: np.ndarray | None
    effective_times: np.ndarray
    eigenvalues: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        fin = self.final_eigenvalues
        return {
            "width": self.width,
            "steps": self.steps,
            "learning_rate": self.learning_rate,
            "train_seconds": self.train_seconds,
            "predicted_last_step": self.predicted_last_step,
            "diverged_at": self.diverged_at,
            "diverged_loss": None if self.diverged_loss is None or not math.isfinite(self.diverged_loss)
            else self.diverged_loss,
            "records_kept": self.records_kept,
            "final_eigenvalues": [float(x) if np.isfinite(x) else None for x in np.asarray(fin, np.float64)],
            "comparisons": {k: c.to_dict() for k, c in self.comparisons.items()},
        }


@dataclasses.dataclass(frozen=True)
class SweepResult:
    """A width sweep (:func:`width_sweep`).

    Attributes:
      arch: the architecture (its ``width`` field is replaced per run).
      settings: the :class:`WidthSweepSettings`.
      n_pairs, n_test: training pairs and held-out views.
      gammas: the top contrastive eigenvalues of the analytic ``K = α² Θ`` (up to ``d + 4``).
      gap: ``γ_d / γ_{d+1}`` of the analytic kernel.
      runs: one :class:`WidthResult` per width.
      seconds: wall time of the sweep.
    """

    arch: ArchSpec
    settings: WidthSweepSettings
    n_pairs: int
    n_test: int
    gammas: np.ndarray
    gap: float
    runs: tuple[WidthResult, ...]
    seconds: float

    def summary(self) -> dict[str, Any]:
        """Per kernel: the metrics as lists over widths, and the claims of the sweep.

        ``alignment_rises``: the held-out alignment with the predicted top-``d`` modes never
        falls as the width grows (over the runs that finished); ``widest_alignment``: its
        value at the widest finished run; ``ratio_spread``: ``max_j |log r_j|`` per width (0
        when every step time matches).
        """
        ok = [r for r in self.runs if r.diverged_at is None]
        out: dict[str, Any] = {"widths": [r.width for r in ok],
                               "diverged_widths": [r.width for r in self.runs if r.diverged_at is not None]}
        for kernel in self.settings.kernels:
            comps = [r.comparisons[kernel] for r in ok]
            al = [c.test_alignment for c in comps]
            al_flow = [c.test_alignment_flow for c in comps]
            ratios = [np.asarray(c.step_time_ratios, np.float64) for c in comps]
            out[kernel] = {
                "test_alignment": al,
                "test_alignment_flow": al_flow,
                "test_procrustes_error": [c.test_procrustes_error for c in comps],
                "test_procrustes_error_flow": [c.test_procrustes_error_flow for c in comps],
                "step_time_ratios": [[None if not np.isfinite(x) else float(x) for x in r] for r in ratios],
                "ratio_spread": [float(np.max(np.abs(np.log(r)))) if np.all(np.isfinite(r)) else None
                                 for r in ratios],
                "eigenvalue_error_rms": [c.eigenvalue_error_rms for c in comps],
                "eigenvalue_error_max": [c.eigenvalue_error_max for c in comps],
                "alignment_rises": _non_decreasing(al),
                "alignment_flow_rises": _non_decreasing(al_flow),
                "widest_alignment": al[-1] if al else None,
                "widest_alignment_flow": al_flow[-1] if al_flow else None,
            }
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-able record of the sweep (settings, the analytic γ, every width, the summary)."""
        return {
            "arch": self.arch.to_config(),
            "settings": dataclasses.asdict(self.settings),
            "n_pairs": self.n_pairs,
            "n_test": self.n_test,
            "d": self.arch.d,
            "gammas": [float(g) for g in np.asarray(self.gammas, np.float64)],
            "gap": self.gap,
            "seconds": self.seconds,
            "runs": [r.to_dict() for r in self.runs],
            "summary": self.summary(),
        }


def _non_decreasing(values: list[float | None]) -> bool | None:
    v = [x for x in values if x is not None]
    if len(v) < 2:
        return None
    return bool(all(b >= a for a, b in zip(v[:-1], v[1:], strict=True)))


def _analytic_kernel(arch: ArchSpec, views, test_views, cache: dict[str, NetworkKernel]) -> NetworkKernel:
    key = json.dumps(arch.kernel_config(), sort_keys=True, default=str)
    if key not in cache:
        cache[key] = network_kernel(arch, views, test_views)
    return cache[key]


# One integrator for every solve of a sweep: the planning and the final predictions then share
# one compilation (the automatic choice depends on the time span).
_SOLVER = SolverSettings(integrator="dopri5")


def plan_steps(
    arch: ArchSpec,
    views: Any,
    test_views: Any,
    init: Any,
    kernel: NetworkKernel,
    settings: WidthSweepSettings,
) -> tuple[int, float]:
    """Steps to run: ``horizon ×`` the analytic kernel model's last step time, from this ``F0``.

    The flow is integrated up to 4 × the closed-form last step time first (cheap), and the
    span is extended fourfold until every eigenvalue has crossed 1/2 or ``max_steps`` is hit.

    Args:
      arch: the architecture at this width; views, test_views: as for :func:`predict_run`.
      init: its :class:`NetworkInit` (``F0``, ``F0_test``).
      kernel: the analytic :class:`NetworkKernel` of ``arch`` on these views.
      settings: :class:`WidthSweepSettings` (α, step size, horizon, max_steps, plan_points).

    Returns:
      ``(steps, t_last)``: the gradient steps to run and the predicted last step time.
    """
    lr = settings.learning_rate
    n = views.shape[0] // 2
    es = contrastive_eigensystem(settings.alpha**2 * kernel.K, n)
    t_end = min(4.0 * float(np.max(np.asarray(step_times(es, init.F0.astype(np.float64))))),
                lr * settings.max_steps)
    while True:
        grid = np.geomspace(lr, max(t_end, 2 * lr), settings.plan_points)
        # With the test views too, so that this solve compiles like the final predictions.
        plan = predict_run(arch, views, test_views, init.F0, grid, alpha=settings.alpha, kernel=kernel,
                           F0_test=init.F0_test, solver_settings=_SOLVER)
        t_last = float(np.max(crossing_times(grid, np.asarray(plan.eigenvalues))))
        if np.isfinite(t_last) or t_end >= lr * settings.max_steps:
            break
        t_end = min(4.0 * t_end, lr * settings.max_steps)
    if not np.isfinite(t_last):
        raise ValueError(
            f"width {arch.width}: the kernel model does not take all d = {arch.d} steps within max_steps = "
            f"{settings.max_steps} gradient steps of size step_size = {settings.step_size} (final eigenvalues "
            f"{np.round(np.asarray(plan.eigenvalues[-1]), 3).tolist()}). Raise max_steps or step_size, or alpha."
        )
    steps = math.ceil(settings.horizon * t_last / lr)
    if steps > settings.max_steps:
        raise ValueError(
            f"width {arch.width}: the run needs {steps} steps (horizon {settings.horizon} × the predicted last step "
            f"{t_last:.4g} / learning rate {lr:.4g}) > max_steps = {settings.max_steps}; raise max_steps or step_size."
        )
    return steps, t_last


def width_sweep(
    arch: ArchSpec,
    views: Any,
    test_views: Any,
    settings: WidthSweepSettings = WidthSweepSettings(),
    *,
    progress: bool = True,
) -> SweepResult:
    """Train ``arch`` at each width in ``settings.widths`` and compare with the kernel theory.

    Args:
      arch: architecture declaration (e.g. ``MLP(depth=1, d=3)``); its ``d`` is the embedding
        dimension; its ``width`` is replaced by each width of the sweep.
      views: ``(2n, ...)`` float64 training views (pairing order); test_views: ``(m, ...)``
        held-out views (e.g. pairs from the test split).
      settings: :class:`WidthSweepSettings`.
      progress: progress bars of training.

    Returns:
      :class:`SweepResult`; ``result.to_dict()`` is its JSON record.

    Raises:
      TypeError: ``arch`` not an architecture declaration, ``settings`` not a
        :class:`WidthSweepSettings`.
      ValueError: NaN/Inf in the data, fewer than ``d`` positive γ, a run that would exceed
        ``max_steps``; x64 not enabled.
    """
    check_type("arch", arch, ArchSpec, "an architecture declaration such as MLP(...)")
    check_type("settings", settings, WidthSweepSettings)
    if not jax.config.jax_enable_x64:
        raise ValueError(
            "width_sweep computes the kernel model in float64: call jax.config.update('jax_enable_x64', True)."
        )
    t_start = time.perf_counter()
    views = np.asarray(check_views("views", views), np.float64)
    test_views = np.asarray(check_views("test_views", test_views, like=views), np.float64)
    arch.check_input_shape(tuple(views.shape[1:]))
    n = views.shape[0] // 2
    train_dt = np.dtype(settings.train_dtype)
    views_t, test_t = views.astype(train_dt), test_views.astype(train_dt)
    cache: dict[str, NetworkKernel] = {}

    k0 = _analytic_kernel(arch, views, test_views, cache)
    es = contrastive_eigensystem(settings.alpha**2 * k0.K, n)
    d = arch.d
    check_enough_modes(es, d)
    g = np.asarray(es.gammas, np.float64)
    gap = float(g[d - 1] / g[d]) if g[d] > 0 else math.inf

    runs = []
    for width in settings.widths:
        arch_w = arch.replace(width=width)
        init = init_network(arch_w, views_t, test_t, alpha=settings.alpha, key=init_key(settings.seed))
        kernel = _analytic_kernel(arch_w, views, test_views, cache)
        init_kernel = None
        if settings.step_size is None or "empirical_init" in settings.kernels:
            init_kernel = network_kernel(arch_w, views, test_views, kernel="empirical_init", params=init.params)
        step = settings.step_size if settings.step_size is not None else stable_step_size(init_kernel.K, n,
                                                                                          settings.rate)
        cfg_w = dataclasses.replace(settings, step_size=step)
        lr = cfg_w.learning_rate
        steps, t_last = plan_steps(arch_w, views, test_views, init, kernel, cfg_w)
        train_settings = TrainSettings(learning_rate=lr, steps=steps, alpha=settings.alpha,
                                       n_records=settings.n_records, seed=settings.seed)
        t0 = time.perf_counter()
        # A divergence stops the run cleanly (TrainingDivergedWarning names the step); it is
        # recorded below and the sweep goes on with the next width.
        res = train(arch_w, train_settings, views_t, test_views=test_t, init_params=init.params, progress=progress)
        seconds = time.perf_counter() - t0
        comparisons, predictions = {}, {}
        if res.diverged_at is None:
            # The theory on a log grid up to the run's end (one grid length for every width, so
            # the solver compiles once); the metrics interpolate both sides in log t.
            times = np.geomspace(lr, lr * steps, settings.plan_points)
            for name in settings.kernels:
                if name in ("analytic", "empirical_init"):
                    pred = predict_run(arch_w, views, test_views, init.F0, times, alpha=settings.alpha,
                                       kernel=kernel if name == "analytic" else init_kernel, F0_test=init.F0_test,
                                       solver_settings=_SOLVER)
                else:
                    params = res.params
                    pred = predict_run(arch_w, views, test_views, init.F0, times, alpha=settings.alpha,
                                       kernel=name, params=params, F0_test=init.F0_test,
                                       solver_settings=_SOLVER)
                predictions[name] = pred
                comparisons[name] = compare_run(pred, res, arch=arch_w)
        runs.append(WidthResult(
            width=width, steps=steps, learning_rate=lr, train_seconds=seconds,
            predicted_last_step=t_last, diverged_at=res.diverged_at, diverged_loss=res.diverged_loss,
            records_kept=int(res.steps.size),
            final_eigenvalues=np.asarray(res.eigenvalues[-1], np.float64) if res.steps.size else np.full(d, np.nan),
            comparisons=comparisons, predictions=predictions,
            test_embeddings=None if res.diverged_at is not None else np.asarray(res.test_embeddings, np.float64),
            effective_times=np.asarray(res.effective_times), eigenvalues=np.asarray(res.eigenvalues, np.float64),
        ))
    return SweepResult(arch=arch, settings=settings, n_pairs=n, n_test=test_views.shape[0], gammas=g[: d + 4], gap=gap,
                       runs=tuple(runs), seconds=time.perf_counter() - t_start)
