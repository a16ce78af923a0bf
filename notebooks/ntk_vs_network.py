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
# # A finite network against its NTK theory
#
# The kernel model of stepwise self-supervised learning is exact for infinitely wide
# networks. Here we train a finite MLP `f = α · net` with Barlow Twins on CIFAR-10 positive
# pairs from a small initialisation (small α), build the kernel model `K = α² Θ` from the
# infinite-width NTK `Θ` of the *same* architecture, integrate it from the network's own
# initial embeddings, and overlay the two staircases. Then a width sweep: the wider the
# network, the closer its steps and its learned embedding are to the theory's.
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
import math

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import stepwise_ntk as snt
from stepwise_ntk import predictor, theory, training

jax.config.update("jax_enable_x64", True)  # float64 kernel model; the network trains in float32
print("JAX backend:", jax.default_backend(), jax.devices())

# Small sizes when executed by the test suite (STEPWISE_NTK_NOTEBOOK_SMALL=1).
SMALL = os.environ.get("STEPWISE_NTK_NOTEBOOK_SMALL") == "1"
if SMALL:
    n, n_test, downsample, width, widths = 24, 12, 8, 256, (32, 256)
else:
    n, n_test, downsample, width, widths = 256, 128, 4, 2048, (64, 256, 1024, 4096)

# %% [markdown]
# ## Data: training pairs, and held-out pairs from the test split
# Views in the order `[x_1 … x_n, x'_1 … x'_n]`, average-pooled to small images so that a
# wide MLP trains in seconds on a CPU.

# %%
views, labels, _ = snt.cifar10_pairs(jax.random.key(0), n, downsample=downsample, dtype=jnp.float64, download=True)
test_views, _, _ = snt.cifar10_pairs(jax.random.key(1), n_test, split="test", downsample=downsample,
                                     dtype=jnp.float64, download=True)
views, test_views = np.asarray(views), np.asarray(test_views)
print("views:", views.shape, " held-out views:", test_views.shape)

# %% [markdown]
# ## The NTK of a one-hidden-layer ReLU MLP and its contrastive eigenvalues
# In the NTK parameterisation the infinite-width kernel does not depend on the width (nor
# on `d`), so one kernel serves every network below. `d` is chosen where the gap
# `γ_d / γ_{d+1}` is largest: the predicted top-`d` subspace is then well defined.

# %%
alpha = 0.05
arch = snt.MLP(depth=1, width=width, d=1)
kernel = predictor.network_kernel(arch, views, test_views)  # Θ on the views and held-out views
gammas_theta = np.asarray(theory.contrastive_eigensystem(jnp.asarray(kernel.K), n).gammas)
d = predictor.choose_d(gammas_theta)
arch = arch.replace(d=d)
step = 0.1 / (8 * gammas_theta[0])  # gradient step on Θ, well inside the stability limit
lr = step / alpha**2  # the network's learning rate: its kernel is α² Θ
print(f"d = {d}, top γ(Θ): {np.round(gammas_theta[: d + 2], 4)}, learning rate {lr:.4g}")

# %% [markdown]
# ## Train the finite network from a small initialisation
# `init_network` gives the initial parameters and embeddings `F0 = α · net(X; θ_0)`; the
# theory starts from exactly these. We train for 3 × the last closed-form step time.

# %%
init = predictor.init_network(arch, views.astype(np.float32), test_views.astype(np.float32), alpha=alpha,
                              key=jax.random.key(2))
es = theory.contrastive_eigensystem(jnp.asarray(alpha**2 * kernel.K), n)
t_closed = np.sort(np.asarray(theory.step_times(es, jnp.asarray(init.F0, jnp.float64))))
steps = math.ceil(3 * t_closed[-1] / lr)
config = training.TrainSettings(learning_rate=lr, steps=steps, alpha=alpha, n_records=150)
run = training.train(arch, config, views.astype(np.float32), test_views=test_views.astype(np.float32),
                     init_params=init.params, progress=not SMALL)
print(f"{steps} steps, final loss {float(run.loss[-1]):.3g}")

# %% [markdown]
# ## The kernel model of this run, and the overlay
# `predict_run` integrates `dF/dt = −α² Θ ∇_F L(F)` from the network's `F0` on the same
# effective-time axis `t = learning rate × step`, and adds the closed-form theory.

# %%
times = np.geomspace(lr, lr * steps, 300)
pred = predictor.predict_run(arch, views, test_views, init.F0, times, alpha=alpha, kernel=kernel,
                             F0_test=init.F0_test)
keep = run.effective_times > 0
colors = plt.cm.viridis(np.linspace(0, 0.9, d))
fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4))
a.semilogx(run.effective_times[keep], run.loss[keep], "k", lw=2, label="network")
a.semilogx(pred.times, pred.loss, "C3--", label="kernel theory")
a.set(xlabel="effective time", ylabel="loss", title="loss staircase")
a.legend()
for j in range(d):
    b.semilogx(run.effective_times[keep], run.eigenvalues[keep, j], color=colors[j], lw=2)
    b.semilogx(pred.times, np.asarray(pred.eigenvalues)[:, j], color=colors[j], ls="--")
    b.axvline(t_closed[j], color=colors[j], ls=":", lw=0.8)
b.set(xlabel="effective time", ylabel="eigenvalues of C",
      title="network (solid), kernel flow (dashed), closed-form step times (dotted)")
plt.show()

# %% [markdown]
# ## How close is the network to its theory?
# Step-time ratios network / kernel flow (1: the same), and the alignment of the network's
# final embeddings of the *held-out* views with the predicted top-`d` modes (mean squared
# cosine of the principal angles: 1 for the same subspace).

# %%
report = predictor.compare_run(pred, run, arch=arch)
print("step-time ratios network / theory:", np.round(report.step_time_ratios, 3))
print(f"held-out alignment with the predicted modes: {report.test_alignment:.4f} "
      f"(with the kernel flow: {report.test_alignment_flow:.4f})")
assert np.all(np.isfinite(report.step_time_ratios)) and 0 <= report.test_alignment <= 1

# %% [markdown]
# ## Alignment and step times against width
# `width_sweep` repeats the experiment at each width (each network with its own
# initialisation and its own kernel-model prediction).

# %%
sweep = predictor.width_sweep(arch, views, test_views,
                              predictor.WidthSweepSettings(widths=widths, alpha=alpha, step_size=step),
                              progress=not SMALL)
summary = sweep.summary()["analytic"]
ratios = np.array(summary["step_time_ratios"], dtype=float)
fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
a.semilogx(widths, summary["test_alignment"], "o-", base=2)
a.set(xlabel="width", ylabel="held-out alignment with theory")
b.semilogx(widths, np.median(ratios, axis=1), "o-", base=2)
b.axhline(1, color="gray", ls="--")
b.set(xlabel="width", ylabel="median step-time ratio network / theory")
plt.show()
for w, al, r in zip(widths, summary["test_alignment"], ratios, strict=False):
    print(f"width {w:>5}: alignment {al:.4f}, step-time ratios {np.round(r, 3)}")
