"""The JSON header stored beside the weights in an effnet checkpoint (safetensors `__metadata__`).

A checkpoint is the `effnet_torch` state_dict (names, OIHW layouts) in safetensors; its metadata holds
`{"format": FORMAT, "spec": json, "preprocessing": json}` so that a reader rebuilds the exact spec with
the standard library alone. The twins do the tensor I/O; this module only (de)serialises the header.
"""

from __future__ import annotations

import json
import math
import re
import reprlib
from dataclasses import asdict, dataclass, field, fields, replace

from .conventions import Conventions, conventions_for
from .resolve import ModelSpec, resolve
from .tables import StageRow, Variant

__all__ = [
    "EXPORT_PREFIX",
    "FORMAT",
    "Preprocessing",
    "contradiction",
    "default_preprocessing",
    "make_export_header",
    "make_header",
    "read_export_header",
    "read_header",
]

FORMAT = "effnet/1"


_INTERPOLATIONS = ("bicubic", "bilinear", "nearest")


MAX_RESOLUTION = 16384  # the largest image side anything reads (compound scaling's too): 3 GiB per float32 image


def _number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


@dataclass(frozen=True, kw_only=True)
class Preprocessing:
    """How images must be prepared for a set of weights (timm's pretrained-cfg, trimmed).

    Lists are taken as tuples; a field of the wrong type or value fails with one `ValueError` naming it.
    """

    resolution: int
    crop_pct: float = 0.875  # eval: resize to resolution / crop_pct, then center-crop
    interpolation: str = "bicubic"
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)  # on [0, 1] input, one per input channel
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    class_names: tuple[str, ...] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if (
            not isinstance(self.resolution, int)
            or isinstance(self.resolution, bool)
            or not 1 <= self.resolution <= MAX_RESOLUTION
        ):
            raise ValueError(
                f"Preprocessing: resolution must be an int in 1..{MAX_RESOLUTION}, got {reprlib.repr(self.resolution)}"
            )
        if not _number(self.crop_pct) or not 0 < self.crop_pct <= 1:
            raise ValueError(f"Preprocessing: crop_pct must be a number in (0, 1], got {reprlib.repr(self.crop_pct)}")
        if not isinstance(self.interpolation, str) or self.interpolation not in _INTERPOLATIONS:
            raise ValueError(
                f"Preprocessing: interpolation must be one of {_INTERPOLATIONS}, got {reprlib.repr(self.interpolation)}"
            )
        for name in ("mean", "std"):
            values = getattr(self, name)
            if (
                not isinstance(values, (list, tuple))
                or not values
                or not all(_number(v) and math.isfinite(v) for v in values)
            ):
                raise ValueError(f"Preprocessing: {name} must be a list of finite numbers, got {reprlib.repr(values)}")
            object.__setattr__(self, name, tuple(values))
        if len(self.mean) != len(self.std):
            raise ValueError(
                f"Preprocessing: mean and std must have the same length, got {len(self.mean)} and {len(self.std)}"
            )
        if any(s <= 0 for s in self.std):
            raise ValueError(f"Preprocessing: std must be > 0, got {self.std}")
        names = self.class_names
        if names is not None:
            if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
                raise ValueError(
                    f"Preprocessing: class_names must be a list of strings or None, got {reprlib.repr(names)}"
                )
            object.__setattr__(self, "class_names", tuple(names))


_FIELDS = tuple(f.name for f in fields(Preprocessing))

# Fields added with V2, written only where they differ from their default: a V1 header stays byte for byte what it
# was, and a reader from before V2 still reads it.
_ADDED = {"block": "mbconv", "train_resolution": 0}


def _fields(obj: Variant | StageRow) -> dict:
    return {k: v for k, v in asdict(obj).items() if not (k in _ADDED and v == _ADDED[k])}


def default_preprocessing(spec: ModelSpec, class_names: tuple[str, ...] | None = None) -> Preprocessing:
    """The family's preprocessing for `spec`, with one mean and std per input channel.

    The family's values are per RGB channel; a model with another `in_channels` takes them in turn (`_per_channel`:
    channel i gets value i % 3, a one-channel model the first), as `effnet_jax.predict.preprocess` always read them.
    """
    fam = spec.family
    rgb = Preprocessing(
        resolution=spec.resolution, interpolation=fam.interpolation, mean=fam.mean, std=fam.std, class_names=class_names
    )
    return _per_channel(spec, rgb)


def _channel_problem(spec: ModelSpec, mean: object, std: object) -> str | None:
    """The line for a mean or std that does not fit the model's `in_channels` (None when both fit).

    Fitting is one value per input channel, or three (RGB) values for a model with another channel count: weight
    sources state RGB values, and older effnet files stored them so for 1-channel models (`_per_channel` spreads them).
    """
    n = spec.in_channels
    for name, values in (("mean", mean), ("std", std)):
        if isinstance(values, (list, tuple)) and len(values) != n and not (n != 3 and len(values) == 3):
            return f"preprocessing.{name} has {len(values)} value(s), expected {n} (one per input channel)"
    return None


def _per_channel(spec: ModelSpec, pre: Preprocessing) -> Preprocessing:
    """`pre` with one mean and std per input channel: RGB values are taken in turn (channel i gets value i % 3)."""
    n = spec.in_channels
    if len(pre.mean) == n:
        return pre
    return replace(pre, mean=tuple(pre.mean[i % 3] for i in range(n)), std=tuple(pre.std[i % 3] for i in range(n)))


def make_header(spec: ModelSpec, preprocessing: Preprocessing | None = None) -> dict[str, str]:
    """The safetensors metadata (str -> str) for a checkpoint of `spec`.

    Raises:
        ValueError: class names that do not count the classes; a mean or std not one per input channel.
    """
    pre = preprocessing or default_preprocessing(spec)
    if pre.class_names is not None and spec.num_classes and len(pre.class_names) != spec.num_classes:
        raise ValueError(f"{len(pre.class_names)} class names given for a model with {spec.num_classes} classes")
    problem = _channel_problem(spec, pre.mean, pre.std)
    if problem:
        raise ValueError(problem)
    pre = _per_channel(spec, pre)
    body = {
        "variant": _fields(spec.variant),
        "num_classes": spec.num_classes,
        "in_channels": spec.in_channels,
        "conventions": asdict(spec.conv),
        "stages": None if spec.stages == spec.family.stages else [_fields(r) for r in spec.stages],
    }
    return {"format": FORMAT, "spec": json.dumps(body), "preprocessing": json.dumps(asdict(pre))}


def read_header(meta: dict[str, str] | None) -> tuple[ModelSpec, Preprocessing]:
    """Rebuild (spec, preprocessing) from checkpoint metadata.

    Raises:
        ValueError: no header, another format, fields that do not make a valid spec, or a preprocessing that is
            not valid or does not fit the spec (a mean or std not one per input channel); one line naming the field.
    """
    if not meta or "format" not in meta:
        raise ValueError("checkpoint has no effnet header (safetensors metadata 'format' is missing)")
    if meta["format"] != FORMAT:
        raise ValueError(f"checkpoint header format {meta['format']!r} is not supported; expected {FORMAT!r}")
    try:
        body = json.loads(meta["spec"])
        variant = Variant(**body["variant"])
        conv = Conventions(**body["conventions"])
        stages = None if body.get("stages") is None else tuple(StageRow(**r) for r in body["stages"])
        spec = resolve(
            variant,
            num_classes=body["num_classes"],
            in_channels=body["in_channels"],
            conventions=conv,
            stages=stages,
        )
    except (KeyError, TypeError, json.JSONDecodeError) as e:
        raise ValueError(f"checkpoint header is malformed: {type(e).__name__}: {e}") from e
    return spec, _read_preprocessing(spec, meta.get("preprocessing"))


def _read_preprocessing(spec: ModelSpec, text: object) -> Preprocessing:
    """The header's preprocessing for `spec` (the family default when absent), every problem one `ValueError` line."""

    def malformed(what: str) -> ValueError:
        return ValueError(f"checkpoint header is malformed: {what}")

    try:
        pre = json.loads(text or "null")
    except (TypeError, json.JSONDecodeError) as e:
        raise malformed(f"preprocessing is not JSON ({type(e).__name__}: {e})") from None
    if pre is None:
        return default_preprocessing(spec)
    if not isinstance(pre, dict):
        raise malformed(f"preprocessing must be a JSON object, got {type(pre).__name__}")
    unknown = [k for k in pre if k not in _FIELDS]
    if unknown:
        names = ", ".join(repr(k) for k in unknown)
        raise malformed(f"preprocessing has unknown field{'s' if len(unknown) > 1 else ''} {names}; "
                        f"its fields are {', '.join(_FIELDS)}")  # fmt: skip
    if "resolution" not in pre:
        raise malformed("preprocessing is missing field 'resolution'")
    problem = _channel_problem(spec, pre.get("mean"), pre.get("std"))  # before the mean-vs-std length check
    if problem:
        raise malformed(problem)
    try:
        preprocessing = Preprocessing(**pre)
    except ValueError as e:
        raise malformed("preprocessing." + str(e).removeprefix("Preprocessing: ")) from None
    problem = _channel_problem(spec, preprocessing.mean, preprocessing.std)  # an absent one took the RGB default
    if problem:
        raise malformed(problem)
    names = preprocessing.class_names
    if names is not None and spec.num_classes and len(names) != spec.num_classes:  # as make_header refuses them
        raise malformed(f"preprocessing.class_names has {len(names)} name(s) for {spec.num_classes} classes")
    return _per_channel(spec, preprocessing)


# --- another library's layout, written by effnet ----------------------------------------------------------------

# `effnet convert --to timm` writes the library's key layout, which carries no conventions: timm reads TF SAME and
# symmetric padding weights alike. The header goes along under these keys (safetensors metadata, which the other
# libraries ignore), so that effnet reads its own exports back as they were written, not as the layout's default.
EXPORT_PREFIX = "effnet."


def make_export_header(spec: ModelSpec, preprocessing: Preprocessing | None, layout: str) -> dict[str, str]:
    """The metadata for `spec`'s weights written in `layout` (a weight source's key layout, e.g. "timm")."""
    header = {"layout": layout, **make_header(spec, preprocessing)}
    return {EXPORT_PREFIX + k: v for k, v in header.items()}


def read_export_header(meta: dict[str, str] | None) -> tuple[str, ModelSpec, Preprocessing] | None:
    """(layout, spec, preprocessing) of a file effnet exported to another library's layout; None for any other.

    Raises:
        ValueError: an export header that is malformed (one line naming the field, as `read_header`).
    """
    if not meta or EXPORT_PREFIX + "layout" not in meta:
        return None
    inner = {k.removeprefix(EXPORT_PREFIX): v for k, v in meta.items() if k.startswith(EXPORT_PREFIX)}
    spec, pre = read_header(inner)
    return inner["layout"], spec, pre


# --- what a caller says about a file against what its header says -----------------------------------------------

# "b3", "efficientnet_b3", "tf_efficientnet_lite0.in1k", and V2's "efficientnet_v2_s" (torchvision),
# "tf_efficientnetv2_b0.in1k" (timm), "v2_s"
_MODEL_NAME = re.compile(r"^(?P<tf>tf_)?(?:efficientnet[_-]?)?(?P<variant>(?:v2_)?[a-z]+\d*)(?:\..*)?$")


def _conventions(c: Conventions) -> str:
    return f"padding {c.padding}, bn eps {c.bn_eps:g}, decay {c.bn_decay:g}"


def contradiction(spec: ModelSpec, *, weight_source: str | None = None, model: str | None = None) -> str | None:
    """Why a weight source or model name given for a file contradicts its header's `spec`, or None.

    A header names the variant and conventions the weights were written with; a caller's name that agrees with them
    is redundant, one that does not would read the weights with another padding or BN eps (or as another variant),
    so it is refused rather than either one silently winning. "effnet" names this library's layout, not conventions.
    """
    if weight_source not in (None, "", "effnet"):
        want = conventions_for(weight_source, spec.name)
        if (want.padding, want.bn_eps, want.bn_decay) != (spec.conv.padding, spec.conv.bn_eps, spec.conv.bn_decay):
            return (
                f"its header says {_conventions(spec.conv)}, but weight source {weight_source!r} means "
                f"{_conventions(want)}; drop the weight source (the header names the conventions)"
            )
    if model:
        m = _MODEL_NAME.match(model.strip().lower())
        variant = m["variant"] if m else model
        if variant != spec.name:
            return f"its header says {spec.name!r}, not {model!r}"
        if m["tf"] and spec.conv.padding != "tf_same":
            return (
                f"its header says {_conventions(spec.conv)}, but {model!r} names TF-ported weights (TF SAME "
                f"padding); pass the bare variant {spec.name!r} or drop the model name"
            )
    return None
