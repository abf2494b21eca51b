"""What every export format shares: the model in eval mode, the input size, the verification and the files written.

Each format module (`stablehlo`, `onnx`, `torch_export`) only turns a model into bytes (`serialize`) and runs those
bytes in its own runtime (`run`); this module checks the run against the JAX model and writes the artifact and its
sidecar JSON, both atomically, only once the check has passed (docs/design.md, "Export").
"""

from __future__ import annotations

import importlib.metadata
import json
import os
from dataclasses import asdict, dataclass

import numpy as np

from effnet_spec.atomic import unwritable_file, write_atomic_files
from effnet_spec.paths import check_not_source

__all__ = ["Exported", "ExportMismatchError", "parse_size", "sample_input", "sidecar_path"]


class ExportMismatchError(ValueError):
    """The exported artifact, run in its own runtime, does not reproduce the JAX model's outputs."""


@dataclass(frozen=True)
class Exported:
    """What an export wrote: the artifact, its sidecar JSON, and how far its outputs were from the JAX model's."""

    path: str
    meta_path: str
    format: str
    size: tuple[int, int]
    max_abs_diff: float | None  # None when verification was skipped


def sidecar_path(out: str | os.PathLike) -> str:
    """The JSON written beside an artifact: `b0.onnx` -> `b0.onnx.json` (a `.onnx` and a `.pt2` never share one)."""
    return os.fspath(out) + ".json"


MAX_SIDE = 4096  # 8x b7's native size; beyond it XLA's int32 element counts overflow on the verification batch


def parse_size(size, default: int) -> tuple[int, int]:
    """(H, W) from None (the weights' resolution), an int, "224", "200x256" or an (H, W) pair.

    Raises:
        ValueError: anything else, or a side outside 1..MAX_SIDE pixels.
    """
    if size is None:
        size = default
    given = size
    if isinstance(size, str):
        parts = size.lower().split("x")
        try:
            size = tuple(int(p) for p in parts)
        except ValueError:
            size = None
        if size is not None and len(size) == 1:
            size = size[0]
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        size = (int(size), int(size))
    ok = (
        isinstance(size, (tuple, list))
        and len(size) == 2
        and all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and 1 <= s <= MAX_SIDE for s in size)
    )
    if not ok:
        raise ValueError(
            f"export size must be an int or HxW such as 224 or 240x320, each side 1 to {MAX_SIDE}, got {given!r}"
        )
    return int(size[0]), int(size[1])


SAMPLE_BATCH = 2  # images in the verification input


def sample_input(in_channels: int, size: tuple[int, int], batch: int = SAMPLE_BATCH, seed: int = 0) -> np.ndarray:
    """The fixed verification input: NHWC float32 standard normal (what a normalised image looks like)."""
    return np.random.default_rng(seed).standard_normal((batch, *size, in_channels), dtype=np.float32)


def tolerance(reference: np.ndarray) -> float:
    """How far an artifact's outputs may be from the JAX model's.

    Two float32 runtimes sum in different orders; on real ImageNet weights the twins and other libraries agree to
    about 1e-6 of the logit scale (parity_tests). 1e-5 of the scale leaves a 10x margin and still catches any wrong
    padding, layout or weight (those move logits by a large fraction of their scale). The 1e-9 floor only keeps an
    all-zero output (a new head of zeros) from needing an exact match.
    """
    return 1e-5 * float(np.abs(reference).max()) + 1e-9


def compare(fmt: str, got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want|; raises ExportMismatchError when it is over `tolerance(want)` (or the shapes differ)."""
    got = np.asarray(got)
    if got.shape != want.shape:
        raise ExportMismatchError(f"{fmt} artifact returned shape {got.shape}; the JAX model returns {want.shape}")
    diff = float(np.abs(got.astype(np.float64) - want).max())
    tol = tolerance(want)
    if not diff <= tol:  # NaN fails too
        raise ExportMismatchError(
            f"{fmt} artifact does not reproduce the JAX model: max |diff| {diff:.3g} > tolerance {tol:.3g}"
        )
    return diff


def check_writable(out: str | os.PathLike) -> None:
    """Refuse an output path that cannot be written, before any work."""
    for path in (os.fspath(out), sidecar_path(out)):
        problem = unwritable_file(path)
        if problem:
            raise OSError(f"cannot write {path}: {problem}")


def check_not_the_source(source, out: str | os.PathLike) -> None:
    """Refuse to write the artifact or its sidecar over the weights being exported (the same path, a symbolic or hard
    link to them) or into the run directory they come from, before any work.

    Raises:
        ValueError: one line naming the path, the source and how they are the same.
    """
    if isinstance(source, (str, os.PathLike)):
        for path in (os.fspath(out), sidecar_path(out)):
            check_not_source(source, path, inside=True)


def metadata(model, fmt: str, size: tuple[int, int], io_names: tuple[str, str], layout: str, diff: float | None,
             tol: float | None) -> dict:  # fmt: skip
    """The sidecar: what a consumer needs to feed the artifact and read its output, without effnet."""
    from ..predict import class_names

    spec, pre = model.spec, model.preprocessing
    h, w = size
    channels = {1: "grey", 3: "RGB"}.get(spec.in_channels, f"{spec.in_channels} channels")
    shape = ["batch", h, w, spec.in_channels] if layout == "NHWC" else ["batch", spec.in_channels, h, w]
    head = spec.num_classes > 0
    transform = {k: v for k, v in asdict(pre).items() if k != "class_names"}
    transform["resolution"] = h if h == w else [h, w]  # what the artifact takes, whatever the weights were made at
    return {
        "format": fmt,
        "effnet_version": importlib.metadata.version("effnet"),
        "model": spec.name,
        "padding": spec.conv.padding,
        "input": {
            "name": io_names[0],
            "shape": shape,
            "layout": layout,
            "dtype": "float32",
            "values": f"{channels} scaled to [0, 1], then (x - mean) / std per channel",
        },  # fmt: skip
        "output": {
            "name": io_names[1],
            "shape": ["batch", spec.num_classes if head else spec.head_ch],
            "dtype": "float32",
            "values": "logits (no softmax)" if head else "pooled features (no classifier)",
        },
        "preprocessing": transform,
        "class_names": class_names(pre, spec.num_classes) if head else None,
        "verification": None if diff is None else {"against": "effnet_jax", "max_abs_diff": diff, "tolerance": tol},
    }


def write(out: str | os.PathLike, data: bytes, meta: dict) -> str:
    """The artifact and its sidecar, both complete on disk before either replaces an old file; returns the
    sidecar's path."""
    meta_path = sidecar_path(out)
    write_atomic_files({out: data, meta_path: json.dumps(meta, indent=2) + "\n"})
    return meta_path
