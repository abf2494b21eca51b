"""Question: how long do effnet_jax's jitted functions take to compile (b0 train step, b0..b7 inference)?

Compile = `jit(f).lower(...).compile()` wall time, one fresh process, nothing cached. Run from the repo root:
`python benchmarks/compile_time.py [--variants b0,b7]`; prints a markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

# (what, variant, resolution, batch); the targets are b0 train step <= 30 s and b7@600 inference <= 120 s.
CASES = [
    ("train", "b0", 224, 32),
    ("inference", "b0", 224, 32),
    ("inference", "b3", 300, 1),
    ("inference", "b7", 600, 1),
]


def compile_seconds(what: str, variant: str, res: int, batch: int) -> float:
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from effnet_jax import EfficientNet

    model = EfficientNet.from_name(variant, rngs=nnx.Rngs(0, dropout=1))
    x = jax.ShapeDtypeStruct((batch, res, res, 3), jnp.float32)
    if what == "inference":
        model.eval()
        graphdef, state = nnx.split(model)
        fn = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))
        args = (state, x)
    else:
        optimizer = nnx.Optimizer(model, optax.sgd(0.01, momentum=0.9), wrt=nnx.Param)
        graphdef, state = nnx.split((model, optimizer))

        def step(state, x, y):
            model, optimizer = nnx.merge(graphdef, state)
            loss_fn = lambda m: optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()
            loss, grads = nnx.value_and_grad(loss_fn)(model)
            optimizer.update(model, grads)
            return nnx.state((model, optimizer)), loss

        fn = jax.jit(step, donate_argnums=0)
        args = (state, x, jax.ShapeDtypeStruct((batch,), jnp.int32))
    t0 = time.perf_counter()
    fn.lower(*args).compile()
    return time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="", help="comma list to keep (default: all cases)")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    import jax

    keep = set(filter(None, args.variants.split(",")))
    rows = []
    for what, variant, res, batch in CASES:
        if keep and variant not in keep:
            continue
        s = compile_seconds(what, variant, res, batch)
        rows.append({"what": what, "variant": variant, "resolution": res, "batch": batch, "compile_s": s})
        print(f"{what:9s} {variant}@{res} batch {batch}: {s:.1f} s", flush=True)
    env = {"jax": jax.__version__, "backend": jax.default_backend(), "cpu_count": os.cpu_count()}
    env["load_avg"] = os.getloadavg()
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"compile-{jax.default_backend()}.json"), "w") as f:
        json.dump({"env": env, "rows": rows}, f, indent=1)
    print("\n| what | model | batch | compile s |\n|---|---|---:|---:|")
    for r in rows:
        print(f"| {r['what']} | {r['variant']}@{r['resolution']} | {r['batch']} | {r['compile_s']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
