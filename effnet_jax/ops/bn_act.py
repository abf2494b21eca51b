"""Train-mode BatchNorm followed by an optional activation, as one function with a hand-written backward.

Autodiff of `act((x - mean) * scale * rsqrt(var + eps) + bias)` differentiates through the batch statistics
term by term, and XLA CPU runs the result as several full passes over the activation (each memory-bound). The
closed form used here needs two: one reduction pass for `sum(dz)` and `sum(dz * xhat)` and one elementwise
pass for

    dx = scale * rstd * (dz - mean(dz) - xhat * mean(dz * xhat)),   dz = act'(z) * g,

which is faster for the layer alone but gains the whole train step much less, since XLA already fuses most of
autodiff's passes (`benchmarks/ablation.py`; figures in benchmarks/README.md). On the XLA path the activation's
own derivative is taken with `jax.vjp` at the recomputed pre-activation, so it is exactly autodiff's (ReLU6's
kink convention included); the native path writes the same derivatives out (jax.nn's ReLU6 convention: 0 at
both kinks). Statistics are computed in float32 two-pass (no E[x^2] - E[x]^2 cancellation),
whatever the input dtype. The batch mean and (biased) variance are returned too, for the running averages;
their cotangents are honoured when they are not symbolic zeros.

On CPU in float32, with concrete shapes, an activation the native kernels know (none, SiLU, ReLU6) and the native
library built, the forward and this backward run as one native call each (`native.bn_act_forward` /
`bn_act_backward`, `csrc/bn_act.cc`): the same formulas, statistics two-pass per cache-sized chunk and merged in
double. `EFFNET_NATIVE=0` keeps the XLA formulation; a symbolic shape (`jax.export`) always does.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

from . import native

__all__ = ["batch_norm_act", "batch_norm_act_reference"]

Activation = Callable[[jax.Array], jax.Array]


def batch_norm_act(
    x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float, act: Activation | None = None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """act(BN(x)) with batch statistics over all axes but the last; returns (y in x.dtype, mean, biased var).

    Args:
      x: (..., C), any float dtype; statistics and the affine run in float32.
      scale, bias: (C,) float32.
      eps: added to the variance.
      act: None or an elementwise function of one array (e.g. `layers.activation_fn("silu")`); it is a static
        argument, so pass the same function object each time to avoid retracing.
    """
    if act is not None and not callable(act):
        raise ValueError(f"batch_norm_act: act must be None or a function, got {act!r}")
    channels = x.shape[-1]
    if scale.shape != (channels,) or bias.shape != (channels,):
        raise ValueError(
            f"batch_norm_act: scale {scale.shape} and bias {bias.shape} must both be ({channels},) for x {x.shape}"
        )
    return _bn_act(x, scale, bias, float(eps), act)


def batch_norm_act_reference(
    x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float, act: Activation | None = None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The same function written plainly, for JAX to differentiate: what tests and benchmarks compare against."""
    xf = x.astype(jnp.float32)
    axes = tuple(range(x.ndim - 1))
    mean = xf.mean(axes)
    var = jnp.square(xf - mean).mean(axes)
    z = (xf - mean) * (scale * lax.rsqrt(var + eps)) + bias
    y = z if act is None else act(z)
    return y.astype(x.dtype), mean, var


def _affine(scale, bias, mean, rstd):
    """Per-channel (a, b) with BN(x) = x * a + b, as torch's CPU kernel folds it.

    Elementwise passes written this way share no (x - mean) temporary with the statistics' reductions, so XLA
    fuses normalise, activation and the consumer's pad into one pass instead of materialising x - mean.
    """
    a = scale * rstd
    return a, bias - mean * a


def _native_act(x, act) -> tuple[bool, str | None]:
    """(whether the native kernels run this call, the activation's name for them)."""
    try:
        name = {None: None, jax.nn.silu: "silu", jax.nn.relu6: "relu6"}[act]
    except (KeyError, TypeError):
        return False, None
    return native.usable(x) and x.size > 0, name


def _forward(x, scale, bias, eps, act):
    use_native, name = _native_act(x, act)
    if not use_native:
        return _xla_forward(x, scale, bias, eps, act)

    def cpu(x, scale, bias):
        y, mean, var, rstd = native.bn_act_forward(x.reshape(-1, x.shape[-1]), scale, bias, eps, name)
        return y.reshape(x.shape), mean, var, rstd

    xla = lambda x, scale, bias: _xla_forward(x, scale, bias, eps, act)  # noqa: E731
    return lax.platform_dependent(x, scale, bias, cpu=cpu, default=xla)


def _xla_forward(x, scale, bias, eps, act):
    xf = x.astype(jnp.float32)
    axes = tuple(range(x.ndim - 1))
    mean = xf.mean(axes)
    var = jnp.square(xf - mean).mean(axes)
    rstd = lax.rsqrt(var + eps)
    a, b = _affine(scale, bias, mean, rstd)
    z = xf * a + b
    y = z if act is None else act(z)
    return y.astype(x.dtype), mean, var, rstd


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _bn_act(x, scale, bias, eps, act):
    y, mean, var, _ = _forward(x, scale, bias, eps, act)
    return y, mean, var


def _bn_act_fwd(x, scale, bias, eps, act):
    # symbolic_zeros=True hands the primals in as CustomVJPPrimal(value, perturbed).
    x, scale, bias = x.value, scale.value, bias.value
    y, mean, var, rstd = _forward(x, scale, bias, eps, act)
    return (y, mean, var), (x, scale, bias, mean, rstd)


def _bn_act_bwd(eps, act, res, cts):
    x, scale, bias, mean, rstd = res
    g, g_mean, g_var = cts
    xf = x.astype(jnp.float32)
    count = math.prod(x.shape[:-1])
    use_native, name = _native_act(x, act)
    if isinstance(g, SymbolicZero):
        dx, dscale, dbias = _xla_backward(x, jnp.zeros(x.shape, jnp.float32), scale, bias, mean, rstd, act)
    elif use_native:
        flat = lambda v: v.reshape(-1, x.shape[-1])  # noqa: E731

        def cpu(x, g, scale, bias, mean, rstd):
            dx, dscale, dbias = native.bn_act_backward(flat(x), flat(g), scale, bias, mean, rstd, name)
            return dx.reshape(x.shape), dscale, dbias

        xla = lambda *args: _xla_backward(*args, act)  # noqa: E731
        dx, dscale, dbias = lax.platform_dependent(
            x, g.astype(jnp.float32), scale, bias, mean, rstd, cpu=cpu, default=xla
        )
    else:
        dx, dscale, dbias = _xla_backward(x, g.astype(jnp.float32), scale, bias, mean, rstd, act)
    # The returned statistics' own paths: d mean / dx = 1/n, d var / dx = 2 (x - mean) / n.
    if not isinstance(g_mean, SymbolicZero):
        dx = dx + g_mean / count
    if not isinstance(g_var, SymbolicZero):
        dx = dx + (2.0 / count) * g_var * (xf - mean)
    return dx.astype(x.dtype), dscale, dbias


def _xla_backward(x, g, scale, bias, mean, rstd, act):
    """(dx in float32, dscale, dbias) of y alone, XLA's formulation: two passes after fusion."""
    xf = x.astype(jnp.float32)
    axes = tuple(range(x.ndim - 1))
    count = math.prod(x.shape[:-1])
    a, b = _affine(scale, bias, mean, rstd)
    z = xf * a + b
    dz = g if act is None else jax.vjp(act, z)[1](g)[0]
    dbias = dz.sum(axes)
    xhat = (xf - mean) * rstd
    dscale = (dz * xhat).sum(axes)
    dx = (scale * rstd) * (dz - dbias / count - xhat * (dscale / count))
    return dx, dscale, dbias


_bn_act.defvjp(_bn_act_fwd, _bn_act_bwd, symbolic_zeros=True)
