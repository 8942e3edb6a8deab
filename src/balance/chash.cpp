#include "gw/balance/chash.hpp"

#include <algorithm>
#include <array>

namespace gw::balance {

uint32_t chash_base(std::string_view server) noexcept {
  // nginx: the port is the run of digits after the last ':'; the host is what
  // precedes that ':'. "[::1]:80" → host "[::1]", port "80".
  std::string_view host = server, port;
  for (size_t j = 0; j < server.size(); ++j) {
    char c = server[server.size() - j - 1];
    if (c == ':') {
      host = server.substr(0, server.size() - j - 1);
      port = server.substr(server.size() - j);
      break;
    }
    if (c < '0' || c > '9') break;
  }
  uint32_t crc = crc32(host);
  crc = crc32(std::string_view("\0", 1), crc);
  return crc32(port, crc);
}

void ChashRing::build(std::span<const shm::HostRecord> hosts, std::span<const uint32_t> candidates) {
  points_.clear();
  size_t total = 0;
  for (uint32_t i : candidates) total += size_t{hosts[i].weight} * 160;
  points_.reserve(total);
  for (uint32_t i : candidates) {
    const shm::HostRecord& h = hosts[i];
    const uint32_t base = chash_base(h.addr.to_string());
    uint32_t prev = 0;
    for (uint32_t j = 0; j < h.weight * 160; ++j) {
      const std::array<char, 4> le = {static_cast<char>(prev), static_cast<char>(prev >> 8),
                                      static_cast<char>(prev >> 16), static_cast<char>(prev >> 24)};
      prev = crc32(std::string_view(le.data(), 4), base);
      points_.push_back({prev, i});
    }
  }
  // nginx sorts with qsort (not stable) and keeps one point of each hash value.
  // A stable sort keeps the point of the host listed first; equal 32-bit points
  // of two hosts are rare (about 1 in 2^32 / points).
  std::stable_sort(points_.begin(), points_.end(),
                   [](const ChashPoint& a, const ChashPoint& b) { return a.hash < b.hash; });
  points_.erase(std::unique(points_.begin(), points_.end(),
                            [](const ChashPoint& a, const ChashPoint& b) { return a.hash == b.hash; }),
                points_.end());
}

size_t ChashRing::find(uint32_t hash) const noexcept {
  // The first point >= hash; past the last point the ring wraps to 0 (at()).
  auto it = std::lower_bound(points_.begin(), points_.end(), hash,
                             [](const ChashPoint& p, uint32_t h) { return p.hash < h; });
  return static_cast<size_t>(it - points_.begin());
}

}  // namespace gw::balance
