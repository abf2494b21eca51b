"""`effnet bench`: effnet_jax against effnet_torch, measured side by side, interleaved, in one process.

Writes `<out>/bench-<tag>.json` ({"env": ..., "notes": ..., "rows": [...]}) and `.md`, then draws the PNG from
the JSON. `--out` defaults to `benchmarks/results` under the current directory (the repository root when run
from a checkout), never inside the installed package. What is measured: `effnet_jax.bench.suites`.
"""

from __future__ import annotations

import argparse
import os
import sys

from effnet_jax.bench import CONTENDERS, SUITES, markdown, plot, run_suites, write_results
from effnet_spec.atomic import unwritable_dir

DEFAULT_OUT = "benchmarks/results"  # relative: resolved against the current directory
MAX_REPS = 100_000  # timed rounds per case
MAX_RESOLUTION = 4096  # as effnet train and effnet export take
MAX_BATCH = 2**20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick", action="store_true", help="b0 only (unless --variants), fewer reps (a few minutes on 2 cores)"
    )
    parser.add_argument(
        "--out", default=DEFAULT_OUT, help=f"folder for JSON, markdown and PNG (default: ./{DEFAULT_OUT})"
    )
    parser.add_argument("--tag", default=None, help="file name tag (default: cpu/gpu + date)")
    parser.add_argument("--only", default="", help=f"comma list of suites: {','.join(SUITES)}")
    parser.add_argument("--contenders", default=",".join(CONTENDERS), help=f"comma list from {CONTENDERS}")
    parser.add_argument(
        "--reps", type=int, default=None, help=f"timed rounds per case, 1..{MAX_REPS} (default 10, quick 5)"
    )
    parser.add_argument("--depthwise", default="auto", help="effnet_jax depthwise impl (default: per backend)")
    parser.add_argument("--torch-device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument(
        "--compile-big", action="store_true", help="also torch.compile the variants other than b0 (minutes each on CPU)"
    )
    parser.add_argument(
        "--variants",
        default="",
        help="comma list of variants (V2 too, e.g. b0,v2_b0,v2_s): their inference and train-step cases replace "
        "the default ones",
    )
    parser.add_argument(
        "--resolution",
        type=int,
        default=None,
        help="with --variants: image side (default: each variant's own, the train side for the train step)",
    )
    parser.add_argument("--batch", type=int, default=None, help="with --variants: images per call (default 32)")


def _problem(args: argparse.Namespace) -> str | None:
    """What in the flags would fail the run after its first measurements (a flag out of range, an OUT that cannot
    be written, a device that is not there), as one line; None when all is usable. Checked before any work."""
    from ..ops.depthwise import IMPLS
    from ._flags import out_of_range

    unknown = set(filter(None, args.only.split(","))) - set(SUITES)
    if unknown:
        return f"unknown suite(s) {sorted(unknown)} in --only; expected some of {', '.join(SUITES)}"
    bad = set(args.contenders.split(",")) - set(CONTENDERS)
    if bad:
        return f"unknown contender(s) {sorted(bad)} in --contenders; expected some of {', '.join(CONTENDERS)}"
    problem = out_of_range(args, {"reps": (1, MAX_REPS), "resolution": (1, MAX_RESOLUTION), "batch": (1, MAX_BATCH)})
    if problem:
        return problem
    problem = _variants_problem(args)
    if problem:
        return problem
    if args.tag is not None and (not args.tag or os.sep in args.tag or args.tag in (".", "..")):
        return f"--tag {args.tag!r}: expected a word for the file names bench-TAG.json/.md/.png (no {os.sep!r})"
    problem = _unwritable_out(args.out)
    if problem:
        return f"--out {args.out!r}: {problem}"
    if args.depthwise != "auto" and args.depthwise not in IMPLS:  # as ModelOptions checks it, but before any work
        return f"--depthwise {args.depthwise!r}: expected auto or one of {', '.join(IMPLS)}"
    if args.torch_device == "cuda":
        try:
            import torch
        except ImportError:
            return "--torch-device cuda: torch is not installed"
        if not torch.cuda.is_available():
            return "--torch-device cuda: torch sees no CUDA device here; use --torch-device cpu (or auto)"
    return None


def _variants_problem(args: argparse.Namespace) -> str | None:
    """--variants names known variants; --resolution and --batch size its cases and nothing else."""
    from effnet_spec import VARIANTS

    variants = list(filter(None, args.variants.split(",")))
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        return f"unknown variant(s) {unknown} in --variants; expected some of {', '.join(VARIANTS)}"
    for flag in ("resolution", "batch"):
        if getattr(args, flag) is not None and not variants:
            return f"--{flag} sizes the --variants cases; give --variants too"
    return None


def _unwritable_out(out: str) -> str | None:
    """Why the results folder `out` cannot be created or written, or None; creates nothing."""
    path = os.path.abspath(out)
    while not os.path.lexists(path):  # the deepest part that exists is the one that must take the rest
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        return f"{path} exists and is not a directory"
    reason = unwritable_dir(path)
    return f"{path} is not writable ({reason})" if reason else None


def main(args: argparse.Namespace) -> int:
    problem = _problem(args)
    if problem:
        print(f"effnet bench: error: {problem}", file=sys.stderr)
        return 2
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
