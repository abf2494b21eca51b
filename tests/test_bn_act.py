"""`batch_norm_act` (hand-written backward) computes the autodiffed reference: values, gradients, statistics."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from effnet_jax.model.layers import activation_fn
from effnet_jax.ops.bn_act import batch_norm_act, batch_norm_act_reference

EPS = 1e-3
# Both sides are float32 reductions over <= 2*5*6 values in different orders plus the same elementwise ops;
# values are O(1..10), so 2e-5 is ~100 ulp of headroom and far below any formula error (O(1e-1)).
TOL = 2e-5


def _reference(x, scale, bias, activation):
    act = None if activation is None else activation_fn(activation)
    return batch_norm_act_reference(x, scale, bias, EPS, act)


def _inputs(shape=(2, 5, 6, 4), seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal(shape) * 3 + 1, jnp.float32)
    scale = jnp.asarray(rng.uniform(0.5, 2.0, shape[-1]), jnp.float32)
    bias = jnp.asarray(rng.standard_normal(shape[-1]), jnp.float32)
    cots = [jnp.asarray(rng.standard_normal(s), jnp.float32) for s in (shape, shape[-1:], shape[-1:])]
    return x, scale, bias, cots


# (activation, which outputs carry a cotangent): y only is the model's case (statistics feed running averages
# under stop_gradient); the statistics' own paths are checked too.
CASES = [
    pytest.param(act, outs, id=f"{act}-{'+'.join(outs)}")
    for act, outs in itertools.product([None, "silu", "relu6"], [("y",), ("y", "mean", "var"), ("mean", "var")])
]


@pytest.mark.parametrize("activation, outs", CASES)
def test_matches_autodiff(activation, outs):
    x, scale, bias, (gy, gm, gv) = _inputs()
    weights = {"y": gy, "mean": gm, "var": gv}

    def loss(fn):
        def f(x, scale, bias):
            y, mean, var = fn(x, scale, bias)
            parts = {"y": y, "mean": mean, "var": var}
            return sum(jnp.sum(parts[k] * weights[k]) for k in outs)

        return f

    act = None if activation is None else activation_fn(activation)
    ours = lambda x, s, b: batch_norm_act(x, s, b, EPS, act)  # noqa: E731
    ref = lambda x, s, b: _reference(x, s, b, activation)  # noqa: E731
    for got, want in zip(ours(x, scale, bias), ref(x, scale, bias), strict=True):
        np.testing.assert_allclose(got, want, rtol=TOL, atol=TOL)
    got = jax.grad(loss(ours), (0, 1, 2))(x, scale, bias)
    want = jax.grad(loss(ref), (0, 1, 2))(x, scale, bias)
    for name, g, w in zip(("dx", "dscale", "dbias"), got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=TOL, atol=TOL, err_msg=name)


def test_relu6_kink_convention_is_autodiffs():
    """Pre-activations at the kinks get the gradient jax.nn.relu6 gives them, not a re-derived one.

    z == x up to rounding: 6.0 lands exactly on the upper kink, 0.0 within one ulp of the lower.
    """
    x = jnp.asarray([0.0, 6.0, 3.0, -1.0, 7.0, 2.0], jnp.float32).reshape(6, 1, 1, 1)
    mean, std = float(x.mean()), float(jnp.sqrt(jnp.square(x - x.mean()).mean() + EPS))
    scale, bias = jnp.asarray([std]), jnp.asarray([mean])  # so that z == x
    g = jnp.arange(1.0, 7.0).reshape(x.shape)
    got = jax.grad(lambda s: jnp.sum(batch_norm_act(x, s, bias, EPS, jax.nn.relu6)[0] * g))(scale)
    want = jax.grad(lambda s: jnp.sum(_reference(x, s, bias, "relu6")[0] * g))(scale)
    np.testing.assert_allclose(got, want, rtol=TOL, atol=TOL)


def test_bf16_input_keeps_dtype_and_float32_statistics():
    x, scale, bias, _ = _inputs()
    y, mean, var = batch_norm_act(x.astype(jnp.bfloat16), scale, bias, EPS, jax.nn.silu)
    assert y.dtype == jnp.bfloat16 and mean.dtype == var.dtype == jnp.float32
    dx = jax.grad(lambda x: batch_norm_act(x, scale, bias, EPS, jax.nn.silu)[0].astype(jnp.float32).sum())(
        x.astype(jnp.bfloat16)
    )
    assert dx.dtype == jnp.bfloat16


@pytest.mark.parametrize(
    "scale_shape, act, match",
    [
        ((3,), None, r"scale \(3,\) and bias \(4,\) must both be \(4,\)"),
        ((4,), "silu", "act must be None or a function, got 'silu'"),
    ],
)
def test_bad_input(scale_shape, act, match):
    x, _, bias, _ = _inputs()
    with pytest.raises(ValueError, match=match):
        batch_norm_act(x, jnp.ones(scale_shape), bias, EPS, act)
