"""The unscaled inputs of the architecture: the stage tables, the families and the variant table.

Sources: Tan & Le 2019 (arXiv:1905.11946), Table 1 and the released TF code; the variant coefficients are
the hand-picked ones the reference implementations ship (torchvision, timm, efficientnet_pytorch), not the
compound formula. Lite: the TF `efficientnet-lite` release (ReLU6, no SE, fixed stem/head). V2: Tan & Le 2021
(arXiv:2104.00298), Table 4 and automl's `efficientnetv2/effnetv2_configs.py`, as torchvision and timm build them.
"""

from __future__ import annotations

from dataclasses import dataclass


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


__all__ = ["BLOCKS", "StageRow", "Family", "Variant", "STAGES", "FAMILIES", "VARIANTS", "stages_for", "variant_names"]

# The block kinds a stage row can hold: "mbconv" is V1's inverted bottleneck (1x1 expand, kxk depthwise, SE, 1x1
# project); "fused" is V2's Fused-MBConv, whose one kxk dense conv replaces the expand + depthwise pair.
BLOCKS = ("mbconv", "fused")


@dataclass(frozen=True, kw_only=True)
class StageRow:
    """One row of a stage table (unscaled widths and repeats): the paper's Table 1 for V1, Table 4 for V2."""

    expand: int  # expansion ratio of the inverted bottleneck (1 means no expand conv)
    out_ch: int  # output channels before width scaling
    repeats: int  # number of blocks before depth scaling
    stride: int  # stride of the first block of the stage; the rest use 1
    kernel: int  # depthwise kernel size (a fused block's one kxk conv)
    se_ratio: float | None = None  # SE width as a share of the *block input* channels; None: 0.25, a fused block 0
    block: str = "mbconv"  # a key of BLOCKS

    def __post_init__(self) -> None:
        _check(self.block in BLOCKS, f"StageRow: block must be one of {BLOCKS}, got {self.block!r}")
        if self.se_ratio is None:  # V2's fused stages have no SE; every MBConv stage in both papers squeezes 0.25
            object.__setattr__(self, "se_ratio", 0.0 if self.block == "fused" else 0.25)
        _check(
            not (self.block == "fused" and self.se_ratio),
            "StageRow: a fused block has no squeeze-and-excitation (as in V2); se_ratio must be 0, "
            f"got {self.se_ratio}",
        )
        _check(self.expand >= 1, f"StageRow: expand must be >= 1, got {self.expand}")
        _check(self.out_ch >= 1, f"StageRow: out_ch must be >= 1, got {self.out_ch}")
        _check(self.repeats >= 1, f"StageRow: repeats must be >= 1, got {self.repeats}")
        _check(self.stride in (1, 2), f"StageRow: stride must be 1 or 2, got {self.stride}")
        _check(
            self.kernel >= 1 and self.kernel % 2 == 1,
            f"StageRow: kernel must be a positive odd number, got {self.kernel}",
        )
        _check(0.0 <= self.se_ratio <= 1.0, f"StageRow: se_ratio must lie in [0, 1], got {self.se_ratio}")


# Table 1 of the paper (B0). Columns: expand, out_ch, repeats, stride, kernel.
STAGES: tuple[StageRow, ...] = (
    StageRow(expand=1, out_ch=16, repeats=1, stride=1, kernel=3),
    StageRow(expand=6, out_ch=24, repeats=2, stride=2, kernel=3),
    StageRow(expand=6, out_ch=40, repeats=2, stride=2, kernel=5),
    StageRow(expand=6, out_ch=80, repeats=3, stride=2, kernel=3),
    StageRow(expand=6, out_ch=112, repeats=3, stride=1, kernel=5),
    StageRow(expand=6, out_ch=192, repeats=4, stride=2, kernel=5),
    StageRow(expand=6, out_ch=320, repeats=1, stride=1, kernel=3),
)


def _rows(*rows: tuple[str, int, int, int, int]) -> tuple[StageRow, ...]:
    """A V2 stage table from (block, expand, out_ch, repeats, stride) rows: every V2 kernel is 3x3."""
    kinds = {"F": "fused", "M": "mbconv"}
    return tuple(StageRow(block=kinds[b], expand=e, out_ch=c, repeats=r, stride=s, kernel=3) for b, e, c, r, s in rows)


# V2 stage tables (paper Table 4 for S; automl's configs for M, L, XL and the base). Columns: F(used) or M(BConv),
# expand, out_ch, repeats, stride. MBConv stages squeeze 0.25 of the block input; fused stages have no SE.
V2_S_STAGES = _rows(
    ("F", 1, 24, 2, 1), ("F", 4, 48, 4, 2), ("F", 4, 64, 4, 2),
    ("M", 4, 128, 6, 2), ("M", 6, 160, 9, 1), ("M", 6, 256, 15, 2),
)  # fmt: skip
V2_M_STAGES = _rows(
    ("F", 1, 24, 3, 1), ("F", 4, 48, 5, 2), ("F", 4, 80, 5, 2),
    ("M", 4, 160, 7, 2), ("M", 6, 176, 14, 1), ("M", 6, 304, 18, 2), ("M", 6, 512, 5, 1),
)  # fmt: skip
V2_L_STAGES = _rows(
    ("F", 1, 32, 4, 1), ("F", 4, 64, 7, 2), ("F", 4, 96, 7, 2),
    ("M", 4, 192, 10, 2), ("M", 6, 224, 19, 1), ("M", 6, 384, 25, 2), ("M", 6, 640, 7, 1),
)  # fmt: skip
V2_XL_STAGES = _rows(
    ("F", 1, 32, 4, 1), ("F", 4, 64, 8, 2), ("F", 4, 96, 8, 2),
    ("M", 4, 192, 16, 2), ("M", 6, 256, 24, 1), ("M", 6, 512, 32, 2), ("M", 6, 640, 8, 1),
)  # fmt: skip
V2_BASE_STAGES = _rows(  # b0..b3 scale this one (TF/timm `efficientnetv2-b*`)
    ("F", 1, 16, 1, 1), ("F", 4, 32, 2, 2), ("F", 4, 48, 2, 2),
    ("M", 4, 96, 3, 2), ("M", 6, 112, 5, 1), ("M", 6, 192, 8, 2),
)  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class Family:
    """What distinguishes EfficientNet, EfficientNet-Lite and each EfficientNetV2 table, independent of any weight
    source."""

    name: str
    activation: str  # "silu" or "relu6"
    se: bool  # squeeze-and-excitation where the stage row asks for it
    stem_ch: int = 32  # before width scaling
    head_ch: int = 1280  # before width scaling
    scale_stem_head: bool = True  # Lite keeps stem 32 and head 1280 at every width
    scale_first_last_repeats: bool = True  # Lite keeps the first and last stage at 1 block
    interpolation: str = "bicubic"  # resize used by the reference preprocessing
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # on [0, 1] input
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    stages: tuple[StageRow, ...] = STAGES  # the unscaled stage table the family's variants scale
    # Scaled channels never fall below this share of channels * width (V1's guard). V2's TF reference has none
    # (timm passes round_limit=0 for it): with the guard b3's first stage would be 24 wide, not 16.
    round_limit: float = 0.9


def _v2_family(name: str, stem_ch: int, stages: tuple[StageRow, ...]) -> Family:
    return Family(name=name, activation="silu", se=True, stem_ch=stem_ch, stages=stages, round_limit=0.0)


FAMILIES: dict[str, Family] = {
    "efficientnet": Family(name="efficientnet", activation="silu", se=True),
    # Lite preprocessing is (x - 127) / 128 on 0..255 input, i.e. mean 127/255, std 128/255 on [0, 1].
    "lite": Family(
        name="lite",
        activation="relu6",
        se=False,
        scale_stem_head=False,
        scale_first_last_repeats=False,
        interpolation="bilinear",
        mean=(127 / 255, 127 / 255, 127 / 255),
        std=(128 / 255, 128 / 255, 128 / 255),
    ),
    # V2: one table per size (S, M, L, XL are not compound-scaled), and the base table b0..b3 scale.
    "v2_s": _v2_family("v2_s", 24, V2_S_STAGES),
    "v2_m": _v2_family("v2_m", 24, V2_M_STAGES),
    "v2_l": _v2_family("v2_l", 32, V2_L_STAGES),
    "v2_xl": _v2_family("v2_xl", 32, V2_XL_STAGES),
    "v2_base": _v2_family("v2_base", 32, V2_BASE_STAGES),
}


@dataclass(frozen=True, kw_only=True)
class Variant:
    """A point of the scaling family: the coefficients a reference implementation ships."""

    name: str
    width: float  # channel multiplier (beta^phi)
    depth: float  # repeat multiplier (alpha^phi)
    resolution: int  # native input size (gamma^phi * 224, hand-rounded)
    dropout: float  # dropout before the classifier
    family: str = "efficientnet"
    drop_path: float = 0.2  # stochastic depth rate of the last block; block i gets rate * i / N
    train_resolution: int = 0  # V2 trains smaller than it evaluates (`resolution`); 0: train at `resolution`

    def __post_init__(self) -> None:
        _check(self.width > 0, f"Variant {self.name!r}: width must be > 0, got {self.width}")
        _check(self.depth > 0, f"Variant {self.name!r}: depth must be > 0, got {self.depth}")
        _check(self.resolution >= 1, f"Variant {self.name!r}: resolution must be >= 1, got {self.resolution}")
        _check(0.0 <= self.dropout < 1.0, f"Variant {self.name!r}: dropout must lie in [0, 1), got {self.dropout}")
        _check(
            0.0 <= self.drop_path < 1.0, f"Variant {self.name!r}: drop_path must lie in [0, 1), got {self.drop_path}"
        )
        _check(
            isinstance(self.train_resolution, int) and self.train_resolution >= 0,
            f"Variant {self.name!r}: train_resolution must be an int >= 0 (0: resolution), "
            f"got {self.train_resolution!r}",
        )
        _check(
            self.family in FAMILIES,
            f"Variant {self.name!r}: unknown family {self.family!r}; expected one of {sorted(FAMILIES)}",
        )


def _v(name: str, width: float, depth: float, resolution: int, dropout: float, family: str = "efficientnet",
       train_resolution: int = 0):  # fmt: skip
    return Variant(name=name, width=width, depth=depth, resolution=resolution, dropout=dropout, family=family,
                   train_resolution=train_resolution)  # fmt: skip


# Columns: name, width, depth, resolution, dropout (docs/design.md, "Facts to match").
VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        _v("b0", 1.0, 1.0, 224, 0.2),
        _v("b1", 1.0, 1.1, 240, 0.2),
        _v("b2", 1.1, 1.2, 260, 0.3),
        _v("b3", 1.2, 1.4, 300, 0.3),
        _v("b4", 1.4, 1.8, 380, 0.4),
        _v("b5", 1.6, 2.2, 456, 0.4),
        _v("b6", 1.8, 2.6, 528, 0.5),
        _v("b7", 2.0, 3.1, 600, 0.5),
        _v("b8", 2.2, 3.6, 672, 0.5),
        _v("l2", 4.3, 5.3, 800, 0.5),
        _v("lite0", 1.0, 1.0, 224, 0.2, "lite"),
        _v("lite1", 1.0, 1.1, 240, 0.2, "lite"),
        _v("lite2", 1.1, 1.2, 260, 0.3, "lite"),
        _v("lite3", 1.2, 1.4, 300, 0.3, "lite"),
        _v("lite4", 1.4, 1.8, 380, 0.3, "lite"),
        # V2: resolution is the eval side, train_resolution the side the paper trains at (its last progressive
        # stage); torchvision, timm and automl agree on both. Drop-path 0.2 as in V1.
        _v("v2_s", 1.0, 1.0, 384, 0.2, "v2_s", 300),
        _v("v2_m", 1.0, 1.0, 480, 0.3, "v2_m", 384),
        _v("v2_l", 1.0, 1.0, 480, 0.4, "v2_l", 384),
        _v("v2_xl", 1.0, 1.0, 512, 0.4, "v2_xl", 384),
        _v("v2_b0", 1.0, 1.0, 224, 0.2, "v2_base", 192),
        _v("v2_b1", 1.0, 1.1, 240, 0.2, "v2_base", 192),
        _v("v2_b2", 1.1, 1.2, 260, 0.3, "v2_base", 208),
        _v("v2_b3", 1.2, 1.4, 300, 0.3, "v2_base", 240),
    )
}


def variant_names() -> list[str]:
    return list(VARIANTS)


def stages_for(variant: str | Variant) -> tuple[StageRow, ...]:
    """The unscaled stage table a variant scales (its family's): what `stages=TABLE[:N]` truncates for a cheap model.

    Raises:
        ValueError: an unknown variant name.
    """
    if isinstance(variant, str):
        _check(variant in VARIANTS, f"unknown variant {variant!r}; expected one of: {', '.join(VARIANTS)}")
        variant = VARIANTS[variant]
    return FAMILIES[variant.family].stages
