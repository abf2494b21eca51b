"""Classify images with any weights `from_pretrained` reads, each prepared as the weights expect (`effnet predict`).

The checkpoint header (or a training run's) carries the preprocessing (resolution, crop fraction, interpolation,
mean/std, class names), so the same command is right for torchvision, timm, TF-ported and Lite weights alike.
Eval transform (timm/torchvision): resize the short side to floor(resolution / crop_pct), center-crop
resolution x resolution, scale to [0, 1], normalise with mean/std. ImageNet-1k class names come from
`effnet_spec.classes`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np

from effnet_spec import Preprocessing
from effnet_spec.classes import imagenet_class_names
from effnet_spec.paths import not_a_file

from .images import eight_bit

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
        FileNotFoundError: a missing image or checkpoint. ValueError: an unreadable image, or a checkpoint
            without a classifier.
    """
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
    import jax
    from flax import nnx

    from .weights import from_pretrained

    try:
        from PIL import Image, UnidentifiedImageError
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError("effnet predict needs Pillow to read images: pip install pillow") from e

    net = from_pretrained(weights, weight_source=weight_source, model=model)
    spec, pre = net.spec, net.preprocessing
    if spec.num_classes == 0:
        raise ValueError(f"{os.fspath(weights)}: the model has no classifier (num_classes 0); nothing to predict")
    batch = []
    for path in image_paths:
        problem = not_a_file(path)  # before Pillow opens it: a named pipe would block, /dev/zero never end
        if problem and problem != "no such file":
            raise ValueError(f"{os.fspath(path)}: {problem}; expected an image file")
        try:
            with Image.open(path) as im:
                image = eight_bit(im)
                image.load()  # read now: the file closes here
        except ValueError as e:
            raise ValueError(f"{os.fspath(path)}: {e}") from None
        except UnidentifiedImageError as e:
            raise ValueError(f"{os.fspath(path)}: not an image Pillow can read") from e
        except Image.DecompressionBombError as e:  # Pillow's guard against huge images (a DoS), not an OSError
            raise ValueError(f"{os.fspath(path)}: refused by Pillow's decompression-bomb guard ({e})") from None
        except OSError as e:
            if not os.path.exists(path):
                raise
            raise ValueError(f"{os.fspath(path)}: cannot read the image ({e})") from None
        batch.append(preprocess(image, pre, spec.in_channels))
    graphdef, state = nnx.split(net)
    logits = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))(state, np.stack(batch))
    return class_names(pre, spec.num_classes), softmax(np.asarray(logits))


def class_names(pre: Preprocessing, num_classes: int) -> list[str]:
    """The header's names; ImageNet-1k's for an unnamed 1000-class head; else `class <i>`."""
    if pre.class_names is not None and len(pre.class_names) == num_classes:
        return list(pre.class_names)
    if num_classes == 1000:
        return list(imagenet_class_names())
    return [f"class {i}" for i in range(num_classes)]
