"""An analytic kernel computed in a fresh Python process, where XLA's CPU flags still apply.

jaxlib's float64 convolution crash on AVX-512 CPUs is avoided by an XLA flag that only
takes effect if it is set before JAX starts its CPU backend (:mod:`stepwise_ntk._xla_flags`).
When a program started JAX before importing stepwise_ntk, :func:`analytic_kernels` sends the
affected computation here: the inputs go to a temporary folder, a child process (which
imports stepwise_ntk first, so the flags apply) computes the Gram matrices with the same
settings on its CPU devices, and the parent reads them back. The child's result is the
kernel the parent would have computed (same code, same dtype); the cost is one process
start and one compilation.

Errors of the child come back as the same exception type (ValueError, TypeError,
KernelMemoryError as ValueError) with the child's message.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from stepwise_ntk._io import write_json, write_npz

__all__ = ["analytic_kernels_isolated"]

_ERRORS = {"ValueError": ValueError, "TypeError": TypeError, "KernelMemoryError": ValueError}


def analytic_kernels_isolated(arch: Any, x1: np.ndarray, x2: np.ndarray | None, *, kinds: tuple[str, ...],
                              dtype: np.dtype, batch_size: int | None, memory_budget_bytes: int | None,
                              progress: bool) -> dict[str, np.ndarray]:
    """``analytic_kernels(arch, x1, x2, ...)`` on the CPU of a child process (inputs validated).

    Returns:
      {kind: (n1, n2) numpy array of ``dtype``} for each kind in ``kinds``.
    """
    with tempfile.TemporaryDirectory(prefix="stepwise_ntk_kernel_") as tmp:
        folder = Path(tmp)
        arrays = {"x1": x1} if x2 is None else {"x1": x1, "x2": x2}
        write_npz(folder / "inputs.npz", arrays)
        write_json(folder / "request.json", {
            "arch": arch.to_config(), "kinds": list(kinds), "dtype": np.dtype(dtype).name,
            "batch_size": batch_size, "memory_budget_bytes": memory_budget_bytes, "progress": progress,
        })
        env = dict(os.environ, JAX_PLATFORMS="cpu")
        done = subprocess.run([sys.executable, "-m", "stepwise_ntk.kernels._isolated", str(folder)], env=env,
                              stdout=subprocess.PIPE, stderr=None if progress else subprocess.PIPE, text=True)
        failure = folder / "error.json"
        if failure.exists():
            err = json.loads(failure.read_text())
            raise _ERRORS.get(err["type"], RuntimeError)(err["message"])
        if done.returncode != 0:
            raise RuntimeError(
                f"the child process computing the kernel of {type(arch).__name__} exited with status "
                f"{done.returncode}: {(done.stderr or '').strip()[-500:]}"
            )
        with np.load(folder / "kernels.npz") as out:
            return {k: out[k] for k in kinds}


def _child(folder: Path) -> None:
    import stepwise_ntk  # noqa: F401  (first: the XLA flags, before JAX starts)
    from stepwise_ntk.kernels import analytic_kernels, from_config

    request = json.loads((folder / "request.json").read_text())
    try:
        with np.load(folder / "inputs.npz") as inputs:
            x1 = inputs["x1"]
            x2 = inputs["x2"] if "x2" in inputs else None
        out = analytic_kernels(from_config(request["arch"]), x1, x2, get=tuple(request["kinds"]),
                               dtype=np.dtype(request["dtype"]), batch_size=request["batch_size"],
                               memory_budget_bytes=request["memory_budget_bytes"], progress=request["progress"])
    except (ValueError, TypeError) as err:
        write_json(folder / "error.json", {"type": type(err).__name__, "message": str(err)})
        return
    write_npz(folder / "kernels.npz", out)


if __name__ == "__main__":
    _child(Path(sys.argv[1]))
