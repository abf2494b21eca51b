"""lukemelas' efficientnet_pytorch: TF ports in `_blocks.{i}` with `_`-prefixed module names.

Its weights are the TF reference checkpoints, so they take TF SAME padding, BN eps 1e-3 and TF's eval crop;
Lite ports reuse this layout (docs/design.md, "Weight sources"). It has no EfficientNetV2, so no names for a
Fused-MBConv block: V2 variants are never inferred for, imported from or exported to it.
"""

from __future__ import annotations

from effnet_spec import ModelSpec

from .base import WeightSource, any_spec, call, differences, layout, mbconv_only, named, tf_eval_preprocessing

_TOP = {"stem.conv": "_conv_stem", "stem.bn": "_bn0", "head.conv": "_conv_head", "head.bn": "_bn1",
        "classifier": "_fc"}  # fmt: skip
_BLOCK = {"expand.conv": "_expand_conv", "expand.bn": "_bn0", "depthwise.conv": "_depthwise_conv",
          "depthwise.bn": "_bn1", "se.reduce": "_se_reduce", "se.excite": "_se_expand",
          "project.conv": "_project_conv", "project.bn": "_bn2"}  # fmt: skip


def _loader(spec: ModelSpec) -> str:
    """lukemelas' builder for a B variant (always TF SAME padding); Lite ports use the layout, not the package."""
    if not named(spec) or spec.family.name != "efficientnet":
        return "the efficientnet_pytorch package has no model of this architecture (its layout only: Lite ports use it)"
    kwargs: dict[str, object] = {}
    if spec.num_classes != 1000:
        kwargs["num_classes"] = spec.num_classes
    if spec.in_channels != 3:
        kwargs["in_channels"] = spec.in_channels
    if spec.conv.bn_eps != 1e-3:
        kwargs["batch_norm_epsilon"] = spec.conv.bn_eps
    return call("efficientnet_pytorch.EfficientNet.from_name", f"efficientnet-{spec.name}", **kwargs) + differences(
        spec, "tf_same", spec.conv.bn_eps
    )


SOURCE = WeightSource(
    name="efficientnet_pytorch",
    order=2,
    module_name=layout(_TOP, lambda b, repeat, part: f"_blocks.{b.index}.{_BLOCK[part]}"),
    conventions="efficientnet_pytorch",
    preprocessing=tf_eval_preprocessing,
    exports=any_spec,
    loader=_loader,
    holds=mbconv_only("efficientnet_pytorch"),
)
