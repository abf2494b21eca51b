"""`pointwise_conv` computes lax's conv (values and both gradients), and `dense_conv` picks it only for 1x1/s1."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import effnet_jax.ops.dense as dense

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
    ],
)
def test_dense_conv_picks(kernel_shape, stride, picked, monkeypatch):
    calls = []
    for name in ("pointwise_conv", "_lax_conv"):
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
