"""Progressive learning (EfficientNetV2, Tan & Le 2021, section 4): the run cut into stages that raise the image size
and the regularisation together, so early steps are cheap (small images) and lightly regularised.

`plan` turns a config into its stages. Stage k of N (N = `progressive`) starts at step k * steps // N; at
t = k / (N - 1) it trains at side `lerp(progressive_size, train side, t)` with RandAugment magnitude
`lerp(progressive_magnitude, randaugment_m, t)`, dropout `lerp(progressive_dropout, the model's, t)` and mixup and
CutMix alphas `lerp(progressive_mixup, mixup / cutmix, t)`: the paper's linear ramps from its Table 6 starts (size
128, magnitude 5, dropout 0.1, mixup 0). automl's `main_tf2.py` ramps magnitude, mixup and CutMix the same way
(`np.linspace`), but its first stage is already at 128 + (size - 128) / N and it keeps dropout fixed; effnet
follows the paper in both (docs/design.md, "Progressive learning"). `progressive_size` 0 starts at 128, or at half
the train side where that is smaller (automl's `ibase`: 128, else train side / 2), so small images can be staged.

Everything a stage changes is a function of the step, so a run resumed inside any stage sees the batches, rates and
compiled step the uninterrupted run saw. A run without `progressive` is one stage with the config's own values.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .config import TrainConfig

__all__ = ["Stage", "plan", "stage_at"]


@dataclass(frozen=True)
class Stage:
    """Steps [first, end) of a run and what they train with."""

    index: int
    first: int
    end: int
    size: int  # train image side
    randaugment_m: float
    dropout: float  # before the classifier
    mixup: float  # alpha; 0 = off
    cutmix: float  # alpha; 0 = off
    randaugment: bool = True  # whether the run's augment reads randaugment_m (said in lines, not in records)

    @property
    def mixes(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0

    def describe(self, stages: int) -> str:
        magnitude = f"randaugment_m {self.randaugment_m:.3g}, " if self.randaugment else ""
        return (f"stage {self.index + 1}/{stages}: steps {self.first}-{self.end - 1}, {self.size}px, {magnitude}"
                f"dropout {self.dropout:.3g}, mixup {self.mixup:.3g}, cutmix {self.cutmix:.3g}")  # fmt: skip

    def record(self) -> dict:
        """The metrics row marking where this stage starts (metrics.jsonl, TensorBoard, the plot)."""
        skip = ("first", "end", "randaugment") + (() if self.randaugment else ("randaugment_m",))
        return {k: v for k, v in asdict(self).items() if k not in skip}


def _lerp(start: float, end: float, t: float) -> float:
    return start + (end - start) * t


def plan(cfg: TrainConfig, steps: int, size: int, dropout: float) -> tuple[Stage, ...]:
    """The stages of a run of `steps` steps training at side `size` with the model's `dropout` at the end.

    Raises:
        ValueError: more stages than steps, or a first-stage side above the train side.
    """
    n, ra = cfg.progressive or 1, cfg.augment == "randaugment"
    if n == 1:
        return (Stage(0, 0, steps, size, float(cfg.randaugment_m), dropout, cfg.mixup, cfg.cutmix, ra),)
    if n > steps:
        raise ValueError(f"progressive={n} stages need at least {n} steps; the run has {steps}")
    first = cfg.progressive_size or min(128, size // 2)
    if first > size:
        raise ValueError(f"progressive_size={cfg.progressive_size} is above the train side {size}: the ramp raises "
                         f"the side from progressive_size to resolution; set progressive_size <= {size}")  # fmt: skip
    stages = []
    for k in range(n):
        t = k / (n - 1)
        stages.append(
            Stage(
                index=k,
                first=k * steps // n,
                end=(k + 1) * steps // n,
                size=int(round(_lerp(first, size, t))),
                randaugment_m=_lerp(cfg.progressive_magnitude, cfg.randaugment_m, t),
                dropout=_lerp(cfg.progressive_dropout, dropout, t),
                mixup=_lerp(cfg.progressive_mixup, cfg.mixup, t) if cfg.mixup else 0.0,  # off stays off
                cutmix=_lerp(cfg.progressive_mixup, cfg.cutmix, t) if cfg.cutmix else 0.0,
                randaugment=ra,
            )
        )
    return tuple(stages)


def stage_at(stages: tuple, step: int):
    """The stage (a `Stage`, or the input pipeline's `data.StageInput`: anything with `end`, in step order) that
    trains step `step` (the last one for a step at or past the end)."""
    for stage in stages:
        if step < stage.end:
            return stage
    return stages[-1]
