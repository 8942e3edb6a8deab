#include "gw/api/jwt.hpp"

#include <nettle/hmac.h>
#include <nettle/sha2.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

#include <fmt/format.h>

#include <cstring>
#include <initializer_list>
#include <limits>
#include <stdexcept>

#include "gw/core/base64.hpp"

namespace gw::api {

const char* jwt_error_name(JwtError e) noexcept {
  switch (e) {
    case JwtError::ok: return "ok";
    case JwtError::missing: return "missing";
    case JwtError::malformed: return "malformed";
    case JwtError::bad_header: return "bad_header";
    case JwtError::bad_algorithm: return "bad_algorithm";
    case JwtError::bad_signature: return "bad_signature";
    case JwtError::bad_claims: return "bad_claims";
    case JwtError::expired: return "expired";
    case JwtError::not_yet_valid: return "not_yet_valid";
    case JwtError::bad_issuer: return "bad_issuer";
    case JwtError::bad_audience: return "bad_audience";
    case JwtError::no_consumer: return "no_consumer";
  }
  return "?";
}

namespace {

// Whether one of `names` is a member of `obj` more than once. RFC 7515 5.2
// and RFC 7519 4: refuse such a JWT, or take the lexically last member;
// simdjson's lookup finds the first, the host's JSON parser (PyJWT's,
// jsonwebtoken's) keeps the last and would act on a value gw never checked.
// Only the names the check reads: one pass, however many members there are.
bool named_twice(simdjson::dom::object obj, std::initializer_list<std::string_view> names) noexcept {
  uint32_t seen = 0;
  for (const simdjson::dom::key_value_pair field : obj) {
    uint32_t bit = 1;
    for (const std::string_view n : names) {
      if (field.key == n) {
        if (seen & bit) return true;
        seen |= bit;
      }
      bit <<= 1;
    }
  }
  return false;
}

}  // namespace

JwtScratch::JwtScratch() {
  if (parser_.allocate(kMaxJwt) != simdjson::SUCCESS) throw std::runtime_error("cannot allocate JWT buffers");
}

JwtVerifier::JwtVerifier(const config::AuthConf& conf)
    // Value-initialised: every stamp 0, every entry empty.
    : conf_(conf), cache_(std::make_unique<CachedToken[]>(kTokenSets * kTokenWays)) {
  if (conf.alg == config::JwtAlg::hs256) {
    // HS256 uses nettle rather than OpenSSL: OpenSSL 3's HMAC() fetches the
    // algorithm (a lock) and allocates about 13 times per call, and even a
    // reused EVP_MAC_CTX allocates; a nettle context is a plain struct,
    // keyed here once and copied per verification.
    hmac_ = std::make_unique<hmac_sha256_ctx>();
    hmac_sha256_set_key(hmac_.get(), conf.secret.size(), reinterpret_cast<const uint8_t*>(conf.secret.data()));
    return;
  }
  if (conf.alg != config::JwtAlg::rs256) return;
  BIO* bio = BIO_new_mem_buf(conf.public_key_pem.data(), static_cast<int>(conf.public_key_pem.size()));
  if (bio) key_ = PEM_read_bio_PUBKEY(bio, nullptr, nullptr, nullptr);
  BIO_free(bio);
  if (!key_ || EVP_PKEY_base_id(key_) != EVP_PKEY_RSA) {
    EVP_PKEY_free(key_);
    throw std::runtime_error("jwt: the RS256 public key does not load");
  }
  // A larger key's signatures would not fit JwtScratch::sig_: every token
  // would be refused as malformed. The config loader refuses such keys.
  if (const int bits = EVP_PKEY_bits(key_); bits > kMaxRsaBits) {
    EVP_PKEY_free(key_);
    throw std::runtime_error(
        fmt::format("jwt: the RS256 public key has {} bits; at most {} are supported", bits, kMaxRsaBits));
  }
  // The RSA verification context is set up once (the algorithm fetched, the
  // padding and digest set); a verification hashes with nettle and runs only
  // the RSA operation. EVP_DigestVerifyInit per call set all of that up again:
  // 29.5 OpenSSL allocations per token (the mean over good and forged ones)
  // against 14.5 now.
  verify_ctx_ = EVP_PKEY_CTX_new_from_pkey(nullptr, key_, nullptr);
  if (!verify_ctx_ || EVP_PKEY_verify_init(verify_ctx_) != 1 ||
      EVP_PKEY_CTX_set_rsa_padding(verify_ctx_, RSA_PKCS1_PADDING) != 1 ||
      EVP_PKEY_CTX_set_signature_md(verify_ctx_, EVP_sha256()) != 1) {
    EVP_PKEY_CTX_free(verify_ctx_);
    EVP_PKEY_free(key_);
    throw std::runtime_error("jwt: cannot set up RS256 verification");
  }
}

JwtVerifier::~JwtVerifier() {
  EVP_PKEY_CTX_free(verify_ctx_);
  EVP_PKEY_free(key_);
}

bool JwtVerifier::check_signature(std::string_view signed_part, const unsigned char* sig,
                                  size_t sig_len) const noexcept {
  if (conf_.alg == config::JwtAlg::hs256) {
    hmac_sha256_ctx ctx = *hmac_;  // a copy: verify() stays const and reentrant
    hmac_sha256_update(&ctx, signed_part.size(), reinterpret_cast<const uint8_t*>(signed_part.data()));
    uint8_t mac[SHA256_DIGEST_SIZE];
    hmac_sha256_digest(&ctx, sizeof(mac), mac);
    return sig_len == sizeof(mac) && CRYPTO_memcmp(mac, sig, sizeof(mac)) == 0;
  }
  sha256_ctx h;
  sha256_init(&h);
  sha256_update(&h, signed_part.size(), reinterpret_cast<const uint8_t*>(signed_part.data()));
  uint8_t digest[SHA256_DIGEST_SIZE];
  sha256_digest(&h, sizeof(digest), digest);
  const bool ok = EVP_PKEY_verify(verify_ctx_, sig, sig_len, digest, sizeof(digest)) == 1;
  if (!ok) ERR_clear_error();  // a bad signature is the client's, not this thread's error to keep
  return ok;
}

JwtError JwtVerifier::check_times(double exp, double nbf, double now) const noexcept {
  const double leeway = conf_.leeway_s;
  // RFC 7519 4.1.4: valid only *before* exp, so now == exp + leeway is
  // already past it (PyJWT, jsonwebtoken and lua-resty-jwt refuse it too).
  // `now` keeps its fraction: floored to the second, a fractional exp (which
  // the RFC's NumericDate allows) would pass for up to a second too long.
  if (now >= exp + leeway) return JwtError::expired;
  if (now + leeway < nbf) return JwtError::not_yet_valid;
  return JwtError::ok;
}

JwtError JwtVerifier::verify(std::string_view token, double now_s, JwtScratch& s, std::string_view& consumer,
                             bool* cached) noexcept {
  if (cached) *cached = false;
  if (token.empty()) return JwtError::missing;
  if (token.size() > kMaxJwt) return JwtError::malformed;

  // A token that verified before is answered from the cache (its times
  // checked again: it may have expired since).
  uint8_t digest[SHA256_DIGEST_SIZE];
  CachedToken* ways = nullptr;
  {
    sha256_ctx h;
    sha256_init(&h);
    sha256_update(&h, token.size(), reinterpret_cast<const uint8_t*>(token.data()));
    sha256_digest(&h, sizeof(digest), digest);
    uint32_t set = 0;
    std::memcpy(&set, digest, sizeof(set));
    ways = &cache_[(set % kTokenSets) * kTokenWays];
    for (uint32_t w = 0; w < kTokenWays; ++w) {
      CachedToken& e = ways[w];
      if (e.stamp == 0 || CRYPTO_memcmp(e.digest, digest, sizeof(digest)) != 0) continue;
      e.stamp = ++cache_clock_;
      if (cached) *cached = true;
      const JwtError t = check_times(e.exp, e.nbf, now_s);
      if (t == JwtError::ok) consumer = std::string_view(e.who, e.who_len);
      return t;
    }
  }
  const size_t dot1 = token.find('.');
  const size_t dot2 = dot1 == std::string_view::npos ? dot1 : token.find('.', dot1 + 1);
  if (dot2 == std::string_view::npos || token.find('.', dot2 + 1) != std::string_view::npos) return JwtError::malformed;
  const std::string_view h64 = token.substr(0, dot1), c64 = token.substr(dot1 + 1, dot2 - dot1 - 1),
                         s64 = token.substr(dot2 + 1);
  if (h64.empty() || c64.empty() || s64.empty()) return JwtError::malformed;
  const ptrdiff_t hn = core::base64url_decode(h64, s.header_, kMaxJwt);
  const ptrdiff_t cn = core::base64url_decode(c64, s.claims_, kMaxJwt);
  const ptrdiff_t sn = core::base64url_decode(s64, reinterpret_cast<char*>(s.sig_), sizeof(s.sig_));
  if (hn <= 0 || cn <= 0 || sn <= 0) return JwtError::malformed;

  // The header: only "alg" matters, and it must be the configured one.
  {
    simdjson::dom::element root;
    simdjson::dom::object obj;
    if (s.parser_.parse(s.header_, static_cast<size_t>(hn), false).get(root) || root.get(obj))
      return JwtError::bad_header;
    if (named_twice(obj, {"alg", "crit"})) return JwtError::bad_header;
    std::string_view alg;
    if (obj["alg"].get(alg)) return JwtError::bad_algorithm;
    if (alg != (conf_.alg == config::JwtAlg::hs256 ? "HS256" : "RS256")) return JwtError::bad_algorithm;
    simdjson::dom::element crit;
    if (obj["crit"].get(crit) == simdjson::SUCCESS) return JwtError::bad_header;
  }
  if (!check_signature(token.substr(0, dot2), s.sig_, static_cast<size_t>(sn))) return JwtError::bad_signature;

  simdjson::dom::element root;
  simdjson::dom::object claims;
  if (s.parser_.parse(s.claims_, static_cast<size_t>(cn), false).get(root) || root.get(claims))
    return JwtError::bad_claims;
  if (named_twice(claims, {"exp", "nbf", "iss", "aud", conf_.consumer_claim})) return JwtError::bad_claims;
  simdjson::dom::element v;
  double exp = std::numeric_limits<double>::infinity(), nbf = -std::numeric_limits<double>::infinity();
  if (claims["exp"].get(v) == simdjson::SUCCESS && v.get(exp)) return JwtError::bad_claims;
  if (check_times(exp, nbf, now_s) == JwtError::expired) return JwtError::expired;  // before "nbf" is looked at
  if (claims["nbf"].get(v) == simdjson::SUCCESS && v.get(nbf)) return JwtError::bad_claims;
  if (const JwtError t = check_times(exp, nbf, now_s); t != JwtError::ok) return t;
  if (!conf_.issuer.empty()) {
    std::string_view iss;
    if (claims["iss"].get(iss) || iss != conf_.issuer) return JwtError::bad_issuer;
  }
  if (!conf_.audience.empty()) {
    bool ok = false;
    std::string_view aud;
    simdjson::dom::array list;
    if (claims["aud"].get(aud) == simdjson::SUCCESS) {
      ok = aud == conf_.audience;
    } else if (claims["aud"].get(list) == simdjson::SUCCESS) {
      for (auto item : list)
        if (item.get(aud) == simdjson::SUCCESS && aud == conf_.audience) ok = true;
    }
    if (!ok) return JwtError::bad_audience;
  }
  std::string_view who;
  if (claims[conf_.consumer_claim].get(who) || who.empty() || who.size() > config::kMaxConsumerName)
    return JwtError::no_consumer;
  for (unsigned char ch : who)
    if (ch <= 0x20 || ch >= 0x7f) return JwtError::no_consumer;
  consumer = who;
  {
    // Remember it: the empty or least recently used way of its set. A token
    // that expired or is not yet valid is not kept (it returned above); one
    // kept and later expired is answered "expired" from here, as in full.
    CachedToken* victim = &ways[0];
    for (uint32_t w = 1; w < kTokenWays; ++w)
      if (ways[w].stamp < victim->stamp) victim = &ways[w];
    std::memcpy(victim->digest, digest, sizeof(digest));
    victim->exp = exp;
    victim->nbf = nbf;
    victim->who_len = static_cast<uint8_t>(who.size());
    std::memcpy(victim->who, who.data(), who.size());
    victim->stamp = ++cache_clock_;
  }
  return JwtError::ok;
}

}  // namespace gw::api
