"""Depthwise convolution, one function with several formulations chosen per backend.

XLA's grouped convolution (`feature_group_count = C`) is fast on GPU/TPU but many times slower than
PyTorch on CPU; the alternatives here compute the same function another way. Every formulation must
pass the depthwise parity tests (values and gradients, both paddings, strides 1/2, kernels 3/5).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["IMPLS", "depthwise_conv", "resolve_impl"]

IMPLS = ("grouped",)


def resolve_impl(impl: str = "auto") -> str:
    """The formulation `impl` stands for on the current default backend."""
    if impl == "auto":
        return "grouped"
    if impl not in IMPLS:
        raise ValueError(f"unknown depthwise impl {impl!r}; expected 'auto' or one of {IMPLS}")
    return impl


def depthwise_conv(
    x: jax.Array,
    kernel: jax.Array,
    stride: int,
    padding: tuple[tuple[int, int], tuple[int, int]],
    impl: str = "auto",
) -> jax.Array:
    """Depthwise conv of NHWC `x` with an HWIO kernel of shape (k, k, 1, C) and explicit padding."""
    impl = resolve_impl(impl)
    return jax.lax.conv_general_dilated(
        x,
        kernel.astype(x.dtype),
        window_strides=(stride, stride),
        padding=padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=x.shape[-1],
    )


del jnp  # kept importable for formulations to come
