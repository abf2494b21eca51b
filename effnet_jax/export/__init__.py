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

__all__ = [
    "FORMATS",
    "ExportMismatchError",
    "Exported",
    "export",
    "export_onnx",
    "export_stablehlo",
    "export_torch",
    "load_stablehlo",
    "sidecar_path",
]

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
    """A float32, eval-mode model of `source`, never the caller's own object (its mode and dtype stay as they were):
    the artifacts compute in float32, so the reference they are checked against does too."""
    from effnet_spec import default_preprocessing

    from ..model import EfficientNet, ModelOptions
    from ..weights import from_pretrained, model_from_state_dict, state_dict_from_model

    float32 = ModelOptions(dtype="float32")  # not "auto": bfloat16 on a GPU host
    if isinstance(source, EfficientNet):
        net = model_from_state_dict(source.spec, state_dict_from_model(source), options=float32)
        net.preprocessing = source.preprocessing
    else:
        net = from_pretrained(source, weight_source=weight_source, model=model, ema=ema, options=float32)
    net.eval()
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
        verify: run the artifact on a fixed input in its own runtime (on the CPU) and compare with the JAX model.
        options: per format: `platforms=("cpu", "cuda", "tpu")` for stablehlo, `opset=` for onnx.

    Raises:
        ValueError: an unknown format, size or option; weights that cannot be read (FileNotFoundError).
        ExportMismatchError: the artifact's outputs are off the JAX model's by more than `common.tolerance`.
        OSError: `out` cannot be written (checked before any work). ModuleNotFoundError: the format's runtime.
    """
    fmt = _module(format)
    allowed = {"stablehlo": {"platforms"}, "onnx": {"opset"}}.get(format, set())
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(f"{format} export takes no option {', '.join(unknown)}; its options: {sorted(allowed)}")
    if hasattr(fmt, "check_options"):
        options = fmt.check_options(verify=verify, **options)
    if size is not None:
        size = common.parse_size(size, 0)
    out = os.fspath(out)
    common.check_writable(out)
    common.check_not_the_source(source, out)
    net = _eval_model(source, weight_source, model, ema)
    size = common.parse_size(size, net.preprocessing.resolution)
    # The model runs at `size` in the check and, for onnx and torch-export, in the trace: refused at once when its
    # forward pass cannot fit (the JAX one stands for the other runtimes'), and an allocation that fails anyway is
    # a MemoryError, not a runtime's own error.
    reference = _reference_fn(net, size) if verify or format != "stablehlo" else None
    try:
        data = fmt.serialize(net, size, **options)
        diff = tol = None
        if verify:
            x = common.sample_input(net.spec.in_channels, size)
            want = reference(x)
            diff, tol = common.compare(format, fmt.run(data, _to_layout(x, fmt.LAYOUT)), want), common.tolerance(want)
    except Exception as e:
        from ..ops.memory import is_out_of_memory

        if not is_out_of_memory(e) or isinstance(e, ValueError):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise MemoryError(
            f"out of memory exporting at {size[0]}x{size[1]} ({first[:200]}); try a smaller --size"
        ) from e
    names = (fmt.NAMES[0], fmt.NAMES[1] if net.spec.num_classes else "features")
    meta = common.metadata(net, format, size, names, fmt.LAYOUT, diff, tol)
    meta.update(fmt.describe(data) if hasattr(fmt, "describe") else {})
    meta_path = common.write(out, data, meta)
    return Exported(out, meta_path, format, size, diff)


def _reference_fn(net, size: tuple[int, int]):
    """x -> the JAX model's outputs (float64 for the comparison) on `common.sample_input`'s batch, on the CPU: full
    float32 precision on any machine (a GPU's default matmul precision, TF32, would be off by more than the
    tolerance). Compiled now and refused when it cannot fit in memory (`ops.memory.check`)."""
    import jax
    from flax import nnx

    from ..ops import memory

    cpu = jax.devices("cpu")[0]
    graphdef, state = nnx.split(net)
    state = jax.device_put(state, cpu)
    shape = jax.ShapeDtypeStruct((common.SAMPLE_BATCH, *size, net.spec.in_channels), np.float32,
                                 sharding=jax.sharding.SingleDeviceSharding(cpu))  # fmt: skip
    compiled = jax.jit(lambda s, v: nnx.merge(graphdef, s)(v)).lower(state, shape).compile()
    memory.check(compiled, what=f"the model's forward pass at {size[0]}x{size[1]}", held=state,
                 fits=f"a smaller --size (now {size[0]}x{size[1]})")  # fmt: skip

    def reference(x: np.ndarray) -> np.ndarray:
        return np.asarray(compiled(state, jax.device_put(x, cpu)), dtype=np.float64)

    return reference


def export_stablehlo(source, out: str | os.PathLike, *, platforms=("cpu",), **kwargs) -> Exported:
    """`export(source, out, format="stablehlo")`; `platforms` among cpu, cuda, rocm, tpu."""
    return export(source, out, format="stablehlo", platforms=platforms, **kwargs)


def export_onnx(source, out: str | os.PathLike, *, opset: int | None = None, **kwargs) -> Exported:
    """`export(source, out, format="onnx")`: the twin through `torch.onnx.export`, checked in ONNX Runtime."""
    return export(source, out, format="onnx", opset=opset, **kwargs)


def export_torch(source, out: str | os.PathLike, **kwargs) -> Exported:
    """`export(source, out, format="torch-export")`: a `.pt2` ExportedProgram of the twin."""
    return export(source, out, format="torch-export", **kwargs)


def load_stablehlo(path: str | os.PathLike):
    """The `jax.export.Exported` in a stablehlo artifact: `load_stablehlo(p).call(x)` with x (N, H, W, C) float32."""
    from .stablehlo import load

    return load(path)
