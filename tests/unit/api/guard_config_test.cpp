#include <doctest/doctest.h>

#include <crypt.h>

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <string>

#include "gw/api/hash.hpp"
#include "gw/config/config.hpp"
#include "gw/shm/state_file.hpp"
#include "gw/shm/table.hpp"

using gw::config::load_string;

namespace {
std::string conf(const std::string& route_extra, const std::string& listener_extra = "", const std::string& top = "") {
  return R"({"workers": 1, "shm": {"name": "g1"})" + top + R"(,
  "listeners": [{"name": "web", "listen": "127.0.0.1:8080", "protocol": "http")" +
         listener_extra + R"(,
                 "routes": [{"name": "api", "path": "/", "upstream": "app")" +
         route_extra + R"(}]}],
  "upstreams": [{"name": "app", "pools": [{"id": "p", "hosts": [{"id": "a", "address": "127.0.0.1:8081"}]}]}]})";
}
bool has(const std::vector<std::string>& errors, const std::string& needle) {
  return std::any_of(errors.begin(), errors.end(),
                     [&](const std::string& e) { return e.find(needle) != std::string::npos; });
}
std::string all(const std::vector<std::string>& errors) {
  std::string s;
  for (const auto& e : errors) s += e + "\n";
  return s;
}
std::string bcrypt(const char* pass) {
  char salt[64];
  crypt_gensalt_rn("$2b$", 4, nullptr, 0, salt, sizeof(salt));
  struct crypt_data cd {};
  return crypt_r(pass, salt, &cd);
}
}  // namespace

TEST_SUITE("config") {
  TEST_CASE("limit_req, limit_conn, auth and consumers load") {
    const std::string hash = bcrypt("pw");
    auto r = load_string(conf(R"(, "limit_req": {"key": "header:X-Api-Key", "rate": 0.5, "burst": 3},
                                   "auth": {"type": "basic-auth", "users": {"alice": ")" +
                                  hash + R"("}, "allow": ["alice"]})",
                              R"(, "limit_conn": {"key": "ip", "max": 10})",
                              R"(, "consumers": [{"name": "k1", "key": "secret-1"}])"));
    REQUIRE_MESSAGE(r.ok(), all(r.errors));
    const auto& rc = r.config.listeners[0].routes[0];
    CHECK(rc.limit_req.on);
    CHECK(rc.limit_req.key == gw::config::LimitReqConf::Key::header);
    CHECK(rc.limit_req.header == "X-Api-Key");
    CHECK(rc.limit_req.rate == 0.5);
    CHECK(rc.limit_req.burst == 3);
    CHECK(rc.auth.type == gw::config::AuthType::basic);
    REQUIRE(rc.auth.users.size() == 1);
    CHECK(rc.auth.users[0].first == "alice");
    CHECK(rc.auth.allow == std::vector<std::string>{"alice"});
    CHECK(r.config.listeners[0].limit_conn.on);
    CHECK(r.config.listeners[0].limit_conn.max == 10);
    REQUIRE(r.config.consumers.size() == 1);
    // The table holds the key's hash, never the key.
    gw::shm::Table t(r.config.shm.caps);
    gw::config::build_table(r.config, t);
    REQUIRE(t.consumers().size() == 1);
    uint8_t d[32];
    gw::api::sha256("secret-1", d);
    CHECK(std::equal(d, d + 32, t.consumers()[0].key_sha256));
    CHECK(gw::shm::state_to_json(t).find("secret-1") == std::string::npos);
  }

  TEST_CASE("jwt: a secret read from a file loses its line end, as gwctl --key-file's key does") {
    // `echo "$SECRET" > file` writes a newline that is no part of the secret an
    // issuer signs with: kept, every token would fail as bad_signature.
    const std::string path = "/tmp/gw-unit-jwt-secret-" + std::to_string(::getpid());
    auto load = [&](const std::string& text) {
      std::FILE* f = std::fopen(path.c_str(), "wb");
      REQUIRE(f);
      std::fwrite(text.data(), 1, text.size(), f);
      std::fclose(f);
      return load_string(conf(R"(, "auth": {"type": "jwt", "algorithm": "HS256", "secret": "@)" + path + R"("})"));
    };
    auto r = load("0123456789abcdef0123\n");
    CHECK_MESSAGE(r.ok(), all(r.errors));
    if (r.ok()) CHECK(r.config.listeners[0].routes[0].auth.secret == "0123456789abcdef0123");
    r = load("0123456789abcdef0123\r\n");
    CHECK_MESSAGE(r.ok(), all(r.errors));
    if (r.ok()) CHECK(r.config.listeners[0].routes[0].auth.secret == "0123456789abcdef0123");
    r = load("0123456789abcdef0123");  // none: as it is
    CHECK_MESSAGE(r.ok(), all(r.errors));
    if (r.ok()) CHECK(r.config.listeners[0].routes[0].auth.secret == "0123456789abcdef0123");
    // 15 bytes and a newline are a 15-byte secret: too short.
    CHECK(has(load("0123456789abcde\n").errors, "auth.secret: expected a secret of at least 16 bytes"));
    // A NUL byte in the file's name would have the file before it read.
    load("0123456789abcdef0123\n");
    auto cut =
        load_string(conf(R"(, "auth": {"type": "jwt", "algorithm": "HS256", "secret": "@)" + path + R"(\u0000.old"})"));
    CHECK(has(cut.errors, "auth.secret: expected a file path without a NUL byte after \"@\""));
    std::remove(path.c_str());
  }

  TEST_CASE("jwt and key-auth defaults") {
    auto r = load_string(conf(R"(, "auth": {"type": "jwt", "algorithm": "HS256", "secret": "0123456789abcdef0123"})"));
    REQUIRE_MESSAGE(r.ok(), all(r.errors));
    const auto& a = r.config.listeners[0].routes[0].auth;
    CHECK(a.from == gw::config::CredFrom::bearer);
    CHECK(a.leeway_s == 60);
    CHECK(a.consumer_claim == "sub");
    auto k = load_string(conf(R"(, "auth": {"type": "key-auth"})"));
    REQUIRE_MESSAGE(k.ok(), all(k.errors));
    CHECK(k.config.listeners[0].routes[0].auth.from == gw::config::CredFrom::header);
    CHECK(k.config.listeners[0].routes[0].auth.from_name == "apikey");
    auto q = load_string(conf(R"(, "auth": {"type": "key-auth", "query": "key"})"));
    REQUIRE_MESSAGE(q.ok(), all(q.errors));
    CHECK(q.config.listeners[0].routes[0].auth.from == gw::config::CredFrom::query);
  }

  TEST_CASE("guard config errors name their JSON path") {
    auto e = [](const std::string& json) { return load_string(json).errors; };
    CHECK(has(e(conf(R"(, "limit_req": {"rate": 0})")),
              "listeners[0].routes[0].limit_req.rate: expected requests per second"));
    CHECK(has(e(conf(R"(, "limit_req": {"rate": 700000})")),
              "limit_req.rate: expected requests per second, a number 0.001..100000, got 700000"));
    CHECK(e(conf(R"(, "limit_req": {"rate": 100000})")).empty());
    CHECK(has(e(conf(R"(, "limit_req": {"burst": 1})")),
              "listeners[0].routes[0].limit_req: missing required key \"rate\""));
    CHECK(has(e(conf(R"(, "limit_req": {"rate": 1, "key": "cookie:x"})")),
              "limit_req.key: expected \"ip\", \"header:NAME\" or \"consumer\""));
    CHECK(has(e(conf(R"(, "limit_req": {"rate": 0.001, "burst": 100})")), "limit_req.burst: (burst + 1) / rate"));
    CHECK(
        has(e(conf(R"(, "limit_req": {"rate": 1, "key": "consumer"})")), "limit_req.key: \"consumer\" needs \"auth\""));
    CHECK(has(e(conf(R"(, "limit_req": {"rate": 1, "nodelay": true})")), "limit_req.nodelay: unknown key"));
    CHECK(
        has(e(conf("", R"(, "limit_conn": {"key": "ip"})")), "listeners[0].limit_conn: missing required key \"max\""));
    CHECK(
        has(e(conf("", R"(, "limit_conn": {"max": 0})")), "listeners[0].limit_conn.max: expected an integer 1..65535"));
    CHECK(has(e(conf("", R"(, "limit_conn": {"max": 1, "key": "header:x"})")), "limit_conn.key: expected \"ip\""));
    CHECK(has(e(conf(R"(, "auth": {"type": "oauth"})")), "routes[0].auth.type: expected \"key-auth\""));
    CHECK(has(e(conf(R"(, "auth": {"header": "x"})")), "routes[0].auth: missing required key \"type\""));
    // Without a (valid) type, a key that no type takes is still reported, and "allow" checked.
    for (const char* type : {"", R"("type": "oauth", )", R"("type": 1, )"}) {
      CAPTURE(type);
      auto te = e(conf(std::string(R"(, "auth": {)") + type +
                       R"("hedaer": "x", "header": "y", "users": {}, "allow": [""], "secret": 1})"));
      CHECK_MESSAGE(has(te, "routes[0].auth.hedaer: unknown key"), all(te));
      CHECK(has(te, "routes[0].auth.allow[0]: expected a consumer name"));
      CHECK(!has(te, "routes[0].auth.header:"));
      CHECK(!has(te, "routes[0].auth.users:"));
      CHECK(!has(te, "routes[0].auth.secret:"));
    }
    CHECK(has(e(conf(R"(, "auth": {"type": "jwt", "algorithm": "HS256"})")), "routes[0].auth: HS256 needs \"secret\""));
    CHECK(has(e(conf(R"(, "auth": {"type": "jwt", "algorithm": "none", "secret": "0123456789abcdef"})")),
              "auth.algorithm: expected \"HS256\" or \"RS256\""));
    CHECK(has(e(conf(R"(, "auth": {"type": "jwt", "algorithm": "HS256", "secret": "short"})")),
              "auth.secret: expected a secret of at least 16 bytes"));
    CHECK(has(e(conf(R"(, "auth": {"type": "jwt", "algorithm": "RS256", "public_key": "nope"})")),
              "auth.public_key: not a PEM public key"));
    CHECK(has(e(conf(R"(, "auth": {"type": "jwt", "algorithm": "RS256", "public_key": "@/nonexistent/key.pem"})")),
              "auth.public_key: cannot read"));
    CHECK(has(e(conf(R"(, "auth": {"type": "basic-auth", "users": {"alice": "plain"}})")),
              "auth.users.alice: expected a bcrypt"));
    CHECK(has(e(conf(R"(, "auth": {"type": "basic-auth", "users": {"alice": "$2b$10$short"}})")),
              "auth.users.alice: this crypt hash is"));
    // A user name with a dot is a quoted subscript, not two levels.
    CHECK(has(e(conf(R"(, "auth": {"type": "basic-auth", "users": {"alice.smith": "plain"}})")),
              R"(auth.users["alice.smith"]: expected a bcrypt)"));
    CHECK(has(e(conf(R"(, "auth": {"type": "basic-auth"})")), "routes[0].auth: missing required key \"users\""));
    // basic-auth's consumers are its users: an allow name that is none of them is a typo.
    const std::string hash2 = bcrypt("pw");
    CHECK(
        has(e(conf(R"(, "auth": {"type": "basic-auth", "users": {"alice": ")" + hash2 + R"("}, "allow": ["alcie"]})")),
            "routes[0].auth.allow: \"alcie\" is not one of this route's users"));
    CHECK(has(e(conf(R"(, "auth": {"type": "key-auth", "header": "a", "query": "b"})")),
              "routes[0].auth: give at most one of"));
    CHECK(has(e(conf(R"(, "auth": {"type": "key-auth", "users": {}})")), "auth.users: unknown key"));
    CHECK(has(e(conf(R"(, "auth": {"type": "key-auth", "allow": []})")),
              "auth.allow: expected at least one consumer name"));
    CHECK(has(e(conf("", "", R"(, "consumers": [{"name": "a", "key": "k"}, {"name": "a", "key": "j"}])")),
              "consumers[1].name: duplicate consumer"));
    CHECK(has(e(conf("", "", R"(, "consumers": [{"name": "a", "key": "k"}, {"name": "b", "key": "k"}])")),
              "consumers[1].key: another consumer has the same key"));
    CHECK(has(e(conf("", "", R"(, "consumers": [{"name": "a", "key": "has space"}])")),
              "consumers[0].key: expected a key of 1..512"));
    CHECK(has(e(R"({"shm": {"max_limit_keys": 100}, "listeners": [], "upstreams": []})"),
              "shm.max_limit_keys: expected a multiple of 8"));
  }

  TEST_CASE("consumers in the table: unique names and keys, capacity, state file round trip") {
    gw::shm::Caps caps;
    caps.max_consumers = 2;
    gw::shm::Table t(caps);
    uint8_t a[32], b[32];
    gw::api::sha256("ka", a);
    gw::api::sha256("kb", b);
    t.add_consumer("alice", a);
    CHECK_THROWS_WITH_AS(t.add_consumer("alice", b), "consumer \"alice\" already exists", gw::shm::TableError);
    CHECK_THROWS_AS(t.add_consumer("bob", a), gw::shm::TableError);
    t.add_consumer("bob", b);
    uint8_t c[32];
    gw::api::sha256("kc", c);
    CHECK_THROWS_WITH_AS(t.add_consumer("carol", c), doctest::Contains("consumer table is full"), gw::shm::TableError);
    CHECK(t.find_consumer("bob") == 1);
    gw::shm::State s = gw::shm::state_from_table(t);
    REQUIRE(s.consumers.size() == 2);
    CHECK(s.consumers[1].name == "bob");
    CHECK(std::equal(b, b + 32, s.consumers[1].key_sha256));
    CHECK(gw::shm::state_to_json(t).find(gw::api::to_hex(a)) != std::string::npos);
    t.remove_consumer(0);
    CHECK(t.consumers().size() == 1);
    CHECK(t.find_consumer("bob") == 0);
  }
}
