"""Keep freed host memory mapped, so XLA CPU's per-call temporaries stop page-faulting.

XLA CPU mallocs an executable's temporaries on its worker threads (gigabytes, in one block, for a b0 train step
at 224 px) and frees them when the call returns. glibc serves any block above its mmap threshold, and any block
a worker thread's arena cannot hold, with a fresh `mmap` and gives it back with `munmap`, so every call faults
every page in again and the kernel zeroes it (`benchmarks/results/page-faults-*.md`). Eager torch does the same
with its activations.

Three `mallopt` settings make glibc keep and reuse that memory instead: one arena for all threads (so a
worker thread's big block comes from the main heap), no `mmap` for big blocks, and no trimming of the heap's
top. The price: the process's resident memory stays at its peak instead of shrinking between calls, and all
threads share one allocator lock. That lock is why this is opt-in: it slows XLA's compile and the default
`effnet train` (b0 at 32 px, a Grain input pipeline) while it speeds up a b0@224 train step (benchmarks/README.md).
Measure your workload both ways.

The settings are process-wide and only fully take for threads that had not allocated yet, so call
`retain_host_memory()` first thing, before the first JAX computation (importing jax is fine). The `effnet`
command does so when `EFFNET_RETAIN_HOST_MEMORY=1`.
"""

from __future__ import annotations

import ctypes
import os

from .. import env  # stdlib only: jax stays unimported

ENV = env.RETAIN_HOST_MEMORY
retained = False  # whether retain_host_memory() has taken in this process (the bench records it)

# glibc <malloc.h> parameter numbers.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8

_SETTINGS = (
    (_M_ARENA_MAX, 1),  # every thread allocates from the main heap, which can grow past 64 MB
    (_M_MMAP_MAX, 0),  # big blocks come from the heap, not a fresh mmap per allocation
    (_M_TRIM_THRESHOLD, -1),  # -1: never hand the heap's free top back to the kernel
)


def glibc_version() -> str | None:
    """glibc's version string, or None under another C library (musl, macOS, Windows)."""
    try:
        value = os.confstr("CS_GNU_LIBC_VERSION")
    except (AttributeError, ValueError, OSError):
        return None
    return value.split()[-1] if value and value.startswith("glibc") else None


def retain_host_memory() -> bool:
    """Set glibc to keep freed memory for reuse; True if every setting took, False where there is no glibc."""
    global retained
    if glibc_version() is None:
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    retained = all([mallopt(param, value) == 1 for param, value in _SETTINGS])
    return retained


def wanted() -> bool:
    """The `effnet` command's choice: off unless EFFNET_RETAIN_HOST_MEMORY is 1/true/yes/on."""
    return env.flag(ENV, default=False)
