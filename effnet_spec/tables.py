"""The unscaled inputs of the architecture: the B0 stage table, the families and the variant table.

Sources: Tan & Le 2019 (arXiv:1905.11946), Table 1 and the released TF code; the variant coefficients are
the hand-picked ones the reference implementations ship (torchvision, timm, efficientnet_pytorch), not the
compound formula. Lite: the TF `efficientnet-lite` release (ReLU6, no SE, fixed stem/head).
"""

from __future__ import annotations

from dataclasses import dataclass


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


__all__ = ["StageRow", "Family", "Variant", "STAGES", "FAMILIES", "VARIANTS", "variant_names"]


@dataclass(frozen=True, kw_only=True)
class StageRow:
    """One row of the paper's Table 1 (unscaled, B0 widths and repeats)."""

    expand: int  # expansion ratio of the inverted bottleneck (1 means no expand conv)
    out_ch: int  # output channels before width scaling
    repeats: int  # number of blocks before depth scaling
    stride: int  # stride of the first block of the stage; the rest use 1
    kernel: int  # depthwise kernel size
    se_ratio: float = 0.25  # SE squeeze width as a share of the *block input* channels

    def __post_init__(self) -> None:
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


@dataclass(frozen=True, kw_only=True)
class Family:
    """What distinguishes EfficientNet from EfficientNet-Lite, independent of any weight source."""

    name: str
    activation: str  # "silu" or "relu6"
    se: bool  # squeeze-and-excitation in every block
    stem_ch: int = 32  # before width scaling
    head_ch: int = 1280  # before width scaling
    scale_stem_head: bool = True  # Lite keeps stem 32 and head 1280 at every width
    scale_first_last_repeats: bool = True  # Lite keeps the first and last stage at 1 block
    interpolation: str = "bicubic"  # resize used by the reference preprocessing
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # on [0, 1] input
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)


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

    def __post_init__(self) -> None:
        _check(self.width > 0, f"Variant {self.name!r}: width must be > 0, got {self.width}")
        _check(self.depth > 0, f"Variant {self.name!r}: depth must be > 0, got {self.depth}")
        _check(self.resolution >= 1, f"Variant {self.name!r}: resolution must be >= 1, got {self.resolution}")
        _check(0.0 <= self.dropout < 1.0, f"Variant {self.name!r}: dropout must lie in [0, 1), got {self.dropout}")
        _check(
            0.0 <= self.drop_path < 1.0, f"Variant {self.name!r}: drop_path must lie in [0, 1), got {self.drop_path}"
        )
        _check(
            self.family in FAMILIES,
            f"Variant {self.name!r}: unknown family {self.family!r}; expected one of {sorted(FAMILIES)}",
        )


def _v(name: str, width: float, depth: float, resolution: int, dropout: float, family: str = "efficientnet"):
    return Variant(name=name, width=width, depth=depth, resolution=resolution, dropout=dropout, family=family)


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
    )
}


def variant_names() -> list[str]:
    return list(VARIANTS)
