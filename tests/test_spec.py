"""effnet_spec against the reference facts (docs/design.md, "Facts to match"), with no framework imported."""

from __future__ import annotations

import math
import re
import subprocess
import sys

import pytest

from effnet_spec import (
    STAGES,
    VARIANTS,
    Conventions,
    StageRow,
    Variant,
    block_resolutions,
    compound,
    conventions_for,
    count_macs,
    count_params,
    flops_growth,
    make_header,
    read_header,
    resolve,
    round_filters,
    round_repeats,
    same_pad,
    summary,
    summary_rows,
)

# Exact trainable-parameter counts with 1000 classes: identical in torchvision, timm and efficientnet_pytorch.
PARAM_COUNTS = {
    "b0": 5_288_548,
    "b1": 7_794_184,
    "b2": 9_109_994,
    "b3": 12_233_232,
    "b4": 19_341_616,
    "b5": 30_389_784,
    "b6": 43_040_704,
    "b7": 66_347_960,
    "lite0": 4_652_008,
    "lite1": 5_416_680,
    "lite2": 6_092_072,
    "lite3": 8_197_096,
    "lite4": 13_006_568,
}

# Multiply-adds at native resolution as torchvision publishes them (`_ops`, in GMACs) and the paper's rounded
# figures. The paper's "37 G" for b7 is itself a rounding of 37.75, hence 2.1% rather than 2% for that row.
MACS_TORCHVISION = {"b0": 0.386, "b3": 1.827, "b7": 37.746}
MACS_PAPER = {"b0": (0.39, 0.02), "b3": (1.8, 0.02), "b7": (37.0, 0.021)}

# (stage out channels, stage repeats) as built by torchvision / timm.
STAGE_TABLE = {
    "b0": ((16, 24, 40, 80, 112, 192, 320), (1, 2, 2, 3, 3, 4, 1)),
    "b3": ((24, 32, 48, 96, 136, 232, 384), (2, 3, 3, 5, 5, 6, 2)),
    "b7": ((32, 48, 80, 160, 224, 384, 640), (4, 7, 7, 10, 10, 13, 4)),
    "lite0": ((16, 24, 40, 80, 112, 192, 320), (1, 2, 2, 3, 3, 4, 1)),
    "lite4": ((24, 32, 56, 112, 160, 272, 448), (1, 4, 4, 6, 6, 8, 1)),
}
STEM_HEAD = {"b0": (32, 1280), "b3": (40, 1536), "b7": (64, 2560), "lite0": (32, 1280), "lite4": (32, 1280)}


@pytest.mark.parametrize("variant, expected", PARAM_COUNTS.items(), ids=list(PARAM_COUNTS))
def test_param_count(variant, expected):
    got = count_params(resolve(variant))
    assert got == expected, f"{variant}: {got:,} != {expected:,}"


@pytest.mark.parametrize("variant", MACS_TORCHVISION)
def test_macs(variant):
    got = count_macs(resolve(variant)) / 1e9
    assert round(got, 3) == MACS_TORCHVISION[variant], f"{variant}: {got:.4f} G"
    ref, rel = MACS_PAPER[variant]
    assert abs(got - ref) / ref <= rel, f"{variant}: {got:.3f} G vs paper {ref} G"


@pytest.mark.parametrize("variant", STAGE_TABLE)
def test_stage_channels_and_repeats(variant):
    spec = resolve(variant)
    channels, repeats = STAGE_TABLE[variant]
    assert spec.stage_channels() == channels
    assert spec.stage_repeats() == repeats
    assert (spec.stem_ch, spec.head_ch) == STEM_HEAD[variant]


def test_b0_blocks_follow_table_1():
    spec = resolve("b0")
    firsts = [spec.blocks_of(s)[0] for s in range(7)]
    assert [b.kernel for b in firsts] == [row.kernel for row in STAGES]
    assert [b.stride for b in firsts] == [row.stride for row in STAGES]
    assert [b.mid_ch // b.in_ch for b in firsts] == [row.expand for row in STAGES]
    assert all(b.stride == 1 for b in spec.blocks if b not in firsts)
    # SE squeezes from the block *input* channels: max(1, int(in * 0.25)).
    assert [b.se_ch for b in spec.blocks] == [max(1, int(b.in_ch * 0.25)) for b in spec.blocks]
    assert [b.in_ch for b in spec.blocks[1:]] == [b.out_ch for b in spec.blocks[:-1]]
    assert [b.residual for b in spec.blocks] == [b.stride == 1 and b.in_ch == b.out_ch for b in spec.blocks]
    assert not spec.blocks[0].has_expand and all(b.has_expand for b in spec.blocks[1:])


@pytest.mark.parametrize("variant", ["b0", "b4", "lite2"])
def test_drop_path_schedule(variant):
    spec = resolve(variant)
    n = len(spec.blocks)
    assert [b.drop_path for b in spec.blocks] == [0.2 * i / n for i in range(n)]


def test_lite_family():
    spec = resolve("lite3")
    assert spec.conv.activation == "relu6"
    assert all(b.se_ch == 0 for b in spec.blocks)
    assert resolve("b3").conv.activation == "silu"


@pytest.mark.parametrize(
    "channels, width, expected",
    [(32, 1.0, 32), (32, 1.1, 32), (16, 1.2, 24), (40, 1.4, 56), (1280, 2.0, 2560), (112, 1.8, 200), (3, 1.0, 8)],
)
def test_round_filters(channels, width, expected):
    assert round_filters(channels, width) == expected


def test_round_repeats():
    assert [round_repeats(r, 3.1) for r in (1, 2, 3, 4)] == [4, 7, 10, 13]


def test_compound_scaling():
    v = compound(1.0)
    assert (v.depth, v.width) == (1.2, 1.1)
    assert v.resolution == 256  # 224 * 1.15 = 257.6, nearest multiple of 8
    assert math.isclose(flops_growth(1.0), 1.2 * 1.1**2 * 1.15**2)
    assert 1.9 < flops_growth(1.0) < 1.95
    # Two steps of phi multiply the multiply-adds by about flops_growth(2) ~= 3.69; ceil() on repeats and the
    # rounding of channels and resolution only push it up, by up to ~30% at phi=2.
    m0, m2 = (count_macs(resolve(p)) for p in (0.0, 2.0))
    assert 1.0 <= (m2 / m0) / flops_growth(2.0) < 1.3
    assert count_params(resolve(0.0)) == PARAM_COUNTS["b0"]


@pytest.mark.parametrize(
    "size, kernel, stride, expected",
    [
        (224, 3, 2, (0, 1)),
        (225, 3, 2, (1, 1)),
        (112, 5, 2, (1, 2)),
        (97, 3, 1, (1, 1)),
        (131, 5, 2, (2, 2)),
        (1, 3, 2, (1, 1)),
    ],
)
def test_tf_same_padding(size, kernel, stride, expected):
    assert same_pad(size, kernel, stride) == expected
    out = -(-size // stride)
    assert (size + sum(expected) - kernel) // stride + 1 == out


def test_block_resolutions_non_square():
    spec = resolve("b0", weight_source="timm_tf")
    res = block_resolutions(spec, (97, 131))
    assert res[0] == (49, 66)
    assert res[-1] == (4, 5)


def test_summary_table():
    spec = resolve("b0")
    rows = summary_rows(spec)
    assert [r["channels"] for r in rows] == [32, 16, 24, 40, 80, 112, 192, 320, 1280]
    assert [r["resolution"][0] for r in rows] == [224, 112, 112, 56, 28, 14, 14, 7, 7]
    text = summary(spec)
    assert "5,288,548" in text and "MBConv6, k5x5" in text


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: resolve("b9"), "unknown variant 'b9'; expected one of: b0, b1"),
        (lambda: StageRow(expand=6, out_ch=24, repeats=-1, stride=2, kernel=3), "repeats must be >= 1"),
        (lambda: StageRow(expand=6, out_ch=24, repeats=2, stride=3, kernel=3), "stride must be 1 or 2, got 3"),
        (lambda: StageRow(expand=6, out_ch=24, repeats=2, stride=2, kernel=4), "positive odd number, got 4"),
        (lambda: Variant(name="x", width=0.0, depth=1.0, resolution=224, dropout=0.2), "width must be > 0"),
        (lambda: Conventions(padding="same"), "padding must be one of"),
        (lambda: conventions_for("keras2"), "unknown weight source 'keras2'"),
        (lambda: resolve("b0", num_classes=-1), "num_classes must be an int >= 0"),
        (lambda: compound(-1.0), "phi must be a finite number >= 0"),
        (lambda: read_header({"format": "other/9"}), "format 'other/9' is not supported"),
        (lambda: read_header({}), "no effnet header"),
        (lambda: summary(resolve("b0"), (0, 3)), "size must be an int or (H, W) of positive ints, got (0, 3)"),
    ],
)
def test_bad_input(make, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        make()


def test_conventions_by_source():
    assert conventions_for("torchvision", "b0") == Conventions(padding="symmetric", bn_eps=1e-5, bn_decay=0.9)
    assert conventions_for("torchvision", "b6").bn_eps == 1e-3
    assert conventions_for("timm_tf", "b0").padding == "tf_same"
    assert math.isclose(conventions_for("efficientnet_pytorch").torch_momentum, 0.01)


@pytest.mark.parametrize("variant", ["b2", "lite1", 1.5])
def test_header_round_trip(variant):
    spec = resolve(variant, num_classes=7, in_channels=1, weight_source="timm_tf")
    spec2, pre = read_header(make_header(spec))
    assert spec2 == spec
    assert pre.resolution == spec.resolution and pre.mean == spec.family.mean[:1]  # one value per input channel


def test_custom_stages_round_trip():
    stages = (StageRow(expand=1, out_ch=16, repeats=1, stride=2, kernel=3),)
    spec = resolve("b0", stages=stages, num_classes=3)
    assert read_header(make_header(spec))[0] == spec


def test_spec_is_stdlib_only():
    """Importing and using the spec pulls in no third-party module (it must run where no framework is installed)."""
    code = (
        "import sys; before = set(sys.modules); import effnet_spec as s; s.summary(s.resolve('b3')); "
        "new = {m.split('.')[0] for m in set(sys.modules) - before}; "
        "print(sorted(new - set(sys.stdlib_module_names) - {'effnet_spec'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", f"effnet_spec imported non-stdlib modules: {out}"


def test_variants_table_complete():
    v1 = {f"b{i}" for i in range(9)} | {"l2"} | {f"lite{i}" for i in range(5)}
    v2 = {"v2_s", "v2_m", "v2_l", "v2_xl"} | {f"v2_b{i}" for i in range(4)}  # one table: V2 rows are rows of it
    assert set(VARIANTS) == v1 | v2
