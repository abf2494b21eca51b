"""Mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019) in the form of automl's EfficientNetV2 input pipeline
(`datasets.py`: `mixup`, `cutmix_mask`, `mixing`): each example of a host's batch is mixed with the example at the
mirrored row of the same batch (`image[::-1]`).

- mixup: weight w ~ Beta(alpha, alpha), kept >= 0.5 (w = max(w, 1 - w)); image w * x + (1 - w) * partner.
- CutMix: a box centred at a uniform pixel, sides sqrt(1 - a) of the image's (a ~ Beta(alpha, alpha)), clipped to
  the image, is pasted from the partner; the own label keeps 1 - (box area / image area).
- both on: the first half of the batch's rows mixup, the second half CutMix.

The loss is w * CE(label) + (1 - w) * CE(partner's label), which is the cross-entropy against the mixed (smoothed)
one-hot targets automl builds. One difference: automl weighs a CutMix label by the box area averaged over the batch;
here each example's own box area, which is what its pixels hold (timm's form).

Every random draw is the example's own, from its (seed, epoch, index) generator after its augmentation (`draw`), so
the batches are a function of the step as before and runs without mixing draw nothing more; `mix_batch` then only
combines rows.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["draw", "mix_batch"]


def draw(rng: np.random.Generator, size: int, row: int, rows: int, mixup: float, cutmix: float) -> dict:
    """One example's mixing, drawn from its own generator: {"mix_weight", "mix_box", "mix_blend"} for the example
    at `row` of a host batch of `rows` (its row decides mixup or CutMix when both alphas are on)."""
    use_cutmix = cutmix > 0 and not (mixup > 0 and row < rows // 2)
    if not use_cutmix:
        w = rng.beta(mixup, mixup)
        return {"mix_weight": np.float32(max(w, 1.0 - w)), "mix_box": np.zeros(4, np.int32),
                "mix_blend": np.float32(1.0)}  # fmt: skip
    cx, cy = int(rng.integers(0, size)), int(rng.integers(0, size))
    side = int(math.sqrt(1.0 - rng.beta(cutmix, cutmix)) * size)
    x0, x1 = np.clip([cx - side // 2, cx + side // 2], 0, size)
    y0, y1 = np.clip([cy - side // 2, cy + side // 2], 0, size)
    area = (x1 - x0) * (y1 - y0) / (size * size)
    return {"mix_weight": np.float32(1.0 - area), "mix_box": np.array([y0, y1, x0, x1], np.int32),
            "mix_blend": np.float32(0.0)}  # fmt: skip


def mix_batch(batch: dict) -> dict:
    """A host batch with its examples' draws applied: {"image", "label", "label_mix", "mix"}, where `mix` is the
    weight of `label` and 1 - mix that of `label_mix` (the partner's). A batch without draws passes unchanged."""
    if "mix_weight" not in batch:
        return batch
    images, labels = batch["image"], batch["label"]
    partner = images[::-1]
    out = np.empty_like(images)
    for i, (w, box, blend) in enumerate(zip(batch["mix_weight"], batch["mix_box"], batch["mix_blend"])):
        if blend:
            out[i] = w * images[i] + (1.0 - w) * partner[i]
        else:
            y0, y1, x0, x1 = box
            out[i] = images[i]
            out[i, y0:y1, x0:x1] = partner[i, y0:y1, x0:x1]
    return {"image": out, "label": labels, "label_mix": labels[::-1].copy(), "mix": batch["mix_weight"]}
