"""Shared pytest setup: float32 compute for models built with dtype="auto", and the fault-injection group's report."""

from __future__ import annotations

import os
import sys

# Many tests compare effnet_jax with the torch twin or with stored numbers; on a GPU/TPU host "auto" would compute
# them in bfloat16. tests/test_precision.py unsets it where the per-backend choice is the subject.
os.environ["EFFNET_DTYPE"] = "float32"


def pytest_terminal_summary(terminalreporter):
    faults = sys.modules.get("test_faults")
    for line in faults.pytest_terminal_summary_lines() if faults else []:
        terminalreporter.write_line(line)
