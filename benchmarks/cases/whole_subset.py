"""The whole CIFAR-10 subset as one kernel problem: both solver routes with their defaults.

Problems: every training image of the subset (4,660 in ``../shared/cifar10``), two
augmented views each (``2n = 9,320``), Barlow Twins, ``d = 32``, float64, 200 log-spaced
times up to 1.5 × the theory's last step time, on two kernels (``--set kernels=linear,mlp``):
the linear kernel ``K = X Xᵀ`` on 3,072 pixels
(:func:`benchmarks.harness.problems.linear_kernel_problem`, case ``2n=… d=…``) and the ReLU
MLP NTK with a small white ``F0`` (:func:`benchmarks.harness.problems.mlp_ntk_problem`, case
``2n=… d=… mlp``: full rank, and thousands of modes move a little). Each case:

* floor ``eigh(K)``: one dense eigendecomposition, the cost the eigen route must stay
  below (``jax.jit(jnp.linalg.eigh)``, compiled ahead of time);
* subject ``solve (defaults)``: ``solve(K, n, F0, times)`` with no settings; ``auto`` takes
  the eigen route and, for the linear kernel (rank ≤ 3,072), the low-rank eigensystem; for
  the MLP NTK the partial one, where :func:`stepwise_ntk.theory.partial_is_cheaper` says
  so, with the modes not computed carried by quadrature (``extra``: modes computed,
  integrated and pseudo-modes, the largest residual ``‖H p − γ p‖`` of a returned mode (0
  for an exact eigensystem), the error against the reference and the solver's own
  estimate);
* subject ``solve[function] (defaults)``: ``method="function"`` with no other setting, on
  20 log-spaced times up to the theory's first step time (the route costs one ``K·F`` per
  right-hand side and its explicit steps are limited by the fastest mode, about
  ``8 γ_1 T / 3.3 ≈ 2600`` steps over the whole horizon, half an hour or more here), with
  its error on those times;
* floor ``K@F``: one ``(2n × 2n)·(2n × d)`` product, what the function route pays per
  right-hand side;
* the reference: the eigen route on the full decomposition, no truncation, rtol 1e-10
  (linear kernel; for the MLP NTK, where every mode at rtol 1e-10 would take many minutes,
  the full decomposition at ``accuracy=1e-6``: a second route, the quadrature of the
  complete eigensystem), at the union of both routes' times (not timed).

Peak memory is the process's (``MemoryProbe``), which must stay within the machine (24 GB
here: ``K`` alone is 0.7 GB; the eigendecomposition holds about four such matrices).
"""

from __future__ import annotations

import numpy as np

from benchmarks.harness.problems import linear_kernel_problem, mlp_ntk_problem
from benchmarks.harness.records import Measurement
from benchmarks.harness.registration import register
from benchmarks.harness.timing import Context

__all__ = ["run"]

NAME = "whole_subset"
EIGH, KF, DEFAULTS, FUNCTION = "eigh(K)", "K@F", "solve (defaults)", "solve[function] (defaults)"
N_TIMES = 200
N_FUNCTION_TIMES = 20
PRESETS = {
    # 4660 pairs: every training image of the subset; the smaller sizes are its first images.
    "n_pairs": {"tiny": 100, "small": 1000, "full": 4660},
    "d": {"tiny": 4, "small": 16, "full": 32},
    "kernels": {"tiny": "linear", "small": "linear,mlp", "full": "linear,mlp"},
}
KERNELS = ("linear", "mlp")


@register(
    NAME,
    "The whole CIFAR-10 subset (2n = 9,320 views, float64) as one problem, on its linear kernel "
    "and its MLP NTK: solve's defaults against one eigh(K), and the function route's defaults.",
)
def run(ctx: Context) -> list[Measurement]:
    dtype = ctx.float_dtype()
    n = int(ctx.param("n_pairs", PRESETS["n_pairs"]))
    d = int(ctx.param("d", PRESETS["d"]))
    kernels = [k for k in str(ctx.param("kernels", PRESETS["kernels"])).split(",") if k]
    unknown = sorted(set(kernels) - set(KERNELS))
    if unknown:
        raise ValueError(f"kernels: unknown {unknown}; choose from {', '.join(KERNELS)}.")
    out = []
    for kind in kernels:
        out += _case(ctx, kind, n, d, dtype)
    return out


def _problem(ctx: Context, kind: str, n: int, d: int):
    """``(K, F0, times, step_times, source)`` in float64 numpy: 200 log-spaced times up to 1.5 ×
    the theory's last step time (step times from the top ``d`` modes: a partial eigensystem
    at this size)."""
    import jax.numpy as jnp

    from stepwise_ntk.theory import contrastive_eigensystem, step_times

    if kind == "linear":
        prob = linear_kernel_problem(n, d, data_dir=ctx.data_dir, n_times=N_TIMES)
        return prob.K, prob.F0, prob.times, prob.step_times, prob.source
    K, F0, source = mlp_ntk_problem(n, d, data_dir=ctx.data_dir)
    es = contrastive_eigensystem(jnp.asarray(K), n, top=max(64, d))
    ts = np.asarray(step_times(es, jnp.asarray(F0)), np.float64)
    times = np.geomspace(1e-2 / (8.0 * float(es.gammas[0])), 1.5 * float(ts.max()), N_TIMES)
    return K, F0, times, ts, source


def _case(ctx: Context, kind: str, n: int, d: int, dtype) -> list[Measurement]:
    import jax
    import jax.numpy as jnp

    from stepwise_ntk.solver import SolverSettings, solve

    ctx.log(f"building the {kind} kernel of {2 * n} views")
    K, F0, times, steps, source = _problem(ctx, kind, n, d)
    K, F0, times = (jnp.asarray(a, dtype) for a in (K, F0, times))
    # The function route's window: from the first output time to the theory's first step.
    t_fn = jnp.geomspace(times[0], float(np.min(steps)), N_FUNCTION_TIMES).astype(dtype)
    case = f"2n={2 * n} d={d}" + ("" if kind == "linear" else f" {kind}")
    sizes = {"n_views": 2 * n, "d": d, "n_times": int(times.size)}
    extra_src = {"source": source, "kernel": kind}

    all_t = jnp.asarray(np.union1d(np.asarray(times), np.asarray(t_fn)), dtype)
    if kind == "linear":
        ctx.log("reference (full decomposition, no truncation, rtol 1e-10)")
        reference = SolverSettings(rtol=1e-10, mode_tol=0.0, eigensystem="full")
    else:
        # Every mode integrated at rtol 1e-10 would take many minutes here; the complete
        # eigensystem with the quadrature's bound at accuracy 1e-6 is a second route.
        ctx.log("reference (full decomposition, accuracy 1e-6)")
        reference = SolverSettings(accuracy=1e-6, eigensystem="full")
    ref = solve(K, n, F0, all_t, method="eigen", settings=reference)
    ref_lam = np.asarray(ref.eigenvalues)
    pos = {float(t): i for i, t in enumerate(np.asarray(all_t))}

    def err(lam, at):
        idx = [pos[float(t)] for t in np.asarray(at)]
        return float(np.max(np.abs(np.asarray(lam) - ref_lam[idx])))

    out = []
    te = ctx.time_jitted(jax.jit(jnp.linalg.eigh), K, repeats=1 if ctx.size == "full" else None)
    out.append(ctx.measurement(te, benchmark=NAME, case=case, name=EIGH, role="floor", sizes=sizes, dtype=dtype))

    ts = ctx.time(lambda: solve(K, n, F0, times), repeats=1 if ctx.size == "full" else None)
    st = ts.output.stats
    out.append(ctx.measurement(ts, benchmark=NAME, case=case, name=DEFAULTS, role="subject", sizes=sizes,
                               dtype=dtype, baselines=[EIGH], extra={
                                   **extra_src, "method": ts.output.method, "integrator": ts.output.integrator,
                                   "n_eigen_modes": int(st.n_eigen_modes), "n_modes": int(st.n_modes),
                                   "n_quadrature_modes": int(st.n_quadrature_modes),
                                   "eigen_residual": float(st.eigen_residual), "n_steps": int(st.n_steps),
                                   "max_abs_err": err(ts.output.eigenvalues, times),
                                   "error_estimate": float(st.error_estimate),
                                   "truncation_bound": float(st.truncation_bound),
                                   "modes_past_half": int(np.sum(ref_lam[-1] > 0.5))}))

    tk = ctx.time_jitted(jax.jit(lambda K, F: K @ F), K, F0)
    out.append(ctx.measurement(tk, benchmark=NAME, case=case, name=KF, role="floor", sizes=sizes, dtype=dtype))
    tf = ctx.time(lambda: solve(K, n, F0, t_fn, method="function"), repeats=1 if ctx.size == "full" else None)
    sf = tf.output.stats
    out.append(ctx.measurement(tf, benchmark=NAME, case=case, name=FUNCTION, role="subject", sizes=sizes,
                               dtype=dtype, baselines=[KF], extra={
                                   **extra_src, "t_end": float(t_fn[-1]), "n_steps": int(sf.n_steps),
                                   "n_rhs": int(sf.n_rhs), "per_rhs_s": tf.median_s / max(int(sf.n_rhs), 1),
                                   "max_abs_err": err(tf.output.eigenvalues, t_fn)}))
    return out
