"""The Flax NNX model: `EfficientNet` walked from the spec (`efficientnet`), its layers, and its build options."""

from .efficientnet import EfficientNet, MBConv
from .options import ModelOptions

__all__ = ["EfficientNet", "MBConv", "ModelOptions"]
