# What bench/compare.sh and bench/hostile.sh share: building, starting
# mailwit and Postfix, reading their CPU time and memory. Sourced, not run.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
MAILWIT=$TARGET/release/mailwit
LOAD=$TARGET/release/smtpload
WORK=${MAILWIT_BENCH_DIR:-/tmp/mailwit-bench}
SECONDS_PER_RUN=${MAILWIT_BENCH_SECONDS:-5}
ROUNDS=${MAILWIT_BENCH_ROUNDS:-3}
POSTFIX_PORT=30025
PASSWORD=bench-password-0123

build() {
	(cd "$ROOT" && cargo build --release -q -p mailwit -p mailwit-load)
}

# One certificate (ECDSA P-256, for 127.0.0.1) for every server.
make_cert() {
	mkdir -p "$WORK"
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
		-subj /CN=localhost -addext subjectAltName=IP:127.0.0.1,DNS:localhost \
		-addext basicConstraints=critical,CA:FALSE \
		-keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null
	chmod 644 "$WORK/key.pem"
}

# A process's CPU time so far (user + system), in clock ticks.
ticks() {
	awk '{ print $14 + $15 }' "/proc/$1/stat"
}

# Postfix's CPU time: the master, its live children, and the children it
# has reaped (the master's cutime + cstime).
postfix_ticks() {
	local master total=0 pid
	master=$(head -1 /var/spool/postfix/pid/master.pid | tr -d ' ')
	total=$(awk '{ print $14 + $15 + $16 + $17 }' "/proc/$master/stat")
	for pid in $(pgrep -P "$master"); do
		total=$((total + $(ticks "$pid" 2>/dev/null || echo 0)))
	done
	echo "$total"
}

# The bench tenant's function set, by name: the five stock functions, as
# the demo tenant has them (five, the default), the same decisions in one
# component (stock), or only auth and router (one: the least policy that
# still decides each message, one call per message and no parse).
# MAILWIT_BENCH_FUNCTIONS chooses it; bench/sets.sh sets it per server.
FUNCTIONS=${MAILWIT_BENCH_FUNCTIONS:-five}
known_set() {
	case "$1" in
	five | stock | one) ;;
	*)
		echo "a function set is five, stock or one, not $1" >&2
		exit 2
		;;
	esac
}
known_set "$FUNCTIONS"
bench_functions() {
	local f set
	case "$FUNCTIONS" in
	five) set="auth sender content ib-headers router" ;;
	stock) set="stock" ;;
	one) set="auth router" ;;
	esac
	for f in $set; do
		echo "    { name = \"$f\", component = \"builtin:$f\" },"
	done
}

# mailwit's configuration for a benchmark server: one listener offering
# STARTTLS and plaintext AUTH, `bench_functions`, the tenant `bench`
# discarding what it accepts (its user is added once the server runs).
# $1 data dir, $2 SMTP port, $3 admin port, $4 more configuration.
mailwit_config() {
	cat <<EOF
data_dir = "$1"
[admin]
addr = "127.0.0.1:$3"
token = "bench"
[status_api]
addr = "127.0.0.1:0"
[tls]
cert = "$WORK/cert.pem"
key = "$WORK/key.pem"
[[listeners]]
name = "bench"
addr = "127.0.0.1:$2"
tls = "starttls"
plaintext_auth = true
[[tenants]]
id = "bench"
functions = [
$(bench_functions)
]
[tenants.rules.senders]
domains = ["bench.example"]
[tenants.rules.route]
default = "discard"
$4
EOF
}

# Starts mailwit: $1 name, $2 SMTP port, $3 admin port, $4 extra serve
# flags, $5 more configuration. Sets PID_<name> and PORT_<name>, and
# defines cpu_<name> (its CPU time so far, for `run`). Waits for `ready`,
# then adds the user bench@bench.example (BENCH_USER logs in as it).
start_mailwit() {
	local name=$1 dir=$WORK/$1
	rm -rf "$dir" && mkdir -p "$dir"
	mailwit_config "$dir/data" "$2" "$3" "${5:-}" >"$dir/mailwit.toml"
	# shellcheck disable=SC2086
	"$MAILWIT" serve --config "$dir/mailwit.toml" $4 >"$dir/log" 2>&1 &
	eval "PID_$name=$! PORT_$name=$2"
	eval "cpu_$name() { ticks $!; }"
	for _ in $(seq 600); do
		grep -q 'ready' "$dir/log" && break
		sleep 0.1
	done
	grep -q 'ready' "$dir/log" || { cat "$dir/log"; echo "mailwit $name did not start" >&2; exit 1; }
	echo "$PASSWORD" | "$MAILWIT" tenant --config "$dir/mailwit.toml" user add bench bench@bench.example --password-stdin >/dev/null
}

stop_all() {
	local v
	for v in $(compgen -v PID_); do
		kill "${!v}" 2>/dev/null || true
	done
	wait 2>/dev/null || true
	if [ -e /var/spool/postfix/pid/master.pid ]; then postfix stop >/dev/null 2>&1 || true; fi
}

# Debian's Postfix as ../shared/NOTES.md describes: installed without
# questions, on 127.0.0.1:$POSTFIX_PORT, every domain relayed from
# mynetworks (no AUTH: that favours Postfix) to the discard transport,
# the fsync'd queue as shipped, STARTTLS with mailwit's certificate.
# $1 certificate, $2 key.
start_postfix() {
	if ! command -v postfix >/dev/null; then
		local sudo=""
		[ "$(id -u)" = 0 ] || sudo=sudo
		echo "postfix postfix/main_mailer_type select No configuration" | $sudo debconf-set-selections
		$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postfix >/dev/null
	fi
	[ "$(id -u)" = 0 ] || { echo "Postfix must be configured and started as root" >&2; exit 1; }
	postfix stop >/dev/null 2>&1 || true
	touch /etc/postfix/main.cf
	[ -e /var/spool/postfix/etc/services ] || /usr/lib/postfix/configure-instance.sh - >/dev/null 2>&1 || true
	postconf -e \
		"maillog_file = /var/log/postfix-bench.log" \
		"compatibility_level = 3.6" \
		"inet_interfaces = 127.0.0.1" \
		"inet_protocols = ipv4" \
		"myhostname = postfix.bench.example" \
		"mydestination =" \
		"mynetworks = 127.0.0.0/8" \
		"relayhost =" \
		"default_transport = discard" \
		"relay_transport = discard" \
		"local_transport = discard" \
		"smtpd_relay_restrictions = permit_mynetworks, reject" \
		"default_process_limit = 256" \
		"smtpd_client_connection_count_limit = 0" \
		"smtpd_client_connection_rate_limit = 0" \
		"smtpd_tls_cert_file = $1" \
		"smtpd_tls_key_file = $2" \
		"smtpd_tls_security_level = may"
	postconf -M# smtp/inet >/dev/null 2>&1 || true
	postconf -Me "$POSTFIX_PORT/inet = $POSTFIX_PORT inet n - n - - smtpd"
	postfix start >/dev/null 2>&1
	for _ in $(seq 100); do
		(exec 3<>"/dev/tcp/127.0.0.1/$POSTFIX_PORT") 2>/dev/null && return
		sleep 0.1
	done
	echo "Postfix did not start; see /var/log/postfix-bench.log" >&2
	exit 1
}

# What compare.sh and ab.sh add to mailwit's configuration: all their
# sessions come from 127.0.0.1.
ONE_ADDRESS=$'[limits]\nmax_connections_per_ip = 1000'

# One run's JSON ($1, from `run`) as a line of text, after $2 if given.
summary() {
	echo "$1" | python3 -c 'import json,sys; r=json.load(sys.stdin); print("%s%-28s %7.0f msg/s  p50 %5.1f p99 %6.1f ms  server %5.0f us/msg  client %4.0f us/msg  errors %d" % (sys.argv[1], r["label"], r["rate"], r["p50_ms"], r["p99_ms"], r["server_cpu_us_per_msg"], r["client_cpu_us_per_msg"], r["errors"]))' "${2:-}"
}

# One load run against 127.0.0.1:$1 with the server's CPU read around it
# by $2 (a command printing ticks). Prints the client's JSON with
# server_cpu_us_per_msg added. $3... are smtpload's flags.
run() {
	local port=$1 cpu=$2 before after out
	shift 2
	before=$($cpu)
	out=$("$LOAD" --addr "127.0.0.1:$port" --seconds "$SECONDS_PER_RUN" "$@")
	after=$($cpu)
	python3 -c '
import json, sys
r = json.loads(sys.argv[1])
t = int(sys.argv[3]) - int(sys.argv[2])
r["server_cpu_us_per_msg"] = t * 1e4 / r["accepted"] if r["accepted"] else 0
print(json.dumps(r))' "$out" "$before" "$after"
}

# smtpload's flags for mailwit's bench user.
BENCH_USER=(--auth "bench@bench.example:$PASSWORD" --from load@bench.example)

# RUN_FLAGS for mailwit's bench user: $1 sessions, then smtpload's flags
# (with --starttls, the bench certificate is trusted).
submission_flags() {
	RUN_FLAGS=(--sessions "$@" "${BENCH_USER[@]}")
	[[ " $* " == *" --starttls "* ]] && RUN_FLAGS+=(--cafile "$WORK/cert.pem")
	return 0
}

# Drives the servers named $2... (each started with start_mailwit; its
# label LABEL_<name>, if set, else its name) in $1 rounds, the order reversed every other
# round, each idle while another runs. Flags for smtpload in the array
# RUN_FLAGS. One line per run, then each server's medians (msg/s and
# server CPU per message).
alternate() {
	local rounds=$1 round server order r lines=""
	shift
	for round in $(seq "$rounds"); do
		order="$*"
		[ $((round % 2)) = 0 ] && order=$(printf '%s\n' "$@" | tac | xargs)
		for server in $order; do
			local port=PORT_$server label=LABEL_$server
			r=$(run "${!port}" "cpu_$server" "${RUN_FLAGS[@]}" --label "${!label:-$server}")
			summary "$r" "round $round  "
			lines+="$r"$'\n'
		done
	done
	printf '%s' "$lines" | python3 -c '
import json, statistics, sys
runs = {}
for l in sys.stdin:
    r = json.loads(l)
    runs.setdefault(r["label"], []).append(r)
for name, rs in runs.items():
    rate = statistics.median(r["rate"] for r in rs)
    cpu = statistics.median(r["server_cpu_us_per_msg"] for r in rs)
    print(f"median {name:<14} {rate:7.0f} msg/s  server {cpu:5.1f} us/msg  ({len(rs)} runs)")'
}
