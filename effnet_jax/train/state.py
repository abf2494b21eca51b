"""A run's state: its model and optimizer, built fresh (at random, or from init weights) or restored from the
latest checkpoint, and saved so that a resumed run continues bit for bit as an uninterrupted one would."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from effnet_spec import ModelSpec, Preprocessing, make_header

from ..weights.pretrained import Pretrained, build_adapted
from .checkpoint import Checkpointer, abstract_like
from .config import TrainConfig
from .inputs import Data
from .metrics import note
from .modeling import build_model, model_options
from .optim import make_optimizer, make_schedule
from .step import fresh_state, split, with_optimizer

__all__ = ["Run", "make_model_and_optimizer", "restore_or_init", "save"]


@dataclass
class Run:
    """Everything the loop needs: the static graphdefs and the (replicated) state pytree."""

    graphdef: object  # of the model in train mode
    opt_graphdef: object
    eval_graphdef: object  # of the same model in eval mode (mode flags are static, so a separate graphdef)
    state: dict  # {"weights": Param+BatchStat, "rest": RNG streams, "opt": optimizer, "ema": EMA of weights}
    schedule: object
    step: int  # optimizer steps done
    root_key: jax.Array
    data_iter: object
    ckpt: Checkpointer | None = None
    window: list = field(default_factory=list)  # per-step metrics since the last logged row (saved with checkpoints)
    spec: ModelSpec | None = None  # the model being trained
    preprocessing: Preprocessing | None = None  # how its inputs are prepared, with the data's class names


def make_model_and_optimizer(cfg: TrainConfig, data: Data, spec: ModelSpec):
    """Functions building (model, optimizer) from scratch or from init weights, and the schedule; nothing is
    allocated yet. Frozen parts (`cfg.freeze`) run in inference mode and are not in the optimizer."""
    tx = make_optimizer(cfg, data.steps_per_epoch, data.steps)
    schedule = make_schedule(cfg, data.steps_per_epoch, data.steps)

    def build():
        return with_optimizer(cfg, build_model(cfg, data.num_classes, spec=spec), tx)

    def build_from(init: Pretrained):
        """From init weights, with no random init (a new classifier, for another class count, starts at zero)."""
        rngs = nnx.Rngs(params=cfg.seed, dropout=cfg.seed + 1)
        model = build_adapted(init, num_classes=spec.num_classes, in_channels=spec.in_channels,
                              drop_path=None if cfg.drop_path < 0 else cfg.drop_path,
                              dropout=None if cfg.dropout < 0 else cfg.dropout,
                              rngs=rngs, options=model_options(cfg))  # fmt: skip
        return with_optimizer(cfg, model, tx)

    return build, build_from, schedule


def restore_or_init(cfg: TrainConfig, mesh: Mesh, data: Data, build, schedule, init=None) -> Run:
    """Fresh state, or the latest checkpoint's when `cfg.resume`. A fresh state is `build()`'s random init, or, when
    given, `init()`'s (model, optimizer) holding init weights."""
    replicated = NamedSharding(mesh, P())
    # Resume order:
    # 1. Shapes only: nnx.eval_shape builds the model and optimizer abstractly (no memory, no compute).
    # 2. Find the latest complete checkpoint (Orbax renames a step dir only once it is fully written).
    # 3. Read its `meta` alone and refuse a config that would change the run, before any tensor is read.
    # 4. Restore model, optimizer and EMA against the abstract state, placed replicated on the mesh.
    # 5. The data stream starts at the step's batch, the loop continues at step + 1 with key
    #    fold_in(root, step) and the logging window saved with the step: the same keys, batches and
    #    metrics rows as an uninterrupted run.
    (graphdef, opt_graphdef), abstract = split(*nnx.eval_shape(build))
    abstract["ema"] = abstract["weights"]
    abstract = abstract_like(abstract, replicated)
    eval_model = nnx.merge(graphdef, abstract["weights"], abstract["rest"])
    eval_model.eval()
    eval_graphdef = nnx.split(eval_model)[0]
    ckpt_dir = os.path.join(cfg.workdir, "checkpoints")
    ckpt = Checkpointer(ckpt_dir, keep=cfg.keep, every=cfg.ckpt_every)
    latest = ckpt.latest_step()
    if latest is not None and not cfg.resume:
        raise ValueError(f"{ckpt_dir} already holds checkpoints (latest step {latest}); pass --resume or a new workdir")
    root_key = jax.random.key(cfg.seed)
    if cfg.resume and latest is not None:
        _check_resumable(cfg, ckpt.restore(latest)["meta"]["config"])
        got = ckpt.restore(
            latest, model={"weights": abstract["weights"], "rest": abstract["rest"]}, opt=abstract["opt"],
            ema=abstract["ema"],
        )  # fmt: skip
        meta = got["meta"]
        state = {**got["model"], "opt": got["opt"], "ema": got["ema"]}
        root_key = jax.random.wrap_key_data(jnp.asarray(meta["root_key"], jnp.uint32))
        step = int(meta["step"])
        # float32 as the step computed them, so the first row after a resume averages the same numbers.
        window = [{k: np.float32(v) for k, v in row.items()} for row in meta.get("window", [])]
        note(f"resumed from {ckpt_dir} at step {step}")
    else:
        if cfg.resume:
            note(f"--resume: no checkpoint in {ckpt_dir}; starting from scratch")

        state = _place_initial(init, replicated) if init is not None else fresh_state(build, replicated)
        step, window = 0, []
    data_iter = iter(data.train(start=step))
    return Run(graphdef, opt_graphdef, eval_graphdef, state, schedule, step, root_key, data_iter, ckpt, window)


def _place_initial(init, replicated) -> dict:
    """The train state of (model, optimizer) built eagerly from init weights, placed replicated."""
    _, s = split(*init())

    def place(s):  # one call: fresh buffers for every leaf (EMA and weights must not share one: both are donated)
        return {**s, "ema": s["weights"]}

    return jax.jit(place, out_shardings=replicated)(s)


def _check_resumable(cfg: TrainConfig, saved: dict) -> None:
    """Refuse to resume with a config that would change the model, data order or schedule."""
    fixed = ("variant", "init", "freeze", "stages", "resolution", "phi", "coefficients", "data", "global_batch", "seed",
             "optimizer", "steps", "epochs")  # fmt: skip
    # A key the saved config lacks predates it: the run had the default (no init, nothing frozen).
    defaults = dataclasses.asdict(TrainConfig())
    was = {k: saved.get(k, defaults[k]) for k in fixed}
    diff = [f"{k}: checkpoint {was[k]!r} vs now {getattr(cfg, k)!r}" for k in fixed if was[k] != getattr(cfg, k)]
    if diff:
        raise ValueError("cannot resume: the config differs from the checkpoint's:\n  " + "\n  ".join(diff))


def save(cfg: TrainConfig, run: Run, data: Data, *, force: bool) -> None:
    """Checkpoint the run at its step: state, root key, config, the model's header and the open metrics window."""
    meta = {
        "step": run.step,
        "root_key": np.asarray(jax.random.key_data(run.root_key)).tolist(),
        "config": dataclasses.asdict(cfg),
        "num_classes": data.num_classes,
        "class_names": list(data.class_names),
        "header": make_header(run.spec, run.preprocessing),  # what the run's weights are: effnet convert/predict
        # Metrics of the steps since the last logged row: a resume logs the same next row as an uninterrupted run.
        "window": [{k: float(v) for k, v in row.items()} for row in jax.device_get(run.window)],
    }
    model = {"weights": run.state["weights"], "rest": run.state["rest"]}
    run.ckpt.save(run.step, model=model, opt=run.state["opt"], ema=run.state["ema"], meta=meta, force=force)
