"""The train step `effnet train` runs, written once: the loop, `effnet bench`, the benchmarks and the tests take it
from here.

The step is one pure function of (state, batch, step, root_key) -> (state, metrics), jitted with the state
replicated (`P()`) and donated, the batch sharded over the `data` axis (`P('data')`, so BN statistics are those of
the global batch), and `remat_compiler_options` (remat is a no-op on XLA CPU without them). The state is

    {"weights": Param + BatchStat, "rest": RNG streams, "opt": optimizer state, "ema": the EMA of "weights"}

split once from an NNX model and its optimizer (`split`); the step merges them, reseeds drop-path and dropout with
`fold_in(root_key, step)`, differentiates only the trainable parameters (`loss_and_grads`), updates the optimizer
and the EMA, and reports whether the updated state is finite. `standalone_step` builds the same step outside a run
(no data, no workdir) for whoever times or checks it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ..model.options import remat_compiler_options
from .config import TrainConfig
from .freeze import apply_freeze, frozen_mask, trainable
from .modeling import WEIGHTS, build_model, cross_entropy
from .optim import ema_update, make_optimizer, make_schedule

__all__ = ["TrainStep", "fresh_state", "loss_and_grads", "make_train_step", "split", "standalone_step",
           "with_dropout", "with_optimizer"]  # fmt: skip


def with_optimizer(cfg: TrainConfig, model, tx: optax.GradientTransformation) -> tuple:
    """(model, optimizer): `model`'s frozen parts (`cfg.freeze`) put in inference mode, and an optimizer that holds
    only its trainable parameters."""
    apply_freeze(model, cfg.freeze)
    return model, nnx.Optimizer(model, tx, wrt=trainable(model.spec, cfg.freeze))


def split(model, optimizer) -> tuple[tuple, dict]:
    """((graphdef, opt_graphdef), state): the static halves, and the state the step carries, less its "ema"."""
    graphdef, weights, rest = nnx.split(model, WEIGHTS, ...)
    opt_graphdef, opt_state = nnx.split(optimizer)
    return (graphdef, opt_graphdef), {"weights": weights, "rest": rest, "opt": opt_state}


def with_dropout(graphdef, state: dict, rate: float):
    """`graphdef` with its classifier dropout at `rate` (a static attribute: progressive learning's stages each
    compile their own step); the same graphdef when the rate is already `rate`."""
    model = nnx.merge(graphdef, state["weights"], state["rest"])
    if model.dropout.rate == rate:
        return graphdef
    model.dropout.rate = rate
    return nnx.split(model, WEIGHTS, ...)[0]


def fresh_state(build: Callable[[], tuple], sharding) -> dict:
    """The state of a fresh `build()` (model, optimizer), computed by one jitted call straight onto `sharding`; the
    EMA starts at the weights (in buffers of its own: both are donated)."""

    def init():
        _, state = split(*build())
        return {**state, "ema": state["weights"]}

    return jax.jit(init, out_shardings=sharding)()


def loss_and_grads(model, batch: dict, *, label_smoothing: float = 0.0, wrt=nnx.Param, **call):
    """(loss, logits, grads) of `model` on `batch` ({"image", "label"}, and a mixing stage's "label_mix" and "mix"),
    as the step differentiates it: the smoothed cross-entropy, `nnx.value_and_grad` over the merged model, and only
    the parameters `wrt` selects (frozen ones cost no backward work). The model's BN statistics and RNG counters are
    updated in place; `call` goes to the model (`drop_path_masks=`, `dropout_mask=`)."""

    def loss_fn(model):
        logits = model(batch["image"], **call)
        loss = cross_entropy(logits, batch["label"], label_smoothing, label_mix=batch.get("label_mix"),
                             mix=batch.get("mix"))  # fmt: skip
        return loss, logits

    (loss, logits), grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, wrt), has_aux=True)(model)
    return loss, logits, grads


def make_train_step(cfg: TrainConfig, mesh: Mesh, graphdefs: tuple, schedule, spec, state: dict, *,
                    compiler_options: dict | None = None):  # fmt: skip
    """The jitted step of `cfg` for the state `split` gave (`graphdefs`, and `state` for the frozen leaves' layout);
    shardings are fixed, so nothing recompiles. `compiler_options` replace `remat_compiler_options(cfg.remat)`."""
    replicated, batch_sharding = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    graphdef, opt_graphdef = graphdefs
    wrt = trainable(spec, cfg.freeze)
    frozen = frozen_mask(spec, cfg.freeze, state["weights"]) if cfg.freeze != "none" else None

    def train_step(state, batch, step, root_key):
        model = nnx.merge(graphdef, state["weights"], state["rest"])
        optimizer = nnx.merge(opt_graphdef, state["opt"])
        nnx.reseed(model, dropout=jax.random.fold_in(root_key, step))  # drop-path/dropout keys of this step
        loss, logits, grads = loss_and_grads(model, batch, label_smoothing=cfg.label_smoothing, wrt=wrt)
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

    return jax.jit(
        train_step,
        in_shardings=(replicated, batch_sharding, None, replicated),
        out_shardings=(replicated, replicated),
        donate_argnums=0,
        compiler_options=remat_compiler_options(cfg.remat) if compiler_options is None else compiler_options,
    )


def _all_finite(tree) -> jax.Array:
    """Whether every float in `tree` is finite: a finite loss and gradient can still step the weights, the BN
    statistics or an optimizer moment to inf (a huge lr, a huge gradient squared); nothing non-finite is saved."""
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
    return jnp.all(jnp.stack([jnp.isfinite(x).all() for x in leaves]))


@dataclass
class TrainStep:
    """`effnet train`'s step with its own fresh state, outside a run: `step(batch)` runs one step and returns its
    metrics (the state advances; the step number stays 0, the same work as any other step)."""

    fn: Callable  # the jitted step, or its compiled executable once `compile` ran
    state: dict
    root_key: jax.Array
    graphdefs: tuple  # (graphdef, opt_graphdef): `nnx.merge(graphdefs[0], state["weights"], state["rest"])`

    def lower(self, batch: dict):
        return self.fn.lower(self.state, batch, jnp.int32(0), self.root_key)

    def compile(self, batch: dict) -> float:
        """Lower and compile for `batch`'s shapes; later calls run that executable. Returns the seconds it took."""
        t0 = time.perf_counter()
        self.fn = self.lower(batch).compile()
        return time.perf_counter() - t0

    def __call__(self, batch: dict) -> dict:
        self.state, metrics = self.fn(self.state, batch, jnp.int32(0), self.root_key)
        return metrics


def standalone_step(cfg: TrainConfig, num_classes: int, *, mesh: Mesh | None = None,
                    compiler_options: dict | None = None) -> TrainStep:  # fmt: skip
    """The step `effnet train` would run for `cfg` from scratch (model, optimizer, EMA, remat and the step itself
    built as the loop builds them), with no data or workdir: for `effnet bench`, the benchmarks and tests.
    The schedule spans `cfg.steps` (at least 1) steps of one epoch each; `mesh` defaults to the first device."""
    mesh = mesh or Mesh(np.array(jax.devices()[:1]), ("data",))
    steps = max(cfg.steps, 1)
    tx = make_optimizer(cfg, 1.0, steps)

    def build():
        return with_optimizer(cfg, build_model(cfg, num_classes), tx)

    model, optimizer = nnx.eval_shape(build)  # shapes only: the graphdefs and the spec
    graphdefs, _ = split(model, optimizer)
    state = fresh_state(build, NamedSharding(mesh, P()))
    fn = make_train_step(cfg, mesh, graphdefs, make_schedule(cfg, 1.0, steps), model.spec, state,
                         compiler_options=compiler_options)  # fmt: skip
    return TrainStep(fn, state, jax.random.key(cfg.seed), graphdefs)
