"""Training steps: ``stepwise_ntk.train`` against a hand-written jitted optax step of the same network.

Networks: the ``MLP`` architecture's Flax twin (depth 2) and the ``MyrtleCNN`` twin
(Myrtle-5: four 3×3 convolutions, average pools, dense readout) on CIFAR-shaped
``(side, side, 3)`` views (random values: the cost of a step does not depend on them), full
batch, plain SGD, output scale α = 1 and a small learning rate so no run diverges.
``archs`` chooses them; the CNN has its own sizes (``cnn_width``, ``cnn_side``,
``cnn_steps``: a convolution step costs far more than a dense one on a CPU), ``cnn_losses``
its losses. Compilation is most of the tiny smoke run's time: it times the MLP only
(``--set archs=mlp,myrtle`` adds the CNN) and leaves out the ``lax.scan`` floor
(``floor``), so each loss compiles two programs.

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
    "steps": {"tiny": 5, "small": 100, "full": 1000},
    "losses": {
        "tiny": "barlow_twins,simclr,vicreg",
        "small": "barlow_twins,simclr,vicreg",
        "full": "barlow_twins,simclr,vicreg",
    },
    "archs": {"tiny": "mlp", "small": "mlp,myrtle", "full": "mlp,myrtle"},
    # The lax.scan floor (one more compilation per case): informative, not the target.
    "floor": {"tiny": False, "small": True, "full": True},
    # Myrtle-5 sizes: on a GPU pass e.g. --set cnn_width=256 --set cnn_side=32 --set n_views=512.
    "cnn_width": {"tiny": 8, "small": 32, "full": 64},
    "cnn_side": {"tiny": 4, "small": 8, "full": 16},
    "cnn_steps": {"tiny": 5, "small": 50, "full": 200},
    "cnn_losses": {
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
    "against a hand-written jitted optax step of the same network (MLP and Myrtle-5 CNN), in a Python "
    "loop and in lax.scan.",
)
def run(ctx: Context) -> list[Measurement]:
    from stepwise_ntk.kernels import MLP, MyrtleCNN

    dtype = ctx.float_dtype("float32", "float32")
    n_views = int(ctx.param("n_views", PRESETS["n_views"]))
    d = int(ctx.param("d", PRESETS["d"]))
    archs = [a for a in str(ctx.param("archs", PRESETS["archs"])).split(",") if a]
    unknown = sorted(set(archs) - {"mlp", "myrtle"})
    if unknown:
        raise ValueError(f"archs: unknown {unknown}; choose from mlp, myrtle.")
    floor = bool(ctx.param("floor", PRESETS["floor"]))
    out = []
    if "mlp" in archs:
        width = int(ctx.param("width", PRESETS["width"]))
        out += _cases(ctx, MLP(depth=2, width=width, d=d), dtype, n_views,
                      int(ctx.param("side", PRESETS["side"])), int(ctx.param("steps", PRESETS["steps"])),
                      str(ctx.param("losses", PRESETS["losses"])), tag="", floor=floor)
    if "myrtle" in archs:
        width = int(ctx.param("cnn_width", PRESETS["cnn_width"]))
        out += _cases(ctx, MyrtleCNN(depth=5, width=width, d=d), dtype, n_views,
                      int(ctx.param("cnn_side", PRESETS["cnn_side"])),
                      int(ctx.param("cnn_steps", PRESETS["cnn_steps"])),
                      str(ctx.param("cnn_losses", PRESETS["cnn_losses"])), tag="myrtle5 ", floor=floor)
    return out


def _cases(ctx: Context, arch, dtype, n_views: int, side: int, steps: int, losses: str, *, tag: str,
           floor: bool) -> list[Measurement]:
    """The three timings (train(), optax loop, optax scan) of ``arch`` for each loss."""
    import jax
    import jax.numpy as jnp

    from stepwise_ntk.losses import LOSSES
    from stepwise_ntk.training import TrainSettings, train

    width, d = arch.width, arch.d
    net = arch.flax(param_dtype=dtype)
    views = jnp.asarray(np.random.default_rng(0).standard_normal((n_views, side, side, 3)), dtype)
    key = jax.random.key(0)
    sizes = {
        "arch": arch.name,
        "n_views": n_views,
        "width": width,
        "d": d,
        "input": f"{side}x{side}x3",
        "steps": steps,
    }
    out = []
    for loss in [x for x in losses.split(",") if x]:
        # The loss first: the case's first word names it.
        case = f"{loss} {tag}2n={n_views} w={width}"
        loop, scan = _baselines(net, LOSSES[loss], views, steps, key)
        settings = TrainSettings(loss=loss, steps=steps, learning_rate=LEARNING_RATE, alpha=1.0)

        def subject(settings=settings):
            return train(arch, settings, views, key=key, progress=False)

        t = ctx.time_interleaved({"train": subject, "loop": loop, **({"scan": scan} if floor else {})})
        ts, tl, tc = t["train"], t["loop"], t.get("scan")
        res = ts.output
        extra = {
            "overhead": ts.median_s / tl.median_s - 1.0,
            "overhead_vs_scan": ts.median_s / tc.median_s - 1.0 if tc is not None else None,
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
                baselines=[LOOP, SCAN] if floor else [LOOP],
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
        if tc is not None:
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
