# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Quickstart: the Barlow Twins staircase of a linear model on CIFAR-10
#
# A linear model `f(x) = W x` trained with the (simplified) Barlow Twins loss from a small
# initialisation learns its embedding one eigendirection at a time. Here we build the
# kernel `K = X Xᵀ` of 2n augmented CIFAR-10 views, compute the contrastive eigensystem,
# predict the step times, and integrate the gradient flow with stepwise_ntk's solver.
#
# **Colab**: run the next cell once; it installs stepwise_ntk from `STEPWISE_NTK_SOURCE`
# (a git URL or a path to a clone of this repository) when it is not importable yet.
# JAX uses a GPU or TPU runtime automatically when one is attached.

# %%
import importlib.util
import os
import subprocess
import sys

if importlib.util.find_spec("stepwise_ntk") is None:
    source = os.environ.get("STEPWISE_NTK_SOURCE", ".")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", source], check=True)

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import stepwise_ntk as snt
from stepwise_ntk import solver, theory

jax.config.update("jax_enable_x64", True)  # float64 theory and solver
print("JAX backend:", jax.default_backend(), jax.devices())

# Small sizes when executed by the test suite (STEPWISE_NTK_NOTEBOOK_SMALL=1).
SMALL = os.environ.get("STEPWISE_NTK_NOTEBOOK_SMALL") == "1"
n, d = (60, 3) if SMALL else (500, 8)

# %% [markdown]
# ## Data: 2n augmented views in the order [x_1 … x_n, x'_1 … x'_n]
# CIFAR-10 is found from `$STEPWISE_NTK_DATA` (or downloaded to `~/.cache/stepwise_ntk`).

# %%
key_views, key_w = jax.random.split(jax.random.PRNGKey(0))
augment = snt.AugmentSettings(crop="pad", flip_prob=0.5, brightness=0.4, contrast=None, saturation=None, gray_prob=None)
views, labels, _ = snt.cifar10_pairs(key_views, n, settings=augment, dtype=jnp.float64, download=True)
X = views.reshape(2 * n, -1) / np.sqrt(views[0].size)  # scaled so K_ii ≈ 1
K = X @ X.T
print("views:", views.shape, " K:", K.shape)

# %% [markdown]
# ## Theory: contrastive eigenvalues γ_j and predicted step times
# `t_j = ln(1/λ_j(0) − 1) / (8 γ_j)`, with `λ_j(0)` the initial embedding's weight on mode j.

# %%
es = theory.contrastive_eigensystem(K, n)
W0 = 1e-3 * jax.random.normal(key_w, (d, X.shape[1]), jnp.float64)
F0 = X @ W0.T
lam0 = theory.initial_eigenvalues(es, F0)
t_pred = theory.step_times(es, F0)
print("gamma_j:", np.round(np.asarray(es.gammas[:d]), 4))
print("predicted step times:", np.round(np.asarray(t_pred), 2))

# %% [markdown]
# ## Simulation: the gradient flow dF/dt = −K ∇L(F), at log-spaced times

# %%
times = jnp.geomspace(float(jnp.min(t_pred)) / 100, 3 * float(jnp.max(t_pred)), 200)
traj = solver.solve(K, n, F0, times)
print("solver:", traj.method, traj.integrator, "|", traj.reason)
theory_curves = theory.aligned_eigenvalues(es.gammas[:d], lam0, times)

fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
a.semilogx(times, traj.loss, "k")
for t in t_pred:
    a.axvline(float(t), ls="--", lw=0.7)
a.set(xlabel="effective time", ylabel="loss", title="loss staircase")
b.semilogx(times, traj.eigenvalues)
b.semilogx(times, np.sort(np.asarray(theory_curves), axis=1)[:, ::-1], "k--", lw=0.7)
b.set(xlabel="effective time", ylabel="eigenvalues of C", title="simulation (colour) vs theory (dashed)")
plt.show()

# %% [markdown]
# ## How well did the theory predict the steps?

# %%
from stepwise_ntk.predictor import crossing_times  # noqa: E402

simulated = crossing_times(np.asarray(times), np.asarray(traj.eigenvalues))
predicted = np.sort(np.asarray(t_pred))
rel = np.abs(simulated - predicted) / predicted
print("relative step-time errors:", np.round(rel, 3), " median:", np.median(rel).round(3))
assert np.all(np.isfinite(rel))
