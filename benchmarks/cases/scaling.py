"""How cost grows: time and peak memory of each route against ``2n`` and ``d``, with fitted exponents.

Problem: :func:`benchmarks.harness.problems.ridge_kernel_problem` — a full-rank synthetic kernel
``K = X Xᵀ + ρ I`` (cheap to build at any ``2n``), Barlow Twins, a horizon covering the
first steps, so the number of time steps hardly depends on ``2n``.

For every size (a case ``2n=… d=…``):

* floors ``eigh(K)`` (O((2n)³)) and ``K@F`` (O((2n)² d)), compiled ahead of time;
* subjects ``eigensystem[top 64]`` (the partial contrastive eigensystem: Cholesky plus a
  block Krylov iteration, ``extra.max_residual``) and ``Krylov[top 64] given L`` (the
  iteration alone, ≈ 2 in ``2n`` at a fixed number of restarts), fitted without an
  expectation (the Cholesky's ``(2n)³/3`` takes over at large ``2n``);
* subjects ``solve[eigen]`` (Cholesky + one eigendecomposition + the ``O(d² k)`` mode
  flow, ``eigensystem="full"``) held against ``eigh(K)``, and ``solve[function]`` (one ``K·F`` per right-hand
  side) held against ``K@F``; ``extra.per_rhs_s`` = time / right-hand sides.

``scaling`` varies ``2n`` at fixed ``d``; ``scaling_d`` varies ``d`` at fixed ``2n``. Fits
(least squares in log–log) over every size, reported as they are, and over the asymptotic
range (:func:`asymptotic_n_views`: ``2n ≥ 2000``, where fixed per-call costs are negligible,
and on a CPU ``K`` at least twice the last-level cache, so that it is read from memory),
held to the complexity: ``eigh(K)`` ≈ 3, ``K@F`` ≈ 2,
``solve[eigen]`` ≈ 3 and the function route's time per right-hand side ≈ 2 in ``2n`` (± 0.3);
``eigh(K)`` ≈ 0 in ``d`` (``K@F`` grows more slowly than ``d`` while reading ``K`` costs as
much as its flops). Each is fitted to the fastest call of every size
(``min_s``: on a shared machine the least disturbed by other processes) and to the median.
Memory exponents are reported without an expectation (the smallest buffers fall below the
allocator's mapping threshold).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from benchmarks.harness.fits import fits_over
from benchmarks.harness.problems import ridge_kernel_problem
from benchmarks.harness.records import Fit, Measurement
from benchmarks.harness.registration import register
from benchmarks.harness.timing import Context

__all__ = ["asymptotic_n_views", "last_level_cache_bytes", "run_d", "run_n"]

EIGH, KF = "eigh(K)", "K@F"
PARTIAL_R = 64  # modes of the partial eigensystem rows
PARTIAL, KRYLOV = f"eigensystem[top {PARTIAL_R}]", f"Krylov[top {PARTIAL_R}] given L"
# Expected exponents are checked from here up (at least): the eigendecomposition outweighs the
# eigen route's fixed costs. On a CPU the bound is raised until K is twice the last-level
# cache (see asymptotic_n_views): K·F only reads K, and a K that fits in cache is read faster.
ASYMPTOTIC_N_VIEWS = 2000
PRESETS = {
    # 5656 ≈ 4000 √2: three sizes past a 32 MiB L3 in float64 (4000, 5656, 8000).
    "n_views": {"tiny": [32, 64], "small": [250, 500, 1000], "full": [1000, 2000, 4000, 5656, 8000]},
    "d": {"tiny": 4, "small": 16, "full": 32},
    "d_list": {"tiny": [2, 4], "small": [4, 8, 16, 32], "full": [8, 16, 32, 64]},
    "n_views_d": {"tiny": 64, "small": 500, "full": 1000},
    "rtol": {"tiny": None, "small": None, "full": None},
}


def _case(
    ctx: Context, bench: str, n_views: int, d: int, dtype: np.dtype, rtol: float
) -> list[Measurement]:
    import jax
    import jax.numpy as jnp

    from stepwise_ntk.solver import SolverSettings, solve

    prob = ridge_kernel_problem(n_views, d)
    K, F0, times = (jnp.asarray(a, dtype) for a in (prob.K, prob.F0, prob.times))
    n = prob.n_pairs
    case = f"2n={n_views} d={d}"
    sizes = {"n_views": n_views, "d": d}
    out = []
    te = ctx.time_jitted(jax.jit(jnp.linalg.eigh), K)
    out.append(
        ctx.measurement(
            te, benchmark=bench, case=case, name=EIGH, role="floor", sizes=sizes, dtype=dtype
        )
    )
    tk = ctx.time_jitted(jax.jit(lambda K, F: K @ F), K, F0)
    out.append(
        ctx.measurement(
            tk, benchmark=bench, case=case, name=KF, role="floor", sizes=sizes, dtype=dtype
        )
    )
    out += _partial_rows(ctx, bench, case, sizes, K, n, dtype)
    # The eigen route with the full decomposition (its complexity, 3, is what the fit holds);
    # the partial eigensystem has its own rows above.
    settings = SolverSettings(rtol=rtol, eigensystem="full")
    for method, floor in (("eigen", EIGH), ("function", KF)):
        if method == "function":
            # Compiling needs the shapes only: warm up on a 1000× shorter horizon.
            def warm(method=method):
                return solve(K, n, F0, times * 1e-3, method=method, settings=settings)

        else:
            warm = None  # the number of integrated modes (a compiled shape) depends on the horizon
        t = ctx.time(
            lambda method=method: solve(K, n, F0, times, method=method, settings=settings),
            warmup=warm,
        )
        st = t.output.stats
        n_rhs = max(int(st.n_rhs), 1)
        extra = {
            "n_steps": int(st.n_steps),
            "n_rhs": int(st.n_rhs),
            "per_rhs_s": t.median_s / n_rhs,
            "min_per_rhs_s": min(t.times) / n_rhs,
            "n_devices": int(st.n_devices),
            "rtol": rtol,
        }
        if method == "eigen":
            extra["n_modes"] = int(st.n_modes)
            extra["integrator"] = t.output.integrator
        out.append(
            ctx.measurement(
                t,
                benchmark=bench,
                case=case,
                name=f"solve[{method}]",
                role="subject",
                sizes=sizes,
                dtype=dtype,
                baselines=[floor],
                extra=extra,
            )
        )
    return out


def _partial_rows(ctx: Context, bench: str, case: str, sizes: dict, K, n: int, dtype: np.dtype) -> list[Measurement]:
    """The partial contrastive eigensystem at fixed ``r``: with its Cholesky factor
    (``PARTIAL``) and the block Krylov iteration alone from a given factor (``KRYLOV``,
    ``O((2n)² r)`` per restart: exponent ≈ 2 at a fixed number of restarts). Below
    ``2n = 1024`` both fall back to the full decomposition (``extra.partial = False``)."""
    import jax.numpy as jnp

    from stepwise_ntk.theory import contrastive_eigensystem, contrastive_eigensystem_from_factor, jittered_cholesky

    r = min(PARTIAL_R, 2 * n)
    out = []
    tp = ctx.time(lambda: contrastive_eigensystem(K, n, top=r, which="magnitude"))
    es = tp.output
    extra = {"r": r, "partial": bool(es.partial),
             "max_residual": float(jnp.max(es.residuals)) if es.residuals is not None else 0.0,
             "rest": float(es.rest)}
    out.append(ctx.measurement(tp, benchmark=bench, case=case, name=PARTIAL, role="subject", sizes=sizes,
                               dtype=dtype, baselines=[EIGH], extra=extra))
    L, tau = jittered_cholesky(K, jnp.asarray(2 * n * float(np.finfo(dtype).eps), dtype))
    tk = ctx.time(lambda: contrastive_eigensystem_from_factor(L, tau, top=r, which="magnitude").gammas)
    out.append(ctx.measurement(tk, benchmark=bench, case=case, name=KRYLOV, role="subject", sizes=sizes,
                               dtype=dtype, baselines=[EIGH], extra={"r": r, "partial": bool(es.partial)}))
    return out


def _rtol(ctx: Context, dtype: np.dtype) -> float:
    r = ctx.param("rtol", PRESETS["rtol"])
    return float(r) if r is not None else (1e-6 if dtype == np.float64 else 1e-4)


def _as_list(v) -> list[int]:
    if isinstance(v, (int, float)):
        return [int(v)]
    if isinstance(v, str):
        return [int(x) for x in v.split(",") if x]
    return [int(x) for x in v]


def last_level_cache_bytes() -> int | None:
    """The largest CPU cache of cpu0 (Linux sysfs), or None where it cannot be read."""
    sizes = []
    for f in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = f.read_text().strip().upper()
        unit = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
        try:
            sizes.append(int(text.rstrip("KMG")) * unit)
        except ValueError:
            continue
    return max(sizes) if sizes else None


def asymptotic_n_views(itemsize: int, backend: str, cache_bytes: int | None) -> int:
    """Smallest ``2n`` whose fit is held to the complexity.

    ``ASYMPTOTIC_N_VIEWS``, raised on a CPU until ``K`` ((2n)² × itemsize bytes) is at least
    twice the last-level cache: below that ``K·F`` (and each of the function route's
    right-hand sides) reads ``K`` partly from cache, faster than the ``(2n)²`` from memory
    that its exponent 2 stands for (32 MiB L3, float64: from 2n = 2897).
    """
    if backend != "cpu" or not cache_bytes:
        return ASYMPTOTIC_N_VIEWS
    return max(ASYMPTOTIC_N_VIEWS, math.ceil(math.sqrt(2 * cache_bytes / itemsize)))


def _fits_n(ms: list[Measurement]) -> list[Fit]:
    import jax

    expected = {EIGH: 3.0, KF: 2.0, "solve[eigen]": 3.0}
    fn = [m for m in ms if m.name == "solve[function]"]
    if not ms:
        return []
    min_x = asymptotic_n_views(np.dtype(ms[0].dtype).itemsize, jax.default_backend(),
                               last_level_cache_bytes())
    fits = []
    for q in ("min_s", "median_s"):
        # Every size, for the record; then the asymptotic range, held to the complexity.
        fits += fits_over(ms, "n_views", q)
        fits += fits_over(ms, "n_views", q, expected=expected, min_x=min_x)
    for q in ("min_per_rhs_s", "per_rhs_s"):
        fits += fits_over(fn, "n_views", q, expected={"solve[function]": 2.0}, min_x=min_x)
    fits += fits_over(ms, "n_views", "peak_bytes")
    return fits


def _fits_d(ms: list[Measurement]) -> list[Fit]:
    fits = []
    for q in ("min_s", "median_s"):
        # No expectation for K@F in d: at d ≤ 64 reading K (8 (2n)² bytes) costs as much as
        # its 2 (2n)² d flops, so its time grows more slowly than d.
        fits += fits_over(ms, "d", q, expected={EIGH: 0.0})
    fits += fits_over([m for m in ms if m.name == "solve[function]"], "d", "min_per_rhs_s")
    return fits


@register(
    "scaling",
    "Time and peak memory of eigh(K), K·F and the solver's eigen and function routes against 2n "
    "(fixed d), with fitted exponents (eigh ≈ 3, K·F ≈ 2).",
    fits=_fits_n,
)
def run_n(ctx: Context) -> list[Measurement]:
    dtype = ctx.float_dtype()
    sizes = sorted(_as_list(ctx.param("n_views", PRESETS["n_views"])))
    d = int(ctx.param("d", PRESETS["d"]))
    rtol = _rtol(ctx, dtype)
    out = []
    for n_views in sizes:  # increasing, so each size raises the device's peak memory
        out += _case(ctx, "scaling", n_views, d, dtype, rtol)
    return out


@register(
    "scaling_d",
    "The same against the embedding dimension d at fixed 2n (eigh ≈ 0; K·F grows more slowly than d "
    "while reading K costs as much as its flops).",
    fits=_fits_d,
)
def run_d(ctx: Context) -> list[Measurement]:
    dtype = ctx.float_dtype()
    ds = sorted(_as_list(ctx.param("d_list", PRESETS["d_list"])))
    n_views = int(ctx.param("n_views_d", PRESETS["n_views_d"]))
    rtol = _rtol(ctx, dtype)
    out = []
    for d in ds:
        out += _case(ctx, "scaling_d", n_views, d, dtype, rtol)
    return out
