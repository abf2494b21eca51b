"""The JSON header stored beside the weights in an effnet checkpoint (safetensors `__metadata__`).

A checkpoint is the `effnet_torch` state_dict (names, OIHW layouts) in safetensors; its metadata holds
`{"format": FORMAT, "spec": json, "preprocessing": json}` so that a reader rebuilds the exact spec with
the standard library alone. The twins do the tensor I/O; this module only (de)serialises the header.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from .conventions import Conventions
from .resolve import ModelSpec, resolve
from .tables import STAGES, StageRow, Variant

__all__ = ["FORMAT", "Preprocessing", "default_preprocessing", "make_header", "read_header"]

FORMAT = "effnet/1"


@dataclass(frozen=True, kw_only=True)
class Preprocessing:
    """How images must be prepared for a set of weights (timm's pretrained-cfg, trimmed)."""

    resolution: int
    crop_pct: float = 0.875  # eval: resize to resolution / crop_pct, then center-crop
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # on [0, 1] input
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    class_names: tuple[str, ...] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.resolution < 1:
            raise ValueError(f"Preprocessing: resolution must be >= 1, got {self.resolution}")
        if not 0 < self.crop_pct <= 1:
            raise ValueError(f"Preprocessing: crop_pct must lie in (0, 1], got {self.crop_pct}")
        if self.interpolation not in ("bicubic", "bilinear", "nearest"):
            raise ValueError(f"Preprocessing: unknown interpolation {self.interpolation!r}")
        if len(self.mean) != len(self.std) or any(s <= 0 for s in self.std):
            raise ValueError(f"Preprocessing: mean {self.mean} and std {self.std} must match and std be > 0")


def default_preprocessing(spec: ModelSpec, class_names: tuple[str, ...] | None = None) -> Preprocessing:
    fam = spec.family
    return Preprocessing(
        resolution=spec.resolution,
        interpolation=fam.interpolation,
        mean=fam.mean,
        std=fam.std,
        class_names=class_names,
    )


def make_header(spec: ModelSpec, preprocessing: Preprocessing | None = None) -> dict[str, str]:
    """The safetensors metadata (str -> str) for a checkpoint of `spec`."""
    pre = preprocessing or default_preprocessing(spec)
    if pre.class_names is not None and spec.num_classes and len(pre.class_names) != spec.num_classes:
        raise ValueError(f"{len(pre.class_names)} class names given for a model with {spec.num_classes} classes")
    body = {
        "variant": asdict(spec.variant),
        "num_classes": spec.num_classes,
        "in_channels": spec.in_channels,
        "conventions": asdict(spec.conv),
        "stages": None if spec.stages == STAGES else [asdict(r) for r in spec.stages],
    }
    return {"format": FORMAT, "spec": json.dumps(body), "preprocessing": json.dumps(asdict(pre))}


def read_header(meta: dict[str, str] | None) -> tuple[ModelSpec, Preprocessing]:
    """Rebuild (spec, preprocessing) from checkpoint metadata.

    Raises:
        ValueError: no header, another format, or fields that do not make a valid spec.
    """
    if not meta or "format" not in meta:
        raise ValueError("checkpoint has no effnet header (safetensors metadata 'format' is missing)")
    if meta["format"] != FORMAT:
        raise ValueError(f"checkpoint header format {meta['format']!r} is not supported; expected {FORMAT!r}")
    try:
        body = json.loads(meta["spec"])
        pre = json.loads(meta.get("preprocessing") or "null")
        variant = Variant(**body["variant"])
        conv = Conventions(**body["conventions"])
        stages = STAGES if body.get("stages") is None else tuple(StageRow(**r) for r in body["stages"])
        spec = resolve(
            variant,
            num_classes=body["num_classes"],
            in_channels=body["in_channels"],
            conventions=conv,
            stages=stages,
        )
    except (KeyError, TypeError, json.JSONDecodeError) as e:
        raise ValueError(f"checkpoint header is malformed: {type(e).__name__}: {e}") from e
    if pre is None:
        preprocessing = default_preprocessing(spec)
    else:
        for k in ("mean", "std", "class_names"):
            if pre.get(k) is not None:
                pre[k] = tuple(pre[k])
        preprocessing = Preprocessing(**pre)
    return spec, preprocessing
