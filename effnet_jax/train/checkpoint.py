"""Training checkpoints with Orbax: model, optimizer, EMA, step, RNG and the open metrics window, in one step dir.

Layout of `<workdir>/checkpoints/<step>/`: `model` (params, BN stats and RNG streams of the live model),
`opt` (optax state and step count), `ema` (EMA params and BN stats), `meta` (JSON: step, root RNG key
data, the config, the metrics of the open logging window). Orbax writes each step into a temporary directory
and renames it when complete, so a crash (even `kill -9`) mid-save leaves the previous checkpoint as the
latest. Saves are asynchronous (the step goes on while the host copy is written); a write that fails (full
disk, read-only or vanished folder) surfaces at the first `check()` after it ends as one `CheckpointWriteError`,
with the half-written step removed and the complete ones untouched. Restoring needs the abstract state
(`nnx.eval_shape`), whose shardings the restored arrays take. Runs before 0.3 also saved `data` (the Grain
iterator state); the stream is a function of the step, so it is no longer read.

These are training checkpoints; the interchange format for finished weights is `effnet_jax.weights`.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import shutil

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

__all__ = ["ITEMS", "CheckpointWriteError", "Checkpointer", "abstract_like", "quiet_failed_writes"]

ITEMS = ("model", "opt", "ema", "meta")


class CheckpointWriteError(OSError):
    """A checkpoint could not be written; the run must stop, and the checkpoints already complete are intact."""


# What an OSError deep inside Orbax/TensorStore says, found in its message when the error is not an OSError.
_REASONS = tuple(os.strerror(code) for code in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.ENOENT,
                                                  errno.EIO))  # fmt: skip


def _reason(e: BaseException) -> str:
    """The operating system's words for why a write failed, else the error's first line."""
    x: BaseException | None = e
    while x is not None:
        if isinstance(x, OSError) and x.strerror:
            return x.strerror
        text = str(x)
        for reason in _REASONS:
            if reason in text:
                return reason
        x = x.__cause__ or x.__context__
    first = (str(e).splitlines() or [""])[0]
    return f"{type(e).__name__}: {first[:200]}"


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


def _check_free_space(directory: str, state) -> None:
    """Refuse a save the disk cannot hold before it starts: a write that runs out of space mid-way is reported too,
    but only after Orbax's threads have each printed their own failure. Every host refuses if one would (hosts
    may write to different disks; one host alone refusing would leave the others waiting in Orbax's barrier)."""
    need = sum(int(getattr(x, "nbytes", 0)) for x in jax.tree.leaves(state))
    free = shutil.disk_usage(directory).free
    short = free < need
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        short = bool(multihost_utils.process_allgather(np.int32(short)).max())
    if short:
        where = f"{free / 2**20:.1f} MiB free" if free < need else "too little free space on another host"
        raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} ({where}, the checkpoint needs about "
                                    f"{need / 2**20:.1f} MiB)")  # fmt: skip


def quiet_failed_writes() -> None:
    """Keep Orbax's own reports of a failed write (thread tracebacks through `absl` and `asyncio` logging, one per
    array) off stderr: `Checkpointer` raises the failure once as `CheckpointWriteError`. For the `effnet` command."""
    import logging
    import warnings

    def from_orbax(record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR and "orbax" in f"{record.pathname} {record.getMessage()}")

    for name in ("absl", "asyncio"):
        logging.getLogger(name).addFilter(from_orbax)
    warnings.filterwarnings("ignore", message="coroutine .* was never awaited", category=RuntimeWarning)


class Checkpointer:
    """A thin `CheckpointManager` over the items, saving every `every` steps and keeping `keep`.

    Args:
      directory: where the step directories go (created unless `read_only`).
      keep: how many checkpoints to keep; older ones are deleted after a newer one is complete.
      every: save interval in steps for `save(..., force=False)`; 0 = only forced saves.
      read_only: a reader (eval, convert, predict) beside a run that may be writing: it creates nothing and leaves
        half-written step directories alone (only the run holding the workdir removes a dead run's).
    """

    def __init__(self, directory: str, *, keep: int = 3, every: int = 0, read_only: bool = False):
        self.directory = os.path.abspath(directory)
        self.every = every
        self._saving: int | None = None  # the step whose asynchronous write may still be running
        self._reported = False  # a failed write was raised as CheckpointWriteError
        if not read_only:
            self._remove_half_written()
        # Step directories are created synchronously: created asynchronously, a read-only folder left the run
        # waiting minutes for a directory that never came (Orbax's signal timeout).
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            create=not read_only,
            enable_async_checkpointing=True,
            async_options=ocp.AsyncOptions(create_directories_asynchronously=False),
        )
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

    def save(self, step: int, *, model, opt, ema, meta: dict, force: bool = False) -> bool:
        """Start an async save of `step` if due (or `force`); returns whether one was started.

        Raises:
          CheckpointWriteError: this save, or the one before it, could not be written.
        """
        if not (force or self.should_save(step)) or step in self.manager.all_steps():
            return False
        items = dict(
            model=ocp.args.StandardSave(model),
            opt=ocp.args.StandardSave(opt),
            ema=ocp.args.StandardSave(ema),
            meta=ocp.args.JsonSave(meta),
        )
        self.wait_until_finished()  # Orbax waits for the previous save before starting one; its failure is its own
        with self._reporting(step):
            _check_free_space(self.directory, (model, opt, ema))
            started = bool(self.manager.save(step, args=ocp.args.Composite(**items), force=True))
        self._saving = step if started else self._saving
        return started

    def check(self) -> None:
        """Raise `CheckpointWriteError` if the asynchronous save has failed (cheap while it runs: the loop calls it
        every step). Orbax's own finishing thread takes a writer's error, so it is read back once the save is
        over, through `wait_until_finished`."""
        if self._saving is not None and not self.manager.is_saving_in_progress():
            self.wait_until_finished()

    @contextlib.contextmanager
    def _reporting(self, step: int):
        """Any failure of the write of `step` becomes one `CheckpointWriteError`."""
        try:
            yield
        except (CheckpointWriteError, KeyboardInterrupt):
            raise
        except Exception as e:
            self._saving, self._reported = None, True
            raise self._failed(step, e) from e

    def _remove_half_written(self, step: int | str = "*") -> None:
        """Remove `<step>.orbax-checkpoint-tmp*` (process 0), now rather than in Orbax's background cleanup: a killed
        run's leftovers hold disk space and must be gone before this run saves."""
        if jax.process_index() == 0:
            for tmp in glob.glob(os.path.join(glob.escape(self.directory), f"{step}.orbax-checkpoint-tmp*")):
                shutil.rmtree(tmp, ignore_errors=True)

    def _failed(self, step: int, e: BaseException) -> CheckpointWriteError:
        """Remove what the failed save left (it may free the space that ran out) and say what is kept."""
        self._remove_half_written(step)
        complete = sorted(int(d) for d in os.listdir(self.directory) if d.isdigit()) if os.path.isdir(
            self.directory) else []  # fmt: skip
        kept = f"the latest complete checkpoint, step {complete[-1]}, is intact" if complete else "no checkpoint before"
        return CheckpointWriteError(
            f"the checkpoint of step {step} could not be written to {self.directory}: {_reason(e)}. The run stopped; "
            f"{kept}. Free space or fix the folder, then continue with --resume"
        )

    def restore(self, step: int | None = None, **abstract) -> dict:
        """Restore `step` (default: latest) for the items given as abstract trees, plus `meta` always.

        Returns {item: restored tree}.

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
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        return {name: restored[name] for name in items}

    def wait_until_finished(self) -> None:
        """Block until the pending save is written. Raises `CheckpointWriteError` if it failed."""
        if self._saving is not None:
            with self._reporting(self._saving):
                self.manager.wait_until_finished()
                self.manager.check_for_errors()
            self._saving = None

    def close(self) -> None:
        """Finish the pending save and release the manager; a failed save is still raised, after the release."""
        try:
            self.wait_until_finished()
        finally:
            self._saving = None
            if not self._reported:  # after a failed write Orbax's close raises it again and aborts pending writes
                self.manager.close()
