"""Shared input checks of the library: one message shape for every entry point.

A wrong *type* raises ``TypeError``, a wrong *value* ``ValueError``; every message names the
argument, says what was expected and what was given, and how to fix it. Shape checks always
run; value checks (finite, symmetric, increasing) run on concrete arrays and are skipped for
tracers (inside an outer ``jax.jit``), where values are unknown.

Example:
    >>> from stepwise_ntk._checks import check_positive_int
    >>> check_positive_int("steps", 10)
    10
    >>> check_positive_int("steps", 0)
    Traceback (most recent call last):
    ...
    ValueError: steps must be a positive integer, got 0.
"""

from __future__ import annotations

import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "all_finite",
    "check_array",
    "check_bool",
    "check_choice",
    "check_embeddings",
    "check_float_dtype",
    "check_int",
    "check_kernel",
    "check_key",
    "check_n_pairs",
    "check_number",
    "check_positive_int",
    "check_test_embeddings",
    "check_test_kernel",
    "check_times",
    "check_type",
    "check_views",
    "float_dtype",
    "is_concrete",
    "on_cpu",
]


def is_concrete(x: Any) -> bool:
    """True when ``x`` holds values (not a tracer inside ``jax.jit``)."""
    return not isinstance(x, jax.core.Tracer)


def check_positive_int(name: str, value: Any, *, allow_zero: bool = False, hint: str = "") -> int:
    """``value`` as a Python int ``≥ 1`` (``≥ 0`` with ``allow_zero``): TypeError / ValueError."""
    what = "non-negative" if allow_zero else "positive"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a {what} integer{hint}, got {type(value).__name__} {value!r}.")
    if value < (0 if allow_zero else 1):
        raise ValueError(f"{name} must be a {what} integer{hint}, got {value!r}.")
    return int(value)


def check_int(name: str, value: Any, *, low: int | None = None, high: int | None = None, hint: str = "") -> int:
    """``value`` as a Python int in ``[low, high]`` (either bound optional): TypeError / ValueError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer{hint}, got {type(value).__name__} {value!r}.")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name} must be an integer {_range_text(low, high)}{hint}, got {value!r}.")
    return int(value)


def _range_text(low: Any, high: Any, *, open_low: bool = False, open_high: bool = False) -> str:
    lo = None if low is None else (f"> {low}" if open_low else f"≥ {low}")
    hi = None if high is None else (f"< {high}" if open_high else f"≤ {high}")
    return " and ".join(x for x in (lo, hi) if x) or "(any)"


def check_number(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    open_low: bool = False,
    open_high: bool = False,
    hint: str = "",
) -> float:
    """``value`` as a finite Python float in the range: TypeError (not a real number) / ValueError.

    ``open_low`` / ``open_high`` make a bound strict (``value > low``, e.g. a learning rate;
    ``value < high``, e.g. a momentum coefficient).
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number{hint}, got {type(value).__name__} {value!r}.")
    v = float(value)
    bad_low = low is not None and (v <= low if open_low else v < low)
    bad_high = high is not None and (v >= high if open_high else v > high)
    if not np.isfinite(v) or bad_low or bad_high:
        rng = _range_text(low, high, open_low=open_low, open_high=open_high)
        raise ValueError(f"{name} must be a finite number {rng}{hint}, got {value!r}.")
    return v


def check_bool(name: str, value: Any) -> bool:
    """``value`` as a bool (True/False only): TypeError otherwise."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}.")
    return bool(value)


def check_choice(name: str, value: Any, choices: Any) -> Any:
    """``value`` if it is one of ``choices``; ValueError naming them otherwise."""
    choices = tuple(choices)
    try:
        ok = value in choices
    except TypeError:  # unhashable values in a dict-like container
        ok = False
    if not ok:
        shown = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {shown}; got {value!r}.")
    return value


def check_type(name: str, value: Any, types: type | tuple[type, ...], what: str | None = None) -> Any:
    """``value`` if it is an instance of ``types``; TypeError saying what was expected otherwise."""
    if not isinstance(value, types):
        if what is None:
            ts = types if isinstance(types, tuple) else (types,)
            what = " or ".join(t.__name__ for t in ts)
        raise TypeError(f"{name} must be {what}, got {type(value).__name__}.")
    return value


def check_key(key: Any, name: str = "key") -> jax.Array:
    """``key`` if it is a JAX PRNG key: a typed key (``jax.random.key``) or a legacy ``uint32[2]``.

    TypeError for anything else (an int seed included: make it a key with
    ``jax.random.key(seed)``).

    Example:
        >>> import jax
        >>> check_key(jax.random.key(0)).shape
        ()
        >>> check_key(0)
        Traceback (most recent call last):
        ...
        TypeError: key must be a JAX PRNG key (jax.random.key(seed)), got int 0.
    """
    if isinstance(key, jax.Array) and (
        jnp.issubdtype(key.dtype, jax.dtypes.prng_key) or (key.dtype == jnp.uint32 and key.shape == (2,))
    ):
        return key
    shown = f"{key.dtype}{list(key.shape)}" if isinstance(key, jax.Array) else repr(key)
    raise TypeError(f"{name} must be a JAX PRNG key (jax.random.key(seed)), got {type(key).__name__} {shown}.")


def _dtype_ok(dtype: np.dtype, kinds: str) -> bool:
    # "f" means any floating dtype, the extension ones (bfloat16: numpy kind "V") included.
    return ("f" in kinds and bool(jnp.issubdtype(dtype, jnp.floating))) or dtype.kind in kinds.replace("f", "")


_KIND_TEXT = {"f": "floating-point", "fiu": "real numeric", "iu": "integer", "b": "boolean"}


def check_array(
    name: str,
    x: Any,
    *,
    ndim: int | None = None,
    min_ndim: int | None = None,
    min_rows: int | None = None,
    dtype_kind: str | None = "f",
    finite: bool = True,
    what: str | None = None,
    hint: str = "",
) -> Any:
    """``x`` as an array after checking its rank, rows, dtype kind and (concrete) finiteness.

    Args:
      name: the argument's name, for the messages.
      x: array-like. A JAX array (or tracer) is returned as it is; anything else as
        ``np.asarray(x)`` (no copy, no change of dtype: the caller converts).
      ndim: the exact number of axes; min_ndim: the least number of axes.
      min_rows: the least length of the first axis.
      dtype_kind: numpy dtype kinds allowed (``"f"`` floating, bfloat16 included; ``"fiu"``
        real numbers), or None for any dtype.
      finite: refuse NaN and ±Inf (floating arrays with values; skipped for tracers).
      what: the expected shape in words for the shape message, e.g. ``"a (m, d) matrix"``.
      hint: how to fix non-finite values, appended to that message.

    Raises:
      ValueError: wrong rank, too few rows, wrong dtype, NaN or Inf.

    Example:
        >>> import numpy as np
        >>> check_array("F", np.ones((3, 2)), ndim=2).shape
        (3, 2)
        >>> check_array("F", np.array([[1.0, np.nan]]), ndim=2)
        Traceback (most recent call last):
        ...
        ValueError: F contains 1 NaN or Inf entries; pass finite values.
    """
    arr = x if isinstance(x, (jax.Array, jax.core.Tracer)) else np.asarray(x)
    shape = tuple(arr.shape)
    if (
        (ndim is not None and len(shape) != ndim)
        or (min_ndim is not None and len(shape) < min_ndim)
        or (min_rows is not None and (not shape or shape[0] < min_rows))
    ):
        if what is None:
            parts = [f"{ndim}-D" if ndim is not None else (f"at least {min_ndim}-D" if min_ndim else "")]
            parts.append("array" + (f" with at least {min_rows} rows" if min_rows else ""))
            what = "a " + " ".join(p for p in parts if p)
        raise ValueError(f"{name} must be {what}, got shape {shape}.")
    dtype = np.dtype(arr.dtype)
    if dtype_kind is not None and not _dtype_ok(dtype, dtype_kind):
        kind = _KIND_TEXT.get(dtype_kind, f"dtype kind {dtype_kind!r}")
        raise ValueError(f"{name} must be a {kind} array, got dtype {dtype}.")
    if finite and is_concrete(arr) and dtype.kind not in "biu":
        if isinstance(arr, jax.Array):
            bad = int(jnp.sum(~jnp.isfinite(arr)))
        else:
            bad = int(np.count_nonzero(~np.isfinite(arr)))
        if bad:
            raise ValueError(f"{name} contains {bad} NaN or Inf entries; {hint or 'pass finite values.'}")
    return arr


_DATA_HINT = "clean or re-generate the data (check the normalisation and the source images)."


def check_views(name: str, x: Any, *, like: Any = None, same_dtype: bool = False) -> Any:
    """Float, finite views: ``(2n, ...)`` in pairing order, or ``(m, ...)`` shaped like ``like``.

    Without ``like``: the 2n views ``[x_1..x_n, x'_1..x'_n]`` (an even number ≥ 2 of rows,
    at least 2 axes). With ``like`` (the views): held-out views, ``m ≥ 1`` rows with the
    same trailing shape (and, with ``same_dtype``, the same dtype). Returns
    :func:`check_array`'s array.

    Example:
        >>> import numpy as np
        >>> check_views("views", np.zeros((3, 4)))
        Traceback (most recent call last):
        ...
        ValueError: views must be (2n, ...) with n ≥ 1 pairs stacked as [x_1..x_n, x'_1..x'_n], got shape (3, 4).
    """
    if like is None:
        what = "(2n, ...) with n ≥ 1 pairs stacked as [x_1..x_n, x'_1..x'_n]"
        arr = check_array(name, x, min_ndim=2, min_rows=2, what=what, hint=_DATA_HINT)
        if arr.shape[0] % 2:
            raise ValueError(f"{name} must be {what}, got shape {tuple(arr.shape)}.")
        return arr
    trailing = tuple(like.shape[1:])
    dt = f" {np.dtype(like.dtype)}" if same_dtype else ""
    what = f"(m, {', '.join(map(str, trailing))}){dt} like the views"
    arr = check_array(name, x, min_ndim=2, min_rows=1, what=what, hint=_DATA_HINT)
    if tuple(arr.shape[1:]) != trailing or (same_dtype and np.dtype(arr.dtype) != np.dtype(like.dtype)):
        raise ValueError(f"{name} must be {what}, got {tuple(arr.shape)} {np.dtype(arr.dtype)}.")
    return arr


def check_n_pairs(n_pairs: Any) -> int:
    """``n_pairs`` (the number of images; 2n views) as a positive Python int."""
    return check_positive_int(
        "n_pairs", n_pairs, hint=" (the number of images; the views are [x_1..x_n, x'_1..x'_n], 2n rows)"
    )


def float_dtype(x: Any, name: str) -> np.dtype:
    dtype = np.dtype(x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype)
    if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(
            f"{name} must be float32 or float64, got dtype {dtype}. Convert it, e.g. "
            f"{name}.astype(jnp.float64) (float64 needs jax_enable_x64)."
        )
    return dtype


def check_float_dtype(name: str, dtype: Any) -> np.dtype:
    """``dtype`` (a dtype, type or name) as ``np.dtype`` float32 or float64.

    TypeError when it names no dtype at all, ValueError for another dtype.

    Example:
        >>> check_float_dtype("dtype", "float32")
        dtype('float32')
    """
    try:
        dt = np.dtype(dtype)
    except TypeError as err:
        raise TypeError(
            f"{name} must be float32 or float64 (a dtype or its name), got {type(dtype).__name__} {dtype!r}."
        ) from err
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"{name} must be float32 or float64, got {dt}.")
    return dt


def all_finite(x: jax.Array) -> bool:
    return bool(jnp.all(jnp.isfinite(x)))


def on_cpu(x: Any) -> bool:
    """True when ``x`` is a JAX array whose every shard lives on a CPU device."""
    devices = getattr(x, "devices", lambda: set())()
    return bool(devices) and all(dev.platform == "cpu" for dev in devices)


_SYMMETRY_BLOCK = 512


@jax.jit
def _finite_scale_asymmetry_jit(K):
    finite = jnp.isfinite(jnp.max(K)) & jnp.isfinite(jnp.min(K))
    return finite, jnp.max(jnp.abs(K)), jnp.max(jnp.abs(K - K.T))


def _finite_scale_asymmetry(K: jax.Array) -> tuple[bool, float, float]:
    """``(all finite, max|K|, max|K − Kᵀ|)`` of a square ``K``.

    A NaN or infinity shows in ``max K`` or ``min K``. For arrays on the CPU the check runs
    on the host (numpy reads the buffer without a copy) over row blocks of the upper
    triangle: XLA on the CPU transposes a large matrix slowly. The same check as XLA
    operations took 1.50 s at 2n = 9320 against 0.57 s (and fused into one jitted function,
    twice as long again at 2n = 2000: 101 ms against 47 ms unfused).
    """
    if not on_cpu(K):
        finite, scale, asym = _finite_scale_asymmetry_jit(K)
        return bool(finite), float(scale), float(asym)
    A = np.asarray(K)
    hi, lo = A.max(), A.min()
    if not (np.isfinite(hi) and np.isfinite(lo)):
        return False, float("nan"), float("nan")
    asym = 0.0
    for i in range(0, A.shape[0], _SYMMETRY_BLOCK):
        j = i + _SYMMETRY_BLOCK
        asym = max(asym, float(np.max(np.abs(A[i:j, i:] - A[i:, i:j].T))))
    return True, float(max(hi, -lo)), asym


def check_kernel(K: Any, n_pairs: int, name: str = "K", *, sym_rtol: float | None = None) -> jax.Array:
    """Validate a Gram matrix on the 2n views: square ``(2n, 2n)``, float, finite, symmetric.

    Symmetry is checked as ``max|K − Kᵀ| ≤ sym_rtol · max|K|`` with default
    ``sym_rtol = 1000 · eps(dtype)`` (round-off of kernels computed in blocks or in float32
    passes; a real asymmetry does not). Positive semi-definiteness is checked later by the
    factorisation (:func:`stepwise_ntk.theory.contrastive_eigensystem`).

    Returns:
      ``K`` as a JAX array (not symmetrised; callers use ``(K + Kᵀ)/2``).
    """
    dtype = float_dtype(K, name)
    K = jnp.asarray(K)
    N = 2 * n_pairs
    if K.ndim != 2 or K.shape[0] != K.shape[1]:
        raise ValueError(f"{name} must be a square (2n, 2n) matrix, got shape {K.shape}.")
    if K.shape[0] != N:
        raise ValueError(
            f"{name} has shape {K.shape} but n_pairs={n_pairs} needs ({N}, {N}): the views "
            f"are stacked as [x_1..x_n, x'_1..x'_n]. Pass the Gram matrix of all 2n views or "
            f"fix n_pairs (= {K.shape[0] // 2} for this K)."
        )
    if is_concrete(K):
        finite, scale, asym = _finite_scale_asymmetry(K)
        if not finite:
            bad = int(jnp.sum(~jnp.isfinite(K)))
            raise ValueError(
                f"{name} contains {bad} NaN or Inf entries. Recompute the kernel (in float64, "
                f"or with a smaller batch / learning rate if it came from training)."
            )
        tol = (1000.0 * float(np.finfo(dtype).eps) if sym_rtol is None else float(sym_rtol))
        if asym > tol * scale:
            raise ValueError(
                f"{name} is not symmetric: max|K − Kᵀ| = {asym:.3g} > {tol:.1g} × max|K| "
                f"= {tol * scale:.3g}. A kernel Gram matrix K[i, j] = k(x_i, x_j) is symmetric; "
                f"check the row/column order, or symmetrise it yourself with (K + K.T) / 2 if "
                f"the asymmetry is round-off."
            )
    return K


def check_embeddings(F: Any, n_pairs: int, name: str = "F0", *, dtype: Any = None) -> jax.Array:
    """Validate embeddings of the 2n views: ``(2n, d)``, float, finite, same dtype as K."""
    got = float_dtype(F, name)
    F = jnp.asarray(F)
    N = 2 * n_pairs
    if F.ndim != 2:
        raise ValueError(f"{name} must be a (2n, d) matrix (one row per view), got shape {F.shape}.")
    if F.shape[0] != N:
        raise ValueError(
            f"{name} has {F.shape[0]} rows but the kernel has 2n = {N} views; {name} must hold "
            f"the initial embeddings of the same views in the same order [x_1..x_n, x'_1..x'_n]."
        )
    if F.shape[1] < 1:
        raise ValueError(f"{name} must have at least one embedding dimension, got shape {F.shape}.")
    if dtype is not None and got != np.dtype(dtype):
        raise ValueError(
            f"{name} has dtype {got} but the kernel has dtype {np.dtype(dtype)}; use one dtype "
            f"for both (e.g. {name}.astype(K.dtype))."
        )
    if is_concrete(F) and not all_finite(F):
        raise ValueError(f"{name} contains NaN or Inf entries; pass finite initial embeddings.")
    return F


def check_test_kernel(K_test: Any, n_pairs: int, name: str = "K_test", *, dtype: Any = None) -> jax.Array:
    """Validate a kernel between ``m`` test inputs and the 2n views: ``(m, 2n)``, float, finite.

    With ``dtype`` (the dtype of ``K``) the dtypes must agree. The finiteness check runs on
    concrete arrays only.
    """
    got = float_dtype(K_test, name)
    K_test = jnp.asarray(K_test)
    N = 2 * n_pairs
    if K_test.ndim != 2 or K_test.shape[1] != N:
        raise ValueError(
            f"{name} must be (m, 2n) = (m, {N}) (rows: test inputs, columns: the views in the "
            f"pairing order), got shape {K_test.shape}."
        )
    if dtype is not None and got != np.dtype(dtype):
        raise ValueError(f"{name} has dtype {got} but K has {np.dtype(dtype)}; use one dtype.")
    if is_concrete(K_test) and not all_finite(K_test):
        raise ValueError(f"{name} contains NaN or Inf entries; recompute it.")
    return K_test


def check_test_embeddings(F_test: Any, m: int, d: int, name: str = "F0_test", *, dtype: Any = None) -> jax.Array:
    """Validate embeddings of ``m`` test inputs: ``(m, d)``, finite, of ``dtype`` if given."""
    F_test = jnp.asarray(F_test)
    if F_test.shape != (m, d) or (dtype is not None and F_test.dtype != np.dtype(dtype)):
        want = "" if dtype is None else f" with dtype {np.dtype(dtype)}"
        raise ValueError(f"{name} must be (m, d) = ({m}, {d}){want}, got {F_test.shape} {F_test.dtype}.")
    if is_concrete(F_test) and not all_finite(F_test):
        raise ValueError(f"{name} contains NaN or Inf entries.")
    return F_test


def check_times(times: Any, dtype: Any) -> jax.Array:
    """Validate output times: 1-D, non-empty, finite, ≥ 0 and strictly increasing."""
    t = jnp.asarray(times)
    if t.ndim != 1 or t.shape[0] < 1:
        raise ValueError(
            f"times must be a non-empty 1-D array of output times, got shape {t.shape}; "
            f"e.g. jnp.geomspace(1e-2, 1e4, 200)."
        )
    if not jnp.issubdtype(t.dtype, jnp.floating) and not jnp.issubdtype(t.dtype, jnp.integer):
        raise ValueError(f"times must be real numbers, got dtype {t.dtype}.")
    t = t.astype(dtype)
    if is_concrete(t):
        tn = np.asarray(t)
        if not np.all(np.isfinite(tn)):
            raise ValueError("times contains NaN or Inf; pass finite output times.")
        if tn[0] < 0:
            raise ValueError(f"times must be ≥ 0 (time starts at 0), got times[0] = {tn[0]}.")
        if tn.shape[0] > 1 and not np.all(np.diff(tn) > 0):
            i = int(np.argmin(np.diff(tn) > 0))
            raise ValueError(
                f"times must be strictly increasing, but times[{i}] = {tn[i]} ≥ "
                f"times[{i + 1}] = {tn[i + 1]}; sort them and drop duplicates "
                f"(np.unique does both)."
            )
    return t
