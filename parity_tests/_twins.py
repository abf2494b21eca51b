"""Helpers shared by the parity tests: twin pairs with the same weights, layout moves, comparisons."""

from __future__ import annotations

import os

import numpy as np
import torch
from flax import nnx

import effnet_jax
import effnet_torch

# Validated (and applied to JAX) by conftest.py. Not `from conftest import DEVICE`: with parity_tests/external in the
# same run, "conftest" in sys.modules may be that folder's.
DEVICE = os.environ.get("EFFNET_TEST_DEVICE", "cpu")


def make_pair(
    name: str, *, seed: int = 0, num_classes: int = 10, options=None, residual_gain: float = 1.0, **resolve_kwargs
):
    """(torch model, NNX model) holding the same weights, BN statistics randomised so eval outputs are O(1).

    Fresh BN stats (mean 0, var 1) would leave every running-statistic path untested. `options` builds the NNX
    model (`effnet_jax.ModelOptions`, e.g. `scan=True`). `residual_gain` scales the last BN's weight and bias in
    each residual block's branch, as trained networks keep their branches small against the residual stream: deep
    V2 stacks with O(1) branches grow the stream to 1e3..1e9, where float32 itself loses the digits (see
    test_eval_parity.V2_RESIDUAL_GAIN).
    """
    torch.manual_seed(seed)
    tm = effnet_torch.EfficientNet.from_name(name, num_classes=num_classes, **resolve_kwargs)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in tm.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
        if residual_gain != 1.0:
            for b, block in zip(tm.spec.blocks, tm.blocks):
                if b.residual:
                    last = [m for m in block.modules() if isinstance(m, torch.nn.BatchNorm2d)][-1]
                    last.weight.mul_(residual_gain)
                    last.bias.mul_(residual_gain)
    tm.to(DEVICE)
    return tm, effnet_jax.from_torch(tm, options=options)


def images(shape_nchw: tuple[int, ...], seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """The same random batch for both twins: torch NCHW on DEVICE, numpy NHWC."""
    x = np.random.default_rng(seed).standard_normal(shape_nchw).astype(np.float32)
    return torch.from_numpy(x).to(DEVICE), x.transpose(0, 2, 3, 1)


def nhwc(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().transpose(0, 2, 3, 1)


def np_(t) -> np.ndarray:
    return t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)


def max_abs(a, b) -> float:
    a, b = np_(a), np_(b)
    assert a.shape == b.shape, f"shapes differ: {a.shape} vs {b.shape}"
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def torch_state(tm) -> dict[str, np.ndarray]:
    return {k: np_(v) for k, v in tm.state_dict().items()}


def grads_as_torch(model, grads) -> dict[str, np.ndarray]:
    """An nnx.grad result as torch-layout arrays keyed by the torch names (via the conversion's key map)."""
    holder = nnx.clone(model)
    nnx.update(holder, grads)
    sd = effnet_jax.state_dict_from_model(holder)
    params = {e.torch_key for e in effnet_jax.key_map(model.spec) if e.jax_path[-1] in PARAM_LEAVES}
    return {k: v for k, v in sd.items() if k in params}


PARAM_LEAVES = ("kernel", "scale", "bias")  # nnx.Param leaves; mean/var/num_batches_tracked are BatchStats


def worst(diffs: dict[str, float]) -> str:
    k = max(diffs, key=diffs.get)
    return f"worst {k}: {diffs[k]:.3g}"
