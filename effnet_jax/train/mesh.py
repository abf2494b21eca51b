"""The device mesh of a run: joining a multi-host job, one `data` axis over every device, and global batches.

State is replicated (`P()`) and the batch sharded along `data` (`P('data')`), so BN statistics are computed over
the global batch; each host feeds its own contiguous slice of rows.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from .config import TrainConfig
from .metrics import note

__all__ = ["init_distributed", "make_mesh", "to_global"]


def init_distributed(cfg: TrainConfig) -> None:
    """Join the multi-host job: auto-detected on TPU pods/SLURM, or from coordinator/num_processes/process_id.

    Each of the three that is set is passed on, and the cluster detection fills in the others (`TrainConfig`
    refuses them without distributed=true, so none is ever silently ignored).
    """
    kwargs = {
        "coordinator_address": cfg.coordinator or None,
        "num_processes": cfg.num_processes or None,
        "process_id": cfg.process_id if cfg.process_id >= 0 else None,
    }
    jax.distributed.initialize(**{k: v for k, v in kwargs.items() if v is not None})


def make_mesh(cfg: TrainConfig) -> Mesh:
    """A 1-D mesh over every device of every host; the global batch is split along its `data` axis."""
    devices = np.array(jax.devices())
    if cfg.global_batch % devices.size or cfg.eval_batch % devices.size:
        raise ValueError(
            f"global_batch {cfg.global_batch} and eval_batch {cfg.eval_batch} must be multiples of the "
            f"{devices.size} devices"
        )
    note(f"mesh: {devices.size} {jax.default_backend()} device(s) on {jax.process_count()} process(es)")
    return Mesh(devices, ("data",))


def to_global(batch: dict, mesh: Mesh) -> dict:
    """Process-local numpy rows -> global arrays sharded along `data` (rows of process p are slice p)."""
    sharding = NamedSharding(mesh, P("data"))
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}
