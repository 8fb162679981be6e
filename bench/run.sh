#!/usr/bin/env bash
# Benchmark: the example app (a) directly, (b) behind Caddy's plain
# reverse_proxy, (c) behind oxian_hv and (d) behind reverse_proxy with the
# features oxian_hv turns on, with wrk. See bench/README.md.
#
# Run from the repository root:   bash bench/run.sh
# Override any parameter by env:  ROUNDS=3 DURATION=20s bash bench/run.sh
set -euo pipefail

# ---------------------------------------------------------------- parameters
ROUNDS=${ROUNDS:-2}              # measured runs per (route, config)
DURATION=${DURATION:-10s}        # wrk -d of every measured run
THREADS=${THREADS:-2}            # wrk -t
CONNS=${CONNS:-32}               # wrk -c for /api/hello
WAIT_CONNS=${WAIT_CONNS:-64}     # wrk -c for /api/wait
WARMUP=${WARMUP:-2s}             # one unrecorded wrk run per (route, config); 0 to skip
PAUSE=${PAUSE:-1}                # seconds of rest before each run (machine load is sampled then)
QUIET_WAIT=${QUIET_WAIT:-60}     # before a run, wait up to this many seconds for the machine to be quiet
QUIET_BUSY=${QUIET_BUSY:-15}     # quiet: at most this % of all CPU busy with other processes
RETRIES=${RETRIES:-2}            # repeat a run during which other processes used more than QUIET_BUSY %, up to this often
ROUTES=${ROUTES:-"/api/hello /api/wait"}

APP_PORT1=${APP_PORT1:-19101}    # worker 1, used by (a), (b) and (d)
APP_PORT2=${APP_PORT2:-19102}    # worker 2, used by (b) and (d)
RP_PORT=${RP_PORT:-19180}        # Caddy with reverse_proxy, (b)
OX_PORT=${OX_PORT:-19181}        # Caddy with oxian_hv, (c)
RPF_PORT=${RPF_PORT:-19182}      # Caddy with reverse_proxy and oxian_hv's proxy features, (d)
OX_BASE_PORT=${OX_BASE_PORT:-19201} # oxian_hv workers listen from here on

OUT=${OUT:-/tmp/oxian-bench}     # binaries, Caddyfiles, logs (outside the repo)
# ----------------------------------------------------------------------------

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
RESULTS_DIR="$ROOT/bench/results"
RAW_DIR="$RESULTS_DIR/raw"
PIDFILE="$OUT/pids"
HZ=$(getconf CLK_TCK)

LOG_TAG=bench
# log, die, stop_pid, init_cleanup, port_busy, start, wait_ok, build_binaries,
# wait_ox_ready and the Caddyfile blocks
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$ROOT/bench/lib.sh"

for tool in wrk curl go ss awk; do
	command -v "$tool" >/dev/null || die "$tool not found (wrk: apt-get install wrk)"
done

mkdir -p "$OUT" "$RESULTS_DIR"
rm -rf "$RAW_DIR"
mkdir -p "$RAW_DIR"

# ------------------------------------------------------------ process control
init_cleanup

# A previous run that was killed hard may have left its processes behind:
# stop exactly the pids it recorded, if they still run the same program.
if [[ -f $PIDFILE ]]; then
	while read -r pid exe; do
		[[ -n ${pid:-} ]] || continue
		# a rebuilt binary shows as "<path> (deleted)"
		if [[ $(readlink "/proc/$pid/exe" 2>/dev/null || true) == "$exe"* ]]; then
			log "stopping leftover pid $pid ($exe) of an earlier run"
			stop_pid "$pid"
		fi
	done <"$PIDFILE"
	rm -f "$PIDFILE"
fi

for p in "$APP_PORT1" "$APP_PORT2" "$RP_PORT" "$OX_PORT" "$RPF_PORT" "$OX_BASE_PORT" $((OX_BASE_PORT + 1)); do
	port_busy "$p" && die "port $p is already in use; stop what uses it or override the *_PORT variables"
done

# ---------------------------------------------------------------------- build
GIT_REV=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
GIT_DIRTY=$(git status --porcelain --untracked-files=no 2>/dev/null | wc -l)
[[ $GIT_DIRTY -gt 0 ]] && GIT_REV="$GIT_REV + $GIT_DIRTY modified file(s)"
log "building $OUT/caddy and $OUT/app (source $GIT_REV)"
build_binaries

# ------------------------------------------------------------------- configs
# Caddy keeps its autosave and data under $OUT, not the home directory.
export XDG_CONFIG_HOME="$OUT/xdg-config" XDG_DATA_HOME="$OUT/xdg-data"

{ caddy_global off; echo; site_rp "$RP_PORT"; } >"$OUT/Caddyfile.rp"
{ caddy_global off; echo; site_rpf "$RPF_PORT"; } >"$OUT/Caddyfile.rpf"
{ caddy_global off; echo; site_ox "$OX_PORT"; } >"$OUT/Caddyfile.oxian"

for f in "$OUT/Caddyfile.rp" "$OUT/Caddyfile.oxian" "$OUT/Caddyfile.rpf"; do
	"$OUT/caddy" validate --config "$f" --adapter caddyfile >"$OUT/validate.log" 2>&1 ||
		{ cat "$OUT/validate.log" >&2; die "$f is invalid"; }
done

# -------------------------------------------------------------------- start
: >"$PIDFILE"
start "app worker :$APP_PORT1" "$OUT/app-$APP_PORT1.log" "$OUT/app" -port "$APP_PORT1"
APP1_PID=$STARTED
start "app worker :$APP_PORT2" "$OUT/app-$APP_PORT2.log" "$OUT/app" -port "$APP_PORT2"
APP2_PID=$STARTED
wait_ok "http://127.0.0.1:$APP_PORT1/_health" "app worker :$APP_PORT1"
wait_ok "http://127.0.0.1:$APP_PORT2/_health" "app worker :$APP_PORT2"

start "caddy reverse_proxy :$RP_PORT" "$OUT/caddy-rp.log" \
	"$OUT/caddy" run --config "$OUT/Caddyfile.rp" --adapter caddyfile
RP_PID=$STARTED
start "caddy oxian_hv :$OX_PORT" "$OUT/caddy-oxian.log" \
	"$OUT/caddy" run --config "$OUT/Caddyfile.oxian" --adapter caddyfile
OX_PID=$STARTED
start "caddy reverse_proxy+features :$RPF_PORT" "$OUT/caddy-rpf.log" \
	"$OUT/caddy" run --config "$OUT/Caddyfile.rpf" --adapter caddyfile
RPF_PID=$STARTED
wait_ok "http://127.0.0.1:$RP_PORT/api/hello" "(b) reverse_proxy"
wait_ok "http://127.0.0.1:$OX_PORT/api/hello" "(c) oxian_hv"
wait_ok "http://127.0.0.1:$RPF_PORT/api/hello" "(d) reverse_proxy+features"
# (d) must pass a request id both ways
curl -fsS -D - -o /dev/null "http://127.0.0.1:$RPF_PORT/api/hello" | grep -qi '^x-request-id: *[0-9a-f-]\{36\}' ||
	die "(d) does not set X-Request-Id on the response"
# both oxian_hv workers must be ready, or (c) would run on one worker
wait_ox_ready "http://127.0.0.1:$OX_PORT" || die "/_health of (c) does not show 2 ready workers: $(curl -fsS "http://127.0.0.1:$OX_PORT/_health" || true)"

declare -A URL=(
	[a]="http://127.0.0.1:$APP_PORT1"
	[b]="http://127.0.0.1:$RP_PORT"
	[c]="http://127.0.0.1:$OX_PORT"
	[d]="http://127.0.0.1:$RPF_PORT"
)
declare -A NAME=([a]="direct" [b]="reverse_proxy" [c]="oxian_hv" [d]="reverse_proxy+features")
# the process in front of the worker(s), whose CPU per request is reported
declare -A FRONT=([a]="$APP1_PID" [b]="$RP_PID" [c]="$OX_PID" [d]="$RPF_PID")
CONFIGS="a b c d"

conns_for() { if [[ $1 == /api/wait ]]; then echo "$WAIT_CONNS"; else echo "$CONNS"; fi; }

# ------------------------------------------------------------ CPU accounting
# machine_ticks: "total busy" CPU ticks of the whole machine (/proc/stat).
# Busy leaves out interrupt time: the kernel does loopback networking
# there and charges it to no process, so it would look like "other" load.
machine_ticks() {
	local u n s i w q sq st
	read -r _ u n s i w q sq st _ </proc/stat
	echo "$((u + n + s + i + w + q + sq + st)) $((u + n + s + st))"
}

# self_ticks PID: user+system CPU ticks of one process.
self_ticks() {
	# fields after "pid (comm) ": utime and stime are the 12th and 13th
	awk '{ sub(/^.*\) /, ""); print $12 + $13 }' /proc/"$1"/stat 2>/dev/null || echo 0
}

# proc_ticks PID...: user+system CPU ticks of these processes and of their
# children (the oxian_hv workers of Caddy).
proc_ticks() {
	local p sum=0 t kids
	for p in "$@"; do
		kids=$(cat /proc/"$p"/task/*/children 2>/dev/null || true)
		for q in $p $kids; do
			t=$(self_ticks "$q")
			sum=$((sum + ${t:-0}))
		done
	done
	echo "$sum"
}

# children_ticks: CPU ticks of the shell's finished children (wrk), from `times`.
# Must run in this shell (not in $(...)), so it writes to $OUT/times.
children_ticks() {
	times >"$OUT/times"
	awk -v hz="$HZ" 'NR == 2 { s = 0; for (i = 1; i <= 2; i++) { split($i, a, "m"); sub(/s$/, "", a[2]); s += a[1] * 60 + a[2] } printf "%d", s * hz + 0.5 }' "$OUT/times"
}

# cpu_busy SECONDS: % of all CPU busy over SECONDS; nothing of ours runs
# then, so it is what other processes use.
cpu_busy() {
	local t1 b1 t2 b2
	read -r t1 b1 < <(machine_ticks)
	sleep "$1"
	read -r t2 b2 < <(machine_ticks)
	echo $(((100 * (b2 - b1)) / ((t2 - t1) > 0 ? (t2 - t1) : 1)))
}

# wait_quiet: other processes skew results, so wait (up to QUIET_WAIT s)
# until the machine is quiet. Prints the last sample (% busy).
wait_quiet() {
	local busy waited=0
	busy=$(cpu_busy "$PAUSE")
	while ((busy > QUIET_BUSY && waited < QUIET_WAIT)); do
		((waited == 0)) && log "machine is busy (${busy}% CPU from other processes); waiting up to ${QUIET_WAIT}s"
		busy=$(cpu_busy 2)
		waited=$((waited + 2))
	done
	if ((busy > QUIET_BUSY)); then log "warning: still ${busy}% busy; measuring anyway"; fi
	echo "$busy"
}

# ---------------------------------------------------------------------- wrk
# to_ms VALUE: wrk latency (e.g. 812.00us, 1.23ms, 2.01s) in milliseconds.
to_ms() {
	awk -v v="$1" 'BEGIN {
		n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
		if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000
		printf "%.3f", n }'
}

# parse FILE: "requests rps p50_ms p99_ms non2xx socket_errors"
parse() {
	local f=$1 reqs rps p50 p99 non2xx sockerr
	reqs=$(awk '/ requests in / {print $1}' "$f")
	rps=$(awk '/^Requests\/sec:/ {print $2}' "$f")
	p50=$(awk '$1 == "50%" {print $2}' "$f")
	p99=$(awk '$1 == "99%" {print $2}' "$f")
	non2xx=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' "$f")
	sockerr=$(awk '/Socket errors:/ {gsub(/,/, ""); print $4 + $6 + $8 + $10}' "$f")
	echo "${reqs:-0} ${rps:-0} $(to_ms "${p50:-0}") $(to_ms "${p99:-0}") ${non2xx:-0} ${sockerr:-0}"
}

# run_wrk CONFIG ROUTE DURATION OUTFILE
run_wrk() {
	local cfg=$1 route=$2 dur=$3 outf=$4 c
	c=$(conns_for "$route")
	wrk -t"$THREADS" -c"$c" -d"$dur" --latency "${URL[$cfg]}$route" >"$outf" 2>&1 ||
		{ cat "$outf" >&2; die "wrk failed for ($cfg) $route"; }
}

# ------------------------------------------------------------------- warm-up
if [[ $WARMUP != 0 ]]; then
	for route in $ROUTES; do
		for cfg in $CONFIGS; do
			log "warm-up ($cfg) ${NAME[$cfg]} $route for $WARMUP"
			run_wrk "$cfg" "$route" "$WARMUP" "$RAW_DIR/warmup-$cfg-${route//\//_}.txt"
		done
	done
fi

# -------------------------------------------------------------- measurement
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
TSV="$RESULTS_DIR/latest.tsv"
printf 'round\troute\tconfig\tconns\treq_s\tp50_ms\tp99_ms\tnon2xx\tsocket_errors\tfront_cpu_us_per_req\tother_cpu_pct\n' >"$TSV"
orders=("a b c d" "b c d a" "c d a b" "d a b c") # rotate the order each round
REPEATED=0
for ((round = 1; round <= ROUNDS; round++)); do
	order=${orders[$(((round - 1) % 4))]}
	for route in $ROUTES; do
		for cfg in $order; do
			# a run that other processes disturbed is repeated, up to
			# RETRIES times; the last attempt counts
			for ((attempt = 0; attempt <= RETRIES; attempt++)); do
				wait_quiet >/dev/null
				f="$RAW_DIR/r$round-$cfg-${route//\//_}.txt"
				log "round $round: ($cfg) ${NAME[$cfg]} $route -t$THREADS -c$(conns_for "$route") -d$DURATION"

				read -r m_total1 m_busy1 < <(machine_ticks)
				ours1=$(proc_ticks "$APP1_PID" "$APP2_PID" "$RP_PID" "$OX_PID" "$RPF_PID")
				front1=$(self_ticks "${FRONT[$cfg]}")
				kids1=$(children_ticks)
				run_wrk "$cfg" "$route" "$DURATION" "$f"
				kids2=$(children_ticks)
				front2=$(self_ticks "${FRONT[$cfg]}")
				ours2=$(proc_ticks "$APP1_PID" "$APP2_PID" "$RP_PID" "$OX_PID" "$RPF_PID")
				read -r m_total2 m_busy2 < <(machine_ticks)

				read -r reqs rps p50 p99 non2xx sockerr < <(parse "$f")
				# CPU per request of the process in front (Caddy for (b), (c)
				# and (d), without the workers; the worker itself for (a)), and
				# the share of the machine used by processes other than ours and wrk
				front_cpu=$(awk -v t=$((front2 - front1)) -v hz="$HZ" -v n="$reqs" 'BEGIN { printf "%.1f", n ? t / hz * 1e6 / n : 0 }')
				other=$(awk -v busy=$((m_busy2 - m_busy1)) -v ours=$((ours2 - ours1 + kids2 - kids1)) -v tot=$((m_total2 - m_total1)) \
					'BEGIN { o = tot ? 100 * (busy - ours) / tot : 0; if (o < 0) o = 0; printf "%.0f", o }')
				((other <= QUIET_BUSY)) && break
				if ((attempt < RETRIES)); then
					log "other processes used ${other}% of the machine during this run; repeating it"
					mv "$f" "${f%.txt}-disturbed$attempt.txt"
					REPEATED=$((REPEATED + 1))
				else
					log "warning: other processes used ${other}% of the machine during this run"
				fi
			done
			printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$route" "$cfg" \
				"$(conns_for "$route")" "$rps" "$p50" "$p99" "$non2xx" "$sockerr" "$front_cpu" "$other" >>"$TSV"
		done
	done
done

# ------------------------------------------------------------------- report
MD="$RESULTS_DIR/latest.md"
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
awk -F'\t' -v rounds="$ROUNDS" -v dur="$DURATION" -v threads="$THREADS" -v quiet="$QUIET_BUSY" -v repeated="$REPEATED" \
	-v load="Load average before the measurements $LOAD_BEFORE, after $LOAD_AFTER." \
	-v date="$(date -u '+%Y-%m-%d %H:%M:%SZ')" \
	-v host="$(nproc) cores, $(uname -r), $(go env GOVERSION), source $GIT_REV" '
function name(c) { return c == "a" ? "(a) direct" : c == "b" ? "(b) reverse_proxy" : c == "c" ? "(c) oxian_hv" : "(d) reverse_proxy+features" }
function ratio(x, y) { return y ? x / y : 0 }
NR == 1 { next }
{
	key = $2 SUBSEP $3
	if (!($2 in seen)) { seen[$2] = 1; routes[++nr] = $2 }
	rows[++n] = $0
	rps[key] += $5; p50[key] += $6; p99[key] += $7; cpu[key] += $10; cnt[key]++
	errs[key] += $8 + $9
	conns[$2] = $4
	if ($11 > quiet) noisy++
}
END {
	printf "# oxian_hv benchmark results\n\n"
	printf "%s, %s; wrk -t%s -d%s --latency, %s round(s).\n\n", date, host, threads, dur, rounds
	printf "## All runs\n\n"
	printf "| round | route | config | conns | req/s | p50 (ms) | p99 (ms) | non-2xx | socket errors | front CPU (µs/req) | other CPU (%%) |\n"
	printf "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
	for (i = 1; i <= n; i++) {
		split(rows[i], f, "\t")
		printf "| %s | `%s` | %s | %s | %.0f | %.3f | %.3f | %s | %s | %.1f | %s |\n", f[1], f[2], name(f[3]), f[4], f[5], f[6], f[7], f[8], f[9], f[10], f[11]
	}
	if (repeated) printf "\n%d run(s) were repeated because other processes used more than %s%% of the machine during them; the table has the repeats.\n", repeated, quiet
	if (noisy) printf "\n**Warning:** during %d run(s) other processes used more than %s%% of the machine; those numbers are unreliable.\n", noisy, quiet
	printf "\n## Mean over rounds, and ratios\n\n"
	printf "| route | conns | config | req/s | p50 (ms) | p99 (ms) | front CPU (µs/req) | errors |\n"
	printf "|---|---:|---|---:|---:|---:|---:|---:|\n"
	for (r = 1; r <= nr; r++) {
		rt = routes[r]
		for (ci = 1; ci <= 4; ci++) {
			c = substr("abcd", ci, 1); k = rt SUBSEP c
			if (!cnt[k]) continue
			printf "| `%s` | %s | %s | %.0f | %.3f | %.3f | %.1f | %d |\n", rt, conns[rt], name(c), rps[k]/cnt[k], p50[k]/cnt[k], p99[k]/cnt[k], cpu[k]/cnt[k], errs[k]
		}
	}
	printf "\n| route | (c)/(b) req/s | (c)/(b) p99 | (c)/(b) p50 | (c)/(b) Caddy CPU per req | (b)/(a) req/s | req/s target (>= 0.95) | p99 target (<= 1.10) |\n"
	printf "|---|---:|---:|---:|---:|---:|---|---|\n"
	for (r = 1; r <= nr; r++) {
		rt = routes[r]; a = rt SUBSEP "a"; b = rt SUBSEP "b"; c = rt SUBSEP "c"
		rr = ratio(rps[c], rps[b]); pr = ratio(p99[c], p99[b])
		printf "| `%s` | %.3f | %.3f | %.3f | %.3f | %.3f | %s | %s |\n", rt, rr, pr, ratio(p50[c], p50[b]), ratio(cpu[c], cpu[b]), ratio(rps[b], rps[a]), \
			(rr >= 0.95 ? "holds" : "MISSES"), (pr <= 1.10 ? "holds" : "MISSES")
	}
	printf "\n(c)/(d): the cost of the module itself over the same proxy features. (d)/(b): what those features cost plain reverse_proxy. Not targets.\n\n"
	printf "| route | (c)/(d) req/s | (c)/(d) p99 | (c)/(d) p50 | (c)/(d) Caddy CPU per req | (d)/(b) req/s | (d)/(b) p99 | (d)/(b) Caddy CPU per req |\n"
	printf "|---|---:|---:|---:|---:|---:|---:|---:|\n"
	for (r = 1; r <= nr; r++) {
		rt = routes[r]; b = rt SUBSEP "b"; c = rt SUBSEP "c"; d = rt SUBSEP "d"
		printf "| `%s` | %.3f | %.3f | %.3f | %.3f | %.3f | %.3f | %.3f |\n", rt, ratio(rps[c], rps[d]), ratio(p99[c], p99[d]), ratio(p50[c], p50[d]), ratio(cpu[c], cpu[d]), \
			ratio(rps[d], rps[b]), ratio(p99[d], p99[b]), ratio(cpu[d], cpu[b])
	}
	printf "\nRatios are of the means over rounds. Front CPU: user+system CPU time of the process wrk talks to, per request (Caddy for (b), (c) and (d), without the workers; the worker for (a)). Other CPU: share of the whole machine used by processes other than wrk, Caddy and the workers during the run.\n\n"
	printf "wrk and the servers share the same cores; nothing is pinned. %s\n", load
}' "$TSV" >"$MD"

echo
column -t -s $'\t' "$TSV" 2>/dev/null || cat "$TSV"
echo
sed -n '/^## Mean over rounds/,$p' "$MD"
echo
log "written $MD (raw wrk output in $RAW_DIR)"
