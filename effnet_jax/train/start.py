"""What a run's model starts from, before the data is read: its spec, how images are prepared, and init weights.

Three cases. A fresh run without `init` takes everything from the config (variant, conventions, the family's
normalisation). A fresh run with `init=SOURCE` takes the weights' variant, conventions and preprocessing (any
`EfficientNet.from_pretrained` source); a variant or weight source also set in the config must agree with them.
A resumed run takes its own description from its checkpoint (the header in `meta`), so it never rereads the init
weights, which may be gone by then (docs/design.md, "Pretrained weights").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from effnet_spec import ModelSpec, Preprocessing, conventions_for, read_header
from effnet_spec.adapt import adapt_spec

from ..weights.pretrained import Pretrained, read_pretrained, source_kind
from .config import TrainConfig
from .freeze import frozen_modules
from .metrics import note
from .modeling import config_spec, resolution_of

__all__ = ["DEFAULT_CROP", "Start", "model_start", "run_spec"]

DEFAULT_CROP = 0.875  # eval center-crop share when neither the config nor the init weights give one


@dataclass(frozen=True)
class Start:
    spec: ModelSpec  # the model before the data's class count is applied (the init's head, or none)
    preprocessing: Preprocessing  # resolution, eval crop, interpolation and normalisation of the run
    weights: Pretrained | None  # init weights; None for a random init or a resume (the checkpoint holds the state)


def model_start(cfg: TrainConfig, saved_meta: dict | None = None) -> Start:
    """The run's starting point; `saved_meta` is the meta of the checkpoint a resume continues from.

    Raises:
        FileNotFoundError, ValueError, ModuleNotFoundError: init weights that cannot be read (one line each), or
            that contradict the config's variant or weight source.
    """
    if saved_meta and saved_meta.get("header"):
        spec, pre = read_header(saved_meta["header"])
        return Start(spec, replace(pre, class_names=None), None)
    if not cfg.init:
        spec = config_spec(cfg)
        fam = spec.family
        pre = Preprocessing(resolution=resolution_of(cfg), crop_pct=cfg.eval_crop or DEFAULT_CROP,
                            interpolation=fam.interpolation, mean=fam.mean, std=fam.std)  # fmt: skip
        return Start(spec, pre, None)
    # A weight source names how another library's file is to be read (timm_tf: TF conventions, which the keys
    # cannot tell); effnet files, runs and hub ids say it themselves, and it is checked against them below.
    foreign = source_kind(cfg.init) == "library"
    p = read_pretrained(cfg.init, weight_source=(cfg.weight_source or None) if foreign else None)
    _check_init(cfg, p, foreign)
    note(f"init: {p.origin}")
    pre = replace(p.preprocessing, resolution=cfg.resolution or p.preprocessing.resolution,
                  crop_pct=cfg.eval_crop or p.preprocessing.crop_pct)  # fmt: skip
    return Start(p.spec, pre, p)


def _conventions(c) -> str:
    return f"padding {c.padding}, BN eps {c.bn_eps:g}, decay {c.bn_decay:g}"


def _check_init(cfg: TrainConfig, p: Pretrained, foreign: bool) -> None:
    """What would fail later, refused now (before the workdir is touched): a variant or weight source set in the
    config must be the init weights' own (never silently replaced), the weights must take RGB input as the data
    is, and `freeze=stages:K` must fit their stage count."""
    if p.spec.in_channels != 3:
        raise ValueError(
            f"init {cfg.init} takes {p.spec.in_channels}-channel input; training reads RGB images, so it needs "
            "3-channel weights"
        )
    frozen_modules(p.spec, cfg.freeze)  # raises for stages:K beyond the weights' stages
    if cfg.variant and cfg.variant != p.spec.name:
        raise ValueError(
            f"init {cfg.init} holds {p.spec.name} weights, but the config says variant={cfg.variant}; set "
            f"variant={p.spec.name} or leave it empty to take the weights' (as --preset finetune does)"
        )
    if cfg.weight_source and not foreign:  # another library's file was read with it; nothing to compare
        want = replace(conventions_for(cfg.weight_source, p.spec.name), activation=p.spec.conv.activation)
        if asdict(want) != asdict(p.spec.conv):
            raise ValueError(
                f"init {cfg.init} was trained with {_conventions(p.spec.conv)}, but weight_source="
                f"{cfg.weight_source} means {_conventions(want)}; leave weight_source empty to take the weights'"
            )


def run_spec(cfg: TrainConfig, start: Start, num_classes: int) -> ModelSpec:
    """The run's model: the start's, with the data's class count, RGB input and the config's rates."""
    return adapt_spec(
        start.spec,
        num_classes=num_classes,
        in_channels=3,
        drop_path=None if cfg.drop_path < 0 else cfg.drop_path,
        dropout=None if cfg.dropout < 0 else cfg.dropout,
    )
