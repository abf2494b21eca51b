"""What a run reports: progress lines, `metrics.jsonl` + TensorBoard (process 0 only), and the curves plot."""

from __future__ import annotations

import json
import math
import os
import sys
import time

import jax

from effnet_spec.atomic import write_atomic

__all__ = ["Logger", "best_logged", "note", "plot_curves"]


def note(msg: str) -> None:
    """One line of progress from process 0 (through tqdm, so it does not break the bar)."""
    if jax.process_index() == 0:
        from tqdm import tqdm

        tqdm.write(f"[effnet] {msg}", file=sys.stderr)


def strict_json(obj, **kwargs) -> str:
    """`obj` as strict JSON, with each NaN or infinite number written as null: JSON has no NaN, and Python's bare
    `NaN` would make a record (metrics.jsonl, summary.json) unreadable to every JSON parser but Python's. A val
    split the head cannot score (labels beyond its classes) has a NaN loss: its row says null."""

    def finite(value):
        if isinstance(value, float):
            return value if math.isfinite(value) else None
        if isinstance(value, dict):
            return {k: finite(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [finite(v) for v in value]
        return value

    return json.dumps(finite(obj), allow_nan=False, **kwargs)


class Logger:
    """metrics.jsonl + TensorBoard on process 0; everything else is a no-op elsewhere.

    A run resumed at step `resumed_at` drops the rows a killed run wrote after that checkpoint (metrics.jsonl is
    rewritten atomically; TensorBoard is told to purge them), so each step is logged once. Both files are created
    by the first row, not before: a run refused before it logged anything leaves neither behind.
    """

    def __init__(self, workdir: str, *, resumed_at: int = 0):
        self.main = jax.process_index() == 0
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.tb = None
        self._tb_dir, self._purge = os.path.join(workdir, "tb"), resumed_at + 1 if resumed_at else None
        if self.main:
            self._writer = _summary_writer()  # imported now: its import inside the timed steps skewed their img/s
            if resumed_at:
                _drop_rows_after(self.path, resumed_at)

    def write(self, step: int, kind: str, values: dict) -> None:
        """One row of `values` at `step`; a NaN or infinite value is written as null (and to TensorBoard as is)."""
        if not self.main:
            return
        row = {"step": step, "kind": kind, "time": time.time(), **{k: float(v) for k, v in values.items()}}
        try:
            with open(self.path, "a") as f:
                f.write(strict_json(row) + "\n")
        except OSError as e:  # a full disk or a vanished workdir: name the file, not just the errno
            raise OSError(f"cannot append to {self.path}: {e.strerror or e}; the run stopped") from e
        if self.tb is None:
            self.tb = self._writer(self._tb_dir, purge_step=self._purge)
        for k, v in values.items():
            self.tb.add_scalar(f"{kind}/{k}", float(v), step)

    def has(self, step: int, kind: str) -> bool:
        """Whether metrics.jsonl holds a `kind` row at `step` (a resume at a stage's first step may find it)."""
        return self.main and any(r["step"] == step and r["kind"] == kind for r in _rows(self.path))

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _parse(lines) -> list[dict]:
    """Rows from metrics.jsonl lines; a line a killed run left half-written is skipped."""
    rows = []
    for line in lines:
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def _rows(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return _parse(f)


def _summary_writer():
    """tensorboardX's SummaryWriter, imported without torch: tensorboardX imports torch when it is installed (over a
    second of every run's start) only to accept torch tensors, which this logger never passes."""
    if "torch" in sys.modules or "tensorboardX" in sys.modules:
        from tensorboardX import SummaryWriter

        return SummaryWriter
    sys.modules["torch"] = None  # `import torch` raises ImportError, which tensorboardX catches
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


def _drop_rows_after(path: str, step: int) -> None:
    if not os.path.exists(path):
        return
    with open(path) as f:
        text = f.read()
    lines = text.splitlines()
    keep = [r for r in _parse(lines) if r.get("step", 0) <= step]
    if len(keep) != len(lines) or (text and not text.endswith("\n")):  # a torn last row too
        write_atomic(path, "".join(strict_json(r) + "\n" for r in keep))


def _nan_for_null(row: dict) -> dict:
    """A row with its nulls (values that were NaN or infinite) as NaN again, which a plot leaves as a gap."""
    return {k: math.nan if v is None else v for k, v in row.items()}


def plot_curves(metrics_path: str, png_path: str) -> None:
    """Train loss, train top-1 and val top-1 against step, from metrics.jsonl; progressive learning's stage starts
    as dotted lines labelled with the stage's image side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {(r["kind"], r["step"]): _nan_for_null(r) for r in _rows(metrics_path)}
    train = sorted((r for (k, _), r in rows.items() if k == "train"), key=lambda r: r["step"])
    val = sorted((r for (k, _), r in rows.items() if k == "val"), key=lambda r: r["step"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss")
    ax1.set_xlabel("step")
    ax1.set_ylabel("loss")
    ax1.legend()
    ax2.plot([r["step"] for r in train], [r["top1"] for r in train], label="train top-1")
    ax2.plot([r["step"] for r in val], [r["top1"] for r in val], "o-", label="val top-1")
    ax2.set_xlabel("step")
    ax2.set_ylabel("accuracy")
    ax2.set_ylim(0, 1)
    for r in sorted((r for (k, _), r in rows.items() if k == "stage"), key=lambda r: r["step"]):
        for ax in (ax1, ax2):
            ax.axvline(r["step"], color="grey", linestyle=":", linewidth=1)
        ax2.annotate(f"{int(r['size'])}px", (r["step"], 0.02), fontsize=7, color="grey", xytext=(2, 0),
                     textcoords="offset points")  # fmt: skip
    ax2.legend()
    fig.tight_layout()
    tmp = png_path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, png_path)


def best_logged(metrics_path: str, kind: str, key: str, *, up_to_step: int) -> float | None:
    """The largest `key` among `kind` rows of metrics.jsonl at steps <= `up_to_step` (None if there are none)."""
    rows = _rows(metrics_path)
    found = [
        r[key] for r in rows if r.get("kind") == kind and r.get("step", 0) <= up_to_step and r.get(key) is not None
    ]
    return max(found) if found else None
