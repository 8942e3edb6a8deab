#pragma once
// Host selection for an upstream: the lowest-priority-number pool that has an
// eligible host wins; inside it the pool's method picks. "Eligible" is the
// caller's predicate (admin state, passive health, hosts already tried for
// this connection), so the balancer stays a pure function over a snapshot.

#include <cstdint>

#include "gw/balance/round_robin.hpp"
#include "gw/balance/snapshot.hpp"

namespace gw::balance {

class Balancer {
 public:
  explicit Balancer(uint32_t max_hosts) : rr_(max_hosts) {}

  /// Returns a host index into the snapshot's table, or -1 if no pool of the
  /// upstream has an eligible host. Hot path: no allocation.
  template <typename Eligible>
  int pick(const Snapshot& s, const UpstreamView& u, Eligible&& eligible) noexcept {
    auto hosts = s.table().hosts();
    for (const PoolView& p : s.pools(u)) {
      int h = -1;
      switch (p.method) {
        case shm::Method::round_robin: h = rr_.pick(hosts, s.hosts(p), eligible); break;
      }
      if (h >= 0) return h;
    }
    return -1;
  }

  void on_failure(uint32_t slot, uint32_t tag, uint32_t weight, uint32_t max_fails) noexcept {
    rr_.on_failure(slot, tag, weight, max_fails);
  }

 private:
  RoundRobin rr_;
};

}  // namespace gw::balance
