"""Question: do native (C++) depthwise-conv forward / input-gradient kernels make effnet_jax faster on CPU, in b0?

The CPU profile (`results/profile-cpu.md`, issue 16) puts XLA's depthwise forward (the shifted-slice taps of
`ops.depthwise`'s ``shift_vjp``) at ~123 ms per b0@224 batch-32 train step against oneDNN's ~59 ms, and at
inference ~187 ms, where XLA fuses the preceding BN + SiLU into the tap loop and recomputes it once per tap.
`csrc/depthwise_fwd.cc` computes the same forward with a block of output pixels x channel vectors in registers.
`csrc/depthwise_dgrad.cc` does the same for the input gradient (the transposed conv, each input row gathering the
taps whose offset is divisible by the stride). Candidates (each the ``shift_vjp`` depthwise with pieces swapped;
the kernel gradient is the shipped one in all):

- ``xla taps``: forward and input gradient as XLA shifted slices (`depthwise._shift_forward`, `_input_grad`):
  the baseline of every ratio.
- ``native fwd``: the forward by `native.depthwise_conv`, the input gradient XLA's.
- ``native fwd + dgrad``: both native (`native.depthwise_input_grad` too, where
  `depthwise._native_input_grad_pays`: not for 3x3 stride 2); not shipped (`depthwise.NATIVE_INPUT_GRAD`).

Two parts, timed interleaved in one process (medians of `--reps`, the baseline in every round):

1. **micro**: one depthwise layer at b0@224 batch-32 shapes (`SHAPES`): the forward alone and after a BN +
   SiLU-like elementwise prologue (`silu(x * a + b)`, which XLA fuses into its taps and the native call cannot
   take), and the input gradient alone. Max rel diff of the output against the baseline.
2. **model**: b0@224 batch 32 float32, train step (forward, backward, SGD momentum) and inference, each candidate
   patched into `depthwise` and built beside the others (`profile_cpu.build_jax`), `--rounds` interleaved rounds of
   `--reps` calls; numerics compared on the logits / loss and updated parameters.

Run from the repo root under tcmalloc, holding the machine to yourself:
`LD_PRELOAD=/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 python benchmarks/depthwise_fwd.py [--parts micro,model]
[--reps 5] [--rounds 3] [--baseline "xla taps"] [--candidates ...]`; writes
`benchmarks/results/depthwise-fwd-<tag>.{json,md}`.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

# (H = W, C, k, stride) of b0@224's depthwise layers (one per kind); batch from --batch. Symmetric padding (k-1)/2.
SHAPES = [
    (112, 32, 3, 1),
    (112, 96, 3, 2),
    (56, 144, 3, 1),
    (56, 144, 5, 2),
    (28, 240, 5, 1),
    (28, 240, 3, 2),
    (14, 480, 3, 1),
    (14, 672, 5, 1),
    (14, 672, 5, 2),
    (7, 1152, 5, 1),
    (7, 1152, 3, 1),
]


# ---------------------------------------------------------------- candidates


def _xla_fwd(x, kernel, stride, padding):
    from effnet_jax.ops import depthwise

    return depthwise._shift_forward(x, kernel, stride, padding)


def _native_fwd(x, kernel, stride, padding):
    from effnet_jax.ops import native

    if not native.available():
        raise SystemExit("native kernels unavailable here: nothing to compare")
    return native.depthwise_conv(x, kernel, stride, padding)


def _xla_dgrad(g, kernel, stride, padding, in_h, in_w):
    from effnet_jax.ops import depthwise

    return depthwise._input_grad(g, kernel, stride, padding, in_h, in_w)


def _native_dgrad(g, kernel, stride, padding, in_h, in_w):
    from effnet_jax.ops import depthwise, native

    if not depthwise._native_input_grad_pays(kernel.shape, stride):
        return _xla_dgrad(g, kernel, stride, padding, in_h, in_w)
    if not native.available():
        raise SystemExit("native kernels unavailable here: nothing to compare")
    return native.depthwise_input_grad(g, kernel, stride, padding, in_h, in_w)


# name -> (forward as `depthwise._forward_fastest`, input gradient as `depthwise._input_grad_fastest`)
CANDIDATES = {
    "xla taps": (_xla_fwd, _xla_dgrad),
    "native fwd": (_native_fwd, _xla_dgrad),
    "native fwd + dgrad": (_native_fwd, _native_dgrad),
}
MICRO_PARTS = ("alone", "after BN+SiLU", "input grad")


# ---------------------------------------------------------------- micro


def run_micro(args, chosen):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from effnet_jax.bench.harness import interleaved

    rows = []
    for h, c, k, s in SHAPES:
        pad = ((k - 1) // 2, (k - 1) // 2)
        padding = (pad, pad)
        kx, kk, ka, kg = jax.random.split(jax.random.key(h * c + k), 4)
        x = jax.random.normal(kx, (args.batch, h, h, c), jnp.float32)
        kernel = jax.random.normal(kk, (k, k, 1, c), jnp.float32)
        scale, shift = jax.random.normal(ka, (2, c), jnp.float32)
        ho = (h + 2 * pad[0] - k) // s + 1
        g = jax.random.normal(kg, (args.batch, ho, ho, c), jnp.float32)
        for part in MICRO_PARTS:
            # each distinct implementation of this part once, under the first candidate that uses it
            which = 1 if part == "input grad" else 0
            names = [n for i, n in enumerate(chosen) if CANDIDATES[n][which] not in
                     [CANDIDATES[m][which] for m in chosen[:i]]]  # fmt: skip
            if len(names) < 2:
                continue
            runs, outs = {}, {}
            for name in names:
                fwd, dgrad = CANDIDATES[name]
                if part == "alone":
                    fn = jax.jit(lambda x, kk, a, b, g, fwd=fwd, s=s, p=padding: fwd(x, kk, s, p))
                elif part == "after BN+SiLU":
                    fn = jax.jit(lambda x, kk, a, b, g, fwd=fwd, s=s, p=padding: fwd(jax.nn.silu(x * a + b), kk, s, p))
                else:
                    fn = jax.jit(lambda x, kk, a, b, g, dgrad=dgrad, s=s, p=padding, h=h: dgrad(g, kk, s, p, h, h))
                call = (x, kernel, scale, shift, g)
                outs[name] = np.asarray(fn(*call), np.float64)
                runs[name] = lambda fn=fn, call=call: jax.block_until_ready(fn(*call))
                runs[name]()
            times = interleaved(runs, args.reps)
            base = statistics.median(times[names[0]])
            ref = outs[names[0]]
            for name in names:
                med = statistics.median(times[name])
                err = float(np.max(np.abs(outs[name] - ref)) / np.max(np.abs(ref)))
                rows.append({"shape": [args.batch, h, h, c], "k": k, "stride": s, "part": part, "candidate": name,
                             "median_ms": med * 1e3, "speedup": base / med, "times_s": times[name],
                             "max_rel_diff": err})  # fmt: skip
                print(f"micro {h:3d}x{h:<3d} C{c:<5d} k{k} s{s} {part:14s} {name:18s} {med * 1e3:8.2f} ms "
                      f"{base / med:6.2f}x  max rel diff {err:.1e}", flush=True)  # fmt: skip
    return rows


# ---------------------------------------------------------------- whole model


def run_model(args, chosen):
    import jax
    import numpy as np

    from benchmarks.ablation import _patched
    from benchmarks.profile_cpu import _reference_output, build_jax
    from effnet_jax.bench.harness import interleaved

    rows = []
    for mode in args.modes.split(","):
        runs, outs = {}, {}
        for name in chosen:
            fwd, dgrad = CANDIDATES[name]
            patches = {
                "effnet_jax.ops.depthwise._forward_fastest": fwd,
                "effnet_jax.ops.depthwise._input_grad_fastest": dgrad,
            }
            with _patched(patches):
                run, compiled, hlo, compile_s = build_jax(mode, args.batch, args.res)
                outs[name] = _reference_output(mode, compiled, args)
            calls = hlo.count("effnet_depthwise_fwd"), hlo.count("effnet_depthwise_dgrad")
            runs[name] = run
            run()
            print(
                f"model {mode:9s} {name:18s} compiled in {compile_s:.1f} s; native dw fwd/dgrad calls {calls}",
                flush=True,
            )
        for rnd in range(args.rounds):
            times = interleaved(runs, args.reps)
            base = statistics.median(times[chosen[0]])
            ref = outs[chosen[0]]
            for name, ts in times.items():
                med = statistics.median(ts)
                err = float(np.max(np.abs(outs[name] - ref)) / (np.max(np.abs(ref)) or 1))
                rows.append({"mode": mode, "round": rnd + 1, "candidate": name, "median_ms": med * 1e3,
                             "speedup": base / med, "times_s": ts, "max_rel_diff": err})  # fmt: skip
                print(f"model {mode:9s} round {rnd + 1} {name:18s} {med * 1e3:8.1f} ms {base / med:6.3f}x  "
                      f"max rel diff {err:.1e}", flush=True)  # fmt: skip
        del runs
        jax.clear_caches()
    return rows


def markdown(env, args, micro, model) -> str:
    lines = [
        f"# Native depthwise forward / input gradient on CPU: b0@{args.res} batch {args.batch} float32",
        "",
        f"Machine: {env['cpu']}, {env['cpu_count']} cores; jax {env['jax']}, flax {env['flax']}; commit "
        f"{env['git_sha']}; allocator {env['allocator']}; load average at start {env['load_avg_start'][0]:.1f}; "
        f"{env['date']}. `python benchmarks/depthwise_fwd.py` (args: {vars(args)}). Speed-up = baseline "
        f"({args.baseline}) median / candidate median, interleaved in one process (> 1: the candidate is faster).",
        "",
    ]
    if micro:
        lines += [
            "## One depthwise layer (symmetric padding): forward alone / after a BN+SiLU-like prologue; input gradient",
            "",
            "Max rel diff: largest |candidate - baseline| over the largest |baseline| output (each part times each "
            "distinct implementation once: for the input gradient the baseline and `native fwd + dgrad`).",
            "",
            "| x (N, H, W, C) | k | stride | part | candidate | median ms | speed-up | max rel diff |",
            "|---|---:|---:|---|---|---:|---:|---:|",
        ]
        lines += [f"| {tuple(r['shape'])} | {r['k']} | {r['stride']} | {r['part']} | {r['candidate']} | "
                  f"{r['median_ms']:.2f} | {r['speedup']:.2f}x | {r['max_rel_diff']:.1e} |" for r in micro]  # fmt: skip
        lines.append("")
    if model:
        lines += [
            "## Whole model (each candidate patched into `depthwise._forward_fastest` / `_input_grad_fastest`)",
            "",
            "Max rel diff: the output (logits, or the loss and the updated parameters after one step) against the "
            "baseline build's, over its largest magnitude.",
            "",
            "| mode | round | candidate | median ms | speed-up | max rel diff |",
            "|---|---:|---|---:|---:|---:|",
        ]
        lines += [f"| {r['mode']} | {r['round']} | {r['candidate']} | {r['median_ms']:.1f} | {r['speedup']:.3f}x | "
                  f"{r['max_rel_diff']:.1e} |" for r in model]  # fmt: skip
    return "\n".join(lines)


def main() -> int:
    sys.path.insert(0, os.getcwd())
    from benchmarks._run import ab_parser, parse_ab_args

    parser = ab_parser(__doc__.splitlines()[0])
    parser.add_argument("--parts", default="micro,model")
    parser.add_argument("--modes", default="train,inference")
    parser.add_argument("--candidates", default=",".join(CANDIDATES), help="comma list; the baseline always runs")
    parser.add_argument("--baseline", default="xla taps", help="the candidate every ratio is taken against")
    args = parse_ab_args(parser)
    chosen = [args.baseline] + [c for c in args.candidates.split(",") if c and c != args.baseline]
    unknown = [c for c in chosen if c not in CANDIDATES]
    if unknown:
        raise SystemExit(f"unknown candidates {unknown}; known: {list(CANDIDATES)}")

    from effnet_jax.bench.harness import environment
    from effnet_jax.bench.report import write_results

    env = environment("cpu")
    t0 = time.perf_counter()
    micro = run_micro(args, chosen) if "micro" in args.parts else []
    model = run_model(args, chosen) if "model" in args.parts else []
    print(f"total {time.perf_counter() - t0:.0f} s")
    result = {"env": env, "args": vars(args), "micro": micro, "model": model}
    write_results(args.out, f"depthwise-fwd-{args.tag}", result, markdown(env, args, micro, model))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
