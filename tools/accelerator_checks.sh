#!/usr/bin/env bash
# Accelerator checks, prepared for the day a GPU (or TPU) is available; about 10 minutes.
#  1. JAX must see the accelerator (else: one line, exit 2).
#  2. The float32 and precision tests on that device: float32 against float64 references
#     (solver routes, theory, losses, kernels, training) and the lowered programs requesting
#     HIGHEST precision for the products that decide accuracy (accelerators default to TF32 /
#     bfloat16 passes).
#  3. The benchmark suite at its small sizes in float32, JSON + Markdown in benchmarks/results/
#     (file stem <backend>_small).
# Needs a JAX with the accelerator's plugin in the environment (e.g. jax[cuda12]); the CPU
# lock file installs none. Usage: STEPWISE_NTK_DATA=../shared/cifar10 bash tools/accelerator_checks.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PY=(uv run --frozen python)
"${PY[@]}" - <<'PYEOF' || exit 2
import sys
import jax
backend = jax.default_backend()
print(f"backend {backend}: {jax.devices()}")
if backend == "cpu":
    print("tools/accelerator_checks.sh: error: JAX sees no GPU or TPU; install JAX with its plugin "
          "(e.g. uv pip install 'jax[cuda12]').", file=sys.stderr)
    sys.exit(2)
PYEOF
status=0
timeout 300 "${PY[@]}" -m pytest -n 0 -q -p no:cacheprovider -m "slow or not slow" \
  tests/test_solver.py tests/test_solver_function.py tests/test_solver_accuracy.py \
  tests/test_partial_eigensystem.py tests/test_theory.py tests/test_losses.py tests/test_kernels.py \
  tests/test_training.py tests/test_metrics.py tests/test_integrate.py \
  -k "float32 or precision or highest" || status=1
timeout 300 "${PY[@]}" -m benchmarks dynamics scaling kernels training losses_speed \
  --size small --dtype float32 --budget 5 || status=1
exit $status
