"""Full and read-only disks for tests: a size-limited tmpfs mounted over a test's folder (root only; skipped where
mounting is not possible)."""

from __future__ import annotations

import contextlib
import errno
import gc
import os
import shutil
import subprocess

import pytest

__all__ = ["filled", "remount", "tmpfs"]


def _mount(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", *args], capture_output=True, text=True, check=False)


@contextlib.contextmanager
def tmpfs(path: str | os.PathLike, *, size: str = "8m"):
    """Mount a `size` tmpfs on `path` (created) for the block; skip the test where that is not allowed."""
    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a size-limited tmpfs needs root")
    r = _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", path)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs on {path}: {r.stderr.strip()}")
    try:
        yield path
    finally:
        # A write that failed on this disk leaves Orbax tasks whose exceptions nobody retrieved; asyncio logs them
        # when they are collected. Collect them here, in the test that made them, not from a gc pass in the middle
        # of a later test (see python_files in pyproject.toml for what that once broke).
        gc.collect()
        subprocess.run(["umount", "-l", path], check=False)


def remount(path: str | os.PathLike, *, read_only: bool) -> None:
    """Make a `tmpfs()` mount read-only or writable again (permissions alone do not stop root)."""
    r = _mount("-o", f"remount,{'ro' if read_only else 'rw'}", os.fspath(path))
    assert r.returncode == 0, r.stderr


def filled(path: str | os.PathLike, *, leave: int = 0) -> str:
    """Fill the filesystem holding `path` with one file (`<path>/filler`) until only `leave` bytes (rounded to
    pages) are free; returns its path."""
    filler = os.path.join(os.fspath(path), "filler")
    block = b"\0" * (1 << 16)
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(block)
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
        try:  # the last partial block
            while f.write(b"\0" * 512):
                pass
        except OSError:
            pass
    if leave:
        os.truncate(filler, max(0, os.path.getsize(filler) - leave))
    return filler
