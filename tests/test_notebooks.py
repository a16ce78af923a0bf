"""The notebooks execute at small sizes and their .ipynb twins match the reviewed .py files.

Each notebook is a jupytext percent-format .py file (the reviewed source) paired with an
.ipynb for Colab. Running the .py as a script executes every cell in order, exactly what a
kernel would do, with STEPWISE_NTK_NOTEBOOK_SMALL=1 selecting small problem sizes.

All notebooks run in one fresh process, one after another (JAX and the package start once,
not once per notebook), each as ``__main__`` in its own namespace and working folder, with
x64 switched back off and figures closed in between, so none can lean on another's state.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import jupytext
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.py"))

# argv: results.json, then (notebook, working folder) pairs. Results are written after each
# notebook, so a crash of the process still reports the notebooks before it.
_RUNNER = """
import json, os, runpy, sys, time, traceback
import jax
import matplotlib.pyplot as plt
out, jobs, results = sys.argv[1], sys.argv[2:], {}
for path, cwd in zip(jobs[::2], jobs[1::2], strict=True):
    name = os.path.splitext(os.path.basename(path))[0]
    print(f"===== notebook {name}", flush=True)
    print(f"===== notebook {name}", file=sys.stderr, flush=True)
    os.chdir(cwd)
    jax.config.update("jax_enable_x64", False)  # a fresh kernel's default
    t0 = time.perf_counter()
    try:
        runpy.run_path(path, run_name="__main__")
        error = None
    except BaseException:
        error = traceback.format_exc()
    finally:
        plt.close("all")
    results[name] = {"error": error, "seconds": time.perf_counter() - t0}
    with open(out, "w") as f:
        json.dump(results, f)
"""


def test_there_are_notebooks():
    assert {p.stem for p in NOTEBOOKS} >= {"quickstart", "ssl_losses", "ntk_vs_network"}


@pytest.fixture(scope="module")
def executed(request, cifar_dir, tmp_path_factory):
    """The selected notebooks at small size in one fresh process: (results by name, the process)."""
    selected = {item.callspec.params["path"] for item in request.session.items
                if item.originalname == "test_notebook_executes_at_small_size"}
    root = tmp_path_factory.mktemp("notebooks")
    jobs = []
    for path in (p for p in NOTEBOOKS if p in selected):
        (root / path.stem).mkdir()
        jobs += [str(path), str(root / path.stem)]
    env = dict(os.environ, STEPWISE_NTK_NOTEBOOK_SMALL="1", STEPWISE_NTK_DATA=str(cifar_dir), MPLBACKEND="Agg")
    out = root / "results.json"
    proc = subprocess.run([sys.executable, "-c", _RUNNER, str(out), *jobs], cwd=root, env=env,
                          capture_output=True, text=True, timeout=900)
    results = json.loads(out.read_text()) if out.exists() else {}
    return results, proc


def _section(text, name):
    """The part of the runner's output that notebook ``name`` printed."""
    return text.split(f"===== notebook {name}\n", 1)[-1].split("===== notebook ", 1)[0]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes_at_small_size(path, executed):
    results, proc = executed
    name = path.stem
    assert name in results, f"the runner died before {name} finished (rc {proc.returncode}):\n" + (
        proc.stdout[-2000:] + proc.stderr[-4000:])
    error = results[name]["error"]
    assert error is None, _section(proc.stdout, name)[-2000:] + _section(proc.stderr, name)[-2000:] + error
    assert proc.returncode == 0, proc.stderr[-4000:]  # e.g. a crash after the last notebook


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_ipynb_is_in_sync_with_py(path):
    ipynb = path.with_suffix(".ipynb")
    assert ipynb.exists(), f"run: uv run jupytext --sync {path}"
    from_py = jupytext.read(path)
    from_nb = jupytext.read(ipynb)
    cells = lambda nb: [(c.cell_type, c.source.strip()) for c in nb.cells]
    assert cells(from_py) == cells(from_nb), f"out of sync; run: uv run jupytext --sync {path}"
