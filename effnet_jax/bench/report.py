"""Reporting: the acceptance ratios, the markdown table, the chart (drawn from the JSON alone), and the writer."""

from __future__ import annotations

import json
import os

from .suites import CONTENDERS

__all__ = ["markdown", "plot", "ratios", "write_results"]


def ratios(rows: list[dict]) -> list[str]:
    """effnet_jax against the best torch eager and torch.compile at every case the run has a JAX row for, in the
    order they ran (the default run's include the headline cases of benchmarks/README.md, "Targets")."""
    by = {(r["suite"], r["variant"], r["resolution"], r["batch"], r["contender"]): r for r in rows}
    out = []
    ran = [(r["suite"], r["variant"], r["resolution"], r["batch"]) for r in rows if r["suite"] != "matmul"]
    for suite, v, res, b in dict.fromkeys(ran):
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


def _host_memory(env: dict) -> str:
    """The malloc both frameworks ran on: it moves the CPU ratios (benchmarks/README.md, "Allocators")."""
    allocator = env.get("allocator", "")
    if allocator and not allocator.startswith("glibc"):
        return f"{allocator} preloaded, for both frameworks (freed memory kept for reuse)."
    if env.get("host_memory_retained"):
        return "glibc, freed memory kept for reuse (`effnet_jax.ops.host_memory`), for both frameworks."
    return "glibc defaults (freed big blocks go back to the kernel and fault in again next call)."


def markdown(result: dict) -> str:
    """The markdown report of a `run_suites` result."""
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
        f"Host memory: {_host_memory(env)}" + (f" XLA_FLAGS: `{env['xla_flags']}`." if env.get("xla_flags") else ""),
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


def write_results(out: str, name: str, result: dict, md: str) -> str:
    """Write `<out>/<name>.json` and `.md` atomically, print the markdown; returns `<out>/<name>`.

    Shared by `effnet bench` and the one-question scripts in benchmarks/. A relative `out` is taken from the
    current directory.
    """
    from effnet_spec.atomic import write_atomic

    os.makedirs(out, exist_ok=True)
    base = os.path.join(out, name)
    write_atomic(base + ".json", json.dumps(result, indent=1))
    write_atomic(base + ".md", md if md.endswith("\n") else md + "\n")
    print(md)
    return base
