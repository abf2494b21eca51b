"""What every test process shares: the tiers, and one persistent compilation cache.

Tiers (docs/design.md, "Tests"): a test marked `integration`, `slow` or `faults` belongs to that group; every other
test is `unit`, which builds no full-size variant and starts no `effnet train` process, so `pytest -m unit` is the
quick check while editing.

The compilation cache (effnet_jax.compilation_cache) lives in `.jax_cache/` at the repository root and is shared by
the xdist workers and every `effnet` subprocess a test starts (they inherit `EFFNET_COMPILATION_CACHE`), so the same
small model is compiled once per suite run, not once per process. `EFFNET_COMPILATION_CACHE=` (empty) switches it off.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

TIERS = ("integration", "slow", "faults")

os.environ.setdefault("EFFNET_COMPILATION_CACHE", str(Path(__file__).resolve().parent / ".jax_cache"))
# Store what took 0.2 s or more to compile: reading an entry back costs a few milliseconds.
os.environ.setdefault("EFFNET_COMPILATION_CACHE_MIN_S", "0.2")


def pytest_configure(config):
    from effnet_jax import compilation_cache

    compilation_cache.enable_from_env()


@pytest.hookimpl(tryfirst=True)  # before `-m` selects by marker
def pytest_collection_modifyitems(config, items):
    for item in items:
        if not any(item.get_closest_marker(tier) for tier in TIERS):
            item.add_marker(pytest.mark.unit)
