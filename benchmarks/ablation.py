"""Question: does each CPU formulation effnet_jax chose still pay for itself inside the whole model?

Builds b0 once per variant, each with one choice swapped back to the plain formulation, and times them
interleaved round by round in one process (train step: forward + backward + SGD momentum; inference: eval
forward), so machine load hits all variants alike:

- ``effnet``: everything as shipped.
- ``1x1 as lax conv``: `ops.dense.pointwise_conv` replaced by `lax.conv_general_dilated`.
- ``BN+act by autodiff``: `ops.bn_act.batch_norm_act` replaced by `batch_norm_act_reference`.
- ``depthwise kgrad in XLA``: the depthwise kernel gradient by XLA instead of the native kernel (`ops.native`).
- ``depthwise shift (autodiff)``: `depthwise_impl="shift"` instead of `shift_vjp`.
- ``depthwise grouped``: `depthwise_impl="grouped"` (XLA's own; inference only unless --grouped-train, as
  its gradient is very slow on CPU).

Run from the repo root: `python benchmarks/ablation.py [--batch 32] [--res 224] [--reps 5] [--variants ...]`;
writes `benchmarks/results/ablation-<tag>.{json,md}`. Ratios > 1 mean the swapped-out choice is slower.
"""

from __future__ import annotations

import argparse
import contextlib
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
    "depthwise kgrad in XLA": ({"effnet_jax.ops.native.available": lambda: False}, "auto"),
    "depthwise shift (autodiff)": ({}, "shift"),
    "depthwise grouped": ({}, "grouped"),
}


@contextlib.contextmanager
def _patched(patches: dict):
    """Set module attributes (values given as objects or as dotted names of objects) for the duration."""
    import importlib

    saved = []
    try:
        for target, value in patches.items():
            module, attr = target.rsplit(".", 1)
            mod = importlib.import_module(module)
            if isinstance(value, str):
                vmod, vattr = value.rsplit(".", 1)
                value = getattr(importlib.import_module(vmod), vattr)
            saved.append((mod, attr, getattr(mod, attr)))
            setattr(mod, attr, value)
        yield
    finally:
        for mod, attr, old in reversed(saved):
            setattr(mod, attr, old)


def main() -> int:
    sys.path.insert(0, os.getcwd())
    from benchmarks._run import add_host_memory_flag, apply_host_memory_flag

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--res", type=int, default=224)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--modes", default="inference,train")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma list; 'effnet' is always run")
    parser.add_argument("--grouped-train", action="store_true")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--tag", default="cpu")
    add_host_memory_flag(parser)
    args = parser.parse_args()
    apply_host_memory_flag(args)
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
            with _patched(patches):  # active while the builder traces and compiles
                runs[name] = build("b0", args.res, args.batch, ModelOptions(depthwise_impl=impl))[0]
            runs[name]()  # first call after compile: allocation warm-up
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
