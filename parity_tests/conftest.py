"""Parity-suite setup: full float32 precision in both frameworks, and the device to run on.

`EFFNET_TEST_DEVICE=cpu` (default) or `cuda` runs JAX and torch on that device without editing a test. Matmul and
conv precision are pinned to full float32 ("highest" in JAX, no TF32 in torch, dtype="auto" resolves to float32),
so the tolerances stated in the tests hold on GPU/TPU too.
"""

from __future__ import annotations

import os

import jax
import pytest

jax.config.update("jax_default_matmul_precision", "highest")
# Models built with the default dtype="auto" would compute in bfloat16 on a GPU; parity is a float32 statement.
os.environ["EFFNET_DTYPE"] = "float32"

DEVICE = os.environ.get("EFFNET_TEST_DEVICE", "cpu")
if DEVICE not in ("cpu", "cuda"):
    raise pytest.UsageError(f"EFFNET_TEST_DEVICE must be 'cpu' or 'cuda', got {DEVICE!r}")
jax.config.update("jax_default_device", jax.devices("cpu" if DEVICE == "cpu" else "gpu")[0])

try:
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
except ImportError:  # the torch-free tests in this folder still run
    torch = None


@pytest.fixture(scope="session")
def torch_device() -> str:
    return DEVICE
