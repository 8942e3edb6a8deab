#pragma once
// Hash and random helpers shared by the balancers. CRC32 is zlib's (IEEE
// 802.3), the function nginx calls ngx_crc32_long: using the same one is what
// makes `chash` and `hash` pick the hosts nginx picks.

#include <zlib.h>

#include <cstdint>
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
