"""Atomic file writes, shared by both twins and the trainer (stdlib only, so neither twin imports the other)."""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import tempfile

__all__ = ["unwritable_dir", "unwritable_file", "write_atomic", "write_atomic_files"]

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)


def _open_temp(path: str, directory: str) -> tuple[int, str]:
    """A new file beside `path`, created with mode 0o666 so the kernel applies the umask, as `open(path, "w")` does.

    (`tempfile.mkstemp` creates 0o600 whatever the umask.)
    """
    prefix = os.path.join(directory, ".tmp-" + os.path.basename(path) + ".")
    for _ in range(100):
        tmp = prefix + secrets.token_hex(6)
        try:
            return os.open(tmp, _FLAGS, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name for {path} in {directory}")


def _write_temp(path: str, data: bytes) -> str:
    """A complete, fsynced temp file beside `path` holding `data`, with the permissions `path` would get."""
    fd, tmp = _open_temp(path, os.path.dirname(os.path.abspath(path)))
    try:
        with os.fdopen(fd, "wb") as f:
            with contextlib.suppress(FileNotFoundError):
                old = os.stat(path)
                if stat.S_ISREG(old.st_mode) and hasattr(os, "fchmod"):
                    os.fchmod(f.fileno(), stat.S_IMODE(old.st_mode) & 0o777)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return tmp


def _fsync_dir(directory: str) -> None:
    try:  # make the rename itself durable; not every platform lets a directory be opened
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def write_atomic(path: str | os.PathLike, data: bytes | str) -> None:
    """Write `data` to `path` so that a reader sees either the old file or the complete new one.

    Temp file in the same directory, fsync, `os.replace`, then fsync of the directory where it can be opened;
    on any failure the temp file is removed and the old file is left as it was. The file gets the permissions a
    plain `open(path, "w")` would give it: those of the file it replaces, else 0o666 less the umask.
    """
    write_atomic_files({path: data})


def write_atomic_files(files: dict[str | os.PathLike, bytes | str]) -> None:
    """`write_atomic` for files that belong together (an artifact and its metadata): every temp file is written
    and fsynced first, and only then are they renamed into place, in order. A failure while writing (a full disk, a
    name too long) leaves every old file as it was; only a failing rename, after all the data is safe on disk,
    can leave the group half replaced."""
    pending: list[tuple[str, str]] = []
    try:
        for path, data in files.items():
            path = os.fspath(path)
            pending.append((_write_temp(path, data.encode() if isinstance(data, str) else data), path))
        while pending:
            tmp, path = pending[0]
            os.replace(tmp, path)
            pending.pop(0)
    finally:
        for tmp, _ in pending:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    for directory in {os.path.dirname(os.path.abspath(os.fspath(p))) for p in files}:
        _fsync_dir(directory)


def unwritable_dir(directory: str | os.PathLike) -> str | None:
    """Why no file can be created in `directory` (the OS's reason), or None: probed with a temp file, as
    `write_atomic` would create one, so a read-only disk or a missing permission shows before any work."""
    try:
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as e:
        return e.strerror or str(e)
    return None


def unwritable_file(path: str | os.PathLike) -> str | None:
    """Why `path` cannot be written as a file (a sentence), or None; checked before any work, creating nothing."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return "it is a directory; give a file name inside it"
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        return f"its directory {parent} does not exist"
    reason = unwritable_dir(parent)
    if reason:
        return f"its directory {parent} is not writable ({reason})"
    try:  # the temp name `write_atomic` will use: a name too long for the file system shows here
        fd, tmp = _open_temp(path, parent)
    except OSError as e:
        return f"no file of that name can be created ({e.strerror or e})"
    os.close(fd)
    os.unlink(tmp)
    return None
