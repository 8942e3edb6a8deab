#pragma once
// Maglev consistent hashing (Eisenbud et al., NSDI 2016), weighted the way
// Envoy builds it: every host walks its own permutation of a prime-sized table
// (offset = h1(host) % M, skip = h2(host) % (M - 1) + 1) and claims the next
// free entry in turn; a host of weight w takes a turn in w of every max_weight
// rounds. Entries per host are then proportional to weight, within one entry,
// and a host change moves few keys. M = 65537 by default.

#include <cmath>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "gw/balance/hash.hpp"
#include "gw/shm/table.hpp"

namespace gw::balance {

class MaglevTable {
 public:
  static constexpr uint32_t kDefaultSize = 65537;

  /// Builds the table for `candidates` (indices into `hosts`); size must be prime.
  void build(std::span<const shm::HostRecord> hosts, std::span<const uint32_t> candidates,
             uint32_t size = kDefaultSize);
  bool empty() const noexcept { return table_.empty(); }
  uint32_t size() const noexcept { return static_cast<uint32_t>(table_.size()); }
  /// The host owning table entry `e` (index into the table's hosts).
  uint32_t owner(uint32_t e) const noexcept { return hosts_[table_[e]]; }

  /// The key's entry owner; if ineligible, the owners of the next entries
  /// (up to 32); if none of them is eligible (most of the table's entries
  /// belong to hosts that are out: a heavy host down), the key's host among
  /// the eligible ones by weighted rendezvous hashing (one pass over the
  /// table's hosts), so the key still stays on one host, in every worker;
  /// -1 when no host is eligible.
  template <typename Eligible>
  int pick(std::string_view key, Eligible&& eligible) const noexcept {
    return pick(HashKey::of(key), eligible);
  }
  template <typename Eligible>
  int pick(HashKey key, Eligible&& eligible) const noexcept {
    if (table_.empty()) return -1;
    uint32_t e = key.crc % size();
    for (int k = 0; k < 32; ++k, e = (e + 1) % size()) {
      uint32_t h = owner(e);
      if (eligible(h)) return static_cast<int>(h);
    }
    // Weighted rendezvous: the smallest -ln(u) / weight wins, u uniform in
    // (0, 1) from the key and the host's address hash (stable across workers
    // and restarts). A host's chance is its weight's share of the eligible.
    const uint64_t k64 = mix64(uint64_t{key.crc} << 32 | key.len);
    int best = -1;
    double best_score = 0;
    for (size_t j = 0; j < hosts_.size(); ++j) {
      const uint32_t h = hosts_[j];
      if (!eligible(h)) continue;
      const uint64_t x = mix64(k64 ^ ids_[j]);
      const double u = (static_cast<double>(x >> 11) + 0.5) * 0x1p-53;
      const double score = -std::log(u) / weights_[j];
      if (best < 0 || score < best_score) {
        best = static_cast<int>(h);
        best_score = score;
      }
    }
    return best;
  }

 private:
  std::vector<uint32_t> hosts_;    // local index → table host index
  std::vector<uint64_t> ids_;      // local index → the host's address hash (rendezvous)
  std::vector<uint32_t> weights_;  // local index → weight (> 0)
  std::vector<uint16_t> table_;    // entry → local index
};

}  // namespace gw::balance
