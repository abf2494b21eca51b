"""Weight conversion between the NNX twin and the interchange format (the `effnet_torch` state_dict).

The key map is not a table: `key_map(spec)` walks the spec's module tree (the twin contract) and a small leaf
table says how each torch leaf is named and laid out in JAX. A checkpoint on disk is that state_dict stored as
safetensors with the `effnet_spec` JSON header (DESIGN.md, invariant 3); loading it needs numpy + safetensors only.
Torch is imported lazily, inside `from_torch` / `to_torch`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from effnet_spec import ModelSpec, Preprocessing, make_header, read_header
from effnet_spec.atomic import write_atomic

from .model import EfficientNet

__all__ = [
    "CheckpointMismatchError",
    "KeyEntry",
    "from_torch",
    "key_map",
    "load_checkpoint",
    "load_state_dict",
    "model_from_state_dict",
    "save_checkpoint",
    "state_dict_from_model",
    "to_torch",
]


class CheckpointMismatchError(ValueError):
    """A state_dict whose keys, shapes or dtypes do not match the model; the message lists every problem."""


@dataclass(frozen=True)
class Layout:
    """How one kind of tensor moves between the torch layout (on disk) and the JAX layout."""

    torch_name: str
    jax_name: str
    to_jax: tuple[int, ...] | None  # axis permutation torch -> JAX; None keeps the layout
    integer: bool = False  # num_batches_tracked: int64 in torch, int32 in JAX

    def jax_array(self, a: np.ndarray) -> np.ndarray:
        return a if self.to_jax is None else a.transpose(self.to_jax)

    def torch_array(self, a: np.ndarray) -> np.ndarray:
        return a if self.to_jax is None else a.transpose(np.argsort(self.to_jax))


_OIHW = Layout("OIHW", "HWIO", (2, 3, 1, 0))
# A depthwise kernel is (C, 1, k, k) in torch and (k, k, 1, C) in JAX: the same axis move as a dense one.
_DEPTHWISE = Layout("depthwise (C, 1, k, k)", "depthwise (k, k, 1, C)", (2, 3, 1, 0))
_LINEAR = Layout("(out, in)", "(in, out)", (1, 0))
_VECTOR = Layout("(C,)", "(C,)", None)
_COUNT = Layout("scalar int64", "scalar int32", None, integer=True)

# Module kind -> (torch leaf, JAX leaf, layout). Only leaf names differ between the twins; this is all of it.
LEAVES: dict[str, tuple[tuple[str, str, Layout], ...]] = {
    "conv": (("weight", "kernel", _OIHW),),
    "depthwise": (("weight", "kernel", _DEPTHWISE),),
    "conv_bias": (("weight", "kernel", _OIHW), ("bias", "bias", _VECTOR)),
    "bn": (
        ("weight", "scale", _VECTOR),
        ("bias", "bias", _VECTOR),
        ("running_mean", "mean", _VECTOR),
        ("running_var", "var", _VECTOR),
        ("num_batches_tracked", "num_batches_tracked", _COUNT),  # named outright: never silently skipped
    ),
    "linear": (("weight", "kernel", _LINEAR), ("bias", "bias", _VECTOR)),
}


@dataclass(frozen=True)
class KeyEntry:
    """One tensor: its torch state_dict key, its path in the NNX module tree and its layout."""

    torch_key: str
    jax_path: tuple[str | int, ...]
    layout: Layout


def _modules(spec: ModelSpec) -> Iterator[tuple[str, str]]:
    """(module name, kind) for every module with parameters, in the twin contract's order."""
    yield "stem.conv", "conv"
    yield "stem.bn", "bn"
    for b in spec.blocks:
        p = f"blocks.{b.index}"
        if b.has_expand:
            yield f"{p}.expand.conv", "conv"
            yield f"{p}.expand.bn", "bn"
        yield f"{p}.depthwise.conv", "depthwise"
        yield f"{p}.depthwise.bn", "bn"
        if b.se_ch:
            yield f"{p}.se.reduce", "conv_bias"
            yield f"{p}.se.excite", "conv_bias"
        yield f"{p}.project.conv", "conv"
        yield f"{p}.project.bn", "bn"
    yield "head.conv", "conv"
    yield "head.bn", "bn"
    if spec.num_classes:
        yield "classifier", "linear"


def key_map(spec: ModelSpec) -> list[KeyEntry]:
    """Every tensor of a model of `spec`, derived by walking the spec."""
    out = []
    for name, kind in _modules(spec):
        path = tuple(int(p) if p.isdigit() else p for p in name.split("."))
        for torch_leaf, jax_leaf, layout in LEAVES[kind]:
            out.append(KeyEntry(f"{name}.{torch_leaf}", (*path, jax_leaf), layout))
    return out


def _variable(model: EfficientNet, path: tuple[str | int, ...]) -> nnx.Variable:
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
        a = np.asarray(jax.device_get(_variable(model, e.jax_path).get_value()))
        a = a.astype(np.int64) if e.layout.integer else a.astype(np.float32, copy=False)
        out[e.torch_key] = np.array(e.layout.torch_array(a), order="C")  # copy: keeps 0-d arrays 0-d
    return out


def _torch_shape(e: KeyEntry, jax_shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(e.layout.torch_array(np.broadcast_to(np.zeros((), np.int8), jax_shape)).shape)


def load_state_dict(model: EfficientNet, state_dict: Mapping[str, np.ndarray]) -> None:
    """Load a torch-layout state_dict into `model`, strictly: every key, shape and dtype kind must match.

    Nothing is changed unless everything matches.

    Raises:
        CheckpointMismatchError: one message listing sorted missing (-) and unexpected (+) keys, and shape or
            dtype mismatches with expected vs got and the layout.
    """
    _check_model(model, "load_state_dict")
    entries = key_map(model.spec)
    expected = {e.torch_key: e for e in entries}
    arrays = {k: np.asarray(v) for k, v in state_dict.items()}
    lines = [f"- {k}" for k in sorted(expected.keys() - arrays.keys())]
    lines += [f"+ {k}" for k in sorted(arrays.keys() - expected.keys())]
    for k in sorted(expected.keys() & arrays.keys()):
        e, a = expected[k], arrays[k]
        jax_shape = tuple(_variable(model, e.jax_path).get_value().shape)
        want = _torch_shape(e, jax_shape)
        if a.shape != want:
            lines.append(
                f"shape {k}: expected {want} {e.layout.torch_name} (JAX {jax_shape} {e.layout.jax_name}), got {a.shape}"
            )
        elif e.layout.integer != np.issubdtype(a.dtype, np.integer) or not (
            np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)
        ):
            lines.append(f"dtype {k}: expected {'an integer' if e.layout.integer else 'a float'} array, got {a.dtype}")
        elif e.layout.integer and not 0 <= int(a) < 2**31:
            lines.append(f"value {k}: {int(a)} does not fit the int32 counter")
    if lines:
        raise CheckpointMismatchError(
            f"checkpoint does not match EfficientNet({model.spec.name}): {len(lines)} problem(s)\n  "
            + "\n  ".join(lines)
        )
    for e in entries:
        # A private C-contiguous copy: jnp.asarray may alias host memory on CPU, and the source (a torch tensor's
        # .numpy() view, say) may be mutated in place later; the model must never see that.
        a = np.array(e.layout.jax_array(arrays[e.torch_key]), np.int32 if e.layout.integer else np.float32, order="C")
        _variable(model, e.jax_path).set_value(jnp.asarray(a))


def model_from_state_dict(
    spec: ModelSpec,
    state_dict: Mapping[str, np.ndarray],
    *,
    rngs: nnx.Rngs | None = None,
    dtype=jnp.float32,
    depthwise_impl: str = "auto",
) -> EfficientNet:
    """A model of `spec` holding `state_dict`, built without running the random init (no init compile cost).

    The model is built abstractly with `nnx.eval_shape`; the weights fill it and the dropout/drop-path streams get
    keys folded from `rngs` (default `nnx.Rngs(0)`), one per stream.
    """
    model = nnx.eval_shape(
        lambda: EfficientNet(spec, rngs=nnx.Rngs(0, dropout=0), dtype=dtype, depthwise_impl=depthwise_impl)
    )
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


# --- safetensors files ------------------------------------------------------------------------------------------


def save_checkpoint(model: EfficientNet, path: str | os.PathLike, preprocessing: Preprocessing | None = None) -> None:
    """Save `model` as an effnet checkpoint (torch-layout safetensors + JSON header), atomically.

    Args:
        preprocessing: stored in the header; defaults to `model.preprocessing`, then the family's default.
    """
    from safetensors.numpy import save

    _check_model(model, "save_checkpoint")
    meta = make_header(model.spec, preprocessing or model.preprocessing)
    write_atomic(path, save(state_dict_from_model(model), metadata=meta))


def load_checkpoint(
    path: str | os.PathLike, *, rngs: nnx.Rngs | None = None, dtype=jnp.float32, depthwise_impl: str = "auto"
) -> EfficientNet:
    """Rebuild the model named by the checkpoint header and load its weights (strict, never partial).

    Needs numpy and safetensors only. The model is returned in eval mode, with `preprocessing` from the header.

    Raises:
        FileNotFoundError: no such file. ValueError: not a safetensors file, or a missing/malformed header.
        CheckpointMismatchError: the tensors do not fit the spec.
    """
    from safetensors import SafetensorError, safe_open

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        with safe_open(path, framework="np") as f:
            meta = f.metadata()
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a Mapping)
    except SafetensorError as e:
        raise ValueError(f"{path}: not a readable safetensors checkpoint: {e}") from e
    spec, pre = read_header(meta)
    model = model_from_state_dict(spec, state, rngs=rngs, dtype=dtype, depthwise_impl=depthwise_impl)
    model.preprocessing = pre
    model.eval()
    return model


# --- live torch models --------------------------------------------------------------------------------------------


def from_torch(torch_model, *, rngs: nnx.Rngs | None = None, dtype=jnp.float32, depthwise_impl: str = "auto"):
    """An NNX twin of a live `effnet_torch.EfficientNet`: same spec, same weights, same train/eval mode."""
    import effnet_torch

    if not isinstance(torch_model, effnet_torch.EfficientNet):
        raise TypeError(f"from_torch expects an effnet_torch.EfficientNet, got {type(torch_model).__name__}")
    sd = {k: v.detach().cpu().numpy() for k, v in torch_model.state_dict().items()}
    model = model_from_state_dict(torch_model.spec, sd, rngs=rngs, dtype=dtype, depthwise_impl=depthwise_impl)
    model.preprocessing = torch_model.preprocessing
    if torch_model.training:
        model.train()
    else:
        model.eval()
    return model


def to_torch(model: EfficientNet):
    """A live `effnet_torch.EfficientNet` twin of `model`: same spec, same weights, same train/eval mode."""
    import torch

    import effnet_torch

    _check_model(model, "to_torch")
    torch_model = effnet_torch.EfficientNet(model.spec)
    sd = {k: torch.from_numpy(v) for k, v in state_dict_from_model(model).items()}
    effnet_torch.load_state_dict_checked(torch_model, sd)
    torch_model.preprocessing = model.preprocessing
    torch_model.train(not model.stem.bn.use_running_average)
    return torch_model
