"""The NNX model's tensors in the interchange format (the twin contract of `effnet_spec.contract`), both ways.

`key_map(spec)` is the contract with a JAX address beside each tensor: one table (`JAX_ROLES`) says how each role
is named and laid out in the NNX tree. Loading is strict and all-or-nothing; building a model from a state_dict
skips the random init (docs/design.md, "Weights").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from effnet_spec import ModelSpec
from effnet_spec.contract import (
    CheckpointMismatchError,
    Got,
    Tensor,
    check_tensors,
    float_got,
    mismatch_error,
    tensors,
)

from ..model import EfficientNet, ModelOptions

__all__ = [
    "CheckpointMismatchError",
    "JAX_ROLES",
    "KeyEntry",
    "key_map",
    "load_state_dict",
    "model_from_state_dict",
    "node_at",
    "state_dict_from_model",
]


@dataclass(frozen=True)
class Layout:
    """How one role's tensor moves from the interchange layout (`contract.ROLES`, on disk) to the JAX layout."""

    jax_leaf: str
    jax_name: str
    to_jax: tuple[int, ...] | None  # axis permutation torch -> JAX; None keeps the layout

    def jax_array(self, a: np.ndarray) -> np.ndarray:
        return a if self.to_jax is None else a.transpose(self.to_jax)

    def torch_array(self, a: np.ndarray) -> np.ndarray:
        return a if self.to_jax is None else a.transpose(np.argsort(self.to_jax))

    def jax_shape(self, torch_shape: tuple[int, ...]) -> tuple[int, ...]:
        return torch_shape if self.to_jax is None else tuple(torch_shape[i] for i in self.to_jax)


# contract role -> its JAX leaf and layout. A depthwise kernel is (C, 1, k, k) in torch and (k, k, 1, C) in JAX:
# the same axis move as a dense one. The BN counter is int64 on disk and int32 in JAX.
JAX_ROLES: dict[str, Layout] = {
    "conv_kernel": Layout("kernel", "HWIO", (2, 3, 1, 0)),
    "depthwise_kernel": Layout("kernel", "(k, k, 1, C)", (2, 3, 1, 0)),
    "conv_bias": Layout("bias", "(C,)", None),
    "linear_weight": Layout("kernel", "(in, out)", (1, 0)),
    "linear_bias": Layout("bias", "(out,)", None),
    "bn_scale": Layout("scale", "(C,)", None),
    "bn_bias": Layout("bias", "(C,)", None),
    "bn_mean": Layout("mean", "(C,)", None),
    "bn_var": Layout("var", "(C,)", None),
    "bn_count": Layout("num_batches_tracked", "scalar int32", None),
}


@dataclass(frozen=True)
class KeyEntry:
    """One contract tensor with its path in the NNX module tree and its layout."""

    tensor: Tensor
    jax_path: tuple[str | int, ...]
    layout: Layout

    @property
    def torch_key(self) -> str:
        return self.tensor.name


def key_map(spec: ModelSpec) -> list[KeyEntry]:
    """Every tensor of a model of `spec` (the contract, in its order), with where it lives in the NNX model."""
    out = []
    for t in tensors(spec):
        layout = JAX_ROLES[t.role]
        path = tuple(int(p) if p.isdigit() else p for p in t.module.name.split("."))
        out.append(KeyEntry(t, (*path, layout.jax_leaf), layout))
    return out


def node_at(model: EfficientNet, path: tuple[str | int, ...]):
    """The module or variable at `path` (a `KeyEntry.jax_path`, or a prefix of one) in the NNX tree."""
    node = model
    for p in path:
        node = node[p] if isinstance(p, int) else getattr(node, p)
    return node


def _check_model(model, what: str) -> None:
    if not isinstance(model, EfficientNet):
        raise TypeError(f"{what} expects an effnet_jax.EfficientNet, got {type(model).__name__}")


def state_dict_from_model(model: EfficientNet) -> dict[str, np.ndarray]:
    """The model's weights as the torch twin's state_dict: torch names and layouts, float32 and int64 arrays."""
    _check_model(model, "state_dict_from_model")
    out = {}
    for e in key_map(model.spec):
        a = np.asarray(jax.device_get(node_at(model, e.jax_path).get_value()))
        a = a.astype(np.int64) if e.tensor.integer else a.astype(np.float32, copy=False)
        out[e.torch_key] = np.array(e.layout.torch_array(a), order="C")  # copy: keeps 0-d arrays 0-d
    return out


def _got(a: np.ndarray) -> Got:
    kind = "int" if np.issubdtype(a.dtype, np.integer) else "float" if np.issubdtype(a.dtype, np.floating) else "other"
    if kind == "float":
        low, high = (float(a.min()), float(a.max())) if a.size else (None, None)
        return float_got(tuple(a.shape), str(a.dtype), low, high)
    value = int(a) if kind == "int" and a.ndim == 0 else None
    return Got(tuple(a.shape), kind, str(a.dtype), value)


def load_state_dict(model: EfficientNet, state_dict: Mapping[str, np.ndarray]) -> None:
    """Load an interchange-format state_dict into `model`, strictly: every key, shape and dtype kind must match.

    Every float value must be finite and within `MAX_WEIGHT`, every BN running variance >= 0. Nothing is changed
    unless everything matches.

    Raises:
        CheckpointMismatchError: one message listing sorted missing (-) and unexpected (+) keys, shape or dtype
            mismatches with expected vs got and the layout, and values (NaN or inf, a counter beyond int32).
    """
    _check_model(model, "load_state_dict")
    entries = key_map(model.spec)
    arrays = {k: np.asarray(v) for k, v in state_dict.items()}
    note = {e.torch_key: f"JAX {e.layout.jax_shape(e.tensor.shape)} {e.layout.jax_name}" for e in entries}
    lines = check_tensors((e.tensor for e in entries), {k: _got(a) for k, a in arrays.items()}, note=note)
    if lines:
        raise mismatch_error(f"checkpoint does not match EfficientNet({model.spec.name})", lines)
    for e in entries:
        # A private C-contiguous copy: jnp.asarray may alias host memory on CPU, and the source (a torch tensor's
        # .numpy() view, say) may be mutated in place later; the model must never see that.
        a = np.array(e.layout.jax_array(arrays[e.torch_key]), np.int32 if e.tensor.integer else np.float32, order="C")
        node_at(model, e.jax_path).set_value(jnp.asarray(a))


def model_from_state_dict(
    spec: ModelSpec,
    state_dict: Mapping[str, np.ndarray],
    *,
    rngs: nnx.Rngs | None = None,
    options: ModelOptions | None = None,
) -> EfficientNet:
    """A model of `spec` holding `state_dict`, built without running the random init (no init compile cost).

    The model is built abstractly with `nnx.eval_shape`; the weights fill it and the dropout/drop-path streams get
    keys folded from `rngs` (default `nnx.Rngs(0)`), one per stream.
    """
    model = nnx.eval_shape(lambda: EfficientNet(spec, rngs=nnx.Rngs(0, dropout=0), options=options))
    base = (rngs if rngs is not None else nnx.Rngs(0))["dropout"]()
    streams = [n for _, n in nnx.iter_graph(model) if isinstance(n, nnx.RngStream)]
    for i, s in enumerate(streams):
        s.key.set_value(jax.random.fold_in(base, i))
        s.count.set_value(jnp.zeros((), s.count.get_value().dtype))
    load_state_dict(model, state_dict)
    left = [p for p, n in nnx.iter_graph(model) if isinstance(n, nnx.Variable) and _abstract(n)]
    if left:  # a bug here, not in the checkpoint: the key map must cover every variable of the model
        raise RuntimeError(f"model_from_state_dict: variables left uninitialised: {left}")
    return model


def _abstract(v: nnx.Variable) -> bool:
    return isinstance(v.get_value(), jax.ShapeDtypeStruct)
