"""What the refusal tests share: everything under a folder as it is on disk, and the `effnet` CLI run in-process.

A refused command must write nothing and change nothing: the tests compare `snapshot(root)` before and after.
"""

from __future__ import annotations

import os

from effnet_jax.cli import main as cli_main


def snapshot(root, *, skip: frozenset[str] = frozenset()) -> dict[str, tuple[str, bytes | str | None]]:
    """{path relative to `root`: (kind, content)} of every entry under it: a file's bytes, a link's target (links
    are not followed), None for a folder or anything else; entries named in `skip` are left out."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            if name in skip:
                continue
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, root)
            if os.path.islink(path):
                found[rel] = ("link", os.readlink(path))
            elif os.path.isfile(path):
                with open(path, "rb") as f:
                    found[rel] = ("file", f.read())
            else:
                found[rel] = ("folder" if os.path.isdir(path) else "other", None)
    return found


def effnet(argv) -> int:
    """`effnet ARGV` in this process (no allocator re-exec): its exit status, argparse's usage errors included."""
    try:
        return cli_main([str(a) for a in argv], fast_malloc=False)
    except SystemExit as e:
        return e.code
