"""The model a training config describes, what the EMA tracks, and the loss: shared by the loop and evaluation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from effnet_spec import STAGES, VARIANTS, resolve

from ..model import EfficientNet, ModelOptions
from .config import TrainConfig

__all__ = ["WEIGHTS", "build_model", "cross_entropy", "model_options", "resolution_of"]

WEIGHTS = (nnx.Param, nnx.BatchStat)  # what the EMA tracks: parameters and BN running statistics


def model_options(cfg: TrainConfig) -> ModelOptions:
    return ModelOptions(dtype=cfg.dtype, depthwise_impl=cfg.depthwise_impl)


def build_model(cfg: TrainConfig, num_classes: int, *, seed: int | None = None) -> EfficientNet:
    """The EfficientNet `cfg` describes (variant, optional truncated stage table, rates, build options)."""
    seed = cfg.seed if seed is None else seed
    spec = resolve(
        cfg.variant,
        num_classes=num_classes,
        weight_source=cfg.weight_source,
        stages=STAGES[: cfg.stages] if cfg.stages else STAGES,
        drop_path=None if cfg.drop_path < 0 else cfg.drop_path,
        dropout=None if cfg.dropout < 0 else cfg.dropout,
    )
    rngs = nnx.Rngs(params=seed, dropout=seed + 1)
    return EfficientNet(spec, rngs=rngs, options=model_options(cfg))


def resolution_of(cfg: TrainConfig) -> int:
    return cfg.resolution or VARIANTS[cfg.variant].resolution


def cross_entropy(logits: jax.Array, labels: jax.Array, smoothing: float) -> jax.Array:
    """Mean softmax cross-entropy against one-hot labels smoothed as (1 - s) * onehot + s / K."""
    num_classes = logits.shape[-1]
    targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), smoothing)
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets).mean()
