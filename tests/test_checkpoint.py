"""Checkpointer: round trip of model/optimizer/EMA/meta/data-iterator, keep-last-K, crash safety, errors."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from effnet_jax.train.augment import TrainTransform
from effnet_jax.train.checkpoint import Checkpointer, abstract_like
from effnet_jax.train.data import Batches, SyntheticSource, train_dataset


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


def _data():
    tf = TrainTransform(8, (0.5,) * 3, (0.25,) * 3, augment="none")
    return train_dataset(SyntheticSource(8, 3, length=8), tf, seed=0, steps=10, batches=Batches(2))


def _save(ckpt, step, seed, data_iter=None):
    _, model, opt = _state(seed)
    ckpt.save(step, model=model, opt=opt, ema=model["weights"], meta={"step": step}, data_iter=data_iter, force=True)
    return model, opt


def _abstract(seed=0):
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    build, model, opt = _state(seed)
    rep = NamedSharding(mesh, P())
    return dict(model=abstract_like(model, rep), opt=abstract_like(opt, rep), ema=abstract_like(model["weights"], rep))


def test_round_trip_restores_every_item(tmp_path):
    ckpt = Checkpointer(str(tmp_path), keep=2)
    it = iter(_data())
    next(it), next(it), next(it)
    model, opt = _save(ckpt, 3, seed=5, data_iter=it)
    ckpt.wait_until_finished()
    expected_next = next(it)

    fresh = iter(_data())
    got = Checkpointer(str(tmp_path)).restore(data_iter=fresh, **_abstract(seed=0))
    assert got["meta"] == {"step": 3}
    for a, b in zip(jax.tree.leaves(model), jax.tree.leaves(got["model"]), strict=True):
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(jax.tree.leaves(opt), jax.tree.leaves(got["opt"]), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(next(fresh)["image"], expected_next["image"])  # iterator resumes at batch 4


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
