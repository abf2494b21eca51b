"""Question: can the stem conv (3x3, stride 2, 3 -> 32 channels, NHWC) run fast on XLA CPU, same function?

The CPU profile (`results/profile-cpu.md`, issue 16 part 3) puts XLA's stem forward at 57-66 ms per b0@224
batch-32 call against oneDNN's ~7 ms, plus ~24 ms for its kernel gradient in the train step. Each candidate below
computes the same conv (`dense.dense_conv`'s contract: NHWC input, HWIO kernel, explicit padding) another way:

- ``lax conv``: `lax.conv_general_dilated`, what ships (the baseline of every ratio).
- ``space-to-depth``: the padded input rearranged 2x2 into (N, Ho+1, Wo+1, 4*C) and the 3x3 kernel zero-padded to
  4x4 and rearranged into an equivalent 2x2 stride-1 conv over 4*C channels (stride 2 only).
- ``Cin padded to 4`` / ``to 8``: input and kernel zero-padded along the input channels.
- ``native fwd``: a direct C++ loop (`effnet_jax/ops/csrc/dense_small_cin.cc`) through XLA FFI under a
  `jax.custom_vjp` whose backward is XLA's (the lax conv's VJP).
- ``native fwd + kgrad``: the same forward, and the kernel gradient by a second C++ loop (the input gradient,
  which the stem never needs, stays XLA's and is dropped by XLA when unused).
- ``library dense_conv``: `dense.dense_conv` as it now ships (the native pair above built into `ops.native`,
  dispatched for few input channels on CPU in float32): the adopted change, against the lax conv it replaced.

Two parts, each timed interleaved in one process (medians of `--reps`, the shipped baseline in every round):

1. **micro**: the stem alone at its exact shapes, x (32, 224, 224, 3) -> (32, 112, 112, 32), both paddings
   (symmetric ((1, 1), (1, 1)) and TF "same" ((0, 1), (0, 1))): the forward, and the forward + kernel gradient
   (a VJP with a fixed output gradient, as the train step runs it). Max rel diff against the lax conv.
2. **model**: b0@224 batch 32 float32, the train step (forward, backward, SGD momentum) and inference, each
   candidate patched into `dense_conv` and built beside the shipped model (`profile_cpu.build_jax`), `--rounds`
   interleaved rounds of `--reps` calls; numerics compared on the logits / loss and updated parameters.

Run from the repo root under tcmalloc, holding the machine to yourself:
`LD_PRELOAD=/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 python benchmarks/stem.py [--parts micro,model]
[--candidates ...] [--model-candidates ...] [--reps 5] [--rounds 3]`; writes `benchmarks/results/stem-<tag>.{json,md}`.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

PADDINGS = {"symmetric": ((1, 1), (1, 1)), "tf_same": ((0, 1), (0, 1))}


# ---------------------------------------------------------------- candidates (dense_conv's signature)


def _lax(x, kernel, stride, padding):
    from effnet_jax.ops import dense

    return dense._lax_conv(x, kernel, stride, padding)


def _space_to_depth(x, kernel, stride, padding):
    """A kh x kw stride-2 conv as a ceil(kh/2) x ceil(kw/2) stride-1 VALID conv of the 2x2 space-to-depth input."""
    import jax.numpy as jnp
    from jax import lax

    kh, kw, c, d = kernel.shape
    if stride != 2:
        return _lax(x, kernel, stride, padding)
    (pt, pb), (pl, pr) = padding
    n, h, w, _ = x.shape
    ho, wo = (h + pt + pb - kh) // 2 + 1, (w + pl + pr - kw) // 2 + 1
    uh, uw = (kh + 1) // 2, (kw + 1) // 2
    hp, wp = 2 * (ho + uh - 1), 2 * (wo + uw - 1)  # padded rows / columns the stride-1 conv reads
    xp = jnp.pad(x, ((0, 0), (pt, max(0, hp - h - pt)), (pl, max(0, wp - w - pl)), (0, 0)))[:, :hp, :wp]
    xs = xp.reshape(n, hp // 2, 2, wp // 2, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, hp // 2, wp // 2, 4 * c)
    k4 = jnp.pad(kernel, ((0, 2 * uh - kh), (0, 2 * uw - kw), (0, 0), (0, 0)))
    ks = k4.reshape(uh, 2, uw, 2, c, d).transpose(0, 2, 1, 3, 4, 5).reshape(uh, uw, 4 * c, d)
    return lax.conv_general_dilated(xs, ks, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _cin_padded(to):
    def conv(x, kernel, stride, padding):
        import jax.numpy as jnp

        c = x.shape[-1]
        if c >= to:
            return _lax(x, kernel, stride, padding)
        xp = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, to - c)))
        kp = jnp.pad(kernel, ((0, 0), (0, 0), (0, to - c), (0, 0)))
        return _lax(xp, kp, stride, padding)

    return conv


_LIB: dict = {}


def _native_lib():
    """Register the two dense_small_cin FFI targets of `ops.native`'s library (built if needed) under this script's
    own names (once), so the variants here do not depend on what `dense.dense_conv` picks."""
    if "ok" in _LIB:
        return
    import ctypes

    import jax

    from effnet_jax.ops import native

    lib = ctypes.CDLL(native._build())
    for target, symbol in (("effnet_bench_stem_fwd", "EffnetDenseSmallCinFwd"),
                           ("effnet_bench_stem_kgrad", "EffnetDenseSmallCinKgrad")):  # fmt: skip
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
    _LIB["ok"] = True


def _native(native_kgrad: bool):
    def conv(x, kernel, stride, padding):
        import jax
        import jax.numpy as jnp
        import numpy as np

        _native_lib()
        kh, kw, c, d = kernel.shape
        (pt, pb), (pl, pr) = padding
        n, h, w, _ = x.shape
        ho, wo = (h + pt + pb - kh) // stride + 1, (w + pl + pr - kw) // stride + 1
        attrs = dict(s=np.int64(stride), pt=np.int64(pt), pl=np.int64(pl))

        @jax.custom_vjp
        def f(x, kernel):
            out = jax.ShapeDtypeStruct((n, ho, wo, d), jnp.float32)
            return jax.ffi.ffi_call("effnet_bench_stem_fwd", out)(x, kernel, **attrs)

        def fwd(x, kernel):
            return f(x, kernel), (x, kernel)

        def bwd(res, g):
            x, kernel = res
            _, vjp = jax.vjp(lambda x, k: _lax(x, k, stride, padding), x, kernel)
            dx, dk = vjp(g)
            if native_kgrad:
                out = jax.ShapeDtypeStruct((kh, kw, c, d), jnp.float32)
                dk = jax.ffi.ffi_call("effnet_bench_stem_kgrad", out)(x, g, **attrs)
            return dx, dk

        f.defvjp(fwd, bwd)
        return f(x, kernel)

    return conv


def _library(x, kernel, stride, padding):
    from effnet_jax.ops import dense

    return dense.dense_conv(x, kernel, stride, padding)


CANDIDATES = {
    "lax conv": _lax,
    "space-to-depth": _space_to_depth,
    "Cin padded to 4": _cin_padded(4),
    "Cin padded to 8": _cin_padded(8),
    "native fwd": _native(False),
    "native fwd + kgrad": _native(True),
    "library dense_conv": _library,
}


# ---------------------------------------------------------------- micro


def run_micro(args, chosen):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from effnet_jax.bench.harness import interleaved

    n, res, c, d = args.batch, args.res, 3, 32
    kx, kk, kg = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (n, res, res, c), jnp.float32)
    kernel = jax.random.normal(kk, (3, 3, c, d), jnp.float32) * 0.3
    rows = []
    for pname, padding in PADDINGS.items():
        ho = (res + sum(padding[0]) - 3) // 2 + 1
        g = jax.random.normal(kg, (n, ho, ho, d), jnp.float32)
        for part in ("forward", "forward + kernel grad"):
            runs, outs = {}, {}
            for name in chosen:
                conv = CANDIDATES[name]
                if part == "forward":
                    fn = jax.jit(lambda x, k, conv=conv, padding=padding: conv(x, k, 2, padding))
                else:

                    def step(x, k, g, conv=conv, padding=padding):
                        y, vjp = jax.vjp(lambda k: conv(x, k, 2, padding), k)
                        return y, vjp(g)[0]

                    fn = jax.jit(step)
                args_ = (x, kernel) if part == "forward" else (x, kernel, g)
                out = fn(*args_)
                outs[name] = [np.asarray(o, np.float64) for o in jax.tree_util.tree_leaves(out)]
                runs[name] = lambda fn=fn, a=args_: jax.block_until_ready(fn(*a))
                runs[name]()
            times = interleaved(runs, args.reps)
            base = statistics.median(times[chosen[0]])
            for name in chosen:
                med = statistics.median(times[name])
                errs = [float(np.max(np.abs(o - r)) / np.max(np.abs(r))) for o, r in zip(outs[name], outs[chosen[0]])]
                row = {"padding": pname, "part": part, "candidate": name, "median_ms": med * 1e3,
                       "speedup": base / med, "times_s": times[name], "max_rel_diff": errs}  # fmt: skip
                rows.append(row)
                print(f"micro {pname:9s} {part:22s} {name:20s} {med * 1e3:8.2f} ms {base / med:6.2f}x  "
                      f"max rel diff {', '.join(f'{e:.1e}' for e in errs)}", flush=True)  # fmt: skip
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
            conv = CANDIDATES[name]

            def patched(x, kernel, stride, padding, conv=conv):
                from effnet_jax.ops import dense

                if kernel.shape[:3] == (1, 1, x.shape[-1]) and stride == 1:
                    return dense.pointwise_conv(x, kernel)
                return conv(x, kernel, stride, padding)

            with _patched({"effnet_jax.model.layers.dense_conv": patched}):
                run, compiled, _, compile_s = build_jax(mode, args.batch, args.res)
            runs[name] = run
            outs[name] = _reference_output(mode, compiled, args)
            run()
            print(f"model {mode:9s} {name:20s} compiled in {compile_s:.1f} s", flush=True)
        for rnd in range(args.rounds):
            times = interleaved(runs, args.reps)
            base = statistics.median(times[chosen[0]])
            for name, ts in times.items():
                med = statistics.median(ts)
                ref = outs[chosen[0]]
                err = float(np.max(np.abs(outs[name] - ref)) / (np.max(np.abs(ref)) or 1))
                rows.append({"mode": mode, "round": rnd + 1, "candidate": name, "median_ms": med * 1e3,
                             "speedup": base / med, "times_s": ts, "max_rel_diff": err})  # fmt: skip
                print(f"model {mode:9s} round {rnd + 1} {name:20s} {med * 1e3:8.1f} ms {base / med:6.3f}x  "
                      f"max rel diff {err:.1e}", flush=True)  # fmt: skip
        del runs
        jax.clear_caches()
    return rows


def markdown(env, args, micro, model) -> str:
    lines = [
        f"# Stem conv formulations on CPU: b0@{args.res} batch {args.batch} float32",
        "",
        f"Machine: {env['cpu']}, {env['cpu_count']} cores; jax {env['jax']}, flax {env['flax']}; commit "
        f"{env['git_sha']}; allocator {env['allocator']}; load average at start {env['load_avg_start'][0]:.1f}; "
        f"{env['date']}. `python benchmarks/stem.py` (args: {vars(args)}). Speed-up = lax conv median / candidate "
        "median, interleaved in one process (> 1: the candidate is faster).",
        "",
    ]
    if micro:
        lines += [
            f"## Stem alone: x ({args.batch}, {args.res}, {args.res}, 3), 3x3 stride 2, 32 output channels",
            "",
            "Max rel diff: largest |candidate - lax conv| over the largest |lax conv| (output; and kernel gradient).",
            "",
            "| padding | part | candidate | median ms | speed-up | max rel diff |",
            "|---|---|---|---:|---:|---:|",
        ]
        lines += [f"| {r['padding']} | {r['part']} | {r['candidate']} | {r['median_ms']:.2f} | {r['speedup']:.2f}x | "
                  f"{' / '.join(f'{e:.1e}' for e in r['max_rel_diff'])} |" for r in micro]  # fmt: skip
        lines.append("")
    if model:
        lines += [
            "## Whole model (each candidate patched into `dense_conv`, built beside the shipped b0)",
            "",
            "Max rel diff: the output (logits, or the loss and the updated parameters after one step) against the "
            "lax-conv build's, over its largest magnitude.",
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
    parser.add_argument("--candidates", default=",".join(CANDIDATES), help="comma list; 'lax conv' always runs")
    parser.add_argument(
        "--model-candidates",
        default="space-to-depth,Cin padded to 4,native fwd,native fwd + kgrad",
        help="comma list for the whole-model part (the micro part runs --candidates); 'lax conv' always runs",
    )
    args = parse_ab_args(parser)
    chosen = ["lax conv"] + [c for c in args.candidates.split(",") if c and c != "lax conv"]
    chosen_model = ["lax conv"] + [c for c in args.model_candidates.split(",") if c and c != "lax conv"]
    unknown = [c for c in chosen + chosen_model if c not in CANDIDATES]
    if unknown:
        raise SystemExit(f"unknown candidates {unknown}; known: {list(CANDIDATES)}")

    from effnet_jax.bench.harness import environment
    from effnet_jax.bench.report import write_results

    env = environment("cpu")
    t0 = time.perf_counter()
    micro = run_micro(args, chosen) if "micro" in args.parts else []
    model = run_model(args, chosen_model) if "model" in args.parts else []
    print(f"total {time.perf_counter() - t0:.0f} s")
    result = {"env": env, "args": vars(args), "micro": micro, "model": model}
    write_results(args.out, f"stem-{args.tag}", result, markdown(env, args, micro, model))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
