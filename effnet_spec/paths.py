"""What a command may read from and write to, checked before any work (stdlib only, so both twins use it).

`not_a_file(path)`: why a path given as a file (weights, coefficients) cannot be read as one: missing, a directory,
or not a regular file at all (`/dev/null`, `/dev/zero`, a named pipe: reading one returns nothing, never ends, or
waits for a writer).

`overwrites_source(out, src)`: how writing OUT would replace or corrupt the input SRC: the same path, the same
file reached through a symbolic link or a hard link (compared by device and inode, so a bind mount is caught
too), or a path inside the SRC folder. `check_not_source` raises it as one line; `effnet convert`, `effnet export`
and `effnet prepare` (and their Python APIs) call it before they write anything.
"""

from __future__ import annotations

import os
import stat

__all__ = ["check_not_source", "not_a_file", "overwrites_source"]

_KINDS = (
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a named pipe"),
    (stat.S_ISSOCK, "a socket"),
)


def not_a_file(path: str | os.PathLike) -> str | None:
    """Why `path` cannot be read as a regular file (a phrase: "no such file", "it is a directory", "not a regular
    file (it is a character device)"), or None. Stats only: a pipe is never opened, so this cannot block."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "no such file"
    except OSError as e:  # a dangling link's loop, a name too long, a permission on the way
        return e.strerror or str(e)
    if stat.S_ISREG(st.st_mode):
        return None
    if stat.S_ISDIR(st.st_mode):
        return "it is a directory"
    kind = next((name for test, name in _KINDS if test(st.st_mode)), "a special file")
    return f"not a regular file (it is {kind})"


def _inside(path: str, folder: str) -> bool:
    return os.path.commonpath([path, folder]) == folder


def overwrites_source(out: str | os.PathLike, src: str | os.PathLike, *, inside: bool = False) -> str | None:
    """How `out` is the source `src` (with `inside`: or lies inside the source folder), as a phrase for a message
    ("the same path", "a symbolic link to it", "a hard link to it", "inside it", ...), or None when writing `out`
    cannot touch `src` (or `src` does not exist)."""
    out, src = os.fspath(out), os.fspath(src)
    if not os.path.lexists(src):
        return None
    if os.path.abspath(out) == os.path.abspath(src):
        return "the same path"
    real_out, real_src = os.path.realpath(out), os.path.realpath(src)
    if real_out == real_src:
        return "a symbolic link to it" if os.path.islink(out) else "the same path through a symbolic link"
    try:
        same = os.path.exists(out) and os.path.samefile(out, src)
    except OSError:
        same = False
    if same:  # same device and inode under unrelated paths
        return "a hard link to it" if os.path.isfile(src) else "the same folder under another name"
    if inside and os.path.isdir(real_src) and _inside(real_out, real_src):
        return "inside it"
    return None


def check_not_source(src: str | os.PathLike, out: str | os.PathLike, *, inside: bool = False) -> None:
    """Refuse an `out` that `overwrites_source` finds is `src` (with `inside`: or lies inside the source folder).

    Raises:
        ValueError: one line naming both paths and how they are the same.
    """
    out, src = os.fspath(out), os.fspath(src)
    how = overwrites_source(out, src, inside=inside)
    if how == "inside it":
        raise ValueError(f"cannot write {out}: it lies inside the input folder {src}; give another output path")
    if how:
        raise ValueError(f"cannot write {out}: it is the input {src} ({how}), which it would replace; give another "
                         "output path")  # fmt: skip
