"""A run's steps compiled before the first one runs, and refused when they cannot fit in memory (`ops.memory`).

The train and eval steps are lowered for the batches the run will feed them (shapes and shardings known from the
config and the data, no batch read) and compiled once; the loop runs these executables, so nothing compiles twice.
A step that needs more memory than the process can use is one line naming both numbers and the ways to fit,
before any record is written.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ..ops import memory
from .config import TrainConfig
from .guard import _any_process
from .inputs import Data
from .metrics import note
from .state import Run

__all__ = ["compile_checked", "compiled_steps", "input_bytes"]


def batch_shapes(mesh: Mesh, batch: int, size: int, *, mask: bool = False, mix: bool = False) -> dict:
    """The abstract global batch the pipeline feeds: NHWC float32 RGB images, int32 labels (and the eval mask, or
    a mixing stage's partner labels and label weights: `mixing.mix_batch`)."""
    rows = NamedSharding(mesh, P("data"))
    shapes = {"image": jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32, sharding=rows),
              "label": jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=rows)}  # fmt: skip
    if mask:
        shapes["mask"] = jax.ShapeDtypeStruct((batch,), jnp.float32, sharding=rows)
    if mix:
        shapes["label_mix"] = jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=rows)
        shapes["mix"] = jax.ShapeDtypeStruct((batch,), jnp.float32, sharding=rows)
    return shapes


def input_bytes(batch: dict, num_workers: int) -> int:
    """Host bytes the input pipeline holds beside the step: this process's batch as examples and stacked, and with
    workers each one's finished batch and the one it builds."""
    local = sum(math.prod(x.shape) * x.dtype.itemsize for x in batch.values()) // jax.process_count()
    return local * (2 + 2 * num_workers)


def compile_checked(fn, args: tuple, *, what: str, fits: str, held=(), host_extra: int = 0, say=None):
    """`fn.lower(*args).compile()`, refused on every process when it cannot fit on any (`memory.check`); `say`
    (a note function) is told the need and what the process can use when it fits."""
    compiled = fn.lower(*args).compile()
    refusal = fit = None
    try:
        fit = memory.check(compiled, what=what, fits=fits, held=held, host_extra=host_extra)
    except memory.NotEnoughMemory as e:
        refusal = e
    if _any_process(refusal is not None):
        raise refusal or memory.NotEnoughMemory(f"{what} cannot fit in the memory of another process of the run")
    if fit and say:
        say(f"memory: {what} needs {memory.fmt(fit[0])} of the {memory.fmt(fit[1])} this process can use")
    return compiled


def compiled_steps(cfg: TrainConfig, mesh: Mesh, data: Data, run: Run, train_steps: dict, eval_step) -> tuple:
    """({stage index: train step}, eval step) compiled for the run's batches, each checked against the memory it
    can use: every stage still to run (progressive learning) is compiled here, once, before the first step.

    Raises:
      memory.NotEnoughMemory: a step cannot fit (a ValueError: the CLI's one line, exit 2).
    """
    remat = {"none": "remat=dots or remat=block, ", "dots": "remat=block, "}.get(cfg.remat, "")
    compiled = {}
    for stage in data.stages:
        if stage.index not in train_steps:
            continue
        size, what = stage.size, "the train step" + (f" of stage {stage.index + 1}" if len(data.stages) > 1 else "")
        batch = batch_shapes(mesh, cfg.global_batch, size, mix=stage.mixes)
        compiled[stage.index] = compile_checked(
            train_steps[stage.index], (run.state, batch, jnp.int32(run.step), run.root_key), what=what,
            fits=f"a smaller global_batch (now {cfg.global_batch}), {remat}or a lower resolution (now {size})",
            held=(run.state, run.root_key), host_extra=input_bytes(batch, cfg.num_workers), say=note,
        )  # fmt: skip
    if data.val is not None:
        size = data.eval_size
        weights = run.state["ema"] if cfg.ema_decay > 0 else run.state["weights"]
        batch = batch_shapes(mesh, data.eval_batch, size, mask=True)
        eval_step = compile_checked(
            eval_step, (weights, run.state["rest"], batch), what="the eval step",
            fits=f"a smaller eval_batch (now {data.eval_batch}) or a lower resolution (now {size})",
            held=(weights, run.state["rest"]), host_extra=input_bytes(batch, 0),
        )  # fmt: skip
    return compiled, eval_step
