"""One search candidate in its own process: `python -m effnet_jax.search.worker RUN_DIR [LATENCY_BATCH]` (started
by `runner`).

It trains the job in `RUN_DIR/job.json` with `effnet train`'s own `train()` (the workdir lock, atomic records,
SIGTERM handling and exact resume all come with it), resuming when the run dir already holds checkpoints, then
measures the trained network's inference latency and writes `result.json` last, atomically: the job is finished
iff that file exists. Exit status as `effnet train`'s: 0 done, `guard.PREEMPTED_EXIT` stopped with a checkpoint,
2 a user error (one line on stderr), 1 anything else.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time

JOB_FILE = "job.json"
RESULT_FILE = "result.json"
WALL_FILE = "wall.json"  # {"wall_s": time spent by every attempt so far, "attempts": n}
PARENT_ENV = "EFFNET_SEARCH_PARENT"  # pid of the runner that started this worker
WALL_EVERY_S = 5.0  # how often the running total is saved: a kill -9 loses at most this much of it


def _die_with_parent() -> None:
    """Be killed (SIGKILL) when the runner dies, however it dies, so no orphan keeps training and holding the run
    dir's lock. Done here rather than in the runner's `preexec_fn`, which is unsafe in a process with threads
    (tqdm's monitor). The flag survives the allocator's re-exec; Linux only."""
    parent = os.environ.get(PARENT_ENV)
    if not parent or not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != int(parent):  # the runner died before the flag was set
        os._exit(1)


def read_json(path: str) -> dict | None:
    """The JSON in `path`, or None when there is no such file.

    Raises:
        ValueError: the file is not JSON, naming it.
    """
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e})") from None


class WallClock:
    """The running total of the job's wall time over its attempts, saved every `WALL_EVERY_S` by a daemon thread
    (a killed attempt still counts, up to the last save)."""

    def __init__(self, run_dir: str):
        self.path = os.path.join(run_dir, WALL_FILE)
        self.saved = read_json(self.path)
        saved = self.saved or {}
        self.before, self.attempts = float(saved.get("wall_s", 0.0)), int(saved.get("attempts", 0)) + 1
        self.t0 = time.monotonic()
        self._stop = threading.Event()
        self._lock = threading.Lock()  # a save of the thread never lands after `discard`
        self.discarded = False
        self.save()
        threading.Thread(target=self._tick, daemon=True).start()

    def total(self) -> float:
        return self.before + time.monotonic() - self.t0

    def save(self) -> None:
        from effnet_spec.atomic import write_atomic

        with self._lock, contextlib.suppress(OSError):  # bookkeeping: a full disk is the train loop's to report
            if not self.discarded:
                write_atomic(self.path, json.dumps({"wall_s": round(self.total(), 3), "attempts": self.attempts}))

    def _tick(self) -> None:
        while not self._stop.wait(WALL_EVERY_S):
            self.save()

    def stop(self) -> float:
        self._stop.set()
        self.save()
        return self.total()

    def discard(self) -> None:
        """This was no attempt (another process holds the run dir): the total as it was before."""
        from effnet_spec.atomic import write_atomic

        self._stop.set()
        with self._lock:
            self.discarded = True
            if self.saved is None:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(self.path)
            else:
                write_atomic(self.path, json.dumps(self.saved))


def run(run_dir: str, latency_batch: int = 1) -> dict:
    """Train (or resume) the job in `run_dir`, measure its latency at `latency_batch` images a call and write
    `result.json`; returns the result.

    Raises:
        ValueError, OSError: a bad job file, config or data (one line).
        effnet_jax.train.loop.Preempted: SIGTERM/SIGINT stopped training with a checkpoint written.
    """
    import dataclasses

    from effnet_spec.atomic import write_atomic

    from ..train.config import from_preset
    from ..train.guard import WorkdirInUse
    from ..train.loop import train

    path = os.path.join(run_dir, JOB_FILE)
    job = read_json(path)
    if not (isinstance(job, dict) and isinstance(job.get("preset"), str) and isinstance(job.get("overrides"), list)):
        raise ValueError(f"{path}: {'no such file' if job is None else 'not a job (preset, overrides)'}")
    cfg = from_preset(job["preset"], [*job["overrides"], f"workdir={run_dir}", "progress=false"])
    # A checkpoints folder means an earlier attempt: resume. train() resumes from the latest complete checkpoint,
    # or starts from scratch (setting the dead attempt's records aside) when none got finished.
    cfg = dataclasses.replace(cfg, resume=os.path.isdir(os.path.join(run_dir, "checkpoints")))
    clock = WallClock(run_dir)
    try:
        summary = train(cfg)
    except WorkdirInUse:
        clock.discard()
        raise
    finally:
        clock.stop()
    step, meta = _latest(run_dir)
    final = summary.get("final_val")
    if summary.get("steps") != step or summary.get("preempted") or "final_val" not in summary:
        # Resumed after the last checkpoint but before summary.json (or with a stopped attempt's summary): the
        # final evaluation, as train() does it, from that checkpoint.
        final = _evaluate(run_dir, cfg)
    latency = _latency(meta, cfg, latency_batch)
    result = {
        "top1": final["top1"] if final else None,
        "top5": final["top5"] if final else None,
        "img_per_s": summary.get("img_per_s"),
        "wall_s": round(clock.stop(), 1),
        "latency_ms": latency["latency_ms"],
        "latency_batch": latency["batch"],
        "steps": step,
        "params": _params(meta),
    }
    write_atomic(os.path.join(run_dir, RESULT_FILE), json.dumps(result, indent=2) + "\n")
    return result


def _latest(run_dir: str) -> tuple[int, dict]:
    """The step and meta of the run's latest checkpoint (the trained network)."""
    from ..train.checkpoint import Checkpointer

    ckpt = Checkpointer(os.path.join(run_dir, "checkpoints"), read_only=True)
    try:
        step = ckpt.latest_step()
        if step is None:
            raise ValueError(f"{run_dir}: training ended without a checkpoint")
        return step, ckpt.restore(step)["meta"]
    finally:
        ckpt.close()


def _evaluate(run_dir: str, cfg) -> dict | None:
    from ..train.evaluate import evaluate_checkpoint

    if not cfg.val_data and cfg.data not in ("digits", "synthetic"):
        return None  # no val split (train.inputs): train() evaluated nothing either
    return evaluate_checkpoint(run_dir, ema=cfg.ema_decay > 0)


def _latency(meta: dict, cfg, batch: int) -> dict:
    """The trained network's latency at its own resolution, computed as training computed it (dtype, depthwise)."""
    from effnet_spec import read_header

    from ..model import ModelOptions
    from .measure import measure_latency

    spec, pre = read_header(meta["header"])
    options = ModelOptions(dtype=cfg.dtype, depthwise_impl=cfg.depthwise_impl)
    return measure_latency(spec, pre.resolution, batch=batch, options=options)


def _params(meta: dict) -> int:
    from effnet_spec import read_header
    from effnet_spec.counting import count_params

    return count_params(read_header(meta["header"])[0])


def main(argv: list[str]) -> int:
    _die_with_parent()
    if len(argv) not in (1, 2) or not (argv[1:] or ["1"])[0].isdigit():
        print("usage: python -m effnet_jax.search.worker RUN_DIR [LATENCY_BATCH]", file=sys.stderr)
        return 2
    from ..ops import allocator

    try:  # the CPU train step is several times faster under it; re-executes this process (same pid)
        print(f"[effnet] {allocator.preload(sys.orig_argv)}", file=sys.stderr)
    except ValueError as e:
        print(f"effnet search: error: {e}", file=sys.stderr)
        return 2
    from .. import compilation_cache
    from ..train.checkpoint import quiet_failed_writes
    from ..train.guard import PREEMPTED_EXIT
    from ..train.loop import Preempted

    quiet_failed_writes()
    try:
        compilation_cache.enable_from_env()
        run(argv[0], int((argv[1:] or ["1"])[0]))
    except Preempted as e:  # train's message says --resume; here the next search run resumes it
        s = e.summary
        print(f"effnet search: {argv[0]}: stopped by {s['preempted']} after step {s['steps']}, with a checkpoint; "
              "running the search again continues it", file=sys.stderr)  # fmt: skip
        return PREEMPTED_EXIT
    except (ValueError, OSError, ModuleNotFoundError) as e:  # bad job, config, data: one line, as effnet train
        print(f"effnet search: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # NonFiniteLoss and the unexpected: the last line of the log says what
        import traceback

        traceback.print_exc()
        print(f"effnet search: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
