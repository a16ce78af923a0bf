"""Benchmarks of stepwise_ntk's hot paths, each against the tool a researcher would otherwise use.

Run from the repository root::

    uv run python -m benchmarks --list                       # what there is
    uv run python -m benchmarks --size tiny                  # every benchmark, seconds each
    uv run python -m benchmarks dynamics scaling --size full # the README's numbers
    uv run python -m benchmarks scaling --size full --set n_views=2000,5000,10000,20000  # fill a GPU

Each run writes ``<out>/<backend>_<size>.json`` and ``.md`` (``--out``, default
``benchmarks/results``; ``--tag`` renames them). Options: ``--repeats R`` (timed calls per
measurement, fewer once ``--budget`` seconds are spent), ``--dtype float32|float64``
(default: float64 on CPU where accuracies are compared, float32 on GPU/TPU),
``--set KEY=VALUE`` (override a preset, e.g. ``n_views=4000`` (``2n``), ``d=64``),
``--no-memory``; ``--help`` lists them all.

Layout: the harness is the package ``benchmarks/harness/`` (timing, memory, machine,
report, registration, cli, problems; see :mod:`benchmarks.harness`), the cases are
``benchmarks/cases/`` (one module per subject; see :mod:`benchmarks.cases`):

* ``dynamics`` — the solver's eigen and function routes against neural-tangents'
  ``predict.gradient_descent`` at equal accuracy, parameter-space gradient descent, and
  the floors one ``eigh(K)`` / one ``K·F``;
* ``scaling`` / ``scaling_d`` — time and peak memory of each route against ``2n`` (and
  ``d``) with fitted exponents (eigh ≈ 3, K·F ≈ 2 in ``2n``);
* ``training`` — the Flax training engine (Barlow Twins, SimCLR, VICReg) against a
  hand-written jitted optax step of the same network;
* ``kernels`` — NTK Grams through ``analytic_ntk`` against direct neural-tangents calls;
  also a stand-alone script with its own JSON
  (``uv run python -m benchmarks.cases.kernels``, ``benchmarks/results/kernels.json``);
* ``width_sweep`` — trained networks against their NTK theory as width grows, on the
  problem ``stepwise-ntk sweep`` builds (same settings and seed, same numbers); also a
  stand-alone script (``uv run python -m benchmarks.cases.width_sweep [--arch myrtle]``,
  ``benchmarks/results/width_sweep_<arch>.json``).

Devices: the same command runs on CPU, GPU or TPU and uses every local device: the
function route of the solver shards ``K`` by rows over ``jax.local_devices()``. To see
that on a CPU, simulate devices::

    XLA_FLAGS=--xla_force_host_platform_device_count=4 uv run python -m benchmarks dynamics --size tiny

Several hosts: start the same command on every host with ``--distributed``; it calls
``jax.distributed.initialize()`` first (arguments from the cluster environment — SLURM,
Cloud TPU, Open MPI — or ``--coordinator HOST:PORT --num-processes P --process-id I``)::

    # host i of P
    uv run python -m benchmarks dynamics --size full --distributed \\
        --coordinator host0:1234 --num-processes P --process-id i

Every process then runs the benchmarks on its local devices and process 0 writes the
results (the JSON records ``process_count`` and the global device count).
"""

from __future__ import annotations

__all__ = ["load_registry"]


def load_registry():
    """Import every case module and return the registry ``{name: Benchmark}``."""
    from benchmarks import cases
    from benchmarks.harness.registration import registry

    cases.load()
    return registry()
