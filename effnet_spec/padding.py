"""Padding amounts and output sizes for the two padding conventions, as plain arithmetic."""

from __future__ import annotations

__all__ = ["same_pad", "symmetric_pad", "pad_amounts", "out_size"]


def same_pad(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TF 'SAME' padding (before, after) along one axis: output ceil(size/stride), extra pixel after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def symmetric_pad(kernel: int, dilation: int = 1) -> tuple[int, int]:
    """PyTorch-style padding ((k-1)//2 on both sides), independent of the input size."""
    p = (kernel - 1) * dilation // 2
    return p, p


def pad_amounts(padding: str, size: int, kernel: int, stride: int) -> tuple[int, int]:
    if padding == "tf_same":
        return same_pad(size, kernel, stride)
    if padding == "symmetric":
        return symmetric_pad(kernel)
    raise ValueError(f"unknown padding {padding!r}; expected 'symmetric' or 'tf_same'")


def out_size(padding: str, size: int, kernel: int, stride: int) -> int:
    before, after = pad_amounts(padding, size, kernel, stride)
    return (size + before + after - kernel) // stride + 1
