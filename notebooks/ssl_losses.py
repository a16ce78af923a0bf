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
# # Barlow Twins, SimCLR and VICReg: the same staircase
#
# The closed-form theory covers Barlow Twins; the paper also reports stepwise learning for
# SimCLR and VICReg, for which no closed form is known. stepwise_ntk's function-space route
# integrates `dF/dt = −K ∇_F L(F)` for any differentiable loss, so we can watch all three
# on the same kernel and initialisation, and compare what they learn.
#
# **Colab**: run the next cell once (installs stepwise_ntk from `STEPWISE_NTK_SOURCE`).

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

jax.config.update("jax_enable_x64", True)
print("JAX backend:", jax.default_backend(), jax.devices())
SMALL = os.environ.get("STEPWISE_NTK_NOTEBOOK_SMALL") == "1"
n, d = (40, 3) if SMALL else (200, 4)

# %% [markdown]
# ## A linear kernel on augmented CIFAR-10 views, and a small initialisation

# %%
key_views, key_w = jax.random.split(jax.random.PRNGKey(1))
views, labels, _ = snt.cifar10_pairs(key_views, n, dtype=jnp.float64, downsample=2, download=True)
X = views.reshape(2 * n, -1) / np.sqrt(views[0].size)
K = X @ X.T
F0 = X @ (1e-3 * jax.random.normal(key_w, (d, X.shape[1]), jnp.float64)).T
es = theory.contrastive_eigensystem(K, n)
t_bt = theory.step_times(es, F0)
times = jnp.geomspace(float(jnp.min(t_bt)) / 100, 5 * float(jnp.max(t_bt)), 120)

# %% [markdown]
# ## Integrate each loss on the function-space route
# Same kernel, initial embeddings and time grid for all three. SimCLR is used in its
# dot-product form: the cosine form is scale invariant, so its flow from a small
# initialisation is singular (rates grow like 1/|f|²). VICReg uses a slightly smoothed
# variance hinge (see `stepwise_ntk.losses.vicreg_loss`).

# %%
settings = {
    "barlow_twins": {},
    "simclr": {"normalize": False, "temperature": 0.5},
    "vicreg": {"smooth": 0.01},
}
runs = {
    name: solver.solve(K, n, F0, times, loss=name, loss_kwargs=kw or None, method="function")
    for name, kw in settings.items()
}
fig, axes = plt.subplots(1, 3, figsize=(15, 4))
for ax, (name, traj) in zip(axes, runs.items(), strict=True):
    eig = np.asarray(traj.eigenvalues)
    ax.loglog(traj.times, eig / eig[-1])
    ax.set(title=name, xlabel="effective time", ylabel="eigenvalues of C / final")
plt.show()

# %% [markdown]
# ## Do the losses learn the same subspace?
# Mean squared cosine of the principal angles between the final embeddings' column spaces
# (1: the same subspace; about d/2n for unrelated ones).

# %%
from stepwise_ntk.predictor import subspace_alignment  # noqa: E402

names = list(runs)
for i, a in enumerate(names):
    for b in names[i + 1 :]:
        print(f"{a:>12} vs {b:<12} alignment {float(subspace_alignment(runs[a].embeddings, runs[b].embeddings)):.3f}")
for name, traj in runs.items():
    assert np.all(np.isfinite(np.asarray(traj.eigenvalues))), name
