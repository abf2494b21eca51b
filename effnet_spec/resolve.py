"""The resolver: all of the architecture's arithmetic, done once, into frozen per-block specs.

Both twins only *read* a `ModelSpec`; they compute no channel, repeat, stride, SE width or drop-path rate.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field, replace

from .conventions import Conventions, conventions_for
from .scaling import Coefficients, compound, parse_coefficients, round_filters, round_repeats
from .tables import FAMILIES, STAGES, VARIANTS, Family, StageRow, Variant

__all__ = ["BlockSpec", "FeatureInfo", "ModelSpec", "MAX_CLASSES", "MAX_IN_CHANNELS", "check_count", "resolve",
           "get_variant"]  # fmt: skip

# The largest classifier and input a model is built with: a million classes (beyond the largest published image
# label sets) on b7's 2560 features is 10 GB of float32 already; 1024 channels is beyond any hyperspectral sensor.
# Past these a typo (an extra zero, a bool) would be met as a MemoryError or an XLA error deep inside a library.
MAX_CLASSES = 1_000_000
MAX_IN_CHANNELS = 1024


def check_count(name: str, value: object, low: int, high: int) -> int:
    """`value` as a Python int in low..high: the one check of the count arguments of both twins' public API. A
    numpy integer is taken; a bool, float or string is not (True would build a one-class head).

    Raises:
        ValueError: naming the argument, the range and what was given.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        text = repr(value)
        text = text if len(text) <= 40 else text[:40] + "..."
        raise ValueError(f"{name} must be an int >= {low}, got {type(value).__name__} {text}")
    value = int(value)
    shown = (
        f"{value:,}"
        if value.bit_length() <= 64
        else f"an integer of about {int(value.bit_length() * 0.30103) + 1} digits"
    )
    if value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {shown}")
    if value > high:
        raise ValueError(f"{name} must be at most {high:,}, got {shown}")
    return value


@dataclass(frozen=True, kw_only=True)
class BlockSpec:
    """One block, fully resolved. An "mbconv" block is [1x1 expand] -> kxk depthwise -> [SE] -> 1x1 project; a
    "fused" one (V2's Fused-MBConv) is one kxk conv, in -> mid when it expands (then a 1x1 project), in -> out when
    it does not (then nothing else). Either adds its input back when `residual`."""

    index: int  # global block index 0..N-1
    stage: int  # stage index 0..6 (row of the stage table)
    in_ch: int
    mid_ch: int  # expanded channels; == in_ch means no expand conv
    out_ch: int
    kernel: int
    stride: int
    se_ch: int  # SE squeeze width; 0 means no SE
    drop_path: float  # stochastic-depth rate of this block's residual branch
    residual: bool  # identity shortcut (stride 1 and in_ch == out_ch)
    reduction: int  # total stride of the block's output relative to the model input
    block: str = "mbconv"  # "mbconv" or "fused" (tables.BLOCKS)

    @property
    def has_expand(self) -> bool:
        return self.mid_ch != self.in_ch

    @property
    def fused(self) -> bool:
        return self.block == "fused"


@dataclass(frozen=True)
class FeatureInfo:
    """One multi-scale output: taken after block `block`, with `channels` at total stride `reduction`."""

    block: int
    channels: int
    reduction: int


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    name: str
    variant: Variant
    family: Family
    conv: Conventions
    num_classes: int
    in_channels: int
    stem_ch: int
    head_ch: int
    dropout: float
    blocks: tuple[BlockSpec, ...] = field(repr=False)
    stages: tuple[StageRow, ...] = field(default=STAGES, repr=False)  # the unscaled table it was built from
    stem_kernel: int = 3  # the stem is a 3x3 stride-2 conv in every EfficientNet (paper Table 1)
    stem_stride: int = 2

    @property
    def resolution(self) -> int:
        return self.variant.resolution

    @property
    def train_resolution(self) -> int:
        """The side the variant trains at: smaller than `resolution` for V2, the same for V1."""
        return self.variant.train_resolution or self.variant.resolution

    @property
    def feature_info(self) -> tuple[FeatureInfo, ...]:
        """The last block at each reduction (2, 4, 8, 16, 32): the backbone outputs for detection."""
        last: dict[int, BlockSpec] = {}
        for b in self.blocks:
            last[b.reduction] = b
        return tuple(FeatureInfo(b.index, b.out_ch, r) for r, b in sorted(last.items()))

    def stage_channels(self) -> tuple[int, ...]:
        return tuple(self.blocks_of(s)[-1].out_ch for s in range(self.num_stages))

    def stage_repeats(self) -> tuple[int, ...]:
        return tuple(len(self.blocks_of(s)) for s in range(self.num_stages))

    @property
    def num_stages(self) -> int:
        return self.blocks[-1].stage + 1

    def blocks_of(self, stage: int) -> tuple[BlockSpec, ...]:
        return tuple(b for b in self.blocks if b.stage == stage)


def get_variant(name: str) -> Variant:
    """Look up a named variant.

    Raises:
        ValueError: unknown name, listing the valid ones.
    """
    if not isinstance(name, str) or name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; expected one of: {', '.join(VARIANTS)}")
    return VARIANTS[name]


def resolve(
    variant: str | Variant | float,
    *,
    num_classes: int = 1000,
    in_channels: int = 3,
    weight_source: str = "effnet",
    conventions: Conventions | None = None,
    stages: tuple[StageRow, ...] | None = None,
    drop_path: float | None = None,
    dropout: float | None = None,
    coefficients: Coefficients | str | None = None,
) -> ModelSpec:
    """Turn a variant (name, `Variant`, or compound coefficient phi) into a `ModelSpec`.

    Args:
        variant: "b0".."b8", "l2", "lite0".."lite4", "v2_s", "v2_m", "v2_l", "v2_xl", "v2_b0".."v2_b3", a
            `Variant`, or a number phi for `compound(phi)`.
        coefficients: with a number phi, scale with these instead of the paper's: `Coefficients`, a coefficients
            file `effnet search` wrote, or "ALPHA,BETA,GAMMA" (on B0 at 224 px).
        num_classes: classifier outputs (0 drops the classifier: `forward` returns pooled features).
        in_channels: input image channels.
        weight_source: the library whose weights the model will hold; its conventions are used (see
            `conventions.SOURCES`).
        conventions: explicit conventions; overrides `weight_source` (activation still comes from the family).
        stages: the unscaled stage table (None: the family's; `stages_for(variant)[:N]` gives a cheap model).
        drop_path, dropout: override the variant's rates.
    Raises:
        ValueError: unknown variant or source, or invalid numbers.
    """
    phi = isinstance(variant, (int, float)) and not isinstance(variant, bool)
    if coefficients is not None:
        if not phi:
            raise ValueError(f"coefficients scale a base by a number phi; got variant {variant!r}, not a number")
        if isinstance(coefficients, str):
            coefficients = parse_coefficients(coefficients)
        if not isinstance(coefficients, Coefficients):
            raise ValueError(f"coefficients must be Coefficients, a file or 'ALPHA,BETA,GAMMA'; got {coefficients!r}")
        v = coefficients.variant(float(variant))
    elif isinstance(variant, Variant):
        v = variant
    elif isinstance(variant, str):
        v = get_variant(variant)
    elif phi:
        v = compound(float(variant))
    else:
        raise ValueError(f"variant must be a name, a Variant or a number phi, got {variant!r}")
    if drop_path is not None or dropout is not None:
        v = replace(
            v,
            drop_path=v.drop_path if drop_path is None else drop_path,
            dropout=v.dropout if dropout is None else dropout,
        )
    num_classes = check_count("num_classes", num_classes, 0, MAX_CLASSES)
    in_channels = check_count("in_channels", in_channels, 1, MAX_IN_CHANNELS)
    fam = FAMILIES[v.family]
    stages = fam.stages if stages is None else stages
    if not stages:
        raise ValueError("stages must hold at least one StageRow")

    base = conventions if conventions is not None else conventions_for(weight_source, v.name)
    conv = replace(base, activation=fam.activation)

    def width(c: int) -> int:
        return round_filters(c, v.width, round_limit=fam.round_limit)

    stem_ch = width(fam.stem_ch) if fam.scale_stem_head else fam.stem_ch
    head_ch = width(fam.head_ch) if fam.scale_stem_head else fam.head_ch

    repeats = []
    for s, row in enumerate(stages):
        fixed = not fam.scale_first_last_repeats and s in (0, len(stages) - 1)
        repeats.append(row.repeats if fixed else round_repeats(row.repeats, v.depth))
    total = sum(repeats)

    blocks: list[BlockSpec] = []
    stem_kernel, stem_stride = 3, 2
    in_ch, reduction = stem_ch, stem_stride
    for s, (row, n) in enumerate(zip(stages, repeats)):
        out_ch = width(row.out_ch)
        for r in range(n):
            stride = row.stride if r == 0 else 1
            reduction *= stride
            i = len(blocks)
            blocks.append(
                BlockSpec(
                    index=i,
                    stage=s,
                    in_ch=in_ch,
                    mid_ch=in_ch * row.expand,
                    out_ch=out_ch,
                    kernel=row.kernel,
                    stride=stride,
                    se_ch=max(1, int(in_ch * row.se_ratio)) if fam.se and row.se_ratio > 0 else 0,
                    drop_path=v.drop_path * i / total,
                    residual=stride == 1 and in_ch == out_ch,
                    reduction=reduction,
                    block=row.block,
                )
            )
            in_ch = out_ch
    return ModelSpec(
        name=v.name,
        variant=v,
        family=fam,
        conv=conv,
        num_classes=num_classes,
        in_channels=in_channels,
        stem_ch=stem_ch,
        head_ch=head_ch,
        dropout=v.dropout,
        blocks=tuple(blocks),
        stages=tuple(stages),
        stem_kernel=stem_kernel,
        stem_stride=stem_stride,
    )
