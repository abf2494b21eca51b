"""Deprecated: `effnet_jax.convert` is now `effnet_jax.weights` (same names). Kept because the README used it."""

import sys
import warnings

from . import weights

warnings.warn("effnet_jax.convert is deprecated; import from effnet_jax.weights", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = weights
