"""Shared pieces of the one-question scripts: `effnet bench` restricted to one suite, the options of the interleaved
A/B scripts, the host-memory flag."""

from __future__ import annotations

import argparse
import sys

from effnet_jax.cli import bench
from effnet_jax.ops import host_memory


def run(suite: str, argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=f"effnet bench --only {suite}")
    bench.add_arguments(parser)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    args.only = suite if not args.only else args.only
    return bench.main(args)


def ab_parser(description: str) -> argparse.ArgumentParser:
    """The shape and repetition options of the interleaved A/B scripts (b0's 224 px, batch 32); a script adds its own,
    then calls `parse_ab_args`."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--res", type=int, default=224)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    return parser


def parse_ab_args(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Adds where the JSON and markdown go (`<out>/<name>-<tag>.*`) and parses the command line."""
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--tag", default="cpu")
    return parser.parse_args()


def add_host_memory_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--retain-host-memory", action="store_true", help="keep freed memory for reuse (effnet_jax.ops.host_memory)"
    )


def apply_host_memory_flag(args: argparse.Namespace) -> None:
    """Call before the first JAX computation: the settings only take for threads that have not allocated yet."""
    if args.retain_host_memory and not host_memory.retain_host_memory():
        raise SystemExit("--retain-host-memory: this C library is not glibc")
