"""Inference latency of a network, the cost the search trades accuracy against (besides FLOPs, which the spec
counts): one jitted eval-mode forward at a fixed batch, compiled and warmed first, then timed until enough time has
passed. Nothing here reads a run directory, so the search can also call it for a candidate it has not trained."""

from __future__ import annotations

import time

import numpy as np

__all__ = ["measure_latency"]

MIN_REPS = 5  # a median of fewer calls is one noisy sample


def measure_latency(spec, resolution: int, *, batch: int = 1, min_time_s: float = 0.3, options=None) -> dict:
    """Time `EfficientNet(spec)` in eval mode on a (batch, resolution, resolution, 3) float32 input.

    The weights are a random init (latency does not depend on their values). The forward is compiled and run once
    before timing; each timed call waits for its result (`block_until_ready`), and calls repeat until `min_time_s`
    has passed and at least `MIN_REPS` ran.

    Args:
        spec: an `effnet_spec.ModelSpec`.
        resolution: input side in pixels.
        batch: images per call.
        min_time_s: least total time spent in timed calls.
        options: `effnet_jax.ModelOptions` (dtype, depthwise formulation) as the model would run; None = defaults.

    Returns:
        {"latency_ms": median ms per call (per batch, not per image), "p90_ms": its 90th percentile, "batch",
        "resolution", "reps": timed calls, "compile_s": compile plus the first call}.

    Raises:
        ValueError: batch or resolution below 1.
    """
    if batch < 1 or resolution < 1:
        raise ValueError(f"measure_latency: batch and resolution must be >= 1; got {batch}, {resolution}")
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from ..model import EfficientNet

    model = EfficientNet(spec, rngs=nnx.Rngs(0), options=options)
    model.eval()
    graphdef, state = nnx.split(model)

    @jax.jit
    def forward(state, x):
        return nnx.merge(graphdef, state)(x)

    x = jnp.zeros((batch, resolution, resolution, 3), jnp.float32)
    t0 = time.perf_counter()
    forward(state, x).block_until_ready()
    compile_s = time.perf_counter() - t0
    times: list[float] = []
    while len(times) < MIN_REPS or sum(times) < min_time_s:
        t = time.perf_counter()
        forward(state, x).block_until_ready()
        times.append(time.perf_counter() - t)
    ms = np.asarray(times) * 1e3
    return {
        "latency_ms": float(np.median(ms)),
        "p90_ms": float(np.percentile(ms, 90)),
        "batch": batch,
        "resolution": resolution,
        "reps": len(times),
        "compile_s": round(compile_s, 3),
    }
