"""The weight sources effnet reads and writes: one module per library, found here by `discover`.

A source is a module of this package that defines `SOURCE`, a `WeightSource` (see `base`); adding one is that
one file, because the import/export machinery, layout detection and the CLI's `--weight-source` / `--to`
choices all read `REGISTRY` (docs/design.md, "Weight sources").
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable

from .base import ImportError_, ModelName, Selected, WeightSource

__all__ = [
    "REGISTRY",
    "ImportError_",
    "ModelName",
    "Selected",
    "WeightSource",
    "detect",
    "discover",
    "export_targets",
    "get",
    "names",
]

_NOT_SOURCES = ("base",)  # modules of this package that hold no source


def discover() -> dict[str, WeightSource]:
    """name -> source for every module of this package that defines `SOURCE`, by (`order`, name).

    Raises:
        ImportError_: two modules define sources of one name.
    """
    found: list[WeightSource] = []
    for info in pkgutil.iter_modules(__path__):
        if info.name in _NOT_SOURCES or info.name.startswith("_"):
            continue
        source = getattr(importlib.import_module(f"{__name__}.{info.name}"), "SOURCE", None)
        if isinstance(source, WeightSource):
            found.append(source)
    registry: dict[str, WeightSource] = {}
    for s in sorted(found, key=lambda s: (s.order, s.name)):
        if s.name in registry:
            raise ImportError_(f"two weight-source modules define the source {s.name!r}")
        registry[s.name] = s
    return registry


# name -> source: the real key layouts; the order is the CLI's and the error messages'
REGISTRY: dict[str, WeightSource] = discover()


def names() -> tuple[str, ...]:
    """Every weight-source name that can be imported: each source, followed by its TF-conventions name if any."""
    out: list[str] = []
    for s in REGISTRY.values():
        out.append(s.name)
        if s.tf_conventions and s.tf_conventions not in REGISTRY:
            out.append(s.tf_conventions)
    return tuple(dict.fromkeys(out))


def export_targets() -> tuple[str, ...]:
    """The sources that can be written to (layouts only: the conventions are the model's)."""
    return tuple(n for n, s in REGISTRY.items() if s.exports is not None)


def get(name: str) -> Selected:
    """The source that `name` selects: a source by its own name, or one whose `tf_conventions` it is (then with
    `tf` set: "timm_tf" is the timm layout with TF conventions).

    Raises:
        ImportError_ (a ValueError): no such name; the message lists the valid ones.
    """
    if name in REGISTRY:
        return Selected(REGISTRY[name])
    for s in REGISTRY.values():
        if s.tf_conventions == name:
            return Selected(s, tf=True)
    raise ImportError_(f"unknown weight source {name!r}; expected one of: {', '.join(names())}")


def detect(keys: Iterable[str]) -> str:
    """Which source's layout a state_dict is in: the one whose stem key it holds (a `REGISTRY` name).

    Raises:
        ImportError_: no source's stem key, or several.
    """
    keys = set(keys)
    found = [n for n, s in REGISTRY.items() if s.stem_key in keys]
    if len(found) != 1:
        raise ImportError_(
            f"cannot tell which library wrote this checkpoint (keys start: {', '.join(sorted(keys)[:5])}); "
            f"pass the weight source explicitly, one of: {', '.join(names())}"
        )
    return found[0]
