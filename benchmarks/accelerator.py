"""Question: on one GPU or TPU chip, how fast is effnet_jax in bfloat16 against the torch twin under AMP?

Three cases, each contender built and warmed up first, then interleaved rounds (medians of `--reps`, img/s). Every
effnet_jax train step is the one `effnet train` runs (`effnet_jax.bench.jax_train_step`: EMA and finiteness check
included), with the torch steps' optimizer (SGD momentum).
  1. b0@224 train step, batch 256, bfloat16: effnet_jax (`ModelOptions(dtype="bfloat16")`: bf16 convolutions,
     float32 parameters, BN and update) against the twin under `torch.autocast(bfloat16)`, channels_last, eager and
     `torch.compile` (the whole step). Goal on an H100/H200: >= 1.5x AMP eager and >= 1.0x torch.compile.
  2. b0@224 inference, batch 256, bfloat16, the same contenders.
  3. b3@300 and b7@600 train steps in bfloat16 with `remat="block"`, at the largest batch that fits: batches are
     tried from `--max-batch` down by halves until one compiles and runs (effnet_jax only: the twin has no remat).
The torch rows run where torch sees the device (CUDA); on a TPU only the JAX rows run.

Also (`scan`) the b7@600 bfloat16 train step with `remat="dots"` at batch 16, scan off and on: compile seconds and
interleaved img/s (on CPU, scan took this compile from 62 to 45 s at 1.17x the step time; this is the device's
figure). And
(`remat-memory`) XLA's temporary bytes of the b3@300 batch-32 train step without and with remat, compile only:
the device's own figure for what the CPU table in benchmarks/README.md estimates.

Run from the repo root on the device machine: `python benchmarks/accelerator.py [--only b0 remat-memory b3 b7 scan]
[--reps 10] [--out DIR]`; writes `<out>/accelerator-<platform>[-<cases>].{json,md}` after every case, so a timeout
keeps what ran. `--smoke` runs every case tiny (b0@64, batch 4) to check the script on CPU.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.getcwd())

B0_BATCH = 256


def _torch_device() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    return "cuda" if torch.cuda.is_available() else None


def _options(**kw):
    from effnet_jax import ModelOptions

    return ModelOptions(dtype="bfloat16", **kw)


def _contenders(suite: str, variant: str, res: int, batch: int, device: str | None, smoke: bool) -> dict:
    """name -> a warmed-up callable running one step (synchronised)."""
    from effnet_jax.bench.contenders import jax_inference, jax_train, torch_inference, torch_train

    make_jax = jax_train if suite == "train" else jax_inference
    out = {"effnet_jax bf16": make_jax(variant, res, batch, _options())[0]}
    torch_device = device or ("cpu" if smoke else None)
    if torch_device:
        make_torch = torch_train if suite == "train" else torch_inference
        out["torch AMP bf16 channels_last"] = make_torch(variant, res, batch, torch_device, "cl", False, amp=True)
        if not smoke:  # torch.compile of a train step takes minutes on CPU
            out["torch.compile AMP bf16 channels_last"] = make_torch(
                variant, res, batch, torch_device, "cl", True, amp=True
            )
    for fn in out.values():
        for _ in range(2):  # the first call compiles (jit, torch.compile) or autotunes
            fn()
    return out


def _interleaved_case(suite, variant, res, batch, device, reps, smoke) -> dict:
    from effnet_jax.bench.harness import interleaved

    times = interleaved(_contenders(suite, variant, res, batch, device, smoke), reps)
    return {
        "suite": suite,
        "variant": variant,
        "res": res,
        "batch": batch,
        "img_s": {name: batch / statistics.median(ts) for name, ts in times.items()},
    }


def _largest_batch_case(variant: str, res: int, max_batch: int, reps: int) -> dict:
    """The b3/b7 remat rows: the largest power-of-two fraction of `max_batch` whose train step compiles and runs."""
    import jax

    from effnet_jax.bench.contenders import jax_train
    from effnet_jax.bench.harness import time_call

    batch, tried = max_batch, []
    while batch >= 1:
        try:
            run, compile_s, mem_mb = jax_train(variant, res, batch, _options(remat="block"))
            run()
            ts = [time_call(run) for _ in range(reps)]
            return {
                "suite": "train, remat=block",
                "variant": variant,
                "res": res,
                "batch": batch,
                "compile_s": compile_s,
                "xla_mb": mem_mb,
                "tried": tried,
                "img_s": {"effnet_jax bf16": batch / statistics.median(ts)},
            }
        except Exception as e:  # out of memory at compile or run time: halve
            if "RESOURCE_EXHAUSTED" not in str(e) and "out of memory" not in str(e).lower():
                raise
            tried.append(batch)
            batch //= 2
            jax.clear_caches()
    raise RuntimeError(f"{variant}@{res}: not even batch 1 fits")


def _markdown(result: dict) -> str:
    env = result["env"]
    lines = [
        f"# effnet_jax in bfloat16 on {env.get('device', env['platform'])}",
        "",
        f"jax {env['jax']}, torch {env.get('torch', '-')}; medians of {result['reps']} interleaved rounds.",
        "",
        "| case | batch | contender | img/s | x torch AMP eager | x torch.compile |",
        "|---|---|---|---|---|---|",
    ]
    for c in result["cases"]:
        if "temp_bytes" in c:
            t = c["temp_bytes"]
            mib = f"{t['none'] / 2**20:.0f} / {t['block'] / 2**20:.0f} MiB"
            ratio = t["block"] / t["none"]
            lines.append(
                f"| {c['variant']}@{c['res']} step temp bytes | {c['batch']} | none / block | {mib} | {ratio:.2f}x | |"
            )
            continue
        eager = c["img_s"].get("torch AMP bf16 channels_last")
        comp = c["img_s"].get("torch.compile AMP bf16 channels_last")
        for name, v in c["img_s"].items():
            if isinstance(c.get("compile_s"), dict):  # the scan case: compile seconds per contender
                name = f"{name} (compile {c['compile_s'][name]:.0f} s)"
            x_eager = f"{v / eager:.2f}x" if eager else "-"
            x_comp = f"{v / comp:.2f}x" if comp else "-"
            lines.append(
                f"| {c['variant']}@{c['res']} {c['suite']} | {c['batch']} | {name} | {v:.0f} | {x_eager} | {x_comp} |"
            )
    return "\n".join(lines)


def _remat_memory_case(variant: str, res: int, batch: int) -> dict:
    """Compile only: XLA's temporary bytes of the bf16 train step without and with remat="block" on this device (the
    saving CPU measures needs `remat_compiler_options` there; here the compiler keeps JAX's barriers itself)."""
    import jax

    from effnet_jax.bench.contenders import jax_train_step

    temps = {}
    for remat in ("none", "block"):
        step, data = jax_train_step(variant, res, batch, _options(remat=remat))
        step.compile(data)
        temps[remat] = step.fn.memory_analysis().temp_size_in_bytes
        del step, data
        jax.clear_caches()
    return {"suite": "temp bytes, compile only", "variant": variant, "res": res, "batch": batch, "temp_bytes": temps,
            "img_s": {}}  # fmt: skip


def _scan_case(variant: str, res: int, batch: int, reps: int) -> dict:
    """`ModelOptions(scan=)` off and on for one train step: compile seconds, then interleaved img/s."""
    from effnet_jax.bench.contenders import jax_train
    from effnet_jax.bench.harness import interleaved

    runs, compile_s = {}, {}
    for scan in (False, True):
        name = f"effnet_jax bf16 remat=dots scan={'on' if scan else 'off'}"
        runs[name], compile_s[name], _ = jax_train(variant, res, batch, _options(remat="dots", scan=scan))
        runs[name]()
    times = interleaved(runs, reps)
    return {"suite": "train, scan", "variant": variant, "res": res, "batch": batch, "compile_s": compile_s,
            "img_s": {name: batch / statistics.median(ts) for name, ts in times.items()}}  # fmt: skip


CASES = ("b0", "remat-memory", "b3", "b7", "scan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--max-batch", type=int, nargs=2, default=(512, 64), metavar=("B3", "B7"))
    ap.add_argument("--only", nargs="+", choices=CASES, default=list(CASES), help="which cases (default: all)")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, to check the script on CPU")
    ap.add_argument("--out", help="results folder (default benchmarks/results; with --smoke a temporary one)")
    args = ap.parse_args()
    if args.out is None:
        args.out = tempfile.mkdtemp(prefix="accelerator-smoke-") if args.smoke else "benchmarks/results"

    import jax

    from effnet_jax.bench.harness import environment
    from effnet_jax.bench.report import write_results

    device = _torch_device()
    platform = jax.default_backend()
    env = environment(device or "cpu")
    env.update(platform=platform, device=str(jax.devices()[0].device_kind), precision="bfloat16 compute (both)")
    name = f"accelerator-{platform}" + ("" if args.only == list(CASES) else "-" + "-".join(args.only))
    name += "-smoke" if args.smoke else ""
    res, batch = (64, 4) if args.smoke else (224, B0_BATCH)
    big = {
        "b3": (64, 2) if args.smoke else (300, args.max_batch[0]),
        "b7": (64, 1) if args.smoke else (600, args.max_batch[1]),
    }
    result = {"env": env, "reps": args.reps, "smoke": args.smoke, "cases": []}
    for case in args.only:
        if case == "b0":
            found = [
                _interleaved_case(s, "b0", res, batch, device, args.reps, args.smoke) for s in ("train", "inference")
            ]
        elif case == "scan":
            found = [_scan_case(*(("b0", 64, 2) if args.smoke else ("b7", 600, 16)), args.reps)]
        elif case == "remat-memory":
            found = [_remat_memory_case("b3", 64 if args.smoke else 300, 2 if args.smoke else 32)]
        else:
            found = [_largest_batch_case(case, *big[case], args.reps)]
        result["cases"] += found
        print(found, flush=True)
        write_results(args.out, name, result, _markdown(result))  # after every case: a timeout keeps what ran


if __name__ == "__main__":
    main()
