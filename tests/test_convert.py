"""effnet_jax.weights: the spec-walk key map, strict loading, safetensors checkpoints, and loading without torch."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save as st_save
from test_jax_model import tiny_model, tiny_spec

import effnet_jax.weights.files as conv_mod
from effnet_jax import (
    CheckpointMismatchError,
    EfficientNet,
    key_map,
    load_checkpoint,
    load_state_dict,
    save_checkpoint,
    state_dict_from_model,
)
from effnet_spec import STAGES, Conventions, Preprocessing, default_preprocessing, make_header, resolve

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def model() -> EfficientNet:
    """Two stages (expand, SE, a residual block, classifier), random weights and BN statistics, eval mode."""
    return tiny_model(stages=STAGES[:2])


def _variable_paths(model) -> set[tuple]:
    """Every nnx.Variable in the tree except the rng streams' keys and counters."""
    return {
        tuple(p) for p, n in nnx.iter_graph(model) if isinstance(n, nnx.Variable) and not isinstance(n, nnx.RngState)
    }


@pytest.mark.parametrize("name", ["b0", "lite0"])
def test_key_map_covers_every_variable_exactly_once(name):
    spec = resolve(name, num_classes=10)
    abstract = nnx.eval_shape(lambda: EfficientNet(spec, rngs=nnx.Rngs(0)))
    entries = key_map(spec)
    paths = [e.jax_path for e in entries]
    torch_keys = [e.torch_key for e in entries]
    assert len(set(paths)) == len(paths) and len(set(torch_keys)) == len(torch_keys), "duplicates in the key map"
    variables = _variable_paths(abstract)
    assert set(paths) == variables, (sorted(variables - set(paths))[:5], sorted(set(paths) - variables)[:5])
    assert sum(k.endswith("num_batches_tracked") for k in torch_keys) == sum(p[-1] == "mean" for p in paths)


def test_key_map_names_match_the_torch_twin():
    torch = pytest.importorskip("torch")
    import effnet_torch

    spec = resolve("b0", num_classes=10)
    with torch.device("meta"):
        tm = effnet_torch.EfficientNet(spec)
    assert [e.torch_key for e in key_map(spec)] == list(tm.state_dict())


def test_state_dict_dtypes_and_layouts(model):
    sd = state_dict_from_model(model)
    assert sd["stem.bn.num_batches_tracked"].dtype == np.int64 and sd["stem.bn.num_batches_tracked"].shape == ()
    assert sd["stem.conv.weight"].shape == (32, 3, 3, 3)  # OIHW
    assert sd["blocks.1.depthwise.conv.weight"].shape == (96, 1, 3, 3)  # depthwise (C, 1, k, k)
    assert sd["classifier.weight"].shape == (3, 1280)  # (out, in)
    np.testing.assert_array_equal(sd["stem.conv.weight"], np.asarray(model.stem.conv.kernel[...]).transpose(3, 2, 0, 1))
    floats = {a.dtype for k, a in sd.items() if not k.endswith("num_batches_tracked")}
    assert floats == {np.dtype(np.float32)}
    assert all(a.flags.c_contiguous for a in sd.values())


def test_mismatch_lists_every_problem_and_changes_nothing(model):
    before = state_dict_from_model(model)
    sd = dict(before)
    del sd["stem.bn.weight"], sd["blocks.1.se.reduce.bias"]
    sd["aaa"] = np.zeros(1, np.float32)
    sd["extra.weight"] = np.zeros(1, np.float32)
    sd["stem.conv.weight"] = np.zeros((32, 1, 3, 3), np.float32)
    sd["classifier.weight"] = np.zeros((7, 1280), np.float32)
    sd["head.bn.running_mean"] = sd["head.bn.running_mean"] + 1  # a valid tensor: must not be loaded either
    with pytest.raises(CheckpointMismatchError) as info:
        load_state_dict(model, sd)
    msg = str(info.value)
    assert msg.splitlines()[0] == "checkpoint does not match EfficientNet(b0): 6 problem(s)", msg
    assert [ln.strip() for ln in msg.splitlines()[1:]] == [
        "- blocks.1.se.reduce.bias",
        "- stem.bn.weight",
        "+ aaa",
        "+ extra.weight",
        "shape classifier.weight: expected (3, 1280) (out, in) (JAX (1280, 3) (in, out)), got (7, 1280)",
        "shape stem.conv.weight: expected (32, 3, 3, 3) OIHW (JAX (3, 3, 3, 32) HWIO), got (32, 1, 3, 3)",
    ], msg
    after = state_dict_from_model(model)
    assert all(np.array_equal(after[k], before[k]) for k in before), "a failed load must not touch the model"


def test_wrong_dtype_and_counter_overflow_are_reported(model):
    sd = state_dict_from_model(model)
    sd["stem.bn.running_var"] = sd["stem.bn.running_var"].astype(np.int32)
    sd["head.bn.num_batches_tracked"] = np.array(2**31, np.int64)
    with pytest.raises(CheckpointMismatchError) as info:
        load_state_dict(model, sd)
    lines = [ln.strip() for ln in str(info.value).splitlines()[1:]]
    assert lines == [
        "value head.bn.num_batches_tracked: 2147483648 does not fit the int32 counter",
        "dtype stem.bn.running_var: expected a float array, got int32",
    ]


def test_checkpoint_round_trip_keeps_header_and_every_tensor(model, tmp_path):
    path = tmp_path / "m.safetensors"
    pre = Preprocessing(resolution=40, crop_pct=0.9, interpolation="bilinear", mean=(0.5,) * 3, std=(0.25,) * 3,
                        class_names=("cat", "dog", "eel"))  # fmt: skip
    save_checkpoint(model, path, preprocessing=pre)
    loaded = load_checkpoint(path)
    assert loaded.spec == model.spec, "the header must rebuild the same spec (custom stages included)"
    assert loaded.preprocessing == pre
    assert loaded.stem.bn.use_running_average and loaded.blocks[2].drop_path.deterministic, "loaded in eval mode"
    want, got = state_dict_from_model(model), state_dict_from_model(loaded)
    assert list(got) == list(want)
    bad = [k for k in want if got[k].dtype != want[k].dtype or not np.array_equal(got[k], want[k])]
    assert not bad, f"tensors changed by the round trip: {bad[:5]}"
    save_checkpoint(loaded, tmp_path / "again.safetensors")  # preprocessing travels with the model
    assert load_checkpoint(tmp_path / "again.safetensors").preprocessing == pre


def test_default_preprocessing_and_conventions_in_header(tmp_path):
    spec = tiny_spec(stages=STAGES[:2], conventions=Conventions(padding="tf_same", bn_eps=1e-4, running_var="biased"))
    m = tiny_model(stages=STAGES[:2], conventions=spec.conv)
    path = tmp_path / "tf.safetensors"
    save_checkpoint(m, path)
    loaded = load_checkpoint(path)
    assert loaded.spec.conv == spec.conv and loaded.spec == spec
    assert loaded.preprocessing == default_preprocessing(spec)


def test_missing_truncated_and_garbage_files(model, tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "nope.safetensors")
    good = tmp_path / "good.safetensors"
    save_checkpoint(model, good)
    data = good.read_bytes()
    for name, content in {"truncated": data[: len(data) // 2], "garbage": b"\x00not a safetensors file" * 10}.items():
        bad = tmp_path / f"{name}.safetensors"
        bad.write_bytes(content)
        with pytest.raises(ValueError, match=rf"{name}\.safetensors: not a readable safetensors checkpoint"):
            load_checkpoint(bad)
    plain = tmp_path / "plain.safetensors"
    plain.write_bytes(st_save(state_dict_from_model(model)))
    with pytest.raises(ValueError, match="no effnet header"):
        load_checkpoint(plain)
    misfit = tmp_path / "misfit.safetensors"
    sd = state_dict_from_model(model)
    sd["classifier.weight"] = np.zeros((5, 1280), np.float32)
    misfit.write_bytes(st_save(sd, metadata=make_header(model.spec)))
    with pytest.raises(CheckpointMismatchError, match=r"shape classifier\.weight: expected \(3, 1280\)"):
        load_checkpoint(misfit)


@pytest.mark.parametrize("fail_in", ["fsync", "replace"])
def test_failed_save_leaves_old_file_intact(model, tmp_path, monkeypatch, fail_in):
    path = tmp_path / "ckpt.safetensors"
    path.write_bytes(b"old contents")

    def broken(*args, **kwargs):
        raise OSError(f"{fail_in} failed (simulated)")

    monkeypatch.setattr(conv_mod.os, fail_in, broken)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(model, path)
    monkeypatch.undo()
    assert path.read_bytes() == b"old contents"
    assert os.listdir(tmp_path) == ["ckpt.safetensors"], "the temp file must be cleaned up"
    save_checkpoint(model, path)  # and a working save replaces it
    assert load_checkpoint(path).spec == model.spec


_NO_TORCH = textwrap.dedent(
    """
    import importlib.abc, sys

    class NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError(f"torch is blocked in this test ({name})")
            return None

    sys.meta_path.insert(0, NoTorch())
    try:
        import torch  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("the import blocker does not work")

    import numpy as np
    from flax import nnx
    import effnet_jax

    ckpt, expected, x = sys.argv[1:4]
    model = effnet_jax.load_checkpoint(ckpt)
    logits = nnx.jit(lambda m, x: m(x))(model, np.load(x))
    np.testing.assert_array_equal(np.asarray(logits), np.load(expected))
    assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules), "torch got imported"
    print("OK", model.spec.name, logits.shape)
    """
)


def test_load_checkpoint_works_where_torch_cannot_be_imported(model, tmp_path):
    """A subprocess whose import system refuses torch loads the file and reproduces the logits saved as .npy.

    Bit-equal: the same jitted program on the same weights and device, in another process.
    """
    path = tmp_path / "m.safetensors"
    save_checkpoint(model, path)
    x = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32)
    logits = np.asarray(nnx.jit(lambda m, x: m(x))(load_checkpoint(path), jnp.asarray(x)))
    assert np.abs(logits).max() > 0.1
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "expected.npy", logits)
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-c", _NO_TORCH, str(path), str(tmp_path / "expected.npy"), str(tmp_path / "x.npy")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("OK b0 (2, 3)"), proc.stdout
