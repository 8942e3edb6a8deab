#include "gw/balance/snapshot.hpp"

#include <algorithm>

namespace gw::balance {

void Snapshot::build(const shm::Table& t) {
  table_ = &t;
  upstreams_.clear();
  pools_.clear();
  hosts_.clear();
  auto ups = t.upstreams();
  auto pools = t.pools();
  auto hosts = t.hosts();
  // Bucket hosts by pool, keeping table order inside a pool.
  std::vector<std::vector<uint32_t>> by_pool(pools.size());
  for (uint32_t h = 0; h < hosts.size(); ++h) by_pool[hosts[h].pool].push_back(h);
  for (uint32_t u = 0; u < ups.size(); ++u) {
    UpstreamView uv{};
    uv.first_pool = static_cast<uint32_t>(pools_.size());
    uv.health = {ups[u].max_fails, ups[u].fail_timeout_ms, ups[u].check.type != shm::kCheckNone,
                 ups[u].check.unknown_usable != 0};
    uv.connect_timeout_ms = ups[u].connect_timeout_ms;
    uv.idle_timeout_ms = ups[u].idle_timeout_ms;
    uv.tries = ups[u].tries;
    uv.slow_start_ms = ups[u].slow_start_ms;
    uv.balance_factor = ups[u].balance_factor;
    for (uint32_t p = 0; p < pools.size(); ++p) {
      if (pools[p].upstream != u) continue;
      PoolView pv{p, static_cast<uint32_t>(hosts_.size()), static_cast<uint32_t>(by_pool[p].size()), pools[p].priority,
                  static_cast<shm::Method>(pools[p].method)};
      hosts_.insert(hosts_.end(), by_pool[p].begin(), by_pool[p].end());
      pools_.push_back(pv);
    }
    uv.n_pools = static_cast<uint32_t>(pools_.size()) - uv.first_pool;
    std::stable_sort(pools_.begin() + uv.first_pool, pools_.end(),
                     [](const PoolView& a, const PoolView& b) { return a.priority < b.priority; });
    upstreams_.push_back(uv);
  }
}

}  // namespace gw::balance
