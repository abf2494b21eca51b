"""Question: which malloc should the `effnet` command run on, on CPU?

For each setting (glibc defaults, glibc with `retain_host_memory()`, tcmalloc, jemalloc, mimalloc; those not
installed are skipped) one fresh process times, with `effnet bench`'s builders, the b0 train step (forward,
backward, SGD-momentum) and the eval forward at 224 px, batch 32, float32: effnet_jax jitted against the torch twin
eager channels_last, interleaved in the same process (medians of `--reps`), plus the JAX compile times. Then the
default `effnet train` (digits, `--train-steps` steps) runs under the same setting and reports its img/s.
`--rounds` repeats the whole sweep, the settings in turn within each round, so load from other processes falls on
every setting alike (an allocator is chosen per process, so this is the closest to interleaving there is).

Run from the repo root: `python benchmarks/allocators.py [--rounds 3] [--reps 5] [--train-steps 200]
[--only glibc,tcmalloc,mimalloc] [--lib tcmalloc=/path/libtcmalloc_minimal.so.4]`; writes
`benchmarks/results/allocators-<tag>.{json,md}`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

SETTINGS = ("glibc", "retain_host_memory", "tcmalloc", "jemalloc", "mimalloc")


def _child(setting: str, reps: int, out: str, inference: bool, torch_too: bool) -> None:
    sys.path.insert(0, os.getcwd())
    if setting == "retain_host_memory":
        from effnet_jax.ops.host_memory import retain_host_memory

        assert retain_host_memory()
    import torch

    from effnet_jax.bench.contenders import jax_inference, jax_train, torch_inference, torch_train
    from effnet_jax.bench.harness import environment, interleaved
    from effnet_jax.ops.allocator import active

    torch.set_num_threads(os.cpu_count() or 1)
    env = environment("cpu")
    jt, jt_compile, _ = jax_train("b0", 224, 32)
    tt = torch_train("b0", 224, 32, "cpu", "cl", False) if torch_too else None
    ji, ji_compile, _ = jax_inference("b0", 224, 32) if inference else (None, None, None)
    ti = torch_inference("b0", 224, 32, "cpu", "cl", False) if inference and torch_too else None
    for fn in filter(None, (jt, tt, ji, ti)):  # warm: first calls allocate, torch picks its kernels
        fn()
        fn()
    train = interleaved({k: v for k, v in (("jax", jt), ("torch", tt)) if v}, reps)
    infer = interleaved({k: v for k, v in (("jax", ji), ("torch", ti)) if v}, reps) if inference else None

    def ips(ts):
        return 32 / statistics.median(ts)

    result = {
        "setting": setting,
        "active": active(),
        "train_img_s": {k: ips(v) for k, v in train.items()},
        "inference_img_s": {k: ips(v) for k, v in infer.items()} if infer else None,
        "compile_s": {"train": jt_compile, "inference": ji_compile},
        "env": env,
    }
    with open(out, "w") as f:
        json.dump(result, f)


def _env_for(setting: str, path: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "EFFNET_RETAIN_HOST_MEMORY")}
    env["EFFNET_ALLOCATOR"] = "glibc"  # this script chooses; the command must not re-execute on its own
    if path:
        env["LD_PRELOAD"] = path
    if setting == "retain_host_memory":
        env["EFFNET_RETAIN_HOST_MEMORY"] = "1"
    return env


def _effnet_train(env: dict, steps: int) -> dict:
    with tempfile.TemporaryDirectory() as workdir:
        cmd = [sys.executable, "-m", "effnet_jax", "train", "--set", f"steps={steps}", "--set", f"workdir={workdir}",
               "--set", "progress=false"]  # fmt: skip
        subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
        with open(os.path.join(workdir, "summary.json")) as f:
            s = json.load(f)
    return {"img_s": s["img_per_s"], "wall_s": s["wall_s"], "first_step_s": s["first_step_s"]}


def _pair(img_s: dict) -> str:
    """ "jax / torch (ratio)", or jax alone where torch was not timed (`--jax-only`)."""
    if "torch" not in img_s:
        return f"{img_s['jax']:.1f} / —"
    return f"{img_s['jax']:.1f} / {img_s['torch']:.1f} ({img_s['jax'] / img_s['torch']:.2f}x)"


def _cells(r: dict) -> str:
    t, i, c, e = r["train_img_s"], r["inference_img_s"], r["compile_s"], r["effnet_train"]
    infer = _pair(i) if i else "—"
    compile_inference = f"{c['inference']:.1f}" if c["inference"] is not None else "—"
    return f"{_pair(t)} | {infer} | {c['train']:.1f} / {compile_inference} | {e['img_s']:.0f} ({e['wall_s']:.0f}) |"


def _median_row(rows: list[dict]) -> dict:
    """One row of per-key medians over the rounds of a setting."""
    med = lambda key, sub: statistics.median(r[key][sub] for r in rows)  # noqa: E731
    inference = all(r["inference_img_s"] for r in rows)
    timed = [k for k in ("jax", "torch") if all(k in r["train_img_s"] for r in rows)]
    return {
        "train_img_s": {k: med("train_img_s", k) for k in timed},
        "inference_img_s": {k: med("inference_img_s", k) for k in timed} if inference else None,
        "compile_s": {
            "train": med("compile_s", "train"),
            "inference": med("compile_s", "inference") if inference else None,
        },
        "effnet_train": {k: med("effnet_train", k) for k in ("img_s", "wall_s")},
    }


def markdown(rows: list[dict], args) -> str:
    env = rows[0]["env"]
    head = (
        "| malloc | train step img/s jax / torch (ratio) | inference img/s jax / torch (ratio) | compile train / "
        "inference s | `effnet train` img/s (wall s) |"
    )
    lines = [
        "# Allocators on CPU: b0 at 224 px, batch 32, float32",
        "",
        f"Machine: {env.get('cpu', '?')}, {env.get('cpu_count', '?')} cores; jax {env.get('jax', '?')}, "
        f"torch {env.get('torch', '?')}; commit {env.get('git_sha', '?')}. One fresh process per row, the setting "
        f"applied to both frameworks; effnet_jax jitted vs the torch twin eager channels_last, interleaved, medians of "
        f"{args.reps}. `effnet train`: the default digits run, {args.train_steps} steps (img/s after the first step). "
        f"{args.rounds} round(s), the settings in turn within each."
        + (" `--jax-only`: the torch twin not timed." if getattr(args, "jax_only", False) else ""),
        "",
    ]
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    if args.rounds > 1:
        lines += ["Medians over the rounds:", "", head, "|---|---|---|---|---|"]
        for s in settings:
            lines.append(f"| {s} | " + _cells(_median_row([r for r in rows if r["setting"] == s])))
        lines += ["", "Each round:", ""]
    lines += [head.replace("| malloc |", "| round | malloc |"), "|---:|---|---|---|---|---|"]
    lines += [f"| {r.get('round', 1)} | {r['setting']} | " + _cells(r) for r in rows]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--train-steps", type=int, default=200)
    parser.add_argument("--no-inference", action="store_true", help="time the train step and `effnet train` only")
    parser.add_argument("--jax-only", action="store_true", help="no torch contenders (the allocator for `effnet`)")
    parser.add_argument("--only", default=",".join(SETTINGS), help="comma-separated settings")
    parser.add_argument(
        "--lib", action="append", default=[], metavar="NAME=PATH", help="an allocator's library outside the search path"
    )
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--tag", default="cpu")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.reps, args.child_out, not args.no_inference, not args.jax_only)
        return 0
    sys.path.insert(0, os.getcwd())
    from effnet_jax.bench.report import write_results
    from effnet_jax.ops.allocator import find

    libs = dict(item.split("=", 1) for item in args.lib)
    rows, settings = [], args.only.split(",")
    for rnd in range(1, args.rounds + 1):
        for setting in settings:
            path = None
            if setting in ("tcmalloc", "jemalloc", "mimalloc"):
                found = (setting, libs[setting]) if setting in libs else find(setting)
                if found is None:
                    print(f"{setting}: not installed, skipped", file=sys.stderr)
                    continue
                path = found[1]
            env = _env_for(setting, path)
            with tempfile.NamedTemporaryFile(suffix=".json") as tmp:
                cmd = [sys.executable, __file__, "--child", setting, "--child-out", tmp.name, "--reps", str(args.reps)]
                cmd += ["--no-inference"] * args.no_inference + ["--jax-only"] * args.jax_only
                subprocess.run(cmd, env=env, check=True)
                with open(tmp.name) as f:
                    row = json.load(f)
            row["round"] = rnd
            row["preload"] = path
            row["effnet_train"] = _effnet_train(env, args.train_steps)
            print(json.dumps({k: v for k, v in row.items() if k != "env"}), file=sys.stderr, flush=True)
            rows.append(row)
            # After every row, so a long sweep stopped early keeps what it measured. Each row keeps its own
            # process's env (its allocator, load, time); the first is the run's.
            out = {"env": rows[0]["env"], "rounds_done": rnd - (setting != settings[-1]), "rows": rows}
            write_results(args.out, f"allocators-{args.tag}", out, markdown(rows, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
