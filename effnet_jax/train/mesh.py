"""The device mesh of a run: joining a multi-host job, one `data` axis over every device, and global batches.

State is replicated (`P()`) and the batch sharded along `data` (`P('data')`), so BN statistics are computed over
the global batch; each host feeds its own contiguous slice of rows.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import sys
import threading

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from .config import TrainConfig
from .metrics import note

__all__ = ["init_distributed", "make_mesh", "to_global"]


def init_distributed(cfg: TrainConfig) -> None:
    """Join the multi-host job: auto-detected on TPU pods/SLURM, or from coordinator/num_processes/process_id.

    Each of the three that is set is passed on, and the cluster detection fills in the others (`TrainConfig`
    refuses them without distributed=true, so none is ever silently ignored).
    """
    kwargs = {
        "coordinator_address": cfg.coordinator or None,
        "num_processes": cfg.num_processes or None,
        "process_id": cfg.process_id if cfg.process_id >= 0 else None,
    }
    _join(cfg, {k: v for k, v in kwargs.items() if v is not None})


GRACE_S = 30  # jax's own deadline comes this long after ours: it ends the process with a C++ abort and stack trace


def _join(cfg: TrainConfig, kwargs: dict) -> None:
    """`jax.distributed.initialize`, said out loud: it waits, silently, until the coordinator answers and every
    process has joined. Every process says at once what it waits for, and gives up after `init_timeout` seconds.

    jax's own timeout aborts the process from C++ (a fatal log line and a stack trace) and cannot be caught, and the
    wait cannot be interrupted; so a watchdog thread ends the process first, with one line and exit status 2. (A
    program that calls `train` has nothing to go on with then either: jax's abort would end it too.)

    Raises:
      TimeoutError: jax itself reported that the others did not join in time.
      ValueError: jax refused to start the job (no cluster detected, a bad address): its reason, in one line.
    """
    if cfg.coordinator:
        host, _, port = cfg.coordinator.rpartition(":")
        if not (host and port.isdigit() and 0 < int(port) < 65536):
            raise ValueError(f"coordinator={cfg.coordinator!r}: expected HOST:PORT, the address process 0 listens on")
        if cfg.process_id == 0:
            _check_port_free(int(port))
        who = f"process {cfg.process_id} of {cfg.num_processes}"
        what = f"the coordinator at {cfg.coordinator} and the other processes"
    else:
        who, what = "this process", "the coordinator and the other processes of the cluster jax detects"
    late = (f"distributed: {who}: {what} did not all join within init_timeout={cfg.init_timeout} s; start every "
            "process with the same coordinator and num_processes (or raise init_timeout)")  # fmt: skip
    # jax is not initialized yet, so every process prints (metrics.note asks jax which process this is)
    print(f"[effnet] distributed: {who} waiting for {what} (gives up after init_timeout={cfg.init_timeout} s)",
          file=sys.stderr, flush=True)  # fmt: skip
    joined = threading.Event()

    def give_up() -> None:
        if not joined.wait(cfg.init_timeout):
            print(f"effnet train: error: {late}", file=sys.stderr, flush=True)
            os._exit(2)  # the main thread is inside jax's C++ wait; nothing was written yet

    threading.Thread(target=give_up, name="effnet-init-timeout", daemon=True).start()
    try:
        jax.distributed.initialize(**kwargs, initialization_timeout=cfg.init_timeout + GRACE_S)
    except Exception as e:  # noqa: BLE001 - jax raises its runtime error, ValueError or RuntimeError, by cause
        with contextlib.suppress(Exception):  # a half-made client or service must not hold the exit up
            jax.distributed.shutdown()
        reason = " ".join(str(e).split())
        if "DEADLINE_EXCEEDED" in reason or "timed out" in reason.lower():
            raise TimeoutError(late) from None
        if not cfg.coordinator and "coordinator_address should be defined" in reason:
            raise ValueError(
                "distributed=true: jax detects no cluster here (a TPU pod, SLURM, Open MPI); set coordinator=HOST:PORT,"
                " num_processes and process_id"
            ) from None
        raise ValueError(f"distributed: {who} cannot join the job: {reason[:300]}") from None
    finally:
        joined.set()


def _check_port_free(port: int) -> None:
    """Process 0 serves the coordinator on `port` of every address; one that is taken crashes jax's service (a
    segmentation fault), so it is refused here, in one line."""
    for family, address in ((socket.AF_INET6, "::"), (socket.AF_INET, "")):  # as jax binds: [::]:port
        try:
            probe = socket.socket(family, socket.SOCK_STREAM)
        except OSError:  # no IPv6 on this host
            continue
        with probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC does: a TIME_WAIT port is free
            try:
                probe.bind((address, port))
            except OSError as e:
                if e.errno not in (errno.EADDRINUSE, errno.EACCES):  # e.g. IPv6 switched off: try IPv4
                    continue
                raise ValueError(
                    f"coordinator: port {port} cannot be served on this host ({e.strerror or e}; another job?); "
                    "pick a free port for process 0"
                ) from None
        return


def make_mesh(cfg: TrainConfig) -> Mesh:
    """A 1-D mesh over every device of every host; the global batch is split along its `data` axis."""
    devices = np.array(jax.devices())
    if cfg.global_batch % devices.size or cfg.eval_batch % devices.size:
        raise ValueError(
            f"global_batch {cfg.global_batch} and eval_batch {cfg.eval_batch} must be multiples of the "
            f"{devices.size} devices"
        )
    note(f"mesh: {devices.size} {jax.default_backend()} device(s) on {jax.process_count()} process(es)")
    return Mesh(devices, ("data",))


def to_global(batch: dict, mesh: Mesh) -> dict:
    """Process-local numpy rows -> global arrays sharded along `data` (rows of process p are slice p)."""
    sharding = NamedSharding(mesh, P("data"))
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}
