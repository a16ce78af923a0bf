"""Architecture registry and Flax twins (stepwise_ntk.kernels.architectures._registry and _arch_*).

The twin is checked against neural-tangents itself by a second route: NT's own finite
network (``spec.stax()`` init_fn/apply_fn) with the same weights must give the same
outputs, and NT's init must have the same distribution as the twin's.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stepwise_ntk.kernels.architectures._cnn import MYRTLE_STAGES
from stepwise_ntk.kernels.architectures._registry import (
    ARCHITECTURES,
    MLP,
    MyrtleCNN,
    WideResNet,
    from_config,
    make_architecture,
)


def _weight_pairs(nt_params):
    """(W, b) pairs of an NT stax parameter tree in layer order (depth first)."""
    if isinstance(nt_params, tuple) and len(nt_params) == 2 and hasattr(nt_params[0], "ndim") \
            and nt_params[0].ndim >= 2:
        return [nt_params]
    pairs = []
    if isinstance(nt_params, (list, tuple)):
        for p in nt_params:
            pairs += _weight_pairs(p)
    return pairs


def _flax_names(spec):
    if isinstance(spec, MLP):
        names = [f"hidden_{i}" for i in range(spec.depth)]
    elif isinstance(spec, MyrtleCNN):
        names = [f"conv_{i}" for i in range(sum(MYRTLE_STAGES[spec.depth]))]
    else:
        names = ["stem"]
        for g in range(3):
            for b in range(spec.blocks_per_group):
                names += [f"g{g}b{b}_conv1", f"g{g}b{b}_conv2"] + ([f"g{g}b{b}_shortcut"] if b == 0
                                                                   else [])
    return names + ["readout"]


def nt_to_flax(spec, nt_params):
    """Map NT's parameters onto the twin's parameter names (same layer order)."""
    pairs = _weight_pairs(nt_params)
    names = _flax_names(spec)
    assert len(pairs) == len(names)
    out = {}
    for name, (w, b) in zip(names, pairs):
        out[name] = {"kernel": w} | ({} if b is None else {"bias": b.reshape(-1)})
    return {"params": out}


TWIN_SPECS = [
    MLP(depth=2, width=16, d=3, activation="relu"),
    MLP(depth=1, width=16, d=3, activation="erf", b_std=0.3),
    MLP(depth=2, width=16, d=3, activation="gelu", b_std=0.1, parameterization="standard"),
    MyrtleCNN(depth=5, width=4, d=2, b_std=0.2),
    MyrtleCNN(depth=7, width=4, d=2, activation="gelu", parameterization="standard"),
    WideResNet(width=2, d=2, blocks_per_group=2, b_std=0.1),
]


@pytest.mark.parametrize("spec", TWIN_SPECS, ids=lambda s: f"{s.name}-{s.activation}-"
                         f"{s.parameterization}")
def test_flax_twin_computes_the_nt_network_with_the_same_weights(spec):
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 8, 8, 3), jnp.float64)
    init_fn, apply_fn, _ = spec.stax()
    _, nt_params = init_fn(jax.random.PRNGKey(1), x.shape)
    nt_params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), nt_params)
    y_nt = jax.jit(apply_fn)(nt_params, x)
    y_flax = jax.jit(spec.flax(jnp.float64).apply)(nt_to_flax(spec, nt_params), x)
    assert y_flax.shape == (3, spec.d)
    # Same weights, same float64 formula up to summation order.
    np.testing.assert_allclose(y_flax, y_nt, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("parameterization", ["ntk", "standard"])
def test_twin_initial_distribution_matches_nt_and_the_documented_formula(parameterization):
    spec = MLP(depth=1, width=400, d=2, w_std=1.7, b_std=0.6, parameterization=parameterization)
    x = jnp.zeros((1, 300), jnp.float32)
    params = jax.jit(spec.flax().init)(jax.random.PRNGKey(0), x)["params"]
    _, nt_params = jax.jit(spec.stax()[0], static_argnums=1)(jax.random.PRNGKey(1), x.shape)
    w_nt, b_nt = _weight_pairs(nt_params)[0]
    w, b = params["hidden_0"]["kernel"], params["hidden_0"]["bias"]
    want_w = 1.0 if parameterization == "ntk" else 1.7 / math.sqrt(300)
    want_b = 1.0 if parameterization == "ntk" else 0.6
    # 120000 weight draws: the sample std is within 1% of the truth (its relative sd is 0.2%);
    # 400 bias draws: within 15% (relative sd 3.5%).
    for sample, want, tol in ((w, want_w, 0.01), (w_nt, want_w, 0.01), (b, want_b, 0.15),
                              (b_nt, want_b, 0.15)):
        assert abs(float(jnp.std(sample)) / want - 1) < tol
        assert abs(float(jnp.mean(sample))) < 4 * want / math.sqrt(sample.size)


def test_no_bias_parameters_when_b_std_is_none():
    params = MLP(width=8, d=2).flax().init(jax.random.PRNGKey(0), jnp.ones((1, 5), jnp.float32))
    assert all(set(layer) == {"kernel"} for layer in params["params"].values())


def test_registry_round_trip_and_names():
    assert set(ARCHITECTURES) == {"mlp", "myrtle", "wrn"}
    for name, cls in ARCHITECTURES.items():
        spec = make_architecture(name, width=32, d=4)
        assert isinstance(spec, cls)
        assert from_config(spec.to_config()) == spec
    assert make_architecture("mlp", depth=3).depth == 3


def test_kernel_config_ignores_width_only_in_ntk_parameterisation():
    a, b = MLP(width=64, d=2), MLP(width=1024, d=8)
    assert a.kernel_config() == b.kernel_config()
    x = np.random.default_rng(0).normal(size=(3, 6))
    np.testing.assert_array_equal(a.kernel_fn()(x, None, "ntk"), b.kernel_fn()(x, None, "ntk"))
    sa, sb = a.replace(parameterization="standard"), b.replace(parameterization="standard")
    assert sa.kernel_config() != sb.kernel_config()
    # NT's standard-parameterisation NTK grows with the hidden width (the property the
    # cache key must respect).
    assert float(sb.kernel_fn()(x, None, "ntk")[0, 0]) > 4 * float(sa.kernel_fn()(x, None, "ntk")[0, 0])


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: make_architecture("transformer"), "unknown architecture 'transformer'"),
        (lambda: make_architecture("mlp", channels=3), r"no field\(s\) \['channels'\]"),
        (lambda: from_config({"width": 3}), "needs an 'arch' key"),
        (lambda: MLP(activation="tanh"), "unsupported activation 'tanh'"),
        (lambda: MLP(width=0), "width must be a positive int"),
        (lambda: MLP(depth=2.5), "depth must be a positive int"),
        (lambda: MLP(w_std=-1.0), "w_std must be > 0"),
        (lambda: MLP(b_std=float("nan")), "b_std must be a finite float"),
        (lambda: MLP(parameterization="mup"), "parameterization must be one of"),
        (lambda: MyrtleCNN(depth=6), "depth must be one of \\(5, 7, 10\\)"),
        (lambda: WideResNet(blocks_per_group=0), "blocks_per_group must be a positive int"),
    ],
)
def test_bad_specs_are_refused_with_a_fix(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("spec", [MyrtleCNN(), WideResNet()], ids=["myrtle", "wrn"])
@pytest.mark.parametrize("shape, match", [((192,), "NHWC images"), ((8, 6, 3), "multiples of 4")])
def test_cnn_input_shape_checks(spec, shape, match):
    with pytest.raises(ValueError, match=match):
        spec.check_input_shape(shape)
    spec.check_input_shape((8, 8, 3))


def test_specs_are_frozen_and_hashable():
    spec = MLP()
    with pytest.raises(AttributeError):
        spec.width = 3
    assert hash(spec) == hash(MLP()) and spec.replace(width=3) != spec
