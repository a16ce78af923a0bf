"""Random image augmentations that turn n images into 2n views (positive pairs).

Each image ``x_i`` is seen through two independent random augmentations, and the views
are stacked in the project-wide order ``X = [x_1 … x_n, x'_1 … x'_n]`` (first view of
every image, then the second view of every image), so that the pair-swap matrix ``Z``
swaps the two halves.

The pipeline per view (each stage switchable in :class:`AugmentSettings`) is the usual
SimCLR / Barlow Twins one, in this order:

1. crop: random crop of the zero-padded image (``"pad"``), or a random resized crop
   (``"resized"``, torchvision's ``RandomResizedCrop`` box sampling, bilinear);
2. horizontal flip with probability ``flip_prob``;
3. colour jitter with probability ``jitter_prob``: brightness, contrast, saturation, hue in
   that fixed order (torchvision's order without its random permutation), each factor
   uniform in ``[max(0, 1 − s), 1 + s]``, clipped to [0, 1]; the hue rotated by a uniform
   ``δ ∈ [−h, h]`` of a turn (off by default);
4. grayscale with probability ``gray_prob`` (ITU-R BT.601 luma, copied to 3 channels).

Randomness: view ``v ∈ {0, 1}`` of the image with id ``i`` uses the key
``fold_in(fold_in(key, v), i)`` and each stage folds in its own constant, so a view
depends only on ``(key, v, i, image)``: not on the batch it is computed in, on n, on
which other stages are switched on, or on the float dtype (all random draws are float32
or int32, then cast).

Example::

    >>> import jax, jax.numpy as jnp, numpy as np
    >>> from stepwise_ntk.data import AugmentSettings, positive_pairs, uint8_to_float
    >>> pixels = np.random.default_rng(0).integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)
    >>> images = jnp.asarray(uint8_to_float(pixels))          # (4, 32, 32, 3) float32 in [0, 1]
    >>> views = positive_pairs(jax.random.key(0), images, AugmentSettings())
    >>> views.shape, views.dtype                               # [x_1 … x_4, x'_1 … x'_4]
    ((8, 32, 32, 3), dtype('float32'))
    >>> bool(jnp.all(views == positive_pairs(jax.random.key(0), images)))   # same key, same views
    True
    >>> bool(jnp.all(views[:4] == views[4:]))                  # two independent views per image
    False
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from stepwise_ntk._checks import (
    check_bool,
    check_choice,
    check_int,
    check_key,
    check_number,
    check_positive_int,
    check_type,
    is_concrete,
)
from stepwise_ntk.data import _cifar10

__all__ = [
    "AugmentSettings",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_hue",
    "adjust_saturation",
    "augment_image",
    "cifar10_pairs",
    "crop_with_padding",
    "downsample",
    "grayscale",
    "hflip",
    "positive_pairs",
    "resized_crop",
    "sample_resized_crop_box",
]

# ITU-R BT.601 luma weights (PIL's "L" conversion); they sum to 1.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)

# Constants folded into a view's key, one per stage, so stages draw independently and
# switching one stage off leaves the others' draws unchanged.
_CROP, _FLIP, _JITTER, _GRAY, _HUE = 0, 1, 2, 3, 4


# --------------------------------------------------------------------------- settings


def _check_range(name: str, value: Any, *, high: float | None, what: str) -> tuple[float, float]:
    """A pair ``(low, high)`` with ``0 < low ≤ high`` (``≤ high`` bound if given), as floats."""
    name = f"AugmentSettings.{name}"
    check_type(name, value, (tuple, list), "a pair (low, high)")
    if len(value) != 2:
        raise ValueError(f"{name} must be a pair (low, high), got {value!r}.")
    lo, hi = (check_number(name, v, low=0, open_low=True, high=high, hint=f" ({what})") for v in value)
    if lo > hi:
        raise ValueError(f"{name} must satisfy {what}, got {value!r}.")
    return lo, hi


@dataclasses.dataclass(frozen=True)
class AugmentSettings:
    """Which augmentations make a view, and how strong they are.

    ``None`` or 0 switches a stage off. The defaults are a mild SimCLR-style CIFAR
    pipeline: pad-4 random crop, flip 0.5, colour jitter 0.4/0.4/0.4 with probability
    0.8, grayscale 0.2. ``AugmentSettings.identity()`` switches everything off.

    Attributes:
      crop: ``"pad"`` (random crop of the image padded by ``crop_padding`` zero pixels on
        each side; output keeps the input size), ``"resized"`` (random resized crop with
        ``crop_scale``, ``crop_ratio``, resized back to the input size) or ``None``.
      crop_padding: padding in pixels for ``crop="pad"``; must be < the image size.
      crop_scale: ``(lo, hi)`` with ``0 < lo ≤ hi ≤ 1``: fraction of the image area kept
        by the resized crop.
      crop_ratio: ``(lo, hi)`` with ``0 < lo ≤ hi``: width/height range of the crop box
        (sampled log-uniformly).
      flip_prob: probability of a horizontal flip.
      jitter_prob: probability that colour jitter is applied to a view.
      brightness, contrast, saturation: jitter strengths ``s ≥ 0``; each factor is
        uniform in ``[max(0, 1 − s), 1 + s]``.
      hue: hue jitter strength ``h ∈ [0, 0.5]`` (torchvision's ``ColorJitter(hue=h)``): the
        hue of every pixel rotated by ``δ ~ U[−h, h]`` turns (:func:`adjust_hue`), after
        saturation, inside the jitter stage (same ``jitter_prob`` coin). Default ``None``
        (off): the default pipeline, and every setting without it, draws exactly the views
        it drew before the hue existed (its draw uses a key of its own).
      gray_prob: probability of converting a view to grayscale.

    Example::

        >>> from stepwise_ntk.data import AugmentSettings
        >>> s = AugmentSettings(crop="resized", crop_scale=(0.2, 1.0), jitter_prob=None)
        >>> s.crop, s.crop_scale, s.flip_prob, s.gray_prob, s.jitters
        ('resized', (0.2, 1.0), 0.5, 0.2, False)
        >>> AugmentSettings.identity().crop, AugmentSettings.identity().flip_prob
        (None, None)
        >>> AugmentSettings(crop_scale=(0.5, 0.2))
        Traceback (most recent call last):
        ...
        ValueError: AugmentSettings.crop_scale must satisfy 0 < low ≤ high ≤ 1, got (0.5, 0.2).
    """

    crop: str | None = "pad"
    crop_padding: int = 4
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_prob: float | None = 0.5
    jitter_prob: float | None = 0.8
    brightness: float | None = 0.4
    contrast: float | None = 0.4
    saturation: float | None = 0.4
    gray_prob: float | None = 0.2
    hue: float | None = None

    def __post_init__(self):
        check_choice("AugmentSettings.crop", self.crop, ("pad", "resized", None))
        pad = check_positive_int("AugmentSettings.crop_padding", self.crop_padding, allow_zero=True, hint=" (pixels)")
        object.__setattr__(self, "crop_padding", pad)
        scale = _check_range("crop_scale", self.crop_scale, high=1, what="0 < low ≤ high ≤ 1")
        ratio = _check_range("crop_ratio", self.crop_ratio, high=None, what="0 < low ≤ high")
        object.__setattr__(self, "crop_scale", scale)  # tuples keep the settings hashable
        object.__setattr__(self, "crop_ratio", ratio)
        for name in ("flip_prob", "jitter_prob", "gray_prob"):
            if getattr(self, name) is not None:
                check_number(f"AugmentSettings.{name}", getattr(self, name), low=0, high=1,
                             hint=" (a probability; 0 or None turns the op off)")
        for name in ("brightness", "contrast", "saturation"):
            if getattr(self, name) is not None:
                check_number(f"AugmentSettings.{name}", getattr(self, name), low=0,
                             hint=" (a strength; 0 or None turns it off)")
        if self.hue is not None:
            check_number("AugmentSettings.hue", self.hue, low=0, high=0.5,
                         hint=" (a fraction of a turn; 0 or None turns it off)")

    @classmethod
    def identity(cls) -> AugmentSettings:
        """All stages off: both views equal the image."""
        return cls(crop=None, flip_prob=None, jitter_prob=None, gray_prob=None)

    # The stages that actually do something.
    @property
    def pads(self) -> bool:
        return self.crop == "pad" and self.crop_padding > 0

    @property
    def jitters(self) -> bool:
        return bool(self.jitter_prob) and any((self.brightness, self.contrast, self.saturation, self.hue))


# --------------------------------------------------------------------------- single ops


def hflip(image: jax.Array) -> jax.Array:
    """Mirror ``(H, W, C)`` left–right: ``out[y, x] = image[y, W − 1 − x]``."""
    return image[:, ::-1, :]


def crop_with_padding(image: jax.Array, dy: Any, dx: Any, padding: int) -> jax.Array:
    """The ``H × W`` window at offset ``(dy, dx)`` of the image zero-padded by ``padding``.

    ``out[y, x] = image[y + dy − p, x + dx − p]``, or 0 where that is outside the image.
    ``dy = dx = p`` gives the image back.

    Args:
      image: ``(H, W, C)``.
      dy, dx: int offsets in ``[0, 2p]`` (may be traced).
      padding: ``p ≥ 0`` (static).
    """
    if (
        is_concrete(dy)
        and is_concrete(dx)
        and not (0 <= int(dy) <= 2 * padding and 0 <= int(dx) <= 2 * padding)
    ):
        raise ValueError(f"offsets must lie in [0, {2 * padding}], got dy={dy}, dx={dx}.")
    h, w, c = image.shape
    padded = jnp.pad(image, ((padding, padding), (padding, padding), (0, 0)))
    return jax.lax.dynamic_slice(padded, (dy, dx, jnp.zeros_like(dy)), (h, w, c))


def _interp_matrix(start: jax.Array, length: jax.Array, size: int, dtype: Any) -> jax.Array:
    # (size, size) weights resampling [start, start + length) onto `size` pixels:
    # half-pixel centres, coordinates clamped into the box (= edge replication), tent
    # kernel; bilinear = one such matrix per axis.
    start = start.astype(dtype)
    length = length.astype(dtype)
    centres = start + (jnp.arange(size, dtype=dtype) + 0.5) * (length / size) - 0.5
    coord = jnp.clip(centres, start, start + length - 1)
    source = jnp.arange(size, dtype=dtype)
    return jnp.maximum(0, 1 - jnp.abs(coord[:, None] - source[None, :]))


def resized_crop(image: jax.Array, top: Any, left: Any, height: Any, width: Any) -> jax.Array:
    """Crop the box ``[top, top+height) × [left, left+width)`` and resize it to ``H × W``.

    Bilinear with half-pixel centres and edge replication inside the box, as
    ``torch.nn.functional.interpolate(..., mode="bilinear", align_corners=False)`` of the
    cropped patch (the box is never larger than the image, so no antialiasing is needed).
    Implemented as ``R_y · crop · R_xᵀ`` with two small interpolation matrices, so box
    sizes may be traced.

    Args:
      image: ``(H, W, C)`` float.
      top, left, height, width: ints, the box inside the image.

    Returns:
      ``(H, W, C)``, same dtype.
    """
    h, w, _ = image.shape
    if all(map(is_concrete, (top, left, height, width))) and not (
        0 <= int(top)
        and 0 <= int(left)
        and 1 <= int(height)
        and 1 <= int(width)
        and int(top) + int(height) <= h
        and int(left) + int(width) <= w
    ):
        raise ValueError(
            f"box (top={top}, left={left}, height={height}, width={width}) is not inside "
            f"the {h}×{w} image."
        )
    ry = _interp_matrix(jnp.asarray(top), jnp.asarray(height), h, image.dtype)
    rx = _interp_matrix(jnp.asarray(left), jnp.asarray(width), w, image.dtype)
    # HIGHEST: no reduced-precision (e.g. TF32) matmuls on accelerators.
    return jnp.einsum("ik,klc,jl->ijc", ry, image, rx, precision=jax.lax.Precision.HIGHEST)


def sample_resized_crop_box(
    key: jax.Array,
    height: int,
    width: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    attempts: int = 10,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """A random crop box as in torchvision's ``RandomResizedCrop.get_params``.

    Up to ``attempts`` candidates: area ``A·U(scale)``, aspect ``exp(U(log ratio))``,
    ``w = round(√(area·aspect))``, ``h = round(√(area/aspect))``; the first that fits is
    placed uniformly at random. If none fits, the largest centred box whose aspect is
    clamped into ``ratio`` is used. All candidates are drawn at once (no Python loop).

    Returns:
      ``(top, left, h, w)``, int32 scalars.
    """
    k_area, k_ratio, k_top, k_left = jax.random.split(key, 4)
    area = float(height * width)
    target = area * jax.random.uniform(k_area, (attempts,), jnp.float32, scale[0], scale[1])
    log_r = jax.random.uniform(
        k_ratio, (attempts,), jnp.float32, math.log(ratio[0]), math.log(ratio[1])
    )
    aspect = jnp.exp(log_r)
    ws = jnp.round(jnp.sqrt(target * aspect)).astype(jnp.int32)
    hs = jnp.round(jnp.sqrt(target / aspect)).astype(jnp.int32)
    fits = (ws > 0) & (ws <= width) & (hs > 0) & (hs <= height)
    first = jnp.argmax(fits)
    # Fallback, static: a centred box with the aspect clamped into `ratio`.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fb_w, fb_h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        fb_h, fb_w = height, round(height * ratio[1])
    else:
        fb_w, fb_h = width, height
    ok = jnp.any(fits)
    h = jnp.where(ok, hs[first], jnp.int32(fb_h))
    w = jnp.where(ok, ws[first], jnp.int32(fb_w))
    top = jnp.where(
        ok,
        jax.random.randint(k_top, (), 0, height - h + 1, dtype=jnp.int32),
        jnp.int32((height - fb_h) // 2),
    )
    left = jnp.where(
        ok,
        jax.random.randint(k_left, (), 0, width - w + 1, dtype=jnp.int32),
        jnp.int32((width - fb_w) // 2),
    )
    return top, left, h, w


def grayscale(image: jax.Array) -> jax.Array:
    """BT.601 luma ``0.299 R + 0.587 G + 0.114 B``, repeated over the 3 channels."""
    weights = jnp.asarray(LUMA_WEIGHTS, dtype=image.dtype)
    luma = jnp.einsum("...c,c->...", image, weights, precision=jax.lax.Precision.HIGHEST)
    return jnp.broadcast_to(luma[..., None], image.shape)


def _blend(image: jax.Array, other: jax.Array, factor: jax.Array) -> jax.Array:
    # factor·image + (1 − factor)·other, kept in [0, 1] as torchvision does.
    return jnp.clip(factor * image + (1 - factor) * other, 0, 1)


def adjust_brightness(image: jax.Array, factor: jax.Array) -> jax.Array:
    """``clip(factor · image, 0, 1)`` (blend with black)."""
    return _blend(image, jnp.zeros_like(image), factor)


def adjust_contrast(image: jax.Array, factor: jax.Array) -> jax.Array:
    """Blend with the image's mean luma: ``clip(f·x + (1 − f)·mean(luma(x)), 0, 1)``."""
    mean = jnp.mean(grayscale(image)[..., 0])
    return _blend(image, mean, factor)


def adjust_saturation(image: jax.Array, factor: jax.Array) -> jax.Array:
    """Blend with the per-pixel luma: ``clip(f·x + (1 − f)·luma(x), 0, 1)``."""
    return _blend(image, grayscale(image), factor)


def _rgb_to_hsv(image: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    # torchvision's tensor _rgb2hsv: h in [0, 1), s, v = max channel; grey pixels get h = 0.
    r, g, b = image[..., 0], image[..., 1], image[..., 2]
    maxc, minc = jnp.max(image, axis=-1), jnp.min(image, axis=-1)
    eqc = maxc == minc
    cr = maxc - minc
    ones = jnp.ones_like(maxc)
    s = cr / jnp.where(eqc, ones, maxc)
    cr_div = jnp.where(eqc, ones, cr)
    rc, gc, bc = (maxc - r) / cr_div, (maxc - g) / cr_div, (maxc - b) / cr_div
    hr = jnp.where(maxc == r, bc - gc, 0)
    hg = jnp.where((maxc == g) & (maxc != r), 2.0 + rc - bc, 0)
    hb = jnp.where((maxc != g) & (maxc != r), 4.0 + gc - rc, 0)
    h = jnp.mod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    return h, s, maxc


def _hsv_to_rgb(h: jax.Array, s: jax.Array, v: jax.Array) -> jax.Array:
    # torchvision's tensor _hsv2rgb (the sector i = floor(6h) picks the channel formulas).
    i = jnp.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.astype(jnp.int32) % 6
    p = jnp.clip(v * (1.0 - s), 0.0, 1.0)
    q = jnp.clip(v * (1.0 - s * f), 0.0, 1.0)
    t = jnp.clip(v * (1.0 - s * (1.0 - f)), 0.0, 1.0)
    r = jnp.choose(i, (v, q, p, p, t, v), mode="clip")
    g = jnp.choose(i, (t, v, v, q, p, p), mode="clip")
    b = jnp.choose(i, (p, p, t, v, v, q), mode="clip")
    return jnp.stack([r, g, b], axis=-1)


def adjust_hue(image: jax.Array, delta: Any) -> jax.Array:
    """Rotate the hue of every pixel by ``delta`` turns (``|delta| ≤ 0.5``), as torchvision's ``adjust_hue``.

    RGB → HSV, ``h ← (h + delta) mod 1``, HSV → RGB; saturation and value (the largest
    channel) are unchanged, grey pixels stay grey. ``(H, W, 3)`` in ``[0, 1]`` -> same shape and dtype.

    Example:
        >>> import jax.numpy as jnp
        >>> red = jnp.array([[[1.0, 0.0, 0.0]]])
        >>> adjust_hue(red, 1 / 3).round(6).tolist()    # a third of a turn: red -> green
        [[[0.0, 1.0, 0.0]]]
    """
    image = jnp.asarray(image)
    if is_concrete(delta) and not -0.5 <= float(delta) <= 0.5:
        raise ValueError(f"hue delta must lie in [-0.5, 0.5] (a fraction of a turn), got {delta}.")
    h, s, v = _rgb_to_hsv(image)
    h = jnp.mod(h + jnp.asarray(delta, image.dtype), 1.0)
    return _hsv_to_rgb(h, s, v).astype(image.dtype)


# --------------------------------------------------------------------------- one view


def _factor(key: jax.Array, strength: float | None, dtype: Any) -> jax.Array | None:
    if not strength:
        return None
    f = jax.random.uniform(key, (), jnp.float32, max(0.0, 1.0 - strength), 1.0 + strength)
    return f.astype(dtype)


def _coin(key: jax.Array, prob: float) -> jax.Array:
    # Not jax.random.bernoulli: its draw width follows the x64 flag; this does not.
    return jax.random.uniform(key, (), jnp.float32) < prob


def augment_image(key: jax.Array, image: jax.Array, settings: AugmentSettings) -> jax.Array:
    """One random view of one ``(H, W, C)`` image (crop → flip → jitter → grayscale).

    Pure and traceable; :func:`positive_pairs` vmaps it. Assumes pixels in ``[0, 1]``
    when colour jitter is on (it clips to that range).
    """
    h, w, _ = image.shape
    x = image
    k_crop = jax.random.fold_in(key, _CROP)
    if settings.pads:
        p = settings.crop_padding
        dy, dx = jax.random.randint(k_crop, (2,), 0, 2 * p + 1, dtype=jnp.int32)
        x = crop_with_padding(x, dy, dx, p)
    elif settings.crop == "resized":
        box = sample_resized_crop_box(k_crop, h, w, settings.crop_scale, settings.crop_ratio)
        x = resized_crop(x, *box)
    if settings.flip_prob:
        x = jnp.where(_coin(jax.random.fold_in(key, _FLIP), settings.flip_prob), hflip(x), x)
    if settings.jitters:
        k_apply, k_b, k_c, k_s = jax.random.split(jax.random.fold_in(key, _JITTER), 4)
        y = x
        for k, strength, op in (
            (k_b, settings.brightness, adjust_brightness),
            (k_c, settings.contrast, adjust_contrast),
            (k_s, settings.saturation, adjust_saturation),
        ):
            factor = _factor(k, strength, x.dtype)
            if factor is not None:
                y = op(y, factor)
        if settings.hue:
            # A key of its own (not a fifth split of the jitter key): the other factors'
            # draws stay those of the settings without hue.
            delta = jax.random.uniform(jax.random.fold_in(key, _HUE), (), jnp.float32, -settings.hue, settings.hue)
            y = adjust_hue(y, delta.astype(x.dtype))
        x = jnp.where(_coin(k_apply, settings.jitter_prob), y, x)
    if settings.gray_prob:
        x = jnp.where(_coin(jax.random.fold_in(key, _GRAY), settings.gray_prob), grayscale(x), x)
    return x


# --------------------------------------------------------------------------- pairs


@functools.partial(jax.jit, static_argnames=("settings",))
def _pairs(key: jax.Array, images: jax.Array, ids: jax.Array, settings: AugmentSettings):
    def views(v):
        k_view = jax.random.fold_in(key, v)
        keys = jax.vmap(lambda i: jax.random.fold_in(k_view, i))(ids)
        return jax.vmap(augment_image, in_axes=(0, 0, None))(keys, images, settings)

    return jnp.concatenate([views(0), views(1)], axis=0)


def _check_images(images: Any, settings: AugmentSettings) -> jax.Array:
    images = jnp.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must be (n, H, W, C), got shape {images.shape}.")
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise ValueError(
            f"images must be floating point in [0, 1], got {images.dtype}; convert uint8 "
            "pixels with uint8_to_float (x / 255)."
        )
    _, h, w, c = images.shape
    if settings.pads and settings.crop_padding >= min(h, w):
        raise ValueError(
            f"AugmentSettings.crop_padding={settings.crop_padding} must be smaller than the "
            f"image ({h}×{w}); otherwise a view can be all padding."
        )
    if (settings.jitters or settings.gray_prob) and c != 3:
        raise ValueError(
            f"colour jitter and grayscale need RGB images (C = 3), got C = {c}; set "
            "jitter_prob=None and gray_prob=None for other channel counts."
        )
    if (
        settings.jitters
        and is_concrete(images)
        and images.size
        and (float(jnp.min(images)) < 0 or float(jnp.max(images)) > 1)
    ):
        raise ValueError(
            "colour jitter clips to [0, 1], but the images range over "
            f"[{float(jnp.min(images)):.3g}, {float(jnp.max(images)):.3g}]; augment "
            "[0, 1] pixels and normalise the views afterwards."
        )
    return images


def positive_pairs(
    key: jax.Array,
    images: Any,
    settings: AugmentSettings = AugmentSettings(),
    *,
    ids: Any = None,
) -> jax.Array:
    """Two random views of every image, stacked as ``[x_1 … x_n, x'_1 … x'_n]``.

    View ``v`` of image ``i`` is ``augment_image(fold_in(fold_in(key, v), ids[i]),
    images[i], settings)``: independent across views and images, and a function of the key
    and the data only (computing a subset of the images with the same ids gives the same
    views). Jitted; the settings are a static argument (one compilation per settings and
    shape).

    Args:
      key: JAX PRNG key.
      images: ``(n, H, W, C)`` float, pixels in ``[0, 1]`` (needed by colour jitter).
      settings: :class:`AugmentSettings`.
      ids: ``(n,)`` non-negative ints naming the images (default ``0 … n−1``); pass
        dataset indices to make a view independent of which batch it is drawn in.

    Returns:
      ``(2n, H, W, C)`` views, same dtype as ``images``.

    Example::

        >>> import jax, jax.numpy as jnp, numpy as np
        >>> from stepwise_ntk.data import AugmentSettings, positive_pairs, uint8_to_float
        >>> n = 4
        >>> pixels = np.random.default_rng(0).integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
        >>> images = jnp.asarray(uint8_to_float(pixels))      # (n, 32, 32, 3) float32
        >>> views = positive_pairs(jax.random.key(0), images)
        >>> first, second = views[:n], views[n:]               # pair i: first[i], second[i]
        >>> views.shape
        (8, 32, 32, 3)
        >>> ids = np.arange(n)[::-1]                           # the same images in reverse order
        >>> rev = positive_pairs(jax.random.key(0), images[::-1], ids=ids)
        >>> bool(jnp.all(rev[:n] == first[::-1])) and bool(jnp.all(rev[n:] == second[::-1]))
        True
        >>> same = positive_pairs(jax.random.key(0), images, AugmentSettings.identity())
        >>> bool(jnp.all(same[:n] == images)) and bool(jnp.all(same[n:] == images))
        True
    """
    key = check_key(key)
    check_type("settings", settings, AugmentSettings)
    images = _check_images(images, settings)
    n = images.shape[0]
    if ids is None:
        ids = jnp.arange(n, dtype=jnp.uint32)
    else:
        ids_np = np.asarray(ids)
        if ids_np.shape != (n,) or not np.issubdtype(ids_np.dtype, np.integer):
            raise ValueError(f"ids must be {n} integers, got {ids_np.dtype} {ids_np.shape}.")
        if n and (ids_np.min() < 0 or ids_np.max() >= 2**32):
            raise ValueError("ids must lie in [0, 2**32) (they are folded into the key).")
        ids = jnp.asarray(ids_np.astype(np.uint32))
    return _pairs(key, images, ids, settings)


def _check_factor(factor: Any, h: int, w: int) -> None:
    factor = check_positive_int("downsample factor", factor)
    if h % factor or w % factor:
        raise ValueError(
            f"downsample factor {factor} must divide the image size {h}×{w}; pick one of "
            f"{[f for f in range(1, min(h, w) + 1) if h % f == 0 and w % f == 0]}."
        )


def downsample(images: Any, factor: int) -> jax.Array:
    """Average-pool ``(..., H, W, C)`` images by an integer ``factor`` in H and W.

    ``out[..., y, x, c] = mean over the factor × factor block at (y·f, x·f)``; e.g.
    32 → 16 (factor 2) or 32 → 8 (factor 4). ``factor=1`` returns the input.
    """
    images = jnp.asarray(images)
    if images.ndim < 3:
        raise ValueError(f"images must be (..., H, W, C), got shape {images.shape}.")
    *lead, h, w, c = images.shape
    _check_factor(factor, h, w)
    if factor == 1:
        return images
    blocks = images.reshape(*lead, h // factor, factor, w // factor, factor, c)
    return blocks.mean(axis=(-4, -2))


_downsample = downsample  # cifar10_pairs has an argument of the same name


def cifar10_pairs(
    key: jax.Array,
    n_pairs: int,
    split: str = "train",
    data_dir: str | os.PathLike[str] | None = None,
    settings: AugmentSettings = AugmentSettings(),
    normalize: bool = True,
    downsample: int = 1,
    *,
    subset_seed: Any = 0,
    dtype: Any = jnp.float32,
    download: bool = False,
) -> tuple[jax.Array, np.ndarray, np.ndarray]:
    """Positive pairs of ``n`` class-balanced CIFAR-10 images, ready for a kernel.

    Loads the split, picks ``balanced_subset(labels, n_pairs, subset_seed)``, scales pixels to
    ``[0, 1]``, draws two views per image with :func:`positive_pairs` (keyed by dataset
    index, so an image's views do not depend on n), then optionally normalises with the
    CIFAR-10 channel statistics and average-pools by ``downsample``.

    Args:
      key: JAX PRNG key for the augmentations.
      n_pairs: ``n``, the number of images (``2n`` views).
      split, data_dir, download: see :func:`load_cifar10`.
      settings: :class:`AugmentSettings`.
      normalize: standardise channels with ``CIFAR10_MEAN`` / ``CIFAR10_STD`` (after
        augmentation, so padding and jitter act on [0, 1] pixels).
      downsample: integer average-pooling factor (1, 2, 4, …).
      subset_seed: seed of the image subset; fixed by default so that changing ``key``
        changes only the augmentations.
      dtype: float dtype of the views (float64 needs ``jax_enable_x64``).

    Returns:
      ``views (2n, 32/f, 32/f, 3)``, ``labels (n,)`` int32 and ``indices (n,)`` int64 into
      the split; view ``i`` and ``n + i`` are the pair of image ``indices[i]``.

    Usage (needs the CIFAR-10 files)::

        views, labels, idx = cifar10_pairs(jax.random.key(0), n_pairs=100, downsample=2)
        views.shape   # (200, 16, 16, 3)

    Example (the same steps on synthetic images)::

        >>> import jax, jax.numpy as jnp, numpy as np
        >>> from stepwise_ntk.data import balanced_subset, downsample, normalize, positive_pairs, uint8_to_float
        >>> pixels = np.random.default_rng(0).integers(0, 256, size=(20, 32, 32, 3), dtype=np.uint8)
        >>> labels = np.repeat(np.arange(10, dtype=np.int32), 2)   # a stand-in for the split
        >>> idx = balanced_subset(labels, 4, seed=0)               # n_pairs=4, subset_seed=0
        >>> images = jnp.asarray(uint8_to_float(pixels[idx]))
        >>> views = downsample(normalize(positive_pairs(jax.random.key(0), images, ids=idx)), 2)
        >>> views.shape, views.dtype, len(set(labels[idx].tolist()))
        ((8, 16, 16, 3), dtype('float32'), 4)
    """
    key = check_key(key)
    n_pairs = check_positive_int("n_pairs", n_pairs, hint=" (the number of images)")
    check_type("settings", settings, AugmentSettings)
    check_bool("normalize", normalize)
    dtype = np.dtype(dtype)
    if not np.issubdtype(dtype, np.floating):
        raise ValueError(f"dtype must be a floating dtype, got {dtype}.")
    if dtype == np.float64 and not jax.config.jax_enable_x64:
        raise ValueError(
            "dtype=float64 needs jax.config.update('jax_enable_x64', True) first; "
            "otherwise JAX would silently use float32."
        )
    _check_factor(downsample, *_cifar10.IMAGE_SHAPE[:2])
    data = _cifar10.load_cifar10(split, data_dir, download=download)
    check_int("n_pairs", n_pairs, low=1, high=len(data),
              hint=f" (the {split} split at {data.path} has {len(data)} images)")
    idx = _cifar10.balanced_subset(data.labels, n_pairs, subset_seed)
    images = jnp.asarray(_cifar10.uint8_to_float(data.images[idx], dtype))
    views = positive_pairs(key, images, settings, ids=idx)
    if normalize:
        views = _cifar10.normalize(views)
    views = _downsample(views, downsample)
    return views, np.asarray(data.labels[idx]), idx
