"""How a model is built and run, apart from what it is: one frozen object, so new options touch one signature.

The spec (`effnet_spec.ModelSpec`) says *what* the network is; `ModelOptions` says how this framework computes
it (precision, the depthwise formulation, and what comes next, such as rematerialisation). Options never change
the tensors of the twin contract, so a checkpoint loads under any options.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import jax.numpy as jnp

__all__ = ["DTYPES", "ModelOptions"]

# Spelled here once; this module imports jax only when an options object is made, so the training config
# (stdlib only) validates `dtype` against the same tuple.
DTYPES = ("float32", "bfloat16")


@dataclass(frozen=True, kw_only=True)
class ModelOptions:
    """Build options of `effnet_jax.EfficientNet`.

    Args:
        dtype: compute dtype of the convolutions, "float32" or "bfloat16" (or the jnp dtype); parameters, BN
            statistics, pooling and the logits stay float32.
        depthwise_impl: formulation of the depthwise conv ("auto" picks per backend; see `effnet_jax.ops.depthwise`).
    """

    dtype: str = "float32"
    depthwise_impl: str = "auto"

    def __post_init__(self) -> None:
        import jax.numpy as jnp

        from ..ops.depthwise import IMPLS

        try:
            name = jnp.dtype(self.dtype).name
        except TypeError:
            name = repr(self.dtype)
        if name not in DTYPES:
            raise ValueError(f"ModelOptions: dtype must be float32 or bfloat16, got {name}")
        object.__setattr__(self, "dtype", name)
        if self.depthwise_impl != "auto" and self.depthwise_impl not in IMPLS:
            raise ValueError(
                f"ModelOptions: depthwise_impl must be 'auto' or one of {IMPLS}, got {self.depthwise_impl!r}"
            )

    @property
    def compute_dtype(self) -> jnp.dtype:
        import jax.numpy as jnp

        return jnp.dtype(self.dtype)
