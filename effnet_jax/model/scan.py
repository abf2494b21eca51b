"""Running a stage's repeated blocks as one `jax.lax.scan` (`ModelOptions(scan=True)`): XLA then compiles one
block body per stage instead of one per block, which is what bounds the compile time of the big variants. Only
under a trace (`jit`, `grad`): an eager call runs the blocks one by one, the same function without a scan per call.

Blocks 1..n-1 of a stage share every shape; only their index and drop-path rate differ. The model keeps one module
per block (the twin contract's tree, so checkpoints, optimizer state, EMA and freezing are the same with scan on or
off); the stacking happens inside the traced forward: each run's parameters and state are stacked on a new leading
axis, the block is scanned over them with the drop-path keep probability as scanned data, and the updated BN
statistics and RNG counters are written back to each block (docs/design.md, "Training at scale").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from .layers import BatchNorm, _RandomMask

__all__ = ["scan_blocks", "scan_runs"]


def _mode(block: nnx.Module) -> tuple[bool, ...]:
    """The block's static train/eval flags, in graph order: a scan body has one, so a run must share them."""
    flags = []
    for _, node in nnx.iter_graph(block):
        if isinstance(node, BatchNorm):
            flags.append(node.use_running_average)
        elif isinstance(node, _RandomMask):
            flags.append(node.deterministic)
    return tuple(flags)


def _mask_kind(mask: Any) -> object:
    """None, the mask's shape, or (not an array) a key equal to nothing: such a block runs alone, so its own
    DropPath rejects the mask with the usual message instead of a stacking error."""
    if mask is None:
        return None
    return tuple(mask.shape) if hasattr(mask, "shape") else object()


def _run_key(block: nnx.Module, mask: Any) -> tuple:
    """Blocks with equal keys may share one scan body: same shapes, modes, mask kind and whether they drop."""
    b = block.spec
    return (replace(b, index=0, drop_path=0.0), _mode(block), _mask_kind(mask), b.drop_path > 0.0)


def scan_runs(blocks: Sequence[nnx.Module], masks: Sequence[Any], keep: set[int]) -> list[range]:
    """Consecutive block ranges, in order, covering blocks 0..max(keep): each range of two or more is scanned.

    A range ends where the next block differs (`_run_key`) and at every index in `keep` (its output is tapped).
    """
    last = max(keep)
    runs, start = [], 0
    for i in range(1, last + 1):
        if i - 1 in keep or _run_key(blocks[i], masks[i]) != _run_key(blocks[start], masks[start]):
            runs.append(range(start, i))
            start = i
    runs.append(range(start, last + 1))
    return runs


def _stack(trees: list) -> Any:
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def _scan(run: list[nnx.Module], x: jax.Array, masks: list[Any]) -> jax.Array:
    """`run`'s blocks applied in order to `x` as one scan; their BN statistics and RNG counters are updated."""
    splits = [nnx.split(b, nnx.Param, ...) for b in run]
    graphdef = splits[0][0]  # every block of a run has this structure; rates and flags come as data or are equal
    params = _stack([p for _, p, _ in splits])
    rest = _stack([r for _, _, r in splits])
    # 1 - rate in Python floats, then the default float dtype, as the unscanned DropPath's arithmetic does (float32,
    # or float64 under jax_enable_x64), so both draw the same masks.
    keeps = jnp.asarray([1.0 - b.spec.drop_path for b in run])
    stacked_masks = None if masks[0] is None else jnp.stack([jnp.asarray(m) for m in masks])
    drops = run[0].spec.drop_path > 0.0

    def body(h, xs):
        p, r, keep, mask = xs
        block = nnx.merge(graphdef, p, r)
        h = block(h, mask, keep=keep if drops else None)
        return h, nnx.state(block, nnx.Not(nnx.Param))

    x, rest = jax.lax.scan(body, x, (params, rest, keeps, stacked_masks))
    for i, b in enumerate(run):
        nnx.update(b, jax.tree.map(lambda a, i=i: a[i], rest))
    return x


def scan_blocks(blocks: Sequence[nnx.Module], x: jax.Array, masks: Sequence[Any], keep: set[int]) -> dict:
    """`effnet_spec.forward.run_blocks` with each run of equal blocks scanned: same outputs, same state updates."""
    outs = {}
    for run in scan_runs(blocks, masks, keep):
        if len(run) == 1:
            x = blocks[run.start](x, masks[run.start])
        else:
            x = _scan([blocks[i] for i in run], x, [masks[i] for i in run])
        if run[-1] in keep:
            outs[run[-1]] = x
    return outs
