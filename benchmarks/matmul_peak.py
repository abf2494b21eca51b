"""Question: float32 matmul GFLOP/s for jax and torch, the peak the model rows are compared to.

Run from the repo root: `python benchmarks/matmul_peak.py [--quick]`; writes benchmarks/results/bench-*.{json,md,png}.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _run import run  # noqa: E402

if __name__ == "__main__":
    sys.exit(run("matmul"))
