"""The gradient step of a network from its own kernel and its loss: ``c = rate / μ_max``.

Full-batch gradient descent on ``f = α · net`` at learning rate ``η`` moves the embeddings by
``−η K ∇_F L`` per step with ``K = α² Θ`` (:mod:`stepwise_ntk.training`), so the step on the
per-output NTK ``Θ`` is ``c = η α²``. Linearised around embeddings ``F``, one step maps a
perturbation ``v`` to ``v − c Θ H(F) v`` with ``H(F) = ∇²_F L(F)``: gradient descent is stable
near ``F`` while ``c · μ(F) < 2``, ``μ(F)`` the largest eigenvalue of ``Θ H(F)`` (real: it has
the eigenvalues of ``Θ^{1/2} H Θ^{1/2}``; negative ones are the modes being learned, which
grow on purpose). The step is chosen from the largest ``μ`` on the states the run will visit,
the kernel model's flow ``dF/ds = −Θ ∇L(F)`` from the network's own ``F0`` (the curvature
of SimCLR and VICReg is largest at the start or late in the run, not at a fixed point):
``c = rate / max_s μ(F(s))``, so ``rate`` is the fastest mode's contraction per step, unstable
at 2 and close to the flow for ``rate ≪ 1``.

Barlow Twins: at its fixed point ``C = I`` in the aligned case ``Θ H`` has the eigenvalues
``8 γ_j`` (the decay rates of ``dλ_j/dt = 8 γ_j λ_j (1 − λ_j)`` at ``λ_j = 1``, THEORY.md) and
``4 (γ_i + γ_j)``, so ``μ_max = 8 γ_1`` and ``c = rate / (8 γ_1(Θ))``, the closed form used
without ``loss`` (on the way to the fixed point ``μ`` is smaller). Which ``Θ`` matters: a
finite network's gradient descent is set by *its* kernel, the empirical NTK at its initial
parameters, not the infinite-width one (a narrow CNN's empirical ``γ_1`` is several times the
analytic one). The ``rate`` also leaves room for the kernel to grow during training (a narrow
network leaves the kernel regime).

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(8, 5))                     # 2n = 8 views
    >>> theta = X @ X.T / 5                             # a kernel Θ on them
    >>> c = stable_step_size(theta, 4, rate=0.1)
    >>> from stepwise_ntk.theory import contrastive_eigensystem
    >>> g1 = float(contrastive_eigensystem(theta, 4).gammas[0])
    >>> round(c * 8 * g1, 12)
    0.1
    >>> F0 = 1e-3 * X[:, :2]                            # small initial embeddings, d = 2
    >>> c_bt = stable_step_size(theta, 4, rate=0.1, loss="barlow_twins", F=F0)
    >>> bool(abs(c_bt * 8 * g1 - 0.1) < 0.01)           # BT: μ_max ≈ 8 γ_1 at the fixed point
    True
    >>> c_vic = stable_step_size(theta, 4, rate=0.1, loss="vicreg", loss_kwargs={"smooth": 0.01}, F=F0)
    >>> bool(c_vic < c_bt)                              # VICReg is far more curved near F = 0
    True
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from stepwise_ntk._checks import check_array, check_int, check_kernel, check_n_pairs, check_number
from stepwise_ntk.losses import resolve_loss
from stepwise_ntk.solver import SolverSettings, solve
from stepwise_ntk.theory import contrastive_eigensystem, step_times

__all__ = ["loss_curvature", "stable_step_size"]

# One integrator for the flow of every step-size choice (as in the predictions).
_SOLVER = SolverSettings(integrator="dopri5")


def _gamma_1(K: np.ndarray, n: int) -> float:
    gammas = np.asarray(contrastive_eigensystem(K, n).gammas, np.float64)
    g1 = float(gammas[0])
    # Relative to the largest |γ|: round-off leaves γ ~ 1e-16 · max|γ| on a kernel without any.
    if not g1 > 1e-10 * float(np.max(np.abs(gammas))):
        raise ValueError(
            f"the kernel has no positive contrastive eigenvalue (γ_1 = {g1:.3g}): no mode can be learned and "
            "no step size follows from it. Check the views (pairing order) or pass a step size."
        )
    return g1


def _kernel_root(K: np.ndarray) -> np.ndarray:
    """``S`` with ``S Sᵀ = Θ`` (the positive part of its spectrum): ``(2n, r)``."""
    lam, V = np.linalg.eigh(K)
    keep = lam > 1e-12 * max(float(lam[-1]), 0.0)
    return V[:, keep] * np.sqrt(lam[keep])


def _hvp_operator(fn: Callable, S: np.ndarray, dtype) -> Callable:
    """``(F, U) -> Sᵀ H(F) S U`` for a batch ``U: (b, r, d)`` (jitted)."""
    S = jnp.asarray(S, dtype)

    @jax.jit
    def op(F, U):
        def one(u):
            return S.T @ jax.jvp(jax.grad(fn), (F,), (S @ u,))[1]
        return jax.vmap(one)(U)

    return op


def _largest_eigenvalue(op: Callable, F: jax.Array, shape: tuple[int, int], iterations: int, seed: int) -> float:
    """Largest eigenvalue of the symmetric operator ``U -> op(F, U)`` on ``(r, d)`` matrices.

    Dense (every basis vector in one batch) up to 1024 dimensions, else Lanczos with full
    re-orthogonalisation (its largest Ritz value).
    """
    r, d = shape
    N = r * d
    dtype = F.dtype
    if N <= 1024:
        basis = jnp.eye(N, dtype=dtype).reshape(N, r, d)
        H = np.asarray(op(F, basis), np.float64).reshape(N, N)
        return float(np.linalg.eigvalsh(0.5 * (H + H.T))[-1])
    m = min(iterations, N)
    Q = np.zeros((m + 1, N))
    q = np.random.default_rng(seed).normal(size=N)
    Q[0] = q / np.linalg.norm(q)
    alpha, beta = np.zeros(m), np.zeros(m)
    k = m
    for j in range(m):
        w = np.asarray(op(F, jnp.asarray(Q[j].reshape(1, r, d), dtype)), np.float64).reshape(N)
        alpha[j] = Q[j] @ w
        w = w - Q[: j + 1].T @ (Q[: j + 1] @ w)
        w = w - Q[: j + 1].T @ (Q[: j + 1] @ w)  # twice: full re-orthogonalisation
        beta[j] = np.linalg.norm(w)
        if beta[j] < 1e-12 * max(abs(alpha[j]), 1e-300):
            k = j + 1
            break
        Q[j + 1] = w / beta[j]
    T = np.diag(alpha[:k]) + np.diag(beta[: k - 1], 1) + np.diag(beta[: k - 1], -1)
    return float(np.linalg.eigvalsh(T)[-1])


def loss_curvature(theta: Any, n_pairs: int, loss: str | Callable, embeddings: Any, *,
                   loss_kwargs: Mapping[str, Any] | None = None, iterations: int = 40) -> np.ndarray:
    """``μ(F)``: the largest eigenvalue of ``Θ ∇²_F L(F)`` at each of the given embeddings.

    ``Θ H`` is the linearised gradient-descent map per unit step (``v -> v − c Θ H v``); its
    eigenvalues are those of ``Sᵀ H S`` with ``S Sᵀ = Θ``, computed with Hessian-vector
    products (``jax.jvp`` of ``jax.grad`` of the loss): densely for ``rank(Θ) · d ≤ 1024``,
    else by Lanczos (``iterations`` steps, the largest Ritz value: a lower bound that is
    tight for a separated top eigenvalue).

    Args:
      theta: ``(2n, 2n)`` PSD kernel on the views.
      n_pairs: ``n``.
      loss: a name from :data:`stepwise_ntk.losses.LOSSES` or a callable ``F -> scalar``.
      embeddings: ``(2n, d)`` embeddings, or ``(T, 2n, d)`` (a trajectory).
      loss_kwargs: keyword arguments of a named loss.
      iterations: Lanczos steps (large problems only).

    Returns:
      ``(T,)`` float64 (``()`` for one ``(2n, d)``); may be negative where every direction
      is being learned.

    Example:
        >>> import numpy as np
        >>> theta = np.eye(4)                        # n = 2, Θ = I
        >>> F = np.zeros((4, 1))
        >>> float(loss_curvature(theta, 2, "barlow_twins", F))  # H(0) = −(2/n) Z: μ = 2/n
        1.0
    """
    n = check_n_pairs(n_pairs)
    K = np.asarray(check_kernel(np.asarray(theta, np.float64), n, "theta"), np.float64)
    E = np.asarray(check_array("embeddings", embeddings, min_ndim=2, what="(2n, d) or (T, 2n, d) embeddings"),
                   np.float64)
    single = E.ndim == 2
    E = E[None] if single else E
    if E.ndim != 3 or E.shape[1] != 2 * n:
        raise ValueError(f"embeddings must be (2n, d) or (T, 2n, d) with 2n = {2 * n}, got shape {E.shape}.")
    check_int("iterations", iterations, low=2)
    fn = resolve_loss(loss, loss_kwargs=loss_kwargs)
    S = _kernel_root(K)
    dt = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    op = _hvp_operator(fn, S, dt)
    mu = np.array([_largest_eigenvalue(op, jnp.asarray(F, dt), (S.shape[1], E.shape[2]), iterations, i)
                   for i, F in enumerate(E)])
    return mu[0] if single else mu


def _flow_times(K: np.ndarray, n: int, F: np.ndarray, points: int) -> np.ndarray:
    """A log grid of flow times ``s`` on ``Θ``: ``1/(8γ_1) / 10`` to 4 × Barlow Twins' last step."""
    es = contrastive_eigensystem(jnp.asarray(K), n)
    g1 = float(np.asarray(es.gammas)[0])
    try:
        t_last = float(np.max(np.asarray(step_times(es, jnp.asarray(F)))))
    except ValueError:  # not a small initialisation, or fewer than d positive γ
        t_last = float("nan")
    t_end = 4.0 * t_last if np.isfinite(t_last) and t_last > 0 else 100.0 / (8.0 * g1)
    t0 = 0.1 / (8.0 * g1)
    return np.geomspace(t0, max(t_end, 10 * t0), points)


def stable_step_size(theta: Any, n_pairs: int, rate: float = 0.1, *, loss: str | Callable | None = None,
                     loss_kwargs: Mapping[str, Any] | None = None, F: Any = None, times: Any = None,
                     trajectory: Any = None, points: int = 24) -> float:
    """``c = rate / μ_max``: the gradient step on ``Θ`` (learning rate ``c / α²``).

    Without ``loss``: Barlow Twins' closed form ``μ_max = 8 γ_1(Θ)`` (its curvature at the
    fixed point ``C = I``). With ``loss``: ``μ_max = max μ(F)`` (:func:`loss_curvature`,
    the largest eigenvalue of ``Θ ∇²L(F)``) over ``trajectory``, or over the kernel flow
    ``dF/ds = −Θ ∇L(F)`` from ``F`` (the solver's function route) at ``times`` and at ``F``
    itself. The time ``s`` is on ``Θ`` (``s = c × step``; ``α² × s`` is the effective time on
    ``K = α² Θ``). Default ``times``: ``points`` log-spaced from ``0.1/(8γ_1)`` to 4 ×
    Barlow Twins' closed-form last step time from ``F`` (the stiffest curvature of the
    losses sits at the start or after the last step). For Barlow Twins from a small ``F``
    the flow ends at the fixed point, so ``μ_max`` is ``8 γ_1`` to within a few percent,
    and both routes give the same ``c``.

    Args:
      theta: ``(2n, 2n)`` per-output NTK ``Θ`` of the network on the views (before the
        factor α²), e.g. ``network_kernel(arch, views, kernel="empirical_init", params=θ_0).K``.
      n_pairs: ``n``.
      rate: ``c · μ_max``, the fastest mode's change per step; gradient descent is unstable
        above 2 and tracks the flow for ``rate ≪ 1``.
      loss: None (Barlow Twins' closed form), a name from :data:`stepwise_ntk.losses.LOSSES`
        or a callable ``F -> scalar``.
      loss_kwargs: keyword arguments of a named loss (e.g. ``{"temperature": 0.5}``).
      F: ``(2n, d)`` initial embeddings of the flow (with ``loss``, unless ``trajectory``).
      times: ``(T,)`` increasing flow times ``s > 0`` on ``Θ`` (with ``F``).
      trajectory: ``(T, 2n, d)`` embeddings where the curvature is evaluated (instead of
        the flow).
      points: length of the default time grid.

    Returns:
      ``c`` (float).

    Raises:
      ValueError: ``rate`` not in ``(0, 2)``; ``Θ`` with no positive contrastive eigenvalue
        (nothing to learn: the views of a pair are uncorrelated under this kernel); ``loss``
        without ``F`` or ``trajectory``; a loss with no positive curvature on the states.
    """
    n = check_n_pairs(n_pairs)
    rate = check_number("rate", rate, low=0, high=2, open_low=True, open_high=True,
                        hint=" (gradient descent is unstable at rate ≥ 2)")
    K = np.asarray(check_kernel(np.asarray(theta, np.float64), n, "theta"), np.float64)
    g1 = _gamma_1(K, n)
    if loss is None:
        if F is not None or times is not None or trajectory is not None:
            raise ValueError("F, times and trajectory go with a loss (loss=None is Barlow Twins' closed form "
                             "8 γ_1); pass loss='barlow_twins' to evaluate its curvature on them.")
        return rate / (8.0 * g1)
    if trajectory is None:
        if F is None:
            raise ValueError("with a loss, pass F (the initial embeddings of the flow) or trajectory "
                             "(the embeddings where the curvature is evaluated).")
        F0 = np.asarray(check_array("F", F, ndim=2, what="(2n, d) initial embeddings"), np.float64)
        if F0.shape[0] != 2 * n:
            raise ValueError(f"F must be (2n, d) with 2n = {2 * n}, got shape {F0.shape}.")
        check_int("points", points, low=2)
        grid = _flow_times(K, n, F0, points) if times is None else np.asarray(
            check_array("times", times, ndim=1, what="increasing flow times"), np.float64)
        if grid.size < 1 or np.any(grid <= 0) or np.any(np.diff(grid) <= 0):
            raise ValueError("times must be positive and strictly increasing.")
        # The views as their own test inputs: the solver returns the embeddings at every time.
        traj = solve(jnp.asarray(K), n, jnp.asarray(F0), jnp.asarray(grid), loss=loss, loss_kwargs=loss_kwargs,
                     method="function", K_test=jnp.asarray(K), F0_test=jnp.asarray(F0), settings=_SOLVER)
        states = np.concatenate([F0[None], np.asarray(traj.test_embeddings, np.float64)])
    else:
        states = trajectory
    mu = loss_curvature(K, n, loss, states, loss_kwargs=loss_kwargs)
    mu_max = float(np.nanmax(np.atleast_1d(mu)))
    if not np.isfinite(mu_max) or mu_max <= 0:
        raise ValueError(f"the loss has no positive curvature on these embeddings (μ_max = {mu_max:.3g}): no "
                         "stable step follows from it; pass a step size.")
    return rate / mu_max
