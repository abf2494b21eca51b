"""Dense (non-grouped) convolutions, each written the way XLA runs it fastest.

EfficientNet has two kinds: 1x1 stride-1 convs (expand, project, head) and the stem (3x3, stride 2, 3 input
channels). `pointwise_conv` writes the first as one (N*H*W, C) @ (C, D) matmul, on every backend: XLA CPU
lowers a 1x1 conv's kernel gradient to a conv over transposed (C, H, W, N) copies of both operands, while the
matmul's gradients are two plain matmuls (`benchmarks/ablation.py` measures it inside the model).

The stem (few input channels) is a lax conv except on CPU in float32 where the native kernels are built
(`native`, ``EFFNET_NATIVE=0``: always lax): XLA CPU runs a conv whose contraction is only kh*kw*C = 27 deep at
~10 GFLOP/s, and `native.dense_small_cin_conv` / `dense_small_cin_kernel_grad` compute the same forward and
kernel gradient ~6x faster for b0's stem; the input gradient (which the stem never needs, and XLA then drops)
stays lax's. Space-to-depth, input channels zero-padded to 4 or 8, an im2col matmul and a fused sum of the 27
taps were all measured and did not pay inside the model (`benchmarks/results/stem-cpu.md`, benchmarks/README.md).
"""

from __future__ import annotations

from functools import partial

import jax
from jax import lax

from . import native
from .depthwise import Padding

# Input channels up to which a (non-1x1) dense conv takes the native CPU path.
SMALL_CIN = 4

__all__ = ["dense_conv", "pointwise_conv"]


def pointwise_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """A 1x1 stride-1 conv of NHWC `x` with a (1, 1, C, D) kernel, as one matmul (pads nothing in either mode)."""
    n, h, w, c = x.shape
    if kernel.shape[:3] != (1, 1, c):
        raise ValueError(f"pointwise_conv: kernel {kernel.shape} does not fit input channels {c}")
    return (x.reshape(n * h * w, c) @ kernel[0, 0]).reshape(n, h, w, kernel.shape[-1])


def _lax_conv(x, kernel, stride, padding):
    return lax.conv_general_dilated(x, kernel, (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _small_cin_conv(x, kernel, stride, padding):
    """`_lax_conv`, on CPU by the native forward and kernel gradient (same function, faster)."""
    cpu = lambda x, k: native.dense_small_cin_conv(x, k, stride, padding)
    default = lambda x, k: _lax_conv(x, k, stride, padding)
    return lax.platform_dependent(x, kernel, cpu=cpu, default=default)


def _small_cin_fwd(x, kernel, stride, padding):
    return _small_cin_conv(x, kernel, stride, padding), (x, kernel)


def _small_cin_bwd(stride, padding, res, g):
    x, kernel = res
    conv = lambda x, k: _lax_conv(x, k, stride, padding)
    dx = jax.vjp(lambda x: conv(x, kernel), x)[1](g)[0]  # dead code XLA drops when x needs no gradient (the stem)
    xla = lambda x, g, k: jax.vjp(lambda k: conv(x, k), k)[1](g)[0]
    cpu = lambda x, g, k: native.dense_small_cin_kernel_grad(x, g, k.shape, stride, padding)
    return dx, lax.platform_dependent(x, g, kernel, cpu=cpu, default=xla)


_small_cin_conv.defvjp(_small_cin_fwd, _small_cin_bwd)


def dense_conv(x: jax.Array, kernel: jax.Array, stride: int, padding: Padding) -> jax.Array:
    """Dense NHWC conv with an HWIO kernel and explicit ((top, bottom), (left, right)) padding.

    `pointwise_conv` for 1x1 stride-1 kernels; for at most `SMALL_CIN` input channels in float32 with the
    native kernels built, `_small_cin_conv` (native on CPU, lax elsewhere); `lax.conv_general_dilated` otherwise.
    A symbolic shape (`jax.export` with a symbolic batch, as `effnet export --format stablehlo` does) keeps the lax
    conv: an exported artifact must not depend on effnet's custom-call targets, which jax.export refuses anyway.
    """
    kh, kw, cin, _ = kernel.shape
    if x.shape[-1] != cin:
        raise ValueError(f"dense_conv: kernel {kernel.shape} does not fit input channels {x.shape[-1]}")
    if (kh, kw, stride) == (1, 1, 1):
        return pointwise_conv(x, kernel)
    if cin <= SMALL_CIN and native.usable(x, kernel):
        padding = tuple(tuple(int(p) for p in pair) for pair in padding)
        return _small_cin_conv(x, kernel, stride, padding)
    return _lax_conv(x, kernel, stride, padding)
