# Shared by gpu.sh and tpu.sh (sourced, not run): $OUT, $PY and a `failed` count, and `step`, which runs one command
# with its own timeout so that a failing or hanging step does not stop the next one.
OUT=${OUT:?"set OUT to the folder whose files come back"}
mkdir -p "$OUT"
export PYTHONPATH=. PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
failed=0

step() {  # step NAME SECONDS CMD...: run with a timeout, log to $OUT/NAME.log, report status
    local name=$1 secs=$2
    shift 2
    local t0=$SECONDS
    echo "== $name (timeout ${secs}s): $*"
    timeout --kill-after=10 "$secs" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "   $name: exit $rc after $((SECONDS - t0))s (log: $OUT/$name.log)"
    tail -n 5 "$OUT/$name.log"
    [ "$rc" -eq 0 ] || failed=$((failed + 1))
}
