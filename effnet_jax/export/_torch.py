"""The PyTorch twin of a JAX model, traced by the torch-based formats (ONNX, torch.export)."""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import warnings

from .common import sample_input

# module -> the extra that installs it
_PIP = {"torch": "torch", "onnx": "export", "onnxscript": "export", "onnxruntime": "export"}


def needs(*modules: str):
    """Import `modules` (returns the first), or one ModuleNotFoundError saying what to install."""
    loaded = []
    for name in modules:
        try:
            loaded.append(importlib.import_module(name))
        except ModuleNotFoundError:
            hint = f"pip install 'effnet[{_PIP[name]}]'"
            raise ModuleNotFoundError(f"this export needs {name}: {hint}", name=name) from None
    return loaded[0]


def twin(model, size: tuple[int, int]):
    """(the eval-mode torch twin, an NCHW example input of batch 2: a batch of 1 would pin the batch to 1)."""
    torch = needs("torch")
    from ..weights import to_torch

    net = to_torch(model).eval()
    x = sample_input(model.spec.in_channels, size).transpose(0, 3, 1, 2).copy()
    return net, torch.from_numpy(x)


@contextlib.contextmanager
def quiet():
    """Keep the exporters' own chatter (progress on stdout, notes about torchvision ops, torch's deprecation
    warnings about its own internals) off the user's terminal; errors still raise."""
    logs = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [log.level for log in logs]
    for log in logs:
        log.setLevel(logging.CRITICAL)  # a failed opset conversion is logged as an error, then checked by us
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        for log, level in zip(logs, levels):
            log.setLevel(level)
