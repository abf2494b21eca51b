"""What a weight source is: the few facts that tell one library's EfficientNet checkpoints apart.

A source never lists keys: it names each module of the twin contract (`effnet_spec.contract.modules`) in its
library's layout, and the generic machinery in `effnet_torch.importers` derives every key, shape and check
from that (docs/design.md, "Weight sources"). The helpers here are the pieces several sources share.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from effnet_spec import VARIANTS, BlockSpec, ModelSpec, Preprocessing, default_preprocessing, resolve
from effnet_spec.classes import imagenet_class_names
from effnet_spec.contract import Module, modules

__all__ = [
    "ImportError_",
    "ModelName",
    "ModuleNamer",
    "Selected",
    "WeightSource",
    "any_spec",
    "call",
    "mbconv_only",
    "class_names",
    "differences",
    "layout",
    "named",
    "native_preprocessing",
    "parse_model_name",
    "tf_eval_preprocessing",
]


class ImportError_(ValueError):  # noqa: N801 (trailing underscore: not the builtin ImportError)
    """A checkpoint that cannot be imported: unreadable, unsafe, or not matching the requested variant."""


# (spec, contract module, repeat of its block within the stage) -> the module's path in the library's state_dict
ModuleNamer = Callable[[ModelSpec, Module, int], str]


@dataclass(frozen=True)
class ModelName:
    variant: str  # "b0", "lite3", ...; "" when no name was given
    tf: bool  # a TensorFlow-ported weight (timm `tf_*`): TF SAME padding, eps 1e-3
    tag: str = ""  # timm pretrained tag after the dot, if any
    library: bool = False  # a library's model name ("efficientnet_b0", "tf_..."), not a bare variant ("b0")
    given: str = field(default="", compare=False)  # the name as given, for messages


@dataclass(frozen=True)
class WeightSource:
    """One library whose EfficientNet weights effnet reads (and maybe writes)."""

    name: str  # the registry key (its layout), a `--weight-source` choice and `ImportResult.weight_source`
    module_name: ModuleNamer  # how the library names each contract module
    conventions: str  # key of `effnet_spec.conventions.SOURCES` for its weights
    preprocessing: Callable[[ModelSpec, ModelName], Preprocessing]  # how the library prepares images for them
    # Another key of SOURCES for its TF ports: a `tf_` model name selects it, and it is a weight-source name of
    # its own ("this layout, TF conventions").
    tf_conventions: str | None = None
    exports: Callable[[ModelSpec], str | None] | None = None  # None: not an export target; else why a spec is refused
    unnamed_note: str = ""  # what an import without a model name assumed, where names pick the conventions
    # How to build the library's model for an exported spec, and where it would compute otherwise (`loads_as`).
    loader: Callable[[ModelSpec], str] | None = None
    order: int = 5  # place in the registry: CLI choices and error messages list sources by it, then by name
    # Why the layout cannot name every module of a spec, or None when it can (None here: it names them all). A
    # library without V2's fused blocks refuses V2: such a variant is never inferred for, imported or exported.
    holds: Callable[[ModelSpec], str | None] | None = None

    def refusal(self, spec: ModelSpec) -> str | None:
        """Why this layout cannot hold `spec` (None: it can)."""
        return self.holds(spec) if self.holds else None

    @property
    def stem_key(self) -> str:
        """The stem conv's key in this layout: the marker `detect` looks for (every variant has the same one)."""
        probe = _probe()
        stem = next(m for m in modules(probe) if m.part == "stem.conv")
        return f"{self.module_name(probe, stem, 0)}.weight"


@dataclass(frozen=True)
class Selected:
    """A weight source as a name selects it: a layout, and whether its TF conventions are in effect."""

    source: WeightSource
    tf: bool = False  # only where `source.tf_conventions` is set

    @property
    def name(self) -> str:
        """The weight-source name of the conventions in effect: "timm_tf" for timm with TF conventions."""
        return self.source.tf_conventions if self.tf else self.source.name

    @property
    def layout(self) -> str:
        """The registry name of the key layout ("timm" for "timm_tf")."""
        return self.source.name

    @property
    def conventions(self) -> str:
        """The key of `effnet_spec.conventions.SOURCES` in effect."""
        return self.source.tf_conventions if self.tf else self.source.conventions

    @property
    def unnamed_note(self) -> str:
        """What an import without a model name assumed; nothing when the name chose the TF conventions."""
        return "" if self.tf else self.source.unnamed_note

    def for_model(self, name: ModelName) -> Selected:
        """This selection with a model name applied: a `tf_` name selects the TF conventions where there are any.

        Raises:
            ImportError_: a library name of non-TF weights under a TF weight-source name (timm_tf with
                efficientnet_b0): the two contradict each other.
        """
        if self.tf and name.library and not name.tf:
            raise ImportError_(
                f"model {name.given!r} names non-TF weights, but weight source {self.name!r} means TF-ported ones; "
                f"pass tf_efficientnet_{name.variant} or the bare variant {name.variant!r}, or weight source "
                f"{self.layout!r} for the plain conventions"
            )
        return replace(self, tf=True) if name.tf and self.source.tf_conventions else self


@functools.cache
def _probe() -> ModelSpec:
    return resolve("b0")


def layout(
    top: Mapping[str, str] | Callable[[ModelSpec], Mapping[str, str]], block: Callable[[BlockSpec, int, str], str]
) -> ModuleNamer:
    """A `ModuleNamer` from two rules: stem/head/classifier part -> name (or a function of the spec giving that
    table), and (block, repeat within its stage, part) -> name."""

    def module_name(spec: ModelSpec, m: Module, repeat: int) -> str:
        if m.block is None:
            return (top(spec) if callable(top) else top)[m.part]
        return block(spec.blocks[m.block], repeat, m.part)

    return module_name


def named(spec: ModelSpec) -> bool:
    """Whether `spec` is a named variant's architecture (any classes or input channels): what libraries build."""
    v = VARIANTS.get(spec.name)
    ours = spec.variant
    return (
        v is not None
        and (v.width, v.depth, v.family) == (ours.width, ours.depth, ours.family)
        and spec.stages == spec.family.stages  # the family's own table: V1's, or the V2 size's
    )


def call(function: str, *args: str, **kwargs: object) -> str:
    """`function('a', x=1)`, the way a user types it."""
    parts = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()]
    return f"{function}({', '.join(parts)})"


def differences(spec: ModelSpec, padding: str, bn_eps: float) -> str:
    """What a library model with `padding` and `bn_eps` computes otherwise than `spec`'s weights need ("" if none)."""
    out = []
    if padding != spec.conv.padding:
        out.append(f"it pads {padding}, these weights need {spec.conv.padding}")
    if bn_eps != spec.conv.bn_eps:
        out.append(f"its BN eps is {bn_eps:g}, these weights' {spec.conv.bn_eps:g}")
    return f" (its outputs will differ: {'; '.join(out)})" if out else ""


def any_spec(spec: ModelSpec) -> str | None:
    """The export check of a layout that can hold every variant."""
    return None


def mbconv_only(library: str) -> Callable[[ModelSpec], str | None]:
    """The `holds` check of a library that has MBConv blocks only (no EfficientNetV2): it has no names for a
    Fused-MBConv block's modules."""

    def holds(spec: ModelSpec) -> str | None:
        if any(b.fused for b in spec.blocks):
            return (
                f"{library} has no EfficientNetV2: its layout has no names for {spec.name}'s Fused-MBConv blocks; "
                "use the timm or torchvision layout"
            )
        return None

    return holds


# --- model names ------------------------------------------------------------------------------------------------

# V2's names: "v2_s", torchvision's "efficientnet_v2_s", timm's "efficientnetv2_s" and "tf_efficientnetv2_b0.in1k"
_NAME = re.compile(
    r"^(?P<tf>tf_)?(?P<lib>efficientnet[_-]?)?(?P<variant>v2_[a-z]+\d*|[a-z]+\d+)(?:\.(?P<tag>[\w.-]+))?$"
)


def parse_model_name(name: str) -> ModelName:
    """ "b0", "lite0", "v2_s", timm's "tf_efficientnet_b3.ns_jft_in1k" and "tf_efficientnetv2_b0.in1k",
    torchvision's "efficientnet_v2_s", efficientnet_pytorch's "efficientnet-b0"."""
    m = _NAME.match(name.strip().lower())
    if not m or m["variant"] not in VARIANTS:
        raise ImportError_(
            f"unknown model {name!r}; expected a variant ({', '.join(VARIANTS)}) or a library name such as "
            "efficientnet_b0, tf_efficientnet_lite0, efficientnet-b3, efficientnet_v2_s, tf_efficientnetv2_b0"
        )
    return ModelName(m["variant"], bool(m["tf"]), m["tag"] or "", library=bool(m["tf"] or m["lib"]), given=name)


# --- preprocessing ----------------------------------------------------------------------------------------------


def class_names(spec: ModelSpec) -> tuple[str, ...] | None:
    """The ImageNet-1k names for a 1000-class model, else none (the labels are unknown)."""
    return imagenet_class_names() if spec.num_classes == 1000 else None


def native_preprocessing(spec: ModelSpec, name: ModelName | None = None) -> Preprocessing:
    """The family's own preprocessing at the variant's resolution."""
    return default_preprocessing(spec, class_names(spec))


def tf_eval_preprocessing(spec: ModelSpec, name: ModelName | None = None) -> Preprocessing:
    """TF's eval for TF-ported weights: the native resolution, center crop with 32 px of padding."""
    return replace(native_preprocessing(spec), crop_pct=round(spec.resolution / (spec.resolution + 32), 3))
