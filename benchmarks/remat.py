"""Question: what does `ModelOptions(remat=...)` buy in train-step memory, and what does it cost in time?

For each variant at its native size and each remat setting ("none", "block", "dots"), the float32 step `effnet
train` runs (`effnet_jax.bench.jax_train_step`: forward, backward, SGD-momentum update, EMA, train-mode BN, jitted
with `remat_compiler_options(remat)`) is compiled at batch 1 and batch 2; XLA's `memory_analysis()` gives temporary
bytes, and the difference between the two batches the temporaries per image (the rest is fixed: weights, optimizer
state, EMA, workspace). The step is then timed at batch 1 (medians of `--reps`, after a warm-up) and the compile
seconds are recorded. From per-image and fixed bytes: the largest batch whose temporaries plus arguments fit 16, 32
and 80 GB (XLA's CPU accounting; a GPU's allocator and fusion differ, so read it as an estimate to check on the
device).

Issue 14 [6] (`nnx.value_and_grad` on the merged model against `jax.value_and_grad` over the split parameters) was
answered by an earlier version of this script (git e4e820b, `benchmarks/README.md`); the step differentiates with
`nnx.value_and_grad`.

Run from the repo root: `python benchmarks/remat.py [--variants b0 b3 b7] [--reps 3]`; writes
`benchmarks/results/remat-cpu.{json,md}`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.getcwd())

REMATS = ("none", "block", "dots")
BUDGETS_GB = (16, 32, 80)


def _step(variant: str, remat: str, batch: int, scan: bool = False):
    """(compiled step, run, compile seconds, resolution) of the float32 train step at the variant's native size."""
    from effnet_jax import ModelOptions
    from effnet_jax.bench.contenders import jax_train_step
    from effnet_spec import VARIANTS

    res = VARIANTS[variant].resolution
    step, data = jax_train_step(variant, res, batch, ModelOptions(dtype="float32", remat=remat, scan=scan))
    compile_s = step.compile(data)

    def run():
        step(data)["loss"].block_until_ready()

    return step.fn, run, compile_s, res


def measure(variant: str, remat: str, reps: int, scan: bool = False) -> dict:
    """Temporaries at batch 2 and 1, compile seconds, the batch-1 step time and the largest batch per budget, of the
    step `effnet train` runs; also used by benchmarks/scan.py (`scan=`)."""
    out = {"variant": variant, "remat": remat, "grad": "nnx", "scan": scan}
    for batch in (2, 1):  # batch 1 last: it is the one timed (b7@600 at batch 2 would need ~10 GB of temporaries)
        compiled, run, compile_s, res = _step(variant, remat, batch, scan)
        mem = compiled.memory_analysis()
        out[f"temp_b{batch}"] = mem.temp_size_in_bytes
        out[f"args_b{batch}"] = mem.argument_size_in_bytes
        out[f"compile_s_b{batch}"] = compile_s
    out["res"] = res
    times = []
    for i in range(reps + 1):
        t = time.perf_counter()
        run()
        if i:  # the first call warms up
            times.append(time.perf_counter() - t)
    out["step_s_b1"] = statistics.median(times)
    out["temp_per_image"] = out["temp_b2"] - out["temp_b1"]
    out["fixed"] = out["temp_b1"] - out["temp_per_image"] + out["args_b1"]
    for gb in BUDGETS_GB:
        room = gb * 1e9 - out["fixed"]
        out[f"max_batch_{gb}gb"] = max(0, int(room // max(out["temp_per_image"], 1)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variants", nargs="+", default=["b0", "b3", "b7"])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()

    from effnet_jax.bench.harness import environment
    from effnet_jax.bench.report import write_results

    rows = []
    for variant in args.variants:
        for remat in REMATS:
            rows.append(measure(variant, remat, args.reps))
            print(rows[-1], flush=True)
    env = environment("cpu")
    base = {r["variant"]: r for r in rows if r["remat"] == "none"}
    lines = [
        "# Train-step memory and time with remat (`effnet train`'s float32 step with SGD momentum, XLA CPU accounting; "
        "max batch: CPU estimate)",
        "",
        f"{env['cpu']}, {env['cpu_count']} cores; allocator {env['allocator']}; jax {env['jax']}; step time: batch 1, "
        f"median of {args.reps}.",
        "",
        "| variant @ px | remat | temp MB / image (x none) | step s, batch 1 (x none) | compile s | max batch "
        + " / ".join(f"{gb} GB" for gb in BUDGETS_GB)
        + " |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        b = base[r["variant"]]
        lines.append(
            f"| {r['variant']} @ {r['res']} | {r['remat']} | "
            f"{r['temp_per_image'] / 1e6:.0f} ({r['temp_per_image'] / b['temp_per_image']:.2f}x) | "
            f"{r['step_s_b1']:.2f} ({r['step_s_b1'] / b['step_s_b1']:.2f}x) | {r['compile_s_b1']:.0f} | "
            + " / ".join(str(r[f"max_batch_{gb}gb"]) for gb in BUDGETS_GB)
            + " |"
        )
    write_results(args.out, "remat-cpu", {"env": env, "rows": rows}, "\n".join(lines))


if __name__ == "__main__":
    main()
