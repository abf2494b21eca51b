"""Train-mode BatchNorm followed by an optional activation, as one function with a hand-written backward.

Autodiff of `act((x - mean) * scale * rsqrt(var + eps) + bias)` differentiates through the batch statistics
term by term, and XLA CPU runs the result as several full passes over the activation (each memory-bound). The
closed form used here needs two: one reduction pass for `sum(dz)` and `sum(dz * xhat)` and one elementwise
pass for

    dx = scale * rstd * (dz - mean(dz) - xhat * mean(dz * xhat)),   dz = act'(z) * g,

which is faster for the layer alone but gains the whole train step much less, since XLA already fuses most of
autodiff's passes (`benchmarks/ablation.py`; figures in benchmarks/README.md). The activation's own
derivative is taken with `jax.vjp` at the recomputed pre-activation, so it is exactly autodiff's (ReLU6's
kink convention included). Statistics are computed in float32 two-pass (no E[x^2] - E[x]^2 cancellation),
whatever the input dtype. The batch mean and (biased) variance are returned too, for the running averages;
their cotangents are honoured when they are not symbolic zeros.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

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


def _forward(x, scale, bias, eps, act):
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
    axes = tuple(range(x.ndim - 1))
    count = math.prod(x.shape[:-1])
    a, b = _affine(scale, bias, mean, rstd)
    z = xf * a + b
    if isinstance(g, SymbolicZero):
        dz = jnp.zeros_like(z)
    else:
        g = g.astype(jnp.float32)
        dz = g if act is None else jax.vjp(act, z)[1](g)[0]
    dbias = dz.sum(axes)
    xhat = (xf - mean) * rstd
    dscale = (dz * xhat).sum(axes)
    dx = (scale * rstd) * (dz - dbias / count - xhat * (dscale / count))
    # The returned statistics' own paths: d mean / dx = 1/n, d var / dx = 2 (x - mean) / n.
    if not isinstance(g_mean, SymbolicZero):
        dx = dx + g_mean / count
    if not isinstance(g_var, SymbolicZero):
        dx = dx + (2.0 / count) * g_var * (xf - mean)
    return dx.astype(x.dtype), dscale, dbias


_bn_act.defvjp(_bn_act_fwd, _bn_act_bwd, symbolic_zeros=True)
