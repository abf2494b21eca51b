"""`torch.export` of the PyTorch twin: an ExportedProgram (`.pt2`) that loads with torch alone.

`torch.export.load(path).module()(x)` runs it (NCHW float32, dynamic batch); the program holds aten operators and
the weights, not effnet's classes, so the consumer needs no effnet. It is also the input of the rest of the torch
deployment stack (AOTInductor, ExecuTorch, TensorRT through torch_tensorrt).
"""

from __future__ import annotations

import io

import numpy as np

from ._torch import needs, quiet, twin

__all__ = ["LAYOUT", "NAMES", "run", "serialize"]

LAYOUT = "NCHW"
NAMES = ("x", "logits")


def serialize(model, size: tuple[int, int]) -> bytes:
    torch = needs("torch")
    net, x = twin(model, size)
    buf = io.BytesIO()
    with quiet():
        program = torch.export.export(net, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
        torch.export.save(program, buf)
    return buf.getvalue()


def run(data: bytes, x: np.ndarray) -> np.ndarray:
    torch = needs("torch")
    with quiet():
        module = torch.export.load(io.BytesIO(data)).module()
    with torch.no_grad():
        return module(torch.from_numpy(np.ascontiguousarray(x))).numpy()
