"""Dense (non-grouped) convolutions, each written the way XLA runs it fastest.

EfficientNet has two kinds: 1x1 stride-1 convs (expand, project, head) and the stem (3x3, stride 2, 3 input
channels). Both compute exactly `lax.conv_general_dilated`'s function:

- `pointwise_conv`: one (N*H*W, C) @ (C, D) matmul, on every backend. XLA CPU lowers a 1x1 conv's kernel
  gradient to a conv over transposed (C, H, W, N) copies of both operands; the matmul's gradients are two
  plain matmuls (b0 train step 3.85 -> 2.41 s at batch 32 on 2 cores).
- `taps_conv`: for a handful of input channels, the forward is a sum of k*k*C_in broadcast products of
  strided windows, which XLA CPU fuses into one vectorised pass (b0's stem alone: 52 -> 19 ms at batch 32;
  its conv emitter runs a 3-channel input at ~14 GFLOP/s). Inside the model XLA fuses the sum into the BN
  and SiLU passes that follow and recomputes part of it, so b0 inference gains only ~3% (interleaved A/B,
  batch 32). The backward is the lax conv's own VJP, the faster of the two there (24 vs 61 ms). Chosen on
  CPU only: GPU/TPU convs are fast.
"""

from __future__ import annotations

import functools

import jax
from jax import lax

from .depthwise import Padding, _window

__all__ = ["TAPS_MAX_IN_CHANNELS", "dense_conv", "pointwise_conv", "taps_conv"]

# Above this many input channels the k*k*C_in broadcast products cost more than the conv emitter.
TAPS_MAX_IN_CHANNELS = 4


def pointwise_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """A 1x1 stride-1 conv of NHWC `x` with a (1, 1, C, D) kernel, as one matmul (pads nothing in either mode)."""
    n, h, w, c = x.shape
    if kernel.shape[:3] != (1, 1, c):
        raise ValueError(f"pointwise_conv: kernel {kernel.shape} does not fit input channels {c}")
    return (x.reshape(n * h * w, c) @ kernel[0, 0]).reshape(n, h, w, kernel.shape[-1])


def _lax_conv(x, kernel, stride, padding):
    return lax.conv_general_dilated(x, kernel, (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _taps_forward(x, kernel, stride, padding):
    kh, kw, cin, _ = kernel.shape
    (pt, pb), (pl, pr) = padding
    out_h = (x.shape[1] + pt + pb - kh) // stride + 1
    out_w = (x.shape[2] + pl + pr - kw) // stride + 1
    xp = jax.numpy.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    out = None
    for i in range(kh):
        for j in range(kw):
            window = _window(xp, i, j, out_h, out_w, stride)
            for c in range(cin):
                term = window[..., c : c + 1] * kernel[i, j, c]
                out = term if out is None else out + term
    return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def taps_conv(x: jax.Array, kernel: jax.Array, stride: int, padding: Padding) -> jax.Array:
    """Dense NHWC conv with an HWIO kernel as a sum of broadcast window products; backward by lax's conv VJP."""
    return _taps_forward(x, kernel, stride, padding)


def _taps_fwd(x, kernel, stride, padding):
    return _taps_forward(x, kernel, stride, padding), (x, kernel)


def _taps_bwd(stride, padding, res, g):
    x, kernel = res
    return jax.vjp(lambda x, k: _lax_conv(x, k, stride, padding), x, kernel)[1](g)


taps_conv.defvjp(_taps_fwd, _taps_bwd)


def dense_conv(x: jax.Array, kernel: jax.Array, stride: int, padding: Padding) -> jax.Array:
    """Dense NHWC conv with an HWIO kernel and explicit ((top, bottom), (left, right)) padding.

    Picks `pointwise_conv` for 1x1 stride-1 kernels, `taps_conv` on CPU for at most `TAPS_MAX_IN_CHANNELS`
    input channels, `lax.conv_general_dilated` otherwise.
    """
    kh, kw, cin, _ = kernel.shape
    if x.shape[-1] != cin:
        raise ValueError(f"dense_conv: kernel {kernel.shape} does not fit input channels {x.shape[-1]}")
    if (kh, kw, stride) == (1, 1, 1):
        return pointwise_conv(x, kernel)
    if cin <= TAPS_MAX_IN_CHANNELS and jax.default_backend() == "cpu":
        return taps_conv(x, kernel, stride, padding)
    return _lax_conv(x, kernel, stride, padding)
