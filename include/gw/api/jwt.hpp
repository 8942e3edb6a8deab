#pragma once
// JWT verification (RFC 7519, JWS compact serialization RFC 7515) for the
// "jwt" auth of a route: HS256 (HMAC-SHA256, with nettle) or RS256
// (RSASSA-PKCS1-v1_5 with SHA-256, with OpenSSL); the JSON of header and
// claims with simdjson.
//
//   token = b64url(header) "." b64url(claims) "." b64url(signature)
//   1. three parts, each canonical base64url, the whole at most kMaxJwt bytes
//   2. header: an object whose "alg" is exactly the configured algorithm
//      ("none", and HS256 when RS256 is configured, are refused: no algorithm
//      confusion); a "crit" header is refused (no extension is understood),
//      and so is "alg" or "crit" named twice
//   3. signature over "header.claims" (before the claims are parsed)
//   4. claims: "exp" (now >= exp + leeway: expired), "nbf" (now + leeway < nbf:
//      not yet valid), "iss" and "aud" when configured, and the consumer claim
//      (default "sub"): a string of 1..63 visible characters; claims naming
//      one of these twice are refused (RFC 7519 4: JSON parsers differ on
//      which one counts)
//
// One JwtVerifier per route and worker (built at start-up); one JwtScratch per
// worker. verify() is noexcept. The verifier keeps the tokens that verified
// (kTokenSets x kTokenWays, LRU, keyed by the token's SHA-256, with their exp,
// nbf and consumer): a client re-sending its token costs a SHA-256 and the
// exp/nbf check (0.2-0.5 us), not the signature and the JSON (RS256 22-31 us,
// HS256 1.5 us; bench/auth_bench.cpp). Everything else about a token (header,
// signature, iss, aud, consumer) is a function of its bytes and the route's
// config, so a cached answer is the one the full check would give. Failures
// are not kept: a bad token costs the full check each time. HS256 allocates
// nothing and takes no lock (the HMAC key schedule is computed once; the
// simdjson parser's buffers are allocated up front), and neither does a cache
// hit; inside the RSA operation of a full RS256 check OpenSSL 3 allocates (its
// EVP layer has no allocation-free verify).

#include <simdjson.h>

#include <cstdint>
#include <memory>
#include <string_view>

#include "gw/config/api.hpp"

typedef struct evp_pkey_st EVP_PKEY;
typedef struct evp_pkey_ctx_st EVP_PKEY_CTX;
struct hmac_sha256_ctx;

namespace gw::api {

inline constexpr size_t kMaxJwt = 8192;  ///< longest token accepted
/// The largest RS256 key: a signature is as long as the modulus, and the
/// per-worker buffer holds one of this size. Larger keys are refused at load
/// (config::is_rsa_public_key, and the verifier): no JWT issuer uses them, and
/// an RSA verification costs about the square of the key size.
inline constexpr int kMaxRsaBits = 8192;

enum class JwtError : uint8_t {
  ok = 0,
  missing,        ///< no token in the request
  malformed,      ///< not three canonical base64url parts, or too long
  bad_header,     ///< the header is not a JSON object, or has "crit"
  bad_algorithm,  ///< "alg" is not the configured algorithm
  bad_signature,
  bad_claims,  ///< the claims are not a JSON object, or exp/nbf are not numbers
  expired,
  not_yet_valid,
  bad_issuer,
  bad_audience,
  no_consumer,  ///< the consumer claim is missing or not a usable name
};
const char* jwt_error_name(JwtError e) noexcept;

/// Per-worker buffers for verification.
class JwtScratch {
 public:
  JwtScratch();
  JwtScratch(const JwtScratch&) = delete;
  JwtScratch& operator=(const JwtScratch&) = delete;

 private:
  friend class JwtVerifier;
  simdjson::dom::parser parser_;
  char header_[kMaxJwt + simdjson::SIMDJSON_PADDING];
  char claims_[kMaxJwt + simdjson::SIMDJSON_PADDING];
  unsigned char sig_[kMaxRsaBits / 8];
};

class JwtVerifier {
 public:
  static constexpr uint32_t kTokenSets = 64;
  static constexpr uint32_t kTokenWays = 4;

  /// Throws std::runtime_error if the RS256 key does not load (the config
  /// loader checked it already).
  explicit JwtVerifier(const config::AuthConf& conf);
  ~JwtVerifier();
  JwtVerifier(const JwtVerifier&) = delete;
  JwtVerifier& operator=(const JwtVerifier&) = delete;

  /// Verifies `token` at wall-clock time `now_s` (seconds since the epoch,
  /// with their fraction: a token whose "exp" is 1000.5 has expired at
  /// 1000.6, which a whole second would not say). On ok, `consumer` is the
  /// consumer claim's value, valid until the next verify() with `scratch` or
  /// with this verifier. `cached` (if given) says whether the token was
  /// answered from the verifier's cache.
  JwtError verify(std::string_view token, double now_s, JwtScratch& scratch, std::string_view& consumer,
                  bool* cached = nullptr) noexcept;

 private:
  struct CachedToken {
    uint8_t digest[32];  ///< SHA-256 of the whole token
    double exp;          ///< +inf: no "exp"
    double nbf;          ///< -inf: no "nbf"
    uint64_t stamp;      ///< 0 = empty; else the use counter at the last hit
    uint8_t who_len;
    char who[config::kMaxConsumerName];
  };
  bool check_signature(std::string_view signed_part, const unsigned char* sig, size_t sig_len) const noexcept;
  JwtError check_times(double exp, double nbf, double now_s) const noexcept;

  const config::AuthConf& conf_;
  EVP_PKEY* key_ = nullptr;                ///< RS256
  EVP_PKEY_CTX* verify_ctx_ = nullptr;     ///< RS256: set up for PKCS#1 v1.5 with SHA-256
  std::unique_ptr<hmac_sha256_ctx> hmac_;  ///< HS256: keyed with the secret
  std::unique_ptr<CachedToken[]> cache_;   ///< kTokenSets x kTokenWays verified tokens
  uint64_t cache_clock_ = 0;
};

}  // namespace gw::api
