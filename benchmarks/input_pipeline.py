"""Question: how many images/s does one core decode and augment, from an image folder and from its ArrayRecord
shards, and so how many Grain workers does a given training step rate need?

A generated set of realistic JPEGs (the two scikit-learn sample photos, cropped, colour-jittered and resized to
400-500 x 300-400 px, quality 95: ~63 KB each; ImageNet's train JPEGs are mostly 500x375, ~110 KB), in 10 class
folders, is packed by
`effnet prepare` (timed on one worker). Then, in this one process (one core), over the same shuffled order, with
rounds interleaved and medians taken:
  read      the encoded bytes only (folder: open/read/close per file; shards: one ArrayRecord lookup)
  decode    read + decode to uint8 RGB (the sources' __getitem__)
  train     decode + TrainTransform at 224 with AutoAugment (random resized crop, flip, policy, normalise)
  eval      decode + EvalTransform at 224 (center crop, resize, normalise)
  pipeline  the Grain train_dataset of the trainer (0 workers, batch 32): the train row plus batching
Per core = images per CPU-second of the process (process_time: all its threads, so Grain's map thread pool counts
in full, and other programs' load does not). The files sit in the page cache after the first round (a local disk,
warm): the folder's per-file open cost here is a lower bound; on a network file system or a cold cache it is what
the shards remove.

Run from the repo root: `python benchmarks/input_pipeline.py [--images 400] [--reps 5]`; writes
`benchmarks/results/input-cpu.{json,md}`.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
import warnings

import numpy as np

sys.path.insert(0, os.getcwd())

SIZE = 224
CLASSES = 10
RATES = (1000, 2000, 5000, 10000, 20000)  # training step rates in images/s, for the worker table


def make_folder(root: str, n: int, seed: int = 0) -> int:
    """`n` JPEGs in CLASSES class folders, made from scikit-learn's sample photos; returns their total bytes."""
    from PIL import Image, ImageEnhance
    from sklearn.datasets import load_sample_images

    photos = [Image.fromarray(a) for a in load_sample_images().images]  # china.jpg, flower.jpg: 640x427
    rng = np.random.default_rng(seed)
    total = 0
    for i in range(n):
        photo = photos[i % len(photos)]
        w, h = photo.size
        cw, ch = int(w * rng.uniform(0.5, 1.0)), int(h * rng.uniform(0.6, 1.0))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        out = (int(rng.integers(400, 501)), int(rng.integers(300, 401)))  # ImageNet's are mostly 500x375
        im = photo.crop((x, y, x + cw, y + ch)).resize(out, Image.BICUBIC)
        im = ImageEnhance.Color(im).enhance(rng.uniform(0.6, 1.4))
        if rng.random() < 0.5:
            im = im.transpose(Image.FLIP_LEFT_RIGHT)
        d = os.path.join(root, f"class{i % CLASSES:02d}")
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, f"{i:05d}.jpg")
        im.save(path, quality=95)
        total += os.path.getsize(path)
    return total


def rates(sources: dict, n: int, reps: int) -> dict[str, dict[str, float]]:
    """images per CPU-second (all threads of this process: Grain maps on a thread pool) and per wall-second of each
    (stage, source): medians of `reps` interleaved rounds over `n` images."""
    from effnet_jax.train.augment import EvalTransform, TrainTransform
    from effnet_jax.train.data import Batches, train_dataset
    from effnet_jax.train.records import decode_record

    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    train_tf = TrainTransform(SIZE, mean, std, augment="autoaugment")
    eval_tf = EvalTransform(SIZE, mean, std)
    order = np.random.default_rng(1).permutation(n).tolist()
    folder, shards = sources["folder"], sources["shards"]

    def read_folder():
        for i in order:
            with open(folder.files[i][0], "rb") as f:
                f.read()

    def read_shards():
        for i in order:
            decode_record(shards._records[i])

    def stage(src, fn):
        return lambda: [fn(src, i) for i in order]

    def pipeline(src):
        batch = 32
        steps = n // batch
        return lambda: sum(1 for _ in train_dataset(src, train_tf, seed=0, steps=steps, batches=Batches(batch)))

    calls = {("read", "folder"): read_folder, ("read", "shards"): read_shards}
    for name, src in sources.items():
        calls[("decode", name)] = stage(src, lambda s, i: s[i])
        calls[("train", name)] = stage(src, lambda s, i: train_tf(s[i][0], np.random.default_rng([0, i])))
        calls[("eval", name)] = stage(src, lambda s, i: eval_tf(s[i][0]))
        calls[("pipeline", name)] = pipeline(src)
    for fn in calls.values():
        fn()  # warm-up: page cache, lazily opened readers, imports
    cpu: dict = {k: [] for k in calls}
    wall: dict = {k: [] for k in calls}
    names = list(calls)
    for rep in range(reps):  # interleaved rounds in a rotating order, as effnet_jax.bench.harness.interleaved
        for k in names[rep % len(names) :] + names[: rep % len(names)]:
            c, w = time.process_time(), time.perf_counter()
            calls[k]()
            cpu[k].append(time.process_time() - c)
            wall[k].append(time.perf_counter() - w)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for stage_name, src in names:
        count = (n // 32) * 32 if stage_name == "pipeline" else n
        out.setdefault(stage_name, {})[src] = {
            "per_cpu_s": count / statistics.median(cpu[(stage_name, src)]),
            "per_wall_s": count / statistics.median(wall[(stage_name, src)]),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    warnings.simplefilter("ignore")

    import array_record  # noqa: F401 - its version is recorded
    import grain
    import PIL
    from PIL import features

    from effnet_jax.bench.harness import environment
    from effnet_jax.bench.report import write_results
    from effnet_jax.train.data import ImageFolderSource, RecordsSource
    from effnet_jax.train.prepare import prepare

    tmp = tempfile.mkdtemp(prefix="effnet-input-")
    folder, out = os.path.join(tmp, "folder"), os.path.join(tmp, "shards")
    folder_bytes = make_folder(folder, args.images)
    t = time.perf_counter()
    p = prepare(folder, out, per_shard=100, workers=1)
    prepare_s = time.perf_counter() - t
    sources = {"folder": ImageFolderSource(folder), "shards": RecordsSource(out)}
    r = rates(sources, args.images, args.reps)

    from importlib.metadata import version

    env = {
        **environment("cpu"),
        "load_avg_end": os.getloadavg(),
        "pillow": PIL.__version__,
        "libjpeg_turbo": features.check_feature("libjpeg_turbo"),
        "grain": version("grain"),
        "array_record": version("array_record"),
        "numpy": np.__version__,
    }
    del grain
    per_core = {src: r["pipeline"][src]["per_cpu_s"] for src in ("folder", "shards")}
    workers = {str(rate): {src: math.ceil(rate / v) for src, v in per_core.items()} for rate in RATES}
    result = {
        "env": env,
        "question": "decode + augment images/s per core, image folder vs ArrayRecord shards; Grain workers per rate",
        "images": args.images,
        "reps": args.reps,
        "size": SIZE,
        "folder_mb": folder_bytes / 2**20,
        "shards_mb": p.bytes / 2**20,
        "shards": p.shards,
        "prepare_images_per_s_one_worker": args.images / prepare_s,
        "images_per_s_per_core": r,
        "workers_for_rate": workers,
    }
    lines = [
        "# Input pipeline on CPU: decode + augment per core, image folder vs ArrayRecord shards",
        "",
        f"{env['cpu']}, {env['cpu_count']} cores (load {env['load_avg_start'][0]:.1f} at start, "
        f"{env['load_avg_end'][0]:.1f} at end); Pillow {env['pillow']} (libjpeg-turbo: {env['libjpeg_turbo']}), "
        f"grain {env['grain']}, array_record {env['array_record']}, numpy {env['numpy']}. {args.images} JPEGs of "
        f"400-500 x 300-400 px ({folder_bytes / args.images / 1024:.0f} KB mean) in {CLASSES} classes; one process; "
        f"per core = images per CPU-second of the process (Grain maps on threads), medians of {args.reps} "
        "interleaved rounds; files in the page cache (local disk, warm).",
        "",
        "| stage | folder img/s per core | shards img/s per core | shards / folder | wall img/s folder / shards |",
        "|---|---|---|---|---|",
    ]
    names = {
        "read": "read the encoded bytes",
        "decode": "read + decode (uint8 RGB)",
        "train": f"decode + TrainTransform {SIZE} AutoAugment",
        "eval": f"decode + EvalTransform {SIZE}",
        "pipeline": "Grain train_dataset, 0 workers, batch 32",
    }
    for k, label in names.items():
        f, s = r[k]["folder"]["per_cpu_s"], r[k]["shards"]["per_cpu_s"]
        fw, sw = r[k]["folder"]["per_wall_s"], r[k]["shards"]["per_wall_s"]
        lines.append(f"| {label} | {f:,.0f} | {s:,.0f} | {s / f:.2f}x | {fw:,.0f} / {sw:,.0f} |")
    lines += [
        "",
        f"`effnet prepare` on one worker: {args.images / prepare_s:,.0f} images/s; {p.shards} shards of "
        f"{p.bytes / 2**20:.1f} MiB for {folder_bytes / 2**20:.1f} MiB of files "
        f"({100 * (p.bytes / folder_bytes - 1):+.1f}%).",
        "",
        "Grain workers a training rate needs: ceil(rate / the pipeline row's per-core rate), each worker a core of "
        "its own, no headroom:",
        "",
        "| images/s | workers (folder) | workers (shards) |",
        "|---|---|---|",
        *(f"| {rate:,} | {w['folder']} | {w['shards']} |" for rate, w in ((int(k), v) for k, v in workers.items())),
    ]
    write_results(args.out, "input-cpu", result, "\n".join(lines))


if __name__ == "__main__":
    main()
