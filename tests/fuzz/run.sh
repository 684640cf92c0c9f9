#!/bin/sh
# Runs every libFuzzer binary of a -DATTN_FUZZ=ON build for SECONDS each, one
# after the other, and prints the executions of each. Usage:
#   sh tests/fuzz/run.sh BUILD_DIR SECONDS
# Each target starts from its committed seeds (tests/fuzz/corpus/NAME, read
# only) plus the inputs earlier runs found (BUILD_DIR/fuzz-corpus/NAME, where
# new ones go). A crash, leak, sanitizer report, timeout (> 10 s for one
# input) or out-of-memory (> 2 GiB) fails the run; the input is saved under
# BUILD_DIR/fuzz-artifacts/NAME/: fix the bug, then copy it into
# tests/fuzz/regressions/NAME/ so the replay test keeps it fixed.
set -eu
build=$1
seconds=$2
src=$(cd "$(dirname "$0")" && pwd)
bins=$(ls "$build"/tests/fuzz/fuzz_* 2>/dev/null | grep -v '_replay$' || true)
[ -n "$bins" ] || { echo "run.sh: no fuzz_* binaries in $build/tests/fuzz" >&2; exit 2; }
summary=""
failed=0
for bin in $bins; do
  name=$(basename "$bin" | sed 's/^fuzz_//')
  work="$build/fuzz-corpus/$name"
  artifacts="$build/fuzz-artifacts/$name/"
  mkdir -p "$work" "$artifacts"
  log="$build/fuzz-$name.log"
  echo "== fuzz $name: $seconds s (log: $log)"
  status=0
  "$bin" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$artifacts" "$work" "$src/corpus/$name" >"$log" 2>&1 || status=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
  corpus=$(ls "$work" | wc -l)
  if [ "$status" -ne 0 ]; then
    failed=1
    tail -n 60 "$log"
    echo "fuzz $name FAILED (exit $status); input saved in $artifacts"
    summary="$summary
$(printf '%-14s FAILED  executions=%s  (see %s)' "$name" "${execs:-?}" "$log")"
  else
    summary="$summary
$(printf '%-14s ok      executions=%-10s exec/s=%-7s corpus=%s new inputs' "$name" "${execs:-?}" "${rate:-?}" "$corpus")"
  fi
done
echo "== fuzz summary ($seconds s per target):$summary"
exit $failed
