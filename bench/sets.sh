#!/usr/bin/env bash
# Function sets side by side: one server per set, in alternating runs.
# What a set of policy functions costs per message, with the function set
# (and, if asked, the build) as the only difference.
#
#   bench/sets.sh 64                       # five, stock, one and noop; 6 rounds of 5 s
#   MAILWIT_BENCH_SETS="five stock" bench/sets.sh 64
#   MAILWIT_BENCH_ROUNDS=4 bench/sets.sh 16 --per-connection --starttls
#   MAILWIT_BENCH_SETS="stock@/tmp/mailwit-before stock noop@/tmp/mailwit-before noop" bench/sets.sh 64
#
# A set is one of lib.sh's function sets (five: the demo tenant's five
# stock functions; stock: the same decisions in one component; one: auth
# and router only, one call per message and no parse) or noop (mailwit
# with --unsafe-noop-policy: no component is asked); `set@<mailwit>` runs
# it on another build (default: this tree's release build; bench/ab.sh
# compares two builds so). Each server has
# AUTH and the durable spool and discards what it accepts, as in
# bench/compare.sh; each is idle while another is driven, and the order
# reverses every other round. One line per run (msg/s, p50/p99 to the 250,
# server and client CPU per message), then each server's medians: the
# policy's loss is a set's msg/s against noop's. $MAILWIT_BENCH_ROUNDS
# rounds (default 6) of $MAILWIT_BENCH_SECONDS (5).

source "$(dirname "$0")/lib.sh"

[ $# -ge 1 ] || { echo "usage: bench/sets.sh <sessions> [smtpload flags]" >&2; exit 2; }
SESSIONS=$1
shift
ROUNDS=${MAILWIT_BENCH_ROUNDS:-6}
read -r -a SETS <<<"${MAILWIT_BENCH_SETS:-five stock one noop}"
for entry in "${SETS[@]}"; do
	set=${entry%%@*}
	[ "$set" = noop ] || known_set "$set"
	if [ "$set" != "$entry" ] && [ ! -x "${entry#*@}" ]; then
		echo "no mailwit at ${entry#*@}" >&2
		exit 2
	fi
done

build
trap stop_all EXIT
make_cert
servers=()
for i in "${!SETS[@]}"; do
	entry=${SETS[$i]} set=${SETS[$i]%%@*} bin=$MAILWIT
	[ "$set" = "$entry" ] || bin=${entry#*@}
	# Labels name the servers' medians: one given twice is numbered.
	label=$entry
	[[ " ${SETS[*]:0:$i} " == *" $entry "* ]] && label="$entry #$((i + 1))"
	eval "LABEL_s$i=\$label"
	case "$set" in
	noop) MAILWIT=$bin start_mailwit "s$i" $((30587 + i)) $((30825 + i)) --unsafe-noop-policy "$ONE_ADDRESS" ;;
	*) FUNCTIONS=$set MAILWIT=$bin start_mailwit "s$i" $((30587 + i)) $((30825 + i)) "" "$ONE_ADDRESS" ;;
	esac
	servers+=("s$i")
done
submission_flags "$SESSIONS" "$@"
alternate "$ROUNDS" "${servers[@]}"
