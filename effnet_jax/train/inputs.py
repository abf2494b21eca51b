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
    val, eval_batch = None, 0
    if val_src is not None:
        val_tf = EvalTransform(**norm, crop_pct=pre.crop_pct)
        eval_batch = data_lib.eval_batch_for(len(val_src), cfg.eval_batch, jax.device_count())
        val = data_lib.eval_dataset(val_src, val_tf, batches=data_lib.Batches(eval_batch, **hosts))
    files = [f" ({d})" if d else "" for d in (data_lib.describe(train_src), data_lib.describe(val_src))]
    note(
        f"data: {cfg.data}: {len(train_src)} train{files[0]} / {len(val_src) if val_src else 0} val{files[1]} images, "
        f"{num_classes} classes, {size}px; {steps} steps of {cfg.global_batch} (= {steps / steps_per_epoch:.1f} epochs)"
    )
    return Data(train_src, val_src, train, val, num_classes, tuple(train_src.class_names), steps, steps_per_epoch,
                eval_batch)  # fmt: skip
