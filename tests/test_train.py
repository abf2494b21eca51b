"""End-to-end training on a 1-stage b0 at 16 px: outputs, eval CLI, exact resume after kill -9, NaN stop, errors."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest

from effnet_jax.cli import eval as evaluate
from effnet_jax.cli import train as train_cli
from effnet_jax.train import loop as train_mod
from effnet_jax.train.checkpoint import Checkpointer
from effnet_jax.train.config import from_preset

pytestmark = pytest.mark.integration  # trains in-process and in `effnet train` subprocesses

WORKER = str(Path(__file__).with_name("_train_worker.py"))
TINY = [
    "data=digits", "num_classes=0", "stages=1", "resolution=16", "global_batch=16", "eval_batch=120",
    "steps=8", "ckpt_every=2", "keep=3", "log_every=1", "augment=randaugment", "progress=false",
]  # fmt: skip
TIMEOUT_S = 240


def _cfg(workdir, *extra):
    return from_preset("smoke", [*TINY, f"workdir={workdir}", *extra])


def _weights(workdir, step):
    """The saved model weights (params + BN stats) of `step`, as numpy, read without building a model."""
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
    got = ckpt.manager.restore(step, args=ocp.args.Composite(ema=ocp.args.StandardRestore()))
    import jax

    return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(got["ema"])[0]}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One uninterrupted 8-step run shared by the tests below."""
    workdir = tmp_path_factory.mktemp("full")
    summary = train_mod.train(_cfg(workdir))
    return workdir, summary


def test_run_writes_config_metrics_plot_summary_and_checkpoints(finished_run):
    workdir, summary = finished_run
    cfg = json.loads((workdir / "config.json").read_text())
    assert cfg["steps"] == 8 and cfg["stages"] == 1
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in train_rows] == list(range(1, 9))
    assert all(np.isfinite(r["loss"]) and 0 <= r["top1"] <= 1 and r["lr"] >= 0 for r in train_rows)
    val = [r for r in rows if r["kind"] == "val"]
    assert val and val[-1]["count"] == 360
    assert (workdir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir / "tb"))
    assert json.loads((workdir / "summary.json").read_text())["steps"] == 8 == summary["steps"]
    assert Checkpointer(str(workdir / "checkpoints")).all_steps() == [4, 6, 8]  # keep=3


def test_eval_cli_reports_top1_top5(finished_run, capsys):
    workdir, summary = finished_run
    parser = argparse.ArgumentParser()
    evaluate.add_arguments(parser)
    assert evaluate.main(parser.parse_args(["--checkpoint", str(workdir), "--json"])) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r["step"] == 8 and r["weights"] == "ema" and r["count"] == 360
    assert r["top1"] == pytest.approx(summary["final_val"]["top1"]), "same weights, same split as the run's eval"
    assert 0 <= r["top1"] <= r["top5"] <= 1


def test_a_run_is_a_pretrained_source(finished_run):
    """from_pretrained(RUN): the run's model and EMA weights, with another head and stem on request."""
    from effnet_jax import EfficientNet
    from effnet_jax.weights import key_map, state_dict_from_model
    from effnet_spec.contract import tensors

    workdir, _ = finished_run
    model = EfficientNet.from_pretrained(workdir)
    saved = _weights(workdir, 8)
    sd = state_dict_from_model(model)
    assert model.spec.num_classes == 10 and len(model.spec.stages) == 1, "the run's own (1-stage) model"
    assert model.preprocessing.class_names == tuple("0123456789") and model.preprocessing.resolution == 16
    by_path = {tuple(re.findall(r"\['?([^'\]]+)'?\]", k.removesuffix("['value']"))): a for k, a in saved.items()}
    entries = key_map(model.spec)
    assert len(by_path) == len(entries)
    for e in entries:  # the EMA weights of the last checkpoint, read by Orbax alone, in the interchange layout
        want = e.layout.torch_array(by_path[tuple(str(p) for p in e.jax_path)])
        assert np.array_equal(sd[e.torch_key], want), e.torch_key
    raw = state_dict_from_model(EfficientNet.from_pretrained(workdir, ema=False))
    assert any(not np.array_equal(raw[k], sd[k]) for k in sd), "ema=False reads the raw weights"
    for in_channels in (1, 4):
        adapted = EfficientNet.from_pretrained(workdir, num_classes=3, in_channels=in_channels)
        got = state_dict_from_model(adapted)
        head = {t.name for t in tensors(adapted.spec) if t.module.part == "classifier"}
        stem = next(t.name for t in tensors(adapted.spec) if t.module.part == "stem.conv")
        assert got[stem].shape[1] == in_channels and all(not got[k].any() for k in head)
        assert all(np.array_equal(got[k], sd[k]) for k in sd.keys() - head - {stem})
        assert adapted.preprocessing.class_names is None


def test_remat_trains_the_same_run(finished_run, tmp_path):
    """`--set remat=block` through the loop (its jit takes `remat_compiler_options`): the same losses and weights as
    the plain run, up to float32 rounding (the recomputed forward fuses differently; 8 steps of a 1-stage b0)."""
    workdir, _ = finished_run
    train_mod.train(_cfg(tmp_path, "remat=block"))
    rows = [[json.loads(line) for line in (w / "metrics.jsonl").read_text().splitlines()] for w in (workdir, tmp_path)]
    plain, remat = ([r["loss"] for r in rs if r["kind"] == "train"] for rs in rows)
    np.testing.assert_allclose(remat, plain, rtol=1e-5)
    a, b = _weights(workdir, 8), _weights(tmp_path, 8)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-4, atol=1e-6, err_msg=k)


def test_scan_resumes_a_plain_run_and_trains_the_same(tmp_path):
    """`--set scan=true` keeps the model's tree, so it resumes a checkpoint written without it, and the scanned steps
    give the plain run's losses and weights up to float32 rounding. Two stages at depth 1.5 (alpha 1.5, phi 1): stage
    2 has three blocks, the last two scanned (5 blocks to compile where b0's first four stages have 8)."""
    plain, scanned = tmp_path / "plain", tmp_path / "scanned"
    small = ("stages=2", "phi=1", "coefficients=1.5,1,1", "steps=4", "ckpt_every=2")
    train_mod.train(_cfg(plain, *small))
    assert Checkpointer(str(plain / "checkpoints")).all_steps() == [2, 4]
    shutil.copytree(plain, scanned)
    shutil.rmtree(scanned / "checkpoints" / "4")  # as if the plain run had stopped after step 2's checkpoint
    train_mod.train(_cfg(scanned, *small, "scan=true", "resume=true"))
    assert json.loads((scanned / "config.json").read_text())["scan"] is False, "the first segment's settings"
    (segment,) = [json.loads(line) for line in (scanned / "segments.jsonl").read_text().splitlines()]
    assert segment["step"] == 2 and segment["changed"] == {"scan": [False, True]}
    rows = [[json.loads(line) for line in (w / "metrics.jsonl").read_text().splitlines()] for w in (plain, scanned)]
    losses = [{r["step"]: r["loss"] for r in rs if r["kind"] == "train"} for rs in rows]
    assert sorted(losses[1]) == [1, 2, 3, 4]
    np.testing.assert_allclose([losses[1][s] for s in (3, 4)], [losses[0][s] for s in (3, 4)], rtol=1e-5)
    a, b = _weights(plain, 4), _weights(scanned, 4)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-4, atol=1e-6, err_msg=k)


def test_eval_without_checkpoint_is_an_error(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    evaluate.add_arguments(parser)
    assert evaluate.main(parser.parse_args(["--checkpoint", str(tmp_path)])) == 2
    assert "no training checkpoint" in capsys.readouterr().err


@pytest.mark.slow
def test_kill_9_then_resume_matches_uninterrupted(finished_run, tmp_path):
    full_dir, _ = finished_run
    overrides = [*TINY, f"workdir={tmp_path}"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    killed = subprocess.run(
        [sys.executable, WORKER, "kill", "5", "--", *overrides], env=env, capture_output=True, text=True,
        timeout=TIMEOUT_S,
    )  # fmt: skip
    assert killed.returncode == -9, killed.stderr[-3000:]
    survivors = Checkpointer(str(tmp_path / "checkpoints")).all_steps()
    assert survivors and max(survivors) <= 4, f"killed before step 5 finished; checkpoints {survivors}"
    sets = [arg for o in overrides for arg in ("--set", o)]
    resumed = subprocess.run(
        [sys.executable, "-m", "effnet_jax.train", "--preset", "smoke", "--resume", *sets],
        env=env, capture_output=True, text=True, timeout=TIMEOUT_S,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {tmp_path / 'checkpoints'} at step {max(survivors)}" in resumed.stderr
    a, b = _weights(full_dir, 8), _weights(tmp_path, 8)
    assert a.keys() == b.keys()
    for k in a:  # same program, same inputs, same keys on the same CPU: bit-identical
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parametrize("name, workers", [("SIGTERM", 0), ("SIGINT", 0), ("SIGTERM", 2)])
def test_a_stop_signal_checkpoints_that_step_and_resume_matches_uninterrupted(finished_run, tmp_path, name, workers):
    """Preemption: the step in progress finishes, a checkpoint of it is written (off the ckpt_every schedule), the
    records are flushed, exit 75; --resume then ends bit-identical to the uninterrupted run. With Grain worker
    processes the signal goes to the whole process group, as a terminal or SLURM sends it: the workers live on."""
    full_dir, _ = finished_run
    overrides = [*TINY, f"workdir={tmp_path}"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    target = ["group"] if workers else []
    overrides.append(f"num_workers={workers}")
    cmd = [sys.executable, WORKER, "signal", name, "5", *target, "--", *overrides]
    stopped = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S, start_new_session=True)
    assert stopped.returncode == 75, stopped.stderr[-3000:]
    # The last line of effnet's own (Python's multiprocessing resource tracker, signalled with the group, may add one).
    last = [line for line in stopped.stderr.splitlines() if line.startswith("effnet train:")][-1]
    assert last.startswith(f"effnet train: stopped by {name} after step 5; checkpoint and records written"), last
    assert Checkpointer(str(tmp_path / "checkpoints")).all_steps() == [2, 4, 5], "step 5 saved off the schedule"
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == 5 and summary["preempted"] == name
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2, 3, 4, 5]
    assert not (tmp_path / ".effnet-lock").exists(), "the lock's holder file goes with the run"
    sets = [arg for o in overrides for arg in ("--set", o)]
    resumed = subprocess.run([sys.executable, "-m", "effnet_jax.train", "--preset", "smoke", "--resume", *sets],
                             env=env, capture_output=True, text=True, timeout=TIMEOUT_S)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = _weights(full_dir, 8), _weights(tmp_path, 8)
    for k in a:  # same program, same inputs, same keys on the same CPU: bit-identical
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_a_second_ctrl_c_stops_at_once_in_one_line(tmp_path):
    """Two SIGINTs in step 5: out without the checkpoint of step 5, exit 130, one line (it was a traceback)."""
    overrides = [*TINY, f"workdir={tmp_path}"]
    cmd = [sys.executable, WORKER, "signal", "SIGINT", "5", "twice", "--", *overrides]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    stopped = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    assert "Traceback" not in stopped.stderr
    assert stopped.stderr.strip().splitlines()[-1] == (
        f"effnet train: interrupted; the latest complete checkpoint in {tmp_path} is kept (--resume continues from it)"
    )
    assert Checkpointer(str(tmp_path / "checkpoints"), read_only=True).all_steps() == [2, 4]


def test_a_signal_the_user_started_ignored_stays_ignored():
    """A shell's `cmd &` starts a run with SIGINT ignored; the stop handlers leave an ignored signal alone, take the
    others, and put everything back on exit."""
    from effnet_jax.train.guard import StopSignals

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        term = signal.getsignal(signal.SIGTERM)
        with StopSignals() as stop:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) == stop._handle
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN and signal.getsignal(signal.SIGTERM) is term
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_second_run_on_a_live_workdir_is_refused(tmp_path, capsys):
    """Two runs on one workdir: the second is one line, exit 2, and writes nothing; the holder's death frees it."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from effnet_jax.train.guard import workdir_lock\n"
         "with workdir_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(120)", str(tmp_path)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        before = sorted(os.listdir(tmp_path))
        code = train_cli.main(argparse.Namespace(preset="smoke", set=[*TINY, f"workdir={tmp_path}"], resume=False,
                                                 workdir=None, data=None, print_config=False))  # fmt: skip
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and err[-1].startswith(f"effnet train: error: workdir '{tmp_path}' is in use by another run "
                                                f"(pid {holder.pid} on "), err  # fmt: skip
        assert sorted(os.listdir(tmp_path)) == before == [".effnet-lock"]
    finally:
        holder.kill()
        holder.wait()
    from effnet_jax.train.guard import workdir_lock

    notes = []
    with workdir_lock(str(tmp_path), note=notes.append):  # the kill -9'd holder's lock is free; its file is stale
        assert f"pid {os.getpid()} on " in (tmp_path / ".effnet-lock").read_text()
    assert len(notes) == 1 and f"took over from a run that ended without releasing it (pid {holder.pid} on" in notes[0]
    assert not (tmp_path / ".effnet-lock").exists()


def test_nan_loss_stops_without_overwriting_the_last_good_checkpoint(tmp_path, monkeypatch):
    real, calls = train_mod.to_global, [0]

    def poisoned(batch, mesh):  # from step 3 on, the images are NaN (think: a corrupt shard)
        calls[0] += 1
        if calls[0] >= 3:
            batch = {**batch, "image": np.full_like(batch["image"], np.nan)}
        return real(batch, mesh)

    monkeypatch.setattr(train_mod, "to_global", poisoned)
    cfg = _cfg(tmp_path, "log_every=100")  # only the pre-save check can catch it
    with pytest.raises(train_mod.NonFiniteLoss, match="at step 3 is not finite; stopping without saving"):
        train_mod.train(cfg)
    assert Checkpointer(str(tmp_path / "checkpoints")).all_steps() == [2]
    assert all(np.isfinite(v).all() for v in _weights(tmp_path, 2).values() if v.dtype.kind == "f")


def test_weights_stepped_to_inf_are_never_saved(tmp_path):
    """Regression: the loss and gradient norm checked before a save are from before the update, so a huge step
    (finite loss, finite gradient) saved inf weights as the "last good" checkpoint. The updated state is checked."""
    cfg = from_preset("digits", [*TINY, f"workdir={tmp_path}", "optimizer=sgd", "lr=3e38", "weight_decay=10",
                                 "ckpt_every=1"])  # fmt: skip
    with pytest.raises(train_mod.NonFiniteLoss, match=r"the weights after step 2 \(loss [0-9.]+, gradient norm"):
        train_mod.train(cfg)
    assert Checkpointer(str(tmp_path / "checkpoints"), read_only=True).all_steps() == [1]
    assert all(np.isfinite(v).all() for v in _weights(tmp_path, 1).values() if v.dtype.kind == "f")


def test_existing_checkpoints_without_resume_is_an_error(finished_run):
    workdir, _ = finished_run
    with pytest.raises(ValueError, match="already holds checkpoints .*pass --resume"):
        train_mod.train(_cfg(workdir))


def test_resume_with_a_different_config_is_an_error(finished_run):
    workdir, _ = finished_run
    with pytest.raises(ValueError, match="global_batch: checkpoint 16 vs now 32"):
        train_mod.train(_cfg(workdir, "global_batch=32", "resume=true"))


def test_refused_runs_write_nothing(finished_run):
    workdir, _ = finished_run
    records = {name: (workdir / name).read_bytes() for name in ("config.json", "summary.json", "metrics.jsonl")}
    with pytest.raises(ValueError, match="already holds checkpoints"):
        train_mod.train(_cfg(workdir, "seed=5"))
    with pytest.raises(ValueError, match="cannot resume"):
        train_mod.train(_cfg(workdir, "seed=5", "resume=true"))
    assert {name: (workdir / name).read_bytes() for name in records} == records


def test_resume_with_another_variant_says_so_before_reading_tensors(finished_run):
    workdir, _ = finished_run
    with pytest.raises(ValueError) as e:
        train_mod.train(_cfg(workdir, "variant=b1", "resume=true"))
    msg = str(e.value)
    assert "variant: checkpoint 'b0' vs now 'b1'" in msg
    assert "shape" not in msg and len(msg.splitlines()) < 5, "the config check comes before any shape diff"


def test_resume_of_a_finished_run_keeps_its_records(finished_run):
    workdir, summary = finished_run
    records = {name: (workdir / name).read_bytes() for name in ("config.json", "summary.json", "metrics.jsonl")}
    again = train_mod.train(_cfg(workdir, "resume=true"))
    assert again == summary and again["best_val_top1"] is not None
    assert {name: (workdir / name).read_bytes() for name in records} == records


def test_cli_errors_exit_2(capsys):
    parser = argparse.ArgumentParser()
    train_cli.add_arguments(parser)
    assert train_cli.main(parser.parse_args(["--set", "nope=1"])) == 2
    assert "unknown config key 'nope'" in capsys.readouterr().err


def test_print_config(capsys):
    parser = argparse.ArgumentParser()
    train_cli.add_arguments(parser)
    assert train_cli.main(parser.parse_args(["--print-config", "--set", "seed=9"])) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["seed"] == 9 and cfg["data"] == "digits"
    assert dataclasses.asdict(from_preset())["steps"] == cfg["steps"]


def test_a_resumed_run_counts_the_evaluations_before_its_checkpoint(tmp_path):
    from effnet_jax.train.metrics import best_logged

    path = tmp_path / "metrics.jsonl"
    rows = [("val", 2, 0.5), ("train", 3, 0.99), ("val", 4, 0.7), ("val", 6, 0.9)]  # step 6: after the checkpoint
    path.write_text("".join(json.dumps({"kind": k, "step": s, "top1": v}) + "\n" for k, s, v in rows))
    assert best_logged(str(path), "val", "top1", up_to_step=5) == 0.7
    assert best_logged(str(path), "val", "top1", up_to_step=1) is None
    assert best_logged(str(tmp_path / "none.jsonl"), "val", "top1", up_to_step=9) is None


def test_a_fresh_run_sets_aside_records_of_a_run_that_never_checkpointed(tmp_path):
    old_rows = '{"step": 1, "kind": "train", "loss": 9.0, "top1": 0.0}\n'
    (tmp_path / "metrics.jsonl").write_text(old_rows)
    (tmp_path / "config.json").write_text('{"seed": 123}\n')
    train_mod.train(_cfg(tmp_path, "steps=2", "ckpt_every=0"))
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2] and all(r["loss"] != 9.0 for r in rows)
    (previous,) = [p for p in tmp_path.iterdir() if p.name.startswith("previous-")]
    assert (previous / "metrics.jsonl").read_text() == old_rows, "the old records are kept, not overwritten"
    assert json.loads((previous / "config.json").read_text()) == {"seed": 123}
