"""The model a training config describes, what the EMA tracks, and the loss: shared by the loop and evaluation."""

from __future__ import annotations

from dataclasses import replace

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from effnet_spec import VARIANTS, ModelSpec, Preprocessing, Variant, parse_coefficients, resolve, stages_for
from effnet_spec.adapt import adapt_spec

from ..model import EfficientNet, ModelOptions
from .config import TrainConfig

__all__ = [
    "WEIGHTS",
    "build_model",
    "config_spec",
    "config_variant",
    "cross_entropy",
    "model_options",
    "resolution_of",
    "run_preprocessing",
]

WEIGHTS = (nnx.Param, nnx.BatchStat)  # what the EMA tracks: parameters and BN running statistics


def model_options(cfg: TrainConfig) -> ModelOptions:
    return ModelOptions(dtype=cfg.dtype, depthwise_impl=cfg.depthwise_impl, remat=cfg.remat, scan=cfg.scan)


def build_model(
    cfg: TrainConfig, num_classes: int, *, seed: int | None = None, spec: ModelSpec | None = None
) -> EfficientNet:
    """The EfficientNet `cfg` describes (variant, optional truncated stage table, rates, build options), freshly
    initialised; `spec` (a run's, see `run_spec`) replaces the one the config alone would give."""
    seed = cfg.seed if seed is None else seed
    if spec is None:
        spec = adapt_spec(config_spec(cfg), num_classes=num_classes)
    rngs = nnx.Rngs(params=seed, dropout=seed + 1)
    return EfficientNet(spec, rngs=rngs, options=model_options(cfg))


def config_spec(cfg: TrainConfig) -> ModelSpec:
    """The headless spec a config describes without init weights: variant, conventions, stages, rates.

    The stage table is the variant's own (`stages_for`: V1's for b0..l2 and Lite, each V2 family's for v2_*), cut to
    its first `cfg.stages` rows when set; V1's table under a V2 variant would build a network of neither family.
    """
    variant = config_variant(cfg)
    table = stages_for(variant)
    return resolve(
        variant,
        num_classes=0,
        weight_source=cfg.weight_source,
        stages=table[: cfg.stages] if cfg.stages else table,
        drop_path=None if cfg.drop_path < 0 else cfg.drop_path,
        dropout=None if cfg.dropout < 0 else cfg.dropout,
    )


def run_preprocessing(cfg: TrainConfig, base: Preprocessing, class_names: tuple[str, ...] | None) -> Preprocessing:
    """How the run prepares images: `base`'s normalisation and interpolation (the init weights', or the family's),
    the config's resolution and eval crop (0: `base`'s), and the training data's class names."""
    return replace(
        base,
        resolution=cfg.eval_resolution
        or (base.resolution if cfg.phi or cfg.coefficients else cfg.resolution or base.resolution),
        crop_pct=cfg.eval_crop or base.crop_pct,
        class_names=class_names,
    )


def config_variant(cfg: TrainConfig) -> str | Variant:
    """The config's variant: its name, or with `phi`/`coefficients` the variant scaled by compound scaling.

    Raises:
        ValueError: a coefficients file that cannot be read, or that was found on another base or resolution.
    """
    if not cfg.phi and not cfg.coefficients:
        return cfg.variant
    coeffs = parse_coefficients(cfg.coefficients or "1.2,1.1,1.15", base=cfg.variant, resolution=cfg.resolution)
    if coeffs.base != cfg.variant:
        raise ValueError(f"coefficients {cfg.coefficients} were found on {coeffs.base}, but the config's variant is "
                         f"{cfg.variant}; set variant={coeffs.base}")  # fmt: skip
    if cfg.resolution and cfg.resolution != coeffs.base_resolution:
        raise ValueError(f"coefficients {cfg.coefficients} were found at {coeffs.base_resolution} px, but the "
                         f"config's resolution is {cfg.resolution}; set resolution=0 or {coeffs.base_resolution} "
                         "(with phi it is the side at phi=0)")  # fmt: skip
    return coeffs.variant(cfg.phi)


def sides(cfg: TrainConfig, pre: Preprocessing) -> tuple[int, int]:
    """(train side, eval side) of a run that starts from `pre` (`start.model_start`: the config's resolution, or the
    variant's or init weights' side; on a resume, the checkpoint's eval side). A V2 variant built from scratch with
    resolution 0 trains at its smaller train side and evaluates at its own (`Variant.train_resolution`); otherwise
    both are `resolution`, and `eval_resolution` sets the eval side."""
    if cfg.resolution:
        train = cfg.resolution
    elif cfg.init:  # the weights' side (config.check refuses eval_resolution here, so `pre` is it on a resume too)
        train = pre.resolution
    else:
        v = config_variant(cfg)
        v = v if isinstance(v, Variant) else VARIANTS[v]
        train = v.train_resolution or v.resolution
    return train, cfg.eval_resolution or pre.resolution


def resolution_of(cfg: TrainConfig) -> int:
    v = config_variant(cfg)
    return v.resolution if isinstance(v, Variant) else cfg.resolution or VARIANTS[v].resolution


def cross_entropy(logits: jax.Array, labels: jax.Array, smoothing: float, *, label_mix: jax.Array | None = None,
                  mix: jax.Array | None = None) -> jax.Array:  # fmt: skip
    """Mean softmax cross-entropy against one-hot labels smoothed as (1 - s) * onehot + s / K; with mixup/CutMix
    (`mixing`) the example's weighted sum over its two labels, `mix` the weight of `labels`: the cross-entropy
    against the mixed targets, which it is linear in."""
    logits = logits.astype(jnp.float32)

    def ce(y):
        return optax.softmax_cross_entropy(logits, optax.smooth_labels(jax.nn.one_hot(y, logits.shape[-1]), smoothing))

    loss = ce(labels)
    if mix is not None:
        loss = mix * loss + (1.0 - mix) * ce(label_mix)
    return loss.mean()
