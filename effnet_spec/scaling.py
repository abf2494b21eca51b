"""Compound scaling (Tan & Le 2019, section 3.3), the reference rounding rules, and coefficients as data.

Step 1 of the paper's method finds alpha, beta, gamma by a small grid search (`effnet search`); step 2 scales a base
network with phi: depth alpha^phi, width beta^phi, resolution gamma^phi. `Coefficients` is the result of step 1 (the
constants plus the base they were found on); `compound` is step 2.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields

from .paths import not_a_file
from .tables import VARIANTS, Variant

__all__ = [
    "ALPHA",
    "BETA",
    "GAMMA",
    "COEFFICIENTS_FORMAT",
    "Coefficients",
    "compound",
    "flops_growth",
    "load_coefficients",
    "parse_coefficients",
    "resolution_step_for",
    "round_filters",
    "round_repeats",
]

# Grid-searched on B0 under alpha * beta^2 * gamma^2 ~= 2 (paper, section 3.3).
ALPHA, BETA, GAMMA = 1.2, 1.1, 1.15
COEFFICIENTS_FORMAT = "effnet-coefficients/1"
# The largest depth or width multiplier compound scaling builds (B7 is 3.1 and 2.0, L2 5.3 and 4.3; the paper's
# constants reach about 270 at the largest side, 16384 px from 224): beyond it resolve would build millions of blocks.
MAX_MULTIPLIER = 1000.0


def round_filters(channels: int, width: float, divisor: int = 8, round_limit: float = 0.9) -> int:
    """Scale a channel count by `width` and round to a multiple of `divisor`, never dropping below `round_limit` of
    the scaled count (V1's 90%; V2's reference has no such guard: `round_limit=0`)."""
    scaled = channels * width
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if new < round_limit * scaled:
        new += divisor
    return int(new)


def round_repeats(repeats: int, depth: float) -> int:
    return int(math.ceil(depth * repeats))


def flops_growth(phi: float, alpha: float = ALPHA, beta: float = BETA, gamma: float = GAMMA) -> float:
    """Factor by which FLOPs grow at compound coefficient phi: (alpha * beta^2 * gamma^2)^phi."""
    return (alpha * beta**2 * gamma**2) ** phi


def resolution_step_for(resolution: int) -> int:
    """The multiple scaled resolutions are rounded to: 8 at the paper's 224 px, the same share of a smaller base
    (the largest power of two <= resolution / 28, at least 1), so a 16 px base is not rounded in steps of 8."""
    return 1 << max(0, int(math.floor(math.log2(max(1.0, resolution / 28)))))


def _check_coefficient(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 1.0:
        raise ValueError(f"{name} must be a finite number >= 1, got {value!r}")
    return float(value)


@dataclass(frozen=True, kw_only=True)
class Coefficients:
    """The constants of compound scaling and the base network they scale: the result of step 1.

    `resolution` is the base's image side at phi = 0 (0: the base variant's native one); scaled sides are rounded to
    multiples of `resolution_step` (0: `resolution_step_for` the base side). `provenance` says where the constants
    came from (the search's data, budget and settings); it does not change the networks.
    """

    alpha: float = ALPHA
    beta: float = BETA
    gamma: float = GAMMA
    base: str = "b0"
    resolution: int = 0
    resolution_step: int = 0
    provenance: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("alpha", "beta", "gamma"):
            object.__setattr__(self, name, _check_coefficient(name, getattr(self, name)))
        if not isinstance(self.base, str) or self.base not in VARIANTS:
            raise ValueError(f"base must be one of: {', '.join(VARIANTS)}; got {self.base!r}")
        for name in ("resolution", "resolution_step"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 16384:
                raise ValueError(f"{name} must be an int in 0..16384 (0: the default), got {value!r}")

    @property
    def base_resolution(self) -> int:
        return self.resolution or VARIANTS[self.base].resolution

    @property
    def step(self) -> int:
        return self.resolution_step or resolution_step_for(self.base_resolution)

    @property
    def growth(self) -> float:
        """alpha * beta^2 * gamma^2: the FLOPs factor of one step of phi by the formula."""
        return flops_growth(1.0, self.alpha, self.beta, self.gamma)

    def variant(self, phi: float) -> Variant:
        """The base scaled by phi with these constants (`compound`)."""
        return compound(
            phi, self.alpha, self.beta, self.gamma, base=self.base, resolution=self.base_resolution,
            resolution_step=self.step,
        )  # fmt: skip

    def to_json(self) -> str:
        body = {"format": COEFFICIENTS_FORMAT, **asdict(self)}
        return json.dumps(body, indent=2, sort_keys=True) + "\n"


def compound(
    phi: float,
    alpha: float = ALPHA,
    beta: float = BETA,
    gamma: float = GAMMA,
    *,
    family: str | None = None,
    base: str | Variant | None = None,
    resolution: int | None = None,
    resolution_step: int | None = None,
) -> Variant:
    """A variant from the paper's formula: the base's depth times alpha^phi, width times beta^phi, and resolution
    times gamma^phi rounded to whole `resolution_step`s from the base's side (multiples of 8 from B0's 224).

    Defaults: base B0 at 224 px (or the family's phi = 0 member, "lite0"), steps of 8. The dropout follows the
    released table's trend (the base's + 0.05 * phi, capped at 0.5); the rounding step and the dropout are our
    choices, the paper fixes neither. phi = 0 gives the base itself (its own name and rates).
    """
    if isinstance(phi, bool) or not isinstance(phi, (int, float)) or not math.isfinite(phi) or not 0 <= phi <= 64:
        raise ValueError(f"compound: phi must be a finite number >= 0 (and <= 64), got {phi!r}")
    for name, value in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
        try:
            _check_coefficient(name, value)
        except ValueError as e:
            raise ValueError(f"compound: {e}") from None
    if base is None:
        base = "lite0" if family == "lite" else "b0"
    if isinstance(base, str):
        if base not in VARIANTS:
            raise ValueError(f"compound: unknown base {base!r}; expected one of: {', '.join(VARIANTS)}")
        base = VARIANTS[base]
    if family is not None and family != base.family:
        raise ValueError(f"compound: base {base.name} is of family {base.family!r}, not {family!r}")
    res0 = base.resolution if resolution is None else resolution
    step = resolution_step_for(res0) if resolution_step is None else resolution_step
    if isinstance(res0, bool) or not isinstance(res0, int) or res0 < 1:
        raise ValueError(f"compound: resolution must be an int >= 1, got {res0!r}")
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise ValueError(f"compound: resolution_step must be an int >= 1, got {step!r}")
    try:
        side, depth, width = res0 * gamma**phi, base.depth * alpha**phi, base.width * beta**phi
    except OverflowError:
        side = depth = width = math.inf
    if depth > MAX_MULTIPLIER or width > MAX_MULTIPLIER:  # round_repeats/round_filters would build it block by block
        raise ValueError(f"compound: phi={phi:g} with alpha={alpha:g}, beta={beta:g} scales {base.name}'s depth to "
                         f"{depth:.3g}x and width to {width:.3g}x; at most {MAX_MULTIPLIER:g}x each")  # fmt: skip
    if side > 16384:
        raise ValueError(f"compound: phi={phi:g} scales {res0} px to {side:.0f} px; the largest side is 16384")
    # The paper's own case keeps the names it always had (phi0, phi1.5, ...); phi = 0 of another base is that base.
    default_base = base.name in ("b0", "lite0") and res0 == 224 and step == 8
    if phi == 0 and not default_base:
        return Variant(**{f.name: getattr(base, f.name) for f in fields(Variant)} | {"resolution": res0})
    default_base = default_base and (alpha, beta, gamma) == (ALPHA, BETA, GAMMA)
    name = f"phi{phi:g}" if default_base else f"{base.name}-{res0}px-phi{phi:g}-a{alpha:g}-b{beta:g}-g{gamma:g}"
    return Variant(
        name=name,
        width=width,
        depth=depth,
        resolution=max(step, res0 + int(round((side - res0) / step)) * step),  # steps from the base's own side
        dropout=min(0.5, base.dropout + 0.05 * phi),
        family=base.family,
        drop_path=base.drop_path,
    )


def load_coefficients(path: str) -> Coefficients:
    """A coefficients file `effnet search` wrote (or any JSON of the same fields).

    Raises:
        ValueError: one line naming the file and what is wrong with it.
    """
    problem = not_a_file(path)  # before it is opened: a named pipe would block, /dev/zero never end
    if problem and problem != "no such file":
        raise ValueError(f"coefficients file {path!r}: {problem}")
    try:
        with open(path, encoding="utf-8") as f:
            body = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"coefficients file {path!r} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"coefficients file {path!r} is not readable JSON: {e}") from None
    if not isinstance(body, dict) or body.get("format") != COEFFICIENTS_FORMAT:
        raise ValueError(f"coefficients file {path!r} is not an effnet coefficients file (no format "
                         f"{COEFFICIENTS_FORMAT!r}); `effnet search` writes one")  # fmt: skip
    known = {f.name for f in fields(Coefficients)}
    unknown = sorted(set(body) - known - {"format"})
    if unknown:
        raise ValueError(f"coefficients file {path!r} has unknown keys {unknown}")
    missing = sorted({"alpha", "beta", "gamma", "base"} - set(body))
    if missing:
        raise ValueError(f"coefficients file {path!r} lacks {', '.join(missing)}")
    if not isinstance(body.get("provenance", {}), dict):
        raise ValueError(f"coefficients file {path!r}: provenance must be an object")
    try:
        return Coefficients(**{k: v for k, v in body.items() if k != "format"})
    except (TypeError, ValueError) as e:
        raise ValueError(f"coefficients file {path!r}: {e}") from None


def parse_coefficients(text: str, *, base: str = "b0", resolution: int = 0) -> Coefficients:
    """`"ALPHA,BETA,GAMMA"` (on `base` at `resolution`) or the path of a coefficients file.

    Raises:
        ValueError: one line: not three numbers >= 1, or a file that cannot be read.
    """
    parts = text.split(",")
    if len(parts) == 3 and not any(sep in text for sep in "/\\") and not os.path.exists(text):
        try:
            a, b, g = (float(p) for p in parts)
        except ValueError:
            raise ValueError(f"coefficients {text!r}: expected ALPHA,BETA,GAMMA (three numbers >= 1) or a "
                             "coefficients file") from None  # fmt: skip
        try:
            return Coefficients(alpha=a, beta=b, gamma=g, base=base, resolution=resolution)
        except ValueError as e:
            raise ValueError(f"coefficients {text!r}: {e}") from None
    return load_coefficients(text)
