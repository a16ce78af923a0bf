"""CIFAR-10 from the official "python version" files, with no framework dependency.

The dataset (Krizhevsky, 2009) ships as pickled batches in ``cifar-10-batches-py/``:
``data_batch_1`` … ``data_batch_5`` (training), ``test_batch`` and ``batches.meta``.
Each batch holds ``b"data"``, a ``uint8`` array of shape ``(N, 3072)`` whose rows are
one 32×32 image stored as 1024 red, 1024 green then 1024 blue values (row-major), and
``b"labels"``, a list of N ints in 0–9.

This module finds those files (:func:`resolve_cifar10_dir`), downloads and verifies the
official archive when asked (:func:`download_cifar10`), reads and validates the batches
(:func:`load_cifar10`), draws class-balanced subsets (:func:`balanced_subset`) and
normalises pixels per channel (:func:`normalize`).

Usage (needs the CIFAR-10 files)::

    data = load_cifar10("test")            # CIFAR10Dataset, images (N, 32, 32, 3) uint8
    idx = balanced_subset(data.labels, 100, seed=0)
    x = normalize(data.images[idx])        # float32, per-channel standardised

Example (the same steps on synthetic images)::

    >>> import numpy as np
    >>> from stepwise_ntk.data import balanced_subset, channel_stats, normalize
    >>> pixels = np.random.default_rng(0).integers(0, 256, size=(30, 32, 32, 3), dtype=np.uint8)
    >>> labels = np.repeat(np.arange(10, dtype=np.int32), 3)   # stand-ins for data.images, .labels
    >>> idx = balanced_subset(labels, 10, seed=0)
    >>> sorted(labels[idx].tolist())                            # one image of every class
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    >>> x = normalize(pixels[idx], *channel_stats(pixels[idx]))   # float32, per-channel standardised
    >>> x.shape, x.dtype
    ((10, 32, 32, 3), dtype('float32'))
    >>> bool(np.allclose(x.mean(axis=(0, 1, 2)), 0, atol=1e-5)), bool(np.allclose(x.std(axis=(0, 1, 2)), 1))
    (True, True)
"""

from __future__ import annotations

import codecs
import dataclasses
import hashlib
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from stepwise_ntk._checks import check_bool, check_choice, check_int, check_positive_int, check_type

__all__ = [
    "CIFAR10_FOLDER",
    "CIFAR10_MD5",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR10_URL",
    "DATA_ENV_VAR",
    "CIFAR10Dataset",
    "CIFAR10Error",
    "balanced_subset",
    "channel_stats",
    "default_cache_dir",
    "download_cifar10",
    "load_cifar10",
    "normalize",
    "resolve_cifar10_dir",
    "uint8_to_float",
]

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_FOLDER = "cifar-10-batches-py"
DATA_ENV_VAR = "STEPWISE_NTK_DATA"

TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
META_FILE = "batches.meta"
_ALL_FILES = (*TRAIN_FILES, *TEST_FILES, META_FILE)

IMAGE_SHAPE = (32, 32, 3)
NUM_CLASSES = 10

# Per-channel mean and (population) standard deviation of the 50,000 official training
# images, pixels scaled to [0, 1], RGB order. These are the widely used values
# (e.g. 0.4914, 0.4822, 0.4465 / 0.2470, 0.2435, 0.2616); note that the often-quoted
# std (0.2023, 0.1994, 0.2010) is not the dataset's std.
CIFAR10_MEAN = (0.49139968, 0.48215841, 0.44653091)
CIFAR10_STD = (0.24703223, 0.24348513, 0.26158784)


class CIFAR10Error(ValueError):
    """A CIFAR-10 file is missing, truncated or malformed, or could not be downloaded."""


# --------------------------------------------------------------------------- location


def default_cache_dir() -> Path:
    """The cache folder used when neither an argument nor the env var names one.

    ``$XDG_CACHE_HOME/stepwise_ntk`` if ``XDG_CACHE_HOME`` is set to an absolute path
    (the XDG spec says relative values are to be ignored), else ``~/.cache/stepwise_ntk``.
    """
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "stepwise_ntk"


def _batches_folder(base: Path) -> Path:
    # Accept either the folder that contains cifar-10-batches-py/ or that folder itself
    # (also under another name, recognised by its files).
    if base.name == CIFAR10_FOLDER:
        return base
    if not (base / CIFAR10_FOLDER).is_dir() and (
        (base / META_FILE).is_file() or (base / TEST_FILES[0]).is_file()
    ):
        return base
    return base / CIFAR10_FOLDER


def resolve_cifar10_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where the CIFAR-10 batch files are (or would be downloaded to).

    Resolution order:

    1. ``data_dir`` if given;
    2. else the environment variable ``STEPWISE_NTK_DATA`` if set and non-empty;
    3. else :func:`default_cache_dir` (``$XDG_CACHE_HOME/stepwise_ntk`` or
       ``~/.cache/stepwise_ntk``).

    The chosen folder may be the one that *contains* ``cifar-10-batches-py/`` or the
    ``cifar-10-batches-py`` folder itself. Nothing is created or checked beyond that.

    Args:
      data_dir: a folder, or ``None`` to use the environment variable / cache.

    Returns:
      The absolute path of the ``cifar-10-batches-py`` folder (it may not exist yet).

    Example::

        >>> resolve_cifar10_dir("/data").as_posix()
        '/data/cifar-10-batches-py'
    """
    if data_dir is not None:
        base = Path(data_dir).expanduser()
    else:
        env = os.environ.get(DATA_ENV_VAR, "").strip()
        base = Path(env).expanduser() if env else default_cache_dir()
    return _batches_folder(base.absolute())


def _where_from(data_dir: Any) -> str:
    if data_dir is not None:
        return "from the data_dir argument"
    if os.environ.get(DATA_ENV_VAR, "").strip():
        return f"from ${DATA_ENV_VAR}"
    return f"the default cache (${DATA_ENV_VAR} is not set)"


def _how_to_get_it(folder: Path, *, downloading: bool = False) -> str:
    online = (
        "check the network, or"
        if downloading
        else f"call with download=True (or run stepwise_ntk.download_cifar10()), which fetches "
        f"{CIFAR10_URL} (163 MB) and checks its MD5; or,"
    )
    return (
        f"To fix: {online} offline, unpack cifar-10-python.tar.gz yourself and set "
        f"{DATA_ENV_VAR} (or data_dir= / --data-dir) to the folder that contains "
        f"{CIFAR10_FOLDER}/. Looked in {folder}."
    )


# --------------------------------------------------------------------------- download


def _fetch(url: str, dest: Path, *, progress: bool) -> str:
    """Stream ``url`` into ``dest``; returns the MD5 hex digest of what was written."""
    md5 = hashlib.md5(usedforsecurity=False)
    with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as f:
        total = response.headers.get("Content-Length")
        with tqdm(
            total=int(total) if total and total.isdigit() else None,
            unit="B",
            unit_scale=True,
            desc="cifar-10-python.tar.gz",
            disable=not progress,
        ) as bar:
            while chunk := response.read(1 << 20):
                f.write(chunk)
                md5.update(chunk)
                bar.update(len(chunk))
    return md5.hexdigest()


def _safe_members(tar: tarfile.TarFile) -> list[tarfile.TarInfo]:
    members = []
    for m in tar.getmembers():
        parts = Path(m.name).parts
        if not parts or parts[0] != CIFAR10_FOLDER:
            continue  # the official archive has nothing else; ignore anything that is
        if m.name.startswith("/") or ".." in parts or not (m.isfile() or m.isdir()):
            raise CIFAR10Error(
                f"refusing to unpack {m.name!r} from the CIFAR-10 archive (absolute path, "
                "'..' or a link/device); the archive is not the official one."
            )
        members.append(m)
    return members


def _is_complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in _ALL_FILES)


def download_cifar10(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    force: bool = False,
    progress: bool = True,
    url: str | None = None,
    md5: str | None = None,
) -> Path:
    """Download, verify and unpack the official CIFAR-10 archive (if not already there).

    The archive is streamed into a temporary folder next to the destination, its MD5 is
    checked *before* unpacking, it is unpacked there, and the finished
    ``cifar-10-batches-py`` folder is moved into place with one ``os.replace``. Any
    failure (network, MD5 mismatch, bad archive) removes the temporary folder, so no
    partial download is ever left in the cache.

    Args:
      data_dir: see :func:`resolve_cifar10_dir`.
      force: replace an existing (e.g. corrupt) folder. Without it, an existing
        incomplete folder is an error, so that nothing of yours is deleted unasked.
      progress: show a tqdm progress bar.
      url, md5: override the source (defaults :data:`CIFAR10_URL`, :data:`CIFAR10_MD5`);
        e.g. a ``file://`` URL of a local copy of the archive.

    Returns:
      The ``cifar-10-batches-py`` folder.

    Raises:
      CIFAR10Error: the download failed, the MD5 differs or the archive is malformed.
    """
    check_bool("force", force)
    check_bool("progress", progress)
    url = CIFAR10_URL if url is None else check_type("url", url, str, "a URL string or None")
    md5 = CIFAR10_MD5 if md5 is None else check_type("md5", md5, str, "a hex digest string or None").lower()
    folder = resolve_cifar10_dir(data_dir)
    if _is_complete(folder) and not force:
        return folder
    if folder.exists() and any(folder.iterdir()) and not force:
        missing = [n for n in _ALL_FILES if not (folder / n).is_file()]
        raise CIFAR10Error(
            f"{folder} exists but lacks {', '.join(missing)}. Remove or rename it, or call "
            "download_cifar10(..., force=True) to replace it with a fresh download."
        )
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".cifar10-download-", dir=folder.parent))
    try:
        archive = tmp / "cifar-10-python.tar.gz"
        try:
            got = _fetch(url, archive, progress=progress)
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise CIFAR10Error(
                f"could not download {url} ({type(e).__name__}: {e}). "
                + _how_to_get_it(folder, downloading=True)
            ) from e
        if got != md5:
            raise CIFAR10Error(
                f"MD5 of the download from {url} is {got}, expected {md5}: the file is "
                "corrupt or not the official archive. Nothing was kept; try again, or "
                "download it by hand and check `md5sum cifar-10-python.tar.gz`."
            )
        unpacked = tmp / "unpacked"
        try:
            with tarfile.open(archive, "r:gz") as tar:
                tar.extractall(unpacked, members=_safe_members(tar), filter="data")
        except (tarfile.TarError, EOFError, OSError) as e:
            raise CIFAR10Error(f"cannot unpack the archive from {url}: {e}") from e
        new = unpacked / CIFAR10_FOLDER
        if not _is_complete(new):
            missing = [n for n in _ALL_FILES if not (new / n).is_file()]
            raise CIFAR10Error(
                f"the archive from {url} lacks {CIFAR10_FOLDER}/{', '.join(missing)}."
            )
        if folder.exists():
            # Move the old folder into tmp first: it is deleted with tmp, and the new one
            # lands in a single rename.
            os.replace(folder, tmp / "replaced")
        try:
            os.replace(new, folder)
        except OSError:
            if not _is_complete(folder):  # a concurrent download may have won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


# --------------------------------------------------------------------------- reading


class _BatchUnpickler(pickle.Unpickler):
    """Unpickler that can only rebuild numpy arrays (the batches need nothing else).

    A plain ``pickle.load`` would run whatever a tampered file asks for.
    ``_codecs.encode`` is how Python 3 stores ``bytes`` at protocol ≤ 2 (a copy
    re-saved from Python 3); it only converts data.
    """

    _ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"),
            ("_codecs", "encode"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        if module == "_codecs":
            return codecs.encode
        if name == "_reconstruct":
            return np._core.multiarray._reconstruct  # not numpy.core: deprecated alias
        if name == "scalar":
            return np._core.multiarray.scalar
        return getattr(np, name)


def _corrupt(path: Path, why: str) -> CIFAR10Error:
    return CIFAR10Error(
        f"{path} is truncated or corrupt ({why}). Delete {path.parent} and download it "
        f"again (download_cifar10(force=True), or point {DATA_ENV_VAR} at a good copy of "
        f"the folder that contains {CIFAR10_FOLDER}/)."
    )


def _read_pickle(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            obj = _BatchUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise CIFAR10Error(f"{path} not found. " + _how_to_get_it(path.parent)) from None
    except Exception as e:  # any unpickling failure means a damaged file
        raise _corrupt(path, f"{type(e).__name__}: {e}") from e
    if not isinstance(obj, dict):
        raise _corrupt(path, f"expected a dict, found {type(obj).__name__}")
    # Python-2 pickles give bytes keys; a copy re-saved from Python 3 may have str keys.
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    obj = _read_pickle(path)
    if "data" not in obj or "labels" not in obj:
        raise _corrupt(path, f"missing 'data' or 'labels'; keys are {sorted(obj)}")
    data, labels = obj["data"], obj["labels"]
    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or data.ndim != 2
        or (data.shape[1] != 3072)
    ):
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data)
        raise _corrupt(path, f"'data' must be a uint8 array (N, 3072), found {desc}")
    try:
        labels = np.asarray(labels)
    except Exception as e:
        raise _corrupt(path, f"'labels' is not a list of ints ({e})") from e
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise _corrupt(
            path, f"'labels' must be {data.shape[0]} ints, found {labels.dtype} {labels.shape}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise _corrupt(path, f"labels outside 0..9 (range {labels.min()}..{labels.max()})")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # planes -> NHWC
    return np.ascontiguousarray(images), labels.astype(np.int32)


def _read_class_names(path: Path) -> tuple[str, ...]:
    obj = _read_pickle(path)
    names = obj.get("label_names")
    if not isinstance(names, list) or len(names) != NUM_CLASSES:
        raise _corrupt(path, "'label_names' must be a list of 10 names")
    return tuple(n.decode("ascii") if isinstance(n, bytes) else str(n) for n in names)


@dataclasses.dataclass(frozen=True)
class CIFAR10Dataset:
    """One split of CIFAR-10, held in memory (arrays are read-only).

    Attributes:
      images: ``(N, 32, 32, 3)`` uint8, NHWC, RGB.
      labels: ``(N,)`` int32 in ``0 … 9``.
      class_names: the 10 names from ``batches.meta`` (``"airplane"`` … ``"truck"``).
      split: ``"train"`` or ``"test"``.
      path: the ``cifar-10-batches-py`` folder the data was read from.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    split: str
    path: Path

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def load_cifar10(
    split: str = "train",
    data_dir: str | os.PathLike[str] | None = None,
    *,
    download: bool = False,
) -> CIFAR10Dataset:
    """Read and validate one split of CIFAR-10.

    Args:
      split: ``"train"`` (all ``data_batch_*``, in order) or ``"test"`` (``test_batch``).
      data_dir: see :func:`resolve_cifar10_dir`.
      download: if the files are absent, fetch the official archive with
        :func:`download_cifar10` (163 MB). Off by default, so that nothing touches the
        network unless asked.

    Returns:
      A :class:`CIFAR10Dataset` with ``images (N, 32, 32, 3) uint8`` and ``labels (N,)``.

    Raises:
      CIFAR10Error (a ValueError): a file is missing, truncated or malformed; the message
        names the file and says how to get a good copy.

    Usage (needs the CIFAR-10 files)::

        data = load_cifar10("train")
        data.images.shape   # (50000, 32, 32, 3) for the full dataset

    Example (without the files it says where they are missing; nothing is downloaded)::

        >>> import tempfile
        >>> load_cifar10("test", data_dir=tempfile.mkdtemp())
        Traceback (most recent call last):
        ...
        stepwise_ntk.data._cifar10.CIFAR10Error: CIFAR-10 file(s) not found: .../cifar-10-batches-py/test_batch, ...
    """
    check_choice("split", split, ("train", "test"))
    check_bool("download", download)
    folder = resolve_cifar10_dir(data_dir)
    files = TRAIN_FILES if split == "train" else TEST_FILES
    missing = [n for n in (*files, META_FILE) if not (folder / n).is_file()]
    if missing and download:
        download_cifar10(folder)
        missing = [n for n in (*files, META_FILE) if not (folder / n).is_file()]
    if missing:
        raise CIFAR10Error(
            f"CIFAR-10 file(s) not found: {', '.join(str(folder / n) for n in missing)} "
            f"(folder chosen {_where_from(data_dir)}). " + _how_to_get_it(folder)
        )
    class_names = _read_class_names(folder / META_FILE)
    parts = [_read_batch(folder / n) for n in files]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    images.setflags(write=False)
    labels.setflags(write=False)
    return CIFAR10Dataset(images, labels, class_names, split, folder)


# --------------------------------------------------------------------------- subsets


def _rng_from(seed: Any) -> np.random.Generator:
    if isinstance(seed, jax.Array):
        if jnp.issubdtype(seed.dtype, jax.dtypes.prng_key):
            seed = jax.random.key_data(seed)
        return np.random.default_rng(np.asarray(seed, dtype=np.uint32).ravel().tolist())
    if isinstance(seed, bool):
        raise TypeError(f"seed must be an int, a numpy Generator or a JAX PRNG key, got bool {seed!r}.")
    return np.random.default_rng(seed)


def balanced_subset(labels: Sequence[int] | np.ndarray, n: int, seed: Any = 0) -> np.ndarray:
    """Indices of ``n`` examples spread as evenly over the classes as possible.

    Each class's members are shuffled (seeded), the classes are put in a seeded random
    order, and examples are taken round-robin: one from every class, then a second from
    every class that has one, and so on. Hence

    * every class present gets ``⌊n/C⌋`` or ``⌈n/C⌉`` examples while it has them; a class
      that runs out is skipped and the others make up the difference;
    * the result for ``n`` is the first ``n`` entries of the result for any ``m > n``
      (same labels and seed), so growing ``n`` only adds examples.

    Args:
      labels: ``(N,)`` integer class labels.
      n: how many indices, ``0 ≤ n ≤ N``.
      seed: int, ``numpy.random.Generator`` or JAX PRNG key.

    Returns:
      ``(n,)`` int64 indices into ``labels``, distinct, in round-robin order
      (not sorted).

    Example::

        >>> idx = balanced_subset(np.repeat(np.arange(3), 5), 7, seed=0)
        >>> np.bincount(np.repeat(np.arange(3), 5)[idx]).tolist() in ([3, 2, 2], [2, 3, 2], [2, 2, 3])
        True
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or not (np.issubdtype(labels.dtype, np.integer) or labels.size == 0):
        raise ValueError(
            f"labels must be a 1-D array of integer class ids, got {labels.dtype} {labels.shape}."
        )
    n = check_int(
        "n", n, low=0, high=labels.shape[0],
        hint=f" (only {labels.shape[0]} are available; use the full dataset instead of a subset for more)",
    )
    rng = _rng_from(seed)
    classes = np.unique(labels)
    priority = rng.permutation(classes.shape[0])
    rank = np.empty(labels.shape[0], dtype=np.int64)
    prio = np.empty(labels.shape[0], dtype=np.int64)
    for c, p in zip(classes, priority, strict=True):
        members = np.flatnonzero(labels == c)
        members = members[rng.permutation(members.shape[0])]
        rank[members] = np.arange(members.shape[0])
        prio[members] = p
    order = np.lexsort((prio, rank))  # by rank within class, then by class priority
    return order[:n].astype(np.int64)


# --------------------------------------------------------------------------- pixels


def uint8_to_float(images: np.ndarray, dtype: Any = np.float32) -> np.ndarray:
    """``uint8`` pixels ``0 … 255`` to floats in ``[0, 1]`` (``x / 255``), any shape."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {images.dtype}.")
    dtype = np.dtype(dtype)
    if not np.issubdtype(dtype, np.floating):
        raise ValueError(f"dtype must be a floating dtype, got {dtype}.")
    return (images.astype(np.float64) / 255.0).astype(dtype)


def channel_stats(images: Any, *, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and population std of ``(..., C)`` images, in float64.

    ``uint8`` pixels are scaled to ``[0, 1]`` first, so the result is directly usable
    as ``normalize(images, mean, std)``. Computed two-pass in chunks of ``chunk`` rows
    (accurate, bounded memory).

    Returns:
      ``(mean, std)``, each ``(C,)`` float64.
    """
    chunk = check_positive_int("chunk", chunk)
    x = np.asarray(images)
    scale = 255.0 if x.dtype == np.uint8 else 1.0
    flat = x.reshape(-1, x.shape[-1])
    if flat.shape[0] == 0:
        raise ValueError("channel_stats needs at least one pixel.")
    count = flat.shape[0]
    total = sum(flat[i : i + chunk].sum(0, dtype=np.float64) for i in range(0, count, chunk))
    mean = total / count / scale
    sq = sum(((flat[i : i + chunk] / scale - mean) ** 2).sum(0) for i in range(0, count, chunk))
    return mean, np.sqrt(sq / count)


def normalize(
    images: Any,
    mean: Sequence[float] | np.ndarray = CIFAR10_MEAN,
    std: Sequence[float] | np.ndarray = CIFAR10_STD,
    *,
    dtype: Any = None,
) -> Any:
    """Per-channel standardisation ``(x − mean) / std`` over the last axis.

    ``uint8`` input is first scaled to ``[0, 1]`` (cast to ``dtype``, default float32);
    float input is taken to be in ``[0, 1]`` already and keeps its dtype. Defaults are the
    CIFAR-10 training-set statistics; use ``channel_stats(images)`` for your own.
    Works on numpy arrays (returns numpy) and JAX arrays (returns JAX, jit-compatible).

    Args:
      images: ``(..., C)`` uint8 or float.
      mean, std: ``(C,)``; std must be positive.

    Returns:
      ``(..., C)`` float array.

    Usage (needs the CIFAR-10 files)::

        x = normalize(load_cifar10("test").images)   # float32, ≈ zero mean, unit std

    Example::

        >>> import jax, jax.numpy as jnp, numpy as np
        >>> pixels = np.array([[[0, 51, 255]]], dtype=np.uint8)     # (1, 1, 3): one RGB pixel
        >>> normalize(pixels, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])   # (x/255 - 0.5) / 0.25
        array([[[-2. , -1.2,  2. ]]], dtype=float32)
        >>> normalize(pixels).dtype, normalize(pixels, dtype=np.float64).dtype   # CIFAR-10 statistics
        (dtype('float32'), dtype('float64'))
        >>> x = jnp.asarray(pixels, dtype=jnp.float32) / jnp.float32(255)          # floats in [0, 1]
        >>> isinstance(normalize(x), jax.Array), normalize(x).dtype                # JAX in, JAX out
        (True, dtype('float32'))
    """
    mean_np = np.asarray(mean, dtype=np.float64)
    std_np = np.asarray(std, dtype=np.float64)
    channels = np.shape(images)[-1] if np.ndim(images) else None
    if mean_np.shape != (channels,) or std_np.shape != (channels,):
        raise ValueError(
            f"mean and std must have one entry per channel ({channels}), got shapes "
            f"{mean_np.shape} and {std_np.shape}."
        )
    if not (np.all(np.isfinite(mean_np)) and np.all(np.isfinite(std_np)) and np.all(std_np > 0)):
        raise ValueError(f"std must be positive and both finite; got mean={mean}, std={std}.")
    xp = jnp if isinstance(images, jax.Array) else np
    if xp is np:
        images = np.asarray(images)
    img_dtype = np.dtype(images.dtype)
    if img_dtype == np.uint8:
        out_dtype = np.dtype(np.float32 if dtype is None else dtype)
        x = images.astype(out_dtype) / xp.asarray(255.0, dtype=out_dtype)
    elif np.issubdtype(img_dtype, np.floating):
        out_dtype = np.dtype(img_dtype if dtype is None else dtype)
        x = images.astype(out_dtype)
    else:
        raise ValueError(f"images must be uint8 or float, got {img_dtype}.")
    if not np.issubdtype(out_dtype, np.floating):
        raise ValueError(f"dtype must be a floating dtype, got {out_dtype}.")
    return (x - xp.asarray(mean_np, dtype=out_dtype)) / xp.asarray(std_np, dtype=out_dtype)
