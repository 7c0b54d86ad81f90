#!/usr/bin/env bash
# mailwit under attack: what an AUTH flood and a looping tenant cost the
# others.
#
#   bench/hostile.sh                  # 5 s per run (about 2 minutes)
#   MAILWIT_BENCH_SECONDS=10 bench/hostile.sh
#
# One release server (bench/lib.sh's configuration) with two tenants:
# `bench` (the stock function set, discarding) and `evil`, whose
# check-sender is the test component `hostile` in mode `loop` (it never
# returns). Each attack runs between two runs without it (A B A), so that
# a drift of the shared machine shows:
#
# - AUTH flood: 16 sessions of bench opening a new connection per message
#   (AUTH each time: cached logins) while 200 connections from 127.0.0.2-11
#   send three wrong AUTH PLAIN each, again and again. Reported: bench's
#   msg/s, p99 to the 250, its logins' p99 and slowest, the flood's replies
#   by code, and the server's peak resident memory before and after.
# - One looping session: 63 sessions of bench (connections reused) beside
#   one session of a looping tenant, against 63 sessions alone, in
#   $MAILWIT_BENCH_LOOP_ROUNDS alternating pairs (3; without-with, then
#   with-without, ...). Each pair's looping session is a tenant of its own
#   (evil1, evil2, ...: the same component, a fresh record of deadline hits
#   and no quarantine yet), so every pair measures the same attack.
#   Reported: each run, the medians of bench's msg/s and p99 with and
#   without it and of each pair's change, what the looping sessions got,
#   and the looping tenants' policy CPU.
#
# Every run's JSON is in $MAILWIT_BENCH_DIR/hostile.jsonl (/tmp/mailwit-bench).

source "$(dirname "$0")/lib.sh"

build
trap stop_all EXIT
make_cert
HOSTILE=$TARGET/wasm-components/wasm32-wasip2/release/mailwit_hostile.wasm
[ -e "$HOSTILE" ] || { echo "no $HOSTILE: build the components first (cargo build)" >&2; exit 1; }
LOOP_ROUNDS=${MAILWIT_BENCH_LOOP_ROUNDS:-3}
EVIL=$'[limits]\nmax_connections_per_ip = 1000\n'
for i in $(seq "$LOOP_ROUNDS"); do
	EVIL+=$(cat <<EOF

[[tenants]]
id = "evil$i"
functions = [
    { name = "auth", component = "builtin:auth" },
    { name = "hostile", component = "$HOSTILE" },
]
[tenants.rules.hostile]
mode = "loop"
EOF
)
done
start_mailwit server 30587 30825 "" "$EVIL"
for i in $(seq "$LOOP_ROUNDS"); do
	echo "$PASSWORD" | "$MAILWIT" tenant --config "$WORK/server/mailwit.toml" user add "evil$i" "mallory@evil$i.example" --password-stdin >/dev/null
done

peak_rss_mib() { awk '/VmHWM/ { print int($2 / 1024) }' "/proc/$PID_server/status"; }
OUT=$WORK/hostile.jsonl
: >"$OUT"
show() {
	echo "$1" >>"$OUT"
	echo "$1" | python3 -c 'import json,sys; r=json.load(sys.stdin); print("%-34s %8.0f msg/s  p99 %6.1f ms  logins p99 %6.1f ms max %6.1f ms  refused %d  errors %d  flood %s" % (r["label"], r["rate"], r["p99_ms"], r["login_p99_ms"], r["login_max_ms"], r["refused"], r["errors"], r["flood_replies"]))'
}

# Warm up: the first login of bench (argon2), the components compiled.
run 30587 cpu_server --sessions 16 "${BENCH_USER[@]}" --label warm-up >/dev/null
RSS_BEFORE=$(peak_rss_mib)

show "$(run 30587 cpu_server --sessions 16 --per-connection "${BENCH_USER[@]}" --label 'flood: before')"
"$LOAD" --addr 127.0.0.1:30587 --seconds "$SECONDS_PER_RUN" --sessions 200 --sources 10 \
	--auth-flood --auth bench@bench.example:wrong --label 'flood: the attackers' >"$WORK/flood.json" &
FLOOD=$!
show "$(run 30587 cpu_server --sessions 16 --per-connection "${BENCH_USER[@]}" --label 'flood: during')"
wait "$FLOOD"
show "$(cat "$WORK/flood.json")"
RSS_AFTER=$(peak_rss_mib)
# The attackers' addresses are in back-off for a while; bench's is not.
show "$(run 30587 cpu_server --sessions 16 --per-connection "${BENCH_USER[@]}" --label 'flood: after')"

# One run of the 63 sessions beside the looping tenant evil$1, and one alone.
beside_loop() {
	"$LOAD" --addr 127.0.0.1:30587 --seconds "$SECONDS_PER_RUN" --sessions 1 \
		--auth "mallory@evil$1.example:$PASSWORD" --from "m@evil$1.example" \
		--label "loop: the looping session $1" >"$WORK/loop.json" &
	local loop=$!
	show "$(run 30587 cpu_server --sessions 63 "${BENCH_USER[@]}" --label "loop: with $1")"
	wait "$loop"
	show "$(cat "$WORK/loop.json")"
}
alone() {
	show "$(run 30587 cpu_server --sessions 63 "${BENCH_USER[@]}" --label "loop: without $1")"
}
for i in $(seq "$LOOP_ROUNDS"); do
	if [ $((i % 2)) = 1 ]; then alone "$i" && beside_loop "$i"; else beside_loop "$i" && alone "$i"; fi
done
python3 - "$OUT" <<'EOF'
import json, statistics, sys
runs = {r["label"]: r for r in map(json.loads, open(sys.argv[1]))}
pairs = [(runs[f"loop: without {i}"], runs[f"loop: with {i}"])
         for i in range(1, len(runs)) if f"loop: with {i}" in runs]
for key, what in (("rate", "msg/s"), ("p99_ms", "p99 ms")):
    alone = statistics.median(a[key] for a, _ in pairs)
    beside = statistics.median(b[key] for _, b in pairs)
    changes = [b[key] / a[key] - 1 for a, b in pairs]
    print(f"loop, {len(pairs)} pairs: bench's {what} {alone:,.1f} alone, {beside:,.1f} beside it; "
          f"change per pair {', '.join(f'{c:+.1%}' for c in changes)} (median {statistics.median(changes):+.1%})")
EOF

echo "peak resident memory: ${RSS_BEFORE} MiB before the flood, ${RSS_AFTER} MiB after"
curl -s http://127.0.0.1:30825/metrics | grep -E '^mailwit_(auth_checks|auth_refused|smtp_refusals_delayed|policy_quarantines|policy_deadline_hits|policy_cpu_(seconds|throttled))_total' || true
grep -c '"policy.quarantine"\|event="policy.quarantine"' "$WORK/server/log" | sed 's/^/quarantine log events: /'
