"""The benchmark harness: environment record, interleaved timing and the `Row` record every suite writes.

A round times one call of each contender in turn, so load from other processes hits all of them alike. A row
holds median and p90 seconds per call, images/s, GFLOP/s
achieved (2 * multiply-adds from `effnet_spec.count_macs`; a train step counts 3x the forward) and its share of
a float32 matmul peak measured in the same run, compile time, and memory (JAX: the compiled executable's
argument+output+temp bytes; torch on CPU: the growth of the process's peak RSS during that contender's warm-up,
an upper bound that is 0 when an earlier contender already peaked higher; on GPU both report the allocator's
peak). Everything heavy (jax, torch) is imported inside the functions that need it.
"""

from __future__ import annotations

import datetime
import os
import platform
import resource
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .. import env as switches
from ..ops import allocator, host_memory

__all__ = [
    "NUM_CLASSES",
    "Row",
    "environment",
    "interleaved",
    "p90",
    "peak_rss_mb",
    "time_call",
]

NUM_CLASSES = 1000


@dataclass
class Row:
    suite: str  # "inference" | "train" | "matmul"
    variant: str
    resolution: int
    batch: int
    contender: str
    median_s: float
    p90_s: float
    images_per_s: float
    gflops: float  # achieved GFLOP/s
    peak_fraction: float  # gflops / matmul peak of the same framework
    compile_s: float | None
    memory_mb: float | None
    reps: int
    note: str = ""
    times_s: list[float] = field(default_factory=list)


# ---------------------------------------------------------------- environment


def _git_sha() -> str:
    """The checkout in the current directory (where results are written), or "unknown"."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment(torch_device: str) -> dict:
    """Machine, versions and switches of this run (imports jax, flax and, where installed, torch)."""
    import flax
    import jax

    try:
        import torch
    except ImportError:  # a TPU VM with jax only: the JAX rows still run
        torch = None

    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_sha": _git_sha(),
        "host": platform.node(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "load_avg_start": os.getloadavg(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jax_backend": jax.default_backend(),
        "jax_devices": [str(d) for d in jax.devices()],
        "flax": flax.__version__,
        "torch": torch.__version__ if torch else None,
        "torch_device": torch_device if torch else None,
        "torch_threads": torch.get_num_threads() if torch else None,
        "torch_interop_threads": torch.get_num_interop_threads() if torch else None,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "effnet_depthwise": os.environ.get(switches.DEPTHWISE, ""),
        "host_memory_retained": host_memory.retained,
        "allocator": allocator.active() or "glibc/platform malloc",
        "precision": "float32 (jax default matmul precision; torch default)",
    }
    if torch and torch_device == "cuda":
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


# ---------------------------------------------------------------- timing


def peak_rss_mb() -> float:
    """This process's peak resident set so far, MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def time_call(fn: Callable[[], None]) -> float:
    """Wall seconds of one call (`fn` must synchronise itself)."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved(contenders: dict[str, Callable[[], None]], reps: int) -> dict[str, list[float]]:
    """`reps` rounds; each round times one call of every contender, in a rotating order."""
    names = list(contenders)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(reps):
        for n in names[r % len(names) :] + names[: r % len(names)]:
            times[n].append(time_call(contenders[n]))
    return times


def p90(ts: list[float]) -> float:
    """The 90th percentile (nearest rank) of the timings."""
    return sorted(ts)[min(len(ts) - 1, int(round(0.9 * (len(ts) - 1))))]
