"""Data: CIFAR-10 files and subsets, augmented positive pairs, the pairing convention.

The 2n views of n images are stacked as ``X = [x_1 … x_n, x'_1 … x'_n]`` (row ``i`` and row
``n + i`` are the two views of image ``i``); :func:`swap_pairs` applies the pair swap ``Z``
and :func:`pair_gram` forms ``Fᵀ Z G`` without building it (see ``docs/theory.md``).

Example:
    >>> import jax.numpy as jnp
    >>> from stepwise_ntk.data import swap_pairs
    >>> swap_pairs(jnp.arange(4.0).reshape(4, 1)).ravel().tolist()
    [2.0, 3.0, 0.0, 1.0]
"""

from stepwise_ntk.data._augment import (
    AugmentSettings,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    augment_image,
    cifar10_pairs,
    crop_with_padding,
    downsample,
    grayscale,
    hflip,
    positive_pairs,
    resized_crop,
    sample_resized_crop_box,
)
from stepwise_ntk.data._cifar10 import (
    CIFAR10_FOLDER,
    CIFAR10_MD5,
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR10_URL,
    DATA_ENV_VAR,
    CIFAR10Dataset,
    CIFAR10Error,
    balanced_subset,
    channel_stats,
    default_cache_dir,
    download_cifar10,
    load_cifar10,
    normalize,
    resolve_cifar10_dir,
    uint8_to_float,
)
from stepwise_ntk.data._image_stats import CIRCULAR_STATISTICS, IMAGE_STATISTICS, image_statistics
from stepwise_ntk.data._pairing import pair_gram, swap_pairs

__all__ = [
    # CIFAR-10 files and subsets
    "CIFAR10_FOLDER",
    "CIFAR10_MD5",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR10_URL",
    "DATA_ENV_VAR",
    "CIFAR10Dataset",
    "CIFAR10Error",
    "balanced_subset",
    "channel_stats",
    "default_cache_dir",
    "download_cifar10",
    "load_cifar10",
    "normalize",
    "resolve_cifar10_dir",
    "uint8_to_float",
    # augmentations and positive pairs
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
    # interpretable statistics of clean images
    "CIRCULAR_STATISTICS",
    "IMAGE_STATISTICS",
    "image_statistics",
    # pairing convention
    "pair_gram",
    "swap_pairs",
]
