#pragma once
// Maglev consistent hashing (Eisenbud et al., NSDI 2016), weighted the way
// Envoy builds it: every host walks its own permutation of a prime-sized table
// (offset = h1(host) % M, skip = h2(host) % (M - 1) + 1) and claims the next
// free entry in turn; a host of weight w takes a turn in w of every max_weight
// rounds. Entries per host are then proportional to weight, within one entry,
// and a host change moves few keys. M = 65537 by default.

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
  /// (up to 32), else -1 and the caller falls back.
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
    return -1;
  }

 private:
  std::vector<uint32_t> hosts_;  // local index → table host index
  std::vector<uint16_t> table_;  // entry → local index
};

}  // namespace gw::balance
