"""Classify images with any weights `from_pretrained` reads, each prepared as the weights expect (`effnet predict`).

The checkpoint header (or a training run's) carries the preprocessing (resolution, crop fraction, interpolation,
mean/std, class names), so the same command is right for torchvision, timm, TF-ported and Lite weights alike.
Eval transform (timm/torchvision): resize the short side to floor(resolution / crop_pct), center-crop
resolution x resolution, scale to [0, 1], normalise with mean/std. ImageNet-1k class names come from
`effnet_spec.classes`.
"""

from __future__ import annotations

import math
import numbers
import os
import warnings
from collections.abc import Sequence

import numpy as np

from effnet_spec import Preprocessing
from effnet_spec.classes import imagenet_class_names

from .images import open_image

__all__ = ["class_names", "classify", "imagenet_class_names", "predict", "preprocess"]

_RESAMPLE = {"bicubic": 3, "bilinear": 2, "nearest": 0}  # PIL.Image.Resampling values


def preprocess(image, pre: Preprocessing, in_channels: int = 3) -> np.ndarray:
    """One PIL image -> (resolution, resolution, C) float32, as the weights were evaluated."""
    if in_channels not in (1, 3):
        raise ValueError(f"images can feed a model with 1 or 3 input channels, not {in_channels}")
    image = image.convert("RGB" if in_channels == 3 else "L")
    res = pre.resolution
    scale = math.floor(res / pre.crop_pct + 1e-6)  # 1e-6: 240 / (240/255) must give 255, not 254
    w, h = image.size
    if w <= h:
        size = (scale, max(scale, round(h * scale / w)))
    else:
        size = (max(scale, round(w * scale / h)), scale)
    image = image.resize(size, resample=_RESAMPLE[pre.interpolation])
    left, top = (size[0] - res) // 2, (size[1] - res) // 2
    image = image.crop((left, top, left + res, top + res))
    x = np.asarray(image, dtype=np.float32).reshape(res, res, in_channels) / 255.0
    mean, std = np.asarray(pre.mean, np.float32)[:in_channels], np.asarray(pre.std, np.float32)[:in_channels]
    return (x - mean) / std


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def predict(
    image_paths: Sequence[str | os.PathLike], weights: str | os.PathLike, *, top: int = 5, **source
) -> list[list[tuple[str, float]]]:
    """Top-`top` (class name, probability) of each image.

    Raises:
        FileNotFoundError: a missing image or checkpoint. ValueError: an unreadable image, a checkpoint without a
            classifier or whose outputs are not finite (inf or NaN), or `top` not an int >= 1 (a negative one would
            slice off the last classes instead).
    """
    if isinstance(top, bool) or not isinstance(top, numbers.Integral) or top < 1:
        raise ValueError(f"top must be an int >= 1 (the classes to return per image), got {top!r}")
    names, probs = classify(image_paths, weights, **source)
    order = np.argsort(-probs, axis=-1)[:, :top]
    return [[(names[i], float(p[i])) for i in row] for p, row in zip(probs, order)]


def classify(
    image_paths: Sequence[str | os.PathLike],
    weights: str | os.PathLike,
    *,
    weight_source: str | None = None,
    model: str | None = None,
) -> tuple[list[str], np.ndarray]:
    """(class names, probabilities (N, num_classes)) for the images, from one jitted forward pass.

    `weights` is anything `EfficientNet.from_pretrained` reads: an effnet checkpoint, another library's file, a
    training run directory (its latest EMA weights, with the class names of its data) or an `hf-hub:` id;
    `weight_source` / `model` as there (for timm's TF ports, whose keys do not tell their conventions).
    """
    if isinstance(image_paths, (str, os.PathLike)) or not len(image_paths):  # a str would be read letter by letter
        raise ValueError(f"image_paths must be a non-empty list of image files, got {image_paths!r}")
    import jax
    from flax import nnx

    from .weights import build_adapted, read_pretrained

    try:
        import PIL  # noqa: F401 - checked before the weights are read
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError("effnet predict needs Pillow to read images: pip install pillow") from e

    p = read_pretrained(weights, weight_source=weight_source, model=model)
    if p.note:  # the file does not say its conventions (a plain timm file): classify, but not without a word
        warnings.warn(p.note, stacklevel=2)
    net = build_adapted(p)
    net.eval()
    spec, pre = net.spec, net.preprocessing
    if spec.num_classes == 0:
        raise ValueError(f"{os.fspath(weights)}: the model has no classifier (num_classes 0); nothing to predict")
    batch = []
    for path in image_paths:
        image = open_image(path)  # the reader training and eval use: upright, 8-bit RGB
        batch.append(preprocess(image, pre, spec.in_channels))
    from .ops import memory

    graphdef, state = nnx.split(net)
    x = np.stack(batch)
    forward = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x)).lower(state, x).compile()
    memory.check(forward, what=f"the forward pass of {len(batch)} image{'s' * (len(batch) != 1)}", held=state,
                 fits=f"fewer images per call, or weights of a lower resolution (now {pre.resolution})")  # fmt: skip
    logits = np.asarray(forward(state, x))
    bad = [os.fspath(p) for p, row in zip(image_paths, logits) if not np.isfinite(row).all()]
    if bad:  # weights that pass the load checks can still overflow on an image: refuse, never rank NaN
        raise ValueError(
            f"{os.fspath(weights)}: the model's outputs are not finite (inf or NaN) for {bad[0]}"
            f"{f' and {len(bad) - 1} more image(s)' if len(bad) > 1 else ''}: its weights overflow float32"
        )
    return class_names(pre, spec.num_classes), softmax(logits)


def class_names(pre: Preprocessing, num_classes: int) -> list[str]:
    """The header's names; ImageNet-1k's for an unnamed 1000-class head; else `class <i>`."""
    if pre.class_names is not None and len(pre.class_names) == num_classes:
        return list(pre.class_names)
    if num_classes == 1000:
        return list(imagenet_class_names())
    return [f"class {i}" for i in range(num_classes)]
