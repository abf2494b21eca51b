"""Memory preflight (issue 28, group 2): a step that cannot fit is refused in one line naming its need and the limit,
before it runs and before anything is written; `eval` pads no further than its data; absurd sizes are refused where
they are read. The limits are stated (EFFNET_MEMORY_LIMIT) or faked (/proc, cgroup files, RLIMIT_AS), so every case
runs in-process on tiny models."""

from __future__ import annotations

import json
import os
import resource
import types

import numpy as np
import pytest
from _disk import effnet, snapshot
from flax import nnx
from PIL import Image

from effnet_jax.ops import memory
from effnet_spec import STAGES, Preprocessing, resolve

RES = 16


def _run(argv, capsys) -> tuple[int, list[str], str]:
    """(exit status, stderr lines, stdout) of `effnet ARGV` run in-process."""
    rc = effnet(argv)
    got = capsys.readouterr()
    return rc, got.err.strip().splitlines(), got.out


# ---------------------------------------------------------------------------------------------- limits, no jax


def _fake_system(tmp_path, monkeypatch, *, cgroup: str, files: dict, available_kb: int = 8 << 20):
    proc, sys_cgroup = tmp_path / "proc", tmp_path / "cgroup"
    (proc / "self").mkdir(parents=True)
    (proc / "meminfo").write_text(f"MemTotal: 99999999 kB\nMemAvailable: {available_kb} kB\n")
    (proc / "self" / "cgroup").write_text(cgroup)
    (proc / "self" / "status").write_text("Name: python\nVmSize:  1048576 kB\n")
    for rel, text in files.items():
        (sys_cgroup / rel).parent.mkdir(parents=True, exist_ok=True)
        (sys_cgroup / rel).write_text(text)
    monkeypatch.setattr(memory, "PROC", str(proc))
    monkeypatch.setattr(memory, "CGROUP", str(sys_cgroup))


GIB = 2**30
V2 = {"a/b/memory.max": f"{4 * GIB}\n", "a/b/memory.current": f"{2 * GIB}\n",
      "a/b/memory.stat": f"anon 1\nactive_file {GIB // 2}\ninactive_file {GIB // 2}\n",
      "a/memory.max": "max\n", "a/memory.current": "5\n"}  # fmt: skip
V1 = {"memory/job/memory.limit_in_bytes": f"{3 * GIB}\n", "memory/job/memory.usage_in_bytes": f"{GIB}\n",
      "memory/memory.limit_in_bytes": "9223372036854771712\n", "memory/memory.usage_in_bytes": "7\n"}  # fmt: skip


@pytest.mark.parametrize(
    ("cgroup", "files", "rlimit", "want"),
    [
        ("0::/\n", {}, None, [(8 * GIB, "MemAvailable")]),
        # v2: the limit less usage without page cache (4 - (2 - 1) GiB); the unlimited parent adds nothing
        ("0::/a/b\n", V2, None, [(8 * GIB, "MemAvailable"), (3 * GIB, "cgroup memory.max 4.0 GiB")]),
        ("4:memory:/job\n1:cpu:/\n0::/\n", V1, None,
         [(8 * GIB, "MemAvailable"), (2 * GIB, "cgroup memory.limit_in_bytes 3.0 GiB")]),
        # ulimit -v less the address space in use (1 GiB in the fake status)
        ("0::/\n", {}, 5 * GIB, [(8 * GIB, "MemAvailable"), (4 * GIB, "ulimit -v 5.0 GiB")]),
    ],
)  # fmt: skip
def test_host_headroom_reads_ram_cgroups_and_ulimit(tmp_path, monkeypatch, cgroup, files, rlimit, want):
    _fake_system(tmp_path, monkeypatch, cgroup=cgroup, files=files)
    soft = resource.RLIM_INFINITY if rlimit is None else rlimit
    monkeypatch.setattr(resource, "getrlimit", lambda which: (soft, resource.RLIM_INFINITY))
    got = memory.host_headroom()
    assert [n for n, _ in got] == [n for n, _ in want]
    assert all(w in text for (_, text), (_, w) in zip(got, want)), got


class _Compiled:
    """What `memory.check` reads of a `jax.stages.Compiled`: its memory analysis and (no) devices, so the CPU."""

    input_shardings = ((), {})

    def __init__(self, temp, args, out, alias):
        self.analysis = types.SimpleNamespace(temp_size_in_bytes=temp, argument_size_in_bytes=args,
                                              output_size_in_bytes=out, alias_size_in_bytes=alias)  # fmt: skip

    def memory_analysis(self):
        return self.analysis


MIB = 2**20


@pytest.mark.parametrize(
    ("limit", "analysis", "extra", "refused"),
    [
        ("100M", (60 * MIB, 30 * MIB, 30 * MIB, 30 * MIB), 9 * MIB, None),  # 99 MiB: donated outputs cost nothing
        ("100M", (60 * MIB, 30 * MIB, 30 * MIB, 20 * MIB), 9 * MIB, "needs 109 MiB"),
        ("0.5G", (GIB, 0, 0, 0), 0, "needs 1.0 GiB"),
        ("off", (100 * GIB, 0, 0, 0), 0, None),
    ],
)
def test_check_compares_xla_need_with_the_stated_limit(tmp_path, monkeypatch, limit, analysis, extra, refused):
    _fake_system(tmp_path, monkeypatch, cgroup="0::/\n", files={}, available_kb=64 << 20)  # 64 GiB free
    monkeypatch.setenv(memory.ENV, limit)
    compiled = _Compiled(*analysis)
    if refused is None:
        memory.check(compiled, what="the step", fits="less", host_extra=extra)
        return
    with pytest.raises(memory.NotEnoughMemory) as e:
        memory.check(compiled, what="the step", fits="a smaller batch", host_extra=extra)
    msg = str(e.value)
    assert len(msg.splitlines()) == 1 and refused in msg and "(EFFNET_MEMORY_LIMIT)" in msg, msg
    assert msg.endswith("to fit: a smaller batch") and isinstance(e.value, (ValueError, MemoryError))


def test_the_measured_limit_counts_what_the_arguments_already_hold(tmp_path, monkeypatch):
    _fake_system(tmp_path, monkeypatch, cgroup="0::/\n", files={}, available_kb=100 << 10)  # 100 MiB free
    monkeypatch.delenv(memory.ENV, raising=False)
    monkeypatch.setattr(memory, "_held", lambda held, device: 50 * MIB)  # a state allocated before the check
    memory.check(_Compiled(90 * MIB, 50 * MIB, 0, 0), what="the step", fits="less")  # 140 MiB <= 100 + 50
    with pytest.raises(memory.NotEnoughMemory, match=r"needs 160 MiB .* can use 150 MiB \(host RAM available "
                       r"\(MemAvailable\), plus the 50 MiB its arguments already hold\)"):  # fmt: skip
        memory.check(_Compiled(110 * MIB, 50 * MIB, 0, 0), what="the step", fits="less")


@pytest.mark.parametrize("value", ["lots", "-5G", "8X"])
def test_a_bad_memory_limit_is_named(monkeypatch, value):
    monkeypatch.setenv(memory.ENV, value)
    with pytest.raises(ValueError, match=f"EFFNET_MEMORY_LIMIT='{value}': expected a size"):
        memory.check(_Compiled(1, 1, 1, 0), what="the step", fits="less")


def test_the_commands_name_a_bad_memory_limit_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(memory.ENV, "lots")
    rc, err, _ = _run(["predict", str(tmp_path / "a.png"), "--weights", str(tmp_path / "w.safetensors")], capsys)
    assert rc == 2 and err == ["effnet: error: EFFNET_MEMORY_LIMIT='lots': expected a size such as 512M or 8G (or off)"]


def test_eval_pads_no_further_than_its_data():
    from effnet_jax.train.data import eval_batch_for

    assert eval_batch_for(256, 100000, 1) == 256
    assert eval_batch_for(250, 100000, 4) == 252  # rounded up to the devices
    assert eval_batch_for(1000, 120, 4) == 120


# ---------------------------------------------------------------------------------------------- the commands


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 1-stage b0 (4 classes, 16 px) saved as effnet weights, and one image."""
    from effnet_jax.model import EfficientNet
    from effnet_jax.weights.files import save_checkpoint

    d = tmp_path_factory.mktemp("tiny")
    spec = resolve("b0", num_classes=4, stages=STAGES[:1])
    model = EfficientNet(spec, rngs=nnx.Rngs(0))
    model.preprocessing = Preprocessing(resolution=RES)
    save_checkpoint(model, d / "tiny.safetensors", model.preprocessing)
    Image.fromarray(np.full((20, 24, 3), 128, np.uint8)).save(d / "img.png")
    return types.SimpleNamespace(model=model, weights=d / "tiny.safetensors", image=d / "img.png")


def test_train_refuses_a_step_over_the_limit_before_writing(tmp_path, monkeypatch, capsys):
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.json").write_text('{"an earlier run": true}\n')  # a fresh run would move it aside
    before = snapshot(tmp_path)
    monkeypatch.setenv(memory.ENV, "64K")
    small = ["stages=1", f"resolution={RES}", "optimizer=sgd", "ema_decay=0", "progress=false"]  # quick to compile
    sets = [a for s in small for a in ("--set", s)]
    rc, err, _ = _run(["train", "--preset", "smoke", "--workdir", str(workdir), *sets], capsys)
    assert rc == 2, err
    assert err[-1].startswith("effnet train: error: the train step needs ") and len(err[-1].splitlines()) == 1
    assert "can use 64 KiB (EFFNET_MEMORY_LIMIT)" in err[-1]
    assert (
        "to fit: a smaller global_batch (now 8), remat=dots or remat=block, or a lower resolution (now 16)" in err[-1]
    )
    assert not any(line.startswith("Traceback") for line in err)
    assert snapshot(tmp_path) == before  # no records, no checkpoint, the earlier run's config where it was


def test_eval_does_not_pad_past_the_data_and_refuses_what_cannot_fit(tiny, monkeypatch, capsys):
    from effnet_jax.train import data as data_lib
    from effnet_jax.train import evaluate
    from effnet_jax.train.config import TrainConfig

    restored = types.SimpleNamespace(model=tiny.model, weights="ema", step=1,
                                     config=TrainConfig(data="synthetic", num_classes=4, eval_batch=8))  # fmt: skip
    monkeypatch.setattr(evaluate, "restore_model", lambda *a, **k: restored)
    rows, real = [], data_lib.eval_dataset
    monkeypatch.setattr(data_lib, "eval_dataset", lambda *a, batches, **k: rows.append(batches.global_batch)
                        or real(*a, batches=batches, **k))  # fmt: skip
    monkeypatch.setenv(memory.ENV, "64K")
    rc, err, _ = _run(["eval", "--checkpoint", "run", "--batch", "100000"], capsys)
    assert rc == 2 and len(err) == 1, err
    assert (
        err[0].startswith("effnet eval: error: the eval step needs ")
        and "to fit: a smaller --batch (now 256)" in err[0]
    )
    monkeypatch.delenv(memory.ENV)
    rc, _, out = _run(["eval", "--checkpoint", "run", "--batch", "100000", "--json"], capsys)
    assert rc == 0 and rows == [256, 256]  # the synthetic split's 256 images, not 100000 rows of padding
    assert json.loads(out.splitlines()[-1])["count"] == 256


def test_predict_refuses_a_forward_pass_over_the_limit(tiny, monkeypatch, capsys):
    monkeypatch.setenv(memory.ENV, "64K")
    rc, err, _ = _run(["predict", str(tiny.image), "--weights", str(tiny.weights)], capsys)
    assert rc == 1 and len(err) == 1, err
    assert err[0].startswith("effnet predict: the forward pass of 1 image needs ") and "64 KiB" in err[0]


def test_export_refuses_before_writing_and_an_allocation_failure_is_one_line(tiny, tmp_path, monkeypatch, capsys):
    from effnet_jax.export import stablehlo

    out = tmp_path / "out" / "tiny.hlo"
    out.parent.mkdir()
    argv = ["export", str(tiny.weights), str(out), "--format", "stablehlo"]
    monkeypatch.setenv(memory.ENV, "64K")
    rc, err, _ = _run(argv, capsys)
    assert rc == 1 and len(err) == 1, err
    assert "the model's forward pass at 16x16 needs" in err[0] and "to fit: a smaller --size (now 16x16)" in err[0]
    monkeypatch.delenv(memory.ENV)

    def exhausted(data, x):  # what XLA raises when an allocation fails under a limit the check did not see
        raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1234 bytes.\nmore")

    monkeypatch.setattr(stablehlo, "run", exhausted)
    rc, err, _ = _run(argv, capsys)
    assert rc == 1 and len(err) == 1, err
    assert err[0] == ("effnet export: out of memory exporting at 16x16 (RESOURCE_EXHAUSTED: Out of memory while "
                      "trying to allocate 1234 bytes.); try a smaller --size; nothing was written")  # fmt: skip
    assert os.listdir(out.parent) == []


@pytest.mark.parametrize(
    ("argv", "rc", "message"),
    [
        (["summary", "--phi", "1e6"], 2, "phi must be a finite number >= 0 (and <= 64), got 1000000.0"),
        (["summary", "b0", "--size", "100000"], 2, "--size must lie in 1..16384 pixels, got 100000"),
        (["train", "--set", "resolution=100000", "--workdir", "{tmp}/run"], 2, "resolution must lie in 0..4096"),
        (["predict", "{tmp}/img.png", "--weights", "{tmp}/huge.safetensors"], 1,
         "resolution must be an int in 1..16384"),
        (["export", "--size", "100000", "{tmp}/huge.safetensors", "{tmp}/a.hlo", "--format", "stablehlo"], 1,
         "each side 1 to 4096, got '100000'"),
    ],
)  # fmt: skip
def test_absurd_sizes_are_refused_where_they_are_read(tiny, tmp_path, capsys, argv, rc, message):
    from safetensors import safe_open
    from safetensors.numpy import save_file

    with safe_open(str(tiny.weights), "np") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)
    pre = json.loads(meta["preprocessing"])
    save_file(
        tensors,
        str(tmp_path / "huge.safetensors"),
        {**meta, "preprocessing": json.dumps({**pre, "resolution": 100000})},
    )
    (tmp_path / "img.png").write_bytes(tiny.image.read_bytes())
    before = snapshot(tmp_path)
    got, err, _ = _run([a.format(tmp=tmp_path) for a in argv], capsys)
    assert got == rc and len(err) == 1 and message in err[0], err
    assert snapshot(tmp_path) == before
