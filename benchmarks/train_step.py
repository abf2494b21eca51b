"""Question: train step images/s (forward + backward + SGD), b0 at 224 and a small resolution.

Run from the repo root: `python benchmarks/train_step.py [--quick]`; writes benchmarks/results/bench-*.{json,md,png}.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _run import run  # noqa: E402

if __name__ == "__main__":
    sys.exit(run("train"))
