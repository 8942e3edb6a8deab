#pragma once
// Hashes of the guard: the seeded 64-bit hash of limit keys (XXH3, with the
// segment's random seed so that clients cannot aim collisions at another
// client's bucket) and SHA-256 (OpenSSL) for consumer keys. Any thread.

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "gw/shm/table.hpp"

namespace gw::api {

/// A stable 64-bit id of a limit scope ("req/LISTENER/ROUTE", "conn/LISTENER"):
/// keys of different scopes never share an entry.
uint64_t scope_id(std::string_view name) noexcept;

/// The hash of `key` within `scope` under the segment's `seed` (XXH3-64).
uint64_t limit_hash(uint64_t seed, uint64_t scope, std::string_view key) noexcept;

/// SHA-256 of `data`. Returns false only if OpenSSL fails (never in practice).
bool sha256(std::string_view data, uint8_t (&out)[shm::kSha256Len]) noexcept;

/// Lower-case hex of a digest, and back (false for anything but 64 hex digits).
std::string to_hex(const uint8_t (&digest)[shm::kSha256Len]);
bool from_hex(std::string_view hex, uint8_t (&out)[shm::kSha256Len]) noexcept;

/// Compares in time that depends on n only (CRYPTO_memcmp).
bool equal_ct(const void* a, const void* b, size_t n) noexcept;

}  // namespace gw::api
