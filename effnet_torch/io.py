"""Checkpoint I/O for the PyTorch twin: the interchange format (docs/design.md, "Weights").

A checkpoint is the `EfficientNet` state_dict (torch names, OIHW layouts: `effnet_spec.contract`) stored as
safetensors — float32 tensors plus int64 `num_batches_tracked` — with `effnet_spec.make_header` as metadata.
Nothing is unpickled, so an untrusted file cannot run code; the JAX twin reads the same files with numpy +
safetensors.
"""

from __future__ import annotations

import os

import torch
from safetensors import safe_open
from safetensors.torch import save as st_save

from effnet_spec import Preprocessing, make_header, read_header
from effnet_spec.atomic import write_atomic
from effnet_spec.contract import CheckpointMismatchError, header_mismatch

from .model import EfficientNet
from .strict import load_state_dict_checked, tensor_info

__all__ = [
    "CheckpointMismatchError",
    "save_checkpoint",
    "load_checkpoint",
    "load_state_dict_checked",
    "tensor_info",
]


def _tensors_for_disk(model: EfficientNet) -> dict[str, torch.Tensor]:
    """The state_dict as contiguous CPU tensors: floats as float32, integer counters as int64."""
    out = {}
    for k, v in model.state_dict().items():
        v = v.detach().to("cpu")
        v = v.to(torch.float32) if v.dtype.is_floating_point else v.to(torch.int64)
        out[k] = v.contiguous()
    return out


def save_checkpoint(model: EfficientNet, path: str | os.PathLike, preprocessing: Preprocessing | None = None) -> None:
    """Save `model` as an effnet checkpoint (safetensors + JSON header), atomically.

    Args:
        preprocessing: stored in the header; defaults to `model.preprocessing`, then the family's default.
    """
    if not isinstance(model, EfficientNet):
        raise TypeError(f"save_checkpoint expects an effnet_torch.EfficientNet, got {type(model).__name__}")
    meta = make_header(model.spec, preprocessing or model.preprocessing)
    write_atomic(path, st_save(_tensors_for_disk(model), metadata=meta))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> EfficientNet:
    """Rebuild the model named by the checkpoint header and load its weights (strict, never partial).

    The returned model is in eval mode; its `preprocessing` attribute holds the header's preprocessing.

    Raises:
        ValueError: missing or malformed header; CheckpointMismatchError if the tensors do not fit the spec.
    """
    with safe_open(os.fspath(path), framework="pt", device=str(map_location)) as f:
        spec, pre = read_header(f.metadata())
        state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a Mapping)
    error = header_mismatch(os.fspath(path), spec, {k: tensor_info(v) for k, v in state.items()})
    if error:  # named by the file, with the variant its tensors are when the header names another
        raise error
    model = EfficientNet(spec)
    load_state_dict_checked(model, state)
    model.preprocessing = pre
    return model.to(map_location).eval()
