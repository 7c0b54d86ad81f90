#!/usr/bin/env bash
# Runs every fuzz target (the protocol core's and the rules parser's) for
# SECONDS each (default 10, the smoke run of ./test), from the committed
# seeds in corpus/<target>/.
# New inputs go to a scratch corpus beside the build, not into the tree.
#
#   fuzz/run.sh               10 s per target
#   fuzz/run.sh 3600 session  one CPU-hour of the session target
#
# Needs the nightly toolchain and cargo-fuzz (./test installs both). A
# crash stops the run and leaves its input in artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-10}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(session command data framing reply rules)
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}/fuzz"
scratch="$CARGO_TARGET_DIR/corpus"
for t in "${targets[@]}"; do
  mkdir -p "$scratch/$t"
  printf '== fuzz %s for %ss\n' "$t" "$seconds" >&2
  log="$scratch/$t.log"
  if ! cargo +nightly fuzz run "$t" "$scratch/$t" "corpus/$t" -- \
    -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
    tail -40 "$log" >&2
    echo "fuzz target $t failed (its input is in fuzz/artifacts/$t/)" >&2
    exit 1
  fi
  # The figures, without libFuzzer's chatter.
  grep -E '^(Done|stat::number_of_executed_units|stat::peak_rss_mb)|^#[0-9]+.*DONE' "$log" >&2 || true
done
