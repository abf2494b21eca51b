"""Subprocess helper for the training tests (not collected by pytest): modes that need a fresh process.

    python tests/_train_worker.py kill AT_STEP -- KEY=VALUE ...   train, SIGKILL itself before step AT_STEP
    python tests/_train_worker.py signal SIGTERM AT_STEP [group] [twice] -- ...   `effnet train`, SIGTERM to
                                        itself (or its process group; twice: two in a row) in step AT_STEP
    python tests/_train_worker.py dist OUT.npz -- KEY=VALUE ...   train under jax.distributed, dump final weights
    python tests/_train_worker.py sharded -- KEY=VALUE ...        one step on a 4-device mesh and on 1 device

Overrides apply to the `smoke` preset. Prints one JSON line on stdout where there is a result.
"""

from __future__ import annotations

import json
import os
import signal
import sys

import jax
import numpy as np


def _cfg(overrides):
    from effnet_jax.train.config import from_preset

    return from_preset("smoke", overrides)


def _flat(tree) -> dict[str, np.ndarray]:
    out = {}
    for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        out[jax.tree_util.keystr(path)] = np.asarray(x.addressable_data(0) if hasattr(x, "addressable_data") else x)
    return out


def kill(at_step: int, overrides) -> None:
    from effnet_jax.train import loop as train_mod

    real, calls = train_mod.to_global, [0]

    def to_global(batch, mesh):  # called once per step, before the step runs
        calls[0] += 1
        if calls[0] > at_step:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(batch, mesh)

    train_mod.to_global = to_global
    train_mod.train(_cfg(overrides))


def signal_at(name: str, at_step: int, overrides, group: bool = False, twice: bool = False) -> int:
    """`effnet train` that sends itself (`group`: its whole process group, Grain workers included, as a terminal's
    Ctrl-C or SLURM does) signal `name` (`twice`: two in a row) while step `at_step` runs; returns the CLI's exit
    status."""
    from effnet_jax.cli import main
    from effnet_jax.train import loop as train_mod

    if name == "SIGINT":  # Ctrl-C as a terminal's foreground job gets it: a runner started with `cmd &` passes
        signal.signal(signal.SIGINT, signal.default_int_handler)  # SIGINT on ignored, and `effnet train` keeps that
    real, calls = train_mod.to_global, [0]

    def to_global(batch, mesh):  # called once per step, before the step runs
        calls[0] += 1
        if calls[0] == at_step:
            if group:
                os.killpg(os.getpgid(0), getattr(signal, name))
            else:
                for _ in range(2 if twice else 1):
                    os.kill(os.getpid(), getattr(signal, name))
        return real(batch, mesh)

    train_mod.to_global = to_global
    return main(["train", "--preset", "smoke", *[a for o in overrides for a in ("--set", o)]])


def dist(out: str, overrides) -> None:
    from effnet_jax.train import loop as train_mod

    real = train_mod.finish

    def finish(cfg, run, data, stats, logger):
        np.savez(out, **_flat({"weights": run.state["weights"], "opt": run.state["opt"]}))
        return real(cfg, run, data, stats, logger)

    train_mod.finish = finish
    summary = train_mod.train(_cfg(overrides))
    print(json.dumps({"process": jax.process_index(), "devices": jax.device_count(), "steps": summary["steps"]}))


def sharded(overrides) -> None:
    import dataclasses

    from jax.sharding import Mesh

    from effnet_jax.train import loop as t

    cfg = _cfg(overrides)
    results = []
    for n in (jax.device_count(), 1):
        c = dataclasses.replace(cfg, workdir=os.path.join(cfg.workdir, f"mesh{n}"))
        mesh = Mesh(np.array(jax.devices()[:n]), ("data",))
        data, run = t.make_data_and_run(c, mesh)
        step = t.make_steps(c, mesh, run, data.stages)[0][0]
        batch = t.to_global(next(run.data_iter), mesh)
        state, metrics = step(run.state, batch, jax.numpy.int32(0), run.root_key)
        results.append((float(metrics["loss"]), _flat(state), len(batch["image"].sharding.device_set)))
    (loss4, s4, d4), (loss1, s1, d1) = results
    diff = {k: float(np.max(np.abs(s4[k].astype(np.float64) - s1[k]), initial=0.0)) for k in s1}
    scale = {k: float(np.max(np.abs(s1[k].astype(np.float64)), initial=0.0)) for k in s1}
    print(json.dumps({"loss": [loss4, loss1], "devices": [d4, d1], "diff": diff, "scale": scale}))


if __name__ == "__main__":
    from effnet_jax import compilation_cache

    compilation_cache.enable_from_env()  # the suite's shared cache, as the `effnet` command enables it
    mode, rest = sys.argv[1], sys.argv[2:]
    sep = rest.index("--")
    args, overrides = rest[:sep], rest[sep + 1 :]
    if mode == "kill":
        kill(int(args[0]), overrides)
    elif mode == "signal":
        sys.exit(signal_at(args[0], int(args[1]), overrides, group="group" in args[2:], twice="twice" in args[2:]))
    elif mode == "dist":
        dist(args[0], overrides)
    elif mode == "sharded":
        sharded(overrides)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
