#include <doctest/doctest.h>

#include <crypt.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <unistd.h>

#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "../test_util.hpp"
#include "gw/api/basic_auth.hpp"
#include "gw/api/hash.hpp"
#include "gw/api/jwt.hpp"
#include "gw/config/api.hpp"
#include "gw/config/config.hpp"
#include "gw/core/base64.hpp"

using gw::api::JwtError;

namespace {

std::string b64url(std::string_view s) {
  return gw::core::base64url_encode(s);
}

std::string hs256_token(const std::string& header, const std::string& claims, const std::string& secret) {
  const std::string signing = b64url(header) + "." + b64url(claims);
  unsigned char mac[32];
  unsigned int len = 0;
  HMAC(EVP_sha256(), secret.data(), static_cast<int>(secret.size()),
       reinterpret_cast<const unsigned char*>(signing.data()), signing.size(), mac, &len);
  return signing + "." + b64url(std::string_view(reinterpret_cast<char*>(mac), len));
}

// An RSA public key of `bits` bits (n = 2^(bits-1) + 1, e = 65537): not a
// real key pair, but loaded and sized as one, without generating primes.
std::string rsa_public_pem_of(int bits) {
  BIGNUM* n = BN_new();
  BIGNUM* e = BN_new();
  BN_set_bit(n, bits - 1);
  BN_set_bit(n, 0);
  BN_set_word(e, 65537);
  OSSL_PARAM_BLD* bld = OSSL_PARAM_BLD_new();
  OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, n);
  OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, e);
  OSSL_PARAM* params = OSSL_PARAM_BLD_to_param(bld);
  EVP_PKEY_CTX* ctx = EVP_PKEY_CTX_new_from_name(nullptr, "RSA", nullptr);
  EVP_PKEY* key = nullptr;
  REQUIRE(EVP_PKEY_fromdata_init(ctx) == 1);
  REQUIRE(EVP_PKEY_fromdata(ctx, &key, EVP_PKEY_PUBLIC_KEY, params) == 1);
  REQUIRE(EVP_PKEY_bits(key) == bits);
  BIO* bio = BIO_new(BIO_s_mem());
  PEM_write_bio_PUBKEY(bio, key);
  char* p = nullptr;
  const long len = BIO_get_mem_data(bio, &p);
  std::string out(p, static_cast<size_t>(len));
  BIO_free(bio);
  EVP_PKEY_free(key);
  EVP_PKEY_CTX_free(ctx);
  OSSL_PARAM_free(params);
  OSSL_PARAM_BLD_free(bld);
  BN_free(e);
  BN_free(n);
  return out;
}

struct RsaKey {
  EVP_PKEY* key = EVP_RSA_gen(2048);
  ~RsaKey() { EVP_PKEY_free(key); }
  std::string public_pem() const {
    BIO* bio = BIO_new(BIO_s_mem());
    PEM_write_bio_PUBKEY(bio, key);
    char* p = nullptr;
    long n = BIO_get_mem_data(bio, &p);
    std::string out(p, static_cast<size_t>(n));
    BIO_free(bio);
    return out;
  }
  std::string sign(const std::string& header, const std::string& claims) const {
    const std::string signing = b64url(header) + "." + b64url(claims);
    EVP_MD_CTX* ctx = EVP_MD_CTX_new();
    size_t len = 0;
    EVP_DigestSignInit(ctx, nullptr, EVP_sha256(), nullptr, key);
    EVP_DigestSign(ctx, nullptr, &len, reinterpret_cast<const unsigned char*>(signing.data()), signing.size());
    std::string sig(len, '\0');
    EVP_DigestSign(ctx, reinterpret_cast<unsigned char*>(sig.data()), &len,
                   reinterpret_cast<const unsigned char*>(signing.data()), signing.size());
    EVP_MD_CTX_free(ctx);
    sig.resize(len);
    return signing + "." + b64url(sig);
  }
};

constexpr int64_t kNow = 1800000000;
const std::string kSecret = "0123456789abcdef0123456789abcdef";
const std::string kHs = R"({"alg":"HS256","typ":"JWT"})";

gw::config::AuthConf hs_conf() {
  gw::config::AuthConf a;
  a.type = gw::config::AuthType::jwt;
  a.alg = gw::config::JwtAlg::hs256;
  a.secret = kSecret;
  return a;
}

JwtError verify(const gw::config::AuthConf& a, const std::string& token, std::string* who = nullptr,
                int64_t now = kNow) {
  static gw::api::JwtScratch scratch;
  gw::api::JwtVerifier v(a);
  std::string_view consumer;
  JwtError e = v.verify(token, now, scratch, consumer);
  if (who) *who = std::string(consumer);
  return e;
}

std::string claims(const std::string& extra) {
  return R"({"sub":"alice")" + extra + "}";
}

}  // namespace

TEST_SUITE("api") {
  TEST_CASE("hashes: seeded limit keys, SHA-256, hex, constant-time compare") {
    const uint64_t s1 = gw::api::scope_id("req/web/api"), s2 = gw::api::scope_id("req/web/other");
    CHECK(gw::api::limit_hash(1, s1, "1.2.3.4") == gw::api::limit_hash(1, s1, "1.2.3.4"));
    CHECK(gw::api::limit_hash(1, s1, "1.2.3.4") != gw::api::limit_hash(2, s1, "1.2.3.4"));  // the seed matters
    CHECK(gw::api::limit_hash(1, s1, "1.2.3.4") != gw::api::limit_hash(1, s2, "1.2.3.4"));  // so does the scope
    CHECK(gw::api::limit_hash(1, s1, "1.2.3.4") != gw::api::limit_hash(1, s1, "1.2.3.5"));
    uint8_t d[32];
    REQUIRE(gw::api::sha256("abc", d));
    CHECK(gw::api::to_hex(d) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    uint8_t back[32];
    CHECK(gw::api::from_hex(gw::api::to_hex(d), back));
    CHECK(gw::api::equal_ct(d, back, 32));
    back[31] ^= 1;
    CHECK_FALSE(gw::api::equal_ct(d, back, 32));
    CHECK_FALSE(gw::api::from_hex("xyz", back));
  }

  TEST_CASE("jwt HS256: a good token passes and names its consumer") {
    std::string who;
    CHECK(verify(hs_conf(), hs256_token(kHs, claims(R"(,"exp":1800000100)"), kSecret), &who) == JwtError::ok);
    CHECK(who == "alice");
    // Claims may come in any order; other claims are ignored.
    CHECK(verify(hs_conf(), hs256_token(kHs, R"({"x":[1,{"y":2}],"sub":"bob","iat":1})", kSecret), &who) ==
          JwtError::ok);
    CHECK(who == "bob");
  }

  TEST_CASE("jwt HS256: verification allocates nothing, in gw or in OpenSSL") {
    REQUIRE(gw::testing::openssl_counted());
    // A secret longer than SHA-256's 64-byte block is hashed first (RFC 2104).
    for (const std::string& secret : {kSecret, std::string(100, 'k')}) {
      gw::config::AuthConf conf = hs_conf();
      conf.secret = secret;
      gw::api::JwtVerifier v(conf);
      gw::api::JwtScratch scratch;
      const std::string good = hs256_token(kHs, claims(R"(,"exp":1800000100)"), secret);
      const std::string bad = hs256_token(kHs, claims(""), secret + "x");
      std::string_view who;
      REQUIRE(v.verify(good, kNow, scratch, who) == JwtError::ok);  // warm-up
      const uint64_t signing = gw::testing::openssl_allocations();
      (void)hs256_token(kHs, claims(""), secret);
      CHECK(gw::testing::openssl_allocations() > signing);  // the hook sees OpenSSL's own HMAC() allocate
      const uint64_t news = gw::testing::allocations(), openssl = gw::testing::openssl_allocations();
      int ok = 0, refused = 0;
      for (int i = 0; i < 10000; ++i) {
        ok += v.verify(good, kNow, scratch, who) == JwtError::ok;
        refused += v.verify(bad, kNow, scratch, who) == JwtError::bad_signature;
      }
      CHECK(ok == 10000);
      CHECK(refused == 10000);
      CHECK(gw::testing::allocations() == news);
      CHECK(gw::testing::openssl_allocations() == openssl);
      bool cached = false;
      CHECK(v.verify(good, kNow, scratch, who, &cached) == JwtError::ok);
      CHECK(cached);  // a good token is kept; the bad one never is
      CHECK(v.verify(bad, kNow, scratch, who, &cached) == JwtError::bad_signature);
      CHECK_FALSE(cached);
    }
  }

  TEST_CASE("jwt RS256: a key of more than 8192 bits is refused at load, not token by token") {
    // Its signatures would not fit the verifier's buffer: every token would be "malformed".
    gw::config::AuthConf conf;
    conf.type = gw::config::AuthType::jwt;
    conf.alg = gw::config::JwtAlg::rs256;
    conf.public_key_pem = rsa_public_pem_of(8192);
    CHECK_NOTHROW(gw::api::JwtVerifier{conf});
    conf.public_key_pem = rsa_public_pem_of(8200);
    CHECK_THROWS_WITH(gw::api::JwtVerifier{conf},
                      "jwt: the RS256 public key has 8200 bits; at most 8192 are supported");
    // The config says so first.
    const std::string path = "/tmp/gwunit-rsa-" + std::to_string(::getpid()) + ".pem";
    std::ofstream(path) << conf.public_key_pem;
    auto r = gw::config::load_string(R"({"workers": 1, "shm": {"name": "g1"},
      "listeners": [{"name": "web", "listen": "127.0.0.1:8080", "protocol": "http",
        "routes": [{"name": "api", "path": "/", "upstream": "app",
                    "auth": {"type": "jwt", "algorithm": "RS256", "public_key": "@)" +
                                     path + R"("}}]}],
      "upstreams": [{"name": "app", "pools": [{"id": "p", "hosts": [{"id": "a", "address": "127.0.0.1:8081"}]}]}]})");
    ::unlink(path.c_str());
    REQUIRE(r.errors.size() == 1);
    CHECK(r.errors[0] == "listeners[0].routes[0].auth.public_key: an RSA key of 8200 bits; at most 8192 are supported");
  }

  TEST_CASE("jwt RS256: one prepared OpenSSL context serves every verification") {
    REQUIRE(gw::testing::openssl_counted());
    RsaKey rsa, other;
    gw::config::AuthConf conf;
    conf.type = gw::config::AuthType::jwt;
    conf.alg = gw::config::JwtAlg::rs256;
    conf.public_key_pem = rsa.public_pem();
    gw::api::JwtVerifier v(conf);
    gw::api::JwtScratch scratch;
    std::string_view who;
    // Forged tokens are never cached: each one is a full RSA verification.
    const std::string forged = other.sign(R"({"alg":"RS256"})", claims(""));
    REQUIRE(v.verify(forged, kNow, scratch, who) == JwtError::bad_signature);  // warm-up
    const uint64_t news = gw::testing::allocations(), openssl = gw::testing::openssl_allocations();
    int refused = 0;
    for (int i = 0; i < 200; ++i) {
      bool cached = true;
      refused += v.verify(forged, kNow, scratch, who, &cached) == JwtError::bad_signature && !cached;
    }
    CHECK(refused == 200);
    CHECK(gw::testing::allocations() == news);
    const double per = static_cast<double>(gw::testing::openssl_allocations() - openssl) / 200;
    // OpenSSL 3 allocates inside the RSA operation (14.5 on Debian 12's 3.0); setting the
    // context up per call, as EVP_DigestVerifyInit does, made it 29.5.
    CHECK(per <= 20);
  }

  TEST_CASE("jwt RS256: a token that verified is answered from the cache, allocation-free") {
    REQUIRE(gw::testing::openssl_counted());
    RsaKey rsa;
    gw::config::AuthConf conf;
    conf.type = gw::config::AuthType::jwt;
    conf.alg = gw::config::JwtAlg::rs256;
    conf.public_key_pem = rsa.public_pem();
    conf.leeway_s = 5;
    gw::api::JwtVerifier v(conf);
    gw::api::JwtScratch scratch;
    std::string_view who;
    bool cached = true;
    const std::string alice = rsa.sign(R"({"alg":"RS256"})", claims(R"(,"exp":1800000100)"));
    const std::string bob = rsa.sign(R"({"alg":"RS256"})", R"({"sub":"bob","nbf":1800000050})");
    REQUIRE(v.verify(alice, kNow, scratch, who, &cached) == JwtError::ok);
    CHECK_FALSE(cached);
    CHECK(who == "alice");

    // The same token again: from the cache, no allocation in gw or OpenSSL.
    const uint64_t news = gw::testing::allocations(), openssl = gw::testing::openssl_allocations();
    int hits = 0;
    for (int i = 0; i < 10000; ++i)
      hits += v.verify(alice, kNow, scratch, who, &cached) == JwtError::ok && cached && who == "alice";
    CHECK(hits == 10000);
    CHECK(gw::testing::allocations() == news);
    CHECK(gw::testing::openssl_allocations() == openssl);

    // Times are checked on every hit, with the leeway: it expires in the cache.
    CHECK(v.verify(alice, 1800000104, scratch, who, &cached) == JwtError::ok);
    CHECK(cached);
    CHECK(v.verify(alice, 1800000105, scratch, who, &cached) == JwtError::expired);
    CHECK(cached);
    // A token not yet valid is refused and not kept; once valid it is verified, then kept.
    CHECK(v.verify(bob, kNow, scratch, who, &cached) == JwtError::not_yet_valid);
    CHECK_FALSE(cached);
    CHECK(v.verify(bob, kNow, scratch, who, &cached) == JwtError::not_yet_valid);
    CHECK_FALSE(cached);
    CHECK(v.verify(bob, 1800000045, scratch, who, &cached) == JwtError::ok);
    CHECK_FALSE(cached);
    CHECK(who == "bob");
    CHECK(v.verify(bob, 1800000045, scratch, who, &cached) == JwtError::ok);
    CHECK(cached);
    CHECK(who == "bob");
    CHECK(v.verify(bob, 1800000044, scratch, who, &cached) == JwtError::not_yet_valid);  // a clock stepped back
    CHECK(cached);

    // A changed byte is another token: verified in full (and refused).
    std::string tampered = alice;
    tampered[tampered.size() - 2] = tampered[tampered.size() - 2] == 'A' ? 'B' : 'A';
    CHECK(v.verify(tampered, kNow, scratch, who, &cached) == JwtError::bad_signature);
    CHECK_FALSE(cached);

    // More tokens than the cache holds (256): every answer stays right, each
    // names its own consumer, and the latest ones are hits.
    std::vector<std::string> many;
    for (int i = 0; i < 600; ++i)
      many.push_back(rsa.sign(R"({"alg":"RS256"})", "{\"sub\":\"c" + std::to_string(i) + "\"}"));
    int right = 0;
    for (int round = 0; round < 2; ++round)
      for (int i = 0; i < 600; ++i)
        right += v.verify(many[static_cast<size_t>(i)], kNow, scratch, who) == JwtError::ok &&
                 who == "c" + std::to_string(i);
    CHECK(right == 1200);
    CHECK(v.verify(many.back(), kNow, scratch, who, &cached) == JwtError::ok);
    CHECK(cached);
    CHECK(who == "c599");
  }

  TEST_CASE("key-auth and basic-auth hash without allocating") {
    REQUIRE(gw::testing::openssl_counted());
    char salt[64];
    REQUIRE(crypt_gensalt_rn("$2b$", 4, nullptr, 0, salt, sizeof(salt)));
    struct crypt_data cd {};
    gw::config::AuthConf a;
    a.type = gw::config::AuthType::basic;
    a.users = {{"alice", crypt_r("s3cret", salt, &cd)}};
    gw::api::BasicAuth auth(a, 1);
    gw::api::BasicCache cache;
    std::string_view user;
    REQUIRE(auth.verify("alice:s3cret", cache, user) == gw::api::BasicAuth::Result::ok);
    const uint64_t news = gw::testing::allocations(), openssl = gw::testing::openssl_allocations();
    int ok = 0;
    uint8_t d[32];
    for (int i = 0; i < 10000; ++i) {
      ok += auth.verify("alice:s3cret", cache, user) == gw::api::BasicAuth::Result::cached;
      ok += gw::api::sha256("a presented key-auth key", d);  // key-auth's per-request hash
    }
    CHECK(ok == 20000);
    CHECK(gw::testing::allocations() == news);
    CHECK(gw::testing::openssl_allocations() == openssl);
  }

  TEST_CASE("jwt: a bad signature, another secret, a changed claim") {
    const std::string good = hs256_token(kHs, claims(""), kSecret);
    std::string flipped = good;
    flipped.back() = flipped.back() == 'A' ? 'Q' : 'A';
    CHECK(verify(hs_conf(), flipped) != JwtError::ok);
    CHECK(verify(hs_conf(), hs256_token(kHs, claims(""), kSecret + "x")) == JwtError::bad_signature);
    // The claims of another token under this token's signature.
    const std::string other = hs256_token(kHs, R"({"sub":"mallory"})", kSecret);
    const std::string spliced = good.substr(0, good.find('.') + 1) +
                                other.substr(other.find('.') + 1, other.rfind('.') - other.find('.') - 1) +
                                good.substr(good.rfind('.'));
    CHECK(verify(hs_conf(), spliced) == JwtError::bad_signature);
  }

  TEST_CASE("jwt: exp and nbf with the leeway") {
    auto a = hs_conf();  // leeway 60
    CHECK(verify(a, hs256_token(kHs, claims(",\"exp\":" + std::to_string(kNow - 100)), kSecret)) == JwtError::expired);
    CHECK(verify(a, hs256_token(kHs, claims(",\"exp\":" + std::to_string(kNow - 30)), kSecret)) == JwtError::ok);
    CHECK(verify(a, hs256_token(kHs, claims(",\"exp\":" + std::to_string(kNow - 60)), kSecret)) == JwtError::expired);
    CHECK(verify(a, hs256_token(kHs, claims(",\"exp\":" + std::to_string(kNow - 59)), kSecret)) == JwtError::ok);
    CHECK(verify(a, hs256_token(kHs, claims(",\"nbf\":" + std::to_string(kNow + 100)), kSecret)) ==
          JwtError::not_yet_valid);
    CHECK(verify(a, hs256_token(kHs, claims(",\"nbf\":" + std::to_string(kNow + 30)), kSecret)) == JwtError::ok);
    a.leeway_s = 0;
    CHECK(verify(a, hs256_token(kHs, claims(",\"exp\":" + std::to_string(kNow - 1)), kSecret)) == JwtError::expired);
    // RFC 7519 4.1.4: the time must be *before* exp: at now == exp it is past.
    CHECK(verify(a, hs256_token(kHs, claims(",\"exp\":" + std::to_string(kNow)), kSecret)) == JwtError::expired);
    CHECK(verify(a, hs256_token(kHs, claims(",\"exp\":" + std::to_string(kNow + 1)), kSecret)) == JwtError::ok);
    CHECK(verify(a, hs256_token(kHs, claims(",\"nbf\":" + std::to_string(kNow)), kSecret)) == JwtError::ok);
    CHECK(verify(a, hs256_token(kHs, claims(",\"nbf\":" + std::to_string(kNow + 1)), kSecret)) ==
          JwtError::not_yet_valid);
    CHECK(verify(a, hs256_token(kHs, claims(",\"exp\":1800000000.5"), kSecret)) ==
          JwtError::ok);  // NumericDate may be fractional
    CHECK(verify(a, hs256_token(kHs, claims(",\"exp\":\"soon\""), kSecret)) == JwtError::bad_claims);
  }

  TEST_CASE("jwt: the time keeps its fraction against a fractional exp or nbf") {
    // The clock was floored to the second: a token whose exp is x.5 passed
    // until x + 1, up to a second after it expired, with leeway 0.
    auto a = hs_conf();
    a.leeway_s = 0;
    static gw::api::JwtScratch scratch;
    std::string_view who;
    const std::string expiring = hs256_token(kHs, claims(",\"exp\":1800000000.5"), kSecret);
    const std::string starting = hs256_token(kHs, claims(",\"nbf\":1800000000.5"), kSecret);
    gw::api::JwtVerifier v(a);
    CHECK(v.verify(expiring, 1800000000.4, scratch, who) == JwtError::ok);
    CHECK(v.verify(expiring, 1800000000.5, scratch, who) == JwtError::expired);
    CHECK(v.verify(expiring, 1800000000.6, scratch, who) == JwtError::expired);  // (answered from the cache)
    gw::api::JwtVerifier fresh(a);
    CHECK(fresh.verify(expiring, 1800000000.6, scratch, who) == JwtError::expired);  // (and in full)
    CHECK(fresh.verify(starting, 1800000000.4, scratch, who) == JwtError::not_yet_valid);
    CHECK(fresh.verify(starting, 1800000000.6, scratch, who) == JwtError::ok);  // not refused until x + 1
  }

  TEST_CASE("jwt: alg none and algorithm confusion are refused") {
    // "none" with an empty signature, and with a valid HS256 signature.
    const std::string none = b64url(R"({"alg":"none"})") + "." + b64url(claims("")) + ".";
    CHECK(verify(hs_conf(), none) == JwtError::malformed);
    CHECK(verify(hs_conf(), hs256_token(R"({"alg":"none"})", claims(""), kSecret)) == JwtError::bad_algorithm);
    CHECK(verify(hs_conf(), hs256_token(R"({"alg":"hs256"})", claims(""), kSecret)) == JwtError::bad_algorithm);
    CHECK(verify(hs_conf(), hs256_token(R"({"typ":"JWT"})", claims(""), kSecret)) == JwtError::bad_algorithm);
    // RS256 configured: an HS256 token MACed with the public key's PEM text is refused.
    RsaKey rsa;
    gw::config::AuthConf a;
    a.type = gw::config::AuthType::jwt;
    a.alg = gw::config::JwtAlg::rs256;
    a.public_key_pem = rsa.public_pem();
    CHECK(verify(a, hs256_token(kHs, claims(""), a.public_key_pem)) == JwtError::bad_algorithm);
    std::string who;
    CHECK(verify(a, rsa.sign(R"({"alg":"RS256","typ":"JWT"})", claims("")), &who) == JwtError::ok);
    CHECK(who == "alice");
    RsaKey other;
    CHECK(verify(a, other.sign(R"({"alg":"RS256"})", claims(""))) == JwtError::bad_signature);
    CHECK(verify(a, rsa.sign(R"({"alg":"RS256","crit":["exp"]})", claims(""))) == JwtError::bad_header);
  }

  TEST_CASE("jwt: a header parameter or claim the check reads, named twice, is refused") {
    // RFC 7515 5.2 and RFC 7519 4: refuse, or take the lexically last. simdjson
    // finds the first; the host's JSON parser (PyJWT, jsonwebtoken) keeps the
    // last, and would act on a consumer or an exp gw never checked.
    auto a = hs_conf();
    const std::string exp_ok = std::to_string(kNow + 3600), exp_old = std::to_string(kNow - 3600);
    CHECK(verify(a, hs256_token(R"({"alg":"HS256","alg":"none"})", claims(""), kSecret)) == JwtError::bad_header);
    CHECK(verify(a, hs256_token(R"({"alg":"HS256","crit":[],"crit":[]})", claims(""), kSecret)) ==
          JwtError::bad_header);
    CHECK(verify(a, hs256_token(kHs, R"({"sub":"alice","sub":"admin"})", kSecret)) == JwtError::bad_claims);
    CHECK(verify(a, hs256_token(kHs, claims(",\"exp\":" + exp_ok + ",\"exp\":" + exp_old), kSecret)) ==
          JwtError::bad_claims);
    CHECK(verify(a, hs256_token(kHs, claims(R"(,"nbf":1,"nbf":1)"), kSecret)) == JwtError::bad_claims);
    a.issuer = "https://id.example";
    a.audience = "gw";
    CHECK(verify(a, hs256_token(kHs, claims(R"(,"iss":"https://id.example","iss":"x","aud":"gw")"), kSecret)) ==
          JwtError::bad_claims);
    CHECK(verify(a, hs256_token(kHs, claims(R"(,"iss":"https://id.example","aud":"gw","aud":"x")"), kSecret)) ==
          JwtError::bad_claims);
    // Names the check does not read may repeat (the host reads them unchecked anyway),
    // and a name spelt with an escape is the same name.
    std::string who;
    CHECK(verify(a, hs256_token(kHs, claims(R"(,"iss":"https://id.example","aud":"gw","x":1,"x":2)"), kSecret), &who) ==
          JwtError::ok);
    CHECK(who == "alice");
    CHECK(verify(a, hs256_token(kHs, R"({"sub":"alice","iss":"https://id.example","aud":"gw","s\u0075b":"admin"})",
                                kSecret)) == JwtError::bad_claims);
    CHECK(verify(hs_conf(), hs256_token(R"({"alg":"HS256","typ":"JWT","typ":"JWT"})", claims(""), kSecret)) ==
          JwtError::ok);
  }

  TEST_CASE("jwt: issuer, audience, the consumer claim") {
    auto a = hs_conf();
    a.issuer = "https://id.example";
    a.audience = "gw";
    CHECK(verify(a, hs256_token(kHs, claims(R"(,"iss":"https://id.example","aud":"gw")"), kSecret)) == JwtError::ok);
    CHECK(verify(a, hs256_token(kHs, claims(R"(,"iss":"https://id.example","aud":["x","gw"])"), kSecret)) ==
          JwtError::ok);
    CHECK(verify(a, hs256_token(kHs, claims(R"(,"iss":"https://evil","aud":"gw")"), kSecret)) == JwtError::bad_issuer);
    CHECK(verify(a, hs256_token(kHs, claims(R"(,"iss":"https://id.example","aud":"other")"), kSecret)) ==
          JwtError::bad_audience);
    CHECK(verify(a, hs256_token(kHs, claims(R"(,"iss":"https://id.example")"), kSecret)) == JwtError::bad_audience);
    auto b = hs_conf();
    b.consumer_claim = "client_id";
    std::string who;
    CHECK(verify(b, hs256_token(kHs, R"({"client_id":"svc-7"})", kSecret), &who) == JwtError::ok);
    CHECK(who == "svc-7");
    CHECK(verify(b, hs256_token(kHs, R"({"sub":"alice"})", kSecret)) == JwtError::no_consumer);
    CHECK(verify(hs_conf(), hs256_token(kHs, R"({"sub":42})", kSecret)) == JwtError::no_consumer);
    CHECK(verify(hs_conf(), hs256_token(kHs, R"({"sub":"a b"})", kSecret)) == JwtError::no_consumer);
  }

  TEST_CASE("jwt: malformed tokens") {
    const std::string good = hs256_token(kHs, claims(""), kSecret);
    CHECK(verify(hs_conf(), "") == JwtError::missing);
    CHECK(verify(hs_conf(), "abc") == JwtError::malformed);
    CHECK(verify(hs_conf(), good.substr(0, good.rfind('.'))) == JwtError::malformed);
    CHECK(verify(hs_conf(), good + ".x") == JwtError::malformed);
    CHECK(verify(hs_conf(), good + "=") == JwtError::malformed);
    CHECK(verify(hs_conf(), std::string(9000, 'a') + "." + "b.c") == JwtError::malformed);
    CHECK(verify(hs_conf(), hs256_token("[1,2]", claims(""), kSecret)) == JwtError::bad_header);
    CHECK(verify(hs_conf(), hs256_token("{not json", claims(""), kSecret)) == JwtError::bad_header);
    CHECK(verify(hs_conf(), hs256_token(kHs, "[]", kSecret)) == JwtError::bad_claims);
  }

  TEST_CASE("basic-auth: bcrypt and SHA-crypt, the worker cache") {
    char salt[64];
    REQUIRE(crypt_gensalt_rn("$2b$", 4, nullptr, 0, salt, sizeof(salt)));
    struct crypt_data cd {};
    const std::string bcrypt = crypt_r("s3cret", salt, &cd);
    REQUIRE(crypt_gensalt_rn("$6$", 5000, nullptr, 0, salt, sizeof(salt)));
    const std::string sha512 = crypt_r("hunter2:x", salt, &cd);
    gw::config::AuthConf a;
    a.type = gw::config::AuthType::basic;
    a.users = {{"alice", bcrypt}, {"bob", sha512}};
    gw::api::BasicAuth auth(a, 1);
    gw::api::BasicCache cache;
    std::string_view user;
    using R = gw::api::BasicAuth::Result;
    CHECK(auth.verify("alice:s3cret", cache, user) == R::ok);
    CHECK(user == "alice");
    CHECK(auth.verify("alice:s3cret", cache, user) == R::cached);
    CHECK(auth.verify("bob:hunter2:x", cache, user) == R::ok);  // a password may hold ':'
    CHECK(user == "bob");
    CHECK(auth.verify("alice:wrong", cache, user) == R::bad);
    CHECK(auth.verify("alice:wrong", cache, user) == R::bad);  // failures are never cached
    // An unknown user pays a crypt, as a wrong password does: its 401 must not
    // come back sooner and tell a client which names exist.
    const uint64_t hashes = cache.hashes();
    CHECK(auth.verify("carol:s3cret", cache, user) == R::bad);
    CHECK(cache.hashes() == hashes + 1);
    CHECK(auth.verify("alice:wrong", cache, user) == R::bad);
    CHECK(cache.hashes() == hashes + 2);
    CHECK(auth.verify("alice:s3cret", cache, user) == R::cached);
    CHECK(cache.hashes() == hashes + 2);
    CHECK(auth.verify("alice", cache, user) == R::bad);
    CHECK(auth.verify("bob:s3cret", cache, user) == R::bad);  // alice's password is not bob's
    // Another route with the same users shares the cache without sharing entries.
    gw::api::BasicAuth other(a, 2);
    CHECK(other.verify("alice:s3cret", cache, user) == R::ok);
    CHECK(other.verify("alice:s3cret", cache, user) == R::cached);
  }
}
