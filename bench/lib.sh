# Shared by bench/run.sh and bench/profile.sh (sourced, not run): logging,
# process control, readiness checks, the build and the generated Caddyfiles.
#
# The sourcing script sets, before it calls these functions:
#   LOG_TAG        prefix of log lines: [LOG_TAG] message
#   OUT            binaries, Caddyfiles, logs
#   PIDFILE        pids of the processes started, one "pid program" a line
#   APP_PORT1, APP_PORT2, OX_BASE_PORT   worker ports, for the site blocks
# shellcheck shell=bash

log() { printf '[%s] %s\n' "$LOG_TAG" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ------------------------------------------------------------ process control
# stop_pid PID: SIGTERM, wait up to 10 s, then SIGKILL.
stop_pid() {
	local pid=$1 _
	kill -0 "$pid" 2>/dev/null || return 0
	kill -TERM "$pid" 2>/dev/null || true
	for _ in $(seq 1 100); do
		kill -0 "$pid" 2>/dev/null || return 0
		sleep 0.1
	done
	log "pid $pid did not stop after SIGTERM; sending SIGKILL"
	kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
	local rc=$? pid
	trap - EXIT INT TERM
	# Caddy stops its oxian_hv workers (which would also get SIGKILL from
	# the kernel if Caddy died, through their parent-death signal).
	for pid in "${PIDS[@]:+${PIDS[@]}}"; do stop_pid "$pid"; done
	wait 2>/dev/null || true
	rm -f "$PIDFILE"
	exit "$rc"
}

# init_cleanup: from now on, everything started with `start` is stopped on
# exit, also on Ctrl-C and SIGTERM.
init_cleanup() {
	PIDS=()
	trap cleanup EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM
}

port_busy() { ss -Htln "sport = :$1" 2>/dev/null | grep -q .; }

# start NAME LOGFILE CMD...: start in the background; the pid goes to
# STARTED, PIDS and the pid file (with the program's path, so that a later
# run stops only that program). Logs the start unless NAME is empty.
STARTED=
start() {
	local name=$1 logf=$2
	shift 2
	"$@" >"$logf" 2>&1 &
	STARTED=$!
	PIDS+=("$STARTED")
	echo "$STARTED $1" >>"$PIDFILE"
	if [[ -n $name ]]; then log "started $name (pid $STARTED), log $logf"; fi
}

# wait_ok URL [NAME]: wait up to 60 s for a 2xx answer. Logs it if NAME is
# given.
wait_ok() {
	local url=$1 name=${2:-} _
	for _ in $(seq 1 300); do
		if curl -fsS -o /dev/null --max-time 1 "$url" 2>/dev/null; then
			if [[ -n $name ]]; then log "$name is up ($url)"; fi
			return 0
		fi
		sleep 0.2
	done
	if [[ -n $name ]]; then die "$name did not answer $url within 60 s"; fi
	die "no answer from $url"
}

# wait_ox_ready URL: wait up to 60 s until the /_health of oxian_hv at URL
# shows 2 ready workers (or (c) would run on one worker); fails if not.
wait_ox_ready() {
	local ready=0 _
	for _ in $(seq 1 300); do
		ready=$(curl -fsS --max-time 1 "$1/_health" 2>/dev/null | grep -o '"ready": *[0-9]*' | grep -o '[0-9]*$' || true)
		[[ ${ready:-0} -ge 2 ]] && return 0
		sleep 0.2
	done
	return 1
}

# build_binaries: $OUT/caddy and $OUT/app from the working tree.
build_binaries() {
	go build -o "$OUT/caddy" ./cmd/caddy
	go build -o "$OUT/app" ./caddy-examples/app
}

# -------------------------------------------------------------- Caddyfiles
# caddy_global ADMIN: the global options block; ADMIN is "off" or an address.
# No access log and only errors logged, so that logging does not dominate.
caddy_global() {
	cat <<EOF
{
	admin $1
	auto_https off
	persist_config off
	log {
		level ERROR
	}
}
EOF
}

# site_rp PORT: (b), plain reverse_proxy to the two app workers.
site_rp() {
	cat <<EOF
:$1 {
	bind 127.0.0.1
	reverse_proxy 127.0.0.1:$APP_PORT1 127.0.0.1:$APP_PORT2 {
		lb_policy round_robin
	}
}
EOF
}

# site_ox PORT: (c), oxian_hv with two workers of $OUT/app.
site_ox() {
	cat <<EOF
:$1 {
	bind 127.0.0.1
	oxian_hv {
		project bench
		command $OUT/app
		workers 2
		worker_base_port $OX_BASE_PORT
		strategy round_robin
	}
}
EOF
}

# site_rpf PORT: (d), the proxy settings oxian_hv gives its embedded
# reverse_proxy by default (module.go, newReverseProxy), plus a request id
# generated per request and set on the request and the response, as
# oxian_hv's pass_request_id (on by default) does. Only the module's own
# work is missing, so (c)/(d) is the module's cost over the same proxy
# features.
site_rpf() {
	cat <<EOF
:$1 {
	bind 127.0.0.1
	reverse_proxy 127.0.0.1:$APP_PORT1 127.0.0.1:$APP_PORT2 {
		lb_policy round_robin
		lb_try_duration 30s
		lb_try_interval 10ms
		fail_duration 1s
		max_fails 1
		stream_close_delay 5m
		header_up X-Request-Id {http.request.uuid}
		header_down X-Request-Id {http.request.uuid}
		transport http {
			dial_timeout 3s
			response_header_timeout 30s
		}
	}
}
EOF
}
