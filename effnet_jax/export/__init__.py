"""`effnet export`: a model as an artifact another runtime serves, verified in that runtime before it is written.

    from effnet_jax.export import export
    export("b0.safetensors", "b0.onnx", format="onnx")             # ONNX Runtime, TensorRT, ...
    export("runs/pets", "pets.stablehlo", format="stablehlo")       # jax.export: C++/PJRT or JAX without effnet
    export(model, "b0.pt2", format="torch-export", size=(240, 320))  # torch.export ExportedProgram

The source is an `EfficientNet` or anything `from_pretrained` reads. Each format module turns the eval-mode model
into bytes and runs them in its own runtime; the outputs on a fixed input must match the JAX model's (`verify=True`)
before the artifact and its sidecar JSON (`<out>.json`: input layout and shape, preprocessing, class names) are
written, each atomically. So a failed export leaves nothing behind and overwrites nothing.
"""

from __future__ import annotations

import os
from types import ModuleType

import numpy as np

from . import common
from .common import Exported, ExportMismatchError, sidecar_path

__all__ = ["FORMATS", "Exported", "ExportMismatchError", "export", "load_stablehlo", "sidecar_path"]

FORMATS = ("stablehlo", "onnx", "torch-export")


def _module(fmt: str) -> ModuleType:
    if fmt == "stablehlo":
        from . import stablehlo as m
    elif fmt == "onnx":
        from . import onnx as m
    elif fmt == "torch-export":
        from . import torch_export as m
    else:
        raise ValueError(f"unknown export format {fmt!r}; expected one of {', '.join(FORMATS)}")
    return m


def _eval_model(source, weight_source: str | None, model: str | None, ema: bool):
    """An eval-mode model of `source`, never the caller's own object (its mode stays as it was)."""
    from flax import nnx

    from effnet_spec import default_preprocessing

    from ..model import EfficientNet
    from ..weights import from_pretrained

    if isinstance(source, EfficientNet):
        net = nnx.clone(source)
        net.eval()
    else:
        net = from_pretrained(source, weight_source=weight_source, model=model, ema=ema)
    if net.preprocessing is None:  # a model built in code: the variant's own eval transform
        net.preprocessing = default_preprocessing(net.spec)
    return net


def _to_layout(x: np.ndarray, layout: str) -> np.ndarray:
    return x if layout == "NHWC" else np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def export(
    source,
    out: str | os.PathLike,
    *,
    format: str,
    size: int | str | tuple[int, int] | None = None,
    verify: bool = True,
    weight_source: str | None = None,
    model: str | None = None,
    ema: bool = True,
    **options,
) -> Exported:
    """Export `source` to `out` in `format` (one of `FORMATS`).

    Args:
        source: an `EfficientNet`, or what `EfficientNet.from_pretrained` reads (a checkpoint file, another
            library's weights, a training run directory, an `hf-hub:` id); `weight_source`, `model` and `ema` as
            there.
        size: input H, W (an int, "HxW" or a pair); default the weights' resolution. Fixed in the artifact: TF-SAME
            padding depends on it. The batch stays dynamic.
        verify: run the artifact on a fixed input in its own runtime and compare with the JAX model first.
        options: per format: `platforms=("cpu", "cuda", "tpu")` for stablehlo, `opset=` for onnx.

    Raises:
        ValueError: an unknown format, size or option; weights that cannot be read (FileNotFoundError).
        ExportMismatchError: the artifact's outputs are off the JAX model's by more than `common.tolerance`.
        OSError: `out` cannot be written (checked before any work). ModuleNotFoundError: the format's runtime.
    """
    fmt = _module(format)
    if format == "stablehlo":
        options["platforms"] = fmt.check_platforms(options.get("platforms", ("cpu",)))
    allowed = {"stablehlo": {"platforms"}, "onnx": {"opset"}, "torch-export": set()}[format]
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(f"{format} export takes no option {', '.join(unknown)}; its options: {sorted(allowed)}")
    if verify and format == "stablehlo":
        _check_runnable_here(options["platforms"])
    common.check_writable(out)
    net = _eval_model(source, weight_source, model, ema)
    size = common.parse_size(size, net.preprocessing.resolution)
    data = fmt.serialize(net, size, **options)
    diff = tol = None
    if verify:
        x = common.sample_input(net.spec.in_channels, size)
        want = _reference(net, x)
        diff, tol = common.compare(format, fmt.run(data, _to_layout(x, fmt.LAYOUT)), want), common.tolerance(want)
    names = (fmt.NAMES[0], fmt.NAMES[1] if net.spec.num_classes else "features")
    meta_path = common.write(out, data, common.metadata(net, format, size, names, fmt.LAYOUT, diff, tol))
    return Exported(os.fspath(out), meta_path, format, size, diff)


def _reference(net, x: np.ndarray) -> np.ndarray:
    """The JAX model's outputs (float64 for the comparison), computed as `effnet predict` computes them."""
    import jax
    from flax import nnx

    graphdef, state = nnx.split(net)
    return np.asarray(jax.jit(lambda s, v: nnx.merge(graphdef, s)(v))(state, x), dtype=np.float64)


def _check_runnable_here(platforms: tuple[str, ...]) -> None:
    import jax

    here = jax.default_backend()
    if here not in platforms:
        raise ValueError(
            f"cannot verify a stablehlo export for {','.join(platforms)} on this {here} machine: add {here} to the "
            "platforms or skip verification (--no-verify)"
        )


def load_stablehlo(path: str | os.PathLike):
    """The `jax.export.Exported` in a stablehlo artifact: `load_stablehlo(p).call(x)` with x (N, H, W, C) float32."""
    from .stablehlo import load

    return load(path)
