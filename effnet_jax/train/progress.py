"""The progress of a run: a tqdm bar on a terminal, plain lines now and then anywhere else.

A bar redraws itself in place with carriage returns; sent to a file, a pipe or a CI log, every redraw stays, and
the log fills with frames. So the bar is drawn only where stderr is a terminal; elsewhere the same numbers come as
a line every `PLAIN_EVERY_S` seconds (and at the end), in the `[effnet]` form of the other notes.
"""

from __future__ import annotations

import sys
import time

__all__ = ["PLAIN_EVERY_S", "PlainProgress", "is_terminal", "progress_bar"]

PLAIN_EVERY_S = 30.0  # a redirected run's progress line at most this often (the last step always gets one)


def is_terminal(stream) -> bool:
    """Whether `stream` shows a bar as one (a terminal redraws it in place)."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress_bar(total: int, initial: int = 0, *, enabled: bool = True, unit: str = "step", stream=None,
                 every_s: float = PLAIN_EVERY_S):  # fmt: skip
    """A bar with tqdm's `update`, `set_postfix`, `n`, `write` and `close`: tqdm's own on a terminal, `PlainProgress`
    elsewhere, a silent one when not `enabled`."""
    from tqdm import tqdm

    stream = sys.stderr if stream is None else stream
    if enabled and not is_terminal(stream):
        return PlainProgress(total, initial, unit=unit, stream=stream, every_s=every_s)
    return tqdm(total=total, initial=initial, disable=not enabled, unit=unit, dynamic_ncols=True, file=stream)


class PlainProgress:
    """tqdm's interface, printed as whole lines: `[effnet] step 200/2400 (8%) loss=0.512 acc=0.850 img_s=430;
    1:05 elapsed, ~11:55 left`."""

    def __init__(
        self, total: int, initial: int = 0, *, unit: str = "step", stream=None, every_s: float = PLAIN_EVERY_S
    ):
        self.total, self.n, self.unit = total, initial, unit
        self.stream = sys.stderr if stream is None else stream
        self.every_s = every_s
        self.postfix: dict[str, object] = {}
        self._t0 = time.monotonic()
        # (n, time) at the first update: the rate is timed from there, not from the compile before it
        self._first: tuple[int, float] | None = None
        self._last: float | None = None  # when the last line was printed

    def set_postfix(self, **values) -> None:
        self.postfix = values

    def update(self, k: int = 1) -> None:
        self.n += k
        now = time.monotonic()
        self._first = self._first or (self.n, now)
        if self.n >= self.total or self._last is None or now - self._last >= self.every_s:
            self._last = now
            self.write(self._line(now))

    def write(self, line: str) -> None:
        print(line, file=self.stream, flush=True)

    def close(self) -> None:
        pass

    def _line(self, now: float) -> str:
        share = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        values = "".join(f" {k}={v}" for k, v in self.postfix.items())
        (n0, t0), elapsed = self._first, now - self._t0
        rate = (self.n - n0) / (now - t0) if self.n > n0 and now > t0 else 0.0
        left = f", ~{_clock((self.total - self.n) / rate)} left" if rate and self.n < self.total else ""
        return f"[effnet] {self.unit} {self.n}/{self.total}{share}{values}; {_clock(elapsed)} elapsed{left}"


def _clock(seconds: float) -> str:
    """h:mm:ss or m:ss, as tqdm shows times."""
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
