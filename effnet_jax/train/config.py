"""Training configuration: one frozen `TrainConfig`, named presets, and `--set key=value` overrides.

A preset is `dataclasses.replace(BASE, ...)`; the command line only overrides fields of a preset
(`effnet train --preset b0 --set data=/imagenet/train --set global_batch=1024`). The recipe numbers
in `BASE` are the paper's (Tan & Le 2019, section 5.2) as shipped in the TF reference
(`tensorflow/tpu/models/official/efficientnet`): RMSProp decay 0.9, momentum 0.9, eps 1e-3,
lr 0.016 per 256 images, 5 warm-up epochs, x0.97 every 2.4 epochs, weight decay 1e-5,
label smoothing 0.1, EMA 0.9999, AutoAugment.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
import types
import typing
from dataclasses import dataclass

from effnet_spec import FAMILIES, SOURCES, VARIANTS, parse_coefficients, stages_for
from effnet_spec.resolve import MAX_CLASSES

from ..env import FALSE, TRUE
from ..model.options import DTYPE_CHOICES, REMATS

__all__ = [
    "BASE",
    "PRESETS",
    "DEFAULT_PRESET",
    "TrainConfig",
    "apply_overrides",
    "check_runnable",
    "parse_freeze",
    "from_dict",
    "from_preset",
    "to_json",
]

OPTIMIZERS = ("rmsprop", "sgd", "adamw")
FREEZE = ("none", "bn", "backbone", "stages:K")


def parse_freeze(text: str) -> tuple[str, int]:
    """("none" | "bn" | "backbone" | "stages", K) of a `freeze=` value (K is 0 except for stages:K).

    Raises:
        ValueError: anything else, naming the accepted spellings.
    """
    mode, sep, k = text.partition(":")
    if not sep and mode in FREEZE[:3]:
        return mode, 0
    if mode == "stages" and sep and k.isdigit():
        return mode, int(k)
    raise ValueError(f"TrainConfig: freeze must be one of {', '.join(FREEZE)} (K a stage count); got {text!r}")


AUGMENTS = ("autoaugment", "randaugment", "none")

# The range of each int field, so that no value reaches numpy or XLA only to overflow there (an int64
# `OverflowError`, a JAX traceback) or asks for what no machine holds. The loop counts steps in int32 on the device
# (`jnp.int32(step)`, `jax.random.fold_in`), so step counts stop at int32; `jax.random.key(seed)` and
# `nnx.Rngs(seed + 1)` keep a seed's low 32 bits without x64 (seed 2^32 would silently be seed 0; `seed` + 1 must
# fit too) and numpy's seed sequence takes no negative one;
# batches stop at 2^20 images (16 times the largest EfficientNet batch published, 65,536); resolution at export's
# 4096 px (8x b7's native side). An int field missing here is held to int64.
INT32_MAX = 2**31 - 1
MAX_STEPS = INT32_MAX
MAX_SEED = 2**32 - 2
MAX_BATCH = 2**20
MAX_RESOLUTION = 4096
MAX_EPOCHS = 1e6  # epochs and warmup_epochs: far past any schedule; more only overflows the step arithmetic
# The longest stage table of any family (V1's 7, V2-M/L/XL's 7, V2-S and the V2 base 6): what `stages` and
# `freeze=stages:K` may say before the variant is known (an empty variant takes the init weights'); with a variant
# set, its own table's length is the limit (`_stage_count`).
MAX_STAGES = max(len(f.stages) for f in FAMILIES.values())
INT_RANGES = {  # field: (lowest, highest); checked after the checks in `__post_init__` that give their own reasons
    "init_timeout": (1, 86400),  # seconds
    "resolution": (0, MAX_RESOLUTION),
    "stages": (0, MAX_STAGES),
    "num_classes": (0, MAX_CLASSES),
    "eval_resolution": (0, MAX_RESOLUTION),
    "progressive": (0, 64),
    "progressive_size": (0, MAX_RESOLUTION),
    "num_workers": (0, 1024),
    "randaugment_n": (0, 100),
    "randaugment_m": (0, 30),
    "global_batch": (1, MAX_BATCH),
    "eval_batch": (1, MAX_BATCH),
    "steps": (0, MAX_STEPS),
    "seed": (0, MAX_SEED),
    "ckpt_every": (0, MAX_STEPS),
    "keep": (1, 1_000_000),
    "eval_every": (0, MAX_STEPS),
    "log_every": (1, MAX_STEPS),
    "num_processes": (0, 1_000_000),
    "process_id": (-1, 1_000_000),
}


def _brief(value: object, limit: int = 40) -> str:
    """`value` for an error line, shortened: a 100-digit number by its first digits and its length."""
    if isinstance(value, int) and value.bit_length() > 256:  # repr of a huge int is slow, or refused past 4300 digits
        return f"an integer of about {int(value.bit_length() * math.log10(2)) + 1} digits"
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _range(name: str) -> str:
    low, high = INT_RANGES.get(name, (-(2**63), 2**63 - 1))
    return f"{low}..{high}"


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything a training run depends on; written as JSON into the workdir."""

    # --- model
    variant: str = "b0"  # effnet_spec variant name (b0..b8, l2, lite0..lite4); "" = init's
    init: str = ""  # start from these weights (any `from_pretrained` source: file, run directory, hf-hub: id)
    freeze: str = "none"  # with init: "none", "bn", "backbone" or "stages:K" (see effnet_jax.train.freeze)
    resolution: int = 0  # train/eval image side in pixels; 0 = the variant's native resolution (with phi: at phi=0)
    phi: float = 0.0  # compound scaling: the variant (and resolution) scaled by alpha^phi, beta^phi, gamma^phi
    coefficients: str = ""  # the alpha,beta,gamma phi uses: "" = the paper's, "A,B,G", or a file `effnet search` wrote
    stages: int = 0  # keep only the first N rows of the variant's stage table (0 = all: 7 for V1, 6 or 7 for V2)
    weight_source: str = "effnet"  # effnet_spec weight source whose conventions (padding, BN) to use; "" = init's
    drop_path: float = -1.0  # stochastic-depth rate of the last block; < 0 = the variant's (0.2)
    dropout: float = -1.0  # dropout before the classifier; < 0 = the variant's (0.2..0.5)
    dtype: str = "auto"  # compute dtype: "auto" (bfloat16 on GPU/TPU, float32 on CPU), "float32" or "bfloat16"
    depthwise_impl: str = "auto"  # effnet_jax.ops.depthwise formulation ("auto" picks per backend)
    remat: str = "none"  # recompute each block in the backward pass: "block", or "dots" (keeps 1x1 conv outputs)
    scan: bool = False  # run each stage's repeated blocks as one scan: one compiled block per stage (big variants)

    # --- data
    data: str = "digits"  # "digits", "synthetic" (random tensors), an image folder, or shards `effnet prepare` wrote
    val_data: str = ""  # image folder for validation; "" = digits' fixed split, or none for other sources
    num_classes: int = 0  # classifier outputs; 0 = the number of classes the data has
    num_workers: int = 0  # Grain worker processes decoding/augmenting per host (0 = in the main process)
    augment: str = "autoaugment"  # "autoaugment" (TF's policy_v0), "randaugment" (TF's form) or "none"
    randaugment_n: int = 2  # RandAugment: ops applied per image
    randaugment_m: int = 10  # RandAugment: magnitude on TF's 0..10 level scale (TF's default 10; B5 17, B7 28)
    crop_min_area: float = 0.08  # random resized crop: smallest share of the image area kept
    flip: bool = True  # random horizontal flip (off for digits: a mirrored 2 is not a 2)
    eval_crop: float = 0.875  # eval: center crop share of the side, then resize to `resolution`; 0 = init's
    eval_resolution: int = 0  # eval image side; 0 = resolution (with resolution 0, a V2 variant's larger eval side)
    mixup: float = 0.0  # mixup alpha (automl's form: effnet_jax.train.mixing); 0 = off
    cutmix: float = 0.0  # CutMix alpha; 0 = off (both on: the first half of each batch mixup, the second CutMix)

    # --- progressive learning (EfficientNetV2: effnet_jax.train.progressive); each ramp ends at the setting above
    progressive: int = 0  # stages: image side and regularisation raised linearly stage by stage (V2: 4); 0 = off
    progressive_size: int = 0  # the first stage's image side (the last trains at resolution); 0 = 128, or half the
    # train side when that is less (automl's `ibase`)
    progressive_magnitude: float = 5.0  # the first stage's RandAugment magnitude (the last: randaugment_m)
    progressive_dropout: float = 0.1  # the first stage's dropout (the last: the model's)
    progressive_mixup: float = 0.0  # the first stage's mixup and CutMix alpha (the last: mixup, cutmix)

    # --- schedule (global = summed over every device of every host)
    global_batch: int = 4096  # images per optimizer step, global
    eval_batch: int = 256  # images per eval step, global (the last batch is padded and masked)
    epochs: float = 350.0  # length of the run in epochs of the train split (used when steps == 0)
    steps: int = 0  # length of the run in optimizer steps; > 0 overrides epochs

    # --- optimizer (see effnet_jax.train.optim)
    optimizer: str = "rmsprop"  # "rmsprop" (TF form, exponential decay), "sgd" or "adamw" (cosine)
    lr: float = 0.0  # peak learning rate; 0 = lr_per_256 * global_batch / 256
    lr_per_256: float = 0.016  # peak learning rate per 256 images of global batch
    warmup_epochs: float = 5.0  # linear warm-up from 0, in epochs
    lr_decay_rate: float = 0.97  # rmsprop schedule: multiply the lr by this ...
    lr_decay_epochs: float = 2.4  # ... every this many epochs (staircase, counted from step 0)
    momentum: float = 0.9  # rmsprop/sgd momentum; adamw b1
    rmsprop_decay: float = 0.9  # rmsprop: share of the old mean square kept
    rmsprop_eps: float = 1e-3  # rmsprop: added to the mean square inside the sqrt
    weight_decay: float = 1e-5  # L2 (rmsprop/sgd) or decoupled (adamw) decay; BN params and biases excluded
    label_smoothing: float = 0.1  # share of the target mass spread uniformly over the classes
    ema_decay: float = 0.9999  # EMA of weights and BN stats, TF warm-up min(d, (1+n)/(10+n)); 0 = no EMA
    grad_clip: float = 0.0  # clip the global gradient norm to this; 0 = off

    # --- run
    seed: int = 0  # seeds init, data order, augmentation, dropout and drop-path
    workdir: str = "runs/effnet"  # checkpoints, metrics.jsonl, TensorBoard events, curves.png, config.json
    resume: bool = False  # continue from the latest checkpoint in workdir
    ckpt_every: int = 500  # save every this many steps (and at the end); 0 = only at the end
    keep: int = 3  # checkpoints kept (the oldest are deleted)
    eval_every: int = 0  # evaluate every this many steps (and at the end); 0 = only at the end
    log_every: int = 50  # fetch metrics to the host, log and update the bar every this many steps
    progress: bool = True  # a progress bar on a terminal, a line every 30 s in a redirected log (process 0 only)
    distributed: bool = False  # call jax.distributed.initialize() (multi-host: TPU pods, SLURM, or the 3 below)
    coordinator: str = ""  # host:port of process 0, when the cluster is not auto-detected
    num_processes: int = 0  # processes in the job, when not auto-detected
    process_id: int = -1  # this process's index, when not auto-detected
    init_timeout: int = 300  # distributed: seconds to wait for the coordinator and every process to join

    def __post_init__(self) -> None:
        def need(cond: bool, what: str) -> None:
            if not cond:
                raise ValueError(f"TrainConfig: {what}")

        _check_types(self)
        for f in dataclasses.fields(self):  # nan/inf would pass every range check below (or be silently replaced)
            value = getattr(self, f.name)
            if isinstance(value, float):
                need(math.isfinite(value), f"{f.name} must be a finite number; got {value}")
        need(
            self.variant in VARIANTS or self.variant == "",
            f"variant must be one of {', '.join(VARIANTS)} (or empty: init='s); got {self.variant!r}",
        )
        need(self.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}; got {self.optimizer!r}")
        need(self.augment in AUGMENTS, f"augment must be one of {AUGMENTS}; got {self.augment!r}")
        need(self.dtype in DTYPE_CHOICES, f"dtype must be one of {DTYPE_CHOICES}; got {self.dtype!r}")
        need(self.remat in REMATS, f"remat must be one of {REMATS}; got {self.remat!r}")
        need(
            self.weight_source in SOURCES or self.weight_source == "",
            f"weight_source must be one of {', '.join(SOURCES)} (or empty: init='s); got {self.weight_source!r}",
        )
        need(0 <= self.phi <= 64, f"phi must lie in 0..64; got {self.phi}")
        if self.coefficients or self.phi:
            need(not self.init, f"phi={self.phi:g}/coefficients scale a variant built from scratch, not init weights")
            need(bool(self.variant), "phi and coefficients scale the config's variant; it is empty")
        if self.coefficients and "," in self.coefficients and "/" not in self.coefficients:
            try:
                parse_coefficients(self.coefficients, base=self.variant or "b0")
            except ValueError as e:
                need(False, str(e))
        mode, k = parse_freeze(self.freeze)  # raises with the accepted spellings
        need(mode == "none" or self.init, f"freeze={self.freeze} needs init= (a frozen random network learns nothing)")
        need(not (self.init and self.stages), f"stages={self.stages} truncates a model built from scratch, not init=")
        depth = self.stages or _stage_count(self.variant)
        need(k <= depth, f"freeze=stages:{k}: the model has {depth} stages; K must lie in 0..{depth}")
        need(self.global_batch >= 1, f"global_batch must be >= 1; got {self.global_batch}")
        need(self.eval_batch >= 1, f"eval_batch must be >= 1; got {self.eval_batch}")
        need(self.steps >= 0 and self.epochs >= 0, f"steps and epochs must be >= 0; got {self.steps}, {self.epochs}")
        need(self.steps > 0 or self.epochs > 0, f"need steps > 0 or epochs > 0; got {self.steps}, {self.epochs}")
        need(self.seed >= 0, f"seed must be >= 0 (numpy's generators take no negative seed); got {self.seed}")
        need(self.lr >= 0, f"lr must be >= 0 (0 = lr_per_256 * global_batch / 256); got {self.lr}")
        need(self.lr_per_256 > 0, f"lr_per_256 must be > 0; got {self.lr_per_256}")
        need(self.warmup_epochs >= 0, f"warmup_epochs must be >= 0; got {self.warmup_epochs}")
        need(0 < self.lr_decay_rate <= 1, f"lr_decay_rate must lie in (0, 1]; got {self.lr_decay_rate}")
        need(self.lr_decay_epochs > 0, f"lr_decay_epochs must be > 0; got {self.lr_decay_epochs}")
        need(0 <= self.momentum < 1, f"momentum must lie in [0, 1); got {self.momentum}")
        need(0 <= self.rmsprop_decay < 1, f"rmsprop_decay must lie in [0, 1); got {self.rmsprop_decay}")
        need(self.rmsprop_eps > 0, f"rmsprop_eps must be > 0; got {self.rmsprop_eps}")
        need(self.weight_decay >= 0, f"weight_decay must be >= 0; got {self.weight_decay}")
        need(self.grad_clip >= 0, f"grad_clip must be >= 0 (0 = off); got {self.grad_clip}")
        need(self.drop_path < 1 and self.dropout < 1, f"drop_path and dropout must be < 1 (< 0: the variant's); got "
             f"{self.drop_path}, {self.dropout}")  # fmt: skip
        need(self.num_classes >= 0 and self.randaugment_n >= 0, "num_classes and randaugment_n must be >= 0")
        most = _stage_count(self.variant)
        need(0 <= self.stages <= most, f"stages must lie in 0..{most} ({self.variant or 'any variant'} has "
             f"{most} stages); got {self.stages}")  # fmt: skip
        need(0 < self.crop_min_area <= 1, f"crop_min_area must lie in (0, 1]; got {self.crop_min_area}")
        need(0 <= self.eval_crop <= 1, f"eval_crop must lie in (0, 1] (0: the init weights'); got {self.eval_crop}")
        need(0 <= self.label_smoothing < 1, f"label_smoothing must lie in [0, 1); got {self.label_smoothing}")
        need(0 <= self.ema_decay < 1, f"ema_decay must lie in [0, 1); got {self.ema_decay}")
        need(0 <= self.randaugment_m <= 30, f"randaugment_m must lie in 0..30; got {self.randaugment_m}")
        for name in ("mixup", "cutmix", "progressive_mixup"):  # Beta(alpha, alpha) needs alpha > 0; 0 is off
            value = getattr(self, name)
            need(0 <= value <= 100, f"{name} must lie in 0..100 (a Beta alpha; 0 = off); got {value:g}")
        need(0 <= self.progressive_magnitude <= 30, f"progressive_magnitude must lie in 0..30; got "
             f"{self.progressive_magnitude:g}")  # fmt: skip
        need(
            0 <= self.progressive_dropout < 1, f"progressive_dropout must lie in [0, 1); got {self.progressive_dropout}"
        )
        need(not (self.init and self.eval_resolution and not self.resolution), f"eval_resolution={self.eval_resolution}"
             " with init= needs resolution= too (the train side; 0 would mean the weights' own)")  # fmt: skip
        need(self.progressive != 1, "progressive=1 is one stage, the run as it is: set 0 (off) or 2 or more stages")
        given = [k for k in _PROGRESSIVE if getattr(self, k) != _DEFAULTS[k]]
        need(self.progressive or not given, f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} read only with "
             "progressive=N (N stages); set progressive, or leave them unset")  # fmt: skip
        need(self.keep >= 1, f"keep must be >= 1; got {self.keep}")
        need(min(self.ckpt_every, self.eval_every, self.num_workers) >= 0, "ckpt_every, eval_every, num_workers >= 0")
        need(self.log_every >= 1, f"log_every must be >= 1; got {self.log_every}")
        for name, (low, high) in INT_RANGES.items():  # after the checks above, which give their own reasons
            value = getattr(self, name)
            need(low <= value <= high, f"{name} must lie in {_range(name)}; got {_brief(value)}")
        for name in ("epochs", "warmup_epochs"):
            value = getattr(self, name)
            need(value <= MAX_EPOCHS, f"{name} must be at most {MAX_EPOCHS:g}; got {value:g}")
        self._check_processes(need)

    def _check_processes(self, need) -> None:
        """The multi-host fields are read only with distributed=true: set without it, they would be ignored."""
        given = [k for k in ("coordinator", "num_processes", "process_id") if getattr(self, k) != _DEFAULTS[k]]
        need(
            self.distributed or not given,
            f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} read only with distributed=true (a multi-host "
            f"job); set distributed=true, or leave {'it' if len(given) == 1 else 'them'} unset",
        )
        if self.num_processes and self.process_id >= 0:
            need(
                self.process_id < self.num_processes,
                f"process_id must lie in 0..{self.num_processes - 1} (num_processes={self.num_processes}); got "
                f"{self.process_id}",
            )


def _stage_count(variant: str) -> int:
    """Rows of `variant`'s stage table (V2-S and the V2 base have 6, the rest 7); `MAX_STAGES` for an empty variant
    (the init weights' decide, and `freeze.frozen_modules` checks against them)."""
    return len(stages_for(variant)) if variant else MAX_STAGES


def _check_types(cfg: TrainConfig) -> None:
    """Each field holds its declared type (a Python API caller or a hand-edited config.json may pass anything): a
    bool is not an int, a string is not a number. numpy ints and floats, and ints for floats, are taken as the
    declared Python type.

    Raises:
        ValueError: naming the field, the type it needs and what it got.
    """
    for f in dataclasses.fields(cfg):
        value, typ = getattr(cfg, f.name), _HINTS[f.name]
        if typ is bool:
            ok = isinstance(value, bool)
        elif typ is int:
            ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
            if ok and type(value) is not int:
                object.__setattr__(cfg, f.name, value := int(value))
            if ok and value.bit_length() > 63:  # before any check below formats it (4300+ digits cannot be)
                raise ValueError(f"TrainConfig: {f.name} must lie in {_range(f.name)}; got {_brief(value)}")
        elif typ is float:
            ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
            if ok and type(value) is not float:
                try:
                    object.__setattr__(cfg, f.name, float(value))
                except OverflowError:  # an int past float's range
                    raise ValueError(f"TrainConfig: {f.name} must be a finite number; got {_brief(value)}") from None
        elif typ is str:
            ok = isinstance(value, str)
        else:  # a field of another type checks itself in `__post_init__`
            ok = True
        if not ok:
            raise ValueError(
                f"TrainConfig: {f.name} must be {typ.__name__}; got {type(value).__name__} {_brief(value)}"
            )


def check_runnable(cfg: TrainConfig) -> None:
    """What a preset may leave open but a run may not: an empty variant or weight source needs init weights; a
    workdir inside an image folder it reads (on the next run, the workdir would be read as a class).

    Raises:
        ValueError: one line saying what to set.
    """
    for key in ("data", "val_data"):
        folder = getattr(cfg, key)
        if folder and os.path.isdir(folder) and _inside(cfg.workdir, folder):
            raise ValueError(f"workdir {cfg.workdir!r} is inside {key} {folder!r}: the next run would read it as a "
                             "class of that data; give a workdir outside it")  # fmt: skip
    if not cfg.init and (not cfg.variant or not cfg.weight_source):
        empty = "variant" if not cfg.variant else "weight_source"
        raise ValueError(
            f"{empty} is empty, which means the init weights', but init is not set: pass --set init=SOURCE "
            f"(weights file, run directory or hf-hub: id) or --set {empty}=..."
        )


_HINTS = typing.get_type_hints(TrainConfig)
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
_PROGRESSIVE = ("progressive_size", "progressive_magnitude", "progressive_dropout", "progressive_mixup")


def _inside(path: str, folder: str) -> bool:
    """Whether `path` is `folder` or below it, symlinks resolved (`path` need not exist yet)."""
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([path, folder]) == folder


BASE = TrainConfig()

# Per-variant ImageNet presets: the paper's recipe at each variant's native resolution. Global batch 4096
# as in the TF reference (TPU v3-32+); lr follows the batch through lr_per_256.
_IMAGENET = {name: dataclasses.replace(BASE, variant=name, data="", workdir=f"runs/{name}") for name in VARIANTS}
# EfficientNetV2 (Tan & Le 2021), as automl's effnetv2_configs.py and hparams.py ship it: V1's optimizer, schedule,
# weight decay, label smoothing and EMA (the same numbers there), progressive learning in 4 stages up to the
# variant's train side, eval at its larger eval side (resolution 0); S/M/L/XL RandAugment (2 ops) up to magnitude
# (first) and mixup = CutMix alpha (second) below; the V2 base (b0..b3) V1's AutoAugment and no mixing.
V2_RECIPE = {"v2_s": (10, 0.0), "v2_m": (15, 0.2), "v2_l": (20, 0.5), "v2_xl": (20, 0.5)}
for _name, _preset in _IMAGENET.items():
    if VARIANTS[_name].family.startswith("v2"):
        _m, _mix = V2_RECIPE.get(_name, (10, 0.0))
        _IMAGENET[_name] = dataclasses.replace(
            _preset,
            progressive=4,
            augment="randaugment" if _name in V2_RECIPE else "autoaugment",
            randaugment_m=_m,
            mixup=_mix,
            cutmix=_mix,
        )

PRESETS: dict[str, TrainConfig] = {
    # `effnet train` with no arguments: b0 on the embedded handwritten digits (1,797 8x8 images, stored upscaled
    # to 32 px, fed at 16 px), about level with scikit-learn's SVC on the same split (most seeds above, not all:
    # benchmarks/results/digits.md) in a few minutes on a 2-core machine. Short-run choices: AdamW + cosine (a
    # 71-epoch run is too short for the 350-epoch RMSProp staircase); PyTorch BN constants (running stats keep
    # 0.9, not 0.99: with 0.99 they still remember the wild first steps at step 400, and eval-mode accuracy
    # collapses); a 2-epoch warm-up (the first steps' gradients are large); EMA 0.99; no drop-path/dropout/
    # AutoAugment (1.4k images); flip off (a mirrored 2 is not a 2). 16 px, not 32: the digits hold 8x8 pixels of
    # information, and a step at a quarter of the pixels is cheaper, so the same time buys twice the epochs,
    # which the accuracy needed (shorter runs at 32 px ended underfitted). A crop that keeps >= 80% of the area
    # (small shifts and zooms; a 0.5-area crop cuts strokes off) and the whole image at eval, so train and eval
    # see the digit at nearly the same scale.
    "digits": dataclasses.replace(
        BASE,
        variant="b0",
        resolution=16,
        weight_source="torchvision",
        drop_path=0.0,
        dropout=0.0,
        data="digits",
        global_batch=64,
        eval_batch=120,
        steps=2400,  # 107 epochs: at 1,600 one seed of five ended below the SVC (benchmarks/results/digits.md)
        optimizer="adamw",
        lr=5e-3,
        warmup_epochs=2.0,
        weight_decay=0.05,
        ema_decay=0.99,
        augment="none",
        crop_min_area=0.8,
        flip=False,
        eval_crop=1.0,
        ckpt_every=400,
        eval_every=200,
        log_every=20,
        workdir="runs/digits",
    ),
    # Fine-tuning pretrained weights (`--set init=SOURCE`; variant, conventions and input normalisation are the
    # weights'): AdamW at a tenth of the digits preset's peak lr with a short warm-up and cosine decay, label
    # smoothing, EMA for a short run, light augmentation (a milder random crop and flips; the digits source turns
    # flips off), the variant's dropout and drop-path. Runs on the embedded digits unless `--data` says otherwise.
    "finetune": dataclasses.replace(
        BASE,
        variant="",
        weight_source="",
        data="digits",
        global_batch=64,
        eval_batch=120,
        epochs=10.0,
        optimizer="adamw",
        lr=5e-4,
        warmup_epochs=0.5,
        weight_decay=0.01,
        label_smoothing=0.1,
        ema_decay=0.99,
        eval_crop=0.0,
        augment="none",
        crop_min_area=0.35,
        flip=True,
        ckpt_every=100,
        eval_every=100,
        log_every=20,
        workdir="runs/finetune",
    ),
    # Two steps of a 2-stage b0 on random tensors: checks an install end to end in seconds.
    "smoke": dataclasses.replace(
        BASE,
        variant="b0",
        resolution=32,
        stages=2,
        data="synthetic",
        num_classes=4,
        global_batch=8,
        eval_batch=8,
        steps=2,
        augment="none",
        ckpt_every=0,
        log_every=1,
        workdir="runs/smoke",
    ),
    **_IMAGENET,
}
DEFAULT_PRESET = "digits"


def from_preset(name: str = DEFAULT_PRESET, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """The preset `name` with `key=value` overrides applied.

    Raises:
      ValueError: unknown preset, unknown key, or a value that does not parse as the field's type.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of: {', '.join(PRESETS)}")
    return apply_overrides(PRESETS[name], overrides)


def apply_overrides(cfg: TrainConfig, overrides: list[str] | tuple[str, ...]) -> TrainConfig:
    """`cfg` with each "key=value" applied, the value parsed by the field's declared type."""
    hints = typing.get_type_hints(TrainConfig)
    changes: dict[str, object] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep:
            raise ValueError(f"override {item!r} is not key=value")
        if key in _RENAMED:
            raise ValueError(f"config key {key!r} is now {_RENAMED[key]!r}")
        if key not in hints:
            raise ValueError(f"unknown config key {key!r}; valid keys: {', '.join(sorted(hints))}")
        changes[key] = _parse(key, raw.strip(), hints[key])
    return dataclasses.replace(cfg, **changes)


def _parse(key: str, raw: str, typ: object) -> object:
    if isinstance(typ, types.UnionType) or typing.get_origin(typ) is typing.Union:  # e.g. `float | None`
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        return None if raw.lower() == "none" else _parse(key, raw, args[0])
    if typ is bool:
        if raw.lower() in TRUE + FALSE:
            return raw.lower() in TRUE
        raise ValueError(f"config key {key!r} expects a bool ({'/'.join(TRUE + FALSE)}), got {raw!r}")
    if typ in (int, float):
        try:
            value = float(raw) if typ is float else int(raw)
        except ValueError:
            if typ is int and raw.lstrip("+-").isdigit():  # over Python's 4300-digit limit for int()
                raise ValueError(f"config key {key!r} must lie in {_range(key)}; got {_brief(raw)}") from None
            raise ValueError(f"config key {key!r} expects {typ.__name__}, got {_brief(raw)}") from None
        return value
    return raw


def to_json(cfg: TrainConfig) -> str:
    return json.dumps(dataclasses.asdict(cfg), indent=2, sort_keys=True)


# Keys renamed since a run could have saved them in its config.json / checkpoint meta: old -> new.
_RENAMED = {"weights_convention": "weight_source"}


def from_dict(saved: dict) -> TrainConfig:
    """A config saved by a run (its `config.json`, a checkpoint's meta), from this or an earlier release."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {_RENAMED.get(k, k): v for k, v in saved.items()}
    unknown = sorted(values.keys() - fields)
    if unknown:
        raise ValueError(f"saved config has unknown keys {unknown}; it was written by another effnet version")
    return TrainConfig(**values)
