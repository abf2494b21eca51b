"""The suites of `effnet bench` and their cases: each case builds every contender, warms it up (compile time
reported apart), then times `reps` interleaved rounds (`harness.interleaved`).

Contenders per case: effnet_jax (one jitted function), effnet_torch eager NCHW, eager channels_last and
torch.compile (channels_last); their builders are in `contenders`.
"""

from __future__ import annotations

import os
import statistics
import sys
from collections.abc import Callable
from dataclasses import asdict

from .contenders import jax_inference, jax_train, matmul_peak, torch_inference, torch_train
from .harness import NUM_CLASSES, Row, environment, interleaved, p90, peak_rss_mb, time_call

__all__ = [
    "CONTENDERS",
    "INFERENCE_CASES",
    "QUICK_INFERENCE_CASES",
    "QUICK_TRAIN_CASES",
    "SUITES",
    "TRAIN_CASES",
    "cases",
    "run_suites",
]

# (variant, resolution, batch) for inference (benchmarks/README.md, "Targets"). Quick mode keeps b0 only.
INFERENCE_CASES = [("b0", 224, 1), ("b0", 224, 8), ("b0", 224, 32), ("b3", 300, 1), ("b7", 600, 1)]
QUICK_INFERENCE_CASES = [("b0", 224, 1), ("b0", 224, 32)]
# (variant, resolution, batch) for the train step (forward + backward + SGD-momentum update).
TRAIN_CASES = [("b0", 224, 32), ("b0", 128, 32)]
QUICK_TRAIN_CASES = [("b0", 128, 32)]
VARIANTS_BATCH = 32  # `--variants` cases: the batch of the headline b0 cases
SUITES = ("matmul", "inference", "train")
CONTENDERS = ("jax", "torch_nchw", "torch_cl", "torch_compile")


def _warm(run: Callable[[], None], device: str, calls: int) -> tuple[float, float | None]:
    """First call (compile for jit/torch.compile) timed apart, then `calls - 1` more; memory of the warm-up."""
    if device == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats()
    rss0 = peak_rss_mb()
    first = time_call(run)
    for _ in range(calls - 1):
        run()
    if device == "cuda":
        return first, torch.cuda.max_memory_allocated() / 2**20
    return first, max(0.0, peak_rss_mb() - rss0)


# ---------------------------------------------------------------- suites


def cases(args) -> tuple[list[tuple[str, int, int]], list[tuple[str, int, int]]]:
    """(inference, train) cases of a run: the default ones, or one each per `--variants` entry at `--resolution`
    (default: the variant's eval side for inference, its train side, V2's smaller one, for the train step) and
    `--batch`."""
    variants = list(filter(None, args.variants.split(",")))
    if not variants:
        if args.quick:
            return QUICK_INFERENCE_CASES, QUICK_TRAIN_CASES
        return INFERENCE_CASES, TRAIN_CASES
    from effnet_spec import resolve

    batch = args.batch or VARIANTS_BATCH
    specs = [resolve(v) for v in variants]
    inference = [(v, args.resolution or s.resolution, batch) for v, s in zip(variants, specs)]
    train = [(v, args.resolution or s.train_resolution, batch) for v, s in zip(variants, specs)]
    return inference, train


def _case_rows(suite, variant, res, batch, contenders, reps, torch_device, peaks, macs_per_image, notes) -> list[Row]:
    built = {}
    for name, (make, warm_calls) in contenders.items():
        try:
            run, compile_s, mem = make()  # jax: compile_s is lower + compile of the jitted function
            first, warm_mem = _warm(run, torch_device if name != "jax" else "jax", warm_calls)
            if name == "torch_compile":  # torch.compile compiles during the first call
                compile_s = first
            built[name] = (run, compile_s, mem if mem is not None else warm_mem)
        except Exception as e:  # a contender that fails is reported, not fatal to the run
            notes.append(f"{suite} {variant}@{res} b{batch} {name}: {type(e).__name__}: {e}"[:300])
            print(f"  ! {name} failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
    times = interleaved({n: b[0] for n, b in built.items()}, reps)
    rows = []
    flop_factor = 3 if suite == "train" else 1
    for name, ts in times.items():
        med = statistics.median(ts)
        gflops = 2 * macs_per_image * flop_factor * batch / med / 1e9
        peak = peaks.get("jax" if name == "jax" else "torch", 0.0)
        _, compile_s, mem = built[name]
        rows.append(
            Row(
                suite,
                variant,
                res,
                batch,
                name,
                med,
                p90(ts),
                batch / med,
                gflops,
                gflops / peak if peak else 0.0,
                compile_s,
                mem,
                reps,
                times_s=ts,
            )  # fmt: skip
        )
        print(f"  {name:14s} {batch / med:8.1f} img/s  median {med * 1e3:8.1f} ms", flush=True)
    return rows


def run_suites(args) -> dict:
    """Run the suites `args` asks for (the `effnet bench` options); returns {"env", "notes", "rows"}."""
    import torch

    from effnet_jax import ModelOptions
    from effnet_spec import count_macs, resolve

    torch_device = args.torch_device
    if torch_device == "auto":
        torch_device = "cuda" if torch.cuda.is_available() else "cpu"
    env = environment(torch_device)
    rows: list[Row] = []
    notes: list[str] = []
    wanted = set(args.only.split(",")) if args.only else set(SUITES)
    contenders = [c for c in CONTENDERS if c in set(args.contenders.split(","))]

    print(f"# effnet bench on {env['cpu']} / {env.get('gpu', env['jax_backend'])}", flush=True)
    peaks = {}
    if "matmul" in wanted or "inference" in wanted or "train" in wanted:
        print("matmul peak", flush=True)
        mrows = matmul_peak(1024 if args.quick else 2048, max(5, args.reps), torch_device)
        rows += mrows
        peaks = {r.contender: r.gflops for r in mrows}
        print("  " + ", ".join(f"{r.contender} {r.gflops:.0f} GFLOP/s" for r in mrows), flush=True)

    def contender_table(suite, variant, res, batch):
        table = {}
        for name in contenders:
            if name == "torch_compile" and variant != "b0" and not args.compile_big:
                continue  # torch.compile of b3/b7 takes minutes on CPU; opt in with --compile-big
            if name == "jax":
                make = jax_inference if suite == "inference" else jax_train
                options = ModelOptions(dtype="float32", depthwise_impl=args.depthwise)  # torch runs float32 too
                table[name] = ((lambda m=make, o=options: m(variant, res, batch, o)), 2)
            else:
                layout = "nchw" if name == "torch_nchw" else "cl"
                make = torch_inference if suite == "inference" else torch_train
                table[name] = (
                    (lambda m=make, lay=layout, comp=(name == "torch_compile"): (
                        m(variant, res, batch, torch_device, lay, comp), None, None)),
                    3 if name == "torch_compile" else 2,
                )  # fmt: skip
        return table

    inference_cases, train_cases = cases(args)
    if "inference" in wanted:
        for variant, res, batch in inference_cases:
            print(f"inference {variant}@{res} batch {batch}", flush=True)
            macs = count_macs(resolve(variant, num_classes=NUM_CLASSES), res)
            reps = args.reps if batch * res * res <= 32 * 224 * 224 and variant != "b7" else max(3, args.reps // 3)
            rows += _case_rows(
                "inference", variant, res, batch, contender_table("inference", variant, res, batch),
                reps, torch_device, peaks, macs, notes,
            )  # fmt: skip
    if "train" in wanted:
        for variant, res, batch in train_cases:
            print(f"train step {variant}@{res} batch {batch}", flush=True)
            macs = count_macs(resolve(variant, num_classes=NUM_CLASSES), res)
            rows += _case_rows(
                "train", variant, res, batch, contender_table("train", variant, res, batch),
                max(3, args.reps // 2), torch_device, peaks, macs, notes,
            )  # fmt: skip
    env["load_avg_end"] = os.getloadavg()
    env["peak_rss_mb"] = peak_rss_mb()
    return {"env": env, "notes": notes, "rows": [asdict(r) for r in rows]}
