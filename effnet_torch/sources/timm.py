"""timm: `blocks.{stage}.{repeat}` with conv_pw / conv_dw / conv_pwl, and one layout for two kinds of weights.

Plain `efficientnet_*` and TF-ported `tf_efficientnet_*` weights have identical keys and shapes but different
padding and BN eps, so only a name tells them apart: the weight source "timm_tf" or a `tf_` model name;
without one the plain conventions are assumed and said so (docs/design.md, "Weight sources").

EfficientNetV2 is the same layout with two more block classes (timm's `_efficientnet_blocks.py`): a fused block
that does not expand is a `ConvBnAct` ("cn" in timm's arch strings), one that does an `EdgeResidual` ("er").
`tf_efficientnetv2_*` (TF ports) and `efficientnetv2_s/m/l/xl` (timm's untrained copies) hold the spec's V2
tables; timm's own `efficientnetv2_rw_*` do not (an expand-1 EdgeResidual first stage that still has a 1x1
project, another last stage and head), so their files match no variant.
"""

from __future__ import annotations

from effnet_spec import BlockSpec, ModelSpec, Preprocessing

from .base import ModelName, WeightSource, any_spec, call, class_names, layout, named, tf_eval_preprocessing

_TOP = {"stem.conv": "conv_stem", "stem.bn": "bn1", "head.conv": "conv_head", "head.bn": "bn2",
        "classifier": "classifier"}  # fmt: skip
# An inverted-residual block names its convs conv_pw (expand) / conv_dw / conv_pwl (project) with bn1..bn3;
# a depthwise-separable block (no expand: stage 0) has conv_dw/bn1 then conv_pw/bn2 (so conv_pw changes role).
_IR = {"expand.conv": "conv_pw", "expand.bn": "bn1", "depthwise.conv": "conv_dw", "depthwise.bn": "bn2",
       "project.conv": "conv_pwl", "project.bn": "bn3"}  # fmt: skip
_DS = {"depthwise.conv": "conv_dw", "depthwise.bn": "bn1", "project.conv": "conv_pw", "project.bn": "bn2"}
_SE = {"se.reduce": "se.conv_reduce", "se.excite": "se.conv_expand"}
# V2's fused blocks: ConvBnAct (no expand: one kxk conv + bn1) and EdgeResidual (kxk conv_exp + bn1, then the
# 1x1 conv_pwl + bn2).
_CN = {"fused.conv": "conv", "fused.bn": "bn1"}
_ER = {"fused.conv": "conv_exp", "fused.bn": "bn1", "project.conv": "conv_pwl", "project.bn": "bn2"}

_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_INCEPTION = (0.5, 0.5, 0.5)  # (x - 0.5) / 0.5 on [0, 1]: the [-1, 1] input of TF-ported Lite / AdvProp weights

# timm's default pretrained cfg per model (timm 1.0.31, `timm.models.get_pretrained_cfg(name)`):
# (input size, crop_pct, interpolation, mean/std). The external parity tests check this table against timm.
_I, _T = "imagenet", "inception"
TIMM_PREPROCESSING: dict[str, tuple[int, float, str, str]] = {
    "efficientnet_b0": (224, 0.875, "bicubic", _I), "efficientnet_b1": (240, 0.9, "bicubic", _T),
    "efficientnet_b2": (256, 0.875, "bicubic", _I), "efficientnet_b3": (288, 0.875, "bicubic", _I),
    "efficientnet_b4": (320, 0.875, "bicubic", _I), "efficientnet_b5": (448, 1.0, "bicubic", _I),
    "efficientnet_b6": (528, 0.942, "bicubic", _I), "efficientnet_b7": (600, 0.949, "bicubic", _I),
    "efficientnet_b8": (672, 0.954, "bicubic", _I), "efficientnet_l2": (800, 0.961, "bicubic", _I),
    "efficientnet_lite0": (224, 0.875, "bicubic", _I), "efficientnet_lite1": (240, 0.882, "bicubic", _I),
    "efficientnet_lite2": (260, 0.89, "bicubic", _I), "efficientnet_lite3": (300, 0.904, "bicubic", _I),
    "efficientnet_lite4": (380, 0.922, "bicubic", _I),
    "tf_efficientnet_b0": (224, 0.875, "bicubic", _I), "tf_efficientnet_b1": (240, 0.882, "bicubic", _I),
    "tf_efficientnet_b2": (260, 0.89, "bicubic", _I), "tf_efficientnet_b3": (300, 0.904, "bicubic", _I),
    "tf_efficientnet_b4": (380, 0.922, "bicubic", _I), "tf_efficientnet_b5": (456, 0.934, "bicubic", _I),
    "tf_efficientnet_b6": (528, 0.942, "bicubic", _I), "tf_efficientnet_b7": (600, 0.949, "bicubic", _I),
    "tf_efficientnet_b8": (672, 0.954, "bicubic", _T), "tf_efficientnet_l2": (475, 0.936, "bicubic", _I),
    "tf_efficientnet_lite0": (224, 0.875, "bicubic", _T), "tf_efficientnet_lite1": (240, 0.882, "bicubic", _T),
    "tf_efficientnet_lite2": (260, 0.89, "bicubic", _T), "tf_efficientnet_lite3": (300, 0.904, "bilinear", _T),
    "tf_efficientnet_lite4": (380, 0.92, "bilinear", _T),
    # V2: timm's input_size is the side V2 trains at (test_input_size, the eval side, is the spec's resolution);
    # kept as timm's data config gives it by default, as for V1. tf_efficientnetv2_b3's default tag is
    # in21k_ft_in1k; its in1k weights have their own row.
    "efficientnetv2_s": (288, 1.0, "bicubic", _I), "efficientnetv2_m": (320, 1.0, "bicubic", _I),
    "efficientnetv2_l": (384, 1.0, "bicubic", _I), "efficientnetv2_xl": (384, 1.0, "bicubic", _I),
    "tf_efficientnetv2_s": (300, 1.0, "bicubic", _T), "tf_efficientnetv2_m": (384, 1.0, "bicubic", _T),
    "tf_efficientnetv2_l": (384, 1.0, "bicubic", _T), "tf_efficientnetv2_xl": (384, 1.0, "bicubic", _T),
    "tf_efficientnetv2_b0": (192, 0.875, "bicubic", _I), "tf_efficientnetv2_b1": (192, 0.882, "bicubic", _I),
    "tf_efficientnetv2_b2": (208, 0.89, "bicubic", _I), "tf_efficientnetv2_b3": (240, 0.9, "bicubic", _T),
    "tf_efficientnetv2_b3.in1k": (240, 0.904, "bicubic", _I),
}  # fmt: skip


def timm_name(variant: str, tf: bool) -> str:
    """timm's model name for a variant: "efficientnet_b3", "tf_efficientnet_lite0", "tf_efficientnetv2_s"."""
    base = f"efficientnetv2_{variant[3:]}" if variant.startswith("v2_") else f"efficientnet_{variant}"
    return ("tf_" if tf else "") + base


def _block(b: BlockSpec, repeat: int, part: str) -> str:
    if b.fused:
        names = _ER if b.has_expand else _CN
    else:
        names = (_IR if b.has_expand else _DS) | _SE
    return f"blocks.{b.stage}.{repeat}.{names[part]}"


def _preprocessing(spec: ModelSpec, name: ModelName) -> Preprocessing:
    """timm's pretrained cfg for the model (for its tag where that has its own); TF's eval crop for a model it has
    no cfg for."""
    model = timm_name(spec.name, name.tf)
    model = f"{model}.{name.tag}" if f"{model}.{name.tag}" in TIMM_PREPROCESSING else model
    if model not in TIMM_PREPROCESSING:
        return tf_eval_preprocessing(spec)
    res, crop_pct, interp, norm = TIMM_PREPROCESSING[model]
    if name.tag.startswith("ap"):  # AdvProp weights take [-1, 1] input (timm's `ap` cfgs)
        norm = _T
    mean, std = (_INCEPTION, _INCEPTION) if norm == _T else (_IMAGENET_MEAN, _IMAGENET_STD)
    return Preprocessing(resolution=res, crop_pct=crop_pct, interpolation=interp, mean=mean, std=std,
                         class_names=class_names(spec))  # fmt: skip


def _loader(spec: ModelSpec) -> str:
    """The timm model these weights load into: `tf_*` for TF SAME padding, with `bn_eps` where its default differs."""
    if not named(spec):
        return "timm has no model of this architecture (not a named variant's); build a timm EfficientNet of its blocks"
    tf = spec.conv.padding == "tf_same"
    kwargs: dict[str, object] = {}
    if spec.num_classes != 1000:
        kwargs["num_classes"] = spec.num_classes
    if spec.in_channels != 3:
        kwargs["in_chans"] = spec.in_channels
    if spec.conv.bn_eps != (1e-3 if tf else 1e-5):
        kwargs["bn_eps"] = spec.conv.bn_eps
    return call("timm.create_model", timm_name(spec.name, tf), **kwargs)


SOURCE = WeightSource(
    name="timm",
    order=1,
    module_name=layout(_TOP, _block),
    conventions="timm",
    tf_conventions="timm_tf",
    preprocessing=_preprocessing,
    exports=any_spec,
    loader=_loader,
    unnamed_note="assumed timm efficientnet_* conventions (symmetric padding, eps 1e-5); "
    "for TF-ported weights pass --weight-source timm_tf or --model tf_efficientnet_<variant>",
)
