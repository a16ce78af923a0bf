"""Tests for stepwise_ntk.data._augment: positive-pair views and the ops that make them.

References: numpy re-implementations (np.pad + slicing, np.fliplr, the BT.601 formula,
torchvision's blend formulas), scipy.ndimage.zoom for bilinear resizing, exhaustive
matching of views against every possible crop/flip, and binomial / chi-square bounds
for the random choices. Images are random noise in [0.01, 1] so that distinct crops,
flips and colour transforms can never coincide by accident.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage as ndi
import scipy.stats

from stepwise_ntk.data import _cifar10
from stepwise_ntk.data._augment import (
    LUMA_WEIGHTS,
    AugmentSettings,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    cifar10_pairs,
    crop_with_padding,
    downsample,
    grayscale,
    hflip,
    positive_pairs,
    resized_crop,
    sample_resized_crop_box,
)

OFF = {"crop": None, "flip_prob": None, "jitter_prob": None, "gray_prob": None}


def noise(n, h=8, w=8, c=3, seed=0, dtype=np.float64):
    return np.random.default_rng(seed).uniform(0.01, 1.0, (n, h, w, c)).astype(dtype)


def np_gray(x):
    luma = 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]
    return np.repeat(luma[..., None], 3, axis=-1)


def np_crop(image, dy, dx, p):
    h, w, _ = image.shape
    return np.pad(image, ((p, p), (p, p), (0, 0)))[dy : dy + h, dx : dx + w]


def assert_rate(hits, trials, p):
    """Binomial check: |hits/trials − p| ≤ 5σ, σ = √(p(1−p)/trials).

    A correct sampler fails this with probability < 6e-7 (normal tail at 5σ).
    """
    tol = 5 * math.sqrt(p * (1 - p) / trials)
    assert abs(hits / trials - p) <= tol, (hits / trials, p, tol)


# --------------------------------------------------------------------------- ordering


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_identity_views_are_the_images_in_order(dtype):
    x = noise(5, dtype=dtype)
    views = positive_pairs(jax.random.key(0), x, AugmentSettings.identity())
    assert views.shape == (10, 8, 8, 3) and views.dtype == dtype
    np.testing.assert_array_equal(np.asarray(views[:5]), x)
    np.testing.assert_array_equal(np.asarray(views[5:]), x)


def test_crop_and_flip_views_match_exhaustive_reference():
    """Every view is exactly one crop/flip of *its own* image; offsets are uniform.

    Also checks the ordering with augmentation on: view i and view n+i come from image i.
    """
    n, p = 400, 2
    x = noise(n)
    cfg = AugmentSettings(crop="pad", crop_padding=p, flip_prob=0.5, jitter_prob=None, gray_prob=None)
    views = np.asarray(positive_pairs(jax.random.key(1), x, cfg))
    offsets = [(dy, dx) for dy in range(2 * p + 1) for dx in range(2 * p + 1)]
    # matches[j, o, f]: view j is exactly crop o (flipped if f) of image j mod n.
    padded = np.pad(np.concatenate([x, x]), ((0, 0), (p, p), (p, p), (0, 0)))
    h, w = x.shape[1:3]
    matches = np.zeros((2 * n, len(offsets), 2), bool)
    for o, (dy, dx) in enumerate(offsets):
        crop = padded[:, dy : dy + h, dx : dx + w]
        for f, candidate in enumerate((crop, crop[:, :, ::-1])):
            matches[:, o, f] = (views == candidate).all(axis=(1, 2, 3))
    assert (matches.sum(axis=(1, 2)) == 1).all(), np.flatnonzero(matches.sum(axis=(1, 2)) != 1)
    found_offset = matches.any(axis=2).argmax(axis=1)
    found_flip = matches[:, :, 1].any(axis=1)
    # 800 draws over 25 equally likely offsets: chi-square goodness of fit, 24 dof. A correct
    # sampler gives p-value < 1e-4 with probability 1e-4.
    counts = np.bincount(found_offset, minlength=len(offsets))
    assert scipy.stats.chisquare(counts).pvalue > 1e-4, counts
    assert_rate(sum(found_flip), 2 * n, 0.5)


def test_crop_with_padding_all_offsets():
    p = 3
    x = noise(1, 7, 9)[0]
    for dy in range(2 * p + 1):
        for dx in range(2 * p + 1):
            out = crop_with_padding(jnp.asarray(x), dy, dx, p)
            np.testing.assert_array_equal(np.asarray(out), np_crop(x, dy, dx, p))
    np.testing.assert_array_equal(np.asarray(crop_with_padding(jnp.asarray(x), p, p, p)), x)
    with pytest.raises(ValueError, match="offsets"):
        crop_with_padding(jnp.asarray(x), 2 * p + 1, 0, p)


def test_flip_is_exact_mirror():
    x = noise(6, 5, 7)
    np.testing.assert_array_equal(np.asarray(hflip(jnp.asarray(x[0]))), x[0][:, ::-1])
    cfg = AugmentSettings(**{**OFF, "flip_prob": 1.0})
    views = np.asarray(positive_pairs(jax.random.key(0), x, cfg))
    np.testing.assert_array_equal(views, np.concatenate([x, x])[:, :, ::-1])


# --------------------------------------------------------------------------- colour


def test_grayscale_matches_luma_formula():
    x = noise(4)
    assert math.isclose(sum(LUMA_WEIGHTS), 1.0, rel_tol=1e-15)  # gray of gray is gray
    np.testing.assert_allclose(
        np.asarray(grayscale(jnp.asarray(x))), np_gray(x), rtol=0, atol=1e-15
    )
    # float32 against the float64 reference: a few ulps of values ≤ 1
    out32 = grayscale(jnp.asarray(x, jnp.float32))
    assert out32.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out32, np.float64), np_gray(x), rtol=0, atol=3e-7)
    cfg = AugmentSettings(**{**OFF, "gray_prob": 1.0})
    views = np.asarray(positive_pairs(jax.random.key(0), x, cfg))
    np.testing.assert_allclose(views, np.concatenate([np_gray(x)] * 2), rtol=0, atol=1e-15)


@pytest.mark.parametrize("f", [0.0, 0.3, 1.0, 1.8])
def test_jitter_ops_match_numpy(f):
    """torchvision's definitions: blend with black / mean luma / per-pixel luma, clipped."""
    x = noise(1, 6, 5)[0]
    fx = jnp.asarray(f, jnp.float64)
    ref_b = np.clip(f * x, 0, 1)
    ref_c = np.clip(f * x + (1 - f) * np_gray(x)[..., 0].mean(), 0, 1)
    ref_s = np.clip(f * x + (1 - f) * np_gray(x), 0, 1)
    for op, ref in (
        (adjust_brightness, ref_b),
        (adjust_contrast, ref_c),
        (adjust_saturation, ref_s),
    ):
        np.testing.assert_allclose(np.asarray(op(jnp.asarray(x), fx)), ref, rtol=0, atol=1e-15)
    if f == 1.8:  # the clip is exercised
        assert ref_b.max() == 1.0


def test_jitter_factors_within_strength():
    """With only brightness on, view / image is one factor per view, in [1 − s, 1 + s]."""
    s, n = 0.3, 500
    x = noise(n, 4, 4, seed=3) * 0.5  # ≤ 0.5, so factors ≤ 1.3 never clip
    cfg = AugmentSettings(
        **{**OFF, "jitter_prob": 1.0, "brightness": s, "contrast": 0, "saturation": None}
    )
    views = np.asarray(positive_pairs(jax.random.key(2), x, cfg))
    ratio = views / np.concatenate([x, x])
    per_view = ratio.reshape(2 * n, -1)
    np.testing.assert_allclose(
        per_view, np.broadcast_to(per_view[:, :1], per_view.shape), rtol=1e-12
    )
    factors = per_view[:, 0]
    assert factors.min() >= 1 - s and factors.max() <= 1 + s
    # uniform on [0.7, 1.3]: KS test, a correct sampler gives p < 1e-4 with prob. 1e-4
    assert scipy.stats.kstest(factors, "uniform", args=(1 - s, 2 * s)).pvalue > 1e-4


def np_hue(x, delta):
    """colorsys, pixel by pixel: RGB -> HSV, h + delta mod 1, HSV -> RGB."""
    import colorsys

    out = np.empty_like(x)
    for idx in np.ndindex(x.shape[:-1]):
        h, sat, v = colorsys.rgb_to_hsv(*x[idx])
        out[idx] = colorsys.hsv_to_rgb((h + delta) % 1.0, sat, v)
    return out


@pytest.mark.parametrize("delta", [0.0, 0.13, -0.27, 0.5, -0.5])
def test_adjust_hue_matches_colorsys(delta):
    x = noise(1, 5, 5, seed=11)[0]
    x[0, 0] = [0.4, 0.4, 0.4]  # grey: hue undefined, stays grey
    x[0, 1] = [0.9, 0.2, 0.2]  # pure-ish red, blue max, green max: every hue sector's formula
    x[0, 2] = [0.1, 0.8, 0.3]
    x[0, 3] = [0.2, 0.3, 0.95]
    np.testing.assert_allclose(np.asarray(adjust_hue(jnp.asarray(x), delta)), np_hue(x, delta), atol=1e-12)


def test_hue_jitter_draws_a_rotation_within_strength_and_leaves_the_rest_unchanged():
    """Views with hue on are the views without it with one rotation δ ∈ [−h, h] per view."""
    h, n = 0.1, 40
    x = noise(n, 3, 3, seed=5)
    base = AugmentSettings(**{**OFF, "jitter_prob": 1.0, "brightness": 0.3})
    assert dataclasses.replace(base, hue=0).jitters and not AugmentSettings(**OFF, hue=0.2).jitters
    plain = np.asarray(positive_pairs(jax.random.key(4), x, base))
    np.testing.assert_array_equal(np.asarray(positive_pairs(jax.random.key(4), x, dataclasses.replace(base, hue=0))),
                                  plain)  # hue 0 is off
    hued = np.asarray(positive_pairs(jax.random.key(4), x, dataclasses.replace(base, hue=h)))
    deltas = []
    for v in range(2 * n):
        # Recover the rotation from one saturated pixel, then check the whole view with it.
        import colorsys

        h0 = colorsys.rgb_to_hsv(*plain[v, 0, 0])[0]
        h1 = colorsys.rgb_to_hsv(*hued[v, 0, 0])[0]
        delta = (h1 - h0 + 0.5) % 1.0 - 0.5
        np.testing.assert_allclose(hued[v], np_hue(plain[v], delta), atol=1e-9)
        deltas.append(delta)
    deltas = np.asarray(deltas)
    assert np.all(np.abs(deltas) <= h + 1e-9)
    assert scipy.stats.kstest(deltas, "uniform", args=(-h, 2 * h)).pvalue > 1e-4


# --------------------------------------------------------------------------- resized crop


@pytest.mark.parametrize(
    "box", [(0, 0, 16, 12), (2, 3, 8, 6), (1, 0, 5, 11), (4, 4, 7, 3), (15, 11, 1, 1)]
)
def test_resized_crop_matches_scipy_zoom(box):
    """Bilinear, half-pixel centres, edge replication = scipy zoom(grid_mode, 'nearest')."""
    t, l, h, w = box
    x = noise(1, 16, 12)[0]
    ref = ndi.zoom(
        x[t : t + h, l : l + w], (16 / h, 12 / w, 1), order=1, mode="nearest", grid_mode=True
    )
    out = resized_crop(jnp.asarray(x), t, l, h, w)
    np.testing.assert_allclose(np.asarray(out), ref, rtol=0, atol=1e-14)
    with pytest.raises(ValueError, match="not inside"):
        resized_crop(jnp.asarray(x), t + 1, l, 16, w)


def test_resized_crop_box_sampler_properties():
    H, W, scale, ratio = 32, 24, (0.1, 0.6), (0.5, 2.0)
    keys = jax.random.split(jax.random.key(0), 4000)
    sample = jax.jit(jax.vmap(lambda k: sample_resized_crop_box(k, H, W, scale, ratio)))
    top, left, h, w = (np.asarray(a) for a in sample(keys))
    assert (h >= 1).all() and (w >= 1).all() and (top >= 0).all() and (left >= 0).all()
    assert (top + h <= H).all() and (left + w <= W).all()
    # w and h are rounded from a real box with area a ∈ A·scale and aspect r ∈ ratio:
    # |w − √(a r)| ≤ ½ and |h − √(a/r)| ≤ ½, hence these loose-by-rounding bounds.
    area = H * W
    assert ((w - 0.5) * (h - 0.5) <= scale[1] * area).all()
    assert ((w + 0.5) * (h + 0.5) >= scale[0] * area).all()
    assert ((w - 0.5) / (h + 0.5) <= ratio[1]).all() and ((w + 0.5) / (h - 0.5) >= ratio[0]).all()
    # positions are uniform over the valid range: mean of top/(H − h) ≈ 1/2 (std ≈ 0.3/√4000)
    frac = top[h < H] / (H - h[h < H])
    assert abs(frac.mean() - 0.5) < 5 * 0.3 / math.sqrt(frac.size)


def test_resized_crop_fallback_and_identity():
    # no candidate with aspect ≥ 2 and full area fits a square: centred 32×16 box
    sample = jax.jit(sample_resized_crop_box, static_argnums=(1, 2, 3, 4))  # compiled once
    box = sample(jax.random.key(0), 32, 32, (1.0, 1.0), (2.0, 3.0))
    assert tuple(int(b) for b in box) == (8, 0, 16, 32)
    x = noise(3, 10, 10)
    cfg = AugmentSettings(
        **{**OFF, "crop": "resized", "crop_scale": (1.0, 1.0), "crop_ratio": (1.0, 1.0)}
    )
    views = positive_pairs(jax.random.key(0), x, cfg)
    np.testing.assert_allclose(np.asarray(views), np.concatenate([x, x]), rtol=0, atol=1e-15)


# --------------------------------------------------------------------------- randomness


def test_rates_of_flip_and_grayscale():
    """Each view is exactly one of {x, flip x, gray x, flip gray x}; rates and independence."""
    n, pf, pg = 2000, 0.3, 0.6
    x = noise(n, 4, 4, seed=5)
    cfg = AugmentSettings(**{**OFF, "flip_prob": pf, "gray_prob": pg})
    views = np.asarray(positive_pairs(jax.random.key(4), x, cfg))
    xx = np.concatenate([x, x])
    gray = np_gray(xx)
    is_gray = np.isclose(views[..., :1], views).all(axis=(1, 2, 3))
    base = np.where(is_gray[:, None, None, None], gray, xx)
    flipped = np.abs(views - base[:, :, ::-1]).max(axis=(1, 2, 3)) < 1e-12
    straight = np.abs(views - base).max(axis=(1, 2, 3)) < 1e-12
    assert (flipped ^ straight).all()  # exactly one explanation per view
    assert_rate(flipped.sum(), 2 * n, pf)
    assert_rate(is_gray.sum(), 2 * n, pg)
    assert_rate((flipped & is_gray).sum(), 2 * n, pf * pg)  # the two coins are independent
    assert_rate((flipped[:n] & flipped[n:]).sum(), n, pf * pf)  # so are the two views


def test_jitter_rate():
    n, pj = 2000, 0.7
    x = noise(n, 4, 4, seed=6)
    cfg = AugmentSettings(**{**OFF, "jitter_prob": pj})
    views = np.asarray(positive_pairs(jax.random.key(5), x, cfg))
    changed = ~(views == np.concatenate([x, x])).all(axis=(1, 2, 3))
    assert_rate(changed.sum(), 2 * n, pj)


@pytest.fixture(scope="module")
def default_views():
    x = noise(64, 16, 16, seed=7)
    return x, np.asarray(positive_pairs(jax.random.key(0), x))


def test_same_key_same_views_different_key_different(default_views):
    x, views = default_views
    again = np.asarray(positive_pairs(jax.random.key(0), x))
    assert np.array_equal(views, again)  # bitwise
    legacy = np.asarray(positive_pairs(jax.random.PRNGKey(0), x))  # same key bits
    assert np.array_equal(views, legacy)
    other = np.asarray(positive_pairs(jax.random.key(1), x))
    assert not np.isclose(views, other).all(axis=(1, 2, 3)).any()


def test_views_of_a_pair_differ(default_views):
    """Two views coincide only if crop, flip, jitter and gray all agree: P < 2e-4 per pair."""
    _, views = default_views
    n = views.shape[0] // 2
    same = (views[:n] == views[n:]).all(axis=(1, 2, 3))
    assert same.sum() <= 1


def test_views_depend_only_on_key_and_image_id(default_views):
    x, views = default_views
    n = x.shape[0]
    part = np.asarray(positive_pairs(jax.random.key(0), x[10:15], ids=np.arange(10, 15)))
    np.testing.assert_allclose(part[:5], views[10:15], rtol=0, atol=1e-15)
    np.testing.assert_allclose(part[5:], views[n + 10 : n + 15], rtol=0, atol=1e-15)
    perm = np.random.default_rng(0).permutation(n)
    shuffled = np.asarray(positive_pairs(jax.random.key(0), x[perm], ids=perm))
    np.testing.assert_allclose(
        shuffled, np.concatenate([views[:n][perm], views[n:][perm]]), rtol=0, atol=1e-15
    )


@pytest.mark.parametrize("crop", ["pad", "resized"])
def test_dtype_preserved_and_same_draws(crop, default_views):
    """float32 and float64 inputs use the same random draws: outputs agree to f32 rounding."""
    x, views = default_views  # float64, default settings (crop="pad"), key 0: compiled once
    cfg = AugmentSettings(crop=crop)
    assert AugmentSettings(crop="pad") == AugmentSettings()
    v64 = views if crop == "pad" else positive_pairs(jax.random.key(0), x, cfg)
    v32 = positive_pairs(jax.random.key(0), x.astype(np.float32), cfg)
    assert v64.dtype == jnp.float64 and v32.dtype == jnp.float32
    # values in [0, 1] after a handful of ops: 1e-5 ≈ 100 float32 ulps
    np.testing.assert_allclose(np.asarray(v32, np.float64), np.asarray(v64), rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- bad input


# A wrong value is a ValueError, a wrong type (not a number, not an int) a TypeError.
@pytest.mark.parametrize(
    "kwargs, name, error",
    [
        ({"crop": "random"}, "crop", ValueError),
        ({"crop_padding": -1}, "crop_padding", ValueError),
        ({"crop_padding": 1.5}, "crop_padding", TypeError),
        ({"crop_padding": True}, "crop_padding", TypeError),
        ({"crop_scale": (0.0, 1.0)}, "crop_scale", ValueError),
        ({"crop_scale": (0.6, 0.2)}, "crop_scale", ValueError),
        ({"crop_scale": (0.5, 1.5)}, "crop_scale", ValueError),
        ({"crop_scale": (0.5,)}, "crop_scale", ValueError),
        ({"crop_scale": 0.5}, "crop_scale", TypeError),
        ({"crop_scale": (0.5, "1")}, "crop_scale", TypeError),
        ({"crop_ratio": (0.0, 1.0)}, "crop_ratio", ValueError),
        ({"crop_ratio": (2.0, 1.0)}, "crop_ratio", ValueError),
        ({"crop_ratio": (1.0, float("inf"))}, "crop_ratio", ValueError),
        ({"flip_prob": 1.5}, "flip_prob", ValueError),
        ({"flip_prob": -0.1}, "flip_prob", ValueError),
        ({"flip_prob": float("nan")}, "flip_prob", ValueError),
        ({"flip_prob": "0.5"}, "flip_prob", TypeError),
        ({"jitter_prob": 2}, "jitter_prob", ValueError),
        ({"gray_prob": -1}, "gray_prob", ValueError),
        ({"brightness": -0.1}, "brightness", ValueError),
        ({"contrast": float("inf")}, "contrast", ValueError),
        ({"saturation": -1}, "saturation", ValueError),
        ({"hue": 0.6}, "hue", ValueError),
        ({"hue": -0.1}, "hue", ValueError),
    ],
)
def test_bad_config_raises_naming_parameter(kwargs, name, error):
    with pytest.raises(error, match=rf"AugmentSettings\.{name} "):
        AugmentSettings(**kwargs)


def test_config_is_hashable_and_lists_become_tuples():
    a = AugmentSettings(crop_scale=[0.2, 1.0])
    assert a == AugmentSettings(crop_scale=(0.2, 1.0)) and hash(a) == hash(
        AugmentSettings(crop_scale=(0.2, 1.0))
    )


def test_bad_call_arguments():
    x = noise(2, 8, 8)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="crop_padding"):
        positive_pairs(key, x, AugmentSettings(crop_padding=8))
    with pytest.raises(ValueError, match="C = 1"):
        positive_pairs(key, x[..., :1], AugmentSettings())
    positive_pairs(key, x[..., :1], AugmentSettings(jitter_prob=None, gray_prob=None))  # fine
    with pytest.raises(ValueError, match="uint8_to_float"):
        positive_pairs(key, (x * 255).astype(np.uint8), AugmentSettings())
    with pytest.raises(ValueError, match=r"\(n, H, W, C\)"):
        positive_pairs(key, x[0], AugmentSettings())
    with pytest.raises(ValueError, match="normalise the views afterwards"):
        positive_pairs(key, x - 0.5, AugmentSettings())
    with pytest.raises(TypeError, match="PRNG key"):
        positive_pairs(0, x, AugmentSettings())
    with pytest.raises(ValueError, match="ids must be 2 integers"):
        positive_pairs(key, x, ids=[0, 1, 2])
    with pytest.raises(ValueError, match="ids must lie"):
        positive_pairs(key, x, ids=[0, -1])
    with pytest.raises(TypeError, match="settings must be AugmentSettings"):
        positive_pairs(key, x, {"flip_prob": 0.5})


# --------------------------------------------------------------------------- downsample


@pytest.mark.parametrize("factor", [1, 2, 4])
def test_downsample_matches_loop(factor):
    x = noise(3, 8, 12)
    out = np.asarray(downsample(x, factor))
    assert out.shape == (3, 8 // factor, 12 // factor, 3)
    for i in range(8 // factor):
        for j in range(12 // factor):
            block = x[:, i * factor : (i + 1) * factor, j * factor : (j + 1) * factor]
            np.testing.assert_allclose(out[:, i, j], block.mean(axis=(1, 2)), rtol=0, atol=1e-15)


@pytest.mark.parametrize("factor, error", [(3, ValueError), (0, ValueError), (2.0, TypeError), (True, TypeError)])
def test_downsample_bad_factor(factor, error):
    with pytest.raises(error, match="downsample factor"):
        downsample(noise(1, 8, 12), factor)


# --------------------------------------------------------------------------- CIFAR-10


def test_cifar10_pairs_identity_is_the_data(cifar_dir):
    n = 30
    views, labels, idx = cifar10_pairs(
        jax.random.key(0),
        n,
        "test",
        cifar_dir,
        AugmentSettings.identity(),
        normalize=False,
        dtype=np.float64,
    )
    data = _cifar10.load_cifar10("test", cifar_dir)
    ref = data.images[idx].astype(np.float64) / 255.0
    assert views.shape == (2 * n, 32, 32, 3) and views.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(views[:n]), ref, rtol=0, atol=1e-15)
    np.testing.assert_allclose(np.asarray(views[n:]), ref, rtol=0, atol=1e-15)
    np.testing.assert_array_equal(labels, data.labels[idx])
    np.testing.assert_array_equal(np.bincount(labels, minlength=10), [3] * 10)


def test_cifar10_pairs_normalize_and_downsample(cifar_dir):
    n, key = 20, jax.random.key(1)
    raw, _, idx = cifar10_pairs(key, n, "train", cifar_dir, normalize=False)
    norm, _, idx2 = cifar10_pairs(key, n, "train", cifar_dir, normalize=True, downsample=4)
    np.testing.assert_array_equal(idx, idx2)
    assert raw.dtype == norm.dtype == jnp.float32 and norm.shape == (2 * n, 8, 8, 3)
    # second route: normalise in float64 numpy, then pool 4×4 blocks
    z = (np.asarray(raw, np.float64) - np.array(_cifar10.CIFAR10_MEAN)) / np.array(
        _cifar10.CIFAR10_STD
    )
    ref = z.reshape(2 * n, 8, 4, 8, 4, 3).mean(axis=(2, 4))
    np.testing.assert_allclose(np.asarray(norm, np.float64), ref, rtol=0, atol=1e-5)  # f32, |z| ≤ 4


def test_cifar10_pairs_nested_in_n(cifar_dir):
    """Balanced subsets are nested and views are keyed by dataset index, so n=10 ⊂ n=25."""
    key = jax.random.key(2)
    small, lab_s, idx_s = cifar10_pairs(key, 10, "test", cifar_dir)
    big, lab_b, idx_b = cifar10_pairs(key, 25, "test", cifar_dir)
    np.testing.assert_array_equal(idx_b[:10], idx_s)
    np.testing.assert_array_equal(lab_b[:10], lab_s)
    np.testing.assert_array_equal(np.asarray(big[:10]), np.asarray(small[:10]))
    np.testing.assert_array_equal(np.asarray(big[25:35]), np.asarray(small[10:]))
    other, _, idx_o = cifar10_pairs(jax.random.key(3), 10, "test", cifar_dir)
    np.testing.assert_array_equal(idx_o, idx_s)  # the key moves augmentations, not images
    assert not np.array_equal(np.asarray(other), np.asarray(small))


def test_cifar10_pairs_bad_input(cifar_dir):
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="has 846"):
        cifar10_pairs(key, 847, "test", cifar_dir)
    with pytest.raises(ValueError, match="n_pairs must be a positive integer"):
        cifar10_pairs(key, 0, "test", cifar_dir)
    with pytest.raises(TypeError, match="n_pairs must be a positive integer"):
        cifar10_pairs(key, 4.0, "test", cifar_dir)
    with pytest.raises(TypeError, match="settings must be AugmentSettings"):
        cifar10_pairs(key, 4, "test", cifar_dir, settings={"flip_prob": 0.5})
    with pytest.raises(ValueError, match="downsample factor 3"):
        cifar10_pairs(key, 4, "test", cifar_dir, downsample=3)
    with pytest.raises(ValueError, match="floating"):
        cifar10_pairs(key, 4, "test", cifar_dir, dtype=np.int32)
    with pytest.raises(_cifar10.CIFAR10Error):
        cifar10_pairs(key, 4, "test", cifar_dir / "missing")
