"""Public names of a package that load from its submodules on first use (PEP 562), so importing the package is
cheap: `effnet summary` and `effnet_jax.ops.host_memory` run without jax, and jax-free modules stay jax-free."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable

__all__ = ["lazy_exports"]


def lazy_exports(package: str, exports: dict[str, str]) -> Callable[[str], object]:
    """The `__getattr__` for `package`, whose public name N lives in submodule `exports[N]`."""

    def __getattr__(name: str) -> object:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{exports[name]}", package), name)
        setattr(sys.modules[package], name, value)  # later lookups skip this hook
        return value

    return __getattr__
