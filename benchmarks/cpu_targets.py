"""Question: where do issue 16's CPU targets stand, effnet_jax as shipped against the torch twin, side by side?

Targets (b0@224 batch 32 float32): the train step (forward, backward, SGD momentum) >= 1.2x torch eager
channels_last; inference >= 1.0x torch eager channels_last, with the torch.compile ratio reported. Contenders,
interleaved in one process (`--rounds` rounds of `--reps` calls, medians), under whatever malloc the process runs
on (run it once per allocator; the allocator is recorded):

- ``jax``: `effnet bench`'s JAX train step / forward (`effnet_jax.bench.contenders`), every shipped CPU formulation
  and native kernel as the library picks them.
- ``torch eager CL``, ``torch.compile CL`` (inference; the compiled train step takes minutes to build here and is
  not a target): the twin as `effnet bench` builds it.

`LD_PRELOAD=/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 python benchmarks/cpu_targets.py [--modes train,inference]
[--rounds 3] [--reps 5] [--retain-host-memory] [--tag cpu-tcmalloc]`; writes
`benchmarks/results/cpu-targets-<tag>.{json,md}`.
"""

from __future__ import annotations

import os
import statistics
import sys
import time


def _jax(mode, args):
    from effnet_jax.bench import contenders

    build = contenders.jax_inference if mode == "inference" else contenders.jax_train
    run, compile_s, _ = build("b0", args.res, args.batch)
    return run, compile_s


def _torch(mode, args, compiled: bool):
    from effnet_jax.bench import contenders

    build = contenders.torch_inference if mode == "inference" else contenders.torch_train
    t0 = time.perf_counter()
    run = build("b0", args.res, args.batch, "cpu", "cl", compiled)
    run()  # torch.compile compiles here
    return run, time.perf_counter() - t0 if compiled else None


def run_mode(mode, args):
    from effnet_jax.bench.harness import interleaved

    builders = {"jax": lambda: _jax(mode, args)}
    builders["torch eager CL"] = lambda: _torch(mode, args, False)
    if mode == "inference":
        builders["torch.compile CL"] = lambda: _torch(mode, args, True)
    runs, compile_s = {}, {}
    for name, build in builders.items():
        runs[name], compile_s[name] = build()
        runs[name]()
        print(f"{mode} {name}: built (compile {compile_s[name]})", flush=True)
    rows = []
    for rnd in range(args.rounds):
        times = interleaved(runs, args.reps)
        med = {name: statistics.median(ts) for name, ts in times.items()}
        row = {"mode": mode, "round": rnd + 1, "median_ms": {k: v * 1e3 for k, v in med.items()},
               "img_s": {k: args.batch / v for k, v in med.items()}}  # fmt: skip
        row["jax / torch eager"] = med["torch eager CL"] / med["jax"]
        if "torch.compile CL" in med:
            row["jax / torch.compile"] = med["torch.compile CL"] / med["jax"]
        rows.append(row)
        print(mode, rnd + 1, {k: round(v, 3) for k, v in row.items() if isinstance(v, float)},
              {k: round(v) for k, v in row["median_ms"].items()}, flush=True)  # fmt: skip
    return rows, compile_s


def markdown(env, args, results) -> str:
    lines = [
        f"# Issue 16 targets on CPU: b0@{args.res} batch {args.batch} float32, effnet_jax as shipped vs the torch twin",
        "",
        f"Machine: {env['cpu']}, {env['cpu_count']} cores; jax {env['jax']}, torch {env.get('torch')}; commit "
        f"{env['git_sha']}; **allocator {env['allocator']}**, host memory retained: "
        f"{env.get('host_memory_retained')} (both frameworks, one process); load average at start "
        f"{env['load_avg_start'][0]:.1f}; {env['date']}. `python benchmarks/cpu_targets.py` (args: {vars(args)}). "
        "Ratios > 1: effnet_jax is faster. Medians of each round's calls, contenders interleaved.",
        "",
    ]
    for mode, (rows, compile_s) in results.items():
        names = list(rows[0]["median_ms"])
        ratios = [k for k in ("jax / torch eager", "jax / torch.compile") if k in rows[0]]
        lines += [f"## {mode}", "", "Build / compile s: " + ", ".join(
            f"{k} {v:.1f}" for k, v in compile_s.items() if v is not None) + ".", ""]  # fmt: skip
        lines += ["| round | " + " | ".join(f"{n} ms" for n in names) + " | " + " | ".join(ratios) + " |",
                  "|---:|" + "---:|" * (len(names) + len(ratios))]  # fmt: skip
        for r in rows:
            lines.append(f"| {r['round']} | " + " | ".join(f"{r['median_ms'][n]:.0f}" for n in names) + " | "
                         + " | ".join(f"{r[k]:.3f}x" for k in ratios) + " |")  # fmt: skip
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    sys.path.insert(0, os.getcwd())
    from benchmarks._run import ab_parser, add_host_memory_flag, apply_host_memory_flag, parse_ab_args

    parser = ab_parser(__doc__.splitlines()[0])
    parser.add_argument("--modes", default="train,inference")
    add_host_memory_flag(parser)
    args = parse_ab_args(parser)
    apply_host_memory_flag(args)

    import torch

    from effnet_jax.bench.harness import environment
    from effnet_jax.bench.report import write_results

    env = environment("cpu")
    env["torch"] = torch.__version__
    results = {mode: run_mode(mode, args) for mode in args.modes.split(",")}
    out = {"env": env, "args": vars(args), "results": {m: {"rows": r, "compile_s": c} for m, (r, c) in results.items()}}
    write_results(args.out, f"cpu-targets-{args.tag}", out, markdown(env, args, results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
