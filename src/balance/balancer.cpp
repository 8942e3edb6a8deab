#include "gw/balance/balancer.hpp"

namespace gw::balance {

void Balancer::rebuild(const Snapshot& s) {
  auto all = s.all_pools();
  pools_.resize(all.size());
  auto hosts = s.table().hosts();
  for (size_t i = 0; i < all.size(); ++i) {
    const PoolView& p = all[i];
    PoolState& st = pools_[i];
    if (p.method == shm::Method::chash) st.ring.build(hosts, s.hosts(p));
    else st.ring = ChashRing{};
    if (p.method == shm::Method::maglev) st.maglev.build(hosts, s.hosts(p));
    else st.maglev = MaglevTable{};
    if (p.method == shm::Method::round_robin) st.schedule = RoundRobin::build_schedule(hosts, s.hosts(p));
    else st.schedule.clear();
  }
}

}  // namespace gw::balance
