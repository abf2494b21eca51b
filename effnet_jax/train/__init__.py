"""Training: config and presets (`config`), the input pipeline (`data`, `augment`), the optimizer and EMA
(`optim`), the model a config describes (`modeling`), the mesh (`mesh`), Orbax checkpoints (`checkpoint`),
reports (`metrics`), evaluation (`evaluate`); a run's workdir (`workdir`), data (`inputs`) and state, fresh or
restored (`state`); the train step (`step`) and the loop that runs them in order (`loop`).

`python -m effnet_jax.train` is `effnet train`. Names load on first use, so `config` stays importable without jax.
"""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "NonFiniteLoss": "loop",
    "train": "loop",
    "TrainConfig": "config",
    "from_preset": "config",
    "PRESETS": "config",
}
__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)
