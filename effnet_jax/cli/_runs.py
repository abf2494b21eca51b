"""What `effnet search` and `effnet scaling` share around their work: the `--parallel` check and how each way of
ending becomes one line and an exit status (both drive the same runner of `effnet train` children)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

__all__ = ["run_children"]


def run_children(command: str, out: str, parallel: int | None, work: Callable[[], None]) -> int:
    """Run `work()` for `effnet COMMAND`; its exit status: 0 done, 2 a bad setting or file (ValueError, OSError), 1 a
    child run failed (RuntimeError: the runner names it and its log), PREEMPTED_EXIT stopped by a signal or Ctrl-C
    (rerun the same command to resume)."""
    from ..search.runner import SearchStopped
    from ..train.guard import PREEMPTED_EXIT

    try:
        cores = os.cpu_count() or 1
        if parallel is not None and not 1 <= parallel <= cores:
            raise ValueError(f"--parallel {parallel}: expected 1..{cores} (the cores; one run per device)")
        work()
    except SearchStopped as e:
        print(f"effnet {command}: {e}", file=sys.stderr)
        return PREEMPTED_EXIT
    except KeyboardInterrupt:
        print(f"effnet {command}: stopped; rerun the same command to resume ({out})", file=sys.stderr)
        return PREEMPTED_EXIT
    except (ValueError, OSError) as e:
        print(f"effnet {command}: error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        print(f"effnet {command}: {e}", file=sys.stderr)
        return 1
    return 0
