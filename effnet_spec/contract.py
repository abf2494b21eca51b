"""The twin contract: every tensor of a resolved spec, named and shaped as in the interchange format.

This is the one place that spells the module tree (docs/design.md, "The twin contract"). Both model classes
expose exactly these tensors (a conformance test checks it for every named variant); JAX conversion, strict
loading in both frameworks, every importer and every exporter derive their keys and shapes from `tensors(spec)`.

The interchange format is the PyTorch twin's `state_dict`: torch leaf names (`weight`, `running_mean`, ...)
and torch layouts (OIHW kernels, `(out, in)` linear weights, an int64 BN counter). Each tensor has a *role*
that fixes its layout; the JAX twin maps a role to its own leaf name and axis order in one table.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .resolve import ModelSpec, resolve
from .tables import VARIANTS

__all__ = [
    "ROLES",
    "CheckpointMismatchError",
    "Got",
    "Module",
    "Tensor",
    "MAX_WEIGHT",
    "check_tensors",
    "float_got",
    "header_mismatch",
    "mismatch_error",
    "modules",
    "shapes",
    "tensors",
]

# role -> layout of the tensor in the interchange format
ROLES: dict[str, str] = {
    "conv_kernel": "OIHW",
    "depthwise_kernel": "(C, 1, k, k)",
    "conv_bias": "(C,)",
    "linear_weight": "(out, in)",
    "linear_bias": "(out,)",
    "bn_scale": "(C,)",
    "bn_bias": "(C,)",
    "bn_mean": "(C,)",
    "bn_var": "(C,)",
    "bn_count": "scalar int64",  # num_batches_tracked: named outright, so it is never silently skipped
}

# module kind -> its tensors as (torch leaf, role)
_LEAVES: dict[str, tuple[tuple[str, str], ...]] = {
    "conv": (("weight", "conv_kernel"),),
    "depthwise": (("weight", "depthwise_kernel"),),
    "conv_bias": (("weight", "conv_kernel"), ("bias", "conv_bias")),
    "bn": (
        ("weight", "bn_scale"),
        ("bias", "bn_bias"),
        ("running_mean", "bn_mean"),
        ("running_var", "bn_var"),
        ("num_batches_tracked", "bn_count"),
    ),
    "linear": (("weight", "linear_weight"), ("bias", "linear_bias")),
}


@dataclass(frozen=True)
class Module:
    """One module that holds tensors."""

    name: str  # full path in the twins, e.g. "blocks.3.se.reduce"
    kind: str  # "conv", "depthwise", "conv_bias", "bn" or "linear"
    part: str  # its role in the model: "stem.conv", "expand.bn", "fused.conv", "se.reduce", "classifier", ...
    block: int | None  # index of the MBConv block it belongs to; None for stem, head and classifier
    weight_shape: tuple[int, ...]  # interchange layout (OIHW for convs, (out, in) for linear, (C,) for BN)


@dataclass(frozen=True)
class Tensor:
    """One tensor of the interchange format."""

    name: str  # state_dict key, e.g. "blocks.3.se.reduce.bias"
    role: str  # a key of ROLES
    shape: tuple[int, ...]
    module: Module
    leaf: str  # torch leaf name: "weight", "bias", "running_mean", "running_var", "num_batches_tracked"

    @property
    def layout(self) -> str:
        return ROLES[self.role]

    @property
    def integer(self) -> bool:
        return self.role == "bn_count"


def modules(spec: ModelSpec) -> tuple[Module, ...]:
    """Every module with tensors, in forward order: stem, blocks (expand, depthwise, se, project; a fused block:
    fused, project), head, classifier."""
    out: list[Module] = []

    def conv_bn(part: str, block: int | None, cin: int, cout: int, k: int, depthwise: bool = False) -> None:
        prefix = part if block is None else f"blocks.{block}.{part}"
        kind, shape = ("depthwise", (cout, 1, k, k)) if depthwise else ("conv", (cout, cin, k, k))
        out.append(Module(f"{prefix}.conv", kind, f"{part}.conv", block, shape))
        out.append(Module(f"{prefix}.bn", "bn", f"{part}.bn", block, (cout,)))

    conv_bn("stem", None, spec.in_channels, spec.stem_ch, spec.stem_kernel)
    for b in spec.blocks:
        if b.fused:  # V2's Fused-MBConv: one kxk conv (+ BN + act), then a 1x1 project only when it expanded
            conv_bn("fused", b.index, b.in_ch, b.mid_ch if b.has_expand else b.out_ch, b.kernel)
            if b.has_expand:
                conv_bn("project", b.index, b.mid_ch, b.out_ch, 1)
            continue
        if b.has_expand:
            conv_bn("expand", b.index, b.in_ch, b.mid_ch, 1)
        conv_bn("depthwise", b.index, b.mid_ch, b.mid_ch, b.kernel, depthwise=True)
        if b.se_ch:
            p = f"blocks.{b.index}.se"
            out.append(Module(f"{p}.reduce", "conv_bias", "se.reduce", b.index, (b.se_ch, b.mid_ch, 1, 1)))
            out.append(Module(f"{p}.excite", "conv_bias", "se.excite", b.index, (b.mid_ch, b.se_ch, 1, 1)))
        conv_bn("project", b.index, b.mid_ch, b.out_ch, 1)
    conv_bn("head", None, spec.blocks[-1].out_ch, spec.head_ch, 1)
    if spec.num_classes:
        out.append(Module("classifier", "linear", "classifier", None, (spec.num_classes, spec.head_ch)))
    return tuple(out)


def _leaf_shape(m: Module, role: str) -> tuple[int, ...]:
    if role in ("conv_kernel", "depthwise_kernel", "linear_weight"):
        return m.weight_shape
    if role == "bn_count":
        return ()
    return (m.weight_shape[0],)


def tensors(spec: ModelSpec) -> tuple[Tensor, ...]:
    """Every tensor of a model of `spec`, in forward order, as the interchange format names and shapes it."""
    return tuple(
        Tensor(f"{m.name}.{leaf}", role, _leaf_shape(m, role), m, leaf)
        for m in modules(spec)
        for leaf, role in _LEAVES[m.kind]
    )


def shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """state_dict key -> shape for `spec`, computed from the spec alone (no model built)."""
    return {t.name: t.shape for t in tensors(spec)}


# --- the one mismatch report ----------------------------------------------------------------------------------


class CheckpointMismatchError(ValueError):
    """Tensors that do not match a model's contract: keys, shapes or dtypes. The message lists every problem.

    Raised by both twins' strict loads and by the importers (a subclass there), so one `except` catches all.
    """


@dataclass(frozen=True)
class Got:
    """What a framework reports of one tensor it was given: shape, dtype kind, and what its values allow."""

    shape: tuple[int, ...]
    kind: str  # "float", "int" or "other"
    dtype: str = ""  # the framework's dtype name, for the message
    value: int | None = None  # the value of an integer scalar (the BN counter), to range-check it
    finite: bool | None = None  # a float tensor: whether every value is finite (no NaN or inf); None: not known
    low: float | None = None  # a float tensor's smallest and largest value; None: not known (or empty)
    high: float | None = None


# No trained weight or BN statistic comes near this; values beyond it make the forward pass overflow float32 (the
# logits become inf or NaN), so they are refused where they are read, as NaN is.
MAX_WEIGHT = 1e8


def float_got(shape: tuple[int, ...], dtype: str, low: float | None, high: float | None) -> Got:
    """The `Got` of a float tensor from its smallest and largest value (NaN in either: not finite)."""
    if low is None or high is None:
        return Got(shape, "float", dtype, finite=True)
    finite = math.isfinite(low) and math.isfinite(high)
    return Got(shape, "float", dtype, finite=finite, low=low if finite else None, high=high if finite else None)


def check_tensors(
    expected: Iterable[Tensor],
    got: Mapping[str, Got | tuple[int, ...]],
    *,
    note: Mapping[str, str] | None = None,
) -> list[str]:
    """Problem lines between a contract and what was given: `- missing`, `+ unexpected`, `shape`, `dtype`, `value`.

    `got` maps key -> `Got` (or a bare shape, which skips the dtype and value checks). `note` adds text to a key's
    shape line (the JAX twin names its own layout there). A `value` line is a counter that does not fit int32, a
    float tensor holding NaN or inf (`Got.finite` False) or a value beyond `MAX_WEIGHT`, or a negative BN running
    variance (its square root is NaN). Empty when everything matches.
    """
    want = {t.name: t for t in expected}
    lines = [f"- {k}" for k in sorted(want.keys() - got.keys())]
    lines += [f"+ {k}" for k in sorted(got.keys() - want.keys())]
    for k in sorted(want.keys() & got.keys()):
        t, g = want[k], got[k]
        shape = tuple(g.shape if isinstance(g, Got) else g)
        if shape != t.shape:
            extra = f" ({note[k]})" if note and k in note else ""
            lines.append(f"shape {k}: expected {t.shape} {t.layout}{extra}, got {shape}")
        elif isinstance(g, Got) and (g.kind != ("int" if t.integer else "float")):
            lines.append(
                f"dtype {k}: expected {'an integer' if t.integer else 'a float'} array, got {g.dtype or g.kind}"
            )
        elif isinstance(g, Got) and t.integer and g.value is not None and not 0 <= g.value < 2**31:
            lines.append(f"value {k}: {g.value} does not fit the int32 counter")
        elif isinstance(g, Got) and not t.integer and g.finite is False:
            lines.append(f"value {k}: holds NaN or inf")
        elif isinstance(g, Got) and t.role == "bn_var" and g.low is not None and g.low < 0:
            lines.append(f"value {k}: a negative running variance ({g.low:.3g}); a variance is >= 0")
        elif isinstance(g, Got) and not t.integer and max(abs(g.low or 0.0), abs(g.high or 0.0)) > MAX_WEIGHT:
            big = g.high if abs(g.high or 0.0) >= abs(g.low or 0.0) else g.low
            lines.append(f"value {k}: holds {big:.3g}, beyond {MAX_WEIGHT:.0e} in magnitude (logits would overflow)")
    return lines


def _grouped(lines: list[str], limit: int | None) -> list[str]:
    """`- a.bn.weight`, `- a.bn.bias`, ... -> `- a.bn.{weight,bias,...}`: one line per module; then capped."""
    groups: dict[tuple[str, str], list[str]] = {}
    order: list[str | tuple[str, str]] = []
    for line in lines:
        sign, _, key = line.partition(" ")
        if sign in ("-", "+") and "." in key:
            module, leaf = key.rsplit(".", 1)
            if (sign, module) not in groups:
                groups[(sign, module)] = []
                order.append((sign, module))
            groups[(sign, module)].append(leaf)
        else:
            order.append(line)
    out = []
    for item in order:
        if isinstance(item, tuple):
            leaves = groups[item]
            out.append(f"{item[0]} {item[1]}." + (leaves[0] if len(leaves) == 1 else "{" + ",".join(leaves) + "}"))
        else:
            out.append(item)
    if limit is not None and len(out) > limit:
        out = out[:limit] + [f"... and {len(out) - limit} more"]
    return out


SHOWN = 6  # problem lines a report shows before "... and N more": a wrong variant differs in hundreds of tensors


def mismatch_error(
    what: str, lines: list[str], *, limit: int | None = SHOWN, cls: type[CheckpointMismatchError] | None = None
) -> CheckpointMismatchError:
    """The error for `lines` (from `check_tensors`): a first line `what: N problem(s)`, then one line per module,
    the first `limit` of them (None: all)."""
    shown = _grouped(lines, limit)
    return (cls or CheckpointMismatchError)(f"{what}: {len(lines)} problem(s)\n  " + "\n  ".join(shown))


def _named_variant(spec: ModelSpec, got: Mapping[str, Got | tuple[int, ...]]) -> str | None:
    """The named variant whose tensor names and shapes `got` has (with `spec`'s classes and input channels)."""
    shapes = {k: tuple(g.shape if isinstance(g, Got) else g) for k, g in got.items()}
    for name in VARIANTS:
        other = resolve(name, num_classes=spec.num_classes, in_channels=spec.in_channels)
        if not check_tensors(tensors(other), shapes):
            return name
    return None


def header_mismatch(
    source: str, spec: ModelSpec, got: Mapping[str, Got], *, cls: type[CheckpointMismatchError] | None = None
) -> CheckpointMismatchError | None:
    """The error for tensors that do not fit their own file's header (None when they fit).

    A header that names another variant than its tensors says which one they are, rather than only listing the
    hundreds of tensors in which the two differ.
    """
    problems = check_tensors(tensors(spec), got)
    if not problems:
        return None
    other = _named_variant(spec, got)
    hint = f" (the header names {spec.name!r}; the tensors fit {other!r})" if other and other != spec.name else ""
    return mismatch_error(f"{source}: tensors do not match its own header{hint}", problems, cls=cls)
