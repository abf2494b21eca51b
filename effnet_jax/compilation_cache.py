"""A persistent XLA compilation cache that a killed process or a second process cannot corrupt.

`EFFNET_COMPILATION_CACHE=DIR effnet train ...` (or `enable(DIR)` in your own process) keeps every compiled
executable in DIR, so a resumed, repeated or concurrent run with the same shapes loads its train step instead of
compiling it again. It is JAX's own cache (`jax_compilation_cache_dir`), with one change: JAX writes an entry in place,
so a process killed mid-write (a preempted VM, `kill -9`) leaves a truncated file that every later run fails to read,
and a second process can read a half-written one. Here an entry is written to a temporary file in DIR and renamed:
readers see a whole entry or none, and a leftover temporary file is never read.
"""

from __future__ import annotations

import os
import secrets

from . import env

__all__ = ["enable", "enable_from_env"]

_enabled: str | None = None


def _put(self, key: str, value: bytes) -> None:
    """`LRUCache.put` for a cache without eviction, written atomically (same checks as JAX's)."""
    if not key:
        raise ValueError("key cannot be empty")
    path = os.path.join(self.path, f"{key}-cache")
    if os.path.exists(path):
        return
    tmp = os.path.join(self.path, f".tmp-{key}.{secrets.token_hex(6)}")
    try:
        with open(tmp, "wb") as f:
            f.write(value)
        os.replace(tmp, path)  # atomic on POSIX: the name appears only once the bytes are all there
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def enable(directory: str | os.PathLike, *, min_compile_time_s: float = 1.0) -> str:
    """Cache compiled executables in `directory` (created if needed) for this process; returns its absolute path.

    `min_compile_time_s`: compilations faster than this are not stored (JAX's default, 1 s; 0 stores all).

    Raises:
        ValueError: `directory` cannot be created or written, naming it; or this JAX's cache has no entry writer
            effnet knows how to make atomic (then nothing is enabled).
    """
    global _enabled
    import jax
    from jax._src import compilation_cache, lru_cache

    directory = os.path.abspath(os.path.expanduser(os.fspath(directory)))
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        raise ValueError(f"{env.COMPILATION_CACHE}: cannot create {directory}: {e.strerror or e}") from None
    if not os.access(directory, os.W_OK):
        raise ValueError(f"{env.COMPILATION_CACHE}: {directory} is not writable")
    if not callable(getattr(lru_cache.LRUCache, "put", None)) or getattr(lru_cache, "_CACHE_SUFFIX", None) != "-cache":
        raise ValueError(f"{env.COMPILATION_CACHE}: jax {jax.__version__}'s cache layout is unknown to effnet")
    lru_cache.LRUCache.put = _put  # only without eviction (max_size -1, JAX's default): there put takes no lock
    jax.config.update("jax_compilation_cache_max_size", -1)
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_s))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    compilation_cache.reset_cache()  # a cache this process already opened elsewhere is closed
    _enabled = directory
    return directory


def enable_from_env() -> str | None:
    """`enable($EFFNET_COMPILATION_CACHE)` when it is set (`EFFNET_COMPILATION_CACHE_MIN_S` overrides the 1 s floor);
    the directory, or None."""
    directory = env.text(env.COMPILATION_CACHE)
    if not directory:
        return None
    raw = env.text(env.COMPILATION_CACHE_MIN_S, "1")
    try:
        floor = float(raw)
    except ValueError:
        raise ValueError(f"{env.COMPILATION_CACHE_MIN_S}={raw!r}: expected seconds, e.g. 0.5") from None
    if _enabled == os.path.abspath(os.path.expanduser(directory)):
        return _enabled
    return enable(directory, min_compile_time_s=floor)
