"""`effnet summary`: the architecture table of a named or compound-scaled variant (spec only, no framework)."""

from __future__ import annotations

import argparse
import sys

from effnet_spec import MAX_RESOLUTION, SOURCES, VARIANTS, resolve, summary


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("variant", nargs="?", help=f"one of: {', '.join(VARIANTS)}")
    p.add_argument("--phi", type=float, help="compound coefficient: a custom variant from the paper's formula")
    p.add_argument(
        "--coefficients",
        metavar="FILE|A,B,G",
        help="with --phi: scale with these alpha,beta,gamma (a file `effnet search` wrote, on its base) instead of "
        "the paper's",
    )
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--size", type=int, help="input resolution (default: the variant's native one)")
    p.add_argument(
        "--weight-source", default="effnet", choices=list(SOURCES), help="use the conventions of this weight source"
    )


def main(args: argparse.Namespace) -> int:
    problem = None
    if (args.variant is None) == (args.phi is None):
        problem = "give exactly one of VARIANT or --phi"
    elif args.coefficients is not None and args.phi is None:
        problem = "--coefficients needs --phi (the step of compound scaling to take)"
    elif args.size is not None and not 1 <= args.size <= MAX_RESOLUTION:
        problem = f"--size must lie in 1..{MAX_RESOLUTION} pixels, got {args.size}"
    if problem:
        print(f"effnet summary: error: {problem}", file=sys.stderr)
        return 2
    variant = args.variant if args.phi is None else args.phi
    try:
        spec = resolve(
            variant, num_classes=args.num_classes, weight_source=args.weight_source, coefficients=args.coefficients
        )
        table = summary(spec, args.size)
    except ValueError as e:
        print(f"effnet summary: error: {e}", file=sys.stderr)
        return 2
    print(table)
    return 0
