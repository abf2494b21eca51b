"""Optimizers, learning-rate schedules and the weight EMA of the EfficientNet recipe, from optax parts.

The paper's optimizer is TF1's `tf.train.RMSPropOptimizer` (as the TF reference uses it):

    ms  <- decay * ms + (1 - decay) * g**2          (ms starts at 1.0 in TF1, not 0)
    mom <- momentum * mom + lr * g / sqrt(ms + eps)  (eps INSIDE the sqrt; lr inside the momentum)
    w   <- w - mom

with L2 weight decay folded into the gradient (g += wd * w) for every weight except BN scale/bias and
biases. The schedule is a linear warm-up from 0 over 5 epochs, then lr * 0.97 ** floor(step / 2.4 epochs)
(the staircase counts from step 0, as in the reference). SGD-momentum and AdamW use a cosine schedule.
The EMA is TF's `ExponentialMovingAverage(decay, num_updates=step)`: decay_t = min(decay, (1+t)/(10+t)).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from .config import TrainConfig

__all__ = ["ema_decay_at", "ema_update", "make_optimizer", "make_schedule", "peak_lr", "weight_decay_mask"]

# TF1's RMSPropOptimizer initialises the mean-square slot to ones (keras/TF2 and optax default to zeros).
TF_RMS_INITIAL = 1.0


def peak_lr(cfg: TrainConfig) -> float:
    """The peak learning rate: `cfg.lr`, or lr_per_256 scaled linearly by the global batch."""
    return cfg.lr if cfg.lr > 0 else cfg.lr_per_256 * cfg.global_batch / 256


def make_schedule(cfg: TrainConfig, steps_per_epoch: float, total_steps: int) -> optax.Schedule:
    """step -> learning rate for `cfg.optimizer` (warm-up, then staircase decay or cosine)."""
    peak = peak_lr(cfg)
    warmup = max(0, int(round(cfg.warmup_epochs * steps_per_epoch)))
    if cfg.optimizer == "rmsprop":
        decay_steps = max(1.0, cfg.lr_decay_epochs * steps_per_epoch)

        def schedule(step):
            step = jnp.asarray(step, jnp.float32)
            decayed = peak * cfg.lr_decay_rate ** jnp.floor(step / decay_steps)
            return jnp.where(step < warmup, peak * step / max(warmup, 1), decayed)

        return schedule
    warmup = min(warmup, max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(total_steps, warmup + 1), end_value=0.0)


def weight_decay_mask(params, *, biases: bool = False):
    """True for the leaves weight decay applies to: conv and linear kernels, and with `biases` every other parameter
    but BatchNorm's too (the TF reference's rule: every trainable variable without `batch_normalization` in its name,
    so the classifier's and squeeze-excite's biases are decayed). BatchNorm is recognised by its attribute name `bn`
    (`model.layers.ConvBN`): a BatchNorm under another name would be decayed."""

    def keep(path, _):
        names = [str(getattr(p, "key", getattr(p, "name", p))) for p in path]
        names = [n for n in names if n != "value"]  # nnx.Variable leaves add a trailing `.value`
        if not names:
            return False
        return names[-1] == "kernel" or (biases and "bn" not in names[:-1])

    return jax.tree_util.tree_map_with_path(keep, params)


def make_optimizer(cfg: TrainConfig, steps_per_epoch: float, total_steps: int) -> optax.GradientTransformation:
    """The optax chain for `cfg` (weight decay masked by `weight_decay_mask`, optional gradient clipping)."""
    lr = make_schedule(cfg, steps_per_epoch, total_steps)
    head = [optax.clip_by_global_norm(cfg.grad_clip)] if cfg.grad_clip > 0 else []
    if cfg.optimizer == "adamw":
        return optax.chain(
            *head, optax.adamw(lr, b1=cfg.momentum, weight_decay=cfg.weight_decay, mask=weight_decay_mask)
        )
    # g += wd * w: the L2 loss gradient; the paper's RMSProp recipe decays biases too, as the TF reference does.
    mask = functools.partial(weight_decay_mask, biases=cfg.optimizer == "rmsprop")
    l2 = optax.add_decayed_weights(cfg.weight_decay, mask=mask)
    if cfg.optimizer == "sgd":
        return optax.chain(*head, l2, optax.sgd(lr, momentum=cfg.momentum))
    # optax.rmsprop = scale_by_rms -> scale_by_learning_rate -> trace(momentum): lr applied before the
    # momentum accumulator, exactly TF's form.
    rms = optax.rmsprop(
        lr,
        decay=cfg.rmsprop_decay,
        eps=cfg.rmsprop_eps,
        initial_scale=TF_RMS_INITIAL,
        eps_in_sqrt=True,
        momentum=cfg.momentum,
    )
    return optax.chain(*head, l2, rms)


def ema_decay_at(decay: float, num_updates):
    """TF's EMA warm-up: min(decay, (1 + n) / (10 + n)), n = optimizer updates done so far."""
    n = jnp.asarray(num_updates, jnp.float32)
    return jnp.minimum(decay, (1.0 + n) / (10.0 + n))


def ema_update(ema, new, decay: float, num_updates, keep=None):
    """ema <- d * ema + (1 - d) * new for float leaves; integer leaves (BN's batch counter) are copied.

    `keep` (a pytree like `ema` of Python bools, or None) marks leaves left exactly as they are: frozen tensors,
    whose average would otherwise drift from their value by rounding.
    """
    d = ema_decay_at(decay, num_updates)

    def one(e, x, k=False):
        if k:
            return e
        if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
            return x
        return (d * e + (1.0 - d) * x).astype(e.dtype)

    if keep is None:
        return jax.tree.map(one, ema, new)
    return jax.tree.map(one, ema, new, keep)
