"""The Flax NNX model: `EfficientNet` walked from the spec (`efficientnet`), its layers, and its build options.

Names load on first use, so `effnet_jax.model.options` is importable without jax (the training config reads it).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {"EfficientNet": "efficientnet", "MBConv": "efficientnet", "ModelOptions": "options"}
__all__ = ["EfficientNet", "MBConv", "ModelOptions"]

if TYPE_CHECKING:
    from .efficientnet import EfficientNet, MBConv
    from .options import ModelOptions


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'effnet_jax.model' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value
