#!/usr/bin/env bash
# CPU and allocation profiles of Caddy under load, for (b) plain
# reverse_proxy, (c) oxian_hv and (d) reverse_proxy with the features
# oxian_hv turns on (as in bench/run.sh), taken from Caddy's admin endpoint
# /debug/pprof (admin on 127.0.0.1 for this run only). See bench/README.md.
#
# Run from the repository root:   bash bench/profile.sh
set -euo pipefail

ROUTE=${ROUTE:-/api/hello}
THREADS=${THREADS:-2}
CONNS=${CONNS:-32}
SECONDS_PROFILED=${SECONDS_PROFILED:-10}
CONFIGS=${CONFIGS:-"b c d"}

APP_PORT1=${APP_PORT1:-19101}
APP_PORT2=${APP_PORT2:-19102}
RP_PORT=${RP_PORT:-19180}
OX_PORT=${OX_PORT:-19181}
RPF_PORT=${RPF_PORT:-19182}
OX_BASE_PORT=${OX_BASE_PORT:-19201}
RP_ADMIN=${RP_ADMIN:-19190}
OX_ADMIN=${OX_ADMIN:-19191}
RPF_ADMIN=${RPF_ADMIN:-19192}
OUT=${OUT:-/tmp/oxian-bench}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
ROUTE_NAME=${ROUTE#/}
PROF_DIR="$ROOT/bench/results/profile/${ROUTE_NAME//\//_}"
PIDFILE="$OUT/pids"

LOG_TAG=profile
# log, die, stop_pid, init_cleanup, port_busy, start, wait_ok, build_binaries,
# wait_ox_ready and the Caddyfile blocks
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$ROOT/bench/lib.sh"

mkdir -p "$OUT" "$PROF_DIR"
init_cleanup

[[ -f $PIDFILE ]] && die "$PIDFILE exists: is bench/run.sh running? (delete the file if not)"
for p in "$APP_PORT1" "$APP_PORT2" "$RP_PORT" "$OX_PORT" "$RPF_PORT" "$RP_ADMIN" "$OX_ADMIN" "$RPF_ADMIN" "$OX_BASE_PORT" $((OX_BASE_PORT + 1)); do
	port_busy "$p" && die "port $p is already in use"
done

log "building"
build_binaries
export XDG_CONFIG_HOME="$OUT/xdg-config" XDG_DATA_HOME="$OUT/xdg-data"

# same sites as bench/run.sh, but with the admin endpoint on 127.0.0.1
{ caddy_global "127.0.0.1:$RP_ADMIN"; site_rp "$RP_PORT"; } >"$OUT/Caddyfile.rp-admin"
{ caddy_global "127.0.0.1:$OX_ADMIN"; site_ox "$OX_PORT"; } >"$OUT/Caddyfile.oxian-admin"
{ caddy_global "127.0.0.1:$RPF_ADMIN"; site_rpf "$RPF_PORT"; } >"$OUT/Caddyfile.rpf-admin"

: >"$PIDFILE"
start "" "$OUT/app-$APP_PORT1.log" "$OUT/app" -port "$APP_PORT1"
start "" "$OUT/app-$APP_PORT2.log" "$OUT/app" -port "$APP_PORT2"
wait_ok "http://127.0.0.1:$APP_PORT1/_health"
wait_ok "http://127.0.0.1:$APP_PORT2/_health"
start "" "$OUT/caddy-rp-admin.log" "$OUT/caddy" run --config "$OUT/Caddyfile.rp-admin" --adapter caddyfile
start "" "$OUT/caddy-oxian-admin.log" "$OUT/caddy" run --config "$OUT/Caddyfile.oxian-admin" --adapter caddyfile
start "" "$OUT/caddy-rpf-admin.log" "$OUT/caddy" run --config "$OUT/Caddyfile.rpf-admin" --adapter caddyfile
wait_ok "http://127.0.0.1:$RP_PORT/api/hello"
wait_ok "http://127.0.0.1:$OX_PORT/api/hello"
wait_ok "http://127.0.0.1:$RPF_PORT/api/hello"
# both oxian_hv workers must be ready
wait_ox_ready "http://127.0.0.1:$OX_PORT" || die "oxian_hv does not show 2 ready workers"

declare -A URL=([b]="http://127.0.0.1:$RP_PORT" [c]="http://127.0.0.1:$OX_PORT" [d]="http://127.0.0.1:$RPF_PORT")
declare -A ADMIN=([b]="$RP_ADMIN" [c]="$OX_ADMIN" [d]="$RPF_ADMIN")

for cfg in $CONFIGS; do
	admin="http://127.0.0.1:${ADMIN[$cfg]}/debug/pprof"
	log "($cfg): warm-up 2s"
	wrk -t"$THREADS" -c"$CONNS" -d2s "${URL[$cfg]}$ROUTE" >/dev/null
	dur=$((SECONDS_PROFILED + 4))
	log "($cfg): wrk -t$THREADS -c$CONNS -d${dur}s --latency ${URL[$cfg]}$ROUTE, profiling ${SECONDS_PROFILED}s"
	wrk -t"$THREADS" -c"$CONNS" -d"${dur}s" --latency "${URL[$cfg]}$ROUTE" >"$PROF_DIR/wrk-$cfg.txt" 2>&1 &
	wrk_pid=$!
	sleep 2
	curl -fsS --max-time $((SECONDS_PROFILED + 20)) -o "$PROF_DIR/cpu-$cfg.pprof" "$admin/profile?seconds=$SECONDS_PROFILED" &
	cpu_pid=$!
	curl -fsS --max-time $((SECONDS_PROFILED + 20)) -o "$PROF_DIR/allocs-$cfg.pprof" "$admin/allocs?seconds=$SECONDS_PROFILED"
	wait "$cpu_pid"
	wait "$wrk_pid"
	go tool pprof -top -nodecount=60 "$OUT/caddy" "$PROF_DIR/cpu-$cfg.pprof" >"$PROF_DIR/cpu-$cfg-top.txt" 2>/dev/null
	go tool pprof -top -cum -nodecount=100000 -nodefraction=0 -edgefraction=0 "$OUT/caddy" "$PROF_DIR/cpu-$cfg.pprof" >"$PROF_DIR/cpu-$cfg-cum.txt" 2>/dev/null
	go tool pprof -top -sample_index=alloc_space -nodecount=40 "$OUT/caddy" "$PROF_DIR/allocs-$cfg.pprof" >"$PROF_DIR/allocs-$cfg-top.txt" 2>/dev/null
	go tool pprof -top -sample_index=alloc_objects -nodecount=40 "$OUT/caddy" "$PROF_DIR/allocs-$cfg.pprof" >"$PROF_DIR/allocobj-$cfg-top.txt" 2>/dev/null
	awk '/^Requests\/sec:/ {print "  req/s " $2} $1 == "99%" {print "  p99   " $2}' "$PROF_DIR/wrk-$cfg.txt" >&2
done

# Per-request figures: CPU seconds of the Caddy process and of some
# functions (cumulative), divided by the requests served while profiling.
SUMMARY="$PROF_DIR/summary.md"
{
	echo "# Caddy CPU per request, $ROUTE, -c$CONNS, ${SECONDS_PROFILED}s profiles"
	echo
	echo "Source $(git rev-parse --short HEAD 2>/dev/null || echo unknown), $(date -u '+%Y-%m-%d %H:%M:%SZ'). Cumulative CPU time (the function and what it calls) per request, in µs."
	echo
	printf '| function |'
	for cfg in $CONFIGS; do printf ' (%s) µs/req |' "$cfg"; done
	echo
	printf '|---|'
	for cfg in $CONFIGS; do printf -- '---:|'; done
	echo
	funcs=(
		"total (all samples)"
		'caddyhttp.(*Server).ServeHTTP'
		'oxian-hv.(*Handler).ServeHTTP'
		'oxian-hv.(*project).serve'
		'reverseproxy.(*Handler).ServeHTTP'
		'reverseproxy.(*Handler).proxyLoopIteration'
		'reverseproxy.(*HTTPTransport).RoundTrip'
		'oxian-hv.(*poolSource).GetUpstreams'
		'reverseproxy.Handler.provisionUpstream'
		'selection.(*Recorder).Select'
		'oxian-hv.(*workerTransport).RoundTrip'
		'oxian-hv.requestID'
		'oxian-hv.(*project).addLogFields'
		'oxian-hv.(*project).addWorkerLogField'
		'oxian-hv.(*requestMetrics).observe'
		'oxian-hv.(*responseWriter).WriteHeader'
		'oxian-hv.(*responseWriter).Write'
		'headers.HeaderOps.ApplyToRequest'
		'headers.(*HeaderOps).ApplyTo'
		'context.WithCancel'
		'caddy/v2.(*Replacer).Set'
		'maps.(*table).grow'
		'time.NewTimer'
		'runtime.mallocgc'
		'runtime.gcBgMarkWorker'
		'internal/runtime/syscall/linux.Syscall6'
	)
	for fn in "${funcs[@]}"; do
		# shellcheck disable=SC2016 # literal backquotes: Markdown code
		printf '| `%s` |' "$fn"
		for cfg in $CONFIGS; do
			reqs=$(awk '/ requests in / {print $1}' "$PROF_DIR/wrk-$cfg.txt")
			secs=$(awk '/ requests in / {sub(/s,$/, "", $4); print $4}' "$PROF_DIR/wrk-$cfg.txt")
			if [[ $fn == total* ]]; then
				v=$(awk '/^Duration:/ { for (i = 1; i <= NF; i++) if ($i == "=") { print $(i + 1); exit } }' "$PROF_DIR/cpu-$cfg-top.txt")
			else
				v=$(awk -v f="$fn" '{ n = $6; for (i = 7; i <= NF; i++) n = n " " $i } length(n) >= length(f) && substr(n, length(n) - length(f) + 1) == f { print $4; exit }' "$PROF_DIR/cpu-$cfg-cum.txt")
			fi
			# requests during the profile window: the wrk rate times its length
			awk -v v="${v:-0s}" -v n="$reqs" -v d="$secs" -v p="$SECONDS_PROFILED" 'BEGIN {
				x = v + 0; if (v ~ /ms$/) x /= 1000
				if (x == 0) { printf " – |"; exit }
				printf " %.2f |", x * 1e6 / (n / d * p) }'
		done
		echo
	done
	echo
	for cfg in $CONFIGS; do
		echo "($cfg): $(awk '/^Requests\/sec:/ {print $2 " req/s"}' "$PROF_DIR/wrk-$cfg.txt") while profiled."
	done
} >"$SUMMARY"

log "profiles and pprof -top output in $PROF_DIR"
cat "$SUMMARY"
for cfg in $CONFIGS; do
	echo
	echo "== ($cfg) functions of github.com/oxian-hv/oxian-hv (flat, cum):"
	grep "oxian-hv" "$PROF_DIR/cpu-$cfg-cum.txt" || echo "   (none)"
done
