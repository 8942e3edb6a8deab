#!/usr/bin/env bash
# Measures how fast a table change reaches every worker: starts two backends
# and gwd (W workers) on free loopback ports, runs gw-propagation against it,
# prints the result and appends a dated row to bench/RESULTS.md.
#
#   bench/propagation.sh [--rounds N] [--workers W]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=200
workers=$(nproc)
usage() { echo "usage: bench/propagation.sh [--rounds N] [--workers W]" >&2; exit 2; }
while [ $# -gt 0 ]; do
  [ $# -ge 2 ] || usage
  [[ $2 =~ ^[1-9][0-9]*$ ]] || { echo "bench/propagation.sh: $1 needs a positive integer, got '$2'" >&2; exit 2; }
  case "$1" in
    --rounds) rounds=$2 ;;
    --workers) workers=$2 ;;
    *) usage ;;
  esac
  shift 2
done
build=${GW_BUILD_DIR:-build-release}
if [ ! -x "$build/gwd" ] || [ ! -x "$build/gw-propagation" ]; then
  echo "== building gw (Release) in $build"
  cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build "$build" -j"$(nproc)" --target gwd gw-backend gw-propagation
fi

tmp=$(mktemp -d /tmp/gwprop.XXXXXX)
shm="gwprop-$$"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
  rm -f "/dev/shm/$shm" "/dev/shm/$shm.lock"
}
trap cleanup EXIT

read -r p_gw p_a p_b < <(/usr/bin/python3 -c '
import socket
ss=[socket.socket() for _ in range(3)]
for s in ss: s.bind(("127.0.0.1",0))
print(*[s.getsockname()[1] for s in ss])')

"$build/gw-backend" --listen "127.0.0.1:$p_a" --name a --mode http 2>"$tmp/a.log" & pids+=($!)
"$build/gw-backend" --listen "127.0.0.1:$p_b" --name b --mode http 2>"$tmp/b.log" & pids+=($!)
cat >"$tmp/gw.json" <<JSON
{"workers": $workers, "log_level": "info", "shm": {"name": "$shm", "max_upstreams": 4, "max_pools": 8, "max_hosts": 64},
 "state_file": "$tmp/state.json",
 "listeners": [{"name": "l4", "listen": "127.0.0.1:$p_gw", "protocol": "tcp", "upstream": "app"}],
 "upstreams": [{"name": "app", "pools": [{"id": "primary", "hosts": [
   {"id": "a", "address": "127.0.0.1:$p_a"}, {"id": "b", "address": "127.0.0.1:$p_b"}]}]}]}
JSON
"$build/gwd" -c "$tmp/gw.json" 2>"$tmp/gwd.log" & pids+=($!)
for _ in $(seq 100); do
  grep -q "ready:" "$tmp/gwd.log" 2>/dev/null && break
  sleep 0.05
done
grep -q "ready:" "$tmp/gwd.log" || { echo "gwd did not start:"; cat "$tmp/gwd.log"; exit 1; }

echo "== propagation: $rounds rounds, $workers workers"
out=$("$build/gw-propagation" --shm "$shm" --connect "127.0.0.1:$p_gw" --rounds "$rounds" --json)
echo "$out"
median=$(echo "$out" | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["median_us"])')
p99=$(echo "$out" | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["p99_us"])')
target=$(/usr/bin/python3 -c "print('met' if $median < 1000 else 'NOT met')")
echo "median ${median} us, p99 ${p99} us (target: median under 1 ms: $target)"
results=bench/RESULTS.md
[ -f "$results" ] || echo "# Benchmark results" >"$results"
{
  echo
  echo "## propagation $(date -u +%Y-%m-%dT%H:%MZ) ($(uname -r), $(nproc) cores)"
  echo
  echo "\`bench/propagation.sh --rounds $rounds --workers $workers\`: commit start → first connection each worker routes"
  echo "with the new table, over $rounds rounds × $workers workers: median **${median} µs**, p99 ${p99} µs (target < 1 ms median: $target)."
} >>"$results"
