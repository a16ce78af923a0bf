"""On-disk cache of kernel Gram matrices, keyed by everything the result depends on.

The key is the sha256 of a canonical JSON document holding the architecture's kernel
config, the kernel kinds, the dtype, a fingerprint (sha256 of dtype, shape and bytes) of
every input array, and the versions of the libraries that compute it. A changed input,
even one bit, gives a different key, so it can never hit a stale entry.

Entries are ``<directory>/<key>.npz`` written atomically (:func:`stepwise_ntk._io.write_npz`:
temporary file in the same directory, then ``os.replace``), so a crash never leaves a
half-written entry. Each entry also stores the key document as JSON (``__key__``), which is
checked on load.

Example:
  >>> import tempfile
  >>> import numpy as np
  >>> cache = KernelCache(tempfile.mkdtemp())
  >>> key = cache_key({"arch": "mlp"}, {"x1": np.ones((2, 3))})
  >>> cache.load(key) is None
  True
  >>> _ = cache.save(key, {"ntk": np.eye(2)}, {"arch": "mlp"})
  >>> cache.load(key)["ntk"].shape
  (2, 2)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from stepwise_ntk._io import write_npz

__all__ = ["KernelCache", "array_fingerprint", "cache_key"]

_KEY_FIELD = "__key__"
CACHE_FORMAT = 1


def array_fingerprint(x: Any) -> str:
    """sha256 hex digest of an array's dtype, shape and C-order bytes."""
    x = np.ascontiguousarray(np.asarray(x))
    h = hashlib.sha256()
    h.update(f"{x.dtype.str}|{x.shape}|".encode())
    h.update(memoryview(x).cast("B"))
    return h.hexdigest()


def _key_document(meta: Mapping[str, Any], arrays: Mapping[str, Any]) -> str:
    doc = {
        "format": CACHE_FORMAT,
        "meta": meta,
        "arrays": {
            name: None if a is None else array_fingerprint(a) for name, a in arrays.items()
        },
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


def cache_key(meta: Mapping[str, Any], arrays: Mapping[str, Any]) -> str:
    """sha256 hex key of JSON-able ``meta`` and the fingerprints of ``arrays`` (None allowed)."""
    return hashlib.sha256(_key_document(meta, arrays).encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class KernelCache:
    """A directory of ``<key>.npz`` kernel entries (created on first save)."""

    directory: Path | str

    def path(self, key: str) -> Path:
        """Where the entry for ``key`` lives."""
        return Path(self.directory) / f"{key}.npz"

    def load(self, key: str) -> dict[str, np.ndarray] | None:
        """The arrays stored under ``key``, or None on a miss.

        An unreadable entry (truncated, foreign, wrong key) is a miss with a warning; the
        next ``save`` replaces it.
        """
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
            warnings.warn(f"ignoring unreadable kernel cache entry {path}: {err}", stacklevel=2)
            return None
        stored = arrays.pop(_KEY_FIELD, None)
        if stored is None or json.loads(str(stored)).get("key") != key:
            warnings.warn(f"ignoring kernel cache entry {path}: its stored key differs",
                          stacklevel=2)
            return None
        return arrays

    def save(self, key: str, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> Path:
        """Store ``arrays`` under ``key`` atomically; ``meta`` is kept for humans. Returns path."""
        if _KEY_FIELD in arrays:
            raise ValueError(f"array name {_KEY_FIELD!r} is reserved by the kernel cache.")
        record = np.array(json.dumps({"key": key, "meta": meta}, sort_keys=True))
        return write_npz(self.path(key), {**arrays, _KEY_FIELD: record})
