"""Training: config and presets (`config`), the input pipeline (`data`, `augment`), the optimizer and EMA
(`optim`), the model a config describes (`modeling`), the mesh (`mesh`), Orbax checkpoints (`checkpoint`),
reports (`metrics`), evaluation (`evaluate`); a run's workdir (`workdir`), data (`inputs`) and state, fresh or
restored (`state`); the train step (`step`) and the loop that runs them in order (`loop`).

`python -m effnet_jax.train` is `effnet train`. Names load on first use, so `config` stays importable without jax.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:  # the public names, each loaded from its submodule on first use (see effnet_jax._lazy)
    from .config import PRESETS, TrainConfig, from_preset  # noqa: F401
    from .loop import NonFiniteLoss, train  # noqa: F401

__getattr__, __dir__, __all__ = lazy_exports(__name__, __file__)
