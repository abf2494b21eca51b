"""effnet_jax: EfficientNet in Flax NNX, built from `effnet_spec`.

Importing this package is cheap: its names load on first use (PEP 562), so `effnet summary` and
`effnet_jax.ops.host_memory` run without importing jax, and torch, grain and orbax load only where needed.
Where each concern lives: docs/design.md, "Layout".
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import _hooks
from ._lazy import lazy_exports

if TYPE_CHECKING:  # the public names, each loaded from its sub-package on first use (see _lazy)
    from .model import EfficientNet, FusedMBConv, MBConv, ModelOptions, remat_compiler_options  # noqa: F401
    from .weights import (  # noqa: F401
        CheckpointMismatchError,
        from_torch,
        key_map,
        load_checkpoint,
        load_state_dict,
        model_from_state_dict,
        save_checkpoint,
        state_dict_from_model,
        to_torch,
    )

__getattr__, __dir__, __all__ = lazy_exports(__name__, __file__)


# The layers import downward (model <- weights <- train); the two calls that go up are wired here, above them all.
def _from_pretrained(source, **kwargs):
    from .weights.pretrained import from_pretrained

    return from_pretrained(source, **kwargs)


def _read_run(path, *, ema):
    from .train.runs import read_run

    return read_run(path, ema=ema)


_hooks.from_pretrained = _from_pretrained
_hooks.read_run = _read_run
