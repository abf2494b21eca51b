"""Input pipeline on Grain: sources (embedded digits, image folder, its ArrayRecord shards, synthetic), per-host
slicing, batching.

The train stream is a pure function of (seed, position): global position p of the run is example
`perm_e[p % n]` of epoch `e = p // n`, where `perm_e` is a permutation seeded by (seed, e), and its
augmentation draws from a numpy Generator seeded by (seed, e, example index). A step's global batch is
positions [step * B, (step + 1) * B); host h of H takes the h-th contiguous slice of B / H. The Grain
dataset is indexed by step, so a resumed run starts the stream at its checkpoint's step (`start`) and sees
exactly the batches an uninterrupted one would, with any number of worker processes (no iterator state is
saved, so `num_workers` may change between runs). The stream runs across epoch boundaries, so every batch is
full (no recompilation).

Eval batches are the split in order, padded to a multiple of the eval batch with `mask == 0` rows.
"""

from __future__ import annotations

import collections
import functools
import gzip
import importlib.util
import io
import logging
import math
import os
import warnings
from dataclasses import dataclass

import grain
import numpy as np

from .. import images
from ..logs import install_one_line_warnings, skip_warning, skipped_summary
from . import mixing, records
from .augment import EvalTransform, TrainTransform
from .progressive import stage_at

__all__ = [
    "DIGITS_SIDE",
    "DIGITS_VAL_SHARE",
    "Batches",
    "PlaceholderNames",
    "DigitsSource",
    "EncodedImages",
    "ImageFolderSource",
    "RecordsSource",
    "StageInput",
    "SyntheticSource",
    "check_classes",
    "decode_image",
    "describe",
    "digits_split",
    "eval_dataset",
    "make_source",
    "train_dataset",
]

log = logging.getLogger(__name__)

DIGITS_SIDE = 32  # digits are stored upscaled from 8x8 to this side (bicubic), then cropped/resized per model
DIGITS_VAL_SHARE = 0.2  # fixed stratified split: 1,437 train / 360 val of scikit-learn's 1,797 digits
DIGITS_SPLIT_SEED = 0  # the split never depends on the run's seed, so every run validates on the same 360
MAX_SUBSTITUTES = 100  # consecutive unreadable images tolerated before giving up on a folder
PROBE = 16  # images decoded when a folder is opened, to refuse one of which none is readable


def digits_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """One side of the fixed digits split as scikit-learn gives it: 8x8 float images of ink 0..16, int32 labels.

    The one place the split is made, so `DigitsSource` and baselines fitted on the raw pixels
    (benchmarks/digits.py) see the same 1,437 / 360 images. The split is data (`digits_val.txt`, scikit-learn's
    stratified `train_test_split`; tests/test_data.py checks it against a fresh one) and the images are read from the
    file scikit-learn carries, as `load_digits` reads it: importing scikit-learn cost every run a second at its start.
    """
    if split not in ("train", "val"):
        raise ValueError(f"digits split must be 'train' or 'val', got {split!r}")
    images, labels = _digits()
    val = np.zeros(len(labels), bool)
    val[np.loadtxt(os.path.join(os.path.dirname(__file__), "digits_val.txt"), dtype=np.int64).ravel()] = True
    keep = np.flatnonzero(val if split == "val" else ~val)
    return images[keep], labels[keep].astype(np.int32)


@functools.cache  # both sides of the split read it; callers get copies (indexed by the split)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 digits, (images (N, 8, 8) float64, labels (N,) int), as `load_digits()` returns them."""
    found = importlib.util.find_spec("sklearn")
    path = found and os.path.join(found.submodule_search_locations[0], "datasets", "data", "digits.csv.gz")
    if not path or not os.path.isfile(path):  # not installed (the import names what to install), or moved
        from sklearn.datasets import load_digits

        digits = load_digits()
        return digits.images, digits.target
    with gzip.open(path, "rt") as f:
        data = np.loadtxt(f, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)


class DigitsSource:
    """scikit-learn's handwritten digits (UCI optdigits test set: 1,797 8x8 greyscale, 10 classes) as RGB."""

    def __init__(self, split: str):
        from PIL import Image

        images, self.labels = digits_split(split)
        small = (images * (255.0 / 16.0)).round().astype(np.uint8)  # 0..16 ink -> 0..255
        big = [np.asarray(Image.fromarray(im).resize((DIGITS_SIDE, DIGITS_SIDE), Image.BICUBIC)) for im in small]
        self.images = np.repeat(np.stack(big)[..., None], 3, axis=-1)
        self.class_names = tuple(str(d) for d in range(10))
        self.mirror_invariant = False  # a mirrored 2 is not a 2: the train transform never flips digits

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return self.images[i], int(self.labels[i])


class SyntheticSource:
    """Random uint8 images with random labels: exercises the pipeline and the step without any files."""

    def __init__(self, size: int, num_classes: int, length: int = 256, seed: int = 0):
        if num_classes < 1:
            raise ValueError(f"synthetic data needs num_classes >= 1, got {num_classes}")
        rng = np.random.default_rng(seed)
        self.images = rng.integers(0, 256, (length, size, size, 3), dtype=np.uint8)
        self.labels = rng.integers(0, num_classes, length).astype(np.int32)
        self.class_names = PlaceholderNames.of(num_classes)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return self.images[i], int(self.labels[i])


def decode_image(file, name: str | None = None) -> np.ndarray:
    """An encoded image (a path or a binary file object) as uint8 RGB (H, W, 3), upright: `images.read_image`, the
    one decode path of every reader (folder, shards, eval, predict), so all give identical arrays.

    Raises:
      ValueError: not an image Pillow decodes (the message starts with `name`). OSError: the path cannot be opened.
    """
    return images.read_image(file, name)


class EncodedImages:
    """Base of the sources that hold encoded image files (a folder, ArrayRecord shards): one decode path, an
    unreadable image skipped with a warning and replaced by the next readable one (so batch shapes never change;
    `skipped` counts them in this process), and a probe when opened. Subclasses set `kind`, `root` and `_item`."""

    kind = "image source"
    root = ""
    skipped = 0

    def __len__(self) -> int:
        raise NotImplementedError

    def _item(self, i: int) -> tuple[object, int, str]:
        """(path or binary file object, label, name for messages) of image `i`."""
        raise NotImplementedError

    def _probe(self) -> None:
        """Decode up to PROBE images spread over the source before training starts: a source of which none can be
        read (the wrong folder, a failed copy) is one line now, not thousands of skip warnings mid-run."""
        m = min(PROBE, len(self))
        picks = sorted({round(k * (len(self) - 1) / max(1, m - 1)) for k in range(m)})
        errors = []
        for i in picks:
            file, _, name = self._item(i)
            try:
                decode_image(file, name)
                return
            except Exception as e:  # noqa: BLE001 - PIL raises many types for a bad file; each means "unreadable"
                errors.append((name, e))
        name, e = errors[0]
        raise ValueError(
            f"{self.kind} {self.root!r}: none of the {len(picks)} images tried could be read (first: {name!r}: "
            f"{type(e).__name__}: {_without(e, name)})"
        )

    def _read(self, i: int) -> tuple[np.ndarray, int] | None:
        file, label, name = self._item(i)  # outside the try: a source that cannot deliver the bytes is an error
        try:
            return decode_image(file, name), label
        except Exception as e:  # noqa: BLE001 - any error decoding one file means "skip it"
            self.skipped += 1
            skip_warning(self, name, f"{type(e).__name__}: {_without(e, name)}")  # one line, once per file
            return None

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        for k in range(MAX_SUBSTITUTES):
            got = self._read((i + k) % len(self))
            if got is not None:
                return got
        raise ValueError(
            f"{self.kind} {self.root!r}: {MAX_SUBSTITUTES} consecutive images from {self._item(i)[2]!r} on are "
            f"unreadable ({skipped_summary(self)}); fix or remove them"
        )


def _without(e: Exception, name: str) -> str:
    """The message of `e` without the leading "NAME: " the reader puts in (the caller names the file itself)."""
    text = str(e)
    return text[len(name) + 2 :] if text.startswith(f"{name}: ") else text


class ImageFolderSource(EncodedImages):
    """`root/<class>/.../<image>`; classes are the sorted sub-folder names, images sorted by path. An image is a
    file with an extension Pillow decodes (`images.image_extensions`: .jpg, .png, .webp, .bmp, .gif, .tif, ...);
    hidden files and folders (`.name`) are not read. `found` counts the images by extension, `ignored` the files
    not used (other extensions, hidden, or outside any class folder), for the data line.

    Raises:
      ValueError: root missing, no images, fewer than two classes, or none of the probed images readable.
    """

    kind = "image folder"

    def __init__(self, root: str):
        if not os.path.isdir(root):
            raise ValueError(f"image folder {root!r} does not exist or is not a directory")
        entries = list(os.scandir(root))
        classes = sorted(d.name for d in entries if d.is_dir() and not d.name.startswith("."))
        files: list[tuple[str, int]] = []
        found, ignored = collections.Counter(), collections.Counter()
        empty = {}
        for label, name in enumerate(classes):
            kept, other = [], collections.Counter()
            for dirpath, dirnames, names in os.walk(os.path.join(root, name)):
                dirnames[:] = [d for d in dirnames if not d.startswith(".")]  # .ipynb_checkpoints, .thumbnails
                for f in names:
                    if images.is_image_name(f):
                        kept.append(os.path.join(dirpath, f))
                    else:
                        other["hidden" if f.startswith(".") else images.extension(f)] += 1
            if not kept:
                empty[name] = other
            ignored.update(other)
            found.update(images.extension(f) for f in kept)
            files.extend((f, label) for f in sorted(kept))
        loose = [e.name for e in entries if e.is_file() and images.is_image_name(e.name)]
        if not classes and loose:
            raise ValueError(
                f"image folder {root!r} holds {len(loose)} images directly; expected one sub-folder per class "
                f"({os.path.join(root, '<class>', '<image>')}), whose names become the class names"
            )
        if not files:
            what = f" (their files: {images.tally(ignored)})" if ignored else ""
            raise ValueError(
                f"image folder {root!r} is empty: expected one sub-folder per class holding image files (any "
                f"format Pillow decodes: .jpg, .png, .webp, .bmp, .gif, .tif, ...), found {len(classes)} "
                f"sub-folders{what} and no images"
            )
        if len(classes) - len(empty) < 2:
            raise ValueError(
                f"image folder {root!r} has images of only one class ({[c for c in classes if c not in empty]}); "
                "classification needs at least two class sub-folders"
            )
        if empty:
            held = {c: images.tally(other) for c, other in empty.items() if other}
            warnings.warn(
                f"image folder {root!r}: class folders without images: {list(empty)}"
                + (f" (they hold {'; '.join(f'{c}: {t}' for c, t in held.items())})" if held else ""),
                stacklevel=2,
            )
        if loose:  # next to the class folders: not an example of any class
            ignored["outside class folders"] += len(loose)
        self.root = root
        self.files = files
        self.class_names = tuple(classes)
        self.found, self.ignored = found, ignored
        self.skipped = 0
        self._probe()

    def describe(self) -> str:
        """What was used and what was not, by extension: "120 .jpg, 3 .webp; not used: 2 .txt, 1 hidden"."""
        return images.describe_files(self.found, self.ignored)

    def __len__(self) -> int:
        return len(self.files)

    def _item(self, i: int) -> tuple[object, int, str]:
        path, label = self.files[i]
        return path, label, path


class RecordsSource(EncodedImages):
    """The ArrayRecord shards `effnet prepare` wrote from an image folder (format: `records`), read through
    `grain.sources.ArrayRecordDataSource`: image i is the folder's image i, decoded the same way.

    Raises:
      ValueError: an unfinished prepare, a shard missing or unreadable, a record count other than the metadata's.
    """

    kind = "records"

    def __init__(self, root: str):
        meta = records.read_metadata(root)
        paths = [os.path.join(root, s["file"]) for s in meta["shards"]]
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            raise ValueError(f"records {root!r}: {len(missing)} of the {len(paths)} shards in {records.METADATA} are "
                             f"missing (first: {missing[0]!r})")  # fmt: skip
        try:
            self._records = grain.sources.ArrayRecordDataSource(paths)
        except Exception as e:  # noqa: BLE001 - array_record raises RuntimeError/ValueError/OSError for a bad file
            raise ValueError(f"records {root!r}: a shard cannot be read ({type(e).__name__}: {e})") from None
        if len(self._records) != meta["num_records"]:
            raise ValueError(f"records {root!r}: the shards hold {len(self._records)} records; "
                             f"{records.METADATA} says {meta['num_records']}")  # fmt: skip
        self.root = root
        self.source = meta["source"]
        self.class_names = tuple(meta["class_names"])
        self._files = meta.get("files") or {}  # absent in shards written before it was recorded
        self.skipped = 0
        self._probe()

    def describe(self) -> str:
        """The source folder's files, by extension, as `effnet prepare` counted them (empty if not recorded)."""
        return images.describe_files(self._files.get("used", {}), self._files.get("not_used", {}))

    def __len__(self) -> int:
        return len(self._records)

    def _item(self, i: int) -> tuple[object, int, str]:
        try:
            record = self._records[i]
        except Exception as e:  # noqa: BLE001 - array_record raises RuntimeError for an I/O error: not a bad image
            raise OSError(f"records {self.root!r}: record {i} cannot be read ({type(e).__name__}: {e})") from None
        try:
            label, path, payload = records.decode_record(record)
        except Exception as e:  # noqa: BLE001 - a malformed header (struct/UTF-8 errors): the shard is damaged
            raise OSError(f"records {self.root!r}: record {i} is malformed ({type(e).__name__}: {e})") from None
        return io.BytesIO(payload), label, f"{path} (record {i})"


def make_source(data: str, split: str, *, size: int = 32, num_classes: int = 0):
    """The source for `data` ("digits", "synthetic", a folder `effnet prepare` wrote, or an image folder) and
    `split` ("train"/"val")."""
    if data == "digits":
        return DigitsSource(split)
    if data == "synthetic":
        return SyntheticSource(size, num_classes or 4, seed=0 if split == "train" else 1)
    if not data:
        raise ValueError("no dataset given: set data=<image folder with one sub-folder per class>")
    if records.is_records_dir(data):
        return RecordsSource(data)
    return ImageFolderSource(data)


def describe(source) -> str:
    """What an image folder (or its shards) gave, by extension, for the data line; "" for embedded data."""
    return source.describe() if hasattr(source, "describe") else ""


def _short(names) -> str:
    """A class list for one line: the first four and the last when there are more than six."""
    shown = [repr(n) for n in names]
    if len(shown) > 6:
        shown = [*shown[:4], "...", shown[-1]]
    return "[" + ", ".join(shown) + "]"


def check_classes(names, expected, *, what: str, against: str) -> str | None:
    """Whether examples labelled by position in `names` (the classes of `what`) can be scored against a model or
    training data whose classes are `expected` (`against`'s). `PlaceholderNames` (synthetic data, a head without
    names) say only how many classes there are: then only the counts are compared.

    Labels are positions in the sorted class list, so:
    - different counts: refused (labels beyond the head, or every label after a missing class shifted);
    - a name in both lists at different positions: refused (that class would be scored as another);
    - the same count and no such name (every folder renamed, `cat`/`dog` vs `cats`/`dogs`, WordNet ids vs words):
      allowed, since pairing by position is the only pairing there is and refusing would leave no way to score
      such data; the returned line says so, naming both lists, for the caller to show.

    Raises:
      ValueError: one line naming both lists (shortened) and what is expected.
    """
    n, m = len(names), len(expected)
    named = _named(names) and _named(expected)
    have = f"{what} has {n} classes" + (f" {_short(names)}" if _named(names) else "")
    want = f"{against} has {m}" + (f" {_short(expected)}" if _named(expected) else "")
    if n != m:
        diff = ""
        if named:
            extra = [c for c in names if c not in set(expected)]
            missing = [c for c in expected if c not in set(names)]
            diff = "".join(f"; {k}: {_short(v)}" for k, v in (("missing", missing), ("extra", extra)) if v)
        raise ValueError(f"{have}; {want}{diff}: labels are positions in the sorted class list, so both need the "
                         "same classes (an empty sub-folder keeps a class without images in its place)")  # fmt: skip
    if not named or tuple(names) == tuple(expected):
        return None
    where = {c: j for j, c in enumerate(expected)}
    moved = [(c, i, where[c]) for i, c in enumerate(names) if c in where and where[c] != i]
    if moved:
        c, i, j = moved[0]
        raise ValueError(f"{have}; {want}: {c!r} is label {i} of {what} but label {j} of {against}, so it would be "
                         f"scored as {expected[i]!r}; give both the same class folders")  # fmt: skip
    pairs = [(a, b) for a, b in zip(names, expected) if a != b]
    return (f"{have}; {want}: {len(pairs)} names differ and none is at another position, so classes are paired by "
            f"position ({pairs[0][0]!r} scored as {pairs[0][1]!r}{', ...' if len(pairs) > 1 else ''})")  # fmt: skip


def _named(names) -> bool:
    return not isinstance(names, PlaceholderNames)


class PlaceholderNames(tuple):
    """Class names that say nothing but their count (synthetic data's "0", "1", ...; a head without names)."""

    @classmethod
    def of(cls, n: int) -> PlaceholderNames:
        return cls(str(c) for c in range(n))


@dataclass(frozen=True)
class Batches:
    """How a global batch is cut across hosts: host `host` of `hosts` takes rows [host*local, (host+1)*local)."""

    global_batch: int
    host: int = 0
    hosts: int = 1

    def __post_init__(self) -> None:
        if self.global_batch % self.hosts:
            raise ValueError(f"global batch {self.global_batch} does not divide over {self.hosts} hosts")
        if not 0 <= self.host < self.hosts:
            raise ValueError(f"host index {self.host} out of range for {self.hosts} hosts")

    @property
    def local(self) -> int:
        return self.global_batch // self.hosts

    def position(self, local_index: int) -> int:
        """Global stream position of the `local_index`-th example this host reads."""
        step, row = divmod(local_index, self.local)
        return step * self.global_batch + self.host * self.local + row


@functools.lru_cache(maxsize=4)
def _epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch, 0x5EED]).permutation(n)


@dataclass(frozen=True)
class StageInput:
    """How the steps before `end` (and after the previous stage's end) prepare examples: progressive learning's
    stages (`progressive.plan`) each have their own side, RandAugment magnitude and mixing."""

    end: int
    transform: TrainTransform
    mixup: float = 0.0
    cutmix: float = 0.0


@dataclass(frozen=True)
class _TrainExample:
    """local index -> {"image", "label"} (and the example's mixing draws, `mixing.draw`, in a stage that mixes):
    shuffled per epoch, augmented with rng (seed, epoch, index) as the step's stage says."""

    source: object
    stages: tuple[StageInput, ...]
    seed: int
    batches: Batches

    def __call__(self, local_index: int) -> dict:
        n = len(self.source)
        epoch, k = divmod(self.batches.position(int(local_index)), n)
        index = int(_epoch_permutation(self.seed, epoch, n)[k])
        image, label = self.source[index]
        rng = np.random.default_rng([self.seed, epoch, index])
        step, row = divmod(int(local_index), self.batches.local)
        stage = stage_at(self.stages, step)
        example = {"image": stage.transform(image, rng), "label": np.int32(label)}
        if stage.mixup > 0 or stage.cutmix > 0:
            example.update(mixing.draw(rng, stage.transform.size, row, self.batches.local, stage.mixup, stage.cutmix))
        return example


@dataclass(frozen=True)
class _EvalExample:
    source: object
    transform: EvalTransform
    batches: Batches

    def __call__(self, local_index: int) -> dict:
        p = self.batches.position(int(local_index))
        valid = p < len(self.source)
        image, label = self.source[p if valid else 0]
        return {"image": self.transform(image), "label": np.int32(label), "mask": np.float32(valid)}


def _finish(
    ds: grain.MapDataset, local_batch: int, num_workers: int, start: int = 0, batch_fn=None
) -> grain.IterDataset:
    ds = ds.batch(local_batch, drop_remainder=True)
    it = (ds.map(batch_fn) if batch_fn else ds)[start:].to_iter_dataset()
    if num_workers > 0:
        from absl import flags

        if not flags.FLAGS.is_parsed():  # Grain's workers read absl flags; outside an absl app they are unparsed
            flags.FLAGS.mark_as_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers), worker_init_fn=_ignore_stop_signals)
    return it


def _ignore_stop_signals(worker_index: int, worker_count: int) -> None:
    """Grain workers share the terminal's process group (and SLURM signals every process): a SIGINT or SIGTERM meant
    for the run must not kill them before it writes its checkpoint. The run stops them itself."""
    import signal

    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_IGN)
    install_one_line_warnings()  # a skipped image is one line from a worker too (spawned: the parent's is not kept)


def train_dataset(
    source,
    transform: TrainTransform | tuple[StageInput, ...],
    *,
    seed: int,
    steps: int,
    batches: Batches,
    num_workers: int = 0,
    start: int = 0,
) -> grain.IterDataset:
    """The local batches of steps [start, steps): {"image": (b, s, s, 3) float32, "label": (b,) int32},
    b = batches.local; in a stage that mixes also "label_mix" (b,) int32 and "mix" (b,) float32 (`mixing`).
    `transform` prepares every step's examples, or each stage's its own (`StageInput`s, in step order)."""
    if len(source) == 0:
        raise ValueError("the training split holds no examples")
    stages = (StageInput(steps, transform),) if isinstance(transform, TrainTransform) else tuple(transform)
    ds = grain.MapDataset.range(steps * batches.local).map(_TrainExample(source, stages, seed, batches))
    mixes = any(s.mixup > 0 or s.cutmix > 0 for s in stages)
    return _finish(ds, batches.local, num_workers, start=start, batch_fn=mixing.mix_batch if mixes else None)


def eval_steps(n: int, global_batch: int) -> int:
    return max(1, math.ceil(n / global_batch))


def eval_batch_for(n: int, requested: int, multiple: int) -> int:
    """The global eval batch for a split of `n` examples: `requested`, but no larger than the split rounded up to a
    multiple of `multiple` (the devices): padding beyond the data only costs memory."""
    return min(requested, max(1, math.ceil(n / multiple)) * multiple)


def eval_dataset(source, transform: EvalTransform, *, batches: Batches, num_workers: int = 0) -> grain.IterDataset:
    """The whole split in order, padded to full batches; rows with mask 0 are padding."""
    steps = eval_steps(len(source), batches.global_batch)
    ds = grain.MapDataset.range(steps * batches.local).map(_EvalExample(source, transform, batches))
    return _finish(ds, batches.local, num_workers)
