#!/usr/bin/env bash
# System calls per proxied request: gw under each engine against nginx, one
# worker each, on the same gw-backend. wrk runs through each in turn while
# strace counts the worker's system calls (strace slows the worker several
# times over, so only the counts mean anything here, never the rates).
#
#   bench/syscalls.sh [tcp|http] [--conns 10] [--duration 4]
#
# The proxy's own CPU per request is mostly the kernel's loopback TCP work
# behind these calls (README, "Where it stands"); this shows how many entries
# each design makes per request: a readiness loop needs at least one receive
# and one send per direction, a completion ring can batch them.
# Only loopback is used; everything started here is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
usage() {
  echo "usage: bench/syscalls.sh [tcp|http] [--conns N] [--duration S]" >&2
  exit 2
}
protocol=http conns=10 secs=4
if [ $# -gt 0 ] && [[ $1 != --* ]]; then
  protocol=$1
  shift
fi
while [ $# -gt 0 ]; do
  [ $# -ge 2 ] || usage
  case "$1" in
    --conns) conns=$2 ;;
    --duration) secs=$2 ;;
    *) usage ;;
  esac
  shift 2
done
case "$protocol" in tcp|http) ;; *) echo "bench/syscalls.sh: the protocol must be tcp or http, got '$protocol'" >&2; exit 2 ;; esac
for v in "$conns" "$secs"; do
  [[ $v =~ ^[1-9][0-9]*$ ]] || { echo "bench/syscalls.sh: --conns and --duration need a positive integer, got '$v'" >&2; exit 2; }
done
for t in wrk strace nginx; do
  command -v "$t" >/dev/null || { echo "bench/syscalls.sh: $t not found (tools/setup.sh installs it)" >&2; exit 1; }
done
build=${BUILD_DIR:-build}
for b in gwd gw-backend; do
  [ -x "$build/$b" ] || { echo "bench/syscalls.sh: $build/$b not found (build first, or set BUILD_DIR)" >&2; exit 1; }
done
stream_module=/usr/lib/nginx/modules/ngx_stream_module.so
[ "$protocol" = http ] || [ -f "$stream_module" ] || { echo "bench/syscalls.sh: $stream_module missing (package libnginx-mod-stream)" >&2; exit 1; }

tmp=$(mktemp -d /tmp/gwsys.XXXXXX)
shm="gwsys-$$"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
  rm -f "/dev/shm/$shm-epoll" "/dev/shm/$shm-epoll.lock" "/dev/shm/$shm-io_uring" "/dev/shm/$shm-io_uring.lock"
}
trap cleanup EXIT

free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 100); do
    if /usr/bin/python3 -c "import socket; socket.create_connection(('127.0.0.1',$1),1)" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "bench/syscalls.sh: nothing listens on 127.0.0.1:$1 (logs in $tmp)" >&2
  exit 1
}
# The one worker of a master: its only child.
worker_of() {
  local w=""
  for _ in $(seq 50); do
    w=$(pgrep -P "$1" | head -1 || true)
    [ -n "$w" ] && break
    sleep 0.1
  done
  [ -n "$w" ] || { echo "bench/syscalls.sh: no worker under pid $1 (logs in $tmp)" >&2; exit 1; }
  echo "$w"
}
# wrk speaks HTTP in both modes: through a tcp listener it is relayed as bytes.
url() { echo "http://127.0.0.1:$1/"; }

backend_port=$(free_port)
"$build/gw-backend" --listen "127.0.0.1:$backend_port" --name b1 --mode http --threads 1 >"$tmp/backend.log" 2>&1 &
pids+=($!)
wait_port "$backend_port"

# count NAME PORT WORKER_PID: one wrk run under strace; prints NAME's row.
count() {
  local name=$1 port=$2 worker=$3
  wrk -t1 -c"$conns" -d1 "$(url "$port")" >/dev/null  # warm-up: connections and keep-alive pools
  strace -c -f -p "$worker" -o "$tmp/$name.strace" 2>/dev/null &
  local sp=$!
  sleep 0.5
  wrk -t1 -c"$conns" -d"$secs" "$(url "$port")" >"$tmp/$name.wrk"
  kill -INT "$sp"
  wait "$sp" 2>/dev/null || true
  local reqs
  reqs=$(awk '/requests in/ {print $1}' "$tmp/$name.wrk")
  [ -n "$reqs" ] && [ "$reqs" -gt 0 ] || { echo "bench/syscalls.sh: $name served no request (logs in $tmp)" >&2; exit 1; }
  if grep -q "Non-2xx\|Socket errors" "$tmp/$name.wrk"; then
    echo "bench/syscalls.sh: $name had failed requests:" >&2
    grep "Non-2xx\|Socket errors" "$tmp/$name.wrk" >&2
    exit 1
  fi
  # strace -c: "% time seconds usecs/call calls [errors] syscall", a total line last.
  local total calls
  total=$(awk '$1 ~ /^[0-9.]+$/ && NF >= 5 && $NF != "total" { t += $4 } END { print t + 0 }' "$tmp/$name.strace")
  calls=$(awk -v reqs="$reqs" '$1 ~ /^[0-9.]+$/ && NF >= 5 && $NF != "total" && $4 / reqs >= 0.05 { printf "%.2f %s\n", $4 / reqs, $NF }' \
    "$tmp/$name.strace" | sort -rn | awk '{ printf "%s%s %s", (NR > 1 ? ", " : ""), $2, $1 }')
  awk -v name="$name" -v reqs="$reqs" -v total="$total" -v calls="$calls" \
    'BEGIN { printf "| %s | %d | %.2f | %s |\n", name, reqs, total / reqs, calls }'
}

echo "| contender ($protocol, $conns connections, 1 worker) | requests | system calls per request | the calls (per request, those at 0.05 or more) |"
echo "|---|---|---|---|"
for engine in epoll io_uring; do
  port=$(free_port)
  listener="\"protocol\": \"$protocol\""
  keepalive=""
  if [ "$protocol" = http ]; then
    listener+=', "http": {"keepalive_requests": 100000}'
    keepalive='"keepalive": {"max_idle": 64},'
  fi
  cat >"$tmp/$engine.json" <<EOF
{"workers": 1, "event_engine": "$engine", "log_level": "warn",
 "shm": {"name": "$shm-$engine", "max_upstreams": 8, "max_pools": 8, "max_hosts": 64},
 "state_file": "$tmp/$engine.state.json",
 "listeners": [{"name": "l", "listen": "127.0.0.1:$port", $listener, "upstream": "app"}],
 "upstreams": [{"name": "app", $keepalive "pools": [{"id": "p", "hosts": [{"id": "b1", "address": "127.0.0.1:$backend_port"}]}]}]}
EOF
  "$build/gwd" -c "$tmp/$engine.json" >"$tmp/$engine.log" 2>&1 &
  master=$!
  pids+=("$master")
  wait_port "$port"
  count "gw $engine" "$port" "$(worker_of "$master")"
  kill -TERM "$master"
  wait "$master" 2>/dev/null || true
done

port=$(free_port)
mkdir -p "$tmp/nginx/logs"
if [ "$protocol" = http ]; then
  server="http { access_log off; keepalive_requests 100000;
    client_body_temp_path $tmp/nginx/body; proxy_temp_path $tmp/nginx/proxy;
    upstream backends { server 127.0.0.1:$backend_port; keepalive 64; }
    server { listen 127.0.0.1:$port reuseport backlog=4096;
      location / { proxy_pass http://backends; proxy_http_version 1.1; proxy_set_header Connection \"\"; } } }"
  load=""
  label="nginx proxy_pass"
else
  server="stream { server { listen 127.0.0.1:$port reuseport backlog=4096; proxy_pass 127.0.0.1:$backend_port; } }"
  load="load_module $stream_module;"
  label="nginx stream"
fi
cat >"$tmp/nginx/nginx.conf" <<EOF
$load
worker_processes 1; daemon off; pid $tmp/nginx/nginx.pid; error_log $tmp/nginx/logs/error.log;
events { worker_connections 4096; }
$server
EOF
nginx -p "$tmp/nginx" -e "$tmp/nginx/logs/error.log" -c "$tmp/nginx/nginx.conf" >"$tmp/nginx.log" 2>&1 &
master=$!
pids+=("$master")
wait_port "$port"
count "$label" "$port" "$(worker_of "$master")"
