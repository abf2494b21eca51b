"""Question: how much would a hand-written CPU kernel win over XLA for the depthwise kernel gradient?

The kernel gradient is the part of B0's depthwise backward that XLA CPU runs worst (a few GMAC/s, ~17% of the
b0@224 train step). `ffi/depthwise_kgrad.cc` is a plain C++ loop, vectorised over channels, registered as an
XLA FFI custom call. This script builds it with g++ (-O3 -march=native), checks it against
`effnet_jax.depthwise._kernel_grad` (the shipped `shift_vjp` kernel gradient), and times both interleaved at
B0's depthwise layer shapes. Exploratory: effnet does not ship the kernel (a compiled extension and its
partitioning under `jit` sharding are outside the project's dependencies and design so far).

Run from the repo root: `python benchmarks/depthwise_kgrad_ffi.py [--batch 32] [--reps 7]`; needs g++ and
jaxlib's FFI headers; writes `benchmarks/results/depthwise-kgrad-ffi-<tag>.{json,md}`.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TARGET = "effnet_bench_depthwise_kgrad"


def build(workdir: str) -> str:
    import jax

    cxx = shutil.which("g++")
    if cxx is None:
        raise SystemExit("depthwise_kgrad_ffi.py: needs g++ to build ffi/depthwise_kgrad.cc")
    lib = os.path.join(workdir, "libdepthwise_kgrad.so")
    cmd = [cxx, "-O3", "-march=native", "-fopenmp-simd", "-std=c++17", "-shared", "-fPIC", "-w",
           "-I", jax.ffi.include_dir(), os.path.join(HERE, "ffi", "depthwise_kgrad.cc"), "-o", lib]  # fmt: skip
    subprocess.run(cmd, check=True)
    return lib


def main() -> int:
    sys.path.insert(0, os.getcwd())
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--tag", default="cpu")
    args = parser.parse_args()

    from effnet_jax import host_memory

    host_memory.retain_host_memory()  # neither side should pay page faults for its temporaries
    import jax
    import jax.numpy as jnp
    import numpy as np

    from benchmarks.depthwise import SHAPES
    from effnet_jax.bench import environment, write_results
    from effnet_jax.depthwise import _kernel_grad

    with tempfile.TemporaryDirectory() as tmp:
        lib = ctypes.cdll.LoadLibrary(build(tmp))
    jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(lib.EffnetDwKgrad), platform="cpu")

    def kgrad_ffi(x, g, k, s, pad):
        out = jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct((k * k, x.shape[-1]), jnp.float32))(
            x, g, kh=np.int64(k), kw=np.int64(k), s=np.int64(s), pt=np.int64(pad[0][0]), pl=np.int64(pad[1][0])
        )
        return out.reshape(k, k, 1, x.shape[-1])

    rows = []
    for hw, c, k, s in SHAPES:
        pad = ((k // 2, k // 2),) * 2
        out_hw = (hw + 2 * (k // 2) - k) // s + 1
        x = jax.random.normal(jax.random.key(0), (args.batch, hw, hw, c))
        g = jax.random.normal(jax.random.key(1), (args.batch, out_hw, out_hw, c))
        fns = {
            "xla": jax.jit(lambda x, g, k=k, s=s, pad=pad: _kernel_grad(x, g, (k, k, 1, x.shape[-1]), s, pad)),
            "ffi": jax.jit(lambda x, g, k=k, s=s, pad=pad: kgrad_ffi(x, g, k, s, pad)),
        }
        ref, got = (np.asarray(f(x, g), np.float64) for f in fns.values())
        # Both sum N*H*W float32 products per entry in different orders; 1e-4 of the largest entry is far
        # above that rounding (~1e-6 seen) and far below any indexing mistake (O(1) of the scale).
        rel_err = float(np.abs(got - ref).max() / np.abs(ref).max())
        if rel_err > 1e-4:
            raise SystemExit(f"ffi kernel disagrees with XLA at {hw}x{hw}x{c} k{k} s{s}: rel err {rel_err:.1e}")
        times = {name: [] for name in fns}
        for _ in range(args.reps):
            for name, f in fns.items():
                t0 = time.perf_counter()
                jax.block_until_ready(f(x, g))
                times[name].append(time.perf_counter() - t0)
        xla_ms, ffi_ms = (1e3 * statistics.median(times[n]) for n in ("xla", "ffi"))
        rows.append({"hw": hw, "c": c, "k": k, "stride": s, "xla_ms": xla_ms, "ffi_ms": ffi_ms, "rel_err": rel_err})
        print(f"{hw}x{hw}x{c} k{k} s{s}: xla {xla_ms:.1f} ms, ffi {ffi_ms:.1f} ms", flush=True)

    env = environment("cpu")
    total_xla, total_ffi = sum(r["xla_ms"] for r in rows), sum(r["ffi_ms"] for r in rows)
    lines = [
        f"# Depthwise kernel gradient: XLA (`shift_vjp`) vs a C++ FFI kernel (batch {args.batch}, medians of "
        f"{args.reps} interleaved rounds, host memory retained)",
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
