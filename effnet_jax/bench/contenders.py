"""Contender builders: each returns a `run()` that performs one synchronised call (jax, torch imported lazily).

JAX builders return `(run, compile_s, memory_mb)` (compile = `lower` + `compile` of the jitted function; memory
from the compiled executable, or None); torch builders return `run` alone (torch.compile compiles on the first
call, which the harness times as the warm-up). `matmul_peak` measures the float32 matmul rate of both.

The JAX train step is `effnet train`'s own (`jax_train_step`), so it also updates the EMA and checks the new state
for NaN/inf, which the torch step does not; optimizer and loss are the torch step's.
"""

from __future__ import annotations

import statistics
import time

from .harness import NUM_CLASSES, Row, interleaved, p90

__all__ = ["jax_inference", "jax_train", "jax_train_step", "matmul_peak", "torch_inference", "torch_train"]


# ---------------------------------------------------------------- jax


def _jax_model(variant: str, options, rngs):
    from effnet_jax import EfficientNet, ModelOptions

    options = options or ModelOptions(dtype="float32")  # the torch contenders run float32
    return EfficientNet.from_name(variant, num_classes=NUM_CLASSES, options=options, rngs=rngs)


def _jax_memory_mb(compiled) -> float | None:
    try:
        m = compiled.memory_analysis()
        return (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes) / 2**20
    except Exception:  # memory_analysis is optional per backend
        return None


def jax_inference(variant: str, res: int, batch: int, options=None):
    """effnet_jax eval-mode forward of a (batch, res, res, 3) float32 input, one jitted function.

    `options`: an `effnet_jax.ModelOptions` (default: float32, depthwise "auto")."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    model = _jax_model(variant, options, nnx.Rngs(0))
    model.eval()
    graphdef, state = nnx.split(model)

    @jax.jit
    def forward(state, x):
        return nnx.merge(graphdef, state)(x)

    x = jax.random.normal(jax.random.key(0), (batch, res, res, 3), jnp.float32)
    t0 = time.perf_counter()
    compiled = forward.lower(state, x).compile()
    compile_s = time.perf_counter() - t0
    mem = _jax_memory_mb(compiled)

    def run():
        compiled(state, x).block_until_ready()

    return run, compile_s, mem


def jax_train_step(variant: str, res: int, batch: int, options=None):
    """(step, batch): the step `effnet train` runs (`effnet_jax.train.step.standalone_step`: EMA, finiteness check,
    metrics, donated state) for a bench case, with the torch contenders' optimizer (SGD, momentum 0.9, lr 0.01, no
    weight decay) and loss (cross-entropy, no label smoothing), and a batch of random images and labels.

    `options`: an `effnet_jax.ModelOptions` (default: float32, depthwise "auto"), given to the run's config."""
    import jax
    import jax.numpy as jnp

    from effnet_jax import ModelOptions
    from effnet_jax.train.config import TrainConfig
    from effnet_jax.train.step import standalone_step

    options = options or ModelOptions(dtype="float32")  # the torch contenders run float32
    cfg = TrainConfig(
        variant=variant, resolution=res, global_batch=batch, eval_batch=batch, steps=1, data="synthetic",
        dtype=options.dtype, depthwise_impl=options.depthwise_impl, remat=options.remat, scan=options.scan,
        optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=0.0, label_smoothing=0.0, warmup_epochs=0.0,
    )  # fmt: skip
    images = jax.random.normal(jax.random.key(0), (batch, res, res, 3), jnp.float32)
    labels = jax.random.randint(jax.random.key(1), (batch,), 0, NUM_CLASSES)
    return standalone_step(cfg, NUM_CLASSES), {"image": images, "label": labels}


def jax_train(variant: str, res: int, batch: int, options=None):
    """effnet_jax train step: the one `effnet train` runs (`jax_train_step`), compiled once, state donated."""
    step, data = jax_train_step(variant, res, batch, options)
    compile_s = step.compile(data)
    mem = _jax_memory_mb(step.fn)

    def run():
        step(data)["loss"].block_until_ready()

    return run, compile_s, mem


# ---------------------------------------------------------------- torch


def _torch_sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _torch_model(variant: str, device: str, layout: str):
    import torch

    from effnet_torch import EfficientNet

    model = EfficientNet.from_name(variant, num_classes=NUM_CLASSES).to(device)
    if layout != "nchw":
        model = model.to(memory_format=torch.channels_last)
    return model


def _torch_input(batch: int, res: int, device: str, layout: str):
    import torch

    x = torch.randn(batch, 3, res, res, device=device)
    return x.contiguous(memory_format=torch.channels_last) if layout != "nchw" else x


def _autocast(device: str, amp: bool):
    """bfloat16 autocast (torch AMP) when `amp`, else nothing."""
    import contextlib

    import torch

    return torch.autocast(device, dtype=torch.bfloat16) if amp else contextlib.nullcontext()


def torch_inference(variant: str, res: int, batch: int, device: str, layout: str, compiled: bool, amp: bool = False):
    """effnet_torch eval forward under `inference_mode`; layout "nchw" or "cl" (channels_last); `amp`: bfloat16
    autocast."""
    import torch

    model = _torch_model(variant, device, layout).eval()
    fn = torch.compile(model) if compiled else model
    x = _torch_input(batch, res, device, layout)

    def run():
        with torch.inference_mode(), _autocast(device, amp):
            fn(x)
        _torch_sync(device)

    return run


def torch_train(variant: str, res: int, batch: int, device: str, layout: str, compiled: bool, amp: bool = False):
    """effnet_torch train step: forward + backward + SGD-momentum update (the whole step compiled if asked); `amp`:
    the forward under bfloat16 autocast (parameters, gradients and the update stay float32, as torch AMP does)."""
    import torch

    model = _torch_model(variant, device, layout).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = _torch_input(batch, res, device, layout)
    y = torch.randint(0, NUM_CLASSES, (batch,), device=device)

    def step():
        opt.zero_grad(set_to_none=True)
        with _autocast(device, amp):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    fn = torch.compile(step) if compiled else step

    def run():
        fn()
        _torch_sync(device)

    return run


# ---------------------------------------------------------------- matmul peak


def matmul_peak(size: int, reps: int, torch_device: str) -> list[Row]:
    """float32 square matmul GFLOP/s for jax and torch, interleaved."""
    import jax
    import jax.numpy as jnp
    import torch

    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    mm = jax.jit(lambda a: a @ a)
    mm(a).block_until_ready()
    ta = torch.randn(size, size, device=torch_device)
    torch.mm(ta, ta)
    _torch_sync(torch_device)

    def torch_mm():
        torch.mm(ta, ta)
        _torch_sync(torch_device)

    times = interleaved({"jax": lambda: mm(a).block_until_ready(), "torch": torch_mm}, reps)
    rows = []
    for name, ts in times.items():
        med = statistics.median(ts)
        gf = 2 * size**3 / med / 1e9
        rows.append(Row("matmul", f"{size}x{size}", size, 1, name, med, p90(ts), 0.0, gf, 1.0, None, None, reps))
    return rows
