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

V2's Fused-MBConv convs (kxk, tens to hundreds of channels) keep lax's forward and input gradient, but on CPU their
kernel gradient is `taps_kernel_grad`, one (C, N*Ho*Wo) @ (N*Ho*Wo, D) matmul per tap over the input's shifted
strided window (`_taps_conv`): XLA CPU lowers a conv's kernel gradient to a conv that runs several times slower than
torch's, while the per-tap matmuls are plain GEMMs (`benchmarks/fused_conv.py`, benchmarks/README.md's V2 section).
"auto" takes them on CPU in float32 for at least `TAPS_MIN_COUT` output channels, where they measured faster;
``EFFNET_DENSE_KGRAD=lax`` (or ``kernel_grad="lax"``) keeps XLA's, ``=taps`` takes the taps on every backend and dtype.
Other backends keep lax's conv untouched: cuDNN and TPU run a conv's kernel gradient well.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from .. import env
from . import native
from .depthwise import Padding

# Input channels up to which a (non-1x1) dense conv takes the native CPU path.
SMALL_CIN = 4
# Kernel-gradient formulations of the other kxk dense convs; "auto" picks per backend and shape (`_taps_pay`),
# `$EFFNET_DENSE_KGRAD` overrides it.
KERNEL_GRADS = ("lax", "taps")
ENV_VAR = env.DENSE_KGRAD
# Output channels from which "auto" takes the taps on CPU: with 16 (the first fused blocks of V2-B0..B3) each tap's
# matmul has too small an output to run fast and XLA's own kernel gradient measured as fast or faster; from 24 on
# (V2-S/M's 24, V2-L/XL's 32, every expanding block) the taps measured faster on every shape
# (`benchmarks/results/fused-conv-cpu-128-b32-shipped.md`).
TAPS_MIN_COUT = 24

__all__ = ["ENV_VAR", "KERNEL_GRADS", "dense_conv", "pointwise_conv", "resolve_kernel_grad", "taps_kernel_grad"]


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


def resolve_kernel_grad(kernel_grad: str = "auto") -> str:
    """What `kernel_grad` stands for: "auto" -> `$EFFNET_DENSE_KGRAD` if set (else "auto", decided per conv)."""
    name = env.text(ENV_VAR, "auto") if kernel_grad == "auto" else kernel_grad
    if name != "auto" and name not in KERNEL_GRADS:
        where = f"{ENV_VAR}={name!r}" if kernel_grad == "auto" else f"kernel_grad={name!r}"
        raise ValueError(f"{where} is not a dense kernel gradient; expected 'auto' or one of {KERNEL_GRADS}")
    return name


def taps_kernel_grad(x: jax.Array, g: jax.Array, kernel_shape, stride: int, padding: Padding, dtype) -> jax.Array:
    """d(loss)/d(kernel) of a dense NHWC conv whose output gradient is `g`, as kh*kw plain matmuls, one per tap:
    (C, N*Ho*Wo) @ (N*Ho*Wo, D) over the padded input's window that the tap sees. Accumulates in float32 (one
    rounding to `dtype` at the end, as XLA's bfloat16 conv does)."""
    kh, kw, c, d = kernel_shape
    n, ho, wo, _ = g.shape
    xp = jnp.pad(x, ((0, 0), *padding, (0, 0)))
    g2 = g.reshape(n * ho * wo, d)
    contract_rows = (((0,), (0,)), ((), ()))
    taps = []
    for i in range(kh):
        for j in range(kw):
            end = (n, i + (ho - 1) * stride + 1, j + (wo - 1) * stride + 1, c)
            window = lax.slice(xp, (0, i, j, 0), end, (1, stride, stride, 1)).reshape(n * ho * wo, c)
            taps.append(lax.dot_general(window, g2, contract_rows, preferred_element_type=jnp.float32))
    return jnp.stack(taps).reshape(kernel_shape).astype(dtype)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _taps_conv(x, kernel, stride, padding, cpu_only):
    """`_lax_conv` whose kernel gradient is `taps_kernel_grad` (on the CPU platform only if `cpu_only`)."""
    return _lax_conv(x, kernel, stride, padding)


def _taps_fwd(x, kernel, stride, padding, cpu_only):
    return _lax_conv(x, kernel, stride, padding), (x, kernel)


def _taps_bwd(stride, padding, cpu_only, res, g):
    x, kernel = res
    conv = lambda x, k: _lax_conv(x, k, stride, padding)
    dx = jax.vjp(lambda x: conv(x, kernel), x)[1](g)[0]  # lax's own input gradient
    taps = lambda x, g, k: taps_kernel_grad(x, g, k.shape, stride, padding, k.dtype)
    if not cpu_only:
        return dx, taps(x, g, kernel)
    xla = lambda x, g, k: jax.vjp(lambda k: conv(x, k), k)[1](g)[0]
    return dx, lax.platform_dependent(x, g, kernel, cpu=taps, default=xla)


_taps_conv.defvjp(_taps_fwd, _taps_bwd)


def _taps_pay(x: jax.Array, kernel: jax.Array) -> bool:
    """Where "auto" takes the taps: CPU, float32 (bfloat16 on CPU was not measured), enough output channels."""
    return jax.default_backend() == "cpu" and x.dtype == jnp.float32 and kernel.shape[-1] >= TAPS_MIN_COUT


def dense_conv(x: jax.Array, kernel: jax.Array, stride: int, padding: Padding, kernel_grad: str = "auto") -> jax.Array:
    """Dense NHWC conv with an HWIO kernel and explicit ((top, bottom), (left, right)) padding.

    `pointwise_conv` for 1x1 stride-1 kernels; for at most `SMALL_CIN` input channels in float32 with the
    native kernels built, `_small_cin_conv` (native on CPU, lax elsewhere); otherwise `lax.conv_general_dilated`,
    as `_taps_conv` (lax's forward and input gradient, the kernel gradient as per-tap matmuls) where `kernel_grad`
    ("auto", "lax", "taps"; see the module docstring) asks for the taps.
    A symbolic shape (`jax.export` with a symbolic batch, as `effnet export --format stablehlo` does) keeps the lax
    conv: an exported artifact must not depend on effnet's custom-call targets, which jax.export refuses anyway.
    """
    kh, kw, cin, _ = kernel.shape
    if x.shape[-1] != cin:
        raise ValueError(f"dense_conv: kernel {kernel.shape} does not fit input channels {x.shape[-1]}")
    kernel_grad = resolve_kernel_grad(kernel_grad)
    if (kh, kw, stride) == (1, 1, 1):
        return pointwise_conv(x, kernel)
    if cin <= SMALL_CIN and native.usable(x, kernel):
        padding = tuple(tuple(int(p) for p in pair) for pair in padding)
        return _small_cin_conv(x, kernel, stride, padding)
    static = all(isinstance(d, int) for d in x.shape)
    auto = kernel_grad == "auto"
    if static and cin > SMALL_CIN and (kernel_grad == "taps" or (auto and _taps_pay(x, kernel))):
        padding = tuple(tuple(int(p) for p in pair) for pair in padding)
        return _taps_conv(x, kernel, stride, padding, auto)
    return _lax_conv(x, kernel, stride, padding)
