"""What the benchmark scripts share: the options of the interleaved A/B scripts, the host-memory flag, and `patched`
(swap one library choice for the length of a build). Scripts import from here, never from each other."""

from __future__ import annotations

import argparse
import contextlib
import importlib

from effnet_jax.ops import host_memory


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


@contextlib.contextmanager
def patched(patches: dict):
    """Set module attributes (values given as objects or as dotted names of objects) for the duration: a variant's
    model must be traced and compiled inside it. A target that does not exist raises, so a renamed library function
    cannot turn an ablation into a silent copy of the baseline."""
    saved = []
    try:
        for target, value in patches.items():
            module, attr = target.rsplit(".", 1)
            mod = importlib.import_module(module)
            if isinstance(value, str):
                vmod, vattr = value.rsplit(".", 1)
                value = getattr(importlib.import_module(vmod), vattr)
            saved.append((mod, attr, getattr(mod, attr)))
            setattr(mod, attr, value)
        yield
    finally:
        for mod, attr, old in reversed(saved):
            setattr(mod, attr, old)
