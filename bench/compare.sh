#!/usr/bin/env bash
# Compares gw (epoll and io_uring engines) with nginx, HAProxy, an OpenResty-style Lua
# balancer and a direct connection to the backends, over loopback:
#   l4     wrk through gw's `tcp` listener, nginx stream, HAProxy mode tcp
#   l7     wrk through gw's `http` listener (upstream keep-alive), nginx http proxy_pass with a
#          keepalive upstream (proxy_http_version 1.1), HAProxy mode http with http-reuse
#          always, and `lua`: nginx http with balancer_by_lua_block picking b1 or b2 by a
#          counter in a lua_shared_dict (round robin), keepalive upstream (Debian
#          libnginx-mod-http-lua + lua-resty-core: the OpenResty setup gw replaces)
#   frame  first-frame routing: gwload --churn, each client looping new connection → login
#          frame → echo → close (bench/frame_scale.py's churn part, in this harness), through
#          gw's `frame` listener (routes on the devid in the login frame) and nginx stream
#          (`hash $remote_addr consistent`: it cannot read the frame without Lua), to two
#          `gw-backend --mode device` servers; direct = gwload spread over both backends
#   all    l4, then l7, then frame, each a separate run with the same options
#
#   bench/compare.sh l4|l7|frame|all [--rounds N] [--duration S] [--connections C1,C2,...]
#                                    [--workers W]
#
# Defaults: 5 rounds, 10 s per run, W = nproc workers/threads per proxy, connections
# "50,1000" (l4, l7) and "50,1000,10000" (frame). Each connection count is a table of its
# own, with its own interleaved rounds. A count is skipped, with the reason printed and
# recorded, when a proxy worker would need more descriptors than the hard RLIMIT_NOFILE
# (20,000 here): 10,000 frame clients through 2 workers is ~10,000 client + upstream
# sockets per worker, which fits; one gwload process holds the 10,000 client sockets.
# HAProxy's threads share one process, so with haproxy among the contenders a count is
# also skipped past (RLIMIT_NOFILE - 256) / 2 connections (9,872 here), its maxconn: every
# count that runs, each contender can take in full (nginx's worker_connections are
# RLIMIT_NOFILE - 256 per worker).
# Frame clients come from 127.0.0.2..127.0.0.9, so that no (source, destination) address
# pair runs short of ports with TIME_WAIT, and nginx's address hash has 8 keys to spread.
# Environment:
#   CONTENDERS    which contenders to run, in round-1 order (default l4 "gw gw-uring nginx
#                 haproxy direct", l7 "gw gw-uring nginx haproxy lua direct", frame "gw
#                 gw-uring nginx direct"; gw = epoll engine, gw-uring = io_uring)
#   GW_BUILD_DIR  build dir holding gwd, gwctl, gw-backend and gwload (default: build-release,
#                 which is configured and built in Release mode if one is missing)
#   GW_BACKEND    path to a gw-backend binary to use instead of the build dir's
#   GW_CMAKE_ARGS extra arguments for configuring build-release (e.g. "-DGW_WERROR=OFF")
#   GW_RESULTS_FILE  where to append the results (default bench/RESULTS.md)
#   GW_RESULTS_DIR   where the run's markdown tables and PNG chart go (default bench/results:
#                    MODE-YYYYMMDD-HHMM.{md,png}, latest-MODE.{md,png} copies, and the
#                    per-run data, MODE-YYYYMMDD-HHMM.tsv)
#   RULE_CHANGES  l7: gray-rule changes made in all during extra gw runs at the first
#                 connection count (default 1000; 0 = none)
#   RULES_PAIRS   l7: how many pairs of such runs (default 3): one with its share of the
#                 changes ("gw+rules"), and a control with as many gwctl calls that change
#                 nothing ("gw+gwctl"), in alternating order
#   RULES_DURATION  l7: length of each of those runs in seconds (default 20)
#
# Every proxy gets the same two single-threaded gw-backend servers and the same worker
# count. Rounds are interleaved, in a rotated order that is balanced over every full design
# (a Williams design: over n rounds for n contenders, 2n if n is odd, each contender runs
# right after each other one within a round equally often, and in each position equally
# often; the step from one round's last run to the next round's first is outside the
# design; a --rounds that is not a multiple of the design length leaves the order
# unbalanced and is warned about: the default 5 rounds is less than one design for the
# default l4 (10 rounds) and l7 (6) contenders, and one design plus a repeat of its first
# round for frame's 4; the report header says how many full designs ran; for an odd n the
# rounds alternate a forward row of the design and a reversed one, so that in l4's 5
# rounds each contender already follows three or four different others), so that neither
# the machine's slow drift (thermal,
# noisy neighbours) nor what the contender before left behind always hits the same
# contender: a frame round leaves ~10^5 sockets in TIME_WAIT for 60 s, and with the plain
# rotation (gw always after direct, gw-uring always after gw) io_uring measured 0.87-0.88x
# epoll at 1,000 clients in two runs and 1.02x with the order turned round. The
# summary uses medians over rounds; it is appended to bench/RESULTS.md and written, with a
# gnuplot chart, under bench/results/.
#
# Each run also records the contender's CPU time per request (its processes and threads,
# from /proc/PID/task/*/schedstat: nanoseconds, whatever else the machine runs), the figure
# that stays meaningful when other load on the machine moves req/s around, and its memory:
# the summed RSS of its processes (master and workers), sampled near the end of each run
# while the load's connections are still open. Frame "requests" are completed churn cycles
# (connect, login, echo, close); its p50/p99 are the login frame's round trip.
#
# The load generator's CPU time (from wait4) and the two backends' (schedstat) are recorded
# per request too: on a machine where they share the cores with the proxy, they bound what
# any proxy can reach. Where gw misses a req/s target, the report says how much CPU per
# request the target would leave gw ("CPU budget"), from the cores that gw's rounds kept
# busy and those two costs as measured in the same rounds.
#
# Only loopback (127.0.0.0/8) is used. Everything started here is stopped on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RESULTS_MD=${GW_RESULTS_FILE:-"$ROOT/bench/RESULTS.md"}
RESULTS_DIR=${GW_RESULTS_DIR:-"$ROOT/bench/results"}
NGINX_MODULES=/usr/lib/nginx/modules
NGINX_STREAM_MODULE=$NGINX_MODULES/ngx_stream_module.so
NGINX_NDK_MODULE=$NGINX_MODULES/ndk_http_module.so
NGINX_LUA_MODULE=$NGINX_MODULES/ngx_http_lua_module.so
LUA_RESTY_CORE=/usr/share/lua/5.1/resty/core.lua
PY=/usr/bin/python3

usage() {
  cat >&2 <<EOF
usage: bench/compare.sh l4|l7|frame|all [--rounds N] [--duration S] [--connections C1,C2,...] [--workers W]
  defaults: --rounds 5 --duration 10 --connections 50,1000 (frame: 50,1000,10000) --workers \$(nproc)
  env: CONTENDERS="gw gw-uring nginx haproxy lua direct"  GW_BUILD_DIR=DIR  GW_BACKEND=PATH
EOF
  exit 2
}
die() { echo "compare.sh: $*" >&2; exit 1; }
log() { echo "== $*" >&2; }

# ---------------------------------------------------------------------------------------
# Arguments

[ $# -ge 1 ] || usage
MODE=$1; shift
case $MODE in
  l4|l7|frame) ;;
  all)
    # Each mode is its own run (its own contenders, backends and tables); a failed mode
    # does not stop the next one, but makes the exit status non-zero.
    all_rc=0
    for m in l4 l7 frame; do
      bash "${BASH_SOURCE[0]}" "$m" "$@" || { all_rc=1; echo "compare.sh: $m failed" >&2; }
    done
    exit $all_rc ;;
  -h|--help) usage ;;
  *) echo "compare.sh: unknown benchmark '$MODE' (l4, l7, frame or all)" >&2; usage ;;
esac

ROUNDS=5
DURATION=10
if [ "$MODE" = frame ]; then CONNECTIONS=50,1000,10000; else CONNECTIONS=50,1000; fi
WORKERS=$(nproc)
while [ $# -gt 0 ]; do
  case $1 in
    --connections)
      [ $# -ge 2 ] || usage
      [[ $2 =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]] || die "$1 needs a comma list of positive integers, got '$2'"
      CONNECTIONS=$2
      shift 2 ;;
    --rounds|--duration|--workers)
      [ $# -ge 2 ] || usage
      [[ $2 =~ ^[1-9][0-9]*$ ]] || die "$1 needs a positive integer, got '$2'"
      case $1 in
        --rounds) ROUNDS=$2 ;;
        --duration) DURATION=${2} ;;
        --workers) WORKERS=$2 ;;
      esac
      shift 2 ;;
    --duration=*|--rounds=*|--connections=*|--workers=*)
      set -- "${1%%=*}" "${1#*=}" "${@:2}" ;;
    -h|--help) usage ;;
    *) echo "compare.sh: unknown argument '$1'" >&2; usage ;;
  esac
done
[ "$WORKERS" -le 64 ] || die "--workers must be <= 64 (gw's limit)"

case $MODE in
  l4) DEFAULT_CONTENDERS="gw gw-uring nginx haproxy direct" ;;
  l7) DEFAULT_CONTENDERS="gw gw-uring nginx haproxy lua direct" ;;
  frame) DEFAULT_CONTENDERS="gw gw-uring nginx direct" ;;
esac
read -r -a CONTENDER_LIST <<<"${CONTENDERS:-$DEFAULT_CONTENDERS}"
[ ${#CONTENDER_LIST[@]} -gt 0 ] || die "CONTENDERS is empty"
for c in "${CONTENDER_LIST[@]}"; do
  case $c in
    gw|gw-uring|nginx|direct) ;;
    haproxy) [ "$MODE" != frame ] || die "haproxy is not a frame contender (like nginx stream it cannot read a frame; nginx stands for both)" ;;
    lua) [ "$MODE" = l7 ] || die "the lua contender is l7 only (balancer_by_lua in an http upstream)" ;;
    *) die "unknown contender '$c' (gw gw-uring nginx haproxy lua direct)" ;;
  esac
done
# The order's design (see order() below) is balanced over DESIGN_ROUNDS rounds: n for an
# even number n of contenders, 2n for an odd one. Fewer rounds, or a count that is not a
# multiple of it, leave the order unbalanced; the report header says what was run.
NCONT=${#CONTENDER_LIST[@]}
DESIGN_ROUNDS=$NCONT
((NCONT % 2 == 0)) || DESIGN_ROUNDS=$((2 * NCONT))
FULL_DESIGNS=$((ROUNDS / DESIGN_ROUNDS))
EXTRA_ROUNDS=$((ROUNDS % DESIGN_ROUNDS))
ORDER_ROWS=""
((NCONT % 2 == 0)) || ORDER_ROWS=", forward and reversed rows alternating"
ORDER_TEXT="rotated order$ORDER_ROWS, balanced over every $DESIGN_ROUNDS rounds; $ROUNDS round(s) run ($FULL_DESIGNS full design(s) + $EXTRA_ROUNDS)"
if ((EXTRA_ROUNDS != 0)); then
  echo "compare.sh: warning: --rounds $ROUNDS is not a multiple of $DESIGN_ROUNDS (the balanced design for $NCONT contenders): the order is balanced only over $((FULL_DESIGNS * DESIGN_ROUNDS)) of the rounds" >&2
fi
has_contender() { local c; for c in "${CONTENDER_LIST[@]}"; do [ "$c" = "$1" ] && return 0; done; return 1; }
has_gw() { has_contender gw || has_contender gw-uring; }

# Connection counts, and which of them fit the descriptor limit. The soft limit is raised
# to the hard one here, and every process started below inherits it.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
[ "$NOFILE" = unlimited ] && NOFILE=1048576
IFS=, read -r -a COUNT_ARGS <<<"$CONNECTIONS"
COUNTS=()
SKIPPED=()  # "why" for each skipped count, for the report
# HAProxy runs its threads in one process, so all its connections share one descriptor
# table: maxconn (client connections; each holds a server socket too) is sized from the
# same budget as nginx's worker_connections below. HAProxy 2.6 refuses to start when
# 2 x maxconn plus its listeners and servers is more than RLIMIT_NOFILE; 256 spare covers
# those. (A fixed maxconn 4096 left HAProxy serving 4,096 of a larger count's clients.)
HAPROXY_MAXCONN=$(((NOFILE - 256) / 2))
for conns in "${COUNT_ARGS[@]}"; do
  # A proxy worker holds a client and an upstream socket per connection; reuseport and
  # gw's accept spread are not exact, hence a quarter more than an even share. (The load
  # generator holds one socket per connection, fewer than that.)
  need=$(( (2 * conns * 5 / 4 + WORKERS - 1) / WORKERS + 64 ))
  why=""
  if [ "$need" -gt "$NOFILE" ]; then
    why="$conns connections: need ~$need descriptors per proxy worker ($WORKERS workers), RLIMIT_NOFILE is $NOFILE"
  elif has_contender haproxy && [ "$conns" -gt "$HAPROXY_MAXCONN" ]; then
    why="$conns connections: HAProxy (one process) would need ~$((2 * conns + 256)) descriptors, RLIMIT_NOFILE is $NOFILE"
  fi
  if [ -n "$why" ]; then
    echo "compare.sh: skipping $why" >&2
    SKIPPED+=("$why")
  else
    COUNTS+=("$conns")
  fi
done
[ ${#COUNTS[@]} -gt 0 ] || die "no connection count fits the descriptor limit"
# Frame clients: source addresses 127.0.0.2..127.0.0.9, round robin over connections.
FRAME_SRCS=$(seq -s, -f '127.0.0.%g' 2 9)

# ---------------------------------------------------------------------------------------
# Tools and binaries

if [ "$MODE" = frame ]; then
  LOAD_TOOL=gwload
else
  command -v wrk >/dev/null || die "wrk not found (tools/setup.sh installs it)"
  LOAD_TOOL=wrk
fi
[ -x "$PY" ] || die "$PY not found"
command -v gnuplot >/dev/null || echo "compare.sh: warning: gnuplot not found (package gnuplot-nox): no chart" >&2
if has_contender nginx || has_contender lua; then
  command -v nginx >/dev/null || die "nginx not found"
  [ "$MODE" = l7 ] || [ -f "$NGINX_STREAM_MODULE" ] || die "$NGINX_STREAM_MODULE missing (package libnginx-mod-stream)"
fi
if has_contender lua; then
  for f in "$NGINX_NDK_MODULE" "$NGINX_LUA_MODULE" "$LUA_RESTY_CORE"; do
    [ -f "$f" ] || die "$f missing (packages libnginx-mod-http-lua, lua-resty-core; tools/setup.sh), or run without the lua contender: CONTENDERS=\"gw gw-uring nginx haproxy direct\""
  done
fi
if has_contender haproxy; then command -v haproxy >/dev/null || die "haproxy not found"; fi

if [ -n "${GW_BUILD_DIR:-}" ]; then
  BUILD_DIR=$(cd "$GW_BUILD_DIR" 2>/dev/null && pwd) || die "GW_BUILD_DIR=$GW_BUILD_DIR is not a directory"
  BUILD_ALLOWED=0   # never reconfigure a build dir somebody pointed us at
else
  BUILD_DIR="$ROOT/build-release"
  BUILD_ALLOWED=1
fi
GWD="$BUILD_DIR/gwd"
GWLOAD="$BUILD_DIR/gwload"
BACKEND=${GW_BACKEND:-"$BUILD_DIR/gw-backend"}

# Our own build dir is configured once and brought up to date on every run (a no-op when
# nothing changed), so the gw revision in the report is the one measured.
if [ $BUILD_ALLOWED = 1 ]; then
  log "building gw (Release) in $BUILD_DIR"
  build_log=$(mktemp /tmp/gwbench-build.XXXXXX)
  read -r -a extra_cmake_args <<<"${GW_CMAKE_ARGS:-}"
  configure=(true)
  [ -f "$BUILD_DIR/CMakeCache.txt" ] && [ ${#extra_cmake_args[@]} -eq 0 ] ||
    configure=(cmake -S "$ROOT" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release "${extra_cmake_args[@]}")
  if ! { "${configure[@]}" &&
         cmake --build "$BUILD_DIR" -j2 --target gwd gwctl gw-backend gwload; } >"$build_log" 2>&1; then
    tail -n 40 "$build_log" >&2
    die "build failed (full log: $build_log); GW_BUILD_DIR=<dir> benchmarks an existing build"
  fi
  rm -f "$build_log"
fi
if has_gw; then
  [ -x "$GWD" ] || die "$GWD not found"
  [ -x "$BUILD_DIR/gwctl" ] || die "$BUILD_DIR/gwctl not found"
fi
[ -x "$BACKEND" ] || die "$BACKEND not found"
[ "$MODE" != frame ] || [ -x "$GWLOAD" ] || die "$GWLOAD not found"

# ---------------------------------------------------------------------------------------
# Process bookkeeping and cleanup

TMP=$(mktemp -d /tmp/gwbench.XXXXXX)
SHM_NAME="gwbench-$$"
declare -a PIDS=()      # every long-running process we started
declare -A PID_NAME=()  # pid -> name, for messages
declare -A PID_LOG=()   # pid -> its output file
declare -a BACKEND_PIDS=()  # b1 and b2: their CPU per request is recorded with each run
WRK_PID=""

# Stops a process and its direct children (nginx/gwd workers): SIGTERM, then SIGKILL
# after a grace period.
stop_tree() {
  local pid=$1 i
  local -a kids=()
  kill -0 "$pid" 2>/dev/null || return 0
  mapfile -t kids < <(pgrep -P "$pid" 2>/dev/null || true)
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 50); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" "${kids[@]}" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local rc=$? i
  trap - EXIT INT TERM
  if [ -n "$WRK_PID" ]; then kill -KILL "$WRK_PID" 2>/dev/null || true; wait "$WRK_PID" 2>/dev/null || true; fi
  # Stop in reverse start order: proxies before the backends they talk to.
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do stop_tree "${PIDS[i]}"; done
  rm -rf "$TMP"
  rm -f "/dev/shm/$SHM_NAME" "/dev/shm/$SHM_NAME.lock" "/dev/shm/$SHM_NAME-u" "/dev/shm/$SHM_NAME-u.lock"
  exit "$rc"
}
trap cleanup EXIT
trap 'echo "compare.sh: interrupted" >&2; exit 130' INT
trap 'echo "compare.sh: terminated" >&2; exit 143' TERM

# start NAME LOGFILE CMD... : runs CMD in the background with output in LOGFILE.
start() {
  local name=$1 logf=$2; shift 2
  "$@" >"$logf" 2>&1 &
  PIDS+=("$!")
  PID_NAME[$!]=$name
  PID_LOG[$!]=$logf
  LAST_PID=$!
}

# Free loopback ports: bind them all at once (so they differ), then release them. A tiny
# race with other programs remains; a contender that fails to bind is reported below.
free_ports() {
  "$PY" - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# Probe: one exchange per fresh connection; prints the backend names that answered.
# http: a GET, answered "backend NAME". frame: a login frame (echoed), then a heartbeat,
# answered {"devid": ..., "backend": NAME} (the frame layout is in tools/backend).
cat >"$TMP/probe.py" <<'EOF'
import json, socket, struct, sys
mode, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

def frame(kind, body):
    return struct.pack(">BBHH", kind, 1, 0, len(body)) + body

def read_frame(s):
    data = b""
    while len(data) < 6 or len(data) < 6 + struct.unpack(">H", data[4:6])[0]:
        chunk = s.recv(4096)
        if not chunk:
            sys.exit("connection closed after %r" % data[:200])
        data += chunk
    return data[0], data[6:]

names = []
for i in range(count):
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        if mode == "frame":
            body = json.dumps({"devid": "probe-%d" % i}).encode()
            s.sendall(frame(1, body))
            if read_frame(s) != (1, body):
                sys.exit("the login frame was not echoed")
            s.sendall(frame(2, body))
            kind, reply = read_frame(s)
            names.append(json.loads(reply)["backend"])
            continue
        s.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200") or not body.startswith(b"backend "):
        sys.exit("unexpected response: %r" % data[:200])
    names.append(body.decode().split()[1])
print(" ".join(sorted(set(names))))
EOF
PROBE_MODE=http
[ "$MODE" = frame ] && PROBE_MODE=frame

show_logs() {
  local f
  for f in "$@"; do
    [ -s "$f" ] || continue
    echo "---- $f ----" >&2
    tail -n 50 "$f" >&2
  done
  echo "----" >&2
}

# wait_ready NAME PID PORT EXPECTED_BACKENDS LOG...: waits until PORT serves HTTP (frame:
# the device protocol) through the contender, then checks that the expected backends (e.g.
# "b1 b2") all answered; "" skips that check (address and devid hashing need not reach
# both backends in 4 probes). On failure shows the contender's logs and exits.
wait_ready() {
  local name=$1 pid=$2 port=$3 expect=$4 seen="" i
  shift 4
  for i in $(seq 100); do
    if ! kill -0 "$pid" 2>/dev/null; then
      show_logs "$@"
      die "$name exited during startup"
    fi
    if seen=$("$PY" "$TMP/probe.py" "$PROBE_MODE" "$port" 4 2>/dev/null); then break; fi
    seen=""
    sleep 0.1
  done
  if [ -z "$seen" ]; then
    show_logs "$@"
    die "$name did not serve requests on 127.0.0.1:$port within 10 s"
  fi
  if [ -n "$expect" ] && [ "$seen" != "$expect" ]; then
    echo "compare.sh: warning: $name answered from backends '$seen', expected '$expect'" >&2
  fi
}

# ---------------------------------------------------------------------------------------
# Start everything

declare -A CPID=()  # contender -> the pid whose process tree is the proxy (CPU, RSS)
read -r P_B1 P_B2 P_GW P_GWU P_NGINX P_HAPROXY P_LUA <<<"$(free_ports 7)"
declare -A PORT=([gw]=$P_GW [gw-uring]=$P_GWU [nginx]=$P_NGINX [haproxy]=$P_HAPROXY [lua]=$P_LUA [direct]=$P_B1)
# What the load generator aims at: wrk one URL; gwload a list of addresses. Direct is one
# backend for wrk (it takes one URL) and both backends for gwload.
declare -A TARGET=()
for c in "${CONTENDER_LIST[@]}"; do TARGET[$c]="127.0.0.1:${PORT[$c]}"; done
[ "$MODE" = frame ] && TARGET[direct]="127.0.0.1:$P_B1,127.0.0.1:$P_B2"

BACKEND_MODE=http
[ "$MODE" = frame ] && BACKEND_MODE=device
log "backends ($BACKEND_MODE): 127.0.0.1:$P_B1 (b1), 127.0.0.1:$P_B2 (b2); workers=$WORKERS; tmp=$TMP"
for b in 1 2; do
  port_var=P_B$b
  start "b$b" "$TMP/b$b.log" "$BACKEND" --listen "127.0.0.1:${!port_var}" --name "b$b" --mode "$BACKEND_MODE" --threads 1
  wait_ready "backend b$b" "$LAST_PID" "${!port_var}" "b$b" "$TMP/b$b.log"
  BACKEND_PIDS+=("$LAST_PID")
done

# Descriptors per nginx worker: as many as the limit allows (10,000 frame clients need
# ~12,500 per worker with two workers; see the connection counts above).
NGINX_WORKER_CONNECTIONS=$((NOFILE - 256))
# Idle keep-alive connections each worker keeps to the backends (l7): enough for every
# client connection of the 1,000 count, the same for nginx and lua ("keepalive", per worker)
# and gw ("keepalive.max_idle", per host per worker, so half); HAProxy's pool is not capped.
# The usual 64 (nginx's example, gw's default) would close and reopen backend connections
# at 1,000 clients. Requests per backend connection stay at both defaults, 1000.
NGINX_KEEPALIVE=1024

gw_upstream() {  # NAME: an upstream over b1 and b2
  # frame: no "method": a frame upstream defaults to chash over the devid of the login frame.
  local method='"method": "round_robin", ' keepalive=""
  [ "$MODE" = frame ] && method=""
  [ "$MODE" = l7 ] && keepalive="\"keepalive\": {\"max_idle\": $((NGINX_KEEPALIVE / 2))},"
  printf '{"name": "%s", "connect_timeout_ms": 2000, "idle_timeout_ms": 600000, %s
               "max_fails": 1, "fail_timeout_ms": 10000, "tries": 3,
               "pools": [{"id": "primary", "priority": 0, %s
                          "hosts": [{"id": "b1", "address": "127.0.0.1:%s", "weight": 1},
                                    {"id": "b2", "address": "127.0.0.1:%s", "weight": 1}]}]}' "$1" "$keepalive" "$method" "$P_B1" "$P_B2"
}
GW_UPSTREAMS=$(gw_upstream app)
# l7: a second upstream over the same backends, where the gray rule that the
# rule-change round flips sends wrk's requests (the answers stay the same).
[ "$MODE" = l7 ] && GW_UPSTREAMS+=", $(gw_upstream pre)"
case $MODE in
  l4) GW_LISTENER='"protocol": "tcp"' ;;
  # keepalive_requests as nginx's below (gw's default, 1000, would close wrk's connections
  # 1000 times as often as nginx and HAProxy do).
  l7) GW_LISTENER='"protocol": "http", "http": {"keepalive_requests": 100000}' ;;
  # Routed once, on the login frame, as nginx stream routes a connection once.
  frame) GW_LISTENER='"protocol": "frame", "frame": {"mode": "connection"}' ;;
esac
# The backends each contender answered from at startup: frame routing hashes (a devid, an
# address), so 4 probes need not reach both.
EXPECT_BACKENDS="b1 b2"
[ "$MODE" = frame ] && EXPECT_BACKENDS=""

# start_gw NAME PORT ENGINE SHM: one gwd with the given event engine.
start_gw() {
  local name=$1 port=$2 engine=$3 shm=$4 conf="$TMP/$1.json"
  # Release builds log little at "warn"; per-connection logging would skew the numbers.
  cat >"$conf" <<EOF
{
  "workers": $WORKERS,
  "event_engine": "$engine",
  "log_level": "warn",
  "shutdown_timeout_ms": 2000,
  "shm": {"name": "$shm", "max_upstreams": 64, "max_pools": 256, "max_hosts": 4096, "max_rule_cidrs": 8192},
  "state_file": "$TMP/$name.state.json",
  "listeners": [{"name": "bench", "listen": "127.0.0.1:$port", $GW_LISTENER,
                 "upstream": "app", "backlog": 4096}],
  "upstreams": [$GW_UPSTREAMS]
}
EOF
  if ! "$GWD" -t -c "$conf" >"$TMP/$name-check.log" 2>&1; then
    show_logs "$TMP/$name-check.log"
    die "gwd rejected the generated config $conf"
  fi
  # Run from the temp dir so any relative path gwd might create lands there.
  # shellcheck disable=SC2016  # $1/$@ belong to the inner shell
  start "$name" "$TMP/$name.log" bash -c 'cd "$1" && shift && exec "$@"' _ "$TMP" "$GWD" -c "$conf" --foreground
  wait_ready "$name" "$LAST_PID" "$port" "$EXPECT_BACKENDS" "$TMP/$name.log"
  CPID[$name]=$LAST_PID
  # gwd falls back to epoll (with a warning) where io_uring is missing: that would
  # measure the wrong engine.
  if grep -q "event_engine io_uring" "$TMP/$name.log"; then
    show_logs "$TMP/$name.log"
    die "$name is not running the $engine engine"
  fi
}

if has_contender gw; then start_gw gw "$P_GW" epoll "$SHM_NAME"; fi
if has_contender gw-uring; then start_gw gw-uring "$P_GWU" io_uring "$SHM_NAME-u"; fi

# nginx_head LOAD_MODULES...: the main context every nginx contender shares.
nginx_head() {
  local m
  for m in "$@"; do echo "load_module $m;"; done
  cat <<EOF
daemon off;
master_process on;
worker_processes $WORKERS;
worker_rlimit_nofile $NOFILE;
error_log logs/error.log warn;
pid logs/nginx.pid;
events {
    worker_connections $NGINX_WORKER_CONNECTIONS;
}
EOF
}

# start_nginx NAME PORT: runs $TMP/NAME/nginx.conf (written by the caller) with prefix
# $TMP/NAME.
start_nginx() {
  local name=$1 port=$2 d="$TMP/$1"
  # -e: log startup errors here instead of the system-wide error log.
  start "$name" "$TMP/$name.log" nginx -p "$d" -e "$d/logs/error.log" -c "$d/nginx.conf"
  wait_ready "$name" "$LAST_PID" "$port" "$EXPECT_BACKENDS" "$TMP/$name.log" "$d/logs/error.log"
  CPID[$name]=$LAST_PID
}

if has_contender nginx; then
  mkdir -p "$TMP/nginx/logs"
  if [ "$MODE" != l7 ]; then
  # frame: nginx stream cannot read the login frame (not without Lua), so it keeps each
  # client on one backend by its address, the nearest it has to device affinity.
  NGINX_HASH=""
  [ "$MODE" = frame ] && NGINX_HASH="hash \$remote_addr consistent;"
  { nginx_head "$NGINX_STREAM_MODULE"; cat <<EOF
stream {
    upstream backends {
        $NGINX_HASH
        server 127.0.0.1:$P_B1;
        server 127.0.0.1:$P_B2;
    }
    server {
        listen 127.0.0.1:$P_NGINX reuseport backlog=4096;
        proxy_pass backends;
        proxy_connect_timeout 2s;
        proxy_timeout 10m;
    }
}
EOF
  } >"$TMP/nginx/nginx.conf"
  else
  # The usual production reverse proxy: keep-alive to the backends, no access log
  # (gw writes none either), client keep-alive as wrk uses it, and the three fields gw
  # adds to every request it forwards (X-Forwarded-For, X-Real-IP, X-Forwarded-Proto), so
  # that both do the same work (lua and HAProxy add them too).
  { nginx_head; cat <<EOF
http {
    access_log off;
    keepalive_requests 100000;
    client_body_temp_path $TMP/nginx/body;
    proxy_temp_path $TMP/nginx/proxy;
    upstream backends {
        server 127.0.0.1:$P_B1;
        server 127.0.0.1:$P_B2;
        keepalive $NGINX_KEEPALIVE;
    }
    server {
        listen 127.0.0.1:$P_NGINX reuseport backlog=4096;
        location / {
            proxy_pass http://backends;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Real-IP \$remote_addr;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_connect_timeout 2s;
        }
    }
}
EOF
  } >"$TMP/nginx/nginx.conf"
  fi
  start_nginx nginx "$P_NGINX"
fi

# lua: the OpenResty way of balancing, on Debian's nginx: balancer_by_lua_block picks the
# backend for every request from a counter in a lua_shared_dict (shared by the workers, so
# the round robin is global, as gw's is), and the keepalive pool sits behind it. The
# "server" line is a placeholder nginx requires; the Lua code always sets the peer.
if has_contender lua; then
  mkdir -p "$TMP/lua/logs"
  { nginx_head "$NGINX_NDK_MODULE" "$NGINX_LUA_MODULE"; cat <<EOF
http {
    access_log off;
    keepalive_requests 100000;
    client_body_temp_path $TMP/lua/body;
    proxy_temp_path $TMP/lua/proxy;
    lua_package_path "/usr/share/lua/5.1/?.lua;;";
    lua_shared_dict balancer 1m;
    upstream backends {
        server 127.0.0.1:$P_B1;
        balancer_by_lua_block {
            local balancer = require "ngx.balancer"
            local n = ngx.shared.balancer:incr("rr", 1, 0)
            local port = (n % 2 == 1) and $P_B1 or $P_B2
            local ok, err = balancer.set_current_peer("127.0.0.1", port)
            if not ok then
                ngx.log(ngx.ERR, "set_current_peer: ", err)
                return ngx.exit(500)
            end
        }
        keepalive $NGINX_KEEPALIVE;
    }
    server {
        listen 127.0.0.1:$P_LUA reuseport backlog=4096;
        location / {
            proxy_pass http://backends;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Real-IP \$remote_addr;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_connect_timeout 2s;
        }
    }
}
EOF
  } >"$TMP/lua/nginx.conf"
  start_nginx lua "$P_LUA"
fi

if has_contender haproxy; then
  MODE_HAPROXY=tcp
  HAPROXY_HTTP_OPTS=""
  HAPROXY_FRONTEND_OPTS=""
  if [ "$MODE" = l7 ]; then
    MODE_HAPROXY=http
    HAPROXY_HTTP_OPTS=$'    option http-keep-alive\n    http-reuse always\n    option forwardfor'
    # The fields gw and nginx add: X-Forwarded-For (option forwardfor), X-Real-IP and
    # X-Forwarded-Proto.
    HAPROXY_FRONTEND_OPTS=$'    http-request set-header X-Real-IP %[src]\n    http-request set-header X-Forwarded-Proto http'
  fi
  cat >"$TMP/haproxy.cfg" <<EOF
global
    nbthread $WORKERS
    maxconn $HAPROXY_MAXCONN

defaults
    mode $MODE_HAPROXY
    maxconn $HAPROXY_MAXCONN
$HAPROXY_HTTP_OPTS
    timeout connect 2s
    timeout client 10m
    timeout server 10m

frontend bench
    bind 127.0.0.1:$P_HAPROXY
$HAPROXY_FRONTEND_OPTS
    default_backend backends

backend backends
    balance roundrobin
    server b1 127.0.0.1:$P_B1
    server b2 127.0.0.1:$P_B2
EOF
  if ! haproxy -c -q -f "$TMP/haproxy.cfg" >"$TMP/haproxy-check.log" 2>&1; then
    show_logs "$TMP/haproxy-check.log"
    die "haproxy rejected the generated config"
  fi
  # -db: stay in the foreground, no daemon.
  start haproxy "$TMP/haproxy.log" haproxy -db -f "$TMP/haproxy.cfg"
  wait_ready haproxy "$LAST_PID" "$P_HAPROXY" "$EXPECT_BACKENDS" "$TMP/haproxy.log"
  CPID[haproxy]=$LAST_PID
fi

# ---------------------------------------------------------------------------------------
# Runs

# procstat cpu|mem PID: of PID, its threads and its descendants, the CPU nanoseconds so far
# (cpu), or "RSS PSS": the summed resident set size in KiB (shared pages, such as gw's shm
# tables or nginx's shared zones, count once per process, as `ps` shows them) and the summed
# proportional set size (shared pages split between the processes that map them).
cat >"$TMP/procstat.py" <<'EOF'
import os, sys
what, todo, seen, total, pss = sys.argv[1], [int(sys.argv[2])], set(), 0, 0
while todo:
    p = todo.pop()
    if p in seen:
        continue
    seen.add(p)
    if what == "mem":
        try:
            with open(f"/proc/{p}/status") as f:
                total += next((int(l.split()[1]) for l in f if l.startswith("VmRSS:")), 0)
            with open(f"/proc/{p}/smaps_rollup") as f:
                pss += next((int(l.split()[1]) for l in f if l.startswith("Pss:")), 0)
        except (OSError, ValueError):
            pass
    try:
        tasks = os.listdir(f"/proc/{p}/task")
    except OSError:
        continue
    for t in tasks:
        try:
            if what == "cpu":
                with open(f"/proc/{p}/task/{t}/schedstat") as f:
                    total += int(f.read().split()[0])
            with open(f"/proc/{p}/task/{t}/children") as f:
                todo.extend(int(x) for x in f.read().split())
        except (OSError, ValueError):
            pass
print(total, pss) if what == "mem" else print(total)
EOF
cpu_ns() { "$PY" "$TMP/procstat.py" cpu "$1"; }
backends_cpu_ns() { local t=0 p; for p in "${BACKEND_PIDS[@]}"; do t=$((t + $(cpu_ns "$p"))); done; echo "$t"; }

# rusage.py OUT CMD...: runs CMD and writes the CPU nanoseconds it used (user + system, from
# wait4: the load generator's share of the machine) to OUT; CMD's exit status is its own.
# CMD is killed with its parent (cleanup kills this wrapper) and gets INT and TERM from it.
cat >"$TMP/rusage.py" <<'EOF'
import ctypes, os, signal, sys
pid = os.fork()
if pid == 0:
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    os.execvp(sys.argv[2], sys.argv[2:])
for s in (signal.SIGINT, signal.SIGTERM):
    signal.signal(s, lambda n, _f: os.kill(pid, n))
_, status, ru = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    f.write("%d\n" % round((ru.ru_utime + ru.ru_stime) * 1e9))
sys.exit(os.waitstatus_to_exitcode(status))
EOF
mem_kb() { "$PY" "$TMP/procstat.py" mem "$1"; }

# parse_wrk FILE: wrk --latency output -> "rps p50_ms p99_ms errors requests".
parse_wrk() {
  awk '
    function ms(v,   n, u) {
      n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
      if (u == "us") return n / 1000
      if (u == "ms") return n
      if (u == "s")  return n * 1000
      if (u == "m")  return n * 60000
      if (u == "h")  return n * 3600000
      return -1
    }
    /^Requests\/sec:/        { rps = $2 }
    / requests in /          { reqs = $1 }
    $1 == "50%"              { p50 = ms($2) }
    $1 == "99%"              { p99 = ms($2) }
    /^ *Socket errors:/      { gsub(/,/, ""); errors += $4 + $6 + $8 + $10 }
    /Non-2xx or 3xx/         { errors += $NF }
    END {
      if (rps == "" || p50 == "" || p99 == "" || p50 < 0 || p99 < 0) exit 1
      printf "%s %.3f %.3f %d %d\n", rps, p50, p99, errors, reqs
    }' "$1"
}

# parse_gwload FILE: gwload --churn --json output (the report is its last line) -> the same
# fields: churn cycles/s, login round trip p50 and p99 in ms, errors, cycles. The cycles
# (the divisor of CPU per cycle) are all those completed, the ones gwload waited for after
# -T included: the CPU times cover them too (churn_connects counts those within -T only).
parse_gwload() {
  "$PY" - "$1" <<'EOF'
import json, sys
try:
    r = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
    lat = r["first_latency_us"]
    print("%.1f %.3f %.3f %d %d" % (r["churn_connects_per_s"], lat["p50"] / 1000, lat["p99"] / 1000,
                                    r["errors"], r["established"]))
except (OSError, ValueError, IndexError, KeyError):
    sys.exit(1)
EOF
}

# load CONTENDER CONNECTIONS SECONDS OUT: runs the load generator at the contender, output
# in OUT. In the background, with its pid in WRK_PID, so that INT/TERM are handled promptly
# instead of after the run.
load() {
  local c=$1 conns=$2 secs=$3 out=$4 threads=2
  if [ "$MODE" = frame ]; then
    # --connect-rate 0: every client starts at once and loops; --timeout-ms: a login echo
    # slower than this is an error (10,000 clients on 2 shared cores see seconds).
    "$PY" "$TMP/rusage.py" "$out.cpu" "$GWLOAD" --target "${TARGET[$c]}" --json --churn -c "$conns" --connect-rate 0 -T "$secs" \
      --timeout-ms 30000 --src "$FRAME_SRCS" >"$out" 2>"$out.err" &
  else
    # wrk refuses fewer connections than threads.
    [ "$conns" -ge 2 ] || threads=1
    "$PY" "$TMP/rusage.py" "$out.cpu" wrk -t"$threads" -c"$conns" -d"${secs}s" --latency "http://${TARGET[$c]}/" >"$out" 2>&1 &
  fi
  WRK_PID=$!
}
parse_load() { if [ "$MODE" = frame ]; then parse_gwload "$1"; else parse_wrk "$1"; fi; }
# load_ran RC: the load generator's exit status RC means it ran and reported. wrk exits 0
# with failed requests in its output; gwload exits 1 when it counted errors, and its report
# has them: both go in the errors column (and the verdicts say "not judged"), as wrk's do.
load_ran() { [ "$1" -eq 0 ] || { [ "$MODE" = frame ] && [ "$1" -eq 1 ]; }; }

check_alive() {  # a contender that died mid-run would otherwise show up only as errors
  local pid
  for pid in "${PIDS[@]}"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      show_logs "${PID_LOG[$pid]}"
      die "${PID_NAME[$pid]} (pid $pid) exited during the benchmark"
    fi
  done
}

# runs.tsv: connections, round, contender, req/s, p50 ms, p99 ms, errors, cpu us/req (-1:
# none), RSS KiB and PSS KiB (-1: none), and the CPU us per request of the load generator and
# of the two backends (-1: none) in the same run. Kept, with a header line, as
# $RESULTS_DIR/MODE-STAMP.tsv beside the report.
RUNS="$TMP/runs.tsv"
: >"$RUNS"
n=${#CONTENDER_LIST[@]}
# Memory is sampled this long into each run (90%): the load's connections are all open.
RSS_AT=$(awk -v d="$DURATION" 'BEGIN { printf "%.1f", d * 0.9 }')
START_EPOCH=$(date +%s)
# order R K: the index of the contender that runs K-th in round R (0-based). Row 0 is
# 0, 1, n-1, 2, n-2, ...; row R adds R (mod n) to it, and for odd n rows n..2n-1 are rows
# 0..n-1 reversed: each ordered pair of contenders is adjacent equally often over the
# rows. For odd n the rounds take the rows interleaved, 0, n, 1, n+1, 2, ...: a forward
# row, then a reversed one, so that in fewer rounds than the design's 2n (the default 5,
# for l4's 5 contenders) each contender already follows several different others (with
# rows 0..4 in turn, each followed the same two, twice each); every 2n rounds in a row
# still hold each row once.
order() {
  local r=$1 k=$2 nn=${#CONTENDER_LIST[@]} rows j
  rows=$nn
  ((nn % 2 == 0)) || rows=$((2 * nn))
  r=$((r % rows))
  if ((nn % 2 == 1)); then
    if ((r % 2 == 1)); then r=$((nn + r / 2)); else r=$((r / 2)); fi
  fi
  if ((r >= nn)); then r=$((r - nn)); k=$((nn - 1 - k)); fi
  if ((k == 0)); then j=0
  elif ((k % 2 == 1)); then j=$(((k + 1) / 2))
  else j=$((nn - k / 2)); fi
  echo $(((j + r) % nn))
}
for conns in "${COUNTS[@]}"; do
  log "$MODE: $conns connections, $ROUNDS rounds x ${DURATION}s, $LOAD_TOOL, contenders: ${CONTENDER_LIST[*]}"
  for ((r = 0; r < ROUNDS; r++)); do
    for ((k = 0; k < n; k++)); do
      c=${CONTENDER_LIST[$(order "$r" "$k")]}
      out="$TMP/load-$conns-$r-$c.txt"
      cpu0=0
      rss_pid=""
      [ -n "${CPID[$c]:-}" ] && cpu0=$(cpu_ns "${CPID[$c]}")
      bcpu0=$(backends_cpu_ns)
      rm -f "$out.cpu"
      load "$c" "$conns" "$DURATION" "$out"
      if [ -n "${CPID[$c]:-}" ]; then
        (sleep "$RSS_AT"; mem_kb "${CPID[$c]}" >"$out.mem") &
        rss_pid=$!
      fi
      load_rc=0
      wait "$WRK_PID" || load_rc=$?
      WRK_PID=""
      [ -z "$rss_pid" ] || wait "$rss_pid" || true
      if ! load_ran $load_rc || ! res=$(parse_load "$out"); then
        # The contender's own log too: what it refused or closed, and why.
        show_logs "$out" "$out.err" ${CPID[$c]:+"${PID_LOG[${CPID[$c]}]}"}
        die "$LOAD_TOOL through $c failed ($conns connections, round $((r + 1)))"
      fi
      read -r rps p50 p99 errs reqs <<<"$res"
      cpu_us=-1
      if [ -n "${CPID[$c]:-}" ] && [ "$reqs" -gt 0 ]; then
        cpu1=$(cpu_ns "${CPID[$c]}")
        cpu_us=$(awk -v a="$cpu0" -v b="$cpu1" -v n="$reqs" 'BEGIN { printf "%.2f", (b - a) / 1000 / n }')
      fi
      load_us=-1 back_us=-1
      if [ "$reqs" -gt 0 ]; then
        bcpu1=$(backends_cpu_ns)
        back_us=$(awk -v a="$bcpu0" -v b="$bcpu1" -v n="$reqs" 'BEGIN { printf "%.2f", (b - a) / 1000 / n }')
        [ -s "$out.cpu" ] && load_us=$(awk -v n="$reqs" '{ printf "%.2f", $1 / 1000 / n }' "$out.cpu")
      fi
      rss=-1 pss=-1
      [ -s "$out.mem" ] && read -r rss pss <"$out.mem"
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$conns" "$((r + 1))" "$c" "$rps" "$p50" "$p99" "$errs" "$cpu_us" "$rss" "$pss" "$load_us" "$back_us" >>"$RUNS"
      printf '[c=%d round %d/%d] %-9s req/s %10.0f  p50 %8.3f ms  p99 %8.3f ms  cpu %6s us/req (load %s, backends %s)  rss %6s MiB%s\n' \
        "$conns" "$((r + 1))" "$ROUNDS" "$c" "$rps" "$p50" "$p99" "$([ "$cpu_us" = -1 ] && echo - || echo "$cpu_us")" \
        "$([ "$load_us" = -1 ] && echo - || echo "$load_us")" "$([ "$back_us" = -1 ] && echo - || echo "$back_us")" \
        "$([ "$rss" = -1 ] && echo - || awk -v k="$rss" 'BEGIN { printf "%.1f", k / 1024 }')" \
        "$([ "$errs" = 0 ] || echo "  ($errs errors)")"
      check_alive
      # frame: the run's closed connections sit in TIME_WAIT; let the next contender start
      # from a similar state.
      [ "$MODE" != frame ] || sleep 1
    done
  done
done
ELAPSED=$(( $(date +%s) - START_EPOCH ))

# l7: more gw runs, at the first connection count, while gwctl changes a gray-release rule
# RULE_CHANGES times in all (default 1000): the rule flips wrk's client address between the
# two upstreams, each change a commit that every worker picks up on its next request. The
# control ("gw+gwctl") makes as many gwctl calls that each set the rule to what it already
# is: gwctl answers "already", with no commit, no state file write and no new table. Each
# gwctl process shares the two cores with wrk, the backends and gw, so gw+rules against
# gw+gwctl is what the changes themselves cost, and gw+gwctl against gw is what the gwctl
# processes cost. The two alternate in RULES_PAIRS pairs, the order swapped in every other
# pair (rules, control, control, rules, ...), so that the machine's drift over the minutes
# does not land on one of them: single back-to-back 60 s runs moved the pair's ratio +-12%.
# Both rows are medians over the pairs; the target is 0 failed requests.
RULE_CHANGES=${RULE_CHANGES:-1000}
RULES_DURATION=${RULES_DURATION:-20}  # per run; a change is a gwctl process and an fsync'd state file: ~25/s here
RULES_PAIRS=${RULES_PAIRS:-3}
[[ "$RULES_PAIRS" =~ ^[1-9][0-9]*$ ]] || die "RULES_PAIRS must be a positive integer, got '$RULES_PAIRS'"
[[ "$RULES_DURATION" =~ ^[1-9][0-9]*$ ]] || die "RULES_DURATION must be a positive integer, got '$RULES_DURATION'"
[[ "$RULE_CHANGES" =~ ^[0-9]+$ ]] || die "RULE_CHANGES must be a non-negative integer, got '$RULE_CHANGES'"
RULES_DONE=0
NOOP_DONE=0
RULE_IP=127.0.0.1  # what the rule matches now

# rules_run KIND PAIR CALLS: one gw run of RULES_DURATION seconds with CALLS gwctl calls;
# KIND "rules" changes the rule each call, "noop" sets it to what it is. Adds to
# RULES_DONE or NOOP_DONE and writes a "gw+rules" or "gw+gwctl" row for round rules-PAIR.
rules_run() {
  local kind=$1 pair=$2 calls=$3 name out i ip load_rc res rps p50 p99 errs reqs
  out="$TMP/wrk-$kind-$pair.txt"
  load gw "$conns" "$RULES_DURATION" "$out"
  # i counts the calls made: the check that the load still runs comes before each call
  # (after it, the call that made the count whole was left out when the load ended early).
  for ((i = 0; i < calls; i++)); do
    kill -0 "$WRK_PID" 2>/dev/null || break
    if [ "$kind" = rules ]; then
      if [ "$RULE_IP" = 127.0.0.1 ]; then ip=127.0.0.2,10.0.0.0/8; else ip=127.0.0.1; fi
    else
      ip=$RULE_IP
    fi
    "$GWCTL" --shm "$SHM_NAME" set rule bench default gray --ip "$ip" --upstream pre >/dev/null ||
      die "gwctl set rule failed ($kind run of pair $pair, call $((i + 1)))"
    RULE_IP=$ip
  done
  if [ "$kind" = rules ]; then
    RULES_DONE=$((RULES_DONE + i)) name=gw+rules
  else
    NOOP_DONE=$((NOOP_DONE + i)) name=gw+gwctl
  fi
  [ "$i" -ge "$calls" ] ||
    echo "compare.sh: warning: only $i of $calls gwctl calls fit in the ${RULES_DURATION}s $kind run of pair $pair" >&2
  load_rc=0
  wait "$WRK_PID" || load_rc=$?
  WRK_PID=""
  if [ $load_rc -ne 0 ] || ! res=$(parse_wrk "$out"); then
    show_logs "$out"
    die "wrk through gw during the $kind run of pair $pair failed"
  fi
  read -r rps p50 p99 errs reqs <<<"$res"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$conns" "rules-$pair" "$name" "$rps" "$p50" "$p99" "$errs" -1 -1 -1 -1 -1 >>"$RUNS"
  printf '[rules %d/%d]   %-9s req/s %10.0f  p50 %7.3f ms  p99 %7.3f ms  (%d %s, %d errors)\n' \
    "$pair" "$RULES_PAIRS" "$name" "$rps" "$p50" "$p99" "$i" \
    "$([ "$kind" = rules ] && echo "rule changes" || echo "gwctl calls that changed nothing")" "$errs"
}

if [ "$MODE" = l7 ] && has_contender gw && [ "$RULE_CHANGES" -gt 0 ]; then
  GWCTL="$BUILD_DIR/gwctl"
  conns=${COUNTS[0]}
  "$GWCTL" --shm "$SHM_NAME" add rule bench default gray --ip "$RULE_IP" --upstream pre >/dev/null
  for ((pair = 1; pair <= RULES_PAIRS; pair++)); do
    # This pair's share of the changes; the earlier pairs take the remainder.
    calls=$((RULE_CHANGES / RULES_PAIRS + (pair <= RULE_CHANGES % RULES_PAIRS ? 1 : 0)))
    if ((pair % 2 == 1)); then
      rules_run rules "$pair" "$calls"
      rules_run noop "$pair" "$calls"
    else
      rules_run noop "$pair" "$calls"
      rules_run rules "$pair" "$calls"
    fi
  done
fi

# ---------------------------------------------------------------------------------------
# Summary: medians per connection count and contender, ratios to the peers; printed,
# appended to RESULTS.md, and written as bench/results/MODE-STAMP.{md,png,tsv} (gnuplot) with
# latest-MODE.{md,png} copies.

DATE=$(date -u '+%Y-%m-%d %H:%M:%S UTC')
STAMP=$(date -u '+%Y%m%d-%H%M')
KERNEL=$(uname -r)
NPROC=$(nproc)
# Nothing is pinned: every process started here may run on any of the NPROC cores (the
# CPUs this script may use), so the proxy shares them with the load generator and the
# backends, and what one of them uses the others cannot.
CPUS_SHARED="cores unpinned, shared by the load generator, the two backends and the proxy"
CPU_MODEL=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
MEM_TOTAL=$(awk '/^MemTotal:/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
if [ "$MODE" = frame ]; then
  VERSIONS="gwload (this tree)"
else
  # (wrk --version exits non-zero, hence the "|| true")
  VERSIONS="wrk $(wrk --version 2>&1 | awk 'NR==1{print $2}' || true)"
fi
{ has_contender nginx || has_contender lua; } && VERSIONS+=", $(nginx -v 2>&1 | sed 's/^nginx version: //')"
has_contender lua && VERSIONS+=", lua-nginx-module $(dpkg-query -W -f='${Version}' libnginx-mod-http-lua 2>/dev/null || echo '?') + lua-resty-core $(dpkg-query -W -f='${Version}' lua-resty-core 2>/dev/null || echo '?')"
has_contender haproxy && VERSIONS+=", haproxy $(haproxy -v | awk 'NR==1{print $3}')"
# "-dirty" for local changes, except the results this script writes (an earlier mode of
# `all` has appended to RESULTS.md by now).
GW_REV=$(git -C "$ROOT" describe --always 2>/dev/null || echo "uncommitted")
if [ -n "$(git -C "$ROOT" status --porcelain -- . ':!bench/RESULTS.md' ':!bench/results' 2>/dev/null)" ]; then
  GW_REV+="-dirty"
fi
# Which build was measured: directory and CMake build type.
BUILD_TYPE=$(sed -n 's/^CMAKE_BUILD_TYPE:[A-Z]*=//p' "$BUILD_DIR/CMakeCache.txt" 2>/dev/null || true)
GW_BUILD="$BUILD_DIR (${BUILD_TYPE:-unknown build type})"
GW_BUILD=${GW_BUILD#"$ROOT/"}
mkdir -p "$RESULTS_DIR"
# The raw data, kept next to the report (the temp dir goes at exit): runs.tsv with a
# header line, one line per run (connection count, round, contender), the gray-rule pairs'
# included (round "rules-N").
RUNS_KEPT="$RESULTS_DIR/$MODE-$STAMP.tsv"
{
  printf 'connections\tround\tcontender\treq_per_s\tp50_ms\tp99_ms\terrors\tcpu_us_per_req\trss_kib\tpss_kib\tload_us_per_req\tbackends_us_per_req\n'
  cat "$RUNS"
} >"$RUNS_KEPT"
log "per-run data: $RUNS_KEPT"
SKIPPED_TEXT=$(printf '%s\n' "${SKIPPED[@]+"${SKIPPED[@]}"}")

# Values reach the Python code through the environment (quoted heredoc: no shell expansion).
BENCH_ROUNDS=$ROUNDS BENCH_ORDER=$ORDER_TEXT BENCH_DURATION=$DURATION BENCH_WORKERS=$WORKERS BENCH_DATE=$DATE \
BENCH_STAMP=$STAMP BENCH_KERNEL=$KERNEL BENCH_NPROC=$NPROC BENCH_CPU=$CPU_MODEL BENCH_MEM=$MEM_TOTAL \
BENCH_CPUS_SHARED=$CPUS_SHARED \
BENCH_VERSIONS=$VERSIONS BENCH_GW_REV=$GW_REV BENCH_GW_BUILD=$GW_BUILD BENCH_MODE=$MODE \
BENCH_RULES_DONE=$RULES_DONE BENCH_NOOP_DONE=$NOOP_DONE BENCH_SKIPPED=$SKIPPED_TEXT BENCH_ELAPSED=$ELAPSED BENCH_RESULTS_DIR=$RESULTS_DIR \
BENCH_TMP=$TMP BENCH_NGINX_KEEPALIVE=$NGINX_KEEPALIVE BENCH_RULES_DURATION=$RULES_DURATION BENCH_RULES_PAIRS=$RULES_PAIRS \
"$PY" - "$RUNS" "$RESULTS_MD" "${CONTENDER_LIST[*]}" <<'EOF'
import os, shutil, statistics, subprocess, sys

runs_file, results_md, order = sys.argv[1], sys.argv[2], sys.argv[3].split()
env = os.environ
mode = env["BENCH_MODE"]
if int(env.get("BENCH_RULES_DONE", "0")) > 0:
    order.append("gw+rules")
if int(env.get("BENCH_NOOP_DONE", "0")) > 0:
    order.append("gw+gwctl")
KEYS = ("rps", "p50", "p99", "cpu", "rss", "pss", "load", "back")
rows = {}     # connections -> contender -> lists of values
rules_pairs = {}  # l7: pair number -> "gw+rules" / "gw+gwctl" -> req/s
for line in open(runs_file):
    conns, rnd, name, rps, p50, p99, errs, cpu, rss, pss, load, back = line.rstrip("\n").split("\t")
    if rnd.startswith("rules-"):
        rules_pairs.setdefault(int(rnd[len("rules-"):]), {})[name] = float(rps)
    r = rows.setdefault(int(conns), {}).setdefault(name, {k: [] for k in KEYS} | {"errors": 0})
    r["rps"].append(float(rps))
    r["p50"].append(float(p50))
    r["p99"].append(float(p99))
    if float(cpu) >= 0:
        r["cpu"].append(float(cpu))
    if float(rss) >= 0:
        r["rss"].append(float(rss) / 1024)  # MiB
    if float(pss) >= 0:
        r["pss"].append(float(pss) / 1024)
    for k, v in (("load", load), ("back", back)):
        if float(v) >= 0:
            r[k].append(float(v))
    r["errors"] += int(errs)
counts = sorted(rows)
med = {c: {n: {k: statistics.median(v[k]) if v[k] else None for k in KEYS} for n, v in rows[c].items()}
       for c in counts}

PEERS = [p for p in ("nginx", "haproxy", "lua") if p in order]
PEER_LABEL = {"nginx": {"l4": "nginx stream", "l7": "nginx", "frame": "nginx stream"}[mode],
              "haproxy": "HAProxy", "lua": "lua (balancer_by_lua)"}
# The issue's targets: req/s ratio each gw engine must reach against each peer.
TARGET = {"l4": {"nginx": 1.3}, "l7": {"nginx": 1.5, "haproxy": 1.5}, "frame": {"nginx": 1.3}}[mode]
UNIT = "conn/s" if mode == "frame" else "req/s"

def fmt_ratio(a, b):
    return "%.2f" % (a / b) if a is not None and b else "n/a"

def table(c):
    m = med[c]
    ref = m.get("nginx")
    header = ["contender", UNIT, "p50 ms", "p99 ms", UNIT + " vs nginx", "p99 vs nginx", "cpu us/req",
              "cpu vs nginx", "RSS MiB", "PSS MiB", "load us/req", "backends us/req", "errors"]
    out = []
    for n in order:
        if n not in m:
            continue
        v = m[n]
        out.append([n, "%.0f" % v["rps"], "%.3f" % v["p50"], "%.3f" % v["p99"],
                    fmt_ratio(v["rps"], ref and ref["rps"]), fmt_ratio(v["p99"], ref and ref["p99"]),
                    "%.2f" % v["cpu"] if v["cpu"] is not None else "-",
                    fmt_ratio(v["cpu"], ref and ref["cpu"]),
                    "%.1f" % v["rss"] if v["rss"] is not None else "-",
                    "%.1f" % v["pss"] if v["pss"] is not None else "-",
                    "%.2f" % v["load"] if v["load"] is not None else "-",
                    "%.2f" % v["back"] if v["back"] is not None else "-", str(rows[c][n]["errors"])])
    return header, out

def missed(pct):
    """A miss in whole percent; one under 1% says so rather than "missed by 0%"."""
    return "missed by %.0f%%" % pct if pct >= 1 else "missed by under 1%"

def verdict(c, ok, miss, *names):
    """"met" or the miss; not judged when a contender compared had failed requests: wrk
    counts them in req/s, and a fast failure makes a ratio look better than it is."""
    failed = ["%s %d" % (n, rows[c][n]["errors"]) for n in names if rows[c][n]["errors"]]
    if failed:
        return "not judged: failed requests, %s" % ", ".join(failed)
    return "met" if ok else miss

def budget(c, g):
    """Where gw misses a req/s target: the CPU per request it could use at the target's rate.
    The cores the machine gave during gw's rounds (its CPU, the load generator's and the
    backends', per second) must carry, at the target's rate, the load generator's and the
    backends' cost per request as measured in those rounds plus the proxy's own. An
    estimate: it takes those costs per request as fixed when the rate changes."""
    v = med[c][g]
    if v["cpu"] is None or v["load"] is None or v["back"] is None:
        return []
    cores = (v["cpu"] + v["load"] + v["back"]) * v["rps"] / 1e6
    out = []
    for p, want in TARGET.items():
        if p not in med[c] or v["rps"] >= want * med[c][p]["rps"]:
            continue
        rate = want * med[c][p]["rps"]
        left = cores / rate * 1e6 - v["load"] - v["back"]
        peer = med[c][p]["cpu"]
        out.append("  - CPU budget for %.1f× %s (%.0f %s): the %.2f cores busy in %s's rounds, less the load "
                   "generator (%.2f us) and the backends (%.2f us) per request, leave %s per request; %s used "
                   "%.2f us%s" % (want, p, rate, UNIT, cores, g, v["load"], v["back"],
                                  "%.2f us" % left if left > 0 else "nothing", g, v["cpu"],
                                  " (%s: %.2f us)" % (p, peer) if peer else ""))
    return out

def targets(c):
    """Lines saying, for each gw engine, its ratios to each peer and whether the targets hold."""
    m = med[c]
    lines = []
    peers = [p for p in PEERS if p in m]
    best_p99 = min((m[p]["p99"] for p in peers), default=None)
    for g in ("gw", "gw-uring"):
        if g not in m:
            continue
        parts = []
        for p in peers:
            ratio = m[g]["rps"] / m[p]["rps"]
            want = TARGET.get(p)
            part = "vs %s %s %.2f×" % (p, UNIT, ratio)
            if want:
                part += " (target %.1f×: %s)" % (want, verdict(c, ratio >= want, missed((want - ratio) / want * 100), g, p))
            if m[g]["cpu"] is not None and m[p]["cpu"]:
                part += ", cpu/req %.2f×" % (m[g]["cpu"] / m[p]["cpu"])
            if m[g]["rss"] is not None and m[p]["rss"]:
                part += ", RSS %.2f×" % (m[g]["rss"] / m[p]["rss"])
            parts.append(part)
        if best_p99:
            ratio = m[g]["p99"] / best_p99
            parts.append("p99 %.2f× the best peer's (target ≤ 1: %s)" % (
                ratio, verdict(c, ratio <= 1, missed((ratio - 1) * 100), g, *peers)))
        lines.append("- **%s**: %s" % (g, "; ".join(parts)))
        lines += budget(c, g)
    if "gw" in m and "gw-uring" in m:
        ratio = m["gw-uring"]["rps"] / m["gw"]["rps"]
        line = "- **gw-uring vs gw (epoll)**: %s %.2f, p99 %.2f" % (UNIT, ratio, m["gw-uring"]["p99"] / m["gw"]["p99"])
        if m["gw"]["cpu"] and m["gw-uring"]["cpu"] is not None:
            line += ", cpu/req %.2f" % (m["gw-uring"]["cpu"] / m["gw"]["cpu"])
        if c >= 1000:
            line += " (target at ≥1,000 connections: io_uring ≥ epoll, %s)" % (
                verdict(c, ratio >= 1, missed((1 - ratio) * 100), "gw", "gw-uring"))
        lines.append(line)
    return lines

def describe(c):
    if mode == "frame":
        return ("gwload --churn -c %d: %d clients each looping connect → login frame → echo → close for %ss, "
                "from 127.0.0.2..9; p50/p99 = login round trip" % (c, c, env["BENCH_DURATION"]))
    return "wrk -t%d -c%d -d%ss --latency, HTTP/1.1 keep-alive" % (1 if c < 2 else 2, c, env["BENCH_DURATION"])

WHAT = {"l4": "L4 (tcp relay)", "l7": "L7 (HTTP reverse proxy)", "frame": "frame (first-frame routing)"}[mode]
meta = ("%s; kernel `%s`, %s × %s, %s RAM; %s; %s round(s) × %ss per contender and connection count, interleaved, "
        "%s; %s workers each; gw %s, build %s; %s. cpu us/req = the contender's processes' CPU "
        "time per request; load and backends us/req = the load generator's (%s) and the two backends' CPU time "
        "per request in the same runs; RSS = summed RSS of its processes (master and workers) at 90%% of a run, "
        "shared pages counted in every process that maps them; PSS splits those.%s" % (
            env["BENCH_DATE"], env["BENCH_KERNEL"], env["BENCH_NPROC"], env["BENCH_CPU"], env["BENCH_MEM"],
            env["BENCH_CPUS_SHARED"], env["BENCH_ROUNDS"], env["BENCH_DURATION"], env["BENCH_ORDER"], env["BENCH_WORKERS"], env["BENCH_GW_REV"],
            env["BENCH_GW_BUILD"], env["BENCH_VERSIONS"], "gwload" if mode == "frame" else "wrk",
            " Idle backend connections kept per worker: %s (nginx, lua, gw)." % env["BENCH_NGINX_KEEPALIVE"]
            if mode == "l7" else ""))
notes = []
if "direct" in order:
    notes.append("direct = the load straight at the backends, no proxy (%s)."
                 % ("gwload spread over both" if mode == "frame" else "wrk takes one URL: backend b1 only, where the "
                    "proxies spread the load over b1 and b2"))
if mode == "frame":
    notes.append("gw routes each connection on the devid of its login frame (chash); nginx stream cannot read "
                  "the frame and hashes the client address (`hash $remote_addr consistent`).")
if "gw+rules" in order:
    notes.append("gw+rules = %s more gw runs of %ss while `gwctl set rule` made %s gray-release rule changes in all, "
                 "each flipping wrk's traffic between two upstreams; median req/s and latencies over the runs, "
                 "errors = failed requests in all of them."
                 % (env["BENCH_RULES_PAIRS"], env["BENCH_RULES_DURATION"], env["BENCH_RULES_DONE"]))
if "gw+gwctl" in order:
    pair_ratios = []
    for p in sorted(rules_pairs):
        v = rules_pairs[p]
        if "gw+rules" in v and "gw+gwctl" in v and v["gw+gwctl"]:
            pair_ratios.append("%.2f" % (v["gw+rules"] / v["gw+gwctl"]))
    notes.append("gw+gwctl = the control for gw+rules: as many runs as long, each paired with one gw+rules run "
                 "(the pair's order alternates), with %s gwctl calls in all that each set the rule to what it "
                 "already is (no commit, no new table): gw+rules against gw+gwctl is the cost of the rule changes "
                 "to gw; gw+gwctl against gw is the cost of the gwctl processes on the same cores. gw+rules / "
                 "gw+gwctl req/s, pair by pair: %s." % (env["BENCH_NOOP_DONE"], ", ".join(pair_ratios) or "n/a"))
skipped = [s for s in env.get("BENCH_SKIPPED", "").splitlines() if s]
for s in skipped:
    notes.append("Skipped: " + s + ".")

md = []
console = []
for c in counts:
    header, body = table(c)
    md.append("### %s connections\n" % f"{c:,}")
    md.append(describe(c) + "\n")
    md.append("| " + " | ".join(header) + " |")
    md.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    md += ["| " + " | ".join(row) + " |" for row in body]
    md.append("")
    md += targets(c)
    md.append("")
    widths = [max(len(h), *(len(row[i]) for row in body)) for i, h in enumerate(header)]
    def fmt(cells):
        return "  ".join(x.ljust(w) if i == 0 else x.rjust(w) for i, (x, w) in enumerate(zip(cells, widths)))
    console += ["", "%s, %d connections, medians over %s round(s) (%s):" % (mode, c, env["BENCH_ROUNDS"], describe(c)),
                fmt(header), fmt(["-" * w for w in widths])] + [fmt(row) for row in body] + targets(c)
md += notes
print("\n".join(console + [""] + notes))

# Chart: one panel per measure, bars grouped by connection count, one colour per contender.
names = [n for n in order if any(n in rows[c] for c in counts) and n not in ("gw+rules", "gw+gwctl")]
out_dir = env["BENCH_RESULTS_DIR"]
base = os.path.join(out_dir, "%s-%s" % (mode, env["BENCH_STAMP"]))
png = None
if shutil.which("gnuplot"):
    dat = os.path.join(env["BENCH_TMP"], "chart.dat")
    with open(dat, "w") as f:
        for key in ("rps", "p99", "cpu", "rss"):
            f.write("connections " + " ".join(names) + "\n")
            for c in counts:
                vals = []
                for n in names:
                    v = med[c].get(n, {}).get(key)
                    vals.append("%.4g" % v if v is not None else "-")
                f.write("%d %s\n" % (c, " ".join(vals)))
            f.write("\n\n")
    panels = [("rps", UNIT + " (higher is better)"), ("p99", "p99 ms, log scale (lower is better)"),
              ("cpu", "CPU us per request (lower is better)"), ("rss", "RSS MiB (lower is better)")]
    gp = ['set terminal pngcairo size 1400,900 font "sans,10"',
          'set output "%s.png"' % base,
          'set datafile missing "-"',
          'set style data histograms', 'set style histogram clustered gap 1', 'set style fill solid 0.85 border -1',
          'set boxwidth 0.9', 'set grid ytics', 'set key outside below center horizontal',
          'set xlabel "connections"',
          'set multiplot layout 2,2 title "gw %s, %s, %s (medians of %s round(s); one run, so only ratios count)"'
          % (WHAT, env["BENCH_DATE"], env["BENCH_GW_REV"], env["BENCH_ROUNDS"])]
    for i, (key, title) in enumerate(panels):
        gp.append('set title "%s"' % title)
        # p99 spans milliseconds to seconds across connection counts: log scale.
        gp.append('set logscale y; set yrange [*:*]' if key == "p99" else 'unset logscale y; set yrange [0:*]')
        gp.append('plot for [i=2:%d] "%s" index %d using i:xtic(1) title columnheader(i)' % (len(names) + 1, dat, i))
    gp.append("unset multiplot")
    res = subprocess.run(["gnuplot"], input="\n".join(gp) + "\n", capture_output=True, text=True)
    if res.returncode == 0 and os.path.exists(base + ".png"):
        png = base + ".png"
    else:
        print("compare.sh: gnuplot failed: %s" % res.stderr[-1000:], file=sys.stderr)

title = "# %s: gw vs its peers\n" % WHAT
doc = [title, meta, ""]
doc += ["Per-run data (one line per connection count, round and contender, with a header line): "
        "`%s.tsv`, beside this report." % os.path.basename(base), ""]
if png:
    doc += ["![%s chart](%s)" % (mode, os.path.basename(png)), ""]
doc += md
with open(base + ".md", "w") as f:
    f.write("\n".join(doc) + "\n")
shutil.copyfile(base + ".md", os.path.join(out_dir, "latest-%s.md" % mode))
if png:
    shutil.copyfile(png, os.path.join(out_dir, "latest-%s.png" % mode))
    # the copy's image link points at its own file
    latest = os.path.join(out_dir, "latest-%s.md" % mode)
    text = open(latest).read().replace("(%s)" % os.path.basename(png), "(latest-%s.png)" % mode)
    open(latest, "w").write(text)

new_file = not os.path.exists(results_md)
with open(results_md, "a") as f:
    if new_file:
        f.write("# gw benchmark results\n\n"
                "Appended by `bench/compare.sh`. Each section is one run: medians over the rounds of\n"
                "the load through each contender over loopback. Every proxy uses the same\n"
                "worker count and the same two single-threaded `gw-backend` servers.\n"
                "Ratios are relative to nginx (req/s: higher is better; p99: lower is better).\n"
                "Errors are socket errors plus non-2xx replies, summed over the rounds; a target is not\n"
                "judged when a contender it compares had any (wrk counts them in req/s).\n")
    f.write("\n## %s, %s\n\n" % (mode, env["BENCH_DATE"]))
    f.write(meta + " Table and chart: `bench/results/%s.md`; per-run data: `bench/results/%s.tsv`.\n\n"
            % (os.path.basename(base), os.path.basename(base)))
    f.write("\n".join(md).replace("### ", "#### ") + "\n")
print("wrote %s.md%s (per-run data: %s.tsv); appended to %s" % (base, " and .png" if png else "", base, results_md))
EOF
