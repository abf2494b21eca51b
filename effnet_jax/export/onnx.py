"""ONNX through the PyTorch twin (`torch.onnx.export`, dynamo), checked with ONNX Runtime.

Chosen over jax2onnx by measurement (benchmarks/results/export-ort-cpu.md): the same fidelity, a graph a fifth the
size (BN folded into the convs, no layout transposes) that ONNX Runtime ran 1.8x as fast, and no pin on
orbax-checkpoint. The graph takes NCHW, ONNX's layout, with a dynamic batch; TF-SAME padding becomes the static
`pads` of each Conv for the exported size, the depthwise conv one grouped `Conv`, SiLU `x * Sigmoid(x)`.
"""

from __future__ import annotations

import numpy as np

from ._torch import needs, quiet, twin

__all__ = ["LAYOUT", "MIN_OPSET", "NAMES", "check_options", "describe", "run", "serialize"]

LAYOUT = "NCHW"
NAMES = ("image", "logits")


MIN_OPSET = 18  # below it the exporter's conversion fails for this model (ReduceMean's axes became an input in 18)


def check_options(*, verify: bool, opset: int | None = None) -> dict:
    if opset is None:
        return {}
    newest = needs("onnx").defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= newest:
        raise ValueError(f"ONNX opset must be an int from {MIN_OPSET} to {newest} (this onnx's newest), got {opset!r}")
    return {"opset": opset}


def describe(data: bytes) -> dict:
    import onnx

    model = onnx.load_from_string(data)
    return {"opset": next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))}


def serialize(model, size: tuple[int, int], *, opset: int | None = None) -> bytes:
    torch = needs("torch", "onnx", "onnxscript")
    net, x = twin(model, size)
    batch = torch.export.Dim("batch", min=1)
    names = dict(input_names=[NAMES[0]], output_names=[NAMES[1] if model.spec.num_classes else "features"])
    with quiet():
        program = torch.onnx.export(net, (x,), dynamo=True, dynamic_shapes=({0: batch},), opset_version=opset,
                                    optimize=True, verbose=False, **names)  # fmt: skip
    proto = program.model_proto
    got = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    if opset is not None and got != opset:  # the exporter falls back to its own opset when a conversion fails
        raise ValueError(f"the ONNX exporter cannot write this model at opset {opset} (it fell back to {got}); "
                         "leave --opset out for its default")  # fmt: skip
    return proto.SerializeToString()


def run(data: bytes, x: np.ndarray) -> np.ndarray:
    needs("onnxruntime")
    import onnxruntime as ort

    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: np.ascontiguousarray(x)})[0]
