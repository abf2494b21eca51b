"""`effnet bench`: effnet_jax against effnet_torch, measured side by side, interleaved, in one process.

Writes `<out>/bench-<tag>.json` ({"env": ..., "notes": ..., "rows": [...]}) and `.md`, then draws the PNG from
the JSON. `--out` defaults to `benchmarks/results` under the current directory (the repository root when run
from a checkout), never inside the installed package. What is measured: `effnet_jax.bench.suites`.
"""

from __future__ import annotations

import argparse
import sys

from effnet_jax.bench import CONTENDERS, SUITES, markdown, plot, run_suites, write_results

DEFAULT_OUT = "benchmarks/results"  # relative: resolved against the current directory


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="b0 only, fewer reps (a few minutes on 2 cores)")
    parser.add_argument(
        "--out", default=DEFAULT_OUT, help=f"folder for JSON, markdown and PNG (default: ./{DEFAULT_OUT})"
    )
    parser.add_argument("--tag", default=None, help="file name tag (default: cpu/gpu + date)")
    parser.add_argument("--only", default="", help=f"comma list of suites: {','.join(SUITES)}")
    parser.add_argument("--contenders", default=",".join(CONTENDERS), help=f"comma list from {CONTENDERS}")
    parser.add_argument("--reps", type=int, default=None, help="timed rounds per case (default 10, quick 5)")
    parser.add_argument("--depthwise", default="auto", help="effnet_jax depthwise impl (default: per backend)")
    parser.add_argument("--torch-device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--compile-big", action="store_true", help="also torch.compile b3/b7 (minutes on CPU)")


def main(args: argparse.Namespace) -> int:
    unknown = set(filter(None, args.only.split(","))) - set(SUITES)
    if unknown:
        raise SystemExit(f"effnet bench: unknown suite(s) {sorted(unknown)}; expected {', '.join(SUITES)}")
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
