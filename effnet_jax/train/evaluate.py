"""Evaluation: the step the training loop uses, and top-1/top-5 of a training checkpoint (`effnet eval`).

The step is a jitted, mesh-sharded forward pass in eval mode that returns per-batch sums (correct top-1,
correct top-5, loss, count) over unmasked rows only, so the padded last batch does not bias the result.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from . import data as data_lib
from .augment import EvalTransform
from .config import MAX_BATCH
from .mesh import to_global
from .metrics import note
from .modeling import WEIGHTS
from .runs import restore_model

__all__ = ["evaluate_checkpoint", "evaluate_split", "make_eval_step"]


def make_eval_step(eval_graphdef, mesh: Mesh):
    """jit((weights, rest, batch) -> sums) for a model graphdef in eval mode; batch rows sharded on `data`."""
    replicated, rows = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))

    def eval_step(weights, rest, batch):
        model = nnx.merge(eval_graphdef, weights, rest)
        logits = model(batch["image"]).astype(jnp.float32)
        labels, mask = batch["label"], batch["mask"]
        k = min(5, logits.shape[-1])
        topk = jax.lax.top_k(logits, k)[1]
        hit5 = jnp.any(topk == labels[:, None], axis=-1)
        hit1 = topk[:, 0] == labels
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        return {
            "top1": jnp.sum(hit1 * mask),
            "top5": jnp.sum(hit5 * mask),
            "loss": jnp.sum(loss * mask),
            "count": jnp.sum(mask),
        }

    return jax.jit(eval_step, in_shardings=(replicated, replicated, rows), out_shardings=replicated)


def evaluate_split(eval_step, weights, rest, batches, mesh: Mesh) -> dict:
    """Run `eval_step` over an iterator of process-local padded batches; returns mean top1/top5/loss and count."""
    totals = None
    for batch in batches:
        sums = eval_step(weights, rest, to_global(batch, mesh))
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    if totals is None:
        raise ValueError("evaluation split is empty")
    totals = jax.device_get(totals)
    n = float(totals["count"])
    return {k: float(totals[k]) / n for k in ("top1", "top5", "loss")} | {"count": n}


def evaluate_checkpoint(ckpt_dir: str, *, data: str | None = None, ema: bool = True, step: int | None = None,
                        batch: int | None = None) -> dict:  # fmt: skip
    """Top-1/top-5 of a training checkpoint on `data` (default: the run's own validation split).

    Images are prepared as the run prepared them (its resolution, eval crop, interpolation and normalisation).

    Args:
      ckpt_dir: a training workdir, or its `checkpoints` sub-directory.
      data: "digits", "synthetic" or an image folder; None = the run's val data.
      ema: evaluate the EMA weights (the run's raw weights if False or if the run kept no EMA).
      step: which checkpoint (default the latest).
      batch: global eval batch (default the run's); 0 is refused, not taken as the default.

    Raises:
      FileNotFoundError: no checkpoint there.
      ValueError: the data's classes do not agree with the model's (`data.check_classes`: another count, or a
        class at another position).
    """
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= MAX_BATCH):
        raise ValueError(f"batch must be an int in 1..{MAX_BATCH} (None: the run's eval_batch), got {batch!r}")
    r = restore_model(ckpt_dir, ema=ema, step=step)
    cfg = dataclasses.replace(r.config, eval_batch=batch) if batch is not None else r.config
    model, pre = r.model, r.model.preprocessing
    num_classes = model.spec.num_classes
    source_name = data or cfg.val_data or cfg.data
    source = data_lib.make_source(source_name, "val", size=pre.resolution, num_classes=num_classes)
    # the head's names (the run's training classes) when they name every output; else only the count is compared
    head = pre.class_names if pre.class_names is not None and len(pre.class_names) == num_classes else None
    paired = data_lib.check_classes(source.class_names, head or data_lib.PlaceholderNames.of(num_classes),
                                    what=repr(source_name), against="the checkpoint's model")  # fmt: skip
    if paired:
        note(paired)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    eval_graphdef, weights, rest = nnx.split(model, WEIGHTS, ...)
    weights, rest = jax.device_put((weights, rest), NamedSharding(mesh, P()))  # where the compiled step wants them
    tf = EvalTransform(pre.resolution, pre.mean, pre.std, pre.interpolation, crop_pct=pre.crop_pct)
    hosts = dict(host=jax.process_index(), hosts=jax.process_count())
    rows = data_lib.eval_batch_for(len(source), cfg.eval_batch, mesh.devices.size)
    if rows % mesh.devices.size:
        raise ValueError(f"eval batch {rows} must be a multiple of the {mesh.devices.size} devices")
    ds = data_lib.eval_dataset(source, tf, batches=data_lib.Batches(rows, **hosts))
    from .preflight import batch_shapes, compile_checked, input_bytes  # the step before any batch is read

    shapes = batch_shapes(mesh, rows, pre.resolution, mask=True)
    step = compile_checked(make_eval_step(eval_graphdef, mesh), (weights, rest, shapes), what="the eval step",
                           fits=f"a smaller --batch (now {rows})", held=(weights, rest),
                           host_extra=input_bytes(shapes, 0))  # fmt: skip
    result = evaluate_split(step, weights, rest, iter(ds), mesh)
    return {**result, "weights": r.weights, "step": r.step, "data": source_name, "files": data_lib.describe(source)}
