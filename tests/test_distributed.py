"""Data parallelism: a step sharded over 4 simulated CPU devices equals the 1-device step, and two processes
joined by `jax.distributed` on localhost end with identical parameters. Each case runs in fresh processes
(device count and jax.distributed are fixed at JAX start-up)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _xla import host_devices

pytestmark = pytest.mark.integration  # several jax.distributed processes

WORKER = str(Path(__file__).with_name("_train_worker.py"))
# A 1-stage b0 at 16 px on digits: the real step, compiled in seconds.
TINY = ["data=digits", "num_classes=0", "stages=1", "resolution=16", "eval_batch=120", "progress=false"]
# Sharded vs single-device: the same math, but BN means/variances and gradient sums are reduced in a different
# order (4 partial sums then a cross-device sum), so float32 results differ by a few ulps of the value's scale.
SHARD_RTOL = 1e-5
TIMEOUT_S = 240  # per subprocess; a hang (e.g. a missed collective) fails instead of blocking CI


def _env(**extra):
    return {**os.environ, "JAX_PLATFORMS": "cpu", **extra}


def test_sharded_step_equals_single_device_step(tmp_path):
    env = _env(XLA_FLAGS=host_devices(4))
    cmd = [sys.executable, WORKER, "sharded", "--", *TINY, "global_batch=16", f"workdir={tmp_path}"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["devices"] == [4, 1], "the batch must really be split over 4 devices"
    np.testing.assert_allclose(r["loss"][0], r["loss"][1], rtol=SHARD_RTOL)
    bad = {k: (d, r["scale"][k]) for k, d in r["diff"].items() if d > SHARD_RTOL * max(r["scale"][k], 1.0)}
    assert not bad, f"leaves differing beyond {SHARD_RTOL}: {bad}"
    assert any("opt" in k for k in r["diff"]) and any("mean" in k for k in r["diff"]), "state covers opt and BN"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _two_processes(tmp_path, common: list[str], timeout: int = TIMEOUT_S) -> list[dict]:
    """Run the `dist` worker as processes 0 and 1 of one jax.distributed job; their JSON results, in order."""
    procs = [
        subprocess.Popen(
            [sys.executable, WORKER, "dist", str(tmp_path / f"p{i}.npz"), "--", *common, f"process_id={i}"],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=timeout)
            assert p.returncode == 0, stderr[-3000:]
            outs.append(json.loads(stdout.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return outs


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_train_to_identical_parameters(tmp_path):
    port = _free_port()
    common = [*TINY, "global_batch=16", "steps=3", "ckpt_every=0", f"workdir={tmp_path / 'run'}", "distributed=true"]
    common += [f"coordinator=localhost:{port}", "num_processes=2"]
    outs = _two_processes(tmp_path, common)
    assert [o["process"] for o in outs] == [0, 1] and all(o["devices"] == 2 and o["steps"] == 3 for o in outs)
    a, b = np.load(tmp_path / "p0.npz"), np.load(tmp_path / "p1.npz")
    assert sorted(a.files) == sorted(b.files) and len(a.files) > 20
    for k in a.files:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)  # replicas of one global array: bit-identical
    init = [k for k in a.files if "num_batches_tracked" in k and "weights" in k]
    assert int(a[init[0]]) == 3, "3 steps ran on the global batch"
    assert (tmp_path / "run" / "checkpoints" / "3").is_dir()


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_fine_tune_from_the_same_init(tmp_path):
    """init= on two hosts: each reads the weights itself and builds bit-identical replicas (no broadcast); frozen
    stages stay the init's on both."""
    from _weights import random_twin

    import effnet_torch

    init = tmp_path / "b0.safetensors"
    net = random_twin("effnet", seed=9, stages=2)  # a stage after the frozen one; all seven compile 5x slower
    effnet_torch.save_checkpoint(net, init)
    port = _free_port()
    common = ["data=digits", "num_classes=0", "resolution=16", "eval_batch=120", "progress=false", "stages=0",
              f"init={init}", "freeze=stages:1", "global_batch=16", "steps=2", "ckpt_every=0", "distributed=true",
              f"workdir={tmp_path / 'run'}", f"coordinator=localhost:{port}", "num_processes=2"]  # fmt: skip
    _two_processes(tmp_path, common, timeout=TIMEOUT_S)
    a, b = np.load(tmp_path / "p0.npz"), np.load(tmp_path / "p1.npz")
    assert sorted(a.files) == sorted(b.files)
    for k in a.files:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    stem = next(k for k in a.files if "weights" in k and "stem" in k and "conv" in k and "kernel" in k)
    want = net.state_dict()["stem.conv.weight"].numpy().transpose(2, 3, 1, 0)  # OIHW -> HWIO
    np.testing.assert_array_equal(a[stem], want, err_msg="freeze=stages:1 keeps the stem as the init's")
