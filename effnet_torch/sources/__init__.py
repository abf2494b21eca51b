"""The weight sources effnet reads and writes: one module per library behind one registry.

A source is a `WeightSource` (see `base`); adding one is a new module here plus its line in `REGISTRY`, because
the import/export machinery, layout detection and the CLI's `--weight-source` / `--to` choices all read this
dict (docs/design.md, "Weight sources").
"""

from __future__ import annotations

from collections.abc import Iterable

from . import efficientnet_pytorch, effnet, timm, torchvision
from .base import ImportError_, ModelName, WeightSource

__all__ = ["REGISTRY", "ImportError_", "ModelName", "WeightSource", "detect", "export_targets", "get", "names"]

# name -> source; the order is the CLI's and the error messages'
REGISTRY: dict[str, WeightSource] = {
    s.name: s
    for s in (
        torchvision.SOURCE,
        timm.SOURCE,
        efficientnet_pytorch.SOURCE,
        effnet.SOURCE,
    )
}


def names() -> tuple[str, ...]:
    """Every registered source: what can be imported."""
    return tuple(REGISTRY)


def export_targets() -> tuple[str, ...]:
    """The sources that can be written to."""
    return tuple(n for n, s in REGISTRY.items() if s.exports is not None)


def get(name: str) -> WeightSource:
    """The source called `name`.

    Raises:
        ImportError_ (a ValueError): no such source; the message lists the valid names.
    """
    if name not in REGISTRY:
        raise ImportError_(f"unknown weight source {name!r}; expected one of: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def detect(keys: Iterable[str]) -> str:
    """Which source wrote a state_dict: the one whose stem key it holds.

    Raises:
        ImportError_: no source's stem key, or several.
    """
    keys = set(keys)
    found = [n for n, s in REGISTRY.items() if s.stem_key in keys]
    if len(found) != 1:
        raise ImportError_(
            f"cannot tell which library wrote this checkpoint (keys start: {', '.join(sorted(keys)[:5])}); "
            f"pass the weight source explicitly, one of: {', '.join(REGISTRY)}"
        )
    return found[0]
