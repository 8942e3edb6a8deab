#pragma once
// basic-auth (RFC 7617): users with crypt(3) hashes from the config (bcrypt
// "$2b$", SHA-crypt "$5$"/"$6$", yescrypt "$y$"), verified with libcrypt's
// crypt_rn() and compared in constant time.
//
// crypt is slow on purpose (bcrypt cost 10: tens of ms) and a worker is one
// thread, so successful verifications are cached per worker: a bounded LRU
// (kCacheSets x kCacheWays entries) of SHA-256(salt, route, user, password)
// -> the user. A keep-alive client (or any client re-sending the same
// credentials) pays the hash once per worker; the cache holds digests, never
// passwords, under a per-process random salt. Failures are not cached (each
// costs a crypt, and so does an unknown user name: the 401 takes as long
// either way), so a route with basic-auth should be rate limited by
// address in front (limit_conn) where password guessing is a concern.
//
// Worker thread only; noexcept after construction; a cache hit allocates
// nothing (the cache key is hashed with nettle).

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "gw/config/api.hpp"

struct crypt_data;

namespace gw::api {

inline constexpr size_t kMaxBasicCredentials = 512;  ///< decoded "user:password" bytes accepted

class BasicCache {
 public:
  static constexpr uint32_t kCacheSets = 64;
  static constexpr uint32_t kCacheWays = 4;

  BasicCache();
  ~BasicCache();
  BasicCache(const BasicCache&) = delete;
  BasicCache& operator=(const BasicCache&) = delete;

  /// crypt(3) runs so far (a verification that missed the cache, for a known
  /// user name or not).
  uint64_t hashes() const noexcept { return hashes_; }

 private:
  friend class BasicAuth;
  struct Entry {
    uint8_t digest[32] = {};
    uint64_t stamp = 0;  ///< 0 = empty; else the use counter at the last hit
  };
  Entry entries_[kCacheSets * kCacheWays];
  uint64_t clock_ = 0;
  uint64_t hashes_ = 0;
  uint8_t salt_[16] = {};
  std::unique_ptr<crypt_data> crypt_;
  char phrase_[kMaxBasicCredentials + 1] = {};
};

class BasicAuth {
 public:
  /// `scope` tells routes apart in the shared cache.
  BasicAuth(const config::AuthConf& conf, uint64_t scope);

  enum class Result : uint8_t { ok, cached, bad };
  /// Checks "user:password" (the decoded credentials). On ok/cached `user`
  /// is the user name (from the config; stable). On bad, `why` (if given)
  /// says why, for the log (static text), and `user` is the user name if it
  /// is one of the configured users (a wrong password), else empty: an
  /// unknown name may be a password typed in the wrong field.
  Result verify(std::string_view credentials, BasicCache& cache, std::string_view& user,
                const char** why = nullptr) const noexcept;

 private:
  static const char* run_crypt(std::string_view password, const std::string& hash, BasicCache& cache) noexcept;

  std::vector<std::pair<std::string, std::string>> users_;  ///< name, crypt hash
  uint64_t scope_;
};

}  // namespace gw::api
