"""The Flax NNX model: `EfficientNet` walked from the spec (`efficientnet`), its layers, and its build options.

Names load on first use, so `effnet_jax.model.options` is importable without jax (the training config reads it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_EXPORTS = {"EfficientNet": "efficientnet", "MBConv": "efficientnet", "ModelOptions": "options"}
__all__ = ["EfficientNet", "MBConv", "ModelOptions"]

if TYPE_CHECKING:
    from .efficientnet import EfficientNet, MBConv
    from .options import ModelOptions


__getattr__ = lazy_exports(__name__, _EXPORTS)
