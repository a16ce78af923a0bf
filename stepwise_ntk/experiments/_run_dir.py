"""An experiment's output directory: config first, results last, never a truncated file.

Layout of a finished run::

    OUT/config.json     resolved settings + command + versions (written at the start)
    OUT/results.json    every reported number, {"status": "complete", ...} (written last)
    OUT/arrays.npz      trajectories and embeddings
    OUT/*.png           figures

While a run is in progress, or after it stopped early (error, Ctrl-C), ``OUT/INCOMPLETE``
says so and why, and no ``results.json`` exists. Every file is written to a temporary name
and renamed into place, so a reader sees a whole file or none.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["RunDir", "run_directory", "atomic_write_bytes", "atomic_write_json"]

INCOMPLETE = "INCOMPLETE"


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.ndarray, np.generic)) or hasattr(x, "__array__"):
        arr = np.asarray(x)
        return arr.item() if arr.ndim == 0 else arr.tolist()
    if isinstance(x, float) and not np.isfinite(x):
        return None if np.isnan(x) else ("inf" if x > 0 else "-inf")
    return x


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_bytes(path, (json.dumps(_jsonable(obj), indent=2) + "\n").encode())


class RunDir:
    """Handle on an output directory in progress (see module docstring)."""

    def __init__(self, path: Path):
        self.path = path

    def save_arrays(self, **arrays: Any) -> Path:
        """Write ``arrays.npz`` (numpy arrays; jax arrays are converted)."""
        fd, tmp = tempfile.mkstemp(prefix=".arrays.", suffix=".npz", dir=self.path)
        os.close(fd)
        try:
            np.savez_compressed(tmp, **{k: np.asarray(v) for k, v in arrays.items()})
            os.replace(tmp, self.path / "arrays.npz")
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return self.path / "arrays.npz"

    def write_results(self, results: dict[str, Any]) -> Path:
        """Write ``results.json`` (status "complete") and remove the INCOMPLETE marker."""
        path = atomic_write_json(self.path / "results.json", {"status": "complete", **results})
        (self.path / INCOMPLETE).unlink(missing_ok=True)
        return path


def _versions() -> dict[str, str]:
    import jax

    from stepwise_ntk import __version__

    return {
        "stepwise_ntk": __version__,
        "jax": jax.__version__,
        "python": platform.python_version(),
        "backend": jax.default_backend(),
        "devices": str(jax.devices()),
    }


@contextlib.contextmanager
def run_directory(out: str | os.PathLike, command: str, settings: dict, *, overwrite: bool = False) -> Iterator[RunDir]:
    """Open ``out`` for a run of ``command``; mark it INCOMPLETE until results are written.

    Raises:
      ValueError: ``out`` already holds a finished run and ``overwrite`` is False.
    """
    path = Path(out)
    if (path / "results.json").exists() and not overwrite:
        raise ValueError(f"{path} already holds a finished run (results.json); pass --overwrite or choose another --out.")
    path.mkdir(parents=True, exist_ok=True)
    (path / "results.json").unlink(missing_ok=True)
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    atomic_write_json(path / "config.json", {"command": command, "settings": settings, "versions": _versions(), "started": started})
    atomic_write_json(path / INCOMPLETE, {"status": "running", "started": started})
    run = RunDir(path)
    try:
        yield run
    except BaseException as err:  # KeyboardInterrupt included: say why the run is partial
        reason = "interrupted (Ctrl-C)" if isinstance(err, KeyboardInterrupt) else f"{type(err).__name__}: {err}"
        atomic_write_json(path / INCOMPLETE, {"status": "stopped", "started": started, "reason": reason})
        raise
    if (path / INCOMPLETE).exists():
        atomic_write_json(path / INCOMPLETE, {"status": "stopped", "started": started, "reason": "no results were written"})
