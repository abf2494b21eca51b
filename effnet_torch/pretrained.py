"""Pretrained weights from wherever a user keeps them, for `EfficientNet.from_pretrained` in both twins.

A source is a file (an effnet checkpoint, or a torchvision / timm / efficientnet_pytorch one: safetensors, or a
`.pth` read with `weights_only=True`) or a timm id on the Hugging Face Hub (`hf-hub:timm/efficientnet_b0.ra_in1k`,
fetched and cached by `effnet_torch.hub`). Each becomes the same `Pretrained` (spec, the twin's state_dict,
preprocessing) before `effnet_spec.adapt` fits it to a new task (docs/design.md, "Pretrained weights"). Training
run directories are the JAX side's (`effnet_jax.train.runs`); `effnet convert RUN OUT.safetensors` makes one a file.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from effnet_spec.adapt import SOURCES_HELP, Pretrained, adapt, adapt_preprocessing

from . import hub
from .importers import ImportError_, import_file, import_state_dict, read_state_dict
from .strict import load_state_dict_checked

__all__ = ["SOURCES_HELP", "Pretrained", "from_pretrained", "read_pretrained"]


def read_pretrained(
    source: str | os.PathLike, *, weight_source: str | None = None, model: str | None = None
) -> Pretrained:
    """Read a file or `hf-hub:` id as the twin's state_dict with its spec and preprocessing.

    Args:
        weight_source, model: as `effnet convert --weight-source / --model`, for files whose layout or conventions
            the keys cannot tell (timm's TF ports); an effnet checkpoint's own header needs neither.
    Raises:
        FileNotFoundError: no such file. ImportError_ / hub.HubError (ValueErrors): unreadable, unsafe or
            mismatching weights, a hub id that cannot be had; each one line naming the source.
    """
    if isinstance(source, str) and hub.is_hub_id(source):
        return _from_hub(source, weight_source, model)
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"a pretrained source is a path or an hf-hub: id, got {type(source).__name__}")
    path = os.fspath(source)
    if os.path.isdir(path):
        raise ImportError_(
            f"{path}: a directory; the PyTorch twin reads weights files: `effnet convert {path} OUT.safetensors` "
            "turns a training run into one"
        )
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file; expected {SOURCES_HELP}")
    sd, meta = read_state_dict(path)
    r = import_file(sd, meta, path, weight_source=weight_source, model=model)  # a header rules; names must agree
    origin = f"effnet checkpoint {path}" if r.weight_source == "effnet" else f"{r.weight_source} weights {path}"
    return Pretrained(r.spec, r.state_dict, r.preprocessing, origin, f"{path}: {r.note}" if r.note else "")


def _from_hub(source: str, weight_source: str | None, model: str | None) -> Pretrained:
    if weight_source not in (None, "timm", "timm_tf") or model:
        raise ImportError_(f"{source}: the hub repository's config.json names the model; drop weight_source/model")
    got = hub.fetch(source)
    sd, _ = read_state_dict(got.weights_path)
    r = import_state_dict(sd, "timm", model=got.model_name)
    pre = hub.hub_preprocessing(got, r.spec)
    return Pretrained(r.spec, r.state_dict, pre, f"{source} ({got.architecture})")


def from_pretrained(
    cls: type[nn.Module],
    source: str | os.PathLike,
    *,
    num_classes: int | None = None,
    in_channels: int | None = None,
    weight_source: str | None = None,
    model: str | None = None,
):
    """A `cls` (the twin's `EfficientNet`) holding the source's weights, adapted; see `EfficientNet.from_pretrained`."""
    p = read_pretrained(source, weight_source=weight_source, model=model)
    a = adapt(p.spec, p.state_dict, num_classes=num_classes, in_channels=in_channels, zeros=torch.zeros)
    net = cls(a.spec)
    load_state_dict_checked(net, a.state_dict)
    net.preprocessing = adapt_preprocessing(p.preprocessing, p.spec, a.spec)
    return net.eval()
