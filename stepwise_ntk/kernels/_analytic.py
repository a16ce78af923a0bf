"""Analytic NNGP / NTK Gram matrices of an architecture: batched, memory-budgeted, cached.

``analytic_kernels(arch, x1, x2)`` evaluates neural-tangents' infinite-width
``kernel_fn`` of ``arch.stax()`` block by block:

  K[i, j] = kernel_fn(x1[I_i], x2[J_j])        (blocks of at most batch_size x batch_size)

* Symmetric Grams (``x2=None``, e.g. K on the 2n views) compute only the blocks on and
  above the diagonal and mirror them; the result is exactly symmetric. With an automatic
  batch size, a symmetric Gram needing more than 32 MiB is split into at least 4 x 4 blocks
  for this reason (about 40% less work).
* Blocks run on all local devices (one block in flight per device); the last, shorter
  block of each axis is padded by repeating a row, so every block has one compiled shape.
  Each (block shape, device) is traced and compiled once per process: the executable that
  gives the memory analysis below is the one that runs, and later calls reuse it.
* Memory: before anything runs, XLA's memory analysis of the compiled block (arguments +
  temporaries + outputs) is compared with the limit min(memory_budget_bytes, device memory).
  A block that does not fit is refused with a ``KernelMemoryError`` (a ValueError) giving the
  estimated bytes and the largest batch size that fits. For CNNs with pooling the per-pair
  cost grows like (H W)^2 (the full spatial covariance); the compiled analysis includes it.
  The assembled result itself (n1 n2 x itemsize per kind) must fit in free host memory.
* Precision: the whole computation runs in ``dtype`` (float32 or float64) whatever the
  global ``jax_enable_x64`` flag. On AVX-512 CPUs float64 kernels of convolutional
  architectures need ``--xla_cpu_max_isa=AVX2`` (jaxlib 0.10's AVX-512 convolution kernel
  segfaults on them), which importing stepwise_ntk sets before JAX starts
  (:mod:`stepwise_ntk._xla_flags`). If JAX had started before that, they are computed in a
  fresh process where the flag applies (:mod:`stepwise_ntk.kernels._isolated`).
* Cache: with ``cache_dir`` the result is stored under a key built from the architecture's
  kernel config, the kinds, the dtype, the sha256 of both inputs, and library versions
  (``stepwise_ntk.kernels._cache``); any change to the inputs misses.

Example:
  >>> import numpy as np
  >>> from stepwise_ntk.kernels import MLP, analytic_ntk
  >>> arch = MLP(depth=2, width=512, d=8)
  >>> x = np.random.default_rng(0).normal(size=(10, 8, 8, 3))
  >>> K = analytic_ntk(arch, x, progress=False)               # float64 whatever jax_enable_x64
  >>> K_test = analytic_ntk(arch, x[:3], x, progress=False)   # cross-kernel
  >>> K.shape, K_test.shape, K.dtype
  ((10, 10), (3, 10), dtype('float64'))
  >>> bool(np.all(K == K.T)) and np.allclose(K_test, K[:3])
  True
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import math
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

import stepwise_ntk._xla_flags as _xla_flags
from stepwise_ntk._checks import check_float_dtype, check_positive_int, check_type
from stepwise_ntk.kernels._cache import KernelCache, cache_key
from stepwise_ntk.kernels._isolated import analytic_kernels_isolated
from stepwise_ntk.kernels._nt_compat import NT_VERSION
from stepwise_ntk.kernels.architectures import ArchSpec

__all__ = [
    "KINDS",
    "KernelMemoryError",
    "analytic_kernels",
    "analytic_ntk",
    "default_memory_budget",
    "device_memory_bytes",
    "kernel_block_bytes",
]

KINDS = ("nngp", "ntk")


class KernelMemoryError(ValueError):
    """A kernel computation refused up front because it would not fit in memory.

    Attributes:
      estimated_bytes: estimated bytes of one block at the requested (or automatic) batch size.
      limit_bytes: the limit it was compared with.
      batch_size: the batch size that was refused (None when no batching can help).
      fitting_batch_size: the largest batch size whose estimate fits, or None if none does.
    """

    def __init__(self, message: str, *, estimated_bytes: int, limit_bytes: int,
                 batch_size: int | None, fitting_batch_size: int | None):
        super().__init__(message)
        self.estimated_bytes = estimated_bytes
        self.limit_bytes = limit_bytes
        self.batch_size = batch_size
        self.fitting_batch_size = fitting_batch_size


def _gib(n: float) -> str:
    return f"{n / 2**30:.3g} GiB"


def device_memory_bytes(device: jax.Device) -> int:
    """Memory of ``device``: its allocator limit (GPU/TPU) or the machine's RAM (CPU)."""
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - backends without stats raise various errors
        stats = None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"])
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _host_free_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError):  # not Linux
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def default_memory_budget(devices: Sequence[jax.Device] | None = None) -> int:
    """Default per-block budget: half the memory of the smallest device used."""
    devices = list(devices) if devices is not None else jax.local_devices()
    return min(device_memory_bytes(d) for d in devices) // 2


# --- generic blocked Gram engine (also used by the empirical NTK) ----------------------


@dataclasses.dataclass(frozen=True)
class BlockFns:
    """Jitted block functions of a Gram computation.

    off(*consts, xa, xb) -> tuple of (len(xa), len(xb)) arrays;
    diag(*consts, xa) -> tuple of (len(xa), len(xa)) arrays, symmetric up to rounding (the
    engine mirrors their upper triangle).
    """

    off: Callable
    diag: Callable
    n_out: int


def _struct(a: Any, device: jax.Device) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(tuple(a.shape), np.dtype(a.dtype),
                                sharding=jax.sharding.SingleDeviceSharding(device),
                                weak_type=bool(getattr(a, "weak_type", False)))


@functools.lru_cache(maxsize=256)
def _compile(fn: Callable, treedef: Any, leaves: tuple, device: jax.Device, x64: bool) -> Any:
    del x64  # part of the cache key only: tracing reads the flag from the context
    args = jax.tree.unflatten(treedef, [
        jax.ShapeDtypeStruct(s, np.dtype(d), sharding=jax.sharding.SingleDeviceSharding(device),
                             weak_type=w) for s, d, w in leaves])
    return fn.lower(*args).compile()


def _key(fn: Callable, args: tuple, device: jax.Device) -> tuple:
    leaves, treedef = jax.tree.flatten(jax.tree.map(lambda a: _struct(a, device), args))
    shapes = tuple((tuple(x.shape), x.dtype.str, bool(x.weak_type)) for x in leaves)
    return fn, treedef, shapes, device, bool(jax.config.jax_enable_x64)


def _executable(fn: Callable, args: tuple, device: jax.Device) -> Any:
    """The compiled ``fn`` for arguments shaped like ``args`` (arrays or structs) on ``device``.

    One compile per (function, shapes, device), shared by the memory analysis and the calls:
    calling the jitted function instead would compile the same block a second time (the
    ahead-of-time ``lower().compile()`` of the memory analysis does not fill jit's cache).
    """
    return _compile(*_key(fn, args, device))


@functools.lru_cache(maxsize=256)
def _compiled_bytes(*key: Any) -> int | None:
    # Cached: reading XLA's memory analysis costs 0.1-2 ms, as much as a small Gram.
    analysis = _compile(*key).memory_analysis()
    if analysis is None:
        return None
    return int(analysis.temp_size_in_bytes + analysis.argument_size_in_bytes
               + analysis.output_size_in_bytes - analysis.alias_size_in_bytes)


def _bytes_of_call(fn: Callable, args: tuple, device: jax.Device) -> int | None:
    return _compiled_bytes(*_key(fn, args, device))


def _balanced(n: int, b: int) -> int:
    """Block length <= b that splits n into ceil(n / b) nearly equal blocks (least padding)."""
    blocks = -(-n // b)
    return -(-n // blocks)


@dataclasses.dataclass(frozen=True)
class _Problem:
    fns: BlockFns
    consts: tuple
    x1: np.ndarray
    x2: np.ndarray | None
    what: str
    device: jax.Device  # where the memory analysis compiles (the first device used)

    @property
    def symmetric(self) -> bool:
        return self.x2 is None

    @property
    def n1(self) -> int:
        return len(self.x1)

    @property
    def n2(self) -> int:
        return self.n1 if self.x2 is None else len(self.x2)

    def block_lengths(self, b: int) -> tuple[int, int]:
        b1 = _balanced(self.n1, b)
        return b1, (b1 if self.symmetric else _balanced(self.n2, b))

    def block_bytes(self, b: int) -> int | None:
        """XLA's estimate for one block at batch size b (max over the block kinds used)."""
        b1, b2 = self.block_lengths(b)
        xa = jax.ShapeDtypeStruct((b1, *self.x1.shape[1:]), self.x1.dtype)
        estimates = []
        if self.symmetric:
            estimates.append(_bytes_of_call(self.fns.diag, (*self.consts, xa), self.device))
            if b1 < self.n1:
                estimates.append(_bytes_of_call(self.fns.off, (*self.consts, xa, xa),
                                                self.device))
        else:
            xb = jax.ShapeDtypeStruct((b2, *self.x2.shape[1:]), self.x2.dtype)
            estimates.append(_bytes_of_call(self.fns.off, (*self.consts, xa, xb), self.device))
        if any(e is None for e in estimates):
            return None
        return max(estimates)


def _largest_fitting(problem: _Problem, limit: int, start: int) -> tuple[int | None, int]:
    """Largest batch size <= start whose estimate fits ``limit`` (None if not even 1)."""
    b = start
    est = problem.block_bytes(b)
    while est > limit:
        if b == 1:
            return None, est
        # Block memory is ~quadratic in b; lower-order terms make this an underestimate of
        # the shrink needed, so re-measure and repeat (two or three compiles in practice).
        b = max(1, min(b - 1, math.floor(0.97 * b * math.sqrt(limit / est))))
        est = problem.block_bytes(b)
    return b, est


# A symmetric Gram whose blocks are this big is split into at least _SPLIT_BLOCKS blocks per
# axis: only the blocks on and above the diagonal are computed (10 of 16, ~40% less work),
# which outweighs the per-block cost once a block is large (measured in
# benchmarks/cases/kernels.py).
_SPLIT_BYTES = 32 * 2**20
_SPLIT_BLOCKS = 4


def _split_for_symmetry(problem: _Problem, b: int, est: int) -> int:
    if not problem.symmetric or est <= _SPLIT_BYTES:
        return b
    return min(b, -(-problem.n1 // _SPLIT_BLOCKS))


def _plan_batch_size(problem: _Problem, batch_size: int | None, budget: int,
                     devices: Sequence[jax.Device]) -> int:
    device_mem = min(device_memory_bytes(d) for d in devices)
    limit = min(budget, device_mem)
    binding = (f"memory_budget_bytes={_gib(budget)}" if budget <= device_mem
               else f"device memory {_gib(device_mem)}")
    n_max = max(problem.n1, problem.n2)
    start = n_max if batch_size is None else min(batch_size, n_max)
    est = problem.block_bytes(start)
    if est is None:
        warnings.warn("XLA gives no memory analysis on this backend; the memory budget is not "
                      "checked.", stacklevel=3)
        return start if batch_size is not None else min(start, 256)
    if est <= limit:
        return _split_for_symmetry(problem, start, est) if batch_size is None else start
    b1, b2 = problem.block_lengths(start)
    fit, fit_est = _largest_fitting(problem, limit, start)
    head = (f"{problem.what} for {problem.n1}x{problem.n2} inputs of shape "
            f"{problem.x1.shape[1:]} in {problem.x1.dtype}: a {b1}x{b2} block needs an estimated "
            f"{_gib(est)} (XLA memory analysis: arguments, temporaries, outputs), more than the "
            f"limit {_gib(limit)} ({binding}).")
    if fit is None:
        advice = (f" Even batch_size=1 needs {_gib(fit_est)}: use smaller images, a shallower "
                  "architecture, float32, or a larger memory_budget_bytes.")
    else:
        advice = (f" batch_size={fit} fits (estimated {_gib(fit_est)}): pass batch_size={fit}"
                  f"{' (or leave batch_size=None to choose it automatically)' if batch_size else ''}"
                  ", or raise memory_budget_bytes.")
    if batch_size is None and fit is not None:
        return _split_for_symmetry(problem, fit, fit_est)
    raise KernelMemoryError(head + advice, estimated_bytes=est, limit_bytes=limit,
                            batch_size=start, fitting_batch_size=fit)


# Row strips of 64 keep a transposed copy's source and destination tiles in cache: 2-3x
# faster than strips of 256 at n = 512..4096 (measured on the benchmark machine).
_STRIP = 64


@functools.lru_cache(maxsize=8)
def _strictly_lower(m: int) -> np.ndarray:
    mask = np.tri(m, m, -1, dtype=bool)
    mask.flags.writeable = False
    return mask


def _copy_transposed(dst: np.ndarray, src: np.ndarray, step: int = _STRIP) -> None:
    """dst[...] = src.T, in row strips of ``src`` (a cache-friendly transposed copy)."""
    for i in range(0, len(src), step):
        dst[:, i:i + step] = src[i:i + step].T


def _symmetrise_strip(dst: np.ndarray, src: np.ndarray) -> None:
    """dst (m, m) = upper triangle of src (m, m) with its mirror image below."""
    np.copyto(dst, src)
    np.copyto(dst, src.T, where=_strictly_lower(len(src)))


def _mirror_upper(k: np.ndarray, step: int = _STRIP) -> np.ndarray:
    """Copy the upper triangle of the square, writable ``k`` onto its lower one, in place.

    Makes a diagonal block exactly symmetric (its computed K[i, j] and K[j, i] can differ in
    the last bit). Done on the host, in row strips: a transpose inside the jitted block would
    let XLA fuse and recompute the kernel's elementwise tail for both triangles.
    """
    n = len(k)
    for i in range(0, n, step):
        j = min(i + step, n)
        k[j:, i:j] = k[i:j, j:].T
        strip = k[i:j, i:j]  # its lower entries are written, only its upper ones are read
        np.copyto(strip, strip.T, where=_strictly_lower(j - i))
    return k


def _symmetric_copy(k: np.ndarray, step: int = _STRIP) -> np.ndarray:
    """A new array holding k's upper triangle and its mirror image: one pass over k."""
    n = len(k)
    out = np.empty(k.shape, k.dtype)
    for i in range(0, n, step):
        j = min(i + step, n)
        out[i:j, j:] = k[i:j, j:]
        out[j:, i:j] = k[i:j, j:].T
        _symmetrise_strip(out[i:j, i:j], k[i:j, i:j])
    return out


def _pad_rows(x: np.ndarray, length: int) -> np.ndarray:
    # Repeat a real row (not zeros: a zero input has an undefined angle in many kernels).
    if len(x) == length:
        return x
    return np.concatenate([x, np.repeat(x[-1:], length - len(x), axis=0)])


def blocked_gram(
    fns: BlockFns,
    consts: tuple,
    x1: np.ndarray,
    x2: np.ndarray | None,
    *,
    batch_size: int | None,
    memory_budget_bytes: int | None,
    devices: Sequence[jax.Device] | None,
    progress: bool,
    what: str,
) -> tuple[np.ndarray, ...]:
    """Evaluate a Gram matrix block by block (see module docstring). Inputs already validated.

    Args:
      fns: the jitted block functions.
      consts: leading arguments of every block call (e.g. network parameters), pytrees.
      x1: (n1, ...); x2: (n2, ...) or None for the symmetric Gram of x1.
      batch_size: block edge; None chooses the largest that fits the memory limit.
    Returns:
      ``fns.n_out`` arrays (n1, n2), numpy, dtype of the block outputs.
    """
    devices = list(devices) if devices is not None else jax.local_devices()
    if not devices:
        raise ValueError("devices is empty: pass None to use all local devices.")
    # Trace and run in the inputs' precision whatever the global x64 flag: float32 really is
    # float32 (NT would otherwise promote to float64 under x64) and float64 needs no global
    # jax_enable_x64.
    with jax.enable_x64(bool(x1.dtype == np.float64)):
        return _blocked_gram(fns, consts, x1, x2, batch_size=batch_size,
                             memory_budget_bytes=memory_budget_bytes, devices=devices,
                             progress=progress, what=what)


def _blocked_gram(fns, consts, x1, x2, *, batch_size, memory_budget_bytes, devices, progress,
                  what) -> tuple[np.ndarray, ...]:
    if batch_size is not None:
        check_positive_int("batch_size", batch_size, hint=" or None (automatic)")
    if memory_budget_bytes is None:
        budget = default_memory_budget(devices)
    else:
        budget = check_positive_int("memory_budget_bytes", memory_budget_bytes,
                                    hint=" or None (half the device memory)")
    problem = _Problem(fns, consts, x1, x2, what, devices[0])
    n1, n2 = problem.n1, problem.n2

    out_bytes = n1 * n2 * x1.dtype.itemsize * fns.n_out
    free = _host_free_bytes()
    if out_bytes > free:
        raise KernelMemoryError(
            f"{what} for {n1}x{n2} inputs in {x1.dtype}: the result itself needs "
            f"{_gib(out_bytes)}, more than the {_gib(free)} of free host memory. No batch size "
            "helps: use fewer inputs, float32, or fewer kernel kinds.",
            estimated_bytes=out_bytes, limit_bytes=free, batch_size=None,
            fitting_batch_size=None)

    b = _plan_batch_size(problem, batch_size, budget, devices)
    b1, b2 = problem.block_lengths(b)
    rows = [(i, min(i + b1, n1)) for i in range(0, n1, b1)]
    cols = rows if problem.symmetric else [(j, min(j + b2, n2)) for j in range(0, n2, b2)]
    blocks = [(r, c) for ri, r in enumerate(rows) for ci, c in enumerate(cols)
              if not problem.symmetric or ci >= ri]
    devices = devices[:len(blocks)]

    # Inputs go to the compiled blocks as numpy slices (the executable transfers them to its
    # device, as a jitted call would); only the shared constants are placed once per device.
    consts_on = {d: jax.device_put(consts, d) if consts else () for d in devices}
    xs2 = x1 if problem.symmetric else x2
    xa_like = np.empty((b1, *x1.shape[1:]), x1.dtype)
    xb_like = np.empty((b2, *xs2.shape[1:]), xs2.dtype)
    exe_diag = {d: _executable(fns.diag, (*consts_on[d], xa_like), d)
                for d in devices if problem.symmetric}
    exe_off = {d: _executable(fns.off, (*consts_on[d], xa_like, xb_like), d) for d in devices
               if not problem.symmetric or len(blocks) > 1}

    def launch(block, device):
        (i0, i1), (j0, j1) = block
        xa = _pad_rows(x1[i0:i1], b1)
        if problem.symmetric and i0 == j0:
            return exe_diag[device](*consts_on[device], xa)
        return exe_off[device](*consts_on[device], xa, _pad_rows(xs2[j0:j1], b2))

    if len(blocks) == 1:  # no assembly: the block itself (trimmed view, or mirrored copy)
        result = launch(blocks[0], devices[0])
        if problem.symmetric:
            return tuple(_symmetric_copy(np.asarray(k)) for k in result)
        return tuple(np.asarray(k)[:n1, :n2] for k in result)

    outs = None
    with tqdm(total=len(blocks), desc=what, unit="block", disable=not progress,
              leave=False) as bar:
        for start in range(0, len(blocks), len(devices)):
            wave = blocks[start:start + len(devices)]
            pending = [launch(block, device) for block, device in zip(wave, devices, strict=False)]
            for ((i0, i1), (j0, j1)), result in zip(wave, pending, strict=True):
                for k, block_k in enumerate(result):
                    block_k = np.asarray(block_k)[: i1 - i0, : j1 - j0]
                    if outs is None:
                        outs = [np.empty((n1, n2), block_k.dtype) for _ in range(fns.n_out)]
                    outs[k][i0:i1, j0:j1] = block_k
                    if problem.symmetric and i0 != j0:
                        _copy_transposed(outs[k][j0:j1, i0:i1], block_k)
                    elif problem.symmetric:
                        _mirror_upper(outs[k][i0:i1, i0:i1])
                bar.update(1)
    return tuple(outs)


# --- analytic kernels -----------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _analytic_block_fns(arch: ArchSpec, kinds: tuple[str, ...]) -> BlockFns:
    kernel_fn = arch.kernel_fn()

    @jax.jit
    def off(xa, xb):
        return tuple(kernel_fn(xa, xb, kinds))

    @jax.jit
    def diag(xa):
        return tuple(kernel_fn(xa, None, kinds))

    return BlockFns(off=off, diag=diag, n_out=len(kinds))


def _check_kinds(get: str | Sequence[str]) -> tuple[str, ...]:
    kinds = (get,) if isinstance(get, str) else tuple(get)
    bad = [k for k in kinds if k not in KINDS]
    if not kinds or bad or len(set(kinds)) != len(kinds):
        raise ValueError(f"get must name distinct kernel kinds from {KINDS}, got {get!r}.")
    return kinds


def check_dtype(dtype: Any) -> np.dtype:
    """np.dtype of ``dtype`` if it is float32 or float64: TypeError (no dtype) / ValueError."""
    return check_float_dtype("dtype", dtype)


def _crashes_here(arch: ArchSpec, dtype: np.dtype, devices: Sequence[jax.Device]) -> bool:
    """Whether this process would hit jaxlib's float64 convolution crash (AVX-512 CPUs).

    Importing stepwise_ntk caps XLA's CPU code at AVX2 before JAX starts
    (stepwise_ntk._xla_flags); only a program that started JAX first still has the crash.
    """
    return (dtype == np.float64 and arch.uses_conv and any(d.platform == "cpu" for d in devices)
            and not _xla_flags.in_effect(_xla_flags.MAX_ISA))


def check_inputs(arch: ArchSpec | None, x: Any, name: str, dtype: np.dtype,
                 like: np.ndarray | None = None) -> np.ndarray:
    """``x`` as a host array of ``dtype`` after checking its shape, kind and finiteness.

    Args:
      arch: the architecture whose input shape ``x`` must have (``arch.check_input_shape``),
        or None.
      x: (n, ...) inputs, a non-empty batch of real numbers.
      name: the argument's name in messages ("x1", "x2").
      dtype: the compute dtype (float32 or float64, from :func:`check_dtype`); ``x`` is cast
        to it.
      like: (n1, ...) the other side of a cross-kernel: ``x`` needs its trailing shape.

    Raises:
      ValueError: not real numbers, no batch axis or no inputs, a shape that differs from
        ``like`` or that ``arch`` does not take, NaN or infinite entries.
    """
    x = np.asarray(x)
    if x.dtype.kind not in "fiu":
        raise ValueError(f"{name} must be a real numeric array, got dtype {x.dtype}.")
    if x.ndim < 2 or len(x) == 0:
        raise ValueError(
            f"{name} must be a non-empty batch of inputs, shape (n, ...), got shape {x.shape}."
        )
    if like is not None and x.shape[1:] != like.shape[1:]:
        raise ValueError(
            f"{name} has inputs of shape {x.shape[1:]} but x1 has {like.shape[1:]}: both sides "
            "of a kernel must use the same input shape (same image size and channels)."
        )
    if arch is not None:
        arch.check_input_shape(tuple(x.shape[1:]))
    x = np.asarray(x, dtype=dtype)
    if not _all_finite(x):
        raise ValueError(f"{name} contains NaN or infinite values.")
    return x


def _all_finite(x: np.ndarray) -> bool:
    """Whether every entry of the float array ``x`` is finite.

    A NaN or infinite term makes a sum NaN or infinite, so a finite sum proves every entry
    finite in one pass with no temporary (``np.isfinite(x).all()`` writes an n-byte mask: at
    n = 512 CIFAR images that check alone was 5% of the Gram's time). Only a non-finite sum,
    which finite entries can also give by overflowing, goes to the elementwise check.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        total = np.add.reduce(x, axis=None)
    return bool(np.isfinite(total)) or bool(np.isfinite(x).all())


def _library_versions() -> dict[str, str]:
    try:
        own = importlib.metadata.version("stepwise_ntk")
    except importlib.metadata.PackageNotFoundError:
        own = "unknown"
    return {"stepwise_ntk": own, "neural_tangents": NT_VERSION, "jax": jax.__version__}


def analytic_kernels(
    arch: ArchSpec,
    x1: Any,
    x2: Any = None,
    *,
    get: str | Sequence[str] = ("ntk",),
    dtype: Any = np.float64,
    batch_size: int | None = None,
    memory_budget_bytes: int | None = None,
    devices: Sequence[jax.Device] | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """Infinite-width NNGP and/or NTK Gram matrices of ``arch`` (neural-tangents ``kernel_fn``).

    K(x, y) is the per-output kernel: the d outputs are i.i.d. at infinite width, so the
    network's (n d) x (n d) kernel is K kron I_d. For an output scaled by alpha, multiply by
    alpha^2.

    Args:
      arch: an architecture (``MLP``, ``MyrtleCNN``, ``WideResNet``, ...).
      x1: (n1, ...) inputs, e.g. the 2n views (n1, H, W, C).
      x2: (n2, ...) inputs with x1's trailing shape, or None for the symmetric Gram of x1.
      get: "ntk", "nngp" or a tuple of both.
      dtype: float32 or float64, the precision of the whole computation (independent of
        the global jax_enable_x64 flag); inputs are cast to it.
      batch_size: block edge; None picks the largest that fits the memory limit.
      memory_budget_bytes: per-device limit for one block; None = half the device memory.
      devices: devices to spread blocks over; None = all local devices.
      cache_dir: directory of the on-disk cache, or None for no caching.
      progress: show a tqdm bar when there is more than one block.

    Returns:
      {kind: (n1, n2) numpy array of ``dtype``} for each kind in ``get``.

    Raises:
      KernelMemoryError: a block (at ``batch_size``) or the result does not fit; says how
        many bytes it needs and which batch size fits.
      TypeError: ``arch`` is not an ``ArchSpec``, ``dtype`` names no dtype, a non-integer
        ``batch_size`` or ``memory_budget_bytes``.
      ValueError: bad inputs (shape unsupported by ``arch``, mismatched x1/x2 shapes,
        NaN, unknown kind).
    """
    check_type("arch", arch, ArchSpec, "an architecture spec (an ArchSpec such as MLP(...))")
    kinds = _check_kinds(get)
    dt = check_dtype(dtype)
    x1 = check_inputs(arch, x1, "x1", dt)
    x2 = None if x2 is None else check_inputs(arch, x2, "x2", dt, like=x1)
    isolate = _crashes_here(arch, dt, list(devices) if devices is not None else jax.local_devices())

    cache = key = meta = None
    if cache_dir is not None:
        cache = KernelCache(Path(cache_dir))
        meta = {"arch": arch.kernel_config(), "get": sorted(kinds), "dtype": dt.name,
                "versions": _library_versions()}
        key = cache_key(meta, {"x1": x1, "x2": x2})
        hit = cache.load(key)
        if hit is not None and all(k in hit for k in kinds):
            return {k: hit[k] for k in kinds}

    stored = tuple(sorted(kinds)) if cache is not None else kinds
    if isolate:  # JAX started before the XLA flag could apply: compute where it does
        result = analytic_kernels_isolated(arch, x1, x2, kinds=stored, dtype=dt, batch_size=batch_size,
                                           memory_budget_bytes=memory_budget_bytes, progress=progress)
    else:
        outs = blocked_gram(
            _analytic_block_fns(arch, stored), (), x1, x2, batch_size=batch_size,
            memory_budget_bytes=memory_budget_bytes, devices=devices, progress=progress,
            what=f"{'+'.join(stored)} of {type(arch).__name__}",
        )
        result = dict(zip(stored, outs, strict=True))
    if cache is not None:
        cache.save(key, result, meta)
    return {k: result[k] for k in kinds}


def analytic_ntk(arch: ArchSpec, x1: Any, x2: Any = None, **kwargs: Any) -> np.ndarray:
    """The infinite-width NTK Gram (n1, n2) of ``arch``; keyword arguments as ``analytic_kernels``."""
    return analytic_kernels(arch, x1, x2, get="ntk", **kwargs)["ntk"]


def kernel_block_bytes(arch: ArchSpec, input_shape: Sequence[int], batch_size: int, *,
                       get: str | Sequence[str] = ("ntk",), dtype: Any = np.float64,
                       symmetric: bool = True, device: jax.Device | None = None) -> int | None:
    """XLA's estimate of the bytes one (batch_size x batch_size) kernel block needs.

    Args:
      input_shape: shape of one input, e.g. (32, 32, 3).
      symmetric: estimate a diagonal block of a symmetric Gram (True) or a cross block.
      device: the device to compile for; None = the first local device.
    Returns:
      bytes (arguments + temporaries + outputs), or None if the backend gives no analysis.
    """
    check_type("arch", arch, ArchSpec, "an architecture spec (an ArchSpec such as MLP(...))")
    check_positive_int("batch_size", batch_size)
    kinds = _check_kinds(get)
    dt = check_dtype(dtype)
    arch.check_input_shape(tuple(input_shape))
    fns = _analytic_block_fns(arch, kinds)
    x = jax.ShapeDtypeStruct((batch_size, *input_shape), dt)
    with jax.enable_x64(bool(dt == np.float64)):
        device = jax.local_devices()[0] if device is None else device
        if symmetric:
            return _bytes_of_call(fns.diag, (x,), device)
        return _bytes_of_call(fns.off, (x, x), device)
