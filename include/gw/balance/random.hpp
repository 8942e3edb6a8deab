#pragma once
// Weighted random: a host's chance is its weight over the eligible total.

#include <cstdint>
#include <span>

#include "gw/balance/hash.hpp"
#include "gw/shm/table.hpp"

namespace gw::balance {

template <typename Eligible>
int weighted_random_pick(std::span<const shm::HostRecord> hosts, std::span<const uint32_t> candidates,
                         Eligible&& eligible, Rng& rng) noexcept {
  uint64_t total = 0;
  for (uint32_t i : candidates)
    if (hosts[i].weight && eligible(i)) total += hosts[i].weight;
  if (total == 0) return -1;
  uint64_t r = rng.below(total);
  int last = -1;
  for (uint32_t i : candidates) {
    if (!hosts[i].weight || !eligible(i)) continue;
    last = static_cast<int>(i);
    if (r < hosts[i].weight) return last;
    r -= hosts[i].weight;
  }
  return last;  // eligibility changed between the passes
}

}  // namespace gw::balance
