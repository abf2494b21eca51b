"""What a set of weights becomes in a model for another task: a new classifier, another input channel count.

`Pretrained` is what both twins' `from_pretrained` read a source into (the one shape for both).

Fine-tuning loads a source's tensors into a model that differs from it only in its classifier (another class count)
or its stem (another number of input channels). `adapt` gives that model's spec and the source's state_dict mapped
onto it: the stem kernel as timm's `adapt_input_conv` does it, the classifier left out when it must be new (each
twin initialises a fresh one). Every other tensor is carried over unchanged, so the usual strict load checks it
(docs/design.md, "Pretrained weights").

Written against numpy-style slicing only (basic slices, a list index, `+`, a scalar product), so the one rule serves
numpy arrays and torch tensors alike.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from .contract import tensors
from .header import Preprocessing, _per_channel
from .resolve import MAX_CLASSES, MAX_IN_CHANNELS, ModelSpec, check_count, resolve

__all__ = [
    "HUB_PREFIX",
    "SOURCES_HELP",
    "Adapted",
    "Pretrained",
    "adapt",
    "adapt_preprocessing",
    "adapt_spec",
    "adapt_stem_kernel",
]


HUB_PREFIX = "hf-hub:"  # timm's spelling of a Hugging Face Hub id
SOURCES_HELP = (
    "an effnet .safetensors, a torchvision/timm/efficientnet_pytorch checkpoint (.pth, .safetensors), "
    "a training run directory (JAX), or hf-hub:<org>/<name>"
)


@dataclass(frozen=True)
class Pretrained:
    """A set of weights as read, before adaptation: what they are, the interchange tensors (numpy arrays or torch
    tensors, as the twin reading them holds them) and their preprocessing."""

    spec: ModelSpec
    state_dict: dict[str, Any]
    preprocessing: Preprocessing
    origin: str  # what was read, for messages and logs
    note: str = ""  # what reading assumed that the file and the names given did not say ("" when nothing)


def adapt_spec(
    spec: ModelSpec,
    *,
    num_classes: int | None = None,
    in_channels: int | None = None,
    drop_path: float | None = None,
    dropout: float | None = None,
) -> ModelSpec:
    """`spec` with another classifier width, input channel count or regularisation rates; everything else kept."""
    return resolve(
        spec.variant,
        num_classes=spec.num_classes if num_classes is None else num_classes,
        in_channels=spec.in_channels if in_channels is None else in_channels,
        conventions=spec.conv,
        stages=spec.stages,
        drop_path=drop_path,
        dropout=dropout,
    )


def adapt_stem_kernel(kernel: Any, in_channels: int) -> Any:
    """An OIHW stem kernel for 3 input channels, adapted to `in_channels` as timm's `adapt_input_conv`.

    One channel sums the RGB kernels, so a grey image x gives what the RGB model gives on (x, x, x). N channels
    repeat R, G, B in turn (channel i takes i % 3) and scale by 3 / N, so activations keep their size.
    """
    if kernel.shape[1] != 3:
        raise ValueError(
            f"in_channels={in_channels}: the stem can be adapted from 3 input channels only (as timm's "
            f"adapt_input_conv), and these weights take {kernel.shape[1]}"
        )
    if in_channels == 3:
        return kernel
    if in_channels == 1:
        return kernel[:, 0:1] + kernel[:, 1:2] + kernel[:, 2:3]
    return kernel[:, [i % 3 for i in range(in_channels)]] * (3.0 / in_channels)


@dataclass(frozen=True)
class Adapted:
    spec: ModelSpec  # the model to build
    state_dict: dict[str, Any]  # its tensors, a new classifier's included (zeros)


def adapt(
    spec: ModelSpec,
    state_dict: Mapping[str, Any],
    *,
    num_classes: int | None = None,
    in_channels: int | None = None,
    zeros: Callable[[tuple[int, ...]], Any],
) -> Adapted:
    """Map a state_dict of `spec` (the interchange names) onto a model with `num_classes` / `in_channels`.

    None keeps the source's. A new class count replaces the source classifier with one of zeros (`zeros(shape)`
    makes a float32 array of the caller's framework), as big_vision initialises a fine-tuning head: the first
    logits are uniform, the loss starts at ln(classes) instead of wherever a random head on pretrained features
    would put it, and both twins get the same model. A new channel count adapts the stem kernel.

    Raises:
        ValueError: a bad count, or a channel change from a source without 3 input channels.
    """
    if num_classes is not None:
        num_classes = check_count("num_classes", num_classes, 0, MAX_CLASSES)
    if in_channels is not None:
        in_channels = check_count("in_channels", in_channels, 1, MAX_IN_CHANNELS)
    target = adapt_spec(spec, num_classes=num_classes, in_channels=in_channels)
    new_head = target.num_classes != spec.num_classes
    out = dict(state_dict)
    for t in tensors(spec):
        if t.module.part == "classifier" and new_head:
            out.pop(t.name, None)
        elif t.module.part == "stem.conv" and target.in_channels != spec.in_channels and t.name in out:
            out[t.name] = adapt_stem_kernel(out[t.name], target.in_channels)
    if new_head:
        out.update({t.name: zeros(t.shape) for t in tensors(target) if t.module.part == "classifier"})
    return Adapted(target, out)


def adapt_preprocessing(pre: Preprocessing, source: ModelSpec, target: ModelSpec) -> Preprocessing:
    """The source's preprocessing for the adapted model `target`.

    Class names travel with the classifier: a new one (another class count) has none. Another channel count takes
    one mean and std per channel, the RGB values in turn (as `effnet_spec.header` spreads them).
    """
    if target.num_classes != source.num_classes:
        pre = replace(pre, class_names=None)
    if target.in_channels != source.in_channels:
        rgb = (pre.mean, pre.std) if len(pre.mean) == 3 else (pre.mean[:1] * 3, pre.std[:1] * 3)
        pre = _per_channel(target, replace(pre, mean=rgb[0], std=rgb[1]))
    return pre
