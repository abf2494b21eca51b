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
from .config import _RENAMED, TrainConfig
from .inputs import Data
from .metrics import note
from .modeling import build_model, model_options
from .optim import make_optimizer, make_schedule
from .step import fresh_state, split, with_optimizer

__all__ = ["FIXED", "Run", "check_resumable", "config_changes", "make_model_and_optimizer", "restore_or_init", "save"]


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
    saved_config: dict | None = None  # a resumed run's config as its checkpoint saved it (the segment before)


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
    # 2. Find the latest complete checkpoint (Orbax renames a step dir only once it is fully written); one that
    #    cannot be read (damaged since) is skipped for the one before, and then set aside.
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
    saved_config = None
    if cfg.resume and latest is not None:
        got = ckpt.restore(
            check=lambda meta: check_resumable(cfg, meta["config"], int(meta["step"]), data.steps),
            model={"weights": abstract["weights"], "rest": abstract["rest"]}, opt=abstract["opt"], ema=abstract["ema"],
        )  # fmt: skip
        meta = got["meta"]
        state = {**got["model"], "opt": got["opt"], "ema": got["ema"]}
        root_key = jax.random.wrap_key_data(jnp.asarray(meta["root_key"], jnp.uint32))
        step = int(meta["step"])
        saved_config = meta["config"]
        # float32 as the step computed them, so the first row after a resume averages the same numbers.
        window = [{k: np.float32(v) for k, v in row.items()} for row in meta.get("window", [])]
        damaged = dict(ckpt.damaged)
        for s, dest in ckpt.set_aside_damaged().items():  # after a step was read: a refusal moves nothing
            note(f"checkpoint step {s} in {ckpt_dir} cannot be read ({damaged[s]}): damaged; kept as {dest} for "
                 f"you to inspect, resuming from step {step}")  # fmt: skip
        note(f"resumed from {ckpt_dir} at step {step}")
    else:
        if cfg.resume:
            note(f"--resume: no checkpoint in {ckpt_dir}; starting from scratch")

        state = _place_initial(init, replicated) if init is not None else fresh_state(build, replicated)
        step, window = 0, []
    data_iter = iter(data.train(start=step))
    run = Run(graphdef, opt_graphdef, eval_graphdef, state, schedule, step, root_key, data_iter, ckpt, window)
    run.saved_config = saved_config
    return run


def _place_initial(init, replicated) -> dict:
    """The train state of (model, optimizer) built eagerly from init weights, placed replicated."""
    _, s = split(*init())

    def place(s):  # one call: fresh buffers for every leaf (EMA and weights must not share one: both are donated)
        return {**s, "ema": s["weights"]}

    return jax.jit(place, out_shardings=replicated)(s)


# What a resume may not change: the model and its conventions (the header the checkpoint holds), the data, its
# preprocessing and order (seed, batch), and the optimizer's state (its kind, and grad_clip on or off).
# A resume may change the rest (lr and the schedule's other numbers, steps, augmentation, workers, cadences): each
# change starts a new segment of the run, recorded in segments.jsonl (`workdir.write_config`).
FIXED = ("variant", "init", "freeze", "stages", "resolution", "progressive", "phi", "coefficients", "weight_source",
         "drop_path", "dropout", "num_classes", "data", "val_data", "eval_crop", "global_batch", "seed",
         "optimizer")  # fmt: skip
# Where the run is and how it was started: never a change of the run.
NOT_SETTINGS = ("workdir", "resume")


def saved_settings(saved: dict) -> dict:
    """A checkpoint's config as this release names it, with the defaults of keys it predates (the run had them)."""
    defaults = dataclasses.asdict(TrainConfig())
    values = {_RENAMED.get(k, k): v for k, v in saved.items()}
    return {k: values.get(k, default) for k, default in defaults.items()}


def check_resumable(cfg: TrainConfig, saved: dict, step: int, steps: int) -> None:
    """Refuse, in one line, a resume whose config changes what the run is; `steps` is the run's length under `cfg`.

    Raises:
        ValueError: a `FIXED` key differs, grad_clip is switched on or off, or the run would end before `step`.
    """
    was = saved_settings(saved)
    now = dataclasses.asdict(cfg)
    diff = [f"{k}: checkpoint {was[k]!r} vs now {now[k]!r}" for k in FIXED if was[k] != now[k]]
    if (was["grad_clip"] > 0) != (cfg.grad_clip > 0):  # clipping is a stage of the optimizer, with its own state
        on_off = "switches clipping on or off"
        diff.append(f"grad_clip: checkpoint {was['grad_clip']!r} vs now {cfg.grad_clip!r} ({on_off})")
    if diff:
        raise ValueError(
            f"cannot resume: the config differs from the checkpoint's in what a run cannot change midway: "
            f"{'; '.join(diff)}. Pass the run's values (config.json, segments.jsonl), or start a new workdir "
            "(init=<this workdir> starts from its weights)"
        )
    if steps < step:
        raise ValueError(
            f"cannot resume: the run would end at step {steps} (steps={cfg.steps}, epochs={cfg.epochs:g}), before "
            f"its checkpoint's step {step}; pass steps >= {step}"
        )


def config_changes(cfg: TrainConfig, saved: dict) -> dict[str, list]:
    """{key: [checkpoint's value, now]} of the settings a resume changes (after `check_resumable` let it)."""
    was, now = saved_settings(saved), dataclasses.asdict(cfg)
    return {k: [was[k], now[k]] for k in now if k not in NOT_SETTINGS and was[k] != now[k]}


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
