"""lukemelas' efficientnet_pytorch: TF ports in `_blocks.{i}` with `_`-prefixed module names.

Its weights are the TF reference checkpoints, so they take TF SAME padding, BN eps 1e-3 and TF's eval crop;
Lite ports reuse this layout (docs/design.md, "Weight sources").
"""

from __future__ import annotations

from .base import WeightSource, any_spec, layout, tf_eval_preprocessing

_TOP = {"stem.conv": "_conv_stem", "stem.bn": "_bn0", "head.conv": "_conv_head", "head.bn": "_bn1",
        "classifier": "_fc"}  # fmt: skip
_BLOCK = {"expand.conv": "_expand_conv", "expand.bn": "_bn0", "depthwise.conv": "_depthwise_conv",
          "depthwise.bn": "_bn1", "se.reduce": "_se_reduce", "se.excite": "_se_expand",
          "project.conv": "_project_conv", "project.bn": "_bn2"}  # fmt: skip

SOURCE = WeightSource(
    name="efficientnet_pytorch",
    order=2,
    module_name=layout(_TOP, lambda b, repeat, part: f"_blocks.{b.index}.{_BLOCK[part]}"),
    conventions="efficientnet_pytorch",
    preprocessing=tf_eval_preprocessing,
    exports=any_spec,
)
