"""Live conversion between the twins: an `effnet_torch.EfficientNet` in, an `effnet_jax.EfficientNet` out, and back.

Both go through the interchange state_dict, so they are bit-exact for every tensor (BN statistics included) and
keep the train/eval mode. Torch is imported here only, inside the functions.
"""

from __future__ import annotations

from flax import nnx

from ..model import EfficientNet, ModelOptions
from .state import _check_model, model_from_state_dict, state_dict_from_model

__all__ = ["from_torch", "to_torch"]


def from_torch(torch_model, *, rngs: nnx.Rngs | None = None, options: ModelOptions | None = None) -> EfficientNet:
    """An NNX twin of a live `effnet_torch.EfficientNet`: same spec, same weights, same train/eval mode."""
    import effnet_torch

    if not isinstance(torch_model, effnet_torch.EfficientNet):
        raise TypeError(f"from_torch expects an effnet_torch.EfficientNet, got {type(torch_model).__name__}")
    sd = {k: v.detach().cpu().numpy() for k, v in torch_model.state_dict().items()}
    model = model_from_state_dict(torch_model.spec, sd, rngs=rngs, options=options)
    model.preprocessing = torch_model.preprocessing
    if torch_model.training:
        model.train()
    else:
        model.eval()
    return model


def to_torch(model: EfficientNet):
    """A live `effnet_torch.EfficientNet` twin of `model`: same spec, same weights, same train/eval mode."""
    import torch

    import effnet_torch

    _check_model(model, "to_torch")
    torch_model = effnet_torch.EfficientNet(model.spec)
    sd = {k: torch.from_numpy(v) for k, v in state_dict_from_model(model).items()}
    effnet_torch.load_state_dict_checked(torch_model, sd)
    torch_model.preprocessing = model.preprocessing
    torch_model.train(model.training)
    return torch_model
