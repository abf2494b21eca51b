"""The Flax NNX model: `EfficientNet` walked from the spec (`efficientnet`), its layers, and its build options.

Names load on first use, so `effnet_jax.model.options` is importable without jax (the training config reads it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_EXPORTS = {
    "EfficientNet": "efficientnet",
    "MBConv": "efficientnet",
    "ModelOptions": "options",
    "remat_compiler_options": "options",
}
__all__ = ["EfficientNet", "MBConv", "ModelOptions", "remat_compiler_options"]

if TYPE_CHECKING:
    from .efficientnet import EfficientNet, MBConv
    from .options import ModelOptions, remat_compiler_options


__getattr__ = lazy_exports(__name__, _EXPORTS)
