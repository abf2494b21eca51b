"""`EfficientNet` in Flax NNX (NHWC), built by walking a resolved `effnet_spec.ModelSpec`.

The module tree is the twin contract shared with `effnet_torch` (DESIGN.md, invariant 2): `stem.{conv,bn}`,
`blocks.{i}.{expand,depthwise,project}.{conv,bn}`, `blocks.{i}.se.{reduce,excite}`, `head.{conv,bn}`,
`classifier`. Every number comes from the spec; this file computes none. Read it beside `effnet_torch/model.py`.

Dtype policy: parameters and BN statistics are float32; convolutions run in `dtype` (float32 or bfloat16);
pooling and the classifier run in float32, so logits are always float32.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import jax
import jax.numpy as jnp
from flax import nnx

from effnet_spec import BlockSpec, Conventions, ModelSpec, resolve

from .layers import ConvBN, Dropout, DropPath, SqueezeExcite, batched_kernel_init

__all__ = ["EfficientNet", "MBConv"]

DTYPES = (jnp.float32, jnp.bfloat16)

DropPathMasks = Sequence[jax.Array | None] | Mapping[int, jax.Array]


class MBConv(nnx.Module):
    """Inverted bottleneck: [expand 1x1] -> depthwise kxk -> [SE] -> project 1x1 (no act) [+ drop-path residual]."""

    def __init__(self, b: BlockSpec, conv: Conventions, *, dtype, depthwise_impl: str, rngs: nnx.Rngs):
        self.spec = b
        kw = dict(dtype=dtype, rngs=rngs)
        if b.has_expand:
            self.expand = ConvBN(b.in_ch, b.mid_ch, 1, 1, conv, **kw)
        self.depthwise = ConvBN(
            b.mid_ch, b.mid_ch, b.kernel, b.stride, conv, groups=b.mid_ch, depthwise_impl=depthwise_impl, **kw
        )
        if b.se_ch:
            self.se = SqueezeExcite(b.mid_ch, b.se_ch, **kw)
        self.project = ConvBN(b.mid_ch, b.out_ch, 1, 1, conv, act=False, **kw)
        if b.residual:
            self.drop_path = DropPath(b.drop_path, rngs=rngs)

    def __call__(self, x: jax.Array, drop_path_mask: jax.Array | None = None) -> jax.Array:
        y = self.expand(x) if self.spec.has_expand else x
        y = self.depthwise(y)
        if self.spec.se_ch:
            y = self.se(y)
        y = self.project(y)
        if self.spec.residual:
            y = x + self.drop_path(y, drop_path_mask)
        return y


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
        dtype: compute dtype of the convolutions, `jnp.float32` or `jnp.bfloat16`; parameters stay float32.
        depthwise_impl: formulation of the depthwise conv, see `effnet_jax.depthwise`.
    """

    def __init__(self, spec: ModelSpec, *, rngs: nnx.Rngs, dtype=jnp.float32, depthwise_impl: str = "auto"):
        if not isinstance(spec, ModelSpec):
            raise TypeError(
                f"EfficientNet expects a resolved ModelSpec, got {type(spec).__name__}; "
                "use EfficientNet.from_name(name, rngs=...) for a named variant"
            )
        if jnp.dtype(dtype) not in [jnp.dtype(d) for d in DTYPES]:
            raise ValueError(f"EfficientNet: dtype must be float32 or bfloat16, got {jnp.dtype(dtype)}")
        self.spec = spec
        self.dtype = jnp.dtype(dtype)
        self.preprocessing = None  # set by convert.load_checkpoint; written back by convert.save_checkpoint
        conv, kw = spec.conv, dict(dtype=self.dtype, rngs=rngs)
        with batched_kernel_init(rngs):  # all conv kernels in one jitted draw: fast eager construction
            self.stem = ConvBN(spec.in_channels, spec.stem_ch, spec.stem_kernel, spec.stem_stride, conv, **kw)
            self.blocks = nnx.List([MBConv(b, conv, depthwise_impl=depthwise_impl, **kw) for b in spec.blocks])
            self.head = ConvBN(spec.blocks[-1].out_ch, spec.head_ch, 1, 1, conv, **kw)
        self.dropout = Dropout(spec.dropout, rngs=rngs)
        self.classifier = nnx.data(self._make_classifier(spec.num_classes, rngs))  # data even when None

    @classmethod
    def from_name(
        cls,
        name: str | float,
        num_classes: int = 1000,
        in_channels: int = 3,
        weights: str = "effnet",
        *,
        rngs: nnx.Rngs | None = None,
        dtype=jnp.float32,
        depthwise_impl: str = "auto",
        **resolve_kwargs,
    ) -> EfficientNet:
        """Build a named variant (or compound phi) with the conventions of weight source `weights`.

        `rngs` defaults to a fresh `nnx.Rngs(0)`.
        """
        spec = resolve(name, num_classes=num_classes, in_channels=in_channels, weights=weights, **resolve_kwargs)
        return cls(spec, rngs=rngs if rngs is not None else nnx.Rngs(0), dtype=dtype, depthwise_impl=depthwise_impl)

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
        """Replace the classifier with a freshly initialised one for `num_classes` (0 removes it)."""
        if not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes must be an int >= 0, got {num_classes!r}")
        self.spec = replace(self.spec, num_classes=num_classes)
        self.classifier = nnx.data(self._make_classifier(num_classes, rngs))

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
        if not ok:
            got = f"shape {tuple(shape)} {dtype}" if shape is not None else f"a {type(x).__name__}"
            raise ValueError(
                f"EfficientNet({self.spec.name}): expected input (N, H, W, {self.spec.in_channels}) "
                f"floating point, got {got}"
            )

    def _block_masks(self, masks: DropPathMasks | None) -> DropPathMasks | None:
        if masks is None or isinstance(masks, Mapping):
            return masks
        if len(masks) != len(self.blocks):
            raise ValueError(
                f"EfficientNet({self.spec.name}): drop_path_masks must hold one entry per block "
                f"({len(self.blocks)}), got {len(masks)}"
            )
        return masks

    def _run_blocks(self, x: jax.Array, masks: DropPathMasks | None, keep: set[int]) -> dict[int, jax.Array]:
        """Stem and blocks; returns the outputs of the blocks whose indices are in `keep`."""
        masks = self._block_masks(masks)
        x = self.stem(jnp.asarray(x).astype(self.dtype))
        outs = {}
        for i, block in enumerate(self.blocks):
            mask = None
            if masks is not None and block.spec.residual:
                mask = masks.get(i) if isinstance(masks, Mapping) else masks[i]
            x = block(x, mask)
            if i in keep:
                outs[i] = x
            if i >= max(keep):
                break
        return outs

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
