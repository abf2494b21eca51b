"""XLA_FLAGS for a test's child process: the suite's own (conftest.py) plus what the test needs."""

from __future__ import annotations

import os


def host_devices(n: int) -> str:
    """The suite's XLA_FLAGS with `n` CPU devices per process (`--xla_force_host_platform_device_count`)."""
    return " ".join(f for f in (os.environ.get("XLA_FLAGS", ""), f"--xla_force_host_platform_device_count={n}") if f)
