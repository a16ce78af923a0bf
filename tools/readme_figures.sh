#!/usr/bin/env bash
# Regenerates the README's figures (docs/figures/*.png) with the CLI's default experiments
# (tens of minutes on a 2-core CPU; each command is also documented in the README).
# Usage: STEPWISE_NTK_DATA=../shared/cifar10 bash tools/readme_figures.sh
set -euo pipefail
cd "$(dirname "$0")/.."
uv run stepwise-ntk linear --out runs/readme-linear --overwrite --no-progress
uv run stepwise-ntk kernel --out runs/readme-kernel --overwrite --no-progress
mkdir -p docs/figures
for f in staircase projections modes; do cp "runs/readme-linear/$f.png" "docs/figures/linear_$f.png"; done
cp runs/readme-kernel/staircase.png docs/figures/kernel_mlp_staircase.png
cp runs/readme-linear/results.json docs/figures/linear_results.json
cp runs/readme-kernel/results.json docs/figures/kernel_mlp_results.json
uv run stepwise-ntk network --out runs/readme-network --overwrite --no-progress
uv run stepwise-ntk sweep --out runs/readme-sweep --overwrite --no-progress
cp runs/readme-network/staircase.png docs/figures/network_mlp_staircase.png
cp runs/readme-network/results.json docs/figures/network_mlp_results.json
cp runs/readme-sweep/width_sweep.png docs/figures/sweep_mlp_width_sweep.png
cp runs/readme-sweep/curves.png docs/figures/sweep_mlp_curves.png
cp runs/readme-sweep/results.json docs/figures/sweep_mlp_results.json
# The convolutional network (Myrtle-5 with the CLI's per-architecture defaults), Barlow Twins,
# SimCLR and VICReg from one initialisation: Figure 3's staircases, the cross-method alignment
# tables (networks and kernel flows) and Figure 1's projections of the Barlow Twins network's
# embeddings (a point, a line, a plane).
uv run stepwise-ntk methods --arch myrtle --out runs/readme-methods-myrtle --overwrite --no-progress
for f in staircases alignment alignment_theory projections; do
  cp "runs/readme-methods-myrtle/$f.png" "docs/figures/methods_myrtle_$f.png"
done
cp runs/readme-methods-myrtle/results.json docs/figures/methods_myrtle_results.json
