#!/usr/bin/env bash
# One TPU VM (the twin of gpu.sh): (a) the bfloat16 b0 train step and inference, b3@300 / b7@600 train steps with
# remat="block" at the largest batch that fits (group accel, under 8 minutes), (b) the b7 step with scan off and on
# (scan, under 4), (c) a short `effnet train` on the digits (train, under 2). `tpu.sh [GROUP...]` runs only those
# (default: all), so a device call of at most 10 minutes takes accel, another scan and train.
# No torch rows: torch has no TPU backend here (torch_xla is not a dependency), so the ratios against torch AMP come
# from gpu.sh. Run from a copy of the repo root on the TPU VM with jax[tpu] installed (PYTHONPATH=.); everything
# lands in $OUT. Each step has its own timeout; a failing step does not stop the next; exit status = failed steps.
set -u
source "$(dirname "$0")/_steps.sh"  # OUT, PY, failed, step

GROUPS_WANTED=" ${*:-accel scan train} "
want() { [[ "$GROUPS_WANTED" == *" $1 "* ]]; }

{
    date -u
    "$PY" -c "import jax; print('jax', jax.__version__, jax.devices())"
    git rev-parse --short HEAD 2>/dev/null || true
} >"$OUT/env.log" 2>&1
cat "$OUT/env.log"

if want accel; then
    step accel_b0 120 "$PY" benchmarks/accelerator.py --only b0 --reps 10 --out "$OUT"
    step accel_remat_memory 60 "$PY" benchmarks/accelerator.py --only remat-memory --out "$OUT"
    step accel_b3 120 "$PY" benchmarks/accelerator.py --only b3 --reps 5 --out "$OUT"
    step accel_b7 150 "$PY" benchmarks/accelerator.py --only b7 --reps 5 --out "$OUT"
fi
want scan && step accel_scan 240 "$PY" benchmarks/accelerator.py --only scan --reps 5 --out "$OUT"
# dtype=auto computes in bfloat16 here; the digits run checks the whole loop (data, step, eval, checkpoint) on a TPU.
want train && step train_digits 120 "$PY" -m effnet_jax.train --workdir "$OUT/digits-run" --set steps=200
echo "tpu.sh: $failed step(s) failed"
exit "$failed"
