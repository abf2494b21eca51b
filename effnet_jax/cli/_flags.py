"""The ranges of the subcommands' integer flags, checked in one place before any work (one line, exit 2).

argparse's `type=int` takes any integer, 0 and a 5000-digit one alike; without a range a zero batch was replaced by
the run's own, a negative `--top` sliced classes off, and a huge value reached numpy or XLA only to fail there.
"""

from __future__ import annotations

import argparse

__all__ = ["MAX_WORKERS", "out_of_range"]

MAX_WORKERS = 1024  # processes: as many as TrainConfig's num_workers allows


def out_of_range(args: argparse.Namespace, ranges: dict[str, tuple[int, int]]) -> str | None:
    """The first flag of `ranges` ({dest: (lowest, highest)}) given a value outside its range, as the error's
    text ("--batch 0: expected an integer in 1..1048576"); None when every given one fits."""
    for dest, (low, high) in ranges.items():
        value = getattr(args, dest, None)
        if value is not None and not low <= value <= high:
            shown = (
                value
                if value.bit_length() <= 256
                else f"(an integer of about {int(value.bit_length() * 0.30103) + 1} digits)"
            )
            return f"--{dest.replace('_', '-')} {shown}: expected an integer in {low}..{high}"
    return None
