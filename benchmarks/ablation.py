"""Question: does each CPU formulation and native kernel effnet_jax chose still pay for itself inside the whole model?

Builds b0 once per variant, each with exactly one choice swapped back to the plain formulation (everything else as
shipped), and times them interleaved round by round in one process (train step: `effnet bench`'s; inference: eval
forward), so machine load hits all variants alike:

- ``effnet``: everything as shipped.
- ``1x1 as lax conv``: `ops.dense.pointwise_conv` replaced by `lax.conv_general_dilated`.
- ``BN+act by autodiff``: `ops.bn_act.batch_norm_act` replaced by `batch_norm_act_reference` (neither the
  closed-form backward nor the native kernels).
- ``BN+act native off``: the closed-form BN + activation on XLA's formulation instead of `native.bn_act_*`.
- ``stem conv in XLA``: the stem by `lax.conv` instead of `native.dense_small_cin_*` (`dense.SMALL_CIN` = 0).
- ``depthwise fwd in XLA``: `shift_vjp`'s forward by XLA's taps instead of `native.depthwise_conv`.
- ``depthwise kgrad in XLA``: `shift_vjp`'s kernel gradient by XLA instead of `native.depthwise_kernel_grad`.
- ``depthwise shift (autodiff)``: `depthwise_impl="shift"` instead of `shift_vjp` (the formulation, with its native
  forward and kernel gradient).
- ``depthwise grouped``: `depthwise_impl="grouped"` (XLA's own; inference only unless --grouped-train, as
  its gradient is very slow on CPU).

Run from the repo root: `python benchmarks/ablation.py [--batch 32] [--res 224] [--reps 5] [--variants ...]`;
writes `benchmarks/results/ablation-<tag>.{json,md}`. Ratios > 1 mean the swapped-out choice is slower.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time


def _lax_pointwise(x, kernel):
    import jax

    return jax.lax.conv_general_dilated(x, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))


VARIANTS = {
    "effnet": ({}, "auto"),
    "1x1 as lax conv": ({"effnet_jax.ops.dense.pointwise_conv": _lax_pointwise}, "auto"),
    "BN+act by autodiff": (
        {"effnet_jax.model.layers.batch_norm_act": "effnet_jax.ops.bn_act.batch_norm_act_reference"},
        "auto",
    ),
    "BN+act native off": ({"effnet_jax.ops.bn_act._native_act": lambda x, act: (False, None)}, "auto"),
    "stem conv in XLA": ({"effnet_jax.ops.dense.SMALL_CIN": 0}, "auto"),
    "depthwise fwd in XLA": (
        {"effnet_jax.ops.depthwise._forward_fastest": "effnet_jax.ops.depthwise._shift_forward"},
        "auto",
    ),
    "depthwise kgrad in XLA": (
        {"effnet_jax.ops.depthwise._kernel_grad_fastest": "effnet_jax.ops.depthwise._kernel_grad"},
        "auto",
    ),
    "depthwise shift (autodiff)": ({}, "shift"),
    "depthwise grouped": ({}, "grouped"),
}


def native_calls(impl: str, res: int = 32, batch: int = 2) -> set[str]:
    """The native custom calls in b0's lowered train step (loss gradient) at a small size: what `--check` compares."""
    import re

    import jax
    import jax.numpy as jnp
    from flax import nnx

    from effnet_jax import EfficientNet, ModelOptions

    model = EfficientNet.from_name("b0", num_classes=10, rngs=nnx.Rngs(0), options=ModelOptions(depthwise_impl=impl))
    model.train()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    loss = lambda params, rest, x: jnp.sum(nnx.merge(graphdef, params, rest, copy=True)(x))  # noqa: E731
    x = jnp.ones((batch, res, res, 3), jnp.float32)
    return set(re.findall(r"@(effnet_\w+)", jax.jit(jax.grad(loss)).lower(params, rest, x).as_text()))


def check(names, patched) -> None:
    """Print, per variant, the native kernels its train step loses against the shipped one (lowered, not timed)."""
    with patched({}):
        base = native_calls("auto")
    print(f"effnet: {sorted(base)}")
    for name in names:
        patches, impl = VARIANTS[name]
        with patched(patches):
            calls = native_calls(impl)
        print(f"{name}: without {sorted(base - calls)}" + (f", with {sorted(calls - base)}" if calls - base else ""))


def main() -> int:
    sys.path.insert(0, os.getcwd())
    from benchmarks._run import add_host_memory_flag, apply_host_memory_flag, patched

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--res", type=int, default=224)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--modes", default="inference,train")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma list; 'effnet' is always run")
    parser.add_argument("--grouped-train", action="store_true")
    parser.add_argument("--check", action="store_true", help="list the native kernels each variant drops; no timing")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--tag", default="cpu")
    add_host_memory_flag(parser)
    args = parser.parse_args()
    apply_host_memory_flag(args)
    if args.check:
        check([v for v in args.variants.split(",") if v != "effnet"], patched)
        return 0
    from effnet_jax import ModelOptions
    from effnet_jax.bench.contenders import jax_inference, jax_train
    from effnet_jax.bench.harness import environment, interleaved
    from effnet_jax.bench.report import write_results

    env = environment("cpu")
    rows = []
    for mode in args.modes.split(","):
        runs = {}
        chosen = {"effnet", *args.variants.split(",")}
        for name, (patches, impl) in VARIANTS.items():
            if name not in chosen:
                continue
            if mode == "train" and impl == "grouped" and not args.grouped_train:
                continue
            t0 = time.perf_counter()
            build = jax_inference if mode == "inference" else jax_train
            with patched(patches):  # active while the builder traces and compiles, and the first call
                runs[name] = build("b0", args.res, args.batch, ModelOptions(depthwise_impl=impl))[0]
                runs[name]()  # allocation warm-up
            print(f"{mode:9s} {name:28s} built in {time.perf_counter() - t0:.1f} s", flush=True)
        times = interleaved(runs, args.reps)
        base = statistics.median(times["effnet"])
        for name, ts in times.items():
            med = statistics.median(ts)
            rows.append({"mode": mode, "variant": name, "median_s": med, "vs_effnet": med / base, "times_s": ts})
            print(f"{mode:9s} {name:28s} {med * 1e3:8.1f} ms  {med / base:5.2f}x", flush=True)
    head = f"b0@{args.res} batch {args.batch}, {args.reps} interleaved rounds" + (
        ", host memory retained" if args.retain_host_memory else ""
    )
    lines = [
        f"# Ablation: {head}",
        "",
        f"Machine: {env['cpu']}; jax {env['jax']}; load average at start {env['load_avg_start'][0]:.1f}.",
        "",
        "| mode | variant | median ms | time vs effnet |",
        "|---|---|---:|---:|",
    ]
    lines += [f"| {r['mode']} | {r['variant']} | {r['median_s'] * 1e3:.1f} | {r['vs_effnet']:.2f}x |" for r in rows]
    result = {"env": env, "batch": args.batch, "res": args.res, "rows": rows}
    write_results(args.out, f"ablation-{args.tag}", result, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
