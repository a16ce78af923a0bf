"""The whole CIFAR-10 subset as one kernel problem: both solver routes with their defaults.

Problem (:func:`benchmarks.harness.problems.linear_kernel_problem`): every training image of
the subset (4,660 in ``../shared/cifar10``), two augmented views each (``2n = 9,320``),
the linear kernel ``K = X Xᵀ`` on 3,072 pixels, Barlow Twins, ``d = 32``, float64, 200
log-spaced times up to 1.5 × the theory's last step time. One case, ``2n=… d=…``:

* floor ``eigh(K)``: one dense eigendecomposition, the cost the eigen route must stay
  below (``jax.jit(jnp.linalg.eigh)``, compiled ahead of time);
* subject ``solve (defaults)``: ``solve(K, n, F0, times)`` with no settings; ``auto`` takes
  the eigen route and, since the kernel has rank ≤ 3,072, the low-rank eigensystem (else,
  where :func:`stepwise_ntk.theory.partial_is_cheaper` says so, the partial one; ``extra``:
  modes computed and integrated, the largest residual ``‖H p − γ p‖`` of a returned mode
  (0 for an exact eigensystem), the error against the reference and the solver's own
  estimate);
* subject ``solve[function] (defaults)``: ``method="function"`` with no other setting, on
  20 log-spaced times up to the theory's first step time (the route costs one ``K·F`` per
  right-hand side and its explicit steps are limited by the fastest mode, about
  ``8 γ_1 T / 3.3 ≈ 2600`` steps over the whole horizon, half an hour or more here), with
  its error on those times;
* floor ``K@F``: one ``(2n × 2n)·(2n × d)`` product, what the function route pays per
  right-hand side;
* the reference: the eigen route on the full decomposition, no truncation, rtol 1e-10,
  at the union of both routes' times (not timed).

Peak memory is the process's (``MemoryProbe``), which must stay within the machine (24 GB
here: ``K`` alone is 0.7 GB; the eigendecomposition holds about four such matrices).
"""

from __future__ import annotations

import numpy as np

from benchmarks.harness.problems import linear_kernel_problem
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
}


@register(
    NAME,
    "The whole CIFAR-10 subset (2n = 9,320 views, float64) as one problem: solve's defaults "
    "(eigen route, low-rank eigensystem) against one eigh(K), and the function route's defaults.",
)
def run(ctx: Context) -> list[Measurement]:
    import jax
    import jax.numpy as jnp

    from stepwise_ntk.solver import SolverSettings, solve

    dtype = ctx.float_dtype()
    n = int(ctx.param("n_pairs", PRESETS["n_pairs"]))
    d = int(ctx.param("d", PRESETS["d"]))
    ctx.log(f"building the linear kernel of {2 * n} views")
    prob = linear_kernel_problem(n, d, data_dir=ctx.data_dir, n_times=N_TIMES)
    K, F0, times = (jnp.asarray(a, dtype) for a in (prob.K, prob.F0, prob.times))
    # The function route's window: from the first output time to the theory's first step.
    t_fn = jnp.geomspace(times[0], float(np.min(prob.step_times)), N_FUNCTION_TIMES).astype(dtype)
    case = f"2n={2 * n} d={d}"
    sizes = {"n_views": 2 * n, "d": d, "n_times": int(times.size)}
    extra_src = {"source": prob.source}

    ctx.log("reference (full decomposition, no truncation, rtol 1e-10)")
    all_t = jnp.asarray(np.union1d(np.asarray(times), np.asarray(t_fn)), dtype)
    ref = solve(K, n, F0, all_t, method="eigen",
                settings=SolverSettings(rtol=1e-10, mode_tol=0.0, eigensystem="full"))
    ref_lam = np.asarray(ref.eigenvalues)
    pos = {float(t): i for i, t in enumerate(np.asarray(all_t))}

    def err(lam, ts):
        idx = [pos[float(t)] for t in np.asarray(ts)]
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
