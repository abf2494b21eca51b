"""Benchmarks of effnet_jax against effnet_torch, side by side and interleaved in one process (`effnet bench`).

`harness` (environment record, timing, `Row`), `suites` (the cases and `run_suites`), `contenders` (the JAX and
torch builders), `report` (ratios, markdown, chart, `write_results`); the command line is `effnet_jax.cli.bench`.
Importing this package loads only the standard library: jax and torch are imported by the functions that run them.
"""

from .contenders import jax_inference, jax_train, jax_train_step, matmul_peak, torch_inference, torch_train
from .harness import NUM_CLASSES, Row, environment, interleaved, p90, peak_rss_mb, time_call
from .report import markdown, plot, ratios, write_results
from .suites import (
    CONTENDERS,
    INFERENCE_CASES,
    QUICK_INFERENCE_CASES,
    QUICK_TRAIN_CASES,
    SUITES,
    TRAIN_CASES,
    run_suites,
)

__all__ = [
    "CONTENDERS",
    "INFERENCE_CASES",
    "NUM_CLASSES",
    "QUICK_INFERENCE_CASES",
    "QUICK_TRAIN_CASES",
    "SUITES",
    "TRAIN_CASES",
    "Row",
    "environment",
    "interleaved",
    "jax_inference",
    "jax_train",
    "jax_train_step",
    "markdown",
    "matmul_peak",
    "p90",
    "peak_rss_mb",
    "plot",
    "ratios",
    "run_suites",
    "time_call",
    "torch_inference",
    "torch_train",
    "write_results",
]
