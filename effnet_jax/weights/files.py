"""effnet checkpoint files: the interchange state_dict as safetensors with the `effnet_spec` JSON header.

Loading needs numpy and safetensors only (torch is never imported) and is strict: a file whose tensors do not fit
its own header fails with every problem listed, and nothing is partially loaded (docs/design.md, "Weights").
"""

from __future__ import annotations

import os

import numpy as np
from flax import nnx

from effnet_spec import ModelSpec, Preprocessing, make_header, read_header
from effnet_spec.atomic import write_atomic
from effnet_spec.contract import header_mismatch
from effnet_spec.paths import not_a_file

from ..model import EfficientNet, ModelOptions
from .state import _check_model, _got, model_from_state_dict, state_dict_from_model

__all__ = ["load_checkpoint", "read_checkpoint", "save_checkpoint"]


def save_checkpoint(model: EfficientNet, path: str | os.PathLike, preprocessing: Preprocessing | None = None) -> None:
    """Save `model` as an effnet checkpoint (interchange safetensors + JSON header), atomically.

    Args:
        preprocessing: stored in the header; defaults to `model.preprocessing`, then the family's default.
    """
    from safetensors.numpy import save

    _check_model(model, "save_checkpoint")
    meta = make_header(model.spec, preprocessing or model.preprocessing)
    write_atomic(path, save(state_dict_from_model(model), metadata=meta))


def read_checkpoint(path: str | os.PathLike) -> tuple[ModelSpec, dict[str, np.ndarray], Preprocessing]:
    """(spec, interchange state_dict, preprocessing) of an effnet checkpoint, read with numpy + safetensors.

    Raises:
        FileNotFoundError: no such file. ValueError: not a safetensors file, or a missing/malformed header.
        CheckpointMismatchError: tensors that do not fit the header (or hold NaN, inf or values beyond reason).
    """
    from safetensors import SafetensorError, safe_open

    path = os.fspath(path)
    problem = not_a_file(path)
    if problem == "no such file":
        raise FileNotFoundError(f"no checkpoint at {path}")
    if problem:  # a directory, /dev/zero or a named pipe: said as it is, and never opened (a pipe would block)
        raise ValueError(f"{path}: {problem}; expected an effnet .safetensors checkpoint")
    try:
        with safe_open(path, framework="np") as f:
            meta = f.metadata()
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a Mapping)
    except SafetensorError as e:
        raise ValueError(f"{path}: not a readable safetensors checkpoint: {e}") from e
    try:
        spec, pre = read_header(meta)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    error = header_mismatch(path, spec, {k: _got(np.asarray(v)) for k, v in state.items()})
    if error:  # checked on reading, so every command refuses a file that contradicts itself before it writes
        raise error
    return spec, state, pre


def load_checkpoint(
    path: str | os.PathLike, *, rngs: nnx.Rngs | None = None, options: ModelOptions | None = None
) -> EfficientNet:
    """Rebuild the model named by the checkpoint header and load its weights (strict, never partial).

    Needs numpy and safetensors only. The model is returned in eval mode, with `preprocessing` from the header.

    Raises:
        FileNotFoundError: no such file. ValueError: not a safetensors file, or a missing/malformed header.
        CheckpointMismatchError: the tensors do not fit the spec.
    """
    spec, state, pre = read_checkpoint(path)
    model = model_from_state_dict(spec, state, rngs=rngs, options=options)
    model.preprocessing = pre
    model.eval()
    return model
