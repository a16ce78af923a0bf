"""Strict JAX settings for the whole suite.

x64 is on so float64 references are real float64; dtype promotion is strict so an
accidental float32/float64 mix is an error instead of a silent upcast. Tests that
need float32 ask for it explicitly.
"""

from pathlib import Path

import jax
import pytest

import stepwise_ntk  # noqa: F401  (before any JAX computation: it sets the XLA CPU flags, see _xla_flags)

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")

SHARED_CIFAR = Path(__file__).resolve().parents[1].parent / "shared" / "cifar10"


@pytest.fixture(scope="session")
def cifar_dir() -> Path:
    """The offline CIFAR-10 subset beside the checkout (../shared/cifar10)."""
    if not (SHARED_CIFAR / "cifar-10-batches-py").is_dir():
        pytest.skip(f"CIFAR-10 subset not found at {SHARED_CIFAR}")
    return SHARED_CIFAR
