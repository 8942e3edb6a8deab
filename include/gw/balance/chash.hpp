#pragma once
// Ketama consistent hashing, bit-compatible with nginx `hash $key consistent`
// (ngx_http_upstream_hash_module.c) and lua-resty-balancer's chash:
//  - each host gets 160 points per unit of weight;
//  - the points of a host continue one CRC32 seeded with "HOST\0PORT" (the
//    host's address as nginx writes it, "127.0.0.1:8081"): point j is that CRC
//    continued over the 4 little-endian bytes of point j-1 (0 for j = 0);
//  - points are sorted, equal points keep one entry: the one generated first
//    (hosts in candidate order, then j), as nginx's qsort (glibc's merge
//    sort, stable) followed by its dedup loop keeps it;
//  - a key goes to the first point >= crc32(key), wrapping round.
// A ring is bounded to kChashMaxPoints: a pool whose weights would give more
// points (nginx builds hosts x weight x 160) gets fewer, in proportion to the
// weights (see ChashRing::points_for); under the bound it is nginx's ring.
// Building is boundary work (on a table change); pick() hashes the key with
// an inline slicing-by-8 CRC32, reads one prefix-index entry and compares 8
// consecutive point hashes: no allocation, no lock, no division.

#include <algorithm>
#include <bit>
#include <climits>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "gw/balance/hash.hpp"
#include "gw/core/address.hpp"
#include "gw/shm/table.hpp"

namespace gw::balance {

/// The most points a ring is built with (before dedup), but for the few
/// each host keeps (points_for). 2^20 points take about 16 MB while the
/// worker builds them and 8 MB after, and under 10 ms of the worker's thread;
/// nginx's 160 per unit of weight fit up to a total weight of 6,553 (such as
/// 1,000 hosts of weight 6). Unbounded, 4,096 hosts of weight 1,000 would be
/// 655M points: gigabytes and seconds per worker, on every weight change.
inline constexpr size_t kChashMaxPoints = size_t{1} << 20;
/// What a host keeps at least when a ring is scaled down, so that a light host
/// still gets a share of keys near its weight's: up to this many, fewer only
/// when the pool has so many hosts that the bound would not hold otherwise.
inline constexpr uint32_t kChashMinPoints = 8;
/// The largest total weight of a pool whose ring is nginx's (160 points per
/// unit of weight within kChashMaxPoints).
inline constexpr uint64_t kChashNginxWeight = kChashMaxPoints / 160;

/// For a chash pool of `total_weight`: empty up to kChashNginxWeight, else
/// the warning gwd -t, gwctl and the admin API give (the ring is scaled down,
/// so keys no longer map as nginx's), without the pool's name.
std::string chash_bound_warning(uint64_t total_weight);

struct ChashPoint {
  uint32_t hash;
  uint32_t host;  ///< index into the table's hosts
};

class ChashRing {
 public:
  /// Builds the ring for `candidates` (indices into `hosts`). Weight-0 hosts
  /// get no points. Rebuilding a ring of the same size reuses its arrays (and
  /// the thread's sort buffers): no allocation after the first build.
  void build(std::span<const shm::HostRecord> hosts, std::span<const uint32_t> candidates);
  /// The points a host of `weight` gets in a ring whose hosts' weights sum
  /// to `total_weight` over `weighted_hosts` hosts of weight > 0: nginx's
  /// weight x 160 while total_weight x 160 <= kChashMaxPoints; otherwise
  /// that scaled down by kChashMaxPoints / (total_weight x 160), rounded
  /// down, and at least min(kChashMinPoints, kChashMaxPoints / (2 x
  /// weighted_hosts)), at least 1. The ring then has at most 1.5 x
  /// kChashMaxPoints points (kChashMaxPoints + weighted_hosts past 2^19 hosts).
  static uint32_t points_for(uint32_t weight, uint64_t total_weight, size_t weighted_hosts) noexcept;
  bool empty() const noexcept { return n_ == 0; }
  size_t size() const noexcept { return n_; }
  /// Index of the first point >= hash, size() if there is none (the ring
  /// then wraps to point 0, as at() does). The ring must not be empty.
  size_t find(uint32_t hash) const noexcept;
  /// Point i (modulo size()). The ring must not be empty.
  const ChashPoint& at(size_t i) const noexcept { return points_[i % n_]; }

  /// Picks for `key`: the owner of the key's point, or, if it is not eligible,
  /// the owners of the following points: 21 points in all, as nginx
  /// (ngx_http_upstream_get_chash_peer gives up once its tries count, raised
  /// after each unusable point, passes 20), then round robin: returns -1 so the
  /// caller does.
  template <typename Eligible>
  int pick(HashKey key, Eligible&& eligible, size_t max_tries = 21) const noexcept;
  template <typename Eligible>
  int pick(std::string_view key, Eligible&& eligible, size_t max_tries = 21) const noexcept {
    return pick(HashKey::of(key), eligible, max_tries);
  }

 private:
  /// find() compares kWindow point hashes at a time; points_ ends with
  /// kWindow sentinels (hash 0xffffffff) so that it never reads past the array.
  static constexpr size_t kWindow = 8;

  size_t n_ = 0;         ///< points (after dedup)
  uint32_t shift_ = 31;  ///< 32 - index bits
  // Sorted by hash. Hash and host side by side: the owner of the point found
  // is on a cache line find() has just read.
  std::vector<ChashPoint> points_;
  // first_[b] = index of the first point whose hash >= b << shift_ (b up to
  // 2^(32 - shift_) inclusive); about 4 to 8 points per bucket.
  std::vector<uint32_t> first_;
};

/// The CRC32 nginx starts a server's points from: its address text split at
/// the last ':' into HOST and PORT, crc32(HOST "\0" PORT).
uint32_t chash_base(std::string_view address) noexcept;
/// The same for `address.to_string()`, without the string for IPv4.
uint32_t chash_base(const core::SockAddr& address);

inline size_t ChashRing::find(uint32_t hash) const noexcept {
  const ChashPoint* const base = points_.data();
  const ChashPoint* p = base + first_[hash >> shift_];
  // Every point before p is < hash. Step whole windows while the window's
  // last point is still below; then the answer is p + (points < hash in it).
  while (p[kWindow - 1].hash < hash) p += kWindow;
  size_t below = 0;
  for (size_t k = 0; k < kWindow; ++k) below += p[k].hash < hash;
  return static_cast<size_t>(p - base) + below;
}

template <typename Eligible>
int ChashRing::pick(HashKey key, Eligible&& eligible, size_t max_tries) const noexcept {
  const size_t n = n_;
  if (n == 0) return -1;
  size_t i = find(key.crc);
  if (i == n) i = 0;
  for (size_t tries = 0; tries < max_tries; ++tries) {
    const uint32_t h = points_[i].host;
    if (eligible(h)) return static_cast<int>(h);
    if (++i == n) i = 0;
  }
  return -1;
}

}  // namespace gw::balance
