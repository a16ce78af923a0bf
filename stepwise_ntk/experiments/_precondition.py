"""``stepwise-ntk precondition``: spectral preconditioning of SSL, kernel model and networks.

The preconditioned flow ``dF/dt = −K ∇_F L · P(C)`` with ``P = (C₊ + εI)^(−k)``
(:class:`stepwise_ntk.theory.Preconditioner`) against the plain flow, on

* the kernel model of the ``linear`` experiment (linear CIFAR-10 kernel, its defaults
  ``n = 500``, ``d = 8``, ``W(0) ~ N(0, init_scale²)``): the gradient flow of both (effective
  time), the closed-form step times, and gradient descent on the kernel model (``F ←
  F − c K ∇L · P``, iterated in the contrastive eigenbasis) at each one's largest stable
  step ``c`` (doubling from ``c_0 = 1/(64 γ_1)`` until a run diverges or fails to converge);
  swept over ``eps_sweep`` × ``scale_sweep``;
* finite networks (``--net-losses``; the ``network`` defaults: a one-hidden-layer MLP of
  width 1024 on 8×8 images, ``n = 256``, ``α = 0.05``), trained plain and preconditioned
  (:func:`stepwise_ntk.training.preconditioned_loss`), each at its own largest stable
  gradient step ``c`` on the NTK (doubling from ``c_0 = rate/(8 γ_1(Θ))`` until a run
  diverges, ends above its initial loss, or its top eigenvalue of ``C`` overshoots by more
  than twice the gradient flow's own overshoot over the same effective time,
  :func:`overshoot`; halving instead if ``c_0`` itself fails),
  reporting the gradient steps until every mode has stepped, and a ridge linear probe of
  the held-out embeddings on the CIFAR-10 labels (:func:`stepwise_ntk.predictor.linear_probe`),
  fitted on both views of ``--net-probe-images`` labelled training images (default 500)
  that each run embeds at its end: the network trains on 64-256 images, and a probe fitted
  on those alone varies from run to run by more than the differences it is asked about;
  with ``--net-seeds m``, at ``m`` seeds, gathered by :func:`seed_summary`.
  "Stepped" is counted two ways: every eigenvalue of ``C`` past 1/2 (``steps_to_pass_half``;
  Barlow Twins' level, and a step of SimCLR and VICReg too, whose eigenvalues rise from
  ``λ_0`` through 1/2 to a level of their own), and every eigenvalue past half of the plain
  run's final one (``steps_to_pass``; the same as the first for Barlow Twins). The second
  also counts the slow growth after the steps (SimCLR's scale keeps rising as its softmax
  sharpens), which ``P(C)`` slows down where ``C > I``; so it depends on the step budget.

Outputs: ``results.json`` (both parts and the sweep table), ``sweep.md`` (the speed-up
table), ``curves.png`` (plain vs preconditioned eigenvalue curves of the kernel model, on
one effective-time axis, with the closed forms) and ``network.png`` (plain vs
preconditioned network curves against gradient steps, one panel per loss).
"""

from __future__ import annotations

import dataclasses
import functools
import time
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from stepwise_ntk.data import cifar10_pairs
from stepwise_ntk.experiments._kernel import architecture_from_options, parse_options
from stepwise_ntk.experiments._kernel_model import ExperimentSettings, load_problem_data
from stepwise_ntk.experiments._linear import flatten_scaled
from stepwise_ntk.experiments._network import ARCH_DEFAULTS, LOSS_SETTINGS, per_arch_help
from stepwise_ntk.experiments._run_dir import RunDir
from stepwise_ntk.experiments._settings import SEED_MAX, PreconditionerFlags, check_settings
from stepwise_ntk.kernels import ARCHITECTURES
from stepwise_ntk.losses import LOSSES
from stepwise_ntk.predictor import (
    accuracy_difference,
    choose_d,
    crossing_times,
    init_key,
    init_network,
    linear_probe,
    network_kernel,
    pair_groups,
    stable_step_size,
)
from stepwise_ntk.predictor import subspace_alignment as _alignment
from stepwise_ntk.solver import solve, solve_preconditioned
from stepwise_ntk.theory import (
    Preconditioner,
    contrastive_eigensystem,
    final_embeddings,
    initial_eigenvalues,
    mode_coordinates,
    precondition_matrix,
    preconditioned_aligned_eigenvalues,
    preconditioned_stable_step,
    preconditioned_step_times,
)

__all__ = [
    "OVERSHOOT_LIMIT",
    "PreconditionSettings",
    "flow_overshoot",
    "kernel_gd",
    "network_precondition_overlay",
    "overshoot",
    "precondition_overlay",
    "run_precondition",
    "seed_summary",
    "steps_to_pass",
]


def _net_help(text: str, field: str) -> str:
    return f"{text} ({per_arch_help(field)}: the `network` defaults)"


@dataclasses.dataclass(frozen=True)
class PreconditionSettings(PreconditionerFlags, ExperimentSettings):
    """Settings of ``stepwise-ntk precondition`` (each is a flag: ``--eps 0.01``).

    The network part's settings left at None take the ``network`` subcommand's defaults of
    ``--net-arch`` (:data:`stepwise_ntk.experiments._network.ARCH_DEFAULTS`), filled in when
    the settings are made (so ``config.json`` shows the values used).
    """

    eps_sweep: tuple[float, ...] = dataclasses.field(
        default=(1e-1, 1e-2, 1e-3), metadata={"help": "ε values of the kernel-model sweep"}
    )
    scale_sweep: tuple[float, ...] = dataclasses.field(
        default=(1e-4, 1e-3, 1e-2, 1e-1, 1.0),
        metadata={"help": "init scales of the kernel-model sweep (1: standard init of the scaled linear model)"},
    )
    gd_max_steps: int = dataclasses.field(
        default=20_000, metadata={"help": "step budget of gradient descent on the kernel model", "min": 10}
    )
    kernel_part: bool = dataclasses.field(default=True, metadata={"help": "run the kernel-model part"})
    net_losses: tuple[str, ...] = dataclasses.field(
        default=(), metadata={"help": "losses of the network part (none: skip it)", "choices": tuple(LOSSES)}
    )
    net_arch: str = dataclasses.field(
        default="mlp", metadata={"help": "network architecture", "choices": tuple(sorted(ARCHITECTURES))}
    )
    net_arch_options: str = dataclasses.field(
        default="", metadata={"help": "architecture fields key=value,... on top of the `network` defaults (mlp: "
                                      "depth=1, myrtle: depth=5,activation=erf, wrn: blocks_per_group=1)"}
    )
    net_width: int | None = dataclasses.field(
        default=None, metadata={"help": _net_help("hidden width of the network", "width"), "min": 1}
    )
    net_pairs: int | None = dataclasses.field(
        default=None, metadata={"help": _net_help("training images of the network", "n_pairs"), "min": 1}
    )
    net_test: int | None = dataclasses.field(
        default=None, metadata={"help": _net_help("held-out images (probe)", "n_test"), "min": 1}
    )
    net_probe_images: int = dataclasses.field(
        default=500, metadata={"help": "labelled images of the training split whose embeddings (both views) fit "
                                       "the linear probe, scored on the held-out images (0: fit it on the "
                                       "network's own training views, 64-256 images)", "min": 0}
    )
    net_d: int | None = dataclasses.field(
        default=None, metadata={"help": "embedding dimension of the network (none: 3 or 4, whichever has the "
                                        "larger γ_d/γ_d+1, as `network`)", "min": 1}
    )
    net_downsample: int | None = dataclasses.field(
        default=None, metadata={"help": _net_help("average-pool images (network)", "downsample"), "min": 1}
    )
    net_alphas: tuple[float, ...] | None = dataclasses.field(
        default=None, metadata={"help": "output scales α (none: the `network` default small α of --net-arch, "
                                        f"{per_arch_help('alpha')}, and 1, the standard initialisation)"}
    )
    net_rate: float | None = dataclasses.field(
        default=None, metadata={"help": _net_help("first step of the search: the network's own step c_0 = "
                                                  "rate/(8 γ_1(Θ_0)), Θ_0 its empirical NTK at init", "rate"),
                                "above": 0}
    )
    net_doublings: int = dataclasses.field(default=7, metadata={"help": "step sizes tried: c_0·2^k", "min": 1})
    net_max_steps: int = dataclasses.field(default=3000, metadata={"help": "gradient steps per run", "min": 10})
    net_seeds: int = dataclasses.field(
        default=1, metadata={"help": "repeat the network part at seeds seed, seed+1, ... (each its own images, "
                                     "views and initialisation); the table adds the mean over seeds", "min": 1}
    )

    def __post_init__(self):
        check_settings(self)  # net_arch first: the defaults are looked up by it
        if not (self.kernel_part or self.net_losses):
            raise ValueError("nothing to run: pass --net-losses or keep the kernel-model part on.")
        if self.kernel_part and self.part != "all":
            raise ValueError(f"--part {self.part} applies to the network part only (the kernel model's gradient "
                             f"descent runs in the contrastive eigenbasis, where P(C) multiplies the whole "
                             f"gradient): add --kernel-part false.")
        if self.seed + self.net_seeds - 1 > SEED_MAX:
            raise ValueError(f"--seed {self.seed} with --net-seeds {self.net_seeds} runs past the largest seed "
                             f"{SEED_MAX}: lower --seed.")
        a = ARCH_DEFAULTS[self.net_arch]
        for name, value in (("net_width", a.width), ("net_pairs", a.n_pairs), ("net_test", a.n_test),
                            ("net_downsample", a.downsample), ("net_alphas", (a.alpha, 1.0)),
                            ("net_rate", a.rate)):
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        for flag_, values in (("--eps-sweep", self.eps_sweep), ("--scale-sweep", self.scale_sweep),
                              ("--net-alphas", self.net_alphas)):
            if not values or not all(np.isfinite(v) and v > 0 for v in values):
                raise ValueError(f"{flag_} must be one or more finite numbers > 0, got {list(values)}.")
        try:
            parse_options(self.net_arch_options)
        except ValueError as err:
            raise ValueError(f"--net-arch-options: {err}") from None
        if 32 % self.net_downsample:
            raise ValueError(f"--net-downsample must divide the image side 32 (1, 2, 4, 8, 16, 32), "
                             f"got {self.net_downsample}.")
        side = 32 // self.net_downsample
        try:
            self.net_architecture().check_input_shape((side, side, 3))
        except ValueError as err:
            raise ValueError(f"--net-arch {self.net_arch} with --net-downsample {self.net_downsample} "
                             f"({side}×{side} images): {err}") from None

    def net_architecture(self):
        """The network part's architecture at ``--net-width`` with ``d = 1`` (``network``'s options underneath)."""
        return architecture_from_options(self.net_arch, self.net_arch_options, ARCH_DEFAULTS[self.net_arch].options,
                                         width=self.net_width, d=1)


# ------------------------------------------------------------------------------ kernel model

@functools.partial(jax.jit, static_argnames=("precond", "max_steps", "d"))
def _kernel_gd(gammas, M0, c, precond: Preconditioner, max_steps: int, d: int):
    eye = jnp.eye(d, dtype=M0.dtype)

    def cond(state):
        M, step, first, loss = state
        return (step < max_steps) & jnp.isfinite(loss) & (loss < 1e6)

    def body(state):
        M, step, first, _ = state
        MG = M * gammas
        C = MG @ M.T
        M = M - 4.0 * c * (precondition_matrix(C, precond) @ (C - eye)) @ MG
        C = (M * gammas) @ M.T
        lam_min = jnp.linalg.eigvalsh(C)[0]
        step = step + 1
        first = jnp.where((first < 0) & (lam_min > 0.5), step, first)
        return M, step, first, jnp.sum(jnp.square(C - eye))

    init = (M0, jnp.asarray(0), jnp.asarray(-1), jnp.asarray(float(d), M0.dtype))
    M, step, first, loss = jax.lax.while_loop(cond, body, init)
    return M, step, first, loss


def kernel_gd(es, F0, c: float, precond: Preconditioner, max_steps: int) -> dict[str, Any]:
    """Gradient descent ``F ← F − c K ∇L · P(C)`` on the Barlow Twins kernel model.

    Iterated exactly in the contrastive eigenbasis (``M ← M − 4c p(C)(C − I) M Γ``, every
    mode). Returns the first step at which all ``d`` eigenvalues of ``C`` exceed 1/2 (None
    if never), the steps run, the final loss, whether the run converged (finite loss below
    ``10⁻⁴``: a stable step size) and the subspace alignment of its final embeddings with the
    closed form (a step past the top mode's limit ``1/(4γ_1 p(1))`` can still converge, to a
    minimum that mixes the top mode with lower ones, where the loss is flatter).
    """
    d = F0.shape[1]
    M0 = mode_coordinates(es, F0)
    M, step, first, loss = _kernel_gd(es.gammas, M0, jnp.asarray(c, M0.dtype), precond, int(max_steps), d)
    loss = float(loss)
    ok = bool(np.isfinite(loss) and loss < 1e-4)
    alignment = None
    if ok:
        F = F0 + es.factor @ (es.vectors @ (M - M0).T)
        alignment = float(_alignment(F, final_embeddings(es, None, d)))
    return {"step_size": float(c), "steps_to_pass": int(first) if int(first) > 0 else None,
            "steps_run": int(step), "final_loss": loss, "converged": ok, "final_alignment_closed_form": alignment}


def _largest_stable(run, c0: float, doublings: int) -> dict[str, Any]:
    """Double ``c`` from ``c0`` until a run is unstable; the last stable run and all tried.

    If ``c0`` itself is unstable, halve it instead (at most ``doublings`` times) until a run
    is stable: the same search for every run, whichever side of ``c0`` its limit lies.
    """
    tried, best = [], None
    for k in range(doublings):
        r = run(c0 * 2.0**k)
        tried.append(r)
        if not r["stable"]:
            break
        best = r
    for k in range(1, doublings + 1 if best is None else 0):
        r = run(c0 * 2.0**-k)
        tried.append(r)
        if r["stable"]:
            best = r
            break
    return {"chosen": best, "tried": tried}


def _kernel_case(K, n, F0, es, pc: Preconditioner, times, s: PreconditionSettings) -> dict[str, Any]:
    """Plain and preconditioned flow, closed forms and GD for one (ε, init scale)."""
    plain_pc = Preconditioner("none")
    lam0 = np.asarray(initial_eigenvalues(es, F0))
    small = bool(np.all(lam0 < 1))
    out: dict[str, Any] = {"eps": pc.eps, "lambda0_max": float(lam0.max()), "lambda0_min": float(lam0.min())}
    flows = {}
    for name, p in (("plain", plain_pc), ("preconditioned", pc)):
        traj = solve(K, n, F0, times) if name == "plain" else solve_preconditioned(K, n, F0, times, precond=p)
        sim = crossing_times(np.asarray(times), np.asarray(traj.eigenvalues))
        pred = np.sort(np.asarray(preconditioned_step_times(es, F0, p))) if small else np.full(F0.shape[1], np.nan)
        rel = np.abs(sim - pred) / pred
        flows[name] = traj
        out[name] = {
            "simulated_step_times": sim,
            "closed_form_step_times": pred,
            "step_time_median_relative_error": float(np.nanmedian(rel)) if small else None,
            "all_passed_time": float(np.max(sim)),
            "final_loss": float(traj.loss[-1]),
        }
        c0 = 1.0 / (64.0 * float(es.gammas[0]))

        def run(c, p=p):
            r = kernel_gd(es, F0, c, p, s.gd_max_steps)
            r["stable"] = r["converged"]
            return r

        search = _largest_stable(run, c0, 12)
        out[name]["gd"] = search
        out[name]["gd_steps_to_pass"] = None if search["chosen"] is None else search["chosen"]["steps_to_pass"]
        out[name]["gd_step_size"] = None if search["chosen"] is None else search["chosen"]["step_size"]
        out[name]["gd_step_size_theory"] = preconditioned_stable_step(es.gammas, p)
        out[name]["gd_final_alignment_closed_form"] = (None if search["chosen"] is None
                                                       else search["chosen"]["final_alignment_closed_form"])
    a, b = out["plain"], out["preconditioned"]
    out["time_speedup"] = a["all_passed_time"] / b["all_passed_time"]
    out["closed_form_time_speedup"] = float(np.max(a["closed_form_step_times"]) / np.max(b["closed_form_step_times"]))
    sa, sb = a["gd_steps_to_pass"], b["gd_steps_to_pass"]
    out["gd_step_speedup"] = (sa / sb) if (sa and sb) else None
    out["final_alignment"] = float(_alignment(flows["plain"].embeddings, flows["preconditioned"].embeddings))
    closed = final_embeddings(es, None, F0.shape[1])
    out["final_alignment_closed_form"] = {k: float(_alignment(v.embeddings, closed)) for k, v in flows.items()}
    return out, flows


def _time_grid(es, F0, pcs, n_times):
    lam0 = np.asarray(initial_eigenvalues(es, F0))
    d = F0.shape[1]
    g = np.asarray(es.gammas[:d], np.float64)
    if np.all(lam0 < 1):
        t_all = [np.asarray(preconditioned_step_times(es, F0, p)) for p in pcs]
        t_min = min(float(np.min(t)) for t in t_all) / 100
        t_max = max(float(np.max(t)) for t in t_all)
    else:
        t_min, t_max = 1e-3 / (8 * g[0]), 1.0 / (8 * g[-1])
    t_end = 1.5 * (t_max + np.log(99.0) / (8 * g[-1]))
    return jnp.asarray(np.geomspace(t_min, t_end, n_times))


def _kernel_part(s: PreconditionSettings, out: RunDir, progress: bool) -> dict[str, Any]:
    problem = load_problem_data(s)
    X = flatten_scaled(problem.views)
    K = X @ X.T
    n, d = s.n_pairs, s.d
    es = contrastive_eigensystem(K, n)
    noise = jax.random.normal(problem.key_init, (d, X.shape[1]), jnp.float64)
    main_pc = s.preconditioner()
    F0 = X @ (s.init_scale * noise).T
    pcs = [Preconditioner("none"), main_pc] + [s.preconditioner(e) for e in s.eps_sweep]
    times = _time_grid(es, F0, pcs, 2 * s.n_times)
    main, flows = _kernel_case(K, n, F0, es, main_pc, times, s)
    lam0 = initial_eigenvalues(es, F0)
    theory = {name: np.sort(np.asarray(preconditioned_aligned_eigenvalues(es.gammas[:d], lam0, times, p)),
                            axis=1)[:, ::-1]
              for name, p in (("plain", Preconditioner("none")), ("preconditioned", main_pc))}
    _plot_kernel(out.path / "curves.png", np.asarray(times), flows, theory,
                 title=f"linear Barlow Twins kernel model, CIFAR-10 n={n}, d={d}: plain vs {main_pc.describe()}")
    out.save_arrays(times=np.asarray(times), plain_eigenvalues=np.asarray(flows["plain"].eigenvalues),
                    preconditioned_eigenvalues=np.asarray(flows["preconditioned"].eigenvalues),
                    plain_theory=theory["plain"], preconditioned_theory=theory["preconditioned"],
                    gammas=np.asarray(es.gammas))
    rows = []
    for scale in s.scale_sweep:
        F0s = X @ (scale * noise).T
        grid = _time_grid(es, F0s, [Preconditioner("none")] + [s.preconditioner(e) for e in s.eps_sweep],
                          2 * s.n_times)
        for eps in s.eps_sweep:
            case, _ = _kernel_case(K, n, F0s, es, s.preconditioner(eps), grid, s)
            rows.append({"init_scale": scale, **{k: case[k] for k in (
                "eps", "lambda0_max", "lambda0_min", "time_speedup", "closed_form_time_speedup", "gd_step_speedup",
                "final_alignment")},
                "plain_gd_steps": case["plain"]["gd_steps_to_pass"],
                "preconditioned_gd_steps": case["preconditioned"]["gd_steps_to_pass"],
                "plain_gd_step_size": case["plain"]["gd_step_size"],
                "preconditioned_gd_step_size": case["preconditioned"]["gd_step_size"],
                "plain_gd_alignment": case["plain"]["gd_final_alignment_closed_form"],
                "preconditioned_gd_alignment": case["preconditioned"]["gd_final_alignment_closed_form"],
                "preconditioned_median_step_time_error":
                    case["preconditioned"]["step_time_median_relative_error"]})
            if progress:
                r = rows[-1]
                print(f"  kernel sweep: scale {scale:g} eps {eps:g}: time x{r['time_speedup']:.2f}, "
                      f"GD steps {r['plain_gd_steps']} -> {r['preconditioned_gd_steps']}", flush=True)
    gammas = np.asarray(es.gammas, np.float64)
    return {"n_pairs": n, "d": d, "init_scale": s.init_scale, "preconditioner": main_pc.describe(),
            "gammas": gammas[: d + 4], "gamma_min": float(gammas.min()), "main": main, "sweep": rows}


def _all_passed(step_times) -> float | None:
    t = np.asarray(step_times, np.float64)
    return float(np.max(t)) if t.size and np.all(np.isfinite(t)) else None


def precondition_overlay(s: Any, out: RunDir, es, K, F0, plain, times, theory_plain, *,
                         title: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``--precondition`` of ``linear`` / ``kernel``: the preconditioned flow from the plain run's ``F0``.

    Integrates ``dF/dt = −K ∇L · P(C)`` (:func:`stepwise_ntk.solver.solve_preconditioned`,
    ``P`` = ``s.preconditioner()``) on a grid that starts before its first closed-form step
    and ends with the plain run's, writes ``precondition.png`` (plain dashed, preconditioned
    solid, aligned closed forms dotted) and returns the ``precondition`` entry of
    ``results.json``: the simulated and closed-form preconditioned step times (sorted), the
    effective-time speed-up to all ``d`` modes past 1/2 (solver and closed form), the
    subspace alignment of the two runs' final embeddings, and the arrays to save.

    Args:
      es: contrastive eigensystem of ``K``; ``F0``: ``(2n, d)``; ``plain``: the plain run's
        trajectory on ``times`` ``(T,)``; ``theory_plain``: ``(T, d)`` its sorted closed form.
    """
    pc = s.preconditioner()
    d = F0.shape[1]
    t_plain = np.asarray(times, np.float64)
    lam0 = initial_eigenvalues(es, F0)
    small = bool(np.all(np.asarray(lam0) < 1))
    closed = (np.sort(np.asarray(preconditioned_step_times(es, F0, pc), np.float64)) if small
              else np.full(d, np.nan))
    t_begin = min(float(t_plain[0]), float(np.nanmin(closed)) / 100 if small else float(t_plain[0]))
    t_pc = np.geomspace(t_begin, float(t_plain[-1]), t_plain.shape[0])
    with out.phase(f"preconditioned flow {pc.describe()} ({t_pc.shape[0]} times)"):
        traj = solve_preconditioned(K, s.n_pairs, F0, jnp.asarray(t_pc), precond=pc)
    eig = np.asarray(traj.eigenvalues)
    simulated = crossing_times(t_pc, eig)
    theory_pc = np.sort(np.asarray(preconditioned_aligned_eigenvalues(es.gammas[:d], lam0, jnp.asarray(t_pc), pc)),
                        axis=1)[:, ::-1]
    _plot_kernel(out.path / "precondition.png", {"plain": t_plain, "preconditioned": t_pc},
                 {"plain": plain, "preconditioned": traj}, {"plain": theory_plain, "preconditioned": theory_pc},
                 title=f"{title}: plain vs {pc.describe()}")
    plain_sim = crossing_times(t_plain, np.asarray(plain.eigenvalues))
    plain_closed = np.sort(np.asarray(preconditioned_step_times(es, F0, Preconditioner("none")), np.float64))
    a, b = _all_passed(plain_sim), _all_passed(simulated)
    rel = np.abs(simulated - closed) / closed
    results = {
        "preconditioner": pc.describe(),
        "form": pc.form, "eps": pc.eps, "power": s.power, "part": pc.part, "floor": pc.floor,
        "simulated_step_times": simulated,
        "closed_form_step_times": closed,
        "step_time_relative_error": rel,
        "step_time_median_relative_error": float(np.nanmedian(rel)) if small else None,
        "all_passed_time_plain": a,
        "all_passed_time_preconditioned": b,
        "time_speedup": _ratio(a, b),
        "closed_form_time_speedup": _ratio(float(np.max(plain_closed)), float(np.max(closed))) if small else None,
        "final_alignment_with_plain": float(_alignment(plain.embeddings, traj.embeddings)),
        "final_loss": float(traj.loss[-1]),
        "solver": {"method": traj.method, "integrator": traj.integrator, "reason": traj.reason},
    }
    arrays = {"precondition_times": t_pc, "precondition_eigenvalues": eig, "precondition_theory_eigenvalues": theory_pc,
              "precondition_loss": np.asarray(traj.loss)}
    return results, arrays


# ------------------------------------------------------------------------------ networks

def _net_steps_to_pass(res, reference) -> float:
    """First recorded step at which every eigenvalue of ``C`` passed half of ``reference``
    (ones: the level 1/2; for SimCLR and VICReg, which have no fixed point at ``C = I``,
    also the plain run's final eigenvalues, the same for both runs); inf if never."""
    lam = np.asarray(res.eigenvalues, np.float64)
    steps = np.asarray(res.steps, np.float64)
    passed = np.all(lam > 0.5 * np.asarray(reference)[None, :], axis=1)
    return float(steps[np.argmax(passed)]) if passed.any() else float("inf")


# A network run whose top eigenvalue of C overshoots by more than this multiple of the gradient
# flow's own overshoot (see :func:`overshoot`) is past the flow's regime: its steps would be
# counted at a spike.
OVERSHOOT_LIMIT = 2.0


def overshoot(eigenvalues) -> float:
    """``max_t λ_1(t) / max(1, λ_1(0), λ_1(T))``: how far the top eigenvalue of ``C`` overshoots.

    Gradient descent at a step that its loss survives can still spike: ``C``'s top
    eigenvalue jumps to hundreds of times its final level and falls back (the catapult of a
    step past the stable one), and a mode then "passes 1/2" at the spike. Barlow Twins' and
    SimCLR's flows rise monotonically to their level (SimCLR's keeps growing), so the ratio
    stays near 1 for a run that follows them; VICReg's flow itself can overshoot (on the
    Myrtle-5 NTK at α = 0.2 its top eigenvalue rises to 2.1× its final level: the variance
    term lifts every centred direction before the covariance term separates them). The
    network search therefore counts a run as stable only if its overshoot is within
    :data:`OVERSHOOT_LIMIT` times ``max(1, the flow's)`` over the same effective time
    (:func:`flow_overshoot`).

    Args:
      eigenvalues: ``(R, d)`` recorded eigenvalues of ``C``, descending in each row.

    Example:
        >>> import numpy as np
        >>> overshoot(np.array([[0.0, 0.0], [1.0, 0.5], [1.0, 1.0]]))
        1.0
        >>> overshoot(np.array([[0.0, 0.0], [30.0, 0.5], [1.0, 1.0]]))
        30.0
    """
    lam = np.asarray(eigenvalues, np.float64)
    top = lam[:, 0]
    return float(np.max(top) / max(1.0, top[0], top[-1]))


def flow_overshoot(times, eigenvalues, horizon: float) -> float:
    """:func:`overshoot` of a gradient flow's eigenvalues over ``times ≤ horizon``.

    Args:
      times: ``(R,)`` increasing effective times of the flow (the first near 0).
      eigenvalues: ``(R, d)`` its eigenvalues of ``C``, descending in each row.
      horizon: the effective time a network run covers (its step × its number of steps).

    Example:
        >>> import numpy as np
        >>> t = np.array([0.0, 1.0, 2.0, 3.0])
        >>> lam = np.array([[0.1], [3.0], [1.5], [1.5]])
        >>> flow_overshoot(t, lam, 3.0), flow_overshoot(t, lam, 1.0)  # to the peak: no overshoot yet
        (2.0, 1.0)
    """
    keep = np.asarray(times) <= horizon
    keep[0] = True
    return overshoot(np.asarray(eigenvalues)[keep])


def _flow(K, n, F0, loss, kw, pc, horizon: float, t0: float, n_times: int = 300, **solver_kw):
    """The kernel flow a network run is judged against (:func:`flow_overshoot`): from ``t = 0``
    and ``n_times`` log-spaced times in ``[t0, horizon]``; ``(times, eigenvalues)``, or None
    where the solver cannot reach the horizon. For the search, ``K`` is the empirical NTK at
    init (``f = α·net`` and step ``c`` give kernel ``Θ_0`` and effective time ``c · step``)."""
    times = np.concatenate([[0.0], np.geomspace(t0, horizon, n_times)])
    try:
        traj = solve_preconditioned(jnp.asarray(K, jnp.float64), n, jnp.asarray(F0, jnp.float64),
                                    jnp.asarray(times), precond=pc, loss=loss, loss_kwargs=kw, **solver_kw)
    except ValueError:
        return None
    return times, np.asarray(traj.eigenvalues)


def _stability(res, flow, horizon: float) -> tuple[bool, bool, float | None, float]:
    """``(finite, loss_rose, overshoot, limit)`` of a network run judged against its kernel
    flow (:func:`_flow`, None: no flow) over the run's effective time ``horizon``; the
    overshoot is None for a run that is not finite. The run is stable iff finite, its final
    loss is not above its initial one, and overshoot ≤ limit.

    The loss check catches a run that blows up late without overflowing: gradient descent
    past its stable step can leave the flow's regime after the modes have stepped, and its
    loss then ends orders of magnitude above where it began (while ``C``'s top eigenvalue
    grows with it, so the overshoot relative to the end level stays small)."""
    finite = res.diverged_at is None and bool(np.isfinite(res.loss).all())
    loss = np.asarray(res.loss, np.float64)
    rose = finite and bool(loss[-1] > loss[0])
    peak = overshoot(res.eigenvalues) if finite else None
    flow_peak = 1.0 if flow is None else flow_overshoot(*flow, horizon)
    return finite, rose, peak, OVERSHOOT_LIMIT * max(1.0, flow_peak)


def _ratio(a, b):
    ok = a is not None and b is not None and np.isfinite(a) and np.isfinite(b) and b > 0
    return float(a / b) if ok else None


def _net_part(s: PreconditionSettings, progress: bool) -> dict[str, Any]:
    from stepwise_ntk.training import TrainSettings, preconditioned_loss, train

    ns = dataclasses.replace(s, n_pairs=s.net_pairs, downsample=s.net_downsample)
    data = load_problem_data(ns)
    views = np.asarray(data.views, np.float64)
    other = "test" if s.split == "train" else "train"
    test_views, test_labels = _net_views(s, 1, s.net_test, other)
    probe32 = probe_labels = None
    if s.net_probe_images:
        probe_views, probe_labels = _net_views(s, 2, s.net_probe_images, s.split)
        probe32 = probe_views.astype(np.float32)
    base = s.net_architecture()
    theta = network_kernel(base, views, test_views, progress=progress)
    g = np.asarray(contrastive_eigensystem(jnp.asarray(theta.K), s.net_pairs).gammas, np.float64)
    d = choose_d(g) if s.net_d is None else s.net_d  # as `network`: the larger gap of d = 3, 4
    arch = base.replace(d=d)
    views32, test32 = views.astype(np.float32), test_views.astype(np.float32)
    # Every run embeds the held-out views, then the probe's own (if any), in one pass.
    embed32 = test32 if probe32 is None else np.concatenate([test32, probe32])
    n_held = test32.shape[0]
    # θ_0 does not depend on α (f = α·net), so one empirical NTK at init serves every α:
    # the search starts at the network's own step c_0 = rate/(8 γ_1(Θ_0)), as `network` trains.
    init0 = init_network(arch, views32, test32, alpha=1.0, key=init_key(s.seed))
    theta0 = network_kernel(arch, views, test_views, kernel="empirical_init", params=init0.params, progress=progress)
    g0 = np.asarray(contrastive_eigensystem(jnp.asarray(theta0.K), s.net_pairs).gammas, np.float64)
    c0 = stable_step_size(theta0.K, s.net_pairs, s.net_rate)
    results: dict[str, Any] = {"architecture": arch.to_config(), "gamma_1": float(g[0]), "gamma_min": float(g.min()),
                               "gamma_1_init": float(g0[0]), "gamma_min_init": float(g0.min()),
                               "gamma_d_init": float(g0[d - 1]), "first_step_size": float(c0), "rate": s.net_rate,
                               "n_pairs": s.net_pairs, "n_test": s.net_test, "probe_images": s.net_probe_images,
                               "d": d, "downsample": s.net_downsample,
                               "preconditioner": s.preconditioner().describe(),
                               "stable_step_theory": {
                                   "plain": preconditioned_stable_step(g0, Preconditioner("none")),
                                   "preconditioned": preconditioned_stable_step(g0, s.preconditioner())},
                               "runs": []}
    curves = []
    for alpha in s.net_alphas:
        init = init_network(arch, views32, test32, alpha=alpha, key=init_key(s.seed))
        for loss in s.net_losses:
            kw = LOSS_SETTINGS[loss]  # as trained by `network`
            row: dict[str, Any] = {"loss": loss, "alpha": alpha}
            chosen_res = {}
            searches = {}
            flow_peaks = {}
            for name, pc in (("plain", Preconditioner("none")), ("preconditioned", s.preconditioner())):
                L = preconditioned_loss(loss, pc, loss_kwargs=kw or None)
                flow = _flow(theta0.K, s.net_pairs, init.F0, loss, kw or None, pc,
                             c0 * 2.0 ** (s.net_doublings - 1) * s.net_max_steps, c0 * 1e-3)
                flow_peaks[name] = None if flow is None else flow_overshoot(*flow, np.inf)

                def run(c, L=L, alpha=alpha, init=init, loss=loss, name=name, flow=flow):
                    cfg = TrainSettings(loss=L, learning_rate=c / alpha**2, steps=s.net_max_steps, alpha=alpha,
                                        n_records=200, record_every=max(1, s.net_max_steps // 200), seed=s.seed)
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        res = train(arch, cfg, views32, test_views=embed32, init_params=init.params, progress=False)
                    finite, rose, peak, limit = _stability(res, flow, c * s.net_max_steps)
                    peak = float("inf") if peak is None else peak
                    ok = finite and not rose and peak <= limit
                    if progress:
                        state = ("ok" if ok else "diverged" if not finite else
                                 f"loss rose to {float(res.loss[-1]):.3g}" if rose else
                                 f"overshoot {peak:.3g} > {limit:.3g}")
                        print(f"  network {loss} α={alpha:g} {name}: c = {c:.4g} {state}", flush=True)
                    return {"step_size": c, "stable": ok, "diverged": not finite, "loss_rose": rose,
                            "overshoot": peak, "overshoot_limit": limit, "initial_loss": float(res.loss[0]),
                            "final_loss": float(res.loss[-1]), "_res": res}

                searches[name] = _largest_stable(run, c0, s.net_doublings)
            row["flow_overshoot"] = flow_peaks
            ref_run = searches["plain"]["chosen"] or searches["preconditioned"]["chosen"]
            reference = (np.ones(d) if loss == "barlow_twins" or ref_run is None
                         else np.asarray(ref_run["_res"].eigenvalues[-1], np.float64))
            row["pass_reference"] = reference
            chosen_res, probes = {}, {}
            for name, search in searches.items():
                for r in search["tried"]:
                    r["steps_to_pass"] = _net_steps_to_pass(r["_res"], reference) if r["stable"] else float("inf")
                    r["steps_to_pass_half"] = (_net_steps_to_pass(r["_res"], np.ones(d)) if r["stable"]
                                               else float("inf"))
                stable = [r for r in search["tried"] if r["stable"]]
                best = min(stable, key=lambda r: r["steps_to_pass"]) if stable else None
                chosen = search["chosen"]
                entry = {"largest_stable_step_size": None if chosen is None else chosen["step_size"],
                         "steps_at_largest_stable": None if chosen is None else chosen["steps_to_pass"],
                         "steps_to_half_at_largest_stable": None if chosen is None else chosen["steps_to_pass_half"],
                         "best_step_size": None if best is None else best["step_size"],
                         "best_steps": None if best is None else best["steps_to_pass"],
                         "tried": [{k: v for k, v in r.items() if k != "_res"} for r in search["tried"]]}
                if chosen is not None:
                    res = chosen["_res"]
                    probe = _run_probe(res, n_held, data.labels, test_labels, probe_labels)
                    probes[name] = probe
                    entry["probe_accuracy"] = float(probe.accuracy)
                    entry["final_eigenvalues"] = np.asarray(res.eigenvalues[-1], np.float64)
                    chosen_res[name] = res
                row[name] = entry
            a, b = row["plain"], row["preconditioned"]
            row["step_speedup_at_largest_stable"] = _ratio(a.get("steps_at_largest_stable"),
                                                           b.get("steps_at_largest_stable"))
            row["step_speedup_best"] = _ratio(a.get("best_steps"), b.get("best_steps"))
            row["step_speedup_half_at_largest_stable"] = _ratio(a.get("steps_to_half_at_largest_stable"),
                                                                b.get("steps_to_half_at_largest_stable"))
            if len(probes) == 2:
                row.update(_probe_change(probes["plain"], probes["preconditioned"], s.net_test))
            if len(chosen_res) == 2:
                row["test_alignment_plain_vs_preconditioned"] = float(_alignment(
                    jnp.asarray(chosen_res["plain"].test_embeddings[:n_held], jnp.float64),
                    jnp.asarray(chosen_res["preconditioned"].test_embeddings[:n_held], jnp.float64)))
                curves.append((loss, alpha, chosen_res))
            results["runs"].append(row)
    results["_curves"] = curves
    return results


def _net_seeds(s: PreconditionSettings, progress: bool) -> dict[str, Any]:
    """The network part at seeds ``s.seed … s.seed + s.net_seeds − 1``: every row of every
    seed under ``runs`` (with its ``seed``), each seed's problem under ``per_seed``, and the
    rows' :func:`seed_summary`; the curves (figure) are the first seed's."""
    seeds = [s.seed + k for k in range(s.net_seeds)]
    per_seed, runs, curves = [], [], None
    for seed in seeds:
        if progress and len(seeds) > 1:
            print(f"network part, seed {seed}", flush=True)
        r = _net_part(dataclasses.replace(s, seed=seed), progress)
        seed_curves = r.pop("_curves")  # popped at every seed: the runs are not results.json's
        curves = seed_curves if curves is None else curves
        runs += [{"seed": seed, **row} for row in r.pop("runs")]
        per_seed.append({"seed": seed, **r})
    return {"seeds": seeds, "per_seed": per_seed, "runs": runs, "summary": seed_summary(runs), "_curves": curves}


def seed_summary(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Step speed-ups and probe changes of the network rows, gathered over seeds per (loss, α).

    For each ``(loss, alpha)`` (first-seen order): the per-seed step speed-ups until every
    mode passed 1/2 (``step_speedup_half``, from ``step_speedup_half_at_largest_stable``)
    and until every mode passed half of the plain run's final eigenvalue (``step_speedup``,
    from ``step_speedup_at_largest_stable``; the same for Barlow Twins), each with its
    smallest and geometric mean over the seeds (``…_min``, ``…_geomean``; None unless every
    seed has one: a run without a stable step, or one that never passed, has None); the
    per-seed ``probe_accuracy_change_points`` and their mean ``Δ̄ = Σ_k Δ_k / m``, with its
    standard error over held-out images ``sqrt(Σ_k SE_k²) / m`` (the seeds' images and
    trainings are independent) and the seeds' sample standard deviation (``m ≥ 2``).

    Example:
        >>> rows = [{"loss": "simclr", "alpha": 0.05, "step_speedup_at_largest_stable": a,
        ...          "step_speedup_half_at_largest_stable": 2 * a, "probe_accuracy_change_points": p,
        ...          "probe_accuracy_change_se_points": 1.0} for a, p in ((2.0, -1.0), (8.0, 0.0))]
        >>> r = seed_summary(rows)[0]
        >>> r["step_speedup_half_min"], round(r["step_speedup_half_geomean"], 9), round(r["step_speedup_geomean"], 9)
        (4.0, 8.0, 4.0)
        >>> r["probe_change_mean_points"], round(r["probe_change_mean_se_points"], 4)
        (-0.5, 0.7071)
    """
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for row in runs:
        groups.setdefault((row["loss"], row["alpha"]), []).append(row)
    out = []
    for (loss, alpha), rows in groups.items():
        change = [r.get("probe_accuracy_change_points") for r in rows]
        se = [r.get("probe_accuracy_change_se_points") for r in rows]
        entry: dict[str, Any] = {"loss": loss, "alpha": alpha, "seeds": [r.get("seed") for r in rows]}
        for name, key in (("step_speedup_half", "step_speedup_half_at_largest_stable"),
                          ("step_speedup", "step_speedup_at_largest_stable")):
            speed = [r.get(key) for r in rows]
            known = all(v is not None for v in speed)
            entry[name] = speed
            entry[name + "_min"] = float(min(speed)) if known else None
            entry[name + "_geomean"] = float(np.exp(np.mean(np.log(speed)))) if known else None
        entry.update({"probe_change_points": change, "probe_change_mean_points": None,
                      "probe_change_mean_se_points": None, "probe_change_seed_sd_points": None})
        if all(v is not None for v in change):
            m = len(change)
            entry["probe_change_mean_points"] = float(np.mean(change))
            entry["probe_change_mean_se_points"] = float(np.sqrt(np.sum(np.square(se))) / m)
            entry["probe_change_seed_sd_points"] = float(np.std(change, ddof=1)) if m > 1 else None
        out.append(entry)
    return out


# ------------------------------------------------------------------------------ network --precondition

# Halvings of the plain run's step c tried when the preconditioned network diverges at it.
_NETWORK_HALVINGS = 3


def steps_to_pass(steps, eigenvalues, reference) -> np.ndarray:
    """Gradient step at which each eigenvalue column of ``C`` first passes half of ``reference``.

    Log-step interpolation between records (:func:`stepwise_ntk.predictor.crossing_times`),
    NaN if never. ``reference``: ``(d,)``, ones for Barlow Twins (the level 1/2); for SimCLR
    and VICReg, which have no fixed point at ``C = I``, one run's final eigenvalues, the same
    for the runs compared.

    Args:
      steps: ``(R,)`` record steps (step 0 is ignored: the axis is log steps).
      eigenvalues: ``(R, d)`` eigenvalues of ``C``, descending.
    """
    steps = np.asarray(steps, np.float64)
    keep = steps > 0
    lam = np.asarray(eigenvalues, np.float64)[keep] / np.asarray(reference, np.float64)[None, :]
    return crossing_times(steps[keep], lam)


def _probe(train_embeddings, test_embeddings, labels, test_labels):
    """The linear probe of a run's held-out embeddings; ``labels``, ``test_labels``: one per image."""
    labels2 = np.concatenate([labels, labels])  # pairing order: [x_1..x_n, x'_1..x'_n]
    return linear_probe(np.asarray(train_embeddings, np.float64), labels2, np.asarray(test_embeddings, np.float64),
                        np.concatenate([test_labels, test_labels]), groups=pair_groups(labels.shape[0]))


def _net_views(s: PreconditionSettings, stream: int, n_images: int, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Both views of ``n_images`` images of ``split`` at the network part's resolution, float64,
    and their labels; ``stream`` keys the draw (1: held-out images, 2: probe images)."""
    views, labels, _ = cifar10_pairs(jax.random.fold_in(jax.random.PRNGKey(s.seed), stream), n_images, split=split,
                                     data_dir=s.data_dir, settings=s.augment(), downsample=s.net_downsample,
                                     dtype=jnp.float64, download=True, subset_seed=s.seed)
    return np.asarray(views), np.asarray(labels)


def _run_probe(res, n_held: int, labels, test_labels, probe_labels=None):
    """The linear probe of a run's held-out embeddings (the first ``n_held`` rows of
    ``res.test_embeddings``), fitted on its training views or, given ``probe_labels``, on
    the rows after them (the probe images' views, ``--net-probe-images``)."""
    held = res.test_embeddings[:n_held]
    if probe_labels is None:
        return _probe(res.train_embeddings, held, labels, test_labels)
    return _probe(res.test_embeddings[n_held:], held, probe_labels, test_labels)


def _probe_change(plain, preconditioned, n_test: int) -> dict[str, float]:
    """Probe accuracy change in points, with its standard error over the held-out images
    (paired, the two views of an image one group: :func:`stepwise_ntk.predictor.accuracy_difference`)."""
    diff = accuracy_difference(plain.correct, preconditioned.correct, groups=pair_groups(n_test))
    return {"probe_accuracy_change_points": 100 * diff.difference,
            "probe_accuracy_change_se_points": 100 * diff.standard_error}


def network_precondition_overlay(
    s: Any, out: RunDir, arch, problem, cfg, plain, pred, *, steps: int, solver_settings=None,
    progress: bool = False, **fresh,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``network --precondition``: the same network trained with the preconditioned loss.

    The network is retrained from the plain run's initialisation with
    :func:`stepwise_ntk.training.preconditioned_loss` (``P`` = ``s.preconditioner()``) at
    the plain run's step ``c``, the same number of steps, batches and views; if it diverges,
    ends above its initial loss or overshoots more than twice its kernel flow (the rule of
    the ``precondition`` search, :func:`flow_overshoot`), at ``c/2``, ``c/4``, ``c/8`` (each
    try is recorded). Its kernel model is the
    preconditioned flow on the plain run's kernel ``K = α² Θ`` from the same ``F0``
    (:func:`stepwise_ntk.solver.solve_preconditioned`). Writes ``precondition.png`` (loss and
    eigenvalues against gradient steps: plain dashed, preconditioned solid, kernel flows
    dotted) and returns the ``precondition`` entry of ``results.json`` — the step at which
    each mode passed half of the reference (Barlow Twins: 1/2; other losses: the plain
    network's final eigenvalues), the step speed-up to all ``d`` modes (network and kernel
    model), the linear-probe accuracy of both runs' held-out embeddings, their subspace
    alignment with each other and with the theory — and the arrays to save.

    Args:
      cfg: the plain run's :class:`stepwise_ntk.training.TrainSettings`; ``plain``: its
        :class:`~stepwise_ntk.training.TrainResult` after ``steps`` steps; ``pred``: its
        prediction on ``s.kernel`` (``pred.K``: ``(2n, 2n)``, ``pred.K_test``: ``(2m, 2n)``);
        ``solver_settings``: the :class:`~stepwise_ntk.solver.SolverSettings` of the plain
        run's kernel flows (None: the solver's defaults); ``fresh``: the ``augment`` /
        ``images`` of a fresh-views run.
    """
    from stepwise_ntk.experiments._run_dir import RunFailedError
    from stepwise_ntk.training import preconditioned_loss, train

    pc = s.preconditioner()
    kw = LOSS_SETTINGS[s.loss] or None
    loss = preconditioned_loss(s.loss, pc, loss_kwargs=kw)
    train_dt = np.dtype(s.train_dtype)
    views, test_views = problem.views.astype(train_dt), problem.test_views.astype(train_dt)
    c_plain = cfg.learning_rate * s.alpha**2
    n, d = s.n_pairs, problem.d
    lr_plain = cfg.learning_rate
    solver_kw = {} if solver_settings is None else {"settings": solver_settings}

    # The stability rule of `precondition`'s search: finite, a final loss not above the
    # initial one, and an overshoot within OVERSHOOT_LIMIT times the kernel flow's own over
    # the run's effective time.
    with out.phase("preconditioned kernel flow over the plain run's horizon (its overshoot)"):
        horizon_flow = _flow(pred.K, n, problem.init.F0, s.loss, kw, pc, lr_plain * steps, lr_plain * 1e-3,
                             s.n_times, **solver_kw)
    tries, t0 = [], time.perf_counter()
    for k in range(_NETWORK_HALVINGS + 1):
        c = c_plain / 2**k
        with out.phase(f"preconditioned {pc.describe()} network, c = {c:.4g}, {steps} steps"):
            res = train(arch, dataclasses.replace(cfg, loss=loss, learning_rate=c / s.alpha**2, steps=steps), views,
                        test_views=test_views, init_params=problem.init.params, progress=progress, **fresh)
        finite, rose, peak, limit = _stability(res, horizon_flow, (c / s.alpha**2) * steps)
        tries.append({"step_size": c, "diverged_at": res.diverged_at, "loss_rose": rose, "overshoot": peak,
                      "overshoot_limit": limit})
        if finite and not rose and peak <= limit:
            break
    else:
        raise RunFailedError(
            f"the preconditioned network ({pc.describe()}) diverged, ended above its initial loss or overshot its "
            f"kernel flow at every step size "
            f"from c = {c_plain:.4g} to c/{2**_NETWORK_HALVINGS}; raise --eps or lower --rate.")
    train_seconds = time.perf_counter() - t0

    lr = c / s.alpha**2
    grid = np.geomspace(lr, lr * steps, s.n_times)  # effective time t = learning rate × step
    with out.phase(f"preconditioned {s.loss} kernel flow ({grid.shape[0]} times)"):
        flow = solve_preconditioned(pred.K, n, jnp.asarray(problem.init.F0, jnp.float64), jnp.asarray(grid),
                                    precond=pc, loss=s.loss, loss_kwargs=kw, K_test=pred.K_test,
                                    F0_test=jnp.asarray(problem.init.F0_test, jnp.float64), **solver_kw)
    reference = (np.ones(d) if s.loss == "barlow_twins" else np.asarray(plain.eigenvalues[-1], np.float64))
    # Both networks and both kernel flows on one axis: gradient steps (theory: t / learning rate).
    curves = {
        "plain": (np.asarray(plain.steps, np.float64), np.asarray(plain.loss), np.asarray(plain.eigenvalues)),
        "preconditioned": (np.asarray(res.steps, np.float64), np.asarray(res.loss), np.asarray(res.eigenvalues)),
    }
    theory = {
        "plain": (np.asarray(pred.times, np.float64) / lr_plain, np.asarray(pred.loss), np.asarray(pred.eigenvalues)),
        "preconditioned": (grid / lr, np.asarray(flow.loss), np.asarray(flow.eigenvalues)),
    }
    passed = {name: steps_to_pass(t, eig, reference) for name, (t, _, eig) in curves.items()}
    passed_theory = {name: steps_to_pass(t, eig, reference) for name, (t, _, eig) in theory.items()}
    all_passed = {name: _all_passed(v) for name, v in passed.items()}
    all_passed_theory = {name: _all_passed(v) for name, v in passed_theory.items()}
    probe = {name: _probe(r.train_embeddings, r.test_embeddings, problem.labels, problem.test_labels)
             for name, r in (("plain", plain), ("preconditioned", res))}
    change = _probe_change(probe["plain"], probe["preconditioned"], len(problem.test_labels))
    test_pc = jnp.asarray(res.test_embeddings, jnp.float64)
    _plot_network_overlay(out.path / "precondition.png", curves, theory, reference,
                          title=f"{arch.name} width {arch.width}, {s.loss}, n={n}, d={d}, α={s.alpha}: "
                                f"plain vs {pc.describe()}, {s.kernel} NTK flows dotted")
    results = {
        "preconditioner": pc.describe(),
        "form": pc.form, "eps": pc.eps, "power": s.power, "part": pc.part, "floor": pc.floor,
        "step_size": c,
        "step_size_plain": c_plain,
        "step_size_tries": tries,
        "steps": steps,
        "pass_reference": reference,
        "steps_to_pass_plain": passed["plain"],
        "steps_to_pass_preconditioned": passed["preconditioned"],
        "all_passed_step_plain": all_passed["plain"],
        "all_passed_step_preconditioned": all_passed["preconditioned"],
        "step_speedup": _ratio(all_passed["plain"], all_passed["preconditioned"]),
        "theory_steps_to_pass_plain": passed_theory["plain"],
        "theory_steps_to_pass_preconditioned": passed_theory["preconditioned"],
        "theory_step_speedup": _ratio(all_passed_theory["plain"], all_passed_theory["preconditioned"]),
        "probe_accuracy_plain": probe["plain"].accuracy,
        "probe_accuracy_preconditioned": probe["preconditioned"].accuracy,
        **change,
        "test_alignment_plain_vs_preconditioned": float(_alignment(
            jnp.asarray(plain.test_embeddings, jnp.float64), test_pc)),
        "test_alignment": float(_alignment(test_pc, pred.test_embeddings)),
        "test_alignment_flow": float(_alignment(test_pc, flow.test_embeddings[-1])),
        "final_loss": float(res.loss[-1]),
        "final_eigenvalues": np.asarray(res.eigenvalues[-1], np.float64),
        "final_loss_theory": float(flow.loss[-1]),
        "train_seconds": train_seconds,
    }
    arrays = {"precondition_steps": curves["preconditioned"][0], "precondition_loss": curves["preconditioned"][1],
              "precondition_eigenvalues": curves["preconditioned"][2], "precondition_theory_times": grid,
              "precondition_theory_eigenvalues": np.asarray(flow.eigenvalues),
              "precondition_test_embeddings": np.asarray(test_pc)}
    return results, arrays


def _plot_network_overlay(path, curves, theory, reference, *, title):
    """Loss and eigenvalues of C / reference against gradient steps: plain dashed, preconditioned solid."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_l, ax_e) = plt.subplots(1, 2, figsize=(11, 4))
    ref = np.asarray(reference, np.float64)
    for name, style, color in (("plain", "--", "tab:gray"), ("preconditioned", "-", "tab:blue")):
        for (t, loss, eig), is_theory in ((curves[name], False), (theory[name], True)):
            keep = t > 0
            ls, lw = (":", 1.0) if is_theory else (style, 1.5)
            label = f"{name} ({'kernel flow' if is_theory else 'network'})"
            ax_l.plot(t[keep], loss[keep], ls, color=color, lw=lw, label=label)
            for j in range(eig.shape[1]):
                ax_e.plot(t[keep], eig[keep, j] / ref[j], ls, color=color, lw=lw, label=label if j == 0 else None)
    ax_e.axhline(0.5, color="tab:red", lw=0.5)
    for ax, ylabel in ((ax_l, "loss"), (ax_e, "eigenvalues of C" + ("" if np.all(ref == 1) else " / plain final"))):
        ax.set_xscale("log")
        ax.set_xlabel("gradient step")
        ax.set_ylabel(ylabel)
    ax_e.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)


# ------------------------------------------------------------------------------ outputs

def _save(fig, path):
    import matplotlib.pyplot as plt

    from stepwise_ntk._io import atomic_open

    try:
        with atomic_open(path) as f:
            fig.savefig(f, format="png", dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)


def _plot_kernel(path, times, flows, theory, *, title):
    """Plain dashed, preconditioned solid, closed forms dotted; ``times`` one axis or one per flow."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, style, color in (("plain", "--", "tab:gray"), ("preconditioned", "-", "tab:blue")):
        t = np.asarray(times[name] if isinstance(times, dict) else times)
        eig = np.asarray(flows[name].eigenvalues)
        for j in range(eig.shape[1]):
            ax.plot(t, eig[:, j], style, color=color, lw=1.5, label=f"{name} (solver)" if j == 0 else None)
            ax.plot(t, theory[name][:, j], ":", color="k", lw=0.8, label="aligned closed form" if (
                j == 0 and name == "plain") else None)
    ax.axhline(0.5, color="tab:red", lw=0.5)
    ax.set_xscale("log")
    ax.set_xlabel("effective time t")
    ax.set_ylabel("eigenvalues of C")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def _plot_network(path, curves):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not curves:
        return
    fig, axes = plt.subplots(1, len(curves), figsize=(4 * len(curves), 3.6), squeeze=False)
    for ax, (loss, alpha, res) in zip(axes[0], curves, strict=True):
        for name, style, color in (("plain", "--", "tab:gray"), ("preconditioned", "-", "tab:blue")):
            r = res[name]
            steps = np.asarray(r.steps, np.float64)
            eig = np.asarray(r.eigenvalues, np.float64)
            keep = steps > 0
            c = r.settings.learning_rate * alpha**2
            for j in range(eig.shape[1]):
                ax.plot(steps[keep], eig[keep, j], style, color=color, lw=1.3,
                        label=f"{name}, c={c:.3g}" if j == 0 else None)
        ax.set_xscale("log")
        ax.set_xlabel("gradient step")
        ax.set_title(f"{loss}, α={alpha:g}", fontsize=9)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("eigenvalues of C")
    fig.tight_layout()
    _save(fig, path)


def _fmt(x, spec=".3g"):
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "–"
    return format(x, spec)


def _table(kernel: dict[str, Any] | None, net: dict[str, Any] | None) -> str:
    lines = _kernel_table(kernel) if kernel else []
    if net and net["runs"]:
        lines += _net_table(net)
    return "\n".join(lines) + "\n"


def _kernel_table(kernel: dict[str, Any]) -> list[str]:
    lines = ["## Kernel model (linear CIFAR-10 kernel, Barlow Twins)", "",
             "| init scale | λ0 max | ε | time speed-up (solver) | closed form | GD steps plain | GD steps precond. "
             "| GD step speed-up | c plain | c precond. | flow alignment | GD alignment plain / precond. "
             "| step-time error |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in kernel["sweep"]:
        lines.append(
            f"| {r['init_scale']:g} | {_fmt(r['lambda0_max'], '.2g')} | {r['eps']:g} "
            f"| {_fmt(r['time_speedup'], '.2f')} "
            f"| {_fmt(r['closed_form_time_speedup'], '.2f')} | {_fmt(r['plain_gd_steps'], 'd')} "
            f"| {_fmt(r['preconditioned_gd_steps'], 'd')} | {_fmt(r['gd_step_speedup'], '.2f')} "
            f"| {_fmt(r['plain_gd_step_size'])} | {_fmt(r['preconditioned_gd_step_size'])} "
            f"| {_fmt(r['final_alignment'], '.4f')} "
            f"| {_fmt(r['plain_gd_alignment'], '.3f')} / {_fmt(r['preconditioned_gd_alignment'], '.3f')} "
            f"| {_fmt(r['preconditioned_median_step_time_error'], '.3f')} |")
    return lines


def _change(row: dict[str, Any]) -> str:
    if row.get("probe_accuracy_change_points") is None:
        return "–"
    return f"{row['probe_accuracy_change_points']:+.1f} ± {row['probe_accuracy_change_se_points']:.1f}"


def _net_table(net: dict[str, Any]) -> list[str]:
    images = net["per_seed"][0]["probe_images"]
    fitted = (f"both views of {images} labelled training images" if images
              else "the network's own training views")
    lines = ["", "## Networks", "", f"Probe: a ridge classifier fitted on {fitted}, scored on the held-out images.", "",
              "| seed | loss | α | steps plain | steps precond. | speed-up (largest stable c) | speed-up (best c) "
              "| steps to 1/2 plain | precond. | speed-up to 1/2 "
              "| c plain | c precond. | probe plain | probe precond. | probe change (points ± SE) | alignment |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in net["runs"]:
        a, b = r["plain"], r["preconditioned"]
        lines.append(
            f"| {r['seed']} | {r['loss']} | {r['alpha']:g} | {_fmt(a.get('steps_at_largest_stable'), '.0f')} "
            f"| {_fmt(b.get('steps_at_largest_stable'), '.0f')} "
            f"| {_fmt(r['step_speedup_at_largest_stable'], '.2f')} "
            f"| {_fmt(r['step_speedup_best'], '.2f')} "
            f"| {_fmt(a.get('steps_to_half_at_largest_stable'), '.0f')} "
            f"| {_fmt(b.get('steps_to_half_at_largest_stable'), '.0f')} "
            f"| {_fmt(r['step_speedup_half_at_largest_stable'], '.2f')} "
            f"| {_fmt(a.get('largest_stable_step_size'))} "
            f"| {_fmt(b.get('largest_stable_step_size'))} | {_fmt(a.get('probe_accuracy'), '.3f')} "
            f"| {_fmt(b.get('probe_accuracy'), '.3f')} | {_change(r)} "
            f"| {_fmt(r.get('test_alignment_plain_vs_preconditioned'), '.3f')} |")
    if len(net["seeds"]) > 1:
        lines += ["", f"## Networks over seeds {', '.join(map(str, net['seeds']))}", "",
                  "| loss | α | speed-up to 1/2 per seed | smallest | geometric mean "
                  "| to half the plain final: smallest | geometric mean "
                  "| probe change per seed (points) | mean ± SE | seed SD |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in net["summary"]:
            per = ", ".join(_fmt(v, ".2f") for v in r["step_speedup_half"])
            probe = ", ".join(_fmt(v, "+.1f") for v in r["probe_change_points"])
            mean = ("–" if r["probe_change_mean_points"] is None else
                    f"{r['probe_change_mean_points']:+.1f} ± {r['probe_change_mean_se_points']:.1f}")
            lines.append(f"| {r['loss']} | {r['alpha']:g} | {per} | {_fmt(r['step_speedup_half_min'], '.2f')} "
                         f"| {_fmt(r['step_speedup_half_geomean'], '.2f')} | {_fmt(r['step_speedup_min'], '.2f')} "
                         f"| {_fmt(r['step_speedup_geomean'], '.2f')} | {probe} | {mean} "
                         f"| {_fmt(r['probe_change_seed_sd_points'], '.1f')} |")
    return lines


def run_precondition(settings: PreconditionSettings, out: RunDir, *, progress: bool = True) -> str:
    """Run both parts, write ``results.json``, ``sweep.md``, ``arrays.npz`` and the figures."""
    from stepwise_ntk._io import write_text

    s = settings
    started = time.perf_counter()
    kernel = _kernel_part(s, out, progress) if s.kernel_part else None
    net = _net_seeds(s, progress) if s.net_losses else None
    curves = net.pop("_curves") if net else []
    if curves:
        _plot_network(out.path / "network.png", curves)
    write_text(out.path / "sweep.md", _table(kernel, net))
    out.write_results({"kernel_model": kernel, "networks": net, "wall_time_s": time.perf_counter() - started})
    summary = ""
    if kernel:
        m = kernel["main"]
        summary = (f"kernel model: all {s.d} modes past 1/2 {m['time_speedup']:.2f}x sooner in effective time "
                   f"(closed form {m['closed_form_time_speedup']:.2f}x), GD steps {m['plain']['gd_steps_to_pass']} -> "
                   f"{m['preconditioned']['gd_steps_to_pass']}; final alignment {m['final_alignment']:.4f}; "
                   f"closed-form step-time error (median) {m['preconditioned']['step_time_median_relative_error']:.3f}")
    if net:
        for r in net["runs"]:
            summary += (f"\n{r['loss']} α={r['alpha']:g} seed {r['seed']}: steps speed-up "
                        f"{_fmt(r['step_speedup_at_largest_stable'], '.2f')}"
                        f" (best c: {_fmt(r['step_speedup_best'], '.2f')}; to 1/2: "
                        f"{_fmt(r['step_speedup_half_at_largest_stable'], '.2f')}), probe change "
                        f"{_fmt(r.get('probe_accuracy_change_points'), '+.2f')} points")
        if len(net["seeds"]) > 1:
            for r in net["summary"]:
                summary += (f"\n{r['loss']} α={r['alpha']:g} over {len(r['seeds'])} seeds: steps speed-up to 1/2 "
                            f"smallest {_fmt(r['step_speedup_half_min'], '.2f')}, geometric mean "
                            f"{_fmt(r['step_speedup_half_geomean'], '.2f')}; probe change "
                            f"{_fmt(r['probe_change_mean_points'], '+.2f')} ± "
                            f"{_fmt(r['probe_change_mean_se_points'], '.2f')} points")
    return summary
