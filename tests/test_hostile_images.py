"""Hostile input, issue 28 groups 3 and 4: one image reader for train, eval, predict and prepare (EXIF orientation,
every format Pillow decodes, the data line's count by extension), and classes that must agree (val data, eval data,
the head) with a workdir never inside the data. Nothing here compiles a model: every refusal comes before one, and
the eval and predict readers are stopped right after they have read."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from _disk import snapshot
from PIL import Image

from effnet_jax.cli import main as cli_main
from effnet_jax.images import image_extensions, read_image
from effnet_jax.train import data as data_lib
from effnet_jax.train.config import from_preset
from effnet_jax.train.inputs import make_data
from effnet_spec import Preprocessing

W, H = 40, 20  # the stored (sideways) photo; upright it is H wide and W tall


def _sideways_photo(path):
    """A JPEG stored W x H whose EXIF orientation 6 says "rotate 90 degrees clockwise to view": upright it is
    H x W with its white half on top (stored: the left half)."""
    a = np.zeros((H, W, 3), np.uint8)
    a[:, : W // 2] = 255
    exif = Image.new("RGB", (1, 1)).getexif()
    exif[0x0112] = 6
    Image.fromarray(a).save(path, exif=exif.tobytes(), quality=95)


def _upright(a: np.ndarray) -> bool:
    return a.shape[:2] == (W, H) and a[: W // 2].mean() > 240 and a[W // 2 :].mean() < 15


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Two classes: `floats` holds only float TIFFs; `mixed` a sideways phone photo, WebP, BMP, GIF, an RGBA PNG,
    plus a text file and a hidden file that are not images."""
    root = tmp_path_factory.mktemp("data")
    (root / "floats").mkdir()
    (root / "mixed").mkdir()
    ramp = np.linspace(0.0, 1.0, 12 * 10, dtype=np.float32).reshape(12, 10)
    for i in range(2):
        Image.fromarray(ramp if i == 0 else 1 - ramp, mode="F").save(root / "floats" / f"f{i}.tif")
    _sideways_photo(root / "mixed" / "phone.jpg")
    rgb = np.full((10, 12, 3), 90, np.uint8)
    for ext in ("webp", "bmp", "gif"):
        Image.fromarray(rgb).save(root / "mixed" / f"x.{ext}")
    rgba = np.zeros((10, 12, 4), np.uint8)  # transparent black everywhere but one opaque red row
    rgba[0] = (200, 0, 0, 255)
    Image.fromarray(rgba, "RGBA").save(root / "mixed" / "logo.png")
    (root / "mixed" / "notes.txt").write_text("not an image")
    (root / "mixed" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    return root


class Stop(Exception):
    """Raised by a spy once the reader under test has read."""


def _phone(src) -> int:
    return next(i for i, (f, _) in enumerate(src.files) if f.endswith("phone.jpg"))


def test_the_reader_applies_exif_orientation_and_maps_every_mode_to_rgb(folder):
    assert {".webp", ".bmp", ".gif", ".tif", ".tiff", ".jpg", ".png"} <= image_extensions()
    assert _upright(read_image(folder / "mixed" / "phone.jpg"))
    f = read_image(folder / "floats" / "f0.tif")  # float [0, 1] -> 0..255, grey
    assert f.shape == (12, 10, 3) and f[0, 0].tolist() == [0, 0, 0] and f[-1, -1].tolist() == [255, 255, 255]
    logo = read_image(folder / "mixed" / "logo.png")  # transparent parts composited onto white, not black
    assert logo[0, 0].tolist() == [200, 0, 0] and logo[5, 5].tolist() == [255, 255, 255]


def test_the_training_folder_reads_upright_and_uses_every_format(folder):
    train = data_lib.make_source(str(folder), "train")  # what `effnet train --data` reads
    assert train.class_names == ("floats", "mixed") and len(train) == 7
    assert _upright(train[_phone(train)][0])
    assert train.describe() == "2 .tif, 1 .bmp, 1 .gif, 1 .jpg, 1 .png, 1 .webp; not used: 1 .txt, 1 hidden"
    assert [label for _, label in train.files] == [0, 0, 1, 1, 1, 1, 1]


def test_the_data_line_counts_used_and_unused_files_by_extension(folder, capsys):
    cfg = from_preset("digits", [f"data={folder}", f"val_data={folder}", "global_batch=4", "eval_batch=4"])
    make_data(cfg, Preprocessing(resolution=16))
    line = [x for x in capsys.readouterr().err.splitlines() if "data:" in x][-1]
    used = "2 .tif, 1 .bmp, 1 .gif, 1 .jpg, 1 .png, 1 .webp; not used: 1 .txt, 1 hidden"
    assert f"7 train ({used}) / 7 val ({used}) images, 2 classes" in line, line


def test_eval_reads_upright(folder, monkeypatch):
    """`effnet eval --data` reads what `evaluate_checkpoint` builds; stopped after the class check, before the
    model is touched."""
    from effnet_jax.train import evaluate

    model = SimpleNamespace(spec=SimpleNamespace(num_classes=2), preprocessing=Preprocessing(
        resolution=16, class_names=("floats", "mixed")))  # fmt: skip
    monkeypatch.setattr(evaluate, "restore_model", lambda *a, **k: SimpleNamespace(
        model=model, config=from_preset("digits"), step=1, weights="ema"))  # fmt: skip
    made, real = [], data_lib.make_source
    monkeypatch.setattr(data_lib, "make_source", lambda *a, **k: made.append(real(*a, **k)) or made[-1])

    def stop(*a, **k):
        raise Stop

    monkeypatch.setattr(evaluate, "Mesh", stop)
    with pytest.raises(Stop):
        evaluate.evaluate_checkpoint("run", data=str(folder))
    assert _upright(made[0][_phone(made[0])][0])


def test_predict_reads_upright(folder, monkeypatch):
    """`effnet predict` on the photo: the image its preprocessing gets is upright (weights stubbed, stopped there)."""
    from effnet_jax import predict, weights

    pre = Preprocessing(resolution=16)
    net = SimpleNamespace(spec=SimpleNamespace(num_classes=2, in_channels=3), preprocessing=pre, eval=lambda: None)
    monkeypatch.setattr(weights, "read_pretrained", lambda *a, **k: SimpleNamespace(note=None))
    monkeypatch.setattr(weights, "build_adapted", lambda p: net)
    seen = []

    def spy(image, pre, in_channels=3):
        seen.append(np.asarray(image))
        raise Stop  # out before any model code

    monkeypatch.setattr(predict, "preprocess", spy)
    with pytest.raises(Stop):
        predict.classify([folder / "mixed" / "phone.jpg"], "w.safetensors")
    assert _upright(seen[0])


def test_prepare_stores_every_format_and_its_records_read_upright(folder, tmp_path):
    from effnet_jax.train.prepare import prepare

    lines = []
    r = prepare(str(folder), str(tmp_path / "shards"), workers=1, log=lines.append)
    used = "2 .tif, 1 .bmp, 1 .gif, 1 .jpg, 1 .png, 1 .webp; not used: 1 .txt, 1 hidden"
    assert r.images == 7 and not r.unreadable and r.files == used
    assert f"{folder}: 7 images ({used}) of 2 classes" in lines
    shards = data_lib.make_source(str(tmp_path / "shards"), "train")
    assert type(shards).__name__ == "RecordsSource" and shards.describe() == used
    folder_src = data_lib.make_source(str(folder), "train")
    assert _upright(shards[_phone(folder_src)][0])
    for i in range(len(shards)):  # identical arrays: one decode path
        np.testing.assert_array_equal(shards[i][0], folder_src[i][0])


# --------------------------------------------------------------------------------------------- classes agree


def _classes(root, names):
    for c in names:
        (root / c).mkdir(parents=True)
        Image.new("RGB", (6, 5), (10, 20, 30)).save(root / c / "0.png")
    return root


CLASS_CASES = [
    # (val classes, None if refused else the note's content, the refusal's content)
    (["a", "b"], None, ["val_data", "has 2 classes ['a', 'b']", "has 3 ['a', 'b', 'c']", "missing: ['c']"]),
    (["b", "c", "d"], None, ["'b' is label 0 of val_data", "label 1 of data", "scored as 'a'"]),
    (["x", "y", "z"], "3 names differ and none is at another position, so classes are paired by position", []),
    (["a", "b", "c"], "", []),
]


@pytest.mark.parametrize("val, note, refusal", CLASS_CASES)
def test_val_data_classes_must_agree_with_the_training_data(tmp_path, capsys, val, note, refusal):
    train, other = _classes(tmp_path / "train", ["a", "b", "c"]), _classes(tmp_path / "val", val)
    cfg = from_preset("digits", [f"data={train}", f"val_data={other}", "global_batch=3", "eval_batch=3"])
    if note is None:
        with pytest.raises(ValueError) as e:
            make_data(cfg, Preprocessing(resolution=16))
        assert "\n" not in str(e.value) and all(s in str(e.value) for s in refusal), str(e.value)
    else:
        make_data(cfg, Preprocessing(resolution=16))
        err = capsys.readouterr().err
        assert (note in err) if note else ("paired by position" not in err), err


def test_a_refused_val_data_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys):
    train, other = _classes(tmp_path / "train", ["a", "b", "c"]), _classes(tmp_path / "val", ["a", "c"])
    work = tmp_path / "run"
    work.mkdir()
    before = snapshot(tmp_path)
    rc = cli_main(["train", "--data", str(train), "--set", f"val_data={other}", "--workdir", str(work)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("effnet train: error: val_data") and "missing: ['b']" in err[-1], err
    assert snapshot(tmp_path) == before


def test_eval_data_whose_classes_differ_from_the_head_is_refused_before_the_model(tmp_path, monkeypatch, capsys):
    from effnet_jax.train import evaluate

    data = _classes(tmp_path / "val", ["cat", "dog"])
    for names, want in [(("cat", "dog", "eel"), "the checkpoint's model has 3 ['cat', 'dog', 'eel']; missing: "
                         "['eel']"), (None, "the checkpoint's model has 3: labels are positions")]:  # fmt: skip
        pre = Preprocessing(resolution=16, class_names=names)
        model = SimpleNamespace(spec=SimpleNamespace(num_classes=3), preprocessing=pre)
        monkeypatch.setattr(evaluate, "restore_model", lambda *a, m=model, **k: SimpleNamespace(
            model=m, config=from_preset("digits"), step=1, weights="ema"))  # fmt: skip
        monkeypatch.setattr(evaluate, "Mesh", None)  # the refusal comes before the model is touched
        rc = cli_main(["eval", "--checkpoint", str(tmp_path), "--data", str(data)])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and "has 2 classes ['cat', 'dog']" in err[0] and want in err[0], err


def test_class_lists_are_shortened_in_the_line():
    names = [f"n{i:04d}" for i in range(1000)]
    with pytest.raises(ValueError) as e:
        data_lib.check_classes(names[:999], names, what="val", against="data")
    assert "['n0000', 'n0001', 'n0002', 'n0003', ..., 'n0998']" in str(e.value) and "missing: ['n0999']" in str(e.value)
    assert len(str(e.value)) < 400


WORKDIR_CASES = [
    ("data", lambda d: d / "runs" / "x"),
    ("data", lambda d: d),
    ("data", lambda d: d / "a"),  # a class folder itself
    ("val_data", lambda d: d / "w"),
]


@pytest.mark.parametrize("key, workdir", WORKDIR_CASES)
def test_a_workdir_inside_the_data_is_refused_before_anything_is_written(tmp_path, capsys, key, workdir):
    data = _classes(tmp_path / "d", ["a", "b"])
    train = data if key == "data" else _classes(tmp_path / "t", ["a", "b"])
    link = tmp_path / "link"
    link.symlink_to(data)  # the same folder by another path
    before = snapshot(tmp_path)
    argv = ["train", "--data", str(train), "--workdir", str(workdir(link))]
    rc = cli_main(argv + ([f"--set=val_data={data}"] if key == "val_data" else []))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and f"is inside {key} " in err[0] and "outside" in err[0], err
    assert snapshot(tmp_path) == before


def test_prepare_out_inside_its_folder_is_refused(tmp_path, capsys):
    data = _classes(tmp_path / "d", ["a", "b"])
    before = snapshot(tmp_path)
    rc = cli_main(["prepare", str(data), str(data / "shards")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and "is inside FOLDER" in err[0], err  # prepare's exit code for a ValueError
    assert snapshot(tmp_path) == before
