"""effnet_jax: EfficientNet in Flax NNX, built from `effnet_spec`.

Importing this package is cheap: it never imports torch, grain or orbax (conversion imports torch lazily).
"""

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
