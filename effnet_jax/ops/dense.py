"""Dense (non-grouped) convolutions, each written the way XLA runs it fastest.

EfficientNet has two kinds: 1x1 stride-1 convs (expand, project, head) and the stem (3x3, stride 2, 3 input
channels). `pointwise_conv` writes the first as one (N*H*W, C) @ (C, D) matmul, on every backend: XLA CPU
lowers a 1x1 conv's kernel gradient to a conv over transposed (C, H, W, N) copies of both operands, while the
matmul's gradients are two plain matmuls (`benchmarks/ablation.py` measures it inside the model). The stem stays
a lax conv: a fused sum of its 27 window taps was faster for the stem alone, but inside the model it changed
nothing measurable (benchmarks/README.md).
"""

from __future__ import annotations

import jax
from jax import lax

from .depthwise import Padding

__all__ = ["dense_conv", "pointwise_conv"]


def pointwise_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """A 1x1 stride-1 conv of NHWC `x` with a (1, 1, C, D) kernel, as one matmul (pads nothing in either mode)."""
    n, h, w, c = x.shape
    if kernel.shape[:3] != (1, 1, c):
        raise ValueError(f"pointwise_conv: kernel {kernel.shape} does not fit input channels {c}")
    return (x.reshape(n * h * w, c) @ kernel[0, 0]).reshape(n, h, w, kernel.shape[-1])


def _lax_conv(x, kernel, stride, padding):
    return lax.conv_general_dilated(x, kernel, (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))


def dense_conv(x: jax.Array, kernel: jax.Array, stride: int, padding: Padding) -> jax.Array:
    """Dense NHWC conv with an HWIO kernel and explicit ((top, bottom), (left, right)) padding.

    `pointwise_conv` for 1x1 stride-1 kernels, `lax.conv_general_dilated` otherwise.
    """
    kh, kw, cin, _ = kernel.shape
    if x.shape[-1] != cin:
        raise ValueError(f"dense_conv: kernel {kernel.shape} does not fit input channels {x.shape[-1]}")
    if (kh, kw, stride) == (1, 1, 1):
        return pointwise_conv(x, kernel)
    return _lax_conv(x, kernel, stride, padding)
