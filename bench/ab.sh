#!/usr/bin/env bash
# A/B of two gwd binaries on one workload, for a change that claims speed:
# both gateways run at once on free loopback ports against the same two
# gw-backend servers, and wrk runs through each in turn, the first one
# swapped every round. Prints every round, and the medians of req/s and of
# gwd's CPU time per request (master and workers), with B/A, and the failed
# requests of each (exit 1 if any: wrk counts them in req/s).
#
#   bench/ab.sh GWD_A GWD_B [--engine epoll|io_uring] [--protocol tcp|http]
#               [--conns 50,1000] [--rounds 6] [--duration 8] [--workers W]
#
# Only loopback is used; everything started here is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
usage() {
  echo "usage: bench/ab.sh GWD_A GWD_B [--engine E] [--protocol P] [--conns N,N] [--rounds R] [--duration S] [--workers W]" >&2
  exit 2
}
[ $# -ge 2 ] || usage
gwd_a=$1 gwd_b=$2
shift 2
engine=io_uring protocol=tcp conns=50,1000 rounds=6 secs=8 workers=$(nproc)
while [ $# -gt 0 ]; do
  [ $# -ge 2 ] || usage
  case "$1" in
    --engine) engine=$2 ;;
    --protocol) protocol=$2 ;;
    --conns) conns=$2 ;;
    --rounds) rounds=$2 ;;
    --duration) secs=$2 ;;
    --workers) workers=$2 ;;
    *) usage ;;
  esac
  shift 2
done
case "$engine" in epoll|io_uring) ;; *) echo "bench/ab.sh: --engine must be epoll or io_uring, got '$engine'" >&2; exit 2 ;; esac
case "$protocol" in tcp|http) ;; *) echo "bench/ab.sh: --protocol must be tcp or http, got '$protocol'" >&2; exit 2 ;; esac
[[ $conns =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]] || { echo "bench/ab.sh: --conns needs a comma list of positive integers, got '$conns'" >&2; exit 2; }
for v in "$rounds" "$secs" "$workers"; do
  [[ $v =~ ^[1-9][0-9]*$ ]] || { echo "bench/ab.sh: --rounds, --duration and --workers need a positive integer, got '$v'" >&2; exit 2; }
done
for g in "$gwd_a" "$gwd_b"; do [ -x "$g" ] || { echo "bench/ab.sh: $g is not an executable" >&2; exit 1; }; done
command -v wrk >/dev/null || { echo "bench/ab.sh: wrk not found (tools/setup.sh installs it)" >&2; exit 1; }
backend=${GW_BACKEND:-build-release/gw-backend}
[ -x "$backend" ] || { echo "bench/ab.sh: $backend not found (build gw-backend, or set GW_BACKEND)" >&2; exit 1; }

tmp=$(mktemp -d /tmp/gwab.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
  rm -f "/dev/shm/gwab-$$-A" "/dev/shm/gwab-$$-B" "/dev/shm/gwab-$$-A.lock" "/dev/shm/gwab-$$-B.lock"
}
trap cleanup EXIT

free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 100); do
    if /usr/bin/python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$1),1)" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "bench/ab.sh: nothing listens on 127.0.0.1:$1 (logs in $tmp)" >&2
  exit 1
}

b1=$(free_port) b2=$(free_port)
"$backend" --listen "127.0.0.1:$b1" --name b1 --mode http --threads 1 >"$tmp/b1.log" 2>&1 & pids+=($!)
"$backend" --listen "127.0.0.1:$b2" --name b2 --mode http --threads 1 >"$tmp/b2.log" 2>&1 & pids+=($!)
wait_port "$b1"
wait_port "$b2"
declare -A port gpid
for x in A B; do
  port[$x]=$(free_port)
  listener="\"protocol\": \"$protocol\""
  [ "$protocol" = http ] && listener+=', "http": {"keepalive_requests": 100000}'
  cat >"$tmp/$x.json" <<EOF
{"workers": $workers, "event_engine": "$engine", "log_level": "warn",
 "shm": {"name": "gwab-$$-$x", "max_upstreams": 8, "max_pools": 8, "max_hosts": 64},
 "state_file": "$tmp/$x.state.json",
 "listeners": [{"name": "bench", "listen": "127.0.0.1:${port[$x]}", $listener, "upstream": "app", "backlog": 4096}],
 "upstreams": [{"name": "app", "pools": [{"id": "p", "hosts": [
   {"id": "b1", "address": "127.0.0.1:$b1"}, {"id": "b2", "address": "127.0.0.1:$b2"}]}]}]}
EOF
  g=$gwd_a
  [ $x = B ] && g=$gwd_b
  "$g" -c "$tmp/$x.json" >"$tmp/$x.log" 2>&1 & pids+=($!)
  gpid[$x]=$!
  wait_port "${port[$x]}"
done
# cpu_ns PID: CPU time of gwd and its workers so far (schedstat, nanoseconds). req/s
# moves 20% between rounds on a shared machine; CPU per request moves far less.
cpu_ns() {
  local total=0 p t v
  for p in "$1" $(pgrep -P "$1"); do
    for t in /proc/"$p"/task/*/schedstat; do
      read -r v _ <"$t" 2>/dev/null || continue
      total=$((total + v))
    done
  done
  echo "$total"
}
echo "A = $gwd_a"
echo "B = $gwd_b"
echo "$engine, $protocol listener, $workers workers, $rounds rounds x ${secs}s per connection count"

median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
IFS=, read -ra counts <<<"$conns"
for c in "${counts[@]}"; do
  for r in $(seq "$rounds"); do
    order="A B"
    [ $((r % 2)) = 0 ] && order="B A"
    for x in $order; do
      c0=$(cpu_ns "${gpid[$x]}")
      # wrk wants at least one connection per thread.
      if ! wrk -t"$((c < 2 ? c : 2))" -c"$c" -d"${secs}s" "http://127.0.0.1:${port[$x]}/" >"$tmp/wrk.out" 2>&1; then
        echo "bench/ab.sh: wrk through $x failed:" >&2
        cat "$tmp/wrk.out" >&2
        exit 1
      fi
      c1=$(cpu_ns "${gpid[$x]}")
      rps=$(awk '/Requests\/sec/ {print $2}' "$tmp/wrk.out")
      n=$(awk '/requests in/ {print $1}' "$tmp/wrk.out")
      [ -n "$rps" ] && [ -n "$n" ] || { echo "bench/ab.sh: wrk through $x gave no result" >&2; exit 1; }
      # No request answered: there is no CPU per request to give, and the
      # ratios would divide by zero. Say so rather than print a figure.
      [ "$n" != 0 ] || { echo "bench/ab.sh: wrk through $x completed no request in ${secs}s (is $x answering?)" >&2; cat "$tmp/wrk.out" >&2; exit 1; }
      # Failed requests (socket errors, non-2xx/3xx replies) are in wrk's req/s too.
      errs=$(awk '/^ *Socket errors:/ {gsub(/,/, ""); e += $4 + $6 + $8 + $10}
                  /Non-2xx or 3xx/ {e += $NF} END {print e + 0}' "$tmp/wrk.out")
      us=$(awk -v d=$((c1 - c0)) -v n="$n" 'BEGIN {printf "%.3f", d / n / 1000}')
      echo "$c $x $rps $us $errs" >>"$tmp/res"
      printf 'connections %-5s round %d/%d  %s %12s req/s %8s us cpu/req%s\n' "$c" "$r" "$rounds" "$x" "$rps" "$us" \
        "$([ "$errs" = 0 ] || echo "  ($errs errors)")"
    done
  done
done
echo "| connections | A req/s | B req/s | B / A | B more req/s | A cpu us/req | B cpu us/req | B / A | B less cpu | A errors | B errors |"
echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for c in "${counts[@]}"; do
  col() { awk -v c="$c" -v x="$1" -v k="$2" '$1 == c && $2 == x {print $k}' "$tmp/res" | median; }
  # Rounds in which B beat A (each round runs both): col 3 higher, col 4 lower.
  won() {
    awk -v c="$c" -v k="$1" -v dir="$2" '$1 == c {v[$2, ++n[$2]] = $k}
      END {w = 0; for (i = 1; i <= n["A"]; i++) if ((v["B", i] - v["A", i]) * dir > 0) w++; print w "/" n["A"]}' "$tmp/res"
  }
  errors() { awk -v c="$c" -v x="$1" '$1 == c && $2 == x {e += $5} END {print e + 0}' "$tmp/res"; }
  awk -v c="$c" -v ra="$(col A 3)" -v rb="$(col B 3)" -v ca="$(col A 4)" -v cb="$(col B 4)" \
      -v wr="$(won 3 1)" -v wc="$(won 4 -1)" -v ea="$(errors A)" -v eb="$(errors B)" \
      'BEGIN {printf "| %s | %.0f | %.0f | %.3f | %s | %.3f | %.3f | %.3f | %s | %d | %d |\n", c, ra, rb, rb / ra, wr, ca, cb, cb / ca, wc, ea, eb}'
done
echo "(medians over rounds; cpu = gwd master and workers, from /proc/PID/task/*/schedstat; errors summed over rounds)"
failed=$(awk '{e += $5} END {print e + 0}' "$tmp/res")
if [ "$failed" != 0 ]; then
  echo "bench/ab.sh: $failed requests failed (socket errors or non-2xx/3xx replies); wrk counts them in req/s, so the comparison is not valid" >&2
  exit 1
fi
