"""Import (and export) other libraries' EfficientNet checkpoints: the machinery every weight source shares.

A weight source (`effnet_torch.sources`) only names the twin contract's modules in its library's layout; every
key, shape and check here comes from `effnet_spec.contract`, so an import is exact or refused with each
difference listed (docs/design.md, "Weight sources"). No source module is imported here: they are all reached
through the registry. These libraries all store convs as OIHW (depthwise (C, 1, k, k)), so no tensor is
transposed.

Reading never runs code from a file: safetensors, or `.pth`/`.pt` through `torch.load(weights_only=True)`. The
variant is inferred from the tensor shapes when not named; the source's conventions and preprocessing go into
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

from effnet_spec import VARIANTS, ModelSpec, Preprocessing, conventions_for, make_header, read_header, resolve
from effnet_spec.atomic import write_atomic
from effnet_spec.contract import (
    CheckpointMismatchError,
    Tensor,
    check_tensors,
    header_mismatch,
    mismatch_error,
    modules,
    tensors,
)
from effnet_spec.header import EXPORT_PREFIX, contradiction, make_export_header, read_export_header
from effnet_spec.paths import check_not_source, not_a_file

from . import sources
from .sources.base import ImportError_, ModelName, parse_model_name
from .strict import tensor_info

__all__ = [
    "ImportError_",
    "ImportMismatchError",
    "ImportResult",
    "ModelName",
    "export_checkpoint",
    "export_file",
    "export_state_dict",
    "import_checkpoint",
    "import_exported",
    "import_file",
    "import_own",
    "import_state_dict",
    "infer_variant",
    "source_keys",
    "parse_model_name",
    "read_state_dict",
    "source_preprocessing",
]


_EXPORT_LAYOUT = EXPORT_PREFIX + "layout"  # the metadata key that marks a file effnet wrote in another layout


class ImportMismatchError(ImportError_, CheckpointMismatchError):
    """Tensors that do not fit a weight source's layout of a variant; the message lists every difference."""


# --- the contract in a source's layout --------------------------------------------------------------------------


def source_keys(spec: ModelSpec, weight_source: str) -> dict[str, str]:
    """twin state_dict key -> `weight_source`'s key, for every tensor of `spec` (a bijection).

    Any name of `sources.names()`: "timm_tf" has the timm layout.

    Raises:
        ImportError_: the layout has no names for some of `spec`'s modules (efficientnet_pytorch and V2's fused
            blocks).
    """
    source = sources.get(weight_source).source
    refusal = source.refusal(spec)
    if refusal:
        raise ImportError_(refusal)
    first_of_stage: dict[int, int] = {}
    for b in spec.blocks:
        first_of_stage.setdefault(b.stage, b.index)

    def repeat(block: int | None) -> int:
        return 0 if block is None else block - first_of_stage[spec.blocks[block].stage]

    names = {m.name: source.module_name(spec, m, repeat(m.block)) for m in modules(spec)}
    return {t.name: f"{names[t.module.name]}.{t.leaf}" for t in tensors(spec)}


def _expected(spec: ModelSpec, weight_source: str) -> list[Tensor]:
    """The contract's tensors under `weight_source`'s names."""
    kmap = source_keys(spec, weight_source)
    return [replace(t, name=kmap[t.name]) for t in tensors(spec)]


def _problems(expected: list[Tensor], got: Mapping[str, tuple[int, ...]]) -> list[str]:
    # Old checkpoints and TF ports may lack BN's counter; it never changes a forward pass, so it may be absent.
    got = dict(got)
    for t in expected:
        if t.role == "bn_count":
            got.setdefault(t.name, ())
    return check_tensors(expected, got)


# --- shapes -> variant ------------------------------------------------------------------------------------------


def _key(spec: ModelSpec, part: str, role: str) -> str:
    """The twin key of the tensor of module part `part` (e.g. "stem.conv") with role `role`."""
    return next(t.name for t in tensors(spec) if t.module.part == part and t.role == role)


def _spec_for(
    variant: str, sd_shapes: Mapping[str, tuple[int, ...]], weight_source: str, conventions: str
) -> ModelSpec:
    """The spec of `variant` with num_classes / in_channels taken from the checkpoint's own tensors."""
    probe = resolve(variant, num_classes=1)
    kmap = source_keys(probe, weight_source)
    stem = sd_shapes.get(kmap[_key(probe, "stem.conv", "conv_kernel")])  # OIHW: I is in_channels
    in_channels = stem[1] if stem and len(stem) == 4 else 3
    cls = sd_shapes.get(kmap[_key(probe, "classifier", "linear_weight")])  # (out, in): out is num_classes
    num_classes = cls[0] if cls and len(cls) == 2 else 0
    return resolve(variant, num_classes=num_classes, in_channels=in_channels,
                   conventions=conventions_for(conventions, variant))  # fmt: skip


def infer_variant(shapes: Mapping[str, tuple[int, ...]], weight_source: str, conventions: str | None = None) -> str:
    """The variant whose tensor names and shapes match exactly in `weight_source`'s layout.

    Args:
        conventions: a key of `effnet_spec.conventions.SOURCES` (shapes do not depend on it).
    Raises:
        ImportMismatchError: none matches; names the closest variant and its differences.
    """
    source, scored = sources.get(weight_source).source, []
    for v in VARIANTS:
        if source.refusal(resolve(v, num_classes=1)):  # a variant the layout cannot name (V2 in efficientnet_pytorch)
            continue
        p = _problems(_expected(_spec_for(v, shapes, weight_source, conventions or "effnet"), weight_source), shapes)
        if not p:
            return v
        scored.append((len(p), v, p))
    if not scored:  # a layout that can hold no variant at all: nothing to be closest to
        raise ImportMismatchError(f"the {sources.get(weight_source).layout} layout holds no EfficientNet variant")
    _, closest, problems = min(scored)
    raise mismatch_error(
        f"the checkpoint's shapes match no EfficientNet variant in the {sources.get(weight_source).layout} layout; "
        f"closest is {closest!r}",
        problems,
        cls=ImportMismatchError,
    )


def source_preprocessing(weight_source: str, spec: ModelSpec, name: ModelName) -> Preprocessing:
    """How the source library prepares images for weights of this variant (class names when ImageNet-1k).

    A TF-conventions name ("timm_tf") means TF-ported weights, as a `tf_` model name does.
    """
    selected = sources.get(weight_source)
    return selected.source.preprocessing(spec, replace(name, tf=True) if selected.tf else name)


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
    problem = not_a_file(path)  # "no such file", a directory, or /dev/zero or a pipe (never opened: it could block)
    if problem:
        raise ImportError_(f"{path}: {problem}")
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
        detail = str(e).split("WeightsUnpickler error:", 1)[-1].strip().splitlines()
        if "global" not in str(e).lower():  # not a refused global: bytes the unpickler cannot parse
            raise ImportError_(
                f"{path}: cannot read it as a PyTorch checkpoint; truncated or corrupt? ({detail[0] if detail else e})"
            ) from None
        # weights_only refuses any global outside torch's tensor allow-list before calling it: nothing ran.
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        what = f"it names {found[1]}" if found else str(e).strip().splitlines()[0]
        raise ImportError_(
            f"{path}: refused: this pickle needs code to load ({what}). effnet only reads tensors "
            "(torch.load(weights_only=True)); re-save the state_dict from trusted code, ideally as safetensors"
        ) from None
    except Exception as e:  # noqa: BLE001 (a corrupt pickle raises anything: IndexError, KeyError, EOFError, ...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ImportError_(f"{path}: cannot read it as a PyTorch checkpoint; truncated or corrupt? ({first})") from None
    return _unwrap(obj, path)


# --- import / export --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportResult:
    spec: ModelSpec
    state_dict: dict[str, torch.Tensor]  # the twin's keys, float32 / int64, contiguous
    preprocessing: Preprocessing
    weight_source: str
    note: str = ""  # what the import assumed that the file and the names given did not say ("" when nothing)


def _mismatch_hint(keys: Sequence[str], shapes: Mapping[str, tuple[int, ...]], weight_source: str, conv: str) -> str:
    """Why a checkpoint may not fit: it is in another layout, or it is another variant."""
    layout = sources.get(weight_source).layout
    try:
        detected = sources.detect(keys)
    except ImportError_:
        detected = layout
    if detected != layout:
        return f"; its keys are in the {detected} layout, not {layout}"
    try:
        return f"; its shapes match {infer_variant(shapes, weight_source, conv)!r}"
    except ImportError_:
        return ""


def import_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    weight_source: str | None = None,
    *,
    model: str | None = None,
    preprocessing: Preprocessing | None = None,
) -> ImportResult:
    """Map a library's state_dict onto the twin's names, with the source's conventions and preprocessing.

    Args:
        weight_source: a name of `effnet_torch.sources.names()` ("torchvision", "timm", "timm_tf", ...); the
            layout is detected from the keys when None. "timm_tf" is the timm layout with TF conventions.
        model: a variant ("b0") or a library model name ("tf_efficientnet_b0", "efficientnet-b3"); inferred from
            the tensor shapes when None. For timm, a `tf_` name selects TF SAME padding and eps 1e-3 (as
            "timm_tf" does); a non-TF library name contradicts "timm_tf".
        preprocessing: overrides the source's default preprocessing.
    Returns:
        An `ImportResult` whose `weight_source` names the conventions in effect ("timm_tf" for TF-ported timm
        weights, whether the source name or the model name said so).
    Raises:
        ImportError_: unknown source, an undetectable layout, a model name contradicting the source;
            `ImportMismatchError` (also a `CheckpointMismatchError`) for a variant mismatch (every difference
            listed), no variant matching, or a float tensor holding NaN or inf.
    """
    sd = dict(state_dict)
    name = parse_model_name(model) if model else ModelName("", False)
    selected = sources.get(weight_source or sources.detect(sd)).for_model(name)
    weight_source, layout, conv = selected.name, selected.layout, selected.conventions
    name = replace(name, tf=name.tf or selected.tf)
    # Shapes only: dtypes are the contract's after the copy below (a half-precision or float-counter file imports).
    sd_shapes = {k: tuple(v.shape) for k, v in sd.items()}
    variant = name.variant or infer_variant(sd_shapes, weight_source, conv)
    spec = _spec_for(variant, sd_shapes, weight_source, conv)
    what = f"checkpoint does not match {variant!r} in the {layout} layout"
    out = _twin_state(sd, spec, layout, what, lambda: _mismatch_hint(list(sd), sd_shapes, weight_source, conv))
    pre = preprocessing or selected.source.preprocessing(spec, replace(name, variant=variant))
    return ImportResult(spec, out, pre, weight_source, "" if model else selected.unnamed_note)


def _twin_state(
    sd: Mapping[str, torch.Tensor], spec: ModelSpec, layout: str, what: str, hint: Callable[[], str] = lambda: ""
) -> dict[str, torch.Tensor]:
    """`sd`, in `layout`'s names, as the twin's state_dict of `spec`: float32 / int64, or refused with every problem.

    `hint` adds to the first line of a shape mismatch (why the file may not fit).
    """
    expected = _expected(spec, layout)  # the contract under the source's names, in the contract's order
    problems = _problems(expected, {k: tuple(v.shape) for k, v in sd.items()})
    if problems:
        raise mismatch_error(f"{what}{hint()}", problems, cls=ImportMismatchError)
    pairs = list(zip(tensors(spec), expected))  # (twin tensor, the same tensor under the source's name)
    out = {}
    for t, theirs in pairs:
        v = sd.get(theirs.name)
        if v is None:  # an absent BN counter (allowed above)
            v = torch.zeros((), dtype=torch.int64)
        out[t.name] = v.detach().to("cpu", torch.int64 if t.integer else torch.float32).contiguous()
    # The values, in the contract's dtypes now: NaN or inf (or a value float32 cannot hold) is refused, by its key.
    problems = check_tensors(expected, {theirs.name: tensor_info(out[t.name]) for t, theirs in pairs})
    if problems:
        raise mismatch_error(what, problems, cls=ImportMismatchError)
    return out


def _agrees_with_header(src: str, spec: ModelSpec, weight_source: str | None, model: str | None) -> None:
    """A weight source or model name given for a file with a header (effnet's own or its export header) must agree
    with the header's spec (`effnet_spec.header.contradiction`), or the import is refused naming the file."""
    problem = contradiction(spec, weight_source=weight_source, model=model)
    if problem:
        raise ImportError_(f"{src}: {problem}")


def import_own(
    state_dict: Mapping[str, torch.Tensor],
    meta: Mapping[str, str],
    src: str | os.PathLike,
    *,
    model: str | None = None,
    weight_source: str | None = None,
) -> ImportResult:
    """An effnet checkpoint's tensors checked against its own header (spec and preprocessing come from there).

    Raises:
        ImportError_: a malformed header, a `model` or `weight_source` that contradicts it (another variant, other
            conventions); `ImportMismatchError` for tensors that do not fit the header.
    """
    src = os.fspath(src)
    try:
        spec, pre = read_header(dict(meta))
    except ValueError as e:
        raise ImportError_(f"{src}: {e}") from None
    _agrees_with_header(src, spec, weight_source, model)
    error = header_mismatch(src, spec, {k: tensor_info(v) for k, v in state_dict.items()}, cls=ImportMismatchError)
    if error:
        raise error
    return ImportResult(spec, {k: v.contiguous() for k, v in state_dict.items()}, pre, "effnet")


def import_exported(
    state_dict: Mapping[str, torch.Tensor],
    meta: Mapping[str, str],
    src: str | os.PathLike,
    *,
    model: str | None = None,
    weight_source: str | None = None,
) -> ImportResult:
    """A file effnet wrote in another library's layout (`effnet convert --to`), read back with the spec, conventions
    and preprocessing it was written with (its export header), not the layout's defaults.

    Raises:
        ImportError_: a malformed export header, a `weight_source` of another layout or conventions, a `model` of
            another variant; `ImportMismatchError` for tensors that do not fit the header.
    """
    src = os.fspath(src)
    try:
        layout, spec, pre = read_export_header(dict(meta))
        sources.get(layout)
    except ValueError as e:
        raise ImportError_(f"{src}: its effnet export header: {e}") from None
    if weight_source and sources.get(weight_source).layout != layout:
        raise ImportError_(
            f"{src}: effnet wrote it in the {layout} layout (its header says so), not {weight_source}'s; "
            "drop the weight source"
        )
    _agrees_with_header(src, spec, weight_source, model)
    what = f"{src}: tensors do not match its own header ({spec.name} in the {layout} layout)"
    return ImportResult(spec, _twin_state(state_dict, spec, layout, what), pre, layout)


def import_file(
    state_dict: Mapping[str, torch.Tensor],
    meta: Mapping[str, str] | None,
    src: str | os.PathLike,
    *,
    weight_source: str | None = None,
    model: str | None = None,
    preprocessing: Preprocessing | None = None,
) -> ImportResult:
    """A file's tensors (from `read_state_dict`) as the twin's: by its effnet header, by the header effnet wrote
    beside another library's layout, or else by that library's layout and the names given.

    A header names the model and conventions, so a weight source or model name given for such a file must agree
    with it (`effnet_spec.header.contradiction`); `preprocessing` replaces the file's or the source's.
    """
    if meta and "format" in meta:
        r = import_own(state_dict, meta, src, model=model, weight_source=weight_source)
    elif meta and _EXPORT_LAYOUT in meta:
        r = import_exported(state_dict, meta, src, model=model, weight_source=weight_source)
    else:
        return import_state_dict(state_dict, weight_source, model=model, preprocessing=preprocessing)
    return replace(r, preprocessing=preprocessing or r.preprocessing)


def import_checkpoint(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    weight_source: str | None = None,
    model: str | None = None,
    preprocessing: Preprocessing | None = None,
) -> ImportResult:
    """Read a checkpoint of any weight source in `sources.names()` and write an effnet checkpoint.

    `src` is safetensors or a `.pth`/`.pt` read with `weights_only=True`; `out` is written atomically as
    safetensors with the effnet header. An effnet checkpoint keeps its own header (spec and preprocessing), and so
    does one effnet exported to another layout (`import_file`).
    `out` that is `src` (a path, a symbolic or hard link) is refused (ValueError): it would replace the input.
    """
    check_not_source(src, out)
    sd, meta = read_state_dict(src)
    result = import_file(sd, meta, src, weight_source=weight_source, model=model, preprocessing=preprocessing)
    write_atomic(out, st_save(result.state_dict, metadata=make_header(result.spec, result.preprocessing)))
    return result


def export_state_dict(state_dict: Mapping[str, torch.Tensor], spec: ModelSpec, target: str) -> dict[str, torch.Tensor]:
    """The twin's state_dict renamed into `target`'s layout (one of `sources.export_targets()`).

    The result loads into the library's own model with `strict=True`; the caller builds that model with
    matching conventions (e.g. timm `tf_efficientnet_*` for TF SAME padding).

    Raises:
        ValueError: an unknown target, a variant the target has no model for; `CheckpointMismatchError` when
            `state_dict` is not `spec`'s contract.
    """
    targets = sources.export_targets()
    if target not in targets:
        raise ValueError(f"unknown export target {target!r}; expected one of: {', '.join(targets)}")
    source = sources.get(target).source
    refusal = source.refusal(spec) or source.exports(spec)
    if refusal:
        raise ValueError(refusal)
    problems = check_tensors(tensors(spec), {k: tensor_info(v) for k, v in state_dict.items()})
    if problems:
        raise mismatch_error(f"state_dict does not match {spec.name!r}", problems)
    return {theirs: state_dict[twin] for twin, theirs in source_keys(spec, target).items()}


def export_file(
    out: str | os.PathLike,
    state_dict: Mapping[str, torch.Tensor],
    spec: ModelSpec,
    preprocessing: Preprocessing | None,
    target: str,
) -> None:
    """Write the twin's `state_dict` as `target`'s (safetensors, atomically), with the effnet header under
    `effnet.*` metadata keys, which the target library ignores and effnet reads back (`import_exported`)."""
    exported = export_state_dict(state_dict, spec, target)
    meta = make_export_header(spec, preprocessing, sources.get(target).layout)
    write_atomic(out, st_save({k: v.contiguous() for k, v in exported.items()}, metadata=meta))


def export_checkpoint(src: str | os.PathLike, out: str | os.PathLike, target: str) -> tuple[ModelSpec, Preprocessing]:
    """Write an effnet checkpoint's weights as `target`'s state_dict (safetensors, atomically); see `export_file`.

    Returns the checkpoint's spec and preprocessing (what the target library must build and feed). `out` that is
    `src` is refused as in `import_checkpoint`.
    """
    check_not_source(src, out)
    sd, meta = read_state_dict(src)
    r = import_own(sd, meta or {}, src)  # the header read, and the tensors checked against it
    export_file(out, r.state_dict, r.spec, r.preprocessing, target)
    return r.spec, r.preprocessing
