"""Gradient flow of the kernel model, ``dF/dt = −K ∇_F L(F)``, on the 2n views (docs/theory.md).

:func:`solve` returns a :class:`Trajectory`: the loss and the eigenvalues of
``C = Fᵀ Z F / (2n)`` at the requested times, the final view embeddings, and (given
``K(test, views)``) test embeddings at every requested time, via
``df(x)/dt = −K(x, X) ∇_F L``. Two routes, one result type:

``method="eigen"`` (Barlow Twins only). Factor ``K + τ I = L Lᵀ`` and diagonalise
``Lᵀ Z L / (2n) = P diag(γ) Pᵀ`` (:func:`contrastive_eigensystem`), write ``F = L P Mᵀ``:
the flow becomes ``dM/dt = −4 (C − I) M diag(γ)``, ``C = M diag(γ) Mᵀ``, costing
``O(d² k)`` per right-hand side for ``k`` integrated modes instead of ``O((2n)² d)``. On CPU
the full decomposition is LAPACK's tridiagonal reduction and divide and conquer, with the
eigenvectors formed only for the ``k`` integrated modes
(:func:`~stepwise_ntk.theory.tridiagonal_eigensystem`: every ``γ`` and every mode's
coordinates of ``F0`` for the truncation, at about 0.65× the time of ``eigh``).

*Truncation.* A mode ``j`` that is not integrated is held at ``m_j(0)``. Exactly,
``m_j(t) = Φ_j(t) m_j(0)`` with ``dΦ_j/dt = 4 γ_j (I − C) Φ_j``, so
``‖Φ_j − I‖₂ ≤ ρ_j = exp(4 |γ_j| E) − 1``, ``E = ∫_0^T ‖I − C(t)‖₂ dt``, and its
contribution ``γ_j m_j m_jᵀ`` to ``C`` moves by at most ``|γ_j| ‖m_j(0)‖² ρ_j (2 + ρ_j)``.
The modes are ranked by this bound with the a-priori ``E = 1.25 T`` (``‖I − C‖ ≤ 1`` while
``0 ⪯ C ⪯ I``); the fewest modes whose neglected bounds sum to ``≤ mode_tol / 2`` are
integrated (rounded up to a multiple of 64). After the run the bound is re-evaluated
with the measured ``E`` (trapezoid rule on the accepted steps of the computed trajectory,
of :func:`spectral_norm_bound`, an upper bound on ``‖I − C‖₂`` within 3% at ``d ≤ 32``);
if it exceeds ``mode_tol``, more modes are integrated (re-ranked with the measured ``E``)
and the solve repeated. The
final bound is ``stats.truncation_bound``: a bound on the truncated modes' own
contribution to ``C`` (hence, by Weyl's inequality, to each eigenvalue); their feedback on
the integrated modes through ``C`` is of the same order but not part of the bound.
``mode_tol = 0`` integrates all ``2n`` modes.

*Quadrature.* With every mode known (full, tridiagonal or low-rank eigensystem) the modes
not integrated one by one need not be held: all modes obey one linear flow given ``C``, so
they act on ``C`` only through the ``d × d`` moments of their ``γ``, and ``q`` block Lanczos
steps on ``diag(γ_tail)`` give ``q d`` pseudo-modes with the same moments up to degree
``2q − 1``, integrated with the others (:mod:`stepwise_ntk.solver._quadrature`, with its
bound; ``q = 0`` is holding). The plan ``(k, q)`` with the fewest modes in all whose bound
fits is taken (``stats.n_quadrature_modes``). A partial eigensystem's modes not computed are
carried the same way: block Lanczos on ``H`` restricted to them, from their part of
``L⁻¹ F0`` (:func:`~stepwise_ntk.theory.rest_lanczos`, ``q d`` products with ``H``), their
bound from their moments and ``|γ| ≤ es.rest``.

*Partial eigensystem.* Where a flop model expects it to be cheaper than the full
decomposition (:func:`partial_is_cheaper`: from about ``2n = 3400`` for 64 modes on CPU) only
the ``r`` modes of largest ``|γ|`` are computed (block Krylov on products with ``Lᵀ Z L``;
:func:`contrastive_eigensystem_from_factor`). Where the bound on the modes not computed,
held (all with ``|γ| ≤ es.rest``, their weights known exactly from ``‖L⁻¹ F0‖`` and
``‖Lᵀ Z F0‖``), exceeds ``mode_tol / 4`` after the first run, they are carried by
quadrature (*Quadrature*; 4 Lanczos blocks, then as many as their moments predict, at most
``2n/2`` columns); only where no quadrature fits is ``r`` raised (at least doubled, up to
quadrupled where a power law fitted to the computed spectrum predicts it is needed,
:func:`~stepwise_ntk.solver._eigen_route._more_modes`), and the full decomposition taken where that, or the power law's
uncapped count, would not be cheaper.

*Low-rank kernel.* Where ``K`` has rank well below ``2n`` (at most two thirds of the
Cholesky columns carry it) and ``F0`` lies in its range, ``"auto"`` drops the other columns and
solves the kernel ``L_S L_Sᵀ`` exactly from a ``p × p`` eigendecomposition (a kernel change
within the partial eigensystem's residual tolerance, added to ``stats.jitter``; see
:func:`~stepwise_ntk.solver._eigen_route._eigen_modes` and docs/theory.md).

*Accuracy.* ``SolverSettings.accuracy`` (default 1e-3) bounds the error in every eigenvalue
of ``C`` at every requested time: ``mode_tol = accuracy / 10``, the truncation runs at
``10 × rtol`` and the final run at ``rtol = max(accuracy / 300, 100 eps)``; their difference
estimates the integration error (``rtol`` tightened while the estimate plus the truncation
bound exceeds the accuracy); ``stats.error_estimate`` is that estimate plus the truncation bound
plus, for a partial eigensystem, ``8 T δ`` (``δ`` its largest residual, a bound on each
``γ``'s error, which moves ``λ ≤ 1`` by about ``8 δ T λ``; the residual tolerance keeps it
below ``accuracy / 10`` where the dtype's round-off allows, and ``"auto"`` takes the full
decomposition where it does not), plus what the jitter's shift of each ``γ`` moves ``λ``
(``_jitter_share``; negligible at the float64 default, counted where ``jitter_rtol`` is
large). Products that decide accuracy are traced at ``precision=HIGHEST``.

*Time integration.* The flow is stiff (fastest scale ``1/8γ_1``, horizon
``ln(1/λ(0))/8γ_d``). ``integrator="rosw"`` uses the Rosenbrock-W method ROS34PW2 with
``W`` = the stiff part of the Jacobian, ``δM ↦ −4 (δM Γ Mᵀ + M Γ δMᵀ) M Γ``; the solve with
``I − τW`` reduces to the Lyapunov equation ``X + 4τ(X A + A X) = −4τ S`` with
``A = M Γ² Mᵀ`` (one ``d × d`` eigendecomposition per ``W``, kept over accepted steps and
renewed after a rejected one). ``"dopri5"`` is explicit and
needs about ``8γ_1 T / 3.3`` steps; ``"auto"`` picks the cheaper by a step-count model.

``method="function"`` (any differentiable loss of ``F``: Barlow Twins, SimCLR, VICReg, or
a callable). Integrates ``F`` itself with Dormand–Prince: one ``(2n × 2n)·(2n × d)``
product per right-hand side. ``K`` (and ``K(test, views)``) can be sharded by rows over
all local devices (``jax.sharding.NamedSharding`` on a 1-D mesh).

``method="galerkin"`` (any loss, opt-in): the function-space flow reduced to the top
eigenvectors of ``K`` with an a-posteriori bound on the dropped part
(:mod:`stepwise_ntk.solver._galerkin`); it pays over short horizons and on fast-decaying
spectra. The function and Galerkin routes refuse a non-PSD ``K`` before integrating.

``method="auto"`` picks by a cost model (see :func:`choose_method`) and says why in
``Trajectory.reason``.

Everything after input validation is jitted; a second call with the same shapes (and
settings) does not recompile. The eigen route runs as two jitted stages with a host
decision (how many modes) in between.

Example::

    >>> import jax, jax.numpy as jnp
    >>> X = jax.random.normal(jax.random.key(0), (40, 30))       # 20 pairs, 30 features
    >>> X = X.at[20:].set(X[:20] + 0.3 * X[20:])                  # views of the same images
    >>> K = X @ X.T / 30
    >>> F0 = 1e-3 * jax.random.normal(jax.random.key(1), (40, 3))
    >>> traj = solve(K, 20, F0, jnp.geomspace(1e-2, 1e3, 50))
    >>> traj.eigenvalues.shape, traj.method
    ((50, 3), 'eigen')
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from stepwise_ntk._checks import (
    check_bool,
    check_choice,
    check_embeddings,
    check_kernel,
    check_n_pairs,
    check_test_embeddings,
    check_test_kernel,
    check_times,
    check_type,
)
from stepwise_ntk.losses import barlow_twins_loss, resolve_loss
from stepwise_ntk.solver._eigen_route import solve_eigen
from stepwise_ntk.solver._function_route import solve_function, use_sharding
from stepwise_ntk.solver._galerkin import solve_galerkin
from stepwise_ntk.solver._method import choose_method, pick_route
from stepwise_ntk.solver._settings import INTEGRATORS, METHODS, SolverSettings
from stepwise_ntk.solver._trajectory import Trajectory

__all__ = ["METHODS", "INTEGRATORS", "SolverSettings", "choose_method", "solve"]

_DEFAULT_SETTINGS = SolverSettings()  # frozen: one shared default is safe


def solve(
    K: Any,
    n_pairs: int,
    F0: Any,
    times: Any,
    *,
    loss: str | Callable[[jax.Array], jax.Array] = "barlow_twins",
    loss_kwargs: dict | None = None,
    method: str = "auto",
    K_test: Any = None,
    F0_test: Any = None,
    settings: SolverSettings = _DEFAULT_SETTINGS,
    progress: bool = False,
) -> Trajectory:
    """Gradient flow ``dF/dt = −K ∇_F L(F)`` of the kernel model from ``F(0) = F0``.

    Args:
      K: ``(2n, 2n)`` PSD kernel Gram matrix of the views ``[x_1..x_n, x'_1..x'_n]``
        (float32 or float64; may be sharded by rows for the function route).
      n_pairs: ``n``.
      F0: ``(2n, d)`` initial embeddings of the views (same dtype as K).
      times: ``(T,)`` strictly increasing output times ≥ 0 (effective time: learning rate
        × step), e.g. ``jnp.geomspace(1e-2, 1e4, 200)``.
      loss: ``"barlow_twins"``, ``"simclr"``, ``"vicreg"`` or a callable ``F -> scalar``.
      loss_kwargs: keyword arguments of a named loss (e.g. ``{"temperature": 0.2}``).
      method: ``"auto"``, ``"eigen"`` (Barlow Twins only), ``"function"`` or ``"galerkin"``.
      K_test: optional ``(m, 2n)`` kernel between test inputs and the views.
      F0_test: optional ``(m, d)`` initial test embeddings (default 0, as in
        neural-tangents' ``predict``).
      settings: :class:`SolverSettings`.
      progress: show a tqdm bar over the output times for each integration (the eigen route
        runs two or more: the truncation's and the accuracy check's); results do not depend
        on it.

    Returns:
      :class:`Trajectory` (``method``, ``integrator`` and ``reason`` say what ran).

    Raises:
      TypeError: an argument of the wrong type (e.g. a float ``n_pairs``, ``settings`` that
        is not a :class:`SolverSettings`, ``loss`` neither a name nor a callable).
      ValueError: on bad input (shapes, dtypes, NaN/Inf, asymmetric or non-PSD ``K``,
        non-increasing times, fewer than ``d`` positive contrastive eigenvalues for
        Barlow Twins on the eigen route, a tolerance below the dtype's resolution), or
        when the integration does not reach the last time within ``max_steps``.
    """
    n_pairs = check_n_pairs(n_pairs)
    _check_x64(K=K, F0=F0, times=times, K_test=K_test, F0_test=F0_test)
    K = check_kernel(K, n_pairs)
    F0 = check_embeddings(F0, n_pairs, "F0", dtype=K.dtype)
    times = check_times(times, K.dtype)
    loss_fn = resolve_loss(loss, loss_kwargs=loss_kwargs)
    check_choice("method", method, METHODS)
    check_type("settings", settings, SolverSettings)
    progress = check_bool("progress", progress)
    if settings.rtol is not None:
        _check_rtol_resolvable(settings.rtol, K.dtype)
    K_test, F0_test = _test_inputs(K_test, F0_test, n_pairs, F0)

    devices = jax.local_devices()
    shard = use_sharding(settings.shard, 2 * n_pairs, devices)
    n_dev = len(devices) if shard else 1
    is_bt = loss_fn is barlow_twins_loss
    # max_i Σ_k |K_ik| ≥ ‖K‖₂, so / 2n ≥ γ_1: the function route's explicit steps scale with
    # γ_1 T, and the eigen route bounds ‖L‖₂ and γ with it.
    row_max = jnp.max(jnp.sum(jnp.abs(K), axis=1)) if is_bt and method in ("auto", "eigen") else None
    stiffness = float(row_max) / K.shape[0] * float(times[-1]) if row_max is not None else None
    method, reason = pick_route(method, is_bt, loss, settings.integrator, n_pairs, F0.shape[1], n_dev, stiffness)
    if method == "eigen":
        return solve_eigen(K, F0, times, K_test, F0_test, settings, F0.shape[1], reason, row_max, progress)
    if method == "galerkin":
        return solve_galerkin(K, F0, times, K_test, F0_test, settings, loss_fn, reason, progress)
    return solve_function(K, F0, times, K_test, F0_test, settings, loss_fn, reason, shard, devices, n_dev,
                           progress)


def _check_x64(**arrays: Any) -> None:
    """float64 arrays while JAX runs in float32 (``jax_enable_x64`` off) would be rounded
    to float32 silently: refuse them, naming the first one."""
    if jax.config.jax_enable_x64:
        return
    for name, a in arrays.items():
        if getattr(a, "dtype", None) == np.float64:
            raise ValueError(
                f"{name} is float64 but jax_enable_x64 is off, so JAX would round it to float32 "
                f"silently. Call jax.config.update('jax_enable_x64', True) before creating arrays, "
                f"or pass float32 inputs ({name}.astype(np.float32))."
            )


def _check_rtol_resolvable(rtol: float, dtype: Any) -> None:
    eps = float(np.finfo(dtype).eps)
    if rtol < 10 * eps:
        raise ValueError(
            f"rtol = {rtol:g} is below what {np.dtype(dtype).name} resolves (10 eps = "
            f"{10 * eps:.1g}); use rtol ≥ {10 * eps:.1g} or float64 inputs."
        )


def _test_inputs(K_test: Any, F0_test: Any, n_pairs: int, F0: jax.Array) -> tuple[Any, Any]:
    """``K_test: (m, 2n)`` and ``F0_test: (m, d)`` (default 0) checked, or (None, None)."""
    if K_test is None:
        if F0_test is not None:
            raise ValueError("F0_test was given without K_test; pass K_test (m, 2n) as well.")
        return None, None
    K_test = check_test_kernel(K_test, n_pairs, dtype=F0.dtype)
    m, d = K_test.shape[0], F0.shape[1]
    if F0_test is None:
        F0_test = jnp.zeros((m, d), F0.dtype)
    return K_test, check_test_embeddings(F0_test, m, d, dtype=F0.dtype)
