"""Train the finite network behind a kernel: small initialisation, SSL loss, optax optimiser.

The network's embedding is ``f(x) = α · net(x; θ)`` with ``net`` any stateless
``flax.linen`` module mapping views ``(batch, ...)`` to ``(batch, d)`` (e.g.
``arch.flax()`` of an architecture declaration). Scaling the output by α is how small
initialisation is realised: the initial embeddings, hence the initial eigenvalues of
``C``, are ``O(α)`` and ``O(α²)``, and the network's NTK is ``α²`` times that of ``net``.
With a learning rate ``η`` the parameters follow gradient descent on
``L(α · net(X; θ))``; in function space that is ``dF/dt ≈ −K ∇_F L`` with
``K = α² Θ_net`` and **effective time** ``t = η · step`` (THEORY.md), which is what the
kernel model of the same network should be compared against. Since ``K ∝ α²``, the speed
(and the stability limit of gradient descent) is set by ``η α²``: choose
``learning_rate = c / α²`` to take steps of size ``c`` on the kernel ``Θ_net`` (at small α
the network leaves the kernel regime as the embeddings grow, so keep ``c`` well below the
kernel's stability limit; a diverging run is stopped and reported).

Two modes:

* full batch (``batch_size=None``, no ``augment``): every step uses the same fixed
  ``2n`` views: the setting the theory describes;
* minibatch: each step draws ``batch_size`` pairs at random (without replacement) from
  the fixed views, or, with ``augment(key, images) -> views``, fresh augmented views of
  ``batch_size`` random images (all images if ``batch_size=None``). Records are always
  taken on the fixed ``views``, so they are comparable across modes.

Records at log-spaced steps (:func:`record_steps`): the loss and the eigenvalues of
``C = Fᵀ Z F / (2n)`` on the fixed views (optionally the embeddings ``F`` themselves);
at the end, the embeddings of the training views and of held-out test views.

The loop runs in chunks of ``chunk_size`` steps (one compilation per program and shapes):
one jitted ``lax.scan`` per chunk, or, for a network with convolutions on a CPU (whose
convolutions are many times slower inside a scan), a Python loop of one jitted step per
iteration. It shows a progress bar, detects divergence and can checkpoint and resume with
a bit-identical result.

Example::

    >>> import numpy as np
    >>> from stepwise_ntk.kernels import MLP
    >>> from stepwise_ntk.training import TrainSettings, train
    >>> rng = np.random.default_rng(0)
    >>> views = rng.normal(size=(8, 4)).astype(np.float32)        # 2n = 8 views (n = 4 pairs)
    >>> test_views = rng.normal(size=(3, 4)).astype(np.float32)
    >>> arch = MLP(depth=1, width=16, d=2)
    >>> alpha = 0.125
    >>> settings = TrainSettings(learning_rate=0.0625 / alpha**2, steps=200, alpha=alpha, n_records=5)
    >>> result = train(arch, settings, views, test_views=test_views, progress=False)  # arch.flax() is trained
    >>> result.steps.tolist(), result.effective_times.tolist()    # t = learning_rate · step
    ([0, 1, 4, 14, 53, 200], [0.0, 4.0, 16.0, 56.0, 212.0, 800.0])
    >>> result.eigenvalues.shape, result.test_embeddings.shape, result.finished
    ((6, 2), (3, 2), True)
    >>> (result.eigenvalues > 0.5).sum(axis=1).tolist()          # the staircase: modes learned so far
    [0, 0, 0, 1, 1, 2]
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import warnings
from collections.abc import Callable
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from stepwise_ntk._checks import (
    check_array,
    check_bool,
    check_choice,
    check_number,
    check_positive_int,
    check_type,
    check_views,
)
from stepwise_ntk.losses import resolve_loss
from stepwise_ntk.training import _checkpoint
from stepwise_ntk.training import _loop as _train_loop
from stepwise_ntk.training._records import record_steps

__all__ = [
    "TrainSettings",
    "TrainResult",
    "TrainingDivergedWarning",
    "train",
]


class TrainingDivergedWarning(RuntimeWarning):
    """A training run stopped because its loss became non-finite or exceeded the threshold."""


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """Settings of one training run.

    Attributes:
      loss: "barlow_twins", "simclr" or "vicreg" (the solver's loss functions with their
        default settings), or a callable ``F: (2n, d) -> scalar`` (e.g. a
        ``functools.partial`` of one of them with other settings).
      optimizer: "sgd" (plain gradient descent: compare with gradient flow at
        ``t = learning_rate · step``), "momentum" (SGD with heavy-ball ``momentum``) or
        "adam"; or an ``optax.GradientTransformation`` (``learning_rate`` then only sets
        the effective-time axis).
      learning_rate: step size η.
      momentum: momentum coefficient for "momentum".
      steps: number of optimiser updates.
      alpha: output scale α: ``f = α · net``. Small α = small initialisation; the NTK of
        ``f`` is ``α²`` times that of ``net``, so scale ``learning_rate`` like ``1/α²``.
      batch_size: None = full batch; else the number of pairs (images) per step.
      n_records: number of log-spaced record steps (plus step 0; duplicates collapse).
      record_every: also record every this many steps (None: log-spaced only).
      record_embeddings: also record the embeddings ``F: (2n, d)`` at each record step.
      chunk_size: steps per chunk (the granularity of progress, divergence stops and
        checkpoints).
      seed: seed of the default PRNG key (initialisation, batches, augmentations).
      divergence_threshold: a loss above this (or a non-finite loss) stops the run;
        None: only non-finite losses. The Barlow Twins loss starts near ``d`` at small α.
    """

    loss: str | Callable[[jax.Array], jax.Array] = "barlow_twins"
    optimizer: str | optax.GradientTransformation = "sgd"
    learning_rate: float = 1e-2
    momentum: float = 0.9
    steps: int = 1000
    alpha: float = 1.0
    batch_size: int | None = None
    n_records: int = 100
    record_every: int | None = None
    record_embeddings: bool = False
    chunk_size: int = 100
    seed: int = 0
    divergence_threshold: float | None = 1e6

    def __post_init__(self) -> None:
        resolve_loss(self.loss)  # a name in stepwise_ntk.losses.LOSSES or a callable
        if isinstance(self.optimizer, str):
            check_choice("optimizer", self.optimizer, _train_loop.OPTIMIZERS)
        else:
            check_type(
                "optimizer",
                self.optimizer,
                optax.GradientTransformation,
                f"one of {_train_loop.OPTIMIZERS} or an optax.GradientTransformation",
            )
        check_number("learning_rate", self.learning_rate, low=0, open_low=True)
        check_number("alpha", self.alpha, low=0, open_low=True)
        check_number("momentum", self.momentum, low=0, high=1, open_high=True)
        check_positive_int("steps", self.steps, allow_zero=True)
        if self.batch_size is not None:
            check_positive_int("batch_size", self.batch_size, hint=" or None (full batch)")
        check_positive_int("n_records", self.n_records)
        if self.record_every is not None:
            check_positive_int("record_every", self.record_every, hint=" or None")
        check_positive_int("chunk_size", self.chunk_size)
        check_positive_int("seed", self.seed, allow_zero=True)
        if self.divergence_threshold is not None:
            check_number("divergence_threshold", self.divergence_threshold, low=0, open_low=True)
        check_bool("record_embeddings", self.record_embeddings)

    def describe(self) -> dict[str, Any]:
        """JSON-able description (callables by qualified name and arguments)."""
        return {f.name: _describe(getattr(self, f.name)) for f in dataclasses.fields(self)}


def _describe(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, functools.partial):
        return {
            "partial": _describe(value.func),
            "args": [_describe(a) for a in value.args],
            "kwargs": {k: _describe(v) for k, v in sorted(value.keywords.items())},
        }
    if callable(value) and hasattr(value, "__qualname__"):
        return f"{getattr(value, '__module__', '?')}.{value.__qualname__}"
    return type(value).__qualname__


@partial(
    jax.tree_util.register_dataclass,
    data_fields=[
        "steps",
        "effective_times",
        "loss",
        "eigenvalues",
        "embeddings",
        "train_embeddings",
        "test_embeddings",
        "params",
        "diverged_loss",
    ],
    meta_fields=["settings", "steps_done", "finished", "diverged_at"],
)
@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What a training run returns (a pytree; records are host numpy arrays).

    Attributes:
      steps: ``(R,)`` int64 steps at which records were taken (only those reached).
      effective_times: ``(R,)`` float64, ``learning_rate · steps``.
      loss: ``(R,)`` loss on the fixed views.
      eigenvalues: ``(R, d)`` eigenvalues of ``C`` on the fixed views, descending.
      embeddings: ``(R, 2n, d)`` if ``record_embeddings`` else None.
      train_embeddings: ``(2n, d)`` embeddings of the fixed views with ``params``.
      test_embeddings: ``(m, d)`` embeddings of ``test_views`` with ``params``, or None.
      params: the final variables (``{'params': ...}``); after a divergence, the last
        variables whose loss was fine (those of step ``diverged_at - 1``).
      settings: the :class:`TrainSettings`.
      steps_done: number of updates applied to get ``params``.
      finished: True if all ``settings.steps`` were done (False: paused or diverged).
      diverged_at: None, or the first step whose loss was non-finite / above threshold.
      diverged_loss: that loss (None if no divergence).
    """

    steps: np.ndarray
    effective_times: np.ndarray
    loss: np.ndarray
    eigenvalues: np.ndarray
    embeddings: np.ndarray | None
    train_embeddings: jax.Array
    test_embeddings: jax.Array | None
    params: Any
    settings: TrainSettings
    steps_done: int
    finished: bool
    diverged_at: int | None
    diverged_loss: float | None


def _fingerprint(
    settings: TrainSettings, net: Any, arch: Any, arrays: list[Any], record: np.ndarray
) -> str:
    """Hash of what determines a run: settings, architecture, data, key, initial parameters."""
    h = hashlib.sha256()
    h.update(json.dumps(settings.describe(), sort_keys=True).encode())
    h.update(type(net).__qualname__.encode())
    if arch is not None and hasattr(arch, "to_config"):
        h.update(json.dumps(arch.to_config(), sort_keys=True, default=str).encode())
    h.update(record.tobytes())
    for a in arrays:
        if a is None:
            h.update(b"<none>")
            continue
        for leaf in jax.tree.leaves(a):
            if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
                leaf = jax.random.key_data(leaf)
            leaf = np.asarray(leaf)
            h.update(f"{leaf.dtype}{leaf.shape}".encode())
            h.update(np.ascontiguousarray(leaf).tobytes())
    return h.hexdigest()


def _embed_all(
    program: _train_loop.Program, variables: Any, x: jax.Array, alpha: jax.Array, batch: int
) -> jax.Array:
    """``α · net(x)`` in batches of ``batch`` rows (held-out sets can be large)."""
    parts = [
        _train_loop.embed(program, variables, x[i : i + batch], alpha)
        for i in range(0, x.shape[0], batch)
    ]
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts)


def train(
    arch: Any,
    settings: TrainSettings,
    views: Any,
    *,
    key: jax.Array | None = None,
    test_views: Any = None,
    augment: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
    images: Any = None,
    init_params: Any = None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    checkpoint_every: int = 10,
    stop_after: int | None = None,
    embed_batch_size: int = 2048,
    progress: bool = True,
) -> TrainResult:
    """Train ``f = α · net`` on positive pairs and record the eigenvalues of ``C``.

    Args:
      arch: an architecture declaration (anything with ``.flax(param_dtype)``, e.g.
        ``MLP(...)``: its Flax twin ``net`` is built with the dtype of ``views``), or the
        Flax module ``net`` itself: stateless, ``apply(variables, x) -> (batch, d)``.
      settings: :class:`TrainSettings`.
      views: ``(2n, ...)`` float views ``[x_1..x_n, x'_1..x'_n]``: the training set in
        full-batch mode, and always the set the records and ``train_embeddings`` use.
      key: PRNG key (initialisation, batches, augmentations); default
        ``jax.random.key(settings.seed)``. Same key and inputs -> same result.
      test_views: ``(m, ...)`` held-out views to embed at the end (optional).
      augment: ``augment(key, images) -> (2B, ...)`` views in pairing order (e.g.
        ``partial(positive_pairs, settings=AugmentSettings())`` followed by normalisation);
        each step then trains on fresh views of ``batch_size`` random ``images``.
      images: ``(N, ...)`` source images for ``augment`` (required with it).
      init_params: initial variables ``{'params': ...}`` instead of ``net.init``.
      checkpoint_dir: folder for ``checkpoint.npz``, written every ``checkpoint_every``
        chunks and when the run ends, pauses or diverges.
      resume: continue from the checkpoint in ``checkpoint_dir`` if there is one (it must
        come from a run with the same arguments); the result is bit-identical to an
        uninterrupted run.
      checkpoint_every: chunks between checkpoints.
      stop_after: pause (checkpoint and return, ``finished=False``) after the chunk in
        which this many steps are done; resume later with ``resume=True``.
      embed_batch_size: rows per call when embedding ``views`` / ``test_views`` at the end.
      progress: show a tqdm progress bar over steps.

    Returns:
      :class:`TrainResult`. If the loss diverges the run stops at the end of that chunk,
      a :class:`TrainingDivergedWarning` names the step, and the result keeps the records
      before it (``diverged_at`` set, ``finished=False``).

    Raises:
      TypeError: ``settings`` is not a :class:`TrainSettings`, ``arch`` neither an
        architecture nor a Flax module, ``augment`` not callable, an option of the wrong type.
      ValueError: NaN/Inf in ``views``, ``test_views`` or ``images``; inconsistent shapes
        or modes; a checkpoint from another run.
    """
    check_type("settings", settings, TrainSettings)
    # Converted first, so that the checks see the dtype JAX computes in (float32 without x64).
    views = check_views("views", jnp.asarray(views))
    n = views.shape[0] // 2
    net = arch
    if hasattr(arch, "flax") and not isinstance(arch, nn.Module):
        if hasattr(arch, "check_input_shape"):
            arch.check_input_shape(tuple(views.shape[1:]))
        net = arch.flax(param_dtype=views.dtype)
    else:
        arch = None  # a bare Flax module: no declaration to fingerprint
    check_type("arch", net, nn.Module, "an architecture declaration with .flax() or a flax.linen Module")
    if test_views is not None:
        test_views = check_views("test_views", jnp.asarray(test_views), like=views, same_dtype=True)
    if (augment is None) != (images is None):
        raise ValueError(
            "augment and images go together: pass both to train on fresh augmentations of images, "
            "or neither to train on the fixed views."
        )
    if augment is not None:
        if not callable(augment):
            raise TypeError(f"augment must be a callable (key, images) -> views, got {type(augment).__name__}.")
        images = check_array("images", jnp.asarray(images), dtype_kind=None, hint="clean or re-generate the images.")
        pool, what = images.shape[0], "images"
    else:
        pool, what = n, "pairs in views"
    if settings.batch_size is not None and settings.batch_size > pool:
        raise ValueError(
            f"batch_size={settings.batch_size} exceeds the {pool} {what}; "
            f"use batch_size <= {pool} or None."
        )
    check_positive_int("checkpoint_every", checkpoint_every)
    check_positive_int("embed_batch_size", embed_batch_size)
    if stop_after is not None:
        check_positive_int("stop_after", stop_after, hint=" or None")
    check_bool("resume", resume)
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir (the folder of the run to continue).")
    if key is None:
        key = jax.random.key(settings.seed)
    elif not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(jnp.asarray(key))  # legacy uint32 key -> typed key

    program = _train_loop.Program(
        net=net,
        loss_fn=resolve_loss(settings.loss),
        optimizer=settings.optimizer,
        learning_rate=float(settings.learning_rate),
        momentum=float(settings.momentum),
        batch_size=settings.batch_size,
        chunk_size=settings.chunk_size,
        augment=augment,
        record_embeddings=settings.record_embeddings,
    )
    rec_steps = record_steps(settings.steps, settings.n_records, settings.record_every)
    threshold = (
        math.inf if settings.divergence_threshold is None else float(settings.divergence_threshold)
    )
    data = _train_loop.LoopData(
        views=views,
        images=images,
        record_steps=jnp.asarray(rec_steps, jnp.int32),
        stop=jnp.asarray(settings.steps, jnp.int32),
        alpha=jnp.asarray(float(settings.alpha)),
        threshold=jnp.asarray(threshold),
    )
    state = _train_loop.init_state(program, data, key, init_params)

    fingerprint = None
    if checkpoint_dir is not None:
        fingerprint = _fingerprint(
            settings, net, arch, [views, images, key, init_params], rec_steps
        )
        exists = _checkpoint.checkpoint_path(checkpoint_dir).exists()
        if resume and exists:
            state = _checkpoint.load_checkpoint(checkpoint_dir, state, fingerprint=fingerprint)
        elif exists:
            raise ValueError(
                f"{_checkpoint.checkpoint_path(checkpoint_dir)} already exists; "
                "pass resume=True to "
                "continue that run, or choose an empty checkpoint_dir."
            )

    def save() -> None:
        if checkpoint_dir is not None:
            _checkpoint.save_checkpoint(checkpoint_dir, state, fingerprint=fingerprint)

    it, diverged = (int(v) for v in jax.device_get((state.it, state.diverged_at)))
    stepwise = _train_loop.stepwise_wanted(program, state, data)
    if stepwise:  # its steps donate the state's buffers: own them (init_params are the caller's)
        state = jax.tree.map(jnp.copy, state)
    paused = False
    with tqdm(
        total=settings.steps,
        initial=min(it, settings.steps),
        disable=not progress,
        desc="train",
        unit="step",
    ) as bar:
        chunks = 0
        while it <= settings.steps and diverged < 0:
            if stepwise:
                state = _train_loop.run_chunk_stepwise(
                    program, state, data, it, settings.steps, rec_steps
                )
            else:
                state = _train_loop.run_chunk(program, state, data)
            new_it, diverged = (int(v) for v in jax.device_get((state.it, state.diverged_at)))
            bar.update(min(new_it, settings.steps) - min(it, settings.steps))
            last = int(np.searchsorted(rec_steps, new_it - 1, side="right")) - 1
            if progress and diverged < 0 and last >= 0:  # latest recorded loss, one scalar
                bar.set_postfix(loss=f"{float(state.rec_loss[last]):.4g}", refresh=False)
            it, chunks = new_it, chunks + 1
            if diverged >= 0:
                break
            if (
                stop_after is not None
                and it <= settings.steps
                and min(it, settings.steps) >= stop_after
            ):
                paused = True
                break
            if chunks % checkpoint_every == 0 and it <= settings.steps:
                save()
    save()

    if diverged >= 0:
        bad_loss = float(state.bad_loss)
        warnings.warn(
            f"training diverged at step {diverged} (loss {bad_loss:.6g}; threshold "
            f"{settings.divergence_threshold}); stopped, records before step {diverged} kept. "
            "Lower the learning rate or alpha.",
            TrainingDivergedWarning,
            stacklevel=2,
        )
        variables, done, reached = state.prev_params, max(diverged - 1, 0), diverged
    else:
        variables, done, reached = state.params, min(it, settings.steps), it
    keep = rec_steps < reached
    rec_loss, rec_eigs, rec_emb = jax.device_get(
        (state.rec_loss, state.rec_eigs, state.rec_embeddings)
    )
    return TrainResult(
        steps=rec_steps[keep],
        effective_times=float(settings.learning_rate) * rec_steps[keep].astype(np.float64),
        loss=np.asarray(rec_loss)[keep],
        eigenvalues=np.asarray(rec_eigs)[keep],
        embeddings=None if rec_emb is None else np.asarray(rec_emb)[keep],
        train_embeddings=_embed_all(program, variables, views, data.alpha, embed_batch_size),
        test_embeddings=None
        if test_views is None
        else _embed_all(program, variables, test_views, data.alpha, embed_batch_size),
        params=variables,
        settings=settings,
        steps_done=done,
        finished=diverged < 0 and not paused,
        diverged_at=None if diverged < 0 else diverged,
        diverged_loss=None if diverged < 0 else float(state.bad_loss),
    )
