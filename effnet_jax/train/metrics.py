"""What a run reports: progress lines, `metrics.jsonl` + TensorBoard (process 0 only), and the curves plot."""

from __future__ import annotations

import json
import os
import sys
import time

import jax

__all__ = ["Logger", "best_logged", "note", "plot_curves"]


def note(msg: str) -> None:
    """One line of progress from process 0 (through tqdm, so it does not break the bar)."""
    if jax.process_index() == 0:
        from tqdm import tqdm

        tqdm.write(f"[effnet] {msg}", file=sys.stderr)


class Logger:
    """metrics.jsonl + TensorBoard on process 0; everything else is a no-op elsewhere."""

    def __init__(self, workdir: str):
        self.main = jax.process_index() == 0
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.tb = None
        if self.main:
            from tensorboardX import SummaryWriter

            self.tb = SummaryWriter(os.path.join(workdir, "tb"))

    def write(self, step: int, kind: str, values: dict) -> None:
        if not self.main:
            return
        row = {"step": step, "kind": kind, "time": time.time(), **{k: float(v) for k, v in values.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        for k, v in values.items():
            self.tb.add_scalar(f"{kind}/{k}", float(v), step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def plot_curves(metrics_path: str, png_path: str) -> None:
    """Train loss, train top-1 and val top-1 against step, from metrics.jsonl (last row per step wins)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows: dict[tuple[str, int], dict] = {}
    if os.path.exists(metrics_path):
        with open(metrics_path) as f:
            for line in f:
                r = json.loads(line)
                rows[(r["kind"], r["step"])] = r
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
    ax2.legend()
    fig.tight_layout()
    tmp = png_path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, png_path)


def best_logged(metrics_path: str, kind: str, key: str, *, up_to_step: int) -> float | None:
    """The largest `key` among `kind` rows of metrics.jsonl at steps <= `up_to_step` (None if there are none)."""
    if not os.path.exists(metrics_path):
        return None
    best = None
    with open(metrics_path) as f:
        for line in f:
            r = json.loads(line)
            if r.get("kind") == kind and r.get("step", 0) <= up_to_step and key in r:
                best = r[key] if best is None else max(best, r[key])
    return best
