"""The public API: every exported name exists, and the namespaces agree with the top level."""

import stepwise_ntk
from stepwise_ntk import predictor, solver, theory, training


def test_every_exported_name_exists():
    for module in (stepwise_ntk, predictor, solver, theory, training):
        missing = [name for name in module.__all__ if not hasattr(module, name)]
        assert not missing, (module.__name__, missing)


def test_top_level_and_namespaces_are_the_same_objects():
    assert stepwise_ntk.solve is solver.solve
    assert stepwise_ntk.step_times is theory.step_times
    assert stepwise_ntk.train is training.train
    assert stepwise_ntk.predict_run is predictor.predict_run
