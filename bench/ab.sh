#!/usr/bin/env bash
# Two builds of mailwit side by side, in alternating runs: for telling
# whether a change helps when two runs of one build differ by up to a third.
#
#   cp "$CARGO_TARGET_DIR/release/mailwit" /tmp/mailwit-before   # build A, then B
#   bench/ab.sh /tmp/mailwit-before /tmp/mailwit-after 64
#   MAILWIT_BENCH_ROUNDS=4 bench/ab.sh A B 64 --per-connection --starttls
#
# bench/sets.sh with the bench function set ($MAILWIT_BENCH_FUNCTIONS, five
# by default) on each build: one line per run, then the medians. Compare
# the pairs (which build won each round) and the medians, not single runs.

[ $# -ge 3 ] || { echo "usage: bench/ab.sh <mailwit A> <mailwit B> <sessions> [smtpload flags]" >&2; exit 2; }
set=${MAILWIT_BENCH_FUNCTIONS:-five}
A=$1 B=$2
shift 2
MAILWIT_BENCH_SETS="$set@$A $set@$B" exec "$(dirname "$0")/sets.sh" "$@"
