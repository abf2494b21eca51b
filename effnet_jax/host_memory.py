"""Deprecated: `effnet_jax.host_memory` is now `effnet_jax.ops.host_memory`. Kept because the README used it."""

import sys
import warnings

from .ops import host_memory

warnings.warn(
    "effnet_jax.host_memory is deprecated; import effnet_jax.ops.host_memory", DeprecationWarning, stacklevel=2
)
sys.modules[__name__] = host_memory  # the same module object: its state (`retained`) is shared, not copied
