"""The notebooks execute at small sizes and their .ipynb twins match the reviewed .py files.

Each notebook is a jupytext percent-format .py file (the reviewed source) paired with an
.ipynb for Colab. Running the .py as a script executes every cell in order, exactly what a
kernel would do, with STEPWISE_NTK_NOTEBOOK_SMALL=1 selecting small problem sizes.
"""

import os
import subprocess
import sys
from pathlib import Path

import jupytext
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.py"))


def test_there_are_notebooks():
    assert {p.stem for p in NOTEBOOKS} >= {"quickstart", "ssl_losses", "ntk_vs_network"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes_at_small_size(path, cifar_dir, tmp_path):
    env = dict(os.environ, STEPWISE_NTK_NOTEBOOK_SMALL="1", STEPWISE_NTK_DATA=str(cifar_dir), MPLBACKEND="Agg")
    proc = subprocess.run([sys.executable, str(path)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_ipynb_is_in_sync_with_py(path):
    ipynb = path.with_suffix(".ipynb")
    assert ipynb.exists(), f"run: uv run jupytext --sync {path}"
    from_py = jupytext.read(path)
    from_nb = jupytext.read(ipynb)
    cells = lambda nb: [(c.cell_type, c.source.strip()) for c in nb.cells]
    assert cells(from_py) == cells(from_nb), f"out of sync; run: uv run jupytext --sync {path}"
