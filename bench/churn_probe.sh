#!/usr/bin/env bash
# One frame churn run through gw, for looking at an engine rather than comparing
# contenders (bench/compare.sh frame does that): gwd with one `frame` listener in
# `connection` mode over two `gw-backend --mode device` servers, and
# `gwload --churn -c N` (connect, login frame, echo, close, looping) from
# 127.0.0.2..9 for S seconds. Prints new connections per second, gwd's CPU time
# per cycle (master and workers, /proc/PID/task/*/schedstat), the kernel's
# listen-queue overflows and TCP retransmission timeouts during the run (nstat),
# and what the probe saw.
#
#   bench/churn_probe.sh epoll|io_uring CLIENTS SECONDS [PROBE]
#
# PROBE, attached to the workers 2 s into the load for SECONDS-4 s:
#   stat    perf stat: system calls, context switches, io_uring completions, and
#           io_uring receives that found the buffer ring empty (-ENOBUFS)
#   perf    perf record -g into $OUT/perf.data (perf report -i ... --no-children)
#   strace  strace -c: system calls by name
#   status  gwctl status every second: each worker's open connections
# env: GW_BUILD_DIR (default build-release), GWD (a gwd binary to use instead of
#      the build dir's), OUT (default /tmp/churn_probe)
# Only loopback is used; everything started here is stopped on exit.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
B=${GW_BUILD_DIR:-$ROOT/build-release}
GWD=${GWD:-$B/gwd}
OUT=${OUT:-/tmp/churn_probe}
usage() { echo "usage: bench/churn_probe.sh epoll|io_uring CLIENTS SECONDS [stat|perf|strace|status]" >&2; exit 2; }
[ $# -ge 3 ] || usage
eng=$1 clients=$2 secs=$3 probe=${4:-}
case $eng in epoll|io_uring) ;; *) usage ;; esac
case $probe in ''|stat|perf|strace|status) ;; *) usage ;; esac
[[ $clients =~ ^[0-9]+$ && $secs =~ ^[0-9]+$ && $secs -ge 6 ]] || { echo "churn_probe.sh: CLIENTS and SECONDS (at least 6) are integers" >&2; exit 2; }
for x in "$GWD" "$B/gw-backend" "$B/gwload" "$B/gwctl"; do
  [ -x "$x" ] || { echo "churn_probe.sh: $x not found (cmake --build $B --target gwd gwctl gw-backend gwload)" >&2; exit 1; }
done
case $probe in
  stat|perf|strace)
    tool=$probe
    [ "$probe" = stat ] && tool=perf
    command -v "$tool" >/dev/null || { echo "churn_probe.sh: $tool not found (tools/setup.sh installs it)" >&2; exit 1; } ;;
esac
mkdir -p "$OUT"
shm=churnprobe-$$
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -f "/dev/shm/$shm" "/dev/shm/$shm.lock" "$OUT/state-$$.json"
}
trap cleanup EXIT
free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
b1=$(free_port) b2=$(free_port) lp=$(free_port)
"$B/gw-backend" --mode device --listen "127.0.0.1:$b1" --name b1 >"$OUT/b1.log" 2>&1 & pids+=($!)
"$B/gw-backend" --mode device --listen "127.0.0.1:$b2" --name b2 >"$OUT/b2.log" 2>&1 & pids+=($!)
cat >"$OUT/gw.json" <<EOF
{"workers": 2, "event_engine": "$eng", "log_file": "", "shm": {"name": "$shm"}, "state_file": "$OUT/state-$$.json",
 "listeners": [{"name": "f", "listen": "127.0.0.1:$lp", "protocol": "frame", "frame": {"mode": "connection"}, "backlog": 4096,
                "upstream": "app"}],
 "upstreams": [{"name": "app", "connect_timeout_ms": 2000, "idle_timeout_ms": 600000, "max_fails": 1,
                "fail_timeout_ms": 10000, "tries": 3,
                "pools": [{"id": "primary", "priority": 0,
                           "hosts": [{"id": "b1", "address": "127.0.0.1:$b1", "weight": 1},
                                     {"id": "b2", "address": "127.0.0.1:$b2", "weight": 1}]}]}]}
EOF
ulimit -n "$(ulimit -Hn)"
"$GWD" -c "$OUT/gw.json" >"$OUT/gw.log" 2>&1 &
gp=$!
pids=("$gp" "${pids[@]}")
for _ in $(seq 100); do
  /usr/bin/python3 -c "import socket; socket.create_connection(('127.0.0.1',$lp),1)" 2>/dev/null && break
  sleep 0.1
done
# The master listens before it forks: wait for both workers, so that a probe attaches to both.
wp=""
for _ in $(seq 100); do
  wp=$(pgrep -P "$gp" | paste -sd, - || true)
  [ "$(tr ',' '\n' <<<"$wp" | grep -c .)" -lt 2 ] || break
  sleep 0.1
done
[ "$(tr ',' '\n' <<<"$wp" | grep -c .)" -ge 2 ] || { echo "churn_probe.sh: gwd has not started its 2 workers (see $OUT/gw.log)" >&2; exit 1; }
cpu_ns() { local s=0 a _ p t; for p in "$gp" ${wp//,/ }; do for t in /proc/"$p"/task/*/schedstat; do read -r a _ <"$t" || true; s=$((s + a)); done; done; echo "$s"; }
nstat -n >/dev/null
cpu0=$(cpu_ns)
"$B/gwload" --target "127.0.0.1:$lp" --json --churn -c "$clients" --connect-rate 0 -T "$secs" --timeout-ms 30000 \
  --src "$(seq -s, -f '127.0.0.%g' 2 9)" >"$OUT/load.json" 2>"$OUT/load.err" &
load=$!
window=$((secs - 4))
case $probe in
  stat)
    sleep 2
    perf stat -e raw_syscalls:sys_enter,context-switches,io_uring:io_uring_complete \
      -e io_uring:io_uring_complete --filter 'res == -105' -p "$wp" -- sleep "$window" 2>&1 |
      grep -E 'sys_enter|context|io_uring' || true ;;
  perf)
    sleep 2
    perf record -g -o "$OUT/perf.data" -p "$wp" -- sleep "$window" >/dev/null 2>&1
    echo "perf data: $OUT/perf.data" ;;
  strace)
    sleep 2
    args=()
    for p in ${wp//,/ }; do args+=(-p "$p"); done
    # timeout ends strace (exit 124): its summary is the output.
    { timeout -s INT "$window" strace -c -f "${args[@]}" 2>&1 || true; } | grep -v '^strace:' | head -20 || true ;;
  status)
    for _ in $(seq 2 "$((secs - 1))"); do
      sleep 1
      "$B/gwctl" --shm "$shm" status --json 2>/dev/null |
        /usr/bin/python3 -c 'import json,sys; print("connections per worker:", [w["connections"] for w in json.load(sys.stdin)["workers"]])' ||
        echo "gwctl status failed"
    done ;;
esac
wait "$load" || true
cpu1=$(cpu_ns)
"$B/gwctl" --shm "$shm" status --json >"$OUT/status.json" 2>&1 || true
echo "listen queue and timers: $(nstat -z TcpExtListenOverflows TcpExtTCPTimeouts 2>/dev/null | awk 'NR>1 {printf "%s %s  ", $1, $2}')"
/usr/bin/python3 - "$OUT/load.json" "$eng" "$clients" "$((cpu1 - cpu0))" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
n = d["churn_connects"]  # cycles within -T; the CPU time also covers those gwload waited for after it
print(f"{sys.argv[2]} {sys.argv[3]} clients: {n / d['duration_s']:.0f} conn/s, "
      f"{int(sys.argv[4]) / 1e3 / max(d['established'], 1):.2f} us of gwd CPU per cycle, errors {d['errors']}, "
      f"connect errors {d['connect_errors']}")
EOF
grep -h 'first_frame_timeout\|session slots' "$OUT/gw.log" | head -3 || true
