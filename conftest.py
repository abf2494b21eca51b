"""What every test process shares: the tiers, and one persistent compilation cache.

Tiers (docs/design.md, "Tests"): a test marked `integration`, `slow` or `faults` belongs to that group; every other
test is `unit`, which builds no full-size variant and starts no `effnet train` process, so `pytest -m unit` is the
quick check while editing.

The compilation cache (effnet_jax.compilation_cache) lives in `.jax_cache/` at the repository root and is shared by
the xdist workers and every `effnet` subprocess a test starts (they inherit `EFFNET_COMPILATION_CACHE`), so the same
small model is compiled once per suite run, not once per process. `EFFNET_COMPILATION_CACHE=` (empty) switches it off.

Modules run longest first (`FIRST`): under `--dist loadscope` xdist hands out whole modules in collection order, so
one long module started last would run alone at the end while the other worker idles.

The faults group (tests/test_faults.py) draws its kill moments from one seed per suite run, which every xdist worker
inherits from this process's environment; each passed trial records what it hit, and the summary prints the counts
with the seed.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

TIERS = ("integration", "slow", "faults")
# The longest modules (measured on 2 cores, longest first): scheduled before everything else.
FIRST = ("test_train", "test_eval_parity", "test_faults", "test_export", "test_search_runs", "test_readme",
         "test_pretrained", "test_distributed", "test_finetune", "test_train_parity",
         "test_remat", "test_scan", "test_native", "test_precision")  # fmt: skip
FAULTS: dict[str, int] = {}
os.environ.setdefault("EFFNET_FAULT_SEED", str(random.SystemRandom().randrange(10**6)))

# XLA CPU's compile is most of the suite's time on 2 cores (LLVM's passes and the fusion emitters, seconds per block
# of a train step); the tests check what a program computes, not how fast its machine code runs. Every test process
# and every process it starts compiles with LLVM at -O0 and XLA's older loop emitter, which compile a train step in
# less than half the time. The same HLO programs (XLA's own passes, buffer assignment, memory analysis are
# unchanged); the default code generation stays covered where it is measured and compared with the other libraries:
# `.ci/external` and `benchmarks/` run without these flags. Set XLA_FLAGS (even empty) to choose your own.
SUITE_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
os.environ.setdefault("XLA_FLAGS", SUITE_XLA_FLAGS)
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
    rank = {name: i for i, name in enumerate(FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(FIRST)))  # stable: the rest keep their order


def pytest_runtest_logreport(report):
    """Count the faults trials that passed (under xdist: on the controller, from every worker's reports)."""
    if report.when == "call" and report.passed:
        for key, what in report.user_properties:
            if key == "fault":
                FAULTS[what] = FAULTS.get(what, 0) + 1


def pytest_terminal_summary(terminalreporter):
    if FAULTS:
        seed = os.environ["EFFNET_FAULT_SEED"]
        terminalreporter.write_line(f"fault injection (EFFNET_FAULT_SEED={seed}): {sum(FAULTS.values())} trials passed")
        for what, n in sorted(FAULTS.items()):
            terminalreporter.write_line(f"  {n} x {what}")
