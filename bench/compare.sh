#!/usr/bin/env bash
# Compares gw (epoll and io_uring engines) with nginx, HAProxy and a direct connection to one
# backend, using wrk over loopback:
#   l4  gw `tcp` listener, nginx stream, HAProxy mode tcp
#   l7  gw `http` listener (upstream keep-alive), nginx http proxy_pass with a keepalive
#       upstream (proxy_http_version 1.1), HAProxy mode http with http-reuse always
#
#   bench/compare.sh l4|l7 [--rounds N] [--duration S] [--connections C] [--workers W]
#
# Defaults: 5 rounds, 10 s per run, 50 connections, W = nproc workers/threads per proxy.
# Environment:
#   CONTENDERS    which contenders to run, in round-1 order
#                 (default "gw gw-uring nginx haproxy direct"; gw = epoll engine, gw-uring = io_uring)
#   GW_BUILD_DIR  build dir holding gwd and gw-backend (default: build-release, which is
#                 configured and built in Release mode if gwd is missing)
#   GW_BACKEND    path to a gw-backend binary to use instead of the build dir's
#   GW_CMAKE_ARGS extra arguments for configuring build-release (e.g. "-DGW_WERROR=OFF")
#   GW_RESULTS_FILE  where to append the results (default bench/RESULTS.md)
#   RULE_CHANGES  l7: gray-rule changes made during one extra gw run (default 1000; 0 = none)
#   RULES_DURATION  l7: length of that run in seconds (default 60)
#
# Every proxy gets the same two single-threaded gw-backend HTTP servers and the same worker
# count. Rounds are interleaved and the starting contender rotates each round, so slow drift
# of the machine (thermal, noisy neighbours) does not always hit the same contender. The
# summary uses medians over rounds and is appended to bench/RESULTS.md.
#
# Each run also records the contender's CPU time per request (its processes and threads,
# from /proc/PID/task/*/schedstat: nanoseconds, whatever else the machine runs), the figure
# that stays meaningful when other load on the machine moves req/s around.
#
# Only loopback (127.0.0.1) is used. Everything started here is stopped on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RESULTS_MD=${GW_RESULTS_FILE:-"$ROOT/bench/RESULTS.md"}
NGINX_STREAM_MODULE=/usr/lib/nginx/modules/ngx_stream_module.so
PY=/usr/bin/python3

usage() {
  cat >&2 <<EOF
usage: bench/compare.sh l4|l7 [--rounds N] [--duration S] [--connections C] [--workers W]
  defaults: --rounds 5 --duration 10 --connections 50 --workers \$(nproc)
  env: CONTENDERS="gw gw-uring nginx haproxy direct"  GW_BUILD_DIR=DIR  GW_BACKEND=PATH
EOF
  exit 2
}
die() { echo "compare.sh: $*" >&2; exit 1; }
log() { echo "== $*" >&2; }

# ---------------------------------------------------------------------------------------
# Arguments

[ $# -ge 1 ] || usage
MODE=$1; shift
case $MODE in l4|l7) ;; *) echo "compare.sh: unknown benchmark '$MODE' (l4 or l7)" >&2; usage ;; esac

ROUNDS=5
DURATION=10
CONNECTIONS=50
WORKERS=$(nproc)
while [ $# -gt 0 ]; do
  case $1 in
    --rounds|--duration|--connections|--workers)
      [ $# -ge 2 ] || usage
      [[ $2 =~ ^[1-9][0-9]*$ ]] || die "$1 needs a positive integer, got '$2'"
      case $1 in
        --rounds) ROUNDS=$2 ;;
        --duration) DURATION=${2} ;;
        --connections) CONNECTIONS=$2 ;;
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

read -r -a CONTENDER_LIST <<<"${CONTENDERS:-gw gw-uring nginx haproxy direct}"
[ ${#CONTENDER_LIST[@]} -gt 0 ] || die "CONTENDERS is empty"
for c in "${CONTENDER_LIST[@]}"; do
  case $c in gw|gw-uring|nginx|haproxy|direct) ;; *) die "unknown contender '$c' (gw gw-uring nginx haproxy direct)" ;; esac
done
has_contender() { local c; for c in "${CONTENDER_LIST[@]}"; do [ "$c" = "$1" ] && return 0; done; return 1; }
has_gw() { has_contender gw || has_contender gw-uring; }

# wrk refuses fewer connections than threads.
WRK_THREADS=2
[ "$CONNECTIONS" -ge 2 ] || WRK_THREADS=1

# ---------------------------------------------------------------------------------------
# Tools and binaries

command -v wrk >/dev/null || die "wrk not found (tools/setup.sh installs it)"
[ -x "$PY" ] || die "$PY not found"
if has_contender nginx; then
  command -v nginx >/dev/null || die "nginx not found"
  [ "$MODE" = l7 ] || [ -f "$NGINX_STREAM_MODULE" ] || die "$NGINX_STREAM_MODULE missing (package libnginx-mod-stream)"
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
BACKEND=${GW_BACKEND:-"$BUILD_DIR/gw-backend"}

need_build=0
if has_gw && { [ ! -x "$GWD" ] || [ ! -x "$BUILD_DIR/gwctl" ]; }; then need_build=1; fi
if [ ! -x "$BACKEND" ]; then need_build=1; fi
if [ $need_build = 1 ]; then
  [ $BUILD_ALLOWED = 1 ] || die "gwd or gw-backend missing in $BUILD_DIR (build it, or unset GW_BUILD_DIR)"
  log "building gw (Release) in $BUILD_DIR"
  build_log=$(mktemp /tmp/gwbench-build.XXXXXX)
  read -r -a extra_cmake_args <<<"${GW_CMAKE_ARGS:-}"
  if ! { cmake -S "$ROOT" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release "${extra_cmake_args[@]}" &&
         cmake --build "$BUILD_DIR" -j2 --target gwd gwctl gw-backend; } >"$build_log" 2>&1; then
    tail -n 40 "$build_log" >&2
    die "build failed (full log: $build_log); GW_BUILD_DIR=<dir> benchmarks an existing build"
  fi
  rm -f "$build_log"
fi
if has_gw; then [ -x "$GWD" ] || die "$GWD not found after build"; fi
[ -x "$BACKEND" ] || die "$BACKEND not found"

# Proxies may need many descriptors; raise the soft limit as far as allowed.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# ---------------------------------------------------------------------------------------
# Process bookkeeping and cleanup

TMP=$(mktemp -d /tmp/gwbench.XXXXXX)
SHM_NAME="gwbench-$$"
declare -a PIDS=()      # every long-running process we started
declare -A PID_NAME=()  # pid -> name, for messages
declare -A PID_LOG=()   # pid -> its output file
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

# Probe: one HTTP request per fresh connection; prints the backend names that answered.
cat >"$TMP/probe.py" <<'EOF'
import socket, sys
port, count = int(sys.argv[1]), int(sys.argv[2])
names = []
for _ in range(count):
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
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

show_logs() {
  local f
  for f in "$@"; do
    [ -s "$f" ] || continue
    echo "---- $f ----" >&2
    tail -n 50 "$f" >&2
  done
  echo "----" >&2
}

# wait_ready NAME PID PORT EXPECTED_BACKENDS LOG...: waits until PORT serves HTTP through
# the contender, then checks that the expected backends (e.g. "b1 b2") all answered. On
# failure shows the contender's logs and exits.
wait_ready() {
  local name=$1 pid=$2 port=$3 expect=$4 seen="" i
  shift 4
  for i in $(seq 100); do
    if ! kill -0 "$pid" 2>/dev/null; then
      show_logs "$@"
      die "$name exited during startup"
    fi
    if seen=$("$PY" "$TMP/probe.py" "$port" 4 2>/dev/null); then break; fi
    seen=""
    sleep 0.1
  done
  if [ -z "$seen" ]; then
    show_logs "$@"
    die "$name did not serve requests on 127.0.0.1:$port within 10 s"
  fi
  if [ "$seen" != "$expect" ]; then
    echo "compare.sh: warning: $name answered from backends '$seen', expected '$expect'" >&2
  fi
}

# ---------------------------------------------------------------------------------------
# Start everything

declare -A CPID=()  # contender -> the pid whose process tree is the proxy (CPU per request)
read -r P_B1 P_B2 P_GW P_GWU P_NGINX P_HAPROXY <<<"$(free_ports 6)"
declare -A PORT=([gw]=$P_GW [gw-uring]=$P_GWU [nginx]=$P_NGINX [haproxy]=$P_HAPROXY [direct]=$P_B1)

log "backends: 127.0.0.1:$P_B1 (b1), 127.0.0.1:$P_B2 (b2); workers=$WORKERS; tmp=$TMP"
for b in 1 2; do
  port_var=P_B$b
  start "b$b" "$TMP/b$b.log" "$BACKEND" --listen "127.0.0.1:${!port_var}" --name "b$b" --mode http --threads 1
  wait_ready "backend b$b" "$LAST_PID" "${!port_var}" "b$b" "$TMP/b$b.log"
done

gw_upstream() {  # NAME: an upstream over b1 and b2
  printf '{"name": "%s", "connect_timeout_ms": 2000, "idle_timeout_ms": 600000,
               "max_fails": 1, "fail_timeout_ms": 10000, "tries": 3,
               "pools": [{"id": "primary", "priority": 0, "method": "round_robin",
                          "hosts": [{"id": "b1", "address": "127.0.0.1:%s", "weight": 1},
                                    {"id": "b2", "address": "127.0.0.1:%s", "weight": 1}]}]}' "$1" "$P_B1" "$P_B2"
}
GW_UPSTREAMS=$(gw_upstream app)
# l7: a second upstream over the same backends, where the gray rule that the
# rule-change round flips sends wrk's requests (the answers stay the same).
[ "$MODE" = l7 ] && GW_UPSTREAMS+=", $(gw_upstream pre)"

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
  "listeners": [{"name": "bench", "listen": "127.0.0.1:$port", "protocol": "$([ "$MODE" = l7 ] && echo http || echo tcp)",
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
  wait_ready "$name" "$LAST_PID" "$port" "b1 b2" "$TMP/$name.log"
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

if has_contender nginx; then
  mkdir -p "$TMP/nginx/logs"
  if [ "$MODE" = l4 ]; then
  cat >"$TMP/nginx/nginx.conf" <<EOF
load_module $NGINX_STREAM_MODULE;
daemon off;
master_process on;
worker_processes $WORKERS;
worker_rlimit_nofile 20000;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/logs/error.log warn;
events {
    worker_connections 8192;
}
stream {
    upstream backends {
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
  else
  # The usual production reverse proxy: keep-alive to the backends, no access log
  # (gw writes none either), client keep-alive as wrk uses it.
  cat >"$TMP/nginx/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes $WORKERS;
worker_rlimit_nofile 20000;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/logs/error.log warn;
events {
    worker_connections 8192;
}
http {
    access_log off;
    keepalive_requests 100000;
    client_body_temp_path $TMP/nginx/body;
    proxy_temp_path $TMP/nginx/proxy;
    upstream backends {
        server 127.0.0.1:$P_B1;
        server 127.0.0.1:$P_B2;
        keepalive 64;
    }
    server {
        listen 127.0.0.1:$P_NGINX reuseport backlog=4096;
        location / {
            proxy_pass http://backends;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_connect_timeout 2s;
        }
    }
}
EOF
  fi
  # -e: log startup errors here instead of the system-wide error log.
  start nginx "$TMP/nginx.log" nginx -p "$TMP/nginx" -e "$TMP/nginx/logs/error.log" -c "$TMP/nginx/nginx.conf"
  wait_ready nginx "$LAST_PID" "$P_NGINX" "b1 b2" "$TMP/nginx.log" "$TMP/nginx/logs/error.log"
  CPID[nginx]=$LAST_PID
fi

if has_contender haproxy; then
  MODE_HAPROXY=tcp
  HAPROXY_HTTP_OPTS=""
  if [ "$MODE" = l7 ]; then
    MODE_HAPROXY=http
    HAPROXY_HTTP_OPTS=$'    option http-keep-alive\n    http-reuse always'
  fi
  cat >"$TMP/haproxy.cfg" <<EOF
global
    nbthread $WORKERS
    maxconn 4096

defaults
    mode $MODE_HAPROXY
$HAPROXY_HTTP_OPTS
    timeout connect 2s
    timeout client 10m
    timeout server 10m

frontend bench
    bind 127.0.0.1:$P_HAPROXY
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
  wait_ready haproxy "$LAST_PID" "$P_HAPROXY" "b1 b2" "$TMP/haproxy.log"
  CPID[haproxy]=$LAST_PID
fi

# ---------------------------------------------------------------------------------------
# Runs

# Parses wrk --latency output into "rps p50_ms p99_ms errors".
# cpu_ns PID: CPU nanoseconds so far of PID, its threads and its descendants.
cpu_ns() {
  "$PY" - "$1" <<'EOF'
import os, sys
todo, seen, total = [int(sys.argv[1])], set(), 0
while todo:
    p = todo.pop()
    if p in seen:
        continue
    seen.add(p)
    try:
        tasks = os.listdir(f"/proc/{p}/task")
    except OSError:
        continue
    for t in tasks:
        try:
            with open(f"/proc/{p}/task/{t}/schedstat") as f:
                total += int(f.read().split()[0])
            with open(f"/proc/{p}/task/{t}/children") as f:
                todo.extend(int(x) for x in f.read().split())
        except (OSError, ValueError):
            pass
print(total)
EOF
}

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

RUNS="$TMP/runs.tsv"
: >"$RUNS"
n=${#CONTENDER_LIST[@]}
log "$MODE: $ROUNDS rounds x ${DURATION}s, $CONNECTIONS connections, wrk -t$WRK_THREADS, contenders: ${CONTENDER_LIST[*]}"
for ((r = 0; r < ROUNDS; r++)); do
  for ((k = 0; k < n; k++)); do
    c=${CONTENDER_LIST[(r + k) % n]}
    out="$TMP/wrk-$r-$c.txt"
    cpu0=0
    [ -n "${CPID[$c]:-}" ] && cpu0=$(cpu_ns "${CPID[$c]}")
    # Background + wait so INT/TERM are handled promptly instead of after the run.
    wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency "http://127.0.0.1:${PORT[$c]}/" >"$out" 2>&1 &
    WRK_PID=$!
    wrk_rc=0
    wait "$WRK_PID" || wrk_rc=$?
    WRK_PID=""
    if [ $wrk_rc -ne 0 ] || ! res=$(parse_wrk "$out"); then
      show_logs "$out"
      die "wrk through $c failed (round $((r + 1)))"
    fi
    read -r rps p50 p99 errs reqs <<<"$res"
    cpu_us=-1
    if [ -n "${CPID[$c]:-}" ] && [ "$reqs" -gt 0 ]; then
      cpu1=$(cpu_ns "${CPID[$c]}")
      cpu_us=$(awk -v a="$cpu0" -v b="$cpu1" -v n="$reqs" 'BEGIN { printf "%.2f", (b - a) / 1000 / n }')
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$((r + 1))" "$c" "$rps" "$p50" "$p99" "$errs" "$cpu_us" >>"$RUNS"
    printf '[round %d/%d] %-9s req/s %10.0f  p50 %7.3f ms  p99 %7.3f ms  cpu %6s us/req%s\n' \
      "$((r + 1))" "$ROUNDS" "$c" "$rps" "$p50" "$p99" "$([ "$cpu_us" = -1 ] && echo - || echo "$cpu_us")" \
      "$([ "$errs" = 0 ] || echo "  ($errs errors)")"
    # A contender that died mid-run would otherwise show up only as wrk errors.
    for pid in "${PIDS[@]}"; do
      if ! kill -0 "$pid" 2>/dev/null; then
        show_logs "${PID_LOG[$pid]}"
        die "${PID_NAME[$pid]} (pid $pid) exited during the benchmark"
      fi
    done
  done
done

# l7: one more gw round while gwctl changes a gray-release rule RULE_CHANGES times
# (default 1000): the rule flips wrk's client address between the two upstreams, each
# change a commit that every worker picks up on its next request. Reported on its
# own row ("gw+rules"); the target is 0 failed requests.
RULE_CHANGES=${RULE_CHANGES:-1000}
RULES_DURATION=${RULES_DURATION:-60}  # each change is a gwctl process and an fsync'd state file: ~25/s here
RULES_DONE=0
if [ "$MODE" = l7 ] && has_contender gw && [ "$RULE_CHANGES" -gt 0 ]; then
  GWCTL="$BUILD_DIR/gwctl"
  [ -x "$GWCTL" ] || die "$GWCTL not found (build the gwctl target)"
  "$GWCTL" --shm "$SHM_NAME" add rule bench default gray --ip 127.0.0.2 --upstream pre >/dev/null
  out="$TMP/wrk-rules.txt"
  wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"${RULES_DURATION}s" --latency "http://127.0.0.1:$P_GW/" >"$out" 2>&1 &
  WRK_PID=$!
  for ((i = 0; i < RULE_CHANGES; i++)); do
    if ((i % 2 == 0)); then ip=127.0.0.1; else ip=127.0.0.2,10.0.0.0/8; fi
    "$GWCTL" --shm "$SHM_NAME" set rule bench default gray --ip "$ip" --upstream pre >/dev/null ||
      die "gwctl set rule failed (change $i)"
    kill -0 "$WRK_PID" 2>/dev/null || break
  done
  RULES_DONE=$i
  wrk_rc=0
  wait "$WRK_PID" || wrk_rc=$?
  WRK_PID=""
  if [ $wrk_rc -ne 0 ] || ! res=$(parse_wrk "$out"); then
    show_logs "$out"
    die "wrk through gw during the rule changes failed"
  fi
  read -r rps p50 p99 errs <<<"$res"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "rules" "gw+rules" "$rps" "$p50" "$p99" "$errs" -1 >>"$RUNS"
  printf '[rules]       gw+rules req/s %10.0f  p50 %7.3f ms  p99 %7.3f ms  (%d rule changes in the run, %d errors)\n' \
    "$rps" "$p50" "$p99" "$RULES_DONE" "$errs"
  [ "$RULES_DONE" -ge "$RULE_CHANGES" ] ||
    echo "compare.sh: warning: only $RULES_DONE of $RULE_CHANGES rule changes fit in the ${RULES_DURATION}s run" >&2
fi

# ---------------------------------------------------------------------------------------
# Summary: medians per contender, ratios to nginx; printed and appended to RESULTS.md.

DATE=$(date -u '+%Y-%m-%d %H:%M:%S UTC')
KERNEL=$(uname -r)
NPROC=$(nproc)
# (wrk --version exits non-zero, hence the "|| true")
VERSIONS="wrk $(wrk --version 2>&1 | awk 'NR==1{print $2}' || true)"
has_contender nginx && VERSIONS+=", $(nginx -v 2>&1 | sed 's/^nginx version: //')"
has_contender haproxy && VERSIONS+=", haproxy $(haproxy -v | awk 'NR==1{print $3}')"
GW_REV=$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo "uncommitted")
# Which build was measured: directory and CMake build type.
BUILD_TYPE=$(sed -n 's/^CMAKE_BUILD_TYPE:[A-Z]*=//p' "$BUILD_DIR/CMakeCache.txt" 2>/dev/null || true)
GW_BUILD="$BUILD_DIR (${BUILD_TYPE:-unknown build type})"

# Values reach the Python code through the environment (quoted heredoc: no shell expansion).
BENCH_ROUNDS=$ROUNDS BENCH_DURATION=$DURATION BENCH_CONNECTIONS=$CONNECTIONS \
BENCH_WORKERS=$WORKERS BENCH_WRK_THREADS=$WRK_THREADS BENCH_DATE=$DATE BENCH_KERNEL=$KERNEL \
BENCH_NPROC=$NPROC BENCH_VERSIONS=$VERSIONS BENCH_GW_REV=$GW_REV BENCH_GW_BUILD=$GW_BUILD BENCH_MODE=$MODE \
BENCH_RULES_DONE=$RULES_DONE \
"$PY" - "$RUNS" "$RESULTS_MD" "${CONTENDER_LIST[*]}" <<'EOF'
import os, statistics, sys

runs_file, results_md, order = sys.argv[1], sys.argv[2], sys.argv[3].split()
if int(os.environ.get("BENCH_RULES_DONE", "0")) > 0:
    order.append("gw+rules")
env = os.environ
rows = {}
for line in open(runs_file):
    _round, name, rps, p50, p99, errs, cpu = line.rstrip("\n").split("\t")
    r = rows.setdefault(name, {"rps": [], "p50": [], "p99": [], "cpu": [], "errors": 0})
    r["rps"].append(float(rps))
    r["p50"].append(float(p50))
    r["p99"].append(float(p99))
    if float(cpu) >= 0:
        r["cpu"].append(float(cpu))
    r["errors"] += int(errs)

med = {n: {k: statistics.median(v[k]) if v[k] else None for k in ("rps", "p50", "p99", "cpu")} for n, v in rows.items()}
ref = med.get("nginx")

def ratio(name, key):
    if ref is None or not ref[key] or med[name][key] is None:
        return "n/a"
    return "%.2f" % (med[name][key] / ref[key])

def cpu(name):
    return "%.2f" % med[name]["cpu"] if med[name]["cpu"] is not None else "-"

header = ["contender", "req/s", "p50 ms", "p99 ms", "req/s vs nginx", "p99 vs nginx", "cpu us/req", "cpu vs nginx",
          "errors"]
table = [[n, "%.0f" % med[n]["rps"], "%.3f" % med[n]["p50"], "%.3f" % med[n]["p99"],
          ratio(n, "rps"), ratio(n, "p99"), cpu(n), ratio(n, "cpu"), str(rows[n]["errors"])] for n in order]

widths = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(header)]
def fmt(cells):
    return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                     for i, (c, w) in enumerate(zip(cells, widths)))

print()
print("%s medians over %s rounds (wrk -t%s -c%s -d%ss, workers %s):" % (
    env["BENCH_MODE"], env["BENCH_ROUNDS"], env["BENCH_WRK_THREADS"], env["BENCH_CONNECTIONS"],
    env["BENCH_DURATION"], env["BENCH_WORKERS"]))
print(fmt(header))
print(fmt(["-" * w for w in widths]))
for row in table:
    print(fmt(row))
if "direct" in order:
    print("(direct = wrk straight at backend b1, no proxy; the proxies spread load over b1 and b2)")
if "gw+rules" in order:
    print("(gw+rules = one more gw run while gwctl made %s gray-rule changes; its load is on the same 2 cores)" % env["BENCH_RULES_DONE"])
engines = None
if "gw" in med and "gw-uring" in med and med["gw"]["rps"] and med["gw"]["p99"]:
    engines = "gw-uring vs gw (epoll): req/s %.2f, p99 %.2f" % (
        med["gw-uring"]["rps"] / med["gw"]["rps"], med["gw-uring"]["p99"] / med["gw"]["p99"])
    if med["gw"]["cpu"] and med["gw-uring"]["cpu"] is not None:
        engines += ", cpu/req %.2f" % (med["gw-uring"]["cpu"] / med["gw"]["cpu"])
    print(engines)

new_file = not os.path.exists(results_md)
with open(results_md, "a") as f:
    if new_file:
        f.write("# gw benchmark results\n\n"
                "Appended by `bench/compare.sh`. Each section is one run: medians over the rounds of\n"
                "`wrk --latency` through each contender over loopback. Every proxy uses the same\n"
                "worker count and the same two single-threaded `gw-backend --mode http` servers;\n"
                "\"direct\" is wrk straight at one backend. Ratios are relative to nginx (req/s: higher\n"
                "is better; p99: lower is better). Errors are wrk socket errors plus non-2xx replies,\n"
                "summed over the rounds.\n")
    f.write("\n## %s, %s\n\n" % (env["BENCH_MODE"], env["BENCH_DATE"]))
    f.write("kernel `%s`, nproc %s, rounds %s, duration %ss, connections %s, workers %s, "
            "wrk threads %s; gw %s, build %s; %s; cpu us/req = the proxy's processes' CPU time "
            "per request\n\n" % (
                env["BENCH_KERNEL"], env["BENCH_NPROC"], env["BENCH_ROUNDS"],
                env["BENCH_DURATION"], env["BENCH_CONNECTIONS"], env["BENCH_WORKERS"],
                env["BENCH_WRK_THREADS"], env["BENCH_GW_REV"], env["BENCH_GW_BUILD"],
                env["BENCH_VERSIONS"]))
    f.write("| " + " | ".join(header) + " |\n")
    f.write("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|\n")
    for row in table:
        f.write("| " + " | ".join(row) + " |\n")
    if engines:
        f.write("\n" + engines + "\n")
    if "gw+rules" in order:
        f.write("\ngw+rules: one more gw run while `gwctl set rule` made %s gray-release rule changes "
                "(each flipping wrk's traffic between two upstreams); errors = failed requests.\n" % env["BENCH_RULES_DONE"])
print("appended to %s" % results_md)
EOF
