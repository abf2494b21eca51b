"""What keeps a run's work safe from other processes and from the machine being taken away.

- `workdir_lock`: one run per workdir. An advisory `flock` on the workdir itself, held for the life of the run.
  The kernel drops it when its process dies, however it dies (kill -9 included), so a lock left by a dead run is
  free. While it runs, `<workdir>/.effnet-lock` names the holder (pid, host, start time) for the message a refused
  run prints; the file goes when the run ends, so a file found with the lock free is a dead run's, and the next
  run takes over with a note naming it. A refused run touches nothing. On several hosts process 0 holds it.
- `StopSignals`: SIGTERM and SIGINT (what Cloud TPU, SLURM and Ctrl-C send before a machine goes) ask the loop to
  stop after the step it is in; it then writes a checkpoint, flushes its records and exits with `PREEMPTED_EXIT`.
  A second SIGINT interrupts at once. On several hosts every process stops at the same step (`stop_now` ORs the
  flag across processes at logging steps), so all of them save that step.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator

from effnet_spec.atomic import write_atomic

__all__ = ["LOCK_FILE", "PREEMPTED_EXIT", "StopSignals", "WorkdirInUse", "workdir_lock"]

LOCK_FILE = ".effnet-lock"
PREEMPTED_EXIT = 75  # EX_TEMPFAIL: stopped on request with a checkpoint written; `--resume` continues


class WorkdirInUse(ValueError):
    """Another live run holds the workdir."""


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return ""


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


@contextlib.contextmanager
def workdir_lock(workdir: str, *, note=_stderr, lead: bool = True) -> Iterator[None]:
    """Hold `workdir`'s lock while the block runs; only the `lead` process (process 0) takes it, and on several
    hosts every process learns whether it got it, so all of them refuse together.

    A filesystem without `flock` (Lustre mounted `noflock`) runs unlocked, with a note. On NFS a directory lock
    only excludes runs on the same machine.

    Raises:
        WorkdirInUse: another live process holds it (the message names it).
    """
    info = os.path.join(workdir, LOCK_FILE)
    fd = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY)
    refusal, locked = "", False
    try:
        if lead:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                locked = True
            except BlockingIOError:
                holder = _read(info) or "a process that has not written its name yet"
                refusal = (f"workdir {workdir!r} is in use by another run ({holder}); wait for it to end, stop it, "
                           "or pass another workdir")  # fmt: skip
            except OSError as e:
                note(f"{workdir}: this filesystem cannot lock ({e.strerror or e}); running without the workdir lock")
        if _any_process(bool(refusal)):
            raise WorkdirInUse(refusal or f"workdir {workdir!r} is in use by another run (refused on process 0)")
        if locked:
            stale = _read(info)
            if stale:
                note(f"{workdir}: took over from a run that ended without releasing it ({stale})")
            me = f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}"
            write_atomic(info, me + "\n")
        try:
            yield
        finally:
            if locked:
                with contextlib.suppress(OSError):
                    os.remove(info)
                fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _any_process(flag: bool) -> bool:
    """`flag` OR-ed over the processes of a multi-host run (a collective: every process must call it)."""
    import jax

    if jax.process_count() == 1:
        return flag
    import numpy as np
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.int32(flag))))


class StopSignals:
    """Turns SIGTERM and SIGINT into a request the loop reads between steps (`requested` names the signal)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:  # a second Ctrl-C: stop now, without the checkpoint
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def __enter__(self) -> StopSignals:
        import threading

        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for s in self.SIGNALS:
                if signal.getsignal(s) is signal.SIG_IGN:  # `nohup`, `cmd &`: the user chose to ignore it
                    continue
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, previous in self._previous.items():
            signal.signal(s, signal.SIG_DFL if previous is None else previous)
        self._previous.clear()

    def stop_now(self, step: int, every: int) -> bool:
        """Whether to stop after `step`: this process was asked to, or, on several hosts, any process was. Hosts
        agree only at steps that are multiples of `every` (where the loop syncs with the devices anyway), so the
        flag costs them no extra wait per step."""
        import jax

        if jax.process_count() == 1:
            return self.requested is not None
        return step % every == 0 and _any_process(self.requested is not None)
