#pragma once
// Ketama consistent hashing, bit-compatible with nginx `hash $key consistent`
// (ngx_http_upstream_hash_module.c) and lua-resty-balancer's chash:
//  - each host gets 160 points per unit of weight;
//  - the points of a host continue one CRC32 seeded with "HOST\0PORT" (the
//    host's address as nginx writes it, "127.0.0.1:8081"): point j is that CRC
//    continued over the 4 little-endian bytes of point j-1 (0 for j = 0);
//  - points are sorted, equal points keep one entry;
//  - a key goes to the first point >= crc32(key), wrapping round.
// Building is boundary work (on a table change); pick() is a binary search.

#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "gw/shm/table.hpp"

namespace gw::balance {

struct ChashPoint {
  uint32_t hash;
  uint32_t host;  ///< index into the table's hosts
};

class ChashRing {
 public:
  /// Builds the ring for `candidates` (indices into `hosts`). Weight-0 hosts get no points.
  void build(std::span<const shm::HostRecord> hosts, std::span<const uint32_t> candidates);
  bool empty() const noexcept { return points_.empty(); }
  size_t size() const noexcept { return points_.size(); }
  /// Index of the first point >= hash (wrapping to 0).
  size_t find(uint32_t hash) const noexcept;
  const ChashPoint& at(size_t i) const noexcept { return points_[i % points_.size()]; }

  /// Picks for `key`: the owner of the key's point, or, if it is not eligible,
  /// the owners of the following points (nginx tries 20, then falls back to
  /// round robin: returns -1 so the caller does).
  template <typename Eligible>
  int pick(std::string_view key, Eligible&& eligible, size_t max_tries = 20) const noexcept;

 private:
  std::vector<ChashPoint> points_;
  // first_[b] = index of the first point whose hash >= b << 16, b in 0..65536:
  // find() binary-searches only the points that share the key's top 16 bits.
  std::vector<uint32_t> first_;
};

/// The key nginx hashes for a server: its address text split at the last ':'.
uint32_t chash_base(std::string_view address) noexcept;

}  // namespace gw::balance

#include "gw/balance/hash.hpp"

namespace gw::balance {

template <typename Eligible>
int ChashRing::pick(std::string_view key, Eligible&& eligible, size_t max_tries) const noexcept {
  if (points_.empty()) return -1;
  size_t i = find(crc32(key));
  for (size_t tries = 0; tries < max_tries; ++tries, ++i) {
    uint32_t h = at(i).host;
    if (eligible(h)) return static_cast<int>(h);
  }
  return -1;
}

}  // namespace gw::balance
