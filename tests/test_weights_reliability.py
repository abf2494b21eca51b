"""Checkpoint reliability: non-finite weights, preprocessing headers, reset_classifier names, atomic-write modes."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
import torch
from flax import nnx
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save as st_save

import effnet_jax
from effnet_jax.cli import main as cli_main
from effnet_spec import STAGES, Preprocessing, make_header, read_header, resolve
from effnet_spec.atomic import write_atomic
from effnet_spec.contract import CheckpointMismatchError, Got, check_tensors, tensors
from effnet_torch import EfficientNet, load_checkpoint, load_state_dict_checked, save_checkpoint
from effnet_torch.importers import ImportMismatchError, export_state_dict, import_checkpoint, import_state_dict

SE_KEY = "blocks.1.se.reduce.weight"  # a float tensor every spec below has


@pytest.fixture(scope="module")
def small() -> EfficientNet:
    """Two stages (three blocks, with SE): cheap to build in both twins."""
    torch.manual_seed(0)
    return EfficientNet(resolve("b0", stages=STAGES[:2], num_classes=5)).eval()


def _numpy_state(model: EfficientNet) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _header(path) -> dict[str, str]:
    with safe_open(os.fspath(path), framework="np") as f:
        return f.metadata()


# --- 1. non-finite weights are refused ---------------------------------------------------------------------------


def test_check_tensors_reports_non_finite_floats_sorted_with_the_other_lines():
    spec = resolve("b0", stages=STAGES[:2], num_classes=5)
    got: dict = {t.name: Got(t.shape, "int" if t.integer else "float", finite=None if t.integer else True)
                 for t in tensors(spec)}  # fmt: skip
    assert check_tensors(tensors(spec), got) == []
    got[SE_KEY] = Got(got[SE_KEY].shape, "float", "float32", finite=False)
    got["blocks.0.depthwise.bn.running_var"] = Got((32,), "float", "float32", finite=False)
    got["stem.conv.weight"] = Got((1, 2), "float")  # a shape line, whatever its values
    got["head.bn.num_batches_tracked"] = Got((), "int", "int64", 2**40)
    del got["classifier.bias"]
    lines = check_tensors(tensors(spec), got)
    assert lines == [
        "- classifier.bias",
        "value blocks.0.depthwise.bn.running_var: holds NaN or inf",
        f"value {SE_KEY}: holds NaN or inf",
        "value head.bn.num_batches_tracked: 1099511627776 does not fit the int32 counter",
        "shape stem.conv.weight: expected (32, 3, 3, 3) OIHW, got (1, 2)",
    ]
    # An unknown finiteness (None, the default) and a bare shape are not problems.
    got = {t.name: Got(t.shape, "int" if t.integer else "float") for t in tensors(spec)}
    assert check_tensors(tensors(spec), got) == []


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_torch_strict_load_refuses_non_finite_and_changes_nothing(small, bad):
    sd = {k: v.clone() for k, v in small.state_dict().items()}
    sd[SE_KEY][0, 0, 0, 0] = bad
    target = EfficientNet(small.spec)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointMismatchError, match=rf"1 problem\(s\)\n  value {SE_KEY}: holds NaN or inf$"):
        load_state_dict_checked(target, sd)
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_jax_strict_load_refuses_non_finite_and_changes_nothing(small, bad):
    model = effnet_jax.model_from_state_dict(small.spec, _numpy_state(small))
    before = effnet_jax.state_dict_from_model(model)
    sd = _numpy_state(small)
    sd[SE_KEY][0, 0, 0, 0] = bad
    sd["head.bn.running_var"][3] = bad
    with pytest.raises(CheckpointMismatchError) as e:
        effnet_jax.load_state_dict(model, sd)
    assert str(e.value).splitlines()[1:] == [
        f"  value {SE_KEY}: holds NaN or inf",
        "  value head.bn.running_var: holds NaN or inf",
    ]
    after = effnet_jax.state_dict_from_model(model)
    assert all(np.array_equal(after[k], before[k]) for k in before)
    with pytest.raises(CheckpointMismatchError, match="holds NaN or inf"):
        effnet_jax.model_from_state_dict(small.spec, sd)
    float16 = {k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in _numpy_state(small).items()}
    effnet_jax.load_state_dict(model, float16)  # finite values of another float dtype still load


def test_a_nan_checkpoint_is_refused_by_both_twins_and_by_predict(small, tmp_path):
    """The reported failure: a NaN weight used to load, and `effnet predict` printed `nan%`."""
    bad = EfficientNet(small.spec).eval()
    bad.load_state_dict(small.state_dict())
    with torch.no_grad():
        bad.classifier.weight[0, 0] = float("nan")
    path = tmp_path / "nan.safetensors"
    save_checkpoint(bad, path, Preprocessing(resolution=32))
    with pytest.raises(CheckpointMismatchError, match="value classifier.weight: holds NaN or inf"):
        load_checkpoint(path)
    with pytest.raises(CheckpointMismatchError, match="value classifier.weight: holds NaN or inf"):
        effnet_jax.load_checkpoint(path)
    image = tmp_path / "x.png"
    Image.new("RGB", (40, 40), (10, 200, 30)).save(image)
    assert cli_main(["predict", str(image), "--weights", str(path)]) == 1


def test_importers_refuse_non_finite_weights(tmp_path):
    torch.manual_seed(0)
    b0 = EfficientNet(resolve("b0", num_classes=5)).eval()  # a named variant: importers infer only those
    theirs = export_state_dict(b0.state_dict(), b0.spec, "timm")
    key = next(k for k in theirs if k.endswith("se.conv_reduce.weight"))
    theirs = {k: v.clone() for k, v in theirs.items()}
    theirs[key].view(-1)[0] = float("inf")
    with pytest.raises(ImportMismatchError, match=rf"value {key}: holds NaN or inf"):
        import_state_dict(theirs, "timm", model="b0")
    # half precision with a value float32 holds imports; an effnet file holding a NaN does not
    half = {k: v.half() if v.is_floating_point() else v for k, v in export_state_dict(
        b0.state_dict(), b0.spec, "timm").items()}  # fmt: skip
    ok = import_state_dict(half, "timm")
    assert ok.spec.name == "b0" and ok.state_dict[SE_KEY].dtype == torch.float32
    sd = {k: v.clone() for k, v in b0.state_dict().items()}
    sd[SE_KEY].view(-1)[0] = float("nan")
    src = tmp_path / "nan.safetensors"
    src.write_bytes(st_save(sd, metadata=make_header(b0.spec)))
    with pytest.raises(ImportMismatchError, match=rf"value {SE_KEY}: holds NaN or inf"):
        import_checkpoint(src, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


# --- 2. preprocessing headers ------------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["mean", "std"])
def test_mean_and_std_must_have_one_value_per_input_channel(field):
    spec = resolve("b0", num_classes=5)
    pre = Preprocessing(resolution=32, mean=(0.5,), std=(0.25,))
    with pytest.raises(ValueError, match=r"preprocessing\.mean has 1 value\(s\), expected 3"):
        make_header(spec, pre)
    header = make_header(spec, Preprocessing(resolution=32))
    body = json.loads(header["preprocessing"])
    body[field] = [0.5]
    with pytest.raises(ValueError, match=rf"preprocessing\.{field} has 1 value\(s\), expected 3") as e:
        read_header({**header, "preprocessing": json.dumps(body)})
    assert "\n" not in str(e.value)


def test_a_one_channel_model_gets_and_keeps_one_mean_and_std(tmp_path):
    torch.manual_seed(0)
    model = EfficientNet(resolve("b0", stages=STAGES[:2], num_classes=0, in_channels=1))
    _, pre = read_header(make_header(model.spec))
    assert pre.mean == model.spec.family.mean[:1] and pre.std == model.spec.family.std[:1]
    save_checkpoint(model, tmp_path / "gray.safetensors")
    assert load_checkpoint(tmp_path / "gray.safetensors").preprocessing == pre
    # RGB values (what weight sources and older effnet files state) are taken per channel, not refused...
    save_checkpoint(model, tmp_path / "rgb.safetensors", Preprocessing(resolution=32))
    assert load_checkpoint(tmp_path / "rgb.safetensors").preprocessing.mean == (0.485,)
    # ... but any other count is.
    with pytest.raises(ValueError, match=r"preprocessing\.mean has 2 value\(s\), expected 1"):
        save_checkpoint(model, tmp_path / "bad.safetensors", Preprocessing(resolution=32, mean=(0.5, 0.5), std=(1, 1)))
    assert not (tmp_path / "bad.safetensors").exists()


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda p: p.update(colour="rgb"), "unknown field 'colour'"),
        (lambda p: p.update(resolution="224"), "resolution must be an int"),
        (lambda p: p.update(resolution=224.0), "resolution must be an int"),
        (lambda p: p.update(resolution=True), "resolution must be an int"),
        (lambda p: p.pop("resolution"), "missing field 'resolution'"),
        (lambda p: p.update(crop_pct="0.9"), "crop_pct must be a number"),
        (lambda p: p.update(interpolation=3), "interpolation must be one of .*, got 3"),
        (lambda p: p.update(mean=0.5), "mean must be a list of finite numbers"),
        (lambda p: p.update(mean="abc"), "mean must be a list of finite numbers"),
        (lambda p: p.update(std=[0.2, "x", 0.2]), "std must be a list of finite numbers"),
        (lambda p: p.update(std=[0.2, 0.0, 0.2]), "std must be > 0"),
        (lambda p: p.update(mean=[0.5, float("nan"), 0.5]), "mean must be a list of finite numbers"),
        (lambda p: p.update(class_names="abcde"), "class_names must be a list of strings"),
        (lambda p: p.update(class_names=[1, 2, 3, 4, 5]), "class_names must be a list of strings"),
    ],
)
def test_a_malformed_preprocessing_header_fails_with_one_line_naming_the_field(edit, words):
    header = make_header(resolve("b0", num_classes=5), Preprocessing(resolution=32))
    body = json.loads(header["preprocessing"])
    edit(body)
    with pytest.raises(ValueError, match="^checkpoint header is malformed: .*" + words) as e:
        read_header({**header, "preprocessing": json.dumps(body)})
    assert type(e.value) is ValueError and "\n" not in str(e.value)


@pytest.mark.parametrize("text", ["[1, 2]", '"224"', "{not json"])
def test_a_preprocessing_header_that_is_not_an_object_fails_cleanly(text):
    header = make_header(resolve("b0", num_classes=5))
    with pytest.raises(ValueError, match="^checkpoint header is malformed: .*preprocessing") as e:
        read_header({**header, "preprocessing": text})
    assert type(e.value) is ValueError


def test_preprocessing_takes_lists_as_tuples_and_checks_types():
    pre = Preprocessing(resolution=8, mean=[0.5, 0.5, 0.5], std=[0.25] * 3, class_names=["a", "b"])
    assert pre.mean == (0.5, 0.5, 0.5) and pre.std == (0.25,) * 3 and pre.class_names == ("a", "b")
    hash(pre)
    with pytest.raises(ValueError, match="Preprocessing: resolution must be an int in 1..16384, got '8'"):
        Preprocessing(resolution="8")


# --- 3. reset_classifier: a new head has no class names ---------------------------------------------------------


def test_torch_reset_classifier_drops_class_names_so_the_model_saves(small, tmp_path):
    path = tmp_path / "named.safetensors"
    save_checkpoint(small, path, Preprocessing(resolution=40, crop_pct=0.9, class_names=tuple("abcde")))
    model = load_checkpoint(path)
    model.reset_classifier(3)
    assert model.preprocessing == Preprocessing(resolution=40, crop_pct=0.9)
    save_checkpoint(model, tmp_path / "new.safetensors")
    loaded = load_checkpoint(tmp_path / "new.safetensors")
    assert loaded.spec.num_classes == 3 and loaded.preprocessing == model.preprocessing
    fresh = EfficientNet(small.spec)
    fresh.reset_classifier(2)  # no preprocessing: stays None
    assert fresh.preprocessing is None


def test_jax_reset_classifier_drops_class_names_so_the_model_saves(small, tmp_path):
    path = tmp_path / "named.safetensors"
    save_checkpoint(small, path, Preprocessing(resolution=40, crop_pct=0.9, class_names=tuple("abcde")))
    model = effnet_jax.load_checkpoint(path)
    assert model.preprocessing.class_names == tuple("abcde")
    model.reset_classifier(3, rngs=nnx.Rngs(0))
    assert model.preprocessing == Preprocessing(resolution=40, crop_pct=0.9)
    effnet_jax.save_checkpoint(model, tmp_path / "new.safetensors")
    loaded = effnet_jax.load_checkpoint(tmp_path / "new.safetensors")
    assert loaded.spec.num_classes == 3 and loaded.preprocessing == model.preprocessing
    assert json.loads(_header(tmp_path / "new.safetensors")["preprocessing"])["class_names"] is None


# --- 4. atomic writes get the mode a plain open() gives ----------------------------------------------------------


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664), (0o027, 0o640)])
def test_write_atomic_gives_new_files_the_umask_mode(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        write_atomic(tmp_path / "new.bin", b"data")
        with open(tmp_path / "plain.bin", "w") as f:
            f.write("data")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "new.bin").st_mode) == mode
    assert stat.S_IMODE(os.stat(tmp_path / "plain.bin").st_mode) == mode
    assert (tmp_path / "new.bin").read_bytes() == b"data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.bin", "plain.bin"]  # no temp file left


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_write_atomic_keeps_the_mode_of_a_file_it_replaces(tmp_path):
    path = tmp_path / "ckpt.bin"
    path.write_bytes(b"old")
    os.chmod(path, 0o640)
    old = os.umask(0o022)
    try:
        write_atomic(path, "new")
    finally:
        os.umask(old)
    assert path.read_bytes() == b"new" and stat.S_IMODE(os.stat(path).st_mode) == 0o640
