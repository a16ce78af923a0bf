"""Every ``>>>`` example in the package's docstrings runs and prints what it shows.

The examples run under the suite's strict JAX settings (``conftest.py``: x64 on, strict dtype
promotion), so an example that only works with silent float32/float64 mixing fails here.
"""

import doctest
import importlib
import pkgutil

import pytest

import stepwise_ntk

MODULES = ["stepwise_ntk"] + sorted(
    info.name
    for info in pkgutil.walk_packages(stepwise_ntk.__path__, prefix="stepwise_ntk.")
    if not info.name.endswith("__main__")
)
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _examples(name):
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    return [t for t in finder.find(module, name, globs=vars(module).copy()) if t.examples]


def test_the_package_has_examples():
    """A docstring example is the first thing a reader runs: most public faces have one."""
    with_examples = [m for m in MODULES if _examples(m)]
    faces = ["stepwise_ntk", "stepwise_ntk.data", "stepwise_ntk.theory", "stepwise_ntk.solver",
             "stepwise_ntk.losses", "stepwise_ntk.kernels", "stepwise_ntk.training", "stepwise_ntk.predictor"]
    missing = [f for f in faces if f not in with_examples]
    assert not missing, f"public faces without a runnable example: {missing}"


@pytest.mark.parametrize("name", [m for m in MODULES if _examples(m)])
def test_docstring_examples_run(name):
    tests = _examples(name)
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    for test in tests:
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed (output above)"
