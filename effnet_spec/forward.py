"""What both twins' forward passes share and no framework needs: the input check's wording, which drop-path mask
goes to which block, and the walk over the blocks (each twin only supplies the block modules)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .resolve import ModelSpec

__all__ = ["block_masks", "check_input", "run_blocks"]


def check_input(spec: ModelSpec, ok: bool, layout: str, got: str) -> None:
    """Raise the one input error (`layout` is "NHWC" or "NCHW") unless `ok`.

    Raises:
        ValueError: naming the expected shape for this model and what was given.
    """
    if ok:
        return
    want = "(N, H, W, {c})" if layout == "NHWC" else "(N, {c}, H, W)"
    raise ValueError(
        f"EfficientNet({spec.name}): expected input {want.format(c=spec.in_channels)} floating point, got {got}"
    )


def block_masks(spec: ModelSpec, masks: Sequence[Any] | Mapping[int, Any] | None) -> list[Any]:
    """One entry per block: its drop-path keep-mask, or None (no mask given, or a block without a residual).

    `masks` is None, a sequence with one entry per block, or a dict {block index: mask}.

    Raises:
        ValueError: a sequence of the wrong length.
    """
    n = len(spec.blocks)
    if masks is None:
        return [None] * n
    if not isinstance(masks, Mapping):
        if len(masks) != n:
            raise ValueError(
                f"EfficientNet({spec.name}): drop_path_masks must hold one entry per block ({n}), got {len(masks)}"
            )
        masks = dict(enumerate(masks))
    return [masks.get(b.index) if b.residual else None for b in spec.blocks]


def run_blocks(blocks: Sequence[Callable[[Any, Any], Any]], x: Any, masks: Sequence[Any], keep: set[int]) -> dict:
    """Run `blocks` in order (block i gets `masks[i]`), stopping after the last index in `keep`; returns
    {index: output} for the indices in `keep`."""
    outs = {}
    for i, (block, mask) in enumerate(zip(blocks, masks)):
        x = block(x, mask)
        if i in keep:
            outs[i] = x
        if i == max(keep):
            break
    return outs
