// Micro-benchmarks of the per-request auth checks: JWT RS256 and HS256 verified
// in full (1,024 distinct tokens in turn, four times what the verifier's cache
// holds, so that every one misses) and answered from the cache (one token
// again), key-auth's SHA-256 of the presented key, and a basic-auth cache hit. Run: build-release/gw-auth-bench (Google
// Benchmark flags apply).

#include <benchmark/benchmark.h>
#include <crypt.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>

#include <string>
#include <vector>

#include "gw/api/basic_auth.hpp"
#include "gw/api/hash.hpp"
#include "gw/api/jwt.hpp"
#include "gw/core/base64.hpp"

namespace {

constexpr int64_t kNow = 1800000000;
constexpr size_t kTokens = 1024;

std::string claims(size_t i) {
  return R"({"sub":"client-)" + std::to_string(i) + R"(","iss":"idp","exp":1800000100})";
}

std::string signing_input(const std::string& header, size_t i) {
  return gw::core::base64url_encode(header) + "." + gw::core::base64url_encode(claims(i));
}

struct Rsa {
  EVP_PKEY* key = EVP_RSA_gen(2048);
  ~Rsa() { EVP_PKEY_free(key); }
  std::string pem() const {
    BIO* bio = BIO_new(BIO_s_mem());
    PEM_write_bio_PUBKEY(bio, key);
    char* p = nullptr;
    const long n = BIO_get_mem_data(bio, &p);
    std::string out(p, static_cast<size_t>(n));
    BIO_free(bio);
    return out;
  }
  std::string token(size_t i = 0) const {
    const std::string in = signing_input(R"({"alg":"RS256","typ":"JWT"})", i);
    EVP_MD_CTX* ctx = EVP_MD_CTX_new();
    size_t len = 0;
    EVP_DigestSignInit(ctx, nullptr, EVP_sha256(), nullptr, key);
    EVP_DigestSign(ctx, nullptr, &len, reinterpret_cast<const unsigned char*>(in.data()), in.size());
    std::string sig(len, '\0');
    EVP_DigestSign(ctx, reinterpret_cast<unsigned char*>(sig.data()), &len,
                   reinterpret_cast<const unsigned char*>(in.data()), in.size());
    EVP_MD_CTX_free(ctx);
    return in + "." + gw::core::base64url_encode(sig);
  }
};

gw::config::AuthConf rs_conf(const Rsa& rsa) {
  gw::config::AuthConf c;
  c.type = gw::config::AuthType::jwt;
  c.alg = gw::config::JwtAlg::rs256;
  c.public_key_pem = rsa.pem();
  return c;
}

// Every token in turn, each a miss (kTokens is 4x the cache).
void verify_full(benchmark::State& st, const gw::config::AuthConf& conf, const std::vector<std::string>& tokens) {
  gw::api::JwtVerifier v(conf);
  gw::api::JwtScratch scratch;
  std::string_view who;
  bool cached = false;
  size_t i = 0, hits = 0;
  for (auto _ : st) {
    benchmark::DoNotOptimize(v.verify(tokens[i++ % tokens.size()], kNow, scratch, who, &cached));
    hits += cached;
  }
  if (hits) st.SkipWithError("a token was answered from the cache");
}

// One token again and again, each a hit after the first.
void verify_cached(benchmark::State& st, const gw::config::AuthConf& conf, const std::string& token) {
  gw::api::JwtVerifier v(conf);
  gw::api::JwtScratch scratch;
  std::string_view who;
  bool cached = false;
  if (v.verify(token, kNow, scratch, who) != gw::api::JwtError::ok) st.SkipWithError("token refused");
  for (auto _ : st) benchmark::DoNotOptimize(v.verify(token, kNow, scratch, who, &cached));
  if (!cached) st.SkipWithError("not answered from the cache");
}

void BM_jwt_rs256_full(benchmark::State& st) {
  Rsa rsa;
  std::vector<std::string> tokens;
  for (size_t i = 0; i < kTokens; ++i) tokens.push_back(rsa.token(i));
  verify_full(st, rs_conf(rsa), tokens);
}
BENCHMARK(BM_jwt_rs256_full);

void BM_jwt_rs256_cached(benchmark::State& st) {
  Rsa rsa;
  verify_cached(st, rs_conf(rsa), rsa.token());
}
BENCHMARK(BM_jwt_rs256_cached);

std::string hs256_token(const std::string& secret, size_t i) {
  const std::string in = signing_input(R"({"alg":"HS256","typ":"JWT"})", i);
  unsigned char mac[32];
  unsigned int len = 0;
  HMAC(EVP_sha256(), secret.data(), static_cast<int>(secret.size()), reinterpret_cast<const unsigned char*>(in.data()),
       in.size(), mac, &len);
  return in + "." + gw::core::base64url_encode(std::string_view(reinterpret_cast<char*>(mac), len));
}

gw::config::AuthConf hs_conf() {
  gw::config::AuthConf conf;
  conf.type = gw::config::AuthType::jwt;
  conf.alg = gw::config::JwtAlg::hs256;
  conf.secret = "0123456789abcdef0123456789abcdef";
  return conf;
}

void BM_jwt_hs256_full(benchmark::State& st) {
  const gw::config::AuthConf conf = hs_conf();
  std::vector<std::string> tokens;
  for (size_t i = 0; i < kTokens; ++i) tokens.push_back(hs256_token(conf.secret, i));
  verify_full(st, conf, tokens);
}
BENCHMARK(BM_jwt_hs256_full);

void BM_jwt_hs256_cached(benchmark::State& st) {
  const gw::config::AuthConf conf = hs_conf();
  verify_cached(st, conf, hs256_token(conf.secret, 0));
}
BENCHMARK(BM_jwt_hs256_cached);

void BM_key_auth_sha256(benchmark::State& st) {
  const std::string key(40, 'k');
  uint8_t d[32];
  for (auto _ : st) {
    benchmark::DoNotOptimize(gw::api::sha256(key, d));
    benchmark::ClobberMemory();
  }
}
BENCHMARK(BM_key_auth_sha256);

// What key-auth's hash cost with OpenSSL (EVP_Digest: a context allocated and
// the algorithm fetched per call), for comparison.
void BM_sha256_openssl_evp_digest(benchmark::State& st) {
  const std::string key(40, 'k');
  unsigned char d[32];
  unsigned int len = 0;
  for (auto _ : st) {
    benchmark::DoNotOptimize(EVP_Digest(key.data(), key.size(), d, &len, EVP_sha256(), nullptr));
    benchmark::ClobberMemory();
  }
}
BENCHMARK(BM_sha256_openssl_evp_digest);

void BM_basic_auth_cached(benchmark::State& st) {
  char salt[64];
  struct crypt_data cd {};
  if (!crypt_gensalt_rn("$2b$", 4, nullptr, 0, salt, sizeof(salt))) st.SkipWithError("crypt_gensalt_rn");
  gw::config::AuthConf a;
  a.type = gw::config::AuthType::basic;
  a.users = {{"alice", crypt_r("s3cret", salt, &cd)}};
  gw::api::BasicAuth auth(a, 1);
  gw::api::BasicCache cache;
  std::string_view user;
  auth.verify("alice:s3cret", cache, user);
  for (auto _ : st) benchmark::DoNotOptimize(auth.verify("alice:s3cret", cache, user));
}
BENCHMARK(BM_basic_auth_cached);

}  // namespace

BENCHMARK_MAIN();
