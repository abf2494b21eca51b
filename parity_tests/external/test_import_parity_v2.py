"""EfficientNetV2 against the real libraries (issue 27): torchvision `efficientnet_v2_{s,m,l}`, timm
`tf_efficientnetv2_{s,m,l,xl,b0..b3}` and timm's untrained `efficientnetv2_{s,m,l,xl}`.

Each library's own model, built with random weights (no downloads), is the reference: its state_dict names and
shapes are the layout the importer derives from the spec, its parameter count is the issue's, its logits are the
torch twin's after an import with the variant inferred from the shapes, and an export back loads with
`strict=True` and gives the same logits. The JAX leg of `test_import_parity.check_import` (the imported file in the
JAX twin, its logits against the library's) runs for v2_b0 and v2_s (`JAX_LEG`).

Run with `bash .ci/external` (it builds .venv-ext with those libraries); `-m "not slow"` for the quick group.
"""

from __future__ import annotations

import os
import tempfile

import pytest
import timm
import torch
import torchvision
from test_import_parity import (
    _JAX_CHECKED,
    HAS_JAX_CONVERT,
    JAX_LEG,
    LOGITS_ATOL,
    _input,
    _jax_logits,
    _max_diff,
    randomize_bn_,
)

from effnet_spec import count_params, resolve
from effnet_spec.contract import shapes
from effnet_torch import EfficientNet, load_state_dict_checked
from effnet_torch.importers import (
    ModelName,
    export_state_dict,
    import_checkpoint,
    import_state_dict,
    source_keys,
    source_preprocessing,
)

# The issue's counts (1000 classes), which torchvision's weight meta and timm's models agree on.
PARAMS = {"v2_s": 21_458_488, "v2_m": 54_139_356, "v2_l": 118_515_272, "v2_xl": 208_119_808,
          "v2_b0": 7_139_704, "v2_b1": 8_141_052, "v2_b2": 10_096_086, "v2_b3": 14_358_406}  # fmt: skip
TORCHVISION = ("v2_s", "v2_m", "v2_l")
TIMM_TF = tuple(PARAMS)
TIMM_PLAIN = ("v2_s", "v2_m", "v2_l", "v2_xl")  # timm builds no plain efficientnetv2_b*


def _slow(variant: str):
    # M, L and XL hold 54-208 M parameters: seconds each to build and run on 2 cores; CI runs them as `-m slow`.
    return pytest.mark.slow if variant in ("v2_m", "v2_l", "v2_xl") else ()


def _params(variants):
    return [pytest.param(v, marks=_slow(v), id=v) for v in variants]


def _torchvision(variant: str) -> torch.nn.Module:
    return getattr(torchvision.models, f"efficientnet_{variant}")(weights=None)


def _timm(variant: str, tf: bool) -> torch.nn.Module:
    return timm.create_model(f"{'tf_' if tf else ''}efficientnetv2_{variant[3:]}", pretrained=False)


# --- layout and parameter counts: the library's module tree on the meta device (no storage, so XL is instant) ---


@pytest.mark.parametrize(
    "variant, weight_source, build",
    [(v, "torchvision", lambda v: _torchvision(v)) for v in TORCHVISION]
    + [(v, "timm", lambda v: _timm(v, tf=True)) for v in TIMM_TF]
    + [(v, "timm", lambda v: _timm(v, tf=False)) for v in TIMM_PLAIN],
    ids=[f"torchvision-{v}" for v in TORCHVISION]
    + [f"timm_tf-{v}" for v in TIMM_TF]
    + [f"timm-{v}" for v in TIMM_PLAIN],
)
def test_library_state_dict_is_the_layout_and_counts_are_the_issues(variant, weight_source, build):
    with torch.device("meta"):
        lib = build(variant)
    theirs = {k: tuple(v.shape) for k, v in lib.state_dict().items()}
    spec = resolve(variant)
    kmap = source_keys(spec, weight_source)
    ours = {kmap[k]: s for k, s in shapes(spec).items()}
    assert sorted(set(theirs) ^ set(ours)) == [], "names the library has and the layout lacks, or the other way"
    assert theirs == ours
    assert sum(p.numel() for p in lib.parameters()) == count_params(spec) == PARAMS[variant]


# --- import: random library weights -> twin, variant inferred from the shapes, logits equal ---------------------


def _check_import(lib: torch.nn.Module, weight_source: str, model: str | None, variant: str, res: int = 64):
    """The twin's logits on `lib`'s imported weights equal `lib`'s own (float32, 1e-4 as for V1: the same ops in
    the same order give ~1e-6 or exactly 0; a wrong padding or eps moves them by far more, see the last test)."""
    torch.manual_seed(0)
    randomize_bn_(lib, seed=1)
    x = _input(res)
    with torch.no_grad():
        ref = lib(x)
    assert torch.isfinite(ref).all() and ref.std() > 1e-2, f"{variant}: degenerate reference logits"
    r = import_state_dict(lib.state_dict(), weight_source, model=model)
    assert r.spec.name == variant, f"imported as {r.spec.name}, expected {variant}"
    twin = EfficientNet(r.spec).eval()
    load_state_dict_checked(twin, r.state_dict)
    with torch.no_grad():
        d = _max_diff(ref, twin(x))
    assert d <= LOGITS_ATOL, f"{weight_source} {model or variant}: torch twin max|diff| {d:.2e} > {LOGITS_ATOL}"
    if HAS_JAX_CONVERT and variant in JAX_LEG and r.spec not in _JAX_CHECKED:  # the file, then the JAX twin
        _JAX_CHECKED.add(r.spec)
        with tempfile.TemporaryDirectory() as tmp:
            src, out = os.path.join(tmp, "lib.pth"), os.path.join(tmp, "effnet.safetensors")
            torch.save(lib.state_dict(), src)
            import_checkpoint(src, out, weight_source=weight_source, model=model)
            d = _max_diff(ref, _jax_logits(out, x))
        assert d <= LOGITS_ATOL, f"{weight_source} {model or variant}: JAX max|diff| {d:.2e} > {LOGITS_ATOL}"
    return r


@pytest.mark.parametrize("variant", _params(TORCHVISION))
def test_torchvision_v2(variant):
    # No name: layout and variant from the keys and shapes; torchvision's V2 eps 1e-3 from the variant alone.
    r = _check_import(_torchvision(variant), None, None, variant)
    assert (r.weight_source, r.spec.conv.padding, r.spec.conv.bn_eps) == ("torchvision", "symmetric", 1e-3)


@pytest.mark.parametrize("variant", _params(TIMM_TF))
def test_timm_tf_v2(variant):
    # 65 px: odd, so TF SAME pads asymmetrically at every stride-2 conv (fused ones included).
    name = f"tf_efficientnetv2_{variant[3:]}"
    r = _check_import(_timm(variant, tf=True), "timm", name, variant, res=65)
    assert (r.weight_source, r.spec.conv.padding, r.spec.conv.bn_eps) == ("timm_tf", "tf_same", 1e-3)


@pytest.mark.parametrize("variant", _params(TIMM_PLAIN))
def test_timm_plain_v2(variant):
    r = _check_import(_timm(variant, tf=False), "timm", f"efficientnetv2_{variant[3:]}", variant)
    assert (r.weight_source, r.spec.conv.padding, r.spec.conv.bn_eps) == ("timm", "symmetric", 1e-5)


def test_v2_wrong_conventions_are_caught():
    """The check is sensitive for V2 too: TF-ported weights imported with plain conventions differ."""
    lib = randomize_bn_(_timm("v2_b0", tf=True), seed=6)
    r = import_state_dict(lib.state_dict(), "timm", model="v2_b0")  # a bare variant: plain timm conventions
    twin = EfficientNet(r.spec).eval()
    load_state_dict_checked(twin, r.state_dict)
    x = _input(65)
    with torch.no_grad():
        assert _max_diff(lib(x), twin(x)) > 100 * LOGITS_ATOL


# --- export: the twin's V2 weights load strictly into the library and give its logits ---------------------------


@pytest.mark.parametrize(
    "variant, weight_source, target, build",
    [
        ("v2_s", "torchvision", "torchvision", lambda: _torchvision("v2_s")),
        ("v2_b0", "timm_tf", "timm", lambda: _timm("v2_b0", tf=True)),
        ("v2_b3", "timm_tf", "timm", lambda: _timm("v2_b3", tf=True)),
        ("v2_s", "timm", "timm", lambda: _timm("v2_s", tf=False)),
    ],
    ids=["torchvision-v2_s", "timm_tf-v2_b0", "timm_tf-v2_b3", "timm-v2_s"],
)
def test_v2_export_loads_strict_and_matches(variant, weight_source, target, build):
    torch.manual_seed(4)
    twin = randomize_bn_(EfficientNet.from_name(variant, weight_source=weight_source), seed=4)
    lib = build().eval()
    lib.load_state_dict(export_state_dict(twin.state_dict(), twin.spec, target), strict=True)
    x = _input(65, seed=5)
    with torch.no_grad():
        d = _max_diff(lib(x), twin(x))
    assert d <= LOGITS_ATOL, f"export {variant} -> {target}: max|diff| {d:.2e}"


# --- preprocessing: torchvision's V2 weights' transforms (timm's rows are checked by test_import_parity) ---------


@pytest.mark.parametrize("variant", TORCHVISION)
def test_torchvision_v2_preprocessing_matches_weights_meta(variant):
    weights = torchvision.models.get_model_weights(f"efficientnet_{variant}").DEFAULT
    t = weights.transforms()
    pre = source_preprocessing("torchvision", resolve(variant), ModelName(variant, False))
    assert pre.resolution == t.crop_size[0]
    assert round(pre.resolution / pre.crop_pct) == t.resize_size[0]
    assert pre.interpolation == t.interpolation.value
    assert pre.mean == tuple(t.mean) and pre.std == tuple(t.std)
    assert pre.class_names == tuple(weights.meta["categories"])
    assert weights.meta["num_params"] == PARAMS[variant]
