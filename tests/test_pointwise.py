"""`pointwise_conv` (a 1x1 conv as one matmul) computes lax's conv: values and both gradients."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from effnet_jax.layers import pointwise_conv

# float32 sums of C products in a different order than XLA's conv; values O(1..10): ~100 ulp of headroom.
TOL = 1e-4


def _conv(x, kernel):
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))


@pytest.mark.parametrize("shape, out_ch", [((2, 5, 7, 3), 8), ((1, 1, 1, 16), 4), ((3, 4, 4, 24), 144)])
def test_matches_lax_conv(shape, out_ch):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((1, 1, shape[-1], out_ch)), jnp.float32)
    cot = jnp.asarray(rng.standard_normal(shape[:-1] + (out_ch,)), jnp.float32)
    np.testing.assert_allclose(pointwise_conv(x, kernel), _conv(x, kernel), rtol=TOL, atol=TOL)
    got = jax.grad(lambda x, k: jnp.sum(pointwise_conv(x, k) * cot), (0, 1))(x, kernel)
    want = jax.grad(lambda x, k: jnp.sum(_conv(x, k) * cot), (0, 1))(x, kernel)
    for name, g, w in zip(("dx", "dkernel"), got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=TOL, atol=TOL, err_msg=name)


@pytest.mark.parametrize("kernel_shape", [(1, 1, 4, 8), (3, 3, 3, 8)])
def test_bad_kernel(kernel_shape):
    with pytest.raises(ValueError, match=r"pointwise_conv: kernel \(.*\) does not fit input channels 3"):
        pointwise_conv(jnp.zeros((1, 2, 2, 3)), jnp.zeros(kernel_shape))
