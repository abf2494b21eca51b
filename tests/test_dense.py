"""`pointwise_conv` and the native small-Cin (stem) conv compute lax's conv (values and both gradients), and
`dense_conv` picks each only where it applies: 1x1/s1, and few input channels in float32 with native kernels."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import effnet_jax.ops.dense as dense
from effnet_jax.ops import native

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
    calls = []
    for name in ("pointwise_conv", "_lax_conv", "_small_cin_conv"):
        monkeypatch.setattr(dense, name, lambda *a, _n=name: calls.append(_n) or a[0])
    dense.dense_conv(jnp.zeros((1, 4, 4, kernel_shape[2])), jnp.zeros(kernel_shape), stride, ((0, 0), (0, 0)))
    assert calls == [picked]


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
