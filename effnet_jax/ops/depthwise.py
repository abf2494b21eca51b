"""Depthwise convolution, one function with several formulations chosen per backend.

XLA's grouped convolution (`feature_group_count = C`) is fast on GPU/TPU but many times slower than
PyTorch on CPU, and its gradient slower still. The other formulations compute the same function as a
sum of k*k shifted, scaled (strided) slices of the padded input, which XLA CPU fuses into one
vectorised loop over channels:

- ``"grouped"``: `lax.conv_general_dilated` with `feature_group_count = C` (GPU/TPU default).
- ``"shift"``: the shifted-slice sum; JAX differentiates it (the transpose of each strided slice is
  an interior-padded tensor the size of the input, so the input gradient does k*k full-size adds).
- ``"shift_vjp"``: the same function with a hand-written VJP (CPU default). On CPU in float32 with concrete
  shapes its forward is the native loop of `effnet_jax.ops.native` where it could be built: XLA runs the
  shifted slices as k*k passes (and at inference recomputes a fused BN + SiLU once per tap), the native loop
  keeps a block of output pixels x channels in registers over all taps. The input gradient is
  again a shifted-slice sum, of the output gradient with the flipped kernel, split into stride**2
  phases so that a stride-2 conv costs k*k/4 taps per input pixel rather than k*k (XLA fuses the BN + SiLU
  backward of the layer before into these taps; a native transposed loop gained only ~1.03x on the b0 train
  step, `benchmarks/results/depthwise-fwd-cpu-dgrad-ab.md`, and was removed). The kernel gradient is k*k
  products reduced over (N, H, W), on CPU in float32 by the native kernel of `effnet_jax.ops.native`
  where it could be built (``EFFNET_NATIVE=0``: always XLA).

`impl="auto"` picks by `jax.default_backend()`; the env var ``EFFNET_DEPTHWISE`` overrides "auto".
Every formulation must pass `tests/test_depthwise.py` (values and gradients against "grouped", both
paddings, strides 1/2, kernels 3/5).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from .. import env
from . import native

__all__ = ["ENV_VAR", "IMPLS", "depthwise_conv", "resolve_impl"]

IMPLS = ("grouped", "shift", "shift_vjp")
ENV_VAR = env.DEPTHWISE
# Backends whose native grouped conv is fast; everything else (cpu) gets the shifted-slice path.
_GROUPED_BACKENDS = ("gpu", "cuda", "rocm", "tpu")
_CPU_DEFAULT = "shift_vjp"

Padding = tuple[tuple[int, int], tuple[int, int]]


def resolve_impl(impl: str = "auto") -> str:
    """The formulation `impl` stands for: "auto" -> `$EFFNET_DEPTHWISE` if set, else by backend."""
    if impl == "auto":
        impl = env.text(ENV_VAR, "auto")
        if impl == "auto":
            return "grouped" if jax.default_backend() in _GROUPED_BACKENDS else _CPU_DEFAULT
        if impl not in IMPLS:
            raise ValueError(f"{ENV_VAR}={impl!r} is not a depthwise impl; expected 'auto' or one of {IMPLS}")
        return impl
    if impl not in IMPLS:
        raise ValueError(f"unknown depthwise impl {impl!r}; expected 'auto' or one of {IMPLS}")
    return impl


def depthwise_conv(x: jax.Array, kernel: jax.Array, stride: int, padding: Padding, impl: str = "auto") -> jax.Array:
    """Depthwise conv of NHWC `x` with an HWIO kernel (kh, kw, 1, C) and explicit padding.

    Args:
      x: input, (N, H, W, C).
      kernel: (kh, kw, 1, C), the layout `nnx.Conv(feature_group_count=C)` stores; cast to `x.dtype`.
      stride: the same stride on both spatial axes (>= 1).
      padding: ((top, bottom), (left, right)) amounts, each >= 0, e.g. from `effnet_spec.pad_amounts`.
      impl: "auto", or one of `IMPLS` (see the module docstring).

    Returns:
      (N, Ho, Wo, C) with Ho = (H + top + bottom - kh) // stride + 1, likewise Wo.

    Raises:
      ValueError: wrong ranks, a kernel not laid out (kh, kw, 1, C), a bad stride or padding, an
        input smaller than the kernel after padding, or an unknown impl.
    """
    stride, padding = _check(x, kernel, stride, padding)
    impl = resolve_impl(impl)
    kernel = kernel.astype(x.dtype)
    if impl == "grouped":
        return _grouped(x, kernel, stride, padding)
    if impl == "shift":
        return _shift_forward(x, kernel, stride, padding)
    return _shift_vjp(x, kernel, stride, padding)


def _check(x, kernel, stride, padding) -> tuple[int, Padding]:
    """Validate shapes and arguments; returns (stride, padding) as plain ints."""
    if getattr(x, "ndim", None) != 4:
        raise ValueError(f"depthwise_conv: expected x of shape (N, H, W, C), got shape {jnp.shape(x)}")
    if getattr(kernel, "ndim", None) != 4:
        raise ValueError(f"depthwise_conv: expected kernel of shape (kh, kw, 1, C), got shape {jnp.shape(kernel)}")
    channels = x.shape[-1]
    kh, kw, one, kc = kernel.shape
    if one != 1 or kc != channels:
        hint = " (an OIHW torch kernel? transpose it with (2, 3, 1, 0))" if kernel.shape[:2] == (channels, 1) else ""
        raise ValueError(
            f"depthwise_conv: expected kernel of shape (kh, kw, 1, {channels}) for x with {channels} channels, "
            f"got {tuple(kernel.shape)}{hint}"
        )
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"depthwise_conv: expected a floating-point x, got {x.dtype}")
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ValueError(f"depthwise_conv: expected an int stride >= 1, got {stride!r}")
    try:
        (pt, pb), (pl, pr) = padding
        pads = tuple(int(p) for p in (pt, pb, pl, pr))
    except (TypeError, ValueError):
        raise ValueError(f"depthwise_conv: expected padding ((top, bottom), (left, right)), got {padding!r}") from None
    if min(pads) < 0:
        raise ValueError(f"depthwise_conv: padding amounts must be >= 0, got {padding!r}")
    pt, pb, pl, pr = pads
    height, width = x.shape[1] + pt + pb, x.shape[2] + pl + pr
    if height < kh or width < kw:
        raise ValueError(
            f"depthwise_conv: padded input {height}x{width} is smaller than the {kh}x{kw} kernel "
            f"(x {tuple(x.shape)}, padding {padding!r})"
        )
    return stride, ((pt, pb), (pl, pr))


def _grouped(x, kernel, stride, padding):
    return lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(stride, stride),
        padding=padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=x.shape[-1],
    )


def _out_len(size: int, pad: tuple[int, int], k: int, stride: int) -> int:
    return (size + pad[0] + pad[1] - k) // stride + 1


def _window(xp, i, j, out_h, out_w, stride):
    """xp[:, i::stride, j::stride, :][:, :out_h, :out_w]: the input pixels that tap (i, j) meets."""
    n, _, _, c = xp.shape
    limit = (n, i + (out_h - 1) * stride + 1, j + (out_w - 1) * stride + 1, c)
    return lax.slice(xp, (0, i, j, 0), limit, (1, stride, stride, 1))


def _taps(xp, kernel, stride, out_h, out_w):
    """sum over (i, j) of xp[:, i::stride, j::stride, :][:, :out_h, :out_w] * kernel[i, j, 0]."""
    out = None
    for i in range(kernel.shape[0]):
        for j in range(kernel.shape[1]):
            term = _window(xp, i, j, out_h, out_w, stride) * kernel[i, j, 0]
            out = term if out is None else out + term
    return out


def _shift_forward(x, kernel, stride, padding):
    (pt, pb), (pl, pr) = padding
    out_h = _out_len(x.shape[1], padding[0], kernel.shape[0], stride)
    out_w = _out_len(x.shape[2], padding[1], kernel.shape[1], stride)
    xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    return _taps(xp, kernel, stride, out_h, out_w)


def _forward_fastest(x, kernel, stride, padding):
    """`_shift_forward`, or on CPU the native forward where it is built (`native`: same function, faster).

    A symbolic shape (`jax.export` with a symbolic batch) keeps the XLA taps: an exported artifact must not
    depend on effnet's custom-call targets.
    """
    xla = lambda x, k: _shift_forward(x, k, stride, padding)
    if not native.usable(x):
        return xla(x, kernel)
    cpu = lambda x, k: native.depthwise_conv(x, k, stride, padding)
    return lax.platform_dependent(x, kernel, cpu=cpu, default=xla)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _shift_vjp(x, kernel, stride, padding):
    return _forward_fastest(x, kernel, stride, padding)


def _shift_vjp_fwd(x, kernel, stride, padding):
    return _forward_fastest(x, kernel, stride, padding), (x, kernel)


def _phase(size: int, pad_before: int, k: int, stride: int, out_len: int, r: int):
    """One axis of the input gradient for input positions h = stride*m + r.

    dx[s*m + r] = sum_t g[m + q - t] * k[i0 + s*t], with i0 = (r + pad) % s and q = (r + pad) // s:
    a stride-1 correlation of g (padded by `low` before, `high` after) with the taps k[i0::s] flipped.
    Returns (i0, n_taps, low, high, m_len); n_taps may be 0 (no kernel tap reaches this phase).
    """
    i0, q = (r + pad_before) % stride, (r + pad_before) // stride
    n_taps = max(0, -(-(k - i0) // stride))
    m_len = -(-(size - r) // stride)
    low = n_taps - 1 - q
    high = m_len + n_taps - 1 - out_len - low
    return i0, n_taps, low, high, m_len


def _input_grad(g, kernel, stride, padding, in_h, in_w):
    n, out_h, out_w, c = g.shape
    kh, kw = kernel.shape[:2]
    rows = [_phase(in_h, padding[0][0], kh, stride, out_h, r) for r in range(stride)]
    cols = [_phase(in_w, padding[1][0], kw, stride, out_w, r) for r in range(stride)]
    zero = jnp.zeros((), g.dtype)
    phases = []
    for i0, th, lo_h, hi_h, mh in rows:
        row = []
        for j0, tw, lo_w, hi_w, mw in cols:
            if th == 0 or tw == 0 or mh == 0 or mw == 0:
                part = jnp.zeros((n, mh, mw, c), g.dtype)
            else:
                gp = lax.pad(g, zero, ((0, 0, 0), (lo_h, hi_h, 0), (lo_w, hi_w, 0), (0, 0, 0)))
                taps = kernel[i0::stride, j0::stride][::-1, ::-1]
                part = _taps(gp, taps, 1, mh, mw)
            row.append(part)
        phases.append(row)
    if stride == 1:
        return phases[0][0]
    # Interleave phases: dx[s*m + r, s*p + q] = phases[r][q][m, p]; phases may be one row/col short.
    mh_max, mw_max = rows[0][4], cols[0][4]
    padded = [
        jnp.stack([jnp.pad(p, ((0, 0), (0, mh_max - p.shape[1]), (0, mw_max - p.shape[2]), (0, 0))) for p in row], 3)
        for row in phases
    ]
    dx = jnp.stack(padded, 2).reshape(n, mh_max * stride, mw_max * stride, c)
    return dx[:, :in_h, :in_w]


# Bytes of output gradient per row block of the kernel gradient: a block this size keeps the k*k tap products in L2
# instead of main memory, which beats whole-tensor passes at B0 shapes (`git show e4e820b:benchmarks/depthwise.py`).
_KGRAD_BLOCK_BYTES = 128 << 10


def _sum_taps(products, axes):
    """Sum each of the k*k tap products over `axes` in one variadic reduction (one pass, k*k accumulators).

    XLA CPU fuses the strided window slices into this single reduction; k*k separate sums each copy their
    slice first.
    """
    zeros = tuple(jnp.zeros((), jnp.float32) for _ in products)
    sums = lax.reduce(
        tuple(p.astype(jnp.float32) for p in products),
        zeros,
        lambda a, b: tuple(u + v for u, v in zip(a, b, strict=True)),
        axes,
    )
    return jnp.stack(sums)


def _kernel_grad(x, g, kernel_shape, stride, padding):
    """dk[i, j, c] = sum over (n, a, b) of xp[n, s*a + i, s*b + j, c] * g[n, a, b, c], in row blocks.

    Blocks split the output rows only (never the batch), so a batch-sharded x stays sharded. Stride 1 sums
    each block over (n, rows, columns); a strided window reads every other column, which XLA CPU handles
    better when the block keeps its columns and they are summed once at the end.
    """
    (pt, pb), (pl, pr) = padding
    kh, kw = kernel_shape[:2]
    n, out_h, out_w, c = g.shape
    rows = max(1, min(out_h, _KGRAD_BLOCK_BYTES // max(1, n * out_w * c * g.dtype.itemsize)))
    blocks = -(-out_h // rows)
    extra = blocks * rows - out_h  # zero rows of g (and matching rows of xp) so blocks tile exactly
    xp = jnp.pad(x, ((0, 0), (pt, pb + extra * stride), (pl, pr), (0, 0)))
    gp = jnp.pad(g, ((0, 0), (0, extra), (0, 0), (0, 0)))
    x_rows = (rows - 1) * stride + kh
    axes = (0, 1, 2) if stride == 1 else (0, 1)
    acc_shape = (kh * kw, c) if stride == 1 else (kh * kw, out_w, c)

    def block_taps(xb, gb):
        products = [_window(xb, i, j, rows, out_w, stride) * gb for i in range(kh) for j in range(kw)]
        return _sum_taps(products, axes)

    if blocks == 1:
        dk = block_taps(xp, gp)
    else:

        def body(acc, r):
            xb = lax.dynamic_slice_in_dim(xp, r * rows * stride, x_rows, axis=1)
            gb = lax.dynamic_slice_in_dim(gp, r * rows, rows, axis=1)
            return acc + block_taps(xb, gb), None

        dk, _ = lax.scan(body, jnp.zeros(acc_shape, jnp.float32), jnp.arange(blocks))
    if stride != 1:
        dk = dk.sum(1)
    return dk.reshape(kernel_shape).astype(g.dtype)


def _kernel_grad_fastest(x, g, kernel_shape, stride, padding):
    """`_kernel_grad`, or on CPU the native kernel where it is built (`native`: same function, faster); a symbolic
    shape keeps XLA's, as in `_forward_fastest`."""
    xla = lambda x, g: _kernel_grad(x, g, kernel_shape, stride, padding)
    if not native.usable(x):
        return xla(x, g)
    cpu = lambda x, g: native.depthwise_kernel_grad(x, g, kernel_shape, stride, padding)
    return lax.platform_dependent(x, g, cpu=cpu, default=xla)


def _shift_vjp_bwd(stride, padding, res, g):
    x, kernel = res
    dx = _input_grad(g, kernel, stride, padding, x.shape[1], x.shape[2])
    dk = _kernel_grad_fastest(x, g, kernel.shape, stride, padding)
    return dx, dk


_shift_vjp.defvjp(_shift_vjp_fwd, _shift_vjp_bwd)
