"""`EfficientNet.from_pretrained`: weights from wherever a user keeps them, adapted to a new task.

A source is an effnet checkpoint (read with numpy + safetensors alone), another library's checkpoint file or a timm
id on the Hugging Face Hub (both read by `effnet_torch.pretrained`, so those need torch), or a training run
directory (its latest checkpoint, EMA weights by default, read by `effnet_jax.train.runs` through `effnet_jax._hooks`:
weights does not import train). Every source becomes one `Pretrained` (spec, interchange state_dict as numpy,
preprocessing); `effnet_spec.adapt` then fits it to the new class count or input channels, and the model is built
without a random init (a new classifier starts at zero; docs/design.md, "Pretrained weights").
"""

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
from flax import nnx

from effnet_spec.adapt import HUB_PREFIX, SOURCES_HELP, Pretrained, adapt, adapt_preprocessing, adapt_spec
from effnet_spec.header import contradiction
from effnet_spec.paths import not_a_file

from .. import _hooks
from ..model import EfficientNet, ModelOptions
from .files import read_checkpoint
from .state import model_from_state_dict

__all__ = ["HUB_PREFIX", "Pretrained", "build_adapted", "from_pretrained", "read_pretrained", "source_kind"]


def _has_effnet_header(path: str) -> bool:
    """Whether `path` is an effnet checkpoint (safetensors with the effnet header).

    Raises:
        ValueError: a `.safetensors` file that safetensors cannot read (truncated, not safetensors at all).
    """
    from safetensors import SafetensorError, safe_open

    if not_a_file(path):  # never opened: a named pipe would block the open (the reader says what it is)
        return False
    try:
        with safe_open(path, framework="np") as f:
            return "format" in (f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        if path.endswith(".safetensors"):
            raise ValueError(f"{path}: not a readable safetensors file ({e}); it may be truncated") from None
        return False


def source_kind(source: str | os.PathLike) -> str:
    """ "hub", "run", "effnet" (an effnet checkpoint), "library" (another library's file) or "missing"."""
    text = os.fspath(source)
    if isinstance(source, str) and source.startswith(HUB_PREFIX):
        return "hub"
    if os.path.isdir(text):
        return "run"
    if not os.path.exists(text):
        return "missing"
    return "effnet" if _has_effnet_header(text) else "library"


def read_pretrained(
    source: str | os.PathLike,
    *,
    weight_source: str | None = None,
    model: str | None = None,
    ema: bool = True,
) -> Pretrained:
    """Read any source `from_pretrained` takes, unadapted.

    Raises:
        FileNotFoundError: no such file or directory, a directory that is not a run or holds no checkpoint.
        ValueError: unreadable, unsafe or mismatching weights; a hub id that cannot be had (one line each).
        ModuleNotFoundError: another library's weights without torch installed (the message says what to install).
    """
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"a pretrained source is a path or an {HUB_PREFIX} id, got {type(source).__name__}")
    text = os.fspath(source)
    if isinstance(source, str) and source.startswith(HUB_PREFIX):
        return _via_torch(text, weight_source, model)
    if os.path.isdir(text):
        if weight_source or model:
            raise ValueError(f"{text}: a training run describes its own model; drop weight_source/model")
        return _hooks.read_run(text, ema=ema)  # effnet_jax.train.runs.read_run
    problem = not_a_file(text)  # before it is opened: a named pipe would block the open
    if problem == "no such file":
        raise FileNotFoundError(f"{text}: no such file or directory; expected {SOURCES_HELP}")
    if problem:
        raise ValueError(f"{text}: {problem}; expected {SOURCES_HELP}")
    try:  # a file we may not read says so, rather than looking like a truncated one to the readers below
        open(text, "rb").close()
    except OSError as e:
        raise OSError(e.errno, f"{text}: cannot read it ({e.strerror})") from None
    if _has_effnet_header(text):  # its header names the model: a weight source or model name may only agree
        spec, state, pre = read_checkpoint(text)  # tensors checked against the header, on reading
        problem = contradiction(spec, weight_source=weight_source, model=model)
        if problem:
            raise ValueError(f"{text}: {problem}")
        return Pretrained(spec, state, pre, f"effnet checkpoint {text}")
    return _via_torch(text, weight_source, model)


def _via_torch(source: str, weight_source: str | None, model: str | None) -> Pretrained:
    try:
        from effnet_torch.pretrained import read_pretrained as read_torch
    except ModuleNotFoundError as e:
        if e.name != "torch":
            raise
        raise ModuleNotFoundError(
            f"{source}: reading another library's weights needs PyTorch: pip install 'effnet[torch]'", name="torch"
        ) from None
    p = read_torch(source, weight_source=weight_source, model=model)
    return replace(p, state_dict={k: v.numpy() for k, v in p.state_dict.items()})


def _zeros(shape: tuple[int, ...]) -> np.ndarray:
    return np.zeros(shape, np.float32)


def build_adapted(
    p: Pretrained,
    *,
    num_classes: int | None = None,
    in_channels: int | None = None,
    drop_path: float | None = None,
    dropout: float | None = None,
    rngs: nnx.Rngs | None = None,
    options: ModelOptions | None = None,
) -> EfficientNet:
    """The model `p` becomes with another head, stem or regularisation rates (None keeps the source's).

    Every tensor is the source's (stem adapted) but a new classifier's, which starts at zero (`effnet_spec.adapt`);
    all are loaded strictly, with no random init. `rngs` seeds the dropout and drop-path streams. The model comes
    back in train mode.
    """
    a = adapt(p.spec, p.state_dict, num_classes=num_classes, in_channels=in_channels, zeros=_zeros)
    spec = adapt_spec(a.spec, drop_path=drop_path, dropout=dropout)
    model = model_from_state_dict(spec, a.state_dict, rngs=rngs, options=options)
    model.preprocessing = adapt_preprocessing(p.preprocessing, p.spec, spec)
    model.train()
    return model


def from_pretrained(
    source: str | os.PathLike,
    *,
    num_classes: int | None = None,
    in_channels: int | None = None,
    rngs: nnx.Rngs | None = None,
    options: ModelOptions | None = None,
    weight_source: str | None = None,
    model: str | None = None,
    ema: bool = True,
) -> EfficientNet:
    """`EfficientNet.from_pretrained`: read `source`, adapt it, build the model (eval mode)."""
    p = read_pretrained(source, weight_source=weight_source, model=model, ema=ema)
    net = build_adapted(p, num_classes=num_classes, in_channels=in_channels, rngs=rngs, options=options)
    net.eval()
    return net
