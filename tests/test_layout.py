"""The package's import graph follows docs/layout.md.

* No module imports an underscore-prefixed name from another module.
* A private module (``_name``) is imported only inside its own subpackage; other subpackages
  use the public face. The shared foundation (``stepwise_ntk._checks``, ``stepwise_ntk._io``,
  ``stepwise_ntk._xla_flags``)
  may be imported from anywhere, and ``stepwise_ntk.kernels._nt_compat`` is the one door to
  neural-tangents (benchmarks and tools use it for their baselines).
* The library never imports the application (``stepwise_ntk.experiments``).
* Benchmarks and notebooks use only public names (and the foundation's writer and checks,
  which they share with the library).
* ``import stepwise_ntk.theory`` / ``.solver`` load neither neural-tangents, Flax nor optax.
"""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "stepwise_ntk"
FOUNDATION = {"stepwise_ntk._checks", "stepwise_ntk._io", "stepwise_ntk._xla_flags"}
NT_DOOR = "stepwise_ntk.kernels._nt_compat"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path):
    """(line, imported module, imported names) of every ``stepwise_ntk`` import in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("stepwise_ntk"):
            yield node.lineno, node.module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("stepwise_ntk"):
                    yield node.lineno, a.name, []


def _subpackage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _private_part(module: str) -> bool:
    return any(p.startswith("_") for p in module.split(".")[1:])


LIBRARY = sorted(p for p in PACKAGE.rglob("*.py"))


def _library_violations():
    out = []
    for path in LIBRARY:
        me = _module_name(path)
        for line, module, names in _imports(path):
            where = f"{path.relative_to(ROOT)}:{line}"
            # `from pkg import _mod` names a private module of pkg: that is the module imported.
            targets = [module] + [f"{module}.{n}" for n in names if n.startswith("_") and n != "__version__"]
            for target in targets:
                private_name = target != module
                if private_name and _subpackage(target) != _subpackage(me):
                    out.append(f"{where}: imports the private {target}")
                if not private_name:
                    bad = [n for n in names if n.startswith("_") and n != "__version__"
                           and not (PACKAGE / Path(*module.split(".")[1:]) / f"{n}.py").exists()]
                    if bad:
                        out.append(f"{where}: imports underscore names {bad} from {module}")
                if (_private_part(target) and target not in FOUNDATION and target != NT_DOOR
                        and _subpackage(target) != _subpackage(me)):
                    out.append(f"{where}: imports {target}, private to {_subpackage(target)!r}")
            if (_subpackage(module) == "experiments" and _subpackage(me) != "experiments"
                    and me != "stepwise_ntk.__main__"):
                out.append(f"{where}: the library imports the application ({module})")
    return out


def test_library_imports_follow_the_layout():
    violations = _library_violations()
    assert not violations, "\n".join(violations)


def _outside_violations(paths, root=ROOT):
    out = []
    for path in paths:
        for line, module, names in _imports(path):
            if module == NT_DOOR or module in FOUNDATION:
                continue
            if _private_part(module) or any(n.startswith("_") and n != "__version__" for n in names):
                out.append(f"{path.relative_to(root)}:{line}: {module} {names}")
    return out


@pytest.mark.parametrize("folder", ["benchmarks", "notebooks"])
def test_benchmarks_and_notebooks_use_public_names(folder):
    violations = _outside_violations(sorted((ROOT / folder).rglob("*.py")))
    assert not violations, "\n".join(violations)


def test_the_checker_catches_a_private_import(tmp_path):
    """The rules above are not vacuous: a cross-subpackage private import is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("from stepwise_ntk.theory._eigensystem import contrastive_eigensystem\n"
                   "from stepwise_ntk.theory import step_times\n"
                   "from stepwise_ntk.predictor import _sweep\n")
    assert _outside_violations([bad], root=tmp_path) == [
        "bad.py:1: stepwise_ntk.theory._eigensystem ['contrastive_eigensystem']",
        "bad.py:3: stepwise_ntk.predictor ['_sweep']",
    ]


# One fresh process for the import checks below: each import adds to what the previous ones
# loaded, and the top level (which every subpackage import runs first) comes first, so a heavy
# module showing up after an import is that import's. kernels is checked absent right before
# snt.MLP, so it is that attribute that loads it.
_IMPORTS = """
import json, sys
heavy = lambda: [m for m in ('neural_tangents', 'flax', 'optax', 'matplotlib') if m in sys.modules]
out = {}
import stepwise_ntk as snt
out['stepwise_ntk'] = heavy()
out['kernels at start'] = 'stepwise_ntk.kernels' in sys.modules
import stepwise_ntk.theory
out['stepwise_ntk.theory'] = heavy()
import stepwise_ntk.solver
out['stepwise_ntk.solver'] = heavy()
out['kernels before snt.MLP'] = 'stepwise_ntk.kernels' in sys.modules
snt.MLP
out['kernels after snt.MLP'] = 'stepwise_ntk.kernels' in sys.modules
out['snt.solve is solver.solve'] = snt.solve is __import__('stepwise_ntk.solver', fromlist=['solve']).solve
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def imports():
    out = subprocess.run([sys.executable, "-c", _IMPORTS], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("module", ["stepwise_ntk", "stepwise_ntk.theory", "stepwise_ntk.solver"])
def test_light_imports(module, imports):
    """The closed forms and the solver (with the losses and data they import) need only JAX and NumPy."""
    assert imports[module] == [], f"import {module} loaded {imports[module]}"


def test_top_level_names_resolve_lazily(imports):
    assert imports["kernels at start"] is False and imports["kernels before snt.MLP"] is False
    assert imports["kernels after snt.MLP"] is True
    assert imports["snt.solve is solver.solve"] is True
