"""Atomic, exact checkpoints of a training run's loop state (numpy ``.npz`` + JSON).

A checkpoint is one file, ``<dir>/checkpoint.npz``: every array leaf of the loop state
(parameters, optimiser state, PRNG key, counters, record buffers) stored bit for bit,
plus a JSON header with the format version and a fingerprint of the run (configuration,
data, initial key). It is written with the library's atomic writer
(:func:`stepwise_ntk._io.atomic_open`: a temporary file in the same folder, fsynced, then
``os.replace``), so the file on disk is always either the previous complete checkpoint or
the new complete one.

Loading needs a *template* state of the same run (what the run would start from): its
tree structure, shapes and dtypes say how to rebuild the pytree, and any mismatch is an
error rather than a silent reinterpretation.

Example::

    >>> import tempfile
    >>> import jax, jax.numpy as jnp
    >>> from stepwise_ntk.training import load_checkpoint, save_checkpoint
    >>> state = {"params": jnp.arange(3, dtype=jnp.float32), "key": jax.random.key(0), "step": jnp.int32(7)}
    >>> folder = tempfile.mkdtemp()
    >>> save_checkpoint(folder, state, fingerprint="run-a").name
    'checkpoint.npz'
    >>> back = load_checkpoint(folder, state, fingerprint="run-a")   # state serves as the template
    >>> back["params"], int(back["step"])
    (Array([0., 1., 2.], dtype=float32), 7)
    >>> bool(jnp.all(jax.random.key_data(back["key"]) == jax.random.key_data(state["key"])))
    True
    >>> load_checkpoint(folder, state, fingerprint="run-b")
    Traceback (most recent call last):
    ...
    ValueError: .../checkpoint.npz belongs to a different run (configuration, data or key differ). ...
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from stepwise_ntk._io import atomic_open

__all__ = ["CHECKPOINT_FILE", "checkpoint_path", "save_checkpoint", "load_checkpoint"]

CHECKPOINT_FILE = "checkpoint.npz"
_FORMAT = 1


def checkpoint_path(folder: str | os.PathLike) -> Path:
    """The checkpoint file inside ``folder``."""
    return Path(folder) / CHECKPOINT_FILE


def _is_key(leaf: Any) -> bool:
    return hasattr(leaf, "dtype") and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def save_checkpoint(folder: str | os.PathLike, state: Any, *, fingerprint: str) -> Path:
    """Write ``state`` (a pytree of arrays) to ``folder/checkpoint.npz`` atomically.

    Args:
      folder: directory (created if missing).
      state: pytree of arrays; typed PRNG keys are stored as their key data.
      fingerprint: string identifying the run; :func:`load_checkpoint` checks it.

    Returns:
      The checkpoint path.
    """
    leaves = jax.device_get(
        [jax.random.key_data(x) if _is_key(x) else x for x in jax.tree.leaves(state)]
    )
    header = json.dumps({"format": _FORMAT, "fingerprint": fingerprint, "n_leaves": len(leaves)})
    arrays = {f"leaf_{i:05d}": np.asarray(x) for i, x in enumerate(leaves)}
    path = checkpoint_path(folder)
    with atomic_open(path) as f:  # creates the folder if missing
        np.savez(f, header=np.array(header), **arrays)
    return path


def load_checkpoint(folder: str | os.PathLike, template: Any, *, fingerprint: str) -> Any:
    """Read the checkpoint in ``folder`` into the structure of ``template``.

    Args:
      folder: directory holding ``checkpoint.npz``.
      template: pytree with the same structure, shapes and dtypes as the saved state
        (e.g. the run's initial state).
      fingerprint: must equal the fingerprint the checkpoint was saved with.

    Returns:
      The saved state, as a pytree like ``template``, bit-identical to what was saved.

    Raises:
      FileNotFoundError: no checkpoint in ``folder``.
      ValueError: the checkpoint belongs to another run, or does not fit ``template``.
    """
    path = checkpoint_path(folder)
    with np.load(path, allow_pickle=False) as z:
        header = json.loads(str(z["header"]))
        if header.get("format") != _FORMAT:
            raise ValueError(
                f"{path} has checkpoint format {header.get('format')}, expected {_FORMAT}."
            )
        if header["fingerprint"] != fingerprint:
            raise ValueError(
                f"{path} belongs to a different run (configuration, data or key differ). "
                "Resume with "
                "exactly the arguments of the original run, or use another checkpoint_dir."
            )
        saved = [z[f"leaf_{i:05d}"] for i in range(header["n_leaves"])]
    leaves, treedef = jax.tree.flatten(template)
    if len(saved) != len(leaves):
        raise ValueError(f"{path} holds {len(saved)} arrays but the run's state has {len(leaves)}.")
    out = []
    for i, (s, t) in enumerate(zip(saved, leaves, strict=True)):
        if _is_key(t):
            t_data = jax.random.key_data(t)
            if s.shape != t_data.shape or s.dtype != t_data.dtype:
                raise ValueError(
                    f"{path}: PRNG key leaf {i} has shape {s.shape}, expected {t_data.shape}."
                )
            out.append(jax.random.wrap_key_data(jnp.asarray(s), impl=jax.random.key_impl(t)))
            continue
        t_dtype = np.dtype(t.dtype)
        if s.dtype != t_dtype and s.dtype.itemsize == t_dtype.itemsize and s.dtype.kind == "V":
            s = s.view(t_dtype)  # extension dtypes such as bfloat16 come back as raw bytes
        if s.shape != tuple(t.shape) or s.dtype != t_dtype:
            raise ValueError(
                f"{path}: array {i} is {s.dtype}{list(s.shape)} but the run expects "
                f"{t_dtype}{list(t.shape)}; the checkpoint is from another architecture or dtype."
            )
        out.append(jnp.asarray(s))
    return jax.tree.unflatten(treedef, out)
