"""Benchmark of the kernel Barlow Twins solver against neural-tangents and one eigh(K).

Problem (the paper's linear-model CIFAR-10 setting, at the issue's size): ``n`` augmented
pairs (pad-4 crop, flip, brightness) from the CIFAR-10 subset, flattened, normalised and
centred views, ``K = X Xᵀ / m``; small random initialisation ``F0 = X W0ᵀ`` scaled so that
the median initial embedding eigenvalue of the top ``d`` modes is ``1e-6``; 200
log-spaced times up to ``T`` with every ``λ_j(T) ≥ 0.99`` (checked on the reference).

Measured (float64, warm: compilation excluded and reported separately):

* ``solve[eigen]``: :func:`stepwise_ntk.solver.solve` with ``method="eigen"``;
* ``nt.predict.gradient_descent``: neural-tangents' function-space ODE
  (``jax.experimental.ode.odeint``, its fixed ``rtol = atol = 1.4e-8``) on the same ``K``,
  loss and times (imported only through ``stepwise_ntk._nt_compat``);
* ``eigh(K)``: one ``jax.jit(jnp.linalg.eigh)(K)``, timed interleaved with ``solve`` so
  both see the same machine load;
* accuracy: ``max |Δλ|`` over all times and eigenvalues against a fine float64 reference
  (the function route, DOPRI5 at ``rtol = 1e-10``: independent of the eigendecomposition);
* scaling of both routes with ``2n`` (at ``d = 32``) and with ``d`` (at ``2n = 1000``),
  with fitted exponents.

Run (writes JSON; ``--out`` to choose where)::

    uv run python benchmarks/solver_bench.py                 # full: 2n = 2000, d = 32 (+ scaling)
    uv run python benchmarks/solver_bench.py --quick         # 2n = 500, d = 8, minutes → seconds
    uv run python benchmarks/solver_bench.py --no-nt --no-scaling

It is also the ``solver`` benchmark of ``python -m benchmarks`` (``harness_measurements``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402

from stepwise_ntk._eigensystem import contrastive_eigensystem  # noqa: E402
from stepwise_ntk._losses import barlow_twins_loss, cross_correlation  # noqa: E402
from stepwise_ntk._solver import SolverSettings, solve  # noqa: E402
from stepwise_ntk._theory import initial_eigenvalues, step_times  # noqa: E402

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "solver_bench.json"
SHARED_CIFAR = ROOT.parent / "shared" / "cifar10"  # the offline subset beside the checkout
LAMBDA0 = 1e-6


# ------------------------------------------------------------------------------ problem

def _views(n_pairs: int, seed: int, data_dir: str | None) -> tuple[jax.Array, str]:
    """Flattened, normalised, centred CIFAR-10 views (or a synthetic stand-in without data)."""
    if data_dir is None and not os.environ.get("STEPWISE_NTK_DATA") and (SHARED_CIFAR / "cifar-10-batches-py").is_dir():
        data_dir = str(SHARED_CIFAR)
    try:
        from stepwise_ntk._augment import AugmentConfig, cifar10_pairs

        config = AugmentConfig(crop="pad", flip_prob=0.5, jitter_prob=1.0, brightness=0.4,
                               contrast=None, saturation=None, gray_prob=None)
        views, _, _ = cifar10_pairs(jax.random.key(seed), n_pairs, config=config, data_dir=data_dir,
                                    dtype=jnp.float64)
        X, source = views.reshape(2 * n_pairs, -1), "cifar10"
    except Exception as e:  # no data here: same structure, synthetic images
        print(f"  CIFAR-10 unavailable ({type(e).__name__}); synthetic views", flush=True)
        rng = np.random.default_rng(seed)
        m = 3072
        base = rng.normal(size=(n_pairs, m)) * np.arange(1, m + 1) ** -0.7
        X = jnp.asarray(np.concatenate([base, base + 0.3 * rng.normal(size=base.shape) * np.arange(1, m + 1) ** -0.7]))
        source = "synthetic"
    return X - jnp.mean(X, axis=0), source


def make_problem(n_pairs: int, d: int, *, seed: int = 0, data_dir: str | None = None,
                 n_times: int = 200) -> dict[str, Any]:
    X, source = _views(n_pairs, seed, data_dir)
    K = X @ X.T / X.shape[1]
    es = contrastive_eigensystem(K, n_pairs)
    W0 = jax.random.normal(jax.random.key(seed + 1), (d, X.shape[1]), dtype=jnp.float64)
    F0 = X @ W0.T
    lam0 = initial_eigenvalues(es, F0, d)
    F0 = F0 * np.sqrt(LAMBDA0 / float(jnp.median(lam0)))
    g = np.asarray(es.gammas[:d])
    ts = np.asarray(step_times(es, F0, d))
    # Aligned solution reaches 0.99 at t_j + ln(99)/(8γ_j); 1.5x margin for mode interactions.
    T = 1.5 * float(np.max(ts + np.log(99.0) / (8.0 * g)))
    times = jnp.geomspace(T * 1e-4, T, n_times)
    K, F0, times = jax.block_until_ready((K, F0, times))
    return dict(n_pairs=n_pairs, d=d, K=K, F0=F0, times=times, source=source,
                gamma_1=float(es.gammas[0]), gamma_d=float(g[-1]), gamma_ratio=float(es.gammas[0] / g[-1]))


# ------------------------------------------------------------------------------ timing

def _load() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _timed(fn):
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    return time.perf_counter() - t0, out


def time_interleaved(fns: dict[str, Any], repeats: int) -> dict[str, dict[str, Any]]:
    """Warm each call once (compile time = first − min), then time them round-robin."""
    first, out = {}, {}
    for k, f in fns.items():
        first[k], out[k] = _timed(f)
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t, out[k] = _timed(f)
            times[k].append(t)
    return {k: dict(min_s=min(v), median_s=float(np.median(v)), all_s=v,
                    compile_s=max(first[k] - min(v), 0.0), output=out[k]) for k, v in times.items()}


def eigenvalues_of(F_t: jax.Array) -> jax.Array:
    """Eigenvalues of C = Fᵀ Z F / 2n, descending, for a stack of embeddings (T, 2n, d)."""
    return jax.vmap(lambda F: jnp.linalg.eigvalsh(cross_correlation(F))[::-1])(F_t)


# ------------------------------------------------------------------------------ neural-tangents

def nt_predict(K: jax.Array, F0: jax.Array, times: jax.Array):
    """neural-tangents' gradient_descent on the Barlow Twins loss; returns F(t) for all times."""
    from stepwise_ntk._nt_compat import nt

    predict_fn = nt.predict.gradient_descent(lambda fx, y: barlow_twins_loss(fx), K, jnp.zeros_like(F0),
                                             learning_rate=1.0, trace_axes=(-1,))
    return predict_fn(times, F0)


# ------------------------------------------------------------------------------ runs

def headline(prob: dict[str, Any], *, rtol: float, mode_tol: float, repeats: int, run_nt: bool,
             log=print) -> dict[str, Any]:
    K, n, F0, times = prob["K"], prob["n_pairs"], prob["F0"], prob["times"]
    settings = SolverSettings(rtol=rtol, mode_tol=mode_tol)
    eigh = jax.jit(jnp.linalg.eigh)

    log("reference: function route, DOPRI5 rtol 1e-10 (float64)")
    t_ref, ref = _timed(lambda: solve(K, n, F0, times, method="function", settings=SolverSettings(rtol=1e-10)))
    lam_ref = ref.eigenvalues
    log(f"  {t_ref:.1f} s, {int(ref.stats.n_steps)} steps, λ_d(T) = {float(lam_ref[-1, -1]):.4f}")

    log("solve[eigen] interleaved with eigh(K)")
    tm = time_interleaved({"solve_eigen": lambda: solve(K, n, F0, times, method="eigen", settings=settings),
                           "eigh": lambda: eigh(K)}, repeats)
    tr = tm["solve_eigen"].pop("output")
    tm["eigh"].pop("output")
    err_eigen = float(jnp.max(jnp.abs(tr.eigenvalues - lam_ref)))
    out: dict[str, Any] = {
        "reference": dict(time_s=t_ref, n_steps=int(ref.stats.n_steps), lambda_d_final=float(lam_ref[-1, -1]),
                          all_modes_past_0_99=bool(jnp.min(lam_ref[-1]) >= 0.99)),
        "eigh": tm["eigh"],
        "solve_eigen": dict(**tm["solve_eigen"], max_abs_dlambda=err_eigen, integrator=tr.integrator,
                            n_modes=int(tr.stats.n_modes), n_steps=int(tr.stats.n_steps),
                            n_rejected=int(tr.stats.n_rejected), truncation_bound=float(tr.stats.truncation_bound),
                            rtol=rtol, mode_tol=mode_tol),
    }
    out["ratio_solve_to_eigh"] = out["solve_eigen"]["min_s"] / out["eigh"]["min_s"]
    log(f"  solve {out['solve_eigen']['min_s']:.3f} s ({tr.integrator}, {int(tr.stats.n_modes)} modes, "
        f"{int(tr.stats.n_steps)} steps), eigh {out['eigh']['min_s']:.3f} s, ratio {out['ratio_solve_to_eigh']:.2f}, "
        f"max|Δλ| {err_eigen:.1e}")

    if run_nt:
        log("nt.predict.gradient_descent (warm-up on the same shapes, then one timed call)")
        t_warm1, _ = _timed(lambda: nt_predict(K, F0, times * 1e-6))
        t_warm2, _ = _timed(lambda: nt_predict(K, F0, times * 1e-6))
        t_nt, F_nt = _timed(lambda: nt_predict(K, F0, times))
        err_nt = float(jnp.max(jnp.abs(eigenvalues_of(F_nt) - lam_ref)))
        out["nt_gradient_descent"] = dict(min_s=t_nt, median_s=t_nt, all_s=[t_nt],
                                          compile_s=max(t_warm1 - t_warm2, 0.0), max_abs_dlambda=err_nt)
        out["speedup_vs_nt"] = t_nt / out["solve_eigen"]["min_s"]
        log(f"  nt {t_nt:.1f} s, max|Δλ| {err_nt:.1e}, speed-up {out['speedup_vs_nt']:.0f}x")
    return out


def _fit(xs, ys) -> float:
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def scaling(ns: list[int], ds: list[int], d_fixed: int, n_fixed: int, *, rtol: float, mode_tol: float,
            repeats: int, data_dir: str | None, log=print) -> dict[str, Any]:
    rows = []
    cases = [(n, d_fixed) for n in ns] + [(n_fixed, d) for d in ds if (n_fixed, d) not in [(n, d_fixed) for n in ns]]
    for n, d in cases:
        prob = make_problem(n, d, data_dir=data_dir)
        K, F0, times = prob["K"], prob["F0"], prob["times"]
        eigh = jax.jit(jnp.linalg.eigh)
        fns = {"eigen": lambda: solve(K, n, F0, times, method="eigen", settings=SolverSettings(rtol=rtol, mode_tol=mode_tol)),
               "function": lambda: solve(K, n, F0, times, method="function", settings=SolverSettings(rtol=rtol)),
               "eigh": lambda: eigh(K)}
        tm = time_interleaved(fns, repeats)
        row = dict(n_views=2 * n, d=d, gamma_ratio=prob["gamma_ratio"])
        for k, v in tm.items():
            o = v.pop("output")
            row[k] = dict(min_s=v["min_s"], compile_s=v["compile_s"])
            if k != "eigh":
                row[k].update(n_steps=int(o.stats.n_steps), n_rhs=int(o.stats.n_rhs), n_modes=int(o.stats.n_modes),
                              integrator=o.integrator)
        rows.append(row)
        log(f"  2n={2 * n:5d} d={d:3d}: eigen {row['eigen']['min_s']:.3f} s, function {row['function']['min_s']:.3f} s, "
            f"eigh {row['eigh']['min_s']:.3f} s")
    fits = {}
    for route in ("eigen", "function", "eigh"):
        by_n = [r for r in rows if r["d"] == d_fixed]
        by_d = [r for r in rows if 2 * n_fixed == r["n_views"]]
        if len(by_n) > 1:
            fits[f"{route}_vs_2n"] = _fit([r["n_views"] for r in by_n], [r[route]["min_s"] for r in by_n])
        if len(by_d) > 1 and route != "eigh":
            fits[f"{route}_vs_d"] = _fit([r["d"] for r in by_d], [r[route]["min_s"] for r in by_d])
            fits[f"{route}_per_rhs_vs_d"] = _fit([r["d"] for r in by_d],
                                                 [r[route]["min_s"] / r[route]["n_rhs"] for r in by_d])
    return dict(rows=rows, exponents=fits)


def environment() -> dict[str, Any]:
    return dict(python=platform.python_version(), jax=jax.__version__, backend=jax.default_backend(),
                devices=[str(d) for d in jax.devices()], cpu_count=os.cpu_count(), platform=platform.platform(),
                load_average_start=_load())


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-pairs", type=int, default=1000, help="n (2n views); default 1000")
    ap.add_argument("--d", type=int, default=32)
    ap.add_argument("--rtol", type=float, default=5e-6, help="solver rtol for solve[eigen]")
    ap.add_argument("--mode-tol", type=float, default=1e-4, help="solver mode_tol (bound on ‖ΔC‖₂)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="2n = 500, d = 8, small scaling sweep")
    ap.add_argument("--no-nt", action="store_true", help="skip neural-tangents (minutes at full size)")
    ap.add_argument("--no-scaling", action="store_true")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    n, d = (250, 8) if args.quick else (args.n_pairs, args.d)
    result: dict[str, Any] = dict(benchmark="solver_bench", environment=environment(),
                                  command=" ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])))
    print(f"problem: 2n = {2 * n}, d = {d}, float64", flush=True)
    prob = make_problem(n, d, data_dir=args.data_dir)
    result["problem"] = {k: v for k, v in prob.items() if k not in ("K", "F0", "times")} | dict(
        n_views=2 * n, n_times=int(prob["times"].shape[0]), t_max=float(prob["times"][-1]), lambda0_median=LAMBDA0)
    print(f"  {prob['source']}, γ_1/γ_d = {prob['gamma_ratio']:.0f}", flush=True)
    result["headline"] = headline(prob, rtol=args.rtol, mode_tol=args.mode_tol, repeats=args.repeats,
                                  run_nt=not args.no_nt)
    h = result["headline"]
    result["checks"] = dict(
        accuracy_eigen_le_1e_3=h["solve_eigen"]["max_abs_dlambda"] <= 1e-3,
        within_1_5x_eigh=h["ratio_solve_to_eigh"] <= 1.5,
        all_modes_past_0_99=h["reference"]["all_modes_past_0_99"],
    )
    if "nt_gradient_descent" in h:
        result["checks"].update(accuracy_nt_le_1e_3=h["nt_gradient_descent"]["max_abs_dlambda"] <= 1e-3,
                                at_least_10x_faster_than_nt=h["speedup_vs_nt"] >= 10)
    if not args.no_scaling:
        print("scaling", flush=True)
        if args.quick:
            result["scaling"] = scaling([125, 250], [4, 8], 8, 250, rtol=args.rtol, mode_tol=args.mode_tol,
                                        repeats=1, data_dir=args.data_dir)
        else:
            result["scaling"] = scaling([250, 500, 1000], [8, 16, 32, 64], 32, 500, rtol=args.rtol,
                                        mode_tol=args.mode_tol, repeats=2, data_dir=args.data_dir)
    result["environment"]["load_average_end"] = _load()
    _atomic_write(args.out, json.dumps(result, indent=2, default=float))
    print(json.dumps(result["checks"], indent=2))
    print(f"wrote {args.out}")
    return result


# ------------------------------------------------------------------------------ harness adapter

def harness_measurements(ctx):
    """Measurements for ``python -m benchmarks solver`` (see benchmarks/_adapters.py)."""
    from benchmarks._harness import Measurement

    n, d = {"tiny": (100, 4), "small": (250, 8), "full": (1000, 32)}[ctx.size]
    n = int(ctx.param("n_pairs", {"tiny": n, "small": n, "full": n}))
    d = int(ctx.param("d", {"tiny": d, "small": d, "full": d}))
    prob = make_problem(n, d, data_dir=ctx.data_dir)
    h = headline(prob, rtol=5e-6, mode_tol=1e-4, repeats=ctx.repeats, run_nt=ctx.size != "tiny", log=ctx.log)
    case = f"bt 2n={2 * n} d={d} ({prob['source']})"
    sizes = dict(n_views=2 * n, d=d)

    def meas(key, name, role, baselines=()):
        v = h[key]
        extra = {k: v[k] for k in v if k not in ("min_s", "median_s", "all_s", "compile_s")}
        q1, q3 = np.percentile(v["all_s"], [25, 75])
        return Measurement(benchmark="solver", case=case, name=name, role=role, baselines=list(baselines),
                           sizes=sizes, dtype="float64", median_s=v["median_s"], iqr_s=float(q3 - q1),
                           min_s=v["min_s"], max_s=max(v["all_s"]), repeats=len(v["all_s"]),
                           compile_s=v["compile_s"], compile_method="first call − min", peak_bytes=None,
                           memory=None, extra=extra)

    baselines = ["eigh(K)"] + (["nt.predict.gradient_descent"] if "nt_gradient_descent" in h else [])
    out = [meas("solve_eigen", "solve[eigen]", "subject", baselines), meas("eigh", "eigh(K)", "floor")]
    if "nt_gradient_descent" in h:
        out.append(meas("nt_gradient_descent", "nt.predict.gradient_descent", "baseline"))
    return out


if __name__ == "__main__":
    main()
