#include "gw/api/hash.hpp"

#include <nettle/sha2.h>
#include <openssl/crypto.h>
#include <xxhash.h>

namespace gw::api {

uint64_t scope_id(std::string_view name) noexcept {
  return XXH3_64bits(name.data(), name.size());
}

uint64_t limit_hash(uint64_t seed, uint64_t scope, std::string_view key) noexcept {
  // The scope perturbs the seed: the same key in two scopes hashes apart.
  return XXH3_64bits_withSeed(key.data(), key.size(), seed ^ (scope * 0x9e3779b97f4a7c15ull));
}

bool sha256(std::string_view data, uint8_t (&out)[shm::kSha256Len]) noexcept {
  // nettle, not OpenSSL's EVP_Digest: key-auth hashes the presented key on every
  // request, and EVP_Digest allocates a digest context (and fetches the
  // algorithm) per call; a nettle context is a plain struct on the stack.
  static_assert(shm::kSha256Len == SHA256_DIGEST_SIZE);
  sha256_ctx ctx;
  sha256_init(&ctx);
  sha256_update(&ctx, data.size(), reinterpret_cast<const uint8_t*>(data.data()));
  sha256_digest(&ctx, shm::kSha256Len, out);
  return true;
}

std::string to_hex(const uint8_t (&digest)[shm::kSha256Len]) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string s(2 * shm::kSha256Len, '0');
  for (size_t i = 0; i < shm::kSha256Len; ++i) {
    s[2 * i] = kDigits[digest[i] >> 4];
    s[2 * i + 1] = kDigits[digest[i] & 15];
  }
  return s;
}

bool from_hex(std::string_view hex, uint8_t (&out)[shm::kSha256Len]) noexcept {
  if (hex.size() != 2 * shm::kSha256Len) return false;
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  for (size_t i = 0; i < shm::kSha256Len; ++i) {
    int hi = nibble(hex[2 * i]), lo = nibble(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return false;
    out[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  return true;
}

bool equal_ct(const void* a, const void* b, size_t n) noexcept {
  return CRYPTO_memcmp(a, b, n) == 0;
}

}  // namespace gw::api
