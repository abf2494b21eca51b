"""Lossless conversion: torch -> JAX -> torch is bit-exact for every tensor, and checkpoints cross between twins.

Cases are (variant x padding convention). The round trip runs no forward pass (the NNX model is built abstractly
and filled), so even b3 is cheap; the checkpoint crossing runs one jitted JAX forward on a small input.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _twins import images, make_pair, max_abs
from flax import nnx

import effnet_jax
import effnet_torch
import effnet_torch.io as tio
from effnet_spec import STAGES, default_preprocessing, stages_for

# Eval logits of the twins, same bound as test_eval_parity.LOGITS_ATOL (the acceptance bound): float32 with
# precision pinned to "highest"; the twins differ only in summation order.
LOGITS_ATOL = 1e-4

CASES = {
    "b0-symmetric": ("b0", "effnet"),
    "lite0-tf_same": ("lite0", "timm_tf"),
    "b3-tf_same": ("b3", "timm_tf"),
    # V2: fused blocks (blocks.{i}.fused.*, with and without project) before MBConv ones. No forward pass, so whole
    # variants: the V2 base in torchvision's conventions, V2-S (expand-1 fused blocks with a residual) in TF's.
    "v2_b0-torchvision": ("v2_b0", "torchvision"),
    "v2_s-tf_same": ("v2_s", "timm_tf"),
}


def _bits(t: torch.Tensor) -> np.ndarray:
    """The raw bytes of a tensor, so -0.0 vs 0.0 and subnormals count as differences."""
    return t.detach().cpu().contiguous().numpy().reshape(-1).view(np.uint8)


def _torch_model(name: str, weights: str) -> torch.nn.Module:
    """A torch twin with BN in a non-trivial state: random affine and stats, distinct counters, special floats."""
    torch.manual_seed(0)
    tm = effnet_torch.EfficientNet.from_name(name, num_classes=10, weight_source=weights)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for i, m in enumerate(m for m in tm.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            c = m.num_features
            m.weight.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.copy_(torch.randn(c, generator=g) * 0.1)
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            m.num_batches_tracked.fill_(1000 * i + int(torch.randint(1, 999, (1,), generator=g)))
        # signed zero, subnormal, huge, smallest normal: a value-based comparison would miss a lost sign or flush
        tm.stem.bn.running_mean[:4] = torch.tensor(
            [-0.0, 1e-40, -3.0e7, 2.0**-126]
        )  # big, not absurd: |x| > 1e8 is refused on load
    return tm


@pytest.mark.parametrize("case", CASES)
def test_torch_jax_torch_is_bit_exact(case):
    name, weights = CASES[case]
    tm = _torch_model(name, weights).train()
    jm = effnet_jax.from_torch(tm)
    assert not jm.stem.bn.use_running_average, "from_torch keeps train mode"
    back = effnet_jax.to_torch(jm)
    assert back.training and back.spec == tm.spec
    want, got = tm.state_dict(), back.state_dict()
    assert list(got) == list(want)
    bad = [k for k in want if got[k].dtype != want[k].dtype or got[k].shape != want[k].shape]
    assert not bad, f"{case}: dtype/shape changed: {[(k, want[k].dtype, got[k].dtype) for k in bad[:3]]}"
    bad = [k for k in want if not np.array_equal(_bits(got[k]), _bits(want[k]))]
    assert not bad, f"{case}: tensors not bit-exact after the round trip: {bad[:5]}"
    counters = [k for k in want if k.endswith("num_batches_tracked")]
    assert all(got[k].dtype == torch.int64 for k in counters)
    assert int(got["head.bn.num_batches_tracked"]) == int(want["head.bn.num_batches_tracked"]) > 1000
    # The JAX side holds the values too (not only a pass-through): counter as int32, stats as float32.
    assert int(jm.head.bn.num_batches_tracked[...]) == int(want["head.bn.num_batches_tracked"])
    assert jm.head.bn.num_batches_tracked[...].dtype == np.int32
    # The copy is private: changing the torch model afterwards must not reach the JAX model.
    with torch.no_grad():
        tm.stem.bn.running_var.add_(1.0)
    assert not np.array_equal(np.asarray(jm.stem.bn.var[...]), tm.stem.bn.running_var.numpy())


@nnx.jit
def _logits(model, x):
    return model(x)


# Four stages keep the one JAX compile short; the header must then carry the custom stage table (V2: with each
# row's block kind, and torchvision V2's BN eps 1e-3).
CROSSING = {
    "lite0:4-timm_tf": ("lite0", "timm_tf", STAGES[:4]),
    "v2_b0:4-torchvision": ("v2_b0", "torchvision", stages_for("v2_b0")[:4]),
}


@pytest.mark.parametrize("case", CROSSING)
def test_checkpoints_cross_between_twins(tmp_path, case):
    """torch save -> JAX load (logits within the eval bound); JAX save -> torch load (every tensor equal)."""
    name, weights, stages = CROSSING[case]
    tm, _ = make_pair(name, weight_source=weights, stages=stages)
    tm.eval()
    xt, xj = images((2, 3, 33, 47), seed=3)
    with torch.no_grad():
        lt = tm(xt)
    assert float(lt.abs().max()) > 0.1, "logits too small for the absolute tolerance to mean anything"

    tio.save_checkpoint(tm, tmp_path / "from_torch.safetensors")
    jm = effnet_jax.load_checkpoint(tmp_path / "from_torch.safetensors")
    assert jm.spec == tm.spec and jm.preprocessing == default_preprocessing(tm.spec)
    d = max_abs(lt, _logits(jm, xj))
    assert d <= LOGITS_ATOL, f"JAX model loaded from a torch checkpoint: logits max|diff| {d:.3g}"

    effnet_jax.save_checkpoint(jm, tmp_path / "from_jax.safetensors")
    back = tio.load_checkpoint(tmp_path / "from_jax.safetensors")
    assert back.spec == tm.spec and not back.training
    want, got = tm.state_dict(), back.state_dict()
    bad = [k for k in want if got[k].dtype != want[k].dtype or not torch.equal(got[k].cpu(), want[k].cpu())]
    assert not bad, f"torch model loaded from a JAX checkpoint differs: {bad[:5]}"
    with torch.no_grad():
        assert torch.equal(back(xt.cpu()), tm.cpu()(xt.cpu())), "same weights, same torch ops: identical logits"
