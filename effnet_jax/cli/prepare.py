"""`effnet prepare FOLDER OUT`: pack an image folder into ArrayRecord shards that `--set data=OUT` trains from.

The files are stored unchanged (lossless) with their labels, so training from OUT gives the batches training from
FOLDER gives, without opening one file per image. Parallel over shards; a killed or failed run resumes when rerun
with the same arguments. See `effnet_jax.train.prepare` and, for the format, `effnet_jax.train.records`.

    effnet prepare imagenet/train shards/train --workers 16
    effnet prepare imagenet/val shards/val
    effnet train --preset b0 --set data=shards/train --set val_data=shards/val
"""

from __future__ import annotations

import argparse
import sys
import warnings
from concurrent.futures.process import BrokenProcessPool


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", metavar="FOLDER", help="image folder: one sub-folder per class (as `data=` takes)")
    p.add_argument("out", metavar="OUT", help="directory for the shards: new, empty, or an unfinished prepare")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--shards", type=int, help="number of shards (default: one per --per-shard images)")
    size.add_argument("--per-shard", dest="per_shard", type=int, help="images per shard (default 1024)")
    p.add_argument("--workers", type=int, help="processes writing shards (default: the number of cores)")


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"effnet prepare: warning: {message}", file=sys.stderr)


def main(args: argparse.Namespace) -> int:
    from ._flags import MAX_WORKERS, out_of_range

    problem = out_of_range(args, {"shards": (1, 2**31 - 1), "per_shard": (1, 2**31 - 1), "workers": (1, MAX_WORKERS)})
    if problem:
        print(f"effnet prepare: {problem}", file=sys.stderr)
        return 2
    from ..train.prepare import check_not_the_folder, prepare

    try:  # OUT that is FOLDER (or inside it) is a usage error, found before the folder is scanned
        check_not_the_folder(args.folder, args.out)
    except ValueError as e:
        print(f"effnet prepare: {e}", file=sys.stderr)
        return 2
    warnings.showwarning = _warning_line  # an empty class folder is one line, not a source location
    try:
        r = prepare(args.folder, args.out, shards=args.shards, per_shard=args.per_shard, workers=args.workers,
                    log=lambda line: print(f"[prepare] {line}", file=sys.stderr, flush=True))  # fmt: skip
    except (OSError, ValueError) as e:
        print(f"effnet prepare: {e}", file=sys.stderr)
        return 1
    except BrokenProcessPool as e:  # a worker killed from outside (the OOM killer): complete shards are kept
        print(f"effnet prepare: a worker process died ({e}); rerun the same command to finish", file=sys.stderr)
        return 1
    except ModuleNotFoundError as e:
        print(f"effnet prepare: {e.name} is not installed (pip install array-record)", file=sys.stderr)
        return 1
    if r.unreadable:
        print(f"effnet prepare: warning: {len(r.unreadable)} files have no image header a decoder recognises "
              f"(stored as they are; training skips them as it does in the folder), first: {r.unreadable[0]!r}",
              file=sys.stderr)  # fmt: skip
    what = f"{r.written} shards written" + (f", {r.kept} kept" if r.kept else "") if r.written else "already complete"
    print(f"{r.out}: {r.images} images of {len(r.class_names)} classes in {r.shards} shards "
          f"({r.bytes / 2**20:.1f} MiB; {what}); train with --set data={r.out}")  # fmt: skip
    return 0
