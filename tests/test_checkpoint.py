"""Checkpointer: round trip of model/optimizer/EMA/meta, keep-last-K, crash safety, failed writes, errors."""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _mounts import filled, remount, tmpfs
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from effnet_jax.train.checkpoint import Checkpointer, CheckpointWriteError, abstract_like


class Tiny(nnx.Module):
    """A stand-in with every kind of leaf the real model has: params, BN stats, an int counter, an RNG stream."""

    def __init__(self, rngs: nnx.Rngs):
        self.fc = nnx.Linear(3, 2, rngs=rngs)
        self.bn = nnx.BatchNorm(2, rngs=rngs)
        self.count = nnx.BatchStat(jnp.zeros((), jnp.int32))
        self.rng = rngs.dropout.fork()


def _state(seed: int):
    def build():
        model = Tiny(nnx.Rngs(params=seed, dropout=seed + 1))
        return model, nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)

    model, opt = build()
    _, weights, rest = nnx.split(model, (nnx.Param, nnx.BatchStat), ...)
    return build, {"weights": weights, "rest": rest}, nnx.state(opt)


def _save(ckpt, step, seed):
    _, model, opt = _state(seed)
    ckpt.save(step, model=model, opt=opt, ema=model["weights"], meta={"step": step}, force=True)
    return model, opt


def _abstract(seed=0):
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    build, model, opt = _state(seed)
    rep = NamedSharding(mesh, P())
    return dict(model=abstract_like(model, rep), opt=abstract_like(opt, rep), ema=abstract_like(model["weights"], rep))


def test_round_trip_restores_every_item(tmp_path):
    ckpt = Checkpointer(str(tmp_path), keep=2)
    model, opt = _save(ckpt, 3, seed=5)
    ckpt.wait_until_finished()

    got = Checkpointer(str(tmp_path), read_only=True).restore(**_abstract(seed=0))
    assert got["meta"] == {"step": 3}
    for a, b in zip(jax.tree.leaves(model), jax.tree.leaves(got["model"]), strict=True):
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(jax.tree.leaves(opt), jax.tree.leaves(got["opt"]), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_keeps_the_last_k_and_saves_on_schedule(tmp_path):
    ckpt = Checkpointer(str(tmp_path), keep=2, every=2)
    _, model, opt = _state(0)
    started = [ckpt.save(s, model=model, opt=opt, ema=model["weights"], meta={"step": s}) for s in range(1, 8)]
    ckpt.wait_until_finished()
    assert started == [False, True, False, True, False, True, False]
    assert ckpt.all_steps() == [4, 6]
    assert ckpt.latest_step() == 6


def test_an_interrupted_save_is_ignored(tmp_path):
    """Orbax writes into a temporary directory and renames it; a leftover one is not a checkpoint."""
    ckpt = Checkpointer(str(tmp_path), keep=3)
    _save(ckpt, 1, seed=0)
    ckpt.wait_until_finished()
    os.makedirs(tmp_path / "2.orbax-checkpoint-tmp-1234" / "model")
    assert Checkpointer(str(tmp_path)).latest_step() == 1


def test_empty_directory_and_unknown_item_errors(tmp_path):
    ckpt = Checkpointer(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        ckpt.restore()
    _save(ckpt, 1, seed=0)
    ckpt.wait_until_finished()
    with pytest.raises(ValueError, match=r"unknown checkpoint items \['params'\]"):
        ckpt.restore(params={})


def test_restore_against_wrong_shapes_fails_loudly(tmp_path):
    ckpt = Checkpointer(str(tmp_path))
    _save(ckpt, 1, seed=0)
    ckpt.wait_until_finished()
    abstract = _abstract()
    kernel = abstract["ema"]["fc"]["kernel"]
    abstract["ema"]["fc"]["kernel"] = kernel.replace(
        jax.ShapeDtypeStruct((4, 2), jnp.float32, sharding=kernel.sharding)
    )
    del abstract["ema"]["bn"]["mean"]
    with pytest.raises(ValueError, match="does not match the model") as e:
        ckpt.restore(ema=abstract["ema"])
    assert "shape ema.fc.kernel.value: expected (4, 2), saved (3, 2)" in str(e.value)
    assert "+ ema.bn.mean.value (saved, not expected)" in str(e.value)


def _complete_steps(directory) -> list[str]:
    return sorted(d for d in os.listdir(directory) if d.isdigit() or "tmp" in d)


def test_a_read_only_folder_fails_at_once_in_one_line_and_keeps_what_was_saved(tmp_path):
    """Regression: a read-only checkpoints folder made the run wait ~5 minutes, then die with Orbax's TimeoutError."""
    d = str(tmp_path / "ckpt")
    with tmpfs(d):
        ckpt = Checkpointer(d, keep=3)
        _save(ckpt, 1, seed=0)
        ckpt.wait_until_finished()
        remount(d, read_only=True)
        t0 = time.monotonic()
        with pytest.raises(CheckpointWriteError) as e:
            _save(ckpt, 2, seed=1)
            ckpt.wait_until_finished()
        assert time.monotonic() - t0 < 20, "reported at once, not after a timeout"
        msg = str(e.value)
        assert "\n" not in msg and f"step 2 could not be written to {d}: Read-only file system" in msg
        assert "step 1, is intact" in msg and "--resume" in msg
        ckpt.close()  # the failure was reported once; closing raises nothing more
        remount(d, read_only=False)
        assert _complete_steps(d) == ["1"]


def test_a_write_that_runs_out_of_space_part_way_is_caught_by_the_per_step_check(tmp_path):
    """The free-space check passes (the state is small) but Orbax's files do not fit: the background write fails,
    and the loop's per-step `check()` raises it once the save is over, not at the next save."""
    d = str(tmp_path / "ckpt")
    with tmpfs(d, size="4m"):
        ckpt = Checkpointer(d, keep=1)
        _save(ckpt, 1, seed=5)
        ckpt.wait_until_finished()
        filled(d, leave=64 * 1024)  # a step directory of the tiny state takes ~230 kB on tmpfs
        _save(ckpt, 2, seed=1)
        deadline = time.monotonic() + 30
        with pytest.raises(CheckpointWriteError, match="step 2 could not be written.*No space left on device"):
            while time.monotonic() < deadline:
                ckpt.check()
                time.sleep(0.01)
        assert time.monotonic() < deadline, "raised by check(), not by running out of polls"
        ckpt.close()
        assert _complete_steps(d) == ["1"], "the half-written step 2 is removed, step 1 kept"


def test_a_save_the_disk_cannot_hold_is_refused_before_it_starts(tmp_path):
    d = str(tmp_path / "ckpt")
    with tmpfs(d, size="4m"):
        ckpt = Checkpointer(d, keep=1)  # keep=1: a successful save 2 would delete step 1
        model, opt = _save(ckpt, 1, seed=5)
        ckpt.wait_until_finished()
        filler = filled(d)
        with pytest.raises(CheckpointWriteError) as e:
            _save(ckpt, 2, seed=1)  # the free-space check refuses it: nothing is written
        assert "step 2 could not be written" in str(e.value) and "No space left on device (0.0 MiB free" in str(e.value)
        ckpt.close()
        assert _complete_steps(d) == ["1"], "the half-written step 2 is removed, step 1 kept"
        os.remove(filler)
        got = Checkpointer(d, read_only=True).restore(**_abstract())
        for a, b in zip(jax.tree.leaves(opt), jax.tree.leaves(got["opt"]), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_reader_creates_nothing_and_leaves_a_writers_temporary_step_alone(tmp_path):
    ckpt = Checkpointer(str(tmp_path), keep=3)
    _save(ckpt, 1, seed=0)
    ckpt.wait_until_finished()
    os.makedirs(tmp_path / "2.orbax-checkpoint-tmp" / "model")  # as a live run's save in progress looks
    assert Checkpointer(str(tmp_path), read_only=True).latest_step() == 1
    assert (tmp_path / "2.orbax-checkpoint-tmp").is_dir(), "a reader must not delete a live run's save"
    Checkpointer(str(tmp_path / "typo"), read_only=True)
    assert not (tmp_path / "typo").exists()
    Checkpointer(str(tmp_path), keep=3)  # the run owning the folder (after a kill) removes the dead save
    assert not (tmp_path / "2.orbax-checkpoint-tmp").exists()
