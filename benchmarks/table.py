"""The Performance table of README.md and benchmarks/README.md, generated from committed results so it cannot drift.

Reads `benchmarks/results/*.json` (the files named in `CPU` and `GPU` below; each row says where it was measured)
and rewrites the table between the `<!-- perf-table:begin/end -->` markers of both READMEs.
`tests/test_bench_table.py` checks that the committed READMEs hold what this generates.

Run from the repo root after committing new results: `python benchmarks/table.py` (`--check`: exit 1 if a README is
stale, write nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
READMES = ("README.md", os.path.join("benchmarks", "README.md"))
BEGIN, END = "<!-- perf-table:begin -->", "<!-- perf-table:end -->"
BATCH = 32

# CPU, b0@224 batch 32 float32, both frameworks on one malloc per process, from benchmarks/cpu_targets.py (effnet_jax
# vs torch eager and torch.compile interleaved, rounds of medians): (label, files). A setting's rounds from several
# files are pooled.
CPU = (
    ("glibc (torch's default)", ("cpu-targets-cpu-glibc.json",)),
    ("glibc, `retain_host_memory()`", ("cpu-targets-cpu-retained.json",)),
    (
        "tcmalloc (the `effnet` command's first choice)",
        ("cpu-targets-cpu-tcmalloc.json", "cpu-targets-cpu-tcmalloc-train.json"),
    ),
)
# GPU: `effnet bench` JSON whose env lacks the commit (recorded in benchmarks/README.md): (file, commit, where).
GPU = (("bench-gpu-h200.json", "892b64d", "NVIDIA H200"),)
# What each framework runs on unless told otherwise: the `effnet` command re-executes on tcmalloc where installed;
# torch keeps the C library's malloc.
JAX_DEFAULT, TORCH_DEFAULT = "tcmalloc", "glibc"


def _load(name: str) -> dict:
    with open(os.path.join(RESULTS, name)) as f:
        return json.load(f)


def _targets(files) -> tuple[dict, str]:
    """{mode: {contender: [ms per round]}} pooled over `files`, and where they were measured."""
    per_mode: dict = {}
    for name in files:
        data = _load(name)
        for mode, result in data["results"].items():
            for row in result["rows"]:
                for contender, ms in row["median_ms"].items():
                    per_mode.setdefault(mode, {}).setdefault(contender, []).append(ms)
        env = data["env"]
    return per_mode, f"{env['git_sha']}, {env['cpu']} {env['cpu_count']} cores, quiet"


def _img_s(ms_list) -> float | None:
    return BATCH * 1e3 / statistics.median(ms_list) if ms_list else None


def _fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:,.1f}" if v < 100 else f"{v:,.0f}"


def _ratio(a, b) -> str:
    return "—" if a is None or b is None else f"{a / b:.2f}x"


def cpu_rows() -> list[dict]:
    rows = []
    for label, files in CPU:
        per_mode, where = _targets(files)
        for mode, times in per_mode.items():
            rows.append(
                {
                    "mode": mode,
                    "malloc": label,
                    "jax": _img_s(times.get("jax")),
                    "eager": _img_s(times.get("torch eager CL")),
                    "compile": _img_s(times.get("torch.compile CL")),
                    "where": f"{where}, {len(times.get('jax', ()))} rounds",
                }
            )
    return rows


def _best(rows: list[dict], key: str) -> dict:
    return max((r for r in rows if r[key] is not None), key=lambda r: r[key])


def _short(label: str) -> str:
    return label.split(" (")[0]


def _pair(case: str, what: str, jax: dict, torch_label: str, eager: dict, comp: dict | None) -> str:
    """A row comparing each framework on the allocator that `what` picks for it (rows from different processes)."""
    compile_ = comp and comp["compile"]
    ratios = f"{_ratio(jax['jax'], eager['eager'])} / {_ratio(jax['jax'], compile_)}"
    return (
        f"| {case} | {what}: effnet_jax {_short(jax['malloc'])}, {torch_label} | {_fmt(jax['jax'])} "
        f"| {_fmt(eager['eager'])} | {_fmt(compile_)} | **{ratios}** | the rows above |"
    )


def table() -> str:
    lines = [
        "| case | malloc (both frameworks, one process) | effnet_jax img/s | torch eager channels_last img/s "
        "| torch.compile img/s | effnet_jax vs eager / compile | measured at |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    cases = {"train": "CPU, b0@224 train step, batch 32", "inference": "CPU, b0@224 inference, batch 32"}
    rows = cpu_rows()
    for mode, case in cases.items():
        mine = [r for r in rows if r["mode"] == mode]
        for r in mine:
            ratios = f"{_ratio(r['jax'], r['eager'])} / {_ratio(r['jax'], r['compile'])}"
            lines.append(
                f"| {case} | {r['malloc']} | {_fmt(r['jax'])} | {_fmt(r['eager'])} | {_fmt(r['compile'])} "
                f"| {ratios} | {r['where']} |"
            )
        jax, eager = _best(mine, "jax"), _best(mine, "eager")
        comp = _best(mine, "compile") if any(r["compile"] for r in mine) else None
        torch_mallocs = dict.fromkeys(_short(r["malloc"]) for r in (eager, comp) if r)
        lines.append(_pair(case, "**each on its best**", jax, f"torch {' / '.join(torch_mallocs)}", eager, comp))
        default = {_short(r["malloc"]): r for r in mine}
        if JAX_DEFAULT in default and TORCH_DEFAULT in default:
            torch = default[TORCH_DEFAULT]
            lines.append(
                _pair(case, "each on its default", default[JAX_DEFAULT], f"torch {TORCH_DEFAULT}", torch, torch)
            )
    for name, commit, where in GPU:
        data = _load(name)
        for r in data["rows"]:
            if r["suite"] != "inference" or r["contender"] != "jax":
                continue
            case = (r["variant"], r["resolution"], r["batch"])
            same = {
                o["contender"]: o["images_per_s"]
                for o in data["rows"]
                if o["suite"] == "inference" and (o["variant"], o["resolution"], o["batch"]) == case
            }
            eager = same.get("torch_cl")
            nchw = same.get("torch_nchw")
            eager_cell = _fmt(eager) + (f" (NCHW: {_fmt(nchw)})" if nchw and (not eager or nchw > eager) else "")
            best_eager = max(v for v in (eager, nchw) if v) if (eager or nchw) else None
            jax_s, compiled = r["images_per_s"], same.get("torch_compile")
            lines.append(
                f"| {where}, {r['variant']}@{r['resolution']} inference, batch {r['batch']} | — | {_fmt(jax_s)} | "
                f"{eager_cell} | {_fmt(compiled)} | {_ratio(jax_s, best_eager)} (best eager) / "
                f"{_ratio(jax_s, compiled)} | {commit} (before the CPU work), {data['env']['date'][:10]} |"
            )
    return "\n".join(lines)


def rewrite(text: str, block: str) -> str:
    """`text` with the lines between the markers replaced by `block`. Raises ValueError if a marker is missing."""
    try:
        head, rest = text.split(BEGIN + "\n", 1)
        _, tail = rest.split(END, 1)
    except ValueError:
        raise ValueError(f"no {BEGIN} ... {END} block") from None
    return f"{head}{BEGIN}\n{block}\n{END}{tail}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a README's table is stale; write nothing")
    args = parser.parse_args()
    block, stale = table(), []
    for readme in READMES:
        path = os.path.join(ROOT, readme)
        with open(path) as f:
            text = f.read()
        try:
            new = rewrite(text, block)
        except ValueError as e:
            raise SystemExit(f"{readme}: {e}") from None
        if new != text:
            stale.append(readme)
            if not args.check:
                with open(path, "w") as f:
                    f.write(new)
    if stale:
        print(("stale: " if args.check else "rewrote: ") + ", ".join(stale), file=sys.stderr)
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
