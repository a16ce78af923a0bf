"""Image statistics against hand-computed values; mode analysis finds the statistic a mode follows."""

import colorsys

import numpy as np
import pytest

from stepwise_ntk.data import IMAGE_STATISTICS, image_statistics
from stepwise_ntk.predictor import circular_linear_correlation, correlation_ratio, mode_statistics


def _flat(rgb, size=4):
    return np.broadcast_to(np.asarray(rgb, float), (1, size, size, 3)).copy()


def test_statistics_of_flat_colours_and_grey():
    red, green, blue = (image_statistics(_flat(c))["hue"][0] for c in ([1, 0, 0], [0, 1, 0], [0, 0, 1]))
    assert (red, green, blue) == pytest.approx((0.0, 2 * np.pi / 3, -2 * np.pi / 3))
    grey = image_statistics(_flat([0.4, 0.4, 0.4]))
    assert grey["brightness"][0] == pytest.approx(0.4)
    assert grey["saturation"][0] == 0.0 and grey["contrast"][0] == pytest.approx(0.0, abs=1e-15)
    s = image_statistics(_flat([0.2, 0.4, 0.8]))
    assert s["saturation"][0] == pytest.approx(0.75)  # (max − min) / max
    assert (s["red"][0], s["green"][0], s["blue"][0]) == pytest.approx((0.2, 0.4, 0.8))
    # uint8 images are read as /255.
    assert image_statistics(np.full((1, 2, 2, 3), 255, np.uint8))["brightness"][0] == pytest.approx(1.0)
    assert set(image_statistics(_flat([0, 0, 0]))) == set(IMAGE_STATISTICS)


def test_spatial_statistics_of_patterns():
    x, y = np.meshgrid(np.arange(16), np.arange(16))
    checker = ((x + y) % 2).astype(float)
    s = image_statistics(np.repeat(checker[None, ..., None], 3, axis=-1))
    assert s["spatial_frequency"][0] == pytest.approx(np.sqrt(0.5))  # Nyquist in both directions
    assert s["edge_energy"][0] == pytest.approx(2.0)  # every neighbour differs by 1, both directions
    assert s["lr_asymmetry"][0] == pytest.approx(1.0)  # an even width mirrors black onto white
    wave = 0.5 + 0.4 * np.cos(2 * np.pi * x / 8)  # period 8 pixels: 1/8 cycles per pixel
    assert image_statistics(np.repeat(wave[None, ..., None], 3, -1))["spatial_frequency"][0] == pytest.approx(1 / 8)
    ramp = 0.2 + 0.04 * x  # brighter to the right
    s = image_statistics(np.repeat(ramp[None, ..., None], 3, -1))
    assert s["lr_gradient"][0] == pytest.approx(-0.04 * 8)  # left half minus right half
    assert s["tb_gradient"][0] == pytest.approx(0.0, abs=1e-12)


def test_circular_correlation_is_rotation_invariant_and_eta2_hand_value():
    rng = np.random.default_rng(0)
    theta = rng.uniform(-np.pi, np.pi, 400)
    g = np.sin(theta + 0.4) + 0.5 * rng.normal(size=400)
    R = circular_linear_correlation(g, theta)
    assert circular_linear_correlation(g, (theta + 2.0 + np.pi) % (2 * np.pi) - np.pi) == pytest.approx(R)
    # Independent route: R² of the least-squares regression of g on (1, cos θ, sin θ).
    A = np.c_[np.ones(400), np.cos(theta), np.sin(theta)]
    res = g - A @ np.linalg.lstsq(A, g, rcond=None)[0]
    assert R**2 == pytest.approx(1 - res @ res / np.sum((g - g.mean()) ** 2), rel=1e-10)
    # η² by hand: class means 1 and 3 around 2, total variance (1+1+1+1)/4 + within 0.
    assert correlation_ratio(np.array([1.0, 1.0, 3.0, 3.0]), np.array([0, 0, 1, 1])) == pytest.approx(1.0)
    assert correlation_ratio(np.array([0.0, 2.0, 1.0, 1.0]), np.array([0, 0, 1, 1])) == pytest.approx(0.0)


def _synthetic_images(P=300, seed=0):
    """Images of one colour each (HSV hue and value random, saturation 0.6) plus a left-right ramp, all independent."""
    rng = np.random.default_rng(seed)
    hue, value, ramp = rng.uniform(0, 1, P), rng.uniform(0.4, 0.9, P), rng.uniform(-0.08, 0.08, P)
    x = np.linspace(-1, 1, 8)
    images = np.empty((P, 8, 8, 3))
    for i in range(P):
        images[i] = np.array(colorsys.hsv_to_rgb(hue[i], 0.6, value[i])) + ramp[i] * x[None, :, None]
    return np.clip(images, 0, 1), 2 * np.pi * hue, value, ramp


def test_mode_analysis_finds_the_statistic_each_synthetic_mode_follows():
    images, hue, value, ramp = _synthetic_images()
    rng = np.random.default_rng(1)
    modes = np.c_[np.cos(hue - 1.0), value, -ramp]
    modes = modes / modes.std(0) + 0.1 * rng.normal(size=modes.shape)
    labels = (hue > np.pi).astype(int)  # classes made from the hue: mode 1 explains them, mode 2 not
    ms = mode_statistics(modes, image_statistics(images), labels=labels)
    assert ms.strongest == ("hue", "brightness", "lr_gradient")
    assert ms.strength[0, ms.names.index("hue")] > 0.95
    # The luminance also depends on the hue (yellow is brighter than blue), hence < 1.
    assert ms.correlation[1, ms.names.index("brightness")] > 0.6
    assert ms.correlation[2, ms.names.index("lr_gradient")] > 0.9  # −ramp: brighter on the left
    assert ms.eta2[0] > 0.3 and ms.eta2[1] < 0.05
    rows = ms.table()
    assert rows[0]["strongest"] == "hue" and rows[0]["correlation"] is None  # circular: no sign


def test_top_linear_mode_of_images_differing_in_brightness_is_brightness():
    """End to end: the top mode of the linear kernel (identical views) on images that differ only
    by a brightness offset and by noise follows the brightness, not the colour or the texture."""
    from stepwise_ntk.theory import contrastive_eigensystem, mode_functions

    rng = np.random.default_rng(2)
    P = 120
    base = rng.uniform(0.3, 0.6, (8, 8, 3))
    images = np.clip(base + rng.uniform(-0.2, 0.2, (P, 1, 1, 1)) + 0.02 * rng.normal(size=(P, 8, 8, 3)), 0, 1)
    X = (images - images.mean(0)).reshape(P, -1)
    views = np.concatenate([X, X])
    es = contrastive_eigensystem(views @ views.T, P)
    top = np.asarray(mode_functions(es, 1))[:P]
    ms = mode_statistics(top, image_statistics(images))
    assert ms.strength[0, ms.names.index("brightness")] > 0.99
    assert ms.strongest[0] in ("brightness", "red", "green", "blue")  # a uniform offset moves every channel alike
