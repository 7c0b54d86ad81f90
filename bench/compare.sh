#!/usr/bin/env bash
# mailwit side by side with Postfix, driven by the same client.
#
#   bench/compare.sh                 # every shape, 3 rounds of 5 s runs (about 11 minutes)
#   MAILWIT_BENCH_SECONDS=10 bench/compare.sh
#   MAILWIT_BENCH_ROUNDS=1 bench/compare.sh      # one run per server and shape
#   bench/compare.sh 64:reused:plain 64:new:starttls    # only these shapes
#   MAILWIT_BENCH_FUNCTIONS=stock bench/compare.sh  # the stock decisions in one component
#
# Needs root (it installs Postfix from Debian when missing, configures and
# starts it on 127.0.0.1:30025; see bench/lib.sh). Three servers run at
# once, each idle while another is driven: Postfix 3.7 (fsync'd queue,
# discard transport, relaying for mynetworks without AUTH: the comparison
# favours it), mailwit with the five stock functions (the demo tenant's set;
# MAILWIT_BENCH_FUNCTIONS=stock: builtin:stock instead) and AUTH (release build,
# durable spool, discard route), and mailwit with --unsafe-noop-policy (no
# component is asked; AUTH is accepted without a check). A shape is a
# session count, reused connections or a new connection per message, and
# plaintext or STARTTLS; within a shape the three servers run in a rotating
# order, $MAILWIT_BENCH_ROUNDS times (3). For each run: accepted msg/s, p50
# and p99 from the end of the data to its 250, the server's CPU per message
# (mailwit: its process; Postfix: the master and every child, reaped ones
# included) and the client's CPU per message (bench/load, smtpload). The
# table gives each server's median run by msg/s (its other figures are that
# run's) and the lowest and highest msg/s of its rounds: on a shared 2-core
# machine two runs of one server can differ by a third. Results: a table on
# stdout, every run as a JSON line in $MAILWIT_BENCH_DIR/compare.jsonl
# (/tmp/mailwit-bench).

source "$(dirname "$0")/lib.sh"

SHAPES=("$@")
if [ ${#SHAPES[@]} = 0 ]; then
	for tls in plain starttls; do
		for conn in reused new; do
			for s in 1 16 64; do SHAPES+=("$s:$conn:$tls"); done
		done
	done
fi

build
trap stop_all EXIT
make_cert
start_mailwit wasm 30587 30825 "" "$ONE_ADDRESS"
start_mailwit noop 30588 30826 "--unsafe-noop-policy" "$ONE_ADDRESS"
start_postfix "$WORK/cert.pem" "$WORK/key.pem"

OUT=$WORK/compare.jsonl
: >"$OUT"
i=0
for shape in "${SHAPES[@]}"; do
	IFS=: read -r sessions conn tls <<<"$shape"
	flags=(--sessions "$sessions")
	[ "$conn" = new ] && flags+=(--per-connection)
	[ "$tls" = starttls ] && flags+=(--starttls --cafile "$WORK/cert.pem")
	for _ in $(seq "$ROUNDS"); do
		servers=(postfix wasm noop)
		# Rotate the order from one round (and shape) to the next.
		servers=("${servers[@]:$((i % 3))}" "${servers[@]:0:$((i % 3))}")
		i=$((i + 1))
		for server in "${servers[@]}"; do
			case $server in
			postfix) r=$(run "$POSTFIX_PORT" postfix_ticks "${flags[@]}" --from load@bench.example --label "$shape postfix") ;;
			wasm) r=$(run 30587 cpu_wasm "${flags[@]}" "${BENCH_USER[@]}" --label "$shape wasm") ;;
			noop) r=$(run 30588 cpu_noop "${flags[@]}" "${BENCH_USER[@]}" --label "$shape noop") ;;
			esac
			echo "$r" >>"$OUT"
			summary "$r" >&2
		done
	done
done

python3 - "$OUT" <<'EOF'
import json, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
rounds = {}
for r in runs:
    shape, server = r["label"].rsplit(" ", 1)
    rounds.setdefault(shape, {}).setdefault(server, []).append(r)
def median(rs):
    rs = sorted(rs, key=lambda r: r["rate"])
    return rs[(len(rs) - 1) // 2]
def spread(rs):
    if len(rs) < 2:
        return ""
    return f" ({min(r['rate'] for r in rs):,.0f}-{max(r['rate'] for r in rs):,.0f})"
print("| shape | Postfix msg/s | mailwit msg/s | ratio | no-op msg/s | policy loss | p50 / p99 ms (Postfix, mailwit) | server CPU us/msg (Postfix, mailwit, no-op) | client CPU us/msg (Postfix, mailwit) | errors |")
print("|---|---|---|---|---|---|---|---|---|---|")
for shape, s in rounds.items():
    p, w, n = median(s["postfix"]), median(s["wasm"]), median(s["noop"])
    sp, sw, sn = spread(s["postfix"]), spread(s["wasm"]), spread(s["noop"])
    errors = [sum(r["errors"] for r in s[k]) for k in ("postfix", "wasm", "noop")]
    sessions, conn, tls = shape.split(":")
    name = f"{sessions} {'session' if sessions == '1' else 'sessions'}, {'connection reused' if conn == 'reused' else 'new connection per message'}, {tls}"
    ratio = w["rate"] / p["rate"] if p["rate"] else float("nan")
    loss = 1 - w["rate"] / n["rate"] if n["rate"] else float("nan")
    print(f"| {name} | {p['rate']:,.0f}{sp} | {w['rate']:,.0f}{sw} | {ratio:.1f}x | {n['rate']:,.0f}{sn} | {loss:.0%} "
          f"| {p['p50_ms']:.1f} / {p['p99_ms']:.1f}, {w['p50_ms']:.1f} / {w['p99_ms']:.1f} "
          f"| {p['server_cpu_us_per_msg']:.0f}, {w['server_cpu_us_per_msg']:.0f}, {n['server_cpu_us_per_msg']:.0f} "
          f"| {p['client_cpu_us_per_msg']:.0f}, {w['client_cpu_us_per_msg']:.0f} "
          f"| {errors[0]}, {errors[1]}, {errors[2]} |")
EOF
