"""`effnet` command line: one subcommand per module of this package, imported only when it runs.

Each subcommand module defines `add_arguments(parser)` and `main(args) -> int`; this file only dispatches,
so `effnet summary` never pays for importing jax, and a broken module breaks only its own subcommand.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "summary": ("effnet_jax.cli.summary", "print a variant's architecture table (paper Table 1 shape) with totals"),
    "train": ("effnet_jax.cli.train", "train a model (default: the embedded digits dataset)"),
    "eval": ("effnet_jax.cli.eval", "report top-1/top-5 of a checkpoint on a dataset"),
    "predict": ("effnet_jax.cli.predict", "classify images with a weights file and print the top-5"),
    "convert": (
        "effnet_jax.cli.convert",
        "import torchvision/timm/efficientnet_pytorch weights or a training run into effnet format, or export them",
    ),
    "prepare": (
        "effnet_jax.cli.prepare",
        "pack an image folder into ArrayRecord shards (lossless) for faster training input; resumable",
    ),
    "export": ("effnet_jax.cli.export", "export weights as StableHLO, ONNX or a torch.export program, verified"),
    "bench": ("effnet_jax.cli.bench", "benchmark effnet_jax against effnet_torch side by side"),
    "search": ("effnet_jax.cli.search", "grid-search compound scaling's alpha, beta, gamma on your data and device"),
    "scaling": (
        "effnet_jax.cli.scaling",
        "the scaling study: compound (found and paper's) against width, depth and resolution alone, on your data",
    ),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only `command`'s module is imported (to add its arguments)."""
    parser = argparse.ArgumentParser(prog="effnet", description="EfficientNet for JAX/Flax NNX with a PyTorch twin")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        if name == command:
            importlib.import_module(module).add_arguments(p)
    return parser


# The subcommands that compute with JAX on the host: they run on a fast malloc (ops.allocator).
COMPUTE = ("train", "eval", "predict", "export", "bench", "search", "scaling")


def main(argv: list[str] | None = None, *, fast_malloc: bool | None = None) -> int:
    """Run one subcommand. `fast_malloc` (default: when `argv` comes from the command line) re-executes the process
    with a fast allocator first, for the compute subcommands."""
    from effnet_jax.ops import allocator, host_memory  # import no jax; must run before jax starts its threads

    fast_malloc = argv is None if fast_malloc is None else fast_malloc
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    try:  # both switches are read before anything runs: a bad value is one line, as the other switches'
        retain = host_memory.wanted()
        if command in COMPUTE and fast_malloc:  # re-executes with the allocator preloaded, unless asked not to
            print(f"[effnet] {allocator.preload(sys.orig_argv)}", file=sys.stderr)
    except ValueError as e:
        print(f"effnet: error: {e}", file=sys.stderr)
        return 2
    if retain and not host_memory.retain_host_memory():
        print(f"effnet: {host_memory.ENV}=1 ignored: it needs glibc's malloc", file=sys.stderr)
    args = build_parser(command if command in COMMANDS else None).parse_args(argv)
    if command in COMPUTE and not getattr(args, "print_config", False):  # printing the config needs no jax
        from effnet_jax import compilation_cache
        from effnet_jax.ops import memory

        try:
            compilation_cache.enable_from_env()
            memory.stated_limit()  # an unusable EFFNET_MEMORY_LIMIT is one line before any work, not after a compile
        except ValueError as e:
            print(f"effnet: error: {e}", file=sys.stderr)
            return 2
    from effnet_jax.logs import one_line_warnings

    with one_line_warnings():  # a warning is one line, not a source location and a line of our code
        return int(importlib.import_module(args._module).main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
