"""effnet_jax: EfficientNet in Flax NNX, built from `effnet_spec`.

Importing this package is cheap: it never imports torch, grain or orbax (conversion imports torch lazily).
"""

from .model import EfficientNet, MBConv

__all__ = ["EfficientNet", "MBConv"]
