"""effnet_torch.io: the safetensors checkpoint round trip, the mismatch report and atomic saving."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import load_file as np_load_file
from safetensors.torch import save_file

import effnet_torch.io as tio
from effnet_spec import Conventions, Preprocessing, make_header, read_header, resolve
from effnet_torch import (
    CheckpointMismatchError,
    EfficientNet,
    load_checkpoint,
    load_state_dict_checked,
    save_checkpoint,
)


@pytest.fixture(scope="module")
def trained_b0() -> EfficientNet:
    """b0 after one train-mode forward, so running stats and num_batches_tracked are not their defaults."""
    torch.manual_seed(0)
    spec = resolve("b0", num_classes=5, conventions=Conventions(padding="tf_same", running_var="biased"))
    model = EfficientNet(spec).train()
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    return model.eval()


def test_round_trip_is_bit_exact(trained_b0, tmp_path):
    path = tmp_path / "b0.safetensors"
    pre = Preprocessing(resolution=32, crop_pct=1.0, class_names=tuple("abcde"))
    save_checkpoint(trained_b0, path, preprocessing=pre)
    loaded = load_checkpoint(path)
    assert loaded.spec == trained_b0.spec
    assert loaded.preprocessing == pre
    assert not loaded.training
    want, got = trained_b0.state_dict(), loaded.state_dict()
    assert list(got) == list(want)
    for k in want:
        assert got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]), k
    assert loaded.stem.bn.num_batches_tracked.item() == 1
    x = torch.randn(1, 3, 33, 29)
    with torch.no_grad():
        assert torch.equal(loaded(x), trained_b0(x))
    # A second save of the loaded model keeps its preprocessing without being told.
    save_checkpoint(loaded, tmp_path / "again.safetensors")
    assert load_checkpoint(tmp_path / "again.safetensors").preprocessing == pre


def test_file_is_readable_with_numpy_alone(trained_b0, tmp_path):
    """The JAX twin reads checkpoints with numpy + safetensors: float32 tensors, int64 counters, the header."""
    path = tmp_path / "b0.safetensors"
    save_checkpoint(trained_b0, path)
    arrays = np_load_file(path)
    assert set(arrays) == set(trained_b0.state_dict())
    assert {a.dtype for k, a in arrays.items() if not k.endswith("num_batches_tracked")} == {np.dtype(np.float32)}
    assert arrays["stem.bn.num_batches_tracked"].dtype == np.int64
    assert arrays["blocks.3.depthwise.conv.weight"].shape == (144, 1, 5, 5)  # OIHW, depthwise 5x5
    np.testing.assert_array_equal(arrays["head.bn.running_var"], trained_b0.head.bn.running_var.numpy())
    with safe_open(path, framework="np") as f:
        spec, _ = read_header(f.metadata())
    assert spec == trained_b0.spec


def test_float64_model_is_saved_as_float32(tmp_path):
    torch.manual_seed(0)
    model = EfficientNet.from_name("lite0", num_classes=3).double()
    save_checkpoint(model, tmp_path / "m.safetensors")
    loaded = load_checkpoint(tmp_path / "m.safetensors")
    assert loaded.head.conv.weight.dtype == torch.float32
    assert torch.equal(loaded.head.conv.weight, model.head.conv.weight.float())


def test_mismatch_lists_every_problem_and_loads_nothing(trained_b0):
    model = EfficientNet.from_name("b0", num_classes=5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = dict(trained_b0.state_dict())
    del state["stem.bn.weight"], state["blocks.1.se.reduce.bias"]
    state["extra.weight"] = torch.zeros(1)
    state["aaa"] = torch.zeros(1)
    state["classifier.weight"] = torch.zeros(7, 1280)
    state["stem.conv.weight"] = torch.zeros(32, 1, 3, 3)
    with pytest.raises(CheckpointMismatchError) as info:
        load_state_dict_checked(model, state)
    msg = str(info.value)
    lines = [ln.strip() for ln in msg.splitlines()[1:]]
    assert lines == [
        "- blocks.1.se.reduce.bias",
        "- stem.bn.weight",
        "+ aaa",
        "+ extra.weight",
        "shape classifier.weight: expected (5, 1280) (out, in), got (7, 1280)",
        "shape stem.conv.weight: expected (32, 3, 3, 3) OIHW, got (32, 1, 3, 3)",
    ], msg
    assert "EfficientNet(b0): 6 problem(s)" in msg
    after = model.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before), "a failed load must not touch the model"


def test_checkpoint_whose_tensors_do_not_fit_its_header(trained_b0, tmp_path):
    path = tmp_path / "bad.safetensors"
    state = {k: v.contiguous() for k, v in trained_b0.state_dict().items()}
    state["classifier.weight"] = torch.zeros(3, 1280)
    save_file(state, path, metadata=make_header(trained_b0.spec))
    with pytest.raises(CheckpointMismatchError, match=r"shape classifier\.weight: expected \(5, 1280\)"):
        load_checkpoint(path)


def test_file_without_header_is_rejected(trained_b0, tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file({k: v.contiguous() for k, v in trained_b0.state_dict().items()}, path)
    with pytest.raises(ValueError, match="no effnet header"):
        load_checkpoint(path)


def test_failed_save_leaves_old_file_intact(trained_b0, tmp_path, monkeypatch):
    path = tmp_path / "ckpt.safetensors"
    path.write_bytes(b"old contents")

    def broken_fsync(fd):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(tio.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(trained_b0, path)
    assert path.read_bytes() == b"old contents"
    assert os.listdir(tmp_path) == ["ckpt.safetensors"], "the temp file must be cleaned up"


def test_save_rejects_other_modules(tmp_path):
    with pytest.raises(TypeError, match="expects an effnet_torch.EfficientNet, got Linear"):
        save_checkpoint(torch.nn.Linear(2, 2), tmp_path / "x.safetensors")
    assert not os.listdir(tmp_path)
