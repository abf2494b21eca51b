"""`batch_norm_act` (hand-written backward) computes the autodiffed reference: values, gradients, statistics.

Each reference test runs both formulations: the native CPU kernels (`csrc/bn_act.cc`, where built) and XLA's.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from effnet_jax.model.layers import activation_fn
from effnet_jax.ops import bn_act, native
from effnet_jax.ops.bn_act import batch_norm_act, batch_norm_act_reference

needs_native = pytest.mark.skipif(not native.available(), reason="native kernels not built here (no C++ compiler)")

EPS = 1e-3
# Both sides are float32 reductions over <= 2*5*6 values in different orders plus the same elementwise ops;
# values are O(1..10), so 2e-5 is ~100 ulp of headroom and far below any formula error (O(1e-1)).
TOL = 2e-5


@pytest.fixture(autouse=True, params=["native", "xla"])
def path(request, monkeypatch):
    """Runs each test on the native kernels and on XLA's formulation (the one GPU/TPU and `EFFNET_NATIVE=0` get)."""
    if request.param == "native" and not native.available():
        pytest.skip("native kernels not built here (no C++ compiler)")
    if request.param == "xla":
        monkeypatch.setattr(bn_act, "_native_act", lambda x, act: (False, None))
    return request.param


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


def _lowered(fn, *args) -> str:
    return jax.jit(fn).lower(*args).as_text()


def test_cpu_train_mode_runs_the_native_calls_where_built(path):
    x, scale, bias, (gy, _, _) = _inputs()
    loss = lambda x, s, b: jnp.sum(batch_norm_act(x, s, b, EPS, jax.nn.silu)[0] * gy)  # noqa: E731
    hlo = _lowered(jax.grad(loss, (0, 1, 2)), x, scale, bias)
    for target in ("effnet_bn_act_fwd", "effnet_bn_act_bwd"):
        assert (target in hlo) == (path == "native"), target
    # A shape jax.export leaves symbolic keeps XLA's formulation: an artifact must not name effnet's targets.
    (batch,) = jax.export.symbolic_shape("b")
    spec = jax.ShapeDtypeStruct((batch, 5, 6, 4), jnp.float32)
    exported = jax.export.export(jax.jit(lambda x: batch_norm_act(x, scale, bias, EPS, jax.nn.silu)[0]))(spec)
    assert "effnet_bn_act" not in exported.mlir_module()


# Shapes whose rows span several of the kernel's cache-sized chunks and threads' parts, with channel counts off the
# 16-lane vector width (the partial last vector) and one channel.
NATIVE_SHAPES = [(4, 30, 30, 17), (2, 40, 40, 40), (3, 11, 13, 1), (2, 3, 3, 64)]


@needs_native
@pytest.mark.parametrize("shape", NATIVE_SHAPES, ids=str)
@pytest.mark.parametrize("activation", [None, "silu", "relu6"])
def test_native_equals_xla_on_large_and_ragged_shapes(path, shape, activation):
    if path == "xla":
        pytest.skip("compares the two paths itself")
    rng = np.random.default_rng(sum(shape))
    x = jnp.asarray(rng.standard_normal(shape) * 3 + 1, jnp.float32)
    g = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    scale = jnp.asarray(rng.uniform(0.5, 2.0, shape[-1]), jnp.float32)
    bias = jnp.asarray(rng.standard_normal(shape[-1]), jnp.float32)
    act = None if activation is None else activation_fn(activation)

    def run():  # a fresh function per path: jit reuses a trace of a function object it has seen
        def both(x, s, b):
            out, vjp = jax.vjp(lambda x, s, b: batch_norm_act(x, s, b, EPS, act), x, s, b)
            return out, vjp((g, jnp.zeros_like(out[1]), jnp.zeros_like(out[2])))

        return jax.tree_util.tree_leaves(jax.jit(both)(x, scale, bias))

    got = run()
    with pytest.MonkeyPatch.context() as m:
        m.setattr(bn_act, "_native_act", lambda x, act: (False, None))
        want = run()
    # y, mean, var, dx, dscale, dbias. Sums over up to 3600 rows in float32 in different orders (XLA's tree vs the
    # kernel's chunks merged in double) and exp by different polynomials: ~1e-6 relative; 2e-5 of each output's
    # largest magnitude is ~100 ulp and far below a wrong formula, row or lane.
    for name, a, b in zip(("y", "mean", "var", "dx", "dscale", "dbias"), got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=2e-5 * float(jnp.abs(b).max()), err_msg=name)


@needs_native
def test_native_statistics_do_not_cancel(path):
    """A large common offset: var from sums of squares in float32 would be noise; the kernel's is exact.

    (XLA's float32 mean of 1000 + noise is ~1e-6 off, which alone moves a 1e-4 variance by ~1%: not tested here.)
    """
    if path == "xla":
        pytest.skip("a property of the native kernel")
    rng = np.random.default_rng(3)
    x = rng.standard_normal((8, 20, 20, 24)) * 0.01 + 1000.0
    forward = jax.jit(lambda x: native.bn_act_forward(x.reshape(-1, 24), jnp.ones(24), jnp.zeros(24), EPS, None))
    _, mean, var, _ = forward(jnp.asarray(x, jnp.float32))
    xf = np.asarray(jnp.asarray(x, jnp.float32), np.float64).reshape(-1, 24)  # the float32 input, exactly
    np.testing.assert_allclose(mean, xf.mean(0), rtol=1e-7)  # ~1 ulp: the float32 result of a float64 merge
    # 1e-4 relative of a variance of 1e-4 around 1000: float32 E[x^2] - E[x]^2 would be off by ~1e2 relative.
    np.testing.assert_allclose(var, xf.var(0), rtol=1e-4)


@needs_native
def test_native_relu6_gradient_is_zero_at_both_kinks(path):
    if path == "xla":
        pytest.skip("a property of the native kernel")
    z = jnp.asarray([[0.0, 6.0, 3.0, -1.0, 7.0, 2.0, 1e-7, 5.9999995]], jnp.float32).T  # (8, 1), z == x below
    g = jnp.ones_like(z)
    one, zero = jnp.ones(1), jnp.zeros(1)
    dx, _, _ = jax.jit(lambda z, g: native.bn_act_backward(z, g, one, zero, zero, one, "relu6"))(z, g)
    # With scale = rstd = 1 and mean = bias = 0, dx = dz - mean(dz) - z * mean(dz * z): recover dz from it.
    dz = jax.vmap(jax.grad(jax.nn.relu6))(z[:, 0])
    want = dz - dz.mean() - z[:, 0] * (dz * z[:, 0]).mean()
    np.testing.assert_allclose(dx[:, 0], want, rtol=0, atol=1e-6)


@needs_native
@pytest.mark.parametrize(
    "dtype, act",
    [(jnp.float32, lambda z: jax.nn.silu(z)), (jnp.float32, jax.nn.gelu), (jnp.bfloat16, jax.nn.silu)],
    ids=["silu-wrapped", "gelu", "bf16"],
)
def test_what_the_kernels_do_not_know_stays_on_xla(path, dtype, act):
    """An activation other than None / jax.nn.silu / jax.nn.relu6, or a non-float32 input, must not reach the kernel
    (which would apply its own activation, or read the wrong dtype)."""
    if path == "xla":
        pytest.skip("checks the dispatch to the native kernels")
    x, scale, bias, (gy, _, _) = _inputs()
    loss = lambda x: jnp.sum(batch_norm_act(x, scale, bias, EPS, act)[0].astype(jnp.float32) * gy)  # noqa: E731
    assert "effnet_bn_act" not in _lowered(jax.grad(loss), x.astype(dtype))


def test_vmap_keeps_statistics_per_example(path):
    """Under jax.vmap each example is normalised by its own statistics (the native call runs once per example)."""
    x, scale, bias, (gy, _, _) = _inputs()
    xs = jnp.stack([x, 2.0 * x + 1.0])
    fn = lambda x: batch_norm_act(x, scale, bias, EPS, jax.nn.silu)  # noqa: E731
    got = jax.jit(jax.vmap(fn))(xs)
    for i in range(2):
        for a, b in zip(got, fn(xs[i]), strict=True):
            np.testing.assert_allclose(a[i], b, rtol=TOL, atol=TOL)
    grads = jax.jit(jax.vmap(jax.grad(lambda x: jnp.sum(fn(x)[0] * gy))))(xs)
    for i in range(2):
        np.testing.assert_allclose(grads[i], jax.grad(lambda x: jnp.sum(fn(x)[0] * gy))(xs[i]), rtol=TOL, atol=TOL)
