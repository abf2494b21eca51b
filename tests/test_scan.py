"""`ModelOptions(scan=True)`: each stage's repeated blocks run as one `jax.lax.scan`, the same function with the
same state updates; the model's tree (and so its checkpoints) is the one of the unscanned model."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _compare import assert_same_step
from flax import nnx

from effnet_jax import EfficientNet, ModelOptions, model_from_state_dict, state_dict_from_model
from effnet_jax.model.options import remat_compiler_options
from effnet_jax.model.scan import scan_runs
from effnet_jax.train import TrainConfig
from effnet_jax.train.step import loss_and_grads
from effnet_spec import STAGES, resolve
from effnet_spec.forward import block_masks

# As tests/test_remat.py: 96 px and 8 images keep the last stage's train-mode BN well conditioned, and b0's first
# four stages: stage 3's blocks 1-2 are one scanned run, beside unscanned stages of one and two blocks.
RES, BATCH = 96, 8
STAGES4 = STAGES[:4]


def _abstract(name: str, scan: bool = True) -> EfficientNet:
    options = ModelOptions(dtype="float32", scan=scan)
    return nnx.eval_shape(lambda: EfficientNet.from_name(name, rngs=nnx.Rngs(0), options=options))


def _stage_runs(spec) -> list[tuple[int, ...]]:
    """What the scan should run: each stage's first block alone (its shapes differ), then the rest as one run."""
    out = []
    for s in sorted({b.stage for b in spec.blocks}):
        idx = [b.index for b in spec.blocks if b.stage == s]
        out += [(idx[0],)] + ([tuple(idx[1:])] if len(idx) > 1 else [])
    return out


@pytest.mark.parametrize("name", ["b0", "b3", "b7", "lite4"])
def test_runs_are_each_stage_after_its_first_block(name):
    model = _abstract(name)
    spec = model.spec
    last = len(spec.blocks) - 1
    for mode in ("train", "eval"):
        getattr(model, mode)()
        runs = scan_runs(model.blocks, block_masks(spec, None), {last})
        assert [tuple(r) for r in runs] == _stage_runs(spec), mode
    assert max(len(r) for r in runs) > 2


def test_runs_end_at_taps_at_mode_changes_and_at_mask_kinds():
    model = _abstract("b7")
    spec = model.spec
    model.train()
    longest = max(_stage_runs(spec), key=len)  # 12 blocks of stage 5
    tap, frozen, masked = longest[3], longest[6], longest[9:]
    model.blocks[frozen].eval()  # a partly frozen model (freeze=...) has blocks in another mode
    masks = block_masks(spec, {i: jnp.ones(2) for i in masked})  # masks for some blocks only
    runs = [tuple(r) for r in scan_runs(model.blocks, masks, {tap, len(spec.blocks) - 1})]
    assert (*longest[:4],) in runs  # ends at the tapped block
    assert (*longest[4:6],) in runs and (frozen,) in runs and (*longest[7:9],) in runs
    assert (*masked,) in runs
    assert [i for r in runs for i in r] == list(range(len(spec.blocks)))


def _scans(model: EfficientNet, x) -> int:
    """How many scans the traced forward holds (top level of its jaxpr)."""
    graphdef, state = nnx.split(model)
    jaxpr = jax.make_jaxpr(lambda s, x: nnx.merge(graphdef, s)(x))(state, x)
    return sum(e.primitive.name == "scan" for e in jaxpr.eqns)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_the_traced_forward_scans_each_repeated_run(mode):
    x = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
    plain, scanned = _abstract("b0", scan=False), _abstract("b0")
    for m in (plain, scanned):
        getattr(m, mode)()
    assert _scans(plain, x) == 0
    assert _scans(scanned, x) == sum(len(r) > 1 for r in _stage_runs(scanned.spec)) == 3


def test_a_bad_mask_gets_the_blocks_own_error():
    """Masks of the wrong shape or type are refused with DropPath's message, never a stacking error."""
    spec = resolve("b0", num_classes=10, stages=STAGES4)
    model = EfficientNet(spec, rngs=nnx.Rngs(0), options=ModelOptions(dtype="float32", scan=True))
    model.train()
    x = jnp.zeros((2, 32, 32, 3))
    repeated = max(_stage_runs(model.spec), key=len)
    forward = nnx.jit(lambda m, x, masks: m(x, drop_path_masks=masks))  # scanned: under a trace
    for bad in ({repeated[0]: jnp.ones(3), repeated[1]: jnp.ones(2)}, {i: [1.0, 1.0] for i in repeated}):
        with pytest.raises(ValueError, match=r"DropPath: expected a keep-mask of shape \(2,\)"):
            forward(model, x, bad)


def test_an_eager_call_runs_the_blocks_one_by_one(monkeypatch):
    """Scan is for compile time; eagerly it would trace and compile every stage's scan on each call."""
    import effnet_jax.model.efficientnet as efficientnet

    spec = resolve("b0", num_classes=10, stages=STAGES4)  # stage 3's blocks 1-2 scan; a short eager call
    model = EfficientNet(spec, rngs=nnx.Rngs(0), options=ModelOptions(dtype="float32", scan=True))
    model.eval()
    calls, real = [], efficientnet.scan_blocks
    monkeypatch.setattr(efficientnet, "scan_blocks", lambda *a: calls.append(1) or real(*a))
    model(jnp.zeros((1, 32, 32, 3)))
    assert not calls
    nnx.jit(lambda m, x: m(x))(model, jnp.zeros((1, 32, 32, 3)))
    assert calls


def _model(scan: bool, remat: str = "none") -> EfficientNet:
    """b0's first four stages with 10 classes and the same weights whatever the options, in train mode."""
    spec = resolve("b0", num_classes=10, stages=STAGES4)
    base = EfficientNet(spec, rngs=nnx.Rngs(0), options=ModelOptions(dtype="float32"))
    options = ModelOptions(dtype="float32", scan=scan, remat=remat)
    m = model_from_state_dict(base.spec, state_dict_from_model(base), options=options, rngs=nnx.Rngs(5))
    m.train()
    return m


def _inputs(spec, *, masks: bool):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((BATCH, RES, RES, 3), dtype=np.float32))
    y = jnp.asarray(rng.integers(0, 10, BATCH))
    if not masks:
        return x, y, None, None
    keep = {b.index: jnp.asarray(rng.random(BATCH) > 0.2, jnp.float32) for b in spec.blocks if b.residual}
    return x, y, keep, jnp.asarray(rng.random((BATCH, spec.head_ch)) > 0.2, jnp.float32)


def _step(model: EfficientNet, masks: bool):
    """Loss, gradients and the state after one train-mode step (BN statistics, RNG counters), differentiated as the
    train step does (`step.loss_and_grads`) and jitted as the loop jits it. Without `masks` drop-path and dropout
    draw from the model's streams."""
    x, y, keep, dmask = _inputs(model.spec, masks=masks)
    graphdef, state = nnx.split(model)

    def run(state):
        m = nnx.merge(graphdef, state)
        batch = {"image": x, "label": y}
        loss, _, grads = loss_and_grads(m, batch, drop_path_masks=keep, dropout_mask=dmask)
        return loss, grads, nnx.state(m, nnx.Not(nnx.Param))

    return jax.jit(run, compiler_options=remat_compiler_options(model.blocks[0].remat))(state)


@functools.cache
def _reference(masks: bool):
    return _step(_model(False), masks)


@pytest.mark.parametrize(
    "masks, remat", [(True, "none"), (False, "none"), (False, "dots")], ids=["given-masks", "drawn", "drawn-remat"]
)
def test_scan_gives_the_same_loss_gradients_and_state(masks, remat):
    """Drawn: the scanned blocks draw drop-path from their own streams with their own rates (as data), so the draws,
    the RNG counters and everything downstream are the unscanned model's. Remat composes with the scan."""
    reference, scanned = _reference(masks), _step(_model(True, remat), masks)
    assert jax.tree.structure(reference[2]) == jax.tree.structure(scanned[2])
    assert_same_step(reference, scanned)


def test_scanned_eval_features_and_intermediates_are_the_blocks():
    plain, scanned = _model(False), _model(True)
    x = _inputs(plain.spec, masks=False)[0]

    @nnx.jit
    def run(m):
        return m.forward_intermediates(x), m(x)

    for m in (plain, scanned):
        m.eval()
    (f0, y0), (f1, y1) = run(plain), run(scanned)
    assert len(f0) == len(f1) == 4  # strides 2, 4, 8, 16
    for a, b in zip([*f0, y0], [*f1, y1]):  # eval mode: one block body rounds as the unrolled one does
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-5)


def test_scan_leaves_the_weights_layout_alone():
    """Stacking happens inside the traced forward: the model's tree, its state_dict and so its checkpoints and
    optimizer state are the unscanned model's."""
    plain, scanned = _model(False), _model(True)
    assert nnx.graphdef(plain) != nnx.graphdef(scanned)  # the options differ...
    s0, s1 = state_dict_from_model(plain), state_dict_from_model(scanned)
    assert list(s0) == list(s1)  # ...the tensors do not
    assert all(np.array_equal(s0[k], s1[k]) for k in s0)
    assert jax.tree.structure(nnx.state(plain)) == jax.tree.structure(nnx.state(scanned))


def test_scan_is_a_training_setting_and_a_checked_option():
    assert TrainConfig(scan=True).scan is True
    with pytest.raises(ValueError, match="scan must be True or False"):
        ModelOptions(scan="yes")
