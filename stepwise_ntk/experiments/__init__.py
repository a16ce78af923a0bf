"""The ``stepwise-ntk`` application: subcommands, their settings, run directories and plots.

This is the application built on the library; the library (``data``, ``kernels``, ``losses``,
``theory``, ``solver``, ``training``, ``predictor``) never imports it. One module per
subcommand (``_linear``, ``_kernel``, ``_network``, ``_sweep``) holds its settings dataclass
(``LinearSettings``, ``KernelSettings``, ``NetworkSettings``, ``SweepSettings``) and its run
function; :mod:`stepwise_ntk.experiments.cli` is the command line.
"""

from stepwise_ntk.experiments._kernel import KernelSettings
from stepwise_ntk.experiments._linear import LinearSettings

# The sweep's problem, shared with benchmarks/cases/width_sweep.py (same settings, same numbers).
from stepwise_ntk.experiments._network import NetworkProblem, NetworkSettings, SharedNetworkSettings, network_problem
from stepwise_ntk.experiments._run_dir import RunFailedError
from stepwise_ntk.experiments._sweep import SweepSettings, sweep_config
from stepwise_ntk.experiments.cli import SUBCOMMANDS, main

__all__ = [
    "SUBCOMMANDS",
    "KernelSettings",
    "LinearSettings",
    "NetworkProblem",
    "NetworkSettings",
    "RunFailedError",
    "SharedNetworkSettings",
    "SweepSettings",
    "main",
    "network_problem",
    "sweep_config",
]
