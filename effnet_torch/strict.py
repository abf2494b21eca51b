"""Strict loading into the PyTorch twin: a state_dict is exactly the model's twin contract, or nothing changes.

Apart from `io` (files) so that the importers and `pretrained` can check tensors without importing the model
class (docs/design.md, "The twin contract").
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from effnet_spec.contract import Got, check_tensors, float_got, mismatch_error, tensors

__all__ = ["load_state_dict_checked", "tensor_info"]


def tensor_info(t: torch.Tensor) -> Got:
    """What the contract check needs to know of one tensor: shape, dtype kind, a counter's value, a float's range."""
    integer = not (t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool)
    kind = "float" if t.dtype.is_floating_point else "int" if integer else "other"
    dtype = str(t.dtype).removeprefix("torch.")
    if kind == "float":
        if not t.numel():
            return float_got(tuple(t.shape), dtype, None, None)
        low, high = torch.aminmax(t.detach())
        return float_got(tuple(t.shape), dtype, float(low), float(high))
    value = int(t) if kind == "int" and t.ndim == 0 else None
    return Got(tuple(t.shape), kind, dtype, value)


def load_state_dict_checked(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Load `state_dict` into `model` only if it is exactly the model's contract; otherwise change nothing.

    Every float value must be finite and within `MAX_WEIGHT`, every BN running variance >= 0.

    Raises:
        CheckpointMismatchError: one message listing sorted missing (-) and unexpected (+) keys, shape or dtype
            mismatches (expected vs got), and values (NaN or inf, a counter beyond int32).
    """
    lines = check_tensors(tensors(model.spec), {k: tensor_info(v) for k, v in state_dict.items()})
    if lines:
        raise mismatch_error(f"checkpoint does not match EfficientNet({model.spec.name})", lines)
    model.load_state_dict(dict(state_dict), strict=True)
