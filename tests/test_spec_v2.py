"""EfficientNetV2 in the spec (issue 27, item 1): tables, rounding, fused blocks in the contract, counts; and V1
exactly as it was. No framework imported."""

from __future__ import annotations

import hashlib
import json
import math
import re

import pytest

from effnet_spec import (
    SOURCES,
    STAGES,
    VARIANTS,
    StageRow,
    Variant,
    contradiction,
    conventions_for,
    count_macs,
    count_params,
    make_header,
    read_header,
    resolve,
    round_filters,
    stages_for,
    summary,
    summary_rows,
    variant_table,
)
from effnet_spec.contract import modules, tensors

V2 = ["v2_s", "v2_m", "v2_l", "v2_xl", "v2_b0", "v2_b1", "v2_b2", "v2_b3"]

# Trainable parameters with 1000 classes, from the real libraries (torchvision `efficientnet_v2_{s,m,l}`, timm
# `tf_efficientnetv2_*`), as issue 27 lists them.
PARAM_COUNTS = {
    "v2_s": 21_458_488,
    "v2_m": 54_139_356,
    "v2_l": 118_515_272,
    "v2_xl": 208_119_808,
    "v2_b0": 7_139_704,
    "v2_b1": 8_141_052,
    "v2_b2": 10_096_086,
    "v2_b3": 14_358_406,
}

# torchvision's published multiply-adds (`_ops`, GMACs) at the eval side (384, 480, 480), symmetric padding.
MACS_TORCHVISION = {"v2_s": 8.366, "v2_m": 24.582, "v2_l": 56.080}

# (stage out channels, stage repeats, stem, head) as timm builds them: b2/b3 show the width rounding without V1's
# 90% guard (b3's first stage is 16, not 24), b1..b3 the repeats ceil(r * d).
STAGE_TABLE = {
    "v2_s": ((24, 48, 64, 128, 160, 256), (2, 4, 4, 6, 9, 15), 24, 1280),
    "v2_m": ((24, 48, 80, 160, 176, 304, 512), (3, 5, 5, 7, 14, 18, 5), 24, 1280),
    "v2_l": ((32, 64, 96, 192, 224, 384, 640), (4, 7, 7, 10, 19, 25, 7), 32, 1280),
    "v2_xl": ((32, 64, 96, 192, 256, 512, 640), (4, 8, 8, 16, 24, 32, 8), 32, 1280),
    "v2_b0": ((16, 32, 48, 96, 112, 192), (1, 2, 2, 3, 5, 8), 32, 1280),
    "v2_b1": ((16, 32, 48, 96, 112, 192), (2, 3, 3, 4, 6, 9), 32, 1280),
    "v2_b2": ((16, 32, 56, 104, 120, 208), (2, 3, 3, 4, 6, 10), 32, 1408),
    "v2_b3": ((16, 40, 56, 112, 136, 232), (2, 3, 3, 5, 7, 12), 40, 1536),
}

# (train side, eval side, dropout) from the issue (torchvision, timm and automl agree).
RATES = {
    "v2_s": (300, 384, 0.2),
    "v2_m": (384, 480, 0.3),
    "v2_l": (384, 480, 0.4),
    "v2_xl": (384, 512, 0.4),
    "v2_b0": (192, 224, 0.2),
    "v2_b1": (192, 240, 0.2),
    "v2_b2": (208, 260, 0.3),
    "v2_b3": (240, 300, 0.3),
}

_BUFFERS = ("bn_mean", "bn_var", "bn_count")


@pytest.mark.parametrize("variant, expected", PARAM_COUNTS.items(), ids=list(PARAM_COUNTS))
def test_param_count_from_the_contract(variant, expected):
    spec = resolve(variant)
    from_contract = sum(math.prod(t.shape) for t in tensors(spec) if t.role not in _BUFFERS)
    assert from_contract == expected, f"{variant}: {from_contract:,} != {expected:,}"
    assert count_params(spec) == expected, f"{variant}: count_params {count_params(spec):,} != {expected:,}"


@pytest.mark.parametrize("variant", MACS_TORCHVISION)
def test_macs_match_torchvision(variant):
    got = count_macs(resolve(variant)) / 1e9
    assert round(got, 3) == MACS_TORCHVISION[variant], f"{variant}: {got:.4f} G"


@pytest.mark.parametrize("variant", STAGE_TABLE)
def test_stage_channels_and_repeats(variant):
    spec = resolve(variant)
    channels, repeats, stem, head = STAGE_TABLE[variant]
    assert spec.stage_channels() == channels
    assert spec.stage_repeats() == repeats
    assert (spec.stem_ch, spec.head_ch) == (stem, head)


def test_v2_rounds_channels_without_the_guard():
    assert round_filters(16, 1.2) == 24, "V1's rule: never below 90% of 19.2"
    assert round_filters(16, 1.2, round_limit=0.0) == 16, "V2's rule (timm round_limit=0): nearest multiple of 8"
    assert resolve("v2_b3").stage_channels()[0] == 16
    assert resolve("b3").stage_channels()[0] == 24, "V1 keeps its guard"


@pytest.mark.parametrize("variant", V2)
def test_block_kinds_follow_the_table(variant):
    spec = resolve(variant)
    rows = stages_for(variant)
    assert [spec.blocks_of(s)[0].block for s in range(spec.num_stages)] == [r.block for r in rows]
    assert [r.block for r in rows[:3]] == ["fused"] * 3 and all(r.block == "mbconv" for r in rows[3:])
    assert all(b.kernel == 3 for b in spec.blocks), "every V2 kernel is 3x3"
    assert [b.mid_ch // b.in_ch for b in (spec.blocks_of(s)[0] for s in range(spec.num_stages))] == [
        r.expand for r in rows
    ]
    assert all(b.stride == 1 for s in range(spec.num_stages) for b in spec.blocks_of(s)[1:])
    assert [b.residual for b in spec.blocks] == [b.stride == 1 and b.in_ch == b.out_ch for b in spec.blocks]


@pytest.mark.parametrize("variant", V2)
def test_se_only_in_mbconv_blocks_from_the_block_input(variant):
    spec = resolve(variant)
    for b in spec.blocks:
        assert b.se_ch == (0 if b.fused else b.in_ch // 4), f"block {b.index} ({b.block}): se_ch {b.se_ch}"
    se = {m.block: m.weight_shape for m in modules(spec) if m.part == "se.reduce"}
    assert sorted(se) == [b.index for b in spec.blocks if not b.fused], "SE modules exactly on the MBConv blocks"
    assert all(se[b.index] == (b.in_ch // 4, b.mid_ch, 1, 1) for b in spec.blocks if not b.fused)


def test_fused_blocks_in_the_contract():
    spec = resolve("v2_s")
    by_block: dict[int, dict[str, tuple[int, ...]]] = {}
    for t in tensors(spec):
        if t.module.block is not None:
            by_block.setdefault(t.module.block, {})[t.name] = t.shape
    # Ratio 1 (stage 1, 24 -> 24): one 3x3 conv + BN (+ act, residual), nothing else.
    b0 = spec.blocks[0]
    assert b0.fused and not b0.has_expand and b0.residual
    assert by_block[0] == {
        "blocks.0.fused.conv.weight": (24, 24, 3, 3),
        "blocks.0.fused.bn.weight": (24,),
        "blocks.0.fused.bn.bias": (24,),
        "blocks.0.fused.bn.running_mean": (24,),
        "blocks.0.fused.bn.running_var": (24,),
        "blocks.0.fused.bn.num_batches_tracked": (),
    }
    # Ratio 4 (stage 2's first block, 24 -> 48, stride 2): 3x3 expand conv + BN, then 1x1 project + BN; no SE.
    b = spec.blocks_of(1)[0]
    assert (b.in_ch, b.mid_ch, b.out_ch, b.stride, b.residual) == (24, 96, 48, 2, False)
    got = by_block[b.index]
    assert got[f"blocks.{b.index}.fused.conv.weight"] == (96, 24, 3, 3)
    assert got[f"blocks.{b.index}.project.conv.weight"] == (48, 96, 1, 1)
    parts = [m.part for m in modules(spec) if m.block == b.index]
    assert parts == ["fused.conv", "fused.bn", "project.conv", "project.bn"]
    # An MBConv block is named as in V1.
    m = spec.blocks_of(3)[0]
    assert [x.part for x in modules(spec) if x.block == m.index] == [
        "expand.conv", "expand.bn", "depthwise.conv", "depthwise.bn", "se.reduce", "se.excite", "project.conv",
        "project.bn",
    ]  # fmt: skip
    assert {t.role for t in tensors(spec)} <= {t.role for t in tensors(resolve("b0"))}, "no new role"


def test_base_family_first_block_changes_width():
    b = resolve("v2_b0").blocks[0]
    assert (b.block, b.in_ch, b.out_ch, b.residual) == ("fused", 32, 16, False)
    assert [m.weight_shape for m in modules(resolve("v2_b0")) if m.block == 0] == [(16, 32, 3, 3), (16,)]


@pytest.mark.parametrize("variant", V2)
def test_rates_and_sides(variant):
    spec = resolve(variant)
    train, evaluate, dropout = RATES[variant]
    assert (spec.train_resolution, spec.resolution, spec.dropout) == (train, evaluate, dropout)
    n = len(spec.blocks)
    assert [b.drop_path for b in spec.blocks] == [0.2 * i / n for i in range(n)]
    assert spec.conv.activation == "silu"


def test_v1_trains_at_its_resolution():
    assert resolve("b3").train_resolution == resolve("b3").resolution == 300


def test_conventions_per_weight_source():
    assert conventions_for("torchvision", "v2_s") == conventions_for("torchvision", "v2_l")
    tv = resolve("v2_m", weight_source="torchvision").conv
    assert (tv.padding, tv.bn_eps, tv.bn_decay) == ("symmetric", 1e-3, 0.9)
    assert math.isclose(tv.torch_momentum, 0.1)
    tf = resolve("v2_b0", weight_source="timm_tf").conv
    assert (tf.padding, tf.bn_eps, tf.bn_decay) == ("tf_same", 1e-3, 0.99)
    assert conventions_for("torchvision", "b0").bn_eps == 1e-5, "V1 unchanged"


def test_truncated_table_keeps_every_block_kind():
    spec = resolve("v2_s", stages=stages_for("v2_s")[:4], num_classes=10)
    kinds = {(b.block, b.has_expand) for b in spec.blocks}
    assert kinds == {("fused", False), ("fused", True), ("mbconv", True)}
    assert spec.num_stages == 4


@pytest.mark.parametrize(
    "make",
    [
        lambda: resolve("v2_b2", num_classes=7, in_channels=1, weight_source="timm_tf"),
        lambda: resolve("v2_s", stages=stages_for("v2_s")[:4], num_classes=3),
        lambda: resolve("b0", stages=(StageRow(block="fused", expand=4, out_ch=16, repeats=2, stride=2, kernel=3),)),
    ],
    ids=["v2_b2", "v2_s-4-stages", "b0-fused-row"],
)
def test_header_round_trip(make):
    spec = make()
    assert read_header(make_header(spec))[0] == spec


def test_v1_header_has_no_v2_fields():
    body = json.loads(make_header(resolve("b0", stages=STAGES[:2]))["spec"])
    assert "train_resolution" not in body["variant"] and all("block" not in r for r in body["stages"])
    body = json.loads(make_header(resolve("v2_s"))["spec"])
    assert body["variant"]["train_resolution"] == 300 and body["stages"] is None, "the family's own table"


def test_summary():
    spec = resolve("v2_s")
    ops = [r["operator"] for r in summary_rows(spec)]
    assert ops == ["Conv3x3", "Fused-MBConv1, k3x3", "Fused-MBConv4, k3x3", "Fused-MBConv4, k3x3", "MBConv4, k3x3",
                   "MBConv6, k3x3", "MBConv6, k3x3", "Conv1x1 & Pooling & FC"]  # fmt: skip
    assert [r["resolution"][0] for r in summary_rows(spec)] == [384, 192, 192, 96, 48, 24, 24, 12]
    text = summary(spec)
    assert "21,458,488" in text and "resolution 384 (train 300)" in text


def test_variant_table_has_v2_rows():
    rows = {line.split(" | ")[0].removeprefix("| "): line for line in variant_table().splitlines()}
    assert all(v in rows for v in V2)
    assert "| 384 (train 300) |" in rows["v2_s"] and "21,458,488" in rows["v2_s"]


@pytest.mark.parametrize(
    "model",
    ["v2_s", "efficientnet_v2_s", "tf_efficientnetv2_s.in21k_ft_in1k"],
)
def test_library_names_agree_with_the_header(model):
    spec = resolve("v2_s", weight_source="timm_tf")
    assert contradiction(spec, model=model) is None
    assert "not 'tf_efficientnetv2_b0'" in contradiction(spec, model="tf_efficientnetv2_b0")


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: StageRow(block="fusd", expand=4, out_ch=48, repeats=4, stride=2, kernel=3), "got 'fusd'"),
        (
            lambda: StageRow(block="fused", expand=4, out_ch=48, repeats=4, stride=2, kernel=3, se_ratio=0.25),
            "a fused block has no squeeze-and-excitation (as in V2); se_ratio must be 0, got 0.25",
        ),
        (
            lambda: Variant(name="x", width=1.0, depth=1.0, resolution=384, dropout=0.2, train_resolution=-300),
            "train_resolution must be an int >= 0 (0: resolution), got -300",
        ),
        (
            lambda: Variant(name="x", width=1.0, depth=1.0, resolution=384, dropout=0.2, family="v3"),
            "unknown family 'v3'",
        ),
        (lambda: resolve("v2_q"), "unknown variant 'v2_q'"),
        (lambda: stages_for("v2_q"), "unknown variant 'v2_q'"),
    ],
    ids=["block", "fused-se", "train-resolution", "family", "variant", "stages_for"],
)
def test_bad_input(make, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        make()


# --- V1 exactly as it was --------------------------------------------------------------------------------------

V1 = [v for v in VARIANTS if v not in V2]
_V1_BLOCK_FIELDS = ("index", "stage", "in_ch", "mid_ch", "out_ch", "kernel", "stride", "se_ch", "drop_path",
                    "residual", "reduction")  # fmt: skip
# sha256 of `_v1_fingerprint()` as effnet_spec computed it before V2 (main at e308d97).
V1_FINGERPRINT = "101db1e6288634d408e023f5eb7e385b5da84caaaa2a62a8818b602185ba8d96"


def _v1_specs():
    for name in V1:
        yield resolve(name)
    yield resolve("b3", weight_source="timm_tf")
    yield resolve(1.5)
    yield resolve(0.0)
    yield resolve("b0", num_classes=0)
    yield resolve("lite0", num_classes=7, in_channels=1)
    yield resolve("b2", stages=STAGES[:4], num_classes=10)
    yield resolve("b0", stages=(StageRow(expand=1, out_ch=16, repeats=1, stride=2, kernel=3),), num_classes=3)


def _v1_fingerprint() -> str:
    """Every V1 spec's blocks, contract, counts, summary, header and feature info, and V1's variant table rows."""
    out: list = []
    for s in _v1_specs():
        out.append([s.name, repr(s.conv), s.stem_ch, s.head_ch, s.dropout, s.resolution,
                    [[getattr(b, f) for f in _V1_BLOCK_FIELDS] for b in s.blocks],
                    [[t.name, t.role, list(t.shape), t.module.kind, t.module.part] for t in tensors(s)],
                    count_params(s), count_macs(s), count_macs(s, (97, 131)), summary(s), repr(summary_rows(s)),
                    make_header(s), [repr(f) for f in s.feature_info]])  # fmt: skip
    out.append([repr(conventions_for(source, name)) for name in V1 for source in SOURCES])
    table = variant_table().splitlines()
    out.append([line for line in table if line.startswith(("|---", "| variant")) or line.split(" ")[1] in V1])
    return hashlib.sha256(json.dumps(out, sort_keys=True).encode()).hexdigest()


def test_v1_is_unchanged():
    assert set(V1) == {f"b{i}" for i in range(9)} | {"l2"} | {f"lite{i}" for i in range(5)}
    assert _v1_fingerprint() == V1_FINGERPRINT, "a V1 spec, contract, count, summary or header changed"
