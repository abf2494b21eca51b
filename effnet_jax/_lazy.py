"""Public names of a package that load from its submodules on first use (PEP 562), so importing the package is
cheap: `effnet summary` and `effnet_jax.ops.host_memory` run without jax, and jax-free modules stay jax-free.

A lazy package spells its public names once, as the `from .sub import name` lines of its `if TYPE_CHECKING:` block:
type checkers and editors read them there, and `lazy_exports` reads the same lines from the package's source to know
where each name lives (as SPEC 1's `lazy_loader.attach_stub` reads a stub file).
"""

from __future__ import annotations

import ast
import importlib
import sys
from collections.abc import Callable

__all__ = ["exports", "lazy_exports"]


def exports(path: str) -> dict[str, str]:
    """Public name -> the submodule that defines it, from the `if TYPE_CHECKING:` block of the source at `path`."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    found: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for imp in node.body:
                if isinstance(imp, ast.ImportFrom) and imp.level == 1 and imp.module:
                    found.update((a.name, imp.module) for a in imp.names)
    return found


def lazy_exports(package: str, path: str) -> tuple[Callable[[str], object], Callable[[], list[str]], list[str]]:
    """The `__getattr__`, `__dir__` and `__all__` of `package`, whose `__init__.py` is at `path`."""
    where = exports(path)

    def __getattr__(name: str) -> object:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{where[name]}", package), name)
        setattr(sys.modules[package], name, value)  # later lookups skip this hook
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(where))

    return __getattr__, __dir__, sorted(where)
