"""Question: what does `ModelOptions(scan=True)` do to the train step's compile time, memory and speed?

Scanning runs each stage's repeated blocks as one `jax.lax.scan`, so XLA compiles one block body per stage instead
of one per block (issue 14's goal: the b7@600 train step compiles in <= 60 s). For each variant at its native size,
scan off and on, with remat "none" and "dots": the float32 train step as `effnet train` differentiates it
(`nnx.value_and_grad` on the model, train-mode BN, SGD momentum) is jitted with `remat_compiler_options` and
compiled at batch 1 and 2 (`lower(...).compile()` wall time at batch 1 is the compile figure; XLA's
`memory_analysis()` gives temporaries, their difference per image), then timed at batch 1 (median of `--reps` after
a warm-up). Nothing is cached between compiles (no persistent compilation cache).

Run from the repo root: `python benchmarks/scan.py [--variants b0 b3 b7] [--reps 3]`; writes
`benchmarks/results/scan-cpu.{json,md}`.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.getcwd())

SETTINGS = ((False, "none"), (True, "none"), (False, "dots"), (True, "dots"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variants", nargs="+", default=["b0", "b3", "b7"])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()

    from benchmarks.remat import measure  # the same step, compiles and timing as the remat table
    from effnet_jax.bench.harness import environment
    from effnet_jax.bench.report import write_results

    rows = []
    for variant in args.variants:
        for scan, remat in SETTINGS:
            rows.append(measure(variant, remat, args.reps, scan=scan))
            print(rows[-1], flush=True)
    env = environment("cpu")
    base = {(r["variant"], r["remat"]): r for r in rows if not r["scan"]}
    lines = [
        "# Train-step compile time, memory and speed with scan (float32, SGD momentum, nnx.value_and_grad, XLA CPU)",
        "",
        f"{env['cpu']}, {env['cpu_count']} cores; allocator {env['allocator']}; jax {env['jax']}; compile: batch 1, "
        f"one compile each, nothing cached; step: batch 1, median of {args.reps}; x: against scan off, same remat.",
        "",
        "| variant @ px | remat | scan | compile s, batch 1 (x) | temp MB / image (x) | step s, batch 1 (x) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        b = base[(r["variant"], r["remat"])]
        lines.append(
            f"| {r['variant']} @ {r['res']} | {r['remat']} | {'on' if r['scan'] else 'off'} | "
            f"{r['compile_s_b1']:.0f} ({r['compile_s_b1'] / b['compile_s_b1']:.2f}x) | "
            f"{r['temp_per_image'] / 1e6:.0f} ({r['temp_per_image'] / b['temp_per_image']:.2f}x) | "
            f"{r['step_s_b1']:.2f} ({r['step_s_b1'] / b['step_s_b1']:.2f}x) |"
        )
    lines += ["", f"Command: `python benchmarks/scan.py --variants {' '.join(args.variants)} --reps {args.reps}`"]
    write_results(args.out, "scan-cpu", {"environment": env, "rows": rows}, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
