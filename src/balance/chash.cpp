#include "gw/balance/chash.hpp"

#include <algorithm>
#include <bit>
#include <type_traits>

#include <fmt/format.h>

namespace gw::balance {

namespace {

const auto& kT = detail::kCrc32.t;

/// The CRC register `state` (not inverted) continued over the 4
/// little-endian bytes of `v`, returned finalized (inverted): slicing-by-4.
inline uint32_t crc_step(uint32_t state, uint32_t v) noexcept {
  const uint32_t c = state ^ v;
  return ~(kT[3][c & 0xff] ^ kT[2][(c >> 8) & 0xff] ^ kT[1][(c >> 16) & 0xff] ^ kT[0][c >> 24]);
}

using Active = std::integral_constant<uint32_t, 1>;
constexpr Active kActive{};

/// Calls emit(hash, ordinal, active) for counts[c] points of every candidate
/// c (ordinal: the host's index in `candidates`), in no particular order. A
/// host's points form one CRC chain (point j continues from point j - 1), so
/// four hosts' chains run side by side, 160 points (one unit of weight) at a
/// time, or up to the end of the shortest chain left when a ring is scaled
/// down; a lane left without a host runs on with active = 0 and its hash is
/// to be ignored (emit must not branch on it: that is the point). `active` is
/// an Active (a compile-time 1) in the rounds where all four lanes have a host.
template <typename Emit>
void for_each_point(std::span<const uint32_t> counts, std::span<const uint32_t> states, Emit&& emit) {
  constexpr int kLanes = 4;
  uint32_t state[kLanes] = {}, prev[kLanes] = {}, ord[kLanes] = {}, units[kLanes] = {};
  size_t next = 0;
  for (;;) {
    uint32_t busy = 0;
    for (int l = 0; l < kLanes; ++l) {
      if (units[l] == 0) {
        while (next < counts.size() && counts[next] == 0) ++next;
        if (next < counts.size()) {
          state[l] = states[next];
          prev[l] = 0;
          ord[l] = static_cast<uint32_t>(next);
          units[l] = counts[next];
          ++next;
        }
      }
      busy |= units[l];
    }
    if (!busy) return;
    // Points in this round: 160, or what the shortest chain still running has left.
    uint32_t len = 160;
    for (uint32_t u : units)
      if (u) len = std::min(len, u);
    auto round = [&](auto steps, auto a0, auto a1, auto a2, auto a3) {
      const uint32_t s0 = state[0], s1 = state[1], s2 = state[2], s3 = state[3];
      const uint32_t o0 = ord[0], o1 = ord[1], o2 = ord[2], o3 = ord[3];
      uint32_t p0 = prev[0], p1 = prev[1], p2 = prev[2], p3 = prev[3];
      for (uint32_t j = 0; j < steps; ++j) {
        p0 = crc_step(s0, p0);
        p1 = crc_step(s1, p1);
        p2 = crc_step(s2, p2);
        p3 = crc_step(s3, p3);
        emit(p0, o0, a0);
        emit(p1, o1, a1);
        emit(p2, o2, a2);
        emit(p3, o3, a3);
      }
      prev[0] = p0, prev[1] = p1, prev[2] = p2, prev[3] = p3;
    };
    if (units[0] && units[1] && units[2] && units[3]) {
      if (len == 160)  // the usual case: a fixed count, and emit needs no mask
        round(std::integral_constant<uint32_t, 160>{}, kActive, kActive, kActive, kActive);
      else round(len, kActive, kActive, kActive, kActive);
    } else {
      round(len, uint32_t{units[0] != 0}, uint32_t{units[1] != 0}, uint32_t{units[2] != 0}, uint32_t{units[3] != 0});
    }
    for (uint32_t& u : units) u -= u ? len : 0;
  }
}

/// Sort buffers, shared by the rings a thread builds (a worker rebuilds its
/// rings one after the other): each grows to the largest ring and stays.
struct Scratch {
  std::vector<uint32_t> states;      ///< per candidate: the CRC register after HOST "\0" PORT
  std::vector<uint32_t> counts;      ///< per candidate: its points (points_for)
  std::vector<uint32_t> start;       ///< start[b]: points whose hash's top 16 bits are < b (b in 0..65536)
  std::vector<uint64_t> by_top;      ///< points as hash << 32 | ordinal, grouped by the hash's top 8 bits
  std::vector<uint64_t> tmp, group;  ///< one top-8 group, being sorted
  std::vector<size_t> dups;          ///< where (before dedup) the points dropped as duplicates were
};
thread_local Scratch tl_scratch;

}  // namespace

uint32_t crc32_u32le(uint32_t v, uint32_t crc) noexcept {
  return crc_step(~crc, v);
}

std::string chash_bound_warning(uint64_t total_weight) {
  if (total_weight <= kChashNginxWeight) return {};
  return fmt::format(
      "chash over a total weight of {}, more than {}: its ring is scaled down to {} points, so keys split by weight "
      "but do not map to the hosts nginx's `hash consistent` picks",
      total_weight, kChashNginxWeight, kChashMaxPoints);
}

uint32_t ChashRing::points_for(uint32_t weight, uint64_t total_weight, size_t weighted_hosts) noexcept {
  if (weight == 0) return 0;
  const uint64_t nginx = uint64_t{weight} * 160, all = total_weight * 160;
  if (all <= kChashMaxPoints) return static_cast<uint32_t>(nginx);
  // Scaled: weight x 160 x cap / (total x 160), without the 160s (no
  // overflow: weight <= 2^32, cap = 2^20).
  const uint64_t scaled = uint64_t{weight} * kChashMaxPoints / total_weight;
  const uint64_t floor = std::max<uint64_t>(
      1, std::min<uint64_t>(kChashMinPoints, kChashMaxPoints / (2 * std::max<size_t>(weighted_hosts, 1))));
  return static_cast<uint32_t>(std::max(scaled, floor));
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

uint32_t chash_base(const core::SockAddr& a) {
  if (a.family != AF_INET) return chash_base(a.to_string());
  // "A.B.C.D" "\0" "PORT", as to_string() writes it ("A.B.C.D:PORT") and
  // chash_base() splits it.
  char buf[24];
  size_t len = 0;
  auto put = [&](unsigned v) {
    char digits[5];
    size_t k = 0;
    do digits[k++] = static_cast<char>('0' + v % 10);
    while ((v /= 10) != 0 && k < sizeof(digits));
    while (k) buf[len++] = digits[--k];
  };
  for (int i = 0; i < 4; ++i) {
    if (i) buf[len++] = '.';
    put(a.ip[i]);
  }
  buf[len++] = '\0';
  put(a.port);
  return crc32(std::string_view(buf, len));
}

// The ring is the points sorted by the key hash << 32 | ordinal: equal hashes
// come in generation order (host by host; a host's own equal points carry the
// same host), so keeping the first of equal hashes keeps what nginx keeps
// (its qsort is glibc's merge sort, stable, then it drops repeats).
//
// The sort is a radix sort shaped by the hashes being uniform: a scatter into
// 256 groups by the top 8 bits as the points are generated, then, group by
// group while the group sits in L1, two more scatters (bits 8-15, then 16-23)
// and an insertion sort for the rare points that share 24 bits.
void ChashRing::build(std::span<const shm::HostRecord> hosts, std::span<const uint32_t> candidates) {
  Scratch& s = tl_scratch;
  uint64_t total_weight = 0;
  size_t weighted = 0;
  for (uint32_t c : candidates) {
    total_weight += hosts[c].weight;
    weighted += hosts[c].weight != 0;
  }
  size_t total = 0;
  s.states.resize(candidates.size());
  s.counts.resize(candidates.size());
  for (size_t c = 0; c < candidates.size(); ++c) {
    const shm::HostRecord& h = hosts[candidates[c]];
    s.counts[c] = points_for(h.weight, total_weight, weighted);
    total += s.counts[c];
    s.states[c] = h.weight ? ~chash_base(h.addr) : 0;
  }

  // 1. Count the points by the top 8 bits of their hash.
  size_t group_start[257] = {};
  for_each_point(s.counts, s.states,
                 [&group_start](uint32_t h, uint32_t, auto active) { group_start[(h >> 24) + 1] += active; });
  size_t largest = 0;
  for (size_t t = 0; t < 256; ++t) {
    largest = std::max(largest, group_start[t + 1]);
    group_start[t + 1] += group_start[t];
  }

  // 2. Generate them again (cheaper than storing them), scattered into 256
  // groups by those bits.
  s.by_top.resize(total);
  s.tmp.resize(largest);
  s.group.resize(largest);
  {
    uint32_t pos[256], zeros[256] = {};
    for (size_t t = 0; t < 256; ++t) pos[t] = static_cast<uint32_t>(group_start[t]);
    uint64_t* const out = s.by_top.data();
    uint64_t sink;
    uint32_t* const lane_pos[2] = {zeros, pos};
    uint64_t* const lane_out[2] = {&sink, out};
    for_each_point(s.counts, s.states, [&](uint32_t h, uint32_t ord, auto active) {
      if constexpr (std::is_same_v<decltype(active), Active>) {
        out[pos[h >> 24]++] = uint64_t{h} << 32 | ord;
      } else {  // an idle lane writes to `sink` and leaves the positions as they are
        uint32_t* p = lane_pos[active] + (h >> 24);
        lane_out[active][*p] = uint64_t{h} << 32 | ord;
        *p += active;
      }
    });
  }

  // 3. Sort each group (it fits in L1: a few thousand points for 1,000
  // hosts) by bits 8-15, then 16-23 (counted in one pass; the latter counts
  // are also the top-16-bit counts the prefix index is made of), finish with
  // an insertion sort (it only moves the rare points that share 24 bits) and
  // append its points to the ring, skipping a hash equal to the previous one.
  s.start.resize(65537);
  uint32_t* start = s.start.data();
  points_.resize(total + kWindow);
  ChashPoint* out = points_.data();
  s.dups.clear();
  size_t n = 0;
  for (size_t t = 0; t < 256; ++t) {
    const size_t base = group_start[t], len = group_start[t + 1] - base;
    const uint64_t* in = s.by_top.data() + base;
    uint64_t* tmp = s.tmp.data();
    uint64_t* g = s.group.data();
    uint32_t pos8[256] = {}, pos16[256] = {};
    for (size_t k = 0; k < len; ++k) {
      ++pos8[(in[k] >> 40) & 0xff];
      ++pos16[(in[k] >> 48) & 0xff];
    }
    uint32_t sum8 = 0, sum16 = 0;
    for (size_t u = 0; u < 256; ++u) {
      const uint32_t c8 = pos8[u], c16 = pos16[u];
      pos8[u] = sum8;
      pos16[u] = sum16;
      start[(t << 8) + u] = static_cast<uint32_t>(base + sum16);
      sum8 += c8;
      sum16 += c16;
    }
    for (size_t k = 0; k < len; ++k) tmp[pos8[(in[k] >> 40) & 0xff]++] = in[k];
    for (size_t k = 0; k < len; ++k) g[pos16[(tmp[k] >> 48) & 0xff]++] = tmp[k];
    if (len == 0) continue;
    uint64_t prev = g[0];
    for (size_t i = 1; i < len; ++i) {
      const uint64_t v = g[i];
      if (v >= prev) {
        prev = v;
        continue;
      }
      size_t j = i;  // rare: v shares its top 24 bits with the point before
      for (; j > 0 && g[j - 1] > v; --j) g[j] = g[j - 1];
      g[j] = v;  // and g[i] is now prev again
    }
    // Equal hashes are adjacent, and never in two groups: keep the first.
    uint32_t last = static_cast<uint32_t>(g[0] >> 32) ^ 1;
    for (size_t k = 0; k < len; ++k) {
      const uint32_t h = static_cast<uint32_t>(g[k] >> 32);
      if (h == last) {
        s.dups.push_back(base + k);
        continue;
      }
      last = h;
      out[n++] = {h, candidates[static_cast<uint32_t>(g[k])]};
    }
  }
  start[65536] = static_cast<uint32_t>(total);
  n_ = n;
  points_.resize(n + kWindow);
  std::fill(points_.begin() + static_cast<ptrdiff_t>(n), points_.end(), ChashPoint{0xffffffffu, 0});

  // 4. The prefix index: 2^bits buckets of 4 to 8 points (bits in 1..24).
  // Up to 16 bits it is read off the counts of step 3, less the duplicates
  // dropped before each bucket.
  const int bits = n < 32 ? 1 : std::min(24, static_cast<int>(std::bit_width(n)) - 3);
  shift_ = static_cast<uint32_t>(32 - bits);
  const size_t buckets = size_t{1} << bits;
  first_.resize(buckets + 1);
  if (bits <= 16) {
    size_t d = 0;
    for (size_t b = 0; b <= buckets; ++b) {
      const size_t before = start[b << (16 - bits)];
      while (d < s.dups.size() && s.dups[d] < before) ++d;
      first_[b] = static_cast<uint32_t>(before - d);
    }
  } else {
    std::fill(first_.begin(), first_.end(), 0);
    for (size_t k = 0; k < n; ++k) ++first_[(out[k].hash >> shift_) + 1];
    for (size_t b = 0; b < buckets; ++b) first_[b + 1] += first_[b];
  }
}

}  // namespace gw::balance
