"""Architecture registry, layer descriptions and Flax twins (stepwise_ntk.kernels.architectures).

The twin is checked against neural-tangents itself by a second route: NT's own finite
network (``arch.stax()`` init_fn/apply_fn) with the same weights must give the same
outputs, and NT's init must have the same distribution as the twin's. Both networks are
interpretations of one description, ``arch.layers()``; that is checked structurally too.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stepwise_ntk.kernels import empirical_ntk
from stepwise_ntk.kernels.architectures import (
    ARCHITECTURES,
    MLP,
    MYRTLE_STAGES,
    Activation,
    Conv,
    Dense,
    Flatten,
    FlaxNetwork,
    MyrtleCNN,
    Residual,
    WideResNet,
    from_config,
    make_architecture,
    stax_network,
    weight_layers,
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


def _flax_names(arch):
    if isinstance(arch, MLP):
        names = [f"hidden_{i}" for i in range(arch.depth)]
    elif isinstance(arch, MyrtleCNN):
        names = [f"conv_{i}" for i in range(sum(MYRTLE_STAGES[arch.depth]))]
    else:
        names = ["stem"]
        for g in range(3):
            for b in range(arch.blocks_per_group):
                names += [f"g{g}b{b}_conv1", f"g{g}b{b}_conv2"] + ([f"g{g}b{b}_shortcut"] if b == 0
                                                                   else [])
    return names + ["readout"]


def nt_to_flax(arch, nt_params):
    """Map NT's parameters onto the twin's parameter names (same layer order)."""
    pairs = _weight_pairs(nt_params)
    names = _flax_names(arch)
    assert len(pairs) == len(names)
    out = {}
    for name, (w, b) in zip(names, pairs, strict=True):
        out[name] = {"kernel": w} | ({} if b is None else {"bias": b.reshape(-1)})
    return {"params": out}


TWIN_ARCHS = [
    MLP(depth=2, width=16, d=3, activation="relu"),
    MLP(depth=1, width=16, d=3, activation="erf", b_std=0.3),
    MLP(depth=2, width=16, d=3, activation="gelu", b_std=0.1, parameterization="standard"),
    MyrtleCNN(depth=5, width=4, d=2, b_std=0.2),
    MyrtleCNN(depth=7, width=4, d=2, activation="gelu", parameterization="standard"),
    WideResNet(width=2, d=2, blocks_per_group=2, b_std=0.1),
]


@pytest.mark.parametrize("arch", TWIN_ARCHS, ids=lambda a: f"{a.name}-{a.activation}-"
                         f"{a.parameterization}")
def test_flax_twin_computes_the_nt_network_with_the_same_weights(arch):
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 8, 8, 3), jnp.float64)
    init_fn, apply_fn, _ = arch.stax()
    _, nt_params = init_fn(jax.random.PRNGKey(1), x.shape)
    nt_params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), nt_params)
    y_nt = jax.jit(apply_fn)(nt_params, x)
    y_flax = jax.jit(arch.flax(jnp.float64).apply)(nt_to_flax(arch, nt_params), x)
    assert y_flax.shape == (3, arch.d)
    # Same weights, same float64 formula up to summation order.
    np.testing.assert_allclose(y_flax, y_nt, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("parameterization", ["ntk", "standard"])
def test_twin_initial_distribution_matches_nt_and_the_documented_formula(parameterization):
    arch = MLP(depth=1, width=400, d=2, w_std=1.7, b_std=0.6, parameterization=parameterization)
    x = jnp.zeros((1, 300), jnp.float32)
    params = jax.jit(arch.flax().init)(jax.random.PRNGKey(0), x)["params"]
    _, nt_params = jax.jit(arch.stax()[0], static_argnums=1)(jax.random.PRNGKey(1), x.shape)
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
        arch = make_architecture(name, width=32, d=4)
        assert isinstance(arch, cls)
        assert from_config(arch.to_config()) == arch
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


def test_a_size_of_the_wrong_type_is_a_type_error():
    with pytest.raises(TypeError, match="depth must be a positive int"):
        MLP(depth=2.5)


@pytest.mark.parametrize("arch", [MyrtleCNN(), WideResNet()], ids=["myrtle", "wrn"])
@pytest.mark.parametrize("shape, match", [((192,), "NHWC images"), ((8, 6, 3), "multiples of 4")])
def test_cnn_input_shape_checks(arch, shape, match):
    with pytest.raises(ValueError, match=match):
        arch.check_input_shape(shape)
    arch.check_input_shape((8, 8, 3))


def test_specs_are_frozen_and_hashable():
    arch = MLP()
    with pytest.raises(AttributeError):
        arch.width = 3
    assert hash(arch) == hash(MLP()) and arch.replace(width=3) != arch


# --- one description, two networks ------------------------------------------------------

# Per registered architecture, a width at which the twin's empirical NTK is near the analytic
# one. With the fixed seeds below the geometric-mean relative error is 0.08 (mlp), 0.17
# (myrtle) and 0.12 (wrn); at 1/8 of these widths it is 0.3-0.76, and the analytic NTK of a
# network with a 10% larger sigma_w is 0.46-1.6 away, so the bound 0.3 holds only for a
# wide twin of the very network whose NTK stax() computes.
_WIDE = {"mlp": 512, "myrtle": 64, "wrn": 32}


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_stax_and_flax_networks_are_interpretations_of_one_description(name):
    arch = make_architecture(name, width=4, d=4, b_std=0.1)
    layers = arch.layers()
    weights = weight_layers(layers)
    x = np.random.default_rng(0).normal(size=(4, 8, 8, 3)).astype(np.float32)
    net = arch.flax(jnp.float32)
    # Shapes and names only: abstract evaluation, nothing is compiled.
    params = jax.eval_shape(net.init, jax.random.key(0), x[:1])["params"]
    init_fn, _, _ = arch.stax()
    nt_params = jax.eval_shape(lambda key: init_fn(key, x.shape)[1], jax.random.PRNGKey(1))
    nt_pairs = _weight_pairs(nt_params)

    # Each weight record is one parameterised Flax layer (named after it: the names that
    # checkpoints hold) and one (W, b) pair of NT's network, in NT's parameter order.
    assert [w.name for w in weights] == _flax_names(arch)
    assert len(weights) == len(params) == len(nt_pairs) and set(params) == {w.name for w in weights}
    for w, (nt_w, nt_b) in zip(weights, nt_pairs, strict=True):
        assert params[w.name]["kernel"].shape == nt_w.shape and nt_w.shape[-1] == w.features
        assert params[w.name]["bias"].shape == (w.features,) == (nt_b.size,)
    assert arch.uses_conv == any(isinstance(w, Conv) for w in weights)
    assert net == FlaxNetwork(layers=layers, param_dtype=jnp.float32)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_the_wide_flax_twin_has_the_stax_networks_ntk(name):
    """The two interpretations are one network: the wide twin's empirical NTK is near stax()'s."""
    arch = make_architecture(name, width=_WIDE[name], d=4, b_std=0.1)
    x = np.random.default_rng(0).normal(size=(4, 8, 8, 3)).astype(np.float32)
    net = arch.flax(jnp.float32)
    init = jax.jit(net.init)
    _, _, kernel_fn = arch.stax()
    analytic = np.asarray(kernel_fn(x, None, "ntk"))
    errors = [np.linalg.norm(empirical_ntk(net, init(jax.random.key(seed, impl="rbg"), x[:1]), x,
                                           progress=False) - analytic) / np.linalg.norm(analytic)
              for seed in range(8)]
    # Per-seed errors are heavy-tailed; their geometric mean is a robust summary.
    assert np.exp(np.mean(np.log(errors))) < 0.3, (name, np.round(errors, 3))


@dataclasses.dataclass(frozen=True, kw_only=True)
class _MLPWithExtraLayer(MLP):
    """An MLP whose description gains one hidden layer ``extra`` before the readout."""

    def layers(self):
        *body, readout = super().layers()
        extra = dataclasses.replace(body[-2], name="extra")  # a copy of the last hidden Dense
        return (*body, extra, Activation(self.activation), readout)


def test_changing_the_description_changes_both_networks():
    fields = {"width": 16, "d": 3, "activation": "gelu", "b_std": 0.2}
    arch, deeper, shallower = _MLPWithExtraLayer(depth=1, **fields), MLP(depth=2, **fields), \
        MLP(depth=1, **fields)
    x = jax.random.normal(jax.random.PRNGKey(0), (5, 7), jnp.float32)

    # The extra layer makes the NT network the depth-2 MLP, bit for bit, and not the depth-1 one.
    ntk = arch.kernel_fn()(x, None, "ntk")
    np.testing.assert_array_equal(ntk, deeper.kernel_fn()(x, None, "ntk"))
    assert not np.allclose(ntk, shallower.kernel_fn()(x, None, "ntk"))
    assert len(_weight_pairs(arch.stax()[0](jax.random.PRNGKey(1), x.shape)[1])) == 3

    # ... and the Flax twin the depth-2 twin, with "extra" in the place of "hidden_1".
    params = arch.flax().init(jax.random.key(0), x[:1])
    assert set(params["params"]) == {"hidden_0", "extra", "readout"}
    renamed = {"params": {("hidden_1" if k == "extra" else k): v
                          for k, v in params["params"].items()}}
    np.testing.assert_array_equal(arch.flax().apply(params, x), deeper.flax().apply(renamed, x))


@pytest.mark.parametrize(
    "layers, match",
    [
        ((), "non-empty tuple"),
        ((Flatten(), "relu"), "unknown layer record"),
        ((Dense(features=2, w_std=1.0, b_std=None, parameterization="ntk", name="a"),
          Dense(features=2, w_std=1.0, b_std=None, parameterization="ntk", name="a")),
         r"names must be unique.*\['a'\]"),
    ],
)
def test_bad_descriptions_are_refused_by_both_interpreters(layers, match):
    with pytest.raises(ValueError, match=match):
        stax_network(layers)
    with pytest.raises(ValueError, match=match):
        FlaxNetwork(layers=layers)


def test_a_residual_branch_must_end_in_fresh_weights():
    with pytest.raises(ValueError, match="must end in a Dense or Conv"):
        Residual(branch=(Activation("relu"),))
