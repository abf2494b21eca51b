"""Training: config and presets (`config`), the input pipeline (`data`, `augment`), the optimizer and EMA
(`optim`), the model a config describes (`modeling`), the mesh (`mesh`), Orbax checkpoints (`checkpoint`),
reports (`metrics`), evaluation (`evaluate`) and the loop that runs them in order (`loop`).

`python -m effnet_jax.train` is `effnet train`. Names load on first use, so `config` stays importable without jax.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "NonFiniteLoss": "loop",
    "train": "loop",
    "TrainConfig": "config",
    "from_preset": "config",
    "PRESETS": "config",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'effnet_jax.train' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value
