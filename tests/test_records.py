"""ArrayRecord shards (`effnet prepare`): the folder's batches bit for bit, a killed or failed prepare resumes without
rewriting complete shards, bad inputs are one line that touches nothing."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from effnet_jax.cli import main as cli
from effnet_jax.train import records
from effnet_jax.train.augment import EvalTransform, TrainTransform
from effnet_jax.train.data import Batches, ImageFolderSource, RecordsSource, eval_dataset, make_source, train_dataset
from effnet_jax.train.prepare import prepare

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
TIMEOUT_S = 120
ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """39 small images of 3 classes: JPEG and PNG, nested, one 16-bit PNG, one file no decoder reads."""
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for c in ("ant", "bee", "cat"):
        (root / c / "more").mkdir(parents=True)
        for i in range(12):
            a = rng.integers(0, 256, (28 + i, 40 - i, 3), dtype=np.uint8)
            a[: 10 + i] //= 3  # some structure, so JPEG is not all noise
            if i % 3 == 0:
                Image.fromarray(a).save(root / c / f"{i:02d}.png")
            else:
                Image.fromarray(a).save(root / c / ("more" if i % 3 == 2 else "") / f"{i:02d}.JPG", quality=85)
    Image.fromarray(rng.integers(0, 65536, (30, 30), dtype=np.uint16)).save(root / "bee" / "deep.png")
    (root / "cat" / "broken.jpg").write_bytes(b"not a jpeg")
    (root / "cat" / "notes.txt").write_text("not an image: not listed")
    return root


def _prepare(folder, out, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return prepare(str(folder), str(out), **kw)


def _quiet(it):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the unreadable image's skip warnings, in both pipelines alike
        return list(it)


def _files(d) -> dict:
    return {e: (d / e).read_bytes() for e in sorted(os.listdir(d))}


def _stats(d) -> dict:
    return {e: (s.st_ino, s.st_mtime_ns, s.st_size) for e in sorted(os.listdir(d)) for s in [os.stat(d / e)]}


@pytest.fixture(scope="module")
def clean(folder, tmp_path_factory):
    """A clean prepare from the command line, 4 shards on 2 worker processes."""
    out = tmp_path_factory.mktemp("clean") / "shards"
    r = subprocess.run([sys.executable, "-m", "effnet_jax", "prepare", str(folder), str(out), "--shards", "4",
                        "--workers", "2"], env=ENV, capture_output=True, text=True, timeout=TIMEOUT_S)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"{out}: 38 images of 3 classes in 4 shards" in r.stdout
    assert "1 files have no image header" in r.stderr and "cat/broken.jpg" in r.stderr
    return out


def test_records_are_the_folder_files_unchanged_in_order(folder, clean):
    src = _quiet([ImageFolderSource(str(folder))])[0]
    meta = json.loads((clean / records.METADATA).read_text())
    assert meta["class_names"] == ["ant", "bee", "cat"] and meta["class_counts"] == [12, 13, 13]
    assert [s["count"] for s in meta["shards"]] == [10, 10, 9, 9] and meta["num_records"] == len(src) == 38
    from array_record.python.array_record_module import ArrayRecordReader

    got = []
    for s in meta["shards"]:
        reader = ArrayRecordReader(str(clean / s["file"]))
        assert reader.num_records() == s["count"] and "group_size:1," in reader.writer_options_string()
        got += [records.decode_record(r) for r in reader.read(list(range(s["count"])))]
    for (label, path, payload), (file, file_label) in zip(got, src.files, strict=True):
        assert (label, os.path.join(str(folder), *path.split("/"))) == (file_label, file)
        assert payload == Path(file).read_bytes()


def test_round_trip_gives_the_folder_batches_bit_for_bit(folder, clean):
    a, b = _quiet([ImageFolderSource(str(folder)), make_source(str(clean), "train")])
    assert isinstance(b, RecordsSource) and (len(b), b.class_names) == (len(a), a.class_names)
    tf = TrainTransform(24, MEAN, STD, augment="autoaugment")
    kw = dict(seed=5, steps=10, batches=Batches(8))  # 80 positions: two epochs and a bit
    train_a, train_b = _quiet(train_dataset(a, tf, **kw)), _quiet(train_dataset(b, tf, **kw))
    assert a.skipped == b.skipped > 0, "the unreadable file is skipped the same way in both"
    ev = EvalTransform(24, MEAN, STD)
    eval_a, eval_b = (_quiet(eval_dataset(s, ev, batches=Batches(16))) for s in (a, b))
    for x, y in zip(train_a + eval_a, train_b + eval_b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    # a resumed stream from the shards starts at its step, as from the folder
    resumed = _quiet(train_dataset(b, tf, **kw, start=7))
    np.testing.assert_array_equal(resumed[0]["image"], train_a[7]["image"])


def test_a_killed_prepare_resumes_without_rewriting_complete_shards(folder, clean, tmp_path):
    out = tmp_path / "shards"
    kill = textwrap.dedent(f"""
        import os, signal
        from effnet_jax.train import prepare as p
        open_writer = p._open_writer
        class Killing:  # SIGKILL after two records of the second shard
            def __init__(self, path):
                self.w, self.n, self.path = open_writer(path), 0, path
            def write(self, record):
                self.w.write(record)
                self.n += 1
                if "data-00001-of" in self.path and self.n == 2:
                    os.kill(os.getpid(), signal.SIGKILL)
            def close(self):
                self.w.close()
        p._open_writer = Killing
        p.prepare({str(folder)!r}, {str(out)!r}, shards=4, workers=1)
    """)
    killed = subprocess.run([sys.executable, "-c", kill], env=ENV, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    tmp, *left = sorted(os.listdir(out))
    assert left == ["data-00000-of-00004.array_record", records.PLAN], "no metadata, no name that looks complete"
    assert tmp.startswith(".tmp-data-00001-of-00004"), "the cut shard has only its temp name"
    with pytest.raises(ValueError, match="are incomplete: their `effnet prepare` has not finished"):
        make_source(str(out), "train")
    before = _stats(out)["data-00000-of-00004.array_record"]

    r = subprocess.run([sys.executable, "-m", "effnet_jax", "prepare", str(folder), str(out), "--shards", "4"],
                       env=ENV, capture_output=True, text=True, timeout=TIMEOUT_S)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert "1 of 4 shards already complete; writing the other 3" in r.stderr
    assert _stats(out)["data-00000-of-00004.array_record"] == before, "a complete shard is never rewritten"
    assert _files(out) == _files(clean), "the resumed set is the clean one, byte for byte, with no temp left"

    again = subprocess.run([sys.executable, "-m", "effnet_jax", "prepare", str(folder), str(out), "--shards", "4"],
                           env=ENV, capture_output=True, text=True, timeout=TIMEOUT_S)  # fmt: skip
    assert again.returncode == 0 and "already complete" in again.stdout and _files(out) == _files(clean)


def test_a_full_disk_keeps_the_complete_shards_and_the_rerun_finishes(folder, clean, tmp_path):
    from _mounts import filled, tmpfs

    with tmpfs(tmp_path / "disk", size="2m") as disk:
        out = os.path.join(disk, "shards")
        filler = filled(disk, leave=300 * 1024)  # room for the plan and two shards (128 KiB each, at least)
        with pytest.raises(OSError, match="No space left|ENOSPC|space"):
            _prepare(folder, out, shards=4, workers=1)
        left = sorted(os.listdir(out))
        assert records.METADATA not in left and not [e for e in left if e.startswith(".tmp-")]
        kept = [e for e in left if e.startswith("data-")]
        assert kept, left
        os.unlink(filler)
        r = _prepare(folder, out, shards=4, workers=1)
        assert (r.kept, r.written) == (len(kept), 4 - len(kept))
        assert _files(Path(out)) == _files(clean)


def _refused(capsys, argv, *watch) -> str:
    before = [sorted(os.walk(w)) for w in watch]
    rc = cli(["prepare", *map(str, argv)], fast_malloc=False)
    err = capsys.readouterr().err.strip()
    assert rc != 0 and len(err.splitlines()) == 1 and err.startswith("effnet prepare: "), err
    assert [sorted(os.walk(w)) for w in watch] == before, "a refused prepare touches nothing"
    return err


def test_bad_inputs_are_one_line_and_touch_nothing(folder, clean, tmp_path, capsys):
    out = tmp_path / "out"
    assert "nope' does not exist" in _refused(capsys, [tmp_path / "nope", out], tmp_path)
    (tmp_path / "empty" / "a").mkdir(parents=True)
    assert "is empty" in _refused(capsys, [tmp_path / "empty", out], tmp_path)
    assert "inside FOLDER" in _refused(capsys, [folder, folder / "shards"], folder)
    assert "--shards 39: expected 1 to 38" in _refused(capsys, [folder, out, "--shards", "39"], tmp_path)
    assert "--workers 0: expected an integer in 1..1024" in _refused(capsys, [folder, out, "--workers", "0"], tmp_path)
    (tmp_path / "file").write_text("x")
    assert "exists and is not a directory" in _refused(capsys, [folder, tmp_path / "file"], tmp_path)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "mine.txt").write_text("x")
    assert "holds no effnet prepare (1 entries, e.g. 'mine.txt')" in _refused(
        capsys, [folder, tmp_path / "busy"], tmp_path
    )
    err = _refused(capsys, [folder, clean, "--shards", "3"], clean)
    assert "cut into 4 shards, not 3: rerun with --shards 4" in err
    other = tmp_path / "other"
    for c in ("x", "y"):
        (other / c).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(other / c / "0.png")
    assert "already holds a prepare of" in _refused(capsys, [other, clean], clean)
    orphans = tmp_path / "orphans"  # shards whose plan and metadata were deleted: never matched to a new folder
    orphans.mkdir()
    for shard in sorted(clean.glob("data-*")):
        shutil.copy(shard, orphans / shard.name)
    assert "holds shards but no effnet-records.plan.json" in _refused(capsys, [folder, orphans], orphans)


def test_an_unwritable_out_is_refused(folder, tmp_path, capsys):
    from _mounts import remount, tmpfs

    with tmpfs(tmp_path / "ro", size="1m") as ro:
        remount(ro, read_only=True)
        try:
            err = _refused(capsys, [folder, os.path.join(ro, "shards")], ro)
        finally:
            remount(ro, read_only=False)
    assert "cannot be created" in err and "is not writable" in err


def test_damaged_records_are_refused_in_one_line(clean, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(clean, broken)
    (broken / "data-00002-of-00004.array_record").unlink()
    with pytest.raises(ValueError, match=r"1 of the 4 shards in effnet-records.json are missing"):
        RecordsSource(str(broken))
    (broken / "data-00002-of-00004.array_record").write_bytes(b"\0" * 100)
    with pytest.raises(ValueError, match="a shard cannot be read"):
        RecordsSource(str(broken))
    meta = json.loads((clean / records.METADATA).read_text())
    (broken / records.METADATA).write_text(json.dumps({**meta, "version": 99}))
    with pytest.raises(ValueError, match=r"format/version \('effnet-records', 99\); expected"):
        RecordsSource(str(broken))


@pytest.mark.slow
def test_training_reads_the_shards(clean, tmp_path):
    """`--set data=<shards>` end to end, on two Grain worker processes (the shard readers are pickled to them)."""
    from effnet_jax.train import loop
    from effnet_jax.train.config import from_preset

    sets = [f"data={clean}", f"val_data={clean}", "stages=1", "resolution=16", "global_batch=8", "eval_batch=16",
            "steps=2", "log_every=1", "progress=false", "num_workers=2", f"workdir={tmp_path / 'run'}"]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = loop.train(from_preset("smoke", sets))
    assert summary["steps"] == 2
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["count"] for r in rows if r["kind"] == "val"][-1] == 38
