"""`effnet search`: step 1 of the paper's method, the grid search for alpha, beta, gamma, on your data and device.

    effnet search                                       # b0 at 16 px on the embedded digits, the paper's neighbourhood
    effnet search --out search/digits --alpha 1:1.4:0.1 --beta 1:1.3:0.1 --gamma 1:1.3:0.1 --set steps=400
    effnet search --preset b0 --data /imagenet/train --set val_data=/imagenet/val --set steps=20000 \\
        --constraint latency --objective mnas           # hardware-aware (EfficientNet-X), MnasNet's reward
    effnet train --set phi=2 --set coefficients=search/digits/coefficients.json

Each (network, seed) is an `effnet train` run in OUT/runs/; rerun the same command after a kill to resume.
"""

from __future__ import annotations

import argparse

from ..train.config import DEFAULT_PRESET, PRESETS
from ._runs import run_children


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/search", help="the search directory (resumed when rerun with the same "
                   "settings; default runs/search)")  # fmt: skip
    budget = p.add_argument_group("proxy budget (the same for every candidate)")
    budget.add_argument("--preset", action="append", choices=sorted(PRESETS),
                        help=f"an `effnet train` preset (default {DEFAULT_PRESET})")  # fmt: skip
    budget.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a train field")
    budget.add_argument("--data", action="append", help="digits, an image folder or `effnet prepare` shards "
                        "(train's data=)")  # fmt: skip
    budget.add_argument("--base", action="append", help="the variant at phi = 0 (train's variant=), e.g. b0 or lite0")
    budget.add_argument("--resolution", action="append", type=int, help="the base's image side (train's "
                        "resolution=)")  # fmt: skip
    grid = p.add_argument_group("space")
    grid.add_argument("--alpha", default="1.0:1.4:0.05", help="depth coefficients: LO:HI:STEP or A1,A2,...")
    grid.add_argument("--beta", default="1.0:1.3:0.05", help="width coefficients")
    grid.add_argument("--gamma", default="1.0:1.3:0.05", help="resolution coefficients")
    grid.add_argument("--constraint", default="formula", choices=["formula", "macs", "latency"],
                      help="formula: alpha*beta^2*gamma^2; macs: the realised network's multiply-adds over the base's; "
                      "latency: its measured inference latency on this device over the base's")  # fmt: skip
    grid.add_argument("--target", type=float, default=2.0, help="the cost ratio to the base (paper: 2)")
    grid.add_argument("--tolerance", type=float, default=0.1, help="allowed distance of the ratio from --target")
    pick = p.add_argument_group("choice")
    pick.add_argument("--objective", default="accuracy", choices=["accuracy", "mnas"],
                      help="best val top-1, or MnasNet's top-1 * (cost / target)^w")  # fmt: skip
    pick.add_argument("--mnas-w", type=float, default=-0.07, help="MnasNet's exponent w (default -0.07)")
    pick.add_argument("--repeats", type=int, default=1, help="seeds per candidate (the spread needs >= 2)")
    run = p.add_argument_group("running")
    run.add_argument("--parallel", type=int, help="candidates trained at once, one device each (default: the "
                     "number of local devices)")  # fmt: skip
    run.add_argument("--latency-batch", type=int, default=1, help="images per call when latency is measured")
    run.add_argument("--dry-run", action="store_true", help="print the candidates (realised networks) and stop")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")


def settings_from_args(args: argparse.Namespace):
    from ..search.search import SearchSettings
    from ..search.space import parse_range
    from .train import merged_overrides, one_value

    flags = {key: (flag, one_value(flag, getattr(args, flag[2:])))
             for key, flag in (("data", "--data"), ("variant", "--base"), ("resolution", "--resolution"))}  # fmt: skip
    return SearchSettings(
        preset=one_value("--preset", args.preset) or DEFAULT_PRESET,
        overrides=tuple(merged_overrides(args.set, flags)),
        alphas=parse_range(args.alpha, "alpha"),
        betas=parse_range(args.beta, "beta"),
        gammas=parse_range(args.gamma, "gamma"),
        constraint=args.constraint,
        target=args.target,
        tolerance=args.tolerance,
        objective=args.objective,
        mnas_w=args.mnas_w,
        repeats=args.repeats,
        latency_batch=args.latency_batch,
    )


def main(args: argparse.Namespace) -> int:
    from ..search.search import make_plan, search

    def work():
        settings = settings_from_args(args)
        if args.dry_run:
            print(dry_run_table(make_plan(settings)))
        else:
            search(settings, args.out, parallel=args.parallel, progress=not args.no_progress)

    return run_children("search", args.out, args.parallel, work)


def dry_run_table(plan) -> str:
    lines = ["| points (alpha, beta, gamma) | refs | in space | blocks | width | side | params | MMACs | cost |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for c in plan.candidates:
        pts = ", ".join(f"({a:g}, {b:g}, {g:g})" for a, b, g in c.requested[:3])
        more = f" +{len(c.requested) - 3}" if len(c.requested) > 3 else ""
        inside = "yes" if c.in_space else "no"
        lines.append(f"| {pts}{more} | {', '.join(c.refs)} | {inside} | {c.blocks} | {c.width:.3f} | "
                     f"{c.resolution} | {c.params:,} | {c.macs / 1e6:.2f} | {c.cost:.3f} |")  # fmt: skip
    kept = sum(c.in_space for c in plan.candidates)
    lines.append(f"\n{len(plan.candidates)} networks to train ({kept} in the space, plus references), "
                 f"x {plan.settings.repeats} seed(s)")  # fmt: skip
    return "\n".join(lines)
