"""Shared pytest hooks: the fault-injection group reports what it injected."""

from __future__ import annotations

import sys


def pytest_terminal_summary(terminalreporter):
    faults = sys.modules.get("test_faults")
    for line in faults.pytest_terminal_summary_lines() if faults else []:
        terminalreporter.write_line(line)
