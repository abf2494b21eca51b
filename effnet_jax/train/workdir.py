"""A run's workdir before the run: proven writable, another run's records set aside, and the checkpoint a resume
would continue from (read before anything else, since it says what the model is)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

from effnet_spec.atomic import unwritable_dir

from .checkpoint import Checkpointer
from .config import TrainConfig
from .metrics import note

__all__ = ["RECORDS", "check_workdir", "checked_workdir", "saved_meta", "set_aside_records"]

# What a run writes besides its checkpoints.
RECORDS = ("config.json", "metrics.jsonl", "tb", "curves.png", "summary.json")


def check_workdir(workdir: str) -> str | None:
    """Create `workdir` if needed and prove it writable, so a bad path is one line before any work.

    Returns the topmost folder this call created (`workdir` or a parent of it), or None when it existed.
    Raises:
        ValueError: the path is a file, or cannot be created or written.
    """
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ValueError(f"workdir {workdir!r} is a file, not a directory")
    created = None
    path = os.path.abspath(workdir)
    while not os.path.lexists(path):
        created, path = path, os.path.dirname(path)
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as e:
        raise ValueError(f"workdir {workdir!r} is not writable: {e.strerror or e}") from None
    reason = unwritable_dir(workdir)
    if reason:
        raise ValueError(f"workdir {workdir!r} is not writable: {reason}")
    ckpt_dir = os.path.join(workdir, "checkpoints")
    reason = unwritable_dir(ckpt_dir) if os.path.isdir(ckpt_dir) else None
    if reason:  # found now, not at the first save
        raise ValueError(f"checkpoint folder {ckpt_dir!r} is not writable: {reason}")
    return created


@contextlib.contextmanager
def checked_workdir(workdir: str) -> Iterator[None]:
    """`check_workdir` for the block; a run refused or failed in it before it wrote any file leaves no folder this
    created behind (a mistyped path is not left as an empty run), so a refused run touches nothing on disk. Only
    folders holding no file at all are removed: nothing a run wrote is lost."""
    created = check_workdir(workdir)
    try:
        yield
    except BaseException:
        if created and not any(files for _, _, files in os.walk(created)):
            for folder, _, _ in sorted(os.walk(created), key=lambda entry: -len(entry[0])):  # deepest first
                with contextlib.suppress(OSError):
                    os.rmdir(folder)
        raise


def set_aside_records(workdir: str) -> None:
    """A fresh run in a workdir that holds another run's records (one that died before its first checkpoint) moves
    them to `previous-<UTC time>/`, so metrics, curves and TensorBoard never mix two runs and nothing is lost."""
    found = [name for name in RECORDS if os.path.exists(os.path.join(workdir, name))]
    if not found:
        return
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    dest = os.path.join(workdir, f"previous-{stamp}")
    n = 1
    while os.path.exists(dest):
        n += 1
        dest = os.path.join(workdir, f"previous-{stamp}-{n}")
    os.makedirs(dest)
    for name in found:
        os.replace(os.path.join(workdir, name), os.path.join(dest, name))
    note(f"{workdir} held records of an earlier run without checkpoints ({', '.join(found)}); moved to {dest}")


def saved_meta(cfg: TrainConfig) -> dict | None:
    """The meta of the checkpoint a resume would continue from (None for a fresh run or an empty workdir)."""
    ckpt_dir = os.path.join(cfg.workdir, "checkpoints")
    if not cfg.resume or not os.path.isdir(ckpt_dir):
        return None
    ckpt = Checkpointer(ckpt_dir, read_only=True)
    try:
        latest = ckpt.latest_step()
        return None if latest is None else ckpt.restore(latest)["meta"]
    finally:
        ckpt.close()
