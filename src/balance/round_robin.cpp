#include "gw/balance/round_robin.hpp"

#include <numeric>

namespace gw::balance {

std::vector<uint32_t> RoundRobin::build_schedule(std::span<const shm::HostRecord> hosts,
                                                 std::span<const uint32_t> candidates, size_t max_len,
                                                 size_t max_work) {
  std::vector<uint32_t> ids;
  uint64_t g = 0, total = 0;
  for (uint32_t i : candidates)
    if (hosts[i].weight) {
      ids.push_back(i);
      g = std::gcd(g, uint64_t{hosts[i].weight});
    }
  if (ids.empty()) return {};
  for (uint32_t i : ids) total += hosts[i].weight / g;
  if (total > max_len || total * ids.size() > max_work) return {};
  // nginx's smooth WRR, run for one cycle with every host eligible.
  std::vector<int64_t> current(ids.size(), 0);
  std::vector<uint32_t> out;
  out.reserve(total);
  for (uint64_t step = 0; step < total; ++step) {
    size_t best = 0;
    for (size_t k = 0; k < ids.size(); ++k) {
      current[k] += hosts[ids[k]].weight / g;
      if (current[k] > current[best]) best = k;
    }
    current[best] -= static_cast<int64_t>(total);
    out.push_back(ids[best]);
  }
  return out;
}

}  // namespace gw::balance
