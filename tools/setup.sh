#!/usr/bin/env bash
# Installs, with apt-get, whatever gw needs to build, test and benchmark that is
# not already on the machine. Idempotent; prints nothing when nothing is missing.
set -euo pipefail

pkgs=(
  # build
  build-essential cmake pkg-config
  liburing-dev libfmt-dev libcli11-dev libsimdjson-dev doctest-dev zlib1g-dev libbenchmark-dev
  # the API-gateway guard: limit keys (XXH3), basic-auth (crypt_rn), jwt RS256 and key hashes
  # (OpenSSL), jwt HS256 (nettle)
  libxxhash-dev libcrypt-dev libssl-dev nettle-dev
  # tests and benches
  curl procps iproute2 openssl nginx libnginx-mod-stream haproxy wrk python3-websockets
  # bench/compare.sh: the OpenResty-style l7 contender (balancer_by_lua + lua_shared_dict on
  # Debian's nginx; pulls libnginx-mod-http-ndk and libluajit2) and its PNG charts
  libnginx-mod-http-lua lua-resty-core gnuplot-nox
  # the cluster test starts its own 3-member etcd (etcd-client: etcdctl, for operators)
  etcd-server etcd-client
  # the admin test: promtool (checks GET /metrics) and headless Chromium (the dashboard)
  prometheus chromium
  # test_slow_clients: slowloris and slow-read clients
  slowhttptest
  # the format test (tools/format.sh --check against .clang-format)
  clang-format
  # test_blackhole: nft drops a backend's packets inside the test's own network
  # namespace (unshare, from util-linux, is always installed)
  nftables
  # test_persistence: strace sees the fsyncs of the state file's new directories, and gdb
  # holds a gwctl inside its commit
  strace gdb
  # bench/churn_probe.sh: its stat and perf probes
  linux-perf
  # test_vip: keepalived moves a VIP between two gw nodes in the test's own namespaces
  keepalived
)

missing=()
for p in "${pkgs[@]}"; do
  # dpkg-query prints "install ok installed" only for a fully installed package.
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "setup.sh: missing packages: ${missing[*]}; run as root (or install them) first" >&2
  exit 1
fi
echo "setup.sh: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian enables and starts nginx, haproxy, etcd, prometheus and keepalived on
# install; gw's tests start their own instances on free ports and must not find
# the default ones holding :80, :2379 or :9090 (only promtool is used from
# prometheus), or a keepalived sending VRRP on the machine's interfaces.
for svc in nginx haproxy etcd prometheus keepalived; do
  if command -v systemctl >/dev/null 2>&1; then systemctl disable --now "$svc" >/dev/null 2>&1 || true; fi
  if [ -x /etc/init.d/$svc ]; then /etc/init.d/$svc stop >/dev/null 2>&1 || true; fi
done
echo "setup.sh: done"
