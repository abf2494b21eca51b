"""The search's candidate runner on tiny jobs: each job a child `effnet train` run, finished jobs skipped, the same
results whether jobs run one or two at a time, and a search killed mid-job (kill -9 of the runner) that a rerun
completes with the results of an uninterrupted one, leaving no orphan behind."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from effnet_jax.search.runner import Job, run_jobs
from effnet_jax.train.guard import PREEMPTED_EXIT

pytestmark = pytest.mark.slow  # not `faults` too: CI would run it in both groups

TINY = ("stages=2", "resolution=16", "global_batch=16", "eval_every=0", "ckpt_every=2", "log_every=2")
# b checkpoints often enough for the kill test to catch it between two of its checkpoints.
JOBS = [
    Job("a", "digits", (*TINY, "steps=6", "seed=0"), label="first"),
    Job("b", "digits", (*TINY, "steps=12", "seed=1")),
]
STEPS = {"a": 6, "b": 12}
SAME = ("top1", "top5", "steps", "params")  # what does not depend on timing
ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}
# The search in a process of its own, exiting as the CLI will: PREEMPTED_EXIT when stopped by a signal.
DRIVER = """
import json, sys
from effnet_jax.search.runner import Job, SearchStopped, run_jobs
from effnet_jax.train.guard import PREEMPTED_EXIT
jobs = [Job(j["key"], j["preset"], tuple(j["overrides"]), j["label"]) for j in json.loads(sys.argv[2])]
try:
    print(json.dumps(run_jobs(jobs, sys.argv[1], parallel=int(sys.argv[3]), progress=False)))
except SearchStopped as e:
    print(e, file=sys.stderr)
    sys.exit(PREEMPTED_EXIT)
"""


def _driver(runs_dir, parallel: int) -> list[str]:
    jobs = json.dumps([{**j.identity(), "label": j.label} for j in JOBS])
    return [sys.executable, "-c", DRIVER, str(runs_dir), jobs, str(parallel)]


def _rows(run_dir, kind: str | None = None) -> list[tuple]:
    """metrics.jsonl (its `kind` rows) without the wall-clock fields."""
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if kind in (None, r["kind"])]
    return [tuple(sorted((k, v) for k, v in r.items() if k not in ("time", "img_per_s"))) for r in rows]


def _fixed(results: dict) -> dict:
    return {k: {f: r[f] for f in SAME} for k, r in results.items()}


@pytest.fixture(scope="module")
def sequential(tmp_path_factory):
    """The uninterrupted search, one job at a time: (runs_dir, results)."""
    runs = tmp_path_factory.mktemp("search") / "runs"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JAX_PLATFORMS", "cpu")
        return runs, run_jobs(JOBS, str(runs), parallel=1, progress=False)


def test_sequential_results_then_a_rerun_trains_nothing(sequential, capsys):
    runs, results = sequential
    assert list(results) == ["a", "b"]
    for key, r in results.items():
        assert 0.0 <= r["top1"] <= r["top5"] <= 1.0, r
        assert r["steps"] == STEPS[key] and r["params"] > 0 and r["latency_ms"] > 0 and r["wall_s"] > 0, r
        assert json.loads((runs / key / "result.json").read_text()) == r
        assert json.loads((runs / key / "job.json").read_text())["overrides"] == list(JOBS[key == "b"].overrides)
    before = {p: (p.stat().st_mtime_ns, p.stat().st_size) for k in results for p in (runs / k).glob("*.*")}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JAX_PLATFORMS", "cpu")
        again = run_jobs(JOBS, str(runs), parallel=2, progress=False)
    assert again == results
    after = {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in before}
    assert after == before, "a finished job was touched (retrained or its log appended)"
    assert "skipping 2 finished runs" in capsys.readouterr().out


def _pid_gone(pid: int, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):  # dead; only waiting for a reaper
            return True
        time.sleep(0.05)
    return False


def _freeze_mid_job(driver: subprocess.Popen, run_dir: Path, after: int) -> tuple[int, int]:
    """Wait for a checkpoint of `run_dir` past step `after`, then freeze (SIGSTOP) its worker; (worker pid, latest
    checkpoint step)."""
    deadline = time.monotonic() + 240
    while max(_steps(run_dir), default=0) <= after:
        assert driver.poll() is None, driver.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"{run_dir.name} wrote no checkpoint past step {after}"
        time.sleep(0.01)
    pid = int(re.search(r"pid (\d+)", (run_dir / ".effnet-lock").read_text()).group(1))
    os.kill(pid, signal.SIGSTOP)  # frozen mid-job, so what the test does next lands before its end
    latest = max(_steps(run_dir))
    assert latest < STEPS[run_dir.name] and not (run_dir / "result.json").exists(), "finished before it was frozen"
    return pid, latest


def _steps(run_dir: Path) -> list[int]:
    ckpts = run_dir / "checkpoints"
    return [int(p.name) for p in ckpts.iterdir() if p.name.isdigit()] if ckpts.is_dir() else []


def test_kill_9_then_sigterm_of_the_runner_mid_job_then_a_rerun_ends_as_an_uninterrupted_search(sequential, tmp_path):
    ref_runs, reference = sequential
    runs = tmp_path / "runs"
    shutil.copytree(ref_runs / "a", runs / "a")  # a finished earlier (as if trained by this search before b)
    a_files = {p: p.stat().st_mtime_ns for p in (runs / "a").glob("*.*")}
    # 1. kill -9 of the runner while b trains: its worker dies with it (no orphan holds b's lock).
    driver = subprocess.Popen(_driver(runs, 1), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    pid, killed_at = _freeze_mid_job(driver, runs / "b", 0)
    driver.kill()
    driver.communicate()
    assert _pid_gone(pid, 5.0), f"the worker (pid {pid}) outlived its runner"
    # 2. A rerun skips a and resumes b; SIGTERM to it stops b after a step, with a checkpoint, and the search exits
    # PREEMPTED_EXIT.
    driver = subprocess.Popen(_driver(runs, 1), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pid, _ = _freeze_mid_job(driver, runs / "b", killed_at)
    driver.send_signal(signal.SIGTERM)
    time.sleep(0.5)  # the runner forwards it (to the frozen worker: pending until it runs again)
    os.kill(pid, signal.SIGCONT)
    out, err = driver.communicate(timeout=120)
    assert driver.returncode == PREEMPTED_EXIT, err[-3000:]
    assert "stopped by SIGTERM: 1 of 2 runs finished" in err, err[-3000:]
    assert "skipping 1 finished runs" in out
    log = (runs / "b" / "train.log").read_text()
    assert f"resumed from {runs / 'b' / 'checkpoints'} at step {killed_at}" in log, log[-2000:]
    assert re.search(r"stopped by SIGTERM after step \d+, with a checkpoint", log), log[-2000:]
    assert not (runs / "b" / "result.json").exists()
    # 3. The next rerun finishes b: the results and metrics rows of the uninterrupted search.
    rerun = subprocess.run(_driver(runs, 1), env=ENV, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    results = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert {p: p.stat().st_mtime_ns for p in a_files} == a_files, "a finished job was retrained"
    assert json.loads((runs / "b" / "wall.json").read_text())["attempts"] == 3
    assert _fixed(results) == _fixed(reference)
    # The final evaluation's loss, to the bit. (Train rows differ: a stop between logging steps logs its own row.)
    assert _rows(runs / "b", "val") == _rows(ref_runs / "b", "val")


def test_a_job_killed_after_training_before_its_result_gets_the_same_result(sequential, tmp_path, monkeypatch):
    """Between train's last checkpoint and result.json (summary.json not written yet): the rerun evaluates that
    checkpoint as train's final evaluation did."""
    runs, reference = sequential
    shutil.copytree(runs / "a", tmp_path / "runs" / "a")
    for name in ("result.json", "summary.json"):
        (tmp_path / "runs" / "a" / name).unlink()
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    results = run_jobs(JOBS[:1], str(tmp_path / "runs"), progress=False)
    assert "already finished at step 6" in (tmp_path / "runs" / "a" / "train.log").read_text()
    assert _fixed(results) == _fixed({"a": reference["a"]})


def test_a_failing_job_is_one_line_naming_it_its_exit_status_and_log(tmp_path, monkeypatch):
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    bad = Job("bad", "digits", (*TINY, "steps=2", f"data={tmp_path / 'nowhere'}"))
    with pytest.raises(ValueError) as e:
        run_jobs([bad], str(tmp_path / "runs"), progress=False)
    message, log = str(e.value), tmp_path / "runs" / "bad" / "train.log"
    assert "\n" not in message and message.startswith("run bad failed (exit 2): effnet search: error: "), message
    assert "nowhere" in message and message.endswith(f"(log: {log})"), message


def test_a_changed_job_for_an_existing_run_dir_is_refused_in_one_line(sequential):
    runs, _ = sequential
    changed = Job("b", "digits", (*TINY, "steps=12", "seed=2"))
    with pytest.raises(ValueError) as e:
        run_jobs([JOBS[0], changed], str(runs), progress=False)
    message = str(e.value)
    assert "\n" not in message and str(runs / "b") in message, message
    assert "overrides[7] is 'seed=1' there, 'seed=2' now" in message, message
    with pytest.raises(ValueError, match="set by the runner"):
        Job("c", "digits", ("workdir=/tmp/elsewhere",))
    with pytest.raises(ValueError, match="not a plain directory name"):
        Job("../c", "digits", ())


def test_each_child_is_pinned_to_one_device_of_the_parents(monkeypatch):
    """GPU: the slot's device, named as the parent's CUDA_VISIBLE_DEVICES names it; CPU: one host device."""
    from effnet_jax.search import runner

    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    monkeypatch.setattr(runner, "_probe", lambda: ("gpu", 2))
    assert runner.default_parallel() == 2
    assert runner._slots(2) == [{"CUDA_VISIBLE_DEVICES": "2"}, {"CUDA_VISIBLE_DEVICES": "5"}]
    with pytest.raises(ValueError, match="parallel=3, but only 2 gpu devices"):
        runner._slots(3)
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_use_thunk_runtime=true --xla_force_host_platform_device_count=4")
    assert runner.default_parallel() == 4 and runner._slots(2) == [{}, {}]
    assert runner._child_env({})["XLA_FLAGS"] == "--xla_cpu_use_thunk_runtime=true"
