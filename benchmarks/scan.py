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
import statistics
import sys
import time

sys.path.insert(0, os.getcwd())

SETTINGS = ((False, "none"), (True, "none"), (False, "dots"), (True, "dots"))


def _compiled_step(variant: str, scan: bool, remat: str, batch: int):
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from effnet_jax import EfficientNet, ModelOptions, remat_compiler_options

    options = ModelOptions(dtype="float32", remat=remat, scan=scan)
    model = EfficientNet.from_name(variant, rngs=nnx.Rngs(0, dropout=1), options=options)
    model.train()
    res = model.spec.resolution
    tx = optax.sgd(0.01, momentum=0.9)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    opt_state = tx.init(params)
    x = jax.random.normal(jax.random.key(0), (batch, res, res, 3), jnp.float32)
    y = jnp.zeros((batch,), jnp.int32)

    def step(params, rest, opt_state, x, y):
        def loss_fn(m):
            return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()

        m = nnx.merge(graphdef, params, rest)
        loss, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, nnx.Param))(m)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), nnx.split(m, nnx.Param, ...)[2], opt_state, loss

    args = (params, rest, opt_state, x, y)
    t = time.perf_counter()
    jitted = jax.jit(step, donate_argnums=(0, 1, 2), compiler_options=remat_compiler_options(remat))
    compiled = jitted.lower(*args).compile()
    return compiled, args, time.perf_counter() - t, res


def _measure(variant: str, scan: bool, remat: str, reps: int) -> dict:
    import jax

    out = {"variant": variant, "scan": scan, "remat": remat}
    for batch in (2, 1):  # batch 1 last: it is the one timed
        compiled, args, compile_s, res = _compiled_step(variant, scan, remat, batch)
        out[f"temp_b{batch}"] = compiled.memory_analysis().temp_size_in_bytes
        out[f"compile_s_b{batch}"] = compile_s
        if batch == 2:
            del compiled, args
    out["res"] = res
    out["temp_per_image"] = out["temp_b2"] - out["temp_b1"]
    params, rest, opt_state, x, y = args
    times = []
    for i in range(reps + 1):
        t = time.perf_counter()
        params, rest, opt_state, loss = compiled(params, rest, opt_state, x, y)
        jax.block_until_ready(loss)
        if i:  # the first call warms up
            times.append(time.perf_counter() - t)
    out["step_s_b1"] = statistics.median(times)
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
        for scan, remat in SETTINGS:
            rows.append(_measure(variant, scan, remat, args.reps))
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
