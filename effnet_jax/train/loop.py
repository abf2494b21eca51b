"""The training loop, in the order it runs.

`train(cfg)` checks the workdir and takes its lock (`workdir`, `guard`), then `_train_locked` runs the phases:
make_mesh -> make_data_and_run (model_start -> make_data -> make_model_and_optimizer -> restore_or_init) ->
make_steps (one train step per progressive-learning stage, all compiled before the first step) -> loop -> finish.
The data of a run is built in `inputs`, its state (fresh, restored, saved) in `state`, and the step, one pure
`jax.jit` function of (state, batch, step) with the state donated, in `step`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from effnet_spec.atomic import write_atomic

from ..weights.pretrained import Pretrained
from .checkpoint import CheckpointWriteError
from .config import TrainConfig, check_runnable
from .evaluate import evaluate_split, make_eval_step
from .guard import StopSignals, workdir_lock
from .inputs import Data, make_data
from .mesh import init_distributed, make_mesh, to_global
from .metrics import Logger, best_logged, note, plot_curves, strict_json
from .modeling import model_options, run_preprocessing
from .preflight import compiled_steps
from .progress import progress_bar
from .progressive import Stage, stage_at
from .start import Start, model_start, run_spec
from .state import Run, make_model_and_optimizer, restore_or_init, save
from .step import make_train_step, with_dropout
from .workdir import checked_workdir, saved_meta, set_aside_records, write_config

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
    lock = workdir_lock(cfg.workdir, note=note, lead=jax.process_index() == 0)
    # A second run on this workdir is refused by the lock, before it writes anything; a workdir this run created is
    # removed again when the run is refused (or fails) before it wrote a file there.
    with checked_workdir(cfg.workdir), lock, StopSignals() as stop:
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
    data, run = make_data_and_run(cfg, mesh, start)  # refuses a workdir or resume before anything is written
    if stop.stop_now(0, 1):  # asked to stop while preparing: nothing new to save
        run.ckpt.close()
        return {"steps": run.step, "preempted": stop.requested or "a signal on another host"}
    if run.step >= data.steps:
        return _already_finished(cfg, run)
    options = model_options(cfg)  # "auto" resolved for this backend
    how = (f", remat={cfg.remat}" if cfg.remat != "none" else "") + (", scanned stages" if cfg.scan else "")
    note(f"model: {run.spec.name}{f' ({cfg.stages} stages)' if cfg.stages else ''}, {options.dtype} compute{how}; "
         "compiling")  # fmt: skip
    started = time.perf_counter()
    try:  # compiled once, here; a step that cannot fit in memory is refused before any record is written
        train_steps, eval_step = compiled_steps(cfg, mesh, data, run, *make_steps(cfg, mesh, run, data.stages))
    except BaseException:
        run.ckpt.close()
        with contextlib.suppress(OSError):  # the checkpoint folder this fresh run made, still empty: a refusal
            if run.step == 0:  # leaves the workdir as it was
                os.rmdir(os.path.join(cfg.workdir, "checkpoints"))
        raise
    if jax.process_index() == 0:
        if run.step == 0:
            set_aside_records(cfg.workdir)
        write_config(cfg, run.step, run.saved_config)  # a resume's changes: a row in segments.jsonl, one line
    logger = Logger(cfg.workdir, resumed_at=run.step)
    try:
        stats = loop(cfg, mesh, data, run, train_steps, eval_step, logger, stop, started=started)
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


# ---------------------------------------------------------------------------------------------- before the first step


def make_data_and_run(cfg: TrainConfig, mesh: Mesh, start: Start | None = None) -> tuple[Data, Run]:
    """The phases before the first step: where the model starts (`model_start`: init weights are read and checked
    there), the data, the model and optimizer, and the state (fresh or restored)."""
    start = start or model_start(cfg, saved_meta(cfg))
    data = make_data(cfg, start.preprocessing, dropout=cfg.dropout if cfg.dropout >= 0 else start.spec.dropout)
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


def _init_note(cfg: TrainConfig, init: Pretrained, data: Data) -> None:
    names = init.preprocessing.class_names
    keep = init.spec.num_classes == data.num_classes
    if keep and names is not None and tuple(names) != tuple(data.class_names):
        note(f"init: keeping its {data.num_classes}-class head (the counts match) though its class names differ "
             f"from the data's; from here on the data's names apply")  # fmt: skip
    note(f"init: {'keeping the classifier' if keep else f'a new {data.num_classes}-class classifier'}; "
         f"freeze={cfg.freeze}")  # fmt: skip


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


def make_steps(cfg: TrainConfig, mesh: Mesh, run: Run, stages: tuple[Stage, ...]):
    """The jitted train step of each stage still to run (`step.make_train_step`, state donated; a stage's dropout
    is static in its graphdef) and the eval step; shardings fixed, so nothing recompiles."""
    train_steps = {
        s.index: make_train_step(
            cfg,
            mesh,
            (with_dropout(run.graphdef, run.state, s.dropout), run.opt_graphdef),
            run.schedule,
            run.spec,
            run.state,
        )  # fmt: skip
        for s in stages
        if s.end > run.step
    }
    return train_steps, make_eval_step(run.eval_graphdef, mesh)


# ---------------------------------------------------------------------------------------------- the steps


def loop(cfg: TrainConfig, mesh: Mesh, data: Data, run: Run, train_steps: dict, eval_step, logger: Logger,
         stop: StopSignals | None = None, started: float | None = None) -> dict:  # fmt: skip
    """Step until data.steps, each step with its stage's compiled step (`train_steps`: stage index -> step):
    metrics to the host every log_every steps, eval and checkpoints on schedule; when `stop` asks (SIGTERM/SIGINT),
    after the step in progress: its metrics, a checkpoint, and out. `started`: when compiling began (the first
    step's time counts it)."""
    # a bar on a terminal, plain lines now and then in a redirected log
    bar = progress_bar(data.steps, run.step, enabled=cfg.progress and jax.process_index() == 0)
    try:
        return _steps(cfg, mesh, data, run, train_steps, eval_step, logger, stop, bar, started)
    finally:
        bar.close()  # an error is printed on its own line, not after the bar


def _steps(cfg, mesh, data, run, train_steps, eval_step, logger, stop, bar, started=None) -> dict:
    pending, t0, seen0 = [], time.perf_counter(), run.step
    stats = {
        "start": started or time.perf_counter(),
        "first_step_s": None,
        "images": 0,
        "val": None,
        "resumed_at": run.step,
    }
    # A resumed run's best counts the evaluations before the interruption too.
    stats["best_top1"] = best_logged(logger.path, "val", "top1", up_to_step=run.step) if run.step else None
    stage = None
    while run.step < data.steps:
        if stage is None or run.step >= stage.end:
            stage = stage_at(data.stages, run.step)
            _stage_starts(data, stage, run.step, logger, stats["resumed_at"])
        batch = to_global(next(run.data_iter), mesh)
        run.state, metrics = train_steps[stage.index](run.state, batch, jnp.int32(run.step), run.root_key)
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
        if run.step % cfg.log_every == 0 or last:  # a halt logs nothing: its window is saved with the checkpoint
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


def _stage_starts(data: Data, stage: Stage, step: int, logger: Logger, resumed_at: int) -> None:
    """Progressive learning: a stage's first step is a row of metrics.jsonl (kind "stage"; the plot marks it) and a
    line; a run resumed inside a stage says which it continues."""
    if len(data.stages) == 1:
        return
    if step == stage.first and not (step == resumed_at and logger.has(step, "stage")):
        logger.write(step, "stage", stage.record())
        note(stage.describe(len(data.stages)))
    elif step == resumed_at:
        note(f"continuing {stage.describe(len(data.stages))}")


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


# ---------------------------------------------------------------------------------------------- after the last step


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
        write_atomic(os.path.join(cfg.workdir, "summary.json"), strict_json(summary, indent=2) + "\n")
        plot_curves(logger.path, os.path.join(cfg.workdir, "curves.png"))
        best = f"{summary['best_val_top1']:.4f}" if summary["best_val_top1"] is not None else "n/a"
        ended = f"stopped by {summary['preempted']}" if summary["preempted"] else "done"
        note(
            f"{ended}: {run.step} steps in {total:.0f}s (first step incl. compile {summary['first_step_s']}s), "
            f"{summary['img_per_s']} img/s, best val top1 {best}; curves, metrics and checkpoints in {cfg.workdir}"
        )
    run.ckpt.close()
    return summary
