"""Preprocessing: crop geometry, determinism given the rng, the TF reference's AutoAugment/RandAugment ops and
level mappings (tensorflow/tpu models/official/efficientnet/autoaugment.py), normalisation and input checks."""

from __future__ import annotations

import numpy as np
import pytest

from effnet_jax.train import augment as A
from effnet_jax.train.augment import (
    AUTOAUGMENT_HPARAMS,
    OPS,
    POLICY_V0,
    RANDAUGMENT_HPARAMS,
    RANDAUGMENT_OPS,
    REPLACE,
    EvalTransform,
    TrainTransform,
    apply_op,
    center_crop_box,
    level_to_arg,
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


@pytest.mark.parametrize("augment", ["autoaugment", "randaugment", "none"])
def test_train_transform_is_a_function_of_the_rng(augment):
    tf = TrainTransform(32, MEAN, STD, augment=augment)
    img = _image()
    a = tf(img, np.random.default_rng([1, 2, 3]))
    b = tf(img, np.random.default_rng([1, 2, 3]))
    c = tf(img, np.random.default_rng([1, 2, 4]))
    assert a.shape == (32, 32, 3) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


class Script:
    """Stands in for np.random.Generator: replays scripted draws (floats for random(), ints for integers())."""

    def __init__(self, *draws):
        self.draws = list(draws)

    def random(self) -> float:
        v = self.draws.pop(0)
        assert isinstance(v, float)
        return v

    def integers(self, n: int) -> int:
        v = self.draws.pop(0)
        assert isinstance(v, int) and 0 <= v < n
        return v


@pytest.mark.parametrize("op", sorted(OPS))
@pytest.mark.parametrize("level", [0, 5, 10, 28])
def test_every_op_runs_and_keeps_size(op, level):
    img = _image()
    out = apply_op(img, op, level, np.random.default_rng(0), RANDAUGMENT_HPARAMS)
    assert out.shape == img.shape and out.dtype == np.uint8


def test_unknown_op_is_an_error():
    with pytest.raises(ValueError, match="unknown augmentation op 'Blur'"):
        apply_op(_image(), "Blur", 5, np.random.default_rng(0), RANDAUGMENT_HPARAMS)


def test_policy_v0_is_tfs():
    """autoaugment.py policy_v0: 25 pairs; spot checks at both ends and the two ops only it has."""
    assert len(POLICY_V0) == 25 and all(len(sub) == 2 for sub in POLICY_V0)
    assert POLICY_V0[0] == (("Equalize", 0.8, 1), ("ShearY", 0.8, 4))
    assert POLICY_V0[15] == (("Rotate", 1.0, 7), ("TranslateY", 0.8, 9))
    assert POLICY_V0[22] == (("Posterize", 0.8, 2), ("Solarize", 0.6, 10))
    assert POLICY_V0[24] == (("Color", 0.8, 6), ("Rotate", 0.4, 5))
    assert {n for sub in POLICY_V0 for n, _, _ in sub} <= set(OPS)
    assert len(RANDAUGMENT_OPS) == 16 and RANDAUGMENT_OPS[-2:] == ("Cutout", "SolarizeAdd")


@pytest.mark.parametrize(
    "name, level, hparams, negate, want",
    [
        ("Rotate", 9, AUTOAUGMENT_HPARAMS, False, 27.0),
        ("Rotate", 9, AUTOAUGMENT_HPARAMS, True, -27.0),
        ("ShearX", 4, AUTOAUGMENT_HPARAMS, True, -0.12),
        ("ShearY", 10, AUTOAUGMENT_HPARAMS, False, 0.3),
        ("TranslateY", 9, AUTOAUGMENT_HPARAMS, False, 225.0),  # pixels, translate_const 250
        ("TranslateX", 9, RANDAUGMENT_HPARAMS, True, -90.0),  # pixels, translate_const 100
        ("Color", 0, AUTOAUGMENT_HPARAMS, False, 0.1),
        ("Contrast", 5, AUTOAUGMENT_HPARAMS, False, 1.0),
        ("Sharpness", 10, AUTOAUGMENT_HPARAMS, False, 1.9),
        ("Posterize", 6, AUTOAUGMENT_HPARAMS, False, 2),  # bits kept: more at higher levels
        ("Posterize", 2, AUTOAUGMENT_HPARAMS, False, 0),
        ("Posterize", 10, AUTOAUGMENT_HPARAMS, False, 4),
        ("Solarize", 3, AUTOAUGMENT_HPARAMS, False, 76),  # threshold: higher at higher levels
        ("Solarize", 10, AUTOAUGMENT_HPARAMS, False, 256),
        ("SolarizeAdd", 7, AUTOAUGMENT_HPARAMS, False, 77),
        ("Cutout", 9, RANDAUGMENT_HPARAMS, False, 36),  # half-size, cutout_const 40
        ("Cutout", 5, AUTOAUGMENT_HPARAMS, False, 50),
    ],
)
def test_level_to_arg_is_tfs(name, level, hparams, negate, want):
    assert level_to_arg(name, level, hparams, negate) == pytest.approx((want,))


def test_argument_free_ops():
    assert all(level_to_arg(n, 7, AUTOAUGMENT_HPARAMS) == () for n in ("AutoContrast", "Equalize", "Invert"))


def test_posterize_keeps_bits_with_tfs_clamped_shift():
    x = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, -1)
    np.testing.assert_array_equal(A.posterize(x, 4), x & 0xF0)
    np.testing.assert_array_equal(A.posterize(x, 8), x)
    # a shift of 8 clamps to 7: 0 bits keeps the top bit; 11 bits (level 28) wraps to a shift of 253, clamped too
    np.testing.assert_array_equal(A.posterize(x, 0), x & 0x80)
    np.testing.assert_array_equal(A.posterize(x, 11), x & 0x80)


def test_solarize_direction_and_uint8_wrap():
    x = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, -1)
    want = np.where(x < 128, x, 255 - x)
    np.testing.assert_array_equal(A.solarize(x, 128), want)
    np.testing.assert_array_equal(A.solarize(x, 256), 255 - x)  # level 10: 256 is a uint8 0, all invert
    np.testing.assert_array_equal(A.solarize(x, 716), np.where(x < 204, x, 255 - x))  # level 28: 716 - 512
    np.testing.assert_array_equal(A.solarize_add(x, 110), np.where(x < 128, np.minimum(x.astype(int) + 110, 255), x))


def test_translate_is_in_pixels_with_grey_fill():
    img = _image(20, 30)
    out = A.translate_x(img, 7.0, REPLACE)  # content moves left
    np.testing.assert_array_equal(out[:, :23], img[:, 7:])
    assert (out[:, 23:] == 128).all()
    out = A.translate_y(img, -5.0, REPLACE)  # content moves down
    np.testing.assert_array_equal(out[5:], img[:15])
    assert (out[:5] == 128).all()


def test_rotate_turns_counterclockwise_about_the_centre():
    img = _image(9, 9)
    np.testing.assert_array_equal(A.rotate(img, 90.0, REPLACE), np.rot90(img))
    out = A.rotate(_image(24, 24), 45.0, REPLACE)
    assert (out[0, 0] == 128).all() and (out[12, 12] != 128).any()


def test_shear_samples_integer_coordinates():
    img = _image(10, 40)
    out = A.shear_x(img, 0.3, REPLACE)  # output (x, y) <- input (round(x + 0.3 y), y)
    np.testing.assert_array_equal(out[5, :30], img[5, 2:32])  # 1.5 rounds away from zero, to 2
    np.testing.assert_array_equal(out[3, :38], img[3, 1:39])


def test_contrast_blends_towards_pixel_count_over_256():
    """TF's contrast quirk: its degenerate is H*W/256, not the mean grey."""
    img = _image(32, 32)
    np.testing.assert_array_equal(A.contrast(img, 0.0), np.full_like(img, 4))
    np.testing.assert_array_equal(A.contrast(_image(200, 200), 0.0), np.full_like(_image(200, 200), 156))


def test_blend_truncates():
    img = _image()
    np.testing.assert_array_equal(A.brightness(img, 0.5), np.floor(img * np.float32(0.5)).astype(np.uint8))
    np.testing.assert_array_equal(A.brightness(img, 1.9), np.clip(img * np.float32(1.9), 0, 255).astype(np.uint8))


def test_equalize_divides_by_255():
    """Each value 4 times: TF's step is (1024 - 4) // 255 = 4 and the LUT (4 i + 2) // 4 = i leaves the image;
    PIL's step (1020 // 256 = 3) would brighten it."""
    x = np.repeat(np.arange(256, dtype=np.uint8), 4).reshape(32, 32, 1).repeat(3, -1)
    np.testing.assert_array_equal(A.equalize(x), x)
    y = x // 2  # values 0..127, each 8 times: step (1024 - 8) // 255 = 3, LUT[v] = min(255, (8 v + 1) // 3)
    np.testing.assert_array_equal(A.equalize(y), np.minimum((8 * y.astype(int) + 1) // 3, 255))


def test_autocontrast_stretches_each_channel():
    img = np.zeros((4, 4, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 50, 100, 7
    img[0, 0, 0], img[0, 1, 0] = 150, 100
    out = A.autocontrast(img)
    assert out[0, 0, 0] == 255 and out[1, 1, 0] == 0 and out[0, 1, 0] == 127  # 127.5 truncates
    np.testing.assert_array_equal(out[..., 1:], img[..., 1:])  # flat channels stay


def test_cutout_fills_a_clipped_square():
    out = A.cutout(_image(), 3, REPLACE, (1, 58))
    assert (out[0:4, 55:60] == 128).all() and not (out[4:, :] == 128).all()


def test_apply_op_draws_sign_then_cutout_centre():
    img = _image()
    np.testing.assert_array_equal(
        apply_op(img, "TranslateX", 1, Script(0.2), RANDAUGMENT_HPARAMS), A.translate_x(img, -10.0, REPLACE)
    )
    np.testing.assert_array_equal(
        apply_op(img, "TranslateX", 1, Script(0.5), RANDAUGMENT_HPARAMS), A.translate_x(img, 10.0, REPLACE)
    )
    np.testing.assert_array_equal(
        apply_op(img, "Cutout", 5, Script(10, 20), RANDAUGMENT_HPARAMS), A.cutout(img, 20, REPLACE, (10, 20))
    )


def test_autoaugment_applies_an_op_when_u_plus_prob_reaches_1():
    img = _image()
    # sub-policy 9: Invert 0.4 then Rotate 0.6 at level 0 (no turn, but a sign is still drawn)
    rng = Script(9, 0.6, 0.39)
    np.testing.assert_array_equal(A.autoaugment(img, rng), 255 - img)
    assert not rng.draws
    rng = Script(9, 0.59, 0.4, 0.9)
    np.testing.assert_array_equal(A.autoaugment(img, rng), img)
    assert not rng.draws


def test_randaugment_always_applies_the_drawn_ops():
    """TF draws a per-op prob in distort_image_with_randaugment but never uses it."""
    img = _image()
    invert = RANDAUGMENT_OPS.index("Invert")
    np.testing.assert_array_equal(A.randaugment(img, Script(invert), 1, 10), 255 - img)
    np.testing.assert_array_equal(A.randaugment(img, Script(invert, invert), 2, 10), img)
    solarize = RANDAUGMENT_OPS.index("Solarize")
    np.testing.assert_array_equal(A.randaugment(img, Script(solarize), 1, 10), 255 - img)


def test_autoaugment_geometric_ops_leave_grey():
    """Over many seeds some draws (rotate, shear, translate) leave 128s, and most do not."""
    img = np.full((24, 24, 3), 10, np.uint8)
    seen_grey = 0
    for seed in range(200):
        out = A.autoaugment(img, np.random.default_rng(seed))
        seen_grey += bool((out == 128).all(-1).any())
    assert 0 < seen_grey < 200


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
