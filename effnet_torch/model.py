"""`EfficientNet` in PyTorch (NCHW), built by walking a resolved `effnet_spec.ModelSpec`.

Its state_dict is exactly `effnet_spec.contract.tensors(spec)`, the interchange format (docs/design.md, "The twin
contract"; checked by `tests/test_contract.py`). Every number comes from the spec; this file computes none.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from effnet_spec import BlockSpec, Conventions, ModelSpec, resolve
from effnet_spec.forward import block_masks, check_input, run_blocks
from effnet_spec.resolve import MAX_CLASSES, check_count

from .layers import ConvBN, DropPath, SqueezeExcite, apply_keep_mask

__all__ = ["EfficientNet", "FusedMBConv", "MBConv"]

DropPathMasks = Sequence[torch.Tensor | None] | Mapping[int, torch.Tensor]


class MBConv(nn.Module):
    """Inverted bottleneck: [expand 1x1] -> depthwise kxk -> [SE] -> project 1x1 (no act) [+ drop-path residual]."""

    def __init__(self, b: BlockSpec, conv: Conventions):
        super().__init__()
        self.spec = b
        if b.has_expand:
            self.expand = ConvBN(b.in_ch, b.mid_ch, 1, 1, conv)
        self.depthwise = ConvBN(b.mid_ch, b.mid_ch, b.kernel, b.stride, conv, groups=b.mid_ch)
        if b.se_ch:
            self.se = SqueezeExcite(b.mid_ch, b.se_ch)
        self.project = ConvBN(b.mid_ch, b.out_ch, 1, 1, conv, act=False)
        if b.residual:
            self.drop_path = DropPath(b.drop_path)

    def forward(self, x: torch.Tensor, drop_path_mask: torch.Tensor | None = None) -> torch.Tensor:
        y = self.expand(x) if self.spec.has_expand else x
        y = self.depthwise(y)
        if self.spec.se_ch:
            y = self.se(y)
        y = self.project(y)
        if self.spec.residual:
            y = x + self.drop_path(y, drop_path_mask)
        return y


class FusedMBConv(nn.Module):
    """V2's Fused-MBConv: one kxk conv replaces MBConv's 1x1 expand + depthwise pair (dense convs run better on
    accelerators early in the network). kxk conv -> [project 1x1 (no act), only when it expands] [+ drop-path
    residual]; no SE."""

    def __init__(self, b: BlockSpec, conv: Conventions):
        super().__init__()
        if b.se_ch:
            raise ValueError(f"block {b.index}: a fused block has no squeeze-and-excitation (se_ch={b.se_ch})")
        self.spec = b
        self.fused = ConvBN(b.in_ch, b.mid_ch if b.has_expand else b.out_ch, b.kernel, b.stride, conv)
        if b.has_expand:
            self.project = ConvBN(b.mid_ch, b.out_ch, 1, 1, conv, act=False)
        if b.residual:
            self.drop_path = DropPath(b.drop_path)

    def forward(self, x: torch.Tensor, drop_path_mask: torch.Tensor | None = None) -> torch.Tensor:
        y = self.fused(x)
        if self.spec.has_expand:
            y = self.project(y)
        if self.spec.residual:
            y = x + self.drop_path(y, drop_path_mask)
        return y


# The module each block kind of the spec (`effnet_spec.BLOCKS`) is built as.
BLOCK_TYPES: dict[str, type[nn.Module]] = {"mbconv": MBConv, "fused": FusedMBConv}

# Input dtypes torch.autocast casts for the convolutions, whatever the parameters' dtype (float64 is not cast).
_AUTOCAST_INPUTS = (torch.float32, torch.float16, torch.bfloat16)


class EfficientNet(nn.Module):
    """EfficientNet from a resolved spec (NCHW input of the parameters' dtype: float32 unless converted with
    `.to(dtype)`; under `torch.autocast`, float32, float16 or bfloat16).

    Use `EfficientNet.from_name("b0", num_classes=10)` or `EfficientNet(resolve(...))`.
    `forward(x)` returns logits, or pooled features when `spec.num_classes == 0`.
    """

    def __init__(self, spec: ModelSpec):
        super().__init__()
        if not isinstance(spec, ModelSpec):
            raise TypeError(
                f"EfficientNet expects a resolved ModelSpec, got {type(spec).__name__}; "
                "use EfficientNet.from_name(name) for a named variant"
            )
        self.spec = spec
        self.preprocessing = None  # set by io.load_checkpoint; written back by io.save_checkpoint
        conv = spec.conv
        self.stem = ConvBN(spec.in_channels, spec.stem_ch, spec.stem_kernel, spec.stem_stride, conv)
        self.blocks = nn.ModuleList(BLOCK_TYPES[b.block](b, conv) for b in spec.blocks)
        self.head = ConvBN(spec.blocks[-1].out_ch, spec.head_ch, 1, 1, conv)
        self.classifier = self._make_classifier(spec.num_classes)

    @classmethod
    def from_name(
        cls, name: str | float, num_classes: int = 1000, in_channels: int = 3, **resolve_kwargs
    ) -> EfficientNet:
        """Build a named variant (or compound phi); `resolve_kwargs` go to `effnet_spec.resolve` (`weight_source=`)."""
        return cls(resolve(name, num_classes=num_classes, in_channels=in_channels, **resolve_kwargs))

    @classmethod
    def from_pretrained(
        cls,
        source: str | os.PathLike,
        *,
        num_classes: int | None = None,
        in_channels: int | None = None,
        weight_source: str | None = None,
        model: str | None = None,
    ) -> EfficientNet:
        """A model holding pretrained weights, ready for another task; returned in eval mode.

        Args:
            source: an effnet `.safetensors`, a torchvision / timm / efficientnet_pytorch checkpoint file, or a timm
                id on the Hugging Face Hub (`hf-hub:timm/efficientnet_b0.ra_in1k`; needs `effnet[hub]`). A JAX
                training run directory becomes a file with `effnet convert RUN OUT.safetensors`.
            num_classes: another class count replaces the classifier with a new one that starts at zero, exactly as
                in the JAX twin (0 removes it); every other tensor loads strictly. None keeps the source's head and
                its class names.
            in_channels: another input channel count adapts the stem kernel as timm's `adapt_input_conv`.
            weight_source, model: for files whose keys do not tell their conventions (timm's TF ports), as in
                `effnet convert`.
        """
        from .pretrained import from_pretrained

        return from_pretrained(
            cls, source, num_classes=num_classes, in_channels=in_channels, weight_source=weight_source, model=model
        )

    def _make_classifier(self, num_classes: int) -> nn.Module:
        if num_classes == 0:
            return nn.Identity()
        linear = nn.Linear(self.spec.head_ch, num_classes)
        # torchvision's rule: the uniform range comes from the *out* features.
        bound = 1.0 / math.sqrt(num_classes)
        nn.init.uniform_(linear.weight, -bound, bound)
        nn.init.zeros_(linear.bias)
        return linear

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a freshly initialised one for `num_classes` (0 removes it).

        A new head has no class names: `preprocessing` keeps everything else and drops them.
        """
        num_classes = check_count("num_classes", num_classes, 0, MAX_CLASSES)
        old = self.classifier
        self.spec = replace(self.spec, num_classes=num_classes)
        self.classifier = self._make_classifier(num_classes)
        if isinstance(old, nn.Linear):
            self.classifier.to(device=old.weight.device, dtype=old.weight.dtype)
        if self.preprocessing is not None:
            self.preprocessing = replace(self.preprocessing, class_names=None)

    def _check_input(self, x: torch.Tensor) -> None:
        ok = (
            isinstance(x, torch.Tensor)
            and x.ndim == 4
            and x.shape[1] == self.spec.in_channels
            and x.dtype.is_floating_point
            and x.shape[2] >= 1
            and x.shape[3] >= 1
        )
        got = f"shape {tuple(x.shape)} {x.dtype}" if isinstance(x, torch.Tensor) else f"a {type(x).__name__}"
        check_input(self.spec, ok, "NCHW", got)
        want = self.stem.conv.weight.dtype
        if x.dtype != want and not (torch.is_autocast_enabled(x.device.type) and x.dtype in _AUTOCAST_INPUTS):
            # Unlike the JAX twin (which casts to its compute dtype), torch's conv refuses a mixed pair deep inside
            # F.conv2d; say it here, naming both dtypes, instead of casting behind the caller's back.
            raise TypeError(
                f"EfficientNet({self.spec.name}): input dtype {x.dtype}, but the model's parameters are {want}: "
                f"pass x.to({want}), convert the model with .to({x.dtype}), or run under torch.autocast"
            )

    def _run_blocks(self, x: torch.Tensor, masks: DropPathMasks | None, keep: set[int]) -> dict[int, torch.Tensor]:
        """Stem and blocks up to the last one in `keep`; returns the outputs of the blocks in `keep`."""
        masks = block_masks(self.spec, masks)  # checked before anything runs (train-mode BN would update)
        x = self.stem(x)
        return run_blocks(self.blocks, x, masks, keep)

    def forward_features(self, x: torch.Tensor, *, drop_path_masks: DropPathMasks | None = None) -> torch.Tensor:
        """The feature map after head conv+BN+act, before pooling: (N, head_ch, H/32, W/32)."""
        self._check_input(x)
        last = len(self.blocks) - 1
        return self.head(self._run_blocks(x, drop_path_masks, keep={last})[last])

    def forward_intermediates(
        self, x: torch.Tensor, *, drop_path_masks: DropPathMasks | None = None
    ) -> list[torch.Tensor]:
        """Backbone outputs at `spec.feature_info` (reductions 2, 4, 8, 16, 32), for detection/segmentation."""
        self._check_input(x)
        wanted = [f.block for f in self.spec.feature_info]
        outs = self._run_blocks(x, drop_path_masks, keep=set(wanted))
        return [outs[i] for i in wanted]

    def forward_classifier(
        self, x: torch.Tensor, pre_logits: bool = False, *, dropout_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Global average pool -> dropout -> classifier; `pre_logits=True` stops before the classifier."""
        x = x.mean(dim=(2, 3))
        if self.training and (dropout_mask is not None or self.spec.dropout > 0):
            if dropout_mask is None:
                x = F.dropout(x, self.spec.dropout, training=True)
            else:
                x = apply_keep_mask(x, dropout_mask, self.spec.dropout, "dropout", tuple(x.shape))
        return x if pre_logits else self.classifier(x)

    def forward(
        self,
        x: torch.Tensor,
        *,
        drop_path_masks: DropPathMasks | None = None,
        dropout_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (N, num_classes), or pooled features (N, head_ch) when num_classes == 0.

        In train mode, `drop_path_masks[i]` (0/1, shape (N,), for residual block i; a sequence with one entry
        per block or a dict) and `dropout_mask` (0/1, shape (N, head_ch)) replace the random draws; kept
        entries are scaled by 1/(1 - rate). Eval mode ignores them.
        """
        x = self.forward_features(x, drop_path_masks=drop_path_masks)
        return self.forward_classifier(x, dropout_mask=dropout_mask)

    def extra_repr(self) -> str:
        return f"spec={self.spec.name}, num_classes={self.spec.num_classes}, padding={self.spec.conv.padding}"
