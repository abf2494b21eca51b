"""Random weights for tests that must catch a wrong copy: every tensor random, BN statistics and counters too."""

from __future__ import annotations

import torch

import effnet_torch
from effnet_spec import stages_for


def random_twin(weight_source: str, seed: int = 0, *, variant: str = "b0", stages: int | None = None
                ) -> effnet_torch.EfficientNet:  # fmt: skip
    """A twin (b0 unless `variant`; its first `stages` rows of the variant's own stage table only, where the property
    does not need them all, as they compile several times faster) with every tensor random (BN statistics and
    counters too), so a wrong copy cannot pass."""
    torch.manual_seed(seed)
    rows = stages_for(variant) if stages is None else stages_for(variant)[:stages]  # V2's tables are not V1's
    net = effnet_torch.EfficientNet.from_name(variant, weight_source=weight_source, stages=rows)
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
