"""effnet_torch.EfficientNet on its own: structure vs the reference facts, train/eval behaviour, padding, BN, errors."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F
from test_spec import PARAM_COUNTS  # docs/design.md's exact counts, kept in one place
from torch import nn

from effnet_spec import Conventions, count_params, pad_amounts, resolve
from effnet_torch import BatchNorm, ConvBN, DropPath, EfficientNet

# Stage output channels, repeats, stem and head widths of the reference builds (torchvision
# `_efficientnet_conf`, timm `_gen_efficientnet` / `_gen_efficientnet_lite`).
STAGES_REF = {
    "b0": ((16, 24, 40, 80, 112, 192, 320), (1, 2, 2, 3, 3, 4, 1), 32, 1280),
    "b3": ((24, 32, 48, 96, 136, 232, 384), (2, 3, 3, 5, 5, 6, 2), 40, 1536),
    "b7": ((32, 48, 80, 160, 224, 384, 640), (4, 7, 7, 10, 10, 13, 4), 64, 2560),
    "lite0": ((16, 24, 40, 80, 112, 192, 320), (1, 2, 2, 3, 3, 4, 1), 32, 1280),
    "lite4": ((24, 32, 56, 112, 160, 272, 448), (1, 4, 4, 6, 6, 8, 1), 32, 1280),
}

# The twin contract: every state_dict key has one of these shapes (docs/design.md, "The twin contract").
KEY_PATTERN = re.compile(
    r"^(stem|head|blocks\.\d+\.(expand|depthwise|project))\.(conv\.weight|bn\.(weight|bias|running_mean|running_var"
    r"|num_batches_tracked))$|^blocks\.\d+\.se\.(reduce|excite)\.(weight|bias)$|^classifier\.(weight|bias)$"
)

# Same-device float32 recomputation of the same ops in another order (F.pad + conv vs padded conv,
# batch-of-one vs batch): differences are a few ulp of the activations.
RECOMPUTE_ATOL = 1e-5


def meta_model(name: str, **kwargs) -> EfficientNet:
    """A model with no storage: enough for structure and counting, instant even for b7."""
    with torch.device("meta"):
        return EfficientNet.from_name(name, **kwargs)


@pytest.fixture(scope="module")
def b0() -> EfficientNet:
    torch.manual_seed(0)
    return EfficientNet.from_name("b0", num_classes=10)


# ---------------------------------------------------------------------------------------------- structure


@pytest.mark.parametrize("variant, expected", PARAM_COUNTS.items(), ids=list(PARAM_COUNTS))
def test_param_count_matches_reference_and_spec(variant, expected):
    model = meta_model(variant)
    n = sum(p.numel() for p in model.parameters())
    assert n == expected, f"{variant}: torch model has {n:,} params, reference {expected:,}"
    assert n == count_params(model.spec), f"{variant}: torch {n:,} != spec {count_params(model.spec):,}"


@pytest.mark.parametrize("variant", list(STAGES_REF))
def test_stage_channels_and_repeats_match_reference(variant):
    channels, repeats, stem, head = STAGES_REF[variant]
    model = meta_model(variant)
    stages: dict[int, list[nn.Module]] = {}
    for block in model.blocks:
        stages.setdefault(block.spec.stage, []).append(block)
    assert tuple(len(bs) for bs in stages.values()) == repeats
    assert tuple(bs[-1].project.conv.out_channels for bs in stages.values()) == channels
    assert model.stem.conv.out_channels == stem
    assert model.head.conv.out_channels == head
    assert model.spec.stage_channels() == channels and model.spec.stage_repeats() == repeats


@pytest.mark.parametrize("variant", ["b0", "lite0"])
def test_module_tree_follows_twin_contract(variant):
    model = meta_model(variant)
    keys = list(model.state_dict())
    bad = [k for k in keys if not KEY_PATTERN.match(k)]
    assert not bad, f"keys outside the twin contract: {bad[:5]}"
    for b in model.spec.blocks:
        assert (f"blocks.{b.index}.expand.conv.weight" in keys) == b.has_expand
        assert (f"blocks.{b.index}.se.reduce.bias" in keys) == bool(b.se_ch)
        dw = model.blocks[b.index].depthwise.conv.weight
        assert tuple(dw.shape) == (b.mid_ch, 1, b.kernel, b.kernel)
    biases = {k for k in keys if k.endswith(".bias") and ".bn." not in k}
    assert all(".se." in k or k.startswith("classifier") for k in biases), "only SE convs and the classifier have bias"
    act = nn.ReLU6 if variant.startswith("lite") else nn.SiLU
    assert type(model.stem.act) is act and type(model.head.act) is act
    assert type(model.blocks[1].depthwise.act) is act and type(model.blocks[1].expand.act) is act
    assert isinstance(model.blocks[1].project.act, nn.Identity)


@pytest.mark.parametrize("variant", ["b0", "b3"])
def test_drop_path_rate_is_linear_in_block_index(variant):
    model = meta_model(variant)
    n = len(model.blocks)
    residual = [blk for blk in model.blocks if blk.spec.residual]
    assert residual, "expected residual blocks"
    for blk in residual:
        assert blk.drop_path.rate == pytest.approx(0.2 * blk.spec.index / n)
    assert not any(hasattr(blk, "drop_path") for blk in model.blocks if not blk.spec.residual)


def test_bn_constants_follow_conventions():
    tv = meta_model("b0", weight_source="torchvision")
    assert (tv.stem.bn.eps, tv.stem.bn.momentum) == (1e-5, pytest.approx(0.1))
    tf = meta_model("b0", weight_source="timm_tf")
    assert (tf.blocks[3].depthwise.bn.eps, tf.blocks[3].depthwise.bn.momentum) == (1e-3, pytest.approx(0.01))
    assert tf.head.padding == "tf_same" and tv.head.padding == "symmetric"


def test_init_follows_reference(b0):
    head = b0.head.conv.weight  # 1x1, 320 -> 1280: fan_out 1280
    assert head.std().item() == pytest.approx(math.sqrt(2 / 1280), rel=0.02)
    dw = b0.blocks[15].depthwise.conv.weight  # depthwise 3x3: fan_out = 9 * C / C
    assert dw.std().item() == pytest.approx(math.sqrt(2 / 9), rel=0.05)
    assert abs(dw.mean().item()) < 0.05
    bound = 1 / math.sqrt(10)  # torchvision: uniform range from the out features
    w = b0.classifier.weight
    assert w.abs().max().item() <= bound and w.abs().max().item() > 0.9 * bound
    assert torch.all(b0.classifier.bias == 0)
    assert torch.all(b0.blocks[1].se.reduce.bias == 0) and torch.all(b0.blocks[1].se.excite.bias == 0)
    assert torch.all(b0.stem.bn.weight == 1) and torch.all(b0.stem.bn.bias == 0)


# ---------------------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("weights", ["effnet", "timm_tf"])
@pytest.mark.parametrize("hw", [(64, 64), (63, 47)], ids=["even", "odd-nonsquare"])
def test_features_and_intermediates_shapes(b0, weights, hw):
    model = b0 if weights == "effnet" else EfficientNet.from_name("b0", num_classes=10, weight_source=weights)
    model.eval()
    x = torch.randn(2, 3, *hw)
    h, w = hw
    with torch.no_grad():
        feats = model.forward_intermediates(x)
        ff = model.forward_features(x)
        logits = model(x)
    info = model.spec.feature_info
    assert [f.reduction for f in info] == [2, 4, 8, 16, 32]
    for f, t in zip(info, feats):
        assert tuple(t.shape) == (2, f.channels, math.ceil(h / f.reduction), math.ceil(w / f.reduction))
    assert tuple(ff.shape) == (2, model.spec.head_ch, math.ceil(h / 32), math.ceil(w / 32))
    assert tuple(logits.shape) == (2, 10)
    assert torch.allclose(model.forward_classifier(ff), logits, atol=RECOMPUTE_ATOL)


def test_num_classes_and_in_channels_change():
    torch.manual_seed(0)
    model = EfficientNet.from_name("b0", num_classes=0, in_channels=1).eval()
    assert isinstance(model.classifier, nn.Identity)
    assert tuple(model.stem.conv.weight.shape) == (32, 1, 3, 3)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        pooled = model(x)
        assert tuple(pooled.shape) == (2, 1280)
        assert torch.allclose(pooled, model.forward_features(x).mean(dim=(2, 3)), atol=RECOMPUTE_ATOL)
        model.reset_classifier(7)
        assert model.spec.num_classes == 7 and tuple(model(x).shape) == (2, 7)
    assert count_params(model.spec) == sum(p.numel() for p in model.parameters())


def test_pre_logits_returns_pooled_features(b0):
    b0.eval()
    f = torch.randn(2, b0.spec.head_ch, 2, 2)
    assert torch.equal(b0.forward_classifier(f, pre_logits=True), f.mean(dim=(2, 3)))


# ---------------------------------------------------------------------------------------------- padding


@pytest.mark.parametrize(
    "size, kernel, stride, expected",
    [(224, 3, 2, (0, 1)), (225, 3, 2, (1, 1)), (224, 5, 2, (1, 2)), (225, 5, 2, (2, 2)), (7, 3, 1, (1, 1))],
)
def test_tf_same_pad_amounts_closed_form(size, kernel, stride, expected):
    assert pad_amounts("tf_same", size, kernel, stride) == expected


@pytest.mark.parametrize("hw", [(8, 8), (9, 9), (9, 6)], ids=["even", "odd", "nonsquare"])
@pytest.mark.parametrize("kernel", [3, 5])
def test_tf_same_conv_pads_from_actual_input(hw, kernel):
    """ConvBN(tf_same) == conv on an input padded by hand with TF's amounts (extra pixel bottom/right)."""
    torch.manual_seed(0)
    layer = ConvBN(2, 4, kernel, 2, Conventions(padding="tf_same")).eval()
    x = torch.randn(1, 2, *hw)
    top, bottom = pad_amounts("tf_same", hw[0], kernel, 2)
    left, right = pad_amounts("tf_same", hw[1], kernel, 2)
    want = layer.act(layer.bn(F.conv2d(F.pad(x, (left, right, top, bottom)), layer.conv.weight, stride=2)))
    with torch.no_grad():
        got = layer(x)
    assert tuple(got.shape) == (1, 4, math.ceil(hw[0] / 2), math.ceil(hw[1] / 2))
    assert torch.allclose(got, want, atol=RECOMPUTE_ATOL)
    if top != bottom or left != right:  # asymmetric TF padding: symmetric must give another result
        sym = ConvBN(2, 4, kernel, 2, Conventions(padding="symmetric")).eval()
        sym.load_state_dict(layer.state_dict())
        assert not torch.allclose(sym(x), got)


# ---------------------------------------------------------------------------------------------- randomness


def test_eval_is_deterministic_and_per_sample(b0):
    b0.eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        a, b = b0(x), b0(x)
        one = b0(x[1:2])
    assert torch.equal(a, b)
    assert torch.allclose(a[1:2], one, atol=RECOMPUTE_ATOL), "eval output of a sample depends on its batch"


def test_drop_path_drops_whole_samples_and_rescales():
    torch.manual_seed(0)
    rate, n = 0.3, 4000
    dp = DropPath(rate).train()
    y = dp(torch.ones(n, 2, 3, 3))
    per_sample = y.reshape(n, -1)
    assert torch.all(per_sample == per_sample[:, :1]), "drop-path must act on whole samples"
    first = per_sample[:, 0]
    kept_value = torch.tensor(1 / (1 - rate))
    assert torch.all((first == 0) | torch.isclose(first, kept_value)), "kept samples must be scaled by 1/keep"
    kept = (first > 0).float().mean().item()
    sigma = math.sqrt(rate * (1 - rate) / n)
    assert abs(kept - (1 - rate)) < 4 * sigma, f"kept share {kept:.4f}, expected {1 - rate} +- {4 * sigma:.4f}"
    assert torch.equal(dp.eval()(y), y), "drop-path must be identity in eval mode"


def test_block_honours_drop_path_mask_exactly(b0):
    torch.manual_seed(1)
    block = b0.blocks[2]  # first residual block of b0
    assert block.spec.residual
    rate = block.drop_path.rate
    x = torch.randn(2, block.spec.in_ch, 8, 8)
    block.train()
    with torch.no_grad():
        block.drop_path.eval()  # BN stays in train mode: the branch sees the same batch statistics
        full = block(x)
        block.drop_path.train()
        masked = block(x, torch.tensor([1.0, 0.0]))
    branch = full - x
    assert torch.equal(masked[1], x[1]), "a dropped sample must be exactly the shortcut"
    assert torch.allclose(masked[0], x[0] + branch[0] / (1 - rate), atol=RECOMPUTE_ATOL)
    b0.eval()


def test_model_honours_keep_masks(b0):
    torch.manual_seed(2)
    x = torch.randn(2, 3, 32, 32)
    n = len(b0.blocks)
    masks = [torch.tensor([1.0, 0.0]) if b.residual else None for b in b0.spec.blocks]
    drop = torch.bernoulli(torch.full((2, b0.spec.head_ch), 0.8))
    state = {k: v.clone() for k, v in b0.state_dict().items()}
    b0.train()
    with torch.no_grad():
        a = b0(x, drop_path_masks=masks, dropout_mask=drop)
        b = b0(x, drop_path_masks=dict(enumerate(masks)), dropout_mask=drop)
        feats = b0.forward_features(x, drop_path_masks=masks)
        pooled = feats.mean(dim=(2, 3)) * drop / (1 - b0.spec.dropout)
        want = pooled @ b0.classifier.weight.T + b0.classifier.bias
        c = b0(x, drop_path_masks=[torch.ones(2) if b.residual else None for b in b0.spec.blocks])
    b0.load_state_dict(state)  # undo the running-stat updates for the other tests
    b0.eval()
    assert torch.equal(a, b), "the same keep-masks must give the same output"
    assert torch.allclose(a, want, atol=RECOMPUTE_ATOL)
    assert not torch.allclose(a, c), "the masks must change the output"
    with pytest.raises(ValueError, match=rf"one entry per block \({n}\), got 3"):
        b0.train()(x, drop_path_masks=[None] * 3)
    with pytest.raises(ValueError, match=r"DropPath: expected a keep-mask of shape \(2,\), got \(3,\)"):
        b0.train()(x, drop_path_masks=[torch.ones(3)] * n)
    with pytest.raises(ValueError, match=r"dropout: expected a keep-mask of shape \(2, 1280\)"):
        b0.train()(x, dropout_mask=torch.ones(2, 10))
    b0.load_state_dict(state)
    b0.eval()


# ---------------------------------------------------------------------------------------------- batch norm


@pytest.mark.parametrize("running_var", ["unbiased", "biased"])
def test_bn_running_stats_closed_form(running_var):
    conv = Conventions(bn_eps=1e-3, bn_decay=0.9, running_var=running_var)
    bn = BatchNorm(3, conv).train()
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64) * 2 + 1
    bn.double()
    y = bn(x)
    count = 4 * 5 * 5
    mean = x.mean(dim=(0, 2, 3))
    var_b = ((x - mean[None, :, None, None]) ** 2).mean(dim=(0, 2, 3))
    fed = var_b * count / (count - 1) if running_var == "unbiased" else var_b
    assert torch.allclose(bn.running_mean, 0.1 * mean, rtol=1e-12, atol=1e-12)
    assert torch.allclose(bn.running_var, 0.9 * 1 + 0.1 * fed, rtol=1e-12, atol=1e-12)
    assert bn.num_batches_tracked.item() == 1
    # Normalisation always uses the biased batch variance.
    want = (x - mean[None, :, None, None]) / torch.sqrt(var_b[None, :, None, None] + 1e-3)
    assert torch.allclose(y, want, rtol=1e-10, atol=1e-10)


def test_bn_gradients_do_not_depend_on_running_var_rule():
    """Only the running-average update differs; the train-mode function and its gradient are the same."""
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    grads = []
    for rule in ("unbiased", "biased"):
        bn = BatchNorm(3, Conventions(running_var=rule)).double().train()
        xi = x.clone().requires_grad_(True)
        (bn(xi) ** 3).sum().backward()
        grads.append((xi.grad, bn.weight.grad, bn.bias.grad))
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


def test_model_bn_uses_biased_running_var_when_asked():
    torch.manual_seed(0)
    spec = resolve("b0", num_classes=10, conventions=Conventions(running_var="biased", bn_decay=0.9))
    model = EfficientNet(spec).train()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        model(x)
        s = model.stem.conv(x)
    var_b = s.var(dim=(0, 2, 3), unbiased=False)
    assert torch.allclose(model.stem.bn.running_var, 0.9 + 0.1 * var_b, atol=1e-6)
    assert torch.allclose(model.stem.bn.running_mean, 0.1 * s.mean(dim=(0, 2, 3)), atol=1e-6)


# ---------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "x, got",
    [
        (torch.zeros(3, 32, 32, dtype=torch.uint8), r"got shape \(3, 32, 32\) torch\.uint8"),
        (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), r"got shape \(1, 3, 32, 32\) torch\.uint8"),
        (torch.zeros(1, 32, 32, 3), r"got shape \(1, 32, 32, 3\) torch\.float32"),
        (torch.zeros(1, 1, 3, 32, 32), r"got shape \(1, 1, 3, 32, 32\)"),
        ([[1.0]], r"got a list"),
    ],
    ids=["rank3-uint8", "uint8", "nhwc", "rank5", "list"],
)
def test_bad_input_names_expected_and_got(b0, x, got):
    pattern = r"EfficientNet\(b0\): expected input \(N, 3, H, W\) floating point, " + got
    with pytest.raises(ValueError, match=pattern):
        b0(x)
    with pytest.raises(ValueError, match=pattern):
        b0.forward_intermediates(x)


def test_bad_construction_arguments():
    with pytest.raises(ValueError, match=r"unknown variant 'b9'; expected one of: b0, .*lite4"):
        meta_model("b9")
    with pytest.raises(TypeError, match=r"expects a resolved ModelSpec, got str; use EfficientNet\.from_name"):
        EfficientNet("b0")
    with pytest.raises(ValueError, match="num_classes must be an int >= 0, got -1"):
        meta_model("b0", num_classes=-1)
    with pytest.raises(ValueError, match="DropPath: rate must lie in"):
        DropPath(1.0)
