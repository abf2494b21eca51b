"""Image preprocessing for training and evaluation: pure numpy/PIL, randomness passed in as a numpy Generator.

Train: random resized crop (area 0.08-1, aspect 3/4-4/3, as in Inception / the TF reference), horizontal
flip, AutoAugment (the ImageNet policy of Cubuk et al. 2019, Table 9 / arXiv:1805.09501) or RandAugment
(N ops at magnitude M on the 0..10 scale, arXiv:1909.13719), resize to the model resolution (bicubic;
bilinear for Lite), per-family normalisation. Eval: center crop of `crop_pct` of the shorter side, resize.

Transforms are frozen dataclasses (picklable, so Grain worker processes can run them) taking a uint8 HWC
RGB array and returning a float32 HWC array. Fill colour for geometric ops is 128, as in the TF reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

__all__ = [
    "AUTOAUGMENT_IMAGENET",
    "RANDAUGMENT_OPS",
    "EvalTransform",
    "TrainTransform",
    "apply_op",
    "center_crop_box",
    "random_resized_crop_box",
]

_RESAMPLE = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}
FILL = (128, 128, 128)

# AutoAugment ImageNet policy: 25 sub-policies of two (op, probability, magnitude bin 0..9).
AUTOAUGMENT_IMAGENET: tuple[tuple[tuple[str, float, int | None], ...], ...] = (
    (("Posterize", 0.4, 8), ("Rotate", 0.6, 9)),
    (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
    (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
    (("Posterize", 0.6, 7), ("Posterize", 0.6, 6)),
    (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
    (("Equalize", 0.4, None), ("Rotate", 0.8, 8)),
    (("Solarize", 0.6, 3), ("Equalize", 0.6, None)),
    (("Posterize", 0.8, 5), ("Equalize", 1.0, None)),
    (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)),
    (("Equalize", 0.6, None), ("Posterize", 0.4, 6)),
    (("Rotate", 0.8, 8), ("Color", 0.4, 0)),
    (("Rotate", 0.4, 9), ("Equalize", 0.6, None)),
    (("Equalize", 0.0, None), ("Equalize", 0.8, None)),
    (("Invert", 0.6, None), ("Equalize", 1.0, None)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
    (("Color", 0.8, 8), ("Solarize", 0.8, 7)),
    (("Sharpness", 0.4, 7), ("Invert", 0.6, None)),
    (("ShearX", 0.6, 5), ("Equalize", 1.0, None)),
    (("Color", 0.4, 0), ("Equalize", 0.6, None)),
    (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
    (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
    (("Invert", 0.6, None), ("Equalize", 1.0, None)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
)
AUTOAUGMENT_BINS = 10  # AutoAugment magnitudes are bins 0..9

# RandAugment ops (the TF reference's list, Cutout/SolarizeAdd left out).
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
)
RANDAUGMENT_MAX = 10.0  # RandAugment magnitude scale


def _signed(rng: np.random.Generator, v: float) -> float:
    return -v if rng.random() < 0.5 else v


def apply_op(img: Image.Image, name: str, level: float, rng: np.random.Generator) -> Image.Image:
    """One augmentation op at `level` in [0, 1] (the share of its maximum strength); signs drawn from `rng`.

    Maxima: rotate 30 deg, shear 0.3, translate 0.45 of the side, enhance factors 1 +- 0.9, posterize to
    4 bits, solarize threshold from 256 down to 0.
    """
    w, h = img.size
    if name == "AutoContrast":
        return ImageOps.autocontrast(img)
    if name == "Equalize":
        return ImageOps.equalize(img)
    if name == "Invert":
        return ImageOps.invert(img)
    if name == "Rotate":
        return img.rotate(_signed(rng, 30.0 * level), resample=Image.BILINEAR, fillcolor=FILL)
    if name == "Posterize":
        return ImageOps.posterize(img, max(1, 8 - int(round(4 * level))))
    if name == "Solarize":
        return ImageOps.solarize(img, int(round(256 - 256 * level)))
    if name in ("Color", "Contrast", "Brightness", "Sharpness"):
        enhancer = getattr(ImageEnhance, name)
        return enhancer(img).enhance(1.0 + _signed(rng, 0.9 * level))
    if name in ("ShearX", "ShearY"):
        s = _signed(rng, 0.3 * level)
        coeffs = (1, s, 0, 0, 1, 0) if name == "ShearX" else (1, 0, 0, s, 1, 0)
        return img.transform(img.size, Image.AFFINE, coeffs, resample=Image.BILINEAR, fillcolor=FILL)
    if name in ("TranslateX", "TranslateY"):
        t = _signed(rng, 0.45 * level)
        coeffs = (1, 0, t * w, 0, 1, 0) if name == "TranslateX" else (1, 0, 0, 0, 1, t * h)
        return img.transform(img.size, Image.AFFINE, coeffs, resample=Image.BILINEAR, fillcolor=FILL)
    raise ValueError(f"unknown augmentation op {name!r}; expected one of {RANDAUGMENT_OPS}")


def autoaugment(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """One uniformly chosen sub-policy of the ImageNet policy, each op applied with its probability."""
    for name, prob, bin_ in AUTOAUGMENT_IMAGENET[rng.integers(len(AUTOAUGMENT_IMAGENET))]:
        if rng.random() < prob:
            img = apply_op(img, name, 0.0 if bin_ is None else bin_ / (AUTOAUGMENT_BINS - 1), rng)
    return img


def randaugment(img: Image.Image, rng: np.random.Generator, n: int, m: float) -> Image.Image:
    """`n` ops drawn uniformly with replacement, each at magnitude m / 10."""
    for i in rng.integers(len(RANDAUGMENT_OPS), size=n):
        img = apply_op(img, RANDAUGMENT_OPS[i], m / RANDAUGMENT_MAX, rng)
    return img


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


def _normalize(img: Image.Image, mean, std) -> np.ndarray:
    x = np.asarray(img, dtype=np.float32) / 255.0
    return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


@dataclass(frozen=True)
class TrainTransform:
    """uint8 RGB (H, W, 3) + rng -> normalised float32 (size, size, 3)."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    crop_min_area: float = 0.08
    flip: bool = True
    augment: str = "autoaugment"  # "autoaugment" | "randaugment" | "none"
    randaugment_n: int = 2
    randaugment_m: float = 9.0

    def __post_init__(self) -> None:
        if self.interpolation not in _RESAMPLE:
            raise ValueError(f"unknown interpolation {self.interpolation!r}; expected one of {sorted(_RESAMPLE)}")
        if self.augment not in ("autoaugment", "randaugment", "none"):
            raise ValueError(f"unknown augment {self.augment!r}; expected autoaugment, randaugment or none")

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        img = _to_pil(image)
        box = random_resized_crop_box(img.height, img.width, rng, (self.crop_min_area, 1.0))
        img = img.resize((self.size, self.size), _RESAMPLE[self.interpolation], box=box)
        if self.flip and rng.random() < 0.5:
            img = ImageOps.mirror(img)
        if self.augment == "autoaugment":
            img = autoaugment(img, rng)
        elif self.augment == "randaugment":
            img = randaugment(img, rng, self.randaugment_n, self.randaugment_m)
        return _normalize(img, self.mean, self.std)


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
