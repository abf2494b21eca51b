"""Shared pieces of the one-question scripts: `effnet bench` restricted to one suite, the host-memory flag."""

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


def add_host_memory_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--retain-host-memory", action="store_true", help="keep freed memory for reuse (effnet_jax.ops.host_memory)"
    )


def apply_host_memory_flag(args: argparse.Namespace) -> None:
    """Call before the first JAX computation: the settings only take for threads that have not allocated yet."""
    if args.retain_host_memory and not host_memory.retain_host_memory():
        raise SystemExit("--retain-host-memory: this C library is not glibc")
