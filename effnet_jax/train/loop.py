"""The training loop: jit-compiled, data-parallel EfficientNet training that reads top to bottom.

`train(cfg)` runs the phases in order: make_mesh -> prepare (model_start -> make_data -> make_model_and_optimizer
-> restore_or_init) -> make_steps -> loop -> finish. The step is one pure `jax.jit` function of (state, batch, step)
built by splitting the NNX model and optimizer once; state is replicated (`P()`), the batch sharded over the `data`
axis (`P('data')`), so BN statistics are computed over the global batch; state buffers are donated.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import time
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from effnet_spec import ModelSpec, Preprocessing, make_header
from effnet_spec.atomic import unwritable_dir, write_atomic

from ..model.options import remat_compiler_options
from ..weights.pretrained import Pretrained, build_adapted
from . import data as data_lib
from .augment import EvalTransform, TrainTransform
from .checkpoint import Checkpointer, CheckpointWriteError, abstract_like
from .config import TrainConfig, check_runnable, to_json
from .evaluate import evaluate_split, make_eval_step
from .freeze import apply_freeze, frozen_mask, trainable
from .guard import StopSignals, workdir_lock
from .mesh import init_distributed, make_mesh, to_global
from .metrics import Logger, best_logged, note, plot_curves
from .modeling import WEIGHTS, build_model, cross_entropy, model_options, run_preprocessing
from .optim import ema_update, make_optimizer, make_schedule
from .start import Start, model_start, run_spec

__all__ = ["NonFiniteLoss", "Preempted", "train"]


class NonFiniteLoss(RuntimeError):
    """The loss or gradient became NaN/inf; the run stopped without saving."""


class Preempted(RuntimeError):
    """SIGTERM or SIGINT stopped the run after a step; its checkpoint and records are written (`--resume` goes on).

    `summary` is what `train` would have returned.
    """

    def __init__(self, message: str, summary: dict):
        super().__init__(message)
        self.summary = summary


# ---------------------------------------------------------------------------------------------- phases


@dataclass
class Data:
    train_source: object
    val_source: object | None
    train: object  # start step -> grain IterDataset of process-local train batches, one per step from there
    val: object | None  # grain IterDataset of padded process-local eval batches
    num_classes: int
    class_names: tuple[str, ...]
    steps: int  # total optimizer steps of the run
    steps_per_epoch: float


def make_data(cfg: TrainConfig, pre: Preprocessing) -> Data:
    """Sources, transforms and the Grain pipelines, sliced for this process; images prepared as `pre` says (the
    init weights' normalisation, or the family's)."""
    size = pre.resolution
    train_src = data_lib.make_source(cfg.data, "train", size=size, num_classes=cfg.num_classes)
    if cfg.val_data:
        val_src = data_lib.make_source(cfg.val_data, "val", size=size)
    elif cfg.data in ("digits", "synthetic"):
        val_src = data_lib.make_source(cfg.data, "val", size=size, num_classes=cfg.num_classes)
    else:
        val_src = None
    num_classes = cfg.num_classes or len(train_src.class_names)
    if num_classes < len(train_src.class_names):
        raise ValueError(f"num_classes={num_classes} but {cfg.data!r} has {len(train_src.class_names)} classes")
    steps_per_epoch = len(train_src) / cfg.global_batch
    steps = cfg.steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    hosts = dict(host=jax.process_index(), hosts=jax.process_count())
    norm = dict(size=size, mean=pre.mean, std=pre.std, interpolation=pre.interpolation)
    flip = cfg.flip and getattr(train_src, "mirror_invariant", True)
    if cfg.flip and not flip:
        note(f"flip=true ignored: {cfg.data}'s labels change under a mirror (a mirrored 2 is not a 2)")
    train_tf = TrainTransform(
        **norm,
        crop_min_area=cfg.crop_min_area,
        flip=flip,
        augment=cfg.augment,
        randaugment_n=cfg.randaugment_n,
        randaugment_m=cfg.randaugment_m,
    )
    train = functools.partial(
        data_lib.train_dataset,
        train_src,
        train_tf,
        seed=cfg.seed,
        steps=steps,
        batches=data_lib.Batches(cfg.global_batch, **hosts),
        num_workers=cfg.num_workers,
    )
    val = None
    if val_src is not None:
        val_tf = EvalTransform(**norm, crop_pct=pre.crop_pct)
        val = data_lib.eval_dataset(val_src, val_tf, batches=data_lib.Batches(cfg.eval_batch, **hosts))
    note(
        f"data: {cfg.data}: {len(train_src)} train / {len(val_src) if val_src else 0} val images, "
        f"{num_classes} classes, {size}px; {steps} steps of {cfg.global_batch} (= {steps / steps_per_epoch:.1f} epochs)"
    )
    return Data(train_src, val_src, train, val, num_classes, tuple(train_src.class_names), steps, steps_per_epoch)


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
    wrt = trainable(spec, cfg.freeze)

    def with_optimizer(model):
        apply_freeze(model, cfg.freeze)
        return model, nnx.Optimizer(model, tx, wrt=wrt)

    def build():
        return with_optimizer(build_model(cfg, data.num_classes, spec=spec))

    def build_from(init: Pretrained):
        """From init weights, with no random init (a new classifier, for another class count, starts at zero)."""
        rngs = nnx.Rngs(params=cfg.seed, dropout=cfg.seed + 1)
        model = build_adapted(init, num_classes=spec.num_classes, in_channels=spec.in_channels,
                              drop_path=None if cfg.drop_path < 0 else cfg.drop_path,
                              dropout=None if cfg.dropout < 0 else cfg.dropout,
                              rngs=rngs, options=model_options(cfg))  # fmt: skip
        return with_optimizer(model)

    return build, build_from, schedule


def _split(model, optimizer) -> tuple[tuple, dict]:
    graphdef, weights, rest = nnx.split(model, WEIGHTS, ...)
    opt_graphdef, opt_state = nnx.split(optimizer)
    return (graphdef, opt_graphdef), {"weights": weights, "rest": rest, "opt": opt_state}


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
    (graphdef, opt_graphdef), abstract = _split(*nnx.eval_shape(build))
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

        if init is not None:
            state = _place_initial(init, replicated)
        else:

            def init():
                _, s = _split(*build())
                s["ema"] = s["weights"]
                return s

            state = jax.jit(init, out_shardings=replicated)()
        step, window = 0, []
    data_iter = iter(data.train(start=step))
    return Run(graphdef, opt_graphdef, eval_graphdef, state, schedule, step, root_key, data_iter, ckpt, window)


def _place_initial(init, replicated) -> dict:
    """The train state of (model, optimizer) built eagerly from init weights, placed replicated."""
    _, s = _split(*init())

    def place(s):  # one call: fresh buffers for every leaf (EMA and weights must not share one: both are donated)
        return {**s, "ema": s["weights"]}

    return jax.jit(place, out_shardings=replicated)(s)


def _init_note(cfg: TrainConfig, init: Pretrained, data: Data) -> None:
    names = init.preprocessing.class_names
    keep = init.spec.num_classes == data.num_classes
    if keep and names is not None and tuple(names) != tuple(data.class_names):
        note(f"init: keeping its {data.num_classes}-class head (the counts match) though its class names differ "
             f"from the data's; from here on the data's names apply")  # fmt: skip
    note(f"init: {'keeping the classifier' if keep else f'a new {data.num_classes}-class classifier'}; "
         f"freeze={cfg.freeze}")  # fmt: skip


def _check_resumable(cfg: TrainConfig, saved: dict) -> None:
    """Refuse to resume with a config that would change the model, data order or schedule."""
    fixed = ("variant", "init", "freeze", "stages", "resolution", "data", "global_batch", "seed", "optimizer", "steps",
             "epochs")  # fmt: skip
    # A key the saved config lacks predates it: the run had the default (no init, nothing frozen).
    defaults = dataclasses.asdict(TrainConfig())
    was = {k: saved.get(k, defaults[k]) for k in fixed}
    diff = [f"{k}: checkpoint {was[k]!r} vs now {getattr(cfg, k)!r}" for k in fixed if was[k] != getattr(cfg, k)]
    if diff:
        raise ValueError("cannot resume: the config differs from the checkpoint's:\n  " + "\n  ".join(diff))


def make_steps(cfg: TrainConfig, mesh: Mesh, run: Run):
    """The jitted train step (state donated) and eval step; shardings fixed, so nothing recompiles."""
    replicated, batch_sharding = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    graphdef, opt_graphdef, schedule = run.graphdef, run.opt_graphdef, run.schedule
    wrt = trainable(run.spec, cfg.freeze)
    frozen = frozen_mask(run.spec, cfg.freeze, run.state["weights"]) if cfg.freeze != "none" else None

    def train_step(state, batch, step, root_key):
        model = nnx.merge(graphdef, state["weights"], state["rest"])
        optimizer = nnx.merge(opt_graphdef, state["opt"])
        nnx.reseed(model, dropout=jax.random.fold_in(root_key, step))  # drop-path/dropout keys of this step

        def loss_fn(model):
            logits = model(batch["image"])
            return cross_entropy(logits, batch["label"], cfg.label_smoothing), logits

        # Only the trainable parameters are differentiated: frozen ones (cfg.freeze) cost no backward work.
        grad_fn = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, wrt), has_aux=True)
        (loss, logits), grads = grad_fn(model)
        optimizer.update(model, grads)
        _, weights, rest = nnx.split(model, WEIGHTS, ...)
        ema = ema_update(state["ema"], weights, cfg.ema_decay, step + 1, keep=frozen) if cfg.ema_decay > 0 else weights
        metrics = {
            "loss": loss,
            "top1": jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
            "grad_norm": optax.global_norm(grads),
            "lr": schedule(step),
            "finite": _all_finite((weights, rest, ema, nnx.state(optimizer))),
        }
        return {"weights": weights, "rest": rest, "opt": nnx.state(optimizer), "ema": ema}, metrics

    jit_train = jax.jit(
        train_step,
        in_shardings=(replicated, batch_sharding, None, replicated),
        out_shardings=(replicated, replicated),
        donate_argnums=0,
        compiler_options=remat_compiler_options(cfg.remat),  # remat is a no-op on XLA CPU without them
    )
    jit_eval = make_eval_step(run.eval_graphdef, mesh)
    return jit_train, jit_eval


def _all_finite(tree) -> jax.Array:
    """Whether every float in `tree` is finite: a finite loss and gradient can still step the weights, the BN
    statistics or an optimizer moment to inf (a huge lr, a huge gradient squared); nothing non-finite is saved."""
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
    return jnp.all(jnp.stack([jnp.isfinite(x).all() for x in leaves]))


def run_eval(cfg, mesh, run, eval_step, logger, data) -> dict | None:
    if data.val is None:
        return None
    weights = run.state["ema"] if cfg.ema_decay > 0 else run.state["weights"]
    result = evaluate_split(eval_step, weights, run.state["rest"], iter(data.val), mesh)
    logger.write(run.step, "val", result)
    which = "EMA" if cfg.ema_decay else "raw"
    note(f"step {run.step}: val top1 {result['top1']:.4f} top5 {result['top5']:.4f} ({which} weights)")
    return result


def _check_finite(pending: list, step: int) -> None:
    """Raise NonFiniteLoss if any loss, gradient norm or updated state since the last check is NaN/inf."""
    for i, (loss, gnorm, finite) in enumerate(jax.device_get(pending)):
        if not (np.isfinite(loss) and np.isfinite(gnorm) and finite):
            first = step - len(pending) + i + 1
            if np.isfinite(loss) and np.isfinite(gnorm):
                what = f"the weights after step {first} (loss {loss}, gradient norm {gnorm}) are"
            else:
                what = f"loss {loss} / gradient norm {gnorm} at step {first} is"
            raise NonFiniteLoss(
                f"{what} not finite; stopping without saving (the last good checkpoint is kept). "
                "Try a lower lr, grad_clip, or dtype=float32."
            )
    pending.clear()


def save(cfg: TrainConfig, run: Run, data: Data, *, force: bool) -> None:
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


def loop(cfg: TrainConfig, mesh: Mesh, data: Data, run: Run, train_step, eval_step, logger: Logger,
         stop: StopSignals | None = None) -> dict:  # fmt: skip
    """Step until data.steps: metrics to the host every log_every steps, eval and checkpoints on schedule; when
    `stop` asks (SIGTERM/SIGINT), after the step in progress: its metrics, a checkpoint, and out."""
    from tqdm import tqdm

    bar = tqdm(total=data.steps, initial=run.step, disable=not (cfg.progress and jax.process_index() == 0),
               unit="step", dynamic_ncols=True)  # fmt: skip
    try:
        return _steps(cfg, mesh, data, run, train_step, eval_step, logger, stop, bar)
    finally:
        bar.close()  # an error is printed on its own line, not after the bar


def _steps(cfg, mesh, data, run, train_step, eval_step, logger, stop, bar) -> dict:
    pending, t0, seen0 = [], time.perf_counter(), run.step
    stats = {"start": time.perf_counter(), "first_step_s": None, "images": 0, "val": None, "resumed_at": run.step}
    # A resumed run's best counts the evaluations before the interruption too.
    stats["best_top1"] = best_logged(logger.path, "val", "top1", up_to_step=run.step) if run.step else None
    while run.step < data.steps:
        batch = to_global(next(run.data_iter), mesh)
        run.state, metrics = train_step(run.state, batch, jnp.int32(run.step), run.root_key)
        run.step += 1
        finite = metrics.pop("finite")
        run.window.append(metrics)
        pending.append((metrics["loss"], metrics["grad_norm"], finite))
        run.ckpt.check()  # a failed asynchronous save stops the run here, at the first step after it ended
        if stats["first_step_s"] is None:
            jax.block_until_ready(metrics["loss"])
            stats["first_step_s"] = time.perf_counter() - stats["start"]  # mostly compilation
            t0, seen0 = time.perf_counter(), run.step
        last = run.step == data.steps
        halt = not last and stop is not None and stop.stop_now(run.step, cfg.log_every)
        if run.step % cfg.log_every == 0 or last or halt:
            _check_finite(pending, run.step)
            window = jax.device_get(run.window)
            mean = {k: float(np.mean([m[k] for m in window])) for k in window[0]}
            elapsed = time.perf_counter() - t0
            mean["img_per_s"] = (run.step - seen0) * cfg.global_batch / elapsed if run.step > seen0 else 0.0
            logger.write(run.step, "train", mean)
            bar.set_postfix(loss=f"{mean['loss']:.3f}", acc=f"{mean['top1']:.3f}", img_s=f"{mean['img_per_s']:.0f}")
            bar.update(run.step - bar.n)
            stats["images"] = (run.step - seen0) * cfg.global_batch
            stats["train_s"] = elapsed
            run.window = []
        if ((cfg.eval_every and run.step % cfg.eval_every == 0) or last) and not halt:  # a halt saves first
            result = run_eval(cfg, mesh, run, eval_step, logger, data)
            if result is not None:
                stats["val"] = result
                stats["best_top1"] = max(stats["best_top1"] or 0.0, result["top1"])
        if run.ckpt.should_save(run.step) or last or halt:
            _check_finite(pending, run.step)
            save(cfg, run, data, force=last or halt)
        if halt:
            stats["preempted"] = stop.requested or "a signal on another host"
            break
    return stats


def finish(cfg: TrainConfig, run: Run, data: Data, stats: dict, logger: Logger) -> dict:
    """Wait for checkpoints, draw curves, print and write the summary."""
    run.ckpt.wait_until_finished()
    logger.close()
    total = time.perf_counter() - stats["start"]
    train_s = stats.get("train_s") or 0.0
    summary = {
        "steps": run.step,
        "preempted": stats.get("preempted"),
        "best_val_top1": stats["best_top1"],
        "resumed_at_step": stats["resumed_at"] or None,
        "final_val": stats["val"],
        "wall_s": round(total, 1),
        "first_step_s": round(stats["first_step_s"] or 0.0, 1),
        "img_per_s": round(stats["images"] / train_s, 1) if train_s else None,
        "workdir": os.path.abspath(cfg.workdir),
    }
    if jax.process_index() == 0:
        write_atomic(os.path.join(cfg.workdir, "summary.json"), json.dumps(summary, indent=2) + "\n")
        plot_curves(logger.path, os.path.join(cfg.workdir, "curves.png"))
        best = f"{summary['best_val_top1']:.4f}" if summary["best_val_top1"] is not None else "n/a"
        ended = f"stopped by {summary['preempted']}" if summary["preempted"] else "done"
        note(
            f"{ended}: {run.step} steps in {total:.0f}s (first step incl. compile {summary['first_step_s']}s), "
            f"{summary['img_per_s']} img/s, best val top1 {best}; curves, metrics and checkpoints in {cfg.workdir}"
        )
    run.ckpt.close()
    return summary


# What a run writes besides its checkpoints.
RECORDS = ("config.json", "metrics.jsonl", "tb", "curves.png", "summary.json")


def check_workdir(workdir: str) -> None:
    """Create `workdir` if needed and prove it writable, so a bad path is one line before any work.

    Raises:
        ValueError: the path is a file, or cannot be created or written.
    """
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ValueError(f"workdir {workdir!r} is a file, not a directory")
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as e:
        raise ValueError(f"workdir {workdir!r} is not writable: {e.strerror or e}") from None
    reason = unwritable_dir(workdir)
    if reason:
        raise ValueError(f"workdir {workdir!r} is not writable: {reason}")
    ckpt_dir = os.path.join(workdir, "checkpoints")
    reason = unwritable_dir(ckpt_dir) if os.path.isdir(ckpt_dir) else None
    if reason:  # found now, not at the first save
        raise ValueError(f"checkpoint folder {ckpt_dir!r} is not writable: {reason}")


def set_aside_records(workdir: str) -> None:
    """A fresh run in a workdir that holds another run's records (one that died before its first checkpoint) moves
    them to `previous-<UTC time>/`, so metrics, curves and TensorBoard never mix two runs and nothing is lost."""
    found = [name for name in RECORDS if os.path.exists(os.path.join(workdir, name))]
    if not found:
        return
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    dest = os.path.join(workdir, f"previous-{stamp}")
    n = 1
    while os.path.exists(dest):
        n += 1
        dest = os.path.join(workdir, f"previous-{stamp}-{n}")
    os.makedirs(dest)
    for name in found:
        os.replace(os.path.join(workdir, name), os.path.join(dest, name))
    note(f"{workdir} held records of an earlier run without checkpoints ({', '.join(found)}); moved to {dest}")


def prepare(cfg: TrainConfig, mesh: Mesh, start: Start | None = None) -> tuple[Data, Run]:
    """The phases before the first step: where the model starts (`model_start`: init weights are read and checked
    there), the data, the model and optimizer, and the state (fresh or restored)."""
    start = start or model_start(cfg, saved_meta(cfg))
    data = make_data(cfg, start.preprocessing)
    spec = run_spec(cfg, start, data.num_classes)
    build, build_from, schedule = make_model_and_optimizer(cfg, data, spec)
    init = None
    if start.weights is not None:
        _init_note(cfg, start.weights, data)
        init = functools.partial(build_from, start.weights)
    run = restore_or_init(cfg, mesh, data, build, schedule, init)
    run.spec = spec
    run.preprocessing = run_preprocessing(cfg, start.preprocessing, _names(data))
    return data, run


def saved_meta(cfg: TrainConfig) -> dict | None:
    """The meta of the checkpoint a resume would continue from (None for a fresh run or an empty workdir)."""
    ckpt_dir = os.path.join(cfg.workdir, "checkpoints")
    if not cfg.resume or not os.path.isdir(ckpt_dir):
        return None
    ckpt = Checkpointer(ckpt_dir, read_only=True)
    try:
        latest = ckpt.latest_step()
        return None if latest is None else ckpt.restore(latest)["meta"]
    finally:
        ckpt.close()


def _names(data: Data) -> tuple[str, ...] | None:
    """The training data's class names, when they name every output of the model."""
    return tuple(data.class_names) if len(data.class_names) == data.num_classes else None


def _already_finished(cfg: TrainConfig, run: Run) -> dict:
    """`--resume` of a run that has done all its steps: nothing to train, and its records stay as they are."""
    run.ckpt.close()
    path = os.path.join(cfg.workdir, "summary.json")
    note(f"the run in {cfg.workdir} already finished at step {run.step}; nothing to do ({path} kept)")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return {"steps": run.step, "workdir": os.path.abspath(cfg.workdir)}


def train(cfg: TrainConfig) -> dict:
    """Run training as `cfg` says; returns the summary dict.

    Raises:
      NonFiniteLoss: the loss went NaN/inf (nothing was saved after the last good checkpoint).
      CheckpointWriteError: a checkpoint could not be written (full disk, read-only folder); earlier ones are intact.
      Preempted: SIGTERM or SIGINT stopped it after a step, with a checkpoint written.
      ValueError: bad config or data; `guard.WorkdirInUse` when another run holds the workdir.
    """
    check_runnable(cfg)
    if cfg.distributed:
        init_distributed(cfg)
    # A fresh run reads and checks its init weights before the workdir is touched; a resume reads its checkpoint
    # under the lock, so it never races the run that holds the workdir.
    start = None if cfg.resume else model_start(cfg)
    check_workdir(cfg.workdir)
    lock = workdir_lock(cfg.workdir, note=note, lead=jax.process_index() == 0)
    with lock, StopSignals() as stop:  # a second run on this workdir is refused here, before it writes anything
        start = start or model_start(cfg, saved_meta(cfg))
        summary = _train_locked(cfg, start, stop)
    if summary.get("preempted"):
        raise Preempted(
            f"stopped by {summary['preempted']} after step {summary['steps']}; checkpoint and records written, "
            f"continue with --resume (workdir {cfg.workdir})",
            summary,
        )
    return summary


def _train_locked(cfg: TrainConfig, start: Start, stop: StopSignals) -> dict:
    """`train` once the workdir is this run's."""
    mesh = make_mesh(cfg)
    data, run = prepare(cfg, mesh, start)  # refuses a workdir or resume before anything is written
    if stop.stop_now(0, 1):  # asked to stop while preparing: nothing new to save
        run.ckpt.close()
        return {"steps": run.step, "preempted": stop.requested or "a signal on another host"}
    if run.step >= data.steps:
        return _already_finished(cfg, run)
    if jax.process_index() == 0:
        if run.step == 0:
            set_aside_records(cfg.workdir)
        write_atomic(os.path.join(cfg.workdir, "config.json"), to_json(cfg) + "\n")
    train_step, eval_step = make_steps(cfg, mesh, run)
    logger = Logger(cfg.workdir, resumed_at=run.step)
    options = model_options(cfg)  # "auto" resolved for this backend
    how = (f", remat={cfg.remat}" if cfg.remat != "none" else "") + (", scanned stages" if cfg.scan else "")
    note(f"model: {run.spec.name}{f' ({cfg.stages} stages)' if cfg.stages else ''}, {options.dtype} compute{how}; "
         "compiling")  # fmt: skip
    try:
        stats = loop(cfg, mesh, data, run, train_step, eval_step, logger, stop)
        return finish(cfg, run, data, stats, logger)
    except CheckpointWriteError:
        logger.close()
        run.ckpt.close()
        raise
    except KeyboardInterrupt:  # a second Ctrl-C: out now, without a checkpoint of this step
        with contextlib.suppress(BaseException):  # a save already in flight is finished (a third Ctrl-C drops it)
            logger.close()
            run.ckpt.close()
        raise
    except BaseException:  # NonFiniteLoss or any other error is the one to report; earlier good saves still finish
        with contextlib.suppress(Exception):
            logger.close()
        with contextlib.suppress(CheckpointWriteError):
            run.ckpt.close()
        raise
