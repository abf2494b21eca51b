"""The two calls that go up the layers, which import only downward (model <- weights <- train).

`EfficientNet.from_pretrained` (model) reads weights with `effnet_jax.weights`, and a training run directory among
them with `effnet_jax.train`. Importing those from below would make the layers one import cycle, so the callers look
the functions up here, and `effnet_jax/__init__.py`, which Python runs before any of its submodules, sets them to
functions that import their providers on first call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from_pretrained: Callable[..., Any]  # effnet_jax.weights.pretrained.from_pretrained
read_run: Callable[..., Any]  # effnet_jax.train.runs.read_run: a run directory as a `Pretrained`
