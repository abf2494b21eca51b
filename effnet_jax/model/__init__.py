"""The Flax NNX model: `EfficientNet` walked from the spec (`efficientnet`), its layers, and its build options.

Names load on first use, so `effnet_jax.model.options` is importable without jax (the training config reads it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:  # the public names, each loaded from its submodule on first use (see effnet_jax._lazy)
    from .efficientnet import EfficientNet, FusedMBConv, MBConv  # noqa: F401
    from .options import ModelOptions, remat_compiler_options  # noqa: F401

__getattr__, __dir__, __all__ = lazy_exports(__name__, __file__)
