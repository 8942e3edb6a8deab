#include "gw/balance/chash.hpp"

#include <algorithm>

namespace gw::balance {

namespace {
// The reflected IEEE 802.3 table zlib uses (polynomial 0xedb88320).
struct Crc32Table {
  uint32_t t[256];
  constexpr Crc32Table() : t() {
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xedb88320u ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
  }
};
constexpr Crc32Table kCrc;
}  // namespace

uint32_t crc32_u32le(uint32_t v, uint32_t crc) noexcept {
  crc = ~crc;
  for (int k = 0; k < 4; ++k) crc = kCrc.t[(crc ^ (v >> (8 * k))) & 0xff] ^ (crc >> 8);
  return ~crc;
}

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
      prev = crc32_u32le(prev, base);  // the previous point's 4 little-endian bytes
      points_.push_back({prev, i});
    }
  }
  // nginx sorts with qsort (not stable) and keeps one point of each hash value.
  // A stable sort keeps the point of the host listed first; equal 32-bit points
  // of two hosts are rare (about 1 in 2^32 / points). LSD radix sort, 4 passes
  // of 8 bits: stable, and O(n) for the 160k+ points of 1,000 hosts.
  std::vector<ChashPoint> tmp(points_.size());
  for (int shift = 0; shift < 32; shift += 8) {
    size_t count[257] = {};
    for (const auto& p : points_) ++count[((p.hash >> shift) & 0xff) + 1];
    for (int b = 0; b < 256; ++b) count[b + 1] += count[b];
    for (const auto& p : points_) tmp[count[(p.hash >> shift) & 0xff]++] = p;
    points_.swap(tmp);
  }
  points_.erase(std::unique(points_.begin(), points_.end(),
                            [](const ChashPoint& a, const ChashPoint& b) { return a.hash == b.hash; }),
                points_.end());
  first_.assign(65537, 0);
  size_t i = 0;
  for (uint32_t b = 0; b < 65536; ++b) {
    while (i < points_.size() && (points_[i].hash >> 16) < b) ++i;
    first_[b] = static_cast<uint32_t>(i);
  }
  first_[65536] = static_cast<uint32_t>(points_.size());
}

size_t ChashRing::find(uint32_t hash) const noexcept {
  // The first point >= hash; past the last point the ring wraps to 0 (at()).
  auto lo = points_.begin() + first_[hash >> 16], hi = points_.begin() + first_[(hash >> 16) + 1];
  auto it = std::lower_bound(lo, hi, hash, [](const ChashPoint& p, uint32_t h) { return p.hash < h; });
  return static_cast<size_t>(it - points_.begin());
}

}  // namespace gw::balance
