"""Question: which depthwise-conv formulation is fastest here, forward and gradient, at B0's layer shapes?

Every impl of `effnet_jax.ops.depthwise` is timed on the same (N, H, W, C, k, stride) cases, interleaved round by
round; "grad" is d/d(x, kernel) of sum(conv), i.e. the backward the train step pays. Run from the repo root:
`python benchmarks/depthwise.py [--batch 8] [--impls grouped,shift,shift_vjp]`; writes JSON + markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

# B0 depthwise layers at 224: (H = W, C, kernel, stride), first block of each stage plus one repeat.
SHAPES = [
    (112, 32, 3, 1), (112, 96, 3, 2), (56, 144, 3, 1), (56, 144, 5, 2), (28, 240, 5, 1),
    (28, 240, 3, 2), (14, 480, 3, 1), (14, 672, 5, 1), (14, 672, 5, 2), (7, 1152, 5, 1),
]  # fmt: skip


def main() -> int:
    import jax
    import jax.numpy as jnp

    from effnet_jax.bench.harness import interleaved
    from effnet_jax.ops.depthwise import IMPLS, depthwise_conv
    from effnet_spec.atomic import write_atomic

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--impls", default=",".join(IMPLS))
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    impls = args.impls.split(",")
    rows = []
    for hw, c, k, s in SHAPES:
        x = jax.random.normal(jax.random.key(0), (args.batch, hw, hw, c))
        w = jax.random.normal(jax.random.key(1), (k, k, 1, c))
        pad = ((k // 2, k // 2),) * 2
        fns = {}
        for impl in impls:
            fwd = jax.jit(lambda x, w, impl=impl, s=s, pad=pad: depthwise_conv(x, w, s, pad, impl))
            loss = lambda x, w, impl=impl, s=s, pad=pad: jnp.sum(depthwise_conv(x, w, s, pad, impl))
            fns[(impl, "fwd")] = fwd
            fns[(impl, "grad")] = jax.jit(jax.grad(loss, (0, 1)))
        for f in fns.values():
            jax.block_until_ready(f(x, w))
        calls = {key: lambda f=f, x=x, w=w: jax.block_until_ready(f(x, w)) for key, f in fns.items()}
        times = interleaved(calls, args.reps)
        for (impl, what), ts in times.items():
            rows.append({"hw": hw, "c": c, "k": k, "stride": s, "impl": impl, "what": what,
                         "median_ms": 1e3 * statistics.median(ts)})  # fmt: skip
        cells = "  ".join(f"{i}:{what} {1e3 * statistics.median(times[(i, what)]):7.2f}" for i, what in fns)
        print(f"{hw:4d}x{hw:<4d}x{c:<5d} k{k} s{s}  {cells}", flush=True)
    env = {"jax": jax.__version__, "backend": jax.default_backend(), "cpu_count": os.cpu_count(),
           "load": os.getloadavg(), "batch": args.batch}  # fmt: skip
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"depthwise-{jax.default_backend()}.json")
    write_atomic(path, json.dumps({"env": env, "rows": rows}, indent=1))
    print("\n| impl | fwd ms (sum over layers) | grad ms (sum over layers) |\n|---|---:|---:|")
    for impl in impls:
        tot = {w: sum(r["median_ms"] for r in rows if r["impl"] == impl and r["what"] == w) for w in ("fwd", "grad")}
        print(f"| {impl} | {tot['fwd']:.1f} | {tot['grad']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
