"""An experiment's output directory: config first, results last, never a truncated file.

Layout of a finished run::

    OUT/config.json     resolved settings + command + versions (written at the start)
    OUT/results.json    every reported number, {"status": "complete", ...} (written last)
    OUT/arrays.npz      trajectories and embeddings
    OUT/*.png           figures

While a run is in progress, or after it stopped early (error, Ctrl-C), ``OUT/INCOMPLETE``
says so and why, and no ``results.json`` exists. Every file is written atomically
(:mod:`stepwise_ntk._io`: a temporary name, then a rename), so a reader sees a whole file or
none. The JSON files are strict JSON: NaN and ±Inf (a step that never happened, an
undefined gap ratio) are written as ``null``.
"""

from __future__ import annotations

import contextlib
import os
import platform
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from stepwise_ntk._io import write_json, write_npz

__all__ = ["INCOMPLETE", "RunDir", "RunFailedError", "run_directory"]

INCOMPLETE = "INCOMPLETE"


class RunFailedError(RuntimeError):
    """A run that could not finish (e.g. training diverged); the message says what to change."""


class RunDir:
    """Handle on an output directory in progress (see module docstring)."""

    def __init__(self, path: Path):
        self.path = path

    def save_arrays(self, **arrays: Any) -> Path:
        """Write ``arrays.npz`` (compressed; jax arrays are converted to numpy)."""
        return write_npz(self.path / "arrays.npz", arrays, compressed=True)

    def write_results(self, results: dict[str, Any]) -> Path:
        """Write ``results.json`` (status "complete") and remove the INCOMPLETE marker."""
        path = write_json(self.path / "results.json", {"status": "complete", **results})
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
        raise ValueError(
            f"{path} already holds a finished run (results.json); pass --overwrite or choose another --out."
        )
    path.mkdir(parents=True, exist_ok=True)
    (path / "results.json").unlink(missing_ok=True)
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    write_json(path / "config.json",
               {"command": command, "settings": settings, "versions": _versions(), "started": started})
    write_json(path / INCOMPLETE, {"status": "running", "started": started})
    run = RunDir(path)
    try:
        yield run
    except BaseException as err:  # KeyboardInterrupt included: say why the run is partial
        reason = "interrupted (Ctrl-C)" if isinstance(err, KeyboardInterrupt) else f"{type(err).__name__}: {err}"
        write_json(path / INCOMPLETE, {"status": "stopped", "started": started, "reason": reason})
        raise
    if (path / INCOMPLETE).exists():
        write_json(path / INCOMPLETE, {"status": "stopped", "started": started, "reason": "no results were written"})
