"""SimCLR and VICReg dynamics: the solver's function-space routes with their defaults against
neural-tangents' ``predict.gradient_descent`` on the same kernel and loss.

Problem (:func:`benchmarks.harness.problems.linear_kernel_problem`): the linear model on
CIFAR-10 pairs (synthetic pairs without the dataset), ``F(0) = X W0ᵀ`` small (``init_scale``),
log-spaced times up to 1.5 × the Barlow Twins theory's last step time; the losses as the CLI
integrates them (``LOSS_SETTINGS``: SimCLR's dot-product form at τ = 0.5, VICReg with the
hinge smoothed by 0.01).

Measured per loss (case ``<loss> 2n=… d=…``): the baseline ``nt.predict.gradient_descent``
(jitted, compiled ahead of time, same observables); the subjects ``solve[default]`` (no
settings: the function route) and ``solve[galerkin]`` (``method="galerkin"``, default
settings); ``--set routes=default`` runs only the first. Errors are
``max_t,j |λ_j(t) − λ_j^ref(t)|`` against the function route at rtol 1e-9 in float64;
*equal accuracy* means within ``ACCURACY = 1e-3``.
"""

from __future__ import annotations

import numpy as np

from benchmarks.harness.problems import describe, linear_kernel_problem
from benchmarks.harness.records import Measurement
from benchmarks.harness.registration import register
from benchmarks.harness.timing import Context

__all__ = ["run"]

NAME = "losses_speed"
ACCURACY = 1e-3
LOSS_SETTINGS = {"simclr": {"normalize": False, "temperature": 0.5}, "vicreg": {"smooth": 0.01}}
PRESETS = {
    "n_views": {"tiny": 32, "small": 500, "full": 2000},
    "d": {"tiny": 4, "small": 16, "full": 16},
    "losses": {"tiny": "simclr,vicreg", "small": "simclr,vicreg", "full": "simclr,vicreg"},
    "init_scale": {"tiny": 1e-3, "small": 1e-3, "full": 1e-3},
    "n_times": {"tiny": 10, "small": 50, "full": 100},
    "source": {"tiny": "auto", "small": "auto", "full": "auto"},
    "routes": {"tiny": "default,galerkin", "small": "default,galerkin", "full": "default,galerkin"},
}
ROUTES = {"default": ("solve[default]", "auto"), "galerkin": ("solve[galerkin]", "galerkin")}


def _err(eig, ref) -> float:
    return float(np.max(np.abs(np.asarray(eig, np.float64) - np.asarray(ref, np.float64))))


def _loss_case(ctx: Context, dtype, loss: str, prob, routes: list[str]) -> list[Measurement]:
    import jax.numpy as jnp

    from benchmarks.cases.dynamics import NT_NAME, _nt_predict_fn
    from stepwise_ntk.losses import resolve_loss
    from stepwise_ntk.solver import SolverSettings, solve

    kw = LOSS_SETTINGS[loss]
    n, d = prob.n_pairs, prob.d
    case = f"{loss} 2n={prob.n_views} d={d}"
    sizes = {"n_views": prob.n_views, "d": d, "n_times": int(prob.times.size)}
    ref = solve(jnp.asarray(prob.K), n, jnp.asarray(prob.F0), jnp.asarray(prob.times), loss=loss,
                loss_kwargs=kw, method="function", settings=SolverSettings(rtol=1e-9))
    ref_eig = np.asarray(ref.eigenvalues)
    K, F0, times = (jnp.asarray(a, dtype) for a in (prob.K, prob.F0, prob.times))
    out = []
    tb = ctx.time_jitted(_nt_predict_fn(resolve_loss(loss, loss_kwargs=kw)), K, F0, times, repeats=1)
    err_base = _err(tb.output[1], ref_eig)
    out.append(ctx.measurement(tb, benchmark=NAME, case=case, name=NT_NAME, role="baseline", sizes=sizes,
                               dtype=dtype, extra={"max_abs_err": err_base, "source": prob.source}))
    for name, method in (ROUTES[r] for r in routes):
        ts = ctx.time(lambda method=method: solve(K, n, F0, times, loss=loss, loss_kwargs=kw, method=method),
                      repeats=1)
        traj = ts.output
        err = _err(traj.eigenvalues, ref_eig)
        st = traj.stats
        out.append(ctx.measurement(
            ts, benchmark=NAME, case=case, name=name, role="subject", sizes=sizes, dtype=dtype,
            baselines=[NT_NAME],
            extra={"max_abs_err": err, "equal_accuracy": bool(err <= ACCURACY and err_base <= ACCURACY),
                   "x_baseline": tb.median_s / ts.median_s, "method": traj.method,
                   "integrator": traj.integrator, "n_steps": int(st.n_steps), "n_modes": int(st.n_modes),
                   "truncation_bound": float(st.truncation_bound), "source": prob.source},
        ))
    return out


@register(
    NAME,
    "SimCLR (dot-product form) and VICReg on the CIFAR-10 linear kernel: solve() with its defaults "
    "and the Galerkin route against neural-tangents' predict.gradient_descent, errors against a "
    "float64 reference.",
)
def run(ctx: Context) -> list[Measurement]:
    # Checked before the kernel is built: a typo should not cost the problem set-up.
    routes = [r for r in str(ctx.param("routes", PRESETS["routes"])).split(",") if r]
    unknown = sorted(set(routes) - set(ROUTES))
    if unknown:
        raise ValueError(f"routes must be among {sorted(ROUTES)} (comma-separated), got {unknown}.")
    dtype = ctx.float_dtype()
    n_views = int(ctx.param("n_views", PRESETS["n_views"]))
    d = int(ctx.param("d", PRESETS["d"]))
    prob = linear_kernel_problem(
        n_views // 2, d, source=str(ctx.param("source", PRESETS["source"])), data_dir=ctx.data_dir,
        init_scale=float(ctx.param("init_scale", PRESETS["init_scale"])),
        n_times=int(ctx.param("n_times", PRESETS["n_times"])),
    )
    ctx.log(describe(prob))
    out = []
    for loss in [s for s in str(ctx.param("losses", PRESETS["losses"])).split(",") if s]:
        out += _loss_case(ctx, dtype, loss, prob, routes)
    return out
