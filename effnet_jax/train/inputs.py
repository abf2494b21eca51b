"""The data of one training run: its train and val sources, their transforms and the Grain pipelines, sliced for
this process, and the length of the run in steps (built from the pieces in `data` and `augment`)."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import jax

from effnet_spec import Preprocessing

from . import data as data_lib
from .augment import EvalTransform, TrainTransform
from .config import MAX_STEPS, TrainConfig
from .metrics import note
from .modeling import sides
from .progressive import Stage, plan

__all__ = ["Data", "make_data"]


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
    eval_batch: int = 0  # global rows of each val batch: cfg.eval_batch, or the val split padded to the devices
    stages: tuple[Stage, ...] = ()  # progressive learning's stages (`progressive.plan`); one without it
    eval_size: int = 0  # val image side


def make_data(cfg: TrainConfig, pre: Preprocessing, dropout: float = 0.0) -> Data:
    """Sources, transforms and the Grain pipelines, sliced for this process; images prepared as `pre` says (the
    init weights' normalisation, or the family's), each stage's train images at its side (`sides`, `plan`; the
    model's `dropout` is where the dropout ramp ends)."""
    size, eval_size = sides(cfg, pre)
    train_src = data_lib.make_source(cfg.data, "train", size=size, num_classes=cfg.num_classes)
    if cfg.val_data:
        val_src = data_lib.make_source(cfg.val_data, "val", size=eval_size)
    elif cfg.data in ("digits", "synthetic"):
        val_src = data_lib.make_source(cfg.data, "val", size=eval_size, num_classes=cfg.num_classes)
    else:
        val_src = None
    if cfg.val_data:  # labels are positions in each source's class list: they must mean the same classes
        paired = data_lib.check_classes(val_src.class_names, train_src.class_names, what=f"val_data {cfg.val_data!r}",
                                        against=f"data {cfg.data!r}")  # fmt: skip
        if paired:
            note(paired)
    num_classes = cfg.num_classes or len(train_src.class_names)
    if num_classes < len(train_src.class_names):
        raise ValueError(f"num_classes={num_classes} but {cfg.data!r} has {len(train_src.class_names)} classes")
    steps_per_epoch = len(train_src) / cfg.global_batch
    steps = cfg.steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    if steps > MAX_STEPS:  # the step counter is int32 on the device
        raise ValueError(f"epochs={cfg.epochs:g} of {len(train_src)} images at global_batch={cfg.global_batch} is "
                         f"{steps} steps; at most {MAX_STEPS} fit: lower epochs or raise global_batch")  # fmt: skip
    stages = plan(cfg, steps, size, dropout)
    hosts = dict(host=jax.process_index(), hosts=jax.process_count())
    norm = dict(mean=pre.mean, std=pre.std, interpolation=pre.interpolation)
    flip = cfg.flip and getattr(train_src, "mirror_invariant", True)
    if cfg.flip and not flip:
        note(f"flip=true ignored: {cfg.data}'s labels change under a mirror (a mirrored 2 is not a 2)")
    inputs = tuple(
        data_lib.StageInput(
            s.end,
            TrainTransform(
                size=s.size,
                **norm,
                crop_min_area=cfg.crop_min_area,
                flip=flip,
                augment=cfg.augment,
                randaugment_n=cfg.randaugment_n,
                randaugment_m=s.randaugment_m,
            ),
            mixup=s.mixup,
            cutmix=s.cutmix,
        )
        for s in stages
    )
    train = functools.partial(
        data_lib.train_dataset,
        train_src,
        inputs,
        seed=cfg.seed,
        steps=steps,
        batches=data_lib.Batches(cfg.global_batch, **hosts),
        num_workers=cfg.num_workers,
    )
    val, eval_batch = None, 0
    if val_src is not None:
        val_tf = EvalTransform(size=eval_size, **norm, crop_pct=pre.crop_pct)
        eval_batch = data_lib.eval_batch_for(len(val_src), cfg.eval_batch, jax.device_count())
        val = data_lib.eval_dataset(val_src, val_tf, batches=data_lib.Batches(eval_batch, **hosts))
    files = [f" ({d})" if d else "" for d in (data_lib.describe(train_src), data_lib.describe(val_src))]
    sizes = f"{size}px" if eval_size == size else f"{size}px (val {eval_size}px)"
    if len(stages) > 1:
        sizes = f"{stages[0].size}-{size}px in {len(stages)} stages" + (
            "" if eval_size == size else f" (val {eval_size}px)"
        )
    note(
        f"data: {cfg.data}: {len(train_src)} train{files[0]} / {len(val_src) if val_src else 0} val{files[1]} images, "
        f"{num_classes} classes, {sizes}; {steps} steps of {cfg.global_batch} (= {steps / steps_per_epoch:.1f} epochs)"
    )
    return Data(train_src, val_src, train, val, num_classes, tuple(train_src.class_names), steps, steps_per_epoch,
                eval_batch, stages, eval_size)  # fmt: skip
