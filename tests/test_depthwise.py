"""Every depthwise formulation computes the grouped conv's function: values and both gradients."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import effnet_jax.ops.depthwise as dw
from effnet_spec import pad_amounts

# float32 sums of at most 25 products (forward, input grad) or of ~N*H*W*25 products (kernel grad) in a
# different order than XLA's conv; values here are O(1..10), so 1e-4 relative is ~100 ulp of headroom.
RTOL = 1e-4
ATOL = 1e-4

SIZES = [(8, 8), (9, 12), (7, 6)]  # even square, odd/even and even/odd non-square
CASES = [
    pytest.param(h, w, k, s, mode, id=f"{h}x{w}-k{k}-s{s}-{mode}")
    for (h, w), k, s, mode in itertools.product(SIZES, [3, 5], [1, 2], ["symmetric", "tf_same"])
]
# (impl, kernel-gradient block bytes): shift_vjp also with its kernel gradient split into many row blocks.
VARIANTS = [pytest.param(impl, None, id=impl) for impl in dw.IMPLS if impl != "grouped"] + [
    pytest.param("shift_vjp", 512, id="shift_vjp-row-blocks")
]


def _values_and_grads(x, kernel, stride, padding, impl):
    def loss(x, kernel, cotangent):
        return jnp.sum(dw.depthwise_conv(x, kernel, stride, padding, impl) * cotangent)

    y = dw.depthwise_conv(x, kernel, stride, padding, impl)
    cotangent = jnp.asarray(np.random.default_rng(2).standard_normal(y.shape), jnp.float32)
    gx, gk = jax.grad(loss, (0, 1))(x, kernel, cotangent)
    return {"y": y, "dx": gx, "dkernel": gk}


@pytest.mark.parametrize("impl, block_bytes", VARIANTS)
@pytest.mark.parametrize("h, w, k, stride, mode", CASES)
def test_matches_grouped(impl, block_bytes, h, w, k, stride, mode, monkeypatch):
    if block_bytes is not None:
        monkeypatch.setattr(dw, "_KGRAD_BLOCK_BYTES", block_bytes)
    padding = (pad_amounts(mode, h, k, stride), pad_amounts(mode, w, k, stride))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((3, h, w, 16)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((k, k, 1, 16)), jnp.float32)
    with jax.default_matmul_precision("highest"):
        want = jax.jit(_values_and_grads, static_argnums=(2, 3, 4))(x, kernel, stride, padding, "grouped")
        got = jax.jit(_values_and_grads, static_argnums=(2, 3, 4))(x, kernel, stride, padding, impl)
    for name in want:
        assert got[name].shape == want[name].shape, f"{name}: {got[name].shape} != {want[name].shape}"
        np.testing.assert_allclose(got[name], want[name], rtol=RTOL, atol=ATOL, err_msg=f"{impl} {name}")


def test_bf16_input_keeps_dtype():
    x = jnp.ones((1, 6, 6, 8), jnp.bfloat16)
    kernel = jnp.ones((3, 3, 1, 8), jnp.float32)
    for impl in dw.IMPLS:
        y, grads = jax.value_and_grad(
            lambda x, k, impl=impl: jnp.sum(dw.depthwise_conv(x, k, 1, ((1, 1), (1, 1)), impl).astype(jnp.float32)),
            (0, 1),
        )(x, kernel)
        assert grads[0].dtype == jnp.bfloat16 and grads[1].dtype == jnp.float32, impl
        assert float(y) == pytest.approx(8 * (16 * 9 + 16 * 6 + 4 * 4)), impl  # interior 9, edge 6, corner 4 taps


def test_auto_picks_by_backend_and_env(monkeypatch):
    monkeypatch.delenv(dw.ENV_VAR, raising=False)
    expected = "grouped" if jax.default_backend() in ("gpu", "cuda", "rocm", "tpu") else "shift_vjp"
    assert dw.resolve_impl("auto") == expected
    monkeypatch.setenv(dw.ENV_VAR, "shift")
    assert dw.resolve_impl("auto") == "shift"
    assert dw.resolve_impl("grouped") == "grouped"  # an explicit argument beats the env var
    monkeypatch.setenv(dw.ENV_VAR, "fast")
    with pytest.raises(ValueError, match="EFFNET_DEPTHWISE='fast'"):
        dw.resolve_impl("auto")


@pytest.mark.parametrize(
    "x_shape, k_shape, stride, padding, match",
    [
        ((6, 6, 8), (3, 3, 1, 8), 1, ((1, 1), (1, 1)), r"expected x of shape \(N, H, W, C\)"),
        ((1, 6, 6, 8), (3, 3, 8), 1, ((1, 1), (1, 1)), r"expected kernel of shape \(kh, kw, 1, C\)"),
        ((1, 6, 6, 8), (8, 1, 3, 3), 1, ((1, 1), (1, 1)), r"OIHW torch kernel"),
        ((1, 6, 6, 8), (3, 3, 8, 1), 1, ((1, 1), (1, 1)), r"\(kh, kw, 1, 8\)"),
        ((1, 6, 6, 8), (3, 3, 1, 8), 0, ((1, 1), (1, 1)), r"stride >= 1"),
        ((1, 6, 6, 8), (3, 3, 1, 8), 1, (1, 1), r"padding \(\(top, bottom\), \(left, right\)\)"),
        ((1, 6, 6, 8), (3, 3, 1, 8), 1, ((1, -1), (1, 1)), r"must be >= 0"),
        ((1, 2, 2, 8), (5, 5, 1, 8), 1, ((0, 0), (0, 0)), r"smaller than the 5x5 kernel"),
    ],
)
def test_bad_input(x_shape, k_shape, stride, padding, match):
    with pytest.raises(ValueError, match=match):
        dw.depthwise_conv(jnp.zeros(x_shape), jnp.zeros(k_shape), stride, padding)


def test_unknown_impl():
    with pytest.raises(ValueError, match="unknown depthwise impl 'fft'"):
        dw.depthwise_conv(jnp.zeros((1, 4, 4, 2)), jnp.zeros((3, 3, 1, 2)), 1, ((1, 1), (1, 1)), impl="fft")
