"""torchvision: `features.{stage + 1}.{repeat}.block` Sequentials, and only the EfficientNet b0-b7 models.

Its b5-b7 are built with other BN constants than b0-b4 (that rule lives in `effnet_spec.conventions`); its
DEFAULT weights each come with their own resize and crop, kept here (docs/design.md, "Weight sources").
"""

from __future__ import annotations

from effnet_spec import BlockSpec, ModelSpec, Preprocessing

from .base import ModelName, WeightSource, class_names, layout, native_preprocessing

# torchvision's DEFAULT weights (models/efficientnet.py, torchvision 0.29): (crop_size, resize_size, interpolation).
TORCHVISION_PREPROCESSING: dict[str, tuple[int, int, str]] = {
    "b0": (224, 256, "bicubic"), "b1": (240, 255, "bilinear"), "b2": (288, 288, "bicubic"),
    "b3": (300, 320, "bicubic"), "b4": (380, 384, "bicubic"), "b5": (456, 456, "bicubic"),
    "b6": (528, 528, "bicubic"), "b7": (600, 600, "bicubic"),
}  # fmt: skip


def _top(spec: ModelSpec) -> dict[str, str]:
    head = f"features.{spec.num_stages + 1}"
    return {"stem.conv": "features.0.0", "stem.bn": "features.0.1", "head.conv": f"{head}.0", "head.bn": f"{head}.1",
            "classifier": "classifier.1"}  # fmt: skip


def _block(b: BlockSpec, repeat: int, part: str) -> str:
    # A block is a Sequential of [expand], depthwise, [SE], project; each conv-BN pair is itself .0 / .1.
    layer, _, leaf = part.partition(".")
    layers = (["expand"] if b.has_expand else []) + ["depthwise"] + (["se"] if b.se_ch else []) + ["project"]
    sub = {"conv": "0", "bn": "1", "reduce": "fc1", "excite": "fc2"}[leaf]
    return f"features.{b.stage + 1}.{repeat}.block.{layers.index(layer)}.{sub}"


def _preprocessing(spec: ModelSpec, name: ModelName) -> Preprocessing:
    if spec.name not in TORCHVISION_PREPROCESSING:
        return native_preprocessing(spec)
    crop, resize, interp = TORCHVISION_PREPROCESSING[spec.name]
    return Preprocessing(resolution=crop, crop_pct=crop / resize, interpolation=interp, class_names=class_names(spec))


def _exports(spec: ModelSpec) -> str | None:
    if spec.family.name == "efficientnet" and spec.name in TORCHVISION_PREPROCESSING:
        return None
    return f"torchvision has no EfficientNet {spec.name!r}; it offers b0..b7"


SOURCE = WeightSource(
    name="torchvision",
    module_name=layout(_top, _block),
    conventions="torchvision",
    preprocessing=_preprocessing,
    exports=_exports,
)
