"""A training run read back as a model: the spec, preprocessing and (EMA) weights of one of its checkpoints.

`effnet eval`, `effnet convert RUN OUT`, `effnet predict --weights RUN` and `EfficientNet.from_pretrained(RUN)` all
start here. A run's checkpoint `meta` holds the effnet header of its model (spec and preprocessing, with the class
names of its training data), so a run describes itself even when it started from weights that are gone since;
runs written before the header was stored are rebuilt from their config.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from effnet_spec import ModelSpec, Preprocessing, default_preprocessing, read_header
from effnet_spec.adapt import Pretrained

from ..model import EfficientNet
from ..weights.state import state_dict_from_model
from .checkpoint import Checkpointer, abstract_like
from .config import TrainConfig, from_dict
from .metrics import note
from .modeling import WEIGHTS, build_model, model_options, run_preprocessing

__all__ = ["Restored", "is_run_dir", "open_run", "read_run", "restore_model"]


def is_run_dir(path: str | os.PathLike) -> bool:
    """A training workdir (holding `checkpoints/`) or its `checkpoints/` folder itself: one with a step folder
    holding a `meta` item (an image folder with classes named 0..9 is not one)."""
    path = os.fspath(path)
    if os.path.isdir(os.path.join(path, "checkpoints")):
        return True
    return os.path.isdir(path) and any(n.isdigit() and os.path.isdir(os.path.join(path, n, "meta"))
                                       for n in os.listdir(path))  # fmt: skip


def open_run(run_dir: str | os.PathLike) -> Checkpointer:
    """The checkpoints of a training run; nothing is created when there are none.

    Raises:
        FileNotFoundError: not a directory, or no complete checkpoint in it.
    """
    run_dir = os.fspath(run_dir)
    if not os.path.isdir(run_dir):  # checked first: the Orbax manager would create it
        raise FileNotFoundError(f"no training run at {run_dir!r}: not a directory")
    sub = os.path.join(run_dir, "checkpoints")
    missing = FileNotFoundError(
        f"no training checkpoint in {run_dir!r} (expected {os.path.join(run_dir, 'checkpoints', '<step>')}; "
        "a run killed before its first save has none)"
    )
    if not is_run_dir(run_dir):
        raise missing
    ckpt = Checkpointer(sub if os.path.isdir(sub) else run_dir, read_only=True)
    if ckpt.latest_step() is None:
        ckpt.close()
        raise missing
    return ckpt


@dataclass
class Restored:
    model: EfficientNet  # in eval mode, with `preprocessing` set
    config: TrainConfig
    step: int
    weights: str  # "ema" or "raw"


def saved_model(meta: dict, cfg: TrainConfig) -> tuple[ModelSpec, Preprocessing]:
    """The spec and preprocessing a checkpoint's `meta` describes (its header, or its config for older runs)."""
    if meta.get("header"):
        return read_header(meta["header"])
    num_classes = int(meta["num_classes"])
    spec = nnx.eval_shape(lambda: build_model(cfg, num_classes)).spec
    names = tuple(meta.get("class_names") or ())
    base = default_preprocessing(spec)
    return spec, run_preprocessing(cfg, base, names if len(names) == num_classes else None)


def restore_model(run_dir: str | os.PathLike, *, ema: bool = True, step: int | None = None) -> Restored:
    """The model of a run's checkpoint (default the latest), EMA weights unless `ema=False` or the run kept none.

    Raises:
        FileNotFoundError: not a run, or no checkpoint (or not `step`) in it. ValueError: the checkpoint does not
            match the model its meta describes.
    """
    ckpt = open_run(run_dir)
    try:
        if step is not None and step not in ckpt.all_steps():
            raise FileNotFoundError(
                f"{os.fspath(run_dir)!r} has no checkpoint of step {step}; it has {ckpt.all_steps()}"
            )
        meta = ckpt.restore(step)["meta"]
        cfg = from_dict(meta["config"])
        spec, pre = saved_model(meta, cfg)
        mesh = Mesh(np.array(jax.devices()), ("data",))
        replicated = NamedSharding(mesh, P())
        abstract = nnx.eval_shape(
            lambda: EfficientNet(spec, rngs=nnx.Rngs(params=0, dropout=1), options=model_options(cfg))
        )
        graphdef, weights, rest = nnx.split(abstract, WEIGHTS, ...)
        item = "ema" if ema and cfg.ema_decay > 0 else "model"
        want = abstract_like(weights, replicated)
        if item == "ema":
            restored = ckpt.restore(step, ema=want)
            got = restored["ema"]
        else:
            restored = ckpt.restore(step, model={"weights": want, "rest": abstract_like(rest, replicated)})
            got = restored["model"]["weights"]
        meta = restored["meta"]  # a damaged latest step is skipped for the one before (the model is the run's)
        for s, why in sorted(ckpt.damaged.items()):
            note(f"checkpoint step {s} in {ckpt.directory} cannot be read ({why}): damaged; using step {meta['step']}")
    finally:
        ckpt.close()
    rest = jax.tree.map(
        lambda x: (
            jax.random.key(0) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else jnp.zeros(x.shape, x.dtype)
        ),
        rest,
    )  # RNG streams: unused in eval mode
    model = nnx.merge(graphdef, got, rest)
    model.eval()
    model.preprocessing = pre
    return Restored(model, cfg, int(meta["step"]), "ema" if item == "ema" else "raw")


def read_run(path: str | os.PathLike, *, ema: bool = True) -> Pretrained:
    """A run's latest checkpoint as a pretrained source (`EfficientNet.from_pretrained(RUN)`, `init=RUN`)."""
    r = restore_model(path, ema=ema)
    origin = f"training run {os.fspath(path)} step {r.step} ({r.weights} weights)"
    return Pretrained(r.model.spec, state_dict_from_model(r.model), r.model.preprocessing, origin)
