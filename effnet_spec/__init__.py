"""effnet_spec: the one EfficientNet architecture spec both twins are built from (stdlib only)."""

from .classes import imagenet_class_names
from .contract import CheckpointMismatchError, Tensor, tensors
from .conventions import SOURCES, Conventions, conventions_for
from .counting import block_resolutions, count_macs, count_params
from .header import (
    FORMAT,
    MAX_RESOLUTION,
    Preprocessing,
    contradiction,
    default_preprocessing,
    make_header,
    read_header,
)
from .padding import out_size, pad_amounts, same_pad, symmetric_pad
from .resolve import BlockSpec, FeatureInfo, ModelSpec, get_variant, resolve
from .scaling import (
    ALPHA,
    BETA,
    GAMMA,
    Coefficients,
    compound,
    flops_growth,
    load_coefficients,
    parse_coefficients,
    round_filters,
    round_repeats,
)
from .summary import summary, summary_rows, variant_table
from .tables import BLOCKS, FAMILIES, STAGES, VARIANTS, Family, StageRow, Variant, stages_for, variant_names

__all__ = [
    "ALPHA",
    "CheckpointMismatchError",
    "Coefficients",
    "Tensor",
    "imagenet_class_names",
    "tensors",
    "FORMAT",
    "MAX_RESOLUTION",
    "Preprocessing",
    "default_preprocessing",
    "contradiction",
    "make_header",
    "read_header",
    "BETA",
    "BLOCKS",
    "GAMMA",
    "FAMILIES",
    "SOURCES",
    "STAGES",
    "VARIANTS",
    "BlockSpec",
    "Conventions",
    "Family",
    "FeatureInfo",
    "ModelSpec",
    "StageRow",
    "Variant",
    "block_resolutions",
    "compound",
    "conventions_for",
    "count_macs",
    "count_params",
    "flops_growth",
    "get_variant",
    "load_coefficients",
    "out_size",
    "pad_amounts",
    "parse_coefficients",
    "resolve",
    "round_filters",
    "round_repeats",
    "same_pad",
    "stages_for",
    "summary",
    "summary_rows",
    "symmetric_pad",
    "variant_names",
    "variant_table",
]
