"""effnet_jax: EfficientNet in Flax NNX, built from `effnet_spec`.

Importing this package is cheap: its names load on first use (PEP 562), so `effnet summary` and
`effnet_jax.host_memory` run without importing jax, and torch, grain and orbax load only where needed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# public name -> submodule that defines it
_EXPORTS = {
    "CheckpointMismatchError": "convert",
    "from_torch": "convert",
    "key_map": "convert",
    "load_checkpoint": "convert",
    "load_state_dict": "convert",
    "model_from_state_dict": "convert",
    "save_checkpoint": "convert",
    "state_dict_from_model": "convert",
    "to_torch": "convert",
    "EfficientNet": "model",
    "MBConv": "model",
}
__all__ = [
    "CheckpointMismatchError",
    "EfficientNet",
    "MBConv",
    "from_torch",
    "key_map",
    "load_checkpoint",
    "load_state_dict",
    "model_from_state_dict",
    "save_checkpoint",
    "state_dict_from_model",
    "to_torch",
]

if TYPE_CHECKING:
    from .convert import (
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
    from .model import EfficientNet, MBConv


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'effnet_jax' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this hook
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
