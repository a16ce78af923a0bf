"""The jitted inner loop of finite-network training: chunks of steps, scanned or stepped.

One *iteration* ``s`` of the loop evaluates the objective at the current parameters
``θ_s``, records if ``s`` is a record step, then (if ``s < steps``) applies one optimiser
update to get ``θ_{s+1}``. A run of ``steps`` updates therefore has ``steps + 1``
iterations and its last record sees the final parameters.

A chunk is ``chunk_size`` iterations in one ``lax.scan``. Everything that changes from
chunk to chunk (the iteration counter, the last step, the record steps, α, the
divergence threshold) is traced data, so one compilation serves every chunk of a run and
every run with the same program and shapes. Iterations past the last step, or after a
divergence, are no-ops (``lax.cond``), which is how the final partial chunk is handled.

Records go into preallocated buffers in the scan carry, written under ``lax.cond`` only at
record steps, so the eigenvalues of ``C`` cost nothing on other steps.

Two ways to run a chunk, with the same iterations:

* :func:`run_chunk`: the chunk in one jitted ``lax.scan`` (no Python per step);
* :func:`run_chunk_stepwise`: a Python loop of one jitted iteration (:func:`run_step`,
  state buffers donated), in which every ``lax.cond`` is replaced by computing both
  branches and selecting (:func:`_select`), so that the network's convolutions sit in the
  top-level computation. XLA's CPU backend runs a convolution inside a nested computation
  (a ``while`` body of a scan, a ``cond`` branch) 15-40× slower than the same convolution at
  the top level of a jitted function, which made a scanned CNN step as slow as forty
  dense steps. The record (the evaluation embeddings and the eigenvalues of ``C``) is in
  a second compiled variant of the step, called only at record steps, which Python knows.
  Iterations past the last step are not run at all.

:func:`stepwise_wanted` chooses: the stepped loop for a network with convolutions on a
CPU, the scan otherwise (a dense step is faster scanned: no dispatch per step).

Divergence: a non-finite loss, or one above the threshold, at iteration ``s`` freezes the
state (no record, no update) and sets ``diverged_at = s``. The carry keeps the previous
iteration's parameters, so the caller gets the last parameters whose loss was fine.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax import lax

from stepwise_ntk.training._records import cross_correlation_eigenvalues

__all__ = [
    "Program",
    "LoopData",
    "LoopState",
    "make_optimizer",
    "init_state",
    "run_chunk",
    "run_step",
    "run_chunk_stepwise",
    "stepwise_wanted",
    "embed",
]

OPTIMIZERS = ("sgd", "momentum", "adam")


@dataclasses.dataclass(frozen=True)
class Program:
    """What the compiled loop is specialised on (hashable: the ``jit`` static argument).

    ``net`` is a stateless ``flax.linen`` module: ``net.apply(variables, x)`` maps a
    batch of views to ``(batch, d)`` embeddings. ``loss_fn`` maps ``F: (2n, d)`` to a
    scalar. ``augment(key, images) -> (2B, ...)`` views, or None to train on fixed views.
    """

    net: Any
    loss_fn: Callable[[jax.Array], jax.Array]
    optimizer: str | optax.GradientTransformation
    learning_rate: float
    momentum: float
    batch_size: int | None
    chunk_size: int
    augment: Callable[[jax.Array, jax.Array], jax.Array] | None
    record_embeddings: bool

    @property
    def full_batch_fixed_views(self) -> bool:
        # Then the training batch *is* the evaluation set and the step's F can be recorded.
        return self.batch_size is None and self.augment is None


@partial(
    jax.tree_util.register_dataclass,
    data_fields=["views", "images", "record_steps", "stop", "alpha", "threshold"],
    meta_fields=[],
)
@dataclasses.dataclass(frozen=True)
class LoopData:
    """Traced, read-only inputs of a chunk.

    ``views: (2n, ...)`` evaluation (and, in fixed-view mode, training) views;
    ``images: (N, ...)`` or None, the source of fresh augmentations;
    ``record_steps: (R,)`` int32; ``stop``: last step (int32 scalar);
    ``alpha``, ``threshold``: float scalars (cast to the embedding/loss dtype inside).
    """

    views: jax.Array
    images: jax.Array | None
    record_steps: jax.Array
    stop: jax.Array
    alpha: jax.Array
    threshold: jax.Array


@partial(
    jax.tree_util.register_dataclass,
    data_fields=[
        "params",
        "prev_params",
        "opt_state",
        "key",
        "it",
        "diverged_at",
        "bad_loss",
        "rec_loss",
        "rec_eigs",
        "rec_embeddings",
    ],
    meta_fields=[],
)
@dataclasses.dataclass(frozen=True)
class LoopState:
    """The scan carry, and exactly what a checkpoint stores.

    ``params`` are ``θ_it``; ``prev_params`` are ``θ_{it-1}`` (``θ_0`` at the start);
    ``it``: next iteration to run (int32); ``diverged_at``: -1 or the first bad
    iteration; ``bad_loss``: its loss; ``rec_*``: record buffers ``(R,)``, ``(R, d)``
    and ``(R, 2n, d)`` or None, NaN where not (yet) recorded.
    """

    params: Any
    prev_params: Any
    opt_state: Any
    key: jax.Array
    it: jax.Array
    diverged_at: jax.Array
    bad_loss: jax.Array
    rec_loss: jax.Array
    rec_eigs: jax.Array
    rec_embeddings: jax.Array | None


def _standard_promotion(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """``tx`` with JAX's standard dtype promotion inside it.

    optax mixes its int32 step count with floats (Adam's bias correction ``1 − β^count``),
    which ``jax_numpy_dtype_promotion="strict"`` rejects; the promotion is optax's own
    business, so it runs under the standard rules whatever the caller's setting.
    """

    def init(params):
        with jax.numpy_dtype_promotion("standard"):
            return tx.init(params)

    def update(updates, state, params=None):
        with jax.numpy_dtype_promotion("standard"):
            return tx.update(updates, state, params)

    return optax.GradientTransformation(init, update)


def make_optimizer(program: Program) -> optax.GradientTransformation:
    """The optax transformation for ``program.optimizer`` (a name or a transformation)."""
    opt = program.optimizer
    if isinstance(opt, optax.GradientTransformation):
        return _standard_promotion(opt)
    if opt == "sgd":
        return _standard_promotion(optax.sgd(program.learning_rate))
    if opt == "momentum":
        return _standard_promotion(optax.sgd(program.learning_rate, momentum=program.momentum))
    if opt == "adam":
        return _standard_promotion(optax.adam(program.learning_rate))
    raise ValueError(  # TrainSettings refuses other names; a Program built by hand may not
        f"optimizer must be one of {OPTIMIZERS} or an optax.GradientTransformation, got {opt!r}."
    )


def _embed(program: Program, variables: Any, x: jax.Array, alpha: jax.Array) -> jax.Array:
    out = program.net.apply(variables, x)
    return alpha.astype(out.dtype) * out


@partial(jax.jit, static_argnums=0)
def embed(program: Program, variables: Any, x: jax.Array, alpha: jax.Array) -> jax.Array:
    """Embeddings ``α · net(x; θ)``: ``(batch, d)`` for ``x: (batch, ...)``."""
    return _embed(program, variables, x, alpha)


def _training_batch(program: Program, data: LoopData, key: jax.Array) -> jax.Array:
    """This iteration's ``(2B, ...)`` views in pairing order."""
    b = program.batch_size
    if program.augment is None:
        if b is None:
            return data.views
        n = data.views.shape[0] // 2
        idx = jax.random.choice(key, n, (b,), replace=False)
        return jnp.concatenate([data.views[idx], data.views[idx + n]])
    pick_key, aug_key = jax.random.split(key)
    images = data.images
    if b is not None:
        images = images[jax.random.choice(pick_key, images.shape[0], (b,), replace=False)]
    return program.augment(aug_key, images)


def init_state(
    program: Program, data: LoopData, key: jax.Array, variables: Any | None
) -> LoopState:
    """The state before iteration 0: ``θ_0`` (``net.init`` or ``variables``), empty records."""
    init_key, train_key = jax.random.split(key)
    if variables is None:
        variables = program.net.init(init_key, data.views[:1])
    extra = sorted(set(variables) - {"params"}) if hasattr(variables, "keys") else []
    if extra:
        raise ValueError(
            f"the network has non-parameter state {extra}; training supports stateless modules "
            "only (apply(variables, x) with variables = {'params': ...}). Remove BatchNorm/"
            "mutable collections from the architecture."
        )
    opt_state = make_optimizer(program).init(variables)
    f = jax.eval_shape(lambda v: _embed(program, v, data.views, data.alpha), variables)
    if len(f.shape) != 2 or f.shape[0] != data.views.shape[0]:
        raise ValueError(
            f"the network must map (batch, ...) views to (batch, d) embeddings; it maps "
            f"{data.views.shape} to {f.shape}. Flatten or pool its output to (batch, d)."
        )
    loss = jax.eval_shape(program.loss_fn, f)
    if loss.shape != ():
        raise ValueError(
            f"loss_fn must return a scalar for F: {f.shape}, it returned shape {loss.shape}."
        )
    n_rec = data.record_steps.shape[0]
    nan = partial(jnp.full, fill_value=jnp.nan)
    return LoopState(
        params=variables,
        prev_params=variables,
        opt_state=opt_state,
        key=train_key,
        it=jnp.zeros((), jnp.int32),
        diverged_at=jnp.full((), -1, jnp.int32),
        bad_loss=nan((), dtype=loss.dtype),
        rec_loss=nan((n_rec,), dtype=loss.dtype),
        rec_eigs=nan((n_rec, f.shape[1]), dtype=f.dtype),
        rec_embeddings=nan((n_rec, *f.shape), dtype=f.dtype) if program.record_embeddings else None,
    )


def _select(pred: jax.Array, on_true: Callable, on_false: Callable, operand: Any) -> Any:
    """``lax.cond(pred, on_true, on_false, operand)`` computed as both branches and a select.

    Same values as the ``cond`` (a select picks, it does not mix), no nested computation.
    """
    a, b = on_true(operand), on_false(operand)
    return jax.tree.map(lambda x, y: jnp.where(pred, x, y), a, b)


def _record(
    program: Program,
    data: LoopData,
    state: LoopState,
    F: jax.Array,
    loss: jax.Array,
    cond: Callable = lax.cond,
) -> LoopState:
    """Write this iteration's loss and eigenvalues of C (on ``data.views``) into the buffers."""
    idx = jnp.minimum(jnp.searchsorted(data.record_steps, state.it), data.record_steps.shape[0] - 1)
    hit = data.record_steps[idx] == state.it

    def write(state: LoopState) -> LoopState:
        if program.full_batch_fixed_views:
            f, value = F, loss
        else:
            f = _embed(program, state.params, data.views, data.alpha)
            value = program.loss_fn(f)
        emb = state.rec_embeddings
        if emb is not None:
            emb = emb.at[idx].set(f)
        return dataclasses.replace(
            state,
            rec_loss=state.rec_loss.at[idx].set(value.astype(state.rec_loss.dtype)),
            rec_eigs=state.rec_eigs.at[idx].set(cross_correlation_eigenvalues(f)),
            rec_embeddings=emb,
        )

    return cond(hit, write, lambda s: s, state)


def _iteration(
    program: Program,
    data: LoopData,
    state: LoopState,
    cond: Callable = lax.cond,
    record: bool = True,
) -> LoopState:
    """One iteration; ``cond`` is ``lax.cond`` or :func:`_select`; ``record=False`` never records."""
    tx = make_optimizer(program)
    key, sub = jax.random.split(state.key)
    batch = _training_batch(program, data, sub)

    def objective(variables: Any) -> tuple[jax.Array, jax.Array]:
        F = _embed(program, variables, batch, data.alpha)
        return program.loss_fn(F), F

    (loss, F), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    bad = ~jnp.isfinite(loss) | (loss > data.threshold.astype(loss.dtype))

    def on_bad(state: LoopState) -> LoopState:
        return dataclasses.replace(
            state, diverged_at=state.it, bad_loss=loss.astype(state.bad_loss.dtype)
        )

    def on_good(state: LoopState) -> LoopState:
        if record:
            state = _record(program, data, state, F, loss, cond)

        def update(args):
            params, opt_state = args
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state

        params, opt_state = cond(
            state.it < data.stop, update, lambda a: a, (state.params, state.opt_state)
        )
        return dataclasses.replace(
            state,
            params=params,
            prev_params=state.params,
            opt_state=opt_state,
            key=key,
            it=state.it + 1,
        )

    return cond(bad, on_bad, on_good, state)


def _live(data: LoopData, state: LoopState) -> jax.Array:
    return (state.it <= data.stop) & (state.diverged_at < 0)


@partial(jax.jit, static_argnums=0)
def run_chunk(program: Program, state: LoopState, data: LoopData) -> LoopState:
    """Run ``program.chunk_size`` iterations (no-ops past ``data.stop`` or after divergence)."""

    def body(state: LoopState, _: None) -> tuple[LoopState, None]:
        it = partial(_iteration, program, data)
        return lax.cond(_live(data, state), it, lambda s: s, state), None

    state, _ = lax.scan(body, state, None, length=program.chunk_size)
    return state


@partial(jax.jit, static_argnums=(0, 1), donate_argnums=2)
def run_step(program: Program, record: bool, state: LoopState, data: LoopData) -> LoopState:
    """One iteration without nested computations (a no-op past ``data.stop`` or after divergence).

    ``record``: whether this iteration may record (the variant with the evaluation embeddings
    and the eigenvalues of ``C``; it records only at a step of ``data.record_steps``). The
    buffers of ``state`` are donated: do not use ``state`` after the call.
    """
    it = partial(_iteration, program, data, cond=_select, record=record)
    return _select(_live(data, state), it, lambda s: s, state)


def run_chunk_stepwise(
    program: Program, state: LoopState, data: LoopData, it: int, stop: int, record_steps: Any
) -> LoopState:
    """What :func:`run_chunk` computes, as a Python loop of :func:`run_step`.

    ``it``: ``state.it`` (a Python int, so that nothing waits for the device); ``stop``:
    ``data.stop``; ``record_steps``: the host copy of ``data.record_steps``. Iterations past
    ``stop`` are skipped (they are no-ops); after a divergence the remaining ones are no-ops.
    ``state`` is consumed (donated).
    """
    records = {int(s) for s in record_steps}
    for s in range(it, min(it + program.chunk_size, stop + 1)):
        state = run_step(program, s in records, state, data)
    return state


def _has_convolution(jaxpr: Any) -> bool:
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "conv_general_dilated":
            return True
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(sub, "jaxpr", sub)  # ClosedJaxpr -> Jaxpr
                if hasattr(inner, "eqns") and _has_convolution(inner):
                    return True
    return False


def stepwise_wanted(program: Program, state: LoopState, data: LoopData) -> bool:
    """Whether to run chunks with :func:`run_chunk_stepwise`: a network with convolutions on a CPU.

    Read from the network's trace on the views (no computation) and the platform of the views.
    """
    platforms = {d.platform for d in data.views.devices()}
    if platforms != {"cpu"}:
        return False
    jaxpr = jax.make_jaxpr(lambda v: _embed(program, v, data.views, data.alpha))(state.params)
    return _has_convolution(jaxpr.jaxpr)
