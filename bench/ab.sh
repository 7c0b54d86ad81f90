#!/usr/bin/env bash
# Two builds of mailwit side by side, in alternating runs: for telling
# whether a change helps when two runs of one build differ by up to a third.
#
#   cp "$CARGO_TARGET_DIR/release/mailwit" /tmp/mailwit-before   # build A, then B
#   bench/ab.sh /tmp/mailwit-before /tmp/mailwit-after 64
#   MAILWIT_BENCH_ROUNDS=4 bench/ab.sh A B 64 --per-connection --starttls
#
# Both servers run at once with the stock function set and AUTH (as
# bench/compare.sh's mailwit), each idle while the other is driven; round
# by round the order flips (A B, B A, ...). One line per run: msg/s,
# p50/p99 to the 250, server and client CPU per message, then the medians.
# Compare the pairs (which build won each round) and the medians, not
# single runs.
# $MAILWIT_BENCH_ROUNDS rounds (default 6) of $MAILWIT_BENCH_SECONDS (5).

source "$(dirname "$0")/lib.sh"

[ $# -ge 3 ] || { echo "usage: bench/ab.sh <mailwit A> <mailwit B> <sessions> [smtpload flags]" >&2; exit 2; }
BIN_A=$1 BIN_B=$2 SESSIONS=$3
shift 3
ROUNDS=${MAILWIT_BENCH_ROUNDS:-6}

(cd "$ROOT" && cargo build --release -q -p mailwit-load)
trap stop_all EXIT
make_cert
MAILWIT=$BIN_A start_mailwit A 30587 30825 "" "$ONE_ADDRESS"
MAILWIT=$BIN_B start_mailwit B 30588 30826 "" "$ONE_ADDRESS"
submission_flags "$SESSIONS" "$@"
alternate "$ROUNDS" A B
