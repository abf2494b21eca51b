"""`ModelOptions(remat=...)`: recomputing each block in the backward pass changes memory, not the numbers."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from effnet_jax import EfficientNet, ModelOptions, model_from_state_dict, state_dict_from_model
from effnet_jax.model.options import remat_compiler_options
from effnet_jax.train import TrainConfig
from effnet_jax.train.step import loss_and_grads, standalone_step
from effnet_spec import STAGES, resolve

# 96 px and 8 images: BN batch statistics over >= 72 values per channel in the last stage, so float32 rounding
# is not amplified by near-singular normalisations (at 64 px / 4 images it is, for any formulation change).
RES, BATCH = 96, 8
# b0's first four stages: both block kinds (expand 1 and 6), both kernels, residual blocks with drop-path; remat
# wraps each block alike, so the whole network adds compile time, not a case.
STAGES4 = STAGES[:4]


def _model(remat: str) -> EfficientNet:
    """b0's first four stages with 10 classes, the same weights for every `remat`, in train mode."""
    spec = resolve("b0", num_classes=10, stages=STAGES4)
    base = EfficientNet(spec, rngs=nnx.Rngs(0), options=ModelOptions(dtype="float32"))
    options = ModelOptions(dtype="float32", remat=remat)
    m = model_from_state_dict(base.spec, state_dict_from_model(base), options=options)
    m.train()
    return m


def _step(model: EfficientNet, x, y, masks, dropout_mask):
    """One loss + gradient in train mode (BN batch statistics, given drop-path and dropout masks) as the train step
    differentiates it (`step.loss_and_grads`), jitted as the loop jits it (with `remat_compiler_options`)."""
    graphdef, state = nnx.split(model)

    def run(state):
        m = nnx.merge(graphdef, state)
        batch = {"image": x, "label": y}
        loss, _, grads = loss_and_grads(m, batch, drop_path_masks=masks, dropout_mask=dropout_mask)
        return loss, grads, nnx.state(m, nnx.BatchStat)

    return jax.jit(run, compiler_options=remat_compiler_options(model.blocks[0].remat))(state)


@functools.cache
def _reference():
    """The no-remat step, computed once for the parametrized comparisons."""
    plain = _model("none")
    return _step(plain, *_inputs(plain.spec))


def _inputs(spec):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((BATCH, RES, RES, 3), dtype=np.float32))
    y = jnp.asarray(rng.integers(0, 10, BATCH))
    masks = {b.index: jnp.asarray(rng.random(BATCH) > 0.2, jnp.float32) for b in spec.blocks if b.residual}
    return x, y, masks, jnp.asarray(rng.random((BATCH, spec.head_ch)) > 0.2, jnp.float32)


def _distance(grads0, grads1) -> tuple[float, float]:
    """(|g1 - g0| / |g0| over the whole gradient, worst element difference / largest gradient element)."""
    leaves0, leaves1 = jax.tree.leaves(grads0), jax.tree.leaves(grads1)
    assert len(leaves0) == len(leaves1) > 80
    sq = sum(float(jnp.sum((a - b) ** 2)) for a, b in zip(leaves0, leaves1))
    norm = sum(float(jnp.sum(a**2)) for a in leaves0)
    worst = max(float(jnp.abs(a - b).max()) for a, b in zip(leaves0, leaves1))
    return (sq / norm) ** 0.5, worst / max(float(jnp.abs(a).max()) for a in leaves0)


@pytest.mark.parametrize("remat", ["block", "dots"])
def test_remat_gives_the_same_loss_gradients_and_bn_statistics(remat):
    remade = _model(remat)
    loss0, grads0, stats0 = _reference()
    loss1, grads1, stats1 = _step(remade, *_inputs(remade.spec))
    assert jax.tree.structure(grads0) == jax.tree.structure(grads1)
    # The recomputed forward is the same ops on the same inputs; XLA fuses the backward pass differently, so float32
    # rounding differs and train-mode BN amplifies it: measured ~8e-6 of the gradient's norm, the same as
    # switching the depthwise conv between two exact formulations (grouped vs shift). A wrong or missing term (a
    # resampled mask, a stale BN statistic) moves the gradient by O(1); 3e-5 leaves room for rounding alone.
    assert float(loss0) == pytest.approx(float(loss1), rel=1e-6)
    rel_norm, rel_worst = _distance(grads0, grads1)
    assert rel_norm <= 3e-5 and rel_worst <= 3e-5, (rel_norm, rel_worst)
    for a, b in zip(jax.tree.leaves(stats0), jax.tree.leaves(stats1)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


def test_remat_replays_the_drawn_drop_path_and_dropout():
    """Without explicit masks the model draws them from its Rngs; the recomputation must reuse the same draws."""

    def grads(remat):
        model = _model(remat)
        x, y, _, _ = _inputs(model.spec)
        graphdef, state = nnx.split(model)

        def run(state):
            loss, _, grads = loss_and_grads(nnx.merge(graphdef, state), {"image": x, "label": y})
            return loss, grads

        return jax.jit(run, compiler_options=remat_compiler_options(remat))(state)

    (loss0, g0), (loss1, g1) = grads("none"), grads("block")
    assert float(loss0) == pytest.approx(float(loss1), rel=1e-6)
    rel_norm, rel_worst = _distance(g0, g1)
    assert rel_norm <= 3e-5 and rel_worst <= 3e-5, (rel_norm, rel_worst)


def test_remat_lowers_the_train_step_temporaries_given_its_compiler_options():
    """Less activation memory is the point: XLA's own count of the temporary bytes of the step `effnet train` runs
    must drop. Without `remat_compiler_options`, XLA CPU merges the recomputation back into the forward pass and
    nothing is saved: the reason the options exist (if XLA CPU ever keeps the barriers itself, they can go)."""
    # b0's first three stages at 32 px: five blocks of both kinds are enough for the saving (measured 0.39x, 4 stages
    # at 96 px 0.40x) at two thirds of the compile time (three compiles of the whole train step).
    rng = np.random.default_rng(0)
    batch = {"image": jnp.asarray(rng.standard_normal((BATCH, 32, 32, 3), np.float32)),
             "label": jnp.asarray(rng.integers(0, 10, BATCH))}  # fmt: skip

    def temp(remat, **kw):
        cfg = TrainConfig(variant="b0", stages=3, resolution=32, global_batch=BATCH, dtype="float32", remat=remat,
                          steps=1)  # fmt: skip
        step = standalone_step(cfg, 10, **kw)
        return step.lower(batch).compile().memory_analysis().temp_size_in_bytes

    none_b, block_b = temp("none"), temp("block")
    # benchmarks/remat.py measures the native sizes.
    assert block_b < 0.5 * none_b, (none_b, block_b)
    if jax.default_backend() == "cpu":
        undone = temp("block", compiler_options={})  # the same step compiled without the options
        assert undone > 0.9 * none_b, (none_b, undone)


def test_remat_is_a_training_setting_and_a_checked_option():
    assert TrainConfig(remat="block").remat == "block"
    with pytest.raises(ValueError, match="remat must be one of"):
        TrainConfig(remat="all")
    with pytest.raises(ValueError, match="remat must be one of"):
        ModelOptions(remat="everything")
    assert remat_compiler_options("none") == {}
