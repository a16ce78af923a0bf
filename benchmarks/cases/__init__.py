"""The benchmark cases, one module per subject; importing a module registers its benchmarks.

========================  =================================================================
``dynamics``              ``dynamics``: the solver's routes against neural-tangents'
                          ``predict.gradient_descent`` and parameter-space gradient descent
``losses_speed``          ``losses_speed``: SimCLR and VICReg through ``solve``'s defaults
                          and the Galerkin route against ``predict.gradient_descent``
``scaling``               ``scaling``, ``scaling_d``: cost against ``2n`` and ``d``, fitted
                          exponents
``whole_subset``          ``whole_subset``: the whole CIFAR-10 subset (``2n = 9,320``) as
                          one problem, both routes with their defaults, against ``eigh(K)``
``training``              ``training``: ``train()`` against a hand-written optax step
``kernels``               ``kernels``: analytic NTK Grams against direct neural-tangents
                          calls (also a stand-alone script, ``python -m
                          benchmarks.cases.kernels``)
``width_sweep``           ``width_sweep``: trained networks against their NTK theory as width
                          grows, built like ``stepwise-ntk sweep`` (also a stand-alone
                          script, ``python -m benchmarks.cases.width_sweep``)
========================  =================================================================
"""

from __future__ import annotations

import importlib

__all__ = ["CASES", "load"]

# Imported in this order, which is the order of ``--list`` and of a run of every benchmark.
CASES = ("kernels", "width_sweep", "dynamics", "losses_speed", "scaling", "whole_subset", "training")


def load() -> None:
    """Import every case module (each registers its benchmarks)."""
    for name in CASES:
        importlib.import_module(f"{__name__}.{name}")
