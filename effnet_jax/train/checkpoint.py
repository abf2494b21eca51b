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

A step that is there but cannot be read (a truncated data file, an emptied folder: damaged after it was written)
is skipped for the latest one that can (`restore()`, `damaged`); the run holding the workdir moves it aside to
`<step>.damaged` (`set_aside_damaged`), out of Orbax's view, so the steps after it are saved again and garbage
collection counts only complete ones.

These are training checkpoints; the interchange format for finished weights is `effnet_jax.weights`.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import glob
import json
import os
import re
import shutil
import sys

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

__all__ = ["ITEMS", "CheckpointWriteError", "Checkpointer", "DamagedCheckpoint", "abstract_like", "quiet_failed_writes"]

ITEMS = ("model", "opt", "ema", "meta")


class CheckpointWriteError(OSError):
    """A checkpoint could not be written; the run must stop, and the checkpoints already complete are intact."""


class DamagedCheckpoint(ValueError):
    """A checkpoint step is there but cannot be read (damaged after it was written), and no earlier step can be."""


class _Unreadable(Exception):
    """One step failed to read; `restore` goes on to the step before it."""


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
    _drop_failed_read_reports()
    warnings.filterwarnings("ignore", message="coroutine .* was never awaited", category=RuntimeWarning)


def _read_reason(e: BaseException) -> str:
    """The first cause of a failed read, in one line: TensorStore's words for a truncated file ("OUT_OF_RANGE: Error
    reading "<array>": Requested byte range [a, b) is not valid for value of size n"), Orbax's for a missing item."""
    while e.__cause__ is not None:  # the explicit causes (an implicit context can be a library's inner detail)
        e = e.__cause__
    if isinstance(e, OSError) and e.strerror:
        text = f"{e.strerror}: {e.filename}" if e.filename else e.strerror
    elif isinstance(e, json.JSONDecodeError):
        text = f"a JSON file of it is cut short or garbled ({e})"
    else:
        text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    text = re.sub(r' in OCDBT database at [^:]*"(?=:)', "", (text.splitlines() or [""])[0])
    return text[:300] or type(e).__name__


@contextlib.contextmanager
def _unreadable():
    """Any failure to read a step (Orbax's `KeyError` for an emptied folder, TensorStore's errors for a truncated
    file) becomes `_Unreadable` with its reason; running out of memory stays what it is."""
    try:
        yield
    except MemoryError:  # says nothing about the checkpoint: an earlier one would fail the same way
        raise
    except Exception as e:
        reason = _read_reason(e)
        if "RESOURCE_EXHAUSTED" in reason or "out of memory" in reason.lower():
            raise
        raise _Unreadable(reason) from e


def _is_failed_read_report(u) -> bool:
    """An "Exception ignored" report left by a failed Orbax read or write: its reads, suspended coroutines whose
    closing raises again, and TensorStore completions arriving after Orbax closed the event loop they report to."""
    code = getattr(u.object, "cr_code", None)
    if code is not None and "orbax" in code.co_filename:
        return True
    return u.exc_type is RuntimeError and str(u.exc_value) == "Event loop is closed"


def _drop_failed_read_reports() -> None:
    """Keep those reports (a traceback each, at some later moment, from another thread) off stderr from now on:
    the failure itself is reported once, by `Checkpointer`. Installed once per process, over the hook there."""
    previous = sys.unraisablehook
    if getattr(previous, "_effnet", False):
        return

    def hook(u) -> None:
        if not _is_failed_read_report(u):
            previous(u)

    hook._effnet = True
    sys.unraisablehook = hook


def _collect_failed_reads() -> None:
    """Collect a failed restore's leftovers now, while their reports are dropped."""
    _drop_failed_read_reports()
    gc.collect()


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
        self.damaged: dict[int, str] = {}  # steps `restore()` found there but could not read: why
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

    def restore(self, step: int | None = None, *, check=None, **abstract) -> dict:
        """Restore `step` (default: the latest that can be read) for the items given as abstract trees, plus `meta`.

        `check(meta)` runs on the step's `meta` before any tensor is read (it refuses by raising). Without `step`,
        steps that cannot be read are recorded in `damaged` and the one before is tried.

        Returns {item: restored tree}.

        Raises:
          FileNotFoundError: no checkpoint in the directory.
          DamagedCheckpoint: no step can be read (or `step`, when given, cannot).
          ValueError: the checkpoint's shapes do not match the abstract trees (or `check` refused).
        """
        unknown = set(abstract) - set(ITEMS)
        if unknown:
            raise ValueError(f"unknown checkpoint items {sorted(unknown)}; expected some of {ITEMS}")
        steps = sorted(self.all_steps(), reverse=True) if step is None else [step]
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        for s in steps:
            try:
                return self._restore(s, check, abstract)
            except _Unreadable as e:
                self.damaged[s] = str(e)
            _collect_failed_reads()
        worst = steps[0]
        n = len(steps) - 1
        others = f" (nor can the {n} step{'s' if n > 1 else ''} before it)" if n else ""
        raise DamagedCheckpoint(
            f"checkpoint {self.directory}/{worst} cannot be read: {self.damaged[worst]}{others}; it is damaged "
            "(truncated or emptied after it was written). Move it away to start the run over, or put back a copy"
        )

    def _restore(self, step: int, check, abstract: dict) -> dict:
        """One step's items; `_Unreadable` for a step that is there but cannot be read."""
        with _unreadable():
            meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        if not isinstance(meta, dict):
            raise _Unreadable(f"its meta is {type(meta).__name__}, not a JSON object")
        if check is not None:
            check(meta)
        if not abstract:
            return {"meta": meta}
        with _unreadable():
            saved = self.manager.item_metadata(step)
        absent = [name for name in abstract if saved.get(name) is None]
        if absent:
            raise _Unreadable(f"no {', '.join(absent)} item")
        problems = [line for name, tree in abstract.items() for line in _compare(name, tree, saved.get(name))]
        if problems:
            raise ValueError(
                f"checkpoint {self.directory}/{step} does not match the model being restored:\n  "
                + "\n  ".join(problems)
            )
        items = {name: ocp.args.StandardRestore(tree) for name, tree in abstract.items()}
        with _unreadable():
            restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        return {"meta": meta, **{name: restored[name] for name in abstract}}

    def set_aside_damaged(self) -> dict[int, str]:
        """Rename the `damaged` steps to `<step>.damaged` (kept for the user to inspect; Orbax no longer sees them),
        so this run saves those steps again and keeps `keep` complete ones. Returns {step: new path}."""
        moved = {}
        if jax.process_index() == 0:
            for step in sorted(self.damaged):
                src = os.path.join(self.directory, str(step))
                dest, n = f"{src}.damaged", 1
                while os.path.exists(dest):
                    n += 1
                    dest = f"{src}.damaged-{n}"
                os.rename(src, dest)
                moved[step] = dest
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("effnet: damaged checkpoints set aside")
        self.damaged = {}
        self.manager.reload()
        return moved

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
