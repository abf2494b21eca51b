"""The search's candidate runner without training: a failing job is one line, a run dir holding another job is
refused before anything starts, and each child is pinned to one device. (Trained jobs, finished jobs skipped,
SIGTERM mid-job and resume: test_search_runs.py, on the search's own runs.)"""

from __future__ import annotations

import json

import pytest

from effnet_jax.search.runner import Job, run_jobs

TINY = ("stages=2", "resolution=16", "global_batch=16", "eval_every=0", "ckpt_every=2", "log_every=2")


@pytest.mark.integration  # starts a worker process
def test_a_failing_job_is_one_line_naming_it_its_exit_status_and_log(tmp_path, monkeypatch):
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    bad = Job("bad", "digits", (*TINY, "steps=2", f"data={tmp_path / 'nowhere'}"))
    with pytest.raises(ValueError) as e:
        run_jobs([bad], str(tmp_path / "runs"), progress=False)
    message, log = str(e.value), tmp_path / "runs" / "bad" / "train.log"
    assert "\n" not in message and message.startswith("run bad failed (exit 2): effnet search: error: "), message
    assert "nowhere" in message and message.endswith(f"(log: {log})"), message


def test_a_changed_job_for_an_existing_run_dir_is_refused_in_one_line(tmp_path):
    """Before any child starts: the run dir's job.json is compared with the job."""
    runs = tmp_path / "runs"
    (runs / "b").mkdir(parents=True)
    (runs / "b" / "job.json").write_text(json.dumps(Job("b", "digits", (*TINY, "steps=12", "seed=1")).identity()))
    changed = Job("b", "digits", (*TINY, "steps=12", "seed=2"))
    with pytest.raises(ValueError) as e:
        run_jobs([Job("a", "digits", (*TINY, "steps=6")), changed], str(runs), progress=False)
    message = str(e.value)
    assert "\n" not in message and str(runs / "b") in message, message
    assert "overrides[7] is 'seed=1' there, 'seed=2' now" in message, message
    assert not (runs / "a").exists(), "a job started before the refusal"
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
