"""stepwise_ntk: the NTK theory of stepwise self-supervised learning, as a JAX library.

Pipeline: data (CIFAR-10 positive pairs) -> kernels (neural-tangents NTK) -> theory /
solver (kernel Barlow Twins gradient flow) -> training (Flax twins) -> predictor.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
