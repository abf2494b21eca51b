"""Weights in and out of the NNX model: the interchange state_dict (`state`), checkpoint files (`files`), and live
conversion to and from the PyTorch twin (`twins`). Other libraries' layouts are `effnet_torch.importers`."""

from effnet_spec.contract import CheckpointMismatchError

from .files import load_checkpoint, read_checkpoint, save_checkpoint
from .pretrained import Pretrained, build_adapted, from_pretrained, read_pretrained
from .state import KeyEntry, key_map, load_state_dict, model_from_state_dict, state_dict_from_model
from .twins import from_torch, to_torch

__all__ = [
    "CheckpointMismatchError",
    "KeyEntry",
    "from_torch",
    "key_map",
    "load_checkpoint",
    "load_state_dict",
    "Pretrained",
    "build_adapted",
    "from_pretrained",
    "read_checkpoint",
    "read_pretrained",
    "model_from_state_dict",
    "save_checkpoint",
    "state_dict_from_model",
    "to_torch",
]
