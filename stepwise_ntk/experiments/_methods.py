"""``stepwise-ntk methods``: Barlow Twins, SimCLR and VICReg on the same views, and how alike they learn.

The experiment of ``stepwise-ntk network`` run once per loss from one problem: the same
views, held-out views, architecture and initial parameters ``θ_0`` (hence the same ``F0``),
each loss at its own stable step ``c`` (as ``network`` takes it:
:func:`~stepwise_ntk.experiments._network.network_step_size`), trained full batch for
``horizon ×`` its own kernel model's last step time and held against the kernel flow of
that loss (:mod:`stepwise_ntk.experiments._network`).

The paper's cross-method claim is that different methods learn similar embeddings. With
``A_a`` the ``(m, d)`` final embeddings of the held-out views learned with loss ``a``, the
table is the subspace alignment (mean ``cos²`` of the principal angles between column
spans, :func:`stepwise_ntk.predictor.subspace_alignment`)

    M[a, b] = alignment(A_a, A_b),

over the three losses plus a fourth row and column, the Barlow Twins theory's top-``d``
modes on the held-out views (``diag(γ^{-1/2}) g(x)``, the closed form of the kernel model
``K = α² Θ``). ``M`` is symmetric with ones on the diagonal; an off-diagonal entry is 1 when
two methods span the same ``d``-dimensional function space on held-out images, and about
``d/m`` for unrelated ones.

The same table for the kernel flows of the losses (each loss's flow on ``K = α² Θ`` from the
same ``F0``, ``alignment_matrix_theory``) says how alike the theory expects the methods to
be: the losses' fixed points differ (VICReg's variance and covariance terms are centred,
SimCLR's has no ``C = I``), so their subspaces need not coincide even in the kernel regime.

Outputs: ``results.json`` (both tables, per method its step times against its theory, final
loss and eigenvalues, alignment with its own kernel flow), ``arrays.npz`` (curves and
embeddings), ``alignment.png`` and ``alignment_theory.png`` (the tables as heatmaps),
``staircases.png`` (the paper's Figure 3: one column per method, loss and eigenvalues of
``C`` against the gradient step, kernel theory dashed) and ``projections.png`` (the paper's
Figure 1: the Barlow Twins network's view embeddings on their top principal directions
before the first step and between steps: a point, a line, a plane; for ``d ≥ 2``).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

import jax.numpy as jnp
import numpy as np

from stepwise_ntk.experiments._network import (
    LOSS_SETTINGS,
    SharedNetworkSettings,
    network_problem,
    network_step_size,
    network_views,
    plan_run,
    rise_times,
    train_until_stepped,
    with_loss_flow,
)
from stepwise_ntk.experiments._plots import (
    plot_alignment_matrix,
    plot_method_staircases,
    plot_projections,
    plot_projections_2d,
)
from stepwise_ntk.experiments._run_dir import RunDir, RunFailedError
from stepwise_ntk.losses import LOSSES
from stepwise_ntk.predictor import KERNELS, compare_run, predict_run, subspace_alignment
from stepwise_ntk.solver import SolverSettings

__all__ = ["METHOD_LABELS", "MethodsSettings", "alignment_table", "run_methods", "snapshot_indices", "train_method"]

METHOD_LABELS = {"barlow_twins": "Barlow Twins", "simclr": "SimCLR", "vicreg": "VICReg"}
THEORY_LABEL = "BT theory (top-d modes)"

_FALLBACK_WIDTH = 1024

# The network experiment's integrator: planning and prediction share one compilation.
_SOLVER = SolverSettings(integrator="dopri5")


@dataclasses.dataclass(frozen=True)
class MethodsSettings(SharedNetworkSettings):
    """Settings of ``stepwise-ntk methods`` (each is a flag: ``--width 512``)."""

    width: int | None = dataclasses.field(
        default=None, metadata={"help": "hidden width of the network (none: the architecture's default, as for "
                                        "stepwise-ntk network)", "min": 1}
    )
    losses: tuple[str, ...] = dataclasses.field(
        default=tuple(LOSS_SETTINGS),
        metadata={"help": "SSL losses to train and compare (at least two)", "choices": tuple(LOSS_SETTINGS)},
    )
    kernel: str = dataclasses.field(
        default="analytic",
        metadata={"help": "NTK of the theory: infinite width, or each network's at init / after training",
                  "choices": KERNELS},
    )
    n_times: int = dataclasses.field(
        default=300,
        metadata={"help": "log-spaced times of the theory curves", "min": 10, "hint": " (to resolve the steps)"},
    )

    def __post_init__(self):
        super().__post_init__()
        if self.width is None:  # where the shared settings do not fill in per-architecture defaults
            object.__setattr__(self, "width", _FALLBACK_WIDTH)
        if len(self.losses) < 2 or len(set(self.losses)) != len(self.losses):
            raise ValueError(
                f"--losses must name at least two distinct losses from {', '.join(LOSS_SETTINGS)}, "
                f"got {' '.join(self.losses)}."
            )
        self.base_architecture(self.width)  # bad --arch-options fail here, before any data is loaded


def alignment_table(embeddings: list[Any]) -> np.ndarray:
    """The symmetric table ``M[a, b] = subspace_alignment(E_a, E_b)`` of a list of embeddings.

    Args:
      embeddings: ``k`` arrays ``(m, d_a)`` of the same ``m`` rows (held-out views).

    Returns:
      ``(k, k)`` float64, ones on the diagonal (up to rounding), in ``[0, 1]``.

    Example:
      >>> import numpy as np
      >>> E = np.eye(4)
      >>> alignment_table([E[:, :2], E[:, 1:3], E[:, :2] @ [[1.0, 1.0], [0.0, 1.0]]]).round(2)
      array([[1. , 0.5, 1. ],
             [0.5, 1. , 0.5],
             [1. , 0.5, 1. ]])
    """
    k = len(embeddings)
    M = np.eye(k)
    for a in range(k):
        for b in range(a + 1, k):
            M[a, b] = M[b, a] = float(subspace_alignment(jnp.asarray(embeddings[a], jnp.float64),
                                                         jnp.asarray(embeddings[b], jnp.float64)))
    return M


def _train_loss(loss: str):
    """The loss as trained: with the settings the kernel flow uses (``LOSS_SETTINGS``)."""
    kw = LOSS_SETTINGS[loss]
    return functools.partial(LOSSES[loss], **kw) if kw else loss


def train_method(s: MethodsSettings, loss: str, arch, problem, init, progress: bool) -> dict[str, Any]:
    """Train ``loss`` from ``init`` and build its kernel theory (as ``stepwise-ntk network`` does).

    Returns the run's curves (network and theory), step times, held-out embeddings (of the
    network, of the loss's kernel flow and of the Barlow Twins closed form) and comparison.
    """
    from stepwise_ntk.training import TrainSettings, train

    train_dt = np.dtype(s.train_dtype)
    views_t, test_t = problem.views.astype(train_dt), problem.test_views.astype(train_dt)
    # Each loss at its own stable step (SimCLR and VICReg are more curved than Barlow Twins);
    # the problem's step is already Barlow Twins'.
    if loss != "barlow_twins":
        problem = dataclasses.replace(problem, step_size=network_step_size(s, problem.init_kernel, init, loss))
    steps, t_plan = plan_run(arch, problem, init, problem.kernel, s, loss, progress=progress)
    lr = problem.step_size / s.alpha**2
    # Barlow Twins keeps its view embeddings at every record (the projections figure).
    cfg = TrainSettings(loss=_train_loss(loss), learning_rate=lr, steps=steps, alpha=s.alpha,
                        n_records=s.n_records, record_embeddings=loss == "barlow_twins", seed=s.seed)
    t0 = time.perf_counter()
    res = train(arch, cfg, views_t, test_views=test_t, init_params=init.params, progress=progress)
    res, steps = train_until_stepped(arch, cfg, views_t, res, s, test_views=test_t, progress=progress)
    seconds = time.perf_counter() - t0
    if res.diverged_at is not None:
        raise RunFailedError(
            f"{loss} training diverged at step {res.diverged_at} (loss {res.diverged_loss:.3g}); lower --rate "
            f"(or --step-size) or --alpha."
        )
    times = np.geomspace(lr, lr * steps, s.n_times)
    kernel = problem.kernel if s.kernel == "analytic" else s.kernel
    params = {"analytic": None, "empirical_init": init.params, "empirical_final": res.params}[s.kernel]
    pred = predict_run(arch, problem.views, problem.test_views, init.F0, times, alpha=s.alpha, kernel=kernel,
                       params=params, F0_test=init.F0_test, solver_settings=_SOLVER, progress=progress)
    # The closed form (top-d modes) stays Barlow Twins'.
    pred = with_loss_flow(pred, init, times, loss, progress=progress)
    cmp = compare_run(pred, res, arch=arch)
    net_t, net_eig = res.effective_times, np.asarray(res.eigenvalues, np.float64)
    th_t, th_eig = np.asarray(pred.times, np.float64), np.asarray(pred.eigenvalues, np.float64)
    net_steps = rise_times(net_t, net_eig)
    flow_steps = rise_times(th_t, th_eig)
    return {
        "loss": loss, "steps": steps, "planned_last_step_time": t_plan, "train_seconds": seconds, "lr": lr,
        "step_size": problem.step_size,
        "network_times": np.asarray(net_t, np.float64), "network_loss": np.asarray(res.loss, np.float64),
        "network_eigenvalues": net_eig, "theory_times": th_t, "theory_loss": np.asarray(pred.loss, np.float64),
        "theory_eigenvalues": th_eig, "network_step_times": net_steps, "theory_step_times": flow_steps,
        "test_embeddings": np.asarray(res.test_embeddings, np.float64),
        "flow_test_embeddings": np.asarray(pred.flow_test_embeddings, np.float64),
        "closed_form_test_embeddings": np.asarray(pred.test_embeddings, np.float64),
        "comparison": cmp, "gammas": np.asarray(pred.gammas, np.float64),
        "embeddings": None if res.embeddings is None else np.asarray(res.embeddings, np.float64),
    }


def snapshot_indices(times, step_times) -> list[int]:
    """Records at a point, a line, a plane, a solid: before the first step and between steps.

    Args:
      times: (R,) effective times of the records (t ≤ 0 never chosen: the spacing is in log t).
      step_times: (d,) the network's step times (NaN: a step that did not happen).

    Returns:
      up to 4 record indices: at a third of the first step time, then at the geometric mean
      of consecutive step times (or of the last step and the end of the run).

    Example:
      >>> import numpy as np
      >>> snapshot_indices(np.geomspace(1, 1000, 31), [10.0, 100.0])
      [5, 15, 25]
    """
    t = np.asarray(times, np.float64)
    st = np.sort(np.asarray(step_times, np.float64))
    st = st[np.isfinite(st)]
    if st.size == 0:
        return [int(t.size - 1)]
    edges = [*st[:4], float(t[-1])] if st.size < 4 else list(st[:4])
    targets = [st[0] / 3] + [float(np.sqrt(a * b)) for a, b in zip(edges[:-1], edges[1:], strict=True)][:3]
    logt = np.log(np.where(t > 0, t, np.nan))
    return [int(np.nanargmin(np.abs(logt - np.log(x)))) for x in targets]


def run_methods(settings: MethodsSettings, out: RunDir, *, progress: bool = True) -> str:
    """Train every loss from one initialisation; write the alignment table, figures and arrays."""
    s = settings
    started = time.perf_counter()
    # The views and the initial network of every other network experiment with this seed.
    views, labels = network_views(s)
    problem = network_problem(s, views, labels, s.width, progress=progress)
    d, arch, init = problem.d, problem.arch, problem.init
    runs = [train_method(s, loss, arch, problem, init, progress) for loss in s.losses]

    # The Barlow Twins theory's top-d modes: of the analytic kernel (shared by every run), or
    # of the first Barlow Twins run's empirical kernel (else the first run's).
    ref = next((r for r in runs if r["loss"] == "barlow_twins"), runs[0])
    labels = [METHOD_LABELS[r["loss"]] for r in runs] + [THEORY_LABEL]
    M = alignment_table([r["test_embeddings"] for r in runs] + [ref["closed_form_test_embeddings"]])
    # The same table for the kernel flows of the losses: what the theory says about how alike
    # the methods' embeddings are (the losses' fixed points differ: VICReg centres, SimCLR
    # normalises by a softmax).
    M_flow = alignment_table([r["flow_test_embeddings"] for r in runs] + [ref["closed_form_test_embeddings"]])
    k = len(runs)
    off = M[:k, :k][~np.eye(k, dtype=bool)]
    off_flow = M_flow[:k, :k][~np.eye(k, dtype=bool)]

    plot_alignment_matrix(out.path / "alignment.png", M, labels,
                          title=f"held-out subspace alignment, {arch.name} width {s.width}, d={d}, "
                                f"{problem.test_views.shape[0]} test views")
    plot_alignment_matrix(out.path / "alignment_theory.png", M_flow,
                          [f"{x} flow" for x in labels[:k]] + [THEORY_LABEL],
                          title=f"the same for each loss's kernel flow ({s.kernel} NTK), held-out views")
    bt = next((r for r in runs if r["embeddings"] is not None), None)
    if bt is not None and d >= 2:  # the paper's Figure 1 for this network: a point, a line, a plane
        idx = snapshot_indices(bt["network_times"], bt["network_step_times"])
        plot = plot_projections if d >= 3 else plot_projections_2d
        plot(out.path / "projections.png", bt["embeddings"][idx], [float(bt["network_times"][i]) for i in idx],
             labels=np.concatenate([problem.labels, problem.labels]),
             title=f"Barlow Twins, {arch.name} width {s.width}: view embeddings on their top-{min(d, 3)} principal "
                   "directions, before the first step and between steps")
        arrays_extra = {"snapshot_times": bt["network_times"][idx], "snapshots": bt["embeddings"][idx]}
    else:
        arrays_extra = {}
    plot_method_staircases(
        out.path / "staircases.png", [METHOD_LABELS[r["loss"]] for r in runs],
        [r["network_times"] / r["lr"] for r in runs], [r["network_loss"] for r in runs],
        [r["network_eigenvalues"] for r in runs], [r["theory_times"] / r["lr"] for r in runs],
        [r["theory_loss"] for r in runs], [r["theory_eigenvalues"] for r in runs],
        step_times=[r["theory_step_times"] / r["lr"] for r in runs],
        log_eigenvalues=[r["loss"] != "barlow_twins" for r in runs],
        title=f"{arch.name} width {s.width} on CIFAR-10 (n={s.n_pairs}, d={d}, α={s.alpha}): network (solid) vs "
              f"{s.kernel} NTK theory (dashed)",
        time_label="gradient step",
    )
    arrays: dict[str, Any] = {"alignment_matrix": M, "alignment_matrix_theory": M_flow,
                              "test_labels": problem.test_labels,
                              "closed_form_test_embeddings": ref["closed_form_test_embeddings"],
                              "F0": np.asarray(init.F0, np.float64), "F0_test": np.asarray(init.F0_test, np.float64),
                              "labels": problem.labels, **arrays_extra}
    per_method = {}
    for r in runs:
        name, cmp = r["loss"], r["comparison"]
        for key in ("network_times", "network_loss", "network_eigenvalues", "theory_times", "theory_loss",
                    "theory_eigenvalues", "test_embeddings", "flow_test_embeddings"):
            arrays[f"{name}_{key}"] = r[key]
        per_method[name] = {
            "step_size": r["step_size"],
            "learning_rate": r["lr"],
            "steps": r["steps"],
            "train_seconds": r["train_seconds"],
            "planned_last_step_time": r["planned_last_step_time"],
            "network_step_times": r["network_step_times"],
            "theory_step_times": r["theory_step_times"],
            "step_time_ratio": r["network_step_times"] / r["theory_step_times"],
            "final_loss": float(r["network_loss"][-1]),
            "final_loss_theory": float(r["theory_loss"][-1]),
            "final_eigenvalues": r["network_eigenvalues"][-1],
            "final_eigenvalues_theory": r["theory_eigenvalues"][-1],
            "test_alignment_bt_theory": float(M[labels.index(METHOD_LABELS[name]), k]),
            "test_alignment_flow": cmp.test_alignment_flow,
            "test_procrustes_error_flow": cmp.test_procrustes_error_flow,
        }
    out.save_arrays(**arrays)
    out.write_results({
        "architecture": arch.to_config(),
        "losses": list(s.losses),
        "kernel": s.kernel,
        "n_pairs": s.n_pairs,
        "n_test_views": int(problem.test_views.shape[0]),
        "input_shape": list(problem.views.shape[1:]),
        "d": d,
        "alpha": s.alpha,
        "step_size": problem.step_size,
        # Barlow Twins' step; each method's own is under "methods".
        "learning_rate": problem.step_size / s.alpha**2,
        "gammas": ref["gammas"][: d + 4],
        "labels": labels,
        "alignment_matrix": M,
        "cross_method_alignment_min": float(off.min()),
        "cross_method_alignment_mean": float(off.mean()),
        # The kernel flows of the losses, from the same F0 (rows and columns as "labels").
        "alignment_matrix_theory": M_flow,
        "cross_method_alignment_theory_min": float(off_flow.min()),
        "cross_method_alignment_theory_mean": float(off_flow.mean()),
        # Unrelated d-dimensional subspaces of R^m align at about d/m.
        "chance_alignment": d / problem.test_views.shape[0],
        "methods": per_method,
        "wall_time_s": time.perf_counter() - started,
    })
    pairs = "; ".join(f"{labels[a]}/{labels[b]} {M[a, b]:.3f} (flows {M_flow[a, b]:.3f})"
                      for a in range(k + 1) for b in range(a + 1, k + 1))
    return f"d={d}, held-out subspace alignment, networks (kernel flows): {pairs}"
