"""Image preprocessing for training and evaluation: numpy/PIL, randomness passed in as a numpy Generator.

Train: random resized crop (area 0.08-1, aspect 3/4-4/3), resize to the model resolution (bicubic; bilinear for
Lite), horizontal flip, then the TF EfficientNet reference's augmentation, then per-family normalisation. Eval:
center crop of `crop_pct` of the shorter side, resize.

The augmentation is the reference's own (tensorflow/tpu, models/official/efficientnet/autoaugment.py, cited below
as `autoaugment.py`): AutoAugment is its `policy_v0` (`distort_image_with_autoaugment`), RandAugment its
`distort_image_with_randaugment`. Each op is written here in numpy with TF's arithmetic (float32, truncating
casts, `contrib_image.transform` sampling) and keeps TF's quirks, since the reference weights were trained with
them: posterize to 0 bits keeps 1 bit, solarize at level 10 inverts every pixel, contrast blends towards
H*W/256 rather than the mean grey, translate is in pixels. Each quirk is named where it lives.

Transforms are frozen dataclasses (picklable, so Grain worker processes can run them) taking a uint8 HWC RGB array
and returning a float32 HWC array.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

__all__ = [
    "AUTOAUGMENT_HPARAMS",
    "MAX_LEVEL",
    "OPS",
    "POLICY_V0",
    "RANDAUGMENT_HPARAMS",
    "RANDAUGMENT_OPS",
    "REPLACE",
    "EvalTransform",
    "Hparams",
    "TrainTransform",
    "apply_op",
    "autoaugment",
    "center_crop_box",
    "level_to_arg",
    "randaugment",
    "random_resized_crop_box",
]

_RESAMPLE = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}

MAX_LEVEL = 10.0  # autoaugment.py `_MAX_LEVEL`: levels are on a 0..10 scale (RandAugment may pass more)
REPLACE = 128  # autoaugment.py `replace_value`: the grey that geometric ops and cutout leave behind


@dataclass(frozen=True)
class Hparams:
    """autoaugment.py's `augmentation_hparams`: translate in pixels and cutout half-size at level 10."""

    translate_const: int
    cutout_const: int


AUTOAUGMENT_HPARAMS = Hparams(translate_const=250, cutout_const=100)  # distort_image_with_autoaugment
RANDAUGMENT_HPARAMS = Hparams(translate_const=100, cutout_const=40)  # distort_image_with_randaugment

# autoaugment.py `policy_v0`: 25 sub-policies of two (op, probability, level 0..10).
POLICY_V0: tuple[tuple[tuple[str, float, int], ...], ...] = (
    (("Equalize", 0.8, 1), ("ShearY", 0.8, 4)),
    (("Color", 0.4, 9), ("Equalize", 0.6, 3)),
    (("Color", 0.4, 1), ("Rotate", 0.6, 8)),
    (("Solarize", 0.8, 3), ("Equalize", 0.4, 7)),
    (("Solarize", 0.4, 2), ("Solarize", 0.6, 2)),
    (("Color", 0.2, 0), ("Equalize", 0.8, 8)),
    (("Equalize", 0.4, 8), ("SolarizeAdd", 0.8, 3)),
    (("ShearX", 0.2, 9), ("Rotate", 0.6, 8)),
    (("Color", 0.6, 1), ("Equalize", 1.0, 2)),
    (("Invert", 0.4, 9), ("Rotate", 0.6, 0)),
    (("Equalize", 1.0, 9), ("ShearY", 0.6, 3)),
    (("Color", 0.4, 7), ("Equalize", 0.6, 0)),
    (("Posterize", 0.4, 6), ("AutoContrast", 0.4, 7)),
    (("Solarize", 0.6, 8), ("Color", 0.6, 9)),
    (("Solarize", 0.2, 4), ("Rotate", 0.8, 9)),
    (("Rotate", 1.0, 7), ("TranslateY", 0.8, 9)),
    (("ShearX", 0.0, 0), ("Solarize", 0.8, 4)),
    (("ShearY", 0.8, 0), ("Color", 0.6, 4)),
    (("Color", 1.0, 0), ("Rotate", 0.6, 2)),
    (("Equalize", 0.8, 4), ("Equalize", 0.0, 8)),
    (("Equalize", 1.0, 4), ("AutoContrast", 0.6, 2)),
    (("ShearY", 0.4, 7), ("SolarizeAdd", 0.6, 7)),
    (("Posterize", 0.8, 2), ("Solarize", 0.6, 10)),
    (("Solarize", 0.6, 8), ("Equalize", 0.6, 1)),
    (("Color", 0.8, 6), ("Rotate", 0.4, 5)),
)

# distort_image_with_randaugment's `available_ops`, in its order (the index drawn picks from this list).
RANDAUGMENT_OPS = (
    "AutoContrast",
    "Equalize",
    "Invert",
    "Rotate",
    "Posterize",
    "Solarize",
    "Color",
    "Contrast",
    "Brightness",
    "Sharpness",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Cutout",
    "SolarizeAdd",
)

_SIGNED = ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY")  # level_to_arg flips these with p = 0.5
_ENHANCE = ("Color", "Contrast", "Brightness", "Sharpness")


# --- the ops: uint8 (H, W, 3) in, uint8 (H, W, 3) out -------------------------------------------------------------


def _u8(x: np.ndarray) -> np.ndarray:
    """TF's float32 -> uint8 after clip_by_value(0, 255): the cast truncates."""
    return np.clip(x, 0.0, 255.0).astype(np.uint8)


def _blend(image1: np.ndarray, image2: np.ndarray, factor: float) -> np.ndarray:
    """autoaugment.py `blend`: image1 + factor * (image2 - image1) in float32, truncated (PIL's Image.blend too)."""
    if factor == 0.0:
        return image1
    if factor == 1.0:
        return image2
    a = image1.astype(np.float32)
    return _u8(a + np.float32(factor) * (image2.astype(np.float32) - a))


_GREY_WEIGHTS = np.array([0.2989, 0.5870, 0.1140], np.float32)  # tf.image.rgb_to_grayscale


def _grey(image: np.ndarray) -> np.ndarray:
    """tf.image.rgb_to_grayscale on uint8: the weights on x / 255 in float32, back to uint8 as trunc(g * 255.5).

    Differs from PIL's convert("L") (weights 0.299/0.587/0.114, rounded) by at most 1.
    """
    x = image.astype(np.float32) * np.float32(1.0 / 255)
    g = x[..., 0] * _GREY_WEIGHTS[0] + x[..., 1] * _GREY_WEIGHTS[1] + x[..., 2] * _GREY_WEIGHTS[2]
    return np.repeat((g * np.float32(255.5)).astype(np.uint8)[..., None], 3, axis=-1)


def color(image: np.ndarray, factor: float) -> np.ndarray:
    """autoaugment.py `color`: blend from TF's grey image."""
    return _blend(_grey(image), image, factor)


def contrast(image: np.ndarray, factor: float) -> np.ndarray:
    """autoaugment.py `contrast`: blend from a constant image.

    TF's constant is sum(histogram) / 256, and the histogram sums to the pixel count, so it is H*W/256 (clipped to
    255, truncated) rather than the mean grey PIL uses (tensorflow/models#8328); kept as the weights were trained.
    """
    h, w = image.shape[:2]
    mean = np.float32(h * w) / np.float32(256.0)
    return _blend(np.full_like(image, _u8(mean)), image, factor)


def brightness(image: np.ndarray, factor: float) -> np.ndarray:
    """autoaugment.py `brightness`: blend from black."""
    return _blend(np.zeros_like(image), image, factor)


_SMOOTH = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], np.float32) / np.float32(13.0)  # PIL's SMOOTH kernel


def sharpness(image: np.ndarray, factor: float) -> np.ndarray:
    """autoaugment.py `sharpness`: blend from the SMOOTH-filtered image (VALID conv, border pixels kept)."""
    x = image.astype(np.float32)
    h, w = image.shape[:2]
    acc = np.zeros((h - 2, w - 2, 3), np.float32)
    for dy in range(3):
        for dx in range(3):
            acc += x[dy : dy + h - 2, dx : dx + w - 2] * _SMOOTH[dy, dx]
    degenerate = image.copy()
    degenerate[1:-1, 1:-1] = _u8(acc)
    return _blend(degenerate, image, factor)


def posterize(image: np.ndarray, bits: int) -> np.ndarray:
    """autoaugment.py `posterize`: (x >> (8 - bits)) << (8 - bits) with TF's uint8 shift semantics.

    TF converts the Python shift to uint8 (TF1-era numpy wraps it mod 256) and its bitwise kernels clamp the
    shift to 0..7; so bits = 0 (level < 2.5) keeps 1 bit, not 0, and bits > 8 (level >= 22.5) also keeps 1 bit.
    """
    shift = np.uint8(min((8 - bits) % 256, 7))
    return (image >> shift) << shift


def solarize(image: np.ndarray, threshold: int) -> np.ndarray:
    """autoaugment.py `solarize`: invert the pixels >= threshold.

    The threshold becomes a uint8 (wrapping mod 256), so level 10's 256 is 0 and every pixel is inverted.
    """
    return np.where(image < threshold % 256, image, 255 - image)


def solarize_add(image: np.ndarray, addition: int, threshold: int = 128) -> np.ndarray:
    """autoaugment.py `solarize_add`: add `addition` (clipped to 0..255) to the pixels below threshold."""
    added = np.clip(image.astype(np.int64) + addition, 0, 255).astype(np.uint8)
    return np.where(image < threshold, added, image)


def autocontrast(image: np.ndarray) -> np.ndarray:
    """autoaugment.py `autocontrast`: stretch each channel's min..max to 0..255 in float32, truncated."""
    out = image.copy()
    for c in range(3):
        ch = image[..., c]
        lo, hi = np.float32(ch.min()), np.float32(ch.max())
        if hi > lo:
            scale = np.float32(255.0) / (hi - lo)
            out[..., c] = _u8(ch.astype(np.float32) * scale + (-lo * scale))
    return out


def equalize(image: np.ndarray) -> np.ndarray:
    """autoaugment.py `equalize`: PIL's histogram equalisation per channel, but with step = (...) // 255.

    PIL divides by 256, so PIL's ImageOps.equalize is up to 2 levels brighter.
    """
    out = image.copy()
    for c in range(3):
        ch = image[..., c]
        histo = np.bincount(ch.ravel(), minlength=256)
        nonzero = histo[histo != 0]
        step = (int(nonzero.sum()) - int(nonzero[-1])) // 255
        if step:
            lut = (np.cumsum(histo) + step // 2) // step
            lut = np.clip(np.concatenate([[0], lut[:-1]]), 0, 255).astype(np.uint8)
            out[..., c] = lut[ch]
    return out


def invert(image: np.ndarray) -> np.ndarray:
    """autoaugment.py `invert`."""
    return 255 - image


def _round_half_away(v: np.ndarray) -> np.ndarray:
    """std::round of float32 values (exact in float64)."""
    v = v.astype(np.float64)
    return (np.sign(v) * np.floor(np.abs(v) + 0.5)).astype(np.int64)


def _transform(image: np.ndarray, a: tuple, b: tuple, replace: int) -> np.ndarray:
    """contrib_image.transform (NEAREST) between autoaugment.py's wrap/unwrap.

    Output pixel (x, y) takes the input pixel nearest (a0 x + a1 y + a2, b0 x + b1 y + b2), computed in float32 and
    rounded half away from zero (TF's ImageProjectiveTransform); outside the image it takes `replace`.
    """
    h, w = image.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    ix = _round_half_away(a[0] * xs + a[1] * ys + a[2])
    iy = _round_half_away(b[0] * xs + b[1] * ys + b[2])
    inside = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
    out = np.full_like(image, replace)
    out[inside] = image[iy[inside], ix[inside]]
    return out


def rotate(image: np.ndarray, degrees: float, replace: int) -> np.ndarray:
    """autoaugment.py `rotate` via contrib_image.rotate: about ((w-1)/2, (h-1)/2), counterclockwise for > 0."""
    h, w = (np.float32(n) for n in image.shape[:2])
    rad = np.float32(degrees) * np.float32(math.pi / 180.0)
    cos, sin = np.cos(rad), np.sin(rad)
    x_offset = ((w - 1) - (cos * (w - 1) - sin * (h - 1))) / np.float32(2.0)
    y_offset = ((h - 1) - (sin * (w - 1) + cos * (h - 1))) / np.float32(2.0)
    return _transform(image, (cos, -sin, x_offset), (sin, cos, y_offset), replace)


def shear_x(image: np.ndarray, level: float, replace: int) -> np.ndarray:
    """autoaugment.py `shear_x`: output (x, y) samples (x + level * y, y)."""
    return _transform(image, (1.0, level, 0.0), (0.0, 1.0, 0.0), replace)


def shear_y(image: np.ndarray, level: float, replace: int) -> np.ndarray:
    """autoaugment.py `shear_y`: output (x, y) samples (x, level * x + y)."""
    return _transform(image, (1.0, 0.0, 0.0), (level, 1.0, 0.0), replace)


def translate_x(image: np.ndarray, pixels: float, replace: int) -> np.ndarray:
    """autoaugment.py `translate_x`: output (x, y) samples (x + pixels, y); content moves left for pixels > 0."""
    return _transform(image, (1.0, 0.0, pixels), (0.0, 1.0, 0.0), replace)


def translate_y(image: np.ndarray, pixels: float, replace: int) -> np.ndarray:
    """autoaugment.py `translate_y`: output (x, y) samples (x, y + pixels); content moves up for pixels > 0."""
    return _transform(image, (1.0, 0.0, 0.0), (0.0, 1.0, pixels), replace)


def cutout(image: np.ndarray, pad_size: int, replace: int, center: tuple[int, int]) -> np.ndarray:
    """autoaugment.py `cutout`: a (2 pad_size)^2 square around center (row, col), clipped to the image, set to
    `replace` (RandAugment passes 128, not cutout's default 0)."""
    h, w = image.shape[:2]
    cy, cx = center
    out = image.copy()
    out[max(0, cy - pad_size) : min(h, cy + pad_size), max(0, cx - pad_size) : min(w, cx + pad_size)] = replace
    return out


OPS: dict[str, Callable[..., np.ndarray]] = {
    "AutoContrast": autocontrast,
    "Equalize": equalize,
    "Invert": invert,
    "Rotate": rotate,
    "Posterize": posterize,
    "Solarize": solarize,
    "SolarizeAdd": solarize_add,
    "Color": color,
    "Contrast": contrast,
    "Brightness": brightness,
    "Sharpness": sharpness,
    "ShearX": shear_x,
    "ShearY": shear_y,
    "TranslateX": translate_x,
    "TranslateY": translate_y,
    "Cutout": cutout,
}


# --- levels, policies ------------------------------------------------------------------------------------------------


def level_to_arg(name: str, level: float, hparams: Hparams, negate: bool = False) -> tuple:
    """autoaugment.py `level_to_arg`: the op's arguments at `level` (0..10), the random sign flip given as `negate`.

    Rotate 30 deg, shear 0.3, translate `translate_const` pixels (all at level 10, sign flipped half the time);
    enhance factors 0.1 + 1.8 * level / 10; posterize keeps int(level / 10 * 4) bits and solarize uses threshold
    int(level / 10 * 256) (both get *weaker* as the level grows, as in TF); SolarizeAdd adds int(level / 10 * 110);
    cutout's half-size is int(level / 10 * cutout_const).
    """
    frac = level / MAX_LEVEL
    if name in ("AutoContrast", "Equalize", "Invert"):
        return ()
    if name in _SIGNED:
        scale = {"Rotate": 30.0, "ShearX": 0.3, "ShearY": 0.3}.get(name, float(hparams.translate_const))
        v = frac * scale
        return (-v if negate else v,)
    if name in _ENHANCE:
        return (frac * 1.8 + 0.1,)
    if name == "Posterize":
        return (int(frac * 4),)
    if name == "Solarize":
        return (int(frac * 256),)
    if name == "SolarizeAdd":
        return (int(frac * 110),)
    if name == "Cutout":
        return (int(frac * hparams.cutout_const),)
    raise ValueError(f"unknown augmentation op {name!r}; expected one of {sorted(OPS)}")


def apply_op(image: np.ndarray, name: str, level: float, rng: np.random.Generator, hparams: Hparams) -> np.ndarray:
    """One op at `level` (TF's 0..10 scale); draws from `rng`, in order: the sign (signed ops: negative when
    u < 0.5, as `_randomly_negate_tensor`), then cutout's center row and column (uniform, as `cutout`)."""
    negate = bool(rng.random() < 0.5) if name in _SIGNED else False
    args = level_to_arg(name, level, hparams, negate)
    if name in _SIGNED:
        return OPS[name](image, *args, REPLACE)
    if name == "Cutout":
        h, w = image.shape[:2]
        center = (int(rng.integers(h)), int(rng.integers(w)))
        return OPS[name](image, *args, REPLACE, center)
    return OPS[name](image, *args)


def autoaugment(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`distort_image_with_autoaugment(image, "v0")`: a uniform sub-policy of POLICY_V0, each op applied when
    u + prob >= 1 (TF's floor(u + prob)); draws: the sub-policy, then per op u and, if applied, the op's own."""
    for name, prob, level in POLICY_V0[int(rng.integers(len(POLICY_V0)))]:
        if rng.random() + prob >= 1.0:
            image = apply_op(image, name, level, rng, AUTOAUGMENT_HPARAMS)
    return image


def randaugment(image: np.ndarray, rng: np.random.Generator, num_layers: int, magnitude: float) -> np.ndarray:
    """`distort_image_with_randaugment`: `num_layers` ops drawn uniformly (with replacement) from RANDAUGMENT_OPS,
    each at `magnitude` and always applied: TF draws a per-op `prob` there but never uses it."""
    for _ in range(num_layers):
        name = RANDAUGMENT_OPS[int(rng.integers(len(RANDAUGMENT_OPS)))]
        image = apply_op(image, name, float(magnitude), rng, RANDAUGMENT_HPARAMS)
    return image


# --- crops, transforms -----------------------------------------------------------------------------------------------


def random_resized_crop_box(
    height: int,
    width: int,
    rng: np.random.Generator,
    area: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    attempts: int = 10,
) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a crop with a random share of the area and a log-uniform aspect ratio.

    After `attempts` misses (a crop that does not fit), falls back to the center crop at the nearest
    allowed aspect ratio, like torchvision's RandomResizedCrop.
    """
    total = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(attempts):
        target = total * rng.uniform(area[0], area[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, left + w, top + h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    top, left = (height - h) // 2, (width - w) // 2
    return left, top, left + w, top + h


def center_crop_box(height: int, width: int, crop_pct: float) -> tuple[int, int, int, int]:
    """The centered square whose side is `crop_pct` of the shorter side (the TF reference's eval crop)."""
    side = max(1, int(round(crop_pct * min(height, width))))
    top, left = (height - side) // 2, (width - side) // 2
    return left, top, left + side, top + side


def _to_pil(image: np.ndarray) -> Image.Image:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) RGB image, got {image.dtype} {image.shape}")
    return Image.fromarray(image)


def _normalize(image: np.ndarray | Image.Image, mean, std) -> np.ndarray:
    x = np.asarray(image, dtype=np.float32) / 255.0
    return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


AUGMENTS = ("autoaugment", "randaugment", "none")


@dataclass(frozen=True)
class TrainTransform:
    """uint8 RGB (H, W, 3) + rng -> normalised float32 (size, size, 3).

    augment: "autoaugment" (TF policy_v0), "randaugment" (TF's, `randaugment_n` ops at magnitude `randaugment_m`
    on the 0..10 scale; TF's main.py defaults are 2 and 10) or "none".
    """

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    crop_min_area: float = 0.08
    flip: bool = True
    augment: str = "autoaugment"
    randaugment_n: int = 2
    randaugment_m: float = 10.0

    def __post_init__(self) -> None:
        if self.interpolation not in _RESAMPLE:
            raise ValueError(f"unknown interpolation {self.interpolation!r}; expected one of {sorted(_RESAMPLE)}")
        if self.augment not in AUGMENTS:
            raise ValueError(f"unknown augment {self.augment!r}; expected autoaugment, randaugment or none")

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        img = _to_pil(image)
        box = random_resized_crop_box(img.height, img.width, rng, (self.crop_min_area, 1.0))
        img = img.resize((self.size, self.size), _RESAMPLE[self.interpolation], box=box)
        if self.flip and rng.random() < 0.5:
            img = ImageOps.mirror(img)
        x = np.asarray(img)
        if self.augment == "autoaugment":
            x = autoaugment(x, rng)
        elif self.augment == "randaugment":
            x = randaugment(x, rng, self.randaugment_n, self.randaugment_m)
        return _normalize(x, self.mean, self.std)


@dataclass(frozen=True)
class EvalTransform:
    """uint8 RGB (H, W, 3) -> center crop `crop_pct`, resize, normalise: float32 (size, size, 3)."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    crop_pct: float = 0.875

    def __call__(self, image: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        img = _to_pil(image)
        box = center_crop_box(img.height, img.width, self.crop_pct)
        img = img.resize((self.size, self.size), _RESAMPLE[self.interpolation], box=box)
        return _normalize(img, self.mean, self.std)
