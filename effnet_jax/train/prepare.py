"""`effnet prepare FOLDER OUT`: an image folder packed into ArrayRecord shards (format: `records`), in parallel,
resumable.

1. FOLDER is read as training reads it (`ImageFolderSource`: class order, file order, the same refusals).
2. The plan: a fingerprint of the file list (each file's path, label, size and mtime) and the shard boundaries
   (contiguous, near-equal slices of the list). Saved first, atomically.
3. Each missing shard is written by a worker process under a temp name, fsynced, then renamed into place.
4. The metadata (the plan plus each shard's size) is written last; its presence means the set is complete.

A rerun after a kill, a crash or a full disk finds the same plan, removes the temp files the killed run left,
keeps every shard already in place (its record count checked) and writes only the rest. A folder whose files
changed since the plan is refused, as is an OUT holding anything else; every check comes before any write.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import io
import json
import math
import os
import time
from dataclasses import dataclass

from effnet_spec.atomic import unwritable_dir, write_atomic
from effnet_spec.paths import overwrites_source

from . import records

__all__ = ["PER_SHARD", "Prepared", "make_plan", "prepare"]

PER_SHARD = 1024  # images per shard by default: ImageNet's train split becomes 1,252 shards of ~110 MB
_TMP = ".tmp-"


@dataclass(frozen=True)
class Prepared:
    out: str
    images: int
    class_names: tuple[str, ...]
    shards: int
    written: int  # shards this run wrote
    kept: int  # shards an earlier run had completed
    bytes: int  # of all shards
    unreadable: tuple[str, ...]  # files in the shards written now whose header no decoder recognises
    files: str = ""  # what of FOLDER was packed and what not, by extension ("120 .jpg, 3 .webp; not used: 2 .txt")


def make_plan(folder: str, *, shards: int | None = None, per_shard: int | None = None) -> tuple[dict, list]:
    """(plan, [(path relative to folder, label)] in record order) for `folder`.

    Raises:
      ValueError: what `ImageFolderSource` refuses, or more shards than images.
    """
    from .data import ImageFolderSource

    src = ImageFolderSource(folder)
    n = len(src.files)
    if shards is None:
        shards = math.ceil(n / (per_shard or PER_SHARD))
    if not 1 <= shards <= n:
        raise ValueError(f"--shards {shards}: expected 1 to {n} (the number of images in {folder!r})")
    digest = hashlib.sha256()
    items = []
    for path, label in src.files:
        rel = os.path.relpath(path, folder).replace(os.sep, "/")
        st = os.stat(path)
        digest.update(f"{rel}\t{label}\t{st.st_size}\t{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
        items.append((rel, label))
    base, extra = divmod(n, shards)
    counts = [base + (k < extra) for k in range(shards)]
    firsts = _cumulative(counts)
    per_class = collections.Counter(label for _, label in items)
    plan = {
        "format": records.FORMAT,
        "version": records.VERSION,
        "source": os.path.abspath(folder),
        "class_names": list(src.class_names),
        "class_counts": [per_class[c] for c in range(len(src.class_names))],
        "files": {"used": dict(src.found), "not_used": dict(src.ignored)},  # by extension, for the data line
        "num_records": n,
        "fingerprint": "sha256:" + digest.hexdigest(),
        "writer_options": records.WRITER_OPTIONS,
        "shards": [
            {"file": records.shard_name(k, shards), "first": f, "count": c}
            for k, (f, c) in enumerate(zip(firsts, counts))
        ],  # fmt: skip
    }
    return plan, items


def _files(plan: dict) -> str:
    from ..images import describe_files

    files = plan.get("files") or {}
    return describe_files(files.get("used", {}), files.get("not_used", {}))


def _inside(path: str, folder: str) -> bool:
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([path, folder]) == folder


def _cumulative(counts: list[int]) -> list[int]:
    out, total = [], 0
    for c in counts:
        out.append(total)
        total += c
    return out


def _identity(plan: dict) -> tuple:
    """What must match for a rerun to continue a plan: the files and the cut, not where the folder now lives."""
    shards = tuple((s["file"], s["first"], s["count"]) for s in plan.get("shards", ()))
    return plan.get("fingerprint"), tuple(plan.get("class_names", ())), shards, plan.get("writer_options")


def _ours(name: str) -> bool:
    """A file prepare writes in OUT (complete or temp)."""
    name = name[len(_TMP) :] if name.startswith(_TMP) else name
    return name.startswith((records.PLAN, records.METADATA)) or (
        name.startswith("data-") and records.SHARD_SUFFIX in name
    )


def check_not_the_folder(folder: str, out: str) -> None:
    """OUT that is FOLDER, or inside it (by path or through a link), would be read as a class sub-folder of FOLDER
    and its shards mixed with the images: refused (ValueError, one line) before anything is read or written."""
    how = overwrites_source(out, folder, inside=True)
    if how == "inside it":
        raise ValueError(f"OUT {out!r} is inside FOLDER {folder!r}: it would read as a class sub-folder; "
                         "put the shards elsewhere")  # fmt: skip
    if how:
        raise ValueError(f"OUT {out!r} is FOLDER {folder!r} ({how}): the shards would be written among its "
                         "images; put them elsewhere")  # fmt: skip


def _check_out(folder: str, out: str, plan: dict) -> str:
    """'new', 'resume' or 'complete'; raises ValueError (one line) for an OUT this plan must not write to."""
    if os.path.lexists(out) and not os.path.isdir(out):
        raise ValueError(f"OUT {out!r} exists and is not a directory")
    if not os.path.isdir(out):
        parent = os.path.dirname(os.path.abspath(out))
        while not os.path.isdir(parent):
            parent = os.path.dirname(parent)
        reason = unwritable_dir(parent)
        if reason:
            raise ValueError(f"OUT {out!r} cannot be created: {parent} is not writable ({reason})")
        return "new"
    reason = unwritable_dir(out)
    if reason:
        raise ValueError(f"OUT {out!r} is not writable ({reason})")
    done = os.path.isfile(os.path.join(out, records.METADATA))
    if done or os.path.isfile(os.path.join(out, records.PLAN)):
        old = records.read_json(
            os.path.join(out, records.METADATA if done else records.PLAN),
            "prepare metadata" if done else "prepare plan",
        )
        if _identity(old) != _identity(plan):
            held = (f"OUT {out!r} already holds {'a' if done else 'an unfinished'} prepare of {old.get('source')!r} "
                    f"({old.get('num_records')} images of {len(old.get('class_names', ()))} classes in "
                    f"{len(old.get('shards', ()))} shards)")  # fmt: skip
            if _identity(old)[:2] == _identity(plan)[:2]:
                raise ValueError(f"{held}, cut into {len(old['shards'])} shards, not {len(plan['shards'])}: rerun "
                                 f"with --shards {len(old['shards'])}, or give another OUT")  # fmt: skip
            raise ValueError(f"{held}; the files of {folder!r} are not those ({plan['num_records']} images of "
                             f"{len(plan['class_names'])} classes, or changed since): give another OUT, or delete it "
                             "to start over")  # fmt: skip
        return "complete" if done else "resume"
    others = sorted(e for e in os.listdir(out) if not _ours(e))
    if others:
        raise ValueError(f"OUT {out!r} is not empty and holds no effnet prepare ({len(others)} entries, e.g. "
                         f"{others[0]!r}); give a new or empty directory")  # fmt: skip
    orphans = sorted(e for e in os.listdir(out) if not e.startswith(_TMP))  # shards without the plan they came from
    if orphans:
        raise ValueError(f"OUT {out!r} holds shards but no {records.PLAN} to tell which folder they came from "
                         f"(e.g. {orphans[0]!r}); they are not reused: give a new or empty directory, or delete "
                         "them")  # fmt: skip
    return "new"


@contextlib.contextmanager
def _locked(out: str):
    """An exclusive flock on OUT itself: a second prepare into the same OUT is refused, not interleaved."""
    import fcntl

    fd = os.open(out, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(f"OUT {out!r}: another `effnet prepare` is writing to it") from None
        except OSError:
            pass  # a file system without flock: run unlocked
        yield
    finally:
        os.close(fd)


def _open_writer(path: str):
    from array_record.python.array_record_module import ArrayRecordWriter

    return ArrayRecordWriter(path, records.WRITER_OPTIONS)


def _looks_like_an_image(payload: bytes) -> bool:
    """Whether a decoder recognises the header (cheap: no pixels decoded), as the reader training uses does."""
    from ..images import is_image

    return is_image(io.BytesIO(payload))


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_shard(folder: str, out: str, name: str, items: list) -> tuple[str, int, list[str]]:
    """Shard `name` of `items` [(relative path, label)]: written to a temp name, fsynced, renamed when complete.
    Returns (name, bytes, files whose header no decoder recognises); they are stored all the same, so record i
    stays the folder's image i (training skips them as it does in the folder)."""
    tmp = os.path.join(out, f"{_TMP}{name}.{os.getpid()}")
    unreadable = []
    writer = _open_writer(tmp)
    try:
        for rel, label in items:
            with open(os.path.join(folder, *rel.split("/")), "rb") as f:
                payload = f.read()
            if not _looks_like_an_image(payload):
                unreadable.append(rel)
            try:
                writer.write(records.encode_record(label, rel, payload))
            except RuntimeError as e:  # array_record's only error type, a full disk included
                raise OSError(f"writing shard {name} in {out}: {e}") from None
        try:
            writer.close()
        except RuntimeError as e:
            raise OSError(f"writing shard {name} in {out}: {e}") from None
        _fsync(tmp)
        os.replace(tmp, os.path.join(out, name))
    except BaseException:
        with contextlib.suppress(Exception):
            writer.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync(out)
    return name, os.path.getsize(os.path.join(out, name)), unreadable


def _record_count(path: str) -> int:
    from array_record.python.array_record_module import ArrayRecordReader

    reader = ArrayRecordReader(path)
    try:
        return reader.num_records()
    finally:
        reader.close()


def _check_kept(out: str, plan: dict) -> list[str]:
    """The plan's shards already in place, each holding the plan's record count."""
    kept = []
    for s in plan["shards"]:
        path = os.path.join(out, s["file"])
        if not os.path.isfile(path):
            continue
        try:
            count = _record_count(path)
        except Exception as e:  # noqa: BLE001 - array_record raises RuntimeError/ValueError for a damaged file
            count, why = None, f"cannot be read ({type(e).__name__}: {e})"
        else:
            why = f"holds {count} records"
        if count != s["count"]:
            raise ValueError(f"shard {path} {why}; the plan says {s['count']}: delete it and rerun")
        kept.append(s["file"])
    return kept


def _run(jobs: list, workers: int, log) -> tuple[dict, list[str]]:
    """Write `jobs` [(folder, out, name, items)] on `workers` processes (in this one for 1); log progress."""
    sizes, unreadable, t0, last = {}, [], time.monotonic(), 0.0
    images = 0

    def done(name, size, bad, count):
        nonlocal last, images
        sizes[name] = size
        unreadable.extend(bad)
        images += count
        now = time.monotonic()
        if now - last >= 2.0 or len(sizes) == len(jobs):
            last = now
            rate = images / max(now - t0, 1e-9)
            log(f"{len(sizes)}/{len(jobs)} shards written, {images} images, {rate:.0f} images/s")

    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            done(*_write_shard(*job), len(job[3]))
        return sizes, unreadable
    import multiprocessing
    from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait

    # spawn, not fork: the parent has imported grain (threads); the workers import only this module's needs.
    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=multiprocessing.get_context("spawn")) as pool:
        pending = {pool.submit(_write_shard, *job): len(job[3]) for job in jobs}
        while pending:
            finished, _ = wait(pending, return_when=FIRST_EXCEPTION)
            for fut in finished:
                count = pending.pop(fut)
                if fut.exception() is not None:
                    for other in pending:
                        other.cancel()
                    raise fut.exception()
                done(*fut.result(), count)
    return sizes, unreadable


def prepare(
    folder: str,
    out: str,
    *,
    shards: int | None = None,
    per_shard: int | None = None,
    workers: int | None = None,
    log=lambda line: None,
) -> Prepared:
    """Write (or complete) the shards of `folder` in `out`; see the module docstring.

    Raises:
      ValueError: a folder training would refuse, an OUT inside it, not writable, holding something else, or being
        written by another prepare; checked before anything is written.
      OSError: a file that cannot be read, a full disk (the shards complete so far are kept for the rerun).
    """
    check_not_the_folder(folder, out)  # before the folder is scanned
    plan, items = make_plan(folder, shards=shards, per_shard=per_shard)
    _check_out(folder, out, plan)
    log(f"{folder}: {plan['num_records']} images ({_files(plan)}) of {len(plan['class_names'])} classes")
    os.makedirs(out, exist_ok=True)
    with _locked(out):
        state = _check_out(folder, out, plan)  # again, under the lock
        for e in os.listdir(out):
            if e.startswith(_TMP) and _ours(e):  # left by a killed run; no other prepare holds the lock
                os.unlink(os.path.join(out, e))
        if state == "new":
            write_atomic(os.path.join(out, records.PLAN), json.dumps(plan, indent=1))
        kept = _check_kept(out, plan)
        todo = [s for s in plan["shards"] if s["file"] not in kept]
        if kept and todo:
            log(f"{len(kept)} of {len(plan['shards'])} shards already complete; writing the other {len(todo)}")
        jobs = [(folder, out, s["file"], items[s["first"] : s["first"] + s["count"]]) for s in todo]
        _, unreadable = _run(jobs, workers or os.cpu_count() or 1, log)
        shards_meta = [{**s, "bytes": os.path.getsize(os.path.join(out, s["file"]))} for s in plan["shards"]]
        total = sum(s["bytes"] for s in shards_meta)
        if state != "complete":
            write_atomic(os.path.join(out, records.METADATA), json.dumps({**plan, "shards": shards_meta}, indent=1))
    return Prepared(out, plan["num_records"], tuple(plan["class_names"]), len(plan["shards"]), len(todo), len(kept),
                    total, tuple(unreadable), _files(plan))  # fmt: skip
