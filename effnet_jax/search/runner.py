"""The candidate runner: every job of a search trained as its own `effnet train` run, in child processes.

    SEARCH_DIR/runs/<key>/   job.json (written here, before the child starts), train.log (the child's output,
                             appended across attempts), effnet train's own files, wall.json, and result.json,
                             written last by the worker: the job is finished iff it exists.

A child process per job (`worker`), each on one device: a crash, a leak or the device memory of one candidate
stays its own, and the results do not depend on how many run at once. A rerun skips finished jobs and resumes
half-trained ones from their checkpoints (train's exact resume), so a killed search ends with the same results as
one that was never interrupted.
"""

from __future__ import annotations

import collections
import functools
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

from effnet_spec.atomic import write_atomic

from ..train.guard import PREEMPTED_EXIT, StopSignals
from ..train.progress import is_terminal
from .worker import JOB_FILE, PARENT_ENV, RESULT_FILE, read_json

__all__ = ["Job", "SearchStopped", "default_parallel", "run_jobs"]

LOG_FILE = "train.log"
_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")  # a directory name on any filesystem, never . or ..
_RUNNER_OWNS = ("workdir", "resume", "progress")  # set per job by the runner and the worker
_HOST_DEVICES = re.compile(r"--xla_force_host_platform_device_count=\d+")
POLL_S = 0.1  # how often children are checked: their exits and a stop request are acted on this fast


@dataclass(frozen=True)
class Job:
    """One candidate: an `effnet train` preset plus `--set KEY=VALUE` overrides, trained in `runs_dir/key`."""

    key: str  # run directory name under runs_dir
    preset: str  # an effnet_jax.train.config.PRESETS name
    overrides: tuple[str, ...]  # KEY=VALUE items; workdir, resume and progress are the runner's
    label: str = ""  # shown in the line printed when the job finishes; not part of the job's identity

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not _KEY.fullmatch(self.key):
            raise ValueError(f"job key {self.key!r} is not a plain directory name (letters, digits, '.', '_', '+', "
                             "'-'; at most 128, not starting with '.' or '-')")  # fmt: skip
        object.__setattr__(self, "overrides", tuple(self.overrides))
        for item in self.overrides:
            name = item.partition("=")[0].strip() if isinstance(item, str) else None
            if name in _RUNNER_OWNS:
                raise ValueError(f"job {self.key}: override {item!r} is set by the runner (each job trains in "
                                 "runs_dir/key, resuming by itself)")  # fmt: skip
            if not isinstance(item, str):
                raise ValueError(f"job {self.key}: override {item!r} is not a KEY=VALUE string")

    def identity(self) -> dict:
        """What job.json holds and a rerun must match: what the run trains (the label is only shown)."""
        return {"key": self.key, "preset": self.preset, "overrides": list(self.overrides)}


class SearchStopped(RuntimeError):
    """SIGTERM or SIGINT stopped the search; the running jobs wrote checkpoints, and a rerun continues (the CLI
    exits with `guard.PREEMPTED_EXIT`)."""


def default_parallel() -> int:
    """One candidate per local device (`jax.local_device_count()`)."""
    return len(_devices()[1])


def run_jobs(jobs, runs_dir: str, *, parallel: int = 1, progress: bool = True, latency_batch: int = 1) -> dict:
    """Run every unfinished job, up to `parallel` at once, each in a child process on one device.

    A job is finished when its `result.json` exists; its result is read, not recomputed (it keeps the
    `latency_batch` it was measured at, which the result records). A half-trained job resumes from its latest
    checkpoint.

    Returns:
        {key: result} for every job, in the jobs' order; a result is the worker's `result.json`.

    Raises:
        ValueError: a bad job or override, duplicate keys, a run dir holding another job (the first differing
            field), or a child that exited 2 (a user error: its key, exit status, the last line of its log).
        RuntimeError: a child failed otherwise (same line).
        SearchStopped: SIGTERM/SIGINT, or a child stopped by one; the running children checkpointed first.
    """
    jobs = list(jobs)
    if parallel < 1 or latency_batch < 1:
        raise ValueError(f"run_jobs: parallel and latency_batch must be >= 1; got {parallel}, {latency_batch}")
    seen = collections.Counter(j.key for j in jobs)
    if any(n > 1 for n in seen.values()):
        raise ValueError(f"run_jobs: duplicate job keys: {', '.join(sorted(k for k, n in seen.items() if n > 1))}")
    runs_dir = os.path.abspath(runs_dir)
    todo = [j for j in jobs if not _finished(j, os.path.join(runs_dir, j.key))]  # refuses a changed job here
    results = {j.key: read_json(os.path.join(runs_dir, j.key, RESULT_FILE)) for j in jobs if j not in todo}
    if results:
        _write(f"skipping {len(results)} finished runs" + ("" if todo else "; nothing to train"))
    if todo:
        slots = _slots(parallel)
        results.update(_run(todo, runs_dir, slots, len(jobs), progress, latency_batch))
    return {j.key: results[j.key] for j in jobs}


def _finished(job: Job, run_dir: str) -> bool:
    """Whether `job` already finished in `run_dir`; a run dir of another job is refused, before any child starts.
    The job's config is checked here too, so a bad override is one line naming the job, not a failed child."""
    from ..train.config import check_runnable, from_preset

    try:
        check_runnable(from_preset(job.preset, [*job.overrides, f"workdir={run_dir}"]))
    except ValueError as e:
        raise ValueError(f"job {job.key}: {e}") from None
    saved = read_json(os.path.join(run_dir, JOB_FILE))
    if saved is None:
        if os.path.exists(os.path.join(run_dir, "checkpoints")) or os.path.exists(os.path.join(run_dir, RESULT_FILE)):
            raise ValueError(f"{run_dir} holds a run without {JOB_FILE}; move it away or give the job another key")
        return False
    want = job.identity()
    for field in want:
        if saved.get(field) != want[field]:
            raise ValueError(f"{run_dir} holds another job: {_difference(field, saved.get(field), want[field])}; "
                             "give this job another key or move that run dir away")  # fmt: skip
    return os.path.exists(os.path.join(run_dir, RESULT_FILE))


def _difference(field: str, was, now) -> str:
    if field == "overrides" and isinstance(was, list):
        for i in range(max(len(was), len(now))):
            a, b = (was[i:i + 1] or [None])[0], (now[i:i + 1] or [None])[0]  # fmt: skip
            if a != b:
                return f"overrides[{i}] is {a!r} there, {b!r} now"
    return f"{field} is {was!r} there, {now!r} now"


def _write(line: str) -> None:
    from tqdm import tqdm

    tqdm.write(line)


# ---------------------------------------------------------------------------------------------- devices


def _devices() -> tuple[str, list[str]]:
    """(platform, the local devices' ids as the platform's visibility variable names them)."""
    platform = (os.environ.get("JAX_PLATFORMS") or "").split(",")[0].strip().lower()
    if platform == "cpu":
        m = _HOST_DEVICES.search(os.environ.get("XLA_FLAGS", ""))
        return "cpu", [str(i) for i in range(int(m.group(0).split("=")[1]) if m else 1)]
    platform, count = _probe()
    if platform in ("gpu", "cuda", "rocm"):
        var = "HIP_VISIBLE_DEVICES" if platform == "rocm" else "CUDA_VISIBLE_DEVICES"
        visible = [d.strip() for d in os.environ.get(var, "").split(",") if d.strip()]
        return platform, (visible or [str(i) for i in range(count)])[:count]
    return platform, [str(i) for i in range(count)]


def _probe() -> tuple[str, int]:
    """The default backend and its local device count, without this process holding a device: a GPU backend
    initialised here would preallocate most of GPU 0's memory for the whole search. When this process already
    initialised jax, it is asked directly."""
    from jax._src import xla_bridge

    if getattr(xla_bridge, "backends_are_initialized", lambda: False)():
        import jax

        return jax.default_backend(), jax.local_device_count()
    keys = ("JAX_PLATFORMS", "CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "TPU_VISIBLE_CHIPS", "XLA_FLAGS")
    return _probe_process(tuple(os.environ.get(k) for k in keys))


@functools.lru_cache
def _probe_process(_env: tuple) -> tuple[str, int]:
    """`_probe` in a child process (a couple of seconds: jax's import), once per value of the variables it reads."""
    code = "import jax; print(jax.default_backend(), jax.local_device_count())"
    env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise RuntimeError(f"could not list jax's devices: {(out.stderr.strip().splitlines() or ['?'])[-1]}")
    platform, count = out.stdout.split()[-2:]
    return platform, int(count)


def _slots(parallel: int) -> list[dict[str, str]]:
    """The environment changes that pin each of `parallel` children to one device."""
    platform, ids = _devices()
    if platform == "cpu":  # one host device per child, whatever the parent forces: results do not depend on N
        return [{}] * parallel
    if parallel > len(ids):
        raise ValueError(f"parallel={parallel}, but only {len(ids)} {platform} devices are visible (one per run)")
    if platform == "tpu":
        # Untested: one chip per process, independent of the others, in the form the JAX team has shown for
        # several single-chip processes on one TPU VM (TPU_VISIBLE_DEVICES is the older libtpu's name); each
        # process needs a port of its own. On v2/v3 a chip holds two devices, so there are half as many chips as
        # jax counts devices, and a slot beyond the chips fails in its child.
        return [{"TPU_VISIBLE_CHIPS": ids[i], "TPU_VISIBLE_DEVICES": ids[i], "TPU_CHIPS_PER_PROCESS_BOUNDS": "1,1,1",
                 "TPU_PROCESS_BOUNDS": "1,1,1", "TPU_MESH_CONTROLLER_ADDRESS": f"localhost:{8476 + i}",
                 "TPU_MESH_CONTROLLER_PORT": str(8476 + i)}
                for i in range(parallel)]  # fmt: skip
    var = "HIP_VISIBLE_DEVICES" if platform == "rocm" else "CUDA_VISIBLE_DEVICES"
    return [{var: ids[i]} for i in range(parallel)]


def _child_env(slot: dict[str, str]) -> dict[str, str]:
    """This process's environment, pinned to the slot's device, finding this same effnet_jax first."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, **slot, PARENT_ENV: str(os.getpid()), "PYTHONUNBUFFERED": "1", "PYTHONPATH": path}
    flags = " ".join(_HOST_DEVICES.sub("", env.get("XLA_FLAGS", "")).split())
    if flags:
        env["XLA_FLAGS"] = flags
    else:
        env.pop("XLA_FLAGS", None)
    return env


# ---------------------------------------------------------------------------------------------- the children


@dataclass
class _Child:
    job: Job
    run_dir: str
    proc: subprocess.Popen


def _start(job: Job, run_dir: str, env: dict, latency_batch: int) -> _Child:
    os.makedirs(run_dir, exist_ok=True)
    write_atomic(os.path.join(run_dir, JOB_FILE), json.dumps({**job.identity(), "label": job.label}, indent=2) + "\n")
    cmd = [sys.executable, "-m", "effnet_jax.search.worker", run_dir, str(latency_batch)]
    with open(os.path.join(run_dir, LOG_FILE), "ab") as log:  # the child holds its own descriptor
        log.write(f"[effnet search] {time.strftime('%Y-%m-%d %H:%M:%S')}: starting {job.key}\n".encode())
        log.flush()
        # A session of its own: a terminal's Ctrl-C reaches the runner alone, which forwards exactly one SIGTERM
        # (a SIGINT arriving after it would count as a second Ctrl-C and drop the child's checkpoint).
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)  # fmt: skip
    return _Child(job, run_dir, proc)


def _last_line(path: str) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 8192))
            lines = [ln.strip() for ln in f.read().decode("utf-8", "replace").splitlines()]
    except OSError:
        return "(no log)"
    return next((ln for ln in reversed(lines) if ln), "(empty log)")


def _exit(rc: int) -> str:
    return f"killed by {signal.Signals(-rc).name}" if rc < 0 else f"exit {rc}"


def _line(n: int, total: int, job: Job, r: dict) -> str:
    top1 = "n/a" if r.get("top1") is None else f"{r['top1']:.4f}"
    speed = "" if r.get("img_per_s") is None else f", {r['img_per_s']:.0f} img/s"
    per_img = r["latency_ms"] / r["latency_batch"]
    label = f" ({job.label})" if job.label else ""
    return f"[{n}/{total}] {job.key}{label}: val top1 {top1}{speed}, {per_img:.2f} ms/img, {r['wall_s']:.0f} s"


def _run(todo: list[Job], runs_dir: str, slots: list[dict], total: int, progress: bool, latency_batch: int) -> dict:
    """Start jobs into free slots until none is left; on a failure or a stop, start none and stop the others."""
    from tqdm import tqdm

    done = total - len(todo)
    queue, running, results = collections.deque(todo), {}, {}
    halt: str | None = None  # why no job starts any more: the others were sent SIGTERM
    failed: tuple[_Child, int] | None = None
    # a bar only on a terminal: in a redirected log each finished run's own line says the same, without frames
    bar = tqdm(total=total, initial=done, position=0, unit="run", disable=not (progress and is_terminal(sys.stderr)),
               dynamic_ncols=True)  # fmt: skip
    try:
        with StopSignals() as signals:
            while (queue and not halt) or running:
                free = [i for i in range(len(slots)) if i not in running]
                for slot in free[: 0 if halt else len(queue)]:  # no job starts once halted
                    job = queue.popleft()
                    running[slot] = _start(job, os.path.join(runs_dir, job.key), _child_env(slots[slot]), latency_batch)
                time.sleep(POLL_S)
                if signals.requested and not halt:
                    halt = _halt(running, f"stopped by {signals.requested}")
                for slot, c in list(running.items()):
                    rc = c.proc.poll()
                    if rc is None:
                        continue
                    del running[slot]
                    if rc == 0:
                        results[c.job.key] = read_json(os.path.join(c.run_dir, RESULT_FILE))
                        done += 1
                        bar.update(1)
                        bar.write(_line(done, total, c.job, results[c.job.key]))
                    elif not halt:  # exit PREEMPTED_EXIT: a signal sent to the child itself (a scheduler's)
                        failed = None if rc == PREEMPTED_EXIT else (c, rc)
                        halt = _halt(running, f"stopped: run {c.job.key} was stopped by a signal")
    finally:
        bar.close()
        for c in running.values():  # only after an exception here (a second Ctrl-C): no child outlives the runner
            c.proc.kill()
            c.proc.wait()
    if failed:
        c, rc = failed
        log = os.path.join(c.run_dir, LOG_FILE)
        error = ValueError if rc == 2 else RuntimeError
        raise error(f"run {c.job.key} failed ({_exit(rc)}): {_last_line(log)} (log: {log})")
    if halt:
        raise SearchStopped(f"{halt}: {done} of {total} runs finished, the others checkpointed; run the same search "
                            "again to continue")  # fmt: skip
    return results


def _halt(running: dict[int, _Child], why: str) -> str:
    """Ask every running child to stop (each checkpoints after its step and exits PREEMPTED_EXIT); returns `why`."""
    for c in running.values():
        c.proc.send_signal(signal.SIGTERM)
    return why
