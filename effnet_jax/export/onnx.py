"""ONNX through the PyTorch twin (`torch.onnx.export`, dynamo), checked with ONNX Runtime.

Chosen over jax2onnx by measurement (benchmarks/README.md, "Export"): the same fidelity, a graph a fifth the size
(BN folded into the convs, no layout transposes) that ONNX Runtime runs about twice as fast, and no pin on
orbax-checkpoint. The graph takes NCHW, ONNX's layout, with a dynamic batch; TF-SAME padding becomes the static
`pads` of each Conv for the exported size, the depthwise conv one grouped `Conv`, SiLU `x * Sigmoid(x)`.
"""

from __future__ import annotations

import numpy as np

from ._torch import needs, quiet, twin

__all__ = ["LAYOUT", "NAMES", "run", "serialize"]

LAYOUT = "NCHW"
NAMES = ("image", "logits")


def serialize(model, size: tuple[int, int], *, opset: int | None = None) -> bytes:
    torch = needs("torch", "onnx", "onnxscript")
    net, x = twin(model, size)
    batch = torch.export.Dim("batch", min=1)
    names = dict(input_names=[NAMES[0]], output_names=[NAMES[1] if model.spec.num_classes else "features"])
    with quiet():
        program = torch.onnx.export(net, (x,), dynamo=True, dynamic_shapes=({0: batch},), opset_version=opset,
                                    optimize=True, verbose=False, **names)  # fmt: skip
    return program.model_proto.SerializeToString()


def run(data: bytes, x: np.ndarray) -> np.ndarray:
    needs("onnxruntime")
    import onnxruntime as ort

    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: np.ascontiguousarray(x)})[0]
