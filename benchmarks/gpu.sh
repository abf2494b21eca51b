#!/usr/bin/env bash
# One GPU: (a) the parity suite on CUDA, (b) the benchmark suite (together under 5 minutes), (c) bfloat16 training and
# inference against torch AMP and the big variants with remat (under 9 minutes), (d) the b7 train step with scan off
# and on (under 4 minutes).
# `gpu.sh [GROUP...]` runs only those groups (parity bench accel scan; default: all), so a device call of at most 10
# minutes can take (a), (b) and (d), another (c).
# Run from a copy of the repo root on the GPU machine (package not installed: PYTHONPATH=.). Everything lands in $OUT.
# Each step has its own timeout, and a failing step does not stop the next one; exit status = number of failed steps.
set -u
source "$(dirname "$0")/_steps.sh"  # OUT, PY, failed, step
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # jax and torch share the card: no 75% up-front grab by jax
export EFFNET_TEST_DEVICE=cuda

GROUPS_WANTED=" ${*:-parity bench accel scan} "
want() { [[ "$GROUPS_WANTED" == *" $1 "* ]]; }

{
    date -u
    nvidia-smi || true
    "$PY" -c "import jax, torch; print('jax', jax.__version__, jax.devices()); print('torch', torch.__version__, torch.cuda.is_available())"
    git rev-parse --short HEAD 2>/dev/null || true
} >"$OUT/env.log" 2>&1
cat "$OUT/env.log"

# (a) parity: values and gradients of both twins, on the GPU.
if ! want parity; then
    :
elif "$PY" -c "import pytest" 2>/dev/null; then
    step parity 150 "$PY" -m pytest parity_tests -q -m "not slow" --ignore=parity_tests/external -p no:cacheprovider -rfE
else
    echo "pytest is not installed for $PY: parity step skipped" | tee "$OUT/parity.log"
    failed=$((failed + 1))
fi
# (b) benchmarks: eager contenders first (always come back), then torch.compile separately (slow to compile).
if want bench; then
    step bench 75 "$PY" -m effnet_jax bench --quick --out "$OUT" --tag gpu-eager \
        --contenders jax,torch_nchw,torch_cl
    step bench_compile 70 "$PY" -m effnet_jax bench --quick --out "$OUT" --tag gpu-compile \
        --only inference --contenders jax,torch_compile
fi
# (c) bfloat16 (issue 14): b0@224 batch-256 train step and inference against torch AMP channels_last (eager and
# torch.compile), then b3@300 / b7@600 train steps with remat="block" at the largest batch that fits.
if want accel; then
    step accel_b0 180 "$PY" benchmarks/accelerator.py --only b0 --reps 10 --out "$OUT"
    step accel_remat_memory 60 "$PY" benchmarks/accelerator.py --only remat-memory --out "$OUT"
    step accel_b3 120 "$PY" benchmarks/accelerator.py --only b3 --reps 5 --out "$OUT"
    step accel_b7 170 "$PY" benchmarks/accelerator.py --only b7 --reps 5 --out "$OUT"
fi
# (d) compile seconds and step speed of the b7@600 bf16 train step (remat="dots", batch 16), scan off and on.
want scan && step accel_scan 240 "$PY" benchmarks/accelerator.py --only scan --reps 5 --out "$OUT"
echo "gpu.sh: $failed step(s) failed"
exit "$failed"
