"""One check shared by the tests that build the same train step two ways (scan, remat) and compare the results."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest


def numbers(tree) -> list[np.ndarray]:
    """The leaves of `tree` as numpy arrays, RNG keys as their key data."""
    return [np.asarray(jax.random.key_data(a) if jnp.issubdtype(a.dtype, jax.dtypes.prng_key) else a)
            for a in jax.tree.leaves(tree)]  # fmt: skip


def assert_same_step(reference: tuple, other: tuple) -> None:
    """(loss, grads, state) of one step built two ways compute the same thing. The same ops fused differently round
    differently in float32 and train-mode BN amplifies it (~1e-5 of the gradient's norm, tests/test_remat.py); a
    resampled mask, a wrong rate or a stale BN statistic moves the gradient by O(1)."""
    (loss0, grads0, state0), (loss1, grads1, state1) = reference, other
    assert jax.tree.structure(grads0) == jax.tree.structure(grads1)
    assert float(loss0) == pytest.approx(float(loss1), rel=1e-6)
    g0, g1 = jax.tree.leaves(grads0), jax.tree.leaves(grads1)
    norm = sum(float(jnp.sum(a**2)) for a in g0) ** 0.5
    diff = sum(float(jnp.sum((a - b) ** 2)) for a, b in zip(g0, g1)) ** 0.5
    worst = max(float(jnp.abs(a - b).max()) for a, b in zip(g0, g1)) / max(float(jnp.abs(a).max()) for a in g0)
    assert diff / norm <= 3e-5 and worst <= 3e-5, (diff / norm, worst)
    for a, b in zip(numbers(state0), numbers(state1)):  # BN statistics, counters, RNG keys and counts
        if np.issubdtype(a.dtype, np.floating):
            np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)
        else:
            np.testing.assert_array_equal(b, a)
