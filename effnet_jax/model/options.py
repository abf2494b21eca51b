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

__all__ = ["DTYPES", "DTYPE_CHOICES", "REMATS", "ModelOptions", "auto_dtype", "remat_compiler_options"]

# Spelled here once; this module imports jax only when an options object is made, so the training config
# (stdlib only) validates `dtype` and `remat` against the same tuples. "auto" is resolved when the options are made.
DTYPES = ("float32", "bfloat16")
DTYPE_CHOICES = ("auto", *DTYPES)
# Backends whose matrix units run bfloat16 at several times float32's rate; XLA CPU gains nothing from it.
BF16_BACKENDS = ("gpu", "tpu")
# "none": keep every activation for the backward pass. "block": keep only each block's input (MBConv or V2's
# Fused-MBConv) and recompute the block in the backward pass. "dots": as "block", but keep the 1x1 conv (matmul)
# outputs too, recomputing only BN, activations, the depthwise conv and SE (and a fused block's kxk conv).
REMATS = ("none", "block", "dots")


@dataclass(frozen=True, kw_only=True)
class ModelOptions:
    """Build options of `effnet_jax.EfficientNet`.

    Args:
        dtype: compute dtype of the convolutions, "float32", "bfloat16" (or the jnp dtype), or "auto": bfloat16 on
            GPU and TPU, float32 on CPU (`auto_dtype`). Parameters, BN statistics and arithmetic, pooling and the
            logits stay float32 whatever it is.
        depthwise_impl: formulation of the depthwise conv ("auto" picks per backend; see `effnet_jax.ops.depthwise`).
        remat: rematerialisation of each block in the backward pass (`REMATS`): less activation memory for
            more compute; the gradients are the same.
        scan: run each stage's repeated blocks as one `jax.lax.scan` (`effnet_jax.model.scan`): one compiled block
            per stage instead of one per block, for the compile time of the big variants; the same function.
    """

    dtype: str = "auto"
    depthwise_impl: str = "auto"
    remat: str = "none"
    scan: bool = False

    def __post_init__(self) -> None:
        import jax.numpy as jnp

        from ..ops.depthwise import IMPLS

        try:
            name = auto_dtype() if self.dtype == "auto" else jnp.dtype(self.dtype).name
        except TypeError:
            name = repr(self.dtype)
        if name not in DTYPES:
            raise ValueError(f"ModelOptions: dtype must be auto, float32 or bfloat16, got {name}")
        object.__setattr__(self, "dtype", name)
        if self.remat not in REMATS:
            raise ValueError(f"ModelOptions: remat must be one of {REMATS}, got {self.remat!r}")
        if not isinstance(self.scan, bool):
            raise ValueError(f"ModelOptions: scan must be True or False, got {self.scan!r}")
        if self.depthwise_impl != "auto" and self.depthwise_impl not in IMPLS:
            raise ValueError(
                f"ModelOptions: depthwise_impl must be 'auto' or one of {IMPLS}, got {self.depthwise_impl!r}"
            )

    @property
    def compute_dtype(self) -> jnp.dtype:
        import jax.numpy as jnp

        return jnp.dtype(self.dtype)


def auto_dtype() -> str:
    """What dtype="auto" computes in here: `$EFFNET_DTYPE` if set, else bfloat16 on GPU/TPU and float32 on CPU."""
    import jax

    from .. import env

    name = env.text(env.DTYPE, "auto")
    if name == "auto":
        return "bfloat16" if jax.default_backend() in BF16_BACKENDS else "float32"
    if name not in DTYPES:
        raise ValueError(f"{env.DTYPE}={name!r} is not a compute dtype; expected one of {DTYPE_CHOICES}")
    return name


def remat_compiler_options(remat: str) -> dict[str, str]:
    """XLA options for jitting a train step of a model built with `remat`: pass them as `jax.jit(...,
    compiler_options=...)`.

    `jax.checkpoint` keeps its recomputation apart from the forward pass with optimization barriers. XLA CPU lowers
    those barriers away before its common-subexpression pass, which then merges the recomputation back into the
    forward pass: every activation is kept and remat saves nothing. Keeping the barriers on CPU (GPU and TPU keep them
    anyway) restores the saving; the option is a no-op without remat.
    """
    import jax

    if remat == "none" or jax.default_backend() != "cpu":
        return {}
    return {"xla_disable_hlo_passes": "cse_barrier_expander"}
