"""The ArrayRecord form of an image folder that `effnet prepare` writes: the record format, names and metadata.

An ImageNet-size folder is 1.28 M small files, each opened once per epoch (slow on network file systems and
object stores). `effnet prepare FOLDER OUT` packs the files, unchanged, into ArrayRecord shards written with
`group_size:1,uncompressed` (one record per chunk: random access, as Grain reads; JPEG and PNG do not compress
further), and `data=OUT` reads them through `grain.sources.ArrayRecordDataSource` (`data.RecordsSource`).

OUT holds:
  effnet-records.plan.json            written first: the source folder, class names, the file list's fingerprint
                                      and the shard boundaries
  data-KKKKK-of-NNNNN.array_record    shard k: records [first, first + count) of the plan, renamed into place
                                      only when complete
  effnet-records.json                 written last (the plan plus each shard's size): present = complete

Record i, counted across the shards in order, is image i of `ImageFolderSource(FOLDER)` (same class order, same
file order), so one seed gives bit-identical batches from either. Each record is
  label: uint32 LE | n: uint16 LE | path: n bytes UTF-8, relative to FOLDER, "/"-separated | the file's bytes
The file's bytes are stored as they were: lossless, no re-encode, and decoded by the folder's own decode path.
This module is stdlib-only so `prepare`'s worker processes start without importing grain or jax.
"""

from __future__ import annotations

import json
import os
import struct

__all__ = [
    "FORMAT",
    "METADATA",
    "PLAN",
    "VERSION",
    "WRITER_OPTIONS",
    "decode_record",
    "encode_record",
    "is_records_dir",
    "read_metadata",
    "shard_name",
]

FORMAT = "effnet-records"
VERSION = 1
METADATA = "effnet-records.json"
PLAN = "effnet-records.plan.json"
WRITER_OPTIONS = "group_size:1,uncompressed"
SHARD_SUFFIX = ".array_record"
_HEADER = struct.Struct("<IH")  # label, length of the path


def shard_name(k: int, n: int) -> str:
    return f"data-{k:05d}-of-{n:05d}{SHARD_SUFFIX}"


def encode_record(label: int, path: str, payload: bytes) -> bytes:
    name = path.encode("utf-8")
    if len(name) > 0xFFFF:
        raise ValueError(f"path {path[:80]!r}... is {len(name)} bytes long; a record holds paths up to 65535 bytes")
    return _HEADER.pack(label, len(name)) + name + payload


def decode_record(record: bytes) -> tuple[int, str, bytes]:
    """(label, path relative to the folder, the image file's bytes) of one record."""
    label, n = _HEADER.unpack_from(record)
    start = _HEADER.size
    return label, record[start : start + n].decode("utf-8"), record[start + n :]


def is_records_dir(path: str) -> bool:
    """Whether `path` is a directory `effnet prepare` wrote to (complete or not)."""
    return os.path.isfile(os.path.join(path, METADATA)) or os.path.isfile(os.path.join(path, PLAN))


def read_json(path: str, what: str) -> dict:
    """A plan or metadata file, its format and version checked.

    Raises:
      ValueError: unreadable, not JSON, or another format or version.
    """
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{what} {path}: cannot be read ({type(e).__name__}: {e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != VERSION:
        got = (meta.get("format"), meta.get("version")) if isinstance(meta, dict) else type(meta).__name__
        raise ValueError(f"{what} {path}: format/version {got}; expected ({FORMAT!r}, {VERSION})")
    problem = _layout_problem(meta, complete=os.path.basename(path).startswith(METADATA))
    if problem:
        raise ValueError(f"{what} {path}: {problem}; the file is damaged: rerun `effnet prepare` into a new OUT")
    return meta


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _short(value: object) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else f"{text[:60]}... ({len(value)} entries)"


def _layout_problem(meta: dict, *, complete: bool) -> str | None:
    """What in a plan (or, `complete`, a metadata file) is missing, of the wrong type or inconsistent, as
    "key 'K' ..."; None when every key training and `prepare` read is there and agrees with the others."""
    for key, typ in (("source", str), ("fingerprint", str), ("writer_options", str), ("class_names", list),
                     ("class_counts", list), ("num_records", int), ("shards", list)):  # fmt: skip
        if key not in meta:
            return f"key {key!r} is missing"
        if not isinstance(meta[key], typ) or isinstance(meta[key], bool):
            return f"key {key!r} must be {typ.__name__}; got {type(meta[key]).__name__}"
    names, counts, n, shards = meta["class_names"], meta["class_counts"], meta["num_records"], meta["shards"]
    if not names or not all(isinstance(c, str) and c for c in names):
        return "key 'class_names' must be a non-empty list of non-empty strings"
    if len(set(names)) != len(names):
        return f"key 'class_names' names a class twice ({next(c for c in names if names.count(c) > 1)!r})"
    if len(counts) != len(names) or not all(_is_int(c) for c in counts):
        return f"key 'class_counts' must hold one int >= 0 per class ({len(names)}); got {_short(counts)}"
    if n < 0 or sum(counts) != n:
        return f"key 'num_records' is {n}, but 'class_counts' sum to {sum(counts)}"
    want = ("file", "first", "count", "bytes") if complete else ("file", "first", "count")
    first = 0
    for k, shard in enumerate(shards):
        if not isinstance(shard, dict) or not all(w in shard for w in want):
            return f"key 'shards' entry {k} must be an object with {', '.join(want)}"
        if shard["file"] != shard_name(k, len(shards)):  # also keeps a damaged file from naming a path elsewhere
            return f"key 'shards' entry {k} names {shard['file']!r}; expected {shard_name(k, len(shards))!r}"
        if not (_is_int(shard["count"]) and _is_int(shard.get("bytes", 0)) and _is_int(shard["first"])
                and shard["first"] == first):  # fmt: skip
            return f"key 'shards' entry {k} ({shard['file']}): first/count/bytes are not the shard's"
        first += shard["count"]
    if not shards or first != n:
        return f"key 'shards' holds {first} records in {len(shards)} shards; 'num_records' says {n}"
    return None


def read_metadata(root: str) -> dict:
    """The metadata of a complete set of shards in `root`.

    Raises:
      ValueError: `root` holds only a plan (its prepare has not finished), or no readable metadata.
    """
    path = os.path.join(root, METADATA)
    if not os.path.isfile(path) and os.path.isfile(os.path.join(root, PLAN)):
        raise ValueError(
            f"records {root!r} are incomplete: their `effnet prepare` has not finished ({PLAN} but no {METADATA}); "
            "rerun the same command to complete them"
        )
    return read_json(path, "records metadata")
