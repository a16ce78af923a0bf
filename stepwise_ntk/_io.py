"""The one atomic file writer of the library: a reader sees the whole new file or the old one.

Every file the project writes (run outputs, figures, kernel-cache entries, checkpoints,
benchmark reports) goes through :func:`atomic_open`: the bytes are written to a temporary
file in the destination folder, flushed and fsynced, then moved over the destination with
one ``os.replace`` (atomic within a file system). On any exception, ``KeyboardInterrupt``
included, the temporary file is removed and the destination is untouched. The new file
gets the permissions an ordinary ``open`` would give it (``0o666`` less the umask), not the
``0o600`` of :func:`tempfile.mkstemp`.

Example:
    >>> import json, pathlib, tempfile
    >>> from stepwise_ntk._io import write_json
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> path = write_json(folder / "results.json", {"loss": float("nan"), "d": 2})
    >>> json.loads(path.read_text())
    {'loss': None, 'd': 2}
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

__all__ = ["atomic_open", "jsonable", "write_bytes", "write_json", "write_npz", "write_text"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, *, fsync: bool = True) -> Iterator[IO[bytes]]:
    """A binary file object whose contents replace ``path`` atomically when the block exits.

    Args:
      path: the destination; its folder is created if missing.
      fsync: flush the bytes to the disk before the rename (a crash then leaves the old or
        the new file, never an empty one).

    Yields:
      the temporary file, opened for writing bytes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically. Returns the path."""
    with atomic_open(path) as f:
        f.write(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically. Returns the path."""
    return write_bytes(path, text.encode("utf-8"))


def jsonable(x: Any) -> Any:
    """``x`` as strict JSON values: arrays as lists, NaN and ±Inf as None (JSON has neither)."""
    if isinstance(x, Mapping):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (np.ndarray, np.generic)) or hasattr(x, "__array__"):
        arr = np.asarray(x)
        return jsonable(arr.item()) if arr.ndim == 0 else jsonable(arr.tolist())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, os.PathLike):
        return os.fspath(x)
    return x


def write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> Path:
    """Write ``obj`` as strict JSON (:func:`jsonable`; ``allow_nan=False``) atomically."""
    text = json.dumps(jsonable(obj), indent=indent, allow_nan=False)
    return write_text(path, text + "\n")


def write_npz(path: str | os.PathLike, arrays: Mapping[str, Any], *, compressed: bool = False) -> Path:
    """Write ``arrays`` (name -> array-like) as one ``.npz`` atomically. Returns the path."""
    save: Callable[..., None] = np.savez_compressed if compressed else np.savez
    with atomic_open(path) as f:
        save(f, **{name: np.asarray(a) for name, a in arrays.items()})
    return Path(path)
