"""Parameter and multiply-add counts computed from a `ModelSpec` alone.

Parameters are trainable ones (conv/linear weights and biases, BN scale and shift); BN running
statistics are buffers. Multiply-adds count convolutions, SE and the classifier, as the paper does;
BN, activations and elementwise work are left out.
"""

from __future__ import annotations

from dataclasses import dataclass

from .padding import out_size
from .resolve import BlockSpec, ModelSpec

__all__ = ["count_params", "count_macs", "block_resolutions", "BlockCost", "block_costs", "input_hw"]


def _size(spec: ModelSpec, hw: tuple[int, int], kernel: int, stride: int) -> tuple[int, int]:
    return tuple(out_size(spec.conv.padding, n, kernel, stride) for n in hw)  # type: ignore[return-value]


@dataclass(frozen=True)
class BlockCost:
    params: int
    macs: int
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]


def _fused_out(b: BlockSpec) -> int:
    """Output channels of a fused block's kxk conv: the expanded width, or the block's own when it does not expand."""
    return b.mid_ch if b.has_expand else b.out_ch


def _block_params(b: BlockSpec) -> int:
    """Convs (SE ones with bias) plus BN scale and shift; independent of the input size."""
    if b.fused:
        params = b.in_ch * _fused_out(b) * b.kernel**2 + 2 * _fused_out(b)
        return params + (b.mid_ch * b.out_ch + 2 * b.out_ch if b.has_expand else 0)
    params = b.in_ch * b.mid_ch + 2 * b.mid_ch if b.has_expand else 0
    params += b.mid_ch * b.kernel**2 + 2 * b.mid_ch
    if b.se_ch:
        params += 2 * b.mid_ch * b.se_ch + b.se_ch + b.mid_ch
    return params + b.mid_ch * b.out_ch + 2 * b.out_ch


def _block_cost(b: BlockSpec, in_hw: tuple[int, int], spec: ModelSpec) -> BlockCost:
    out_hw = _size(spec, in_hw, b.kernel, b.stride)
    in_px, out_px = in_hw[0] * in_hw[1], out_hw[0] * out_hw[1]
    if b.fused:  # the kxk conv runs at the output size (it carries the stride), as does the project
        macs = out_px * b.in_ch * _fused_out(b) * b.kernel**2
        macs += out_px * b.mid_ch * b.out_ch if b.has_expand else 0
        return BlockCost(_block_params(b), macs, in_hw, out_hw)
    macs = in_px * b.in_ch * b.mid_ch if b.has_expand else 0
    macs += out_px * b.mid_ch * b.kernel**2
    if b.se_ch:
        macs += 2 * b.mid_ch * b.se_ch
    macs += out_px * b.mid_ch * b.out_ch
    return BlockCost(_block_params(b), macs, in_hw, out_hw)


def block_costs(spec: ModelSpec, size: int | tuple[int, int] | None = None) -> list[BlockCost]:
    hw = input_hw(spec, size)
    hw = _size(spec, hw, spec.stem_kernel, spec.stem_stride)  # after the stem
    costs = []
    for b in spec.blocks:
        c = _block_cost(b, hw, spec)
        costs.append(c)
        hw = c.out_hw
    return costs


def block_resolutions(spec: ModelSpec, size: int | tuple[int, int] | None = None) -> list[tuple[int, int]]:
    """Output (H, W) of every block for an input of `size` (default: the variant's native resolution)."""
    return [c.out_hw for c in block_costs(spec, size)]


def input_hw(spec: ModelSpec, size: int | tuple[int, int] | None = None) -> tuple[int, int]:
    """(H, W) of an input given as an int, a pair, or None for the variant's native resolution.

    Raises:
        ValueError: not an int or a pair of positive ints.
    """
    if size is None:
        size = spec.resolution
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if len(hw) != 2 or any(not isinstance(n, int) or n < 1 for n in hw):
        raise ValueError(f"size must be an int or (H, W) of positive ints, got {size!r}")
    return hw  # type: ignore[return-value]


def _stem_head_classifier_params(spec: ModelSpec) -> int:
    last = spec.blocks[-1].out_ch
    p = spec.in_channels * spec.stem_ch * spec.stem_kernel**2 + 2 * spec.stem_ch
    p += last * spec.head_ch + 2 * spec.head_ch
    if spec.num_classes:
        p += spec.head_ch * spec.num_classes + spec.num_classes
    return p


def count_params(spec: ModelSpec) -> int:
    return _stem_head_classifier_params(spec) + sum(_block_params(b) for b in spec.blocks)


def count_macs(spec: ModelSpec, size: int | tuple[int, int] | None = None) -> int:
    """Multiply-adds of one forward pass on one image of `size` (default: native resolution)."""
    hw = input_hw(spec, size)
    stem_hw = _size(spec, hw, spec.stem_kernel, spec.stem_stride)
    costs = block_costs(spec, hw)
    macs = stem_hw[0] * stem_hw[1] * spec.in_channels * spec.stem_ch * spec.stem_kernel**2
    macs += sum(c.macs for c in costs)
    final_px = costs[-1].out_hw[0] * costs[-1].out_hw[1]
    macs += final_px * spec.blocks[-1].out_ch * spec.head_ch
    macs += spec.head_ch * spec.num_classes
    return macs
