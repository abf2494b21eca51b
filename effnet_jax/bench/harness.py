"""`effnet bench`: effnet_jax against effnet_torch, measured side by side, interleaved, in one process.

Contenders per case: effnet_jax (one jitted function), effnet_torch eager NCHW, eager channels_last and
torch.compile (channels_last). Each case warms every contender up (compile time reported apart), then runs
`reps` rounds; a round times one call of each contender in turn, so load from other processes hits all of
them alike. Reported: median and p90 seconds per call, images/s, GFLOP/s achieved (2 * multiply-adds from
`effnet_spec.count_macs`; a train step counts 3x the forward) and its share of a float32 matmul peak measured
in the same run, compile time, and memory (JAX: the compiled executable's argument+temp bytes; torch on
CPU: the growth of the process's peak RSS during that contender's warm-up, an upper bound that is 0 when an
earlier contender already peaked higher; on GPU both report the allocator's peak).

Writes `<out>/bench-<tag>.json` ({"env": ..., "rows": [...]}) and `.md`, then draws the PNG from the JSON.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from effnet_jax import host_memory

# (variant, resolution, batch) for inference; the list. Quick mode keeps b0 only.
INFERENCE_CASES = [("b0", 224, 1), ("b0", 224, 8), ("b0", 224, 32), ("b3", 300, 1), ("b7", 600, 1)]
QUICK_INFERENCE_CASES = [("b0", 224, 1), ("b0", 224, 32)]
# (variant, resolution, batch) for the train step (forward + backward + SGD-momentum update).
TRAIN_CASES = [("b0", 224, 32), ("b0", 128, 32)]
QUICK_TRAIN_CASES = [("b0", 128, 32)]
CONTENDERS = ("jax", "torch_nchw", "torch_cl", "torch_compile")
NUM_CLASSES = 1000


@dataclass
class Row:
    suite: str  # "inference" | "train" | "matmul"
    variant: str
    resolution: int
    batch: int
    contender: str
    median_s: float
    p90_s: float
    images_per_s: float
    gflops: float  # achieved GFLOP/s
    peak_fraction: float  # gflops / matmul peak of the same framework
    compile_s: float | None
    memory_mb: float | None
    reps: int
    note: str = ""
    times_s: list[float] = field(default_factory=list)


# ---------------------------------------------------------------- environment


def _git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment(torch_device: str) -> dict:
    import flax
    import jax
    import torch

    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_sha": _git_sha(),
        "host": platform.node(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "load_avg_start": os.getloadavg(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jax_backend": jax.default_backend(),
        "jax_devices": [str(d) for d in jax.devices()],
        "flax": flax.__version__,
        "torch": torch.__version__,
        "torch_device": torch_device,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "effnet_depthwise": os.environ.get("EFFNET_DEPTHWISE", ""),
        "host_memory_retained": host_memory.retained,
        "precision": "float32 (jax default matmul precision; torch default)",
    }
    if torch_device == "cuda":
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


# ---------------------------------------------------------------- timing


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _time_call(fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved(contenders: dict[str, Callable[[], None]], reps: int) -> dict[str, list[float]]:
    """`reps` rounds; each round times one call of every contender, in a rotating order."""
    names = list(contenders)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(reps):
        for n in names[r % len(names) :] + names[: r % len(names)]:
            times[n].append(_time_call(contenders[n]))
    return times


def _p90(ts: list[float]) -> float:
    return sorted(ts)[min(len(ts) - 1, int(round(0.9 * (len(ts) - 1))))]


# ---------------------------------------------------------------- contenders


def _jax_inference(variant: str, res: int, batch: int, depthwise_impl: str):
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from effnet_jax import EfficientNet

    model = EfficientNet.from_name(variant, num_classes=NUM_CLASSES, depthwise_impl=depthwise_impl)
    model.eval()
    graphdef, state = nnx.split(model)

    @jax.jit
    def forward(state, x):
        return nnx.merge(graphdef, state)(x)

    x = jax.random.normal(jax.random.key(0), (batch, res, res, 3), jnp.float32)
    t0 = time.perf_counter()
    compiled = forward.lower(state, x).compile()
    compile_s = time.perf_counter() - t0
    mem = _jax_memory_mb(compiled)

    def run():
        compiled(state, x).block_until_ready()

    return run, compile_s, mem


def _jax_memory_mb(compiled) -> float | None:
    try:
        m = compiled.memory_analysis()
        return (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes) / 2**20
    except Exception:  # memory_analysis is optional per backend
        return None


def _jax_train(variant: str, res: int, batch: int, depthwise_impl: str):
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from effnet_jax import EfficientNet

    model = EfficientNet.from_name(
        variant, num_classes=NUM_CLASSES, depthwise_impl=depthwise_impl, rngs=nnx.Rngs(0, dropout=1)
    )
    model.train()
    optimizer = nnx.Optimizer(model, optax.sgd(0.01, momentum=0.9), wrt=nnx.Param)
    graphdef, state = nnx.split((model, optimizer))

    def train_step(state, x, y):
        model, optimizer = nnx.merge(graphdef, state)

        def loss_fn(model):
            logits = model(x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return nnx.state((model, optimizer)), loss

    step = jax.jit(train_step, donate_argnums=0)
    x = jax.random.normal(jax.random.key(0), (batch, res, res, 3), jnp.float32)
    y = jax.random.randint(jax.random.key(1), (batch,), 0, NUM_CLASSES)
    t0 = time.perf_counter()
    compiled = step.lower(state, x, y).compile()
    compile_s = time.perf_counter() - t0
    mem = _jax_memory_mb(compiled)
    box = {"state": state}

    def run():
        box["state"], loss = compiled(box["state"], x, y)
        loss.block_until_ready()

    return run, compile_s, mem


def _torch_sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _torch_model(variant: str, device: str, layout: str):
    import torch

    from effnet_torch import EfficientNet

    model = EfficientNet.from_name(variant, num_classes=NUM_CLASSES).to(device)
    if layout != "nchw":
        model = model.to(memory_format=torch.channels_last)
    return model


def _torch_input(batch: int, res: int, device: str, layout: str):
    import torch

    x = torch.randn(batch, 3, res, res, device=device)
    return x.contiguous(memory_format=torch.channels_last) if layout != "nchw" else x


def _torch_inference(variant: str, res: int, batch: int, device: str, layout: str, compiled: bool):
    import torch

    model = _torch_model(variant, device, layout).eval()
    fn = torch.compile(model) if compiled else model
    x = _torch_input(batch, res, device, layout)

    def run():
        with torch.inference_mode():
            fn(x)
        _torch_sync(device)

    return run


def _torch_train(variant: str, res: int, batch: int, device: str, layout: str, compiled: bool):
    import torch

    model = _torch_model(variant, device, layout).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = _torch_input(batch, res, device, layout)
    y = torch.randint(0, NUM_CLASSES, (batch,), device=device)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    fn = torch.compile(step) if compiled else step

    def run():
        fn()
        _torch_sync(device)

    return run


def _warm(run: Callable[[], None], device: str, calls: int) -> tuple[float, float | None]:
    """First call (compile for jit/torch.compile) timed apart, then `calls - 1` more; memory of the warm-up."""
    import torch

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss0 = _peak_rss_mb()
    first = _time_call(run)
    for _ in range(calls - 1):
        run()
    if device == "cuda":
        return first, torch.cuda.max_memory_allocated() / 2**20
    return first, max(0.0, _peak_rss_mb() - rss0)


# ---------------------------------------------------------------- suites


def matmul_peak(size: int, reps: int, torch_device: str) -> list[Row]:
    """float32 square matmul GFLOP/s for jax and torch, interleaved."""
    import jax
    import jax.numpy as jnp
    import torch

    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    mm = jax.jit(lambda a: a @ a)
    mm(a).block_until_ready()
    ta = torch.randn(size, size, device=torch_device)
    torch.mm(ta, ta)
    _torch_sync(torch_device)

    def torch_mm():
        torch.mm(ta, ta)
        _torch_sync(torch_device)

    times = interleaved({"jax": lambda: mm(a).block_until_ready(), "torch": torch_mm}, reps)
    rows = []
    for name, ts in times.items():
        med = statistics.median(ts)
        gf = 2 * size**3 / med / 1e9
        rows.append(Row("matmul", f"{size}x{size}", size, 1, name, med, _p90(ts), 0.0, gf, 1.0, None, None, reps))
    return rows


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
                _p90(ts),
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
    import torch

    from effnet_spec import count_macs, resolve

    torch_device = args.torch_device
    if torch_device == "auto":
        torch_device = "cuda" if torch.cuda.is_available() else "cpu"
    env = environment(torch_device)
    rows: list[Row] = []
    notes: list[str] = []
    wanted = set(args.only.split(",")) if args.only else {"matmul", "inference", "train"}
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
                make = _jax_inference if suite == "inference" else _jax_train
                table[name] = ((lambda m=make: m(variant, res, batch, args.depthwise)), 2)
            else:
                layout = "nchw" if name == "torch_nchw" else "cl"
                make = _torch_inference if suite == "inference" else _torch_train
                table[name] = (
                    (lambda m=make, lay=layout, comp=(name == "torch_compile"): (
                        m(variant, res, batch, torch_device, lay, comp), None, None)),
                    3 if name == "torch_compile" else 2,
                )  # fmt: skip
        return table

    if "inference" in wanted:
        for variant, res, batch in QUICK_INFERENCE_CASES if args.quick else INFERENCE_CASES:
            print(f"inference {variant}@{res} batch {batch}", flush=True)
            macs = count_macs(resolve(variant, num_classes=NUM_CLASSES), res)
            reps = args.reps if batch * res * res <= 32 * 224 * 224 and variant != "b7" else max(3, args.reps // 3)
            rows += _case_rows(
                "inference", variant, res, batch, contender_table("inference", variant, res, batch),
                reps, torch_device, peaks, macs, notes,
            )  # fmt: skip
    if "train" in wanted:
        for variant, res, batch in QUICK_TRAIN_CASES if args.quick else TRAIN_CASES:
            print(f"train step {variant}@{res} batch {batch}", flush=True)
            macs = count_macs(resolve(variant, num_classes=NUM_CLASSES), res)
            rows += _case_rows(
                "train", variant, res, batch, contender_table("train", variant, res, batch),
                max(3, args.reps // 2), torch_device, peaks, macs, notes,
            )  # fmt: skip
    env["load_avg_end"] = os.getloadavg()
    env["peak_rss_mb"] = _peak_rss_mb()
    return {"env": env, "notes": notes, "rows": [asdict(r) for r in rows]}


# ---------------------------------------------------------------- reporting


def ratios(rows: list[dict]) -> list[str]:
    """The issue's acceptance ratios, where the run has the rows for them."""
    by = {(r["suite"], r["variant"], r["resolution"], r["batch"], r["contender"]): r for r in rows}
    out = []
    for suite, v, res, b in [("inference", "b0", 224, 32), ("train", "b0", 224, 32), ("train", "b0", 128, 32)]:
        jax_row = by.get((suite, v, res, b, "jax"))
        if not jax_row:
            continue
        parts = []
        eager = [by.get((suite, v, res, b, c)) for c in ("torch_nchw", "torch_cl")]
        eager = [e for e in eager if e]
        if eager:
            best = max(eager, key=lambda e: e["images_per_s"])
            parts.append(f"{jax_row['images_per_s'] / best['images_per_s']:.2f}x torch eager ({best['contender']})")
        comp = by.get((suite, v, res, b, "torch_compile"))
        if comp:
            parts.append(f"{jax_row['images_per_s'] / comp['images_per_s']:.2f}x torch.compile")
        if parts:
            out.append(f"{suite} {v}@{res} batch {b}: effnet_jax = " + ", ".join(parts))
    return out


def markdown(result: dict) -> str:
    env = result["env"]
    lines = [
        f"# effnet bench {env['date']} (git {env['git_sha']})",
        "",
        f"Machine: {env['cpu']}, {env['cpu_count']} cores"
        + (f", GPU {env['gpu']}" if "gpu" in env else "")
        + f"; load average at start {env['load_avg_start'][0]:.1f}, at end {env['load_avg_end'][0]:.1f}.",
        f"Versions: python {env['python']}, jax {env['jax']} ({env['jax_backend']}), flax {env['flax']}, "
        f"torch {env['torch']} ({env['torch_device']}, {env['torch_threads']} threads).",
        "Timing: medians over interleaved rounds after warm-up, synchronised; compile time reported apart. "
        "GFLOP/s = 2 x multiply-adds (train step: 3x forward) / median time.",
        "Host memory: "
        + (
            "freed memory kept for reuse (`effnet_jax.host_memory`), for both frameworks."
            if env.get("host_memory_retained")
            else "glibc defaults (freed big blocks go back to the kernel and fault in again next call)."
        ),
        "",
        "| suite | model | batch | contender | img/s | median ms | p90 ms | GFLOP/s | % of matmul peak "
        "| compile s | memory MB |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        model = r["variant"] if r["suite"] == "matmul" else f"{r['variant']}@{r['resolution']}"
        comp = "" if r["compile_s"] is None else f"{r['compile_s']:.1f}"
        mem = "" if r["memory_mb"] is None else f"{r['memory_mb']:.0f}"
        ips = "" if r["suite"] == "matmul" else f"{r['images_per_s']:.1f}"
        lines.append(
            f"| {r['suite']} | {model} | {r['batch']} | {r['contender']} | {ips} | {r['median_s'] * 1e3:.1f} "
            f"| {r['p90_s'] * 1e3:.1f} | {r['gflops']:.0f} | {100 * r['peak_fraction']:.0f}% | {comp} | {mem} |"
        )
    rs = ratios(result["rows"])
    if rs:
        lines += ["", "Ratios:", ""] + [f"- {r}" for r in rs]
    if result.get("notes"):
        lines += ["", "Notes:", ""] + [f"- {n}" for n in result["notes"]]
    return "\n".join(lines) + "\n"


def plot(json_path: str, png_path: str) -> None:
    """Bar chart of images/s per case and contender, drawn from the JSON alone."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(json_path) as f:
        result = json.load(f)
    rows = [r for r in result["rows"] if r["suite"] != "matmul"]
    cases = list(dict.fromkeys((r["suite"], r["variant"], r["resolution"], r["batch"]) for r in rows))
    names = [c for c in CONTENDERS if any(r["contender"] == c for r in rows)]
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(cases)), 4))
    width = 0.8 / max(1, len(names))
    for k, name in enumerate(names):
        vals = []
        for case in cases:
            hit = [r for r in rows if (r["suite"], r["variant"], r["resolution"], r["batch"]) == case]
            hit = [r for r in hit if r["contender"] == name]
            vals.append(hit[0]["images_per_s"] if hit else 0.0)
        ax.bar([i + k * width for i in range(len(cases))], vals, width, label=name)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(cases))])
    ax.set_xticklabels([f"{s}\n{v}@{r} b{b}" for s, v, r, b in cases], fontsize=8)
    ax.set_ylabel("images / s (higher is better)")
    ax.set_yscale("log")
    env = result["env"]
    ax.set_title(f"effnet bench: {env.get('gpu', env['cpu'])[:60]}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="b0 only, fewer reps (a few minutes on 2 cores)")
    parser.add_argument("--out", default="benchmarks/results", help="folder for JSON, markdown and PNG")
    parser.add_argument("--tag", default=None, help="file name tag (default: cpu/gpu + date)")
    parser.add_argument("--only", default="", help="comma list of suites: matmul,inference,train")
    parser.add_argument("--contenders", default=",".join(CONTENDERS), help=f"comma list from {CONTENDERS}")
    parser.add_argument("--reps", type=int, default=None, help="timed rounds per case (default 10, quick 5)")
    parser.add_argument("--depthwise", default="auto", help="effnet_jax depthwise impl (default: per backend)")
    parser.add_argument("--torch-device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--compile-big", action="store_true", help="also torch.compile b3/b7 (minutes on CPU)")


def write_results(out: str, name: str, result: dict, md: str) -> str:
    """Write `<out>/<name>.json` and `.md` atomically, print the markdown; returns `<out>/<name>`.

    Shared by `effnet bench` and the one-question scripts in benchmarks/.
    """
    from effnet_spec.atomic import write_atomic

    os.makedirs(out, exist_ok=True)
    base = os.path.join(out, name)
    write_atomic(base + ".json", json.dumps(result, indent=1))
    write_atomic(base + ".md", md if md.endswith("\n") else md + "\n")
    print(md)
    return base


def main(args: argparse.Namespace) -> int:
    unknown = set(filter(None, args.only.split(","))) - {"matmul", "inference", "train"}
    if unknown:
        raise SystemExit(f"effnet bench: unknown suite(s) {sorted(unknown)}; expected matmul, inference, train")
    bad = set(args.contenders.split(",")) - set(CONTENDERS)
    if bad:
        raise SystemExit(f"effnet bench: unknown contender(s) {sorted(bad)}; expected some of {CONTENDERS}")
    if args.reps is None:
        args.reps = 5 if args.quick else 10
    result = run_suites(args)
    kind = "gpu" if "gpu" in result["env"] else "cpu"
    tag = args.tag or f"{kind}{'-quick' if args.quick else ''}-{result['env']['date'][:10]}"
    base = write_results(args.out, f"bench-{tag}", result, markdown(result))
    try:
        plot(base + ".json", base + ".png")  # a separate step: drawn from the JSON, after all timing
    except Exception as e:  # no matplotlib on the machine must not lose the numbers
        print(f"effnet bench: no chart ({type(e).__name__}: {e})", file=sys.stderr)
    print(f"wrote {base}.json, .md, .png")
    return 0
