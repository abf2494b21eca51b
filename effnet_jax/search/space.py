"""The search space of step 1: grid points (alpha, beta, gamma), the networks they realise, and the constraint.

Rounding makes many grid points one network (channels to multiples of 8, repeats up by ceil, the side to whole
steps), so a candidate is a *realised* network: every grid point that builds it is listed with it, and it is trained
once. Specs only: nothing here imports jax, so a dry run and every refusal are instant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from effnet_spec import Coefficients, count_macs, count_params, resolve, stages_for

__all__ = [
    "BASE_POINT",
    "CONSTRAINTS",
    "PAPER_POINT",
    "Candidate",
    "Proxy",
    "grid",
    "parse_range",
    "realise",
    "shape",
]

PAPER_POINT = (1.2, 1.1, 1.15)
BASE_POINT = (1.0, 1.0, 1.0)
# formula: alpha * beta^2 * gamma^2 (the paper's); macs: the realised network's multiply-adds over the base's;
# latency: its measured inference latency on this device over the base's (EfficientNet-X's hardware-aware search).
CONSTRAINTS = ("formula", "macs", "latency")


def parse_range(text: str, name: str) -> tuple[float, ...]:
    """Grid values from "LO:HI:STEP" (both ends included) or "V1,V2,..." as sorted values >= 1.

    Raises:
        ValueError: one line naming the option and the value.
    """
    try:
        if ":" in text:
            lo, hi, step = (float(x) for x in text.split(":"))
            if not (math.isfinite(lo) and math.isfinite(hi) and math.isfinite(step)) or not step > 0 or hi < lo:
                raise ValueError
            n = (hi - lo) / step + 1e-9  # 1e-320 as a step overflows to inf here
            if not n < 1000:
                raise ValueError
            n = int(math.floor(n)) + 1
            if n > 1000:
                raise ValueError
            values = [round(lo + i * step, 6) for i in range(n)]
        else:
            values = [float(x) for x in text.split(",")]
    except ValueError:
        raise ValueError(f"--{name} {text!r}: expected LO:HI:STEP (HI >= LO, STEP > 0, at most 1000 values) or "
                         "comma-separated values") from None  # fmt: skip
    bad = [v for v in values if not (math.isfinite(v) and v >= 1.0)]
    if bad or not values:
        raise ValueError(f"--{name} {text!r}: every coefficient must be a finite number >= 1 (found {bad[0]:g})"
                         if bad else f"--{name} {text!r}: no values")  # fmt: skip
    return tuple(sorted(set(values)))


def grid(alphas, betas, gammas) -> list[tuple[float, float, float]]:
    """Every (alpha, beta, gamma), plus the base and the paper's point (the references, always trained)."""
    points = {(a, b, g) for a in alphas for b in betas for g in gammas}
    return sorted(points | {BASE_POINT, PAPER_POINT})


@dataclass(frozen=True)
class Proxy:
    """What a candidate network is built on: the base variant at its phi = 0 side, and the run's build fields."""

    base: str
    resolution: int  # base side
    resolution_step: int
    weight_source: str
    stages: int  # 0 = all
    num_classes: int

    def coefficients(self, point) -> Coefficients:
        a, b, g = point
        return Coefficients(alpha=a, beta=b, gamma=g, base=self.base, resolution=self.resolution,
                            resolution_step=self.resolution_step)  # fmt: skip


@dataclass
class Candidate:
    """One realised network and the grid points that build it."""

    key: str
    requested: list[tuple[float, float, float]]
    resolution: int
    blocks: int
    depth: float  # realised: blocks over the base's
    width: float  # realised: mean over stem, stages and head of output channels over the base's
    params: int
    macs: int
    refs: list[str] = field(default_factory=list)
    in_space: bool = False
    cost: float = 0.0  # under the constraint, as a ratio to the base (formula: of the first point meeting it)
    latency_ms: float | None = None

    @property
    def point(self) -> tuple[float, float, float]:
        """The grid point trained for this network: the paper's or the base's when it is a reference, else the
        first requested one."""
        for ref in (PAPER_POINT, BASE_POINT):
            if ref in self.requested:
                return ref
        return self.requested[0]


def formula(point) -> float:
    a, b, g = point
    return a * b * b * g * g


def shape(spec, base) -> tuple[float, float]:
    """Realised (depth, width) of `spec` against `base`: blocks over the base's, and the mean ratio of output
    channels over the stem, each stage and the head (what rounding left of the requested multipliers)."""
    channels = (spec.stem_ch, *spec.stage_channels(), spec.head_ch)
    base_ch = (base.stem_ch, *base.stage_channels(), base.head_ch)
    width = sum(c / c0 for c, c0 in zip(channels, base_ch)) / len(base_ch)
    return round(len(spec.blocks) / len(base.blocks), 4), round(width, 4)


def realise(points, proxy: Proxy) -> list[Candidate]:
    """Group grid points by the network they build (architecture and realised side), base first."""
    table = stages_for(proxy.base)  # the base variant's own table (V2 bases scale theirs)
    stages = table[: proxy.stages] if proxy.stages else table

    def spec_of(point):
        v = proxy.coefficients(point).variant(1.0)
        return v, resolve(v, num_classes=proxy.num_classes, weight_source=proxy.weight_source, stages=stages)

    _, base = spec_of(BASE_POINT)
    found: dict[tuple, Candidate] = {}
    for point in points:
        v, spec = spec_of(point)
        arch = (spec.stem_ch, spec.head_ch, v.resolution,
                tuple((b.in_ch, b.mid_ch, b.out_ch, b.kernel, b.stride, b.se_ch) for b in spec.blocks))  # fmt: skip
        if arch in found:
            found[arch].requested.append(point)
            continue
        depth, width = shape(spec, base)
        key = f"d{len(spec.blocks)}-w{width:.3f}-r{v.resolution}"
        taken = {c.key for c in found.values()}
        key = next(f"{key}-{n}" for n in range(2, 10**6) if f"{key}-{n}" not in taken) if key in taken else key
        found[arch] = Candidate(
            key=key,
            requested=[point],
            resolution=v.resolution,
            blocks=len(spec.blocks),
            depth=depth,
            width=width,
            params=count_params(spec),
            macs=count_macs(spec, v.resolution),
        )
    cands = sorted(found.values(), key=lambda c: (c.macs, c.key))
    for c in cands:
        c.refs = [name for name, p in (("base", BASE_POINT), ("paper", PAPER_POINT)) if p in c.requested]
    return cands


def apply_constraint(cands: list[Candidate], kind: str, target: float, tolerance: float) -> list[Candidate]:
    """Mark candidates whose cost ratio to the base lies within target +- tolerance; return those plus references.

    `latency` needs each candidate's `latency_ms` measured (the base's included) before this is called.
    """
    base = next(c for c in cands if "base" in c.refs)
    for c in cands:
        if kind == "formula":
            costs = [formula(p) for p in c.requested]
            inside = [x for x in costs if abs(x - target) <= tolerance]
            c.cost = inside[0] if inside else costs[0]
            c.in_space = bool(inside)
        else:
            c.cost = c.macs / base.macs if kind == "macs" else c.latency_ms / base.latency_ms
            c.in_space = abs(c.cost - target) <= tolerance
    return [c for c in cands if c.in_space or c.refs]
