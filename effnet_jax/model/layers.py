"""The NNX twin's building blocks: conv+BN, BatchNorm honouring the conventions, DropPath, Dropout, SE, padding.

Each layer translates one `Conventions` field in exactly one place (padding in `ConvBN.pads`, BN constants and the
running-variance rule in `BatchNorm`, the activation in `activation_fn`), line for line with `effnet_torch.layers`.
Mode attributes (`use_running_average`, `deterministic`) are static, so `model.train()`, `model.eval()` and
`nnx.view` flip BN, Dropout and DropPath together and a jitted function retraces when the mode changes.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from effnet_spec import Conventions, pad_amounts

from ..ops.bn_act import batch_norm_act
from ..ops.dense import dense_conv
from ..ops.depthwise import depthwise_conv
from .options import ModelOptions

__all__ = [
    "BatchNorm",
    "Conv2d",
    "ConvBN",
    "DropPath",
    "Dropout",
    "SqueezeExcite",
    "activation_fn",
    "apply_keep_mask",
    "conv_pads",
    "batched_kernel_init",
]

Pads = tuple[tuple[int, int], tuple[int, int]]


def activation_fn(name: str) -> Callable[[jax.Array], jax.Array]:
    """The activation a `Conventions.activation` names ("silu" or "relu6")."""
    if name == "silu":
        return jax.nn.silu
    if name == "relu6":
        return jax.nn.relu6
    raise ValueError(f"unknown activation {name!r}; expected 'silu' or 'relu6'")


def conv_pads(padding: str, height: int, width: int, kernel: int, stride: int) -> Pads:
    """((top, bottom), (left, right)) for a conv; `tf_same` depends on the actual (static) input size."""
    return pad_amounts(padding, height, kernel, stride), pad_amounts(padding, width, kernel, stride)


def _fan_out_std(shape: tuple[int, ...], groups: int) -> float:
    """Reference init (TF EfficientNet, torchvision): normal(0, sqrt(2 / fan_out)), fan_out = k*k*out/groups."""
    k_h, k_w, _, out = shape
    return math.sqrt(2.0 / (k_h * k_w * out // groups))


class _PendingKernels:
    """Kernels registered inside `batched_kernel_init`, drawn together when it exits."""

    def __init__(self):
        self.params: list[nnx.Param] = []
        self.shapes: list[tuple[int, ...]] = []
        self.stds: list[float] = []


_PENDING: contextvars.ContextVar[_PendingKernels | None] = contextvars.ContextVar("effnet_pending", default=None)


@functools.partial(jax.jit, static_argnames="size")
def _normal_flat(key: jax.Array, size: int) -> jax.Array:
    return jax.random.normal(key, (size,), jnp.float32)


def _draw_normals(key: jax.Array, shapes: list[tuple[int, ...]], stds: list[float]) -> list[jax.Array]:
    """One normal draw of the total size (a single threefry op), cut into the kernels in order and scaled.

    Compile time is the point. One `jax.random.normal` per kernel costs one compile per distinct shape eagerly,
    and slicing inside one jitted program costs XLA compile time per output. So the flat draw is the only compiled
    step; concrete draws are cut and scaled in numpy (float32 products round identically in numpy and XLA, so a
    traced build gets the same numbers from the jnp path).
    """
    sizes = [math.prod(s) for s in shapes]
    flat = _normal_flat(key, sum(sizes))
    xp = jnp if isinstance(flat, jax.core.Tracer) else np
    flat = flat if xp is jnp else np.asarray(flat)
    out, start = [], 0
    for shape, size, std in zip(shapes, sizes, stds, strict=True):
        piece = flat[start : start + size].reshape(shape) * xp.float32(std)
        out.append(piece if xp is jnp else jax.device_put(piece))
        start += size
    return out


@contextlib.contextmanager
def batched_kernel_init(rngs: nnx.Rngs) -> Iterator[None]:
    """Every `Conv2d` built inside draws its kernel from one normal draw keyed by a single `rngs.params()`.

    Same distribution as a standalone `Conv2d` (normal(0, sqrt(2 / fan_out))), different numbers: kernel i is the
    i-th slice, in construction order, of one draw, so a model is deterministic for a given seed, built eagerly or
    traced (`nnx.jit`, `nnx.eval_shape`). Exists for speed: per-kernel draws compile once per distinct shape.
    """
    pending = _PendingKernels()
    token = _PENDING.set(pending)
    try:
        yield
    finally:
        _PENDING.reset(token)
    if pending.params:
        values = _draw_normals(rngs.params(), pending.shapes, pending.stds)
        for param, value in zip(pending.params, values, strict=True):
            param.set_value(value)


def _filled(n: int, value: float) -> jax.Array:
    """A float32 constant vector built in numpy: eager `jnp.ones`/`jnp.zeros` compile once per length."""
    return jax.device_put(np.full((n,), value, np.float32))


class Conv2d(nnx.Module):
    """A conv's parameters: HWIO `kernel` ((k, k, 1, C) when depthwise) and an optional `bias`.

    It holds no padding rule: `ConvBN` pads, `SqueezeExcite` uses it as a 1x1 matmul.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int, *, groups: int = 1, bias: bool = False, rngs: nnx.Rngs):
        if in_ch % groups or out_ch % groups:
            raise ValueError(f"Conv2d: channels {in_ch}->{out_ch} are not divisible by groups={groups}")
        shape = (kernel, kernel, in_ch // groups, out_ch)
        std = _fan_out_std(shape, groups)
        pending = _PENDING.get()
        if pending is None:
            self.kernel = nnx.Param(jax.random.normal(rngs.params(), shape, jnp.float32) * std)
        else:  # filled when the enclosing `batched_kernel_init` exits
            self.kernel = nnx.Param(jax.ShapeDtypeStruct(shape, jnp.float32))
            pending.params.append(self.kernel)
            pending.shapes.append(shape)
            pending.stds.append(std)
        self.bias = nnx.Param(_filled(out_ch, 0.0)) if bias else None
        self.groups = groups


class BatchNorm(nnx.Module):
    """BatchNorm over NHWC channels with eps, decay and the running-variance rule from the conventions.

    Train mode normalises with the biased batch variance (as both frameworks do) and feeds the running average the
    n/(n-1)-corrected variance when `running_var="unbiased"` (PyTorch) or the biased one (`"biased"`, Flax).
    Statistics are computed in float32 whatever the compute dtype; `num_batches_tracked` is kept (int32) so a
    torch -> JAX -> torch round trip is bit-exact.
    """

    def __init__(self, num_features: int, conv: Conventions, *, dtype=jnp.float32, use_running_average: bool = False):
        self.scale = nnx.Param(_filled(num_features, 1.0))
        self.bias = nnx.Param(_filled(num_features, 0.0))
        self.mean = nnx.BatchStat(_filled(num_features, 0.0))
        self.var = nnx.BatchStat(_filled(num_features, 1.0))
        self.num_batches_tracked = nnx.BatchStat(jax.device_put(np.zeros((), np.int32)))
        self.eps = conv.bn_eps
        self.decay = conv.bn_decay
        self.unbiased = conv.running_var == "unbiased"
        self.dtype = dtype
        self.use_running_average = use_running_average

    def set_view(self, use_running_average: bool | None = None) -> None:
        """Used by `nnx.view`."""
        if use_running_average is not None:
            self.use_running_average = use_running_average

    def __call__(self, x: jax.Array, activation: str | None = None) -> jax.Array:
        """BN of NHWC `x`, then `activation` (None, "silu", "relu6"): fused so train mode has a lean backward."""
        act = None if activation is None else activation_fn(activation)
        if self.use_running_average:
            xf = x.astype(jnp.float32)
            y = (xf - self.mean[...]) * (self.scale[...] * jax.lax.rsqrt(self.var[...] + self.eps)) + self.bias[...]
            return (y if act is None else act(y)).astype(self.dtype)
        n = math.prod(x.shape[:-1])
        if n < 2:
            raise ValueError(
                f"BatchNorm: expected more than 1 value per channel in train mode, got input shape {x.shape}"
            )
        y, mean, var = batch_norm_act(x, self.scale[...], self.bias[...], self.eps, act)
        fed = var * (n / (n - 1)) if self.unbiased else var
        keep = self.decay
        self.mean[...] = keep * self.mean[...] + (1.0 - keep) * jax.lax.stop_gradient(mean)
        self.var[...] = keep * self.var[...] + (1.0 - keep) * jax.lax.stop_gradient(fed)
        self.num_batches_tracked[...] = self.num_batches_tracked[...] + 1
        return y.astype(self.dtype)


class ConvBN(nnx.Module):
    """conv (no bias) -> BN -> optional activation, padded per `conv.padding` from the actual input size."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int,
        stride: int,
        conv: Conventions,
        *,
        groups: int = 1,
        act: bool = True,
        options: ModelOptions | None = None,
        rngs: nnx.Rngs,
    ):
        options = options or ModelOptions()
        dtype = options.compute_dtype
        self.conv = Conv2d(in_ch, out_ch, kernel, groups=groups, rngs=rngs)
        self.bn = BatchNorm(out_ch, conv, dtype=dtype)
        self.kernel_size, self.stride, self.padding = kernel, stride, conv.padding
        self.depthwise = groups > 1 and groups == in_ch == out_ch
        if groups > 1 and not self.depthwise:
            raise ValueError(f"ConvBN: only dense or depthwise convs are supported, got groups={groups}")
        self.activation = conv.activation if act else None
        self.dtype = dtype
        self.depthwise_impl = options.depthwise_impl

    def __call__(self, x: jax.Array) -> jax.Array:
        pads = conv_pads(self.padding, x.shape[1], x.shape[2], self.kernel_size, self.stride)
        kernel = self.conv.kernel[...].astype(self.dtype)
        x = x.astype(self.dtype)
        if self.depthwise:
            y = depthwise_conv(x, kernel, self.stride, pads, impl=self.depthwise_impl)
        else:
            y = dense_conv(x, kernel, self.stride, pads)
        return self.bn(y, self.activation)


class SqueezeExcite(nnx.Module):
    """Global average pool -> reduce (1x1, bias) -> SiLU -> excite (1x1, bias) -> sigmoid gate."""

    def __init__(self, channels: int, squeeze: int, *, options: ModelOptions | None = None, rngs: nnx.Rngs):
        self.reduce = Conv2d(channels, squeeze, 1, bias=True, rngs=rngs)
        self.excite = Conv2d(squeeze, channels, 1, bias=True, rngs=rngs)
        self.dtype = (options or ModelOptions()).compute_dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        s = x.astype(jnp.float32).mean(axis=(1, 2)).astype(self.dtype)  # (N, C): a 1x1 conv is a matmul
        r, e = self.reduce, self.excite
        s = jax.nn.silu(s @ r.kernel[...][0, 0].astype(self.dtype) + r.bias[...].astype(self.dtype))
        s = s @ e.kernel[...][0, 0].astype(self.dtype) + e.bias[...].astype(self.dtype)
        return x * jax.nn.sigmoid(s)[:, None, None, :]


def apply_keep_mask(x: jax.Array, mask, rate: float, what: str, shape: tuple[int, ...], keep=None) -> jax.Array:
    """x * mask / (1 - rate), with `mask` checked to be `shape` and broadcast over x's trailing dims.

    `keep`, when given, is 1 - rate as a (traced) array and replaces `rate` (a scanned block's rate is data).
    """
    got = tuple(getattr(mask, "shape", ()))
    if not hasattr(mask, "shape") or got != shape:
        raise ValueError(f"{what}: expected a keep-mask of shape {shape}, got {got or type(mask).__name__}")
    mask = jnp.asarray(mask).astype(x.dtype).reshape(shape + (1,) * (x.ndim - len(shape)))
    keep = jnp.asarray(1.0 - rate, x.dtype) if keep is None else jnp.asarray(keep).astype(x.dtype)
    return x * mask / keep


class _RandomMask(nnx.Module):
    """Shared by DropPath and Dropout: a rate, a `deterministic` flag and an own rng stream."""

    name: str  # how errors name the layer

    def __init__(
        self, rate: float, *, rngs: nnx.Rngs | None, deterministic: bool = False, rng_collection: str = "dropout"
    ):
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"{type(self).__name__}: rate must lie in [0, 1), got {rate}")
        self.rate = rate
        self.deterministic = deterministic
        self.rngs = rngs[rng_collection].fork() if rngs is not None else nnx.data(None)

    def set_view(self, deterministic: bool | None = None) -> None:
        """Used by `nnx.view`."""
        if deterministic is not None:
            self.deterministic = deterministic

    def _draw(self, shape: tuple[int, ...], dtype, keep) -> jax.Array:
        if self.rngs is None:
            raise ValueError(f"{type(self).__name__}: train mode with rate {self.rate} needs rngs or a keep-mask")
        return jax.random.bernoulli(self.rngs(), 1.0 - self.rate if keep is None else keep, shape).astype(dtype)

    def __call__(self, x: jax.Array, mask=None, *, keep: jax.Array | None = None) -> jax.Array:
        """`keep` (1 - rate as an array) replaces the static rate: a scanned block's rate is data."""
        if self.deterministic:
            return x
        shape = self._mask_shape(x)
        if mask is None:
            if keep is None and self.rate == 0.0:
                return x
            mask = self._draw(shape, x.dtype, keep)
        return apply_keep_mask(x, mask, self.rate, self.name, shape, keep)


class DropPath(_RandomMask):
    """Per-sample stochastic depth on a residual branch: drop whole samples, scale the kept by 1/keep.

    Acts only in train mode. A precomputed 0/1 keep-mask of shape (N,) replaces the random draw, so parity tests
    feed both twins the same randomness.
    """

    name = "DropPath"

    def _mask_shape(self, x: jax.Array) -> tuple[int, ...]:
        return (x.shape[0],)


class Dropout(_RandomMask):
    """Element-wise dropout on pooled features; a precomputed 0/1 keep-mask of x's shape replaces the draw."""

    name = "dropout"

    def _mask_shape(self, x: jax.Array) -> tuple[int, ...]:
        return tuple(x.shape)
