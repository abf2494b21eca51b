"""effnet_torch: the PyTorch twin of the EfficientNet library, built from `effnet_spec` (NCHW)."""

from .io import CheckpointMismatchError, load_checkpoint, load_state_dict_checked, save_checkpoint
from .layers import BatchNorm, ConvBN, DropPath, SqueezeExcite
from .model import EfficientNet, FusedMBConv, MBConv

__all__ = [
    "BatchNorm",
    "CheckpointMismatchError",
    "ConvBN",
    "DropPath",
    "EfficientNet",
    "FusedMBConv",
    "MBConv",
    "SqueezeExcite",
    "load_checkpoint",
    "load_state_dict_checked",
    "save_checkpoint",
]
