"""An experiment's output folder: a finished run appears whole, or not at all.

Layout of a finished run ``OUT`` (``--out``)::

    OUT/config.json     command, resolved settings, data folder, versions, git commit
    OUT/results.json    every reported number, {"status": "complete", ...} (strict JSON)
    OUT/arrays.npz      trajectories and embeddings
    OUT/*.png           figures

The contract:

* **Checked first.** ``OUT`` must be missing, an empty folder, or a finished run (then only
  with ``overwrite``); it may not be a file, any other non-empty folder, ``""``, or lie
  under a file or a folder that cannot be written (:func:`check_output_path`). Nothing is
  created when a check fails.
* **Written beside.** The run writes into ``OUT.partial/`` (a sibling of ``OUT``): first
  ``config.json`` and ``INCOMPLETE`` (``{"status": "running", "pid", "started"}``), then
  the outputs; what a rerun can resume from lives in ``OUT.partial/resume/``. A second run
  into the same ``OUT`` while one is running is refused (a lock on ``OUT.partial/.lock``).
* **Replaced at once.** On success ``results.json`` is written, ``INCOMPLETE``, the lock and
  ``resume/`` are removed, and ``OUT.partial`` takes the place of ``OUT`` in one rename (over a
  finished run: an atomic exchange where the OS has one, Linux ``renameat2``, else two
  renames), with SIGINT/SIGTERM deferred; the old run is deleted only after that. Until
  then the old ``OUT`` is untouched, so a failed ``--overwrite`` run loses nothing.
* **Stopped runs are marked.** On an exception, SIGINT (``KeyboardInterrupt``) or SIGTERM
  (:func:`stop_on_signals` makes it raise :class:`RunInterrupted`), ``OUT.partial/INCOMPLETE``
  says ``{"status": "failed" | "interrupted", "reason", "signal", "started", "stopped",
  "resume"}`` and no ``results.json`` is there; ``OUT`` is unchanged. A repeated signal while
  the marker is written is ignored (a terminal and ``uv run`` each deliver one Ctrl-C).
* **Rerun to resume.** Running the same command again (the same ``fingerprint`` in
  ``config.json``: command, settings, data folder, package version) continues in
  ``OUT.partial``: network training from its last checkpoint (``resume/train/``, every
  1000 steps and at the end), a width sweep from its finished widths
  (``resume/widths/width_W.pkl``); everything else is recomputed, so the numbers are
  identical to an uninterrupted run's. The other subcommands start over. A partial run with
  other settings is left alone: the rerun is refused unless ``overwrite`` discards it.
  Delete ``OUT.partial`` by hand to start from nothing.

Every file is written atomically (:mod:`stepwise_ntk._io`: a temporary name, then a rename)
with the user's umask, folders too.

Example:
    >>> import json, pathlib, tempfile
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "run"
    >>> with run_directory(out, "demo", {"n": 1}) as run:
    ...     _ = run.write_results({"loss": float("nan")})
    >>> sorted(p.name for p in out.iterdir()), json.loads((out / "results.json").read_text())
    (['config.json', 'results.json'], {'status': 'complete', 'loss': None, 'non_finite': {'loss': 'nan'}})
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import dataclasses
import errno
import fcntl
import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from stepwise_ntk._io import write_json, write_npz

__all__ = [
    "INCOMPLETE",
    "OutputPathError",
    "RunDir",
    "RunFailedError",
    "RunInterrupted",
    "check_output_path",
    "partial_path",
    "provenance",
    "run_directory",
    "stop_on_signals",
]

INCOMPLETE = "INCOMPLETE"
RESUME = "resume"
_LOCK = ".lock"


class RunFailedError(RuntimeError):
    """A run that could not finish (e.g. training diverged); the message says what to change."""


class OutputPathError(ValueError):
    """``--out`` cannot hold a run (a file, a foreign folder, not writable); nothing was created."""


class RunInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived (raised by the handlers of :func:`stop_on_signals`)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)
        self.signal_name = signal.Signals(signum).name


# ----------------------------------------------------------------------------- signals


@dataclasses.dataclass
class _SignalState:
    received: int | None = None  # the first signal of this run
    defer: int = 0  # > 0: record a signal, raise when the deferred block ends
    pending: bool = False
    swallowed: bool = False  # a deferred signal not raised yet (see _raise_swallowed)


_SIGNALS = _SignalState()


def _on_signal(signum: int, frame: Any) -> None:
    if _SIGNALS.received is not None:  # already stopping: let the marker be written
        return
    _SIGNALS.received = signum
    if _SIGNALS.defer:
        _SIGNALS.pending = True
        return
    raise RunInterrupted(signum)


@contextlib.contextmanager
def stop_on_signals(*, ignore_after_stop: bool = False) -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`RunInterrupted` (a ``KeyboardInterrupt``) inside the block.

    Only the first signal raises; repeats are ignored so that the stopping run can mark its
    folder. Outside the main thread (where Python cannot install handlers) it does nothing.
    The previous handlers come back when the block ends, except with ``ignore_after_stop``
    after a signal: then both stay ignored, so that a repeated Ctrl-C cannot break the
    process's exit (a program's main, about to return).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    global _SIGNALS
    _SIGNALS = _SignalState()
    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        stopped = _SIGNALS.received is not None
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_IGN if stopped and ignore_after_stop else handler)
        _SIGNALS = _SignalState()


@contextlib.contextmanager
def _deferred(*, reraise: bool = True) -> Iterator[None]:
    """Signals wait until the block ends (then raise, unless ``reraise`` is False)."""
    _SIGNALS.defer += 1
    try:
        yield
    finally:
        _SIGNALS.defer -= 1
    if _SIGNALS.defer == 0 and _SIGNALS.pending:
        _SIGNALS.pending = False
        if reraise:
            raise RunInterrupted(_SIGNALS.received or signal.SIGINT)
        _SIGNALS.swallowed = True


def _raise_swallowed() -> None:
    """Raise the signal a ``reraise=False`` block deferred, if any (once)."""
    if _SIGNALS.swallowed:
        _SIGNALS.swallowed = False
        raise RunInterrupted(_SIGNALS.received or signal.SIGINT)


# ----------------------------------------------------------------------------- paths


def partial_path(out: str | os.PathLike) -> Path:
    """Where a run into ``out`` writes until it has finished: ``OUT.partial`` beside it."""
    out = Path(os.path.abspath(out))
    return out.with_name(out.name + ".partial")


def _is_finished_run(path: Path) -> bool:
    return (path / "results.json").is_file() and (path / "config.json").is_file() and not (path / INCOMPLETE).exists()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_output_path(out: Any, *, overwrite: bool = False, flag: str = "--out") -> Path:
    """``out`` as an absolute path if a run may write there (module docstring); nothing is created.

    Raises:
      TypeError: ``out`` is not a string or path.
      OutputPathError: ``out`` is empty, a file, a non-empty folder that is not a finished
        run, a finished run without ``overwrite``, or under a file or an unwritable folder.
    """
    if not isinstance(out, (str, os.PathLike)):
        raise TypeError(f"{flag} must be a folder path, got {type(out).__name__} {out!r}.")
    if not os.fspath(out).strip():
        raise OutputPathError(f"{flag} must name a folder, got {os.fspath(out)!r}; e.g. {flag} runs/linear.")
    path = Path(os.path.abspath(out))
    partial = partial_path(path)
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"{flag} {path} is a file, not a folder; choose another {flag}.")
    if partial.exists() and not partial.is_dir():
        raise OutputPathError(f"{partial} (where a run into {flag} {path} is written) is a file; remove it.")
    if path.is_dir():
        if _is_finished_run(path):
            if not overwrite:
                raise OutputPathError(
                    f"{path} already holds a finished run (results.json); pass --overwrite or choose another {flag}."
                )
        elif any(path.iterdir()):
            raise OutputPathError(
                f"{flag} {path} is a non-empty folder that holds no finished run; choose a new or empty {flag}."
            )
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise OutputPathError(f"{flag} {path} lies under {parent}, which is a file; choose another {flag}.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputPathError(
            f"{flag} {path}: cannot create folders in {parent} (not writable); choose another {flag}."
        )
    return path


# ----------------------------------------------------------------------------- provenance


def _git_commit(folder: Path) -> dict[str, Any] | None:
    """The commit of the checkout holding this package, or None (no git, not a checkout)."""
    try:
        def git(*args: str) -> str:
            return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=5,
                                  check=True).stdout.strip()

        git("ls-files", "--error-unmatch", "__init__.py")  # the package is tracked, not vendored elsewhere
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--", "."))}
    except (OSError, subprocess.SubprocessError):
        return None


def provenance() -> dict[str, Any]:
    """Versions (package, git commit, JAX, jaxlib, numpy, Python), JAX backend and devices."""
    import jax
    import jaxlib
    import numpy as np

    import stepwise_ntk

    git = _git_commit(Path(stepwise_ntk.__file__).parent)
    return {
        "stepwise_ntk": stepwise_ntk.__version__,
        "git_commit": None if git is None else git["commit"],
        "git_dirty": None if git is None else git["dirty"],
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "x64": bool(jax.config.jax_enable_x64),
    }


# ----------------------------------------------------------------------------- the run


class RunDir:
    """Handle on the folder a run writes into (``OUT.partial`` until it has finished)."""

    def __init__(self, path: Path, out: Path, *, resumed: bool = False, progress: bool = False):
        self.path = path
        self.out = out
        self.resumed = resumed
        self.progress = progress
        self.results_written = False
        self._t0 = time.perf_counter()

    @contextlib.contextmanager
    def phase(self, what: str) -> Iterator[None]:
        """Say on stderr that ``what`` (a long step: a kernel, an eigensystem, a solve) starts and how long it took.

        Silent unless the run shows progress; the lines carry the time since the run started.
        """
        if not self.progress:
            yield
            return
        start = time.perf_counter()
        print(f"[{start - self._t0:7.1f} s] {what} ...", file=sys.stderr, flush=True)
        yield
        print(f"[{time.perf_counter() - self._t0:7.1f} s] {what}: done in {time.perf_counter() - start:.1f} s",
              file=sys.stderr, flush=True)

    def resume_dir(self, name: str) -> Path:
        """A folder for state a rerun can resume from (``resume/<name>``); removed on success."""
        folder = self.path / RESUME / name
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def save_arrays(self, **arrays: Any) -> Path:
        """Write ``arrays.npz`` (compressed; jax arrays are converted to numpy)."""
        return write_npz(self.path / "arrays.npz", arrays, compressed=True)

    def write_results(self, results: dict[str, Any]) -> Path:
        """Write ``results.json`` (status "complete"); the run is published when its block ends.

        JSON has no NaN or ±Inf: such a number is written as ``null`` and listed under
        ``"non_finite"`` (its place, e.g. ``"network_step_times[2]"``, and ``"nan"``,
        ``"inf"`` or ``"-inf"``), so a reader can tell a step that never happened (NaN)
        from an unbounded ratio (Inf).
        """
        non_finite = _non_finite(results)
        record = {"status": "complete", **results, **({"non_finite": non_finite} if non_finite else {})}
        path = write_json(self.path / "results.json", record)
        self.results_written = True
        return path


def _non_finite(x: Any, where: str = "") -> dict[str, str]:
    """Place -> "nan" / "inf" / "-inf" of every non-finite number in a JSON-able tree."""
    import numpy as np

    if isinstance(x, dict):
        return {k: v for key, item in x.items() for k, v in _non_finite(item, f"{where}.{key}" if where
                                                                         else str(key)).items()}
    if isinstance(x, (list, tuple)):
        return {k: v for i, item in enumerate(x) for k, v in _non_finite(item, f"{where}[{i}]").items()}
    if isinstance(x, (np.ndarray, np.generic)) or hasattr(x, "__array__"):
        arr = np.asarray(x)
        if arr.dtype.kind not in "fc":
            return {}
        return _non_finite(arr.item() if arr.ndim == 0 else arr.tolist(), where)
    if isinstance(x, float) and not np.isfinite(x):
        return {where: "nan" if np.isnan(x) else ("inf" if x > 0 else "-inf")}
    return {}


def _fingerprint(command: str, settings: dict, extra: dict) -> str:
    import stepwise_ntk

    text = json.dumps({"command": command, "settings": settings, "version": stepwise_ntk.__version__, **extra},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _lock(partial: Path) -> int:
    fd = os.open(partial / _LOCK, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        os.close(fd)
        if err.errno in (errno.EAGAIN, errno.EACCES):
            marker = _read_json(partial / INCOMPLETE) or {}
            raise OutputPathError(
                f"another run (pid {marker.get('pid', '?')}) is writing {partial}; wait for it or choose another --out."
            ) from None
        raise
    return fd


def _open_partial(partial: Path, out: Path, config: dict, *, overwrite: bool) -> tuple[int, bool]:
    """Create ``partial`` (config.json, INCOMPLETE) or take over a stopped run of the same settings.

    Returns the lock's file descriptor and whether an earlier partial run is resumed.
    """
    if partial.is_dir():
        fd = _lock(partial)
        old = _read_json(partial / "config.json") or {}
        if old.get("fingerprint") == config["fingerprint"] and (partial / INCOMPLETE).exists():
            for child in partial.iterdir():  # keep only what can be resumed (and the lock)
                if child.name not in (RESUME, _LOCK):
                    shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
            write_json(partial / "config.json", config)
            return fd, True
        os.close(fd)
        if not overwrite:
            what = "an interrupted run with other settings" if old else "files of no run of these settings"
            raise OutputPathError(
                f"{partial} holds {what}; rerun with its settings to resume it, pass --overwrite to discard it, "
                f"or choose another --out."
            )
        shutil.rmtree(partial)
    parent = out.parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.new-", dir=parent))
    try:
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp's 0700 would outlive the rename
        write_json(staging / "config.json", config)
        os.rename(staging, partial)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return _lock(partial), False


_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2``); False where the OS cannot."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    ok = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0
    return ok


def _publish(partial: Path, out: Path) -> None:
    """Move the finished ``partial`` to ``out``; an old finished run there is replaced, then deleted."""
    shutil.rmtree(partial / RESUME, ignore_errors=True)
    (partial / INCOMPLETE).unlink(missing_ok=True)
    (partial / _LOCK).unlink(missing_ok=True)
    if out.is_dir() and any(out.iterdir()):
        trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        if _exchange(partial, out):  # out: the new run; partial: the old one
            os.replace(partial, trash)
        else:
            os.replace(out, trash)
            os.replace(partial, out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(partial, out)  # onto a missing or empty folder


def _stop_reason(err: BaseException) -> dict[str, Any]:
    if isinstance(err, RunInterrupted):
        return {"status": "interrupted", "signal": err.signal_name, "reason": f"interrupted by {err.signal_name}"}
    if isinstance(err, KeyboardInterrupt):
        return {"status": "interrupted", "signal": "SIGINT", "reason": "interrupted by SIGINT (Ctrl-C)"}
    message = " ".join(str(err).split())
    return {"status": "failed", "signal": None, "reason": f"{type(err).__name__}: {message}" if message
            else type(err).__name__}


@contextlib.contextmanager
def run_directory(
    out: str | os.PathLike,
    command: str,
    settings: dict,
    *,
    overwrite: bool = False,
    extra: dict[str, Any] | None = None,
    progress: bool = False,
) -> Iterator[RunDir]:
    """Open ``OUT.partial`` for a run of ``command`` and publish it as ``out`` when the block ends.

    Args:
      out: the output folder (checked by :func:`check_output_path`).
      command: the subcommand, recorded in ``config.json``.
      settings: the resolved settings (JSON-able), recorded and fingerprinted.
      overwrite: replace a finished run in ``out`` (after this one has succeeded), and
        discard a partial run of other settings.
      extra: more JSON-able provenance for ``config.json`` (e.g. the data folder); part of
        the fingerprint.
      progress: :meth:`RunDir.phase` reports the long steps on stderr.

    Yields:
      :class:`RunDir` on ``OUT.partial``; the run writes ``results.json`` with
      :meth:`RunDir.write_results`.

    Raises:
      OutputPathError: ``out`` cannot hold the run, or a partial run there cannot be
        resumed (other settings, another run writing it); nothing was changed.
      RunFailedError: the block ended without writing results.
    """
    path = check_output_path(out, overwrite=overwrite)
    partial = partial_path(path)
    extra = dict(extra or {})
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    config = {"command": command, "settings": settings, **extra, "versions": provenance(), "started": started,
              "fingerprint": _fingerprint(command, settings, extra)}
    with _deferred(reraise=False):  # a signal here is raised below, where the marker says so
        try:
            fd, resumed = _open_partial(partial, path, config, overwrite=overwrite)
        except OSError as err:
            raise OutputPathError(f"--out {path}: cannot create {partial}: {err.strerror or err}.") from None
        marker = {"status": "running", "pid": os.getpid(), "started": started, "resumed": resumed,
                  "fingerprint": config["fingerprint"]}
        write_json(partial / INCOMPLETE, marker)
    run = RunDir(partial, path, resumed=resumed, progress=progress)
    try:
        try:
            _raise_swallowed()
            yield run
            if not run.results_written:
                raise RunFailedError("the run ended without writing results.json.")
        except BaseException as err:
            with _deferred(reraise=False):
                write_json(partial / INCOMPLETE, {
                    **marker, **_stop_reason(err), "stopped": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "resume": f"rerun the same command to resume from {partial} (other settings: --overwrite "
                              f"discards it); {path} is unchanged",
                })
            raise
        with _deferred(reraise=False):  # the run has finished: a late Ctrl-C does not undo it
            _publish(partial, path)
    finally:
        os.close(fd)
