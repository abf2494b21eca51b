"""Question: how much of a CPU train step is the kernel handing out fresh pages, and does running torch in
the same process (as `effnet bench` does) change the JAX step?

XLA CPU allocates an executable's temporaries afresh on every call and returns them afterwards, so every step
page-faults them in again; eager torch does the same with its activations. This script times b0 train steps
(`effnet bench`'s builders) first alone, then alternating JAX and torch steps, recording wall time, user and
system CPU time and minor page faults per step (getrusage).

With `--retain-host-memory` the process first calls `effnet_jax.ops.host_memory.retain_host_memory()` (what
the `effnet` command does with `EFFNET_RETAIN_HOST_MEMORY=1`), which keeps freed memory mapped for reuse.

Run from the repo root: `python benchmarks/page_faults.py [--res 224] [--batch 32] [--steps 3]`; writes
`benchmarks/results/page-faults-<tag>.{json,md}`.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time


def _measure(fn) -> dict:
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    fn()
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "wall_s": wall,
        "user_s": r1.ru_utime - r0.ru_utime,
        "sys_s": r1.ru_stime - r0.ru_stime,
        "minor_faults": r1.ru_minflt - r0.ru_minflt,
    }


def main() -> int:
    sys.path.insert(0, os.getcwd())
    from benchmarks._run import add_host_memory_flag, apply_host_memory_flag

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--res", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--layout", choices=("cl", "nchw"), default="cl", help="torch memory format")
    parser.add_argument("--tag", default="cpu")
    add_host_memory_flag(parser)
    args = parser.parse_args()
    apply_host_memory_flag(args)
    from effnet_jax.bench.contenders import jax_train, torch_train
    from effnet_jax.bench.harness import environment
    from effnet_jax.bench.report import write_results

    env = environment("cpu")
    jax_step, _, _ = jax_train("b0", args.res, args.batch)
    torch_step = torch_train("b0", args.res, args.batch, "cpu", args.layout, False)
    for fn in (jax_step, torch_step, jax_step, torch_step):  # warm-up
        fn()
    phases = {
        "jax alone": [("jax", jax_step)] * args.steps,
        "torch alone": [("torch", torch_step)] * args.steps,
        "alternating": [("jax", jax_step), ("torch", torch_step)] * args.steps,
    }
    rows = []
    for phase, calls in phases.items():
        samples: dict[str, list[dict]] = {}
        for who, fn in calls:
            samples.setdefault(who, []).append(_measure(fn))
        for who, ms in samples.items():
            row = {"phase": phase, "framework": who, "steps": ms}
            for key in ("wall_s", "user_s", "sys_s", "minor_faults"):
                row[key] = statistics.median(m[key] for m in ms)
            rows.append(row)
    lines = [
        f"# Page faults per b0 train step ({args.res} px, batch {args.batch}, torch {args.layout}; "
        f"medians of {args.steps}; host memory " + ("retained" if args.retain_host_memory else "glibc defaults") + ")",
        "",
        f"Machine: {env['cpu']}, {env['cpu_count']} cores; jax {env['jax']}, torch {env['torch']}.",
        "",
        "| phase | framework | wall s | user CPU s | system CPU s | minor faults | GiB faulted in |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['phase']} | {r['framework']} | {r['wall_s']:.2f} | {r['user_s']:.2f} | {r['sys_s']:.2f} | "
        f"{r['minor_faults']:,.0f} | {r['minor_faults'] * 4096 / 2**30:.1f} |"
        for r in rows
    ]
    result = {"env": env, "res": args.res, "batch": args.batch, "layout": args.layout, "rows": rows}
    write_results(args.out, f"page-faults-{args.tag}", result, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
