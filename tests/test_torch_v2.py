"""The PyTorch twin's EfficientNetV2 (issue 27) without the external libraries: every V2 variant's module tree is
its contract, a Fused-MBConv block is what torchvision and timm build, the model runs (features, intermediates,
keep-masks, TF SAME padding), and V2 checkpoints import, export and refuse as the layouts say. The real libraries'
side lives in parity_tests/external/test_import_parity_v2.py."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from effnet_spec import VARIANTS, count_params, resolve, stages_for
from effnet_spec.contract import shapes, tensors
from effnet_torch import EfficientNet, FusedMBConv, MBConv, load_checkpoint, load_state_dict_checked, save_checkpoint
from effnet_torch.importers import (
    ImportError_,
    ImportMismatchError,
    export_state_dict,
    import_state_dict,
    parse_model_name,
    source_keys,
    source_preprocessing,
)
from effnet_torch.sources import get as get_source
from effnet_torch.sources.base import ModelName, named

V2 = [v for v in VARIANTS if v.startswith("v2_")]
# The issue's counts (1000 classes; torchvision's weight meta and timm's models agree).
PARAMS = {"v2_s": 21_458_488, "v2_m": 54_139_356, "v2_l": 118_515_272, "v2_xl": 208_119_808,
          "v2_b0": 7_139_704, "v2_b1": 8_141_052, "v2_b2": 10_096_086, "v2_b3": 14_358_406}  # fmt: skip


def meta_model(name, **kwargs) -> EfficientNet:
    """No storage: structure and counting only, instant even for XL."""
    with torch.device("meta"):
        return EfficientNet.from_name(name, **kwargs)


@pytest.fixture(scope="module")
def small():
    """V2-S's first four stages (three fused, one MBConv): every block kind at a CPU-friendly size."""
    torch.manual_seed(0)
    return EfficientNet(resolve("v2_s", num_classes=10, stages=stages_for("v2_s")[:4])).eval()


@pytest.mark.parametrize("variant", V2)
def test_state_dict_is_the_contract_and_counts_are_the_issues(variant):
    spec = resolve(variant)
    model = meta_model(variant)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert list(got) == [t.name for t in tensors(spec)], "same keys, in the contract's (forward) order"
    assert got == shapes(spec)
    assert sum(p.numel() for p in model.parameters()) == count_params(spec) == PARAMS[variant]


@pytest.mark.parametrize("variant", ["v2_s", "v2_b3"])
def test_each_block_is_built_as_its_kind(variant):
    spec = resolve(variant)
    model = meta_model(variant)
    for b, block in zip(spec.blocks, model.blocks):
        assert type(block) is (FusedMBConv if b.fused else MBConv), b.index
        assert hasattr(block, "drop_path") == b.residual
        if not b.fused:
            continue
        assert not hasattr(block, "se") and not hasattr(block, "depthwise") and not hasattr(block, "expand")
        conv = block.fused.conv
        assert conv.kernel_size == (b.kernel, b.kernel) and conv.stride == (b.stride, b.stride) and conv.groups == 1
        assert type(block.fused.act) is nn.SiLU, "the kxk conv is followed by BN + SiLU"
        if b.has_expand:  # kxk expand to mid, then a linear 1x1 project
            assert (conv.in_channels, conv.out_channels) == (b.in_ch, b.mid_ch)
            assert block.project.conv.kernel_size == (1, 1) and isinstance(block.project.act, nn.Identity)
        else:  # one kxk conv straight to the block's output
            assert (conv.in_channels, conv.out_channels) == (b.in_ch, b.out_ch) and not hasattr(block, "project")
    # V2-S's first stage: two fused expand-1 blocks, the first one residual too (stem 24 == stage 24, stride 1)
    if variant == "v2_s":
        assert [b.residual for b in spec.blocks[:3]] == [True, True, False]


def test_bn_constants_follow_the_weight_source():
    tv = meta_model("v2_s", weight_source="torchvision").blocks[0].fused.bn
    assert (tv.eps, tv.momentum) == (1e-3, pytest.approx(0.1))  # torchvision V2: eps 1e-3, PyTorch's momentum
    tf = meta_model("v2_b0", weight_source="timm_tf")
    assert (tf.blocks[1].project.bn.eps, tf.blocks[1].project.bn.momentum) == (1e-3, pytest.approx(0.01))
    assert tf.blocks[0].fused.padding == "tf_same"


def test_forward_features_and_intermediates(small):
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits, feats, inter = small(x), small.forward_features(x), small.forward_intermediates(x)
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    assert feats.shape == (2, small.spec.head_ch, 4, 4)
    assert [f.shape[-1] for f in inter] == [64 // f.reduction for f in small.spec.feature_info]
    assert [f.shape[1] for f in inter] == [f.channels for f in small.spec.feature_info]


def test_fused_block_residual_honours_drop_path_mask(small):
    b = small.spec.blocks[1]  # V2-S's second fused expand-1 block: stride 1, 24 -> 24, residual
    assert b.fused and b.residual and b.drop_path > 0
    block = small.blocks[1].train()
    x = torch.randn(3, b.in_ch, 16, 16)
    with torch.no_grad():
        branch = block.fused(x)
        y = block(x, torch.tensor([1.0, 0.0, 1.0]))
    torch.testing.assert_close(y[1], x[1])  # a dropped sample is its input
    torch.testing.assert_close(y[0], x[0] + branch[0] / (1 - b.drop_path), rtol=1e-5, atol=1e-5)
    block.eval()


def test_expanding_fused_block_is_conv_then_linear_project(small):
    block, b = small.blocks[2], small.spec.blocks[2]  # V2-S stage 2's first block: fused 4x, stride 2, no residual
    assert b.fused and b.has_expand and not b.residual
    x = torch.randn(2, b.in_ch, 16, 16)
    with torch.no_grad():
        want = block.project.bn(block.project.conv(torch.nn.functional.silu(block.fused.bn(block.fused.conv(x)))))
        torch.testing.assert_close(block(x), want)
    assert block(x).shape == (2, b.out_ch, 8, 8)


@pytest.mark.parametrize("hw", [(65, 65), (64, 50)])
def test_tf_same_v2_runs_at_any_size(hw):
    torch.manual_seed(1)
    model = EfficientNet(resolve("v2_b0", num_classes=5, weight_source="timm_tf", stages=stages_for("v2_b0")[:4]))
    with torch.no_grad():
        out = model.eval()(torch.randn(1, 3, *hw))
    assert out.shape == (1, 5) and torch.isfinite(out).all()


def test_v2_checkpoint_round_trip(small, tmp_path):
    path = tmp_path / "v2.safetensors"
    save_checkpoint(small, path)
    loaded = load_checkpoint(path)
    assert loaded.spec == small.spec and type(loaded.blocks[0]) is FusedMBConv
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), small(x), rtol=0, atol=0)


# --- importers and exporters ------------------------------------------------------------------------------------


def test_layout_names_follow_each_library():
    spec = resolve("v2_s")
    tv, timm = source_keys(spec, "torchvision"), source_keys(spec, "timm")
    # torchvision: every block a Sequential; a fused block's kxk conv is .0, its project .1
    assert tv["blocks.0.fused.conv.weight"] == "features.1.0.block.0.0.weight"
    assert tv["blocks.2.fused.bn.running_var"] == "features.2.0.block.0.1.running_var"
    assert tv["blocks.2.project.conv.weight"] == "features.2.0.block.1.0.weight"
    assert tv["blocks.10.se.reduce.weight"] == "features.4.0.block.2.fc1.weight"  # MBConv: expand, dw, se, project
    assert tv["head.conv.weight"] == "features.7.0.weight" and tv["classifier.weight"] == "classifier.1.weight"
    # timm: ConvBnAct (conv, bn1) without expansion, EdgeResidual (conv_exp, bn1, conv_pwl, bn2) with it
    assert timm["blocks.1.fused.conv.weight"] == "blocks.0.1.conv.weight"
    assert timm["blocks.1.fused.bn.bias"] == "blocks.0.1.bn1.bias"
    assert timm["blocks.2.fused.conv.weight"] == "blocks.1.0.conv_exp.weight"
    assert timm["blocks.2.project.conv.weight"] == "blocks.1.0.conv_pwl.weight"
    assert timm["blocks.2.project.bn.weight"] == "blocks.1.0.bn2.weight"
    assert timm["blocks.10.expand.conv.weight"] == "blocks.3.0.conv_pw.weight"
    assert timm["blocks.10.se.excite.bias"] == "blocks.3.0.se.conv_expand.bias"


@pytest.mark.parametrize("weight_source", ["torchvision", "timm"])
def test_v2_key_maps_are_bijections(weight_source):
    # (test_importers.py infers every variant, V2's included, from its shapes in each layout)
    for variant in V2:
        kmap = source_keys(resolve(variant), weight_source)
        assert len(set(kmap.values())) == len(kmap), f"{weight_source} {variant}: two twin keys map to one name"


@pytest.mark.parametrize("variant, weight_source, model, conv", [
    ("v2_s", "torchvision", "efficientnet_v2_s", ("torchvision", "symmetric", 1e-3)),  # it has S, M and L only
    ("v2_b0", "timm", "tf_efficientnetv2_b0.in1k", ("timm_tf", "tf_same", 1e-3)),
    ("v2_b0", "timm", None, ("timm", "symmetric", 1e-5)),
])  # fmt: skip
def test_export_then_import_is_lossless(variant, weight_source, model, conv):
    torch.manual_seed(2)
    twin = EfficientNet.from_name(variant, weight_source=conv[0])
    exported = export_state_dict(twin.state_dict(), twin.spec, weight_source)
    r = import_state_dict(exported, model=model)  # layout detected, variant inferred (or named)
    assert (r.weight_source, r.spec.name, r.spec.conv.padding, r.spec.conv.bn_eps) == conv[:1] + (variant,) + conv[1:]
    assert all(torch.equal(r.state_dict[k], v) for k, v in twin.state_dict().items())
    load_state_dict_checked(EfficientNet(r.spec), r.state_dict)


def test_efficientnet_pytorch_has_no_v2():
    """Its layout names no fused block: V2 is never inferred for it, a V2 file in it matches nothing (an
    ImportMismatchError, never a KeyError), and naming or exporting V2 there says why not."""
    spec = resolve("v2_b0")
    kmap = source_keys(spec, "timm")
    v2_timm_file = {kmap[k]: torch.zeros(s) for k, s in shapes(spec).items()}
    with pytest.raises(ImportMismatchError, match="match no EfficientNet variant in the efficientnet_pytorch layout"):
        import_state_dict(v2_timm_file, "efficientnet_pytorch")
    with pytest.raises(ImportError_, match="efficientnet_pytorch has no EfficientNetV2"):
        import_state_dict(v2_timm_file, "efficientnet_pytorch", model="v2_b0")
    with pytest.raises(ImportError_, match="efficientnet_pytorch has no EfficientNetV2"):
        source_keys(spec, "efficientnet_pytorch")
    twin = meta_model("v2_b0")
    with pytest.raises(ValueError, match="efficientnet_pytorch has no EfficientNetV2"):
        export_state_dict(twin.state_dict(), twin.spec, "efficientnet_pytorch")
    assert get_source("efficientnet_pytorch").source.refusal(resolve("b0")) is None  # V1 still fits


def test_torchvision_exports_only_its_v2_sizes():
    twin = meta_model("v2_b0")
    with pytest.raises(ValueError, match="torchvision has no EfficientNet 'v2_b0'; it offers b0..b7, v2_s"):
        export_state_dict(twin.state_dict(), twin.spec, "torchvision")
    assert get_source("torchvision").source.exports(resolve("v2_l")) is None


@pytest.mark.parametrize("name, variant, tf, tag", [
    ("v2_s", "v2_s", False, ""),
    ("efficientnet_v2_m", "v2_m", False, ""),  # torchvision
    ("efficientnetv2_xl", "v2_xl", False, ""),  # timm
    ("tf_efficientnetv2_b3.in21k_ft_in1k", "v2_b3", True, "in21k_ft_in1k"),
])  # fmt: skip
def test_v2_model_names(name, variant, tf, tag):
    m = parse_model_name(name)
    assert (m.variant, m.tf, m.tag) == (variant, tf, tag)


@pytest.mark.parametrize("name", ["efficientnetv2_rw_s", "tf_efficientnetv2_b4", "v2_xxl"])
def test_v2_names_the_spec_does_not_hold_are_refused(name):
    with pytest.raises(ImportError_, match="unknown model"):
        parse_model_name(name)


def test_named_compares_with_the_family_table():
    assert named(resolve("v2_s")) and named(resolve("b0"))
    assert not named(resolve("v2_s", stages=stages_for("v2_s")[:4]))


def test_v2_preprocessing_and_loaders():
    tv = source_preprocessing("torchvision", resolve("v2_l"), ModelName("v2_l", False))
    assert (tv.resolution, tv.crop_pct, tv.interpolation, tv.mean, tv.std) == (480, 1.0, "bicubic", (0.5,) * 3,
                                                                               (0.5,) * 3)  # fmt: skip
    s = source_preprocessing("torchvision", resolve("v2_s"), ModelName("v2_s", False))
    assert (s.resolution, s.interpolation, s.mean) == (384, "bilinear", (0.485, 0.456, 0.406))
    b3 = resolve("v2_b3")
    default = source_preprocessing("timm", b3, parse_model_name("tf_efficientnetv2_b3"))
    in1k = source_preprocessing("timm", b3, parse_model_name("tf_efficientnetv2_b3.in1k"))
    assert (default.crop_pct, default.mean) == (0.9, (0.5,) * 3)  # timm's default tag: in21k_ft_in1k
    assert (in1k.crop_pct, in1k.mean) == (0.904, (0.485, 0.456, 0.406))
    timm_loader = get_source("timm").source.loader
    assert timm_loader(resolve("v2_s", weight_source="timm_tf")) == "timm.create_model('tf_efficientnetv2_s')"
    assert timm_loader(resolve("v2_m")) == "timm.create_model('efficientnetv2_m', bn_eps=0.001)"
    tv_loader = get_source("torchvision").source.loader
    assert tv_loader(resolve("v2_s", weight_source="torchvision")) == "torchvision.models.efficientnet_v2_s()"
