#include <doctest/doctest.h>

#include <crypt.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "../test_util.hpp"
#include "gw/api/guard.hpp"
#include "gw/config/config.hpp"
#include "gw/core/base64.hpp"
#include "gw/core/clock.hpp"
#include "gw/core/log.hpp"
#include "gw/shm/table.hpp"

using gw::api::query_name;
using gw::api::QueryName;

namespace {

// The guard's limit_req clock (microseconds), moved by the tests.
uint64_t g_fake_us = 1'000'000'000;
uint64_t fake_clock_us() noexcept {
  return g_fake_us;
}

// One http listener "web" with one route "api" whose keys are `route_extra`,
// a Guard over its own segment (worker 0), and requests put to it.
struct GuardRig {
  gw::testing::TempSegment ts{caps()};
  gw::config::Config cfg;
  std::unique_ptr<gw::api::Guard> guard;
  gw::api::ConsumerName consumer;

  explicit GuardRig(const std::string& route_extra, const std::string& top = "") {
    auto r = gw::config::load_string(R"({"workers": 1, "shm": {"name": "g1"})" + top + R"(,
      "listeners": [{"name": "web", "listen": "127.0.0.1:8080", "protocol": "http",
                     "routes": [{"name": "api", "path": "/", "upstream": "app")" +
                                     route_extra + R"(}]}],
      "upstreams": [{"name": "app", "pools": [{"id": "p", "hosts": [{"id": "a", "address": "127.0.0.1:8081"}]}]}]})");
    std::string errors;
    for (const auto& e : r.errors) errors += e + "\n";
    REQUIRE_MESSAGE(r.ok(), errors);
    cfg = std::move(r.config);
    guard = std::make_unique<gw::api::Guard>(cfg, ts.seg, 0, &fake_clock_us);
    gw::shm::Table t(cfg.shm.caps);
    gw::config::build_table(cfg, t);
    guard->refresh(t);
  }
  static gw::shm::Caps caps() {
    gw::shm::Caps c{4, 8, 16};
    c.max_limit_keys = 64;
    return c;
  }
  /// The guard's answer for a request with these fields (status 0: pass).
  /// Its now_ms is the fake clock's.
  gw::api::Verdict verdict(std::vector<gw::http::Field> fields, std::string_view target = "/",
                           std::string_view ip = "10.0.0.1") {
    gw::http::Head h;
    h.target = target;
    h.fields = fields;
    return guard->check(0, 0, {&h, target, ip}, consumer, g_fake_us / 1000);
  }
  int check(std::vector<gw::http::Field> fields, std::string_view target = "/", std::string_view ip = "10.0.0.1") {
    return verdict(std::move(fields), target, ip).status;
  }
  const gw::shm::GuardCounters& counters() const { return ts.seg.guard(0); }
};

gw::http::Field field(std::string_view name, std::string_view value) {
  gw::http::Field f;
  f.name = name;
  f.value = value;
  return f;
}

const std::string kSecret = "0123456789abcdef0123456789abcdef";

std::string hs256(const std::string& claims) {
  const std::string signing =
      gw::core::base64url_encode(R"({"alg":"HS256","typ":"JWT"})") + "." + gw::core::base64url_encode(claims);
  unsigned char mac[32];
  unsigned int len = 0;
  HMAC(EVP_sha256(), kSecret.data(), static_cast<int>(kSecret.size()),
       reinterpret_cast<const unsigned char*>(signing.data()), signing.size(), mac, &len);
  return signing + "." + gw::core::base64url_encode(std::string_view(reinterpret_cast<char*>(mac), len));
}

// The worker log's lines written while `fn` runs (at level info).
template <typename Fn>
std::string logged(Fn&& fn) {
  const std::string path = "/tmp/gw_guard_log_" + std::to_string(::getpid()) + ".log";
  std::remove(path.c_str());
  gw::core::log_open(path);
  const gw::core::LogLevel level = gw::core::log_level();
  gw::core::log_set_level(gw::core::LogLevel::info);
  fn();
  gw::core::log_open("");
  gw::core::log_set_level(level);
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  std::remove(path.c_str());
  return ss.str();
}

}  // namespace

TEST_SUITE("api") {
  TEST_CASE("query argument names are compared as the host decodes them") {
    CHECK(query_name("apikey", "apikey") == QueryName::match);
    CHECK(query_name("api%6Bey", "apikey") == QueryName::match);
    CHECK(query_name("%61%70%69%6b%65%79", "apikey") == QueryName::match);
    CHECK(query_name("apikeys", "apikey") == QueryName::other);
    CHECK(query_name("apike", "apikey") == QueryName::other);
    CHECK(query_name("", "apikey") == QueryName::other);
    CHECK(query_name("APIKEY", "apikey") == QueryName::other);   // names are case-sensitive
    CHECK(query_name("api+key", "apikey") == QueryName::other);  // '+' is a space
    CHECK(query_name("api+key", "api key") == QueryName::match);
    CHECK(query_name("api%2Bkey", "api+key") == QueryName::match);
    CHECK(query_name("api%2", "apikey") == QueryName::malformed);
    CHECK(query_name("apikey%", "apikey") == QueryName::malformed);
    CHECK(query_name("api%zzkey", "apikey") == QueryName::malformed);
    CHECK(query_name("other%g0", "apikey") == QueryName::malformed);  // whatever it is, it is ambiguous
  }

  TEST_CASE("guard: a jwt cookie named twice is refused, blanks around the name or not") {
    // Go's net/http, Node's cookie, Python's http.cookies and Werkzeug read
    // "jwt =B" as the cookie "jwt": a host that reads the token itself (for
    // its claims, trusting the gateway's check) would take the one gw never
    // checked.
    GuardRig g(R"(, "auth": {"type": "jwt", "algorithm": "HS256", "secret": ")" + kSecret + R"(", "cookie": "jwt"})");
    const std::string good = hs256(R"({"sub":"alice"})"), forged = "forged.token.here";
    CHECK(g.check({field("Cookie", "jwt=" + good)}) == 0);
    CHECK(g.consumer.view() == "alice");
    CHECK(g.check({field("Cookie", "jwt=" + good + "; jwt=" + forged)}) == 400);
    CHECK(g.check({field("Cookie", "jwt=" + good + "; jwt =" + forged)}) == 400);
    CHECK(g.check({field("Cookie", "jwt\t=" + forged + "; jwt=" + good)}) == 400);
    CHECK(g.check({field("Cookie", "jwt=" + good), field("Cookie", "jwt = " + forged)}) == 400);
    // Alone, "jwt =TOKEN" is the jwt cookie, as the host reads it.
    CHECK(g.check({field("Cookie", "a=1; jwt =" + good)}) == 0);
    CHECK(g.consumer.view() == "alice");
    CHECK(g.check({field("Cookie", "xjwt=" + good)}) == 401);
  }

  TEST_CASE("query argument names as PHP reads them are alike") {
    CHECK(query_name("%20apikey", "apikey") == QueryName::alike);  // leading spaces dropped
    CHECK(query_name("++apikey", "apikey") == QueryName::alike);
    CHECK(query_name("api.key", "api_key") == QueryName::alike);  // ' ' and '.' read as '_'
    CHECK(query_name("api+key", "api_key") == QueryName::alike);
    CHECK(query_name("api_key", "api.key") == QueryName::alike);  // PHP reads the configured name so too
    CHECK(query_name("apikey[]", "apikey") == QueryName::alike);  // an array named apikey
    CHECK(query_name("apikey[x", "apikey") == QueryName::alike);
    CHECK(query_name("apikey%00x", "apikey") == QueryName::alike);
    CHECK(query_name("api_key", "api_key") == QueryName::match);
    CHECK(query_name("api.key", "apikey") == QueryName::other);
    CHECK(query_name("apikey%20", "apikey") == QueryName::other);  // trailing spaces are PHP's too ("apikey_")
    // A '[' with no ']' after it is PHP's '_', as are the ' ', '.' and '[' behind it.
    CHECK(query_name("api[key", "api_key") == QueryName::alike);
    CHECK(query_name("api%5Bkey", "api_key") == QueryName::alike);
    CHECK(query_name("a[b.c", "a_b_c") == QueryName::alike);
    CHECK(query_name("api[key]", "api_key") == QueryName::other);  // an array named "api"
    CHECK(query_name("apikey[x]", "apikey") == QueryName::alike);  // an array named "apikey"
  }

  TEST_CASE("query argument names as Rack 2 reads them are alike") {
    // normalize_params: leading '[' and ']' skipped, the key ends at the next
    // bracket, trailing ']' dropped.
    CHECK(query_name("[apikey", "apikey") == QueryName::alike);
    CHECK(query_name("]apikey", "apikey") == QueryName::alike);
    CHECK(query_name("apikey]", "apikey") == QueryName::alike);
    CHECK(query_name("%5Bapikey%5D", "apikey") == QueryName::alike);
    CHECK(query_name("[[apikey" + std::string(1000, ']'), "apikey") == QueryName::alike);
    CHECK(query_name("apikey[x", "apikey") == QueryName::alike);   // a hash under "apikey"
    CHECK(query_name("apikey[", "apikey") == QueryName::other);    // Rack's key is then "apikey[", PHP's "apikey_"
    CHECK(query_name("[api]key", "apikey") == QueryName::other);   // Rack: "api", with a child "key"
    CHECK(query_name("x[apikey]", "apikey") == QueryName::other);  // a hash "x"
  }

  TEST_CASE("guard: a query key named twice as some host reads it is refused") {
    GuardRig g(R"(, "auth": {"type": "key-auth", "query": "api_key"})",
               R"(, "consumers": [{"name": "alice", "key": "alice-key"}])");
    CHECK(g.check({}, "/?api_key=alice-key") == 0);
    CHECK(g.consumer.view() == "alice");
    CHECK(g.check({}, "/?api_key=wrong") == 401);
    CHECK(g.check({}, "/?api_key=alice-key&api_k%65y=x") == 400);  // as before: percent-decoded
    // PHP's $_GET["api_key"] is the last of these; gw checks the first.
    CHECK(g.check({}, "/?api_key=alice-key&api.key=x") == 400);
    CHECK(g.check({}, "/?api_key=alice-key&%20api_key=x") == 400);
    CHECK(g.check({}, "/?api_key=alice-key&api_key[]=x") == 400);
    // PHP's "api_key" too (a '[' without a ']'), and Rack 2's.
    CHECK(g.check({}, "/?api_key=alice-key&api[key=x") == 400);
    CHECK(g.check({}, "/?api_key=alice-key&api%5Bkey=x") == 400);
    CHECK(g.check({}, "/?api_key=alice-key&api_key]=x") == 400);
    CHECK(g.check({}, "/?%5Bapi_key%5D=x&api_key=alice-key") == 400);
    // Rack 2 and Python before 3.9.2 also split at ';'.
    CHECK(g.check({}, "/?api_key=alice-key;api_key=x") == 400);
    CHECK(g.check({}, "/?a=1;api_key=x&api_key=alice-key") == 400);
    // Other arguments around it, ';' in them too, are fine.
    CHECK(g.check({}, "/?a=1;b=2&api_key=alice-key&api.other=3") == 0);
    CHECK(g.consumer.view() == "alice");
  }

  TEST_CASE("guard: a cookie credential named twice as PHP reads cookie names is refused") {
    GuardRig g(R"(, "auth": {"type": "jwt", "algorithm": "HS256", "secret": ")" + kSecret +
               R"(", "cookie": "access_token"})");
    const std::string good = hs256(R"({"sub":"alice"})"), forged = "forged.token.here";
    CHECK(g.check({field("Cookie", "access_token=" + good + "; other.name=1")}) == 0);
    CHECK(g.consumer.view() == "alice");
    // PHP's $_COOKIE["access_token"] is the last of these; gw checks the first.
    CHECK(g.check({field("Cookie", "access_token=" + good + "; access.token=" + forged)}) == 400);
    CHECK(g.check({field("Cookie", "access_token=" + good + "; access%5Ftoken=" + forged)}) == 400);
    CHECK(g.check({field("Cookie", "access_token=" + good + "; access token=" + forged)}) == 400);
    CHECK(g.check({field("Cookie", "access[token=" + forged + "; access_token=" + good)}) == 400);
  }

  TEST_CASE("guard: a cookie credential after a blank or ',' in another pair is a second one") {
    // Python's http.cookies ends a pair at a blank and takes ',' into a
    // value: "x=1 jwt=B" holds the cookie jwt=B there (the last one wins).
    GuardRig g(R"(, "auth": {"type": "jwt", "algorithm": "HS256", "secret": ")" + kSecret + R"(", "cookie": "jwt"})");
    const std::string good = hs256(R"({"sub":"alice"})"), forged = "forged.token.here";
    CHECK(g.check({field("Cookie", "jwt=" + good + "; x=1 jwt=" + forged)}) == 400);
    CHECK(g.check({field("Cookie", "jwt=" + good + "; x=1, jwt=" + forged)}) == 400);
    CHECK(g.check({field("Cookie", "x=1 jwt=" + forged + "; jwt=" + good)}) == 400);
    CHECK(g.check({field("Cookie", "jwt=" + good + " jwt=" + forged)}) == 400);
    // One jwt among other cookies, with the usual "; " between them, is fine.
    CHECK(g.check({field("Cookie", "a=1; jwt=" + good + "; b=2")}) == 0);
    CHECK(g.consumer.view() == "alice");
    CHECK(g.check({field("Cookie", "a=1;jwt=" + good)}) == 0);
  }

  TEST_CASE("guard: limit_req answers 429 with Retry-After past rate and burst, and refills with time") {
    GuardRig g(R"(, "limit_req": {"key": "ip", "rate": 2, "burst": 1})");
    g_fake_us += 10'000'000;
    CHECK(g.check({}) == 0);
    CHECK(g.check({}) == 0);  // the burst
    const gw::api::Verdict v = g.verdict({});
    CHECK(v.status == 429);
    CHECK(v.headers == "Retry-After: 1\r\n");
    CHECK(g.counters().req_limited.load() == 1);
    CHECK(g.check({}, "/", "10.0.0.2") == 0);  // another client has its own bucket
    g_fake_us += 499'000;
    CHECK(g.check({}) == 429);  // 2/s: one request back after 500 ms, not before
    g_fake_us += 1'000;
    CHECK(g.check({}) == 0);
    CHECK(g.check({}) == 429);
  }

  TEST_CASE("guard: a slow rate's Retry-After is the wait in whole seconds, rounded up") {
    GuardRig g(R"(, "limit_req": {"key": "header:X-Key", "rate": 0.2, "burst": 0})");
    g_fake_us += 10'000'000;
    CHECK(g.check({field("X-Key", "k")}) == 0);
    g_fake_us += 1'500'000;
    const gw::api::Verdict v = g.verdict({field("X-Key", "k")});
    CHECK(v.status == 429);
    CHECK(v.headers == "Retry-After: 4\r\n");  // 3.5 s left of 5
    CHECK(g.check({}) == 0);                   // no key: not limited, as nginx
    CHECK(g.check({field("X-Key", "")}) == 0);
    g_fake_us += 3'500'000;
    CHECK(g.check({field("X-Key", "k")}) == 0);
  }

  TEST_CASE("guard: limit_req by ip comes before auth, by consumer after it") {
    // Before: a client guessing keys is limited before each guess is
    // checked (no 401, no auth_failed). After: only a known consumer has a
    // bucket, and a bad key is a 401 however often it comes.
    GuardRig by_ip(R"(, "auth": {"type": "key-auth", "header": "X-Api-Key"},
                       "limit_req": {"key": "ip", "rate": 1, "burst": 0})",
                   R"(, "consumers": [{"name": "alice", "key": "alice-key"}])");
    g_fake_us += 10'000'000;
    CHECK(by_ip.check({field("X-Api-Key", "guess-1")}) == 401);
    CHECK(by_ip.check({field("X-Api-Key", "guess-2")}) == 429);
    CHECK(by_ip.check({field("X-Api-Key", "alice-key")}) == 429);
    CHECK(by_ip.counters().auth_failed.load() == 1);

    GuardRig by_consumer(
        R"(, "auth": {"type": "key-auth", "header": "X-Api-Key"},
                             "limit_req": {"key": "consumer", "rate": 1, "burst": 0})",
        R"(, "consumers": [{"name": "alice", "key": "alice-key"}, {"name": "bob", "key": "bob-key"}])");
    for (int i = 0; i < 3; ++i) CHECK(by_consumer.check({field("X-Api-Key", "wrong")}) == 401);
    CHECK(by_consumer.check({field("X-Api-Key", "alice-key")}) == 0);
    CHECK(by_consumer.consumer.view() == "alice");
    CHECK(by_consumer.check({field("X-Api-Key", "alice-key")}, "/", "10.0.0.9") == 429);  // alice's, any address
    CHECK(by_consumer.check({field("X-Api-Key", "bob-key")}) == 0);
  }

  TEST_CASE("guard: a refusal tells the client no reason; the worker log says why, at most once a second") {
    // The client learns that its token is invalid (RFC 6750 3.1), not which
    // check failed (a signature that held, an audience that did not): the
    // reason is for the operator's log, as nginx logs why auth_basic refused.
    GuardRig g(R"(, "auth": {"type": "jwt", "algorithm": "HS256", "secret": ")" + kSecret +
               R"(", "allow": ["alice"]})");
    const std::string good = hs256(R"({"sub":"alice"})"), forged = good.substr(0, good.rfind('.') + 1) + "AAAA";
    gw::api::Verdict v;
    const std::string log = logged([&] {
      v = g.verdict({field("Authorization", "Bearer " + forged)}, "/", "10.0.0.7");
      CHECK(v.status == 401);
      CHECK(v.headers == "WWW-Authenticate: Bearer realm=\"gw\", error=\"invalid_token\"\r\n");
      // Within the same second: refused as well, not logged.
      v = g.verdict({field("Authorization", "Bearer " + hs256(R"({"sub":"alice","exp":1})"))});
      CHECK(v.status == 401);
      CHECK(v.headers == "WWW-Authenticate: Bearer realm=\"gw\", error=\"invalid_token\"\r\n");
      g_fake_us += 1'000'000;
      CHECK(g.check({field("Authorization", "Bearer " + hs256(R"({"sub":"bob"})"))}) == 403);
      g_fake_us += 1'000'000;
      CHECK(g.check({field("Authorization", "Bearer " + good), field("Authorization", "Bearer " + good)}) == 400);
      g_fake_us += 1'000'000;
      v = g.verdict({});
      CHECK(v.status == 401);
      CHECK(v.headers == "WWW-Authenticate: Bearer realm=\"gw\"\r\n");
    });
    INFO(log);
    CHECK(log.find("401 to 10.0.0.7 on route web/api: jwt bad_signature") != std::string::npos);
    CHECK(log.find("expired") == std::string::npos);
    CHECK(log.find("403 to 10.0.0.1 on route web/api: consumer not allowed \"bob\"") != std::string::npos);
    CHECK(log.find("400 to 10.0.0.1 on route web/api: the credential sent twice") != std::string::npos);
    CHECK(log.find("401 to 10.0.0.1 on route web/api: jwt missing") != std::string::npos);
  }

  TEST_CASE("guard: basic-auth and key-auth refusals are logged with their reason") {
    char salt[64];
    REQUIRE(crypt_gensalt_rn("$2b$", 4, nullptr, 0, salt, sizeof(salt)));
    struct crypt_data cd {};
    const std::string hash = crypt_r("s3cret", salt, &cd);
    GuardRig basic(R"(, "auth": {"type": "basic-auth", "users": {"alice": ")" + hash + R"("}})");
    GuardRig key(R"(, "auth": {"type": "key-auth", "header": "X-Api-Key"})",
                 R"(, "consumers": [{"name": "alice", "key": "alice-key"}])");
    const auto b64 = [](std::string_view s) { return "Basic " + gw::core::base64_encode(s); };
    const std::string log = logged([&] {
      const auto step = [&](GuardRig& g, std::vector<gw::http::Field> f) {
        g_fake_us += 1'000'000;
        return g.check(std::move(f));
      };
      CHECK(step(basic, {field("Authorization", b64("alice:wrong"))}) == 401);
      CHECK(step(basic, {field("Authorization", b64("mallory:s3cret"))}) == 401);
      CHECK(step(basic, {field("Authorization", "Basic !!!")}) == 401);
      CHECK(step(basic, {field("Authorization", b64("alice"))}) == 401);
      CHECK(step(basic, {}) == 401);
      CHECK(step(key, {field("X-Api-Key", "guess")}) == 401);
      CHECK(step(key, {}) == 401);
    });
    INFO(log);
    CHECK(log.find("basic-auth wrong password for user \"alice\"") != std::string::npos);
    CHECK(log.find("basic-auth unknown user") != std::string::npos);
    CHECK(log.find("mallory") == std::string::npos);  // it may be a password typed in the wrong field
    CHECK(log.find("basic-auth credentials not base64") != std::string::npos);
    CHECK(log.find("basic-auth no ':' in the credentials") != std::string::npos);
    CHECK(log.find("basic-auth no credentials") != std::string::npos);
    CHECK(log.find("key-auth unknown key") != std::string::npos);
    CHECK(log.find("key-auth no key") != std::string::npos);
  }
}
