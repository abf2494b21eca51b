"""Fault injection on a tiny run (the `faults` tier, `pytest -m faults`): kill -9 at random moments
and in the middle of a checkpoint write, a disk that fills up, a checkpoint folder that turns read-only, two runs
started on one workdir. After each, `--resume` must end bit-identical to an uninterrupted run, with the same metrics
rows.

Trials: EFFNET_FAULT_TRIALS random kills (default 2) + 1 mid-save kill, seeded by EFFNET_FAULT_SEED (default: a
fresh seed per suite run, set by conftest.py for every xdist worker and printed in the summary so a failure can be
replayed): each CI run draws new moments, so the moments covered grow run by run; `EFFNET_FAULT_TRIALS=20` for a
deeper run. Each passed trial records what it hit (`record_property("fault", ...)`); conftest.py prints the counts at
the end of the run. In CI the module runs first on one worker while the other runs the rest of the suite.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest
from _mounts import remount, tmpfs

from effnet_jax.train.checkpoint import Checkpointer

pytestmark = pytest.mark.faults

TINY = [
    "data=digits", "num_classes=0", "stages=1", "resolution=16", "global_batch=16", "eval_batch=120", "steps=8",
    "ckpt_every=2", "keep=3", "log_every=3", "eval_every=4", "augment=randaugment", "progress=false",
]  # fmt: skip
TIMEOUT_S = 300
SEED = int(os.environ["EFFNET_FAULT_SEED"])  # drawn once per suite run by conftest.py (or given, to replay)
RANDOM_KILLS = int(os.environ.get("EFFNET_FAULT_TRIALS", "2"))
MID_SAVE_KILLS = 1
ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}


def _cmd(workdir, *extra) -> list[str]:
    """`effnet train` on TINY; a `--set KEY=` in `extra` replaces TINY's (one key given two values is refused)."""
    keys = {e.split("=", 1)[0] for e in extra if "=" in e}
    sets = [arg for o in [*TINY, f"workdir={workdir}"] if o.split("=", 1)[0] not in keys for arg in ("--set", o)]
    return [sys.executable, "-m", "effnet_jax.train", "--preset", "smoke", *sets, *extra]


def _start(workdir, *extra, log: Path) -> subprocess.Popen:
    return subprocess.Popen(_cmd(workdir, *extra), env=ENV, stdout=subprocess.DEVNULL, stderr=log.open("w"))


def _run(workdir, *extra) -> subprocess.CompletedProcess:
    return subprocess.run(_cmd(workdir, *extra), env=ENV, capture_output=True, text=True, timeout=TIMEOUT_S)


def _final(workdir) -> dict:
    """Step 8's saved state (model, optimizer, EMA) as flat numpy arrays."""
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
    items = {k: ocp.args.StandardRestore() for k in ("model", "opt", "ema")}
    got = ckpt.manager.restore(8, args=ocp.args.Composite(**items))
    import jax

    def host(x):
        return np.asarray(jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x)

    return {
        f"{k}{jax.tree_util.keystr(p)}": host(x)
        for k in items
        for p, x in jax.tree_util.tree_flatten_with_path(got[k])[0]
    }


def _rows(workdir) -> list[tuple]:
    """metrics.jsonl without the wall-clock fields, in order."""
    rows = [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
    return [tuple(sorted((k, v) for k, v in r.items() if k not in ("time", "img_per_s"))) for r in rows]


def _assert_same_as_reference(workdir, reference) -> None:
    state = _final(workdir)
    assert state.keys() == reference["state"].keys()
    for k in state:  # same program, same inputs, same keys on the same CPU: bit-identical
        np.testing.assert_array_equal(state[k], reference["state"][k], err_msg=k)
    # Each step logged once, and the first row after the resume averages the whole window, as uninterrupted.
    assert _rows(workdir) == _rows(reference["dir"])


def _compiling(log: Path) -> bool:
    return log.exists() and "compiling" in log.read_text()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run, and how long it trains after its "compiling" line (the window kills are drawn from)."""
    workdir = tmp_path_factory.mktemp("reference")
    log = workdir.parent / f"{workdir.name}.log"
    proc = _start(workdir, log=log)
    assert _wait_for(lambda: _compiling(log), proc, poll_s=0.01), log.read_text()[-3000:]
    t0 = time.monotonic()
    assert proc.wait(TIMEOUT_S) == 0, log.read_text()[-3000:]
    return {"dir": workdir, "state": _final(workdir), "seconds": time.monotonic() - t0}


def _wait_for(predicate, proc: subprocess.Popen, poll_s: float = 0.001) -> bool:
    """Poll until `predicate()` (True) or the process ends (False)."""
    while proc.poll() is None:
        if predicate():
            return True
        time.sleep(poll_s)
    return False


def _kill_and_resume(tmp_path, reference, trigger) -> tuple[str, int | None]:
    """Start a run, kill -9 it when `trigger(proc, workdir)` returns, resume it. Returns how the kill landed and
    the step the resume continued from (None: before the first checkpoint, so the resume started afresh)."""
    workdir = tmp_path / "run"
    proc = _start(workdir, log=tmp_path / "killed.log")
    try:
        trigger(proc, workdir)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(TIMEOUT_S)
    hit = "finished first" if proc.returncode == 0 else "killed"
    if proc.returncode not in (0, -signal.SIGKILL):
        pytest.fail(f"the run failed on its own: {(tmp_path / 'killed.log').read_text()[-3000:]}")
    resumed = _run(workdir, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Traceback" not in resumed.stderr
    found = re.search(r"resumed from .* at step (\d+)", resumed.stderr)
    _assert_same_as_reference(workdir, reference)
    assert not [p for p in (workdir / "checkpoints").iterdir() if "tmp" in p.name], "half-written steps removed"
    return hit, int(found.group(1)) if found else None


@pytest.mark.parametrize("trial", range(RANDOM_KILLS))
def test_kill_9_at_a_random_moment_then_resume_is_bit_identical(tmp_path, reference, record_property, trial):
    delay = random.Random(SEED * 1000 + trial).uniform(0.0, 0.85 * reference["seconds"])  # rarely after the end

    def trigger(proc, workdir):  # from the "compiling" line: compile, steps, evaluations and saves
        _wait_for(lambda: _compiling(tmp_path / "killed.log"), proc, poll_s=0.01)
        time.sleep(delay)

    hit, step = _kill_and_resume(tmp_path, reference, trigger)
    if hit == "finished first":
        record_property("fault", "kill -9 at a random moment: the run had finished")
    else:
        record_property(
            "fault",
            f"kill -9 at a random moment, {f'resumed at step {step}' if step else 'before the first checkpoint'}",
        )


@pytest.mark.parametrize("trial", range(MID_SAVE_KILLS))
def test_kill_9_in_the_middle_of_a_checkpoint_write_then_resume_is_bit_identical(
    tmp_path, reference, record_property, trial
):
    nth = random.Random(SEED * 1000 + 100 + trial).randint(1, 3)  # which of the saves at steps 2, 4, 6 to cut
    seen: set[str] = set()

    def trigger(proc, workdir):
        def writing() -> bool:
            ckpt = workdir / "checkpoints"
            names = {n for n in (os.listdir(ckpt) if ckpt.is_dir() else []) if "orbax-checkpoint-tmp" in n}
            seen.update(names)
            return len(seen) >= nth and bool(names)

        assert _wait_for(writing, proc), f"the run ended before its save number {nth} was seen in progress"
        proc.send_signal(signal.SIGKILL)
        proc.wait(TIMEOUT_S)
        landed["mid-write"] = (workdir / "checkpoints" / f"{2 * nth}.orbax-checkpoint-tmp").exists()

    landed = {}
    hit, step = _kill_and_resume(tmp_path, reference, trigger)
    assert hit == "killed"
    if landed["mid-write"]:  # the resume continues from the step before the one cut (or afresh, for the first)
        assert step == (2 * (nth - 1) or None), step
        resumed = f"resumed at step {step}" if step else "restarted (no checkpoint before)"
        record_property("fault", f"kill -9 while step {2 * nth}'s checkpoint was being written, {resumed}")
    else:  # the write completed in the microseconds between seeing it and the kill
        assert step == 2 * nth, step
        record_property("fault", f"kill -9 just after step {2 * nth}'s checkpoint was written")


def test_a_full_disk_stops_the_run_in_one_line_and_the_run_resumes_once_there_is_room(
    tmp_path, reference, record_property
):
    step_bytes = sum(f.stat().st_size for f in (reference["dir"] / "checkpoints" / "8").rglob("*") if f.is_file())
    workdir = tmp_path / "run"
    with tmpfs(workdir, size=f"{int(2.5 * step_bytes) + 400_000}"):  # room for two checkpoints and the records
        t0 = time.monotonic()
        failed = _run(workdir)
        assert time.monotonic() - t0 < 120, "reported promptly"
        last = failed.stderr.strip().splitlines()[-1]
        assert failed.returncode == 2 and last.startswith("effnet train: error: the checkpoint of step "), last
        assert "No space left on device" in last and "is intact" in last and "--resume" in last
        assert "Traceback" not in failed.stderr
        kept = Checkpointer(str(workdir / "checkpoints"), read_only=True).all_steps()
        assert kept and not (workdir / "summary.json").exists()
        subprocess.run(["mount", "-o", "remount,size=64m", str(workdir)], check=True)
        resumed = _run(workdir, "--resume")
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert f"resumed from {workdir / 'checkpoints'} at step {max(kept)}" in resumed.stderr
        _assert_same_as_reference(workdir, reference)
    record_property("fault", "full disk, then resume")


def test_a_checkpoint_folder_gone_read_only_stops_at_the_next_save_and_loses_nothing(
    tmp_path, reference, record_property
):
    """Regression: the run waited ~5 minutes for Orbax's directory signal, then died with a TimeoutError traceback."""
    workdir = tmp_path / "run"
    ckpt = workdir / "checkpoints"
    with tmpfs(ckpt, size="64m"):
        proc = _start(workdir, log=tmp_path / "ro.log")
        try:
            assert _wait_for(lambda: (ckpt / "2").is_dir(), proc), "the run ended before its first checkpoint"
            proc.send_signal(signal.SIGSTOP)  # held while the folder turns read-only, so the run cannot finish first
            remount(ckpt, read_only=True)
            proc.send_signal(signal.SIGCONT)
            t0 = time.monotonic()
            proc.wait(TIMEOUT_S)
        finally:
            if proc.poll() is None:
                proc.kill()
        err = (tmp_path / "ro.log").read_text()
        assert time.monotonic() - t0 < 60, "reported at the next save, not after a timeout"
        last = err.strip().splitlines()[-1]
        assert proc.returncode == 2 and "could not be written to" in last and "Read-only file system" in last, last
        assert "Traceback" not in err
        remount(ckpt, read_only=False)
        kept = Checkpointer(str(ckpt), read_only=True).all_steps()
        assert kept and kept[0] == 2
        resumed = _run(workdir, "--resume")
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        _assert_same_as_reference(workdir, reference)
        # Read-only from the start: refused before anything is written.
        remount(ckpt, read_only=True)
        before = sorted(p.name for p in workdir.iterdir())
        refused = _run(workdir, "--resume", "--set", "steps=10")
        assert refused.returncode == 2 and refused.stderr.strip().splitlines()[-1] == (
            f"effnet train: error: checkpoint folder '{ckpt}' is not writable: Read-only file system"
        ), refused.stderr[-2000:]
        assert sorted(p.name for p in workdir.iterdir()) == before
        remount(ckpt, read_only=False)
    record_property("fault", "checkpoint folder turned read-only, then resume")


def test_two_runs_started_on_one_workdir_one_is_refused_the_other_unharmed(tmp_path, reference, record_property):
    workdir = tmp_path / "run"
    procs = [_start(workdir, log=tmp_path / f"{i}.log") for i in range(2)]
    codes = [p.wait(TIMEOUT_S) for p in procs]
    logs = [(tmp_path / f"{i}.log").read_text() for i in range(2)]
    assert sorted(codes) == [0, 2], logs
    loser = logs[codes.index(2)].strip().splitlines()[-1]
    # Refused by the lock (it came while the other ran: named by pid, or before the holder had written its name) or,
    # had it come after the other finished, by its checkpoints.
    in_use = f"effnet train: error: workdir '{workdir}' is in use by another run "
    refusals = (in_use + "(pid ", in_use + "(a process that has not written its name yet)",
                f"effnet train: error: {workdir / 'checkpoints'} already holds checkpoints")  # fmt: skip
    assert loser.startswith(refusals), loser
    _assert_same_as_reference(workdir, reference)
    record_property("fault", "two runs on one workdir")
