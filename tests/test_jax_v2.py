"""EfficientNetV2 in the NNX twin: Fused-MBConv blocks built from the spec, holding exactly the contract's tensors,
computing what the block is defined to compute, scanned and rematerialised as V1's blocks are; and a V2 variant
named in a training config building V2's own stage table."""

from __future__ import annotations

import functools
from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _compare import assert_same_step
from flax import nnx

from effnet_jax import EfficientNet, FusedMBConv, MBConv, ModelOptions, model_from_state_dict, state_dict_from_model
from effnet_jax.model.options import remat_compiler_options
from effnet_jax.model.scan import scan_runs
from effnet_jax.train import TrainConfig
from effnet_jax.train.config import from_preset
from effnet_jax.train.modeling import build_model, config_spec
from effnet_jax.train.step import loss_and_grads
from effnet_spec import VARIANTS, resolve, stages_for
from effnet_spec.forward import block_masks

V2 = [v for v in VARIANTS if VARIANTS[v].family.startswith("v2")]


def _abstract(spec, **options) -> EfficientNet:
    return nnx.eval_shape(lambda: EfficientNet(spec, rngs=nnx.Rngs(0), options=ModelOptions(**options)))


# --- the contract -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["v2_b0", "v2_s"])
def test_each_block_is_the_class_of_its_kind(name):
    """Every block is built as its spec's kind. That each V2 variant (M/L/XL too) holds exactly the contract's tensors
    is tests/test_contract.py's, for both twins."""
    spec = resolve(name)
    kinds = [type(b) for b in _abstract(spec).blocks]
    assert kinds == [FusedMBConv if b.fused else MBConv for b in spec.blocks]
    assert FusedMBConv in kinds and MBConv in kinds


def test_fused_blocks_have_no_depthwise_no_se_and_project_only_when_they_expand():
    model = _abstract(resolve("v2_s"))
    for block, b in zip(model.blocks, model.spec.blocks):
        if not b.fused:
            continue
        assert not hasattr(block, "depthwise") and not hasattr(block, "se") and not hasattr(block, "expand")
        assert hasattr(block, "project") == (b.mid_ch != b.in_ch) == (b.mid_ch > b.in_ch)
        assert hasattr(block, "drop_path") == b.residual


# --- what a fused block computes ------------------------------------------------------------------------------------


def _random_bn(sd: dict, seed: int) -> dict:
    """Running statistics, scale and shift away from their init values, so eval-mode BN is not the identity."""
    rng = np.random.default_rng(seed)
    out = dict(sd)
    for k, v in sd.items():
        if k.endswith(("bn.running_mean", "bn.bias")):
            out[k] = rng.normal(0, 0.5, v.shape).astype(np.float32)
        elif k.endswith(("bn.running_var", "bn.weight")):
            out[k] = rng.uniform(0.5, 2.0, v.shape).astype(np.float32)
    return out


def _conv_bn(x, sd, name, stride, padding, eps, act):
    """conv (OIHW weights from the state_dict) -> BN with running statistics -> optional SiLU, written out in jnp."""
    w = jnp.asarray(sd[f"{name}.conv.weight"]).transpose(2, 3, 1, 0)  # OIHW -> HWIO
    k = w.shape[0]
    pads = "SAME" if padding == "tf_same" else [(k // 2, k // 2)] * 2  # lax's SAME is TF's SAME
    y = jax.lax.conv_general_dilated(
        x, w, (stride, stride), pads, dimension_numbers=("NHWC", "HWIO", "NHWC"), precision="highest"
    )
    mean, var = sd[f"{name}.bn.running_mean"], sd[f"{name}.bn.running_var"]
    y = (y - mean) / jnp.sqrt(var + eps) * sd[f"{name}.bn.weight"] + sd[f"{name}.bn.bias"]
    return y * jax.nn.sigmoid(y) if act else y


def _fused_reference(x, sd, b, padding, eps):
    """Fused-MBConv by its definition (Tan & Le 2021, Figure 2; torchvision's FusedMBConv) in eval mode."""
    pre = f"blocks.{b.index}"
    if b.mid_ch != b.in_ch:  # expand: kxk conv + BN + act to mid, then 1x1 project + BN, no act
        y = _conv_bn(x, sd, f"{pre}.fused", b.stride, padding, eps, act=True)
        y = _conv_bn(y, sd, f"{pre}.project", 1, padding, eps, act=False)
    else:  # expand 1: the kxk conv + BN + act is the whole branch
        y = _conv_bn(x, sd, f"{pre}.fused", b.stride, padding, eps, act=True)
    return x + y if b.residual else y


@functools.cache
def _weights(name: str, stages: int) -> dict:
    """A small model's state_dict with random BN statistics; the same tensors whatever the conventions."""
    spec = resolve(name, num_classes=0, stages=stages_for(name)[:stages])
    built = EfficientNet(spec, rngs=nnx.Rngs(0), options=ModelOptions(dtype="float32"))
    return _random_bn(state_dict_from_model(built), seed=stages)


@pytest.mark.parametrize("source", ["torchvision", "timm_tf"])  # symmetric and TF SAME padding
@pytest.mark.parametrize(
    "name, stages, index",
    [
        ("v2_b0", 2, 0),  # expand 1, 32 -> 16: no residual
        ("v2_s", 1, 1),  # expand 1, 24 -> 24: residual
        ("v2_b0", 2, 1),  # expand 4, stride 2: no residual
        ("v2_b0", 2, 2),  # expand 4, stride 1: residual
    ],
)
def test_fused_block_computes_its_definition(name, stages, index, source):
    spec = resolve(name, num_classes=0, stages=stages_for(name)[:stages], weight_source=source)
    b = spec.blocks[index]
    assert b.fused
    sd = _weights(name, stages)
    model = model_from_state_dict(spec, sd, options=ModelOptions(dtype="float32"))
    back = state_dict_from_model(model)  # lossless both ways, fused and project tensors included
    assert list(back) == list(sd) and all(np.array_equal(back[k], sd[k]) for k in sd)
    assert any(".fused.conv." in k for k in sd) and any(".project.bn." in k for k in sd) == (stages > 1)
    model.eval()
    # 15 px: odd, so TF SAME pads a stride-2 conv unevenly (0 before, 1 after) where symmetric pads 1 and 1
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 15, 15, b.in_ch), dtype=np.float32))
    got = model.blocks[index](x)
    want = _fused_reference(x, sd, b, spec.conv.padding, spec.conv.bn_eps)
    assert got.shape == want.shape
    # The same float32 convolutions and BN, associated differently (BN as one multiply-add with rsqrt, a 1x1 conv as
    # a matmul): values of order 1-10 agree to a few float32 ulps. A wrong pad, stride, eps or a missing act or
    # residual moves them by O(0.1) or more.
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-5, atol=2e-5)


# --- scan and remat ----------------------------------------------------------------------------------------------

# V2-M's first two stages, three blocks each (its table has 3 and 5; the compile time is per block): Fused-MBConv
# expand 1 (blocks 1-2 a scanned run with residuals), then expand 4 (block 3 strides, blocks 4-5 a scanned run).
# 32 px and 8 images keep stage 2's train-mode BN at 8x8x8 values per channel, well conditioned as in test_scan.py.
RES, BATCH = 32, 8
SMALL = dict(num_classes=10, stages=tuple(replace(row, repeats=3) for row in stages_for("v2_m")[:2]))


def _stage_runs(spec) -> list[tuple[int, ...]]:
    """Each stage's first block alone (its shapes differ), then the rest as one run."""
    out = []
    for s in sorted({b.stage for b in spec.blocks}):
        idx = [b.index for b in spec.blocks if b.stage == s]
        out += [(idx[0],)] + ([tuple(idx[1:])] if len(idx) > 1 else [])
    return out


@pytest.mark.parametrize("name", ["v2_s", "v2_b3"])
def test_scan_runs_each_stage_after_its_first_block_fused_or_not(name):
    model = _abstract(resolve(name), scan=True)
    spec = model.spec
    model.train()
    runs = scan_runs(model.blocks, block_masks(spec, None), {len(spec.blocks) - 1})
    assert [tuple(r) for r in runs] == _stage_runs(spec)
    fused_runs = [r for r in runs if len(r) > 1 and spec.blocks[r[0]].fused]
    assert fused_runs and all(spec.blocks[i].fused for r in runs for i in r if spec.blocks[r[0]].fused)


def _model(scan: bool = False, remat: str = "none") -> EfficientNet:
    """The small V2 model with the same weights whatever the options, in train mode."""
    spec = resolve("v2_m", **SMALL)
    base = EfficientNet(spec, rngs=nnx.Rngs(0), options=ModelOptions(dtype="float32"))
    options = ModelOptions(dtype="float32", scan=scan, remat=remat)
    m = model_from_state_dict(spec, state_dict_from_model(base), options=options, rngs=nnx.Rngs(5))
    m.train()
    return m


def _inputs(spec):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((BATCH, RES, RES, 3), dtype=np.float32))
    y = jnp.asarray(rng.integers(0, 10, BATCH))
    return x, y


def _step(model: EfficientNet):
    """Loss, gradients and the state after one train-mode step, differentiated and jitted as the train loop does;
    drop-path and dropout draw from the model's own streams."""
    x, y = _inputs(model.spec)
    graphdef, state = nnx.split(model)

    def run(state):
        m = nnx.merge(graphdef, state)
        loss, _, grads = loss_and_grads(m, {"image": x, "label": y})
        return loss, grads, nnx.state(m, nnx.Not(nnx.Param))

    return jax.jit(run, compiler_options=remat_compiler_options(model.blocks[0].remat))(state)


def test_scan_and_remat_give_the_plain_models_loss_gradients_and_state():
    """Both at once (each is tested alone on V1 by tests/test_scan.py and tests/test_remat.py; one compile here): the
    scanned fused runs draw drop-path from their own streams at their own rates, and remat replays the draws."""
    model = _model(scan=True, remat="block")
    x = jax.ShapeDtypeStruct((BATCH, RES, RES, 3), jnp.float32)
    graphdef, state = nnx.split(model)
    jaxpr = jax.make_jaxpr(lambda s, x: nnx.merge(graphdef, s)(x))(state, x)
    assert sum(e.primitive.name == "scan" for e in jaxpr.eqns) == 2  # blocks 1-2 and 4-5
    assert_same_step(_step(_model()), _step(model))


def test_features_and_intermediates_of_a_scanned_v2_model():
    plain, scanned = _model(), _model(scan=True)
    x = _inputs(plain.spec)[0]

    @nnx.jit
    def run(m):
        return m.forward_intermediates(x), m.forward_features(x)

    for m in (plain, scanned):
        m.eval()
    (f0, y0), (f1, y1) = run(plain), run(scanned)
    assert [f.shape for f in f0] == [(BATCH, 16, 16, 24), (BATCH, 8, 8, 48)]  # strides 2 and 4
    assert y0.shape == (BATCH, 8, 8, plain.spec.head_ch)
    for a, b in zip([*f0, y0], [*f1, y1]):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-5)


# --- training configs --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["v2_s", "v2_b0", "b0"])
def test_a_training_config_builds_its_variants_own_stage_table(name):
    spec = config_spec(TrainConfig(variant=name))
    assert spec.stages == stages_for(name) and spec.blocks == resolve(name).blocks
    cut = config_spec(TrainConfig(variant=name, stages=3))
    assert cut.stages == stages_for(name)[:3]
    assert cut.blocks == resolve(name, stages=stages_for(name)[:3]).blocks


def test_a_v2_preset_builds_v2():
    """`--preset v2_s` (the per-variant ImageNet preset, V1's recipe until V2's own lands) builds V2-S."""
    cfg = from_preset("v2_s", ["stages=2"])
    model = nnx.eval_shape(lambda: build_model(cfg, num_classes=10))
    assert model.spec.stages == stages_for("v2_s")[:2]
    assert [b.block for b in model.spec.blocks] == ["fused"] * len(model.spec.blocks)
    assert type(model.blocks[-1]) is FusedMBConv


def test_stage_limits_follow_the_variants_table():
    assert len(stages_for("v2_s")) == 6 and len(stages_for("v2_m")) == 7
    TrainConfig(variant="v2_m", stages=7)
    TrainConfig(variant="v2_s", stages=6)
    with pytest.raises(ValueError, match=r"stages must lie in 0\.\.6 \(v2_s has 6 stages\); got 7"):
        TrainConfig(variant="v2_s", stages=7)
    with pytest.raises(ValueError, match=r"freeze=stages:7: the model has 6 stages; K must lie in 0\.\.6"):
        TrainConfig(variant="v2_b0", init="weights.safetensors", freeze="stages:7")
    TrainConfig(variant="v2_m", init="weights.safetensors", freeze="stages:7")
    TrainConfig(variant="", init="weights.safetensors", freeze="stages:7")  # the init weights' count decides later


def test_freeze_stages_fixes_the_fused_stages_of_a_v2_model():
    """`freeze=stages:K` is read off the contract: a fused block's modules (fused, project) freeze with its stage."""
    from effnet_jax.model.layers import BatchNorm
    from effnet_jax.train.freeze import apply_freeze, frozen_modules

    spec = resolve("v2_b0", num_classes=10)
    model = _abstract(spec)
    model.train()
    apply_freeze(model, "stages:3")  # the three fused stages
    for block, b in zip(model.blocks, spec.blocks):
        flags = {n.use_running_average for _, n in nnx.iter_graph(block) if isinstance(n, BatchNorm)}
        assert flags == {b.fused}, b.index
    parts = lambda b: ("fused", "project") if b.mid_ch != b.in_ch else ("fused",)  # noqa: E731
    want = {f"blocks.{b.index}.{p}.{k}" for b in spec.blocks if b.fused for p in parts(b) for k in ("conv", "bn")}
    got = {m.name for m in frozen_modules(spec, "stages:3") if m.block is not None}
    assert got == want
