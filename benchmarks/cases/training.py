"""Training steps: ``stepwise_ntk.train`` against a hand-written jitted optax step of the same network.

Network: the ``MLP`` architecture's Flax twin (depth 2) on CIFAR-shaped ``(side, side, 3)``
views (random values: the cost of a step does not depend on them), full batch, plain
SGD, output scale α = 1 and a small learning rate so no run diverges.

For each loss (Barlow Twins, SimCLR, VICReg), one case with

* subject ``train()``: the project's engine — ``lax.scan`` chunks, the loss and the
  eigenvalues of ``C`` recorded at 100 log-spaced steps, divergence checks, the final
  embeddings of the views — for ``steps`` updates (initialisation included);
* baseline ``optax loop``: what a researcher writes first — a ``jax.jit`` step
  (``value_and_grad`` + ``optax.sgd`` update) called ``steps`` times from Python;
* floor ``optax scan``: the same step ``steps`` times inside one jitted ``lax.scan``
  (no Python per step, no recording).

The three are timed in interleaved rounds (one call of each per round) so that a drifting
machine load hits them alike. ``extra.overhead`` = train() / optax loop − 1 (the target:
≤ 20 %), ``extra.overhead_vs_scan`` = train() / optax scan − 1: what recording and
bookkeeping cost on top of the bare steps.
"""

from __future__ import annotations

import numpy as np

from benchmarks.harness.records import Measurement
from benchmarks.harness.registration import register
from benchmarks.harness.timing import Context

__all__ = ["run"]

NAME = "training"
LOOP, SCAN = "optax loop", "optax scan"
PRESETS = {
    "n_views": {"tiny": 16, "small": 128, "full": 256},
    "width": {"tiny": 32, "small": 128, "full": 256},
    "d": {"tiny": 4, "small": 16, "full": 32},
    "side": {"tiny": 4, "small": 8, "full": 8},
    "steps": {"tiny": 10, "small": 100, "full": 1000},
    "losses": {
        "tiny": "barlow_twins,simclr,vicreg",
        "small": "barlow_twins,simclr,vicreg",
        "full": "barlow_twins,simclr,vicreg",
    },
}
LEARNING_RATE = 1e-3


def _baselines(net, loss_fn, views, steps: int, key):
    import jax
    import optax

    tx = optax.sgd(LEARNING_RATE)

    def objective(params):
        return loss_fn(net.apply(params, views))

    def update(params, opt_state):
        loss, grads = jax.value_and_grad(objective)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    step = jax.jit(update)

    @jax.jit
    def scanned(params, opt_state):
        def body(carry, _):
            p, s, _ = update(*carry[:2])
            return (p, s, _), None

        init = (params, opt_state, jax.numpy.zeros((), views.dtype))
        (params, opt_state, loss), _ = jax.lax.scan(body, init, None, length=steps)
        return params, loss

    def loop():
        params = net.init(key, views[:1])
        opt_state = tx.init(params)
        loss = None
        for _ in range(steps):
            params, opt_state, loss = step(params, opt_state)
        return params, loss

    def scan():
        params = net.init(key, views[:1])
        return scanned(params, tx.init(params))

    return loop, scan


@register(
    NAME,
    "Flax training engine train() (Barlow Twins, SimCLR, VICReg; records every log-spaced step) "
    "against a hand-written jitted optax step of the same network, in a Python loop and in lax.scan.",
)
def run(ctx: Context) -> list[Measurement]:
    import jax
    import jax.numpy as jnp

    from stepwise_ntk.kernels import MLP
    from stepwise_ntk.losses import LOSSES
    from stepwise_ntk.training import TrainSettings, train

    dtype = ctx.float_dtype("float32", "float32")
    n_views = int(ctx.param("n_views", PRESETS["n_views"]))
    width = int(ctx.param("width", PRESETS["width"]))
    d = int(ctx.param("d", PRESETS["d"]))
    side = int(ctx.param("side", PRESETS["side"]))
    steps = int(ctx.param("steps", PRESETS["steps"]))
    losses = [s for s in str(ctx.param("losses", PRESETS["losses"])).split(",") if s]
    arch = MLP(depth=2, width=width, d=d)
    net = arch.flax(param_dtype=dtype)
    views = jnp.asarray(np.random.default_rng(0).standard_normal((n_views, side, side, 3)), dtype)
    key = jax.random.key(0)
    sizes = {
        "n_views": n_views,
        "width": width,
        "d": d,
        "input": f"{side}x{side}x3",
        "steps": steps,
    }
    out = []
    for loss in losses:
        case = f"{loss} 2n={n_views} w={width}"
        loop, scan = _baselines(net, LOSSES[loss], views, steps, key)
        settings = TrainSettings(loss=loss, steps=steps, learning_rate=LEARNING_RATE, alpha=1.0)

        def subject(settings=settings):
            return train(arch, settings, views, key=key, progress=False)

        t = ctx.time_interleaved({"train": subject, "loop": loop, "scan": scan})
        ts, tl, tc = t["train"], t["loop"], t["scan"]
        res = ts.output
        extra = {
            "overhead": ts.median_s / tl.median_s - 1.0,
            "overhead_vs_scan": ts.median_s / tc.median_s - 1.0,
            "target_met": bool(ts.median_s <= 1.2 * tl.median_s),
            "finished": bool(res.finished),
            "records": int(res.steps.size),
            "per_step_s": ts.median_s / steps,
        }
        out.append(
            ctx.measurement(
                ts,
                benchmark=NAME,
                case=case,
                name="train()",
                role="subject",
                sizes=sizes,
                dtype=dtype,
                baselines=[LOOP, SCAN],
                extra=extra,
            )
        )
        out.append(
            ctx.measurement(
                tl,
                benchmark=NAME,
                case=case,
                name=LOOP,
                role="baseline",
                sizes=sizes,
                dtype=dtype,
                extra={"per_step_s": tl.median_s / steps},
            )
        )
        out.append(
            ctx.measurement(
                tc,
                benchmark=NAME,
                case=case,
                name=SCAN,
                role="floor",
                sizes=sizes,
                dtype=dtype,
                extra={"per_step_s": tc.median_s / steps},
            )
        )
    return out
