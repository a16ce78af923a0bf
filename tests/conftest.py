"""Strict JAX settings for the whole suite, and one compilation cache for the whole run.

x64 is on so float64 references are real float64; dtype promotion is strict so an
accidental float32/float64 mix is an error instead of a silent upcast. Tests that
need float32 ask for it explicitly.

Compilation is most of the suite's time, and much of it is the same program compiled again:
by a fresh closure in the same process (jit's in-memory cache is keyed on the function
object), by the other xdist worker, or by a subprocess (the CLI, benchmark and notebook
runs). JAX's persistent compilation cache is keyed on the compiled program itself (with the
XLA flags and backend), so it serves every repeat. The cache is a fresh folder per test run,
made by the controlling process and handed to workers and subprocesses through the
environment: every program is still compiled from scratch at least once per run, and
nothing a run leaves behind can answer for the next. The cache has no size limit, so JAX
writes its entries without a file lock (its default): a read that races another process's
write of the same entry fails zlib's stream check (the environment has no zstandard), and
JAX warns and compiles instead. (A size limit would turn the lock on, but then every write
scans the whole folder while holding it.)

Most of a compilation is LLVM's optimisation of the generated code, so the suite compiles at
LLVM optimisation level 1 (``--xla_backend_optimization_level=1`` in ``XLA_FLAGS``, inherited
by workers and subprocesses; a level the caller set is kept). It is the same XLA program:
XLA's own passes (fusion, layout) and the IEEE semantics do not change, only how much LLVM
works on the machine code, which then runs somewhat slower. Measured on one host: the WRN
end-to-end network run 55.7 s at the default level, 34.6 s at level 1; the whole suite 631 s
and 567 s. Users and the benchmarks run at XLA's default level, and the tests of the crash
flags (test_xla_flags, test_solver_scale) start fresh processes without ``XLA_FLAGS``.
"""

import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

# Before JAX's CPU backend starts (it reads XLA_FLAGS once), and before stepwise_ntk appends
# its own flags to the same variable.
_OPT_LEVEL = "--xla_backend_optimization_level"
if _OPT_LEVEL not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_OPT_LEVEL}=1".strip()

import jax  # noqa: E402
import pytest  # noqa: E402

import stepwise_ntk  # noqa: E402, F401  (before any JAX computation: it sets the XLA CPU flags, see _xla_flags)

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")

SHARED_CIFAR = Path(__file__).resolve().parents[1].parent / "shared" / "cifar10"

_CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"
_OWNED_CACHE: list[str] = []  # the folder this process made (the controller's), removed at exit


def pytest_configure(config):
    # xdist workers inherit the controller's environment (and its folder); the controller,
    # or a serial run, always makes a fresh one, whatever the caller's environment says.
    if "PYTEST_XDIST_WORKER" not in os.environ:
        os.environ[_CACHE_ENV] = tempfile.mkdtemp(prefix="stepwise-ntk-test-jax-cache-")
        _OWNED_CACHE.append(os.environ[_CACHE_ENV])
    # Small programs too: most of the suite's are, and a hit costs less than their compile.
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
    jax.config.update("jax_compilation_cache_dir", os.environ[_CACHE_ENV])
    jax.config.update("jax_persistent_cache_min_compile_time_secs",
                      float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))


def pytest_unconfigure(config):
    for folder in _OWNED_CACHE:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def cifar_dir() -> Path:
    """The offline CIFAR-10 subset beside the checkout (../shared/cifar10)."""
    if not (SHARED_CIFAR / "cifar-10-batches-py").is_dir():
        pytest.skip(f"CIFAR-10 subset not found at {SHARED_CIFAR}")
    return SHARED_CIFAR


@contextlib.contextmanager
def _compiled():
    """The ``Compiling …`` messages JAX logs inside the block (``jax.log_compiles``)."""
    messages: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("jax")
    logger.addHandler(handler)
    try:
        with jax.log_compiles():
            yield messages
    finally:
        logger.removeHandler(handler)
        messages[:] = [m for m in messages if m.startswith("Compiling")]


@pytest.fixture
def compiled():
    """``with compiled() as log: …`` then ``assert not log``: what the block compiled."""
    return _compiled
