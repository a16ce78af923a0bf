"""The function route at sizes where a compiler bug once killed the process."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# 2n = 6000 float64 views: above the size (about 5000) from which jaxlib's YNNPACK elementwise
# and reduction fusions segfault (signal 11) in the function route's program unless
# `import stepwise_ntk` restricts YNNPACK to single dot products. Three output times up to
# t = 1e-3 take a handful of steps, so the run costs the kernel, one compilation and little
# else.
_SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_enable_x64", True)
    from stepwise_ntk.solver import solve
    rng = np.random.default_rng(0)
    X = rng.normal(size=(6000, 300))
    K = jnp.asarray(X @ X.T / 300)
    F0 = jnp.asarray(1e-4 * rng.normal(size=(6000, 8)))
    tr = solve(K, 3000, F0, jnp.geomspace(1e-5, 1e-3, 3), method="function")
    lam = np.asarray(tr.eigenvalues)
    assert lam.shape == (3, 8) and np.all(np.isfinite(lam)), lam
    print("ok", int(tr.stats.n_steps))
""")


def test_function_route_at_2n_6000_does_not_crash():
    """A fresh interpreter, no XLA_FLAGS from outside: only the package's own flags apply."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    if proc.returncode < 0:
        pytest.fail(f"the solver process died with signal {-proc.returncode}:\n{proc.stderr[-2000:]}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("ok"), proc.stdout
