"""Input pipeline: digits split, image-folder errors/warnings, determinism, resume, per-host slicing, padding."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
from PIL import Image

from effnet_jax.train import data as data_lib
from effnet_jax.train.augment import EvalTransform, TrainTransform
from effnet_jax.train.data import Batches, DigitsSource, ImageFolderSource, SyntheticSource, eval_dataset, train_dataset

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
TF = TrainTransform(16, MEAN, STD, augment="randaugment", randaugment_n=1)


def _batches(ds, n=None):
    return list(itertools.islice(ds, n))


def test_digits_split_is_fixed_stratified_and_disjoint():
    train, val = DigitsSource("train"), DigitsSource("val")
    assert (len(train), len(val)) == (1437, 360)
    assert train.images.shape[1:] == (data_lib.DIGITS_SIDE, data_lib.DIGITS_SIDE, 3)
    assert np.bincount(val.labels).min() >= 35, "stratified: every digit is in val about 36 times"
    train_rows = {im.tobytes() for im in train.images}
    assert sum(im.tobytes() in train_rows for im in val.images) <= 2, "val must not overlap train (rare duplicates)"


def test_digits_split_is_scikit_learns_stratified_split_of_load_digits():
    """The split is stored as data and the file read without scikit-learn: both must be what scikit-learn gives."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    train_idx, val_idx = train_test_split(
        np.arange(len(digits.target)), test_size=data_lib.DIGITS_VAL_SHARE, random_state=data_lib.DIGITS_SPLIT_SEED,
        stratify=digits.target,
    )  # fmt: skip
    for split, idx in (("train", train_idx), ("val", val_idx)):
        images, labels = data_lib.digits_split(split)
        keep = np.sort(idx)
        np.testing.assert_array_equal(images, digits.images[keep])
        np.testing.assert_array_equal(labels, digits.target[keep])
        assert labels.dtype == np.int32


def test_digits_split_is_the_sources_images_before_upscaling():
    """benchmarks/digits.py fits scikit-learn on `digits_split`: it must be the very images the source upscales."""
    for split in ("train", "val"):
        small, labels = data_lib.digits_split(split)
        source = DigitsSource(split)
        assert small.shape == (len(source), 8, 8) and small.min() == 0 and small.max() == 16
        np.testing.assert_array_equal(labels, source.labels)
        # Each upscaled image's ink follows its 8x8 original: the 4x4 block means correlate almost perfectly.
        blocks = source.images[..., 0].reshape(len(source), 8, 4, 8, 4).mean(axis=(2, 4))
        corr = np.corrcoef(blocks.reshape(-1), small.reshape(-1))[0, 1]
        assert corr > 0.95, corr
    with pytest.raises(ValueError, match="'train' or 'val'"):
        data_lib.digits_split("test")


def _write_folder(root, classes, per_class=3, size=12):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size, size + 2, 3), dtype=np.uint8)).save(root / c / f"{i}.png")


def test_image_folder_reads_classes_in_sorted_order(tmp_path):
    _write_folder(tmp_path, ["dog", "cat"])
    src = ImageFolderSource(str(tmp_path))
    assert src.class_names == ("cat", "dog") and len(src) == 6
    image, label = src[4]
    assert image.shape == (12, 14, 3) and image.dtype == np.uint8 and label == 1


def test_empty_folder_is_an_error(tmp_path):
    (tmp_path / "a").mkdir()
    with pytest.raises(ValueError, match="is empty: expected one sub-folder per class"):
        ImageFolderSource(str(tmp_path))


def test_missing_folder_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        ImageFolderSource(str(tmp_path / "nope"))


def test_one_class_is_an_error(tmp_path):
    _write_folder(tmp_path, ["only"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"only one class \(\['only'\]\)"):
        ImageFolderSource(str(tmp_path))


def test_unreadable_images_are_skipped_with_a_warning_and_a_count(tmp_path):
    _write_folder(tmp_path, ["a", "b"], per_class=2)
    (tmp_path / "a" / "0.png").write_bytes(b"not a png")
    (tmp_path / "a" / "1.png").write_bytes(b"")
    src = ImageFolderSource(str(tmp_path))
    with pytest.warns(UserWarning, match=r"skipping unreadable image .*0\.png.*1 skipped so far") as record:
        image, label = src[0]
    assert src.skipped == 2 and len(record) == 2
    assert label == 1 and image.shape == (12, 14, 3), "replaced by the next readable image"
    # the pipeline keeps going and its batches keep their shape; each file was named once already
    ds = train_dataset(src, TF, seed=0, steps=2, batches=Batches(4))
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        assert [b["image"].shape for b in _batches(ds)] == [(4, 16, 16, 3)] * 2
    assert src.skipped > 2 and not again


def test_train_stream_is_deterministic_and_resumable():
    src = SyntheticSource(20, 5, length=10)
    ds = train_dataset(src, TF, seed=7, steps=6, batches=Batches(4))
    full = _batches(ds)
    assert len(full) == 6 and full[0]["image"].shape == (4, 16, 16, 3) and full[0]["label"].dtype == np.int32
    resumed = _batches(train_dataset(src, TF, seed=7, steps=6, batches=Batches(4), start=2))
    assert len(resumed) == 4
    for a, b in zip(full[2:], resumed, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    other = _batches(train_dataset(src, TF, seed=8, steps=6, batches=Batches(4)))
    assert not np.array_equal(full[0]["image"], other[0]["image"])


def test_each_epoch_is_a_permutation_and_epochs_differ():
    """24 positions over a 12-example source: each epoch visits every example once, in a new order."""
    src = SyntheticSource(8, 12, length=12)
    src.labels = np.arange(12, dtype=np.int32)  # label == example index, to read the order back
    plain = TrainTransform(8, MEAN, STD, augment="none", flip=False)
    labels = np.concatenate(
        [b["label"] for b in _batches(train_dataset(src, plain, seed=0, steps=6, batches=Batches(4)))]
    )
    assert sorted(labels[:12]) == list(range(12)) and sorted(labels[12:]) == list(range(12))
    assert list(labels[:12]) != list(labels[12:])


def test_hosts_read_disjoint_slices_of_the_global_batch():
    src = SyntheticSource(8, 16, length=16)
    src.labels = np.arange(16, dtype=np.int32)
    plain = TrainTransform(8, MEAN, STD, augment="none", flip=False)
    one = _batches(train_dataset(src, plain, seed=0, steps=2, batches=Batches(8)))
    parts = [_batches(train_dataset(src, plain, seed=0, steps=2, batches=Batches(8, h, 2))) for h in range(2)]
    for step in range(2):
        joined = np.concatenate([parts[0][step]["label"], parts[1][step]["label"]])
        np.testing.assert_array_equal(joined, one[step]["label"])
        np.testing.assert_array_equal(
            np.concatenate([parts[0][step]["image"], parts[1][step]["image"]]), one[step]["image"]
        )


def test_batches_must_divide():
    with pytest.raises(ValueError, match="global batch 10 does not divide over 4 hosts"):
        Batches(10, 0, 4)


def test_eval_pads_the_last_batch_with_masked_rows():
    src = SyntheticSource(8, 3, length=10)
    batches = _batches(eval_dataset(src, EvalTransform(8, MEAN, STD), batches=Batches(4)))
    assert len(batches) == 3
    mask = np.concatenate([b["mask"] for b in batches])
    np.testing.assert_array_equal(mask, [1] * 10 + [0] * 2)
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches])[:10], src.labels)


@pytest.mark.slow
def test_worker_processes_give_the_same_batches():
    src = SyntheticSource(16, 5, length=12)
    inline = _batches(train_dataset(src, TF, seed=1, steps=3, batches=Batches(4)))
    workers = _batches(train_dataset(src, TF, seed=1, steps=3, batches=Batches(4), num_workers=2))
    for a, b in zip(inline, workers, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
    # A resume may use another worker count: the stream is a function of the step, not of iterator state.
    resumed = _batches(train_dataset(src, TF, seed=1, steps=3, batches=Batches(4), num_workers=2, start=1))
    for a, b in zip(inline[1:], resumed, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])


def test_no_dataset_is_a_clear_error():
    with pytest.raises(ValueError, match="no dataset given"):
        data_lib.make_source("", "train")


def test_a_flat_folder_of_images_says_what_is_expected(tmp_path):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    with pytest.raises(ValueError, match=r"holds 1 images directly; expected one sub-folder per class"):
        ImageFolderSource(str(tmp_path))


def test_training_reads_16_bit_images_scaled_like_their_8_bit_twin(tmp_path):
    """Regression: 16-bit PNGs were clipped to white by convert("RGB")."""
    ramp = np.linspace(0.0, 1.0, 12 * 14).reshape(12, 14)
    for c, bits in (("a", 8), ("b", 16)):
        (tmp_path / c).mkdir()
        dtype, top = (np.uint8, 255) if bits == 8 else (np.uint16, 65535)
        Image.fromarray(np.round(ramp * top).astype(dtype)).save(tmp_path / c / "0.png")
    src = ImageFolderSource(str(tmp_path))
    (eight, _), (sixteen, _) = src[0], src[1]
    assert eight.dtype == sixteen.dtype == np.uint8 and sixteen.shape == (12, 14, 3)
    assert np.abs(eight.astype(int) - sixteen.astype(int)).max() <= 1 and sixteen.max() == 255 and sixteen.min() == 0


def test_a_folder_of_which_no_image_reads_is_refused_up_front(tmp_path):
    """Regression: training started, warned once per file, then died with a RuntimeError traceback from Grain."""
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(20):
            (tmp_path / c / f"{i}.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"none of the 16 images tried could be read \(first: '.*a/0\.png': "):
        ImageFolderSource(str(tmp_path))
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "b" / "19.png")  # the last one probed reads
    assert len(ImageFolderSource(str(tmp_path))) == 40
