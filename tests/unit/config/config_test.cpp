#include <doctest/doctest.h>

#include <algorithm>
#include <string>

#include "gw/config/config.hpp"

using gw::config::load_string;

namespace {
const char* kValid = R"({
  "workers": 2, "shm": {"name": "t1", "max_upstreams": 4, "max_pools": 8, "max_hosts": 16},
  "state_file": "/tmp/x.json",
  "listeners": [{"name": "l4", "listen": "127.0.0.1:7000", "protocol": "tcp", "upstream": "app"}],
  "upstreams": [{"name": "app", "connect_timeout_ms": 500, "max_fails": 2,
    "pools": [{"id": "primary", "priority": 0, "method": "round_robin",
               "hosts": [{"id": "a", "address": "127.0.0.1:8081", "weight": 5},
                         {"id": "b", "address": "127.0.0.1:8082"}]},
              {"id": "backup", "priority": 1, "hosts": [{"id": "c", "address": "127.0.0.1:8083"}]}]}]})";

bool has(const std::vector<std::string>& errors, const std::string& needle) {
  return std::any_of(errors.begin(), errors.end(), [&](const std::string& e) { return e.find(needle) != std::string::npos; });
}
std::string replace(std::string s, const std::string& from, const std::string& to) {
  auto p = s.find(from);
  REQUIRE(p != std::string::npos);
  return s.replace(p, from.size(), to);
}
}  // namespace

TEST_SUITE("config") {
  TEST_CASE("a valid config loads with defaults filled in") {
    auto r = load_string(kValid);
    REQUIRE(r.errors.empty());
    const auto& c = r.config;
    CHECK(c.workers == 2);
    CHECK(c.shm.name == "t1");
    CHECK(c.shm.caps.max_hosts == 16);
    REQUIRE(c.upstreams.size() == 1);
    CHECK(c.upstreams[0].connect_timeout_ms == 500);
    CHECK(c.upstreams[0].idle_timeout_ms == 600000);
    CHECK(c.upstreams[0].max_fails == 2);
    CHECK(c.upstreams[0].pools[0].hosts[0].weight == 5);
    CHECK(c.upstreams[0].pools[0].hosts[1].weight == 1);
    CHECK(c.upstreams[0].pools[1].priority == 1);
  }

  TEST_CASE("a string weight is reported with its JSON path and value") {
    auto r = load_string(replace(kValid, R"("address": "127.0.0.1:8082")", R"("address": "127.0.0.1:8082", "weight": "0")"));
    CHECK(has(r.errors, R"(upstreams[0].pools[0].hosts[1].weight: expected an integer 0..1000, got string "0")"));
  }

  TEST_CASE("unknown keys, bad addresses, duplicates and dangling references are all reported") {
    std::string s = replace(kValid, R"("workers": 2)", R"("workers": 2, "wrokers": 3)");
    s = replace(s, R"("127.0.0.1:8081")", R"("127.0.0.1")");
    s = replace(s, R"({"id": "b")", R"({"id": "a")");
    s = replace(s, R"("upstream": "app")", R"("upstream": "nope")");
    s = replace(s, R"("weight": 5)", R"("weight": 5000)");
    auto r = load_string(s);
    CHECK(has(r.errors, "wrokers: unknown key"));
    CHECK(has(r.errors, "upstreams[0].pools[0].hosts[0].address: bad address"));
    CHECK(has(r.errors, "upstreams[0].pools[0].hosts[1].id: duplicate host id \"a\""));
    CHECK(has(r.errors, "listeners[0].upstream: no upstream named \"nope\""));
    CHECK(has(r.errors, "upstreams[0].pools[0].hosts[0].weight: expected an integer 0..1000, got 5000"));
    CHECK(r.errors.size() == 5);
  }

  TEST_CASE("invalid JSON, missing keys and wrong types") {
    CHECK(has(load_string("{").errors, "invalid JSON"));
    CHECK(has(load_string("[]").errors, "expected a JSON object"));
    auto r = load_string(R"({"listeners": {}, "workers": "many"})");
    CHECK(has(r.errors, "listeners: expected an array, got an object"));
    CHECK(has(r.errors, "upstreams: missing required key"));
    CHECK(has(r.errors, "workers: expected \"auto\" or an integer 1..64, got \"many\""));
    CHECK(has(load_string(replace(kValid, R"("method": "round_robin")", R"("method": "fastest")")).errors,
              "unknown method \"fastest\""));
    CHECK(has(load_string(replace(kValid, R"("max_hosts": 16)", R"("max_hosts": 2)")).errors,
              "shm.max_hosts: 3 hosts are configured, more than max_hosts 2"));
    CHECK(has(load_string(replace(kValid, R"("id": "primary")", R"("id": "pri mary")")).errors,
              "upstreams[0].pools[0].id: \"pri mary\" may contain only"));
  }

  TEST_CASE("build_table lays the config out in a table") {
    auto r = load_string(kValid);
    REQUIRE(r.ok());
    gw::shm::Table t(r.config.shm.caps);
    gw::config::build_table(r.config, t);
    CHECK(t.upstreams().size() == 1);
    CHECK(t.pools().size() == 2);
    CHECK(t.hosts().size() == 3);
    CHECK(t.host_path(2) == "app/backup/c");
  }
}

TEST_SUITE("config") {
  TEST_CASE("slow_start_ms and hash_balance_factor") {
    auto ok = load_string(replace(kValid, R"("max_fails": 2,)", R"("max_fails": 2, "slow_start_ms": 30000, "hash_balance_factor": 1.25,)"));
    REQUIRE(ok.errors.empty());
    CHECK(ok.config.upstreams[0].slow_start_ms == 30000);
    CHECK(ok.config.upstreams[0].balance_factor == 125);
    auto bad = load_string(replace(kValid, R"("max_fails": 2,)", R"("max_fails": 2, "hash_balance_factor": 0.5,)"));
    CHECK(has(bad.errors, "upstreams[0].hash_balance_factor: expected 0 (off) or a number 1.0..10.0, got 0.5"));
  }
}
