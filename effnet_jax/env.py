"""The environment switches that ops and the CLI read, parsed in one place (stdlib only: jax stays unimported).

EFFNET_DEPTHWISE=grouped|shift|shift_vjp   the depthwise formulation "auto" stands for (default: by backend)
EFFNET_DENSE_KGRAD=lax|taps                the kxk dense conv kernel gradient "auto" stands for (default: by backend)
EFFNET_NATIVE=0                            never build or use the native C++ kernels
EFFNET_CACHE_DIR=DIR                       where native kernels are cached (default ~/.cache/effnet)
EFFNET_RETAIN_HOST_MEMORY=1                the `effnet` command keeps freed host memory mapped
EFFNET_ALLOCATOR=auto|tcmalloc|jemalloc|mimalloc|glibc|PATH   the malloc the `effnet` command re-executes with
EFFNET_COMPILATION_CACHE=DIR               the `effnet` command keeps compiled executables in DIR (compilation_cache)
EFFNET_COMPILATION_CACHE_MIN_S=SECONDS     ... those that took at least this long to compile (default 1)
EFFNET_MEMORY_LIMIT=SIZE|off               the memory a compiled step may use (ops.memory); off: no preflight
"""

from __future__ import annotations

import os

__all__ = [
    "ALLOCATOR", "CACHE_DIR", "COMPILATION_CACHE", "COMPILATION_CACHE_MIN_S", "DENSE_KGRAD", "DEPTHWISE",
    "MEMORY_LIMIT", "NATIVE", "RETAIN_HOST_MEMORY", "flag", "text",
]  # fmt: skip

DEPTHWISE = "EFFNET_DEPTHWISE"
DENSE_KGRAD = "EFFNET_DENSE_KGRAD"
DTYPE = "EFFNET_DTYPE"  # what ModelOptions(dtype="auto") resolves to, instead of the per-backend choice
NATIVE = "EFFNET_NATIVE"
CACHE_DIR = "EFFNET_CACHE_DIR"
RETAIN_HOST_MEMORY = "EFFNET_RETAIN_HOST_MEMORY"
ALLOCATOR = "EFFNET_ALLOCATOR"
COMPILATION_CACHE = "EFFNET_COMPILATION_CACHE"
COMPILATION_CACHE_MIN_S = "EFFNET_COMPILATION_CACHE_MIN_S"
MEMORY_LIMIT = "EFFNET_MEMORY_LIMIT"

TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def flag(name: str, default: bool) -> bool:
    """An on/off switch (1/true/yes/on or 0/false/no/off); unset or empty means `default`.

    Raises:
        ValueError: any other value, naming the variable.
    """
    raw = os.environ.get(name, "")
    value = raw.strip().lower()
    if not value:
        return default
    if value in TRUE + FALSE:
        return value in TRUE
    raise ValueError(f"{name}={raw!r}: expected {'/'.join(TRUE)} or {'/'.join(FALSE)}")


def text(name: str, default: str = "") -> str:
    """A string switch; unset or empty means `default`."""
    return os.environ.get(name, "").strip() or default
