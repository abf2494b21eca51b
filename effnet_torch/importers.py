"""Import (and export) the common PyTorch EfficientNet checkpoint layouts: torchvision, timm, efficientnet_pytorch.

Every layout is mapped onto the twin's own state_dict (DESIGN.md, invariant 2) by walking the resolved spec:
a layout is only a few role -> module-name rules (`LAYOUTS`), never a per-key table. The same walk, run
backwards, exports the twin's weights to torchvision and timm (and efficientnet_pytorch) layouts. All these
libraries store conv weights as OIHW (depthwise (C, 1, k, k)), so no tensor is transposed here.

Reading: safetensors, or `.pth`/`.pt` through `torch.load(weights_only=True)` only; a pickle that needs code
is refused. The variant is inferred from tensor shapes when not given; the source's conventions (padding,
BN eps/decay, activation) and preprocessing (resolution, crop, interpolation, mean/std, class names) go into
the checkpoint header.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as st_save

from effnet_spec import (
    VARIANTS,
    BlockSpec,
    ModelSpec,
    Preprocessing,
    conventions_for,
    default_preprocessing,
    make_header,
    read_header,
    resolve,
)

from .io import mismatch_report, write_atomic

__all__ = [
    "LAYOUTS",
    "ImportError_",
    "ImportResult",
    "detect_layout",
    "export_checkpoint",
    "export_state_dict",
    "import_checkpoint",
    "import_state_dict",
    "infer_variant",
    "key_map",
    "parse_model_name",
    "read_state_dict",
    "source_preprocessing",
    "twin_shapes",
]

IMPORT_SOURCES = ("torchvision", "timm", "efficientnet_pytorch", "effnet")
EXPORT_TARGETS = ("torchvision", "timm", "efficientnet_pytorch")

_BN_LEAVES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_INCEPTION = (0.5, 0.5, 0.5)  # (x - 0.5) / 0.5 on [0, 1]: the [-1, 1] input of TF-ported Lite / AdvProp weights


class ImportError_(ValueError):  # noqa: N801 (trailing underscore: not the builtin ImportError)
    """A checkpoint that cannot be imported: unreadable, unsafe, or not matching the requested variant."""


# --- the twin's modules, from the spec ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Module:
    name: str  # twin module path, e.g. "blocks.3.se.reduce"
    kind: str  # "conv", "conv_bias", "bn" or "linear"
    shape: tuple[int, ...]  # weight shape (OIHW for convs, (out, in) for linear, (C,) for BN)


def _twin_modules(spec: ModelSpec) -> list[_Module]:
    """Every parameterised module of the twin, in forward order."""

    def conv_bn(name: str, cin: int, cout: int, k: int, groups: int = 1) -> list[_Module]:
        return [_Module(f"{name}.conv", "conv", (cout, cin // groups, k, k)), _Module(f"{name}.bn", "bn", (cout,))]

    mods = conv_bn("stem", spec.in_channels, spec.stem_ch, spec.stem_kernel)
    for b in spec.blocks:
        p = f"blocks.{b.index}"
        if b.has_expand:
            mods += conv_bn(f"{p}.expand", b.in_ch, b.mid_ch, 1)
        mods += conv_bn(f"{p}.depthwise", b.mid_ch, b.mid_ch, b.kernel, groups=b.mid_ch)
        if b.se_ch:
            mods.append(_Module(f"{p}.se.reduce", "conv_bias", (b.se_ch, b.mid_ch, 1, 1)))
            mods.append(_Module(f"{p}.se.excite", "conv_bias", (b.mid_ch, b.se_ch, 1, 1)))
        mods += conv_bn(f"{p}.project", b.mid_ch, b.out_ch, 1)
    mods += conv_bn("head", spec.blocks[-1].out_ch, spec.head_ch, 1)
    if spec.num_classes:
        mods.append(_Module("classifier", "linear", (spec.num_classes, spec.head_ch)))
    return mods


def _leaves(m: _Module) -> dict[str, tuple[int, ...]]:
    """leaf name -> shape for one module (torch leaf names: all four libraries use the same ones)."""
    if m.kind == "conv":
        return {"weight": m.shape}
    if m.kind in ("conv_bias", "linear"):
        return {"weight": m.shape, "bias": (m.shape[0],)}
    return {leaf: (() if leaf == "num_batches_tracked" else m.shape) for leaf in _BN_LEAVES}


def twin_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """The twin's state_dict key -> shape for `spec`, computed from the spec alone (no model built)."""
    return {f"{m.name}.{leaf}": s for m in _twin_modules(spec) for leaf, s in _leaves(m).items()}


# --- layouts: how each library names the same modules ----------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Module names of one library, as rules over the spec (role -> name), not a key table."""

    stem: tuple[str, str]  # (conv, bn)
    head: Callable[[ModelSpec], tuple[str, str]]  # (conv, bn)
    classifier: str
    block: Callable[[BlockSpec, int], dict[str, str]]  # (block, repeat within its stage) -> role -> full name


def _torchvision_block(b: BlockSpec, r: int) -> dict[str, str]:
    # features.{stage+1}.{r}.block is a Sequential of [expand], depthwise, [SE], project; conv-BN pairs are .0/.1.
    p = f"features.{b.stage + 1}.{r}.block"
    roles = (["expand"] if b.has_expand else []) + ["depthwise"] + (["se"] if b.se_ch else []) + ["project"]
    names: dict[str, str] = {}
    for j, role in enumerate(roles):
        if role == "se":
            names |= {"se.reduce": f"{p}.{j}.fc1", "se.excite": f"{p}.{j}.fc2"}
        else:
            names |= {f"{role}.conv": f"{p}.{j}.0", f"{role}.bn": f"{p}.{j}.1"}
    return names


# timm: an inverted-residual block names its convs conv_pw (expand) / conv_dw / conv_pwl (project) with bn1..bn3;
# a depthwise-separable block (no expand: stage 0) has conv_dw/bn1 then conv_pw/bn2 (so conv_pw changes role).
_TIMM_IR = {"expand.conv": "conv_pw", "expand.bn": "bn1", "depthwise.conv": "conv_dw", "depthwise.bn": "bn2",
            "project.conv": "conv_pwl", "project.bn": "bn3"}  # fmt: skip
_TIMM_DS = {"depthwise.conv": "conv_dw", "depthwise.bn": "bn1", "project.conv": "conv_pw", "project.bn": "bn2"}
_TIMM_SE = {"se.reduce": "se.conv_reduce", "se.excite": "se.conv_expand"}


def _timm_block(b: BlockSpec, r: int) -> dict[str, str]:
    roles = (_TIMM_IR if b.has_expand else _TIMM_DS) | (_TIMM_SE if b.se_ch else {})
    return {role: f"blocks.{b.stage}.{r}.{name}" for role, name in roles.items()}


_EFFNET_PYTORCH = {"expand.conv": "_expand_conv", "expand.bn": "_bn0", "depthwise.conv": "_depthwise_conv",
                   "depthwise.bn": "_bn1", "se.reduce": "_se_reduce", "se.excite": "_se_expand",
                   "project.conv": "_project_conv", "project.bn": "_bn2"}  # fmt: skip


def _effnet_pytorch_block(b: BlockSpec, r: int) -> dict[str, str]:
    return {role: f"_blocks.{b.index}.{name}" for role, name in _EFFNET_PYTORCH.items()}


def _twin_block(b: BlockSpec, r: int) -> dict[str, str]:
    roles = ("expand.conv", "expand.bn", "depthwise.conv", "depthwise.bn", "se.reduce", "se.excite")
    return {role: f"blocks.{b.index}.{role}" for role in (*roles, "project.conv", "project.bn")}


LAYOUTS: dict[str, Layout] = {
    "torchvision": Layout(
        stem=("features.0.0", "features.0.1"),
        head=lambda s: (f"features.{s.num_stages + 1}.0", f"features.{s.num_stages + 1}.1"),
        classifier="classifier.1",
        block=_torchvision_block,
    ),
    "timm": Layout(
        stem=("conv_stem", "bn1"), head=lambda s: ("conv_head", "bn2"), classifier="classifier", block=_timm_block
    ),  # fmt: skip
    "efficientnet_pytorch": Layout(
        stem=("_conv_stem", "_bn0"),
        head=lambda s: ("_conv_head", "_bn1"),
        classifier="_fc",
        block=_effnet_pytorch_block,
    ),  # fmt: skip
    "effnet": Layout(
        stem=("stem.conv", "stem.bn"),
        head=lambda s: ("head.conv", "head.bn"),
        classifier="classifier",
        block=_twin_block,
    ),  # fmt: skip
}


def key_map(spec: ModelSpec, layout: str) -> dict[str, str]:
    """twin state_dict key -> `layout`'s key, for every tensor of `spec` (a bijection)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of: {', '.join(LAYOUTS)}")
    lay = LAYOUTS[layout]
    names = {"stem.conv": lay.stem[0], "stem.bn": lay.stem[1], "classifier": lay.classifier}
    names |= dict(zip(("head.conv", "head.bn"), lay.head(spec)))
    first_of_stage: dict[int, int] = {}
    for b in spec.blocks:
        first_of_stage.setdefault(b.stage, b.index)
        roles = lay.block(b, b.index - first_of_stage[b.stage])
        for role, name in roles.items():
            names[f"blocks.{b.index}.{role}"] = name
    out = {}
    for m in _twin_modules(spec):
        for leaf in _leaves(m):
            out[f"{m.name}.{leaf}"] = f"{names[m.name]}.{leaf}"
    return out


def detect_layout(keys: Sequence[str]) -> str:
    """Which library wrote a state_dict, from its stem key."""
    markers = {"features.0.0.weight": "torchvision", "conv_stem.weight": "timm",
               "_conv_stem.weight": "efficientnet_pytorch", "stem.conv.weight": "effnet"}  # fmt: skip
    found = [layout for k, layout in markers.items() if k in keys]
    if len(found) != 1:
        sample = ", ".join(sorted(keys)[:5])
        raise ImportError_(
            f"cannot tell which library wrote this checkpoint (keys start: {sample}); "
            f"pass the source explicitly, one of: {', '.join(IMPORT_SOURCES)}"
        )
    return found[0]


# --- model names and the source's conventions / preprocessing ---------------------------------------------------


@dataclass(frozen=True)
class ModelName:
    variant: str  # "b0", "lite3", ...
    tf: bool  # a TensorFlow-ported weight (timm `tf_*`): TF SAME padding, eps 1e-3
    tag: str = ""  # timm pretrained tag after the dot, if any


_NAME = re.compile(r"^(?P<tf>tf_)?(?:efficientnet[_-]?)?(?P<variant>[a-z]+\d+)(?:\.(?P<tag>[\w.-]+))?$")


def parse_model_name(name: str) -> ModelName:
    """ "b0", "lite0", timm's "tf_efficientnet_b3.ns_jft_in1k", efficientnet_pytorch's "efficientnet-b0"."""
    m = _NAME.match(name.strip().lower())
    if not m or m["variant"] not in VARIANTS:
        raise ImportError_(
            f"unknown model {name!r}; expected a variant ({', '.join(VARIANTS)}) or a library name such as "
            "efficientnet_b0, tf_efficientnet_lite0, efficientnet-b3"
        )
    return ModelName(m["variant"], bool(m["tf"]), m["tag"] or "")


def _conventions_source(source: str, tf: bool) -> str:
    if source == "timm":
        return "timm_tf" if tf else "timm"
    return source


# timm's default pretrained cfg per model (timm 1.0.31, `timm.models.get_pretrained_cfg(name)`):
# (input size, crop_pct, interpolation, mean/std). The external parity tests check this table against timm.
_I, _T = "imagenet", "inception"
TIMM_PREPROCESSING: dict[str, tuple[int, float, str, str]] = {
    "efficientnet_b0": (224, 0.875, "bicubic", _I), "efficientnet_b1": (240, 0.9, "bicubic", _T),
    "efficientnet_b2": (256, 0.875, "bicubic", _I), "efficientnet_b3": (288, 0.875, "bicubic", _I),
    "efficientnet_b4": (320, 0.875, "bicubic", _I), "efficientnet_b5": (448, 1.0, "bicubic", _I),
    "efficientnet_b6": (528, 0.942, "bicubic", _I), "efficientnet_b7": (600, 0.949, "bicubic", _I),
    "efficientnet_b8": (672, 0.954, "bicubic", _I), "efficientnet_l2": (800, 0.961, "bicubic", _I),
    "efficientnet_lite0": (224, 0.875, "bicubic", _I), "efficientnet_lite1": (240, 0.882, "bicubic", _I),
    "efficientnet_lite2": (260, 0.89, "bicubic", _I), "efficientnet_lite3": (300, 0.904, "bicubic", _I),
    "efficientnet_lite4": (380, 0.922, "bicubic", _I),
    "tf_efficientnet_b0": (224, 0.875, "bicubic", _I), "tf_efficientnet_b1": (240, 0.882, "bicubic", _I),
    "tf_efficientnet_b2": (260, 0.89, "bicubic", _I), "tf_efficientnet_b3": (300, 0.904, "bicubic", _I),
    "tf_efficientnet_b4": (380, 0.922, "bicubic", _I), "tf_efficientnet_b5": (456, 0.934, "bicubic", _I),
    "tf_efficientnet_b6": (528, 0.942, "bicubic", _I), "tf_efficientnet_b7": (600, 0.949, "bicubic", _I),
    "tf_efficientnet_b8": (672, 0.954, "bicubic", _T), "tf_efficientnet_l2": (475, 0.936, "bicubic", _I),
    "tf_efficientnet_lite0": (224, 0.875, "bicubic", _T), "tf_efficientnet_lite1": (240, 0.882, "bicubic", _T),
    "tf_efficientnet_lite2": (260, 0.89, "bicubic", _T), "tf_efficientnet_lite3": (300, 0.904, "bilinear", _T),
    "tf_efficientnet_lite4": (380, 0.92, "bilinear", _T),
}  # fmt: skip

# torchvision's DEFAULT weights (models/efficientnet.py, torchvision 0.29): (crop_size, resize_size, interpolation).
TORCHVISION_PREPROCESSING: dict[str, tuple[int, int, str]] = {
    "b0": (224, 256, "bicubic"), "b1": (240, 255, "bilinear"), "b2": (288, 288, "bicubic"),
    "b3": (300, 320, "bicubic"), "b4": (380, 384, "bicubic"), "b5": (456, 456, "bicubic"),
    "b6": (528, 528, "bicubic"), "b7": (600, 600, "bicubic"),
}  # fmt: skip


def _imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names shipped in effnet_jax/data (read as a file: no jax import)."""
    from importlib.resources import files

    text = files("effnet_jax").joinpath("data", "imagenet_classes.txt").read_text(encoding="utf-8")
    names = tuple(line for line in text.splitlines() if line)
    if len(names) != 1000:
        raise RuntimeError(f"effnet_jax/data/imagenet_classes.txt holds {len(names)} names, expected 1000")
    return names


def source_preprocessing(source: str, spec: ModelSpec, name: ModelName) -> Preprocessing:
    """How the source library prepares images for weights of this variant (class names when ImageNet-1k)."""
    v = spec.name
    classes = _imagenet_class_names() if spec.num_classes == 1000 else None
    tf_crop = spec.resolution / (spec.resolution + 32)  # TF's eval: center crop with 32 px of padding
    if source == "torchvision" and v in TORCHVISION_PREPROCESSING:
        crop, resize, interp = TORCHVISION_PREPROCESSING[v]
        return Preprocessing(resolution=crop, crop_pct=crop / resize, interpolation=interp, class_names=classes)
    timm_name = ("tf_" if name.tf else "") + f"efficientnet_{v}"
    if source == "timm" and timm_name in TIMM_PREPROCESSING:
        res, crop_pct, interp, norm = TIMM_PREPROCESSING[timm_name]
        if name.tag.startswith("ap"):  # AdvProp weights take [-1, 1] input (timm's `ap` cfgs)
            norm = _T
        mean, std = (_INCEPTION, _INCEPTION) if norm == _T else (_IMAGENET_MEAN, _IMAGENET_STD)
        return Preprocessing(resolution=res, crop_pct=crop_pct, interpolation=interp, mean=mean, std=std,
                             class_names=classes)  # fmt: skip
    if source in ("efficientnet_pytorch", "timm"):
        # TF-ported weights: the native resolution and TF's crop; Lite keeps its family's 127/128 normalisation.
        base = default_preprocessing(spec, classes)
        return replace(base, crop_pct=round(tf_crop, 3))
    return default_preprocessing(spec, classes)


# --- reading files safely ---------------------------------------------------------------------------------------


_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module")  # how training scripts nest a state_dict


def _unwrap(obj: object, path: str) -> dict[str, torch.Tensor]:
    """The tensor dict inside a loaded .pth: itself, or under a usual wrapper key; strips DataParallel's "module."."""
    for _ in range(2):
        if isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            inner = [k for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)]
            if inner:
                obj = obj[inner[0]]
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ImportError_(f"{path}: holds no state_dict of tensors (found {type(obj).__name__})")
    sd = {str(k): v for k, v in obj.items()}
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str] | None]:
    """Read tensors (and safetensors metadata) without executing any code from the file.

    Raises:
        ImportError_: missing, truncated or corrupt file; a pickle that needs code to load.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ImportError_(f"{path}: no such file")
    with open(path, "rb") as f:
        magic = f.read(1)
    is_pickle = magic == b"\x80" or zipfile.is_zipfile(path)  # protocol-2+ pickle, or torch's zip container
    if not path.endswith(".safetensors") and (is_pickle or path.endswith((".pth", ".pt", ".bin", ".ckpt"))):
        return _read_torch(path), None
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            meta = f.metadata()
            return {k: f.get_tensor(k) for k in f.keys()}, meta  # noqa: SIM118 (safe_open is not a Mapping)
    except (SafetensorError, OSError, ValueError) as e:
        raise ImportError_(
            f"{path}: not a readable safetensors file ({e}); it may be truncated or not a checkpoint"
        ) from e


def _read_torch(path: str) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only refuses any global outside torch's tensor allow-list before calling it: nothing ran.
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ImportError_(
            f"{path}: refused: this pickle needs code to load ({first}). effnet only reads tensors "
            "(torch.load(weights_only=True)); re-save the state_dict from trusted code, ideally as safetensors"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as e:
        raise ImportError_(f"{path}: cannot read it as a PyTorch checkpoint; truncated or corrupt? ({e})") from None
    return _unwrap(obj, path)


# --- shapes -> variant ------------------------------------------------------------------------------------------


def _spec_for(variant: str, sd_shapes: Mapping[str, tuple[int, ...]], layout: str, conv_source: str) -> ModelSpec:
    """The spec of `variant` with num_classes / in_channels taken from the checkpoint's own tensors."""
    probe = resolve(variant, num_classes=0)
    kmap = key_map(probe, layout)
    stem = sd_shapes.get(kmap["stem.conv.weight"])
    in_channels = stem[1] if stem and len(stem) == 4 else 3
    cls = sd_shapes.get(f"{LAYOUTS[layout].classifier}.weight")
    num_classes = cls[0] if cls and len(cls) == 2 else 0
    return resolve(variant, num_classes=num_classes, in_channels=in_channels,
                   conventions=conventions_for(conv_source, variant))  # fmt: skip


def _problems(spec: ModelSpec, layout: str, shapes: Mapping[str, tuple[int, ...]]) -> list[str]:
    kmap = key_map(spec, layout)
    expected = {kmap[k]: s for k, s in twin_shapes(spec).items()}
    # Old checkpoints and TF ports may lack BN's counter; it never changes a forward pass, so it may be absent.
    got = dict(shapes)
    for k in expected:
        if k.endswith(".num_batches_tracked") and k not in got:
            got[k] = ()
    return mismatch_report(expected, got)


def _report(problems: list[str], limit: int | None = None) -> str:
    """Problem lines with one line per module (`- a.bn.{weight,bias,...}`), optionally capped at `limit` lines."""
    grouped: dict[tuple[str, str], list[str]] = {}
    lines: list[str | tuple[str, str]] = []
    for line in problems:
        sign, _, key = line.partition(" ")
        if sign in ("-", "+") and "." in key:
            module, leaf = key.rsplit(".", 1)
            if (sign, module) not in grouped:
                grouped[(sign, module)] = []
                lines.append((sign, module))
            grouped[(sign, module)].append(leaf)
        else:
            lines.append(line)
    out = []
    for item in lines:
        if isinstance(item, tuple):
            leaves = grouped[item]
            out.append(f"{item[0]} {item[1]}." + (leaves[0] if len(leaves) == 1 else "{" + ",".join(leaves) + "}"))
        else:
            out.append(item)
    if limit is not None and len(out) > limit:
        out = out[:limit] + [f"... and {len(out) - limit} more"]
    return "\n  " + "\n  ".join(out)


def infer_variant(shapes: Mapping[str, tuple[int, ...]], layout: str, conv_source: str | None = None) -> str:
    """The variant whose tensor names and shapes match exactly.

    Raises:
        ImportError_: none matches; names the closest variant and its differences.
    """
    scored = []
    for v in VARIANTS:
        p = _problems(_spec_for(v, shapes, layout, conv_source or "effnet"), layout, shapes)
        if not p:
            return v
        scored.append((len(p), v, p))
    n, closest, problems = min(scored)
    raise ImportError_(
        f"the checkpoint's shapes match no EfficientNet variant in the {layout} layout; closest is {closest!r} "
        f"with {n} difference(s):" + _report(problems, limit=40)
    )


# --- import / export --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportResult:
    spec: ModelSpec
    state_dict: dict[str, torch.Tensor]  # the twin's keys, float32 / int64, contiguous
    preprocessing: Preprocessing
    source: str


def import_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    source: str | None = None,
    *,
    model: str | None = None,
    preprocessing: Preprocessing | None = None,
) -> ImportResult:
    """Map a library's state_dict onto the twin's names, with the source's conventions and preprocessing.

    Args:
        source: "torchvision", "timm", "efficientnet_pytorch" or "effnet"; detected from the keys when None.
        model: a variant ("b0") or a library model name ("tf_efficientnet_b0", "efficientnet-b3"); inferred from
            the tensor shapes when None. For timm, a `tf_` name selects TF SAME padding and eps 1e-3.
        preprocessing: overrides the source's default preprocessing.
    Raises:
        ImportError_: unknown source, a variant mismatch (every difference listed), or no variant matching.
    """
    sd = dict(state_dict)
    source = source or detect_layout(list(sd))
    if source not in IMPORT_SOURCES:
        raise ImportError_(f"unknown source {source!r}; expected one of: {', '.join(IMPORT_SOURCES)}")
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    name = parse_model_name(model) if model else None
    if source == "timm" and name is None:
        # Plain and tf_ timm weights have identical shapes; without a name assume the non-TF `efficientnet_*`.
        name = ModelName("", False)
    conv_source = _conventions_source(source, bool(name and name.tf))
    variant = name.variant if name and name.variant else infer_variant(shapes, source, conv_source)
    spec = _spec_for(variant, shapes, source, conv_source)
    problems = _problems(spec, source, shapes)
    if problems:
        try:
            hint = f"; its shapes match {infer_variant(shapes, source, conv_source)!r}"
        except ImportError_:
            hint = ""
        try:
            detected = detect_layout(list(sd))
        except ImportError_:
            detected = source
        if detected != source:
            hint = f"; its keys are in the {detected} layout, not {source}"
        raise ImportError_(
            f"checkpoint does not match {variant!r} in the {source} layout{hint}: {len(problems)} problem(s)"
            + _report(problems)
        )
    out = {}
    for twin, theirs in key_map(spec, source).items():
        t = sd.get(theirs)
        if t is None:  # an absent BN counter (allowed above)
            t = torch.zeros((), dtype=torch.int64)
        t = t.detach().to("cpu")
        out[twin] = (t.to(torch.float32) if t.dtype.is_floating_point else t.to(torch.int64)).contiguous()
    pre = preprocessing or source_preprocessing(source, spec, name or ModelName(variant, False))
    return ImportResult(spec, out, pre, source)


def import_checkpoint(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    source: str | None = None,
    model: str | None = None,
    preprocessing: Preprocessing | None = None,
) -> ImportResult:
    """Read a torchvision / timm / efficientnet_pytorch / effnet checkpoint and write an effnet checkpoint.

    `src` is safetensors or a `.pth`/`.pt` read with `weights_only=True`; `out` is written atomically as
    safetensors with the effnet header. An effnet source keeps its own header (spec and preprocessing).
    """
    sd, meta = read_state_dict(src)
    if (source or detect_layout(list(sd))) == "effnet" and meta and "format" in meta:
        spec, pre = read_header(meta)
        if model and parse_model_name(model).variant != spec.name:
            raise ImportError_(f"{os.fspath(src)}: its header says {spec.name!r}, not {model!r}")
        problems = mismatch_report(twin_shapes(spec), {k: tuple(v.shape) for k, v in sd.items()})
        if problems:
            raise ImportError_(f"{os.fspath(src)}: tensors do not match its own header:" + _report(problems))
        result = ImportResult(spec, {k: v.contiguous() for k, v in sd.items()}, preprocessing or pre, "effnet")
    else:
        result = import_state_dict(sd, source, model=model, preprocessing=preprocessing)
    write_atomic(out, st_save(result.state_dict, metadata=make_header(result.spec, result.preprocessing)))
    return result


def export_state_dict(state_dict: Mapping[str, torch.Tensor], spec: ModelSpec, target: str) -> dict[str, torch.Tensor]:
    """The twin's state_dict renamed into `target`'s layout ("torchvision", "timm" or "efficientnet_pytorch").

    The result loads into the library's own model with `strict=True`; the caller builds that model with
    matching conventions (e.g. timm `tf_efficientnet_*` for TF SAME padding).
    """
    if target not in EXPORT_TARGETS:
        raise ValueError(f"unknown export target {target!r}; expected one of: {', '.join(EXPORT_TARGETS)}")
    if target == "torchvision" and (spec.family.name != "efficientnet" or spec.name not in TORCHVISION_PREPROCESSING):
        raise ValueError(f"torchvision has no EfficientNet {spec.name!r}; it offers b0..b7")
    problems = mismatch_report(twin_shapes(spec), {k: tuple(v.shape) for k, v in state_dict.items()})
    if problems:
        raise ValueError(f"state_dict does not match {spec.name!r}:" + _report(problems))
    return {theirs: state_dict[twin] for twin, theirs in key_map(spec, target).items()}


def export_checkpoint(src: str | os.PathLike, out: str | os.PathLike, target: str) -> ModelSpec:
    """Write an effnet checkpoint's weights as `target`'s state_dict (safetensors, atomically)."""
    sd, meta = read_state_dict(src)
    try:
        spec, _ = read_header(meta)
    except ValueError as e:
        raise ImportError_(f"{os.fspath(src)}: {e}") from None
    exported = export_state_dict(sd, spec, target)
    write_atomic(out, st_save({k: v.contiguous() for k, v in exported.items()}))
    return spec
