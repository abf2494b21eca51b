"""Question: does train-mode BN + activation as one native call per direction speed up the b0 train step on CPU?

The CPU profile (`results/profile-cpu.md`, issue 16 part 3) puts XLA's BN + activation passes of the b0@224
batch-32 train step at 245 ms forward and 346 ms backward against torch's 154 / 247 ms. `bn_act.batch_norm_act`
now runs, on CPU in float32, `native.bn_act_forward` / `bn_act_backward` (`effnet_jax/ops/csrc/bn_act.cc`): the
statistics and `act(x * a + b)` in one call, the closed-form backward in another. Both are timed here against
the XLA formulation they replace (same function; inference is unaffected: eval-mode BN uses the running averages):

1. **micro**: `batch_norm_act` with SiLU alone at b0's shapes, forward and forward + backward (a VJP with a fixed
   output gradient), interleaved; max rel diff of every output against XLA's.
2. **model**: b0@224 batch 32 float32 train step (forward, backward, SGD momentum) with the native BN and with
   XLA's (`profile_cpu.build_jax`, the same step `effnet bench` builds), and the torch twin eager channels_last,
   all three interleaved in one process, `--rounds` rounds of `--reps` calls.

Run from the repo root under tcmalloc, holding the machine to yourself:
`LD_PRELOAD=/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 python benchmarks/bn_act.py [--parts micro,model]
[--reps 5] [--rounds 3]`; writes `benchmarks/results/bn-act-<tag>.{json,md}`.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

# (N, H, W, C) of b0@224 batch 32's BN layers, one of each kind of stage.
SHAPES = [(32, 112, 112, 32), (32, 112, 112, 96), (32, 56, 56, 144), (32, 28, 28, 240), (32, 14, 14, 480),
          (32, 7, 7, 1152)]  # fmt: skip
_XLA = {"effnet_jax.ops.bn_act._native_act": lambda x, act: (False, None)}


def run_micro(args):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from benchmarks.ablation import _patched
    from effnet_jax.bench.harness import interleaved
    from effnet_jax.ops import bn_act

    rows = []
    rng = np.random.default_rng(0)
    for shape in SHAPES:
        x = jnp.asarray(rng.standard_normal(shape) * 2 + 0.5, jnp.float32)
        g = jnp.asarray(rng.standard_normal(shape), jnp.float32)
        scale = jnp.asarray(rng.uniform(0.5, 2.0, shape[-1]), jnp.float32)
        bias = jnp.asarray(rng.standard_normal(shape[-1]), jnp.float32)

        def make(part):  # a new function per build: jit would reuse the trace of a function it has seen
            def forward(xs, s, b):
                return bn_act.batch_norm_act(xs, s, b, 1e-3, jax.nn.silu)

            def both(xs, s, b, gs):
                out, vjp = jax.vjp(forward, xs, s, b)
                return out, vjp((gs, jnp.zeros_like(out[1]), jnp.zeros_like(out[2])))

            return forward if part == "forward" else both

        for part in ("forward", "forward + backward"):
            fargs = (x, scale, bias) if part == "forward" else (x, scale, bias, g)
            runs, outs = {}, {}
            for name, patches in (("xla", _XLA), ("native", {})):
                with _patched(patches):
                    compiled = jax.jit(make(part)).lower(*fargs).compile()
                outs[name] = [np.asarray(o, np.float64) for o in jax.tree_util.tree_leaves(compiled(*fargs))]
                runs[name] = lambda c=compiled, a=fargs: jax.block_until_ready(c(*a))
                runs[name]()
            times = interleaved(runs, args.reps)
            base = statistics.median(times["xla"])
            med = statistics.median(times["native"])
            errs = [float(np.max(np.abs(o - r)) / np.max(np.abs(r))) for o, r in zip(outs["native"], outs["xla"])]
            rows.append({"shape": list(shape), "part": part, "xla_ms": base * 1e3, "native_ms": med * 1e3,
                         "speedup": base / med, "max_rel_diff": max(errs)})  # fmt: skip
            print(f"micro {shape} {part:18s} xla {base * 1e3:7.1f} ms native {med * 1e3:7.1f} ms "
                  f"{base / med:5.2f}x max rel diff {max(errs):.1e}", flush=True)  # fmt: skip
    return rows


def run_model(args):
    import jax
    import numpy as np

    from benchmarks.ablation import _patched
    from benchmarks.profile_cpu import _reference_output, build_jax, build_torch
    from effnet_jax.bench.harness import interleaved

    runs, outs = {}, {}
    for name, patches in (("jax, XLA BN", _XLA), ("jax, native BN", {})):
        with _patched(patches):
            run, compiled, _, compile_s = build_jax("train", args.batch, args.res)
        runs[name] = run
        outs[name] = _reference_output("train", compiled, args)
        run()
        print(f"model {name:16s} compiled in {compile_s:.1f} s", flush=True)
    runs["torch eager CL"] = build_torch("train", args.batch, args.res)[0]
    runs["torch eager CL"]()
    rows = []
    for rnd in range(args.rounds):
        times = interleaved(runs, args.reps)
        med = {name: statistics.median(ts) for name, ts in times.items()}
        ref = outs["jax, XLA BN"]
        err = float(np.max(np.abs(outs["jax, native BN"] - ref)) / (np.max(np.abs(ref)) or 1))
        row = {"round": rnd + 1, **{f"{k} ms": v * 1e3 for k, v in med.items()},
               "native / XLA speed-up": med["jax, XLA BN"] / med["jax, native BN"],
               "jax native / torch": med["torch eager CL"] / med["jax, native BN"],
               "jax XLA / torch": med["torch eager CL"] / med["jax, XLA BN"], "max_rel_diff": err}  # fmt: skip
        rows.append(row)
        print("model round", rnd + 1, {k: round(v, 3) for k, v in row.items()}, flush=True)
    del runs
    jax.clear_caches()
    return rows


def markdown(env, args, micro, model) -> str:
    lines = [
        f"# Train-mode BN + activation, native vs XLA, on CPU: b0@{args.res} batch {args.batch} float32",
        "",
        f"Machine: {env['cpu']}, {env['cpu_count']} cores; jax {env['jax']}, torch {env.get('torch')}; commit "
        f"{env['git_sha']}; allocator {env['allocator']}; load average at start {env['load_avg_start'][0]:.1f}; "
        f"{env['date']}. `python benchmarks/bn_act.py` (args: {vars(args)}). Speed-up > 1: the native call is "
        "faster; jax / torch > 1: effnet_jax is faster than the torch twin (eager, channels_last).",
        "",
    ]
    if micro:
        lines += [
            "## `batch_norm_act` with SiLU alone (medians, interleaved)",
            "",
            "| shape | part | XLA ms | native ms | speed-up | max rel diff |",
            "|---|---|---:|---:|---:|---:|",
        ]
        lines += [f"| {tuple(r['shape'])} | {r['part']} | {r['xla_ms']:.1f} | {r['native_ms']:.1f} | "
                  f"{r['speedup']:.2f}x | {r['max_rel_diff']:.1e} |" for r in micro]  # fmt: skip
        lines.append("")
    if model:
        lines += [
            "## Whole train step (forward, backward, SGD momentum), three contenders interleaved",
            "",
            "Max rel diff: the loss and updated parameters after one step, native BN against XLA BN.",
            "",
            "| round | jax XLA BN ms | jax native BN ms | torch eager CL ms | native / XLA | jax native / torch | "
            "jax XLA / torch | max rel diff |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        lines += [f"| {r['round']} | {r['jax, XLA BN ms']:.0f} | {r['jax, native BN ms']:.0f} | "
                  f"{r['torch eager CL ms']:.0f} | {r['native / XLA speed-up']:.3f}x | "
                  f"{r['jax native / torch']:.3f}x | {r['jax XLA / torch']:.3f}x | {r['max_rel_diff']:.1e} |"
                  for r in model]  # fmt: skip
    return "\n".join(lines)


def main() -> int:
    sys.path.insert(0, os.getcwd())
    from benchmarks._run import ab_parser, parse_ab_args

    parser = ab_parser(__doc__.splitlines()[0])
    parser.add_argument("--parts", default="micro,model")
    args = parse_ab_args(parser)

    import torch

    from effnet_jax.bench.harness import environment
    from effnet_jax.bench.report import write_results

    env = environment("cpu")
    env["torch"] = torch.__version__
    t0 = time.perf_counter()
    micro = run_micro(args) if "micro" in args.parts else []
    model = run_model(args) if "model" in args.parts else []
    print(f"total {time.perf_counter() - t0:.0f} s")
    result = {"env": env, "args": vars(args), "micro": micro, "model": model}
    write_results(args.out, f"bn-act-{args.tag}", result, markdown(env, args, micro, model))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
