"""effnet_torch.importers and `effnet convert` without the external libraries (their parity lives in
parity_tests/external): layouts walk the spec, variants are inferred, files are read safely, errors are clear."""

from __future__ import annotations

import ast
import os
import pickle
import sys

import pytest
import torch
from safetensors.torch import save_file

from effnet_jax.cli import main as cli_main
from effnet_spec import SOURCES, VARIANTS, Preprocessing, resolve
from effnet_spec.contract import SHOWN, CheckpointMismatchError, shapes, tensors
from effnet_torch import EfficientNet, importers, load_checkpoint, load_state_dict_checked, save_checkpoint, sources
from effnet_torch.importers import (
    ImportError_,
    ModelName,
    export_checkpoint,
    export_state_dict,
    import_checkpoint,
    import_state_dict,
    infer_variant,
    parse_model_name,
    read_state_dict,
    source_keys,
    source_preprocessing,
)

LIB_SOURCES = [name for name in sources.REGISTRY if name != "effnet"]


@pytest.fixture(scope="module")
def b0():
    torch.manual_seed(0)
    return EfficientNet.from_name("b0").eval()


def _renamed(spec, weight_source):
    """A fake `weight_source` state_dict of `spec` (zeros of the right shapes), built from the key map."""
    kmap = source_keys(spec, weight_source)
    return {kmap[k]: torch.zeros(s) for k, s in shapes(spec).items()}


@pytest.mark.parametrize("weight_source", list(sources.REGISTRY))
def test_key_map_is_a_bijection(weight_source):
    for variant in ("b0", "b3", "lite2"):
        kmap = source_keys(resolve(variant), weight_source)
        assert len(set(kmap.values())) == len(kmap), f"{weight_source} {variant}: two twin keys map to one name"


def test_layout_names_follow_each_library():
    spec = resolve("b0")
    tv, timm, luke = (source_keys(spec, x) for x in ("torchvision", "timm", "efficientnet_pytorch"))
    assert tv["stem.conv.weight"] == "features.0.0.weight"
    assert tv["blocks.0.depthwise.conv.weight"] == "features.1.0.block.0.0.weight"  # stage 0: no expand
    assert tv["blocks.0.se.reduce.weight"] == "features.1.0.block.1.fc1.weight"
    assert tv["blocks.2.project.bn.running_var"] == "features.2.1.block.3.1.running_var"
    assert tv["head.conv.weight"] == "features.8.0.weight" and tv["classifier.weight"] == "classifier.1.weight"
    assert timm["blocks.0.project.conv.weight"] == "blocks.0.0.conv_pw.weight"  # depthwise-separable block
    assert timm["blocks.1.expand.conv.weight"] == "blocks.1.0.conv_pw.weight"  # inverted residual
    assert timm["blocks.2.project.bn.weight"] == "blocks.1.1.bn3.weight"
    assert timm["blocks.15.se.excite.bias"] == "blocks.6.0.se.conv_expand.bias"
    assert luke["blocks.15.expand.bn.weight"] == "_blocks.15._bn0.weight" and luke["head.bn.bias"] == "_bn1.bias"
    # torchvision's Sequential index follows the contract's modules: a Lite block has no SE, so project is .2
    tv_lite = source_keys(resolve("lite0"), "torchvision")
    assert tv_lite["blocks.1.project.conv.weight"] == "features.2.0.block.2.0.weight"
    assert tv_lite["blocks.0.project.bn.bias"] == "features.1.0.block.1.1.bias"  # no expand, no SE


@pytest.mark.parametrize("weight_source", LIB_SOURCES)
def test_every_variant_is_inferred_from_shapes(weight_source):
    for variant in VARIANTS:  # the source's names and the contract's shapes: no tensors (l2 would be 1.9 GB of zeros)
        spec = resolve(variant)
        if sources.get(weight_source).source.refusal(spec):  # a layout without V2 (efficientnet_pytorch) skips it
            continue
        kmap = source_keys(spec, weight_source)
        sd_shapes = {kmap[k]: s for k, s in shapes(spec).items()}
        assert infer_variant(sd_shapes, weight_source) == variant


@pytest.mark.parametrize("weight_source", LIB_SOURCES)
def test_export_then_import_is_lossless(b0, weight_source):
    exported = export_state_dict(b0.state_dict(), b0.spec, weight_source)
    r = import_state_dict(exported)  # layout and variant detected
    assert (r.weight_source, r.spec.name, r.spec.num_classes) == (weight_source, "b0", 1000)
    for k, v in b0.state_dict().items():
        assert torch.equal(r.state_dict[k], v), k


@pytest.mark.parametrize(
    "source, model, padding, eps, activation",
    [
        ("torchvision", "b0", "symmetric", 1e-5, "silu"),
        ("torchvision", "b5", "symmetric", 1e-3, "silu"),
        ("timm", "efficientnet_b3", "symmetric", 1e-5, "silu"),
        ("timm", "tf_efficientnet_b3.ns_jft_in1k", "tf_same", 1e-3, "silu"),
        ("timm", "efficientnet_lite0", "symmetric", 1e-5, "relu6"),
        ("timm", "tf_efficientnet_lite0", "tf_same", 1e-3, "relu6"),
        ("efficientnet_pytorch", "efficientnet-b1", "tf_same", 1e-3, "silu"),
        ("efficientnet_pytorch", "lite1", "tf_same", 1e-3, "relu6"),
    ],
)
def test_each_source_sets_its_conventions(source, model, padding, eps, activation):
    variant = parse_model_name(model).variant
    r = import_state_dict(_renamed(resolve(variant), source), source, model=model)
    c = r.spec.conv
    assert (c.padding, c.bn_eps, c.activation) == (padding, eps, activation)
    assert r.preprocessing.class_names is not None and len(r.preprocessing.class_names) == 1000


def test_preprocessing_per_source():
    def pre(source, model):
        return import_state_dict(_renamed(resolve(parse_model_name(model).variant), source), source, model=model)

    tv = pre("torchvision", "b1").preprocessing  # torchvision's DEFAULT b1 weights: 240 crop of a 255 resize
    assert (tv.resolution, round(tv.resolution / tv.crop_pct), tv.interpolation) == (240, 255, "bilinear")
    lite = pre("timm", "tf_efficientnet_lite0").preprocessing
    assert lite.mean == (0.5, 0.5, 0.5) and lite.std == (0.5, 0.5, 0.5)  # timm says [-1, 1]
    ap = pre("timm", "tf_efficientnet_b0.ap_in1k").preprocessing
    assert ap.mean == (0.5, 0.5, 0.5)  # AdvProp
    luke = pre("efficientnet_pytorch", "lite0").preprocessing
    assert luke.mean == pytest.approx((127 / 255,) * 3) and luke.std == pytest.approx((128 / 255,) * 3)
    b3 = pre("efficientnet_pytorch", "b3").preprocessing
    assert (b3.resolution, b3.crop_pct) == (300, 0.904)  # TF eval: 300 / (300 + 32)


def test_num_classes_and_in_channels_come_from_the_tensors():
    spec = resolve("b0", num_classes=7, in_channels=1)
    r = import_state_dict(_renamed(spec, "timm"), "timm")
    assert (r.spec.num_classes, r.spec.in_channels) == (7, 1) and r.preprocessing.class_names is None
    headless = resolve("b0", num_classes=0)
    assert import_state_dict(_renamed(headless, "torchvision")).spec.num_classes == 0


def test_wrong_variant_names_problems_and_the_matching_variant(b0):
    sd = export_state_dict(b0.state_dict(), b0.spec, "timm")
    with pytest.raises(ImportError_, match=r"does not match 'b1' in the timm layout; its shapes match 'b0'") as e:
        import_state_dict(sd, "timm", model="b1")
    lines = str(e.value).splitlines()  # the count and the first few of the 128 differences, not all of them
    assert lines[0].endswith(": 128 problem(s)") and lines[-1] == "  ... and 48 more" and len(lines) == 2 + SHOWN
    assert "  - blocks.0.1.se.conv_expand.{bias,weight}" in lines  # b1 has a second stage-0 block that b0 lacks


def test_mismatches_are_also_checkpoint_mismatch_errors(b0):
    sd = export_state_dict(b0.state_dict(), b0.spec, "timm")
    with pytest.raises(CheckpointMismatchError, match="does not match 'b1' in the timm layout"):
        import_state_dict(sd, "timm", model="b1")


def test_a_registered_source_is_imported_exported_and_offered(b0, monkeypatch, tmp_path):
    """The registry drives everything: one WeightSource entry is a new layout for import, export and the CLI."""
    fake = sources.WeightSource(
        name="fake",
        module_name=lambda spec, m, repeat: "net." + m.name.replace(".", "_"),
        conventions="effnet",
        preprocessing=sources.base.native_preprocessing,
        exports=sources.base.any_spec,
    )
    twin_sd = b0.state_dict()
    sd = {f"net.{t.module.name.replace('.', '_')}.{t.leaf}": twin_sd[t.name] for t in tensors(b0.spec)}
    with pytest.raises(ImportError_, match="cannot tell which library"):
        import_state_dict(sd)
    monkeypatch.setitem(sources.REGISTRY, "fake", fake)
    r = import_state_dict(sd)  # detected from its stem key, variant inferred
    assert (r.weight_source, r.spec.name) == ("fake", "b0")
    assert all(torch.equal(r.state_dict[k], v) for k, v in twin_sd.items())
    assert export_state_dict(b0.state_dict(), b0.spec, "fake").keys() == sd.keys()
    src = tmp_path / "fake.pth"
    torch.save(sd, src)
    assert cli_main(["convert", str(src), str(tmp_path / "b0.safetensors"), "--weight-source", "fake"]) == 0


# --- weight-source names: the spec's, each importable ------------------------------------------------------------


def test_weight_source_names_are_the_spec_names():
    assert sources.names() == ("torchvision", "timm", "timm_tf", "efficientnet_pytorch", "effnet")
    assert set(sources.names()) <= set(SOURCES)
    assert set(SOURCES) - set(sources.names()) == {"tf"}  # TF's own checkpoints: no importable layout
    assert list(sources.REGISTRY) == ["torchvision", "timm", "efficientnet_pytorch", "effnet"]  # layouts only
    assert [s.order for s in sources.REGISTRY.values()] == [0, 1, 2, 9]
    assert sources.export_targets() == ("torchvision", "timm", "efficientnet_pytorch")
    tf = sources.get("timm_tf")
    assert (tf.source, tf.tf, tf.name, tf.layout, tf.conventions) == (
        sources.REGISTRY["timm"], True, "timm_tf", "timm", "timm_tf"
    )  # fmt: skip
    assert sources.get("timm") == sources.Selected(sources.REGISTRY["timm"], tf=False)
    assert (sources.get("timm").name, sources.get("timm").conventions) == ("timm", "timm")
    with pytest.raises(ImportError_, match="unknown weight source 'tf'; expected one of: torchvision, timm, timm_tf, "):
        sources.get("tf")
    assert source_keys(resolve("b0"), "timm_tf") == source_keys(resolve("b0"), "timm")


def test_detect_names_layouts_only(b0):
    sd = export_state_dict(b0.state_dict(), b0.spec, "timm")
    assert sources.detect(sd) == "timm"
    r = import_state_dict(sd)
    assert (r.weight_source, r.spec.conv.padding) == ("timm", "symmetric")


@pytest.mark.parametrize(
    "weight_source, model",
    [("timm_tf", None), ("timm_tf", "b1"), ("timm_tf", "tf_efficientnet_b1"), ("timm", "tf_efficientnet_b1")],
)
def test_timm_tf_means_tf_conventions(weight_source, model):
    """ "timm_tf" without a model name is what a tf_ model name is; the result names the conventions in effect."""
    r = import_state_dict(_renamed(resolve("b1"), "timm"), weight_source, model=model)
    assert (r.weight_source, r.spec.name, r.spec.conv.padding, r.spec.conv.bn_eps) == ("timm_tf", "b1", "tf_same", 1e-3)
    assert r.preprocessing.crop_pct == 0.882  # timm's tf_efficientnet_b1 cfg (efficientnet_b1's is 0.9)


def test_plain_timm_keeps_its_name_and_conventions():
    sd = _renamed(resolve("b1"), "timm")
    for model in (None, "b1", "efficientnet_b1"):
        r = import_state_dict(sd, "timm", model=model)
        assert (r.weight_source, r.spec.conv.padding, r.spec.conv.bn_eps) == ("timm", "symmetric", 1e-5)
        assert r.preprocessing.crop_pct == 0.9
    luke = import_state_dict(_renamed(resolve("b1"), "efficientnet_pytorch"), model="tf_efficientnet_b1")
    assert luke.weight_source == "efficientnet_pytorch"  # no TF-conventions name of its own: it is TF already
    assert source_preprocessing("timm_tf", resolve("b1"), ModelName("b1", False)).crop_pct == 0.882


@pytest.mark.parametrize("model", ["efficientnet_b1", "efficientnet-b1"])
def test_plain_model_name_contradicts_timm_tf(model):
    with pytest.raises(
        ImportError_, match=f"model '{model}' names non-TF weights, but weight source 'timm_tf' means TF-ported ones"
    ):
        import_state_dict(_renamed(resolve("b1"), "timm"), "timm_tf", model=model)


def test_timm_tf_mismatches_name_the_timm_layout(b0):
    sd = export_state_dict(b0.state_dict(), b0.spec, "timm")
    with pytest.raises(ImportError_, match=r"does not match 'b1' in the timm layout; its shapes match 'b0'"):
        import_state_dict(sd, "timm_tf", model="b1")
    luke = export_state_dict(b0.state_dict(), b0.spec, "efficientnet_pytorch")
    with pytest.raises(ImportError_, match="its keys are in the efficientnet_pytorch layout, not timm"):
        import_state_dict(luke, "timm_tf", model="b0")
    with pytest.raises(ImportError_, match="match no EfficientNet variant in the timm layout"):
        import_state_dict(luke, "timm_tf")


def test_a_new_source_module_is_discovered_in_order(tmp_path, monkeypatch):
    """Adding a weight source is one file in effnet_torch/sources: found by its SOURCE, placed by its order."""
    (tmp_path / "extra_lib.py").write_text(
        "from effnet_torch.sources.base import WeightSource, native_preprocessing\n"
        "SOURCE = WeightSource(name='extra_lib', order=1, module_name=lambda spec, m, repeat: 'x.' + m.name,\n"
        "                      conventions='effnet', preprocessing=native_preprocessing)\n"
    )
    (tmp_path / "extra_helpers.py").write_text("HELP = 1\n")  # no SOURCE: not a source
    monkeypatch.setattr(sources, "__path__", [*sources.__path__, str(tmp_path)])
    try:
        found = sources.discover()
    finally:
        for name in ("extra_lib", "extra_helpers"):
            sys.modules.pop(f"effnet_torch.sources.{name}", None)
    # order 1 ties with timm: then by name
    assert list(found) == ["torchvision", "extra_lib", "timm", "efficientnet_pytorch", "effnet"]
    assert found["timm"] is sources.REGISTRY["timm"]


def test_importers_reach_sources_through_the_registry_only():
    with open(importers.__file__) as f:
        tree = ast.parse(f.read())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert {m for m in imported if m.startswith("sources.")} == {"sources.base"}
    for gone in ("LAYOUTS", "twin_shapes", "detect_layout", "IMPORT_SOURCES", "EXPORT_TARGETS", "TIMM_PREPROCESSING"):
        assert not hasattr(importers, gone), gone


def test_shapes_matching_no_variant_name_the_closest(b0):
    sd = export_state_dict(b0.state_dict(), b0.spec, "torchvision")
    sd["features.8.0.weight"] = torch.zeros(1000, 320, 1, 1)  # head width of no variant
    with pytest.raises(ImportError_, match=r"match no EfficientNet variant .* closest is 'b0'") as e:
        import_state_dict(sd)
    assert "shape features.8.0.weight" in str(e.value)


def test_unexpected_keys_are_refused_and_bn_counters_may_be_absent(b0):
    sd = export_state_dict(b0.state_dict(), b0.spec, "efficientnet_pytorch")
    no_counters = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    r = import_state_dict(no_counters)
    assert r.state_dict["stem.bn.num_batches_tracked"].dtype == torch.int64
    with pytest.raises(ImportError_, match=r"\+ _extra.weight"):
        import_state_dict({**sd, "_extra.weight": torch.zeros(1)}, model="b0")


def test_unknown_layout_and_model_names():
    with pytest.raises(ImportError_, match="cannot tell which library"):
        import_state_dict({"fc.weight": torch.zeros(2, 2)})
    with pytest.raises(ImportError_, match="unknown model 'b9'"):
        parse_model_name("b9")
    assert parse_model_name("efficientnet-b4").variant == "b4"
    assert parse_model_name("tf_efficientnet_lite3.in1k") == parse_model_name("tf_efficientnet_lite3.in1k")
    assert parse_model_name("tf_efficientnet_lite3.in1k").tf


# --- files --------------------------------------------------------------------------------------------------------


def test_import_checkpoint_writes_a_loadable_effnet_checkpoint(b0, tmp_path):
    src = tmp_path / "tv.pth"
    torch.save({"state_dict": export_state_dict(b0.state_dict(), b0.spec, "torchvision"), "epoch": 3}, src)
    out = tmp_path / "b0.safetensors"
    import_checkpoint(src, out)
    model = load_checkpoint(out)
    assert model.spec.conv.bn_eps == 1e-5 and model.preprocessing.class_names[0] == "tench"
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), b0(x)) or (model(x) - b0(x)).abs().max() < 1e-6


def test_module_prefix_is_stripped(b0, tmp_path):
    src = tmp_path / "dp.pt"
    torch.save({"module." + k: v for k, v in export_state_dict(b0.state_dict(), b0.spec, "timm").items()}, src)
    assert "conv_stem.weight" in read_state_dict(src)[0]


class _Payload:
    """Unpickling this calls open(marker, "w"): code execution, observable as a new file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("container", ["pickle", "torch.save"])
def test_malicious_pickle_is_refused_without_running(tmp_path, container):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    if container == "pickle":
        path.write_bytes(pickle.dumps({"conv_stem.weight": _Payload(marker)}, protocol=2))
    else:
        torch.save({"conv_stem.weight": _Payload(marker)}, path)
    with pytest.raises(ImportError_, match="refused: this pickle needs code to load"):
        import_checkpoint(path, tmp_path / "out.safetensors")
    assert not marker.exists(), "unpickling ran the payload"
    assert not (tmp_path / "out.safetensors").exists()
    # The payload is real: an unsafe load would have run it.
    if container == "pickle":
        with open(path, "rb") as f:
            pickle.load(f).get("conv_stem.weight").close()  # noqa: S301 (the point of the test)
        assert marker.exists()


def test_whole_model_pickle_is_refused(b0, tmp_path):
    path = tmp_path / "model.pt"
    torch.save(b0, path)  # a pickled nn.Module needs effnet_torch's classes to load
    with pytest.raises(ImportError_, match="refused"):
        read_state_dict(path)


def test_truncated_files_are_named(b0, tmp_path):
    st = tmp_path / "b0.safetensors"
    save_checkpoint(b0, st)
    pth = tmp_path / "b0.pth"
    torch.save(b0.state_dict(), pth)
    for path, what in ((st, "safetensors"), (pth, "PyTorch checkpoint")):
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        with pytest.raises(ImportError_, match=f"{what}.*truncated") as e:
            import_checkpoint(path, tmp_path / "out.safetensors")
        assert os.fspath(path) in str(e.value)
    with pytest.raises(ImportError_, match="no such file"):
        read_state_dict(tmp_path / "missing.pth")


def test_effnet_source_keeps_its_header(b0, tmp_path):
    src = tmp_path / "a.safetensors"
    save_checkpoint(b0, src, Preprocessing(resolution=200, crop_pct=0.9))
    r = import_checkpoint(src, tmp_path / "b.safetensors")
    assert (r.weight_source, r.preprocessing.resolution, r.preprocessing.crop_pct) == ("effnet", 200, 0.9)
    with pytest.raises(ImportError_, match="its header says 'b0', not 'b1'"):
        import_checkpoint(src, tmp_path / "c.safetensors", model="b1")
    sd, _ = read_state_dict(src)
    with pytest.raises(ImportError_, match="its keys are in the effnet layout, not torchvision"):
        import_state_dict(sd, "torchvision", model="b0")


def test_export_checkpoint_and_refusals(b0, tmp_path):
    src = tmp_path / "b0.safetensors"
    save_checkpoint(b0, src)
    out = tmp_path / "tv.safetensors"
    export_checkpoint(src, out, "torchvision")
    sd, _ = read_state_dict(out)
    r = import_state_dict(sd)
    twin = EfficientNet(r.spec).eval()
    load_state_dict_checked(twin, r.state_dict)
    lite = EfficientNet.from_name("lite0")
    with pytest.raises(ValueError, match="torchvision has no EfficientNet 'lite0'"):
        export_state_dict(lite.state_dict(), lite.spec, "torchvision")
    with pytest.raises(ValueError, match="unknown export target 'keras'"):
        export_state_dict(b0.state_dict(), b0.spec, "keras")
    no_header = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(1)}, no_header)
    with pytest.raises(ImportError_, match="no effnet header"):
        export_checkpoint(no_header, out, "timm")


# --- the CLI --------------------------------------------------------------------------------------------------------


def test_cli_convert_and_errors(b0, tmp_path, capsys):
    src = tmp_path / "timm_lite.pth"
    lite = EfficientNet.from_name("lite0", weight_source="timm_tf")
    torch.save(export_state_dict(lite.state_dict(), lite.spec, "timm"), src)
    out = tmp_path / "lite0.safetensors"
    rc = cli_main(["convert", str(src), str(out), "--weight-source", "timm", "--model", "tf_efficientnet_lite0"])
    assert rc == 0, capsys.readouterr().err
    said = capsys.readouterr().out
    assert "lite0 from timm" in said and "padding tf_same" in said and "relu6" in said
    assert load_checkpoint(out).spec.conv.padding == "tf_same"

    rc = cli_main(
        ["convert", str(src), str(out), "--weight-source", "timm", "--resolution", "256", "--crop-pct", "1.0"]
    )
    assert rc == 0 and load_checkpoint(out).preprocessing.resolution == 256
    assert "assumed timm efficientnet_* conventions" in capsys.readouterr().err  # no --model: say what we assumed

    rc = cli_main(["convert", str(out), str(tmp_path / "back.safetensors"), "--to", "timm"])
    assert rc == 0 and "conv_stem.weight" in read_state_dict(tmp_path / "back.safetensors")[0]

    rc = cli_main(["convert", str(src), str(out), "--weight-source", "torchvision"])
    assert rc == 1 and "match no EfficientNet variant in the torchvision layout" in capsys.readouterr().err

    before = out.read_bytes()
    rc = cli_main(["convert", str(src), str(out), "--from", "timm"])  # the flag's old name: told, nothing written
    assert rc == 2 and "--from is now --weight-source (--weight-source timm)" in capsys.readouterr().err
    assert out.read_bytes() == before


def test_cli_convert_timm_tf(tmp_path, capsys):
    tf_b1 = EfficientNet.from_name("b1", weight_source="timm_tf")
    src = tmp_path / "tf_b1.pth"
    torch.save(export_state_dict(tf_b1.state_dict(), tf_b1.spec, "timm"), src)
    out = tmp_path / "b1.safetensors"
    assert cli_main(["convert", str(src), str(out), "--weight-source", "timm_tf"]) == 0, capsys.readouterr().err
    said = capsys.readouterr()
    assert "b1 from timm_tf" in said.out and "padding tf_same, bn eps 0.001" in said.out
    assert "assumed" not in said.err  # the name said which conventions: nothing was assumed
    model = load_checkpoint(out)
    assert (model.spec.conv.padding, model.spec.conv.bn_eps, model.preprocessing.crop_pct) == ("tf_same", 1e-3, 0.882)

    for extra in ([], ["--resolution", "256"]):  # with and without preprocessing overrides
        rc = cli_main(
            ["convert", str(src), str(out), "--weight-source", "timm_tf", "--model", "efficientnet_b1", *extra]
        )
        err = capsys.readouterr().err
        assert rc == 1 and err.count("effnet convert:") == 1
        assert "'efficientnet_b1' names non-TF weights, but weight source 'timm_tf'" in err

    with pytest.raises(SystemExit) as e:  # a spec weight source with no importable layout
        cli_main(["convert", str(src), str(out), "--weight-source", "tf"])
    assert e.value.code == 2 and "invalid choice: 'tf'" in capsys.readouterr().err
