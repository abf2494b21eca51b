"""StableHLO through `jax.export`: the eval-mode forward with a symbolic batch, weights inside, for serving with JAX
(or any runtime that takes a jax.export artifact) without effnet or the model's Python code.

The artifact is `jax.export.Exported.serialize()`: the StableHLO module with its calling convention (input
(batch, H, W, C) float32 NHWC, output (batch, classes) float32), read back by JAX: `load` here or, without effnet,
`jax.export.deserialize(open(path, "rb").read()).call(x)`. (The module inside, `Exported.mlir_module()`, has a
symbolic batch that JAX refines at call time; other StableHLO consumers would have to do
the same.) The depthwise convolution is XLA's grouped conv when any accelerator is a target (their compilers run it
fastest) and the CPU formulation of `effnet_jax.ops.depthwise` when only the CPU is.
"""

from __future__ import annotations

import os

import numpy as np

__all__ = ["LAYOUT", "NAMES", "PLATFORMS", "check_options", "describe", "load", "run", "serialize"]

LAYOUT = "NHWC"
NAMES = ("x", "logits")
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")


def check_options(*, verify: bool, platforms=("cpu",)) -> dict:
    """The platforms, validated: a non-empty subset of `PLATFORMS` (order kept, repeats dropped). Verification runs
    the CPU lowering, so it needs cpu among them."""
    if isinstance(platforms, str):
        platforms = [p.strip() for p in platforms.split(",") if p.strip()]
    platforms = tuple(dict.fromkeys(platforms))
    bad = [p for p in platforms if p not in PLATFORMS]
    if bad or not platforms:
        raise ValueError(f"stablehlo platforms must be some of {', '.join(PLATFORMS)}, got {','.join(platforms)!r}")
    if verify and "cpu" not in platforms:
        raise ValueError(
            f"cannot verify a stablehlo export for {','.join(platforms)}: verification runs the cpu lowering, so "
            "add cpu to the platforms, or skip it (--no-verify)"
        )
    return {"platforms": platforms}


def serialize(model, size: tuple[int, int], *, platforms=("cpu",)) -> bytes:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from ..model import ModelOptions
    from ..weights import model_from_state_dict, state_dict_from_model

    impl = "shift" if platforms == ("cpu",) else "grouped"
    net = model_from_state_dict(
        model.spec, state_dict_from_model(model), options=ModelOptions(dtype="float32", depthwise_impl=impl)
    )
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
    """The artifact's CPU lowering on `x` (on any machine)."""
    import jax

    cpu = jax.devices("cpu")[0]
    with jax.default_device(cpu):
        return np.asarray(load(data).call(jax.device_put(x, cpu)))


def describe(data: bytes) -> dict:
    return {"platforms": list(load(data).platforms)}
