"""The ``stepwise-ntk`` application: subcommands, their settings, run directories and plots.

This is the application built on the library; the library (``data``, ``kernels``, ``losses``,
``theory``, ``solver``, ``training``, ``predictor``) never imports it. One module per
subcommand (``_linear``, ``_kernel``, ``_network``, ``_sweep``) holds its settings dataclass
and its run function; :mod:`stepwise_ntk.experiments.cli` is the command line.
"""

from stepwise_ntk.experiments.cli import SUBCOMMANDS, main

__all__ = ["SUBCOMMANDS", "main"]
