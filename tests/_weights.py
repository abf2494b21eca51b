"""Random weights for tests that must catch a wrong copy: every tensor random, BN statistics and counters too."""

from __future__ import annotations

import torch

import effnet_torch


def random_twin(weight_source: str, seed: int = 0) -> effnet_torch.EfficientNet:
    """A b0 twin with every tensor random (BN statistics and counters too), so a wrong copy cannot pass."""
    torch.manual_seed(seed)
    net = effnet_torch.EfficientNet.from_name("b0", weight_source=weight_source)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if name.endswith("running_var"):
                t.uniform_(0.5, 2.0)
            elif name.endswith("running_mean"):
                t.normal_(0, 0.1)
            elif name.endswith("num_batches_tracked"):
                t.fill_(1234)
            elif name.endswith("bias"):
                t.normal_(0, 0.05)
    return net.eval()
