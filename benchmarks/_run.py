"""Shared entry for the one-question scripts: `effnet bench` restricted to one suite."""

from __future__ import annotations

import argparse
import sys

from effnet_jax import bench


def run(suite: str, argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=f"effnet bench --only {suite}")
    bench.add_arguments(parser)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    args.only = suite if not args.only else args.only
    return bench.main(args)
