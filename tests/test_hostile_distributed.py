"""A multi-host job whose peers never come (issue 28, group 8): each process says at once what it waits for, and
gives up after `init_timeout` in one line, exit 2, with nothing written. Real `effnet train` processes (a
jax.distributed job is fixed at JAX start-up); what jax says when it refuses to start is mapped in-process, with
jax's call replaced."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from effnet_jax.train import mesh
from effnet_jax.train.config import TrainConfig

TIMEOUT_S = 2  # init_timeout of the run


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _start(workdir, process_id: int, port: int) -> subprocess.Popen:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "EFFNET_ALLOCATOR": "glibc", "PYTHONUNBUFFERED": "1"}
    sets = ["distributed=true", f"coordinator=localhost:{port}", "num_processes=2", f"process_id={process_id}",
            f"init_timeout={TIMEOUT_S}"]  # fmt: skip
    cmd = [sys.executable, "-m", "effnet_jax", "train", "--preset", "smoke", "--workdir", str(workdir)]
    cmd += [a for s in sets for a in ("--set", s)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.integration
@pytest.mark.multiprocess
def test_a_job_whose_peers_never_come_says_so_at_once_and_gives_up_in_one_line(tmp_path):
    """Process 0 of 2 alone: it serves the coordinator and waits for process 1, which never starts. (Process 1 alone,
    with no coordinator to reach, waits in the same call and is given up on the same way.)"""
    workdir, port = tmp_path / "run", _free_port()
    t0 = time.monotonic()
    p = _start(workdir, 0, port)
    try:
        waiting = p.stderr.readline()
        while waiting.startswith("[effnet] allocator"):
            waiting = p.stderr.readline()
        said_at = time.monotonic()
        out, err = p.communicate(timeout=120)
        ended = time.monotonic()
    finally:
        if p.poll() is None:
            p.kill()
    assert waiting == (f"[effnet] distributed: process 0 of 2 waiting for the coordinator at localhost:{port} and the "
                       f"other processes (gives up after init_timeout={TIMEOUT_S} s)\n"), waiting + err  # fmt: skip
    assert ended - said_at > TIMEOUT_S - 0.5, "said when it began to wait, not when it gave up"
    assert p.returncode == 2, err
    assert err.splitlines() == [
        f"effnet train: error: distributed: process 0 of 2: the coordinator at localhost:{port} and the other "
        f"processes did not all join within init_timeout={TIMEOUT_S} s; start every process with the same "
        "coordinator and num_processes (or raise init_timeout)"
    ], err
    assert out == "" and not workdir.exists(), "a refused run writes nothing"
    assert ended - t0 < 60, "given up after init_timeout, not jax's default 300 s"


def _refused(monkeypatch, capsys, raised: Exception | None, **fields) -> str:
    def initialize(**kwargs):
        if raised is None:
            pytest.fail("jax.distributed.initialize was called")
        raise raised

    monkeypatch.setattr("jax.distributed.initialize", initialize)
    monkeypatch.setattr("jax.distributed.shutdown", lambda: shut.append(1))
    shut = []
    with pytest.raises((ValueError, TimeoutError)) as e:
        mesh.init_distributed(TrainConfig(distributed=True, **fields))
    assert shut == ([1] if raised else []), "a half-made client is shut down, so the exit does not wait on it"
    return str(e.value)


JOB = dict(coordinator="localhost:1234", num_processes=2, process_id=1, init_timeout=7)


@pytest.mark.parametrize(
    ("raised", "fields", "line"),
    [
        (None, dict(JOB, coordinator="localhost"), "coordinator='localhost': expected HOST:PORT"),
        (None, dict(JOB, coordinator="h:99999"), "coordinator='h:99999': expected HOST:PORT"),
        (ValueError("coordinator_address should be defined."), {}, "distributed=true: jax detects no cluster here"),
        (RuntimeError("DEADLINE_EXCEEDED: Barrier timed out. # of tasks that reached the barrier: 1/2."), JOB,
         "distributed: process 1 of 2: the coordinator at localhost:1234 and the other processes did not all join "
         "within init_timeout=7 s"),
        (RuntimeError("UNAVAILABLE: failed to connect\nto all addresses"), JOB,
         "distributed: process 1 of 2 cannot join the job: UNAVAILABLE: failed to connect to all addresses"),
    ],
)  # fmt: skip
def test_what_jax_refuses_is_one_line(monkeypatch, capsys, raised, fields, line):
    message = _refused(monkeypatch, capsys, raised, **fields)
    assert message.startswith(line) and "\n" not in message, message
    waiting = capsys.readouterr().err
    assert waiting.startswith("[effnet] distributed:") if raised else waiting == "", "said before it waits, only"


def test_a_coordinator_port_in_use_is_one_line_before_jax_starts(monkeypatch, capsys):
    """jax's service crashes (a segmentation fault) on a port another program serves."""
    with socket.socket(socket.AF_INET6 if socket.has_ipv6 else socket.AF_INET) as taken:
        taken.bind(("", 0))
        taken.listen()
        port = taken.getsockname()[1]
        message = _refused(monkeypatch, capsys, None, **dict(JOB, coordinator=f"localhost:{port}", process_id=0))
    assert message.startswith(f"coordinator: port {port} cannot be served on this host (Address already in use")
