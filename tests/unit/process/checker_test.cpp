#include <doctest/doctest.h>

#include <cstring>

#include "../test_util.hpp"
#include "gw/config/config.hpp"
#include "gw/process/checker.hpp"
#include "gw/shm/runtime.hpp"

using namespace gw;

TEST_SUITE("process") {
  TEST_CASE("check verdicts: the first check decides, then rise and fall") {
    process::CheckRuns r;
    uint32_t s = shm::kActiveUnknown;
    s = r.apply(true, s, 2, 3);
    CHECK(s == shm::kActiveUp);
    s = r.apply(false, s, 2, 3);
    s = r.apply(false, s, 2, 3);
    CHECK(s == shm::kActiveUp);  // 2 of 3
    s = r.apply(true, s, 2, 3);  // a pass resets the failures
    s = r.apply(false, s, 2, 3);
    s = r.apply(false, s, 2, 3);
    CHECK(s == shm::kActiveUp);
    s = r.apply(false, s, 2, 3);
    CHECK(s == shm::kActiveDown);
    s = r.apply(true, s, 2, 3);
    CHECK(s == shm::kActiveDown);  // 1 of 2
    s = r.apply(true, s, 2, 3);
    CHECK(s == shm::kActiveUp);
    process::CheckRuns fresh;
    CHECK(fresh.apply(false, shm::kActiveUnknown, 2, 3) == shm::kActiveDown);
  }

  TEST_CASE("with active checks a host is usable per the checker's verdict and the unknown policy") {
    testing::TempSegment ts;
    shm::HostRuntime& h = ts.seg.host(0);
    shm::reset_slot(h, 9);
    shm::HealthPolicy usable{1, 1000, true, true}, unusable{1, 1000, true, false};
    CHECK(shm::host_usable(h, 9, usable, 0));
    CHECK_FALSE(shm::host_usable(h, 9, unusable, 0));
    CHECK(shm::record_check(h, 9, shm::kActiveDown));
    CHECK_FALSE(shm::record_check(h, 9, shm::kActiveDown));  // no change, no event
    CHECK_FALSE(shm::host_usable(h, 9, usable, 0));
    CHECK(shm::record_check(h, 9, shm::kActiveUp));
    CHECK(shm::host_usable(h, 9, unusable, 0));
    CHECK_FALSE(shm::record_check(h, 8, shm::kActiveDown));  // another host's verdict
  }

  TEST_CASE("the health block is parsed and validated") {
    auto cfg = [](const std::string& health) {
      return R"({"listeners": [{"name": "l", "listen": "127.0.0.1:1", "upstream": "u"}],
                 "upstreams": [{"name": "u", "health": )" +
             health + R"(, "pools": []}]})";
    };
    auto r = config::load_string(cfg(R"({"type": "http", "path": "/hz", "expect_status": "2xx,4xx",
                                         "interval_ms": 500, "rise": 4, "unknown": "unusable"})"));
    REQUIRE(r.ok());
    const auto& c = r.config.upstreams[0].check;
    CHECK(c.type == shm::kCheckHttp);
    CHECK(std::string(c.path) == "/hz");
    CHECK(c.expect_mask == ((1 << 2) | (1 << 4)));
    CHECK(c.interval_ms == 500);
    CHECK(c.timeout_ms == 1000);
    CHECK(c.rise == 4);
    CHECK(c.fall == 3);
    CHECK(c.unknown_usable == 0);
    auto bad = config::load_string(cfg(R"({"type": "udp", "expect_status": "2xy", "path": "hz", "rise": 0})"));
    CHECK(bad.errors.size() == 4);
  }

  TEST_CASE("health.host: a valid Host header of an http check, refused otherwise with its path") {
    auto load = [](const std::string& health) {
      return config::load_string(R"({"listeners": [{"name": "l", "listen": "127.0.0.1:1", "upstream": "u"}],
                                     "upstreams": [{"name": "u", "health": )" +
                                 health + R"(, "pools": []}]})");
    };
    auto host_of = [&](const std::string& host) {
      auto r = load(R"({"type": "http", "host": ")" + host + R"("})");
      REQUIRE_MESSAGE(r.ok(), host);
      return std::string(r.config.upstreams[0].check.host);
    };
    CHECK(host_of("api.example.com") == "api.example.com");
    CHECK(host_of("api.example.com:8443") == "api.example.com:8443");
    CHECK(host_of("10.0.0.1") == "10.0.0.1");
    CHECK(host_of("10.0.0.1:80") == "10.0.0.1:80");
    CHECK(host_of("[::1]") == "[::1]");
    CHECK(host_of("[2001:db8::1]:65535") == "[2001:db8::1]:65535");
    CHECK(host_of("my_host-1.internal~x") == "my_host-1.internal~x");
    CHECK(host_of("caf%C3%A9.example") == "caf%C3%A9.example");
    const std::string longest(shm::kCheckHostMax - 5, 'a');
    CHECK(host_of(longest + ":1234") == longest + ":1234");
    {
      auto r = load(R"({"type": "http"})");  // the default: empty, the host's address is sent
      REQUIRE(r.ok());
      CHECK(r.config.upstreams[0].check.host[0] == '\0');
    }

    auto error_of = [&](const std::string& health) {
      auto r = load(health);
      REQUIRE(r.errors.size() == 1);
      return r.errors[0];
    };
    const std::string at = "upstreams[0].health.host: ";
    struct Bad {
      const char* host;
      const char* why;
    };
    const Bad bad[] = {
        {"", "is empty"},
        {"a b", "has a character a host name cannot have"},
        {"a\\r\\nX-Evil: 1", "has a character a host name cannot have"},
        {"a\\u0000b", "has a character a host name cannot have"},
        {"a\\tb", "has a character a host name cannot have"},
        {"a/b", "has a character a host name cannot have"},
        {"user@host", "has a character a host name cannot have"},
        {"h%zz", "has a '%' not followed by two hex digits"},
        {"h%4", "has a '%' not followed by two hex digits"},
        {"::1", "has more than one ':' (an IPv6 address goes in brackets)"},
        {"[::1", "has a '[' without its ']'"},
        {"[::g]", "has an invalid IPv6 address in brackets"},
        {"[10.0.0.1]", "has an invalid IPv6 address in brackets"},
        {"[::1]x", "has something other than :port after the ']'"},
        {"[::1]:", "has an empty port"},
        {"host:", "has an empty port"},
        {":80", "has an empty host name"},
        {"host:0", "has a port out of range (1..65535)"},
        {"host:65536", "has a port out of range (1..65535)"},
        {"host:123456", "has a port out of range (1..65535)"},
        {"host:8o", "has a port that is not a number"},
    };
    for (const Bad& b : bad) {
      CAPTURE(std::string(b.host));
      const std::string e = error_of(R"({"type": "http", "host": ")" + std::string(b.host) + R"("})");
      CHECK(e.starts_with(at + "expected a Host header: a host name, IPv4 address or [IPv6 address], optionally with "
                               ":port, at most 263 bytes; the string \""));
      CHECK(e.find(std::string("\" ") + b.why) != std::string::npos);  // after the string, decoded
    }
    CHECK(error_of(R"({"type": "http", "host": ")" + std::string(shm::kCheckHostMax + 1, 'a') + R"("})")
              .ends_with("is too long"));
    CHECK(error_of(R"({"type": "http", "host": 7})").starts_with(at + "expected a string"));
    // Without "type": "http" the check is a connect: a Host header it would
    // never send is an error, not ignored.
    CHECK(error_of(R"({"host": "api.example.com"})") ==
          at + "only an http check sends a Host header; add \"type\": \"http\"");
    CHECK(error_of(R"({"type": "tcp", "host": "api.example.com"})") ==
          at + "only an http check sends a Host header; add \"type\": \"http\"");
  }

  TEST_CASE("an http check sends health.host as its Host header, else the host's address") {
    shm::HealthCheck c{};
    c.type = shm::kCheckHttp;
    std::strcpy(c.path, "/hz");
    core::SockAddr a4, a6;
    std::string why;
    REQUIRE(core::parse_address("127.0.0.1:8081", a4, why));
    REQUIRE(core::parse_address("[::1]:8082", a6, why));
    CHECK(process::http_check_request(c, a4) ==
          "GET /hz HTTP/1.0\r\nHost: 127.0.0.1:8081\r\nUser-Agent: gw-health\r\nConnection: close\r\n\r\n");
    CHECK(process::http_check_request(c, a6).find("\r\nHost: [::1]:8082\r\n") != std::string::npos);
    std::strcpy(c.host, "api.example.com:8443");
    CHECK(process::http_check_request(c, a4) ==
          "GET /hz HTTP/1.0\r\nHost: api.example.com:8443\r\nUser-Agent: gw-health\r\nConnection: close\r\n\r\n");
    CHECK(process::http_check_request(c, a6).find("\r\nHost: api.example.com:8443\r\n") != std::string::npos);
  }
}
