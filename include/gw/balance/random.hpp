#pragma once
// Weighted random: a host's chance is its weight over the eligible total.
// AliasTable draws by weight in O(1), for the methods that sample (least_request).

#include <cstdint>
#include <span>
#include <vector>

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

/// Draws a position in a pool's candidates with chance weight / total weight
/// (Walker's alias method, built as Vose does, in integers: exact). Weight-0
/// hosts are never drawn. build() is boundary work (a table change) and
/// allocates; draw() is two random numbers and two loads.
class AliasTable {
 public:
  void build(std::span<const shm::HostRecord> hosts, std::span<const uint32_t> candidates);
  /// True if no candidate has a weight: draw() must not be called.
  bool empty() const noexcept { return total_ == 0; }
  size_t draw(Rng& rng) const noexcept {
    const size_t k = rng.below(cut_.size());
    return rng.below(total_) < cut_[k] ? k : alias_[k];
  }

 private:
  uint64_t total_ = 0;           ///< sum of the weights: every position's bucket holds this much
  std::vector<uint32_t> cut_;    ///< position k is drawn for a bucket value below cut_[k]...
  std::vector<uint32_t> alias_;  ///< ...else position alias_[k]
};

inline void AliasTable::build(std::span<const shm::HostRecord> hosts, std::span<const uint32_t> candidates) {
  const size_t n = candidates.size();
  total_ = 0;
  for (uint32_t i : candidates) total_ += hosts[i].weight;
  cut_.assign(n, 0);
  alias_.assign(n, 0);
  if (total_ == 0) return;
  // Bucket k starts with weight(k) x n; one that holds less than total is
  // topped up from one that holds more (which then becomes its alias).
  std::vector<uint64_t> mass(n);
  std::vector<uint32_t> small, large;
  for (size_t k = 0; k < n; ++k) {
    mass[k] = uint64_t{hosts[candidates[k]].weight} * n;
    (mass[k] < total_ ? small : large).push_back(static_cast<uint32_t>(k));
  }
  while (!small.empty() && !large.empty()) {
    const uint32_t s = small.back(), l = large.back();
    small.pop_back();
    cut_[s] = static_cast<uint32_t>(mass[s]);
    alias_[s] = l;
    mass[l] -= total_ - mass[s];
    if (mass[l] < total_) {
      large.pop_back();
      small.push_back(l);
    }
  }
  // Full buckets (the sums are exact: what is left holds exactly total each).
  for (uint32_t k : large) cut_[k] = static_cast<uint32_t>(total_), alias_[k] = k;
  for (uint32_t k : small) cut_[k] = static_cast<uint32_t>(total_), alias_[k] = k;
}

}  // namespace gw::balance
