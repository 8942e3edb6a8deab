#!/usr/bin/env bash
# Sets up, builds (Release), starts three demo backends and gwd with
# conf/gateway.json on loopback, walks through a few commands, and keeps the
# gateway running until Ctrl-C. Each run starts from conf/gateway.json: the runtime
# state an earlier demo left (state/gw.state.json and the shm segment /dev/shm/gw,
# which gwd would restore) is removed first, and the segment again on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
build=${BUILD_DIR:-build-release}

tools/setup.sh
echo "== building gw (Release) in $build"
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build" -j"$(nproc)" --target gwd gwctl gw-backend

for port in 7000 7080 8081 8082 8083; do
  if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then
    echo "demo.sh: 127.0.0.1:$port is already in use; stop whatever listens there (an earlier demo?) and retry" >&2
    exit 1
  fi
done

# conf/gateway.json's shm.name; flock: no gwd holds the segment's lock (README, Runtime state).
shm=/dev/shm/gw
if ! flock -n "$shm.lock" rm -f "$shm" state/gw.state.json; then
  echo "demo.sh: a gwd is running on shm \"gw\" (the shm.name of conf/gateway.json); stop it and retry" >&2
  exit 1
fi
rm -f "$shm.lock"

mkdir -p state logs
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ ${#pids[@]} -gt 0 ] && flock -n "$shm.lock" rm -f "$shm"; then rm -f "$shm.lock"; fi
}
trap cleanup EXIT
trap 'exit 0' INT TERM

"$build/gw-backend" --listen 127.0.0.1:8081 --name a --mode http 2>logs/backend-a.log &
pids+=($!)
"$build/gw-backend" --listen 127.0.0.1:8082 --name b --mode http 2>logs/backend-b.log &
pids+=($!)
"$build/gw-backend" --listen 127.0.0.1:8083 --name c --mode http 2>logs/backend-c.log &
pids+=($!)
"$build/gwd" -c conf/gateway.json 2>logs/gwd.log &
pids+=($!)
gwd_pid=$!

for _ in $(seq 100); do
  grep -q "ready:" logs/gwd.log 2>/dev/null && break
  if ! kill -0 "$gwd_pid" 2>/dev/null; then echo "gwd failed to start:" >&2; cat logs/gwd.log >&2; exit 1; fi
  sleep 0.05
done

gwctl="$build/gwctl -c conf/gateway.json"
run() { echo; echo "\$ $*"; "$@" || true; }
echo
echo "== gw is running: listener l4 (tcp) on 127.0.0.1:7000 and web (http) on 127.0.0.1:7080"
echo "   -> upstream app (hosts a=127.0.0.1:8081, b=127.0.0.1:8082); upstream pre (host c=127.0.0.1:8083)"
echo "   logs in $root/logs/, runtime state in $root/state/gw.state.json"
run sh -c 'for i in 1 2 3 4; do curl -s http://127.0.0.1:7000/; done'
run $gwctl status
run $gwctl down host app/primary a
run sh -c 'for i in 1 2 3 4; do curl -s http://127.0.0.1:7000/; done'
run $gwctl up host app/primary a
echo; echo "== gray release on the http listener: requests with X-Canary: 1 go to upstream pre"
run $gwctl add rule web default canary --header X-Canary=1 --upstream pre
run sh -c 'curl -s http://127.0.0.1:7080/; curl -s -H "X-Canary: 1" http://127.0.0.1:7080/'
run $gwctl remove rule web default canary
run $gwctl events
cat <<MSG

== try it yourself (in another terminal, from $root):
   curl http://127.0.0.1:7000/
   $gwctl status
   $gwctl down host app/primary a     # every request now goes to b
   $gwctl up host app/primary a
   $gwctl add host app/primary c 127.0.0.1:8083 --weight 2
   curl http://127.0.0.1:7080/        # the HTTP listener
   $gwctl add rule web default beta --ip 127.0.0.1 --upstream pre   # your address to pre
   $gwctl events --follow
gwd keeps running; press Ctrl-C to stop it and the backends.
MSG
wait "$gwd_pid"
