"""Interpretable statistics of clean images, to read what a learned mode encodes.

One number per image for each statistic of :data:`IMAGE_STATISTICS`, from RGB images in
``[0, 1]`` (uint8 images are divided by 255). With luminance ``Y = 0.299 R + 0.587 G +
0.114 B`` (ITU-R BT.601) and HSV chroma ``c = max − min`` of a pixel's channels:

* ``hue``: the circular mean hue, ``arg Σ_pixels c · e^{i h}`` (``h`` the HSV hue angle),
  in ``(−π, π]``: an angle, so it must be compared with circular statistics
  (:data:`CIRCULAR_STATISTICS`); weighting by chroma lets grey pixels, whose hue is
  undefined, count for nothing;
* ``saturation``: mean HSV saturation ``c / max``;
* ``brightness``: mean luminance; ``contrast``: its standard deviation (RMS contrast);
* ``red``, ``green``, ``blue``: mean of each channel;
* ``edge_energy``: mean squared finite-difference gradient of ``Y`` (horizontal and vertical);
* ``spatial_frequency``: the power-weighted mean radial frequency of ``Y`` (cycles per pixel,
  DC left out): high for fine texture, low for smooth images;
* ``lr_asymmetry``: mean ``|Y − Y_mirrored|`` (0 for a left–right symmetric image; a flip
  leaves it unchanged); ``lr_gradient``: mean ``Y`` of the left half minus the right half
  (a flip changes its sign); ``tb_gradient``: top half minus bottom half (e.g. sky over
  ground).

Example:
    >>> import numpy as np
    >>> red = np.zeros((1, 4, 4, 3)); red[..., 0] = 1.0
    >>> s = image_statistics(red)
    >>> round(float(s["hue"][0]), 6), round(float(s["saturation"][0]), 6), round(float(s["brightness"][0]), 3)
    (0.0, 1.0, 0.299)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from stepwise_ntk._checks import check_array

__all__ = ["CIRCULAR_STATISTICS", "IMAGE_STATISTICS", "image_statistics"]

IMAGE_STATISTICS = (
    "hue", "saturation", "brightness", "contrast", "red", "green", "blue",
    "edge_energy", "spatial_frequency", "lr_asymmetry", "lr_gradient", "tb_gradient",
)
CIRCULAR_STATISTICS = frozenset({"hue"})

_LUMA = np.array([0.299, 0.587, 0.114])


def _as_unit_rgb(images: Any) -> np.ndarray:
    x = check_array("images", images, ndim=4, min_rows=1, dtype_kind="fiu",
                    what="RGB images (N, H, W, 3)", hint="pass clean images (uint8 or floats in [0, 1]).")
    if x.shape[-1] != 3:
        raise ValueError(f"images must have 3 colour channels on the last axis (N, H, W, 3), got shape {x.shape}.")
    if np.asarray(x).dtype == np.uint8:
        return np.asarray(x, np.float64) / 255.0
    x = np.asarray(x, np.float64)
    if x.min() < -1e-6 or x.max() > 1 + 1e-6:
        raise ValueError(
            f"float images must be in [0, 1] (unnormalised), got values in [{x.min():.3g}, {x.max():.3g}]; "
            f"pass the uint8 images (dataset.images) or undo the normalisation."
        )
    return np.clip(x, 0.0, 1.0)


def _hue_angle(x: np.ndarray, mx: np.ndarray, chroma: np.ndarray) -> np.ndarray:
    """HSV hue in radians, ``[0, 2π)``; 0 where the chroma is 0 (weighted out anyway)."""
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    safe = np.where(chroma > 0, chroma, 1.0)
    h = np.where(mx == r, ((g - b) / safe) % 6.0, np.where(mx == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
    return np.where(chroma > 0, h * (np.pi / 3.0), 0.0)


def _spatial_frequency(y: np.ndarray) -> np.ndarray:
    H, W = y.shape[1:]
    power = np.square(np.abs(np.fft.fft2(y - y.mean(axis=(1, 2), keepdims=True))))
    fy, fx = np.fft.fftfreq(H), np.fft.fftfreq(W)
    radius = np.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)
    total = power.sum(axis=(1, 2))
    return np.where(total > 0, (power * radius).sum(axis=(1, 2)) / np.where(total > 0, total, 1.0), 0.0)


def image_statistics(images: Any) -> dict[str, np.ndarray]:
    """The statistics of :data:`IMAGE_STATISTICS` for each image, each ``(N,)`` float64.

    Args:
      images: ``(N, H, W, 3)`` RGB images, uint8 or floats in ``[0, 1]`` (clean, not
        channel-normalised).

    Returns:
      dict name -> ``(N,)``; ``hue`` is an angle in ``(−π, π]`` (see the module docstring).
    """
    x = _as_unit_rgb(images)
    mx, mn = x.max(axis=-1), x.min(axis=-1)
    chroma = mx - mn
    h = _hue_angle(x, mx, chroma)
    hue = np.angle(np.sum(chroma * np.exp(1j * h), axis=(1, 2)))
    sat = np.where(mx > 0, chroma / np.where(mx > 0, mx, 1.0), 0.0)
    y = x @ _LUMA
    gx, gy = np.diff(y, axis=2), np.diff(y, axis=1)
    half_w, half_h = y.shape[2] // 2, y.shape[1] // 2
    return {
        "hue": hue,
        "saturation": sat.mean(axis=(1, 2)),
        "brightness": y.mean(axis=(1, 2)),
        "contrast": y.std(axis=(1, 2)),
        "red": x[..., 0].mean(axis=(1, 2)),
        "green": x[..., 1].mean(axis=(1, 2)),
        "blue": x[..., 2].mean(axis=(1, 2)),
        "edge_energy": np.square(gx).mean(axis=(1, 2)) + np.square(gy).mean(axis=(1, 2)),
        "spatial_frequency": _spatial_frequency(y),
        "lr_asymmetry": np.abs(y - y[:, :, ::-1]).mean(axis=(1, 2)),
        "lr_gradient": y[:, :, :half_w].mean(axis=(1, 2)) - y[:, :, -half_w:].mean(axis=(1, 2)),
        "tb_gradient": y[:, :half_h].mean(axis=(1, 2)) - y[:, -half_h:].mean(axis=(1, 2)),
    }
