"""`effnet predict`: top-5 with class names from a checkpoint's header, on generated images (random weights)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image

from effnet_jax.cli import main as cli_main
from effnet_jax.predict import classify, imagenet_class_names, predict, preprocess
from effnet_spec import Preprocessing
from effnet_torch import EfficientNet, save_checkpoint

pytestmark = pytest.mark.integration  # a full-size b0 through the command line

RES = 64  # small input: the test is about the plumbing, not accuracy


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    model = EfficientNet.from_name("b0").eval()
    path = tmp_path_factory.mktemp("w") / "b0.safetensors"
    save_checkpoint(model, path, Preprocessing(resolution=RES, class_names=imagenet_class_names()))
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("img")
    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h) in enumerate([(97, 80), (60, 120)]):  # non-square both ways
        yy, xx = np.mgrid[0:h, 0:w]
        rgb = np.stack([xx * 255 // w, yy * 255 // h, rng.integers(0, 256, (h, w))], axis=-1).astype(np.uint8)
        paths.append(d / f"img{i}.png")
        Image.fromarray(rgb).save(paths[-1])
    return paths


def test_imagenet_class_names_ship_with_the_package():
    names = imagenet_class_names()
    assert len(names) == 1000 and len(set(names)) == 1000
    assert (names[0], names[281], names[999]) == ("tench", "tabby", "toilet tissue")


def test_cli_prints_top5_with_class_names(weights, images, capsys):
    rc = cli_main(["predict", *map(str, images), "--weights", str(weights)])
    out = capsys.readouterr().out
    assert rc == 0, out
    lines = out.splitlines()
    assert lines[0] == str(images[0]) and lines[6] == str(images[1])
    names = set(imagenet_class_names())
    for line in lines[1:6] + lines[7:12]:
        m = re.fullmatch(r"  [1-5]\. +(\d+\.\d\d)%  (.+)", line)
        assert m and m[2] in names, line


def test_probabilities_sum_to_one_and_top5_is_sorted(weights, images):
    names, probs = classify(images, weights)
    assert probs.shape == (2, 1000) and len(names) == 1000
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0, atol=1e-9)
    assert (probs >= 0).all()
    for row, p in zip(predict(images, weights), probs):
        values = [v for _, v in row]
        assert len(row) == 5 and values == sorted(values, reverse=True)
        assert values[0] == pytest.approx(p.max())


def test_preprocess_follows_the_header():
    pre = Preprocessing(resolution=8, crop_pct=0.5, interpolation="bilinear", mean=(0.5, 0.5, 0.5), std=(0.25,) * 3)
    gray = Image.new("RGB", (40, 20), (128, 128, 128))
    x = preprocess(gray, pre)
    assert x.shape == (8, 8, 3) and x.dtype == np.float32
    np.testing.assert_allclose(x, (128 / 255 - 0.5) / 0.25, atol=1e-6)
    # Center crop of a short-side resize to 8 / 0.5 = 16: a left/right split image keeps both halves.
    half = np.zeros((20, 40, 3), np.uint8)
    half[:, 20:] = 255
    x = preprocess(Image.fromarray(half), Preprocessing(resolution=8, crop_pct=0.5, mean=(0,) * 3, std=(1,) * 3))
    assert x[:, 0].max() < 0.1 and x[:, -1].min() > 0.9
    assert preprocess(gray, pre, in_channels=1).shape == (8, 8, 1)
    with pytest.raises(ValueError, match="1 or 3 input channels, not 4"):
        preprocess(gray, pre, in_channels=4)


def test_bad_inputs_fail_with_a_message(weights, images, tmp_path, capsys):
    bad = tmp_path / "not_an_image.png"
    bad.write_bytes(b"hello")
    assert cli_main(["predict", str(bad), "--weights", str(weights)]) == 1
    assert "not an image" in capsys.readouterr().err
    assert cli_main(["predict", str(images[0]), "--weights", str(tmp_path / "missing.safetensors")]) == 1
    assert "missing.safetensors" in capsys.readouterr().err
    assert cli_main(["predict", str(images[0]), "--weights", str(weights), "--top", "0"]) == 2


def test_truncated_and_oversized_images_name_the_file(weights, images, tmp_path, capsys, monkeypatch):
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(images[0].read_bytes()[:200])
    assert cli_main(["predict", str(truncated), "--weights", str(weights)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"effnet predict: {truncated}: cannot read the image") and len(err.splitlines()) == 1
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # the guard, made to trip on a small image
    assert cli_main(["predict", str(images[0]), "--weights", str(weights)]) == 1
    assert f"{images[0]}: refused by Pillow's decompression-bomb guard" in capsys.readouterr().err


def _deep_images(tmp_path):
    """The same grey ramp as an 8-bit PNG, a 16-bit PNG and a float TIFF in [0, 1]."""
    ramp = np.linspace(0.0, 1.0, 40 * 48).reshape(40, 48)
    paths = {"8": tmp_path / "ramp8.png", "16": tmp_path / "ramp16.png", "f": tmp_path / "rampf.tif"}
    Image.fromarray(np.round(ramp * 255).astype(np.uint8)).save(paths["8"])
    Image.fromarray(np.round(ramp * 65535).astype(np.uint16)).save(paths["16"])
    Image.fromarray(ramp.astype(np.float32), mode="F").save(paths["f"])
    return paths


def test_16_bit_and_float_images_are_scaled_not_clipped(weights, tmp_path):
    """Regression: Pillow's convert("RGB") made 16-bit PNGs all white and float TIFFs all black."""
    paths = _deep_images(tmp_path)
    with Image.open(paths["16"]) as im16, Image.open(paths["f"]) as imf:
        assert im16.mode.startswith("I") and imf.mode == "F"  # the modes that used to clip
    _, probs = classify([paths["8"], paths["16"], paths["f"]], weights)
    # The 16-bit and float ramps round to the 8-bit one at most 1 level apart: the model sees the same image.
    np.testing.assert_allclose(probs[1], probs[0], atol=1e-3)
    np.testing.assert_allclose(probs[2], probs[0], atol=1e-3)


def test_float_images_outside_the_unit_range_are_refused_with_the_file_name(weights, tmp_path, capsys):
    bad = tmp_path / "hdr.tif"
    Image.fromarray(np.full((8, 8), 3.5, np.float32), mode="F").save(bad)
    assert cli_main(["predict", str(bad), "--weights", str(weights)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"effnet predict: {bad}: a float image with values in [3.5, 3.5]; expected [0, 1]"
