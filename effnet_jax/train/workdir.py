"""A run's workdir before the run: proven writable, another run's records set aside, the checkpoint a resume
would continue from (read before anything else, since it says what the model is), and the run's settings.

A run's settings are `config.json`, written when it starts, and `segments.jsonl`: one row per resume that changed a
setting a resume may change (`state.check_resumable` refuses the others), `{"step": S, "changed": {key: [before,
after]}, "config": {...}}`, the config in force from step S + 1 on. A separate file, so `config.json` stays the
first segment's config as every reader parses it (`config.from_dict`); it is small and rewritten whole, atomically
(an append cut short would leave half a row), and rows of a segment whose steps a later resume discards (a run
killed before its next checkpoint) are dropped, as `metrics.jsonl`'s are."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator

from effnet_spec.atomic import unwritable_dir, write_atomic

from .checkpoint import Checkpointer
from .config import TrainConfig, to_json
from .metrics import note

__all__ = ["RECORDS", "SEGMENTS", "check_workdir", "checked_workdir", "saved_meta", "set_aside_records", "write_config"]

SEGMENTS = "segments.jsonl"
# What a run writes besides its checkpoints.
RECORDS = ("config.json", SEGMENTS, "metrics.jsonl", "tb", "curves.png", "summary.json")


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
    try:  # the latest step whose meta can be read; `state.restore_or_init` reports (and sets aside) damaged ones
        return None if ckpt.latest_step() is None else ckpt.restore()["meta"]
    finally:
        ckpt.close()


def write_config(cfg: TrainConfig, step: int, saved_config: dict | None) -> None:
    """A fresh run's `config.json`; for a run resumed at `step` from a checkpoint saved under `saved_config`, a row
    in segments.jsonl and one line naming what changed, if anything did (`config.json` is left as it is)."""
    from .state import config_changes

    path = os.path.join(cfg.workdir, "config.json")
    if saved_config is None or not os.path.exists(path):  # a resume without one (deleted): the checkpoint's
        write_atomic(path, (to_json(cfg) if saved_config is None else json.dumps(saved_config, indent=2,
                                                                                 sort_keys=True)) + "\n")  # fmt: skip
    if saved_config is None:
        return
    seg_path = os.path.join(cfg.workdir, SEGMENTS)
    rows, whole = _segments(seg_path)
    kept = [row for row in rows if row["step"] < step]  # a later segment's steps were lost with its run
    changed = config_changes(cfg, saved_config)
    if changed:
        kept.append({"step": step, "changed": changed, "config": json.loads(to_json(cfg))})
        what = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items())
        note(f"resume at step {step} changes {what}; recorded in {seg_path} (config.json keeps the run's first "
             "settings)")  # fmt: skip
    if kept != rows or not whole:
        write_atomic(seg_path, "".join(json.dumps(row, sort_keys=True) + "\n" for row in kept))


def _segments(path: str) -> tuple[list[dict], bool]:
    """The rows of segments.jsonl (none if absent), and whether every line was one; a line that is not a row is
    dropped, with a note."""
    if not os.path.exists(path):
        return [], True
    rows, whole = [], True
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            if isinstance(row, dict) and isinstance(row.get("step"), int):
                rows.append(row)
            elif line.strip():
                whole = False
                note(f"{path}:{n} is not a segment row (a JSON object with its step); dropped")
    return rows, whole
