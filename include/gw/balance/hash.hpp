#pragma once
// Hash and random helpers shared by the balancers. CRC32 is zlib's (IEEE
// 802.3), the function nginx calls ngx_crc32_long: using the same one is what
// makes `chash` and `hash` pick the hosts nginx picks.

#include <zlib.h>

#include <algorithm>
#include <bit>
#include <climits>
#include <cstdint>
#include <cstring>
#include <string_view>

namespace gw::balance {

/// crc32 of `s`, continuing from `crc` (0 to start): crc32(crc32(0,a),b) == crc32(0,a+b).
inline uint32_t crc32(std::string_view s, uint32_t crc = 0) noexcept {
  return static_cast<uint32_t>(::crc32(crc, reinterpret_cast<const Bytef*>(s.data()), static_cast<uInt>(s.size())));
}

/// crc32 continued from `crc` over the 4 little-endian bytes of `v`; equal to
/// crc32(bytes, crc). Building a chash ring makes 160 of these per unit of
/// weight (320k for 1,000 hosts of weight 2): inline, table-driven, they cost
/// a few nanoseconds each where a zlib call costs tens.
uint32_t crc32_u32le(uint32_t v, uint32_t crc) noexcept;

namespace detail {
// The reflected IEEE 802.3 tables (polynomial 0xedb88320, zlib's and nginx's
// CRC32) for slicing-by-8: t[0] is the byte-at-a-time table, t[k][i] is the
// CRC of byte i followed by k zero bytes.
struct Crc32Tables {
  uint32_t t[8][256];
  constexpr Crc32Tables() : t() {
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xedb88320u ^ (c >> 1) : c >> 1;
      t[0][i] = c;
    }
    for (int k = 1; k < 8; ++k)
      for (uint32_t i = 0; i < 256; ++i) t[k][i] = (t[k - 1][i] >> 8) ^ t[0][t[k - 1][i] & 0xff];
  }
};
inline constexpr Crc32Tables kCrc32{};
}  // namespace detail

/// crc32 of `s` (zlib's crc32(0, s), nginx's ngx_crc32_long), for keys.
/// Keys are short (addresses, ids, paths): inline slicing-by-8 hashes a
/// 12-byte key in about a third of the time of a call to zlib, whose set-up
/// dominates there; zlib's braided loop only wins past several hundred bytes.
inline uint32_t chash_crc32(std::string_view s) noexcept {
  if (std::endian::native != std::endian::little || s.size() >= 512) return crc32(s);
  const auto& t = detail::kCrc32.t;
  const char* p = s.data();
  size_t n = s.size();
  uint32_t c = 0xffffffffu;
  for (; n >= 8; n -= 8, p += 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    v ^= c;
    c = t[7][v & 0xff] ^ t[6][(v >> 8) & 0xff] ^ t[5][(v >> 16) & 0xff] ^ t[4][(v >> 24) & 0xff] ^
        t[3][(v >> 32) & 0xff] ^ t[2][(v >> 40) & 0xff] ^ t[1][(v >> 48) & 0xff] ^ t[0][v >> 56];
  }
  if (n >= 4) {
    uint32_t v;
    std::memcpy(&v, p, 4);
    v ^= c;
    c = t[3][v & 0xff] ^ t[2][(v >> 8) & 0xff] ^ t[1][(v >> 16) & 0xff] ^ t[0][v >> 24];
    n -= 4;
    p += 4;
  }
  for (; n; --n, ++p) c = t[0][(c ^ static_cast<unsigned char>(*p)) & 0xff] ^ (c >> 8);
  return ~c;
}

/// A hash key as the hash methods use it: the CRC32 of the whole key and its
/// length. Every method that hashes a key hashes its CRC32 (chash, maglev,
/// crc32_mod) or a CRC32 of a decimal prefix and the key (hash, whose
/// rehashes are crc32_combine()s of the two), so a long key (a URI, a cookie)
/// need not be kept, nor cut, to be hashed exactly as nginx hashes it.
struct HashKey {
  uint32_t crc = 0;
  uint32_t len = 0;  ///< 0: no key
  bool empty() const noexcept { return len == 0; }
  static HashKey of(std::string_view s) noexcept;
};

inline HashKey HashKey::of(std::string_view s) noexcept {
  return {s.empty() ? 0 : chash_crc32(s), static_cast<uint32_t>(std::min<size_t>(s.size(), UINT32_MAX))};
}

/// splitmix64's finaliser: a bijection of 64 bits whose outputs look
/// independent for inputs that differ in a few bits (seed ^ slot).
inline uint64_t mix64(uint64_t x) noexcept {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

/// A small, fast, seedable generator (xorshift64*), one per worker. Tests
/// inject the seed, so every pick sequence is reproducible.
class Rng {
 public:
  explicit Rng(uint64_t seed) noexcept : s_(seed ? seed : 0x9e3779b97f4a7c15ull) {}
  uint64_t next() noexcept {
    s_ ^= s_ >> 12;
    s_ ^= s_ << 25;
    s_ ^= s_ >> 27;
    return s_ * 0x2545f4914f6cdd1dull;
  }
  /// Uniform in [0, n) for 0 < n < 2^32 (Lemire's multiply-shift on 32 bits;
  /// bias < n / 2^32, far below what a balancer can observe).
  uint64_t below(uint64_t n) noexcept { return ((next() >> 32) * (n & 0xffffffffu)) >> 32; }

 private:
  uint64_t s_;
};

}  // namespace gw::balance
