"""The kernel-model prediction for a trained network, and the comparison of the two.

A network trained by :func:`stepwise_ntk.training.train` has embedding
``f(x) = α · net(x; θ)``. Its kernel model (THEORY.md) is the gradient flow
``dF/dt = −K ∇_F L(F)`` with

    K = α² Θ,       t = learning_rate × step   (effective time),

where ``Θ`` is the per-output NTK of ``net`` (the ``d × d`` output block is ``Θ I_d``):
the chain rule through ``f = α · net`` multiplies every parameter gradient by α, so the
function-space kernel of ``f`` is α² times that of ``net``. Three choices of ``Θ``
(:data:`KERNELS`):

* ``"analytic"``: the infinite-width NTK of the architecture (neural-tangents,
  :func:`stepwise_ntk.kernels.analytic_ntk`); in the ``"ntk"`` parameterisation it does not
  depend on the width, so one kernel serves a whole width sweep;
* ``"empirical_init"``: the empirical NTK of the network at its initial parameters ``θ_0``
  (:func:`stepwise_ntk.kernels.empirical_ntk`);
* ``"empirical_final"``: the empirical NTK after training (what the paper compared with).

:func:`predict_run` integrates the kernel flow from the network's own initial embeddings
``F0 = α · net(X; θ_0)`` with the solver (exact for the kernel model at any initial size,
including the mixing of close modes at finite α) and also returns the closed-form
small-initialisation predictions: the contrastive eigenvalues ``γ``, the step times
``t_j = ln(1/λ_j(0) − 1)/(8γ_j)`` and the final embeddings on held-out views (the top-``d``
modes, ``diag(γ^{-1/2}) g(x)``). :func:`compare_run` holds a :class:`TrainResult` against a
:class:`Prediction` with the metrics of :mod:`stepwise_ntk.predictor` (``subspace_alignment``,
``step_time_ratios``, ...) and :func:`stepwise_ntk.theory.procrustes_error`.

Example::

    >>> import jax, numpy as np
    >>> from stepwise_ntk.kernels import MLP
    >>> from stepwise_ntk.predictor import compare_run, init_network, predict_run
    >>> from stepwise_ntk.training import TrainSettings, train
    >>> rng = np.random.default_rng(0)
    >>> views, test_views = rng.normal(size=(8, 4)), rng.normal(size=(3, 4))   # float64; 2n = 8
    >>> arch = MLP(depth=1, width=16, d=2)
    >>> alpha = 0.125
    >>> init = init_network(arch, views, test_views, alpha=alpha, key=jax.random.key(0))
    >>> settings = TrainSettings(learning_rate=0.0625 / alpha**2, steps=200, alpha=alpha, n_records=50)
    >>> run = train(arch, settings, views, test_views=test_views, init_params=init.params, progress=False)
    >>> pred = predict_run(arch, views, test_views, init.F0, run.effective_times[1:],
    ...                    alpha=alpha, F0_test=init.F0_test)
    >>> pred.kernel, pred.eigenvalues.shape == (run.steps.size - 1, 2), np.asarray(pred.step_times).round(1)
    ('analytic', True, array([ 98.2, 245.4]))
    >>> report = compare_run(pred, run, arch=arch)   # width 16 is far from the infinite-width kernel
    >>> report.step_time_ratios.round(2), round(report.train_alignment, 2)
    (array([0.58, 0.7 ]), 0.99)
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from stepwise_ntk._checks import (
    check_array,
    check_choice,
    check_embeddings,
    check_float_dtype,
    check_number,
    check_positive_int,
    check_type,
    check_views,
)
from stepwise_ntk.kernels import ArchSpec, analytic_ntk, array_fingerprint, empirical_ntk
from stepwise_ntk.predictor._metrics import (
    crossing_times,
    eigenvalue_trajectory_error,
    principal_cosines,
    step_time_ratios,
    subspace_alignment,
)
from stepwise_ntk.solver import SolverSettings, Trajectory, solve
from stepwise_ntk.theory import (
    check_enough_modes,
    contrastive_eigensystem,
    final_embeddings,
    initial_eigenvalues,
    procrustes_error,
    step_times,
)
from stepwise_ntk.training import TrainResult

__all__ = [
    "KERNELS",
    "NetworkInit",
    "NetworkKernel",
    "Prediction",
    "RunComparison",
    "compare_run",
    "init_network",
    "network_kernel",
    "predict_run",
]

KERNELS = ("analytic", "empirical_init", "empirical_final")

_DEFAULT_SOLVER = SolverSettings()  # frozen: one shared default is safe


# ------------------------------------------------------------------------------ input checks


def _check_alpha(alpha: Any) -> float:
    return check_number(
        "alpha", alpha, low=0, open_low=True, hint=" (the output scale of f = α · net, TrainSettings.alpha)"
    )


def _host_views(name: str, x: Any, like: np.ndarray | None = None) -> np.ndarray:
    """Checked views as a host array (the kernels are computed from host arrays)."""
    return np.asarray(check_views(name, x, like=like))


def _check_dtype(dtype: Any) -> np.dtype:
    dt = check_float_dtype("dtype", dtype)
    if dt == np.float64 and not jax.config.jax_enable_x64:
        raise ValueError(
            "dtype=float64 needs jax.config.update('jax_enable_x64', True) first; otherwise JAX would "
            "silently compute the kernel model in float32. Enable x64 or pass dtype=np.float32."
        )
    return dt


def _describe_arch(arch: Any) -> dict[str, Any]:
    if isinstance(arch, ArchSpec):
        return arch.to_config()
    return {"net": f"{type(arch).__module__}.{type(arch).__qualname__}"}


def _arch_key(arch: Any, kernel: str) -> dict[str, Any]:
    """What a kernel of this name depends on: the analytic NTK not on d (nor on the width in
    the "ntk" parameterisation); an empirical NTK on every field, as it comes from parameters."""
    if isinstance(arch, ArchSpec) and kernel == "analytic":
        return arch.kernel_config()
    return _describe_arch(arch)


def _check_arch(arch: Any) -> None:
    check_type(
        "arch",
        arch,
        (ArchSpec, nn.Module),
        "an architecture declaration (e.g. MLP(...) from stepwise_ntk.kernels) or, for empirical "
        "kernels, a flax.linen Module",
    )


# ------------------------------------------------------------------------------ initialisation


class NetworkInit(NamedTuple):
    """A network at initialisation and its initial embeddings (:func:`init_network`).

    Attributes:
      params: ``θ_0``, the variables ``{'params': ...}`` (pass as ``train(..., init_params=)``).
      F0: ``(2n, d)`` initial embeddings ``α · net(X; θ_0)`` of the views.
      F0_test: ``(m, d)`` those of the test views, or None.
    """

    params: Any
    F0: jax.Array
    F0_test: jax.Array | None


def _net(arch: Any, dtype: np.dtype) -> nn.Module:
    return arch.flax(param_dtype=dtype) if isinstance(arch, ArchSpec) else arch


def init_network(arch: Any, views: Any, test_views: Any = None, *, alpha: float, key: jax.Array,
                 batch_size: int = 2048) -> NetworkInit:
    """Initialise ``net`` and embed the views with ``f = α · net``, in the views' dtype.

    Args:
      arch: architecture declaration (its Flax twin ``arch.flax(views.dtype)`` is used) or
        a stateless ``flax.linen`` module.
      views: ``(2n, ...)`` training views; test_views: ``(m, ...)`` held-out views or None.
      alpha: output scale α (as ``TrainSettings.alpha``).
      key: PRNG key of the initialisation (same key → same ``θ_0``).
      batch_size: rows per forward pass.

    Returns:
      :class:`NetworkInit`; train with ``init_params=init.params`` so that the run starts
      from exactly these embeddings.
    """
    _check_arch(arch)
    alpha = _check_alpha(alpha)
    views = _host_views("views", views)
    if test_views is not None:
        test_views = np.asarray(check_views("test_views", test_views, like=views, same_dtype=True))
    check_positive_int("batch_size", batch_size)
    if isinstance(arch, ArchSpec):
        arch.check_input_shape(tuple(views.shape[1:]))
    net = _net(arch, views.dtype)
    params = jax.jit(net.init)(key, jnp.asarray(views[:1]))
    apply = jax.jit(net.apply)
    # Views and test views in one pass (one compilation), in chunks of batch_size rows.
    x = views if test_views is None else np.concatenate([views, test_views])
    parts = [apply(params, jnp.asarray(x[i:i + batch_size])) for i in range(0, x.shape[0], batch_size)]
    F = jnp.concatenate(parts) if len(parts) > 1 else parts[0]
    F = jnp.asarray(alpha, F.dtype) * F
    N = views.shape[0]
    return NetworkInit(params=params, F0=F[:N], F0_test=None if test_views is None else F[N:])


def _check_params_match(arch: Any, params: Any, input_shape: tuple[int, ...], what: str) -> None:
    """ValueError unless ``params`` has the tree structure and shapes of ``arch``'s twin."""
    leaves = jax.tree.leaves(params)
    if not leaves:
        raise ValueError(f"{what} holds no arrays; pass the network's variables {{'params': ...}}.")
    dtype = np.dtype(leaves[0].dtype)
    net = _net(arch, dtype)
    x = jax.ShapeDtypeStruct((1, *input_shape), dtype)
    try:
        expected = jax.eval_shape(net.init, jax.random.key(0), x)
    except Exception as err:  # noqa: BLE001 - any failure to build the twin on these inputs
        raise ValueError(f"cannot initialise {_describe_arch(arch)} on inputs of shape {input_shape}: {err}") from err

    def shapes(tree):
        flat = jax.tree_util.tree_flatten_with_path(tree)[0]
        return {jax.tree_util.keystr(p): tuple(np.shape(v)) for p, v in flat}

    got, want = shapes(params), shapes(expected)
    if got != want:
        missing = sorted(set(want) - set(got))[:4]
        extra = sorted(set(got) - set(want))[:4]
        wrong = sorted(k for k in set(got) & set(want) if got[k] != want[k])[:4]
        detail = "; ".join(
            s for s in (
                f"missing {missing}" if missing else "",
                f"unexpected {extra}" if extra else "",
                ", ".join(f"{k}: {got[k]} instead of {want[k]}" for k in wrong),
            ) if s
        )
        raise ValueError(
            f"{what} do not belong to {_describe_arch(arch)} ({detail}). The parameters must come from the "
            f"network of that architecture (same registry entry, width, depth and d)."
        )


# ------------------------------------------------------------------------------ kernels


@dataclasses.dataclass(frozen=True)
class NetworkKernel:
    """The per-output NTK ``Θ`` of a network on the views (before the factor α²).

    Attributes:
      kernel: which NTK, one of :data:`KERNELS`.
      arch: the architecture (declaration or Flax module) it was computed for.
      K: ``(2n, 2n)`` ``Θ(X, X)`` on the views ``[x_1..x_n, x'_1..x'_n]``.
      K_test: ``(m, 2n)`` ``Θ(X_test, X)``, or None.
      input_shape: the shape of one view.
      views_fingerprint, test_fingerprint: sha256 of the views (in the kernel dtype), so a
        kernel is never used with other views.
    """

    kernel: str
    arch: Any
    K: np.ndarray
    K_test: np.ndarray | None
    input_shape: tuple[int, ...]
    views_fingerprint: str
    test_fingerprint: str | None

    @property
    def n_pairs(self) -> int:
        return self.K.shape[0] // 2

    def check_arch(self, arch: Any) -> None:
        """ValueError unless ``arch`` is the architecture this kernel belongs to."""
        mine, theirs = _arch_key(self.arch, self.kernel), _arch_key(arch, self.kernel)
        if mine == theirs:
            return
        diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        shown = ", ".join(f"{k}: {mine.get(k)!r} (kernel) vs {theirs.get(k)!r}" for k in diff[:6])
        raise ValueError(
            f"the {self.kernel} kernel was computed for {_describe_arch(self.arch)} but is used with "
            f"{_describe_arch(arch)} ({shown}). The kernel model of a network needs the NTK of that same "
            f"architecture: recompute it with network_kernel(arch, ...) or pass the matching arch."
        )


def _fingerprint(x: np.ndarray | None, dtype: np.dtype) -> str | None:
    return None if x is None else array_fingerprint(np.asarray(x, dtype))


def network_kernel(
    arch: Any,
    views: Any,
    test_views: Any = None,
    *,
    kernel: str = "analytic",
    params: Any = None,
    dtype: Any = np.float64,
    progress: bool = False,
    **kernel_options: Any,
) -> NetworkKernel:
    """The per-output NTK ``Θ`` of ``arch`` on the views (and held-out views).

    Args:
      arch: architecture declaration (``MLP``, ``MyrtleCNN``, ``WideResNet``); for the
        empirical kernels also any stateless ``flax.linen`` module.
      views: ``(2n, ...)`` training views; test_views: ``(m, ...)`` or None.
      kernel: ``"analytic"`` (infinite width), ``"empirical_init"`` or ``"empirical_final"``
        (the empirical NTK at ``params``: ``θ_0`` or the trained parameters).
      params: the network's variables, required for the empirical kernels (cast to ``dtype``).
      dtype: float32 or float64, the precision of the kernel.
      progress: progress bar over kernel blocks.
      **kernel_options: passed on to ``analytic_ntk`` / ``empirical_ntk`` (``batch_size``,
        ``memory_budget_bytes``, ``devices``; ``cache_dir`` for analytic kernels).

    Returns:
      :class:`NetworkKernel` (``K`` and ``K_test`` as numpy arrays of ``dtype``).

    Raises:
      TypeError: ``arch`` is neither an architecture declaration nor a Flax module.
      ValueError: unknown kernel; params missing (empirical) or given (analytic); params of
        another architecture; NaN/Inf in the views; inputs ``arch`` does not take.
    """
    _check_arch(arch)
    check_choice("kernel", kernel, KERNELS)
    dt = _check_dtype(dtype)
    views = _host_views("views", views)
    if test_views is not None:
        test_views = _host_views("test_views", test_views, like=views)
    xs, xt = np.asarray(views, dt), None if test_views is None else np.asarray(test_views, dt)
    input_shape = tuple(views.shape[1:])
    if kernel == "analytic":
        if not isinstance(arch, ArchSpec):
            raise ValueError(
                "an analytic (infinite-width) kernel needs an architecture declaration such as MLP(...); a bare "
                "Flax module has no known infinite-width limit. Use kernel='empirical_init' with its params."
            )
        if params is not None:
            raise ValueError("params are not used by the analytic kernel; pass them only for the empirical kernels.")
        K = analytic_ntk(arch, xs, dtype=dt, progress=progress, **kernel_options)
        K_test = None if xt is None else analytic_ntk(arch, xt, xs, dtype=dt, progress=progress, **kernel_options)
    else:
        if params is None:
            raise ValueError(
                f"kernel={kernel!r} is the empirical NTK at given parameters: pass params= (θ_0 for "
                f"'empirical_init', e.g. init_network(...).params; the trained TrainResult.params for "
                f"'empirical_final')."
            )
        if isinstance(arch, ArchSpec):
            arch.check_input_shape(input_shape)
        _check_params_match(arch, params, input_shape, "params")
        params = jax.tree.map(lambda a: jnp.asarray(a, dt) if jnp.issubdtype(a.dtype, jnp.floating) else a, params)
        net = _net(arch, dt)
        K = empirical_ntk(net, params, xs, progress=progress, **kernel_options)
        K_test = None if xt is None else empirical_ntk(net, params, xt, xs, progress=progress, **kernel_options)
    return NetworkKernel(
        kernel=kernel, arch=arch, K=np.asarray(K, dt), K_test=None if K_test is None else np.asarray(K_test, dt),
        input_shape=input_shape, views_fingerprint=_fingerprint(xs, dt), test_fingerprint=_fingerprint(xt, dt),
    )


# ------------------------------------------------------------------------------ prediction


@dataclasses.dataclass(frozen=True)
class Prediction:
    """The kernel-model theory of one training run (:func:`predict_run`). ``N = 2n`` views.

    Attributes:
      network_kernel: the :class:`NetworkKernel` ``Θ`` it was built from (``kernel`` is its
        name, one of :data:`KERNELS`).
      alpha: the output scale α; the kernel model's kernel is ``K = α² Θ``.
      d: embedding dimension.
      K: ``(N, N)`` ``α² Θ`` on the views; K_test: ``(m, N)`` ``α² Θ(X_test, X)`` or None.
      gammas: ``(N,)`` contrastive eigenvalues of ``K``, descending.
      lambda0: ``(d,)`` initial eigenvalues ``λ_j(0) = γ_j ‖m_j(0)‖²`` of the top modes.
      step_times: ``(d,)`` closed-form step times ``ln(1/λ_j(0) − 1)/(8γ_j)``, mode order.
      times: ``(T,)`` effective times of the trajectory.
      loss, eigenvalues: ``(T,)``, ``(T, d)``: the kernel flow from the network's ``F0``.
      embeddings: ``(N, d)`` the flow's view embeddings at ``times[-1]``.
      flow_test_embeddings: ``(m, d)`` the flow's test embeddings at ``times[-1]`` (from
        ``F0_test``), or None.
      test_embeddings: ``(m, d)`` closed-form final test embeddings (top-``d`` modes,
        ``diag(γ^{-1/2}) g(x)``), or None.
      closed_form_embeddings: ``(N, d)`` the same on the views.
      trajectory: the solver's :class:`Trajectory`.
    """

    network_kernel: NetworkKernel
    alpha: float
    d: int
    K: jax.Array
    K_test: jax.Array | None
    gammas: jax.Array
    lambda0: jax.Array
    step_times: jax.Array
    times: jax.Array
    loss: jax.Array
    eigenvalues: jax.Array
    embeddings: jax.Array
    flow_test_embeddings: jax.Array | None
    test_embeddings: jax.Array | None
    closed_form_embeddings: jax.Array
    trajectory: Trajectory

    @property
    def kernel(self) -> str:
        """Which NTK the prediction uses, one of :data:`KERNELS`."""
        return self.network_kernel.kernel

    @property
    def n_pairs(self) -> int:
        return self.network_kernel.n_pairs

    @property
    def gap(self) -> float:
        """``γ_d / γ_{d+1}``: how well the predicted top-``d`` subspace is defined (∞ if γ_{d+1} ≤ 0)."""
        g = np.asarray(self.gammas, np.float64)
        return float(g[self.d - 1] / g[self.d]) if self.d < g.size and g[self.d] > 0 else float("inf")


def predict_run(
    arch: Any,
    views: Any,
    test_views: Any,
    F0: Any,
    times: Any,
    *,
    alpha: float,
    kernel: str | NetworkKernel = "analytic",
    params: Any = None,
    F0_test: Any = None,
    dtype: Any = np.float64,
    solver_settings: SolverSettings = _DEFAULT_SOLVER,
    progress: bool = False,
    **kernel_options: Any,
) -> Prediction:
    """The kernel-model theory of a run of ``f = α · net`` from its initial embeddings ``F0``.

    Builds ``K = α² Θ`` (``Θ`` as chosen by ``kernel``), integrates ``dF/dt = −K ∇_F L``
    (Barlow Twins) from ``F0`` at ``times`` (:func:`stepwise_ntk.solver.solve`, also carrying
    the test views from ``F0_test``), and adds the closed-form small-initialisation theory:
    ``γ``, ``λ_j(0)``, step times and the final embeddings of the top ``d`` modes.

    Args:
      arch: the architecture that is trained (declaration, or a Flax module for empirical
        kernels).
      views: ``(2n, ...)`` the training views; test_views: ``(m, ...)`` held-out views or None.
      F0: ``(2n, d)`` the network's initial embeddings ``α · net(X; θ_0)``
        (:func:`init_network`); it fixes the embedding dimension ``d`` (= ``arch.d``).
      times: ``(T,)`` increasing effective times ≥ 0 (learning rate × step), e.g. the run's
        ``effective_times``.
      alpha: output scale α of the run.
      kernel: ``"analytic"``, ``"empirical_init"``, ``"empirical_final"``, or a precomputed
        :class:`NetworkKernel` of the same architecture and views.
      params: the parameters for an empirical kernel (``θ_0`` or the trained ones).
      F0_test: ``(m, d)`` initial test embeddings ``α · net(X_test; θ_0)``; default 0.
      dtype: precision of the kernel model (float64 by default; needs x64).
      solver_settings: :class:`SolverSettings` of the flow.
      progress: progress bars of the kernel computation and of the flow's integrations.
      **kernel_options: see :func:`network_kernel`.

    Raises:
      TypeError: ``arch``, ``kernel`` or ``alpha`` of the wrong type.
      ValueError: a kernel of another architecture or of other views; ``F0``'s ``d``
        inconsistent with ``arch``, or larger than the number of positive ``γ``; NaN/Inf in
        the views or ``F0``; a not-small initialisation (``λ_j(0) ≥ 1``); params missing/extra.
    """
    _check_arch(arch)
    alpha = _check_alpha(alpha)
    dt = _check_dtype(dtype)
    views = _host_views("views", views)
    if test_views is not None:
        test_views = _host_views("test_views", test_views, like=views)
    n = views.shape[0] // 2
    check_embeddings(F0, n, "F0")
    d = int(np.shape(F0)[1])
    if isinstance(arch, ArchSpec) and arch.d != d:
        raise ValueError(
            f"F0 has d = {d} columns but the architecture has d = {arch.d} outputs; pass the initial "
            f"embeddings of this network (init_network(arch, ...).F0)."
        )
    # The checked values, in the kernel model's precision (a host cast, as the kernel's).
    F0 = jnp.asarray(np.asarray(F0).astype(dt))
    if F0_test is not None:
        if test_views is None:
            raise ValueError("F0_test was given without test_views; pass the test views too.")
        m = test_views.shape[0]
        what = f"(m, d) = ({m}, {d}), the initial embeddings of the test views"
        F0_test = np.asarray(check_array("F0_test", F0_test, ndim=2, what=what,
                                         hint="pass the network's initial test embeddings."))
        if F0_test.shape != (m, d):
            raise ValueError(f"F0_test must be {what}, got shape {F0_test.shape}.")
        F0_test = jnp.asarray(F0_test.astype(dt))

    if isinstance(kernel, NetworkKernel):
        if params is not None or kernel_options:
            raise ValueError(
                "params and kernel options are for computing a kernel; a precomputed NetworkKernel takes neither."
            )
        kernel.check_arch(arch)
        if kernel.views_fingerprint != _fingerprint(views, kernel.K.dtype):
            raise ValueError("the NetworkKernel was computed on other views than these; recompute it on these views.")
        if (test_views is None) != (kernel.K_test is None) or (
            test_views is not None and kernel.test_fingerprint != _fingerprint(test_views, kernel.K.dtype)
        ):
            raise ValueError(
                "the NetworkKernel's test kernel does not belong to these test_views (computed on other held-out "
                "views, or with/without test views); recompute it with these test_views."
            )
        if kernel.K.dtype != dt:
            raise ValueError(f"the NetworkKernel is {kernel.K.dtype} but dtype={dt}; pass dtype={kernel.K.dtype}.")
        nk = kernel
    else:
        check_type("kernel", kernel, str, f"one of {KERNELS} or a NetworkKernel")
        nk = network_kernel(arch, views, test_views, kernel=kernel, params=params, dtype=dt, progress=progress,
                            **kernel_options)

    a2 = alpha * alpha
    K = jnp.asarray(a2 * nk.K)
    K_test = None if nk.K_test is None else jnp.asarray(a2 * nk.K_test)
    es = contrastive_eigensystem(K, n)
    check_enough_modes(es, d)
    lam0 = initial_eigenvalues(es, F0)
    t_steps = step_times(es, F0)
    traj = solve(K, n, F0, times, K_test=K_test, F0_test=F0_test, settings=solver_settings, progress=progress)
    return Prediction(
        network_kernel=nk, alpha=alpha, d=d, K=K, K_test=K_test, gammas=es.gammas, lambda0=lam0, step_times=t_steps,
        times=traj.times, loss=traj.loss, eigenvalues=traj.eigenvalues, embeddings=traj.embeddings,
        flow_test_embeddings=None if traj.test_embeddings is None else traj.test_embeddings[-1],
        test_embeddings=None if K_test is None else final_embeddings(es, K_test, d),
        closed_form_embeddings=final_embeddings(es, None, d), trajectory=traj,
    )


# ------------------------------------------------------------------------------ comparison


@dataclasses.dataclass(frozen=True)
class RunComparison:
    """A trained network against its kernel-model prediction (:func:`compare_run`).

    Attributes:
      kernel: which NTK the prediction used, one of :data:`KERNELS`.
      network_step_times, theory_step_times: ``(d,)`` crossings of 1/2 by the ``j``-th
        largest eigenvalue of ``C`` (network records; the kernel flow from the same ``F0``).
      step_time_ratios: ``(d,)`` network / theory (NaN where a curve never crosses).
      eigenvalue_error_max, eigenvalue_error_rms: :func:`eigenvalue_trajectory_error`.
      test_alignment: subspace alignment of the network's final test embeddings with the
        predicted top-``d`` modes (closed form), or None without test views.
      test_cosines: the principal cosines behind it.
      test_alignment_flow: the same against the kernel flow's final test embeddings.
      test_procrustes_error, test_procrustes_error_flow: Procrustes errors
        (:func:`stepwise_ntk.theory.procrustes_error`) against the same two.
      train_alignment: alignment on the training views with the closed-form modes.
      final_eigenvalues: ``(d,)`` the network's last recorded eigenvalues of ``C``.
    """

    kernel: str
    network_step_times: np.ndarray
    theory_step_times: np.ndarray
    step_time_ratios: np.ndarray
    eigenvalue_error_max: float
    eigenvalue_error_rms: float
    test_alignment: float | None
    test_cosines: np.ndarray | None
    test_alignment_flow: float | None
    test_procrustes_error: float | None
    test_procrustes_error_flow: float | None
    train_alignment: float
    final_eigenvalues: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (arrays as lists, NaN as None)."""
        def conv(v):
            if v is None:
                return None
            a = np.asarray(v, np.float64)
            if a.ndim == 0:
                return float(a) if np.isfinite(a) else None
            return [float(x) if np.isfinite(x) else None for x in a]

        return {f.name: (getattr(self, f.name) if f.name == "kernel" else conv(getattr(self, f.name)))
                for f in dataclasses.fields(self)}


def compare_run(prediction: Prediction, result: Any, *, arch: Any) -> RunComparison:
    """Hold a trained run against its prediction: step times, eigenvalue curves, embeddings.

    Args:
      prediction: :class:`Prediction` of the run (same views, ``F0``, α).
      result: the :class:`stepwise_ntk.training.TrainResult` of training ``arch``.
      arch: the architecture that was trained (declaration or module). It must be the one the
        prediction's kernel belongs to, and ``result.params`` must be its parameters.

    Returns:
      :class:`RunComparison`. Times are effective times (learning rate × step) on both sides.

    Raises:
      TypeError: ``prediction`` not a :class:`Prediction`, ``result`` not a ``TrainResult``.
      ValueError: architecture/kernel mismatch, parameters of another network, different
        numbers of views / test views / ``d``, or a diverged run (nothing to compare: the
        run's records before the divergence are in ``result``).
    """
    check_type("prediction", prediction, Prediction, "a Prediction (from predict_run)")
    check_type("result", result, TrainResult, "a TrainResult (from stepwise_ntk.training.train)")
    _check_arch(arch)
    prediction.network_kernel.check_arch(arch)
    _check_params_match(arch, result.params, prediction.network_kernel.input_shape, "the run's params")
    if result.diverged_at is not None:
        raise ValueError(
            f"the run diverged at step {result.diverged_at} (loss {result.diverged_loss}); its records before that "
            f"step are kept in the TrainResult, but there are no final embeddings to compare. Lower learning_rate·α²."
        )
    n, d = prediction.n_pairs, prediction.d
    F_net = np.asarray(result.train_embeddings)
    if F_net.shape != (2 * n, d):
        raise ValueError(
            f"the run's train embeddings are {F_net.shape} but the prediction is for (2n, d) = ({2 * n}, {d}): "
            f"train and predict on the same views with the same d."
        )
    net_t, net_l = np.asarray(result.effective_times), np.asarray(result.eigenvalues)
    th_t, th_l = np.asarray(prediction.times), np.asarray(prediction.eigenvalues)
    ratios = step_time_ratios(net_t, net_l, th_t, th_l)
    pos_n, pos_t = net_t > 0, th_t > 0
    err = eigenvalue_trajectory_error(net_t, net_l, th_t, th_l)
    f64 = np.float64
    train_align = float(subspace_alignment(F_net.astype(f64), np.asarray(prediction.closed_form_embeddings, f64)))
    test = dict(test_alignment=None, test_cosines=None, test_alignment_flow=None, test_procrustes_error=None,
                test_procrustes_error_flow=None)
    if prediction.test_embeddings is not None:
        if result.test_embeddings is None:
            raise ValueError(
                "the prediction has test views but the run has no test_embeddings; train with test_views=."
            )
        A = np.asarray(result.test_embeddings).astype(f64)
        B = np.asarray(prediction.test_embeddings, f64)
        B_flow = np.asarray(prediction.flow_test_embeddings, f64)
        if A.shape != B.shape:
            raise ValueError(
                f"the run's test embeddings are {A.shape} but the prediction's {B.shape}; use the same test views."
            )
        test = dict(
            test_alignment=float(subspace_alignment(A, B)),
            test_cosines=np.asarray(principal_cosines(A, B)),
            test_alignment_flow=float(subspace_alignment(A, B_flow)),
            test_procrustes_error=float(procrustes_error(A, B)),
            test_procrustes_error_flow=float(procrustes_error(A, B_flow)),
        )
    return RunComparison(
        kernel=prediction.kernel,
        network_step_times=crossing_times(net_t[pos_n], net_l[pos_n]),
        theory_step_times=crossing_times(th_t[pos_t], th_l[pos_t]),
        step_time_ratios=ratios,
        eigenvalue_error_max=err.max_abs,
        eigenvalue_error_rms=err.rms,
        train_alignment=train_align,
        final_eigenvalues=net_l[-1].astype(f64),
        **test,
    )
