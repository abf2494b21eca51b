"""Training checkpoints with Orbax: model, optimizer, EMA, step, RNG and the data iterator, in one step dir.

Layout of `<workdir>/checkpoints/<step>/`: `model` (params, BN stats and RNG streams of the live model),
`opt` (optax state and step count), `ema` (EMA params and BN stats), `meta` (JSON: step, root RNG key
data, the config), `data` (the Grain iterator state, one file per process). Orbax writes each step into a
temporary directory and renames it when complete, so a crash (even `kill -9`) mid-save leaves the
previous checkpoint as the latest. Restoring needs the abstract state (`nnx.eval_shape`), whose
shardings the restored arrays take.

These are training checkpoints; the interchange format for finished weights is `effnet_jax.weights`.
"""

from __future__ import annotations

import os

import grain
import jax
import orbax.checkpoint as ocp

__all__ = ["ITEMS", "Checkpointer", "abstract_like"]

ITEMS = ("model", "opt", "ema", "meta", "data")


def abstract_like(tree, sharding=None):
    """ShapeDtypeStructs of `tree` (arrays or structs), placed on `sharding` when given."""

    def one(x):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding if sharding is not None else x.sharding)

    return jax.tree.map(one, tree)


def _flat_shapes(tree) -> dict[str, tuple]:
    def key(path) -> str:
        return ".".join(str(getattr(p, "key", getattr(p, "name", getattr(p, "idx", p)))) for p in path)

    def shape(x) -> tuple:
        if jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key):  # stored as its key data
            return tuple(jax.eval_shape(jax.random.key_data, x).shape)
        return tuple(x.shape)

    return {key(p): shape(x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _compare(name: str, abstract, saved) -> list[str]:
    """Sorted '- missing', '+ unexpected' and 'shape' lines between an abstract tree and saved metadata."""
    if saved is None:
        return [f"- {name} (item not in the checkpoint)"]
    want, got = _flat_shapes(abstract), _flat_shapes(saved)
    lines = [f"- {name}.{k} (expected, not saved)" for k in sorted(want.keys() - got.keys())]
    lines += [f"+ {name}.{k} (saved, not expected)" for k in sorted(got.keys() - want.keys())]
    lines += [
        f"shape {name}.{k}: expected {want[k]}, saved {got[k]}"
        for k in sorted(want.keys() & got.keys())
        if want[k] != got[k]
    ]
    return lines


class Checkpointer:
    """A thin `CheckpointManager` over the five items, saving every `every` steps and keeping `keep`.

    Args:
      directory: where the step directories go (created).
      keep: how many checkpoints to keep; older ones are deleted after a newer one is complete.
      every: save interval in steps for `save(..., force=False)`; 0 = only forced saves.
    """

    def __init__(self, directory: str, *, keep: int = 3, every: int = 0):
        self.directory = os.path.abspath(directory)
        self.every = every
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=True)
        handlers = {name: ocp.StandardCheckpointHandler() for name in ("model", "opt", "ema")}
        handlers["meta"] = ocp.JsonCheckpointHandler()
        handlers["data"] = grain.checkpoint.CheckpointHandler()
        # Handlers named up front, so a fresh manager can read item metadata (shapes) before restoring.
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def should_save(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def save(self, step: int, *, model, opt, ema, meta: dict, data_iter=None, force: bool = False) -> bool:
        """Start an async save of `step` if due (or `force`); returns whether one was started."""
        if not (force or self.should_save(step)) or step in self.manager.all_steps():
            return False
        items = dict(
            model=ocp.args.StandardSave(model),
            opt=ocp.args.StandardSave(opt),
            ema=ocp.args.StandardSave(ema),
            meta=ocp.args.JsonSave(meta),
        )
        if data_iter is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iter)
        return bool(self.manager.save(step, args=ocp.args.Composite(**items), force=True))

    def restore(self, step: int | None = None, *, data_iter=None, **abstract) -> dict:
        """Restore `step` (default: latest) for the items given as abstract trees, plus `meta` always.

        `data_iter` (a Grain iterator) gets its state set in place. Returns {item: restored tree}.

        Raises:
          FileNotFoundError: no checkpoint in the directory.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        unknown = set(abstract) - set(ITEMS)
        if unknown:
            raise ValueError(f"unknown checkpoint items {sorted(unknown)}; expected some of {ITEMS}")
        saved = self.manager.item_metadata(step)
        problems = [line for name, tree in abstract.items() for line in _compare(name, tree, saved.get(name))]
        if problems:
            raise ValueError(
                f"checkpoint {self.directory}/{step} does not match the model being restored:\n  "
                + "\n  ".join(problems)
            )
        items = {name: ocp.args.StandardRestore(tree) for name, tree in abstract.items()}
        items["meta"] = ocp.args.JsonRestore()
        if data_iter is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        return {name: restored[name] for name in items}

    def wait_until_finished(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
