// Micro-benchmarks of Balancer::pick() for every method at 10, 100 and 1,000
// hosts, and of the per-table rebuild (chash ring, maglev table) at 1,000
// hosts. Run: build-release/gw-balance-bench (Google Benchmark flags apply).

#include <benchmark/benchmark.h>

#include <string>
#include <vector>

#include "gw/balance/balancer.hpp"

using namespace gw;

namespace {

struct Fixture {
  shm::Table t;
  balance::Snapshot snap;
  balance::Balancer b;
  std::vector<std::string> keys;
  // Weights cycle 1, 2, 3 unless `unit` (all 1: the "1,000 hosts x 160 points" case).
  Fixture(shm::Method m, uint32_t n, bool unit = false) : t({1, 1, n}), b(n, 7) {
    shm::UpstreamRecord r{};
    shm::set_name(r.name, "app");
    t.add_upstream(r);
    t.add_pool(0, "p", 0, m);
    for (uint32_t i = 0; i < n; ++i) {
      core::SockAddr a;
      a.family = AF_INET;
      a.ip[0] = 10;
      a.ip[2] = static_cast<uint8_t>(i >> 8);
      a.ip[3] = static_cast<uint8_t>(i);
      a.port = 8080;
      int h = t.add_host(0, "h" + std::to_string(i), a, unit ? 1 : 1 + i % 3);
      t.hosts()[static_cast<size_t>(h)].slot = i;
      t.hosts()[static_cast<size_t>(h)].tag = i + 1;
    }
    snap.build(t);
    b.rebuild(snap);
    for (int i = 0; i < 1024; ++i) keys.push_back("10.1." + std::to_string(i / 256) + "." + std::to_string(i % 256));
  }
};

void BM_pick(benchmark::State& state, shm::Method m) {
  Fixture f(m, static_cast<uint32_t>(state.range(0)));
  const auto& u = f.snap.upstreams()[0];
  std::vector<uint64_t> load(static_cast<size_t>(state.range(0)));
  for (size_t i = 0; i < load.size(); ++i) load[i] = (i * 7919) % 13;
  size_t k = 0;
  for (auto _ : state) {
    int h = f.b.pick(
        f.snap, u, f.keys[k++ & 1023], [](uint32_t) noexcept { return true; },
        [&](uint32_t i) noexcept { return load[i]; });
    benchmark::DoNotOptimize(h);
  }
}

void BM_rebuild(benchmark::State& state, shm::Method m) {
  Fixture f(m, static_cast<uint32_t>(state.range(0)), true);
  for (auto _ : state) f.b.rebuild(f.snap);
}

#define GW_PICK(name, method) BENCHMARK_CAPTURE(BM_pick, name, shm::Method::method)->Arg(10)->Arg(100)->Arg(1000)
GW_PICK(round_robin, round_robin);
GW_PICK(chash, chash);
GW_PICK(hash, hash);
GW_PICK(crc32_mod, crc32_mod);
GW_PICK(maglev, maglev);
GW_PICK(least_conn, least_conn);
GW_PICK(least_request, least_request);
GW_PICK(random, random);
BENCHMARK_CAPTURE(BM_rebuild, chash, shm::Method::chash)->Arg(1000)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_rebuild, maglev, shm::Method::maglev)->Arg(1000)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
