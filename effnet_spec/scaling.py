"""Compound scaling (Tan & Le 2019, section 3.3) and the reference rounding rules."""

from __future__ import annotations

import math

from .tables import Variant

__all__ = ["ALPHA", "BETA", "GAMMA", "round_filters", "round_repeats", "compound", "flops_growth"]

# Grid-searched on B0 under alpha * beta^2 * gamma^2 ~= 2 (paper, section 3.3).
ALPHA, BETA, GAMMA = 1.2, 1.1, 1.15


def round_filters(channels: int, width: float, divisor: int = 8) -> int:
    """Scale a channel count by `width` and round to a multiple of `divisor`, never dropping below 90%."""
    scaled = channels * width
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if new < 0.9 * scaled:
        new += divisor
    return int(new)


def round_repeats(repeats: int, depth: float) -> int:
    return int(math.ceil(depth * repeats))


def flops_growth(phi: float, alpha: float = ALPHA, beta: float = BETA, gamma: float = GAMMA) -> float:
    """Factor by which FLOPs grow at compound coefficient phi: (alpha * beta^2 * gamma^2)^phi."""
    return (alpha * beta**2 * gamma**2) ** phi


def compound(
    phi: float, alpha: float = ALPHA, beta: float = BETA, gamma: float = GAMMA, *, family: str = "efficientnet"
) -> Variant:
    """A custom variant from the paper's formula: depth alpha^phi, width beta^phi, resolution 224 * gamma^phi.

    The resolution is rounded to the nearest multiple of 8 and the dropout follows the released table's
    trend (0.2 + 0.05 * phi, capped at 0.5); both are our choices, the paper fixes neither.
    """
    if not math.isfinite(phi) or phi < 0:
        raise ValueError(f"compound: phi must be a finite number >= 0, got {phi}")
    for name, value in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
        if not value >= 1.0:
            raise ValueError(f"compound: {name} must be >= 1, got {value}")
    resolution = max(8, int(round(224 * gamma**phi / 8)) * 8)
    return Variant(
        name=f"phi{phi:g}",
        width=beta**phi,
        depth=alpha**phi,
        resolution=resolution,
        dropout=min(0.5, 0.2 + 0.05 * phi),
        family=family,
    )
