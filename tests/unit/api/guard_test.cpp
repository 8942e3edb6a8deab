#include <doctest/doctest.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <memory>
#include <string>
#include <vector>

#include "../test_util.hpp"
#include "gw/api/guard.hpp"
#include "gw/config/config.hpp"
#include "gw/core/base64.hpp"
#include "gw/core/clock.hpp"
#include "gw/shm/table.hpp"

using gw::api::query_name;
using gw::api::QueryName;

namespace {

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
    guard = std::make_unique<gw::api::Guard>(cfg, ts.seg, 0);
    gw::shm::Table t(cfg.shm.caps);
    gw::config::build_table(cfg, t);
    guard->refresh(t);
  }
  static gw::shm::Caps caps() {
    gw::shm::Caps c{4, 8, 16};
    c.max_limit_keys = 64;
    return c;
  }
  /// The status the guard answers (0: pass) for a request with these fields.
  int check(std::vector<gw::http::Field> fields, std::string_view target = "/", std::string_view ip = "10.0.0.1",
            uint64_t now_ms = 1000) {
    gw::http::Head h;
    h.target = target;
    h.fields = fields;
    return guard->check(0, 0, {&h, target, ip}, consumer, now_ms).status;
  }
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
    CHECK(query_name("[apikey", "apikey") == QueryName::other);
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
  }
}
