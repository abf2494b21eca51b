"""Shared pytest setup: float32 compute for models built with dtype="auto"."""

from __future__ import annotations

import os

# Many tests compare effnet_jax with the torch twin or with stored numbers; on a GPU/TPU host "auto" would compute
# them in bfloat16. tests/test_precision.py unsets it where the per-backend choice is the subject.
os.environ["EFFNET_DTYPE"] = "float32"
