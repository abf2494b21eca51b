"""The ImageNet-1k class names, in label order (shipped as `effnet_spec/data/imagenet_classes.txt`).

They travel in checkpoint headers of ImageNet weights, so the spec (stdlib only) owns them: the importers and
`effnet predict` read them from here, and neither twin needs the other's package data.
"""

from __future__ import annotations

import functools
from importlib.resources import files

__all__ = ["imagenet_class_names"]


@functools.cache
def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 names, index = ImageNet label."""
    text = files(__package__).joinpath("data", "imagenet_classes.txt").read_text(encoding="utf-8")
    names = tuple(line for line in text.splitlines() if line)
    if len(names) != 1000:
        raise RuntimeError(f"effnet_spec/data/imagenet_classes.txt holds {len(names)} names, expected 1000")
    return names
