"""`EfficientNet` in Flax NNX (NHWC), built by walking a resolved `effnet_spec.ModelSpec`.

Its tensors are exactly `effnet_spec.contract.tensors(spec)` (docs/design.md, "The twin contract"; checked by
`tests/test_contract.py`). Every number comes from the spec; this file computes none. Read it beside
`effnet_torch/model.py`.

How it computes is `ModelOptions`: parameters and BN statistics are float32; convolutions run in
`options.dtype` (float32 or bfloat16); pooling and the classifier run in float32, so logits are always float32.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import replace

import jax
import jax.numpy as jnp
from flax import nnx

from effnet_spec import BlockSpec, Conventions, ModelSpec, resolve
from effnet_spec.forward import block_masks, check_input, run_blocks
from effnet_spec.resolve import MAX_CLASSES, check_count

from .. import _hooks
from ..ops import allocator
from .layers import ConvBN, Dropout, DropPath, SqueezeExcite, batched_kernel_init
from .options import ModelOptions
from .scan import scan_blocks

__all__ = ["BLOCK_TYPES", "EfficientNet", "FusedMBConv", "MBConv", "ModelOptions"]

DropPathMasks = Sequence[jax.Array | None] | Mapping[int, jax.Array]


# What a rematerialised block keeps for its backward pass (ModelOptions.remat); built lazily, as jax may not be
# imported yet when this module is.
_REMAT_POLICIES = {
    "block": lambda: jax.checkpoint_policies.nothing_saveable,
    "dots": lambda: jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class _Block(nnx.Module):
    """What every block kind shares: rematerialisation and the drop-path residual around its `_branch`. A subclass
    sets `spec`, `remat` and (when `spec.residual`) `drop_path`."""

    def __call__(
        self, x: jax.Array, drop_path_mask: jax.Array | None = None, *, keep: jax.Array | None = None
    ) -> jax.Array:
        """`keep`: the drop-path keep probability as data, replacing the spec's rate (a scanned block)."""
        if self.remat == "none":
            return self._forward(x, drop_path_mask, keep)
        return nnx.remat(_Block._forward, policy=_REMAT_POLICIES[self.remat]())(self, x, drop_path_mask, keep)

    def _forward(self, x: jax.Array, drop_path_mask: jax.Array | None, keep: jax.Array | None) -> jax.Array:
        y = self._branch(x)
        if self.spec.residual:
            y = x + self.drop_path(y, drop_path_mask, keep=keep)
        return y

    def _branch(self, x: jax.Array) -> jax.Array:
        raise NotImplementedError


class MBConv(_Block):
    """Inverted bottleneck: [expand 1x1] -> depthwise kxk -> [SE] -> project 1x1 (no act) [+ drop-path residual]."""

    def __init__(self, b: BlockSpec, conv: Conventions, *, options: ModelOptions, rngs: nnx.Rngs):
        self.spec = b
        self.remat = options.remat
        kw = dict(options=options, rngs=rngs)
        if b.has_expand:
            self.expand = ConvBN(b.in_ch, b.mid_ch, 1, 1, conv, **kw)
        self.depthwise = ConvBN(b.mid_ch, b.mid_ch, b.kernel, b.stride, conv, groups=b.mid_ch, **kw)
        if b.se_ch:
            self.se = SqueezeExcite(b.mid_ch, b.se_ch, **kw)
        self.project = ConvBN(b.mid_ch, b.out_ch, 1, 1, conv, act=False, **kw)
        if b.residual:
            self.drop_path = DropPath(b.drop_path, rngs=rngs)

    def _branch(self, x: jax.Array) -> jax.Array:
        y = self.expand(x) if self.spec.has_expand else x
        y = self.depthwise(y)
        if self.spec.se_ch:
            y = self.se(y)
        return self.project(y)


class FusedMBConv(_Block):
    """V2's Fused-MBConv: one dense kxk conv in place of expand + depthwise, so early high-resolution stages run a
    conv the hardware is good at. Expanding: fused kxk (+ act) -> project 1x1 (no act); not expanding: the fused
    kxk (+ act) is the whole branch. No SE (V2's fused stages have none). [+ drop-path residual]"""

    def __init__(self, b: BlockSpec, conv: Conventions, *, options: ModelOptions, rngs: nnx.Rngs):
        self.spec = b
        self.remat = options.remat
        kw = dict(options=options, rngs=rngs)
        self.fused = ConvBN(b.in_ch, b.mid_ch if b.has_expand else b.out_ch, b.kernel, b.stride, conv, **kw)
        if b.has_expand:
            self.project = ConvBN(b.mid_ch, b.out_ch, 1, 1, conv, act=False, **kw)
        if b.residual:
            self.drop_path = DropPath(b.drop_path, rngs=rngs)

    def _branch(self, x: jax.Array) -> jax.Array:
        y = self.fused(x)
        return self.project(y) if self.spec.has_expand else y


# BlockSpec.block -> the class that builds it (as torchvision picks MBConv or FusedMBConv from its config's type).
BLOCK_TYPES: dict[str, type[_Block]] = {"mbconv": MBConv, "fused": FusedMBConv}


def _linear_init(bound: float):
    """torchvision's classifier rule: uniform(-1/sqrt(out), 1/sqrt(out))."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class EfficientNet(nnx.Module):
    """EfficientNet from a resolved spec (NHWC float input).

    Use `EfficientNet.from_name("b0", num_classes=10, rngs=nnx.Rngs(0))` or `EfficientNet(resolve(...), rngs=...)`.
    `model(x)` returns float32 logits, or pooled features when `spec.num_classes == 0`. Like PyTorch (and
    `nnx.BatchNorm`), a new model is in train mode: call `model.eval()` (or use `nnx.view`) for inference.
    Drop-path and dropout draw from the `dropout` rng stream (falling back to `default`).

    Args:
        spec: the resolved architecture.
        rngs: parameter init (`params`) and the dropout/drop-path streams (`dropout`).
        options: how to compute (`ModelOptions`: compute dtype, depthwise formulation); default float32, "auto".
    """

    def __init__(
        self,
        spec: ModelSpec,
        *,
        rngs: nnx.Rngs,
        options: ModelOptions | None = None,
    ):
        if not isinstance(spec, ModelSpec):
            raise TypeError(
                f"EfficientNet expects a resolved ModelSpec, got {type(spec).__name__}; "
                "use EfficientNet.from_name(name, rngs=...) for a named variant"
            )
        options = options if options is not None else ModelOptions()
        allocator.hint_once()
        self.spec = spec
        self.options = options
        self.dtype = options.compute_dtype
        self.preprocessing = None  # set by weights.load_checkpoint; written back by weights.save_checkpoint
        conv, kw = spec.conv, dict(options=options, rngs=rngs)
        with batched_kernel_init(rngs):  # all conv kernels in one jitted draw: fast eager construction
            self.stem = ConvBN(spec.in_channels, spec.stem_ch, spec.stem_kernel, spec.stem_stride, conv, **kw)
            self.blocks = nnx.List([BLOCK_TYPES[b.block](b, conv, **kw) for b in spec.blocks])
            self.head = ConvBN(spec.blocks[-1].out_ch, spec.head_ch, 1, 1, conv, **kw)
        self.dropout = Dropout(spec.dropout, rngs=rngs)
        self.classifier = nnx.data(self._make_classifier(spec.num_classes, rngs))  # data even when None

    @classmethod
    def from_name(
        cls,
        name: str | float,
        num_classes: int = 1000,
        in_channels: int = 3,
        *,
        rngs: nnx.Rngs | None = None,
        options: ModelOptions | None = None,
        **resolve_kwargs,
    ) -> EfficientNet:
        """Build a named variant (or compound phi); `resolve_kwargs` go to `effnet_spec.resolve` (`weight_source=`).

        `rngs` defaults to a fresh `nnx.Rngs(0)`.
        """
        spec = resolve(name, num_classes=num_classes, in_channels=in_channels, **resolve_kwargs)
        return cls(spec, rngs=rngs if rngs is not None else nnx.Rngs(0), options=options)

    @classmethod
    def from_pretrained(
        cls,
        source: str | os.PathLike,
        *,
        num_classes: int | None = None,
        in_channels: int | None = None,
        rngs: nnx.Rngs | None = None,
        options: ModelOptions | None = None,
        weight_source: str | None = None,
        model: str | None = None,
        ema: bool = True,
    ) -> EfficientNet:
        """A model holding pretrained weights, ready for another task; returned in eval mode.

        Args:
            source: an effnet `.safetensors` (needs numpy + safetensors only); a torchvision / timm /
                efficientnet_pytorch checkpoint file (needs torch); a training run directory (its latest
                checkpoint, EMA weights unless `ema=False`); or a timm id on the Hugging Face Hub,
                `hf-hub:timm/efficientnet_b0.ra_in1k` (needs `effnet[hub]` and torch), with the repository's
                preprocessing.
            num_classes: another class count replaces the classifier with a new one that starts at zero (0 removes
                it; docs/design.md, "Pretrained weights"); every other tensor loads strictly. None keeps the
                source's head and its class names.
            in_channels: another input channel count adapts the stem kernel as timm's `adapt_input_conv`
                (1: the sum over RGB; N: RGB repeated, scaled by 3/N).
            rngs: the dropout and drop-path streams (default `nnx.Rngs(0)`).
            options: how to compute (`ModelOptions`).
            weight_source, model: for files whose keys do not tell their conventions (timm's TF ports), as in
                `effnet convert`.
            ema: for a training run, its EMA weights (default) or the raw ones.
        """
        return _hooks.from_pretrained(  # effnet_jax.weights.pretrained.from_pretrained
            source,
            num_classes=num_classes,
            in_channels=in_channels,
            rngs=rngs,
            options=options,
            weight_source=weight_source,
            model=model,
            ema=ema,
        )

    def _make_classifier(self, num_classes: int, rngs: nnx.Rngs) -> nnx.Linear | None:
        if num_classes == 0:
            return None
        bound = 1.0 / num_classes**0.5
        return nnx.Linear(
            self.spec.head_ch,
            num_classes,
            kernel_init=_linear_init(bound),
            bias_init=nnx.initializers.zeros_init(),
            rngs=rngs,
        )

    def reset_classifier(self, num_classes: int, *, rngs: nnx.Rngs) -> None:
        """Replace the classifier with a freshly initialised one for `num_classes` (0 removes it).

        A new head has no class names: `preprocessing` keeps everything else and drops them.
        """
        num_classes = check_count("num_classes", num_classes, 0, MAX_CLASSES)
        self.spec = replace(self.spec, num_classes=num_classes)
        self.classifier = nnx.data(self._make_classifier(num_classes, rngs))
        if self.preprocessing is not None:
            self.preprocessing = replace(self.preprocessing, class_names=None)

    @property
    def training(self) -> bool:
        """Train mode (batch statistics, dropout, drop-path), as `torch.nn.Module.training`.

        Read from the dropout before the classifier, which no `freeze=` mode puts in inference mode.
        """
        return not self.dropout.deterministic

    def _check_input(self, x) -> None:
        shape, dtype = getattr(x, "shape", None), getattr(x, "dtype", None)
        ok = (
            shape is not None
            and len(shape) == 4
            and shape[-1] == self.spec.in_channels
            and jnp.issubdtype(dtype, jnp.floating)
            and shape[1] >= 1
            and shape[2] >= 1
        )
        got = f"shape {tuple(shape)} {dtype}" if shape is not None else f"a {type(x).__name__}"
        check_input(self.spec, ok, "NHWC", got)

    def _run_blocks(self, x: jax.Array, masks: DropPathMasks | None, keep: set[int]) -> dict[int, jax.Array]:
        """Stem and blocks up to the last one in `keep`; returns the outputs of the blocks in `keep`."""
        masks = block_masks(self.spec, masks)  # checked before anything runs (train-mode BN would update)
        x = self.stem(jnp.asarray(x).astype(self.dtype))
        # Scan only under a trace: it exists for compile time, and eagerly each call would trace the scan anew.
        if self.options.scan and isinstance(x, jax.core.Tracer):
            return scan_blocks(self.blocks, x, masks, keep)
        return run_blocks(self.blocks, x, masks, keep)

    def forward_features(self, x: jax.Array, *, drop_path_masks: DropPathMasks | None = None) -> jax.Array:
        """The feature map after head conv+BN+act, before pooling: (N, H/32, W/32, head_ch) in `dtype`."""
        self._check_input(x)
        last = len(self.blocks) - 1
        return self.head(self._run_blocks(x, drop_path_masks, keep={last})[last])

    def forward_intermediates(self, x: jax.Array, *, drop_path_masks: DropPathMasks | None = None) -> list[jax.Array]:
        """Backbone outputs at `spec.feature_info` (reductions 2, 4, 8, 16, 32), for detection/segmentation."""
        self._check_input(x)
        wanted = [f.block for f in self.spec.feature_info]
        outs = self._run_blocks(x, drop_path_masks, keep=set(wanted))
        return [outs[i] for i in wanted]

    def forward_classifier(
        self, x: jax.Array, pre_logits: bool = False, *, dropout_mask: jax.Array | None = None
    ) -> jax.Array:
        """Global average pool -> dropout -> classifier, in float32; `pre_logits=True` stops before the classifier."""
        x = x.astype(jnp.float32).mean(axis=(1, 2))
        x = self.dropout(x, dropout_mask)
        if pre_logits or self.classifier is None:
            return x
        return self.classifier(x)

    def __call__(
        self,
        x: jax.Array,
        *,
        drop_path_masks: DropPathMasks | None = None,
        dropout_mask: jax.Array | None = None,
    ) -> jax.Array:
        """Logits (N, num_classes) float32, or pooled features (N, head_ch) when num_classes == 0."""
        x = self.forward_features(x, drop_path_masks=drop_path_masks)
        return self.forward_classifier(x, dropout_mask=dropout_mask)
