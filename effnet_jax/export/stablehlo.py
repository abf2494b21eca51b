"""StableHLO through `jax.export`: the eval-mode forward with a symbolic batch, weights inside, for JAX-free serving.

The artifact is `jax.export.Exported.serialize()`: the StableHLO module with its calling convention (input
(batch, H, W, C) float32 NHWC, output (batch, classes) float32). Load it with `load` or, without effnet, with
`jax.export.deserialize(open(path, "rb").read()).call(x)`; a C++ server reads the same module through the PJRT
C API. The depthwise convolution is XLA's grouped conv when any accelerator is a target (their compilers run it
fastest) and the CPU formulation of `effnet_jax.ops.depthwise` when only the CPU is.
"""

from __future__ import annotations

import os

import numpy as np

__all__ = ["LAYOUT", "NAMES", "PLATFORMS", "load", "run", "serialize"]

LAYOUT = "NHWC"
NAMES = ("x", "logits")
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")


def check_platforms(platforms) -> tuple[str, ...]:
    """The platforms, validated: a non-empty subset of `PLATFORMS`, in the order given."""
    if isinstance(platforms, str):
        platforms = [p.strip() for p in platforms.split(",") if p.strip()]
    platforms = tuple(platforms)
    bad = [p for p in platforms if p not in PLATFORMS]
    if bad or not platforms:
        raise ValueError(f"stablehlo platforms must be some of {', '.join(PLATFORMS)}, got {','.join(platforms)!r}")
    return platforms


def serialize(model, size: tuple[int, int], *, platforms=("cpu",)) -> bytes:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from ..model import ModelOptions
    from ..weights import model_from_state_dict, state_dict_from_model

    platforms = check_platforms(platforms)
    impl = "shift" if platforms == ("cpu",) else "grouped"
    net = model_from_state_dict(model.spec, state_dict_from_model(model), options=ModelOptions(depthwise_impl=impl))
    net.preprocessing = model.preprocessing
    net.eval()
    graphdef, state = nnx.split(net)

    def forward(x):
        return nnx.merge(graphdef, state)(x)

    (batch,) = jax.export.symbolic_shape("batch")
    shape = jax.ShapeDtypeStruct((batch, *size, model.spec.in_channels), jnp.float32)
    return bytes(jax.export.export(jax.jit(forward), platforms=platforms)(shape).serialize())


def load(path_or_bytes: str | os.PathLike | bytes):
    """The `jax.export.Exported` in a file written by `export(..., format="stablehlo")`; call it with `.call(x)`."""
    import jax

    data = path_or_bytes
    if not isinstance(data, (bytes, bytearray)):
        with open(data, "rb") as f:
            data = f.read()
    return jax.export.deserialize(bytearray(data))


def run(data: bytes, x: np.ndarray) -> np.ndarray:
    return np.asarray(load(data).call(x))
