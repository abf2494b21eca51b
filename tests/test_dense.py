"""`pointwise_conv`, the native small-Cin (stem) conv and the per-tap kernel gradient compute lax's conv (values and
both gradients), and `dense_conv` picks each only where it applies: 1x1/s1, few input channels in float32 with native
kernels, and the taps for the other kxk convs on CPU in float32 with enough output channels."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import effnet_jax.ops.dense as dense
from effnet_jax.ops import native
from effnet_spec import pad_amounts

needs_native = pytest.mark.skipif(not native.available(), reason="native kernels not built here (no C++ compiler)")

# float32 sums of at most 24 products in a different order than XLA's conv; values are O(1..10), so 1e-4 is
# ~100 ulp of headroom and far below any indexing error (O(1)).
TOL = 1e-4


def _lax(x, kernel, stride, padding):
    return jax.lax.conv_general_dilated(
        x, kernel, (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def _check(fn, x_shape, kernel_shape, stride, padding):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal(kernel_shape), jnp.float32)
    want_y = _lax(x, kernel, stride, padding)
    np.testing.assert_allclose(fn(x, kernel), want_y, rtol=TOL, atol=TOL)
    cot = jnp.asarray(rng.standard_normal(want_y.shape), jnp.float32)
    got = jax.grad(lambda x, k: jnp.sum(fn(x, k) * cot), (0, 1))(x, kernel)
    want = jax.grad(lambda x, k: jnp.sum(_lax(x, k, stride, padding) * cot), (0, 1))(x, kernel)
    for name, g, w in zip(("dx", "dkernel"), got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=TOL, atol=TOL, err_msg=name)


@pytest.mark.parametrize("shape, out_ch", [((2, 5, 7, 3), 8), ((1, 1, 1, 16), 4), ((3, 4, 4, 24), 144)])
def test_pointwise_matches_lax(shape, out_ch):
    _check(dense.pointwise_conv, shape, (1, 1, shape[-1], out_ch), 1, ((0, 0), (0, 0)))


@pytest.mark.parametrize(
    "kernel_shape, stride, picked",
    [
        ((1, 1, 8, 4), 1, "pointwise_conv"),
        ((1, 1, 8, 4), 2, "_lax_conv"),
        ((3, 3, 8, 4), 1, "_lax_conv"),
        ((3, 3, 8, 4), 2, "_lax_conv"),
        ((3, 3, 5, 4), 2, "_lax_conv"),
        ((1, 1, 3, 4), 1, "pointwise_conv"),
        ((3, 3, 3, 4), 2, "_small_cin_conv" if native.available() else "_lax_conv"),
        ((3, 3, 1, 4), 1, "_small_cin_conv" if native.available() else "_lax_conv"),
    ],
)
def test_dense_conv_picks(kernel_shape, stride, picked, monkeypatch):
    monkeypatch.setenv(dense.ENV_VAR, "lax")
    calls = []
    for name in ("pointwise_conv", "_lax_conv", "_small_cin_conv"):
        monkeypatch.setattr(dense, name, lambda *a, _n=name: calls.append(_n) or a[0])
    dense.dense_conv(jnp.zeros((1, 4, 4, kernel_shape[2])), jnp.zeros(kernel_shape), stride, ((0, 0), (0, 0)))
    assert calls == [picked]


COUT = dense.TAPS_MIN_COUT


@pytest.mark.parametrize(
    "kernel_grad, env, kernel_shape, dtype, picked",
    [
        ("auto", "", (3, 3, 8, COUT), jnp.float32, "_taps_conv auto"),  # CPU (the test backend), float32
        ("auto", "", (3, 3, 8, COUT - 1), jnp.float32, "_lax_conv"),  # too few output channels to pay
        ("auto", "", (3, 3, 8, COUT), jnp.bfloat16, "_lax_conv"),  # not measured in bfloat16
        ("auto", "lax", (3, 3, 8, COUT), jnp.float32, "_lax_conv"),
        ("auto", "taps", (3, 3, 8, 4), jnp.bfloat16, "_taps_conv forced"),
        ("taps", "lax", (3, 3, 8, 4), jnp.float32, "_taps_conv forced"),  # the argument beats the environment
        ("lax", "taps", (3, 3, 8, COUT), jnp.float32, "_lax_conv"),
        ("taps", "", (1, 1, 8, COUT), jnp.float32, "pointwise_conv"),  # 1x1 stride 1 stays a matmul
        ("taps", "", (3, 3, 3, COUT), jnp.bfloat16, "_lax_conv"),  # the stem never takes the taps
    ],
)
def test_dense_conv_picks_the_kernel_gradient(kernel_grad, env, kernel_shape, dtype, picked, monkeypatch):
    monkeypatch.setenv(dense.ENV_VAR, env)
    calls = []
    for name in ("pointwise_conv", "_lax_conv", "_small_cin_conv"):
        monkeypatch.setattr(dense, name, lambda *a, _n=name: calls.append(_n) or a[0])
    monkeypatch.setattr(dense, "_taps_conv", lambda *a: calls.append(f"_taps_conv {'auto' if a[-1] else 'forced'}"))
    x = jnp.zeros((1, 4, 4, kernel_shape[2]), dtype)
    dense.dense_conv(x, jnp.zeros(kernel_shape, dtype), 1, ((1, 1), (1, 1)), kernel_grad=kernel_grad)
    assert calls == [picked]


def test_bad_kernel_grad(monkeypatch):
    x, k, pads = jnp.zeros((1, 4, 4, 8)), jnp.zeros((3, 3, 8, 8)), ((1, 1), (1, 1))
    with pytest.raises(ValueError, match=r"kernel_grad='im2col' is not a dense kernel gradient"):
        dense.dense_conv(x, k, 1, pads, kernel_grad="im2col")
    monkeypatch.setenv(dense.ENV_VAR, "xla")
    with pytest.raises(ValueError, match=r"EFFNET_DENSE_KGRAD='xla' is not a dense kernel gradient"):
        dense.dense_conv(x, k, 1, pads)


@pytest.mark.parametrize(
    "fn, kernel_shape, match",
    [
        (dense.pointwise_conv, (1, 1, 4, 8), r"pointwise_conv: kernel \(1, 1, 4, 8\) does not fit input channels 3"),
        (dense.pointwise_conv, (3, 3, 3, 8), r"pointwise_conv: kernel \(3, 3, 3, 8\) does not fit input channels 3"),
        (
            lambda x, k: dense.dense_conv(x, k, 1, ((1, 1), (1, 1))),
            (3, 3, 4, 8),
            r"dense_conv: kernel \(3, 3, 4, 8\) does not fit input channels 3",
        ),
    ],
)
def test_bad_kernel(fn, kernel_shape, match):
    with pytest.raises(ValueError, match=match):
        fn(jnp.zeros((1, 2, 2, 3)), jnp.zeros(kernel_shape))


# (x shape, kernel shape, stride, padding): the stem (3x3 s2, C = 3) with symmetric and TF-"same" pads at odd,
# even and non-square sizes, stride 1, 5x5, one input channel, output channels off the 32/16/8 register blocks,
# an input narrower than the kernel, a pad bigger than needed.
SMALL_CIN_CASES = [
    ((2, 17, 17, 3), (3, 3, 3, 32), 2, ((1, 1), (1, 1))),
    ((1, 21, 19, 3), (3, 3, 3, 32), 2, ((0, 1), (0, 1))),
    ((2, 16, 16, 3), (3, 3, 3, 32), 2, ((0, 1), (0, 1))),
    ((2, 15, 22, 3), (3, 3, 3, 40), 2, ((1, 1), (1, 1))),
    ((2, 15, 22, 3), (3, 3, 3, 40), 2, ((1, 1), (0, 1))),
    ((1, 9, 7, 3), (3, 3, 3, 17), 1, ((1, 1), (1, 1))),
    ((1, 8, 10, 3), (3, 3, 3, 64), 1, ((0, 0), (0, 0))),
    ((2, 13, 11, 1), (5, 5, 1, 56), 2, ((2, 2), (2, 2))),
    ((1, 6, 2, 4), (3, 3, 4, 8), 2, ((1, 1), (1, 1))),
    ((1, 5, 5, 2), (3, 3, 2, 3), 1, ((2, 2), (2, 2))),
]


@needs_native
@pytest.mark.parametrize("case", SMALL_CIN_CASES, ids=lambda c: f"x{c[0]}k{c[1]}s{c[2]}p{c[3]}")
def test_small_cin_native_matches_lax(case):
    x_shape, kernel_shape, stride, padding = case
    rng = np.random.default_rng(sum(x_shape) + kernel_shape[-1])
    x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal(kernel_shape), jnp.float32)
    fn = jax.jit(lambda x, k: dense.dense_conv(x, k, stride, padding))
    want_y = np.asarray(_lax(x, kernel, stride, padding), np.float64)
    # Each output sums at most kh*kw*C = 27..25 float32 products of N(0, 1) numbers in another order than XLA's:
    # rounding is ~1e-6 of the largest output; 1e-5 of it is ~10x that and far below an indexing slip (O(1)).
    np.testing.assert_allclose(fn(x, kernel), want_y, rtol=0, atol=1e-5 * np.abs(want_y).max())
    cot = jnp.asarray(rng.standard_normal(want_y.shape), jnp.float32)
    grad = jax.jit(jax.grad(lambda x, k: jnp.sum(dense.dense_conv(x, k, stride, padding) * cot), (0, 1)))
    got = grad(x, kernel)
    want = jax.grad(lambda x, k: jnp.sum(_lax(x, k, stride, padding) * cot), (0, 1))(x, kernel)
    # dk sums up to N*Ho*Wo (<= 320 here) products in another order; dx is lax's own VJP (exactly equal).
    for name, g, w in zip(("dx", "dkernel"), got, want, strict=True):
        w = np.asarray(w, np.float64)
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-5 * np.abs(w).max(), err_msg=name)


@needs_native
def test_small_cin_stem_runs_natively_and_drops_the_input_gradient():
    x = jnp.ones((2, 16, 16, 3))
    loss = lambda k: jnp.sum(dense.dense_conv(x, k, 2, ((0, 1), (0, 1))) ** 2)
    hlo = jax.jit(jax.grad(loss)).lower(jnp.ones((3, 3, 3, 32))).compile().as_text()
    assert native._DENSE_FWD in hlo and native._DENSE_KGRAD in hlo
    assert "convolution(" not in hlo  # neither lax's forward, its kernel gradient nor the unused input gradient


def test_small_cin_other_dtypes_stay_lax(monkeypatch):
    calls = []
    monkeypatch.setattr(dense, "_lax_conv", lambda *a: calls.append("_lax_conv") or a[0])
    monkeypatch.setattr(dense, "_small_cin_conv", lambda *a: calls.append("_small_cin_conv") or a[0])
    dense.dense_conv(jnp.zeros((1, 4, 4, 3), jnp.bfloat16), jnp.zeros((3, 3, 3, 4), jnp.bfloat16), 2, ((1, 1), (1, 1)))
    assert calls == ["_lax_conv"]


def _pads(padding, x_shape, k, stride):
    return pad_amounts(padding, x_shape[1], k, stride), pad_amounts(padding, x_shape[2], k, stride)


# (x shape, kernel, stride, padding): symmetric and TF-"same" pads at odd, even and non-square sizes, strides 1 and 2,
# 3x3 and 5x5, output channels below TAPS_MIN_COUT, and an input whose last row and column no tap reaches.
TAPS_CASES = [
    ((2, 7, 7, 8), 3, 24, 1, "symmetric"),
    ((2, 9, 6, 8), 3, 24, 2, "symmetric"),
    ((2, 8, 8, 6), 3, 32, 2, "tf_same"),
    ((1, 7, 10, 6), 3, 24, 2, "tf_same"),
    ((2, 6, 5, 5), 3, 8, 1, "tf_same"),
    ((1, 9, 8, 6), 5, 24, 2, "symmetric"),
    ((1, 8, 11, 5), 5, 16, 2, "tf_same"),
    ((1, 6, 6, 5), 3, 24, 2, "symmetric"),
]


def _conv_and_grads(conv, x, kernel, cot):
    y, vjp = jax.vjp(conv, x, kernel)
    return (y, *vjp(cot))


def _taps_vs_lax(cases, dtype):
    """For each case, (y, dx, dk) of the forced taps, of lax's conv, and of lax's conv in float32 of the same numbers,
    all in one jitted program (one compile: the CI budget), from N(0, 1) inputs and cotangent rounded to `dtype`."""
    rng = np.random.default_rng(0)
    args, convs = [], []
    for x_shape, k, cout, stride, padding in cases:
        pads = _pads(padding, x_shape, k, stride)
        x = rng.standard_normal(x_shape)
        kernel = rng.standard_normal((k, k, x_shape[-1], cout))
        cot = rng.standard_normal(jax.eval_shape(partial(_lax, stride=stride, padding=pads), x, kernel).shape)
        args.append(tuple(jnp.asarray(a, dtype) for a in (x, kernel, cot)))
        convs.append((partial(dense.dense_conv, stride=stride, padding=pads, kernel_grad="taps"),
                      partial(_lax, stride=stride, padding=pads)))  # fmt: skip

    @jax.jit
    def run(args):
        out = []
        for (x, kernel, cot), (taps, lax_conv) in zip(args, convs, strict=True):
            f32 = [a.astype(jnp.float32) for a in (x, kernel, cot)]
            out.append((_conv_and_grads(taps, x, kernel, cot), _conv_and_grads(lax_conv, x, kernel, cot),
                        _conv_and_grads(lax_conv, *f32)))  # fmt: skip
        return out

    return run(args)


def test_taps_kernel_grad_matches_lax():
    """Forward and input gradient are lax's own ops (equal to the bit); the kernel gradient sums the same N*Ho*Wo*kh*kw
    float32 products per entry in another order, N*Ho*Wo <= 98 here, products of N(0, 1) numbers: rounding is ~1e-6 of
    the largest entry, 1e-5 of it leaves 10x headroom and is far below a tap or pad off by one (O(1) of it)."""
    for case, (taps, want, _) in zip(TAPS_CASES, _taps_vs_lax(TAPS_CASES, jnp.float32), strict=True):
        assert [a.dtype for a in taps] == [a.dtype for a in want] == [jnp.float32] * 3, case
        np.testing.assert_array_equal(taps[0], want[0], err_msg=f"y {case}")
        np.testing.assert_array_equal(taps[1], want[1], err_msg=f"dx {case}")
        dk = np.asarray(want[2])
        np.testing.assert_allclose(taps[2], dk, rtol=0, atol=1e-5 * np.abs(dk).max(), err_msg=f"dk {case}")


def test_taps_kernel_grad_in_bfloat16():
    """bfloat16 operands (the compute dtype off CPU): the outputs keep lax's dtypes, and the taps accumulate in
    float32 and round once, so their kernel gradient is within bfloat16's half ulp (2**-9 of each entry) of the exact
    one (lax's float32 gradient of the same bfloat16 numbers); 2**-8 of the largest entry gives 2x headroom."""
    cases = TAPS_CASES[1:3]
    for case, (taps, want, exact) in zip(cases, _taps_vs_lax(cases, jnp.bfloat16), strict=True):
        assert [a.dtype for a in taps] == [a.dtype for a in want] == [jnp.bfloat16] * 3, case
        np.testing.assert_array_equal(taps[0], want[0], err_msg=f"y {case}")
        np.testing.assert_array_equal(taps[1], want[1], err_msg=f"dx {case}")
        dk = np.asarray(exact[2])
        got = np.asarray(taps[2].astype(jnp.float32))
        np.testing.assert_allclose(got, dk, rtol=0, atol=2**-8 * np.abs(dk).max(), err_msg=f"dk {case}")


def test_taps_on_cpu_leave_no_conv_in_the_kernel_gradient():
    """ "auto" on CPU: the kernel gradient alone compiles to matmuls (the forward and the input gradient are dead code
    there), where lax's is a convolution; `lax.platform_dependent` picked the taps."""
    x, cot = jnp.ones((2, 6, 6, 8)), jnp.ones((2, 3, 3, COUT))

    def hlo(kernel_grad):
        loss = lambda k: jnp.sum(dense.dense_conv(x, k, 2, ((0, 1), (0, 1)), kernel_grad) * cot)
        return jax.jit(jax.grad(loss)).lower(jnp.ones((3, 3, 8, COUT))).compile().as_text()

    assert "convolution(" not in hlo("auto") and "convolution(" in hlo("lax")


def test_v2_train_step_is_the_same_with_the_taps(monkeypatch):
    """V2-B0's first two stages (fused 32->16 s1, 16->64 s2 and 32->128 s1, each followed by train-mode BN) at 32 px,
    batch 4: loss and every gradient as with lax's kernel gradients, both traced into one jitted program (one compile).
    The taps are forced so every fused conv takes them. Only the fused kernels' gradients are computed differently:
    float32 sums in another order (up to 4*32*32 = 4096 products), ~1e-6 of the largest entry; 1e-5 leaves headroom,
    and a wrong tap moves them by O(1)."""
    from flax import nnx

    from effnet_jax import EfficientNet, ModelOptions
    from effnet_jax.train.step import loss_and_grads
    from effnet_spec import resolve, stages_for

    spec = resolve("v2_b0", num_classes=10, stages=stages_for("v2_b0")[:2])
    model = EfficientNet(spec, rngs=nnx.Rngs(0), options=ModelOptions(dtype="float32"))
    model.train()
    rng = np.random.default_rng(0)
    batch = {"image": jnp.asarray(rng.standard_normal((4, 32, 32, 3)), jnp.float32),
             "label": jnp.asarray(rng.integers(0, 10, 4))}  # fmt: skip
    graphdef, state = nnx.split(model)
    taps_calls = []
    taps_conv = dense._taps_conv
    monkeypatch.setattr(dense, "_taps_conv", lambda *a: taps_calls.append(a[1].shape) or taps_conv(*a))

    def step(state):
        out = {}
        for kernel_grad in ("lax", "taps"):  # read while tracing
            monkeypatch.setenv(dense.ENV_VAR, kernel_grad)
            loss, _, grads = loss_and_grads(nnx.merge(graphdef, state, copy=True), batch)
            out[kernel_grad] = loss, nnx.to_pure_dict(grads)
        return out

    out = jax.jit(step)(state)
    assert taps_calls == [(3, 3, 32, 16), (3, 3, 16, 64), (3, 3, 32, 128)]
    assert float(out["taps"][0]) == float(out["lax"][0])  # the same forward ops
    got, want = (jax.tree_util.tree_flatten_with_path(out[k][1])[0] for k in ("taps", "lax"))
    for (path, g), (_, w) in zip(got, want, strict=True):
        name = jax.tree_util.keystr(path)
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-5 * float(jnp.abs(w).max()), err_msg=name)
