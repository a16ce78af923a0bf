"""Train the finite network behind a kernel: small initialisation, SSL loss, optax optimiser.

The network's embedding is ``f(x) = α · net(x; θ)`` with ``net`` any stateless
``flax.linen`` module mapping views ``(batch, ...)`` to ``(batch, d)`` (e.g.
``spec.flax()`` of an architecture spec). Scaling the output by α is how small
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

The loop runs in jitted chunks of ``chunk_size`` steps (``lax.scan``; no per-step Python,
one compilation per program and shapes), shows a progress bar, detects divergence and can
checkpoint and resume with a bit-identical result.

Example::

    spec = MLP(width=256, d=4)
    alpha = 1e-2
    cfg = TrainSettings(learning_rate=0.005 / alpha**2, steps=2000, alpha=alpha)
    result = train(spec, cfg, views, test_views=test_views)   # spec.flax() is trained
    result.eigenvalues          # (R, 4): the staircase, at result.effective_times
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import numbers
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

from stepwise_ntk.training import _checkpoint
from stepwise_ntk.training import _loop as _train_loop
from stepwise_ntk.losses import LOSS_FUNCTIONS
from stepwise_ntk.training._records import record_steps

__all__ = [
    "LOSSES",
    "TrainSettings",
    "TrainResult",
    "TrainingDivergedWarning",
    "resolve_loss",
    "train",
]

LOSSES = tuple(LOSS_FUNCTIONS)  # ("barlow_twins", "simclr", "vicreg")


class TrainingDivergedWarning(RuntimeWarning):
    """A training run stopped because its loss became non-finite or exceeded the threshold."""


def _positive_int(name: str, value: Any, *, allow_zero: bool = False) -> None:
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not ok or value < (0 if allow_zero else 1):
        raise ValueError(
            f"{name} must be a {'non-negative' if allow_zero else 'positive'} int, got {value!r}."
        )


def _positive_float(name: str, value: Any) -> None:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}.")


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
      chunk_size: steps per jitted ``lax.scan`` chunk (the granularity of progress,
        divergence stops and checkpoints).
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
        if isinstance(self.loss, str):
            if self.loss not in LOSSES:
                raise ValueError(
                    f"loss must be one of {LOSSES} or a callable F -> scalar, got {self.loss!r}."
                )
        elif not callable(self.loss):
            raise ValueError(
                f"loss must be one of {LOSSES} or a callable F -> scalar, got {self.loss!r}."
            )
        if (
            not isinstance(self.optimizer, optax.GradientTransformation)
            and self.optimizer not in _train_loop.OPTIMIZERS
        ):
            raise ValueError(
                f"optimizer must be one of {_train_loop.OPTIMIZERS} or an "
                "optax.GradientTransformation, "
                f"got {self.optimizer!r}."
            )
        _positive_float("learning_rate", self.learning_rate)
        _positive_float("alpha", self.alpha)
        if not (isinstance(self.momentum, numbers.Real) and 0 <= self.momentum < 1):
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}.")
        _positive_int("steps", self.steps, allow_zero=True)
        if self.batch_size is not None:
            _positive_int("batch_size", self.batch_size)
        _positive_int("n_records", self.n_records)
        if self.record_every is not None:
            _positive_int("record_every", self.record_every)
        _positive_int("chunk_size", self.chunk_size)
        _positive_int("seed", self.seed, allow_zero=True)
        if self.divergence_threshold is not None:
            _positive_float("divergence_threshold", self.divergence_threshold)
        if not isinstance(self.record_embeddings, bool):
            raise ValueError(f"record_embeddings must be a bool, got {self.record_embeddings!r}.")

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
    meta_fields=["config", "steps_done", "finished", "diverged_at"],
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
      config: the :class:`TrainSettings`.
      steps_done: number of updates applied to get ``params``.
      finished: True if all ``config.steps`` were done (False: paused or diverged).
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
    config: TrainSettings
    steps_done: int
    finished: bool
    diverged_at: int | None
    diverged_loss: float | None


def resolve_loss(loss: str | Callable[[jax.Array], jax.Array]) -> Callable[[jax.Array], jax.Array]:
    """The loss ``F: (2n, d) -> scalar`` named in :data:`LOSSES`; callables pass through."""
    if callable(loss):
        return loss
    return LOSS_FUNCTIONS[loss]


def _check_array(name: str, x: Any, *, floating: bool = True) -> jax.Array:
    x = jnp.asarray(x)
    if floating and not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"{name} must be a floating-point array, got dtype {x.dtype}.")
    if jnp.issubdtype(x.dtype, jnp.floating):
        bad = int(np.count_nonzero(~np.isfinite(np.asarray(x))))
        if bad:
            raise ValueError(
                f"{name} contains {bad} NaN/inf value(s); clean or re-generate the data "
                "before training."
            )
    return x


def _fingerprint(
    config: TrainSettings, module: Any, spec: Any, arrays: list[Any], record: np.ndarray
) -> str:
    """Hash of what determines a run: settings, architecture, data, key, initial parameters."""
    h = hashlib.sha256()
    h.update(json.dumps(config.describe(), sort_keys=True).encode())
    h.update(type(module).__qualname__.encode())
    if spec is not None and hasattr(spec, "to_config"):
        h.update(json.dumps(spec.to_config(), sort_keys=True, default=str).encode())
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
    module: Any,
    config: TrainSettings,
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
    """Train ``f = α · module`` on positive pairs and record the eigenvalues of ``C``.

    Args:
      module: stateless ``flax.linen`` module, ``apply(variables, x) -> (batch, d)``, or an
        architecture spec (anything with ``.flax(param_dtype)``, e.g. ``MLP(...)``): its
        Flax twin is built with the dtype of ``views``.
      config: :class:`TrainSettings`.
      views: ``(2n, ...)`` float views ``[x_1..x_n, x'_1..x'_n]``: the training set in
        full-batch mode, and always the set the records and ``train_embeddings`` use.
      key: PRNG key (initialisation, batches, augmentations); default
        ``jax.random.key(config.seed)``. Same key and inputs -> same result.
      test_views: ``(m, ...)`` held-out views to embed at the end (optional).
      augment: ``augment(key, images) -> (2B, ...)`` views in pairing order (e.g.
        ``partial(positive_pairs, config=AugmentSettings())`` followed by normalisation);
        each step then trains on fresh views of ``batch_size`` random ``images``.
      images: ``(N, ...)`` source images for ``augment`` (required with it).
      init_params: initial variables ``{'params': ...}`` instead of ``module.init``.
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
      ValueError: NaN/inf in ``views``, ``test_views`` or ``images``; inconsistent shapes
        or modes; a checkpoint from another run.
    """
    if not isinstance(config, TrainSettings):
        raise ValueError(f"config must be a TrainSettings, got {type(config).__name__}.")
    views = _check_array("views", views)
    if views.ndim < 2 or views.shape[0] < 2 or views.shape[0] % 2:
        raise ValueError(
            "views must be (2n, ...) with n >= 1 pairs stacked as [x_1..x_n, x'_1..x'_n], "
            f"got shape {views.shape}."
        )
    n = views.shape[0] // 2
    spec = None
    if hasattr(module, "flax") and not isinstance(module, nn.Module):
        spec = module
        if hasattr(spec, "check_input_shape"):
            spec.check_input_shape(tuple(views.shape[1:]))
        module = spec.flax(param_dtype=views.dtype)
    if not isinstance(module, nn.Module):
        raise ValueError(
            "module must be a flax.linen Module or an architecture spec with .flax(), "
            f"got {type(module).__name__}."
        )
    if test_views is not None:
        test_views = _check_array("test_views", test_views)
        if test_views.shape[1:] != views.shape[1:] or test_views.dtype != views.dtype:
            raise ValueError(
                f"test_views must be (m, {', '.join(map(str, views.shape[1:]))}) "
                f"{views.dtype} like views, "
                f"got {test_views.shape} {test_views.dtype}."
            )
    if (augment is None) != (images is None):
        raise ValueError(
            "augment and images go together: pass both to train on fresh augmentations of images, "
            "or neither to train on the fixed views."
        )
    if augment is not None:
        if not callable(augment):
            raise ValueError(f"augment must be a callable (key, images) -> views, got {augment!r}.")
        images = _check_array("images", images, floating=False)
        pool, what = images.shape[0], "images"
    else:
        pool, what = n, "pairs in views"
    if config.batch_size is not None and config.batch_size > pool:
        raise ValueError(
            f"batch_size={config.batch_size} exceeds the {pool} {what}; "
            f"use batch_size <= {pool} or None."
        )
    _positive_int("checkpoint_every", checkpoint_every)
    _positive_int("embed_batch_size", embed_batch_size)
    if stop_after is not None:
        _positive_int("stop_after", stop_after)
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir (the folder of the run to continue).")
    if key is None:
        key = jax.random.key(config.seed)
    elif not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(jnp.asarray(key))  # legacy uint32 key -> typed key

    program = _train_loop.Program(
        module=module,
        loss_fn=resolve_loss(config.loss),
        optimizer=config.optimizer,
        learning_rate=float(config.learning_rate),
        momentum=float(config.momentum),
        batch_size=config.batch_size,
        chunk_size=config.chunk_size,
        augment=augment,
        record_embeddings=config.record_embeddings,
    )
    rec_steps = record_steps(config.steps, config.n_records, config.record_every)
    threshold = (
        math.inf if config.divergence_threshold is None else float(config.divergence_threshold)
    )
    data = _train_loop.LoopData(
        views=views,
        images=images,
        record_steps=jnp.asarray(rec_steps, jnp.int32),
        stop=jnp.asarray(config.steps, jnp.int32),
        alpha=jnp.asarray(float(config.alpha)),
        threshold=jnp.asarray(threshold),
    )
    state = _train_loop.init_state(program, data, key, init_params)

    fingerprint = None
    if checkpoint_dir is not None:
        fingerprint = _fingerprint(
            config, module, spec, [views, images, key, init_params], rec_steps
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
    paused = False
    with tqdm(
        total=config.steps,
        initial=min(it, config.steps),
        disable=not progress,
        desc="train",
        unit="step",
    ) as bar:
        chunks = 0
        while it <= config.steps and diverged < 0:
            state = _train_loop.run_chunk(program, state, data)
            new_it, diverged = (int(v) for v in jax.device_get((state.it, state.diverged_at)))
            bar.update(min(new_it, config.steps) - min(it, config.steps))
            last = int(np.searchsorted(rec_steps, new_it - 1, side="right")) - 1
            if progress and diverged < 0 and last >= 0:  # latest recorded loss, one scalar
                bar.set_postfix(loss=f"{float(state.rec_loss[last]):.4g}", refresh=False)
            it, chunks = new_it, chunks + 1
            if diverged >= 0:
                break
            if (
                stop_after is not None
                and it <= config.steps
                and min(it, config.steps) >= stop_after
            ):
                paused = True
                break
            if chunks % checkpoint_every == 0 and it <= config.steps:
                save()
    save()

    if diverged >= 0:
        bad_loss = float(state.bad_loss)
        warnings.warn(
            f"training diverged at step {diverged} (loss {bad_loss:.6g}; threshold "
            f"{config.divergence_threshold}); stopped, records before step {diverged} kept. "
            "Lower the learning rate or alpha.",
            TrainingDivergedWarning,
            stacklevel=2,
        )
        variables, done, reached = state.prev_params, max(diverged - 1, 0), diverged
    else:
        variables, done, reached = state.params, min(it, config.steps), it
    keep = rec_steps < reached
    rec_loss, rec_eigs, rec_emb = jax.device_get(
        (state.rec_loss, state.rec_eigs, state.rec_embeddings)
    )
    return TrainResult(
        steps=rec_steps[keep],
        effective_times=float(config.learning_rate) * rec_steps[keep].astype(np.float64),
        loss=np.asarray(rec_loss)[keep],
        eigenvalues=np.asarray(rec_eigs)[keep],
        embeddings=None if rec_emb is None else np.asarray(rec_emb)[keep],
        train_embeddings=_embed_all(program, variables, views, data.alpha, embed_batch_size),
        test_embeddings=None
        if test_views is None
        else _embed_all(program, variables, test_views, data.alpha, embed_batch_size),
        params=variables,
        config=config,
        steps_done=done,
        finished=diverged < 0 and not paused,
        diverged_at=None if diverged < 0 else diverged,
        diverged_loss=None if diverged < 0 else float(state.bad_loss),
    )
