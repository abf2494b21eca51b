"""Question: which malloc should the `effnet` command run on, on CPU?

For each setting (glibc defaults, glibc with `retain_host_memory()`, tcmalloc, jemalloc, mimalloc; those not
installed are skipped) one fresh process times, with `effnet bench`'s builders, the b0 train step (forward,
backward, SGD-momentum) and the eval forward at 224 px, batch 32, float32: effnet_jax jitted against the torch twin
eager channels_last, interleaved in the same process (medians of `--reps`), plus the JAX compile times. Then the
default `effnet train` (digits, `--train-steps` steps) runs under the same setting and reports its img/s.

Run from the repo root: `python benchmarks/allocators.py [--reps 5] [--train-steps 200]`; writes
`benchmarks/results/allocators-cpu.{json,md}`.
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


def _child(setting: str, reps: int, out: str) -> None:
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
    tt = torch_train("b0", 224, 32, "cpu", "cl", False)
    ji, ji_compile, _ = jax_inference("b0", 224, 32)
    ti = torch_inference("b0", 224, 32, "cpu", "cl", False)
    for fn in (jt, tt, ji, ti):  # warm: first calls allocate, torch picks its kernels
        fn()
        fn()
    train = interleaved({"jax": jt, "torch": tt}, reps)
    infer = interleaved({"jax": ji, "torch": ti}, reps)

    def ips(ts):
        return 32 / statistics.median(ts)

    result = {
        "setting": setting,
        "active": active(),
        "train_img_s": {k: ips(v) for k, v in train.items()},
        "inference_img_s": {k: ips(v) for k, v in infer.items()},
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


def markdown(rows: list[dict], args) -> str:
    env = rows[0]["env"]
    lines = [
        "# Allocators on CPU: b0 at 224 px, batch 32, float32",
        "",
        f"Machine: {env.get('cpu', '?')}, {env.get('cpu_count', '?')} cores; jax {env.get('jax', '?')}, "
        f"torch {env.get('torch', '?')}; commit {env.get('git_sha', '?')}. One fresh process per row, the setting "
        f"applied to both frameworks; effnet_jax jitted vs the torch twin eager channels_last, interleaved, medians of "
        f"{args.reps}. `effnet train`: the default digits run, {args.train_steps} steps (img/s after the first step).",
        "",
        "| malloc | train step img/s jax / torch (ratio) | inference img/s jax / torch (ratio) | compile train / "
        "inference s | `effnet train` img/s (wall s) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        t, i, c, e = r["train_img_s"], r["inference_img_s"], r["compile_s"], r["effnet_train"]
        lines.append(
            f"| {r['setting']} | {t['jax']:.1f} / {t['torch']:.1f} ({t['jax'] / t['torch']:.2f}x) | "
            f"{i['jax']:.1f} / {i['torch']:.1f} ({i['jax'] / i['torch']:.2f}x) | {c['train']:.1f} / "
            f"{c['inference']:.1f} | {e['img_s']:.0f} ({e['wall_s']:.0f}) |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--train-steps", type=int, default=200)
    parser.add_argument("--only", default=",".join(SETTINGS), help="comma-separated settings")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.reps, args.child_out)
        return 0
    sys.path.insert(0, os.getcwd())
    from effnet_jax.bench.report import write_results
    from effnet_jax.ops.allocator import find

    rows = []
    for setting in args.only.split(","):
        path = None
        if setting in ("tcmalloc", "jemalloc", "mimalloc"):
            found = find(setting)
            if found is None:
                print(f"{setting}: not installed, skipped", file=sys.stderr)
                continue
            path = found[1]
        env = _env_for(setting, path)
        with tempfile.NamedTemporaryFile(suffix=".json") as tmp:
            cmd = [sys.executable, __file__, "--child", setting, "--child-out", tmp.name, "--reps", str(args.reps)]
            subprocess.run(cmd, env=env, check=True)
            with open(tmp.name) as f:
                row = json.load(f)
        row["preload"] = path
        row["effnet_train"] = _effnet_train(env, args.train_steps)
        print(json.dumps({k: v for k, v in row.items() if k != "env"}), file=sys.stderr)
        rows.append(row)
    # Each row keeps its own process's env (its allocator, load, time); the first is the run's.
    write_results(args.out, "allocators-cpu", {"env": rows[0]["env"], "rows": rows}, markdown(rows, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
