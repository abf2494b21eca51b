"""Readable logs: a warning is one line, and an unreadable image is named once, however often a reader meets it.

Python prints a warning with its source file, line number and the line of code that raised it: three things that
tell a command-line user nothing, on two lines. And a reader that replaces an unreadable image by the next readable
one meets the same bad file again for every item before it, so a run of bad files was named several times over.

Stdlib only: the CLI installs the format before jax is imported, and Grain's worker processes install it too.
"""

from __future__ import annotations

import contextlib
import warnings

__all__ = ["UnreadableImageWarning", "one_line_warnings", "skip_warning", "skipped_summary"]

PREFIX = "[effnet] warning: "


class UnreadableImageWarning(UserWarning):
    """An image a reader could not decode was skipped (and replaced by the next readable one)."""


def _one_line(message, category, filename, lineno, line=None) -> str:
    kind = "" if issubclass(category, UserWarning) else f"{category.__name__}: "  # a library's Deprecation/Future...
    text = " ".join(str(message).split())  # a multi-line message stays one line
    return f"{PREFIX}{kind}{text}\n"


def install_one_line_warnings() -> None:
    """Print every warning of this process as one line (a process of our own: the CLI's, a Grain worker)."""
    warnings.formatwarning = _one_line


@contextlib.contextmanager
def one_line_warnings():
    """Within: every warning is printed as one line; the previous format is restored after (the CLI's `main` may
    run inside a test or another program)."""
    before = warnings.formatwarning
    warnings.formatwarning = _one_line
    try:
        yield
    finally:
        warnings.formatwarning = before


def skip_warning(source: object, name: str, why: str) -> None:
    """Warn that `source` skipped the unreadable image `name` (`why`: the decoder's error), the first time only.

    A reader that replaces a bad item by the next readable one tries the same bad file again for each item before
    it; each file is named once per source and process, with the number of distinct files skipped so far.
    """
    named = source.__dict__.setdefault("_unreadable_named", {})
    mine = (why,)  # a new object: only the call that stored it names the file (Grain reads on several threads)
    if named.setdefault(name, mine) is not mine:
        return
    warnings.warn(
        f"skipping unreadable image {name!r} ({why}); {len(named)} skipped so far in this process",
        UnreadableImageWarning,
        stacklevel=3,  # the reader's caller
    )


def skipped_summary(source: object) -> str:
    """How many distinct unreadable images `source` has skipped in this process, and the first: for the line that
    ends a run of them (empty when none was)."""
    named = source.__dict__.get("_unreadable_named") or {}
    if not named:
        return ""
    first = next(iter(named))
    return f"{len(named)} unreadable image{'s' if len(named) > 1 else ''} skipped in this process, the first {first!r}"
