#pragma once
// nginx's non-consistent `hash $key` (ngx_http_upstream_get_hash_peer), the
// Cache::Memcached-compatible formula, so migrating users keep their mapping:
//
//   try 0: h = (crc32(KEY) >> 16) & 0x7fff
//   try n: h = (crc32(decimal(n) KEY) >> 16) & 0x7fff     (n = 1, 2, ...)
//   acc += h; w = acc % total_weight; walk the hosts in order, subtracting weights
//
// An ineligible host means another try; after 20 tries nginx falls back to
// round robin (pick() returns -1 so the caller does). total_weight counts every
// host of the pool, as nginx counts every non-backup server, so hosts going
// down do not move the keys of the others.

#include <fmt/format.h>

#include <cstdint>
#include <span>
#include <string_view>

#include "gw/balance/hash.hpp"
#include "gw/shm/table.hpp"

namespace gw::balance {

template <typename Eligible>
int nginx_hash_pick(std::span<const shm::HostRecord> hosts, std::span<const uint32_t> candidates, HashKey key,
                    Eligible&& eligible) noexcept {
  uint64_t total = 0;
  for (uint32_t i : candidates) total += hosts[i].weight;
  if (total == 0) return -1;
  uint64_t acc = 0;
  uLong key_op = 0;  // crc32_combine_gen(key.len), made on the first rehash
  for (unsigned rehash = 0; rehash <= 20; ++rehash) {
    uint32_t crc = key.crc;
    if (rehash > 0) {
      // crc32(decimal(rehash) KEY), from the key's CRC32 alone.
      char buf[16];
      auto r = fmt::format_to_n(buf, sizeof(buf), "{}", rehash);
      if (key_op == 0) key_op = ::crc32_combine_gen(static_cast<z_off_t>(key.len));
      crc = static_cast<uint32_t>(::crc32_combine_op(crc32(std::string_view(buf, r.size)), key.crc, key_op));
    }
    acc += (crc >> 16) & 0x7fff;
    uint64_t w = acc % total;
    for (uint32_t i : candidates) {
      if (w < hosts[i].weight) {
        if (eligible(i)) return static_cast<int>(i);
        break;
      }
      w -= hosts[i].weight;
    }
  }
  return -1;
}

/// crc32(key) % number of hosts (the classic OpenResty recipe); weights are
/// ignored. An ineligible host passes the key to the next host in order.
template <typename Eligible>
int crc32_mod_pick(std::span<const shm::HostRecord> hosts, std::span<const uint32_t> candidates, HashKey key,
                   Eligible&& eligible) noexcept {
  if (candidates.empty()) return -1;
  const size_t n = candidates.size();  // the modulus counts every host, as the recipe does
  const size_t first = key.crc % n;
  for (size_t k = 0; k < n; ++k) {
    uint32_t i = candidates[(first + k) % n];
    if (hosts[i].weight != 0 && eligible(i)) return static_cast<int>(i);  // weight 0: draining
  }
  return -1;
}

}  // namespace gw::balance
