"""Question: how much does the native depthwise kernel gradient win over XLA's, layer by layer?

`effnet_jax.ops.native` builds `effnet_jax/ops/csrc/depthwise_kgrad.cc` and registers it as an XLA FFI custom
call. This script checks it against `effnet_jax.ops.depthwise._kernel_grad` (the XLA formulation it replaces)
and times both interleaved at B0's depthwise layer shapes, host memory retained so that neither side pays page
faults. `ablation.py`'s "depthwise kgrad in XLA" variant measures the same choice inside b0.

Run from the repo root: `python benchmarks/depthwise_kgrad_ffi.py [--batch 32] [--reps 7]`; writes
`benchmarks/results/depthwise-kgrad-ffi-<tag>.{json,md}`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys


def main() -> int:
    sys.path.insert(0, os.getcwd())
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--tag", default="cpu")
    args = parser.parse_args()

    from effnet_jax.ops import host_memory

    host_memory.retain_host_memory()  # neither side should pay page faults for its temporaries
    import jax
    import numpy as np

    from benchmarks.depthwise import SHAPES
    from effnet_jax.bench.harness import environment, interleaved
    from effnet_jax.bench.report import write_results
    from effnet_jax.ops import native
    from effnet_jax.ops.depthwise import _kernel_grad

    if not native.available():
        raise SystemExit("depthwise_kgrad_ffi.py: the native kernel is not built here (see the warning above)")

    rows = []
    for hw, c, k, s in SHAPES:
        pad = ((k // 2, k // 2),) * 2
        out_hw = (hw + 2 * (k // 2) - k) // s + 1
        x = jax.random.normal(jax.random.key(0), (args.batch, hw, hw, c))
        g = jax.random.normal(jax.random.key(1), (args.batch, out_hw, out_hw, c))
        fns = {
            "xla": jax.jit(lambda x, g, k=k, s=s, pad=pad: _kernel_grad(x, g, (k, k, 1, x.shape[-1]), s, pad)),
            "ffi": jax.jit(
                lambda x, g, k=k, s=s, pad=pad: native.depthwise_kernel_grad(x, g, (k, k, 1, x.shape[-1]), s, pad)
            ),
        }
        ref, got = (np.asarray(f(x, g), np.float64) for f in fns.values())
        # Both sum N*H*W float32 products per entry in different orders; 1e-4 of the largest entry is far
        # above that rounding (~1e-6 seen) and far below any indexing mistake (O(1) of the scale).
        rel_err = float(np.abs(got - ref).max() / np.abs(ref).max())
        if rel_err > 1e-4:
            raise SystemExit(f"ffi kernel disagrees with XLA at {hw}x{hw}x{c} k{k} s{s}: rel err {rel_err:.1e}")
        calls = {n: lambda f=f, x=x, g=g: jax.block_until_ready(f(x, g)) for n, f in fns.items()}
        times = interleaved(calls, args.reps)
        xla_ms, ffi_ms = (1e3 * statistics.median(times[n]) for n in ("xla", "ffi"))
        rows.append({"hw": hw, "c": c, "k": k, "stride": s, "xla_ms": xla_ms, "ffi_ms": ffi_ms, "rel_err": rel_err})
        print(f"{hw}x{hw}x{c} k{k} s{s}: xla {xla_ms:.1f} ms, ffi {ffi_ms:.1f} ms", flush=True)

    env = environment("cpu")
    total_xla, total_ffi = sum(r["xla_ms"] for r in rows), sum(r["ffi_ms"] for r in rows)
    lines = [
        f"# Depthwise kernel gradient: XLA vs the native C++ kernel (`effnet_jax.ops.native`), batch {args.batch}",
        "",
        f"Medians of {args.reps} interleaved rounds, host memory retained.",
        "",
        f"Machine: {env['cpu']}, {env['cpu_count']} cores; jax {env['jax']}; git {env['git_sha']}.",
        "",
        "| layer (H=W x C, kernel, stride) | XLA ms | FFI ms | XLA / FFI | max rel diff |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['hw']}x{r['c']} k{r['k']} s{r['stride']} | {r['xla_ms']:.1f} | {r['ffi_ms']:.1f} | "
        f"{r['xla_ms'] / r['ffi_ms']:.1f}x | {r['rel_err']:.0e} |"
        for r in rows
    ]
    lines.append(f"| all ten layers | {total_xla:.1f} | {total_ffi:.1f} | {total_xla / total_ffi:.1f}x | |")
    result = {"env": env, "batch": args.batch, "reps": args.reps, "rows": rows}
    write_results(args.out, f"depthwise-kgrad-ffi-{args.tag}", result, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
