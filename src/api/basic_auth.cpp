#include "gw/api/basic_auth.hpp"

#include <crypt.h>
#include <nettle/sha2.h>
#include <openssl/crypto.h>
#include <sys/random.h>

#include <cstring>
#include <stdexcept>

namespace gw::api {

BasicCache::BasicCache() : crypt_(std::make_unique<crypt_data>()) {
  if (::getrandom(salt_, sizeof(salt_), 0) != static_cast<ssize_t>(sizeof(salt_)))
    throw std::runtime_error("getrandom failed");
}

BasicCache::~BasicCache() = default;

BasicAuth::BasicAuth(const config::AuthConf& conf, uint64_t scope) : users_(conf.users), scope_(scope) {}

const char* BasicAuth::run_crypt(std::string_view password, const std::string& hash, BasicCache& cache) noexcept {
  // crypt_rn wants a NUL-terminated phrase (the caller bounds its length).
  std::memcpy(cache.phrase_, password.data(), password.size());
  cache.phrase_[password.size()] = '\0';
  ++cache.hashes_;
  const char* out = crypt_rn(cache.phrase_, hash.c_str(), cache.crypt_.get(), sizeof(crypt_data));
  std::memset(cache.phrase_, 0, password.size());
  return out;
}

BasicAuth::Result BasicAuth::verify(std::string_view credentials, BasicCache& cache, std::string_view& user,
                                    const char** why) const noexcept {
  const char* unused = nullptr;
  if (!why) why = &unused;
  user = {};
  const size_t colon = credentials.find(':');
  if (colon == std::string_view::npos || credentials.size() > kMaxBasicCredentials) {
    *why = colon == std::string_view::npos ? "no ':' in the credentials" : "credentials too long";
    return Result::bad;
  }
  const std::string_view name = credentials.substr(0, colon), password = credentials.substr(colon + 1);
  const std::pair<std::string, std::string>* u = nullptr;
  for (const auto& p : users_)
    if (p.first == name) u = &p;
  if (password.find('\0') != std::string_view::npos) {
    *why = "a NUL byte in the password";
    return Result::bad;
  }
  if (!u) {
    // An unknown user costs a crypt as a known one does (against the first
    // user's hash, so with its algorithm and cost): answering at once would
    // tell a client which user names exist from the time the 401 takes.
    if (!users_.empty()) run_crypt(password, users_.front().second, cache);
    *why = "unknown user";
    return Result::bad;
  }

  // The cache key: SHA-256(salt | scope | credentials), with nettle (OpenSSL's
  // EVP_Digest allocates per call, and this runs on every request).
  uint8_t digest[SHA256_DIGEST_SIZE];
  {
    sha256_ctx h;
    sha256_init(&h);
    sha256_update(&h, sizeof(cache.salt_), cache.salt_);
    sha256_update(&h, sizeof(scope_), reinterpret_cast<const uint8_t*>(&scope_));
    sha256_update(&h, credentials.size(), reinterpret_cast<const uint8_t*>(credentials.data()));
    sha256_digest(&h, sizeof(digest), digest);
  }
  uint32_t set = 0;
  std::memcpy(&set, digest, sizeof(set));
  BasicCache::Entry* ways = cache.entries_ + (set % BasicCache::kCacheSets) * BasicCache::kCacheWays;
  for (uint32_t w = 0; w < BasicCache::kCacheWays; ++w)
    if (ways[w].stamp && CRYPTO_memcmp(ways[w].digest, digest, sizeof(digest)) == 0) {
      ways[w].stamp = ++cache.clock_;
      user = u->first;
      return Result::cached;
    }

  const char* out = run_crypt(password, u->second, cache);
  if (!out || std::strlen(out) != u->second.size() || CRYPTO_memcmp(out, u->second.data(), u->second.size()) != 0) {
    *why = "wrong password for user";
    user = u->first;
    return Result::bad;
  }

  // Remember it: the empty or least recently used way of its set.
  BasicCache::Entry* victim = &ways[0];
  for (uint32_t w = 1; w < BasicCache::kCacheWays; ++w)
    if (ways[w].stamp < victim->stamp) victim = &ways[w];
  std::memcpy(victim->digest, digest, sizeof(digest));
  victim->stamp = ++cache.clock_;
  user = u->first;
  return Result::ok;
}

}  // namespace gw::api
