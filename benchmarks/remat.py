"""Question: what does `ModelOptions(remat=...)` buy in train-step memory, and what does it cost in time?

For each variant at its native size and each remat setting ("none", "block", "dots"), the float32 train step
(forward, backward, SGD-momentum update, train-mode BN) is compiled at batch 1 and batch 2 with
`jit(..., compiler_options=remat_compiler_options(remat)).lower(...).compile()`; XLA's `memory_analysis()` gives
temporary bytes, and the difference between the two batches the temporaries per image (the rest is fixed: weights,
optimizer state, workspace). The step is then timed at batch 1 (medians of `--reps`, after a warm-up) and the
compile seconds are recorded. From per-image and fixed bytes: the largest batch whose temporaries plus arguments fit
16, 32 and 80 GB (XLA's CPU accounting; a GPU's allocator and fusion differ, so read it as an estimate to check on
the device).

A fourth row per variant answers issue 14 [6]: the same no-remat step differentiated with `nnx.value_and_grad` on the
merged model (as `effnet train` does) instead of `jax.value_and_grad` over the split parameters.

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

SETTINGS = (("none", "jax"), ("block", "jax"), ("dots", "jax"), ("none", "nnx"))
BUDGETS_GB = (16, 32, 80)


def _step_fn(variant: str, remat: str, batch: int, grad: str, scan: bool = False):
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from effnet_jax import EfficientNet, ModelOptions, remat_compiler_options

    options = ModelOptions(dtype="float32", remat=remat, scan=scan)
    model = EfficientNet.from_name(variant, rngs=nnx.Rngs(0), options=options)
    model.train()
    res = model.spec.resolution
    tx = optax.sgd(0.01, momentum=0.9)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    opt_state = tx.init(params)
    x = jax.random.normal(jax.random.key(0), (batch, res, res, 3), jnp.float32)
    y = jnp.zeros((batch,), jnp.int32)

    def step(params, rest, opt_state, x, y):
        if grad == "jax":  # differentiate a pure function of the parameters

            def loss_fn(p, r):
                m = nnx.merge(graphdef, p, r, copy=True)  # fresh Variables at this trace level
                loss = optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()
                return loss, nnx.split(m, nnx.Param, ...)[2]  # BN statistics and RNG counters

            (loss, new_rest), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, rest)
        else:  # differentiate the merged module, its BN statistics updated in place

            def loss_fn(m):
                return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()

            m = nnx.merge(graphdef, params, rest)
            loss, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, nnx.Param))(m)
            new_rest = nnx.split(m, nnx.Param, ...)[2]
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new_rest, opt_state, loss

    args = (params, rest, opt_state, x, y)
    t = time.perf_counter()
    jitted = jax.jit(step, donate_argnums=(0, 1, 2), compiler_options=remat_compiler_options(remat))
    compiled = jitted.lower(*args).compile()
    compile_s = time.perf_counter() - t
    return compiled, args, compile_s, res


def _measure(variant: str, remat: str, grad: str, reps: int, scan: bool = False) -> dict:
    """Temporaries at batch 2 and 1, compile seconds, the batch-1 step time and the largest batch per budget; also
    used by benchmarks/scan.py (`scan=`)."""
    import jax

    out = {"variant": variant, "remat": remat, "grad": grad, "scan": scan}
    for batch in (2, 1):  # batch 1 last: it is the one timed (b7@600 at batch 2 would need ~10 GB of temporaries)
        compiled, args, compile_s, res = _step_fn(variant, remat, batch, grad, scan)
        mem = compiled.memory_analysis()
        out[f"temp_b{batch}"] = mem.temp_size_in_bytes
        out[f"args_b{batch}"] = mem.argument_size_in_bytes
        out[f"compile_s_b{batch}"] = compile_s
    out["res"] = res
    params, rest, opt_state, x, y = args
    times = []
    for i in range(reps + 1):
        t = time.perf_counter()
        params, rest, opt_state, loss = compiled(params, rest, opt_state, x, y)
        jax.block_until_ready(loss)
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
        for remat, grad in SETTINGS:
            rows.append(_measure(variant, remat, grad, args.reps))
            print(rows[-1], flush=True)
    env = environment("cpu")
    base = {r["variant"]: r for r in rows if r["remat"] == "none" and r["grad"] == "jax"}
    lines = [
        "# Train-step memory and time with remat (float32, SGD momentum, XLA CPU accounting; max batch: CPU estimate)",
        "",
        f"{env['cpu']}, {env['cpu_count']} cores; allocator {env['allocator']}; jax {env['jax']}; step time: batch 1, "
        f"median of {args.reps}.",
        "",
        "| variant @ px | remat | grad | temp MB / image (x none) | step s, batch 1 (x none) | compile s | max batch "
        + " / ".join(f"{gb} GB" for gb in BUDGETS_GB)
        + " |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        b = base[r["variant"]]
        lines.append(
            f"| {r['variant']} @ {r['res']} | {r['remat']} | {r['grad']}.value_and_grad | "
            f"{r['temp_per_image'] / 1e6:.0f} ({r['temp_per_image'] / b['temp_per_image']:.2f}x) | "
            f"{r['step_s_b1']:.2f} ({r['step_s_b1'] / b['step_s_b1']:.2f}x) | {r['compile_s_b1']:.0f} | "
            + " / ".join(str(r[f"max_batch_{gb}gb"]) for gb in BUDGETS_GB)
            + " |"
        )
    write_results(args.out, "remat-cpu", {"env": env, "rows": rows}, "\n".join(lines))


if __name__ == "__main__":
    main()
