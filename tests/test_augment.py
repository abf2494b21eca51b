"""Preprocessing: crop geometry, determinism given the rng, every op, normalisation and input checks."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from effnet_jax.train.augment import (
    AUTOAUGMENT_IMAGENET,
    RANDAUGMENT_OPS,
    EvalTransform,
    TrainTransform,
    apply_op,
    center_crop_box,
    random_resized_crop_box,
)

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _image(h=40, w=60, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_random_resized_crop_respects_area_and_aspect():
    rng = np.random.default_rng(0)
    for _ in range(300):
        left, top, right, bottom = random_resized_crop_box(200, 300, rng, (0.08, 1.0))
        w, h = right - left, bottom - top
        assert 0 <= left < right <= 300 and 0 <= top < bottom <= 200
        # rounding to whole pixels moves area and aspect a little past the nominal bounds
        assert 0.07 <= w * h / (200 * 300) <= 1.0
        assert 3 / 4 * 0.95 <= w / h <= 4 / 3 * 1.05


def test_crop_falls_back_to_center_when_nothing_fits():
    """A 1x100 strip admits no 3/4..4/3 crop: the fallback is the central crop at the extreme ratio."""
    box = random_resized_crop_box(1, 100, np.random.default_rng(0), (0.5, 1.0))
    assert box == (49, 0, 50, 1)


def test_center_crop_is_87_5_percent_of_the_short_side():
    assert center_crop_box(256, 320, 0.875) == (48, 16, 272, 240)


def test_train_transform_is_a_function_of_the_rng():
    tf = TrainTransform(32, MEAN, STD, augment="autoaugment")
    img = _image()
    a = tf(img, np.random.default_rng([1, 2, 3]))
    b = tf(img, np.random.default_rng([1, 2, 3]))
    c = tf(img, np.random.default_rng([1, 2, 4]))
    assert a.shape == (32, 32, 3) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("op", sorted(set(RANDAUGMENT_OPS) | {o for sub in AUTOAUGMENT_IMAGENET for o, _, _ in sub}))
def test_every_op_runs_and_keeps_size(op):
    img = Image.fromarray(_image())
    out = apply_op(img, op, 0.7, np.random.default_rng(0))
    assert out.size == img.size and out.mode == "RGB"


def test_unknown_op_is_an_error():
    with pytest.raises(ValueError, match="unknown augmentation op 'Blur'"):
        apply_op(Image.fromarray(_image()), "Blur", 0.5, np.random.default_rng(0))


def test_eval_transform_is_crop_resize_normalise():
    """crop_pct 1 at the image's own size: nothing but (x / 255 - mean) / std."""
    img = _image(32, 32)
    out = EvalTransform(32, MEAN, STD, crop_pct=1.0)(img)
    np.testing.assert_allclose(out, (img / 255.0 - np.asarray(MEAN)) / np.asarray(STD), atol=1e-5)


def test_train_without_augment_flip_or_crop_equals_eval():
    img = _image(32, 32)
    train = TrainTransform(32, MEAN, STD, crop_min_area=1.0, flip=False, augment="none")
    # area 1.0 of a square with a random aspect only fits as the full square (fallback), so no crop happens
    np.testing.assert_array_equal(train(img, np.random.default_rng(0)), EvalTransform(32, MEAN, STD, crop_pct=1.0)(img))


def test_lite_family_normalisation():
    """Lite: (x - 127) / 128 on 0..255, i.e. mean 127/255, std 128/255."""
    img = np.full((8, 8, 3), 255, np.uint8)
    out = EvalTransform(8, (127 / 255,) * 3, (128 / 255,) * 3, "bilinear", crop_pct=1.0)(img)
    np.testing.assert_allclose(out, (255 - 127) / 128, rtol=1e-6)


def test_bad_image_is_a_clear_error():
    tf = EvalTransform(8, MEAN, STD)
    with pytest.raises(ValueError, match=r"expected a uint8 \(H, W, 3\) RGB image, got float32 \(8, 8, 3\)"):
        tf(np.zeros((8, 8, 3), np.float32))


def test_bad_transform_settings():
    with pytest.raises(ValueError, match="unknown interpolation 'lanczos3'"):
        TrainTransform(8, MEAN, STD, interpolation="lanczos3")
    with pytest.raises(ValueError, match="unknown augment 'mixup'"):
        TrainTransform(8, MEAN, STD, augment="mixup")
