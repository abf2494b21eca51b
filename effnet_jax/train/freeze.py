"""`freeze=`: which parts of a fine-tuned model stay exactly as the init weights left them.

- `none`: everything trains.
- `bn`: every BatchNorm runs in inference mode (running statistics, not the batch's) with scale and bias fixed.
- `backbone`: only the classifier trains; everything before it runs in inference mode.
- `stages:K`: the stem and the first K stages run in inference mode and stay fixed.

Three mechanisms, so that frozen means bit-identical: frozen modules run in inference mode (BN statistics and its
counter are not updated, drop-path is off); the step differentiates only the trainable parameters (`trainable`, an
NNX filter), so no gradient and no backward work is spent on frozen ones; and the optimizer holds only the
trainable parameters (`nnx.Optimizer(..., wrt=trainable)`, the NNX form of `optax.masked`), so weight decay and
momentum cannot move the rest. The EMA keeps frozen tensors as they are (`frozen_mask`).
"""

from __future__ import annotations

import jax
from flax import nnx

from effnet_spec import ModelSpec
from effnet_spec.contract import Module, modules

from ..model import EfficientNet
from ..weights.state import key_map, node_at
from .config import parse_freeze

__all__ = ["apply_freeze", "frozen_mask", "frozen_modules", "trainable"]


def frozen_modules(spec: ModelSpec, freeze: str) -> list[Module]:
    """The twin-contract modules that `freeze` fixes."""
    mode, k = parse_freeze(freeze)
    if mode == "none":
        return []
    if mode == "bn":
        return [m for m in modules(spec) if m.kind == "bn"]
    if mode == "backbone":
        return [m for m in modules(spec) if m.part != "classifier"]
    if k > len(spec.stages):
        raise ValueError(
            f"freeze=stages:{k}: the model has {len(spec.stages)} stages; K must lie in 0..{len(spec.stages)}"
        )
    return [
        m
        for m in modules(spec)
        if m.part.startswith("stem.") or (m.block is not None and spec.blocks[m.block].stage < k)
    ]


def _frozen_paths(spec: ModelSpec, freeze: str) -> frozenset[tuple]:
    names = {m.name for m in frozen_modules(spec, freeze)}
    return frozenset(e.jax_path for e in key_map(spec) if e.tensor.module.name in names)


def apply_freeze(model: EfficientNet, freeze: str) -> None:
    """Put the frozen parts of a train-mode `model` in inference mode (whole blocks, so drop-path too)."""
    spec = model.spec
    frozen = frozen_modules(spec, freeze)
    if not frozen:
        return
    names = {m.name for m in frozen}
    for path, m in {e.jax_path[:-1]: e.tensor.module for e in key_map(spec)}.items():
        if m.name in names and m.kind == "bn":
            node_at(model, path).use_running_average = True
    for b in spec.blocks:
        if all(m.name in names for m in modules(spec) if m.block == b.index):
            model.blocks[b.index].eval()


def trainable(spec: ModelSpec, freeze: str):
    """The NNX filter of the parameters that train under `freeze`."""
    frozen = _frozen_paths(spec, freeze)
    if not frozen:
        return nnx.Param
    return nnx.All(nnx.Param, lambda path, _: tuple(path) not in frozen)


def frozen_mask(spec: ModelSpec, freeze: str, weights) -> object:
    """A pytree like `weights` (Param and BatchStat state) with True on the leaves `freeze` fixes."""
    frozen = _frozen_paths(spec, freeze)

    def leaf_path(path) -> tuple:
        keys = [getattr(p, "key", getattr(p, "name", None)) for p in path]
        return tuple(k for k in keys if k != "value")

    return jax.tree_util.tree_map_with_path(lambda p, _: leaf_path(p) in frozen, weights)
