"""Question: inference images/s: effnet_jax vs effnet_torch (eager NCHW, channels_last, torch.compile).

Run from the repo root: `python benchmarks/inference.py [--quick]`; writes benchmarks/results/bench-*.{json,md,png}.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _run import run  # noqa: E402

if __name__ == "__main__":
    sys.exit(run("inference"))
