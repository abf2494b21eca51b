"""Hostile input at the range edges (issue 28, groups 7 and 9): integers past int64 or past what a field can hold,
flags that were silently replaced or ignored, wrong types in the Python API, the torch twin's input dtype, damaged
shard metadata and `effnet bench` flags: each one clear line naming what was wrong (exit 2 from the CLI), checked
before any work, touching nothing on disk. No case compiles a model."""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from _disk import snapshot
from PIL import Image

import effnet_torch
from effnet_jax import EfficientNet
from effnet_jax.cli import main as cli
from effnet_jax.predict import predict
from effnet_jax.train import config as config_lib
from effnet_jax.train import records
from effnet_jax.train.config import TrainConfig, from_dict, from_preset, to_json
from effnet_jax.train.data import make_source
from effnet_jax.train.evaluate import evaluate_checkpoint
from effnet_jax.train.mesh import init_distributed
from effnet_jax.train.prepare import prepare
from effnet_spec import STAGES, resolve


def _refused(capsys, tmp_path: Path, argv: list[str]) -> str:
    """Run the CLI in this process from `tmp_path`; assert exit 2, one line on stderr, nothing written."""
    before = snapshot(tmp_path)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        rc = cli(argv, fast_malloc=False)
    finally:
        os.chdir(cwd)
    out, err = capsys.readouterr()
    assert rc == 2, (rc, out, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert snapshot(tmp_path) == before, "a refused command writes nothing"
    return err.strip()


# --- TrainConfig: every int field has a range; the CLI's --set and the Python API meet the same checks

HUGE = "9" * 30  # past int64


@pytest.mark.parametrize(
    "override, message",
    [
        (f"steps={HUGE}", f"steps must lie in 0..2147483647; got {HUGE}"),
        (f"steps={2**31}", "steps must lie in 0..2147483647; got 2147483648"),
        (f"seed={HUGE}", "seed must lie in 0..4294967294"),
        (f"seed={2**32 - 1}", "seed must lie in 0..4294967294; got 4294967295"),
        ("seed=-1", "seed must be >= 0"),
        ("steps=" + "9" * 5000, "'steps' must lie in 0..2147483647; got '99999"),  # past int()'s digit limit
        (f"global_batch={2**21}", "global_batch must lie in 1..1048576"),
        (f"eval_batch={HUGE}", "eval_batch must lie in 1..1048576"),
        ("resolution=100000", "resolution must lie in 0..4096; got 100000"),
        (f"num_classes={10**7}", "num_classes must lie in 0..1000000"),
        ("epochs=1e300", "epochs must be at most 1e+06"),
        ("process_id=0", "process_id is read only with distributed=true"),
        ("num_processes=2", "num_processes is read only with distributed=true"),
    ],
)
def test_train_set_out_of_range_is_one_line(override, message, tmp_path, capsys):
    err = _refused(capsys, tmp_path, ["train", "--preset", "smoke", "--workdir", "run", "--set", override])
    assert err.startswith("effnet train: error: ") and message in err, err
    assert len(err) < 300, err


def test_multi_host_fields_agree():
    with pytest.raises(ValueError, match=r"coordinator, num_processes are read only with distributed=true"):
        from_preset("smoke", ["coordinator=h:1", "num_processes=2"])
    with pytest.raises(ValueError, match=r"process_id must lie in 0..1 \(num_processes=2\); got 2"):
        from_preset("smoke", ["distributed=true", "num_processes=2", "process_id=2"])


def test_init_distributed_passes_exactly_the_fields_set(monkeypatch):
    calls = []
    monkeypatch.setattr("jax.distributed.initialize", lambda **kw: calls.append(kw) or kw.pop("initialization_timeout"))
    init_distributed(from_preset("smoke", ["distributed=true"]))
    init_distributed(from_preset("smoke", ["distributed=true", "coordinator=h:1", "num_processes=2", "process_id=1"]))
    init_distributed(from_preset("smoke", ["distributed=true", "process_id=0"]))
    assert calls == [{}, {"coordinator_address": "h:1", "num_processes": 2, "process_id": 1}, {"process_id": 0}]


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("num_classes", True, "num_classes must be int; got bool True"),
        ("steps", 2.0, "steps must be int; got float 2.0"),
        ("flip", 1, "flip must be bool; got int 1"),
        ("lr", "0.1", "lr must be float; got str '0.1'"),
        ("data", None, "data must be str; got NoneType None"),
        pytest.param(
            "seed", 10**5000, "seed must lie in 0..4294967294; got an integer of about 5001 digits", id="seed"
        ),
        pytest.param("epochs", 10**400, "epochs must be a finite number", id="epochs"),
    ],
)
def test_python_api_types(field, value, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        dataclasses.replace(config_lib.PRESETS["smoke"], **{field: value})


def test_numpy_numbers_are_taken_as_python_ones():
    cfg = dataclasses.replace(config_lib.PRESETS["smoke"], steps=np.int64(5), lr=np.float32(0.5), epochs=3)
    assert (cfg.steps, cfg.lr, cfg.epochs) == (5, 0.5, 3.0)
    assert (type(cfg.steps), type(cfg.lr), type(cfg.epochs)) == (int, float, float)
    assert from_dict(json.loads(to_json(cfg))) == cfg


def test_epochs_past_the_step_counter_are_refused_before_any_pipeline(monkeypatch):
    from effnet_jax.train import inputs

    class Big:  # a dataset of ten million images, never read
        class_names = ("a", "b")

        def __len__(self):
            return 10**7

    monkeypatch.setattr(inputs.data_lib, "make_source", lambda *a, **k: Big())
    cfg = from_preset("smoke", ["data=big", "steps=0", "epochs=1000", "global_batch=1"])
    with pytest.raises(ValueError, match=r"epochs=1000 of 10000000 images at global_batch=1 is 10000000000 steps; at "
                       "most 2147483647 fit"):  # fmt: skip
        inputs.make_data(cfg, SimpleNamespace(resolution=16))


def test_every_int_field_has_a_range():
    hints = typing.get_type_hints(TrainConfig)
    assert {name for name, typ in hints.items() if typ is int} == set(config_lib.INT_RANGES)


# --- the CLI's integer flags and the Python API of predict/eval


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["eval", "--checkpoint", "nowhere", "--batch", "0"],
            "effnet eval: error: --batch 0: expected an integer in 1..1048576",
        ),  # fmt: skip
        (["eval", "--checkpoint", "nowhere", "--batch", HUGE], f"--batch {HUGE}: expected an integer in 1..1048576"),
        (["eval", "--checkpoint", "nowhere", "--step", "-1"], "--step -1: expected an integer in 0..2147483647"),
        (["predict", "x.png", "--weights", "w.safetensors", "--top", "-2"], "effnet predict: error: --top -2: "),
        (
            ["prepare", "in", "out", "--workers", "100000"],
            "effnet prepare: --workers 100000: expected an integer in 1..1024",
        ),  # fmt: skip
        (["summary", "b0", "--num-classes", "-3"], "num_classes must be an int >= 0, got -3"),
    ],
)
def test_cli_integer_flags(argv, message, tmp_path, capsys):
    assert message in _refused(capsys, tmp_path, argv)


@pytest.mark.parametrize("top", [-2, 0, True, 2.0, "3"])
def test_predict_top_is_checked_before_any_file_is_read(top, tmp_path):
    with pytest.raises(ValueError, match=r"top must be an int >= 1 \(the classes to return per image\), got"):
        predict([tmp_path / "missing.png"], tmp_path / "missing.safetensors", top=top)


@pytest.mark.parametrize("paths", [[], "photo.jpg"])
def test_predict_needs_a_list_of_images(paths, tmp_path):
    with pytest.raises(ValueError, match="image_paths must be a non-empty list of image files, got"):
        predict(paths, tmp_path / "missing.safetensors")


@pytest.mark.parametrize("batch", [0, -4, True, 2**21])
def test_evaluate_batch_is_checked_before_the_checkpoint_is_read(batch, tmp_path):
    with pytest.raises(ValueError, match=r"batch must be an int in 1..1048576 \(None: the run's eval_batch\)"):
        evaluate_checkpoint(str(tmp_path / "no-run"), batch=batch)


# --- the public model constructors of both twins: one ValueError naming the argument


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_classes": True}, "num_classes must be an int >= 0, got bool True"),
        ({"num_classes": 10.0}, "num_classes must be an int >= 0, got float 10.0"),
        ({"num_classes": "10"}, "num_classes must be an int >= 0, got str '10'"),
        ({"num_classes": 10**7}, "num_classes must be at most 1,000,000, got 10,000,000"),
        pytest.param(
            {"num_classes": -(10**5000)},
            "num_classes must be an int >= 0, got an integer of about 5001 digits",
            id="huge",
        ),
        ({"in_channels": 0}, "in_channels must be an int >= 1, got 0"),
        ({"in_channels": False}, "in_channels must be an int >= 1, got bool False"),
        ({"in_channels": 5000}, "in_channels must be at most 1,024, got 5,000"),
    ],
)
@pytest.mark.parametrize("build", ["spec", "jax", "torch"])
def test_model_constructor_arguments(build, kwargs, message):
    make = {"spec": resolve, "jax": EfficientNet.from_name, "torch": effnet_torch.EfficientNet.from_name}[build]
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        make("b0", **kwargs)


def test_numpy_counts_are_taken_and_reset_classifier_checks_too():
    spec = resolve("b0", num_classes=np.int64(3), stages=STAGES[:2])
    assert spec.num_classes == 3 and type(spec.num_classes) is int
    model = effnet_torch.EfficientNet(spec)
    with pytest.raises(ValueError, match="num_classes must be an int >= 0, got bool True"):
        model.reset_classifier(True)
    model.reset_classifier(np.int32(4))
    assert model.spec.num_classes == 4 and model.classifier.out_features == 4


# --- the torch twin's input dtype: the parameters', or what autocast casts


@pytest.fixture(scope="module")
def twin():
    torch.manual_seed(0)
    return effnet_torch.EfficientNet(resolve("b0", num_classes=3, stages=STAGES[:2])).eval()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_torch_twin_refuses_another_dtype_naming_both(twin, dtype):
    x = torch.zeros(1, 3, 16, 16, dtype=dtype)
    with pytest.raises(TypeError, match=rf"input dtype {dtype}, but the model's parameters are torch.float32: pass"):
        twin(x)


def test_torch_twin_takes_its_own_dtype_and_autocast(twin):
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert twin.double()(x.double()).dtype == torch.float64
        twin.float()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert twin(x.bfloat16()).shape == (2, 3)
            with pytest.raises(TypeError, match="input dtype torch.float64"):
                twin(x.double())


# --- effnet prepare's metadata, damaged: one line naming the file and the key, where training reads it


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("ranges")
    for c in ("a", "b"):
        (root / "images" / c).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((8, 8, 3), 60 * i, np.uint8)).save(root / "images" / c / f"{i}.png")
    prepare(str(root / "images"), str(root / "shards"), workers=1)
    return root / "shards"


def _damaged(shards: Path, tmp_path: Path, change) -> Path:
    out = tmp_path / "damaged"
    out.mkdir()
    for p in shards.iterdir():
        (out / p.name).write_bytes(p.read_bytes())
    meta = json.loads((out / records.METADATA).read_text())
    change(meta)
    (out / records.METADATA).write_text(json.dumps(meta))
    return out


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda m: m.pop("class_names"), "key 'class_names' is missing"),
        (lambda m: m.update(class_names="ab"), "key 'class_names' must be list; got str"),
        (lambda m: m.update(class_names=["a", "a"]), "key 'class_names' names a class twice ('a')"),
        (lambda m: m.update(class_counts=[2]), "key 'class_counts' must hold one int >= 0 per class (2); got [2]"),
        (lambda m: m.update(num_records=True), "key 'num_records' must be int; got bool"),
        (lambda m: m["shards"][0].update(file="../../etc/passwd"), "key 'shards' entry 0 names '../../etc/passwd'"),
        (lambda m: m["shards"][0].pop("bytes"), "key 'shards' entry 0 must be an object with file, first, count"),
    ],
)
def test_damaged_metadata_is_one_line_naming_file_and_key(shards, tmp_path, change, message):
    out = _damaged(shards, tmp_path, change)
    with pytest.raises(ValueError) as e:
        make_source(str(out), "train")
    text = str(e.value)
    assert text.startswith(f"records metadata {out / records.METADATA}: {message}") and "\n" not in text, text


def test_training_on_damaged_metadata_is_one_line(shards, tmp_path, capsys):
    out = _damaged(shards, tmp_path, lambda m: m.pop("class_names"))
    before = snapshot(out)
    rc = cli(["train", "--preset", "smoke", "--data", str(out), "--workdir", str(tmp_path / "run")], fast_malloc=False)
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("[effnet] ")]  # notes
    assert rc == 2 and len(err) == 1 and "key 'class_names' is missing" in err[0], err
    assert snapshot(out) == before


# --- effnet bench: every flag checked before the first measurement


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--reps", "0"], "--reps 0: expected an integer in 1..100000"),
        (["--reps", HUGE], "--reps"),
        (["--out", "file"], "exists and is not a directory"),
        (["--out", "file/sub"], "exists and is not a directory"),
        (["--depthwise", "fast"], "--depthwise 'fast': expected auto or one of grouped, shift"),
        (["--tag", "a/b"], "--tag 'a/b': expected a word"),
        (["--only", "inference,nope"], "unknown suite(s) ['nope'] in --only"),
        (["--contenders", "jax,tf"], "unknown contender(s) ['tf'] in --contenders"),
        (["--variants", "b0,v3_s"], "unknown variant(s) ['v3_s'] in --variants"),
        (["--variants", "v2_b0", "--resolution", "0"], "--resolution 0: expected an integer in 1..4096"),
        (["--variants", "v2_s", "--batch", "0"], "--batch 0: expected an integer in 1..1048576"),
        (["--batch", "8"], "--batch sizes the --variants cases; give --variants too"),
    ],
)
def test_bench_flags_are_refused_before_any_work(argv, message, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    err = _refused(capsys, tmp_path, ["bench", "--out", "results", *argv])
    assert err.startswith("effnet bench: error: ") and message in err, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_bench_cuda_without_cuda(tmp_path, capsys):
    err = _refused(capsys, tmp_path, ["bench", "--torch-device", "cuda", "--out", "results"])
    assert "--torch-device cuda: torch sees no CUDA device here" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_bench_read_only_out(tmp_path, capsys):
    (tmp_path / "ro").mkdir(mode=0o500)
    try:
        err = _refused(capsys, tmp_path, ["bench", "--out", "ro/results"])
    finally:
        (tmp_path / "ro").chmod(0o700)
    assert "ro is not writable (Permission denied)" in err, err
