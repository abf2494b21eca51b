"""Question: how long do effnet_jax's jitted functions take to compile (b0 train step, b0..b7 inference)?

Compile = `jit(f).lower(...).compile()` wall time, one fresh process, nothing cached; the train step is the one
`effnet train` runs (`effnet_jax.bench.jax_train_step`), the model's default options. Run from the repo root:
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
    from flax import nnx

    from effnet_jax import EfficientNet, ModelOptions
    from effnet_jax.bench.contenders import jax_train_step

    if what == "train":  # the step `effnet train` runs, as `effnet bench` times it
        step, data = jax_train_step(variant, res, batch, ModelOptions())
        return step.compile(data)
    model = EfficientNet.from_name(variant, rngs=nnx.Rngs(0))
    model.eval()
    graphdef, state = nnx.split(model)
    x = jax.ShapeDtypeStruct((batch, res, res, 3), jnp.float32)
    t0 = time.perf_counter()
    jax.jit(lambda state, x: nnx.merge(graphdef, state)(x)).lower(state, x).compile()
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
