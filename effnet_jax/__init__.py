"""effnet_jax: EfficientNet in Flax NNX, built from `effnet_spec`.

Importing this package is cheap: its names load on first use (PEP 562), so `effnet summary` and
`effnet_jax.ops.host_memory` run without importing jax, and torch, grain and orbax load only where needed.
Where each concern lives: docs/design.md, "Layout".
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_exports

# public name -> submodule that defines it
_EXPORTS = {
    "CheckpointMismatchError": "weights",
    "from_torch": "weights",
    "key_map": "weights",
    "load_checkpoint": "weights",
    "load_state_dict": "weights",
    "model_from_state_dict": "weights",
    "save_checkpoint": "weights",
    "state_dict_from_model": "weights",
    "to_torch": "weights",
    "EfficientNet": "model",
    "MBConv": "model",
    "ModelOptions": "model",
    "remat_compiler_options": "model",
}
__all__ = [
    "CheckpointMismatchError",
    "EfficientNet",
    "MBConv",
    "ModelOptions",
    "from_torch",
    "key_map",
    "load_checkpoint",
    "load_state_dict",
    "model_from_state_dict",
    "remat_compiler_options",
    "save_checkpoint",
    "state_dict_from_model",
    "to_torch",
]

if TYPE_CHECKING:
    from .model import EfficientNet, MBConv, ModelOptions, remat_compiler_options
    from .weights import (
        CheckpointMismatchError,
        from_torch,
        key_map,
        load_checkpoint,
        load_state_dict,
        model_from_state_dict,
        save_checkpoint,
        state_dict_from_model,
        to_torch,
    )


__getattr__ = lazy_exports(__name__, _EXPORTS)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
