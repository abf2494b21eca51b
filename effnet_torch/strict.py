"""Strict loading into the PyTorch twin: a state_dict is exactly the model's twin contract, or nothing changes.

Apart from `io` (files) so that the importers and `pretrained` can check tensors without importing the model
class (docs/design.md, "The twin contract").
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from effnet_spec.contract import Got, check_tensors, mismatch_error, tensors

__all__ = ["load_state_dict_checked", "tensor_info"]


def tensor_info(t: torch.Tensor) -> Got:
    """What the contract check needs to know of one tensor: shape, dtype kind, a counter's value, finiteness."""
    integer = not (t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool)
    kind = "float" if t.dtype.is_floating_point else "int" if integer else "other"
    value = int(t) if kind == "int" and t.ndim == 0 else None
    finite = bool(torch.isfinite(t).all()) if kind == "float" else None
    return Got(tuple(t.shape), kind, str(t.dtype).removeprefix("torch."), value, finite)


def load_state_dict_checked(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Load `state_dict` into `model` only if it is exactly the model's contract; otherwise change nothing.

    Every float value must be finite too (NaN or inf is refused).

    Raises:
        CheckpointMismatchError: one message listing sorted missing (-) and unexpected (+) keys, shape or dtype
            mismatches (expected vs got), and values (NaN or inf, a counter beyond int32).
    """
    lines = check_tensors(tensors(model.spec), {k: tensor_info(v) for k, v in state_dict.items()})
    if lines:
        raise mismatch_error(f"checkpoint does not match EfficientNet({model.spec.name})", lines)
    model.load_state_dict(dict(state_dict), strict=True)
