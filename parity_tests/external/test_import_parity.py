"""Import parity against the real libraries: torchvision, timm and efficientnet_pytorch (issue 6).

Each case builds the library's own model with random weights (no downloads), puts every BatchNorm in a
non-trivial state, imports its state_dict, and compares the library's logits with the torch twin's and with
the JAX model's (after the safetensors round trip). Big variants run at 64 px: parity does not depend on the
resolution, and TF SAME padding still meets stride-2 convs on even sizes (the asymmetric case).

Run with `bash .ci/external` (it builds .venv-ext with those libraries); `-m "not slow"` for the quick group.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import timm
import torch
import torchvision
from efficientnet_pytorch import EfficientNet as LukeEfficientNet

from effnet_torch import EfficientNet, load_state_dict_checked
from effnet_torch.importers import export_state_dict, import_checkpoint, import_state_dict

# float32 end to end; the same weights and the same op order give ~1e-6 differences through 50+ blocks,
# so 1e-4 leaves room for different conv algorithms (torch vs XLA) without hiding a wrong padding or eps.
LOGITS_ATOL = 1e-4

HAS_JAX_CONVERT = importlib.util.find_spec("effnet_jax.weights") is not None
B_VARIANTS = [f"b{i}" for i in range(8)]
LITE_VARIANTS = [f"lite{i}" for i in range(5)]


def _res(variant: str) -> int:
    return 224 if variant in ("b0", "lite0") else 64


BIG = ("b5", "b6", "b7", "lite3", "lite4")


def _slow(variant: str):
    # The group stays under ~6 min on 2 cores without these; CI runs them as their own `-m slow` step.
    return pytest.mark.slow if variant in BIG else ()


# The JAX leg (file -> NNX -> jitted forward: seconds of XLA compile per network on 2 cores) runs for b0 and lite0
# and V2's two named models (v2_b0, v2_s) only, once per distinct spec (torchvision b0 and timm efficientnet_b0 give
# the same spec, efficientnet_pytorch b0 the same as timm tf_efficientnet_b0): one per convention family (symmetric
# or TF SAME padding, SiLU or ReLU6, MBConv or Fused-MBConv). Every other variant reaches JAX by the same path (the
# importer's file, then effnet_jax.weights), and the JAX model equals the torch twin for every variant (both paddings
# per family) in parity_tests/test_eval_parity.py, so each variant's torch-twin leg (the importer's mapping and
# conventions for that variant) is what is left to prove here.
JAX_LEG = ("b0", "lite0", "v2_b0", "v2_s")
_JAX_CHECKED: set = set()


def randomize_bn_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Non-trivial BN affine and running statistics, so eps and every running-stat leaf matter.

    Variances are log-uniform down to 1e-3, where eps 1e-3 vs 1e-5 changes a channel's gain by up to 1.4x;
    gamma is scaled by sqrt(var) so that each BN's gain stays in [0.5, 1.2] and 50 blocks do not overflow.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                c = m.num_features
                var = 10 ** (torch.rand(c, generator=g) * 3 - 3)
                gain = torch.rand(c, generator=g) * 0.7 + 0.5
                m.running_var.copy_(var)
                m.weight.copy_(gain * torch.sqrt(var + 1e-4))
                m.bias.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
    return model.eval()


def _input(res: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, res, res, generator=torch.Generator().manual_seed(seed))


def _max_diff(a: torch.Tensor, b) -> float:
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))


def check_import(lib_model: torch.nn.Module, weight_source: str, model_name: str | None, variant: str, tmp_path):
    """Import `lib_model`'s weights; twin and JAX logits must equal the library's own."""
    torch.manual_seed(0)
    randomize_bn_(lib_model, seed=1)
    x = _input(_res(variant))
    with torch.no_grad():
        ref = lib_model(x)
    assert torch.isfinite(ref).all() and ref.std() > 1e-2, f"{weight_source} {model_name}: degenerate reference logits"
    sd = lib_model.state_dict()
    result = import_state_dict(sd, weight_source, model=model_name)
    assert result.spec.name == variant, (
        f"{weight_source} {model_name}: imported as {result.spec.name}, expected {variant}"
    )

    twin = EfficientNet(result.spec).eval()
    load_state_dict_checked(twin, result.state_dict)
    with torch.no_grad():
        got = twin(x)
    d = _max_diff(ref, got)
    assert d <= LOGITS_ATOL, f"{weight_source} {model_name or variant}: torch twin max|diff| {d:.2e} > {LOGITS_ATOL}"

    # Through the file: save with torch.save (a .pth) to exercise the safe reader, then convert to effnet format.
    src = tmp_path / "lib.pth"
    torch.save(sd, src)
    out = tmp_path / "effnet.safetensors"
    import_checkpoint(src, out, weight_source=weight_source, model=model_name)
    if HAS_JAX_CONVERT and variant in JAX_LEG and result.spec not in _JAX_CHECKED:
        _JAX_CHECKED.add(result.spec)
        d = _max_diff(ref, _jax_logits(out, x))
        assert d <= LOGITS_ATOL, f"{weight_source} {model_name or variant}: JAX max|diff| {d:.2e} > {LOGITS_ATOL}"


def _jax_logits(path, x: torch.Tensor) -> np.ndarray:
    """Load an effnet checkpoint into the NNX model and run it jitted (op-by-op eager is ~5x slower here)."""
    import jax
    from flax import nnx

    from effnet_jax.weights import load_checkpoint

    graphdef, state = nnx.split(load_checkpoint(path))
    forward = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))
    with jax.default_matmul_precision("highest"):
        return np.asarray(forward(state, np.asarray(x.permute(0, 2, 3, 1))))


@pytest.mark.parametrize("variant", [pytest.param(v, marks=_slow(v), id=v) for v in B_VARIANTS])
def test_torchvision(variant, tmp_path):
    lib = getattr(torchvision.models, f"efficientnet_{variant}")(weights=None)
    # torchvision b5-b7 use eps 1e-3: the importer must pick it from the variant alone (no name given).
    check_import(lib, "torchvision", None, variant, tmp_path)


@pytest.mark.parametrize("variant", [pytest.param(v, marks=_slow(v), id=v) for v in B_VARIANTS + LITE_VARIANTS])
def test_timm(variant, tmp_path):
    name = f"efficientnet_{variant}"
    check_import(timm.create_model(name, pretrained=False), "timm", name, variant, tmp_path)


@pytest.mark.parametrize("variant", [pytest.param(v, marks=_slow(v), id=v) for v in B_VARIANTS + LITE_VARIANTS])
def test_timm_tf(variant, tmp_path):
    name = f"tf_efficientnet_{variant}"
    check_import(timm.create_model(name, pretrained=False), "timm", name, variant, tmp_path)


@pytest.mark.parametrize("variant", [pytest.param(v, marks=_slow(v), id=v) for v in B_VARIANTS])
def test_efficientnet_pytorch(variant, tmp_path):
    # efficientnet_pytorch pads TF-SAME *statically* for its configured image_size: build it for the test size.
    lib = LukeEfficientNet.from_name(f"efficientnet-{variant}", image_size=_res(variant))
    lib.set_swish(memory_efficient=False)
    check_import(lib, "efficientnet_pytorch", None, variant, tmp_path)  # variant inferred from shapes


def test_wrong_conventions_are_caught():
    """The check is sensitive: TF-ported weights imported with plain conventions (symmetric, eps 1e-5) differ."""
    lib = randomize_bn_(timm.create_model("tf_efficientnet_b0", pretrained=False), seed=6)
    r = import_state_dict(lib.state_dict(), "timm", model="b0")  # a bare variant: plain timm conventions
    twin = EfficientNet(r.spec).eval()
    load_state_dict_checked(twin, r.state_dict)
    x = _input(64)
    with torch.no_grad():
        assert _max_diff(lib(x), twin(x)) > 100 * LOGITS_ATOL


def test_timm_without_name_infers_variant_and_assumes_plain_conventions():
    lib = randomize_bn_(timm.create_model("efficientnet_b2", pretrained=False), seed=2)
    r = import_state_dict(lib.state_dict())  # layout and variant both inferred
    assert (r.weight_source, r.spec.name, r.spec.conv.padding, r.spec.conv.bn_eps) == ("timm", "b2", "symmetric", 1e-5)


@pytest.mark.parametrize("variant", ["lite0", "lite2"])
def test_efficientnet_pytorch_layout_lite(variant):
    """efficientnet_pytorch builds no Lite model, but Lite ports use its key layout: go timm tf_lite -> that
    layout -> import (variant and TF conventions inferred) and compare with timm's forward."""
    lib = randomize_bn_(timm.create_model(f"tf_efficientnet_{variant}", pretrained=False), seed=3)
    r = import_state_dict(lib.state_dict(), "timm", model=f"tf_efficientnet_{variant}")
    luke_sd = export_state_dict(r.state_dict, r.spec, "efficientnet_pytorch")
    assert "_conv_stem.weight" in luke_sd and not any("_se_" in k for k in luke_sd)
    r2 = import_state_dict(luke_sd)
    assert r2.weight_source == "efficientnet_pytorch" and r2.spec.name == variant
    assert r2.spec.conv.padding == "tf_same" and r2.spec.conv.activation == "relu6"
    twin = EfficientNet(r2.spec).eval()
    load_state_dict_checked(twin, r2.state_dict)
    x = _input(64)
    with torch.no_grad():
        d = _max_diff(lib(x), twin(x))
    assert d <= LOGITS_ATOL, f"{variant}: max|diff| {d:.2e}"
    assert r2.preprocessing.mean == pytest.approx((127 / 255,) * 3)  # TF Lite's (x - 127) / 128


# --- export: the twin's weights load into the real libraries (strict) and reproduce their logits ---------------


def _twin(variant: str, weight_source: str, seed: int = 4) -> EfficientNet:
    torch.manual_seed(seed)
    return randomize_bn_(EfficientNet.from_name(variant, weight_source=weight_source), seed=seed)


@pytest.mark.parametrize(
    "variant, weight_source, target, build",
    [
        ("b0", "torchvision", "torchvision", lambda: torchvision.models.efficientnet_b0()),
        ("b5", "torchvision", "torchvision", lambda: torchvision.models.efficientnet_b5()),
        ("b1", "timm", "timm", lambda: timm.create_model("efficientnet_b1")),
        ("b0", "timm_tf", "timm", lambda: timm.create_model("tf_efficientnet_b0")),
        ("lite1", "timm_tf", "timm", lambda: timm.create_model("tf_efficientnet_lite1")),
        (
            "b2",
            "efficientnet_pytorch",
            "efficientnet_pytorch",
            lambda: LukeEfficientNet.from_name("efficientnet-b2", image_size=64),
        ),
    ],
    ids=["torchvision-b0", "torchvision-b5", "timm-b1", "timm_tf-b0", "timm_tf-lite1", "efficientnet_pytorch-b2"],
)
def test_export_loads_strict_and_matches(variant, weight_source, target, build):
    twin = _twin(variant, weight_source).eval()
    exported = export_state_dict(twin.state_dict(), twin.spec, target)
    lib = build().eval()
    lib.load_state_dict(exported, strict=True)
    x = _input(64, seed=5)
    with torch.no_grad():
        d = _max_diff(lib(x), twin(x))
    assert d <= LOGITS_ATOL, f"export {variant} -> {target}: max|diff| {d:.2e}"


# --- the preprocessing tables are the libraries' own -------------------------------------------------------------


def test_timm_preprocessing_table_matches_timm():
    from effnet_torch.sources.timm import TIMM_PREPROCESSING

    wrong = []
    for name, (res, crop_pct, interp, norm) in TIMM_PREPROCESSING.items():
        cfg = timm.models.get_pretrained_cfg(name)
        mean = (0.5, 0.5, 0.5) if norm == "inception" else (0.485, 0.456, 0.406)
        ours = (res, crop_pct, interp, mean)
        theirs = (cfg.input_size[1], cfg.crop_pct, cfg.interpolation, tuple(cfg.mean))
        if ours != theirs:
            wrong.append(f"{name}: ours {ours} timm {theirs}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("variant", B_VARIANTS)
def test_torchvision_preprocessing_matches_weights_meta(variant):
    from effnet_spec import resolve
    from effnet_torch.importers import ModelName, source_preprocessing

    t = torchvision.models.get_model_weights(f"efficientnet_{variant}").DEFAULT.transforms()
    pre = source_preprocessing("torchvision", resolve(variant), ModelName(variant, False))
    assert pre.resolution == t.crop_size[0]
    assert round(pre.resolution / pre.crop_pct) == t.resize_size[0]
    assert pre.interpolation == t.interpolation.value
    assert pre.mean == tuple(t.mean) and pre.std == tuple(t.std)
    assert pre.class_names == tuple(
        torchvision.models.get_model_weights(f"efficientnet_{variant}").DEFAULT.meta["categories"]
    )
