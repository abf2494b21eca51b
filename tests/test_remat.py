"""`ModelOptions(remat=...)`: recomputing each block in the backward pass changes memory, not the numbers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from effnet_jax import EfficientNet, ModelOptions, model_from_state_dict, state_dict_from_model
from effnet_jax.model.options import remat_compiler_options
from effnet_jax.train import TrainConfig

# 96 px and 8 images: BN batch statistics over >= 72 values per channel in the last stage, so float32 rounding
# is not amplified by near-singular normalisations (at 64 px / 4 images it is, for any formulation change).
RES, BATCH = 96, 8


def _model(remat: str) -> EfficientNet:
    """b0 with 10 classes, the same weights for every `remat`, in train mode."""
    base = EfficientNet.from_name("b0", num_classes=10, rngs=nnx.Rngs(0), options=ModelOptions(dtype="float32"))
    options = ModelOptions(dtype="float32", remat=remat)
    m = model_from_state_dict(base.spec, state_dict_from_model(base), options=options)
    m.train()
    return m


def _step(model: EfficientNet, x, y, masks, dropout_mask):
    """One loss + gradient in train mode (BN batch statistics, given drop-path and dropout masks)."""

    def loss_fn(m):
        logits = m(x, drop_path_masks=masks, dropout_mask=dropout_mask)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state):
        m = nnx.merge(graphdef, state)
        loss, grads = nnx.value_and_grad(loss_fn)(m)
        return loss, grads, nnx.state(m, nnx.BatchStat)

    return run(state)


def _inputs(spec):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((BATCH, RES, RES, 3), dtype=np.float32))
    y = jnp.asarray(rng.integers(0, 10, BATCH))
    masks = {b.index: jnp.asarray(rng.random(BATCH) > 0.2, jnp.float32) for b in spec.blocks if b.residual}
    return x, y, masks, jnp.asarray(rng.random((BATCH, spec.head_ch)) > 0.2, jnp.float32)


def _distance(grads0, grads1) -> tuple[float, float]:
    """(|g1 - g0| / |g0| over the whole gradient, worst element difference / largest gradient element)."""
    leaves0, leaves1 = jax.tree.leaves(grads0), jax.tree.leaves(grads1)
    assert len(leaves0) == len(leaves1) > 200
    sq = sum(float(jnp.sum((a - b) ** 2)) for a, b in zip(leaves0, leaves1))
    norm = sum(float(jnp.sum(a**2)) for a in leaves0)
    worst = max(float(jnp.abs(a - b).max()) for a, b in zip(leaves0, leaves1))
    return (sq / norm) ** 0.5, worst / max(float(jnp.abs(a).max()) for a in leaves0)


@pytest.mark.parametrize("remat", ["block", "dots"])
def test_remat_gives_the_same_loss_gradients_and_bn_statistics(remat):
    plain, remade = _model("none"), _model(remat)
    args = _inputs(plain.spec)
    loss0, grads0, stats0 = _step(plain, *args)
    loss1, grads1, stats1 = _step(remade, *args)
    assert jax.tree.structure(grads0) == jax.tree.structure(grads1)
    # The recomputed forward is the same ops on the same inputs; XLA fuses the backward pass differently, so float32
    # rounding differs and 16 blocks of train-mode BN amplify it: measured ~8e-6 of the gradient's norm, the same as
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

        def loss_fn(m):
            return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()

        graphdef, state = nnx.split(model)
        return jax.jit(lambda s: nnx.value_and_grad(loss_fn)(nnx.merge(graphdef, s)))(state)

    (loss0, g0), (loss1, g1) = grads("none"), grads("block")
    assert float(loss0) == pytest.approx(float(loss1), rel=1e-6)
    rel_norm, rel_worst = _distance(g0, g1)
    assert rel_norm <= 3e-5 and rel_worst <= 3e-5, (rel_norm, rel_worst)


def test_remat_lowers_the_train_step_temporaries():
    """Less activation memory is the point: XLA's own count of the step's temporary bytes must drop."""

    def temp_bytes(remat):
        model = _model(remat)
        graphdef, state = nnx.split(model)
        x, y, masks, dmask = _inputs(model.spec)

        def step(state):
            m = nnx.merge(graphdef, state)
            return nnx.value_and_grad(lambda m: optax.softmax_cross_entropy_with_integer_labels(
                m(x, drop_path_masks=masks, dropout_mask=dmask), y).mean())(m)  # fmt: skip

        jitted = jax.jit(step, compiler_options=remat_compiler_options(remat))
        return jitted.lower(state).compile().memory_analysis().temp_size_in_bytes

    none, block, dots = temp_bytes("none"), temp_bytes("block"), temp_bytes("dots")
    # Measured at this size: block 0.31x, dots 0.32x of none; without the compiler options XLA CPU merges the
    # recomputation back into the forward pass and both are 1.00x.
    assert block < 0.5 * none and dots < 0.5 * none, (none, block, dots)


def test_without_the_compiler_options_xla_cpu_undoes_remat():
    """Why `remat_compiler_options` exists: if XLA CPU ever keeps the barriers itself, it can go."""
    if jax.default_backend() != "cpu":
        pytest.skip("an XLA CPU behaviour")
    model = _model("block")
    graphdef, state = nnx.split(model)
    x, y, masks, dmask = _inputs(model.spec)

    def step(state):
        m = nnx.merge(graphdef, state)
        return nnx.value_and_grad(lambda m: optax.softmax_cross_entropy_with_integer_labels(
            m(x, drop_path_masks=masks, dropout_mask=dmask), y).mean())(m)  # fmt: skip

    lowered = jax.jit(step).lower(state)
    plain = lowered.compile().memory_analysis().temp_size_in_bytes
    kept = lowered.compile(compiler_options=remat_compiler_options("block")).memory_analysis().temp_size_in_bytes
    assert kept < 0.5 * plain, (plain, kept)


def test_remat_is_a_training_setting_and_a_checked_option():
    assert TrainConfig(remat="block").remat == "block"
    with pytest.raises(ValueError, match="remat must be one of"):
        TrainConfig(remat="all")
    with pytest.raises(ValueError, match="remat must be one of"):
        ModelOptions(remat="everything")
    assert remat_compiler_options("none") == {}
