"""torchvision: `features.{stage + 1}.{repeat}.block` Sequentials, and only the EfficientNet b0-b7 and V2 S/M/L models.

Its b5-b7 and V2 are built with other BN constants than b0-b4 (that rule lives in `effnet_spec.conventions`); its
DEFAULT weights each come with their own resize and crop, kept here (docs/design.md, "Weight sources"). A V2
Fused-MBConv block is a Sequential too: the kxk conv, then the 1x1 project when it expands.
"""

from __future__ import annotations

import functools
from dataclasses import replace

from effnet_spec import VARIANTS, ModelSpec, Preprocessing, conventions_for
from effnet_spec.contract import Module, modules

from .base import ModelName, WeightSource, call, class_names, differences, native_preprocessing

# torchvision's DEFAULT weights (models/efficientnet.py, torchvision 0.29): (crop_size, resize_size, interpolation).
TORCHVISION_PREPROCESSING: dict[str, tuple[int, int, str]] = {
    "b0": (224, 256, "bicubic"), "b1": (240, 255, "bilinear"), "b2": (288, 288, "bicubic"),
    "b3": (300, 320, "bicubic"), "b4": (380, 384, "bicubic"), "b5": (456, 456, "bicubic"),
    "b6": (528, 528, "bicubic"), "b7": (600, 600, "bicubic"),
    "v2_s": (384, 384, "bilinear"), "v2_m": (480, 480, "bilinear"), "v2_l": (480, 480, "bicubic"),
}  # fmt: skip
# Weights whose transforms normalise otherwise than ImageNet's mean and std: V2-L (ported from automl) takes [-1, 1].
TORCHVISION_MEAN_STD: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {"v2_l": ((0.5,) * 3, (0.5,) * 3)}


def _top(spec: ModelSpec) -> dict[str, str]:
    head = f"features.{spec.num_stages + 1}"
    return {"stem.conv": "features.0.0", "stem.bn": "features.0.1", "head.conv": f"{head}.0", "head.bn": f"{head}.1",
            "classifier": "classifier.1"}  # fmt: skip


@functools.lru_cache(maxsize=4)  # a key map asks once per module of one spec
def _layers(spec: ModelSpec) -> dict[int, tuple[str, ...]]:
    """block index -> its Sequential's layers: the distinct first parts of its contract modules, in their order
    ("expand", "depthwise", "se", "project", those the block has; a fused block's "fused", then "project")."""
    out: dict[int, dict[str, None]] = {}
    for m in modules(spec):
        if m.block is not None:
            out.setdefault(m.block, {})[m.part.partition(".")[0]] = None
    return {b: tuple(parts) for b, parts in out.items()}


def _module_name(spec: ModelSpec, m: Module, repeat: int) -> str:
    if m.block is None:
        return _top(spec)[m.part]
    # A block is a Sequential of its layers; each conv-BN pair is itself .0 / .1, SE has fc1 / fc2.
    layer, _, leaf = m.part.partition(".")
    sub = {"conv": "0", "bn": "1", "reduce": "fc1", "excite": "fc2"}[leaf]
    index = _layers(spec)[m.block].index(layer)
    return f"features.{spec.blocks[m.block].stage + 1}.{repeat}.block.{index}.{sub}"


def _preprocessing(spec: ModelSpec, name: ModelName) -> Preprocessing:
    if spec.name not in TORCHVISION_PREPROCESSING:
        return native_preprocessing(spec)
    crop, resize, interp = TORCHVISION_PREPROCESSING[spec.name]
    pre = Preprocessing(resolution=crop, crop_pct=crop / resize, interpolation=interp, class_names=class_names(spec))
    if spec.name in TORCHVISION_MEAN_STD:
        mean, std = TORCHVISION_MEAN_STD[spec.name]
        pre = replace(pre, mean=mean, std=std)
    return pre


def _exports(spec: ModelSpec) -> str | None:
    if spec.name in TORCHVISION_PREPROCESSING and spec.family.name == VARIANTS[spec.name].family:
        return None
    return f"torchvision has no EfficientNet {spec.name!r}; it offers b0..b7, v2_s, v2_m and v2_l"


def _loader(spec: ModelSpec) -> str:
    """torchvision's builder for the variant; it pads symmetrically and fixes BN eps per variant."""
    kwargs = {"num_classes": spec.num_classes} if spec.num_classes != 1000 else {}
    eps = conventions_for("torchvision", spec.name).bn_eps
    extra = " (torchvision takes 3-channel input only)" if spec.in_channels != 3 else ""
    return call(f"torchvision.models.efficientnet_{spec.name}", **kwargs) + differences(spec, "symmetric", eps) + extra


SOURCE = WeightSource(
    name="torchvision",
    order=0,
    module_name=_module_name,
    conventions="torchvision",
    preprocessing=_preprocessing,
    exports=_exports,
    loader=_loader,
)
