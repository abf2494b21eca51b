"""The recipe's optimizer pieces against closed forms: TF-form RMSProp, schedules, weight-decay mask, EMA."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from effnet_jax.train.config import BASE
from effnet_jax.train.optim import ema_decay_at, ema_update, make_optimizer, make_schedule, peak_lr, weight_decay_mask

# float32 arithmetic against a float64 numpy closed form over a few steps: a few ulps of relative error.
RTOL = 1e-6


def _tf_rmsprop_reference(w0, grads, lrs, decay=0.9, momentum=0.9, eps=1e-3, wd=0.0):
    """TF1 RMSPropOptimizer in float64: ms starts at 1, eps inside the sqrt, lr inside the momentum."""
    w, ms, mom = w0.astype(np.float64), np.ones_like(w0, np.float64), np.zeros_like(w0, np.float64)
    for g, lr in zip(grads, lrs):
        g = g + wd * w
        ms = decay * ms + (1 - decay) * g * g
        mom = momentum * mom + lr * g / np.sqrt(ms + eps)
        w = w - mom
    return w


def test_rmsprop_matches_tf_closed_form():
    cfg = dataclasses.replace(BASE, lr=0.5, warmup_epochs=0, lr_decay_epochs=1.0, lr_decay_rate=0.5, weight_decay=0.01)
    tx = make_optimizer(cfg, steps_per_epoch=2, total_steps=10)
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(3, 4)).astype(np.float32)
    grads = [rng.normal(size=(3, 4)).astype(np.float32) * s for s in (1.0, 3.0, 0.1, 2.0, 0.5)]
    params = {"kernel": jnp.asarray(w0)}
    state = tx.init(params)
    for g in grads:
        updates, state = tx.update({"kernel": jnp.asarray(g)}, state, params)
        params = optax.apply_updates(params, updates)
    lrs = [0.5 * 0.5 ** (t // 2) for t in range(len(grads))]  # staircase: halve every 2 steps
    expected = _tf_rmsprop_reference(w0, grads, lrs, wd=0.01)
    np.testing.assert_allclose(np.asarray(params["kernel"]), expected, rtol=RTOL, atol=RTOL)


def test_rmsprop_eps_is_inside_the_sqrt():
    """One step from ms=1: update = lr * g / sqrt(0.9 + 0.1 g^2 + eps), not / (sqrt(...) + eps)."""
    cfg = dataclasses.replace(BASE, lr=1.0, warmup_epochs=0, weight_decay=0.0, rmsprop_eps=0.5)
    tx = make_optimizer(cfg, steps_per_epoch=1, total_steps=1)
    params = {"kernel": jnp.zeros(())}
    updates, _ = tx.update({"kernel": jnp.asarray(2.0)}, tx.init(params), params)
    np.testing.assert_allclose(float(updates["kernel"]), -2.0 / np.sqrt(0.9 + 0.1 * 4 + 0.5), rtol=RTOL)


def test_rmsprop_schedule_warmup_then_staircase():
    cfg = dataclasses.replace(BASE, global_batch=512)  # peak 0.016 * 2 = 0.032
    assert peak_lr(cfg) == pytest.approx(0.032)
    sched = make_schedule(cfg, steps_per_epoch=10, total_steps=1000)  # warm-up 50 steps, decay every 24
    assert float(sched(0)) == 0.0
    assert float(sched(25)) == pytest.approx(0.016)
    assert float(sched(50)) == pytest.approx(0.032 * 0.97 ** (50 // 24))
    assert float(sched(240)) == pytest.approx(0.032 * 0.97**10)


def test_cosine_schedule_for_sgd_and_adamw():
    for opt in ("sgd", "adamw"):
        cfg = dataclasses.replace(BASE, optimizer=opt, lr=1.0, warmup_epochs=1)
        sched = make_schedule(cfg, steps_per_epoch=10, total_steps=110)
        assert float(sched(5)) == pytest.approx(0.5)
        assert float(sched(10)) == pytest.approx(1.0)
        assert float(sched(60)) == pytest.approx(0.5, abs=1e-6)
        assert float(sched(110)) == pytest.approx(0.0, abs=1e-7)


def test_weight_decay_skips_bn_and_biases():
    class Tiny(nnx.Module):
        def __init__(self, rngs):
            self.conv = nnx.Conv(3, 4, (3, 3), use_bias=False, rngs=rngs)
            self.bn = nnx.BatchNorm(4, rngs=rngs)
            self.fc = nnx.Linear(4, 2, rngs=rngs)

    mask = weight_decay_mask(nnx.state(Tiny(nnx.Rngs(0)), nnx.Param))
    flat = {
        "/".join(str(getattr(k, "key", k)) for k in p[:-1]): v for p, v in jax.tree_util.tree_leaves_with_path(mask)
    }
    assert flat == {"bn/bias": False, "bn/scale": False, "conv/kernel": True, "fc/bias": False, "fc/kernel": True}


def test_the_rmsprop_recipe_decays_biases_but_not_bn_as_tf():
    """TF: 1e-5 x l2_loss of every trainable variable without `batch_normalization` in its name."""
    from effnet_jax import EfficientNet

    params = nnx.state(EfficientNet.from_name("b0", rngs=nnx.Rngs(0)), nnx.Param)
    flat = {
        "/".join(str(getattr(k, "key", k)) for k in p[:-1]): v
        for p, v in jax.tree_util.tree_leaves_with_path(weight_decay_mask(params, biases=True))
    }
    assert flat["classifier/bias"] and flat["blocks/1/se/reduce/bias"] and flat["blocks/1/se/excite/bias"]
    assert not any(v for k, v in flat.items() if "/bn/" in k)
    assert all(v for k, v in flat.items() if "/bn/" not in k)
    # and make_optimizer uses it for rmsprop only: one step from zero gradients moves a bias by -lr * wd * b
    cfg = dataclasses.replace(BASE, optimizer="rmsprop", weight_decay=0.1, warmup_epochs=0)
    tx = make_optimizer(cfg, steps_per_epoch=1, total_steps=10)
    tree = {"fc": {"bias": jnp.ones(2)}, "bn": {"bias": jnp.ones(2)}}
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, tree), tx.init(tree), tree)
    assert float(jnp.abs(updates["bn"]["bias"]).max()) == 0.0
    assert float(jnp.abs(updates["fc"]["bias"]).max()) > 0.0


@pytest.mark.parametrize("n, expected", [(0, 0.1), (1, 2 / 11), (90, 91 / 100), (10**6, 0.9999)])
def test_ema_warmup_formula(n, expected):
    assert float(ema_decay_at(0.9999, n)) == pytest.approx(expected, rel=1e-6)


def test_ema_update_blends_floats_and_copies_counters():
    ema = {"w": jnp.zeros(3), "count": jnp.asarray(1, jnp.int32)}
    new = {"w": jnp.ones(3), "count": jnp.asarray(7, jnp.int32)}
    out = ema_update(ema, new, 0.9999, 1)  # decay 2/11
    np.testing.assert_allclose(np.asarray(out["w"]), 9 / 11, rtol=RTOL)
    assert int(out["count"]) == 7 and out["count"].dtype == jnp.int32
