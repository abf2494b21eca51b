"""Hostile resumes (issue 28, groups 5 and 10): a damaged latest checkpoint, and a resume that would change the run.

The run's checkpoints (steps 2 and 4) and config.json are written by the functions `effnet train` uses, without
training: what is tested is how a resume reads them, and stepping would only add compiles. A resume that is let
through stops before its first step (`stop_before_compiling`: no step compiled), after its records are written.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from _disk import snapshot
from jax.sharding import Mesh

from effnet_jax.cli import train as train_cli
from effnet_jax.train import loop as train_mod
from effnet_jax.train.checkpoint import Checkpointer, DamagedCheckpoint
from effnet_jax.train.config import from_preset
from effnet_jax.train.guard import LOCK_FILE
from effnet_jax.train.runs import restore_model
from effnet_jax.train.state import save
from effnet_jax.train.workdir import SEGMENTS, write_config

pytestmark = pytest.mark.integration  # a whole resume path, in-process; one small compile (the model's init)

TINY = [
    "stages=1", "resolution=16", "global_batch=8", "eval_batch=8", "steps=4", "ckpt_every=2", "keep=3",
    "log_every=1", "progress=false",
]  # fmt: skip


def _sets(workdir, *extra) -> list[str]:
    """TINY with `extra`'s keys replaced (one key given two values is refused, as a flag conflict)."""
    keys = {e.split("=", 1)[0] for e in extra}
    return [*(t for t in TINY if t.split("=", 1)[0] not in keys), f"workdir={workdir}", *extra]


def _cfg(workdir, *extra):
    return from_preset("smoke", _sets(workdir, *extra))


def _mesh() -> Mesh:
    return Mesh(np.array(jax.devices()[:1]), ("data",))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A 4-step run's workdir on synthetic data: config.json and checkpoints 2 and 4, as `effnet train` writes them."""
    workdir = tmp_path_factory.mktemp("tiny") / "run"
    cfg = _cfg(workdir)
    workdir.mkdir()
    data, run = train_mod.make_data_and_run(cfg, _mesh())
    write_config(cfg, 0, None)
    for step in (2, 4):
        run.step = step
        save(cfg, run, data, force=True)
    run.ckpt.close()
    return workdir


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> Path:
    dest = tmp_path / "run"
    shutil.copytree(tiny_run, dest)
    return dest


class _Stopped(Exception):
    pass


@pytest.fixture
def stop_before_compiling(monkeypatch):
    """`train()` goes as far as its first step, without compiling one: the state restored, the records written
    (they are written once the steps compiled, so that a step refused by the memory preflight writes nothing)."""
    runs = []

    def compiled(cfg, mesh, data, run, *steps):
        runs.append(run)
        return None, None

    def stop(*args, **kwargs):  # the metrics logger, made right after the records
        runs[-1].ckpt.close()
        raise _Stopped

    monkeypatch.setattr(train_mod, "compiled_steps", compiled)
    monkeypatch.setattr(train_mod, "Logger", stop)


def _truncate(step_dir: Path) -> None:
    """Cut the largest data file of the step's EMA weights in half (a copy that stopped part way)."""
    largest = max((p for p in (step_dir / "ema").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    with open(largest, "r+b") as f:
        f.truncate(largest.stat().st_size // 2)


def _empty(step_dir: Path) -> None:
    for p in step_dir.iterdir():
        shutil.rmtree(p) if p.is_dir() else p.unlink()


def _cli(workdir, *extra, capsys) -> tuple[int, list[str]]:
    """`effnet train --resume` in-process: its exit status and what it printed besides its `[effnet]` progress."""
    parser = argparse.ArgumentParser()
    train_cli.add_arguments(parser)
    sets = [a for s in _sets(workdir, *extra) for a in ("--set", s)]
    rc = train_cli.main(parser.parse_args(["--preset", "smoke", *sets, "--resume"]))
    return rc, [line for line in capsys.readouterr().err.splitlines() if line.strip() and "[effnet]" not in line]


# ---------------------------------------------------------------------------------------------- group 5: damage


def test_a_truncated_latest_step_resumes_from_the_one_before_and_a_changed_lr_starts_a_segment(
    run_copy, capsys, stop_before_compiling
):
    """Step 4 truncated: the resume continues from step 2 with a note and keeps step 4 as `4.damaged`; the changed
    lr and steps are one line and a segments.jsonl row, and config.json keeps the first segment's settings."""
    ckpts = run_copy / "checkpoints"
    first = (run_copy / "config.json").read_bytes()
    _truncate(ckpts / "4")
    damaged = snapshot(ckpts / "4")
    with pytest.raises(_Stopped):
        train_mod.train(_cfg(run_copy, "resume=true", "lr=0.5", "steps=6"))
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if "cannot be read" in line]
    assert len(notes) == 1 and "step 4" in notes[0] and "4.damaged" in notes[0] and "from step 2" in notes[0], err
    assert f"resumed from {ckpts} at step 2" in err and "Traceback" not in err
    kept = snapshot(ckpts / "4.damaged")
    assert kept == damaged, "the damaged step is kept as it was, for the user to inspect"
    assert Checkpointer(str(ckpts), read_only=True).all_steps() == [2]
    changed = [line for line in err.splitlines() if "changes" in line]
    assert len(changed) == 1 and "lr 0.0 -> 0.5" in changed[0] and "steps 4 -> 6" in changed[0], err
    assert (run_copy / "config.json").read_bytes() == first, "config.json keeps the first segment's settings"
    rows = [json.loads(line) for line in (run_copy / SEGMENTS).read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["step"] == 2 and rows[0]["changed"] == {"lr": [0.0, 0.5], "steps": [4, 6]}
    assert rows[0]["config"]["lr"] == 0.5 and rows[0]["config"]["steps"] == 6


def test_an_emptied_latest_step_resumes_from_the_one_before_and_later_saves_keep_complete_steps(run_copy, capsys):
    """Step 4's folder emptied (Orbax: KeyError): the state is step 2's and step 4 is set aside, so the run saves
    step 4 again and `keep` counts complete steps only (the saves here are of step 2's state, as the test does not
    step)."""
    ckpts = run_copy / "checkpoints"
    _empty(ckpts / "4")
    cfg = _cfg(run_copy, "resume=true", "steps=6", "keep=2")
    data, run = train_mod.make_data_and_run(cfg, _mesh())
    err = capsys.readouterr().err
    assert run.step == 2 and "step 4" in err and "4.damaged" in err and "Traceback" not in err
    assert (ckpts / "4.damaged").is_dir() and not (ckpts / "4").exists()
    for step in (4, 6):
        run.step = step
        save(cfg, run, data, force=True)
    run.ckpt.close()
    assert Checkpointer(str(ckpts), read_only=True).all_steps() == [4, 6]  # keep=2
    assert (ckpts / "4.damaged").is_dir()


def test_a_reader_uses_the_latest_readable_step_and_moves_nothing(run_copy, capsys):
    ckpts = run_copy / "checkpoints"
    _truncate(ckpts / "4")
    before = snapshot(run_copy, skip={LOCK_FILE})
    restored = restore_model(run_copy)
    assert restored.step == 2 and "step 4" in capsys.readouterr().err
    with pytest.raises(DamagedCheckpoint, match=r"checkpoints/4 cannot be read") as e:  # asked for by its number
        restore_model(run_copy, step=4)
    assert "\n" not in str(e.value)
    assert snapshot(run_copy, skip={LOCK_FILE}) == before


@pytest.mark.parametrize("damage", [_truncate, _empty], ids=["truncated", "emptied"])
def test_no_readable_step_is_one_line_and_moves_nothing(run_copy, capsys, damage):
    ckpts = run_copy / "checkpoints"
    for step in (2, 4):
        damage(ckpts / str(step))
    before = snapshot(run_copy, skip={LOCK_FILE})
    rc, lines = _cli(run_copy, capsys=capsys)
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("effnet train: error: "), lines
    assert f"{ckpts}/4 cannot be read" in lines[0] and "nor can the 1 step before it" in lines[0], lines
    assert snapshot(run_copy, skip={LOCK_FILE}) == before and sorted(os.listdir(ckpts)) == ["2", "4"]


# ---------------------------------------------------------------------------------------------- group 10: meaning

REFUSED = [
    (["weight_source=timm"], "weight_source: checkpoint 'effnet' vs now 'timm'"),
    (["global_batch=16"], "global_batch: checkpoint 8 vs now 16"),
    (["resolution=32", "seed=3"], "resolution: checkpoint 16 vs now 32; seed: checkpoint 0 vs now 3"),
    (["num_classes=3"], "num_classes: checkpoint 4 vs now 3"),
    (["optimizer=adamw"], "optimizer: checkpoint 'rmsprop' vs now 'adamw'"),
    (["grad_clip=1.0"], "grad_clip: checkpoint 0.0 vs now 1.0 (switches clipping on or off)"),
    (["steps=1"], "the run would end at step 1"),
]


@pytest.mark.parametrize(("sets", "expected"), REFUSED, ids=[s[0].split("=")[0] for s, _ in REFUSED])
def test_a_resume_that_changes_what_the_run_is_is_refused_in_one_line(tiny_run, capsys, sets, expected):
    before = snapshot(tiny_run, skip={LOCK_FILE})
    rc, lines = _cli(tiny_run, *sets, capsys=capsys)
    assert rc == 2 and len(lines) == 1 and "cannot resume" in lines[0] and expected in lines[0], lines
    assert snapshot(tiny_run, skip={LOCK_FILE}) == before


def test_segments_drop_rows_of_lost_steps_and_unchanged_resumes_write_nothing(tmp_path, capsys):
    """A segment started at step 4 whose run died before its next checkpoint is resumed from step 2 again: its row
    goes (its steps are lost, as its metrics rows are), the new segment's comes in."""
    saved = dataclasses.asdict(_cfg(tmp_path))  # the config a checkpoint saved
    (tmp_path / "config.json").write_text("{}\n")
    write_config(_cfg(tmp_path, "resume=true"), 2, saved)
    assert not (tmp_path / SEGMENTS).exists() and capsys.readouterr().err == ""
    write_config(_cfg(tmp_path, "resume=true", "lr=0.1"), 4, saved)
    write_config(_cfg(tmp_path, "resume=true", "num_workers=2"), 2, saved)
    rows = [json.loads(line) for line in (tmp_path / SEGMENTS).read_text().splitlines()]
    assert [(r["step"], r["changed"]) for r in rows] == [(2, {"num_workers": [0, 2]})]
    assert (tmp_path / "config.json").read_text() == "{}\n"
    good = (tmp_path / SEGMENTS).read_text()
    (tmp_path / SEGMENTS).write_text("{cut short\n" + good)  # a hand edit gone wrong: named and dropped
    capsys.readouterr()
    write_config(_cfg(tmp_path, "resume=true", "num_workers=2"), 2, saved)
    assert f"{tmp_path / SEGMENTS}:1 is not a segment row" in capsys.readouterr().err
    assert (tmp_path / SEGMENTS).read_text() == good
